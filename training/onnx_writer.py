"""Keras -> ONNX without TensorFlow, for the layers the project's networks use.

``crowdcount export`` converts through TensorFlow and tf2onnx; the serving install has
neither, yet calibration (``training.calibrate``) must write an ONNX model where serving
runs. Keras' own ONNX export on JAX needs ``jax2onnx``, which pulls Flax, Orbax and
TensorStore: heavier than the whole serving install. The networks here are a small
vocabulary (convolutions, depthwise and transposed convolutions, batch norm, ReLU/ReLU6,
add, zero padding, rescaling), so this module walks the functional graph and writes each
layer as its ONNX operator with ``onnx.helper``. The graph runs in NCHW inside and keeps the
serving contract outside: input ``image`` (N, H, W, 3) float32 RGB 0..255, output
(N, H/s, W/s, 1). ``tests/test_onnx_writer.py`` checks it against Keras to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crowdcount.model.errors import UserError

OPSET = 17


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def const(self, hint: str, value: Any) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _np(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, np.float32)


def _activation(g: _Graph, x: str, layer: Any) -> str:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", "linear")
    if name == "linear":
        return x
    if name == "relu":
        return g.op("Relu", [x], f"{layer.name}_relu")
    raise UserError(f"ONNX writer: activation {name!r} of layer {layer.name} not supported")


def _pads(layer: Any) -> dict[str, Any]:
    padding = layer.get_config()["padding"]
    # Keras' "same" pads the extra row/column at the end, as ONNX's SAME_UPPER does.
    return {"auto_pad": "SAME_UPPER"} if padding == "same" else {"auto_pad": "VALID"}


def _conv(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1:
        raise UserError(f"ONNX writer: dilated or grouped Conv2D {layer.name} not supported")
    kernel = _np(layer.kernel)  # (kh, kw, in, out)
    inputs = [x, g.const(f"{layer.name}_W", kernel.transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(g.const(f"{layer.name}_B", _np(layer.bias)))
    y = g.op("Conv", inputs, layer.name, strides=list(cfg["strides"]),
             kernel_shape=list(kernel.shape[:2]), **_pads(layer))
    return _activation(g, y, layer)


def _depthwise(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    kernel = _np(layer.kernel)  # (kh, kw, in, multiplier)
    kh, kw, cin, mult = kernel.shape
    weights = kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
    inputs = [x, g.const(f"{layer.name}_W", weights)]
    if layer.use_bias:
        inputs.append(g.const(f"{layer.name}_B", _np(layer.bias)))
    y = g.op("Conv", inputs, layer.name, strides=list(cfg["strides"]), group=int(cin),
             kernel_shape=[int(kh), int(kw)], **_pads(layer))
    return _activation(g, y, layer)


def _conv_transpose(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    kernel = _np(layer.kernel)  # (kh, kw, out, in)
    kh, kw = kernel.shape[:2]
    sh, sw = cfg["strides"]
    if cfg["padding"] != "same" or (kh - sh) % 2 or (kw - sw) % 2:
        raise UserError(f"ONNX writer: Conv2DTranspose {layer.name} needs 'same' padding "
                        "with an even kernel-minus-stride")
    ph, pw = (kh - sh) // 2, (kw - sw) // 2
    inputs = [x, g.const(f"{layer.name}_W", kernel.transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(g.const(f"{layer.name}_B", _np(layer.bias)))
    y = g.op("ConvTranspose", inputs, layer.name, strides=[sh, sw],
             kernel_shape=[int(kh), int(kw)], pads=[ph, pw, ph, pw])
    return _activation(g, y, layer)


def _batchnorm(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise UserError(f"ONNX writer: BatchNormalization {layer.name} must be on channels")
    n = int(_np(layer.moving_mean).shape[0])
    gamma = _np(layer.gamma) if layer.scale else np.ones(n, np.float32)
    beta = _np(layer.beta) if layer.center else np.zeros(n, np.float32)
    inputs = [x, g.const(f"{layer.name}_g", gamma), g.const(f"{layer.name}_b", beta),
              g.const(f"{layer.name}_m", _np(layer.moving_mean)),
              g.const(f"{layer.name}_v", _np(layer.moving_variance))]
    return g.op("BatchNormalization", inputs, layer.name, epsilon=float(cfg["epsilon"]))


def _relu(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    if cfg.get("negative_slope", 0.0) or cfg.get("threshold", 0.0):
        raise UserError(f"ONNX writer: leaky or thresholded ReLU {layer.name} not supported")
    if cfg.get("max_value") is None:
        return g.op("Relu", [x], layer.name)
    return g.op("Clip", [x, g.const("zero", 0.0), g.const("cap", float(cfg["max_value"]))],
                layer.name)


def _rescaling(g: _Graph, x: str, layer: Any) -> str:
    cfg = layer.get_config()
    y = g.op("Mul", [x, g.const(f"{layer.name}_s", float(cfg["scale"]))], layer.name)
    if cfg.get("offset"):
        y = g.op("Add", [y, g.const(f"{layer.name}_o", float(cfg["offset"]))], layer.name)
    return y


def _zero_padding(g: _Graph, x: str, layer: Any) -> str:
    (top, bottom), (left, right) = layer.get_config()["padding"]
    pads = g.name(f"{layer.name}_pads")
    g.inits.append(numpy_helper.from_array(
        np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), pads))
    return g.op("Pad", [x, pads], layer.name, mode="constant")


_SINGLE: dict[str, Callable[[_Graph, str, Any], str]] = {
    "Conv2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": _conv_transpose,
    "BatchNormalization": _batchnorm,
    "ReLU": _relu,
    "Rescaling": _rescaling,
    "ZeroPadding2D": _zero_padding,
}


def _tensors(node: Any, attr: str) -> list[Any]:
    value = getattr(node, attr)
    return list(value) if isinstance(value, list | tuple) else [value]


def _walk(g: _Graph, model: Any, names: dict[int, str]) -> None:
    """Write ``model``'s layers; ``names`` maps KerasTensor ids to ONNX value names and must
    already hold the model's inputs."""
    import keras

    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        for node in layer._inbound_nodes:
            ins = _tensors(node, "input_tensors")
            if not all(id(t) in names for t in ins):
                continue  # a call from another graph (a nested model's own build)
            outs = _tensors(node, "output_tensors")
            if isinstance(layer, keras.Model):
                for inner, outer in zip(layer.inputs, ins, strict=True):
                    names[id(inner)] = names[id(outer)]
                _walk(g, layer, names)
                for inner, outer in zip(layer.outputs, outs, strict=True):
                    names[id(outer)] = names[id(inner)]
            elif kind == "Add":
                acc = names[id(ins[0])]
                for t in ins[1:]:
                    acc = g.op("Add", [acc, names[id(t)]], layer.name)
                names[id(outs[0])] = acc
            elif kind in _SINGLE:
                names[id(outs[0])] = _SINGLE[kind](g, names[id(ins[0])], layer)
            else:
                raise UserError(f"ONNX writer: layer type {kind} ({layer.name}) not supported")


def write_onnx(model: Any, output: str | Path, extra: tuple[str, ...] = ()) -> Path:
    """Write ``model`` (a Keras functional model, any backend) as ONNX at ``output``;
    ``extra`` names top-level layers whose outputs (NCHW) become further graph outputs."""
    g = _Graph()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError("ONNX writer: the model needs one input and one output")
    nchw = g.op("Transpose", ["image"], "to_nchw", perm=[0, 3, 1, 2])
    names = {id(model.inputs[0]): nchw}
    _walk(g, model, names)
    out = names.get(id(model.outputs[0]))
    if out is None:
        raise UserError("ONNX writer: the model's output was not reached")
    g.nodes.append(helper.make_node("Transpose", [out], ["density"], perm=[0, 2, 3, 1],
                                    name="to_nhwc"))
    outputs = [helper.make_tensor_value_info("density", TensorProto.FLOAT, ["N", "h", "w", 1])]
    for layer_name in extra:
        value = names[id(model.get_layer(layer_name).output)]
        g.nodes.append(helper.make_node("Identity", [value], [layer_name], name=layer_name))
        outputs.append(helper.make_tensor_value_info(
            layer_name, TensorProto.FLOAT, ["N", "C", "h", "w"]))
    graph = helper.make_graph(
        g.nodes, "crowdcount",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])],
        outputs,
        initializer=g.inits,
    )
    proto = helper.make_model(graph, producer_name="crowdcount-calibrate",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8  # readable by ONNX Runtime >= 1.10 and OpenVINO
    onnx.checker.check_model(proto)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".part")
    onnx.save(proto, str(tmp))
    tmp.replace(output)
    return output
