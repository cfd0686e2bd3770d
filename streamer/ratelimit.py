"""A per-client sliding-window rate limit (uploads per IP per minute).

Why a sliding window of timestamps rather than a token bucket: the setting is documented as
"uploads per minute", and a window enforces exactly that (a bucket would allow a full
minute's worth again after one idle minute plus the refill). Windows are small (the limit
is tens per minute) and idle clients are pruned, so memory stays bounded.

Clients are keyed by the peer address aiohttp reports; behind a reverse proxy that is the
proxy, so limit there (forwarded headers are not trusted: any client can forge them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("need limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, client: str) -> float:
        """Record one request; 0.0 if allowed, else seconds until it would be allowed."""
        now = self._clock()
        hits = self._hits.get(client)
        if hits is None:
            if len(self._hits) >= self.max_clients:
                self._prune(now)
            hits = self._hits[client] = deque()
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.001, self.window - (now - hits[0]))
        hits.append(now)
        return 0.0

    def _prune(self, now: float) -> None:
        idle = [k for k, h in self._hits.items() if not h or now - h[-1] >= self.window]
        for key in idle:
            del self._hits[key]
        if len(self._hits) >= self.max_clients:  # all active: forget the oldest half
            oldest = sorted(self._hits, key=lambda k: self._hits[k][-1])
            for key in oldest[: len(oldest) // 2]:
                del self._hits[key]
