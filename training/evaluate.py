"""Count accuracy of a model on a dataset: MAE, RMSE, bias, per-image CSV and a plot."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crowdcount.model.runtime import Runtime
from crowdcount.training.readers import open_dataset


@dataclass(frozen=True)
class Report:
    n: int
    mae: float
    rmse: float
    bias: float
    mean_true: float
    rows: list[tuple[str, float, float]]  # (name, true, predicted)


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total or done % max(1, total // 10) == 0:
        end = "\n" if done == total else "\r" if sys.stderr.isatty() else "\n"
        print(f"evaluate: {done}/{total}", end=end, file=sys.stderr, flush=True)


def evaluate(
    dataset: str,
    model: str | Path | None = None,
    backend: str | None = None,
    max_side: int | None = None,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> Report:
    reader = open_dataset(dataset)
    runtime = Runtime.open(model, backend, max_side=max_side)
    rows = []
    for i in range(len(reader)):
        sample = reader[i]
        rows.append((sample.name, sample.count, runtime.count(sample.image)))
        _progress(i + 1, len(reader))
    true = np.array([r[1] for r in rows])
    pred = np.array([r[2] for r in rows])
    err = pred - true
    report = Report(len(rows), float(np.abs(err).mean()), float(math.sqrt((err**2).mean())),
                    float(err.mean()), float(true.mean()), rows)
    if csv_path:
        with open(csv_path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["name", "true", "predicted", "error"])
            for name, t, p in rows:
                out.writerow([name, f"{t:g}", f"{p:.3f}", f"{p - t:.3f}"])
    if plot_path:
        plot(report, Path(plot_path), dataset)
    return report


def plot(report: Report, path: Path, title: str) -> None:
    """Predicted vs true counts (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = [r[1] for r in report.rows]
    pred = [r[2] for r in report.rows]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(true, pred, s=6, alpha=0.5)
    top = max(max(true), max(pred)) * 1.05
    ax.plot([0, top], [0, top], color="grey", lw=1)
    ax.set(xlabel="true count", ylabel="predicted count", xlim=(0, top), ylim=(0, top),
           title=f"{title}\nMAE {report.mae:.2f}  RMSE {report.rmse:.2f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
