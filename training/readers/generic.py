"""The generic format, for training on your own cameras.

A folder with images and ONE annotation file:

``annotations.json``::

    {"kernel": {"mode": "fixed", "sigma": 4.0},          # optional
     "images": [{"file": "cam1/0001.jpg", "points": [[x, y], ...]},
                {"file": "cam1/0002.jpg", "count": 17}]}  # count-only is allowed

or ``annotations.csv`` with a header ``file,x,y``: one row per head, and a row with empty x
and y for an image without people. Points are pixel coordinates in the image as stored.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crowdcount.model.types import Sample
from crowdcount.training.readers.base import DatasetError, Kernel, check_points, load_image


class GenericReader:
    name = "generic"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.kernel = Kernel("fixed", 4.0)
        json_path, csv_path = self.root / "annotations.json", self.root / "annotations.csv"
        if json_path.is_file():
            self._items = self._read_json(json_path)
        elif csv_path.is_file():
            self._items = self._read_csv(csv_path)
        else:
            raise DatasetError(f"{self.root}: no annotations.json or annotations.csv")

    def _read_json(self, path: Path) -> list[tuple[str, np.ndarray | None, float]]:
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise DatasetError(f"{path}: expected an object with an 'images' list")
        if isinstance(doc.get("kernel"), dict):
            try:
                self.kernel = Kernel(**doc["kernel"])
            except TypeError as exc:
                raise DatasetError(f"{path}: bad 'kernel' ({exc})") from None
        items: list[tuple[str, np.ndarray | None, float]] = []
        for i, entry in enumerate(doc["images"]):
            where = f"{path} (item {i})"
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise DatasetError(f"{where}: each image needs a 'file' string")
            if "points" in entry:
                pts = check_points(entry["points"], where)
                items.append((entry["file"], pts, float(len(pts))))
            elif isinstance(entry.get("count"), int | float) and entry["count"] >= 0:
                items.append((entry["file"], None, float(entry["count"])))
            else:
                raise DatasetError(f"{where}: needs 'points' or a non-negative 'count'")
        return items

    def _read_csv(self, path: Path) -> list[tuple[str, np.ndarray | None, float]]:
        points: dict[str, list[tuple[float, float]]] = {}
        try:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or not {"file", "x", "y"} <= set(reader.fieldnames):
                    raise DatasetError(f"{path}: header must be file,x,y")
                for line, row in enumerate(reader, start=2):
                    name = (row.get("file") or "").strip()
                    if not name:
                        raise DatasetError(f"{path} (line {line}): empty file name")
                    heads = points.setdefault(name, [])
                    x, y = (row.get("x") or "").strip(), (row.get("y") or "").strip()
                    if x or y:
                        try:
                            heads.append((float(x), float(y)))
                        except ValueError:
                            raise DatasetError(
                                f"{path} (line {line}): x and y must be numbers"
                            ) from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{path}: unreadable CSV ({exc})") from None
        return [
            (name, check_points(p, f"{path} ({name})"), float(len(p)))
            for name, p in points.items()
        ]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        name, points, count = self._items[index]
        return Sample(load_image(self.root / name, index), count, points, name)


def write_generic(
    root: Path,
    samples: Iterable[Sample],
    kernel: Kernel | None = None,
    scale: float = 1.0,
    quality: int = 92,
) -> Path:
    """Write samples as a generic dataset (JPEG images + annotations.json), optionally
    rescaled: used to pack data for a training machine and by the tests."""
    root.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        image = sample.image
        if scale != 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        name = f"{i:06d}.jpg"
        ok, data = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            raise DatasetError(f"could not encode item {i}")
        (root / name).write_bytes(data.tobytes())
        entry: dict[str, Any] = {"file": name, "source": sample.name}
        if sample.points is not None:
            entry["points"] = np.round(sample.points * scale, 2).tolist()
        else:
            entry["count"] = sample.count
        entries.append(entry)
    doc: dict[str, Any] = {"images": entries}
    if kernel is not None:
        doc["kernel"] = {"mode": kernel.mode, "sigma": kernel.sigma}
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path
