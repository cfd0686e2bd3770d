"""Callbacks the training loop adds to Keras' own (ModelCheckpoint, EarlyStopping,
ReduceLROnPlateau, BackupAndRestore, CSVLogger)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from crowdcount.model.backends.keras import KerasBackend
from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Sample


class MemoryCleanup(keras.callbacks.Callback):
    """The seed's memory-cleanup callback: collect garbage after each epoch so long CPU runs
    with cached datasets do not creep upwards."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        gc.collect()


class TimeBudget(keras.callbacks.Callback):
    """Stop after ``seconds`` of training (checked at each batch): on a lent GPU the run must
    end, with its checkpoints written, before the lease does."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.t0 = seconds, time.monotonic()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.t0 = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if time.monotonic() - self.t0 > self.seconds:
            self.model.stop_training = True


def count_errors(
    model: keras.Model, samples: Sequence[Sample], max_side: int | None = None
) -> np.ndarray:
    """Predicted minus true count for each sample, images at their own (snapped) size."""
    runtime = Runtime(KerasBackend(model=model), max_side=max_side)
    return np.array([runtime.count(s.image) - s.count for s in samples])


class CountValidation(keras.callbacks.Callback):
    """Whole-image count MAE/RMSE on held-out sets at each epoch's end, logged as
    ``val_<name>_mae`` and combined into ``val_score`` (mean of MAE / mean true count, so a
    street dataset with 100+ people does not drown a mall with 30)."""

    def __init__(
        self, sets: dict[str, Sequence[Sample]], every: int = 1, max_side: int | None = None
    ) -> None:
        super().__init__()
        self.sets, self.every, self.max_side = sets, every, max_side
        self.means = {k: max(1.0, float(np.mean([s.count for s in v]))) for k, v in sets.items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None or (epoch + 1) % self.every:
            return
        rel = []
        for name, samples in self.sets.items():
            err = count_errors(self.model, samples, self.max_side)
            logs[f"val_{name}_mae"] = float(np.abs(err).mean())
            logs[f"val_{name}_rmse"] = float(np.sqrt((err**2).mean()))
            logs[f"val_{name}_bias"] = float(err.mean())
            rel.append(logs[f"val_{name}_mae"] / self.means[name])
        logs["val_score"] = float(np.mean(rel))
