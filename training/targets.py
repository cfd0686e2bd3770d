"""Training examples from samples: augmentation (random scale, crop, flip, colour) applied
to image and head points together, then the density target at the network's output stride.

Targets are built after augmentation from the moved points, so a crop's target sums to the
heads inside the crop and kernels never get stretched by resizing. A crop's kernels follow
``training.kernels`` (the rule the resident path shares): an adaptive kernel's width comes
from the head's neighbours in the whole image, scaled with the crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import (
    adaptive_density,
    centered_density,
    density_map,
    downsample,
    fixed_density,
)
from crowdcount.model.types import Sample
from crowdcount.training.kernels import ADAPTIVE_LIMITS, LONE_HEAD_FACTOR, crop_sigmas, head_sigmas
from crowdcount.training.readers.base import Kernel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augment:
    """``scale`` is the range of random rescaling; ``None`` disables all augmentation.

    ``serve_side`` widens the range downwards, per image, until the image's longer side can
    shrink to that many pixels: streams are served at a 640 px long side by default while
    uploads run at their own size, so a 1024 px street photo must be learnt at both scales.
    A scaled image smaller than the crop is padded with its mean colour (never stretched)."""

    scale: tuple[float, float] = (0.8, 1.25)
    serve_side: int | None = 512
    flip: bool = True
    colour: float = 0.2  # max relative brightness/contrast change
    grey: float = 0.1  # probability of a greyscale example
    tries: int = 8  # crops drawn before accepting one with more heads than ``max_points``


def density_target(
    points: NDArray[np.float32], shape: tuple[int, int], kernel: Kernel, stride: int
) -> NDArray[np.float32]:
    """Kernel map at the output stride (sum = head count in the crop) of an image resized
    as a whole (no crop: neighbours are all there)."""
    if kernel.mode == "adaptive":
        return adaptive_density(points, shape, stride, default=kernel.sigma * LONE_HEAD_FACTOR,
                                limits=ADAPTIVE_LIMITS)
    return fixed_density(points, shape, kernel.sigma, stride)


def crop_density(
    sample: Sample, kept: NDArray[np.intp], points: NDArray[np.float32], scale: float,
    shape: tuple[int, int], kernel: Kernel, stride: int,
) -> NDArray[np.float32]:
    """The target of an augmented crop: heads ``kept`` of ``sample`` (now at ``points`` in
    the crop, taken at ``scale``) with the kernels of ``training.kernels``."""
    assert sample.points is not None
    sigmas, scales = head_sigmas(sample.points, kernel)
    return density_map(points, shape, crop_sigmas(sigmas[kept], scales, scale), stride)


def point_target(points: NDArray[np.float32], stride: int, max_points: int) -> NDArray[np.float32]:
    """(max_points, 3): head x, y in output cells and a mask, zero-padded to one fixed shape
    (JAX compiles once per shape). Heads beyond ``max_points`` are dropped with a warning:
    raise ``--max-points`` if that happens often."""
    out = np.zeros((max_points, 3), np.float32)
    n = len(points)
    if n > max_points:
        log.warning("crop has %d heads, more than max_points=%d: extra heads dropped",
                    n, max_points)
        n = max_points
    out[:n, :2] = points[:n] / stride
    out[:n, 2] = 1.0
    return out


def scale_range(augment: Augment, image_shape: tuple[int, ...]) -> tuple[float, float]:
    """Random-scale range for one image (see :class:`Augment`)."""
    lo, hi = augment.scale
    if augment.serve_side:
        lo = min(lo, augment.serve_side / max(image_shape[:2]))
    return lo, max(lo, hi)


def augment_crop(
    sample: Sample,
    crop: tuple[int, int],
    rng: np.random.Generator,
    augment: Augment,
    max_points: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.intp], float]:
    """A random scaled, cropped, flipped, recoloured crop; the head points inside it, which
    of the sample's heads they are, and the scale it was taken at. With ``max_points``,
    crops holding more heads are redrawn (up to ``augment.tries`` times, each at a larger
    scale, where fewer heads fit in the crop)."""
    assert sample.points is not None
    cw = crop[1]
    lo, hi = scale_range(augment, sample.image.shape)
    for attempt in range(max(1, augment.tries)):
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        image, pts, kept = _scaled_crop(sample, crop, s, rng)
        if max_points is None or len(pts) <= max_points:
            break
        lo = hi = min(hi * 1.25 ** (attempt + 1), 4.0)
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
    return np.clip(out, 0, 255).astype(np.float32), pts.astype(np.float32), kept, s


def _scaled_crop(
    sample: Sample, crop: tuple[int, int], s: float, rng: np.random.Generator
) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.intp]]:
    ch, cw = crop
    image = sample.image
    h, w = max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))
    sy, sx = h / image.shape[0], w / image.shape[1]
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    assert sample.points is not None
    pts = sample.points * np.array([sx, sy], np.float32)
    if h < ch or w < cw:  # pad with the mean colour at a random place, never stretch
        ph, pw = max(ch, h), max(cw, w)
        oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
        canvas = np.empty((ph, pw, 3), np.uint8)
        canvas[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        canvas[oy : oy + h, ox : ox + w] = image
        image, h, w = canvas, ph, pw
        pts = pts + np.array([ox, oy], np.float32)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = image[y0 : y0 + ch, x0 : x0 + cw]
    pts = pts - np.array([x0, y0], np.float32)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < cw) & (pts[:, 1] >= 0) & (pts[:, 1] < ch)
    return image, pts[inside], np.flatnonzero(inside)


def make_example(
    sample: Sample,
    crop: tuple[int, int],
    kernel: Kernel,
    stride: int,
    rng: np.random.Generator | None = None,
    augment: Augment | None = None,
    max_points: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(image float32 (h, w, 3) 0..255, target) of size ``crop``. The target is a density
    map (h/s, w/s, 1), or with ``max_points`` the padded head points (max_points, 3) in
    output cells that :class:`training.losses.BayesianLoss` takes.

    Without ``rng``/``augment`` the whole image is resized to ``crop`` (evaluation, and the
    seed's recipe). Count-only samples always take that path with the seed's centred target
    (and cannot give point targets).
    """
    ch, cw = crop
    image = sample.image
    if sample.points is None or rng is None or augment is None:
        if sample.points is None and max_points is not None:
            raise ValueError(f"{sample.name}: count-only samples have no points for a point loss")
        sy, sx = ch / image.shape[0], cw / image.shape[1]
        image = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
        if sample.points is None:
            target = downsample(centered_density(sample.count, (ch, cw)), stride)[..., None]
        else:
            pts = sample.points * np.array([sx, sy], np.float32)
            if max_points is not None:
                return image.astype(np.float32), point_target(pts, stride, max_points)
            target = density_target(pts, (ch, cw), kernel, stride)[..., None]
        return image.astype(np.float32), target
    out, pts, kept, scale = augment_crop(sample, crop, rng, augment, max_points)
    if max_points is not None:
        return out, point_target(pts, stride, max_points)
    return out, crop_density(sample, kept, pts, scale, (ch, cw), kernel, stride)[..., None]
