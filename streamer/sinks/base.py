"""The one interface every sink speaks.

Sinks (count store, live feed, metrics, WebRTC viewer tracks) are called on the event loop
thread, once per result, in the pipeline's dispatch. The loop also answers HTTP and moves
every other stream's frames, so ``on_result`` must return at once: a sink that does I/O or
heavy work keeps only the newest result (or a bounded buffer) and does the work on a task or
thread of its own. An exception from a sink is logged and does not reach other sinks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from model.types import Result


@runtime_checkable
class Sink(Protocol):
    def on_result(self, result: Result) -> None:
        """Take one result; never block, never await."""
        ...
