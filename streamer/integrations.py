"""Zones and threshold alerts, derived once per result before the sinks see it.

``Integrations`` is the pipeline's analysis stage (``Pipeline(analysis=...)``): for every
result it fills in ``Result.zones``, once, so every sink (history, live feed, metrics,
viewers, notifiers) sees the same zone counts, and feeds the total and zone counts to the
alert engine. The alerts that raises or clears are returned to the pipeline, which delivers
them to the sinks like results; nothing here calls a consumer.

It also builds the configured notifiers (webhook, MQTT) and owns their lifecycle
(``start``/``close``); the service adds them to the pipeline as sinks.

Everything per result runs on the event loop and is cheap: zone masks are cached per stream
and shape (one small matrix product per frame), and the alert engine is arithmetic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crowdcount.model.floor import LEVELS, Floor, FloorError, level_of_service
from crowdcount.model.types import Result, ZoneDensity
from crowdcount.model.zones import Zone, ZoneCounter
from crowdcount.streamer.alerts import AlertEngine, AlertEvent, ThresholdRule
from crowdcount.streamer.sinks.base import Notifier, StreamAware
from crowdcount.streamer.store.base import FLOOR_KEY

if TYPE_CHECKING:
    from crowdcount.streamer.config import (
        Config,
        FloorConfig,
        SinksConfig,
        StreamConfig,
        ThresholdConfig,
    )

__all__ = [
    "FLOOR_KEY",
    "Integrations",
    "StreamFloor",
    "notifiers_from_config",
    "rules_from_config",
    "zones_from_config",
]

log = logging.getLogger(__name__)


def zones_from_config(stream: StreamConfig) -> tuple[Zone, ...]:
    return tuple(Zone(z.name, z.points) for z in stream.zones)


class StreamFloor:
    """One stream's floor calibration in force, and its zones' floor areas per frame and
    density shape (computed on the first frame of a shape, then reused)."""

    def __init__(self, config: FloorConfig) -> None:
        self.config = config
        self.floor: Floor = config.build()
        self.bands = config.bands
        self._areas: dict[tuple[object, ...], dict[str, float | None]] = {}
        self.last_areas: dict[str, float | None] = {}

    def to_dict(self) -> dict[str, Any]:
        """The calibration as JSON (as saved, and as a stream's options show it)."""
        return self.config.model_dump(mode="json", exclude_defaults=True)

    def areas(self, zones: Sequence[Zone], frame_size: tuple[int, int],
              shape: tuple[int, int]) -> dict[str, float | None]:
        """``{zone: m2}``; ``None`` for a zone that reaches off the calibrated floor (its
        density is not reported rather than divided by a wrong area)."""
        key = (tuple(zones), frame_size, shape)
        areas = self._areas.get(key)
        if areas is None:
            areas = {}
            for z in zones:
                try:
                    areas[z.name] = self.floor.zone_area(z.points, frame_size, shape)
                except FloorError:
                    log.warning("event=zone_off_floor zone=%s", z.name)
                    areas[z.name] = None
            if len(self._areas) >= 4:
                self._areas.pop(next(iter(self._areas)))
            self._areas[key] = areas
        self.last_areas = areas
        return areas

    def zone_areas(self, zones: Sequence[Zone]) -> dict[str, float | None]:
        """The zones' areas of the last frame, or before any frame (a cluster's API process
        sees none) at the calibrated frame size and the bundled model's stride of 8."""
        if self.last_areas and set(self.last_areas) == {z.name for z in zones}:
            return self.last_areas
        w, h = self.config.frame_size
        return self.areas(zones, (w, h), (max(1, h // 8), max(1, w // 8)))

    def densities(self, zones: Sequence[Zone], counts: Mapping[str, float],
                  frame_size: tuple[int, int], shape: tuple[int, int]) -> dict[str, ZoneDensity]:
        """Each zone's people per m2 and level from its count; a zone off the floor (no
        area) or without a count is left out rather than reported as empty."""
        out = {}
        for name, area in self.areas(zones, frame_size, shape).items():
            if area is not None and area > 0 and name in counts:
                per_m2 = max(0.0, float(counts[name])) / area
                out[name] = ZoneDensity(area, per_m2, level_of_service(per_m2, self.bands))
        return out


def rules_from_config(thresholds: Iterable[ThresholdConfig]) -> tuple[ThresholdRule, ...]:
    return tuple(
        ThresholdRule(t.name, t.stream, t.zone, t.above, t.below, t.for_seconds, t.metric)
        for t in thresholds
    )


def notifiers_from_config(sinks: SinksConfig) -> list[Notifier]:
    """The configured notifiers, not started. Imports each only when configured, so that
    paho-mqtt (an optional dependency) is needed only by those who use MQTT."""
    out: list[Notifier] = []
    if sinks.webhook is not None:
        from crowdcount.streamer.sinks.webhook import WebhookNotifier

        out.append(WebhookNotifier.from_config(sinks.webhook))
    if sinks.mqtt is not None:
        from crowdcount.streamer.sinks.mqtt import MqttNotifier

        out.append(MqttNotifier.from_config(sinks.mqtt))
    return out


class Integrations:
    """Per-stream zone counting and the alert engine (the pipeline's ``Analysis``), plus the
    configured notifiers' lifecycle."""

    def __init__(
        self,
        *,
        zones: Mapping[str, Sequence[Zone]] | None = None,
        rules: Iterable[ThresholdRule] = (),
        notifiers: Sequence[Notifier] = (),
    ) -> None:
        self._counters: dict[str, ZoneCounter] = {}
        self._floors: dict[str, StreamFloor] = {}
        for stream, zs in (zones or {}).items():
            self.set_zones(stream, zs)
        self.engine = AlertEngine(rules)
        self.notifiers: list[Notifier] = list(notifiers)
        self._started = False
        self._tell_rules()

    @classmethod
    def from_config(cls, config: Config) -> Integrations:
        """Zones of the configured streams, the ``[[thresholds]]`` and the ``[sinks]``."""
        out = cls(
            zones={s.name: zones_from_config(s) for s in config.streams if s.zones},
            rules=rules_from_config(config.thresholds),
            notifiers=notifiers_from_config(config.sinks),
        )
        for s in config.streams:
            out.set_floor(s.name, s.floor)
        return out

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every notifier (on the running loop); idempotent."""
        if not self._started:
            self._started = True
            for n in self.notifiers:
                await n.start()

    async def close(self) -> None:
        """Close every notifier, letting each deliver what it has queued."""
        for n in self.notifiers:
            try:
                await n.close()
            except Exception:
                log.exception("notifier %r: close failed", n)

    # ------------------------------------------------------------------ zones and rules

    def set_zones(self, stream: str, zones: Sequence[Zone]) -> None:
        """Replace a stream's zones (empty: none); masks are recomputed on the next frame.

        Raises ``ValueError`` for duplicate names. Rules naming a zone that no longer exists
        simply stop receiving values (an active one stays raised until the zone returns or
        the rules change).
        """
        if zones:
            self._counters[stream] = ZoneCounter(zones)
        else:
            self._counters.pop(stream, None)

    def zones(self, stream: str) -> tuple[Zone, ...]:
        counter = self._counters.get(stream)
        return counter.zones if counter is not None else ()

    def set_floor(self, stream: str, config: FloorConfig | None) -> None:
        """Put a stream's floor calibration in force (``None``: uncalibrated); its zones'
        densities are reported from the next frame. Raises ``FloorError``."""
        if config is None:
            self._floors.pop(stream, None)
        else:
            self._floors[stream] = StreamFloor(config)

    def floor(self, stream: str) -> StreamFloor | None:
        return self._floors.get(stream)

    @property
    def rules(self) -> tuple[ThresholdRule, ...]:
        return self.engine.rules

    def is_active(self, name: str) -> bool:
        return self.engine.is_active(name)

    def set_rules(self, rules: Iterable[ThresholdRule]) -> list[AlertEvent]:
        """Replace the alert rules; returns the clears of alerts whose rule was removed or
        changed (deliver them with ``Pipeline.publish_alerts``). Notifiers that describe
        rules outside (Home Assistant entities) hear about the new set."""
        events = self.engine.set_rules(rules, t=time.time())
        self._tell_rules()
        return events

    def _tell_rules(self) -> None:
        for n in self.notifiers:
            if isinstance(n, StreamAware):
                try:
                    n.set_rules(self.engine.rules)
                except Exception:
                    log.exception("notifier %r: set_rules failed", n)

    def forget_stream(self, stream: str) -> list[AlertEvent]:
        """A stream was removed: clear its active alerts now (its zones are kept, so a
        stream re-added under the same id counts them again; ``set_zones(id, ())`` drops
        them). Returns the clears; the pipeline calls this and delivers them. Notifiers
        that describe streams outside remove theirs."""
        for n in self.notifiers:
            if isinstance(n, StreamAware):
                try:
                    n.forget_stream(stream)
                except Exception:
                    log.exception("notifier %r: forget_stream failed", n)
        return self.engine.forget_stream(stream, t=time.time())

    def active_alerts(self) -> list[dict[str, Any]]:
        return self.engine.active()

    # ------------------------------------------------------------------ per result

    def analyse(self, result: Result) -> tuple[Result, list[AlertEvent]]:
        """``result`` with ``zones`` filled in (the very same object without zones), and the
        alerts this sample raised or cleared."""
        sid = result.frame.stream_id
        counter = self._counters.get(sid)
        if counter is not None:
            size = result.frame.size
            zones = counter.count(result.density, size)
            floor = self._floors.get(sid)
            dens = ({} if floor is None else
                    floor.densities(counter.zones, zones, size, result.density.shape[:2]))
            result = dataclasses.replace(result, zones=zones, floor=dens)
        values: dict[str | tuple[str | None, str] | None, float] = {None: float(result.count)}
        values.update(result.zones)
        for name, d in result.floor.items():
            values[(name, "density")] = d.per_m2
            values[(name, "level")] = float(LEVELS.index(d.level) + 1)
        return result, self.engine.update(sid, result.frame.captured_at, values)

    def stats(self) -> dict[str, Any]:
        """Counters of each notifier that has ``stats()``, plus the active alerts."""
        out: dict[str, Any] = {"active_alerts": len(self.engine.active())}
        for n in self.notifiers:
            with contextlib.suppress(Exception):
                out[type(n).__name__] = n.stats()  # type: ignore[attr-defined]
        return out
