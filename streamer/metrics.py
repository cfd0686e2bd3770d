"""Prometheus metrics: per-stream series labelled ``stream``, plus a few service-wide ones.

Names follow Prometheus' conventions (``promtool check metrics`` passes, and a test keeps it
so): running totals are counters ending in ``_total``, gauges never end in a suffix the
exposition format reserves (``_count``, ``_sum``, ``_bucket``), which is why the latest
count is ``crowdcount_people`` and not ``crowdcount_count``.

Why a dedicated ``CollectorRegistry``: the global default registry refuses a second metric
of the same name, and tests (or one process embedding two apps) build many applications.

Two kinds of series:

* Values the sources and the pipeline already keep in ``StreamStatus`` (fps, drops,
  reconnects, the last count, the decoder's CPU seconds and frames, whether it decodes
  keyframes only) are read at scrape time by a custom collector, so there is no
  second copy to keep in step, and a removed stream's series disappear with it.
* Latency distributions need every observation, so a sink feeds two histograms; their label
  sets are removed explicitly by ``forget`` when a stream is removed.
* Zone counts (``crowdcount_zone_people{stream,zone}``) are the last result's, kept by the
  sink but reported only for the zones a live stream has at scrape time, so editing a
  stream's zones or removing it drops the old label sets. Active alerts
  (``crowdcount_alerts_active{stream,rule,zone}``, 1 each) are read from the alert engine at
  scrape time; ``crowdcount_alerts_raised_total{stream,rule}`` counts raises.
* On a floor-calibrated stream (``model.floor``) each zone also has
  ``crowdcount_zone_people_per_square_meter``, ``crowdcount_zone_floor_area_square_meters``
  and ``crowdcount_zone_level_of_service`` (A = 1 ... F = 6, so ``>= 5`` is E or worse), kept
  and dropped like the zone counts.

``crowdcount_model_info{backend,path}`` (always 1) says which inference backend and model
file the service runs, since the default backend depends on what is installed.

``crowdcount_inference_latency_seconds`` runs from a frame's capture to the end of its
inference (so it includes the wait for the model, which is what a crowded model looks
like); ``crowdcount_e2e_latency_seconds`` runs from capture to the hand-off to the sinks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crowdcount.model.floor import LEVELS
from crowdcount.model.types import Result, ZoneDensity
from crowdcount.streamer.status import StreamState, StreamStatus

if TYPE_CHECKING:
    from crowdcount.streamer.alerts import AlertEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

StatusSource = Callable[[], Mapping[str, StreamStatus]]
GaugeSource = Callable[[], Mapping[str, float]]  # short name -> value, unlabelled
ZoneSource = Callable[[str], Iterable[str]]  # stream id -> names of its zones now
AlertSource = Callable[[], Iterable[Mapping[str, Any]]]  # the active alerts

#: Help text of the service-wide series by short name (``crowdcount_<name>``; counters get
#: ``_total`` appended in the exposition).
SERVICE_HELP = {
    "streams": "Streams being processed",
    "rtc_peers": "Open WebRTC peer connections",
    "store_pending_rows": "Count rows queued for the database",
    "store_dropped_rows": "Count rows dropped because the database queue was full",
    "store_duplicate_rows": "Count rows the database already had (replays), stored once",
    "feed_dropped_items": "Live-feed items dropped for subscribers that fell behind",
    "inference_errors": "Batches whose inference raised",
    "sink_errors": "Results a sink failed to take",
}


class _StatusCollector(Collector):
    """Reads every live stream's status when Prometheus scrapes."""

    def __init__(
        self,
        statuses: StatusSource,
        service_gauges: GaugeSource | None,
        zone_counts: Mapping[str, Mapping[str, float]] | None = None,
        zones: ZoneSource | None = None,
        alerts: AlertSource | None = None,
        service_counters: GaugeSource | None = None,
        zone_floor: Mapping[str, Mapping[str, ZoneDensity]] | None = None,
    ) -> None:
        self._statuses = statuses
        self._zone_floor = zone_floor if zone_floor is not None else {}
        self._service_gauges = service_gauges
        self._service_counters = service_counters
        self._zone_counts = zone_counts if zone_counts is not None else {}
        self._zones = zones
        self._alerts = alerts

    def collect(self) -> Iterator[Metric]:
        statuses = dict(self._statuses())
        count = GaugeMetricFamily(
            "crowdcount_people", "Latest per-frame count of the stream", labels=["stream"]
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
        decode_cpu = CounterMetricFamily(
            "crowdcount_decode_cpu_seconds",
            "CPU seconds the stream's decoder thread spent reading and decoding video",
            labels=["stream"],
        )
        decoded = CounterMetricFamily(
            "crowdcount_frames_decoded",
            "Frames the decoder produced (keyframes only, when they meet the stream's rate)",
            labels=["stream"],
        )
        keyframes_only = GaugeMetricFamily(
            "crowdcount_keyframes_only", "1 while the stream is decoded keyframes-only",
            labels=["stream"],
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
            decode_cpu.add_metric([sid], st.decode_seconds)
            decoded.add_metric([sid], st.frames_decoded)
            keyframes_only.add_metric([sid], 1.0 if st.decode == "keyframes" else 0.0)
        yield from (count, fps_in, fps_out, dropped, reconnects, frames_out, up, decode_cpu,
                    decoded, keyframes_only)
        if self._zones is not None:
            zone = GaugeMetricFamily(
                "crowdcount_zone_people", "Latest per-frame count inside a zone",
                labels=["stream", "zone"],
            )
            for sid in sorted(statuses):
                last = self._zone_counts.get(sid) or {}
                for name in self._zones(sid):
                    if name in last:
                        zone.add_metric([sid, name], last[name])
            yield zone
            yield from self._floor_metrics(sorted(statuses))
        if self._alerts is not None:
            active = GaugeMetricFamily(
                "crowdcount_alerts_active", "1 for each alert raised and not yet cleared",
                labels=["stream", "rule", "zone"],
            )
            for a in sorted(self._alerts(), key=lambda a: (a["stream"], a["name"])):
                active.add_metric([a["stream"], a["name"], a.get("zone") or ""], 1.0)
            yield active
        if self._service_gauges is not None:
            for name, value in sorted(self._service_gauges().items()):
                gauge = GaugeMetricFamily(f"crowdcount_{name}", SERVICE_HELP.get(name, name))
                gauge.add_metric([], value)
                yield gauge
        if self._service_counters is not None:
            for name, value in sorted(self._service_counters().items()):
                total = CounterMetricFamily(f"crowdcount_{name}", SERVICE_HELP.get(name, name))
                total.add_metric([], value)
                yield total


    def _floor_metrics(self, streams: Iterable[str]) -> Iterator[Metric]:
        assert self._zones is not None
        labels = ["stream", "zone"]
        density = GaugeMetricFamily(
            "crowdcount_zone_people_per_square_meter",
            "Latest people per square metre of floor inside a zone (floor-calibrated streams)",
            labels=labels)
        area = GaugeMetricFamily(
            "crowdcount_zone_floor_area_square_meters",
            "Floor area of a zone (floor-calibrated streams)", labels=labels)
        level = GaugeMetricFamily(
            "crowdcount_zone_level_of_service",
            "Latest level of service of a zone's density, A=1 to F=6 (floor-calibrated)",
            labels=labels)
        for sid in streams:
            last = self._zone_floor.get(sid) or {}
            for name in self._zones(sid):
                d = last.get(name)
                if d is not None:
                    density.add_metric([sid, name], d.per_m2)
                    area.add_metric([sid, name], d.area_m2)
                    level.add_metric([sid, name], float(LEVELS.index(d.level) + 1))
        yield from (density, area, level)


class Metrics:
    """The registry, the latency sink and the scrape-time collector of one application.

    ``statuses`` returns stream id -> ``StreamStatus`` of the live streams; ``service_gauges``
    returns extra unlabelled gauges (streams, peers, store backlog...) by short name,
    ``service_counters`` running totals since start (errors, drops), exposed as counters;
    ``model`` (``backend``, ``path``) becomes the labels of ``crowdcount_model_info``.
    """

    def __init__(
        self,
        statuses: StatusSource,
        service_gauges: GaugeSource | None = None,
        *,
        zones: ZoneSource | None = None,
        alerts: AlertSource | None = None,
        service_counters: GaugeSource | None = None,
        model: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if model is not None:
            Info("crowdcount_model", "The inference backend and model file in use",
                 registry=self.registry).info(dict(model))
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
        self.alerts_raised = Counter(
            "crowdcount_alerts_raised",
            "Alerts raised (a rule's count went over 'above' for its hold time)",
            ["stream", "rule"],
            registry=self.registry,
        )
        self._raised_labels: set[tuple[str, str]] = set()
        self._zone_counts: dict[str, dict[str, float]] = {}
        self._zone_floor: dict[str, dict[str, ZoneDensity]] = {}
        self.registry.register(
            _StatusCollector(statuses, service_gauges, self._zone_counts, zones, alerts,
                             service_counters, self._zone_floor)
        )
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
        if result.zones:
            self._zone_counts[sid] = result.zones
        else:
            self._zone_counts.pop(sid, None)
        if result.floor:
            self._zone_floor[sid] = result.floor
        else:
            self._zone_floor.pop(sid, None)

    def on_alert(self, event: AlertEvent) -> None:
        """Alert sink: count raised alerts."""
        if event.kind == "raised":
            labels = (event.stream, event.rule.name)
            self._raised_labels.add(labels)
            self.alerts_raised.labels(*labels).inc()

    def forget(self, stream_id: str) -> None:
        """Remove a removed stream's histogram series (the collector's vanish by themselves)."""
        self._zone_counts.pop(stream_id, None)
        self._zone_floor.pop(stream_id, None)
        if self._children.pop(stream_id, None) is not None:
            for hist in (self.inference_latency, self.e2e_latency):
                with contextlib.suppress(KeyError):
                    hist.remove(stream_id)
        for labels in [lb for lb in self._raised_labels if lb[0] == stream_id]:
            self._raised_labels.discard(labels)
            with contextlib.suppress(KeyError):
                self.alerts_raised.remove(*labels)

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
