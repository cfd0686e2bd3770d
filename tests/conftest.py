"""Shared pytest configuration. Fixtures live in ``tests/fixtures/`` and are registered here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROWD_SHARED") or ROOT.parent / "shared")

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.app",
    "tests.fixtures.datasets",
    "tests.fixtures.rtc",
    "tests.fixtures.media",
    "tests.fixtures.rtsp",
    "tests.fixtures.mqtt",
    "tests.fixtures.browser",
    "tests.fixtures.postgres",
    "tests.fixtures.stores",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.deployments",
    "tests.fixtures.calibration",
]


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real data folder; tests that need it skip when it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED} (set CROWD_SHARED to use it)")
    return SHARED
