"""Keras network builders (imports Keras; serving never imports this module).

Written against backend-neutral Keras 3 so the same code trains on TensorFlow (CPU here)
and on JAX (a GPU machine). Every network

* takes RGB in 0..255 and normalises inside (``x / 127.5 - 1``, MobileNetV2's convention), so
  no caller can get the preprocessing wrong;
* ends with a fixed ``Rescaling(1 / density_scale)``: the layers before it work on densities
  ``density_scale`` times larger than the true ones (raw head densities are ~1e-3 per pixel,
  small enough that the first optimizer steps leave a ReLU output dead at zero; see
  docs/runtime-notes.md), while the output is a true density map whose sum is the count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers

from crowdcount.model.errors import UserError

#: MobileNetV2 layers whose outputs feed the decoder, by stride. At stride 32 the decoder
#: takes the last block's 320-channel projection, not the 1280-channel ``out_relu`` after it
#: (that 1x1 layer would be most of the extra cost and is ImageNet's classifier input).
SKIPS = {4: "block_2_add", 8: "block_5_add", 16: "block_12_add", 32: "block_16_project_BN"}

#: Where the shared ImageNet weights live when the project sits beside ../shared.
WEIGHTS_NAME = "mobilenet_v2_1.0_no_top_imagenet.weights.h5"


class BackboneWeightsError(FileNotFoundError):
    """The ImageNet weights file was asked for and is not there. Keras' own download is never
    attempted: these machines are offline and a silent download is no way to get weights."""


def default_backbone_weights() -> Path | None:
    """``$CROWD_SHARED/weights/...`` or ``../shared/weights/...`` when present."""
    roots = [os.environ.get("CROWD_SHARED"), Path(__file__).resolve().parents[2] / "shared"]
    for root in roots:
        if root and (Path(root) / "weights" / WEIGHTS_NAME).is_file():
            return Path(root) / "weights" / WEIGHTS_NAME
    return None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network; stored beside trained models."""

    preset: str = "fast"
    alpha: float = 1.0
    output_stride: int = 8
    input_size: tuple[int, int] | None = None  # (height, width); None = any multiple of 32
    frozen_backbone: bool = False
    density_scale: float = 100.0
    decoder_width: int = 64
    top_stride: int = 16  # 32 keeps MobileNetV2's last stage: more context, more cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _backbone(
    input_shape: tuple[int | None, int | None, int],
    alpha: float,
    weights: str | Path | None,
    batch_size: int | None,
) -> keras.Model:
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BackboneWeightsError(f"backbone weights file not found: {path}")
        if alpha != 1.0:
            raise UserError(f"the ImageNet weights are for alpha 1.0, not {alpha}")
    inputs = keras.Input(shape=input_shape, batch_size=batch_size, name="image")
    net = keras.applications.MobileNetV2(
        input_tensor=inputs, alpha=alpha, include_top=False, weights=None
    )
    if weights is not None:
        net.load_weights(str(weights))
    return net


def build(
    spec: ModelSpec,
    backbone_weights: str | Path | None = None,
    batch_size: int | None = None,
) -> keras.Model:
    """Build a network from ``spec``. ``batch_size`` fixes the batch (TFLite export needs it)."""
    if spec.preset == "seed":
        return _build_seed(spec, backbone_weights, batch_size)
    if spec.preset == "fast":
        return _build_fast(spec, backbone_weights, batch_size)
    raise ValueError(f"unknown preset {spec.preset!r}; choose 'seed' or 'fast'")


def _freeze_batchnorm(net: keras.Model) -> None:
    """Keep the backbone's BatchNormalization in inference mode with its ImageNet statistics.

    MobileNetV2's BN uses momentum 0.999: while a fine-tuned backbone changes, its moving
    statistics lag ~1000 steps behind the batch statistics used in training, and whole-image
    counts at inference drift by tens of people (measured on the first GPU run). Frozen BN
    trains and infers with the same normalisation."""
    for layer in net._flatten_layers(include_self=False):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _head(x: Any, spec: ModelSpec) -> Any:
    x = layers.Conv2D(1, 1, activation="relu", name="density_scaled")(x)
    return layers.Rescaling(1.0 / spec.density_scale, name="density")(x)


def _build_seed(
    spec: ModelSpec, weights: str | Path | None, batch_size: int | None
) -> keras.Model:
    """The seed project's network: frozen MobileNetV2 at 160x160, five stride-2 transposed
    convolutions back to full resolution, one non-negative density channel."""
    h, w = spec.input_size or (160, 160)
    net = _backbone((h, w, 3), spec.alpha, weights, batch_size)
    backbone = keras.Model(net.input, net.output, name="mobilenetv2")
    backbone.trainable = not spec.frozen_backbone
    image = keras.Input(shape=(h, w, 3), batch_size=batch_size, name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(image)
    x = backbone(x)
    for i, filters in enumerate((256, 128, 64, 32, 16)):
        x = layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", activation="relu", name=f"up{i}"
        )(x)
    return keras.Model(image, _head(x, spec), name="crowdcount_seed")


def _build_fast(
    spec: ModelSpec, weights: str | Path | None, batch_size: int | None
) -> keras.Model:
    """Streaming preset: MobileNetV2 cut at stride 16 (the stride-32 stage and its
    1280-channel layer, which made the seed's decoder expensive, are dropped), then a small
    U-Net-like decoder that upsamples with transposed convolutions and adds projected
    backbone features until ``output_stride``. Fully convolutional: any multiple of 32.

    ``top_stride=32`` keeps the stride-32 stage (blocks 13-16) for the wider context dense
    scenes need; ``decoder_width`` widens the decoder. Both exist to measure what capacity
    buys (README, "Capacity")."""
    if spec.output_stride not in (4, 8, 16):
        raise ValueError(f"output_stride must be 4, 8 or 16, not {spec.output_stride}")
    if spec.top_stride not in (16, 32):
        raise ValueError(f"top_stride must be 16 or 32, not {spec.top_stride}")
    h, w = spec.input_size or (None, None)
    net = _backbone((h, w, 3), spec.alpha, weights, batch_size)
    strides = [s for s in (32, 16, 8, 4) if spec.output_stride <= s <= spec.top_stride]
    features = keras.Model(
        net.input, [net.get_layer(SKIPS[s]).output for s in strides], name="mobilenetv2"
    )
    features.trainable = not spec.frozen_backbone
    _freeze_batchnorm(features)
    image = keras.Input(shape=(h, w, 3), batch_size=batch_size, name="image")
    x_norm = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(image)
    feats = features(x_norm)
    feats = feats if isinstance(feats, list) else [feats]
    width = spec.decoder_width
    x = layers.Conv2D(width, 1, activation="relu", name=f"s{strides[0]}_proj")(feats[0])
    for stride, skip in zip(strides[1:], feats[1:], strict=True):
        # up_s16 exists only with the stride-32 stage and is linear: it is that branch's
        # gate, zero when a trained stride-16 network grows into this one (training/grow.py),
        # and a ReLU at exactly zero would pass no gradient to open it. The merge's ReLU
        # follows it either way.
        x = layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", name=f"up_s{stride}",
            activation=None if stride == 16 else "relu",
        )(x)
        s = layers.Conv2D(width, 1, name=f"s{stride}_proj")(skip)
        x = layers.ReLU(name=f"s{stride}_merge")(layers.Add()([x, s]))
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"s{stride}_conv")(x)
    x = layers.Conv2D(width // 2, 3, padding="same", activation="relu", name="head_conv")(x)
    return keras.Model(image, _head(x, spec), name="crowdcount_fast")
