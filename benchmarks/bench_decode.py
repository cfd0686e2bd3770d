"""CPU per camera for decoding and converting a 1080p25 H.264 camera at one count a second.

    python benchmarks/bench_decode.py                  # 30 s 1080p25 clip, GOP 25
    python benchmarks/bench_decode.py --seconds 10 --rate 1 --max-side 768

Each row decodes the whole clip in this process (no network, no model) the way one of the
service's paths does, and converts to RGB only the frames a stream at ``--rate`` counts/s
would give the model:

* ``before``: every frame decoded (FFmpeg's default threads), the counted frames converted
  to full-size RGB and then resized by the runtime (``cv2.INTER_AREA``) to ``--max-side``;
* ``full decode, scaled convert``: every frame decoded on one thread (``Decoder`` with no
  target rate), the counted frames converted at the model's size in one swscale pass;
* ``keyframes only, scaled convert``: ``Decoder`` with the target rate: the non-key frames
  are never decoded (the clip's first GOP is, while the interval is learnt).

CPU is this process's user + system time (all threads): on a shared machine it moves much
less than wall-clock time does. "% of a core" = CPU seconds per second of video.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import av
import cv2

from crowdcount.model.preprocess import input_size
from crowdcount.streamer.sources.decoding import Decoder
from crowdcount.streamer.status import StreamStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hd_clip import hd_clip


def _cpu() -> float:
    return time.process_time()  # all threads, nanosecond clock (os.times ticks are 10 ms)


def run_before(clip: Path, rate: float, max_side: int) -> tuple[int, int, float, float]:
    """(decoded, converted, decode CPU s, convert CPU s) of the old path."""
    decoded = converted = 0
    decode_cpu = convert_cpu = 0.0
    next_t = 0.0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        mark = _cpu()
        for frame in container.decode(stream):
            decoded += 1
            now = _cpu()
            decode_cpu += now - mark
            if float(frame.time or 0.0) >= next_t:
                next_t += 1.0 / rate
                rgb = frame.to_ndarray(format="rgb24")
                h, w = input_size(rgb.shape[1], rgb.shape[0], max_side)
                cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
                converted += 1
                convert_cpu += _cpu() - now
            mark = _cpu()
    return decoded, converted, decode_cpu, convert_cpu


def run_decoder(clip: Path, rate: float, max_side: int, keyframes: bool
                ) -> tuple[int, int, float, float]:
    """(decoded, converted, decode CPU s, convert CPU s) through the shared ``Decoder``."""
    decoder = Decoder(StreamStatus(), rate if keyframes else None, max_side)
    converted, convert_cpu, next_t = 0, 0.0, 0.0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        for frame in decoder.frames(container, stream):
            if float(frame.time or 0.0) >= next_t - 0.5 / 25:
                next_t += 1.0 / rate
                t0 = _cpu()
                convert, _size = decoder.picture(frame)
                convert()
                converted += 1
                convert_cpu += _cpu() - t0
    # Decoder.decode_seconds is the decode thread's CPU (one FFmpeg thread: all of it).
    return (decoder.status.frames_decoded, converted, decoder.status.decode_seconds,
            convert_cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--gop", type=int, default=25, help="frames between keyframes")
    parser.add_argument("--rate", type=float, default=1.0, help="counts per second")
    parser.add_argument("--max-side", type=int, default=768,
                        help="the model's longer side (the bundled model's serving size)")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    clip = hd_clip(args.seconds, gop=args.gop)
    with av.open(str(clip)) as container:
        duration = float(container.duration or 0) / 1e6 or args.seconds
    rows = []
    for name, run in (
        ("before: decode all, full RGB, resize", lambda: run_before(clip, args.rate,
                                                                    args.max_side)),
        ("full decode, scaled convert", lambda: run_decoder(clip, args.rate, args.max_side,
                                                            False)),
        ("keyframes only, scaled convert", lambda: run_decoder(clip, args.rate,
                                                               args.max_side, True)),
    ):
        best = None
        for _ in range(args.rounds):
            result = run()
            if best is None or result[2] + result[3] < best[2] + best[3]:
                best = result
        assert best is not None
        rows.append((name, *best))
    load = os.getloadavg()
    print(f"1080p25 H.264 clip, GOP {args.gop}, {duration:.0f} s; {args.rate:g} count/s, "
          f"model side {args.max_side}; best of {args.rounds}; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({time.strftime('%Y-%m-%d %H:%M')})")
    print()
    print("| path | frames decoded | decode CPU ms/frame | convert CPU ms/frame "
          "| % of a core per camera |")
    print("|---|---:|---:|---:|---:|")
    for name, decoded, converted, dcpu, ccpu in rows:
        print(f"| {name} | {decoded} | {1e3 * dcpu / max(1, decoded):.1f} | "
              f"{1e3 * ccpu / max(1, converted):.1f} | {100 * (dcpu + ccpu) / duration:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
