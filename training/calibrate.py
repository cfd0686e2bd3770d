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

Only Keras 3 on JAX, NumPy, OpenCV and ``onnx`` are needed (the ``calibrate`` extra); the
result is written as ONNX by :mod:`training.onnx_writer`, without TensorFlow.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import fixed_density
from crowdcount.model.errors import UserError
from crowdcount.model.preprocess import input_size, prepare_batch
from crowdcount.model.types import Sample

log = logging.getLogger(__name__)

#: Layer after which the network is trained (see the module docstring).
CUT = "block_5_add"
#: Kernel width (pixels at network input) of the density targets built from head marks.
SIGMA = 4.0
#: Fewest marked frames calibration accepts; below this a hold-out says nothing.
MIN_FRAMES = 5
#: Most marked frames one calibration takes (bounds memory and time).
MAX_FRAMES = 100

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Recipe:
    """How the top of the network is trained; defaults chosen on BRT camera 2 (one day
    marked, other days scored, docs/calibration.md)."""

    learning_rate: float = 1e-4
    batch_size: int = 8
    count_weight: float = 0.01
    density_scale: float = 100.0
    max_steps: int = 400
    min_steps: int = 20
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


def _require_jax() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise UserError("calibration needs Keras 3 and JAX: pip install 'crowdcount[calibrate]'"
                        ) from None
    if keras.backend.backend() != "jax":
        raise UserError(f"calibration runs Keras on JAX (KERAS_BACKEND=jax), not "
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
    has_points: NDArray[np.float32]  # (2N,) 1 where the frame has head marks

    @property
    def n(self) -> int:
        return len(self.counts) // 2


def _prepare(samples: Sequence[Sample], size: tuple[int, int], stride: int) -> _Data:
    h, w = size
    images = prepare_batch([s.image for s in samples], size)
    targets = np.zeros((len(samples), h // stride, w // stride, 1), np.float32)
    has_points = np.zeros(len(samples), np.float32)
    for i, s in enumerate(samples):
        if s.points is None:
            continue
        sy, sx = h / s.image.shape[0], w / s.image.shape[1]
        pts = np.asarray(s.points, np.float32).reshape(-1, 2) * np.float32([sx, sy])
        targets[i, ..., 0] = fixed_density(pts, size, SIGMA, stride)
        has_points[i] = 1.0
    counts = np.array([s.count for s in samples], np.float32)
    return _Data(
        images=np.concatenate([images, images[:, :, ::-1]]),
        targets=np.concatenate([targets, targets[:, :, ::-1]]),
        counts=np.concatenate([counts, counts]),
        has_points=np.concatenate([has_points, has_points]),
    )


class _Trainer:
    """The cut network and its jitted forward and update functions (compiled once)."""

    def __init__(self, base: Path, recipe: Recipe) -> None:
        keras = _require_jax()
        import jax
        import jax.numpy as jnp

        import crowdcount.training.losses  # noqa: F401  (custom objects of saved models)
        from crowdcount.training.graph_cut import split

        self.keras, self.recipe = keras, recipe
        self.model = keras.saving.load_model(base, compile=False)
        self.bottom, self.top = split(self.model, CUT)
        self.initial = [np.asarray(v.value) for v in self.top.trainable_variables]
        self.fixed = [v.value for v in self.top.non_trainable_variables]
        bottom_tv = [v.value for v in self.bottom.trainable_variables]
        bottom_ntv = [v.value for v in self.bottom.non_trainable_variables]
        scale, cw = recipe.density_scale, recipe.count_weight

        @jax.jit
        def features(x: Any) -> Any:
            y, _ = self.bottom.stateless_call(bottom_tv, bottom_ntv, x, training=False)
            return y

        @jax.jit
        def predict(tv: Any, f: Any) -> Any:
            y, _ = self.top.stateless_call(tv, self.fixed, f, training=False)
            return jnp.sum(y, axis=(1, 2, 3))

        def loss(tv: Any, f: Any, t: Any, c: Any, m: Any) -> Any:
            y, _ = self.top.stateless_call(tv, self.fixed, f, training=True)
            pixel = jnp.mean(jnp.square((y - t) * scale), axis=(1, 2, 3))
            count = jnp.abs(jnp.sum(y, axis=(1, 2, 3)) - c)
            return jnp.mean(m * pixel + cw * count + (1 - m) * count)

        self.optimizer = keras.optimizers.Adam(recipe.learning_rate)
        self.optimizer.build(self.top.trainable_variables)

        @jax.jit
        def step(tv: Any, ov: Any, f: Any, t: Any, c: Any, m: Any) -> Any:
            value, grads = jax.value_and_grad(loss)(tv, f, t, c, m)
            tv, ov = self.optimizer.stateless_apply(ov, grads, tv)
            return tv, ov, value

        self._features, self._predict, self._step = features, predict, step

    def features(self, images: NDArray[np.float32], chunk: int = 4) -> NDArray[np.float32]:
        return np.concatenate([np.asarray(self._features(images[i:i + chunk]))
                               for i in range(0, len(images), chunk)])

    def counts(self, weights: list[Any], feats: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.concatenate([np.asarray(self._predict(weights, feats[i:i + 4]))
                               for i in range(0, len(feats), 4)])

    def train(
        self,
        feats: NDArray[np.float32],
        data: _Data,
        rows: NDArray[np.intp],
        steps: int | None,
        deadline: float,
        progress: Progress | None = None,
        label: str = "",
    ) -> tuple[list[Any], int, list[float]]:
        """Adam from the base weights on frames ``rows`` (and their mirrors) for ``steps``
        updates, or until ``deadline`` when ``steps`` is None. Returns the weights, the
        steps taken and the loss every 10 steps."""
        r = self.recipe
        rng = np.random.default_rng(r.seed)
        pool = np.concatenate([rows, rows + data.n])
        weights = [self.keras.ops.convert_to_tensor(w) for w in self.initial]
        opt_vars = [np.zeros(v.shape, v.dtype) for v in self.optimizer.variables]
        batch = min(r.batch_size, len(pool))
        history: list[float] = []
        limit = steps if steps is not None else r.max_steps
        done = 0
        while done < limit:
            if steps is None and done >= r.min_steps and time.monotonic() > deadline:
                break
            pick = rng.choice(pool, size=batch, replace=False)
            weights, opt_vars, value = self._step(
                weights, opt_vars, feats[pick], data.targets[pick], data.counts[pick],
                data.has_points[pick])
            done += 1
            if done % 10 == 0:
                history.append(float(value))
                if progress is not None:
                    progress(f"{label} step {done}", done / limit)
        return weights, done, history

    def assign(self, weights: list[Any]) -> None:
        for var, value in zip(self.top.trainable_variables, weights, strict=True):
            var.assign(value)


def _holdout(n: int, fraction: float) -> NDArray[np.intp]:
    """Frames held back by the guard: evenly spread over the marked frames' order (the order
    they were marked in, often time), at least one, leaving at least three to train on."""
    k = min(max(1, round(n * fraction)), n - 3)
    return np.unique(np.linspace(0, n - 1, k + 2)[1:-1].round().astype(np.intp))


def calibrate(
    samples: Sequence[Sample],
    output: str | Path,
    base: str | Path | None = None,
    time_budget: float = 90.0,
    max_side: int | None = None,
    recipe: Recipe | None = None,
    progress: Progress | None = None,
) -> Result:
    """Adapt ``base`` (default: the bundled ``.keras``) to the marked ``samples`` and write
    the adapted ONNX model to ``output`` when the guard keeps it. ``time_budget`` bounds the
    two training runs together (seconds); compilation and export come on top."""
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
    base_counts = trainer.counts(trainer.initial, feats[:n])
    budget_end = started + time_budget
    half = time.monotonic() + max(0.0, (budget_end - time.monotonic()) / 2)
    say("guard: training without the held-back frames", 0.1)
    weights, steps, _ = trainer.train(feats, data, train_rows, None, half,
                                      lambda m, f: say(m, 0.1 + 0.4 * f), "guard")
    guard_counts = trainer.counts(weights, feats[held])
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
        weights, _, result.history = trainer.train(
            feats, data, np.arange(n), steps, math.inf, lambda m, f: say(m, 0.5 + 0.45 * f),
            "final")
        trainer.assign(weights)
        say("writing the model", 0.95)
        result.model = str(write_onnx(trainer.model, output))
    result.seconds = time.monotonic() - started
    say("done", 1.0)
    return result
