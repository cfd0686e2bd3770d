"""What the API reports about one stream."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
    """One stream's live figures; read by the API and metrics at any time.

    Why every counter has exactly one writer: the source's decode thread, the pipeline's
    pump and its dispatcher all update a stream's figures, and ``x += n`` from two threads
    can lose updates (read, add, write is not atomic). So each counter belongs to one of
    them and a figure fed by two is a sum read on demand:

    * the source's thread: ``state`` (and ``last_error``) while it runs, ``frames_in``,
      ``fps_in``, ``reconnects``, ``source_dropped`` (frames it replaced before the
      pipeline took them) and the decode figures (``sources/decoding.py``): ``decode``
      (``"keyframes"`` or ``"full"``, ``None`` until the keyframe interval is known),
      ``keyframe_interval`` (seconds, learnt from the stream), ``decode_note`` (why a
      camera that could not be decoded keyframes-only is not), ``frames_decoded`` and
      ``decode_seconds`` (CPU seconds of its decode thread), ``frame_size`` (the camera's
      (width, height), in which zones are drawn, whatever size the model sees);
    * the pipeline, on the event loop: ``batch_dropped`` (frames the batcher replaced),
      ``frames_out``, ``fps_out`` and ``last_count``; it also sets ``state``/``last_error``
      once when a source fails outside its own thread (plain assignments: the last wins).

    ``dropped`` (frames replaced by a newer one before the model saw them) is
    ``source_dropped + batch_dropped``; ``to_dict`` reports it in place of the parts.
    """

    state: StreamState = StreamState.STARTING
    fps_in: float = 0.0
    fps_out: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    source_dropped: int = 0
    batch_dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_count: float | None = None
    decode: str | None = None
    keyframe_interval: float | None = None
    decode_note: str | None = None
    frames_decoded: int = 0
    decode_seconds: float = 0.0
    frame_size: tuple[int, int] | None = None

    @property
    def dropped(self) -> int:
        return self.source_dropped + self.batch_dropped

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "fps_in": self.fps_in, "fps_out": self.fps_out,
                "frames_in": self.frames_in, "frames_out": self.frames_out,
                "dropped": self.dropped, "reconnects": self.reconnects,
                "last_error": self.last_error, "last_count": self.last_count,
                "decode": self.decode, "keyframe_interval": self.keyframe_interval,
                "decode_note": self.decode_note, "frames_decoded": self.frames_decoded,
                "decode_seconds": round(self.decode_seconds, 3),
                "frame_size": list(self.frame_size) if self.frame_size else None}


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
