"""The one inference thread.

Runtimes are not thread-safe and a CPU has no spare cores to share between two of them, so
exactly one thread owns the runtime. OpenVINO and ONNX Runtime release the GIL, so the
event loop stays responsive while it runs. It also converts the frames it takes to RGB (see
``Frame.pixels``). Results go back to the loop in one ``call_soon_threadsafe`` per batch,
and the thread takes no new batch while ``max_in_flight`` batches are still waiting for the
loop: a stalled loop then leaves frames pending in the batcher (where newer ones replace
them) instead of piling results up in the loop's callback queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Frame, Result
from crowdcount.streamer.batcher import Batcher

log = logging.getLogger(__name__)

ResultsCallback = Callable[[list[Result]], None]
ErrorCallback = Callable[[list[Frame], BaseException], None]


class RollingStats:
    """Last value and percentiles over a recent window, so numbers describe the present
    rather than the whole run (and memory stays bounded). Thread-safe."""

    def __init__(self, window: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0
        self.last: float | None = None

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)
            self.count += 1
            self.last = value

    def percentile(self, q: float) -> float | None:
        """``q`` in 0..100 over the window; ``None`` before the first value."""
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else None

    @property
    def p50(self) -> float | None:
        return self.percentile(50)

    @property
    def p95(self) -> float | None:
        return self.percentile(95)

    def reset(self) -> None:
        with self._lock:
            self._values.clear()
            self.count = 0
            self.last = None


class InferenceWorker:
    """Takes batches from ``batcher``, runs ``runtime``, posts results to ``loop``.

    ``on_results`` and ``on_error`` run on the event loop thread. Per-stream input
    resolution (``set_max_side``) is honoured by running each resolution as its own
    ``predict`` call, since one call takes one ``max_side``.
    """

    def __init__(
        self,
        runtime: Runtime,
        batcher: Batcher,
        loop: asyncio.AbstractEventLoop,
        on_results: ResultsCallback,
        on_error: ErrorCallback | None = None,
        max_batch: int = 8,
        max_in_flight: int = 2,
        name: str = "inference",
        opener: Callable[[Path], Runtime] | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self.runtime = runtime
        self.batcher = batcher
        self.max_batch = max_batch
        self.latency = RollingStats()  # seconds per batch (all its predict calls)
        self.batch_size = RollingStats()
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self._loop = loop
        self._on_results = on_results
        self._on_error = on_error
        self._max_sides: dict[str, int | None] = {}
        # Per-stream models (calibration): path -> its runtime, stream -> the path it uses.
        # Both are written by loader threads under the lock and read by the inference thread.
        self._runtimes: dict[Path, Runtime] = {}
        self._models: dict[str, Path] = {}
        self._model_lock = threading.Lock()
        self.model_errors: dict[str, str] = {}
        self._opener = opener or (lambda path: Runtime.open(path, runtime.backend.name))
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def set_max_side(self, stream_id: str, max_side: int | None) -> None:
        """Input resolution cap for one stream (``None``: the runtime's default)."""
        self._max_sides[stream_id] = max_side

    def set_model(self, stream_id: str, path: Path | None) -> threading.Thread | None:
        """Count ``stream_id`` with its own model (``None``: the shared one again).

        The model is opened on a thread of its own (seconds for OpenVINO) and takes over
        only once it is ready: until then the stream's frames keep going through the model
        it had, so a swap never stalls this stream nor the others. A model that fails to
        open leaves the stream on its old model and its error in ``model_errors``. Returns
        the loader thread (``None`` when nothing needs opening)."""
        if path is None:
            with self._model_lock:
                self._models.pop(stream_id, None)
                self.model_errors.pop(stream_id, None)
                self._drop_unused()
            return None
        path = Path(path)
        with self._model_lock:
            if path in self._runtimes and stream_id in self._max_sides:
                self._models[stream_id] = path
                return None
        thread = threading.Thread(target=self._load, args=(stream_id, path),
                                  name=f"model-{stream_id}", daemon=True)
        thread.start()
        return thread

    def model_of(self, stream_id: str) -> Path | None:
        """The stream's own model now counting it (``None``: the shared one)."""
        return self._models.get(stream_id)

    def _load(self, stream_id: str, path: Path) -> None:
        try:
            runtime = self._opener(path)
        except Exception as exc:
            log.warning("stream %s: model %s not loaded: %s", stream_id, path, exc)
            self.model_errors[stream_id] = f"{type(exc).__name__}: {exc}"
            return
        with self._model_lock:
            if stream_id not in self._max_sides:  # the stream went while its model loaded
                return
            self._runtimes.setdefault(path, runtime)
            self._models[stream_id] = path
            self.model_errors.pop(stream_id, None)
            self._drop_unused()

    def _drop_unused(self) -> None:
        """Close runtimes no stream uses (called with the lock held)."""
        used = set(self._models.values())
        for path in [p for p in self._runtimes if p not in used]:
            del self._runtimes[path]

    def forget(self, stream_id: str) -> None:
        self._max_sides.pop(stream_id, None)
        with self._model_lock:
            self._models.pop(stream_id, None)
            self._drop_unused()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Close the batcher (waking the thread) and wait up to ``timeout`` for it to end;
        ``timeout=0`` only asks, for callers on the event loop that poll ``alive``."""
        self._stopping.set()
        self.batcher.close()
        if self._thread.is_alive() and timeout != 0:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Wait for the loop to catch up before taking frames, so backlog stays in the
            # batcher, where it is bounded to one frame per stream.
            if not self._slots.acquire(timeout=0.1):
                continue
            batch = self.batcher.take(self.max_batch, timeout=0.25)
            if not batch:
                self._slots.release()
                if self.batcher.closed:
                    break
                continue
            results = self._infer(batch)
            if not results:
                self._slots.release()
                continue
            if not self._post(self._deliver, results):
                break

    def _infer(self, batch: list[Frame]) -> list[Result]:
        """One ``predict`` call per (model, resolution) among the batch's frames."""
        groups: dict[tuple[Path | None, int | None], list[Frame]] = {}
        with self._model_lock:
            runtimes = {p: self._runtimes[p] for p in set(self._models.values())}
            models = dict(self._models)
        for frame in batch:
            key = (models.get(frame.stream_id), self._max_sides.get(frame.stream_id))
            groups.setdefault(key, []).append(frame)
        results: list[Result] = []
        started = time.perf_counter()
        for (model, max_side), frames in groups.items():
            runtime = self.runtime if model is None else runtimes[model]
            try:
                maps = runtime.predict([f.image for f in frames], max_side=max_side)
            except Exception as exc:
                # One bad frame (wrong shape, a backend hiccup) must not end the service.
                self.errors += 1
                log.exception("inference failed for %d frame(s)", len(frames))
                if self._on_error is not None:
                    self._post(self._on_error, frames, exc)
                continue
            inferred_at = time.time()
            results.extend(
                Result(frame, density, float(density.sum()), inferred_at)
                for frame, density in zip(frames, maps, strict=True)
            )
        self.latency.add(time.perf_counter() - started)
        self.batch_size.add(len(batch))
        self.batches += 1
        self.frames += len(results)
        return results

    def _deliver(self, results: list[Result]) -> None:
        self._slots.release()
        try:
            self._on_results(results)
        except Exception:
            log.exception("results callback failed")

    def _post(self, callback: Callable[..., None], *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to receive results
            self._stopping.set()
            return False
        return True
