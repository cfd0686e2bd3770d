"""The default model shipped in the repository (trained by ``training``, see README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crowdcount.model.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_ONNX = WEIGHTS_DIR / "default.onnx"
DEFAULT_KERAS = WEIGHTS_DIR / "default.keras"
DEFAULT_CARD = WEIGHTS_DIR / "default.json"


def default_model(backend: str | None = None) -> Path:
    """Path of the bundled model for ``backend`` (the ``.onnx`` for serving with ONNX Runtime
    or OpenVINO, and when no backend is named; the ``.keras`` for fine-tuning)."""
    path = {None: DEFAULT_ONNX, "onnx": DEFAULT_ONNX, "openvino": DEFAULT_ONNX,
            "keras": DEFAULT_KERAS}.get(backend)
    if path is None:
        raise UserError(f"no bundled {backend} model; export one with `crowdcount export`")
    if not path.is_file():
        raise FileNotFoundError(f"bundled model missing: {path}")
    return path


def model_card() -> dict[str, Any]:
    """How the bundled model was built and how well it counts."""
    return json.loads(DEFAULT_CARD.read_text()) if DEFAULT_CARD.is_file() else {}


def is_bundled(path: str | Path) -> bool:
    """Whether ``path`` is one of the bundled model files."""
    resolved = Path(path).resolve()
    return resolved in (DEFAULT_ONNX.resolve(), DEFAULT_KERAS.resolve())


def serving_max_side() -> int | None:
    """The longer side the bundled model is run at when the caller sets none (chosen by
    hold-out MAE, see the README's accuracy section): it learnt heads at a certain size in
    pixels, and a 1024 px street photo counted at 768 px matches that size better."""
    value = model_card().get("serving", {}).get("max_side")
    return int(value) if value else None
