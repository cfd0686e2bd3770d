"""The API process of a cluster: the routes' service, with the cameras elsewhere.

``ClusterService`` implements the routes' surface (``streamer.surface.ServiceSurface``) as
the single-process ``Service`` does, so the HTTP API and the page are the same, but it holds
no camera. The camera registry is PostgreSQL's ``streams`` table: adding, editing and
removing a camera are single transactions there (a unique name, ``max_streams`` counted
under a lock), and every change is announced by NOTIFY in its transaction, which is the
one path by which shards and API processes learn of it. Alert rules and zones are the
store's settings (announced the same way), the gathering map is read from the grids the
shards write, live counts and alerts arrive by LISTEN, history is read from SQL, and a
viewer's WebRTC offer is forwarded to the shard that owns the camera, whose node then sends
the media (a browser camera's offer likewise, once its row has placed it on a shard). Only
the cameras' status is read on a timer (``STATUS_S``): a shard that died sends no event,
and its silence is what the API must report.

Any number of these processes can run side by side; they share nothing but the database
and the Ray cluster, so one can be killed, restarted or added at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from crowdcount.model.errors import UserError
from crowdcount.model.zones import Zone, check_unique_names
from crowdcount.streamer.alerts import AlertEvent, ThresholdRule
from crowdcount.streamer.calibration import (
    CALIBRATION_KEY,
    CalibrationDesk,
    Captured,
    calibration_summary,
)
from crowdcount.streamer.cluster.placement import choose_shard
from crowdcount.streamer.cluster.shard import CONFIG_KEY, shard_actor, shard_config
from crowdcount.streamer.config import (
    ClusterConfig,
    Config,
    FloorConfig,
    StreamConfig,
    check_zones_on_floor,
)
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.gathering import GatheringMap
from crowdcount.streamer.integrations import FLOOR_KEY, StreamFloor, rules_from_config
from crowdcount.streamer.metrics import Metrics
from crowdcount.streamer.rtc import OfferError, PeerLimitReached, UnknownStream, validate_offer
from crowdcount.streamer.rules import RuleBook
from crowdcount.streamer.status import StreamState, StreamStatus
from crowdcount.streamer.store.postgres import (
    FEED_CHANNEL,
    SETTINGS_CHANNEL,
    STREAMS_CHANNEL,
    Listener,
    PostgresStore,
)
from crowdcount.streamer.surface import (
    StreamConflict,
    StreamNotFound,
    find_entry,
    has_history,
    shown_options,
    stream_dict,
)
from crowdcount.streamer.upload import UploadCounter
from crowdcount.streamer.urls import mask_url

log = logging.getLogger(__name__)

#: Seconds between reads of the cameras' status (the shards report every second).
STATUS_S = 0.5
#: Seconds an API process waits for a shard before answering 503.
SHARD_TIMEOUT_S = 20.0


@dataclass(eq=False)
class ClusterEntry:
    """One camera as the cluster's API sees it: its row, the last status its shard
    reported, and its saved zones and per-stream settings, all read in one query (the
    settings are the zones' and the floor calibration's one record; ``options`` is the
    row's definition, whose zones a config-file camera brings). ``url`` may hold
    credentials: ``to_dict`` masks it."""

    id: str
    url: str
    kind: str
    origin: str
    options: dict[str, Any]
    shard: int
    created_at: float
    node: str | None = None
    reported: dict[str, Any] | None = None
    age_s: float | None = None
    outage_after: float = 3.0
    now: float = field(default_factory=time.time)
    saved_zones: list[dict[str, Any]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # its summary (``calibration_summary``)

    def zones(self) -> list[dict[str, Any]]:
        """The zones in force: those saved through the API win over the definition's, as
        ``Service.add_source`` puts them in force on the camera's shard."""
        if self.saved_zones is not None:
            return self.saved_zones
        return list(self.options.get("zones") or [])

    def floor(self) -> dict[str, Any] | None:
        """The floor calibration in force (a saved ``None``: removed on purpose)."""
        if FLOOR_KEY in self.settings:
            return cast(dict[str, Any] | None, self.settings[FLOOR_KEY])
        return cast(dict[str, Any] | None, self.options.get("floor"))

    @property
    def available(self) -> bool:
        return self.age_s is not None and self.age_s <= self.outage_after

    def status(self) -> dict[str, Any]:
        """The shard's last report, or ``unavailable`` when its reports stopped (its node
        died and Ray is restarting it elsewhere, or no node has a free slot)."""
        base = StreamStatus().to_dict()
        if self.reported is not None:
            base.update({k: v for k, v in self.reported.items() if k in base})
        if self.available:
            return base
        if self.age_s is None and self.now - self.created_at < self.outage_after:
            return base  # just added: its shard has not reported it yet
        silent = "has never reported" if self.age_s is None else \
            f"not reporting for {self.age_s:.1f} s"
        base.update(state="unavailable", fps_in=0.0, fps_out=0.0,
                    last_error=f"shard {self.shard} {silent}")
        return base

    def to_dict(self) -> dict[str, Any]:
        options = shown_options(self.options, self.zones(), self.floor())
        return {**stream_dict(self.id, self.url, self.kind, self.origin, options,
                              self.status(), self.calibration),
                "shard": self.shard, "node": self.node}


@dataclass(frozen=True)
class ModelInfo:
    """What ``/api/health`` reports of the model: the shards run it, this process not."""

    name: str


class ClusterAlerts:
    """The ``integrations`` the routes read, and the ``RuleBook``'s target: zones and floor
    calibrations as the cameras' entries read them, the alerts raised now as the shards'
    feed reports them (the API process runs no alert engine), and rules that the shards put
    in force themselves (the store announces every saved change, see ``ShardRuntime``)."""

    def __init__(self, service: ClusterService) -> None:
        self._service = service
        self._active: dict[str, dict[str, Any]] = {}  # rule name -> its raised alert

    def zones(self, stream: str) -> tuple[Zone, ...]:
        entry = self._service.streams.get(stream)
        if entry is None:
            return ()
        return tuple(Zone.from_dict(z) for z in entry.zones())

    def on_feed(self, item: dict[str, Any]) -> None:
        """Follow raises and clears in the live feed."""
        if item.get("type") != "alert" or not isinstance(item.get("rule"), str):
            return
        if item.get("event") == "raised":
            self._active[item["rule"]] = {
                "name": item["rule"], **{k: item.get(k) for k in (
                    "stream", "zone", "above", "below", "for_seconds", "raised_at",
                    "over_since", "peak", "value", "t")}}
        else:
            self._active.pop(item["rule"], None)

    def floor(self, stream_id: str) -> StreamFloor | None:
        """The camera's calibration in force (the shards compute the densities)."""
        entry = self._service.streams.get(stream_id)
        value = None if entry is None else entry.floor()
        if not value:
            return None
        try:
            return StreamFloor(FloorConfig.model_validate(value))
        except ValueError:
            return None

    def active_alerts(self) -> list[dict[str, Any]]:
        return list(self._active.values())

    def is_active(self, name: str) -> bool:
        return name in self._active

    def set_rules(self, rules: Iterable[ThresholdRule]) -> list[AlertEvent]:
        """Nothing to apply here: the shards reload the saved rules when the store
        announces the change, and clear what it ends there."""
        names = {r.name for r in rules}
        for gone in [n for n in self._active if n not in names]:
            del self._active[gone]
        return []


class ShardPeers:
    """The ``peers`` the WebRTC routes call: offers go to the camera's shard (a browser
    camera's, to the shard its new row places it on). Peer ids carry the shard
    (``"<shard>.<id>"``) so a hang-up reaches the same shard from any API process."""

    peer_count = 0  # peers live in the shards

    def __init__(self, service: ClusterService) -> None:
        self._service = service

    async def handle_offer(
        self, sdp: object, type: object, mode: object, stream_id: object = None
    ) -> dict[str, str]:
        validate_offer(sdp, type, mode, stream_id)
        assert isinstance(sdp, str) and isinstance(type, str)
        if mode == "publish":
            return await self._service.publish(sdp, type, stream_id)
        assert isinstance(stream_id, str)
        entry = self._service.streams.get(stream_id)
        if entry is None:
            raise UnknownStream(f"no stream {stream_id!r}")
        answer = await self._service.call_shard(entry.shard, "offer", sdp, type, stream_id)
        return {**answer, "peer_id": f"{entry.shard}.{answer['peer_id']}"}

    async def close_peer(self, peer_id: str, reason: str = "closed by client") -> bool:
        shard, sep, inner = peer_id.partition(".")
        if not sep or not shard.isdigit() or int(shard) >= self._service.cluster.shards:
            return False
        return bool(await self._service.call_shard(int(shard), "close_peer", inner))

    async def close(self) -> None:
        """Nothing to close here: the peers belong to the shards."""


class ClusterService:
    """The routes' service for an API process of a cluster (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        if config.cluster is None:
            raise ValueError("ClusterService needs a [cluster] section")
        self.config = config
        self.cluster: ClusterConfig = config.cluster
        self.max_streams = config.server.max_streams
        try:
            self.store = PostgresStore(self.cluster.database)
        except psycopg.Error as exc:
            raise UserError(f"cannot open database {mask_url(self.cluster.database)}: "
                             f"{' '.join(str(exc).split())}") from None
        self.runtime = ModelInfo(config.model.backend or "default (chosen on each shard)")
        self.model_path = str(config.model.path or "(bundled, on the shards)")
        self.feed = CountFeed()
        self.streams: dict[str, ClusterEntry] = {}
        self.integrations = ClusterAlerts(self)
        self.rules = RuleBook(rules_from_config(config.thresholds), self.store.settings,
                              self.integrations, self._live_zone_names, lambda _events: None)
        # The shards write the grids; this process only reads them (the bucket a shard is
        # still filling reaches the map when it is written, at most a bucket later).
        self.gathering = GatheringMap(self.store.gathering)
        self.peers = ShardPeers(self)
        # Calibrations in force, from the store's settings (re-read when one changes): the
        # jobs run in this process; the camera's shard loads the model from the store.
        self.calibrations: dict[str, dict[str, Any]] = {}
        self.calibration = CalibrationDesk(self.store, grab=self._grab,
                                           apply=self._apply_calibration,
                                           current=self.calibrations.get, shared=True)
        self._calibrations_changed = True
        self.metrics = Metrics(self.statuses, self._gauges, zones=self._zone_names,
                               alerts=self.integrations.active_alerts)
        self.uploads = UploadCounter.from_config(config.model)
        self.started_at = time.monotonic()
        self._shards: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._rules_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Listener | None = None
        self._closed = False

    # -- views -------------------------------------------------------------------------------

    def statuses(self) -> dict[str, StreamStatus]:
        """The shards' reports as ``StreamStatus`` for the metrics (a report carries the
        sum of the drops; ``unavailable`` counts as not up)."""
        out = {}
        for sid, entry in self.streams.items():
            st = entry.status()
            state = st["state"]
            known = {k: st[k] for k in ("fps_in", "fps_out", "frames_in", "frames_out",
                                        "reconnects", "last_error", "last_count", "decode",
                                        "keyframe_interval", "decode_note", "frames_decoded",
                                        "decode_seconds") if k in st}
            out[sid] = StreamStatus(
                state=StreamState(state) if state in StreamState.__members__.values()
                else StreamState.FAILED,
                source_dropped=int(st.get("dropped") or 0), **known)
        return out

    def _gauges(self) -> dict[str, float]:
        store = self.store.stats()
        return {
            "streams": float(len(self.streams)),
            "streams_unavailable": float(sum(not e.available for e in self.streams.values())),
            "rtc_peers": 0.0,
            "store_pending_rows": float(store["pending"]),
            "store_dropped_rows": float(store["dropped"]),
            "feed_dropped_items": float(self.feed.dropped),
        }

    def _zone_names(self, stream_id: str) -> list[str]:
        return [z.name for z in self.integrations.zones(stream_id)]

    def _live_zone_names(self, stream_id: str) -> list[str] | None:
        return self._zone_names(stream_id) if stream_id in self.streams else None

    def get(self, stream_id: str) -> ClusterEntry:
        return find_entry(self.streams, stream_id)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    # -- shards ------------------------------------------------------------------------------

    def shard(self, index: int) -> Any:
        """The actor handle of shard ``index`` (created on first use if it does not exist)."""
        handle = self._shards.get(index)
        if handle is None:
            handle = shard_actor(index, self.cluster.database, self.cluster.namespace)
            self._shards[index] = handle
        return handle

    async def call_shard(self, index: int, method: str, *args: Any,
                         timeout: float = SHARD_TIMEOUT_S) -> Any:
        """Call a shard; its own errors come back as raised, an unreachable shard (its node
        died and it is restarting) as ``PeerLimitReached`` (HTTP 503)."""
        import ray

        try:
            ref = getattr(self.shard(index), method).remote(*args)
            return await asyncio.wait_for(ref, timeout)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, OfferError | UnknownStream | PeerLimitReached | StreamConflict):
                raise type(cause)(str(cause)) from None
            raise
        except (TimeoutError, ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError
                ) as exc:
            raise PeerLimitReached(
                f"shard {index} is unavailable ({type(exc).__name__}); retry shortly"
            ) from None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Ray, ``open``, then make sure every shard exists."""
        import ray

        if not ray.is_initialized():
            await asyncio.to_thread(ray.init, address=self.cluster.address,
                                    namespace=self.cluster.namespace, log_to_driver=False,
                                    logging_level=logging.WARNING)
        await self.open()
        for index in range(self.cluster.shards):
            self.shard(index)

    async def open(self) -> None:
        """All of ``start`` but Ray: publish the shards' settings, register the config
        file's cameras, load the rules, then follow the database. What the API serves from
        the database (cameras, settings, history, the gathering map) needs no more; tests
        run it so, with a shard in their own process (``ShardRuntime``)."""
        self._loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
        await asyncio.to_thread(self.store.cluster.set_setting, CONFIG_KEY,
                                shard_config(self.config))
        await self.rules.load()
        for stream in self.config.streams:
            await self._register_config(stream)
        self._start_listener()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._follow()))

    def _start_listener(self) -> None:
        """Follow the database's announcements: live feed items go to the feed, camera
        changes and settings changes (rules, zones, floor calibrations) wake ``_follow``; a
        (re)opened connection re-reads both."""
        assert self._loop is not None

        def deliver(channel: str, payload: str) -> None:
            if channel == STREAMS_CHANNEL:
                self._changed.set()
            elif channel == SETTINGS_CHANNEL:  # rules, or a camera's zones or settings
                if payload == "rules":
                    self._rules_changed.set()
                elif payload.startswith(f"setting:{CALIBRATION_KEY}:"):
                    self._calibrations_changed = True
                self._changed.set()
            else:
                try:
                    item = json.loads(payload)
                except ValueError:
                    return
                sid = item.get("stream_id") or item.get("stream")
                if isinstance(sid, str):
                    self.integrations.on_feed(item)
                    self.feed.publish(sid, item)

        def caught_up() -> None:
            self._rules_changed.set()
            self._calibrations_changed = True
            self._changed.set()

        self._listener = Listener(self.cluster.database,
                                  (FEED_CHANNEL, STREAMS_CHANNEL, SETTINGS_CHANNEL),
                                  self._loop, deliver, caught_up, name="cluster-listen")

    async def _follow(self) -> None:
        """Re-read at once when a camera or a rule changes, and every ``STATUS_S`` for the
        cameras' status."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), STATUS_S)
            self._changed.clear()
            try:
                if self._rules_changed.is_set():
                    self._rules_changed.clear()
                    await self.rules.load()
                await self.refresh()
            except Exception as exc:
                log.error("event=refresh_failed error=%r", str(exc).strip())

    async def refresh(self) -> None:
        """Re-read the cameras and their status (one query), and the calibrations when
        one changed."""
        if self._calibrations_changed:
            self._calibrations_changed = False
            saved = await asyncio.to_thread(self.store.settings.stream_settings,
                                            CALIBRATION_KEY)
            self.calibrations.clear()  # the same dict: the desk looks it up
            self.calibrations.update(saved)
        rows = await asyncio.to_thread(self.store.cluster.streams_with_status)
        now = time.time()
        self.streams = {
            r["id"]: ClusterEntry(
                r["id"], r["url"], r["kind"], r["origin"], r["options"], r["shard"],
                r["created_at"], r["node"], r["status"], r["status_age_s"],
                self.cluster.outage_after, now, r["zones"], r["settings"],
                calibration_summary(self.calibrations.get(r["id"])))
            for r in rows
        }

    # -- cameras -----------------------------------------------------------------------------

    @staticmethod
    def _options(stream: StreamConfig) -> dict[str, Any]:
        """A camera's row options: its definition (a config-file camera's zones and floor
        calibration included; an API camera's body has neither)."""
        return stream.model_dump(mode="json", exclude={"name", "url"}, exclude_defaults=True)

    async def _register_config(self, stream: StreamConfig) -> None:
        """A config-file camera: saved (or updated in place) on the least loaded shard."""
        outcome = await asyncio.to_thread(
            self.store.streams.register, stream.name, stream.url, stream.kind,
            self._options(stream), origin="config", shards=self.cluster.shards,
            place=choose_shard, limit=None)
        if outcome == "name_taken":
            log.warning("event=config_stream_shadowed stream=%s (a camera of that name was "
                        "added through the API; remove it there to use the config's)",
                        stream.name)

    async def add_stream(
        self, stream: StreamConfig, *, origin: str = "api", persist: bool = True
    ) -> ClusterEntry:
        """Place and save a camera in one transaction (the name must be free and the
        cluster under ``max_streams``); its shard hears of it by NOTIFY. Raises
        ``StreamConflict``."""
        if self._closed:
            raise StreamConflict.shutting_down()
        outcome = await asyncio.to_thread(
            self.store.streams.register, stream.name, stream.url, stream.kind,
            self._options(stream), origin=origin, shards=self.cluster.shards,
            place=choose_shard, limit=self.max_streams)
        if outcome == "name_taken":
            raise StreamConflict.name_taken(stream.name)
        if outcome == "limit_reached":
            raise StreamConflict.limit_reached(self.max_streams)
        await self.refresh()
        return self.get(stream.name)

    async def publish(self, sdp: str, type: str, stream_id: object) -> dict[str, str]:
        """A browser camera: its row is saved first (one transaction: the name free, the
        cluster under ``max_streams``), placed on a shard, and the offer is answered by that
        shard, which runs the camera for as long as its peer and then removes the row."""
        if self._closed:
            raise StreamConflict.shutting_down()
        sid = stream_id if isinstance(stream_id, str) else f"webrtc-{secrets.token_hex(4)}"
        outcome = await asyncio.to_thread(
            self.store.streams.register, sid, "webrtc", "webrtc", {}, origin="webrtc",
            shards=self.cluster.shards, place=choose_shard, limit=self.max_streams)
        if outcome == "name_taken":
            raise OfferError(f"stream_id {sid!r} is already in use")
        if outcome == "limit_reached":
            raise StreamConflict.limit_reached(self.max_streams)
        shard = await asyncio.to_thread(self.store.streams.shard_of, sid)
        assert shard is not None
        try:
            answer = await self.call_shard(shard, "offer", sdp, type, sid, "publish")
        except BaseException:
            await asyncio.to_thread(self.store.streams.delete, sid)
            raise
        await self.refresh()
        return {**answer, "peer_id": f"{shard}.{answer['peer_id']}"}

    async def remove_stream(self, stream_id: str) -> None:
        """An API camera (its row, zones and floor calibration go; its shard stops it) or a
        browser camera (its row goes; its shard hangs up the peer)."""
        entry = self.get(stream_id)
        if entry.origin not in ("api", "webrtc"):
            raise StreamConflict.not_editable(stream_id, entry.origin, "remove")
        await asyncio.to_thread(self.store.streams.delete, stream_id)
        if entry.origin == "api":  # a browser camera's zones stay for its return
            await asyncio.to_thread(self.store.settings.delete_zones, stream_id)
            await asyncio.to_thread(self.store.settings.delete_stream_setting, stream_id,
                                    FLOOR_KEY)
            await self.calibration.forget(stream_id)
        await self.refresh()

    async def set_zones(self, stream_id: str, zones: Sequence[Zone]) -> None:
        """Save a camera's zones in the settings, their one record: its shard hears of it
        by NOTIFY and puts them in force, and this process reads them back. Raises
        ``StreamNotFound`` and ``ValueError`` (duplicate names)."""
        self.get(stream_id)
        check_unique_names(z.name for z in zones)
        await asyncio.to_thread(self.store.settings.save_zones, stream_id,
                                [z.to_dict() for z in zones])
        await self.refresh()

    async def set_floor(self, stream_id: str, floor: FloorConfig | None) -> None:
        """Save a camera's floor calibration in the settings, as its zones are. Raises
        ``FloorError`` (a zone off the floor)."""
        self.get(stream_id)
        value = None if floor is None else floor.model_dump(mode="json", exclude_defaults=True)
        if floor is not None:
            check_zones_on_floor(floor.build(), self.integrations.zones(stream_id))
        await asyncio.to_thread(self.store.settings.save_stream_setting, stream_id, FLOOR_KEY,
                                value)
        await self.refresh()

    async def replace_stream(self, stream: StreamConfig) -> ClusterEntry:
        """Edit an API camera (url or options) in place: same id, same shard, zones and
        floor calibration kept (they are the settings', not the row's); its shard restarts
        it when the row changes."""
        entry = self.get(stream.name)
        if entry.origin != "api":
            raise StreamConflict.not_editable(stream.name, entry.origin, "edit")
        options = self._options(stream)
        if not await asyncio.to_thread(self.store.streams.update, entry.id, stream.url,
                                       stream.kind, options):
            raise StreamNotFound(f"no stream {stream.name!r}")
        await self.refresh()
        return self.get(stream.name)

    async def has_history(self, stream_id: str) -> bool:
        return await has_history(self.store, stream_id)

    # -- calibration -------------------------------------------------------------------------

    async def _grab(self, stream_id: str, back: int) -> Captured:
        """A recent frame of the camera, from the shard that runs it."""
        entry = self.get(stream_id)
        captured: Captured = await self.call_shard(entry.shard, "grab", stream_id, back)
        return captured

    async def _apply_calibration(self, stream_id: str, value: dict[str, Any] | None) -> None:
        """Save (``None``: delete) the camera's calibration in the settings; their NOTIFY
        makes the owning shard load the model from the store (and every API process
        re-read the calibrations). A shard that starts later reads them itself."""
        if value is None:
            await asyncio.to_thread(self.store.settings.delete_stream_setting, stream_id,
                                    CALIBRATION_KEY)
            self.calibrations.pop(stream_id, None)
        else:
            await asyncio.to_thread(self.store.settings.save_stream_setting, stream_id,
                                    CALIBRATION_KEY, value)
            self.calibrations[stream_id] = value
        entry = self.streams.get(stream_id)
        if entry is not None:
            entry.calibration = calibration_summary(self.calibrations.get(stream_id))

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self._closed = True
        self.feed.close()

    async def close(self) -> None:
        """Stop following the database; the shards keep running (they belong to the
        cluster, not to this process)."""
        await self.shutdown()
        await self.calibration.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        await asyncio.to_thread(self.gathering.close)
        await asyncio.to_thread(self.store.close)
        await self.uploads.close()
