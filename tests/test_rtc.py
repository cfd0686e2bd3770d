"""WebRTC publish/view end to end, with real aiortc peers on 127.0.0.1 (no mocks).

The real pipeline is written elsewhere; here a ten-line loop stands in for it: it reads the
WebRtcSource, runs the brightness ONNX model and hands Results to the stream's ViewerSink.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import threading
import time

import numpy as np
import psutil
import pytest
from aiortc import RTCPeerConnection

from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Frame, Result
from crowdcount.streamer.rtc import MAX_SDP_BYTES, OfferError, PeerManager, UnknownStream
from crowdcount.streamer.sinks.viewer import ViewerRegistry, ViewerSink, live_track_count
from crowdcount.streamer.sources.base import SourceEnded
from crowdcount.streamer.sources.webrtc import WebRtcSource, live_source_count
from tests.fixtures.rtc import RtcClient, make_client

FPS = 20.0


async def fake_pipeline(source: WebRtcSource, sink: ViewerSink, runtime: Runtime) -> None:
    while True:
        try:
            frame = await source.recv()
        except SourceEnded:
            return
        density = (await asyncio.to_thread(runtime.predict, [frame.image]))[0]
        sink.on_result(Result(frame, density, float(density.sum()), time.time()))


class Harness:
    """A PeerManager whose published cameras are fed through ``fake_pipeline``."""

    def __init__(self, runtime: Runtime | None, **kwargs: object) -> None:
        self.viewers = ViewerRegistry(fps=FPS)
        self.runtime = runtime
        self.sources: list[WebRtcSource] = []
        self.pipelines: list[asyncio.Task[None]] = []
        self.closed_sources: list[str] = []
        self.manager = PeerManager(
            self.viewers, self.on_source, on_source_closed=self.on_source_closed,
            **kwargs,  # type: ignore[arg-type]
        )

    def on_source(self, source: WebRtcSource) -> None:
        self.sources.append(source)
        if self.runtime is not None:
            sink = self.viewers.sink(source.stream_id)
            self.pipelines.append(asyncio.create_task(fake_pipeline(source, sink, self.runtime)))

    def on_source_closed(self, source: WebRtcSource) -> None:
        """Forget the source, as the app would unregister the stream."""
        self.sources.remove(source)
        self.closed_sources.append(source.stream_id)

    async def connect(self, client: RtcClient, mode: str, stream_id: str | None = None) -> dict:
        answer = await self.manager.handle_offer(
            client.offer["sdp"], client.offer["type"], mode, stream_id
        )
        await client.accept(answer)
        return answer

    async def close(self) -> None:
        await self.manager.close()
        await asyncio.gather(*self.pipelines, return_exceptions=True)
        self.pipelines = [t for t in self.pipelines if not t.done()]


@pytest.fixture
async def harness(runtime):
    h = Harness(runtime)
    yield h
    await h.close()


def _rate(frames: list) -> float:
    if len(frames) < 2:
        return 0.0
    return (len(frames) - 1) / (frames[-1].at - frames[0].at)


# -- (a) publish -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(640, 480), (320, 240)])
async def test_publish_returns_annotated_frames_at_sent_size(harness: Harness, size) -> None:
    w, h = size
    client = await make_client("publish", size=size, fps=30, level=160)
    try:
        t0 = time.monotonic()
        answer = await harness.connect(client, "publish")
        assert answer["stream_id"].startswith("webrtc-")
        assert harness.manager.peer_count == 1 and len(harness.sources) == 1
        sink = harness.viewers.get(answer["stream_id"])
        assert sink is not None

        # Annotated frames: a uniform 0.63 people per cell paints the whole frame Jet-yellow.
        def annotated(f) -> bool:
            return f.mean > 90

        first = await client.wait_frames(1, timeout=20, where=annotated)
        t_first = first[0].at - t0
        frames = await client.wait_frames(30, timeout=20, where=annotated)
        assert {(f.width, f.height) for f in frames} == {(w, h)}
        image = client.last_image
        assert image is not None and image.shape == (h, w, 3)
        red, blue = image[h // 2 :, :, 0].mean(), image[h // 2 :, :, 2].mean()
        assert red - blue > 30, (red, blue)  # heatmap present, not the raw grey camera

        pts = [f.pts for f in client.frames]
        assert all(b > a for a, b in itertools.pairwise(pts)), "pts not increasing"
        source = harness.sources[0]
        assert source.frame_size == (w, h)
        assert sink.renders <= sink.results_in  # never more than once per result
        expected = 160 / 255 * (w // 8) * (-(-h // 32) * 32 // 8)
        assert sink._result is not None
        assert sink._result.count == pytest.approx(expected, rel=0.1)
        rate = _rate(frames[-20:])
        print(
            f"\n{w}x{h}: first annotated frame after {t_first:.2f}s, received {rate:.1f} fps "
            f"(server pacing {FPS}), camera in {source.status.fps_in:.1f} fps, "
            f"results {sink.results_in}, renders {sink.renders}, dropped {source.status.dropped}"
        )  # the rate is benchmarks/bench_streams.py's business, not a test's
    finally:
        await client.close()


async def test_publish_dark_bright_flips_reach_the_client(harness: Harness) -> None:
    """Camera flips between black and white: every flip comes back to the client annotated
    (the latency is printed; benchmarks/bench_streams.py measures it properly)."""
    client = await make_client("publish", size=(640, 480), fps=30, level=0)
    try:
        await harness.connect(client, "publish")
        await client.wait_frames(10, timeout=20)
        lat = []
        for level in (255, 0, 255, 0, 255, 0):
            assert client.camera is not None
            n = len(client.frames)
            client.camera.level = level
            t = time.monotonic()
            bright = level == 255

            hits = await client.wait_frames(
                1, timeout=10, since=n, where=lambda f, b=bright: (f.mean > 120) == b
            )
            lat.append(hits[0].at - t)
            await asyncio.sleep(0.3)
        print(f"\ncamera->annotated->client latency ms: {[round(x * 1000) for x in lat]}"
              f" median {1000 * float(np.median(lat)):.0f}")
        assert len(lat) == 6
    finally:
        await client.close()


async def test_publish_with_requested_stream_id_and_duplicate(harness: Harness) -> None:
    a = await make_client("publish", size=(320, 240))
    b = await make_client("publish", size=(320, 240))
    try:
        answer = await harness.connect(a, "publish", "door-1")
        assert answer["stream_id"] == "door-1"
        with pytest.raises(OfferError, match="already in use"):
            await harness.connect(b, "publish", "door-1")
        assert harness.manager.peer_count == 1
    finally:
        await a.close()
        await b.close()


async def test_publish_offer_with_audio_leaves_audio_inactive(harness: Harness) -> None:
    """Browsers offer their microphone too: it must be declined, not decoded into a queue
    nobody reads."""
    client = await make_client("publish", size=(320, 240), audio=True)
    try:
        answer = await harness.connect(client, "publish")
        assert "m=audio" in answer["sdp"]
        await client.wait_frames(5, timeout=20)
        (peer,) = harness.manager.peers()
        kinds = {t.kind: t.currentDirection for t in peer.pc.getTransceivers()}
        assert kinds == {"audio": "inactive", "video": "sendrecv"}
    finally:
        await client.close()


# -- (b) viewers -------------------------------------------------------------------------------


async def _feed(sink: ViewerSink, size: tuple[int, int], stop: asyncio.Event) -> None:
    """Results at 10 Hz with a moving hot spot: a pipeline without a camera."""
    w, h = size
    n = 0
    while not stop.is_set():
        image = np.full((h, w, 3), 90, np.uint8)
        density = np.zeros((h // 8, w // 8), np.float32)
        density[(n * 3) % (h // 8), (n * 5) % (w // 8)] = 4.0
        sink.on_result(Result(Frame(sink.stream_id, n, time.time(), image), density, 4.0,
                              time.time()))
        n += 1
        await asyncio.sleep(0.1)


async def test_two_viewers_of_one_stream() -> None:
    h = Harness(None)
    sink = h.viewers.sink("lobby")
    stop = asyncio.Event()
    feeder = asyncio.create_task(_feed(sink, (640, 480), stop))
    clients = [await make_client("view"), await make_client("view")]
    try:
        for c in clients:
            await h.connect(c, "view", "lobby")
        assert h.manager.peer_count == 2 and sink.track_count == 2
        for c in clients:
            frames = await c.wait_frames(20, timeout=20)
            assert {(f.width, f.height) for f in frames} == {(640, 480)}
        rates = [_rate(c.frames[-15:]) for c in clients]
        print(f"\nviewer rates {[round(r, 1) for r in rates]} fps; results {sink.results_in}, "
              f"renders {sink.renders}")
        # Two viewers, one render per result at most.
        assert sink.renders <= sink.results_in
        await h.manager.close_peer(h.manager.peers()[0].id)
        assert sink.track_count == 1 and h.manager.peer_count == 1
    finally:
        stop.set()
        await feeder
        for c in clients:
            await c.close()
        await h.close()
    assert sink.track_count == 0


async def test_viewer_gets_placeholder_before_results_and_ends_with_stream() -> None:
    h = Harness(None)
    sink = h.viewers.sink("empty")
    sink.set_size((320, 240))
    client = await make_client("view")
    try:
        await h.connect(client, "view", "empty")
        frames = await client.wait_frames(5, timeout=20)
        assert {(f.width, f.height) for f in frames} == {(320, 240)}
        assert max(f.mean for f in frames) < 60  # dark "connecting..." frame
        # The stream goes away: its viewers' peers are closed.
        h.viewers.remove("empty")
        for _ in range(50):
            if h.manager.peer_count == 0:
                break
            await asyncio.sleep(0.1)
        assert h.manager.peer_count == 0
        assert h.manager.closed_reasons.get("stream ended") == 1
    finally:
        await client.close()
        await h.close()


async def test_a_camera_counted_once_a_second_keeps_its_viewers_at_the_track_rate() -> None:
    """At one count a second the track still sends FPS pictures a second: the newest
    annotated frame again (drawn once), at the size it was converted to, not the camera's."""
    sink = ViewerSink("cam")
    image = np.full((192, 320, 3), 90, np.uint8)  # a 640x360 camera at the model's size
    frame = Frame("cam", 0, time.time(), image, source_size=(640, 360))
    sink.on_result(Result(frame, np.zeros((24, 40), np.float32), 0.0, time.time()))
    assert sink.size == (320, 192)
    track = sink.track()
    try:
        t0 = time.monotonic()
        frames = [await track.recv() for _ in range(10)]
        elapsed = time.monotonic() - t0
    finally:
        track.stop()
    assert {(f.width, f.height) for f in frames} == {(320, 192)}
    assert sink.renders == 1  # one result, drawn once, repeated
    assert [f.pts for f in frames] == sorted({f.pts for f in frames})  # a steady clock
    assert elapsed >= 9 / FPS * 0.9  # paced at the track's rate, not the count rate


async def test_view_unknown_stream() -> None:
    h = Harness(None)
    client = await make_client("view")
    try:
        with pytest.raises(UnknownStream, match="nope"):
            await h.connect(client, "view", "nope")
        assert h.manager.peer_count == 0
    finally:
        await client.close()
        await h.close()


# -- (c) malformed offers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_offers() -> dict[str, str]:
    async def build() -> dict[str, str]:
        out = {}
        for mode in ("publish", "view"):
            c = await make_client(mode)
            out[mode] = c.offer["sdp"]
            await c.close()
        return out

    return asyncio.run(build())


def _strip_video(sdp: str) -> str:
    return sdp.replace("m=video", "m=audio")


@pytest.mark.parametrize(
    ("case", "mode", "match"),
    [
        ("not-a-string", "publish", "sdp must be a string, got bytes"),
        ("none", "publish", "sdp must be a string, got NoneType"),
        ("empty", "publish", "sdp is empty"),
        ("no-v0", "publish", "sdp must start with 'v=0'"),
        ("no-video", "publish", "sdp has no video m-line"),
        ("oversized", "publish", f"more than the {MAX_SDP_BYTES} allowed"),
        ("answer-type", "publish", "type must be 'offer', got 'answer'"),
        ("bad-mode", "watch", "mode must be one of publish, view"),
        ("recvonly-publish", "publish", "publish offer's video m-line must send"),
        ("view-no-stream", "view", "view mode needs a stream_id"),
        ("bad-stream-id", "publish", "stream_id must match"),
        ("garbage-after-v0", "publish", "sdp rejected"),
        ("no-common-codec", "publish", "sdp rejected"),
    ],
)
async def test_malformed_offers(good_offers, case: str, mode: str, match: str) -> None:
    pub, view = good_offers["publish"], good_offers["view"]
    sdp: object = pub
    type_ = "offer"
    stream_id = None
    if case == "not-a-string":
        sdp = pub.encode()
    elif case == "none":
        sdp = None
    elif case == "empty":
        sdp = "  \r\n"
    elif case == "no-v0":
        sdp = pub.replace("v=0", "v=1", 1)
    elif case == "no-video":
        sdp = _strip_video(pub)
    elif case == "oversized":
        sdp = pub + "a=x-pad:" + "x" * MAX_SDP_BYTES + "\r\n"
    elif case == "answer-type":
        type_ = "answer"
    elif case == "recvonly-publish":
        sdp = view
    elif case == "bad-stream-id":
        stream_id = "../etc/passwd"
    elif case == "garbage-after-v0":
        sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\nthis is not sdp\r\n"
    elif case == "no-common-codec":
        import re

        sdp = re.sub(r"^a=rtpmap:(\d+) (VP8|H264|rtx)/", r"a=rtpmap:\1 XYZ/", pub,
                     flags=re.MULTILINE)
    h = Harness(None)
    try:
        with pytest.raises(OfferError, match=match) as info:
            await h.manager.handle_offer(sdp, type_, mode, stream_id)
        print(f"\n{case}: {info.value}")
        assert h.manager.peer_count == 0 and len(h.viewers) == 0
    finally:
        await h.close()


# -- (d) churn ---------------------------------------------------------------------------------


def _live_pcs() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


def _trimmed_rss(proc: psutil.Process) -> int:
    """RSS after handing freed heap back to the OS: glibc keeps per-thread arenas of the
    codec threads, so raw RSS swings by ~100 MiB without any leak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return proc.memory_info().rss


@pytest.mark.slow
async def test_connect_close_churn_is_flat(runtime) -> None:
    proc = psutil.Process()
    h = Harness(runtime)
    cycles, warmup = 24, 4
    samples: list[tuple[int, int, float]] = []
    t_start = time.monotonic()
    try:
        for i in range(cycles + warmup):
            if i == warmup:
                base_rss = proc.memory_info().rss
                base = (threading.active_count(), _trimmed_rss(proc), len(gc.get_objects()))
            mode_view = i % 3 == 2
            if mode_view:
                sink = h.viewers.sink("churn-view")
                sink.on_result(Result(Frame("churn-view", i, time.time(),
                                            np.full((240, 320, 3), 120, np.uint8)),
                                      np.ones((30, 40), np.float32), 1200.0, time.time()))
                client = await make_client("view")
                await h.connect(client, "view", "churn-view")
            else:
                client = await make_client("publish", size=(320, 240), fps=30)
                await h.connect(client, "publish")
            await client.wait_frames(3, timeout=20)
            if i % 2:
                await client.close()  # the client hangs up; the server must notice
                for _ in range(100):
                    if h.manager.peer_count == 0:
                        break
                    await asyncio.sleep(0.05)
            else:
                await h.manager.close_peer(h.manager.peers()[0].id)
                await client.close()
            assert h.manager.peer_count == 0, h.manager.stats()
            assert h.manager.track_count == 0
            del client
            if i >= warmup:
                samples.append((threading.active_count(), proc.memory_info().rss,
                                time.monotonic()))
        await asyncio.sleep(0.5)
        await asyncio.gather(*h.pipelines, return_exceptions=True)
        raw_rss = proc.memory_info().rss
        threads, rss, objects = threading.active_count(), _trimmed_rss(proc), len(gc.get_objects())
        pcs = _live_pcs()
        elapsed = time.monotonic() - t_start
        print(
            f"\nchurn: {cycles} cycles after {warmup} warm-up in {elapsed:.1f}s; threads "
            f"{base[0]} -> {threads} (max {max(s[0] for s in samples)}); RSS raw "
            f"{base_rss / 2**20:.1f} -> {raw_rss / 2**20:.1f} MiB, trimmed "
            f"{base[1] / 2**20:.1f} -> {rss / 2**20:.1f} MiB (+{(rss - base[1]) / 2**20:.1f}); "
            f"gc objects {base[2]} -> {objects}; live pcs {pcs}, tracks {live_track_count()}, "
            f"sources {live_source_count()}; closes {h.manager.closed_reasons}"
        )
        assert threads <= base[0] + 2
        assert live_track_count() == 0 and live_source_count() == 0
        assert pcs == 0 and h.sources == [] and len(h.viewers) == 1  # only churn-view
        assert objects - base[2] < 200
        assert rss - base[1] < 40 * 2**20
    finally:
        await h.close()


# -- (e) vanished peers ------------------------------------------------------------------------


def _cut_network(client: RtcClient) -> None:
    """The client's UDP sockets vanish: no DTLS close_notify, no more STUN/RTCP, like a
    browser tab killed outright or a laptop leaving the network."""
    for transceiver in client.pc.getTransceivers():
        ice = transceiver.sender.transport.transport
        for protocol in list(ice._connection._protocols):
            if protocol.transport is not None:
                protocol.transport.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["publish", "view"])
async def test_vanished_peer_is_cleaned_up(runtime, mode: str) -> None:
    h = Harness(runtime, idle_timeout=3.0, check_interval=0.5)
    stop = asyncio.Event()
    feeder = None
    if mode == "view":
        feeder = asyncio.create_task(_feed(h.viewers.sink("cam"), (320, 240), stop))
    client = await make_client(mode, size=(320, 240))
    try:
        await h.connect(client, mode, "cam")
        await client.wait_frames(5, timeout=20)
        # Alive and well past the idle timeout: camera frames (publish) or RTCP receiver
        # reports (view) count as activity.
        await asyncio.sleep(4.5)
        assert h.manager.peer_count == 1, h.manager.closed_reasons
        n = len(client.frames)
        _cut_network(client)
        t = time.monotonic()
        while h.manager.peer_count and time.monotonic() - t < 20:
            await asyncio.sleep(0.1)
        took = time.monotonic() - t
        print(f"\nvanished {mode} peer freed after {took:.1f}s (idle timeout 3 s): "
              f"{h.manager.closed_reasons}; {n} frames received before the cut")
        assert h.manager.peer_count == 0 and h.manager.track_count == 0
        assert live_source_count() == 0
    finally:
        stop.set()
        if feeder is not None:
            await feeder
        with contextlib.suppress(Exception):
            await client.close()
        await h.close()


async def test_peer_that_never_connects_is_closed() -> None:
    h = Harness(None, connect_timeout=1.5, check_interval=0.25)
    client = await make_client("publish", size=(320, 240))
    try:
        await h.manager.handle_offer(client.offer["sdp"], "offer", "publish")  # never accepted
        assert h.manager.peer_count == 1
        for _ in range(80):
            if h.manager.peer_count == 0:
                break
            await asyncio.sleep(0.1)
        assert h.manager.peer_count == 0, h.manager.stats()
        assert live_source_count() == 0
    finally:
        await client.close()
        await h.close()


# -- wiring with the real pipeline --------------------------------------------------------------


async def test_wiring_with_pipeline(runtime) -> None:
    """The app's wiring: published cameras become pipeline streams, and the viewer registry
    (one pipeline sink) hands their results to their viewers; hanging up removes the
    stream."""
    from crowdcount.streamer.pipeline import Pipeline

    viewers = ViewerRegistry(fps=FPS)
    async with Pipeline(runtime) as pipeline:
        pipeline.add_sink(viewers)

        async def on_source(source: WebRtcSource) -> None:
            await pipeline.add_stream(source, fps_limit=15)
            viewers.sink(source.stream_id)

        async def on_source_closed(source: WebRtcSource) -> None:
            with contextlib.suppress(KeyError):
                await pipeline.remove_stream(source.stream_id)

        manager = PeerManager(viewers, on_source, on_source_closed=on_source_closed)
        cam = await make_client("publish", size=(640, 480), level=160)
        viewer = await make_client("view")
        try:
            answer = await manager.handle_offer(cam.offer["sdp"], "offer", "publish", "gate")
            await cam.accept(answer)
            assert "gate" in pipeline.streams
            await viewer.accept(await manager.handle_offer(viewer.offer["sdp"], "offer",
                                                           "view", "gate"))
            for c in (cam, viewer):
                frames = await c.wait_frames(10, timeout=20, where=lambda f: f.mean > 90)
                assert {(f.width, f.height) for f in frames} == {(640, 480)}
            stats = pipeline.stats()
            print(f"\npipeline wiring: latency p50 {stats.latency_ms_p50} ms, "
                  f"status {pipeline.streams['gate'].status.to_dict()}")
            await cam.close()
            for _ in range(100):
                if manager.peer_count == 0:
                    break
                await asyncio.sleep(0.05)
            assert manager.peer_count == 0, manager.stats()
            assert "gate" not in pipeline.streams
            assert manager.closed_reasons == {"peer hung up": 1, "stream ended": 1}
        finally:
            await viewer.close()
            await cam.close()
            await manager.close()
