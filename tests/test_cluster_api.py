"""Calibration on a cluster's API process, with a real PostgreSQL and without Ray (its
startup's Ray connection is left out; the registry, settings and stored models need only
the database). Rules, zones, alerts, history and the gathering map run on both kinds of
deployment through the ``deploy`` fixture (``tests/fixtures/deployments.py``);
``tests/test_cluster.py`` runs the whole cluster.
"""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("the cluster's API", "psycopg", hint="pip install crowdcount[cluster]")

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.streamer.app import build_app
from crowdcount.streamer.cluster.placement import choose_shard
from crowdcount.streamer.cluster.service import ClusterService
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.routes.common import SERVICE
from tests.test_rules_api import FILE_RULE

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


async def test_calibration_on_a_cluster_reaches_the_cameras_shard(
        cluster_api, fake_calibrate, postgres_dsn, brightness_model, tmp_path) -> None:
    """Frames captured through the API process (from the camera's shard: stood in for
    here, as Ray is not running) and marked; the job runs in the API process and leaves the
    model's bytes in PostgreSQL; a shard that runs the camera (as after a failover, a new
    one) writes the model where it runs and counts with it, and a revert reaches it too."""
    from crowdcount.model.runtime import Runtime
    from crowdcount.streamer.calibration import CALIBRATION_KEY, Captured, pack_density
    from crowdcount.streamer.cluster.shard import ShardRuntime
    from crowdcount.streamer.service import Service
    from crowdcount.streamer.sources.synthetic import SyntheticSource
    from crowdcount.streamer.store.postgres import PostgresStore
    from tests.fixtures.waiting import wait_until
    from tests.test_calibration_api import BASE, mark_five, status, wait_state

    svc: Any = cluster_api.server.app[SERVICE]
    shots: list[tuple[str, int]] = []

    async def from_the_shard(stream_id: str, back: int) -> Captured:
        svc.get(stream_id)
        shots.append((stream_id, back))
        picture = np.full((240, 320, 3), 128, np.uint8)
        jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
        return Captured(time.time(), 320, 240, 30.0, jpeg,
                        pack_density(np.full((30, 40), 0.025, np.float32)))

    svc.calibration._grab = from_the_shard
    job = fake_calibrate(kept=True)
    job.release()
    await mark_five(cluster_api, "cam")
    assert shots == [("cam", 0)] * 5
    assert (await cluster_api.post(BASE.format("cam"), json={})).status == 202
    done = await wait_state(cluster_api, "cam", "done", "failed", "refused")
    assert done["state"] == "done", done
    value = svc.store.settings.stream_settings(CALIBRATION_KEY)["cam"]
    assert svc.store.calibration.model("cam", value["model_id"]) == job.model.read_bytes()
    streams = (await (await cluster_api.get("/api/streams")).json())["streams"]
    assert streams[0]["calibration"]["frames"] == 5

    # The camera's shard (a fresh one: its node's files are gone) starts the camera.
    config = parse_config({"model": {"path": str(brightness_model), "backend": "onnx",
                                     "threads": 1}}, "shard")
    store = PostgresStore(postgres_dsn, shard=svc.streams["cam"].shard)
    shard = Service(config, Runtime.open(brightness_model, "onnx", threads=1),
                    model_path=str(brightness_model), store=store, owns_registry=False,
                    model_dir=tmp_path / "shard-models")
    try:
        await shard.start_pipeline()
        source = SyntheticSource("cam", 320, 240, fps=10)
        await shard.add_source(source, url="synthetic", kind="synthetic", origin="api")
        own = tmp_path / "shard-models" / f"cam-{value['model_id']}.onnx"
        await wait_until(lambda: shard.pipeline.worker.model_of("cam") == own, 20,
                         "the shard on the calibrated model")
        assert own.read_bytes() == job.model.read_bytes()
        # Reverted through the API: the shard hears it (the settings' NOTIFY names it).
        assert (await cluster_api.delete(BASE.format("cam"))).status == 200
        assert (await status(cluster_api, "cam"))["model"] is None
        await ShardRuntime._reload_calibrations(shard, {f"setting:{CALIBRATION_KEY}:cam"})
        assert shard.pipeline.worker.model_of("cam") is None
        assert svc.store.calibration.model("cam", value["model_id"]) is None
    finally:
        await shard.close()
