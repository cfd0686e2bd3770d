"""docs/grafana-dashboard.json against a live ``/metrics``: every metric its queries (and its
stream variable) use is exported by the running service, and every label its legends name
is a label of those metrics. The names come from the scrape, not from a list here, so a
renamed metric breaks this test until the dashboard follows."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.test_zones_api import RIGHT, add_source, put_zones

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
METRIC_RE = re.compile(r"\b(crowdcount_[A-Za-z0-9_]+)\b")
LEGEND_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _targets(dashboard: dict) -> list[dict]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


async def test_every_dashboard_metric_is_exported(serve) -> None:
    client = await serve(
        thresholds=[{"name": "busy", "stream": "cam", "zone": "door", "above": 1,
                     "below": 0.5}],
    )
    await add_source(client, "cam", [200])
    status, _ = await put_zones(client, "cam", [{"name": "door", "points": RIGHT}])
    assert status == 200

    labels: dict[str, set[str]] = {}

    async def scrape() -> dict[str, set[str]]:
        r = await client.get("/metrics")
        assert r.status == 200
        out: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(await r.text()):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
        return out

    async def ready() -> bool:
        labels.update(await scrape())
        return {"crowdcount_zone_people", "crowdcount_alerts_active"} <= set(labels)

    deadline = time.monotonic() + 10
    while not await ready():  # polls the scrape itself (wait_until takes a plain predicate)
        assert time.monotonic() < deadline, f"zone/alert series never appeared: {sorted(labels)}"
        await asyncio.sleep(0.05)

    dashboard = json.loads(DASHBOARD.read_text())
    targets = _targets(dashboard)
    assert len(targets) >= 10
    used: set[str] = set()
    for target in targets:
        names = set(METRIC_RE.findall(target["expr"]))
        assert names, f"query uses no crowdcount metric: {target['expr']}"
        missing = names - set(labels)
        assert not missing, f"{target['expr']} uses {missing}, not in /metrics: {sorted(labels)}"
        have = set().union(*(labels[n] for n in names))
        wanted = set(LEGEND_RE.findall(target.get("legendFormat", "")))
        assert wanted <= have, f"legend {target['legendFormat']!r} names labels {wanted - have}"
        used |= names
    # The stream picker's query, too.
    for var in dashboard["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, query
        assert m.group(1) in labels and m.group(2) in labels[m.group(1)]
    # Counts, zones, alerts and latency are all on the dashboard.
    for needed in ("crowdcount_zone_people", "crowdcount_alerts_active",
                   "crowdcount_e2e_latency_seconds_bucket"):
        assert needed in used
    # Panels are importable: unique ids, a grid position, the datasource input.
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in dashboard["panels"])
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
