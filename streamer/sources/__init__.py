"""Frame sources: one module each, all behind :class:`streamer.sources.base.Source`."""
