"""The one interface every source speaks.

A source decodes on a thread of its own (or, for WebRTC, inside aiortc) and keeps only the
newest frame: ``recv()`` returns the newest frame not returned before and waits when there is
none. A consumer slower than the source therefore drops frames instead of building delay;
each dropped frame is counted in ``status.source_dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np

from crowdcount.model.preprocess import input_size
from crowdcount.model.types import RGB, Frame
from crowdcount.streamer.status import RateMeter, StreamState, StreamStatus

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)


def rgb_later(frame: av.VideoFrame, max_side: int | None = None) -> Callable[[], RGB]:
    """A decoded frame's RGB conversion, to run only if the model takes the frame (see
    ``Frame.pixels``). With ``max_side`` a bigger picture is scaled in the same swscale
    pass to the size the model will run it at (``input_size``), so no full-size RGB copy
    is made and the runtime's resize is a no-op. The decoder's picture is
    reference-counted, so it stays valid after the decoder moves on or closes."""
    width, height = frame.width, frame.height
    if max_side is not None and max(width, height) > max_side:
        height, width = input_size(width, height, max_side)
    return cast(Callable[[], RGB], functools.partial(_rgb, frame, width, height))


def _rgb(frame: av.VideoFrame, width: int, height: int) -> RGB:
    # AREA, like the runtime's own downscaling (cv2.INTER_AREA), so counts do not depend
    # on which of the two resized the picture. One swscale thread: by default each
    # conversion context starts a pool of its own (measured: 2 more threads per camera).
    return cast(RGB, frame.reformat(width, height, format="rgb24", interpolation="AREA",
                                    threads=1).to_ndarray())


class SourceEnded(Exception):
    """The source has no more frames (a file played to its end, a peer hung up)."""


class Source(ABC):
    """Base class: subclasses implement ``start``/``stop`` and call ``_publish`` from any
    thread with each decoded frame."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.status = StreamStatus()
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._ended = False
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._fps_in = RateMeter()

    @abstractmethod
    async def start(self) -> None:
        """Begin producing frames; must return quickly (decoding runs elsewhere)."""

    @abstractmethod
    async def stop(self) -> None:
        """Release every thread, decoder and socket; idempotent."""

    def _bind_loop(self) -> None:
        """Call from ``start`` on the event loop so other threads can wake ``recv``."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()

    def _publish(self, image: RGB | Callable[[], RGB], captured_at: float | None = None,
                 source_size: tuple[int, int] | None = None,
                 full: Callable[[], RGB] | None = None) -> None:
        """Thread-safe: replace the pending frame by a newer one (counting the drop).

        ``image`` is an RGB array or, from decoders, ``rgb_later(frame)``, so that frames
        dropped on the way to the model are never converted; ``source_size`` is the
        camera's (width, height) when that conversion scales the picture down, and
        ``full`` then makes the picture at that size (``Frame.full``)."""
        pixels = image if callable(image) else np.asarray(image)
        frame = Frame(self.stream_id, self._seq, captured_at or time.time(), pixels,
                      source_size, full)
        self._seq += 1
        with self._lock:
            if self._latest is not None:
                self.status.source_dropped += 1
            self._latest = frame
        self.status.frames_in += 1
        self.status.fps_in = self._fps_in.tick()
        self._wake()

    def _finish(self, state: StreamState = StreamState.ENDED, error: str | None = None) -> None:
        """Thread-safe: no more frames will come; ``recv`` raises ``SourceEnded``."""
        self._ended = True
        self.status.state = state
        if error is not None:
            self.status.last_error = error
        self._wake()

    def _wake(self) -> None:
        loop, ready = self._loop, self._ready
        if loop is None or ready is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed between check and call
            loop.call_soon_threadsafe(ready.set)

    async def recv(self) -> Frame:
        """The newest frame not returned before."""
        if self._ready is None:
            raise RuntimeError("source not started")
        while True:
            with self._lock:
                frame, self._latest = self._latest, None
                if frame is None:
                    self._ready.clear()
            if frame is not None:
                return frame
            if self._ended:
                raise SourceEnded(self.stream_id)
            await self._ready.wait()


class ThreadedSource(Source):
    """A source whose frames come from threads of its own (decoders, generators).

    Subclasses implement ``_run`` (and may list more thread bodies in ``_workers``); they
    watch ``self._stop`` and call ``_publish``/``_finish``. ``stop()`` waits by polling, not
    ``join()``, so a thread stuck in a native call never blocks the event loop, and gives up
    after ``_stop_timeout()`` seconds with a warning.
    """

    kind = "source"
    first_state = StreamState.CONNECTING

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @abstractmethod
    def _run(self) -> None:
        """The main thread body: produce frames until ``self._stop`` is set."""

    def _workers(self) -> dict[str, Callable[[], None]]:
        """Thread name suffix -> body; one decode thread unless a subclass adds more."""
        return {"": self._run}

    def _interrupt(self) -> None:
        """Unblock threads waiting in native calls when stopping (default: nothing)."""

    def _stop_timeout(self) -> float:
        return 5.0

    async def start(self) -> None:
        """Start the threads; returns at once."""
        if self._threads:
            return
        self._bind_loop()
        self.status.state = self.first_state
        self._threads = [
            threading.Thread(target=body, name=f"{self.kind}{suffix}-{self.stream_id}",
                             daemon=True)
            for suffix, body in self._workers().items()
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Stop the threads (bounded wait) and end in STOPPED unless already ended."""
        self._stop.set()
        self._interrupt()
        deadline = time.monotonic() + self._stop_timeout()
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("source %s: threads still running after stop: %s", self.stream_id, alive)
        if not self._ended:
            self._finish(StreamState.STOPPED)
