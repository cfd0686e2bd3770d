"""Optional bearer-token protection of the whole server (API, metrics and page).

Why one shared token rather than users: the service is an appliance on a private network;
the token keeps other machines from adding streams (which makes the server open URLs: an
SSRF vector) or reading counts. Clients send ``Authorization: Bearer <token>``. Browsers
cannot put headers on ``<video>``/``EventSource`` requests, so opening ``/?token=<token>``
once sets an HttpOnly, SameSite=Strict cookie and redirects to ``/`` (dropping the token
from the address bar and history). The cookie holds an HMAC of the token, not the token, so
a leaked cookie jar does not reveal the credential used by scripts; SameSite=Strict keeps
other sites from riding on it (CSRF). Comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from crowdcount.streamer.routes.common import json_error

COOKIE = "crowdcount_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"crowdcount-session-v1", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def token_middleware(token: str) -> Middleware:
    """Middleware refusing (401) every request without the token or the session cookie."""
    session = session_value(token)

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credential.strip(), token):
            return await handler(request)
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and _same(cookie, session):
            return await handler(request)
        offered = request.query.get("token")
        if (request.path == "/" and request.method == "GET" and offered is not None
                and _same(offered, token)):
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, session, httponly=True, samesite="Strict",
                                path="/", secure=request.secure)
            return response
        return json_error(
            401,
            "missing or invalid token: send 'Authorization: Bearer <token>' "
            "(browsers: open /?token=<token> once)",
            {"WWW-Authenticate": 'Bearer realm="crowdcount"'},
        )

    return check_token
