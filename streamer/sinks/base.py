"""The one interface every sink speaks.

Sinks (count store, live feed, metrics, WebRTC viewer tracks) are called on the event loop
thread, once per result, in the pipeline's dispatch. The loop also answers HTTP and moves
every other stream's frames, so ``on_result`` must return at once: a sink that does I/O or
heavy work keeps only the newest result (or a bounded buffer) and does the work on a task or
thread of its own. An exception from a sink is logged and does not reach other sinks.
"""

from __future__ import annotations

from collections.abc import Mapping
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
class Notifier(Protocol):
    """An outside system told about counts and alerts (webhook, MQTT).

    Why a second interface next to ``Sink``: notifiers want zone counts and alert events,
    which are derived once per result by ``streamer.integrations.Integrations`` rather than
    recomputed by every notifier. The same rule holds: ``notify_*`` are called on the event
    loop and must return at once (queue, rate-limit or drop; never wait on the network).
    ``start`` is awaited once on the running loop before the first notification and
    ``close`` once at shutdown (it may wait briefly to deliver what is queued).
    """

    async def start(self) -> None: ...

    def notify_counts(
        self, stream: str, t: float, total: float, zones: Mapping[str, float]
    ) -> None:
        """The latest counts of ``stream`` at ``t`` (unix seconds); may be rate-limited."""
        ...

    def notify_alert(self, event: AlertEvent) -> None:
        """An alert was raised or cleared; must not be rate-limited away."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamAware(Protocol):
    """A notifier that also keeps a description of streams and rules outside (Home
    Assistant discovery over MQTT): told when the rule set changes and when a stream goes
    away, so that entities for rules and streams that no longer exist are removed."""

    def set_rules(self, rules: tuple[ThresholdRule, ...]) -> None: ...

    def forget_stream(self, stream: str) -> None: ...
