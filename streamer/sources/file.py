"""Local video files, played in real time (demos, tests, replaying recorded footage).

Decoding a file is far faster than real time; pushed unpaced, a file would flood the
newest-frame slot and the model would see an arbitrary sample of it. So frames are released
at their own timestamps (the file's frame rate), and ``loop=True`` keeps that pacing across
restarts, which is where aiortc's ``MediaPlayer(loop=True)`` lost it (docs/runtime-notes.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import av

from crowdcount.streamer.sources.base import ThreadedSource
from crowdcount.streamer.sources.decoding import Decoder
from crowdcount.streamer.status import StreamState
from crowdcount.streamer.urls import mask_url

log = logging.getLogger(__name__)

# If decoding falls this far behind the clock (a slow disk, a loaded CPU), restart the clock
# instead of releasing a burst of stale frames.
MAX_LAG_S = 1.0


def describe(exc: BaseException) -> str:
    """One line for an exception; FFmpeg errors without the file name they carry."""
    if isinstance(exc, av.FFmpegError):
        return f"{type(exc).__name__}: {exc.strerror or 'FFmpeg error'}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class FileSource(ThreadedSource):
    """Frames from a video file, paced at the file's frame rate.

    At the end it restarts (``loop=True``) or finishes in ENDED, after which ``recv()``
    raises ``SourceEnded``. A file that cannot be opened or decoded ends in FAILED with
    ``status.last_error`` saying why. ``target_fps`` and ``max_side`` go to the ``Decoder``
    (keyframes only when they meet the rate, pictures converted at the model's size).
    """

    kind = "file"

    def __init__(self, stream_id: str, path: str | Path, *, loop: bool = False,
                 target_fps: float | None = None, max_side: int | None = None) -> None:
        super().__init__(stream_id)
        self.decoder = Decoder(self.status, target_fps, max_side)
        self.path = str(path)
        self.loop = loop
        self.loops = 0  # completed passes through the file

    def _run(self) -> None:
        name = mask_url(self.path)
        clock_start = time.monotonic()
        offset = 0.0  # media seconds played in earlier passes
        while not self._stop.is_set():
            try:
                played = self._play_once(clock_start, offset)
            except Exception as exc:
                log.error("file %s: %s", name, describe(exc))
                self._finish(StreamState.FAILED, f"file {name}: {describe(exc)}")
                return
            if played is None:  # stopped
                return
            if played <= 0:
                self._finish(StreamState.FAILED, f"file {name}: no decodable video frames")
                return
            self.loops += 1
            if not self.loop:
                self._finish(StreamState.ENDED)
                return
            offset += played

    def _play_once(self, clock_start: float, offset: float) -> float | None:
        """Play the file once; the media seconds it lasted, or None if stopped."""
        with av.open(self.path) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            step = 1.0 / rate if rate > 0 else 0.04
            first: float | None = None
            end = 0.0
            for index, frame in enumerate(self.decoder.frames(container, stream)):
                t = frame.time if frame.time is not None else index * step
                first = t if first is None else first
                media_t = t - first
                end = max(end, media_t + step)
                delay = clock_start + offset + media_t - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        return None
                elif delay < -MAX_LAG_S:
                    clock_start -= delay  # fell behind: re-anchor rather than burst
                if self._stop.is_set():
                    return None
                picture = self.decoder.picture(frame)
                if self.status.state != StreamState.RUNNING:
                    self.status.state = StreamState.RUNNING
                self._publish(picture.pixels, source_size=picture.source_size,
                              full=picture.full)
            return end
