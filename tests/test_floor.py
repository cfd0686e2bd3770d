"""Ground-plane calibration with known geometry: a synthetic camera renders a floor and
people of known number through a known projection, and density per m2 and zone areas must
come back within 2 %; degenerate input is refused with a message saying what to fix; the
Mall camera calibrated from its floor agrees with the dataset's perspective map."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from crowdcount.model.floor import (
    FRUIN_QUEUING,
    FRUIN_WALKWAY,
    Floor,
    FloorError,
    level_bands,
    level_of_service,
)
from crowdcount.model.zones import zone_mask

SIZE = (640, 480)
STRIDE = 8
SHAPE = (SIZE[1] // STRIDE, SIZE[0] // STRIDE)


def camera(height: float = 6.0, tilt_deg: float = 35.0, f: float = 520.0) -> np.ndarray:
    """3x4 projection of a camera ``height`` m above the floor (z up), looking along +y and
    tilted down by ``tilt_deg``; square pixels, principal point at the frame centre."""
    k = np.array([[f, 0, SIZE[0] / 2], [0, f, SIZE[1] / 2], [0, 0, 1]])
    t = math.radians(tilt_deg)
    # camera axes in world coordinates: x right, y down (image), z forward
    cx = np.array([1.0, 0, 0])
    cz = np.array([0, math.cos(t), -math.sin(t)])
    cy = np.cross(cz, cx)
    r = np.stack([cx, cy, cz])
    centre = np.array([0, 0, height])
    return k @ np.c_[r, -r @ centre]


def plane(p: np.ndarray, z: float) -> np.ndarray:
    """Homography of the plane at height ``z``: floor metres (x, y) -> frame pixels."""
    return np.c_[p[:, 0], p[:, 1], p[:, 2] * z + p[:, 3]]


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), h).reshape(-1, 2)


def render_density(heads_px: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """A density map at the model's stride with one unit of mass per head (a Gaussian blob
    rendered at full resolution, then summed into STRIDE x STRIDE cells). As wide as a
    trained model's kernels: a map much sharper than its cells would alias with them."""
    full = np.zeros((SIZE[1], SIZE[0]), np.float64)
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    for x, y in heads_px:
        x0, y0 = int(x), int(y)
        sl = (slice(max(0, y0 - 12), y0 + 13), slice(max(0, x0 - 12), x0 + 13))
        g = np.exp(-((xx[sl] + 0.5 - x) ** 2 + (yy[sl] + 0.5 - y) ** 2) / (2 * sigma**2))
        full[sl] += g / g.sum()
    return full.reshape(SHAPE[0], STRIDE, SHAPE[1], STRIDE).sum(axis=(1, 3)).astype(np.float32)


def crowd(x0: float, y0: float, w: float, d: float, per_m2: float) -> np.ndarray:
    """People on a regular grid filling the floor rectangle at ``per_m2`` (each one in the
    middle of its own square, so the rectangle holds exactly w*d*per_m2 of them)."""
    a = 1 / math.sqrt(per_m2)
    nx, ny = round(w / a), round(d / a)
    assert math.isclose(nx * a, w) and math.isclose(ny * a, d), "the spacing must tile it"
    xs = x0 + a / 2 + a * np.arange(nx)
    ys = y0 + a / 2 + a * np.arange(ny)
    gx, gy = np.meshgrid(xs, ys)
    return np.c_[gx.ravel(), gy.ravel()]


def rect(x0: float, y0: float, w: float, d: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + d], [x0, y0 + d]], np.float64)


MARKS = rect(-3, 6, 6, 8)  # a 6 x 8 m floor rectangle the user marks


@pytest.mark.parametrize("head_height", [0.0, 1.6])
def test_synthetic_scene_density_and_areas_within_2_percent(head_height: float) -> None:
    p = camera()
    floor_h, head_h = plane(p, 0.0), plane(p, head_height)
    marks_px = project(floor_h, MARKS)
    cal = Floor.calibrate(marks_px, MARKS, SIZE, head_height=head_height)
    assert cal.rms_error_px < 1e-3

    # Two crowds at different depths (4 and 2.25 people/m2, filling more floor than the
    # zones drawn over them, as a real crowd does), and a zone in each.
    crowds = [(rect(-4, 4, 8, 5), 4.0), (rect(-5, 10, 10, 6), 2.25)]
    zones = {"near": (rect(-2, 5, 4, 3), 4.0), "far": (rect(-3, 11, 6, 4), 2.25)}
    heads = np.concatenate([crowd(*r[0], r[2, 0] - r[0, 0], r[2, 1] - r[0, 1], d)
                            for r, d in crowds])
    density = render_density(project(head_h, heads))
    inside = project(head_h, heads)
    on_frame = ((inside >= 0) & (inside < SIZE)).all(axis=1)
    assert density.sum() == pytest.approx(on_frame.sum(), rel=1e-2)

    per_cell = {}
    for name, (r, true_density) in zones.items():
        poly = [tuple(q) for q in project(head_h, r)]
        area = cal.zone_area(poly, SIZE, SHAPE)
        true_area = (r[2, 0] - r[0, 0]) * (r[2, 1] - r[0, 1])
        assert area == pytest.approx(true_area, rel=0.02), name
        mask = zone_mask(poly, SIZE, SHAPE)
        count = float((mask * density).sum())
        assert count / area == pytest.approx(true_density, rel=0.02), name
        per_cell[name] = count / float(mask.sum())
    # The reason for all this: per image cell the far crowd, about half as dense on the
    # floor, looks denser than the near one.
    assert per_cell["far"] > per_cell["near"]

    # The per-m2 map integrates back to the count over the calibrated floor.
    dm = cal.per_m2(density, SIZE)
    areas = cal.cell_areas(SIZE, SHAPE)
    ok = ~np.isnan(areas)
    assert np.nansum(dm * areas) == pytest.approx(float(density[ok].sum()), rel=1e-6)


def test_floor_view_keeps_the_count_and_shows_uniform_floor_density() -> None:
    p = camera()
    floor_h = plane(p, 0.0)
    cal = Floor.calibrate(project(floor_h, MARKS), MARKS, SIZE, head_height=0)
    heads = crowd(-4, 4, 8, 12, 4.0)  # 4 people/m2 over 8 x 12 m
    density = render_density(project(floor_h, heads))
    raster, (x0, _, _, y1) = cal.floor_view(density, SIZE, 0.25)
    areas = cal.cell_areas(SIZE, SHAPE)
    on_floor = float(density[~np.isnan(areas)].sum())
    assert np.nansum(raster) * 0.25**2 == pytest.approx(on_floor, rel=1e-9)
    # Inside the crowd (away from its edges and the frame's) the floor reads 4 people/m2.
    ys = y1 - (np.arange(raster.shape[0]) + 0.5) * 0.25
    xs = x0 + (np.arange(raster.shape[1]) + 0.5) * 0.25
    core = raster[np.ix_((ys > 6) & (ys < 12), (xs > -1.5) & (xs < 1.5))]
    assert np.nanmean(core) == pytest.approx(4.0, rel=0.05)


def test_cells_near_and_beyond_the_horizon_are_masked() -> None:
    p = camera(tilt_deg=12.0)  # horizon inside the frame, about 110 px from the top
    floor_h = plane(p, 0.0)
    cal = Floor.calibrate(project(floor_h, MARKS), MARKS, SIZE)
    areas = cal.cell_areas(SIZE, SHAPE)
    horizon_row = SIZE[1] / 2 - 520 * math.tan(math.radians(12.0))
    top = int(horizon_row // STRIDE)
    assert np.isnan(areas[: top + 1]).all()  # at and above the horizon: never divided by
    assert not np.isnan(areas[-1]).any()  # the near rows are all calibrated
    finite = areas[~np.isnan(areas)]
    assert finite.min() > 0
    # Deeper than max_range x the deepest mark is masked too: no near-zero denominators nor
    # huge far cells.
    deepest = cal.to_metres(project(floor_h, MARKS))[:, 1].max()
    assert finite.max() < areas[-1].max() * (3 * 3 * deepest / MARKS[0, 1]) ** 3
    far_zone = [(300.0, horizon_row + 2), (340.0, horizon_row + 2), (340.0, horizon_row + 30),
                (300.0, horizon_row + 30)]
    with pytest.raises(FloorError, match="beyond the calibrated floor"):
        cal.zone_area(far_zone, SIZE, SHAPE)


def test_rectangle_calibration_matches_points() -> None:
    floor_h = plane(camera(), 0.0)
    corners = project(floor_h, MARKS)
    a = Floor.from_rectangle(corners, 6, 8, SIZE)
    zone = [tuple(q) for q in project(floor_h, rect(-1, 7, 2, 3))]
    assert a.zone_area(zone, SIZE, SHAPE) == pytest.approx(6.0, rel=0.02)


@pytest.mark.parametrize(("image", "floor", "match"), [
    ([[0, 0], [10, 0], [10, 10]], [[0, 0], [1, 0], [1, 1]], "at least 4"),
    ([[0, 0], [10, 10], [20, 20], [30, 30]], [[0, 0], [1, 0], [1, 1], [0, 1]], "one line"),
    ([[0, 0], [100, 0], [200, 0], [100, 100]], [[0, 0], [1, 0], [1, 1], [0, 1]],
     "points 1, 2, 3 lie on one line"),
    ([[0, 0], [100, 0], [100, float("nan")], [0, 100]], [[0, 0], [1, 0], [1, 1], [0, 1]],
     "finite"),
    ([[100, 100], [300, 100], [300, 300], [100, 300], [200, 200]],
     [[0, 0], [2, 0], [2, 2], [0, 2], [1.9, 0.1]], "point 5 is"),
    ([[100, 100], [300, 100], [300, 300], [100, 300]],
     [[0, 0], [2, 0], [0, 2], [2, 2]], "horizon"),
])
def test_degenerate_input_is_refused_with_a_fix(image, floor, match) -> None:
    with pytest.raises(FloorError, match=match) as info:
        Floor.calibrate(image, floor, SIZE)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("w", "d"), [(0, 3), (2, 0), (-1, 2), (float("nan"), 1)])
def test_zero_size_rectangle_refused(w: float, d: float) -> None:
    with pytest.raises(FloorError, match="width and depth > 0"):
        Floor.from_rectangle([[0, 0], [1, 0], [1, 1], [0, 1]], w, d, SIZE)


def test_levels_of_service() -> None:
    # Fruin walkway: A at >= 35 ft2 per person (<= 0.31 /m2), F under 5 ft2 (> 2.15 /m2).
    assert [round(b, 2) for b in FRUIN_WALKWAY] == [0.31, 0.43, 0.72, 1.08, 2.15]
    assert [round(b, 2) for b in FRUIN_QUEUING] == [0.83, 1.08, 1.54, 3.59, 5.38]
    assert level_of_service(0.0) == "A"
    assert level_of_service(0.5) == "C"
    assert level_of_service(3.0) == "F"
    assert level_of_service(3.0, FRUIN_QUEUING) == "D"
    assert level_of_service(1.5, level_bands([1, 2, 3, 4, 5])) == "B"
    with pytest.raises(FloorError, match="ascending"):
        level_bands([1, 1, 2, 3, 4])
    with pytest.raises(FloorError, match="walkway"):
        level_bands("stairs")


def test_grid_lines_lie_on_the_calibrated_floor() -> None:
    floor_h = plane(camera(tilt_deg=12.0), 0.0)
    cal = Floor.calibrate(project(floor_h, MARKS), MARKS, SIZE)
    lines = cal.grid(1.0)
    assert len(lines) > 10
    pts = np.array([p for line in lines for p in line])
    assert cal.valid(pts).all()
    # each polyline point maps back onto an integer metre in one coordinate
    back = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), np.linalg.inv(cal.to_frame))
    frac = np.abs(back.reshape(-1, 2) - np.round(back.reshape(-1, 2))).min(axis=1)
    assert frac.max() < 0.01  # polylines are rounded to 0.1 px


# -- the Mall camera ---------------------------------------------------------------------------

#: Points on the Mall floor, picked by eye on the median of 100 frames: the outlines of the two
#: round floor inlays around the planters (the near one's left and right tips and a point on
#: its front and back edges; the same on the far one), taken to be circles of equal size, 8 m
#: across (an estimate: the checks below are ratios, which do not depend on it). Each point's
#: floor position is its place on its circle, from a least-squares fit of one homography to 28
#: outline points of both circles (the far circle's centre came out 18.5 m beyond the near
#: one's). See docs/floor-density.md.
MALL_IMAGE = [[87, 322], [528, 303], [380, 377], [450, 258], [185, 143], [457, 132],
              [260, 160], [420, 124]]
MALL_FLOOR = [[-3.96, -0.53], [3.98, -0.37], [1.11, -3.84], [2.73, 2.92], [-4.0, 18.53],
              [4.0, 18.57], [-1.73, 14.93], [3.43, 20.59]]
#: Where a standing adult's head is, above the floor (metres).
HEAD = 1.7


@pytest.mark.shared
def test_mall_floor_calibration_agrees_with_the_perspective_map(shared: Path) -> None:
    """``pMapN`` (Chen et al., BMVC 2012, after Chan et al., CVPR 2008) weighs each pixel by
    1 / (image area of a person there), relative to the nearest row; a person's image area is
    their width (the floor's scale across the row) times their height. Both come from the
    calibration: the width from the floor homography, the height from the head plane's."""
    scipy_io = pytest.importorskip("scipy.io")
    pmap = scipy_io.loadmat(str(shared / "data/mall/perspective_roi.mat"))["pMapN"]
    floor = Floor.calibrate(MALL_IMAGE, MALL_FLOOR, SIZE)
    heads = Floor.calibrate(MALL_IMAGE, MALL_FLOOR, SIZE, head_height=HEAD)
    assert floor.rms_error_px < 6
    ours, theirs = [], []
    for y in range(160, 471, 30):  # foot rows from the far inlay to the bottom of the frame
        foot = np.array([[320.0, y]])
        head = project(np.linalg.inv(heads.from_frame), floor.to_metres(foot))[0]
        height_px = float(np.linalg.norm(head - foot[0]))
        a, b = floor.to_metres([[300, y], [340, y]])
        width_px_per_m = 40 / float(np.linalg.norm(b - a))
        centre_row = round((head[1] + y) / 2)  # the map is indexed by the person's centre
        ours.append(width_px_per_m * height_px)
        theirs.append(1 / pmap[centre_row, 320])
    area_ratio = np.array(ours) / ours[-1]
    map_ratio = np.array(theirs) / theirs[-1]
    # Far people are about a quarter of the near ones' image area; both agree within 15 %
    # at every row, as areas and as linear sizes.
    assert map_ratio[0] < 0.3
    assert np.allclose(area_ratio, map_ratio, rtol=0.15), (area_ratio, map_ratio)
    assert np.allclose(np.sqrt(area_ratio), np.sqrt(map_ratio), rtol=0.15)


def test_a_calibration_marked_on_a_scaled_picture_holds_for_camera_pixels() -> None:
    """A camera whose decoder scales its picture reports frames in camera pixels while the
    page marks the floor on the smaller picture: the cells' floor areas and a zone's area
    (drawn in camera pixels) must not depend on which pixels the density is said to cover."""
    p = camera()
    floor_h = plane(p, 0.0)
    full = Floor.calibrate(project(floor_h, MARKS), MARKS, SIZE)
    half = Floor.calibrate(project(floor_h, MARKS) / 2, MARKS, (SIZE[0] // 2, SIZE[1] // 2))
    camera_px = (SIZE[0] * 3, SIZE[1] * 3)  # e.g. a 1920x1440 camera seen at a third
    assert np.allclose(half.cell_areas(camera_px, SHAPE), full.cell_areas(SIZE, SHAPE),
                       rtol=1e-6, equal_nan=True)
    zone = [(300.0 * 3, 300.0 * 3), (400.0 * 3, 300.0 * 3), (400.0 * 3, 420.0 * 3),
            (300.0 * 3, 420.0 * 3)]
    assert half.zone_area(zone, camera_px, SHAPE) == pytest.approx(
        full.zone_area([(x / 3, y / 3) for x, y in zone], SIZE, SHAPE), rel=1e-6)
