"""Prometheus metrics: per-stream series labelled ``stream``, plus a few service gauges.

Why a dedicated ``CollectorRegistry``: the global default registry refuses a second metric
of the same name, and tests (or one process embedding two apps) build many applications.

Two kinds of series:

* Values the sources and the pipeline already keep in ``StreamStatus`` (fps, drops,
  reconnects, the last count) are read at scrape time by a custom collector, so there is no
  second copy to keep in step, and a removed stream's series disappear with it.
* Latency distributions need every observation, so a sink feeds two histograms; their label
  sets are removed explicitly by ``forget`` when a stream is removed.

``crowdcount_inference_latency_seconds`` runs from a frame's capture to the end of its
inference (so it includes the wait for the model, which is what a crowded model looks
like); ``crowdcount_e2e_latency_seconds`` runs from capture to the hand-off to the sinks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model.types import Result
from streamer.status import StreamState, StreamStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

StatusSource = Callable[[], Mapping[str, StreamStatus]]
GaugeSource = Callable[[], Mapping[str, float]]


class _StatusCollector(Collector):
    """Reads every live stream's status when Prometheus scrapes."""

    def __init__(self, statuses: StatusSource, service_gauges: GaugeSource | None) -> None:
        self._statuses = statuses
        self._service_gauges = service_gauges

    def collect(self) -> Iterator[Metric]:
        statuses = dict(self._statuses())
        count = GaugeMetricFamily(
            "crowdcount_count", "Latest per-frame count of the stream", labels=["stream"]
        )
        fps_in = GaugeMetricFamily(
            "crowdcount_fps_in", "Frames decoded per second", labels=["stream"]
        )
        fps_out = GaugeMetricFamily(
            "crowdcount_fps_out", "Frames processed by the model per second", labels=["stream"]
        )
        dropped = CounterMetricFamily(
            "crowdcount_frames_dropped",
            "Frames replaced by a newer one before the model saw them",
            labels=["stream"],
        )
        reconnects = CounterMetricFamily(
            "crowdcount_reconnects", "Connection attempts after the first", labels=["stream"]
        )
        frames_out = CounterMetricFamily(
            "crowdcount_frames_processed", "Frames processed by the model", labels=["stream"]
        )
        up = GaugeMetricFamily(
            "crowdcount_stream_up", "1 while the stream is delivering frames", labels=["stream"]
        )
        for sid, st in sorted(statuses.items()):
            if st.last_count is not None:
                count.add_metric([sid], st.last_count)
            fps_in.add_metric([sid], st.fps_in)
            fps_out.add_metric([sid], st.fps_out)
            dropped.add_metric([sid], st.dropped)
            reconnects.add_metric([sid], st.reconnects)
            frames_out.add_metric([sid], st.frames_out)
            up.add_metric([sid], 1.0 if st.state == StreamState.RUNNING else 0.0)
        yield from (count, fps_in, fps_out, dropped, reconnects, frames_out, up)
        if self._service_gauges is not None:
            for name, value in sorted(self._service_gauges().items()):
                gauge = GaugeMetricFamily(f"crowdcount_{name}", f"Service gauge {name}")
                gauge.add_metric([], value)
                yield gauge


class Metrics:
    """The registry, the latency sink and the scrape-time collector of one application.

    ``statuses`` returns stream id -> ``StreamStatus`` of the live streams; ``service_gauges``
    returns extra unlabelled gauges (streams, peers, store backlog...) by short name.
    """

    def __init__(
        self, statuses: StatusSource, service_gauges: GaugeSource | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.inference_latency = Histogram(
            "crowdcount_inference_latency_seconds",
            "Seconds from frame capture to the end of its inference",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "crowdcount_e2e_latency_seconds",
            "Seconds from frame capture to delivery to the sinks",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(statuses, service_gauges))
        self._children: dict[str, tuple[Any, Any]] = {}

    def on_result(self, result: Result) -> None:
        """Sink protocol: two histogram observations (a lock and a bucket search each)."""
        sid = result.frame.stream_id
        children = self._children.get(sid)
        if children is None:
            children = self._children[sid] = (
                self.inference_latency.labels(stream=sid),
                self.e2e_latency.labels(stream=sid),
            )
        captured = result.frame.captured_at
        children[0].observe(max(0.0, result.inferred_at - captured))
        children[1].observe(max(0.0, time.time() - captured))

    def forget(self, stream_id: str) -> None:
        """Remove a removed stream's histogram series (the collector's vanish by themselves)."""
        if self._children.pop(stream_id, None) is not None:
            for hist in (self.inference_latency, self.e2e_latency):
                with contextlib.suppress(KeyError):
                    hist.remove(stream_id)

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
