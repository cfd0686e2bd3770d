"""What the API reports about one stream."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
