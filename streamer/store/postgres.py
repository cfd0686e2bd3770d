"""The cluster's store: count history, streams, alerts and settings in PostgreSQL.

It speaks the store's interfaces (``history``, ``streams``, ``alerts``; see
``streamer.store.base``), so the count sink, the alert integrations and the routes use it as
they use the SQLite store, plus ``cluster``: which shard owns each camera, the per-stream
status the shards report, cluster settings (alert rules, notifiers) every shard loads, and
NOTIFY for the live feed.

Why PostgreSQL rather than SQLite for a cluster: several machines write (one shard per group
of cameras) and several API processes read, over the network. A shard is the only writer of
its cameras' rows, and ``counts`` has the primary key ``(stream_id, t)`` with inserts ``ON
CONFLICT DO NOTHING``: a shard that Ray restarts elsewhere after a failover, or a batch
retried after a lost connection, can never duplicate a row.

Why the same write-behind design as the SQLite store: counts arrive on the event loop at
frame rate and a round trip to a database on another machine costs milliseconds; ``add``
only appends to a locked list and a thread commits everything pending in one transaction
every ``flush_interval`` seconds (or at ``batch_rows``). Rows in flight when a node dies are
lost with it; they are inside the outage the API reports.

``shard`` scopes a store to one shard's cameras: ``streams.all`` returns only them and
``alerts.close_open`` closes only theirs (another shard's open alerts are still live).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg.types.json import Jsonb

from crowdcount.streamer.store import common
from crowdcount.streamer.store.base import SavedStream, StoreStats
from crowdcount.streamer.store.common import SqlAlerts, SqlHistory

log = logging.getLogger(__name__)

#: LISTEN/NOTIFY channels: live feed items (counts and alerts) and stream-list changes.
FEED_CHANNEL = "crowdcount_feed"
STREAMS_CHANNEL = "crowdcount_streams"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    options JSONB NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    shard INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT 'api'
);
CREATE INDEX IF NOT EXISTS streams_shard ON streams (shard);
CREATE TABLE IF NOT EXISTS counts (
    stream_id TEXT NOT NULL,
    t DOUBLE PRECISION NOT NULL,
    count DOUBLE PRECISION NOT NULL,
    smoothed DOUBLE PRECISION NOT NULL,
    zones JSONB,
    PRIMARY KEY (stream_id, t)
);
CREATE TABLE IF NOT EXISTS alerts (
    id BIGSERIAL PRIMARY KEY,
    stream TEXT NOT NULL,
    zone TEXT,
    rule TEXT NOT NULL,
    raised_at DOUBLE PRECISION NOT NULL,
    cleared_at DOUBLE PRECISION,
    peak DOUBLE PRECISION NOT NULL,
    UNIQUE (stream, rule, raised_at)
);
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised_at);
CREATE TABLE IF NOT EXISTS stream_status (
    stream_id TEXT PRIMARY KEY,
    shard INTEGER NOT NULL,
    node TEXT NOT NULL,
    status JSONB NOT NULL,
    reported_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value JSONB NOT NULL
);
"""
# Any constant: serialises schema creation when several processes start at once (CREATE
# TABLE IF NOT EXISTS alone races on the catalog).
_SCHEMA_LOCK = 0x63726F77

_Row = tuple[str, float, float, float, Jsonb | None]
_AlertOp = tuple[str, tuple[Any, ...]]

_INSERT_COUNT_SQL = (
    "INSERT INTO counts (stream_id, t, count, smoothed, zones) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id, t) DO NOTHING"
)
_RAISE_SQL = (
    "INSERT INTO alerts (stream, zone, rule, raised_at, cleared_at, peak) "
    "VALUES (%s, %s, %s, %s, NULL, %s) ON CONFLICT (stream, rule, raised_at) DO NOTHING"
)
_CLEAR_SQL = (
    "UPDATE alerts SET cleared_at = %s, peak = GREATEST(peak, %s) "
    "WHERE stream = %s AND rule = %s AND raised_at = %s"
)
_STREAM_COLS = "id, name, url, kind, options, created_at, shard, origin"


class _Db:
    """One writer thread (queued count rows and alert changes, committed in batches) and a
    pool of autocommit connections for everything else; shared by the store's parts."""

    def __init__(
        self, dsn: str, *, flush_interval: float, batch_rows: int, max_pending: int,
        connect_timeout: float,
    ) -> None:
        self.dsn = dsn
        self.flush_interval = flush_interval
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self._timeout = connect_timeout
        self._pending: list[_Row] = []
        self._pending_ops: list[_AlertOp] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pool: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.closed = False
        self.written = 0
        self.dropped = 0
        self.duplicates = 0  # rows the database already had (a replay after a failover)
        self.last_error: str | None = None
        self._wconn = self.connect()
        with self._wconn.transaction():
            self._wconn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self._wconn.execute(_SCHEMA)
        self._thread = threading.Thread(target=self._run, name="pg-store-writer", daemon=True)
        self._thread.start()

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(self._timeout))

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow an autocommit connection; a broken one is dropped, not returned."""
        self.check_open()
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None or conn.closed:
            conn = self.connect()
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise
        else:
            with self._pool_lock:
                self._pool.append(conn)

    def fetch(self, sql: str, args: Mapping[str, Any]) -> list[Any]:
        with self.conn() as conn:
            return conn.execute(sql, args).fetchall()

    def check_open(self) -> None:
        if self.closed:
            raise RuntimeError("PostgresStore is closed")

    def add_row(self, row: _Row) -> None:
        self.check_open()
        with self._pending_lock:
            self._pending.append(row)
            n = len(self._pending)
            self.dropped += common.drop_oldest(self._pending, self.max_pending)
        if n >= self.batch_rows:
            self._wake.set()

    def add_op(self, sql: str, args: tuple[Any, ...]) -> None:
        self.check_open()
        with self._pending_lock:
            self._pending_ops.append((sql, args))
        self._wake.set()

    def pending(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def flush(self) -> int:
        with self._write_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
                ops, self._pending_ops = self._pending_ops, []
            if not rows and not ops:
                return 0
            try:
                if self._wconn.closed:
                    self._wconn = self.connect()
                inserted = 0
                with self._wconn.transaction(), self._wconn.cursor() as cur:
                    if rows:
                        cur.executemany(_INSERT_COUNT_SQL, rows)
                        inserted = max(cur.rowcount, 0)
                    for sql, args in ops:
                        cur.execute(sql, args)
            except BaseException as exc:
                with self._pending_lock:
                    # Back in front, so order is kept; then the bound again.
                    self._pending[:0] = rows
                    self._pending_ops[:0] = ops
                    self.dropped += common.drop_oldest(self._pending, self.max_pending)
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, psycopg.OperationalError):
                    self._wconn.close()
                raise
            self.written += inserted
            self.duplicates += len(rows) - inserted
            return len(rows) + len(ops)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:
                log.error("event=store_commit_failed error=%r", str(exc).strip())
                self._stop.wait(self.flush_interval)

    def close(self) -> None:
        if self.closed:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        except Exception as exc:
            log.error("event=store_close_commit_failed error=%r", str(exc).strip())
        finally:
            self.closed = True
            with self._pool_lock:
                conns, self._pool = self._pool, []
            for conn in [*conns, self._wconn]:
                conn.close()


class PostgresHistory(SqlHistory):
    """``CountHistory`` on the ``counts`` table (primary key ``(stream_id, t)``); zones are
    JSONB, and buckets are aggregated from the raw rows in SQL."""

    ph = "%({})s"

    def __init__(self, db: _Db) -> None:
        super().__init__(db.fetch, db.add_row)
        self._db = db

    def _encode_zones(self, zones: dict[str, float]) -> Jsonb:
        return Jsonb(zones)

    def _decode_zones(self, value: dict[str, float] | None) -> dict[str, float]:
        return value or {}

    def _bucketed(
        self, stream_id: str, since: float | None, until: float | None, step: float,
        limit: int, with_zones: bool,
    ) -> list[dict[str, Any]]:
        where, args = common.range_where(self.ph, stream_id, since, until)
        named = {**args, "step": float(step), "limit": limit}
        sql = (
            "SELECT floor(t / %(step)s)::bigint AS b, AVG(count), AVG(smoothed), MIN(count), "
            f"MAX(count), COUNT(*) FROM counts WHERE {where} GROUP BY b ORDER BY b DESC "
            "LIMIT %(limit)s"
        )
        rows = self._fetch(sql, named)
        rows.reverse()
        out = common.bucket_items(rows, float(step))
        if with_zones and rows:
            # Per zone, over the rows that have it (zones come and go).
            named["first"] = rows[0][0]
            zsql = (
                "SELECT floor(t / %(step)s)::bigint AS b, z.key, AVG(z.value::float8), "
                "MIN(z.value::float8), MAX(z.value::float8) "
                f"FROM counts, jsonb_each_text(zones) AS z WHERE {where} "
                "AND zones IS NOT NULL AND floor(t / %(step)s)::bigint >= %(first)s "
                "GROUP BY b, z.key"
            )
            common.add_zone_stats(out, [r[0] for r in rows], self._fetch(zsql, named))
        return out

    def prune_raw(self, before: float) -> int:
        """Keeps every row: this store has no rollup tables to answer from once raw rows
        are gone (PostgreSQL aggregates the raw rows in SQL), so ``server.retention_days``
        is what bounds its history. Returns 0."""
        return 0

    def delete(self, stream_id: str | None = None, before: float | None = None) -> int:
        where, args = common.delete_where(self.ph, stream_id, before)
        with self._db.conn() as conn:
            return conn.execute(f"DELETE FROM counts WHERE {where}", args).rowcount


class PostgresStreams:
    """``StreamRegistry`` on the ``streams`` table, plus each camera's shard and origin.
    Every change is announced on ``STREAMS_CHANNEL`` so API processes refresh at once."""

    def __init__(self, db: _Db, shard: int | None) -> None:
        self._db = db
        self._shard = shard

    def save(
        self,
        stream_id: str,
        name: str,
        url: str,
        kind: str,
        options: Mapping[str, Any] | None = None,
        *,
        shard: int | None = None,
        origin: str = "api",
    ) -> None:
        """Also places the camera on ``shard`` (default: this store's), and an update keeps
        that shard: a camera stays where it was placed."""
        placed = shard if shard is not None else self._shard or 0
        with self._db.conn() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO streams ({_STREAM_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, "
                "kind = excluded.kind, options = excluded.options",
                (stream_id, name, url, kind, Jsonb(dict(options or {})), time.time(), placed,
                 origin),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))

    def delete(self, stream_id: str) -> bool:
        """Also forgets its last reported status."""
        with self._db.conn() as conn, conn.transaction():
            n = conn.execute("DELETE FROM streams WHERE id = %s", (stream_id,)).rowcount
            conn.execute("DELETE FROM stream_status WHERE stream_id = %s", (stream_id,))
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
        return n > 0

    def get(self, stream_id: str) -> SavedStream | None:
        with self._db.conn() as conn:
            row = conn.execute(
                f"SELECT {_STREAM_COLS} FROM streams WHERE id = %s", (stream_id,)
            ).fetchone()
        return None if row is None else cast(SavedStream, _stream_dict(row))

    def shard_of(self, stream_id: str) -> int | None:
        """The shard a saved camera was placed on (``None``: no such camera)."""
        with self._db.conn() as conn:
            row = conn.execute("SELECT shard FROM streams WHERE id = %s",
                               (stream_id,)).fetchone()
        return None if row is None else int(row[0])

    def all(self) -> list[SavedStream]:
        """Only this shard's cameras when the store is scoped to one."""
        sql = f"SELECT {_STREAM_COLS} FROM streams"
        args: tuple[Any, ...] = ()
        if self._shard is not None:
            sql += " WHERE shard = %s"
            args = (self._shard,)
        with self._db.conn() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [cast(SavedStream, _stream_dict(r)) for r in rows]


class PostgresAlerts(SqlAlerts):
    """``AlertLog`` on the ``alerts`` table; changes ride the counts' queue and commit."""

    ph = "%({})s"
    raise_sql = _RAISE_SQL
    clear_sql = _CLEAR_SQL

    def __init__(self, db: _Db, shard: int | None) -> None:
        super().__init__(db.fetch, db.add_op)
        self._db = db
        self._shard = shard

    def close_open(self, at: float) -> int:
        """Every open alert, or in a shard's store only its cameras' (the other shards'
        alerts are still live)."""
        self._db.flush()
        sql = "UPDATE alerts SET cleared_at = GREATEST(raised_at, %s) WHERE cleared_at IS NULL"
        args: tuple[Any, ...] = (float(at),)
        if self._shard is not None:
            sql += " AND stream IN (SELECT id FROM streams WHERE shard = %s)"
            args += (self._shard,)
        with self._db.conn() as conn:
            return conn.execute(sql, args).rowcount


class ClusterState:
    """What only a cluster keeps: shard loads, the shards' status reports, settings shared
    by every shard, and NOTIFY."""

    def __init__(self, db: _Db, shard: int | None) -> None:
        self._db = db
        self._shard = shard

    def shard_loads(self, shards: int) -> dict[int, int]:
        """Cameras per shard for shards ``0..shards-1`` (placement reads this)."""
        loads = dict.fromkeys(range(shards), 0)
        with self._db.conn() as conn:
            for shard, n in conn.execute("SELECT shard, count(*) FROM streams GROUP BY shard"):
                if shard in loads:
                    loads[shard] = n
        return loads

    def report_status(self, node: str, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """A shard's heartbeat: the status of each of its live streams, stamped with the
        database's clock (API processes on other machines then compare like with like)."""
        if not statuses:
            return
        shard = self._shard if self._shard is not None else -1
        with self._db.conn() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO stream_status (stream_id, shard, node, status, reported_at) "
                "VALUES (%s, %s, %s, %s, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (stream_id) DO UPDATE SET shard = excluded.shard, "
                "node = excluded.node, status = excluded.status, "
                "reported_at = excluded.reported_at",
                [(sid, shard, node, Jsonb(dict(st))) for sid, st in statuses.items()],
            )

    def streams_with_status(self) -> list[dict[str, Any]]:
        """Every stream with its last reported status, the node that reported it and the
        report's age in seconds (``None`` when never reported)."""
        cols = ", ".join("s." + c for c in _STREAM_COLS.split(", "))
        sql = (
            f"SELECT {cols}, st.status, st.node, "
            "extract(epoch FROM clock_timestamp()) - st.reported_at "
            "FROM streams s LEFT JOIN stream_status st ON st.stream_id = s.id "
            "ORDER BY s.created_at, s.id"
        )
        with self._db.conn() as conn:
            rows = conn.execute(sql).fetchall()
        out: list[dict[str, Any]] = []
        for r in rows:
            age = r[10]
            out.append({**_stream_dict(r[:8]), "status": r[8], "node": r[9],
                        "status_age_s": None if age is None else float(age)})
        return out

    def set_setting(self, key: str, value: Any) -> None:
        with self._db.conn() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, Jsonb(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._db.conn() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()
        return default if row is None else row[0]

    def notify(self, channel: str, payload: Mapping[str, Any]) -> bool:
        """Send one small JSON payload to every listener; False if too big to send
        (NOTIFY's limit is 8000 bytes): callers then leave it to SQL."""
        # default=float: zone sums and counts may be NumPy scalars.
        text = json.dumps(payload, separators=(",", ":"), default=float)
        if len(text.encode()) > MAX_PAYLOAD:
            return False
        with self._db.conn() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, text))
        return True


class PostgresStore:
    """``Store`` in PostgreSQL: ``history``, ``streams``, ``alerts`` and ``cluster`` share
    one writer thread and a pool of connections. ``shard`` scopes it to one shard."""

    def __init__(
        self,
        dsn: str,
        *,
        shard: int | None = None,
        flush_interval: float = 0.5,
        batch_rows: int = 2000,
        max_pending: int = 200_000,
        connect_timeout: float = 5.0,
    ) -> None:
        common.check_writer_options(flush_interval, batch_rows, max_pending)
        self.dsn = dsn
        self.shard = shard
        self._db = _Db(dsn, flush_interval=float(flush_interval), batch_rows=int(batch_rows),
                       max_pending=int(max_pending), connect_timeout=connect_timeout)
        self.history = PostgresHistory(self._db)
        self.streams = PostgresStreams(self._db, shard)
        self.alerts = PostgresAlerts(self._db, shard)
        self.cluster = ClusterState(self._db, shard)

    def flush(self) -> int:
        return self._db.flush()

    def stats(self) -> StoreStats:
        db = self._db
        return StoreStats(pending=db.pending(), written=db.written, dropped=db.dropped,
                          last_error=db.last_error)

    @property
    def duplicates(self) -> int:
        """Rows skipped because the database already had them (replays, retries)."""
        return self._db.duplicates

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_dict(row: Any) -> dict[str, Any]:
    """A camera row: the ``SavedStream`` keys plus the cluster's ``shard`` and ``origin``."""
    sid, name, url, kind, options, created_at, shard, origin = row
    return {"id": sid, "name": name, "url": url, "kind": kind, "options": options or {},
            "created_at": created_at, "shard": shard, "origin": origin}
