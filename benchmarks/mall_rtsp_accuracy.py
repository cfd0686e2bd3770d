"""End-to-end counting accuracy of the streaming path on the Mall test video.

The Mall test clip (``../shared/videos/mall_test_1601-2000_10fps.mp4``, 400 frames at
10 fps with a true count per frame beside it) is served over RTSP by the real GStreamer test
server (``tests/fixtures/rtsp_server.py``: decode, re-encode with x264, loop forever); the
real service (``build_app`` on 127.0.0.1, the bundled default model, a database in a temp
dir) gets the camera through ``POST /api/streams``; the live SSE feed is read for N seconds
and ``/api/streams/{id}/counts`` is queried afterwards. Each received count is matched to
the clip frame it was computed from and compared with that frame's true count. The same
model is also run on the same frames decoded straight from the mp4, so the table shows what
the streaming path (x264 re-encoding, RTSP, frame drops under load) costs.

    python benchmarks/mall_rtsp_accuracy.py                 # 60 s, ~1.5 passes of the clip
    python benchmarks/mall_rtsp_accuracy.py --seconds 20 --json out.json
    python benchmarks/mall_rtsp_accuracy.py --rate 1 --decode both --seconds 120
                                             # keyframes-only vs full decode, 1 count/s

Why alignment is by content, and how it is checked
---------------------------------------------------
The server starts playing the clip when *it* starts, loops it with a seek (which can repeat
or skip a frame at the seam), and its live ``intervideosrc`` repeats the last picture when
the player falls behind: neither a frame's arrival time nor the decoder's frame counter
maps exactly onto a clip index over more than one pass. The frame's pixels do. An
in-process sink (added with ``service.pipeline.add_sink``; the app is not changed) keeps,
for every processed frame, its ``seq``, ``captured_at`` and an 80x60 grey thumbnail. The
clip's own 400 frames are thumbnailed the same way, the static background (their per-pixel
median) is subtracted from all of them, and each received frame is given the index of the
nearest clip thumbnail (least squares). The ratio of the second-nearest to the nearest
distance is its *margin*; it is reported, and frames with a margin under
``MIN_MARGIN`` are left out (none were on these machines).

The SSE items and the ``/counts`` rows carry no frame number, only ``t``, which *is* the
frame's ``captured_at`` (JSON and SQLite keep the float exactly), so they are joined to the
sink's records on ``t``.

As a cross-check the script also fits the simpler model the brief proposed,
``index = (seq + offset) mod 400`` with one offset chosen to minimise MAE, and prints the
fitted offset, MAE at offset-2..offset+2 (how much one frame of misalignment costs: the
count changes from frame to frame, so a wrong offset inflates the error) and how often
that model agrees with the content match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
from aiohttp import web
from numpy.typing import NDArray

from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Result
from crowdcount.streamer.app import build_app
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.routes.common import SERVICE
from crowdcount.streamer.smoothing import Ema

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROWD_SHARED") or ROOT.parent / "shared")
CLIP = SHARED / "videos" / "mall_test_1601-2000_10fps.mp4"
CLIP_FPS = 10.0
THUMB_SIZE = (80, 60)  # (width, height): people are still a few pixels wide at this size
MIN_MARGIN = 1.05  # second-nearest / nearest distance below this: identity not trusted
STREAM = "mall"


# ----------------------------------------------------------------------------- the clip


def counts_csv_for(clip: Path) -> Path:
    return clip.with_suffix(".counts.csv")


def load_truth(path: Path) -> NDArray[np.float64]:
    """True count per video frame index, from ``video_frame_index,mall_frame_id,count``."""
    with path.open(newline="") as fh:
        rows = sorted((int(r["video_frame_index"]), float(r["count"])) for r in csv.DictReader(fh))
    if [i for i, _ in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: video_frame_index is not 0..{len(rows) - 1}")
    return np.array([c for _, c in rows])


def decode_clip(path: Path) -> list[NDArray[np.uint8]]:
    """Every frame of ``path`` as RGB, in order (what the model sees without RTSP)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def thumbnail(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """A small grey picture: cheap enough to take on the loop for every frame, detailed
    enough to tell consecutive Mall frames apart once the background is removed."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


class FrameIdentifier:
    """Which clip frame a (re-encoded) picture is, by nearest background-free thumbnail."""

    def __init__(self, frames: Sequence[NDArray[np.uint8]]) -> None:
        thumbs = np.stack([thumbnail(f) for f in frames])
        self.background = np.median(thumbs, axis=0)
        self.refs = thumbs - self.background
        self.ref_sq = (self.refs**2).sum(axis=1)

    def identify(
        self, thumbs: NDArray[np.float32]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(index of the nearest clip frame, second-nearest / nearest distance) per row."""
        x = thumbs - self.background
        d2 = (x**2).sum(axis=1)[:, None] - 2.0 * x @ self.refs.T + self.ref_sq[None, :]
        d = np.sqrt(np.maximum(d2, 0.0))
        order = np.argsort(d, axis=1)[:, :2]
        rows = np.arange(len(d))
        best, second = d[rows, order[:, 0]], d[rows, order[:, 1]]
        return order[:, 0].astype(np.int64), second / np.maximum(best, 1e-9)


# ------------------------------------------------------------------- the live measurement


@dataclass(slots=True)
class Record:
    """What the in-process sink keeps of one processed frame."""

    seq: int
    t: float
    count: float
    inferred_at: float
    thumb: NDArray[np.float32]


class RecordingSink:
    """Pipeline sink: the frame's seq, time, count and thumbnail (the feed lacks seq and
    pixels, and nothing else tells which clip frame a count belongs to)."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.records: list[Record] = []

    def on_result(self, result: Result) -> None:
        frame = result.frame
        if frame.stream_id != self.stream_id:
            return
        self.records.append(
            Record(frame.seq, frame.captured_at, float(result.count), result.inferred_at,
                   thumbnail(frame.image))
        )


@dataclass
class StreamRun:
    """Raw material of one live run, before alignment."""

    seconds: float
    feed: list[dict[str, Any]]
    history: list[dict[str, Any]]
    records: list[Record]
    status: dict[str, Any]
    pipeline: dict[str, Any]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_feed(
    session: aiohttp.ClientSession, url: str, seconds: float, items: list[dict[str, Any]]
) -> None:
    """Append SSE ``data:`` items to ``items`` for ``seconds`` after the first one."""
    deadline: float | None = None
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as resp:
        resp.raise_for_status()
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                line = await asyncio.wait_for(resp.content.readline(), remaining)
            except TimeoutError:
                return
            if not line:
                return
            if line.startswith(b"data:"):
                items.append(json.loads(line[5:]))
                if deadline is None:
                    deadline = time.monotonic() + seconds


async def run_stream(clip: Path, seconds: float, *, threads: int | None = None,
                     rate: float | None = None, decode: str = "auto",
                     gop: int | None = None) -> StreamRun:
    """Serve ``clip`` over RTSP, run the real service on it, read its feed for ``seconds``
    and its count history afterwards. ``rate``: the stream's ``fps_limit`` (``None``: the
    camera default). ``decode="auto"`` adds the camera through the API (keyframes only when
    they meet the rate); ``"full"`` adds the same RtspSource in process with no target rate,
    so every frame is decoded and the batcher alone keeps ``rate``."""
    sys.path.insert(0, str(ROOT))  # tests/ is not installed; its fixture runs the server
    from tests.fixtures.rtsp import RtspServer

    server = RtspServer(clip, gop=gop)
    await asyncio.to_thread(server.start)
    runner: web.AppRunner | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="mall-rtsp-") as tmp:
            model: dict[str, Any] = {} if threads is None else {"threads": threads}
            config = parse_config(
                {"server": {"database": str(Path(tmp) / "counts.sqlite3")}, "model": model}
            )
            app = build_app(config)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()  # runs the startup hook: the service and its pipeline start
            port = _free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}"
            service = app[SERVICE]
            sink = RecordingSink(STREAM)
            service.pipeline.add_sink(sink)  # before the stream exists: no result is missed

            feed: list[dict[str, Any]] = []
            async with aiohttp.ClientSession() as session:
                if decode == "full":
                    from crowdcount.streamer.config import CAMERA_FPS
                    from crowdcount.streamer.sources.rtsp import RtspSource

                    runtime = service.pipeline.runtime
                    source = RtspSource(STREAM, server.url, max_side=runtime.max_side)
                    await service.add_source(source, url=server.url, kind="rtsp",
                                             origin="api", fps_limit=rate or CAMERA_FPS)
                else:
                    body: dict[str, Any] = {"name": STREAM, "url": server.url}
                    if rate is not None:
                        body["fps_limit"] = rate
                    r = await session.post(f"{base}/api/streams", json=body)
                    if r.status != 201:
                        raise RuntimeError(f"POST /api/streams: {r.status} {await r.text()}")
                t0 = time.monotonic()
                await _read_feed(session, f"{base}/api/streams/{STREAM}/feed", seconds, feed)
                elapsed = time.monotonic() - t0
                status = (await (await session.get(f"{base}/api/streams/{STREAM}")).json())
                pipeline = service.pipeline.stats().to_dict()
                r = await session.delete(f"{base}/api/streams/{STREAM}")  # flushes the store
                if r.status != 204:
                    raise RuntimeError(f"DELETE /api/streams/{STREAM}: {r.status}")
                r = await session.get(f"{base}/api/streams/{STREAM}/counts",
                                      params={"limit": "100000"})
                history = (await r.json())["counts"]
            await runner.cleanup()
            runner = None
    finally:
        if runner is not None:
            await runner.cleanup()
        server.kill()
        with contextlib.suppress(Exception):
            server._stderr.close()
    return StreamRun(elapsed, feed, history, sink.records, status["status"], pipeline)


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Errors:
    frames: int
    mae: float
    rmse: float
    bias: float
    mae_1s: float | None  # 1 s trailing window: mean prediction vs mean truth of its frames

    @classmethod
    def of(cls, pred: NDArray[np.float64], truth: NDArray[np.float64],
           t: NDArray[np.float64] | None = None) -> Errors:
        err = pred - truth
        mae_1s = None
        if t is not None and len(t):
            order = np.argsort(t)
            ts, p, g = t[order], pred[order], truth[order]
            lo = np.searchsorted(ts, ts - 1.0, side="right")
            cp, cg = np.concatenate([[0], np.cumsum(p)]), np.concatenate([[0], np.cumsum(g)])
            n = np.arange(1, len(ts) + 1) - lo
            hi = np.arange(1, len(ts) + 1)
            mae_1s = float(np.mean(np.abs((cp[hi] - cp[lo]) / n - (cg[hi] - cg[lo]) / n)))
        return cls(len(err), float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2))),
                   float(np.mean(err)), mae_1s)


@dataclass
class Report:
    seconds: float
    frames_decoded: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    feed_items: int
    history_rows: int
    fps_decoded: float
    fps_feed: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    unique_clip_frames: int
    margin_min: float
    margin_p5: float
    unidentified: int
    feed: Errors
    history: Errors
    smoothed: Errors  # the service's EMA value vs the current frame's truth
    smoothed_vs_smoothed_truth: Errors  # ... vs the truth through the same EMA
    file_same_frames: Errors | None
    file_whole_clip: Errors | None
    seq_offset: int
    seq_offset_mae: dict[int, float] = field(default_factory=dict)
    seq_offset_agreement: float = 0.0
    decode_mode: str | None = None  # the stream's status.decode at the end


def analyse(run: StreamRun, truth: NDArray[np.float64], ident: FrameIdentifier,
            file_counts: NDArray[np.float64] | None) -> Report:
    """Align everything with the clip (see the module docstring) and compute the errors."""
    if not run.records or not run.feed:
        raise RuntimeError(f"no results: status {run.status}")
    n_clip = len(truth)
    idx, margin = ident.identify(np.stack([r.thumb for r in run.records]))
    trusted = margin >= MIN_MARGIN
    by_t = {r.t: int(i) for r, i, ok in zip(run.records, idx, trusted, strict=True) if ok}

    def aligned(items: list[dict[str, Any]], key: str) -> tuple[NDArray[np.float64], ...]:
        rows = [(float(it[key]), by_t[it["t"]], float(it["t"])) for it in items if it["t"] in by_t]
        if not rows:
            raise RuntimeError("no feed item matched a recorded frame on t")
        pred, where, t = (np.array(c) for c in zip(*rows, strict=True))
        return pred, truth[where.astype(int)], t, where.astype(int)

    fp, ft, ftime, fidx = aligned(run.feed, "count")
    hp, ht, htime, _ = aligned(run.history, "count")
    sp, st, stime, _ = aligned(run.feed, "smoothed")
    # The EMA lags by design (tau 2 s = 20 clip frames); compare it with the truth smoothed
    # by the same filter at the same times, so the lag itself is not counted as error.
    ema = Ema()
    st_smoothed = np.array([ema.update("truth", g, t) for g, t in zip(st, stime, strict=True)])

    file_same = file_whole = None
    if file_counts is not None:
        file_same = Errors.of(file_counts[fidx], ft, ftime)
        file_whole = Errors.of(file_counts, truth)

    # The brief's simpler model: index = (seq + offset) mod 400, one offset fitted by MAE.
    seqs = np.array([r.seq for r in run.records])
    counts = np.array([r.count for r in run.records])
    maes = np.array([np.mean(np.abs(counts - truth[(seqs + k) % n_clip])) for k in range(n_clip)])
    best = int(np.argmin(maes))
    around = {d: float(maes[(best + d) % n_clip]) for d in range(-2, 3)}
    agree = float(np.mean(((seqs + best) % n_clip)[trusted] == idx[trusted]))

    lat = run.pipeline
    return Report(
        seconds=run.seconds,
        frames_decoded=int(run.status["frames_in"]),
        frames_processed=int(run.status["frames_out"]),
        frames_dropped=int(run.status["dropped"]),
        reconnects=int(run.status["reconnects"]),
        feed_items=len(run.feed),
        history_rows=len(run.history),
        fps_decoded=_rate([r.seq for r in run.records], [r.t for r in run.records]),
        fps_feed=_items_per_s([float(it["t"]) for it in run.feed]),
        latency_ms_p50=lat.get("latency_ms_p50"),
        latency_ms_p95=lat.get("latency_ms_p95"),
        unique_clip_frames=len(set(fidx.tolist())),
        margin_min=float(margin.min()),
        margin_p5=float(np.percentile(margin, 5)),
        unidentified=int((~trusted).sum()),
        feed=Errors.of(fp, ft, ftime),
        history=Errors.of(hp, ht, htime),
        smoothed=Errors.of(sp, st),
        smoothed_vs_smoothed_truth=Errors.of(sp, st_smoothed),
        file_same_frames=file_same,
        file_whole_clip=file_whole,
        seq_offset=best,
        seq_offset_mae=around,
        seq_offset_agreement=agree,
        decode_mode=run.status.get("decode"),
    )


def _items_per_s(ts: list[float]) -> float:
    """Items per second between the first and the last one."""
    return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0


def _rate(seqs: list[int], ts: list[float]) -> float:
    """Decoded frames per second, from the decoder's counter over the processed frames'
    capture times (dropped frames are decoded too, so seq counts them)."""
    if len(seqs) < 2 or ts[-1] <= ts[0]:
        return 0.0
    return (seqs[-1] - seqs[0]) / (ts[-1] - ts[0])


def file_counts_for(frames: Sequence[NDArray[np.uint8]],
                    runtime: Runtime | None = None) -> NDArray[np.float64]:
    """The model's count of every clip frame decoded from the mp4 (no RTSP)."""
    runtime = runtime or Runtime.open()
    out: list[float] = []
    for start in range(0, len(frames), 8):
        out.extend(float(m.sum()) for m in runtime.predict(frames[start : start + 8]))
    return np.array(out)


async def measure(clip: Path, seconds: float, *, with_file: bool = True,
                  threads: int | None = None, rate: float | None = None,
                  decodes: Sequence[str] = ("auto",),
                  gop: int | None = None) -> list[tuple[str, Report]]:
    """The whole benchmark: one live run per decode mode, then (with ``with_file``) the
    no-RTSP baseline, which runs after the streams are stopped so that it does not steal
    CPU from them."""
    truth = load_truth(counts_csv_for(clip))
    frames = await asyncio.to_thread(decode_clip, clip)
    if len(frames) != len(truth):
        raise ValueError(f"{clip}: {len(frames)} frames but {len(truth)} true counts")
    ident = FrameIdentifier(frames)
    runs = [(d, await run_stream(clip, seconds, threads=threads, rate=rate, decode=d, gop=gop))
            for d in decodes]
    file_counts = await asyncio.to_thread(file_counts_for, frames) if with_file else None
    return [(d, analyse(run, truth, ident, file_counts)) for d, run in runs]


def format_comparison(reports: list[tuple[str, Report]]) -> str:
    """Keyframes-only (``auto`` at a rate the keyframes meet) against the full decode, at
    the same rate. The two see different clip frames, so besides each one's MAE the table
    gives its MAE minus the mp4-decode MAE on the very frames it counted: what the path
    itself costs, the fair comparison."""
    lines = ["| decode | status.decode | counts | MAE (RTSP) | MAE (mp4, same frames) "
             "| path cost (difference) |", "|---|---|---:|---:|---:|---:|"]
    for name, rep in reports:
        same = rep.file_same_frames
        cost = None if same is None else rep.feed.mae - same.mae
        lines.append(f"| {name} | {rep.decode_mode} | {rep.feed.frames} | {_f(rep.feed.mae)} | "
                     f"{_f(None if same is None else same.mae)} | {_f(cost)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- printing


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_report(rep: Report, clip: Path) -> str:
    cols: list[tuple[str, Errors | None]] = [
        ("RTSP → SSE feed", rep.feed),
        ("RTSP → /counts", rep.history),
        ("mp4 decode, same frames", rep.file_same_frames),
    ]
    lines = [
        f"Mall test clip {clip.name} over RTSP (GStreamer, x264 re-encode), bundled model, "
        f"{rep.seconds:.1f} s of feed",
        "",
        "| per frame | " + " | ".join(name for name, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for label, attr, digits in (("frames compared", "frames", 0), ("MAE", "mae", 2),
                                ("RMSE", "rmse", 2), ("bias (pred - true)", "bias", 2),
                                ("MAE of 1 s moving average", "mae_1s", 2)):
        cells = []
        for _, e in cols:
            v = None if e is None else getattr(e, attr)
            cells.append(str(v) if digits == 0 and v is not None else _f(v, digits))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| stream | value |",
        "|---|---:|",
        f"| frames decoded from RTSP | {rep.frames_decoded} ({rep.fps_decoded:.2f} fps) |",
        f"| frames processed (model) | {rep.frames_processed} |",
        f"| frames dropped (newer frame replaced them) | {rep.frames_dropped} |",
        f"| feed items received (SSE) | {rep.feed_items} ({rep.fps_feed:.2f} per s) |",
        f"| /counts rows | {rep.history_rows} |",
        f"| reconnects | {rep.reconnects} |",
        f"| capture → sink latency p50 / p95 | {_f(rep.latency_ms_p50, 0)} / "
        f"{_f(rep.latency_ms_p95, 0)} ms |",
        f"| distinct clip frames seen | {rep.unique_clip_frames} of 400 |",
        f"| feed 'smoothed' (EMA, tau 2 s) vs current frame's truth, MAE | "
        f"{_f(rep.smoothed.mae)} |",
        f"| feed 'smoothed' vs the truth through the same EMA, MAE | "
        f"{_f(rep.smoothed_vs_smoothed_truth.mae)} |",
    ]
    if rep.file_whole_clip is not None:
        lines.append(f"| mp4 decode, all 400 frames, MAE / bias | {_f(rep.file_whole_clip.mae)} "
                     f"/ {_f(rep.file_whole_clip.bias)} |")
    around = "  ".join(f"{d:+d}: {m:.2f}" for d, m in rep.seq_offset_mae.items())
    lines += [
        "",
        f"Alignment by content: margin (2nd-nearest / nearest) min {rep.margin_min:.2f}, "
        f"5th percentile {rep.margin_p5:.2f}; {rep.unidentified} frame(s) under "
        f"{MIN_MARGIN} left out.",
        f"Cross-check, index = (seq + offset) mod 400: fitted offset {rep.seq_offset}; "
        f"MAE at offset {around}; agrees with the content match on "
        f"{100 * rep.seq_offset_agreement:.1f}% of frames.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=CLIP,
                        help="H.264 mp4 with a .counts.csv beside it (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long to read the live feed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads (default: the runtime's own choice)")
    parser.add_argument("--no-file", action="store_true",
                        help="skip the no-RTSP baseline on frames decoded from the mp4")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--rate", type=float, default=None,
                        help="the stream's fps_limit (default: the cameras' default rate)")
    parser.add_argument("--decode", choices=("auto", "full", "both"), default="auto",
                        help="auto: as the service decodes (keyframes only when they meet "
                             "the rate); full: every frame; both: one run of each and a "
                             "comparison table")
    parser.add_argument("--gop", type=int, default=None,
                        help="the RTSP server's keyframe interval in frames (default: one a "
                             "second). 9 at the clip's 10 fps puts the keyframes on other "
                             "clip frames on every loop, so keyframes-only sees most of the clip")
    args = parser.parse_args(argv)
    if not args.clip.is_file() or not counts_csv_for(args.clip).is_file():
        print(f"clip or its counts not found: {args.clip} (set CROWD_SHARED)", file=sys.stderr)
        return 2
    os.environ.pop("CROWDCOUNT_TOKEN", None)  # loopback benchmark: no token needed
    decodes = ("auto", "full") if args.decode == "both" else (args.decode,)
    reports = asyncio.run(measure(args.clip, args.seconds, with_file=not args.no_file,
                                  threads=args.threads, rate=args.rate, decodes=decodes,
                                  gop=args.gop))
    for name, rep in reports:
        print(f"## decode: {name}\n")
        print(format_report(rep, args.clip))
        print()
    if len(reports) > 1:
        print(format_comparison(reports))
    if args.json is not None:
        args.json.write_text(json.dumps({name: asdict(rep) for name, rep in reports},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
