import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_main
from edgecnn.benchmark import BenchmarkConfig, KEYS, benchmark, gate, parse_formats
from edgecnn.errors import EdgeCNNError

QUICK = dict(limit=200, runs=5, warmup_runs=1, warmup_seconds=0.0, min_seconds=0.0, batch_sizes=(1, 8))


@pytest.fixture(scope="module")
def bench(tiny_exports, tiny_run):
    rows, code = benchmark(BenchmarkConfig(run=str(tiny_run), device="all", **QUICK), log=lambda m: None)
    return rows, code


def test_every_row_with_cuda_rows_skipped(bench, tiny_run):
    rows, code = bench
    assert code == 0
    names = {(r["name"], r["device"]) for r in rows}
    for name in ("keras", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx-float32",
                 "onnx-int8"):
        assert (name, "cpu") in names
    assert ("onnx-int8", "cuda") in names and ("onnx-int8", "tensorrt") in names
    for r in rows:
        if r["device"] == "cpu":
            assert r["status"] == "ok", r
            assert r["latency_ms_p50"] > 0 and r["throughput_ips"] > 0 and r["peak_rss_mb"] > 10
        else:
            assert r["status"] == "skipped" and r["reason"], "no CUDA here: never CPU numbers labelled CUDA"
    ref = next(r for r in rows if r["name"] == "keras" and r["device"] == "cpu")
    assert ref["agreement"] == 1.0 and ref["drop_pp"] == 0
    f32 = next(r for r in rows if r["name"] == "tflite-float32")
    assert f32["agreement"] == 1.0 and f32["flips_bad"] == 0 and f32["mcnemar_p"] == 1.0


def test_outputs_have_stable_keys(bench, tiny_run):
    doc = json.loads((tiny_run / "benchmark.json").read_text())
    assert all(set(KEYS) <= set(r) for r in doc["rows"])
    assert doc["meta"]["machine"]["cores"] >= 1 and doc["meta"]["images"] == 200
    assert (tiny_run / "benchmark.csv").read_text().splitlines()[0].startswith("name,format,variant")
    assert "| tflite-int8 |" in (tiny_run / "benchmark.md").read_text()
    assert (tiny_run / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_gate_thresholds_around_the_measured_agreement(bench):
    rows, _ = bench
    int8 = next(r for r in rows if r["name"] == "tflite-int8" and r["device"] == "cpu")
    lines = []
    above = BenchmarkConfig(min_agreement=min(1.0, int8["agreement"] + 1e-6))
    below = BenchmarkConfig(min_agreement=max(0.0, int8["agreement"] - 1e-6))
    if int8["agreement"] < 1.0:
        assert gate(rows, above, lines.append, Path("runs/r")) == 1 and any("tflite-int8" in ln for ln in lines)
        assert "  which layers lose it: edgecnn quant-debug runs/r" in lines  # an int8 TFLite row failed
    assert gate(rows, below, lambda m: None) == 0 or min(
        r["agreement"] for r in rows if r["status"] == "ok") < int8["agreement"]
    worst_drop = max(r["drop_pp"] for r in rows if r["status"] == "ok")
    assert gate(rows, BenchmarkConfig(max_drop=worst_drop + 0.01), lambda m: None) == 0
    if worst_drop > 0:
        assert gate(rows, BenchmarkConfig(max_drop=worst_drop - 0.01), lambda m: None) == 1


def test_a_failed_int8_row_names_the_quant_debug_command_of_its_format(bench):
    rows, _ = bench
    picked = [r for r in rows if r["device"] == "cpu" and r["name"] in ("keras", "tflite-int8", "onnx-int8")]
    assert [r["name"] for r in picked] == ["keras", "tflite-int8", "onnx-int8"]
    impossible = BenchmarkConfig(min_agreement=1.0 + 1e-9)  # every compared row fails it
    lines = []
    assert gate(picked, impossible, lines.append, Path("runs/r")) == 1
    assert lines[-2:] == ["  which layers lose it: edgecnn quant-debug runs/r",
                          "  which layers lose it: edgecnn quant-debug runs/r --format onnx"]
    lines.clear()
    floats = [r for r in rows if r["device"] == "cpu" and r["name"] in ("keras", "onnx-float32")]
    assert gate(floats, impossible, lines.append, Path("runs/r")) == 1
    assert lines and not any("quant-debug" in ln for ln in lines)  # no quantized layer to blame


def test_size_latency_and_arena_gates_around_the_measured_values(bench):
    """Flash (file size), speed (batch-1 median) and RAM (TFLite Micro arena) budgets, as CI would set them."""
    rows, _ = bench
    ran = [r for r in rows if r["status"] == "ok" and r["name"] not in ("keras", "tflite-micro")]
    int8 = next(r for r in ran if r["name"] == "tflite-int8")
    largest = max(r["size_bytes"] for r in ran) / 1024
    lines = []
    assert gate(rows, BenchmarkConfig(max_size_kb=largest + 0.1), lambda m: None) == 0
    assert gate(rows, BenchmarkConfig(max_size_kb=int8["size_bytes"] / 1024 - 0.1), lines.append) == 1
    assert any(ln.startswith("GATE FAILED: tflite-int8: file ") for ln in lines)
    slowest, fastest = max(r["latency_ms_p50"] for r in ran), min(r["latency_ms_p50"] for r in ran)
    assert gate(rows, BenchmarkConfig(max_latency_ms=slowest * 1.01), lambda m: None) == 0
    lines = []
    assert gate(rows, BenchmarkConfig(max_latency_ms=fastest * 0.99), lines.append) == 1
    assert len(lines) == len(ran), "every export row is over a budget below the fastest"
    if int8.get("arena_kb") is not None:  # tflite-micro installed (the dev extra)
        assert gate(rows, BenchmarkConfig(max_arena_kb=int8["arena_kb"]), lambda m: None) == 0
        lines = []
        assert gate(rows, BenchmarkConfig(max_arena_kb=int8["arena_kb"] - 0.5), lines.append) == 1
        assert lines == [f"GATE FAILED: tflite-int8: TFLite Micro arena {int8['arena_kb']} KB > "
                         f"{int8['arena_kb'] - 0.5:g} KB (by 0.5 KB)"]


def test_baseline_comparison_gates_a_model_that_got_worse(bench, tiny_run, tmp_path, capsys):
    """CI compares a candidate with the released model's benchmark.json: same rows, same test images."""
    doc = json.loads((tiny_run / "benchmark.json").read_text())
    for r in doc["rows"]:  # the released int8 file scored 2 points more than the candidate's
        if r["name"] == "tflite-int8" and r["status"] == "ok":
            r["accuracy"] += 0.02
    (tmp_path / "base.json").write_text(json.dumps(doc))
    args = ["benchmark", str(tiny_run), "--formats", "tflite-int8", "--limit", str(doc["meta"]["images"]), "--runs",
            "3", "--warmup", "0", "--batch-sizes", "1", "--baseline", str(tmp_path / "base.json")]
    code, out, _ = run_main(capsys, *args, "--max-regression", "1.5")
    assert code == 1 and "GATE FAILED: tflite-int8 (cpu): accuracy -2.00 pp against the baseline" in out
    assert "keras (cpu): accuracy" in out and "GATE FAILED: keras" not in out
    rows = {r["name"]: r for r in json.loads((tiny_run / "benchmark.json").read_text())["rows"]}
    assert rows["tflite-int8"]["accuracy_change_pp"] == pytest.approx(-2.0) and rows["keras"]["accuracy_change_pp"] == 0
    assert rows["tflite-int8"]["size_change_bytes"] == 0
    int8_file = tiny_run / "exports" / "model_int8.tflite"
    assert rows["tflite-int8"]["sha256"] == hashlib.sha256(int8_file.read_bytes()).hexdigest()
    assert rows["tflite-int8"]["same_file_as_baseline"] is True and "the same file (sha256)" in out
    table = (tiny_run / "benchmark.md").read_text()  # and in the table (report.md takes it from there)
    assert "| vs baseline pp |" in table and "| tflite-int8 | litert | cpu | ok | " in table
    assert [c.strip() for c in next(ln for ln in table.splitlines() if ln.startswith("| tflite-int8")).split("|")][6] \
        == "-2.00"
    for r in doc["rows"]:  # a baseline that measured another file says so
        if r["name"] == "tflite-int8":
            r["sha256"] = "0" * 64
    (tmp_path / "base.json").write_text(json.dumps(doc))
    code, out, _ = run_main(capsys, *args, "--max-regression", "2.5")
    assert code == 0 and "another file" in next(ln for ln in out.splitlines() if ln.startswith("  tflite-int8 (cpu): "))
    code, _, err = run_main(capsys, *args[:5], "100", *args[6:])  # other test images: no comparison
    assert code == 2 and "other images than these 100" in err


def test_cli_gate_exit_codes(tiny_exports, tiny_run, capsys):
    args = ["benchmark", str(tiny_run), "--formats", "tflite-int8", "--limit", "200", "--runs", "3",
            "--warmup", "0", "--batch-sizes", "1"]
    code, out, _ = run_main(capsys, *args, "--min-agreement", "1.0")
    doc = json.loads((tiny_run / "benchmark.json").read_text())
    agreement = next(r for r in doc["rows"] if r["name"] == "tflite-int8")["agreement"]
    if agreement < 1.0:
        assert code == 1 and "GATE FAILED: tflite-int8" in out
    code, out, _ = run_main(capsys, *args, "--min-agreement", f"{agreement - 1e-4:.6f}")
    assert code == 0
    code, out, _ = run_main(capsys, *args, "--max-size", "0.5", "--max-latency", "1000")
    assert code == 1 and "GATE FAILED: tflite-int8: file " in out and "median" not in out


def test_a_failing_row_does_not_abort_the_table(tiny_exports, tiny_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    (run / "exports" / "model_dynamic.tflite").write_bytes(b"TFL3 but not really a model")
    rows, code = benchmark(BenchmarkConfig(run=str(run), formats="tflite", **QUICK), log=lambda m: None)
    status = {r["name"]: r["status"] for r in rows}
    assert status["tflite-dynamic"] == "failed" and status["tflite-int8"] == "ok" and status["keras"] == "ok"
    assert code == 2
    assert "model_dynamic.tflite" in next(r["reason"] for r in rows if r["name"] == "tflite-dynamic")


def test_exports_are_still_scored_when_the_keras_reference_fails(tiny_exports, tiny_run, tmp_path):
    """As on a GPU box with ONNX Runtime but no TensorFlow: the Keras row fails, each export keeps its accuracy
    against the labels (not against a reference), the drop/agreement gates skip it and the exit code is 2."""
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    (run / "model.keras").write_bytes(b"PK not a keras file")
    cfg = BenchmarkConfig(run=str(run), formats="onnx", max_drop=0.0, min_agreement=1.0, **QUICK)
    rows, code = benchmark(cfg, log=lambda m: None)
    by = {r["name"]: r for r in rows}
    assert by["keras"]["status"] == "failed" and code == 2
    for name in ("onnx-float32", "onnx-int8"):
        r = by[name]
        assert r["status"] == "ok" and 0 <= r["accuracy"] <= 1 and r["top5"] >= r["accuracy"] and r["images"] == 200
        assert r.get("agreement") is None and r.get("drop_pp") is None
    doc = json.loads((run / "benchmark.json").read_text())
    assert [r["accuracy"] for r in doc["rows"][1:]] == [by["onnx-float32"]["accuracy"], by["onnx-int8"]["accuracy"]]


def test_gpus_the_nvidia_driver_lists(tmp_path):
    """The driver's /proc files as an H100 machine had them (benchmark.md and doctor name the GPU from them)."""
    from edgecnn.device import nvidia_gpus

    root = tmp_path / "nvidia"
    (root / "gpus" / "0000:00:06.0").mkdir(parents=True)
    (root / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build"
                                  "  (nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n")
    (root / "gpus" / "0000:00:06.0" / "information").write_text(
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 41\nGPU UUID: \t GPU-50ad1d5d\nBus Type: \t PCIe\n"
        "GPU Firmware: \t 580.159.04\n")
    assert nvidia_gpus(str(root)) == [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"}]
    assert nvidia_gpus(str(tmp_path / "absent")) == []


def test_notes_under_the_table():
    from edgecnn.benchmark import notes_markdown

    rows = [{"name": "onnx-int8", "device": "cuda", "status": "ok", "note": "9 of 89 nodes on CPUExecutionProvider"},
            {"name": "onnx-int8", "device": "tensorrt", "status": "skipped", "note": None}]
    assert notes_markdown(rows) == "\nNotes:\n\n* onnx-int8 (cuda): 9 of 89 nodes on CPUExecutionProvider\n"
    assert notes_markdown(rows[1:]) == ""


@pytest.mark.parametrize("kwargs, needle", [
    ({"formats": "tflite-int4"}, "unknown name"),
    ({"max_drop": -1}, "--max-drop"),
    ({"min_agreement": 1.5}, "--min-agreement"),
    ({"device": "tpu"}, "--device"),
    ({"run": "absent"}, "not found"),
    ({"batch_sizes": (0,)}, "--batch-sizes"),
    ({"max_size_kb": 0}, "--max-size must be positive"),
    ({"max_latency_ms": -1}, "--max-latency must be positive"),
    ({"max_regression": 1.0}, "--max-regression needs --baseline"),
    ({"baseline": "/no/such/benchmark.json"}, "benchmark.json"),
])
def test_bad_benchmark_inputs(tiny_run, kwargs, needle):
    kwargs.setdefault("run", str(tiny_run))
    with pytest.raises(EdgeCNNError, match=needle):
        benchmark(BenchmarkConfig(**kwargs), log=lambda m: None)


def test_missing_export_and_wrong_image_size(tiny_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("exports"))
    with pytest.raises(EdgeCNNError, match="missing .*model_int8.tflite"):
        benchmark(BenchmarkConfig(run=str(run), formats="tflite-int8"), log=lambda m: None)
    from edgecnn.model import build_core

    build_core("C: 4 gap", (8, 8, 3), 10).save(run / "model.keras")  # a model that does not fit the data
    rows, code = benchmark(BenchmarkConfig(run=str(run), formats="keras", **QUICK), log=lambda m: None)
    assert code == 2 and rows[0]["status"] == "failed" and "expects images of shape (8, 8, 3)" in rows[0]["reason"]


def test_parse_formats():
    assert parse_formats("tflite-int8") == ["keras", "tflite-int8"]
    assert parse_formats("onnx")[1:] == ["onnx-float32", "onnx-int8"]
