"""The training losses on tiny synthetic maps whose answers are known by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crowdcount.training.losses import BayesianLoss, point_count_abs_error, point_posterior

H, W = 12, 16  # output cells
ROOT = Path(__file__).resolve().parents[1]


def points(*xy: tuple[float, float], pad_to: int = 4) -> np.ndarray:
    """(1, pad_to, 3) point target: heads at cell centres, then zero padding."""
    out = np.zeros((1, pad_to, 3), np.float32)
    for i, (x, y) in enumerate(xy):
        out[0, i] = (x + 0.5, y + 0.5, 1.0)
    return out


def spikes(*xy: tuple[int, int], mass: float = 1.0) -> np.ndarray:
    """(1, H, W, 1) density with ``mass`` in each given cell (x, y)."""
    d = np.zeros((1, H, W, 1), np.float32)
    for x, y in xy:
        d[0, y, x, 0] += mass
    return d


def loss_value(y_true: np.ndarray, y_pred: np.ndarray, **kw: float) -> float:
    return float(np.asarray(BayesianLoss(**kw)(y_true, y_pred)))


def test_perfect_prediction_scores_about_zero():
    heads = [(3, 3), (12, 8)]
    assert loss_value(points(*heads), spikes(*heads)) < 1e-3


def test_moving_mass_away_from_a_head_raises_the_loss():
    heads = [(3, 3), (12, 8)]
    perfect = loss_value(points(*heads), spikes(*heads))
    near = loss_value(points(*heads), spikes((4, 3), (12, 8)))
    far = loss_value(points(*heads), spikes((8, 3), (12, 8)))
    assert perfect < near < far
    # Four cells from its head and further from the other, the mass is the background's:
    # the head expects ~0 (error 1) and the background ~1 (error 1).
    assert far == pytest.approx(2.0, abs=0.05)


def test_empty_image_is_told_its_map_must_be_empty():
    nobody = points()
    assert loss_value(nobody, np.zeros((1, H, W, 1), np.float32)) == pytest.approx(0.0)
    assert loss_value(nobody, spikes((5, 5), mass=2.5)) == pytest.approx(2.5, rel=1e-5)
    # without the background term as well
    assert loss_value(nobody, spikes((5, 5), mass=2.5), background=None) == pytest.approx(2.5)


def test_count_term_is_absolute_count_error():
    heads = [(3, 3), (12, 8), (7, 6)]
    pred = spikes((3, 3), (10, 2), mass=1.7)  # sums to 3.4 against 3 heads
    y = points(*heads)
    assert float(np.asarray(point_count_abs_error(y, pred))[0]) == pytest.approx(0.4, rel=1e-5)
    with_count = loss_value(y, pred, count_weight=1.0)
    without = loss_value(y, pred)
    assert with_count - without == pytest.approx(0.4, rel=1e-4)


def test_masked_padding_changes_nothing():
    heads = [(3, 3), (12, 8)]
    pred = spikes((4, 4), (11, 8), (6, 10), mass=0.8)
    short = points(*heads, pad_to=2)
    long = points(*heads, pad_to=9)
    long[0, 2:, :2] = np.random.default_rng(0).uniform(0, 12, (7, 2))  # junk under mask 0
    for kw in ({}, {"background": None}, {"count_weight": 0.5}):
        assert loss_value(long, pred, **kw) == pytest.approx(loss_value(short, pred, **kw),
                                                             rel=1e-6)


def test_posterior_sums_to_one_per_cell_and_ignores_padding():
    y = points((3, 3), (12, 8), pad_to=5)
    y[0, 3:, :2] = 6.0  # padding at a real place
    post = np.asarray(point_posterior(y, (H, W), sigma=1.0, background=7.2))
    assert post.shape == (1, 6, H * W)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    assert post[0, 2:5].max() == 0.0  # padding owns no cell
    assert post[0, 0, 3 * W + 3] > 0.99  # the head's own cell is the head's


def test_batch_items_are_independent():
    a = (points((3, 3)), spikes((3, 3)))
    b = (points((5, 5), (9, 9)), spikes((1, 1), mass=3.0))
    both = BayesianLoss()(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    # Keras averages the per-image losses over the batch
    assert float(np.asarray(both)) == pytest.approx(
        (loss_value(*a) + loss_value(*b)) / 2, rel=1e-5)


_JAX_SNIPPET = """
import json, os, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.test_losses import points, spikes
from crowdcount.training.losses import BayesianLoss
y, d = points((3, 3), (12, 8)), spikes((4, 3), (12, 8))
import keras
print(json.dumps([keras.backend.backend(), float(np.asarray(BayesianLoss()(y, d)))]))
"""


def test_same_value_on_jax():
    """The loss is plain ``keras.ops``: the GPU's JAX backend computes the same number."""
    pytest.importorskip("jax", reason="JAX not installed (pip install jax)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _JAX_SNIPPET.format(root=str(ROOT))],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    backend, value = json.loads(out.stdout.strip().splitlines()[-1])
    assert backend == "jax"
    assert value == pytest.approx(
        loss_value(points((3, 3), (12, 8)), spikes((4, 3), (12, 8))), rel=1e-5)
