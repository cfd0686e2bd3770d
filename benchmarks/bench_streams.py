"""How many live streams one process serves, and at what cost.

Runs the real pipeline (synthetic 640x480 sources → batcher → one inference thread → a sink)
with 1, 2, 4 and 8 simultaneous streams and prints what an operator has to decide on:
processed fps per stream, how many frames were dropped instead of queued, how well frames
were batched, inference latency, source-to-result latency, and source-to-annotated-frame
latency: every stream has one real viewer (``ViewerSink`` + ``AnnotatedTrack`` at 20 fps, as
a browser gets), whose frames are timed against the capture time of the frame they show.

    python benchmarks/bench_streams.py                      # the bundled model
    python benchmarks/bench_streams.py --model other.onnx --seconds 5 --streams 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from crowdcount.model.bundled import DEFAULT_ONNX
from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Result
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sinks.viewer import ViewerRegistry, ViewerSink
from crowdcount.streamer.sources.synthetic import SyntheticSource


class LatencySink:
    """Measures at the sink, where a viewer or the store would see the result."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    def on_result(self, result: Result) -> None:
        self.latencies.append(time.time() - result.frame.captured_at)


@dataclass(frozen=True, slots=True)
class Row:
    streams: int
    fps_per_stream: float
    dropped_pct: float
    batch_mean: float
    batch_hist: dict[int, int]
    infer_p50_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    annotated_p50_ms: float
    annotated_p95_ms: float
    cpu_pct: float
    rss_mb: float


async def watch(viewer: ViewerSink, latencies: list[float]) -> None:
    """One viewer: pull annotated frames as an outgoing WebRTC track does, and time each new
    one from the capture of the frame it shows to the moment it is ready to encode."""
    track = viewer.track()
    shown = None
    try:
        while True:
            await track.recv()
            captured = viewer.rendered_captured_at
            if captured is not None and captured != shown:
                latencies.append(time.time() - captured)
                shown = captured
    finally:
        track.stop()


async def measure(runtime: Runtime, n: int, args: argparse.Namespace, proc: psutil.Process) -> Row:
    width, height = args.size
    sink = LatencySink()
    async with Pipeline(runtime, max_batch=args.max_batch) as pipe:
        pipe.add_sink(sink)
        sources = [
            SyntheticSource(f"cam{i}", width, height, fps=args.fps, brightness=200)
            for i in range(n)
        ]
        registry = ViewerRegistry(fps=20)
        pipe.add_sink(registry)
        viewers = []
        for source in sources:
            await pipe.add_stream(source)
            viewers.append(registry.sink(source.stream_id))
        annotated: list[float] = []
        watching = [asyncio.create_task(watch(v, annotated)) for v in viewers]
        await asyncio.sleep(args.warmup)  # first ORT calls and thread start-up are not typical

        def snapshot() -> tuple[int, int, int, Counter[int]]:
            st = [s.status for s in sources]
            return (
                sum(s.frames_in for s in st),
                sum(s.frames_out for s in st),
                sum(s.dropped for s in st),
                pipe.batcher.batch_histogram(),
            )

        in0, out0, drop0, hist0 = snapshot()
        sink.latencies.clear()
        annotated.clear()
        assert pipe.worker is not None
        pipe.worker.latency.reset()
        proc.cpu_percent(None)
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        cpu = proc.cpu_percent(None)
        in1, out1, drop1, hist1 = snapshot()
        infer_p50 = pipe.worker.latency.p50
        rss = proc.memory_info().rss / 2**20
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        for viewer in viewers:
            viewer.close()

    hist = dict(sorted((hist1 - hist0).items()))
    batches = sum(hist.values())
    lat = np.array(sink.latencies) * 1000 if sink.latencies else np.array([np.nan])
    ann = np.array(annotated) * 1000 if annotated else np.array([np.nan])
    frames_in = max(1, in1 - in0)
    return Row(
        streams=n,
        fps_per_stream=(out1 - out0) / elapsed / n,
        dropped_pct=100.0 * (drop1 - drop0) / frames_in,
        batch_mean=sum(k * v for k, v in hist.items()) / batches if batches else 0.0,
        batch_hist=hist,
        infer_p50_ms=(infer_p50 or float("nan")) * 1000,
        latency_p50_ms=float(np.percentile(lat, 50)),
        latency_p95_ms=float(np.percentile(lat, 95)),
        annotated_p50_ms=float(np.percentile(ann, 50)),
        annotated_p95_ms=float(np.percentile(ann, 95)),
        cpu_pct=cpu,
        rss_mb=rss,
    )


HEADER = (
    f"{'streams':>7} {'fps/stream':>10} {'dropped':>8} {'batch':>6} {'infer p50':>10} "
    f"{'result p50/p95':>15} {'annotated p50/p95':>18} {'CPU %':>6} {'RSS MB':>7}  "
    "batch sizes (size:count)"
)


def format_row(r: Row) -> str:
    hist = " ".join(f"{k}:{v}" for k, v in r.batch_hist.items())
    return (
        f"{r.streams:>7} {r.fps_per_stream:>10.1f} {r.dropped_pct:>7.1f}% {r.batch_mean:>6.2f} "
        f"{r.infer_p50_ms:>8.1f}ms {r.latency_p50_ms:>6.0f}/{r.latency_p95_ms:<4.0f}ms "
        f"{r.annotated_p50_ms:>10.0f}/{r.annotated_p95_ms:<4.0f}ms "
        f"{r.cpu_pct:>6.0f} {r.rss_mb:>7.0f}  {hist}"
    )


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help=f"ONNX model (default {DEFAULT_ONNX})")
    p.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts")
    p.add_argument("--seconds", type=float, default=15.0, help="measured time per configuration")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of every source")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)
    if args.model is None:
        if not DEFAULT_ONNX.is_file():
            p.error(
                f"the bundled model {DEFAULT_ONNX} is missing; pass --model PATH.ONNX "
                "(any ONNX density model, e.g. the test suite's brightness model)"
            )
        args.model = DEFAULT_ONNX
    elif not args.model.is_file():
        p.error(f"model not found: {args.model}")
    args.stream_counts = [int(x) for x in args.streams.split(",") if x.strip()]
    return args


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runtime = Runtime.open(args.model, threads=args.threads)
    proc = psutil.Process()
    w, h = args.size
    print(
        f"model {args.model} ({runtime.name}), {w}x{h} sources at {args.fps:g} fps, "
        f"{args.seconds:g} s each, max batch {args.max_batch}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}"
    )
    print("CPU % is of one core for the whole process (sources + inference + loop)")
    print(HEADER)
    for n in args.stream_counts:
        print(format_row(await measure(runtime, n, args, proc)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
