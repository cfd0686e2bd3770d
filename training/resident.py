"""Training with the data resident in accelerator memory (JAX backend only).

The PyDataset path (``training.data``) decodes, augments and builds targets on the host with
NumPy, OpenCV and SciPy, then copies each batch to the device: on a GPU the model waits for
the host. Here every training image is copied to the device once, and everything else (the
choice of image, random scale, crop, flip, colour, the target, forward, loss, gradients and
the optimizer update) runs inside one jitted function that makes ``steps_per_call`` updates
per call with ``jax.lax.scan`` (unrolled on the CPU, see ``_steps``), so Python and the host
are out of the loop.

The semantics are those of :func:`training.targets.augment_crop` and
:func:`training.targets.density_target`, rebuilt from array operations with static shapes:

* images sit in one ``uint8`` array padded to a common canvas; the padding repeats each
  image's last row and column, so the resampling filter at the true border sees the border
  (as OpenCV's replicate border does) and never the black of a neighbour's padding;
* head points are padded to one maximum per image with a mask;
* kernels follow ``training.kernels``, as the host path's do: each head's sigma is found
  on the host (an adaptive one from the whole image's nearest neighbours) and multiplied by
  the crop's scale in the step;
* the density target is separable: a head's Gaussian, truncated at three sigmas and
  renormalised over the crop (the mass-preserving border rule of ``model.density``), is the
  outer product of a row and a column profile, so a whole map is one (rows x heads) by
  (heads x columns) product at the output stride, never a full-resolution image per head.
  ``model.density`` filters wide kernels on a coarser grid; this is the exact fine-grid value.

How it plugs into ``model.fit``: the fit loop, its callbacks (validation, checkpoints,
backup and restore, CSV log, time budget) stay as they are; :class:`ResidentTrainer` sets
``model.train_function`` (Keras keeps one that is already set) to a function that ignores
the tiny placeholder batches of :class:`CallFeeder` and runs the jitted multi-step update
on the model's state. Each fit "step" is therefore ``steps_per_call`` optimizer steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.density import TRUNCATE
from crowdcount.model.errors import UserError
from crowdcount.training.data import WeightedReader
from crowdcount.training.kernels import ADAPTIVE_LIMITS, head_sigmas
from crowdcount.training.targets import Augment, scale_range

log = logging.getLogger(__name__)


def require_jax() -> None:
    """The resident path is JAX code; on TensorFlow it would fail deep inside a trace."""
    if keras.backend.backend() != "jax":
        raise UserError(
            f"--resident needs Keras on JAX (KERAS_BACKEND=jax), not {keras.backend.backend()}"
        )


@dataclass
class Packed:
    """All training samples as fixed-shape host arrays, ready for one copy to the device.

    ``sigma`` is each head's kernel width in pixels; where ``scales`` is true (adaptive
    kernels with neighbours) it is in source pixels and grows with the crop's scale."""

    images: NDArray[np.uint8]  # (N, H, W, 3), edge-padded canvas
    sizes: NDArray[np.int32]  # (N, 2): true height, width
    means: NDArray[np.float32]  # (N, 3): mean colour, fills crops larger than the image
    points: NDArray[np.float32]  # (N, P, 2): x, y in source pixels
    mask: NDArray[np.bool_]  # (N, P)
    sigma: NDArray[np.float32]  # (N, P)
    scales: NDArray[np.bool_]  # (N, P)
    scale_range: NDArray[np.float32]  # (N, 2): lo, hi of the random scale
    logits: NDArray[np.float32]  # (N,): log of each item's sampling probability (unnormalised)
    augment: Augment

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {k: getattr(self, k) for k in (
            "images", "sizes", "means", "points", "mask", "sigma", "scales", "scale_range",
            "logits")}


def pack(sources: Sequence[WeightedReader], min_points: int = 1) -> Packed:
    """Read every sample once into :class:`Packed` (points padded to at least
    ``min_points``, the point loss's fixed size)."""
    augments = {s.augment for s in sources}
    if None in augments or len(augments) != 1:
        raise UserError("--resident needs one augmentation for all sets (preset fast)")
    augment = next(iter(augments))
    assert augment is not None
    items: list[tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32], bool, float]]
    items = []
    for src in sources:
        reader, kernel = src.reader, src.reader.kernel
        log.info("resident: reading %s (%d items)", reader.name, len(reader))
        for i in range(len(reader)):
            sample = reader[i]
            if sample.points is None:
                raise UserError(f"{sample.name}: count-only samples cannot train --resident")
            pts = np.asarray(sample.points, np.float32).reshape(-1, 2)
            sig, scales = head_sigmas(pts, kernel)
            items.append((sample.image, pts, sig, scales, src.weight))
    if not items:
        raise UserError("no training samples to hold resident")
    n = len(items)
    hc = max(im.shape[0] for im, *_ in items)
    wc = max(im.shape[1] for im, *_ in items)
    p = max(min_points, max(len(pts) for _, pts, *_ in items))
    out = Packed(
        images=np.empty((n, hc, wc, 3), np.uint8), sizes=np.zeros((n, 2), np.int32),
        means=np.zeros((n, 3), np.float32), points=np.zeros((n, p, 2), np.float32),
        mask=np.zeros((n, p), bool), sigma=np.ones((n, p), np.float32),
        scales=np.zeros((n, p), bool), scale_range=np.zeros((n, 2), np.float32),
        logits=np.zeros(n, np.float32), augment=augment,
    )
    for k, (image, pts, sig, scales, weight) in enumerate(items):
        h, w = image.shape[:2]
        canvas = out.images[k]
        canvas[:h, :w] = image
        canvas[h:, :w] = image[h - 1]
        canvas[:, w:] = canvas[:, w - 1 : w]
        out.sizes[k] = h, w
        out.means[k] = image.reshape(-1, 3).mean(axis=0)
        out.points[k, : len(pts)] = pts
        out.mask[k, : len(pts)] = True
        out.sigma[k, : len(pts)] = sig
        out.scales[k, : len(pts)] = scales
        out.scale_range[k] = scale_range(augment, image.shape)
        # A set's share of the crops is weight x items: each item is weight-proportional.
        out.logits[k] = math.log(weight) if weight > 0 else -np.inf
    return out


class CropSampler:
    """The jittable half: random augmented crops and their targets from :class:`Packed`
    arrays already on the device. Pure functions of (arrays, key); shapes are static."""

    def __init__(self, packed: Packed, crop: tuple[int, int], stride: int,
                 max_points: int | None = None) -> None:
        if crop[0] % stride or crop[1] % stride:
            raise UserError(f"crop {crop[0]}x{crop[1]} is not a multiple of stride {stride}")
        if max_points is not None and packed.points.shape[1] < max_points:
            raise ValueError("pack(..., min_points=max_points): point targets need at least "
                             f"{max_points} slots, the packed arrays have {packed.points.shape[1]}")
        self.crop, self.stride, self.max_points = crop, stride, max_points
        self.augment = packed.augment

    def batch(self, arrays: dict[str, Any], keys: Any) -> tuple[Any, Any]:
        """(images (B, h, w, 3) float32 0..255, targets) for a (B,) array of keys."""
        import jax

        return jax.vmap(lambda k: self.example(arrays, k))(keys)

    def example(self, arrays: dict[str, Any], key: Any) -> tuple[Any, Any]:
        image, pts, inside, sigma = self.crop_points(arrays, key)
        if self.max_points is not None:
            return image, self.point_target(pts, inside)
        return image, self.density_target(pts, inside, sigma)

    def crop_points(self, arrays: dict[str, Any], key: Any) -> tuple[Any, Any, Any, Any]:
        """One augmented crop: (image (h, w, 3), points (P, 2) in crop pixels, inside (P,),
        sigma (P,)); the retry rule of ``augment_crop`` (each retry at a larger scale) is
        evaluated for all tries at once on the points, and only the chosen crop resampled."""
        import jax
        import jax.numpy as jnp

        aug, (ch, cw) = self.augment, self.crop
        ks = jax.random.split(key, 8)
        i = jax.random.categorical(ks[0], arrays["logits"])
        h, w = (arrays["sizes"][i, 0].astype(jnp.float32),
                arrays["sizes"][i, 1].astype(jnp.float32))
        lo, hi = arrays["scale_range"][i, 0], arrays["scale_range"][i, 1]
        tries = max(1, aug.tries) if self.max_points is not None else 1
        t = jnp.arange(tries, dtype=jnp.float32)
        s0 = jnp.exp(jax.random.uniform(ks[1], minval=jnp.log(lo), maxval=jnp.log(hi)))
        # augment_crop's retry k uses hi * 1.25 ** (1 + 2 + ... + k), capped at 4
        s = jnp.where(t == 0, s0, jnp.minimum(hi * 1.25 ** (t * (t + 1) / 2), 4.0))
        hs, ws = jnp.maximum(1.0, jnp.round(h * s)), jnp.maximum(1.0, jnp.round(w * s))
        ph, pw = jnp.maximum(float(ch), hs), jnp.maximum(float(cw), ws)
        u = jax.random.uniform(ks[2], (4, tries))
        oy, ox = jnp.floor(u[0] * (ph - hs + 1)), jnp.floor(u[1] * (pw - ws + 1))
        y0, x0 = jnp.floor(u[2] * (ph - ch + 1)), jnp.floor(u[3] * (pw - cw + 1))
        ty, tx = oy - y0, ox - x0  # where the scaled image's corner lands in the crop
        sy, sx = hs / h, ws / w
        src, valid = arrays["points"][i], arrays["mask"][i]
        px = src[None, :, 0] * sx[:, None] + tx[:, None]  # (tries, P)
        py = src[None, :, 1] * sy[:, None] + ty[:, None]
        inside = valid[None] & (px >= 0) & (px < cw) & (py >= 0) & (py < ch)
        if self.max_points is not None:
            ok = inside.sum(axis=1) <= self.max_points
            pick = jnp.where(ok.any(), jnp.argmax(ok), tries - 1)
        else:
            pick = jnp.asarray(0)
        px, py, inside = px[pick], py[pick], inside[pick]
        ty, tx, sy, sx, hs, ws = ty[pick], tx[pick], sy[pick], sx[pick], hs[pick], ws[pick]
        canvas = arrays["images"][i].astype(jnp.float32)
        # antialias=True low-passes when shrinking (OpenCV's INTER_AREA in augment_crop) and
        # interpolates linearly when enlarging (INTER_LINEAR). DEFAULT precision lets a GPU
        # use its fast matmul modes: pixel values are 0..255 and tolerate them.
        image = jax.image.scale_and_translate(
            canvas, (ch, cw, 3), (0, 1), jnp.stack([sy, sx]), jnp.stack([ty, tx]),
            method="linear", antialias=True, precision=jax.lax.Precision.DEFAULT,
        )
        rows = jnp.arange(ch, dtype=jnp.float32)
        cols = jnp.arange(cw, dtype=jnp.float32)
        on_image = (((rows >= ty) & (rows < ty + hs))[:, None]
                    & ((cols >= tx) & (cols < tx + ws))[None, :])
        image = jnp.where(on_image[..., None], image, arrays["means"][i])
        if aug.flip:
            flip = jax.random.uniform(ks[3]) < 0.5
            image = jnp.where(flip, image[:, ::-1], image)
            px = jnp.where(flip, cw - px, px)
        if aug.colour:
            gain = 1 + jax.random.uniform(ks[4], minval=-aug.colour, maxval=aug.colour)
            bias = 255 * jax.random.uniform(ks[5], minval=-aug.colour, maxval=aug.colour) / 2
            image = image * gain + bias
        if aug.grey:
            grey = jax.random.uniform(ks[6]) < aug.grey
            image = jnp.where(grey, jnp.broadcast_to(image.mean(axis=2, keepdims=True),
                                                     image.shape), image)
        image = jnp.clip(image, 0, 255)
        base = arrays["sigma"][i]
        sigma = jnp.where(arrays["scales"][i],
                          jnp.clip(base * s[pick], *ADAPTIVE_LIMITS), base)
        return image, jnp.stack([px, py], axis=1), inside, sigma

    def density_target(self, pts: Any, inside: Any, sigma: Any) -> Any:
        """(h/s, w/s, 1) map: each inside head's truncated Gaussian, renormalised over the
        crop, sum-pooled to the stride; sums to the number of heads inside."""
        import jax.numpy as jnp

        ch, cw = self.crop
        rows = self._profile(pts[:, 1], sigma, ch)
        cols = self._profile(pts[:, 0], sigma, cw)
        rows = rows * inside[:, None].astype(rows.dtype)
        return jnp.einsum("pi,pj->ij", rows, cols)[..., None]

    def _profile(self, coord: Any, sigma: Any, n: int) -> Any:
        """(P, n / stride): a head's share of its kernel in each output row (or column).
        Like ``model.density``: the head sits on the pixel it falls in (clipped to the map),
        sigma is rounded to 1e-3, the kernel is truncated at TRUNCATE sigmas (SciPy's
        radius rule) and renormalised over the pixels inside the map."""
        import jax.numpy as jnp

        centre = jnp.clip(jnp.floor(coord), 0, n - 1)
        sigma = jnp.round(sigma * 1000) / 1000
        radius = jnp.floor(TRUNCATE * sigma + 0.5)
        d = jnp.arange(n, dtype=jnp.float32)[None, :] - centre[:, None]
        phi = jnp.where(jnp.abs(d) <= radius[:, None],
                        jnp.exp(-0.5 * jnp.square(d / sigma[:, None])), 0.0)
        phi = phi / jnp.maximum(phi.sum(axis=1, keepdims=True), 1e-12)
        return phi.reshape(len(coord), n // self.stride, self.stride).sum(axis=2)

    def point_target(self, pts: Any, inside: Any) -> Any:
        """(max_points, 3) as ``targets.point_target``: inside heads first (in their order),
        x, y in output cells, mask; zero padding. Heads beyond max_points are dropped."""
        import jax.numpy as jnp

        assert self.max_points is not None
        order = jnp.argsort(~inside, stable=True)[: self.max_points]
        keep = inside[order].astype(jnp.float32)[:, None]
        return jnp.concatenate([pts[order] / self.stride, keep], axis=1) * keep


class CallFeeder(keras.utils.PyDataset):
    """What ``model.fit`` iterates over: one placeholder per call of the multi-step
    function, so the fit loop's count of batches is the count of calls."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def __len__(self) -> int:
        return self.calls

    def __getitem__(self, index: int) -> NDArray[np.float32]:
        return np.zeros((1,), np.float32)


class ResidentTrainer(keras.callbacks.Callback):
    """Installs the resident multi-step update on a compiled model (see the module's
    docstring); pass it to ``fit`` among the callbacks and :attr:`feeder` as the data.

    Step ``n`` of the run (counted from epoch 0, so a resumed run continues the sequence)
    draws its batch with ``fold_in(key(seed), n)``: K steps in one call use the same keys as
    K calls of one step."""

    def __init__(
        self,
        model: keras.Model,
        packed: Packed,
        crop: tuple[int, int],
        stride: int,
        batch_size: int,
        steps_per_epoch: int,
        steps_per_call: int = 1,
        seed: int = 0,
        max_points: int | None = None,
    ) -> None:
        import jax

        require_jax()
        super().__init__()
        steps_per_call = min(steps_per_call, steps_per_epoch)
        if steps_per_call < 1 or steps_per_epoch % steps_per_call:
            raise UserError(f"--steps-per-call {steps_per_call} must divide "
                            f"--steps-per-epoch {steps_per_epoch}")
        self.net = model  # fit's set_model comes later; the step is traced with this one
        self.sampler = CropSampler(packed, crop, stride, max_points)
        self.arrays = jax.device_put(packed.arrays())
        self.batch_size, self.k = batch_size, steps_per_call
        self.steps_per_epoch, self.step = steps_per_epoch, 0
        self.key = jax.random.key(seed)
        self.feeder = CallFeeder(steps_per_epoch // steps_per_call)
        self._run = jax.jit(self._steps, donate_argnums=0)
        x, y = jax.eval_shape(self.sampler.batch, self.arrays,
                              jax.random.split(self.key, batch_size))
        # Builds the compiled loss, metrics and optimizer from shapes alone; fit would
        # otherwise build them from its first batch, which here is a placeholder.
        model._symbolic_build(data_batch=(x, y))
        model.train_function = self._train_function
        log.info("resident: %d images on %s, canvas %dx%d, %d points each",
                 len(packed.images), jax.devices()[0].platform, *packed.images.shape[1:3],
                 packed.points.shape[1])

    def keys(self, first_step: int, count: int) -> Any:
        """The per-example keys of steps first_step .. first_step + count - 1."""
        import jax
        import jax.numpy as jnp

        steps = jnp.arange(first_step, first_step + count)
        per_step = jax.vmap(lambda n: jax.random.fold_in(self.key, n))(steps)
        return jax.vmap(lambda k: jax.random.split(k, self.batch_size))(per_step)

    def _steps(self, state: Any, arrays: dict[str, Any], keys: Any) -> tuple[Any, Any]:
        import jax

        def one(state: Any, step_keys: Any) -> tuple[Any, Any]:
            x, y = self.sampler.batch(arrays, step_keys)
            logs, state = self.net.train_step(state, (x, y))
            return state, logs

        # XLA:CPU ran a training step ~10x slower inside a while loop (23 s against 1.9 s
        # per step, MobileNetV2 at 192x256, batch 4), so on the CPU the K steps are
        # unrolled (compile time grows with K); elsewhere the loop stays rolled.
        unroll = len(keys) if jax.default_backend() == "cpu" else 1
        state, logs = jax.lax.scan(one, state, keys, unroll=unroll)
        # The logged metrics are running means over the epoch: the last step's are current.
        return jax.tree.map(lambda v: v[-1], logs), state

    def _train_function(self, state: Any, iterator: Iterator[Any]) -> tuple[Any, Any]:
        next(iterator)  # the placeholder keeps fit's count of calls
        keys = self.keys(self.step, self.k)
        self.step += self.k
        return self._run(state, self.arrays, keys)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.step = epoch * self.steps_per_epoch
