"""Density maps sum to the number of heads, wherever the heads are."""

from __future__ import annotations

import numpy as np
import pytest

from crowdcount.model.density import (
    adaptive_density,
    adaptive_sigmas,
    centered_density,
    density_map,
    downsample,
    fixed_density,
)

BORDER_POINTS = np.array([[0, 0], [639.9, 479.9], [0, 479], [639, 0], [320, 0.2], [-3, 200],
                          [700, 10], [1.5, 1.5]], np.float32)


@pytest.mark.parametrize("stride", [1, 2, 8])
def test_fixed_keeps_mass_at_borders(stride):
    d = fixed_density(BORDER_POINTS, (480, 640), sigma=6.0, stride=stride)
    assert d.shape == (480 // stride, 640 // stride)
    assert d.sum() == pytest.approx(len(BORDER_POINTS), rel=1e-5)
    assert (d >= 0).all()


@pytest.mark.parametrize("stride", [1, 8])
def test_adaptive_keeps_mass_at_borders(stride):
    rng = np.random.default_rng(3)
    pts = np.concatenate([BORDER_POINTS, rng.uniform([0, 0], [640, 480], (300, 2))])
    d = adaptive_density(pts, (480, 640), stride=stride)
    assert d.sum() == pytest.approx(len(pts), rel=1e-5)


def test_kernel_is_centred_on_the_head():
    d = fixed_density(np.array([[100.5, 50.5]]), (120, 200), sigma=3.0)
    assert np.unravel_index(d.argmax(), d.shape) == (50, 100)


def test_adaptive_sigmas_follow_crowding():
    dense = np.array([[10, 10], [12, 10], [10, 12], [12, 12]], float)
    sparse = dense * 20
    assert adaptive_sigmas(dense).mean() < adaptive_sigmas(sparse).mean()
    assert adaptive_sigmas(np.array([[5.0, 5.0]]), default=9.0).tolist() == [9.0]


def test_strided_map_matches_pooled_full_resolution():
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [640, 480], (50, 2))
    direct = fixed_density(pts, (480, 640), sigma=20.0, stride=8)
    pooled = downsample(fixed_density(pts, (480, 640), sigma=20.0), 8)
    assert np.abs(direct - pooled).sum() / pooled.sum() < 0.1
    assert direct.sum() == pytest.approx(pooled.sum(), rel=1e-5)


def test_downsample_preserves_sum_with_padding():
    rng = np.random.default_rng(1)
    d = rng.random((37, 53)).astype(np.float32)
    out = downsample(d, 8)
    assert out.shape == (5, 7)
    assert out.sum() == pytest.approx(d.sum(), rel=1e-5)


def test_empty_and_centered():
    assert density_map(np.zeros((0, 2)), (10, 10), 2.0).sum() == 0
    c = centered_density(31.0, (160, 160))
    assert c.sum() == pytest.approx(31.0, rel=1e-5)
    assert np.unravel_index(c.argmax(), c.shape) == (80, 80)
