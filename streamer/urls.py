"""Stream URLs: hide credentials, and decide which URLs the HTTP API may open.

Camera URLs routinely carry ``user:password@`` and, on cheap cameras, query parameters
such as ``?user=admin&password=...``; anything that logs or returns a URL (status,
errors, the API) must go through :func:`mask_url` first, and free text that may quote a
URL (an FFmpeg error message) through :func:`mask_text`. The API accepts only network
cameras: letting a remote caller name ``/dev/video0``, ``file:///etc/...`` or an FFmpeg
protocol such as ``concat:`` or ``subfile:`` would let it read local files and devices, so
those are allowed only from the operator's config file.

Why no pattern matching of URLs here: masking runs on every status line and log line of a
stream, on text of any length a client may choose. A pattern with a variable-length
scheme part backtracks quadratically on a long run of letters (measured: 1.8 s for 50,000
characters, holding the GIL, so no stream was counted meanwhile). Everything below is
``urllib.parse``, ``str.find`` and a one-character class search: linear time whatever
the input.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from crowdcount.streamer.limits import MAX_URL_LENGTH

API_SCHEMES = ("rtsp", "rtsps")
MASK = "***"

#: Query parameters whose values are masked: a name containing any of these, any case
#: (``user``, ``username``, ``password``, ``passwd``, ``api_key``, ``access_token``, ...).
#: Masking a harmless parameter now and then is the cheap side of that trade.
SECRET_PARAM_WORDS = ("user", "pass", "pwd", "token", "key", "secret", "auth")

_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
# Where a URL quoted in free text ends.
_TEXT_URL_END = re.compile(r"[\s\"'<>]")


def is_secret_param(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in SECRET_PARAM_WORDS)


def _mask_query(query: str) -> str:
    """``query`` with the value of every secret-looking parameter replaced by ``***``;
    everything else byte for byte as it was (no re-encoding)."""
    if not query:
        return query
    out = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        out.append(f"{name}={MASK}" if eq and is_secret_param(name) else pair)
    return "&".join(out)


def _mask_unparsed(url: str) -> str:
    """For strings ``urlsplit`` refuses (``[bad``): hide everything between ``://`` and the
    last ``@`` of the authority, and secret query values."""
    head, sep, rest = url.partition("://")
    if sep:
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        at = rest.rfind("@", 0, cut)
        if at >= 0:
            rest = f"{MASK}@{rest[at + 1:]}"
    path, q, query = (head + sep + rest).partition("?")
    if not q:
        return path
    query, h, fragment = query.partition("#")
    return path + q + _mask_query(query) + h + fragment


def mask_url(url: str) -> str:
    """``url`` with any user and password replaced by ``***`` (``rtsp://***@host/path``) and
    the values of secret-looking query parameters too (``?user=***&password=***``), also
    in URLs nested in it (``?next=rtsp://u:p@cam``).

    Safe for any string, in linear time: URLs that do not parse are masked by plain string
    search, and the result never contains the original user or password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _mask_unparsed(url)
    netloc = parts.netloc
    path, query, fragment = parts.path, _mask_query(parts.query), parts.fragment
    if "://" in path or "://" in query or "://" in fragment:
        path, query, fragment = mask_text(path), mask_text(query), mask_text(fragment)
    if "@" not in netloc and (path, query, fragment) == (parts.path, parts.query,
                                                        parts.fragment):
        return url
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, path, query, fragment))


def _url_starts(text: str) -> list[tuple[int, int]]:
    """``(start, sep)`` of each ``scheme://`` in ``text``: ``sep`` is the index of ``://``.
    The backward scan for the scheme stops at the previous ``://``, so it is linear."""
    starts: list[tuple[int, int]] = []
    floor = 0
    i = text.find("://")
    while i != -1:
        start = i
        while start > floor and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < i and text[start] not in string.ascii_letters:
            start += 1  # a scheme starts with a letter
        if start < i:
            starts.append((start, i))
        floor = i + 3
        i = text.find("://", floor)
    return starts


def mask_text(text: str) -> str:
    """``text`` with every ``scheme://...`` in it masked by :func:`mask_url` (for messages
    from libraries that may quote the URL they were given). A URL ends at a blank, a quote,
    ``<``/``>`` or where the next URL starts. Linear time: each character is looked at a
    bounded number of times."""
    out: list[str] = []
    done = 0  # text[:done] is already in out
    stop = -1  # the next blank or quote at or after the current URL (cached: no rescans)
    starts = _url_starts(text)
    for n, (start, sep) in enumerate(starts):
        if start < done:
            continue
        if stop < sep:
            found = _TEXT_URL_END.search(text, sep)
            stop = found.start() if found else len(text)
        end = min(stop, starts[n + 1][0]) if n + 1 < len(starts) else stop
        out.append(text[done:start])
        out.append(mask_url(text[start:end]))
        done = end
    out.append(text[done:])
    return "".join(out)


def validate_api_url(url: str) -> str:
    """Return ``url`` stripped of surrounding blanks if the HTTP API may open it.

    Raises ``ValueError`` (message safe to return to the caller: credentials masked) unless
    the URL is ``rtsp://`` or ``rtsps://`` with a host, at most ``MAX_URL_LENGTH`` long.
    """
    if not isinstance(url, str):
        raise ValueError(f"url must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is {len(url)} characters; at most {MAX_URL_LENGTH} are allowed")
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
