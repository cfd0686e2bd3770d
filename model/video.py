"""Counting recorded footage: a video file as batch work, as fast as the machine allows.

Why not the live file source (``streamer.sources``): it paces frames to real time and lets a
newer frame replace one the model has not seen yet, which is right for a camera and wrong
for a recording, where every chosen frame must be counted and waiting is wasted time. Here
a decode thread fills a bounded queue while the calling thread runs the model on batches
of frames, so decoding overlaps inference (PyAV and ONNX Runtime both release the GIL) and
memory stays bounded however long the clip is.

``t`` is video time in seconds from the first frame (the stream's start time subtracted),
not wall-clock time: it is what a user seeks to in a player.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError
from crowdcount.model.runtime import Runtime
from crowdcount.model.types import RGB

__all__ = ["TimedFrame", "VideoInfo", "VideoWriter", "count_video", "decode_video",
           "probe_video"]

#: Frames allowed to wait between the decoder and the model, per frame of a batch. Enough
#: to keep the model busy across a slow keyframe; bounded so a fast decoder cannot fill RAM.
QUEUE_BATCHES = 3


@dataclass(frozen=True, slots=True)
class TimedFrame:
    """One decoded frame chosen for counting: ``index`` counts every decoded frame from 0
    (so it matches a player's frame number even when ``every`` skips frames)."""

    index: int
    t: float
    image: NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the container says; ``frames`` and ``duration`` may be estimates or unknown."""

    width: int
    height: int
    rate: Fraction | None
    duration: float | None
    frames: int | None

    def expected(self, every: float | None = None) -> int | None:
        """How many frames ``decode_video(every=...)`` will yield, for a progress bar."""
        if every and self.duration:
            last = self.duration - (1 / self.rate if self.rate else 0)  # the last frame's t
            chosen = math.floor(max(0.0, last) / every + 1e-6) + 1
            return min(chosen, self.frames) if self.frames else chosen
        return self.frames


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise UserError(f"{path}: not a readable video ({exc.strerror or exc})") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: no video stream")
    return container


def probe_video(path: Path) -> VideoInfo:
    """Size, rate and length of ``path``'s first video stream; ``ValueError`` (one line)
    when it is not a video PyAV can open."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        frames = stream.frames or None
        if frames is None and duration and rate:
            frames = round(duration * rate)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height,
                         Fraction(rate) if rate else None, duration, frames)


def decode_video(path: Path, every: float | None = None) -> Iterator[TimedFrame]:
    """Every frame of ``path`` as RGB (or the first at or after each multiple of ``every``
    seconds), as fast as it decodes. Frames not chosen are never converted to RGB."""
    if every is not None and not every > 0:
        raise UserError(f"--every must be positive, got {every}")
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame threads: decoding is not our bottleneck
        start = stream.start_time or 0
        base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        next_t = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is not None and base is not None:
                    t = float((frame.pts - start) * base)
                else:
                    t = index / float(rate) if rate else float(index)
                if every is not None:
                    if t + 1e-3 < next_t:
                        continue
                    next_t = (math.floor(t / every + 1e-6) + 1) * every
                yield TimedFrame(index, t, cast(RGB, frame.to_ndarray(format="rgb24")))
        except av.FFmpegError as exc:
            raise UserError(f"{path}: cannot decode ({exc.strerror or exc})") from None


_END = object()


class _Decoder(threading.Thread):
    """Runs ``decode_video`` into a bounded queue; errors travel through the queue too."""

    def __init__(self, path: Path, every: float | None, size: int) -> None:
        super().__init__(name=f"decode {path.name}", daemon=True)
        self.path, self.every = path, every
        self.frames: queue.Queue[object] = queue.Queue(maxsize=size)
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            for frame in decode_video(self.path, self.every):
                if not self._put(frame):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def count_video(
    runtime: Runtime, path: Path, batch: int = 4, every: float | None = None
) -> Iterator[tuple[TimedFrame, NDArray[np.float32]]]:
    """``(frame, density map)`` for every chosen frame of ``path``, in order.

    Frames reach the model ``batch`` at a time (fewer at the end) while the next ones
    decode. Closing the generator early stops the decoder.
    """
    if batch < 1:
        raise UserError(f"batch must be at least 1, got {batch}")
    decoder = _Decoder(path, every, QUEUE_BATCHES * batch)
    decoder.start()
    try:
        done = False
        while not done:
            chunk: list[TimedFrame] = []
            while len(chunk) < batch:
                item = decoder.frames.get()
                if item is _END:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                chunk.append(item)  # type: ignore[arg-type]
            if chunk:
                maps = runtime.predict([f.image for f in chunk])
                yield from zip(chunk, maps, strict=True)
    finally:
        decoder.stop()


class VideoWriter:
    """H.264 (libx264, yuv420p) MP4 of RGB frames at their own timestamps (``t`` seconds),
    so an overlay of every n-th frame keeps the source's timing."""

    def __init__(self, path: Path, width: int, height: int,
                 rate: Fraction | None = None) -> None:
        # yuv420p halves chroma in both directions: libx264 needs even sides.
        self.width, self.height = width - width % 2, height - height % 2
        self.path = path
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream("libx264", rate=rate or 25)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        # Millisecond timestamps in the codec too, or they are rounded to 1/rate.
        self._stream.time_base = self._stream.codec_context.time_base = Fraction(1, 1000)
        self._stream.options = {"preset": "veryfast"}
        self._last_pts = -1

    def write(self, image: NDArray[np.uint8], t: float) -> None:
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24")
        frame.pts = max(round(t * 1000), self._last_pts + 1)  # strictly increasing
        frame.time_base = Fraction(1, 1000)
        self._last_pts = frame.pts
        self._container.mux(self._stream.encode(frame.reformat(format="yuv420p")))

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
