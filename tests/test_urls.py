"""URL masking and the API's URL whitelist."""

from __future__ import annotations

import pytest

from crowdcount.streamer.limits import MAX_URL_LENGTH
from crowdcount.streamer.urls import mask_text, mask_url, validate_api_url


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


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://host/s1?user=u&password=p", "rtsp://host/s1?user=***&password=***"),
        ("rtsp://h/s?PWD=1&Pass=2&x=3#f", "rtsp://h/s?PWD=***&Pass=***&x=3#f"),
        ("rtsp://h/s?api_key=k&access_token=t&Secret=s&auth=a&channel=1",
         "rtsp://h/s?api_key=***&access_token=***&Secret=***&auth=***&channel=1"),
        ("rtsp://a:b@h/s?username=admin", "rtsp://***@h/s?username=***"),
        ("rtsp://h/s?x=1&y", "rtsp://h/s?x=1&y"),  # nothing secret: byte for byte
        ("rtsp://u:p@[bad/x?token=abc", "rtsp://***@[bad/x?token=***"),
    ],
)
def test_mask_url_query_secrets(url, masked):
    assert mask_url(url) == masked


def test_mask_text_masks_every_url_in_a_message():
    text = ("cannot open rtsp://admin:pw1@cam/x?password=pw2 (also tried "
            "'rtsps://u:pw3@cam2/y') and a://pw4@c")
    masked = mask_text(text)
    for secret in ("pw1", "pw2", "pw3", "pw4", "admin"):
        assert secret not in masked
    assert masked.startswith("cannot open rtsp://***@cam/x?password=*** (also tried")


@pytest.mark.parametrize(
    "text",
    ["a" * 300_000, "rtsp://h/" + "a" * 300_000, "://" * 100_000, "a://" * 75_000,
     "x " + "rtsp://u:p@h/?key=1&" * 15_000],
)
def test_mask_text_handles_hostile_lengths(text):
    """Long, URL-like text comes back masked, nested URLs too (that this takes linear time
    is shown by tests/test_hostile.py: the server keeps counting meanwhile)."""
    masked = mask_text(text)
    assert len(masked) <= 2 * len(text)
    assert "u:p@" not in masked and "key=1" not in masked


def test_mask_url_masks_nested_urls():
    assert mask_url("rtsp://h/p?next=rtsp://u:p@cam/x?pwd=1") == (
        "rtsp://h/p?next=rtsp://***@cam/x?pwd=***")


def test_validate_api_url_caps_length():
    with pytest.raises(ValueError, match=f"at most {MAX_URL_LENGTH}"):
        validate_api_url("rtsp://h/" + "a" * MAX_URL_LENGTH)
