"""Reading user images safely: one function used by the CLI and the upload endpoint."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.errors import UserError

#: Images above this many pixels are refused before decoding (decompression bombs).
MAX_PIXELS = 40_000_000


class ImageError(UserError):
    """Not an image we can read; the message says why in one line."""


def decode_image(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> (
    NDArray[np.uint8]
):
    """RGB uint8 from encoded bytes (JPEG, PNG, BMP, WebP...)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    buf = np.frombuffer(data, np.uint8)
    header = _header_size(data)
    if header is not None and header[0] * header[1] > max_pixels:
        raise ImageError(f"{name}: image of {header[0]}x{header[1]} pixels exceeds the limit")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{name}: not a readable image (truncated or not an image format)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"{name}: image exceeds {max_pixels} pixels")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header without decoding, via Pillow (lazy by design)."""
    import io

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit and want the size, not a warning
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> NDArray[np.uint8]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return decode_image(path.read_bytes(), str(path), max_pixels)
