"""Heatmap overlays: a density map in OpenCV's Jet colormap blended over its frame."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from crowdcount.model.types import Result
from crowdcount.model.zones import Zone, draw_zones


def colorize(density: NDArray[np.float32], size: tuple[int, int], peak: float | None = None) -> (
    NDArray[np.uint8]
):
    """RGB Jet image of ``density`` resized to ``size`` = (w, h). ``peak`` fixes the value
    shown as full red (defaults to the map's maximum) so a stream's colours stay stable."""
    top = peak if peak is not None else float(density.max())
    scaled = np.clip(density / top, 0.0, 1.0) if top > 0 else np.zeros_like(density)
    grey = cv2.resize((scaled * 255).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(
    image: NDArray[np.uint8],
    density: NDArray[np.float32],
    alpha: float = 0.45,
    peak: float | None = None,
) -> NDArray[np.uint8]:
    """Blend the Jet heatmap over ``image`` (RGB); density-free pixels stay untinted."""
    h, w = image.shape[:2]
    heat = colorize(density, (w, h), peak)
    weight = cv2.resize(density, (w, h), interpolation=cv2.INTER_LINEAR)
    top = peak if peak is not None else float(weight.max())
    mask = np.clip(weight / (0.15 * top), 0.0, 1.0)[..., None] if top > 0 else 0.0
    blend = image.astype(np.float32) * (1 - alpha * mask) + heat.astype(np.float32) * alpha * mask
    return blend.astype(np.uint8)


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
    """A single picture's result (``crowdcount count --overlay``, uploads): heatmap and count."""
    return draw_label(overlay(image, density), [f"count {float(density.sum()):.1f}"])


def annotate(
    result: Result,
    title: str | None = None,
    clock: str | None = None,
    zones: Sequence[Zone] | None = None,
) -> NDArray[np.uint8]:
    """The annotated frame viewers see: heatmap, count, stream name and time, and when
    ``zones`` are given their outlines labelled with ``result.zones`` counts."""
    lines = [f"count {result.count:.1f}"]
    if title:
        lines.insert(0, title)
    if clock:
        lines.append(clock)
    image = overlay(result.frame.image, result.density)
    if zones:
        image = draw_zones(image, zones, result.zones)
    return draw_label(image, lines)
