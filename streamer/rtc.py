"""WebRTC signalling and peer lifetime.

Every ``POST /api/rtc/offer`` becomes one ``RTCPeerConnection`` here, in one of two modes:

* ``publish``: the browser sends its camera and gets the annotated stream back on the same
  connection. The camera becomes a ``WebRtcSource`` handed to the app through ``on_source``.
* ``view``: the browser only receives the annotated stream of an existing stream.

The manager owns everything a peer created, because aiortc's ``pc.close()`` does not stop
the tracks a connection was sending: a relay left running kept queueing frames until the
process reached 19 GB (docs/runtime-notes.md). Teardown therefore stops every track and source
explicitly, whichever way the peer ends: a clean close, ICE failure, the app's
``close_peer``, or a watchdog for peers that vanish without a word (aiortc itself only
notices those after ~30 s of failed consent checks, a process-wide constant).

No ICE servers are configured: the server answers with its host candidates, which is what a
browser reaching it directly needs, and no request ever goes to a public STUN server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from crowdcount.streamer.config import STREAM_NAME_RE, STREAM_NAME_RULE
from crowdcount.streamer.sinks.viewer import AnnotatedTrack, ViewerRegistry, ViewerSink
from crowdcount.streamer.sources.webrtc import WebRtcSource

log = logging.getLogger(__name__)

Mode = Literal["publish", "view"]
MODES: tuple[Mode, ...] = ("publish", "view")
MAX_SDP_BYTES = 64 * 1024
_MLINE_RE = re.compile(r"^m=(\w+) (\d+) ", re.MULTILINE)
_FINGERPRINT_RE = re.compile(r"^a=fingerprint:\S+ \S", re.MULTILINE)
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

OnSource = Callable[[WebRtcSource], Awaitable[None] | None]


class OfferError(ValueError):
    """The offer (or the request around it) is malformed: answer HTTP 400 with the message."""


class UnknownStream(LookupError):
    """A viewer asked for a stream that has no viewer sink: answer HTTP 404."""


class PeerLimitReached(RuntimeError):
    """Too many peers at once: answer HTTP 503."""


def default_configuration() -> RTCConfiguration:
    """No STUN/TURN: host candidates only, and nothing is sent to third-party servers."""
    return RTCConfiguration(iceServers=[])


@dataclass(eq=False)
class Peer:
    """Everything one connection owns and must release."""

    id: str
    mode: Mode
    stream_id: str
    pc: RTCPeerConnection
    created_at: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    tracks: list[AnnotatedTrack] = field(default_factory=list)
    source: WebRtcSource | None = None
    close_reason: str | None = None
    watchdog: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None


def _media_sections(sdp: str) -> list[tuple[str, int, str]]:
    """(kind, port, direction) of each m-section of ``sdp``."""
    sections: list[tuple[str, int, str]] = []
    starts = [m.start() for m in _MLINE_RE.finditer(sdp)]
    session_direction = "sendrecv"
    head = sdp[: starts[0]] if starts else sdp
    for d in _DIRECTIONS:
        if re.search(rf"^a={d}\s*$", head, re.MULTILINE):
            session_direction = d
    for i, start in enumerate(starts):
        body = sdp[start : starts[i + 1] if i + 1 < len(starts) else len(sdp)]
        m = _MLINE_RE.match(body)
        assert m is not None
        direction = session_direction
        for d in _DIRECTIONS:
            if re.search(rf"^a={d}\s*$", body, re.MULTILINE):
                direction = d
        sections.append((m.group(1), int(m.group(2)), direction))
    return sections


def validate_offer(sdp: object, type: object, mode: object, stream_id: object) -> None:
    """Reject what the WebRTC stack would choke on (or accept silently) with a message a
    client developer can act on. Raises ``OfferError``."""
    if mode not in MODES:
        raise OfferError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if type != "offer":
        raise OfferError(f"type must be 'offer', got {type!r}")
    if not isinstance(sdp, str):
        raise OfferError(f"sdp must be a string, got {sdp.__class__.__name__}")
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > MAX_SDP_BYTES:
        raise OfferError(f"sdp is {size} bytes, more than the {MAX_SDP_BYTES} allowed")
    if not sdp.strip():
        raise OfferError("sdp is empty")
    first = sdp.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    if first != "v=0":
        raise OfferError(f"sdp must start with 'v=0', starts with {first[:40]!r}")
    sections = _media_sections(sdp)
    video = [(port, d) for kind, port, d in sections if kind == "video"]
    if not video:
        kinds = ", ".join(k for k, _, _ in sections) or "none"
        raise OfferError(f"sdp has no video m-line (m-lines: {kinds})")
    wanted = "sendonly" if mode == "publish" else "recvonly"
    usable = [d for port, d in video if port != 0 and d in ("sendrecv", wanted)]
    if not usable:
        dirs = ", ".join(d for _, d in video)
        need = "send (sendrecv/sendonly)" if mode == "publish" else "receive (sendrecv/recvonly)"
        raise OfferError(f"{mode} offer's video m-line must {need} video, found: {dirs}")
    if mode == "view" and stream_id is None:
        raise OfferError("view mode needs a stream_id")
    if stream_id is not None and (
        not isinstance(stream_id, str) or STREAM_NAME_RE.fullmatch(stream_id) is None
    ):
        raise OfferError(
            f"stream_id must match {STREAM_NAME_RE.pattern} ({STREAM_NAME_RULE}), "
            f"got {stream_id!r}"
        )


class PeerManager:
    """Creates, tracks and tears down the server's WebRTC peers.

    ``viewers`` is the same registry the pipeline feeds, so a viewer of any stream (RTSP,
    file or a browser's camera) gets that stream's annotated frames. ``on_source`` is called
    (and awaited if it returns an awaitable) with each published camera before the answer is
    returned; raising there rejects the offer. ``on_source_closed`` is called after such a
    source was stopped, so the app can unregister the stream.

    ``max_viewers_per_stream``: view offers beyond this many live viewers of one stream are
    refused with ``PeerLimitReached`` (``None``: only ``max_peers`` applies).
    ``idle_timeout``: a connected peer that sent no camera frame and no RTCP receiver report
    for this long is closed (aiortc alone waits ~30 s for ICE consent to expire).
    ``connect_timeout``: a peer that never reaches "connected" is closed after this long.
    """

    def __init__(
        self,
        viewers: ViewerRegistry,
        on_source: OnSource | None = None,
        *,
        on_source_closed: OnSource | None = None,
        fps: float | None = None,
        max_peers: int = 64,
        max_viewers_per_stream: int | None = None,
        connect_timeout: float = 30.0,
        idle_timeout: float = 15.0,
        check_interval: float = 1.0,
        size_wait: float = 2.0,
        configuration: Callable[[], RTCConfiguration] = default_configuration,
    ) -> None:
        self.viewers = viewers
        self.on_source = on_source
        self.on_source_closed = on_source_closed
        self.fps = fps or viewers.fps
        self.max_peers = max_peers
        self.max_viewers_per_stream = max_viewers_per_stream
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.check_interval = check_interval
        self.size_wait = size_wait
        self.configuration = configuration
        self.closed_reasons: dict[str, int] = {}
        self._peers: dict[str, Peer] = {}
        self._publishers: dict[str, Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- gauges ------------------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def track_count(self) -> int:
        """Live outgoing tracks owned by current peers."""
        return sum(1 for p in self._peers.values() for t in p.tracks if t.readyState == "live")

    @property
    def source_count(self) -> int:
        return sum(1 for p in self._peers.values() if p.source is not None and p.source.running)

    def stats(self) -> dict[str, Any]:
        return {
            "peers": self.peer_count,
            "tracks": self.track_count,
            "sources": self.source_count,
            "publishers": sorted(self._publishers),
            "closed": dict(self.closed_reasons),
        }

    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    # -- signalling --------------------------------------------------------------------------

    async def handle_offer(
        self, sdp: object, type: object, mode: object, stream_id: object = None
    ) -> dict[str, str]:
        """Answer one offer. Returns ``{"sdp", "type", "peer_id", "stream_id"}``.

        Raises ``OfferError`` (bad input, incl. a publish ``stream_id`` already in use),
        ``UnknownStream`` (view of a stream without a sink), ``PeerLimitReached``, or
        whatever ``on_source`` raised; no peer is left behind in any of those cases."""
        if self._closed:
            raise PeerLimitReached("peer manager is closed")
        validate_offer(sdp, type, mode, stream_id)
        assert isinstance(sdp, str)
        if len(self._peers) >= self.max_peers:
            raise PeerLimitReached(f"{self.max_peers} peers already connected")
        if mode == "view":
            assert isinstance(stream_id, str)
            if self.viewers.get(stream_id) is None:
                raise UnknownStream(f"no stream {stream_id!r}")
            limit = self.max_viewers_per_stream
            viewing = sum(1 for p in self._peers.values()
                          if p.mode == "view" and p.stream_id == stream_id)
            if limit is not None and viewing >= limit:
                raise PeerLimitReached(
                    f"stream {stream_id!r} already has {viewing} viewers "
                    "(server.max_viewers_per_stream)"
                )
            sid = stream_id
        else:
            sid = stream_id if isinstance(stream_id, str) else f"webrtc-{secrets.token_hex(4)}"
            if sid in self._publishers or sid in self.viewers:
                raise OfferError(f"stream_id {sid!r} is already in use")

        peer_mode: Mode = "view" if mode == "view" else "publish"  # validate_offer checked it
        peer = Peer(secrets.token_urlsafe(12), peer_mode, sid,
                    RTCPeerConnection(self.configuration()))
        self._peers[peer.id] = peer
        if mode == "publish":
            self._publishers[sid] = peer
        try:
            answer = await self._negotiate(peer, sdp)
            if peer.source is not None:
                await peer.source.start()
                if self.on_source is not None:
                    outcome = self.on_source(peer.source)
                    if inspect.isawaitable(outcome):
                        await outcome
        except BaseException:
            await self.close_peer(peer.id, "rejected")
            raise
        peer.watchdog = self._spawn(self._watch(peer))
        log.info("peer %s (%s %s) answered", peer.id, mode, sid)
        return {"sdp": answer.sdp, "type": answer.type, "peer_id": peer.id, "stream_id": sid}

    async def _negotiate(self, peer: Peer, sdp: str) -> RTCSessionDescription:
        pc = peer.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and peer.connected_at is None:
                peer.connected_at = time.monotonic()
            elif state in ("failed", "closed") and peer.closing is None:
                self._spawn(self.close_peer(peer.id, f"connection {state}"))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise OfferError(f"sdp rejected: {exc}") from exc
        # aiortc accepts an offer without a DTLS fingerprint, then fails an assertion in a
        # background task; the peer would hold its sockets until the connect timeout.
        if _FINGERPRINT_RE.search(sdp) is None:
            raise OfferError("sdp rejected: no a=fingerprint line (DTLS fingerprint)")

        chosen = self._choose_transceiver(peer)
        if peer.mode == "publish":
            sink = self.viewers.sink(peer.stream_id)
        else:
            found = self.viewers.get(peer.stream_id)
            if found is None:  # removed while the offer was being parsed
                raise UnknownStream(f"no stream {peer.stream_id!r}")
            sink = found
        if peer.mode == "publish":
            track = chosen.receiver.track
            assert track is not None  # validate_offer checked the offer sends video
            peer.source = WebRtcSource(peer.stream_id, track, on_size=sink.set_size)
            out = sink.track(self.fps, size_wait=self.size_wait)
            chosen.direction = "sendrecv"
        else:
            out = sink.track(self.fps)
            chosen.direction = "sendonly"  # never decode what a viewer might send
        peer.tracks.append(out)
        chosen.sender.replaceTrack(out)
        out.on("ended", lambda: self._on_track_ended(peer, sink))

        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise OfferError(f"cannot answer this offer: {exc}") from exc
        return pc.localDescription

    def _choose_transceiver(self, peer: Peer) -> RTCRtpTransceiver:
        """The first video m-line that can carry this mode; every other m-line is set
        inactive, because aiortc queues every decoded frame of a remote track without bound
        and nothing here would read an audio track or a second camera."""
        need = "recv" if peer.mode == "publish" else "send"
        chosen: RTCRtpTransceiver | None = None
        for t in peer.pc.getTransceivers():
            offered = t._offerDirection or "inactive"
            if chosen is None and t.kind == "video" and need in offered:
                chosen = t
            else:
                t.direction = "inactive"
        if chosen is None:
            raise OfferError(f"no video m-line usable for {peer.mode}")
        return chosen

    def _on_track_ended(self, peer: Peer, sink: ViewerSink) -> None:
        """Our outgoing track ends when its stream goes away (nothing left to show) or when
        aiortc's sender hits a closed transport (the peer hung up): either way the
        connection goes too."""
        if peer.closing is None and peer.id in self._peers:
            reason = "stream ended" if sink.closed else "peer hung up"
            self._spawn(self.close_peer(peer.id, reason))

    # -- liveness ----------------------------------------------------------------------------

    async def _last_report(self, peer: Peer) -> float | None:
        """Monotonic time of the newest RTCP receiver report about our outgoing video."""
        newest: float | None = None
        for sender in peer.pc.getSenders():
            if sender.track is None:
                continue
            with contextlib.suppress(Exception):
                report = await sender.getStats()
                for stats in report.values():
                    if stats.type == "remote-inbound-rtp":
                        age = time.time() - stats.timestamp.timestamp()
                        seen = time.monotonic() - max(0.0, age)
                        newest = seen if newest is None else max(newest, seen)
        return newest

    async def _watch(self, peer: Peer) -> None:
        """Close a peer that never connects or goes silent; a browser tab that crashed or a
        laptop that dropped off Wi-Fi sends no BYE, and its tracks and source must not live
        on until consent expiry."""
        try:
            while peer.closing is None:
                await asyncio.sleep(self.check_interval)
                now = time.monotonic()
                if peer.connected_at is None:
                    if now - peer.created_at > self.connect_timeout:
                        reason = "connect timeout"
                        break
                    continue
                activity = [peer.connected_at]
                if peer.source is not None and peer.source.last_frame_at is not None:
                    activity.append(peer.source.last_frame_at)
                if now - max(activity) > self.idle_timeout:
                    report = await self._last_report(peer)
                    if report is None or now - report > self.idle_timeout:
                        reason = "idle timeout"
                        break
            else:
                return
        except asyncio.CancelledError:
            return
        await self.close_peer(peer.id, reason)

    # -- teardown ----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close_peer(self, peer_id: str, reason: str = "closed by server") -> bool:
        """Close one peer and release all it owns; False if no such peer. Idempotent."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        if peer.closing is None:
            peer.close_reason = reason
            peer.closing = asyncio.ensure_future(self._teardown(peer))
        await asyncio.shield(peer.closing)
        return True

    async def _teardown(self, peer: Peer) -> None:
        me = asyncio.current_task()
        watchdog = peer.watchdog
        if watchdog is not None and watchdog is not me and not watchdog.done():
            watchdog.cancel()
        for track in peer.tracks:
            track.stop()
        if peer.source is not None:
            try:
                await peer.source.stop()
            except Exception:
                log.exception("stopping source of peer %s failed", peer.id)
        try:
            await asyncio.wait_for(peer.pc.close(), 5.0)
        except Exception:
            log.exception("closing peer %s failed", peer.id)
        # aiortc leaves the remote tracks "live" after close: end them so nothing waits.
        for transceiver in peer.pc.getTransceivers():
            if transceiver.receiver.track is not None:
                transceiver.receiver.track.stop()
        self._peers.pop(peer.id, None)
        reason = peer.close_reason or "closed"
        self.closed_reasons[reason] = self.closed_reasons.get(reason, 0) + 1
        if peer.mode == "publish" and self._publishers.get(peer.stream_id) is peer:
            del self._publishers[peer.stream_id]
            self.viewers.remove(peer.stream_id)  # ends every viewer of this camera
            if peer.source is not None and self.on_source_closed is not None:
                try:
                    outcome = self.on_source_closed(peer.source)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("on_source_closed for %s failed", peer.stream_id)
        log.info("peer %s (%s %s) closed: %s", peer.id, peer.mode, peer.stream_id, reason)

    async def close(self) -> None:
        """Close every peer (server shutdown); no new offers are accepted after this."""
        self._closed = True
        await asyncio.gather(
            *(self.close_peer(pid, "server shutdown") for pid in list(self._peers)),
            return_exceptions=True,
        )
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
