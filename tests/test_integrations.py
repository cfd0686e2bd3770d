"""Zones → alerts → history, feed and notifiers, through the real Pipeline's analysis stage
and its one sink path."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from crowdcount.model.types import Frame, Result
from crowdcount.model.zones import Zone
from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.integrations import Integrations
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.sinks.base import Notifier
from crowdcount.streamer.sinks.counts import CountSink
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

    def on_result(self, result: Result) -> None:
        self.counts.append(
            (result.frame.stream_id, result.frame.captured_at, result.count, dict(result.zones))
        )

    def on_alert(self, event: AlertEvent) -> None:
        self.alerts.append(event)

    async def close(self) -> None:
        self.closed = True


class BrokenNotifier(RecordingNotifier):
    def on_result(self, result: Result) -> None:
        raise RuntimeError("down")

    def on_alert(self, event: AlertEvent) -> None:
        raise RuntimeError("down")


class Recorder:
    def __init__(self) -> None:
        self.by_stream: dict[str, list[Result]] = defaultdict(list)

    def on_result(self, result: Result) -> None:
        self.by_stream[result.frame.stream_id].append(result)


async def test_pipeline_analysis_fills_zones_and_delivers_alerts_to_sinks(runtime, tmp_path: Path):
    store = SQLiteStore(tmp_path / "c.sqlite3", flush_interval=0.05)
    notifier = RecordingNotifier()
    assert isinstance(notifier, Notifier)
    rule = ThresholdRule("left-busy", "cam", "left", above=500, below=100, for_seconds=0.2)
    integ = Integrations(
        zones={"cam": [LEFT, RIGHT]},
        rules=[rule],
        notifiers=[notifier, BrokenNotifier()],
    )
    feed = CountFeed(maxsize=100_000)  # keeps every item for the check below
    everything = feed.subscribe(None)
    records = CountSink(store.history, feed, alert_log=store.alerts)
    await integ.start()
    assert notifier.started
    rec = Recorder()
    seen = notifier.alerts
    try:
        async with Pipeline(runtime, analysis=integ) as pipe:
            for sink in (rec, records, *integ.notifiers):
                pipe.add_sink(sink)
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
            errors = pipe.stats().sink_errors
            assert errors >= len(results)  # the broken notifier, isolated from the others
        raised, cleared = seen
        assert raised.t - raised.over_since >= 0.2 - 1e-9
        assert cleared.value < 100 and cleared.raised_at == raised.t
        assert len(rec.by_stream["cam"]) == len(notifier.counts)  # every sink saw every result
        # The live feed got the same alerts, marked as such, among the counts.
        items = []
        while not everything._queue.empty():
            items.append(everything._queue.get_nowait())
        alerts = [i for i in items if i.get("type") == "alert"]
        assert [(a["event"], a["rule"]) for a in alerts] == [
            ("raised", "left-busy"), ("cleared", "left-busy")
        ]
        assert len(items) - len(alerts) >= 2
        await wait_until(lambda: bool(store.alerts.query(active=False)))
        (row,) = store.alerts.query()
        assert (row["stream"], row["zone"], row["rule"]) == ("cam", "left", "left-busy")
        assert (row["raised_at"], row["cleared_at"]) == (raised.t, cleared.t)
        assert row["peak"] == pytest.approx(W * H / 64 / 2, rel=1e-4)
    finally:
        await integ.close()
        store.close()
    assert notifier.closed


class FailingAnalysis:
    def analyse(self, result: Result) -> tuple[Result, list[AlertEvent]]:
        raise ValueError("bad analysis")

    def forget_stream(self, stream: str) -> list[AlertEvent]:
        return []


async def test_failing_analysis_passes_the_original_result(runtime):
    rec = Recorder()
    async with Pipeline(runtime, analysis=FailingAnalysis()) as pipe:
        pipe.add_sink(rec)
        await pipe.add_stream(SyntheticSource("cam", 64, 64, fps=30))
        await wait_until(lambda: len(rec.by_stream["cam"]) >= 3)
        assert pipe.stats().sink_errors >= 3
        assert rec.by_stream["cam"][0].zones == {}


def _result(stream: str, t: float, level: float) -> Result:
    image = np.zeros((H, W, 3), np.uint8)
    density = np.full((H // 8, W // 8), level / (H // 8 * W // 8), np.float32)
    return Result(Frame(stream, 0, t, image), density, float(density.sum()), t)


def test_analyse_without_zones_rules_changes_and_removed_streams() -> None:
    rule = ThresholdRule("busy", "cam", None, 10, 5)
    integ = Integrations(rules=[rule])
    r = _result("cam", 1.0, 20)
    same, events = integ.analyse(r)
    assert same is r  # no zones: the very same result
    assert [e.kind for e in events] == ["raised"]
    assert integ.active_alerts()[0]["name"] == "busy"
    integ.set_zones("cam", [LEFT])
    assert integ.zones("cam") == (LEFT,)
    zoned, events = integ.analyse(_result("cam", 2.0, 20))
    assert zoned.zones == {"left": pytest.approx(10)} and events == []
    assert [e.reason for e in integ.forget_stream("cam")] == ["stream_removed"]
    integ.analyse(_result("cam", 3.0, 20))
    changed = integ.set_rules([ThresholdRule("busy", "cam", None, 30, 5)])
    assert [(e.kind, e.reason) for e in changed] == [("cleared", "rule_changed")]
    assert integ.rules[0].above == 30
    integ.set_zones("cam", ())
    assert integ.zones("cam") == () and integ.analyse(_result("cam", 4.0, 1))[0].zones == {}
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
