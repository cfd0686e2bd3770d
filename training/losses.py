"""Loss and metric for density maps, in backend-neutral ``keras.ops``.

Pixel MSE is computed on densities multiplied by ``scale`` (raw per-pixel densities are
~1e-3 and their squares vanish); the optional count term (L1 on the map's sum) pulls the
total towards the true count, which pixel MSE alone only does indirectly.

Bayesian Loss supervises the map with the head points themselves (see :class:`BayesianLoss`);
``crowdcount train --loss {mse,bayesian}`` picks one.
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


def point_posterior(
    points: Any, shape: tuple[int, int], sigma: float, background: float | None
) -> Any:
    """Posterior ``p(y_i | x_j)`` of each annotated head ``i`` (plus, last, the background)
    for every output cell ``j`` (Ma et al., ICCV 2019), shape (B, P + 1, h * w).

    ``points`` is (B, P, 3): x, y in output cells (a cell's centre is at index + 0.5) and a
    mask (1 = a head, 0 = padding). Each head's likelihood is an isotropic Gaussian of
    ``sigma`` cells with a uniform prior. The background is a virtual point at distance
    ``max(background - d_min, 0)`` from a cell whose nearest head is ``d_min`` away: cells
    far from every head belong to nobody. ``background=None`` leaves the background out
    (its row is then all zeros). The posterior depends on the annotation only, so no
    gradient flows through it."""
    h, w = shape
    ys, xs = ops.meshgrid(
        ops.arange(h, dtype="float32") + 0.5, ops.arange(w, dtype="float32") + 0.5,
        indexing="ij",
    )
    cx, cy = ops.reshape(xs, (1, 1, -1)), ops.reshape(ys, (1, 1, -1))
    px, py, mask = points[..., 0:1], points[..., 1:2], points[..., 2:3]
    d2 = ops.square(px - cx) + ops.square(py - cy)  # (B, P, N)
    valid = mask > 0.5
    big = ops.cast(1e12, d2.dtype)
    d2 = ops.where(valid, d2, big)
    logits = -d2 / (2.0 * sigma * sigma)
    if background is not None:
        d_min = ops.sqrt(ops.min(d2, axis=1, keepdims=True))  # (B, 1, N)
        bg = ops.square(ops.relu(background - d_min))
        logits = ops.concatenate([logits, -bg / (2.0 * sigma * sigma)], axis=1)
    post = ops.softmax(logits, axis=1)
    keep = ops.cast(valid, post.dtype)  # (B, P, 1): padding never owns a cell
    if background is None:
        post = ops.concatenate([post * keep, ops.zeros_like(post[:, :1])], axis=1)
    else:
        post = post * ops.concatenate([keep, ops.ones_like(keep[:, :1])], axis=1)
    return ops.stop_gradient(post)


def point_count_abs_error(y_true: Any, y_pred: Any) -> Any:
    """|predicted count - number of heads| with point targets ((B, P, 3), mask last)."""
    return ops.abs(ops.sum(y_pred, axis=(1, 2, 3)) - ops.sum(y_true[..., 2], axis=1))


@keras.saving.register_keras_serializable(package="crowdcount")
class BayesianLoss(keras.losses.Loss):
    """Bayesian Loss (Ma et al., ICCV 2019): each head's expected count under the posterior,
    ``E[c_i] = sum_j p(y_i | x_j) D(x_j)``, should be 1 and the background's 0; the loss is
    ``sum_i |1 - E[c_i]| + |E[c_0]|`` per image. Supervision comes straight from the points,
    so no kernel width has to be guessed per dataset (fixed kernels are too wide for dense
    crowds, adaptive ones too wide for sparse streets).

    ``y_true`` is (B, P, 3) head points in output cells with a mask (padding to a fixed P
    so every batch has one shape); ``y_pred`` the (B, h, w, 1) density map. ``sigma`` and
    ``background`` are in output cells (the paper's 8 px and 15 % of the crop's shorter
    side, divided by the stride). ``count_weight`` adds ``|sum(D) - n|``."""

    def __init__(
        self, sigma: float = 1.0, background: float | None = 7.2, count_weight: float = 0.0,
        name: str = "bayesian_loss", **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.sigma, self.background, self.count_weight = sigma, background, count_weight

    def call(self, y_true: Any, y_pred: Any) -> Any:
        h, w = int(y_pred.shape[1]), int(y_pred.shape[2])
        post = point_posterior(y_true, (h, w), self.sigma, self.background)
        density = ops.reshape(y_pred, (-1, 1, h * w))
        expected = ops.sum(post * density, axis=2)  # (B, P + 1)
        mask = y_true[..., 2]
        target = ops.concatenate([mask, ops.zeros_like(mask[:, :1])], axis=1)
        weight = ops.concatenate(
            [mask, ops.ones_like(mask[:, :1]) if self.background is not None
             else ops.zeros_like(mask[:, :1])], axis=1,
        )
        loss = ops.sum(weight * ops.abs(target - expected), axis=1)
        if self.background is None:
            # Without a background every cell belongs to some head; an image without heads
            # is still told that its map must be empty.
            empty = ops.cast(ops.sum(mask, axis=1) < 0.5, loss.dtype)
            loss = loss + empty * ops.sum(ops.abs(y_pred), axis=(1, 2, 3))
        if self.count_weight:
            loss = loss + self.count_weight * point_count_abs_error(y_true, y_pred)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sigma": self.sigma, "background": self.background,
                "count_weight": self.count_weight}
