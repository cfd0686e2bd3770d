"""What a bigger network costs at serving time: the architecture variants worth training for
dense crowds (issue "capacity where it pays"), exported to ONNX and timed in the serving
default backend at 640x480, batch 1, beside the bundled architecture, in one run.

    python benchmarks/bench_capacity.py                 # default variants, 40 rounds
    python benchmarks/bench_capacity.py --rounds 100 --size 1024x768

Weights are random (speed does not depend on them); each variant is built, saved, exported
with ``crowdcount export``'s own ONNX path and loaded with ``load_backend``. Rounds go
through every variant in turn, so a noisy neighbour slows all of them alike; the table shows
the median. The ``>= 30 fps`` column is the budget a default model must keep on a 2-core box.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from crowdcount.model.architecture import ModelSpec, build
from crowdcount.model.backends import default_backend, load_backend
from crowdcount.training.export import export_onnx, quiet_tensorflow

#: (label, top_stride, decoder_width); the first is the bundled model's architecture.
VARIANTS = [
    ("bundled: stride 16, width 64", 16, 64),
    ("stride 16, width 128", 16, 128),
    ("stride 32, width 64", 32, 64),
    ("stride 32, width 128", 32, 128),
]


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--size", type=size, default=(640, 480), help="WIDTHxHEIGHT")
    p.add_argument("--backend", default=None, help="default: the serving default")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    backend_name = args.backend or default_backend()
    w, h = args.size
    image = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32)
    runs = {}
    params = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, top, width in VARIANTS:
            print(f"building {label} ...", flush=True)
            model = build(ModelSpec(top_stride=top, decoder_width=width))
            params[label] = model.count_params()
            path = Path(tmp) / f"s{top}w{width}.keras"
            model.save(path)
            with quiet_tensorflow():
                onnx = export_onnx(path, path.with_suffix(".onnx"))
            runs[label] = load_backend(onnx, backend_name, threads=args.threads)
            runs[label].predict(image)  # compile for this shape
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, backend in runs.items():
                t0 = time.perf_counter()
                backend.predict(image)
                times[label].append(time.perf_counter() - t0)
    base = statistics.median(times[VARIANTS[0][0]])
    print(f"\n{w}x{h}, batch 1, backend {backend_name}, {args.rounds} interleaved rounds")
    print(f"{'variant':30s} {'params':>8s} {'ms/frame':>9s} {'frames/s':>9s} {'cost':>6s} "
          f"{'>= 30 fps':>9s}")
    for label, t in times.items():
        ms = statistics.median(t) * 1e3
        print(f"{label:30s} {params[label] / 1e6:7.2f}M {ms:9.1f} {1e3 / ms:9.1f} "
              f"{ms / (base * 1e3):5.2f}x {'yes' if ms <= 1000 / 30 else 'no':>9s}")


if __name__ == "__main__":
    main()
