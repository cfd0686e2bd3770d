"""Counting uploaded images, off the event loop, on a runtime of their own.

Why a separate runtime and one dedicated thread: a ``Runtime`` is not thread-safe and the
pipeline's belongs to its inference thread, so uploads get their own instance, opened
lazily on the first upload (serving streams only never pays for it) and used by exactly
one thread, which also serialises uploads without a lock. Routing uploads through the
pipeline was rejected: its batcher keeps only the newest frame per stream and would drop
concurrent uploads by design.

Decoding (with the format and decompression-bomb checks of ``decode_image``, from the
header, before anything is decoded), inference, the overlay (drawn at the network's input
size) and PNG encoding all run on that thread. ``max_pending`` bounds how many uploads may wait
for it, so a burst from many clients is refused (HTTP 503) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from crowdcount.model.runtime import Runtime
from crowdcount.streamer.config import ModelConfig

#: Uploads are shrunk so their longer side is at most this before inference. Why 1280: the
#: network's activations grow with its input, and the server must stay small whatever a
#: client sends (issue 17: under 300 MB over idle for any upload). Measured with the
#: bundled model on OpenVINO (benchmarks/bench_hostile.py): a 25-megapixel PNG peaked at
#: 311 MB over idle at 2048 and 143 MB at 1280. The bundled model counts best at 768 px
#: anyway (its card's serving size), so 1280 costs it nothing.
UPLOAD_MAX_SIDE = 1280
#: Compiled input shapes the upload runtime keeps (OpenVINO; see ``from_config``): every
#: picture size is a new shape, and 16 kept shapes at upload sizes were gigabytes.
UPLOAD_COMPILED_SHAPES = 1
#: Uploads above this many pixels are refused from the header, before decoding. Why lower
#: than the CLI's ``imageio.MAX_PIXELS``: OpenCV's PNG decoder holds two copies while
#: decoding (measured: +229 MB for a 40-megapixel PNG, +115 MB for JPEG or WebP). 25
#: megapixels take a 6000x4000 photo.
UPLOAD_MAX_PIXELS = 25_000_000


class UploadBusy(RuntimeError):
    """Too many uploads waiting (HTTP 503)."""


class ModelUnavailable(RuntimeError):
    """The upload runtime cannot be opened (HTTP 503); the message says why."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    count: float
    width: int
    height: int
    density_shape: tuple[int, int]
    density_max: float
    overlay_png: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "width": self.width,
            "height": self.height,
            "density": {"shape": list(self.density_shape), "max": self.density_max},
        }
        if self.overlay_png is not None:
            out["overlay_png"] = base64.b64encode(self.overlay_png).decode("ascii")
        return out


class UploadCounter:
    """Counts encoded images; ``count`` raises ``ImageError`` (bad image), ``UploadBusy``
    or ``ModelUnavailable``."""

    def __init__(
        self,
        open_runtime: Callable[[], Runtime],
        *,
        max_pixels: int = UPLOAD_MAX_PIXELS,
        max_pending: int = 8,
    ) -> None:
        self._open_runtime = open_runtime
        self.max_pixels = max_pixels
        self.max_pending = max_pending
        self._runtime: Runtime | None = None
        self._open_error: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self.counted = 0

    @classmethod
    def from_config(cls, model: ModelConfig) -> UploadCounter:
        def open_runtime() -> Runtime:
            runtime = Runtime.open(model.path, model.backend, threads=model.threads,
                                   max_side=UPLOAD_MAX_SIDE)
            if hasattr(runtime.backend, "max_shapes"):  # OpenVINO: one compiled network
                # per input shape, each with its activation buffers; every picture size
                # is a new shape, so an upload keeps only the last (bounded memory).
                runtime.backend.max_shapes = UPLOAD_COMPILED_SHAPES
            return runtime

        return cls(open_runtime)

    async def count(self, data: bytes, name: str, *, overlay: bool) -> UploadResult:
        if self._pending >= self.max_pending:
            raise UploadBusy(f"{self._pending} uploads already waiting; retry shortly")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="upload-count")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._count, data, name, overlay)
        finally:
            self._pending -= 1

    def _runtime_here(self) -> Runtime:
        if self._runtime is None:
            if self._open_error is not None:
                raise ModelUnavailable(self._open_error)
            try:
                self._runtime = self._open_runtime()
            except (OSError, ValueError, RuntimeError) as exc:
                self._open_error = f"upload model unavailable: {exc}"
                raise ModelUnavailable(self._open_error) from None
        return self._runtime

    def _count(self, data: bytes, name: str, overlay: bool) -> UploadResult:
        import cv2

        from crowdcount.model.imageio import decode_image
        from crowdcount.model.render import counted_overlay

        image = decode_image(data, name, self.max_pixels)  # before the model: cheap refusal
        runtime = self._runtime_here()
        height, width = image.shape[:2]
        # Shrunk to the network's input size here, exactly as the runtime would (INTER_AREA),
        # and the full-size picture dropped: the overlay is drawn on the small one, and a
        # large upload's float32 intermediates never exist at full size.
        h, w = runtime.size_for(image)
        if h * w < height * width:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        (density,) = runtime.predict([image])
        count = float(density.sum())
        png: bytes | None = None
        if overlay:
            picture = counted_overlay(image, density)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError("PNG encoding of the overlay failed")
            png = buf.tobytes()
        self.counted += 1
        return UploadResult(
            count=count,
            width=int(width),
            height=int(height),
            density_shape=(int(density.shape[0]), int(density.shape[1])),
            density_max=float(density.max()) if density.size else 0.0,
            overlay_png=png,
        )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
