"""History rollups on a real SQLite file: per-second and per-minute min/mean/max (zones
included) kept as counts arrive, equal to aggregating the raw rows, exact under replays,
still there after the raw rows are pruned, rebuilt when an older file is opened; and the
API's stepped counts and CSV that the page's history view reads."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3

import numpy as np
import pytest

from crowdcount.streamer.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.fixtures.app import service

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


@pytest.mark.parametrize("step", [1, 5, 60, 120])
def test_rollups_equal_raw_aggregation(tmp_path, step: int) -> None:
    with SQLiteStore(tmp_path / "h.sqlite3", batch_rows=37) as store:  # many small commits
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


def test_replays_prune_and_range_edges(tmp_path) -> None:
    db = tmp_path / "h.sqlite3"
    with SQLiteStore(db) as store:
        data = fill(store)
        before = store.history.counts("cam", step=60, with_zones=True)
        # A replayed batch (same (stream, t)) changes nothing: the rollups are recomputed.
        for i in range(0, 300):
            store.history.add("cam", float(data["t"][i]), 999.0, 999.0, {"door": 999.0})
        store.flush()
        assert store.history.counts("cam", step=60, with_zones=True) == before
        # Pruning raw rows keeps every rolled-up answer.
        assert store.history.prune_raw(T0 + 120) == 1200
        assert store.history.counts("cam", since=T0, until=T0 + 120) == []
        assert store.history.counts("cam", step=60, with_zones=True) == before
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


async def test_api_stepped_counts_with_zones_and_csv(serve, tmp_path) -> None:
    client = await serve()
    store = service(client).store
    data = await asyncio.to_thread(fill, store, 130)
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
