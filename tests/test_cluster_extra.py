"""The ``cluster`` extra alone runs a cluster and its failover benchmark: nothing the API
process, the shards or ``benchmarks/cluster_failover.py`` import needs pytest or onnx (the
dev extras). Checked in a fresh interpreter where importing either fails, as on a machine
that installed ``crowdcount[cluster]`` only."""

from __future__ import annotations

from tests.fixtures.components import need_modules

need_modules("the cluster", "psycopg", "ray", hint="pip install crowdcount[cluster]")

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_IMPORTS = textwrap.dedent(
    """
    import sys
    for name in ("pytest", "_pytest", "onnx"):
        sys.modules[name] = None  # any import of them raises ImportError
    sys.path.insert(0, sys.argv[1])
    import benchmarks.cluster_failover
    # what its run() imports, and what a shard's actor imports on a worker node
    import aiohttp.test_utils, psycopg, ray
    import crowdcount.streamer.app, crowdcount.streamer.config
    import crowdcount.streamer.cluster.service, crowdcount.streamer.cluster.shard
    import tests.fixtures.local
    print("ok")
    """
)


def test_failover_benchmark_imports_without_pytest_or_onnx() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORTS, str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
