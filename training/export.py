"""Export a trained ``.keras`` model for serving (ONNX) and edge devices (TFLite).

ONNX keeps a dynamic batch and input size (the runtime feeds any multiple of 32). TFLite is
exported from a copy of the network rebuilt with a FIXED batch of 1 and a fixed input size:
with a dynamic batch the transposed convolutions fall off XNNPACK (docs/runtime-notes.md).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import keras

from crowdcount.model.errors import UserError

#: Where progress lines go while ``quiet_tensorflow`` holds stdout and stderr (a duplicate
#: of the real stderr), ``None`` when nothing is captured.
_report_fd: int | None = None

#: Captured lines worth replaying: absl warnings/errors (``W1130 ...``), Python warnings
#: and errors (``...: UserWarning: ...``, ``WARNING:tensorflow:...``). Not absl's banner
#: about its own initialisation, which is printed whatever the log level.
_WORTH_SHOWING = re.compile(r"^[WEF]\d{4} |\b\w*(?:Warning|Error): |^(?:WARNING|ERROR):")
_NOISE = re.compile(r"absl::InitializeLog")


def _progress(message: str) -> None:
    """Export takes tens of seconds with little to show: say which stage it is in."""
    line = f"export: {message}"
    if _report_fd is None:
        print(line, file=sys.stderr, flush=True)
    else:
        os.write(_report_fd, (line + "\n").encode())


@contextmanager
def quiet_tensorflow(verbose: bool = False) -> Iterator[None]:
    """Keep TensorFlow's chatter off the terminal unless ``verbose``.

    Why at the file-descriptor level: Keras prints a ``TensorSpec`` line for every weight
    of the model when the TFLite converter saves it (no switch reaches that print through
    the converter), and TensorFlow's C++ logs INFO lines (oneDNN, CPU features) before its
    log level applies. Both stdout and stderr are therefore redirected into a temporary
    file while TensorFlow works; our progress lines go to the real stderr meanwhile, and
    afterwards only warnings and errors are replayed (also when the export fails: a user
    error such as a missing file stays one line; ``--verbose`` shows the rest).
    """
    global _report_fd
    if verbose or _report_fd is not None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        _report_fd = saved_err
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            _report_fd = None
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if _WORTH_SHOWING.search(line) and not _NOISE.search(line):
                    print(line, file=sys.stderr)
            sys.stderr.flush()


def _load(path: str | Path) -> keras.Model:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    import crowdcount.training.losses  # noqa: F401  (registers the custom objects)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    return keras.saving.load_model(path, compile=False)


def export_onnx(model_path: str | Path, output: str | Path, opset: int = 17) -> Path:
    """Write an ONNX model with input ``image`` (N, H, W, 3) float32 RGB 0..255."""
    import tensorflow as tf
    import tf2onnx

    _progress(f"loading {model_path}")
    model = _load(model_path)
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def serve(image: tf.Tensor) -> tf.Tensor:
        return model(image, training=False)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"converting to ONNX (opset {opset})")
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset,
                                  output_path=str(output))
    _progress(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return output


def fixed_copy(model_path: str | Path, size: tuple[int, int]) -> keras.Model:
    """The same network with batch 1 and input ``size`` (h, w), weights copied."""
    import keras

    model = _load(model_path)
    shape = model.input_shape
    if shape[1] is not None and tuple(shape[1:3]) != tuple(size):
        raise UserError(f"model takes {shape[1]}x{shape[2]} only, not {size[0]}x{size[1]}")
    if size[0] % 32 or size[1] % 32:
        raise UserError(f"input size {size[0]}x{size[1]} must be multiples of 32")
    inp = keras.Input(shape=(*size, 3), batch_size=1, name="image")
    clone = keras.models.clone_model(model, input_tensors=inp)
    clone.set_weights(model.get_weights())
    return clone


def export_tflite(
    model_path: str | Path,
    output: str | Path,
    size: tuple[int, int] = (480, 640),
    quantize: str = "fp32",
    representative: str | None = None,
    calibration_images: int = 64,
) -> Path:
    """TFLite at a fixed size: fp32, fp16 weights, or int8 (dynamic-range, or full integer
    calibrated on ``representative`` images, a dataset spec such as ``mall:PATH:1-800``)."""
    import tensorflow as tf

    from crowdcount.model.preprocess import prepare

    _progress(f"loading {model_path} at a fixed 1x{size[0]}x{size[1]} input")
    model = fixed_copy(model_path, size)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative:
            from crowdcount.training.readers import open_dataset

            reader = open_dataset(representative)
            picks = np.linspace(0, len(reader) - 1, min(calibration_images, len(reader)))

            def samples() -> Iterator[list[NDArray[np.float32]]]:  # calibration inputs
                for i in picks.astype(int):
                    yield [prepare(reader[int(i)].image, size)[None]]

            converter.representative_dataset = samples
    elif quantize != "fp32":
        raise UserError(f"unknown quantization {quantize!r}: fp32, fp16 or int8")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"converting to TFLite ({quantize}"
              + (f", calibrating on {representative}" if representative else "") + ")")
    output.write_bytes(converter.convert())
    _progress(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return output
