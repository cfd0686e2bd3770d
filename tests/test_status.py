"""StreamStatus under real concurrency: a decode thread and the pipeline on the event loop
update the same stream's figures at once, and no update may be lost."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sources.base import ThreadedSource
from crowdcount.streamer.status import StreamState, StreamStatus
from tests.fixtures.waiting import wait_until

N = 30_000


class Burst(ThreadedSource):
    """Publishes exactly ``n`` tiny frames as fast as its thread can, then ends."""

    def __init__(self, stream_id: str, n: int) -> None:
        super().__init__(stream_id)
        self.n = n
        self.image = np.full((32, 32, 3), 128, np.uint8)

    def _run(self) -> None:
        self.status.state = StreamState.RUNNING
        for _ in range(self.n):
            if self._stop.is_set():
                return
            self._publish(self.image)
        self._finish()


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads every microsecond, so a read-add-write of a counter is interrupted
    often (a lost update shows up in a run of this size)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_dropped_is_the_sum_of_its_writers_and_to_dict_keeps_the_api_shape() -> None:
    status = StreamStatus(source_dropped=3, batch_dropped=4, frames_in=10, frames_out=3)
    assert status.dropped == 7
    d = status.to_dict()
    assert list(d) == ["state", "fps_in", "fps_out", "frames_in", "frames_out", "dropped",
                       "reconnects", "last_error", "last_count", "decode",
                       "keyframe_interval", "decode_note", "frames_decoded", "decode_seconds",
                       "frame_size"]
    assert d["dropped"] == 7
    with pytest.raises(AttributeError):
        status.dropped = 1  # type: ignore[misc]  # a sum has no writer


async def test_every_frame_is_counted_once_under_contention(runtime, busy_switching) -> None:
    """Each published frame is either processed or dropped (by the source or the batcher):
    with two writers racing on one counter some drops would vanish."""
    sources = [Burst(f"burst{i}", N) for i in range(2)]
    async with Pipeline(runtime, max_batch=4) as pipe:
        for source in sources:
            await pipe.add_stream(source)
        for source in sources:
            st = source.status
            await wait_until(lambda st=st: st.state == StreamState.ENDED, timeout=120,
                             what="the burst to end")
            await wait_until(lambda st=st: st.frames_out + st.dropped == N, timeout=30,
                             what=f"every frame accounted for: {st}")
            assert st.frames_in == N
            assert st.source_dropped > 0 and st.batch_dropped > 0  # both writers raced
    for source in sources:
        st = source.status
        assert st.frames_out + st.source_dropped + st.batch_dropped == N
