"""URL masking and the API's URL whitelist."""

from __future__ import annotations

import pytest

from crowdcount.streamer.urls import mask_url, validate_api_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("rtsp://admin@cam.local/live?x=1", "rtsp://***@cam.local/live?x=1"),
        ("rtsps://u:p%40ss@[::1]:322/a#f", "rtsps://***@[::1]:322/a#f"),
        ("rtsp://u:p@ss@host/x", "rtsp://***@host/x"),  # '@' inside an unescaped password
        ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"),
        ("/dev/video0", "/dev/video0"),
        ("", ""),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_url_unparseable_still_hides_secret():
    masked = mask_url("rtsp://user:topsecret@[bad/x")
    assert "topsecret" not in masked and "user" not in masked
    assert masked.startswith("rtsp://***@")


@pytest.mark.parametrize(
    "url",
    ["rtsp://127.0.0.1:8554/cam", "RTSP://cam.local/x", "rtsps://u:p@cam:322/x", " rtsp://h/ "],
)
def test_validate_api_url_accepts_rtsp(url):
    assert validate_api_url(url) == url.strip()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("/dev/video0", "no scheme"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://cam/x", "scheme 'http'"),
        ("concat:/a.mp4|/b.mp4", "scheme 'concat'"),
        ("rtsp:///path", "no host"),
        ("rtsp://host:99999/x", "malformed"),
        ("rtsp://host/a b", "whitespace"),
        ("", "empty"),
    ],
)
def test_validate_api_url_rejects(url, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_api_url(url)


def test_validate_api_url_error_masks_credentials():
    with pytest.raises(ValueError) as info:
        validate_api_url("http://admin:hunter2@cam/x")
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value)
    assert "rtsp://" in str(info.value)


def test_validate_api_url_rejects_non_string():
    with pytest.raises(ValueError, match="string"):
        validate_api_url(None)  # type: ignore[arg-type]
