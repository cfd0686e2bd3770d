"""Threshold alerts with hysteresis, as a pure state machine.

A rule says "alert when the count of a stream (or of one of its zones) has been over
``above`` for at least ``for_seconds``, and clear it once it is back under ``below``". Raw
crowd counts jitter by several people from frame to frame, so a single threshold would raise
and clear many times while the crowd hovers around it; the two separate levels (``below <
above``) and the hold time make a raised alert stay raised until the crowd has clearly gone
down, and a brief spike not raise one at all.

The engine has no clock, no I/O and no threads: it only sees ``(stream, t, values)`` samples,
so the same recorded count sequence always yields the same events, which is what the tests
replay. Time is the samples' own timestamps (a frame's ``captured_at``):

* "over" is strictly greater than ``above`` and "under" strictly less than ``below``; a
  value between the two changes nothing once raised, and resets the hold timer before.
* The hold time runs from the first sample over ``above`` to the current sample; with
  ``for_seconds = 0`` the first sample over raises. A gap in the samples counts as time
  over (the last thing seen was over), which is why a stream that stalls while crowded
  raises on its next frame.
* A sample older than the rule's previous one (a clock stepping back) is ignored, as is a
  NaN value or a zone missing from the sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AlertEngine", "AlertEvent", "ThresholdRule"]

# Timestamps such as k * 0.1 do not subtract exactly; without a tolerance a 2 s hold on a
# 10 fps stream would sometimes need one frame more than 2 s.
_EPS = 1e-9

EventKind = Literal["raised", "cleared"]
#: What a rule watches: the people count (of the stream or a zone), a zone's people per m2
#: of floor, or its level of service as a number (A = 1 ... F = 6: ``above = 4`` raises at
#: level E or F). The last two need a floor-calibrated stream (``model.floor``).
Metric = Literal["count", "density", "level"]
METRICS: tuple[Metric, ...] = ("count", "density", "level")
ClearReason = Literal["below", "rule_changed", "stream_removed"]


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Alert on ``stream`` (its total when ``zone`` is ``None``) over ``above`` for
    ``for_seconds``; clear under ``below``."""

    name: str
    stream: str
    zone: str | None
    above: float
    below: float
    for_seconds: float = 0.0
    metric: Metric = "count"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rule needs a name")
        if self.metric not in METRICS:
            raise ValueError(f"rule {self.name!r}: metric must be one of {', '.join(METRICS)}")
        if self.metric != "count" and self.zone is None:
            raise ValueError(f"rule {self.name!r}: a {self.metric} rule needs a zone (a zone "
                             "has a floor area; the whole frame has none)")
        if not (math.isfinite(self.above) and math.isfinite(self.below)):
            raise ValueError(f"rule {self.name!r}: above and below must be finite")
        if not self.below < self.above:
            raise ValueError(
                f"rule {self.name!r}: below ({self.below}) must be less than above "
                f"({self.above}), or the alert would flap"
            )
        if not (math.isfinite(self.for_seconds) and self.for_seconds >= 0):
            raise ValueError(f"rule {self.name!r}: for_seconds must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stream": self.stream,
            "zone": self.zone,
            "above": self.above,
            "below": self.below,
            "for_seconds": self.for_seconds,
            "metric": self.metric,
        }

    @property
    def key(self) -> str | tuple[str | None, str] | None:
        """Where its value is in an ``AlertEngine.update`` sample."""
        return self.zone if self.metric == "count" else (self.zone, self.metric)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert being raised or cleared.

    ``t`` and ``value`` are the sample that caused the event. ``raised_at`` identifies the
    alert (equal to ``t`` for a raise); ``over_since`` is when the value first went over
    ``above``; ``peak`` is the highest value from then up to this event. ``reason`` says why
    a clear happened (``"below"`` normally; the others when a rule or stream went away).
    """

    kind: EventKind
    rule: ThresholdRule
    t: float
    value: float
    raised_at: float
    over_since: float
    peak: float
    reason: ClearReason | None = None

    @property
    def stream(self) -> str:
        return self.rule.stream

    @property
    def zone(self) -> str | None:
        return self.rule.zone

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape sent to webhooks and MQTT."""
        return {
            "event": self.kind,
            "rule": self.rule.name,
            "stream": self.rule.stream,
            "zone": self.rule.zone,
            "t": self.t,
            "value": self.value,
            "raised_at": self.raised_at,
            "over_since": self.over_since,
            "peak": self.peak,
            "reason": self.reason,
            "above": self.rule.above,
            "below": self.rule.below,
            "for_seconds": self.rule.for_seconds,
            "metric": self.rule.metric,
        }


@dataclass(slots=True)
class _State:
    last_t: float | None = None
    over_since: float | None = None  # first sample over `above` (pending or active)
    raised_at: float | None = None  # set while active
    peak: float = -math.inf
    last_value: float = math.nan


class AlertEngine:
    """Evaluates every rule on each stream's samples; returns the events they cause.

    Not thread-safe; meant to be driven from the event loop, one call per result.
    """

    def __init__(self, rules: Iterable[ThresholdRule] = ()) -> None:
        self._rules: dict[str, ThresholdRule] = {}
        self._by_stream: dict[str, list[ThresholdRule]] = {}
        self._state: dict[str, _State] = {}
        self.set_rules(rules)

    @property
    def rules(self) -> tuple[ThresholdRule, ...]:
        return tuple(self._rules.values())

    def set_rules(self, rules: Iterable[ThresholdRule], t: float | None = None) -> list[AlertEvent]:
        """Replace the rule set. Unchanged rules keep their state; an active alert whose rule
        was removed or changed is cleared (``reason="rule_changed"``, at ``t`` or its last
        sample time), so that whoever records alerts can close it."""
        new: dict[str, ThresholdRule] = {}
        for rule in rules:
            if rule.name in new:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            new[rule.name] = rule
        events: list[AlertEvent] = []
        for name, old in self._rules.items():
            if new.get(name) != old:
                st = self._state.pop(name)
                ev = self._clear_event(old, st, t, "rule_changed")
                if ev is not None:
                    events.append(ev)
        self._rules = new
        for name in new:
            self._state.setdefault(name, _State())
        self._by_stream = {}
        for rule in new.values():
            self._by_stream.setdefault(rule.stream, []).append(rule)
        return events

    def update(
        self, stream: str, t: float, values: Mapping[str | tuple[str | None, str] | None, float]
    ) -> list[AlertEvent]:
        """Feed one sample: ``values[None]`` is the stream's total, ``values[name]`` a zone's
        count, ``values[(name, "density")]`` and ``values[(name, "level")]`` its density and
        level on a calibrated floor. Returns the raised/cleared events, in rule order."""
        events: list[AlertEvent] = []
        for rule in self._by_stream.get(stream, ()):
            value = values.get(rule.key)
            if value is None:
                continue
            value = float(value)
            if math.isnan(value):
                continue
            st = self._state[rule.name]
            if st.last_t is not None and t < st.last_t:
                continue
            st.last_t, st.last_value = t, value
            if st.raised_at is None:
                if value > rule.above:
                    if st.over_since is None:
                        st.over_since, st.peak = t, value
                    else:
                        st.peak = max(st.peak, value)
                    if t - st.over_since >= rule.for_seconds - _EPS:
                        st.raised_at = t
                        events.append(
                            AlertEvent("raised", rule, t, value, t, st.over_since, st.peak)
                        )
                else:
                    st.over_since, st.peak = None, -math.inf
            else:
                st.peak = max(st.peak, value)
                if value < rule.below:
                    ev = self._clear_event(rule, st, t, "below")
                    assert ev is not None
                    events.append(ev)
        return events

    def forget_stream(self, stream: str, t: float | None = None) -> list[AlertEvent]:
        """A stream went away: clear its active alerts (``reason="stream_removed"``) and reset
        its rules, so that a stream re-added later starts from scratch."""
        events: list[AlertEvent] = []
        for rule in self._by_stream.get(stream, ()):
            ev = self._clear_event(rule, self._state[rule.name], t, "stream_removed")
            if ev is not None:
                events.append(ev)
            self._state[rule.name] = _State()
        return events

    def active(self) -> list[dict[str, Any]]:
        """The alerts raised and not yet cleared, with their live peak and last value."""
        out = []
        for name, st in self._state.items():
            if st.raised_at is not None:
                rule = self._rules[name]
                out.append(
                    {
                        **rule.to_dict(),
                        "raised_at": st.raised_at,
                        "over_since": st.over_since,
                        "peak": st.peak,
                        "value": st.last_value,
                        "t": st.last_t,
                    }
                )
        return out

    def is_active(self, rule_name: str) -> bool:
        st = self._state.get(rule_name)
        return st is not None and st.raised_at is not None

    @staticmethod
    def _clear_event(
        rule: ThresholdRule, st: _State, t: float | None, reason: ClearReason
    ) -> AlertEvent | None:
        """The clear event for an active state (and reset it), or ``None`` if not active."""
        if st.raised_at is None:
            st.over_since, st.peak = None, -math.inf
            return None
        at = t if t is not None else (st.last_t if st.last_t is not None else st.raised_at)
        ev = AlertEvent(
            "cleared",
            rule,
            at,
            st.last_value,
            st.raised_at,
            st.over_since if st.over_since is not None else st.raised_at,
            st.peak,
            reason,
        )
        st.raised_at, st.over_since, st.peak = None, None, -math.inf
        return ev
