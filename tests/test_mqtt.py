"""MqttNotifier against a real mosquitto on 127.0.0.1, read back by paho subscribers."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.sinks.base import Notifier
from crowdcount.streamer.sinks.mqtt import MqttNotifier, topic_level
from tests.fixtures.results import make_result
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.mqtt

RULE = ThresholdRule("busy", "cam", None, 10, 5, 0)


class Subscriber:
    """A plain paho client that records (topic, payload, retain) per message."""

    def __init__(self, broker, topic: str = "crowdcount/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscribe not acknowledged"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def retained(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, r in self.messages if t == topic and r]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _event(kind: str, t: float) -> AlertEvent:
    return AlertEvent(kind, RULE, t, 12.0, 1.0, 1.0, 12.0)  # type: ignore[arg-type]


async def test_counts_zones_alerts_and_retained_state(mosquitto) -> None:
    sub = Subscriber(mosquitto)
    pub = MqttNotifier(mosquitto.host, mosquitto.port, qos=1, max_rate=100)
    assert isinstance(pub, Notifier)
    await pub.start()
    await wait_until(lambda: pub.connected)
    pub.on_result(make_result("cam", 1.0, 12.5, {"door": 4.25, "a/b+c": 1.0}))
    await wait_until(lambda: sub.on("crowdcount/cam/a_b_c/count"))
    assert sub.on("crowdcount/cam/count") == [{"stream": "cam", "t": 1.0, "count": 12.5}]
    assert sub.on("crowdcount/cam/door/count") == [
        {"stream": "cam", "zone": "door", "t": 1.0, "count": 4.25}
    ]
    assert sub.on("crowdcount/cam/a_b_c/count")[0]["zone"] == "a/b+c"
    pub.on_alert(_event("raised", 2.0))
    await wait_until(lambda: sub.on("crowdcount/alerts"))
    alert = sub.on("crowdcount/alerts")[0]
    assert (alert["event"], alert["rule"], alert["stream"], alert["value"]) == (
        "raised", "busy", "cam", 12.0,
    )  # fmt: skip
    await wait_until(lambda: any(s["alert"] for s in sub.on("crowdcount/cam/state")))
    sub.close()

    # A subscriber connecting later gets the retained state and status at once.
    late = Subscriber(mosquitto)
    await wait_until(lambda: late.retained("crowdcount/cam/state"))
    state = json.loads(late.retained("crowdcount/cam/state")[-1])
    assert state["count"] == 12.5 and state["zones"] == {"door": 4.25, "a/b+c": 1.0}
    assert state["alert"] is True and state["alerts"]["busy"]["raised_at"] == 1.0
    assert late.retained("crowdcount/status") == [b"online"]
    assert not late.on("crowdcount/cam/count")  # counts are not retained

    pub.on_alert(_event("cleared", 3.0))
    await wait_until(lambda: any(not s["alert"] for s in late.on("crowdcount/cam/state")))
    await pub.close()
    await wait_until(lambda: b"offline" in [p for t, p, _ in late.messages if t.endswith("status")])
    late.close()
    assert pub.dropped == 0 and pub.published >= 6


async def test_count_publishing_is_rate_limited_latest_wins(mosquitto) -> None:
    sub = Subscriber(mosquitto)
    pub = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=2.0)
    await pub.start()
    await wait_until(lambda: pub.connected)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 1.6:  # 1.6 s at ~50 fps
        pub.on_result(make_result("cam", float(i), float(i), {"door": float(i)}))
        i += 1
        await asyncio.sleep(0.02)
    last = i - 1
    await asyncio.sleep(0.7)  # the trailing value goes out when its interval is up
    counts = sub.on("crowdcount/cam/count")
    doors = sub.on("crowdcount/cam/door/count")
    # At most 2 per second per topic: first at once, then every 0.5 s -> 4 or 5 in 1.6 s+.
    assert 3 <= len(counts) <= 5, counts
    assert len(doors) == len(counts)
    assert counts[0]["count"] == 0.0 and counts[-1]["count"] == float(last)  # newest wins
    assert pub.suppressed > 50
    await pub.close()
    sub.close()


async def test_reconnects_after_broker_restart(mosquitto) -> None:
    pub = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=100, reconnect_delay=(0.1, 0.5))
    await pub.start()
    await wait_until(lambda: pub.connected)
    pub.on_result(make_result("cam", 1.0, 5.0, {}))
    await asyncio.to_thread(mosquitto.restart)  # no persistence: retained state is gone
    await wait_until(lambda: pub.connects >= 2, timeout=15)
    # The state is published again on reconnect, and new counts flow.
    sub = Subscriber(mosquitto)
    await wait_until(lambda: sub.retained("crowdcount/cam/state"))
    pub.on_result(make_result("cam", 2.0, 6.0, {}))
    await wait_until(lambda: sub.on("crowdcount/cam/count"))
    assert sub.on("crowdcount/cam/count")[-1]["count"] == 6.0
    await pub.close()
    sub.close()


async def test_unreachable_broker_never_blocks(tmp_path) -> None:
    pub = MqttNotifier("127.0.0.1", 9, topic_prefix="x/y", reconnect_delay=(0.1, 0.2))
    await pub.start()
    t0 = time.monotonic()
    for i in range(200):
        pub.on_result(make_result("cam", float(i), 1.0, {"z": 1.0}))
        pub.on_alert(_event("raised", float(i)))
    # A call that waited for a connection would wait at least reconnect_delay (0.1 s): 400
    # of them 40 s. The bound is generous on purpose; it is no speed claim.
    assert time.monotonic() - t0 < 20
    assert not pub.connected and pub.dropped > 0
    await pub.close()
    assert topic_level("a/b#") == "a_b_" and topic_level("") == "_"
