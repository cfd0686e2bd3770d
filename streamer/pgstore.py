"""The cluster's store: count history, streams, alerts and settings in PostgreSQL.

It answers the same calls as the SQLite ``CountStore`` (the routes, the count sink and the
alert engine use either without knowing which), plus what a cluster needs on top: which
shard owns each camera, the per-stream status the shards report, and cluster settings
(alert rules, notifiers) that every shard loads.

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

``shard`` scopes a store to one shard's cameras: ``list_streams`` returns only them and
``close_open_alerts`` closes only theirs (another shard's open alerts are still live).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from crowdcount.model.types import Result

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

_RAISE_SQL = (
    "INSERT INTO alerts (stream, zone, rule, raised_at, cleared_at, peak) "
    "VALUES (%s, %s, %s, %s, NULL, %s) ON CONFLICT (stream, rule, raised_at) DO NOTHING"
)
_CLEAR_SQL = (
    "UPDATE alerts SET cleared_at = %s, peak = GREATEST(peak, %s) "
    "WHERE stream = %s AND rule = %s AND raised_at = %s"
)
_STREAM_COLS = "id, name, url, kind, options, created_at, shard, origin"


class PostgresStore:
    """PostgreSQL-backed history, streams and alerts; the API of ``CountStore``.

    ``add``/``add_count``/``add_alert``/``clear_alert`` never touch the network; every other
    method does I/O (call it through ``asyncio.to_thread`` from async code). Thread-safe.
    """

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
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if batch_rows < 1 or max_pending < batch_rows:
            raise ValueError("need 1 <= batch_rows <= max_pending")
        self.dsn = dsn
        self.shard = shard
        self.flush_interval = float(flush_interval)
        self.batch_rows = int(batch_rows)
        self.max_pending = int(max_pending)
        self._timeout = connect_timeout

        self._pending: list[_Row] = []
        self._pending_alerts: list[_AlertOp] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pool: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False

        self.written = 0
        self.dropped = 0
        self.duplicates = 0  # rows the database already had (a replay after a failover)
        self.last_error: str | None = None

        self._wconn = self._connect()
        with self._wconn.transaction():
            self._wconn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self._wconn.execute(_SCHEMA)
        self._thread = threading.Thread(target=self._run, name="pg-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(self._timeout))

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow an autocommit connection for one statement; broken ones are replaced."""
        if self._closed:
            raise RuntimeError("PostgresStore is closed")
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None or conn.closed:
            conn = self._connect()
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise
        else:
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
        """Queue one row (``t`` in unix seconds)."""
        if self._closed:
            raise RuntimeError("PostgresStore is closed")
        z = Jsonb({k: float(v) for k, v in zones.items()}) if zones else None
        row = (stream_id, float(t), float(count), float(smoothed), z)
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
        """Commit everything queued, in the caller's thread; the number of rows and alert
        changes sent. Raises the database error (rows stay queued for a retry)."""
        return self._commit_pending()

    def _commit_pending(self) -> int:
        with self._write_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
                alert_ops, self._pending_alerts = self._pending_alerts, []
            if not rows and not alert_ops:
                return 0
            try:
                if self._wconn.closed:
                    self._wconn = self._connect()
                inserted = 0
                with self._wconn.transaction(), self._wconn.cursor() as cur:
                    if rows:
                        cur.executemany(
                            "INSERT INTO counts (stream_id, t, count, smoothed, zones) "
                            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id, t) DO NOTHING",
                            rows,
                        )
                        inserted = max(cur.rowcount, 0)
                    for sql, args in alert_ops:
                        cur.execute(sql, args)
            except BaseException as exc:
                with self._pending_lock:
                    self._pending[:0] = rows
                    self._pending_alerts[:0] = alert_ops
                    excess = len(self._pending) - self.max_pending
                    if excess > 0:
                        del self._pending[:excess]
                        self.dropped += excess
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, psycopg.OperationalError):
                    self._wconn.close()
                raise
            self.written += inserted
            self.duplicates += len(rows) - inserted
            return len(rows) + len(alert_ops)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._commit_pending()
            except Exception as exc:
                log.error("event=store_commit_failed error=%r", str(exc).strip())
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
        except Exception as exc:
            log.error("event=store_close_commit_failed error=%r", str(exc).strip())
        finally:
            self._closed = True
            with self._pool_lock:
                conns, self._pool = self._pool, []
            for conn in [*conns, self._wconn]:
                conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        with self._pending_lock:
            pending = len(self._pending)
        return {
            "pending": pending,
            "written": self.written,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ count queries

    @staticmethod
    def _where(
        stream_id: str, since: float | None, until: float | None
    ) -> tuple[str, dict[str, Any]]:
        """``since`` inclusive, ``until`` exclusive, as in the SQLite store."""
        clauses, args = ["stream_id = %(sid)s"], {"sid": stream_id}
        if since is not None:
            clauses.append("t >= %(since)s")
            args["since"] = float(since)
        if until is not None:
            clauses.append("t < %(until)s")
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
        """History of one stream in ``[since, until)``, oldest first; the same rows and
        buckets (aligned to multiples of ``step`` since the epoch) as ``CountStore.counts``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        where, args = self._where(stream_id, since, until)
        if step is None:
            cols = "t, count, smoothed" + (", zones" if with_zones else "")
            sql = f"SELECT {cols} FROM counts WHERE {where} ORDER BY t DESC LIMIT %(limit)s"
            with self._reader() as conn:
                rows = conn.execute(sql, {**args, "limit": int(limit)}).fetchall()
            rows.reverse()
            out = []
            for r in rows:
                item: dict[str, Any] = {"t": r[0], "count": r[1], "smoothed": r[2]}
                if with_zones:
                    item["zones"] = r[3] or {}
                out.append(item)
            return out
        if not step > 0:
            raise ValueError("step must be > 0")
        sql = (
            "SELECT floor(t / %(step)s)::bigint AS b, AVG(count), AVG(smoothed), MIN(count), "
            f"MAX(count), COUNT(*) FROM counts WHERE {where} GROUP BY b ORDER BY b DESC "
            "LIMIT %(limit)s"
        )
        with self._reader() as conn:
            rows = conn.execute(sql, {**args, "step": float(step), "limit": int(limit)}).fetchall()
        rows.reverse()
        return [
            {"t": b * float(step), "count": mean, "smoothed": smean, "min": lo, "max": hi, "n": n}
            for b, mean, smean, lo, hi, n in rows
        ]

    def export_csv(
        self, stream_id: str, since: float | None = None, until: float | None = None
    ) -> str:
        """Raw rows in ``[since, until)`` as CSV ``t,count,smoothed`` (floats via ``repr``)."""
        where, args = self._where(stream_id, since, until)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("t", "count", "smoothed"))
        with self._reader() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT t, count, smoothed FROM counts WHERE {where} ORDER BY t", args)
            while batch := cur.fetchmany(5000):
                writer.writerows((repr(t), repr(c), repr(s)) for t, c, s in batch)
        return buf.getvalue()

    def delete_counts(self, stream_id: str | None = None, before: float | None = None) -> int:
        """Purge history (one stream or all, optionally only rows older than ``before``)."""
        clauses, args = [], []
        if stream_id is not None:
            clauses.append("stream_id = %s")
            args.append(stream_id)
        if before is not None:
            clauses.append("t < %s")
            args.append(float(before))
        where = " AND ".join(clauses) or "TRUE"
        with self._reader() as conn:
            return conn.execute(f"DELETE FROM counts WHERE {where}", args).rowcount

    # ------------------------------------------------------------------ alerts

    def add_alert(
        self, stream: str, zone: str | None, rule: str, raised_at: float, peak: float
    ) -> None:
        """Queue an alert raised at ``raised_at``; wakes the writer (alerts are rare)."""
        if self._closed:
            raise RuntimeError("PostgresStore is closed")
        with self._pending_lock:
            self._pending_alerts.append(
                (_RAISE_SQL, (stream, zone, rule, float(raised_at), float(peak)))
            )
        self._wake.set()

    def clear_alert(
        self, stream: str, rule: str, raised_at: float, cleared_at: float, peak: float
    ) -> None:
        """Queue the end of an alert; the stored peak only grows."""
        if self._closed:
            raise RuntimeError("PostgresStore is closed")
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
        """Alerts newest first, selected like ``CountStore.alerts``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        clauses, args = [], []
        if stream is not None:
            clauses.append("stream = %s")
            args.append(stream)
        if since is not None:
            clauses.append("(cleared_at IS NULL OR cleared_at >= %s)")
            args.append(float(since))
        if until is not None:
            clauses.append("raised_at < %s")
            args.append(float(until))
        if active is not None:
            clauses.append("cleared_at IS NULL" if active else "cleared_at IS NOT NULL")
        where = " AND ".join(clauses) or "TRUE"
        sql = (
            "SELECT id, stream, zone, rule, raised_at, cleared_at, peak FROM alerts "
            f"WHERE {where} ORDER BY raised_at DESC, id DESC LIMIT %s"
        )
        with self._reader() as conn:
            rows = conn.execute(sql, (*args, int(limit))).fetchall()
        keys = ("id", "stream", "zone", "rule", "raised_at", "cleared_at", "peak")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close_open_alerts(self, at: float) -> int:
        """Close the open alerts this store's process raised before it died: every open
        alert, or with ``shard`` only those of the shard's cameras."""
        self.flush()
        sql = "UPDATE alerts SET cleared_at = GREATEST(raised_at, %s) WHERE cleared_at IS NULL"
        args: tuple[Any, ...] = (float(at),)
        if self.shard is not None:
            sql += " AND stream IN (SELECT id FROM streams WHERE shard = %s)"
            args += (self.shard,)
        with self._reader() as conn:
            return conn.execute(sql, args).rowcount

    # ------------------------------------------------------------------ streams

    def save_stream(
        self,
        stream_id: str,
        name: str,
        url: str,
        kind: str,
        options: dict[str, Any] | None = None,
        *,
        shard: int | None = None,
        origin: str = "api",
    ) -> None:
        """Insert or update a stream (committed on return). An update keeps ``created_at``
        and the shard: a camera stays where it was placed. Notifies the API processes."""
        with self._reader() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO streams ({_STREAM_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, "
                "kind = excluded.kind, options = excluded.options",
                (stream_id, name, url, kind, Jsonb(options or {}), time.time(),
                 shard if shard is not None else self.shard or 0, origin),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))

    def delete_stream(self, stream_id: str) -> bool:
        """Forget a stream's configuration and status (history kept); True if it existed."""
        with self._reader() as conn, conn.transaction():
            n = conn.execute("DELETE FROM streams WHERE id = %s", (stream_id,)).rowcount
            conn.execute("DELETE FROM stream_status WHERE stream_id = %s", (stream_id,))
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
        return n > 0

    def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {_STREAM_COLS} FROM streams WHERE id = %s", (stream_id,)
            ).fetchone()
        return None if row is None else _stream_dict(row)

    def list_streams(self) -> list[dict[str, Any]]:
        """Saved streams oldest first (only this shard's when the store is scoped)."""
        sql = f"SELECT {_STREAM_COLS} FROM streams"
        args: tuple[Any, ...] = ()
        if self.shard is not None:
            sql += " WHERE shard = %s"
            args = (self.shard,)
        with self._reader() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [_stream_dict(r) for r in rows]

    def shard_loads(self, shards: int) -> dict[int, int]:
        """Cameras per shard for shards ``0..shards-1`` (placement reads this)."""
        loads = dict.fromkeys(range(shards), 0)
        with self._reader() as conn:
            for shard, n in conn.execute("SELECT shard, count(*) FROM streams GROUP BY shard"):
                if shard in loads:
                    loads[shard] = n
        return loads

    # ------------------------------------------------------------------ cluster state

    def report_status(self, node: str, statuses: dict[str, dict[str, Any]]) -> None:
        """A shard's heartbeat: the status of each of its live streams, stamped with the
        database's clock (so API processes on other machines compare like with like)."""
        if not statuses:
            return
        with self._reader() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO stream_status (stream_id, shard, node, status, reported_at) "
                "VALUES (%s, %s, %s, %s, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (stream_id) DO UPDATE SET shard = excluded.shard, "
                "node = excluded.node, status = excluded.status, "
                "reported_at = excluded.reported_at",
                [(sid, self.shard if self.shard is not None else -1, node, Jsonb(st))
                 for sid, st in statuses.items()],
            )

    def streams_with_status(self) -> list[dict[str, Any]]:
        """Every stream with its last reported status and its age in seconds (``None``
        when its shard never reported it)."""
        sql = (
            f"SELECT {', '.join('s.' + c for c in _STREAM_COLS.split(', '))}, "
            "st.status, st.node, extract(epoch FROM clock_timestamp()) - st.reported_at "
            "FROM streams s LEFT JOIN stream_status st ON st.stream_id = s.id "
            "ORDER BY s.created_at, s.id"
        )
        with self._reader() as conn:
            rows = conn.execute(sql).fetchall()
        out = []
        for r in rows:
            item = _stream_dict(r[:8])
            item["status"], item["node"], item["status_age_s"] = r[8], r[9], r[10]
            out.append(item)
        return out

    def set_setting(self, key: str, value: Any) -> None:
        with self._reader() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, Jsonb(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()
        return default if row is None else row[0]

    def notify(self, channel: str, payload: dict[str, Any]) -> bool:
        """Send one small JSON payload to every listener; False if it was too big to send
        (NOTIFY's limit is 8000 bytes), which callers treat as 'read it from SQL'."""
        text = json.dumps(payload, separators=(",", ":"))
        if len(text.encode()) > MAX_PAYLOAD:
            return False
        with self._reader() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, text))
        return True


def _stream_dict(row: Any) -> dict[str, Any]:
    sid, name, url, kind, options, created_at, shard, origin = row
    return {
        "id": sid,
        "name": name,
        "url": url,
        "kind": kind,
        "options": options or {},
        "created_at": created_at,
        "shard": shard,
        "origin": origin,
    }
