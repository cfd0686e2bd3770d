"""The seed's Kaggle arrays (fmena14/crowd-counting): ``images.npy`` (N, H, W, 3) uint8 and
``labels.npy`` (N,) counts. Count-only: no head points, so targets are the seed's centred
Gaussians. Memory-mapped: a 2,000-frame array is never read whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crowdcount.model.types import Sample
from crowdcount.training.readers.base import DatasetError, Kernel


class KaggleReader:
    name = "kaggle"
    kernel = Kernel("fixed", 4.0)

    def __init__(self, root: Path) -> None:
        root = Path(root)
        self._images = self._load(root / "images.npy")
        self._labels = self._load(root / "labels.npy").reshape(-1)
        if self._images.ndim != 4 or self._images.shape[-1] != 3:
            raise DatasetError(
                f"{root / 'images.npy'}: expected shape (N, H, W, 3), got {self._images.shape}"
            )
        if len(self._images) != len(self._labels):
            raise DatasetError(
                f"{root}: images.npy has {len(self._images)} items but labels.npy "
                f"has {len(self._labels)}"
            )

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DatasetError(f"{path}: file missing") from None
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Sample:
        image = np.asarray(self._images[index])
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        count = float(self._labels[index])
        if not np.isfinite(count) or count < 0:
            raise DatasetError(f"labels.npy (item {index}): bad count {count}")
        return Sample(image, count, None, f"{index}")
