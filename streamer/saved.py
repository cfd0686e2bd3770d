"""Settings made through the API that must outlive the process: alert rules and zones.

Why their own tables (in the service's SQLite file) rather than the config file: the
config file is the operator's, and the server never rewrites it; what someone sets on the
page is saved here and applied again at the next start. Zones are saved for every kind
of stream (config-file cameras, API cameras, browser cameras, keyed by stream id) and,
once saved, replace the config file's zones for that stream: the newest decision wins.

The file is the count store's (WAL mode is set there and is a property of the file), but
this module keeps its own connection: these rows change a few times a day, are read once
at start, and must not wait behind the count writer's batches. Calls do I/O; from async
code use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from crowdcount.streamer.alerts import ThresholdRule

__all__ = ["SavedSettings"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_rules (
    name TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    zone TEXT,
    above REAL NOT NULL,
    below REAL NOT NULL,
    for_seconds REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_zones (
    stream_id TEXT PRIMARY KEY,
    zones TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


class SavedSettings:
    """Alert rules and per-stream zones saved through the API (thread-safe)."""

    def __init__(self, path: str | Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_SCHEMA)

    # -- alert rules --------------------------------------------------------------------------

    def rules(self) -> list[ThresholdRule]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, stream, zone, above, below, for_seconds FROM alert_rules "
                "ORDER BY name").fetchall()
        return [ThresholdRule(*row) for row in rows]

    def save_rule(self, rule: ThresholdRule) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO alert_rules (name, stream, zone, above, below, for_seconds, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "stream = excluded.stream, zone = excluded.zone, above = excluded.above, "
                "below = excluded.below, for_seconds = excluded.for_seconds, "
                "updated_at = excluded.updated_at",
                (rule.name, rule.stream, rule.zone, rule.above, rule.below, rule.for_seconds,
                 time.time()))

    def delete_rule(self, name: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM alert_rules WHERE name = ?", (name,))
        return cur.rowcount > 0

    # -- zones --------------------------------------------------------------------------------

    def zones(self) -> dict[str, list[dict[str, Any]]]:
        """Stream id -> its saved zones (``{"name", "points"}``; ``[]``: none, on purpose)."""
        with self._lock:
            rows = self._conn.execute("SELECT stream_id, zones FROM stream_zones").fetchall()
        return {sid: json.loads(text) for sid, text in rows}

    def save_zones(self, stream_id: str, zones: list[dict[str, Any]]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO stream_zones (stream_id, zones, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (stream_id) DO UPDATE SET zones = excluded.zones, "
                "updated_at = excluded.updated_at",
                (stream_id, json.dumps(zones), time.time()))

    def delete_zones(self, stream_id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM stream_zones WHERE stream_id = ?", (stream_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
