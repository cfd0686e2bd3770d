"""Function-preserving growth: start a bigger ``fast`` network (the stride-32 stage, a wider
decoder) from a trained smaller one so that, before its first step, it computes exactly what
the trained one computes.

Why: copying the shared layers by name and leaving the new ones freshly initialised (what
``copy_matching_weights`` alone does) makes the grown network's counts wrong from step 0;
on the CPU budget its first epochs spent their steps undoing that noise and every
validation number got worse for three epochs (NOTES.md, "Growing the network"). Here the
new capacity starts silent and is switched on by the gradient instead:

* the stride-32 branch (``s32_proj`` and MobileNetV2's blocks 13-16) feeds the decoder
  through ``up_s16``, whose kernel and bias start at zero, so the stride-16 merge sees only
  ``s16_proj`` (exactly the trained network's ``relu(s16_proj(x))``). Its input is not
  zero, so ``up_s16`` gets a gradient on the first step and the branch opens from there
  (the zero-initialised last layer of a residual branch, Goyal et al. 2017; ControlNet's
  "zero convolutions", Zhang et al. 2023);
* the new ``s16_conv`` after that merge starts as the identity (its input is a ReLU's
  output, non-negative, so ``relu(identity(x)) == x``);
* a widened decoder layer keeps the trained kernel in its first channels; its new output
  channels start with the layer's fresh initialisation, and every weight that reads a new
  input channel into an old output channel is zero, so the new channels compute something
  (and learn) without reaching the old output (Net2WiderNet, Chen et al. 2016, with zeros in
  place of its copies so no channel statistics need rescaling).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from crowdcount.model.errors import UserError

log = logging.getLogger(__name__)

_STRIDE_OF = re.compile(r"^s(\d+)_proj$")
#: Decoder layers, with the stride they work at (none for the head).
_DECODER = re.compile(r"^(?:s(\d+)_(?:proj|conv)|up_s(\d+)|head_conv|density_scaled)$")


@dataclass(frozen=True)
class Growth:
    """What ``grow`` did, layer by layer (logged by ``crowdcount train``)."""

    copied: int  # same name and shapes: weights copied
    widened: int  # same name, more channels: trained weights embedded
    silent: tuple[str, ...]  # new layers set to zero or identity so the output is unchanged
    fresh: tuple[str, ...]  # new layers left as built (ImageNet or random): they feed silent ones
    #: (variable, mask) for every weight with new entries: 1 where the entry is new (a new
    #: layer, a widened layer's new rows and columns), 0 where it holds the trained value.
    new_entries: tuple[tuple[Any, np.ndarray], ...] = ()

    def lr_scales(self, scale: float) -> dict[int, np.ndarray]:
        """Per-entry learning-rate factors for ``training.optim.FineTuneAdam``: ``scale`` on
        new entries, 1 on trained ones."""
        return {id(var): (1.0 + (scale - 1.0) * mask).astype(np.float32)
                for var, mask in self.new_entries}


def _layers(model: keras.Model) -> dict[str, keras.Layer]:
    return {layer.name: layer for layer in model._flatten_layers(include_self=False)
            if layer.weights and not isinstance(layer, keras.Model)}


def top_stride(model: keras.Model) -> int:
    """The coarsest stride a ``fast`` network's decoder starts from (its ``s{S}_proj``)."""
    strides = [int(m.group(1)) for name in _layers(model) if (m := _STRIDE_OF.match(name))]
    if not strides:
        raise UserError(f"{model.name}: not a 'fast' network (no s<stride>_proj layer)")
    return max(strides)


def _embed(old: list[np.ndarray], new: list[np.ndarray], transposed: bool) -> list[np.ndarray]:
    """The trained kernel and bias inside a wider layer's (see the module docstring). Conv2D
    kernels are (kh, kw, in, out); Conv2DTranspose kernels are (kh, kw, out, in)."""
    kernel, bias = old
    grown, grown_bias = new[0].copy(), new[1].copy()
    if transposed:
        kernel, grown = kernel.swapaxes(2, 3), grown.swapaxes(2, 3)
    c_in, c_out = kernel.shape[2:]
    grown[..., :c_in, :c_out] = kernel
    grown[..., c_in:, :c_out] = 0.0  # new inputs never reach the old outputs
    grown_bias[:c_out] = bias
    if transposed:
        grown = grown.swapaxes(2, 3)
    return [grown, grown_bias]


def grow(source: keras.Model, target: keras.Model) -> Growth:
    """Set ``target``'s weights so that it computes what ``source`` computes (to float
    rounding), where ``target`` is a ``fast`` network with the same or a higher top stride
    and the same or a wider decoder. Raises UserError for any other pair (a smaller target,
    another output stride): no such growth preserves the function."""
    old, new = _layers(source), _layers(target)
    src_top, dst_top = top_stride(source), top_stride(target)
    if dst_top < src_top:
        raise UserError(f"cannot grow a stride-{src_top} network into a stride-{dst_top} one")
    copied = widened = 0
    silent: list[str] = []
    fresh: list[str] = []
    entries: list[tuple[Any, np.ndarray]] = []
    for name, layer in new.items():
        if name not in old:  # every entry of a new layer is new
            entries += [(w, np.ones(w.shape, np.float32)) for w in layer.weights]
        if name in old:
            shapes = [tuple(w.shape) for w in old[name].weights]
            if shapes == [tuple(w.shape) for w in layer.weights]:
                layer.set_weights(old[name].get_weights())
                copied += 1
                continue
            if len(shapes) != 2 or not all(
                a <= b for s, t in zip(shapes, [w.shape for w in layer.weights], strict=True)
                for a, b in zip(s, t, strict=True)
            ):
                raise UserError(f"layer {name}: cannot grow {shapes} into "
                                f"{[tuple(w.shape) for w in layer.weights]}")
            transposed = isinstance(layer, keras.layers.Conv2DTranspose)
            layer.set_weights(_embed(old[name].get_weights(), layer.get_weights(), transposed))
            for w, shape in zip(layer.weights, shapes, strict=True):
                mask = np.ones(w.shape, np.float32)
                mask[tuple(slice(0, n) for n in shape)] = 0.0  # the trained block
                entries.append((w, mask))
            widened += 1
        elif name == f"up_s{src_top}":
            # The branch from the new coarser stage into the old top: silent at step 0.
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
            silent.append(name)
        elif name == f"s{src_top}_conv":
            kernel, bias = layer.get_weights()
            identity = np.zeros_like(kernel)
            kh, kw, c_in, c_out = kernel.shape
            if c_in != c_out:
                raise UserError(f"layer {name}: {c_in} inputs, {c_out} outputs, no identity")
            identity[kh // 2, kw // 2] = np.eye(c_in, dtype=kernel.dtype)
            layer.set_weights([identity, np.zeros_like(bias)])
            silent.append(name)
        elif (m := _DECODER.match(name)) and int(m.group(1) or m.group(2) or 0) <= src_top:
            # A decoder layer at or below the old top that the source lacks: no rule keeps
            # the output, so say so rather than train from a silently broken start.
            raise UserError(f"layer {name} is new at stride {src_top} or finer: the starting "
                            "model is not a smaller network of the same design")
        else:
            fresh.append(name)  # backbone blocks 13-16 and s32_proj: their output is gated
    for name in old:
        if name not in new:
            raise UserError(f"layer {name} of the starting model has no place in the grown one")
    growth = Growth(copied, widened, tuple(silent), tuple(fresh), tuple(entries))
    log.info("event=grow copied=%d widened=%d silent=%s fresh_layers=%d",
             growth.copied, growth.widened, ",".join(growth.silent), len(growth.fresh))
    return growth


