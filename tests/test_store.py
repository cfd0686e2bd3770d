"""CountStore against real SQLite files: queries, concurrency and surviving SIGKILL."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crowdcount.model.types import Frame, Result
from crowdcount.streamer.store import CountStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):
    s = CountStore(tmp_path / "c.sqlite3", flush_interval=0.05)
    yield s
    s.close()


def _result(stream_id: str, t: float, count: float, zones: dict[str, float]) -> Result:
    frame = Frame(stream_id, 0, t, np.zeros((2, 2, 3), np.uint8))
    return Result(frame, np.zeros((1, 1), np.float32), count, t + 0.01, zones)


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    CountStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"streams", "counts"} <= tables
    idx = conn.execute("PRAGMA index_info(counts_stream_t)").fetchall()
    assert [r[2] for r in idx] == ["stream_id", "t"]
    conn.close()


def test_round_trip_with_result_and_zones(store: CountStore) -> None:
    for i in range(5):
        store.add(_result("cam", 100.0 + i, float(i), {"door": np.float32(i / 2)}), i * 0.9)
    store.add(_result("other", 100.0, 42.0, {}), 42.0)
    assert store.flush() == 6
    rows = store.counts("cam", with_zones=True)
    assert [r["t"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert [r["count"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rows[3]["smoothed"] == pytest.approx(2.7)
    assert rows[2]["zones"] == {"door": 1.0}
    assert store.counts("other") == [{"t": 100.0, "count": 42.0, "smoothed": 42.0}]
    assert store.counts("missing") == []


def test_writer_thread_commits_without_flush(store: CountStore) -> None:
    store.add_count("cam", 1.0, 3.0, 3.0)
    deadline = time.monotonic() + 5
    while not store.counts("cam"):
        assert time.monotonic() < deadline, "writer thread never committed"
        time.sleep(0.01)
    assert store.stats()["written"] == 1


def test_batch_rows_wakes_writer_early(tmp_path: Path) -> None:
    with CountStore(tmp_path / "c.sqlite3", flush_interval=60, batch_rows=10) as s:
        for i in range(10):
            s.add_count("cam", float(i), 1.0, 1.0)
        deadline = time.monotonic() + 5
        while s.written < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_aggregation_per_step(store: CountStore) -> None:
    # t = 1000..1009, count = t - 1000; buckets of 5 s aligned to the epoch.
    for i in range(10):
        store.add_count("cam", 1000.0 + i, float(i), float(i) + 1)
    store.add_count("cam", 1012.5, 100.0, 0.0)
    store.flush()
    rows = store.counts("cam", step=5)
    assert rows == [
        {"t": 1000.0, "count": 2.0, "smoothed": 3.0, "min": 0.0, "max": 4.0, "n": 5},
        {"t": 1005.0, "count": 7.0, "smoothed": 8.0, "min": 5.0, "max": 9.0, "n": 5},
        {"t": 1010.0, "count": 100.0, "smoothed": 0.0, "min": 100.0, "max": 100.0, "n": 1},
    ]
    # Non-integral step, and filtering applies before grouping.
    rows = store.counts("cam", since=1001, until=1004, step=1.5)
    assert [(r["t"], r["n"], r["min"], r["max"]) for r in rows] == [
        (1000.5, 1, 1.0, 1.0),
        (1002.0, 2, 2.0, 3.0),
    ]
    # limit keeps the newest buckets.
    assert [r["t"] for r in store.counts("cam", step=5, limit=2)] == [1005.0, 1010.0]


def test_aggregation_floors_negative_times(store: CountStore) -> None:
    store.add_count("cam", -1.5, 1.0, 1.0)
    store.add_count("cam", -0.5, 3.0, 1.0)
    store.add_count("cam", 0.5, 5.0, 1.0)
    store.flush()
    rows = store.counts("cam", step=1)
    assert [(r["t"], r["count"]) for r in rows] == [(-2.0, 1.0), (-1.0, 3.0), (0.0, 5.0)]


def test_since_until_and_limit(store: CountStore) -> None:
    for i in range(20):
        store.add_count("cam", float(i), float(i), float(i))
    store.flush()
    assert [r["t"] for r in store.counts("cam", since=5, until=8)] == [5.0, 6.0, 7.0]
    assert [r["t"] for r in store.counts("cam", since=18)] == [18.0, 19.0]
    assert [r["t"] for r in store.counts("cam", until=2)] == [0.0, 1.0]
    # limit keeps the newest rows, oldest first.
    assert [r["t"] for r in store.counts("cam", limit=3)] == [17.0, 18.0, 19.0]
    assert [r["t"] for r in store.counts("cam", until=10, limit=2)] == [8.0, 9.0]
    with pytest.raises(ValueError):
        store.counts("cam", step=0)
    with pytest.raises(ValueError):
        store.counts("cam", limit=0)


def test_csv_export_parses_back(store: CountStore) -> None:
    values = [(1_700_000_000.123456 + i / 3, i * 1.1, i * 0.7) for i in range(50)]
    for t, c, s in values:
        store.add_count("cam", t, c, s)
    store.add_count("other", values[0][0], 9.0, 9.0)
    store.flush()
    text = store.export_csv("cam")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "t,count,smoothed"
    assert [(float(r["t"]), float(r["count"]), float(r["smoothed"])) for r in rows] == values
    part = list(csv.DictReader(io.StringIO(store.export_csv("cam", values[10][0], values[20][0]))))
    assert len(part) == 10 and float(part[0]["t"]) == values[10][0]
    assert store.export_csv("missing") == "t,count,smoothed\n"


def test_writes_from_thread_while_reading(store: CountStore) -> None:
    n = 5000

    def produce() -> None:
        for i in range(n):
            store.add_count("cam", float(i), 1.0, 1.0)
            if i % 500 == 0:
                time.sleep(0.01)

    th = threading.Thread(target=produce)
    th.start()
    seen = [0]
    while th.is_alive() or seen[-1] < n:
        if not th.is_alive():
            store.flush()
        rows = store.counts("cam", limit=n)
        seen.append(len(rows))
        # Committed rows form a gap-free prefix: commits are ordered and atomic.
        assert [r["t"] for r in rows] == [float(i) for i in range(len(rows))]
        agg = store.counts("cam", step=1000)
        assert sum(b["n"] for b in agg) >= len(rows)
    th.join()
    assert seen == sorted(seen) and seen[-1] == n


def test_close_flushes_and_rejects_later_use(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    s = CountStore(path, flush_interval=60)
    for i in range(7):
        s.add_count("cam", float(i), 1.0, 1.0)
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError):
        s.add_count("cam", 1.0, 1.0, 1.0)
    with CountStore(path) as again:
        assert len(again.counts("cam")) == 7


def test_pending_is_bounded_when_writer_is_stuck(tmp_path: Path) -> None:
    with CountStore(tmp_path / "c.sqlite3", batch_rows=5, max_pending=10) as s:
        with s._write_lock:  # stall every commit, as a hung disk would
            for i in range(15):
                s.add_count("cam", float(i), 1.0, 1.0)
            assert s.stats()["pending"] == 10
            assert s.dropped == 5
        s.flush()
        assert [r["t"] for r in s.counts("cam")] == [float(i) for i in range(5, 15)]


def test_stream_crud_persists_and_keeps_history(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with CountStore(path) as s:
        s.save_stream("a", "Door", "rtsp://cam/a", "rtsp", {"max_side": 640})
        time.sleep(0.01)
        s.save_stream("b", "Hall", "/videos/hall.mp4", "file", {"loop": True})
        s.add_count("a", 1.0, 5.0, 5.0)
    with CountStore(path) as s:
        streams = s.list_streams()
        assert [x["id"] for x in streams] == ["a", "b"]
        assert streams[0]["options"] == {"max_side": 640}
        assert streams[1] | {"created_at": 0} == {
            "id": "b",
            "name": "Hall",
            "url": "/videos/hall.mp4",
            "kind": "file",
            "options": {"loop": True},
            "created_at": 0,
        }
        created = streams[0]["created_at"]
        s.save_stream("a", "Front door", "rtsp://cam/a2", "rtsp")
        a = s.get_stream("a")
        assert a is not None
        assert a["name"] == "Front door" and a["options"] == {}
        assert a["created_at"] == created  # update keeps the original order
        assert s.delete_stream("a") is True
        assert s.delete_stream("a") is False
        assert s.get_stream("a") is None
        assert [x["id"] for x in s.list_streams()] == ["b"]
        assert len(s.counts("a")) == 1  # history survives removal
        assert s.delete_counts("a") == 1
        assert s.counts("a") == []


def test_delete_counts_before(store: CountStore) -> None:
    for i in range(10):
        store.add_count("cam", float(i), 1.0, 1.0)
        store.add_count("other", float(i), 1.0, 1.0)
    store.flush()
    assert store.delete_counts(before=4) == 8
    assert store.counts("cam")[0]["t"] == 4.0
    assert len(store.counts("other")) == 6


_CHILD = textwrap.dedent(
    """
    import sys
    from crowdcount.streamer.store import CountStore

    s = CountStore(sys.argv[1], flush_interval=0.002, batch_rows=64)
    s.save_stream("cam", "Camera", "rtsp://host/cam", "rtsp", {"zones": 2})
    i = 0
    while True:
        for _ in range(37):
            s.add_count("cam", float(i), float(i % 11), 0.5, {"z": 1.0})
            i += 1
        s.flush()
        print(i, flush=True)  # every row below i is committed
    """
)


@pytest.mark.parametrize("reports", [3, 40, 150])
def test_survives_sigkill(tmp_path: Path, reports: int) -> None:
    path = tmp_path / "crash.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = 0
    try:
        assert proc.stdout is not None
        for _ in range(reports):
            line = proc.stdout.readline()
            assert line, f"child exited early with {proc.poll()}"
            committed = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert committed > 0

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with CountStore(path) as s:
        ts = [r["t"] for r in s.counts("cam", limit=10**9)]
        # Every row reported committed is there, and the rows after it form a gap-free
        # prefix too (a transaction cut by the kill is rolled back whole).
        assert len(ts) >= committed
        assert ts == [float(i) for i in range(len(ts))]
        assert [x["id"] for x in s.list_streams()] == ["cam"]
        # The reopened store keeps writing after the crash.
        s.add_count("cam", 1e9, 1.0, 1.0)
        s.flush()
        assert s.counts("cam", limit=1)[0]["t"] == 1e9


def test_alerts_table_raise_clear_and_queries(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = CountStore(path, flush_interval=10)  # only the wake-up can commit in time
    store.add_alert("cam", "door", "door-busy", 100.0, 30.0)
    store.add_alert("cam", None, "busy", 105.0, 50.0)
    store.add_alert("hall", None, "hall-busy", 90.0, 12.0)
    deadline = time.monotonic() + 5
    while len(store.alerts()) < 3:  # alerts wake the writer at once
        assert time.monotonic() < deadline
        time.sleep(0.01)
    store.clear_alert("cam", "door-busy", 100.0, 120.0, 42.0)
    store.clear_alert("hall", "hall-busy", 90.0, 95.0, 5.0)  # peak never shrinks
    store.flush()
    rows = store.alerts()
    assert [r["rule"] for r in rows] == ["busy", "door-busy", "hall-busy"]  # newest first
    assert rows[1] == {
        "id": rows[1]["id"],
        "stream": "cam",
        "zone": "door",
        "rule": "door-busy",
        "raised_at": 100.0,
        "cleared_at": 120.0,
        "peak": 42.0,
    }
    assert rows[2]["peak"] == 12.0 and rows[0]["cleared_at"] is None
    assert [r["rule"] for r in store.alerts(stream="cam")] == ["busy", "door-busy"]
    assert [r["rule"] for r in store.alerts(active=True)] == ["busy"]
    assert [r["rule"] for r in store.alerts(active=False)] == ["door-busy", "hall-busy"]
    # Overlap with [since, until): open alerts overlap everything after their raise.
    assert [r["rule"] for r in store.alerts(since=110)] == ["busy", "door-busy"]
    assert [r["rule"] for r in store.alerts(since=121)] == ["busy"]
    assert [r["rule"] for r in store.alerts(until=100)] == ["hall-busy"]
    assert len(store.alerts(limit=1)) == 1
    # A repeated raise (same stream, rule and time) is one alert.
    store.add_alert("cam", None, "busy", 105.0, 50.0)
    store.flush()
    assert len(store.alerts()) == 3
    store.close()
    # Durable, and a restarted service closes what the old process left open.
    store = CountStore(path)
    assert store.close_open_alerts(200.0) == 1
    assert store.alerts(active=True) == []
    assert store.alerts(stream="cam")[0]["cleared_at"] == 200.0
    store.close()


def test_alert_ops_and_counts_keep_order_across_a_failed_commit(tmp_path: Path) -> None:
    store = CountStore(tmp_path / "c.sqlite3", flush_interval=10)
    blocker = sqlite3.connect(tmp_path / "c.sqlite3", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: commits fail
    store._busy_ms = 0
    store._wconn.execute("PRAGMA busy_timeout = 0")
    store.add_alert("cam", None, "r", 1.0, 5.0)
    store.clear_alert("cam", "r", 1.0, 2.0, 6.0)
    store.add_count("cam", 1.0, 5.0, 5.0)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    blocker.rollback()
    blocker.close()
    store.flush()  # (or the writer thread did it already)
    assert store.alerts()[0]["cleared_at"] == 2.0  # the raise was applied before its clear
    assert store.stats()["pending"] == 0 and len(store.counts("cam")) == 1
    store.close()
