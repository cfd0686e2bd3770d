"""Counting a recorded video end to end vs the model alone (a benchmark, not a test).

    python benchmarks/bench_video.py                       # the Mall test clip, bundled model
    python benchmarks/bench_video.py --video clip.mp4 --batches 1,2,4 --max-sides none,512

For each input size and batch, two numbers of frames per second:

* model: the backend alone on already prepared float batches of real frames of the clip
  (what ``bench_model.py`` measures), at the same input size and batch;
* video: ``crowdcount count clip.mp4``'s path (``model.video.count_video``): decoding in a
  thread, RGB conversion, resizing, batched inference and the per-frame count.

Their ratio is how much of the model's speed a recording gets (target: at least 85 %).
The two are measured alternately, ``--rounds`` times, and the best of each is kept, since
other processes on the machine slow whichever run they happen to overlap. CPU ms per frame
(this process's user + system time, all threads) is printed beside them: on a shared
machine it moves much less than wall-clock rates do, and the difference between the two
columns is what decoding, colour conversion and resizing cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from crowdcount.model.bundled import DEFAULT_ONNX
from crowdcount.model.preprocess import prepare_batch
from crowdcount.model.runtime import Runtime
from crowdcount.model.video import count_video, decode_video, probe_video

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROWD_SHARED") or ROOT.parent / "shared")
CLIP = SHARED / "videos" / "mall_test_1601-2000_10fps.mp4"


Rate = tuple[float, float]  # (frames per second, CPU ms per frame)


def video_fps(runtime: Runtime, clip: Path, batch: int, frames: int) -> Rate:
    """Counting the first ``frames`` frames of ``clip`` end to end."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    results = count_video(runtime, clip, batch=batch)
    for _frame, density in results:
        float(density.sum())
        n += 1
        if n >= frames:
            break
    results.close()
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e3 / n


def model_fps(runtime: Runtime, images: list[np.ndarray], batch: int, frames: int) -> Rate:
    """The backend alone on prepared batches at the runtime's input size."""
    size = runtime.size_for(images[0])
    batches = [prepare_batch(images[i : i + batch], size)
               for i in range(0, len(images) - batch + 1, batch)]
    runtime.backend.predict(batches[0])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while n < frames:
        runtime.backend.predict(batches[(n // batch) % len(batches)])
        n += batch
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e3 / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=CLIP)
    parser.add_argument("--model", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--max-sides", default="none,512",
                        help="input sizes: 'none' = the frame's own, N = longer side N")
    parser.add_argument("--frames", type=int, default=200, help="frames per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"skipped: {args.video} not found (the Mall test clip is in the shared data; "
              "set CROWD_SHARED or pass --video)")
        return 0
    info = probe_video(args.video)
    frames = min(args.frames, info.frames or args.frames)
    images = [f.image for _, f in zip(range(32), decode_video(args.video), strict=False)]
    batches = [int(b) for b in args.batches.split(",")]
    sides = [None if s == "none" else int(s) for s in args.max_sides.split(",")]
    print(f"video {args.video.name}: {info.width}x{info.height}, {info.frames} frames; "
          f"model {args.model.name}; {frames} frames per run, best of {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}", flush=True)
    rows = []
    for side in sides:
        runtime = Runtime.open(args.model, threads=args.threads, max_side=side)
        h, w = runtime.size_for(images[0])
        for batch in batches:
            best_model: Rate = (0.0, float("inf"))
            best_video: Rate = (0.0, float("inf"))
            for _ in range(args.rounds):
                m = model_fps(runtime, images, batch, frames)
                v = video_fps(runtime, args.video, batch, frames)
                best_model = (max(best_model[0], m[0]), min(best_model[1], m[1]))
                best_video = (max(best_video[0], v[0]), min(best_video[1], v[1]))
            rows.append((f"{w}x{h}", batch, best_model, best_video))
            print(f"  {w}x{h} batch {batch}: model {best_model[0]:.1f}, video "
                  f"{best_video[0]:.1f} frames/s", flush=True)
    print()
    print("input    batch  model frames/s  video frames/s  video/model  "
          "CPU ms/frame model  video")
    for size, batch, m, v in rows:
        print(f"{size:8s} {batch:5d} {m[0]:15.1f} {v[0]:15.1f} {v[0] / m[0]:12.0%}  "
              f"{m[1]:18.1f} {v[1]:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
