"""The inference thread over the real brightness model: exact counts, bounded latency."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Frame, Result
from crowdcount.streamer.batcher import Batcher
from crowdcount.streamer.sources.base import Source, SourceEnded
from crowdcount.streamer.sources.synthetic import SyntheticSource
from crowdcount.streamer.worker import InferenceWorker, RollingStats
from tests.fixtures.models import expected_count


class Collector:
    """Records every callback the worker posts, and the loop time it arrived."""

    def __init__(self) -> None:
        self.calls: list[list[Result]] = []
        self.arrived: list[float] = []
        self.errors: list[tuple[list[Frame], BaseException]] = []
        self.event = asyncio.Event()

    def on_results(self, results: list[Result]) -> None:
        self.calls.append(results)
        self.arrived.append(time.time())
        self.event.set()

    def on_error(self, frames: list[Frame], exc: BaseException) -> None:
        self.errors.append((frames, exc))
        self.event.set()

    @property
    def results(self) -> list[Result]:
        return [r for call in self.calls for r in call]

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) + sum(len(f) for f, _ in self.errors) < n:
            assert time.monotonic() < deadline, "timed out waiting for results"
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.1)


def make_worker(model, collector: Collector, **kw) -> InferenceWorker:
    worker = InferenceWorker(
        Runtime.open(model, "onnx", threads=1),  # see the runtime fixture
        Batcher(),
        asyncio.get_running_loop(),
        collector.on_results,
        collector.on_error,
        **kw,
    )
    worker.start()
    return worker


async def pump(source: Source, batcher: Batcher) -> None:
    with contextlib.suppress(SourceEnded):
        while True:
            batcher.submit(await source.recv())


async def test_results_carry_exact_counts_one_callback_per_batch(brightness_model):
    col = Collector()
    worker = make_worker(brightness_model, col, max_batch=8)
    rng = np.random.default_rng(1)
    sizes = {"a": (480, 640), "b": (256, 320), "c": (96, 128), "d": (480, 640)}
    frames = [
        Frame(sid, 0, time.time(), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        for sid, hw in sizes.items()
    ]
    for f in frames:
        worker.batcher.submit(f)
    await col.wait_for(len(frames))
    by_id = {r.frame.stream_id: r for r in col.results}
    for f in frames:
        r = by_id[f.stream_id]
        assert r.frame is f
        h, w = sizes[f.stream_id]
        assert r.density.shape == (h // 8, w // 8)
        assert r.density.dtype == np.float32
        assert r.count == pytest.approx(expected_count(f.image), rel=1e-4)
        assert r.count == float(r.density.sum())
        assert r.inferred_at >= f.captured_at
    assert len(col.calls) == worker.batches
    assert worker.batch_size.count == worker.batches and worker.latency.last is not None
    worker.stop()
    assert not worker.alive


async def test_per_stream_max_side_is_grouped(brightness_model):
    col = Collector()
    worker = make_worker(brightness_model, col)
    worker.set_max_side("small", 320)
    white = np.full((480, 640, 3), 255, np.uint8)
    worker.batcher.submit(Frame("small", 0, time.time(), white))
    worker.batcher.submit(Frame("full", 0, time.time(), white))
    await col.wait_for(2)
    shapes = {r.frame.stream_id: r.density.shape for r in col.results}
    counts = {r.frame.stream_id: r.count for r in col.results}
    assert shapes == {"small": (32, 40), "full": (60, 80)}  # 256x320 input, stride 8
    assert counts["small"] == pytest.approx(32 * 40, rel=1e-5)
    assert counts["full"] == pytest.approx(60 * 80, rel=1e-5)
    worker.stop()


async def test_a_failing_batch_is_reported_and_the_thread_lives_on(brightness_model):
    col = Collector()
    worker = make_worker(brightness_model, col)
    worker.set_max_side("bad", 64)  # its own predict call, so only it fails
    grey = np.zeros((64, 64), np.uint8)  # not RGB: preprocessing raises
    worker.batcher.submit(Frame("bad", 0, time.time(), grey))  # type: ignore[arg-type]
    worker.batcher.submit(Frame("good", 0, time.time(), np.zeros((64, 64, 3), np.uint8)))
    await col.wait_for(2)
    assert [[f.stream_id for f in frames] for frames, _ in col.errors] == [["bad"]]
    assert isinstance(col.errors[0][1], ValueError)
    assert [r.frame.stream_id for r in col.results] == ["good"]
    assert worker.errors == 1
    worker.batcher.submit(Frame("bad", 1, time.time(), np.zeros((64, 64, 3), np.uint8)))
    await col.wait_for(3)
    assert worker.alive
    worker.stop()


async def test_sources_faster_than_the_model_drop_frames_instead_of_queueing(brightness_model):
    """Two 120 fps streams of 1920x1088 frames (~15 ms of model each): the model keeps up
    with a fraction of them. Frames are replaced while the model works, never queued, so
    latency cannot grow with run time."""
    col = Collector()
    worker = make_worker(brightness_model, col, max_batch=2)
    big = np.full((1088, 1920, 3), 128, np.uint8)  # shared: frames are never written to
    worker.batcher.submit(Frame("warm-up", 0, time.time(), big))
    await col.wait_for(1)
    col.calls.clear()
    col.arrived.clear()
    sources = [SyntheticSource(s, 1920, 1088, fps=120, render=lambda i: big) for s in "ab"]
    for s in sources:
        await s.start()
    pumps = [asyncio.create_task(pump(s, worker.batcher)) for s in sources]
    t_start = time.time()
    await asyncio.sleep(3.0)
    for p in pumps:
        p.cancel()
    for s in sources:
        await s.stop()
    worker.stop()

    latencies = [
        (arrived - r.frame.captured_at, r.frame.captured_at - t_start)
        for arrived, call in zip(col.arrived, col.calls, strict=True)
        for r in call
    ]
    assert len(latencies) > 20
    expected = expected_count(big)
    assert all(r.count == pytest.approx(expected, rel=1e-4) for r in col.results)
    produced = sum(s.status.frames_in for s in sources)
    dropped = sum(s.status.dropped + worker.batcher.dropped(s.stream_id) for s in sources)
    assert produced > 2 * len(latencies)  # the sources really outran the model
    assert dropped > len(latencies)
    batch_p95 = worker.latency.p95
    assert batch_p95 is not None
    lat = np.array([x for x, _ in latencies])
    # Newest wins: the model never works through a backlog, so every result is of a frame
    # captured after the previous batch of its stream was taken (a queue would hand out old
    # frames in order). What that means in milliseconds is benchmarks/bench_streams.py's.
    for stream in "ab":
        captured = [r.frame.captured_at for call in col.calls for r in call
                    if r.frame.stream_id == stream]
        seqs = [r.frame.seq for call in col.calls for r in call if r.frame.stream_id == stream]
        assert seqs == sorted(set(seqs)) and captured == sorted(captured)
        assert len(seqs) < seqs[-1] - seqs[0]  # frames between them were replaced, not queued
    print(f"batch p95 {batch_p95 * 1e3:.1f} ms, latency p95 {np.percentile(lat, 95) * 1e3:.1f}"
          f" ms, {len(latencies)} results of {produced} frames")


async def test_a_stalled_loop_does_not_pile_up_results(brightness_model):
    col = Collector()
    worker = make_worker(brightness_model, col, max_in_flight=2)
    stop = threading.Event()
    image = np.zeros((64, 64, 3), np.uint8)

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            worker.batcher.submit(Frame("a", seq, time.time(), image))
            seq += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    await col.wait_for(1)
    before = worker.batches
    time.sleep(0.5)  # block the event loop: the worker must wait, not keep inferring
    assert worker.batches - before <= 2
    await asyncio.sleep(0.2)
    assert worker.batches - before > 2  # and resume once the loop runs again
    stop.set()
    feeder.join()
    worker.stop()
    assert not worker.alive


def test_rolling_stats_window():
    s = RollingStats(window=4)
    assert s.p50 is None and s.last is None
    for v in [100, 1, 2, 3, 4]:
        s.add(v)
    assert (s.count, s.last, s.p50) == (5, 4, 2.5)


async def test_a_stream_gets_its_own_model_without_stalling_the_others(brightness_model,
                                                                       tmp_path):
    """``set_model`` swaps one stream's model (a stride-16 brightness model: a white frame
    counts 1200, not 4800) once it is loaded; the other stream keeps the shared one, frames
    go on being counted meanwhile, and ``None`` reverts."""
    from tests.fixtures.models import brightness_onnx

    own = brightness_onnx(tmp_path / "own.onnx", stride=16)
    col = Collector()
    worker = make_worker(brightness_model, col)
    white = np.full((480, 640, 3), 255, np.uint8)
    for sid in ("cam", "other"):
        worker.set_max_side(sid, None)
    loader = worker.set_model("cam", own)
    assert loader is not None
    seq = 0
    while worker.model_of("cam") is None:  # counted by the shared model while it loads
        seq += 1
        worker.batcher.submit(Frame("cam", seq, time.time(), white))
        worker.batcher.submit(Frame("other", seq, time.time(), white))
        await col.wait_for(2 * seq)
    loader.join(5)
    assert worker.model_of("cam") == own
    n = len(col.results)
    worker.batcher.submit(Frame("cam", seq + 1, time.time(), white))
    worker.batcher.submit(Frame("other", seq + 1, time.time(), white))
    await col.wait_for(n + 2)
    last = {r.frame.stream_id: r.count for r in col.results[n:]}
    assert last["cam"] == pytest.approx(30 * 40, rel=1e-5)
    assert last["other"] == pytest.approx(60 * 80, rel=1e-5)
    assert all(r.count == pytest.approx(4800, rel=1e-5) for r in col.results[:n])
    assert worker.set_model("cam", None) is None
    worker.batcher.submit(Frame("cam", seq + 2, time.time(), white))
    await col.wait_for(n + 3)
    assert col.results[-1].count == pytest.approx(4800, rel=1e-5)
    worker.stop()


async def test_a_model_that_fails_to_load_leaves_the_stream_on_its_old_one(brightness_model,
                                                                           tmp_path):
    col = Collector()
    worker = make_worker(brightness_model, col)
    worker.set_max_side("cam", None)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    loader = worker.set_model("cam", bad)
    assert loader is not None
    loader.join(5)
    assert worker.model_of("cam") is None
    assert "cam" in worker.model_errors
    worker.batcher.submit(Frame("cam", 0, time.time(), np.full((64, 64, 3), 255, np.uint8)))
    await col.wait_for(1)
    assert col.results[0].count == pytest.approx(64, rel=1e-5)
    worker.stop()
