"""Zone masks: tilings add up to the frame, clipping, caching, drawing, the render hook."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdcount.model.render import annotate
from crowdcount.model.types import Frame, Result
from crowdcount.model.zones import Zone, ZoneCounter, draw_zones, zone_mask

W, H = 640, 480
SHAPE = (60, 80)  # the model's stride-8 output for a 640x480 frame


def _density(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.gamma(0.5, 0.02, shape).astype(np.float32)
    d[rng.random(shape) < 0.3] = 0  # empty patches, like real maps
    return d


def _grid(nx: int, ny: int) -> list[Zone]:
    xs, ys = np.linspace(0, W, nx + 1), np.linspace(0, H, ny + 1)
    return [
        Zone(f"r{i}{j}", ((xs[i], ys[j]), (xs[i + 1], ys[j]), (xs[i + 1], ys[j + 1]),
                          (xs[i], ys[j + 1])))
        for i in range(nx) for j in range(ny)
    ]  # fmt: skip


def _triangles(cx: float, cy: float) -> list[Zone]:
    """Four triangles meeting at an off-centre point: a tiling with diagonal edges."""
    corners = [(0.0, 0.0), (W, 0.0), (W, H), (0.0, H)]
    return [Zone(f"t{i}", (corners[i], corners[(i + 1) % 4], (cx, cy))) for i in range(4)]


def _fan(n: int, cx: float, cy: float) -> list[Zone]:
    """``n`` wedges around (cx, cy) cut by rays to points along the frame's border."""
    border = [(0.0, 0.0), (W, 0.0), (W, H), (0.0, H)]
    perim = []
    for k in range(4):
        (x0, y0), (x1, y1) = border[k], border[(k + 1) % 4]
        perim += [(x0 + (x1 - x0) * f, y0 + (y1 - y0) * f) for f in np.linspace(0, 1, 5)[:-1]]
    step = len(perim) // n
    cuts = list(range(0, len(perim), step))[:n]
    zones = []
    for i, a in enumerate(cuts):
        b = cuts[(i + 1) % n] or len(perim)
        outline = [perim[j % len(perim)] for j in range(a, b + 1)]
        zones.append(Zone(f"f{i}", (*outline, (cx, cy))))
    return zones


@pytest.mark.parametrize(
    "zones",
    [_grid(4, 4), _grid(3, 7), _triangles(217.3, 301.9), _fan(5, 401.7, 133.3)],
    ids=["grid4x4", "grid3x7", "triangles", "fan"],
)
def test_tiling_zones_sum_to_the_frame_count(zones: list[Zone]) -> None:
    coverage = sum(zone_mask(z.points, (W, H), SHAPE) for z in zones)
    assert np.abs(coverage - 1).max() < 0.1  # each cell split, never double-counted
    counter = ZoneCounter(zones)
    for seed in range(5):
        d = _density(seed)
        total = float(d.sum())
        counts = counter.count(d, (W, H))
        assert sum(counts.values()) == pytest.approx(total, rel=0.01)


@settings(max_examples=40, deadline=None)
@given(
    cx=st.floats(1, W - 1),
    cy=st.floats(1, H - 1),
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(60, 80), (45, 80), (17, 23), (135, 240)]),
)
def test_random_triangle_tilings_within_one_percent(
    cx: float, cy: float, seed: int, shape: tuple[int, int]
) -> None:
    d = _density(seed, shape) + np.float32(0.001)
    counts = ZoneCounter(_triangles(cx, cy)).count(d, (W, H))
    assert sum(counts.values()) == pytest.approx(float(d.sum()), rel=0.01)


def test_axis_aligned_cells_are_exact() -> None:
    # A zone on density-cell boundaries covers whole cells only.
    m = zone_mask([(80, 40), (160, 40), (160, 120), (80, 120)], (W, H), SHAPE)
    assert m.dtype == np.float32 and m.shape == SHAPE
    assert m.sum() == 100 and set(np.unique(m)) == {0.0, 1.0}
    assert m[5:15, 10:20].all()


def test_partial_cell_coverage_is_fractional() -> None:
    # Half of cell (0, 0) in x, a quarter in y.
    m = zone_mask([(0, 0), (4, 0), (4, 2), (0, 2)], (W, H), SHAPE)
    assert m[0, 0] == pytest.approx(0.125)
    assert m.sum() == pytest.approx(0.125)


def test_zone_covering_nothing_counts_zero() -> None:
    d = _density(1)
    for pts in (
        [(700, 10), (800, 10), (800, 90)],  # right of the frame
        [(10, 10), (10, 10.0001), (10.0001, 10)],  # far smaller than a sample
    ):
        assert zone_mask(pts, (W, H), SHAPE).sum() == 0
        assert ZoneCounter([Zone("z", tuple(pts))]).count(d, (W, H)) == {"z": 0.0}


def test_zone_outside_the_frame_is_clipped() -> None:
    d = np.ones(SHAPE, np.float32)
    big = Zone("big", ((0, 0), (2000, 0), (2000, 2000), (0, 2000)))
    left = Zone("left", ((0, 0), (W / 2, 0), (W / 2, H + 100), (0, H + 100)))
    counts = ZoneCounter([big, left]).count(d, (W, H))
    assert counts["big"] == pytest.approx(d.sum())
    assert counts["left"] == pytest.approx(d.sum() / 2)
    # The mask clips on every side (a zone's points are >= 0; the maths is general).
    around = [(-500, -500), (2000, -500), (2000, 2000), (-500, 2000)]
    assert zone_mask(around, (W, H), SHAPE).sum() == pytest.approx(d.size)


def test_masks_are_cached_per_shape() -> None:
    counter = ZoneCounter(_grid(2, 2), max_shapes=2)
    for seed in range(20):
        counter.count(_density(seed), (W, H))
    assert counter.masks_computed == 4  # once per zone, not per frame
    counter.count(_density(0, (30, 40)), (320, 240))  # a new resolution
    assert counter.masks_computed == 8
    counter.count(_density(0), (W, H))
    assert counter.masks_computed == 8  # both shapes still cached
    counter.count(_density(0, (15, 20)), (160, 120))  # evicts the least recently used
    counter.count(_density(0, (30, 40)), (320, 240))
    assert counter.masks_computed == 16


def test_concave_and_self_intersecting_polygons() -> None:
    d = np.ones(SHAPE, np.float32)
    # An L shape: the 80x80 square minus its 40x40 top-right quarter.
    ell = [(0, 0), (40, 0), (40, 40), (80, 40), (80, 80), (0, 80)]
    assert zone_mask(ell, (W, H), SHAPE).sum() == pytest.approx((80 * 80 - 40 * 40) / 64)
    # A bow-tie counts each lobe once (even-odd).
    bow = [(0, 0), (80, 80), (80, 0), (0, 80)]
    assert zone_mask(bow, (W, H), SHAPE).sum() == pytest.approx(80 * 80 / 2 / 64, rel=0.01)
    assert ZoneCounter([Zone("l", tuple(ell))]).count(d, (W, H))["l"] == pytest.approx(75)


def test_zone_validation() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        Zone("a", ((0, 0), (1, 1)))
    with pytest.raises(ValueError, match="finite"):
        Zone("a", ((0, 0), (1, float("nan")), (2, 0)))
    with pytest.raises(ValueError, match=r"zone 'a': point 1 \(-1.0, 1.0\) must be finite"):
        Zone("a", ((0, 0), (-1, 1), (2, 0)))
    with pytest.raises(ValueError, match="enclose no area"):
        Zone.from_dict({"name": "a", "points": [[0, 0], [5, 5], [9, 9]]})
    with pytest.raises(ValueError, match="unique"):
        ZoneCounter([Zone("a", ((0, 0), (1, 0), (0, 1)))] * 2)
    z = Zone.from_dict({"name": "d", "points": [[1, 2], [3, 4], [5, 0]]})
    assert z.points == ((1.0, 2.0), (3.0, 4.0), (5.0, 0.0))
    assert Zone.from_dict(z.to_dict()) == z


def test_draw_zones_and_annotate() -> None:
    image = np.zeros((H, W, 3), np.uint8)
    zones = _grid(2, 1)
    out = draw_zones(image, zones, {"r00": 12.34})
    assert out.shape == image.shape and out.dtype == np.uint8
    assert image.sum() == 0  # not drawn in place
    assert out.sum() > 0
    frame = Frame("cam", 0, 0.0, image)
    result = Result(frame, _density(0), 1.0, 0.0, {"r00": 1.0, "r10": 2.0})
    plain = annotate(result, "cam", "12:00")
    with_zones = annotate(result, "cam", "12:00", zones=zones)
    assert plain.shape == with_zones.shape == image.shape
    assert not np.array_equal(plain, with_zones)
