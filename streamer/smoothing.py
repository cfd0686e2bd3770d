"""Per-stream exponential smoothing of counts.

A raw per-frame count jitters by several people from frame to frame even when the crowd is
still, which makes a live number unreadable and a chart noisy. The smoother is driven by the
frames' own timestamps rather than by a per-sample factor so that the same time constant
means the same thing for a 30 fps camera, a 2 fps ``fps_limit`` stream and a stream that
stalls and resumes: after a gap of several time constants the output simply jumps to the new
value instead of dragging an old one along.
"""

from __future__ import annotations

import math
import threading


class Ema:
    """Exponential moving average, one state per stream id.

    Each update moves the state towards the new value by ``1 - exp(-dt / tau)``, where ``dt``
    is the time since that stream's previous sample: this is the exact discretisation of a
    first-order low-pass filter, so irregular frame spacing gives the same response as
    regular spacing. ``tau <= 0`` disables smoothing (the value passes through).

    A sample whose timestamp is not after the previous one (a duplicate, or a clock stepping
    back) does not move the state, because ``dt <= 0`` carries no evidence of elapsed time;
    it is reported as the current smoothed value.

    Thread-safe: the runtime may call it from a worker thread while the API reads ``value``.
    """

    def __init__(self, tau: float = 2.0) -> None:
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, got {tau!r}")
        self.tau = float(tau)
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}  # stream id -> (t, value)

    def update(self, stream_id: str, value: float, t: float) -> float:
        """Feed one sample taken at ``t`` (seconds, any epoch) and return the smoothed value."""
        value = float(value)
        if not math.isfinite(value):
            # A NaN would poison the state forever; keep the last good value instead.
            current = self.value(stream_id)
            return value if current is None else current
        with self._lock:
            prev = self._state.get(stream_id)
            if prev is None or self.tau <= 0:
                self._state[stream_id] = (t, value)
                return value
            t0, v0 = prev
            dt = t - t0
            if dt <= 0:
                return v0
            alpha = -math.expm1(-dt / self.tau)  # 1 - exp(-dt/tau), accurate for small dt
            v = v0 + alpha * (value - v0)
            self._state[stream_id] = (t, v)
            return v

    def value(self, stream_id: str) -> float | None:
        """The latest smoothed value, or ``None`` before the stream's first sample."""
        with self._lock:
            prev = self._state.get(stream_id)
        return None if prev is None else prev[1]

    def reset(self, stream_id: str | None = None) -> None:
        """Forget one stream (e.g. after it is removed or reconnects to another scene), or all."""
        with self._lock:
            if stream_id is None:
                self._state.clear()
            else:
                self._state.pop(stream_id, None)
