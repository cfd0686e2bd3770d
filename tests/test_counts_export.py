"""Exporting a long count history from a real ``crowdcount serve`` process: the CSV is
streamed, so the server's memory stays flat however many rows there are."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from crowdcount.streamer.store import SQLiteStore
from tests.fixtures.rtsp import free_port

pytestmark = pytest.mark.slow

ROWS = 3_000_000
T0 = 1_600_000_000.0
DT = 0.03  # a 33 fps camera: 3 M rows is about 25 hours


def _fill(db: Path) -> None:
    SQLiteStore(db).close()  # the schema, as the server creates it
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")

    def rows() -> Iterator[tuple[str, float, float, float]]:
        for i in range(ROWS):
            yield ("cam", T0 + i * DT, float(i % 50), float(i % 50) + 0.5)

    with conn:
        conn.executemany(
            "INSERT INTO counts (stream_id, t, count, smoothed) VALUES (?, ?, ?, ?)", rows()
        )
    conn.close()


@pytest.fixture
def server(tmp_path: Path, brightness_model: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``crowdcount serve`` in its own process (an honest RSS) on a 3 M-row history."""
    db = tmp_path / "counts.sqlite3"
    _fill(db)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CROWDCOUNT_TOKEN"}
    log = (tmp_path / "serve.log").open("w")
    # Raw rows are kept (the default prunes raw rows older than a few hours into rollups):
    # this test exports the raw history.
    config = tmp_path / "serve.toml"
    config.write_text("[server]\nraw_history_hours = 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crowdcount.streamer.cli", "serve", "--config", str(config),
         "--port", str(port), "--database", str(db), "--model", str(brightness_model)],
        stderr=log, env=env, cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.1)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_csv_export_of_3m_rows_keeps_server_memory_flat(server) -> None:
    base, process = server
    # Warm the code path (a small export) before the baseline.
    small = urllib.request.urlopen(f"{base}/api/streams/cam/counts.csv?since={T0}&until="
                                   f"{T0 + 100 * DT - DT / 2}", timeout=30).read().decode()
    assert len(small.splitlines()) == 1 + 100
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    lines = 0
    first = last = b""
    tail = b""
    try:
        with urllib.request.urlopen(f"{base}/api/streams/cam/counts.csv?since=0",
                                    timeout=120) as r:
            assert r.headers["Content-Type"].startswith("text/csv")
            while chunk := r.read(1 << 20):
                if not first:
                    first = chunk[: chunk.index(b"\n", chunk.index(b"\n") + 1)]
                lines += chunk.count(b"\n")
                tail = (tail + chunk)[-200:]
    finally:
        done.set()
        sampler.join()
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert lines == ROWS + 1
    assert first == f"t,count,smoothed\n{T0!r},0.0,0.5".encode()
    i = ROWS - 1
    assert last == f"{T0 + i * DT!r},{float(i % 50)!r},{float(i % 50) + 0.5!r}".encode()
    grown = (peak[0] - baseline) / 2**20
    print(f"\nexport of {ROWS} rows: server RSS {baseline / 2**20:.0f} MiB before, "
          f"peak +{grown:.1f} MiB")
    assert grown < 100
