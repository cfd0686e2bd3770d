"""Signed JSON webhooks for alerts (and, if asked, counts).

Why a queue and a task of its own: a webhook receiver can be slow, down or unreachable,
and ``on_result``/``on_alert`` run on the event loop that also moves every stream's
frames. They only append the encoded message to a bounded queue; one delivery task POSTs
messages in order, each with a timeout and a bounded number of retries with exponential
backoff, so a dead receiver costs at most ``queue_size`` messages of memory and never a
frame. When the queue is full the oldest message is dropped (and counted): the newest state
matters most.

Why a signature: the receiver must be able to tell our messages from anyone else's POSTs.
``X-CrowdCount-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body bytes with the
shared secret (the scheme GitHub and Stripe use, so receivers have code for it). The body is
encoded once, so retries carry the same bytes, signature and ``id`` (receivers de-duplicate
on it). Redirects are not followed: they would send the signed body somewhere else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from crowdcount.model.types import Result
from crowdcount.streamer.alerts import AlertEvent

if TYPE_CHECKING:
    from crowdcount.streamer.config import WebhookConfig

__all__ = ["SIGNATURE_HEADER", "WebhookNotifier", "dumps", "sign", "verify"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CrowdCount-Signature"
EVENT_HEADER = "X-CrowdCount-Event"
DELIVERY_HEADER = "X-CrowdCount-Delivery"

# Worth another try: the receiver or a proxy may recover. Other 4xx mean the request itself
# is refused (bad secret, wrong path) and would be refused again.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _clean(value: Any) -> Any:
    """Non-finite floats become ``null``: strict JSON parsers reject NaN and Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def dumps(payload: Mapping[str, Any]) -> bytes:
    """Compact strict-JSON bytes, as webhooks and MQTT send them."""
    return json.dumps(_clean(dict(payload)), separators=(",", ":"), allow_nan=False).encode()


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Receiver side, constant-time: does ``header`` sign ``body`` with ``secret``?"""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookNotifier:
    """POSTs alert events (and optionally throttled counts) to one URL.

    ``retries`` extra attempts follow a failed one, after ``backoff``, ``2*backoff``, ...
    seconds (capped at ``max_backoff``); then the message is counted in ``failed`` and the
    next one is tried. ``counts_interval`` ``None`` sends alerts only; otherwise each
    stream's counts at most once per that many seconds.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        queue_size: int = 1000,
        counts_interval: float | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff <= 0 or queue_size < 1:
            raise ValueError("need timeout > 0, retries >= 0, backoff > 0, queue_size >= 1")
        self.url = url
        self._secret = secret.encode()
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.queue_size = int(queue_size)
        self.counts_interval = counts_interval
        self._queue: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._last_counts: dict[str, float] = {}
        self._closed = False
        self.sent = 0  # messages delivered (2xx)
        self.failed = 0  # messages given up on after their last attempt
        self.retried = 0  # attempts after a first failure
        self.dropped = 0  # messages discarded because the queue was full or closed
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, cfg: WebhookConfig) -> WebhookNotifier:
        return cls(
            cfg.url,
            cfg.secret,
            timeout=cfg.timeout,
            retries=cfg.retries,
            backoff=cfg.backoff,
            max_backoff=cfg.max_backoff,
            queue_size=cfg.queue_size,
            counts_interval=cfg.counts_interval,
        )

    # ------------------------------------------------------------------ Notifier (a sink)

    async def start(self) -> None:
        """Open the HTTP session and start delivering (idempotent)."""
        if self._closed:
            raise RuntimeError("webhook notifier is closed")
        if self._task is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "crowdcount-webhook/1"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    def on_result(self, result: Result) -> None:
        """Send the stream's counts, at most once per ``counts_interval`` (off when unset)."""
        if self.counts_interval is None:
            return
        stream, t = result.frame.stream_id, result.frame.captured_at
        now = time.monotonic()
        last = self._last_counts.get(stream)
        if last is not None and now - last < self.counts_interval:
            return
        self._last_counts[stream] = now
        self.send(
            "counts",
            {"stream": stream, "t": t, "count": float(result.count),
             "zones": {k: float(v) for k, v in result.zones.items()}},
        )

    def on_alert(self, event: AlertEvent) -> None:
        self.send("alert", event.to_dict())

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue:
            self.dropped += len(self._queue)
            self._queue.clear()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ queueing

    def send(self, kind: str, payload: Mapping[str, Any]) -> str | None:
        """Queue one message ``{"type": kind, "id", "created_at", **payload}``; returns its
        id (``None`` after close). Never blocks; may drop the oldest queued message."""
        if self._closed:
            self.dropped += 1
            return None
        delivery = uuid.uuid4().hex
        body = dumps({"type": kind, "id": delivery, "created_at": time.time(), **payload})
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((kind, delivery, body))
        self._idle.clear()
        self._wake.set()
        return delivery

    async def _drained(self) -> None:
        await self._idle.wait()

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queue),
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ delivery

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            kind, delivery, body = self._queue.popleft()
            try:
                await self._deliver(kind, delivery, body)
            except asyncio.CancelledError:
                self.dropped += 1  # closed while this one was in flight
                raise
            except Exception as exc:  # a bug must not end deliveries for good
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("webhook: delivery %s failed unexpectedly", delivery)

    async def _deliver(self, kind: str, delivery: str, body: bytes) -> bool:
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            EVENT_HEADER: kind,
            DELIVERY_HEADER: delivery,
        }
        error = "not attempted"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                async with self._session.post(
                    self.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return True
                    error = f"HTTP {resp.status}"
                    if resp.status not in _RETRY_STATUS:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.failed += 1
        self.last_error = error
        log.warning(
            "webhook: giving up on %s %s after %d attempt(s): %s",
            kind,
            delivery,
            attempt + 1,
            error,
        )
        return False
