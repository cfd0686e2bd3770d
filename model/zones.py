"""Polygon zones: how much of the density map lies inside each one, and how to draw them.

Why an anti-aliased mask at the density map's resolution: the map is 8x smaller than the
frame, so a zone edge usually cuts through density cells. A binary mask (cell in or out)
makes a zone's count jump as the edge moves by a pixel and makes zones that tile the frame
double-count or miss whole rows of cells along their shared edges. Instead each cell gets
the fraction of its area covered by the polygon, estimated on an 8x8 grid of sample points
per cell and averaged (the same result as rasterising at 8x and shrinking with
``cv2.resize(..., INTER_AREA)``).

Why not ``cv2.fillPoly`` for the supersampled raster: it fills the boundary pixels of every
polygon, so two zones sharing an edge both claim the samples on it (a 4x4 grid of zones
over-counts by about 1%). Here the samples are tested with the even-odd crossing rule using
half-open intervals, under which every sample belongs to exactly one polygon of a tiling:
the zone counts of a tiling add up to the frame count up to the 1/64-cell sampling error of
edges that are not axis-aligned.

Masks depend only on the polygon, the frame size and the density shape, so
:class:`ZoneCounter` computes them once per shape and then counts with one matrix product
per frame.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["SUPERSAMPLE", "Zone", "ZoneCounter", "check_points", "check_unique_names",
           "draw_zones", "zone_mask"]

SUPERSAMPLE = 8  # samples per density cell along each axis (64 per cell)

PointXY = tuple[float, float]


def check_points(points: Iterable[Sequence[float]]) -> tuple[PointXY, ...]:
    """The one rule for a zone's polygon, whichever door it comes through (the config file's
    ``ZoneConfig``, the zones route, ``crowdcount count --zones``, a cluster's rows):
    at least 3 points, each finite and >= 0 (frame pixels; a mask clips what lies beyond
    the frame), enclosing some area (a zero-area polygon never contains any density).
    The points as floats; ``ValueError`` naming the first problem."""
    pts = tuple((float(x), float(y)) for x, y in points)
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 points, has {len(pts)}")
    for i, (x, y) in enumerate(pts):
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise ValueError(f"point {i} ({x}, {y}) must be finite and >= 0 (pixels)")
    # Shoelace area (twice it; only zero matters).
    edges = zip(pts, pts[1:] + pts[:1], strict=True)
    if sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges) == 0:
        raise ValueError("points enclose no area (all on one line?)")
    return pts


def check_unique_names(names: Iterable[str]) -> None:
    """A stream's zones are told apart by name (counts, rules, metrics, MQTT topics)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate zone name {name!r} (zone names are unique within a "
                             "stream)")
        seen.add(name)


@dataclass(frozen=True, slots=True)
class Zone:
    """A named polygon in frame pixels (x right, y down), as configured or drawn in the UI;
    its points keep ``check_points``'s rule."""

    name: str
    points: tuple[PointXY, ...]

    def __post_init__(self) -> None:
        try:
            pts = check_points(self.points)
        except ValueError as exc:
            raise ValueError(f"zone {self.name!r}: {exc}") from None
        object.__setattr__(self, "points", pts)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Zone:
        """From ``{"name": ..., "points": [[x, y], ...]}`` (config, API JSON)."""
        points = data["points"]
        if not isinstance(points, Iterable):
            raise ValueError("points must be a list of [x, y] pairs")
        return cls(str(data["name"]), tuple((float(x), float(y)) for x, y in points))

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "points": [list(p) for p in self.points]}


def zone_mask(
    points: Sequence[PointXY],
    frame_size: tuple[int, int],
    density_shape: tuple[int, int],
    supersample: int = SUPERSAMPLE,
) -> NDArray[np.float32]:
    """Fraction (0..1) of each density cell covered by the polygon ``points``.

    ``points`` are frame pixels, ``frame_size`` is (width, height) of the frame they refer
    to and ``density_shape`` is (rows, cols) of the density map; cell (r, c) covers the frame
    rectangle ``[c*W/cols, (c+1)*W/cols) x [r*H/rows, (r+1)*H/rows)``. Parts of the polygon
    outside the frame are ignored (clipped). Self-intersecting polygons follow the even-odd
    rule.
    """
    width, height = frame_size
    rows, cols = int(density_shape[0]), int(density_shape[1])
    if width <= 0 or height <= 0 or rows <= 0 or cols <= 0:
        raise ValueError("frame size and density shape must be positive")
    s = int(supersample)
    mask = np.zeros((rows, cols), np.float32)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return mask
    # Polygon in density-cell units.
    gx = pts[:, 0] * (cols / width)
    gy = pts[:, 1] * (rows / height)
    # Only the polygon's bounding box (clipped to the grid) can have coverage.
    c0, c1 = max(0, math.floor(gx.min())), min(cols, math.ceil(gx.max()))
    r0, r1 = max(0, math.floor(gy.min())), min(rows, math.ceil(gy.max()))
    if c0 >= c1 or r0 >= r1:
        return mask
    xs = c0 + (np.arange((c1 - c0) * s) + 0.5) / s  # sample centres, per column
    ys = r0 + (np.arange((r1 - r0) * s) + 0.5) / s  # sample centres, per row
    inside = np.zeros((len(ys), len(xs)), bool)
    for i in range(len(pts)):
        xa, ya, xb, yb = gx[i - 1], gy[i - 1], gx[i], gy[i]
        if ya == yb:
            continue  # horizontal edges never cross a horizontal ray
        if ya > yb:  # same orientation for an edge shared by two zones: identical maths
            xa, ya, xb, yb = xb, yb, xa, ya
        # Half-open in y: a row exactly at a vertex is counted for one of its two edges.
        crosses = (ys >= ya) & (ys < yb)
        if not crosses.any():
            continue
        x_at = xa + (ys[crosses] - ya) * ((xb - xa) / (yb - ya))
        # Samples strictly left of the edge see it crossed by a ray going right.
        inside[crosses] ^= xs[None, :] < x_at[:, None]
    cover = inside.reshape(r1 - r0, s, c1 - c0, s).mean(axis=(1, 3), dtype=np.float64)
    mask[r0:r1, c0:c1] = cover
    return mask


class ZoneCounter:
    """Counts one stream's zones; masks are cached per (frame size, density shape).

    One instance per stream. The cache keeps the ``max_shapes`` most recently used shapes
    (a WebRTC stream may change resolution; a fixed camera uses one), so per frame the cost
    is one (zones x cells) matrix-vector product. Not thread-safe: use it from one thread
    (the event loop, where results are dispatched).
    """

    def __init__(self, zones: Sequence[Zone] = (), max_shapes: int = 4) -> None:
        check_unique_names(z.name for z in zones)
        self.zones: tuple[Zone, ...] = tuple(zones)
        self.max_shapes = max(1, int(max_shapes))
        self.masks_computed = 0  # how many masks were rasterised (for tests and metrics)
        self._cache: OrderedDict[tuple[int, int, int, int], NDArray[np.float32]] = OrderedDict()

    def masks(
        self, frame_size: tuple[int, int], density_shape: tuple[int, int]
    ) -> NDArray[np.float32]:
        """All zones' masks stacked as (zones, rows * cols), computed once per shape."""
        key = (int(frame_size[0]), int(frame_size[1]), int(density_shape[0]), int(density_shape[1]))
        stacked = self._cache.get(key)
        if stacked is not None:
            self._cache.move_to_end(key)
            return stacked
        cells = key[2] * key[3]
        stacked = np.empty((len(self.zones), cells), np.float32)
        for i, zone in enumerate(self.zones):
            stacked[i] = zone_mask(zone.points, frame_size, density_shape).ravel()
            self.masks_computed += 1
        self._cache[key] = stacked
        while len(self._cache) > self.max_shapes:
            self._cache.popitem(last=False)
        return stacked

    def count(self, density: NDArray[np.float32], frame_size: tuple[int, int]) -> dict[str, float]:
        """``{zone name: people inside}`` for one density map of a frame of ``frame_size``."""
        if not self.zones:
            return {}
        masks = self.masks(frame_size, (density.shape[0], density.shape[1]))
        sums = masks @ np.asarray(density, np.float32).reshape(-1)
        return {z.name: float(v) for z, v in zip(self.zones, sums, strict=True)}


def _colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per zone name (same colour in every frame and viewer)."""
    hue = hashlib.blake2b(name.encode(), digest_size=1).digest()[0] * 180 // 256
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_zones(
    image: NDArray[np.uint8],
    zones: Sequence[Zone],
    counts: Mapping[str, float] | None = None,
    fill_alpha: float = 0.15,
    labels: Mapping[str, str] | None = None,
) -> NDArray[np.uint8]:
    """A copy of ``image`` (RGB) with each zone outlined, lightly filled and labelled with
    its name and, when given, its count and extra text (``labels``, e.g. its density).
    Points are in the image's pixels."""
    out = image.copy()
    if not zones:
        return out
    scale = max(0.4, image.shape[0] / 900)
    thickness = max(1, round(scale * 2))
    polys = [np.round(np.asarray(z.points, np.float64)).astype(np.int32) for z in zones]
    if fill_alpha > 0:
        tint = out.copy()
        for zone, poly in zip(zones, polys, strict=True):
            cv2.fillPoly(tint, [poly], _colour(zone.name), lineType=cv2.LINE_AA)
        out = cv2.addWeighted(tint, fill_alpha, out, 1 - fill_alpha, 0)
    for zone, poly in zip(zones, polys, strict=True):
        colour = _colour(zone.name)
        cv2.polylines(out, [poly], True, colour, thickness, cv2.LINE_AA)
        label = zone.name
        if counts is not None and zone.name in counts:
            label += f" {counts[zone.name]:.1f}"
        if labels is not None and zone.name in labels:
            label += f" {labels[zone.name]}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        # Label at the top-most vertex, kept inside the image.
        x, y = (int(v) for v in poly[np.argmin(poly[:, 1])])
        x = min(max(0, x), max(0, out.shape[1] - tw - 6))
        y = min(max(th + base + 6, y), out.shape[0])
        cv2.rectangle(out, (x, y - th - base - 6), (x + tw + 6, y), colour, -1)
        cv2.putText(
            out,
            label,
            (x + 3, y - base - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return out
