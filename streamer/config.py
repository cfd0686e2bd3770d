"""The typed configuration tree, loaded from TOML.

Why strict: a misspelt key in a service config (``stall_timout``, ``[[stream]]``) silently
falling back to a default is the kind of mistake found only after an outage. Every model
therefore forbids unknown keys and accepts only the TOML type it documents (no ``"8080"``
for a port, no ``1`` for a boolean), and ``load_config`` turns any failure into a single
line naming the file, the key path and the problem, which the CLI prints before exiting 2.

Relative paths in a file (``server.database``, ``model.path``, file stream urls) are taken
relative to that file's folder, so the service behaves the same from any working directory;
so is the default database, which therefore lives next to the config file.
``Config.default()`` and ``parse_config`` without ``base_dir`` leave them as written.

Example::

    [server]
    host = "0.0.0.0"
    port = 8080
    token = "change-me"
    database = "/var/lib/crowdcount/counts.sqlite3"

    [model]
    backend = "openvino"     # default: the fastest installed (openvino, else onnx)
    threads = 2

    [[streams]]
    name = "entrance"
    url = "rtsp://10.0.0.12:554/stream1"
    fps_limit = 5.0
    max_side = 960

    [[streams.zones]]
    name = "door"
    points = [[100, 200], [400, 200], [400, 600], [100, 600]]

    [streams.floor]          # people per m2 (docs/floor-density.md)
    image_points = [[80, 700], [900, 700], [760, 300], [220, 300]]
    width = 4.0              # metres: the four points are a 4 m x 6 m floor rectangle
    depth = 6.0
    frame_size = [960, 720]

    [[thresholds]]
    name = "door-crowded"
    stream = "entrance"
    zone = "door"            # omit for the stream's total
    above = 25
    below = 15
    for_seconds = 10

    [sinks.webhook]
    url = "https://hooks.example.com/crowdcount"
    secret = "a-long-random-string"

    [sinks.mqtt]
    host = "127.0.0.1"

    # Optional: run the cameras on a Ray cluster with PostgreSQL as the store (see
    # streamer/cluster/); this process then only serves the API.
    [cluster]
    address = "10.0.0.1:6379"
    database = "postgresql://crowd@10.0.0.2/crowdcount"
    shards = 8
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crowdcount.model.errors import UserError
from crowdcount.model.floor import Floor, FloorError, level_bands
from crowdcount.model.zones import check_points, check_unique_names
from crowdcount.streamer.limits import (
    MAX_ALERT_RULES,
    MAX_NAME_LENGTH,
    MAX_URL_LENGTH,
    MAX_ZONE_POINTS,
    MAX_ZONES_PER_STREAM,
)
from crowdcount.streamer.urls import mask_url

__all__ = [
    "STREAM_NAME_RE",
    "STREAM_NAME_RULE",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "FloorConfig",
    "ModelConfig",
    "MqttConfig",
    "ServerConfig",
    "SinksConfig",
    "StreamConfig",
    "StreamName",
    "StreamSettings",
    "ThresholdConfig",
    "WebhookConfig",
    "ZoneConfig",
    "check_zones_on_floor",
    "load_config",
    "parse_config",
]

StreamKind = Literal["rtsp", "file", "device", "webcam"]

#: Counts per second of an RTSP camera whose ``fps_limit`` is unset (docs/cameras.md). A
#: crowd changes over seconds, and at one count a second a camera sending a keyframe every
#: second is decoded keyframes-only: ~1 % of a core per 1080p camera instead of ~21 % for
#: every frame, and the model's 10-20 ms once a second. Files, webcams and browser cameras
#: keep counting every frame they can.
CAMERA_FPS = 1.0

# Stream names become ids in API paths, metric labels and the database: keep them plain.
# The one definition: the config file, the API bodies and the WebRTC signalling use it.
_NAME_RE = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LENGTH - 1}}}$"
STREAM_NAME_RE = re.compile(_NAME_RE)
STREAM_NAME_RULE = (f"1-{MAX_NAME_LENGTH} letters, digits, '_', '.' or '-' starting with a "
                    "letter or digit")
# max_length before the pattern: a megabyte-long name is refused without being scanned.
StreamName = Annotated[str, Field(max_length=MAX_NAME_LENGTH, pattern=_NAME_RE)]
#: Every URL the config or the API accepts (see ``streamer.limits``).
UrlStr = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
ZoneName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_WEBCAM_RE = re.compile(r"^webcam:\d+$")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")


class ConfigError(UserError):
    """A configuration problem; ``str()`` is one line: ``file: key.path: problem``."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = " ".join(problem.split())  # one line, whatever the cause said
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {self.problem}")


def _as_tuple(value: Any) -> Any:
    """TOML arrays arrive as lists; the frozen tree stores tuples (strict mode wants them)."""
    return tuple(value) if isinstance(value, list) else value


def _as_path(value: Any) -> Any:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a path string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("path must not be empty")
    return Path(value).expanduser()


def _relative_to_file(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or path.is_absolute():
        return path
    return Path(base) / path


PathStr = Annotated[Path, BeforeValidator(_as_path)]
Point = Annotated[tuple[float, float], BeforeValidator(_as_tuple)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ZoneConfig(_Strict):
    """A polygon whose density is summed separately, in the stream's frame pixels."""

    #: the zone's name in counts, metrics, topics and alert rules; unique within its stream
    name: ZoneName
    #: the polygon's corners as [x, y] pixels of the stream's frames, in order
    points: Annotated[tuple[Point, ...], BeforeValidator(_as_tuple),
                      Field(min_length=3, max_length=MAX_ZONE_POINTS)]

    @field_validator("points")
    @classmethod
    def _check_points(cls, pts: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        return check_points(pts)  # the rule every door uses (model.zones)


def check_zones_on_floor(floor: Floor, zones: Sequence[Any]) -> None:
    """Raise ``FloorError`` naming the first zone (``.name``, ``.points``) with a corner off
    the calibrated floor (beyond the horizon, or deeper than ``max_range``)."""
    for zone in zones:
        ok = floor.valid(list(zone.points))
        if not ok.all():
            i = int(ok.argmin())
            raise FloorError(f"zone {zone.name!r}: point {i} {tuple(zone.points[i])} is beyond "
                             "the calibrated floor: move it nearer the camera or mark floor "
                             "points farther away")


class FloorConfig(_Strict):
    """A stream's floor calibration (``model.floor``): four or more floor points marked in
    the stream's frame (pixels, of a frame of ``frame_size``) and their positions on the
    floor in metres (``floor_points``), or the four corners of a floor rectangle of
    ``width`` x ``depth`` metres, in order around it."""

    image_points: Annotated[tuple[Point, ...], BeforeValidator(_as_tuple),
                            Field(max_length=64)]
    floor_points: Annotated[tuple[Point, ...], BeforeValidator(_as_tuple),
                            Field(max_length=64)] | None = None
    width: Annotated[float, Field(allow_inf_nan=False)] | None = None
    depth: Annotated[float, Field(allow_inf_nan=False)] | None = None
    #: (width, height) of the frame the points were marked on
    frame_size: Annotated[tuple[Annotated[int, Field(ge=1, le=16384)],
                                Annotated[int, Field(ge=1, le=16384)]],
                          BeforeValidator(_as_tuple)]
    #: metres above the floor of the plane the density is on (heads); 0: the floor itself
    head_height: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] = 1.6
    #: cells deeper than this many times the deepest marked point are masked
    max_range: Annotated[float, Field(ge=1, le=20, allow_inf_nan=False)] = 3.0
    #: levels of service: Fruin's "walkway" or "queuing" bands, or five ascending upper
    #: bounds (people/m2) of levels A-E
    levels: Literal["walkway", "queuing"] | Annotated[
        tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...],
        BeforeValidator(_as_tuple), Field(min_length=5, max_length=5)] = "walkway"

    @model_validator(mode="after")
    def _check_geometry(self) -> Self:
        self.build()  # FloorError is a ValueError: its one line becomes the problem
        return self

    def build(self) -> Floor:
        """The calibration; raises ``FloorError`` (what to fix) for unusable input."""
        options = {"head_height": self.head_height, "max_range": self.max_range}
        rectangle = self.width is not None or self.depth is not None
        if rectangle and self.floor_points is not None:
            raise FloorError("give floor_points or width and depth (a rectangle), not both")
        level_bands(self.levels)
        if rectangle:
            if self.width is None or self.depth is None:
                raise FloorError("a rectangle needs both width and depth (metres)")
            return Floor.from_rectangle(self.image_points, self.width, self.depth,
                                        self.frame_size, **options)
        if self.floor_points is None:
            raise FloorError("give floor_points (metres, one per image point) or the width "
                             "and depth of the rectangle the four image points mark")
        return Floor.calibrate(self.image_points, self.floor_points, self.frame_size,
                               **options)

    @property
    def bands(self) -> tuple[float, ...]:
        return level_bands(self.levels)


class StreamSettings(_Strict):
    """How one stream is processed. The config file's ``[[streams]]`` and the API's
    ``POST /api/streams`` body both build on this class, so there is one table of bounds."""

    #: longer side of the frames the model sees (smaller frames are never enlarged); unset: the
    #: model card's serving size (768 for the bundled model)
    max_side: Annotated[int, Field(ge=32, le=8192)] | None = None
    #: frames per second the model processes at most (the rest are skipped before decoding
    #: to RGB); unset: as many as the CPU keeps up with
    fps_limit: Annotated[float, Field(gt=0, le=240)] | None = None
    #: seconds without a frame before a hung camera is dropped and reconnected
    stall_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0
    #: consecutive failed connections before an RTSP stream gives up (state ``failed``);
    #: unset = keep retrying (backoff 0.5 s doubling to 10 s), as cameras do come back
    max_retries: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    #: decode an RTSP camera in a supervised child process: a decoder that crashes or hangs
    #: in native code is restarted instead of taking the server down (one process per camera)
    isolate_decoder: bool = False


class StreamConfig(StreamSettings):
    """One video source: ``rtsp://``/``rtsps://`` url, a file path, ``/dev/videoN`` or
    ``webcam:N``."""

    #: the stream's id in API paths, metric labels, MQTT topics and the database
    name: StreamName
    #: rtsp:// or rtsps:// url (credentials are never logged or returned), a video file
    #: (relative to the config file), /dev/videoN or webcam:N
    url: UrlStr
    #: play a video file again from the start when it ends (files only)
    loop: bool = False
    #: polygons counted separately: [[streams.zones]] tables
    zones: Annotated[tuple[ZoneConfig, ...], BeforeValidator(_as_tuple),
                     Field(max_length=MAX_ZONES_PER_STREAM)] = ()
    floor: FloorConfig | None = None
    #: this stream's own model (an ``.onnx`` from ``crowdcount calibrate``); unset = the
    #: server's ``[model]``. Only the config file names paths: the API sets one by
    #: calibrating, never by a path in a request.
    model: PathStr | None = None

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _relative_to_file(path, info)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        url = url.strip()
        m = _SCHEME_RE.match(url)
        if m:
            if m.group(1).lower() not in ("rtsp", "rtsps"):
                raise ValueError(
                    f"unsupported scheme {m.group(1)!r}: use rtsp://, rtsps://, a file path, "
                    "/dev/videoN or webcam:N"
                )
            return url
        if url.startswith("webcam:") and not _WEBCAM_RE.match(url):
            raise ValueError(f"{url!r}: webcam urls look like 'webcam:0'")
        if _WEBCAM_RE.match(url) or _DEVICE_RE.match(url):
            return url
        return str(_relative_to_file(Path(url).expanduser(), info))

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones: tuple[ZoneConfig, ...]) -> tuple[ZoneConfig, ...]:
        check_unique_names(z.name for z in zones)
        return zones

    @model_validator(mode="after")
    def _zones_on_the_floor(self) -> Self:
        if self.floor is not None:
            check_zones_on_floor(self.floor.build(), self.zones)
        return self

    @model_validator(mode="after")
    def _loop_only_for_files(self) -> Self:
        if self.loop and self.kind != "file":
            raise ValueError(f"loop = true only applies to video files, not {self.kind} urls")
        if self.isolate_decoder and self.kind != "rtsp":
            raise ValueError(f"isolate_decoder only applies to rtsp urls, not {self.kind} urls")
        return self

    @property
    def target_fps(self) -> float | None:
        """Counts per second wanted: ``fps_limit``, else ``CAMERA_FPS`` for RTSP cameras,
        else every frame (``None``)."""
        if self.fps_limit is not None:
            return self.fps_limit
        return CAMERA_FPS if self.kind == "rtsp" else None

    @property
    def kind(self) -> StreamKind:
        """How the source is opened, derived from ``url``."""
        if _SCHEME_RE.match(self.url):
            return "rtsp"
        if _WEBCAM_RE.match(self.url):
            return "webcam"
        if _DEVICE_RE.match(self.url):
            return "device"
        return "file"


#: Environment variable holding the API token (a secret belongs there, not on a command
#: line that ``ps`` shows).
TOKEN_ENV = "CROWDCOUNT_TOKEN"


def resolve_token(configured: str | None, flag: str | None = None) -> str | None:
    """The one rule for the API token: ``--token`` beats ``$CROWDCOUNT_TOKEN``, which beats
    ``server.token`` of the config file; ``None`` when none is set (an empty value is unset).

    Why the environment beats the file: a config file is shared and copied around, while
    the environment is what a deployment (systemd, a container) sets per machine; a flag
    is the most explicit of all. The bind check and the token middleware both ask here.
    """
    return flag or os.environ.get(TOKEN_ENV) or configured or None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it may resolve to a public address


_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
_ORIGIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,30}://[A-Za-z0-9._:\[\]-]{1,260}$")


def _check_host(value: str) -> str:
    if value != "*" and not _HOST_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not a host name or address (no port, no "
                         "scheme), or '*'")
    return value


def _check_origin(value: str) -> str:
    if len(value) > 300 or not _ORIGIN_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not an origin such as "
                         "'https://dash.example.com:8443' (no path, no trailing slash)")
    return value


HostName = Annotated[str, AfterValidator(_check_host)]
OriginStr = Annotated[str, AfterValidator(_check_origin)]


class ServerConfig(_Strict):
    """The HTTP API. Listening beyond loopback without a token must be asked for explicitly,
    because the API can add streams (an SSRF vector) and accepts uploads."""

    #: address to listen on; beyond loopback a token is required (or allow_insecure_public)
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    #: TCP port (0: any free one)
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: bearer token every route asks for; --token and $CROWDCOUNT_TOKEN take precedence
    token: Annotated[str, Field(min_length=1)] | None = None
    #: serve a non-loopback host without a token (say so explicitly: the API adds streams)
    allow_insecure_public: bool = False
    # validate_default: the default, too, is placed next to the config file that is loaded.
    #: SQLite file of the counts history, alerts and what the API saved (relative to the
    #: config file)
    database: Annotated[PathStr, Field(validate_default=True)] = Path("crowdcount.sqlite3")
    #: largest image POST /api/count accepts (413 above)
    max_upload_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    #: streams at most, browser cameras included (409 above)
    max_streams: Annotated[int, Field(ge=1)] = 16
    #: WebRTC viewers of one stream at most (503 above)
    max_viewers_per_stream: Annotated[int, Field(ge=1)] = 8
    #: image uploads per client address and minute (429 with Retry-After above)
    upload_rate_per_minute: Annotated[int, Field(ge=1)] = 60
    #: delete count rows older than this many days (checked hourly); unset = keep all
    retention_days: Annotated[float, Field(gt=0)] | None = None
    #: keep raw per-frame count rows this many hours (checked hourly); older history is
    #: answered from the per-second and per-minute rollups. 0: keep raw rows as long as
    #: the rest (retention_days)
    raw_history_hours: Annotated[float, Field(ge=0)] = 6.0
    #: PEM certificate (chain) and private key: serve https (needed for "Use my camera"
    #: anywhere but localhost)
    tls_cert: PathStr | None = None
    #: the private key of tls_cert (PEM); both or neither
    tls_key: PathStr | None = None
    #: without a token: extra names browsers may use in ``Host`` besides the listening host,
    #: localhost and IP addresses (DNS rebinding protection, see streamer/origin.py); "*": any
    allowed_hosts: Annotated[tuple[HostName, ...], BeforeValidator(_as_tuple),
                             Field(max_length=64)] = ()
    #: without a token: origins (``https://dash.example.com:8443``) whose pages may change
    #: things (POST/PUT/PATCH/DELETE) besides the server's own
    allowed_origins: Annotated[tuple[OriginStr, ...], BeforeValidator(_as_tuple),
                               Field(max_length=64)] = ()

    @field_validator("database", "tls_cert", "tls_key")
    @classmethod
    def _resolve_database(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _relative_to_file(path, info)

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _check_exposure(self, info: ValidationInfo) -> Self:
        problem = self.exposure_problem((info.context or {}).get("token"))
        if problem:
            raise ValueError(problem)
        return self

    def exposure_problem(self, flag: str | None = None) -> str | None:
        """Why this host/token combination is refused, or ``None``. The token is the one
        ``resolve_token`` finds (``flag`` being a ``--token`` given on the command line).

        Public so a CLI that overrides ``host`` (via ``model_copy``, which skips validation)
        can apply the same rule.
        """
        token = resolve_token(self.token, flag)
        if token or self.allow_insecure_public or _is_loopback(self.host):
            return None
        return (
            f"host {self.host!r} is reachable from other machines: set a token (--token, "
            f"${TOKEN_ENV} or server.token), or allow_insecure_public = true to serve "
            "without one"
        )


class ModelConfig(_Strict):
    """The counting network. ``path`` unset means the bundled weights for ``backend``;
    ``backend`` unset means the fastest one installed (``model.backends.default_backend``:
    OpenVINO where it runs, else ONNX Runtime) for ``.onnx`` models. ``threads`` and
    ``max_batch`` unset: the backend's defaults (all cores; 1 frame per call for ONNX
    Runtime and OpenVINO, measured fastest on 2 cores)."""

    #: your own model file (.onnx, .tflite, .keras); unset: the bundled one
    path: PathStr | None = None
    #: inference runtime; unset: the fastest installed (openvino, else onnx)
    backend: Literal["openvino", "onnx", "tflite", "keras"] | None = None
    #: inference threads; unset: all cores
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    #: frames per model call; unset: the backend's (1 for openvino and onnx)
    max_batch: Annotated[int, Field(ge=1, le=256)] | None = None

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _relative_to_file(path, info)


class ThresholdConfig(_Strict):
    """An alert rule: over ``above`` for ``for_seconds`` raises, under ``below`` clears.

    ``below`` must be strictly less than ``above``: the gap is what keeps an alert from
    flapping while the count hovers around one level (see ``streamer.alerts``).
    """

    #: the rule's id (API paths, metric labels, alert events)
    name: StreamName
    #: the stream whose count is watched
    stream: StreamName
    #: one of the stream's zones; unset: the stream's total
    zone: ZoneName | None = None
    #: raise when the count has been over this for for_seconds
    above: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    #: clear when the count is back under this (less than above)
    below: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    #: seconds over above before the alert is raised
    for_seconds: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 0.0
    #: what is watched: "count" (people), "density" (a zone's people/m2) or "level" (a
    #: zone's level of service, A = 1 ... F = 6); the last two need a floor-calibrated stream
    metric: Literal["count", "density", "level"] = "count"

    @model_validator(mode="after")
    def _check_levels(self) -> Self:
        if not self.below < self.above:
            raise ValueError(
                f"below ({self.below:g}) must be less than above ({self.above:g}) so the "
                "alert cannot flap"
            )
        if self.metric != "count" and self.zone is None:
            raise ValueError(f"a {self.metric} rule needs a zone (the zone's floor area is "
                             "what the density is per)")
        return self


# Unambiguous (the host ends where "/", "?" or "#" starts): linear time, no backtracking.
_HTTP_URL_RE = re.compile(r"^https?://[^\s/?#]+(?:[/?#]\S*)?$", re.IGNORECASE)
# MQTT topic levels: no wildcards, no empty levels, no NUL.
_TOPIC_PREFIX_RE = r"^[^/+#\x00\s]+(/[^/+#\x00\s]+)*$"


class WebhookConfig(_Strict):
    """JSON POSTs of alerts (and optionally counts), signed with HMAC-SHA256 of ``secret``.

    ``retries`` more attempts follow a failed one (connection error, timeout, 5xx, 408 or
    429), ``backoff`` seconds after the first failure and doubling up to ``max_backoff``.
    ``counts_interval`` unset: alerts only; set: each stream's counts at most once per that
    many seconds.
    """

    #: http:// or https:// url the JSON events are POSTed to
    url: UrlStr
    #: HMAC-SHA256 key: X-CrowdCount-Signature: sha256=<hex of the body's HMAC>
    secret: Annotated[str, Field(min_length=1)]
    #: seconds per attempt
    timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    #: more attempts after a failed one
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    #: seconds before the first retry (doubling)
    backoff: Annotated[float, Field(gt=0, le=60)] = 0.5
    #: longest wait between retries
    max_backoff: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: events waiting to be sent at most (the oldest are dropped beyond)
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: send each stream's counts at most once per this many seconds; unset: alerts only
    counts_interval: Annotated[float, Field(gt=0, le=86400)] | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        url = url.strip()
        if not _HTTP_URL_RE.match(url):
            raise ValueError(f"{mask_url(url)!r} is not an http:// or https:// url")
        return url


class MqttConfig(_Strict):
    """An MQTT broker to publish counts, alerts and retained per-stream state to.

    ``max_rate`` bounds count messages per topic per second (the newest value wins and is
    sent when the interval allows); alerts are never rate-limited.
    """

    #: the broker's host name or address
    host: Annotated[str, Field(min_length=1)]
    #: the broker's port
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    #: broker login (password needs it)
    username: Annotated[str, Field(min_length=1)] | None = None
    #: broker password
    password: str | None = None
    #: first level(s) of every topic: <prefix>/<stream>/count, <prefix>/alerts, ...
    topic_prefix: Annotated[str, Field(min_length=1, max_length=200)] = "crowdcount"
    #: MQTT quality of service of every message
    qos: Literal[0, 1, 2] = 0
    #: count messages per topic and second at most (alerts are never limited)
    max_rate: Annotated[float, Field(gt=0, le=100)] = 2.0
    #: seconds between keep-alive pings
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    #: MQTT client id; unset: one is generated
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    #: publish Home Assistant MQTT discovery configs (entities appear in HA by themselves)
    home_assistant: bool = False
    #: Home Assistant's discovery prefix (HA's default)
    discovery_prefix: Annotated[str, Field(min_length=1, max_length=200)] = "homeassistant"

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not re.match(_TOPIC_PREFIX_RE, prefix):
            raise ValueError(
                f"{prefix!r} is not a topic prefix: levels separated by '/', none empty, "
                "no '+', '#' or spaces"
            )
        return prefix

    @model_validator(mode="after")
    def _password_needs_user(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self


class SinksConfig(_Strict):
    """Outside systems told about counts and alerts; each is off unless its table exists."""

    webhook: WebhookConfig | None = None
    mqtt: MqttConfig | None = None


class ClusterConfig(_Strict):
    """Cameras sharded over a Ray cluster, PostgreSQL as the shared store.

    ``shards`` is fixed for the life of a deployment: each camera is assigned a shard when it
    is added and stays there. More shards than nodes is fine (and lets capacity grow by adding
    nodes); each shard takes one ``camera_slots`` unit of its node. ``ice_addresses``, when
    set, are the only addresses a shard offers WebRTC viewers (the node's address that
    browsers can reach); unset, every interface of the node is offered.
    """

    #: the Ray cluster's address (HEAD:6379)
    address: Annotated[str, Field(min_length=1)]
    #: PostgreSQL url of the shared store (postgresql://user@host/db)
    database: Annotated[str, Field(max_length=MAX_URL_LENGTH, pattern=r"^postgres(ql)?://")]
    #: camera groups, each a Ray actor; fixed for the life of a deployment
    shards: Annotated[int, Field(ge=1, le=4096)] = 8
    #: Ray namespace of the shard actors
    namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "crowdcount"
    #: the only addresses shards offer WebRTC viewers; unset: every interface
    ice_addresses: Annotated[tuple[str, ...], BeforeValidator(_as_tuple)] = ()
    #: seconds without a status report from a camera's shard before the API reports it down
    outage_after: Annotated[float, Field(gt=0, le=3600)] = 3.0


def _check_unique_names(field: str, items: Sequence[StreamConfig | ThresholdConfig]) -> None:
    """Names are ids (in URLs, topics, the store): one given twice in a list is an error
    that names both places."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise ValueError(
                f"{field}[{i}] repeats the name {item.name!r} of {field}[{seen[item.name]}]"
            )
        seen[item.name] = i


class Config(_Strict):
    """The whole file. New sections are added as new fields here; unknown ones are errors."""

    # Defaults built from {} (not a shared instance) so that a file without a [server] table
    # still gets its paths resolved against the file's folder.
    server: ServerConfig = Field(default_factory=dict, validate_default=True)
    model: ModelConfig = Field(default_factory=dict, validate_default=True)
    streams: Annotated[tuple[StreamConfig, ...], BeforeValidator(_as_tuple)] = ()
    thresholds: Annotated[tuple[ThresholdConfig, ...], BeforeValidator(_as_tuple),
                          Field(max_length=MAX_ALERT_RULES)] = ()
    sinks: SinksConfig = Field(default_factory=dict, validate_default=True)
    cluster: ClusterConfig | None = None

    @field_validator("streams")
    @classmethod
    def _check_streams(
        cls, streams: tuple[StreamConfig, ...], info: ValidationInfo
    ) -> tuple[StreamConfig, ...]:
        _check_unique_names("streams", streams)
        server = info.data.get("server")
        if isinstance(server, ServerConfig) and len(streams) > server.max_streams:
            raise ValueError(
                f"{len(streams)} streams configured but server.max_streams is {server.max_streams}"
            )
        return streams

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(
        cls, rules: tuple[ThresholdConfig, ...], info: ValidationInfo
    ) -> tuple[ThresholdConfig, ...]:
        _check_unique_names("thresholds", rules)
        # A rule on a stream of this file must name one of its zones: a typo would otherwise
        # be a rule that silently never fires. Streams added through the API are not known
        # here, so rules on other streams are accepted as they are.
        streams = {s.name: s for s in info.data.get("streams") or ()}
        for i, r in enumerate(rules):
            stream = streams.get(r.stream)
            if stream is not None and r.metric != "count" and stream.floor is None:
                raise ValueError(f"thresholds[{i}]: a {r.metric} rule needs a floor-calibrated "
                                 f"stream; add [streams.floor] to stream {r.stream!r}")
            if stream is not None and r.zone is not None:
                zones = [z.name for z in stream.zones]
                if r.zone not in zones:
                    raise ValueError(
                        f"thresholds[{i}]: stream {r.stream!r} has no zone {r.zone!r} "
                        f"(zones: {', '.join(map(repr, zones)) or 'none'})"
                    )
        return rules

    @classmethod
    def default(cls) -> Config:
        """Every default: loopback only, no streams, bundled ONNX model."""
        return cls()


# ---------------------------------------------------------------------- loading and errors


def parse_config(
    data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None,
    token: str | None = None,
) -> Config:
    """Validate an already-parsed mapping (TOML, JSON from the API, a test's dict).
    ``token`` is a ``--token`` flag: the exposure check counts it (see ``resolve_token``)."""
    try:
        return Config.model_validate(data, context={"base_dir": base_dir, "token": token})
    except ValidationError as exc:
        raise to_config_error(exc, source) from None


def load_config(path: str | Path, token: str | None = None) -> Config:
    """Read and validate a TOML file; every failure is a one-line ``ConfigError``.
    ``token`` as for ``parse_config``."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return parse_config(data, source, path.resolve().parent, token)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            if len(part) > MAX_NAME_LENGTH:  # a client's unknown key: shown, not echoed whole
                part = part[:MAX_NAME_LENGTH] + "..."
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the keys at ``loc`` (for 'did you mean' suggestions)."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _find_model(model.model_fields[part].annotation)
    return model


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (tuple, list, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(tp):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def to_config_error(exc: ValidationError, source: str) -> ConfigError:
    """One precise line from pydantic's first error (key path, problem, a suggestion for a
    misspelt key); the zones route words its request errors with it too."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        problem = f"unknown key {key[:MAX_NAME_LENGTH]!r}"
        model = _model_at(loc[:-1])
        if model is not None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            if close:
                problem += f" (did you mean {close[0]!r}?)"
    elif kind == "missing":
        problem = "required key is missing"
    elif kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        problem = f"needs {word} {bound} items, has {ctx.get('actual_length')}"
    elif kind in ("model_type", "dict_type"):
        problem = f"expected a table, got {_describe(err['input'])}"
    elif kind in ("value_error", "assertion_error"):
        problem = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        problem = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {_describe(err['input'])}"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ConfigError(source, _key_path(loc), problem)
