"""The stores' one write-behind writer: a thread, a bounded queue, back-off, flush and close.

Why write-behind: counts and alert changes arrive on the event loop at frame rate and a
commit costs milliseconds (a local disk) to tens of milliseconds (a database on another
machine), so ``add_row``/``add_op`` only append to a locked list and one thread commits
everything pending in one transaction every ``flush_interval`` seconds, or as soon as
``batch_rows`` rows wait. Durable writes (saving a stream, a rule, purging history) are
handed to the same thread (``call``) and waited for, after what was queued before them, so
every write of one store happens in one order, whichever database is behind it.

Why one implementation for SQLite and PostgreSQL: the rules below are the store's contract
(``streamer.store.base``), and two copies had drifted (which thread flushed, what ``close``
did with a failed last commit, which counters existed). A database supplies only a
``Batches``: how one batch commits and how one durable write runs in a transaction.

The rules:

* *Bounded.* Beyond ``max_pending`` queued rows the oldest are dropped and counted
  (``dropped``): a disk or network that cannot keep up must not take the service down.
  Alert changes are few and never dropped.
* *Order kept.* A failed commit puts its rows and changes back in front of the queue.
* *Back-off.* After a failed commit the writer waits ``flush_interval`` before retrying on
  its own (a full queue does not make it spin); a ``call``, ``flush`` or ``close`` is
  served at once and gets the commit's error.
* *Counted.* ``written`` rows new to the database, ``duplicates`` rows it already had (a
  replayed batch, a shard restarted after a failover), ``dropped`` rows lost to the bound
  or to a failed final commit; ``last_error`` the newest failure.
* *Close.* ``close`` commits what is queued, then stops the thread. If that last commit
  fails, its rows are lost: they are counted as dropped, logged
  (``event=store_close_commit_failed``) and the error is raised to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from crowdcount.streamer.store.base import StoreStats

__all__ = ["Batches", "Op", "Row", "Writer", "check_writer_options", "drop_oldest"]

log = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)

#: One queued count row: ``(stream_id, t, count, smoothed, zones)`` (zones as the database
#: stores them, or ``None``).
Row = tuple[str, float, float, float, Any]
#: One queued alert change: ``(sql, args)``, applied after the rows of the same commit.
Op = tuple[str, Mapping[str, Any]]


class Batches(Protocol[C_co]):
    """What a database supplies to the writer; both methods run on the writer thread only."""

    def commit(self, rows: Sequence[Row], ops: Sequence[Op]) -> int:
        """Insert ``rows`` (keeping the first row of each ``(stream_id, t)``) and apply
        ``ops`` in that order, in one transaction that is rolled back whole if anything
        fails; how many of ``rows`` were new."""
        ...

    def transaction(self, fn: Callable[[C_co], T]) -> T:
        """``fn(connection)`` in a transaction of its own; its result once committed."""
        ...


def check_writer_options(flush_interval: float, batch_rows: int, max_pending: int) -> None:
    """The write-behind queue's settings, as both stores' constructors accept them."""
    if flush_interval <= 0:
        raise ValueError("flush_interval must be > 0")
    if batch_rows < 1 or max_pending < batch_rows:
        raise ValueError("need 1 <= batch_rows <= max_pending")


def drop_oldest(queue: list[Any], max_pending: int) -> int:
    """Trim ``queue`` to its newest ``max_pending`` items (the caller holds its lock); how
    many were dropped."""
    excess = len(queue) - max_pending
    if excess <= 0:
        return 0
    del queue[:excess]
    return excess


# A durable write run on the writer thread (None: just commit what is queued).
_Request = tuple[Callable[[Any], Any] | None, "Future[Any]"]


class Writer(Generic[C]):
    """The one thread that writes a store (see the module docstring for its rules)."""

    def __init__(
        self, batches: Batches[C], *, flush_interval: float, batch_rows: int,
        max_pending: int, name: str = "store-writer",
    ) -> None:
        check_writer_options(flush_interval, batch_rows, max_pending)
        self._batches = batches
        self.flush_interval = float(flush_interval)
        self.batch_rows = int(batch_rows)
        self.max_pending = int(max_pending)
        self._lock = threading.Lock()
        self._rows: list[Row] = []
        self._ops: list[Op] = []
        self._requests: list[_Request] = []
        self._wake = threading.Event()
        self._stopping = False
        self._retry_at = 0.0  # monotonic time before which a failed commit is not retried
        self._final_error: BaseException | None = None
        self.written = 0
        self.duplicates = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producers (any thread) ------------------------------------------------------------

    def add_row(self, row: Row) -> None:
        """Queue one count row; never blocks."""
        with self._lock:
            self._check_open()
            self._rows.append(row)
            n = len(self._rows)
            self.dropped += drop_oldest(self._rows, self.max_pending)
        if n >= self.batch_rows and time.monotonic() >= self._retry_at:
            self._wake.set()

    def add_op(self, sql: str, args: Mapping[str, Any]) -> None:
        """Queue one alert change and wake the writer at once (alerts are rare and someone
        may be looking); never blocks."""
        with self._lock:
            self._check_open()
            self._ops.append((sql, args))
        self._wake.set()

    def call(self, fn: Callable[[C], T]) -> T:
        """Run ``fn(conn)`` in its own transaction on the writer thread, after committing
        everything queued before; blocks until it is committed and returns its result."""
        result: T = self._submit(fn)
        return result

    def flush(self) -> int:
        """Commit everything queued so far; the rows and changes committed. Raises the
        commit's error (the queue is kept for a retry)."""
        committed: int = self._submit(None)
        return committed

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def stats(self) -> StoreStats:
        return StoreStats(pending=self.pending(), written=self.written, dropped=self.dropped,
                          duplicates=self.duplicates, last_error=self.last_error)

    def close(self) -> None:
        """Commit what is queued and stop the thread; idempotent. Raises the final commit's
        error, if any (its rows are lost, and counted as dropped)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake.set()
        self._thread.join()
        error, self._final_error = self._final_error, None
        if error is not None:
            with self._lock:
                lost = len(self._rows) + len(self._ops)
                self.dropped += len(self._rows)
                self._rows, self._ops = [], []
            log.error("event=store_close_commit_failed lost=%d error=%r", lost,
                      " ".join(str(error).split()))
            raise error

    def _submit(self, fn: Callable[[Any], Any] | None) -> Any:
        fut: Future[Any] = Future()
        with self._lock:
            self._check_open()
            self._requests.append((fn, fut))
        self._wake.set()
        return fut.result()

    def _check_open(self) -> None:
        if self._stopping:
            raise RuntimeError("store is closed")

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._cycle():
                pass
        finally:
            with self._lock:
                self._stopping = True
                orphans, self._requests = self._requests, []
            for _, fut in orphans:
                fut.set_exception(RuntimeError("store is closed"))

    def _cycle(self) -> bool:
        """One wake-up; returns True when the writer should stop."""
        now = time.monotonic()
        self._wake.wait(self._retry_at - now if now < self._retry_at else self.flush_interval)
        self._wake.clear()
        with self._lock:
            requests, self._requests = self._requests, []
            stopping = self._stopping
        if not requests and not stopping and time.monotonic() < self._retry_at:
            return False  # backing off after a failure; only a request cuts it short
        error: BaseException | None = None
        committed = 0
        try:
            committed = self._commit()
            self._retry_at = 0.0
        except Exception as exc:
            error = exc
            self._retry_at = time.monotonic() + self.flush_interval
            if not requests and not stopping:  # otherwise the caller gets the error
                log.error("event=store_commit_failed pending=%d error=%r", self.pending(),
                          " ".join(str(exc).split()))
        for fn, fut in requests:
            if error is not None:
                fut.set_exception(error)
            elif fn is None:
                fut.set_result(committed)
                committed = 0  # reported once
            else:
                try:
                    fut.set_result(self._batches.transaction(fn))
                except Exception as exc:
                    fut.set_exception(exc)
        if stopping:
            self._final_error = error
        return stopping

    def _commit(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
            ops, self._ops = self._ops, []
        if not rows and not ops:
            return 0
        try:
            inserted = self._batches.commit(rows, ops)
        except BaseException as exc:
            with self._lock:
                # Back in front so the order is kept, then re-apply the bound.
                self._rows[:0] = rows
                self._ops[:0] = ops
                self.dropped += drop_oldest(self._rows, self.max_pending)
            self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise
        self.written += inserted
        self.duplicates += len(rows) - inserted
        return len(rows) + len(ops)
