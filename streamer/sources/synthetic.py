"""A test-pattern source, like GStreamer's ``videotestsrc``.

Tests and benchmarks need a source that behaves like a camera (its own thread, real-time
pacing, newest-frame-wins) but whose pictures are known exactly, so counts can be asserted
and no decoder, file or network is involved.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from crowdcount.streamer.sources.base import ThreadedSource
from crowdcount.streamer.status import StreamState

Render = Callable[[int], NDArray[np.uint8]]


class SyntheticSource(ThreadedSource):
    """A bright square moving over black at ``fps``, or whatever ``render(index)`` draws.

    ``brightness`` and ``square`` are plain attributes read on every frame, so a test can
    change the expected count while the stream runs. ``frames`` ends the stream (state
    ``ENDED``) after that many frames, which is how a file source's end is imitated.
    """

    kind = "synthetic"
    first_state = StreamState.RUNNING

    def __init__(
        self,
        stream_id: str,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        brightness: int = 255,
        square: int | None = None,
        render: Render | None = None,
        frames: int | None = None,
    ) -> None:
        super().__init__(stream_id)
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.width, self.height, self.fps = width, height, fps
        self.brightness = brightness
        self.square = square if square is not None else min(width, height) // 4
        self.render = render
        self.frames = frames

    def draw(self, index: int) -> NDArray[np.uint8]:
        """A fresh array per frame: consumers keep references, so frames are never reused."""
        if self.render is not None:
            return self.render(index)
        image = np.zeros((self.height, self.width, 3), np.uint8)
        side = max(0, min(self.square, self.width, self.height))
        span = self.width - side
        x = index * 4 % (2 * span) if span > 0 else 0
        x = 2 * span - x if x > span else x  # bounce between the edges
        y = (self.height - side) // 2
        image[y : y + side, x : x + side] = self.brightness
        return image

    def _run(self) -> None:
        # Pace against an absolute schedule so generation time does not slow the rate;
        # after a stall (a busy machine) restart the schedule rather than burst to catch up.
        period = 1.0 / self.fps
        due = time.monotonic()
        index = 0
        try:
            while not self._stop.is_set():
                if self.frames is not None and index >= self.frames:
                    self._finish(StreamState.ENDED)
                    return
                self._publish(self.draw(index), time.time())
                index += 1
                due += period
                now = time.monotonic()
                if due < now - period:
                    due = now
                self._stop.wait(max(0.0, due - now))
        except Exception as exc:  # a broken render callable must not vanish silently
            self._finish(StreamState.FAILED, f"{type(exc).__name__}: {exc}")
