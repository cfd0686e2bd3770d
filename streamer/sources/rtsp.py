"""RTSP cameras: PyAV on a thread of its own, reconnecting forever (or up to a limit).

Cameras drop off the network, reboot and hang; a counting service must ride through all of
it without an operator. What this module relies on (measured; docs/runtime-notes.md):

- When the server dies, PyAV's decode loop simply *ends* without an exception, so the end
  of the loop is treated as a failure, not as the end of the stream.
- A hung server (SIGSTOP, a frozen camera) keeps the TCP connection open and PyAV's own
  ``timeout=`` noticed it only after about twice the read timeout, if at all. A watchdog
  thread therefore watches the time since the last packet (not frame: a keyframes-only
  camera decodes one a second or less) and, past ``stall_timeout``, drops the connection
  itself.
- Closing the PyAV container from the watchdog while the decode thread is inside
  ``av_read_frame`` would free the demuxer under its feet (use-after-free, a crash of the
  whole service). The watchdog instead ``shutdown()``s the container's TCP socket, found in
  ``/proc`` (Linux): FFmpeg sees the server hang up, the decode loop ends at once (measured:
  under 5 ms), and the decode thread closes its own container.
- Where ``/proc`` is missing (macOS, BSD), FFmpeg's own RTSP socket timeout (the
  demuxer's ``timeout`` option, microseconds) is set to ``max(stall_timeout,
  open_timeout)`` instead: a frozen server then ends the read with ``TimeoutError`` after
  about twice that (measured: 2.2 s for 1 s), where PyAV's ``timeout=`` alone let a frozen
  server hold the session for 30 s. It is not set where ``/proc`` works because it slows
  the watchdog's path: after the shutdown FFmpeg then sometimes waits out that timeout
  before giving up (measured: 1.5 s stall detected after 3.1-3.4 s instead of 1.6 s).
- The camera's host name is resolved on the decode thread at the start of every
  connection attempt, never on the event loop (a slow DNS server would freeze every
  stream and the API), and again after each failure, so the watchdog follows a camera whose
  address changed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import av

from crowdcount.streamer.sources.base import ThreadedSource
from crowdcount.streamer.sources.decoding import Decoder
from crowdcount.streamer.status import StreamState
from crowdcount.streamer.urls import mask_text, mask_url

log = logging.getLogger(__name__)

# Measured: analyzeduration/probesize this small cut time-to-first-frame from 1-2 s to ~0.1 s.
AV_OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32"}
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
#: Socket inodes claimed by an open connection of some RtspSource (see ``_claim``).
_CLAIMED: set[int] = set()
_CLAIM_LOCK = threading.Lock()
#: (camera addresses, port) -> the lock its connections are opened under, one at a time.
_OPEN_GATES: dict[tuple[frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address], int],
                  threading.Lock] = {}


class RtspSource(ThreadedSource):
    """Frames from an RTSP (or RTSPS) URL, decoded to RGB on a daemon thread.

    States: CONNECTING (first attempt) -> RUNNING (a frame arrived) -> RECONNECTING (error,
    server hang-up or stall) -> RUNNING again, or FAILED once more than ``max_retries``
    connections in a row failed without a frame (``None``: retry forever). Between
    attempts the source sleeps ``backoff_initial * backoff_factor**(n-1)`` seconds (capped at
    ``backoff_max``) after the n-th consecutive failure, lengthened by a random factor in
    ``[1, 1 + jitter]`` (the backoff stays a minimum), so that cameras dropped by one
    network blip do not all reconnect in the same instant (a reconnect storm that starves
    counting); a frame resets n. ``stop()`` ends in STOPPED.

    ``target_fps`` (the stream's count rate) and ``max_side`` go to the ``Decoder``:
    keyframes only when they meet the rate, pictures converted at the model's size.

    ``status.reconnects`` counts connection attempts after the first one; ``attempts``
    counts all of them; ``status.last_error`` is one line naming the masked URL.
    """

    kind = "rtsp"

    def __init__(
        self,
        stream_id: str,
        url: str,
        *,
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        stall_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_factor: float = 2.0,
        backoff_max: float = 10.0,
        max_retries: int | None = None,
        jitter: float = 0.5,
        target_fps: float | None = None,
        max_side: int | None = None,
    ) -> None:
        super().__init__(stream_id)
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        if min(open_timeout, read_timeout, stall_timeout, backoff_initial) <= 0:
            raise ValueError("timeouts and backoff_initial must be positive")
        if backoff_factor < 1 or backoff_max < backoff_initial:
            raise ValueError("need backoff_factor >= 1 and backoff_max >= backoff_initial")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be None or >= 0")
        self.url = url
        self.masked_url = mask_url(url)
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.stall_timeout = stall_timeout
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.max_retries = max_retries
        self.jitter = jitter
        self.decoder = Decoder(self.status, target_fps, max_side)
        self.attempts = 0
        self._conn_lock = threading.Lock()
        self._sockets_before: set[int] | None = None  # set while a connection may be open
        self._mine: set[int] = set()  # the sockets this connection claimed once opened
        self._last_frame = 0.0
        self._stalled = False
        # Resolved on the decode thread at each attempt (see the module docstring).
        self._remote: tuple[set[ipaddress.IPv4Address | ipaddress.IPv6Address], int] = (
            set(), 0)
        socket_timeout_us = int(max(stall_timeout, open_timeout) * 1_000_000)
        self._fallback_options = {**AV_OPTIONS, "timeout": str(socket_timeout_us)}

    # -- lifecycle ---------------------------------------------------------------------

    def _workers(self) -> dict[str, Callable[[], None]]:
        return {"": self._run, "-watchdog": self._watch}

    def _interrupt(self) -> None:
        self._drop_connection()

    def _stop_timeout(self) -> float:
        return self.open_timeout + 2.0

    # -- decode thread -----------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self.attempts += 1
            if self.attempts > 1:
                self.status.reconnects += 1
            got_frame, error = self._session()
            if self._stop.is_set():
                return
            failures = 1 if got_frame else failures + 1
            self.status.last_error = error
            if self.max_retries is not None and failures > self.max_retries:
                log.error("%s; giving up", error)
                self._finish(
                    StreamState.FAILED,
                    f"{error} (gave up after {failures} consecutive failed connections)",
                )
                return
            delay = min(
                self.backoff_max, self.backoff_initial * self.backoff_factor ** (failures - 1)
            ) * random.uniform(1, 1 + self.jitter)
            log.warning("%s; reconnecting in %.1f s", error, delay)
            self.status.state = StreamState.RECONNECTING
            if self._stop.wait(delay):
                return

    def _session(self) -> tuple[bool, str]:
        """One connection: open, decode until it breaks. Returns (got a frame, error line)."""
        got_frame = False
        container = None
        self._stalled = False
        remote = _remote_endpoint(self.url)  # blocking DNS: this thread, never the loop
        gate = _open_gate(remote)
        while gate is not None and not gate.acquire(timeout=0.25):
            if self._stop.is_set():
                return False, self._line("stopped while waiting to connect")
        with self._conn_lock:
            self._remote = remote
            self._sockets_before = _socket_inodes(remote)
            self._last_frame = 0.0  # the watchdog waits for the open to finish
        opening = time.monotonic()
        try:
            watched = _proc_available()
            options = AV_OPTIONS if watched else self._fallback_options
            # Where the watchdog can drop the socket, PyAV's read timeout is left off: when
            # it fired first (read_timeout = stall_timeout, the defaults) FFmpeg's close of
            # the still-open connection then hung for another read timeout, and a stalled
            # camera was noticed after 10.1 s instead of 5.2 s (measured).
            container = av.open(
                self.url, options=options,
                timeout=(self.open_timeout, None if watched else self.read_timeout),
            )
            self._claim()
            if gate is not None:
                gate.release()
                gate = None
            if not container.streams.video:
                return False, self._line("no video stream in the RTSP session")
            self._last_frame = time.monotonic()  # the watchdog's clock starts at open
            stream = container.streams.video[0]
            for frame in self.decoder.frames(container, stream, self._data_arrived):
                if self._stop.is_set():
                    break
                picture = self.decoder.picture(frame)
                got_frame = True
                if self.status.state != StreamState.RUNNING:
                    self.status.state = StreamState.RUNNING
                    log.info("%s: receiving frames", self.masked_url)
                self._publish(picture.pixels, source_size=picture.source_size,
                              full=picture.full)
            reason = "server closed the connection (stream ended)"
        except av.FFmpegError as exc:
            reason = f"{type(exc).__name__}: {exc.strerror or 'FFmpeg error'}"
            if container is None and time.monotonic() - opening >= 0.9 * self.open_timeout:
                # FFmpeg reports a server that accepts the connection but never answers as
                # "invalid data"; the elapsed time tells what really happened.
                reason = f"no answer within {self.open_timeout:g} s ({reason})"
        except Exception as exc:  # a camera must never kill the thread silently
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            if gate is not None:
                gate.release()
            with self._conn_lock:
                self._sockets_before = None
                with _CLAIM_LOCK:
                    _CLAIMED.difference_update(self._mine)
                self._mine = set()
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
        if self._stalled:
            reason = f"no data for {self.stall_timeout:g} s (server stalled), connection dropped"
        return got_frame, self._line(reason)

    def _data_arrived(self) -> None:
        """Every packet (not every decoded frame: keyframes-only decodes one a second or
        less) feeds the watchdog, so a stall is "no data for ``stall_timeout``"."""
        self._last_frame = time.monotonic()

    def _line(self, reason: str) -> str:
        """One line, URL masked, and no credentials even if FFmpeg echoed the raw URL."""
        text = mask_text(f"{self.masked_url}: {reason}".replace(self.url, self.masked_url))
        return " ".join(text.split())

    # -- watchdog ----------------------------------------------------------------------

    def _watch(self) -> None:
        period = min(0.25, self.stall_timeout / 4)
        while not self._stop.wait(period):
            with self._conn_lock:
                watching = self._sockets_before is not None and self._last_frame > 0.0
                last_frame = self._last_frame
            if not watching or self._stalled:
                continue
            if time.monotonic() - last_frame > self.stall_timeout:
                self._stalled = True
                log.warning("%s: no data for %.1f s, dropping the connection",
                            self.masked_url, self.stall_timeout)
                self._drop_connection()

    def _claim(self) -> None:
        """Once open, take the new sockets to the camera that no other source has claimed
        as this connection's own. Cameras behind one NVR share its host and port: before
        claims, stopping (or a stall of) one channel shut down the sockets of every channel
        that had connected after it, and they all reconnected. Connections to one host and
        port are opened one at a time (``_open_gate``), so the new sockets are this
        connection's alone; that also spreads a start-up or reconnect storm of an NVR's
        channels (an open takes 0.1-0.3 s)."""
        with self._conn_lock:
            before, remote = self._sockets_before, self._remote
            if before is None:
                return
            with _CLAIM_LOCK:
                self._mine = (_socket_inodes(remote) - before) - _CLAIMED
                _CLAIMED.update(self._mine)

    def _drop_connection(self) -> None:
        """Shut down (not close) the TCP sockets of this source's connection, from any
        thread: the ones it claimed once open (``_claim``). While it is still opening (or
        if another source opening at the same moment claimed its socket first), sockets to
        the same camera opened since this attempt began (and claimed by nobody, if there
        are such) are taken as its own; another source caught by that simply reconnects.
        """
        with self._conn_lock:
            before, remote = self._sockets_before, self._remote
            if before is None:
                return
            current = _socket_inodes(remote)
            if self._mine:
                mine = self._mine & current
            else:
                fresh = current - before
                with _CLAIM_LOCK:
                    mine = (fresh - _CLAIMED) or fresh  # never leave a stall undropped
        for inode, fd in _process_sockets().items():
            if inode in mine:
                _shutdown_fd(fd, inode)


def _open_gate(remote: tuple[set[ipaddress.IPv4Address | ipaddress.IPv6Address], int]
               ) -> threading.Lock | None:
    """The lock that opens connections to ``remote`` one at a time (``None``: unresolved)."""
    hosts, port = remote
    if not hosts:
        return None
    key = (frozenset(hosts), port)
    with _CLAIM_LOCK:
        gate = _OPEN_GATES.get(key)
        if gate is None:
            gate = _OPEN_GATES[key] = threading.Lock()
        return gate


# -- /proc helpers (Linux); every one degrades to "nothing found" elsewhere -------------


def _remote_endpoint(url: str) -> tuple[set[ipaddress.IPv4Address | ipaddress.IPv6Address], int]:
    """The camera's addresses and port, to recognise the container's socket in /proc."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 554)
        infos = socket.getaddrinfo(parts.hostname or "", port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        return set(), 0
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, port


def _socket_inodes(remote: tuple[set[ipaddress.IPv4Address | ipaddress.IPv6Address], int]
                   ) -> set[int]:
    """Inodes of this process's TCP sockets connected to ``remote``."""
    hosts, port = remote
    if not hosts:
        return set()
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            address, _, port_hex = fields[2].partition(":")
            if int(port_hex, 16) != port:
                continue
            ip = _proc_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip in hosts:
                found.add(int(fields[9]))
    return found & set(_process_sockets())


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode /proc/net/tcp's address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _proc_available() -> bool:
    """Whether this process's descriptors can be listed (the watchdog's socket search)."""
    return os.path.isdir("/proc/self/fd")


def _process_sockets() -> dict[int, int]:
    """{socket inode: fd} for this process."""
    result: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return result
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            result[int(target[8:-1])] = int(name)
    return result


def _shutdown_fd(fd: int, inode: int) -> None:
    """``shutdown(SHUT_RDWR)`` the socket behind ``fd`` if it is still ``inode``.

    Works on a duplicate, so FFmpeg's descriptor stays valid for it to close; the inode
    check guards against the fd having been closed and reused in the meantime.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        if os.fstat(dup).st_ino != inode:
            os.close(dup)
            return
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
