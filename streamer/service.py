"""The running service: every long-lived object of one server, and the stream lifecycle.

Why a separate object from the aiohttp application: routes, startup/shutdown hooks and tests
all need the same operations (add a stream, remove it, resume the saved ones, shut down in
order) and they must keep the pipeline, the viewer sinks, the store and the metrics in step.
Doing them here, once, keeps the HTTP layer to parsing and status codes.

Stream ids are the stream names (letters, digits, ``_ . -``), as in the config file: they
appear in API paths, metric labels and the database, so one plain identifier is simpler
than a name plus a generated id. Streams have an *origin*:

* ``config``: from the config file or ``--stream``; any kind (rtsp, file, device, webcam);
  not persisted (the config is their record) and not removable through the API.
* ``api``: added with ``POST /api/streams``; rtsp/rtsps only; persisted in the store, so
  they are resumed after a restart, and forgotten by ``DELETE`` (their history is kept).
* ``webrtc``: a browser camera published through ``/api/rtc/offer``; lives as long as its
  peer connection; never persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crowdcount.model.errors import UserError
from crowdcount.model.floor import Floor
from crowdcount.model.runtime import Runtime
from crowdcount.model.zones import Zone, check_unique_names
from crowdcount.streamer.calibration import (
    CALIBRATION_KEY,
    CalibrationDesk,
    Captured,
    RecentFrames,
    calibration_summary,
    capture,
)
from crowdcount.streamer.config import (
    STREAM_NAME_RE,
    Config,
    FloorConfig,
    StreamConfig,
    check_zones_on_floor,
)
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.gathering import GatheringMap
from crowdcount.streamer.integrations import (
    FLOOR_KEY,
    Integrations,
    rules_from_config,
)
from crowdcount.streamer.metrics import Metrics
from crowdcount.streamer.pipeline import Pipeline
from crowdcount.streamer.rtc import PeerManager
from crowdcount.streamer.rules import RuleBook
from crowdcount.streamer.sinks.base import Sink
from crowdcount.streamer.sinks.counts import CountSink
from crowdcount.streamer.sinks.viewer import ViewerRegistry
from crowdcount.streamer.smoothing import Ema
from crowdcount.streamer.sources.base import Source
from crowdcount.streamer.sources.webrtc import WebRtcSource
from crowdcount.streamer.status import StreamStatus
from crowdcount.streamer.store import SettingsStore, Store, open_store
from crowdcount.streamer.surface import (
    StreamConflict,
    StreamError,
    StreamNotFound,
    ZonesView,
    find_entry,
    has_history,
    shown_options,
    stream_dict,
)
from crowdcount.streamer.upload import UploadCounter
from crowdcount.streamer.urls import mask_url, validate_api_url

__all__ = ["CALIBRATION_KEY", "Service", "StreamConflict", "StreamEntry", "StreamError",
           "StreamNotFound", "make_source"]

log = logging.getLogger(__name__)

Origin = Literal["config", "api", "webrtc"]


@dataclass(eq=False)
class StreamEntry:
    """One live stream. ``url`` is the raw URL (it may hold credentials): never return it,
    ``to_dict`` masks it. ``options`` are its own settings (rate, size, source settings),
    as saved with it; its zones and floor calibration are ``analysis``'s (the service's
    ``Integrations``, which puts them in force), not copied here."""

    id: str
    url: str
    kind: str
    origin: Origin
    source: Source
    analysis: ZonesView
    options: dict[str, Any] = field(default_factory=dict)
    added_at: float = field(default_factory=time.time)
    #: the service's calibrations in force (all streams'; looked up, never copied)
    calibrations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        floor = self.analysis.floor(self.id)
        options = shown_options(self.options, [z.to_dict() for z in self.analysis.zones(self.id)],
                                None if floor is None else floor.to_dict())
        return stream_dict(self.id, self.url, self.kind, self.origin, options,
                           self.source.status.to_dict(),
                           calibration_summary(self.calibrations.get(self.id)))


def make_source(stream: StreamConfig, max_side: int | None = None) -> Source:
    """The source for one configured stream (imports only the module it needs).
    Decoders get the stream's count rate (keyframes only when they meet it) and the
    longer side the model runs it at (``max_side``: the stream's, else the caller's)."""
    kind = stream.kind
    target_fps, side = stream.target_fps, stream.max_side or max_side
    if kind == "rtsp" and stream.isolate_decoder:
        from crowdcount.streamer.sources.isolated import IsolatedRtspSource

        return IsolatedRtspSource(stream.name, stream.url, stall_timeout=stream.stall_timeout,
                                  max_retries=stream.max_retries,
                                  target_fps=target_fps, max_side=side)
    if kind == "rtsp":
        from crowdcount.streamer.sources.rtsp import RtspSource

        return RtspSource(stream.name, stream.url, stall_timeout=stream.stall_timeout,
                          max_retries=stream.max_retries,
                          target_fps=target_fps, max_side=side)
    if kind == "file":
        from crowdcount.streamer.sources.file import FileSource

        return FileSource(stream.name, stream.url, loop=stream.loop, target_fps=target_fps,
                          max_side=side)
    from crowdcount.streamer.sources.webcam import WebcamSource

    device = stream.url if kind == "device" else f"/dev/video{stream.url.partition(':')[2]}"
    return WebcamSource(stream.name, device)


class Service:
    """Owns the pipeline, the count store, the live feed, the viewer registry, the WebRTC
    peers, the metrics and the upload counter of one server.

    Construction opens the database (so a bad path fails before the server listens);
    ``start()`` must run on the serving loop and ``close()`` releases everything.
    """

    def __init__(
        self,
        config: Config,
        runtime: Runtime,
        *,
        model_path: str,
        store_rate: float | None = None,
        upload_counter: UploadCounter | None = None,
        store: Store | None = None,
        owns_registry: bool = True,
        on_dropped: Callable[[StreamEntry], Awaitable[None]] | None = None,
        sources: Callable[[StreamConfig, int | None], Source] = make_source,
        gathering_open_every: float | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.model_path = model_path
        self.max_streams = config.server.max_streams
        # A cluster's shard runs the cameras its API processes saved: the registry and
        # the zones are theirs to write (``streamer.cluster.service``), never the shard's,
        # so a shard restarting or dropping a camera cannot re-create or forget its row.
        self.owns_registry = owns_registry
        self._on_dropped = on_dropped  # told when a stream has gone (a shard's browser cameras)
        # How a configured stream becomes a source (``make_source``; tests run a cluster's
        # shard with synthetic cameras behind its rows).
        self._sources = sources
        if store is not None:  # a cluster's shard passes its PostgreSQL store
            self.store: Store = store
        else:
            try:
                self.store = open_store(config.server.database)
            except (sqlite3.Error, OSError) as exc:
                raise UserError(f"cannot open database {config.server.database}: {exc}") from None
        # Zones, alert rules and notifiers; the pipeline's analysis stage fills
        # ``Result.zones`` before any sink sees a result, so every sink agrees.
        self.integrations = Integrations.from_config(config)
        self.feed = CountFeed()
        self.viewers = ViewerRegistry(zones=self.integrations.zones, floors=self._floor_of)
        self.pipeline = Pipeline(runtime, max_batch=config.model.max_batch,
                                 analysis=self.integrations)
        self.counts = CountSink(self.store.history, self.feed, Ema(), store_rate,
                                alert_log=self.store.alerts)
        # Rules and zones made through the API, saved in the store's settings, and where
        # people gather (per-minute density grids, in the store as well).
        self.settings: SettingsStore = self.store.settings
        # Each calibrated stream's "calibration" setting (its model file, frames, MAE):
        # it wins over the config's ``model =`` for that stream, as saved zones do. The
        # model files are written from the store's bytes into ``model_dir`` (default:
        # beside the database) when they are not there.
        self.calibrations: dict[str, dict[str, Any]] = {}
        self.model_dir = model_dir or Path(config.server.database).parent / "calibrations"
        self.recent = RecentFrames()  # what calibration captures
        self.calibration = CalibrationDesk(self.store, grab=self.grab,
                                           apply=self._apply_calibration,
                                           current=self.calibrations.get)
        self.rules = RuleBook(rules_from_config(config.thresholds), self.settings,
                              self.integrations, self._live_zone_names,
                              self.pipeline.publish_alerts)
        # A cluster's shard writes the minute it is filling as it fills
        # (``gathering_open_every``): the API processes answer from the store.
        self.gathering = GatheringMap(self.store.gathering,
                                      write_open_every=gathering_open_every)
        self.metrics = Metrics(self.statuses, self._service_gauges,
                               zones=self._zone_names, alerts=self.integrations.active_alerts,
                               service_counters=self._service_counters,
                               model={"backend": runtime.name, "path": model_path})
        self.peers = PeerManager(
            self.viewers, self._on_rtc_source, on_source_closed=self._on_rtc_closed,
            max_viewers_per_stream=config.server.max_viewers_per_stream,
        )
        self.uploads = upload_counter or UploadCounter.from_config(config.model)
        self.streams: dict[str, StreamEntry] = {}
        self.started_at = time.monotonic()
        self._closed = False
        self._retention: asyncio.Task[None] | None = None

    # -- views -------------------------------------------------------------------------------

    def statuses(self) -> dict[str, StreamStatus]:
        return {sid: e.source.status for sid, e in self.streams.items()}

    def _service_gauges(self) -> dict[str, float]:
        return {
            "streams": float(len(self.streams)),
            "rtc_peers": float(self.peers.peer_count),
            "store_pending_rows": float(self.store.stats()["pending"]),
        }

    def _service_counters(self) -> dict[str, float]:
        """Totals since start (Prometheus counters, ``_total`` in the exposition)."""
        stats = self.pipeline.stats()
        store = self.store.stats()
        return {
            "store_dropped_rows": float(store["dropped"]),
            "store_duplicate_rows": float(store["duplicates"]),
            "feed_dropped_items": float(self.feed.dropped),
            "inference_errors": float(stats.inference_errors),
            "sink_errors": float(stats.sink_errors),
        }

    def _floor_of(self, stream_id: str) -> Floor | None:
        current = self.integrations.floor(stream_id)
        return None if current is None else current.floor

    def _zone_names(self, stream_id: str) -> list[str]:
        """The zones a live stream has now (metrics drop series of zones no longer there)."""
        if stream_id not in self.streams:
            return []
        return [z.name for z in self.integrations.zones(stream_id)]

    def _live_zone_names(self, stream_id: str) -> list[str] | None:
        """A live stream's zone names; ``None`` for a stream that is not live (the API
        refuses rules for it: a misspelt stream would be a rule that never fires)."""
        return self._zone_names(stream_id) if stream_id in self.streams else None

    async def set_zones(self, stream_id: str, zones: Sequence[Zone]) -> None:
        """Save a live stream's zones, then put them in force (any kind of stream: they come
        back when a stream of that id is added again, even over its config-file zones).
        The settings are their one record and ``Integrations`` their one copy in memory.
        Raises ``StreamNotFound`` and ``ValueError`` (duplicate names); nothing changes on
        error."""
        self.get(stream_id)
        check_unique_names(z.name for z in zones)
        if self.owns_registry:
            await asyncio.to_thread(self.settings.save_zones, stream_id,
                                    [z.to_dict() for z in zones])
        self.integrations.set_zones(stream_id, zones)

    async def set_floor(self, stream_id: str, floor: FloorConfig | None) -> None:
        """Replace a live stream's floor calibration (``None``: remove it) and save it, like
        zones (it comes back over a config file's one). Raises ``StreamNotFound`` and
        ``FloorError`` (a zone off the calibrated floor); nothing changes on error."""
        self.get(stream_id)
        if floor is not None:
            check_zones_on_floor(floor.build(), self.integrations.zones(stream_id))
        if self.owns_registry:
            value = None if floor is None else floor.model_dump(mode="json",
                                                                exclude_defaults=True)
            await asyncio.to_thread(self.settings.save_stream_setting, stream_id, FLOOR_KEY,
                                    value)
        self.integrations.set_floor(stream_id, floor)

    def get(self, stream_id: str) -> StreamEntry:
        return find_entry(self.streams, stream_id)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start inference, then resume the config streams and the saved API streams.

        A stream that cannot be resumed is logged and skipped: one bad camera must not keep
        the others (and the API) down.
        """
        await self.start_pipeline()
        for stream in self.config.streams:
            try:
                await self.add_stream(stream, origin="config")
            except Exception as exc:
                log.error("event=resume_failed stream=%s error=%r", stream.name, str(exc))
        for saved in await asyncio.to_thread(self.store.streams.all):
            try:
                url = validate_api_url(saved["url"])
                options = saved.get("options") or {}
                stream = StreamConfig.model_validate(
                    {"name": saved["id"], "url": url, **_stream_options(options)}
                )
                await self.add_stream(stream, origin="api")
            except Exception as exc:
                log.error("event=resume_failed stream=%s error=%r", saved.get("id"), str(exc))

    async def start_pipeline(self) -> None:
        """Everything ``start`` does but resuming streams: a cluster's shard adds its own
        cameras (read from the cluster's database) instead."""
        self.started_at = time.monotonic()
        # Alerts left open by a previous process can never be cleared by it: close them; the
        # fresh engine raises again if the crowd is still there.
        await asyncio.to_thread(self.store.alerts.close_open, time.time())
        saved = await asyncio.to_thread(self.settings.stream_settings, CALIBRATION_KEY)
        self.calibrations.clear()  # the same dict: stream entries look it up
        self.calibrations.update(saved)  # model files are found when a stream starts
        for name in await self.rules.load():
            log.warning("event=saved_rule_shadowed rule=%s (the config file has one of that "
                        "name)", name)
        await self.integrations.start()
        server = self.config.server
        if server.retention_days is not None or server.raw_history_hours > 0:
            self._retention = asyncio.create_task(self._enforce_retention())
        await self.pipeline.start()
        # Every consumer of results and alerts is a sink of the pipeline, and only that.
        sinks: list[Sink] = [self.counts, self.metrics, self.viewers, self.gathering,
                             self.recent, *self.integrations.notifiers]
        for sink in sinks:
            self.pipeline.add_sink(sink)

    async def add_stream(
        self, stream: StreamConfig, *, origin: Origin, persist: bool = False
    ) -> StreamEntry:
        """Start ``stream`` and wire it to the sinks; with ``persist`` save it first, so an
        accepted API stream is never lost to a crash. Raises ``StreamConflict``."""
        self._reserve(stream.name)
        runtime = self.pipeline.runtime
        # The size the model runs this stream at, for the decoder to convert to (a backend
        # with a fixed input size resizes by itself).
        model_side = runtime.max_side if runtime.backend.fixed_size is None else None
        entry = await self.add_source(
            self._sources(stream, model_side), url=stream.url, kind=stream.kind, origin=origin,
            fps_limit=stream.fps_limit, target_fps=stream.target_fps,
            max_side=stream.max_side, persist=persist,
            zones=[z.model_dump() for z in stream.zones],
            floor=stream.floor, model=stream.model,
            # non-default source settings, recorded so that a resumed stream keeps them
            settings=stream.model_dump(include={"stall_timeout", "max_retries",
                                                "isolate_decoder"}, exclude_defaults=True),
        )
        return entry

    async def add_source(
        self,
        source: Source,
        *,
        url: str,
        kind: str,
        origin: Origin = "config",
        fps_limit: float | None = None,
        max_side: int | None = None,
        persist: bool = False,
        zones: list[dict[str, Any]] | None = None,
        floor: FloorConfig | None = None,
        settings: dict[str, Any] | None = None,
        target_fps: float | None = None,
        model: Path | None = None,
    ) -> StreamEntry:
        """Add an already built source (any kind: tests and benchmarks use synthetic ones).
        ``target_fps`` is the rate the model is fed (default: ``fps_limit``, which is what
        the options record; a camera's default rate is not written down as a limit).
        ``zones`` (``{"name", "points"}`` dicts) and ``floor`` are the stream's definition's
        (a config file's, or a cluster camera's row; ``None``: keep those in force); zones
        and a floor saved through the API win over them. Raises ``StreamConflict``; on any
        failure nothing is left registered."""
        sid = source.stream_id
        self._reserve(sid, origin)
        saved = await self._saved_analysis()
        self._reserve(sid, origin)  # again: the read awaited
        if zones is not None:
            self.integrations.set_zones(sid, [Zone.from_dict(z) for z in zones])
        if floor is not None:
            self.integrations.set_floor(sid, floor)
        self._put_saved_in_force(sid, *saved)
        options: dict[str, Any] = {
            k: v for k, v in (("fps_limit", fps_limit), ("max_side", max_side)) if v
        } | (settings or {})
        entry = StreamEntry(sid, url, kind, origin, source, self.integrations, options,
                            calibrations=self.calibrations)
        self.streams[sid] = entry  # reserved before the first await: no duplicate can race in
        persist = persist and self.owns_registry
        try:
            if persist:
                await asyncio.to_thread(self.store.streams.save, sid, sid, url, kind, options)
            own = await self._calibrated_file(sid)
            await self.pipeline.add_stream(source, target_fps or fps_limit, max_side,
                                           own or model)
            self.viewers.sink(sid)  # viewers of this stream can connect from now on
        except BaseException:
            self.streams.pop(sid, None)
            self.viewers.remove(sid)
            with contextlib.suppress(Exception):
                await source.stop()
            if persist:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.streams.delete, sid)
            raise
        log.info("event=stream_added stream=%s kind=%s origin=%s url=%s",
                 sid, kind, origin, mask_url(url))
        return entry

    async def _saved_analysis(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The zones and floor calibrations saved through the API, every stream's."""
        return (await asyncio.to_thread(self.settings.zones),
                await asyncio.to_thread(self.settings.stream_settings, FLOOR_KEY))

    def _put_saved_in_force(self, sid: str, zones: dict[str, Any],
                            floors: dict[str, Any]) -> None:
        """The stream's saved zones and floor calibration (the settings, their one record)
        win over its definition's, which are in force until then."""
        if sid in zones:
            self.integrations.set_zones(sid, [Zone.from_dict(z) for z in zones[sid]])
        if sid in floors:
            self.integrations.set_floor(sid, self._saved_floor(sid, floors[sid]))

    async def apply_saved(self, stream_ids: Iterable[str]) -> None:
        """Put the live streams' saved zones and floor calibrations in force again (a
        cluster's shard, told by the store that another process saved them)."""
        saved = await self._saved_analysis()
        for sid in stream_ids:
            if sid in self.streams:
                self._put_saved_in_force(sid, *saved)

    def _saved_floor(self, sid: str, value: dict[str, Any] | None) -> FloorConfig | None:
        """The saved calibration ``value`` of ``sid``; one that no longer validates (a
        stricter build) is logged and ignored rather than keeping the stream down."""
        if value is None:
            return None
        try:
            return FloorConfig.model_validate(value)
        except ValueError as exc:
            log.error("event=saved_floor_invalid stream=%s error=%r", sid,
                      " ".join(str(exc).split()))
            return None

    def calibrated_model(self, stream_id: str) -> Path | None:
        """The stream's calibrated model file, when it has one that is still there."""
        path = self.calibrations.get(stream_id, {}).get("model")
        return Path(path) if path and Path(path).is_file() else None

    async def _calibrated_file(self, stream_id: str) -> Path | None:
        """The stream's calibrated model file, written from the store if it is not here
        yet (a restart on another machine, a cluster's shard taking over the camera)."""
        value = self.calibrations.get(stream_id)
        if value is None:
            return None
        path = await asyncio.to_thread(self._model_file, stream_id, value)
        if path is not None and self.calibrations.get(stream_id) is value:
            self.calibrations[stream_id] = {**value, "model": str(path)}
        return path

    def _model_file(self, stream_id: str, value: Mapping[str, Any]) -> Path | None:
        """The file of a calibration's model: its ``model`` path when it is there, else
        written into ``model_dir`` from the store (``model_id``'s bytes: a cluster's shard,
        a new machine); ``None`` when neither has it. Blocking I/O."""
        path = value.get("model")
        if path and Path(path).is_file():
            return Path(path)
        model_id = value.get("model_id")
        if not isinstance(model_id, str) or not model_id.isalnum():
            return None
        target = self.model_dir / f"{stream_id}-{model_id}.onnx"
        if target.is_file():
            return target
        data = self.store.calibration.model(stream_id, model_id)
        if data is None:
            log.error("event=calibration_model_missing stream=%s model=%s", stream_id,
                      model_id)
            return None
        self.model_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)  # whole or absent: a reader never opens half a model
        return target

    def _prune_models(self, stream_id: str, keep: Path | None) -> None:
        """Delete the stream's older model files in ``model_dir`` (only those this service
        wrote there: ``<stream>-<model id>.onnx``); a runtime already open keeps its copy."""
        pattern = re.compile(re.escape(stream_id) + r"-[0-9a-f]{16}\.onnx")
        with contextlib.suppress(OSError):
            for path in self.model_dir.iterdir():
                if pattern.fullmatch(path.name) and path != keep:
                    path.unlink(missing_ok=True)

    async def grab(self, stream_id: str, back: int = 0) -> Captured:
        """One of the stream's recent frames, ready to save (``CalibrationConflict``
        when it has produced none)."""
        return await asyncio.to_thread(capture, self.recent.pick(stream_id, back))

    async def set_calibration(self, stream_id: str, value: dict[str, Any]) -> None:
        """Record a calibration (``value["model"]`` its ONNX file, or ``value["model_id"]``
        its bytes in the store) and count the stream with it from now on, without
        restarting it (the worker swaps models when loaded)."""
        path = await asyncio.to_thread(self._model_file, stream_id, value)
        if path is None:
            raise FileNotFoundError(f"stream {stream_id!r}: calibrated model not found")
        value = {**value, "model": str(path)}
        if self.owns_registry:
            await asyncio.to_thread(self.settings.save_stream_setting, stream_id,
                                    CALIBRATION_KEY, value)
        self.calibrations[stream_id] = value
        self._count_with(stream_id)
        await asyncio.to_thread(self._prune_models, stream_id, path)

    async def revert_calibration(self, stream_id: str) -> bool:
        """Back to the config's model (or the shared one); whether there was a calibration."""
        had = self.calibrations.pop(stream_id, None) is not None
        if self.owns_registry:
            await asyncio.to_thread(self.settings.delete_stream_setting, stream_id,
                                    CALIBRATION_KEY)
        self._count_with(stream_id)
        await asyncio.to_thread(self._prune_models, stream_id, None)
        return had

    async def _apply_calibration(self, stream_id: str, value: dict[str, Any] | None) -> None:
        if value is None:
            await self.revert_calibration(stream_id)
        else:
            await self.set_calibration(stream_id, value)

    async def reload_calibration(self, stream_id: str) -> None:
        """Put the store's calibration of the stream in force (a cluster's shard, told
        that another process changed it); nothing saved."""
        value = (await asyncio.to_thread(self.settings.stream_settings,
                                         CALIBRATION_KEY)).get(stream_id)
        path = None if value is None else await asyncio.to_thread(self._model_file,
                                                                  stream_id, value)
        if value is None or path is None:
            self.calibrations.pop(stream_id, None)
        else:
            self.calibrations[stream_id] = {**value, "model": str(path)}
        self._count_with(stream_id)
        await asyncio.to_thread(self._prune_models, stream_id, path)

    def _count_with(self, stream_id: str) -> None:
        """Point the worker at the stream's model: its calibration's, else the config's,
        else the shared one."""
        worker = self.pipeline.worker
        if worker is None or stream_id not in self.streams:
            return
        own = self.calibrated_model(stream_id)
        if own is None:
            config = next((s for s in self.config.streams if s.name == stream_id), None)
            own = config.model if config is not None else None
        worker.set_model(stream_id, own)

    def _reserve(self, sid: str, origin: Origin = "config") -> None:
        """Refuse a stream that may not be added now (HTTP 409). A browser camera's viewer
        sink exists before its stream (its answer track is negotiated first): for it, that
        sink is its own, not a name clash."""
        if self._closed:
            raise StreamConflict.shutting_down()
        if STREAM_NAME_RE.fullmatch(sid) is None:
            raise StreamConflict(f"invalid stream name {sid!r}")
        if sid in self.streams or (sid in self.viewers and origin != "webrtc"):
            raise StreamConflict.name_taken(sid)
        if len(self.streams) >= self.max_streams:
            raise StreamConflict.limit_reached(self.max_streams)

    async def remove_stream(self, stream_id: str) -> None:
        """Stop a stream and release its threads. API streams are also forgotten by the
        store (history kept); config streams are refused; a WebRTC stream hangs up its peer.
        """
        entry = self.get(stream_id)
        if entry.origin == "config":
            raise StreamConflict.not_editable(stream_id, entry.origin, "remove")
        if entry.origin == "webrtc":
            for peer in self.peers.peers():
                if peer.mode == "publish" and peer.stream_id == stream_id:
                    await self.peers.close_peer(peer.id, "removed via API")
            await self._drop(stream_id, entry)  # no-op if the hang-up already dropped it
            return
        # A removed API camera is forgotten with its zones (a new one of that name starts
        # clean); a browser camera's or a config stream's zones stay for its return.
        if self.owns_registry:
            await asyncio.to_thread(self.store.streams.delete, stream_id)
            await asyncio.to_thread(self.settings.delete_zones, stream_id)
            await asyncio.to_thread(self.settings.delete_stream_setting, stream_id, FLOOR_KEY)
            await self.calibration.forget(stream_id)
        await self._drop(stream_id, entry)

    async def replace_stream(self, stream: StreamConfig) -> StreamEntry:
        """Edit an API stream (its url or options): the old source is stopped and the new
        one started under the same id, so its history, zones, rules and gathering map carry
        on (its zones and floor calibration from the settings, as for any stream added).
        Config-file and browser streams are refused (``StreamConflict``)."""
        entry = self.get(stream.name)
        if entry.origin != "api":
            raise StreamConflict.not_editable(stream.name, entry.origin, "edit")
        await self._drop(stream.name, entry)
        return await self.add_stream(stream, origin="api", persist=True)

    async def _drop(self, stream_id: str, entry: StreamEntry) -> None:
        if self.streams.get(stream_id) is not entry:
            return
        del self.streams[stream_id]
        with contextlib.suppress(KeyError):
            await self.pipeline.remove_stream(stream_id)  # clears its active alerts
        self.viewers.remove(stream_id)
        self.counts.forget(stream_id)
        self.metrics.forget(stream_id)
        self.gathering.forget(stream_id)
        self.recent.forget(stream_id)
        if entry.origin != "config":  # API streams get theirs back from the store
            self.integrations.set_zones(stream_id, ())
            self.integrations.set_floor(stream_id, None)
        # Make its last counts queryable at once (the history outlives the stream).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.flush)
        if self._on_dropped is not None:
            try:
                await self._on_dropped(entry)
            except Exception as exc:
                log.error("event=on_dropped_failed stream=%s error=%r", stream_id, str(exc))
        log.info("event=stream_removed stream=%s", stream_id)

    async def has_history(self, stream_id: str) -> bool:
        return await has_history(self.store, stream_id)

    # -- WebRTC publishers -------------------------------------------------------------------

    async def _on_rtc_source(self, source: WebRtcSource) -> None:
        """A browser camera becomes a stream; raising rejects the offer (PeerManager closes
        the peer)."""
        await self.add_source(source, url="webrtc", kind="webrtc", origin="webrtc")

    async def _on_rtc_closed(self, source: WebRtcSource) -> None:
        entry = self.streams.get(source.stream_id)
        if entry is not None and entry.source is source:
            await self._drop(source.stream_id, entry)

    # -- shutdown ----------------------------------------------------------------------------

    async def _enforce_retention(self, every: float = 3600.0) -> None:
        """Now and then hourly: delete raw count rows older than ``server.raw_history_hours``
        (their per-second and per-minute rollups stay: every processed frame is stored, ~2.6
        million rows a day per 30 fps stream), and everything older than
        ``server.retention_days``."""
        days = self.config.server.retention_days
        raw_hours = self.config.server.raw_history_hours
        while True:
            now = time.time()
            try:
                if raw_hours > 0:
                    cutoff = now - raw_hours * 3600
                    pruned = await asyncio.to_thread(self.store.history.prune_raw, cutoff)
                    log.info("event=raw_pruned deleted=%d before=%.0f", pruned, cutoff)
                if days is not None:
                    cutoff = now - days * 86400
                    deleted = await asyncio.to_thread(self.store.history.delete, None, cutoff)
                    deleted += await asyncio.to_thread(self.gathering.delete_before, cutoff)
                    log.info("event=retention deleted=%d before=%.0f", deleted, cutoff)
            except Exception as exc:  # the database's error, whichever backend
                log.error("event=retention_failed error=%r", str(exc))
            await asyncio.sleep(every)

    async def shutdown(self) -> None:
        """First phase (aiohttp on_shutdown): end live pushes and peers so open SSE
        responses and WebRTC connections do not hold the server's graceful exit."""
        self._closed = True
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        self.feed.close()
        await self.peers.close()

    async def close(self) -> None:
        """Second phase (on_cleanup): stop every source and the inference thread, commit the
        queued counts and close the database. Idempotent."""
        await self.shutdown()
        await self.calibration.close()
        for sid in list(self.streams):
            self.viewers.remove(sid)
        await self.pipeline.close()
        self.streams.clear()
        await asyncio.to_thread(self.gathering.close)
        await self.integrations.close()
        await asyncio.to_thread(self.store.close)
        await self.uploads.close()


def _stream_options(options: dict[str, Any]) -> dict[str, Any]:
    """The saved options that ``StreamConfig`` knows (older rows may hold others; zones and
    a floor calibration are the settings', see ``store.common.move_saved_options``)."""
    known = ("fps_limit", "max_side", "stall_timeout", "max_retries", "isolate_decoder")
    return {k: options[k] for k in known if k in options}
