"""Inference speed of the bundled model per backend, side by side in one run (a benchmark,
not a test).

    python benchmarks/bench_model.py                       # ONNX Runtime and OpenVINO
    python benchmarks/bench_model.py --with-tf             # also TFLite and Keras
    python benchmarks/bench_model.py --video clip.mp4      # decoding beside inference

Table 1: median ms per frame and frames/s at 640x480 for batch 1 and 4, for each way of
running the same ``.onnx``: OpenVINO as the backend runs it (LATENCY hint), OpenVINO's
THROUGHPUT hint with as many parallel requests as it asks for (how that hint is meant to be
used), ONNX Runtime as the backend runs it (intra-op spinning off) and with ORT's default
spinning. ``*`` marks the serving default.

Table 2 (``--video``, default: the Mall test clip when ../shared is there): what inference
costs the decoders that share the CPU with it. One thread runs the model back to back (a
saturated service), another decodes a 640x480 H.264 file to RGB as fast as it can; both
rates are reported. Spinning inference threads take the CPU the decoders need;
``openvino-pinned`` shows OpenVINO with its threads pinned to cores (its own default, which
the backend turns off).

Machines are noisy: compare rows of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crowdcount.model.backends import default_backend, load_backend
from crowdcount.model.bundled import DEFAULT_KERAS, DEFAULT_ONNX

Call = Callable[[np.ndarray], object]


def timeit(call: Call, batch: np.ndarray, repeats: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(3):
        call(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ort_spinning(path: Path, threads: int | None) -> Call:
    """ONNX Runtime with its default options (idle intra-op threads spin)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def ov_throughput(path: Path, threads: int | None) -> Call:
    """OpenVINO's THROUGHPUT hint, used as meant: a batch is split into single frames that
    run as parallel requests (as many as the plugin recommends), one thread each."""
    import openvino as ov

    core = ov.Core()
    compiled: dict[tuple[int, int], tuple[ov.AsyncInferQueue, list[object]]] = {}

    def call(x: np.ndarray) -> object:
        key = (x.shape[1], x.shape[2])
        if key not in compiled:
            model = core.read_model(str(path))
            model.reshape({model.inputs[0]: ov.PartialShape([1, *key, 3])})
            config: dict[str, str | int] = {"PERFORMANCE_HINT": "THROUGHPUT"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            net = core.compile_model(model, "CPU", config)
            queue = ov.AsyncInferQueue(net, net.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            results: list[object] = []
            queue.set_callback(lambda request, _: results.append(request.get_output_tensor(0)))
            compiled[key] = (queue, results)
        queue, results = compiled[key]
        results.clear()
        for frame in (x[i : i + 1] for i in range(len(x))):
            queue.start_async({0: frame})
        queue.wait_all()
        return results

    return call


def ov_pinned(path: Path, threads: int | None) -> Call:
    """OpenVINO as the backend runs it, but with its threads pinned to cores (its default)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape([1, 480, 640, 3])})
    config: dict[str, str | int | bool] = {"PERFORMANCE_HINT": "LATENCY",
                                           "ENABLE_CPU_PINNING": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: request.infer(x, share_inputs=True)


def decode_beside(call: Call | None, video: Path, seconds: float) -> tuple[float, float]:
    """(inferences/s, decoded frames/s) with the model running back to back beside a decoder
    (``call=None``: the decoder alone)."""
    import av

    x = np.random.default_rng(0).uniform(0, 255, (1, 480, 640, 3)).astype(np.float32)
    if call is not None:
        call(x)
    stop = threading.Event()
    inferred = decoded = 0

    def infer() -> None:
        nonlocal inferred
        while not stop.is_set():
            call(x)  # type: ignore[misc]
            inferred += 1

    def decode() -> None:
        nonlocal decoded
        while not stop.is_set():
            with av.open(str(video)) as container:
                for frame in container.decode(container.streams.video[0]):
                    frame.to_ndarray(format="rgb24")
                    decoded += 1
                    if stop.is_set():
                        return

    threads = [threading.Thread(target=decode)]
    if call is not None:
        threads.append(threading.Thread(target=infer))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return inferred / elapsed, decoded / elapsed


def default_video() -> Path:
    shared = os.environ.get("CROWD_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "videos" / "mall_test_1601-2000_10fps.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--keras", type=Path, default=DEFAULT_KERAS)
    parser.add_argument("--size", default="480x640", help="HxW")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--with-tf", action="store_true", help="also TFLite and Keras")
    parser.add_argument("--video", type=Path, default=default_video(),
                        help="H.264 file for the decoder table (skipped if missing)")
    parser.add_argument("--decode-seconds", type=float, default=6.0)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    default = default_backend()
    variants: list[tuple[str, Call]] = []
    if default == "openvino":
        variants.append(("openvino", load_backend(args.onnx, "openvino", args.threads).predict))
        variants.append(("openvino-throughput", ov_throughput(args.onnx, args.threads)))
    variants.append(("onnx", load_backend(args.onnx, "onnx", args.threads).predict))
    variants.append(("onnx-spinning", ort_spinning(args.onnx, args.threads)))
    print(f"{args.onnx.name} at {size[1]}x{size[0]}, threads {args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs; serving default: {default}", flush=True)
    rows: list[tuple[str, int, float]] = []

    def run(name: str, call: Call, batch_sizes: list[int]) -> None:
        for b in batch_sizes:
            x = rng.uniform(0, 255, (b, *size, 3)).astype(np.float32)
            rows.append((name, b, timeit(call, x, args.repeats) / b))

    for name, call in variants:
        run(name, call, batches)
    if args.with_tf:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from crowdcount.training.export import export_tflite

        with tempfile.TemporaryDirectory() as tmp:
            for quant in ("fp32", "int8"):
                path = export_tflite(args.keras, Path(tmp) / f"m_{quant}.tflite", size, quant)
                run(f"tflite-{quant}", load_backend(path, "tflite", args.threads).predict, [1])
        run("keras", load_backend(args.keras, "keras").predict, batches)

    print(f"\n{'backend':22s} {'batch':>5s} {'ms/frame':>9s} {'frames/s':>9s}")
    for name, b, sec in rows:
        mark = "*" if name == default and b == 1 else " "
        print(f"{name + mark:22s} {b:5d} {sec * 1e3:9.1f} {1 / sec:9.1f}")

    if not args.video.is_file():
        print(f"\n(no decoder table: {args.video} not found; pass --video)")
        return
    print(f"\ndecoding {args.video.name} to RGB beside back-to-back inference, "
          f"{args.decode_seconds:g} s each")
    print(f"{'inference':22s} {'inferences/s':>12s} {'decoded fps':>12s}")
    beside: list[tuple[str, Call | None]] = [("(none)", None)]
    beside += [(n, c) for n, c in variants if "throughput" not in n]
    if default == "openvino":
        beside.insert(2, ("openvino-pinned", ov_pinned(args.onnx, args.threads)))
    for name, call in beside:
        inf, dec = decode_beside(call, args.video, args.decode_seconds)
        print(f"{name:22s} {inf:12.1f} {dec:12.1f}", flush=True)


if __name__ == "__main__":
    main()
