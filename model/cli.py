"""``crowdcount count IMAGE...``: one count per image, optionally a heatmap overlay."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_count(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("count", help="count people in images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", type=Path, help="model file; default: the bundled model")
    p.add_argument("--backend", choices=["onnx", "tflite", "keras"])
    p.add_argument("--max-side", type=int, help="shrink so the longer side is at most this")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--overlay", type=Path,
                   help="write the heatmap overlay here (with several images: a folder)")
    p.set_defaults(run=run_count)


def run_count(args: argparse.Namespace) -> int:
    import cv2

    from crowdcount.model.errors import UserError
    from crowdcount.model.imageio import read_image
    from crowdcount.model.render import counted_overlay
    from crowdcount.model.runtime import Runtime

    images = [(path, read_image(path)) for path in args.images]  # fail before loading a model
    runtime = Runtime.open(args.model, args.backend, max_side=args.max_side)
    many = len(images) > 1
    if args.overlay and many:
        args.overlay.mkdir(parents=True, exist_ok=True)
    for path, image in images:
        (density,) = runtime.predict([image])
        count = float(density.sum())
        if args.json:
            print(json.dumps({"path": str(path), "count": round(count, 2)}))
        else:
            print(f"{path}\t{count:.1f}")
        if args.overlay:
            out = args.overlay / f"{path.stem}_overlay.png" if many else args.overlay
            picture = counted_overlay(image, density)
            if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
                raise UserError(f"cannot write overlay to {out}")
    return 0
