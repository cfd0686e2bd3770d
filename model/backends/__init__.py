"""Inference backends, chosen by name. Each one turns a (N, h, w, 3) float32 batch of RGB
0..255 into (N, h/s, w/s) density maps; nothing else differs between them.

Which backend runs an ``.onnx`` model when nobody names one is decided here, in
``default_backend``, and nowhere else: ``serve``, ``count``, uploads and health all ask it.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError

log = logging.getLogger(__name__)


class Backend(Protocol):
    """A loaded network. ``fixed_size`` is the (h, w) the network only accepts (TFLite
    exports), ``None`` when any multiple of 32 works; ``fixed_batch`` likewise.
    ``max_batch`` is how many frames serving hands it per call unless configured otherwise:
    1 for ONNX Runtime and OpenVINO, whose time per frame did not drop with larger batches
    on a 2-core machine (it rose by 10-20 %, see README "Speed")."""

    name: str
    fixed_size: tuple[int, int] | None
    fixed_batch: int | None
    max_batch: int

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...


NAMES = ("openvino", "onnx", "tflite", "keras")


@functools.cache
def default_backend() -> str:
    """The fastest backend installed here for ``.onnx`` models: ``"openvino"`` where the
    package imports and its CPU plugin supports this processor (it ran the bundled model in
    about half of ONNX Runtime's time, see README "Speed"), else ``"onnx"``.

    Decided once per process; the fallback is logged once, as one line, so an operator who
    expected OpenVINO learns why it is not used. It is a warning on x86, where the default
    install includes OpenVINO (so its absence means a broken or trimmed install), and
    information elsewhere, where ONNX Runtime is the expected choice.
    """
    try:
        from crowdcount.model.backends.openvino import cpu_supported
    except ImportError as exc:
        reason = f"openvino not importable ({type(exc).__name__}: {exc})"
    else:
        if cpu_supported():
            return "openvino"
        reason = "openvino does not support this CPU"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    log.log(logging.WARNING if x86 else logging.INFO,
            "event=backend_fallback backend=onnx reason=%r", reason)
    return "onnx"


def backend_for(path: str | Path, name: str | None = None) -> str:
    """The backend that will open ``path``: ``name`` if given, else the one its suffix
    implies (``.onnx``: ``default_backend()``)."""
    if name is not None:
        if name not in NAMES:
            raise UserError(f"unknown backend {name!r}; choose {', '.join(NAMES)}")
        return name
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return default_backend()
    by_suffix = {".tflite": "tflite", ".keras": "keras"}
    if suffix not in by_suffix:
        raise UserError(f"cannot tell the backend of {path}: use .onnx, .tflite or .keras")
    return by_suffix[suffix]


def load_backend(path: str | Path, name: str | None = None, threads: int | None = None) -> Backend:
    """Open ``path`` with the named backend (or the one its suffix implies)."""
    path = Path(path)
    name = backend_for(path, name)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if name == "openvino":
        try:
            from crowdcount.model.backends.openvino import OpenVinoBackend
        except ImportError:
            raise UserError(
                "the openvino backend needs the openvino package: pip install openvino"
            ) from None

        return OpenVinoBackend(path, threads=threads)
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
    from crowdcount.model.backends.keras import KerasBackend

    return KerasBackend(path)
