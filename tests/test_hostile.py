"""Hostile input against a live ``crowdcount serve`` (a subprocess, as deployed) with a
counting stream: every probe of issue 17 that the server once failed, each answered with a
4xx JSON error while the stream keeps its rate, the API keeps answering in under 100 ms,
the process's memory stays bounded and the log holds no traceback and no credential.

The counting stream is a looping 10 fps H.264 file; a second, API-added stream points at a
closed loopback port (it fails and retries for ever, which is what gives it a
``last_error``). A :class:`Watch` samples the first stream's processed-frame counter, the
latency of ``GET /api/streams/clip`` and the server's RSS on a thread of its own while each
probe runs, for at least one second, and checks them afterwards: observed state, not timers
inside the server.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from crowdcount.streamer.limits import MAX_ALERT_RULES, MAX_REQUEST_TARGET, MAX_URL_LENGTH
from tests.fixtures.bombs import IMAGE_BOMBS, encoded
from tests.fixtures.rtsp import free_port
from tests.fixtures.waiting import wait_until_sync

pytestmark = pytest.mark.slow

#: What the issue asks: the API answers within this while a probe runs ...
MAX_LATENCY_S = 0.100
#: ... the stream keeps at least this share of its rate ...
MIN_RATE_SHARE = 0.5
#: ... and the server's memory stays within this of its idle RSS.
MAX_RSS_GROWTH = 300 * 2**20
WATCH_S = 1.0
SECRETS = ("camuser9", "Pw-s3cr3t-q", "Tok-9f8e7d", "Userinfo-pw")
DEAD_CAMERA = ("rtsp://Userinfo-name:Userinfo-pw@127.0.0.1:{port}/s1"
               "?user=camuser9&password=Pw-s3cr3t-q&token=Tok-9f8e7d&channel=1")


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    seconds: float

    def error(self) -> str:
        """The ``{"error": ...}`` message, after checking this is a 4xx JSON answer."""
        assert 400 <= self.status < 500, (self.status, self.body[:300])
        assert self.content_type.startswith("application/json"), (self.status, self.body[:300])
        data = json.loads(self.body)
        assert set(data) == {"error"} and isinstance(data["error"], str) and data["error"]
        return str(data["error"])

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    idle_rss: int = 0
    rate: float = 0.0  # the counting stream's frames per second before any probe
    dead_port: int = 0

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 20) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.monotonic()
        try:
            conn.putrequest(method, path, skip_host="Host" in (headers or {}),
                            skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, resp.getheader("Content-Type") or "", data,
                         time.monotonic() - t0)
        finally:
            conn.close()

    def send_json(self, method: str, path: str, value: Any | bytes,
                  headers: dict[str, str] | None = None) -> Reply:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return self.request(method, path, raw,
                            {"Content-Type": "application/json", **(headers or {})})

    def stream(self, sid: str) -> dict[str, Any]:
        reply = self.request("GET", f"/api/streams/{sid}")
        assert reply.status == 200, reply
        return dict(reply.json())

    def frames(self) -> int:
        return int(self.stream("clip")["status"]["frames_out"])

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Watch:
    """Samples, on a thread, while a probe runs: the stream's frame counter with the latency
    of reading it, and the server's RSS (every few ms: a decoded bomb cannot hide)."""

    server: Server
    frames: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample_api(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            frames = self.server.frames()
            self.latencies.append(time.monotonic() - t0)
            self.frames.append((t0, frames))
            self._stop.wait(0.05)

    def _sample_rss(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.server.rss())
            self._stop.wait(0.003)

    def check(self, what: str) -> None:
        (t0, f0), (t1, f1) = self.frames[0], self.frames[-1]
        rate = (f1 - f0) / (t1 - t0)
        median = statistics.median(self.latencies)
        growth = self.peak_rss - self.server.idle_rss
        print(f"{what}: {rate:.1f} fps (idle {self.server.rate:.1f}), median GET "
              f"{median * 1000:.1f} ms (max {max(self.latencies) * 1000:.1f} ms, "
              f"{len(self.latencies)} GETs), RSS +{growth / 2**20:.0f} MB")
        assert rate >= MIN_RATE_SHARE * self.server.rate, (what, rate, self.server.rate)
        assert median < MAX_LATENCY_S, (what, self.latencies)
        assert growth < MAX_RSS_GROWTH, (what, growth)


@pytest.fixture
def watch(live: Server, request: pytest.FixtureRequest) -> Iterator[Watch]:
    """Runs for the whole test body (at least ``WATCH_S``), then checks rate, latency and
    memory."""
    w = Watch(live)
    threads = [threading.Thread(target=w._sample_api, daemon=True),
               threading.Thread(target=w._sample_rss, daemon=True)]
    started = time.monotonic()
    for t in threads:
        t.start()
    yield w
    while time.monotonic() - started < WATCH_S or len(w.frames) < 5:
        time.sleep(0.05)
    w._stop.set()
    for t in threads:
        t.join(10)
    w.check(request.node.name)


@pytest.fixture(scope="module")
def live(brightness_model: Path, h264_clip: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    port = free_port()
    config = folder / "crowdcount.toml"
    config.write_text(
        f'[server]\nport = {port}\ndatabase = "{folder / "counts.sqlite3"}"\n'
        "upload_rate_per_minute = 10000\n"
        f'[model]\npath = "{brightness_model}"\nbackend = "onnx"\nthreads = 1\n'
        f'[[streams]]\nname = "clip"\nurl = "{h264_clip}"\nloop = true\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}
    log_path = folder / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crowdcount.streamer.cli", "serve", "--config",
             str(config), "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    server = Server(proc, port, log_path)
    try:
        def counted_ten() -> bool:
            assert proc.poll() is None, server.log()
            try:
                return server.frames() >= 10
            except OSError:  # not listening yet
                return False

        wait_until_sync(counted_ten, 30, "the server to count 10 frames")
        server.dead_port = free_port()
        reply = server.send_json("POST", "/api/streams", {
            "name": "dead", "url": DEAD_CAMERA.format(port=server.dead_port),
            "max_retries": 1_000_000})
        assert reply.status == 201, reply
        t0, f0 = time.monotonic(), server.frames()
        wait_until_sync(lambda: server.frames() >= f0 + 20, 30, "20 more counted frames",
                        interval=0.1)
        server.rate = (server.frames() - f0) / (time.monotonic() - t0)
        server.idle_rss = server.rss()
        print(f"\nidle: {server.rate:.1f} fps, RSS {server.idle_rss / 2**20:.0f} MB, "
              f"load {os.getloadavg()[0]:.2f}")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a denial of service: long URLs ------------------------------------------------------------


def test_long_urls_are_refused_and_nothing_freezes(live: Server, watch: Watch) -> None:
    for size in (50_000, 120_000):
        url = "rtsp://127.0.0.1:9/" + "a" * size
        message = live.send_json("PATCH", "/api/streams/dead", {"url": url}).error()
        assert f"at most {MAX_URL_LENGTH}" in message
        message = live.send_json("POST", "/api/streams", {"name": "long", "url": url}).error()
        assert f"at most {MAX_URL_LENGTH}" in message
    # A string over the decoder's bound, and a body over the JSON limit (256 KiB).
    assert "characters" in live.send_json("PATCH", "/api/streams/dead",
                                          {"url": "rtsp://h/" + "a" * 200_000}).error()
    reply = live.send_json("PATCH", "/api/streams/dead",
                           {"url": "rtsp://h/" + "a" * (256 * 1024)})
    assert reply.status == 413 and reply.error()
    assert "long" not in [s["id"] for s in live.request("GET", "/api/streams").json()["streams"]]


def test_long_url_in_a_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "long.toml"
    config.write_text(f'[[streams]]\nname = "x"\nurl = "rtsp://h/{"a" * 256 * 1024}"\n')
    proc = subprocess.run([sys.executable, "-m", "crowdcount.streamer.cli", "serve",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "streams[0].url" in lines[0] and len(lines[0]) < 300, lines


# -- web pages driving a server without a token (see tests/test_origin.py for Chromium) -------


def test_simple_cross_site_bodies_are_refused(live: Server, watch: Watch) -> None:
    rule = json.dumps({"name": "r-plain", "stream": "clip", "above": 5, "below": 1}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "text/plain; charset=utf-8"):
        reply = live.request("POST", "/api/alerts/rules", rule, {"Content-Type": ctype})
        assert reply.status == 415 and "application/json" in reply.error()
    reply = live.request("POST", "/api/alerts/rules", rule)  # no Content-Type at all
    assert reply.status == 415 and reply.error()
    assert live.request("GET", "/api/alerts/rules/r-plain").status == 404


def test_foreign_host_and_origin_are_refused(live: Server, watch: Watch) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    for path in ("/api/streams", "/", "/metrics", "/api/health"):
        reply = live.request("GET", path, headers={"Host": f"evil.example:{live.port}"})
        assert reply.status == 403 and "allowed_hosts" in reply.error()
    for host in (f"127.0.0.1:{live.port}", f"localhost:{live.port}", f"[::1]:{live.port}"):
        assert live.request("GET", "/api/health", headers={"Host": host}).status == 200
    body = {"name": "r-origin", "stream": "clip", "above": 5, "below": 1}
    for origin in ("http://evil.example", f"http://127.0.0.1:{live.port + 1}", "null"):
        reply = live.send_json("POST", "/api/alerts/rules", body, {"Origin": origin})
        assert reply.status == 403 and "allowed_origins" in reply.error()
    reply = live.request("DELETE", "/api/streams/dead",
                         headers={"Sec-Fetch-Site": "cross-site"})
    assert reply.status == 403 and reply.error()
    reply = live.send_json("POST", "/api/alerts/rules", body,
                           {"Origin": f"http://127.0.0.1:{live.port}"})
    assert reply.status == 201, reply
    assert live.request("DELETE", "/api/alerts/rules/r-origin").status == 204


# -- 500s where a 400 is due ---------------------------------------------------------------------

JSON_ROUTES = [("POST", "/api/streams"), ("PATCH", "/api/streams/dead"),
               ("PUT", "/api/streams/clip/zones"), ("POST", "/api/alerts/rules"),
               ("PUT", "/api/alerts/rules/r1"), ("POST", "/api/rtc/offer")]
JSON_BOMBS = {
    "5,000-digit integer": b'{"fps_limit": ' + b"7" * 5000 + b"}",
    "5,000-digit float": b'{"fps_limit": 1.' + b"7" * 5000 + b"}",
    "50,000 levels deep": b'{"zones": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "objects 30,000 deep": b'{"a": ' * 30_000 + b"1" + b"}" * 30_000,
    "lone surrogate in a url": b'{"name": "s", "url": "rtsp://127.0.0.1:9/\\udc80"}',
    "lone surrogate in a key": b'{"\\ud800": 1}',
    "NaN": b'{"fps_limit": NaN}',
    "1e999": b'{"fps_limit": 1e999}',
    "invalid UTF-8": b'{"name": "\xff\xfe"}',
}


@pytest.mark.parametrize("case", list(JSON_BOMBS))
def test_json_bombs_are_400_on_every_route(live: Server, watch: Watch, case: str) -> None:
    for method, path in JSON_ROUTES:
        reply = live.send_json(method, path, JSON_BOMBS[case])
        assert reply.status == 400, (case, method, path, reply)
        assert reply.error()


# -- credentials in a query string ---------------------------------------------------------------


def test_query_string_credentials_are_masked_everywhere(live: Server, watch: Watch) -> None:
    wait_until_sync(lambda: live.stream("dead")["status"]["last_error"] is not None, 20,
                    "the dead camera to report an error")
    listing = live.request("GET", "/api/streams")
    dead = next(s for s in listing.json()["streams"] if s["id"] == "dead")
    assert dead["url"] == (f"rtsp://***@127.0.0.1:{live.dead_port}/s1"
                           "?user=***&password=***&token=***&channel=1")
    assert "***@" in dead["status"]["last_error"]
    texts = {"GET /api/streams": listing.body.decode(), "the log": live.log(),
             "GET /metrics": live.request("GET", "/metrics").body.decode()}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, (secret, where)
    assert "event=stream_added stream=dead" in live.log()


# -- memory before refusal: image bombs ---------------------------------------------------------

@pytest.mark.parametrize("kind", list(IMAGE_BOMBS))
def test_image_bombs_are_refused_before_decoding(live: Server, watch: Watch,
                                                 kind: str) -> None:
    data = IMAGE_BOMBS[kind]()
    assert len(data) <= 10 * 2**20
    for query in ("", "?overlay=1"):
        reply = live.request("POST", f"/api/count{query}", data,
                             {"Content-Type": "application/octet-stream"})
        assert reply.status == 400, (kind, reply)
        message = reply.error()
        assert "not accepted" in message or "exceeds" in message or "readable" in message


def test_a_10_mb_image_is_counted_within_the_memory_bound(live: Server, watch: Watch) -> None:
    """The largest real upload: an uncompressed BMP at the 10 MB limit (and a 25-megapixel
    PNG, the largest accepted size) is decoded and counted; ``watch`` checks the RSS."""
    bmp = encoded("BMP", (1860, 1860))
    png = encoded("PNG", (6100, 4090))
    assert 9 * 2**20 < len(bmp) <= 10 * 2**20
    for data in (bmp, png):
        reply = live.request("POST", "/api/count?overlay=1", data,
                             {"Content-Type": "application/octet-stream"})
        assert reply.status == 200, reply
        assert reply.json()["width"] in (1860, 6100)


# -- bounds and semantics -----------------------------------------------------------------------


def test_alert_rules_are_bounded_and_need_a_live_stream(live: Server, watch: Watch) -> None:
    body = {"stream": "ghost", "above": 5, "below": 1}
    message = live.send_json("POST", "/api/alerts/rules", {"name": "g", **body}).error()
    assert "ghost" in message
    existing = len(live.request("GET", "/api/alerts/rules").json()["rules"])
    names = [f"bulk-{i}" for i in range(MAX_ALERT_RULES - existing)]
    try:
        for name in names:
            reply = live.send_json("POST", "/api/alerts/rules",
                                   {"name": name, "stream": "clip", "above": 5, "below": 1})
            assert reply.status == 201, reply
        reply = live.send_json("POST", "/api/alerts/rules",
                               {"name": "one-too-many", "stream": "clip", "above": 5,
                                "below": 1})
        assert reply.status == 409 and str(MAX_ALERT_RULES) in reply.error()
    finally:
        for name in names:
            live.request("DELETE", f"/api/alerts/rules/{name}")
    assert live.request("GET", "/api/alerts/rules").json()["rules"] == []


def test_null_for_a_required_field_is_refused(live: Server, watch: Watch) -> None:
    before = live.stream("dead")
    message = live.send_json("PATCH", "/api/streams/dead", {"url": None}).error()
    assert "url" in message and "null" in message
    after = live.stream("dead")
    assert after["url"] == before["url"]
    assert after["status"]["reconnects"] >= before["status"]["reconnects"]  # not restarted


def test_long_request_lines_and_unknown_static_paths(live: Server, watch: Watch) -> None:
    reply = live.request("GET", "/api/streams?x=" + "a" * MAX_REQUEST_TARGET)
    assert reply.status == 414 and str(MAX_REQUEST_TARGET) in reply.error()
    reply = live.request("GET", "/" + "a" * 70_000)  # past what the HTTP parser reads
    assert reply.status == 400
    for path in ("/static/nope.js", "/static/", "/static/../../etc/passwd",
                 "/static/%2e%2e/%2e%2e/etc/passwd", "/static/a%00b"):
        reply = live.request("GET", path)
        assert reply.status == 404 and reply.error(), (path, reply)
    assert live.request("GET", "/static/app.js").status == 200


def test_zz_the_log_has_no_traceback_and_the_server_still_counts(live: Server) -> None:
    """Runs last: nothing above left a traceback or an error line, and the stream counts."""
    log = live.log()
    assert "Traceback" not in log, log[-3000:]
    assert "level=error" not in log, [ln for ln in log.splitlines() if "level=error" in ln]
    assert "event=bad_http_request status=400 reason=LineTooLong" in log
    before = live.frames()
    wait_until_sync(lambda: live.frames() > before, 5, "another counted frame")
    assert live.proc.poll() is None
