"""Sources → batcher → inference thread → sinks, for every stream at once.

The pipeline is the only place that knows all four stages, so the API and the CLI deal with
one object: add a source, add a sink, read ``stats()``. Results (and the alerts derived
from them) reach their consumers one way: every registered sink (``sinks/base.py``).
Everything here runs on the event loop except decoding (the sources' threads) and
inference (the worker's thread); the loop only moves frame references and calls sinks,
which must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Frame, Result
from crowdcount.streamer.batcher import Batcher
from crowdcount.streamer.sinks.base import AlertSink, Sink
from crowdcount.streamer.sources.base import Source, SourceEnded
from crowdcount.streamer.status import RateMeter, StreamState
from crowdcount.streamer.worker import InferenceWorker, RollingStats

if TYPE_CHECKING:
    from crowdcount.streamer.alerts import AlertEvent

log = logging.getLogger(__name__)


class Analysis(Protocol):
    """What the pipeline derives from each result before the sinks see it (zone counts,
    threshold alerts: ``streamer.integrations.Integrations``). It is a stage of the frame
    path, not a consumer: it runs once per result so every sink sees the same zones, and
    its alert events are delivered to the sinks like results."""

    def analyse(self, result: Result) -> tuple[Result, Sequence[AlertEvent]]:
        """The result with derived fields filled in, and the alerts it raised or cleared.
        Must not block."""
        ...

    def forget_stream(self, stream: str) -> Sequence[AlertEvent]:
        """A stream left the pipeline: drop its state; the alerts that clears."""
        ...


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A snapshot for the API and benchmarks. Times are milliseconds; percentiles cover a
    recent window (``None`` before the first result). ``latency`` runs from a frame's
    capture to its dispatch to the sinks."""

    batch_sizes: dict[int, int]
    batches: int
    frames: int
    inference_errors: int
    sink_errors: int
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Stream:
    source: Source
    pump: asyncio.Task[None] | None = None
    fps_out: RateMeter = field(default_factory=RateMeter)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


class Pipeline:
    """Owns the batcher and the inference worker; call ``close()`` (or use ``async with``).

    ``max_batch`` unset: the backend's own preference (``Runtime.max_batch``).

    The worker starts with the first stream (or ``start()``), on the running loop, since
    results must be handed to that loop.

    ``analysis``, if set, runs on the loop with each result before any sink (see
    ``Analysis``); if it raises, the error is counted in ``sink_errors`` and the sinks get
    the original result. Then every sink gets the result, and every alert sink the alerts.
    """

    def __init__(
        self,
        runtime: Runtime,
        max_batch: int | None = None,
        max_in_flight: int = 2,
        analysis: Analysis | None = None,
    ) -> None:
        self.runtime = runtime
        self.analysis = analysis
        self.max_batch = max_batch or runtime.max_batch
        self.max_in_flight = max_in_flight
        self.batcher = Batcher()
        self.latency = RollingStats()
        self.sink_errors = 0
        self._worker: InferenceWorker | None = None
        self._streams: dict[str, _Stream] = {}
        self._sinks: list[Sink] = []
        self._alert_sinks: list[AlertSink] = []
        self._sink_failures: dict[int, int] = {}
        self._closed = False

    async def start(self) -> None:
        """Start the inference thread (idempotent)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        if self._worker is None:
            self._worker = InferenceWorker(
                self.runtime,
                self.batcher,
                asyncio.get_running_loop(),
                self._dispatch,
                self._report_error,
                max_batch=self.max_batch,
                max_in_flight=self.max_in_flight,
            )
            self._worker.start()

    @property
    def worker(self) -> InferenceWorker | None:
        return self._worker

    @property
    def streams(self) -> dict[str, Source]:
        """Stream id → source, a copy (safe to iterate while streams come and go)."""
        return {sid: s.source for sid, s in self._streams.items()}

    async def add_stream(
        self, source: Source, fps_limit: float | None = None, max_side: int | None = None,
        model: Path | None = None,
    ) -> None:
        """Start ``source`` and feed it to the model (its own ``model`` when given) at most
        ``fps_limit`` times a second, resized so its longer side is at most ``max_side``
        (``None``: runtime default)."""
        sid = source.stream_id
        if sid in self._streams:
            raise ValueError(f"stream {sid!r} already exists")
        await self.start()
        assert self._worker is not None
        self.batcher.add(sid, fps_limit)
        self._worker.set_max_side(sid, max_side)
        if model is not None:
            self._worker.set_model(sid, model)
        entry = self._streams[sid] = _Stream(source)
        try:
            await source.start()
        except BaseException:
            self._forget(sid)
            raise
        entry.pump = asyncio.create_task(self._pump(entry), name=f"pump-{sid}")

    async def remove_stream(self, stream_id: str) -> None:
        """Stop one stream; its results still in flight are discarded and its active alerts
        are cleared (delivered to the alert sinks). KeyError if unknown."""
        entry = self._streams[stream_id]
        if self.analysis is not None:
            try:
                events = self.analysis.forget_stream(stream_id)
            except Exception:
                self._failed(self.analysis)
            else:
                self.publish_alerts(events)
        await self._stop(entry)

    async def _stop(self, entry: _Stream) -> None:
        self._forget(entry.source.stream_id)
        if entry.pump is not None:
            entry.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.pump
        await entry.source.stop()

    def _forget(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)
        self.batcher.remove(stream_id)
        if self._worker is not None:
            self._worker.forget(stream_id)

    def add_sink(self, sink: Sink) -> None:
        """Deliver every stream's results to ``sink`` from now on (and alerts, if it has
        ``on_alert``); adding it twice changes nothing."""
        if sink not in self._sinks:
            self._sinks.append(sink)
            if isinstance(sink, AlertSink):
                self._alert_sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sink)
        if isinstance(sink, AlertSink):
            with contextlib.suppress(ValueError):
                self._alert_sinks.remove(sink)

    def publish_alerts(self, events: Sequence[AlertEvent]) -> None:
        """Deliver alert events to every alert sink (the pipeline's own, from ``analysis``,
        and those raised outside a result, e.g. when the rules change)."""
        for event in events:
            log.info("event=alert_%s rule=%s stream=%s zone=%s value=%.1f", event.kind,
                     event.rule.name, event.stream, event.zone or "total", event.value)
            for sink in tuple(self._alert_sinks):
                try:
                    sink.on_alert(event)
                except Exception:
                    self._failed(sink)

    async def _pump(self, entry: _Stream) -> None:
        source, sid = entry.source, entry.source.stream_id
        try:
            while True:
                self.batcher.submit(await source.recv())
                # Every batcher drop happens inside submit: copying the batcher's total
                # here keeps the status exact, and the pump is its only writer.
                source.status.batch_dropped = self.batcher.dropped(sid)
        except SourceEnded:
            return  # the source has already set its own state (ended, failed)
        except Exception as exc:
            log.exception("stream %s: receiving failed", sid)
            source.status.state = StreamState.FAILED
            source.status.last_error = f"{type(exc).__name__}: {exc}"

    def _dispatch(self, results: list[Result]) -> None:
        """On the loop: account the results in each stream's status, then fan them out."""
        if self._closed:
            return
        now_wall, now = time.time(), time.monotonic()
        for result in results:
            sid = result.frame.stream_id
            entry = self._streams.get(sid)
            if entry is None:  # removed while its frame was being inferred
                continue
            status = entry.source.status
            status.frames_out += 1
            status.last_count = result.count
            status.fps_out = entry.fps_out.tick(now)
            self.latency.add(now_wall - result.frame.captured_at)
            events: Sequence[AlertEvent] = ()
            if self.analysis is not None:
                try:
                    result, events = self.analysis.analyse(result)
                except Exception:
                    self._failed(self.analysis)
            for sink in tuple(self._sinks):
                try:
                    sink.on_result(result)
                except Exception:
                    self._failed(sink)
            if events:
                self.publish_alerts(events)

    def _failed(self, culprit: object) -> None:
        """Count a sink's (or the analysis') exception; log the first and then rarely, since
        a broken sink fails for every frame of every stream. Call from an except block."""
        self.sink_errors += 1
        n = self._sink_failures[id(culprit)] = self._sink_failures.get(id(culprit), 0) + 1
        if n == 1 or n % 1000 == 0:
            log.exception("sink %r failed (%d times)", culprit, n)

    def _report_error(self, frames: list[Frame], exc: BaseException) -> None:
        for frame in frames:
            entry = self._streams.get(frame.stream_id)
            if entry is not None:
                entry.source.status.last_error = f"inference: {type(exc).__name__}: {exc}"

    def stats(self) -> PipelineStats:
        worker = self._worker
        return PipelineStats(
            batch_sizes=dict(sorted(self.batcher.batch_histogram().items())),
            batches=worker.batches if worker else 0,
            frames=worker.frames if worker else 0,
            inference_errors=worker.errors if worker else 0,
            sink_errors=self.sink_errors,
            inference_ms_p50=_ms(worker.latency.p50) if worker else None,
            inference_ms_p95=_ms(worker.latency.p95) if worker else None,
            latency_ms_p50=_ms(self.latency.p50),
            latency_ms_p95=_ms(self.latency.p95),
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Stop every stream and the inference thread; idempotent."""
        if self._closed:
            return
        # Not remove_stream: a shutdown is not the end of a stream's alerts (a notifier must
        # not announce "cleared" for every camera each time the server stops).
        for sid, entry in list(self._streams.items()):
            try:
                await self._stop(entry)
            except Exception:  # one source failing to stop must not keep the others running
                log.exception("stream %s: stopping failed", sid)
        self._closed = True
        self._sinks.clear()
        self._alert_sinks.clear()
        worker = self._worker
        if worker is not None:
            worker.stop(timeout=0)
            deadline = time.monotonic() + timeout
            # Poll instead of join() so a long final batch never blocks the loop.
            while worker.alive and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if worker.alive:
                log.warning("inference thread did not stop within %.1f s", timeout)
        else:
            self.batcher.close()

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
