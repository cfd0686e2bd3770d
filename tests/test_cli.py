"""The ``crowdcount`` command as users run it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from crowdcount.model.errors import UserError, run_parser
from crowdcount.model.imageio import ImageError
from crowdcount.streamer.config import ConfigError
from tests.fixtures.datasets import crowd_picture

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
    result = crowdcount("evaluate", f"generic:{generic_dataset}", "--csv", str(csv_path),
                        "--plot", str(plot_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("images=8 MAE=")
    assert len(csv_path.read_text().splitlines()) == 9 and plot_path.stat().st_size > 5000
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
