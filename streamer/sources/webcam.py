"""A local V4L2 camera (``/dev/videoN``) through PyAV's v4l2 demuxer.

Webcams deliver frames at their own rate, so no pacing is needed. A device that is missing,
busy or unplugged ends the source in FAILED with the reason in ``status.last_error``: unlike
a network camera there is nothing to wait for, and the operator must act.
Devices are only ever opened from the config file, never from the HTTP API.
"""

from __future__ import annotations

import contextlib
import logging

import av

from crowdcount.streamer.sources.base import ThreadedSource, rgb_later
from crowdcount.streamer.sources.file import describe
from crowdcount.streamer.status import StreamState

log = logging.getLogger(__name__)


class WebcamSource(ThreadedSource):
    """Frames from a V4L2 device, decoded to RGB on a daemon thread.

    ``width``/``height``/``fps``/``input_format`` (e.g. ``"mjpeg"``) are requested from the
    driver when given; otherwise the device's default mode is used.
    """

    kind = "webcam"

    def __init__(
        self,
        stream_id: str,
        device: str = "/dev/video0",
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        input_format: str | None = None,
        open_timeout: float = 5.0,
    ) -> None:
        super().__init__(stream_id)
        self.device = device
        self.options: dict[str, str] = {}
        if width and height:
            self.options["video_size"] = f"{width}x{height}"
        if fps:
            self.options["framerate"] = f"{fps:g}"
        if input_format:
            self.options["input_format"] = input_format
        self.open_timeout = open_timeout

    def _stop_timeout(self) -> float:
        return self.open_timeout + 2.0  # a frame is at most one frame interval away

    def _run(self) -> None:
        container = None
        try:
            container = av.open(
                self.device, format="v4l2", options=self.options,
                timeout=(self.open_timeout, self.open_timeout),
            )
            if not container.streams.video:
                raise ValueError("no video stream")
            for frame in container.decode(container.streams.video[0]):
                if self._stop.is_set():
                    return
                image = rgb_later(frame)
                self.status.state = StreamState.RUNNING
                self._publish(image)
            if not self._stop.is_set():
                self._finish(StreamState.FAILED, f"webcam {self.device}: capture ended")
        except Exception as exc:
            if not self._stop.is_set():
                log.error("webcam %s: %s", self.device, describe(exc))
                self._finish(StreamState.FAILED, f"webcam {self.device}: {describe(exc)}")
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
