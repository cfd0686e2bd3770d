"""The shapes the API answers with, as pydantic models for the OpenAPI document.

The routes build their answers from the service's own dicts (``stream_dict``,
``StreamStatus.to_dict``, the store's rows); these models describe those dicts field by
field, and Schemathesis checks every live answer against them (``tests/test_schemathesis.py``),
so a field renamed or retyped in the service fails the suite instead of surprising a
client. Extra fields are allowed (``extra="allow"``): adding a field is not a breaking
change for a client, removing or retyping one is.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crowdcount.streamer.status import StreamState

Point = tuple[float, float]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class HealthModel(_Answer):
    backend: str = Field(description="inference runtime serving the streams")
    path: str = Field(description="the model file")


class Health(_Answer):
    status: Literal["ok"]
    version: str = Field(description="the server's version (CHANGELOG.md)")
    streams: int = Field(description="live streams")
    model: HealthModel
    uptime_s: float
    time: float = Field(description="the server's clock (unix seconds)")


class HeatStop(_Answer):
    value: float
    color: Annotated[str, Field(pattern=r"^#[0-9a-f]{6}$")]


class HeatLegend(_Answer):
    """The colour scale of every heatmap: people per output cell."""

    unit: str
    max: float
    fade: float
    stops: list[HeatStop]


class StreamStatusOut(_Answer):
    state: StreamState | Literal["unavailable"]
    fps_in: float
    fps_out: float
    frames_in: int
    frames_out: int
    dropped: int
    reconnects: int
    last_error: str | None
    last_count: float | None


class CalibrationInForce(_Answer):
    """The calibration a stream counts with: how many marked frames it was fitted on and
    the MAE on the frames the guard held back, before (the shared model) and after."""

    frames: int | None
    mae_before: float | None
    mae_after: float | None
    calibrated_at: float | None = Field(description="unix seconds")


class Stream(_Answer):
    """A stream; its url has any credentials masked (``rtsp://***@host/...``)."""

    id: str
    name: str
    url: str
    kind: str = Field(description="rtsp, file, device, webcam or webrtc")
    origin: str = Field(description="config (the file or --stream), api or webrtc")
    options: dict[str, Any] = Field(
        description="the stream's own settings (max_side, fps_limit, zones, ...)")
    status: StreamStatusOut
    calibration: CalibrationInForce | None = Field(
        None, description="its own model from a calibration; null: the shared model")


class StreamList(_Answer):
    streams: list[Stream]


class CountRow(_Answer):
    """One raw count, or with ``step`` one bucket (``min``, ``max``, ``n`` added)."""

    t: float = Field(description="frame time, or the bucket's start (unix seconds)")
    count: float
    smoothed: float | None
    min: float | None = None
    max: float | None = None
    n: int | None = Field(None, description="frames in the bucket")
    zones: dict[str, float | None] | None = None
    zones_min: dict[str, float | None] | None = None
    zones_max: dict[str, float | None] | None = None


class Counts(_Answer):
    stream: str
    counts: list[CountRow]


class Zone(_Answer):
    name: str
    points: list[Point]


class Zones(_Answer):
    stream: str
    zones: list[Zone]
    persisted: bool


class Alert(_Answer):
    id: int | None = Field(description="null while not yet written to the store")
    stream: str
    zone: str | None
    rule: str
    raised_at: float
    cleared_at: float | None
    peak: float
    active: bool
    value: float | None = Field(None, description="the live count, for active alerts")


class Alerts(_Answer):
    alerts: list[Alert]


class Rule(_Answer):
    name: str
    stream: str
    zone: str | None
    above: float
    below: float
    for_seconds: float
    origin: Literal["config", "api"]
    active: bool


class Rules(_Answer):
    rules: list[Rule]


class DensitySummary(_Answer):
    shape: tuple[int, int]
    max: float


class UploadCount(_Answer):
    count: float
    width: int
    height: int
    density: DensitySummary
    overlay_png: str | None = Field(None, description="base64 PNG, with ?overlay=1")


class HeatmapGrid(_Answer):
    stream: str
    width: int
    height: int
    frames: int
    buckets: int
    first: float | None
    last: float | None
    grid: list[list[float]] | None = Field(
        description="mean people per cell, rows top to bottom; null when nothing was seen")
    mean_count: float | None
    peak_cell: float | None
    since: float | None
    until: float | None
    bucket_seconds: float


class RtcAnswer(_Answer):
    sdp: str
    type: Literal["answer"]
    peer_id: str
    stream_id: str


class FloorZone(_Answer):
    area_m2: float | None = Field(description="null for a zone off the calibrated floor")


class Floor(_Answer):
    """``floor`` is the calibration as it was put (a ``[streams.floor]`` table), or null."""

    stream: str
    floor: dict[str, Any] | None
    rms_error_px: float | None = None
    max_error_px: float | None = None
    grid: list[list[Point]] | None = Field(None, description="one-metre floor grid lines, "
                                                             "as frame polylines")
    levels: list[float] | None = Field(None, description="upper bounds (people/m²) of the "
                                                         "levels of service A-E")
    zones: dict[str, FloorZone] | None = None


class Marks(_Answer):
    """Heads marked on a frame (pixels of the frame as captured), or its typed count."""

    points: list[Point] | None = None
    count: float | None = None


class MarkedFrame(_Answer):
    id: str
    captured_at: float = Field(description="when the camera's frame was decoded (unix s)")
    width: int
    height: int
    model_count: float = Field(description="what the stream's model counted on it")
    marks: Marks | None = Field(description="null: not marked yet")
    marked_count: float | None = Field(description="the marks' count (points or typed)")


class MarkedFrames(_Answer):
    frames: list[MarkedFrame]


class CalibrationResult(_Answer):
    """The guard's verdict: MAE on the held-back marked frames, before and after."""

    frames: int
    held_out: int
    mae_before: float
    mae_after: float
    kept: bool
    seconds: float


class CalibrationStatus(_Answer):
    state: Literal["idle", "running", "done", "refused", "failed"]
    progress: float = Field(ge=0, le=1)
    message: str
    started_at: float | None
    finished_at: float | None
    result: CalibrationResult | None
    model: CalibrationInForce | None = Field(description="the calibration in force")
