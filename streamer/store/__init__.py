"""Durable records of the service: count history, saved streams and alerts.

``base`` holds the interfaces the rest of the service speaks; ``sqlite`` is the embedded
implementation (one file, one process). ``open_store`` is where the server picks one.
"""

from __future__ import annotations

from pathlib import Path

from crowdcount.streamer.store.base import (
    AlertLog,
    AlertRow,
    CalibrationStore,
    CountHistory,
    CountRow,
    GatheringStore,
    MarkedFrame,
    SavedStream,
    SettingsStore,
    Store,
    StoreStats,
    StreamRegistry,
)
from crowdcount.streamer.store.sqlite import SQLiteStore

__all__ = [
    "AlertLog",
    "AlertRow",
    "CalibrationStore",
    "CountHistory",
    "CountRow",
    "GatheringStore",
    "MarkedFrame",
    "SQLiteStore",
    "SavedStream",
    "SettingsStore",
    "Store",
    "StoreStats",
    "StreamRegistry",
    "open_store",
]


def open_store(database: str | Path) -> Store:
    """The store for ``server.database`` (today a SQLite file path). Raises ``OSError`` or
    ``sqlite3.Error`` when it cannot be opened, ``RuntimeError`` for a newer schema."""
    return SQLiteStore(database)
