"""The ``crowdcount`` command as users run it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from crowdcount.model.errors import UserError, run_parser
from crowdcount.model.imageio import ImageError
from crowdcount.streamer.config import ConfigError
from tests.fixtures.datasets import crowd_picture
from tests.fixtures.media import level, write_levels_clip

ROOT = Path(__file__).resolve().parents[1]


def crowdcount(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crowdcount.streamer.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("pics")
    paths = []
    for i, n in enumerate((0, 40)):
        path = root / f"crowd_{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crowd_picture(n, seed=i), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_count_json_lines_and_overlay(pictures, tmp_path):
    out = tmp_path / "overlays"
    result = crowdcount("count", *map(str, pictures), "--json", "--overlay", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in pictures]
    assert lines[0]["count"] < 1 < 5 < lines[1]["count"]
    overlay = cv2.imread(str(out / "crowd_1_overlay.png"))
    assert overlay.shape == (480, 640, 3)


def test_count_single_overlay_file(pictures, tmp_path):
    result = crowdcount("count", str(pictures[1]), "--overlay", str(tmp_path / "o.png"))
    assert result.returncode == 0
    name, count = result.stdout.strip().split("\t")
    assert name == str(pictures[1]) and float(count) > 5
    assert (tmp_path / "o.png").stat().st_size > 10_000


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("not an image"), "not a readable image"),
    (lambda p: p.write_bytes(b""), "empty file"),
])
def test_count_bad_input_exits_2_with_one_line(tmp_path, make, message):
    path = tmp_path / "x.jpg"
    make(path)
    result = crowdcount("count", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "crowdcount count: error:" in result.stderr


def test_truncated_jpeg_exits_2(tmp_path, pictures):
    _, data = cv2.imencode(".jpg", cv2.imread(str(pictures[1])))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.tobytes()[:2000])
    result = crowdcount("count", str(path))
    assert result.returncode == 2 and "not a readable image" in result.stderr


def test_missing_model_exits_2(pictures, tmp_path):
    result = crowdcount("count", str(pictures[0]), "--model", str(tmp_path / "m.onnx"))
    assert result.returncode == 2 and "model file not found" in result.stderr


@pytest.mark.slow
def test_evaluate_and_errors(tmp_path, generic_dataset):
    csv_path, plot_path = tmp_path / "r.csv", tmp_path / "p.png"
    result = crowdcount("evaluate", f"generic:{generic_dataset}", f"generic:{generic_dataset}:1-3",
                        "--csv", str(csv_path), "--plot", str(plot_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("images=8 MAE=")
    lines = result.stdout.splitlines()
    assert lines[1].startswith("  bin    <=50: images=8 MAE=")  # counts 0-12: one bin
    assert lines[2].startswith("images=3 MAE=") and lines[2].endswith(":1-3")
    assert len(csv_path.read_text().splitlines()) == 12 and plot_path.stat().st_size > 5000
    bad = crowdcount("evaluate", "mall:/nonexistent/mall")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "crowdcount evaluate: error: /nonexistent/mall/mall_gt.mat: ground truth file missing")
    bad = crowdcount("evaluate", f"generic:{generic_dataset}:3-99")
    assert bad.returncode == 2 and "range '3-99' outside 1-8" in bad.stderr


@pytest.mark.slow
def test_train_and_export_errors(tmp_path, generic_dataset):
    result = crowdcount("train", "--data", f"generic:{generic_dataset}", "--run-dir",
                        str(tmp_path / "r"), "--backbone-weights", str(tmp_path / "w.h5"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"backbone weights file not found: {tmp_path}/w.h5")
    result = crowdcount("export", str(tmp_path / "none.keras"), "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "model not found" in result.stderr


def test_usage_errors_exit_2():
    result = crowdcount("count")
    assert result.returncode == 2 and "the following arguments are required" in result.stderr


def test_count_does_not_import_tensorflow(pictures):
    code = ("import sys; from crowdcount.streamer.cli import main; "
            f"main(['count', {str(pictures[0])!r}]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False False"


# -- recorded video and folders ----------------------------------------------------------

CELLS = (256 // 8) * (320 // 8)  # brightness-model cells of a 320x256 frame
STEP = 4 / 255 * CELLS  # count difference between neighbouring frames of a levels clip


@pytest.fixture(scope="module")
def levels(tmp_path_factory) -> Path:
    """50 frames at 10 fps; frame i is flat grey level(i) on the left, black on the right."""
    return write_levels_clip(tmp_path_factory.mktemp("video") / "levels.mp4", split=True)


def left_count(index: int) -> float:
    return level(index) / 255 * CELLS / 2


def test_count_video_json_one_line_per_frame(levels, brightness_model):
    result = crowdcount("count", str(levels), "--model", str(brightness_model), "--json",
                        "--batch", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(line) for line in lines] == [["path", "frame", "t", "count"]] * 50
    assert [line["frame"] for line in lines] == list(range(50))
    assert [line["t"] for line in lines] == pytest.approx([i / 10 for i in range(50)])
    assert [line["count"] for line in lines] == pytest.approx(
        [left_count(i) for i in range(50)], abs=STEP / 2)


def test_count_video_every_csv_with_zones(levels, brightness_model, tmp_path):
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [
        {"name": "left", "points": [[0, 0], [160, 0], [160, 256], [0, 256]]},
        {"name": "right", "points": [[160, 0], [320, 0], [320, 256], [160, 256]]}]}))
    out = tmp_path / "counts.csv"
    result = crowdcount("count", str(levels), "--model", str(brightness_model), "--every", "1",
                        "--zones", str(zones), "--csv", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --csv without --json keeps stdout quiet
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "frame", "t", "count", "left", "right"]
    assert [int(r["frame"]) for r in rows] == [0, 10, 20, 30, 40]
    assert [float(r["t"]) for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    for r in rows:
        assert float(r["left"]) == pytest.approx(left_count(int(r["frame"])), abs=STEP / 2)
        assert float(r["right"]) == pytest.approx(0, abs=1)
        assert float(r["left"]) + float(r["right"]) == pytest.approx(float(r["count"]), abs=0.05)


@pytest.mark.parametrize(("points", "problem"), [
    ([[0, 0], [100, 100], [200, 200]], "points enclose no area"),
    ([[0, 0], [-5, 1], [2, 9]], "point 1 (-5.0, 1.0) must be finite and >= 0"),
    ([[0, 0], [1, 1]], "needs at least 3 points"),
])
def test_count_refuses_the_zones_the_api_refuses(levels, brightness_model, tmp_path, points,
                                                  problem):
    """One rule for a zone (``model.zones.check_points``) at every door: the CLI's
    ``--zones`` file refuses what ``PUT /api/streams/{id}/zones`` and the config refuse."""
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps([{"name": "flat", "points": points}]))
    result = crowdcount("count", str(levels), "--model", str(brightness_model),
                        "--zones", str(zones))
    assert result.returncode == 2 and result.stdout == ""
    assert problem in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_count_video_zones_from_config_stream(levels, brightness_model, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[model]\npath = "{brightness_model}"\n\n'
        '[[streams]]\nname = "door"\nurl = "rtsp://127.0.0.1:1/x"\n\n'
        '[[streams.zones]]\nname = "left"\npoints = [[0, 0], [160, 0], [160, 256], [0, 256]]\n')
    result = crowdcount("count", str(levels), "--config", str(config), "--every", "2", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["frame"] for line in lines] == [0, 20, 40]
    for line in lines:
        assert line["zones"]["left"] == pytest.approx(left_count(line["frame"]), abs=STEP / 2)


def test_count_video_overlay_is_h264_with_the_source_timing(levels, brightness_model, tmp_path):
    out = tmp_path / "annotated.mp4"
    result = crowdcount("count", str(levels), "--model", str(brightness_model), "--every",
                        "0.5", "--overlay", str(out))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 10
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert [f.time for f in frames] == pytest.approx([i * 0.5 for i in range(10)])
    image = frames[-1].to_ndarray(format="rgb24")
    assert image.shape == (256, 320, 3)
    # The heatmap tints the bright half: the overlay is not the source frame.
    assert abs(float(image[128:, 40:120].mean()) - level(45)) > 10


def test_count_video_progress_bar_on_request(levels, brightness_model):
    result = crowdcount("count", str(levels), "--model", str(brightness_model), "--progress",
                        "--csv", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert "50/50" in result.stderr and "frame/s" in result.stderr


def test_video_with_an_unknown_suffix_is_tried(levels, brightness_model, tmp_path):
    odd = tmp_path / "recording.bin"
    odd.write_bytes(levels.read_bytes())
    result = crowdcount("count", str(odd), "--model", str(brightness_model), "--every", "4")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[:3] for line in result.stdout.splitlines()] == [
        [str(odd), "0", "0.000"], [str(odd), "40", "4.000"]]


def test_truncated_video_exits_2(levels, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(levels.read_bytes()[:3000])
    result = crowdcount("count", str(cut))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cut.mp4: not a readable video" in result.stderr


def test_count_folder_sorted_and_recursive(pictures, brightness_model, tmp_path):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    for name, value in (("b.png", 200), ("a.jpg", 100), ("sub/c.png", 50), (".hidden.png", 9)):
        cv2.imwrite(str(folder / name), np.full((64, 96, 3), value, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    result = crowdcount("count", str(folder), "--model", str(brightness_model), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(folder / "a.jpg"), str(folder / "b.png")]
    cells = (64 // 8) * (96 // 8)
    assert [line["count"] for line in lines] == pytest.approx(
        [100 / 255 * cells, 200 / 255 * cells], abs=1)
    deep = crowdcount("count", str(folder), "--recursive", "--model", str(brightness_model))
    assert [line.split("\t")[0] for line in deep.stdout.splitlines()] == [
        str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "sub" / "c.png")]


def test_empty_folder_exits_2(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    result = crowdcount("count", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"crowdcount count: error: {tmp_path / 'empty'}: no images in this folder "
        "(--recursive also looks in sub-folders)"]
# -- user errors and bugs ------------------------------------------------------------------------


def _parser(run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crowdcount")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("job").set_defaults(run=run)
    return parser


@pytest.mark.parametrize("error", [
    UserError("photo.jpg: not a\nreadable image"),
    ImageError("photo.jpg: not a\nreadable image"),
    ConfigError("crowd.toml", "streams[0].name", "not a\nreadable image"),
    FileNotFoundError("photo.jpg: not a readable image"),
])
def test_user_error_exits_2_with_one_line(capsys, error: Exception) -> None:
    def run(args: argparse.Namespace) -> int:
        raise error

    assert run_parser(_parser(run), ["job"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("crowdcount job: error: ") and out.err.endswith("\n")
    assert out.err.count("\n") == 1 and "not a readable image" in out.err


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast"),
                                 KeyError("zones"), RuntimeError("worker died")])
def test_a_bug_keeps_its_traceback(capsys, bug: Exception) -> None:
    """A plain ValueError is a bug in this code, not the user's input: it propagates (the
    interpreter prints the traceback and exits 1)."""
    def run(args: argparse.Namespace) -> int:
        raise bug

    with pytest.raises(type(bug)):
        run_parser(_parser(run), ["job"])
    assert capsys.readouterr().err == ""


def test_a_bug_in_the_command_prints_a_traceback(tmp_path: Path) -> None:
    """End to end: the real ``main`` with a sub-command whose code raises a ValueError."""
    script = tmp_path / "bug.py"
    script.write_text(
        "import sys\n"
        "from crowdcount.model import cli\n"
        "def broken(args):\n"
        "    raise ValueError('shapes (3,) and (4,) not aligned')\n"
        "cli.run_count = broken\n"
        "from crowdcount.streamer.cli import main\n"
        "sys.exit(main(['count', 'x.jpg']))\n"
    )
    # run_count is bound when the parser is built, after the patch above.
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: shapes (3,) and (4,) not aligned" in result.stderr


def test_training_cli_does_not_import_the_server() -> None:
    code = (
        "import sys\n"
        "from crowdcount.training import cli\n"
        "try:\n"
        "    cli.main(['export', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('crowdcount.streamer')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
