"""The runtime over the generated brightness model: batching, sizes and counts."""

from __future__ import annotations

import numpy as np
import pytest

from crowdcount.model.runtime import Runtime
from tests.fixtures.models import expected_count


def test_counts_follow_brightness(brightness_model):
    rt = Runtime.open(brightness_model)
    white = np.full((480, 640, 3), 255, np.uint8)
    black = np.zeros((480, 640, 3), np.uint8)
    maps = rt.predict([white, black])
    assert maps[0].shape == (60, 80)
    assert maps[0].sum() == pytest.approx(4800, rel=1e-5)
    assert maps[1].sum() == 0


def test_mixed_sizes_keep_order(brightness_model):
    rt = Runtime.open(brightness_model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in
              [(480, 640), (256, 320), (480, 640), (96, 128)]]
    maps = rt.predict(images)
    assert [m.shape for m in maps] == [(60, 80), (32, 40), (60, 80), (12, 16)]
    for image, density in zip(images, maps, strict=True):
        assert density.sum() == pytest.approx(expected_count(image), rel=1e-4)


def test_max_side_shrinks_input(brightness_model):
    rt = Runtime.open(brightness_model, max_side=320)
    white = np.full((512, 640, 3), 255, np.uint8)
    (density,) = rt.predict([white])
    assert density.shape == (32, 40)
    assert density.sum() == pytest.approx(32 * 40, rel=1e-5)


def test_missing_model_is_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Runtime.open(tmp_path / "nope.onnx")


def test_bundled_model_runs_at_its_cards_serving_size(brightness_model):
    from crowdcount.model.bundled import DEFAULT_ONNX, model_card, serving_max_side

    chosen = serving_max_side()
    assert chosen == model_card()["serving"]["max_side"]
    assert Runtime.open().max_side == chosen
    assert Runtime.open(DEFAULT_ONNX).max_side == chosen  # named explicitly: the same model
    assert Runtime.open(max_side=512).max_side == 512  # the caller's choice wins
    assert Runtime.open(brightness_model).max_side is None  # other models: their own size
    assert Runtime.open().size_for(np.zeros((768, 1024, 3), np.uint8)) == (576, 768)
    assert Runtime.open().size_for(np.zeros((480, 640, 3), np.uint8)) == (480, 640)
