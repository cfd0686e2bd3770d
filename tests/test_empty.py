"""Empty scenes (training/readers/empty.py) on generated footage: a video's temporal median
removes the people who walk through, ``median:`` labels the ones who stay, ``background:``
cuts only head-free areas, the synthetic set is deterministic, and ``crowdcount evaluate``
prints every image of an ``empty:`` set."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from crowdcount.training.readers import DatasetError, open_dataset
from crowdcount.training.readers.empty import head_free_rect, persistent_heads
from tests.fixtures.datasets import write_jpeg

ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 128)


def _background() -> np.ndarray:
    yy, xx = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    return np.stack([xx * 2 % 256, yy * 2 % 256, (xx + yy) % 256], -1).astype(np.uint8)


def _walkers(i: int, sitter: tuple[int, int] | None = (100, 70)) -> tuple[np.ndarray, list]:
    """Frame ``i``: the background, two people crossing it and one who never moves."""
    image = _background().copy()
    points = [((7 * i) % 120 + 4, 20), (120 - (5 * i) % 110, 50)]
    if sitter:
        points.append(sitter)
    for x, y in points:
        cv2.circle(image, (int(x), int(y)), 4, (250, 250, 250), -1)
    return image, points


def test_synthetic_set_is_deterministic_and_empty():
    a, b = open_dataset("empty:synthetic:1-12"), open_dataset("empty:synthetic:1-12")
    assert len(a) == 12
    for i in range(12):
        assert a[i].count == 0 and len(a[i].points) == 0
        np.testing.assert_array_equal(a[i].image, b[i].image)
    stds = [float(a[i].image.std()) for i in range(12)]
    assert min(stds) == 0 and max(stds) > 50  # flat frames and noise both present


def test_video_median_removes_people_walking_through(tmp_path):
    from crowdcount.model.video import VideoWriter

    path = tmp_path / "walk.mp4"
    with VideoWriter(path, SIZE[1], SIZE[0], Fraction(10)) as out:
        for i in range(40):
            out.write(_walkers(i, sitter=None)[0], i / 10)
    reader = open_dataset(f"empty:{path}")
    assert len(reader) == 1
    sample = reader[0]
    assert sample.count == 0
    diff = np.abs(sample.image.astype(int) - _background().astype(int))
    assert np.percentile(diff, 99) < 25  # only codec noise is left, no walker
    assert (diff > 100).mean() < 0.001


def test_a_median_of_large_frames_is_taken_at_a_bounded_size(tmp_path):
    # 2000x1500 frames (a 4K camera's 128 decoded frames would be 3 GB): shrunk to a
    # longer side of MEDIAN_MAX_SIDE, the aspect kept, the picture still the scene's.
    from crowdcount.training.readers.empty import MEDIAN_MAX_SIDE

    ramp = np.tile(np.linspace(0, 255, 2000, dtype=np.float32), (1500, 1))
    scene = np.dstack([ramp, 255 - ramp, np.full_like(ramp, 90)]).astype(np.uint8)
    for i in range(3):
        write_jpeg(tmp_path / "big" / f"{i}.jpg", scene)
    image = open_dataset(f"empty:{tmp_path / 'big'}")[0].image
    assert image.shape == (MEDIAN_MAX_SIDE * 3 // 4, MEDIAN_MAX_SIDE, 3)
    small = cv2.resize(scene, (MEDIAN_MAX_SIDE, MEDIAN_MAX_SIDE * 3 // 4),
                       interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - small.astype(int)).mean() < 3


def test_median_of_an_annotated_set_keeps_the_sitter(tmp_path):
    root = tmp_path / "scene"
    entries = []
    for i in range(30):
        image, points = _walkers(i)
        write_jpeg(root / f"{i:03d}.jpg", image)
        entries.append({"file": f"{i:03d}.jpg", "points": [list(p) for p in points]})
    (root / "annotations.json").write_text(json.dumps({"images": entries}))
    sample = open_dataset(f"median:generic:{root}:1-30")[0]
    assert sample.count == 1
    np.testing.assert_allclose(sample.points[0], (100, 70), atol=0.5)
    assert sample.image[70, 100].min() > 200  # the sitter is in the median


def test_persistent_heads_needs_half_of_the_frames():
    rng = np.random.default_rng(0)
    frames = [np.array([[50 + rng.normal(0, 2), 40 + rng.normal(0, 2)],
                        rng.uniform(0, 300, 2)], np.float32) for _ in range(10)]
    assert len(persistent_heads(frames)) == 1
    assert len(persistent_heads(frames[:4] + [np.zeros((0, 2), np.float32)] * 6)) == 0


def test_head_free_rect_avoids_people():
    points = np.array([[40, 30], [60, 35], [300, 200]], np.float32)
    y0, x0, y1, x1 = head_free_rect(points, (480, 640))
    assert min(y1 - y0, x1 - x0) >= 96
    for x, y in points:  # no head or the body below it inside
        assert not (x0 - 32 <= x <= x1 + 32 and y0 - 7 * 32 <= y <= y1 + 64)
    crowded = np.stack(np.meshgrid(np.arange(0, 640, 20), np.arange(0, 480, 20)), -1)
    assert head_free_rect(crowded.reshape(-1, 2).astype(np.float32), (480, 640)) is None


def test_background_crops_are_head_free(tmp_path):
    root = tmp_path / "bg"
    entries = []
    for i in range(3):
        image = np.full((480, 640, 3), 90, np.uint8)
        points = [[500 + 10 * i, 400]]
        write_jpeg(root / f"{i}.jpg", image)
        entries.append({"file": f"{i}.jpg", "points": points})
    (root / "annotations.json").write_text(json.dumps({"images": entries}))
    reader = open_dataset(f"background:generic:{root}")
    assert len(reader) == 3
    for i in range(3):
        crop = reader[i]
        assert crop.count == 0 and min(crop.image.shape[:2]) >= 96
        assert crop.image.size < 480 * 640 * 3  # a part of the image, not all of it
    with pytest.raises(DatasetError, match="needs head points"):
        open_dataset(f"background:kaggle:{_kaggle(tmp_path)}")


def _kaggle(tmp_path: Path) -> Path:
    from tests.fixtures.datasets import make_kaggle

    return make_kaggle(tmp_path / "kaggle", [1, 2])


def test_bad_empty_source_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="synthetic', a video file or a folder"):
        open_dataset(f"empty:{tmp_path / 'nothing.txt'}")


@pytest.mark.slow
def test_evaluate_prints_each_empty_view(brightness_model):
    """The brightness model counts mean brightness, so each synthetic frame's line carries
    a known number; the set's own line comes first."""
    from tests.fixtures.models import expected_count

    result = subprocess.run(
        [sys.executable, "-m", "crowdcount.streamer.cli", "evaluate", "empty:synthetic:1-3",
         "--model", str(brightness_model), "--backend", "onnx"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("images=3 ") and "dataset=empty:synthetic:1-3" in lines[0]
    reader = open_dataset("empty:synthetic:1-3")
    for i in range(3):
        line = next(x for x in lines if x.strip().startswith(f"image synthetic-{i + 1}:"))
        predicted = float(line.split("predicted=")[1].split()[0])
        assert predicted == pytest.approx(expected_count(reader[i].image), rel=1e-3, abs=1e-3)
