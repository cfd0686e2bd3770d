"""Decode what will be counted: one helper for every PyAV source (RTSP, files, the isolated
decoder's child).

Why: a crowd count needs about one picture a second, and the cameras people own send 1080p
H.264 at 15-30 frames/s with a keyframe every 1-2 s. Decoding every frame of such a camera
costs ~21 % of a core (measured: 8.6 CPU-ms per 1080p frame); decoding only its keyframes
(``codec_context.skip_frame = "NONKEY"``) ~1 % at one count a second (12.3 ms per
keyframe). So when the stream's target rate is at or below its keyframe rate, only keyframes
are decoded; otherwise every frame is (as before), and still only the frames the batcher
takes are converted (``Frame.pixels``).

The keyframe interval is learnt from the stream itself, never configured: the packets'
timestamps between two keyframes give it. Each connection (or pass through a file) with a
target rate starts keyframes-only, so that a start-up or a reconnect storm (every camera
connecting at once after a network blip) costs each camera a keyframe decode, not a GOP of
full decoding. The decision is re-made at every keyframe and whenever a keyframe is overdue,
so a camera whose GOP is (or grows) too long for the rate falls back to the full decode by
itself. Switching from keyframes-only to full waits for the next keyframe before publishing:
a P-frame decoded after skipped ones would be a smeared picture; a long-GOP camera
therefore shows its second picture one GOP after its first.

One FFmpeg thread per decoder (``thread_count = 1``): FFmpeg's default starts a thread pool
per decoder sized to the machine, which at 64 cameras is hundreds of threads, and frame
threading adds a frame of delay per thread. It also makes the decode thread's CPU time
(``time.thread_time``) the camera's whole decode cost, reported as ``decode_seconds``.

Conversion scales inside the decoder's converter (``VideoFrame.reformat`` to the model's
input size in one step): no full-size RGB copy of a 1080p picture the model never sees.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import av

from crowdcount.model.types import RGB
from crowdcount.streamer.sources.base import rgb_later
from crowdcount.streamer.status import StreamStatus

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

#: Keyframes may be this much further apart than the target period and still count as
#: "fast enough" (timestamps of live cameras jitter by a few percent).
KEYFRAME_TOLERANCE = 1.05
#: Keyframe intervals remembered; the longest of them decides (one short GOP after a scene
#: cut must not switch a long-GOP camera to keyframes-only).
INTERVALS_KEPT = 4


class Picture(NamedTuple):
    """What ``Source._publish`` takes of one decoded frame: its lazy conversion at the
    model's size, the camera's (width, height) when that scales it down (else ``None``),
    and then the lazy conversion at the camera's size (``Frame.full``)."""

    pixels: Callable[[], RGB]
    source_size: tuple[int, int] | None
    full: Callable[[], RGB] | None


def _same_picture(first: av.Packet, packet: av.Packet) -> bool:
    """Whether ``packet`` is another slice of ``first``'s picture. FFmpeg's RTSP demuxer
    hands over a multi-slice H.264 picture (cameras and x264 with slice threads send them)
    as one packet per slice with the same timestamp, and the decoder then makes a picture of
    each slice with the rest concealed (measured: every 1080p keyframe of a two-slice clip
    became two frames, each with half of it wrong). Before RTCP has synchronised the clock
    the first slice may carry no timestamp."""
    if packet.pts is not None and packet.pts == first.pts:
        return True
    return first.pts is None and first.is_keyframe and packet.is_keyframe


def _joined(packets: list[av.Packet]) -> av.Packet | None:
    """One packet of a whole picture (slices are self-delimiting in both H.264 framings, so
    joining them end to end is the picture's access unit)."""
    if len(packets) <= 1:
        return packets[0] if packets else None
    first = packets[-1] if packets[0].pts is None else packets[0]
    unit = av.Packet(b"".join(bytes(p) for p in packets))
    unit.pts, unit.dts, unit.time_base = first.pts, first.dts, first.time_base
    unit.is_keyframe = any(p.is_keyframe for p in packets)
    unit.stream = first.stream
    return unit


class Decoder:
    """Decodes one source's video, keyframes-only while its keyframes meet ``target_fps``.

    ``target_fps`` ``None``: every frame is wanted (no keyframes-only mode). ``max_side``:
    the longer side pictures are converted to (``None``: full size). Writes the status's
    decode figures (``decode``, ``keyframe_interval``, ``decode_note``,
    ``frames_decoded``, ``decode_seconds``) from the calling (decode) thread only.
    """

    def __init__(self, status: StreamStatus, target_fps: float | None = None,
                 max_side: int | None = None) -> None:
        if target_fps is not None and target_fps <= 0:
            raise ValueError("target_fps must be positive")
        self.status = status
        self.target_fps = target_fps
        self.max_side = max_side
        self._intervals: deque[float] = deque(maxlen=INTERVALS_KEPT)
        self._last_key: float | None = None
        self._keyframes_only = False
        self._await_key = False  # after a switch to full: publish only whole pictures
        self._resume_known = False  # ... until the keyframe fed after it (its pts) is out
        self._resume_pts: int | None = None

    @property
    def keyframes_only(self) -> bool:
        return self._keyframes_only

    def picture(self, frame: av.VideoFrame) -> Picture:
        """The frame's lazy, scaled RGB conversion (see ``rgb_later``) and, when it scales,
        the camera's (width, height) and the full-size conversion, for
        ``Source._publish``."""
        scaled = self.max_side is not None and max(frame.width, frame.height) > self.max_side
        if not scaled:
            return Picture(rgb_later(frame), None, None)
        return Picture(rgb_later(frame, self.max_side), (frame.width, frame.height),
                       rgb_later(frame))

    def frames(self, container: InputContainer, stream: VideoStream,
               on_packet: Callable[[], None] | None = None) -> Iterator[av.VideoFrame]:
        """The frames worth publishing from ``container`` (one connection or file pass).

        ``on_packet`` runs for every packet read, so a watchdog can tell "no data" from
        "no decoded frame" (keyframes-only decodes one frame a second or less)."""
        self._start(stream)
        status = self.status
        codec = stream.codec_context
        base = stream.time_base
        cpu = time.thread_time
        mark = cpu()
        pending: list[av.Packet] = []
        for packet in container.demux(stream):
            if on_packet is not None:
                on_packet()
            if packet.size and (not pending or _same_picture(pending[0], packet)):
                pending.append(packet)
                continue
            # A new picture began (or the stream ended): the pending one is complete.
            for unit in (_joined(pending), *(() if packet.size else (packet,))):
                if unit is None:
                    continue
                if unit.size and unit.is_keyframe:
                    self._keyframe(codec, unit.pts, base)
                    if self._await_key and not self._resume_known:
                        self._resume_known, self._resume_pts = True, unit.pts
                elif self._keyframes_only and unit.size:
                    self._check_overdue(codec, unit.pts, base)
                decoded = unit.decode()
                status.decode_seconds += cpu() - mark
                for frame in decoded:
                    status.frames_decoded += 1
                    status.frame_size = (frame.width, frame.height)
                    if self._await_key and not self._whole(frame):
                        continue
                    yield frame
                mark = cpu()
            pending = [packet] if packet.size else []

    # -- the keyframe rule ---------------------------------------------------------------------

    def _start(self, stream: VideoStream) -> None:
        """A new connection or pass: learn the interval again (keyframes-only meanwhile)."""
        codec = stream.codec_context
        codec.thread_count = 1
        self._intervals.clear()
        self._last_key = None
        self._await_key = False
        self._keyframes_only = self.target_fps is not None  # optimistic, see the docstring
        codec.skip_frame = "NONKEY" if self._keyframes_only else "DEFAULT"
        if self.target_fps is None:
            self._set_mode("full", None)

    def _whole(self, frame: av.VideoFrame) -> bool:
        """After a switch to the full decode: only keyframes are whole pictures until the
        first keyframe fed after the switch comes out (the decoder may still hand over a
        keyframe, and frames after it, that it got before the switch)."""
        if not frame.key_frame:
            return False
        if self._resume_known and (self._resume_pts is None or frame.pts is None
                                   or frame.pts >= self._resume_pts):
            self._await_key = False
        return True

    def _seconds(self, pts: int | None, base: object) -> float:
        if pts is None or base is None:
            return time.monotonic()  # no timestamps: arrival time is the next best clock
        return float(pts * base)  # type: ignore[operator]

    def _keyframe(self, codec: av.VideoCodecContext, pts: int | None, base: object) -> None:
        t = self._seconds(pts, base)
        if self._last_key is not None and t > self._last_key:
            self._intervals.append(t - self._last_key)
            self.status.keyframe_interval = round(max(self._intervals), 3)
        self._last_key = t
        if self.target_fps is None or not self._intervals:
            return
        self._decide(codec, max(self._intervals) <= self._allowed())

    def _check_overdue(self, codec: av.VideoCodecContext, pts: int | None,
                       base: object) -> None:
        """A keyframe later than the target allows: decode everything from now on (the
        interval is then learnt at the next keyframe, which ends the wait)."""
        if self._last_key is None:
            return
        overdue = self._seconds(pts, base) - self._last_key
        if overdue > self._allowed():
            self._intervals.append(overdue)
            self.status.keyframe_interval = round(max(self._intervals), 3)
            self._decide(codec, False)

    def _allowed(self) -> float:
        assert self.target_fps is not None
        return KEYFRAME_TOLERANCE / self.target_fps

    def _decide(self, codec: av.VideoCodecContext, keyframes_only: bool) -> None:
        interval = self.status.keyframe_interval
        if keyframes_only:
            if not self._keyframes_only:
                codec.skip_frame = "NONKEY"
                self._keyframes_only = True
            self._set_mode("keyframes", None)
            return
        if self._keyframes_only:
            codec.skip_frame = "DEFAULT"
            self._keyframes_only = False
            self._await_key, self._resume_known, self._resume_pts = True, False, None
        assert self.target_fps is not None
        self._set_mode("full", f"keyframe every {interval:g} s is too sparse for "
                               f"{self.target_fps:g} counts/s: decoding every frame")

    def _set_mode(self, mode: str, note: str | None) -> None:
        self.status.decode = mode
        self.status.decode_note = note
