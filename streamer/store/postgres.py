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

Why the same write-behind writer as the SQLite store (``streamer.store.writer``): counts
arrive on the event loop at frame rate and a round trip to a database on another machine
costs milliseconds; rows in flight when a node dies are lost with it (they are inside the
outage the API reports). The records are ``streamer.store.common``'s, as in SQLite, rollups
and raw-row pruning included; this module adds the schema, how a batch commits (a
connection of a ``psycopg_pool`` pool) and what only a cluster keeps (``ClusterState``).

``shard`` scopes a store to one shard's cameras: ``streams.all`` returns only them and
``alerts.close_open`` closes only theirs (another shard's open alerts are still live).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from crowdcount.streamer.store import common
from crowdcount.streamer.store.base import SavedStream
from crowdcount.streamer.store.common import Dialect, SqlStore
from crowdcount.streamer.store.writer import Op, Row, Writer

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[Any]

POSTGRES = Dialect(
    ph="%({})s", pos="%s", floor_t="floor(c.t)::bigint", bucket="floor(t / {step})::bigint",
    zone_each="jsonb_each_text(c.zones) AS z", zone_value="z.value::float8",
    greatest="GREATEST", dump_json=Jsonb, load_json=lambda value: value,
    lock="SELECT pg_advisory_xact_lock(hashtextextended(%(lock)s, 0))",
)

#: LISTEN/NOTIFY channels: live feed items (counts and alerts), camera-registry changes
#: (payload: the camera's id) and settings changes (payload: ``rules``, ``zones:<stream>``
#: or ``setting:<key>:<stream>``). Registry and settings changes are announced inside
#: their transaction: a listener that hears one reads the change.
FEED_CHANNEL = "crowdcount_feed"
STREAMS_CHANNEL = "crowdcount_streams"
SETTINGS_CHANNEL = "crowdcount_settings"
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
CREATE TABLE IF NOT EXISTS counts_1s (
    stream_id TEXT NOT NULL, t BIGINT NOT NULL, n BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL, ssum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream_id, t)
);
CREATE TABLE IF NOT EXISTS counts_1m (LIKE counts_1s INCLUDING ALL);
CREATE TABLE IF NOT EXISTS zone_counts_1s (
    stream_id TEXT NOT NULL, zone TEXT NOT NULL, t BIGINT NOT NULL, n BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream_id, t, zone)
);
CREATE TABLE IF NOT EXISTS zone_counts_1m (LIKE zone_counts_1s INCLUDING ALL);
CREATE TABLE IF NOT EXISTS alert_rules (
    name TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    zone TEXT,
    above DOUBLE PRECISION NOT NULL,
    below DOUBLE PRECISION NOT NULL,
    for_seconds DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
-- what a rule watches (count, density, level); added after the first release
ALTER TABLE alert_rules ADD COLUMN IF NOT EXISTS metric TEXT NOT NULL DEFAULT 'count';
CREATE TABLE IF NOT EXISTS stream_zones (
    stream_id TEXT PRIMARY KEY,
    zones JSONB NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_settings (
    stream_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value JSONB NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream_id, key)
);
CREATE TABLE IF NOT EXISTS gathering (
    stream_id TEXT NOT NULL,
    start DOUBLE PRECISION NOT NULL,
    frames INTEGER NOT NULL,
    grid BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS gathering_stream_start ON gathering (stream_id, start);
-- which writer's part of a bucket a row is (see SqlGathering.add_bucket); added later
ALTER TABLE gathering ADD COLUMN IF NOT EXISTS part TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX IF NOT EXISTS gathering_part ON gathering (stream_id, start, part)
    WHERE part <> '';
CREATE TABLE IF NOT EXISTS gathering_reference (
    stream_id TEXT PRIMARY KEY,
    t DOUBLE PRECISION NOT NULL,
    jpeg BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS marked_frames (
    stream_id TEXT NOT NULL,
    id TEXT NOT NULL,
    captured_at DOUBLE PRECISION NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    model_count DOUBLE PRECISION NOT NULL,
    marks JSONB,
    jpeg BYTEA NOT NULL,
    density BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream_id, id)
);
CREATE TABLE IF NOT EXISTS calibration_models (
    stream_id TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    model BYTEA NOT NULL,
    saved_at DOUBLE PRECISION NOT NULL
);
"""
# Any constant: serialises schema creation when several processes start at once (CREATE
# TABLE IF NOT EXISTS alone races on the catalog).
_SCHEMA_LOCK = 0x63726F77
# Serialises camera additions: the name check, the count against ``max_streams`` and the
# insert are one decision (two API processes adding at once must not both pass).
_REGISTRY_LOCK = 0x63616D73

#: What ``PostgresStreams.register`` did.
Registered = Literal["added", "updated", "name_taken", "limit_reached"]

_STREAM_COLS = "id, name, url, kind, options, created_at, shard, origin"


def _open_schema(dsn: str, connect_timeout: float) -> None:
    """Create what is missing; a database from before the rollups gets them from its raw
    rows, one whose API cameras kept zones in their rows gets them in the settings. A plain
    connection, not the pool's: a wrong DSN or a refused password is then
    raised as the server said it, not as a pool timeout."""
    with (psycopg.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout)) as conn,
          conn.transaction()):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('counts') IS NOT NULL AND "
                           "to_regclass('counts_1s') IS NULL").fetchone()
        conn.execute(_SCHEMA)
        if row is not None and row[0]:
            common.rebuild_rollups(POSTGRES, conn)
        common.move_saved_options(POSTGRES, conn, " WHERE origin = 'api'")


class _Batches:
    """How a batch commits in PostgreSQL: one transaction on a pooled connection (a broken
    one is discarded by the pool and the batch retried on a fresh one)."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool

    def commit(self, rows: Sequence[Row], ops: Sequence[Op]) -> int:
        def batch(conn: Conn) -> int:
            with conn.cursor() as cur:
                def insert(sql: str, many: Sequence[Row]) -> int:
                    cur.executemany(sql, many)
                    return max(cur.rowcount, 0)

                return common.write_batch(POSTGRES, conn, rows, ops, insert)

        return self.transaction(batch)

    def transaction(self, fn: Callable[[Conn], T]) -> T:
        with self.pool.connection() as conn, conn.transaction():
            return fn(conn)


class PostgresStreams:
    """``StreamRegistry`` on the ``streams`` table, plus each camera's shard and origin.
    Every change is announced on ``STREAMS_CHANNEL`` (in its transaction, so a listener that
    hears it reads the change)."""

    def __init__(self, writer: Writer[Conn], fetch: common.Fetch, shard: int | None) -> None:
        self._writer = writer
        self._fetch = fetch
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
        args = (stream_id, name, url, kind, Jsonb(dict(options or {})), time.time(), placed,
                origin)

        def upsert(conn: Conn) -> None:
            conn.execute(
                f"INSERT INTO streams ({_STREAM_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, url = excluded.url, "
                "kind = excluded.kind, options = excluded.options", args)
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))

        self._writer.call(upsert)

    def register(
        self, stream_id: str, url: str, kind: str, options: Mapping[str, Any], *,
        origin: str, shards: int, place: Callable[[Mapping[int, int]], int],
        limit: int | None,
    ) -> Registered:
        """Add a camera in one transaction: refused if the name is taken (a config-file
        camera registered again is updated in place instead) or the registry already holds
        ``limit`` cameras; placed on ``place(cameras per shard)``. Announced on
        ``STREAMS_CHANNEL``."""
        opts = Jsonb(dict(options))

        def register(conn: Conn) -> Registered:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_LOCK,))
            row = conn.execute("SELECT origin FROM streams WHERE id = %s",
                               (stream_id,)).fetchone()
            if row is not None:
                if not origin == row[0] == "config":
                    return "name_taken"
                conn.execute("UPDATE streams SET url = %s, kind = %s, options = %s "
                             "WHERE id = %s", (url, kind, opts, stream_id))
                conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
                return "updated"
            loads = dict.fromkeys(range(shards), 0)
            total = 0
            for shard, n in conn.execute("SELECT shard, count(*) FROM streams GROUP BY shard"):
                total += n
                if shard in loads:
                    loads[shard] = n
            if limit is not None and total >= limit:
                return "limit_reached"
            conn.execute(
                f"INSERT INTO streams ({_STREAM_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (stream_id, stream_id, url, kind, opts, time.time(), place(loads), origin))
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
            return "added"

        return self._writer.call(register)

    def update(self, stream_id: str, url: str, kind: str, options: Mapping[str, Any]) -> bool:
        """Edit a camera in place (same shard, same origin); False if it is gone. An update
        never re-creates a camera that another process removed meanwhile."""
        def update(conn: Conn) -> bool:
            n = conn.execute("UPDATE streams SET url = %s, kind = %s, options = %s "
                             "WHERE id = %s", (url, kind, Jsonb(dict(options)), stream_id)
                             ).rowcount
            if n:
                conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
            return bool(n)

        return self._writer.call(update)

    def delete(self, stream_id: str) -> bool:
        """Also forgets its last reported status."""
        def delete(conn: Conn) -> int:
            n = conn.execute("DELETE FROM streams WHERE id = %s", (stream_id,)).rowcount
            conn.execute("DELETE FROM stream_status WHERE stream_id = %s", (stream_id,))
            conn.execute("SELECT pg_notify(%s, %s)", (STREAMS_CHANNEL, stream_id))
            return n

        return self._writer.call(delete) > 0

    def get(self, stream_id: str) -> SavedStream | None:
        rows = self._fetch(f"SELECT {_STREAM_COLS} FROM streams WHERE id = %(id)s",
                           {"id": stream_id})
        return cast(SavedStream, _stream_dict(rows[0])) if rows else None

    def shard_of(self, stream_id: str) -> int | None:
        """The shard a saved camera was placed on (``None``: no such camera)."""
        rows = self._fetch("SELECT shard FROM streams WHERE id = %(id)s", {"id": stream_id})
        return int(rows[0][0]) if rows else None

    def all(self) -> list[SavedStream]:
        """Only this shard's cameras when the store is scoped to one."""
        where = "" if self._shard is None else " WHERE shard = %(shard)s"
        rows = self._fetch(f"SELECT {_STREAM_COLS} FROM streams{where} ORDER BY created_at, id",
                           {"shard": self._shard})
        return [cast(SavedStream, _stream_dict(r)) for r in rows]


class ClusterState:
    """What only a cluster keeps: shard loads, the shards' status reports, settings shared
    by every shard, and NOTIFY."""

    def __init__(self, pool: ConnectionPool[Conn], shard: int | None) -> None:
        self._pool = pool
        self._shard = shard

    def shard_loads(self, shards: int) -> dict[int, int]:
        """Cameras per shard for shards ``0..shards-1`` (placement reads this)."""
        loads = dict.fromkeys(range(shards), 0)
        with self._pool.connection() as conn:
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
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO stream_status (stream_id, shard, node, status, reported_at) "
                "VALUES (%s, %s, %s, %s, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (stream_id) DO UPDATE SET shard = excluded.shard, "
                "node = excluded.node, status = excluded.status, "
                "reported_at = excluded.reported_at",
                [(sid, shard, node, Jsonb(dict(st))) for sid, st in statuses.items()],
            )

    def streams_with_status(self) -> list[dict[str, Any]]:
        """Every stream with its last reported status, the node that reported it, the
        report's age in seconds (``None`` when never reported), and what the settings hold
        for it: ``zones`` (``None``: none saved) and ``settings`` (its per-stream settings,
        ``{key: value}``), so that one query reads all an API process shows."""
        cols = ", ".join("s." + c for c in _STREAM_COLS.split(", "))
        sql = (
            f"SELECT {cols}, st.status, st.node, "
            "extract(epoch FROM clock_timestamp()) - st.reported_at, z.zones, "
            "(SELECT jsonb_object_agg(ss.key, ss.value) FROM stream_settings ss "
            " WHERE ss.stream_id = s.id) "
            "FROM streams s LEFT JOIN stream_status st ON st.stream_id = s.id "
            "LEFT JOIN stream_zones z ON z.stream_id = s.id "
            "ORDER BY s.created_at, s.id"
        )
        with self._pool.connection() as conn:
            rows = conn.execute(sql).fetchall()
        out: list[dict[str, Any]] = []
        for r in rows:
            age = r[10]
            out.append({**_stream_dict(r[:8]), "status": r[8], "node": r[9],
                        "status_age_s": None if age is None else float(age),
                        "zones": r[11], "settings": r[12] or {}})
        return out

    def set_setting(self, key: str, value: Any) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, Jsonb(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()
        return default if row is None else row[0]

    def notify(self, channel: str, payload: Mapping[str, Any]) -> bool:
        """Send one small JSON payload to every listener; False if too big to send
        (NOTIFY's limit is 8000 bytes): callers then leave it to SQL."""
        # default=float: zone sums and counts may be NumPy scalars.
        text = json.dumps(payload, separators=(",", ":"), default=float)
        if len(text.encode()) > MAX_PAYLOAD:
            return False
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, text))
        return True


class PostgresStore(SqlStore):
    """``Store`` in PostgreSQL: ``history``, ``streams``, ``alerts``, ``settings``,
    ``gathering``, ``calibration`` and ``cluster`` share one writer and a pool of
    connections. ``shard`` scopes it to one shard."""

    def __init__(
        self,
        dsn: str,
        *,
        shard: int | None = None,
        flush_interval: float = 0.5,
        batch_rows: int = 2000,
        max_pending: int = 200_000,
        connect_timeout: float = 5.0,
        pool_size: int = 8,
    ) -> None:
        self.dsn = dsn
        self.shard = shard
        _open_schema(dsn, connect_timeout)
        pool: ConnectionPool[Conn] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, timeout=connect_timeout, open=True,
            kwargs={"autocommit": True, "connect_timeout": int(connect_timeout)},
            name="crowdcount-store")
        self._pool = pool
        try:
            writer = Writer(_Batches(pool), flush_interval=flush_interval,
                            batch_rows=batch_rows, max_pending=max_pending,
                            name="pg-store-writer")
        except BaseException:
            pool.close()
            raise
        scope = ("", {}) if shard is None else (
            " AND stream IN (SELECT id FROM streams WHERE shard = %(shard)s)", {"shard": shard})
        super().__init__(POSTGRES, self._fetch, writer, alert_scope=scope, announce=_announce)
        self.streams = PostgresStreams(writer, self._fetch, shard)
        self.cluster = ClusterState(pool, shard)

    def _fetch(self, sql: str, args: Mapping[str, Any]) -> list[Any]:
        if self._closed:
            raise RuntimeError("store is closed")
        with self._pool.connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _release(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self


class Listener:
    """LISTEN on ``channels`` from a thread of its own (psycopg's ``notifies`` blocks) and
    hand each notification to ``loop`` as ``on_note(channel, payload)``.

    The one way shards and API processes hear of changes. ``on_connect()`` runs on the loop
    each time the connection is (re)opened, because what was announced while it was down
    is lost: the listener re-reads then, and needs no periodic resync.
    """

    def __init__(
        self, dsn: str, channels: Sequence[str], loop: asyncio.AbstractEventLoop,
        on_note: Callable[[str, str], None], on_connect: Callable[[], None], *, name: str,
    ) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._loop = loop
        self._on_note = on_note
        self._on_connect = on_connect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    for channel in self._channels:
                        conn.execute(f"LISTEN {channel}")
                    self._loop.call_soon_threadsafe(self._on_connect)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._loop.call_soon_threadsafe(self._on_note, note.channel,
                                                            note.payload)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.error("event=listen_failed channels=%s error=%r", ",".join(self._channels),
                          " ".join(str(exc).split()))
                self._stop.wait(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (blocks up to ``timeout`` for the thread)."""
        self._stop.set()
        self._thread.join(timeout)


def _announce(conn: common.SqlConn, what: str) -> None:
    """A settings change, heard by every shard and API process (``SETTINGS_CHANNEL``)."""
    conn.execute("SELECT pg_notify(%s, %s)", (SETTINGS_CHANNEL, what))


def _stream_dict(row: Any) -> dict[str, Any]:
    """A camera row: the ``SavedStream`` keys plus the cluster's ``shard`` and ``origin``."""
    sid, name, url, kind, options, created_at, shard, origin = row
    return {"id": sid, "name": name, "url": url, "kind": kind, "options": options or {},
            "created_at": created_at, "shard": shard, "origin": origin}
