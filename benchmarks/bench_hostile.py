"""What hostile input costs: credential masking and the JSON decoder against input sizes a
client may choose (issue 17), and the peak memory of image uploads.

    python benchmarks/bench_hostile.py                 # masking, decoding, uploads
    python benchmarks/bench_hostile.py --skip-uploads  # the text part only (seconds)

Masking is timed beside the regular expression it replaced (issue 17's denial of service),
on the same inputs, so a noisy neighbour slows both alike; each cell is the best of
``--rounds``. Time per character staying flat as the input grows is what linear means.
Upload memory is the RSS peak of this process above its idle RSS (sampled every 2 ms) while
``UploadCounter`` counts one image with the overlay on, after a warm-up upload (the model
is open), with the model a server uses: the bundled one on the default backend, or
``--model``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crowdcount.model.imageio import ImageError
from crowdcount.streamer.config import ModelConfig
from crowdcount.streamer.routes.common import ApiError, decode_json
from crowdcount.streamer.upload import UploadCounter
from crowdcount.streamer.urls import mask_text

_OLD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]*@")
SIZES = (10_000, 50_000, 120_000, 262_144)


def best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def masking(rounds: int) -> None:
    print("| input | characters | old regex (s) | mask_text (ms) | mask_text ns/char |")
    print("|---|---:|---:|---:|---:|")
    shapes = {
        "rtsp://h/ + letters": lambda n: "rtsp://h/" + "a" * n,
        "'a://' repeated": lambda n: "a://" * (n // 4),
        "URL with many secrets": lambda n: "rtsp://u:p@h/?" + "key=1&" * (n // 6),
    }
    for label, make in shapes.items():
        for n in SIZES:
            text = make(n)
            old = best(lambda t=text: _OLD.sub(r"\1***@", t), 1) if n <= 120_000 else None
            new = best(lambda t=text: mask_text(t), rounds)
            shown = f"{old:.2f}" if old is not None else "(skipped)"
            print(f"| {label} | {len(text):,} | {shown} | {new * 1000:.1f} | "
                  f"{new / len(text) * 1e9:.0f} |")


def decoding(rounds: int) -> None:
    print("\n| JSON body | bytes | decode_json (ms) | answer |")
    print("|---|---:|---:|---|")
    bodies = {
        "5,000-digit integer": b'{"a": ' + b"7" * 5000 + b"}",
        "50,000 levels of [": b"[" * 50_000 + b"]" * 50_000,
        "lone surrogate": b'{"url": "rtsp://h/\\udc80"}',
        "200 KB of a string": b'{"a": "' + b"x" * 200_000 + b'"}',
        "100,000 small numbers": b"[" + b"1," * 99_999 + b"1]",
    }
    for label, raw in bodies.items():
        def run(r: bytes = raw) -> str:
            try:
                decode_json(r)
            except ApiError as exc:
                return f"{exc.status}"
            return "accepted"

        seconds = best(run, rounds)
        print(f"| {label} | {len(raw):,} | {seconds * 1000:.2f} | {run()} |")


def _image(fmt: str, width: int, height: int) -> bytes:
    from PIL import Image

    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    grey = ((x + y) / 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([grey, grey[::-1], 255 - grey])).save(buf, fmt)
    return buf.getvalue()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def uploads(model: Path | None) -> None:
    counter = UploadCounter.from_config(ModelConfig(path=model))
    asyncio.run(counter.count(_image("PNG", 64, 64), "warm-up", overlay=True))
    print("\n| upload | bytes | answer | peak RSS above idle (MB) | seconds |")
    print("|---|---:|---|---:|---:|")
    cases = [("PNG 6100x4090 (25 MP)", "PNG", 6100, 4090),
             ("JPEG 6100x4090", "JPEG", 6100, 4090),
             ("WebP 6100x4090", "WEBP", 6100, 4090),
             ("BMP 1860x1860 (10 MB)", "BMP", 1860, 1860),
             ("JPEG 4000x3000", "JPEG", 4000, 3000),
             ("JPEG 3000x4000", "JPEG", 3000, 4000),
             ("JPEG 2500x1900", "JPEG", 2500, 1900),
             ("PNG 7300x5470 (40 MP)", "PNG", 7300, 5470)]
    for label, fmt, w, h in cases:
        data = _image(fmt, w, h)
        idle = _rss()
        peak = [idle]
        done = threading.Event()

        def watch(done: threading.Event = done, peak: list[int] = peak) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss())
                done.wait(0.002)

        sampler = threading.Thread(target=watch, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        try:
            asyncio.run(counter.count(data, label, overlay=True))
            answer = "counted"
        except ImageError:
            answer = "refused"
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        print(f"| {label} | {len(data):,} | {answer} | {(peak[0] - idle) / 2**20:.0f} | "
              f"{seconds:.2f} |")
    asyncio.run(counter.close())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip-uploads", action="store_true")
    p.add_argument("--model", type=Path, help="model for uploads (default: the bundled one)")
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}\n")
    masking(args.rounds)
    decoding(args.rounds)
    if not args.skip_uploads:
        uploads(args.model)


if __name__ == "__main__":
    main()
