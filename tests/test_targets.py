"""Training examples: augmented crops keep their heads, point targets are padded with a mask
at output-cell coordinates, and the pipeline yields them in fixed-shape batches."""

from __future__ import annotations

import numpy as np
import pytest

from crowdcount.model.types import Sample
from crowdcount.training.data import DensityDataset, WeightedReader
from crowdcount.training.readers import Kernel, open_dataset
from crowdcount.training.targets import Augment, make_example, point_target, scale_range
from tests.fixtures.datasets import make_generic

KERNEL = Kernel("fixed", 4.0)


def test_point_target_pads_with_a_mask_in_output_cells():
    pts = np.array([[16.0, 8.0], [4.0, 60.0]], np.float32)
    t = point_target(pts, stride=8, max_points=5)
    assert t.shape == (5, 3)
    np.testing.assert_allclose(t[:2], [[2.0, 1.0, 1.0], [0.5, 7.5, 1.0]])
    assert not t[2:].any()


def test_point_target_drops_extra_heads_and_says_so(caplog):
    t = point_target(np.ones((7, 2), np.float32), stride=4, max_points=3)
    assert t[:, 2].sum() == 3
    assert "more than max_points=3" in caplog.text


def test_whole_image_point_target_matches_density_count():
    rng = np.random.default_rng(1)
    pts = rng.uniform([0, 0], [200, 100], (9, 2)).astype(np.float32)
    sample = Sample(np.zeros((100, 200, 3), np.uint8), 9.0, pts)
    x, y = make_example(sample, (64, 128), KERNEL, 8, max_points=16)
    assert x.shape == (64, 128, 3) and y.shape == (16, 3)
    assert y[:, 2].sum() == 9
    # resized with the image: x scaled by 128/200, y by 64/100, then divided by the stride
    np.testing.assert_allclose(y[:9, 0], pts[:, 0] * 128 / 200 / 8, rtol=1e-5)
    np.testing.assert_allclose(y[:9, 1], pts[:, 1] * 64 / 100 / 8, rtol=1e-5)


@pytest.mark.parametrize("max_points", [None, 64])
def test_augmented_crop_targets_agree_on_the_heads_inside(max_points):
    """Density and point targets of the same draw count the same heads."""
    rng = np.random.default_rng(3)
    pts = rng.uniform([0, 0], [320, 240], (40, 2)).astype(np.float32)
    sample = Sample(np.full((240, 320, 3), 100, np.uint8), 40.0, pts)
    dens = make_example(sample, (96, 128), KERNEL, 8, np.random.default_rng(5), Augment())[1]
    x, y = make_example(sample, (96, 128), KERNEL, 8, np.random.default_rng(5), Augment(),
                        max_points)
    assert x.shape == (96, 128, 3)
    if max_points is None:
        assert y.shape == (12, 16, 1)
    else:
        assert y.shape == (64, 3)
        assert y[:, 2].sum() == pytest.approx(dens.sum(), abs=1e-3)
        inside = y[y[:, 2] > 0]
        assert (inside[:, 0] >= 0).all() and (inside[:, 0] <= 16).all()
        assert (inside[:, 1] >= 0).all() and (inside[:, 1] <= 12).all()


def test_small_images_are_padded_not_stretched():
    """An image smaller than the crop keeps its aspect: heads stay where they were relative
    to each other (a stretch would change their spacing)."""
    pts = np.array([[10.0, 10.0], [30.0, 10.0]], np.float32)
    image = np.full((40, 60, 3), 200, np.uint8)
    image[:, 30:] = 100  # the padding (mean colour, 150) differs from both halves
    sample = Sample(image, 2.0, pts)
    aug = Augment(scale=(1.0, 1.0), serve_side=None, flip=False, colour=0, grey=0)
    for seed in range(5):
        x, y = make_example(sample, (64, 128), KERNEL, 1, np.random.default_rng(seed), aug, 4)
        assert y[:, 2].sum() == 2
        assert y[1, 0] - y[0, 0] == pytest.approx(20.0) and y[1, 1] == pytest.approx(y[0, 1])
        assert (x == 200).sum() == (x == 100).sum() == 40 * 30 * 3  # unscaled, once
        assert (x == 150).sum() == (64 * 128 - 40 * 60) * 3


def test_scale_range_reaches_the_serving_size():
    aug = Augment()
    assert scale_range(aug, (480, 640, 3)) == pytest.approx((0.8, 1.25))  # a Mall frame
    lo, hi = scale_range(aug, (768, 1024, 3))  # a street photo shown as a 512-640 px stream
    assert lo == pytest.approx(0.5) and hi == 1.25


def test_dense_crops_are_redrawn_below_max_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [256, 256], (400, 2)).astype(np.float32)
    sample = Sample(np.zeros((256, 256, 3), np.uint8), 400.0, pts)
    _, y = make_example(sample, (64, 64), KERNEL, 8, np.random.default_rng(1),
                        Augment(scale=(0.5, 0.5), serve_side=None), max_points=60)
    assert 0 < y[:, 2].sum() <= 60


def test_pipeline_yields_points_and_masks_in_fixed_batches(tmp_path):
    root = make_generic(tmp_path / "g", [3, 0, 5, 2])
    source = WeightedReader(open_dataset(f"generic:{root}"), 1.0, Augment())
    data = DensityDataset([source], (64, 96), 8, batch_size=3, steps=2, max_points=8)
    x, y = data[0]
    assert x.shape == (3, 64, 96, 3) and y.shape == (3, 8, 3)
    assert set(np.unique(y[..., 2])) <= {0.0, 1.0}


def test_sampling_weights_balance_sources(tmp_path):
    big = open_dataset(f"generic:{make_generic(tmp_path / 'a', [1] * 8)}")
    small = open_dataset(f"generic:{make_generic(tmp_path / 'b', [2] * 2)}")
    data = DensityDataset([WeightedReader(big, 1.0), WeightedReader(small, 4.0)],
                          (48, 64), 8, batch_size=1, steps=1)
    np.testing.assert_allclose(data.p, [0.5, 0.5])
