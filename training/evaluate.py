"""Count accuracy of a model on datasets: MAE, RMSE and bias overall and per density bin
(a model that is fine on a quiet mall can be far off on a packed square, and one overall
number hides that), a per-image CSV and a log-scale predicted-vs-true plot."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crowdcount.model.runtime import Runtime
from crowdcount.training.readers import open_dataset

#: Upper edges of the density bins (true heads per image); the last bin is open.
BIN_EDGES: tuple[int, ...] = (50, 200, 500)


@dataclass(frozen=True)
class Stats:
    n: int
    mae: float
    rmse: float
    bias: float
    mean_true: float

    @classmethod
    def of(cls, true: np.ndarray, pred: np.ndarray) -> Stats:
        if len(true) == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        err = pred - true
        return cls(len(true), float(np.abs(err).mean()), float(math.sqrt((err**2).mean())),
                   float(err.mean()), float(true.mean()))

    def line(self) -> str:
        return (f"images={self.n} MAE={self.mae:.3f} RMSE={self.rmse:.3f} "
                f"bias={self.bias:+.3f} mean_true={self.mean_true:.2f}")


def bin_label(i: int, edges: Sequence[int] = BIN_EDGES) -> str:
    """'<=50', '51-200', '201-500', '>500' for the default edges."""
    if i == 0:
        return f"<={edges[0]}"
    if i == len(edges):
        return f">{edges[-1]}"
    return f"{edges[i - 1] + 1}-{edges[i]}"


def density_bins(
    true: np.ndarray, pred: np.ndarray, edges: Sequence[int] = BIN_EDGES
) -> list[tuple[str, Stats]]:
    """Stats per bin of TRUE count (a head count c falls in the first bin with c <= edge),
    every bin listed, empty ones with n=0."""
    which = np.searchsorted(np.asarray(edges, float), true, side="left")
    return [(bin_label(i, edges), Stats.of(true[which == i], pred[which == i]))
            for i in range(len(edges) + 1)]


@dataclass(frozen=True)
class Report:
    dataset: str
    overall: Stats
    bins: list[tuple[str, Stats]]
    rows: list[tuple[str, float, float]]  # (name, true, predicted)

    # The overall numbers under their old names (callers and the model card use them).
    @property
    def n(self) -> int:
        return self.overall.n

    @property
    def mae(self) -> float:
        return self.overall.mae

    @property
    def rmse(self) -> float:
        return self.overall.rmse

    @property
    def bias(self) -> float:
        return self.overall.bias

    @property
    def mean_true(self) -> float:
        return self.overall.mean_true


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total or done % max(1, total // 10) == 0:
        end = "\n" if done == total else "\r" if sys.stderr.isatty() else "\n"
        print(f"evaluate: {done}/{total}", end=end, file=sys.stderr, flush=True)


def report_of(dataset: str, rows: list[tuple[str, float, float]]) -> Report:
    true = np.array([r[1] for r in rows], np.float64)
    pred = np.array([r[2] for r in rows], np.float64)
    return Report(dataset, Stats.of(true, pred), density_bins(true, pred), rows)


def evaluate(
    dataset: str,
    model: str | Path | None = None,
    backend: str | None = None,
    max_side: int | None = None,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    runtime: Runtime | None = None,
) -> Report:
    reader = open_dataset(dataset)
    runtime = runtime or Runtime.open(model, backend, max_side=max_side)
    rows = []
    for i in range(len(reader)):
        sample = reader[i]
        rows.append((sample.name, sample.count, runtime.count(sample.image)))
        _progress(i + 1, len(reader))
    report = report_of(dataset, rows)
    if csv_path:
        write_csv([report], Path(csv_path))
    if plot_path:
        plot([report], Path(plot_path))
    return report


def write_csv(reports: Sequence[Report], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["dataset", "name", "true", "predicted", "error"])
        for report in reports:
            for name, t, p in report.rows:
                out.writerow([report.dataset, name, f"{t:g}", f"{p:.3f}", f"{p - t:.3f}"])


def short_name(spec: str) -> str:
    """'shanghaitech:/d/shanghaitech_b/train_data:10-400/10' -> 'shanghaitech_b/train_data
    10-400/10': enough to tell the sets on a plot apart."""
    _, _, rest = spec.partition(":")
    path, colon, rng = rest.rpartition(":")
    if not (colon and set(rng) <= set("0123456789-/,~ ") and any(c.isdigit() for c in rng)):
        path, rng = rest, ""
    name = "/".join(Path(path).parts[-2:])
    return f"{name} {rng}".strip()


def plot(reports: Sequence[Report], path: Path) -> None:
    """Predicted vs true counts on log axes (counts span 10 to 3,000 across datasets; on
    linear axes the sparse ones collapse into a corner), one colour per dataset, the bin
    edges drawn so under-counting in dense scenes shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    lo, hi = math.inf, 1.0
    for report in reports:
        true = np.array([r[1] for r in report.rows], float)
        pred = np.array([r[2] for r in report.rows], float)
        floor = 0.5  # a predicted 0 still shows, at the bottom
        ax.scatter(np.maximum(true, floor), np.maximum(pred, floor), s=8, alpha=0.6,
                   label=f"{short_name(report.dataset)}: MAE {report.mae:.2f}, "
                         f"bias {report.bias:+.1f}")
        if len(true):
            lo = min(lo, float(np.maximum(np.minimum(true, pred), floor).min()))
            hi = max(hi, float(true.max()), float(pred.max()))
    lo, hi = (lo if math.isfinite(lo) else 1.0) / 1.3, hi * 1.3
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    for edge in BIN_EDGES:
        if lo < edge < hi:
            ax.axvline(edge, color="grey", lw=0.5, ls=":")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="true count",
           ylabel="predicted count", title="predicted vs true (log scale)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
