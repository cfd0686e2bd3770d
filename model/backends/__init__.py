"""Inference backends, chosen by name. Each one turns a (N, h, w, 3) float32 batch of RGB
0..255 into (N, h/s, w/s) density maps; nothing else differs between them."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError


class Backend(Protocol):
    """A loaded network. ``fixed_size`` is the (h, w) the network only accepts (TFLite
    exports), ``None`` when any multiple of 32 works; ``fixed_batch`` likewise."""

    name: str
    fixed_size: tuple[int, int] | None
    fixed_batch: int | None

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...


SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "keras": ".keras"}


def load_backend(path: str | Path, name: str | None = None, threads: int | None = None) -> Backend:
    """Open ``path`` with the named backend (or the one its suffix implies)."""
    path = Path(path)
    if name is None:
        by_suffix = {v: k for k, v in SUFFIXES.items()}
        if path.suffix not in by_suffix:
            raise UserError(f"cannot tell the backend of {path}: use .onnx, .tflite or .keras")
        name = by_suffix[path.suffix]
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if name == "onnx":
        from crowdcount.model.backends.onnx import OnnxBackend

        return OnnxBackend(path, threads=threads)
    if name == "tflite":
        try:
            from crowdcount.model.backends.tflite import TFLiteBackend
        except ImportError:
            raise UserError(
                "the tflite backend needs ai-edge-litert: pip install 'crowdcount[edge]'"
            ) from None

        return TFLiteBackend(path, threads=threads)
    if name == "keras":
        from crowdcount.model.backends.keras import KerasBackend

        return KerasBackend(path)
    raise UserError(f"unknown backend {name!r}; choose onnx, tflite or keras")
