"""HTTPS for the page, the API and the WebRTC signalling.

Why: browsers give ``getUserMedia`` (the page's "Use my camera") only to secure contexts,
which are https:// pages and localhost. A phone or laptop on the LAN opening
``http://192.168.1.20:8080/`` therefore cannot share its camera; the same server over TLS
can. One certificate and key (PEM files, for example from a local CA such as mkcert, or a
self-signed pair the browser is told to accept) serve everything, since the page, its API
calls, the SSE feeds and the offers all go to the same origin.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["server_ssl_context"]


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM, the chain may follow) and its private ``key``.

    Raises ``ValueError`` with one line when a file is missing or unreadable, or the key
    does not belong to the certificate, so ``crowdcount serve`` exits 2 before listening.
    """
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ValueError(f"TLS {what} file not found: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise ValueError(f"cannot use TLS certificate {cert} with key {key}: {reason}") from None
    except OSError as exc:
        raise ValueError(f"cannot read TLS files {cert}, {key}: {exc.strerror or exc}") from None
    return context
