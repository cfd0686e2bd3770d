"""A real RTSP camera (the GStreamer test server) added through the HTTP API."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path

import cv2
import pytest
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.streamer.app import build_app
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.routes.common import SERVICE
from tests.fixtures.media import frame_image
from tests.fixtures.models import expected_count

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]


def _rtsp_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rtsp")]


async def test_rtsp_stream_via_api_counts_every_processed_frame(
    rtsp_server, h264_clip: Path, brightness_model: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("CROWDCOUNT_TOKEN", raising=False)
    server = rtsp_server(h264_clip)
    config = parse_config({"server": {"database": str(tmp_path / "db.sqlite3")},
                           "model": {"path": str(brightness_model), "threads": 1}})
    before = set(_rtsp_threads())
    async with TestClient(TestServer(build_app(config))) as client:
        r = await client.post("/api/streams", json={
            "name": "cam", "url": server.url_with("viewer", "pa55word"), "fps_limit": 10})
        assert r.status == 201, await r.text()
        assert "pa55word" not in await r.text()
        svc = client.server.app[SERVICE]
        status = svc.get("cam").source.status
        # Without fps_limit a camera is counted once a second, and that default is not
        # recorded as the stream's own limit (a later default applies to it too).
        r = await client.post("/api/streams", json={"name": "idle", "url": server.url})
        assert r.status == 201, await r.text()
        assert "fps_limit" not in (await r.json())["options"]
        assert svc.pipeline.batcher._lanes["idle"].fps_limit == 1.0
        assert svc.get("idle").source.decoder.target_fps == 1.0
        assert (await client.delete("/api/streams/idle")).status == 204
        deadline = time.monotonic() + 30
        while status.frames_out < 20:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        r = await client.delete("/api/streams/cam")
        assert r.status == 204
        processed = status.frames_out
        assert set(_rtsp_threads()) == before  # decode and watchdog threads released

        r = await client.get("/api/streams/cam/counts")
        assert r.status == 200
        rows = (await r.json())["counts"]
        assert len(rows) == processed
        ts = [row["t"] for row in rows]
        assert all(a < b for a, b in itertools.pairwise(ts))
        # Every count must be the count of some frame of the looping clip, as the runtime
        # sees it (320x240 resized to 320x256); H.264 is lossy, hence the tolerance.
        clip_counts = [
            expected_count(cv2.resize(frame_image(i, 320, 240), (320, 256)))
            for i in range(50)
        ]
        lo, hi = min(clip_counts), max(clip_counts)
        for row in rows:
            assert lo * 0.97 <= row["count"] <= hi * 1.03, (row, lo, hi)
