"""Heatmap overlays: a density map in OpenCV's Jet colormap blended over its frame.

Colours are on one absolute scale, the same for every frame, stream and upload: a cell's
colour says how many people the model put in that output cell (8x8 pixels of the model's
input for the bundled stride-8 model), from blue (none) to red (``HEAT_CAP`` or more). A
nearly empty scene therefore stays blue-green where a packed one turns red. The page draws
its legend from ``heat_legend()`` (served by ``GET /api/heatmap``); why the cap is where it
is: docs/runtime-notes.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.floor import Floor
from crowdcount.model.types import Result
from crowdcount.model.zones import Zone, draw_zones

#: People per output cell drawn as full red. The bundled model's densest cells reach 1-3 in
#: packed crowds (ShanghaiTech A), while one person alone peaks at about 0.5.
HEAT_CAP = 1.0
#: Below this many people per cell the heat fades out, so empty floor shows untinted.
HEAT_FADE = 0.15 * HEAT_CAP
HEAT_UNIT = "people per output cell"
#: People per square metre of floor drawn as full red on a floor-calibrated stream: a
#: standing crowd this dense is past Fruin's queuing level D, and moving crowds of 4-5 per m2
#: are where crowd-safety guidance puts the danger.
FLOOR_HEAT_CAP = 4.0
FLOOR_HEAT_UNIT = "people per m2 of floor"


def heat_level(density: NDArray[np.float32], cap: float = HEAT_CAP) -> NDArray[np.float32]:
    """Where each cell's density lies on the absolute colour scale: 0 (none) to 1 (at or
    over ``cap``: ``HEAT_CAP`` per cell, or ``FLOOR_HEAT_CAP`` per m2). NaN (a masked
    cell of a floor map) is 0."""
    return np.clip(np.nan_to_num(np.asarray(density, np.float32) / cap), 0.0, 1.0)


def _jet(levels: NDArray[np.float32]) -> NDArray[np.uint8]:
    """RGB Jet colours of ``levels`` in [0, 1] (any shape: returns shape + (3,))."""
    grey = np.round(levels * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(grey.reshape(-1, 1), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).reshape(*levels.shape, 3)


def heat_legend(stops: int = 11, *, floor: bool = False) -> dict[str, Any]:
    """The colour scale as data, for legends drawn elsewhere (the page):
    ``{"unit", "max", "fade", "stops": [{"value", "color": "#rrggbb"}, ...]}``; with
    ``floor`` the people-per-m2 scale of floor-calibrated streams."""
    cap = FLOOR_HEAT_CAP if floor else HEAT_CAP
    levels = np.linspace(0.0, 1.0, stops, dtype=np.float32)
    colors = _jet(levels)
    return {
        "unit": FLOOR_HEAT_UNIT if floor else HEAT_UNIT,
        "max": cap,
        "fade": 0.15 * cap,
        "stops": [{"value": round(float(v) * cap, 4),
                   "color": "#{:02x}{:02x}{:02x}".format(*map(int, c))}
                  for v, c in zip(levels, colors, strict=True)],
    }


def colorize(density: NDArray[np.float32], size: tuple[int, int],
             cap: float = HEAT_CAP) -> NDArray[np.uint8]:
    """RGB Jet image of ``density`` on the absolute scale, resized to ``size`` = (w, h)."""
    level = cv2.resize(heat_level(density, cap), size, interpolation=cv2.INTER_LINEAR)
    return _jet(level)


def density_rgba(density: NDArray[np.float32], size: tuple[int, int],
                 max_alpha: float = 0.6, cap: float = HEAT_CAP) -> NDArray[np.uint8]:
    """The density alone as an RGBA picture of ``size`` = (w, h): Jet colours on the
    absolute scale, opaque in proportion to the density (transparent where there is none,
    ``max_alpha`` at ``cap``), for a page to draw faintly under something else (the heads a
    user marks when calibrating)."""
    rgb = colorize(density, size, cap)
    level = cv2.resize(heat_level(density, cap), size, interpolation=cv2.INTER_LINEAR)
    alpha = np.round(np.clip(level, 0.0, 1.0) * (255 * max_alpha)).astype(np.uint8)
    return np.dstack([rgb, alpha])


def overlay(
    image: NDArray[np.uint8], density: NDArray[np.float32], alpha: float = 0.45,
    cap: float = HEAT_CAP,
) -> NDArray[np.uint8]:
    """Blend the Jet heatmap over ``image`` (RGB); cells under 15 % of ``cap`` fade to
    untinted, as do NaN cells (masked: beyond a calibrated floor)."""
    h, w = image.shape[:2]
    heat = colorize(density, (w, h), cap)
    values = np.nan_to_num(np.asarray(density, np.float32))
    weight = cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = np.clip(weight / (0.15 * cap), 0.0, 1.0)[..., None]
    blend = image.astype(np.float32) * (1 - alpha * mask) + heat.astype(np.float32) * alpha * mask
    return blend.astype(np.uint8)


def draw_legend(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The colour scale as a small bar at the bottom-right corner, labelled 0 and the cap,
    so a saved overlay explains its own colours."""
    out = image.copy()
    h, w = image.shape[:2]
    bar_w, bar_h = max(60, w // 5), max(8, h // 60)
    scale = max(0.35, h / 1400)
    label = f"0 - {HEAT_CAP:g}+ people/cell"
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    box_w, box_h = max(bar_w, tw) + 12, bar_h + th + base + 14
    if box_w > w or box_h > h:
        return out  # too small a picture for a legend
    x0, y0 = w - box_w, h - box_h
    cv2.rectangle(out, (x0, y0), (w - 1, h - 1), (0, 0, 0), -1)
    ramp = _jet(np.linspace(0.0, 1.0, bar_w, dtype=np.float32))
    out[y0 + 6 : y0 + 6 + bar_h, x0 + 6 : x0 + 6 + bar_w] = ramp[None, :, :]
    cv2.putText(out, label, (x0 + 6, h - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_label(image: NDArray[np.uint8], lines: list[str]) -> NDArray[np.uint8]:
    """Text lines on a dark band at the top-left, scaled to the frame's height."""
    out = image.copy()
    scale = max(0.45, image.shape[0] / 720)
    thickness = max(1, round(scale * 2))
    y = 0
    for line in lines:
        (tw, th), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(out, (0, y), (tw + 12, y + th + base + 10), (0, 0, 0), -1)
        cv2.putText(
            out, line, (6, y + th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
            thickness, cv2.LINE_AA,
        )
        y += th + base + 10
    return out


def counted_overlay(image: NDArray[np.uint8], density: NDArray[np.float32]) -> (
    NDArray[np.uint8]
):
    """A single picture's result (``crowdcount count --overlay``, uploads): heatmap, count
    and the colour scale's legend."""
    picture = draw_label(overlay(image, density), [f"count {float(density.sum()):.1f}"])
    return draw_legend(picture)


def annotate(
    result: Result,
    title: str | None = None,
    clock: str | None = None,
    zones: Sequence[Zone] | None = None,
    floor: Floor | None = None,
) -> NDArray[np.uint8]:
    """The annotated frame viewers see: heatmap, count, stream name and time, and when
    ``zones`` are given their outlines labelled with ``result.zones`` counts. With a
    ``floor`` calibration the heatmap is people per m2 of floor (masked beyond it), a
    one-metre grid is drawn on the floor and zone labels carry density and level."""
    lines = [f"count {result.count:.1f}"]
    if title:
        lines.insert(0, title)
    if clock:
        lines.append(clock)
    if floor is None:
        lines.append(HEAT_UNIT)
        image = overlay(result.frame.image, result.density)
    else:
        lines.append(FLOOR_HEAT_UNIT)
        per_m2 = floor.per_m2(result.density, result.frame.size).astype(np.float32)
        image = draw_grid(overlay(result.frame.image, per_m2, cap=FLOOR_HEAT_CAP), floor)
    if zones:
        image = draw_zones(image, _in_image_pixels(zones, result.frame.size, image),
                           result.zones,
                           labels={k: f"{v.per_m2:.2f}/m2 {v.level}"
                                   for k, v in result.floor.items()})
    return draw_label(image, lines)


def draw_grid(image: NDArray[np.uint8], floor: Floor, step_m: float = 1.0
              ) -> NDArray[np.uint8]:
    """The floor's metric grid (every ``step_m`` metres) as thin light lines, with the
    calibration's reprojection error in the bottom-left corner."""
    out = image.copy()
    sx = image.shape[1] / floor.frame_size[0]
    sy = image.shape[0] / floor.frame_size[1]
    for line in floor.grid(step_m):
        pts = np.round(np.asarray(line) * (sx, sy)).astype(np.int32)
        cv2.polylines(out, [pts], False, (235, 235, 235), 1, cv2.LINE_AA)
    label = f"{step_m:g} m grid, error {floor.rms_error_px:.1f} px"
    scale = max(0.35, image.shape[0] / 1400)
    _, base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, label, (6, image.shape[0] - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _in_image_pixels(zones: Sequence[Zone], size: tuple[int, int],
                     image: NDArray[np.uint8]) -> Sequence[Zone]:
    """Zones are in camera pixels (``Frame.size``); a decoder may have scaled the picture
    down to the model's size, so outlines are scaled with it."""
    sx, sy = image.shape[1] / size[0], image.shape[0] / size[1]
    if sx == 1 and sy == 1:
        return zones
    return [Zone(z.name, tuple((x * sx, y * sy) for x, y in z.points)) for z in zones]
