"""The single box's API tests, run against a cluster's API process: the same refused rule
and zone requests answer the same status and message, and rules, zones, history and the
gathering map are served from PostgreSQL as a single box serves them from SQLite.

The API process runs with a real PostgreSQL and without Ray (its startup's Ray connection
is left out; the registry, settings and history need only the database), so these run on
every machine that has PostgreSQL; ``tests/test_cluster.py`` runs the whole cluster.
"""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("the cluster's API", "psycopg", hint="pip install crowdcount[cluster]")

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.streamer.app import build_app
from crowdcount.streamer.cluster.placement import choose_shard
from crowdcount.streamer.cluster.service import ClusterService
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.routes.common import SERVICE
from tests.test_history import T0, fill
from tests.test_rules_api import BAD_RULE_REQUESTS, FILE_RULE, check_refused
from tests.test_zones_api import BAD_ZONES, LEFT

pytestmark = pytest.mark.postgres


@pytest.fixture
async def cluster_api(postgres_dsn: str) -> AsyncIterator[TestClient]:
    """An API process of a cluster with one camera, ``cam``, registered (as a shard would
    run it) and the config file's ``FILE_RULE``."""
    config = parse_config({
        "thresholds": [FILE_RULE],
        "cluster": {"address": "127.0.0.1:1", "database": postgres_dsn, "shards": 2},
    }, "test")
    app = build_app(config)
    svc = app[SERVICE]
    assert isinstance(svc, ClusterService)

    async def start_without_ray(_app: web.Application) -> None:
        await asyncio.to_thread(svc.store.streams.register, "cam", "rtsp://127.0.0.1:9/c",
                                "rtsp", {}, origin="api", shards=2, place=choose_shard,
                                limit=None)
        await svc.rules.load()
        await svc.refresh()

    app.on_startup.clear()
    app.on_startup.append(start_without_ray)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), BAD_RULE_REQUESTS)
async def test_bad_rule_requests_on_a_cluster(cluster_api, method, path, body, status,
                                              needle) -> None:
    await check_refused(cluster_api, method, path, body, status, needle)


@pytest.mark.parametrize(("body", "needle"), BAD_ZONES)
async def test_bad_zones_on_a_cluster(cluster_api, body, needle) -> None:
    r = await cluster_api.put("/api/streams/cam/zones", json=body)
    assert r.status == 400
    assert needle in (await r.json())["error"]
    assert (await (await cluster_api.get("/api/streams/cam/zones")).json())["zones"] == []


async def test_rules_zones_history_and_heatmap_on_a_cluster(cluster_api) -> None:
    svc: Any = cluster_api.server.app[SERVICE]
    # Zones: saved in the settings (their one record, which the camera's shard applies).
    zones = [{"name": "left", "points": LEFT}]
    r = await cluster_api.put("/api/streams/cam/zones", json={"zones": zones})
    assert r.status == 200, await r.text()
    assert svc.store.settings.zones() == {"cam": zones}
    assert "zones" not in svc.store.streams.get("cam")["options"]
    # Rules: a zone rule on the live camera, saved in PostgreSQL for the shards.
    rule = {"name": "busy", "stream": "cam", "zone": "left", "above": 5, "below": 1}
    r = await cluster_api.post("/api/alerts/rules", json=rule)
    assert r.status == 201, await r.text()
    assert (await r.json())["origin"] == "api"
    assert [x["name"] for x in svc.store.settings.rules()] == ["busy"]
    # History (the shards write it): stepped counts from the rollups, as on a single box.
    await asyncio.to_thread(fill, svc.store, 70)
    r = await cluster_api.get("/api/streams/cam/counts",
                              params={"since": str(T0), "until": str(T0 + 70), "step": "60"})
    assert [x["t"] for x in (await r.json())["counts"]] == [T0, T0 + 60]
    # The gathering map, from the grids the shards write; 404 for an unknown camera.
    r = await cluster_api.get("/api/streams/cam/heatmap", params={"format": "json"})
    assert r.status == 200 and (await r.json())["grid"] is None
    assert (await cluster_api.get("/api/streams/nope/heatmap")).status == 404
    # Removing the camera forgets its zones, as on a single box.
    assert (await cluster_api.delete("/api/streams/cam")).status == 204
    assert svc.store.settings.zones() == {}
