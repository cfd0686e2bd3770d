"""Durable count history and the persisted stream list, in one SQLite file.

Why SQLite in WAL mode: the service is a single process that must survive being killed (a
crash, ``docker kill``, a power cut of the host) with its history and its configured streams
intact, and readers (API charts, CSV export) must never wait for the writer. WAL gives
concurrent readers with one writer, and with ``synchronous=NORMAL`` a committed transaction
survives the death of the process; only an OS crash or power loss may roll back the last few
transactions, never corrupt the file. That trade is right for counts arriving many times a
second: ``FULL`` would fsync every half second per commit for no gain a viewer would notice.

Why a writer thread: counts are produced on the asyncio loop at frame rate; a commit costs
milliseconds (more on slow disks). ``add`` therefore only appends to a locked list, and a
thread commits everything pending in one transaction every ``flush_interval`` seconds or as
soon as ``batch_rows`` rows are waiting. Rows added but not yet committed are not visible to
queries (at most ``flush_interval`` behind); the live view comes from ``CountFeed`` instead.

Removing a stream keeps its history: counts are the record of what was observed and are
often wanted after a camera is retired (reports, comparisons), and a stream re-added with
the same id continues its series. ``delete_counts`` purges history explicitly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crowdcount.model.types import Result

log = logging.getLogger(__name__)

# Not bumped for the alerts table: it is additive (CREATE TABLE IF NOT EXISTS adds it to
# older files on open, and an older build simply never reads it), and a bump would make
# older builds refuse files they can still use safely.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counts (
    stream_id TEXT NOT NULL,
    t REAL NOT NULL,
    count REAL NOT NULL,
    smoothed REAL NOT NULL,
    zones TEXT
);
CREATE INDEX IF NOT EXISTS counts_stream_t ON counts (stream_id, t);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    zone TEXT,
    rule TEXT NOT NULL,
    raised_at REAL NOT NULL,
    cleared_at REAL,
    peak REAL NOT NULL,
    UNIQUE (stream, rule, raised_at)
);
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised_at);
"""

# One pending row: (stream_id, t, count, smoothed, zones JSON or None).
_Row = tuple[str, float, float, float, str | None]
# One pending alert change: (sql, args), applied in order in the counts' transaction.
_AlertOp = tuple[str, tuple[Any, ...]]

_RAISE_SQL = (
    "INSERT INTO alerts (stream, zone, rule, raised_at, cleared_at, peak) "
    "VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT (stream, rule, raised_at) DO NOTHING"
)
_CLEAR_SQL = (
    "UPDATE alerts SET cleared_at = ?, peak = MAX(peak, ?) "
    "WHERE stream = ? AND rule = ? AND raised_at = ?"
)


class CountStore:
    """SQLite-backed history of counts plus the list of configured streams.

    ``add``/``add_count`` are cheap and safe to call on the event loop (they never touch the
    database). Every other method does I/O and should be called through
    ``asyncio.to_thread`` from async code. All methods are thread-safe.

    ``batch_rows`` wakes the writer early so a burst (many streams, high fps) is written in
    bounded transactions. ``max_pending`` bounds memory when the disk cannot keep up or
    writes fail: beyond it the oldest pending rows are dropped and counted in ``dropped``,
    because an unbounded buffer would eventually take the whole service down.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.5,
        batch_rows: int = 2000,
        max_pending: int = 200_000,
        busy_timeout: float = 5.0,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if batch_rows < 1 or max_pending < batch_rows:
            raise ValueError("need 1 <= batch_rows <= max_pending")
        self.path = Path(path)
        self.flush_interval = float(flush_interval)
        self.batch_rows = int(batch_rows)
        self.max_pending = int(max_pending)
        self._busy_ms = int(busy_timeout * 1000)

        self._pending: list[_Row] = []
        self._pending_alerts: list[_AlertOp] = []
        self._pending_lock = threading.Lock()
        # Serialises commits of pending rows so that a flush() from the caller and the
        # writer thread never interleave (which would reorder rows).
        self._write_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._all_conns: list[sqlite3.Connection] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False

        self.written = 0  # rows committed since open
        self.dropped = 0  # rows discarded because max_pending was exceeded
        self.last_error: str | None = None

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wconn = self._connect()
        self._wconn.execute("PRAGMA journal_mode=WAL")
        mode = self._wconn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: could not enable WAL (journal_mode={mode})")
        self._wconn.executescript(_SCHEMA)
        version = self._wconn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self._wconn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this build "
                f"({SCHEMA_VERSION}); refusing to write to it"
            )

        self._thread = threading.Thread(target=self._run, name="count-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN/COMMIT) so nothing is held
        # open between calls by the sqlite3 module's implicit transactions.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._all_conns.append(conn)
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for one query; a pool because reads come from many threads."""
        if self._closed:
            raise RuntimeError("CountStore is closed")
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
            if conn is None:
                conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._pool_lock:
                self._pool.append(conn)

    # ------------------------------------------------------------------ writes

    def add(self, result: Result, smoothed: float) -> None:
        """Queue one frame's count for the next commit; never blocks on I/O."""
        self.add_count(
            result.frame.stream_id, result.frame.captured_at, result.count, smoothed, result.zones
        )

    def add_count(
        self,
        stream_id: str,
        t: float,
        count: float,
        smoothed: float,
        zones: dict[str, float] | None = None,
    ) -> None:
        """Queue one row (``t`` in unix seconds); the primitive behind ``add``."""
        if self._closed:
            raise RuntimeError("CountStore is closed")
        # float(): the runtime's zone sums are NumPy scalars, which json cannot encode.
        zones_json = (
            json.dumps({k: float(v) for k, v in zones.items()}, separators=(",", ":"))
            if zones
            else None
        )
        row = (stream_id, float(t), float(count), float(smoothed), zones_json)
        with self._pending_lock:
            self._pending.append(row)
            n = len(self._pending)
            if n > self.max_pending:
                excess = n - self.max_pending
                del self._pending[:excess]
                self.dropped += excess
        if n >= self.batch_rows:
            self._wake.set()

    def flush(self) -> int:
        """Commit everything queued so far, in the caller's thread; returns the number of
        count rows and alert changes committed.

        Blocks on disk I/O: call it via ``asyncio.to_thread`` or at shutdown. Raises the
        SQLite error if the commit fails (the rows stay queued for a retry).
        """
        return self._commit_pending()

    def _commit_pending(self) -> int:
        with self._write_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
                alert_ops, self._pending_alerts = self._pending_alerts, []
            if not rows and not alert_ops:
                return 0
            try:
                self._wconn.execute("BEGIN IMMEDIATE")
                self._wconn.executemany(
                    "INSERT INTO counts (stream_id, t, count, smoothed, zones) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                for sql, args in alert_ops:
                    self._wconn.execute(sql, args)
                self._wconn.execute("COMMIT")
            except BaseException as exc:
                if self._wconn.in_transaction:
                    self._wconn.rollback()
                with self._pending_lock:
                    # Put the rows back in front so order is kept, then re-apply the bound.
                    self._pending[:0] = rows
                    self._pending_alerts[:0] = alert_ops
                    excess = len(self._pending) - self.max_pending
                    if excess > 0:
                        del self._pending[:excess]
                        self.dropped += excess
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            self.written += len(rows)
            return len(rows) + len(alert_ops)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._commit_pending()
            except Exception:
                log.exception("count store: commit failed, will retry")
                self._stop.wait(self.flush_interval)

    def close(self) -> None:
        """Stop the writer, commit what is queued and close every connection; idempotent."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self._commit_pending()
        finally:
            self._closed = True
            with self._pool_lock:
                self._pool.clear()
            for conn in self._all_conns:
                conn.close()
            self._all_conns.clear()

    def __enter__(self) -> CountStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the status API."""
        with self._pending_lock:
            pending = len(self._pending)
        return {
            "pending": pending,
            "written": self.written,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ count queries

    @staticmethod
    def _where(
        stream_id: str, since: float | None, until: float | None
    ) -> tuple[str, dict[str, Any]]:
        """``since`` is inclusive and ``until`` exclusive, so adjacent ranges never overlap."""
        clauses, args = ["stream_id = :sid"], dict[str, Any](sid=stream_id)
        if since is not None:
            clauses.append("t >= :since")
            args["since"] = float(since)
        if until is not None:
            clauses.append("t < :until")
            args["until"] = float(until)
        return " AND ".join(clauses), args

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
        """History of one stream in ``[since, until)``, oldest first.

        Without ``step``: raw rows ``{"t", "count", "smoothed"}`` (plus ``"zones"`` if
        ``with_zones``). With ``step`` seconds: one row per non-empty bucket
        ``{"t": bucket start, "count": mean, "smoothed": mean, "min", "max", "n"}``; buckets
        are aligned to multiples of ``step`` since the unix epoch so that repeated or
        overlapping queries agree. When more than ``limit`` rows/buckets match, the newest
        ``limit`` are returned (a chart wants the recent end); page back with ``until``.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        where, args = self._where(stream_id, since, until)
        if step is None:
            cols = "t, count, smoothed" + (", zones" if with_zones else "")
            sql = f"SELECT {cols} FROM counts WHERE {where} ORDER BY t DESC LIMIT :limit"
            with self._reader() as conn:
                rows = conn.execute(sql, {**args, "limit": int(limit)}).fetchall()
            rows.reverse()
            out = []
            for r in rows:
                item: dict[str, Any] = {"t": r[0], "count": r[1], "smoothed": r[2]}
                if with_zones:
                    item["zones"] = json.loads(r[3]) if r[3] else {}
                out.append(item)
            return out

        if not step > 0:
            raise ValueError("step must be > 0")
        # floor(t / step) without relying on SQLite's optional math functions: CAST truncates
        # toward zero, so subtract one for negative non-integral quotients.
        bucket = (
            "(CAST(t / :step AS INTEGER)"
            " - (t < 0 AND CAST(t / :step AS INTEGER) != t / :step))"
        )
        named = {**args, "step": float(step), "limit": int(limit)}
        sql = (
            f"SELECT {bucket} AS b, AVG(count), AVG(smoothed), MIN(count), MAX(count), COUNT(*) "
            f"FROM counts WHERE {where} GROUP BY b ORDER BY b DESC LIMIT :limit"
        )
        with self._reader() as conn:
            rows = conn.execute(sql, named).fetchall()
        rows.reverse()
        return [
            {
                "t": b * float(step),
                "count": mean,
                "smoothed": smean,
                "min": lo,
                "max": hi,
                "n": n,
            }
            for b, mean, smean, lo, hi, n in rows
        ]

    def export_csv(
        self, stream_id: str, since: float | None = None, until: float | None = None
    ) -> str:
        """All raw rows in ``[since, until)`` as CSV with header ``t,count,smoothed``.

        Floats are written with ``repr`` so the file reads back to the exact stored values.
        The whole range is materialised: bound it with ``since``/``until`` for long histories.
        """
        where, args = self._where(stream_id, since, until)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("t", "count", "smoothed"))
        with self._reader() as conn:
            cur = conn.execute(
                f"SELECT t, count, smoothed FROM counts WHERE {where} ORDER BY t", args
            )
            while batch := cur.fetchmany(5000):
                writer.writerows((repr(t), repr(c), repr(s)) for t, c, s in batch)
        return buf.getvalue()

    def delete_counts(self, stream_id: str | None = None, before: float | None = None) -> int:
        """Purge history (one stream or all, optionally only rows older than ``before``)."""
        clauses: list[str] = []
        args: list[Any] = []
        if stream_id is not None:
            clauses.append("stream_id = ?")
            args.append(stream_id)
        if before is not None:
            clauses.append("t < ?")
            args.append(float(before))
        where = " AND ".join(clauses) or "1"
        with self._reader() as conn:
            cur = conn.execute(f"DELETE FROM counts WHERE {where}", args)
            return cur.rowcount

    # ------------------------------------------------------------------ alerts
    #
    # Alerts are written through the same queue and transaction as counts (so raise and
    # clear are never reordered, and the loop never waits on the disk), but the writer is
    # woken at once: they are rare and someone may be looking at the alert list. An alert
    # is identified by (stream, rule, raised_at), which the alert engine keeps stable from
    # raise to clear. Alert changes are not subject to ``max_pending``: there are few.

    def add_alert(
        self, stream: str, zone: str | None, rule: str, raised_at: float, peak: float
    ) -> None:
        """Queue an alert raised at ``raised_at`` (open until ``clear_alert``); non-blocking."""
        if self._closed:
            raise RuntimeError("CountStore is closed")
        args = (stream, zone, rule, float(raised_at), float(peak))
        with self._pending_lock:
            self._pending_alerts.append((_RAISE_SQL, args))
        self._wake.set()

    def clear_alert(
        self, stream: str, rule: str, raised_at: float, cleared_at: float, peak: float
    ) -> None:
        """Queue the end of the alert raised at ``raised_at``; ``peak`` is its highest
        value (the stored peak only grows). Non-blocking."""
        if self._closed:
            raise RuntimeError("CountStore is closed")
        args = (float(cleared_at), float(peak), stream, rule, float(raised_at))
        with self._pending_lock:
            self._pending_alerts.append((_CLEAR_SQL, args))
        self._wake.set()

    def alerts(
        self,
        stream: str | None = None,
        since: float | None = None,
        until: float | None = None,
        active: bool | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Alerts newest first: ``{id, stream, zone, rule, raised_at, cleared_at, peak}``.

        ``since``/``until`` select alerts that overlap ``[since, until)`` (an alert still
        open overlaps everything after it was raised); ``active`` True/False keeps only
        open/closed ones. Queued changes are visible after the next commit (they wake the
        writer, so within milliseconds).
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        clauses: list[str] = []
        args: list[Any] = []
        if stream is not None:
            clauses.append("stream = ?")
            args.append(stream)
        if since is not None:
            clauses.append("(cleared_at IS NULL OR cleared_at >= ?)")
            args.append(float(since))
        if until is not None:
            clauses.append("raised_at < ?")
            args.append(float(until))
        if active is not None:
            clauses.append("cleared_at IS NULL" if active else "cleared_at IS NOT NULL")
        where = " AND ".join(clauses) or "1"
        sql = (
            "SELECT id, stream, zone, rule, raised_at, cleared_at, peak FROM alerts "
            f"WHERE {where} ORDER BY raised_at DESC, id DESC LIMIT ?"
        )
        with self._reader() as conn:
            rows = conn.execute(sql, (*args, int(limit))).fetchall()
        keys = ("id", "stream", "zone", "rule", "raised_at", "cleared_at", "peak")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close_open_alerts(self, at: float) -> int:
        """Mark every open alert as cleared at ``at``; returns how many.

        Call once at startup, before the alert engine runs: the process that raised them
        is gone with their state, so nothing would ever clear them, and the fresh engine
        raises again if the crowd is still there.
        """
        self.flush()
        with self._reader() as conn:
            cur = conn.execute(
                "UPDATE alerts SET cleared_at = MAX(raised_at, ?) WHERE cleared_at IS NULL",
                (float(at),),
            )
            return cur.rowcount

    # ------------------------------------------------------------------ streams

    def save_stream(
        self,
        stream_id: str,
        name: str,
        url: str,
        kind: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Insert or update a stream; committed before returning so it survives a crash.

        ``created_at`` is kept on update so the list order stays the order streams were
        first added.
        """
        opts = json.dumps(options or {}, separators=(",", ":"), sort_keys=True)
        with self._reader() as conn:
            conn.execute(
                "INSERT INTO streams (id, name, url, kind, options, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name, url = excluded.url, "
                "kind = excluded.kind, options = excluded.options",
                (stream_id, name, url, kind, opts, time.time()),
            )

    def delete_stream(self, stream_id: str) -> bool:
        """Forget a stream's configuration (its count history is kept); True if it existed."""
        with self._reader() as conn:
            cur = conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
            return cur.rowcount > 0

    def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        """One stream as ``list_streams`` reports it, or ``None``."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT id, name, url, kind, options, created_at FROM streams WHERE id = ?",
                (stream_id,),
            ).fetchone()
        return None if row is None else _stream_dict(row)

    def list_streams(self) -> list[dict[str, Any]]:
        """Every saved stream, oldest first: ``{id, name, url, kind, options, created_at}``."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT id, name, url, kind, options, created_at FROM streams "
                "ORDER BY created_at, id"
            ).fetchall()
        return [_stream_dict(r) for r in rows]


def _stream_dict(row: Sequence[Any]) -> dict[str, Any]:
    sid, name, url, kind, options, created_at = row
    return {
        "id": sid,
        "name": name,
        "url": url,
        "kind": kind,
        "options": json.loads(options) if options else {},
        "created_at": created_at,
    }
