"""The resident (device-memory, jitted) training path on tiny synthetic data with known
answers: its crops and targets against the host pipeline's, its sampling shares, and its
multi-step update.

The code is JAX-only. The test process normally runs Keras on TensorFlow (the CPU
default), and Keras' backend is fixed at import: then :func:`test_resident_under_jax` runs
this file again in a subprocess with ``KERAS_BACKEND=jax``, where the other tests run.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="JAX not installed (pip install jax): the resident path "
                    "is JAX code")
import keras

from crowdcount.model.density import density_map, downsample
from crowdcount.model.types import Sample
from crowdcount.training.data import WeightedReader
from crowdcount.training.kernels import crop_sigmas, head_sigmas
from crowdcount.training.readers.base import Kernel
from crowdcount.training.targets import Augment, crop_density, density_target
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ON_JAX = keras.backend.backend() == "jax"
jax_only = pytest.mark.skipif(not ON_JAX, reason="Keras is on "
                              f"{keras.backend.backend()} here: runs in the JAX subprocess "
                              "of test_resident_under_jax")
#: No randomness at all: scale 1, no flip, no colour. A crop the image's size is the image.
PLAIN = Augment(scale=(1.0, 1.0), serve_side=None, flip=False, colour=0.0, grey=0.0)
SIZE = (96, 128)
FIXED = Kernel("fixed", 4.0)


class ListReader:
    """A reader over samples in memory (the Reader protocol)."""

    def __init__(self, samples: list[Sample], kernel: Kernel, name: str = "mem") -> None:
        self.samples, self.kernel, self.name = samples, kernel, name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def heads(n: int, seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    h, w = size
    return np.random.default_rng(seed).uniform([4, 4], [w - 4, h - 4], (n, 2)).astype(np.float32)


def picture(seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def sampler(samples: list[Sample], crop: tuple[int, int], kernel: Kernel = FIXED,
            augment: Augment = PLAIN, stride: int = 8, max_points: int | None = None):
    import jax

    from crowdcount.training.resident import CropSampler, pack

    packed = pack([WeightedReader(ListReader(samples, kernel), 1.0, augment)], max_points or 1)
    return CropSampler(packed, crop, stride, max_points), jax.device_put(packed.arrays())


def draw(cs, arrays, n: int, seed: int = 0):
    """``n`` examples, one per key: (images, targets) as NumPy."""
    import jax

    x, y = jax.jit(cs.batch)(arrays, jax.random.split(jax.random.key(seed), n))
    return np.asarray(x), np.asarray(y)


@pytest.mark.skipif(ON_JAX, reason="already on JAX")
@pytest.mark.timeout(900)  # the whole file once more: ~3 minutes on a busy 2-core machine
def test_resident_under_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    # everything ran there but this test and the TensorFlow one
    assert re.search(r"\b\d+ passed, 2 skipped\b", out.stdout), out.stdout[-2000:]


@jax_only
@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_plain_crop_is_the_image_and_its_target_density_target(mode):
    pts = heads(25)
    kernel = Kernel(mode, 4.0)
    cs, arrays = sampler([Sample(picture(), 25.0, pts)], SIZE, kernel)
    x, y = draw(cs, arrays, 2)
    np.testing.assert_allclose(x[0], picture(), atol=1e-3)  # scale 1: untouched pixels
    target = y[0, ..., 0]
    assert target.shape == (12, 16)
    assert target.sum() == pytest.approx(25.0, rel=1e-5)
    ref = density_target(pts, SIZE, kernel, 8)
    # density_target filters kernels wider than 4 px on a 2x coarser grid (model.density's
    # work factor): a few % of the peak apart from the exact value computed here.
    assert np.abs(target - ref).max() < 0.1 * ref.max()
    if mode == "fixed":  # the exact value: the same kernels on the full-resolution grid
        exact = downsample(density_map(pts, SIZE, 4.0, 1), 8)
        np.testing.assert_allclose(target, exact, atol=1e-5)


@jax_only
@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_host_and_resident_paths_build_the_same_target_for_one_crop(mode):
    """``training.kernels`` is the one rule: for crops the resident sampler draws (at scale
    0.7, so adaptive kernels scale, and smaller than the image, so some heads lose their
    neighbours to the crop edge), the host pipeline's target builder (``crop_density``,
    what ``make_example`` uses) gives the same sigmas and the same map."""
    import jax

    pts = heads(60, seed=7)
    kernel = Kernel(mode, 4.0)
    sample = Sample(picture(), 60.0, pts)
    aug = Augment(scale=(0.7, 0.7), serve_side=None, flip=False, colour=0.0, grey=0.0)
    cs, arrays = sampler([sample], (48, 64), kernel, aug)
    sigmas, scales = head_sigmas(pts, kernel)
    cut = 0
    for seed in range(4):
        _, where, inside, sigma = jax.jit(cs.crop_points)(arrays, jax.random.key(seed))
        kept = np.flatnonzero(np.asarray(inside)[: len(pts)])
        assert 0 < len(kept) < len(pts)
        cut += len(pts) - len(kept)
        np.testing.assert_allclose(np.asarray(sigma)[kept], crop_sigmas(sigmas[kept], scales, 0.7),
                                   rtol=1e-5)
        device = np.asarray(cs.density_target(where, inside, sigma))[..., 0]
        host = crop_density(sample, kept, np.asarray(where)[kept], 0.7, (48, 64), kernel, 8)
        assert device.sum() == pytest.approx(len(kept), rel=1e-4)
        assert host.sum() == pytest.approx(len(kept), rel=1e-4)
        # model.density bins per-head sigmas and filters wide kernels on a coarser grid:
        # a few % of the peak apart from the exact per-head value computed on the device.
        assert np.abs(device - host).max() < 0.1 * host.max()
    assert cut > 0


@jax_only
def test_crop_target_sums_to_heads_inside_and_outside_heads_are_masked():
    """A 48x64 crop of a 96x128 image at scale 1: the crop's place is random, so which heads
    are inside is checked through the image itself: each head is a marked pixel."""
    pts = heads(40, seed=4)
    image = np.zeros((*SIZE, 3), np.uint8)
    for x, y in pts.astype(int):
        image[y, x] = (0, 255, 0)
    assert (image[..., 1] == 255).sum() == 40  # one pixel each
    cs, arrays = sampler([Sample(image, len(pts), pts)], (48, 64))
    x, y = draw(cs, arrays, 16, seed=3)
    counts = y.sum(axis=(1, 2, 3))
    for crop, count in zip(x, counts, strict=True):
        marks = (crop[..., 1] > 250)
        assert count == pytest.approx(marks.sum(), abs=1e-4)
    assert len(set(np.round(counts, 3))) > 1  # the crops really moved

    pcs, parrays = sampler([Sample(image, len(pts), pts)], (48, 64), max_points=64)
    xp, yp = draw(pcs, parrays, 16, seed=3)
    for crop, target in zip(xp, yp, strict=True):
        marks = np.argwhere(crop[..., 1] > 250)  # (row, col) of each head inside
        n = int(target[:, 2].sum())
        assert n == len(marks)
        assert target[:n, 2].min() == 1 and np.all(target[n:] == 0)  # padding is zeros
        got = sorted(map(tuple, np.floor(target[:n, 1::-1] * 8).astype(int)))
        assert got == sorted(map(tuple, marks))


@jax_only
def test_flipped_crops_mirror_points():
    pts = heads(6, seed=1)
    image = picture(1)
    flip = Augment(scale=(1.0, 1.0), serve_side=None, flip=True, colour=0.0, grey=0.0)
    cs, arrays = sampler([Sample(image, 6.0, pts)], SIZE, augment=flip, max_points=8)
    x, y = draw(cs, arrays, 24, seed=5)
    flipped = [np.allclose(a, image[:, ::-1], atol=1e-3) for a in x]
    plain = [np.allclose(a, image, atol=1e-3) for a in x]
    assert all(f != p for f, p in zip(flipped, plain, strict=True))
    assert 4 <= sum(flipped) <= 20  # about half
    for f, target in zip(flipped, y, strict=True):
        want = np.stack([128 - pts[:, 0] if f else pts[:, 0], pts[:, 1]], axis=1) / 8
        np.testing.assert_allclose(target[:6, :2], want, atol=1e-4)


@jax_only
def test_scaled_crop_moves_points_with_the_image():
    """At scale 2 a 96x128 crop of the enlarged image holds the heads whose doubled
    positions fall in it, each on the pixel the doubled dot landed on."""
    pts = heads(40, seed=2)
    image = np.zeros((*SIZE, 3), np.uint8)
    for x, y in pts.astype(int):
        image[y, x] = 255
    zoom = Augment(scale=(2.0, 2.0), serve_side=None, flip=False, colour=0.0, grey=0.0)
    cs, arrays = sampler([Sample(image, 40.0, pts)], SIZE, augment=zoom, max_points=64)
    x, y = draw(cs, arrays, 6, seed=7)
    for crop, target in zip(x, y, strict=True):
        n = int(target[:, 2].sum())
        assert 0 < n < 40
        for px, py in target[:n, :2] * 8:
            r, c = int(py), int(px)
            assert crop[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3].max() > 20


@jax_only
def test_sampling_shares_follow_weight_times_items():
    import jax

    from crowdcount.training.resident import CropSampler, pack

    def src(n, value, weight):
        image = np.full((*SIZE, 3), value, np.uint8)
        return WeightedReader(ListReader([Sample(image, 1.0, heads(1))] * n, Kernel()),
                              weight, PLAIN)

    # shares 2*1 : 3*2 : 1*0 -> 0.25, 0.75, 0
    packed = pack([src(2, 10, 1.0), src(3, 200, 2.0), src(1, 100, 0.0)])
    cs = CropSampler(packed, (32, 32), 8)
    x, _ = jax.jit(cs.batch)(jax.device_put(packed.arrays()),
                             jax.random.split(jax.random.key(1), 4000))
    first = np.asarray(x)[:, 0, 0, 0]
    assert np.mean(first == 10) == pytest.approx(0.25, abs=0.03)
    assert np.mean(first == 200) == pytest.approx(0.75, abs=0.03)
    assert not np.any(first == 100)


@jax_only
def test_small_image_is_padded_with_its_mean_colour():
    image = np.zeros((40, 50, 3), np.uint8)
    image[:, :25] = (200, 100, 0)  # mean (100, 50, 0)
    cs, arrays = sampler([Sample(image, 1.0, heads(1, size=(40, 50)))], (64, 64))
    x, _ = draw(cs, arrays, 4, seed=2)
    for crop in x:
        on = (crop == (200, 100, 0)).all(axis=2).sum() + (crop == 0).all(axis=2).sum()
        assert on == 40 * 50  # the whole image, unscaled, once
        assert (np.abs(crop - (100, 50, 0)).max(axis=2) < 1e-3).sum() == 64 * 64 - 40 * 50


def tiny_model():
    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.training.losses import DensityLoss, count_abs_error

    keras.utils.set_random_seed(0)
    model = build(ModelSpec(alpha=0.35, decoder_width=16), None)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=DensityLoss(),
                  metrics=[keras.metrics.MeanMetricWrapper(count_abs_error, name="count_mae")])
    return model


def dots(n_images: int = 4) -> list[Sample]:
    out = []
    for k in range(n_images):
        pts = heads(5 + 3 * k, seed=10 + k)
        image = np.full((*SIZE, 3), 30, np.uint8)
        for x, y in pts.astype(int):
            image[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 230
        out.append(Sample(image, float(len(pts)), pts))
    return out


def trainer(model, steps_per_epoch: int, k: int, aug: Augment = PLAIN):
    from crowdcount.training.resident import ResidentTrainer, pack

    packed = pack([WeightedReader(ListReader(dots(), Kernel("fixed", 4.0)), 1.0, aug)])
    return ResidentTrainer(model, packed, (64, 96), 8, batch_size=4,
                           steps_per_epoch=steps_per_epoch, steps_per_call=k, seed=3)


@jax_only
def test_multi_step_calls_reduce_the_loss():
    """Loss on one fixed batch of crops before and after 40 steps in calls of 5."""
    import jax

    model = tiny_model()
    t = trainer(model, steps_per_epoch=10, k=5)
    x, y = t.sampler.batch(t.arrays, jax.random.split(jax.random.key(99), 8))
    before = float(model.evaluate(np.asarray(x), np.asarray(y), verbose=0)[0])
    history = model.fit(t.feeder, epochs=4, callbacks=[t], verbose=0)
    assert len(history.history["loss"]) == 4
    assert int(model.optimizer.iterations) == 40  # 2 calls of 5 steps, 4 epochs
    after = float(model.evaluate(np.asarray(x), np.asarray(y), verbose=0)[0])
    assert after < 0.8 * before, (before, after)  # 183 -> 115 when written


@jax_only
def test_k_steps_in_one_call_equal_k_calls_of_one_step():
    """Step n draws its batch from fold_in(seed, n) however the steps are grouped, so the
    weights match (to float rounding: the scan may order operations differently)."""
    a, b = tiny_model(), tiny_model()
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    ta, tb = trainer(a, 4, 4), trainer(b, 4, 1)
    a.fit(ta.feeder, epochs=1, callbacks=[ta], verbose=0)
    b.fit(tb.feeder, epochs=1, callbacks=[tb], verbose=0)
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 4
    moved = 0.0
    fresh = tiny_model().get_weights()
    for wa, wb, w0 in zip(a.get_weights(), b.get_weights(), fresh, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.abs(wa - w0).max()))
    assert moved > 1e-3  # the steps did change the weights


@jax_only
def test_steps_per_call_must_divide_the_epoch():
    from crowdcount.model.errors import UserError

    with pytest.raises(UserError, match="must divide"):
        trainer(tiny_model(), steps_per_epoch=10, k=4)


@jax_only
def test_train_resident_end_to_end(tmp_path, generic_dataset):
    """``crowdcount train --resident``: same run folder, log, validation and checkpoints
    as the PyDataset path; the count error falls."""
    from crowdcount.training.train import TrainConfig, train

    result = train(TrainConfig(
        data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "run"), preset="fast",
        backbone_weights=None, epochs=4, steps_per_epoch=4, batch_size=4, crop=(64, 96),
        learning_rate=3e-3, val_every=4, verbose=0, resident=True, steps_per_call=2,
    ))
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["count_mae"]) < float(rows[0]["count_mae"])
    assert "val_generic_mae" in result["logs"]
    assert Path(result["best"]).is_file() and Path(result["last"]).is_file()
    model = keras.saving.load_model(result["last"], compile=False)
    assert model.output_shape == (None, None, None, 1)


@jax_only
def test_bfloat16_run_saves_float32_models(tmp_path, generic_dataset):
    """Mixed bfloat16 trains (variables stay float32) and the checkpoints come out as
    float32 models, so export and CPU serving see the usual network."""
    from crowdcount.training.train import TrainConfig, train

    result = train(TrainConfig(
        data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "run"), preset="fast",
        backbone_weights=None, alpha=0.35, epochs=1, steps_per_epoch=2, batch_size=2,
        crop=(64, 64), val_every=4, verbose=0, resident=True, precision="bfloat16",
    ))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    model = keras.saving.load_model(result["last"], compile=False)
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    image = np.full((1, 64, 64, 3), 120, np.float32)
    assert np.asarray(model.predict_on_batch(image)).dtype == np.float32


@jax_only
def test_interrupted_resident_run_resumes(tmp_path, generic_dataset):
    """Killed after an epoch, ``--resume`` continues from the backup (weights, optimizer
    state, epoch) and the step counter, hence the crops drawn, continue with it."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "training", "train", "--data", f"generic:{generic_dataset}",
            "--run-dir", str(run), "--backbone-weights", "none", "--alpha", "0.35",
            "--epochs", "4", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64x64",
            "--verbose", "0", "--resident", "--steps-per-call", "2"]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    history = run / "history.csv"

    def epoch_logged() -> bool:
        assert proc.poll() is None, "training ended before it could be interrupted"
        return history.exists() and len(history.read_text().strip().splitlines()) >= 2

    # at least one epoch done and backed up
    asyncio.run(wait_until(epoch_logged, timeout=240, what="an epoch in history.csv",
                           interval=0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(history.read_text().strip().splitlines()) - 1
    assert 1 <= done < 4
    resumed = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(history) as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    after = epochs[done:]
    assert epochs[:done] == list(range(done)), epochs
    assert after and after[0] >= done and after == list(range(after[0], 4)), epochs


@pytest.mark.skipif(ON_JAX, reason="checks the TensorFlow backend's refusal")
def test_resident_on_tensorflow_is_a_usage_error(tmp_path, generic_dataset):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "training", "train", "--data", f"generic:{generic_dataset}",
         "--run-dir", str(tmp_path / "run"), "--backbone-weights", "none", "--resident"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].endswith(
        "--resident needs Keras on JAX (KERAS_BACKEND=jax), not tensorflow")
