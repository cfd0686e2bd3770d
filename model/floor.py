"""Ground-plane calibration: frame pixels to floor metres, and density per square metre.

Crowd safety is judged by people per square metre of floor, and a camera's perspective hides
it: a far cell of the density map covers many square metres, a near one a fraction of one. A
homography (``cv2.findHomography``) from four or more floor points the user marks in the
frame to their positions on the floor in metres gives every density cell its floor area, so
each cell's people divided by its area is a density on the ground.

Which plane: the model's density map puts each person at the *head* (the datasets annotate
heads), and heads are above the floor. The floor area that belongs to the heads seen in an
image region is the area of that region on the plane at head height (each person stands
straight below their head, so areas on that plane are floor areas). The user marks points on
the floor (the only plane with visible marks); with ``head_height`` > 0 the calibration
raises the plane to that height: the floor homography is decomposed into the camera's pose
(square pixels and the principal point at the frame centre assumed; the focal length is
estimated from the homography itself) and the head plane's homography built from it. With
``head_height`` 0 the floor plane itself is used (right for a camera looking down steeply
from high up, where a head and its feet fall in nearly the same cell).

Masking: the horizon (where the plane's points at infinity land in the frame) is a straight
line, and the depth of a plane point grows as the frame point approaches it. A cell is used
only when its four corners lie on the calibrated side of the horizon and no deeper than
``max_range`` times the deepest marked point: cells near or beyond the horizon are masked
(their area is NaN), never divided by, and a calibrated zone may not reach into them.

Levels of service: Fruin's (1971) walkway and queuing levels A-F, as bands of density (see
:data:`FRUIN_WALKWAY` and :data:`FRUIN_QUEUING`); any five ascending upper bounds may be
used instead.

NumPy and OpenCV only, so the server, tests and tools import it without a model runtime.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.zones import zone_mask

__all__ = [
    "FRUIN_QUEUING",
    "FRUIN_WALKWAY",
    "LEVELS",
    "Floor",
    "FloorError",
    "level_bands",
    "level_of_service",
]

PointXY = tuple[float, float]

#: One square foot in square metres (Fruin's tables are in square feet per person).
FT2 = 0.09290304
#: The level names, best to worst.
LEVELS = "ABCDEF"
#: Fruin (1971), *Pedestrian Planning and Design*, walkway levels of service: A at 35 or more
#: square feet per person, B 25-35, C 15-25, D 10-15, E 5-10, F under 5; here as the upper
#: density bound (people/m2) of levels A-E: 0.31, 0.43, 0.72, 1.08, 2.15.
FRUIN_WALKWAY: tuple[float, ...] = tuple(1 / (ft2 * FT2) for ft2 in (35, 25, 15, 10, 5))
#: Fruin (1971) queuing (standing) levels of service: A at 13 or more square feet per person,
#: B 10-13, C 7-10, D 3-7, E 2-3, F under 2; as densities: 0.83, 1.08, 1.54, 3.59, 5.38.
FRUIN_QUEUING: tuple[float, ...] = tuple(1 / (ft2 * FT2) for ft2 in (13, 10, 7, 3, 2))

#: Most points a calibration takes (a user marks a handful; bounds the work per request).
MAX_POINTS = 64
#: Refuse a calibration whose worst marked point is off by more than this share of the frame
#: diagonal: the metres do not fit the points (a typo, a swapped pair, points off the floor).
MAX_ERROR_SHARE = 0.03


class FloorError(ValueError):
    """A calibration that cannot be used; ``str()`` is one line saying what to fix."""


def level_bands(levels: str | Sequence[float]) -> tuple[float, ...]:
    """``"walkway"``, ``"queuing"`` or five ascending upper bounds of levels A-E (people/m2)."""
    if isinstance(levels, str):
        named = {"walkway": FRUIN_WALKWAY, "queuing": FRUIN_QUEUING}
        if levels not in named:
            raise FloorError(f"levels must be 'walkway', 'queuing' or five numbers, got {levels!r}")
        return named[levels]
    bands = tuple(float(b) for b in levels)
    if len(bands) != 5 or not all(math.isfinite(b) and b > 0 for b in bands):
        raise FloorError("levels must be five positive upper bounds (people/m2) of levels A-E")
    if any(b >= c for b, c in itertools.pairwise(bands)):
        raise FloorError("the five level bounds must be strictly ascending (A below B ...)")
    return bands


def level_of_service(density: float, bands: Sequence[float] = FRUIN_WALKWAY) -> str:
    """The level (A-F) of a density in people/m2: the first level whose upper bound it does
    not exceed, F above the last."""
    for name, bound in zip(LEVELS, bands, strict=False):
        if density <= bound:
            return name
    return LEVELS[-1]


def _as_points(value: Sequence[Sequence[float]], what: str) -> NDArray[np.float64]:
    try:
        pts = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise FloorError(f"{what} must be a list of [x, y] pairs") from None
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise FloorError(f"{what} must be a list of [x, y] pairs")
    if not np.isfinite(pts).all():
        raise FloorError(f"{what} must be finite numbers (got NaN or infinity)")
    return pts


def _collinear(pts: NDArray[np.float64]) -> bool:
    """Whether the points (nearly) lie on one line: the spread across their main direction
    is under 1 % of the spread along it."""
    centred = pts - pts.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return bool(s[0] == 0 or s[1] / s[0] < 0.01)


def _three_on_a_line(pts: NDArray[np.float64]) -> int | None:
    """With exactly four points, the index of one that lies on a line with two others."""
    for skip in range(4):
        if _collinear(np.delete(pts, skip, axis=0)):
            return skip
    return None


def _apply(h: NDArray[np.float64], pts: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(cv2.perspectiveTransform(pts.reshape(-1, 1, 2), h)).reshape(-1, 2)


def _shoelace(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Areas of polygons whose vertices run along the last axis."""
    return np.asarray(
        0.5 * np.abs((x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(axis=-1)))


def _raised(
    g: NDArray[np.float64], frame_size: tuple[int, int], height: float
) -> NDArray[np.float64]:
    """The floor-to-frame homography ``g`` of the plane ``height`` metres above the floor.

    ``g = K [r1 r2 t]`` up to scale, with ``K`` the camera's intrinsics: square pixels and
    the principal point at the frame centre are assumed, the focal length ``f`` follows from
    ``r1 . r2 = 0`` and ``|r1| = |r2|`` (least squares over both). The plane ``z = h`` then
    maps by ``K [r1 r2 (t + h r3)]``, ``r3`` pointing up (towards the camera).
    """
    cx, cy = frame_size[0] / 2, frame_size[1] / 2
    shift = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
    a = np.linalg.inv(shift) @ g
    coef = np.array([a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1],
                     a[0, 0] ** 2 + a[1, 0] ** 2 - a[0, 1] ** 2 - a[1, 1] ** 2])
    rhs = np.array([a[2, 0] * a[2, 1], a[2, 0] ** 2 - a[2, 1] ** 2])
    denom = float(coef @ coef)
    inv_f2 = -float(coef @ rhs) / denom if denom > 0 else 0.0
    if not inv_f2 > 0:
        raise FloorError("cannot tell the camera's height from these points (it looks straight"
                         " down, or the points are too close together): set head_height to 0")
    f = 1 / math.sqrt(inv_f2)
    b = np.diag([1 / f, 1 / f, 1.0]) @ a  # = lambda [r1 r2 t]
    lam = (np.linalg.norm(b[:, 0]) + np.linalg.norm(b[:, 1])) / 2
    if b[2, 2] < 0:  # the floor is in front of the camera: t_z > 0
        lam = -lam
    r1, r2, t = b[:, 0] / lam, b[:, 1] / lam, b[:, 2] / lam
    r3 = np.cross(r1, r2)
    r3 /= np.linalg.norm(r3)
    camera_z = -float(r3 @ t)  # the camera centre's height along r3
    up = r3 if camera_z > 0 else -r3
    if height >= 0.9 * abs(camera_z):
        raise FloorError(f"head_height {height:g} m is not below the camera, which these points "
                         f"put {abs(camera_z):.2g} m above the floor: lower it or set it to 0")
    out = shift @ np.diag([f, f, 1.0]) @ np.column_stack([r1, r2, t + height * up]) * lam
    return np.asarray(out / out[2, 2] if out[2, 2] != 0 else out)


@dataclass(frozen=True, eq=False)
class Floor:
    """One stream's calibration: marked frame points and their floor positions (metres),
    and the homographies derived from them. Build with :meth:`calibrate` or
    :meth:`from_rectangle`; both raise :class:`FloorError` for input that cannot work."""

    image_points: NDArray[np.float64]
    floor_points: NDArray[np.float64]
    frame_size: tuple[int, int]
    head_height: float
    max_range: float
    #: floor metres -> frame pixels on the floor plane (the marked points, the metric grid)
    to_frame: NDArray[np.float64]
    #: frame pixels -> metres on the plane the density lies on (the head plane, or the floor)
    from_frame: NDArray[np.float64]
    #: how far the marked points are from where the homography puts them (frame pixels)
    rms_error_px: float
    max_error_px: float
    _areas: dict[tuple[int, int, int, int], NDArray[np.float64]] = field(
        default_factory=dict, repr=False)

    @classmethod
    def calibrate(
        cls,
        image_points: Sequence[Sequence[float]],
        floor_points: Sequence[Sequence[float]],
        frame_size: tuple[int, int],
        *,
        head_height: float = 0.0,
        max_range: float = 3.0,
    ) -> Floor:
        """From four or more frame points (pixels) and their floor positions (metres)."""
        img = _as_points(image_points, "image_points")
        flo = _as_points(floor_points, "floor_points")
        width, height = int(frame_size[0]), int(frame_size[1])
        if width <= 0 or height <= 0:
            raise FloorError("frame size must be positive")
        if len(img) != len(flo):
            raise FloorError(f"{len(img)} image points but {len(flo)} floor points: give one "
                             "floor position (metres) per marked point")
        if len(img) < 4:
            raise FloorError(f"mark at least 4 floor points, got {len(img)}")
        if len(img) > MAX_POINTS:
            raise FloorError(f"at most {MAX_POINTS} points, got {len(img)}")
        if not (math.isfinite(head_height) and head_height >= 0):
            raise FloorError("head_height must be a number of metres >= 0")
        if not (math.isfinite(max_range) and max_range >= 1):
            raise FloorError("max_range must be a number >= 1")
        for pts, what in ((img, "image"), (flo, "floor")):
            if _collinear(pts):
                raise FloorError(f"the {what} points lie on one line: mark points that span "
                                 "an area of the floor (e.g. the corners of a rectangle)")
            if len(pts) == 4 and (i := _three_on_a_line(pts)) is not None:
                others = ", ".join(str(j + 1) for j in range(4) if j != i)
                raise FloorError(f"{what} points {others} lie on one line: move one of them "
                                 "so that no three of the four are in a row")
        if len(np.unique(np.round(img, 6), axis=0)) < len(img):
            raise FloorError("two image points are the same: mark each floor point once")
        g, _ = cv2.findHomography(flo, img, 0)
        if g is None or not np.isfinite(g).all() or abs(np.linalg.det(g)) < 1e-12:
            raise FloorError("no perspective maps these floor positions to these points: check "
                             "that each point has its own floor position")
        g = np.asarray(g, np.float64)
        inv = np.linalg.inv(g)
        # The marked points must all be in front of the camera, on one side of the horizon.
        depth_sign = np.sign(np.c_[img, np.ones(len(img))] @ inv[2])
        if not (np.all(depth_sign > 0) or np.all(depth_sign < 0)):
            raise FloorError("the horizon these points imply runs through them: a point is "
                             "off the floor or its metres are swapped with another's")
        err = np.linalg.norm(_apply(g, flo) - img, axis=1)
        diag = math.hypot(width, height)
        worst = int(np.argmax(err))
        if err[worst] > MAX_ERROR_SHARE * diag:
            raise FloorError(f"point {worst + 1} is {err[worst]:.0f} px from where the other "
                             "points put its floor position: check its metres")
        plane = g if head_height == 0 else _raised(g, (width, height), head_height)
        return cls(img, flo, (width, height), float(head_height), float(max_range), g,
                   np.asarray(np.linalg.inv(plane), np.float64),
                   float(np.sqrt(np.mean(err**2))), float(err[worst]))

    @classmethod
    def from_rectangle(
        cls,
        corners: Sequence[Sequence[float]],
        width_m: float,
        depth_m: float,
        frame_size: tuple[int, int],
        **options: float,
    ) -> Floor:
        """From the four frame corners of a floor rectangle ``width_m`` x ``depth_m``, in
        order around it (the first two along its width)."""
        if not (math.isfinite(width_m) and math.isfinite(depth_m)) or width_m <= 0 or depth_m <= 0:
            raise FloorError(f"the rectangle must have a width and depth > 0 metres, got "
                             f"{width_m:g} x {depth_m:g}")
        if len(corners) != 4:
            raise FloorError(f"a rectangle has 4 corners, got {len(corners)}")
        floor = [(0.0, 0.0), (width_m, 0.0), (width_m, depth_m), (0.0, depth_m)]
        return cls.calibrate(corners, floor, frame_size, **options)

    # -- geometry ----------------------------------------------------------------------------

    def _depth(self, pts: NDArray[np.float64]) -> NDArray[np.float64]:
        """Inverse depth of frame points on the density plane, positive in front of the
        camera, scaled so that the deepest marked point has 1."""
        w = np.c_[pts, np.ones(len(pts))] @ self.from_frame[2]
        ref = np.c_[self.image_points, np.ones(len(self.image_points))] @ self.from_frame[2]
        sign = 1.0 if ref[0] > 0 else -1.0
        return np.asarray(w * sign / float(np.min(ref * sign)))

    def valid(self, points: Sequence[Sequence[float]] | NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which frame points lie on the calibrated floor (in front of the camera, at most
        ``max_range`` times as deep as the deepest marked point)."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return np.asarray(self._depth(pts) >= 1 / self.max_range)

    def to_metres(self, points: Sequence[Sequence[float]] | NDArray[np.float64]
                  ) -> NDArray[np.float64]:
        """Frame pixels to metres on the density plane."""
        return _apply(self.from_frame, np.asarray(points, np.float64).reshape(-1, 2))

    def cell_areas(
        self, frame_size: tuple[int, int], density_shape: tuple[int, int]
    ) -> NDArray[np.float64]:
        """Floor area (m2) of each density cell, NaN where masked; cached per shape.

        Cell (r, c) covers the frame rectangle of ``zones.zone_mask``; its four corners map
        to a floor quadrilateral (exactly: a homography maps lines to lines).

        The cells span the whole frame whatever its pixel size, so their corners are taken
        in the calibration's own pixels (``self.frame_size``): a camera whose decoder scales
        its picture reports ``Frame.size`` in camera pixels while the page marks the points
        on the smaller picture it shows. ``frame_size`` is accepted for symmetry with the
        zone functions and does not change the result."""
        del frame_size
        width, height = self.frame_size
        key = (int(width), int(height), int(density_shape[0]), int(density_shape[1]))
        cached = self._areas.get(key)
        if cached is not None:
            return cached
        width, height, rows, cols = key
        xs = np.linspace(0, width, cols + 1)
        ys = np.linspace(0, height, rows + 1)
        gx, gy = np.meshgrid(xs, ys)
        corners = np.c_[gx.ravel(), gy.ravel()]
        ok = self.valid(corners).reshape(rows + 1, cols + 1)
        m = self.to_metres(corners).reshape(rows + 1, cols + 1, 2)
        quad = np.stack([m[:-1, :-1], m[:-1, 1:], m[1:, 1:], m[1:, :-1]], axis=2)
        areas = _shoelace(quad[..., 0], quad[..., 1])
        cell_ok = ok[:-1, :-1] & ok[:-1, 1:] & ok[1:, 1:] & ok[1:, :-1]
        areas = np.where(cell_ok, areas, np.nan)
        areas.setflags(write=False)
        if len(self._areas) >= 4:
            self._areas.pop(next(iter(self._areas)))
        self._areas[key] = areas
        return areas

    def per_m2(
        self, density: NDArray[np.floating], frame_size: tuple[int, int]
    ) -> NDArray[np.float64]:
        """People per square metre of floor in each cell (NaN where masked)."""
        areas = self.cell_areas(frame_size, (density.shape[0], density.shape[1]))
        with np.errstate(invalid="ignore"):
            return np.asarray(density, np.float64) / areas

    def zone_area(
        self,
        points: Sequence[PointXY],
        frame_size: tuple[int, int],
        density_shape: tuple[int, int],
    ) -> float:
        """Floor area (m2) of the part of a zone the zone's count covers: the cells' areas
        weighted by the zone's coverage mask (the same mask that counts it, so count / area
        is the density of exactly those people). Raises ``FloorError`` when the zone reaches
        a masked cell (beyond the calibrated floor)."""
        mask = zone_mask(points, frame_size, density_shape).astype(np.float64)
        areas = self.cell_areas(frame_size, density_shape)
        touched = mask > 0
        if np.isnan(areas[touched]).any():
            raise FloorError("reaches beyond the calibrated floor (towards the horizon): "
                             "draw it nearer the camera or mark floor points farther away")
        return float((mask[touched] * areas[touched]).sum())

    def floor_view(
        self,
        people: NDArray[np.floating],
        frame_size: tuple[int, int],
        metres_per_px: float = 0.1,
        max_px: int = 800,
        margin: float = 0.5,
    ) -> tuple[NDArray[np.float64], tuple[float, float, float, float]]:
        """A top-down map of ``people`` (per cell of a grid over the frame: a density map or
        a gathering grid) on the floor: people per m2 on a raster of ``metres_per_px``
        (coarser if it would exceed ``max_px`` a side), NaN off the calibrated floor.

        The raster covers the marked points' extent widened by ``margin`` of its larger
        side each way (the part of the floor the calibration vouches for), rows from the
        largest floor y (top) down, columns along x; returns it and its extent ``(x0, y0,
        x1, y1)`` in metres. Each raster pixel takes the density of the frame cell its
        centre falls in, and the raster is then scaled to hold exactly the people of the
        calibrated cells whose centres lie in the extent: the warp moves people, it neither
        adds nor loses any."""
        shape = (int(people.shape[0]), int(people.shape[1]))
        areas = self.cell_areas(frame_size, shape)
        frame_size = self.frame_size  # the grid's cells in the calibration's pixels
        ok = ~np.isnan(areas)
        lo, hi = self.floor_points.min(axis=0), self.floor_points.max(axis=0)
        pad = margin * float((hi - lo).max())
        x0, y0 = lo - pad
        x1, y1 = hi + pad
        rows, cols = shape
        cy, cx = np.mgrid[0:rows, 0:cols]
        centres = np.c_[(cx.ravel() + 0.5) * frame_size[0] / cols,
                        (cy.ravel() + 0.5) * frame_size[1] / rows]
        m = self.to_metres(centres).reshape(rows, cols, 2)
        within = ok & (m[..., 0] >= x0) & (m[..., 0] < x1) & (m[..., 1] >= y0) & (m[..., 1] < y1)
        total = float(np.asarray(people, np.float64)[within].sum())
        with np.errstate(invalid="ignore"):
            per_m2 = np.where(ok, np.asarray(people, np.float64) / areas, 0.0)
        res = max(metres_per_px, (x1 - x0) / max_px, (y1 - y0) / max_px)
        nx, ny = max(1, math.ceil((x1 - x0) / res)), max(1, math.ceil((y1 - y0) / res))
        # Each raster pixel averages SUB x SUB samples: near the camera a pixel spans many
        # small frame cells, and one sample would alias with them.
        sub = 4
        gx = x0 + (np.arange(nx * sub) + 0.5) * (res / sub)
        gy = y1 - (np.arange(ny * sub) + 0.5) * (res / sub)
        fx, fy = np.meshgrid(gx, gy)
        img = _apply(np.asarray(np.linalg.inv(self.from_frame), np.float64),
                     np.c_[fx.ravel(), fy.ravel()].astype(np.float64))
        c = np.floor(img[:, 0] * cols / frame_size[0]).astype(np.int64)
        r = np.floor(img[:, 1] * rows / frame_size[1]).astype(np.int64)
        inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows) & self.valid(img)
        samples = np.full(len(img), np.nan)
        ri, ci = r[inside], c[inside]
        good = ok[ri, ci]
        samples[np.flatnonzero(inside)[good]] = per_m2[ri[good], ci[good]]
        blocks = samples.reshape(ny, sub, nx, sub)
        seen = (~np.isnan(blocks)).sum(axis=(1, 3))
        with np.errstate(invalid="ignore"):
            raster = np.nansum(blocks, axis=(1, 3)) / seen  # NaN where no sample is on the floor
        held = float(np.nansum(raster)) * res * res
        if held > 0:
            raster *= total / held
        return raster, (float(x0), float(y0), float(x0 + nx * res), float(y1))

    def grid(self, step_m: float = 1.0, max_lines: int = 60) -> list[list[PointXY]]:
        """Lines of a metric grid on the floor (every ``step_m`` metres over the marked
        points' extent plus a margin), as frame polylines cut where they leave the calibrated
        floor: what the page draws over the live view."""
        lo = self.floor_points.min(axis=0) - 2 * step_m
        hi = self.floor_points.max(axis=0) + 2 * step_m
        step = max(step_m, float((hi - lo).max()) / max_lines)
        lines: list[list[PointXY]] = []
        for axis in (0, 1):
            for v in np.arange(math.floor(lo[axis] / step) * step, hi[axis] + step / 2, step):
                t = np.linspace(lo[1 - axis], hi[1 - axis], 41)
                pts = np.empty((len(t), 2))
                pts[:, axis], pts[:, 1 - axis] = v, t
                img = _apply(self.to_frame, pts)
                w = np.c_[pts, np.ones(len(pts))] @ self.to_frame[2]
                ok = w * np.sign(np.c_[self.floor_points[:1], [[1.0]]] @ self.to_frame[2]) > 0
                ok &= self.valid(img)
                run: list[PointXY] = []
                for p, good in zip(img, ok, strict=True):
                    if good:
                        run.append((round(float(p[0]), 1), round(float(p[1]), 1)))
                    elif run:
                        if len(run) > 1:
                            lines.append(run)
                        run = []
                if len(run) > 1:
                    lines.append(run)
        return lines

    def to_dict(self) -> dict[str, object]:
        """The calibration's input, enough to rebuild it with :meth:`calibrate` (the
        homographies are derived, so they are not stored)."""
        return {
            "image_points": self.image_points.tolist(),
            "floor_points": self.floor_points.tolist(),
            "frame_size": list(self.frame_size),
            "head_height": self.head_height,
            "max_range": self.max_range,
        }

