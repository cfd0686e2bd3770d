"""The stores against real databases: queries, concurrency, idempotent inserts, the
writer's failure and close rules, settings and gathering grids, on SQLite and PostgreSQL
alike (the ``db`` and ``store`` fixtures, ``tests/fixtures/stores.py``); then what only the
SQLite file has: WAL, schema migration and surviving SIGKILL."""

from __future__ import annotations

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

from crowdcount.streamer.store import (
    AlertLog,
    CalibrationStore,
    CountHistory,
    GatheringStore,
    SettingsStore,
    SQLiteStore,
    Store,
    StreamRegistry,
)
from crowdcount.streamer.store.sqlite import SCHEMA_VERSION
from tests.fixtures.stores import StoreDb

ROOT = Path(__file__).resolve().parents[1]


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"streams", "counts"} <= tables
    idx = conn.execute("PRAGMA index_info(counts_stream_t)").fetchall()
    assert [r[2] for r in idx] == ["stream_id", "t"]
    unique = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(counts)")}
    assert unique["counts_stream_t"] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_parts_speak_the_interfaces(store: SQLiteStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.history, CountHistory)
    assert isinstance(store.streams, StreamRegistry)
    assert isinstance(store.alerts, AlertLog)
    assert isinstance(store.settings, SettingsStore)
    assert isinstance(store.gathering, GatheringStore)
    assert isinstance(store.calibration, CalibrationStore)
    assert set(store.stats()) == {"pending", "written", "duplicates", "dropped", "last_error"}


def test_reader_connections_never_write(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c.sqlite3") as store, store._readers.borrow() as conn, \
            pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM counts")


def test_same_stream_and_time_is_stored_once(store: SQLiteStore) -> None:
    """(stream, t) is the row's identity: a replayed batch adds nothing, and the first
    value wins (a retry must not rewrite what was already recorded)."""
    for _ in range(2):
        for i in range(100):
            store.history.add("cam", float(i), float(i), float(i))
        store.history.add("cam", 5.0, 999.0, 999.0)
        store.history.add("other", 5.0, 7.0, 7.0)  # another stream at the same time
        store.flush()
    rows = store.history.counts("cam", limit=1000)
    assert [r["t"] for r in rows] == [float(i) for i in range(100)]
    assert rows[5]["count"] == 5.0
    assert store.history.counts("other") == [{"t": 5.0, "count": 7.0, "smoothed": 7.0}]
    # Counted alike on both databases: 1 repeat in the first round, all 102 in the second.
    assert (store.stats()["written"], store.stats()["duplicates"]) == (101, 103)


_V1_SCHEMA = """
CREATE TABLE streams (id TEXT PRIMARY KEY, name TEXT NOT NULL, url TEXT NOT NULL,
    kind TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
CREATE TABLE counts (stream_id TEXT NOT NULL, t REAL NOT NULL, count REAL NOT NULL,
    smoothed REAL NOT NULL, zones TEXT);
CREATE INDEX counts_stream_t ON counts (stream_id, t);
PRAGMA user_version = 1;
"""


def test_version_1_file_is_migrated_keeping_first_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    conn.executemany(
        "INSERT INTO counts VALUES (?, ?, ?, ?, NULL)",
        [("cam", 1.0, 1.0, 1.0), ("cam", 2.0, 2.0, 2.0), ("cam", 1.0, 9.0, 9.0),
         ("hall", 1.0, 3.0, 3.0)],
    )
    conn.execute("INSERT INTO streams VALUES ('cam', 'cam', 'rtsp://h/c', 'rtsp', '{}', 1.0)")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as s:
        assert [(r["t"], r["count"]) for r in s.history.counts("cam")] == [(1.0, 1.0), (2.0, 2.0)]
        assert len(s.history.counts("hall")) == 1
        assert [x["id"] for x in s.streams.all()] == ["cam"]
        s.history.add("cam", 1.0, 5.0, 5.0)  # now a duplicate, ignored
        s.flush()
        assert len(s.history.counts("cam")) == 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this build"):
        SQLiteStore(path)


def test_round_trip_with_zones(store: SQLiteStore) -> None:
    for i in range(5):
        store.history.add("cam", 100.0 + i, float(i), i * 0.9, {"door": np.float32(i / 2)})
    store.history.add("other", 100.0, 42.0, 42.0, {})
    assert store.flush() == 6
    rows = store.history.counts("cam", with_zones=True)
    assert [r["t"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert [r["count"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rows[3]["smoothed"] == pytest.approx(2.7)
    assert rows[2]["zones"] == {"door": 1.0}
    assert store.history.counts("other") == [{"t": 100.0, "count": 42.0, "smoothed": 42.0}]
    assert store.history.counts("missing") == []


def test_writer_thread_commits_without_flush(store: SQLiteStore) -> None:
    store.history.add("cam", 1.0, 3.0, 3.0)
    deadline = time.monotonic() + 5
    while not store.history.counts("cam"):
        assert time.monotonic() < deadline, "writer thread never committed"
        time.sleep(0.01)
    assert store.stats()["written"] == 1


def test_batch_rows_wakes_writer_early(db: StoreDb) -> None:
    with db.open(flush_interval=60, batch_rows=10) as s:
        for i in range(10):
            s.history.add("cam", float(i), 1.0, 1.0)
        deadline = time.monotonic() + 5
        while s.stats()["written"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_aggregation_per_step(store: SQLiteStore) -> None:
    # t = 1000..1009, count = t - 1000; buckets of 5 s aligned to the epoch.
    for i in range(10):
        store.history.add("cam", 1000.0 + i, float(i), float(i) + 1)
    store.history.add("cam", 1012.5, 100.0, 0.0)
    store.flush()
    rows = store.history.counts("cam", step=5)
    assert rows == [
        {"t": 1000.0, "count": 2.0, "smoothed": 3.0, "min": 0.0, "max": 4.0, "n": 5},
        {"t": 1005.0, "count": 7.0, "smoothed": 8.0, "min": 5.0, "max": 9.0, "n": 5},
        {"t": 1010.0, "count": 100.0, "smoothed": 0.0, "min": 100.0, "max": 100.0, "n": 1},
    ]
    # Non-integral step, and filtering applies before grouping.
    rows = store.history.counts("cam", since=1001, until=1004, step=1.5)
    assert [(r["t"], r["n"], r["min"], r["max"]) for r in rows] == [
        (1000.5, 1, 1.0, 1.0),
        (1002.0, 2, 2.0, 3.0),
    ]
    # limit keeps the newest buckets.
    assert [r["t"] for r in store.history.counts("cam", step=5, limit=2)] == [1005.0, 1010.0]


def test_aggregation_floors_negative_times(store: SQLiteStore) -> None:
    store.history.add("cam", -1.5, 1.0, 1.0)
    store.history.add("cam", -0.5, 3.0, 1.0)
    store.history.add("cam", 0.5, 5.0, 1.0)
    store.flush()
    rows = store.history.counts("cam", step=1)
    assert [(r["t"], r["count"]) for r in rows] == [(-2.0, 1.0), (-1.0, 3.0), (0.0, 5.0)]


def test_since_until_and_limit(store: SQLiteStore) -> None:
    for i in range(20):
        store.history.add("cam", float(i), float(i), float(i))
    store.flush()
    assert [r["t"] for r in store.history.counts("cam", since=5, until=8)] == [5.0, 6.0, 7.0]
    assert [r["t"] for r in store.history.counts("cam", since=18)] == [18.0, 19.0]
    assert [r["t"] for r in store.history.counts("cam", until=2)] == [0.0, 1.0]
    # limit keeps the newest rows, oldest first.
    assert [r["t"] for r in store.history.counts("cam", limit=3)] == [17.0, 18.0, 19.0]
    assert [r["t"] for r in store.history.counts("cam", until=10, limit=2)] == [8.0, 9.0]
    with pytest.raises(ValueError):
        store.history.counts("cam", step=0)
    with pytest.raises(ValueError):
        store.history.counts("cam", limit=0)


def test_rows_page_through_a_range_exactly(store: SQLiteStore) -> None:
    values = [(1_700_000_000.123456 + i / 3, i * 1.1, i * 0.7) for i in range(50)]
    for t, c, s in values:
        store.history.add("cam", t, c, s)
    store.history.add("other", values[0][0], 9.0, 9.0)
    store.flush()
    pages, after = [], None
    while page := store.history.rows("cam", after=after, limit=7):
        pages.append(page)
        after = page[-1][0]
    assert [len(p) for p in pages] == [7] * 7 + [1]
    assert [row for p in pages for row in p] == values  # exact floats, oldest first
    part = store.history.rows("cam", values[10][0], values[20][0], limit=100)
    assert part == values[10:20]
    assert store.history.rows("cam", values[10][0], values[20][0], after=values[15][0]) == (
        values[16:20]
    )
    assert store.history.rows("missing") == []
    with pytest.raises(ValueError):
        store.history.rows("cam", limit=0)


def test_writes_from_thread_while_reading(store: SQLiteStore) -> None:
    n = 5000

    def produce() -> None:
        for i in range(n):
            store.history.add("cam", float(i), 1.0, 1.0)
            if i % 500 == 0:
                time.sleep(0.01)

    th = threading.Thread(target=produce)
    th.start()
    seen = [0]
    while th.is_alive() or seen[-1] < n:
        if not th.is_alive():
            store.flush()
        rows = store.history.counts("cam", limit=n)
        seen.append(len(rows))
        # Committed rows form a gap-free prefix: commits are ordered and atomic.
        assert [r["t"] for r in rows] == [float(i) for i in range(len(rows))]
        agg = store.history.counts("cam", step=1000)
        assert sum(b["n"] for b in agg) >= len(rows)
    th.join()
    assert seen == sorted(seen) and seen[-1] == n


def test_close_flushes_and_rejects_later_use(db: StoreDb) -> None:
    s = db.open(flush_interval=60)
    for i in range(7):
        s.history.add("cam", float(i), 1.0, 1.0)
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError):
        s.history.add("cam", 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError):
        s.history.counts("cam")
    with db.open() as again:
        assert len(again.history.counts("cam")) == 7


def test_pending_is_bounded_when_writes_fail(db: StoreDb) -> None:
    with db.open(flush_interval=60, batch_rows=5, max_pending=10, fail_fast=True) as s:
        with db.block_writes():
            for i in range(15):
                s.history.add("cam", float(i), 1.0, 1.0)
            with pytest.raises(db.error):
                s.flush()
            assert s.stats()["pending"] == 10
            assert s.stats()["dropped"] == 5
            assert db.error.__name__ in (s.stats()["last_error"] or "")
        s.flush()
        assert [r["t"] for r in s.history.counts("cam")] == [float(i) for i in range(5, 15)]
        assert s.stats()["last_error"] is not None  # the newest failure stays readable


def test_failed_last_commit_at_close_is_raised_counted_and_logged(
    db: StoreDb, caplog: pytest.LogCaptureFixture
) -> None:
    """The same on both databases: ``close`` cannot keep the rows (the process is going),
    so it says so three ways instead of dropping them silently."""
    s = db.open(flush_interval=60, fail_fast=True)
    s.history.add("cam", 1.0, 1.0, 1.0)
    s.flush()
    with db.block_writes():
        for i in range(4):
            s.history.add("cam", 10.0 + i, 1.0, 1.0)
        s.alerts.raised("cam", None, "busy", 10.0, 1.0)
        with caplog.at_level("ERROR"), pytest.raises(db.error):
            s.close()
    assert s.stats()["dropped"] == 4 and s.stats()["pending"] == 0
    assert [r.message for r in caplog.records if "store_close_commit_failed" in r.message]
    assert "lost=5" in caplog.text
    s.close()  # idempotent, and now quiet
    with pytest.raises(RuntimeError):
        s.flush()
    with db.open() as again:
        assert [r["t"] for r in again.history.counts("cam")] == [1.0]


def test_stream_crud_persists_and_keeps_history(db: StoreDb) -> None:
    keys = ("id", "name", "url", "kind", "options", "created_at")
    with db.open() as s:
        s.streams.save("a", "Door", "rtsp://cam/a", "rtsp", {"max_side": 640})
        time.sleep(0.01)
        s.streams.save("b", "Hall", "/videos/hall.mp4", "file", {"loop": True})
        s.history.add("a", 1.0, 5.0, 5.0)
    with db.open() as s:
        streams = s.streams.all()
        assert [x["id"] for x in streams] == ["a", "b"]
        assert streams[0]["options"] == {"max_side": 640}
        assert {k: streams[1][k] for k in keys} | {"created_at": 0} == {
            "id": "b",
            "name": "Hall",
            "url": "/videos/hall.mp4",
            "kind": "file",
            "options": {"loop": True},
            "created_at": 0,
        }
        created = streams[0]["created_at"]
        s.streams.save("a", "Front door", "rtsp://cam/a2", "rtsp")
        a = s.streams.get("a")
        assert a is not None
        assert a["name"] == "Front door" and a["options"] == {}
        assert a["created_at"] == created  # update keeps the original order
        assert s.streams.delete("a") is True
        assert s.streams.delete("a") is False
        assert s.streams.get("a") is None
        assert [x["id"] for x in s.streams.all()] == ["b"]
        assert len(s.history.counts("a")) == 1  # history survives removal
        assert s.history.delete("a") == 1
        assert s.history.counts("a") == []


def test_stream_settings_survive_reopen_per_key(db: StoreDb) -> None:
    with db.open() as s:
        s.settings.save_stream_setting("a", "floor", {"points": [[1, 2]], "m": 2.5})
        s.settings.save_stream_setting("a", "calibration", {"frames": 3})
        s.settings.save_stream_setting("b", "floor", {"points": []})
        s.settings.save_stream_setting("b", "floor", {"points": [[0, 0]]})  # replaces
    with db.open() as s:
        assert s.settings.stream_settings("floor") == {
            "a": {"points": [[1, 2]], "m": 2.5}, "b": {"points": [[0, 0]]}}
        s.settings.delete_stream_setting("a", "floor")
        assert s.settings.stream_settings("floor") == {"b": {"points": [[0, 0]]}}
        assert s.settings.stream_settings("calibration") == {"a": {"frames": 3}}
        s.settings.delete_stream_setting("a")
        assert s.settings.stream_settings("calibration") == {}
        assert s.settings.stream_settings("nothing") == {}


def test_a_claimed_setting_is_written_only_when_free(db: StoreDb) -> None:
    seen: list[object] = []

    def free_unless_running(value: object) -> bool:
        seen.append(value)
        return not (isinstance(value, dict) and value.get("state") == "running")

    with db.open() as s:
        st = s.settings
        assert st.claim_stream_setting("a", "job", {"state": "running", "n": 1},
                                       free_unless_running)
        assert not st.claim_stream_setting("a", "job", {"state": "running", "n": 2},
                                           free_unless_running)
        assert seen == [None, {"state": "running", "n": 1}]
        st.save_stream_setting("a", "job", {"state": "done", "n": 1})
        assert st.claim_stream_setting("a", "job", {"state": "running", "n": 3},
                                       free_unless_running)
        assert st.claim_stream_setting("b", "job", {"state": "running"}, free_unless_running)
    with db.open() as s:
        assert s.settings.stream_settings("job") == {
            "a": {"state": "running", "n": 3}, "b": {"state": "running"}}


def test_rules_and_zones_survive_reopen(db: StoreDb) -> None:
    rule = {"name": "busy", "stream": "a", "zone": "door", "above": 5.0, "below": 3.0,
            "for_seconds": 2.0}
    zones = [{"name": "door", "points": [[0, 0], [10, 0], [10, 10]]}]
    with db.open() as s:
        s.settings.save_rule(rule)
        s.settings.save_rule({**rule, "name": "calm", "zone": None, "for_seconds": None})
        s.settings.save_rule({**rule, "above": 9.0, "metric": "density"})  # replaces
        s.settings.save_zones("a", zones)
        s.settings.save_zones("b", [])  # none, on purpose
    with db.open() as s:
        assert s.settings.rules() == [  # by name; a rule without a metric watches the count
            {**rule, "above": 9.0, "metric": "density"},
            {**rule, "name": "calm", "zone": None, "for_seconds": 0.0, "metric": "count"}]
        assert s.settings.zones() == {"a": zones, "b": []}
        assert s.settings.delete_rule("busy") and not s.settings.delete_rule("busy")
        s.settings.delete_zones("a")
        assert s.settings.zones() == {"b": []}
        assert [r["name"] for r in s.settings.rules()] == ["calm"]


def test_zones_and_floor_in_saved_options_move_to_the_settings(db: StoreDb) -> None:
    """Earlier builds kept an API camera's zones and floor in its saved options as well as
    in the settings: opening moves them to the settings (their one record), keeping what
    the settings already hold."""
    zones = [{"name": "door", "points": [[0, 0], [10, 0], [10, 10]]}]
    with db.open() as s:
        s.streams.save("a", "a", "rtsp://h/a", "rtsp",
                       {"fps_limit": 2.0, "zones": zones, "floor": {"width": 4}})
        s.streams.save("b", "b", "rtsp://h/b", "rtsp", {"zones": zones})
        s.settings.save_zones("b", [])  # saved later: wins
        s.streams.save("c", "c", "rtsp://h/c", "rtsp", {"max_side": 320})
    with db.open() as s:
        assert {r["id"]: r["options"] for r in s.streams.all()} == {
            "a": {"fps_limit": 2.0}, "b": {}, "c": {"max_side": 320}}
        assert s.settings.zones() == {"a": zones, "b": []}
        assert s.settings.stream_settings("floor") == {"a": {"width": 4}}


def test_rules_table_without_metric_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)  # a file written before rules had a metric
    conn.execute("ALTER TABLE alert_rules DROP COLUMN metric")
    conn.execute("INSERT INTO alert_rules VALUES ('old', 'a', NULL, 5, 3, 0, 1)")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as s:
        assert [(r["name"], r["metric"]) for r in s.settings.rules()] == [("old", "count")]


def test_gathering_buckets_and_reference(db: StoreDb) -> None:
    with db.open() as s:
        g = s.gathering
        assert not g.has("cam") and g.reference("cam") is None
        g.add_bucket("cam", 60.0, 10, b"\x00grid-a")
        g.add_bucket("cam", 60.0, 5, b"part-2")  # the same bucket in two parts
        g.add_bucket("cam", 120.0, 3, b"grid-b")
        g.add_bucket("other", 60.0, 1, b"o")
        g.save_reference("cam", 1.0, b"\xff\xd8old")
        g.save_reference("cam", 2.0, b"\xff\xd8new")
    with db.open() as s:
        g = s.gathering
        assert g.has("cam")
        assert g.buckets("cam", 0, 1e300) == [(60.0, 10, b"\x00grid-a"), (60.0, 5, b"part-2"),
                                              (120.0, 3, b"grid-b")]
        assert g.buckets("cam", 61, 120) == []
        assert g.reference("cam") == b"\xff\xd8new"
        assert g.stats() == {"rows": 4, "bytes": 7 + 6 + 6 + 1}
        assert g.delete_before(100.0) == 3
        assert g.buckets("cam", -1e300, 1e300) == [(120.0, 3, b"grid-b")]


def test_gathering_part_of_a_writer_is_replaced_as_it_grows(db: StoreDb) -> None:
    """A cluster's shard writes the bucket it is filling as it fills: its named part is
    replaced each time; other writers' parts, and unnamed parts, add up."""
    with db.open() as s:
        g = s.gathering
        g.add_bucket("cam", 60.0, 1, b"a1", part="w1")
        g.add_bucket("cam", 60.0, 30, b"a30", part="w1")  # the same part, grown
        g.add_bucket("cam", 60.0, 7, b"b7", part="w2")  # a restarted shard's
        g.add_bucket("cam", 120.0, 4, b"c4", part="w1")
        g.add_bucket("cam", 60.0, 2, b"old")
        g.add_bucket("cam", 60.0, 2, b"old")
        assert sorted(g.buckets("cam", 0, 1e300)) == [
            (60.0, 2, b"old"), (60.0, 2, b"old"), (60.0, 7, b"b7"), (60.0, 30, b"a30"),
            (120.0, 4, b"c4")]


def test_gathering_table_without_part_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with SQLiteStore(path) as s:
        s.gathering.add_bucket("cam", 60.0, 3, b"g")
    conn = sqlite3.connect(path)  # a file written before buckets had parts
    conn.execute("DROP INDEX gathering_part")
    conn.execute("ALTER TABLE gathering DROP COLUMN part")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as s:
        s.gathering.add_bucket("cam", 60.0, 5, b"p", part="w")
        s.gathering.add_bucket("cam", 60.0, 6, b"q", part="w")
        assert sorted(s.gathering.buckets("cam", 0, 1e300)) == [(60.0, 3, b"g"), (60.0, 6, b"q")]


def test_marked_frames_and_calibrated_models(db: StoreDb) -> None:
    """Calibration's records: frames bounded per stream, marks replaced, pictures and the
    model bytes back as written after a reopen, and a stream forgotten as a whole."""
    def frame(fid: str, sid: str = "cam", t: float = 1.0) -> dict:
        return {"id": fid, "stream_id": sid, "captured_at": t, "width": 640, "height": 360,
                "model_count": 12.5, "marks": None}

    with db.open() as s:
        c = s.calibration
        assert c.frames("cam") == [] and c.frame("cam", "a") is None
        assert c.add_frame(frame("a"), b"\xff\xd8a", b"dens-a", limit=2)
        assert c.add_frame(frame("b", t=2.0), b"\xff\xd8b", b"dens-b", limit=2)
        assert not c.add_frame(frame("c", t=3.0), b"\xff\xd8c", b"d", limit=2)  # full
        assert c.add_frame(frame("a", "other"), b"o", b"o", limit=2)  # per stream
        marks = {"points": [[1.5, 2.0], [639.0, 359.5]]}
        assert c.set_marks("cam", "b", marks)
        assert not c.set_marks("cam", "nope", {"count": 3})
        c.save_model("cam", "m1", b"onnx-1")
        c.save_model("cam", "m2", b"onnx-2")  # one model per stream: the newest
    with db.open() as s:
        c = s.calibration
        assert [f["id"] for f in c.frames("cam")] == ["a", "b"]
        assert c.frame("cam", "b") == {**frame("b", t=2.0), "marks": marks}
        assert c.frame("cam", "a")["marks"] is None
        assert c.image("cam", "a") == b"\xff\xd8a" and c.density("cam", "b") == b"dens-b"
        assert c.image("cam", "nope") is None
        assert c.model("cam", "m2") == b"onnx-2" and c.model("cam", "m1") is None
        assert c.set_marks("cam", "b", None) and c.frame("cam", "b")["marks"] is None
        assert c.delete_frame("cam", "a") and not c.delete_frame("cam", "a")
        c.forget("cam", frames=False)
        assert c.model("cam", "m2") is None and len(c.frames("cam")) == 1
        c.forget("cam")
        assert c.frames("cam") == [] and len(c.frames("other")) == 1


def test_delete_counts_before(store: SQLiteStore) -> None:
    for i in range(10):
        store.history.add("cam", float(i), 1.0, 1.0)
        store.history.add("other", float(i), 1.0, 1.0)
    store.flush()
    assert store.history.delete(before=4) == 8
    assert store.history.counts("cam")[0]["t"] == 4.0
    assert len(store.history.counts("other")) == 6


_CHILD = textwrap.dedent(
    """
    import sys
    from crowdcount.streamer.store import SQLiteStore

    s = SQLiteStore(sys.argv[1], flush_interval=0.002, batch_rows=64)
    s.streams.save("cam", "Camera", "rtsp://host/cam", "rtsp", {"zones": 2})
    i = 0
    while True:
        for _ in range(37):
            s.history.add("cam", float(i), float(i % 11), 0.5, {"z": 1.0})
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
    with SQLiteStore(path) as s:
        ts = [r["t"] for r in s.history.counts("cam", limit=10**9)]
        # Every row reported committed is there, and the rows after it form a gap-free
        # prefix too (a transaction cut by the kill is rolled back whole).
        assert len(ts) >= committed
        assert ts == [float(i) for i in range(len(ts))]
        assert [x["id"] for x in s.streams.all()] == ["cam"]
        # The reopened store keeps writing after the crash.
        s.history.add("cam", 1e9, 1.0, 1.0)
        s.flush()
        assert s.history.counts("cam", limit=1)[0]["t"] == 1e9


def test_alerts_table_raise_clear_and_queries(db: StoreDb) -> None:
    store = db.open(flush_interval=10)  # only the wake-up can commit in time
    store.alerts.raised("cam", "door", "door-busy", 100.0, 30.0)
    store.alerts.raised("cam", None, "busy", 105.0, 50.0)
    store.alerts.raised("hall", None, "hall-busy", 90.0, 12.0)
    deadline = time.monotonic() + 5
    while len(store.alerts.query()) < 3:  # alerts wake the writer at once
        assert time.monotonic() < deadline
        time.sleep(0.01)
    store.alerts.cleared("cam", "door-busy", 100.0, 120.0, 42.0)
    store.alerts.cleared("hall", "hall-busy", 90.0, 95.0, 5.0)  # peak never shrinks
    store.flush()
    rows = store.alerts.query()
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
    assert [r["rule"] for r in store.alerts.query(stream="cam")] == ["busy", "door-busy"]
    assert [r["rule"] for r in store.alerts.query(active=True)] == ["busy"]
    assert [r["rule"] for r in store.alerts.query(active=False)] == ["door-busy", "hall-busy"]
    # Overlap with [since, until): open alerts overlap everything after their raise.
    assert [r["rule"] for r in store.alerts.query(since=110)] == ["busy", "door-busy"]
    assert [r["rule"] for r in store.alerts.query(since=121)] == ["busy"]
    assert [r["rule"] for r in store.alerts.query(until=100)] == ["hall-busy"]
    assert len(store.alerts.query(limit=1)) == 1
    # A repeated raise (same stream, rule and time) is one alert.
    store.alerts.raised("cam", None, "busy", 105.0, 50.0)
    store.flush()
    assert len(store.alerts.query()) == 3
    store.close()
    # Durable, and a restarted service closes what the old process left open.
    store = db.open()
    assert store.alerts.close_open(200.0) == 1
    assert store.alerts.query(active=True) == []
    assert store.alerts.query(stream="cam")[0]["cleared_at"] == 200.0
    store.close()


def test_alert_ops_and_counts_keep_order_across_a_failed_commit(db: StoreDb) -> None:
    store = db.open(flush_interval=10, fail_fast=True)
    with db.block_writes():  # commits fail
        store.alerts.raised("cam", None, "r", 1.0, 5.0)
        store.alerts.cleared("cam", "r", 1.0, 2.0, 6.0)
        store.history.add("cam", 1.0, 5.0, 5.0)
        with pytest.raises(db.error):
            store.flush()
        assert store.stats()["pending"] == 1
    store.flush()  # (or the writer thread did it already)
    assert store.alerts.query()[0]["cleared_at"] == 2.0  # the raise was applied before its clear
    assert store.stats()["pending"] == 0 and len(store.history.counts("cam")) == 1
    store.close()
