"""Where people gather: each stream's density maps, accumulated over time on a coarse grid.

A count says how many; the density map also says where. Summing the maps of a day shows
the places a crowd keeps to (a queue, a doorway, a stage front), which no count or zone
chosen in advance can. This sink keeps, per stream and per time bucket (a minute by
default), the mean density on a fixed ``GRID_W`` x ``GRID_H`` grid, and the number of frames
behind it. A range is answered by the frame-weighted mean of its buckets: each cell then
holds the average number of people in it over the range, and the grid sums to the average
count. The grid is fixed whatever the camera's size; the maps are resampled onto it by
area overlap, so no density is lost or counted twice (a model output of 80x60 folds
2x2 cells into one).

Storage is small by design: a bucket is one row of float16 cells, zlib-compressed (at most
2.4 KB for 40x30, much less for an empty scene), so a camera adds at most ~3.5 MB a day,
whatever its frame rate. Rows go to the store (``GatheringStore``; in SQLite a table of the
service's file, written by the store's one writer), handed over by a thread of this module
so the event loop never waits; the bucket still being filled is kept in memory and included
in answers, so "the last hour" includes the last minute. A bucket may reach the store in
parts (a restart within the minute): parts are weighted by their frames like buckets. The
newest frame of each stream is the reference picture the overlay is drawn on; it is also
saved now and then (JPEG), so a removed camera's map still has its picture.

On a cluster the shard that counts a camera is not the process that answers for its map:
there the open bucket is written as it fills (``write_open_every``), as this writer's part
of the bucket, replaced in place each time, so an API process reading the store answers
"the last hour" with the last minute as a single box does (a few seconds behind).
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.floor import Floor
from crowdcount.model.preprocess import shrunk
from crowdcount.model.types import Result

if TYPE_CHECKING:
    from crowdcount.streamer.store import GatheringStore

__all__ = ["GRID_H", "GRID_W", "GatheringMap", "Heatmap", "render_floor_view", "render_overlay",
           "resample_weights"]

log = logging.getLogger(__name__)

GRID_W, GRID_H = 40, 30
#: Longer side of the stored reference picture (and of the overlay drawn on it).
REFERENCE_SIDE = 960

def resample_weights(n_src: int, n_dst: int) -> NDArray[np.float32]:
    """(n_dst, n_src) area weights: the share of source cell j that lies in target cell i.
    Every column sums to 1, so ``W @ x`` keeps the total of ``x`` whether it shrinks or
    grows."""
    edges = np.linspace(0.0, n_src, n_dst + 1)
    src = np.arange(n_src, dtype=np.float64)
    lo = np.maximum(edges[:-1, None], src[None, :])
    hi = np.minimum(edges[1:, None], src[None, :] + 1)
    return np.clip(hi - lo, 0.0, None).astype(np.float32)


def _pack(grid: NDArray[np.float32]) -> bytes:
    return zlib.compress(grid.astype(np.float16).tobytes(), 6)


def _unpack(blob: bytes) -> NDArray[np.float64]:
    return np.frombuffer(zlib.decompress(blob), np.float16).astype(np.float64).reshape(
        GRID_H, GRID_W)


@dataclass(slots=True)
class _Bucket:
    start: float
    frames: int
    total: NDArray[np.float64]  # sum of the frames' grids
    written: float = -math.inf  # frame time it was last written while open


@dataclass(frozen=True, slots=True)
class Heatmap:
    """The answer for one stream and range. ``grid`` is the mean people per cell (rows top
    to bottom), ``None`` when no frame falls in the range."""

    stream: str
    grid: NDArray[np.float64] | None
    frames: int
    buckets: int
    first: float | None  # start of the earliest bucket used
    last: float | None  # start of the latest bucket used

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        grid = None if self.grid is None else np.round(self.grid, digits).tolist()
        return {
            "stream": self.stream,
            "width": GRID_W,
            "height": GRID_H,
            "frames": self.frames,
            "buckets": self.buckets,
            "first": self.first,
            "last": self.last,
            "grid": grid,
            "mean_count": None if self.grid is None else round(float(self.grid.sum()), digits),
            "peak_cell": None if self.grid is None else round(float(self.grid.max()), digits),
        }


class GatheringMap:
    """The sink (``on_result`` on the loop, cheap: two small matrix products) plus the
    query side (``heatmap``, ``reference``: I/O, call from a thread). ``write_open_every``
    (seconds of frame time): write each open bucket that often, for other processes (see
    the module docstring); ``None`` keeps it in memory, and answers include it from there.
    """

    def __init__(
        self,
        store: GatheringStore,
        *,
        bucket_seconds: float = 60.0,
        reference_every: float = 600.0,
        write_open_every: float | None = None,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be > 0")
        self.bucket_seconds = float(bucket_seconds)
        self.reference_every = float(reference_every)
        self.write_open_every = write_open_every
        # This writer's name for its parts of a bucket (replaced as the bucket fills).
        self._part = secrets.token_hex(8) if write_open_every is not None else ""
        self.store = store
        self._lock = threading.Lock()  # guards the open buckets and references
        self._open: dict[str, _Bucket] = {}
        self._latest: dict[str, tuple[float, NDArray[np.uint8]]] = {}
        self._saved_ref: dict[str, float] = {}  # stream -> when its reference was last queued
        self._weights: dict[tuple[int, int], tuple[NDArray[np.float32], NDArray[np.float32]]] = {}
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._closed = False
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="gathering-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ sink (event loop)

    def on_result(self, result: Result) -> None:
        if self._closed:
            return
        sid = result.frame.stream_id
        density = result.density
        shape = density.shape[:2]
        weights = self._weights.get(shape)
        if weights is None:
            weights = self._weights[shape] = (resample_weights(shape[0], GRID_H),
                                              resample_weights(shape[1], GRID_W))
        grid = weights[0] @ density.reshape(shape).astype(np.float32) @ weights[1].T
        t = result.frame.captured_at
        start = math.floor(t / self.bucket_seconds) * self.bucket_seconds
        with self._lock:
            bucket = self._open.get(sid)
            if bucket is not None and bucket.start != start:
                self._write_bucket(sid, self._open.pop(sid))
                bucket = None
            if bucket is None:
                bucket = self._open[sid] = _Bucket(start, 0, np.zeros((GRID_H, GRID_W)))
            bucket.frames += 1
            bucket.total += grid
            self._latest[sid] = (t, result.frame.image)
            if self.write_open_every is not None and t - bucket.written >= self.write_open_every:
                bucket.written = t
                self._write_bucket(sid, bucket)
        if t - self._saved_ref.get(sid, -math.inf) >= self.reference_every:
            self._saved_ref[sid] = t
            self._queue.put(("reference", (sid, t, result.frame.image)))

    def forget(self, stream_id: str) -> None:
        """A stream was removed: write its open bucket and its reference picture now."""
        with self._lock:
            bucket = self._open.pop(stream_id, None)
            latest = self._latest.get(stream_id)
            if bucket is not None:
                self._write_bucket(stream_id, bucket)
        if latest is not None and not self._closed:
            self._queue.put(("reference", (stream_id, *latest)))
        self._saved_ref.pop(stream_id, None)

    def _write_bucket(self, sid: str, bucket: _Bucket) -> None:
        mean = (bucket.total / bucket.frames).astype(np.float32)
        self._queue.put(("bucket", (sid, bucket.start, bucket.frames, mean, self._part)))

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                kind, args = item
                if kind == "bucket":
                    sid, start, frames, mean, part = args
                    self.store.add_bucket(sid, start, frames, _pack(mean), part)
                else:
                    sid, t, image = args
                    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(shrunk(image, REFERENCE_SIDE),
                                                                 cv2.COLOR_RGB2BGR),
                                            [cv2.IMWRITE_JPEG_QUALITY, 85])
                    if ok:
                        self.store.save_reference(sid, t, jpeg.tobytes())
            except Exception:
                self.errors += 1
                log.exception("gathering: write failed")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until everything queued so far is committed (tests, queries)."""
        self._queue.join()

    # ------------------------------------------------------------------ queries (threads)

    def heatmap(self, stream_id: str, since: float | None = None,
                until: float | None = None) -> Heatmap:
        """The mean grid of the buckets starting in ``[since, until)`` (the bucket that
        contains ``since`` is included from its start; buckets are the resolution)."""
        lo = -math.inf if since is None else math.floor(since / self.bucket_seconds) * \
            self.bucket_seconds
        hi = math.inf if until is None else until
        self.flush()
        with self._lock:  # the open bucket, copied, so it is neither lost nor counted twice
            bucket = self._open.get(stream_id)
            live = None if bucket is None or self.write_open_every is not None else (
                bucket.start, bucket.frames, bucket.total.copy())
        rows = self.store.buckets(stream_id, lo, hi)
        total = np.zeros((GRID_H, GRID_W))
        frames, starts = 0, []
        for start, n, blob in rows:
            total += _unpack(blob) * n
            frames += n
            starts.append(start)
        if live is not None and lo <= live[0] < hi:
            total += live[2]
            frames += live[1]
            starts.append(live[0])
        if frames == 0:
            return Heatmap(stream_id, None, 0, 0, None, None)
        return Heatmap(stream_id, total / frames, frames, len(set(starts)), min(starts),
                       max(starts))

    def reference(self, stream_id: str) -> NDArray[np.uint8] | None:
        """The stream's newest frame (RGB), from memory or, for a stream gone, the saved one."""
        with self._lock:
            latest = self._latest.get(stream_id)
        if latest is not None:
            return latest[1]
        jpeg = self.store.reference(stream_id)
        if jpeg is None:
            return None
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def has_data(self, stream_id: str) -> bool:
        with self._lock:
            if stream_id in self._open or stream_id in self._latest:
                return True
        return self.store.has(stream_id)

    def delete_before(self, cutoff: float) -> int:
        """Retention: drop buckets that started before ``cutoff`` (unix seconds)."""
        self.flush()
        return self.store.delete_before(cutoff)

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "open": len(self._open), "errors": self.errors}

    def close(self) -> None:
        """Hand every open bucket and reference to the store, then stop the thread (idempotent;
        before the store is closed)."""
        if self._closed:
            return
        with self._lock:
            for sid, bucket in self._open.items():
                self._write_bucket(sid, bucket)
            for sid, (t, image) in self._latest.items():
                self._queue.put(("reference", (sid, t, image)))
            self._open.clear()
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)


def render_overlay(image: NDArray[np.uint8] | None, heatmap: Heatmap,
                   max_side: int = REFERENCE_SIDE, floor: Floor | None = None) -> NDArray[np.uint8]:
    """The map in the Jet colours over the reference frame (a grey canvas of the grid's
    aspect when there is none). Unlike live heatmaps (one absolute scale), the map is
    relative: its busiest cell is red and cells under 15 % of it stay untinted, because the
    question is where, not how many (the JSON has the numbers). With a ``floor``
    calibration the cells are people per m2 of floor (beyond the floor: untinted)."""
    from crowdcount.model.render import HEAT_CAP, overlay

    base = shrunk(image, max_side) if image is not None else np.full(
        (GRID_H * 16, GRID_W * 16, 3), 96, np.uint8)
    if heatmap.grid is None or heatmap.grid.max() <= 0:
        return base.copy()
    grid = heatmap.grid if floor is None else floor.per_m2(heatmap.grid, floor.frame_size)
    peak = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
    if peak <= 0:
        return base.copy()
    scaled = grid / peak * HEAT_CAP
    return overlay(base, scaled.astype(np.float32), alpha=0.55)


def render_floor_view(floor: Floor, heatmap: Heatmap, frame_size: tuple[int, int],
                      side: int = 640) -> NDArray[np.uint8]:
    """The gathering map warped top-down onto the floor (``Floor.floor_view``): people per
    m2 in the Jet colours (the busiest spot red, under 15 % of it untinted) on dark grey,
    off the calibrated floor light grey, with a grid every metre (every 5 m on a large
    floor)."""
    from crowdcount.model.render import colorize

    if heatmap.grid is None:
        return np.full((side * 3 // 4, side, 3), 96, np.uint8)
    raster, (x0, y0, x1, y1) = floor.floor_view(heatmap.grid, frame_size, 0.05)
    peak = float(np.nanmax(raster)) if np.isfinite(raster).any() else 0.0
    levels = np.zeros(raster.shape, np.float32) if peak <= 0 else np.nan_to_num(
        raster / peak).astype(np.float32)
    scale = side / max(raster.shape)
    size = (max(1, round(raster.shape[1] * scale)), max(1, round(raster.shape[0] * scale)))
    heat = colorize(levels, size, cap=1.0).astype(np.float32)
    weight = np.clip(cv2.resize(levels, size, interpolation=cv2.INTER_LINEAR) / 0.15, 0, 1)
    image = (np.float32(50) * (1 - weight[..., None]) + heat * weight[..., None]).astype(np.uint8)
    off = cv2.resize(np.isnan(raster).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    image[off > 0] = (120, 120, 120)
    px_per_m = size[0] / (x1 - x0)
    step = 1.0 if max(x1 - x0, y1 - y0) <= 30 else 5.0
    for x in np.arange(math.ceil(x0 / step) * step, x1, step):
        u = round((x - x0) * px_per_m)
        cv2.line(image, (u, 0), (u, size[1] - 1), (200, 200, 200), 1)
    for y in np.arange(math.ceil(y0 / step) * step, y1, step):
        v = round((y1 - y) * px_per_m)
        cv2.line(image, (0, v), (size[0] - 1, v), (200, 200, 200), 1)
    return image
