"""Scenes with nobody (or only people who never move) in them, made at run time from footage
or generated, for evaluation (a count must be zero when nobody is there) and as background
training material. Three dataset kinds, all deterministic:

``empty:synthetic[:RANGE]``
    Generated frames (flat colours, uniform and Gaussian noise, smooth noise, gradients),
    count 0. Item ``i`` is made from seed ``i``; the docs keep 1-8 for evaluation and train
    on the rest.
``empty:VIDEO`` or ``empty:FOLDER``
    The temporal median of up to 64 evenly spaced frames of a video (or of the images in a
    folder, in name order), count 0: the caller vouches that nobody stands still in it.
    Frames larger than ``MEDIAN_MAX_SIDE`` are shrunk first.
``median:FORMAT:PATH[:RANGE]``
    The temporal median of an annotated dataset's images, labelled with the heads that sit
    at one place in at least half of the frames the median is taken over (the median keeps
    exactly those people: Mall's kiosk).
``background:FORMAT:PATH[:RANGE]``
    From each annotated image, its largest rectangle that no head or body is near (at least
    ``MIN_SIDE`` pixels on each side), count 0: sky, floor, walls of the training scenes.

Nothing here is stored: the images are computed when the dataset is opened (a video's
median takes seconds), so no footage-derived picture ever lands in a repository.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from crowdcount.model.preprocess import shrunk
from crowdcount.model.types import Sample
from crowdcount.training.readers.base import DatasetError, Kernel, Reader, load_image

log = logging.getLogger(__name__)

#: Frames a median is taken over (evenly spaced): enough for a stable background, bounded
#: memory (64 x 1024 x 768 x 3 bytes is 150 MB).
MEDIAN_FRAMES = 64
#: Longer side an ``empty:`` median's frames are shrunk to (above the serving size, 768):
#: the frame count alone does not bound memory, as the up to 128 decoded frames of a 4K
#: video would be 3 GB.
MEDIAN_MAX_SIDE = 1280
#: Synthetic frames available; items are cheap and made on demand.
SYNTHETIC_ITEMS = 64
SYNTHETIC_SIZE = (480, 640)
#: Head-free crops smaller than this on either side are not worth a training example.
MIN_SIDE = 96
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")

_NONE = np.zeros((0, 2), np.float32)


def synthetic_frame(index: int, size: tuple[int, int] = SYNTHETIC_SIZE) -> NDArray[np.uint8]:
    """Frame ``index`` of the generated set: kind ``index % 6``, parameters from seed
    ``index``. The kinds are what cameras show when nobody is there or something is wrong
    (a lens cap, an overexposed sensor, a lost signal)."""
    rng = np.random.default_rng(index)
    h, w = size
    kind = index % 6
    if kind == 0:  # flat: near black or near white, alternately
        level = rng.integers(0, 30) if index % 12 == 0 else rng.integers(225, 256)
        return np.full((h, w, 3), level, np.uint8)
    if kind == 1:  # flat colour
        return np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (h, w, 3)).copy()
    if kind == 2:  # uniform noise
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 3:  # Gaussian noise around a grey level
        mean, sd = rng.uniform(60, 190), rng.uniform(10, 60)
        return np.clip(rng.normal(mean, sd, (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == 4:  # smooth noise: blotches a few to tens of pixels wide
        sigma = float(rng.uniform(2, 16))
        noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        lo, hi = noise.min(), noise.max()
        return ((noise - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    # gradient between two colours, in a random direction
    a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def temporal_median(frames: Sequence[NDArray[np.uint8]]) -> NDArray[np.uint8]:
    """Per-pixel median of same-sized frames, in row strips (a float64 median of the whole
    stack would need 8x its size)."""
    if not frames:
        raise DatasetError("no frames to take a median of")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise DatasetError(f"frames differ in size: a median needs one size ({shape})")
    stack = np.stack(frames)
    out = np.empty(shape, np.uint8)
    for y in range(0, shape[0], 64):
        out[y : y + 64] = np.median(stack[:, y : y + 64], axis=0).round().astype(np.uint8)
    return out


def evenly(n: int, k: int = MEDIAN_FRAMES) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def video_frames(path: Path, k: int = MEDIAN_FRAMES) -> list[NDArray[np.uint8]]:
    """Up to ``k`` frames spread over the video, for its temporal median: spread out so
    that a person who walks through is in few of them (and the median drops them)."""
    from crowdcount.model.video import decode_video, probe_video

    info = probe_video(path)
    every = info.duration / k if info.duration else None
    # Bounded whatever the container claims: without a duration, every 10th of the first
    # 10 k frames (k kept); with one, at most 2 k chosen frames.
    chosen = decode_video(path, every=every)
    picked = itertools.islice(chosen, 0, 10 * k, 10) if every is None else \
        itertools.islice(chosen, 2 * k)
    frames = [shrunk(f.image, MEDIAN_MAX_SIDE) for f in picked]
    return [frames[i] for i in evenly(len(frames), k)]


def persistent_heads(
    points: Sequence[NDArray[np.float32]], radius: float = 8.0, share: float = 0.5
) -> NDArray[np.float32]:
    """Heads found within ``radius`` pixels of one place in at least ``share`` of the
    frames: the people a temporal median keeps. Greedy: the best-supported place first, its
    position the mean of each frame's nearest head, neighbours within ``2 * radius``
    suppressed."""
    frames = [np.asarray(p, np.float32).reshape(-1, 2) for p in points]
    need = share * len(frames)
    trees = [cKDTree(p) if len(p) else None for p in frames]
    candidates: list[tuple[int, NDArray[np.float32]]] = []
    for p in frames:
        for q in p:
            near = [t.data[t.query(q)[1]] for t in trees
                    if t is not None and t.query(q)[0] <= radius]
            if len(near) >= need:
                candidates.append((len(near), np.mean(near, axis=0).astype(np.float32)))
    chosen: list[NDArray[np.float32]] = []
    for _, q in sorted(candidates, key=lambda c: -c[0]):
        if all(np.hypot(*(q - c)) > 2 * radius for c in chosen):
            chosen.append(q)
    return np.array(chosen, np.float32).reshape(-1, 2)


class SyntheticEmpty:
    """``empty:synthetic``: generated pictures of nothing, for which any count above zero
    is the model's own false positives (no footage needed, nothing to vouch for)."""

    name = "empty-synthetic"
    kernel = Kernel("fixed", 4.0)

    def __len__(self) -> int:
        return SYNTHETIC_ITEMS

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < SYNTHETIC_ITEMS:
            raise IndexError(index)
        return Sample(synthetic_frame(index), 0.0, _NONE, f"synthetic-{index + 1}")


class _OneSample:
    """A reader of one sample (a median is one picture, whatever it was made of)."""

    _sample: Sample

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Sample:
        if index != 0:
            raise IndexError(index)
        return self._sample


class MedianView(_OneSample):
    """One temporal median, of a video file or a folder of images, labelled empty."""

    kernel = Kernel("fixed", 4.0)

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.name = f"empty-{path.stem}"
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            frames = video_frames(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            frames = [shrunk(load_image(files[i], i), MEDIAN_MAX_SIDE)
                      for i in evenly(len(files))]
        else:
            raise DatasetError(f"{path}: empty: takes 'synthetic', a video file or a folder "
                               "of images")
        self._sample = Sample(temporal_median(frames), 0.0, _NONE, f"median of {path.name}")


class MedianReader(_OneSample):
    """The temporal median of an annotated dataset, with its persistent heads as points."""

    def __init__(self, reader: Reader, spec: str) -> None:
        self.name, self.kernel = f"median-{reader.name}", reader.kernel
        picked = [reader[i] for i in evenly(len(reader))]
        missing = [s.name for s in picked if s.points is None]
        if missing:
            raise DatasetError(f"{spec}: median: needs head points ({missing[0]} has a count only)")
        heads = persistent_heads([s.points for s in picked if s.points is not None])
        image = temporal_median([s.image for s in picked])
        self._sample = Sample(image, float(len(heads)), heads, f"median of {spec}")
        log.info("event=median spec=%s frames=%d persistent_heads=%d", spec, len(picked),
                 len(heads))


def head_free_rect(
    points: NDArray[np.float32], shape: tuple[int, int], cell: int = 16
) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the largest rectangle, on a grid of ``cell`` pixels, that no
    person's box touches, or None below ``MIN_SIDE``. A person's box is ``2h`` either side of
    the head, ``2h`` above and ``7h`` below it (the body), ``h`` half the distance to the
    nearest other head clipped to 8-32 px: big in sparse scenes, small in packed ones, where
    the people around hide each other's bodies anyway."""
    h_px, w_px = shape
    rows, cols = h_px // cell, w_px // cell
    blocked = np.zeros((rows, cols), bool)
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    if len(pts) > 1:
        dist = cKDTree(pts).query(pts, k=2)[0][:, 1]
        size = np.clip(dist / 2, 8, 32)
    else:
        size = np.full(len(pts), 32.0)
    for (x, y), s in zip(pts, size, strict=True):
        r0, r1 = int((y - 2 * s) // cell), int((y + 7 * s) // cell) + 1
        c0, c1 = int((x - 2 * s) // cell), int((x + 2 * s) // cell) + 1
        blocked[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    best, rect = 0, None
    heights = np.zeros(cols, int)
    for r in range(rows):  # largest rectangle in a histogram, row by row
        heights = np.where(blocked[r], 0, heights + 1)
        stack: list[int] = []
        for c in range(cols + 1):
            height = heights[c] if c < cols else 0
            while stack and heights[stack[-1]] >= height:
                top = heights[stack.pop()]
                left = stack[-1] + 1 if stack else 0
                if top * (c - left) > best and min(top, c - left) * cell >= MIN_SIDE:
                    best, rect = top * (c - left), (r - top + 1, left, r + 1, c)
            stack.append(c)
    if rect is None:
        return None
    r0, c0, r1, c1 = rect
    return r0 * cell, c0 * cell, r1 * cell, c1 * cell


class HeadFreeCrops:
    """Every image's largest head-free rectangle (images without one are left out). Opening
    reads every image once to find them; the crops are cut again when asked for."""

    def __init__(self, reader: Reader, spec: str) -> None:
        self.reader, self.name, self.kernel = reader, f"background-{reader.name}", reader.kernel
        self._rects: list[tuple[int, tuple[int, int, int, int]]] = []
        for i in range(len(reader)):
            sample = reader[i]
            if sample.points is None:
                raise DatasetError(f"{spec}: background: needs head points "
                                   f"({sample.name} has a count only)")
            rect = head_free_rect(sample.points, sample.image.shape[:2])
            if rect is not None:
                self._rects.append((i, rect))
        if not self._rects:
            raise DatasetError(f"{spec}: no image has a head-free area of "
                               f"{MIN_SIDE}x{MIN_SIDE} pixels")

    def __len__(self) -> int:
        return len(self._rects)

    def __getitem__(self, index: int) -> Sample:
        i, (y0, x0, y1, x1) = self._rects[index]
        sample = self.reader[i]
        crop = np.ascontiguousarray(sample.image[y0:y1, x0:x1])
        return Sample(crop, 0.0, _NONE, f"{sample.name}[{y0}:{y1},{x0}:{x1}]")
