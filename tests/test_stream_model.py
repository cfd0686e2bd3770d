"""A stream's own model: set from a calibration through the service without restarting the
stream, kept in the store's per-stream settings across a restart, reverted in one call; and
``model =`` per ``[[streams]]`` in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.app import service
from tests.fixtures.models import brightness_onnx
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.slow


async def next_count(svc, stream_id: str) -> float:
    sub = svc.feed.subscribe(stream_id)
    try:
        async for item in sub:
            if "count" in item:
                return float(item["count"])
    finally:
        sub.close()
    raise AssertionError("feed ended")


async def test_calibration_swaps_the_model_live_survives_restart_and_reverts(serve, h264_clip,
                                                                              tmp_path):
    own = brightness_onnx(tmp_path / "own.onnx", stride=16)  # a quarter of the shared count
    streams = [{"name": "clip", "url": str(h264_clip), "loop": True},
               {"name": "other", "url": str(h264_clip), "loop": True}]
    client = await serve(streams=streams)
    svc = service(client)
    shared_count = await next_count(svc, "clip")
    source = svc.streams["clip"].source
    await svc.set_calibration("clip", {"model": str(own), "frames": 5,
                                       "mae_before": 3.0, "mae_after": 1.0})
    await wait_until(lambda: svc.pipeline.worker.model_of("clip") == own, what="model swap")
    assert svc.streams["clip"].source is source  # the stream was not restarted
    own_count = await next_count(svc, "clip")
    assert own_count == pytest.approx(shared_count / 4, rel=0.2)
    assert await next_count(svc, "other") == pytest.approx(shared_count, rel=0.2)
    await client.close()

    again = await serve(streams=streams)  # same database: the calibration comes back
    svc = service(again)
    assert svc.calibrations["clip"]["frames"] == 5
    await wait_until(lambda: svc.pipeline.worker.model_of("clip") == own, what="model load")
    assert await next_count(svc, "clip") == pytest.approx(shared_count / 4, rel=0.2)
    assert await svc.revert_calibration("clip") is True
    assert svc.pipeline.worker.model_of("clip") is None
    assert await next_count(svc, "clip") == pytest.approx(shared_count, rel=0.2)
    assert await svc.revert_calibration("clip") is False


async def test_a_config_stream_model_counts_that_stream(serve, h264_clip, tmp_path: Path):
    own = brightness_onnx(tmp_path / "own.onnx", stride=16)
    client = await serve(streams=[{"name": "clip", "url": str(h264_clip), "loop": True,
                                   "model": str(own)},
                                  {"name": "other", "url": str(h264_clip), "loop": True}])
    svc = service(client)
    await wait_until(lambda: svc.pipeline.worker.model_of("clip") == own, what="model load")
    own_count, other = await next_count(svc, "clip"), await next_count(svc, "other")
    assert own_count == pytest.approx(other / 4, rel=0.2)
