"""A 1080p H.264 clip like the ones cameras send, made here with PyAV (benchmark helper).

Cameras send 1080p H.264 at 15-30 frames/s with a keyframe every 1-2 s; the clip is 1080p25,
libx264 ``veryfast``, one keyframe every ``gop`` frames, no B-frames (``bf=0``: most
cameras' baseline/main profiles send none), over a textured background with moving blobs
and a little sensor noise, so the encoder spends a realistic number of bits: keyframes of
130-160 KB (~14 ms to decode here, like a 1080p camera's), small P-frames as from a fixed
camera watching a mostly still scene. It is cached by its parameters, since encoding
1080p costs some CPU-seconds.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crowdcount-bench"


def _background(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    texture = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(40, 160, width, dtype=np.float32)[None, :, None]
    return np.clip(texture.astype(np.float32) * 0.5 + ramp, 0, 255).astype(np.uint8)


def hd_clip(seconds: float = 20.0, fps: int = 25, gop: int = 25, width: int = 1920,
            height: int = 1080, folder: Path | None = None) -> Path:
    """The path of the clip (written on first use)."""
    folder = folder or CACHE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"hd2_{width}x{height}_{fps}fps_gop{gop}_{seconds:g}s.mp4"
    if path.is_file():
        return path
    base = _background(width, height)
    rng = np.random.default_rng(11)
    # Sensor noise, a few grey levels, fresh every frame: without it P-frames of a static
    # background are nearly empty and decode several times faster than a real camera's.
    noise = [rng.integers(-2, 3, (height, width, 1), dtype=np.int16) for _ in range(5)]
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=folder)
    os.close(fd)
    with av.open(tmp, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"bf": "0", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0", "preset": "veryfast"}
        for i in range(round(seconds * fps)):
            image = np.clip(base + noise[i % len(noise)], 0, 255).astype(np.uint8)
            for k in range(12):  # "people" walking across
                x = int((i * (3 + k) + k * 157) % (width - 60))
                y = int((k * height / 12 + 10 * np.sin(i / 9 + k)) % (height - 120))
                cv2.ellipse(image, (x + 30, y + 60), (22, 55), 0, 0, 360,
                            (200 - 12 * k, 60 + 10 * k, 90), -1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    return path
