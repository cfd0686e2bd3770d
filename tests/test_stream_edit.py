"""Editing a stream through the API (``PATCH /api/streams/{id}``): the new url and options
take effect (the source restarts), are saved, and the stream keeps its id, zones and rules;
streams from the config file are refused."""

from __future__ import annotations

from tests.fixtures.app import service
from tests.test_zones_api import LEFT, put_zones

DEAD = "rtsp://127.0.0.1:9/x"  # nothing listens: the stream keeps reconnecting, enough here


async def test_edit_options_and_url_keep_zones_and_survive_restart(serve) -> None:
    client = await serve()
    r = await client.post("/api/streams", json={"name": "door", "url": DEAD, "fps_limit": 5})
    assert r.status == 201
    assert (await put_zones(client, "door", [{"name": "mat", "points": LEFT}]))[0] == 200
    old_source = service(client).streams["door"].source

    r = await client.patch("/api/streams/door", json={"max_side": 480, "fps_limit": None,
                                                      "url": "rtsp://user:pw@127.0.0.1:9/y"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["options"] == {"max_side": 480, "zones": [{"name": "mat", "points": LEFT}]}
    assert body["url"] != "rtsp://user:pw@127.0.0.1:9/y" and "pw" not in body["url"]
    svc = service(client)
    assert svc.streams["door"].source is not old_source  # restarted with the new settings
    assert svc.streams["door"].url.endswith("/y")
    assert [z.name for z in svc.integrations.zones("door")] == ["mat"]
    saved = svc.store.streams.get("door")
    assert saved["options"]["max_side"] == 480 and "fps_limit" not in saved["options"]
    await client.close()

    again = await serve()
    stream = await (await again.get("/api/streams/door")).json()
    assert stream["options"]["max_side"] == 480 and "fps_limit" not in stream["options"]
    assert service(again).streams["door"].url.endswith("/y")


async def test_edit_errors(serve, h264_clip) -> None:
    client = await serve(streams=[{"name": "clip", "url": str(h264_clip), "loop": True}])
    r = await client.post("/api/streams", json={"name": "door", "url": DEAD})
    assert r.status == 201
    for path, body, status, needle in (
        ("/api/streams/clip", {"fps_limit": 2}, 409, "config file"),
        # settings a file cannot have: still the config file's stream (was a 500)
        ("/api/streams/clip", {"isolate_decoder": True}, 409, "config file"),
        ("/api/streams/ghost", {"fps_limit": 2}, 404, "ghost"),
        ("/api/streams/door", {"fps_limit": 0}, 400, "fps_limit"),
        ("/api/streams/door", {"max_side": 1.5}, 400, "integer"),
        ("/api/streams/door", {"url": "http://x/y"}, 400, "rtsp"),
        ("/api/streams/door", {"name": "other"}, 400, "unknown field 'name'"),
    ):
        r = await client.patch(path, json=body)
        assert r.status == status, (path, body, await r.text())
        assert needle in (await r.json())["error"]
    assert service(client).streams["door"].options == {}
