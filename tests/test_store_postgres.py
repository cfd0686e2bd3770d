"""PostgresStore against a real PostgreSQL server (tests/fixtures/postgres.py).

The SQLite store's behavioural tests that take a ``store`` fixture are imported and run again
here, against PostgreSQL (pytest collects them from this module, with this module's
``store``), so both stores answer the service and the routes alike. Below them, what only
the cluster's store does: replays across writers, shard scoping, status, settings, NOTIFY.
"""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("PostgreSQL store", "psycopg", hint="pip install crowdcount[cluster]")

import json
import threading

import numpy as np
import psycopg
import pytest

from crowdcount.streamer.store.postgres import FEED_CHANNEL, STREAMS_CHANNEL, PostgresStore
from tests.test_history import T0, expected, fill
from tests.test_store import (  # noqa: F401  (collected here: the same tests, on PostgreSQL)
    test_aggregation_floors_negative_times,
    test_aggregation_per_step,
    test_delete_counts_before,
    test_parts_speak_the_interfaces,
    test_round_trip_with_zones,
    test_rows_page_through_a_range_exactly,
    test_same_stream_and_time_is_stored_once,
    test_since_until_and_limit,
    test_writer_thread_commits_without_flush,
    test_writes_from_thread_while_reading,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_dsn: str):
    s = PostgresStore(postgres_dsn, flush_interval=0.05)
    yield s
    s.close()


def test_replayed_rows_are_not_duplicated(postgres_dsn: str) -> None:
    """A shard restarted after a failover may send rows the database already has."""
    with PostgresStore(postgres_dsn, flush_interval=60) as s:
        for i in range(10):
            s.history.add("cam", 100.0 + i, float(i), float(i))
        s.flush()
        for i in range(5, 15):  # 5 already stored, 5 new
            s.history.add("cam", 100.0 + i, float(i), float(i))
        s.flush()
        assert [r["t"] for r in s.history.counts("cam")] == [100.0 + i for i in range(15)]
        assert s.stats()["written"] == 15 and s.stats()["pending"] == 0 and s.duplicates == 5
    # A second writer (the old shard's last batch arriving late) cannot duplicate either.
    with PostgresStore(postgres_dsn, flush_interval=60) as other:
        other.history.add("cam", 104.0, 99.0, 99.0)
        other.flush()
        assert other.duplicates == 1
        assert other.history.counts("cam", since=104, until=105)[0]["count"] == 4.0


def test_parts_speak_the_store_interfaces(store: PostgresStore) -> None:
    """The routes, count sink and alert engine use these calls on either store."""
    store.history.add("cam", 1.0, 2.0, 2.0, {"door": 1.0})
    store.alerts.raised("cam", "door", "busy", 1.0, 2.0)
    assert store.flush() == 2
    assert store.history.counts("cam", with_zones=True)[0]["zones"] == {"door": 1.0}
    assert store.history.rows("cam") == [(1.0, 2.0, 2.0)]
    assert store.alerts.query()[0]["rule"] == "busy"
    store.streams.save("cam", "cam", "rtsp://h/c", "rtsp", {"fps_limit": 2.0})
    assert [x["options"] for x in store.streams.all()] == [{"fps_limit": 2.0}]
    assert set(store.stats()) == {"pending", "written", "dropped", "last_error"}


def test_close_flushes_and_reopen_sees_rows(postgres_dsn: str) -> None:
    s = PostgresStore(postgres_dsn, flush_interval=60)
    for i in range(7):
        s.history.add("cam", float(i), 1.0, 1.0)
    s.close()
    s.close()
    with pytest.raises(RuntimeError):
        s.history.add("cam", 1.0, 1.0, 1.0)
    with PostgresStore(postgres_dsn) as again:
        assert len(again.history.counts("cam")) == 7


def test_failed_commit_keeps_rows_and_order(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, flush_interval=60)
    blocker = psycopg.connect(postgres_dsn)
    blocker.execute("LOCK TABLE counts IN ACCESS EXCLUSIVE MODE")  # held until rollback
    store._db._wconn.execute("SET lock_timeout = '100ms'")
    store.alerts.raised("cam", None, "r", 1.0, 5.0)
    store.alerts.cleared("cam", "r", 1.0, 2.0, 6.0)
    store.history.add("cam", 1.0, 5.0, 5.0)
    with pytest.raises(psycopg.errors.LockNotAvailable):
        store.flush()
    assert store.stats()["pending"] == 1 and "LockNotAvailable" in store.stats()["last_error"]
    blocker.rollback()
    blocker.close()
    store.flush()
    assert store.alerts.query()[0]["cleared_at"] == 2.0
    assert store.stats()["pending"] == 0 and len(store.history.counts("cam")) == 1
    store.close()


def test_streams_shards_and_scoped_views(postgres_dsn: str) -> None:
    with PostgresStore(postgres_dsn) as api:
        api.streams.save("a", "a", "rtsp://cam/a", "rtsp", {"max_side": 640}, shard=0)
        api.streams.save("b", "b", "/videos/b.mp4", "file", {"loop": True}, shard=1,
                        origin="config")
        api.streams.save("c", "c", "rtsp://cam/c", "rtsp", shard=1)
        assert api.cluster.shard_loads(3) == {0: 1, 1: 2, 2: 0}
        # An update keeps the shard and the creation time.
        created = api.streams.get("a")["created_at"]
        api.streams.save("a", "a", "rtsp://cam/a2", "rtsp", {}, shard=2)
        a = api.streams.get("a")
        assert (a["shard"], a["url"], a["created_at"], a["options"]) == (
            0, "rtsp://cam/a2", created, {})
        with PostgresStore(postgres_dsn, shard=1) as shard1:
            assert [s["id"] for s in shard1.streams.all()] == ["b", "c"]
            assert shard1.streams.get("b")["origin"] == "config"
            # Its open alerts are closed at its start; shard 0's stay open.
            shard1.alerts.raised("b", None, "busy", 10.0, 3.0)
            api.alerts.raised("a", None, "busy", 11.0, 3.0)
            api.flush()
            assert shard1.alerts.close_open(50.0) == 1
            assert [r["stream"] for r in api.alerts.query(active=True)] == ["a"]
            shard1.cluster.report_status(
                "node-x", {"b": {"state": "running"}, "c": {"state": "failed"}})
        rows = {s["id"]: s for s in api.cluster.streams_with_status()}
        assert rows["b"]["status"] == {"state": "running"} and rows["b"]["node"] == "node-x"
        assert 0 <= rows["b"]["status_age_s"] < 5
        assert rows["a"]["status"] is None and rows["a"]["status_age_s"] is None
        assert api.streams.delete("c") is True
        assert "c" not in {s["id"] for s in api.cluster.streams_with_status()}
        api.cluster.set_setting("thresholds", [{"name": "busy", "stream": "a", "high": 5}])
        assert api.cluster.get_setting("thresholds")[0]["high"] == 5
        assert api.cluster.get_setting("missing", 7) == 7


def test_notify_reaches_listeners(postgres_dsn: str) -> None:
    listener = psycopg.connect(postgres_dsn, autocommit=True)
    listener.execute(f"LISTEN {FEED_CHANNEL}")
    listener.execute(f"LISTEN {STREAMS_CHANNEL}")
    got: list[tuple[str, str]] = []

    def listen() -> None:
        for note in listener.notifies(timeout=5, stop_after=3):
            got.append((note.channel, note.payload))

    th = threading.Thread(target=listen)
    th.start()
    with PostgresStore(postgres_dsn) as s:
        assert s.cluster.notify(FEED_CHANNEL, {"stream": "a", "count": 3.5})
        assert not s.cluster.notify(FEED_CHANNEL, {"big": "x" * 9000})  # over NOTIFY's limit
        s.streams.save("a", "a", "rtsp://cam/a", "rtsp")
        s.streams.delete("a")
    th.join()
    listener.close()
    assert got[0] == (FEED_CHANNEL, json.dumps({"stream": "a", "count": 3.5},
                                               separators=(",", ":")))
    assert got[1:] == [(STREAMS_CHANNEL, "a"), (STREAMS_CHANNEL, "a")]


@pytest.mark.parametrize("step", [1, 60])
def test_stepped_counts_with_zones_equal_raw_aggregation(store: PostgresStore, step: int) -> None:
    """The SQLite store answers these from rollups; PostgreSQL aggregates raw rows in SQL,
    with the same result (zones that come and go included). Raw rows are never pruned."""
    data = fill(store, seconds=130)
    got = store.history.counts("cam", step=step, with_zones=True)
    want = expected(data, "count", step)
    assert [r["t"] for r in got] == list(want)
    door = expected(data, "door", step)
    half = np.arange(len(data["t"])) >= len(data["t"]) // 2
    queue = expected(data, "queue", step, half)
    for r in got:
        mean, lo, hi, n = want[r["t"]]
        assert r["n"] == n and r["min"] == pytest.approx(lo) and r["max"] == pytest.approx(hi)
        assert r["count"] == pytest.approx(mean) and r["smoothed"] == pytest.approx(mean / 2)
        assert (r["zones"]["door"], r["zones_min"]["door"], r["zones_max"]["door"]) == (
            pytest.approx(door[r["t"]][0]), pytest.approx(door[r["t"]][1]),
            pytest.approx(door[r["t"]][2]))
        assert ("queue" in r["zones"]) == (r["t"] in queue)
    assert store.history.prune_raw(T0 + 120) == 0
    assert len(store.history.counts("cam", limit=100_000)) == len(data["t"])
