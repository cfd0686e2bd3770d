"""The config tree: a full example, strictness at every level, defaults, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from crowdcount.streamer.config import (
    Config,
    ConfigError,
    ServerConfig,
    StreamConfig,
    load_config,
    parse_config,
)

FULL = """
[server]
host = "0.0.0.0"
port = 9000
token = "s3cret-token"
database = "data/counts.sqlite3"
max_upload_bytes = 5_000_000
max_streams = 4
max_viewers_per_stream = 3
upload_rate_per_minute = 10

[model]
path = "/opt/models/counter.onnx"
backend = "tflite"
threads = 2
max_batch = 4

[[streams]]
name = "entrance"
url = "rtsps://10.0.0.12:322/stream1"
max_side = 960
fps_limit = 5.0
stall_timeout = 10

[[streams.zones]]
name = "door"
points = [[100, 200], [400, 200], [400, 600.5], [100, 600]]

[[streams.zones]]
name = "queue"
points = [[0, 0], [50, 0], [25, 40]]

[[streams]]
name = "replay"
url = "videos/hall.mp4"
loop = true

[[streams]]
name = "usb"
url = "/dev/video0"

[[streams]]
name = "laptop"
url = "webcam:1"
"""


def _write(tmp_path: Path, text: str, name: str = "crowd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: ")
    return err


def test_full_example_parses(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, FULL))
    s = cfg.server
    assert (s.host, s.port, s.token, s.allow_insecure_public) == (
        "0.0.0.0",
        9000,
        "s3cret-token",
        False,
    )
    assert s.database == tmp_path / "data" / "counts.sqlite3"  # relative to the file
    assert (s.max_upload_bytes, s.max_streams, s.max_viewers_per_stream) == (5_000_000, 4, 3)
    assert s.upload_rate_per_minute == 10
    m = cfg.model
    assert (m.path, m.backend, m.threads, m.max_batch) == (
        Path("/opt/models/counter.onnx"),
        "tflite",
        2,
        4,
    )
    entrance, replay, usb, laptop = cfg.streams
    assert entrance.url == "rtsps://10.0.0.12:322/stream1" and entrance.kind == "rtsp"
    assert (entrance.max_side, entrance.fps_limit, entrance.stall_timeout) == (960, 5.0, 10.0)
    assert isinstance(entrance.stall_timeout, float)
    assert [z.name for z in entrance.zones] == ["door", "queue"]
    assert entrance.zones[0].points[2] == (400.0, 600.5)
    assert replay.kind == "file" and replay.loop is True
    assert replay.url == str(tmp_path / "videos" / "hall.mp4")
    assert (usb.kind, usb.url) == ("device", "/dev/video0")
    assert (laptop.kind, laptop.url) == ("webcam", "webcam:1")
    assert (usb.max_side, usb.fps_limit, usb.stall_timeout, usb.zones) == (None, None, 5.0, ())


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, FULL))
    with pytest.raises(Exception, match="frozen"):
        cfg.server.port = 1  # type: ignore[misc]
    assert isinstance(cfg.streams, tuple) and isinstance(cfg.streams[0].zones, tuple)


def test_defaults(tmp_path: Path) -> None:
    for cfg in (Config.default(), load_config(_write(tmp_path, ""))):
        s = cfg.server
        assert (s.host, s.port, s.token) == ("127.0.0.1", 8080, None)
        assert s.allow_insecure_public is False
        assert s.database.name == "crowdcount.sqlite3"
        assert s.max_upload_bytes == 10 * 1024 * 1024
        assert (s.max_streams, s.max_viewers_per_stream, s.upload_rate_per_minute) == (16, 8, 60)
        assert (cfg.model.path, cfg.model.backend, cfg.model.threads) == (None, None, None)
        assert cfg.model.max_batch is None
        assert cfg.streams == ()
    assert Config.default().server.database == Path("crowdcount.sqlite3")
    assert load_config(_write(tmp_path, "")).server.database == tmp_path / "crowdcount.sqlite3"


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        ("colour = 1\n", "colour", None),
        ("[stream]\n", "stream", "streams"),
        ("[alerts]\n", "alerts", None),
        ("[sinks.email]\n", "sinks.email", None),
        ("[sinks.mqtt]\nhost = 'h'\nprot = 1\n", "sinks.mqtt.prot", "port"),
        (
            "[sinks.webhook]\nurl = 'http://h'\nsecret = 's'\nretry = 1\n",
            "sinks.webhook.retry",
            "retries",
        ),
        (
            "[[thresholds]]\nname = 'r'\nstream = 'a'\nabove = 2\nbelow = 1\nfor = 1\n",
            "thresholds[0].for",
            None,
        ),
        ("[server]\nprot = 1\n", "server.prot", "port"),
        ("[model]\nbackends = 'onnx'\n", "model.backends", "backend"),
        (
            '[[streams]]\nname = "a"\nurl = "rtsp://h/x"\nstall_timout = 3\n',
            "streams[0].stall_timout",
            "stall_timeout",
        ),
        (
            '[[streams]]\nname = "a"\nurl = "rtsp://h/x"\n'
            '[[streams]]\nname = "b"\nurl = "rtsp://h/y"\n'
            '[[streams.zones]]\nname = "z"\npoints = [[0,0],[1,0],[0,1]]\ncolor = "red"\n',
            "streams[1].zones[0].color",
            None,
        ),
    ],
)
def test_unknown_keys_rejected_with_key_path(
    tmp_path: Path, text: str, path: str, suggestion: str | None
) -> None:
    err = _error(tmp_path, text)
    assert err.path == path
    assert f"unknown key {path.rsplit('.', 1)[-1]!r}" in err.problem
    if suggestion:
        assert f"did you mean {suggestion!r}" in err.problem


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("[server]\nport = '8080'\n", "server.port", "valid integer, got str '8080'"),
        ("[server]\nport = 70000\n", "server.port", "less than or equal to 65535"),
        ("[server]\nport = 80.0\n", "server.port", "valid integer"),
        ("[server]\nallow_insecure_public = 1\n", "server.allow_insecure_public", "boolean"),
        ("[server]\nmax_streams = 0\n", "server.max_streams", "greater than or equal to 1"),
        ("[server]\ndatabase = 3\n", "server.database", "expected a path string"),
        ("[server]\ntoken = ''\n", "server.token", "at least 1 character"),
        ("server = 3\n", "server", "expected a table, got int 3"),
        ("[model]\nbackend = 'ONNX'\n", "model.backend", "'openvino', 'onnx', 'tflite' or 'keras'"),
        ("[model]\nthreads = true\n", "model.threads", "valid integer, got bool True"),
        ("[model]\nmax_batch = 0\n", "model.max_batch", "greater than or equal to 1"),
        ("streams = 'cam'\n", "streams", "tuple"),
        ("[[streams]]\nurl = 'rtsp://h/x'\n", "streams[0].name", "required key is missing"),
        ("[[streams]]\nname = 'a'\n", "streams[0].url", "required key is missing"),
        ("[[streams]]\nname = 'a b'\nurl = 'x.mp4'\n", "streams[0].name", "pattern"),
        ("[[streams]]\nname = 'a'\nurl = 'http://h/x'\n", "streams[0].url", "scheme 'http'"),
        ("[[streams]]\nname = 'a'\nurl = 'webcam:x'\n", "streams[0].url", "webcam:0"),
        ("[[streams]]\nname = 'a'\nurl = 'x.mp4'\nisolate_decoder = true\n", "streams[0]",
         "isolate_decoder only applies to rtsp urls"),
        ("[[streams]]\nname = 'a'\nurl = 'x.mp4'\nloop = 'yes'\n", "streams[0].loop", "boolean"),
        ("[[streams]]\nname = 'a'\nurl = 'rtsp://h'\nloop = true\n", "streams[0]", "loop = true"),
        ("[[streams]]\nname = 'a'\nurl = 'x.mp4'\nfps_limit = 0\n", "streams[0].fps_limit", "0"),
        ("[[streams]]\nname = 'a'\nurl = 'x.mp4'\nmax_side = 8\n", "streams[0].max_side", "32"),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\nstall_timeout = '5'\n",
            "streams[0].stall_timeout",
            "valid number",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n[[streams]]\nname = 'a'\nurl = 'y.mp4'\n",
            "streams",
            "streams[1] repeats the name 'a' of streams[0]",
        ),
        (
            "[server]\nmax_streams = 1\n"
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n[[streams]]\nname = 'b'\nurl = 'y.mp4'\n",
            "streams",
            "2 streams configured but server.max_streams is 1",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, 1]]\n",
            "streams[0].zones[0].points",
            "needs at least 3 items, has 2",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, '1'], [2, 0]]\n",
            "streams[0].zones[0].points[1][1]",
            "valid number",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, 1, 1], [2, 0]]\n",
            "streams[0].zones[0].points[1]",
            "at most 2",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, 1], [2, 2]]\n",
            "streams[0].zones[0].points",
            "no area",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [-1, 1], [2, 0]]\n",
            "streams[0].zones[0].points",
            ">= 0",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, 0], [0, 1]]\n"
            "[[streams.zones]]\nname = 'z'\npoints = [[0, 0], [1, 0], [0, 1]]\n",
            "streams[0].zones",
            "duplicate zone name 'z'",
        ),
        ("[server]\nallowed_hosts = ['crowd.local:8080 x']\n", "server.allowed_hosts[0]",
         "not a host name"),
        ("[server]\nallowed_hosts = 'crowd.local'\n", "server.allowed_hosts", "tuple"),
        ("[server]\nallowed_origins = ['https://dash.example.com/']\n",
         "server.allowed_origins[0]", "no path"),
        ("[server]\nallowed_origins = ['dash.example.com']\n", "server.allowed_origins[0]",
         "not an origin"),
        ("[[streams]]\nname = 'a'\nurl = 'rtsp://h/" + "a" * 3000 + "'\n", "streams[0].url",
         "at most 2048"),
        ("[[streams]]\nname = '" + "a" * 100 + "'\nurl = 'x.mp4'\n", "streams[0].name",
         "at most 64"),
    ],
)
def test_bad_values_rejected(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    err = _error(tmp_path, text)
    assert err.path == path, str(err)
    assert fragment in err.problem, str(err)


def test_public_host_needs_token_or_explicit_opt_in(tmp_path: Path) -> None:
    err = _error(tmp_path, "[server]\nhost = '0.0.0.0'\n")
    assert err.path == "server" and "token" in err.problem
    _error(tmp_path, "[server]\nhost = 'camera-box.lan'\n")
    ok = [
        "[server]\nhost = '0.0.0.0'\ntoken = 't'\n",
        "[server]\nhost = '0.0.0.0'\nallow_insecure_public = true\n",
        "[server]\nhost = '::1'\n",
        "[server]\nhost = 'localhost'\n",
        "[server]\nhost = '127.0.0.2'\n",
    ]
    for text in ok:
        load_config(_write(tmp_path, text))
    # A CLI override through model_copy skips validation; the rule stays available.
    cfg = Config.default()
    assert cfg.server.model_copy(update={"host": "0.0.0.0"}).exposure_problem()


def test_several_problems_still_one_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "[server]\nport = 'x'\nmax_streams = 0\nfoo = 1\n")
    assert "(and 2 more problems)" in str(err)


def test_toml_syntax_and_io_errors_are_one_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "[server\nport = 1\n")
    assert err.path == "" and "invalid TOML" in err.problem and "line 1" in err.problem
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read") as info:
        load_config(missing)
    assert "\n" not in str(info.value)
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_parse_config_from_mapping() -> None:
    cfg = parse_config({"streams": [{"name": "cam", "url": "rtsp://h/1"}]})
    assert cfg.streams[0].url == "rtsp://h/1"
    assert parse_config({"streams": [{"name": "f", "url": "rel.mp4"}]}).streams[0].url == "rel.mp4"
    with pytest.raises(ConfigError, match=r"^<config>: streams\[0\]\.x: unknown key"):
        parse_config({"streams": [{"name": "cam", "url": "rtsp://h/1", "x": 1}]})


def test_models_usable_directly() -> None:
    s = StreamConfig(name="cam", url="webcam:0")
    assert s.kind == "webcam"
    assert ServerConfig(port=0).port == 0  # 0: pick a free port (tests)


INTEGRATIONS = """
[[streams]]
name = "entrance"
url = "rtsp://10.0.0.12/stream1"

[[streams.zones]]
name = "door"
points = [[0, 0], [100, 0], [100, 100]]

[[thresholds]]
name = "door-crowded"
stream = "entrance"
zone = "door"
above = 25
below = 15.5
for_seconds = 10

[[thresholds]]
name = "api-stream-busy"
stream = "added-later"
above = 100
below = 80

[sinks.webhook]
url = "https://hooks.example.com/crowd?x=1"
secret = "s3cret"
timeout = 2
retries = 5
counts_interval = 60

[sinks.mqtt]
host = "broker.lan"
port = 8883
username = "cc"
password = "pw"
topic_prefix = "site/a/crowd"
qos = 1
max_rate = 0.5
"""


def test_thresholds_and_sinks_parse(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, INTEGRATIONS))
    door, busy = cfg.thresholds
    assert (door.name, door.stream, door.zone, door.above, door.below, door.for_seconds) == (
        "door-crowded", "entrance", "door", 25.0, 15.5, 10.0,
    )  # fmt: skip
    assert (busy.zone, busy.for_seconds) == (None, 0.0)  # a stream the API may add
    hook = cfg.sinks.webhook
    assert hook is not None
    assert (hook.url, hook.secret, hook.timeout, hook.retries, hook.counts_interval) == (
        "https://hooks.example.com/crowd?x=1", "s3cret", 2.0, 5, 60.0,
    )  # fmt: skip
    assert (hook.backoff, hook.max_backoff, hook.queue_size) == (0.5, 30.0, 1000)
    mqtt = cfg.sinks.mqtt
    assert mqtt is not None
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == ("broker.lan", 8883, "cc", "pw")
    assert (mqtt.topic_prefix, mqtt.qos, mqtt.max_rate, mqtt.keepalive) == (
        "site/a/crowd", 1, 0.5, 30,
    )  # fmt: skip


def test_integration_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, ""))
    assert cfg.thresholds == () and cfg.sinks.webhook is None and cfg.sinks.mqtt is None
    cfg = load_config(_write(tmp_path, "[sinks.mqtt]\nhost = '127.0.0.1'\n"))
    assert cfg.sinks.mqtt is not None
    assert (cfg.sinks.mqtt.port, cfg.sinks.mqtt.topic_prefix, cfg.sinks.mqtt.qos) == (
        1883, "crowdcount", 0,
    )  # fmt: skip
    assert cfg.sinks.mqtt.max_rate == 2.0 and cfg.sinks.mqtt.username is None


_RULE = "[[thresholds]]\nname = 'r'\nstream = 'a'\n"


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            _RULE + "above = 5\nbelow = 5\n",
            "thresholds[0]",
            "below (5) must be less than above (5)",
        ),
        (_RULE + "above = 5\nbelow = 7\n", "thresholds[0]", "cannot flap"),
        (_RULE + "below = 1\n", "thresholds[0].above", "required key is missing"),
        (_RULE + "above = '5'\nbelow = 1\n", "thresholds[0].above", "valid number"),
        (_RULE + "above = 5\nbelow = -1\n", "thresholds[0].below", "greater than or equal to 0"),
        (_RULE + "above = inf\nbelow = 1\n", "thresholds[0].above", "finite"),
        (_RULE + "above = 5\nbelow = 1\nfor_seconds = -1\n", "thresholds[0].for_seconds", "0"),
        (
            "[[thresholds]]\nname = 'bad name'\nstream = 'a'\nabove = 2\nbelow = 1\n",
            "thresholds[0].name",
            "pattern",
        ),
        ("[thresholds]\nname = 'r'\n", "thresholds", "tuple"),
        (
            _RULE + "above = 2\nbelow = 1\n" + _RULE + "above = 3\nbelow = 1\n",
            "thresholds",
            "thresholds[1] repeats the name 'r' of thresholds[0]",
        ),
        (
            "[[streams]]\nname = 'a'\nurl = 'x.mp4'\n"
            "[[streams.zones]]\nname = 'door'\npoints = [[0, 0], [1, 0], [0, 1]]\n"
            + _RULE
            + "zone = 'dor'\nabove = 2\nbelow = 1\n",
            "thresholds",
            "stream 'a' has no zone 'dor' (zones: 'door')",
        ),
        ("[sinks.webhook]\nsecret = 's'\n", "sinks.webhook.url", "required key is missing"),
        ("[sinks.webhook]\nurl = 'http://h'\n", "sinks.webhook.secret", "required"),
        ("[sinks.webhook]\nurl = 'ftp://h'\nsecret = 's'\n", "sinks.webhook.url", "http"),
        ("[sinks.webhook]\nurl = 'http://'\nsecret = 's'\n", "sinks.webhook.url", "http"),
        (
            "[sinks.webhook]\nurl = 'http://h'\nsecret = 's'\nretries = -1\n",
            "sinks.webhook.retries",
            "greater than or equal to 0",
        ),
        (
            "[sinks.webhook]\nurl = 'http://h'\nsecret = 's'\ntimeout = 0\n",
            "sinks.webhook.timeout",
            "greater than 0",
        ),
        ("[sinks.mqtt]\nport = 1883\n", "sinks.mqtt.host", "required key is missing"),
        ("[sinks.mqtt]\nhost = 'h'\nport = '1883'\n", "sinks.mqtt.port", "valid integer"),
        ("[sinks.mqtt]\nhost = 'h'\nqos = 3\n", "sinks.mqtt.qos", "0, 1 or 2"),
        ("[sinks.mqtt]\nhost = 'h'\npassword = 'p'\n", "sinks.mqtt", "username is not"),
        ("[sinks.mqtt]\nhost = 'h'\ntopic_prefix = 'a/#'\n", "sinks.mqtt.topic_prefix", "'#'"),
        ("[sinks.mqtt]\nhost = 'h'\ntopic_prefix = 'a//b'\n", "sinks.mqtt.topic_prefix", "empty"),
        ("[sinks.mqtt]\nhost = 'h'\nmax_rate = 0\n", "sinks.mqtt.max_rate", "greater than 0"),
        ("sinks = 1\n", "sinks", "expected a table"),
    ],
)
def test_bad_integration_values_rejected(
    tmp_path: Path, text: str, path: str, fragment: str
) -> None:
    err = _error(tmp_path, text)
    assert err.path == path, str(err)
    assert fragment in err.problem, str(err)


def test_stream_max_retries_bounds_rtsp_reconnects() -> None:
    from crowdcount.streamer.service import make_source

    cfg = parse_config({"streams": [{"name": "cam", "url": "rtsp://10.0.0.1/s", "max_retries": 3}]})
    assert cfg.streams[0].max_retries == 3
    assert make_source(cfg.streams[0]).max_retries == 3
    default = parse_config({"streams": [{"name": "c", "url": "rtsp://h/s"}]})
    assert default.streams[0].max_retries is None
    with pytest.raises(ConfigError, match="max_retries"):
        parse_config({"streams": [{"name": "c", "url": "rtsp://h/s", "max_retries": -1}]})


def test_browser_protection_keys_parse() -> None:
    server = parse_config({"server": {
        "allowed_hosts": ["crowd.local", "10.0.0.5", "*"],
        "allowed_origins": ["https://dash.example.com:8443"]}}).server
    assert server.allowed_hosts == ("crowd.local", "10.0.0.5", "*")
    assert server.allowed_origins == ("https://dash.example.com:8443",)
    assert parse_config({}).server.allowed_hosts == ()


def test_cameras_default_to_one_count_a_second_and_fps_limit_overrides(
        tmp_path: Path) -> None:
    from crowdcount.streamer.config import CAMERA_FPS
    from crowdcount.streamer.service import make_source

    clip = tmp_path / "clip.mp4"
    cfg = parse_config({"streams": [
        {"name": "cam", "url": "rtsp://10.0.0.1/s"},
        {"name": "fast", "url": "rtsp://10.0.0.1/t", "fps_limit": 5, "max_side": 512},
        {"name": "iso", "url": "rtsp://10.0.0.1/u", "isolate_decoder": True},
        {"name": "file", "url": str(clip)},
    ]})
    cam, fast, iso, file = cfg.streams
    assert CAMERA_FPS == 1.0 and cam.fps_limit is None and cam.target_fps == 1.0
    assert fast.target_fps == 5 and iso.target_fps == 1.0 and file.target_fps is None
    # The decoders get the rate (keyframes only when it allows) and the model's size.
    source = make_source(cam, max_side=768)
    assert (source.decoder.target_fps, source.decoder.max_side) == (1.0, 768)
    assert make_source(fast, max_side=768).decoder.max_side == 512  # the stream's own wins
    assert make_source(iso).options["target_fps"] == 1.0  # the child decodes the same way
    assert make_source(file).decoder.target_fps is None


def test_a_stream_model_is_resolved_beside_the_config_and_api_bodies_cannot_name_one(
    tmp_path: Path,
) -> None:
    text = '[[streams]]\nname = "cam"\nurl = "rtsp://h/1"\nmodel = "models/cam.onnx"\n'
    cfg = load_config(_write(tmp_path, text))
    assert cfg.streams[0].model == tmp_path / "models" / "cam.onnx"
    assert load_config(_write(tmp_path, text.replace('model = "models/cam.onnx"\n', ""))
                       ).streams[0].model is None
    from crowdcount.streamer.config import StreamSettings

    with pytest.raises(ValueError, match="model"):
        StreamSettings.model_validate({"model": "/etc/passwd"})
