"""``decode_image``: the accepted formats decode, every other format and every oversized
header is refused before decoding (in-process; tests/test_hostile.py does the same through
a live server and measures its memory)."""

from __future__ import annotations

import pytest

from crowdcount.model.imageio import ACCEPTED_FORMATS, ImageError, decode_image
from crowdcount.streamer.upload import UPLOAD_MAX_PIXELS
from tests.fixtures.bombs import IMAGE_BOMBS, encoded


@pytest.mark.parametrize("fmt", list(ACCEPTED_FORMATS))
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encoded(fmt, (64, 48)), f"x.{fmt.lower()}")
    assert image.shape == (48, 64, 3) and image.dtype.name == "uint8"


@pytest.mark.parametrize("kind", list(IMAGE_BOMBS))
def test_bombs_are_refused_from_the_header(kind: str) -> None:
    with pytest.raises(ImageError) as info:  # at the server's limit (the WebP is 32 MP)
        decode_image(IMAGE_BOMBS[kind](), kind, UPLOAD_MAX_PIXELS)
    message = str(info.value)
    assert "not accepted" in message or "exceeds" in message or "readable" in message
    assert "\n" not in message


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "PPM", "ICO"])
def test_other_formats_are_refused_even_when_small(fmt: str) -> None:
    with pytest.raises(ImageError, match=r"not accepted|readable"):
        decode_image(encoded(fmt, (16, 16)), "small")


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageError, match="64x48 pixels exceeds the limit of 3000"):
        decode_image(encoded("PNG", (64, 48)), "x.png", max_pixels=3000)
    assert decode_image(encoded("PNG", (64, 48)), "x.png", max_pixels=3072).shape[0] == 48


def test_truncated_and_empty_files() -> None:
    png = encoded("PNG", (64, 48))
    with pytest.raises(ImageError, match=r"truncated or corrupt PNG|readable"):
        decode_image(png[: len(png) // 2], "cut.png")
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", "empty")
