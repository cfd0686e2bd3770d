"""The service surface the routes speak: one ``Protocol`` that the single-process
``Service`` and the cluster's ``ClusterService`` both implement, checked by mypy.

Why a protocol rather than a base class: the two services share no state (one runs the
cameras, the other reads them from PostgreSQL and forwards to Ray shards), but the HTTP API
and the page must answer alike on both. Typing the routes against this surface makes the
type checker compare each service with what the routes call, so a method or a field that
one of them lacks is an error here, not a 500 on a cluster. What both answer the same way
is written here once: the stream errors with their messages (409 and 404 texts), the
stream's JSON shape, and whether a stream has history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from crowdcount.model.zones import Zone
from crowdcount.streamer.alerts import ThresholdRule
from crowdcount.streamer.config import Config, FloorConfig, StreamConfig
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.gathering import GatheringMap
from crowdcount.streamer.metrics import Metrics
from crowdcount.streamer.store import Store
from crowdcount.streamer.upload import UploadCounter
from crowdcount.streamer.urls import mask_text, mask_url

if TYPE_CHECKING:
    from crowdcount.streamer.calibration import CalibrationDesk
    from crowdcount.streamer.integrations import StreamFloor

__all__ = [
    "PeersView",
    "RulesView",
    "ServiceSurface",
    "StreamConflict",
    "StreamError",
    "StreamNotFound",
    "StreamView",
    "ZonesView",
    "find_entry",
    "has_history",
    "shown_options",
    "stream_dict",
]


class StreamError(Exception):
    """Base of the stream lifecycle errors; ``str()`` is a one-line message for the API."""


class StreamNotFound(StreamError, LookupError):
    """No live stream with that id (HTTP 404)."""


class StreamConflict(StreamError):
    """The name is taken, the limit is reached, or the stream may not be removed (HTTP 409).
    The class methods are the messages, written once for both services."""

    @classmethod
    def shutting_down(cls) -> StreamConflict:
        return cls("server is shutting down")

    @classmethod
    def name_taken(cls, sid: str) -> StreamConflict:
        return cls(f"a stream named {sid!r} already exists")

    @classmethod
    def limit_reached(cls, max_streams: int) -> StreamConflict:
        return cls(f"stream limit reached: {max_streams} streams (server.max_streams)")

    @classmethod
    def not_editable(cls, sid: str, origin: str, action: str) -> StreamConflict:
        """``action`` is ``"remove"`` or ``"edit"``; config-file and browser streams refuse
        both through the API."""
        if origin == "config":
            return cls(f"stream {sid!r} comes from the config file; {action} it there and "
                       "restart")
        return cls(f"stream {sid!r} is a browser camera")


def stream_dict(
    sid: str, url: str, kind: str, origin: str, options: Mapping[str, Any],
    status: dict[str, Any], calibration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A stream as the API shows it (one shape for both services): its name is its id, and
    the URL is masked (it may hold credentials), in ``last_error`` too (whatever a source
    or a shard put there). ``calibration`` is the summary of the calibration in force
    (``streamer.calibration.calibration_summary``; ``None``: the shared model)."""
    if isinstance(status.get("last_error"), str):
        status = {**status, "last_error": mask_text(status["last_error"])}
    return {"id": sid, "name": sid, "url": mask_url(url), "kind": kind, "origin": origin,
            "options": dict(options), "status": status,
            "calibration": None if calibration is None else dict(calibration)}


def shown_options(
    options: Mapping[str, Any], zones: Sequence[Mapping[str, Any]],
    floor: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A stream's ``options`` as the API shows them: its own settings, with the zones and
    the floor calibration in force (JSON). Those come from the one place that holds them
    (``Integrations`` on a server, the store's settings on a cluster's API process), never
    from a copy in the options: a definition's zones (a config file's) are replaced by the
    ones saved through the API."""
    out = {k: v for k, v in options.items() if k not in ("zones", "floor")}
    if zones:
        out["zones"] = [dict(z) for z in zones]
    if floor:
        out["floor"] = dict(floor)
    return out


E = TypeVar("E")


def find_entry(streams: Mapping[str, E], stream_id: str) -> E:
    """``streams[stream_id]``, or ``StreamNotFound`` (the API's 404)."""
    entry = streams.get(stream_id)
    if entry is None:
        raise StreamNotFound(f"no stream {stream_id!r}")
    return entry


async def has_history(store: Store, stream_id: str) -> bool:
    """Whether the store holds counts for ``stream_id`` (live or removed): raw rows, or the
    per-minute rollup, which outlives them."""
    for step in (None, 60):
        if await asyncio.to_thread(store.history.counts, stream_id, None, None, step, 1):
            return True
    return False


class StreamView(Protocol):
    """One live stream as the routes see it (``url`` may hold credentials: ``to_dict``
    masks it)."""

    @property
    def id(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def origin(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...

    def to_dict(self) -> dict[str, Any]: ...


class ZonesView(Protocol):
    """Each stream's zones in force and the alerts raised now."""

    def zones(self, stream: str) -> tuple[Zone, ...]: ...

    def floor(self, stream: str) -> StreamFloor | None:
        """The stream's floor calibration in force (``None``: uncalibrated)."""
        ...

    def active_alerts(self) -> list[dict[str, Any]]: ...


class RulesView(Protocol):
    """The alert rules (``streamer.rules.RuleBook``)."""

    def list(self, stream: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, name: str) -> dict[str, Any]: ...

    async def put(self, rule: ThresholdRule, *, create: bool) -> dict[str, Any]: ...

    async def delete(self, name: str) -> None: ...


class PeersView(Protocol):
    """WebRTC offers and hang-ups (``streamer.rtc.PeerManager`` or the cluster's
    forwarder)."""

    @property
    def peer_count(self) -> int: ...

    async def handle_offer(
        self, sdp: object, type: object, mode: object, stream_id: object = None
    ) -> dict[str, str]: ...

    async def close_peer(self, peer_id: str, reason: str = "closed by client") -> bool: ...


class RuntimeInfo(Protocol):
    @property
    def name(self) -> str: ...


class ServiceSurface(Protocol):
    """What the routes and the app's lifecycle hooks call on a service."""

    @property
    def config(self) -> Config: ...

    @property
    def runtime(self) -> RuntimeInfo: ...

    @property
    def model_path(self) -> str: ...

    @property
    def store(self) -> Store: ...

    @property
    def feed(self) -> CountFeed: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def uploads(self) -> UploadCounter: ...

    @property
    def integrations(self) -> ZonesView: ...

    @property
    def rules(self) -> RulesView: ...

    @property
    def peers(self) -> PeersView: ...

    @property
    def gathering(self) -> GatheringMap: ...

    @property
    def calibration(self) -> CalibrationDesk:
        """Marked frames and calibration jobs (``streamer.calibration``)."""
        ...

    @property
    def streams(self) -> Mapping[str, StreamView]: ...

    @property
    def uptime_s(self) -> float: ...

    def get(self, stream_id: str) -> StreamView: ...

    async def add_stream(
        self, stream: StreamConfig, *, origin: Literal["api"], persist: bool
    ) -> StreamView:
        """Add (and with ``persist`` save) an API stream; ``StreamConflict`` when it may
        not be added."""
        ...

    async def replace_stream(self, stream: StreamConfig) -> StreamView: ...

    async def remove_stream(self, stream_id: str) -> None: ...

    async def set_zones(self, stream_id: str, zones: Sequence[Zone]) -> None: ...

    async def set_floor(self, stream_id: str, floor: FloorConfig | None) -> None:
        """Replace (``None``: remove) and save a stream's floor calibration; ``FloorError``
        when one of its zones would be off the calibrated floor."""
        ...

    async def has_history(self, stream_id: str) -> bool: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def close(self) -> None: ...
