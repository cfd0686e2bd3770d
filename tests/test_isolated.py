"""IsolatedRtspSource: a real GStreamer RTSP camera decoded in a child process, and real
faults of that child (SIGSEGV, SIGSTOP): this process carries on and the camera comes back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from crowdcount.streamer.sources.isolated import IsolatedRtspSource
from crowdcount.streamer.sources.synthetic import SyntheticSource
from crowdcount.streamer.status import StreamState
from tests.fixtures.app import service
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]


async def _fresh_frame(source: IsolatedRtspSource, after: float, timeout: float):
    """The first frame captured after ``after`` (wall clock)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(source.recv(), max(0.01, deadline - time.monotonic()))
        if frame.captured_at > after:
            return frame


async def test_frames_come_from_a_child_process(rtsp_server, h264_clip) -> None:
    server = rtsp_server(h264_clip)
    source = IsolatedRtspSource("cam", server.url)
    await source.start()
    try:
        frame = await asyncio.wait_for(source.recv(), 20)
        assert frame.size == (320, 240) and frame.image.shape == (240, 320, 3)
        assert frame.image.max() > 200 and frame.image.min() < 60
        assert source.child_pid is not None and source.child_pid != os.getpid()
        assert psutil.Process(source.child_pid).ppid() == os.getpid()
        await wait_until(lambda: source.status.state == StreamState.RUNNING, 5)
    finally:
        await source.stop()
    assert not psutil.pid_exists(source.child_pid) or \
        psutil.Process(source.child_pid).status() == psutil.STATUS_ZOMBIE
    assert source.status.state == StreamState.STOPPED


async def test_a_crashing_decoder_does_not_take_the_process_down(rtsp_server, h264_clip) -> None:
    server = rtsp_server(h264_clip)
    source = IsolatedRtspSource("cam", server.url, backoff=0.2)
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 20)
        first = source.child_pid
        assert first is not None
        killed = time.time()
        os.kill(first, signal.SIGSEGV)  # what a segfault in FFmpeg does to its process
        await wait_until(lambda: source.restarts == 1, 10, "the restart")
        assert "decoder process died (SIGSEGV)" in (source.status.last_error or "")
        assert source.status.reconnects >= 1
        frame = await _fresh_frame(source, killed, 20)  # frames again, from a new child
        print(f"\nSIGSEGV of the decoder process: frames again {time.time() - killed:.2f} s "
              "later from a new one (backoff 0.2 s)")
        assert frame.size == (320, 240)
        assert source.child_pid not in (None, first)
        await wait_until(lambda: source.status.state == StreamState.RUNNING, 5)
    finally:
        await source.stop()


async def test_a_hung_decoder_is_killed_and_replaced(rtsp_server, h264_clip) -> None:
    server = rtsp_server(h264_clip)
    source = IsolatedRtspSource("cam", server.url, silence_timeout=1.0, backoff=0.2)
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 20)
        hung = source.child_pid
        assert hung is not None
        t0 = time.monotonic()
        os.kill(hung, signal.SIGSTOP)  # stuck: no frame, no heartbeat
        await wait_until(lambda: source.restarts == 1, 10, "the restart")
        detected = time.monotonic() - t0
        assert 0.9 <= detected < 4, detected
        assert "sent nothing for 1 s" in (source.status.last_error or "")
        await _fresh_frame(source, time.time(), 20)
        print(f"\nSIGSTOP of the decoder process: killed and replaced after {detected:.2f} s "
              f"(silence_timeout 1 s); frames again {time.monotonic() - t0:.2f} s after it")
        assert not psutil.pid_exists(hung) or \
            psutil.Process(hung).status() == psutil.STATUS_ZOMBIE
    finally:
        await source.stop()


async def test_service_stream_with_isolated_decoder_survives_a_decoder_crash(
    serve, rtsp_server, h264_clip
) -> None:
    """Through the API: ``isolate_decoder`` is accepted, saved with the stream, and a
    segfaulting decoder leaves the server, its API and a second stream running."""
    server = rtsp_server(h264_clip)
    client = await serve()
    other = SyntheticSource("other", 160, 128, fps=10)
    await service(client).add_source(other, url="synthetic", kind="synthetic")
    r = await client.post("/api/streams",
                          json={"name": "cam", "url": server.url, "isolate_decoder": True})
    assert r.status == 201, await r.text()
    assert (await r.json())["options"] == {"isolate_decoder": True}
    source = service(client).get("cam").source
    assert isinstance(source, IsolatedRtspSource)
    await wait_until(lambda: source.status.frames_out >= 5, 30, "frames from the child")
    saved = service(client).store.streams.get("cam")
    assert saved is not None and saved["options"] == {"isolate_decoder": True}
    os.kill(source.child_pid, signal.SIGSEGV)
    others_before = other.status.frames_out
    await wait_until(lambda: source.restarts == 1, 10, "the restart")
    r = await client.get("/api/streams/cam")
    assert r.status == 200
    assert "SIGSEGV" in (await r.json())["status"]["last_error"]
    done = source.status.frames_out
    await wait_until(lambda: source.status.frames_out >= done + 5, 30, "frames again")
    assert other.status.frames_out > others_before  # the other stream never stopped
    r = await client.post("/api/streams",
                          json={"name": "f", "url": server.url, "isolate_decoder": "yes"})
    assert r.status == 400
    assert "field 'isolate_decoder' must be a boolean" in (await r.json())["error"]
