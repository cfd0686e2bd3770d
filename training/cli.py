"""``crowdcount train | evaluate | export | calibrate``: argument parsing only; the work is
in ``training.train``, ``training.evaluate``, ``training.export`` and ``training.calibrate``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

#: Dataset kinds whose images are views with a target each (an empty scene must read ~0,
#: whatever the others read): evaluate lists every image's count under the set's line.
VIEW_KINDS = ("empty", "median")


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, not {text!r}") from None


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a counting network on annotated crowd images")
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]FMT:PATH[:RANGE][@W]",
                   help="training set (repeatable): mall:, shanghaitech:, kaggle:, generic:; "
                        "empty:, median:FMT:..., background:FMT:... (scenes without people)")
    p.add_argument("--val", action="append", default=[], metavar="[NAME=]FMT:PATH[:RANGE]",
                   help="validation set (repeatable); default: every --val-every-th item held out")
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--run-dir", default="runs/default")
    p.add_argument("--preset", choices=["fast", "seed"], default="fast")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="MobileNetV2 width (ImageNet weights exist for 1.0 only)")
    p.add_argument("--backbone-weights", default="auto",
                   help="MobileNetV2 ImageNet weights (.h5); 'auto' = ../shared; 'none' = random")
    p.add_argument("--freeze-backbone", dest="frozen_backbone", action="store_true", default=None)
    p.add_argument("--fine-tune-backbone", dest="frozen_backbone", action="store_false")
    p.add_argument("--output-stride", type=int, choices=[4, 8, 16])
    p.add_argument("--top-stride", type=int, choices=[16, 32], default=16,
                   help="fast preset: 32 keeps MobileNetV2's stride-32 stage (more context)")
    p.add_argument("--decoder-width", type=int, default=64, help="fast preset: decoder channels")
    p.add_argument("--crop", type=_size, help="training crop HEIGHTxWIDTH")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--count-weight", type=float, default=0.0)
    p.add_argument("--density-scale", type=float, default=100.0)
    p.add_argument("--loss", choices=["mse", "bayesian"], default="mse",
                   help="mse: density maps from kernels; bayesian: head points (Ma et al. 2019)")
    p.add_argument("--max-points", type=int, default=1024,
                   help="bayesian: heads per crop, padded to this fixed number")
    p.add_argument("--bayes-sigma", type=float, default=8.0,
                   help="bayesian: likelihood width in pixels")
    p.add_argument("--bayes-background", type=float, default=0.15,
                   help="bayesian: background margin as a fraction of the crop's shorter "
                        "side (0 = no background term)")
    p.add_argument("--val-max-side", type=int,
                   help="validate with images shrunk to this longer side (the serving size)")
    p.add_argument("--patience", type=int, default=12)
    p.add_argument("--time-budget", type=float, help="stop after this many seconds")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--init-model", help="start from this .keras model (fine-tuning)")
    p.add_argument("--grow", choices=["preserve", "fresh"], default="preserve",
                   help="layers the --init-model lacks (--top-stride 32, a wider "
                        "--decoder-width): 'preserve' starts them so the network computes "
                        "exactly what the starting model does; 'fresh' leaves them "
                        "ImageNet/random")
    p.add_argument("--grow-lr-scale", type=float, default=1.0,
                   help="learning-rate factor on the weights growth added (e.g. 0.1: the "
                        "new capacity opens slowly while the trained weights adapt)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="raise the learning rate linearly over this many steps (Adam's "
                        "first steps move every weight of a trained network by the full rate)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also save every epoch's model as epochNNN.keras, for the mean of "
                        "the last epochs' weights (scripts/average_weights.py)")
    p.add_argument("--distill", action="append", default=[], metavar="NAME[=BETA]",
                   help="(repeatable) train on NAME's crops towards (1-BETA) x its "
                        "annotation + BETA x the teacher's map (default BETA 0.5): keeps "
                        "what the teacher does well there; --loss mse only")
    p.add_argument("--teacher", help="distillation teacher (.onnx or .keras; default: "
                                     "--init-model)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-cache", dest="cache", action="store_false")
    p.add_argument("--resident", action="store_true",
                   help="JAX only: all training images in device memory, crops, flips and "
                        "targets inside the jitted step (the GPU path)")
    p.add_argument("--steps-per-call", type=int, default=10,
                   help="resident: optimizer steps per jitted call (must divide "
                        "--steps-per-epoch)")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: Keras' mixed_bfloat16 policy (for GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="Keras progress: auto, 0 (quiet), 1 (bar), 2 (a line per epoch)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from crowdcount.training.train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if cfg.backbone_weights == "none":
        cfg.backbone_weights = None
    result = train(cfg)
    logs = result["logs"]
    print(" ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, int | float)))
    print(f"best model: {result['best']}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="count MAE/RMSE/bias of a model, per dataset and "
                       "per density bin")
    p.add_argument("dataset", nargs="+", metavar="FMT:PATH[:RANGE]")
    p.add_argument("--model", help="model file (.onnx/.tflite/.keras); default: bundled")
    p.add_argument("--backend", choices=["openvino", "onnx", "tflite", "keras"],
                   help="inference runtime (default: openvino where installed, else onnx)")
    p.add_argument("--max-side", type=int, help="shrink images so the longer side is at most this")
    p.add_argument("--csv", help="write per-image results here")
    p.add_argument("--plot", help="write a predicted-vs-true log-scale plot (PNG) here")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """One line per dataset (the overall numbers), then one indented line per density bin."""
    from pathlib import Path

    from crowdcount.model.runtime import Runtime
    from crowdcount.training.evaluate import evaluate, plot, write_csv
    from crowdcount.training.readers import open_dataset

    for spec in args.dataset:
        open_dataset(spec)  # a bad name fails now, not after minutes of counting
    runtime = Runtime.open(args.model, args.backend, max_side=args.max_side)
    reports = []
    for spec in args.dataset:
        report = evaluate(spec, runtime=runtime)
        reports.append(report)
        print(f"{report.overall.line()} dataset={spec}")
        for label, stats in report.bins:
            if stats.n:
                print(f"  bin {label:>7}: {stats.line()}")
        if spec.partition(":")[0] in VIEW_KINDS:
            for name, true, pred in report.rows:
                print(f"  image {name}: true={true:g} predicted={pred:.3f} "
                      f"error={pred - true:+.3f}")
    if args.csv:
        write_csv(reports, Path(args.csv))
    if args.plot:
        plot(reports, Path(args.plot))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a .keras model to ONNX or TFLite")
    p.add_argument("model", help=".keras model")
    p.add_argument("--format", choices=["onnx", "tflite"], default="onnx")
    p.add_argument("--quantize", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="TFLite only")
    p.add_argument("--input-size", type=_size, default=(480, 640),
                   help="fixed input HEIGHTxWIDTH (TFLite; ONNX stays dynamic)")
    p.add_argument("--representative", metavar="FMT:PATH[:RANGE]",
                   help="images for int8 calibration")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's own output (by default only warnings and "
                        "errors)")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from crowdcount.training.export import export_onnx, export_tflite, quiet_tensorflow

    with quiet_tensorflow(args.verbose):
        if args.format == "onnx":
            path = export_onnx(args.model, args.output)
        else:
            path = export_tflite(args.model, args.output, args.input_size, args.quantize,
                                 args.representative)
    print(path)
    return 0


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    from crowdcount.training.calibrate import DEFAULT_TIME_BUDGET

    p = sub.add_parser("calibrate", help="adapt the model to one camera from a few marked "
                       "frames (no TensorFlow: the calibrate extra)")
    p.add_argument("dataset", metavar="generic:DIR[:RANGE]",
                   help="the camera's marked frames (any dataset format train reads)")
    p.add_argument("-o", "--output", required=True, help="ONNX model to write")
    p.add_argument("--base", help="start from this .keras model (default: the bundled one)")
    p.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET,
                   help="at most this many seconds of loading, features and training (the "
                   "guard's run gets half of what is left); the "
                   "recipe's steps are fixed and a slower machine stops short of them")
    p.add_argument("--max-side", type=int,
                   help="run frames at this longer side (default: the bundled model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--progress", action="store_true",
                   help='print progress on stdout as it goes, one JSON line each: '
                        '{"progress": 0..1, "message": "..."} (the server reads them)')
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """Prints the guard's before/after MAE; exits 2 (one line) when calibration does not
    beat the base model on the held-back frames, and writes no model then."""
    import json
    import math

    from crowdcount.model.errors import UserError
    from crowdcount.training.calibrate import MAX_FRAMES, Recipe, calibrate
    from crowdcount.training.readers import open_dataset

    if not math.isfinite(args.time_budget) or not 0 < args.time_budget <= 3600:
        raise UserError("--time-budget must be between 0 and 3600 seconds")
    reader = open_dataset(args.dataset)
    if len(reader) > MAX_FRAMES:
        raise UserError(f"{args.dataset}: {len(reader)} frames; calibration takes at most "
                        f"{MAX_FRAMES} (choose some with :RANGE)")
    samples = [reader[i] for i in range(len(reader))]

    def progress(message: str, fraction: float) -> None:
        print(json.dumps({"progress": round(fraction, 4), "message": message}), flush=True)

    result = calibrate(samples, args.output, base=args.base, time_budget=args.time_budget,
                       max_side=args.max_side, recipe=Recipe(seed=args.seed),
                       progress=progress if args.progress else None)
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    else:
        print(f"frames={result.frames} held_out={result.held_out} "
              f"MAE_before={result.mae_before:.3f} MAE_after={result.mae_after:.3f} "
              f"steps={result.steps} seconds={result.seconds:.1f}")
    if not result.kept:
        raise UserError(f"calibration did not help (held-back MAE {result.mae_before:.3f} "
                        f"-> {result.mae_after:.3f}); no model written")
    print(result.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training``: the same sub-commands without the server's dependencies
    (used on GPU machines that have Keras and JAX but not aiortc)."""
    from crowdcount.model.errors import run_parser

    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_evaluate, add_export, add_calibrate):
        add(sub)
    logging.basicConfig(level=logging.WARNING)
    return run_parser(parser, argv)
