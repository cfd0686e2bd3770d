"""Every reader on small generated files, including corrupt ones."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from crowdcount.training.readers import DatasetError, open_dataset, parse_range
from crowdcount.training.readers.generic import write_generic
from tests.fixtures.datasets import make_generic, make_kaggle, make_mall, make_shanghaitech

COUNTS = [4, 0, 9, 2]


def check(reader, counts, with_points=True):
    assert len(reader) == len(counts)
    for i, n in enumerate(counts):
        s = reader[i]
        assert s.count == n
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        if with_points:
            assert s.points.shape == (n, 2)
        else:
            assert s.points is None


def test_mall(tmp_path):
    root = make_mall(tmp_path / "mall", COUNTS)
    check(open_dataset(f"mall:{root}"), COUNTS)
    check(open_dataset(f"mall:{root}:2-3"), COUNTS[1:3])


def test_shanghaitech(tmp_path):
    root = make_shanghaitech(tmp_path / "sh", COUNTS)
    reader = open_dataset(f"shanghaitech:{root}")
    check(reader, COUNTS)
    assert reader.kernel.mode == "adaptive"


def test_kaggle_is_memory_mapped(tmp_path):
    root = make_kaggle(tmp_path / "k", COUNTS)
    reader = open_dataset(f"kaggle:{root}")
    check(reader, COUNTS, with_points=False)
    assert isinstance(reader._images, np.memmap)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_generic(tmp_path, fmt):
    root = make_generic(tmp_path / "g", COUNTS, fmt=fmt)
    check(open_dataset(f"generic:{root}"), COUNTS)


def test_write_generic_round_trip_with_scale(tmp_path):
    src = open_dataset(f"generic:{make_generic(tmp_path / 'a', COUNTS)}")
    write_generic(tmp_path / "b", (src[i] for i in range(len(src))), scale=0.5)
    out = open_dataset(f"generic:{tmp_path / 'b'}")
    check(out, COUNTS)
    np.testing.assert_allclose(out[0].points, src[0].points * 0.5, atol=0.01)
    assert out[0].image.shape[:2] == (48, 64)


def test_ranges():
    assert parse_range("801-805", 2000) == [800, 801, 802, 803, 804]
    assert parse_range("10-40/10", 400) == [9, 19, 29, 39]
    held = parse_range("10-400/10", 400)
    kept = parse_range("1-400,~10-400/10", 400)
    assert len(kept) == 360 and not set(kept) & set(held)
    assert sorted(kept + held) == list(range(400))
    assert parse_range("~10-400/10", 400) == kept  # a leading exclusion starts from all
    assert parse_range("1-3,7-8", 10) == [0, 1, 2, 6, 7]
    for bad in ("0-3", "5-2", "x", "1-9999", "~1-100", "1-5,~x"):
        with pytest.raises(DatasetError):
            parse_range(bad, 100)


def test_range_excluding_a_hold_out_opens(tmp_path):
    root = make_shanghaitech(tmp_path / "sh", list(range(20)))
    train = open_dataset(f"shanghaitech:{root}:~10-20/10")
    held = open_dataset(f"shanghaitech:{root}:10-20/10")
    assert len(train) == 18 and [held[i].count for i in range(2)] == [9, 19]
    assert 9 not in {train[i].count for i in range(18)}


def test_grey_and_odd_sized_images_come_out_rgb(tmp_path):
    root = make_shanghaitech(tmp_path / "sh", [3, 2])
    path = root / "images" / "IMG_2.jpg"
    grey = np.full((61, 203), 90, np.uint8)  # one channel, sides not multiples of anything
    ok, data = cv2.imencode(".jpg", grey)
    assert ok
    path.write_bytes(data.tobytes())
    sample = open_dataset(f"shanghaitech:{root}")[1]
    assert sample.image.shape == (61, 203, 3) and sample.image.dtype == np.uint8


def test_truncated_image_is_named(tmp_path):
    root = make_mall(tmp_path / "mall", COUNTS)
    path = root / "frames" / "seq_000003.jpg"
    path.write_bytes(path.read_bytes()[:40])
    reader = open_dataset(f"mall:{root}")
    reader[0]
    with pytest.raises(DatasetError, match=r"seq_000003\.jpg \(item 2\): not a readable image"):
        reader[2]


def test_missing_image_is_named(tmp_path):
    root = make_shanghaitech(tmp_path / "sh", COUNTS)
    (root / "ground-truth" / "GT_IMG_2.mat").unlink()
    with pytest.raises(DatasetError, match=r"GT_IMG_2\.mat \(item 1\): ground truth file missing"):
        open_dataset(f"shanghaitech:{root}")[1]


def test_corrupt_mat_files(tmp_path):
    root = make_mall(tmp_path / "mall", COUNTS)
    (root / "mall_gt.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" * 3)
    with pytest.raises(DatasetError, match=r"mall_gt\.mat: not a Mall ground truth file"):
        open_dataset(f"mall:{root}")
    sh = make_shanghaitech(tmp_path / "sh", COUNTS)
    gt = sh / "ground-truth" / "GT_IMG_3.mat"
    gt.write_bytes(gt.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"GT_IMG_3\.mat \(item 2\): unreadable ground truth"):
        open_dataset(f"shanghaitech:{sh}")[2]


def test_kaggle_inconsistent_and_truncated(tmp_path):
    root = make_kaggle(tmp_path / "k", COUNTS)
    np.save(root / "labels.npy", np.array([1, 2]))
    with pytest.raises(DatasetError, match=r"images\.npy has 4 items but labels\.npy has 2"):
        open_dataset(f"kaggle:{root}")
    data = (root / "images.npy").read_bytes()
    (root / "images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"images\.npy: not a readable \.npy array"):
        open_dataset(f"kaggle:{root}")


def test_generic_bad_annotations(tmp_path):
    root = make_generic(tmp_path / "g", COUNTS)
    (root / "annotations.json").write_text('{"images": [{"file": "img_0.jpg"}]}')
    with pytest.raises(DatasetError, match=r"\(item 0\): needs 'points' or a non-negative"):
        open_dataset(f"generic:{root}")
    (root / "annotations.json").write_text(json.dumps(
        {"images": [{"file": "img_0.jpg", "points": [[1, 2], [3, "x"]]}]}))
    with pytest.raises(DatasetError, match=r"\(item 0\): head points are not an N x 2 array"):
        open_dataset(f"generic:{root}")
    (root / "annotations.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_dataset(f"generic:{root}")
    (root / "annotations.json").unlink()
    (root / "annotations.csv").write_text("file,x,y\nimg_0.jpg,1,oops\n")
    with pytest.raises(DatasetError, match=r"annotations\.csv \(line 2\): x and y must be numbers"):
        open_dataset(f"generic:{root}")


def test_unknown_format():
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'"):
        open_dataset("coco:/x")
