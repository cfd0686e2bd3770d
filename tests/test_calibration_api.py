"""Calibrating a stream over HTTP: capturing recent frames at the camera's size, marking
them (bad marks answer 400 and lose nothing), the calibration job (one per stream, its
progress, its verdict, the stream switched to its own model live and after a restart, the
other streams counting meanwhile), and the same on a cluster's API process with the
camera's shard loading the model from PostgreSQL.

Most jobs here run a stand-in for ``crowdcount calibrate`` (``fake_calibrate``: it speaks
the same JSON lines, waits for the test's go and writes a known model), so the server's
side is tested in seconds without Keras; ``test_calibrating_a_real_camera_through_the_api`` runs
the real command on Beijing BRT camera 2 (real data, slow).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from crowdcount.streamer import calibration
from crowdcount.streamer.limits import MAX_MARKED_FRAMES_PER_STREAM, RECENT_FRAMES
from crowdcount.streamer.sources.base import ThreadedSource
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.app import service
from tests.fixtures.waiting import wait_until

BASE = "/api/streams/{}/calibration"

class Silent(ThreadedSource):
    """A camera that connects and never sends a picture."""

    kind = "silent"

    def _run(self) -> None:
        self._stop.wait()


async def add_synthetic(client, name: str, **options: Any) -> SyntheticSource:
    source = SyntheticSource(name, **{"width": 320, "height": 240, "fps": 10, **options})
    await service(client).add_source(source, url="synthetic", kind="synthetic")
    return source


async def frames_out(client, name: str) -> int:
    r = await client.get(f"/api/streams/{name}")
    return int((await r.json())["status"]["frames_out"])


async def wait_counted(client, name: str, frames: int = 1) -> None:
    async def counted() -> bool:
        return await frames_out(client, name) >= frames
    await wait_until(counted, 20, f"{name} counting {frames} frames")


async def capture(client, name: str, body: Any = None) -> dict[str, Any]:
    r = await client.post(BASE.format(name) + "/frames", json={} if body is None else body)
    assert r.status == 201, await r.text()
    return await r.json()


async def mark(client, name: str, fid: str, marks: dict[str, Any]) -> dict[str, Any]:
    r = await client.put(BASE.format(name) + f"/frames/{fid}/marks", json=marks)
    assert r.status == 200, await r.text()
    return await r.json()


async def status(client, name: str) -> dict[str, Any]:
    r = await client.get(BASE.format(name))
    assert r.status == 200, await r.text()
    return await r.json()


async def wait_state(client, name: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def finished() -> bool:
        seen.update(await status(client, name))
        return seen["state"] in states

    try:
        await wait_until(finished, timeout, f"calibration of {name} to be {states}", 0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None
    return seen


async def mark_five(client, name: str) -> list[dict[str, Any]]:
    frames = []
    for i in range(5):
        frame = await capture(client, name)
        frames.append(await mark(client, name, frame["id"], {"points": [[10.0 + i, 20.0]]}
                                 if i % 2 else {"count": float(i)}))
    return frames


async def five_marked(client, name: str) -> None:
    """A synthetic stream, counting, with five marked frames: what a job needs."""
    await add_synthetic(client, name)
    await wait_counted(client, name)
    await mark_five(client, name)


# -- capture ---------------------------------------------------------------------------------


def test_a_thumbnail_of_a_large_frame_is_decoded_small_and_keeps_the_picture() -> None:
    # 1920x1080: decoded at an eighth (240 px), then shrunk to 80 x 45
    ramp = np.tile(np.linspace(0, 255, 1920, dtype=np.float32), (1080, 1))
    frame = np.dstack([ramp, 255 - ramp, np.full_like(ramp, 60)]).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    thumb = cv2.imdecode(np.frombuffer(calibration.shrunk_jpeg(jpeg, 1920, 80), np.uint8),
                         cv2.IMREAD_COLOR)
    assert thumb.shape == (45, 80, 3)
    want = cv2.resize(frame, (80, 45), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - want.astype(int)).mean() < 4


async def test_capture_before_any_frame_is_409_and_unknown_streams_404(serve) -> None:
    client = await serve()
    await service(client).add_source(Silent("quiet"), url="silent", kind="silent")
    r = await client.post(BASE.format("quiet") + "/frames", json={})
    assert r.status == 409
    assert "no frame yet" in (await r.json())["error"]
    assert (await client.get(BASE.format("quiet") + "/frames")).status == 200
    for method, path in (("post", "/frames"), ("get", "/frames"), ("get", ""),
                         ("post", ""), ("delete", "")):
        r = await getattr(client, method)(BASE.format("nope") + path, json={})
        assert r.status == 404, (method, path)
        assert "no stream 'nope'" in (await r.json())["error"]
    r = await client.get(BASE.format("quiet"))
    assert (await r.json())["state"] == "idle"
    assert (await client.delete(BASE.format("quiet"))).status == 404  # nothing to revert


async def test_capture_keeps_the_cameras_size_count_and_density(serve, h264_clip) -> None:
    # The model runs this 320x240 camera at 160 pixels; the captured frame is the camera's.
    client = await serve(streams=[{"name": "clip", "url": str(h264_clip), "loop": True,
                                   "max_side": 160}])
    await wait_counted(client, "clip")
    frame = await capture(client, "clip")
    assert (frame["width"], frame["height"]) == (320, 240)
    assert frame["marks"] is None and frame["marked_count"] is None
    assert frame["model_count"] > 0
    base = BASE.format("clip") + f"/frames/{frame['id']}"
    r = await client.get(base + "/image")
    assert r.status == 200 and r.content_type == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3)
    r = await client.get(base + "/image?width=80")  # the panel's thumbnail
    assert r.status == 200 and r.content_type == "image/jpeg"
    thumb = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (60, 80, 3)
    assert np.abs(thumb.astype(int) - cv2.resize(image, (80, 60), interpolation=cv2.INTER_AREA)
                  .astype(int)).mean() < 8  # the same picture, smaller
    r = await client.get(base + "/image?width=1000")  # never wider than the frame
    assert cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR).shape == (
        240, 320, 3)
    for bad in ("8", "1025", "wide", "80.5"):
        r = await client.get(base + f"/image?width={bad}")
        assert r.status == 400 and "width" in (await r.json())["error"], bad
    r = await client.get(base + "/density")
    assert r.status == 200 and r.content_type == "image/png"
    density = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert density.shape == (240, 320, 4)  # RGBA, the frame's size
    assert density[..., 3].max() > 0  # opaque where the model saw brightness
    frames = (await (await client.get(BASE.format("clip") + "/frames")).json())["frames"]
    assert frames[0] == frame
    assert (await capture(client, "clip", {"recent": 0.0}))["width"] == 320  # JSON's 0
    for bad in ({"recent": RECENT_FRAMES}, {"recent": -1}, {"recent": "0"}, {"recent": 0.5},
                {"x": 1}, []):
        r = await client.post(BASE.format("clip") + "/frames", json=bad)
        assert r.status == 400, bad
    assert (await client.post(BASE.format("clip") + "/frames")).status == 201  # no body
    assert (await client.get(BASE.format("clip") + "/frames/zz/image")).status == 404
    r = await client.delete(base)
    assert r.status == 204
    assert (await client.get(base + "/image")).status == 404
    assert (await client.delete(base)).status == 404


async def test_recent_frames_are_the_last_counted_ones(serve) -> None:
    client = await serve()
    source = await add_synthetic(client, "cam")
    await wait_counted(client, "cam", RECENT_FRAMES + 2)
    svc = service(client)
    newest, oldest = svc.recent.pick("cam", 0), svc.recent.pick("cam", RECENT_FRAMES - 1)
    assert newest.frame.seq > oldest.frame.seq
    frame = await capture(client, "cam", {"recent": RECENT_FRAMES - 1})
    assert frame["captured_at"] <= newest.frame.captured_at
    source.brightness = 0  # dark from now on: a new capture counts nothing
    await wait_until(lambda: svc.recent.pick("cam").count == 0, 10, "a dark frame")
    assert (await capture(client, "cam"))["model_count"] == 0


async def test_marked_frames_are_bounded(serve, monkeypatch) -> None:
    monkeypatch.setattr(calibration, "MAX_MARKED_FRAMES_PER_STREAM", 3)
    client = await serve()
    await add_synthetic(client, "cam")
    await wait_counted(client, "cam")
    for _ in range(3):
        await capture(client, "cam")
    r = await client.post(BASE.format("cam") + "/frames", json={})
    assert r.status == 409
    assert "3 marked frames" in (await r.json())["error"]
    assert MAX_MARKED_FRAMES_PER_STREAM == 64  # the real bound, as documented


# -- marks -----------------------------------------------------------------------------------


BAD_MARKS: list[tuple[Any, int, str]] = [
    ({"points": [[320, 10]]}, 400, "outside the 320x240 frame"),
    ({"points": [[10, 240.5]]}, 400, "outside the 320x240 frame"),
    ({"points": [[-1, 10]]}, 400, "greater than or equal to 0"),
    ({"points": [[1, 2, 3]]}, 400, "points"),
    ({"points": [1, 2]}, 400, "points"),
    ({"points": "here"}, 400, "points"),
    ({"points": [["1", 2]]}, 400, "points"),
    ({"points": [[1, 2]] * 2001}, 400, "2000"),
    ({"points": [[1, 2]], "count": 1}, 400, "either 'points' or 'count'"),
    ({}, 400, "either 'points' or 'count'"),
    ({"heads": []}, 400, "either 'points' or 'count'"),
    ({"count": -1}, 400, "count"),
    ({"count": 2001}, 400, "count"),
    ({"count": True}, 400, "count"),
    ([[1, 2]], 400, "JSON object"),
]


async def test_bad_marks_are_400_and_lose_nothing(serve) -> None:
    client = await serve()
    await add_synthetic(client, "cam")
    await wait_counted(client, "cam")
    frame = await capture(client, "cam")
    url = BASE.format("cam") + f"/frames/{frame['id']}/marks"
    good = {"points": [[0.0, 0.0], [319.5, 239.5], [100.25, 50.0]]}
    marked = await mark(client, "cam", frame["id"], good)
    assert marked["marks"] == good and marked["marked_count"] == 3

    async def unchanged() -> None:
        frames = (await (await client.get(BASE.format("cam") + "/frames")).json())["frames"]
        assert frames == [marked]

    for body, code, needle in BAD_MARKS:
        r = await client.put(url, json=body)
        assert r.status == code, (body, await r.text())
        assert needle in (await r.json())["error"], (body, await r.text())
        await unchanged()
    for raw in ('{"points": [[NaN, 1]]}', '{"count": Infinity}', '{"points": [[1e999, 1]]}'):
        r = await client.put(url, data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 400, raw
        await unchanged()
    # 100,000 marks: a body far over the JSON bound, refused before it is parsed.
    r = await client.put(url, json={"points": [[1, 2]] * 100_000})
    assert r.status == 413 and "limit" in (await r.json())["error"]
    await unchanged()
    assert (await client.put(BASE.format("cam") + "/frames/0123456789abcdef/marks",
                             json=good)).status == 404
    # valid changes: nobody on the frame, then a typed count
    assert (await mark(client, "cam", frame["id"], {"points": []}))["marked_count"] == 0
    typed = await mark(client, "cam", frame["id"], {"count": 12.5})
    assert typed["marks"] == {"count": 12.5} and typed["marked_count"] == 12.5


# -- the job ---------------------------------------------------------------------------------


async def test_calibration_needs_five_marked_frames_of_one_size(serve, fake_calibrate) -> None:
    job = fake_calibrate()
    client = await serve()
    source = await add_synthetic(client, "cam")
    await wait_counted(client, "cam")
    for i in range(4):
        frame = await capture(client, "cam")
        await mark(client, "cam", frame["id"], {"count": float(i)})
    await capture(client, "cam")  # a fifth, not marked
    r = await client.post(BASE.format("cam"), json={})
    assert r.status == 409
    assert "at least 5 marked frames" in (await r.json())["error"]
    frame = await capture(client, "cam")
    await mark(client, "cam", frame["id"], {"count": 4.0})  # five now
    source.width, source.height = 160, 120  # the camera changed its resolution
    seq = service(client).recent.pick("cam").frame.seq
    await wait_until(lambda: service(client).recent.pick("cam").frame.seq > seq + 3, 10,
                     "frames of the new size")
    small = await capture(client, "cam")
    assert (small["width"], small["height"]) == (160, 120)
    await mark(client, "cam", small["id"], {"points": [[150.0, 110.0]]})
    r = await client.post(BASE.format("cam"), json={})
    assert r.status == 409
    assert "has 1 (5 more of another size" in (await r.json())["error"]
    assert job.runs == 0


async def test_one_calibration_at_a_time_other_streams_count_and_the_model_swaps(
        serve, fake_calibrate) -> None:
    job = fake_calibrate(kept=True)
    client = await serve()
    await add_synthetic(client, "cam")
    await add_synthetic(client, "other")
    await wait_counted(client, "cam")
    await mark_five(client, "cam")
    shared = service(client).recent.pick("cam").count
    for body in ({"time_budget": 9}, {"time_budget": 301}, {"time_budget": "20"},
                 {"budget": 20}):
        r = await client.post(BASE.format("cam"), json=body)
        assert r.status == 400, body
    r = await client.post(BASE.format("cam"), json={"time_budget": 20})
    assert r.status == 202, await r.text()
    started = await r.json()
    assert started["state"] == "running" and started["model"] is None
    r = await client.post(BASE.format("cam"), json={})
    assert r.status == 409
    assert "already running" in (await r.json())["error"]
    async def progressed() -> bool:
        return (await status(client, "cam"))["progress"] == 0.25

    await wait_until(progressed, 20, "the job's progress line")
    assert job.runs == 1
    assert (await status(client, "cam"))["message"] == "fake training"
    before = await frames_out(client, "other")
    await wait_counted(client, "other", before + 10)  # the other stream goes on
    assert (await status(client, "cam"))["state"] == "running"
    job.release()
    done = await wait_state(client, "cam", "done", "failed", "refused")
    assert done["state"] == "done", done
    assert done["progress"] == 1.0 and done["finished_at"] >= done["started_at"]
    assert done["result"] == {"frames": 5, "held_out": 2, "mae_before": 3.0,
                              "mae_after": 1.0, "kept": True, "seconds": 20.0}
    assert done["model"]["frames"] == 5 and done["model"]["mae_after"] == 1.0
    assert "MAE 3.00 -> 1.00" in done["message"]
    seen = job.seen()["images"]
    assert [("count" in e, "points" in e) for e in seen] == [(True, False), (False, True)] * 2 \
        + [(True, False)]
    assert job.budget == 20
    # The stream counts with its own model (a quarter of the shared count) without a
    # restart, and its JSON says so.
    svc = service(client)
    await wait_until(lambda: svc.recent.pick("cam").count < shared / 2, 20, "the own model")
    assert svc.recent.pick("cam").count == pytest.approx(shared / 4, rel=0.2)
    assert svc.recent.pick("other").count == pytest.approx(shared, rel=0.2)
    streams = {s["id"]: s for s in (await (await client.get("/api/streams")).json())["streams"]}
    assert streams["cam"]["calibration"]["frames"] == 5
    assert streams["other"]["calibration"] is None
    # Revert: the shared model again.
    r = await client.delete(BASE.format("cam"))
    assert r.status == 200 and (await r.json())["model"] is None
    await wait_until(lambda: svc.recent.pick("cam").count > shared / 2, 20, "the shared model")
    assert (await client.delete(BASE.format("cam"))).status == 404


async def test_a_refused_calibration_keeps_the_model(serve, fake_calibrate) -> None:
    fake_calibrate(kept=False).release()
    client = await serve()
    await five_marked(client, "cam")
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    done = await wait_state(client, "cam", "refused", "failed", "done")
    assert done["state"] == "refused", done
    assert done["result"]["kept"] is False and done["model"] is None
    assert "did not help" in done["message"] and "keeps its model" in done["message"]
    assert service(client).pipeline.worker.model_of("cam") is None
    assert (await client.post(BASE.format("cam"), json={})).status == 202  # may try again


async def test_a_job_being_saved_is_never_reported_interrupted(serve, fake_calibrate) -> None:
    """While a finished job's final record is still being written (a slow database, as on
    a loaded cluster), its status is the job's verdict, not the store's stale "running"
    record read as a job whose server stopped."""
    import threading

    fake_calibrate(kept=False).release()
    client = await serve()
    await five_marked(client, "cam")
    settings = service(client).store.settings
    save = settings.save_stream_setting
    writing, go_on = threading.Event(), threading.Event()

    def slow_final_save(stream_id: str, key: str, value: Any) -> None:
        if key == calibration.JOB_KEY and value.get("state") != "running":
            writing.set()
            go_on.wait(30)
        save(stream_id, key, value)

    settings.save_stream_setting = slow_final_save  # type: ignore[method-assign]
    try:
        assert (await client.post(BASE.format("cam"), json={})).status == 202
        await wait_until(writing.is_set, 30, "the job's final save")
        assert (await status(client, "cam"))["state"] == "refused"
    finally:
        go_on.set()
    assert (await wait_state(client, "cam", "refused", "failed"))["state"] == "refused"


async def test_a_calibration_survives_a_restart_and_a_stopped_job_is_reported(
        serve, fake_calibrate) -> None:
    job = fake_calibrate(kept=True)
    client = await serve()
    await five_marked(client, "cam")
    shared = service(client).recent.pick("cam").count
    job.release()
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    assert (await wait_state(client, "cam", "done", "failed"))["state"] == "done"
    (job.root / "release").unlink()  # the next job waits
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    await client.close()  # stops the running job and its process

    again = await serve()  # the same database
    await add_synthetic(again, "cam")
    svc = service(again)
    await wait_until(lambda: svc.pipeline.worker.model_of("cam") is not None, 20,
                     "the saved model")
    await wait_counted(again, "cam", 3)
    assert svc.recent.pick("cam").count == pytest.approx(shared / 4, rel=0.2)
    after = await status(again, "cam")
    assert after["state"] == "failed" and "stopped" in after["message"]
    assert after["model"]["frames"] == 5
    # a job left running by a process that died (killed, a power cut) is reported failed
    svc.settings.save_stream_setting("cam", calibration.JOB_KEY, {
        "state": "running", "owner": "gone", "started_at": 1.0, "updated_at": 1.0})
    after = await status(again, "cam")
    assert after["state"] == "failed" and "interrupted" in after["message"]
    assert len((await (await again.get(BASE.format("cam") + "/frames")).json())["frames"]) == 5
    # its model file is the store's: gone from the disk, written back from the database
    model = Path(svc.calibrations["cam"]["model"])
    await again.close()
    model.unlink()
    third = await serve()
    await add_synthetic(third, "cam")
    await wait_until(lambda: service(third).pipeline.worker.model_of("cam") is not None, 20,
                     "the model written from the store")
    assert model.is_file()


async def test_a_job_stopped_before_its_first_step_is_recorded_as_stopped(
        serve, fake_calibrate) -> None:
    """A stop that comes right after the 202, before the job's task has run at all (seen
    under load): the record must say the job stopped, not show the job before it or one
    still running."""
    fake_calibrate(kept=True).release()
    client = await serve()
    svc = service(client)
    await five_marked(client, "cam")
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    assert (await wait_state(client, "cam", "done", "failed"))["state"] == "done"
    assert (await svc.calibration.start("cam", 60.0))["state"] == "running"
    # its first record is written before the answer; its task has not taken a step
    assert svc.settings.stream_settings(calibration.JOB_KEY)["cam"]["state"] == "running"
    await svc.calibration.close()
    record = svc.settings.stream_settings(calibration.JOB_KEY)["cam"]
    assert record["state"] == "failed" and "stopped" in record["message"]
    assert record["finished_at"] is not None
    await client.close()
    again = await serve()  # the same database
    await add_synthetic(again, "cam")
    after = await status(again, "cam")
    assert after["state"] == "failed" and "stopped" in after["message"]


async def test_a_new_job_right_after_a_verdict_waits_for_its_last_record(
        serve, fake_calibrate, monkeypatch) -> None:
    """Status shows a job's verdict before its last record is written; a start in that
    window waits for the record instead of answering 409 "already running" (seen under
    load). The store's write of the verdict is held here to open the window wide."""
    fake_calibrate(kept=True).release()
    client = await serve()
    desk = service(client).calibration
    await five_marked(client, "cam")
    hold, held = threading.Event(), threading.Event()
    save, frames = desk.store.settings.save_stream_setting, desk.store.calibration.frames
    reads: list[int] = []

    def slow_save(stream_id: str, key: str, value: Any) -> None:
        if key == calibration.JOB_KEY and value["state"] == "done" and not held.is_set():
            held.set()
            hold.wait(30)
        save(stream_id, key, value)

    def counted_frames(stream_id: str) -> list[Any]:
        rows = frames(stream_id)
        reads.append(1)
        return rows

    monkeypatch.setattr(desk.store.settings, "save_stream_setting", slow_save)
    monkeypatch.setattr(desk.store.calibration, "frames", counted_frames)
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    await wait_until(held.is_set, 30, "the verdict's record to be written")
    assert (await status(client, "cam"))["state"] == "done"
    before = len(reads)
    second = asyncio.create_task(client.post(BASE.format("cam"), json={}))
    await wait_until(lambda: len(reads) > before, 10, "the new job to read its frames")
    hold.set()
    r = await second
    assert r.status == 202, await r.text()
    started = (await r.json())["started_at"]
    assert (await wait_state(client, "cam", "done", "failed"))["state"] == "done"

    def record() -> dict[str, Any]:
        return desk.store.settings.stream_settings(calibration.JOB_KEY)["cam"]
    # the record that stays is the second job's verdict, not the first's written over it
    await wait_until(lambda: record()["state"] == "done" and record()["started_at"] == started,
                     10, "the second job's verdict in the store")


async def test_a_stop_during_a_jobs_start_finds_the_job_whole(
        serve, fake_calibrate, monkeypatch) -> None:
    """The server stops while a start is writing the job's first record (held here): the
    stop waits for the start, then stops its job, so no job runs on past the stop and the
    record says it stopped."""
    fake_calibrate(kept=True)  # never released: the job would wait for its go
    client = await serve()
    desk = service(client).calibration
    await five_marked(client, "cam")
    hold, held = threading.Event(), threading.Event()
    claim = desk.store.settings.claim_stream_setting

    def slow_claim(*args: Any) -> bool:
        held.set()
        assert hold.wait(30)
        return claim(*args)

    monkeypatch.setattr(desk.store.settings, "claim_stream_setting", slow_claim)
    start = asyncio.create_task(desk.start("cam", 60.0))
    await wait_until(held.is_set, 10, "the start writing its first record")
    stop = asyncio.create_task(desk.close())
    for _ in range(5):
        await asyncio.sleep(0)  # let the stop begin: it waits for the start
    hold.set()
    assert (await start)["state"] == "running"
    await stop
    assert desk._jobs == {}
    record = desk.store.settings.stream_settings(calibration.JOB_KEY)["cam"]
    assert record["state"] == "failed" and record["message"] == calibration.STOPPED
    await client.close()


async def test_a_silent_job_still_renews_its_record(serve, fake_calibrate, monkeypatch
                                                   ) -> None:
    """A job that prints no progress for a while (Keras loading on a busy box) rewrites
    its record anyway, so a cluster's other API processes do not take it for dead after
    ``STALE_S``."""
    monkeypatch.setattr(calibration, "HEARTBEAT_S", 0.05)
    job = fake_calibrate(kept=True)  # one progress line, then silent until released
    client = await serve()
    svc = service(client)
    await five_marked(client, "cam")
    assert (await client.post(BASE.format("cam"), json={})).status == 202

    def updated() -> float:
        return float(svc.settings.stream_settings(calibration.JOB_KEY)["cam"]["updated_at"])
    await wait_until(lambda: "fake training" in svc.calibration._jobs["cam"][0].message, 20,
                     "the job's one progress line")
    first = updated()
    for _ in range(3):  # renewed again and again while the job says nothing
        seen = updated()
        await wait_until(lambda seen=seen: updated() > seen, 10, "the record renewed")
    assert updated() > first
    assert (await status(client, "cam"))["state"] == "running"
    job.release()
    assert (await wait_state(client, "cam", "done", "failed"))["state"] == "done"


async def test_removing_an_api_stream_forgets_its_calibration(serve, fake_calibrate) -> None:
    fake_calibrate(kept=True).release()
    client = await serve()
    svc = service(client)
    await add_synthetic(client, "cam")
    svc.streams["cam"].origin = "api"  # as if added through POST /api/streams
    await wait_counted(client, "cam")
    await mark_five(client, "cam")
    assert (await client.post(BASE.format("cam"), json={})).status == 202
    assert (await wait_state(client, "cam", "done", "failed"))["state"] == "done"
    await svc.remove_stream("cam")
    assert svc.store.calibration.frames("cam") == []
    assert svc.settings.stream_settings(calibration.CALIBRATION_KEY) == {}
    assert svc.settings.stream_settings(calibration.JOB_KEY) == {}


# -- the real command ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(900)
async def test_calibrating_a_real_camera_through_the_api(serve, shared, tmp_path) -> None:
    """BRT camera 2 played as a camera (ten frames of 2017-04-19, each shown until it is
    captured); each captured frame is marked with its true heads through the API, the
    real ``crowdcount calibrate`` runs, and the stream then counts with its own model (the
    test serves the brightness model, which counts thousands on these frames; the
    calibrated one counts people), also after a restart. A second camera keeps counting
    all along."""
    pytest.importorskip("keras", reason="Keras not installed (the calibrate extra)")
    pytest.importorskip("onnx", reason="onnx not installed (the calibrate extra)")
    brt = shared / "data" / "beijing_brt_cam2"
    doc = json.loads((brt / "annotations.json").read_text())
    day = [e for e in doc["images"] if Path(e["file"]).name.startswith("2-20170419")]
    chosen = [day[j] for j in np.linspace(0, len(day) - 1, 10).round().astype(int)]
    images = [cv2.cvtColor(cv2.imread(str(brt / e["file"])), cv2.COLOR_BGR2RGB)
              for e in chosen]
    showing = [0]
    h, w = images[0].shape[:2]

    client = await serve()
    svc = service(client)
    await add_synthetic(client, "brt", width=w, height=h, fps=4,
                        render=lambda _i: images[showing[0]].copy())
    await add_synthetic(client, "other", fps=4)
    def newest() -> int:
        recent = svc.recent._recent.get("brt")
        return recent[-1].frame.seq if recent else -1

    for i, entry in enumerate(chosen):
        showing[0] = i
        seq = newest()
        await wait_until(lambda s=seq: newest() > s + 3, 30, f"frame {i} on the camera")
        frame = await capture(client, "brt")
        r = await client.get(BASE.format("brt") + f"/frames/{frame['id']}/image")
        got = cv2.cvtColor(cv2.imdecode(np.frombuffer(await r.read(), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        diffs = [np.abs(got.astype(int) - im.astype(int)).mean() for im in images]
        assert int(np.argmin(diffs)) == i  # the frame that was on the camera
        await mark(client, "brt", frame["id"], {"points": entry["points"]})
    shared_count = svc.recent.pick("brt").count
    assert shared_count > 500  # the brightness model

    r = await client.post(BASE.format("brt"), json={"time_budget": 20})
    assert r.status == 202, await r.text()
    before = await frames_out(client, "other")
    fractions: set[float] = set()

    async def progressed() -> bool:
        current = await status(client, "brt")
        fractions.add(current["progress"])
        return current["state"] != "running"

    await wait_until(progressed, 800, "the calibration", 0.5)
    done = await status(client, "brt")
    assert done["state"] == "done", done
    assert len(fractions) > 2  # progress was reported on the way
    assert done["result"]["frames"] == 10
    assert done["result"]["mae_after"] < done["result"]["mae_before"]
    # the other camera kept counting while the calibration ran (at the lowest priority)
    assert await frames_out(client, "other") - before >= 4 * done["result"]["seconds"] / 2
    await wait_until(lambda: svc.recent.pick("brt").count < 200, 60, "the own model")
    truth = len(chosen[showing[0]]["points"])
    assert svc.recent.pick("brt").count == pytest.approx(truth, abs=max(5, truth))
    streams = {s["id"]: s for s in (await (await client.get("/api/streams")).json())["streams"]}
    assert streams["brt"]["calibration"]["frames"] == 10
    await client.close()

    again = await serve()
    await add_synthetic(again, "brt", width=w, height=h, fps=4,
                        render=lambda _i: images[showing[0]].copy())
    svc = service(again)
    await wait_until(lambda: svc.pipeline.worker.model_of("brt") is not None, 60,
                     "the saved model")
    await wait_until(lambda: svc.recent.pick("brt").count < 200, 60, "the own model again")
    streams = {s["id"]: s for s in (await (await again.get("/api/streams")).json())["streams"]}
    assert streams["brt"]["calibration"]["mae_after"] == done["result"]["mae_after"]


@pytest.mark.parametrize("inherited", ["tensorflow", "jax"])
def test_the_job_trains_on_a_backend_calibration_supports(monkeypatch, inherited) -> None:
    """A server whose environment says ``KERAS_BACKEND=tensorflow`` (the operator's choice,
    or the server's own export) still gets calibrations: the job's child drops it and picks
    PyTorch or JAX; a supported choice is kept."""
    import importlib.util
    import subprocess
    import sys

    monkeypatch.setenv("KERAS_BACKEND", inherited)
    probe = ("from crowdcount.training.calibrate import _keras; "
             "print(_keras().backend.backend())")
    out = subprocess.run([sys.executable, "-c", probe], env=calibration.job_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    backend = out.stdout.strip().splitlines()[-1]
    # where PyTorch is installed (the calibrate extra) it is the one picked: ten times faster
    # per training step on a CPU than JAX
    picked = "torch" if importlib.util.find_spec("torch") else "jax"
    assert backend == (inherited if inherited in ("torch", "jax") else picked), out
