"""What only the cluster's store does, against a real PostgreSQL server
(tests/fixtures/postgres.py): replays across writers, shard scoping, status, cluster
settings, NOTIFY, and rollups for a database from before them. Everything the SQLite store
does runs on PostgreSQL too, through the ``db`` fixture of ``tests/test_store.py`` and
``tests/test_history.py``.
"""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("PostgreSQL store", "psycopg", hint="pip install crowdcount[cluster]")

import json
import threading

import psycopg
import pytest

from crowdcount.streamer.store.postgres import FEED_CHANNEL, STREAMS_CHANNEL, PostgresStore
from tests.fixtures.waiting import wait_until_sync
from tests.test_history import T0, expected, fill

pytestmark = pytest.mark.postgres


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
        assert s.stats()["written"] == 15 and s.stats()["pending"] == 0
        assert s.stats()["duplicates"] == 5
    # A second writer (the old shard's last batch arriving late) cannot duplicate either.
    with PostgresStore(postgres_dsn, flush_interval=60) as other:
        other.history.add("cam", 104.0, 99.0, 99.0)
        other.flush()
        assert other.stats()["duplicates"] == 1
        assert other.history.counts("cam", since=104, until=105)[0]["count"] == 4.0


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


def test_database_from_before_rollups_gets_them_from_raw_rows(postgres_dsn: str) -> None:
    with PostgresStore(postgres_dsn) as store:
        data = fill(store, seconds=70)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # an older build's schema
        conn.execute("DROP TABLE counts_1s, counts_1m, zone_counts_1s, zone_counts_1m")
    with PostgresStore(postgres_dsn) as store:
        got = store.history.counts("cam", step=60, with_zones=True)
        assert store.history.counts("cam", step=1)[0]["n"] == 10
    want = expected(data, "count", 60)
    assert [(r["t"], r["n"]) for r in got] == [(t, v[3]) for t, v in want.items()]
    assert got[0]["zones"]["door"] == pytest.approx(expected(data, "door", 60)[T0][0])


def _waiting_on_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND NOT granted").fetchone()
        return bool(row and row[0])


def test_two_processes_claiming_one_setting_cannot_both_win(postgres_dsn: str) -> None:
    """Two API processes start a calibration of one camera at once: the second waits for
    the first's transaction, then sees its record and loses. The first is held inside its
    transaction until the second is seen waiting on the lock (in pg_locks)."""
    inside, go = threading.Event(), threading.Event()

    def free_slowly(value: object) -> bool:
        inside.set()
        assert go.wait(30)
        return value is None

    won: dict[str, bool] = {}
    with PostgresStore(postgres_dsn) as a, PostgresStore(postgres_dsn) as b:
        first = threading.Thread(target=lambda: won.update(a=a.settings.claim_stream_setting(
            "cam", "job", {"owner": "a"}, free_slowly)))
        first.start()
        assert inside.wait(30)
        second = threading.Thread(target=lambda: won.update(b=b.settings.claim_stream_setting(
            "cam", "job", {"owner": "b"}, lambda value: value is None)))
        second.start()
        wait_until_sync(lambda: _waiting_on_a_lock(postgres_dsn), 30, "b waiting on the lock")
        go.set()
        first.join(30)
        second.join(30)
        assert won == {"a": True, "b": False}
        assert b.settings.stream_settings("job") == {"cam": {"owner": "a"}}


def test_marked_frames_are_counted_and_added_under_the_streams_lock(postgres_dsn: str) -> None:
    """The 64-frame bound holds across processes: a capture waits while another process
    holds the stream's lock (taken here by hand, as a capture's transaction would)."""
    frame = {"id": "f1", "stream_id": "cam", "captured_at": 1.0, "width": 64, "height": 48,
             "model_count": 1.0, "marks": None}
    added: list[bool] = []
    with PostgresStore(postgres_dsn) as s, psycopg.connect(postgres_dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                       ("marked_frames:cam",))
        th = threading.Thread(target=lambda: added.append(
            s.calibration.add_frame(frame, b"\xff\xd8", b"d", limit=1)))
        th.start()
        wait_until_sync(lambda: _waiting_on_a_lock(postgres_dsn), 30, "the capture waiting")
        assert added == []
        holder.commit()
        th.join(30)
        assert added == [True]
        assert [f["id"] for f in s.calibration.frames("cam")] == ["f1"]
