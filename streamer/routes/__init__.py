"""HTTP routes of the service, one module per area; ``streamer.app`` mounts them."""
