"""Pack training data into the generic format under .gpu/ (git-ignored) so that it travels
to a lent GPU machine, where ../shared is not available. Not part of the product.

The empty-scene sets of ``gpu_train.sh EMPTY=1`` (synthetic frames, the Mall median,
head-free crops) are not packed: the GPU machine makes them from code and this packed data.
``CROWD_SHARED`` points at the data when the checkout is not beside it (a worktree)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from crowdcount.training.readers import open_dataset
from crowdcount.training.readers.generic import write_generic

_ROOT = os.environ.get("CROWD_SHARED") or Path(__file__).resolve().parents[2] / "shared"
SHARED = Path(_ROOT) / "data"
OUT = Path(__file__).resolve().parents[1] / ".gpu" / "data"

SETS = {
    # name: (dataset spec, scale, JPEG quality). Whole training splits: hold-outs are picked
    # on the GPU machine by range (`:10-400/10` and `:~10-400/10`), items keep their order.
    # Scales and JPEG qualities keep data + weights + wheels under the 64 MiB carry (~50 MiB
    # of data): ShanghaiTech B at 576 px, A at <= 704 px; random scales reach 1.25x above.
    "mall": (f"mall:{SHARED}/mall:1-800", 1.0, 25),
    "shb_train": (f"shanghaitech:{SHARED}/shanghaitech_b/train_data", 0.5625, 45),
    "sha_train": (f"shanghaitech:{SHARED}/shanghaitech_a/train_data", 0.6875, 40),
}

if __name__ == "__main__":
    for name, (spec, scale, quality) in SETS.items():
        reader = open_dataset(spec)
        write_generic(OUT / name, (reader[i] for i in range(len(reader))), reader.kernel,
                      scale, quality)
        size = sum(f.stat().st_size for f in (OUT / name).iterdir()) / 2**20
        print(f"{name}: {len(reader)} items, {size:.1f} MiB", file=sys.stderr)
