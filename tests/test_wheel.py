"""The package as a user installs it: a wheel built from this tree, installed into a fresh
venv outside the repository, run from another folder.

Why a plain venv and not ``--system-site-packages``: the development venv holds an editable
install whose import hook maps ``crowdcount`` back to the checkout, and a test that can see
it passes whatever the wheel contains. The fresh venv gets the wheel with ``--no-deps``;
its dependencies come from the running interpreter's site-packages folders, listed in a
``.pth`` file as plain paths. Python executes the ``.pth`` files only of its own site
folders, so the editable install's hook (itself a ``.pth`` in those folders) stays off,
and every ``crowdcount`` module must come from the new venv; the test checks that it does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import cv2
import pytest

from crowdcount.model.backends import default_backend
from crowdcount.streamer.version import VERSION
from tests.fixtures.datasets import crowd_picture
from tests.fixtures.rtsp import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Checkout state that is not part of a source tree (and would make the copy slow or stale).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache",
                                    "test-artifacts", "runs", "artifacts", ".gpu", ".whl",
                                    "*.sqlite3")


@dataclass(frozen=True)
class Installed:
    venv: Path
    python: Path
    site: Path
    added: frozenset[str]  # names the install added to site-packages
    record: tuple[str, ...]  # the wheel's RECORD paths
    elsewhere: Path  # a folder outside both the repository and the venv


def _run(*cmd: object, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                          **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CROWDCOUNT_TOKEN", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    major = int(version("setuptools").split(".")[0])
    if major < 77:
        pytest.skip(f"building offline needs setuptools>=77 (the dev extra), found {major}")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", wheels, source)
    (wheel,) = wheels.glob("crowdcount-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     env=_clean_env()).stdout.strip())
    before = set(os.listdir(site))
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-index", "-q", wheel)
    added = frozenset(set(os.listdir(site)) - before)
    (dist_info,) = (n for n in added if n.endswith(".dist-info"))
    record = tuple(line.split(",")[0]
                   for line in (site / dist_info / "RECORD").read_text().splitlines())
    # The dependencies: this interpreter's site folders, as plain paths (see the docstring).
    deps = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    (site / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return Installed(venv, python, site, added, record, elsewhere)


def test_wheel_adds_only_the_crowdcount_name(installed: Installed) -> None:
    # The wheel's version is streamer/version.py's (pyproject's dynamic version).
    dist_info = f"crowdcount-{VERSION}.dist-info"
    assert installed.added == {"crowdcount", dist_info}
    tops = {p.split("/")[0] for p in installed.record if not p.startswith("../")}
    assert tops == {"crowdcount", dist_info}
    files = set(installed.record)
    for asset in ("index.html", "app.js", "zones.js", "style.css"):
        assert f"crowdcount/web/{asset}" in files
    assert "crowdcount/model/weights/default.onnx" in files


def test_installed_modules_come_from_the_new_venv(installed: Installed) -> None:
    code = (
        "import json, sys, crowdcount, crowdcount.web, crowdcount.model.bundled as b, "
        "crowdcount.streamer.app as a\n"
        "print(json.dumps({'path': list(crowdcount.__path__), 'files': [crowdcount.web.__file__,"
        " b.__file__, a.__file__, str(crowdcount.web.ASSETS_DIR), str(b.DEFAULT_ONNX)],"
        " 'editable': [repr(f) for f in sys.meta_path if 'editable' in repr(f).lower()]}))"
    )
    found = json.loads(_run(installed.python, "-c", code, cwd=installed.elsewhere,
                            env=_clean_env()).stdout)
    assert found["editable"] == []
    for path in [*found["path"], *found["files"]]:
        assert Path(path).is_relative_to(installed.site), path


def _fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def test_installed_serve_answers_with_page_scripts_and_bundled_model(
    installed: Installed,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [installed.venv / "bin" / "crowdcount", "serve", "--port", str(port), "--database",
         installed.elsewhere / "counts.sqlite3"],
        cwd=installed.elsewhere, env=_clean_env(), stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            try:
                status, _, body = _fetch(f"{base}/api/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() - started < 30, "server did not answer"
                time.sleep(0.1)
        assert status == 200
        model = json.loads(body)["model"]
        assert model["backend"] == default_backend()  # the same rule as in this checkout
        assert Path(model["path"]).is_relative_to(installed.site)

        status, kind, page = _fetch(f"{base}/")
        assert (status, kind) == (200, "text/html"), page[:200]
        html = page.decode()
        assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
        assert {"/static/app.js", "/static/zones.js", "/static/style.css"} <= assets
        # ES modules import each other: follow the relative imports too.
        pending, seen = sorted(assets), set()
        while pending:
            asset = pending.pop()
            if asset in seen:
                continue
            seen.add(asset)
            status, kind, body = _fetch(base + asset)
            assert status == 200, asset
            if asset.endswith(".css"):
                assert kind == "text/css", asset
            else:
                assert kind in ("application/javascript", "text/javascript"), (asset, kind)
                for rel in re.findall(r'from\s+["\']\./([^"\']+)["\']', body.decode()):
                    pending.append(f"/static/{rel}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0


def test_installed_count_finds_the_bundled_model(installed: Installed) -> None:
    picture = installed.elsewhere / "crowd.png"
    cv2.imwrite(str(picture), cv2.cvtColor(crowd_picture(40, seed=3), cv2.COLOR_RGB2BGR))
    out = _run(installed.venv / "bin" / "crowdcount", "count", picture, "--json",
               cwd=installed.elsewhere, env=_clean_env()).stdout
    assert json.loads(out)["count"] > 5
