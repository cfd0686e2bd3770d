"""History at the scale of a week: database size and the latency of the day and week views.

A week of one 30 fps camera with two zones, as the store holds it after a week of running
with ``server.raw_history_hours``: raw per-frame rows for that last window only (written
through ``history.add``, the service's own path, so the writer maintains the rollups as it
commits), and per-second and per-minute rollups (totals and zones) for the whole week.
The older days' rollups are inserted directly from the same synthetic frames (their raw
rows would have been pruned anyway); pushing 18 M rows through the writer would take
this 2-core machine many minutes without changing what the queries read.

Then it times what the page's history view asks for: a day at one point per minute and a
week at one per ten minutes, zones included, each the median of several runs, plus the
same day answered from raw rows (the path every query took before the rollups) when the
raw window covers a day.

    python benchmarks/bench_history.py                 # 7 days, 6 h of raw rows (default)
    python benchmarks/bench_history.py --raw-hours 24  # a day of raw rows: adds the old path
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crowdcount.streamer.config import ServerConfig
from crowdcount.streamer.store.sqlite import SQLiteStore

ZONES = ("door", "queue")


def crowd(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A day-shaped crowd (busy afternoons, empty nights) with frame-to-frame jitter."""
    hour = (t % 86400) / 3600
    base = 40 * np.clip(np.sin((hour - 7) / 14 * np.pi), 0, None) + 2
    return np.clip(base + rng.normal(0, 3, t.shape), 0, None)


def insert_rollups(store: SQLiteStore, start: float, end: float, fps: int,
                   rng: np.random.Generator) -> int:
    """Per-second rollups for [start, end) from fps synthetic frames a second, then their
    minutes; returns the seconds written."""
    seconds = np.arange(int(start), int(end))
    frames = seconds[:, None] + np.arange(fps)[None, :] / fps
    total = crowd(frames, rng)
    rows = [("cam", int(s), fps, float(v.sum()), float(v.min()), float(v.max()),
             float(v.sum())) for s, v in zip(seconds, total, strict=True)]
    zone_rows = []
    for k, zone in enumerate(ZONES):
        share = total * (0.2 + 0.2 * k)
        zone_rows += [("cam", zone, int(s), fps, float(v.sum()), float(v.min()), float(v.max()))
                      for s, v in zip(seconds, share, strict=True)]

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR REPLACE INTO counts_1s VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT OR REPLACE INTO zone_counts_1s VALUES (?, ?, ?, ?, ?, ?, ?)",
                         zone_rows)
        conn.execute(
            "INSERT OR REPLACE INTO counts_1m SELECT stream_id, (t / 60) * 60 AS m, SUM(n), "
            "SUM(sum), MIN(min), MAX(max), SUM(ssum) FROM counts_1s WHERE stream_id = 'cam' "
            "AND t >= ? AND t < ? GROUP BY m", (int(start), int(end)))
        conn.execute(
            "INSERT OR REPLACE INTO zone_counts_1m SELECT stream_id, zone, (t / 60) * 60 AS m, "
            "SUM(n), SUM(sum), MIN(min), MAX(max) FROM zone_counts_1s WHERE stream_id = 'cam' "
            "AND t >= ? AND t < ? GROUP BY zone, m", (int(start), int(end)))

    store._writer.call(write)
    return len(seconds)


def add_raw(store: SQLiteStore, start: float, end: float, fps: int,
            rng: np.random.Generator) -> int:
    t = np.arange(int(start * fps), int(end * fps)) / fps
    total = crowd(t, rng)
    for ti, v in zip(t.tolist(), total.tolist(), strict=True):
        store.history.add("cam", ti, v, v, {"door": v * 0.2, "queue": v * 0.4})
    store.flush()
    return len(t)


def timed(fn: Callable[[], list], runs: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        n = len(fn())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=float, default=7)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--raw-hours", type=float, default=ServerConfig().raw_history_hours,
                   help="hours of raw rows (default: the server's raw_history_hours)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--db", type=Path, help="database file (default: a temporary one)")
    args = p.parse_args()

    folder = tempfile.TemporaryDirectory()
    db = args.db or Path(folder.name) / "history.sqlite3"
    rng = np.random.default_rng(0)
    now = float(int(time.time()) // 60 * 60)
    start, raw_start = now - args.days * 86400, now - args.raw_hours * 3600
    store = SQLiteStore(db, batch_rows=20_000, max_pending=2_000_000)
    t0 = time.perf_counter()
    day = start
    while day < raw_start:
        end = min(day + 86400, raw_start)
        insert_rollups(store, day, end, args.fps, rng)
        print(f"  rollups up to {(end - start) / 86400:.2f} days "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        day = end
    t1 = time.perf_counter()
    raw = 0
    chunk = 600.0
    at = raw_start
    while at < now:
        raw += add_raw(store, at, min(at + chunk, now), args.fps, rng)
        at += chunk
        print(f"  raw rows {raw:,} ({time.perf_counter() - t1:.0f} s)", file=sys.stderr)
    fill_raw_s = time.perf_counter() - t1
    store.flush()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = {}
        for table in ("counts", "counts_1s", "counts_1m", "zone_counts_1s", "zone_counts_1m"):
            tables[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        try:
            sizes = dict(conn.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        except sqlite3.OperationalError:
            sizes = {}
    size_mb = db.stat().st_size / 1e6

    h = store.history
    views = [
        ("day, 1 point/min, zones", lambda: h.counts("cam", now - 86400, now, 60, 100_000,
                                                     with_zones=True)),
        ("week, 1 point/10 min, zones", lambda: h.counts("cam", start, now, 600, 100_000,
                                                         with_zones=True)),
        ("hour, 1 point/5 s, zones", lambda: h.counts("cam", now - 3600, now, 5, 100_000,
                                                      with_zones=True)),
    ]
    if args.raw_hours >= 24:
        # step 60.5 is not a whole second: the old path, a GROUP BY over raw rows
        views.append(("day from raw rows (old path)",
                      lambda: h.counts("cam", now - 86400, now, 60.5, 100_000)))
    print(f"\n{args.days:g} days of one {args.fps} fps camera, 2 zones; raw rows for the last "
          f"{args.raw_hours:g} h; {raw:,} raw rows written through history.add in "
          f"{fill_raw_s:.1f} s ({raw / max(fill_raw_s, 1e-9):,.0f} rows/s with rollups)")
    print(f"database {size_mb:.1f} MB ({db.name})")
    print(f"{'table':<16}{'rows':>12}{'MB':>9}")
    for table, rows in tables.items():
        mb = sum(v for k, v in sizes.items()
                 if k in (table, f"{table}_stream_t") or k.startswith(f"sqlite_autoindex_{table}")
                 ) / 1e6
        print(f"{table:<16}{rows:>12,}{mb:>9.1f}")
    print(f"\n{'view':<32}{'points':>8}{'median ms':>11}")
    for name, fn in views:
        ms, n = timed(fn, args.runs)
        print(f"{name:<32}{n:>8}{ms:>11.1f}")
    store.close()
    folder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
