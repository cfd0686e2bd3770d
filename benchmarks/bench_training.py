"""Training throughput in crops per second: the PyDataset + ``fit`` path (NumPy/OpenCV/SciPy
augmentation and targets on the host) against the resident path (data in device memory,
augmentation and targets inside the jitted multi-step update), same model, crop, batch and
data, on whatever device JAX sees: run on a lent GPU, the same command reports GPU numbers.

    python benchmarks/bench_training.py                        # Mall + ShanghaiTech B subsets
    python benchmarks/bench_training.py --steps 40 --steps-per-call 10 --precision bfloat16
    python benchmarks/bench_training.py --data generic:.gpu/data/mall:1-200

Each path runs one epoch of ``--steps`` steps to compile and warm up, then the same again
timed; the table gives the timed epoch. The host path uses ``--workers`` loader threads.
Keras runs on JAX here whatever the default backend (the resident path is JAX code).
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported

import argparse
import sys
import time
from pathlib import Path

import jax
import keras

from crowdcount.model.architecture import ModelSpec, build, default_backbone_weights
from crowdcount.training.data import DensityDataset, WeightedReader
from crowdcount.training.losses import DensityLoss
from crowdcount.training.readers import open_dataset
from crowdcount.training.resident import ResidentTrainer, pack
from crowdcount.training.targets import Augment

SHARED = Path(os.environ.get("CROWD_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DEFAULT_DATA = [f"mall:{SHARED}/data/mall:1-40", f"shanghaitech:{SHARED}/data/shanghaitech_b/"
                "train_data:1-20"]


def model_for(args: argparse.Namespace) -> keras.Model:
    weights = default_backbone_weights()
    policy = keras.config.dtype_policy()
    if args.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = build(ModelSpec(output_stride=8), weights)
    keras.config.set_dtype_policy(policy)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=DensityLoss())
    return model


def timed_fit(model: keras.Model, data: keras.utils.PyDataset,
              callbacks: list[keras.callbacks.Callback]) -> tuple[float, float]:
    """(seconds of the warm-up epoch, seconds of the timed epoch)."""
    t0 = time.perf_counter()
    model.fit(data, epochs=1, callbacks=callbacks, verbose=0)
    t1 = time.perf_counter()
    print(f"  warm-up epoch {t1 - t0:.1f} s", file=sys.stderr, flush=True)
    model.fit(data, epochs=1, callbacks=callbacks, verbose=0)
    print(f"  timed epoch {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", help="FORMAT:PATH[:RANGE] (repeatable)")
    p.add_argument("--crop", default="384x512")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per epoch")
    p.add_argument("--steps-per-call", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--only", choices=["host", "resident"])
    args = p.parse_args()
    crop = tuple(int(v) for v in args.crop.lower().split("x"))
    assert len(crop) == 2
    sources = [WeightedReader(open_dataset(spec), 1.0, Augment(), cache=True)
               for spec in args.data or DEFAULT_DATA]
    n_items = sum(len(s.reader) for s in sources)
    device = jax.devices()[0]
    rows = []
    if args.only != "resident":
        print("pydataset + fit:", file=sys.stderr, flush=True)
        model = model_for(args)
        data = DensityDataset(sources, (crop[0], crop[1]), 8, args.batch_size, args.steps,
                              workers=args.workers, use_multiprocessing=False,
                              max_queue_size=8)
        first, timed = timed_fit(model, data, [])
        rows.append(("pydataset + fit", 1, first, timed))
    if args.only != "host":
        print("resident:", file=sys.stderr, flush=True)
        model = model_for(args)
        t0 = time.perf_counter()
        trainer = ResidentTrainer(model, pack(sources), (crop[0], crop[1]), 8, args.batch_size,
                                  args.steps, args.steps_per_call)
        packing = time.perf_counter() - t0
        first, timed = timed_fit(model, trainer.feeder, [trainer])
        rows.append((f"resident (pack {packing:.1f} s)", trainer.k, first, timed))
    print(f"device: {device.platform} ({device.device_kind}), {n_items} images, crop "
          f"{crop[0]}x{crop[1]}, batch {args.batch_size}, {args.steps} steps timed, "
          f"precision {args.precision}")
    print("| path | steps/call | warm-up epoch s | timed epoch s | ms/step | crops/s |")
    print("|---|---|---|---|---|---|")
    for name, k, first, timed in rows:
        print(f"| {name} | {k} | {first:.1f} | {timed:.2f} | "
              f"{1000 * timed / args.steps:.0f} | {args.steps * args.batch_size / timed:.1f} |")


if __name__ == "__main__":
    main()
