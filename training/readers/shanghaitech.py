"""ShanghaiTech Part A/B (Zhang et al., CVPR 2016): ``images/IMG_N.jpg`` with
``ground-truth/GT_IMG_N.mat`` holding ``image_info[0,0]['location'][0,0]`` head points."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io
from numpy.typing import NDArray

from crowdcount.model.types import Sample
from crowdcount.training.readers.base import DatasetError, Kernel, check_points, load_image


def _number(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else 0


class ShanghaiTechReader:
    name = "shanghaitech"
    #: Street scenes with strong perspective: geometry-adaptive kernels.
    kernel = Kernel("adaptive", 4.0)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        images = self.root / "images"
        if not images.is_dir():
            raise DatasetError(f"{images}: folder missing (expected ShanghaiTech layout)")
        self._images = sorted(images.glob("*.jpg"), key=_number)
        if not self._images:
            raise DatasetError(f"{images}: no .jpg images")

    def __len__(self) -> int:
        return len(self._images)

    def _points(self, index: int) -> NDArray[np.float32]:
        image = self._images[index]
        gt = self.root / "ground-truth" / f"GT_{image.stem}.mat"
        where = f"{gt} (item {index})"
        if not gt.is_file():
            raise DatasetError(f"{where}: ground truth file missing")
        try:
            info = scipy.io.loadmat(gt)["image_info"]
            return check_points(info[0, 0]["location"][0, 0], where)
        except DatasetError:
            raise
        except Exception as exc:  # scipy raises many kinds for truncated/odd files
            raise DatasetError(f"{where}: unreadable ground truth ({exc})") from None

    def __getitem__(self, index: int) -> Sample:
        points = self._points(index)
        image = self._images[index]
        return Sample(load_image(image, index), float(len(points)), points, image.name)
