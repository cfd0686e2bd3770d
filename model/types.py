"""The few types every stage speaks.

They sit at the bottom of the import graph (NumPy only) so that sources, the batcher, the
runtime, annotators, sinks and dataset readers all pass the same objects instead of
inventing tuples of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

RGB = NDArray[np.uint8]


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded picture from a source.

    ``image`` is RGB ``uint8`` of shape (H, W, 3). ``captured_at`` is wall-clock seconds
    (``time.time()``) taken when the frame left the decoder, so latency can be measured from
    the source to any sink.

    ``pixels`` is that array, or a function that makes it: decoders hand over their native
    (YUV) picture with its conversion, and it runs when ``image`` is first read, i.e. only for
    frames the model actually takes. A live service drops most frames it cannot keep up with
    (newest-frame-wins, ``fps_limit``), and converting those to RGB was wasted CPU.

    ``source_size`` is the (width, height) the camera sent when the decoder scaled the
    picture down on conversion (to the model's input size: no full-size RGB copy of a 1080p
    frame). Zones are drawn in camera pixels, so ``size`` reports that size; ``image`` is
    the smaller picture.

    ``full`` makes the camera's picture at that full size, on demand: a user marking heads
    on a captured frame (calibration) needs the far, small ones the model's size blurs.
    It holds the decoder's reference-counted picture, so only frames kept on purpose (the
    few recent ones calibration may capture) keep it alive.
    """

    stream_id: str
    seq: int
    captured_at: float
    pixels: RGB | Callable[[], RGB]
    source_size: tuple[int, int] | None = None
    full: Callable[[], RGB] | None = None

    @property
    def image(self) -> RGB:
        """The RGB picture, converted on first use (once: the array replaces the function).

        Two threads reading it at once may both convert; both get equal arrays."""
        pixels = self.pixels
        if isinstance(pixels, np.ndarray):
            return pixels
        rgb = pixels()
        object.__setattr__(self, "pixels", rgb)  # frozen to callers, cached here
        return rgb

    def full_image(self) -> RGB:
        """The picture at the camera's size (``image`` when the decoder did not scale it)."""
        return self.full() if self.full is not None else self.image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the camera's picture, as video APIs report it (zones refer
        to it): ``source_size`` when the decoder scaled the picture, else the image's."""
        if self.source_size is not None:
            return self.source_size
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class ZoneDensity:
    """A zone of a floor-calibrated stream: its floor area (m2), its people per m2 in this
    frame and that density's level of service (``"A"`` .. ``"F"``)."""

    area_m2: float
    per_m2: float
    level: str

    def to_dict(self) -> dict[str, float | str]:
        return {"area_m2": self.area_m2, "per_m2": self.per_m2, "level": self.level}


@dataclass(frozen=True, slots=True)
class Result:
    """What the runtime returns for one frame.

    ``density`` is the model's map at its output stride (float32, (h, w)); it sums to
    ``count``. ``zones`` maps zone name to the density summed inside that zone's polygon;
    ``floor`` has each zone's density on the floor when the stream is floor-calibrated
    (``model.floor``), else it is empty.
    """

    frame: Frame
    density: NDArray[np.float32]
    count: float
    inferred_at: float
    zones: dict[str, float] = field(default_factory=dict)
    floor: dict[str, ZoneDensity] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sample:
    """One training or evaluation example as every dataset reader yields it.

    Either ``points`` (N x 2 head positions, pixel x/y in ``image``) or only ``count`` is
    known; readers of count-only datasets leave ``points`` as ``None``.
    """

    image: NDArray[np.uint8]
    count: float
    points: NDArray[np.float32] | None = None
    name: str = ""
