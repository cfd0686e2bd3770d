"""The embedded store: counts, the stream registry and alerts in one SQLite file.

Why SQLite in WAL mode: the single-process service must survive being killed (a crash,
``docker kill``, a power cut of the host) with its history and its saved streams intact,
and readers (API charts, CSV export) must never wait for the writer. WAL gives concurrent
readers with one writer, and with ``synchronous=NORMAL`` a committed transaction survives the
death of the process; only an OS crash or power loss may roll back the last few
transactions, never corrupt the file. That trade is right for counts arriving many times a
second: ``FULL`` would fsync every half second per commit for no gain a viewer would notice.

Why the writer (``streamer.store.writer``) owns the only writing connection: every write
goes through one connection, in one order, and SQLite's write lock is never fought over
inside the process (the reader connections are ``query_only``). Rows queued but not yet
committed are not visible to queries (at most ``flush_interval`` behind); the live view
comes from ``CountFeed`` instead. The records themselves are ``streamer.store.common``'s;
this module holds the file's schema, its migrations and how SQLite commits a batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from crowdcount.streamer.store import common
from crowdcount.streamer.store.base import SavedStream
from crowdcount.streamer.store.common import Dialect, SqlStore
from crowdcount.streamer.store.writer import Op, Row, Writer

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

SQLITE = Dialect(
    ph=":{}", pos="?",
    floor_t="(CAST(c.t AS INTEGER) - (c.t < CAST(c.t AS INTEGER)))",
    # CAST truncates toward zero: subtract one for negative non-integral quotients (no
    # reliance on SQLite's optional math functions).
    bucket="(CAST(t / {step} AS INTEGER) - (t < 0 AND CAST(t / {step} AS INTEGER) != t / {step}))",
    zone_each="json_each(c.zones) AS z", zone_value="z.value", greatest="MAX",
    dump_json=lambda v: json.dumps(v, separators=(",", ":")), load_json=json.loads,
)

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
    updated_at REAL NOT NULL,
    metric TEXT NOT NULL DEFAULT 'count'
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
    grid BLOB NOT NULL,
    part TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS gathering_stream_start ON gathering (stream_id, start);
CREATE TABLE IF NOT EXISTS gathering_reference (
    stream_id TEXT PRIMARY KEY,
    t REAL NOT NULL,
    jpeg BLOB NOT NULL
);
-- calibration (additive: older builds never read them)
CREATE TABLE IF NOT EXISTS marked_frames (
    stream_id TEXT NOT NULL,
    id TEXT NOT NULL,
    captured_at REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    model_count REAL NOT NULL,
    marks TEXT,
    jpeg BLOB NOT NULL,
    density BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (stream_id, id)
);
CREATE TABLE IF NOT EXISTS calibration_models (
    stream_id TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    model BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""

# Version 1 files have a plain index under the same name: keep the first row of each
# (stream_id, t), then make the index unique.
_MIGRATE_1_TO_2 = (
    "DELETE FROM counts WHERE rowid NOT IN "
    "(SELECT MIN(rowid) FROM counts GROUP BY stream_id, t)",
    "DROP INDEX IF EXISTS counts_stream_t",
    "CREATE UNIQUE INDEX counts_stream_t ON counts (stream_id, t)",
)

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
    # Additive, so no version bump: an older build lists its columns and never reads it.
    rule_cols = {row[1] for row in conn.execute("PRAGMA table_info(alert_rules)")}
    if "metric" not in rule_cols:
        conn.execute("ALTER TABLE alert_rules ADD COLUMN metric TEXT NOT NULL DEFAULT 'count'")
    if "part" not in {row[1] for row in conn.execute("PRAGMA table_info(gathering)")}:
        conn.execute("ALTER TABLE gathering ADD COLUMN part TEXT NOT NULL DEFAULT ''")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS gathering_part ON gathering "
                 "(stream_id, start, part) WHERE part <> ''")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 1:
            for sql in _MIGRATE_1_TO_2:
                conn.execute(sql)
        if 0 < version < 3:
            common.rebuild_rollups(SQLITE, conn)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        common.move_saved_options(SQLITE, conn)  # every row is an API stream's
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


class _Batches:
    """How a batch commits in SQLite: one ``BEGIN IMMEDIATE`` transaction on the only
    connection that writes (used by the writer thread alone)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def commit(self, rows: Sequence[Row], ops: Sequence[Op]) -> int:
        return self.transaction(lambda conn: common.write_batch(SQLITE, conn, rows, ops,
                                                                self._insert))

    def _insert(self, sql: str, rows: Sequence[Row]) -> int:
        before = self.conn.total_changes
        self.conn.executemany(sql, rows)
        return self.conn.total_changes - before  # duplicates of (stream_id, t) are skipped

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.conn
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


class SQLiteStreams:
    """``StreamRegistry`` on the ``streams`` table."""

    def __init__(self, writer: Writer[sqlite3.Connection], readers: _Readers) -> None:
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


class SQLiteStore(SqlStore):
    """``Store`` in one SQLite file: ``history``, ``streams``, ``alerts``, ``settings``,
    ``gathering`` and ``calibration`` share one writer (the only connection that writes)
    and a pool of read-only connections.

    ``batch_rows`` wakes the writer early so a burst (many streams, high fps) is written in
    bounded transactions; ``max_pending`` bounds the queue (see ``streamer.store.writer``).
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
        self.path = Path(path)
        busy_ms = int(busy_timeout * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, busy_ms, read_only=False)
        try:
            _open_schema(conn, self.path)
            self._batches = _Batches(conn)
            writer = Writer(self._batches, flush_interval=flush_interval,
                            batch_rows=batch_rows, max_pending=max_pending)
        except BaseException:
            conn.close()
            raise
        self._readers = _Readers(self.path, busy_ms)
        super().__init__(SQLITE, self._readers.fetch, writer)
        self.streams = SQLiteStreams(writer, self._readers)

    def _release(self) -> None:
        self._batches.conn.close()
        self._readers.close()

    def __enter__(self) -> SQLiteStore:
        return self


def _saved_stream(row: Sequence[Any]) -> SavedStream:
    sid, name, url, kind, options, created_at = row
    return SavedStream(
        id=sid, name=name, url=url, kind=kind,
        options=json.loads(options) if options else {}, created_at=created_at,
    )
