"""The input pipeline: a ``keras.utils.PyDataset`` so it runs the same on TensorFlow (CPU)
and JAX (GPU). Batches have one fixed shape (JAX compiles once per shape): density maps for
the MSE loss, or head points padded to ``max_points`` with a mask for the point loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from crowdcount.model.types import Sample
from crowdcount.training.readers.base import Kernel, Reader
from crowdcount.training.targets import Augment, make_example


@dataclass
class WeightedReader:
    """A dataset reader with its sampling weight and augmentation (not a video source)."""

    reader: Reader
    weight: float = 1.0
    augment: Augment | None = None
    cache: bool = False
    name: str = ""  # the --data NAME, for per-source options (--distill)


class Cached:
    """Keeps decoded samples in memory: small datasets (Mall is 0.7 GB decoded) are read from
    disk once instead of once per epoch."""

    def __init__(self, reader: Reader) -> None:
        self.reader, self.name, self.kernel = reader, reader.name, reader.kernel
        self._items: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Sample:
        item = self._items.get(index)
        if item is None:
            item = self._items[index] = self.reader[index]
        return item


class DensityDataset(keras.utils.PyDataset):
    """Random augmented crops drawn from several sources: a source's share of the crops is
    its weight times its number of items (``@W`` on the command line), so weights balance
    a 720-frame video against a 270-image photo set."""

    def __init__(
        self,
        sources: Sequence[WeightedReader],
        crop: tuple[int, int],
        stride: int,
        batch_size: int,
        steps: int,
        seed: int = 0,
        max_points: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # workers, use_multiprocessing, max_queue_size
        self.sources = [
            WeightedReader(Cached(s.reader) if s.cache else s.reader, s.weight, s.augment)
            for s in sources
        ]
        self.crop, self.stride, self.batch_size, self.steps = crop, stride, batch_size, steps
        weights = np.array([s.weight * len(s.reader) for s in self.sources], np.float64)
        self.p = weights / weights.sum()
        self.seed, self.epoch, self.max_points = seed, 0, max_points

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys, _ = self.draw(index)
        return xs, ys

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``index`` of this epoch and, per example, the index of its source (for
        per-source targets such as distillation, ``training.distill``)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        xs, ys, which = [], [], []
        for _ in range(self.batch_size):
            k = int(rng.choice(len(self.sources), p=self.p))
            src = self.sources[k]
            sample = src.reader[int(rng.integers(len(src.reader)))]
            kernel: Kernel = src.reader.kernel
            x, y = make_example(sample, self.crop, kernel, self.stride, rng, src.augment,
                                self.max_points)
            xs.append(x)
            ys.append(y)
            which.append(k)
        return np.stack(xs), np.stack(ys), np.array(which)
