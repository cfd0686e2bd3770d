"""Distillation (training/distill.py): per-source betas, teacher-mixed targets computed on
the very crops the student sees, and ``crowdcount train --distill`` end to end. The teacher
is the generated brightness model (its map is an exact function of the crop)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crowdcount.model.errors import UserError
from crowdcount.training.data import DensityDataset, WeightedReader
from crowdcount.training.distill import DistilledDataset, Teacher, parse_distill
from crowdcount.training.readers import open_dataset
from crowdcount.training.targets import Augment
from tests.fixtures.datasets import make_generic

ROOT = Path(__file__).resolve().parents[1]


def test_parse_distill_gives_one_beta_per_source():
    assert parse_distill(["mall=0.25", "shb"], ["mall", "shb", "sha"]) == [0.25, 0.5, 0.0]
    assert parse_distill([], ["mall"]) == [0.0]
    with pytest.raises(UserError, match="no training set named 'sha'"):
        parse_distill(["sha"], ["mall"])
    with pytest.raises(UserError, match=r"0\.\.1"):
        parse_distill(["mall=2"], ["mall"])
    with pytest.raises(UserError, match="a number"):
        parse_distill(["mall=x"], ["mall"])


def _sources(tmp_path: Path) -> list[WeightedReader]:
    a = make_generic(tmp_path / "a", [3, 5, 8, 2], seed=1)
    b = make_generic(tmp_path / "b", [6, 1, 4, 9], seed=2)
    return [WeightedReader(open_dataset(f"generic:{p}"), 1.0, Augment(), False, n)
            for n, p in (("a", a), ("b", b))]


def test_targets_mix_annotation_and_teacher_per_source(tmp_path, brightness_model):
    sources = _sources(tmp_path)
    teacher = Teacher(brightness_model)
    args = (sources, (64, 96), 8, 8, 4)
    plain = DensityDataset(*args, seed=3)
    mixed = DistilledDataset(*args, seed=3, betas=[1.0, 0.25], teacher=teacher)
    for index in range(2):
        xs, ys, which = plain.draw(index)
        mx, my = mixed[index]
        np.testing.assert_array_equal(mx, xs)  # the same crops: only the targets change
        assert set(which) == {0, 1}  # both sources in the batch
        taught = teacher.maps(xs)
        beta = np.where(which == 0, 1.0, 0.25)[:, None, None, None]
        np.testing.assert_allclose(my, (1 - beta) * ys + beta * taught, rtol=1e-6, atol=1e-7)
        a = which == 0
        np.testing.assert_allclose(my[a], taught[a], rtol=1e-6)  # beta 1: the teacher's map
        assert not np.allclose(my[~a], taught[~a])


def test_distill_needs_density_targets(tmp_path, brightness_model):
    with pytest.raises(UserError, match="--loss mse"):
        DistilledDataset(_sources(tmp_path), (64, 96), 8, 4, 1, max_points=16,
                         betas=[0.5, 0.5], teacher=Teacher(brightness_model))


@pytest.mark.slow
def test_train_distill_runs_and_rejects_bad_flags(tmp_path, generic_dataset, brightness_model):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "training", "train", "--data",
            f"cam=generic:{generic_dataset}", "--backbone-weights", "none", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64x64", "--verbose", "0",
            "--val-every", "4"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def train(*extra: str, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, "--run-dir", str(run / name), *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)

    ok = train("--distill", "cam=0.5", "--teacher", str(brightness_model), name="ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (run / "ok" / "last.keras").is_file()
    bad = train("--distill", "nope", "--teacher", str(brightness_model), name="bad")
    assert bad.returncode == 2 and "no training set named 'nope'" in bad.stderr
    points = train("--distill", "cam", "--teacher", str(brightness_model), "--loss",
                   "bayesian", name="points")
    assert points.returncode == 2 and "--loss mse" in points.stderr
    orphan = train("--distill", "cam", name="orphan")
    assert orphan.returncode == 2 and "needs a teacher" in orphan.stderr
