"""The Mall dataset (Chen et al., BMVC 2012): ``frames/seq_%06d.jpg`` and ``mall_gt.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from crowdcount.model.types import Sample
from crowdcount.training.readers.base import DatasetError, Kernel, check_points, load_image


class MallReader:
    name = "mall"
    #: Heads are 10-20 px at 640x480; one fixed kernel fits the single camera.
    kernel = Kernel("fixed", 4.0)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        gt_path = self.root / "mall_gt.mat"
        if not gt_path.is_file():
            raise DatasetError(f"{gt_path}: ground truth file missing")
        try:
            gt = scipy.io.loadmat(gt_path)
            frames = gt["frame"][0]
        except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
            raise DatasetError(f"{gt_path}: not a Mall ground truth file ({exc})") from None
        self._points = []
        for i, item in enumerate(frames):
            try:
                loc = item["loc"][0, 0]
            except (ValueError, KeyError, IndexError) as exc:
                raise DatasetError(f"{gt_path} (item {i}): no 'loc' head points ({exc})") from None
            self._points.append(check_points(loc, f"{gt_path} (item {i})"))
        counts = gt.get("count")
        if counts is not None and len(counts) == len(self._points):
            bad = np.flatnonzero(counts.ravel() != [len(p) for p in self._points])
            if bad.size:
                raise DatasetError(
                    f"{gt_path} (item {bad[0]}): count {int(counts.ravel()[bad[0]])} "
                    f"but {len(self._points[bad[0]])} head points"
                )

    def __len__(self) -> int:
        return len(self._points)

    def __getitem__(self, index: int) -> Sample:
        path = self.root / "frames" / f"seq_{index + 1:06d}.jpg"
        points = self._points[index]
        return Sample(load_image(path, index), float(len(points)), points, path.name)
