"""In-process pub/sub for the live push of counts, and its Server-Sent Events endpoint.

Why bounded queues that drop the oldest item: counts are produced at frame rate for every
stream and a viewer only cares about the newest ones. A slow browser tab (or a stalled
proxy) must neither slow the pipeline down nor make the service hold an ever-growing
backlog, so ``publish`` never waits, and a full subscriber queue loses its oldest item,
which also keeps what a lagging viewer does see as fresh as possible.

Why SSE rather than a WebSocket: the push is one-way, SSE goes through proxies as plain
HTTP, and browsers reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from typing import Any

from aiohttp import web

_CLOSED = object()


class Subscription:
    """One subscriber's bounded queue; an async iterator and an async context manager.

    It is registered when created (not on first iteration), so nothing published between
    ``subscribe()`` and the first ``await`` is missed. Iteration ends when the feed is
    closed. Leave the ``async with`` block, call ``close()``, or just drop the object (the
    feed holds it weakly) to unsubscribe.
    """

    def __init__(self, feed: CountFeed, stream_id: str | None, maxsize: int,
                 only: frozenset[str] | None = None) -> None:
        self.feed = feed
        self.stream_id = stream_id
        self.only = only  # an all-stream subscriber's choice of streams (None: all)
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._closed = False

    def _put(self, item: Any) -> bool:
        """Enqueue without waiting; returns True when an older item had to be dropped."""
        dropped = False
        if self._queue.full():
            self._queue.get_nowait()
            dropped = True
        self._queue.put_nowait(item)
        return dropped

    def _end(self) -> None:
        """Wake a waiting reader now; items still queued are discarded for a quick exit."""
        if self._closed:
            return
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    def close(self) -> None:
        """Unsubscribe; a reader waiting in ``__anext__`` stops."""
        self.feed._remove(self)
        self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class CountFeed:
    """Fan-out of count items to live subscribers, per stream or for all streams.

    Must be used from the event loop's thread; a publisher on another thread should go
    through ``loop.call_soon_threadsafe(feed.publish, stream_id, item)``.
    """

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.dropped = 0  # items dropped across all subscribers, for metrics
        self.closed = False
        # Weak so a subscription abandoned by a broken-out ``async for`` costs nothing.
        self._subs: dict[str | None, weakref.WeakSet[Subscription]] = {}

    def publish(self, stream_id: str, item: dict[str, Any]) -> None:
        """Deliver ``item`` to the stream's subscribers and to all-stream subscribers.

        Never blocks. ``"stream_id"`` is added to the item when missing so that all-stream
        subscribers can tell items apart; the same dict is shared by every subscriber and
        must not be mutated afterwards.
        """
        if self.closed:
            return
        if "stream_id" not in item:
            item = {"stream_id": stream_id, **item}
        alert = item.get("type") == "alert"
        for key in (stream_id, None):
            subs = self._subs.get(key)
            if not subs:
                continue
            for sub in list(subs):
                # Alerts reach every all-stream subscriber: a page lists them all.
                if sub.only is not None and stream_id not in sub.only and not alert:
                    continue
                if sub._put(item):
                    sub.dropped += 1
                    self.dropped += 1

    def subscribe(self, stream_id: str | None = None,
                  only: frozenset[str] | None = None) -> Subscription:
        """Start receiving one stream's items (``None``: every stream's, or with ``only``
        the items of those streams plus every alert)."""
        sub = Subscription(self, stream_id, self.maxsize, only)
        if self.closed:
            sub._end()
        else:
            self._subs.setdefault(stream_id, weakref.WeakSet()).add(sub)
        return sub

    def subscriber_count(self, stream_id: str | None = None) -> int:
        """Live subscribers of one stream (not counting all-stream ones), e.g. for a limit."""
        subs = self._subs.get(stream_id)
        return len(subs) if subs else 0

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.stream_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.stream_id]

    def close(self) -> None:
        """End every subscription now (for a quick shutdown); later publishes are ignored."""
        self.closed = True
        subs = [s for group in self._subs.values() for s in group]
        self._subs.clear()
        for sub in subs:
            sub._end()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def sse_response(
    request: web.Request,
    feed: CountFeed,
    stream_id: str | None,
    *,
    keepalive: float = 15.0,
    poll: float = 1.0,
    only: frozenset[str] | None = None,
) -> web.StreamResponse:
    """Serve ``feed`` items for ``stream_id`` (``None``: all streams) as Server-Sent Events.

    Each item becomes ``data: <json>\\n\\n``; a ``: keepalive`` comment goes out after
    ``keepalive`` seconds of silence so proxies keep the connection open. aiohttp does not
    cancel a handler when its client disconnects, so the connection is checked every
    ``poll`` seconds and the subscription (which may count against a viewer limit) is
    released within about that long rather than at the next write. The response ends
    cleanly when the feed is closed. ``only`` narrows an all-stream feed (see
    ``CountFeed.subscribe``).
    """
    sub = feed.subscribe(stream_id, only)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        it = aiter(sub)
        next_item: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                if next_item is None:
                    next_item = asyncio.ensure_future(anext(it))
                quiet = loop.time() - last_write
                timeout = max(0.0, min(poll, keepalive - quiet))
                done, _ = await asyncio.wait({next_item}, timeout=timeout)
                if next_item in done:
                    try:
                        item = next_item.result()
                    except StopAsyncIteration:
                        break
                    next_item = None
                    data = json.dumps(item, separators=(",", ":"), default=str)
                    await resp.write(f"data: {data}\n\n".encode())
                    last_write = loop.time()
                    continue
                if _client_gone(request):
                    break
                if loop.time() - last_write >= keepalive:
                    await resp.write(b": keepalive\n\n")
                    last_write = loop.time()
        finally:
            if next_item is not None and not next_item.done():
                next_item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_item
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
    except ConnectionError:
        pass  # the client went away mid-write: nothing left to tell it
    finally:
        sub.close()
    return resp
