"""The whole middle of the flow: synthetic sources → batcher → real runtime → sinks."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import pytest

from crowdcount.model.types import Result
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sinks import Sink
from crowdcount.streamer.sources.synthetic import SyntheticSource
from crowdcount.streamer.status import StreamState
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until


class Recorder:
    """A well-behaved sink: stores references only."""

    def __init__(self) -> None:
        self.by_stream: dict[str, list[Result]] = defaultdict(list)

    def on_result(self, result: Result) -> None:
        self.by_stream[result.frame.stream_id].append(result)

    def count(self, stream_id: str) -> int:
        return len(self.by_stream[stream_id])


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def on_result(self, result: Result) -> None:
        self.calls += 1
        raise RuntimeError("sink broke")


async def test_three_streams_of_different_sizes_get_exact_counts(runtime):
    rec = Recorder()
    sizes = {"big": (640, 480, 255), "mid": (320, 256, 180), "small": (128, 96, 90)}
    async with Pipeline(runtime, max_batch=4) as pipe:
        pipe.add_sink(rec)
        for sid, (w, h, level) in sizes.items():
            await pipe.add_stream(SyntheticSource(sid, w, h, fps=20, brightness=level))
        await wait_until(lambda: all(rec.count(sid) >= 8 for sid in sizes))
        for sid, (w, h, _) in sizes.items():
            results = rec.by_stream[sid]
            assert all(r.density.shape == (h // 8, w // 8) for r in results)
            for r in results:
                assert r.count == pytest.approx(expected_count(r.frame.image), rel=1e-4)
            assert [r.frame.seq for r in results] == sorted({r.frame.seq for r in results})
            status = pipe.streams[sid].status
            assert status.state is StreamState.RUNNING
            assert status.frames_out >= len(results)
            assert status.last_count == pytest.approx(results[-1].count, rel=1e-4)
        stats = pipe.stats()
        assert sum(n * c for n, c in stats.batch_sizes.items()) >= 24
        assert stats.inference_ms_p50 is not None and stats.inference_ms_p95 is not None
        assert stats.latency_ms_p50 is not None and stats.latency_ms_p50 > 0
        assert stats.sink_errors == 0 and stats.inference_errors == 0
        assert stats.to_dict()["frames"] == stats.frames


async def test_square_brightness_change_shows_in_counts(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        src = SyntheticSource("cam", 320, 256, fps=30, brightness=255, square=64)
        await pipe.add_stream(src)
        await wait_until(lambda: rec.count("cam") >= 3)
        assert rec.by_stream["cam"][-1].count == pytest.approx(64 * 64 / 64, rel=1e-4)
        src.brightness = 51
        await wait_until(lambda: rec.by_stream["cam"][-1].count < 20)
        assert rec.by_stream["cam"][-1].count == pytest.approx(64 * 64 / 64 * 0.2, rel=1e-4)


async def test_remove_stream_while_running(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        sources = {sid: SyntheticSource(sid, 160, 128, fps=30) for sid in "abc"}
        for s in sources.values():
            await pipe.add_stream(s)
        await wait_until(lambda: all(rec.count(sid) >= 3 for sid in "abc"))
        await pipe.remove_stream("b")
        removed_at = rec.count("b")
        others = {sid: rec.count(sid) for sid in "ac"}
        await wait_until(lambda: all(rec.count(sid) >= others[sid] + 5 for sid in "ac"))
        assert rec.count("b") == removed_at  # nothing delivered after removal
        assert set(pipe.streams) == {"a", "c"}
        assert sources["b"].status.state is StreamState.STOPPED
        assert not any(t.name == "synthetic-b" for t in threading.enumerate())
        with pytest.raises(KeyError):
            await pipe.remove_stream("b")


async def test_per_stream_max_side_shrinks_density(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        await pipe.add_stream(SyntheticSource("full", 640, 480, fps=20))
        await pipe.add_stream(SyntheticSource("capped", 640, 480, fps=20), max_side=320)
        await wait_until(lambda: rec.count("full") >= 2 and rec.count("capped") >= 2)
        assert rec.by_stream["full"][-1].density.shape == (60, 80)
        assert rec.by_stream["capped"][-1].density.shape == (32, 40)  # 256x320 input
        # a 120x120 square of 255 is 225 at full size; 4x fewer pixels ~= a quarter
        assert rec.by_stream["full"][-1].count == pytest.approx(225, rel=1e-4)
        assert rec.by_stream["capped"][-1].count == pytest.approx(225 / 4, rel=0.1)


async def test_sink_exception_is_isolated_and_sinks_come_and_go(runtime, caplog):
    good, late, bad = Recorder(), Recorder(), Exploding()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(bad)
        pipe.add_sink(good)
        await pipe.add_stream(SyntheticSource("a", 160, 128, fps=30))
        await pipe.add_stream(SyntheticSource("b", 160, 128, fps=30))
        pipe.add_sink(late)
        pipe.add_sink(late)  # twice: still one delivery per result
        await wait_until(lambda: late.count("a") >= 5 and good.count("b") >= 5)
        assert bad.calls >= good.count("a") + good.count("b") - 1
        assert pipe.stats().sink_errors == bad.calls
        assert sum("sink broke" in r.getMessage() or r.exc_info is not None
                   for r in caplog.records) == 1  # logged once, not per frame
        seqs = [r.frame.seq for r in late.by_stream["a"]]
        assert seqs == sorted(set(seqs))
        pipe.remove_sink(late)
        seen = late.count("a")
        pipe.remove_sink(bad)
        errors = pipe.stats().sink_errors
        await wait_until(lambda: good.count("a") >= seen + 5)
        assert late.count("a") == seen
        assert pipe.stats().sink_errors == errors


async def test_fps_limit_and_drop_accounting(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        src = SyntheticSource("cam", 160, 128, fps=40)
        await pipe.add_stream(src, fps_limit=5)
        await asyncio.sleep(2.0)
        st = src.status
        assert 7 <= st.frames_out <= 12, st
        # every frame is either processed, dropped, or (at most one) still in flight
        assert st.frames_in - st.frames_out - st.dropped <= 2, st
        assert st.dropped >= st.frames_in - st.frames_out - 2 > 40


async def test_source_end_leaves_status_as_the_source_set_it(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        src = SyntheticSource("clip", 160, 128, fps=50, frames=5)
        await pipe.add_stream(src)
        await wait_until(lambda: src.status.state is StreamState.ENDED)
        await asyncio.sleep(0.2)
        assert "clip" in pipe.streams
        assert 1 <= rec.count("clip") <= 5
        assert src.status.state is StreamState.ENDED
        await pipe.remove_stream("clip")


async def test_add_remove_cycles_leave_thread_count_flat(runtime):
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        await pipe.add_stream(SyntheticSource("steady", 160, 128, fps=30))
        await wait_until(lambda: rec.count("steady") >= 1)
        baseline = threading.active_count()
        for i in range(20):
            await pipe.add_stream(SyntheticSource(f"s{i}", 96, 64, fps=60))
            await asyncio.sleep(0.02)
            await pipe.remove_stream(f"s{i}")
        assert threading.active_count() == baseline
        assert list(pipe.streams) == ["steady"]
        assert len(pipe.batcher._lanes) == 1


async def test_close_releases_all_threads(runtime):
    before = set(threading.enumerate())
    pipe = Pipeline(runtime)
    sink: Sink = Recorder()
    pipe.add_sink(sink)
    for sid in "abc":
        await pipe.add_stream(SyntheticSource(sid, 160, 128, fps=30))
    await asyncio.sleep(0.3)
    assert len(set(threading.enumerate()) - before) == 4  # 3 sources + inference
    await pipe.close()
    assert set(threading.enumerate()) - before == set()
    assert pipe.streams == {}
    await pipe.close()  # idempotent
    with pytest.raises(RuntimeError):
        await pipe.add_stream(SyntheticSource("late", 96, 64))


@pytest.mark.slow
async def test_frames_the_model_never_takes_are_never_converted(runtime, h264_clip, monkeypatch):
    """A 10 fps file with ``fps_limit = 2``: the batcher refuses about 4 frames in 5, and only
    the frames the model took were ever converted from the decoder's YUV to RGB."""
    from crowdcount.streamer.sources import decoding
    from crowdcount.streamer.sources import file as file_source

    conversions: list[int] = []
    real = decoding.rgb_later

    def counting(frame, max_side=None):
        convert = real(frame, max_side)

        def run():
            conversions.append(frame.pts)
            return convert()

        return run

    monkeypatch.setattr(decoding, "rgb_later", counting)
    rec = Recorder()
    async with Pipeline(runtime) as pipe:
        pipe.add_sink(rec)
        src = file_source.FileSource("clip", h264_clip)
        await pipe.add_stream(src, fps_limit=2)
        await wait_until(lambda: src.status.state is StreamState.ENDED, what="clip end")
        await wait_until(lambda: rec.count("clip") == pipe.batcher.stats("clip").taken,
                         what="the last taken frame's result")
        stats = pipe.batcher.stats("clip")
    assert src.status.frames_in == 50
    assert stats.skipped >= 30  # fps_limit refused most frames
    assert 5 <= rec.count("clip") <= 15
    assert len(conversions) == rec.count("clip")  # each taken frame once, nothing else
    for result in rec.by_stream["clip"]:  # the converted picture is the one that was counted
        assert result.frame.image.shape == (240, 320, 3)
        assert result.count == pytest.approx(runtime.count(result.frame.image), rel=1e-5)
