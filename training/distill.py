"""Distillation from a teacher (normally the model a fine-tune starts from) on chosen
datasets: for an example drawn from a distilled source the density target becomes
``(1 - beta) * annotation + beta * teacher(crop)``.

Why: a fine-tune on the three datasets together trades one for another (every CPU round
gained on ShanghaiTech A and lost on B and the Mall). Where the teacher already counts well
its own maps say how it did it; pulling the student towards them there keeps that while the
annotations on the other sets (dense crowds, empty scenes) teach what the teacher got wrong.
With the pixel-MSE loss, MSE to the mixed target equals ``(1 - beta)`` times the MSE to the
annotation plus ``beta`` times the MSE to the teacher, up to a constant: one knob per set.
The teacher's maps are computed on the very crops the student sees (after augmentation), in
the host pipeline, so the targets stay one array and every loss and checkpoint is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crowdcount.model.backends import load_backend
from crowdcount.model.errors import UserError
from crowdcount.training.data import DensityDataset

#: beta when ``--distill NAME`` gives none: half the target from the teacher.
DEFAULT_BETA = 0.5


def parse_distill(items: Sequence[str], names: Sequence[str]) -> list[float]:
    """``["mall=0.5", "shb"]`` -> one beta per training source (0 for the others)."""
    betas = dict.fromkeys(names, 0.0)
    for item in items:
        name, sep, value = item.partition("=")
        if name not in betas:
            raise UserError(f"--distill {item!r}: no training set named {name!r} "
                            f"(have {', '.join(names)})")
        try:
            beta = float(value) if sep else DEFAULT_BETA
        except ValueError:
            raise UserError(f"--distill {item!r}: the weight must be a number") from None
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"--distill {item!r}: the weight must lie in 0..1")
        betas[name] = beta
    return [betas[n] for n in names]


class Teacher:
    """A frozen model's density maps for a batch of crops. ``.onnx`` runs in the serving
    default backend (OpenVINO here: about a quarter of the TensorFlow step's cost on the
    CPU); ``.keras`` in Keras (on a GPU machine, where JAX has the device). One lock: the
    pipeline's worker threads share one loaded network."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"teacher model not found: {self.path}")
        self._backend = load_backend(self.path)
        self._lock = threading.Lock()

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) float32 RGB 0..255 -> (N, h/s, w/s, 1) density maps."""
        with self._lock:
            return np.asarray(self._backend.predict(batch), np.float32)[..., None]


class DistilledDataset(DensityDataset):
    """The training pipeline with teacher-mixed targets for sources whose beta is > 0."""

    def __init__(self, *args: object, betas: Sequence[float], teacher: Teacher,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.max_points is not None:
            raise UserError("--distill mixes density maps: use it with --loss mse")
        if len(betas) != len(self.sources):
            raise ValueError(f"{len(betas)} betas for {len(self.sources)} sources")
        self.betas, self.teacher = np.asarray(betas, np.float32), teacher

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys, which = self.draw(index)
        beta = self.betas[which]
        chosen = np.flatnonzero(beta > 0)
        if chosen.size:
            taught = self.teacher.maps(xs[chosen])
            if taught.shape != ys[chosen].shape:
                raise UserError(f"teacher {self.teacher.path} gives maps of "
                                f"{taught.shape[1:3]}, the student {ys.shape[1:3]}: "
                                "they need the same output stride")
            b = beta[chosen][:, None, None, None]
            ys[chosen] = (1 - b) * ys[chosen] + b * taught
        return xs, ys
