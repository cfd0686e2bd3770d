"""TFLite through ``ai-edge-litert`` (the deprecated ``tf.lite.Interpreter`` has the same
API): for edge devices and the int8 models. Exports have a fixed batch of 1 and a fixed
input size (with a dynamic batch the transposed convolutions fall off XNNPACK and run two
orders of magnitude slower; docs/runtime-notes.md), so batches run one image at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from numpy.typing import NDArray


class TFLiteBackend:
    name = "tflite"
    max_batch = 1
    fixed_size: tuple[int, int] | None
    fixed_batch: int | None

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self._interp = Interpreter(model_path=str(path), num_threads=threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in, self._out = inp, out
        self.fixed_batch = int(inp["shape"][0])
        self.fixed_size = (int(inp["shape"][1]), int(inp["shape"][2]))

    def _quantize(self, x: NDArray[np.float32]) -> NDArray[np.generic]:
        dtype = self._in["dtype"]
        if dtype == np.float32:
            return x
        scale, zero = self._in["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, y: NDArray[np.generic]) -> NDArray[np.float32]:
        if self._out["dtype"] == np.float32:
            return y.astype(np.float32)
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        outs = []
        for image in batch:
            self._interp.set_tensor(self._in["index"], self._quantize(image[None]))
            self._interp.invoke()
            outs.append(self._dequantize(self._interp.get_tensor(self._out["index"]))[0, ..., 0])
        return np.stack(outs)
