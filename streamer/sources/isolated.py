"""An RTSP camera decoded in a child process of its own, supervised by this one.

Why: FFmpeg is a large C library fed by data from the network. A decoder that crashes
(a segfault on a malformed stream, an abort in a codec) inside the server's process takes
every stream, the API and the history writer down with it, and a decoder stuck in native
code cannot be stopped from another thread. In a child process both are contained: the
supervisor sees the child die (or go silent) and starts a new one after a backoff, like a
camera reconnect, while every other stream keeps running. Frigate runs ffmpeg per camera
for the same reason.

The child runs the unchanged ``RtspSource`` (its reconnects, stall watchdog and frame
dropping), and sends over a pipe each frame its ``recv()`` returns plus a status heartbeat
every ``HEARTBEAT_S``. The supervisor thread publishes the frames here and mirrors the
child's state, error, reconnects, drops and decode figures into ``status``; it is the only
writer of those fields. The cost is one Python process per camera (spawned, so nothing of
the server is inherited) and one copy of each delivered frame through the pipe.

The child decodes like any source (``sources/decoding.py``: keyframes only when they meet
``target_fps``, pictures converted at ``max_side``), and sends only the frames the stream's
rate will take (the batcher's own rule, ``Batcher``), so a full-decode camera does not
convert and pipe 25 pictures a second of which the model takes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from crowdcount.streamer.sources.base import SourceEnded, ThreadedSource
from crowdcount.streamer.status import StreamState
from crowdcount.streamer.urls import mask_url

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.2
#: The child's status fields the supervisor mirrors.
_MIRRORED = ("state", "last_error", "reconnects", "source_dropped", "decode",
             "keyframe_interval", "decode_note", "frames_decoded", "decode_seconds",
             "frame_size")


class IsolatedRtspSource(ThreadedSource):
    """``RtspSource(stream_id, url, **options)`` in a supervised child process.

    A child that dies or sends nothing (not even a heartbeat) for ``silence_timeout``
    seconds is killed and replaced after ``backoff`` seconds; ``status.last_error`` then
    names the cause (``decoder process died (SIGSEGV)``), ``status.reconnects`` counts the
    child's reconnects plus the restarts. ``max_retries`` applies to the child's
    connections as in ``RtspSource``.
    """

    kind = "rtsp"
    first_state = StreamState.CONNECTING

    def __init__(
        self,
        stream_id: str,
        url: str,
        *,
        silence_timeout: float = 10.0,
        backoff: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(stream_id)
        if silence_timeout <= 0 or backoff <= 0:
            raise ValueError("silence_timeout and backoff must be positive")
        self.url = url
        self.masked_url = mask_url(url)
        self.options = options
        self.silence_timeout = silence_timeout
        self.backoff = backoff
        self.restarts = 0
        self.child_pid: int | None = None
        self._process: BaseProcess | None = None
        self._child_dropped = 0
        self._decode_base = (0, 0.0)

    def _stop_timeout(self) -> float:
        return 5.0

    def _interrupt(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            with contextlib.suppress(Exception):
                process.terminate()

    # -- the supervisor thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            cause, finished = self._supervise_one()
            if self._stop.is_set() or finished:
                return
            self.restarts += 1
            self.status.reconnects += 1
            self.status.last_error = f"{self.masked_url}: {cause}"
            self.status.state = StreamState.RECONNECTING
            log.warning("%s: %s; restarting the decoder in %.1f s", self.masked_url, cause,
                        self.backoff)
            if self._stop.wait(self.backoff):
                return

    def _supervise_one(self) -> tuple[str, bool]:
        """Run one child until it dies, goes silent or finishes; returns (cause, finished)."""
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_child_main, args=(self.stream_id, self.url, self.options, theirs),
            name=f"decoder-{self.stream_id}", daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self.child_pid = process, process.pid
        base_reconnects = self.status.reconnects
        self._decode_base = (self.status.frames_decoded, self.status.decode_seconds)
        self._child_dropped = 0  # the child's drops already added to status.source_dropped
        try:
            last_message = time.monotonic()
            while not self._stop.is_set():
                if not ours.poll(min(0.25, self.silence_timeout)):
                    if time.monotonic() - last_message > self.silence_timeout:
                        return (f"decoder process sent nothing for {self.silence_timeout:g} s "
                                "(hung), killed", False)
                    continue
                try:
                    message = ours.recv()
                except (EOFError, OSError):
                    process.join(2.0)
                    return _death_cause(process.exitcode), False
                last_message = time.monotonic()
                if message[0] == "frame":
                    _, captured_at, image, source_size = message
                    self._publish(image, captured_at, source_size)
                elif message[0] == "status":
                    self._mirror(message[1], base_reconnects)
                elif message[0] == "ended":
                    self._mirror(message[1], base_reconnects)
                    self._finish(StreamState(message[1]["state"]),
                                 message[1].get("last_error"))
                    return "ended", True
            return "stopped", True
        finally:
            self._process = None
            ours.close()
            if process.is_alive():
                process.kill()
            process.join(2.0)
            with contextlib.suppress(Exception):
                process.close()

    def _mirror(self, child: dict[str, Any], base_reconnects: int) -> None:
        """Copy the child's figures; runs on the supervisor thread, the fields' one writer."""
        self.status.reconnects = base_reconnects + int(child["reconnects"])
        # Frames the child dropped, added to the ones dropped here (replaced before recv()).
        dropped = int(child["source_dropped"])
        self.status.source_dropped += dropped - self._child_dropped
        self._child_dropped = dropped
        state = StreamState(child["state"])
        if state != StreamState.RUNNING or self.status.frames_in:
            self.status.state = state
        if child.get("last_error"):
            self.status.last_error = child["last_error"]
        st = self.status
        st.decode, st.decode_note = child["decode"], child["decode_note"]
        st.keyframe_interval = child["keyframe_interval"]
        st.frame_size = child["frame_size"]
        st.frames_decoded = self._decode_base[0] + int(child["frames_decoded"])
        st.decode_seconds = self._decode_base[1] + float(child["decode_seconds"])


def _death_cause(exitcode: int | None) -> str:
    if exitcode is None:
        return "decoder process stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"decoder process died ({name})"
    return f"decoder process exited with code {exitcode}"


# -- the child process ---------------------------------------------------------------------


def _child_main(stream_id: str, url: str, options: dict[str, Any], conn: Connection) -> None:
    """Entry point of the decoder process (spawned: imports only what decoding needs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):
        asyncio.run(_child(stream_id, url, options, conn))


async def _child(stream_id: str, url: str, options: dict[str, Any], conn: Connection) -> None:
    from crowdcount.streamer.batcher import Batcher
    from crowdcount.streamer.sources.rtsp import RtspSource

    source = RtspSource(stream_id, url, **options)
    rate = Batcher()  # only its fps_limit rule: frames the stream's rate would refuse stay here
    rate.add(stream_id, options.get("target_fps"))

    def status() -> dict[str, Any]:
        st = source.status
        return {k: (str(getattr(st, k)) if k == "state" else getattr(st, k)) for k in _MIRRORED}

    async def heartbeat() -> None:
        while True:
            conn.send(("status", status()))
            await asyncio.sleep(HEARTBEAT_S)

    await source.start()
    beating = asyncio.create_task(heartbeat())
    try:
        while True:
            try:
                frame = await source.recv()
            except SourceEnded:
                conn.send(("ended", status()))
                return
            if not rate.submit(frame):
                continue
            rate.take(1, timeout=0)
            # The array pickles as one buffer: no tobytes() copy here, no reshape there.
            conn.send(("frame", frame.captured_at, frame.image, frame.source_size))
    finally:
        beating.cancel()
        await source.stop()
