"""Serve one pre-encoded H.264 MP4 as N RTSP cameras, without re-encoding (benchmark helper).

Run with Debian's ``/usr/bin/python3`` (``python3-gi`` does not load in the venv)::

    /usr/bin/python3 benchmarks/gst_cameras_server.py CLIP PORT N

Mounts ``rtsp://127.0.0.1:PORT/cam0`` ... ``camN-1``; prints ``READY`` once listening.

Why this shape (and not the test fixture's, which decodes and re-encodes one picture
stream): encoding N 1080p streams would take the CPU the benchmark measures. So the clip's
access units are read once into memory (``qtdemux ! h264parse``, SPS/PPS in front of every
keyframe), and each mount's media is ``appsrc ! rtph264pay``: the access units are pushed
in a loop with timestamps of our own (the pipeline's running time plus n frame durations),
so the server's clock paces them like a live camera, and the loop never seeks (seeking in a
shared media was racy, the fixture's notes say). Each camera starts at a different keyframe
of the clip, as real cameras are not in phase.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def read_access_units(clip: str) -> tuple[list[tuple[bytes, bool]], int, int]:
    """([(access unit, is keyframe)], fps numerator, fps denominator)."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{clip}" ! qtdemux ! h264parse config-interval=-1 '
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, bool]] = []
    num, den = 25, 1
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        if not units:
            caps = sample.get_caps().get_structure(0)
            ok, n, d = caps.get_fraction("framerate")
            if ok and n > 0 and d > 0:
                num, den = n, d
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            units.append((bytes(info.data), not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)))
            buf.unmap(info)
    pipeline.set_state(Gst.State.NULL)
    return units, num, den


class Camera:
    """One mount's pusher: the clip's access units in a loop, timestamped and paced."""

    def __init__(self, units: list[tuple[bytes, bool]], start: int, duration: int) -> None:
        self.units = units
        self.start = start
        self.duration = duration

    def configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_child_by_name("src")
        state = {"n": 0, "offset": None}

        def need_data(appsrc: Gst.Element, _length: int) -> None:
            if state["offset"] is None:
                clock = appsrc.get_clock()
                state["offset"] = (clock.get_time() - appsrc.get_base_time()
                                   if clock is not None else 0)
            n = state["n"]
            data, _key = self.units[(self.start + n) % len(self.units)]
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts = buf.dts = state["offset"] + n * self.duration
            buf.duration = self.duration
            state["n"] = n + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    clip, port, cameras = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    Gst.init(None)
    units, num, den = read_access_units(clip)
    keys = [i for i, (_, key) in enumerate(units) if key]
    if not keys:
        print(f"no keyframe in {clip}", file=sys.stderr)
        return 1
    duration = Gst.SECOND * den // num
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    mounts = server.get_mount_points()
    caps = f"video/x-h264,stream-format=byte-stream,alignment=au,framerate={num}/{den}"
    keep = []
    for i in range(cameras):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f'( appsrc name=src is-live=true format=time max-bytes=4000000 caps="{caps}" '
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        factory.set_shared(True)
        camera = Camera(units, keys[(i * 7) % len(keys)], duration)
        factory.connect("media-configure", camera.configure)
        keep.append(camera)
        mounts.add_factory(f"/cam{i}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    print("READY", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
