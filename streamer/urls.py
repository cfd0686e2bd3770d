"""Stream URLs: hide credentials, and decide which URLs the HTTP API may open.

Camera URLs routinely carry ``user:password@``; anything that logs or returns a URL (status,
errors, the API) must go through :func:`mask_url` first. The API accepts only network
cameras: letting a remote caller name ``/dev/video0``, ``file:///etc/...`` or an FFmpeg
protocol such as ``concat:`` or ``subfile:`` would let it read local files and devices, so
those are allowed only from the operator's config file.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

API_SCHEMES = ("rtsp", "rtsps")
MASK = "***"

# user[:password]@ right after "scheme://"; used when urlsplit cannot parse the URL.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")


def mask_url(url: str) -> str:
    """``url`` with any user and password replaced by ``***`` (``rtsp://***@host/path``).

    Safe for any string: URLs that do not parse are masked with a regular expression, and
    the result never contains the original user or password.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", url)
    if "@" not in netloc:
        return url
    host = netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))


def validate_api_url(url: str) -> str:
    """Return ``url`` stripped of surrounding blanks if the HTTP API may open it.

    Raises ``ValueError`` (message safe to return to the caller: credentials masked) unless
    the URL is ``rtsp://`` or ``rtsps://`` with a host.
    """
    if not isinstance(url, str):
        raise ValueError(f"url must be a string, not {type(url).__name__}")
    url = url.strip()
    if not url:
        raise ValueError("url is empty; expected rtsp://host[:port]/path or rtsps://...")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError(f"url {mask_url(url)!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"url {mask_url(url)!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in API_SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(
            f"url {mask_url(url)!r} has {shown}; the API accepts only rtsp:// and rtsps:// "
            "(local files and devices can be configured only in the config file)"
        )
    if not parts.hostname:
        raise ValueError(f"url {mask_url(url)!r} has no host; expected {scheme}://host/path")
    if port == 0:
        raise ValueError(f"url {mask_url(url)!r} has port 0")
    return url
