"""One inference runtime over interchangeable backends.

Callers hand in RGB frames of any size; the runtime resizes them to the network's input size
(the backend's fixed size, an explicit one, or the frame's own snapped to multiples of 32),
runs one batched call per distinct size and returns density maps whose sums are counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.backends import Backend, load_backend
from crowdcount.model.bundled import default_model, is_bundled, serving_max_side
from crowdcount.model.preprocess import input_size, prepare_batch


class Runtime:
    """Not thread-safe: one runtime belongs to one inference thread."""

    def __init__(self, backend: Backend, max_side: int | None = None) -> None:
        self.backend = backend
        self.max_side = max_side

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        backend: str | None = None,
        threads: int | None = None,
        max_side: int | None = None,
    ) -> Runtime:
        """Load ``path`` (default: the bundled ONNX model) with ``backend`` (default: the one
        ``model.backends.backend_for`` picks, OpenVINO where it runs, for ``.onnx``). Without a
        ``max_side`` the bundled model runs at its card's serving size (see
        :func:`model.bundled.serving_max_side`); frames already smaller are not enlarged."""
        path = Path(path) if path is not None else default_model(backend)
        if max_side is None and is_bundled(path):
            max_side = serving_max_side()
        return cls(load_backend(path, backend, threads=threads), max_side=max_side)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def max_batch(self) -> int:
        """Frames per backend call that serving should send (the backend's preference)."""
        return self.backend.fixed_batch or self.backend.max_batch

    def size_for(self, image: NDArray[np.uint8], max_side: int | None = None) -> tuple[int, int]:
        """The (h, w) this image will be run at."""
        if self.backend.fixed_size is not None:
            return self.backend.fixed_size
        return input_size(image.shape[1], image.shape[0], max_side or self.max_side)

    def predict(
        self, images: Sequence[NDArray[np.uint8]], max_side: int | None = None
    ) -> list[NDArray[np.float32]]:
        """Density maps for ``images``, batched by input size, in the order given."""
        out: list[NDArray[np.float32] | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.size_for(image, max_side), []).append(i)
        step = self.backend.fixed_batch or len(images) or 1
        for size, members in groups.items():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                maps = self.backend.predict(prepare_batch([images[i] for i in chunk], size))
                for i, density in zip(chunk, maps, strict=True):
                    out[i] = density
        return [m for m in out if m is not None]

    def count(self, image: NDArray[np.uint8]) -> float:
        return float(self.predict([image])[0].sum())
