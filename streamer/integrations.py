"""Zones, alerts and notifiers, applied once per result before the sinks see it.

The pipeline hands every result to ``Integrations.process`` (its ``result_hook``) before
dispatching it, so that zone counts are computed once and every sink (store, live feed,
metrics, viewers) sees the same ``Result.zones``. ``process`` then feeds the stream's total
and zone counts to the alert engine, records raised/cleared alerts in the store, and tells
the notifiers (webhook, MQTT) about counts and alerts.

Everything here runs on the event loop and is cheap: zone masks are cached per stream and
shape (one small matrix product per frame), the alert engine is arithmetic, the store and
the notifiers only queue. A failing notifier or store is logged and does not stop the
others, nor the result from reaching the sinks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crowdcount.model.types import Result
from crowdcount.model.zones import Zone, ZoneCounter
from crowdcount.streamer.alerts import AlertEngine, AlertEvent, ThresholdRule
from crowdcount.streamer.sinks.base import Notifier

if TYPE_CHECKING:
    from crowdcount.streamer.config import Config, SinksConfig, StreamConfig, ThresholdConfig
    from crowdcount.streamer.store import CountStore

__all__ = [
    "Integrations",
    "notifiers_from_config",
    "rules_from_config",
    "zones_from_config",
]

log = logging.getLogger(__name__)


def zones_from_config(stream: StreamConfig) -> tuple[Zone, ...]:
    return tuple(Zone(z.name, z.points) for z in stream.zones)


def rules_from_config(thresholds: Iterable[ThresholdConfig]) -> tuple[ThresholdRule, ...]:
    return tuple(
        ThresholdRule(t.name, t.stream, t.zone, t.above, t.below, t.for_seconds) for t in thresholds
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
    """Per-stream zone counting → alert engine → store and notifiers.

    ``on_alert`` callbacks (e.g. the live feed, to push alerts to the page) are called on
    the loop for every event, after the store and the notifiers.
    """

    def __init__(
        self,
        *,
        zones: Mapping[str, Sequence[Zone]] | None = None,
        rules: Iterable[ThresholdRule] = (),
        notifiers: Sequence[Notifier] = (),
        store: CountStore | None = None,
    ) -> None:
        self._counters: dict[str, ZoneCounter] = {}
        for stream, zs in (zones or {}).items():
            self.set_zones(stream, zs)
        self.engine = AlertEngine(rules)
        self.notifiers: list[Notifier] = list(notifiers)
        self.store = store
        self.on_alert: list[Callable[[AlertEvent], None]] = []
        self.errors = 0
        self._failures: dict[int, int] = {}
        self._started = False

    @classmethod
    def from_config(cls, config: Config, store: CountStore | None = None) -> Integrations:
        """Zones of the configured streams, the ``[[thresholds]]`` and the ``[sinks]``."""
        return cls(
            zones={s.name: zones_from_config(s) for s in config.streams if s.zones},
            rules=rules_from_config(config.thresholds),
            notifiers=notifiers_from_config(config.sinks),
            store=store,
        )

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

    @property
    def rules(self) -> tuple[ThresholdRule, ...]:
        return self.engine.rules

    def set_rules(self, rules: Iterable[ThresholdRule]) -> None:
        """Replace the alert rules; alerts of removed or changed rules are cleared now."""
        for ev in self.engine.set_rules(rules, t=time.time()):
            self._emit(ev)

    def forget_stream(self, stream: str) -> None:
        """A stream was removed: clear its active alerts now (its zones are kept, so a
        stream re-added under the same id counts them again; ``set_zones(id, ())`` drops
        them)."""
        for ev in self.engine.forget_stream(stream, t=time.time()):
            self._emit(ev)

    def active_alerts(self) -> list[dict[str, Any]]:
        return self.engine.active()

    # ------------------------------------------------------------------ per result

    def process(self, result: Result) -> Result:
        """The pipeline's ``result_hook``: returns ``result`` with ``zones`` filled in."""
        sid = result.frame.stream_id
        counter = self._counters.get(sid)
        if counter is not None:
            zones = counter.count(result.density, result.frame.size)
            result = dataclasses.replace(result, zones=zones)
        t = result.frame.captured_at
        values: dict[str | None, float] = {None: float(result.count)}
        values.update(result.zones)
        for ev in self.engine.update(sid, t, values):
            self._emit(ev)
        for n in self.notifiers:
            self._guard(n, n.notify_counts, sid, t, float(result.count), result.zones)
        return result

    def _emit(self, ev: AlertEvent) -> None:
        log.info(
            "alert %s %s: %s %s=%.1f (above %g, below %g)",
            ev.rule.name,
            ev.kind,
            ev.stream,
            ev.zone or "total",
            ev.value,
            ev.rule.above,
            ev.rule.below,
        )
        if self.store is not None:
            if ev.kind == "raised":
                self._guard(
                    self.store, self.store.add_alert, ev.stream, ev.zone, ev.rule.name,
                    ev.raised_at, ev.peak,
                )  # fmt: skip
            else:
                self._guard(
                    self.store, self.store.clear_alert, ev.stream, ev.rule.name, ev.raised_at,
                    ev.t, ev.peak,
                )  # fmt: skip
        for n in self.notifiers:
            self._guard(n, n.notify_alert, ev)
        for cb in self.on_alert:
            self._guard(cb, cb, ev)

    def _guard(self, owner: object, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.errors += 1
            n = self._failures[id(owner)] = self._failures.get(id(owner), 0) + 1
            if n == 1 or n % 1000 == 0:
                log.exception("integration %r failed (%d times)", owner, n)

    def stats(self) -> dict[str, Any]:
        """Counters of each notifier that has ``stats()``, plus errors and active alerts."""
        out: dict[str, Any] = {"errors": self.errors, "active_alerts": len(self.engine.active())}
        for n in self.notifiers:
            with contextlib.suppress(Exception):
                out[type(n).__name__] = n.stats()  # type: ignore[attr-defined]
        return out
