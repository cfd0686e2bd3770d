"""Alert rules through the API (``/api/alerts/rules``) and zones saved for every kind of
stream: a real aiohttp server, the brightness model (a gradient's count is known),
restarts on the same database. The tests that take ``deploy`` run on a single box and on a
cluster alike (``tests/fixtures/deployments.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.fixtures.app import service
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until
from tests.test_zones_api import LEFT, RIGHT, add_source, gradient, put_zones, sse_items

RULES = "/api/alerts/rules"


def count_at(level: int) -> float:
    return expected_count(gradient(level))


async def rules(client: TestClient, **query: str) -> list[dict[str, Any]]:
    r = await client.get(RULES, params=query)
    assert r.status == 200
    return (await r.json())["rules"]


async def active(client: TestClient) -> list[dict[str, Any]]:
    return (await (await client.get("/api/alerts", params={"active": "1"})).json())["alerts"]


def is_active(client: TestClient, name: str) -> Callable[[], Awaitable[bool]]:
    """Whether rule ``name`` has an alert raised now, as the API says (for ``wait_until``)."""
    async def check() -> bool:
        return bool((await (await client.get(f"{RULES}/{name}")).json())["active"])

    return check


async def test_create_edit_delete_with_hysteresis(deploy) -> None:
    dep = await deploy()
    client = dep.client
    level = [200]
    await dep.camera("cam", lambda _i: gradient(level[0]))
    high, mid, low = count_at(200), count_at(100), count_at(20)
    assert low < 150 < mid < 400 < high  # the levels below straddle the rule's thresholds

    body = {"name": "crowded", "stream": "cam", "above": 400, "below": 150, "for_seconds": 0}
    r = await client.post(RULES, json=body)
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == "/api/alerts/rules/crowded"
    created = await r.json()
    assert created == {**body, "zone": None, "metric": "count", "origin": "api", "active": False}
    await wait_until(is_active(client, "crowded"), what="the raise")
    assert [a["rule"] for a in await active(client)] == ["crowded"]
    assert (await rules(client))[0]["active"] is True

    # Between below and above: stays raised (hysteresis); under below: cleared.
    level[0] = 100
    await sse_items(client, "/api/streams/cam/feed",  # ten frames counted between the two
                    lambda items: sum(i.get("count") == pytest.approx(mid) for i in items) >= 10)
    assert await is_active(client, "crowded")()
    level[0] = 20

    async def cleared() -> bool:
        return not await is_active(client, "crowded")()

    await wait_until(cleared, what="the clear")

    # Editing: a zone rule on the right half, and a threshold the crowd is over again.
    status, _ = await put_zones(client, "cam", [{"name": "left", "points": LEFT},
                                                {"name": "right", "points": RIGHT}])
    assert status == 200
    level[0] = 200
    r = await client.put(f"{RULES}/crowded", json={"stream": "cam", "zone": "right",
                                                    "above": 10, "below": 5})
    assert r.status == 200, await r.text()
    edited = await r.json()
    assert (edited["zone"], edited["above"], edited["below"]) == ("right", 10, 5)
    await wait_until(is_active(client, "crowded"), what="the raise in the right zone")
    alert = (await active(client))[0]
    assert alert["zone"] == "right" and alert["value"] > 10

    # Deleting clears the active alert and the rule is gone.
    r = await client.delete(f"{RULES}/crowded")
    assert r.status == 204
    assert await rules(client) == []
    assert (await client.get(f"{RULES}/crowded")).status == 404

    async def stored_clear() -> bool:
        await dep.flush()
        listed = (await (await client.get("/api/alerts", params={"stream": "cam"})).json())
        return not any(a["active"] for a in listed["alerts"]) and bool(listed["alerts"])

    await wait_until(stored_clear, what="the stored clear")


#: Refused rule requests (method, path, body, status, message).
BAD_RULE_REQUESTS = [
    ("post", RULES, {"name": "a", "stream": "cam", "above": 5, "below": 5}, 400,
     "below (5) must be less than above (5)"),
    ("post", RULES, {"name": "a", "stream": "cam", "above": 5}, 400,
     "below: required key is missing"),
    ("post", RULES, {"name": "a", "stream": "cam", "above": "5", "below": 1}, 400, "above"),
    ("post", RULES, {"name": "a b", "stream": "cam", "above": 5, "below": 1}, 400, "name"),
    ("post", RULES, {"name": "a", "stream": "cam", "above": 5, "below": 1, "x": 1}, 400,
     "unknown field 'x'"),
    ("post", RULES, {"name": "a", "stream": "cam", "zone": "nope", "above": 5, "below": 1},
     400, "stream 'cam' has no zone 'nope'"),
    ("post", RULES, {"name": "from-file", "stream": "cam", "above": 5, "below": 1}, 409,
     "config file"),
    ("put", f"{RULES}/from-file", {"stream": "cam", "above": 5, "below": 1}, 409,
     "config file"),
    ("delete", f"{RULES}/from-file", None, 409, "config file"),
    ("put", f"{RULES}/ghost", {"stream": "cam", "above": 5, "below": 1}, 404, "ghost"),
    ("delete", f"{RULES}/ghost", None, 404, "ghost"),
    ("put", f"{RULES}/api-rule", {"name": "other", "stream": "cam", "above": 5, "below": 1},
     400, "cannot be renamed"),
    ("post", RULES, {"name": "api-rule", "stream": "cam", "above": 5, "below": 1}, 409,
     "already exists"),
]


#: The config file's rule of ``BAD_RULE_REQUESTS``.
FILE_RULE = {"name": "from-file", "stream": "cam", "above": 9, "below": 1}


async def test_bad_rule_requests(deploy) -> None:
    """With live stream ``cam``, ``FILE_RULE`` and an API rule: each request is refused
    with its status and message, and nothing changes."""
    dep = await deploy(thresholds=[FILE_RULE])
    client = dep.client
    await dep.camera("cam", lambda _i: gradient(0))
    r = await client.post(RULES, json={"name": "api-rule", "stream": "cam", "above": 3,
                                       "below": 1})
    assert r.status == 201
    for method, path, body, status, needle in BAD_RULE_REQUESTS:
        r = await getattr(client, method)(path, json=body) if body is not None else \
            await getattr(client, method)(path)
        assert r.status == status, (method, path, body, await r.text())
        assert needle in (await r.json())["error"]
        names = {(x["name"], x["origin"], x["above"]) for x in await rules(client)}
        assert names == {("from-file", "config", 9), ("api-rule", "api", 3)}


async def test_rules_and_zones_of_every_stream_kind_survive_a_restart(
    serve, h264_clip
) -> None:
    config_stream = {"name": "clip", "url": str(h264_clip), "loop": True,
                     "zones": [{"name": "from-file", "points": LEFT}]}
    client = await serve(streams=[config_stream])
    r = await client.post(RULES, json={"name": "busy", "stream": "clip", "above": 3,
                                       "below": 1, "for_seconds": 2})
    assert r.status == 201
    # A config-file stream's zones set through the API replace the file's, and are saved.
    status, body = await put_zones(client, "clip", [{"name": "drawn", "points": RIGHT}])
    assert status == 200 and body["persisted"] is True
    # A browser camera's zones come back when a camera of that id publishes again.
    cam = await add_source(client, "camera-1", [100], origin="webrtc")
    status, _ = await put_zones(client, "camera-1", [{"name": "desk", "points": LEFT}])
    assert status == 200
    assert (await client.delete("/api/streams/camera-1")).status == 204
    assert cam is not None
    await add_source(client, "camera-1", [100], origin="webrtc")
    got = await (await client.get("/api/streams/camera-1/zones")).json()
    assert [z["name"] for z in got["zones"]] == ["desk"]
    await client.close()

    again = await serve(streams=[config_stream])
    got = await (await again.get("/api/streams/clip/zones")).json()
    assert [z["name"] for z in got["zones"]] == ["drawn"]
    assert [z.name for z in service(again).integrations.zones("clip")] == ["drawn"]
    listed = await rules(again, stream="clip")
    assert [(x["name"], x["origin"], x["for_seconds"]) for x in listed] == [("busy", "api", 2)]
    assert [r.name for r in service(again).integrations.rules] == ["busy"]
    await add_source(again, "camera-1", [100], origin="webrtc")
    got = await (await again.get("/api/streams/camera-1/zones")).json()
    assert [z["name"] for z in got["zones"]] == ["desk"]


async def test_removed_api_camera_forgets_its_zones(deploy) -> None:
    dep = await deploy()
    client = dep.client
    await dep.camera("gate", lambda _i: gradient(100))
    assert (await put_zones(client, "gate", [{"name": "l", "points": LEFT}]))[0] == 200
    assert (await client.delete("/api/streams/gate")).status == 204
    await dep.camera("gate", lambda _i: gradient(100), fps=5)
    got = await (await client.get("/api/streams/gate/zones")).json()
    assert got["zones"] == []
    # Where it is counted too: a new camera of that name starts with no zones.
    items = await sse_items(client, "/api/streams/gate/feed", lambda items: len(items) >= 2)
    assert all("zones" not in i for i in items[1:])
