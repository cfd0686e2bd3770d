"""The record sink: smoothing, the durable history and the live feed, from one result, and
the alert log and the feed from one alert.

Why one sink for all of them: they share the smoothed value, and computing it once per
result keeps the store and the feed in agreement (a chart drawn from the history shows the
same numbers the live view showed); alerts likewise reach the stored list and the page
together. Alert items in the feed are marked ``"type": "alert"``; count items have no type.

Every processed frame is stored by default (``store_rate=None``), because the history is
the record of what was observed and the counts API promises one row per processed frame.
A deployment with many fast streams can thin the history with ``store_rate`` rows per
second per stream; the live feed still gets every result.
"""

from __future__ import annotations

import logging

from crowdcount.model.types import Result
from crowdcount.streamer.alerts import AlertEvent
from crowdcount.streamer.feed import CountFeed
from crowdcount.streamer.smoothing import Ema
from crowdcount.streamer.store import AlertLog, CountHistory

log = logging.getLogger(__name__)


class CountSink:
    """Pipeline sink: ``on_result``/``on_alert`` only queue (store) and enqueue (feed),
    never block."""

    def __init__(
        self,
        history: CountHistory,
        feed: CountFeed,
        ema: Ema | None = None,
        store_rate: float | None = None,
        alert_log: AlertLog | None = None,
    ) -> None:
        if store_rate is not None and not store_rate > 0:
            raise ValueError(f"store_rate must be > 0 rows/s or None, got {store_rate!r}")
        self.history = history
        self.alert_log = alert_log
        self.feed = feed
        self.ema = ema if ema is not None else Ema()
        self.store_rate = store_rate
        self._last_stored: dict[str, float] = {}  # stream id -> frame time of the last row

    def on_result(self, result: Result) -> None:
        frame = result.frame
        sid, t = frame.stream_id, frame.captured_at
        smoothed = self.ema.update(sid, result.count, t)
        if self._should_store(sid, t):
            self.history.add(sid, t, result.count, smoothed, result.zones)
        item: dict[str, object] = {
            "stream": sid,
            "t": t,
            "count": result.count,
            "smoothed": smoothed,
        }
        if result.zones:
            item["zones"] = {k: float(v) for k, v in result.zones.items()}
        if result.floor:  # a floor-calibrated stream: each zone's area, people/m2, level
            item["floor"] = {k: v.to_dict() for k, v in result.floor.items()}
        self.feed.publish(sid, item)

    def on_alert(self, event: AlertEvent) -> None:
        if self.alert_log is not None:
            if event.kind == "raised":
                self.alert_log.raised(event.stream, event.zone, event.rule.name,
                                      event.raised_at, event.peak)
            else:
                self.alert_log.cleared(event.stream, event.rule.name, event.raised_at,
                                       event.t, event.peak)
        self.feed.publish(event.stream, {"type": "alert", **event.to_dict()})

    def _should_store(self, stream_id: str, t: float) -> bool:
        if self.store_rate is None:
            return True
        last = self._last_stored.get(stream_id)
        # A clock stepping back (t < last) also stores, so a reset clock cannot mute a stream.
        if last is None or t - last >= 1.0 / self.store_rate or t < last:
            self._last_stored[stream_id] = t
            return True
        return False

    def forget(self, stream_id: str) -> None:
        """Drop a removed stream's smoothing and thinning state (a re-added stream with the
        same id starts fresh instead of blending with an old scene)."""
        self.ema.reset(stream_id)
        self._last_stored.pop(stream_id, None)
