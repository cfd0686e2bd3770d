"""What the API reports about one stream."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class StreamState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"
    STOPPED = "stopped"


@dataclass(slots=True)
class StreamStatus:
    """Mutable, owned by one source; read by the API. ``fps_in`` counts decoded frames,
    ``fps_out`` processed ones, ``dropped`` frames replaced by a newer one before the model
    saw them."""

    state: StreamState = StreamState.STARTING
    fps_in: float = 0.0
    fps_out: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_count: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RateMeter:
    """Events per second over windows of at least one second (fps in and out)."""

    rate: float = 0.0
    _t0: float = field(default_factory=time.monotonic)
    _n: int = 0

    def tick(self, now: float | None = None) -> float:
        """Count one event; returns the rate of the last complete window."""
        now = time.monotonic() if now is None else now
        self._n += 1
        if now - self._t0 >= 1.0:
            self.rate = self._n / (now - self._t0)
            self._t0, self._n = now, 0
        return self.rate
