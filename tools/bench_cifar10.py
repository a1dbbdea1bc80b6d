"""CIFAR-10 end to end: train, export every variant, benchmark, QAT, pruning; writes docs/benchmarks.md.

    python tools/bench_cifar10.py --data ../shared/data/cifar10-jpg.tar.gz [--runs-dir /tmp/cifar-runs]

Every step is the real CLI in a child process, timed from outside. A step whose run already
exists is reused (delete the run folder to redo it). Takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--arch", "regularized", "--epochs", "15", "--batch-size", "128", "--lr", "3e-3"]


def edgecnn(*args: str, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ edgecnn {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "edgecnn", *args], stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc not in (0, 1):  # 1: a gate or a verification said no; still worth reporting
        sys.exit(f"edgecnn {' '.join(args)} failed with exit code {rc}; see {log}")
    return seconds


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def cpu() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 source (folder, archive or cifar10)")
    ap.add_argument("--runs-dir", default="cifar-runs")
    ap.add_argument("--name", default="cifar-regularized")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    a = ap.parse_args()
    runs = Path(a.runs_dir)
    run = runs / a.name
    log = runs / "bench_cifar10.log"
    runs.mkdir(parents=True, exist_ok=True)
    seconds = {}
    common = ["--runs-dir", str(runs)]
    if not (run / "model.keras").is_file():
        seconds["train"] = edgecnn("train", "--data", a.data, *TRAIN_ARGS, "--name", a.name, *common, log=log)
    seconds["export"] = edgecnn("export", a.name, "--format", "all", *common, log=log)
    seconds["benchmark"] = edgecnn("benchmark", a.name, *common, log=log)
    edgecnn("export", a.name, "--format", "tflite", "--quantize", "int8", "--micro", "--micro-samples", "10000",
            "--c-array", *common, log=log)
    qat, pruned = f"{a.name}-qat", f"{a.name}-pruned50"
    if not (runs / qat / "model.keras").is_file():
        seconds["qat"] = edgecnn("finetune", a.name, "--qat", "--epochs", "3", *common, log=log)
    edgecnn("export", qat, "--format", "all", *common, log=log)
    edgecnn("benchmark", qat, "--formats", "tflite-int8,onnx-int8", *common, log=log)
    if not (runs / pruned / "model.keras").is_file():
        seconds["prune"] = edgecnn("finetune", a.name, "--prune", "0.5", "--epochs", "3", *common, log=log)
    edgecnn("export", pruned, "--format", "tflite", *common, log=log)
    edgecnn("benchmark", pruned, "--formats", "tflite-float32,tflite-int8", *common, log=log)
    write_doc(Path(a.out), runs, a.name, a.data, seconds)
    print(f"wrote {a.out}")
    return 0


def write_doc(out: Path, runs: Path, name: str, data: str, seconds: dict) -> None:
    from edgecnn.benchmark import table_markdown

    base = runs / name
    m = load(base / "metrics.json")
    bench = load(base / "benchmark.json")
    exports = load(base / "exports" / "export_report.json")
    micro = (exports or {}).get("micro")
    lines = ["# CIFAR-10 (JPEG) benchmarks", "",
             f"Machine: {cpu()}, {bench['meta']['machine']['cores'] if bench else '?'} cores, no GPU. "
             f"Reproduce with `python tools/bench_cifar10.py --data {data}`.", "",
             "## Training", "",
             f"`edgecnn train --data {data} {' '.join(TRAIN_ARGS)}`: test accuracy **{m['test_accuracy'] * 100:.2f}%** "
             f"(loss {m['test_loss']:.3f}), {m['parameters']:,} parameters, {m['macs'] / 1e6:.1f} M MACs per image, "
             f"{m['epochs_run']} epochs in {m['train_seconds'] / 60:.1f} min ({m['seconds_per_epoch']:.0f} s per epoch; "
             "best epoch " + str(m["best_epoch"]) + ").", ""]
    if exports:
        lines += ["## Exports", "", "| file | size KB | gzip KB | verification agreement | max abs dp | seconds |",
                  "|---|---:|---:|---:|---:|---:|"]
        for e in exports["exports"]:
            v = e.get("verify") or {}
            lines.append(f"| {e['file']} | {e.get('size_bytes', 0) / 1024:.0f} | {e.get('gzip_bytes', 0) / 1024:.0f} "
                         f"| {v.get('agreement', 0) * 100:.2f}% | {v.get('max_abs_diff', 0):.2e} "
                         f"| {e.get('convert_seconds', 0):.1f} |")
        lines.append("")
    if bench:
        lines += ["## Benchmark", "", f"`edgecnn benchmark` on the {bench['meta']['images']:,} test images, "
                  f"{bench['meta']['threads']} thread; the whole command took "
                  f"{seconds.get('benchmark', float('nan')):.0f} s (export --format all: "
                  f"{seconds.get('export', float('nan')):.0f} s).", "", table_markdown(bench["rows"])]
    if micro:
        lines += ["## Microcontroller (TFLite Micro)", "",
                  f"`edgecnn export --format tflite --quantize int8 --micro --micro-samples 10000 --c-array`: every op "
                  f"is supported by TFLite Micro; smallest tensor arena **{micro['arena_kb']} KB**, flash (model) "
                  f"**{micro['flash_kb']} KB**. On {micro['samples']:,} test images TFLite Micro scores "
                  f"{micro['accuracy'] * 100:.2f}% against LiteRT int8's {micro['litert_accuracy'] * 100:.2f}% "
                  f"(top-1 agreement {micro['agreement_with_litert'] * 100:.2f}%); the host runs the reference "
                  f"kernels at {micro['host_ms_per_image']:.1f} ms per image (not a device timing).", ""]
    rows = [("float32 (Keras)", m["test_accuracy"], None)]
    if bench:
        for r in bench["rows"]:
            if r["name"] == "tflite-int8" and r["status"] == "ok":
                rows.append(("PTQ int8 TFLite", r["accuracy"], r.get("size_bytes")))
    qb = load(runs / f"{name}-qat" / "benchmark.json")
    qm = load(runs / f"{name}-qat" / "metrics.json")
    if qb and qm:
        rows.append(("QAT float weights (Keras)", qm["test_accuracy"], None))
        for r in qb["rows"]:
            if r["name"] in ("tflite-int8", "onnx-int8") and r["status"] == "ok":
                rows.append((f"QAT int8 {r['format'].upper()}", r["accuracy"], r.get("size_bytes")))
    pb = load(runs / f"{name}-pruned50" / "benchmark.json")
    pm = load(runs / f"{name}-pruned50" / "metrics.json")
    pe = load(runs / f"{name}-pruned50" / "exports" / "export_report.json")
    if pb and pm:
        rows.append(("pruned 50% float (Keras)", pm["test_accuracy"], None))
        for r in pb["rows"]:
            if r["name"] == "tflite-int8" and r["status"] == "ok":
                rows.append(("pruned 50% PTQ int8 TFLite", r["accuracy"], r.get("size_bytes")))
    lines += ["## Quantization-aware training and pruning", "", "| model | test accuracy | size KB |", "|---|---:|---:|"]
    lines += [f"| {n} | {acc * 100:.2f}% | {'' if s is None else f'{s / 1024:.0f}'} |" for n, acc, s in rows]
    if pe and exports:
        gz = {e["file"]: e.get("gzip_bytes") for e in exports["exports"]}
        pgz = {e["file"]: e.get("gzip_bytes") for e in pe["exports"]}
        if gz.get("model_int8.tflite") and pgz.get("model_int8.tflite"):
            saving = 1 - pgz["model_int8.tflite"] / gz["model_int8.tflite"]
            lines += ["", f"gzip -9 of the int8 TFLite file: {gz['model_int8.tflite'] / 1024:.0f} KB unpruned, "
                      f"{pgz['model_int8.tflite'] / 1024:.0f} KB pruned to 50% ({saving * 100:.0f}% smaller). "
                      f"Achieved sparsity per layer: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                 pm["sparsity_per_layer"].items()) + "."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
