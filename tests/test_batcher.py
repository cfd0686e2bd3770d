"""The batcher: one pending frame per stream, newest wins, fair batches, fps limits."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from crowdcount.model.types import Frame
from crowdcount.streamer import batcher as batcher_module
from crowdcount.streamer.batcher import Batcher

IMAGE = np.zeros((32, 32, 3), np.uint8)


def frame(stream_id: str, seq: int = 0) -> Frame:
    return Frame(stream_id, seq, time.time(), IMAGE)


def test_newest_wins_and_replaced_frames_are_counted():
    b = Batcher()
    for seq in range(3):
        assert b.submit(frame("a", seq))
    assert b.pending() == 1
    (got,) = b.take(8, timeout=0)
    assert got.seq == 2
    stats = b.stats("a")
    assert (stats.submitted, stats.replaced, stats.skipped, stats.taken) == (3, 2, 0, 1)
    assert b.dropped("a") == 2
    assert b.take(8, timeout=0) == []


def test_batches_span_streams_up_to_max_batch_oldest_first():
    b = Batcher()
    for sid in "abcde":
        b.submit(frame(sid))
        time.sleep(0.002)  # distinct pending-since times
    assert [f.stream_id for f in b.take(3, timeout=0)] == ["a", "b", "c"]
    b.submit(frame("a", 1))  # a is pending again, but after d and e
    assert [f.stream_id for f in b.take(3, timeout=0)] == ["d", "e", "a"]
    # a replacement keeps its place in line: it does not become "younger"
    b.submit(frame("x"))
    time.sleep(0.002)
    b.submit(frame("y"))
    b.submit(frame("x", 1))
    assert [(f.stream_id, f.seq) for f in b.take(1, timeout=0)] == [("x", 1)]
    assert b.batch_histogram() == {3: 2, 1: 1}


def test_fps_limit_skips_frames_and_counts_them(monkeypatch):
    # The batcher's clock, advanced by hand: one frame every 5 ms for exactly one second, so
    # the count does not depend on how fast this machine runs the loop.
    clock = [1000.0]
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    b = Batcher()
    b.add("limited", fps_limit=10)
    b.add("free")
    accepted = 0
    sent = 0
    for _ in range(200):
        accepted += b.submit(frame("limited", sent))
        b.submit(frame("free", sent))
        sent += 1
        b.take(8, timeout=0)
        clock[0] += 0.005
    stats = b.stats("limited")
    assert accepted == 10, accepted
    assert stats.skipped == sent - accepted
    assert stats.dropped == stats.skipped  # taken each time, so nothing was replaced
    assert b.stats("free").taken == sent
    assert b.stats("free").dropped == 0


def test_take_times_out_and_close_wakes_a_blocked_take():
    b = Batcher()
    t0 = time.monotonic()
    assert b.take(4, timeout=0.05) == []
    assert time.monotonic() - t0 >= 0.045
    got: list[list[Frame]] = []
    taker = threading.Thread(target=lambda: got.append(b.take(4)))  # no timeout
    taker.start()
    time.sleep(0.1)
    assert taker.is_alive()
    b.close()
    taker.join(10)  # a deadline, not a speed claim: close() must wake it at all
    assert not taker.is_alive()
    assert got == [[]]
    assert b.submit(frame("a")) is False


def test_submit_wakes_a_blocked_take():
    b = Batcher()
    got: list[list[Frame]] = []
    taker = threading.Thread(target=lambda: got.append(b.take(4, timeout=5)))
    taker.start()
    time.sleep(0.05)
    b.submit(frame("a", 7))
    taker.join(10)
    assert [f.seq for f in got[0]] == [7]


def test_remove_forgets_pending_frame_and_counters():
    b = Batcher()
    b.submit(frame("a"))
    b.submit(frame("a", 1))
    b.remove("a")
    assert b.pending() == 0
    assert b.take(4, timeout=0) == []
    assert b.dropped("a") == 0


def test_concurrent_submitters_lose_nothing_unaccounted():
    b = Batcher()
    streams = [f"s{i}" for i in range(4)]
    taken: dict[str, int] = dict.fromkeys(streams, 0)
    stop = threading.Event()

    def produce(sid: str) -> None:
        for seq in range(2000):
            b.submit(frame(sid, seq))

    def consume() -> None:
        while not stop.is_set() or b.pending():
            for f in b.take(3, timeout=0.01):
                taken[f.stream_id] += 1

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(sid,)) for sid in streams]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    consumer.join(5)
    for sid in streams:
        s = b.stats(sid)
        assert s.submitted == 2000
        assert s.taken == taken[sid] > 0
        assert s.taken + s.replaced == 2000
    assert max(b.batch_histogram()) <= 3
