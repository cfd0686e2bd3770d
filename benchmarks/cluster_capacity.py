"""How many cameras one worker node of a cluster keeps up with (a benchmark, not a test).

    python benchmarks/cluster_capacity.py --cameras 2 4 6 8 --fps 5

For each camera count: a real PostgreSQL and a Ray cluster with one worker node (one shard,
so every camera is batched through one model session, as on a real node), looping 640x480
H.264 file cameras at ``--fps`` and the bundled model (``--model`` for another). After
``--warmup`` seconds it reads every camera's status through the API for ``--seconds`` and
prints, per camera count, the processed frames per second per camera and in total, and the
rows stored per second (PostgreSQL). A node keeps up while fps/camera stays at ``--fps``.

The head and the worker node run on this machine, so the figures are for the cores of this
machine shared by both (the head is idle once the shard is placed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


async def measure(n: int, args: argparse.Namespace, tmp: Path, clip: Path) -> dict[str, Any]:
    import psycopg
    from aiohttp.test_utils import TestClient, TestServer

    from benchmarks.cluster_failover import streams_of, wait_running
    from crowdcount.streamer.app import build_app
    from crowdcount.streamer.config import parse_config
    from tests.fixtures.local import PostgresServer, start_cluster, stop_cluster

    pg_root = Path(tempfile.mkdtemp(prefix="crowdcount-pg-"))
    pg = PostgresServer(pg_root)
    cluster = start_cluster(1, 1)
    client = None
    try:
        dsn = pg.new_database("capacity")
        cameras = [f"cam{i}" for i in range(n)]
        model: dict[str, Any] = {"max_batch": 8}
        if args.model:
            model["path"] = str(args.model)
        config = parse_config({
            "server": {"database": str(tmp / "unused.sqlite3"), "max_streams": 4096},
            "model": model,
            "streams": [{"name": c, "url": str(clip), "loop": True} for c in cameras],
            "cluster": {"address": cluster.address, "database": dsn, "shards": 1},
        })
        client = TestClient(TestServer(build_app(config)))
        await client.start_server()
        workers = {node.node_id for node in cluster.worker_nodes}
        await wait_running(client, cameras, workers, 180)
        await asyncio.sleep(args.warmup)
        t0 = time.time()
        before = await streams_of(client)
        await asyncio.sleep(args.seconds)
        after = await streams_of(client)
        t1 = time.time()
        frames = sum(after[c]["status"]["frames_out"] - before[c]["status"]["frames_out"]
                     for c in cameras)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM counts WHERE t >= %s AND t < %s",
                                (t0, t1)).fetchone()[0]
        total = frames / (t1 - t0)
        return {"cameras": n, "fps_per_camera": total / n, "fps_total": total,
                "rows_per_s": rows / (t1 - t0)}
    finally:
        if client is not None:
            await client.close()
        stop_cluster(cluster)
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--fps", type=int, default=5)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--model", type=Path, help="default: the bundled ONNX model")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.path.insert(0, str(ROOT))  # tests/ and benchmarks/ are not installed
    from tests.fixtures.local import write_clip

    width, height = (int(v) for v in args.size.split("x"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", width, height, fps=args.fps, seconds=10.0,
                          gop=args.fps)
        for n in args.cameras:
            results.append(asyncio.run(measure(n, args, Path(tmp), clip)))
            print(f"measured {n} cameras", file=sys.stderr, flush=True)
    print(f"{args.size} cameras at {args.fps} fps, one worker node, one shard")
    print("cameras  fps/camera  fps total  rows/s")
    for r in results:
        print(f"{r['cameras']:7d}  {r['fps_per_camera']:10.1f}  {r['fps_total']:9.1f}  "
              f"{r['rows_per_s']:6.1f}")


if __name__ == "__main__":
    main()
