"""The one way a result (or an alert) reaches whatever consumes it: a sink.

Sinks (count history and live feed, metrics, WebRTC viewers, webhook and MQTT notifiers)
are registered once with ``Pipeline.add_sink`` and are called on the event loop thread, in
the pipeline's dispatch: ``on_result`` once per result of every stream (a sink that cares
about one stream filters by ``result.frame.stream_id``), and ``on_alert`` for every alert
raised or cleared, if the sink has that method. The loop also answers HTTP and moves every
other stream's frames, so both must return at once: a sink that does I/O or heavy work keeps
only the newest item (or a bounded buffer) and does the work on a task or thread of its own.
An exception from a sink is counted and logged and does not reach other sinks.

Why alerts travel the same path: every consumer of alerts (the alert log, the live feed,
metrics, notifiers) also consumes results, so one registration and one fan-out serve both,
and an alert reaches them all or is logged as failing for the one that broke.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from crowdcount.model.types import Result

if TYPE_CHECKING:
    from crowdcount.streamer.alerts import AlertEvent, ThresholdRule


@runtime_checkable
class Sink(Protocol):
    def on_result(self, result: Result) -> None:
        """Take one result; never block, never await."""
        ...


@runtime_checkable
class AlertSink(Sink, Protocol):
    """A sink that also wants alerts (the pipeline checks for ``on_alert`` when the sink is
    added)."""

    def on_alert(self, event: AlertEvent) -> None:
        """An alert was raised or cleared; never block, and never rate-limit it away."""
        ...


@runtime_checkable
class Notifier(AlertSink, Protocol):
    """An alert sink that talks to an outside system (webhook, MQTT), so it has a
    lifecycle: ``start`` is awaited once on the running loop before it is added to the
    pipeline, ``close`` once at shutdown (it may wait briefly to deliver what is queued).
    Count notifications may be rate-limited; alerts must not be."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamAware(Protocol):
    """A notifier that also keeps a description of streams and rules outside (Home
    Assistant discovery over MQTT): told when the rule set changes and when a stream goes
    away, so that entities for rules and streams that no longer exist are removed."""

    def set_rules(self, rules: tuple[ThresholdRule, ...]) -> None: ...

    def forget_stream(self, stream: str) -> None: ...
