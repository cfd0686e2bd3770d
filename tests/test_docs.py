"""The documentation: the site builds strictly, the generated configuration page is
current, and what the README and the pages tell a reader to type works (TOML examples are
valid configs, ``crowdcount ...`` commands parse, links point at files that exist)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from crowdcount.streamer.cli import build_parser
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.version import VERSION

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(path.read_text(encoding="utf-8"))
            if kind == lang]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_generated_from_the_config_models() -> None:
    reference = _load_script("config_reference")
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference.render(), (
        "docs/configuration.md is stale: run python scripts/config_reference.py"
    )
    # Every key of every table is there, with its default and bounds.
    for key, row in {
        "max_side": "| `max_side` | integer | unset | ≥ 32, ≤ 8 192 |",
        "stall_timeout": "| `stall_timeout` | number | `5.0` | > 0, ≤ 3 600 |",
        "qos": "| `qos` | `0` \\| `1` \\| `2` | `0` |",
        "points": "| `points` | array of [number, number] | **required** | at least 3 items |",
    }.items():
        assert row in committed, key
    for table in ("[server]", "[model]", "[[streams]]", "[[streams.zones]]", "[[thresholds]]",
                  "[sinks.webhook]", "[sinks.mqtt]", "[cluster]"):
        assert f"## `{table}`" in committed


def test_api_reference_is_generated_from_the_routes() -> None:
    """docs/api-reference.md and docs/openapi.json are what the routes describe now, and
    name every operation (the same document GET /api/openapi.json serves)."""
    reference = _load_script("api_reference")
    for path, text in reference.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python scripts/api_reference.py")
    page = (DOCS / "api-reference.md").read_text(encoding="utf-8")
    spec = reference.spec()
    for path, item in spec["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in page


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_toml_examples_are_valid_configs(path: Path) -> None:
    """A ```toml block in the docs is a whole config file that ``serve`` accepts (write a
    fragment as ```text if it cannot stand alone)."""
    for block in _blocks(path, "toml"):
        parse_config(tomllib.loads(block), source=path.name)


def _commands(text: str) -> list[list[str]]:
    """The ``crowdcount ...`` command lines of a shell block (continuations joined, comments
    and environment assignments dropped)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)
        if words and words[0] == "crowdcount":
            out.append(words[1:])
    return out


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_crowdcount_commands_in_shell_examples_parse(path: Path) -> None:
    parser = build_parser()
    for block in _blocks(path, "bash"):
        for argv in _commands(block):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{path.name}: `crowdcount {shlex.join(argv)}` exits {exc.code}")


def test_readme_is_a_front_page_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    bash = "\n".join(_blocks(README, "bash"))
    for script in ("scripts/serve.sh", "scripts/test.sh"):
        assert re.search(rf"^bash {script}\b", bash, re.MULTILINE), script
        assert (ROOT / script).is_file()
    assert sum(len(_commands(b)) for b in _blocks(README, "bash")) >= 5
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_version_flag_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"crowdcount {VERSION}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_changelog_names_the_current_version_first() -> None:
    headings = re.findall(r"^## \[?([^\]\s]+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings and headings[0] == VERSION


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    """Strict: a broken link or anchor, a page missing from the nav or a bad config fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "configuration" / "index.html").is_file() or (
        tmp_path / "configuration.html").is_file()
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in html and "unpkg.com" not in html
    assert (tmp_path / "search" / "search_index.json").is_file()


def test_model_page_accuracy_is_the_model_cards() -> None:
    """The accuracy table of docs/model.md says what model/weights/default.json (the card
    shipped beside the weights) measured: images, MAE, RMSE and bias of each hold-out."""
    import json

    card = json.loads((ROOT / "model" / "weights" / "default.json").read_text())
    metrics = card["metrics"]["at_serving_max_side_768"]
    page = (DOCS / "model.md").read_text(encoding="utf-8")
    rows = {
        "Mall test (frames 801–2000)": metrics["mall_test_801_2000"],
        "ShanghaiTech B hold-out": metrics["shanghaitech_b_holdout_every_10th"],
        "ShanghaiTech A hold-out": metrics["shanghaitech_a_holdout_every_10th"],
    }
    for label, m in rows.items():
        line = next(row for row in page.splitlines() if row.startswith(f"| {label} |"))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        images, mae, rmse, bias = int(cells[1]), float(cells[2]), float(cells[3]), float(cells[4])
        assert images == m["images"], label
        digits = 2 if m["mae"] < 10 else 1
        assert mae == round(m["mae"], digits), label
        assert rmse == round(m["rmse"], digits), label
        assert bias == pytest.approx(m["bias"], abs=0.05 if digits == 1 else 0.005), label
    assert f"served at `max_side` {card['serving']['max_side']}" in page
    assert f"{card['architecture']['parameters']:,}".replace(",", " ") in page
