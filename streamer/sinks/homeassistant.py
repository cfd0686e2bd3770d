"""Home Assistant MQTT discovery: which retained config messages make each stream's count,
each zone's count and each alert rule appear in Home Assistant by themselves.

Home Assistant (like Frigate's users expect) watches ``<discovery_prefix>/<component>/
<node_id>/<object_id>/config``; a retained JSON config there creates an entity, an empty
retained payload removes it. Every entity here reads the stream's retained state topic
(``<prefix>/<stream>/state``, see ``sinks.mqtt``) through a ``value_template``, so a
Home Assistant that restarts gets the current values from the broker at once, and the
service's own ``<prefix>/status`` (``online``/``offline``, the last will) is their
availability. One HA *device* per stream groups its entities.

This module only decides topics and payloads (no network): ``HaDiscovery.sync`` compares
what a stream should have now (its zones as seen in its counts, the alert rules on it) with
what was last published and returns the messages to send, so the MQTT notifier stays the
only thing that talks to the broker.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = ["HaDiscovery", "Message", "slug"]

#: (topic, payload): a JSON config, or ``None`` for the empty payload that removes an entity.
Message = tuple[str, dict[str, Any] | None]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def slug(name: str) -> str:
    """``name`` as a discovery id (letters, digits, ``_``, ``-``). Names that had to change
    get a short hash of the original, so ``a.b`` and ``a_b`` never share an entity."""
    safe = _UNSAFE.sub("_", name)
    if safe != name or not safe:
        safe = f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return safe


def _version() -> str:
    try:
        return metadata.version("crowdcount")
    except metadata.PackageNotFoundError:
        return "dev"


@dataclass(frozen=True, slots=True)
class _Entity:
    component: str  # "sensor" | "binary_sensor"
    object_id: str
    config: dict[str, Any]


class HaDiscovery:
    """Discovery configs for the streams an MQTT notifier publishes.

    ``topic_prefix`` is the notifier's (state and status topics live under it);
    ``discovery_prefix`` is where Home Assistant listens (``homeassistant`` by default).
    """

    def __init__(self, topic_prefix: str, discovery_prefix: str = "homeassistant") -> None:
        self.prefix = topic_prefix.rstrip("/")
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.status_topic = f"{self.prefix}/status"
        #: Home Assistant's birth/will topic: "online" there asks integrations to re-announce.
        self.ha_status_topic = f"{self.discovery_prefix}/status"
        self._version = _version()
        # stream -> {config topic: payload} last published (what exists in HA now)
        self._published: dict[str, dict[str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ per stream

    def sync(
        self, stream: str, state_topic: str, zones: Iterable[str], rules: Iterable[Any],
        floor_zones: Iterable[str] = (),
    ) -> list[Message]:
        """The messages that bring ``stream``'s entities in line with its ``zones`` and the
        alert ``rules`` on it (objects with ``name``, ``zone``, ``above``, ``below``):
        configs that are new or changed, and empty payloads for entities that went away.
        ``floor_zones`` (those with a floor density) also get a density and a level sensor."""
        want = {self._topic(e): e.config for e in self._entities(stream, state_topic, zones,
                                                                  rules, floor_zones)}
        have = self._published.get(stream, {})
        out: list[Message] = [(t, None) for t in have if t not in want]
        out += [(t, cfg) for t, cfg in want.items() if have.get(t) != cfg]
        self._published[stream] = want
        return out

    def remove(self, stream: str) -> list[Message]:
        """Empty retained payloads for every entity of a stream that went away."""
        return [(t, None) for t in self._published.pop(stream, {})]

    def republish(self) -> list[Message]:
        """Every current config again (after a reconnect, or when Home Assistant says it
        came online: its broker may have lost the retained messages)."""
        return [(t, cfg) for configs in self._published.values() for t, cfg in configs.items()]

    @property
    def streams(self) -> list[str]:
        return list(self._published)

    # ------------------------------------------------------------------ payloads

    def _topic(self, entity: _Entity) -> str:
        return f"{self.discovery_prefix}/{entity.component}/crowdcount/{entity.object_id}/config"

    def _device(self, stream: str) -> dict[str, Any]:
        return {
            "identifiers": [f"crowdcount_{slug(stream)}"],
            "name": f"CrowdCount {stream}",
            "manufacturer": "CrowdCount",
            "model": "Density-map crowd counter",
            "sw_version": self._version,
        }

    def _common(self, stream: str, state_topic: str) -> dict[str, Any]:
        return {
            "state_topic": state_topic,
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self._device(stream),
            "origin": {"name": "CrowdCount", "sw_version": self._version},
        }

    def _entities(
        self, stream: str, state_topic: str, zones: Iterable[str], rules: Iterable[Any],
        floor_zones: Iterable[str] = (),
    ) -> list[_Entity]:
        base = f"crowdcount_{slug(stream)}"
        count = {
            "unit_of_measurement": "people",
            "state_class": "measurement",
            "icon": "mdi:account-group",
            "suggested_display_precision": 1,
        }
        out = [_Entity("sensor", f"{base}_count", {
            "name": "Count",
            "unique_id": f"{base}_count",
            "value_template": "{{ value_json.count | round(2) }}",
            **count,
            **self._common(stream, state_topic),
        })]
        for zone in sorted(zones):
            key = json.dumps(zone)  # a Jinja string literal for any zone name
            oid = f"{base}_zone_{slug(zone)}_count"
            out.append(_Entity("sensor", oid, {
                "name": f"{zone} count",
                "unique_id": oid,
                "value_template": f"{{{{ value_json.zones[{key}] | round(2) }}}}",
                **count,
                **self._common(stream, state_topic),
            }))
        for zone in sorted(floor_zones):
            key = json.dumps(zone)
            oid = f"{base}_zone_{slug(zone)}"
            out.append(_Entity("sensor", f"{oid}_density", {
                "name": f"{zone} density",
                "unique_id": f"{oid}_density",
                "value_template": f"{{{{ value_json.floor[{key}].per_m2 | round(3) }}}}",
                "unit_of_measurement": "people/m²",
                "state_class": "measurement",
                "icon": "mdi:account-group-outline",
                "suggested_display_precision": 2,
                **self._common(stream, state_topic),
            }))
            out.append(_Entity("sensor", f"{oid}_level", {
                "name": f"{zone} level of service",
                "unique_id": f"{oid}_level",
                "value_template": f"{{{{ value_json.floor[{key}].level }}}}",
                "device_class": "enum",
                "options": list("ABCDEF"),
                "icon": "mdi:alpha-f-box-outline",
                **self._common(stream, state_topic),
            }))
        for rule in sorted(rules, key=lambda r: r.name):
            key = json.dumps(rule.name)
            oid = f"{base}_alert_{slug(rule.name)}"
            where = f"zone {rule.zone}" if rule.zone else "total"
            out.append(_Entity("binary_sensor", oid, {
                "name": f"Alert {rule.name}",
                "unique_id": oid,
                "device_class": "problem",
                "value_template": f"{{{{ 'ON' if {key} in value_json.alerts else 'OFF' }}}}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "json_attributes_topic": state_topic,
                "json_attributes_template": (
                    f"{{{{ {{'rule': {key}, 'on': {json.dumps(where)}, "
                    f"'above': {rule.above}, 'below': {rule.below}}} | tojson }}}}"
                ),
                **self._common(stream, state_topic),
            }))
        return out

