"""Zones and alerts through the HTTP service: a real aiohttp server, the brightness model
(counts are a known function of the picture), synthetic sources. The tests that take
``deploy`` run on a single box (SQLite) and on a cluster (PostgreSQL, the camera on a
shard), with the same requests and the same answers (``tests/fixtures/deployments.py``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from crowdcount.streamer.sinks.webhook import SIGNATURE_HEADER, verify
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.app import service
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until

W, H = 320, 256
LEFT = [[0, 0], [160, 0], [160, 256], [0, 256]]
RIGHT = [[160, 0], [320, 0], [320, 256], [160, 256]]
# A diagonal cut: edges that are not axis-aligned (the sampling-error case of model.zones).
UPPER = [[0, 0], [320, 0], [0, 256]]
LOWER = [[320, 0], [320, 256], [0, 256]]


def gradient(level: int) -> np.ndarray:
    """A left-to-right ramp up to ``level``: the two halves count differently."""
    ramp = np.linspace(0, level, W, dtype=np.float32)[None, :, None]
    return np.broadcast_to(ramp, (H, W, 3)).astype(np.uint8).copy()


async def add_source(client: TestClient, sid: str, level: list[int], origin: str = "api",
                     fps: float = 20.0) -> SyntheticSource:
    """A gradient stream whose brightness follows ``level[0]`` (tests change it)."""
    source = SyntheticSource(sid, W, H, fps=fps, render=lambda _i: gradient(level[0]))
    await service(client).add_source(source, url="synthetic", kind="synthetic",
                                     origin=origin)  # type: ignore[arg-type]
    return source


async def put_zones(client: TestClient, sid: str, zones: Any) -> tuple[int, Any]:
    r = await client.put(f"/api/streams/{sid}/zones", json={"zones": zones})
    return r.status, await r.json()


async def sse_items(client: TestClient, path: str, want, timeout: float = 10.0) -> list[dict]:
    """Read the SSE feed at ``path`` until ``want(items)`` holds."""
    return await read_sse(await client.get(path), want, timeout)


async def read_sse(r: ClientResponse, want, timeout: float = 10.0) -> list[dict]:
    """Read an open SSE response (subscribed once its headers came) until ``want(items)``."""
    items: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while not want(items):
                line = (await r.content.readline()).decode().strip()
                if line.startswith("data: "):
                    items.append(json.loads(line[6:]))
    finally:
        r.close()
    return items


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# -- zones API ---------------------------------------------------------------------------


async def test_put_get_zones_and_persistence(deploy) -> None:
    dep = await deploy()
    client = dep.client
    await dep.camera("gate", lambda _i: gradient(200))
    r = await client.get("/api/streams/gate/zones")
    assert r.status == 200
    assert await r.json() == {"stream": "gate", "zones": [], "persisted": True}

    status, body = await put_zones(client, "gate", [{"name": "left", "points": LEFT},
                                                    {"name": "right", "points": RIGHT}])
    assert status == 200, body
    assert body["stream"] == "gate" and body["persisted"] is True
    assert [z["name"] for z in body["zones"]] == ["left", "right"]
    assert body["zones"][0]["points"] == [[float(x), float(y)] for x, y in LEFT]
    got = await (await client.get("/api/streams/gate/zones")).json()
    assert got == body
    # Saved in the settings, their one record (so resumed after a restart), and shown in
    # the stream's options.
    settings = dep.service.store.settings
    assert [z["name"] for z in settings.zones()["gate"]] == ["left", "right"]
    stream = await (await client.get("/api/streams/gate")).json()
    assert [z["name"] for z in stream["options"]["zones"]] == ["left", "right"]

    status, body = await put_zones(client, "gate", [])
    assert status == 200 and body["zones"] == []
    assert settings.zones()["gate"] == []
    assert "zones" not in (await (await client.get("/api/streams/gate")).json())["options"]


async def test_api_stream_zones_resume_after_restart(deploy) -> None:
    dep = await deploy()
    # An API rtsp stream to a dead loopback port: it keeps reconnecting, which is enough.
    r = await dep.client.post("/api/streams",
                              json={"name": "door", "url": "rtsp://127.0.0.1:9/x"})
    assert r.status == 201, await r.text()
    status, _ = await put_zones(dep.client, "door", [{"name": "mat", "points": LEFT}])
    assert status == 200
    await dep.restart()

    async def resumed() -> bool:
        return (await dep.client.get("/api/streams/door")).status == 200

    await wait_until(resumed, what="the saved camera resumed")
    got = await (await dep.client.get("/api/streams/door/zones")).json()
    assert [z["name"] for z in got["zones"]] == ["mat"]
    stream = await (await dep.client.get("/api/streams/door")).json()
    assert [z["name"] for z in stream["options"]["zones"]] == ["mat"]


#: Refused zone bodies (body, message).
BAD_ZONES = [
    ({}, "field 'zones' is required"),
    ({"zones": "x"}, "must be a list"),
    ({"zones": [{"name": "a", "points": [[0, 0], [1, 1]]}]},
     "zones[0].points: needs at least 3 items, has 2"),
    ({"zones": [{"name": "a", "points": [[0, 0], [1, 1], [2, 2]]}]},
     "zones[0].points: points enclose no area"),
    ({"zones": [{"name": "a", "points": LEFT}, {"name": "a", "points": RIGHT}]},
     "zones[1]: duplicate zone name 'a'"),
    ({"zones": [{"name": "", "points": LEFT}]}, "zones[0].name"),
    ({"zones": [{"points": LEFT}]}, "zones[0].name: required key is missing"),
    ({"zones": [{"name": "a", "points": LEFT, "colour": "red"}]},
     "zones[0].colour: unknown key 'colour'"),
    ({"zones": [{"name": "a", "points": [[0, 0], [-5, 1], [2, 9]]}]},
     "zones[0].points: point 1 (-5.0, 1.0) must be finite and >= 0"),
    ({"zones": [{"name": "a", "points": [[0, 0], ["x", 1], [2, 9]]}]},
     "zones[0].points[1][0]"),
    ({"zones": [], "extra": 1}, "unknown field 'extra'"),
]


async def test_bad_zones_are_400_with_the_problem(deploy) -> None:
    dep = await deploy()
    client = dep.client
    await dep.camera("gate", lambda _i: gradient(200))
    for body, needle in BAD_ZONES:
        r = await client.put("/api/streams/gate/zones", json=body)
        assert r.status == 400
        message = (await r.json())["error"]
        assert needle in message, message
        assert (await (await client.get("/api/streams/gate/zones")).json())["zones"] == []


async def test_zones_of_unknown_stream_404(deploy) -> None:
    client = (await deploy()).client
    assert (await client.get("/api/streams/nope/zones")).status == 404
    r = await client.put("/api/streams/nope/zones", json={"zones": []})
    assert r.status == 404
    assert "nope" in (await r.json())["error"]


# -- zone counts -------------------------------------------------------------------------


@pytest.mark.parametrize("split", [(LEFT, RIGHT), (UPPER, LOWER)], ids=["vertical", "diagonal"])
async def test_zone_counts_tile_the_frame_in_counts_feed_and_metrics(deploy, split) -> None:
    dep = await deploy()
    client = dep.client
    await dep.camera("hall", lambda _i: gradient(230))
    status, _ = await put_zones(client, "hall", [{"name": "a", "points": split[0]},
                                                 {"name": "b", "points": split[1]}])
    assert status == 200
    total = expected_count(gradient(230))

    items = await sse_items(client, "/api/streams/hall/feed",
                            lambda items: any("zones" in i for i in items[-1:]))
    item = items[-1]
    assert set(item["zones"]) == {"a", "b"}
    assert item["count"] == pytest.approx(total, rel=1e-4)
    assert sum(item["zones"].values()) == pytest.approx(item["count"], rel=0.01)
    if split[0] is LEFT:  # the ramp is darker on the left
        assert item["zones"]["a"] < item["zones"]["b"]
        half = expected_count(gradient(230)[:, :160])
        assert item["zones"]["a"] == pytest.approx(half, rel=0.01)

    await dep.flush()
    rows = (await (await client.get("/api/streams/hall/counts?zones=1")).json())["counts"]
    zoned = [r for r in rows if r["zones"]]
    assert zoned, rows[-3:]
    for row in zoned:
        assert sum(row["zones"].values()) == pytest.approx(row["count"], rel=0.01)

    # Per-zone gauges are a single box's: on a cluster the shards count the zones, and its
    # API process exports the cameras' status, not their zones' values.
    if dep.kind == "box":
        values = metric_values(await (await client.get("/metrics")).text())
        a = values['crowdcount_zone_people{stream="hall",zone="a"}']
        b = values['crowdcount_zone_people{stream="hall",zone="b"}']
        assert a + b == pytest.approx(total, rel=0.01)

    # Zones replaced: counted with the new ones from the next frame; the old gauges go.
    await put_zones(client, "hall", [{"name": "all", "points": [[0, 0], [W, 0], [W, H], [0, H]]}])
    await sse_items(client, "/api/streams/hall/feed",
                    lambda items: bool(items) and set(items[-1].get("zones", {})) == {"all"})
    if dep.kind == "box":
        text = await (await client.get("/metrics")).text()
        assert 'zone="a"' not in text and 'zone="b"' not in text
        values = metric_values(text)
        assert values['crowdcount_zone_people{stream="hall",zone="all"}'] == pytest.approx(
            total, rel=0.01)


# -- alerts ------------------------------------------------------------------------------


async def test_threshold_alert_raised_listed_and_cleared(deploy) -> None:
    bright = expected_count(gradient(240))
    dep = await deploy(thresholds=[{
        "name": "crowded", "stream": "plaza", "above": bright * 0.8, "below": bright * 0.3,
    }, {
        "name": "right-busy", "stream": "plaza", "zone": "right",
        "above": bright * 0.5, "below": bright * 0.1,
    }])
    client = dep.client
    level = [240]
    feed = await client.get("/api/feed")  # subscribed before the alert
    await dep.camera("plaza", lambda _i: gradient(level[0]))
    await put_zones(client, "plaza", [{"name": "right", "points": RIGHT}])

    alerts = await read_sse(
        feed, lambda items: sum(i.get("type") == "alert" for i in items) >= 2, timeout=15)
    raised = [i for i in alerts if i.get("type") == "alert"]
    assert {a["rule"] for a in raised} == {"crowded", "right-busy"}
    assert all(a["event"] == "raised" and a["stream"] == "plaza" for a in raised)
    right = next(a for a in raised if a["rule"] == "right-busy")
    assert right["zone"] == "right" and right["value"] > bright * 0.5

    r = await client.get("/api/alerts?active=1")
    listed = (await r.json())["alerts"]
    assert {a["rule"] for a in listed} == {"crowded", "right-busy"}
    assert all(a["active"] and a["cleared_at"] is None for a in listed)
    crowded = next(a for a in listed if a["rule"] == "crowded")
    assert crowded["peak"] >= crowded["value"] > bright * 0.8

    values = metric_values(await (await client.get("/metrics")).text())
    assert values['crowdcount_alerts_active{rule="crowded",stream="plaza",zone=""}'] == 1
    assert values['crowdcount_alerts_active{rule="right-busy",stream="plaza",zone="right"}'] == 1
    if dep.kind == "box":  # raises are counted where the alert engine runs: a cluster's shard
        assert values['crowdcount_alerts_raised_total{rule="crowded",stream="plaza"}'] == 1

    level[0] = 10  # the crowd leaves: both clear

    async def cleared() -> bool:
        return (await (await client.get("/api/alerts?active=1")).json())["alerts"] == []

    await wait_until(cleared, what="both alerts cleared")
    await dep.flush()
    closed = (await (await client.get("/api/alerts?active=0&stream=plaza")).json())["alerts"]
    assert {a["rule"] for a in closed} == {"crowded", "right-busy"}
    assert all(a["cleared_at"] >= a["raised_at"] and not a["active"] for a in closed)
    assert (await (await client.get("/api/alerts?stream=other")).json())["alerts"] == []
    assert 'crowdcount_alerts_active{' not in await (await client.get("/metrics")).text()


@pytest.mark.parametrize(("query", "needle"), [
    ("since=5&until=1", "must be before"),
    ("active=maybe", "parameter 'active'"),
    ("limit=0", "parameter 'limit'"),
])
async def test_alerts_bad_parameters(deploy, query, needle) -> None:
    client = (await deploy()).client
    r = await client.get(f"/api/alerts?{query}")
    assert r.status == 400
    assert needle in (await r.json())["error"]


async def test_webhook_gets_signed_alert_through_the_app(deploy) -> None:
    received: list[tuple[dict, str | None, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((json.loads(body), request.headers.get(SIGNATURE_HEADER), body))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        dep = await deploy(
            thresholds=[{"name": "busy", "stream": "lobby", "above": 1, "below": 0.5}],
            sinks={"webhook": {"url": f"http://127.0.0.1:{port}/hook", "secret": "s3cret"}},
        )
        await dep.camera("lobby", lambda _i: gradient(200))
        await wait_until(lambda: bool(received), timeout=10)
        payload, signature, body = received[0]
        assert verify("s3cret", body, signature)
        assert payload["type"] == "alert" and payload["event"] == "raised"
        assert payload["rule"] == "busy" and payload["stream"] == "lobby"
        assert payload["value"] > 1
    finally:
        await runner.cleanup()
