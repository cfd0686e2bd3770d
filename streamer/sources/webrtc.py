"""A browser's camera, received over WebRTC, as a Source.

aiortc decodes on its own thread and queues every decoded frame on the remote track with no
bound, so this source must drain the track continuously: a reader task takes each frame as it
comes and replaces the pending one (the base class counts the drops). Frames are published
unconverted (``rgb_later``): the RGB conversion runs on the inference thread, for the frames
the model takes, and never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from crowdcount.streamer.sources.base import Source, rgb_later
from crowdcount.streamer.status import StreamState

log = logging.getLogger(__name__)

_live_sources: weakref.WeakSet[WebRtcSource] = weakref.WeakSet()


def live_source_count() -> int:
    """WebRtcSources whose reader task is still running, process-wide (for leak tests)."""
    return sum(1 for s in list(_live_sources) if s.running)


class WebRtcSource(Source):
    """Frames of one remote aiortc video track.

    ``on_size`` is called with (w, h) on the first frame and whenever the browser changes
    resolution (e.g. Chrome degrading to 480x360 under load), so viewers' placeholders and
    the answer track can match what the browser sends.
    """

    def __init__(
        self,
        stream_id: str,
        track: MediaStreamTrack,
        *,
        on_size: Callable[[tuple[int, int]], None] | None = None,
    ) -> None:
        if track.kind != "video":
            raise ValueError(f"WebRtcSource needs a video track, got {track.kind!r}")
        super().__init__(stream_id)
        self.track = track
        self.frame_size: tuple[int, int] | None = None
        self.last_frame_at: float | None = None  # time.monotonic() of the newest frame
        self._on_size = on_size
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        self._bind_loop()
        self.status.state = StreamState.CONNECTING
        self._task = asyncio.create_task(self._run(), name=f"webrtc-source-{self.stream_id}")
        _live_sources.add(self)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    frame = await self.track.recv()
                except MediaStreamError:
                    self._finish(StreamState.ENDED)
                    return
                if not isinstance(frame, av.VideoFrame):
                    continue
                size = (frame.width, frame.height)
                self.last_frame_at = time.monotonic()
                if size != self.frame_size:
                    self.frame_size = size
                    if self._on_size is not None:
                        try:
                            self._on_size(size)
                        except Exception:
                            log.exception("on_size callback of %s failed", self.stream_id)
                if self.status.state is not StreamState.RUNNING:
                    self.status.state = StreamState.RUNNING
                self._publish(rgb_later(frame), time.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a decoder surprise must end the stream, not hang it
            log.exception("WebRTC source %s failed", self.stream_id)
            self._finish(StreamState.FAILED, repr(exc))

    async def stop(self) -> None:
        """Cancel the reader and stop the remote track; idempotent."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.track.stop()
        if not self._ended:
            self._finish(StreamState.STOPPED)
        _live_sources.discard(self)
