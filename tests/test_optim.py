"""FineTuneAdam (training/optim.py): the warm-up scales Adam's first, sign-like steps and the
per-entry factors scale only the entries they name; both run inside the update step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crowdcount.training.optim import FineTuneAdam


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    model.set_weights([np.zeros((3, 2), np.float32)])
    return model


def _first_step(optimizer: keras.optimizers.Optimizer, model: keras.Model) -> np.ndarray:
    model.compile(optimizer=optimizer, loss="mse")
    x = np.ones((4, 3), np.float32)
    model.train_on_batch(x, np.ones((4, 2), np.float32))
    return model.get_weights()[0]


@pytest.mark.parametrize(("warmup", "size"), [(0, 0.1), (10, 0.01), (1, 0.1)])
def test_warmup_scales_the_first_step(warmup, size):
    """Adam's first update is learning_rate * sign(gradient) for every weight; a warm-up of
    N steps makes it learning_rate / N."""
    w = _first_step(FineTuneAdam(0.1, warmup_steps=warmup), _model())
    np.testing.assert_allclose(np.abs(w), size, rtol=1e-3)


def test_factors_scale_only_their_entries():
    model = _model()
    kernel = model.layers[0].kernel
    factor = np.array([[1, 0], [0.5, 0], [1, 1]], np.float32)
    w = _first_step(FineTuneAdam(0.1, scales={id(kernel): factor}), model)
    np.testing.assert_allclose(np.abs(w), 0.1 * factor, rtol=1e-3, atol=1e-7)


def test_config_keeps_the_warmup():
    opt = FineTuneAdam(1e-4, warmup_steps=200)
    again = FineTuneAdam.from_config(opt.get_config())
    assert again.warmup_steps == 200
