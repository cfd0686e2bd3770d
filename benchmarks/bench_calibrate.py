"""Calibration on one real camera: time and MAE before/after for 5, 10 and 20 marked frames.

    python benchmarks/bench_calibrate.py                     # BRT camera 2 in ../shared
    python benchmarks/bench_calibrate.py --frames 10 --time-budget 60
    python benchmarks/bench_calibrate.py --frames 10 --mark-day 20170506 --score same-day

The marked frames are chosen as a user would: evenly over ONE day (by default 2017-04-19,
the day the recipe was chosen on; ``--mark-day`` takes several); MAE is measured with ONNX
Runtime on every frame of the camera's OTHER days, never marked nor used for any choice
(``--score same-day``: on the marked days' frames that no row marks, to tell what the
frames teach from what carries over to other days). "after" is the model calibration
wrote, or the base model when the guard refused (shown in the kept column). Prints the load
average beside the time: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from crowdcount.model.bundled import DEFAULT_ONNX
from crowdcount.model.runtime import Runtime
from crowdcount.training.calibrate import DEFAULT_TIME_BUDGET, calibrate
from crowdcount.training.readers import open_dataset

SHARED = Path(os.environ.get("CROWD_SHARED") or Path(__file__).resolve().parents[2] / "shared")
BRT = SHARED / "data" / "beijing_brt_cam2"
MARK_DAY = "20170419"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(BRT))
    p.add_argument("--frames", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET)
    p.add_argument("--mark-day", nargs="+", default=[MARK_DAY],
                   help="the day(s) to mark, YYYYMMDD; frames are spread over them in time order")
    p.add_argument("--score", choices=("other-days", "same-day"), default="other-days")
    p.add_argument("--test-every", type=int, default=1,
                   help="score every k-th frame of those scored (1 = all)")
    args = p.parse_args()
    reader = open_dataset(f"generic:{args.data}")
    doc = json.loads((Path(args.data) / "annotations.json").read_text())
    files = [Path(e["file"]).name for e in doc["images"]]
    day = sorted((i for i, f in enumerate(files) if f[2:10] in args.mark_day),
                 key=lambda i: files[i])
    if not day:
        p.error(f"no frames of {' '.join(args.mark_day)}")
    on_day = set(day)
    other = [i for i in range(len(files)) if i not in on_day]
    marked = {k: [day[round(j)] for j in np.linspace(0, len(day) - 1, k)]
              for k in args.frames}
    if args.score == "same-day":  # frames of the marked days that no row of the table marks
        taken = {i for picks in marked.values() for i in picks}
        other = [i for i in day if i not in taken]
    tests = [reader[i] for i in other[::args.test_every]]
    truth = np.array([s.count for s in tests])

    def mae(model: Path) -> tuple[float, float]:
        runtime = Runtime.open(model, "onnx", threads=2)
        pred = np.array([runtime.count(s.image) for s in tests])
        return float(np.abs(pred - truth).mean()), float((pred - truth).mean())

    base_mae, base_bias = mae(DEFAULT_ONNX)
    days = " ".join(args.mark_day)
    where = "other days" if args.score == "other-days" else f"{days}, unmarked"
    print(f"marked: {days}; base model on {len(tests)} frames of {where}: "
          f"MAE {base_mae:.3f} bias {base_bias:+.3f}")
    print("| marked | seconds | load | guard held-back MAE | kept | scored MAE | bias "
          "| change |")
    print("|---|---|---|---|---|---|---|---|")
    for k in args.frames:
        samples = [reader[i] for i in marked[k]]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "camera.onnx"
            t0 = time.monotonic()
            result = calibrate(samples, out, time_budget=args.time_budget)
            seconds = time.monotonic() - t0
            at = load()
            after, bias = mae(out) if result.kept else (base_mae, base_bias)
        print(f"| {k} | {seconds:.0f} | {at} | {result.mae_before:.2f} -> "
              f"{result.mae_after:.2f} | {result.kept} | {after:.3f} | {bias:+.3f} | "
              f"{100 * (after - base_mae) / base_mae:+.0f} % |", flush=True)
    print(f"Keras backend {os.environ.get('KERAS_BACKEND')}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
