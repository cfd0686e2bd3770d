"""A missing system component skips a test on a developer's machine and fails it on CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.components import need

ROOT = Path(__file__).resolve().parents[1]
MQTT_TEST = "tests/test_mqtt.py::test_counts_zones_alerts_and_retained_state"


def test_need_passes_skips_or_fails(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    need("thing", None)  # present: nothing happens
    with pytest.raises(pytest.fail.Exception, match=r"thing unavailable: gone.*CI=true"):
        need("thing", "gone")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="thing unavailable: gone"):
        need("thing", "gone")


def _run_without_mosquitto(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MOSQUITTO"] = "/nonexistent/mosquitto"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", MQTT_TEST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_broker_skips_with_reason_off_ci(ci) -> None:
    run = _run_without_mosquitto(ci)
    assert run.returncode == 0, run.stdout
    assert "1 skipped" in run.stdout
    # -rs (pyproject addopts) lists the reason.
    assert "mosquitto unavailable: /nonexistent/mosquitto not found" in run.stdout


def test_missing_broker_fails_on_ci() -> None:
    run = _run_without_mosquitto("true")
    assert run.returncode == 1, run.stdout
    assert "1 error" in run.stdout and "skipped" not in run.stdout
    assert "mosquitto unavailable" in run.stdout and "CI=true" in run.stdout
