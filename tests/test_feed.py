"""CountFeed fan-out semantics and its SSE endpoint over a real aiohttp server."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.streamer.feed import CountFeed, sse_response


async def _take(sub: Any, n: int) -> list[dict[str, Any]]:
    out = []
    async for item in sub:
        out.append(item)
        if len(out) == n:
            break
    return out


async def test_two_subscribers_get_items_in_order() -> None:
    feed = CountFeed()
    a, b = feed.subscribe("cam"), feed.subscribe("cam")
    for i in range(10):
        feed.publish("cam", {"i": i})
    got_a, got_b = await asyncio.gather(_take(a, 10), _take(b, 10))
    assert [x["i"] for x in got_a] == list(range(10))
    assert got_a == got_b
    assert got_a[0] == {"stream_id": "cam", "i": 0}


async def test_stream_filter_and_all_streams_subscriber() -> None:
    feed = CountFeed()
    cam, everything = feed.subscribe("cam"), feed.subscribe(None)
    feed.publish("other", {"i": 1})
    feed.publish("cam", {"i": 2, "stream_id": "cam"})
    assert await _take(cam, 1) == [{"i": 2, "stream_id": "cam"}]
    assert [x["stream_id"] for x in await _take(everything, 2)] == ["other", "cam"]
    assert feed.subscriber_count("cam") == 1


async def test_slow_subscriber_drops_oldest_without_blocking() -> None:
    feed = CountFeed(maxsize=4)
    slow, fast = feed.subscribe("cam"), feed.subscribe("cam")
    received: list[int] = []

    async def consume() -> None:
        async for item in fast:
            received.append(item["i"])
            if item["i"] == 99:
                return

    task = asyncio.create_task(consume())
    for i in range(100):
        feed.publish("cam", {"i": i})  # synchronous: it cannot wait for a consumer
        await asyncio.sleep(0)  # let the fast consumer run
    await asyncio.wait_for(task, 10)
    assert received == list(range(100))
    assert [x["i"] for x in await _take(slow, 4)] == [96, 97, 98, 99]
    assert slow.dropped == 96 and fast.dropped == 0 and feed.dropped == 96


async def test_close_ends_waiting_subscribers_promptly() -> None:
    feed = CountFeed()
    subs = [feed.subscribe("cam"), feed.subscribe(None)]
    feed.publish("cam", {"i": 0})
    tasks = [asyncio.create_task(_take(s, 1000)) for s in subs]
    await asyncio.sleep(0.01)
    feed.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert all(r == [{"stream_id": "cam", "i": 0}] for r in results)
    # After close: publishing is ignored, new subscriptions end at once.
    feed.publish("cam", {"i": 1})
    assert await asyncio.wait_for(_take(feed.subscribe("cam"), 1), 1) == []


async def test_unsubscribe_on_exit() -> None:
    feed = CountFeed()
    async with feed.subscribe("cam") as sub:
        assert feed.subscriber_count("cam") == 1
        feed.publish("cam", {"i": 0})
        assert await _take(sub, 1) == [{"stream_id": "cam", "i": 0}]
    assert feed.subscriber_count("cam") == 0
    assert await _take(sub, 1) == []

    # A subscription abandoned by breaking out of ``async for`` is released when dropped.
    sub2 = feed.subscribe("cam")
    feed.publish("cam", {"i": 1})
    async for _ in sub2:
        break
    del sub2
    gc.collect()
    assert feed.subscriber_count("cam") == 0


def _app(feed: CountFeed, **kw: float) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        sid = request.match_info.get("sid")
        return await sse_response(request, feed, None if sid == "all" else sid, **kw)

    app = web.Application()
    app.router.add_get("/events/{sid}", handler)
    return app


async def _read_events(resp: Any, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    events, comments, buf = [], [], b""
    while len(events) < n:
        chunk = await asyncio.wait_for(resp.content.readany(), 5)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.decode().splitlines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                elif line.startswith(":"):
                    comments.append(line)
    return events, comments


async def _wait_for_subscribers(feed: CountFeed, sid: str | None, n: int) -> None:
    for _ in range(200):
        if feed.subscriber_count(sid) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} subscribers, have {feed.subscriber_count(sid)}")


async def test_sse_delivers_json_events_and_ends_on_close() -> None:
    feed = CountFeed()
    async with TestClient(TestServer(_app(feed))) as client:
        resp = await client.get("/events/cam")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await _wait_for_subscribers(feed, "cam", 1)
        for i in range(3):
            feed.publish("cam", {"count": 10.5 + i, "t": 1000.0 + i})
        feed.publish("other", {"count": 1.0})
        events, _ = await _read_events(resp, 3)
        assert events == [
            {"stream_id": "cam", "count": 10.5 + i, "t": 1000.0 + i} for i in range(3)
        ]
        feed.close()
        rest = await asyncio.wait_for(resp.content.read(), 10)  # EOF: the response ended
        assert b"data:" not in rest


async def test_sse_keepalive_comment() -> None:
    feed = CountFeed()
    async with TestClient(TestServer(_app(feed, keepalive=0.1, poll=0.05))) as client:
        resp = await client.get("/events/all")
        await asyncio.sleep(0.35)
        feed.publish("cam", {"count": 1.0})
        events, comments = await _read_events(resp, 1)
        assert events == [{"stream_id": "cam", "count": 1.0}]
        assert ": keepalive" in comments
        feed.close()


async def test_sse_releases_subscription_when_client_leaves() -> None:
    feed = CountFeed()
    async with TestClient(TestServer(_app(feed, poll=0.05))) as client:
        resp = await client.get("/events/cam")
        await _wait_for_subscribers(feed, "cam", 1)
        resp.close()  # drop the connection without reading further
        await _wait_for_subscribers(feed, "cam", 0)
        feed.publish("cam", {"count": 1.0})  # nobody left: must not raise


@pytest.mark.parametrize("maxsize", [0, -1])
def test_rejects_bad_maxsize(maxsize: int) -> None:
    with pytest.raises(ValueError):
        CountFeed(maxsize)


async def test_page_feed_sends_only_the_streams_asked_for_and_every_alert(serve) -> None:
    """``/api/feed?streams=a``: counts of ``a`` only, alerts of any stream (real server)."""
    from tests.test_zones_api import add_source, sse_items

    client = await serve(thresholds=[{"name": "b-busy", "stream": "b", "above": 1,
                                      "below": 0.5}])
    from tests.fixtures.app import service
    from tests.fixtures.waiting import wait_until

    level_b = [0]
    await add_source(client, "a", [100])
    await add_source(client, "b", level_b)
    reading = asyncio.ensure_future(sse_items(
        client, "/api/feed?streams=a",
        lambda got: any(i.get("type") == "alert" for i in got)
        and sum(i.get("type") is None for i in got) >= 10))
    # ``streams=`` with no name (a page with no card on screen): alerts only, no counts.
    none_shown = asyncio.ensure_future(sse_items(
        client, "/api/feed?streams=", lambda got: any(i.get("type") == "alert" for i in got)))
    feed = service(client).feed
    await wait_until(lambda: len(feed._subs.get(None, ())) >= 2, what="the SSE subscriptions")
    level_b[0] = 200  # b gets crowded only now: its alert is raised while we listen
    items = await reading
    assert [i.get("type") for i in await none_shown] == ["alert"]
    counts = [i for i in items if i.get("type") is None]
    alerts = [i for i in items if i.get("type") == "alert"]
    assert {i["stream_id"] for i in counts} == {"a"}
    assert alerts[0]["stream"] == "b" and alerts[0]["rule"] == "b-busy"
    everything = await sse_items(client, "/api/feed",
                                 lambda got: {i["stream_id"] for i in got} >= {"a", "b"})
    assert {i["stream_id"] for i in everything} >= {"a", "b"}
    for query, needle in (("streams=a,../x", "invalid stream id"),
                          ("streams=" + ",".join(f"s{i}" for i in range(65)), "at most 64")):
        r = await client.get(f"/api/feed?{query}")
        assert r.status == 400 and needle in (await r.json())["error"]
