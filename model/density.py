"""Density maps from head annotations, and the reverse: counts from density maps.

All kernels come from ``scipy.ndimage.gaussian_filter``. A Gaussian centred near a border
would lose the part of its mass that falls outside the image; we pre-weight every head by
the inverse of the mass its kernel keeps inside (which, the kernel being symmetric, is the
filtered image of ones at that pixel), so every map sums exactly to the number of heads.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

FloatMap = NDArray[np.float32]

#: Truncation of the Gaussian kernel in standard deviations (SciPy's default is 4).
TRUNCATE = 3.0


def _splat(points: NDArray[np.float64], sigma: float, shape: tuple[int, int]) -> FloatMap:
    """Mass-preserving Gaussians of one sigma at the given (x, y) points; points outside the
    map are kept at the nearest border pixel (an annotation a pixel outside is still a
    person)."""
    h, w = shape
    sigma = round(sigma, 3)  # the kept-mass map and the filter must use the same radius
    rows = np.clip(np.floor(points[:, 1]).astype(np.intp), 0, h - 1)
    cols = np.clip(np.floor(points[:, 0]).astype(np.intp), 0, w - 1)
    kept = _kept_mass(shape, sigma)
    deltas = np.zeros(shape, np.float32)
    np.add.at(deltas, (rows, cols), 1.0 / kept[rows, cols])
    return ndimage.gaussian_filter(deltas, sigma, mode="constant", truncate=TRUNCATE)


@lru_cache(maxsize=64)
def _kept_mass(shape: tuple[int, int], sigma: float) -> FloatMap:
    """Fraction of a kernel centred at each pixel that stays inside the map."""
    ones = np.ones(shape, np.float32)
    return ndimage.gaussian_filter(ones, sigma, mode="constant", truncate=TRUNCATE)


def _work_factor(sigma: float, stride: int) -> int:
    """Largest power of two dividing ``stride`` and at most sigma / 2: wide kernels are
    filtered on a coarser grid (up to 64x fewer pixels) at a sub-pixel-level error."""
    f = 1
    while stride % (f * 2) == 0 and f * 2 <= sigma / 2:
        f *= 2
    return f


def density_map(
    points: NDArray[np.floating],
    shape: tuple[int, int],
    sigmas: float | NDArray[np.floating],
    stride: int = 1,
) -> FloatMap:
    """Density of heads at ``points`` (x, y pixels in an image of ``shape`` (H, W)) with one
    sigma for all or one per head, at 1/``stride`` resolution; sums to the number of heads.

    Heads are grouped by sigma (12 log-spaced bins for per-head sigmas) so that each group
    is one SciPy filter pass."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    h, w = shape
    out = np.zeros((-(-h // stride), -(-w // stride)), np.float32)
    if len(pts) == 0:
        return out
    per_head = np.broadcast_to(np.asarray(sigmas, np.float64), (len(pts),))
    logs = np.log(per_head)
    edges = np.linspace(logs.min(), logs.max() + 1e-9, 13)
    which = np.digitize(logs, edges[1:-1])
    for b in np.unique(which):
        members = which == b
        sigma = float(np.exp(logs[members].mean()))
        f = _work_factor(sigma, stride)
        grid = (-(-h // f), -(-w // f))
        out += downsample(_splat(pts[members] / f, sigma / f, grid), stride // f)
    return out


def fixed_density(
    points: NDArray[np.floating], shape: tuple[int, int], sigma: float = 4.0, stride: int = 1
) -> FloatMap:
    """Density map with one Gaussian of ``sigma`` pixels per head."""
    return density_map(points, shape, sigma, stride)


def adaptive_sigmas(
    points: NDArray[np.floating],
    k: int = 3,
    beta: float = 0.3,
    default: float = 15.0,
    limits: tuple[float, float] = (1.0, 40.0),
) -> NDArray[np.float64]:
    """Geometry-adaptive sigmas (Zhang et al. 2016): ``beta`` times the mean distance to the
    ``k`` nearest other heads, found with a k-d tree. A lone head gets ``default``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return np.full(len(pts), default)
    kk = min(k, len(pts) - 1)
    distances, _ = cKDTree(pts).query(pts, k=kk + 1)
    sigmas = beta * distances[:, 1:].mean(axis=1)
    return np.clip(sigmas, *limits)


def adaptive_density(
    points: NDArray[np.floating],
    shape: tuple[int, int],
    stride: int = 1,
    k: int = 3,
    beta: float = 0.3,
    default: float = 15.0,
    limits: tuple[float, float] = (1.0, 40.0),
) -> FloatMap:
    """Density map with geometry-adaptive kernels (see :func:`adaptive_sigmas`)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    sigmas = adaptive_sigmas(pts, k=k, beta=beta, default=default, limits=limits)
    return density_map(pts, shape, sigmas, stride)


def centered_density(count: float, shape: tuple[int, int], sigma: float | None = None) -> FloatMap:
    """The seed's target for count-only labels: one Gaussian in the middle of the image,
    scaled to sum to ``count``. It cannot localise anybody; it exists so datasets with only
    counts (the seed's Kaggle arrays) can still train the seed preset."""
    h, w = shape
    impulse = np.zeros(shape, np.float64)
    impulse[h // 2, w // 2] = 1.0
    out = ndimage.gaussian_filter(impulse, sigma or min(h, w) / 4.0, mode="constant")
    return (out * (count / out.sum())).astype(np.float32)


def downsample(density: FloatMap, stride: int) -> FloatMap:
    """Sum-pool a density map by ``stride`` so that it still sums to the same count.

    The map is zero-padded up to a multiple of the stride: a partial cell at the border keeps
    whatever mass it holds."""
    if stride == 1:
        return density.astype(np.float32, copy=False)
    h, w = density.shape
    ph, pw = -h % stride, -w % stride
    padded = np.pad(density, ((0, ph), (0, pw))) if ph or pw else density
    hh, ww = padded.shape[0] // stride, padded.shape[1] // stride
    return padded.reshape(hh, stride, ww, stride).sum(axis=(1, 3), dtype=np.float64).astype(
        np.float32
    )
