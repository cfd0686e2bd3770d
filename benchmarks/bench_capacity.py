"""What a bigger network costs at serving time: the architecture variants worth training for
dense crowds (issue "capacity where it pays"), exported to ONNX and timed in the serving
default backend at 640x480, batch 1, beside the bundled architecture, in one run.

    python benchmarks/bench_capacity.py                 # default variants, 40 rounds
    python benchmarks/bench_capacity.py --rounds 100 --size 1024x768

Each variant is the bundled model grown into it (``training/grow.py``: the stride-32 stage
and/or a wider decoder, starting with the bundled model's output), saved, exported with
``crowdcount export``'s own ONNX path and loaded with ``load_backend``; the ``count diff``
column is its count minus the bundled model's on a generated crowd in the serving backend,
so the table also shows that a grown export still counts like the model it grew from
(``--random`` times freshly initialised variants instead). Rounds go through every variant
in turn, so a noisy neighbour slows all of them alike; the table shows the median. The
``>= 30 fps`` column is the budget a default model must keep on a 2-core box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from crowdcount.model.architecture import ModelSpec, build, default_backbone_weights
from crowdcount.model.backends import default_backend, load_backend
from crowdcount.model.bundled import DEFAULT_KERAS
from crowdcount.training.export import export_onnx, quiet_tensorflow
from crowdcount.training.grow import grow

#: (label, top_stride, decoder_width); the first is the bundled model's architecture.
VARIANTS = [
    ("bundled: stride 16, width 64", 16, 64),
    ("stride 16, width 96", 16, 96),
    ("stride 16, width 128", 16, 128),
    ("stride 32, width 64", 32, 64),
    ("stride 32, width 96", 32, 96),
    ("stride 32, width 128", 32, 128),
]


def crowd(size: tuple[int, int]) -> np.ndarray:
    """A picture the bundled model counts tens of people in (dark heads on bodies over a
    textured floor), so the count column compares real numbers, not ~0 against ~0."""
    import cv2

    w, h = size
    rng = np.random.default_rng(7)
    img = np.clip(np.full((h, w, 3), (200, 190, 170)) + rng.integers(-15, 15, (h, w, 3)),
                  0, 255).astype(np.uint8)
    for x, y in rng.uniform([20, 20], [w - 20, h - 40], (60, 2)).astype(int):
        colour = tuple(int(v) for v in rng.integers(30, 200, 3))
        cv2.ellipse(img, (int(x), int(y + 15)), (7, 15), 0, 0, 360, colour, -1)
        cv2.circle(img, (int(x), int(y)), 5, (45, 35, 30), -1)
    return img


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--size", type=size, default=(640, 480), help="WIDTHxHEIGHT")
    p.add_argument("--backend", default=None, help="default: the serving default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--random", action="store_true",
                   help="time freshly initialised variants, not the bundled model grown")
    args = p.parse_args(argv)
    backend_name = args.backend or default_backend()
    w, h = args.size
    image = crowd((w, h))[None].astype(np.float32)
    runs = {}
    params = {}
    counts: dict[str, float] = {}
    start = None if args.random else keras.saving.load_model(DEFAULT_KERAS, compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        for label, top, width in VARIANTS:
            print(f"building {label} ...", flush=True)
            model = build(ModelSpec(top_stride=top, decoder_width=width),
                          None if start is None else default_backbone_weights())
            if start is not None:
                grow(start, model)
            params[label] = model.count_params()
            path = Path(tmp) / f"s{top}w{width}.keras"
            model.save(path)
            with quiet_tensorflow():
                onnx = export_onnx(path, path.with_suffix(".onnx"))
            runs[label] = load_backend(onnx, backend_name, threads=args.threads)
            counts[label] = float(runs[label].predict(image).sum())  # compiles the shape
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, backend in runs.items():
                t0 = time.perf_counter()
                backend.predict(image)
                times[label].append(time.perf_counter() - t0)
    base = statistics.median(times[VARIANTS[0][0]])
    what = "random weights" if start is None else "the bundled model grown"
    print(f"\n{w}x{h}, batch 1, backend {backend_name}, {args.rounds} interleaved rounds, "
          f"{what}, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':30s} {'params':>8s} {'ms/frame':>9s} {'frames/s':>9s} {'cost':>6s} "
          f"{'>= 30 fps':>9s} {'count diff':>10s}")
    ref = counts[VARIANTS[0][0]]
    for label, t in times.items():
        ms = statistics.median(t) * 1e3
        print(f"{label:30s} {params[label] / 1e6:7.2f}M {ms:9.1f} {1e3 / ms:9.1f} "
              f"{ms / (base * 1e3):5.2f}x {'yes' if ms <= 1000 / 30 else 'no':>9s} "
              f"{counts[label] - ref:+10.4f}")


if __name__ == "__main__":
    main()
