"""The app with ``[sinks.mqtt]`` against a real mosquitto: counts, zone counts and alerts
published by the running service, read back by a plain paho subscriber."""

from __future__ import annotations

import pytest

from tests.fixtures.waiting import wait_until
from tests.test_mqtt import Subscriber
from tests.test_zones_api import RIGHT, add_source, put_zones

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


async def test_service_publishes_counts_zone_counts_and_alerts(serve, mosquitto) -> None:
    sub = Subscriber(mosquitto)
    try:
        client = await serve(
            thresholds=[{"name": "busy", "stream": "cam", "above": 1, "below": 0.5}],
            sinks={"mqtt": {"host": mosquitto.host, "port": mosquitto.port, "max_rate": 10}},
        )
        await add_source(client, "cam", [200])
        status, _ = await put_zones(client, "cam", [{"name": "right side", "points": RIGHT}])
        assert status == 200
        await wait_until(lambda: sub.on("crowdcount/alerts")
                     and sub.on("crowdcount/cam/right side/count"), timeout=10)
        counts = sub.on("crowdcount/cam/count")
        assert counts and counts[-1]["count"] > 1
        zone = sub.on("crowdcount/cam/right side/count")[-1]
        assert 0 < zone["count"] < counts[-1]["count"]
        alert = sub.on("crowdcount/alerts")[0]
        assert alert["event"] == "raised" and alert["rule"] == "busy"
        assert alert["stream"] == "cam"
    finally:
        sub.close()
