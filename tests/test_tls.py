"""HTTPS: ``--tls-cert``/``--tls-key`` (``[server] tls_cert``/``tls_key``) serve the page, the
API and the WebRTC signalling over TLS, which is what lets a browser that is not on
localhost use "Use my camera".

The certificate is generated here (``cryptography``) for the name ``crowdcount.test`` and
127.0.0.1. Chromium maps ``crowdcount.test`` to 127.0.0.1 (``--host-resolver-rules``), so
the page has a non-localhost origin, as a phone on the LAN would, while no packet leaves
loopback: over plain http that origin is not a secure context and the camera button is
disabled; over https it is, and the camera's stream gets counted.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crowdcount.model.runtime import Runtime
from crowdcount.streamer.tls import server_ssl_context
from tests.fixtures.browser import launch_chromium, serve_app, server_config
from tests.fixtures.rtsp import free_port
from tests.fixtures.waiting import wait_until

HOST = "crowdcount.test"


def make_cert(folder: Path, name: str = HOST) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and 127.0.0.1, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "crowdcount.streamer.cli", "serve", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}


def test_bad_tls_files_are_one_line_errors(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = make_cert(tmp_path / "other")
    assert isinstance(server_ssl_context(cert, key), ssl.SSLContext)
    with pytest.raises(ValueError, match="key file not found"):
        server_ssl_context(cert, tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cannot use TLS certificate"):
        server_ssl_context(other_cert, key)  # a key that is not the certificate's
    # The CLI: a missing key, and a certificate without a key, end with exit 2 and one line.
    for args in (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem")],
                 ["--tls-cert", str(cert)]):
        proc = subprocess.run(_cmd(*args, "--database", str(tmp_path / "db.sqlite3")),
                              capture_output=True, text=True, timeout=60, env=_env())
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "tls" in lines[0].lower(), proc.stderr


@pytest.mark.slow
def test_serve_answers_over_https(brightness_model: Path, tmp_path: Path) -> None:
    """``crowdcount serve --tls-cert --tls-key``: https answers with the certificate given,
    verified against it; plain http on that port gets no page."""
    cert, key = make_cert(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        _cmd("--port", str(port), "--model", str(brightness_model), "--tls-cert", str(cert),
             "--tls-key", str(key), "--database", str(tmp_path / "db.sqlite3")),
        stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=verify,
                                            timeout=2) as r:
                    page = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "no https answer"
                time.sleep(0.1)
        assert "<html" in page.lower()
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/health", context=verify,
                                    timeout=2) as r:
            assert r.status == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- a real Chromium on a non-localhost origin ------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def lan_chromium(fake_camera: Path) -> AsyncIterator[Any]:
    """Chromium that resolves ``crowdcount.test`` to 127.0.0.1 (a LAN-like origin)."""
    async with launch_chromium(f"--use-file-for-fake-video-capture={fake_camera}",
                               f"--host-resolver-rules=MAP {HOST} 127.0.0.1") as browser:
        yield browser


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_use_my_camera_works_over_https_on_a_lan_origin(
    lan_chromium, tmp_path: Path, brightness_model: Path, artifacts: Path
) -> None:
    cert, key = make_cert(tmp_path)
    runtime = Runtime.open(brightness_model, threads=1)
    context = await lan_chromium.new_context(ignore_https_errors=True, permissions=["camera"],
                                             viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # Plain http from that origin: no secure context, no camera.
        # A name other than the listening host: allowed_hosts (no token: Host is checked).
        async with serve_app(server_config(tmp_path / "http", brightness_model,
                                           allowed_hosts=[HOST]), runtime,
                             host_name=HOST) as plain:
            await page.goto(plain.url + "/")
            assert await page.evaluate("() => window.isSecureContext") is False
            assert await page.get_by_role("button", name="Use my camera").is_disabled()

        tls = server_ssl_context(cert, key)
        async with serve_app(server_config(tmp_path / "https", brightness_model,
                                           allowed_hosts=[HOST]), runtime,
                             ssl_context=tls, host_name=HOST) as server:
            assert server.url.startswith(f"https://{HOST}:")
            await page.goto(server.url + "/")
            assert await page.evaluate("() => window.isSecureContext") is True
            assert await page.evaluate("() => location.protocol") == "https:"
            await page.get_by_role("button", name="Use my camera").click()
            svc = server.service
            # Signalling (POST /api/rtc/offer) went over TLS; the camera is now a stream
            # whose frames the model counts.
            await wait_until(lambda: any(e.kind == "webrtc" and e.source.status.frames_out > 5
                                         for e in svc.streams.values()), 30,
                             "the browser camera's frames to be counted")
            await page.wait_for_function(
                "() => Number(document.querySelector('[data-testid=stream-count]')"
                "?.dataset.value) > 0", timeout=20_000)
            # ... and the annotated video comes back over the same (DTLS) connection.
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=stream-video]')?.videoWidth > 0",
                timeout=30_000)
            await page.screenshot(path=str(artifacts / "web-https-camera.png"))
        assert errors == []
    finally:
        await context.close()
