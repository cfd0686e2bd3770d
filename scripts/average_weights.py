"""Average the weights of several checkpoints of one run (stochastic weight averaging,
Izmailov et al. 2018) into one .keras model.

Why: on a small CPU budget (batch 8) whole-image counts swing by +-10 people between epochs
on ShanghaiTech B while the crops' loss barely moves; the mean of the last few epochs' weights
sits between the swings. BatchNorm is frozen in the fast preset, so its statistics are the
same in every checkpoint and averaging needs no BN recalibration.

    python scripts/average_weights.py runs/x/epoch5.keras runs/x/epoch6.keras -o avg.keras
"""

from __future__ import annotations

import argparse

import keras
import numpy as np


def average(paths: list[str], out: str) -> str:
    models = [keras.saving.load_model(p, compile=False) for p in paths]
    weights = [m.get_weights() for m in models]
    mean = [np.mean([w[i] for w in weights], axis=0) for i in range(len(weights[0]))]
    models[0].set_weights(mean)
    models[0].save(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    print(average(args.models, args.output))
