"""One shard: a Ray actor that runs today's pipeline for the cameras assigned to it.

The actor's state is rebuilt from PostgreSQL, never handed over: its constructor reads the
cluster settings (model, alert rules, notifiers) and its cameras, so when Ray restarts it on
another node after a node dies, it simply resumes them there. The only thing lost is what
was in memory on the dead node: rows not yet committed (at most one flush interval) and the
frames of the outage itself.

Why the pipeline runs on an event loop of its own, in a thread: the ``Service`` (sources,
batcher, inference worker, sinks, aiortc peers) must start in the constructor, so that a
restarted shard resumes its cameras without anyone calling it, and Ray's async actors give
the constructor no running loop. Actor methods are thin ``async`` bridges to that loop.

Status and the live feed leave the shard through PostgreSQL: every ``HEARTBEAT_S`` it
upserts the status of each of its cameras (the API reports a camera whose status stops
coming as unavailable), and every count and alert item of its feed is sent with NOTIFY to
whichever API processes are listening. Alerts, webhooks and MQTT are sent by this shard
only, since only it sees the camera's results. Counts, alerts and the gathering grids are
written to the cluster's store by the shard's ``Service`` as on a single box.

What the API processes change reaches the shard one way: the NOTIFY the store sends in the
change's transaction (cameras on ``STREAMS_CHANNEL``; rules, zones and floor calibrations
on ``SETTINGS_CHANNEL``, read from the settings, their one record, as on a single box). A
shard that was not listening (starting, or its connection lost) re-reads everything when
it listens again, so nothing needs a periodic resync. The shard never writes the camera
registry (``Service(owns_registry=False)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from crowdcount.model.bundled import default_model
from crowdcount.model.runtime import Runtime
from crowdcount.streamer.calibration import CALIBRATION_KEY, Captured
from crowdcount.streamer.config import Config, StreamConfig, parse_config
from crowdcount.streamer.service import Service, StreamEntry, make_source
from crowdcount.streamer.sources.base import Source
from crowdcount.streamer.store.postgres import (
    FEED_CHANNEL,
    SETTINGS_CHANNEL,
    STREAMS_CHANNEL,
    Listener,
    PostgresStore,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between status reports; the API's ``cluster.outage_after`` must be a few of them.
HEARTBEAT_S = 1.0
#: Seconds between writes of each camera's gathering minute while it fills: the API
#: processes answer for the map from the store, at most this much behind.
GATHERING_OPEN_S = 2.0
#: Setting that holds the shards' configuration (written by the API processes).
CONFIG_KEY = "shard_config"


def stream_config(saved: Mapping[str, Any]) -> StreamConfig:
    """The ``StreamConfig`` of a camera row (its options are ``StreamConfig`` fields)."""
    return StreamConfig.model_validate({**saved.get("options", {}), "name": saved["id"],
                                        "url": saved["url"]})


def restrict_ice(addresses: tuple[str, ...]) -> None:
    """Offer viewers only these host addresses (the node's address browsers can reach);
    aioice otherwise offers every interface of the node."""
    import aioice.ice

    wanted = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in wanted if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class ShardRuntime:
    """The shard's pipeline and its reports; lives on the shard's own event loop."""

    def __init__(self, index: int, dsn: str, node: str, *,
                 sources: Callable[[StreamConfig, int | None], Source] = make_source) -> None:
        self.index = index
        self.dsn = dsn
        self.node = node
        self._sources = sources  # ``Service``'s (tests run a shard with synthetic cameras)
        self.store: PostgresStore | None = None
        self.service: Service | None = None
        self.failures: dict[str, str] = {}  # camera -> why it could not be started
        # What each camera was started with: its row's url, options and creation time (a
        # camera removed and added again under its name is a new camera: restarted clean).
        self._rows: dict[str, tuple[str, dict[str, Any], float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect (retrying until PostgreSQL answers), load the settings and the model,
        start the pipeline and this shard's cameras, then report."""
        delay = 0.5
        while True:
            try:
                self.store = await asyncio.to_thread(
                    PostgresStore, self.dsn, shard=self.index, flush_interval=0.25)
                break
            except Exception as exc:
                log.error("event=shard_db_unavailable shard=%d error=%r", self.index, str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        store = self.store
        settings = await asyncio.to_thread(store.cluster.get_setting, CONFIG_KEY, {})
        config = parse_config(settings.get("config", {}), "cluster settings")
        if settings.get("ice_addresses"):
            restrict_ice(tuple(settings["ice_addresses"]))
        runtime = await asyncio.to_thread(Runtime.open, config.model.path, config.model.backend,
                                          threads=config.model.threads)
        model_path = str(config.model.path or default_model(config.model.backend))
        # A browser camera's row is the one registry entry a shard removes: its peer lives
        # here, so only this shard sees it hang up (and rows left by a previous life of this
        # shard are stale: their peers died with it).
        for saved in await asyncio.to_thread(store.streams.all):
            if saved.get("origin") == "webrtc":
                await asyncio.to_thread(store.streams.delete, saved["id"])
        # Calibrated models are written from the store where this shard runs (after a
        # failover, on the new node).
        model_dir = Path(tempfile.gettempdir()) / f"crowdcount-shard-{self.index}-models"
        self.service = Service(config, runtime, model_path=model_path, store=store,
                               owns_registry=False, on_dropped=self._dropped,
                               sources=self._sources, gathering_open_every=GATHERING_OPEN_S,
                               model_dir=model_dir)
        await self.service.start_pipeline()
        await self.sync()
        self._tasks = [asyncio.create_task(self._heartbeat()),
                       asyncio.create_task(self._forward_feed()),
                       asyncio.create_task(self._follow_streams())]
        log.info("event=shard_started shard=%d node=%s streams=%d", self.index, self.node,
                 len(self.service.streams))

    async def _dropped(self, entry: StreamEntry) -> None:
        if entry.origin == "webrtc" and self.store is not None:
            await asyncio.to_thread(self.store.streams.delete, entry.id)

    def _require(self) -> tuple[Service, PostgresStore]:
        if self.service is None or self.store is None:
            raise RuntimeError(f"shard {self.index} is still starting")
        return self.service, self.store

    async def sync(self) -> list[str]:
        """Make the running cameras match this shard's rows: start new ones, stop removed
        ones, restart edited ones. Returns the cameras running afterwards."""
        svc, store = self._require()
        async with self._sync_lock:
            saved = {s["id"]: s for s in await asyncio.to_thread(store.streams.all)}
            for sid in [s for s in svc.streams if s not in saved]:
                self._rows.pop(sid, None)
                with contextlib.suppress(Exception):
                    await svc.remove_stream(sid)
            for sid, row in saved.items():
                if row.get("origin") == "webrtc":
                    continue  # a browser camera: its peer starts and ends it (``publish``)
                entry = svc.streams.get(sid)
                started = (row["url"], dict(row.get("options") or {}), row["created_at"])
                if entry is not None:
                    # Edited (a config camera's definition, zones included, counts) or added
                    # anew: restart it.
                    if self._rows.get(sid) != started:
                        await svc.replace_stream(stream_config(row))
                        self._rows[sid] = started
                    continue
                try:
                    await svc.add_stream(stream_config(row), origin="api")
                    self._rows[sid] = started
                    self.failures.pop(sid, None)
                except Exception as exc:
                    message = " ".join(str(exc).split()) or type(exc).__name__
                    if self.failures.get(sid) != message:
                        log.error("event=camera_start_failed shard=%d stream=%s error=%r",
                                  self.index, sid, message)
                    self.failures[sid] = message
            for sid in [s for s in self.failures if s not in saved]:
                del self.failures[sid]
            return sorted(svc.streams)

    def statuses(self) -> dict[str, dict[str, Any]]:
        svc, _ = self._require()
        out = {sid: e.source.status.to_dict() for sid, e in svc.streams.items()}
        for sid, message in self.failures.items():
            out[sid] = {"state": "failed", "last_error": message}
        return out

    async def _heartbeat(self) -> None:
        _, store = self._require()
        while True:
            try:
                await asyncio.to_thread(store.cluster.report_status, self.node, self.statuses())
            except Exception as exc:
                log.error("event=shard_report_failed shard=%d error=%r", self.index, str(exc))
            await asyncio.sleep(HEARTBEAT_S)

    async def _forward_feed(self) -> None:
        """Every live item (counts, alerts) to the API processes, by NOTIFY. A slow
        database costs only the oldest items of the bounded subscription, never the
        pipeline."""
        svc, store = self._require()
        async with svc.feed.subscribe(None) as sub:
            async for item in sub:
                try:
                    await asyncio.to_thread(store.cluster.notify, FEED_CHANNEL, item)
                except Exception as exc:
                    log.error("event=feed_notify_failed shard=%d error=%r", self.index, str(exc))

    async def _follow_streams(self) -> None:
        """Re-sync whenever any process changes a camera row, reload the rules when they
        change and a camera's zones or floor calibration when they are saved (NOTIFY from
        the store: ``rules``, ``zones:<id>``, ``setting:<key>:<id>``), and all of it
        whenever the listening connection is (re)opened: what was announced while it was
        down was missed."""
        svc, _ = self._require()
        changed: asyncio.Queue[str] = asyncio.Queue()

        def note(channel: str, payload: str) -> None:
            changed.put_nowait("streams" if channel == STREAMS_CHANNEL else payload)

        listener = Listener(self.dsn, (STREAMS_CHANNEL, SETTINGS_CHANNEL),
                            asyncio.get_running_loop(), note, lambda: changed.put_nowait("*"),
                            name=f"shard-{self.index}-listen")
        try:
            while True:
                what = {await changed.get()}
                while not changed.empty():  # one sync for a burst of changes
                    what.add(changed.get_nowait())
                try:
                    if what & {"*", "rules"}:
                        await svc.rules.load()
                    if what & {"*", "streams"}:
                        await self.sync()
                    saved = set(svc.streams) if "*" in what else {
                        w.rpartition(":")[2] for w in what if w.startswith(("zones:", "setting:"))}
                    if saved:
                        async with self._sync_lock:  # not while a camera is being added
                            await svc.apply_saved(saved)
                    await self._reload_calibrations(svc, what)
                except Exception as exc:
                    log.error("event=shard_sync_failed shard=%d error=%r", self.index,
                              str(exc))
        finally:
            await asyncio.to_thread(listener.stop)

    @staticmethod
    async def _reload_calibrations(svc: Service, what: set[str]) -> None:
        """Put in force the calibrations another process changed (``setting:calibration:
        <camera>``), or all of them after the connection was (re)opened."""
        prefix = f"setting:{CALIBRATION_KEY}:"
        if "*" in what:
            changed = set(svc.streams)
        else:
            changed = {w.removeprefix(prefix) for w in what if w.startswith(prefix)}
        for sid in sorted(changed & set(svc.streams)):
            await svc.reload_calibration(sid)

    async def grab(self, stream_id: str, back: int) -> Captured:
        """One of a camera's recent frames, for calibration (the API process saves it)."""
        svc, _ = self._require()
        return await svc.grab(stream_id, back)

    async def offer(self, sdp: str, type: str, stream_id: str, mode: str = "view"
                    ) -> dict[str, str]:
        """A viewer's offer, or a browser camera's (``publish``: the API process saved its
        row on this shard first)."""
        svc, _ = self._require()
        return await svc.peers.handle_offer(sdp, type, mode, stream_id)

    async def close_peer(self, peer_id: str) -> bool:
        svc, _ = self._require()
        return await svc.peers.close_peer(peer_id, "closed by client")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.service is not None:
            await self.service.close()  # closes the store too


class Shard:
    """The actor body (``ray.remote`` is applied in ``ShardHandle``/``shard_actor``)."""

    def __init__(self, index: int, dsn: str) -> None:
        import ray

        self.index = index
        self.node = ray.get_runtime_context().get_node_id()
        self.started_at = time.time()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name=f"shard-{index}")
        self._thread.start()
        self.runtime = ShardRuntime(index, dsn, self.node)
        self._started = asyncio.run_coroutine_threadsafe(self.runtime.start(), self.loop)

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def ready(self) -> dict[str, Any]:
        """Waits until the shard runs its cameras; where it runs and which they are."""
        await asyncio.wrap_future(self._started)
        return {"shard": self.index, "node": self.node, "started_at": self.started_at,
                "streams": await self._on_loop(self.runtime.sync())}

    async def sync(self) -> list[str]:
        await asyncio.wrap_future(self._started)
        return await self._on_loop(self.runtime.sync())

    async def offer(self, sdp: str, type: str, stream_id: str, mode: str = "view"
                    ) -> dict[str, str]:
        await asyncio.wrap_future(self._started)
        return await self._on_loop(self.runtime.offer(sdp, type, stream_id, mode))

    async def close_peer(self, peer_id: str) -> bool:
        await asyncio.wrap_future(self._started)
        return await self._on_loop(self.runtime.close_peer(peer_id))

    async def grab(self, stream_id: str, back: int) -> Captured:
        await asyncio.wrap_future(self._started)
        return await self._on_loop(self.runtime.grab(stream_id, back))

    async def stop(self) -> None:
        """Stop every camera and commit what is queued (before ``ray.kill``)."""
        await self._on_loop(self.runtime.close())


def shard_actor(index: int, dsn: str, namespace: str) -> Any:
    """The handle of shard ``index``, creating the actor if it does not exist yet."""
    import ray

    from crowdcount.streamer.cluster.placement import actor_options

    return ray.remote(Shard).options(**actor_options(index, namespace)).remote(index, dsn)


def shard_config(config: Config) -> dict[str, Any]:
    """What the shards need of the operator's config: the model, alert rules, notifiers,
    viewer limits, history retention and ICE addresses (not the API's host, token or
    streams)."""
    data = config.model_dump(mode="json", exclude_none=True,
                             include={"model", "thresholds", "sinks"})
    server = config.server
    data["server"] = {"max_streams": 4096,
                      "max_viewers_per_stream": server.max_viewers_per_stream}
    if server.retention_days is not None:  # every shard purges (the same old rows)
        data["server"]["retention_days"] = server.retention_days
    # Not the [cluster] table: its database URL may hold a password, and shards get theirs
    # from Ray (the actor's arguments).
    ice = list(config.cluster.ice_addresses) if config.cluster is not None else []
    return {"config": data, "ice_addresses": ice}
