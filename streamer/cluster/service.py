"""The API process of a cluster: the routes' service, with the cameras elsewhere.

``ClusterService`` answers the same calls the routes make on the single-process ``Service``
(``streams``, ``get``, ``add_stream``, ``remove_stream``, ``set_zones``, ``store``, ``feed``,
``peers``, ``metrics``...), so the HTTP API and the page are the same, but it holds no
camera: the list of cameras and their status come from PostgreSQL (refreshed every
``REFRESH_S`` and at once when any API process changes it, via NOTIFY), live counts and
alerts arrive by LISTEN, history is read from SQL, and a viewer's WebRTC offer is forwarded
to the shard that owns the camera, whose node then sends the media.

Any number of these processes can run side by side; they share nothing but the database
and the Ray cluster, so one can be killed, restarted or added at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from crowdcount.model.errors import UserError
from crowdcount.model.zones import Zone
from crowdcount.streamer.cluster.placement import choose_shard
from crowdcount.streamer.cluster.shard import CONFIG_KEY, shard_actor, shard_config
from crowdcount.streamer.config import ClusterConfig, Config, StreamConfig
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.metrics import Metrics
from crowdcount.streamer.rtc import OfferError, PeerLimitReached, UnknownStream, validate_offer
from crowdcount.streamer.rules import RuleConflict, RuleNotFound
from crowdcount.streamer.service import StreamConflict, find_entry, stream_dict
from crowdcount.streamer.status import StreamState, StreamStatus
from crowdcount.streamer.store.postgres import FEED_CHANNEL, STREAMS_CHANNEL, PostgresStore
from crowdcount.streamer.upload import UploadCounter
from crowdcount.streamer.urls import mask_url

log = logging.getLogger(__name__)

#: Seconds between refreshes of the camera list and status from PostgreSQL.
REFRESH_S = 0.5
#: Seconds an API process waits for a shard before answering 503.
SHARD_TIMEOUT_S = 20.0


@dataclass(eq=False)
class ClusterEntry:
    """One camera as the cluster's API sees it: its row plus the last status its shard
    reported. ``url`` may hold credentials: ``to_dict`` masks it."""

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
        silent = "never" if self.age_s is None else f"for {self.age_s:.1f} s"
        base.update(state="unavailable", fps_in=0.0, fps_out=0.0,
                    last_error=f"shard {self.shard} not reporting {silent}")
        return base

    def to_dict(self) -> dict[str, Any]:
        return {**stream_dict(self.id, self.url, self.kind, self.origin, self.options,
                              self.status()),
                "shard": self.shard, "node": self.node}


@dataclass(frozen=True)
class ModelInfo:
    """What ``/api/health`` reports of the model: the shards run it, this process not."""

    name: str


class ClusterZones:
    """The ``integrations`` view the zone routes read: zones from the cameras' rows.
    Active alerts live in the shards; the alert list comes from the store."""

    def __init__(self, service: ClusterService) -> None:
        self._service = service

    def zones(self, stream_id: str) -> tuple[Zone, ...]:
        entry = self._service.streams.get(stream_id)
        if entry is None:
            return ()
        return tuple(Zone(z["name"], z["points"]) for z in entry.options.get("zones") or ())

    def active_alerts(self) -> list[dict[str, Any]]:
        return []


class ClusterRules:
    """The ``rules`` the alert-rule routes read. On a cluster the rules are the config
    file's ``[[thresholds]]`` (the shards load them from the cluster settings); editing
    them through the API is refused (409) rather than applied to one process only."""

    def __init__(self, config: Config) -> None:
        self._rules = {r.name: r for r in config.thresholds}

    def list(self, stream: str | None = None) -> list[dict[str, Any]]:
        out = [self.describe(r) for r in self._rules.values()
               if stream is None or r.stream == stream]
        return sorted(out, key=lambda r: (r["stream"], r["name"]))

    def get(self, name: str) -> dict[str, Any]:
        rule = self._rules.get(name)
        if rule is None:
            raise RuleNotFound(f"no alert rule {name!r}")
        return self.describe(rule)

    @staticmethod
    def describe(rule: Any) -> dict[str, Any]:
        return {**rule.model_dump(mode="json"), "origin": "config", "active": None}

    async def put(self, rule: Any, *, create: bool) -> dict[str, Any]:
        raise RuleConflict("alert rules of a cluster come from the config file's "
                           "[[thresholds]]; edit them there and restart the API processes")

    async def delete(self, name: str) -> None:
        if name not in self._rules:
            raise RuleNotFound(f"no alert rule {name!r}")
        await self.put(None, create=False)


class ShardPeers:
    """The ``peers`` the WebRTC routes call: offers go to the camera's shard. Peer ids
    carry the shard (``"<shard>.<id>"``) so a hang-up reaches the same shard from any API
    process."""

    peer_count = 0  # peers live in the shards

    def __init__(self, service: ClusterService) -> None:
        self._service = service

    async def handle_offer(
        self, sdp: object, type: object, mode: object, stream_id: object = None
    ) -> dict[str, str]:
        validate_offer(sdp, type, mode, stream_id)
        if mode != "view":
            raise OfferError("a cluster serves viewers only: publish a browser camera to a "
                             "single-process server")
        assert isinstance(stream_id, str) and isinstance(sdp, str) and isinstance(type, str)
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
        self.integrations = ClusterZones(self)
        self.rules = ClusterRules(config)
        self.peers = ShardPeers(self)
        self.metrics = Metrics(self.statuses, self._gauges, zones=self._zone_names,
                               alerts=self.integrations.active_alerts)
        self.uploads = UploadCounter.from_config(config.model)
        self.started_at = time.monotonic()
        self._shards: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
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

    async def _sync_shard(self, index: int) -> None:
        """Tell a shard its cameras changed; if it is down, it reads them when it is back."""
        try:
            await self.call_shard(index, "sync", timeout=10.0)
        except Exception as exc:
            log.warning("event=shard_sync_failed shard=%d error=%r", index, str(exc))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Ray, publish the shards' settings, register the config file's cameras,
        make sure every shard exists, then follow the database."""
        import ray

        self._loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
        if not ray.is_initialized():
            await asyncio.to_thread(ray.init, address=self.cluster.address,
                                    namespace=self.cluster.namespace, log_to_driver=False,
                                    logging_level=logging.WARNING)
        await asyncio.to_thread(self.store.cluster.set_setting, CONFIG_KEY,
                                shard_config(self.config))
        for stream in self.config.streams:
            await self._register(stream, origin="config")
        for index in range(self.cluster.shards):
            self.shard(index)
        self._start_listener()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._follow()))
        for index in range(self.cluster.shards):
            self._tasks.append(asyncio.create_task(self._sync_shard(index)))

    def _start_listener(self) -> None:
        """LISTEN on a thread of its own (psycopg's blocking ``notifies``); each item is
        handed to the loop. A lost connection is re-opened."""
        loop = self._loop
        assert loop is not None

        def deliver(channel: str, payload: str) -> None:
            if channel == STREAMS_CHANNEL:
                self._changed.set()
                return
            import json

            try:
                item = json.loads(payload)
            except ValueError:
                return
            sid = item.get("stream_id") or item.get("stream")
            if isinstance(sid, str):
                self.feed.publish(sid, item)

        def run() -> None:
            while not self._closed:
                conn = None
                try:
                    conn = psycopg.connect(self.cluster.database, autocommit=True)
                    self._listen_conn = conn
                    conn.execute(f"LISTEN {FEED_CHANNEL}")
                    conn.execute(f"LISTEN {STREAMS_CHANNEL}")
                    loop.call_soon_threadsafe(self._changed.set)  # catch up on what we missed
                    while not self._closed:
                        for note in conn.notifies(timeout=0.5):
                            loop.call_soon_threadsafe(deliver, note.channel, note.payload)
                except Exception as exc:
                    if self._closed:
                        return
                    log.error("event=listen_failed error=%r", str(exc).strip())
                    time.sleep(1.0)
                finally:
                    if conn is not None:
                        conn.close()

        self._listener = threading.Thread(target=run, name="cluster-listen", daemon=True)
        self._listener.start()

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REFRESH_S)
            self._changed.clear()
            try:
                await self.refresh()
            except Exception as exc:
                log.error("event=refresh_failed error=%r", str(exc).strip())

    async def refresh(self) -> None:
        """Re-read the cameras and their status (one query)."""
        rows = await asyncio.to_thread(self.store.cluster.streams_with_status)
        now = time.time()
        self.streams = {
            r["id"]: ClusterEntry(
                r["id"], r["url"], r["kind"], r["origin"], r["options"], r["shard"],
                r["created_at"], r["node"], r["status"], r["status_age_s"],
                self.cluster.outage_after, now)
            for r in rows
        }

    # -- cameras -----------------------------------------------------------------------------

    async def _register(self, stream: StreamConfig, *, origin: str) -> int:
        """Save a camera with its shard (the least loaded, for a new one); its shard."""
        options = stream.model_dump(mode="json", exclude={"name", "url"}, exclude_defaults=True)
        shard = await asyncio.to_thread(self.store.streams.shard_of, stream.name)
        if shard is None:
            shard = choose_shard(
                await asyncio.to_thread(self.store.cluster.shard_loads, self.cluster.shards))
        await asyncio.to_thread(self.store.streams.save, stream.name, stream.name, stream.url,
                                stream.kind, options, shard=shard, origin=origin)
        return shard

    async def add_stream(
        self, stream: StreamConfig, *, origin: str = "api", persist: bool = True
    ) -> ClusterEntry:
        """Place and save a camera, then tell its shard. Raises ``StreamConflict``."""
        if self._closed:
            raise StreamConflict("server is shutting down")
        if await asyncio.to_thread(self.store.streams.get, stream.name) is not None:
            raise StreamConflict(f"a stream named {stream.name!r} already exists")
        loads = await asyncio.to_thread(self.store.cluster.shard_loads, self.cluster.shards)
        if sum(loads.values()) >= self.max_streams:
            raise StreamConflict(
                f"stream limit reached: {self.max_streams} streams (server.max_streams)")
        shard = await self._register(stream, origin=origin)
        await self._sync_shard(shard)
        await self.refresh()
        return self.get(stream.name)

    async def remove_stream(self, stream_id: str) -> None:
        entry = self.get(stream_id)
        if entry.origin == "config":
            raise StreamConflict(
                f"stream {stream_id!r} comes from the config file; remove it there and restart")
        await asyncio.to_thread(self.store.streams.delete, stream_id)
        await self._sync_shard(entry.shard)
        await self.refresh()

    async def set_zones(self, stream_id: str, zones: list[Zone]) -> None:
        """Save a camera's zones in its row (any origin: the shards read zones from the
        database); the row's NOTIFY makes its shard apply them."""
        entry = self.get(stream_id)
        if zones:
            entry.options["zones"] = [z.to_dict() for z in zones]
        else:
            entry.options.pop("zones", None)
        await asyncio.to_thread(self.store.streams.save, entry.id, entry.id, entry.url,
                                entry.kind, dict(entry.options), origin=entry.origin)

    async def replace_stream(self, stream: StreamConfig) -> ClusterEntry:
        """Edit an API camera (url or options) in place: same id, same shard, zones kept;
        its shard restarts it when the row changes."""
        entry = self.get(stream.name)
        if entry.origin != "api":
            raise StreamConflict(f"stream {stream.name!r} comes from the config file; edit it "
                                 "there and restart")
        options = stream.model_dump(mode="json", exclude={"name", "url", "zones"},
                                    exclude_defaults=True)
        if entry.options.get("zones"):
            options["zones"] = entry.options["zones"]
        await asyncio.to_thread(self.store.streams.save, entry.id, entry.id, stream.url,
                                stream.kind, options, origin=entry.origin)
        await self._sync_shard(entry.shard)
        await self.refresh()
        return self.get(stream.name)

    async def has_history(self, stream_id: str) -> bool:
        rows = await asyncio.to_thread(self.store.history.counts, stream_id, None, None, None, 1)
        return bool(rows)

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self._closed = True
        self.feed.close()

    async def close(self) -> None:
        """Stop following the database; the shards keep running (they belong to the
        cluster, not to this process)."""
        await self.shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 5.0)
        await asyncio.to_thread(self.store.close)
        await self.uploads.close()
