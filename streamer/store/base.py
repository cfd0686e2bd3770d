"""The store's interfaces: count history, stream registry and alert log, one concern each.

Why interfaces: the embedded server keeps everything in one SQLite file
(``streamer.store.sqlite``), and a cluster keeps the same records in a shared database
(several processes writing, any number reading). Code outside this package (the count sink,
the alert integrations, the service, the routes) only speaks these protocols, so a second
implementation plugs in without touching it.

Contract every implementation keeps:

* *Queued writes never block.* ``CountHistory.add`` and ``AlertLog.raised``/``cleared`` are
  called on the event loop at frame rate: they only append to an in-memory queue that one
  writer commits in batches. Counts and alert changes are committed in the order they were
  queued. Everything else does I/O: call it through ``asyncio.to_thread`` from async code.
* *Idempotent counts.* A count row is identified by ``(stream_id, t)``: inserting the same
  key twice keeps the first row, so a writer that retries a batch (or a restarted worker
  that replays one) never duplicates history.
* *Half-open ranges.* ``since`` is inclusive and ``until`` exclusive everywhere, so adjacent
  ranges never overlap and a client can page through history by moving ``since``.
* *History outlives streams.* Removing a stream from the registry keeps its counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

__all__ = [
    "AlertLog",
    "AlertRow",
    "CalibrationStore",
    "CountHistory",
    "CountRow",
    "GatheringStore",
    "MarkedFrame",
    "SavedStream",
    "SettingsStore",
    "Store",
    "StoreStats",
]

#: One raw count row as ``CountHistory.rows`` returns it: ``(t, count, smoothed)``.
CountRow = tuple[float, float, float]


class SavedStream(TypedDict):
    """A stream added through the API, as the registry keeps it (``url`` may hold
    credentials: mask it before showing it)."""

    id: str
    name: str
    url: str
    kind: str
    options: dict[str, Any]
    created_at: float


class AlertRow(TypedDict):
    """One stored alert; ``cleared_at`` is ``None`` while it is open."""

    id: int
    stream: str
    zone: str | None
    rule: str
    raised_at: float
    cleared_at: float | None
    peak: float


class StoreStats(TypedDict):
    """Counters for metrics: rows waiting for the writer, committed, skipped because the
    database already had them (replays), and dropped (the queue hit its bound because the
    database could not keep up, or the final commit at close failed), and the last write
    error. ``streamer.store.writer`` keeps them, alike for every database."""

    pending: int
    written: int
    duplicates: int
    dropped: int
    last_error: str | None


@runtime_checkable
class CountHistory(Protocol):
    """Every stream's counts over time."""

    def add(
        self,
        stream_id: str,
        t: float,
        count: float,
        smoothed: float,
        zones: Mapping[str, float] | None = None,
    ) -> None:
        """Queue one row (``t`` in unix seconds); never blocks. Visible to queries after the
        writer's next commit (``Store.flush`` forces it)."""
        ...

    def counts(
        self,
        stream_id: str,
        since: float | None = None,
        until: float | None = None,
        step: float | None = None,
        limit: int = 10_000,
        *,
        with_zones: bool = False,
    ) -> list[dict[str, Any]]:
        """History in ``[since, until)``, oldest first, at most the newest ``limit`` items.

        Without ``step``: raw rows ``{"t", "count", "smoothed"}`` (plus ``"zones"`` with
        ``with_zones``). With ``step`` seconds: one item per non-empty bucket aligned to
        multiples of ``step`` since the epoch, ``{"t": bucket start, "count": mean,
        "smoothed": mean, "min", "max", "n"}``; with ``with_zones`` also ``"zones"`` (means),
        ``"zones_min"`` and ``"zones_max"`` per zone. A whole-second ``step`` is answered
        from per-second or per-minute rollups kept as counts arrive (so it stays fast, and
        works after the raw rows were pruned); its range is taken at that unit.
        """
        ...

    def rows(
        self,
        stream_id: str,
        since: float | None = None,
        until: float | None = None,
        *,
        after: float | None = None,
        limit: int = 5000,
    ) -> list[CountRow]:
        """Up to ``limit`` raw rows in ``[since, until)`` with ``t > after``, oldest first.

        The export's paging primitive: each call is an independent, bounded query, so a
        long export holds no cursor or transaction open between chunks, and passing the
        last ``t`` as ``after`` continues exactly because ``(stream_id, t)`` is unique.
        """
        ...

    def delete(self, stream_id: str | None = None, before: float | None = None) -> int:
        """Purge rows and their rollups (one stream or all, optionally only those older
        than ``before``); returns how many raw rows."""
        ...

    def prune_raw(self, before: float) -> int:
        """Delete raw rows older than ``before`` and keep their per-second and per-minute
        rollups (stepped history still answers); how many raw rows."""
        ...


@runtime_checkable
class StreamRegistry(Protocol):
    """The streams added through the API, so they are resumed after a restart."""

    def save(
        self,
        stream_id: str,
        name: str,
        url: str,
        kind: str,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert or update; durable when it returns. An update keeps ``created_at`` (the
        list order is the order streams were first added)."""
        ...

    def delete(self, stream_id: str) -> bool:
        """Forget a stream (its history is kept); whether it existed."""
        ...

    def get(self, stream_id: str) -> SavedStream | None: ...

    def all(self) -> list[SavedStream]:
        """Every saved stream, oldest first."""
        ...


@runtime_checkable
class AlertLog(Protocol):
    """Raised and cleared threshold alerts. An alert is identified by ``(stream, rule,
    raised_at)``, which the alert engine keeps stable from raise to clear; a repeated raise
    is one alert."""

    def raised(
        self, stream: str, zone: str | None, rule: str, raised_at: float, peak: float
    ) -> None:
        """Queue an alert raised at ``raised_at`` (open until ``cleared``); never blocks,
        and wakes the writer at once (alerts are rare and someone may be looking)."""
        ...

    def cleared(
        self, stream: str, rule: str, raised_at: float, cleared_at: float, peak: float
    ) -> None:
        """Queue the end of an alert; the stored ``peak`` only grows. Never blocks."""
        ...

    def query(
        self,
        stream: str | None = None,
        since: float | None = None,
        until: float | None = None,
        active: bool | None = None,
        limit: int = 1000,
    ) -> list[AlertRow]:
        """Alerts overlapping ``[since, until)`` (an open one overlaps everything after its
        raise), newest first; ``active`` True/False keeps only open/closed ones."""
        ...

    def close_open(self, at: float) -> int:
        """Mark every open alert cleared at ``at``; how many. Called once at startup: the
        process that raised them is gone, and a fresh engine raises again if needed."""
        ...


#: The stream settings key of a stream's floor calibration (``FloorConfig`` as JSON; JSON
#: ``null``: uncalibrated on purpose, over a config file's calibration).
FLOOR_KEY = "floor"


@runtime_checkable
class SettingsStore(Protocol):
    """Alert rules and zones made through the API, kept so they come back after a restart.
    Writes are durable when they return; zones are keyed by stream id, for every kind of
    stream (``[]``: none, on purpose)."""

    def rules(self) -> list[dict[str, Any]]:
        """``{"name", "stream", "zone", "above", "below", "for_seconds"}``, by name."""
        ...

    def save_rule(self, rule: Mapping[str, Any]) -> None: ...

    def delete_rule(self, name: str) -> bool: ...

    def zones(self) -> dict[str, list[dict[str, Any]]]: ...

    def save_zones(self, stream_id: str, zones: Sequence[Mapping[str, Any]]) -> None: ...

    def delete_zones(self, stream_id: str) -> None: ...

    def stream_settings(self, key: str) -> dict[str, Any]:
        """Every stream's JSON value under ``key`` (``{stream_id: value}``).

        One table for per-stream state that is not a zone or a rule (a camera's calibration,
        its floor plane, ...), so each new kind of state needs no new table, and a database
        that implements these three methods carries all of them."""
        ...

    def save_stream_setting(self, stream_id: str, key: str, value: Any) -> None:
        """Replace the stream's JSON value under ``key``; durable when it returns."""
        ...

    def claim_stream_setting(self, stream_id: str, key: str, value: Any,
                             free: Callable[[Any | None], bool]) -> bool:
        """Save ``value`` only if ``free(current value, None when unset)`` holds, and say
        whether it did. The check and the write are one step for every process sharing the
        store (two API processes starting the same one-per-stream job: one of them wins).
        ``free`` runs on the store's one writer thread, inside the transaction: keep it
        pure and quick, as every write of the process waits behind it."""
        ...

    def delete_stream_setting(self, stream_id: str, key: str | None = None) -> None:
        """Drop one key of the stream's state, or all of it (``key=None``)."""
        ...


@runtime_checkable
class GatheringStore(Protocol):
    """Per-stream time buckets of an encoded density grid (``streamer.gathering`` encodes
    and averages them; a bucket may be written in several parts, e.g. across a restart) and
    one reference picture (JPEG) per stream."""

    def add_bucket(self, stream_id: str, start: float, frames: int, grid: bytes,
                   part: str = "") -> None:
        """Add a part of a bucket. With ``part`` (a writer's own name) the part replaces
        that writer's earlier one of the same bucket: a bucket still being filled can be
        written as it grows, for other processes to read (a cluster's API processes)."""
        ...

    def buckets(self, stream_id: str, since: float, until: float) -> list[tuple[float, int, bytes]]:
        """``(start, frames, grid)`` of the parts starting in ``[since, until)``."""
        ...

    def has(self, stream_id: str) -> bool: ...

    def save_reference(self, stream_id: str, t: float, jpeg: bytes) -> None: ...

    def reference(self, stream_id: str) -> bytes | None: ...

    def delete_before(self, cutoff: float) -> int: ...

    def stats(self) -> dict[str, int]: ...


class MarkedFrame(TypedDict):
    """A frame captured for calibration, without its pictures (``CalibrationStore.image``
    and ``density`` have them). ``marks`` is ``None`` until marked, then
    ``{"points": [[x, y], ...]}`` (pixels of the frame) or ``{"count": n}``."""

    id: str
    stream_id: str
    captured_at: float
    width: int
    height: int
    model_count: float
    marks: dict[str, Any] | None


@runtime_checkable
class CalibrationStore(Protocol):
    """What calibration keeps per stream: the frames a user captured and marked (a JPEG at
    the camera's size, the model's density at capture, the count it gave, the marks) and
    the stream's calibrated model (ONNX bytes), so that whichever process runs the camera,
    on whichever machine, counts it with that model. Writes are durable when they return."""

    def add_frame(self, frame: MarkedFrame, jpeg: bytes, density: bytes, limit: int) -> bool:
        """Save a captured frame unless the stream already has ``limit``; whether saved."""
        ...

    def frames(self, stream_id: str) -> list[MarkedFrame]:
        """The stream's frames, oldest first."""
        ...

    def frame(self, stream_id: str, frame_id: str) -> MarkedFrame | None: ...

    def image(self, stream_id: str, frame_id: str) -> bytes | None:
        """The frame's JPEG."""
        ...

    def density(self, stream_id: str, frame_id: str) -> bytes | None:
        """The model's density at capture, as ``streamer.calibration`` encoded it."""
        ...

    def set_marks(self, stream_id: str, frame_id: str, marks: Mapping[str, Any] | None
                  ) -> bool:
        """Replace a frame's marks; whether the frame exists."""
        ...

    def delete_frame(self, stream_id: str, frame_id: str) -> bool: ...

    def save_model(self, stream_id: str, model_id: str, onnx: bytes) -> None:
        """The stream's calibrated model (one per stream: it replaces the previous)."""
        ...

    def model(self, stream_id: str, model_id: str) -> bytes | None:
        """The stream's model if it is ``model_id`` (an older id: ``None``)."""
        ...

    def forget(self, stream_id: str, *, frames: bool = True) -> None:
        """Drop the stream's model, and with ``frames`` its frames too."""
        ...


@runtime_checkable
class Store(Protocol):
    """One backend's records plus the writer's lifecycle (``streamer.store.writer``): every
    database has all of them, so the service never asks which it has."""

    @property
    def history(self) -> CountHistory: ...

    @property
    def streams(self) -> StreamRegistry: ...

    @property
    def alerts(self) -> AlertLog: ...

    @property
    def settings(self) -> SettingsStore: ...

    @property
    def gathering(self) -> GatheringStore: ...

    @property
    def calibration(self) -> CalibrationStore: ...

    def flush(self) -> int:
        """Commit everything queued so far; the number of count rows and alert changes
        committed. Blocks; raises the backend's error if the commit fails (the queue is
        kept for a retry)."""
        ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None:
        """Commit what is queued and release every connection; idempotent. Raises the final
        commit's error (those rows are lost, and counted as dropped)."""
        ...
