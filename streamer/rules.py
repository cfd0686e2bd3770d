"""The alert rules in force: the config file's ``[[thresholds]]`` plus those made through the
API (``/api/alerts/rules``), which are saved (the store's ``settings``) and come back after
a restart, like streams added through the API.

Config-file rules are read-only here, for the same reason config-file streams cannot be
removed through the API: the file is their record and would bring them back at the next
start. Rule names are unique across both origins, since alerts, metrics and MQTT topics
identify a rule by its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from crowdcount.streamer.alerts import METRICS, AlertEvent, ThresholdRule
from crowdcount.streamer.limits import MAX_ALERT_RULES
from crowdcount.streamer.store import SettingsStore

__all__ = ["RuleBook", "RuleConflict", "RuleNotFound", "RuleTarget"]

RuleOrigin = Literal["config", "api"]


class RuleNotFound(LookupError):
    """No rule of that name (HTTP 404)."""


class RuleConflict(Exception):
    """The name is taken, the rule comes from the config file, or there are
    ``MAX_ALERT_RULES`` already (HTTP 409)."""


class RuleTarget(Protocol):
    """Where the rules in force go: the alert engine of a process that runs cameras
    (``Integrations``), or a cluster's API process, whose shards load the saved rules
    themselves when the store announces a change."""

    def set_rules(self, rules: Iterable[ThresholdRule]) -> list[AlertEvent]:
        """Put ``rules`` in force; the clears that causes (rules changed or gone)."""
        ...

    def is_active(self, name: str) -> bool:
        """Whether rule ``name`` has an alert raised now."""
        ...


class RuleBook:
    """Owns the API rules; every change is saved first, then handed to the alert engine
    (which clears the alerts of a changed or removed rule)."""

    def __init__(
        self,
        config_rules: Iterable[ThresholdRule],
        saved: SettingsStore,
        integrations: RuleTarget,
        zones_of: Callable[[str], list[str] | None],
        publish: Callable[[Sequence[AlertEvent]], None],
    ) -> None:
        self._config = {r.name: r for r in config_rules}
        self._api: dict[str, ThresholdRule] = {}
        self._saved = saved
        self._integrations = integrations
        self._zones_of = zones_of  # stream id -> its zone names, None if not live
        self._publish = publish  # delivers the clears a rule change causes (the pipeline's)
        self._lock = asyncio.Lock()

    async def load(self) -> list[str]:
        """Read the saved rules and put them in force (again, when another process changed
        them); returns the names skipped because a config-file rule now has that name (the
        file wins)."""
        skipped: list[str] = []
        rows = await asyncio.to_thread(self._saved.rules)
        async with self._lock:
            self._api = {}
            for row in rows:
                if row.get("metric") not in METRICS:  # written by a newer build
                    row = {**row, "metric": "count"}
                rule = ThresholdRule(**row)
                if rule.name in self._config:
                    skipped.append(rule.name)
                else:
                    self._api[rule.name] = rule
            self._apply()
        return skipped

    def origin(self, name: str) -> RuleOrigin | None:
        if name in self._config:
            return "config"
        return "api" if name in self._api else None

    def list(self, stream: str | None = None) -> list[dict[str, Any]]:
        out = []
        for origin, rules in (("config", self._config), ("api", self._api)):
            for rule in rules.values():
                if stream is None or rule.stream == stream:
                    out.append(self.describe(rule, origin))  # type: ignore[arg-type]
        out.sort(key=lambda r: (r["stream"], r["name"]))
        return out

    def get(self, name: str) -> dict[str, Any]:
        origin = self.origin(name)
        if origin is None:
            raise RuleNotFound(f"no alert rule {name!r}")
        rule = (self._config if origin == "config" else self._api)[name]
        return self.describe(rule, origin)

    def describe(self, rule: ThresholdRule, origin: RuleOrigin) -> dict[str, Any]:
        return {**rule.to_dict(), "origin": origin,
                "active": self._integrations.is_active(rule.name)}

    async def put(self, rule: ThresholdRule, *, create: bool) -> dict[str, Any]:
        """Create (``create``: the name must be free) or replace an API rule."""
        async with self._lock:
            origin = self.origin(rule.name)
            if origin == "config":
                raise RuleConflict(f"alert rule {rule.name!r} comes from the config file; "
                                   "change it there and restart")
            if create and origin is not None:
                raise RuleConflict(f"an alert rule named {rule.name!r} already exists")
            if not create and origin is None:
                raise RuleNotFound(f"no alert rule {rule.name!r}")
            if create and len(self._config) + len(self._api) >= MAX_ALERT_RULES:
                raise RuleConflict(f"there are {MAX_ALERT_RULES} alert rules, the most a "
                                   "server keeps; delete one first")
            zones = self._zones_of(rule.stream)
            if zones is None:  # a typo would be a rule that silently never fires
                raise ValueError(f"no live stream {rule.stream!r}; add the stream first")
            if rule.zone is not None and zones is not None and rule.zone not in zones:
                raise ValueError(f"stream {rule.stream!r} has no zone {rule.zone!r} "
                                 f"(zones: {', '.join(map(repr, zones)) or 'none'})")
            await asyncio.to_thread(self._saved.save_rule, rule.to_dict())
            self._api[rule.name] = rule
            self._apply()
            return self.describe(rule, "api")

    async def delete(self, name: str) -> None:
        async with self._lock:
            origin = self.origin(name)
            if origin is None:
                raise RuleNotFound(f"no alert rule {name!r}")
            if origin == "config":
                raise RuleConflict(f"alert rule {name!r} comes from the config file; "
                                   "remove it there and restart")
            await asyncio.to_thread(self._saved.delete_rule, name)
            del self._api[name]
            self._apply()

    def _apply(self) -> None:
        self._publish(self._integrations.set_rules([*self._config.values(),
                                                    *self._api.values()]))
