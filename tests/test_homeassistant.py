"""Home Assistant MQTT discovery against a real mosquitto: the retained config topics, their
JSON, and that the state topics they point at carry the values (the configs' Jinja value
templates are rendered with Jinja2, as Home Assistant does, on the payloads the broker
delivered)."""

from __future__ import annotations

import dataclasses
import json

import jinja2
import pytest

from crowdcount.model.types import ZoneDensity
from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.config import ConfigError, parse_config
from crowdcount.streamer.sinks.homeassistant import slug
from crowdcount.streamer.sinks.mqtt import MqttNotifier
from tests.fixtures.results import make_result
from tests.fixtures.waiting import wait_until
from tests.test_mqtt import Subscriber
from tests.test_zones_api import RIGHT, add_source, put_zones

pytestmark = pytest.mark.mqtt

BUSY = ThresholdRule("busy", "cam", None, 10, 5, 0)
DOOR = ThresholdRule("door-full", "cam", "door", 3, 1, 0)
OTHER = ThresholdRule("elsewhere", "lobby", None, 10, 5, 0)

COUNT = "homeassistant/sensor/crowdcount/crowdcount_cam_count/config"
ZONE = "homeassistant/sensor/crowdcount/crowdcount_cam_zone_door_count/config"
BUSY_ALERT = "homeassistant/binary_sensor/crowdcount/crowdcount_cam_alert_busy/config"
DOOR_ALERT = "homeassistant/binary_sensor/crowdcount/crowdcount_cam_alert_door-full/config"


def render(template: str, payload: dict) -> str:
    """A Home Assistant MQTT value template applied to one JSON payload."""
    return jinja2.Environment().from_string(template).render(value_json=payload)


def configs(sub: Subscriber) -> dict[str, bytes]:
    """The newest payload of every discovery config topic the subscriber saw."""
    out: dict[str, bytes] = {}
    for topic, payload, _ in list(sub.messages):
        if topic.startswith("homeassistant/") and topic.endswith("/config"):
            out[topic] = payload
    return out


async def test_discovery_configs_and_state_values(mosquitto) -> None:
    sub = Subscriber(mosquitto, "#")
    pub = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=100, home_assistant=True)
    await pub.start()
    await wait_until(lambda: pub.connected)
    pub.set_rules((BUSY, DOOR, OTHER))
    pub.on_result(make_result("cam", 1.0, 12.5, {"door": 4.25}))
    await wait_until(lambda: {COUNT, ZONE, BUSY_ALERT, DOOR_ALERT} <= set(configs(sub))
                     and sub.on("crowdcount/cam/state"), what="discovery configs")
    seen = configs(sub)
    # Only the rules on this stream become its entities.
    assert not [t for t in seen if "elsewhere" in t]
    count = json.loads(seen[COUNT])
    assert count["state_topic"] == "crowdcount/cam/state"
    assert count["availability_topic"] == "crowdcount/status"
    assert (count["payload_available"], count["payload_not_available"]) == ("online", "offline")
    assert count["unique_id"] == "crowdcount_cam_count"
    assert count["device"]["identifiers"] == ["crowdcount_cam"]
    assert count["device"]["name"] == "CrowdCount cam"
    assert count["unit_of_measurement"] == "people"
    assert count["state_class"] == "measurement"
    zone = json.loads(seen[ZONE])
    assert zone["device"] == count["device"] and zone["unique_id"] != count["unique_id"]
    alert = json.loads(seen[DOOR_ALERT])
    assert alert["device_class"] == "problem"
    # Retained: a Home Assistant connecting later finds every config.
    early = Subscriber(mosquitto, "homeassistant/#")
    await wait_until(lambda: {t for t, _, r in early.messages if r}
                     >= {COUNT, ZONE, BUSY_ALERT, DOOR_ALERT}, what="retained configs")
    early.close()

    # The templates, applied to what the state topic carries, give the values.
    state = sub.on("crowdcount/cam/state")[-1]
    assert render(count["value_template"], state) == "12.5"
    assert render(zone["value_template"], state) == "4.25"
    assert render(alert["value_template"], state) == "OFF"
    attrs = json.loads(render(alert["json_attributes_template"], state))
    assert attrs == {"rule": "door-full", "on": "zone door", "above": 3, "below": 1}

    pub.on_alert(AlertEvent("raised", DOOR, 2.0, 4.25, 2.0, 2.0, 4.25))
    await wait_until(lambda: any(s["alert"] for s in sub.on("crowdcount/cam/state")))
    state = sub.on("crowdcount/cam/state")[-1]
    assert render(alert["value_template"], state) == "ON"
    assert render(json.loads(seen[BUSY_ALERT])["value_template"], state) == "OFF"

    # A zone that went away (the counts no longer have it) loses its entity; a new one
    # gains one. Nothing is re-sent while nothing changes.
    before = len(sub.messages)
    pub.on_result(make_result("cam", 3.0, 12.0, {"queue": 2.0}))
    new_zone = "homeassistant/sensor/crowdcount/crowdcount_cam_zone_queue_count/config"
    await wait_until(lambda: configs(sub).get(ZONE) == b"" and new_zone in configs(sub))
    assert json.loads(configs(sub)[new_zone])["name"] == "queue count"
    pub.on_result(make_result("cam", 3.5, 12.0, {"queue": 2.5}))
    await wait_until(lambda: [m["t"] for m in sub.on("crowdcount/cam/queue/count")][-1:] == [3.5])
    resent = [t for t, *_ in sub.messages[before:] if t.endswith("/config")]
    assert sorted(resent) == sorted([ZONE, new_zone]), resent

    # A rule removed: its binary sensor goes.
    pub.set_rules((BUSY, OTHER))
    await wait_until(lambda: configs(sub).get(DOOR_ALERT) == b"")

    # Home Assistant restarting announces itself; every config is sent again.
    n_count = sum(t == COUNT for t, *_ in sub.messages)
    sub.client.publish("homeassistant/status", "online", qos=1)
    await wait_until(lambda: sum(t == COUNT for t, *_ in sub.messages) > n_count)

    # The stream removed: all of its entities are deleted (empty retained payloads).
    pub.forget_stream("cam")
    await wait_until(lambda: configs(sub).get(COUNT) == b"" and configs(sub).get(BUSY_ALERT)
                     == b"" and configs(sub).get(new_zone) == b"")
    await pub.close()
    sub.close()
    late = Subscriber(mosquitto, "#")
    # mosquitto sends every retained message on subscribe: the service's retained status
    # is the marker that they have arrived.
    await wait_until(lambda: late.retained("crowdcount/status") == [b"offline"])
    assert [t for t, *_ in late.messages if t.endswith("/config")] == []
    late.close()


async def test_off_by_default_and_prefix_configurable(mosquitto) -> None:
    sub = Subscriber(mosquitto, "#")
    plain = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=100)
    custom = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=100, topic_prefix="cc",
                          home_assistant=True, discovery_prefix="ha/disc")
    for n in (plain, custom):
        await n.start()
    await wait_until(lambda: plain.connected and custom.connected)
    plain.on_result(make_result("a.b", 1.0, 2.0, {}))
    custom.on_result(make_result("a.b", 1.0, 2.0, {}))
    oid = f"crowdcount_{slug('a.b')}_count"
    topic = f"ha/disc/sensor/crowdcount/{oid}/config"
    await wait_until(lambda: topic in configs_any(sub) and sub.on("crowdcount/a.b/count"))
    cfg = json.loads(configs_any(sub)[topic])
    assert cfg["state_topic"] == "cc/a.b/state" and cfg["availability_topic"] == "cc/status"
    assert slug("a.b") != slug("a_b") and slug("cam") == "cam"
    assert [t for t, *_ in sub.messages if t.startswith("homeassistant/")] == []
    for n in (plain, custom):
        await n.close()
    sub.close()
    with pytest.raises(ConfigError, match="discovery_prefix"):
        parse_config({"sinks": {"mqtt": {"host": "h", "home_assistant": True,
                                         "discovery_prefix": "home/+"}}})


def configs_any(sub: Subscriber) -> dict[str, bytes]:
    return {t: p for t, p, _ in list(sub.messages) if t.endswith("/config")}


@pytest.mark.slow
async def test_service_announces_streams_zones_rules_and_removes_them(serve, mosquitto) -> None:
    """Through the running service: a stream added through the API, a zone set on it, a
    config-file rule; DELETE removes its entities."""
    sub = Subscriber(mosquitto, "homeassistant/#")
    try:
        client = await serve(
            thresholds=[{"name": "busy", "stream": "cam", "above": 1, "below": 0.5}],
            sinks={"mqtt": {"host": mosquitto.host, "port": mosquitto.port, "max_rate": 10,
                            "home_assistant": True}},
        )
        await add_source(client, "cam", [200])
        status, _ = await put_zones(client, "cam", [{"name": "door", "points": RIGHT}])
        assert status == 200
        await wait_until(lambda: {COUNT, ZONE, BUSY_ALERT} <= set(configs(sub)), timeout=10)
        r = await client.delete("/api/streams/cam")
        assert r.status == 204
        await wait_until(lambda: all(configs(sub)[t] == b"" for t in (COUNT, ZONE, BUSY_ALERT)))
    finally:
        sub.close()



async def test_floor_density_and_level_sensors(mosquitto) -> None:
    """A floor-calibrated stream's zones get a density and a level-of-service sensor, and
    the state and zone topics carry the values those templates read."""
    sub = Subscriber(mosquitto, "#")
    pub = MqttNotifier(mosquitto.host, mosquitto.port, max_rate=100, home_assistant=True)
    await pub.start()
    await wait_until(lambda: pub.connected)
    result = dataclasses.replace(make_result("cam", 1.0, 12.5, {"door": 4.25}),
                                 floor={"door": ZoneDensity(2.5, 1.7, "E")})
    pub.on_result(result)
    density = "homeassistant/sensor/crowdcount/crowdcount_cam_zone_door_density/config"
    level = "homeassistant/sensor/crowdcount/crowdcount_cam_zone_door_level/config"
    await wait_until(lambda: {density, level} <= set(configs(sub))
                     and sub.on("crowdcount/cam/state"), what="floor sensors")
    seen = configs(sub)
    d, lv = json.loads(seen[density]), json.loads(seen[level])
    assert d["unit_of_measurement"] == "people/m²" and d["state_class"] == "measurement"
    assert lv["device_class"] == "enum" and lv["options"] == list("ABCDEF")
    state = sub.on("crowdcount/cam/state")[-1]
    assert render(d["value_template"], state) == "1.7"
    assert render(lv["value_template"], state) == "E"
    await wait_until(lambda: sub.on("crowdcount/cam/door/count"))
    zone_msg = sub.on("crowdcount/cam/door/count")[-1]
    assert zone_msg == {"stream": "cam", "zone": "door", "t": 1.0, "count": 4.25,
                        "area_m2": 2.5, "per_m2": 1.7, "level": "E"}
    # Calibration removed: the next result has no floor, and the sensors are deleted.
    pub.on_result(make_result("cam", 2.0, 12.0, {"door": 4.0}))
    await wait_until(lambda: configs(sub).get(density) == b"" and configs(sub).get(level) == b"")
    await pub.close()
    sub.close()
