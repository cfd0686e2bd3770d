"""Cameras sharded over a Ray cluster, with PostgreSQL as the shared store.

``crowdcount serve --cluster ADDRESS --database postgresql://...`` runs a stateless API
process (``service.ClusterService``); the cameras run in shards (``shard.Shard``), named,
detached Ray actors that each run today's pipeline (sources, batcher, inference, zones,
alerts, notifiers) for the cameras ``placement`` assigned to them. Frames never leave the
node that decodes them: only counts (to PostgreSQL), small live-feed items (NOTIFY) and
WebRTC media (straight from the shard's node to the viewer) do.

Importing this package needs the ``cluster`` extra (Ray and psycopg).
"""
