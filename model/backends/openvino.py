"""OpenVINO: the fastest runtime for the bundled ``.onnx`` on x86 CPUs (the serving default
where it is installed, see ``default_backend``).

Measured on a 2-core AVX-512 machine (README, "Speed"): a 640x480 frame takes about half of
ONNX Runtime's time. OpenVINO compiles a network for one input shape, so compiled models are
kept per (batch, h, w): a stream's first frame at a new size pays the compile once (0.1-0.2 s
for the bundled model), every later frame reuses it. The LATENCY hint (every thread on each
request) matched THROUGHPUT's best on 2 cores and was twice as fast for a single request,
which is what the one inference thread sends. Its threads are not pinned to cores: they
share the CPU with decoder and encoder threads, and unpinned inference ran ~12 % more frames
per CPU-second beside eight paced decoders (three interleaved pairs of runs). Inference
releases the GIL.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import openvino as ov
from numpy.typing import NDArray

HINT = "LATENCY"
# Compiled shapes kept at once. Streams use one or two shapes each, but uploads and
# `crowdcount count` bring a new one per picture size; the least recently used shape is
# released beyond this, so memory stays bounded (each holds its activation buffers).
MAX_SHAPES = 16


def cpu_supported() -> bool:
    """Whether OpenVINO's CPU plugin loads on this machine (it needs SSE4.2 on x86, and
    fails to register on CPUs it does not support)."""
    try:
        return "CPU" in ov.Core().available_devices
    except RuntimeError:
        return False


class OpenVinoBackend:
    name = "openvino"
    fixed_size: tuple[int, int] | None = None
    fixed_batch: int | None = None
    max_batch = 1

    def __init__(self, path: Path, threads: int | None = None, hint: str = HINT) -> None:
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        if len(self._model.inputs) != 1:
            raise ValueError(f"{path}: expected one input, got {len(self._model.inputs)}")
        shape = self._model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() == 4:
            dims = [d.get_length() if d.is_static else None for d in shape]
            self.fixed_batch = dims[0]
            if dims[1] is not None and dims[2] is not None:
                self.fixed_size = (dims[1], dims[2])
        self._config: dict[str, str | int | bool] = {
            "PERFORMANCE_HINT": hint, "ENABLE_CPU_PINNING": False,
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._requests: OrderedDict[tuple[int, int, int], ov.InferRequest] = OrderedDict()
        #: compiled shapes kept (uploads, a new shape per picture size, keep fewer)
        self.max_shapes = MAX_SHAPES

    def _request(self, shape: tuple[int, int, int]) -> ov.InferRequest:
        """The infer request of the model compiled for (batch, h, w), compiling it once."""
        request = self._requests.get(shape)
        if request is not None:
            self._requests.move_to_end(shape)
            return request
        model = self._model.clone()
        model.reshape({model.inputs[0]: ov.PartialShape([*shape, 3])})
        compiled = self._core.compile_model(model, "CPU", self._config)
        request = self._requests[shape] = compiled.create_infer_request()
        while len(self._requests) > self.max_shapes:
            self._requests.popitem(last=False)
        return request

    @property
    def compiled_shapes(self) -> list[tuple[int, int, int]]:
        """(batch, h, w) of the compiled shapes held now, least recently used first."""
        return list(self._requests)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        n, h, w = batch.shape[:3]
        request = self._request((n, h, w))
        # share_inputs: OpenVINO reads the caller's contiguous array instead of copying it;
        # share_outputs=False hands back an array of our own, since the request's output
        # buffer is overwritten by the next call.
        request.infer(np.ascontiguousarray(batch, np.float32), share_inputs=True)
        out = request.get_output_tensor(0).data
        return np.array(out[..., 0], np.float32)
