"""FileSource pacing, looping, end and errors; WebcamSource errors (no camera here)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from crowdcount.streamer.sources.base import SourceEnded
from crowdcount.streamer.sources.file import FileSource
from crowdcount.streamer.sources.webcam import WebcamSource
from crowdcount.streamer.status import StreamState


async def collect(source, seconds: float) -> list:
    """Every frame received within ``seconds`` (stops early when the source ends)."""
    frames = []
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            frames.append(await asyncio.wait_for(source.recv(), left))
    except (TimeoutError, SourceEnded):
        pass
    return frames


@pytest.mark.slow
async def test_plays_at_the_files_frame_rate_then_ends(h264_clip):
    source = FileSource("file", h264_clip)
    t0 = time.monotonic()
    await source.start()
    frames = []
    with pytest.raises(SourceEnded):
        while True:
            frames.append(await asyncio.wait_for(source.recv(), 10))
    elapsed = time.monotonic() - t0
    print(f"\n{len(frames)} frames in {elapsed:.2f} s (clip: 50 frames, 5 s at 10 fps)")
    assert 45 <= len(frames) <= 50  # a slow consumer may drop one or two, never gain
    assert source.status.frames_in == 50
    # Paced at the file's rate, not decoded as fast as possible: the last frame is due at
    # t=4.9 s. (A slow machine may take longer; that is a matter for benchmarks.)
    assert elapsed >= 0.85 * 4.9
    assert frames[0].size == (320, 240)
    assert source.status.state == StreamState.ENDED and source.status.last_error is None
    await source.stop()
    assert source.status.state == StreamState.ENDED  # stop() after the end keeps ENDED


@pytest.mark.slow
async def test_loop_keeps_playing_and_pacing(clip_factory):
    clip = clip_factory(160, 120, 10, 1.0)  # 10 frames, 1 s
    source = FileSource("file", clip, loop=True)
    await source.start()
    frames = []
    try:
        async def two_passes() -> None:
            while source.loops < 2:
                frames.append(await source.recv())

        await asyncio.wait_for(two_passes(), 30)
    finally:
        await source.stop()
    print(f"\nloop: {len(frames)} frames, {source.loops} full passes")
    assert source.status.frames_in >= 20  # two whole passes decoded
    assert len(frames) >= 15  # a slow consumer may miss a few (newest frame wins)
    assert source.status.state == StreamState.STOPPED
    # ~10 fps kept across restarts: no burst at the loop boundary (a slow machine may
    # leave longer gaps; the rate is never above the file's).
    span = frames[-1].captured_at - frames[0].captured_at
    assert span >= 0.9 * (len(frames) - 1) / 10


async def test_unreadable_file_fails_with_clear_error(tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"this is not a video file" * 100)
    source = FileSource("file", bad)
    await source.start()
    with pytest.raises(SourceEnded):
        await asyncio.wait_for(source.recv(), 5)
    assert source.status.state == StreamState.FAILED
    error = source.status.last_error or ""
    assert str(bad) in error and "InvalidDataError" in error and "\n" not in error
    await source.stop()
    assert source.status.state == StreamState.FAILED


async def test_missing_file_fails(tmp_path):
    source = FileSource("file", tmp_path / "missing.mp4")
    await source.start()
    with pytest.raises(SourceEnded):
        await asyncio.wait_for(source.recv(), 5)
    assert source.status.state == StreamState.FAILED
    assert "FileNotFoundError" in (source.status.last_error or "")
    await source.stop()


async def test_stop_mid_file_is_prompt_and_leaves_no_thread(h264_clip):
    source = FileSource("file", h264_clip, loop=True)
    await source.start()
    await asyncio.wait_for(source.recv(), 10)
    await asyncio.wait_for(source.stop(), 10)  # a deadline: stop must not wait for the file
    assert not [t.name for t in threading.enumerate() if t.name.startswith("file-")]
    assert source.status.state == StreamState.STOPPED
    with pytest.raises(SourceEnded):
        await source.recv()


async def test_webcam_missing_device_fails_clearly():
    device = "/dev/video-crowdcount-missing"
    source = WebcamSource("cam", device)
    await source.start()
    with pytest.raises(SourceEnded):
        await asyncio.wait_for(source.recv(), 5)
    await source.stop()
    assert source.status.state == StreamState.FAILED
    error = source.status.last_error or ""
    assert device in error and "No such file or directory" in error


@pytest.mark.skipif(not os.path.exists("/dev/video0"), reason="no camera at /dev/video0")
async def test_webcam_delivers_frames():
    source = WebcamSource("cam", "/dev/video0")
    await source.start()
    try:
        frame = await asyncio.wait_for(source.recv(), 10)
        assert frame.image.ndim == 3 and frame.image.shape[2] == 3
    finally:
        await source.stop()
