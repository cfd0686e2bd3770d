"""What the SQLite and PostgreSQL stores share, written once.

The two stores keep the same records with the same contract (``streamer.store.base``); they
differ in how they reach the database (SQLite: one writer thread and ``query_only``
readers; PostgreSQL: a writer thread and a pool of autocommit connections), in how zones are
encoded (JSON text; JSONB) and in how bucketed history is aggregated (rollup tables; SQL
``floor``). Everything else lives here: the range and filter clauses, the raw-row and bucket
shapes, the alert log's queries, and the write queue's bound. SQL is built with named
parameters, and each store supplies its dialect's spelling of one (``Placeholder``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from crowdcount.streamer.store.base import AlertRow, CountRow

#: A dialect's named parameter as a format of its name: ``":{}"`` (SQLite) or ``"%({})s"``
#: (psycopg).
Placeholder = str
#: Run one read query with named arguments on a pooled connection; all its rows.
Fetch = Callable[[str, Mapping[str, Any]], list[Any]]

_ALERT_COLS = "id, stream, zone, rule, raised_at, cleared_at, peak"


def check_writer_options(flush_interval: float, batch_rows: int, max_pending: int) -> None:
    """The write-behind queue's settings, as both stores' constructors accept them."""
    if flush_interval <= 0:
        raise ValueError("flush_interval must be > 0")
    if batch_rows < 1 or max_pending < batch_rows:
        raise ValueError("need 1 <= batch_rows <= max_pending")


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be >= 1")


def drop_oldest(queue: list[Any], max_pending: int) -> int:
    """Trim ``queue`` to its newest ``max_pending`` items (the caller holds its lock); how
    many were dropped. A bounded queue keeps a disk or network that cannot keep up from
    taking the whole service down."""
    excess = len(queue) - max_pending
    if excess <= 0:
        return 0
    del queue[:excess]
    return excess


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


class SqlHistory:
    """``CountHistory`` over a ``counts`` table; a store supplies its reads (``fetch``), its
    write queue (``queue_row``), the zones column's encoding and the bucketed query."""

    ph: ClassVar[Placeholder]

    def __init__(
        self, fetch: Fetch, queue_row: Callable[[tuple[str, float, float, float, Any]], None]
    ) -> None:
        self._fetch = fetch
        self._queue_row = queue_row

    def _encode_zones(self, zones: dict[str, float]) -> Any:
        raise NotImplementedError

    def _decode_zones(self, value: Any) -> dict[str, float]:
        raise NotImplementedError

    def _bucketed(
        self, stream_id: str, since: float | None, until: float | None, step: float,
        limit: int, with_zones: bool,
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def add(
        self,
        stream_id: str,
        t: float,
        count: float,
        smoothed: float,
        zones: Mapping[str, float] | None = None,
    ) -> None:
        # float(): the runtime's zone sums are NumPy scalars, which JSON cannot encode.
        z = self._encode_zones({k: float(v) for k, v in zones.items()}) if zones else None
        self._queue_row((stream_id, float(t), float(count), float(smoothed), z))

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
        if step is not None:
            if not step > 0:
                raise ValueError("step must be > 0")
            return self._bucketed(stream_id, since, until, step, int(limit), with_zones)
        where, args = range_where(self.ph, stream_id, since, until)
        cols = "t, count, smoothed" + (", zones" if with_zones else "")
        sql = (f"SELECT {cols} FROM counts WHERE {where} ORDER BY t DESC "
               f"LIMIT {self.ph.format('limit')}")
        rows = self._fetch(sql, {**args, "limit": int(limit)})
        return raw_count_items(rows, self._decode_zones if with_zones else None)

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
        where, args = range_where(self.ph, stream_id, since, until, after=after)
        sql = (f"SELECT t, count, smoothed FROM counts WHERE {where} ORDER BY t "
               f"LIMIT {self.ph.format('limit')}")
        return [(t, c, sm) for t, c, sm in self._fetch(sql, {**args, "limit": int(limit)})]


class SqlAlerts:
    """``AlertLog`` over an ``alerts`` table; a store supplies its reads (``fetch``), its
    write queue (``queue_op``), its dialect's raise/clear statements and ``close_open``."""

    ph: ClassVar[Placeholder]
    raise_sql: ClassVar[str]  # args: stream, zone, rule, raised_at, peak
    clear_sql: ClassVar[str]  # args: cleared_at, peak, stream, rule, raised_at

    def __init__(self, fetch: Fetch, queue_op: Callable[[str, tuple[Any, ...]], None]) -> None:
        self._fetch = fetch
        self._queue_op = queue_op

    def raised(
        self, stream: str, zone: str | None, rule: str, raised_at: float, peak: float
    ) -> None:
        self._queue_op(self.raise_sql, (stream, zone, rule, float(raised_at), float(peak)))

    def cleared(
        self, stream: str, rule: str, raised_at: float, cleared_at: float, peak: float
    ) -> None:
        self._queue_op(
            self.clear_sql, (float(cleared_at), float(peak), stream, rule, float(raised_at))
        )

    def query(
        self,
        stream: str | None = None,
        since: float | None = None,
        until: float | None = None,
        active: bool | None = None,
        limit: int = 1000,
    ) -> list[AlertRow]:
        check_limit(limit)
        ph = self.ph
        clauses: list[str] = []
        args: dict[str, Any] = {"limit": int(limit)}
        if stream is not None:
            clauses.append(f"stream = {ph.format('stream')}")
            args["stream"] = stream
        if since is not None:
            clauses.append(f"(cleared_at IS NULL OR cleared_at >= {ph.format('since')})")
            args["since"] = float(since)
        if until is not None:
            clauses.append(f"raised_at < {ph.format('until')}")
            args["until"] = float(until)
        if active is not None:
            clauses.append("cleared_at IS NULL" if active else "cleared_at IS NOT NULL")
        sql = (
            f"SELECT {_ALERT_COLS} FROM alerts WHERE {' AND '.join(clauses) or 'TRUE'} "
            f"ORDER BY raised_at DESC, id DESC LIMIT {ph.format('limit')}"
        )
        return [
            AlertRow(id=i, stream=s, zone=z, rule=r, raised_at=ra, cleared_at=ca, peak=p)
            for i, s, z, r, ra, ca, p in self._fetch(sql, args)
        ]
