"""Counts, alerts and retained per-stream state over MQTT (paho-mqtt 2).

Topics, under ``topic_prefix`` (default ``crowdcount``)::

    <prefix>/<stream>/count           {"stream", "t", "count"}              rate-limited
    <prefix>/<stream>/<zone>/count    {"stream", "zone", "t", "count"}      rate-limited
                                      (+ "area_m2", "per_m2", "level" on a
                                      floor-calibrated stream)
    <prefix>/<stream>/state           {"stream", "t", "count", "zones",     retained,
                                       "floor": {zone: {"area_m2",          rate-limited
                                       "per_m2", "level"}}, "alert",        (not on alerts)
                                       "alerts": {rule: {...}}}
    <prefix>/alerts                   AlertEvent.to_dict()                  every event
    <prefix>/status                   "online" / "offline" (last will)      retained

With ``home_assistant`` on, retained Home Assistant discovery configs are published too
(``sinks.homeassistant``): a sensor per stream count and zone count (and, floor-calibrated,
a density and a level-of-service sensor per zone) and a binary sensor per alert rule, all
reading the retained state topic. They follow the stream: new zones or rules add entities,
removed ones (and removed streams) delete them with an empty retained payload, and they are
sent again whenever Home Assistant announces itself (``<discovery>/status``).

Why a rate limit: the pipeline can produce a count per frame per stream, far more than a
dashboard or a home-automation rule needs, and every message costs the broker and every
subscriber. Each topic sends at most ``max_rate`` messages a second; a value arriving sooner
replaces any waiting one and is sent when the interval is up, so the last value always gets
out (latest wins, nothing is queued up). Alerts bypass the limit, and push the state topic
at once so a retained state never says "no alert" while one is raised.

Why retained state: a subscriber connecting later (a dashboard, a restarted automation)
gets each stream's last count and alert status immediately instead of waiting for the next
change. The last will turns ``status`` to ``offline`` if the service dies without a word.

paho runs its network loop on its own thread (``loop_start``), reconnecting by itself with
backoff; ``publish`` from the event loop only appends to paho's outgoing queue, so nothing
here waits on the network. On (re)connect the retained state is published again, in case
the broker lost it. Zone names may contain characters that are special in topics
(``/``, ``+``, ``#``): those become ``_`` in the topic (the payload keeps the real name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from crowdcount.model.types import Result
from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.sinks.homeassistant import HaDiscovery, Message
from crowdcount.streamer.sinks.webhook import dumps

if TYPE_CHECKING:
    from crowdcount.streamer.config import MqttConfig

__all__ = ["MqttNotifier", "topic_level"]

log = logging.getLogger(__name__)

_SPECIAL = str.maketrans({"/": "_", "+": "_", "#": "_", "\x00": "_"})


def topic_level(name: str) -> str:
    """``name`` made safe as one topic level (no separators or wildcards)."""
    return name.translate(_SPECIAL) or "_"


class MqttNotifier:
    """Publishes to one broker; construct, ``await start()``, ``await close()``."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        username: str | None = None,
        password: str | None = None,
        topic_prefix: str = "crowdcount",
        qos: int = 0,
        max_rate: float = 2.0,
        keepalive: int = 30,
        client_id: str | None = None,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        home_assistant: bool = False,
        discovery_prefix: str = "homeassistant",
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be > 0")
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        self.host, self.port = host, int(port)
        self.prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self.interval = 1.0 / max_rate
        self.keepalive = int(keepalive)
        self.status_topic = f"{self.prefix}/status"
        self.alerts_topic = f"{self.prefix}/alerts"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"crowdcount-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.ha = HaDiscovery(self.prefix, discovery_prefix) if home_assistant else None
        self._rules: tuple[ThresholdRule, ...] = ()
        # stream -> (zones in its counts, zones with a floor density)
        self._zones_seen: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_sent: dict[str, float] = {}  # topic -> monotonic time of last publish
        self._waiting: dict[str, tuple[dict[str, Any], bool]] = {}  # topic -> newest payload
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # stream -> retained state (count, zones, active alerts); only touched on the loop.
        self._state: dict[str, dict[str, Any]] = {}
        self._started = self._closed = False
        self.connected = False
        self.connects = 0  # successful (re)connections
        self.published = 0  # messages handed to paho
        self.suppressed = 0  # count messages replaced by a newer one before sending
        self.dropped = 0  # publishes paho refused (e.g. not connected with qos 0)
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, cfg: MqttConfig) -> MqttNotifier:
        return cls(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password,
            topic_prefix=cfg.topic_prefix,
            qos=cfg.qos,
            max_rate=cfg.max_rate,
            keepalive=cfg.keepalive,
            client_id=cfg.client_id,
            home_assistant=cfg.home_assistant,
            discovery_prefix=cfg.discovery_prefix,
        )

    # ------------------------------------------------------------------ Notifier (a sink)

    async def start(self) -> None:
        """Start paho's network thread; connecting (and reconnecting) happens there."""
        if self._closed:
            raise RuntimeError("MQTT notifier is closed")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        # connect_async does no I/O here: an unreachable broker is retried by the thread.
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def on_result(self, result: Result) -> None:
        if self._closed:
            return
        stream, t, total = result.frame.stream_id, result.frame.captured_at, result.count
        zones = result.zones
        base = f"{self.prefix}/{topic_level(stream)}"
        floor = {k: v.to_dict() for k, v in result.floor.items()}
        if self.ha is not None:
            names = (tuple(sorted(zones)), tuple(sorted(floor)))
            if self._zones_seen.get(stream) != names:
                self._zones_seen[stream] = names
                self._discover(stream)
        self._limited(f"{base}/count", {"stream": stream, "t": t, "count": float(total)})
        for zone, value in zones.items():
            self._limited(
                f"{base}/{topic_level(zone)}/count",
                {"stream": stream, "zone": zone, "t": t, "count": float(value),
                 **floor.get(zone, {})},
            )
        state = self._state.setdefault(stream, {"stream": stream, "alerts": {}})
        state.update(t=t, count=float(total), zones={k: float(v) for k, v in zones.items()},
                     floor=floor)
        self._limited(f"{base}/state", self._state_payload(stream), retain=True)

    def on_alert(self, event: AlertEvent) -> None:
        if self._closed:
            return
        self._publish(self.alerts_topic, event.to_dict())
        state = self._state.setdefault(event.stream, {"stream": event.stream, "alerts": {}})
        if event.kind == "raised":
            state["alerts"][event.rule.name] = {
                "zone": event.zone,
                "raised_at": event.raised_at,
                "value": event.value,
            }
        else:
            state["alerts"].pop(event.rule.name, None)
        topic = f"{self.prefix}/{topic_level(event.stream)}/state"
        self._cancel(topic)
        self._publish(topic, self._state_payload(event.stream), retain=True)
        self._last_sent[topic] = time.monotonic()

    def set_rules(self, rules: tuple[ThresholdRule, ...]) -> None:
        """The alert rules now in force (Home Assistant gets a binary sensor for each)."""
        self._rules = tuple(rules)
        if self.ha is not None and not self._closed:
            for stream in list(self._zones_seen):
                self._discover(stream)

    def forget_stream(self, stream: str) -> None:
        """A stream was removed: its Home Assistant entities are deleted."""
        self._zones_seen.pop(stream, None)
        if self.ha is not None and not self._closed:
            self._send_discovery(self.ha.remove(stream))

    async def close(self, timeout: float = 2.0) -> None:
        """Say ``offline``, disconnect and stop paho's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for topic in list(self._timers):
            self._cancel(topic)
        if not self._started:
            return
        if self.connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(info.wait_for_publish, timeout)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    # ------------------------------------------------------------------ publishing

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "published": self.published,
            "suppressed": self.suppressed,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    def _state_payload(self, stream: str) -> dict[str, Any]:
        state = self._state[stream]
        alerts = dict(state["alerts"])
        return {
            "stream": stream,
            "t": state.get("t"),
            "count": state.get("count"),
            "zones": state.get("zones", {}),
            "floor": state.get("floor", {}),
            "alert": bool(alerts),
            "alerts": alerts,
        }

    def _discover(self, stream: str) -> None:
        assert self.ha is not None
        state = f"{self.prefix}/{topic_level(stream)}/state"
        rules = [r for r in self._rules if r.stream == stream]
        zones, floor = self._zones_seen.get(stream, ((), ()))
        self._send_discovery(self.ha.sync(stream, state, zones, rules, floor))

    def _send_discovery(self, messages: list[Message]) -> None:
        """Discovery configs are retained, at least once (qos >= 1): a lost config is an
        entity missing in Home Assistant until the next restart."""
        for topic, payload in messages:
            self._publish(topic, payload, retain=True, qos=max(self.qos, 1))

    def _publish(
        self, topic: str, payload: Mapping[str, Any] | None, retain: bool = False,
        qos: int | None = None,
    ) -> None:
        body = b"" if payload is None else dumps(payload)
        info = self.client.publish(topic, body, qos=self.qos if qos is None else qos,
                                   retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.published += 1
        else:
            self.dropped += 1
            self.last_error = mqtt.error_string(info.rc)

    def _limited(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Publish now if ``topic`` has been quiet for the interval, else keep only the
        newest payload and publish it when the interval is up."""
        if topic in self._timers:
            self.suppressed += topic in self._waiting
            self._waiting[topic] = (payload, retain)
            return
        now = time.monotonic()
        wait = self._last_sent.get(topic, -math.inf) + self.interval - now
        if wait <= 0:
            self._publish(topic, payload, retain)
            self._last_sent[topic] = now
            return
        assert self._loop is not None, "start() first"
        self._waiting[topic] = (payload, retain)
        self._timers[topic] = self._loop.call_later(wait, self._flush, topic)

    def _flush(self, topic: str) -> None:
        self._timers.pop(topic, None)
        item = self._waiting.pop(topic, None)
        if item is not None and not self._closed:
            self._publish(topic, item[0], item[1])
            self._last_sent[topic] = time.monotonic()

    def _cancel(self, topic: str) -> None:
        timer = self._timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
        self._waiting.pop(topic, None)

    def _republish_state(self) -> None:
        """After a (re)connect: the broker may have restarted without our retained state."""
        if self._closed:
            return
        if self.ha is not None:
            self._send_discovery(self.ha.republish())
        for stream in self._state:
            topic = f"{self.prefix}/{topic_level(stream)}/state"
            self._cancel(topic)
            self._publish(topic, self._state_payload(stream), retain=True)
            self._last_sent[topic] = time.monotonic()

    # ------------------------------------------------------------------ paho thread

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: Any,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.warning("mqtt: %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.connected = True
        self.connects += 1
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.ha is not None:
            client.subscribe(self.ha.ha_status_topic, qos=1)
        log.info("mqtt: connected to %s:%d", self.host, self.port)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing under us
                loop.call_soon_threadsafe(self._republish_state)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Home Assistant's birth message: it (re)started and wants the configs again."""
        if self.ha is None or msg.topic != self.ha.ha_status_topic or msg.payload != b"online":
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._rediscover)

    def _rediscover(self) -> None:
        if self.ha is not None and not self._closed:
            self._send_discovery(self.ha.republish())

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: Any,
        properties: Any,
    ) -> None:
        was = self.connected
        self.connected = False
        if was and not self._closed:
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt: lost %s:%d (%s); reconnecting", self.host, self.port, reason)
