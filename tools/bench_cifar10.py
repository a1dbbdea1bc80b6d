"""CIFAR-10 end to end with the real CLI: train presets, export, benchmark, QAT, pruning -> docs/benchmarks.md.

    python tools/bench_cifar10.py --data ../shared/data/cifar10-jpg.tar.gz [--runs-dir cifar-runs]
        [--stages cifar10,resnet8,regularized] [--sweep sweeps/cifar]

Stages (each reuses a finished run of the same name in --runs-dir; delete the folder to redo it):

- ``cifar10``: ``edgecnn train --preset cifar10``, every export (with .gz), the benchmark table,
  ``evaluate --tta`` and the TFLite Micro check; then a copy of the run, ``PRESET-tta``, exported with
  ``--tta`` (flip averaging inside the TFLite files, reported apart) and benchmarked.
- ``resnet8``: ``edgecnn train --preset resnet8`` (MLPerf Tiny), its TFLite exports and benchmark.
- ``regularized``: the ``regularized`` architecture, then ``finetune --qat`` and ``finetune --prune 0.5``
  with their exports and benchmarks (gzip sizes of pruned vs unpruned int8).

``--add-row RUN_DIR`` puts one finished training run into the document's "Other recipes tried"
table (replacing the row of a run with the same name) and keeps the rest of the document, so a
new trial needs neither a rerun nor the runs the document was first written from.

``--update`` runs only ``--stages`` and rewrites only their parts: their sections and Targets rows of the
document, and with ``--readme`` their paragraphs (with the tables and images under them) and Targets rows
of README's Results, keeping the rest. So one preset can be re-measured (``--stages resnet8 --update
--readme``: about 30 minutes) without the runs the rest was written from.

Every step runs in a child process timed from outside; the seconds are kept in
RUNS_DIR/bench_seconds.json, so a later call that reuses a run still reports how long it took.
Running every stage takes about 1.5 hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SVG = ROOT / "docs" / "benchmark.svg"
# The sweep in the docs (8 candidates, 3 epochs each, about 9 minutes here); pass its folder with --sweep.
SWEEP_COMMAND = ('edgecnn sweep --data ../shared/data/cifar10-jpg.tar.gz --grid "widths=8,16,32;dense=0,32;bn=on" '
                 "--preset basic --preset resnet8 --epochs 3 --batch-size 128 --lr 3e-3 --target 0.65 --name cifar")
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
STAGES = ("cifar10", "resnet8", "regularized")
REGULARIZED_ARGS = ["--arch", "regularized", "--epochs", "15", "--batch-size", "128", "--lr", "3e-3"]
# (preset, float target, int8 target, int8 file limit KB or None, training minutes limit)
TARGETS = {"cifar10": (0.88, 0.875, 400, 20), "resnet8": (0.85, 0.85, None, 30)}


class Bench:
    def __init__(self, runs: Path, data: str):
        self.runs, self.data = runs, data
        self.log = runs / "bench_cifar10.log"
        self.seconds_file = runs / "bench_seconds.json"
        self.seconds = load(self.seconds_file) or {}

    def edgecnn(self, *args: str, key: str | None = None) -> None:
        """Run the CLI in a child process; record its wall time under ``key``."""
        t0 = time.perf_counter()
        with open(self.log, "a") as f:
            f.write(f"\n$ edgecnn {' '.join(args)}\n")
            f.flush()
            rc = subprocess.run([sys.executable, "-m", "edgecnn", *args, "--runs-dir", str(self.runs)],
                                stdout=f, stderr=subprocess.STDOUT).returncode
        if rc not in (0, 1):  # 1: a gate or a verification said no; still worth reporting
            sys.exit(f"edgecnn {' '.join(args)} failed with exit code {rc}; see {self.log}")
        if key:
            self.seconds[key] = round(time.perf_counter() - t0, 1)
            self.seconds_file.write_text(json.dumps(self.seconds, indent=2) + "\n")

    def has(self, name: str) -> bool:
        return (self.runs / name / "model.keras").is_file()

    def evaluate_json(self, name: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "edgecnn", "evaluate", name, "--json", *args,
                              "--runs-dir", str(self.runs)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"edgecnn evaluate {name} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def cpu() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def machines(b: Bench, stages: list[str]) -> str:
    """The processors the stages' runs trained on, as they recorded it; this one where none did."""
    names = {m["cpu"] for s in stages if (m := load(b.runs / s / "metrics.json")) and m.get("cpu")}
    return " / ".join(sorted(names)) or cpu()


def _on(m: dict) -> str:
    """Where and in what precision a run trained, as its metrics.json says (older runs: no precision)."""
    where = f" on {m['cpu']} ({m.get('cpu_cores', '?')} cores)" if m.get("cpu") else ""
    return where + (f" in {m['precision']}" if m.get("precision") else "")


def run_preset(b: Bench, preset: str) -> None:
    if not b.has(preset):
        b.edgecnn("train", "--data", b.data, "--preset", preset, "--name", preset, key=f"{preset}/train")
    if preset == "cifar10":
        b.edgecnn("export", preset, "--format", "all", "--gzip", key=f"{preset}/export")
        b.edgecnn("benchmark", preset, key=f"{preset}/benchmark")
        b.edgecnn("export", preset, "--format", "tflite", "--quantize", "int8", "--gzip", "--micro",
                  "--micro-samples", "10000", "--c-array")
    else:
        b.edgecnn("export", preset, "--format", "tflite", "--quantize", "all", "--gzip", key=f"{preset}/export")
        b.edgecnn("benchmark", preset, "--formats", "tflite-float32,tflite-int8", key=f"{preset}/benchmark")
    tta = b.evaluate_json(preset, "--tta")
    (b.runs / preset / "tta.json").write_text(json.dumps(tta, indent=2) + "\n")
    run_tta_exports(b, preset)


def run_tta_exports(b: Bench, preset: str) -> None:
    """TFLite files with flip TTA inside (``export --tta``), from a copy of the run: its plain files stay."""
    import shutil

    src, dst = b.runs / preset, b.runs / f"{preset}-tta"
    dst.mkdir(exist_ok=True)
    for name in ("model.keras", "labels.json", "config.json", "metrics.json"):
        shutil.copyfile(src / name, dst / name)
    b.edgecnn("export", dst.name, "--format", "tflite", "--tta", key=f"{dst.name}/export")
    b.edgecnn("benchmark", dst.name, "--formats", "tflite-float32,tflite-int8", key=f"{dst.name}/benchmark")


def _tta_rows(b: Bench, preset: str) -> tuple[dict | None, dict | None]:
    """(int8, float32) benchmark rows of the preset's files with flip TTA inside, if measured."""
    bench = load(b.runs / f"{preset}-tta" / "benchmark.json")
    q, f32 = _row(bench, "tflite-int8"), _row(bench, "tflite-float32")
    return (q, f32) if q and q.get("tta") else (None, None)


def run_regularized(b: Bench) -> None:
    name, qat, pruned = "regularized", "regularized-qat", "regularized-pruned50"
    if not b.has(name):
        b.edgecnn("train", "--data", b.data, *REGULARIZED_ARGS, "--name", name, key=f"{name}/train")
    b.edgecnn("export", name, "--format", "all", "--gzip", key=f"{name}/export")
    b.edgecnn("benchmark", name, key=f"{name}/benchmark")
    if not b.has(qat):
        b.edgecnn("finetune", name, "--qat", "--epochs", "3", key=f"{qat}/finetune")
    b.edgecnn("export", qat, "--format", "all", "--gzip")
    b.edgecnn("benchmark", qat, "--formats", "tflite-int8,onnx-int8")
    if not b.has(pruned):
        b.edgecnn("finetune", name, "--prune", "0.5", "--epochs", "3", key=f"{pruned}/finetune")
    b.edgecnn("export", pruned, "--format", "tflite", "--gzip")
    b.edgecnn("benchmark", pruned, "--formats", "tflite-float32,tflite-int8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 source (folder, archive or cifar10)")
    ap.add_argument("--runs-dir", default="cifar-runs")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    ap.add_argument("--sweep", help="a finished `edgecnn sweep` folder to include (its sweep.md)")
    ap.add_argument("--also", action="append", default=[], metavar="RUN_DIR",
                    help="another finished training run to list under 'Other recipes tried' (repeatable)")
    ap.add_argument("--add-row", action="append", default=[], metavar="RUN_DIR",
                    help="put this run into --out's 'Other recipes tried' table, keeping the rest; run nothing")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--doc-only", action="store_true", help="rewrite the document from the runs; run nothing")
    ap.add_argument("--readme", action="store_true",
                    help="also rewrite README.md's Results (between its results markers) and docs/benchmark.svg")
    ap.add_argument("--update", action="store_true",
                    help="rewrite only --stages' parts of --out (and of README with --readme), keeping the rest")
    a = ap.parse_args()
    if a.add_row:
        add_rows(Path(a.out), [Path(p) for p in a.add_row], a.data)
        print(f"wrote {a.out}")
        return 0
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    if bad := [s for s in stages if s not in STAGES]:
        ap.error(f"--stages: unknown {', '.join(bad)}; use {', '.join(STAGES)}")
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    b = Bench(runs, a.data)
    if not a.doc_only:
        for stage in stages:
            run_regularized(b) if stage == "regularized" else run_preset(b, stage)
    out = Path(a.out)
    if a.update and a.also:
        ap.error("--update keeps 'Other recipes tried' as it is: put runs into it with --add-row")
    if a.update and not out.is_file():
        sys.exit(f"--update: {out} does not exist yet; write it once without --update")
    from edgecnn.fsutil import write_text

    text = write_doc(b, stages, a.sweep, [Path(p) for p in a.also], out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, update_doc(out.read_text(), text) if a.update else text)
    print(f"wrote {out}")
    if a.readme:
        write_readme(b, stages, out, a.sweep, update=a.update)
        print(f"wrote {README} results" + ("" if a.update and "cifar10" not in stages else f" and {SVG}"))
    return 0


# --------------------------------------------------------------------------- the document


def _row(bench: dict | None, name: str) -> dict | None:
    for r in (bench or {}).get("rows", []):
        if r["name"] == name and r["status"] == "ok":
            return r
    return None


def _export(exports: dict | None, file: str) -> dict:
    return next((e for e in (exports or {}).get("exports", []) if e["file"] == file), {})


def _fmt_ms(row: dict | None) -> str:
    return "-" if not row else f"{row['latency_ms_p50']:.3f} ms"


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _train_line(b: Bench, name: str, command: str) -> list[str]:
    m = load(b.runs / name / "metrics.json")
    if not m:
        return [f"`{command}`: not run yet.", ""]
    outer = b.seconds.get(f"{name}/train")
    return [f"`{command}`", "",
            f"Test accuracy **{m['test_accuracy'] * 100:.2f}%** (loss {m['test_loss']:.3f}) after "
            f"{_epochs(m['epochs_run'])}, {_kept(m)}; {m['parameters']:,} parameters, {m['macs'] / 1e6:.1f} M MACs per "
            f"image. Training (model.fit) took **{_minutes(m['train_seconds'])}** ({m['seconds_per_epoch']:.0f} s per "
            f"epoch){_on(m)}" + (f"; the whole command, data loading and final evaluation included, {_minutes(outer)}"
                        if outer else "") + "." + _steal(m.get("cpu_steal_percent")) + _iterator(b.runs / name), ""]


def _iterator(run: Path) -> str:
    if (load(run / "config.json") or {}).get("train_iterator"):
        return ""
    return (" Made before training kept one data iterator: a new one each epoch cost seconds at most epoch "
            "starts (docs/epoch_start.md); see \"Other recipes tried\" for the runs made since.")


def _kept(m: dict) -> str:
    if m.get("kept") == "last":
        return f"the last epoch's weights kept (`--keep last`; best validation epoch {m['best_epoch']})"
    return f"best epoch {m['best_epoch']}"


def _steal(pct) -> str:
    if pct is None:
        return ""
    return (f" During training the hypervisor gave {pct:.0f}% of this machine's CPU time to other guests "
            "(steal time, read from /proc/stat).")


def _exports_table(exports: dict | None) -> list[str]:
    if not exports:
        return []
    lines = ["| file | size KB | gzip -9 KB | smallest .gz KB | verification agreement | max abs dp | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in exports["exports"]:
        v = e.get("verify") or {}
        gz = f"{e['gz_bytes'] / 1024:.0f} ({e['gz_strategy']})" if e.get("gz_bytes") else "-"
        lines.append(f"| {e['file']} | {e.get('size_bytes', 0) / 1024:.0f} | {e.get('gzip_bytes', 0) / 1024:.0f} "
                     f"| {gz} | {v.get('agreement', 0) * 100:.2f}% | {v.get('max_abs_diff', 0):.2e} "
                     f"| {e.get('convert_seconds', 0):.1f} |")
    return lines + [""]


def _targets(b: Bench, stages: list[str]) -> list[str]:
    lines = ["| run | target | measured | met |", "|---|---|---|---|"]
    for preset in (s for s in stages if s in TARGETS):
        f_t, q_t, kb_t, min_t = TARGETS[preset]
        m = load(b.runs / preset / "metrics.json")
        bench = load(b.runs / preset / "benchmark.json")
        if not m:
            lines.append(f"| {preset} | not run | - | - |")
            continue
        q = _row(bench, "tflite-int8")
        checks = [(f"float >= {f_t * 100:g}%", _pct(m["test_accuracy"]), m["test_accuracy"] >= f_t),
                  (f"int8 TFLite >= {q_t * 100:g}%", _pct(q and q["accuracy"]), bool(q) and q["accuracy"] >= q_t),
                  (f"training <= {min_t} min", _minutes(m["train_seconds"]), m["train_seconds"] <= min_t * 60)]
        if kb_t:
            size = q and q.get("size_bytes")
            checks.append((f"int8 file < {kb_t} KB", f"{size / 1024:.0f} KB" if size else "-",
                           bool(size) and size < kb_t * 1024))
        lines += [f"| {preset} | {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in checks]
    return lines + [""]


def write_doc(b: Bench, stages: list[str], sweep: str | None, also: list[Path] = (), out: Path | None = None) -> str:
    from edgecnn.benchmark import table_markdown

    command = f"python tools/bench_cifar10.py --data {b.data}"
    if stages != list(STAGES):
        command += f" --stages {','.join(stages)}"
    if out is not None and out.resolve() != (ROOT / "docs" / "benchmarks.md").resolve():
        command += f" --out {out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out}"

    cores = next((bm["meta"]["machine"]["cores"] for s in stages
                  if (bm := load(b.runs / s / "benchmark.json"))), "?")
    lines = ["# CIFAR-10 (JPEG) benchmarks", "",
             f"Machine: {machines(b, stages)}, {cores} cores, no GPU; the machine is shared, so epoch times vary by "
             "up to 2x within a run. Data: CIFAR-10 as JPEG class folders (pixel values differ slightly from the Keras "
             f"download). Reproduce with `{command}`.", "",
             "Training minutes are wall time on that shared machine. Runs since CPU steal time was recorded "
             "say how much the hypervisor took; for older runs (`regularized`, some of the other recipes) "
             "other jobs may also have shared the two cores, so compare their accuracy, not their minutes.", ""]
    if any(s in TARGETS for s in stages):
        lines += ["## Targets", ""] + _targets(b, stages)
    for preset in (s for s in stages if s in TARGETS):
        base = b.runs / preset
        bench, exports = load(base / "benchmark.json"), load(base / "exports" / "export_report.json")
        lines += [f"## `--preset {preset}`", "",
                  *_train_line(b, preset, f"edgecnn train --data {b.data} --preset {preset}")]
        tta = load(base / "tta.json")
        if tta:
            lines += [f"With flip test-time augmentation (`edgecnn evaluate --tta`; the files below do not include "
                      f"it, those of `export --tta` at the end of this section do): {_pct(tta['test_accuracy'])}.", ""]
        lines += _exports_table(exports)
        if bench:
            lines += [f"`edgecnn benchmark` on the {bench['meta']['images']:,} test images, "
                      f"{bench['meta']['threads']} thread; it took {b.seconds.get(f'{preset}/benchmark', 0):.0f} s.",
                      "", table_markdown(bench["rows"]).rstrip("\n"), ""]
        tq, tf32 = _tta_rows(b, preset)
        if tq:
            q, f32 = _row(bench, "tflite-int8"), _row(bench, "tflite-float32")
            vs = (f", against {q['latency_ms_p50']:.3f} and {f32['latency_ms_p50']:.3f} ms without it (table above, "
                  "measured minutes earlier)" if q and f32 else "")
            arena = f", tensor arena {tq['arena_kb']} KB" if tq.get("arena_kb") is not None else ""
            lines += [f"**Flip TTA inside the files** (`edgecnn export {preset}-tta --format tflite --tta` "
                      f"on a copy of the run, then "
                      f"`edgecnn benchmark {preset}-tta --formats tflite-float32,tflite-int8`): "
                      f"float32 TFLite {_pct(tf32 and tf32['accuracy'])}, int8 TFLite {_pct(tq['accuracy'])} "
                      f"({tq['size_bytes'] / 1024:.0f} KB{arena}); "
                      f"batch-1 median {tq['latency_ms_p50']:.3f} ms int8 and "
                      f"{_fmt_ms(tf32)} float32 on one thread{vs}. Each image is classified as it is and "
                      "mirrored, in one batch of two, so the latency doubles and the weights are stored once.", ""]
        micro = (exports or {}).get("micro")
        if micro:
            lines += [f"TFLite Micro: every op supported; smallest tensor arena **{micro['arena_kb']} KB**, flash "
                      f"**{micro['flash_kb']} KB**; {micro['accuracy'] * 100:.2f}% on {micro['samples']:,} test images "
                      f"against LiteRT int8's {micro['litert_accuracy'] * 100:.2f}% (top-1 agreement "
                      f"{micro['agreement_with_litert'] * 100:.2f}%), {micro['host_ms_per_image']:.1f} ms per image "
                      "with the reference kernels on this host (not a device timing).", ""]
    if also:
        lines += ["## Other recipes tried", "", "Finished runs on the same data and machine, for comparison with the "
                  "presets; each line is the command that reproduces it.", "",
                  "Runs whose translation says *bilinear* were made before translation moved whole pixels: "
                  "their command now trains on sharp images and is not a reproduction. \"Iterator\" *per epoch*: made "
                  "before training kept one endless data iterator, paying seconds at most epoch starts "
                  "(docs/epoch_start.md), so the same time budget bought fewer epochs.", "",
                  ALSO_NOTE, "", *ALSO_HEAD]
        lines += [_also_row(run, b.data) for run in also]
        lines.append("")
    if "regularized" in stages:
        lines += _regularized(b)
    if sweep and (Path(sweep) / "sweep.md").is_file():
        lines += ["## Architecture sweep", "", *_sweep(Path(sweep))]
    return "\n".join(lines).rstrip() + "\n"


ALSO_NOTE = ("\"int8 TFLite\": the run's full-integer TFLite file on the test set, where `edgecnn export` and "
             "`edgecnn benchmark` were run on it.")
ALSO_HEAD = ["| run | command | translation | iterator | epochs | training | CPU steal | test accuracy | int8 TFLite |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
TRAIN_FLAGS = ("arch", "epochs", "batch_size", "optimizer", "lr", "schedule", "label_smoothing", "weight_decay",
               "augment", "translate", "translate_fill", "class_balance", "ema", "val_split", "time_budget", "keep", "seed", "precision")


def _shown_data(recorded: str, data: str | None, run: Path, absolute: str | None = None) -> str:
    """The data source a row's command names: ``data`` (the tool's --data, the path the document's reader
    uses) where the run was trained on that same file, else the path the run recorded. A relative recorded
    path is tried as the run's config resolved it (``absolute``: its data_path), from here and from the folder
    above the run's runs folder (where `edgecnn train` ran, for runs from before data_path)."""
    if not data:
        return recorded
    places = [Path(p) for p in (absolute, recorded) if p]
    places += [] if Path(recorded).is_absolute() else [run.parent.parent / recorded]
    for place in places:
        try:
            if os.path.samefile(place, data):
                return data
        except OSError:  # either is gone or not a file (``cifar10``, ``shapes``)
            continue
    return data if data == recorded else recorded


def _also_row(run: Path, data: str | None = None) -> str:
    from edgecnn.model import TRANSLATE, TRANSLATE_FILL, parse_augment
    from edgecnn.spec import describe, parse
    from edgecnn.train import precision_used

    cfg, m = load(run / "config.json") or {}, load(run / "metrics.json") or {}
    if cfg.get("precision") == "auto":  # what auto picked there, so that the command reproduces the run elsewhere
        cfg["precision"] = precision_used(cfg) or "auto"
    if cfg.get("arch_spec") and describe(parse(cfg.get("arch", ""))) != cfg["arch_spec"]:
        cfg["arch"] = cfg["arch_spec"]  # a preset name whose network has changed since: spell out the one used
    defaults = {"time_budget": 0.0, "keep": "best", "translate": TRANSLATE, "translate_fill": TRANSLATE_FILL, "seed": 0,
                "class_balance": "none",
                "ema": 0.0, "precision": "auto"}
    flags = " ".join(f"--{k.replace('_', '-')} {json.dumps(cfg[k]) if k == 'arch' else cfg[k]}" for k in TRAIN_FLAGS
                     if k in cfg and cfg[k] != defaults.get(k))
    flags += " --whiten" if cfg.get("whiten") else ""
    if cfg.get("teacher"):  # the teacher's own row says how it was trained
        flags += (f" --teacher {cfg['teacher']} --distill-weight {cfg.get('distill_weight')}"
                  f" --distill-temperature {cfg.get('distill_temperature')}")
    steal = m.get("cpu_steal_percent")
    shown = _shown_data(cfg.get("data", "?"), data, run, cfg.get("data_path"))
    command = f"edgecnn train --data {shown} {flags}".replace("|", "\\|")  # a table cell
    layers = cfg.get("augment_layers") or parse_augment(cfg.get("augment", "none"))
    translate = cfg.get("translate_interpolation", "bilinear") if "translate" in layers else "-"
    iterator = cfg.get("train_iterator", "per epoch")
    q = _row(load(run / "benchmark.json"), "tflite-int8")
    return (f"| {run.name} | `{command}` | {translate} | {iterator} | {m.get('epochs_run', '-')} | "
            f"{_minutes(m.get('train_seconds'))} | {'-' if steal is None else f'{steal:.0f}%'} | "
            f"{_pct(m.get('test_accuracy'))} | {_pct(q and q['accuracy'])} |")


def add_rows(doc: Path, runs: list[Path], data: str | None = None) -> None:
    """Replace or append each run's row in ``doc``'s "Other recipes tried" table; keep everything else.
    A run trained on the file ``data`` names (the tool's --data) is shown with that path."""
    lines = doc.read_text().splitlines()
    table = _table_at(lines, "| run | command |")
    if table is None:
        sys.exit(f"{doc}: no 'Other recipes tried' table; write the document with --also first")
    head, end = table
    rows = lines[head + 2:end]
    if lines[head] != ALSO_HEAD[0]:  # a table from before a column was added: its rows say "-" there
        cells = ALSO_HEAD[0].count("|")
        rows = [row + " - |" * (cells - row.replace("\\|", "").count("|")) for row in rows]
        lines[head:head + 2] = [ALSO_NOTE, "", *ALSO_HEAD]
        head, end = head + 2, end + 2
    for run in runs:
        if not (run / "metrics.json").is_file():
            sys.exit(f"{run}: not a finished training run (no metrics.json)")
        mine = next((i for i, row in enumerate(rows) if row.startswith(f"| {run.name} |")), len(rows))
        rows[mine:mine + 1] = [_also_row(run, data)]
    from edgecnn.fsutil import write_text

    write_text(doc, "\n".join(lines[:head + 2] + rows + lines[end:]) + "\n")


def _sweep(folder: Path) -> list[str]:
    """The sweep's verdict and table, after the command that made it (SWEEP_COMMAND for ``cifar``)."""
    body = [ln for ln in (folder / "sweep.md").read_text().splitlines() if not ln.startswith("# ")]
    return [f"`{SWEEP_COMMAND}`" if folder.name == "cifar" else f"`{folder}`", *body, ""]


def _regularized(b: Bench) -> list[str]:
    from edgecnn.benchmark import table_markdown

    name = "regularized"
    base = b.runs / name
    m, bench = load(base / "metrics.json"), load(base / "benchmark.json")
    exports = load(base / "exports" / "export_report.json")
    lines = ["## `regularized`: quantization-aware training and pruning", "",
             *_train_line(b, name, f"edgecnn train --data {b.data} {' '.join(REGULARIZED_ARGS)}")]
    lines += _exports_table(exports)
    if bench:
        lines += [table_markdown(bench["rows"]).rstrip("\n"), ""]
    if not m:
        return lines
    rows = [("float32 (Keras)", m["test_accuracy"], None)]
    if q := _row(bench, "tflite-int8"):
        rows.append(("PTQ int8 TFLite", q["accuracy"], q.get("size_bytes")))
    qb, qm = load(b.runs / f"{name}-qat" / "benchmark.json"), load(b.runs / f"{name}-qat" / "metrics.json")
    if qb and qm:
        rows.append(("QAT float weights (Keras)", qm["test_accuracy"], None))
        label = {"tflite-int8": "QAT int8 TFLite", "onnx-int8": "QAT int8 ONNX"}
        rows += [(label[r["name"]], r["accuracy"], r.get("size_bytes")) for r in qb["rows"]
                 if r["name"] in label and r["status"] == "ok"]
    pb, pm = load(b.runs / f"{name}-pruned50" / "benchmark.json"), load(b.runs / f"{name}-pruned50" / "metrics.json")
    if pb and pm:
        rows.append(("pruned 50% float (Keras)", pm["test_accuracy"], None))
        if q := _row(pb, "tflite-int8"):
            rows.append(("pruned 50% PTQ int8 TFLite", q["accuracy"], q.get("size_bytes")))
    lines += ["`edgecnn finetune regularized --qat --epochs 3`, `edgecnn finetune regularized --prune 0.5 --epochs 3`:",
              "", "| model | test accuracy | size KB |", "|---|---:|---:|"]
    lines += [f"| {n} | {acc * 100:.2f}% | {'' if s is None else f'{s / 1024:.0f}'} |" for n, acc, s in rows]
    unpruned = _export(exports, "model_int8.tflite")
    pruned = _export(load(b.runs / f"{name}-pruned50" / "exports" / "export_report.json"), "model_int8.tflite")
    if pm and unpruned.get("gz_bytes") and pruned.get("gz_bytes"):
        def kb(e, k):
            return f"{e[k] / 1024:.0f} KB"

        lines += ["", "Compressed int8 TFLite, unpruned vs pruned to 50%: with `gzip -9` "
                  f"{kb(unpruned, 'gzip_bytes')} vs {kb(pruned, 'gzip_bytes')} "
                  f"(**{(1 - pruned['gzip_bytes'] / unpruned['gzip_bytes']) * 100:.0f}% smaller**); as the `.gz` "
                  f"`edgecnn export --gzip` writes (zlib {pruned['gz_strategy']} strategy for the pruned file, "
                  f"{unpruned['gz_strategy']} for the unpruned one; a standard gzip stream) "
                  f"{kb(unpruned, 'gz_bytes')} vs {kb(pruned, 'gz_bytes')} "
                  f"(**{(1 - pruned['gz_bytes'] / unpruned['gz_bytes']) * 100:.0f}% smaller**). "
                  "Achieved sparsity per layer: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in pm["sparsity_per_layer"].items()) + "."]
    return lines + [""]


# --------------------------------------------------------------------------- the README's Results


def write_readme(b: Bench, stages: list[str], doc: Path, sweep: str | None, update: bool = False) -> None:
    """Replace README's Results block with a summary of ``doc``'s runs (same data, fewer tables).

    ``update``: replace only the paragraphs and Targets rows that this call writes (see ``update_readme``).
    """
    from edgecnn import plots
    from edgecnn.benchmark import table_markdown

    rel = doc.resolve().relative_to(ROOT) if doc.resolve().is_relative_to(ROOT) else doc
    lines = [MARKERS[0],
             f"Measured on this project's machine ({machines(b, stages)}, 2 cores, no GPU, shared: epoch times vary by "
             "up to 2x) "
             "on CIFAR-10 as JPEG files (`../shared/data/cifar10-jpg.tar.gz`), so these are \"CIFAR-10 (JPEG)\" "
             f"numbers. Full tables: [{rel}]({rel}), written by `python tools/bench_cifar10.py --data "
             f"{b.data} --readme`, which also wrote this section.", ""]
    if any(s in TARGETS for s in stages):
        lines += _targets(b, stages)
    for preset in (s for s in stages if s in TARGETS):
        m = load(b.runs / preset / "metrics.json")
        bench = load(b.runs / preset / "benchmark.json")
        tta = load(b.runs / preset / "tta.json")
        q, f32 = _row(bench, "tflite-int8"), _row(bench, "tflite-float32")
        if not m:
            continue
        tq, _ = _tta_rows(b, preset)
        lines += [f"**`edgecnn train --preset {preset}`**: {_pct(m['test_accuracy'])} float "
                  f"({_pct(tta and tta['test_accuracy'])} with flip test-time augmentation, `evaluate --tta`)"
                  + (f", {_pct(q['accuracy'])} as full-integer int8 TFLite ({q['size_bytes'] / 1024:.0f} KB, "
                     f"{q['latency_ms_p50']:.3f} ms per image on one thread" if q else "")
                  + (f" vs {f32['latency_ms_p50']:.3f} ms float32)" if q and f32 else ")" if q else "")
                  + (f" and {_pct(tq['accuracy'])} with the flip averaging inside the int8 file (`export --tta`: "
                     f"{tq['size_bytes'] / 1024:.0f} KB, {tq['latency_ms_p50']:.3f} ms)" if tq else "")
                  + f"; {_epochs(m['epochs_run'])}, training took {_minutes(m['train_seconds'])}{_on(m)}"
                  + (f" (CPU steal time meanwhile: {m['cpu_steal_percent']:.0f}%)"
                     if m.get("cpu_steal_percent") is not None else "") + ", "
                  f"{m['parameters']:,} parameters, {m['macs'] / 1e6:.1f} M MACs.", ""]
    if "cifar10" in stages and (bench := load(b.runs / "cifar10" / "benchmark.json")):
        from edgecnn.fsutil import ensure_dir

        ensure_dir(SVG.parent)
        plots.accuracy_vs_latency([r for r in bench["rows"] if r["runtime"] != "tflite-micro"], SVG)
        lines += [f"Benchmark of the `cifar10` run: every export against Keras on the "
                  f"{bench['meta']['images']:,} test images, one thread "
                  f"(`edgecnn export --format all`, `edgecnn benchmark`):", "", table_markdown(bench["rows"]), "",
                  f"![accuracy vs batch-1 latency]({SVG.relative_to(ROOT)})", ""]
        micro = (load(b.runs / "cifar10" / "exports" / "export_report.json") or {}).get("micro")
        if micro:
            lines += [f"**Microcontroller**: its int8 model needs a **{micro['arena_kb']} KB** tensor arena and "
                      f"**{micro['flash_kb']} KB** of flash in TFLite Micro, which scores "
                      f"{micro['accuracy'] * 100:.2f}% on the {micro['samples']:,} test images against LiteRT's "
                      f"{micro['litert_accuracy'] * 100:.2f}%.", ""]
    if "regularized" in stages:
        reg = _regularized(b)
        start = next((i for i, ln in enumerate(reg) if ln.startswith("`edgecnn finetune")), None)
        if start is not None:
            lines += ["**Quantization-aware training and pruning** of the `regularized` architecture "
                      f"([details]({rel})):", ""] + reg[start + 2:]
    if sweep and (Path(sweep) / "sweep.md").is_file():
        pareto = ROOT / "docs" / "sweep_pareto.svg"
        if (Path(sweep) / "sweep.json").is_file():
            from edgecnn.fsutil import ensure_dir

            ensure_dir(pareto.parent)
            data = json.loads((Path(sweep) / "sweep.json").read_text())
            winner = next((r for r in data["rows"] if r["candidate"] == data.get("winner")), None)
            plots.pareto(data["rows"], winner, pareto)
        lines += ["**Architecture sweep**: int8 accuracy against int8 size; \"val std\" and \"worst drop\" are the "
                  "spread of the last three epochs' validation accuracy and its largest epoch-to-epoch fall.", "",
                  *_sweep(Path(sweep)), f"![int8 accuracy vs int8 size, Pareto front]({pareto.relative_to(ROOT)})", ""]
    text = README.read_text()
    head, sep, rest = text.partition(MARKERS[0])
    old, sep2, tail = rest.partition(MARKERS[1])
    if not sep or not sep2:
        sys.exit(f"{README} has no {MARKERS[0]} ... {MARKERS[1]} block")
    if not update:  # --update leaves them where they are, as every paragraph it does not write
        lines += other_tools_paragraphs(old)
    lines.append(MARKERS[1])
    block = "\n".join(lines)
    if update:
        block = update_readme(MARKERS[0] + old + MARKERS[1], block)
    README.write_text(head + block + tail)


# Results paragraphs on what other tools measure: README keeps them as they are (their text is written by hand
# around those tools' docs); a README without one gets the caption and the first table of the doc.
OTHER_TOOLS = {
    "train_speed.md": "**Training throughput** (batch 128, tf.data, one process per measurement, variants timed "
                      "alternately; `python tools/bench_train_speed.py --data ../shared/data/cifar10-jpg.tar.gz`, "
                      "[docs/train_speed.md](docs/train_speed.md)): images per second and the ratio to float32 "
                      "without XLA, the default.",
    "epoch_start.md": "**Epoch starts** (the cifar10 network on the 49,000 training images; "
                      "`python tools/bench_epoch_start.py --data ../shared/data/cifar10-jpg.tar.gz`, "
                      "[docs/epoch_start.md](docs/epoch_start.md)). Training fits one endless, reshuffled "
                      "iterator with `steps_per_epoch` instead of a new iterator per epoch.",
}


def other_tools_paragraphs(old_block: str) -> list[str]:
    """The Results paragraphs (each with its tables) on docs that other tools write: ``old_block``'s own where it
    has them, else each doc's caption and first table."""
    out: list[str] = []
    for name, caption in OTHER_TOOLS.items():
        title = caption.split(" (", 1)[0]
        kept = next((g for g in _groups(old_block) if g[0].startswith(title)), None)
        if kept:
            out += ["\n\n".join(kept), ""]
        elif (doc := ROOT / "docs" / name).is_file():
            table = _table_at(doc.read_text().splitlines(), "|")
            out += [caption, "", *doc.read_text().splitlines()[slice(*table)], ""] if table else [caption, ""]
    return out


# --------------------------------------------------------------------------- --update: merge into what is there


def _merge_targets(old: list[str], new: list[str]) -> list[str]:
    """The Targets table ``old`` with the rows of every run that ``new`` has replaced by ``new``'s."""
    runs = {ln.split("|")[1].strip() for ln in new[2:]}
    kept = [ln for ln in old[2:] if ln.split("|")[1].strip() not in runs]
    order = {name: i for i, name in enumerate(TARGETS)}
    rows = sorted(kept + new[2:], key=lambda ln: order.get(ln.split("|")[1].strip(), len(order)))
    return old[:2] + rows


def _table_at(lines: list[str], head: str) -> tuple[int, int] | None:
    start = next((i for i, ln in enumerate(lines) if ln.startswith(head)), None)
    if start is None:
        return None
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def _with_targets(old_text: str, new_text: str) -> str:
    """``old_text`` whose Targets table has taken ``new_text``'s rows."""
    old, new = old_text.split("\n"), new_text.split("\n")
    o, n = _table_at(old, "| run | target |"), _table_at(new, "| run | target |")
    if not n:
        return old_text
    if not o:
        sys.exit("--update: the file has no Targets table to update; write it once without --update")
    return "\n".join(old[:o[0]] + _merge_targets(old[o[0]:o[1]], new[n[0]:n[1]]) + old[o[1]:])


def update_doc(old: str, new: str) -> str:
    """``old`` (docs/benchmarks.md) with every ``## `` section of ``new`` replacing its namesake, and its Targets rows.

    A section that ``old`` lacks goes before "Other recipes tried" (or at the end).
    """
    def sections(text: str) -> list[list[str]]:
        out: list[list[str]] = [[]]
        for ln in text.rstrip("\n").split("\n"):
            if ln.startswith("## "):
                out.append([])
            out[-1].append(ln)
        return out

    old_s, new_s = sections(_with_targets(old, new)), sections(new)
    for sec in new_s[1:]:
        if sec[0] == "## Targets":
            continue
        at = next((i for i, o in enumerate(old_s) if o[0] == sec[0]), None)
        if at is None:
            at = next((i for i, o in enumerate(old_s) if o[0] == "## Other recipes tried"), len(old_s))
            old_s.insert(at, sec)
        else:
            old_s[at] = sec
    texts = ("\n".join(sec).strip("\n") for sec in old_s)
    return "\n\n".join(t for t in texts if t.strip()) + "\n"


def _groups(text: str) -> list[list[str]]:
    """``text``'s paragraphs (blank-line separated), each with the tables and images after it."""
    out: list[list[str]] = []
    for para in text.split("\n\n"):
        if out and para.lstrip().startswith(("|", "![")):
            out[-1].append(para)
        else:
            out.append([para])
    return out


def update_readme(old: str, new: str) -> str:
    """README's Results block ``old`` with ``new``'s paragraphs and Targets rows put in.

    A paragraph (blank-line separated) is known by the start of its first line, up to its first colon; the tables
    and images after it belong to it. Each of ``new``'s paragraphs replaces its namesake in ``old`` (with what
    belongs to it), or goes after the last one replaced.
    """
    def key(group: list[str]) -> str:
        return group[0].split(":", 1)[0]

    old_g, new_g = _groups(_with_targets(old, new)), _groups(new)
    last = None
    for g in new_g:
        if g[0].startswith(MARKERS[0]) or MARKERS[1] in g[0]:  # the opening (Targets: above) and the end
            continue
        at = next((i for i, o in enumerate(old_g) if key(o) == key(g)), None)
        if at is None:
            at = (last + 1) if last is not None else len(old_g) - 1
            old_g.insert(at, g)
        else:
            old_g[at] = g
        last = at
    return "\n\n".join(p for g in old_g for p in g)

if __name__ == "__main__":
    sys.exit(main())
