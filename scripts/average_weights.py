"""Average the weights of several checkpoints of one network into one .keras model: the
plain mean of a run's epochs (stochastic weight averaging, Izmailov et al. 2018) or a
weighted mean of a fine-tuned model and the model it started from (WiSE-FT, Wortsman et al.
2022).

Why: on a small CPU budget (batch 8) whole-image counts swing by +-10 people between epochs
on ShanghaiTech B while the crops' loss barely moves; the mean of the last few epochs' weights
sits between the swings. A fine-tune on dense crowds gains there and loses some of what the
start model did well (the Mall); points on the straight line between the two weight sets
often keep most of both. BatchNorm is frozen in the fast preset, so its statistics are the
same in every checkpoint and averaging needs no BN recalibration.

    python scripts/average_weights.py runs/x/epoch5.keras runs/x/epoch6.keras -o avg.keras
    python scripts/average_weights.py start.keras tuned.keras --weights 0.4 0.6 -o mix.keras
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import keras
import numpy as np


def average(paths: list[str], out: str, weights: Sequence[float] | None = None) -> str:
    """Write the (weighted) mean of the models at ``paths`` to ``out``; ``weights`` are
    normalised to sum to 1 (default: equal)."""
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} models")
    share = np.asarray(weights if weights is not None else [1.0] * len(paths), np.float64)
    share = share / share.sum()
    models = [keras.saving.load_model(p, compile=False) for p in paths]
    tensors = [m.get_weights() for m in models]
    mean = [sum(s * w[i] for s, w in zip(share, tensors, strict=True)).astype(tensors[0][i].dtype)
            for i in range(len(tensors[0]))]
    models[0].set_weights(mean)
    models[0].save(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--weights", type=float, nargs="+", help="one per model (default: equal)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    print(average(args.models, args.output, args.weights))
