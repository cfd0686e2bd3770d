"""``/metrics`` follows Prometheus' naming conventions, checked by Prometheus' own linter
(``promtool check metrics``, Debian package ``prometheus``) on a live server with streams,
zones and an active alert, so every family the service can expose is present."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import numpy as np
import pytest

from crowdcount.streamer.sources.file import FileSource
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.app import service
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until

W, H = 320, 256
LEFT = [[0, 0], [160, 0], [160, 256], [0, 256]]


def promtool_problems(text: str) -> tuple[int, str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus': "
                    "scripts/install-system-deps.sh)")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_promtool_flags_what_we_fixed() -> None:
    """The linter is really looking: the old names fail it."""
    old = ('# HELP crowdcount_count Latest count\n# TYPE crowdcount_count gauge\n'
           'crowdcount_count{stream="a"} 3.0\n'
           '# HELP crowdcount_inference_errors Errors\n# TYPE crowdcount_inference_errors gauge\n'
           'crowdcount_inference_errors 0.0\n')
    code, report = promtool_problems(old)
    assert code != 0 and 'should not have "_count" suffix' in report


async def test_live_metrics_pass_promtool(serve, h264_clip) -> None:
    level = 220
    rule = expected_count(np.full((H, W, 3), level, np.uint8)) * 0.5
    client = await serve(thresholds=[{"name": "busy", "stream": "plaza", "above": rule,
                                      "below": rule / 2}])
    svc = service(client)
    for sid in ("plaza", "gate"):
        source = SyntheticSource(sid, W, H, fps=20.0,
                                 render=lambda _i: np.full((H, W, 3), level, np.uint8))
        await svc.add_source(source, url="synthetic", kind="synthetic", origin="api")
    # A decoding source, whose decoder's CPU time is a counter of its own.
    clip = FileSource("clip", h264_clip, loop=True, target_fps=1.0)
    await svc.add_source(clip, url=str(h264_clip), kind="file", origin="api", fps_limit=1.0)
    await wait_until(lambda: clip.status.decode == "keyframes", what="keyframes-only decode")
    r = await client.put("/api/streams/plaza/zones",
                         json={"zones": [{"name": "left", "points": LEFT}]})
    assert r.status == 200
    r = await client.put("/api/streams/plaza/floor", json={
        "image_points": [[20, 250], [300, 250], [260, 20], [60, 20]], "width": 4, "depth": 6,
        "frame_size": [W, H], "head_height": 0})
    assert r.status == 200, await r.text()
    await wait_until(lambda: svc.integrations.active_alerts(), what="the alert")
    families = ("crowdcount_zone_people{", "crowdcount_alerts_active{",
                "crowdcount_zone_people_per_square_meter{", "crowdcount_zone_level_of_service{",
                "crowdcount_zone_floor_area_square_meters{",
                "crowdcount_alerts_raised_total{", "crowdcount_inference_latency_seconds_bucket{")
    text = ""
    for _ in range(200):  # until a scrape shows every family (zones need a zoned frame)
        text = await (await client.get("/metrics")).text()
        if all(f in text for f in families):
            break
        await asyncio.sleep(0.05)
    assert all(f in text for f in families), text
    code, report = promtool_problems(text)
    assert (code, report) == (0, ""), report
    # The renamed families are there, with the values they stand for.
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values['crowdcount_people{stream="plaza"}'] == pytest.approx(
        expected_count(np.full((H, W, 3), level, np.uint8)))
    assert values['crowdcount_zone_people{stream="plaza",zone="left"}'] == pytest.approx(
        values['crowdcount_people{stream="plaza"}'] / 2, rel=0.01)
    assert values['crowdcount_decode_cpu_seconds_total{stream="clip"}'] > 0
    assert values['crowdcount_frames_decoded_total{stream="clip"}'] > 0
    assert values['crowdcount_keyframes_only{stream="clip"}'] == 1.0
    assert values['crowdcount_decode_cpu_seconds_total{stream="plaza"}'] == 0  # not decoded
    for name in ("inference_errors", "sink_errors", "feed_dropped_items", "store_dropped_rows",
                 "store_duplicate_rows"):
        assert re.search(rf"^# TYPE crowdcount_{name}(_total)? counter$", text, re.M), name
        assert values[f"crowdcount_{name}_total"] == 0
    assert values['crowdcount_alerts_active{rule="busy",stream="plaza",zone=""}'] == 1
