"""Schemathesis, an independent fuzzer, against a live ``crowdcount serve`` and its own
OpenAPI document: every operation with Schemathesis' default checks (no 5xx, answers that
match the documented schema, content type and headers, only documented status codes,
schema-valid data accepted and invalid data rejected, auth not ignored), bounded in
examples, while one file stream keeps counting.

The server and Schemathesis run inside a network namespace with only loopback
(``tests/fixtures/schemathesis_run.py`` says why: generated camera urls name any host).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.rtsp import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fuzz-token-0123456789"
#: Examples per operation and phase: enough to exercise every parameter, bounded so the
#: run stays near a minute on a 2-core machine.
MAX_EXAMPLES = int(os.environ.get("CROWD_SCHEMATHESIS_EXAMPLES", "8"))

SERVER = """\
[server]
port = {port}
token = "{token}"
database = "counts.sqlite3"
max_streams = 4
upload_rate_per_minute = 100000   # the fuzzer uploads many images; 429 is tested elsewhere

[model]
path = "{model}"
backend = "onnx"
threads = 1

[[streams]]
name = "clip"
url = "{clip}"
loop = true

[[streams.zones]]
name = "left"
points = [[0, 0], [160, 0], [160, 240], [0, 240]]

[[thresholds]]
name = "busy"
stream = "clip"
above = 100000
below = 1
"""

# Schemathesis' own configuration. Nothing is excluded; what is tuned, and why:
SCHEMATHESIS = """\
base-url = "http://127.0.0.1:{port}"
workers = 1
# Generous: this machine is shared and loaded; a slow answer is not what this test judges.
request-timeout = 30
max-stream-events = 3

[auth.openapi.bearer]
bearer = "{token}"

[generation]
max-examples = {examples}
database = "none"

# A body over server limits (256 KiB of JSON) is refused as too large (413) before its
# fields are read, whatever else is wrong with it: a rejection like the others.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]

# Path parameters and a rule's or an offer's stream are drawn half the time from names that
# exist (the looping stream, the config file's rule, files of the page and of Swagger UI),
# so the operations are exercised on real data, not only as 404s.
[dictionaries.streams]
values = ["clip"]
[dictionaries.rules]
values = ["busy"]
[dictionaries.files]
values = ["app.js", "style.css", "swagger-ui.css"]
[parameters]
"path.id" = {{ dictionary = "streams", probability = 0.5 }}
"path.name" = {{ dictionary = "rules", probability = 0.5 }}
"path.path" = {{ dictionary = "files", probability = 0.5 }}

"body.stream" = {{ dictionary = "streams", probability = 0.5 }}
"body.stream_id" = {{ dictionary = "streams", probability = 0.5 }}

# An SSE feed never ends by itself: Schemathesis stops reading it after max-stream-events
# events or this many seconds (not a failure), like any client that hangs up.
[[operations]]
include-name = ["GET /api/feed", "GET /api/streams/{{id}}/feed"]
request-timeout = 3

# Rules a JSON schema cannot state, so schema-valid requests that break them are refused
# with 400 and a message (positive_data_acceptance would count that as a failure). Each
# block adds 400 to the statuses that check accepts for valid data, for these operations:
# - since < until: a rule across two parameters;
[[operations]]
include-name = ["GET /api/streams/{{id}}/counts", "GET /api/streams/{{id}}/counts.csv",
                "GET /api/alerts"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404"]
# - the same, and a floor view needs the stream's floor calibration (state, 409);
[[operations]]
include-name = ["GET /api/streams/{{id}}/heatmap"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
# - a floor calibration's points must make a usable homography (not three in a row, a
#   horizon outside them) and keep the stream's zones on the floor;
[[operations]]
include-name = ["PUT /api/streams/{{id}}/floor"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404"]
# - a camera url must have a valid port and no Unicode spaces (urls.validate_api_url);
[[operations]]
include-name = ["POST /api/streams", "PATCH /api/streams/{{id}}"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
# - a zone polygon must enclose an area, zone names must be unique within the stream;
[[operations]]
include-name = ["PUT /api/streams/{{id}}/zones"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404"]
# - an alert rule's below must be under its above, its zone one of the stream's;
[[operations]]
include-name = ["POST /api/alerts/rules", "PUT /api/alerts/rules/{{name}}"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
# - an SDP offer must be a real offer with a usable video m-line (rtc.validate_offer);
[[operations]]
include-name = ["POST /api/rtc/offer"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
# - a calibration mark must lie inside its frame (whose size the schema cannot know);
[[operations]]
include-name = ["PUT /api/streams/{{id}}/calibration/frames/{{fid}}/marks"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404"]
# - an upload must be a decodable image.
[[operations]]
include-name = ["POST /api/count"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
"""


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) not installed"
    proc = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()[:200]}"
    return None


def run_schemathesis(tmp_path: Path, model: Path, clip: Path, *args: str,
                     timeout: float = 420) -> dict:
    """Serve ``clip`` and fuzz the server inside a loopback-only namespace; the summary."""
    problem = _namespace_problem()
    if problem:
        pytest.skip(f"needs a loopback-only network namespace, so generated camera urls "
                    f"reach no other machine: {problem}")
    port = free_port()
    config = tmp_path / "crowdcount.toml"
    config.write_text(SERVER.format(port=port, token=TOKEN, model=model, clip=clip))
    st_config = tmp_path / "schemathesis.toml"
    st_config.write_text(SCHEMATHESIS.format(port=port, token=TOKEN, examples=MAX_EXAMPLES))
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "tests.fixtures.schemathesis_run",
         str(config), str(port), TOKEN, str(st_config), str(summary), *args],
        cwd=tmp_path, env=env, timeout=timeout, check=True,
    )
    return json.loads(summary.read_text())


@pytest.mark.timeout(480)
def test_schemathesis_finds_nothing_and_the_stream_keeps_counting(
    tmp_path: Path, brightness_model: Path, h264_clip: Path
) -> None:
    result = run_schemathesis(tmp_path, brightness_model, h264_clip)
    (tmp_path / "schemathesis.out").write_text(result["output"])
    print(result["output"][-6000:])
    print(f"schemathesis ran {result['seconds']} s")
    assert result["schemathesis_rc"] == 0, result["output"][-12000:]
    # Every operation was tested (none skipped for lack of a schema it understands).
    assert "No issues found" in result["output"] or "passed" in result["output"]
    # The stream counted throughout: running at every sample, frames always rising.
    samples = result["samples"]
    assert len(samples) >= 3, samples
    assert all(s.get("state") == "running" for s in samples), samples
    frames = [s["frames_out"] for s in samples]
    assert all(b > a for a, b in itertools.pairwise(frames)), frames
    assert result["final"]["state"] == "running"
    assert result["final"]["frames_out"] > frames[-1]
    assert result["health"]["status"] == "ok"
    assert result["server_rc"] == 0, result["server_log"]
    assert "Traceback" not in result["server_log"], result["server_log"]
