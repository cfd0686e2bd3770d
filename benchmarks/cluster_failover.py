"""Failover of a cluster's cameras when a worker node dies (a benchmark, not a test).

    python benchmarks/cluster_failover.py --cameras 4 --nodes 2

Starts a real PostgreSQL (initdb/pg_ctl in a temporary directory) and a real multi-node Ray
cluster on this machine (``ray.cluster_utils``: a head without camera slots and ``--nodes``
worker nodes with ``--slots`` each), one API process (in this process), and ``--cameras``
looping file cameras at ``--fps`` spread over the shards. Once every camera has counted for
``--before`` seconds, the node running shard 0 is killed outright; the script waits until
every camera runs again, lets them count for ``--after`` seconds, then reads the history.

Figures (the last line is one JSON object):

* ``recovery_s``: from the kill to the first row of the slowest moved camera's restarted
  shard.
* ``duplicates``: (stream, t) keys stored more than once (the primary key makes it 0; the
  figure checks it).
* ``rows_lost_outside_outage``: frame slots missing in gaps longer than ``--gap`` seconds
  other than each moved camera's outage (from its shard's last row on the dead node to its
  first on the new one).

Needs the ``cluster`` extra and Debian's ``postgresql`` package, nothing else (no pytest, no
onnx: the cameras run the bundled model, or ``--model``; the servers are started by
``tests/fixtures/local.py``, which imports neither). On a 2-core machine keep the cluster
small: every node is a raylet with its own processes (~0.4 GB each).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def streams_of(client: Any) -> dict[str, Any]:
    async with client.get("/api/streams") as resp:
        return {s["id"]: s for s in (await resp.json())["streams"]}


async def wait_running(client: Any, cameras: list[str], nodes: set[str],
                       timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    while True:
        seen = await streams_of(client)
        if all(c in seen and seen[c]["status"]["state"] == "running" and seen[c]["node"] in nodes
               and seen[c]["status"]["frames_out"] > 0 for c in cameras):
            return seen
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"cameras not running on {sorted(nodes)} after {timeout} s")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import psycopg
    from aiohttp.test_utils import TestClient, TestServer

    from crowdcount.streamer.app import build_app
    from crowdcount.streamer.config import parse_config
    from tests.fixtures.local import PostgresServer, start_cluster, stop_cluster, write_clip

    width, height = (int(v) for v in args.size.split("x"))
    clip = write_clip(tmp / "clip.mp4", width, height, fps=args.fps, seconds=5.0, gop=args.fps)
    model: dict[str, Any] = {"threads": 1}
    if args.model:
        model["path"] = str(args.model)
    log("starting PostgreSQL")
    pg_root = Path(tempfile.mkdtemp(prefix="crowdcount-pg-"))
    pg = PostgresServer(pg_root)
    cluster = None
    client = None
    try:
        dsn = pg.new_database("failover")
        log(f"starting Ray: head + {args.nodes} worker nodes x {args.slots} camera slots")
        cluster = start_cluster(args.nodes, args.slots)
        shards = args.shards or (args.nodes - 1) * args.slots
        cameras = [f"cam{i}" for i in range(args.cameras)]
        config = parse_config({
            "server": {"database": str(tmp / "unused.sqlite3"), "max_streams": 4096},
            "model": model,
            "streams": [{"name": c, "url": str(clip), "loop": True} for c in cameras],
            "cluster": {"address": cluster.address, "database": dsn, "shards": shards},
        })
        client = TestClient(TestServer(build_app(config)))
        await client.start_server()
        workers = {n.node_id for n in cluster.worker_nodes}
        log(f"{len(cameras)} cameras on {shards} shards: waiting until all count")
        seen = await wait_running(client, cameras, workers, 180)
        await asyncio.sleep(args.before)  # history before the kill
        seen = await streams_of(client)
        victim_id = next(s["node"] for s in seen.values() if s["shard"] == 0)
        victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
        moved = [c for c in cameras if seen[c]["node"] == victim_id]
        log(f"killing node {victim_id[:12]} (cameras {', '.join(moved)})")
        killed_at = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        await wait_running(client, cameras, workers - {victim_id}, 120)
        running_at = time.time()
        log(f"all cameras running again after {running_at - killed_at:.1f} s (API view)")
        await asyncio.sleep(args.after)

        lost = 0
        recovery = 0.0
        with psycopg.connect(dsn) as conn:
            duplicates = conn.execute(
                "SELECT count(*) FROM (SELECT stream_id, t FROM counts GROUP BY stream_id, t "
                "HAVING count(*) > 1) d").fetchone()[0]
            for cam in cameras:
                ts = [r[0] for r in conn.execute(
                    "SELECT t FROM counts WHERE stream_id = %s ORDER BY t", (cam,))]
                gaps = [(a, b) for a, b in itertools.pairwise(ts) if b - a > args.gap]
                outage = [(a, b) for a, b in gaps if cam in moved
                          and a >= killed_at - 1.0 and b <= running_at + 1.0]
                if cam in moved:
                    resumed = max(b for _, b in outage) if outage else min(
                        t for t in ts if t > killed_at)
                    recovery = max(recovery, resumed - killed_at)
                missing = sum(round((b - a) * args.fps) - 1 for a, b in gaps
                              if (a, b) not in outage)
                lost += missing
                log(f"{cam}: {len(ts)} rows, gaps > {args.gap} s: "
                    f"{[(round(a - killed_at, 2), round(b - killed_at, 2)) for a, b in gaps]} "
                    f"(s from the kill), lost outside the outage: {missing}")
        return {"cameras": len(cameras), "nodes": args.nodes, "recovery_s": round(recovery, 2),
                "duplicates": duplicates, "rows_lost_outside_outage": lost}
    finally:
        if client is not None:
            await client.close()
        if cluster is not None:
            stop_cluster(cluster)
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes (besides the head)")
    parser.add_argument("--slots", type=int, default=2, help="camera slots per worker node")
    parser.add_argument("--shards", type=int, help="default: what the surviving nodes hold")
    parser.add_argument("--model", type=Path, help="default: the bundled model")
    parser.add_argument("--fps", type=int, default=4)
    parser.add_argument("--size", default="160x128")
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--gap", type=float, default=1.0,
                        help="a gap between rows longer than this is counted as lost rows")
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be >= 2 (one dies, the others take over)")
    logging.basicConfig(level=logging.ERROR)
    sys.path.insert(0, str(ROOT))  # tests/ is not installed; its fixtures run the servers
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
