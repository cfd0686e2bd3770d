"""The cluster's camera registry has one owner, the database: two API processes (real
``crowdcount`` apps in their own processes, on a real PostgreSQL) adding the same name at
the same moment get one 201 and one 409, and the winner's camera is not overwritten; at
``max_streams`` the same holds for two different names.

The processes run the HTTP app with the ``ClusterService`` but leave out its startup, which
connects to Ray: deciding a registration is one PostgreSQL transaction, and a shard hears
of it by NOTIFY (``test_notify_announces_registry_changes``), so no Ray cluster is needed
to show that only one of two racing additions is accepted.
"""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("the cluster's registry", "psycopg", hint="pip install crowdcount[cluster]")

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from crowdcount.streamer.cluster.placement import choose_shard
from crowdcount.streamer.store.postgres import STREAMS_CHANNEL, PostgresStore
from tests.fixtures.postgres import PostgresServer, free_port

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
MAX_STREAMS = 12
ROUNDS = 5

_API = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web
    from crowdcount.streamer.app import build_app
    from crowdcount.streamer.config import parse_config

    dsn, port, max_streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = parse_config({
        "server": {"port": port, "max_streams": max_streams},
        "cluster": {"address": "127.0.0.1:1", "database": dsn, "shards": 2},
    }, "test")
    app = build_app(config)
    app.on_startup.clear()  # no Ray: registering a camera needs only PostgreSQL
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)
    """
)


@pytest.fixture(scope="module")
def registry_dsn(postgres_server: PostgresServer) -> str:
    dsn = postgres_server.new_database("registry_tests")
    PostgresStore(dsn).close()  # the schema, before two processes race to create it
    return dsn


@pytest.fixture(scope="module")
def apis(registry_dsn: str) -> Iterator[list[str]]:
    """Two API processes on the same database; their base URLs."""
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", _API, registry_dsn, str(port), str(MAX_STREAMS)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)


async def _post_at_once(http: aiohttp.ClientSession, urls: list[str],
                        bodies: list[dict[str, str]]) -> list[tuple[int, dict[str, object]]]:
    async def post(url: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
        async with http.post(f"{url}/api/streams", json=body) as resp:
            return resp.status, await resp.json()

    return await asyncio.gather(*(post(u, b) for u, b in zip(urls, bodies, strict=True)))


async def _wait_up(http: aiohttp.ClientSession, urls: list[str]) -> None:
    for url in urls:
        for _ in range(200):
            try:
                async with http.get(f"{url}/api/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{url} did not answer /api/health in 10 s")


def _rows(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, url FROM streams").fetchall())


async def test_two_api_processes_adding_one_name_at_once(apis: list[str],
                                                         registry_dsn: str) -> None:
    with psycopg.connect(registry_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM streams")
    async with aiohttp.ClientSession() as http:
        await _wait_up(http, apis)
        for i in range(ROUNDS):
            name = f"door{i}"
            bodies = [{"name": name, "url": f"rtsp://127.0.0.1:9/{side}"} for side in "ab"]
            got = await _post_at_once(http, apis, bodies)
            assert sorted(status for status, _ in got) == [201, 409], got
            winner = next(b for (status, _), b in zip(got, bodies, strict=True)
                          if status == 201)
            loser = next(body for status, body in got if status == 409)
            assert loser["error"] == f"a stream named {name!r} already exists"
            assert _rows(registry_dsn)[name] == winner["url"]  # nothing overwritten
        # At the limit, two different names racing for the last place: one gets it.
        for i in range(MAX_STREAMS - ROUNDS - 1):
            async with http.post(f"{apis[i % 2]}/api/streams",
                                 json={"name": f"cam{i}", "url": "rtsp://127.0.0.1:9/c"}) as r:
                assert r.status == 201, await r.text()
        got = await _post_at_once(http, apis, [
            {"name": f"last{side}", "url": "rtsp://127.0.0.1:9/l"} for side in "ab"])
        assert sorted(status for status, _ in got) == [201, 409], got
        assert next(body for status, body in got if status == 409)["error"] == (
            f"stream limit reached: {MAX_STREAMS} streams (server.max_streams)")
    assert len(_rows(registry_dsn)) == MAX_STREAMS


def test_register_update_and_delete_in_the_store(postgres_dsn: str) -> None:
    with PostgresStore(postgres_dsn) as store:
        streams = store.streams

        def register(sid: str, origin: str = "api", limit: int | None = 3) -> str:
            return streams.register(sid, "rtsp://h/" + sid, "rtsp", {"fps_limit": 2.0},
                                    origin=origin, shards=2, place=choose_shard, limit=limit)

        assert [register(s) for s in ("a", "b")] == ["added", "added"]
        assert register("a") == "name_taken"
        assert {store.streams.shard_of(s) for s in ("a", "b")} == {0, 1}  # least loaded
        assert register("c", origin="config") == "added"
        assert register("c", origin="config") == "updated"  # the config file, read again
        assert register("d") == "limit_reached"
        assert register("a", origin="config") == "name_taken"  # an API camera's name
        assert streams.update("a", "rtsp://h/a2", "rtsp", {}) is True
        a = streams.get("a")
        assert a is not None and (a["url"], a["options"]) == ("rtsp://h/a2", {})
        assert streams.delete("a") is True
        assert streams.update("a", "rtsp://h/a3", "rtsp", {}) is False  # not re-created
        assert streams.get("a") is None and register("d") == "added"


def test_notify_announces_registry_changes(postgres_dsn: str) -> None:
    """The one path by which shards and API processes learn of a camera change."""
    PostgresStore(postgres_dsn).close()
    listener = psycopg.connect(postgres_dsn, autocommit=True)
    listener.execute(f"LISTEN {STREAMS_CHANNEL}")
    got: list[str] = []

    def listen() -> None:
        got.extend(n.payload for n in listener.notifies(timeout=10, stop_after=3))

    thread = threading.Thread(target=listen)
    thread.start()
    with PostgresStore(postgres_dsn) as store:
        store.streams.register("a", "rtsp://h/a", "rtsp", {}, origin="api", shards=1,
                               place=choose_shard, limit=None)
        assert store.streams.register("a", "rtsp://h/x", "rtsp", {}, origin="api", shards=1,
                                      place=choose_shard, limit=None) == "name_taken"
        store.streams.update("a", "rtsp://h/b", "rtsp", {"zones": []})
        store.streams.delete("a")
    thread.join()
    listener.close()
    assert got == ["a", "a", "a"]  # added, edited, removed; nothing for the refusal


def test_a_silent_shard_is_reported_unavailable() -> None:
    """What the API shows of a camera whose shard stopped reporting (its node died): its
    last report, as ``unavailable`` once the silence outlasts ``outage_after``; a camera
    just added is not an outage until its shard has had that long to report."""
    from crowdcount.streamer.cluster.service import ClusterEntry

    def status(age_s: float | None, created_s_ago: float) -> dict[str, object]:
        now = 1000.0
        return ClusterEntry("cam", "rtsp://h/c", "rtsp", "api", {}, 1, now - created_s_ago,
                            "node-a", {"state": "running", "frames_out": 7}, age_s, 2.5,
                            now).status()

    assert status(1.0, 60)["state"] == "running"
    gone = status(4.0, 60)
    assert (gone["state"], gone["frames_out"], gone["fps_out"]) == ("unavailable", 7, 0.0)
    assert gone["last_error"] == "shard 1 not reporting for 4.0 s"
    assert status(None, 1.0)["state"] == "running"  # just added: not an outage yet
    assert status(None, 60)["last_error"] == "shard 1 has never reported"
