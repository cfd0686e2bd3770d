"""``crowdcount count PATH...``: images, folders of images and recorded video.

An image gives one count; a folder gives one per image in it (sorted by path, sub-folders
with ``--recursive``); a video gives one per decoded frame, or per ``--every`` seconds of
video time, with the frame number and the video timestamp. Whether a file is a video is
decided by its suffix, and for an unknown suffix by trying it: an image reader first, then
PyAV. Results go to stdout (tab-separated, or JSON lines with ``--json``) or, with
``--csv``, to a file (stdout then stays quiet unless ``--json`` is given too).

The progress bar (tqdm, on stderr) appears when stderr is a terminal; ``--progress`` forces
it on (e.g. under ``script`` or in CI logs), ``--no-progress`` off.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from crowdcount.model.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from crowdcount.model.runtime import Runtime
    from crowdcount.model.zones import Zone

#: Suffixes counted as images (what OpenCV decodes); a folder contributes only these.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif",
                            ".tiff", ".pbm", ".pgm", ".ppm", ".pnm", ".jp2"})
#: Suffixes taken as video without trying them as images first.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                            ".ts", ".m2ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv", ".y4m",
                            ".h264", ".264", ".hevc", ".h265"})
#: Containers the H.264 overlay of a video can be written to.
OVERLAY_VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv"})


def add_count(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("count", help="count people in images, folders of images and videos")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="an image, a folder of images or a video file (anything PyAV opens)")
    p.add_argument("--model", type=Path, help="model file; default: the bundled model")
    p.add_argument("--backend", choices=["openvino", "onnx", "tflite", "keras"],
                   help="inference runtime (default: openvino where installed, else onnx)")
    p.add_argument("--max-side", type=int, help="shrink so the longer side is at most this")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="write path,frame,t,count[,zones...] rows here (stdout stays quiet "
                        "unless --json)")
    p.add_argument("--overlay", type=Path,
                   help="write the heatmap overlay here: a PNG per image, an H.264 MP4 per "
                        "video (with several inputs: a folder)")
    p.add_argument("--recursive", "-r", action="store_true",
                   help="count images in sub-folders of a folder too")
    p.add_argument("--every", type=float, metavar="SECONDS",
                   help="videos: count one frame per this many seconds of video time")
    p.add_argument("--batch", type=int, default=4,
                   help="videos: frames per model call (default 4)")
    zones = p.add_mutually_exclusive_group()
    zones.add_argument("--zones", type=Path, metavar="FILE",
                       help='zones JSON: [{"name", "points": [[x, y], ...]}, ...] or the '
                            "body of GET /api/streams/{id}/zones; adds a count per zone")
    zones.add_argument("--config", type=Path, metavar="FILE",
                       help="a serve config file: its model settings and the zones and "
                            "max_side of one of its streams (see --stream)")
    p.add_argument("--stream", metavar="NAME",
                   help="with --config: the stream whose zones apply (default: the only "
                        "stream that has zones)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")
    p.set_defaults(run=run_count)


@dataclass(frozen=True, slots=True)
class Input:
    path: Path
    video: bool


def is_video(path: Path) -> bool:
    """By suffix; for an unknown one an image reader is tried first, then PyAV."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return False
    if suffix in VIDEO_SUFFIXES:
        return True
    import cv2

    if cv2.haveImageReader(str(path)):
        return False
    from crowdcount.model.video import probe_video

    try:
        probe_video(path)
    except ValueError:
        return False  # neither: reading it as an image gives the one-line error
    return True


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files in ``folder`` by suffix, sorted; hidden files and folders are skipped."""
    found = (folder.rglob if recursive else folder.glob)("*")
    images = sorted(
        p for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not images:
        hint = "" if recursive else " (--recursive also looks in sub-folders)"
        raise UserError(f"{folder}: no images in this folder{hint}")
    return images


def gather(paths: Iterable[Path], recursive: bool) -> list[Input]:
    """Expand folders and classify files, so a missing file fails before the model loads."""
    inputs: list[Input] = []
    for path in paths:
        if path.is_dir():
            inputs.extend(Input(p, False) for p in folder_images(path, recursive))
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        else:
            inputs.append(Input(path, is_video(path)))
    return inputs


def load_zones_file(path: Path) -> list[Zone]:
    """Zones from JSON: a list of ``{"name", "points"}`` or ``{"zones": [...]}``."""
    from crowdcount.model.zones import Zone, check_unique_names

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read zones ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not JSON ({exc})") from None
    items = data.get("zones") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UserError(f'{path}: expected a list of {{"name", "points"}} zones')
    zones = []
    for i, item in enumerate(items):
        try:
            zones.append(Zone.from_dict(item))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: zones[{i}]: {exc}") from None
    try:
        check_unique_names(z.name for z in zones)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    return zones


def apply_config(args: argparse.Namespace) -> list[Zone]:
    """Fill model settings the command line left open from ``--config``; its stream's
    zones (and ``max_side``, so counts match what ``serve`` reports)."""
    from crowdcount.model.zones import Zone
    from crowdcount.streamer.config import load_config

    config = load_config(args.config)
    if args.model is None and config.model.path is not None:
        args.model = config.model.path
    if args.backend is None:
        args.backend = config.model.backend
    args.threads = config.model.threads
    if args.stream is not None:
        streams = [s for s in config.streams if s.name == args.stream]
        if not streams:
            names = ", ".join(s.name for s in config.streams) or "none"
            raise UserError(f"{args.config}: no stream {args.stream!r} (streams: {names})")
    else:
        streams = [s for s in config.streams if s.zones]
        if len(streams) > 1:
            raise UserError(f"{args.config}: several streams have zones; choose one with "
                             "--stream")
    if not streams:
        return []
    stream = streams[0]
    if args.max_side is None:
        args.max_side = stream.max_side
    return [Zone(z.name, z.points) for z in stream.zones]


class Output:
    """Where results go: stdout lines (text or JSON) and/or CSV rows."""

    FIXED = ("path", "frame", "t", "count")

    def __init__(self, as_json: bool, csv_file: IO[str] | None, zone_names: Sequence[str],
                 echo: Callable[[str], None]) -> None:
        self.as_json = as_json
        self.quiet = csv_file is not None and not as_json
        self.zone_names = list(zone_names)
        self.echo = echo
        self.csv = None
        if csv_file is not None:
            self.csv = csv.writer(csv_file)
            columns = [f"zone:{n}" if n in self.FIXED else n for n in self.zone_names]
            self.csv.writerow([*self.FIXED, *columns])

    def emit(self, path: Path, count: float, zones: dict[str, float],
             frame: int | None = None, t: float | None = None) -> None:
        if self.csv is not None:
            self.csv.writerow([
                str(path), "" if frame is None else frame, "" if t is None else f"{t:.3f}",
                f"{count:.2f}", *(f"{zones[n]:.2f}" for n in self.zone_names)])
        if self.quiet:
            return
        if self.as_json:
            item: dict[str, Any] = {"path": str(path)}
            if frame is not None:
                item.update(frame=frame, t=round(t or 0.0, 3))
            item["count"] = round(count, 2)
            if zones:
                item["zones"] = {n: round(v, 2) for n, v in zones.items()}
            self.echo(json.dumps(item))
        else:
            fields = [str(path)]
            if frame is not None:
                fields += [str(frame), f"{t:.3f}"]
            fields.append(f"{count:.1f}")
            fields += [f"{n}={v:.1f}" for n, v in zones.items()]
            self.echo("\t".join(fields))


def run_count(args: argparse.Namespace) -> int:
    from crowdcount.model.runtime import Runtime
    from crowdcount.model.zones import ZoneCounter

    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.every is not None and not args.every > 0:
        raise UserError(f"--every must be positive, got {args.every}")
    if args.stream is not None and args.config is None:
        raise UserError("--stream chooses a stream of --config FILE")
    args.threads = None
    zones: list[Zone] = []
    if args.zones is not None:
        zones = load_zones_file(args.zones)
    elif args.config is not None:
        zones = apply_config(args)
    inputs = gather(args.paths, args.recursive)
    many = len(inputs) > 1 or any(p.is_dir() for p in args.paths)
    if args.overlay and many:
        args.overlay.mkdir(parents=True, exist_ok=True)
    elif args.overlay and inputs[0].video and (
            args.overlay.suffix.lower() not in OVERLAY_VIDEO_SUFFIXES):
        raise UserError(f"{args.overlay}: a video's overlay is H.264 video: name it .mp4")
    from crowdcount.model.video import probe_video

    infos = {i.path: probe_video(i.path) for i in inputs if i.video}  # fail before the model
    runtime = Runtime.open(args.model, args.backend, threads=args.threads,
                           max_side=args.max_side)
    counter = ZoneCounter(zones)
    with ExitStack() as stack:
        csv_file = None
        if args.csv is not None:
            csv_file = stack.enter_context(args.csv.open("w", newline=""))
        bars = _Bars(args.progress)
        out = Output(args.json, csv_file, [z.name for z in zones], bars.echo)
        images = [i.path for i in inputs if not i.video]
        image_bar = bars.open(len(images), "images", "image") if len(images) > 1 else None
        for item in inputs:
            overlay = None
            if args.overlay:
                suffix = "_overlay.mp4" if item.video else "_overlay.png"
                overlay = args.overlay / f"{item.path.stem}{suffix}" if many else args.overlay
            if item.video:
                info = infos[item.path]
                bar = bars.open(info.expected(args.every), item.path.name, "frame")
                for frame, count, zone_counts in _video_results(
                        runtime, counter, item.path, info, args, overlay, zones):
                    out.emit(item.path, count, zone_counts, frame.index, frame.t)
                    bars.step(bar)
                bars.close(bar)
            else:
                _count_image(runtime, counter, item.path, out, overlay, zones)
                bars.step(image_bar)
        bars.close(image_bar)
    return 0


def _count_image(runtime: Runtime, counter: Any, path: Path, out: Output,
                 overlay: Path | None, zones: Sequence[Zone]) -> None:
    import cv2

    from crowdcount.model.imageio import read_image

    image = read_image(path)
    (density,) = runtime.predict([image])
    count = float(density.sum())
    zone_counts = counter.count(density, (image.shape[1], image.shape[0]))
    out.emit(path, count, zone_counts)
    if overlay is not None:
        picture = _picture(image, density, count, zones, zone_counts)
        if not cv2.imwrite(str(overlay), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise UserError(f"cannot write overlay to {overlay}")


def _video_results(
    runtime: Runtime, counter: Any, path: Path, info: Any, args: argparse.Namespace,
    overlay: Path | None, zones: Sequence[Zone],
) -> Iterator[tuple[Any, float, dict[str, float]]]:
    from crowdcount.model.video import VideoWriter, count_video

    writer = None
    if overlay is not None:
        rate = info.rate
        if args.every is not None and (rate is None or args.every > 1 / rate):
            rate = Fraction(1 / args.every).limit_denominator(1000)
        writer = VideoWriter(overlay, info.width, info.height, rate)
    try:
        for frame, density in count_video(runtime, path, args.batch, args.every):
            count = float(density.sum())
            size = (frame.image.shape[1], frame.image.shape[0])
            zone_counts = counter.count(density, size)
            if writer is not None:
                writer.write(_picture(frame.image, density, count, zones, zone_counts,
                                      clock=f"{frame.t:.1f} s"), frame.t)
            yield frame, count, zone_counts
    finally:
        if writer is not None:
            writer.close()


def _picture(image: NDArray[np.uint8], density: NDArray[np.float32], count: float,
             zones: Sequence[Zone], zone_counts: dict[str, float],
             clock: str | None = None) -> NDArray[np.uint8]:
    """The overlay: ``counted_overlay`` for a plain picture; with zones or a timestamp the
    live view's ``annotate`` (zone outlines and counts, the video time)."""
    from crowdcount.model.render import annotate, counted_overlay
    from crowdcount.model.types import Frame, Result

    if not zones and clock is None:
        return counted_overlay(image, density)
    result = Result(Frame("", 0, 0.0, image), density, count, 0.0, zone_counts)
    return annotate(result, clock=clock, zones=zones)


class _Bars:
    """tqdm bars on stderr (frames/s and time left), shown as ``--progress`` says; stdout
    lines go through ``tqdm.write`` so they do not tear a bar on the same terminal."""

    def __init__(self, progress: bool | None) -> None:
        self.disable = None if progress is None else not progress  # None: only on a TTY
        self.active = 0

    def open(self, total: int | None, desc: str, unit: str) -> Any:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=self.disable,
                   dynamic_ncols=True, leave=True)
        if not bar.disable:
            self.active += 1
            return bar
        bar.close()
        return None

    def step(self, bar: Any) -> None:
        if bar is not None:
            bar.update(1)

    def close(self, bar: Any) -> None:
        if bar is not None:
            bar.close()
            self.active -= 1

    def echo(self, line: str) -> None:
        if self.active:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            print(line)
