"""Between the sources and the one inference thread.

A live counter must show *now*, so nothing here is a queue: each stream has at most one
pending frame and a newer one replaces it. Whatever the model cannot keep up with is dropped
(and counted) instead of turning into delay. Taking frames oldest-pending-first keeps a fast
stream from starving a slow one when batches are smaller than the number of streams.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from crowdcount.model.types import Frame


@dataclass(slots=True)
class LaneStats:
    """Counters of one stream. ``replaced``: pending frames a newer one overwrote;
    ``skipped``: frames refused by ``fps_limit``; ``taken``: frames handed to the model."""

    submitted: int = 0
    replaced: int = 0
    skipped: int = 0
    taken: int = 0

    @property
    def dropped(self) -> int:
        return self.replaced + self.skipped


@dataclass(slots=True)
class _Lane:
    fps_limit: float | None = None
    pending: Frame | None = None
    pending_since: float = 0.0
    next_due: float | None = None
    last_arrival: float | None = None
    stats: LaneStats = field(default_factory=LaneStats)


class Batcher:
    """Thread-safe: sources' pumps ``submit`` from the event loop, the worker ``take``s."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self.batch_sizes: Counter[int] = Counter()

    def add(self, stream_id: str, fps_limit: float | None = None) -> None:
        """Register (or reconfigure) a stream; ``submit`` also registers unknown ones."""
        if fps_limit is not None and fps_limit <= 0:
            raise ValueError("fps_limit must be positive")
        with self._cond:
            lane = self._lanes.setdefault(stream_id, _Lane())
            lane.fps_limit = fps_limit
            lane.next_due = None

    def submit(self, frame: Frame) -> bool:
        """Offer a frame; never blocks. False when ``fps_limit`` refused it or after close."""
        now = time.monotonic()
        with self._cond:
            if self._closed:
                return False
            lane = self._lanes.get(frame.stream_id)
            if lane is None:
                lane = self._lanes[frame.stream_id] = _Lane()
            stats = lane.stats
            stats.submitted += 1
            gap = None if lane.last_arrival is None else now - lane.last_arrival
            lane.last_arrival = now
            if lane.fps_limit is not None:
                period = 1.0 / lane.fps_limit
                # A frame a little early is taken when it is nearer the due time than the
                # next one will be (half its spacing to the previous frame, at most a quarter
                # period): a source that already delivers at the limit (a keyframes-only
                # camera, one keyframe a second) jitters around the grid, and refusing its
                # early frames would halve its rate. The grid itself does not move.
                slack = 0.0 if gap is None else min(gap / 2, period / 4)
                if lane.next_due is not None and now < lane.next_due - slack:
                    stats.skipped += 1
                    return False
                # Keep a fixed grid while the stream is on time, so arrival jitter does not
                # push the accepted rate below the limit; restart it after a gap so a stalled
                # stream does not burst.
                due = lane.next_due
                lane.next_due = (due if due is not None and now - due < period else now) + period
            if lane.pending is not None:
                stats.replaced += 1
            else:
                lane.pending_since = now
                self._cond.notify()
            lane.pending = frame
            return True

    def take(self, max_batch: int, timeout: float | None = None) -> list[Frame]:
        """Up to ``max_batch`` pending frames, one per stream, oldest pending first.

        Blocks until one is pending; returns ``[]`` on timeout or once closed.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return []
                ready = [lane for lane in self._lanes.values() if lane.pending is not None]
                if ready:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            ready.sort(key=lambda lane: lane.pending_since)
            batch: list[Frame] = []
            for lane in ready[:max_batch]:
                assert lane.pending is not None
                batch.append(lane.pending)
                lane.pending = None
                lane.stats.taken += 1
            self.batch_sizes[len(batch)] += 1
            return batch

    def remove(self, stream_id: str) -> None:
        """Forget a stream and its pending frame (its counters go with it)."""
        with self._cond:
            self._lanes.pop(stream_id, None)

    def close(self) -> None:
        """Wake every ``take`` (which returns ``[]``) and refuse further frames."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self, stream_id: str) -> LaneStats:
        """A copy of the stream's counters (zeros for an unknown stream)."""
        with self._cond:
            lane = self._lanes.get(stream_id)
            if lane is None:
                return LaneStats()
            s = lane.stats
            return LaneStats(s.submitted, s.replaced, s.skipped, s.taken)

    def dropped(self, stream_id: str) -> int:
        """Frames of this stream the model will never see (replaced + skipped)."""
        return self.stats(stream_id).dropped

    def batch_histogram(self) -> Counter[int]:
        """A copy of how many batches of each size ``take`` has returned."""
        with self._cond:
            return Counter(self.batch_sizes)

    def pending(self) -> int:
        """How many streams have a frame waiting (at most the number of streams)."""
        with self._cond:
            return sum(lane.pending is not None for lane in self._lanes.values())
