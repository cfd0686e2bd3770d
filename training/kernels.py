"""Head kernels of the training targets: one rule for the host pipeline
(``training.targets``) and the resident one (``training.resident``).

Why here and not in each: the two build targets for the same crops, and kept in step by
copied constants they had drifted (the host path found an adaptive kernel's neighbours
among the heads left inside the crop, the resident path in the whole image), so
``--resident`` trained on other targets than the CPU path.

The rule: a head's sigma is found once per image, in its pixels. A fixed kernel has the
reader's sigma whatever the crop's scale (it is a property of the annotation, not of the
scene). A geometry-adaptive kernel (Zhang et al.) is ``beta`` times the mean distance to
the head's ``k`` nearest neighbours in the *whole image*, so a head keeps its true spacing
when the crop cuts its neighbours off; it grows with the crop's scale and is clipped to
``ADAPTIVE_LIMITS`` crop pixels. A lone head under an adaptive kernel (no neighbour at all)
gets ``LONE_HEAD_FACTOR`` times the reader's sigma, unscaled.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import adaptive_sigmas
from crowdcount.training.readers.base import Kernel

__all__ = ["ADAPTIVE_LIMITS", "LONE_HEAD_FACTOR", "crop_sigmas", "head_sigmas"]

#: Adaptive sigmas in crop pixels, as ``model.density.adaptive_density`` clips them.
ADAPTIVE_LIMITS = (1.0, 40.0)
#: A lone head's sigma under an adaptive kernel, in units of the reader's sigma.
LONE_HEAD_FACTOR = 4.0


def head_sigmas(points: NDArray[np.floating], kernel: Kernel) -> tuple[NDArray[np.float32], bool]:
    """Each head's sigma in the image's pixels, and whether it scales with the crop."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    if kernel.mode == "adaptive" and len(pts) >= 2:
        return adaptive_sigmas(pts, limits=(0.0, np.inf)).astype(np.float32), True
    factor = LONE_HEAD_FACTOR if kernel.mode == "adaptive" else 1.0
    return np.full(len(pts), kernel.sigma * factor, np.float32), False


def crop_sigmas(sigmas: NDArray[np.floating], scales: bool, scale: float) -> NDArray[np.float32]:
    """The sigmas of ``head_sigmas`` in the pixels of a crop taken at ``scale``."""
    sig = np.asarray(sigmas, np.float32)
    if not scales:
        return sig
    return np.clip(sig * np.float32(scale), *ADAPTIVE_LIMITS).astype(np.float32)
