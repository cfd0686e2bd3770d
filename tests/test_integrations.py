"""Zones → alerts → store and notifiers, through the real Pipeline's result hook."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from crowdcount.model.types import Frame, Result
from crowdcount.model.zones import Zone
from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.integrations import Integrations
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sinks.base import Notifier
from crowdcount.streamer.sinks.mqtt import MqttNotifier
from crowdcount.streamer.sinks.webhook import WebhookNotifier
from crowdcount.streamer.sources.synthetic import SyntheticSource
from crowdcount.streamer.store import SQLiteStore
from tests.fixtures.waiting import wait_until

W, H = 320, 256
LEFT = Zone("left", ((0, 0), (W / 2, 0), (W / 2, H), (0, H)))
RIGHT = Zone("right", ((W / 2, 0), (W, 0), (W, H), (W / 2, H)))


class RecordingNotifier:
    def __init__(self) -> None:
        self.counts: list[tuple[str, float, float, dict[str, float]]] = []
        self.alerts: list[AlertEvent] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    def notify_counts(self, stream, t, total, zones) -> None:
        self.counts.append((stream, t, total, dict(zones)))

    def notify_alert(self, event: AlertEvent) -> None:
        self.alerts.append(event)

    async def close(self) -> None:
        self.closed = True


class BrokenNotifier(RecordingNotifier):
    def notify_counts(self, stream, t, total, zones) -> None:
        raise RuntimeError("down")

    def notify_alert(self, event: AlertEvent) -> None:
        raise RuntimeError("down")


class Recorder:
    def __init__(self) -> None:
        self.by_stream: dict[str, list[Result]] = defaultdict(list)

    def on_result(self, result: Result) -> None:
        self.by_stream[result.frame.stream_id].append(result)


async def test_pipeline_hook_fills_zones_raises_and_clears_alerts(runtime, tmp_path: Path):
    store = SQLiteStore(tmp_path / "c.sqlite3", flush_interval=0.05)
    notifier = RecordingNotifier()
    assert isinstance(notifier, Notifier)
    rule = ThresholdRule("left-busy", "cam", "left", above=500, below=100, for_seconds=0.2)
    integ = Integrations(
        zones={"cam": [LEFT, RIGHT]},
        rules=[rule],
        notifiers=[notifier, BrokenNotifier()],
        alert_log=store.alerts,
    )
    seen: list[AlertEvent] = []
    integ.on_alert.append(seen.append)
    await integ.start()
    assert notifier.started
    rec = Recorder()
    try:
        async with Pipeline(runtime, result_hook=integ.process) as pipe:
            pipe.add_sink(rec)
            level = {"v": 255}  # a uniform frame: each half holds half the count
            src = SyntheticSource(
                "cam", W, H, fps=20, render=lambda i: np.full((H, W, 3), level["v"], np.uint8)
            )
            await pipe.add_stream(src)
            await wait_until(lambda: [e.kind for e in seen] == ["raised"])
            results = rec.by_stream["cam"]
            # Every sink sees the zone counts; halves of a uniform frame split the count.
            for r in results:
                assert set(r.zones) == {"left", "right"}
                assert sum(r.zones.values()) == pytest.approx(r.count, rel=1e-4)
                assert r.zones["left"] == pytest.approx(r.count / 2, rel=1e-4)
            assert results[-1].count == pytest.approx(W * H / 64, rel=1e-4)
            assert notifier.counts[0][3] == results[0].zones
            level["v"] = 20  # the crowd leaves
            await wait_until(lambda: [e.kind for e in seen] == ["raised", "cleared"])
            assert pipe.stats().sink_errors == 0
        raised, cleared = seen
        assert raised.t - raised.over_since >= 0.2 - 1e-9
        assert cleared.value < 100 and cleared.raised_at == raised.t
        assert notifier.alerts == seen
        assert integ.errors > 0  # the broken notifier, isolated
        await wait_until(lambda: bool(store.alerts.query(active=False)))
        (row,) = store.alerts.query()
        assert (row["stream"], row["zone"], row["rule"]) == ("cam", "left", "left-busy")
        assert (row["raised_at"], row["cleared_at"]) == (raised.t, cleared.t)
        assert row["peak"] == pytest.approx(W * H / 64 / 2, rel=1e-4)
    finally:
        await integ.close()
        store.close()
    assert notifier.closed


async def test_failing_hook_passes_the_original_result(runtime):
    def hook(result: Result) -> Result:
        raise ValueError("bad hook")

    rec = Recorder()
    async with Pipeline(runtime, result_hook=hook) as pipe:
        pipe.add_sink(rec)
        await pipe.add_stream(SyntheticSource("cam", 64, 64, fps=30))
        await wait_until(lambda: len(rec.by_stream["cam"]) >= 3)
        assert pipe.stats().sink_errors >= 3
        assert rec.by_stream["cam"][0].zones == {}


def _result(stream: str, t: float, level: float) -> Result:
    image = np.zeros((H, W, 3), np.uint8)
    density = np.full((H // 8, W // 8), level / (H // 8 * W // 8), np.float32)
    return Result(Frame(stream, 0, t, image), density, float(density.sum()), t)


def test_process_without_zones_rules_changes_and_removed_streams() -> None:
    notifier = RecordingNotifier()
    rule = ThresholdRule("busy", "cam", None, 10, 5)
    integ = Integrations(rules=[rule], notifiers=[notifier])
    r = _result("cam", 1.0, 20)
    assert integ.process(r) is r  # no zones: the very same result
    assert integ.active_alerts()[0]["name"] == "busy"
    integ.set_zones("cam", [LEFT])
    assert integ.zones("cam") == (LEFT,)
    assert integ.process(_result("cam", 2.0, 20)).zones == {"left": pytest.approx(10)}
    integ.forget_stream("cam")
    assert [e.reason for e in notifier.alerts] == [None, "stream_removed"]
    integ.process(_result("cam", 3.0, 20))
    integ.set_rules([ThresholdRule("busy", "cam", None, 30, 5)])  # changed: cleared
    assert [e.reason for e in notifier.alerts][-1] == "rule_changed"
    assert integ.rules[0].above == 30
    integ.set_zones("cam", ())
    assert integ.zones("cam") == () and integ.process(_result("cam", 4.0, 1)).zones == {}
    with pytest.raises(ValueError, match="unique"):
        integ.set_zones("cam", [LEFT, LEFT])


def test_from_config_builds_zones_rules_and_notifiers() -> None:
    cfg = parse_config(
        {
            "streams": [
                {
                    "name": "cam",
                    "url": "rtsp://h/x",
                    "zones": [{"name": "door", "points": [[0, 0], [10, 0], [0, 10]]}],
                }
            ],
            "thresholds": [{"name": "d", "stream": "cam", "zone": "door", "above": 5, "below": 2}],
            "sinks": {
                "webhook": {"url": "http://127.0.0.1:1/x", "secret": "s", "retries": 1},
                "mqtt": {"host": "127.0.0.1", "topic_prefix": "site"},
            },
        }
    )
    integ = Integrations.from_config(cfg)
    assert integ.zones("cam") == (Zone("door", ((0, 0), (10, 0), (0, 10))),)
    assert integ.rules == (ThresholdRule("d", "cam", "door", 5, 2, 0),)
    hook, mq = integ.notifiers
    assert isinstance(hook, WebhookNotifier) and hook.retries == 1
    assert isinstance(mq, MqttNotifier) and mq.prefix == "site"
    assert Integrations.from_config(parse_config({})).notifiers == []
