"""The training loop: build (or resume) a network, feed it augmented crops, validate whole
images, keep the best and the last model, and stop on time, patience or epochs.

Two recipes: ``seed`` reproduces the seed project (frozen MobileNetV2 at 160x160, Adam 1e-3,
MSE, batch 32, 20 epochs) with the one fix it needs to learn at all (scaled densities);
``fast`` is the streaming model (trainable backbone, 384x512 crops, head-point targets).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras

from crowdcount.model.architecture import ModelSpec, build, default_backbone_weights
from crowdcount.model.errors import UserError
from crowdcount.model.types import Sample
from crowdcount.training.callbacks import CountValidation, MemoryCleanup, TimeBudget
from crowdcount.training.data import DensityDataset, WeightedReader
from crowdcount.training.distill import DistilledDataset, Teacher, parse_distill
from crowdcount.training.grow import Growth, grow
from crowdcount.training.losses import (
    BayesianLoss,
    DensityLoss,
    count_abs_error,
    point_count_abs_error,
)
from crowdcount.training.optim import FineTuneAdam
from crowdcount.training.readers import DatasetError, Reader, Subset, open_dataset
from crowdcount.training.resident import ResidentTrainer, pack, require_jax
from crowdcount.training.targets import Augment

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a run; saved as ``config.json`` in the run folder."""

    data: list[str] = field(default_factory=list)  # [NAME=]FORMAT:PATH[:RANGE][@WEIGHT]
    val: list[str] = field(default_factory=list)  # [NAME=]FORMAT:PATH[:RANGE]
    val_every: int = 10  # without --val: hold out every K-th item of each data set
    run_dir: str = "runs/default"
    preset: str = "fast"
    alpha: float = 1.0  # MobileNetV2 width; the ImageNet file is for 1.0 only
    backbone_weights: str | None = "auto"  # "auto" = ../shared when present; None = random
    frozen_backbone: bool | None = None
    output_stride: int | None = None
    top_stride: int = 16  # 32: keep MobileNetV2's stride-32 stage (ModelSpec.top_stride)
    decoder_width: int = 64
    crop: tuple[int, int] | None = None
    epochs: int | None = None
    steps_per_epoch: int = 100
    batch_size: int | None = None
    learning_rate: float | None = None
    count_weight: float = 0.0
    density_scale: float = 100.0
    loss: str = "mse"  # "mse" (density maps) | "bayesian" (head points, Ma et al. 2019)
    max_points: int = 1024  # heads per crop the point loss pads to
    bayes_sigma: float = 8.0  # pixels: the point loss's Gaussian likelihood
    bayes_background: float = 0.15  # background margin, fraction of the crop's shorter side
    val_max_side: int | None = None  # validate at the serving size, not the image's own
    patience: int = 12
    time_budget: float | None = None  # seconds
    resume: bool = False
    init_model: str | None = None  # start from these weights (fine-tuning)
    grow: str = "preserve"  # layers init_model lacks: "preserve" its output, or "fresh"
    grow_lr_scale: float = 1.0  # learning-rate factor on the entries growth added
    warmup_steps: int = 0  # linear learning-rate warm-up (training.optim.FineTuneAdam)
    keep_epochs: bool = False  # every epoch's model as epochNNN.keras (weight averaging)
    distill: list[str] = field(default_factory=list)  # NAME[=BETA]: teacher-mixed targets
    teacher: str | None = None  # the distillation teacher (default: init_model)
    workers: int = 1
    cache: bool = True
    resident: bool = False  # data in device memory, augmentation in the jitted step (JAX)
    steps_per_call: int = 10  # resident: optimizer steps per jitted call
    precision: str = "float32"  # "bfloat16": Keras' mixed_bfloat16 policy
    seed: int = 0
    verbose: Any = "auto"


#: Per-preset defaults for the None fields above.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": dict(frozen_backbone=True, output_stride=1, crop=(160, 160), epochs=20,
                 batch_size=32, learning_rate=1e-3),
    "fast": dict(frozen_backbone=False, output_stride=8, crop=(384, 512), epochs=60,
                 batch_size=16, learning_rate=3e-4),
}


def resolved(cfg: TrainConfig) -> TrainConfig:
    if cfg.preset not in RECIPES:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose {', '.join(RECIPES)}")
    fills = {k: v for k, v in RECIPES[cfg.preset].items() if getattr(cfg, k) is None}
    return replace(cfg, **fills)


def parse_data(spec: str) -> tuple[str, Reader, float]:
    """``[NAME=]FORMAT:PATH[:RANGE][@WEIGHT]`` -> (name, reader, weight)."""
    weight = 1.0
    if "@" in spec:
        spec, _, w = spec.rpartition("@")
        try:
            weight = float(w)
        except ValueError:
            raise DatasetError(f"bad weight {w!r} in {spec!r}") from None
    name = None
    if "=" in spec.split(":", 1)[0]:
        name, _, spec = spec.partition("=")
    reader = open_dataset(spec)
    return name or reader.name, reader, weight


def _split(cfg: TrainConfig) -> tuple[list[WeightedReader], dict[str, Sequence[Sample]]]:
    augment = None if cfg.preset == "seed" else Augment()
    sources: list[WeightedReader] = []
    val_sets: dict[str, Reader] = {}
    explicit = [parse_data(v) for v in cfg.val]
    reader: Reader
    for name, reader, weight in (parse_data(d) for d in cfg.data):
        if not explicit and cfg.val_every > 1 and len(reader) >= cfg.val_every:
            k = cfg.val_every
            held = [i for i in range(len(reader)) if i % k == k - 1]
            kept = [i for i in range(len(reader)) if i % k != k - 1]
            val_sets[name] = Subset(reader, held)
            reader = Subset(reader, kept)
        sources.append(WeightedReader(reader, weight, augment, cfg.cache, name))
    for name, reader, _ in explicit:
        val_sets[name] = reader
    if not sources:
        raise DatasetError("no training data: give at least one --data FORMAT:PATH")
    return sources, {n: [r[i] for i in range(len(r))] for n, r in val_sets.items()}


def _loss(cfg: TrainConfig, stride: int) -> tuple[keras.losses.Loss, Any, int | None]:
    """(loss, count-error metric, max_points or None for density targets)."""
    assert cfg.crop is not None
    if cfg.loss == "mse":
        return DensityLoss(cfg.density_scale, cfg.count_weight), count_abs_error, None
    if cfg.loss == "bayesian":
        loss = BayesianLoss(
            sigma=cfg.bayes_sigma / stride,
            background=cfg.bayes_background * min(cfg.crop) / stride
            if cfg.bayes_background > 0 else None,
            count_weight=cfg.count_weight,
        )
        return loss, point_count_abs_error, cfg.max_points
    raise ValueError(f"unknown loss {cfg.loss!r}; choose mse or bayesian")


def _weights_path(cfg: TrainConfig, required: bool = True) -> str | None:
    if cfg.backbone_weights == "auto":
        found = default_backbone_weights()
        if found is None and required:
            raise FileNotFoundError(
                "ImageNet backbone weights not found in ../shared/weights; pass "
                "--backbone-weights PATH, or --backbone-weights none for a random backbone"
            )
        return str(found) if found is not None else None
    return cfg.backbone_weights


def copy_matching_weights(source: keras.Model, target: keras.Model) -> tuple[int, int]:
    """Copy every layer's weights from ``source`` into the ``target`` layer of the same name
    and shapes; returns (layers copied, layers left as they were).

    Why by name: it lets a grown architecture (the stride-32 stage, a wider decoder) start
    from a trained model, with only its new layers fresh (ImageNet for backbone blocks, random
    for decoder layers); for the same architecture it copies everything, i.e. a plain load."""
    by_name = {layer.name: layer for layer in source._flatten_layers(include_self=False)
               if layer.weights and not isinstance(layer, keras.Model)}
    copied = fresh = 0
    for layer in target._flatten_layers(include_self=False):
        if not layer.weights or isinstance(layer, keras.Model):
            continue
        old = by_name.get(layer.name)
        if old is not None and [w.shape for w in old.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(old.get_weights())
            copied += 1
        else:
            fresh += 1
    return copied, fresh


def _model(cfg: TrainConfig, spec: ModelSpec) -> tuple[keras.Model, Growth | None]:
    """The network to train, its layers in ``cfg.precision``. A ``.keras`` starting model
    is never used as loaded: ``spec``'s network is built (under the run's precision; a
    loaded model keeps the policy it was saved with) and takes the starting model's weights
    layer by layer (``copy_matching_weights``), so a grown architecture can start from it."""
    if cfg.grow not in ("preserve", "fresh"):
        raise UserError(f"unknown --grow {cfg.grow!r}; choose preserve or fresh")
    if cfg.precision not in ("float32", "bfloat16"):
        raise UserError(f"unknown precision {cfg.precision!r}; choose float32 or bfloat16")
    policy = keras.config.dtype_policy()
    growth = None
    if cfg.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")  # for the layers built here
    try:
        if cfg.init_model and cfg.init_model.endswith(".weights.h5"):
            model = build(spec, None)  # same architecture, weights from the file
            model.load_weights(cfg.init_model)
        elif cfg.init_model:
            # Layers the starting model lacks start from ImageNet where the file is found.
            model = build(spec, _weights_path(cfg, required=False))
            start = keras.saving.load_model(cfg.init_model, compile=False)
            if cfg.grow == "preserve" and spec.preset == "fast":
                growth = grow(start, model)  # the new capacity starts silent: same output
            else:
                copied, fresh = copy_matching_weights(start, model)
                log.info("event=init_model path=%s layers_copied=%d layers_new=%d",
                         cfg.init_model, copied, fresh)
        else:
            model = build(spec, _weights_path(cfg))
    finally:
        keras.config.set_dtype_policy(policy)
    return model, growth


def _teacher_path(cfg: TrainConfig) -> str:
    path = cfg.teacher or cfg.init_model
    if not path or path.endswith(".weights.h5"):
        raise UserError("--distill needs a teacher: --teacher MODEL (.onnx or .keras) or a "
                        ".keras --init-model")
    return path


def _save_float32(run: Path, spec: ModelSpec) -> None:
    """Rewrite the checkpoints of a bfloat16 run as float32 models: a saved model keeps its
    layers' dtype policy, and serving, export and fine-tuning on a CPU expect float32.
    Mixed precision keeps its variables in float32, so the weights carry over exactly."""
    for name in ("best.keras", "last.keras", "start.keras"):
        path = run / name
        if path.is_file():
            model = build(spec, None)
            model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
            model.save(path)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training; returns the final logs and where the models are."""
    cfg = resolved(cfg)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    assert cfg.crop and cfg.output_stride and cfg.batch_size and cfg.epochs
    spec = ModelSpec(
        preset=cfg.preset,
        alpha=cfg.alpha,
        output_stride=cfg.output_stride if cfg.preset == "fast" else 1,
        input_size=cfg.crop if cfg.preset == "seed" else None,
        frozen_backbone=bool(cfg.frozen_backbone),
        density_scale=cfg.density_scale,
        decoder_width=cfg.decoder_width,
        top_stride=cfg.top_stride,
    )
    keras.utils.set_random_seed(cfg.seed)
    if cfg.resident:
        require_jax()  # before minutes of reading data
    if cfg.distill:
        if cfg.resident:
            raise UserError("--distill runs the teacher in the host pipeline: drop --resident")
        if cfg.loss != "mse":
            raise UserError("--distill mixes density maps: use it with --loss mse")
        _teacher_path(cfg)
    if (run / "backup").exists() and not cfg.resume:
        raise FileExistsError(f"{run} holds an interrupted run: pass --resume or a new --run-dir")
    sources, val_sets = _split(cfg)
    model, growth = _model(cfg, spec)
    loss, metric, max_points = _loss(cfg, spec.output_stride)
    scales = None
    if growth is not None and growth.new_entries and cfg.grow_lr_scale != 1.0:
        scales = growth.lr_scales(cfg.grow_lr_scale)
    optimizer = keras.optimizers.Adam(cfg.learning_rate)
    if scales or cfg.warmup_steps:
        optimizer = FineTuneAdam(cfg.learning_rate, scales=scales,
                                 warmup_steps=cfg.warmup_steps)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.MeanMetricWrapper(metric, name="count_mae")],
    )
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=list))
    if growth is not None and not (run / "start.keras").exists():
        # The grown network as it starts (the starting model's output, new layers silent):
        # the other end of the WiSE-FT line for this run (scripts/average_weights.py).
        model.save(run / "start.keras")
    (run / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    data: keras.utils.PyDataset
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.resident:
        resident = ResidentTrainer(
            model, pack(sources, max_points or 1), cfg.crop, spec.output_stride,
            cfg.batch_size, cfg.steps_per_epoch, cfg.steps_per_call, cfg.seed, max_points,
        )
        data = resident.feeder
        callbacks.append(resident)
    elif cfg.distill:
        data = DistilledDataset(
            sources, cfg.crop, spec.output_stride, cfg.batch_size, cfg.steps_per_epoch,
            seed=cfg.seed, max_points=max_points, workers=cfg.workers,
            use_multiprocessing=False, max_queue_size=8,
            betas=parse_distill(cfg.distill, [s.name for s in sources]),
            teacher=Teacher(_teacher_path(cfg)),
        )
    else:
        data = DensityDataset(
            sources, cfg.crop, spec.output_stride, cfg.batch_size, cfg.steps_per_epoch,
            seed=cfg.seed, max_points=max_points, workers=cfg.workers,
            use_multiprocessing=False, max_queue_size=8,
        )
    monitor = "val_score" if val_sets else "loss"
    if val_sets:
        callbacks.append(CountValidation(val_sets, max_side=cfg.val_max_side))
    callbacks += [
        # Restores weights, optimizer state and epoch counter when an interrupted run
        # resumes; it runs before the checkpoints and the CSV log so that an epoch logged
        # is an epoch backed up.
        keras.callbacks.BackupAndRestore(str(run / "backup")),
        keras.callbacks.ModelCheckpoint(run / "best.keras", monitor=monitor, mode="min",
                                        save_best_only=True),
        keras.callbacks.ModelCheckpoint(run / "last.keras"),
        *([keras.callbacks.ModelCheckpoint(str(run / "epoch{epoch:03d}.keras"))]
          if cfg.keep_epochs else []),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="min", factor=0.5,
                                          patience=max(2, cfg.patience // 3), min_lr=1e-6),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=cfg.patience),
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        MemoryCleanup(),
    ]
    if cfg.time_budget:
        callbacks.append(TimeBudget(cfg.time_budget))
    t0 = time.monotonic()
    history = model.fit(data, epochs=cfg.epochs, callbacks=callbacks, verbose=cfg.verbose)
    if cfg.precision == "bfloat16":
        _save_float32(run, spec)
    logs = {k: v[-1] for k, v in history.history.items()}
    logs["seconds"] = time.monotonic() - t0
    logs["epochs_run"] = len(history.history.get("loss", []))
    (run / "result.json").write_text(json.dumps(logs, indent=1))
    return {"logs": logs, "best": str(run / "best.keras"), "last": str(run / "last.keras")}
