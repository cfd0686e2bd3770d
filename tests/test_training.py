"""Training runs on the CPU on generated data: the seed preset trains and exports, the fast
preset learns, and an interrupted run resumes where it stopped."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crowdcount.training.train import TrainConfig, train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_seed_preset_trains_an_epoch_and_exports(tmp_path, generic_dataset):
    from crowdcount.model.runtime import Runtime
    from crowdcount.training.export import export_onnx

    result = train(TrainConfig(
        data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "run"), preset="seed",
        backbone_weights=None, epochs=1, steps_per_epoch=2, batch_size=4, val_every=4,
        verbose=0,
    ))
    import keras

    model = keras.saving.load_model(result["last"], compile=False)
    assert model.input_shape == (None, 160, 160, 3)
    assert model.output_shape == (None, 160, 160, 1)
    assert not model.get_layer("mobilenetv2").trainable  # frozen, as the seed had it
    assert "val_generic_mae" in result["logs"]
    onnx = export_onnx(result["last"], tmp_path / "seed.onnx")
    image = np.full((160, 160, 3), 128, np.uint8)
    keras_count = float(model.predict_on_batch(image[None].astype(np.float32)).sum())
    assert Runtime.open(onnx, "onnx").count(image) == pytest.approx(keras_count, rel=1e-3, abs=1e-6)


def test_fast_preset_learns_counts(tmp_path, generic_dataset):
    """A few steps on dots: the predicted count must move towards the truth."""
    cfg = TrainConfig(
        data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "run"), preset="fast",
        backbone_weights=None, epochs=4, steps_per_epoch=4, batch_size=4, crop=(64, 96),
        learning_rate=3e-3, val_every=4, verbose=0, keep_epochs=True,
    )
    result = train(cfg)
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    first, last = float(rows[0]["count_mae"]), float(rows[-1]["count_mae"])
    assert last < first
    assert Path(result["best"]).is_file()
    kept = sorted(p.name for p in (tmp_path / "run").glob("epoch*.keras"))
    assert kept == ["epoch001.keras", "epoch002.keras", "epoch003.keras", "epoch004.keras"]


def test_missing_backbone_weights_is_clear(tmp_path, generic_dataset):
    from crowdcount.model.architecture import BackboneWeightsError

    with pytest.raises(BackboneWeightsError, match="backbone weights file not found"):
        train(TrainConfig(data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "r"),
                          backbone_weights=str(tmp_path / "nope.h5"), epochs=1, verbose=0))


def test_interrupted_run_resumes(tmp_path, generic_dataset):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "training", "train", "--data", f"generic:{generic_dataset}",
            "--run-dir", str(run), "--backbone-weights", "none", "--epochs", "4",
            "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64x64", "--verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    history = run / "history.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if history.exists() and len(history.read_text().strip().splitlines()) >= 2:
            break  # at least one epoch done and backed up
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(history.read_text().strip().splitlines()) - 1
    assert 1 <= done < 4
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with open(history) as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    before, after = epochs[:done], epochs[done:]
    assert before == list(range(done)), epochs
    # A resume continues after the last finished epoch, where a restart would log epoch 0
    # again. (The backup is written before the CSV row, so the epoch the kill interrupted
    # may have been backed up without being logged: then the log skips it.)
    assert after and after[0] >= done and after == list(range(after[0], 4)), epochs


def test_bayesian_loss_trains_on_points(tmp_path, generic_dataset):
    """The point loss runs end to end through the pipeline (padded points + masks) and its
    count error moves towards the truth, as the density loss does. From a random network
    the background term would push every cell below the final ReLU's zero on the first step
    (a dead map), so this from-scratch run leaves it out; fine-tuning keeps it."""
    result = train(TrainConfig(
        data=[f"generic:{generic_dataset}"], run_dir=str(tmp_path / "run"), preset="fast",
        backbone_weights=None, epochs=4, steps_per_epoch=4, batch_size=4, crop=(64, 96),
        learning_rate=3e-3, val_every=4, loss="bayesian", max_points=32, bayes_background=0.0,
        verbose=0,
    ))
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert float(rows[-1]["count_mae"]) < float(rows[0]["count_mae"])
    assert "val_generic_mae" in result["logs"]


def test_average_weights_script_means_every_weight(tmp_path):
    """scripts/average_weights.py: the averaged model's weights are the element-wise mean."""
    import importlib.util

    import keras

    spec = importlib.util.spec_from_file_location("avg", ROOT / "scripts" / "average_weights.py")
    avg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(avg)
    paths = []
    for i in range(3):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.set_weights([np.full((4, 2), i, np.float32), np.full(2, 10 * i, np.float32)])
        paths.append(str(tmp_path / f"m{i}.keras"))
        model.save(paths[-1])
    out = avg.average(paths, str(tmp_path / "avg.keras"))
    kernel, bias = keras.saving.load_model(out).get_weights()
    np.testing.assert_allclose(kernel, 1.0)
    np.testing.assert_allclose(bias, 10.0)
    # Weighted (WiSE-FT): a quarter of model 0 and three quarters of model 2.
    out = avg.average([paths[0], paths[2]], str(tmp_path / "mix.keras"), weights=[1, 3])
    kernel, bias = keras.saving.load_model(out).get_weights()
    np.testing.assert_allclose(kernel, 1.5)
    np.testing.assert_allclose(bias, 15.0)
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        avg.average(paths, str(tmp_path / "bad.keras"), weights=[1, 2])


def test_grown_architecture_starts_from_a_trained_model():
    """--init-model into a network with the stride-32 stage: every layer both share keeps the
    trained weights, only the new ones start fresh, and the output still has stride 8."""
    import keras

    from crowdcount.model.architecture import ModelSpec, build
    from crowdcount.training.train import copy_matching_weights

    keras.utils.set_random_seed(1)
    trained = build(ModelSpec(alpha=0.35))
    keras.utils.set_random_seed(2)
    grown = build(ModelSpec(alpha=0.35, top_stride=32))
    copied, fresh = copy_matching_weights(trained, grown)
    shared = {layer.name for layer in trained._flatten_layers(include_self=False)
              if layer.weights and not isinstance(layer, keras.Model)}
    assert copied == len(shared)  # every layer of the old network found its place
    assert fresh > 0
    def layer(model: keras.Model, name: str) -> keras.Layer:
        return next(x for x in model._flatten_layers() if x.name == name)

    for name in ("head_conv", "s16_proj", "block_12_project"):  # decoder and backbone
        for a, b in zip(layer(trained, name).get_weights(), layer(grown, name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    untouched = grown.get_layer("s32_proj").get_weights()[0]
    assert untouched.shape[-1] == 64 and not np.allclose(untouched, 0)
    assert grown.predict_on_batch(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 8, 12, 1)
