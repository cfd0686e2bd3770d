"""Removing a stream and closing its viewers releases everything it held.

20 cycles against the running app: add a real RTSP camera through the API, watch it with a
real aiortc viewer until annotated frames arrive, hang up, delete the stream. Threads, file
descriptors (decoders, sockets, SQLite) and TCP connections must come back to where they
were, not grow with the cycles.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psutil
import pytest

from tests.fixtures.app import Serve, service
from tests.fixtures.rtc import make_client

pytestmark = [pytest.mark.slow, pytest.mark.rtsp]


def _threads() -> int:
    """Threads other than the event loop's default executor: that pool grows lazily to its
    fixed maximum (annotation and uploads run there) and keeps its workers, by design."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def _resources(proc: psutil.Process) -> tuple[int, int, int]:
    connections = [c for c in proc.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN]
    return _threads(), proc.num_fds(), len(connections)


async def _settle(proc: psutil.Process, base: tuple[int, int, int], timeout: float) -> tuple[
    int, int, int
]:
    """Sockets in TIME_WAIT or a decoder thread finishing can lag a moment behind."""
    deadline = time.monotonic() + timeout
    now = _resources(proc)
    while any(n > b for n, b in zip(now, base, strict=True)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = _resources(proc)
    return now


async def test_twenty_add_view_remove_cycles_release_threads_fds_and_sockets(
    serve: Serve, rtsp_server, h264_clip
) -> None:
    camera = rtsp_server(h264_clip)
    client = await serve()
    svc = service(client)
    proc = psutil.Process()
    cycles, warmup = 20, 2
    base: tuple[int, int, int] | None = None
    peak = (0, 0, 0)
    for i in range(cycles + warmup):
        if i == warmup:
            base = await _settle(proc, (10**6,) * 3, 0)
        r = await client.post("/api/streams", json={"name": f"cam{i}", "url": camera.url})
        assert r.status == 201, await r.text()
        viewer = await make_client("view", size=(320, 240))
        r = await client.post("/api/rtc/offer",
                              json={**viewer.offer, "mode": "view", "stream_id": f"cam{i}"})
        assert r.status == 200, await r.text()
        await viewer.accept(await r.json())
        # Placeholders (the default size) come until the first result; then the camera's own.
        frames = await viewer.wait_frames(3, timeout=30, where=lambda f: f.width == 320)
        assert frames[-1].height == 240
        peak = max(peak, _resources(proc))
        await viewer.close()
        r = await client.delete(f"/api/streams/cam{i}")
        assert r.status == 204
        deadline = time.monotonic() + 10
        while svc.peers.peer_count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert base is not None
    after = await _settle(proc, base, 10)
    print(f"\n{cycles} add/view/remove cycles: threads, fds, TCP connections "
          f"{base} -> {after} (peak {peak})")
    assert svc.peers.peer_count == 0 and not svc.streams
    assert after[0] <= base[0], "threads left behind"
    assert after[1] <= base[1] + 2, "file descriptors left behind"
    assert after[2] <= base[2], "TCP connections left behind"
