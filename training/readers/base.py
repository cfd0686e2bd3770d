"""What every reader shares: the reader protocol, the kernel it recommends for its density
targets, lazy image loading, and the error that names the bad file and index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError
from crowdcount.model.types import Sample


class DatasetError(UserError):
    """A dataset file is missing, corrupt or inconsistent. The message names the file and,
    where there is one, the item's index, so a user can find and fix it."""


@dataclass(frozen=True)
class Kernel:
    """How head points become a density target. Fixed kernels suit one camera with little
    perspective (Mall); geometry-adaptive ones suit varied street scenes (ShanghaiTech)."""

    mode: str = "fixed"  # "fixed" | "adaptive"
    sigma: float = 4.0


class Reader(Protocol):
    """Random access to samples, loading images only when an item is asked for."""

    name: str
    kernel: Kernel

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class Subset:
    """Some items of a reader, by 0-based index."""

    def __init__(self, reader: Reader, indices: list[int]) -> None:
        self.reader, self.indices = reader, indices
        self.name = reader.name
        self.kernel = reader.kernel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.reader[self.indices[index]]


def load_image(path: Path, index: int | None = None) -> NDArray[np.uint8]:
    """RGB uint8 image, or DatasetError naming the file."""
    where = f"{path}" + (f" (item {index})" if index is not None else "")
    if not path.is_file():
        raise DatasetError(f"{where}: image file missing")
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DatasetError(f"{where}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_points(points: object, where: str) -> NDArray[np.float32]:
    """Head points as an (N, 2) float32 array of finite numbers."""
    try:
        arr = np.asarray(points, dtype=np.float32)
        arr = arr.reshape(-1, 2) if arr.size else np.zeros((0, 2), np.float32)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: head points are not an N x 2 array of numbers") from None
    if not np.isfinite(arr).all():
        raise DatasetError(f"{where}: head points contain NaN or infinity")
    return arr
