"""Inference speed of a model per backend and batch size (a benchmark, not a test).

    python benchmarks/bench_model.py                      # the bundled default model
    python benchmarks/bench_model.py --model run/best.keras --sizes 480x640

Prints median ms per frame and frames/s for ONNX Runtime, TFLite (fp32 and int8, exported on
the fly at a fixed size, batch 1) and Keras, at 640x480 and the model's native training crop.
Machines are noisy: compare rows of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from crowdcount.model.backends import Backend, load_backend
from crowdcount.model.bundled import DEFAULT_KERAS, DEFAULT_ONNX


def timeit(backend: Backend, batch: np.ndarray, repeats: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(3):
        backend.predict(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.predict(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--keras", type=Path, default=DEFAULT_KERAS)
    parser.add_argument("--sizes", default="480x640,384x512")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma-separated backends to skip")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    skip = set(args.skip.split(","))
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, int, float]] = []

    def run(name: str, backend: Backend, size: tuple[int, int], batch_sizes: list[int]) -> None:
        for b in batch_sizes:
            x = rng.uniform(0, 255, (b, *size, 3)).astype(np.float32)
            rows.append((name, f"{size[1]}x{size[0]}", b, timeit(backend, x, args.repeats) / b))
            print(f"  {name:12s} {size[1]}x{size[0]} batch {b}: {rows[-1][3] * 1e3:.1f} ms/frame",
                  flush=True)

    if "onnx" not in skip:
        onnx = load_backend(args.onnx, "onnx", threads=args.threads)
        for size in sizes:
            run("onnx", onnx, size, batches)
    if "tflite" not in skip or "keras" not in skip:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from crowdcount.training.export import export_tflite

        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                for quant in ("fp32", "int8"):
                    if "tflite" in skip:
                        break
                    path = export_tflite(args.keras, Path(tmp) / f"m_{quant}.tflite", size, quant)
                    run(f"tflite-{quant}", load_backend(path, "tflite", args.threads), size, [1])
        if "keras" not in skip:
            keras_backend = load_backend(args.keras, "keras")
            for size in sizes:
                run("keras", keras_backend, size, batches)

    print(f"\n{'backend':12s} {'input':>8s} {'batch':>5s} {'ms/frame':>9s} {'frames/s':>9s}")
    for name, size, b, sec in rows:
        print(f"{name:12s} {size:>8s} {b:5d} {sec * 1e3:9.1f} {1 / sec:9.1f}")


if __name__ == "__main__":
    main()
