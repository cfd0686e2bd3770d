"""Loss and metric for density maps, in backend-neutral ``keras.ops``.

Pixel MSE is computed on densities multiplied by ``scale`` (raw per-pixel densities are
~1e-3 and their squares vanish); the optional count term (L1 on the map's sum) pulls the
total towards the true count, which pixel MSE alone only does indirectly.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="crowdcount")
class DensityLoss(keras.losses.Loss):
    def __init__(
        self, scale: float = 100.0, count_weight: float = 0.0, name: str = "density_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.scale, self.count_weight = scale, count_weight

    def call(self, y_true: Any, y_pred: Any) -> Any:
        diff = y_pred - y_true
        loss = ops.mean(ops.square(diff * self.scale), axis=(1, 2, 3))
        if self.count_weight:
            loss = loss + self.count_weight * ops.abs(ops.sum(diff, axis=(1, 2, 3)))
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "count_weight": self.count_weight}


@keras.saving.register_keras_serializable(package="crowdcount")
def count_abs_error(y_true: Any, y_pred: Any) -> Any:
    """Absolute error of the per-image count (the map's sum); its mean is the MAE."""
    return ops.abs(ops.sum(y_pred, axis=(1, 2, 3)) - ops.sum(y_true, axis=(1, 2, 3)))
