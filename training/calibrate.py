"""Fit the bundled network to one camera from a few marked frames, where serving runs.

Why this shape (measured on Beijing BRT camera 2, see docs/calibration.md):

* the errors of the generic model on a new camera are not a scale and not a fixed spatial
  pattern: a per-region multiplier fitted on the very frames it is scored on still left MAE
  2.0 of 2.3, so the features themselves must change, not just the output;
* a whole-network step on JAX/XLA's CPU backend took ~12 s for 4 frames on the loaded 2-core
  machine (depthwise convolution gradients are slow there), far too slow for a 2-minute
  budget. So the network is cut after ``block_5_add`` (stride 8, 32 channels): the layers
  before the cut run forward once per marked frame (and its mirror image), their outputs are
  kept, and only the layers after the cut (88 % of the weights: MobileNetV2's blocks 6-12 and
  the decoder) are trained on them;
* a guard decides whether to keep the result: some marked frames are held back, the same
  recipe is trained on the others, and the adapted model is kept only if it beats the base
  model on the held-back frames. The final model is then trained on all marked frames with
  the same number of steps.

Only Keras 3 (on PyTorch or JAX), NumPy, OpenCV and ``onnx`` are needed (the ``calibrate``
extra); the result is written as ONNX by :mod:`training.onnx_writer`, without TensorFlow.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import centered_density, downsample, fixed_density
from crowdcount.model.errors import UserError
from crowdcount.model.preprocess import input_size, prepare_batch
from crowdcount.model.types import Sample

log = logging.getLogger(__name__)

#: Layer after which the network is trained (see the module docstring).
CUT = "block_5_add"
#: Kernel width (pixels at network input) of the density targets built from head marks.
#: 8 rather than the generic reader's 4: with 4-pixel kernels (half an output cell) the
#: pixel error dominated and drove the counts down (BRT: MAE 2.41 -> 2.80, bias -2.3).
SIGMA = 8.0
#: Fewest marked frames calibration accepts; below this a hold-out says nothing.
MIN_FRAMES = 5
#: Most marked frames one calibration takes (bounds memory and time).
MAX_FRAMES = 100
#: The time budget by default (the CLI's and the API's), counted from the start: loading and
#: features count towards it. The server's job trains on one
#: thread; on a 2-core machine with PyTorch a step took 0.65 s there, so the guard's and the
#: final run's 120 steps each take ~80 s, plus ~25 s of loading and features. 240 s leaves
#: room for load; a slower machine or backend (JAX: 5 s a step) stops short of the steps.
DEFAULT_TIME_BUDGET = 240.0

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Recipe:
    """How the top of the network is trained; defaults chosen on BRT camera 2 (one day
    marked, other days scored, docs/calibration.md)."""

    learning_rate: float = 1e-4
    batch_size: int = 8
    count_weight: float = 1.0  # 0.01 (the training default) let the pixel term pull counts down
    density_scale: float = 100.0
    # A fixed number of updates, not "as many as the time allows": on a loaded machine the
    # deadline-driven count fell to 11 steps and the kept model was worse on other days
    # (BRT: 2.89 against 2.41) although the guard passed it; now load only makes it slower.
    # BRT camera 2, 10 frames of one day, other days scored, three seeds each (base 2.41):
    # lr 3e-4 x 40 steps 1.93 / 3.21 / 1.98 (one seed collapsed to a -3 bias), 1e-4 x 40
    # 2.06 / 2.26 / 2.00, 2e-4 x 60 1.97 / 1.95 / 2.12, 1e-4 x 120 1.97 / 1.77 / 1.85.
    steps: int = 120
    crop_cells: tuple[int, int] = (48, 32)  # training crop in output cells (384x256 px)
    holdout: float = 0.3  # fraction of marked frames the guard holds back
    seed: int = 0


@dataclass
class Result:
    """What a calibration did; ``kept`` is the guard's verdict."""

    frames: int
    held_out: int
    mae_before: float  # the base model on the held-back frames
    mae_after: float  # the adapted model (trained without them) on the same frames
    kept: bool
    steps: int
    seconds: float
    input_size: tuple[int, int]
    model: str | None = None
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


#: The Keras backends calibration trains on.
TRAINING_BACKENDS = ("torch", "jax")


def _keras() -> Any:
    """Keras on PyTorch when torch is installed, else on JAX; never TensorFlow (the serving
    install has none). One training step of the top half took ~3.5 s for 8 full BRT frames
    on torch and ~15 s on JAX on the loaded 2-core machine: XLA's CPU convolution gradients
    are slow, PyTorch's oneDNN ones are not."""
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        os.environ["KERAS_BACKEND"] = "torch" if importlib.util.find_spec("torch") else "jax"
    try:
        import keras
    except ImportError:
        raise UserError("calibration needs Keras 3 with PyTorch or JAX: "
                        "pip install 'crowdcount[calibrate]'") from None
    if keras.backend.backend() not in TRAINING_BACKENDS:
        raise UserError(f"calibration runs Keras on torch or JAX (KERAS_BACKEND), not "
                        f"{keras.backend.backend()}")
    return keras


def _check(samples: Sequence[Sample]) -> None:
    if len(samples) < MIN_FRAMES:
        raise UserError(f"calibration needs at least {MIN_FRAMES} marked frames, "
                        f"got {len(samples)}")
    if len(samples) > MAX_FRAMES:
        raise UserError(f"calibration takes at most {MAX_FRAMES} marked frames, "
                        f"got {len(samples)}")


@dataclass
class _Data:
    """Marked frames at the network's input size, their mirror images, and targets."""

    images: NDArray[np.float32]  # (2N, H, W, 3): frames, then their mirrors
    targets: NDArray[np.float32]  # (2N, h, w, 1)
    counts: NDArray[np.float32]  # (2N,)

    @property
    def n(self) -> int:
        return len(self.counts) // 2


def _prepare(samples: Sequence[Sample], size: tuple[int, int], stride: int) -> _Data:
    h, w = size
    images = prepare_batch([s.image for s in samples], size)
    targets = np.zeros((len(samples), h // stride, w // stride, 1), np.float32)
    for i, s in enumerate(samples):
        if s.points is None:  # a typed count: spread it as training does
            targets[i, ..., 0] = downsample(centered_density(s.count, size), stride)
            continue
        sy, sx = h / s.image.shape[0], w / s.image.shape[1]
        pts = np.asarray(s.points, np.float32).reshape(-1, 2) * np.array([sx, sy], np.float32)
        targets[i, ..., 0] = fixed_density(pts, size, SIGMA, stride)
    counts = np.array([s.count for s in samples], np.float32)
    return _Data(
        images=np.concatenate([images, images[:, :, ::-1]]),
        targets=np.concatenate([targets, targets[:, :, ::-1]]),
        counts=np.concatenate([counts, counts]),
    )


class _Trainer:
    """The cut network: features of the bottom half, training and counts of the top."""

    def __init__(self, base: Path, recipe: Recipe) -> None:
        keras = _keras()
        from crowdcount.training.graph_cut import split
        from crowdcount.training.losses import DensityLoss

        self.keras, self.recipe = keras, recipe
        self.model = keras.saving.load_model(base, compile=False)
        self.bottom, self.top = split(self.model, CUT)
        self.initial = self.top.get_weights()
        self._loss = DensityLoss(recipe.density_scale, recipe.count_weight)

    def features(self, images: NDArray[np.float32], chunk: int = 4) -> NDArray[np.float32]:
        return np.concatenate([np.asarray(self.bottom.predict_on_batch(images[i:i + chunk]))
                               for i in range(0, len(images), chunk)])

    def counts(self, feats: NDArray[np.float32], chunk: int = 4) -> NDArray[np.float32]:
        """Counts of the top half with its current weights."""
        return np.concatenate([np.asarray(self.top.predict_on_batch(feats[i:i + chunk])
                                          ).sum(axis=(1, 2, 3))
                               for i in range(0, len(feats), chunk)])

    def reset(self) -> None:
        """Back to the base weights with a fresh optimizer."""
        self.top.set_weights(self.initial)
        self.top.compile(optimizer=self.keras.optimizers.Adam(self.recipe.learning_rate),
                         loss=self._loss)

    def train(
        self,
        feats: NDArray[np.float32],
        data: _Data,
        rows: NDArray[np.intp],
        steps: int,
        deadline: float,
        progress: Progress | None = None,
    ) -> tuple[int, list[float]]:
        """Adam from the base weights on random crops of frames ``rows`` (and their
        mirrors) for ``steps`` updates, fewer if ``deadline`` (monotonic) passes first.
        Returns the steps taken and the loss every 10 steps."""
        r = self.recipe
        rng = np.random.default_rng(r.seed)
        self.reset()
        pool = np.concatenate([rows, rows + data.n])
        batch = min(r.batch_size, len(pool))
        h, w = feats.shape[1:3]
        ch, cw = min(h, r.crop_cells[0]), min(w, r.crop_cells[1])
        history: list[float] = []
        done = 0
        while done < steps and (done == 0 or time.monotonic() < deadline):
            pick = rng.choice(pool, size=batch, replace=len(pool) < batch)
            # crop offsets even: the top halves the feature map once (stride 16)
            ys = 2 * rng.integers(0, (h - ch) // 2 + 1, batch)
            xs = 2 * rng.integers(0, (w - cw) // 2 + 1, batch)
            x = np.stack([feats[i, y:y + ch, c:c + cw] for i, y, c in zip(pick, ys, xs,
                                                                          strict=True)])
            t = np.stack([data.targets[i, y:y + ch, c:c + cw] for i, y, c in zip(
                pick, ys, xs, strict=True)])
            value = self.top.train_on_batch(x, t)
            done += 1
            if done % 10 == 0:
                history.append(float(np.asarray(value)))
                if progress is not None:
                    progress(f"step {done} of {steps}", done / steps)
        return done, history


def _holdout(n: int, fraction: float) -> NDArray[np.intp]:
    """Frames held back by the guard: evenly spread over the marked frames' order (the order
    they were marked in, often time), at least one, leaving at least three to train on."""
    k = min(max(1, round(n * fraction)), n - 3)
    return np.unique(np.linspace(0, n - 1, k + 2)[1:-1].round().astype(np.intp))


def calibrate(
    samples: Sequence[Sample],
    output: str | Path,
    base: str | Path | None = None,
    time_budget: float = DEFAULT_TIME_BUDGET,
    max_side: int | None = None,
    recipe: Recipe | None = None,
    progress: Progress | None = None,
) -> Result:
    """Adapt ``base`` (default: the bundled ``.keras``) to the marked ``samples`` and write
    the adapted ONNX model to ``output`` when the guard keeps it. ``time_budget`` (seconds,
    from the call) bounds loading, features and the two training runs; export comes on
    top."""
    from crowdcount.model.bundled import default_model, serving_max_side
    from crowdcount.training.onnx_writer import write_onnx

    _check(samples)
    recipe = recipe or Recipe()
    started = time.monotonic()
    say = progress or (lambda message, fraction: None)
    base_path = Path(base) if base is not None else default_model("keras")
    if base_path.suffix != ".keras":
        raise UserError(f"--base must be a Keras model (.keras), not {base_path.name}")
    if max_side is None and base is None:
        max_side = serving_max_side()
    first = samples[0].image
    size = input_size(first.shape[1], first.shape[0], max_side)
    say("loading the base model", 0.0)
    trainer = _Trainer(base_path, recipe)
    stride = size[0] // int(trainer.model.compute_output_shape((1, *size, 3))[1])
    data = _prepare(samples, size, stride)
    say("computing features of the marked frames", 0.05)
    feats = trainer.features(data.images)
    n = data.n
    held = _holdout(n, recipe.holdout)
    train_rows = np.setdiff1d(np.arange(n), held)
    base_counts = trainer.counts(feats[:n])
    budget_end = started + time_budget
    half = time.monotonic() + max(0.0, (budget_end - time.monotonic()) / 2)
    say("guard: training without the held-back frames", 0.1)
    steps, _ = trainer.train(feats, data, train_rows, recipe.steps, half,
                             lambda m, f: say(f"guard {m}", 0.1 + 0.4 * f))
    guard_counts = trainer.counts(feats[held])
    true = data.counts[held]
    mae_before = float(np.abs(base_counts[held] - true).mean())
    mae_after = float(np.abs(guard_counts - true).mean())
    kept = mae_after < mae_before
    log.info("calibration guard: %d held back, MAE %.3f -> %.3f after %d steps",
             len(held), mae_before, mae_after, steps)
    result = Result(frames=n, held_out=len(held), mae_before=mae_before, mae_after=mae_after,
                    kept=kept, steps=steps, seconds=0.0, input_size=size)
    if kept:
        say("training on all marked frames", 0.5)
        _, result.history = trainer.train(feats, data, np.arange(n), steps, math.inf,
                                          lambda m, f: say(f"final {m}", 0.5 + 0.45 * f))
        say("writing the model", 0.95)
        result.model = str(write_onnx(trainer.model, output))
    result.seconds = time.monotonic() - started
    say("done", 1.0)
    return result
