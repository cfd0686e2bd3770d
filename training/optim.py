"""The optimizer for fine-tuning a trained network: Adam with a linear learning-rate warm-up
and optional per-entry learning-rate factors. Both act inside the update step, so they work
the same on TensorFlow and inside JAX's jitted step (a callback that sets the learning rate
between batches is lost on JAX, whose fit loop keeps its own copy of the optimizer state).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="crowdcount")
class FineTuneAdam(keras.optimizers.Adam):
    """Adam with ``warmup_steps`` of linear warm-up and per-entry factors (``scales``: ``id``
    of a model variable -> an array of its shape, ``training.grow.Growth.lr_scales``).

    Why the warm-up: Adam's first update is exactly ``learning_rate * sign(gradient)`` for
    every weight (bias correction makes ``m / sqrt(v)`` = +-1), a coherent shove to all the
    weights of a trained network at once. Measured from the bundled model (Adam 5e-4, batch
    2): two steps moved four Mall test frames' counts from 28.9/29.9/25.3/18.8 to
    17.1/20.1/21.8/12.6 (TensorFlow) and, grown to stride 32 and width 128, to about twice
    the truth (JAX); with a 100-step warm-up the same two steps left them within 0.1 and ten
    steps within 1.2 (docs/training.md).

    Why the factors: Adam moves every weight by about the learning rate whatever its
    gradient's size, so a zero gate with 262 k entries reading large new activations can
    open within tens of steps; scaling its gradient would do nothing (Adam is invariant to
    it), scaling its step does. ``ReduceLROnPlateau`` keeps working: it sets the base rate,
    which both multiply."""

    def __init__(self, *args: Any, scales: dict[int, np.ndarray] | None = None,
                 warmup_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warmup_steps = int(warmup_steps)
        self._scale_by_id = dict(scales or {})
        self._scale_list: list[np.ndarray | None] = []

    def build(self, variables: list[Any]) -> None:
        super().build(variables)
        self._scale_list = [self._scale_by_id.get(id(v)) for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        if self.warmup_steps > 0:
            done = ops.cast(self.iterations + 1, variable.dtype)
            lr = lr * ops.minimum(1.0, done / float(self.warmup_steps))
        scale = self._scale_list[self._get_variable_index(variable)] if self._scale_list \
            else None
        if scale is not None:
            lr = lr * ops.convert_to_tensor(scale, variable.dtype)
        super().update_step(gradient, variable, lr)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "warmup_steps": self.warmup_steps}
