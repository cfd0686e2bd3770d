"""How many live streams one process serves, and at what cost.

Three modes:

* default: the real pipeline (synthetic 640x480 sources → batcher → one inference thread →
  a sink) with 1, 2, 4 and 8 simultaneous streams, printing processed fps per stream, drops,
  batching, inference latency, source-to-result latency, and source-to-annotated-frame
  latency (every stream has one ``ViewerSink`` + ``AnnotatedTrack`` at 20 fps).
* ``--files VIDEO``: the same with looping file sources (real decoding); with
  ``--sleep-model MS`` the network is replaced by a stand-in that sleeps MS per frame (no
  CPU), so the CPU column is the hot path alone: decoding, RGB conversion, hand-off.
* ``--serve VIDEO``: one real ``crowdcount serve`` process with N looping file streams from a
  config file; the benchmark reads every result from ``/api/feed`` (processed fps per
  stream, capture-to-client latency) and the server's CPU and RSS, first without viewers,
  then with one WebRTC viewer per stream (aiortc peers in this process, which lowers its own
  priority so the server keeps the CPU). ICE stays on 127.0.0.1 on both sides.

    python benchmarks/bench_streams.py                      # the bundled model
    python benchmarks/bench_streams.py --model other.onnx --seconds 5 --streams 1,4
    python benchmarks/bench_streams.py --files clip.mp4 --sleep-model 30 --streams 8
    python benchmarks/bench_streams.py --serve clip.mp4 --streams 8 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from numpy.typing import NDArray

from crowdcount.model.bundled import DEFAULT_ONNX
from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Result
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sinks.viewer import ViewerRegistry, ViewerSink
from crowdcount.streamer.sources.base import Source
from crowdcount.streamer.sources.file import FileSource
from crowdcount.streamer.sources.synthetic import SyntheticSource


class SleepBackend:
    """A stand-in network that takes ``ms`` per frame without using CPU (it sleeps), so a
    run measures everything around the model. Its maps are zeros at stride 8."""

    name = "sleep"
    fixed_size = None
    fixed_batch = None
    max_batch = 1

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        time.sleep(self.seconds * len(batch))
        n, h, w = batch.shape[:3]
        return np.zeros((n, h // 8, w // 8), np.float32)


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
        sources: list[Source] = [
            FileSource(f"cam{i}", args.files, loop=True) if args.files else
            SyntheticSource(f"cam{i}", width, height, fps=args.fps, brightness=200)
            for i in range(n)
        ]
        registry = ViewerRegistry(fps=20)
        pipe.add_sink(registry)
        viewers = []
        for source in sources:
            await pipe.add_stream(source, fps_limit=args.fps_limit)
            if not args.no_viewers:
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
    p.add_argument("--fps", type=float, default=30.0,
                   help="frame rate of the synthetic sources (files play at their own)")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT")
    p.add_argument("--max-batch", type=int, default=None,
                   help="frames per model call (default: the backend's own)")
    p.add_argument("--backend", default=None, help="default: the fastest installed")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--files", type=Path, default=None,
                   help="looping file sources of this video instead of synthetic ones")
    p.add_argument("--fps-limit", type=float, default=None, help="per-stream fps_limit")
    p.add_argument("--sleep-model", type=float, default=None, metavar="MS",
                   help="replace the network by a stand-in sleeping MS per frame")
    p.add_argument("--no-viewers", action="store_true", help="pipeline modes: no ViewerSinks")
    p.add_argument("--serve", type=Path, default=None, metavar="VIDEO",
                   help="run one `crowdcount serve` with looping file streams of VIDEO")
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
    if args.serve is not None:
        await run_serve_benchmark(args)
        return
    if args.sleep_model is not None:
        runtime = Runtime(SleepBackend(args.sleep_model))
    else:
        runtime = Runtime.open(args.model, args.backend, threads=args.threads)
    proc = psutil.Process()
    w, h = args.size
    what = f"looping {args.files}" if args.files else f"{w}x{h} synthetic at {args.fps:g} fps"
    print(
        f"model {args.model} ({runtime.name}), sources: {what}, fps_limit {args.fps_limit}, "
        f"{args.seconds:g} s each, max batch {args.max_batch or runtime.max_batch}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print("CPU % is of one core for the whole process (sources + inference + loop)")
    print(HEADER)
    for n in args.stream_counts:
        print(format_row(await measure(runtime, n, args, proc)), flush=True)


# -- --serve: one real `crowdcount serve` process --------------------------------------------

# The server runs as `crowdcount serve` with one addition: ICE host candidates are limited to
# 127.0.0.1, as in the test suite, so no WebRTC packet leaves the loopback interface.
SERVER_CODE = """
import sys, aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
from crowdcount.streamer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True, slots=True)
class ServeRow:
    viewers: int
    fps: list[float]
    latency_p50_ms: float
    latency_p95_ms: float
    viewer_fps: float
    cpu_pct: float
    rss_mb: float


async def _feed(session: Any, base: str, seen: list[tuple[str, float]]) -> None:
    """Every result of every stream from the SSE feed: (stream, capture-to-here seconds)."""
    async with session.get(f"{base}/api/feed") as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                item = json.loads(line[5:])
                seen.append((item["stream"], time.time() - item["t"]))


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def _check_loopback(sdp: str) -> None:
    """No ICE candidate of either side may point anywhere but 127.0.0.1."""
    found = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp, re.MULTILINE)
    if set(found) != {"127.0.0.1"}:
        raise RuntimeError(f"ICE candidates off loopback: {found}")


async def _viewer(session: Any, base: str, stream: str, frames: list[int]) -> Any:
    """A WebRTC viewer of one stream that counts the frames it receives. Its ICE candidates
    are 127.0.0.1 only, like the server's (see ``SERVER_CODE``)."""
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    aioice.ice.get_host_addresses = _loopback_only

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    readers: list[asyncio.Future[None]] = []
    index = len(frames)
    frames.append(0)

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def read() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    frames[index] += 1

        readers.append(asyncio.ensure_future(read()))

    await pc.setLocalDescription(await pc.createOffer())
    _check_loopback(pc.localDescription.sdp)
    offer = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": "view",
             "stream_id": stream}
    async with session.post(f"{base}/api/rtc/offer", json=offer) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"viewer offer for {stream} refused: {answer}")
    _check_loopback(answer["sdp"])
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return pc


async def _serve_window(
    session: Any, base: str, server: psutil.Process, names: list[str], seconds: float,
    frames: list[int],
) -> tuple[list[float], list[float], float, float, float]:
    seen: list[tuple[str, float]] = []
    feed = asyncio.create_task(_feed(session, base, seen))
    await asyncio.sleep(1.0)  # subscribed and flowing
    seen.clear()
    frames0 = list(frames)
    server.cpu_percent(None)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu = server.cpu_percent(None)
    rss = server.memory_info().rss / 2**20
    got = list(seen)
    viewer_fps = (sum(frames) - sum(frames0)) / elapsed / max(1, len(frames))
    feed.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await feed
    per_stream = Counter(sid for sid, _ in got)
    fps = [per_stream[name] / elapsed for name in names]
    return fps, [lat for _, lat in got], viewer_fps, cpu, rss


async def run_serve_benchmark(args: argparse.Namespace) -> None:
    """``--serve VIDEO``: N looping file streams in one ``crowdcount serve`` process."""
    import shutil
    import subprocess
    import tempfile

    import aiohttp

    n = max(args.stream_counts)
    names = [f"cam{i}" for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    lines = ["[server]", f'database = "{tmp / "counts.sqlite3"}"', "[model]"]
    if args.backend:
        lines.append(f'backend = "{args.backend}"')
    if args.threads:
        lines.append(f"threads = {args.threads}")
    if args.max_batch:
        lines.append(f"max_batch = {args.max_batch}")
    for name in names:
        lines += ["[[streams]]", f'name = "{name}"', f'url = "{args.serve.resolve()}"',
                  "loop = true"]
    (tmp / "serve.toml").write_text("\n".join(lines) + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, "serve", "--config", str(tmp / "serve.toml"),
         "--port", str(port)], env=env, stderr=(tmp / "serve.log").open("w"),
    )
    # The viewers' decoders run here: yield the CPU to the server they are measuring.
    os.nice(10)
    server = psutil.Process(proc.pid)
    peers: list[Any] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(f"{base}/api/health") as r:
                        health = await r.json()
                        break
                except aiohttp.ClientError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = (tmp / "serve.log").read_text()
                        raise RuntimeError(f"server did not start: {log}") from None
                    await asyncio.sleep(0.2)
            print(f"crowdcount serve: {n} looping streams of {args.serve}, backend "
                  f"{health['model']['backend']}, {args.seconds:g} s per window, "
                  f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
            await asyncio.sleep(args.warmup)
            rows = []
            frames: list[int] = []
            for viewers in (0, n):
                while len(peers) < viewers:
                    peers.append(await _viewer(session, base, names[len(peers)], frames))
                if viewers:
                    await asyncio.sleep(args.warmup)  # ICE, DTLS, first key frames
                fps, lat, viewer_fps, cpu, rss = await _serve_window(
                    session, base, server, names, args.seconds, frames)
                ms = np.array(lat) * 1000 if lat else np.array([np.nan])
                rows.append(ServeRow(viewers, fps, float(np.percentile(ms, 50)),
                                     float(np.percentile(ms, 95)), viewer_fps, cpu, rss))
    finally:
        for pc in peers:
            with contextlib.suppress(Exception):
                await pc.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'viewers':>7} {'fps/stream min/mean':>20} {'result p50/p95':>15} "
          f"{'viewer fps':>10} {'CPU %':>6} {'RSS MB':>7}")
    for r in rows:
        print(f"{r.viewers:>7} {min(r.fps):>9.1f}/{np.mean(r.fps):<10.1f} "
              f"{r.latency_p50_ms:>6.0f}/{r.latency_p95_ms:<5.0f}ms "
              f"{r.viewer_fps if r.viewers else float('nan'):>10.1f} {r.cpu_pct:>6.0f} "
              f"{r.rss_mb:>7.0f}")
    print("fps/stream: results per second of each stream on /api/feed; result latency: "
          "frame capture to its count arriving here; CPU % of one core, server process")


if __name__ == "__main__":
    asyncio.run(main())
