"""Calibration: the TensorFlow-free ONNX writer and graph cut against Keras itself, and
``crowdcount calibrate`` end to end on generated marked frames (plus BRT camera 2 when
../shared is there).

The writer and the cut are backend-neutral and run in this process (Keras on TensorFlow
here); calibration itself runs as the command, in a subprocess with TensorFlow made unimportable,
as the serving install has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch not installed (the calibrate extra)")
pytest.importorskip("onnx", reason="onnx not installed (the calibrate extra)")

import keras
import onnxruntime as ort

from crowdcount.model.architecture import ModelSpec, build
from crowdcount.model.bundled import DEFAULT_KERAS, DEFAULT_ONNX
from crowdcount.training.graph_cut import split
from crowdcount.training.onnx_writer import write_onnx
from tests.fixtures.datasets import make_generic

ROOT = Path(__file__).resolve().parents[1]
#: Makes TensorFlow absent as in the serving install: ``import`` fails and ``find_spec``
#: finds nothing (a ``None`` in sys.modules would not do: Keras takes a "tensorflow" key
#: there to mean TensorFlow is loaded).
NO_TENSORFLOW = """
import importlib.util, sys
_find = importlib.util.find_spec
def _find_spec(name, package=None):
    return None if name.split(".")[0] in ("tensorflow", "tf2onnx") else _find(name, package)
importlib.util.find_spec = _find_spec
class _NoTF:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf2onnx"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTF())
"""


def _perturbed(spec: ModelSpec, seed: int = 0) -> keras.Model:
    """A network whose every weight (batch-norm statistics too) is random, so a layer the
    writer mistranslates changes the output."""
    model = build(spec)
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if "variance" in var.path:
            var.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "gamma" in var.path:
            var.assign(rng.uniform(0.8, 1.2, shape).astype(np.float32))
        else:
            var.assign((np.asarray(var.numpy()) + rng.normal(0, 0.05, shape)).astype(
                np.float32))
    head = model.get_layer("density_scaled")  # its ReLU must not zero the whole map
    head.bias.assign(np.full(tuple(head.bias.shape), 0.5, np.float32))
    return model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize("top_stride", [16, 32])
def test_onnx_writer_matches_keras(tmp_path, top_stride):
    model = _perturbed(ModelSpec(alpha=0.35, top_stride=top_stride))
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 64, 3)).astype(np.float32)
    out = _run(write_onnx(model, tmp_path / "m.onnx"), x)
    ref = np.asarray(model(x, training=False))
    assert out.shape == ref.shape == (2, 12, 8, 1)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_onnx_writer_reproduces_the_bundled_export(tmp_path):
    """The bundled .keras written by this module counts as the bundled tf2onnx export does."""
    model = keras.saving.load_model(DEFAULT_KERAS, compile=False)
    x = np.random.default_rng(2).uniform(0, 255, (1, 128, 96, 3)).astype(np.float32)
    ours = _run(write_onnx(model, tmp_path / "m.onnx"), x)
    np.testing.assert_allclose(ours.sum(), _run(DEFAULT_ONNX, x).sum(), rtol=1e-4)


def test_graph_cut_composes_to_the_whole_network():
    model = _perturbed(ModelSpec(alpha=0.35), seed=3)
    bottom, top = split(model, "block_5_add")
    x = np.random.default_rng(4).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    feats = bottom(x)
    assert tuple(feats.shape) == (1, 8, 12, 16)  # alpha 0.35: 16 channels
    np.testing.assert_allclose(np.asarray(top(feats)), np.asarray(model(x)), rtol=1e-5,
                               atol=1e-7)
    # the halves share the original's variables: training the top trains the model
    ids = {id(v) for v in model.trainable_variables}
    assert {id(v) for v in top.trainable_variables} <= ids
    assert len(top.trainable_variables) < len(model.trainable_variables)


def test_graph_cut_refuses_a_layer_that_does_not_cut():
    model = build(ModelSpec(alpha=0.35))
    with pytest.raises(ValueError, match="does not cut"):
        split(model, "block_9_add")  # the decoder also needs block_5_add


def calibrate(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``crowdcount calibrate`` as the serving install runs it: no TensorFlow, Keras on the
    backend calibration picks (torch where installed, else JAX)."""
    code = NO_TENSORFLOW + ("from crowdcount.streamer.cli import main; "
                            "sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", code, "calibrate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def count(model: Path, folder: Path) -> list[float]:
    result = subprocess.run(
        [sys.executable, "-m", "crowdcount.streamer.cli", "count", str(folder), "--model",
         str(model), "--backend", "onnx", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["count"] for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_calibrate_learns_generated_heads_and_writes_a_servable_model(tmp_path):
    """Bright dots on a dark floor are not heads to the bundled model; marked as heads on
    eight frames, they are learnt, the guard keeps the model and serving counts with it."""
    counts = [3, 0, 7, 12, 5, 9, 4, 6]
    data = make_generic(tmp_path / "marked", counts)
    out = tmp_path / "camera.onnx"
    result = calibrate(f"generic:{data}", "-o", str(out), "--time-budget", "20", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    assert report["kept"] is True
    assert report["frames"] == 8 and report["held_out"] >= 1
    assert report["mae_after"] < report["mae_before"]
    assert out.is_file() and result.stdout.splitlines()[-1] == str(out)
    # fresh frames of the same kind, never marked: the calibrated model counts them better
    fresh = make_generic(tmp_path / "fresh", [2, 8, 5, 10], seed=9)
    truth = np.array([2, 8, 5, 10], float)
    after = np.abs(np.array(count(out, fresh)) - truth).mean()
    before = np.abs(np.array(count(DEFAULT_ONNX, fresh)) - truth).mean()
    assert after < before


@pytest.mark.parametrize(("args", "message"), [
    (["--time-budget", "0"], "--time-budget"),
    (["--time-budget", "nan"], "--time-budget"),
    (["--base", "model.onnx"], "Keras model"),
])
def test_calibrate_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    data = make_generic(tmp_path / "marked", [1, 2, 3, 4, 5])
    result = calibrate(f"generic:{data}", "-o", str(tmp_path / "x.onnx"), *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_calibrate_needs_five_frames(tmp_path):
    data = make_generic(tmp_path / "marked", [1, 2, 3, 4])
    result = calibrate(f"generic:{data}", "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2
    assert "at least 5 marked frames" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.timeout(1800)  # the whole recipe on JAX: ~2-5 s per step on 2 loaded cores
def test_calibrating_brt_camera_2_on_one_day_lowers_the_error_on_other_days(shared, tmp_path):
    """Ten frames of 2017-04-19 marked (a folder of the user's own, in the generic format,
    linking to the real frames), the model scored on every 4th frame of the other days.

    The budget is the largest the CLI takes (an hour), so the recipe runs all its steps:
    within the default budget a slow backend (JAX, ~10x slower per step than PyTorch) stops
    at a number of steps that depends on the load, and so did the verdict (CI failed it
    once, the same commit passed here)."""
    brt = shared / "data" / "beijing_brt_cam2"
    doc = json.loads((brt / "annotations.json").read_text())
    day = [e for e in doc["images"] if Path(e["file"]).name.startswith("2-20170419")]
    others = [i for i, e in enumerate(doc["images"])
              if not Path(e["file"]).name.startswith("2-20170419")]
    marked = tmp_path / "marked"
    (marked / "frames").mkdir(parents=True)
    entries = []
    for j in np.linspace(0, len(day) - 1, 10).round().astype(int):
        name = Path(day[j]["file"]).name
        (marked / "frames" / name).symlink_to(brt / day[j]["file"])
        entries.append({"file": f"frames/{name}", "points": day[j]["points"]})
    (marked / "annotations.json").write_text(json.dumps({"images": entries}))
    out = tmp_path / "camera.onnx"
    result = calibrate(f"generic:{marked}", "-o", str(out), "--json",
                       "--time-budget", "3600", timeout=1700)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    assert report["frames"] == 10 and report["mae_after"] < report["mae_before"]
    from crowdcount.training.calibrate import Recipe

    assert report["steps"] == Recipe().steps  # all the recipe's, not cut short by the budget

    from crowdcount.model.runtime import Runtime
    from crowdcount.training.readers import open_dataset

    reader = open_dataset(f"generic:{brt}")
    tests = [reader[i] for i in others[::4]]
    truth = np.array([s.count for s in tests])
    errors = {}
    for name, model in (("before", DEFAULT_ONNX), ("after", out)):
        runtime = Runtime.open(model, "onnx", threads=2)
        errors[name] = np.abs(np.array([runtime.count(s.image) for s in tests]) - truth).mean()
    assert errors["after"] < errors["before"]
