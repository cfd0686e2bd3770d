"""``crowdcount serve`` as a real process: it answers, stops cleanly on SIGTERM with its
counts committed, and refuses a bad config with one line and exit code 2."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.rtsp import free_port

pytestmark = pytest.mark.slow


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "crowdcount.streamer.cli", "serve", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CROWDCOUNT_TOKEN", None)
    return env


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


def test_serve_answers_and_stops_on_sigterm_with_counts_flushed(
    brightness_model: Path, h264_clip: Path, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "counts.sqlite3"
    proc = subprocess.Popen(
        _cmd("--port", str(port), "--model", str(brightness_model), "--database", str(db),
             "--stream", f"clip={h264_clip}"),
        stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            try:
                health = _get(f"{base}/api/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() - started < 20, "server did not answer"
                time.sleep(0.05)
        print(f"\nserve answered /api/health after {time.monotonic() - started:.2f} s")
        assert health["status"] == "ok" and health["streams"] == 1
        while _get(f"{base}/api/streams/clip")["status"]["frames_out"] < 10:
            assert time.monotonic() - started < 30
            time.sleep(0.05)
        processed = _get(f"{base}/api/streams/clip")["status"]["frames_out"]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        print(f"exited {time.monotonic() - t0:.2f} s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM counts WHERE stream_id = 'clip'").fetchone()[0]
    assert rows >= processed


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = \"8080\"\n")
    proc = subprocess.run(_cmd("--config", str(config)), capture_output=True, text=True,
                          timeout=30, env=_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "bad.toml" in lines[0] and "server.port" in lines[0]


def test_public_host_without_token_exits_2(brightness_model: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        _cmd("--host", "0.0.0.0", "--model", str(brightness_model),
             "--database", str(tmp_path / "db.sqlite3")),
        capture_output=True, text=True, timeout=30, env=_env(),
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "token" in proc.stderr


def test_serve_does_not_import_tensorflow() -> None:
    code = ("import sys; from crowdcount.streamer.cli import build_parser; build_parser(); "
            "import crowdcount.streamer.app; "
            "assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _status(url: str, token: str | None = None) -> int | None:
    """HTTP status of GET ``url`` (``None`` while nothing listens)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _serving(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """Start ``crowdcount serve`` on a free port; return it once it answers on loopback."""
    port = free_port()
    proc = subprocess.Popen(_cmd("--port", str(port), *args), stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while _status(f"{base}/api/health") is None:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() - started < 20, "server did not answer"
        time.sleep(0.05)
    return proc, base


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_env_token_allows_all_interfaces(brightness_model: Path, tmp_path: Path) -> None:
    """``CROWDCOUNT_TOKEN`` alone lets ``--host 0.0.0.0`` start, and it is the token the
    server then asks for. (It listens on all interfaces; the test talks to 127.0.0.1 only.)"""
    env = {**_env(), "CROWDCOUNT_TOKEN": "from-env"}
    proc, base = _serving(["--host", "0.0.0.0", "--model", str(brightness_model),
                           "--database", str(tmp_path / "db.sqlite3")], env, tmp_path)
    try:
        assert _status(f"{base}/api/health") == 401
        assert _status(f"{base}/api/health", "from-env") == 200
    finally:
        _stop(proc)


def test_token_order_flag_then_env_then_config(brightness_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "public.toml"
    config.write_text(f'[server]\nhost = "0.0.0.0"\ntoken = "from-file"\n'
                      f'database = "db.sqlite3"\n\n[model]\npath = "{brightness_model}"\n')
    # The file alone: its token.
    proc, base = _serving(["--config", str(config)], _env(), tmp_path)
    try:
        assert _status(f"{base}/api/health", "from-file") == 200
    finally:
        _stop(proc)
    # The environment beats the file.
    env = {**_env(), "CROWDCOUNT_TOKEN": "from-env"}
    proc, base = _serving(["--config", str(config)], env, tmp_path)
    try:
        assert _status(f"{base}/api/health", "from-file") == 401
        assert _status(f"{base}/api/health", "from-env") == 200
    finally:
        _stop(proc)
    # The flag beats both; with a public host in a file that has no token, too.
    config.write_text(config.read_text().replace('token = "from-file"\n', ""))
    proc, base = _serving(["--config", str(config), "--token", "from-flag"], env, tmp_path)
    try:
        assert _status(f"{base}/api/health", "from-env") == 401
        assert _status(f"{base}/api/health", "from-flag") == 200
    finally:
        _stop(proc)


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "127.0.0.1:6379"], "needs --database postgresql://"),
    (["--cluster", "127.0.0.1:6379", "--database", "counts.sqlite3"],
     "needs a PostgreSQL --database"),
    (["--database", "postgresql://crowd@127.0.0.1:5432/x"], "add --cluster"),
    (["--cluster", "127.0.0.1:6379", "--database", "postgresql://crowd@127.0.0.1:{port}/x"],
     "cannot open database postgresql://***@127.0.0.1"),  # the user is masked
])
def test_cluster_arguments_refused_with_one_line(args: list[str], message: str) -> None:
    """A cluster needs its PostgreSQL database, and PostgreSQL only makes sense in a cluster;
    an unreachable database is refused before listening (nothing listens on that port)."""
    args = [a.format(port=free_port()) for a in args]
    proc = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
