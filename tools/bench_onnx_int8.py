"""ONNX files of one run, int8 (int8, uint8 or symmetric int8 activations) and float32, NHWC or NCHW input, float32
or uint8 input: the integer kernels ONNX Runtime fuses, accuracy, latency.

    python tools/bench_onnx_int8.py RUN --data ../shared/data/cifar10-jpg.tar.gz [--rounds 5] [--variants ...]

Writes RUN's model as `edgecnn export --format onnx` does (tf2onnx, the same 500 calibration images,
static QDQ, int8 weights per channel) once per variant. The default three differ in their activations:
int8 (the old file), uint8 (what `--onnx-target cpu` exports) and symmetric int8 (zero point 0, what
`--onnx-target tensorrt` exports; TensorRT itself is not run here). A variant name may add `-7bit` (weights
in -64..64, what `--onnx-target cpu-no-vnni` exports with uint8), `-nchw` (`--onnx-layout nchw`) and `-u8in`
(`--onnx-input uint8`), in that order; `float32` is the float file. For each file it
counts the nodes of the graph ONNX Runtime runs after its optimizations (how many convolutions became
QLinearConv, how many stayed float), says whether TensorRT could build it as int8, scores the whole test
split, and times batch-1 inference on one thread; the files are timed in turn, the order rotating round
after round, and the median of each round's median is reported. Prints a markdown table.
Each file runs as edgecnn runs it (`session.x64quantprecision=1` on x86 CPUs without VNNI only).
`--default-kernels` adds a row per int8 file run without that option, ONNX Runtime's default: on an x86 CPU
without VNNI its int8 kernels saturate (README, "int8 ONNX on x86 CPUs without VNNI"); `--exact-kernels` one
with it on any CPU (on one with VNNI it only costs speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACTIVATIONS = ("int8", "uint8", "int8-symmetric")
DEFAULT_VARIANTS = ",".join(ACTIVATIONS)


def parse_variant(name: str) -> tuple[str, str, str, int]:
    """"uint8-7bit-nchw-u8in" -> ("uint8", "nchw", "uint8", 7): activations (or float32), layout, input type,
    weight bits."""
    base, layout, inp, bits = name, "nhwc", "float32", 8
    if base.endswith("-u8in"):
        base, inp = base[:-len("-u8in")], "uint8"
    if base.endswith("-nchw"):
        base, layout = base[:-len("-nchw")], "nchw"
    if base.endswith("-7bit"):
        base, bits = base[:-len("-7bit")], 7
    if base not in (*ACTIVATIONS, "float32") or (base == "float32" and bits == 7):
        raise ValueError(name)
    return base, layout, inp, bits
# ops ONNX Runtime runs in float between DequantizeLinear and QuantizeLinear
FLOAT_OPS = ("Conv", "Add", "MaxPool", "Mul", "Relu")


def optimized_ops(path: Path, tmp: Path) -> Counter:
    """Node types of the graph ONNX Runtime runs (CPU, all optimizations)."""
    import onnx
    import onnxruntime as ort

    from edgecnn.runners.onnx import session_options

    opts = session_options()
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory (its model.keras and config.json)")
    ap.add_argument("--data", help="data source (default: the run's own)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, the files in rotating order")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per file per round")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="comma-separated: int8, uint8, int8-symmetric or float32, each optionally followed by -7bit, "
                         f"-nchw and -u8in (default {DEFAULT_VARIANTS})")
    ap.add_argument("--default-kernels", action="store_true",
                    help="also run each int8 file with ONNX Runtime's default kernels (no session.x64quantprecision)")
    ap.add_argument("--exact-kernels", action="store_true",
                    help="also run each int8 file with session.x64quantprecision=1 whatever the CPU")
    a = ap.parse_args()
    if a.rounds < 1 or a.seconds <= 0:
        ap.error("--rounds must be at least 1 and --seconds positive")
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    try:
        variants = {name: parse_variant(name) for name in names}
    except ValueError as exc:
        ap.error(f"--variants: unknown variant {exc}")
    if not variants:
        ap.error("--variants names no variant")
    import onnx

    from edgecnn import model as model_mod
    from edgecnn import runs
    from edgecnn.benchmark_worker import timed
    from edgecnn.errors import EdgeCNNError
    from edgecnn.evaluate import load_run_data
    from edgecnn.export import onnx as onx
    from edgecnn.export import tflite as tfl
    from edgecnn.runners.onnx import OnnxRunner

    run_dir = Path(a.run)
    try:
        core = model_mod.load_keras(run_dir / "model.keras")
        ds = load_run_data(run_dir, a.data)
    except EdgeCNNError as exc:
        raise SystemExit(f"error: {exc}") from None
    calib = tfl.calibration_images(ds.x_train, 500, runs.config(run_dir).get("seed", 0))
    deploy = model_mod.fold_pooled_batchnorm(core)
    float_protos = {layout: onx.convert_float(deploy, layout=layout) for layout in {v[1] for v in variants.values()}}
    labels = np.asarray(ds.y_test)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="edgecnn-bench-onnx-") as d:
        tmp = Path(d)
        runners = {}
        for name, (act, layout, inp, bits) in variants.items():
            path = tmp / f"{name}.onnx"
            proto = onnx.ModelProto()
            proto.CopyFrom(float_protos[layout])
            if act != "float32":
                proto = onx.quantize_int8(proto, calib, activations=act, bits=bits)
            if inp == "uint8":
                onx.take_uint8_input(proto)
            onx.set_metadata(proto, runs.labels(run_dir), act)  # the layout the runner reads
            onnx.save(proto, str(path))
            ops = optimized_ops(path, tmp)
            problems = onx.tensorrt_int8_problems(proto)
            trt = "-" if problems is None else "yes" if not problems else "no"
            kernels = [None] + ([False] if a.default_kernels and act != "float32" else []) + \
                ([True] if a.exact_kernels and act != "float32" else [])
            for precise in kernels:  # None: as edgecnn runs it
                row = name + {None: "", False: ", default kernels", True: ", exact kernels"}[precise]
                runner = OnnxRunner(path, "cpu", threads=1, precise_int8=precise)
                probs = np.concatenate([runner.predict_batch(ds.x_test[i:i + 256])
                                        for i in range(0, len(ds.x_test), 256)])
                rows[row] = {"ops": ops, "acc": float((probs.argmax(1) == labels).mean()), "ms": [],
                             "kb": path.stat().st_size / 1024, "trt": trt}
                runners[row] = runner
        one = ds.x_test[:1]
        for runner in runners.values():
            timed(lambda: runner.predict_batch(one), 50, 1.0)  # warm-up
        order = list(runners)
        for r in range(a.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                times = timed(lambda: runners[name].predict_batch(one), 100, a.seconds)
                rows[name]["ms"].append(statistics.median(times) * 1e3)
    print(f"`{run_dir.name}`: {len(labels):,} test images; batch 1, one thread, {a.rounds} rotating rounds of "
          f"{a.seconds:g} s per file (median of the rounds' medians).\n")
    print("| variant | TensorRT int8 | QLinearConv | float Conv | other float ops | Transpose | test accuracy | "
          "p50 ms | size KB |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        ops = row["ops"]
        other = ", ".join(f"{ops[o]} {o}" for o in FLOAT_OPS[1:] if ops[o]) or "none"
        print(f"| {name} | {row['trt']} | {ops['QLinearConv']} | {ops['Conv']} | {other} | {ops['Transpose']} | "
              f"{row['acc'] * 100:.2f}% | {statistics.median(row['ms']):.3f} | {row['kb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
