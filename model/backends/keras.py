"""Keras: the training-time model itself. Slowest to start (imports TensorFlow or JAX) but
needs no export; used for fine-tuning checks and as the reference the exports must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


class KerasBackend:
    name = "keras"
    fixed_batch = None
    max_batch = 8  # a compiled TF/JAX call carries milliseconds of overhead worth sharing

    def __init__(self, path: Path | None = None, model: Any = None) -> None:
        """Load ``path``, or wrap an in-memory ``model`` (validation during training)."""
        if model is None:
            import keras

            model = keras.saving.load_model(str(path), compile=False)
        self._model = model
        shape = self._model.input_shape
        fixed = shape[1] is not None and shape[2] is not None
        self.fixed_size = (int(shape[1]), int(shape[2])) if fixed else None
        self.fixed_batch = shape[0]

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        # predict_on_batch runs a compiled function: eager calls cost 75-150 ms each.
        out = self._model.predict_on_batch(batch)
        return np.asarray(out, np.float32)[..., 0]
