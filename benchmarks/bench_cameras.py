"""How many 1080p H.264 cameras one ``crowdcount serve`` counts at one count a second.

    python benchmarks/bench_cameras.py                     # N = 8, 16, 32, 48, 64
    python benchmarks/bench_cameras.py --cameras 8,16 --warmup 10 --seconds 20

For each N: a real RTSP server on this machine (GStreamer's, ``gst_cameras_server.py`` run
by Debian's ``/usr/bin/python3``) serves N cameras from one pre-encoded 1080p25 H.264 clip
(``hd_clip.py``: GOP 25, i.e. a keyframe a second, no B-frames) without re-encoding; one
``crowdcount serve`` process gets the N cameras from a config file (``fps_limit`` =
``--rate``), and after ``--warmup`` seconds its ``/api/feed`` is read for ``--seconds``.

Columns: counts per second of each camera on the feed (min and mean over the cameras);
capture-to-count latency (a frame leaving the decoder to its count arriving here), p50 and
p95 over every count; the server's CPU (% of one core, its process and any decoder
children) and its peak RSS; the RTSP server's CPU apart (it shares the machine); how many
cameras were decoded keyframes-only (``status.decode``) and their decoders' CPU per camera
(``status.decode_seconds``, % of a core); reconnects during the run; the server's threads.
The machine's load average is printed with the table: timings on a shared machine are only
comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hd_clip import hd_clip  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = HERE / "gst_cameras_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Row:
    cameras: int
    counts_min: float
    counts_mean: float
    latency_p50_ms: float
    latency_p95_ms: float
    server_cpu_pct: float
    server_rss_mb: float
    rtsp_cpu_pct: float
    running: int
    keyframes_only: int
    decode_cpu_pct: float  # mean per camera
    reconnects: int
    threads: int  # the server's, at the end of the window


class CamerasServer:
    """``gst_cameras_server.py CLIP PORT N`` as a subprocess (killed on exit)."""

    def __init__(self, clip: Path, cameras: int, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(clip), str(self.port), str(cameras)],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        )

    def url(self, index: int) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam{index}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready and self.proc.stdout.readline().strip() == "READY":
                return
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"RTSP server did not start: {self.log.read_text()[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _cpu_seconds(proc: psutil.Process) -> float:
    """User + system seconds of ``proc`` and its live children (isolated decoders)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


async def _feed(session: aiohttp.ClientSession, base: str,
                seen: list[tuple[str, float]]) -> None:
    """Every count of every camera: (stream, capture-to-here seconds)."""
    async with session.get(f"{base}/api/feed") as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                item = json.loads(line[5:])
                if "count" in item and "stream" in item:
                    seen.append((item["stream"], time.time() - float(item["t"])))


async def _statuses(session: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{base}/api/streams") as r:
        body = await r.json()
    streams = body["streams"] if isinstance(body, dict) else body
    return {s["id"]: s["status"] for s in streams}


async def measure(n: int, clip: Path, args: argparse.Namespace, tmp: Path) -> Row:
    names = [f"cam{i}" for i in range(n)]
    rtsp = CamerasServer(clip, n, tmp / f"rtsp-{n}.log")
    server: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(rtsp.wait_ready)
        lines = ["[server]", f'database = "{tmp / f"counts-{n}.sqlite3"}"',
                 f"max_streams = {max(n, 64)}", "[model]"]
        if args.threads:
            lines.append(f"threads = {args.threads}")
        for i, name in enumerate(names):
            lines += ["[[streams]]", f'name = "{name}"', f'url = "{rtsp.url(i)}"',
                      f"fps_limit = {args.rate}"]
        config = tmp / f"serve-{n}.toml"
        config.write_text("\n".join(lines) + "\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}
        server = subprocess.Popen(
            [sys.executable, "-m", "crowdcount.streamer.cli", "serve", "--config", str(config),
             "--port", str(port)], env=env, stderr=(tmp / f"serve-{n}.log").open("w"),
        )
        proc = psutil.Process(server.pid)
        rtsp_proc = psutil.Process(rtsp.proc.pid)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with session.get(f"{base}/api/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start: "
                                       + (tmp / f"serve-{n}.log").read_text()[-2000:])
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.warmup)
            seen: list[tuple[str, float]] = []
            feed = asyncio.create_task(_feed(session, base, seen))
            await asyncio.sleep(1.0)  # subscribed and flowing
            seen.clear()
            before = await _statuses(session, base)
            cpu0, rtsp0, t0 = _cpu_seconds(proc), _cpu_seconds(rtsp_proc), time.monotonic()
            rss = 0.0
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(min(1.0, args.seconds - (time.monotonic() - t0)))
                rss = max(rss, _rss_mb(proc))
            elapsed = time.monotonic() - t0
            cpu1, rtsp1 = _cpu_seconds(proc), _cpu_seconds(rtsp_proc)
            threads = proc.num_threads()
            got = list(seen)
            after = await _statuses(session, base)
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        rtsp.close()
    per_camera = Counter(sid for sid, _ in got)
    rates = [per_camera[name] / elapsed for name in names]
    ms = np.array([lat for _, lat in got]) * 1000 if got else np.array([np.nan])
    decode = [(after[s].get("decode_seconds") or 0.0) - (before[s].get("decode_seconds") or 0.0)
              for s in names if s in after and s in before]
    return Row(
        cameras=n, counts_min=min(rates), counts_mean=float(np.mean(rates)),
        latency_p50_ms=float(np.percentile(ms, 50)), latency_p95_ms=float(np.percentile(ms, 95)),
        server_cpu_pct=100 * (cpu1 - cpu0) / elapsed, server_rss_mb=rss,
        rtsp_cpu_pct=100 * (rtsp1 - rtsp0) / elapsed,
        running=sum(after.get(s, {}).get("state") == "running" for s in names),
        keyframes_only=sum(after.get(s, {}).get("decode") == "keyframes" for s in names),
        decode_cpu_pct=100 * float(np.mean(decode)) / elapsed if decode else float("nan"),
        reconnects=sum(int(after.get(s, {}).get("reconnects") or 0) for s in names),
        threads=threads,
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(rows: list[Row]) -> str:
    out = ["| cameras | counts/s per camera min / mean | latency p50 / p95 (ms) "
           "| server CPU % | server RSS MB | RTSP server CPU % | running "
           "| keyframes-only | decode CPU % per camera | reconnects | server threads |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r.cameras} | {r.counts_min:.2f} / {r.counts_mean:.2f} "
            f"| {r.latency_p50_ms:.0f} / {r.latency_p95_ms:.0f} | {r.server_cpu_pct:.0f} "
            f"| {r.server_rss_mb:.0f} | {r.rtsp_cpu_pct:.0f} | {r.running} "
            f"| {r.keyframes_only} | {r.decode_cpu_pct:.2f} | {r.reconnects} | {r.threads} |")
    return "\n".join(out)


async def run(args: argparse.Namespace) -> int:
    clip = await asyncio.to_thread(hd_clip, args.clip_seconds, 25, args.gop)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    rows: list[Row] = []
    try:
        print(f"1080p25 H.264 clip {clip.name} (GOP {args.gop}), {args.rate:g} count/s per "
              f"camera, {args.warmup:g} s warm-up, {args.seconds:g} s measured per N; "
              f"{os.cpu_count()} CPUs; load average before: {load()}", flush=True)
        for n in args.cameras:
            rows.append(await measure(n, clip, args, tmp))
            print(f"  N={n} done, load average {load()}", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(rows))
    print()
    print(f"load average after: {load()} ({time.strftime('%Y-%m-%d %H:%M %Z')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", default="8,16,32,48,64",
                        type=lambda s: [int(x) for x in s.split(",") if x],
                        help="camera counts to run (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per N")
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds after the server answers before measuring")
    parser.add_argument("--rate", type=float, default=1.0, help="fps_limit of every camera")
    parser.add_argument("--gop", type=int, default=25, help="frames between keyframes")
    parser.add_argument("--clip-seconds", type=float, default=20.0,
                        help="length of the generated clip (it loops)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads")
    parser.add_argument("--keep", action="store_true", help="keep the logs and configs")
    args = parser.parse_args(argv)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        print(f"{SYSTEM_PYTHON} not found (the GStreamer RTSP server needs Debian's "
              "python3-gi)", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
