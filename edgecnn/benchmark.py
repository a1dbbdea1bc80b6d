"""Benchmark every export against the Keras original: accuracy statistics, latency, cost.

Each row (format x runtime x device) runs in its own child process, so one runtime's
memory or a crash never touches another row; nothing aborts the table.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn import device, runs
from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import sha256, write_json, write_text

DEVICES = ("cpu", "cuda", "all", "auto")
KEYS = ["name", "format", "variant", "runtime", "device", "status", "reason", "accuracy", "top5", "drop_pp",
        "agreement", "flips_bad", "flips_good", "mcnemar_p", "kl", "worst_class", "worst_class_delta_pp",
        "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "latency_ms_min",
        "throughput_ips", "cold_start_ms", "peak_rss_mb", "size_bytes", "sha256", "arena_kb", "flash_kb", "images",
        "threads", "tta",
        "providers", "note", "seconds", "cpu_steal_percent",
        "baseline_accuracy", "accuracy_change_pp", "size_change_bytes", "latency_change",
        "same_file_as_baseline"]
EXPORT_NAMES = ["tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx-float32", "onnx-int8",
                "tflite-micro"]
ALL_NAMES = ["keras", *EXPORT_NAMES]
MICRO_SAMPLES = 500  # TFLite Micro runs reference kernels one image at a time: a subset of the test split


@dataclass
class BenchmarkConfig:
    run: str | None = None
    data: str | None = None
    formats: str = "all"
    device: str = "cpu"
    threads: int = 1
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup_runs: int = 10
    warmup_seconds: float = 1.0
    runs: int = 100
    min_seconds: float = 1.0
    max_drop: float | None = None
    min_agreement: float | None = None
    max_size_kb: float | None = None  # file size of each export
    max_latency_ms: float | None = None  # batch-1 median of each export (not the TFLite Micro host row)
    max_arena_kb: float | None = None  # TFLite Micro tensor arena of the int8 TFLite file
    baseline: str | None = None  # an earlier benchmark.json: each row compared with its namesake there
    max_regression: float | None = None  # pp of accuracy a row may lose against the baseline
    baseline_doc: dict | None = field(default=None, init=False, repr=False)  # read once, by check()
    limit: int | None = None  # first N test images (quick looks); default: the whole test split
    row_timeout: float = 900.0
    runs_dir: str = "runs"
    json_path: str | None = None
    csv_path: str | None = None
    extra_rows: list = field(default_factory=list)

    def check(self) -> None:
        if self.device not in DEVICES:
            raise EdgeCNNError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads < 1:
            raise EdgeCNNError(f"--threads must be at least 1, got {self.threads}")
        if not self.batch_sizes or any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise EdgeCNNError(f"--batch-sizes must be integers in 1..4096, got {list(self.batch_sizes)}")
        if self.runs < 1 or self.warmup_runs < 0 or self.warmup_seconds < 0 or self.min_seconds < 0:
            raise EdgeCNNError("--runs must be >= 1 and --warmup >= 0")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise EdgeCNNError(f"--max-drop is in percentage points, 0..100, got {self.max_drop}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise EdgeCNNError(f"--min-agreement is a fraction, 0..1, got {self.min_agreement}")
        for opt, v in (("--max-size", self.max_size_kb), ("--max-latency", self.max_latency_ms),
                       ("--max-arena", self.max_arena_kb)):
            if v is not None and not v > 0:
                raise EdgeCNNError(f"{opt} must be positive, got {v}")
        if self.max_arena_kb is not None and not _has_micro():
            raise EdgeCNNError("--max-arena needs the tflite-micro package (pip install 'edgecnn[micro]')")
        if self.max_regression is not None and not 0 <= self.max_regression <= 100:
            raise EdgeCNNError(f"--max-regression is in percentage points, 0..100, got {self.max_regression}")
        if self.max_regression is not None and not self.baseline:
            raise EdgeCNNError("--max-regression needs --baseline (an earlier benchmark.json)")
        if self.baseline and self.baseline_doc is None:
            self.baseline_doc = load_baseline(self.baseline)  # before `run` trains for minutes
        if self.limit is not None and self.limit < 1:
            raise EdgeCNNError(f"--limit must be at least 1, got {self.limit}")


def parse_formats(text: str) -> list[str]:
    """``all``, ``tflite``, ``onnx``, ``keras`` or names like ``tflite-int8``, comma separated."""
    return [name for name, _ in parse_format_request(text)]


def parse_format_request(text: str) -> list[tuple[str, bool]]:
    """(name, named explicitly) pairs: a group (all, tflite, onnx) only covers the exports that exist."""
    out: list[str] = []
    explicit: set[str] = set()
    for tok in (t.strip().lower() for t in text.split(",") if t.strip()):
        if tok == "all":
            names = [n for n in ALL_NAMES if n != "tflite-micro" or _has_micro()]
        elif tok in ("tflite", "onnx"):
            names = [n for n in EXPORT_NAMES if n.startswith(tok) and (n != "tflite-micro" or _has_micro())]
        elif tok in ALL_NAMES:
            names = [tok]
            explicit.add(tok)
        else:
            raise EdgeCNNError(f"--formats: unknown name {tok!r} (use all, keras, tflite, onnx or "
                               f"{', '.join(EXPORT_NAMES)})")
        out += [n for n in names if n not in out]
    if not out:
        raise EdgeCNNError("--formats is empty")
    if "keras" not in out:
        out.insert(0, "keras")  # the reference every row is compared with
    return [(n, n in explicit) for n in out]


def _has_micro() -> bool:
    import importlib.util

    return importlib.util.find_spec("tflite_micro") is not None


def model_file(run_dir: Path, name: str) -> Path:
    if name == "keras":
        return run_dir / runs.MODEL_FILE
    if name == "tflite-micro":
        return run_dir / "exports" / "model_int8.tflite"
    fmt, variant = name.split("-")
    return run_dir / "exports" / f"model_{variant}.{fmt}"


def plan_rows(run_dir: Path, request: list[tuple[str, bool]], device: str) -> list[dict]:
    """Rows to measure. Exports asked for by group (all, tflite, onnx) that were never written are left out;
    one asked for by name must exist."""
    devices = {"cpu": ["cpu"], "cuda": ["cuda", "tensorrt"], "all": ["cpu", "cuda", "tensorrt"],
               "auto": ["cpu", *(["cuda"] if _cuda_likely() else [])]}[device]
    rows = []
    tta = _tta_files(run_dir)
    for name, explicit in request:
        path = model_file(run_dir, name)
        if not path.is_file():
            if name == "keras" or explicit:
                raise EdgeCNNError(f"missing {path}; run `edgecnn export {run_dir} --format all` first")
            continue
        fmt = name.split("-")[0]
        variant = name.split("-")[1] if "-" in name else "float32"
        runtime = {"keras": "tensorflow", "tflite": "litert", "onnx": "onnxruntime"}[fmt]
        supported = {"keras": ("cpu", "cuda"), "tflite": ("cpu",), "onnx": ("cpu", "cuda", "tensorrt")}[fmt]
        if name == "tflite-micro":
            variant, runtime = "int8", "tflite-micro"
        row = {"name": name, "format": fmt, "variant": variant, "runtime": runtime,
               "model": str(path), "size_bytes": path.stat().st_size, "sha256": sha256(path)}  # read once per file
        row["tta"] = tta.get(path.name) == row["sha256"]
        rows += [row | {"device": dev} for dev in devices if dev in supported]
        if name == "keras" and "cpu" not in devices:
            rows.insert(0, row | {"device": "cpu"})
    return rows


def _tta_files(run_dir: Path) -> dict[str, str]:
    """{file: sha256} of the exports made with flip TTA inside (``edgecnn export --tta``), from the export
    report: a file exported again since, without it, no longer matches its sha256."""
    try:
        report = json.loads((run_dir / "exports" / "export_report.json").read_text())
        return {e["file"]: e.get("sha256") for e in report.get("exports", []) if e.get("tta")}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


@functools.lru_cache(maxsize=8)
def _micro_sizes(path: Path, stamp: tuple[int, int]) -> dict:
    """Arena and flash of an int8 file; cached by path and (mtime, size): the LiteRT int8 row and the
    TFLite Micro row share it."""
    from edgecnn import micro

    try:
        return {"arena_kb": micro.smallest_arena(path.read_bytes()) // 1024,
                "flash_kb": -(-path.stat().st_size // 1024)}
    except EdgeCNNError as exc:
        return {"arena_kb": None, "flash_kb": -(-path.stat().st_size // 1024), "micro_note": str(exc)}


def _cuda_likely() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers() and Path("/proc/driver/nvidia").exists()
    except ImportError:
        return False


def machine() -> dict:
    from importlib import metadata

    from edgecnn.device import cpu_info, nvidia_gpus

    info = cpu_info()
    vers = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": info["name"], "cores": os.cpu_count(), "cpu_int8_dot": info["int8_dot"],
            "cpu_int8_saturates": info["int8_saturates"], "gpus": nvidia_gpus(), "platform": platform.platform(),
            "versions": vers}


def _run_row(row: dict, cfg: BenchmarkConfig, images_path: Path, tmp: Path, i: int) -> tuple[dict, np.ndarray | None]:
    job = {"model": row["model"], "device": row["device"], "threads": cfg.threads, "images": str(images_path),
           "batch_sizes": sorted(cfg.batch_sizes), "warmup_runs": cfg.warmup_runs,
           "warmup_seconds": cfg.warmup_seconds, "runs": cfg.runs, "min_seconds": cfg.min_seconds,
           "probs_out": str(tmp / f"probs{i}.npy"), "result_out": str(tmp / f"result{i}.json"),
           "runtime": row["runtime"], "limit": MICRO_SAMPLES if row["runtime"] == "tflite-micro" else None}
    if row.get("flip_reference"):
        job["flip_probs_out"] = str(tmp / f"flip{i}.npy")
    job_path = tmp / f"job{i}.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(cfg.threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecnn.benchmark_worker", str(job_path)],
                              capture_output=True, text=True, timeout=cfg.row_timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {cfg.row_timeout:.0f} s"}, None
    result_path = Path(job["result_out"])
    if not result_path.is_file():
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
        return {"status": "failed", "reason": f"worker crashed ({how}) {tail[0][:200]}".strip()}, None
    result = json.loads(result_path.read_text())
    probs = np.load(job["probs_out"]) if result.get("status") == "ok" else None
    if probs is not None and job.get("flip_probs_out"):  # the TTA reference: the two outputs averaged
        result["tta_probs"] = (probs + np.load(job["flip_probs_out"])) / 2
    return result, probs


def benchmark(cfg: BenchmarkConfig, log=print) -> tuple[list[dict], int]:
    """Measure every row; write RUN/benchmark.{json,csv,md,png}. Returns (rows, exit code)."""
    cfg.check()
    base = cfg.baseline_doc
    request = parse_format_request(cfg.formats)
    run_dir = runs.resolve(cfg.run, cfg.runs_dir)
    labels = runs.labels(run_dir)
    rows = plan_rows(run_dir, request, cfg.device)
    from edgecnn.evaluate import load_run_data

    ds = load_run_data(run_dir, cfg.data)
    if list(ds.input_shape) != list(labels["input_shape"]):
        raise EdgeCNNError(f"data images are {ds.input_shape} but the model takes {tuple(labels['input_shape'])}")
    x, y = ds.x_test, ds.y_test
    if cfg.limit:
        x, y = x[:cfg.limit], y[:cfg.limit]
    log(f"benchmark: {run_dir} on {len(x)} test images of {ds.source}"
        + (f" ({ds.info['classes_matched']})" if ds.info.get("classes_matched") else "")
        + f", {cfg.threads} thread(s), batch sizes {sorted(cfg.batch_sizes)}")
    ref_probs = tta_probs = tta_accuracy = None
    if any(r["tta"] for r in rows):
        rows[0]["flip_reference"] = True  # the Keras row also scores the mirrored images
    with tempfile.TemporaryDirectory(prefix="edgecnn-bench-") as tmp:
        tmp = Path(tmp)
        images_path = tmp / "images.npy"
        np.save(images_path, np.ascontiguousarray(x))
        for i, row in enumerate(rows):
            t0, cpu0 = time.perf_counter(), device.cpu_counters()
            result, probs = _run_row(row, cfg, images_path, tmp, i)
            row_tta_probs = result.pop("tta_probs", None)
            info = result.pop("info", {}) or {}
            result.pop("traceback", None)
            row.update(result)
            row["threads"] = cfg.threads
            row["providers"] = info.get("providers")
            row["note"] = info.get("note")
            row["placement"] = info.get("placement")  # {provider: {op: kernels}} of CUDA/TensorRT rows
            row["seconds"] = round(time.perf_counter() - t0, 2)
            row["cpu_steal_percent"] = device.steal_percent(cpu0, device.cpu_counters())
            if probs is not None:
                if row["name"] == "keras" and ref_probs is None:
                    ref_probs, tta_probs = probs, row_tta_probs
                    if tta_probs is not None:
                        tta_accuracy = float(np.mean(tta_probs.argmax(1) == y))
                from edgecnn.stats import compare_to_reference, score

                n = len(probs)  # the TFLite Micro row scores a prefix of the test split
                ref = tta_probs if row["tta"] else ref_probs  # flip TTA inside: compared with Keras under TTA
                if ref is not None:
                    row.update(compare_to_reference(y[:n], ref[:n], probs, ds.class_names))
                else:  # the Keras row failed (no TensorFlow, say): each row still scores against the labels
                    row.update(score(y[:n], probs))
                row["images"] = n
            if row["variant"] == "int8" and row["format"] == "tflite" and _has_micro():
                st = Path(row["model"]).stat()
                row.update(dict(_micro_sizes(Path(row["model"]), (st.st_mtime_ns, st.st_size))))
            log(_row_line(row))
            if row["name"] == "keras" and row_tta_probs is not None:
                log(f"    under flip TTA (the reference of the rows marked so): acc {tta_accuracy:.4f}")
    if ref_probs is None:
        rows[0].setdefault("reason", "reference failed")
    test_labels = hashlib.sha256(np.asarray(y, np.int64).tobytes()).hexdigest()[:16]
    if base is not None:
        compare_baseline(rows, base, {"images": int(len(x)), "test_labels": test_labels}, cfg.baseline, log)
    code = gate(rows, cfg, log, run_dir)
    if code == 0 and any(r["status"] == "failed" for r in rows):
        code = 2
    meta = {"run": str(run_dir), "data": ds.source, "images": int(len(x)), "test_labels": test_labels,
            "keras_tta_accuracy": tta_accuracy,
            "threads": cfg.threads, "baseline": cfg.baseline,
            "batch_sizes": sorted(cfg.batch_sizes), "machine": machine(),
            "gate": {"max_drop_pp": cfg.max_drop, "min_agreement": cfg.min_agreement, "max_size_kb": cfg.max_size_kb,
                     "max_latency_ms": cfg.max_latency_ms, "max_arena_kb": cfg.max_arena_kb,
                     "max_regression_pp": cfg.max_regression, "exit_code": code},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_outputs(rows, meta, run_dir, cfg)
    return rows, code


def load_baseline(path: str) -> dict:
    """An earlier ``benchmark.json``; one error line if it is not one."""
    from edgecnn.fsutil import read_json

    doc = read_json(path, "--baseline benchmark file")
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not isinstance(doc.get("meta"), dict):
        raise EdgeCNNError(f"--baseline {path}: not a benchmark.json (no meta and rows)")
    return doc


def compare_baseline(rows: list[dict], base: dict, now: dict, path: str, log) -> None:
    """Add each row's change against its namesake (same name and device) in ``base``, and log them.

    The baseline must have scored the same test images: the same count and, where both record it, the
    same labels in the same order (a fingerprint)."""
    meta = base["meta"]
    if meta.get("images") != now["images"] or (meta.get("test_labels") and meta["test_labels"] != now["test_labels"]):
        raise EdgeCNNError(f"--baseline {path} scored {meta.get('images')} test images of {meta.get('data')}, other "
                           f"images than these {now['images']}: accuracies would not compare")
    old = {(r.get("name"), r.get("device")): r for r in base["rows"] if r.get("status") == "ok"}
    log(f"against the baseline {path}:")
    for r in rows:
        b = old.get((r["name"], r["device"]))
        if r["status"] != "ok" or b is None:
            if b is not None:
                log(f"  {r['name']} ({r['device']}): {r['status']} now, ok in the baseline")
            continue
        if r.get("accuracy") is not None and b.get("accuracy") is not None:
            r["baseline_accuracy"] = b["accuracy"]
            r["accuracy_change_pp"] = round((r["accuracy"] - b["accuracy"]) * 100, 4)
        if r.get("size_bytes") and b.get("size_bytes"):
            r["size_change_bytes"] = r["size_bytes"] - b["size_bytes"]
        if r.get("latency_ms_p50") and b.get("latency_ms_p50"):
            r["latency_change"] = round(r["latency_ms_p50"] / b["latency_ms_p50"], 4)
        if r.get("sha256") and b.get("sha256"):  # a change with the same file came from the runtime or machine
            r["same_file_as_baseline"] = r["sha256"] == b["sha256"]
        parts = []
        if "accuracy_change_pp" in r:
            parts.append(f"accuracy {r['accuracy'] * 100:.2f}% ({r['accuracy_change_pp']:+.2f} pp)")
        if "size_change_bytes" in r:
            parts.append(f"size {r['size_bytes'] / 1024:.1f} KB ({r['size_change_bytes'] / 1024:+.1f} KB)")
        if "latency_change" in r:
            parts.append(f"p50 {r['latency_ms_p50']:.3f} ms (x{r['latency_change']:.2f})")
        if "same_file_as_baseline" in r:
            parts.append("the same file (sha256)" if r["same_file_as_baseline"] else "another file")
        log(f"  {r['name']} ({r['device']}): " + ", ".join(parts))


def gate(rows: list[dict], cfg: BenchmarkConfig, log, run_dir: Path | None = None) -> int:
    bad = []
    int8_lost = {}  # int8 rows that failed an accuracy gate: quant-debug shows where, per format
    for r in rows:
        if r["name"] == "keras" or r["status"] != "ok" or r.get("accuracy") is None:
            continue
        compared = r.get("agreement") is not None  # else the Keras row failed, which already sets exit code 2
        accuracy_gates = len(bad)
        if compared and cfg.max_drop is not None and r["drop_pp"] > cfg.max_drop:
            bad.append(f"{r['name']} ({r['device']}): accuracy drop {r['drop_pp']:.2f} pp > {cfg.max_drop} pp "
                       f"(by {r['drop_pp'] - cfg.max_drop:.2f} pp)")
        if compared and cfg.min_agreement is not None and r["agreement"] < cfg.min_agreement:
            bad.append(f"{r['name']} ({r['device']}): agreement {r['agreement']:.4f} < {cfg.min_agreement} "
                       f"(by {cfg.min_agreement - r['agreement']:.4f})")
        if r["name"] in ("tflite-int8", "onnx-int8") and len(bad) > accuracy_gates:
            int8_lost[r["name"]] = " --format onnx" if r["name"] == "onnx-int8" else ""
        if r["name"] == "tflite-micro":
            continue  # the int8 file's own row carries its size and arena; host timing of reference kernels
        if cfg.max_size_kb is not None and r.get("size_bytes") and r["size_bytes"] / 1024 > cfg.max_size_kb:
            bad.append(f"{r['name']}: file {r['size_bytes'] / 1024:.1f} KB > {cfg.max_size_kb:g} KB "
                       f"(by {r['size_bytes'] / 1024 - cfg.max_size_kb:.1f} KB)")
        if cfg.max_latency_ms is not None and r.get("latency_ms_p50") is not None \
                and r["latency_ms_p50"] > cfg.max_latency_ms:
            bad.append(f"{r['name']} ({r['device']}): batch-1 median {r['latency_ms_p50']:.3f} ms > "
                       f"{cfg.max_latency_ms:g} ms (by {r['latency_ms_p50'] - cfg.max_latency_ms:.3f} ms)")
        if cfg.max_arena_kb is not None and r.get("arena_kb") is not None and r["arena_kb"] > cfg.max_arena_kb:
            bad.append(f"{r['name']}: TFLite Micro arena {r['arena_kb']} KB > {cfg.max_arena_kb:g} KB "
                       f"(by {r['arena_kb'] - cfg.max_arena_kb:g} KB)")
    if cfg.max_regression is not None:
        for r in rows:
            if r.get("accuracy_change_pp") is not None and -r["accuracy_change_pp"] > cfg.max_regression:
                bad.append(f"{r['name']} ({r['device']}): accuracy {r['accuracy_change_pp']:+.2f} pp against the "
                           f"baseline, more than {cfg.max_regression:g} pp lost "
                           f"(by {-r['accuracy_change_pp'] - cfg.max_regression:.2f} pp)")
    if cfg.max_arena_kb is not None and not any(r.get("arena_kb") is not None for r in rows):
        bad.append("--max-arena: no row has a TFLite Micro arena (benchmark the int8 TFLite file: "
                   "--formats tflite-int8)")
    for line in bad:
        log(f"GATE FAILED: {line}")
    for option in int8_lost.values():
        log(f"  which layers lose it: edgecnn quant-debug {run_dir or ''}".rstrip() + option)
    return 1 if bad else 0


def _fmt(v, spec: str, dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


TTA_MARK = " (flip TTA)"  # after the name of a row whose file averages each image with its mirror image


def _row_line(r: dict) -> str:
    name = r["name"] + (TTA_MARK if r.get("tta") else "")
    if r["status"] != "ok":
        return f"  {name:<15} {r['runtime']:<12} {r['device']:<8} {r['status']}: {r.get('reason')}"
    return (f"  {name:<15} {r['runtime']:<12} {r['device']:<8} ok  acc {_fmt(r.get('accuracy'), '.4f')}  "
            f"agree {_fmt(r.get('agreement'), '.4f')}  p50 {r['latency_ms_p50']:.3f} ms  "
            f"{r['throughput_ips']:.0f} img/s" + (f"\n    note: {r['note']}" if r.get("note") else ""))


def notes_markdown(rows: list[dict], keras_tta_accuracy: float | None = None) -> str:
    """The rows' notes (where the nodes of a CUDA/TensorRT row really ran, say) as a list under the table,
    and what the rows marked flip TTA were compared with."""
    notes = [f"* {r['name']} ({r['device']}): {r['note']}" for r in rows if r["status"] == "ok" and r.get("note")]
    if any(r.get("tta") for r in rows):
        ref = f": {keras_tta_accuracy * 100:.2f}%" if keras_tta_accuracy is not None else " (it failed)"
        notes.append(f"* rows marked{TTA_MARK}: the file averages each image's output with its mirror image's "
                     f"(`edgecnn export --tta`); drop and agreement are against Keras under the same averaging{ref}")
    return "\nNotes:\n\n" + "\n".join(notes) + "\n" if notes else ""


def table_markdown(rows: list[dict]) -> str:
    head = ["format", "runtime", "device", "status", "acc %", "drop pp", "agree %", "flips -/+", "McNemar p",
            "worst class (pp)", "p50 ms", "p99 ms", "img/s", "cold ms", "RSS MB", "size KB", "arena KB"]
    versus = any(r.get("accuracy_change_pp") is not None for r in rows)  # benchmark --baseline
    if versus:
        head.insert(5, "vs baseline pp")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        status = r["status"] if ok else f"{r['status']}: {r.get('reason') or ''}".replace("|", "/")
        acc = r.get("accuracy")
        cells = [
            r["name"] + (TTA_MARK if r.get("tta") else ""), r["runtime"], r["device"], status,
            _fmt(acc * 100 if acc is not None else None, ".2f"),
            _fmt(r.get("drop_pp"), "+.2f"),
            _fmt(r["agreement"] * 100 if r.get("agreement") is not None else None, ".2f"),
            f"{r['flips_bad']}/{r['flips_good']}" if r.get("flips_bad") is not None else "-",
            _fmt(r.get("mcnemar_p"), ".3g"),
            f"{r['worst_class']} ({r['worst_class_delta_pp']:+.1f})" if r.get("worst_class") else "-",
            _fmt(r.get("latency_ms_p50"), ".3f"), _fmt(r.get("latency_ms_p99"), ".3f"),
            _fmt(r.get("throughput_ips"), ".0f"), _fmt(r.get("cold_start_ms"), ".0f"),
            _fmt(r.get("peak_rss_mb"), ".0f"), _fmt(r["size_bytes"] / 1024 if r.get("size_bytes") else None, ".0f"),
            _fmt(r.get("arena_kb"), "d"),
        ]
        if versus:
            cells.insert(5, _fmt(r.get("accuracy_change_pp"), "+.2f"))
        if r["runtime"] == "tflite-micro":
            cells[0] = (f"tflite-micro (first {r.get('images') or MICRO_SAMPLES} images, host reference kernels)"
                        + (TTA_MARK if r.get("tta") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], meta: dict, run_dir: Path, cfg: BenchmarkConfig) -> None:
    from edgecnn import plots

    clean = [{k: r.get(k) for k in KEYS} | {"throughput_ips_by_batch": r.get("throughput_ips_by_batch"),
                                            "per_class_delta_pp": r.get("per_class_delta_pp"),
                                            "placement": r.get("placement")} for r in rows]
    doc = {"meta": meta, "rows": clean}
    write_json(run_dir / "benchmark.json", doc)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=KEYS, extrasaction="ignore")
    w.writeheader()
    for r in clean:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    write_text(run_dir / "benchmark.csv", buf.getvalue())
    m = meta["machine"]
    gpus = ""
    if m.get("gpus") and any(r["device"] != "cpu" and r["status"] == "ok" for r in rows):
        gpus = "; GPU: " + ", ".join(f"{g['name']} (driver {g['driver']})" for g in m["gpus"])
    md = (f"Benchmark of `{meta['run']}` on {meta['images']} test images of `{meta['data']}`; "
          f"{meta['threads']} thread(s); {m['cpu']} ({m['cores']} cores"
          f"{', no VNNI: int8 ONNX on exact uint8 kernels' if m.get('cpu_int8_saturates') else ''}){gpus}.\n\n"
          + table_markdown(rows)
          + notes_markdown(rows, meta.get("keras_tta_accuracy")))
    write_text(run_dir / "benchmark.md", md)
    plots.accuracy_vs_latency(rows, run_dir / "benchmark.png")
    if cfg.json_path:
        write_json(cfg.json_path, doc)
    if cfg.csv_path:
        write_text(cfg.csv_path, buf.getvalue())
