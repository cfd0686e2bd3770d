"""What the SQLite and PostgreSQL stores share, written once: every record but the camera
registry.

The two stores keep the same records with the same contract (``streamer.store.base``) and
the same write-behind writer (``streamer.store.writer``); they differ in how they reach the
database (SQLite: one connection for the writer and ``query_only`` readers; PostgreSQL: a
``psycopg_pool`` pool) and in a few spellings, which a ``Dialect`` names: a parameter,
``floor`` of a time, the JSON functions and how JSON values are stored (text; JSONB).
Everything else lives here, once: the history with its per-second and per-minute rollups
and raw-row pruning, the alert log, the settings (rules, zones, per-stream JSON state), the
gathering grids and calibration's marked frames and models. Both dialects accept
``INSERT ... ON CONFLICT ... DO UPDATE``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from crowdcount.streamer.store.base import FLOOR_KEY, AlertRow, CountRow, MarkedFrame, StoreStats
from crowdcount.streamer.store.writer import Op, Row, Writer

#: A dialect's named parameter as a format of its name: ``":{}"`` (SQLite) or ``"%({})s"``
#: (psycopg).
Placeholder = str
#: Run one read query with named arguments on a pooled connection; all its rows.
Fetch = Callable[[str, Mapping[str, Any]], list[Any]]

_ALERT_COLS = "id, stream, zone, rule, raised_at, cleared_at, peak"


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be >= 1")


def range_where(
    ph: Placeholder,
    stream_id: str,
    since: float | None,
    until: float | None,
    *,
    after: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """One stream's rows in ``[since, until)`` (and ``t > after``).

    With ``after`` at or past ``since``, ``since`` adds nothing and is left out: with both
    lower bounds SQLite seeks the index on ``since`` and filters ``after`` row by row, which
    makes paging an export quadratic.
    """
    if after is not None and since is not None and after < since:
        after = None
    elif after is not None:
        since = None
    clauses = [f"stream_id = {ph.format('sid')}"]
    args: dict[str, Any] = {"sid": stream_id}
    for name, op, value in (("since", ">=", since), ("until", "<", until), ("after", ">", after)):
        if value is not None:
            clauses.append(f"t {op} {ph.format(name)}")
            args[name] = float(value)
    return " AND ".join(clauses), args


def delete_where(
    ph: Placeholder, stream_id: str | None, before: float | None
) -> tuple[str, dict[str, Any]]:
    """One stream or all, optionally only rows older than ``before``."""
    clauses: list[str] = []
    args: dict[str, Any] = {}
    if stream_id is not None:
        clauses.append(f"stream_id = {ph.format('sid')}")
        args["sid"] = stream_id
    if before is not None:
        clauses.append(f"t < {ph.format('before')}")
        args["before"] = float(before)
    return " AND ".join(clauses) or "TRUE", args


def raw_count_items(
    rows_newest_first: Sequence[Sequence[Any]],
    zones: Callable[[Any], dict[str, float]] | None,
) -> list[dict[str, Any]]:
    """``(t, count, smoothed[, zones])`` rows, newest first as the query limits them, as the
    oldest-first items ``counts`` returns; ``zones`` decodes the stored zones column."""
    out = []
    for r in reversed(rows_newest_first):
        item: dict[str, Any] = {"t": r[0], "count": r[1], "smoothed": r[2]}
        if zones is not None:
            item["zones"] = zones(r[3])
        out.append(item)
    return out


def bucket_items(rows: Iterable[Sequence[Any]], step: float) -> list[dict[str, Any]]:
    """``(bucket, mean, smoothed mean, min, max, n)`` rows as ``counts`` items."""
    return [
        {"t": float(b * step), "count": mean, "smoothed": smean, "min": lo, "max": hi, "n": n}
        for b, mean, smean, lo, hi, n in rows
    ]


def add_zone_stats(
    items: Sequence[dict[str, Any]],
    buckets: Sequence[Any],
    zone_rows: Iterable[Sequence[Any]],
) -> None:
    """Give each bucket item ``zones`` (means), ``zones_min`` and ``zones_max`` from
    ``(bucket, zone, mean, min, max)`` rows; ``buckets[i]`` is ``items[i]``'s bucket."""
    by_bucket = dict(zip(buckets, items, strict=True))
    for item in items:
        item.update(zones={}, zones_min={}, zones_max={})
    for b, zone, mean, lo, hi in zone_rows:
        owner = by_bucket.get(b)
        if owner is not None:
            owner["zones"][zone] = mean
            owner["zones_min"][zone] = lo
            owner["zones_max"][zone] = hi


class SqlStore:
    """A store's shared records (history, alerts, settings, gathering, calibration) and its
    writer's lifecycle (``Store.flush``, ``stats``, ``close``); a database adds its camera
    registry and ``_release`` (its connections, after the writer's last commit).
    ``alert_scope`` and ``announce`` are ``SqlAlerts``' scope and ``SqlSettings``'
    announcement (a cluster's)."""

    def __init__(
        self, d: Dialect, fetch: Fetch, writer: Writer[Any], *,
        alert_scope: tuple[str, Mapping[str, Any]] = ("", {}),
        announce: Callable[[SqlConn, str], None] | None = None,
    ) -> None:
        self._writer = writer
        self._closed = False
        self.history = SqlHistory(d, fetch, writer)
        self.alerts = SqlAlerts(d, fetch, writer, alert_scope)
        self.settings = SqlSettings(d, fetch, writer, announce=announce)
        self.gathering = SqlGathering(d, fetch, writer)
        self.calibration = SqlCalibration(d, fetch, writer)

    def flush(self) -> int:
        return self._writer.flush()

    def stats(self) -> StoreStats:
        return self._writer.stats()

    def close(self) -> None:
        """Commit what is queued, then release every connection; idempotent. Raises the
        final commit's error (``Writer.close``)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqlConn(Protocol):
    """The part of a DB-API connection the shared code uses (``sqlite3`` and ``psycopg``
    connections both return a cursor with ``rowcount``, ``fetchone`` and ``fetchall``)."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """How one database spells what the shared SQL needs."""

    #: A named parameter as a format of its name: ``":{}"`` or ``"%({})s"``.
    ph: Placeholder
    #: A positional parameter (``executemany`` of count rows): ``"?"`` or ``"%s"``.
    pos: str
    #: ``floor(c.t)`` as an integer, for the counts alias ``c``.
    floor_t: str
    #: ``floor(t / step)`` as an integer; ``{step}`` is the step's parameter.
    bucket: str
    #: A FROM item giving the ``key``/``value`` of the zones of the counts alias ``c`` as
    #: ``z``, and ``z``'s value as a float.
    zone_each: str
    zone_value: str
    #: The larger of two values (``MAX`` takes two arguments only in SQLite).
    greatest: str
    #: A JSON value as the database stores it, and back.
    dump_json: Callable[[Any], Any]
    load_json: Callable[[Any], Any]
    #: A statement that locks the key given as its ``lock`` parameter until the transaction
    #: ends, so that a check and the write it allows are one step for every process (the
    #: check after it sees the other's commit under PostgreSQL's default READ COMMITTED).
    #: Empty where one process's writer thread is the only writer (SQLite serves one box).
    lock: str = ""

    def p(self, name: str) -> str:
        return self.ph.format(name)


_T_LIMIT = 2**62  # range ends beyond this (a client's 1e300) are "unbounded"


def _clamp_t(t: float) -> int:
    """``t`` as a whole number of seconds within the integers the databases store."""
    return int(min(max(t, -_T_LIMIT), _T_LIMIT))
_ROLLUP_TABLES = ("counts_1s", "counts_1m", "zone_counts_1s", "zone_counts_1m")
_RULE_COLS = ("name", "stream", "zone", "above", "below", "for_seconds", "metric")


def _rollup_sql(d: Dialect, scoped: bool) -> tuple[str, ...]:
    """The statements that recompute the rollups of one stream's ``[lo, hi)`` seconds and
    ``[mlo, mhi)`` minutes (``scoped``), or of everything (a migration).

    Why recompute rather than add: the inserts are idempotent, so a replayed batch must
    change nothing; recomputing a second from its raw rows keeps the rollups exact.
    """
    def where(lo: str, hi: str, alias: str = "") -> str:
        if not scoped:
            return "TRUE"
        return (f"{alias}stream_id = {d.p('sid')} AND {alias}t >= {d.p(lo)} "
                f"AND {alias}t < {d.p(hi)}")

    def upsert(table: str, key: str, cols: str) -> str:
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols.split(", "))
        return f" ON CONFLICT ({key}) DO UPDATE SET {sets}"

    totals = "n, sum, min, max, ssum"
    zones = "n, sum, min, max"
    v = d.zone_value
    return (
        f"INSERT INTO counts_1s (stream_id, t, {totals}) "
        f"SELECT c.stream_id, {d.floor_t} AS s, COUNT(*), SUM(c.count), MIN(c.count), "
        f"MAX(c.count), SUM(c.smoothed) FROM counts AS c WHERE {where('lo', 'hi', 'c.')} "
        "GROUP BY c.stream_id, s" + upsert("counts_1s", "stream_id, t", totals),
        f"INSERT INTO zone_counts_1s (stream_id, zone, t, {zones}) "
        f"SELECT c.stream_id, z.key, {d.floor_t} AS s, COUNT(*), SUM({v}), MIN({v}), "
        f"MAX({v}) FROM counts AS c, {d.zone_each} WHERE {where('lo', 'hi', 'c.')} "
        "AND c.zones IS NOT NULL GROUP BY c.stream_id, z.key, s"
        + upsert("zone_counts_1s", "stream_id, t, zone", zones),
        f"INSERT INTO counts_1m (stream_id, t, {totals}) "
        "SELECT stream_id, (t / 60) * 60 AS m, SUM(n), SUM(sum), MIN(min), MAX(max), "
        f"SUM(ssum) FROM counts_1s WHERE {where('mlo', 'mhi')} GROUP BY stream_id, m"
        + upsert("counts_1m", "stream_id, t", totals),
        f"INSERT INTO zone_counts_1m (stream_id, zone, t, {zones}) "
        "SELECT stream_id, zone, (t / 60) * 60 AS m, SUM(n), SUM(sum), MIN(min), MAX(max) "
        f"FROM zone_counts_1s WHERE {where('mlo', 'mhi')} GROUP BY stream_id, zone, m"
        + upsert("zone_counts_1m", "stream_id, t, zone", zones),
    )


def write_batch(d: Dialect, conn: SqlConn, rows: Sequence[Row], ops: Sequence[Op],
                executemany: Callable[[str, Sequence[Row]], int]) -> int:
    """One batch inside the caller's transaction: the rows (a ``(stream_id, t)`` already
    stored is skipped), the rollups of the seconds and minutes they touch, then the alert
    changes; how many rows were new. ``executemany`` runs the insert and returns the rows
    it changed."""
    inserted = 0
    if rows:
        inserted = executemany(
            f"INSERT INTO counts (stream_id, t, count, smoothed, zones) VALUES "
            f"({', '.join([d.pos] * 5)}) ON CONFLICT (stream_id, t) DO NOTHING", rows)
        spans: dict[str, tuple[float, float]] = {}
        for sid, t, *_ in rows:
            if not -_T_LIMIT < t < _T_LIMIT:  # NaN, inf, absurd: stored raw, never rolled up
                continue
            lo, hi = spans.get(sid, (t, t))
            spans[sid] = (min(lo, t), max(hi, t))
        for sid, (lo, hi) in spans.items():
            s_lo, s_hi = math.floor(lo), math.floor(hi) + 1
            args = {"sid": sid, "lo": s_lo, "hi": s_hi, "mlo": (s_lo // 60) * 60,
                    "mhi": ((s_hi - 1) // 60) * 60 + 60}
            for sql in _rollup_sql(d, scoped=True):
                conn.execute(sql, args)
    for sql, op_args in ops:
        conn.execute(sql, op_args)
    return inserted


def rebuild_rollups(d: Dialect, conn: SqlConn) -> None:
    """Every rollup from the raw rows (a database that had counts before it had rollups)."""
    for table in _ROLLUP_TABLES:
        conn.execute(f"DELETE FROM {table}")
    for sql in _rollup_sql(d, scoped=False):
        conn.execute(sql)


def move_saved_options(d: Dialect, conn: SqlConn, api_rows: str = "") -> int:
    """Move zones and a floor calibration out of API cameras' saved options into the
    settings (``api_rows``: the SQL condition that picks them; a cluster's registry holds
    config-file cameras too, whose options are their definition and stay). Earlier builds
    kept a copy in both; the settings are now their one record, and a copy in the options
    would come back as the stream's definition. What the settings already hold wins (it was
    the later write). Returns the rows changed; run in a transaction when opening."""
    p = d.p
    rows = conn.execute(f"SELECT id, options FROM streams{api_rows}").fetchall()
    moved = 0
    for sid, raw in rows:
        options = d.load_json(raw) if raw else {}
        if not isinstance(options, dict) or not {"zones", "floor"} & set(options):
            continue
        now = time.time()
        if "zones" in options:
            conn.execute(
                f"INSERT INTO stream_zones (stream_id, zones, updated_at) VALUES ({p('sid')}, "
                f"{p('zones')}, {p('now')}) ON CONFLICT (stream_id) DO NOTHING",
                {"sid": sid, "zones": d.dump_json(options.pop("zones") or []), "now": now})
        if "floor" in options:
            conn.execute(
                f"INSERT INTO stream_settings (stream_id, key, value, updated_at) VALUES "
                f"({p('sid')}, {p('key')}, {p('value')}, {p('now')}) "
                "ON CONFLICT (stream_id, key) DO NOTHING",
                {"sid": sid, "key": FLOOR_KEY, "value": d.dump_json(options.pop("floor")),
                 "now": now})
        conn.execute(f"UPDATE streams SET options = {p('options')} WHERE id = {p('sid')}",
                     {"options": d.dump_json(options), "sid": sid})
        moved += 1
    return moved


class SqlHistory:
    """``CountHistory`` on the ``counts`` table and its rollups (``counts_1s``/``_1m`` and
    their ``zone_`` twins, kept by ``write_batch``). A whole-second ``step`` is answered from
    the rollups, so it stays fast and works after ``prune_raw``."""

    def __init__(self, d: Dialect, fetch: Fetch, writer: Writer[Any]) -> None:
        self._d = d
        self._fetch = fetch
        self._writer = writer

    def add(
        self,
        stream_id: str,
        t: float,
        count: float,
        smoothed: float,
        zones: Mapping[str, float] | None = None,
    ) -> None:
        # float(): the runtime's zone sums are NumPy scalars, which JSON cannot encode.
        z = self._d.dump_json({k: float(v) for k, v in zones.items()}) if zones else None
        self._writer.add_row((stream_id, float(t), float(count), float(smoothed), z))

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
        check_limit(limit)
        d = self._d
        if step is not None:
            if not step > 0:
                raise ValueError("step must be > 0")
            # A step past 64-bit integers (a whole history in one bucket, in effect) takes
            # the raw path, which copes.
            if 1 <= step < _T_LIMIT and float(step).is_integer():
                return self._rolled_up(stream_id, since, until, int(step), int(limit),
                                       with_zones)
            return self._bucketed(stream_id, since, until, float(step), int(limit),
                                  with_zones)
        where, args = range_where(d.ph, stream_id, since, until)
        cols = "t, count, smoothed" + (", zones" if with_zones else "")
        sql = (f"SELECT {cols} FROM counts WHERE {where} ORDER BY t DESC "
               f"LIMIT {d.p('limit')}")
        rows = self._fetch(sql, {**args, "limit": int(limit)})
        return raw_count_items(rows, self._zones if with_zones else None)

    def _zones(self, value: Any) -> dict[str, float]:
        return self._d.load_json(value) if value else {}

    def _bucketed(
        self, stream_id: str, since: float | None, until: float | None, step: float,
        limit: int, with_zones: bool,
    ) -> list[dict[str, Any]]:
        """Any step, aggregated from the raw rows."""
        d = self._d
        where, args = range_where(d.ph, stream_id, since, until)
        bucket = d.bucket.format(step=d.p("step"))
        named = {**args, "step": step, "limit": limit}
        sql = (
            f"SELECT {bucket} AS b, AVG(count), AVG(smoothed), MIN(count), MAX(count), "
            f"COUNT(*) FROM counts WHERE {where} GROUP BY b ORDER BY b DESC "
            f"LIMIT {d.p('limit')}"
        )
        # Per zone, over the rows that have it (zones come and go). (t and stream_id are
        # the counts' alone: the zone items have key and value.)
        zsql = (
            f"SELECT {bucket} AS b, z.key, AVG({d.zone_value}), MIN({d.zone_value}), "
            f"MAX({d.zone_value}) FROM counts AS c, {d.zone_each} "
            f"WHERE {where} AND c.zones IS NOT NULL AND t >= {d.p('first')} GROUP BY b, z.key"
        )
        return self._stepped(sql, zsql if with_zones else None, named, step)

    def _rolled_up(
        self, stream_id: str, since: float | None, until: float | None, step: int, limit: int,
        with_zones: bool,
    ) -> list[dict[str, Any]]:
        """A whole-second ``step`` from the coarsest rollup whose unit divides it; the range
        is taken at that unit (``since`` rounded down to it)."""
        d = self._d
        unit = 60 if step % 60 == 0 else 1
        suffix = "1m" if unit == 60 else "1s"
        # Clamped on both sides: a range wholly past the limits (since=1e286, found by
        # Schemathesis) would otherwise reach the database as an integer it cannot hold.
        lo = -_T_LIMIT if since is None else _clamp_t(math.floor(_clamp_t(since) / unit) * unit)
        hi = _T_LIMIT if until is None else _clamp_t(math.ceil(_clamp_t(until)))
        args = {"sid": stream_id, "lo": lo, "hi": hi, "step": step, "limit": limit}
        # Integer division floors for t >= 0; a negative t is shifted to floor too.
        bucket = (f"((t - CASE WHEN t < 0 THEN {d.p('step')} - 1 ELSE 0 END) "
                  f"/ {d.p('step')})")
        scope = f"stream_id = {d.p('sid')} AND t >= {d.p('lo')} AND t < {d.p('hi')}"
        sql = (
            f"SELECT {bucket} AS b, SUM(sum) / SUM(n), SUM(ssum) / SUM(n), MIN(min), MAX(max), "
            f"CAST(SUM(n) AS BIGINT) FROM counts_{suffix} WHERE {scope} "
            f"GROUP BY b ORDER BY b DESC LIMIT {d.p('limit')}"
        )
        zsql = (
            f"SELECT {bucket} AS b, zone, SUM(sum) / SUM(n), MIN(min), MAX(max) "
            f"FROM zone_counts_{suffix} WHERE {scope} AND t >= {d.p('first')} "
            "GROUP BY b, zone"
        )
        return self._stepped(sql, zsql if with_zones else None, args, step)

    def _stepped(self, sql: str, zsql: str | None, args: Mapping[str, Any],
                 step: float) -> list[dict[str, Any]]:
        """Bucket items from ``sql`` (newest first, as the limit keeps them), with the zone
        statistics of ``zsql`` when given (read from the oldest kept bucket on)."""
        rows = self._fetch(sql, args)
        rows.reverse()
        out = bucket_items(rows, step)
        if zsql is not None and rows:
            # One bucket early: a float bucket start may round past its first row.
            first = (rows[0][0] - 1) * step
            add_zone_stats(out, [r[0] for r in rows], self._fetch(zsql, {**args, "first": first}))
        return out

    def rows(
        self,
        stream_id: str,
        since: float | None = None,
        until: float | None = None,
        *,
        after: float | None = None,
        limit: int = 5000,
    ) -> list[CountRow]:
        check_limit(limit)
        d = self._d
        where, args = range_where(d.ph, stream_id, since, until, after=after)
        sql = (f"SELECT t, count, smoothed FROM counts WHERE {where} ORDER BY t "
               f"LIMIT {d.p('limit')}")
        return [(t, c, sm) for t, c, sm in self._fetch(sql, {**args, "limit": int(limit)})]

    def delete(self, stream_id: str | None = None, before: float | None = None) -> int:
        where, args = delete_where(self._d.ph, stream_id, before)

        def purge(conn: SqlConn) -> int:
            deleted: int = conn.execute(f"DELETE FROM counts WHERE {where}", args).rowcount
            for table in _ROLLUP_TABLES:  # a minute starting before ``before`` goes too
                conn.execute(f"DELETE FROM {table} WHERE {where}", args)
            return deleted

        return self._writer.call(purge)

    def prune_raw(self, before: float) -> int:
        """Delete raw rows older than ``before`` and keep their rollups: charts of old
        ranges read the rollups; only sub-second detail and the raw CSV of them go."""
        sql = f"DELETE FROM counts WHERE t < {self._d.p('before')}"
        return self._writer.call(
            lambda conn: int(conn.execute(sql, {"before": float(before)}).rowcount))


class SqlAlerts:
    """``AlertLog`` on the ``alerts`` table. Raises and clears go through the counts' queue
    and transaction, so they are never reordered and the loop never waits on the database;
    they are not subject to ``max_pending`` (there are few). ``scope`` (SQL and its
    arguments) limits ``close_open`` to some streams (a cluster shard's)."""

    def __init__(self, d: Dialect, fetch: Fetch, writer: Writer[Any],
                 scope: tuple[str, Mapping[str, Any]] = ("", {})) -> None:
        self._d = d
        self._fetch = fetch
        self._writer = writer
        self._scope = scope
        p = d.p
        self._raise_sql = (
            "INSERT INTO alerts (stream, zone, rule, raised_at, cleared_at, peak) VALUES "
            f"({p('stream')}, {p('zone')}, {p('rule')}, {p('raised_at')}, NULL, {p('peak')}) "
            "ON CONFLICT (stream, rule, raised_at) DO NOTHING")
        self._clear_sql = (
            f"UPDATE alerts SET cleared_at = {p('cleared_at')}, "
            f"peak = {d.greatest}(peak, {p('peak')}) WHERE stream = {p('stream')} "
            f"AND rule = {p('rule')} AND raised_at = {p('raised_at')}")

    def raised(
        self, stream: str, zone: str | None, rule: str, raised_at: float, peak: float
    ) -> None:
        self._writer.add_op(self._raise_sql, {"stream": stream, "zone": zone, "rule": rule,
                                              "raised_at": float(raised_at),
                                              "peak": float(peak)})

    def cleared(
        self, stream: str, rule: str, raised_at: float, cleared_at: float, peak: float
    ) -> None:
        self._writer.add_op(self._clear_sql, {"stream": stream, "rule": rule,
                                              "raised_at": float(raised_at),
                                              "cleared_at": float(cleared_at),
                                              "peak": float(peak)})

    def query(
        self,
        stream: str | None = None,
        since: float | None = None,
        until: float | None = None,
        active: bool | None = None,
        limit: int = 1000,
    ) -> list[AlertRow]:
        check_limit(limit)
        p = self._d.p
        clauses: list[str] = []
        args: dict[str, Any] = {"limit": int(limit)}
        if stream is not None:
            clauses.append(f"stream = {p('stream')}")
            args["stream"] = stream
        if since is not None:
            clauses.append(f"(cleared_at IS NULL OR cleared_at >= {p('since')})")
            args["since"] = float(since)
        if until is not None:
            clauses.append(f"raised_at < {p('until')}")
            args["until"] = float(until)
        if active is not None:
            clauses.append("cleared_at IS NULL" if active else "cleared_at IS NOT NULL")
        sql = (
            f"SELECT {_ALERT_COLS} FROM alerts WHERE {' AND '.join(clauses) or 'TRUE'} "
            f"ORDER BY raised_at DESC, id DESC LIMIT {p('limit')}"
        )
        return [
            AlertRow(id=i, stream=s, zone=z, rule=r, raised_at=ra, cleared_at=ca, peak=p)
            for i, s, z, r, ra, ca, p in self._fetch(sql, args)
        ]

    def close_open(self, at: float) -> int:
        scope, scope_args = self._scope
        sql = (f"UPDATE alerts SET cleared_at = {self._d.greatest}(raised_at, "
               f"{self._d.p('at')}) WHERE cleared_at IS NULL{scope}")
        args: dict[str, Any] = {**scope_args, "at": float(at)}
        return self._writer.call(lambda conn: int(conn.execute(sql, args).rowcount))


class _Records:
    """Records read with ``fetch`` and written through the writer (durable when a write
    returns). ``announce(conn, what)``, when given, runs in each write's transaction (a
    cluster tells its other processes what changed)."""

    def __init__(self, d: Dialect, fetch: Fetch, writer: Writer[Any],
                 announce: Callable[[SqlConn, str], None] | None = None) -> None:
        self._d = d
        self._fetch = fetch
        self._writer = writer
        self._announce = announce

    def _write(self, sql: str, args: Mapping[str, Any], what: str | None = None) -> int:
        def write(conn: SqlConn) -> int:
            n = int(conn.execute(sql, args).rowcount)
            self._told(conn, what)
            return n

        return self._writer.call(write)

    def _told(self, conn: SqlConn, what: str | None) -> None:
        """In a write's transaction: tell the store's other processes what changed."""
        if what is not None and self._announce is not None:
            self._announce(conn, what)

    def _upsert(self, table: str, key: Sequence[str], values: Mapping[str, Any],
                what: str | None = None) -> None:
        self._write(_upsert_sql(self._d, table, key, values), values, what)


def _upsert_sql(d: Dialect, table: str, key: Sequence[str], values: Mapping[str, Any]) -> str:
    cols = ", ".join(values)
    sets = ", ".join(f"{c} = excluded.{c}" for c in values if c not in key)
    return (f"INSERT INTO {table} ({cols}) VALUES ({', '.join(d.p(c) for c in values)}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


def _lock(d: Dialect, conn: SqlConn, key: str) -> None:
    """Hold ``key`` until the transaction ends: another process's transaction that takes
    it waits, then sees this one's writes (see ``Dialect.lock``)."""
    if d.lock:
        conn.execute(d.lock, {"lock": key})


_SETTING_KEY = ("stream_id", "key")


class SqlSettings(_Records):
    """``SettingsStore`` on the ``alert_rules``, ``stream_zones`` and ``stream_settings``
    tables."""

    def rules(self) -> list[dict[str, Any]]:
        rows = self._fetch(f"SELECT {', '.join(_RULE_COLS)} FROM alert_rules ORDER BY name",
                           {})
        return [dict(zip(_RULE_COLS, row, strict=True)) for row in rows]

    def save_rule(self, rule: Mapping[str, Any]) -> None:
        self._upsert("alert_rules", ("name",), {
            "name": rule["name"], "stream": rule["stream"], "zone": rule.get("zone"),
            "above": float(rule["above"]), "below": float(rule["below"]),
            "for_seconds": float(rule.get("for_seconds") or 0.0),
            "metric": rule.get("metric") or "count", "updated_at": time.time()},
            "rules")

    def delete_rule(self, name: str) -> bool:
        return self._write(f"DELETE FROM alert_rules WHERE name = {self._d.p('name')}",
                           {"name": name}, "rules") > 0

    def zones(self) -> dict[str, list[dict[str, Any]]]:
        rows = self._fetch("SELECT stream_id, zones FROM stream_zones", {})
        return {sid: self._d.load_json(value) for sid, value in rows}

    def save_zones(self, stream_id: str, zones: Sequence[Mapping[str, Any]]) -> None:
        self._upsert("stream_zones", ("stream_id",), {
            "stream_id": stream_id, "zones": self._d.dump_json([dict(z) for z in zones]),
            "updated_at": time.time()}, f"zones:{stream_id}")

    def delete_zones(self, stream_id: str) -> None:
        self._write(f"DELETE FROM stream_zones WHERE stream_id = {self._d.p('sid')}",
                    {"sid": stream_id}, f"zones:{stream_id}")

    def stream_settings(self, key: str) -> dict[str, Any]:
        rows = self._fetch(f"SELECT stream_id, value FROM stream_settings WHERE key = "
                           f"{self._d.p('key')}", {"key": key})
        return {sid: self._d.load_json(value) for sid, value in rows}

    def _setting(self, stream_id: str, key: str, value: Any) -> dict[str, Any]:
        return {"stream_id": stream_id, "key": key, "value": self._d.dump_json(value),
                "updated_at": time.time()}

    def save_stream_setting(self, stream_id: str, key: str, value: Any) -> None:
        self._upsert("stream_settings", _SETTING_KEY, self._setting(stream_id, key, value),
                     f"setting:{key}:{stream_id}")

    def claim_stream_setting(self, stream_id: str, key: str, value: Any,
                             free: Callable[[Any | None], bool]) -> bool:
        what = f"setting:{key}:{stream_id}"
        select = (f"SELECT value FROM stream_settings WHERE stream_id = {self._d.p('sid')} "
                  f"AND key = {self._d.p('key')}")
        values = self._setting(stream_id, key, value)

        def claim(conn: SqlConn) -> bool:
            _lock(self._d, conn, what)
            row = conn.execute(select, {"sid": stream_id, "key": key}).fetchone()
            if not free(None if row is None else self._d.load_json(row[0])):
                return False
            conn.execute(_upsert_sql(self._d, "stream_settings", _SETTING_KEY, values), values)
            self._told(conn, what)
            return True

        return self._writer.call(claim)

    def delete_stream_setting(self, stream_id: str, key: str | None = None) -> None:
        p = self._d.p
        sql = f"DELETE FROM stream_settings WHERE stream_id = {p('sid')}"
        if key is not None:
            sql += f" AND key = {p('key')}"
        self._write(sql, {"sid": stream_id, "key": key}, f"setting:{key or '*'}:{stream_id}")


class SqlGathering(_Records):
    """``GatheringStore`` on the ``gathering`` and ``gathering_reference`` tables (the grids
    and pictures are bytes: BLOB; bytea)."""

    def add_bucket(self, stream_id: str, start: float, frames: int, grid: bytes,
                   part: str = "") -> None:
        p = self._d.p
        sql = (f"INSERT INTO gathering (stream_id, start, frames, grid, part) VALUES "
               f"({p('sid')}, {p('start')}, {p('frames')}, {p('grid')}, {p('part')})")
        if part:  # this writer's part of the bucket so far: replaced as it grows
            sql += (" ON CONFLICT (stream_id, start, part) WHERE part <> '' DO UPDATE SET "
                    "frames = excluded.frames, grid = excluded.grid")
        self._write(sql, {"sid": stream_id, "start": float(start), "frames": int(frames),
                          "grid": bytes(grid), "part": part})

    def buckets(self, stream_id: str, since: float, until: float) -> list[tuple[float, int, bytes]]:
        p = self._d.p
        rows = self._fetch(
            f"SELECT start, frames, grid FROM gathering WHERE stream_id = {p('sid')} AND "
            f"start >= {p('lo')} AND start < {p('hi')} ORDER BY start",
            {"sid": stream_id, "lo": max(-_T_LIMIT, since), "hi": min(_T_LIMIT, until)})
        return [(start, frames, bytes(grid)) for start, frames, grid in rows]

    def has(self, stream_id: str) -> bool:
        return bool(self._fetch(f"SELECT 1 FROM gathering WHERE stream_id = "
                                f"{self._d.p('sid')} LIMIT 1", {"sid": stream_id}))

    def save_reference(self, stream_id: str, t: float, jpeg: bytes) -> None:
        self._upsert("gathering_reference", ("stream_id",),
                     {"stream_id": stream_id, "t": float(t), "jpeg": bytes(jpeg)})

    def reference(self, stream_id: str) -> bytes | None:
        rows = self._fetch(f"SELECT jpeg FROM gathering_reference WHERE stream_id = "
                           f"{self._d.p('sid')}", {"sid": stream_id})
        return bytes(rows[0][0]) if rows else None

    def delete_before(self, cutoff: float) -> int:
        return self._write(f"DELETE FROM gathering WHERE start < {self._d.p('cutoff')}",
                           {"cutoff": float(cutoff)})

    def stats(self) -> dict[str, int]:
        rows, size = self._fetch(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(grid)), 0) FROM gathering", {})[0]
        return {"rows": int(rows), "bytes": int(size)}


_FRAME_COLS = ("id", "stream_id", "captured_at", "width", "height", "model_count", "marks")


class SqlCalibration(_Records):
    """``CalibrationStore`` on the ``marked_frames`` and ``calibration_models`` tables (the
    pictures, densities and models are bytes: BLOB; bytea)."""

    def add_frame(self, frame: MarkedFrame, jpeg: bytes, density: bytes, limit: int) -> bool:
        p = self._d.p
        values = {**frame, "marks": self._marks(frame["marks"]), "jpeg": bytes(jpeg),
                  "density": bytes(density), "created_at": time.time()}
        count = (f"SELECT COUNT(*) FROM marked_frames WHERE stream_id = "
                 f"{p('stream_id')}")
        insert = (f"INSERT INTO marked_frames ({', '.join(values)}) VALUES "
                  f"({', '.join(p(c) for c in values)})")

        def add(conn: SqlConn) -> bool:
            # The count and the insert in one transaction, under the stream's lock: two API
            # processes of a cluster capturing one camera at once cannot both pass the bound.
            _lock(self._d, conn, f"marked_frames:{frame['stream_id']}")
            if conn.execute(count, values).fetchone()[0] >= limit:
                return False
            conn.execute(insert, values)
            return True

        return self._writer.call(add)

    def _marks(self, marks: Mapping[str, Any] | None) -> Any:
        return None if marks is None else self._d.dump_json(dict(marks))

    def _frame(self, row: Sequence[Any]) -> MarkedFrame:
        fid, sid, captured_at, width, height, count, marks = row
        return MarkedFrame(id=fid, stream_id=sid, captured_at=float(captured_at),
                           width=int(width), height=int(height), model_count=float(count),
                           marks=None if marks is None else self._d.load_json(marks))

    def frames(self, stream_id: str) -> list[MarkedFrame]:
        rows = self._fetch(f"SELECT {', '.join(_FRAME_COLS)} FROM marked_frames WHERE "
                           f"stream_id = {self._d.p('sid')} ORDER BY created_at, id",
                           {"sid": stream_id})
        return [self._frame(r) for r in rows]

    def frame(self, stream_id: str, frame_id: str) -> MarkedFrame | None:
        rows = self._select(", ".join(_FRAME_COLS), stream_id, frame_id)
        return self._frame(rows[0]) if rows else None

    def _select(self, cols: str, stream_id: str, frame_id: str) -> list[Any]:
        p = self._d.p
        return self._fetch(f"SELECT {cols} FROM marked_frames WHERE stream_id = {p('sid')} "
                           f"AND id = {p('fid')}", {"sid": stream_id, "fid": frame_id})

    def image(self, stream_id: str, frame_id: str) -> bytes | None:
        rows = self._select("jpeg", stream_id, frame_id)
        return bytes(rows[0][0]) if rows else None

    def density(self, stream_id: str, frame_id: str) -> bytes | None:
        rows = self._select("density", stream_id, frame_id)
        return bytes(rows[0][0]) if rows else None

    def set_marks(self, stream_id: str, frame_id: str, marks: Mapping[str, Any] | None
                  ) -> bool:
        p = self._d.p
        return self._write(f"UPDATE marked_frames SET marks = {p('marks')} WHERE "
                           f"stream_id = {p('sid')} AND id = {p('fid')}",
                           {"marks": self._marks(marks), "sid": stream_id,
                            "fid": frame_id}) > 0

    def delete_frame(self, stream_id: str, frame_id: str) -> bool:
        p = self._d.p
        return self._write(f"DELETE FROM marked_frames WHERE stream_id = {p('sid')} AND "
                           f"id = {p('fid')}", {"sid": stream_id, "fid": frame_id}) > 0

    def save_model(self, stream_id: str, model_id: str, onnx: bytes) -> None:
        self._upsert("calibration_models", ("stream_id",),
                     {"stream_id": stream_id, "id": model_id, "model": bytes(onnx),
                      "saved_at": time.time()})

    def model(self, stream_id: str, model_id: str) -> bytes | None:
        p = self._d.p
        rows = self._fetch(f"SELECT model FROM calibration_models WHERE stream_id = "
                           f"{p('sid')} AND id = {p('mid')}",
                           {"sid": stream_id, "mid": model_id})
        return bytes(rows[0][0]) if rows else None

    def forget(self, stream_id: str, *, frames: bool = True) -> None:
        tables = ("calibration_models", "marked_frames") if frames else ("calibration_models",)

        def forget(conn: SqlConn) -> None:
            for table in tables:
                conn.execute(f"DELETE FROM {table} WHERE stream_id = {self._d.p('sid')}",
                             {"sid": stream_id})

        self._writer.call(forget)
