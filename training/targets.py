"""Training examples from samples: augmentation (random scale, crop, flip, colour) applied
to image and head points together, then the density target at the network's output stride.

Targets are built after augmentation from the moved points, so a crop's target sums to the
heads inside the crop and kernels never get stretched by resizing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import adaptive_density, centered_density, downsample, fixed_density
from crowdcount.model.types import Sample
from crowdcount.training.readers.base import Kernel


@dataclass(frozen=True)
class Augment:
    """``scale`` is the range of random rescaling; ``None`` disables all augmentation."""

    scale: tuple[float, float] = (0.8, 1.25)
    flip: bool = True
    colour: float = 0.2  # max relative brightness/contrast change
    grey: float = 0.1  # probability of a greyscale example


def density_target(
    points: NDArray[np.float32], shape: tuple[int, int], kernel: Kernel, stride: int
) -> NDArray[np.float32]:
    """Kernel map at the output stride (sum = head count in the crop)."""
    if kernel.mode == "adaptive":
        return adaptive_density(points, shape, stride, default=kernel.sigma * 4)
    return fixed_density(points, shape, kernel.sigma, stride)


def make_example(
    sample: Sample,
    crop: tuple[int, int],
    kernel: Kernel,
    stride: int,
    rng: np.random.Generator | None = None,
    augment: Augment | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(image float32 (h, w, 3) 0..255, target float32 (h/s, w/s, 1)) of size ``crop``.

    Without ``rng``/``augment`` the whole image is resized to ``crop`` (evaluation, and the
    seed's recipe). Count-only samples always take that path with the seed's centred target.
    """
    ch, cw = crop
    image = sample.image
    if sample.points is None or rng is None or augment is None:
        sy, sx = ch / image.shape[0], cw / image.shape[1]
        image = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
        if sample.points is None:
            target = downsample(centered_density(sample.count, (ch, cw)), stride)
        else:
            pts = sample.points * np.array([sx, sy], np.float32)
            target = density_target(pts, (ch, cw), kernel, stride)
        return image.astype(np.float32), target[..., None]

    s = float(np.exp(rng.uniform(*np.log(augment.scale))))
    h, w = max(ch, round(image.shape[0] * s)), max(cw, round(image.shape[1] * s))
    sy, sx = h / image.shape[0], w / image.shape[1]
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    pts = sample.points * np.array([sx, sy], np.float32)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = image[y0 : y0 + ch, x0 : x0 + cw]
    pts = pts - np.array([x0, y0], np.float32)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < cw) & (pts[:, 1] >= 0) & (pts[:, 1] < ch)
    pts = pts[inside]
    out = image.astype(np.float32)
    if augment.flip and rng.random() < 0.5:
        out = out[:, ::-1]
        pts = np.stack([cw - pts[:, 0], pts[:, 1]], axis=1) if len(pts) else pts
    if augment.colour:
        gain = 1 + rng.uniform(-augment.colour, augment.colour)
        bias = 255 * rng.uniform(-augment.colour, augment.colour) / 2
        out = out * gain + bias
    if augment.grey and rng.random() < augment.grey:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    target = density_target(pts, (ch, cw), kernel, stride)
    return np.clip(out, 0, 255).astype(np.float32), target[..., None]
