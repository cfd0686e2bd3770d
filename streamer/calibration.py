"""Calibrating a stream from the page: captured frames, their marks, and the job that fits
the model to the camera (``training.calibrate``) where serving runs.

Why these pieces, and where they live:

* **Recent frames.** A user marks heads on the camera's picture at its own size (far heads
  are a few pixels; the model's input size blurs them), so ``RecentFrames`` keeps the last
  ``limits.RECENT_FRAMES`` results of each stream as the pipeline delivers them, with the
  frame's full-size conversion (``Frame.full``) and the model's density and count. It is a
  sink like the others: the pipeline is the one place every result passes.
* **Marked frames** go to the store (``CalibrationStore``: JPEG, density, count at capture,
  marks), so they outlive a restart and, in a cluster, any API process sees them.
* **The job** runs ``crowdcount calibrate`` on the stream's marked frames in a subprocess,
  at the lowest priority (``nice -n 19``): training is seconds of full CPU per step, and in
  the server's process it would hold the GIL and the cores the cameras are counted on. At
  that priority it mostly gets the CPU the streams leave, so it may use a few math threads
  (``JOB_THREADS``) and finish in half the time where a core is idle. Its JSON progress
  lines are read here. One job per stream; its state is also written to the
  stream's settings (``JOB_KEY``), so a restarted server (or another API process of a
  cluster) reports it instead of forgetting it.
* **The model** the guard keeps goes into the store as bytes, then the service puts it in
  force (``apply``): the single box writes it next to its database; a cluster's owning
  shard, told by the settings' NOTIFY, writes it where it runs, and so does a new owner
  after a failover (it reads the store when it starts).

``CalibrationDesk`` is this module's one object per service; both services build it with
their own way to grab a recent frame (from memory; from the camera's shard) and to put a
calibration in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.types import Result
from crowdcount.streamer.limits import (
    MAX_MARKED_FRAMES_PER_STREAM,
    MAX_MARKS_PER_FRAME,
    RECENT_FRAMES,
)
from crowdcount.streamer.store import MarkedFrame, Store
from crowdcount.streamer.surface import StreamConflict
from crowdcount.training.calibrate import MIN_FRAMES, TRAINING_BACKENDS

__all__ = [
    "CALIBRATION_KEY",
    "JOB_KEY",
    "MIN_FRAMES",
    "CalibrationConflict",
    "CalibrationDesk",
    "Captured",
    "FrameNotFound",
    "MarksError",
    "NoCalibration",
    "RecentFrames",
    "calibration_summary",
    "capture",
]

log = logging.getLogger(__name__)

#: The per-stream setting (store ``stream_settings``) that holds a stream's calibration in
#: force: ``{"model_id", "model" (its file where this process runs), "frames", "held_out",
#: "mae_before", "mae_after", "calibrated_at", "seconds"}``.
CALIBRATION_KEY = "calibration"
#: The per-stream setting that holds the stream's last calibration job (``Job``).
JOB_KEY = "calibration_job"
#: Seconds a job may take beyond four times its training budget before it is killed
#: (loading Keras, the features of the frames and the export come on top of the budget).
JOB_TIMEOUT_S = 600.0
#: JPEG quality of captured frames: marks are placed on them, so little loss.
JPEG_QUALITY = 92
#: A job's state is written to the store at most this often while it runs (seconds).
SAVE_EVERY_S = 2.0
#: A job's message when the server stopped it.
STOPPED = "stopped: the server shut down"
#: A running job whose record was not updated for this long belongs to a process that is
#: gone (a cluster's other API process died): it is reported failed.
STALE_S = 120.0
#: A running job's record is rewritten at least this often, progress or not, so that only
#: a gone process is silent for ``STALE_S`` (a job loading Keras on a busy box says nothing
#: for a minute or more, and another API process must not take it for dead).
HEARTBEAT_S = 30.0
#: Math threads of the job (OpenMP, MKL, OpenBLAS, TensorFlow): the machine's cores, at
#: most 4 so that one job's OpenMP pool does not spin every core of a big box. On a 2-core
#: box two threads took a 10-frame calibration from 190 s to 99 s.
JOB_THREADS = max(1, min(4, os.cpu_count() or 1))
#: The job's priority: the lowest. Beside eight streams that kept both cores busy, the
#: streams lost a quarter of their rate to a 2-thread job at 19, and 40 % to a 1-thread job
#: at 10 (the scheduler still gives it a core whenever one idles between batches).
NICENESS = 19


class FrameNotFound(LookupError):
    """No marked frame of that id on that stream (HTTP 404)."""


class NoCalibration(LookupError):
    """The stream counts with the shared model: nothing to revert (HTTP 404)."""


class MarksError(ValueError):
    """Marks that do not fit their frame (HTTP 400)."""


class CalibrationConflict(StreamConflict):
    """A calibration request the stream's state refuses (HTTP 409)."""


# -- recent frames ---------------------------------------------------------------------------


class RecentFrames:
    """The pipeline sink that keeps each stream's last ``keep`` results (on the loop:
    appending to a bounded deque)."""

    def __init__(self, keep: int = RECENT_FRAMES) -> None:
        self.keep = keep
        self._recent: dict[str, deque[Result]] = {}

    def on_result(self, result: Result) -> None:
        sid = result.frame.stream_id
        recent = self._recent.get(sid)
        if recent is None:
            recent = self._recent[sid] = deque(maxlen=self.keep)
        recent.append(result)

    def forget(self, stream_id: str) -> None:
        self._recent.pop(stream_id, None)

    def pick(self, stream_id: str, back: int = 0) -> Result:
        """The ``back``-th newest result (0: the newest); ``CalibrationConflict`` when the
        stream has not produced that many."""
        recent = self._recent.get(stream_id) or ()
        if not recent:
            raise CalibrationConflict(f"no frame yet: stream {stream_id!r} has not produced "
                                      "a counted frame")
        if back >= len(recent):
            raise CalibrationConflict(f"stream {stream_id!r} has {len(recent)} recent "
                                      f"frame(s); recent must be below {len(recent)}")
        return recent[-1 - back]


@dataclass(frozen=True)
class Captured:
    """A recent frame made ready to save: the picture at the camera's size as JPEG and the
    model's density and count for it (plain bytes and numbers: a cluster's shard sends it
    to the API process through Ray)."""

    captured_at: float
    width: int
    height: int
    model_count: float
    jpeg: bytes
    density: bytes


def pack_density(density: NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(density, np.float32).squeeze(), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), 6)


def unpack_density(blob: bytes) -> NDArray[np.float32]:
    return np.asarray(np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False),
                      np.float32)


def capture(result: Result) -> Captured:
    """Encode a recent result (call from a thread: a full-size conversion and a JPEG)."""
    image = result.frame.full_image()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return Captured(captured_at=float(result.frame.captured_at), width=int(image.shape[1]),
                    height=int(image.shape[0]), model_count=float(result.count),
                    jpeg=jpeg.tobytes(), density=pack_density(result.density))


def shrunk_jpeg(jpeg: bytes, frame_width: int, width: int) -> bytes:
    """A ``frame_width``-wide frame at ``width`` pixels wide (never wider than it is): the
    panel lists up to 64 thumbnails, and a 4K camera's frames are megabytes each. The JPEG
    is decoded at a half, a quarter or an eighth of its size where that is still wide
    enough (libjpeg scales as it decodes), then shrunk by area."""
    factor = 1
    while factor < 8 and frame_width // (2 * factor) >= width:
        factor *= 2
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)
    if image is None:
        raise RuntimeError("a stored frame is not a JPEG")
    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))),
                           interpolation=cv2.INTER_AREA)
    ok, out = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return out.tobytes()


def density_png(blob: bytes, width: int, height: int) -> bytes:
    """The density at capture as a faint RGBA overlay of the frame's size."""
    from crowdcount.model.render import density_rgba

    rgba = density_rgba(unpack_density(blob), (width, height))
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


# -- marks -----------------------------------------------------------------------------------


def check_marks(marks: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    """``{"points": [[x, y], ...]}`` inside a ``width`` x ``height`` frame, or ``{"count":
    n}``, as the store keeps them; ``MarksError`` names the first problem. (Types and
    shape are the route's model's to check; the frame's size is known only here.)"""
    if "count" in marks:
        count = float(marks["count"])
        if not 0 <= count <= MAX_MARKS_PER_FRAME:
            raise MarksError(f"count must be between 0 and {MAX_MARKS_PER_FRAME}, got "
                             f"{count:g}")
        return {"count": count}
    points = [(float(x), float(y)) for x, y in marks["points"]]
    if len(points) > MAX_MARKS_PER_FRAME:
        raise MarksError(f"at most {MAX_MARKS_PER_FRAME} points per frame, got "
                         f"{len(points)}; type the frame's count instead")
    for i, (x, y) in enumerate(points):
        if not (0 <= x < width and 0 <= y < height):
            raise MarksError(f"point {i} ({x:g}, {y:g}) is outside the {width}x{height} "
                             "frame")
    return {"points": [[x, y] for x, y in points]}


def marked_count(marks: Mapping[str, Any] | None) -> float | None:
    if marks is None:
        return None
    if "count" in marks:
        return float(marks["count"])
    return float(len(marks.get("points") or ()))


def frame_dict(frame: MarkedFrame) -> dict[str, Any]:
    """A marked frame as the API shows it."""
    return {"id": frame["id"], "captured_at": frame["captured_at"], "width": frame["width"],
            "height": frame["height"], "model_count": round(frame["model_count"], 3),
            "marks": frame["marks"], "marked_count": marked_count(frame["marks"])}


def calibration_summary(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the stream's card shows of its calibration in force (``None``: none)."""
    if not value:
        return None
    return {"frames": value.get("frames"), "mae_before": value.get("mae_before"),
            "mae_after": value.get("mae_after"), "calibrated_at": value.get("calibrated_at")}


# -- the job ---------------------------------------------------------------------------------


@dataclass
class Job:
    """One calibration of one stream, as ``GET .../calibration`` reports it."""

    state: str = "running"  # running, done, refused, failed
    progress: float = 0.0
    message: str = "starting"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    owner: str = ""
    updated_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {"state": self.state, "progress": round(self.progress, 4),
                "message": self.message, "started_at": self.started_at,
                "finished_at": self.finished_at, "result": self.result}


def _job(record: Mapping[str, Any]) -> Job:
    known = {k: record[k] for k in asdict(Job()) if k in record}
    return Job(**known)


Grab = Callable[[str, int], Awaitable[Captured]]
Apply = Callable[[str, "dict[str, Any] | None"], Awaitable[None]]


def job_command(dataset: Path, output: Path, time_budget: float) -> list[str]:
    """``crowdcount calibrate`` as the job runs it (``python -m crowdcount.training``: the
    training commands without the server's imports), under ``nice`` where there is one."""
    nice = ["nice", "-n", str(NICENESS)] if shutil.which("nice") else []
    return [*nice, sys.executable, "-m", "crowdcount.training", "calibrate",
            f"generic:{dataset}", "-o", str(output), "--time-budget", f"{time_budget:g}",
            "--json", "--progress"]


def job_env() -> dict[str, str]:
    """The server's environment with ``JOB_THREADS`` math threads, and without a
    ``KERAS_BACKEND`` that calibration cannot train on (``tensorflow``, set for the server's
    own export or by an operator): the job then picks PyTorch or JAX itself instead of
    failing."""
    n = str(JOB_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
           "OPENBLAS_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n,
           "TF_NUM_INTEROP_THREADS": "1", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONUNBUFFERED": "1"}
    if env.get("KERAS_BACKEND") not in TRAINING_BACKENDS:
        env.pop("KERAS_BACKEND", None)
    if JOB_THREADS == 1:  # XLA has no thread count of its own, only this switch
        env["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen"
                            "=false intra_op_parallelism_threads=1").strip()
    return env


class CalibrationDesk:
    """Marked frames and calibration jobs of one service's streams (see the module
    docstring). ``grab(stream, back)`` gives a recent frame (``CalibrationConflict`` when
    there is none); ``apply(stream, value)`` puts a calibration in force (``None``: back to
    the shared model); ``current(stream)`` is the one in force. ``shared``: other processes
    use the same store (a cluster's API processes), so a running job recorded by another
    is theirs until it goes stale."""

    def __init__(self, store: Store, *, grab: Grab, apply: Apply,
                 current: Callable[[str], Mapping[str, Any] | None], shared: bool = False,
                 work_dir: Path | None = None) -> None:
        self.store = store
        self._grab = grab
        self._apply = apply
        self._current = current
        self.shared = shared
        self.work_dir = work_dir
        self.owner = secrets.token_hex(8)  # this process's jobs, in the records
        self._jobs: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._saving = asyncio.Lock()  # job records land in the order they were made
        self._writes: set[asyncio.Task[None]] = set()  # records being written (for close)
        # A job's start (the check, its first record, its task) is one step against
        # forget() and close(): they never find a job half made.
        self._starting = asyncio.Lock()
        self._claiming: set[str] = set()  # streams whose first job record is being written
        self._closed = False

    # -- frames --------------------------------------------------------------------------

    async def capture(self, stream_id: str, back: int = 0) -> dict[str, Any]:
        """Save the ``back``-th newest frame of the stream; its API dict."""
        shot = await self._grab(stream_id, back)
        frame = MarkedFrame(id=secrets.token_hex(8), stream_id=stream_id,
                            captured_at=shot.captured_at, width=shot.width,
                            height=shot.height, model_count=shot.model_count, marks=None)
        saved = await asyncio.to_thread(self.store.calibration.add_frame, frame, shot.jpeg,
                                        shot.density, MAX_MARKED_FRAMES_PER_STREAM)
        if not saved:
            raise CalibrationConflict(
                f"stream {stream_id!r} has {MAX_MARKED_FRAMES_PER_STREAM} marked frames, "
                "the most it keeps; delete some first")
        return frame_dict(frame)

    async def frames(self, stream_id: str) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.store.calibration.frames, stream_id)
        return [frame_dict(f) for f in rows]

    async def _frame(self, stream_id: str, frame_id: str) -> MarkedFrame:
        frame = await asyncio.to_thread(self.store.calibration.frame, stream_id, frame_id)
        if frame is None:
            raise FrameNotFound(f"stream {stream_id!r} has no marked frame {frame_id!r}")
        return frame

    async def image(self, stream_id: str, frame_id: str, width: int | None = None) -> bytes:
        """The frame's JPEG as captured, or ``width`` pixels wide (a thumbnail)."""
        jpeg = await asyncio.to_thread(self.store.calibration.image, stream_id, frame_id)
        if jpeg is None:
            raise FrameNotFound(f"stream {stream_id!r} has no marked frame {frame_id!r}")
        if width is None:
            return jpeg
        frame = await self._frame(stream_id, frame_id)
        return await asyncio.to_thread(shrunk_jpeg, jpeg, frame["width"], width)

    async def density(self, stream_id: str, frame_id: str) -> bytes:
        frame = await self._frame(stream_id, frame_id)
        blob = await asyncio.to_thread(self.store.calibration.density, stream_id, frame_id)
        if blob is None:
            raise FrameNotFound(f"stream {stream_id!r} has no marked frame {frame_id!r}")
        return await asyncio.to_thread(density_png, blob, frame["width"], frame["height"])

    async def set_marks(self, stream_id: str, frame_id: str, marks: Mapping[str, Any]
                        ) -> dict[str, Any]:
        """Replace a frame's marks (checked against its size: ``MarksError``)."""
        frame = await self._frame(stream_id, frame_id)
        checked = check_marks(marks, frame["width"], frame["height"])
        if not await asyncio.to_thread(self.store.calibration.set_marks, stream_id,
                                       frame_id, checked):
            raise FrameNotFound(f"stream {stream_id!r} has no marked frame {frame_id!r}")
        return frame_dict({**frame, "marks": checked})

    async def delete_frame(self, stream_id: str, frame_id: str) -> None:
        if not await asyncio.to_thread(self.store.calibration.delete_frame, stream_id,
                                       frame_id):
            raise FrameNotFound(f"stream {stream_id!r} has no marked frame {frame_id!r}")

    # -- jobs ----------------------------------------------------------------------------

    async def _record(self, stream_id: str) -> Job | None:
        """The stream's last job: this process's live one, else the store's record (a
        running one whose process is gone is reported failed)."""
        live = self._jobs.get(stream_id)
        if live is not None:
            return live[0]
        records = await asyncio.to_thread(self.store.settings.stream_settings, JOB_KEY)
        record = records.get(stream_id)
        if not isinstance(record, dict):
            return None
        job = _job(record)
        if stream_id in self._claiming and job.owner == self.owner:
            return job  # its first record, just written by start(): not a job left behind
        if self._gone(job):
            job.state, job.finished_at = "failed", job.updated_at
            job.message = "interrupted: the server running it stopped"
        return job

    def _gone(self, job: Job) -> bool:
        """Whether a recorded running job's process is gone: ours (a job that is not live
        here was left by an earlier run of this server), any when the store is ours
        alone, or one silent for longer than ``STALE_S``."""
        return job.state == "running" and (not self.shared or job.owner == self.owner
                                           or time.time() - job.updated_at > STALE_S)

    def _free(self, record: Any | None) -> bool:
        """Whether a new job may replace the stream's job record ``record``."""
        if not isinstance(record, dict):
            return True
        job = _job(record)
        return job.state != "running" or self._gone(job)

    async def status(self, stream_id: str) -> dict[str, Any]:
        job = await self._record(stream_id)
        body = job.public() if job is not None else {
            "state": "idle", "progress": 0.0, "message": "", "started_at": None,
            "finished_at": None, "result": None}
        return {**body, "model": calibration_summary(self._current(stream_id))}

    async def start(self, stream_id: str, time_budget: float) -> dict[str, Any]:
        """Start calibrating from the stream's marked frames (those of the newest marked
        frame's size); ``CalibrationConflict`` when one runs or too few are marked."""
        if self._closed:
            raise StreamConflict.shutting_down()
        job = await self._record(stream_id)
        if job is not None and job.state == "running":
            raise CalibrationConflict(f"a calibration of stream {stream_id!r} is already "
                                      "running")
        frames = [f for f in await asyncio.to_thread(self.store.calibration.frames,
                                                     stream_id) if f["marks"] is not None]
        size = (frames[-1]["width"], frames[-1]["height"]) if frames else None
        usable = [f for f in frames if (f["width"], f["height"]) == size]
        if len(usable) < MIN_FRAMES:
            other = len(frames) - len(usable)
            note = f" ({other} more of another size than the newest)" if other else ""
            raise CalibrationConflict(
                f"calibration needs at least {MIN_FRAMES} marked frames of one size; stream "
                f"{stream_id!r} has {len(usable)}{note}")
        live = self._jobs.get(stream_id)
        if live is not None and live[0].state != "running":
            # It has its verdict (status shows it) and is writing its last record: wait
            # for that rather than refuse, and this job's records come after its.
            await asyncio.wait({live[1]})
        async with self._starting:
            if self._closed:
                raise StreamConflict.shutting_down()
            if stream_id in self._jobs:  # started since the frames were read
                raise CalibrationConflict(f"a calibration of stream {stream_id!r} is "
                                          "already running")
            job = Job(owner=self.owner, message=f"starting on {len(usable)} marked frames")
            job.updated_at = time.time()
            # The first record is written before the job exists and before the answer, in
            # one step with the check that no job runs, for every process of the store.
            self._claiming.add(stream_id)
            try:
                claimed = await asyncio.to_thread(self.store.settings.claim_stream_setting,
                                                  stream_id, JOB_KEY, asdict(job), self._free)
            finally:
                self._claiming.discard(stream_id)
            if not claimed:
                raise CalibrationConflict(f"a calibration of stream {stream_id!r} is "
                                          "already running (started through another API "
                                          "process)")
            task = asyncio.create_task(self._run(stream_id, job, usable, time_budget),
                                       name=f"calibrate-{stream_id}")
            self._jobs[stream_id] = (job, task)
        return await self.status(stream_id)

    async def _save(self, stream_id: str, job: Job) -> None:
        """Record the job as it is now. Shielded: a cancelled caller's write still
        finishes (``close`` waits for it), and before the next one starts (the lock), so
        a job's last record is the one that stays even when the server stops in the
        middle of a write."""
        job.updated_at = time.time()
        write = asyncio.create_task(self._write_record(stream_id, asdict(job)))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)

    async def _write_record(self, stream_id: str, record: dict[str, Any]) -> None:
        async with self._saving:
            try:
                await asyncio.to_thread(self.store.settings.save_stream_setting, stream_id,
                                        JOB_KEY, record)
            except Exception as exc:  # the live job goes on; only its record is behind
                log.error("event=calibration_record_failed stream=%s error=%r", stream_id,
                          str(exc))

    async def _run(self, stream_id: str, job: Job, frames: list[MarkedFrame],
                   time_budget: float) -> None:
        work: Path | None = None
        beat = asyncio.create_task(self._heartbeat(stream_id, job))
        try:  # its first record is written (start); every later one comes after it
            work = Path(tempfile.mkdtemp(prefix="crowdcount-calibrate-", dir=self.work_dir))
            dataset = await asyncio.to_thread(self._write_dataset, stream_id, frames, work)
            output = work / "model.onnx"
            result, error = await self._subprocess(stream_id, job, dataset, output,
                                                   time_budget)
            await self._finish(stream_id, job, result, error, output)
        except asyncio.CancelledError:
            job.state, job.message = "failed", STOPPED
            raise
        except Exception as exc:
            log.exception("calibration of %s failed", stream_id)
            job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            beat.cancel()
            await asyncio.wait({beat})  # a beat's write in flight lands before the last one
            job.finished_at = time.time()
            try:
                await self._save(stream_id, job)
            finally:
                # Only now: until the final record is saved, a status read would find the
                # store's "running" record of this process and report it interrupted.
                if self._jobs.get(stream_id, (None,))[0] is job:
                    del self._jobs[stream_id]
                if work is not None:
                    await asyncio.to_thread(shutil.rmtree, work, True)
            log.info("event=calibration_%s stream=%s message=%r", job.state, stream_id,
                     job.message)

    async def _heartbeat(self, stream_id: str, job: Job) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._save(stream_id, job)

    def _write_dataset(self, stream_id: str, frames: list[MarkedFrame], work: Path) -> Path:
        """The marked frames as a generic dataset (what ``crowdcount calibrate`` reads)."""
        root = work / "marked"
        root.mkdir()
        images = []
        for i, frame in enumerate(frames):
            jpeg = self.store.calibration.image(stream_id, frame["id"])
            if jpeg is None or frame["marks"] is None:
                continue  # deleted since: the others still make a calibration
            name = f"{i:03d}-{frame['id']}.jpg"
            (root / name).write_bytes(jpeg)
            images.append({"file": name, **frame["marks"]})
        (root / "annotations.json").write_text(json.dumps({"images": images}))
        return root

    async def _subprocess(self, stream_id: str, job: Job, dataset: Path, output: Path,
                          time_budget: float) -> tuple[dict[str, Any] | None, str]:
        """Run the command, following its progress; its result line and, when it failed,
        the last line of its stderr."""
        proc = await asyncio.create_subprocess_exec(
            *job_command(dataset, output, time_budget), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=job_env(),
            limit=1 << 20)
        assert proc.stdout is not None and proc.stderr is not None
        tail: deque[str] = deque(maxlen=20)
        result: dict[str, Any] | None = None
        saved = 0.0

        async def errors() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").strip()
                if line:
                    tail.append(line)

        reader = asyncio.create_task(errors())
        limit = JOB_TIMEOUT_S + 4 * time_budget
        try:
            async with asyncio.timeout(limit):  # a hung job ends too
                async for raw in proc.stdout:
                    item = _json_line(raw)
                    if item is None:
                        continue  # the model's path, or a library's print
                    if "progress" in item:
                        job.progress = min(1.0, max(0.0, float(item["progress"])))
                        job.message = str(item.get("message", ""))[:200]
                        if time.monotonic() - saved >= SAVE_EVERY_S:
                            saved = time.monotonic()
                            await self._save(stream_id, job)
                    elif "kept" in item:
                        result = item
                await proc.wait()
                await reader
        except TimeoutError:
            await _kill(proc, reader)
            return None, f"calibration took longer than {limit:g} s and was stopped"
        except BaseException:
            await _kill(proc, reader)
            raise
        last = tail[-1] if tail else f"calibration exited with status {proc.returncode}"
        return result, last.removeprefix("python -m training calibrate: error: ")

    async def _finish(self, stream_id: str, job: Job, result: dict[str, Any] | None,
                      error: str, output: Path) -> None:
        if result is None:
            job.state, job.message = "failed", error
            return
        job.result = {k: result.get(k) for k in ("frames", "held_out", "mae_before",
                                                  "mae_after", "kept", "seconds")}
        before, after = float(result["mae_before"]), float(result["mae_after"])
        if not result.get("kept") or not output.is_file():
            job.state = "refused"
            job.message = (f"calibration did not help (held-back MAE {before:.2f} -> "
                           f"{after:.2f}); the stream keeps its model")
            return
        model_id = secrets.token_hex(8)
        data = await asyncio.to_thread(output.read_bytes)
        await asyncio.to_thread(self.store.calibration.save_model, stream_id, model_id, data)
        value = {"model_id": model_id, "frames": int(result["frames"]),
                 "held_out": int(result["held_out"]), "mae_before": before,
                 "mae_after": after, "seconds": float(result["seconds"]),
                 "calibrated_at": time.time()}
        await self._apply(stream_id, value)
        job.state, job.progress = "done", 1.0
        job.message = (f"calibrated on {value['frames']} frames: MAE {before:.2f} -> "
                       f"{after:.2f}")

    async def revert(self, stream_id: str) -> dict[str, Any]:
        """Back to the shared (or the config's) model; ``NoCalibration`` when none."""
        if self._current(stream_id) is None:
            raise NoCalibration(f"stream {stream_id!r} has no calibration")
        await self._apply(stream_id, None)
        await asyncio.to_thread(self.store.calibration.forget, stream_id, frames=False)
        return await self.status(stream_id)

    async def forget(self, stream_id: str) -> None:
        """A removed stream: stop its job and drop its frames, model and records (a new
        stream of that name starts uncalibrated)."""
        async with self._starting:
            live = self._jobs.pop(stream_id, None)
        if live is not None:
            live[1].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await live[1]
        if self._current(stream_id) is not None:
            await self._apply(stream_id, None)
        await asyncio.to_thread(self.store.calibration.forget, stream_id)
        await asyncio.to_thread(self.store.settings.delete_stream_setting, stream_id, JOB_KEY)

    async def close(self) -> None:
        """Stop every running job (their subprocesses are killed); before the store
        closes."""
        async with self._starting:
            self._closed = True
            live = list(self._jobs.items())
        for _, (_, task) in live:
            task.cancel()
        for stream_id, (job, task) in live:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if job.finished_at is None:
                # Cancelled before its first step (a stop right after the 202): its
                # coroutine never ran, so its record still says "running".
                job.state, job.message, job.finished_at = "failed", STOPPED, time.time()
                await self._save(stream_id, job)
                self._jobs.pop(stream_id, None)
        # A task cancelled again during its last write ended before the write did.
        await asyncio.gather(*self._writes, return_exceptions=True)


def _json_line(raw: bytes) -> dict[str, Any] | None:
    try:
        item = json.loads(raw)
    except ValueError:
        return None
    return item if isinstance(item, dict) else None


async def _kill(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(proc.wait())
