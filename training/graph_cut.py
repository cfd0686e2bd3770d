"""Cut a Keras functional network in two at a named layer, sharing the weights.

Calibration (``training.calibrate``) trains only the layers after the cut: the layers before
it run once per marked frame (forward only) and their outputs are kept, so each training step
costs a fraction of a whole-network step. Both halves call the original layers, so training
the top half changes the original model, which is then written whole.
"""

from __future__ import annotations

from typing import Any

import keras


def _tensors(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _replay(model: Any, mapped: dict[int, Any]) -> None:
    """Call every layer of ``model`` (nested models flattened) whose inputs are all in
    ``mapped`` (KerasTensor id -> new tensor), recording its outputs there."""
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        for node in list(layer._inbound_nodes):  # replaying adds nodes: iterate a copy
            ins, outs = _tensors(node.input_tensors), _tensors(node.output_tensors)
            if all(id(t) in mapped for t in outs):
                continue
            if isinstance(layer, keras.Model):  # the cut may lie inside: always go in
                for inner, outer in zip(layer.inputs, ins, strict=True):
                    if id(outer) in mapped:
                        mapped[id(inner)] = mapped[id(outer)]
                _replay(layer, mapped)
                for inner, outer in zip(layer.outputs, outs, strict=True):
                    if id(inner) in mapped:
                        mapped[id(outer)] = mapped[id(inner)]
                continue
            if not all(id(t) in mapped for t in ins):
                continue
            args = [mapped[id(t)] for t in ins]
            result = layer(args if type(layer).__name__ == "Add" else args[0])
            for t, new in zip(outs, _tensors(result), strict=True):
                mapped[id(t)] = new


def _find(model: Any, name: str) -> Any:
    """The layer called ``name`` anywhere in ``model``, nested models included."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            try:
                return _find(layer, name)
            except ValueError:
                pass
    raise ValueError(f"no layer named {name!r}")


def split(model: Any, cut: str) -> tuple[keras.Model, keras.Model]:
    """(bottom, top): ``bottom`` maps the image to the output of layer ``cut``; ``top`` maps
    that tensor to the network's output. ``cut`` must be a layer whose output is the only
    path from the layers before it to those after it (e.g. a residual ``block_N_add``)."""
    layer = _find(model, cut)
    cut_tensor = layer.output
    image = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    mapped: dict[int, Any] = {id(model.inputs[0]): image}
    _replay(model, mapped)
    bottom = keras.Model(image, mapped[id(cut_tensor)], name="bottom")
    features = keras.Input(shape=cut_tensor.shape[1:], name="features")
    mapped = {id(cut_tensor): features}
    _replay(model, mapped)
    if id(model.outputs[0]) not in mapped:
        raise ValueError(f"layer {cut!r} does not cut the network: the output needs more")
    top = keras.Model(features, mapped[id(model.outputs[0])], name="top")
    return bottom, top
