"""All backends agree on the bundled model (OpenVINO with ONNX Runtime, the exports with
Keras), and exports round-trip to the Keras counts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from crowdcount.model.backends import load_backend
from crowdcount.model.bundled import DEFAULT_KERAS, DEFAULT_ONNX
from crowdcount.model.preprocess import prepare
from crowdcount.model.runtime import Runtime
from tests.fixtures.datasets import crowd_picture, write_jpeg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crowd_image() -> np.ndarray:
    return crowd_picture(40)


@pytest.fixture(scope="module")
def keras_count(crowd_image) -> float:
    return Runtime.open(DEFAULT_KERAS, "keras").count(crowd_image)


def test_onnx_matches_keras(crowd_image, keras_count):
    onnx_count = Runtime.open(DEFAULT_ONNX, "onnx").count(crowd_image)
    assert keras_count > 5
    assert onnx_count == pytest.approx(keras_count, rel=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="the openvino package is not installed")
def test_openvino_matches_onnx_runtime():
    """The serving default and its fallback count the same: within 1 % on crowd pictures."""
    ov_rt, ort_rt = Runtime.open(DEFAULT_ONNX, "openvino"), Runtime.open(DEFAULT_ONNX, "onnx")
    for n, seed in ((40, 1), (80, 2)):
        image = crowd_picture(n, seed=seed)
        ort_count = ort_rt.count(image)
        assert ort_count > 5
        assert ov_rt.count(image) == pytest.approx(ort_count, rel=0.01)


def test_tflite_exports_match_keras(tmp_path, crowd_image, keras_count):
    from crowdcount.training.export import export_tflite

    fp32 = export_tflite(DEFAULT_KERAS, tmp_path / "m.tflite", (480, 640))
    runtime = Runtime.open(fp32)
    assert runtime.backend.fixed_size == (480, 640) and runtime.backend.fixed_batch == 1
    assert runtime.count(crowd_image) == pytest.approx(keras_count, rel=1e-3)
    # Batched calls through a batch-1 backend still answer per image.
    maps = runtime.predict([crowd_image, crowd_image[:, ::-1].copy()])
    assert maps[0].shape == (60, 80) and len(maps) == 2
    fp16 = export_tflite(DEFAULT_KERAS, tmp_path / "m16.tflite", (480, 640), "fp16")
    assert Runtime.open(fp16).count(crowd_image) == pytest.approx(keras_count, rel=0.02)
    # int8 calibrates its activation ranges on pictures like the ones it will count (here
    # the same kind of cartoon crowd; dark dot pictures left the ranges too narrow).
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    people = (10, 25, 40, 60)
    for i, n in enumerate(people):
        write_jpeg(calibration / f"c{i}.jpg", crowd_picture(n, seed=100 + i))
    (calibration / "annotations.json").write_text(json.dumps(
        {"images": [{"file": f"c{i}.jpg", "count": n} for i, n in enumerate(people)]}))
    int8 = export_tflite(DEFAULT_KERAS, tmp_path / "m8.tflite", (480, 640), "int8",
                         representative=f"generic:{calibration}")
    assert int8.stat().st_size < fp32.stat().st_size / 2
    assert Runtime.open(int8).count(crowd_image) == pytest.approx(keras_count, rel=0.25)


def test_onnx_export_round_trip(tmp_path, crowd_image, keras_count):
    from crowdcount.training.export import export_onnx

    path = export_onnx(DEFAULT_KERAS, tmp_path / "m.onnx")
    backend = load_backend(path, "onnx")
    assert backend.fixed_size is None  # any multiple of 32
    out = backend.predict(prepare(crowd_image, (480, 640))[None])
    assert float(out.sum()) == pytest.approx(keras_count, rel=1e-3)


def _export_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crowdcount.streamer.cli", "export", str(DEFAULT_KERAS),
         "--format", "tflite", *args], capture_output=True, text=True, timeout=600)


def test_tflite_export_cli_shows_only_our_lines(tmp_path):
    """TensorFlow prints a TensorSpec line per weight (and C++ INFO lines) while converting;
    the user sees only the export's own progress and the path, unless --verbose."""
    out = tmp_path / "m.tflite"
    quiet = _export_cli("-o", str(out))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == f"{out}\n"
    assert quiet.stderr.splitlines() == [
        f"export: loading {DEFAULT_KERAS} at a fixed 1x480x640 input",
        "export: converting to TFLite (fp32)",
        f"export: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)",
    ]
    loud = _export_cli("-o", str(tmp_path / "v.tflite"), "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert "TensorSpec(" in loud.stdout + loud.stderr
    assert "export: converting to TFLite (fp32)" in loud.stderr


def test_export_user_error_stays_one_line(tmp_path):
    missing = tmp_path / "none.keras"
    result = subprocess.run(
        [sys.executable, "-m", "crowdcount.streamer.cli", "export", str(missing), "-o",
         str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"export: loading {missing}", f"crowdcount export: error: model not found: {missing}"]
