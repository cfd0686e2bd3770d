"""Function-preserving growth (training/grow.py): the bundled model grown by the stride-32
stage and/or a wider decoder counts exactly what the bundled model counts before any step,
the new capacity still learns, and ``crowdcount train --init-model`` takes that path."""

from __future__ import annotations

import numpy as np
import pytest

from crowdcount.model.bundled import DEFAULT_KERAS
from tests.fixtures.datasets import crowd_picture

pytestmark = pytest.mark.slow

#: (top_stride, decoder_width) of every grown variant; the bundled model is (16, 64).
VARIANTS = [(32, 64), (16, 128), (32, 128)]


@pytest.fixture(scope="module")
def bundled():
    import keras

    return keras.saving.load_model(DEFAULT_KERAS, compile=False)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Generated crowds at two sizes' worth of content, batched at one size."""
    return np.stack([crowd_picture(n, (256, 320), seed=s)
                     for n, s in ((40, 1), (120, 2), (0, 3))]).astype(np.float32)


def _counts(model, frames: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_on_batch(frames), np.float64).sum(axis=(1, 2, 3))


@pytest.mark.parametrize(("top", "width"), VARIANTS)
def test_grown_model_counts_exactly_like_the_bundled_one(bundled, frames, top, width):
    import keras

    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.training.grow import grow

    keras.utils.set_random_seed(5)
    grown = build(ModelSpec(top_stride=top, decoder_width=width))
    growth = grow(bundled, grown)
    assert grown.count_params() > bundled.count_params()
    ref = _counts(bundled, frames)
    assert ref[0] > 5 and ref[1] > ref[0]  # the pictures are counted, not all zero
    np.testing.assert_allclose(_counts(grown, frames), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grown.predict_on_batch(frames), bundled.predict_on_batch(frames),
                               rtol=1e-5, atol=1e-7)
    assert ("up_s16" in growth.silent) == (top == 32)
    assert (growth.widened > 0) == (width > 64)


def test_silent_capacity_learns_on_the_first_step(bundled, frames):
    """Zero weights that read a non-zero input get a gradient: one SGD step moves the
    stride-32 branch's gate and the new channels' weights into the density head."""
    import keras

    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.training.grow import grow

    grown = build(ModelSpec(top_stride=32, decoder_width=128))
    grow(bundled, grown)
    grown.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    target = np.asarray(bundled.predict_on_batch(frames)) * 1.5  # more heads than it sees
    grown.train_on_batch(frames, target)
    assert np.abs(grown.get_layer("up_s16").get_weights()[0]).max() > 0
    head = grown.get_layer("density_scaled").get_weights()[0]  # (1, 1, 64, 1)
    assert np.abs(head[..., 32:, :]).max() > 0  # the new channels now reach the output


def test_a_smaller_target_is_refused(bundled):
    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.model.errors import UserError
    from crowdcount.training.grow import grow

    with pytest.raises(UserError, match="cannot grow"):
        grow(bundled, build(ModelSpec(decoder_width=32)))


def test_train_init_model_grows_preserving_and_fresh_does_not(tmp_path, generic_dataset,
                                                              bundled, frames):
    """``crowdcount train --init-model bundled --top-stride 32 --decoder-width 128`` with a
    zero learning rate saves a network that counts like the bundled one, and its start as
    ``start.keras``; ``--grow fresh`` (the old behaviour: new layers left as built) does
    not."""
    import keras

    from crowdcount.training.train import TrainConfig, train

    ref = _counts(bundled, frames)
    got = {}
    for mode in ("preserve", "fresh"):
        result = train(TrainConfig(
            data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / mode),
            init_model=str(DEFAULT_KERAS), grow=mode, top_stride=32, decoder_width=128,
            backbone_weights=None, learning_rate=0.0, epochs=1, steps_per_epoch=1,
            batch_size=1, crop=(64, 64), val_every=100, verbose=0,
        ))
        got[mode] = _counts(keras.saving.load_model(result["last"], compile=False), frames)
    np.testing.assert_allclose(got["preserve"], ref, rtol=1e-5, atol=1e-5)
    start = keras.saving.load_model(tmp_path / "preserve" / "start.keras", compile=False)
    np.testing.assert_allclose(_counts(start, frames), ref, rtol=1e-5, atol=1e-5)  # WiSE-FT end
    assert not (tmp_path / "fresh" / "start.keras").exists()
    assert np.abs(got["fresh"] - ref).max() > 0.5


def test_scaled_adam_slows_only_the_new_entries(bundled, frames):
    """--grow-lr-scale: with factor 0 the gate and the widened layers' new entries stay as
    grow() set them while the trained entries move; the trained block of a widened layer
    moves like any trained weight."""
    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.training.grow import grow
    from crowdcount.training.optim import FineTuneAdam

    grown = build(ModelSpec(top_stride=32, decoder_width=128))
    growth = grow(bundled, grown)
    before = {v.path: np.array(v) for v, _ in growth.new_entries}
    head_before = grown.get_layer("density_scaled").get_weights()[0]
    grown.compile(optimizer=FineTuneAdam(1e-3, scales=growth.lr_scales(0.0)), loss="mse")
    target = np.asarray(bundled.predict_on_batch(frames)) * 1.5
    for _ in range(2):
        grown.train_on_batch(frames, target)
    for var, mask in growth.new_entries:
        now, was = np.array(var), before[var.path]
        np.testing.assert_array_equal(now[mask > 0], was[mask > 0])
    head = grown.get_layer("density_scaled").get_weights()[0]
    assert np.abs(head[..., :32, :] - head_before[..., :32, :]).max() > 1e-4  # trained: moves
    np.testing.assert_array_equal(head[..., 32:, :], 0.0)  # new inputs: still closed
    assert np.abs(grown.get_layer("up_s16").get_weights()[0]).max() == 0
