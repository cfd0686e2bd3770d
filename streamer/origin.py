"""Host and Origin checks: what keeps web pages from driving a server that has no token.

Why: a server without a token trusts whoever can reach it, which by default is every
program on the machine, and that includes every web page the operator's browser opens.
Three doors, each closed here or next door:

* Simple cross-site requests. A page on any origin may POST ``text/plain`` or a form
  without a CORS preflight; the JSON routes accept only ``application/json`` (415
  otherwise, ``routes.common.read_json_object``), which a cross-site page cannot send
  without the server's consent, and the server never consents (no CORS headers).
* Cross-site requests the browser does send (an upload to ``/api/count``, a form):
  state-changing methods must come from the server's own origin or one in
  ``server.allowed_origins`` when the browser says where they come from (``Origin``,
  or ``Sec-Fetch-Site``); tools such as curl send neither and are not affected.
* DNS rebinding: a page at ``evil.example`` whose name later resolves to 127.0.0.1 is,
  to the browser, same-origin with the server and may read the whole API. Its requests
  carry ``Host: evil.example``, so the ``Host`` must be a name of this server: the
  listening host, ``localhost`` (and ``*.localhost``, which browsers resolve to loopback
  themselves), any IP address (a rebinding page always uses a name), or one of
  ``server.allowed_hosts`` (``"*"``: any, for a reverse proxy that checks it).

With a token none of this is needed, and it is not applied (a reverse proxy may then use
any name): a page cannot send the bearer header cross-site without a preflight, and the
session cookie is ``SameSite=Strict`` and bound to the server's own name.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from aiohttp.typedefs import Middleware

from crowdcount.streamer.auth import Handler
from crowdcount.streamer.config import ServerConfig
from crowdcount.streamer.routes.common import json_error

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(host: str) -> str:
    """``Host`` header value without its port, lower case, no trailing dot
    (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """The checks for one server's config (see the module docstring)."""

    def __init__(self, server: ServerConfig) -> None:
        self.any_host = "*" in server.allowed_hosts
        self.hosts = {host_name(server.host), "localhost",
                      *(host_name(h) for h in server.allowed_hosts)}
        self.origins = {o.lower().rstrip("/") for o in server.allowed_origins}

    def host_ok(self, host: str) -> bool:
        name = host_name(host)
        return (self.any_host or name in self.hosts or name.endswith(".localhost")
                or _is_ip(name))

    def origin_ok(self, origin: str, request: web.Request) -> bool:
        origin = origin.strip().lower().rstrip("/")
        own = f"{request.scheme}://{request.headers.get('Host', request.host)}".lower()
        return origin == own or origin in self.origins

    def problem(self, request: web.Request) -> str | None:
        """Why ``request`` is refused (403), or ``None``."""
        host = request.headers.get("Host")
        if host is not None and not self.host_ok(host):
            return (f"Host {host[:100]!r} is not a name of this server (DNS rebinding?); "
                    "add it to server.allowed_hosts, or set a token")
        if request.method not in STATE_CHANGING:
            return None
        origin = request.headers.get("Origin")
        if origin is not None:
            if not self.origin_ok(origin, request):
                return (f"cross-origin {request.method} from {origin[:100]!r} refused; add "
                        "the origin to server.allowed_origins, or set a token")
        elif request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return f"cross-site {request.method} refused; set a token to allow it"
        return None


def browser_guard(server: ServerConfig) -> Middleware:
    """Middleware refusing (403 JSON) what ``BrowserGuard.problem`` refuses."""
    guard = BrowserGuard(server)

    @web.middleware
    async def check_browser(request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = guard.problem(request)
        if problem is not None:
            return json_error(403, problem)
        return await handler(request)

    return check_browser
