"""The embedded store: counts, the stream registry and alerts in one SQLite file.

Why SQLite in WAL mode: the single-process service must survive being killed (a crash,
``docker kill``, a power cut of the host) with its history and its saved streams intact,
and readers (API charts, CSV export) must never wait for the writer. WAL gives concurrent
readers with one writer, and with ``synchronous=NORMAL`` a committed transaction survives the
death of the process; only an OS crash or power loss may roll back the last few
transactions, never corrupt the file. That trade is right for counts arriving many times a
second: ``FULL`` would fsync every half second per commit for no gain a viewer would notice.

Why one writer thread that owns the only writing connection: counts are produced on the
asyncio loop at frame rate and a commit costs milliseconds (more on slow disks), so
``history.add`` only appends to a locked list, and the writer commits everything pending in
one transaction every ``flush_interval`` seconds or as soon as ``batch_rows`` rows are
waiting. The rarer durable writes (saving a stream, purging history, closing old alerts)
are handed to the same thread and waited for, so every write goes through one connection,
in one order, and SQLite's write lock is never fought over inside the process (the reader
connections are ``query_only``). Rows queued but not yet committed are not visible to
queries (at most ``flush_interval`` behind); the live view comes from ``CountFeed`` instead.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from crowdcount.streamer.store import common
from crowdcount.streamer.store.base import SavedStream, StoreStats
from crowdcount.streamer.store.common import SqlAlerts, SqlHistory

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# 2: counts are unique on (stream_id, t), so a retried or replayed batch cannot duplicate
# rows. Older builds must refuse such a file: their plain INSERT would fail on a duplicate.
# (The alerts table did not bump it: it is additive and older builds never read it.)
# 3: per-second and per-minute rollups (totals and zones), filled from the raw rows on
# migration; an older build would write raw rows without them, so it must refuse the file.
SCHEMA_VERSION = 3

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
CREATE UNIQUE INDEX IF NOT EXISTS counts_stream_t ON counts (stream_id, t);
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
CREATE TABLE IF NOT EXISTS counts_1s (
    stream_id TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, ssum REAL NOT NULL,
    PRIMARY KEY (stream_id, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts_1m (
    stream_id TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, ssum REAL NOT NULL,
    PRIMARY KEY (stream_id, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS zone_counts_1s (
    stream_id TEXT NOT NULL, zone TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (stream_id, t, zone)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS zone_counts_1m (
    stream_id TEXT NOT NULL, zone TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (stream_id, t, zone)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_rules (
    name TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    zone TEXT,
    above REAL NOT NULL,
    below REAL NOT NULL,
    for_seconds REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_zones (
    stream_id TEXT PRIMARY KEY,
    zones TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_settings (
    stream_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stream_id, key)
);
CREATE TABLE IF NOT EXISTS gathering (
    stream_id TEXT NOT NULL,
    start REAL NOT NULL,
    frames INTEGER NOT NULL,
    grid BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS gathering_stream_start ON gathering (stream_id, start);
CREATE TABLE IF NOT EXISTS gathering_reference (
    stream_id TEXT PRIMARY KEY,
    t REAL NOT NULL,
    jpeg BLOB NOT NULL
);
"""

# Rollups: why. A 30 fps camera stores ~2.6 M raw rows a day; aggregating a day or a week of
# them per chart request takes seconds. Each commit therefore recomputes, from the raw rows,
# the seconds its rows fall in (counts_1s: frames, sum, min, max, sum of smoothed; and the
# same per zone), then the minutes those seconds fall in from counts_1s. Recomputing (not
# adding) keeps the rollups exact under the idempotent inserts: a replayed batch changes
# nothing. Queries with a step of whole seconds or minutes read the coarsest table whose
# unit divides the step, so raw rows are only needed for a short window (``prune_raw``).
_FLOOR_T = "(CAST(t AS INTEGER) - (t < CAST(t AS INTEGER)))"
_ROLLUP_SQL = (
    "INSERT OR REPLACE INTO counts_1s (stream_id, t, n, sum, min, max, ssum) "
    f"SELECT stream_id, {_FLOOR_T} AS s, COUNT(*), SUM(count), MIN(count), MAX(count), "
    "SUM(smoothed) FROM counts WHERE stream_id = ? AND t >= ? AND t < ? GROUP BY s",
    "INSERT OR REPLACE INTO zone_counts_1s (stream_id, zone, t, n, sum, min, max) "
    "SELECT c.stream_id, j.key, (CAST(c.t AS INTEGER) - (c.t < CAST(c.t AS INTEGER))) AS s, "
    "COUNT(*), SUM(j.value), MIN(j.value), MAX(j.value) "
    "FROM counts AS c, json_each(c.zones) AS j "
    "WHERE c.stream_id = ? AND c.t >= ? AND c.t < ? AND c.zones IS NOT NULL "
    "GROUP BY j.key, s",
)
_ROLLUP_MINUTE_SQL = (
    "INSERT OR REPLACE INTO counts_1m (stream_id, t, n, sum, min, max, ssum) "
    "SELECT stream_id, (t / 60) * 60 AS m, SUM(n), SUM(sum), MIN(min), MAX(max), SUM(ssum) "
    "FROM counts_1s WHERE stream_id = ? AND t >= ? AND t < ? GROUP BY m",
    "INSERT OR REPLACE INTO zone_counts_1m (stream_id, zone, t, n, sum, min, max) "
    "SELECT stream_id, zone, (t / 60) * 60 AS m, SUM(n), SUM(sum), MIN(min), MAX(max) "
    "FROM zone_counts_1s WHERE stream_id = ? AND t >= ? AND t < ? GROUP BY zone, m",
)
_ROLLUP_TABLES = ("counts_1s", "counts_1m", "zone_counts_1s", "zone_counts_1m")
_T_LIMIT = 2**62  # range ends beyond this (a client's 1e300) are "unbounded"
_MAX_ROLLUP_STEP = 10**9  # larger steps (one bucket for all time) take the raw path


def _update_rollups(conn: sqlite3.Connection, rows: Sequence[_Row]) -> None:
    """Recompute the seconds and minutes that ``rows`` touch (inside the commit)."""
    spans: dict[str, tuple[float, float]] = {}
    for sid, t, *_ in rows:
        if not -_T_LIMIT < t < _T_LIMIT:  # NaN, inf, absurd: stored raw, never rolled up
            continue
        lo, hi = spans.get(sid, (t, t))
        spans[sid] = (min(lo, t), max(hi, t))
    for sid, (lo, hi) in spans.items():
        s_lo, s_hi = math.floor(lo), math.floor(hi) + 1
        for sql in _ROLLUP_SQL:
            conn.execute(sql, (sid, s_lo, s_hi))
        m_lo, m_hi = (s_lo // 60) * 60, ((s_hi - 1) // 60) * 60 + 60
        for sql in _ROLLUP_MINUTE_SQL:
            conn.execute(sql, (sid, m_lo, m_hi))


def _rebuild_rollups(conn: sqlite3.Connection) -> None:
    """Every rollup from the raw rows (the migration to schema 3)."""
    for table in _ROLLUP_TABLES:
        conn.execute(f"DELETE FROM {table}")
    for sql in _ROLLUP_SQL:
        conn.execute(sql.replace("WHERE stream_id = ? AND t >= ? AND t < ?", "WHERE 1")
                     .replace("WHERE c.stream_id = ? AND c.t >= ? AND c.t < ? AND",
                              "WHERE"))
    for sql in _ROLLUP_MINUTE_SQL:
        conn.execute(sql.replace("WHERE stream_id = ? AND t >= ? AND t < ?", "WHERE 1"))

# Version 1 files have a plain index under the same name: keep the first row of each
# (stream_id, t), then make the index unique.
_MIGRATE_1_TO_2 = (
    "DELETE FROM counts WHERE rowid NOT IN "
    "(SELECT MIN(rowid) FROM counts GROUP BY stream_id, t)",
    "DROP INDEX IF EXISTS counts_stream_t",
    "CREATE UNIQUE INDEX counts_stream_t ON counts (stream_id, t)",
)

_INSERT_COUNT_SQL = (
    "INSERT INTO counts (stream_id, t, count, smoothed, zones) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (stream_id, t) DO NOTHING"
)
_RAISE_SQL = (
    "INSERT INTO alerts (stream, zone, rule, raised_at, cleared_at, peak) "
    "VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT (stream, rule, raised_at) DO NOTHING"
)
_CLEAR_SQL = (
    "UPDATE alerts SET cleared_at = ?, peak = MAX(peak, ?) "
    "WHERE stream = ? AND rule = ? AND raised_at = ?"
)

# One queued count row: (stream_id, t, count, smoothed, zones JSON or None).
_Row = tuple[str, float, float, float, str | None]
# One queued alert change: (sql, args), applied after the rows of the same commit.
_Op = tuple[str, tuple[Any, ...]]
# A durable write run on the writer thread (None: just commit what is queued).
_Request = tuple[Callable[[sqlite3.Connection], Any] | None, "Future[Any]"]


def _connect(path: Path, busy_ms: int, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT), so the sqlite3
    # module's implicit transactions never hold anything open between calls.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA synchronous = NORMAL")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    return conn


def _open_schema(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{path}: could not enable WAL (journal_mode={mode})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"{path}: schema version {version} is newer than this build "
            f"({SCHEMA_VERSION}); refusing to write to it"
        )
    conn.executescript(_SCHEMA)
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                for sql in _MIGRATE_1_TO_2:
                    conn.execute(sql)
            if 0 < version < 3:
                _rebuild_rollups(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise


class _Writer:
    """The one thread that writes: batches queued rows and alert changes into transactions,
    and runs durable writes handed to it (``call``) after committing what was queued before.

    ``max_pending`` bounds the queue when the disk cannot keep up or writes fail: beyond it
    the oldest rows are dropped and counted, because an unbounded buffer would eventually
    take the whole service down. After a failed commit the writer backs off for
    ``flush_interval`` (a full queue does not make it retry in a busy loop), but a ``call``
    or ``close`` is served at once.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, flush_interval: float, batch_rows: int,
        max_pending: int,
    ) -> None:
        self._conn = conn
        self.flush_interval = flush_interval
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._ops: list[_Op] = []
        self._requests: list[_Request] = []
        self._wake = threading.Event()
        self._stopping = False
        self._retry_at = 0.0  # monotonic time before which a failed commit is not retried
        self._final_error: BaseException | None = None
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    # -- producers (any thread) ------------------------------------------------------------

    def add_row(self, row: _Row) -> None:
        with self._lock:
            self._check_open()
            self._rows.append(row)
            n = len(self._rows)
            self.dropped += common.drop_oldest(self._rows, self.max_pending)
        if n >= self.batch_rows and time.monotonic() >= self._retry_at:
            self._wake.set()

    def add_op(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._check_open()
            self._ops.append((sql, args))
        self._wake.set()

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in its own transaction on the writer thread, after committing
        everything queued before; blocks until it is committed and returns its result."""
        return self._submit(fn)

    def flush(self) -> int:
        return self._submit(None)

    def _submit(self, fn: Callable[[sqlite3.Connection], Any] | None) -> Any:
        fut: Future[Any] = Future()
        with self._lock:
            self._check_open()
            self._requests.append((fn, fut))
        self._wake.set()
        return fut.result()

    def _check_open(self) -> None:
        if self._stopping:
            raise RuntimeError("store is closed")

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def close(self) -> None:
        """Commit what is queued, stop the thread and close the connection; raises the
        final commit's error, if any (those rows are lost)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake.set()
        self._thread.join()
        if self._final_error is not None:
            raise self._final_error

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
            self._conn.close()

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
            if not requests:
                log.exception("store: commit failed, will retry")
        for fn, fut in requests:
            if error is not None:
                fut.set_exception(error)
            elif fn is None:
                fut.set_result(committed)
                committed = 0  # reported once
            else:
                try:
                    fut.set_result(self._transaction(fn))
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
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(_INSERT_COUNT_SQL, rows)
            inserted = conn.total_changes - before  # duplicates of (stream_id, t) are skipped
            if rows:
                _update_rollups(conn, rows)
            for sql, args in ops:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                # Back in front so the order is kept, then re-apply the bound.
                self._rows[:0] = rows
                self._ops[:0] = ops
                self.dropped += common.drop_oldest(self._rows, self.max_pending)
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.written += inserted
        return len(rows) + len(ops)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return result


class _Readers:
    """A pool of ``query_only`` connections: reads come from many threads at once."""

    def __init__(self, path: Path, busy_ms: int) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._pool: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def borrow(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            if self._pool:
                conn = self._pool.pop()
            else:
                conn = _connect(self._path, self._busy_ms, read_only=True)
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._pool.append(conn)

    def fetch(self, sql: str, args: Mapping[str, Any]) -> list[Any]:
        with self.borrow() as conn:
            return conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._pool = self._pool, []
        for conn in idle:
            conn.close()


class SQLiteHistory(SqlHistory):
    """``CountHistory`` on the ``counts`` table and its rollups. Zones are stored as JSON
    text; a whole-second ``step`` is answered from the rollups."""

    ph = ":{}"

    def __init__(self, writer: _Writer, readers: _Readers) -> None:
        super().__init__(readers.fetch, writer.add_row)
        self._writer = writer

    def _encode_zones(self, zones: dict[str, float]) -> str:
        return json.dumps(zones, separators=(",", ":"))

    def _decode_zones(self, value: str | None) -> dict[str, float]:
        return json.loads(value) if value else {}

    def _bucketed(
        self, stream_id: str, since: float | None, until: float | None, step: float,
        limit: int, with_zones: bool,
    ) -> list[dict[str, Any]]:
        # Whole-second steps read the rollups; a step past SQLite's 64-bit integers (a whole
        # history in one bucket, in effect) takes the float path below, which copes.
        if 1 <= step < 2**62 and float(step).is_integer():
            return self._rolled_up(stream_id, since, until, int(step), limit, with_zones)
        where, args = common.range_where(self.ph, stream_id, since, until)
        # floor(t / step) without relying on SQLite's optional math functions: CAST truncates
        # toward zero, so subtract one for negative non-integral quotients.
        bucket = (
            "(CAST(t / :step AS INTEGER)"
            " - (t < 0 AND CAST(t / :step AS INTEGER) != t / :step))"
        )
        named = {**args, "step": float(step), "limit": limit}
        sql = (
            f"SELECT {bucket} AS b, AVG(count), AVG(smoothed), MIN(count), MAX(count), COUNT(*) "
            f"FROM counts WHERE {where} GROUP BY b ORDER BY b DESC LIMIT :limit"
        )
        return common.bucket_items(reversed(self._fetch(sql, named)), float(step))

    def _rolled_up(
        self, stream_id: str, since: float | None, until: float | None, step: int, limit: int,
        with_zones: bool,
    ) -> list[dict[str, Any]]:
        """A whole-second ``step`` from the coarsest rollup whose unit divides it; the range
        is taken at that unit (``since`` rounded down to it)."""
        unit = 60 if step % 60 == 0 else 1
        suffix = "1m" if unit == 60 else "1s"
        lo = -_T_LIMIT if since is None else max(-_T_LIMIT, math.floor(
            max(-_T_LIMIT, since) / unit) * unit)
        hi = _T_LIMIT if until is None else min(_T_LIMIT, math.ceil(min(_T_LIMIT, until)))
        args = {"sid": stream_id, "lo": lo, "hi": hi, "step": step, "limit": limit}
        # Integer division floors for t >= 0; the rare negative t is shifted to floor too.
        bucket = "((t - (t < 0) * (:step - 1)) / :step)"
        sql = (
            f"SELECT {bucket} AS b, SUM(sum) / SUM(n), SUM(ssum) / SUM(n), MIN(min), MAX(max), "
            f"SUM(n) FROM counts_{suffix} WHERE stream_id = :sid AND t >= :lo AND t < :hi "
            "GROUP BY b ORDER BY b DESC LIMIT :limit"
        )
        rows = self._fetch(sql, args)
        rows.reverse()
        out = common.bucket_items(rows, step)
        if with_zones and rows:
            zsql = (
                f"SELECT {bucket} AS b, zone, SUM(sum) / SUM(n), MIN(min), MAX(max) "
                f"FROM zone_counts_{suffix} WHERE stream_id = :sid AND t >= :lo "
                "AND t < :hi AND t >= :first GROUP BY b, zone"
            )
            first = rows[0][0] * step
            zone_rows = self._fetch(zsql, {**args, "first": first})
            common.add_zone_stats(out, [r[0] for r in rows], zone_rows)
        return out

    def delete(self, stream_id: str | None = None, before: float | None = None) -> int:
        where, args = common.delete_where(self.ph, stream_id, before)

        def purge(conn: sqlite3.Connection) -> int:
            deleted = conn.execute(f"DELETE FROM counts WHERE {where}", args).rowcount
            for table in _ROLLUP_TABLES:  # a minute starting before ``before`` goes too
                conn.execute(f"DELETE FROM {table} WHERE {where}", args)
            return deleted

        return self._writer.call(purge)

    def prune_raw(self, before: float) -> int:
        """Delete raw rows older than ``before`` and keep their rollups: charts of old
        ranges read the rollups; only sub-second detail and the raw CSV of them go."""
        return self._writer.call(
            lambda conn: conn.execute("DELETE FROM counts WHERE t < ?", (float(before),)).rowcount
        )


class SQLiteStreams:
    """``StreamRegistry`` on the ``streams`` table."""

    def __init__(self, writer: _Writer, readers: _Readers) -> None:
        self._writer = writer
        self._readers = readers

    def save(
        self,
        stream_id: str,
        name: str,
        url: str,
        kind: str,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        opts = json.dumps(dict(options or {}), separators=(",", ":"), sort_keys=True)
        args = (stream_id, name, url, kind, opts, time.time())
        self._writer.call(lambda conn: conn.execute(
            "INSERT INTO streams (id, name, url, kind, options, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, url = excluded.url, "
            "kind = excluded.kind, options = excluded.options",
            args,
        ))

    def delete(self, stream_id: str) -> bool:
        return self._writer.call(
            lambda conn: conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,)).rowcount
        ) > 0

    def get(self, stream_id: str) -> SavedStream | None:
        with self._readers.borrow() as conn:
            row = conn.execute(
                "SELECT id, name, url, kind, options, created_at FROM streams WHERE id = ?",
                (stream_id,),
            ).fetchone()
        return None if row is None else _saved_stream(row)

    def all(self) -> list[SavedStream]:
        with self._readers.borrow() as conn:
            rows = conn.execute(
                "SELECT id, name, url, kind, options, created_at FROM streams "
                "ORDER BY created_at, id"
            ).fetchall()
        return [_saved_stream(r) for r in rows]


class SQLiteAlerts(SqlAlerts):
    """``AlertLog`` on the ``alerts`` table. Raises and clears go through the counts' queue
    and transaction, so they are never reordered and the loop never waits on the disk;
    they are not subject to ``max_pending`` (there are few)."""

    ph = ":{}"
    raise_sql = _RAISE_SQL
    clear_sql = _CLEAR_SQL

    def __init__(self, writer: _Writer, readers: _Readers) -> None:
        super().__init__(readers.fetch, writer.add_op)
        self._writer = writer

    def close_open(self, at: float) -> int:
        return self._writer.call(lambda conn: conn.execute(
            "UPDATE alerts SET cleared_at = MAX(raised_at, ?) WHERE cleared_at IS NULL",
            (float(at),),
        ).rowcount)


class SQLiteSettings:
    """``SettingsStore`` on the ``alert_rules``, ``stream_zones`` and ``stream_settings``
    tables."""

    def __init__(self, writer: _Writer, readers: _Readers) -> None:
        self._writer = writer
        self._readers = readers

    def rules(self) -> list[dict[str, Any]]:
        with self._readers.borrow() as conn:
            rows = conn.execute("SELECT name, stream, zone, above, below, for_seconds "
                                "FROM alert_rules ORDER BY name").fetchall()
        keys = ("name", "stream", "zone", "above", "below", "for_seconds")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def save_rule(self, rule: Mapping[str, Any]) -> None:
        args = (rule["name"], rule["stream"], rule.get("zone"), float(rule["above"]),
                float(rule["below"]), float(rule.get("for_seconds") or 0.0), time.time())
        self._writer.call(lambda conn: conn.execute(
            "INSERT INTO alert_rules (name, stream, zone, above, below, for_seconds, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "stream = excluded.stream, zone = excluded.zone, above = excluded.above, "
            "below = excluded.below, for_seconds = excluded.for_seconds, "
            "updated_at = excluded.updated_at", args))

    def delete_rule(self, name: str) -> bool:
        return self._writer.call(lambda conn: conn.execute(
            "DELETE FROM alert_rules WHERE name = ?", (name,)).rowcount > 0)

    def zones(self) -> dict[str, list[dict[str, Any]]]:
        with self._readers.borrow() as conn:
            rows = conn.execute("SELECT stream_id, zones FROM stream_zones").fetchall()
        return {sid: json.loads(text) for sid, text in rows}

    def save_zones(self, stream_id: str, zones: Sequence[Mapping[str, Any]]) -> None:
        args = (stream_id, json.dumps(list(zones), separators=(",", ":")), time.time())
        self._writer.call(lambda conn: conn.execute(
            "INSERT INTO stream_zones (stream_id, zones, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (stream_id) DO UPDATE SET zones = excluded.zones, "
            "updated_at = excluded.updated_at", args))

    def delete_zones(self, stream_id: str) -> None:
        self._writer.call(lambda conn: conn.execute(
            "DELETE FROM stream_zones WHERE stream_id = ?", (stream_id,)))

    def stream_settings(self, key: str) -> dict[str, Any]:
        with self._readers.borrow() as conn:
            rows = conn.execute("SELECT stream_id, value FROM stream_settings WHERE key = ?",
                                (key,)).fetchall()
        return {sid: json.loads(text) for sid, text in rows}

    def save_stream_setting(self, stream_id: str, key: str, value: Any) -> None:
        args = (stream_id, key, json.dumps(value, separators=(",", ":")), time.time())
        self._writer.call(lambda conn: conn.execute(
            "INSERT INTO stream_settings (stream_id, key, value, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, key) DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at", args))

    def delete_stream_setting(self, stream_id: str, key: str | None = None) -> None:
        if key is None:
            self._writer.call(lambda conn: conn.execute(
                "DELETE FROM stream_settings WHERE stream_id = ?", (stream_id,)))
        else:
            self._writer.call(lambda conn: conn.execute(
                "DELETE FROM stream_settings WHERE stream_id = ? AND key = ?",
                (stream_id, key)))


class SQLiteGathering:
    """``GatheringStore`` on the ``gathering`` and ``gathering_reference`` tables."""

    def __init__(self, writer: _Writer, readers: _Readers) -> None:
        self._writer = writer
        self._readers = readers

    def add_bucket(self, stream_id: str, start: float, frames: int, grid: bytes) -> None:
        args = (stream_id, float(start), int(frames), sqlite3.Binary(grid))
        self._writer.call(lambda conn: conn.execute(
            "INSERT INTO gathering (stream_id, start, frames, grid) VALUES (?, ?, ?, ?)", args))

    def buckets(self, stream_id: str, since: float, until: float) -> list[tuple[float, int, bytes]]:
        lo, hi = max(-_T_LIMIT, since), min(_T_LIMIT, until)
        with self._readers.borrow() as conn:
            return conn.execute(
                "SELECT start, frames, grid FROM gathering WHERE stream_id = ? AND start >= ? "
                "AND start < ? ORDER BY start", (stream_id, lo, hi)).fetchall()

    def has(self, stream_id: str) -> bool:
        with self._readers.borrow() as conn:
            return conn.execute("SELECT 1 FROM gathering WHERE stream_id = ? LIMIT 1",
                                (stream_id,)).fetchone() is not None

    def save_reference(self, stream_id: str, t: float, jpeg: bytes) -> None:
        args = (stream_id, float(t), sqlite3.Binary(jpeg))
        self._writer.call(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO gathering_reference (stream_id, t, jpeg) VALUES (?, ?, ?)",
            args))

    def reference(self, stream_id: str) -> bytes | None:
        with self._readers.borrow() as conn:
            row = conn.execute("SELECT jpeg FROM gathering_reference WHERE stream_id = ?",
                               (stream_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete_before(self, cutoff: float) -> int:
        return self._writer.call(lambda conn: conn.execute(
            "DELETE FROM gathering WHERE start < ?", (float(cutoff),)).rowcount)

    def stats(self) -> dict[str, int]:
        with self._readers.borrow() as conn:
            rows, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(grid)), 0) FROM gathering").fetchone()
        return {"rows": rows, "bytes": size}


class SQLiteStore:
    """``Store`` in one SQLite file: ``history``, ``streams``, ``alerts``, ``settings`` and
    ``gathering`` share one writer thread (the only connection that writes) and a pool of
    read-only connections.

    ``batch_rows`` wakes the writer early so a burst (many streams, high fps) is written in
    bounded transactions; ``max_pending`` bounds the queue (see ``_Writer``).
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
        common.check_writer_options(flush_interval, batch_rows, max_pending)
        self.path = Path(path)
        busy_ms = int(busy_timeout * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, busy_ms, read_only=False)
        try:
            _open_schema(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._writer = _Writer(
            conn, flush_interval=float(flush_interval), batch_rows=int(batch_rows),
            max_pending=int(max_pending),
        )
        self._readers = _Readers(self.path, busy_ms)
        self.history = SQLiteHistory(self._writer, self._readers)
        self.streams = SQLiteStreams(self._writer, self._readers)
        self.alerts = SQLiteAlerts(self._writer, self._readers)
        self.settings = SQLiteSettings(self._writer, self._readers)
        self.gathering = SQLiteGathering(self._writer, self._readers)
        self._closed = False

    def flush(self) -> int:
        return self._writer.flush()

    def stats(self) -> StoreStats:
        w = self._writer
        return StoreStats(
            pending=w.pending(), written=w.written, dropped=w.dropped, last_error=w.last_error
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._readers.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _saved_stream(row: Sequence[Any]) -> SavedStream:
    sid, name, url, kind, options, created_at = row
    return SavedStream(
        id=sid, name=name, url=url, kind=kind,
        options=json.loads(options) if options else {}, created_at=created_at,
    )
