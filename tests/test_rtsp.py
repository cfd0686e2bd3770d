"""RtspSource against a real GStreamer RTSP server: frames, crash, hang, bad URL, teardown.

Nothing is mocked: the server is a subprocess that the tests SIGKILL, SIGSTOP and restart,
as cameras do to the service in the field.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from crowdcount.streamer.sources.base import SourceEnded
from crowdcount.streamer.sources.rtsp import RtspSource
from crowdcount.streamer.status import StreamState
from tests.fixtures.rtsp import free_port
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.rtsp


async def next_frame(source: RtspSource, timeout: float):
    return await asyncio.wait_for(source.recv(), timeout)


async def drain_until_fresh(source: RtspSource, after: float, timeout: float):
    """The first frame captured after ``after`` (wall clock)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await next_frame(source, max(0.01, deadline - time.monotonic()))
        if frame.captured_at > after:
            return frame


@pytest.mark.slow
async def test_frames_of_the_clip_size(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    source = RtspSource("cam", server.url)
    t0 = time.monotonic()
    await source.start()
    try:
        frame = await next_frame(source, 5)
        first = time.monotonic() - t0
        assert frame.size == (320, 240)
        assert frame.image.dtype.name == "uint8" and frame.image.shape == (240, 320, 3)
        assert frame.image.max() > 200 and frame.image.min() < 60  # bright squares, dark bg
        assert source.status.state == StreamState.RUNNING
        for _ in range(10):
            await next_frame(source, 2)
        print(f"\ntime to first frame: {first:.3f} s")
    finally:
        await source.stop()
    assert source.status.state == StreamState.STOPPED
    with pytest.raises(SourceEnded):
        await source.recv()


@pytest.mark.slow
async def test_server_killed_and_restarted(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    source = RtspSource("cam", server.url, open_timeout=2, read_timeout=2, backoff_max=2)
    await source.start()
    try:
        await next_frame(source, 5)
        server.kill()
        await wait_until(lambda: source.status.state == StreamState.RECONNECTING, 5)
        assert source.status.last_error and server.url in source.status.last_error
        await asyncio.sleep(1.0)  # down for a while: several refused attempts
        restarted = time.time()
        server.start()
        t_restart = time.monotonic()
        frame = await drain_until_fresh(source, restarted, 30)
        recovery = time.monotonic() - t_restart
        assert frame.size == (320, 240)
        assert source.status.reconnects >= 1
        assert source.status.state == StreamState.RUNNING
        print(f"\nrecovery after restart: {recovery:.2f} s "
              f"(reconnects={source.status.reconnects}, last_error={source.status.last_error})")
    finally:
        await source.stop()


@pytest.mark.slow
async def test_stalled_server_is_dropped_by_watchdog(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    source = RtspSource(
        "cam", server.url, open_timeout=1, read_timeout=30, stall_timeout=1.5, backoff_max=1
    )
    await source.start()
    try:
        await next_frame(source, 5)
        server.pause()
        t_pause = time.monotonic()
        # read_timeout=30 s: only the watchdog can notice within the 15 s deadline.
        detected = await wait_until(lambda: source.status.state == StreamState.RECONNECTING, 15,
                                    "the watchdog to drop the stalled connection")
        assert "stalled" in (source.status.last_error or "")
        assert detected >= 1.0  # not before stall_timeout (1.5 s) has (nearly) passed
        await asyncio.sleep(1.0)
        resumed = time.time()
        server.resume()
        t_resume = time.monotonic()
        await drain_until_fresh(source, resumed, 30)
        print(f"\nstall detected {detected:.2f} s after SIGSTOP (stall_timeout 1.5 s); "
              f"frames again {time.monotonic() - t_resume:.2f} s after SIGCONT; "
              f"paused {t_resume - t_pause:.1f} s; reconnects={source.status.reconnects}")
        assert source.status.state == StreamState.RUNNING
    finally:
        await source.stop()


@pytest.mark.slow
async def test_stall_is_caught_without_proc_by_ffmpegs_socket_timeout(
    rtsp_server, h264_clip, monkeypatch
):
    """Where the watchdog cannot find the connection's socket (no /proc, as on macOS), a
    frozen server still ends the session: FFmpeg's own socket timeout, not PyAV's 30 s."""
    from crowdcount.streamer.sources import rtsp

    monkeypatch.setattr(rtsp, "_proc_available", lambda: False)
    monkeypatch.setattr(rtsp, "_process_sockets", lambda: {})
    server = rtsp_server(h264_clip)
    source = RtspSource(
        "cam", server.url, open_timeout=1, read_timeout=30, stall_timeout=1, backoff_max=1
    )
    await source.start()
    try:
        await next_frame(source, 5)
        server.pause()
        detected = await wait_until(lambda: source.status.state == StreamState.RECONNECTING, 10)
        print(f"\nwithout /proc: stall ended the session {detected:.2f} s after SIGSTOP "
              f"(socket timeout 1 s); last_error: {source.status.last_error}")
        assert detected < 5  # PyAV's read timeout (30 s) alone would still be waiting
        resumed = time.time()
        server.resume()
        await drain_until_fresh(source, resumed, 15)
        assert source.status.state == StreamState.RUNNING
    finally:
        server.resume()
        await source.stop()


async def test_host_name_is_resolved_on_the_decode_thread_at_each_attempt(monkeypatch):
    """Creating the source (on the event loop) does no DNS; each connection attempt
    resolves again on the source's own thread, so a slow resolver never blocks the loop and
    a camera that moved is followed."""
    import socket

    calls: list[tuple[str, str]] = []
    real = socket.getaddrinfo

    def slow_getaddrinfo(host, *args, **kwargs):
        calls.append((threading.current_thread().name, str(host)))
        if host == "camera.example":
            time.sleep(0.3)  # a slow resolver
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    loop_thread = threading.current_thread().name
    source = RtspSource("cam", "rtsp://camera.example:8554/x", open_timeout=1,
                        backoff_initial=0.05, backoff_max=0.1)
    await source.start()
    try:
        assert loop_thread not in {name for name, _ in calls}  # start() resolved nothing
        await wait_until(lambda: source.attempts >= 3, 20)
        mine = [name for name, host in calls if host == "camera.example"]
        assert len(mine) >= 2 and set(mine) == {"rtsp-cam"}
        assert source.status.state == StreamState.RECONNECTING
    finally:
        await source.stop()


async def test_nothing_listening_fails_after_bounded_retries():
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    source = RtspSource("cam", url, open_timeout=2, backoff_initial=0.2, max_retries=2)
    await source.start()
    try:
        await wait_until(lambda: source.status.state == StreamState.FAILED, 5)
        assert source.attempts == 3  # the first try and 2 retries
        assert source.status.reconnects == 2
        error = source.status.last_error or ""
        assert url in error and "ConnectionRefused" in error and "gave up" in error
        assert "\n" not in error
        with pytest.raises(SourceEnded):
            await next_frame(source, 1)
    finally:
        await source.stop()
    assert source.status.state == StreamState.FAILED  # stop() keeps the failure visible


async def test_retry_forever_backs_off_without_busy_loop():
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    source = RtspSource("cam", url, backoff_initial=0.1, backoff_max=0.8)
    await source.start()
    try:
        await asyncio.sleep(2.5)
        # delays 0.1, 0.2, 0.4, 0.8, 0.8 ... -> about 5-6 attempts in 2.5 s, not thousands
        assert 3 <= source.attempts <= 8, source.attempts
        assert source.status.state == StreamState.RECONNECTING
    finally:
        await source.stop()
    assert source.status.state == StreamState.STOPPED


async def test_credentials_never_in_last_error():
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
    source = RtspSource("cam", url, backoff_initial=0.1, max_retries=0)
    await source.start()
    try:
        await wait_until(lambda: source.status.state == StreamState.FAILED, 5)
    finally:
        await source.stop()
    error = source.status.last_error or ""
    assert "hunter2" not in error and "admin" not in error
    assert "rtsp://***@127.0.0.1:" in error
    assert "hunter2" not in str(source.status.to_dict())


@pytest.mark.slow
async def test_credentials_masked_with_a_live_server(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    source = RtspSource("cam", server.url_with("admin", "hunter2"), open_timeout=2,
                        backoff_max=0.5)
    await source.start()
    try:
        await next_frame(source, 5)
        server.kill()
        await wait_until(lambda: source.status.last_error is not None, 5)
        await asyncio.sleep(0.8)  # let a refused reconnect overwrite it
    finally:
        await source.stop()
    error = source.status.last_error or ""
    assert "hunter2" not in error and "admin" not in error and "***@" in error


@pytest.mark.slow
async def test_open_close_cycles_leave_no_threads(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    before = threading.active_count()
    for _ in range(20):
        source = RtspSource("cam", server.url, open_timeout=3)
        await source.start()
        await next_frame(source, 5)
        await source.stop()
        assert source.status.state == StreamState.STOPPED
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


async def test_stop_before_any_connection_is_quick():
    source = RtspSource("cam", f"rtsp://127.0.0.1:{free_port()}/x", backoff_initial=120,
                        backoff_max=120)
    before = threading.active_count()
    await source.start()
    await wait_until(lambda: source.status.last_error is not None,
                     what="the first attempt to be refused (now backing off)")
    # Deadline far below the 120 s backoff: stop() must not wait for the next attempt.
    await asyncio.wait_for(source.stop(), 30)
    await source.stop()  # idempotent
    assert threading.active_count() == before  # both threads gone


def test_rejects_bad_parameters():
    with pytest.raises(ValueError):
        RtspSource("cam", "rtsp://h/x", stall_timeout=0)
    with pytest.raises(ValueError):
        RtspSource("cam", "rtsp://h/x", max_retries=-1)


@pytest.mark.slow
async def test_stop_while_opening_on_a_hung_server_is_prompt(rtsp_server, h264_clip):
    server = rtsp_server(h264_clip)
    server.pause()  # TCP connects (kernel backlog) but RTSP never answers
    source = RtspSource("cam", server.url, open_timeout=120)
    await source.start()
    await asyncio.sleep(0.5)
    assert source.status.state == StreamState.CONNECTING
    t0 = time.monotonic()
    # Deadline far below open_timeout: stop() must interrupt the hung open.
    await asyncio.wait_for(source.stop(), 30)
    took = time.monotonic() - t0
    server.resume()
    print(f"\nstop() during a hung open took {took:.3f} s (open_timeout 120 s)")
    assert not [t.name for t in threading.enumerate() if t.name.startswith("rtsp-")]


@pytest.mark.slow
async def test_stopping_one_camera_of_an_nvr_leaves_the_others_connected(
        rtsp_server, h264_clip):
    """Channels of one NVR share its host and port; a source used to take every socket to
    it opened after its own attempt began as its own, so stopping (or a stall of) the first
    channel dropped all later ones."""
    server = rtsp_server(h264_clip)
    first = RtspSource("ch1", server.url)
    later = [RtspSource(f"ch{i}", server.url) for i in (2, 3, 4)]
    await first.start()
    try:
        await next_frame(first, 15)
        for source in later:  # all at once, as after a start-up or a network blip
            await source.start()
        for source in later:
            await next_frame(source, 15)
        await first.stop()
        await later[0].stop()  # one of those that connected at the same moment
        await asyncio.sleep(2.0)  # a dropped channel would have reconnected by now
        for source in later[1:]:
            assert source.status.reconnects == 0, source.status.last_error
            assert source.status.state == StreamState.RUNNING
            await next_frame(source, 5)
    finally:
        for source in (first, *later):
            await source.stop()
