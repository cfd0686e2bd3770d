"""Hostile input and access control through the real app (aiohttp test server, brightness
model, SQLite in tmp_path): every refusal is a 4xx JSON error, nothing is left behind, the
server keeps serving. Complements tests/test_app.py (uploads, stream bodies, counts
parameters, the token on the basic routes), which is not repeated here."""

from __future__ import annotations

import asyncio
import json
import re
import time
from urllib.parse import quote

import numpy as np
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from crowdcount.streamer.rtc import MAX_SDP_BYTES
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.app import Serve, service
from tests.fixtures.rtc import RtcClient, make_client

USER, PASSWORD = "camadmin", "Sup3r-s3cret-pw"
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}



async def add_synthetic(client: TestClient, sid: str, fps: float = 15.0) -> SyntheticSource:
    source = SyntheticSource(sid, 320, 256, fps=fps,
                             render=lambda _i: np.full((256, 320, 3), 120, np.uint8))
    await service(client).add_source(source, url="synthetic", kind="synthetic")
    return source


async def error_of(r: ClientResponse, status: int) -> str:
    """The JSON error message, after checking status and shape."""
    assert r.status == status, (r.status, await r.text())
    assert r.content_type == "application/json"
    body = await r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


async def healthy(client: TestClient, headers: dict[str, str] | None = None) -> None:
    r = await client.get("/api/health", headers=headers)
    assert r.status == 200 and (await r.json())["status"] == "ok"


# -- WebRTC offers over HTTP ------------------------------------------------------------------


async def test_malformed_and_oversized_rtc_offers(serve: Serve) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    viewer = await make_client("view")
    good = viewer.offer["sdp"]
    await viewer.close()
    cases: list[tuple[object, int, str]] = [
        # body-level problems
        (b"", 400, "empty"),
        (b"{not json", 400, "malformed JSON"),
        (b'{"sdp": "\xc3\x28"}', 400, "UTF-8"),
        (b"null", 400, "JSON object"),
        (b'["sdp"]', 400, "JSON object"),
        (b'"v=0"', 400, "JSON object"),
        (b"{" + b" " * 300_000 + b"}", 413, "limit"),
        # fields
        ({"sdp": good, "type": "offer", "mode": "view", "stream_id": "cam", "x": 1}, 400,
         "unknown field"),
        ({"sdp": good, "type": "answer", "mode": "view", "stream_id": "cam"}, 400, "type"),
        ({"sdp": good, "type": "offer", "mode": None, "stream_id": "cam"}, 400, "mode"),
        ({"sdp": None, "type": "offer", "mode": "view", "stream_id": "cam"}, 400, "sdp"),
        ({"sdp": ["v=0"], "type": "offer", "mode": "view", "stream_id": "cam"}, 400, "sdp"),
        ({"sdp": good, "type": "offer", "mode": "view"}, 400, "stream_id"),
        ({"sdp": good, "type": "offer", "mode": "view", "stream_id": 7}, 400, "stream_id"),
        ({"sdp": good, "type": "offer", "mode": "view", "stream_id": "../etc"}, 400,
         "stream_id"),
        # SDP content
        ({"sdp": "", "type": "offer", "mode": "view", "stream_id": "cam"}, 400, "empty"),
        ({"sdp": "hello", "type": "offer", "mode": "view", "stream_id": "cam"}, 400, "v=0"),
        ({"sdp": good.replace("m=video", "m=audio"), "type": "offer", "mode": "view",
          "stream_id": "cam"}, 400, "no video"),
        ({"sdp": good + "a=x:" + "y" * MAX_SDP_BYTES + "\r\n", "type": "offer",
          "mode": "view", "stream_id": "cam"}, 400, "bytes"),
        # passes the cheap checks, but is not a session aiortc can answer
        ({"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n", "type": "offer",
          "mode": "view", "stream_id": "cam"}, 400, "sdp"),
        ({"sdp": good.replace("a=fingerprint", "a=fingerprunt"), "type": "offer",
          "mode": "view", "stream_id": "cam"}, 400, "fingerprint"),
        ({"sdp": re.sub(r"a=ice-pwd:.*\r\n", "", good), "type": "offer",
          "mode": "view", "stream_id": "cam"}, 400, "ICE"),
        ({"sdp": good.replace("\r\n", "\r\n\x00"), "type": "offer", "mode": "view",
          "stream_id": "cam"}, 400, ""),
    ]
    for body, status, needle in cases:
        if isinstance(body, bytes):
            r = await client.post("/api/rtc/offer", data=body,
                                  headers={"Content-Type": "application/json"})
        else:
            r = await client.post("/api/rtc/offer", json=body)
        message = await error_of(r, status)
        assert needle in message, (body if isinstance(body, bytes) else str(body)[:80], message)
        assert service(client).peers.peer_count == 0, message  # nothing left half-open
    assert list(service(client).streams) == ["cam"]
    await healthy(client)


async def test_max_viewers_per_stream_is_enforced(serve: Serve) -> None:
    client = await serve(max_viewers_per_stream=2)
    await add_synthetic(client, "cam")
    await add_synthetic(client, "other")
    clients: list[RtcClient] = []
    try:
        peer_ids = []
        for _ in range(2):
            c = await make_client("view")
            clients.append(c)
            r = await client.post("/api/rtc/offer", json={**c.offer, "mode": "view",
                                                          "stream_id": "cam"})
            assert r.status == 200, await r.text()
            answer = await r.json()
            await c.accept(answer)
            peer_ids.append(answer["peer_id"])
        extra = await make_client("view")
        clients.append(extra)
        r = await client.post("/api/rtc/offer", json={**extra.offer, "mode": "view",
                                                      "stream_id": "cam"})
        message = await error_of(r, 503)
        assert "max_viewers_per_stream" in message and "2 viewers" in message
        assert service(client).peers.peer_count == 2
        # The limit is per stream: another stream can still be viewed.
        other = await make_client("view")
        clients.append(other)
        r = await client.post("/api/rtc/offer", json={**other.offer, "mode": "view",
                                                      "stream_id": "other"})
        assert r.status == 200, await r.text()
        # A viewer leaving frees its place.
        assert (await client.delete(f"/api/rtc/peers/{peer_ids[0]}")).status == 204
        again = await make_client("view")
        clients.append(again)
        r = await client.post("/api/rtc/offer", json={**again.offer, "mode": "view",
                                                      "stream_id": "cam"})
        assert r.status == 200, await r.text()
    finally:
        for c in clients:
            await c.close()
    await healthy(client)


async def test_publish_counts_against_max_streams(serve: Serve) -> None:
    client = await serve(max_streams=1)
    await add_synthetic(client, "only")
    cam = await make_client("publish", size=(320, 240))
    try:
        r = await client.post("/api/rtc/offer", json={**cam.offer, "mode": "publish"})
        assert "stream limit reached" in await error_of(r, 409)
        assert service(client).peers.peer_count == 0 and list(service(client).streams) == ["only"]
    finally:
        await cam.close()


# -- unknown ids, bad parameters, bad schemes ---------------------------------------------------


@pytest.mark.parametrize("sid", ["ghost", "a" * 65, "caméra", "x y", "-dash", "a%00b", "..."])
async def test_unknown_stream_ids_on_every_route(serve: Serve, sid: str) -> None:
    client = await serve()
    await add_synthetic(client, "real")
    path = f"/api/streams/{quote(sid, safe='')}"
    for method, url in (
        ("GET", path), ("DELETE", path), ("GET", f"{path}/counts"),
        ("GET", f"{path}/counts.csv"), ("GET", f"{path}/feed"),
        ("DELETE", f"/api/rtc/peers/{quote(sid, safe='')}"),
    ):
        r = await client.request(method, url)
        await error_of(r, 404)
    viewer = await make_client("view")
    try:
        r = await client.post("/api/rtc/offer", json={**viewer.offer, "mode": "view",
                                                      "stream_id": sid})
        # a well-formed id is unknown (404), anything else is refused as malformed (400)
        await error_of(r, 404 if sid == "ghost" else 400)
    finally:
        await viewer.close()
    assert list(service(client).streams) == ["real"]  # the DELETEs touched nothing
    await healthy(client)


@pytest.mark.parametrize(
    ("query", "needle"),
    [("since=abc", "'since'"), ("until=inf", "'until'"), ("since=5&until=5", "'since'"),
     ("since=1e999", "'since'"), ("until=-nan", "'until'")],
)
async def test_counts_csv_bad_parameters(serve: Serve, query: str, needle: str) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    r = await client.get(f"/api/streams/cam/counts.csv?{query}")
    assert needle in await error_of(r, 400)


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [("step=1e-300", 200, None), ("step=1e300", 200, None),
     ("since=-1e300&until=1e300&step=1e-9", 200, None),
     ("limit=99999999999999999999", 400, "'limit'"), ("limit=-0", 400, "'limit'"),
     ("since=0x10", 400, "'since'"),
     # Found by Schemathesis: a whole-second step over a range past 64-bit seconds was a 500
     # (an integer too large for SQLite); an empty answer is right.
     ("since=1.4285024676973867e286&step=6.522719570362993e16", 200, None),
     ("until=-1e300&step=60", 200, None)],
)
async def test_counts_extreme_parameters_are_not_500(serve: Serve, query: str, status: int,
                                                     needle: str | None) -> None:
    client = await serve()
    source = await add_synthetic(client, "cam")
    while source.status.frames_out < 3:
        await asyncio.sleep(0.05)
    r = await client.get(f"/api/streams/cam/counts?{query}")
    if status == 400:
        assert needle in await error_of(r, 400)
    else:
        assert r.status == 200, await r.text()
        assert (await r.json())["stream"] == "cam"
    await healthy(client)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "https://127.0.0.1/x", "file:///etc/passwd", "/dev/video0",
     "webcam:0", "javascript:alert(1)", "data:text/plain,hi", "concat:/a|/b",
     "ftp://127.0.0.1/x", "rtmp://127.0.0.1/live", "udp://127.0.0.1:5000",
     "RTSP:/127.0.0.1/x", "rtsp:127.0.0.1", "//127.0.0.1/x", "rtsp://127.0.0.1:0/x",
     "rtsp://127.0.0.1:99999/x", "rtsp://[::1/x", "rtsp://127.0.0.1/x\r\nHost: evil"],
)
async def test_api_refuses_non_rtsp_urls(serve: Serve, url: str) -> None:
    client = await serve()
    r = await client.post("/api/streams", json={"name": "cam", "url": url})
    await error_of(r, 400)
    assert service(client).streams == {}
    assert await asyncio.to_thread(service(client).store.streams.all) == []


# -- credentials never returned ------------------------------------------------------------------


async def test_credentials_absent_from_every_response_and_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Camera passwords in the URLs of accepted, refused and failing streams never come back
    from any route, nor show up in any log record (add, fail, reconnect, remove)."""
    caplog.set_level("DEBUG")
    client = await serve()
    creds = f"{USER}:{PASSWORD}@"
    texts: list[str] = []

    async def keep(r: ClientResponse) -> ClientResponse:
        texts.append(await r.text())
        return r

    # refused: bad scheme, bad port, control characters, no host
    for bad in (f"http://{creds}127.0.0.1/x", f"rtsp://{creds}127.0.0.1:99999/x",
                f"rtsp://{creds}127.0.0.1/x\ty", f"rtsp://{creds}/x"):
        r = await keep(await client.post("/api/streams", json={"name": "bad", "url": bad}))
        assert r.status == 400
    # accepted, then failing to connect (nothing listens on port 9) and retrying
    url = f"rtsp://{creds}127.0.0.1:9/cam"
    assert (await keep(await client.post("/api/streams",
                                         json={"name": "door", "url": url}))).status == 201
    source = service(client).get("door").source
    deadline = time.monotonic() + 10
    while source.status.reconnects < 2:
        assert time.monotonic() < deadline, source.status
        await asyncio.sleep(0.05)
    # duplicate name (409), every read route
    assert (await keep(await client.post("/api/streams",
                                         json={"name": "door", "url": url}))).status == 409
    for path in ("/api/streams", "/api/streams/door", "/metrics", "/api/health",
                 "/api/streams/door/counts", "/api/streams/door/counts.csv"):
        await keep(await client.get(path))
    assert (await keep(await client.delete("/api/streams/door"))).status == 204
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "127.0.0.1:9" in logs  # the failing camera was logged (masked)
    for text in [*texts, logs]:
        assert PASSWORD not in text and USER not in text, text[:400]
    assert json.loads(texts[4])["url"] == "rtsp://***@127.0.0.1:9/cam"


# -- token on the remaining routes ---------------------------------------------------------------


async def test_token_on_feeds_signalling_and_every_api_route(serve: Serve) -> None:
    client = await serve(token=TOKEN)
    await add_synthetic(client, "cam")
    viewer = await make_client("view")
    offer = {**viewer.offer, "mode": "view", "stream_id": "cam"}
    await viewer.close()
    requests: list[tuple[str, str, object]] = [
        ("GET", "/api/feed", None), ("GET", "/api/streams/cam/feed", None),
        ("POST", "/api/rtc/offer", offer), ("DELETE", "/api/rtc/peers/abc", None),
        ("GET", "/metrics", None), ("GET", "/api/streams/cam/counts", None),
        ("GET", "/api/streams/cam/counts.csv", None), ("DELETE", "/api/streams/cam", None),
        ("POST", "/api/streams", {"name": "x", "url": "rtsp://127.0.0.1:9/"}),
        ("POST", "/api/count", None), ("GET", "/api/nothing", None),
    ]
    for bad in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"}, {"Cookie": "crowdcount_session=forged"}):
        for method, path, body in requests:
            r = await client.request(method, path, json=body, headers=bad)
            assert "token" in await error_of(r, 401), (method, path, bad)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # ?token= only works on the page, never on the API.
    r = await client.get(f"/api/feed?token={TOKEN}")
    await error_of(r, 401)
    assert service(client).peers.peer_count == 0 and list(service(client).streams) == ["cam"]
    # With the token, the SSE feed really streams.
    async with client.get("/api/streams/cam/feed", headers=AUTH) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(r.content.readline(), 10)
            if line.startswith(b"data: "):
                assert json.loads(line[6:])["stream"] == "cam"
                break
        else:
            pytest.fail("no SSE data with the token")
    await healthy(client, AUTH)


# -- uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize("disposition", [
    # Found by Schemathesis (tests/test_schemathesis.py): raw non-UTF-8 bytes and a control
    # character in a part's header made aiohttp raise InvalidHeader, which was a 500.
    b'form-data; name="\xc2\xa9r\xf3\xbd\xaf\xb4*\xc2\x82!\x18"',
    b'form-data; name="image"\x00',
])
async def test_upload_with_a_malformed_part_header_is_400(serve: Serve,
                                                          disposition: bytes) -> None:
    client = await serve()
    boundary = "fe2a83174d12cf591fdd48fc12228241"
    body = (f"--{boundary}\r\nContent-Disposition: ".encode() + disposition
            + f"\r\n\r\nnot an image\r\n--{boundary}--\r\n".encode())
    r = await client.post("/api/count", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "malformed multipart body" in await error_of(r, 400)
    await healthy(client)


# -- query strings: one model per route (streamer.routes.common.parse_query) --------------


@pytest.mark.parametrize(("path", "needle"), [
    ("/api/streams/cam/counts?step=abc", "parameter 'step' must be a number, got 'abc'"),
    ("/api/streams/cam/counts?step=-1", "parameter 'step' must be greater than 0"),
    ("/api/streams/cam/counts?limit=1.5", "parameter 'limit' must be an integer"),
    ("/api/streams/cam/counts?zones=maybe", "parameter 'zones' must be 1 or 0"),
    ("/api/streams/cam/counts?since=inf", "parameter 'since': must be finite"),
    ("/api/streams/cam/counts?since=NaN", "parameter 'since': must be finite"),
    ("/api/streams/cam/counts.csv?since=5&until=1", "'since' (5) must be before 'until' (1)"),
    ("/api/streams/cam/counts.csv?until=&until=x&step=1", "parameter 'until' is given 2 times"),
    ("/api/streams/cam/heatmap?since=&format=json", "parameter 'since' is empty"),
    ("/api/alerts?stream=", "parameter 'stream' is empty"),
    ("/api/alerts/rules?stream=../x", "parameter 'stream' must be 1-64 letters"),
    ("/api/feed?streams=cam&streams=x", "parameter 'streams' is given 2 times"),
    ("/api/streams/cam/heatmap?format=gif", "parameter 'format' must be 'png' or 'json'"),
    ("/api/count?format=gif", "parameter 'format' must be 'json' or 'png'"),
    ("/api/alerts?active=2", "parameter 'active' must be 1 or 0"),
    ("/api/feed?streams=a,../etc", "parameter 'streams': invalid stream id '../etc'"),
    ("/api/feed?streams=" + ",".join(f"s{i}" for i in range(65)),
     "parameter 'streams': names 65 streams; at most 64"),
])
async def test_bad_query_parameters_name_the_parameter(serve: Serve, path: str,
                                                       needle: str) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    method = "POST" if path.startswith("/api/count") else "GET"
    r = await client.request(method, path)
    assert needle in await error_of(r, 400)


async def test_a_bare_flag_is_on_and_unknown_parameters_are_ignored(serve: Serve) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    r = await client.put("/api/streams/cam/zones", json={"zones": [
        {"name": "all", "points": [[0, 0], [320, 0], [320, 256], [0, 256]]}]})
    assert r.status == 200, await r.text()

    async def rows(query: str) -> list[dict]:
        r = await client.get(f"/api/streams/cam/counts?{query}")
        assert r.status == 200, await r.text()
        return (await r.json())["counts"]

    deadline = time.monotonic() + 20
    while not any("zones" in row for row in await rows("zones=1")):  # the store's next flush
        assert time.monotonic() < deadline, "no stored row with zone counts"
        await asyncio.sleep(0.05)
    bare = await rows("zones&cachebust=123")
    assert any("zones" in row for row in bare)
    assert not any("zones" in row for row in await rows("zones=0"))
