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
whatever its frame rate. Rows live in the service's SQLite file (WAL), in a table of their
own, written by a thread of this module; the bucket still being filled is kept in memory
and included in answers, so "the last hour" includes the last minute. The newest frame of
each stream is the reference picture the overlay is drawn on; it is also saved now and
then (JPEG), so a removed camera's map still has its picture.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.types import Result

__all__ = ["GRID_H", "GRID_W", "GatheringMap", "Heatmap", "render_overlay", "resample_weights"]

log = logging.getLogger(__name__)

GRID_W, GRID_H = 40, 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gathering (
    stream_id TEXT NOT NULL,
    start REAL NOT NULL,
    frames INTEGER NOT NULL,
    grid BLOB NOT NULL,
    PRIMARY KEY (stream_id, start)
);
CREATE TABLE IF NOT EXISTS gathering_reference (
    stream_id TEXT PRIMARY KEY,
    t REAL NOT NULL,
    jpeg BLOB NOT NULL
);
"""


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
    query side (``heatmap``, ``reference``: I/O, call from a thread)."""

    def __init__(
        self,
        path: str | Path,
        *,
        bucket_seconds: float = 60.0,
        reference_every: float = 600.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be > 0")
        self.bucket_seconds = float(bucket_seconds)
        self.reference_every = float(reference_every)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_SCHEMA)
        self._db_lock = threading.Lock()
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
        self._queue.put(("bucket", (sid, bucket.start, bucket.frames, mean)))

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                kind, args = item
                with self._db_lock:
                    if kind == "bucket":
                        self._store_bucket(*args)
                    else:
                        self._store_reference(*args)
            except Exception:
                self.errors += 1
                log.exception("gathering: write failed")
            finally:
                self._queue.task_done()

    def _store_bucket(self, sid: str, start: float, frames: int,
                      mean: NDArray[np.float32]) -> None:
        """Insert, or merge with a row of the same bucket (a restart within the minute)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT frames, grid FROM gathering WHERE stream_id = ? AND "
                               "start = ?", (sid, start)).fetchone()
            if row is not None:
                old_frames, blob = row
                mean = ((_unpack(blob) * old_frames + mean * frames)
                        / (old_frames + frames)).astype(np.float32)
                frames += old_frames
            conn.execute("INSERT OR REPLACE INTO gathering (stream_id, start, frames, grid) "
                         "VALUES (?, ?, ?, ?)", (sid, start, frames, _pack(mean)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _store_reference(self, sid: str, t: float, image: NDArray[np.uint8]) -> None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(_shrink(image), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            self._conn.execute("INSERT OR REPLACE INTO gathering_reference (stream_id, t, jpeg) "
                               "VALUES (?, ?, ?)", (sid, t, jpeg.tobytes()))

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
            live = None if bucket is None else (bucket.start, bucket.frames, bucket.total.copy())
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT start, frames, grid FROM gathering WHERE stream_id = ? AND start >= ? "
                "AND start < ? ORDER BY start", (stream_id, lo, hi)).fetchall()
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
        with self._db_lock:
            row = self._conn.execute("SELECT jpeg FROM gathering_reference WHERE stream_id = ?",
                                     (stream_id,)).fetchone()
        if row is None:
            return None
        image = cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_COLOR)
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def has_data(self, stream_id: str) -> bool:
        with self._lock:
            if stream_id in self._open or stream_id in self._latest:
                return True
        with self._db_lock:
            row = self._conn.execute("SELECT 1 FROM gathering WHERE stream_id = ? LIMIT 1",
                                     (stream_id,)).fetchone()
        return row is not None

    def delete_before(self, cutoff: float) -> int:
        """Retention: drop buckets that started before ``cutoff`` (unix seconds)."""
        self.flush()
        with self._db_lock:
            cur = self._conn.execute("DELETE FROM gathering WHERE start < ?", (cutoff,))
        return cur.rowcount

    def stats(self) -> dict[str, Any]:
        with self._db_lock:
            rows, size = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(grid)), 0) FROM gathering").fetchone()
        return {"rows": rows, "bytes": size, "open": len(self._open), "errors": self.errors}

    def close(self) -> None:
        """Write every open bucket and reference, then stop the writer (idempotent)."""
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
        with self._db_lock:
            self._conn.close()


def _shrink(image: NDArray[np.uint8], max_side: int = 960) -> NDArray[np.uint8]:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def render_overlay(image: NDArray[np.uint8] | None, heatmap: Heatmap,
                   max_side: int = 960) -> NDArray[np.uint8]:
    """The map in the Jet colours over the reference frame (a grey canvas of the grid's
    aspect when there is none), scaled to the frame's hottest cell."""
    from crowdcount.model.render import overlay

    base = _shrink(image, max_side) if image is not None else np.full(
        (GRID_H * 16, GRID_W * 16, 3), 96, np.uint8)
    if heatmap.grid is None or heatmap.grid.max() <= 0:
        return base.copy()
    return overlay(base, heatmap.grid.astype(np.float32), alpha=0.55)
