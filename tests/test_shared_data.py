"""Checks on the real data in ../shared (skipped without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crowdcount.model.runtime import Runtime
from crowdcount.training.readers import open_dataset

pytestmark = pytest.mark.shared
ROOT = Path(__file__).resolve().parents[1]


def test_mall_reader_matches_published_totals(shared):
    reader = open_dataset(f"mall:{shared}/data/mall")
    assert len(reader) == 2000
    assert sum(len(p) for p in reader._points) == 62315
    sample = reader[0]
    assert sample.image.shape == (480, 640, 3) and sample.count == len(sample.points)


def test_shanghaitech_reader_matches_published_totals(shared):
    reader = open_dataset(f"shanghaitech:{shared}/data/shanghaitech_b/train_data")
    assert len(reader) == 400
    assert sum(reader[i].count for i in range(0, 400, 40)) > 0
    assert reader[0].image.shape == (768, 1024, 3)


def test_cli_count_on_a_mall_frame_is_within_3(shared, tmp_path):
    import scipy.io

    truth = scipy.io.loadmat(shared / "data/mall/mall_gt.mat")["count"].ravel()
    frame = shared / "data/mall/frames/seq_001500.jpg"
    result = subprocess.run([sys.executable, "-m", "crowdcount.streamer.cli", "count", str(frame),
                             "--json", "--overlay", str(tmp_path / "o.png")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    count = json.loads(result.stdout)["count"]
    assert abs(count - truth[1499]) <= 3
    assert (tmp_path / "o.png").stat().st_size > 100_000


def test_default_model_on_mall_test_sample(shared):
    """Every 24th Mall test frame (50 frames): the full-split figure is in the README."""
    reader = open_dataset(f"mall:{shared}/data/mall:801-2000/24")
    runtime = Runtime.open()
    errors = [runtime.count(reader[i].image) - reader[i].count for i in range(len(reader))]
    assert float(np.abs(errors).mean()) < 2.8


def test_imagenet_backbone_loads(shared):
    from crowdcount.model.architecture import ModelSpec, build, default_backbone_weights

    path = default_backbone_weights()
    assert path is not None and path.is_file()
    model = build(ModelSpec(preset="seed", frozen_backbone=True), path)
    assert model.count_params() > 2_257_984


def test_grown_bundled_model_counts_like_it_on_mall_frames(shared):
    """training/grow.py on real frames: the bundled model grown by the stride-32 stage (with
    its ImageNet blocks) and a 128-wide decoder gives the same counts to 1e-5."""
    import keras

    from crowdcount.model.architecture import ModelSpec, build, default_backbone_weights
    from crowdcount.model.bundled import DEFAULT_KERAS
    from crowdcount.training.grow import grow

    reader = open_dataset(f"mall:{shared}/data/mall:801-2000/300")
    frames = np.stack([reader[i].image for i in range(len(reader))]).astype(np.float32)
    bundled = keras.saving.load_model(DEFAULT_KERAS, compile=False)
    grown = build(ModelSpec(top_stride=32, decoder_width=128), default_backbone_weights())
    grow(bundled, grown)
    ref = np.asarray(bundled.predict_on_batch(frames), np.float64).sum(axis=(1, 2, 3))
    got = np.asarray(grown.predict_on_batch(frames), np.float64).sum(axis=(1, 2, 3))
    assert ref.min() > 10  # Mall frames hold 13-53 people
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_empty_views_of_the_real_footage(shared):
    """The PETS video's median is an empty street (count 0 by construction); the Mall test
    frames' median keeps the few people who sit at the kiosk, and labels them."""
    pets = open_dataset(f"empty:{shared}/videos/pets2009_walking_480x360_10fps.mp4")[0]
    assert pets.image.shape == (360, 480, 3) and pets.count == 0
    mall = open_dataset(f"median:mall:{shared}/data/mall:801-2000")[0]
    assert mall.image.shape == (480, 640, 3)
    assert 3 <= mall.count <= 8 and len(mall.points) == mall.count
