"""WebhookNotifier against real aiohttp receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.sinks.base import Notifier
from crowdcount.streamer.sinks.webhook import SIGNATURE_HEADER, WebhookNotifier, sign, verify
from tests.fixtures.results import make_result
from tests.fixtures.waiting import wait_until

SECRET = "test-secret"
RULE = ThresholdRule("busy", "cam", "door", 10, 5, 1)


def _event(kind: str = "raised", t: float = 100.0) -> AlertEvent:
    return AlertEvent(kind, RULE, t, 12.5, 100.0, 99.0, 13.0)  # type: ignore[arg-type]


class Receiver:
    """A webhook endpoint whose answers are scripted per request."""

    def __init__(self, statuses: Callable[[int], int] = lambda n: 200, delay: float = 0) -> None:
        self.statuses = statuses
        self.delay = delay
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((time.monotonic(), dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses(len(self.requests)))

    def bodies(self) -> list[dict]:
        return [json.loads(b) for _, _, b in self.requests]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], object]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_signed_json_alert_is_delivered(serve) -> None:
    rx = await serve(Receiver())
    hook = WebhookNotifier(rx.url, SECRET, timeout=2, retries=0)
    assert isinstance(hook, Notifier)
    await hook.start()
    hook.on_alert(_event())
    hook.on_result(make_result("cam", 1.0, 3.0, {"door": 1.0}))  # counts are off by default
    await wait_until(lambda: hook.sent == 1)
    await hook.close()
    ((_, headers, body),) = rx.requests
    assert headers["Content-Type"] == "application/json"
    assert headers[SIGNATURE_HEADER] == sign(SECRET, body)
    assert headers[SIGNATURE_HEADER].startswith("sha256=") and len(headers[SIGNATURE_HEADER]) == 71
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("other-secret", body, headers[SIGNATURE_HEADER])
    assert not verify(SECRET, body + b" ", headers[SIGNATURE_HEADER])
    assert headers["X-CrowdCount-Event"] == "alert"
    msg = json.loads(body)
    assert headers["X-CrowdCount-Delivery"] == msg["id"]
    assert msg["type"] == "alert" and msg["event"] == "raised" and msg["rule"] == "busy"
    assert (msg["stream"], msg["zone"], msg["value"], msg["peak"]) == ("cam", "door", 12.5, 13.0)
    assert (msg["above"], msg["below"], msg["for_seconds"]) == (10, 5, 1)
    assert hook.stats() == {
        "queued": 0, "sent": 1, "failed": 0, "retried": 0, "dropped": 0, "last_error": None,
    }  # fmt: skip


async def test_500_then_200_is_retried_with_the_same_signed_body(serve) -> None:
    rx = await serve(Receiver(lambda n: 500 if n == 1 else 200))
    hook = WebhookNotifier(rx.url, SECRET, timeout=2, retries=3, backoff=0.2)
    await hook.start()
    hook.on_alert(_event())
    await wait_until(lambda: hook.sent == 1)
    await hook.close()
    assert len(rx.requests) == 2
    (t1, h1, b1), (t2, h2, b2) = rx.requests
    assert b1 == b2 and h1[SIGNATURE_HEADER] == h2[SIGNATURE_HEADER] == sign(SECRET, b2)
    assert t2 - t1 >= 0.19  # the backoff was waited
    assert (hook.retried, hook.failed) == (1, 0)


async def test_bounded_retries_give_up_and_count_the_failure(serve) -> None:
    rx = await serve(Receiver(lambda n: 503))
    hook = WebhookNotifier(rx.url, SECRET, timeout=2, retries=2, backoff=0.05, max_backoff=0.08)
    await hook.start()
    hook.on_alert(_event("raised"))
    hook.on_alert(_event("cleared", 200.0))  # delivered after the first gives up
    await wait_until(lambda: hook.failed == 2)
    await hook.close()
    assert len(rx.requests) == 6  # 1 + 2 retries, for each message, in order
    events = [m["event"] for m in rx.bodies()]
    assert events == ["raised"] * 3 + ["cleared"] * 3
    gaps = [rx.requests[i + 1][0] - rx.requests[i][0] for i in (0, 1)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.075  # exponential, capped at max_backoff
    assert (hook.sent, hook.retried, hook.last_error) == (0, 4, "HTTP 503")


async def test_client_errors_are_not_retried(serve) -> None:
    rx = await serve(Receiver(lambda n: 401))
    hook = WebhookNotifier(rx.url, SECRET, retries=5, backoff=0.01)
    await hook.start()
    hook.on_alert(_event())
    await wait_until(lambda: hook.failed == 1)
    await hook.close()
    assert len(rx.requests) == 1 and hook.last_error == "HTTP 401"


async def test_timeouts_and_unreachable_receivers_fail_without_blocking(serve) -> None:
    slow = await serve(Receiver(delay=1.0))
    hook = WebhookNotifier(slow.url, SECRET, timeout=0.2, retries=1, backoff=0.01)
    await hook.start()
    for i in range(50):
        hook.on_alert(_event(t=float(i)))
    # Queueing only: delivery runs on the event loop, which these synchronous calls never
    # yielded to, so nothing has been attempted yet (a blocking call would have failed one).
    assert (hook.sent, hook.failed, hook.retried) == (0, 0, 0)
    await wait_until(lambda: hook.failed >= 1)
    assert "Timeout" in (hook.last_error or "")
    await hook.close(timeout=0.1)
    assert hook.failed + hook.sent + hook.dropped == 50

    # Nothing listens on this port: connection refused, retried, counted.
    dead = WebhookNotifier("http://127.0.0.1:9/hook", SECRET, timeout=1, retries=1, backoff=0.01)
    await dead.start()
    dead.on_alert(_event())
    await wait_until(lambda: dead.failed == 1)
    await dead.close()
    assert dead.retried == 1 and dead.last_error


async def test_queue_is_bounded_drops_oldest_and_counts_are_throttled(serve) -> None:
    rx = await serve(Receiver())
    hook = WebhookNotifier(rx.url, SECRET, queue_size=3, counts_interval=60)
    # Not started yet: nothing is delivered, so the queue fills up.
    for i in range(5):
        hook.on_alert(_event(t=float(i)))
    assert hook.dropped == 2 and hook.stats()["queued"] == 3
    await hook.start()
    await wait_until(lambda: hook.sent == 3)
    assert [m["t"] for m in rx.bodies()] == [2.0, 3.0, 4.0]  # the newest kept, in order
    for i in range(10):
        hook.on_result(make_result("cam", float(i), 7.0, {"door": 2.5}))
    hook.on_result(make_result("hall", 0.0, 1.0, {}))
    await wait_until(lambda: hook.sent == 5)
    await hook.close()
    counts = rx.bodies()[3:]
    assert [(m["type"], m["stream"], m["t"]) for m in counts] == [
        ("counts", "cam", 0.0),
        ("counts", "hall", 0.0),
    ]
    assert counts[0]["zones"] == {"door": 2.5} and counts[0]["count"] == 7.0
    hook.on_alert(_event())  # after close: dropped, not raised
    assert hook.dropped == 3


async def test_non_finite_values_are_sent_as_null(serve) -> None:
    rx = await serve(Receiver())
    hook = WebhookNotifier(rx.url, SECRET)
    await hook.start()
    hook.send("alert", {"value": float("nan"), "peak": float("inf"), "ok": 1.5})
    await wait_until(lambda: hook.sent == 1)
    await hook.close()
    assert rx.bodies()[0]["value"] is None and rx.bodies()[0]["peak"] is None
