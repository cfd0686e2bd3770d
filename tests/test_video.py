"""Counting recorded video (``model.video``) on generated H.264 clips whose frames are flat
grey levels, so the brightness model's count of each frame names the frame it came from."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

import crowdcount.model.video as video
from crowdcount.model.runtime import Runtime
from crowdcount.model.video import VideoWriter, count_video, decode_video, probe_video
from tests.fixtures.media import level, write_levels_clip

CELLS = (256 // 8) * (320 // 8)  # brightness model cells of a 320x256 frame


def expected(index: int) -> float:
    return level(index) / 255 * CELLS


@pytest.fixture(scope="module")
def levels_clip(tmp_path_factory) -> Path:
    """50 frames, 10 fps, 320x256."""
    return write_levels_clip(tmp_path_factory.mktemp("video") / "levels.mp4")


def test_every_frame_in_order_with_its_time_and_count(runtime, levels_clip):
    results = list(count_video(runtime, levels_clip, batch=3))  # 50 is not a multiple of 3
    assert [f.index for f, _ in results] == list(range(50))
    assert [f.t for f, _ in results] == pytest.approx([i / 10 for i in range(50)])
    counts = [float(d.sum()) for _, d in results]
    # Within half a level step of its own frame's level: no frame is swapped or repeated.
    assert counts == pytest.approx([expected(i) for i in range(50)], abs=2 / 255 * CELLS)


def test_every_picks_one_frame_per_interval(runtime, levels_clip):
    results = list(count_video(runtime, levels_clip, batch=4, every=0.5))
    assert [f.index for f, _ in results] == list(range(0, 50, 5))
    assert [f.t for f, _ in results] == pytest.approx([i * 0.5 for i in range(10)])
    counts = [float(d.sum()) for _, d in results]
    assert counts == pytest.approx([expected(i) for i in range(0, 50, 5)], abs=2 / 255 * CELLS)


def test_probe_reports_size_rate_and_length(levels_clip):
    info = probe_video(levels_clip)
    assert (info.width, info.height, info.rate, info.frames) == (320, 256, 10, 50)
    assert info.expected() == 50 and info.expected(every=1.0) == 5


class _SlowRuntime:
    """Holds its first batch until the decoder has run ahead of the model, and records how
    far ahead the decoder is at every call (it must stay within the bounded queue)."""

    def __init__(self, runtime: Runtime, decoded: list[int], batch: int) -> None:
        self.runtime, self.decoded, self.batch = runtime, decoded, batch
        self.consumed = 0
        self.ahead: list[int] = []

    def predict(self, images):
        if self.consumed == 0:
            gate = threading.Event()
            target = 2 * self.batch  # frames beyond this batch, decoded while it waits
            for _ in range(500):
                if len(self.decoded) >= self.batch + target:
                    gate.set()
                    break
                gate.wait(0.01)
            assert gate.is_set(), f"decoder did not run ahead: {len(self.decoded)} frames"
        self.consumed += len(images)
        self.ahead.append(len(self.decoded) - self.consumed)
        return self.runtime.predict(images)


def test_decoding_overlaps_inference_in_a_bounded_queue(runtime, levels_clip, monkeypatch):
    decoded: list[int] = []
    original = video.decode_video

    def counting_decode(path, every=None):
        for frame in original(path, every):
            decoded.append(frame.index)
            yield frame

    monkeypatch.setattr(video, "decode_video", counting_decode)
    slow = _SlowRuntime(runtime, decoded, batch=2)
    results = list(count_video(slow, levels_clip, batch=2))  # type: ignore[arg-type]
    assert len(results) == 50
    # Never more decoded than the queue holds plus the one frame waiting to be put.
    assert max(slow.ahead) <= video.QUEUE_BATCHES * 2 + 1
    assert max(slow.ahead) >= 4


def test_closing_early_stops_the_decoder(runtime, levels_clip):
    results = count_video(runtime, levels_clip, batch=2)
    next(results)
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode ")]


def test_not_a_video_is_one_line(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"x\.mp4: not a readable video") as err:
        probe_video(path)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(decode_video(tmp_path / "missing.mp4"))


def test_writer_keeps_timestamps_and_pictures(tmp_path):
    out = tmp_path / "o.mp4"
    times = [0.0, 0.5, 1.0, 2.0]
    with VideoWriter(out, 161, 121) as writer:  # odd sides are cropped to even ones
        for i, t in enumerate(times):
            writer.write(np.full((121, 161, 3), 40 * (i + 1), np.uint8), t)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    assert [t for t, _ in frames] == pytest.approx(times)
    assert frames[0][1].shape == (120, 160, 3)
    assert [float(im.mean()) for _, im in frames] == pytest.approx([40, 80, 120, 160], abs=2)
