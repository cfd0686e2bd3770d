"""WebRTC signalling: ``POST /api/rtc/offer`` and ``DELETE /api/rtc/peers/{peer_id}``.

A ``publish`` offer turns the browser's camera into a stream (kind ``webrtc``, never
persisted, gone when the peer hangs up) and returns its annotated video on the same
connection; a ``view`` offer receives the annotated video of any live stream.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from crowdcount.streamer.config import StreamName
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    http_errors,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import RtcAnswer
from crowdcount.streamer.rtc import MAX_SDP_BYTES, OfferError, PeerLimitReached, UnknownStream
from crowdcount.streamer.service import StreamConflict


class OfferBody(BaseModel):
    """A non-trickle WebRTC offer. ``validate_offer`` checks it field by field (with messages
    about the SDP a client developer can act on); this model states the same shape."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sdp: str = Field(max_length=MAX_SDP_BYTES, description="the offer's SDP, starting v=0, "
                     "with a video m-line that sends (publish) or receives (view)")
    type: Literal["offer"]
    mode: Literal["publish", "view"] = Field(
        description="publish: the browser's camera becomes a stream; view: watch one")
    stream_id: StreamName | None = Field(
        None, description="view: the stream to watch (required); publish: the new stream's "
                          "name (default: webrtc-<random>)")


@operation(Operation(
    "WebRTC signalling: answer an offer", "live",
    {200: Reply("the answer", RtcAnswer),
     **dict([error(400, "a bad offer"), error(404, "view: no such stream"),
             error(409, "publish: max_streams reached"), error(413), error(415),
             error(503, "too many peers, or viewers of that stream")])},
    body=OfferBody,
))
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


@operation(Operation(
    "Hang up a WebRTC peer", "live",
    {204: Reply("closed"), **dict([error(404)])}, path_params={"peer_id": "from the answer"},
))
async def close_peer(request: web.Request) -> web.Response:
    peer_id = request.match_info["peer_id"]
    if not await service_of(request).peers.close_peer(peer_id, "closed by client"):
        raise ApiError(404, f"no peer {peer_id[:40]!r}")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/rtc/offer", offer)
    app.router.add_delete("/api/rtc/peers/{peer_id}", close_peer)
