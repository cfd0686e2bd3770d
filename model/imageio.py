"""Reading user images safely: one function used by the CLI and the upload endpoint.

Why an allow-list of formats, checked from the header before anything is decoded: OpenCV
opens a dozen formats whose header Pillow does not read (Radiance HDR, PFM, PAM, ...), so a
pixel limit applied to them only after decoding is no limit at all: a 4 MB run-length
encoded HDR file of 8000x8000 decoded to float took 920 MB before it was refused. Photos
come as JPEG, PNG, WebP or BMP; for exactly those Pillow reads the size from the header
without decoding, and both libraries recognise them by the same leading magic bytes (so a
file Pillow calls PNG is decoded by OpenCV's PNG decoder, not another one). Everything
else is refused unread.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError

#: Images above this many pixels are refused before decoding (decompression bombs). At 3
#: bytes a pixel, the largest image accepted decodes to 120 MB.
MAX_PIXELS = 40_000_000
#: Pillow's format names of what is decoded, and the names people know them by.
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
_ACCEPTED_WORDS = ", ".join(ACCEPTED_FORMATS.values())


class ImageError(UserError):
    """Not an image we can read; the message says why in one line."""


def decode_image(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> (
    NDArray[np.uint8]
):
    """RGB uint8 from encoded bytes in one of ``ACCEPTED_FORMATS``, refused (``ImageError``)
    from the header alone when the format is another or the size above ``max_pixels``."""
    if not data:
        raise ImageError(f"{name}: empty file")
    fmt, size = _identify(data)
    if fmt is None:
        raise ImageError(f"{name}: not a readable image (accepted: {_ACCEPTED_WORDS})")
    if fmt not in ACCEPTED_FORMATS:
        raise ImageError(f"{name}: {fmt} images are not accepted; send {_ACCEPTED_WORDS}")
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: image of {size[0]}x{size[1]} pixels exceeds the limit of "
                         f"{max_pixels}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{name}: not a readable image (truncated or corrupt {fmt})")
    if image.shape[0] * image.shape[1] > max_pixels:  # the header lied
        raise ImageError(f"{name}: image exceeds {max_pixels} pixels")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy


def _identify(data: bytes) -> tuple[str | None, tuple[int, int]]:
    """(Pillow's format name, (width, height)) from the header, without decoding; the
    name is ``None`` for what Pillow does not recognise."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit and want the size, not a warning
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, (0, 0)


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> NDArray[np.uint8]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return decode_image(path.read_bytes(), str(path), max_pixels)
