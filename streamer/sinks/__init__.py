"""Where results go: one module per sink, all behind :class:`streamer.sinks.base.Sink`."""

from crowdcount.streamer.sinks.base import Sink

__all__ = ["Sink"]
