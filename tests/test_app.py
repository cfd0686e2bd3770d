"""The HTTP service end to end: a real aiohttp server, the brightness model, SQLite in
tmp_path, synthetic sources whose counts are known exactly."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.streamer.app import build_app
from crowdcount.streamer.sources.synthetic import SyntheticSource
from crowdcount.streamer.store import SQLiteStore
from crowdcount.streamer.version import VERSION
from tests.fixtures.app import service
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until

SECRET_USER, SECRET_PASS = "operator", "hunter2-pass"


async def add_synthetic(client: TestClient, sid: str, level: int = 200, fps: float = 20.0,
                        origin: str = "config") -> SyntheticSource:
    # A full-frame grey level: count = w*h/64 * level/255 exactly.
    source = SyntheticSource(sid, 320, 256, fps=fps,
                             render=lambda _i: np.full((256, 320, 3), level, np.uint8))
    await service(client).add_source(source, url="synthetic", kind="synthetic",
                                     origin=origin)  # type: ignore[arg-type]
    return source


def frame_count(level: int) -> float:
    return expected_count(np.full((256, 320, 3), level, np.uint8))


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def test_image() -> np.ndarray:
    image = np.zeros((256, 320, 3), np.uint8)
    image[32:160, 64:256] = (250, 200, 150)
    image[200:, :100] = 90
    return image


test_image.__test__ = False  # type: ignore[attr-defined]


# -- health, page, errors ---------------------------------------------------------------


async def test_health_page_static_and_json_errors(serve, brightness_model) -> None:
    client = await serve()
    r = await client.get("/api/health")
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "ok" and body["streams"] == 0
    assert body["model"] == {"backend": "onnx", "path": str(brightness_model)}
    assert body["uptime_s"] >= 0
    assert body["version"] == VERSION
    r = await client.get("/")
    assert r.status == 200 and "CrowdCount" in await r.text()
    assert (await client.get("/static/app.js")).status == 200
    r = await client.get("/api/nothing")
    assert r.status == 404 and "not found" in (await r.json())["error"]
    r = await client.put("/api/streams")
    assert r.status == 405 and "PUT" in (await r.json())["error"]


async def raw_get(client: TestClient, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte over a plain socket: an HTTP client library would
    normalise ``..`` away before sending, and the probe would test nothing."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client.host}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", [
    "/static/../model/__init__.py",
    "/static/%2e%2e/model/__init__.py",
    "/static/%2E%2E/%2E%2E/crowdcount/model/__init__.py",
    "/static/..%2fmodel/__init__.py",
    "/static//../model/__init__.py",
])
async def test_static_files_cannot_escape_the_page_folder(serve, path) -> None:
    """The file the probe aims at really exists one folder above the page's (in a checkout
    and in an installed wheel alike), so serving it would be caught."""
    import crowdcount.model
    import crowdcount.web

    web_dir = Path(crowdcount.web.__file__).parent
    target = web_dir.parent / "model" / "__init__.py"
    assert target.resolve() == Path(crowdcount.model.__file__).resolve()
    secret = target.read_bytes()[:60]
    client = await serve()
    status, body = await raw_get(client, path)
    assert secret not in body
    assert status == 404, (status, body[:200])
    error = json.loads(body)["error"]
    assert error.startswith("not found: GET /static/") and ".." in error  # the raw path arrived


# -- streams ----------------------------------------------------------------------------


async def test_add_list_get_delete_never_leak_credentials(serve, tmp_path) -> None:
    client = await serve()
    url = f"rtsp://{SECRET_USER}:{SECRET_PASS}@127.0.0.1:9/cam"
    texts: list[str] = []
    r = await client.post("/api/streams", json={"name": "door", "url": url, "fps_limit": 5})
    texts.append(await r.text())
    assert r.status == 201, texts[-1]
    created = json.loads(texts[-1])
    assert created["id"] == "door" and created["kind"] == "rtsp" and created["origin"] == "api"
    assert created["url"] == "rtsp://***@127.0.0.1:9/cam"
    assert r.headers["Location"] == "/api/streams/door"
    # Let the source fail to connect at least once, so last_error is populated too.
    status = service(client).get("door").source.status
    await wait_until(lambda: status.state.value == "reconnecting" and status.last_error)
    for path in ("/api/streams", "/api/streams/door", "/metrics"):
        r = await client.get(path)
        assert r.status == 200
        texts.append(await r.text())
    listed = json.loads(texts[1])["streams"]
    assert [s["id"] for s in listed] == ["door"]
    assert json.loads(texts[2])["status"]["state"] == "reconnecting"
    r = await client.post("/api/streams", json={"name": "door", "url": url})
    texts.append(await r.text())
    assert r.status == 409 and "already exists" in texts[-1]
    for text in texts:
        assert SECRET_USER not in text and SECRET_PASS not in text, text

    r = await client.delete("/api/streams/door")
    assert r.status == 204
    assert (await client.get("/api/streams/door")).status == 404
    assert (await client.delete("/api/streams/door")).status == 404
    assert (await (await client.get("/api/streams")).json())["streams"] == []


async def test_api_streams_are_persisted_and_resumed(serve, make_config) -> None:
    client = await serve()
    r = await client.post("/api/streams", json={"name": "gate", "url": "rtsp://127.0.0.1:9/x",
                                                "max_side": 640})
    assert r.status == 201
    await client.close()  # graceful shutdown: sources stopped, store closed
    again = TestClient(TestServer(build_app(make_config())))
    await again.start_server()
    try:
        r = await again.get("/api/streams/gate")
        assert r.status == 200
        assert (await r.json())["options"] == {"max_side": 640}
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"name": "a", "url": "file:///etc/passwd"}, 400, "only rtsp"),
        ({"name": "a", "url": "/dev/video0"}, 400, "only rtsp"),
        ({"name": "a", "url": "http://127.0.0.1/x"}, 400, "only rtsp"),
        ({"name": "a", "url": "rtsp://"}, 400, "no host"),
        ({"url": "rtsp://127.0.0.1/x"}, 400, "'name' is required"),
        ({"name": "bad name!", "url": "rtsp://127.0.0.1/x"}, 400, "'name'"),
        ({"name": 5, "url": "rtsp://127.0.0.1/x"}, 400, "must be a string"),
        ({"name": "a", "url": ["rtsp://x"]}, 400, "must be a string"),
        ({"name": "a", "url": "rtsp://h/x", "fps_limit": "5"}, 400, "'fps_limit'"),
        ({"name": "a", "url": "rtsp://h/x", "fps_limit": True}, 400, "'fps_limit'"),
        ({"name": "a", "url": "rtsp://h/x", "max_side": 1.5}, 400, "'max_side'"),
        # the config file's bounds, in the API's words
        ({"name": "a", "url": "rtsp://h/x", "fps_limit": 500}, 400,
         "field 'fps_limit' must be less than or equal to 240, got 500"),
        ({"name": "a", "url": "rtsp://h/x", "stall_timeout": 0}, 400,
         "field 'stall_timeout' must be greater than 0, got 0"),
        ({"name": "a", "url": "rtsp://h/x", "max_retries": "3"}, 400,
         "field 'max_retries' must be an integer, got a string"),
        ({"name": "-a", "url": "rtsp://h/x"}, 400,
         "field 'name' must be 1-64 letters, digits, '_', '.' or '-' starting with a letter"),
        ({"name": "a", "url": "rtsp://h/x", "colour": "red"}, 400, "unknown field 'colour'"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_add_stream_rejects_bad_input(serve, body, status, needle) -> None:
    client = await serve()
    r = await client.post("/api/streams", json=body)
    assert r.status == status
    assert needle in (await r.json())["error"]
    assert service(client).streams == {}


async def test_malformed_and_oversized_json(serve) -> None:
    client = await serve()
    r = await client.post("/api/streams", data=b'{"name": "a",',
                          headers={"Content-Type": "application/json"})
    assert r.status == 400 and "malformed JSON" in (await r.json())["error"]
    r = await client.post("/api/streams", data=b"")
    assert r.status == 400
    r = await client.post("/api/streams", data=b"{" + b" " * 300_000 + b"}")
    assert r.status == 413 and "limit" in (await r.json())["error"]
    assert (await client.get("/api/health")).status == 200


async def test_max_streams(serve) -> None:
    client = await serve(max_streams=2)
    for name in ("a", "b"):
        r = await client.post("/api/streams", json={"name": name, "url": "rtsp://127.0.0.1:9/"})
        assert r.status == 201
    r = await client.post("/api/streams", json={"name": "c", "url": "rtsp://127.0.0.1:9/"})
    assert r.status == 409
    assert "stream limit reached: 2" in (await r.json())["error"]


async def test_config_streams_cannot_be_deleted_via_api(serve) -> None:
    client = await serve()
    await add_synthetic(client, "fixed")
    r = await client.delete("/api/streams/fixed")
    assert r.status == 409 and "config file" in (await r.json())["error"]


# -- counts -----------------------------------------------------------------------------


async def test_counts_one_row_per_processed_frame_and_queries(serve) -> None:
    client = await serve()
    svc = service(client)
    source = await add_synthetic(client, "hall", level=200, origin="api")
    await wait_until(lambda: source.status.frames_out >= 20)
    r = await client.delete("/api/streams/hall")  # history is kept
    assert r.status == 204
    processed = source.status.frames_out

    r = await client.get("/api/streams/hall/counts")
    assert r.status == 200
    body = await r.json()
    assert body["stream"] == "hall"
    rows = body["counts"]
    assert len(rows) == processed
    ts = [row["t"] for row in rows]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    for row in rows:
        assert row["count"] == pytest.approx(frame_count(200), rel=1e-4)
        assert row["smoothed"] == pytest.approx(frame_count(200), rel=1e-4)

    mid = ts[len(ts) // 2]
    r = await client.get("/api/streams/hall/counts", params={"since": mid})
    assert [x["t"] for x in (await r.json())["counts"]] == [t for t in ts if t >= mid]
    r = await client.get("/api/streams/hall/counts", params={"until": mid})
    assert [x["t"] for x in (await r.json())["counts"]] == [t for t in ts if t < mid]
    r = await client.get("/api/streams/hall/counts", params={"limit": 3})
    assert [x["t"] for x in (await r.json())["counts"]] == ts[-3:]
    r = await client.get("/api/streams/hall/counts", params={"step": 3600})
    buckets = (await r.json())["counts"]
    assert sum(b["n"] for b in buckets) == processed
    assert buckets[0]["count"] == pytest.approx(frame_count(200), rel=1e-4)

    r = await client.get("/api/streams/hall/counts.csv")
    assert r.status == 200 and r.content_type == "text/csv"
    lines = (await r.text()).strip().splitlines()
    assert lines[0] == "t,count,smoothed" and len(lines) == processed + 1
    assert svc.store.stats()["dropped"] == 0


async def test_history_defaults_to_the_last_day(serve) -> None:
    client = await serve(raw_history_hours=0)  # raw rows kept: this is about the raw query
    history = service(client).store.history
    now = time.time()
    for age_h in (49, 25, 23, 1):
        history.add("old-cam", now - age_h * 3600, float(age_h), float(age_h))
    await asyncio.to_thread(service(client).store.flush)
    r = await client.get("/api/streams/old-cam/counts")
    assert [x["count"] for x in (await r.json())["counts"]] == [23.0, 1.0]
    r = await client.get("/api/streams/old-cam/counts", params={"until": now - 24 * 3600})
    assert [x["count"] for x in (await r.json())["counts"]] == [25.0]  # the day before
    text = await (await client.get("/api/streams/old-cam/counts.csv")).text()
    assert [float(line.split(",")[1]) for line in text.splitlines()[1:]] == [23.0, 1.0]
    text = await (await client.get("/api/streams/old-cam/counts.csv?since=0")).text()
    assert [float(line.split(",")[1]) for line in text.splitlines()[1:]] == [49, 25, 23, 1]
    r = await client.get("/api/streams/old-cam/counts", params={"since": 0, "step": 86400})
    assert sum(b["n"] for b in (await r.json())["counts"]) == 4


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("since=yesterday", "'since'"),
        ("until=nan", "'until'"),
        ("step=0", "'step'"),
        ("step=-5", "'step'"),
        ("limit=0", "'limit'"),
        ("limit=ten", "'limit'"),
        ("limit=1000001", "'limit'"),
        ("since=10&until=5", "'since'"),
        ("zones=maybe", "'zones'"),
    ],
)
async def test_counts_bad_parameters(serve, query, needle) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    r = await client.get(f"/api/streams/cam/counts?{query}")
    assert r.status == 400
    assert needle in (await r.json())["error"]


async def test_counts_of_unknown_stream_404(serve) -> None:
    client = await serve()
    for path in ("/api/streams/ghost/counts", "/api/streams/ghost/counts.csv",
                 "/api/streams/ghost/feed", "/api/streams/ghost"):
        r = await client.get(path)
        assert r.status == 404, path
        assert "ghost" in (await r.json())["error"]


async def test_sse_feed_delivers_counts(serve) -> None:
    client = await serve()
    await add_synthetic(client, "lobby", level=120)
    for path in ("/api/streams/lobby/feed", "/api/feed"):
        r = await client.get(path)
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        items = []
        async with asyncio.timeout(10):
            while len(items) < 3:
                line = (await r.content.readline()).decode().strip()
                if line.startswith("data: "):
                    items.append(json.loads(line[6:]))
        r.close()
        for item in items:
            assert item["stream"] == "lobby"
            assert item["count"] == pytest.approx(frame_count(120), rel=1e-4)
            assert {"t", "smoothed"} <= set(item)
        assert items[0]["t"] < items[1]["t"] < items[2]["t"]


# -- uploads ----------------------------------------------------------------------------


async def test_upload_png_and_jpeg_counts(serve) -> None:
    client = await serve()
    image = test_image()
    png = encode(image, ".png")
    r = await client.post("/api/count", data=png)  # raw body
    assert r.status == 200
    body = await r.json()
    assert body["count"] == pytest.approx(expected_count(image), rel=1e-4)
    assert (body["width"], body["height"]) == (320, 256)
    assert body["density"]["shape"] == [32, 40]
    assert "overlay_png" not in body

    jpeg = encode(image, ".jpg")
    form = FormData()
    form.add_field("image", jpeg, filename="crowd.jpg", content_type="image/jpeg")
    r = await client.post("/api/count?overlay=1", data=form)
    assert r.status == 200
    body = await r.json()
    assert body["count"] == pytest.approx(expected_count(image), rel=0.02)
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png"]), np.uint8),
                           cv2.IMREAD_COLOR)
    assert overlay.shape == (256, 320, 3)

    r = await client.post("/api/count?format=png", data=png)
    assert r.status == 200 and r.content_type == "image/png"
    assert float(r.headers["X-Count"]) == pytest.approx(expected_count(image), rel=1e-3)
    assert (await r.read()).startswith(b"\x89PNG")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_bad_uploads_are_4xx_json_and_server_keeps_serving(serve) -> None:
    client = await serve(max_upload_bytes=200_000)
    jpeg = encode(test_image(), ".jpg")
    noise = (np.random.default_rng(0).random((400, 400, 3)) * 255).astype(np.uint8)
    cases = {
        "empty": (b"", 400),
        "not an image": (b"hello, this is text", 400),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 400),
        "bomb": (_png_header_only(50_000, 50_000), 400),
        "too big": (encode(noise, ".png"), 413),
    }
    assert len(cases["too big"][0]) > 200_000
    for name, (data, status) in cases.items():
        r = await client.post("/api/count", data=data)
        assert r.status == status, (name, await r.text())
        assert r.content_type == "application/json"
        assert (await r.json())["error"], name
    form = FormData()
    form.add_field("image", cases["too big"][0], filename="big.png")
    r = await client.post("/api/count", data=form)
    assert r.status == 413
    form = FormData()
    form.add_field("picture", jpeg, filename="x.jpg")
    r = await client.post("/api/count", data=form)
    assert r.status == 400 and "'image'" in (await r.json())["error"]
    r = await client.post("/api/count?format=gif", data=jpeg)
    assert r.status == 400
    # Still healthy and still counting.
    assert (await client.get("/api/health")).status == 200
    r = await client.post("/api/count", data=jpeg)
    assert r.status == 200


async def test_upload_rate_limit(serve) -> None:
    client = await serve(upload_rate_per_minute=3)
    png = encode(test_image(), ".png")
    for _ in range(3):
        assert (await client.post("/api/count", data=png)).status == 200
    r = await client.post("/api/count", data=png)
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "rate limit" in (await r.json())["error"]


# -- auth and exposure --------------------------------------------------------------------


async def test_token_protects_api_metrics_and_page(serve) -> None:
    client = await serve(token="s3cret-token")
    for path in ("/api/health", "/api/streams", "/metrics", "/", "/static/app.js"):
        r = await client.get(path)
        assert r.status == 401, path
        assert "token" in (await r.json())["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get("/api/health", headers=wrong)).status == 401
    good = {"Authorization": "Bearer s3cret-token"}
    for path in ("/api/health", "/api/streams", "/metrics"):
        assert (await client.get(path, headers=good)).status == 200, path
    assert (await client.post("/api/streams", json={"name": "x", "url": "rtsp://h/"})).status \
        == 401
    # Browser flow: ?token= once sets a cookie and redirects to a token-free URL.
    r = await client.get("/?token=wrong", allow_redirects=False)
    assert r.status == 401
    r = await client.get("/?token=s3cret-token", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    cookie = r.cookies["crowdcount_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert "s3cret-token" not in cookie.value
    for path in ("/", "/api/health", "/static/app.js"):
        assert (await client.get(path)).status == 200, path


async def test_env_token(serve, monkeypatch) -> None:
    monkeypatch.setenv("CROWDCOUNT_TOKEN", "from-env")
    client = await serve()
    assert (await client.get("/api/health")).status == 401
    ok = await client.get("/api/health", headers={"Authorization": "Bearer from-env"})
    assert ok.status == 200


def test_refuses_public_host_without_token(make_config, monkeypatch) -> None:
    config = make_config()
    public = config.model_copy(update={"server": config.server.model_copy(
        update={"host": "0.0.0.0"})})
    with pytest.raises(ValueError, match="reachable from other machines"):
        build_app(public)
    with pytest.raises(Exception, match="reachable from other machines"):
        make_config(host="10.1.2.3")
    monkeypatch.setenv("CROWDCOUNT_TOKEN", "t")
    build_app(public)  # a token (here from the environment) makes it acceptable
    make_config(host="10.1.2.3")  # for a config file's host, too


# -- metrics ----------------------------------------------------------------------------


async def test_metrics_per_stream_series(serve) -> None:
    client = await serve()
    source = await add_synthetic(client, "east", level=255, origin="api")
    await wait_until(lambda: source.status.frames_out >= 25)  # fps is measured per second
    text = await (await client.get("/metrics")).text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values['crowdcount_people{stream="east"}'] == pytest.approx(frame_count(255))
    assert values['crowdcount_fps_in{stream="east"}'] > 0
    assert values['crowdcount_fps_out{stream="east"}'] > 0
    assert 'crowdcount_frames_dropped_total{stream="east"}' in values
    assert values['crowdcount_reconnects_total{stream="east"}'] == 0
    assert values['crowdcount_inference_latency_seconds_count{stream="east"}'] >= 25
    assert values['crowdcount_e2e_latency_seconds_count{stream="east"}'] >= 25
    assert values["crowdcount_streams"] == 1
    assert any(key.startswith('crowdcount_model_info{backend="onnx"') for key in values)
    assert (await client.delete("/api/streams/east")).status == 204
    text = await (await client.get("/metrics")).text()
    assert 'stream="east"' not in text


# -- WebRTC signalling errors -------------------------------------------------------------


async def test_rtc_offer_errors(serve) -> None:
    client = await serve()
    r = await client.post("/api/rtc/offer", json={"sdp": "v=0", "type": "offer",
                                                  "mode": "shout"})
    assert r.status == 400 and "mode" in (await r.json())["error"]
    sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n"
    r = await client.post("/api/rtc/offer", json={"sdp": sdp, "type": "offer", "mode": "view",
                                                  "stream_id": "nobody"})
    assert r.status == 404
    r = await client.post("/api/rtc/offer", json={"sdp": 5, "type": "offer", "mode": "view",
                                                  "stream_id": "x", "extra": 1})
    assert r.status == 400
    assert (await client.delete("/api/rtc/peers/unknown")).status == 404


async def test_store_flushed_on_shutdown(serve, tmp_path) -> None:
    client = await serve()
    source = await add_synthetic(client, "late")
    await wait_until(lambda: source.status.frames_out >= 5)
    await client.close()
    processed = source.status.frames_out
    with SQLiteStore(tmp_path / "counts.sqlite3") as store:
        assert len(store.history.counts("late")) == processed


async def test_retention_deletes_old_counts_at_start(serve, tmp_path) -> None:
    now = time.time()
    with SQLiteStore(tmp_path / "counts.sqlite3") as store:
        for age_days in (10, 3, 0.5, 0):
            store.history.add("cam", now - age_days * 86400, 5.0, 5.0)
        store.flush()
    client = await serve(retention_days=2, raw_history_hours=0)  # raw rows kept as long
    await wait_until(lambda: len(service(client).store.history.counts("cam")) == 2, timeout=10)
    kept = [row["t"] for row in service(client).store.history.counts("cam")]
    assert min(kept) > now - 2 * 86400


async def test_api_stream_source_settings_are_applied_and_resumed(serve, make_config) -> None:
    client = await serve()
    body = {"name": "cam", "url": "rtsp://127.0.0.1:9/none", "stall_timeout": 2.5,
            "max_retries": 4}
    r = await client.post("/api/streams", json=body)
    assert r.status == 201, await r.text()
    assert (await r.json())["options"] == {"stall_timeout": 2.5, "max_retries": 4}
    source = service(client).get("cam").source
    assert (source.stall_timeout, source.max_retries) == (2.5, 4)
    r = await client.post("/api/streams", json={**body, "name": "bad", "max_retries": 1.5})
    assert r.status == 400 and "max_retries" in (await r.json())["error"]
    await client.close()
    again = await serve()
    source = service(again).get("cam").source
    assert (source.stall_timeout, source.max_retries) == (2.5, 4)
