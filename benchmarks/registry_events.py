"""How fast a camera-registry change reaches every listener (a benchmark, not a test).

    python benchmarks/registry_events.py --changes 200 --listeners 4

Starts a real PostgreSQL (``tests/fixtures/local.py``), opens ``--listeners`` connections
that LISTEN on the registry's channel, as shards and API processes do, and makes
``--changes`` edits through ``PostgresStore.streams.update`` (one transaction each, the
NOTIFY inside it), one after the other. Prints, per listener count, the latency from the
start of an edit (so its commit is included) to the moment each listener has its
notification: median, 99th percentile and max, in milliseconds.

Why this matters for the design: the registry's changes must reach every shard and every
API process. A NOTIFY sent in the change's transaction reaches all of them with the commit
(and never for a change that rolled back); a Ray call would reach only the actors it is
addressed to (API processes are not actors), one call per shard.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--listeners", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests/ is not installed; its launcher runs the server
    import psycopg

    from crowdcount.streamer.cluster.placement import choose_shard
    from crowdcount.streamer.store.postgres import STREAMS_CHANNEL, PostgresStore
    from tests.fixtures.local import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="crowdcount-pg-"))
    server = PostgresServer(root)
    try:
        dsn = server.new_database("events")
        with PostgresStore(dsn) as store:
            store.streams.register("cam", "rtsp://h/cam", "rtsp", {}, origin="api", shards=1,
                                   place=choose_shard, limit=None)
            print(f"{'listeners':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for n in args.listeners:
                arrived: list[list[float]] = [[] for _ in range(n)]
                conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
                for conn in conns:
                    conn.execute(f"LISTEN {STREAMS_CHANNEL}")

                def listen(out: list[float], conn: psycopg.Connection) -> None:
                    for _note in conn.notifies(timeout=30, stop_after=args.changes):
                        out.append(time.perf_counter())

                threads = [threading.Thread(target=listen, args=(out, c))
                           for out, c in zip(arrived, conns, strict=True)]
                for t in threads:
                    t.start()
                time.sleep(0.2)  # every listener is waiting
                started: list[float] = []
                for k in range(args.changes):
                    started.append(time.perf_counter())
                    store.streams.update("cam", "rtsp://h/cam", "rtsp", {"k": k})
                for t in threads:
                    t.join()
                for conn in conns:
                    conn.close()
                # One notification per committed edit, in commit order (the payload is the
                # camera's id, the same for all: the k-th arrival is the k-th edit's).
                assert all(len(times) == args.changes for times in arrived), "lost a NOTIFY"
                lat = [(got - start) * 1000 for times in arrived
                       for got, start in zip(times, started, strict=True)]
                lat.sort()
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"{n:>9} {statistics.median(lat):>8.2f} {p99:>8.2f} {max(lat):>8.2f}")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
