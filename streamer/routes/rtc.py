"""WebRTC signalling: ``POST /api/rtc/offer`` and ``DELETE /api/rtc/peers/{peer_id}``.

A ``publish`` offer turns the browser's camera into a stream (kind ``webrtc``, never
persisted, gone when the peer hangs up) and returns its annotated video on the same
connection; a ``view`` offer receives the annotated video of any live stream.
"""

from __future__ import annotations

from aiohttp import web

from crowdcount.streamer.routes.common import (
    ApiError,
    http_errors,
    read_json_object,
    service_of,
)
from crowdcount.streamer.rtc import OfferError, PeerLimitReached, UnknownStream
from crowdcount.streamer.service import StreamConflict


async def offer(request: web.Request) -> web.Response:
    """Body ``{"sdp", "type": "offer", "mode": "publish"|"view", "stream_id"?}`` ->
    ``{"sdp", "type": "answer", "peer_id", "stream_id"}``."""
    svc = service_of(request)
    data = await read_json_object(request, {"sdp", "type", "mode", "stream_id"})
    with http_errors({OfferError: 400, UnknownStream: 404, StreamConflict: 409,
                      PeerLimitReached: 503}):
        answer = await svc.peers.handle_offer(
            data.get("sdp"), data.get("type"), data.get("mode"), data.get("stream_id")
        )
    return web.json_response(answer)


async def close_peer(request: web.Request) -> web.Response:
    peer_id = request.match_info["peer_id"]
    if not await service_of(request).peers.close_peer(peer_id, "closed by client"):
        raise ApiError(404, f"no peer {peer_id[:40]!r}")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/rtc/offer", offer)
    app.router.add_delete("/api/rtc/peers/{peer_id}", close_peer)
