"""The shared Decoder: keyframes only when they meet the stream's rate, learnt from the
stream; full decode (with a status note) when the GOP is too long; scaled conversion.

Real H.264 clips made by PyAV here, decoded by PyAV; the RTSP cases use the real GStreamer
server (its GOP set per test) and the real RtspSource / IsolatedRtspSource.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from crowdcount.model.preprocess import input_size
from crowdcount.streamer.sources.decoding import Decoder
from crowdcount.streamer.sources.isolated import IsolatedRtspSource
from crowdcount.streamer.sources.rtsp import RtspSource
from crowdcount.streamer.status import StreamState, StreamStatus
from tests.fixtures.media import write_clip
from tests.fixtures.waiting import wait_until


def decode_all(path: Path, target_fps: float | None, max_side: int | None = None
               ) -> tuple[Decoder, list[av.VideoFrame]]:
    decoder = Decoder(StreamStatus(), target_fps, max_side)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(decoder.frames(container, stream))
    return decoder, frames


def indices(frames: list[av.VideoFrame], fps: int = 10) -> list[int]:
    """Frame numbers from timestamps (the MP4 muxer picks its own time base)."""
    return [round(float(f.time) * fps) for f in frames]


def write_forced_keys(path: Path, keys: set[int], frames: int, fps: int = 10) -> Path:
    """A clip whose keyframes are exactly ``keys`` (frame indices): a GOP that changes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"bf": "0", "g": "1000", "keyint_min": "1000",
                          "sc_threshold": "0", "preset": "veryfast"}
        for i in range(frames):
            rgb = np.full((128, 160, 3), (i * 3) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            if i in keys:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_only_keyframes_are_decoded_when_they_meet_the_rate(tmp_path: Path) -> None:
    # 10 fps, keyframe every 10 frames (1 s), 4 s: 40 frames, keyframes 0, 10, 20, 30.
    clip = write_clip(tmp_path / "gop1s.mp4", 160, 128, fps=10, seconds=4, gop=10)
    full, every = decode_all(clip, None)
    assert len(every) == 40 and full.status.frames_decoded == 40
    assert full.status.decode == "full" and full.status.decode_note is None

    for rate in (1.0, 0.5):
        decoder, frames = decode_all(clip, rate)
        # Keyframes only from the start (the interval is learnt meanwhile): frames 1-9,
        # 11-19 and 21-29 are never decoded.
        assert decoder.status.frames_decoded == 4, rate
        assert indices(frames) == [0, 10, 20, 30]
        assert all(f.key_frame for f in frames)
        assert decoder.status.decode == "keyframes"
        assert decoder.status.keyframe_interval == pytest.approx(1.0)
        assert decoder.status.decode_note is None
        assert decoder.status.decode_seconds > 0


def test_a_keyframe_is_the_same_picture_whichever_way_it_is_decoded(tmp_path: Path) -> None:
    """Keyframes-only cannot change a count: a keyframe refers to no other frame, so it
    decodes to the same pixels as in the full decode; only which frames are counted
    differs."""
    clip = write_clip(tmp_path / "same.mp4", 320, 240, fps=10, seconds=3, gop=10)
    _, every = decode_all(clip, None)
    _, keys = decode_all(clip, 1.0)
    full_keys = {round(float(f.time) * 10): f.to_ndarray(format="rgb24")
                 for f in every if f.key_frame}
    assert sorted(full_keys) == indices(keys) == [0, 10, 20]
    for frame in keys:
        assert np.array_equal(frame.to_ndarray(format="rgb24"),
                              full_keys[round(float(frame.time) * 10)])


def test_a_long_gop_camera_is_decoded_in_full_and_says_why(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "gop3s.mp4", 160, 128, fps=10, seconds=7, gop=30)
    decoder, frames = decode_all(clip, 1.0)
    # Keyframe 0, then at frame 11 the next keyframe is overdue (> 1.05 s): everything is
    # decoded from there, and published from keyframe 30 on (the P-frames between lack
    # their references).
    assert indices(frames) == [0, *range(30, 70)]
    assert decoder.status.frames_decoded == 1 + (70 - 11)
    assert decoder.status.decode == "full"
    assert decoder.status.keyframe_interval == pytest.approx(3.0)
    note = decoder.status.decode_note or ""
    assert "keyframe every 3 s" in note and "1 counts/s" in note, note
    # A faster GOP is no longer needed at a slower rate: 1 count every 4 s fits.
    slow, _ = decode_all(clip, 0.25)
    assert slow.status.decode == "keyframes" and slow.status.frames_decoded == 3


def test_a_gop_that_grows_mid_stream_switches_to_full_at_the_next_keyframe(
        tmp_path: Path) -> None:
    # Keyframes every second for 3 s, then 3 s without one (frames 30 -> 60).
    clip = write_forced_keys(tmp_path / "grows.mp4", {0, 10, 20, 30, 60}, 70)
    decoder, frames = decode_all(clip, 1.0)
    # Keyframes-only; at frame 41 the next keyframe is overdue (> 1.05 s), so everything is
    # decoded again, but nothing is published before keyframe 60: P-frames whose
    # references were skipped would be smeared pictures.
    assert indices(frames) == [0, 10, 20, 30, *range(60, 70)]
    assert decoder.status.frames_decoded == 4 + (70 - 41)
    assert decoder.status.decode == "full" and "too sparse" in (decoder.status.decode_note or "")


def test_conversion_scales_to_the_model_size_in_one_step(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "big.mp4", 640, 360, fps=10, seconds=1, gop=10)
    decoder, frames = decode_all(clip, None, max_side=320)
    convert, size, full_size = decoder.picture(frames[0])
    assert size == (640, 360)  # the camera's size, for zones in camera pixels
    assert full_size is not None and full_size().shape == (360, 640, 3)  # for calibration
    rgb = convert()
    assert rgb.shape == (*input_size(640, 360, 320), 3) == (192, 320, 3)
    # Same picture as full-size RGB then resized: the squares of the test pattern agree.
    full = frames[0].to_ndarray(format="rgb24")
    import cv2

    reference = cv2.resize(full, (320, 192), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb.astype(int) - reference.astype(int)).mean() < 3
    small, _ = decode_all(clip, None, max_side=1024)
    unscaled = small.picture(frames[0])
    assert unscaled.source_size is None and unscaled.full is None  # untouched


# -- live sources ------------------------------------------------------------------------------


@pytest.mark.rtsp
@pytest.mark.slow
async def test_rtsp_camera_keyframes_only_then_relearns_after_a_reconnect(
        rtsp_server, h264_clip) -> None:
    server = rtsp_server(h264_clip)  # 10 fps, keyframe every second
    source = RtspSource("cam", server.url, target_fps=1.0, backoff_initial=0.2, backoff_max=0.5)
    await source.start()
    try:
        await wait_until(lambda: source.status.decode == "keyframes", 20, "keyframes-only")
        st = source.status
        decoded, published, t0 = st.frames_decoded, st.frames_in, time.monotonic()
        await wait_until(lambda: source.status.frames_in >= published + 3, 10, "3 keyframes")
        elapsed = time.monotonic() - t0
        # One decoded (and published) frame per keyframe: ~1 a second, not 10.
        assert st.frames_decoded - decoded == st.frames_in - published
        assert st.frames_decoded - decoded <= elapsed + 2
        assert st.keyframe_interval == pytest.approx(1.0, abs=0.1)

        # The camera comes back with a keyframe every 3 s: the reconnect relearns it.
        server.kill()
        server.gop = 30
        server.start()
        await wait_until(lambda: source.status.decode == "full" and source.status.reconnects,
                         30, "the full decode after the reconnect")
        assert "too sparse" in (source.status.decode_note or "")
        # Overdue after 1.05 s already; the interval itself is known at the next keyframe.
        await wait_until(lambda: (source.status.keyframe_interval or 0) > 2.5, 10,
                         "the 3 s keyframe interval")
        assert source.status.keyframe_interval == pytest.approx(3.0, abs=0.3)
        assert source.status.decode == "full"
        assert source.status.state == StreamState.RUNNING
    finally:
        await source.stop()


@pytest.mark.rtsp
@pytest.mark.slow
@pytest.mark.parametrize(("target", "mode"), [(1.0, "keyframes"), (None, "full")])
async def test_a_hung_camera_is_noticed_within_stall_timeout_plus_1s(
        rtsp_server, h264_clip, target: float | None, mode: str) -> None:
    """Defaults (stall_timeout = read_timeout = 5 s): noticed after 10.1 s before, because
    PyAV's read timeout fired first and FFmpeg's close then hung on the frozen server."""
    server = rtsp_server(h264_clip)
    source = RtspSource("cam", server.url, target_fps=target)
    await source.start()
    try:
        await wait_until(lambda: source.status.decode == mode and source.status.frames_in,
                         20, f"{mode} decoding")
        server.pause()
        detected = await wait_until(lambda: source.status.state != StreamState.RUNNING, 15,
                                    "the stall to be noticed")
        assert "stalled" in (source.status.last_error or "")
        assert 4.0 <= detected <= source.stall_timeout + 1.0, detected
    finally:
        server.resume()
        await source.stop()


@pytest.mark.rtsp
@pytest.mark.slow
async def test_isolated_decoder_decodes_keyframes_and_sends_only_what_the_rate_takes(
        rtsp_server, h264_clip) -> None:
    server = rtsp_server(h264_clip, gop=5)  # two keyframes a second, target one count
    source = IsolatedRtspSource("cam", server.url, target_fps=1.0, max_side=160)
    await source.start()
    try:
        frame = await asyncio.wait_for(source.recv(), 20)
        assert frame.image.shape == (128, 160, 3) and frame.size == (320, 240)
        await wait_until(lambda: source.status.decode == "keyframes", 20, "keyframes-only")
        assert source.status.keyframe_interval == pytest.approx(0.5, abs=0.1)
        received, decoded = source.status.frames_in, source.status.frames_decoded
        # Six keyframes decoded in the child (two a second, the server's clock) ...
        await wait_until(lambda: source.status.frames_decoded - decoded >= 6, 20,
                         "six more keyframes decoded")
        sent = source.status.frames_in - received
        # ... and at most one of each two sent over the pipe (one count a second).
        assert sent <= (source.status.frames_decoded - decoded) / 2 + 1.5, sent
        assert source.status.frames_decoded > source.status.frames_in
        assert source.status.decode_seconds > 0
    finally:
        await source.stop()


def test_zones_stay_in_camera_pixels_when_the_picture_is_scaled() -> None:
    """A 640x360 camera converted at 320x192: zones drawn on the page and in the config are
    camera pixels, so counting and outlines use ``Frame.size``, not the picture's."""
    from crowdcount.model.render import annotate
    from crowdcount.model.types import Frame, Result
    from crowdcount.model.zones import Zone, ZoneCounter

    image = np.zeros((192, 320, 3), np.uint8)
    frame = Frame("cam", 0, 0.0, image, source_size=(640, 360))
    assert frame.size == (640, 360)
    density = np.zeros((24, 40), np.float32)
    density[:, :20] = 1.0  # everyone in the left half
    left = Zone("left", ((0, 0), (320, 0), (320, 360), (0, 360)))  # camera pixels
    counts = ZoneCounter([left]).count(density, frame.size)
    assert counts["left"] == pytest.approx(density.sum())
    drawn = annotate(Result(frame, np.zeros_like(density), 0.0, 0.0, counts), zones=[left])
    outline = np.argwhere(np.abs(drawn.astype(int) - annotate(
        Result(frame, np.zeros_like(density), 0.0, 0.0, counts)).astype(int)).sum(axis=2))
    assert outline[:, 1].max() <= 165  # the zone's right edge at x = 160 of the picture


@pytest.mark.rtsp
@pytest.mark.slow
async def test_a_multi_slice_camera_gives_one_whole_picture_per_frame(
        rtsp_server, h264_clip) -> None:
    """FFmpeg's RTSP demuxer returns the slices of a keyframe as packets of their own;
    decoded one by one they made two half-concealed pictures per keyframe. The Decoder joins
    them first: keyframes-only, one decoded frame per keyframe (one a second here)."""
    server = rtsp_server(h264_clip, slices=2)
    source = RtspSource("cam", server.url, target_fps=1.0)
    await source.start()
    try:
        await wait_until(lambda: source.status.decode == "keyframes", 20, "keyframes-only")
        # the rate between the first and the fifth newly decoded frame: four intervals
        start = source.status.frames_decoded
        await wait_until(lambda: source.status.frames_decoded > start, 10, "a decoded frame")
        first, t0 = source.status.frames_decoded, time.monotonic()
        await wait_until(lambda: source.status.frames_decoded >= first + 4, 15,
                         "four more decoded frames")
        per_s = (source.status.frames_decoded - first) / (time.monotonic() - t0)
        assert 0.5 <= per_s <= 1.3, per_s  # not 2 a second
        frame = await asyncio.wait_for(source.recv(), 5)
        assert frame.image.shape == (240, 320, 3)
        assert frame.image.max() > 200  # the pattern's bright squares, not concealment
    finally:
        await source.stop()
