"""Backend choice and the OpenVINO backend: the default rule, its fallback, shape caching,
exact counts on the brightness model, and inference that leaves the GIL to other threads.
(Its agreement with ONNX Runtime on the bundled model is in test_export.py, with the other
backends'.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from crowdcount.model.backends import backend_for, default_backend, load_backend
from crowdcount.model.bundled import DEFAULT_ONNX
from crowdcount.model.runtime import Runtime
from crowdcount.streamer.app import build_app
from crowdcount.streamer.cli import build_parser
from crowdcount.streamer.serve import load
from tests.fixtures.models import expected_count

ROOT = Path(__file__).resolve().parents[1]

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="the openvino package is not installed")


@needs_openvino
def test_default_is_openvino_where_it_runs_and_names_override(brightness_model):
    assert default_backend() == "openvino"
    assert Runtime.open(brightness_model).name == "openvino"
    assert Runtime.open(brightness_model, "onnx").name == "onnx"
    assert backend_for("m.tflite") == "tflite" and backend_for("m.onnx", "onnx") == "onnx"
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        backend_for("m.onnx", "tensorrt")


@needs_openvino
def test_openvino_counts_exactly_and_compiles_each_shape_once(brightness_model):
    rt = Runtime.open(brightness_model, "openvino", threads=1)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in [(480, 640), (256, 320), (480, 640)]]
    for _ in range(2):
        maps = [rt.predict([im])[0] for im in images]
    assert [m.shape for m in maps] == [(60, 80), (32, 40), (60, 80)]
    for image, density in zip(images, maps, strict=True):
        assert density.sum() == pytest.approx(expected_count(image), rel=1e-5)
    batched = rt.backend.predict(np.stack([images[0], images[2]]).astype(np.float32))
    assert batched.shape == (2, 60, 80)
    assert batched[1].sum() == pytest.approx(expected_count(images[2]), rel=1e-5)
    assert rt.backend.compiled_shapes == [(1, 256, 320), (1, 480, 640), (2, 480, 640)]


@needs_openvino
def test_openvino_keeps_a_bounded_number_of_compiled_shapes(brightness_model, monkeypatch):
    from crowdcount.model.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "MAX_SHAPES", 2)
    backend = load_backend(brightness_model, "openvino", threads=1)
    for side in (32, 64, 32, 96):
        out = backend.predict(np.full((1, side, side, 3), 255, np.float32))
        assert out.sum() == pytest.approx((side // 8) ** 2)
    assert backend.compiled_shapes == [(1, 32, 32), (1, 96, 96)]


@needs_openvino
def test_openvino_result_survives_the_next_call(brightness_model):
    """The request's output buffer is reused; what predict returned must not change."""
    backend = load_backend(brightness_model, "openvino")
    white = np.full((1, 64, 64, 3), 255, np.float32)
    first = backend.predict(white)
    backend.predict(np.zeros_like(white))
    assert first.sum() == pytest.approx(64.0)


@needs_openvino
@pytest.mark.slow
def test_openvino_releases_the_gil_while_inferring():
    """A pure-Python loop keeps running while another thread is inside one long inference
    (several 1280x960 frames in one call). If the call held the GIL, the loop would make no
    progress until the call returned."""
    backend = load_backend(DEFAULT_ONNX, "openvino")
    batch = np.random.default_rng(0).uniform(0, 255, (4, 960, 1280, 3)).astype(np.float32)
    backend.predict(batch)  # compile outside the measured call
    inside = threading.Event()
    done = threading.Event()

    def infer() -> None:
        inside.set()
        backend.predict(batch)
        done.set()

    thread = threading.Thread(target=infer)
    thread.start()
    inside.wait()
    time.sleep(0.01)  # let the thread enter the native call
    ticks = 0
    while not done.is_set():
        ticks += 1
    thread.join()
    assert ticks > 10_000


def test_fallback_to_onnx_runtime_logs_one_line(tmp_path):
    """Simulates a machine without OpenVINO: ``sys.modules['openvino'] = None`` makes every
    ``import openvino`` raise ImportError, as a missing package does. The bundled model then
    runs on ONNX Runtime, with exactly one log line however often the default is asked."""
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from crowdcount.model.backends import default_backend\n"
        "from crowdcount.model.runtime import Runtime\n"
        "import numpy as np\n"
        "a, b = Runtime.open(), Runtime.open()\n"
        "print(default_backend(), a.name, b.name, a.count(np.zeros((64, 64, 3), np.uint8)) >= 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnx", "onnx", "onnx", "True"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("event=backend_fallback backend=onnx reason=")
    assert "openvino not importable" in lines[0]


@pytest.mark.parametrize("backend", [None, "onnx", "openvino"])
async def test_backend_override_reaches_health_and_metrics(backend, brightness_model, tmp_path):
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino package is not installed")
    argv = ["serve", "--model", str(brightness_model), "--database", str(tmp_path / "c.db")]
    config = load(build_parser().parse_args(argv + (["--backend", backend] if backend else [])))
    assert config.model.backend == backend
    client = TestClient(TestServer(build_app(config)))
    await client.start_server()
    try:
        health = await (await client.get("/api/health")).json()
        metrics = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    running = backend or default_backend()
    assert health["model"] == {"backend": running, "path": str(brightness_model)}
    assert f'crowdcount_model_info{{backend="{running}",path="{brightness_model}"}} 1.0' in metrics
