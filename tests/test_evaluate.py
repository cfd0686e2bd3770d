"""Evaluation statistics: density bins by true count, their MAE/RMSE/bias, and the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crowdcount.training.evaluate import Stats, bin_label, density_bins, plot, report_of


def test_bin_edges_are_inclusive_upper_bounds():
    true = np.array([0, 50, 51, 200, 201, 500, 501, 3000], float)
    bins = dict(density_bins(true, true))
    assert list(bins) == ["<=50", "51-200", "201-500", ">500"]
    assert [s.n for s in bins.values()] == [2, 2, 2, 2]


def test_bin_statistics_are_computed_within_each_bin():
    true = np.array([10, 30, 100, 150, 1000], float)
    pred = np.array([12, 26, 100, 120, 700], float)
    bins = dict(density_bins(true, pred))
    assert bins["<=50"].mae == pytest.approx(3.0)  # |+2|, |-4|
    assert bins["<=50"].bias == pytest.approx(-1.0)
    assert bins["<=50"].rmse == pytest.approx(math.sqrt((4 + 16) / 2))
    assert bins["51-200"].mae == pytest.approx(15.0) and bins["51-200"].bias == -15.0
    assert bins["201-500"].n == 0 and math.isnan(bins["201-500"].mae)
    assert bins[">500"].bias == pytest.approx(-300.0)
    assert bins[">500"].mean_true == 1000


def test_overall_matches_the_bins_it_is_made_of():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 2000, 300).astype(float)
    pred = true * rng.uniform(0.6, 1.3, 300)
    rows = [(str(i), t, p) for i, (t, p) in enumerate(zip(true, pred, strict=True))]
    report = report_of("x", rows)
    assert sum(s.n for _, s in report.bins) == report.n == 300
    weighted = sum(s.n * s.mae for _, s in report.bins if s.n) / report.n
    assert weighted == pytest.approx(report.mae)
    assert report.overall == Stats.of(true, pred)


def test_plot_labels_name_the_set():
    from crowdcount.training.evaluate import short_name

    spec = "shanghaitech:/d/shanghaitech_b/train_data:10-400/10"
    assert short_name(spec) == "shanghaitech_b/train_data 10-400/10"
    assert short_name("generic:/tmp/cams/door") == "cams/door"


def test_custom_edges_label():
    assert [bin_label(i, (10,)) for i in range(2)] == ["<=10", ">10"]


def test_plot_is_log_scale_and_survives_zero_predictions(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, path, *a, **k):
        ax = fig.axes[0]
        seen["scales"] = (ax.get_xscale(), ax.get_yscale())
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    a = report_of("mall:m", [("a", 20.0, 0.0), ("b", 40.0, 38.0)])
    b = report_of("shanghaitech:s", [("c", 900.0, 640.0)])
    plot([a, b], tmp_path / "p.png")
    assert seen["scales"] == ("log", "log")
    assert (tmp_path / "p.png").stat().st_size > 5000
