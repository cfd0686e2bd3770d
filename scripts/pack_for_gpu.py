"""Pack training data into the generic format under .gpu/ (git-ignored) so that it travels
to a lent GPU machine, where ../shared is not available. Not part of the product."""

from __future__ import annotations

import sys
from pathlib import Path

from crowdcount.training.readers import open_dataset
from crowdcount.training.readers.generic import write_generic

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / ".gpu" / "data"

SETS = {
    # name: (dataset spec, scale, JPEG quality)
    "mall": (f"mall:{SHARED}/mall:1-800", 1.0, 65),
    "shb_train": (f"shanghaitech:{SHARED}/shanghaitech_b/train_data", 0.5, 75),
}

if __name__ == "__main__":
    for name, (spec, scale, quality) in SETS.items():
        reader = open_dataset(spec)
        if name == "shb_train":  # every 10th image is the validation hold-out, kept apart
            from crowdcount.training.readers import Subset

            write_generic(OUT / "shb_val", (reader[i] for i in range(9, len(reader), 10)),
                          reader.kernel, scale, quality)
            reader = Subset(reader, [i for i in range(len(reader)) if i % 10 != 9])
        write_generic(OUT / name, (reader[i] for i in range(len(reader))), reader.kernel,
                      scale, quality)
        print(name, len(reader), file=sys.stderr)
