"""ONNX Runtime: the serving default (0.08 s import, no TensorFlow, releases the GIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray


class OnnxBackend:
    name = "onnx"
    max_batch = 1

    def __init__(self, path: Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads otherwise spin, taking ~60% of a core from the decoder and
        # encoder threads that share this machine with the model.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        dims = inp.shape  # e.g. ['unk', 'unk', 'unk', 3] or [1, 480, 640, 3]
        self.fixed_batch = dims[0] if isinstance(dims[0], int) else None
        fixed = all(isinstance(d, int) for d in dims[1:3])
        self.fixed_size = (int(dims[1]), int(dims[2])) if fixed else None

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        (out,) = self._session.run(None, {self._input: batch})
        return np.asarray(out, np.float32)[..., 0]
