"""History rollups on SQLite and PostgreSQL (the ``db`` fixture): per-second and per-minute
min/mean/max (zones included) kept as counts arrive, equal to aggregating the raw rows,
exact under replays, still there after the raw rows are pruned, rebuilt when an older file
is opened; and the API's stepped counts and CSV that the page's history view reads (on a
single box and a cluster alike)."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3

import numpy as np
import pytest

from crowdcount.streamer.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.fixtures.app import service
from tests.fixtures.stores import StoreDb

T0 = 1_699_999_980.0  # a minute boundary
FPS = 10


def fill(store: SQLiteStore, seconds: int = 150, seed: int = 3) -> dict[str, np.ndarray]:
    """``seconds`` of a 10 fps stream with two zones; the arrays it wrote."""
    rng = np.random.default_rng(seed)
    n = seconds * FPS
    t = T0 + np.arange(n) / FPS
    count = rng.uniform(0, 50, n).round(3)
    door = rng.uniform(0, 10, n).round(3)
    queue = rng.uniform(0, 20, n).round(3)
    for i in range(n):
        # the queue zone exists only in the second half (zones come and go)
        zones = {"door": door[i]} | ({"queue": queue[i]} if i >= n // 2 else {})
        store.history.add("cam", float(t[i]), float(count[i]), float(count[i]) / 2, zones)
    store.flush()
    return {"t": t, "count": count, "door": door, "queue": queue}


def expected(data: dict[str, np.ndarray], key: str, step: int, mask=None) -> dict:
    t, v = data["t"], data[key]
    if mask is not None:
        t, v = t[mask], v[mask]
    out = {}
    for b in np.unique(np.floor(t / step)):
        sel = np.floor(t / step) == b
        out[float(b * step)] = (v[sel].mean(), v[sel].min(), v[sel].max(), int(sel.sum()))
    return out


@pytest.mark.parametrize("step", [1, 5, 60, 120, 2.5])  # 2.5: aggregated from raw rows
def test_rollups_equal_raw_aggregation(db: StoreDb, step: float) -> None:
    with db.open(batch_rows=37) as store:  # many small commits
        data = fill(store)
        got = store.history.counts("cam", step=step, with_zones=True)
    want = expected(data, "count", step)
    assert [r["t"] for r in got] == list(want)
    for r in got:
        mean, lo, hi, n = want[r["t"]]
        assert r["n"] == n and r["min"] == pytest.approx(lo) and r["max"] == pytest.approx(hi)
        assert r["count"] == pytest.approx(mean) and r["smoothed"] == pytest.approx(mean / 2)
    door = expected(data, "door", step)
    half = np.arange(len(data["t"])) >= len(data["t"]) // 2
    queue = expected(data, "queue", step, half)
    for r in got:
        assert r["zones"]["door"] == pytest.approx(door[r["t"]][0])
        assert r["zones_min"]["door"] == pytest.approx(door[r["t"]][1])
        assert r["zones_max"]["door"] == pytest.approx(door[r["t"]][2])
        if r["t"] in queue:
            assert r["zones"]["queue"] == pytest.approx(queue[r["t"]][0])
        else:
            assert "queue" not in r["zones"]


def _rounded(value: object) -> object:
    """``value`` with every float to 9 significant digits (sums in another order)."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_replays_prune_and_range_edges(db: StoreDb) -> None:
    with db.open() as store:
        data = fill(store)
        before = store.history.counts("cam", step=60, with_zones=True)
        # A replayed batch (same (stream, t)) changes nothing: the rollups are recomputed
        # (PostgreSQL may sum a recomputed second in another order: the last bit may move).
        for i in range(0, 300):
            store.history.add("cam", float(data["t"][i]), 999.0, 999.0, {"door": 999.0})
        store.flush()
        assert _rounded(store.history.counts("cam", step=60, with_zones=True)) == _rounded(
            before)
        # Pruning raw rows keeps every rolled-up answer.
        assert store.history.prune_raw(T0 + 120) == 1200
        assert store.history.counts("cam", since=T0, until=T0 + 120) == []
        assert _rounded(store.history.counts("cam", step=60, with_zones=True)) == _rounded(
            before)
        one_s = store.history.counts("cam", since=T0 + 30, until=T0 + 33, step=1)
        assert [r["t"] for r in one_s] == [T0 + 30, T0 + 31, T0 + 32]
        # Retention purges the rollups with the rows.
        store.history.delete(None, T0 + 60)
        assert [r["t"] for r in store.history.counts("cam", step=60)] == [T0 + 60, T0 + 120]


def test_older_file_gets_its_rollups_on_open(tmp_path) -> None:
    db = tmp_path / "old.sqlite3"
    with SQLiteStore(db) as store:
        data = fill(store, seconds=70)
    with sqlite3.connect(db) as conn:  # what a schema-2 file looks like: no rollups yet
        for table in ("counts_1s", "counts_1m", "zone_counts_1s", "zone_counts_1m"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("PRAGMA user_version = 2")
    with SQLiteStore(db) as store:
        got = store.history.counts("cam", step=60, with_zones=True)
        assert store.history.counts("cam", step=1)[0]["n"] == FPS
    want = expected(data, "count", 60)
    assert [(r["t"], r["n"]) for r in got] == [(t, v[3]) for t, v in want.items()]
    assert got[0]["zones"]["door"] == pytest.approx(expected(data, "door", 60)[T0][0])
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_api_stepped_counts_with_zones_and_csv(deploy) -> None:
    """On a single box and on a cluster (the history written as its shards write it)."""
    dep = await deploy()
    client = dep.client
    data = await asyncio.to_thread(fill, dep.service.store, 130)
    r = await client.get("/api/streams/cam/counts",
                         params={"since": str(T0), "until": str(T0 + 130), "step": "60",
                                 "zones": "1"})
    assert r.status == 200, await r.text()
    rows = (await r.json())["counts"]
    assert [x["t"] for x in rows] == [T0, T0 + 60, T0 + 120]
    assert rows[0]["count"] == pytest.approx(data["count"][:600].mean())
    assert set(rows[2]["zones"]) == {"door", "queue"}
    r = await client.get("/api/streams/cam/counts.csv",
                         params={"since": str(T0), "until": str(T0 + 130), "step": "60"})
    assert r.status == 200 and r.content_type == "text/csv"
    assert "counts-60s.csv" in r.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(await r.text())))
    assert [float(x["t"]) for x in table] == [T0, T0 + 60, T0 + 120]
    assert float(table[0]["count"]) == pytest.approx(rows[0]["count"])
    assert float(table[0]["max"]) == pytest.approx(data["count"][:600].max())
    assert table[0]["queue"] == "" and float(table[2]["queue"]) == pytest.approx(
        rows[2]["zones"]["queue"])


async def test_service_prunes_raw_rows_and_keeps_their_rollups(serve, tmp_path) -> None:
    """``server.raw_history_hours`` (6 h by default): older raw rows go at start (and
    hourly); the history the page draws is still there."""
    import time

    from tests.fixtures.waiting import wait_until

    now = time.time()
    with SQLiteStore(tmp_path / "counts.sqlite3") as store:
        for age_h in (72, 12, 0.1):
            store.history.add("cam", now - age_h * 3600, 5.0, 5.0, {"door": 2.0})
        store.flush()
    client = await serve()
    history = service(client).store.history
    await wait_until(lambda: len(history.counts("cam")) == 1, what="the raw rows pruned")
    r = await client.get("/api/streams/cam/counts", params={"step": "60", "zones": "1",
                                                            "since": str(now - 4 * 86400)})
    rows = (await r.json())["counts"]
    assert len(rows) == 3 and all(x["count"] == 5.0 and x["zones"] == {"door": 2.0}
                                  for x in rows)
