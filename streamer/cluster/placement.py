"""Which shard a camera goes to, and how a shard is named and placed on the cluster.

Why a fixed number of shards rather than one actor per camera: an actor is a process with
its own model session and inference thread, so batching across cameras (one model call for
several frames) only happens inside a shard, and a few hundred idle processes would cost
more memory than the cameras. Why fixed rather than re-balanced: a camera that moves loses
its smoothing and alert state and its history gets a gap; it moves only when its node dies.

Node capacity is the custom resource ``camera_slots``: each shard takes one, so a node
started with ``--resources='{"camera_slots": 4}'`` runs at most four shards and a head node
without it runs none. ``SPREAD`` places shards on different nodes while there is room.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SLOT_RESOURCE = "camera_slots"


def shard_name(index: int) -> str:
    """The Ray actor name of shard ``index`` (unique within the deployment's namespace)."""
    return f"crowdcount-shard-{index}"


def choose_shard(loads: Mapping[int, int]) -> int:
    """The shard with the fewest cameras (the lowest index on ties), so cameras added one
    by one fill the shards evenly."""
    if not loads:
        raise ValueError("no shards")
    return min(loads, key=lambda i: (loads[i], i))


def actor_options(index: int, namespace: str) -> dict[str, Any]:
    """Ray options of shard ``index``: detached (it outlives the API process that created
    it), restarted forever on another node when its node dies, one camera slot, no CPU
    reservation (decoding and inference use the node's cores, whatever Ray's accounting)."""
    return {
        "name": shard_name(index),
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        # A call caught by a node's death is retried on the restarted shard: every method
        # is idempotent (sync, status) or harmless to repeat (an offer gets a new answer).
        "max_task_retries": 3,
        "num_cpus": 0,
        "resources": {SLOT_RESOURCE: 1},
        "scheduling_strategy": "SPREAD",
        # Calls are answered on the shard's own loop (see shard.py); a few at once suffice.
        "max_concurrency": 32,
    }
