"""The one place frames become network input.

Networks normalise pixel values themselves (see ``model.architecture``), so preprocessing
is only geometry: resize to a size both sides of which are multiples of 32, RGB float32.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

MULTIPLE = 32


def snap(value: float, multiple: int = MULTIPLE) -> int:
    """Nearest positive multiple of ``multiple``."""
    return max(multiple, round(value / multiple) * multiple)


def input_size(width: int, height: int, max_side: int | None = None) -> tuple[int, int]:
    """Network input (height, width) for a frame: the frame's own size snapped to multiples of
    32, scaled down first so that the longer side is at most ``max_side``."""
    scale = 1.0
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
    return snap(height * scale), snap(width * scale)


def shrunk(image: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    """``image`` itself when its longer side is at most ``max_side``, else shrunk (by area,
    aspect kept) to that: pictures kept or combined at a bounded size, not network input."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)


def _fit(image: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """The image at ``size`` = (h, w): itself when it already is, else resized."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(
        image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )


def prepare(image: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.float32]:
    """RGB uint8 (H, W, 3) -> float32 (h, w, 3) at ``size`` = (h, w), values still 0..255."""
    return _fit(image, size).astype(np.float32)


def prepare_batch(
    images: list[NDArray[np.uint8]], size: tuple[int, int]
) -> NDArray[np.float32]:
    """One (N, h, w, 3) float32 batch. Each picture is cast straight into its slot: one pass
    over the pixels per frame instead of a float copy and then a stacked copy of it."""
    batch = np.empty((len(images), *size, 3), np.float32)
    for i, image in enumerate(images):
        batch[i] = _fit(image, size)
    return batch
