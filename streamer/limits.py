"""Every bound on client input, in one place.

Why one module: a bound only protects the server if every door that admits the value
checks the same one (the config file, the HTTP API, the store), and a new feature that
stores per-stream items (zones, alert rules, calibration's marked frames) should reuse
these rather than invent its own. Each number is generous for real use and small enough
that the worst case costs milliseconds and kilobytes.
"""

from __future__ import annotations

#: Stream, rule and zone names (ids in paths, metric labels and the database).
MAX_NAME_LENGTH = 64
#: Stream and webhook URLs. Real camera URLs are under 300 characters; a URL is logged,
#: masked and shown on every status line, so an unbounded one is a cost on every request.
MAX_URL_LENGTH = 2048

#: Request target (path and query) of any request: longer is a 414 JSON answer. HTTP lines
#: are parsed up to ``MAX_HTTP_LINE`` bytes so that the refusal can be JSON; past that,
#: aiohttp itself answers 400 in text (logged as one line, see ``streamer.app``).
MAX_REQUEST_TARGET = 8190
MAX_HTTP_LINE = 64 * 1024

#: Request bodies read as JSON (stream definitions, zones, SDP offers of at most 64 KiB).
MAX_JSON_BYTES = 256 * 1024
#: Nesting of objects and arrays in a JSON body (the deepest real body, zones, has 4).
MAX_JSON_DEPTH = 32
#: Characters of one JSON number; a 5,000-digit integer costs quadratic time to convert.
MAX_JSON_NUMBER_CHARS = 40
#: Characters of one JSON string. The longest real one is an SDP offer (at most 64 KiB,
#: checked by ``streamer.rtc`` with its own message); fields have tighter bounds of their own.
MAX_JSON_STRING_CHARS = 128 * 1024

#: Zones of one stream, and corners of one zone (rasterised into a mask per frame size).
MAX_ZONES_PER_STREAM = 32
MAX_ZONE_POINTS = 256
#: Alert rules of the whole server (config file and API together).
MAX_ALERT_RULES = 256
#: Marked frames calibration keeps per stream (each a full-size JPEG in the store, all of
#: them read by every calibration; only the model in force is kept, one per stream).
MAX_MARKED_FRAMES_PER_STREAM = 64
#: Widest thumbnail of a marked frame the API makes (``?width=``): each costs a decode.
MAX_THUMBNAIL_WIDTH = 1024
#: Decoded frames kept in memory per stream for calibration to capture (the newest is 0).
#: They are kept at the camera's full size (a 1080p frame holds ~3 MB of decoder picture),
#: so a handful: enough to pick the one where nobody is blurred by motion.
RECENT_FRAMES = 5
#: Heads marked on one frame. The densest frames people mark by hand hold a few hundred;
#: past this, typing the frame's count is the way (and a body this long is still well
#: under ``MAX_JSON_BYTES``).
MAX_MARKS_PER_FRAME = 2000
#: Seconds of training one calibration may be given through the API (guard and final run
#: together; loading, features and export come on top).
MIN_CALIBRATION_BUDGET_S = 10.0
MAX_CALIBRATION_BUDGET_S = 300.0
