"""Annotated video for WebRTC viewers.

A ``ViewerSink`` is the sink of one stream: the registry hands it every ``Result`` and it
keeps only the newest, because a viewer wants the present, not a backlog. Drawing the heatmap
costs ~15 ms per 640x480 frame, so it is done lazily (only while some viewer is watching), at
most once per result however many viewers there are, and on a worker thread so the event loop
that also carries RTP for every peer never stalls.

Each ``AnnotatedTrack`` is one viewer's outgoing track. It is paced by the server at a fixed
rate with timestamps of its own: results arrive at whatever rate inference manages (and
sources' timestamps jump when frames are dropped), while a video encoder and the browser's
jitter buffer want a steady, strictly increasing clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import cast

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from crowdcount.model.floor import Floor
from crowdcount.model.render import annotate
from crowdcount.model.types import Result
from crowdcount.model.zones import Zone

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 20.0

# (pixel format, planes as one ndarray) ready for ``av.VideoFrame.from_ndarray``. Converting
# to yuv420p once per result here, instead of in every viewer's encoder, keeps the per-viewer
# cost to one memcpy.
Picture = tuple[str, NDArray[np.uint8]]

#: stream id -> that stream's zones now (the service passes ``Integrations.zones``); looked
#: up at every render so zones edited while someone watches show up on the next frame.
ZonesLookup = Callable[[str], Sequence[Zone]]
#: stream id -> its floor calibration now, or ``None`` (heatmap per cell, no grid).
FloorLookup = Callable[[str], Floor | None]

_live_tracks: weakref.WeakSet[AnnotatedTrack] = weakref.WeakSet()


def live_track_count() -> int:
    """AnnotatedTracks created and not yet stopped, process-wide: a leak test's gauge."""
    return sum(1 for t in list(_live_tracks) if t.readyState == "live")


def _to_picture(rgb: NDArray[np.uint8]) -> Picture:
    """yuv420p needs even sides; odd-sized frames stay RGB (the encoder converts them)."""
    h, w = rgb.shape[:2]
    if w % 2 or h % 2:
        return "rgb24", np.ascontiguousarray(rgb)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return "yuv420p", cast(NDArray[np.uint8], frame.reformat(format="yuv420p").to_ndarray())


def _placeholder_rgb(size: tuple[int, int], title: str | None) -> NDArray[np.uint8]:
    w, h = size
    image = np.full((h, w, 3), (18, 20, 28), np.uint8)
    scale = max(0.5, h / 480)
    thickness = max(1, round(scale * 2))
    lines = [title, "connecting..."] if title else ["connecting..."]
    y = h // 2 - 20 * scale * (len(lines) - 1)
    for line in lines:
        (tw, th), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        org = (max(0, (w - tw) // 2), int(y + th / 2))
        cv2.putText(image, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 210),
                    thickness, cv2.LINE_AA)
        y += 40 * scale
    return image


class ViewerSink:
    """Sink of one stream for any number of WebRTC viewers.

    ``on_result`` only stores a reference (it runs on the event loop and must never block);
    all drawing happens when a viewer track asks for a frame.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        title: str | None = None,
        fps: float = DEFAULT_FPS,
        size: tuple[int, int] | None = None,
        show_clock: bool = True,
        zones: ZonesLookup | None = None,
        floors: FloorLookup | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.stream_id = stream_id
        self.zones = zones
        self.floors = floors
        self.title = title if title is not None else stream_id
        self.fps = fps
        self.show_clock = show_clock
        self.results_in = 0
        self.renders = 0
        self._size = size
        self._size_known = asyncio.Event()
        if size is not None:
            self._size_known.set()
        self._result: Result | None = None
        self._version = 0
        self._rendered: tuple[int, Picture] | None = None
        #: capture time of the frame behind the newest rendered picture (for latency)
        self.rendered_captured_at: float | None = None
        self._render_task: asyncio.Task[None] | None = None
        self._placeholders: dict[tuple[int, int], Picture] = {}
        self._tracks: set[AnnotatedTrack] = set()
        self._closed = False

    # -- the Sink protocol ------------------------------------------------------------------

    def on_result(self, result: Result) -> None:
        """Keep the newest result; older unrendered ones are simply dropped."""
        self._result = result
        self._version += 1
        self.results_in += 1
        # The picture's size, not the camera's (``Frame.size``): a decoder may have scaled
        # it to the model's size, and that is what viewers are sent.
        image = result.frame.image  # already converted: the model took this frame
        self.set_size((int(image.shape[1]), int(image.shape[0])))

    # -- size --------------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int] | None:
        """(w, h) of the stream once known (from a result or ``set_size``)."""
        return self._size

    def set_size(self, size: tuple[int, int]) -> None:
        """Tell placeholders the stream's size before the first result (e.g. from the
        first decoded camera frame), so a browser does not see the resolution change."""
        self._size = (int(size[0]), int(size[1]))
        self._size_known.set()

    async def wait_size(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the size to become known."""
        if self._size is None and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._size_known.wait(), timeout)

    # -- viewers -----------------------------------------------------------------------------

    def track(self, fps: float | None = None, size_wait: float = 0.0) -> AnnotatedTrack:
        """A new viewer track. ``size_wait``: how long its first frame may wait for the
        stream's size (a publisher's own track should not start at a guessed size)."""
        if self._closed:
            raise RuntimeError(f"viewer sink of {self.stream_id!r} is closed")
        track = AnnotatedTrack(self, fps or self.fps, size_wait=size_wait)
        self._tracks.add(track)
        return track

    @property
    def track_count(self) -> int:
        return len(self._tracks)

    def _discard(self, track: AnnotatedTrack) -> None:
        self._tracks.discard(track)

    def close(self) -> None:
        """End every viewer track (the stream is gone); idempotent."""
        self._closed = True
        for track in list(self._tracks):
            track.stop()
        self._tracks.clear()
        self._result = None
        self._rendered = None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- pictures ----------------------------------------------------------------------------

    def _placeholder(self) -> Picture:
        size = self._size or DEFAULT_SIZE
        picture = self._placeholders.get(size)
        if picture is None:
            picture = _to_picture(_placeholder_rgb(size, self.title))
            self._placeholders = {size: picture}  # one size at a time: no unbounded cache
        return picture

    def _draw(self, result: Result) -> Picture:
        clock = (
            time.strftime("%H:%M:%S", time.localtime(result.frame.captured_at))
            if self.show_clock
            else None
        )
        try:
            zones = self.zones(self.stream_id) if self.zones is not None else None
            floor = self.floors(self.stream_id) if self.floors is not None else None
            rgb = annotate(result, self.title, clock, zones=zones, floor=floor)
        except Exception:  # a bad density map must not kill every viewer's track
            log.exception("annotating %s failed; sending the bare frame", self.stream_id)
            rgb = result.frame.image
        return _to_picture(rgb)

    async def _render(self, result: Result, version: int) -> None:
        try:
            picture = await asyncio.to_thread(self._draw, result)
            self.renders += 1
            if self._rendered is None or version > self._rendered[0]:
                self._rendered = (version, picture)
                self.rendered_captured_at = result.frame.captured_at
        finally:
            self._render_task = None

    async def picture(self) -> Picture:
        """The newest annotated frame (or the placeholder before any result).

        One render runs at a time per stream; a caller waits for at most the one in flight
        plus one for the newest result, so a burst of results cannot starve a viewer."""
        for _ in range(2):
            result, version = self._result, self._version
            if result is None:
                return self._placeholder()
            if self._rendered is not None and self._rendered[0] == version:
                return self._rendered[1]
            task = self._render_task
            if task is None:
                task = self._render_task = asyncio.create_task(self._render(result, version))
            await asyncio.shield(task)
        return self._rendered[1] if self._rendered is not None else self._placeholder()


class ViewerRegistry:
    """Stream id -> ViewerSink, shared by the app, the pipeline and the PeerManager.

    The registry is the pipeline's one viewer sink: it hands each result to its stream's
    ``ViewerSink``, if that stream has one (viewers come and go; the pipeline never needs to
    know)."""

    def __init__(self, fps: float = DEFAULT_FPS, zones: ZonesLookup | None = None,
                 floors: FloorLookup | None = None) -> None:
        self.fps = fps
        self.zones = zones
        self.floors = floors
        self._sinks: dict[str, ViewerSink] = {}

    def sink(self, stream_id: str, title: str | None = None) -> ViewerSink:
        """The stream's sink, created on first use."""
        sink = self._sinks.get(stream_id)
        if sink is None or sink.closed:
            sink = self._sinks[stream_id] = ViewerSink(
                stream_id, title=title, fps=self.fps, zones=self.zones, floors=self.floors
            )
        return sink

    def on_result(self, result: Result) -> None:
        sink = self._sinks.get(result.frame.stream_id)
        if sink is not None and not sink.closed:
            sink.on_result(result)

    def get(self, stream_id: str) -> ViewerSink | None:
        sink = self._sinks.get(stream_id)
        return None if sink is None or sink.closed else sink

    def remove(self, stream_id: str) -> None:
        """Forget the stream and end its viewers' tracks."""
        sink = self._sinks.pop(stream_id, None)
        if sink is not None:
            sink.close()

    def __contains__(self, stream_id: object) -> bool:
        return isinstance(stream_id, str) and self.get(stream_id) is not None

    def __len__(self) -> int:
        return len(self._sinks)

    @property
    def track_count(self) -> int:
        return sum(s.track_count for s in self._sinks.values())


class AnnotatedTrack(MediaStreamTrack):
    """One viewer's outgoing video: the newest annotated frame of its stream, paced here.

    Timestamps are this track's own 90 kHz clock (frame n at n/fps seconds), never the
    source's: they must rise steadily even when the source stalls or results skip frames.
    """

    kind = "video"

    def __init__(self, sink: ViewerSink, fps: float, size_wait: float = 0.0) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.sink = sink
        self.fps = fps
        self.frames_sent = 0
        self._period = 1.0 / fps
        self._size_wait = size_wait
        self._t0: float | None = None
        self._n = 0
        _live_tracks.add(self)

    async def _next_tick(self) -> int:
        """Sleep until this frame's slot and return its pts. A consumer that fell behind
        (slow encoder, CPU spike) skips the missed slots instead of bursting to catch up."""
        now = time.monotonic()
        if self._t0 is None:
            await self.sink.wait_size(self._size_wait)
            self._t0, self._n = time.monotonic(), 0
            return 0
        self._n += 1
        due = self._t0 + self._n * self._period
        if now - due > self._period:
            self._n = max(self._n, int((now - self._t0) / self._period))
            due = self._t0 + self._n * self._period
        if due > now:
            await asyncio.sleep(due - now)
        return round(self._n * self._period * VIDEO_CLOCK_RATE)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._next_tick()
        fmt, data = await self.sink.picture()
        if self.readyState != "live":
            raise MediaStreamError
        frame = av.VideoFrame.from_ndarray(data, format=fmt)
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.sink._discard(self)
