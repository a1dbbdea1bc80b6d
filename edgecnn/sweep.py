"""``edgecnn sweep``: train many candidate architectures and find the smallest one that meets the
accuracy target with its deployed (full-integer int8 TFLite) numbers.

Each candidate is a normal run directory under ``sweeps/<name>/runs/``; finished candidates are
skipped when a sweep is run again, a failing one becomes a row with its error.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import ensure_dir, write_json, write_text
from edgecnn.spec import PRESETS, describe, parse

GRID_KEYS = {"widths", "dense", "dropout", "bn"}
COLUMNS = ["rank", "candidate", "arch", "status", "params", "macs", "int8_kb", "float_acc", "int8_acc",
           "int8_agreement", "int8_latency_ms", "best_val_acc", "final_val_acc", "val_std_last3", "worst_val_drop",
           "meets_target", "pareto", "error"]


def expand_grid(text: str) -> list[str]:
    """``widths=16,32;dense=8,64;dropout=0,0.25;bn=on,off`` -> specs of the form
    ``C: w w dD 2w 2w dD | D: dense`` (n on every conv with bn=on; dense=0 means no hidden layer)."""
    values: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, vals = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in GRID_KEYS or not vals.strip():
            raise EdgeCNNError(f"--grid: bad part {part!r}; use keys {', '.join(sorted(GRID_KEYS))}, e.g. "
                               "'widths=16,32;dense=8,64;dropout=0,0.25;bn=on,off'")
        values[key] = [v.strip() for v in vals.split(",") if v.strip()]
    try:
        widths = [int(v) for v in values.get("widths", ["16"])]
        dense = [int(v) for v in values.get("dense", ["0"])]
        dropout = [float(v) for v in values.get("dropout", ["0"])]
    except ValueError as exc:
        raise EdgeCNNError(f"--grid: {exc}") from None
    bns = values.get("bn", ["on"])
    if any(b not in ("on", "off") for b in bns):
        raise EdgeCNNError("--grid: bn takes on and/or off")
    specs = []
    for w, d, p, b in itertools.product(widths, dense, dropout, bns):
        n = "n" if b == "on" else ""
        drop = f" d{p:g}" if p else ""
        conv = f"C: {w}{n} {w}{n}{drop} {2 * w}{n} {2 * w}{n}{drop}"
        specs.append(conv + (f" | D: {d}" if d else ""))
    return specs


def candidates(archs: list[str], presets: list[str], grid: str | None) -> list[str]:
    out: list[str] = []
    for p in presets:
        if p not in PRESETS:
            raise EdgeCNNError(f"--preset {p!r}: unknown (use {', '.join(PRESETS)})")
    for spec in [*archs, *(PRESETS[p] for p in presets), *(expand_grid(grid) if grid else [])]:
        text = describe(parse(spec))  # validates, and makes equal specs compare equal
        if text not in out:
            out.append(text)
    if not out:
        raise EdgeCNNError("sweep needs candidates: --arch SPEC, --preset NAME or --grid ...")
    return out


def stability(history: list[dict]) -> dict:
    val = [r.get("val_accuracy", r.get("accuracy")) for r in history]
    val = [v for v in val if v is not None]
    drops = [a - b for a, b in zip(val, val[1:])]
    return {"best_val_acc": max(val) if val else None, "final_val_acc": val[-1] if val else None,
            "val_std_last3": statistics.pstdev(val[-3:]) if len(val) >= 2 else 0.0,
            "worst_val_drop": max([0.0, *drops])}


def run_candidate(idx: int, arch: str, root: Path, train_cfg, log) -> dict:
    from edgecnn.benchmark import BenchmarkConfig, benchmark
    from edgecnn.export import ExportConfig, export
    from edgecnn.train import read_history, train

    name = f"cand{idx:02d}"
    run = root / "runs" / name
    row = {"candidate": name, "arch": arch, "status": "ok"}
    done = run / "benchmark.json"
    if done.is_file() and json.loads((run / "config.json").read_text()).get("arch") == arch:
        log(f"[{name}] done before: {arch}")
    else:
        if run.exists():
            shutil.rmtree(run)  # an interrupted candidate starts again
        log(f"[{name}] {arch}")
        train(replace(train_cfg, arch=arch, name=name, runs_dir=str(root / "runs")), log=lambda m: None, quiet=True)
        export(ExportConfig(run=str(run), formats="tflite", quantize="int8", verify_samples=256),
               log=lambda m: None)
        _, code = benchmark(BenchmarkConfig(run=str(run), formats="tflite-int8", runs=50, min_seconds=0.5,
                                            batch_sizes=(1,)), log=lambda m: None)
        if code == 2:
            raise EdgeCNNError("benchmark row failed")
    metrics = json.loads((run / "metrics.json").read_text())
    rows = {r["name"]: r for r in json.loads(done.read_text())["rows"]}
    int8 = rows["tflite-int8"]
    row.update({"params": metrics["parameters"], "macs": metrics["macs"], "int8_kb": int8["size_bytes"] / 1024,
                "float_acc": rows["keras"]["accuracy"], "int8_acc": int8["accuracy"],
                "int8_agreement": int8["agreement"], "int8_latency_ms": int8["latency_ms_p50"], "run": str(run)})
    row.update(stability(read_history(run / "history.csv")))
    return row


def pareto(rows: list[dict]) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["pareto"] = not any(o is not r and o["int8_acc"] >= r["int8_acc"] and o["int8_kb"] <= r["int8_kb"]
                              and (o["int8_acc"] > r["int8_acc"] or o["int8_kb"] < r["int8_kb"]) for o in ok)


def sweep(name: str, archs: list[str], presets: list[str], grid: str | None, target: float | None, train_cfg,
          sweeps_dir: str = "sweeps", log=print) -> tuple[list[dict], dict | None]:
    if target is not None and not 0 <= target <= 1:
        raise EdgeCNNError(f"--target is an accuracy in [0, 1], got {target}")
    specs = candidates(archs, presets, grid)
    train_cfg.check()
    root = ensure_dir(Path(sweeps_dir) / name)
    write_json(root / "plan.json", {"candidates": specs, "train": asdict(train_cfg), "target": target})
    log(f"sweep {root}: {len(specs)} candidates, {train_cfg.epochs} epochs each on {train_cfg.data}")
    rows = []
    for i, arch in enumerate(specs, 1):
        try:
            rows.append(run_candidate(i, arch, root, train_cfg, log))
        except EdgeCNNError as exc:
            rows.append({"candidate": f"cand{i:02d}", "arch": arch, "status": "failed", "error": str(exc)})
            log(f"[cand{i:02d}] failed: {exc}")
        except Exception as exc:  # one broken candidate never ends the sweep
            rows.append({"candidate": f"cand{i:02d}", "arch": arch, "status": "failed",
                         "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            log(f"[cand{i:02d}] failed: {type(exc).__name__}: {exc}")
    pareto(rows)
    for r in rows:
        r["meets_target"] = r["status"] == "ok" and target is not None and r["int8_acc"] >= target
    winner = min((r for r in rows if r["meets_target"]), key=lambda r: (r["int8_kb"], -r["int8_acc"]), default=None)
    ranked = sorted(rows, key=lambda r: (r["status"] != "ok", -(r.get("int8_acc") or 0), r.get("int8_kb") or 0))
    for k, r in enumerate(ranked, 1):
        r["rank"] = k
    write_outputs(root, ranked, winner, target)
    return ranked, winner


def table_markdown(rows: list[dict], winner: dict | None) -> str:
    head = ["#", "candidate", "arch", "params", "MACs", "int8 KB", "float %", "int8 %", "agree %", "int8 ms",
            "val std", "worst drop", ""]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        arch = r["arch"].replace("|", "\\|")  # a pipe inside a table cell must be escaped, code span or not
        if r["status"] != "ok":
            out.append(f"| {r['rank']} | {r['candidate']} | `{arch}` | failed: {r.get('error', '')} |" +
                       " |" * (len(head) - 4))
            continue
        mark = "**winner**" if winner is r else ("pareto" if r.get("pareto") else "")
        out.append(f"| {r['rank']} | {r['candidate']} | `{arch}` | {r['params']:,} | {r['macs'] / 1e6:.2f} M | "
                   f"{r['int8_kb']:.0f} | {r['float_acc'] * 100:.2f} | {r['int8_acc'] * 100:.2f} | "
                   f"{r['int8_agreement'] * 100:.2f} | {r['int8_latency_ms']:.3f} | {r['val_std_last3'] * 100:.2f} | "
                   f"{r['worst_val_drop'] * 100:.2f} | {mark} |")
    return "\n".join(out) + "\n"


def write_outputs(root: Path, rows: list[dict], winner: dict | None, target: float | None) -> None:
    from edgecnn import plots

    write_json(root / "sweep.json", {"target": target, "winner": winner["candidate"] if winner else None,
                                     "rows": rows})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(root / "sweep.csv", buf.getvalue())
    verdict = (f"Winner (smallest int8 model with int8 accuracy >= {target:.2%}): **{winner['candidate']}** "
               f"`{winner['arch']}`." if winner else
               (f"No candidate reached the int8 accuracy target {target:.2%}." if target else "No --target given."))
    write_text(root / "sweep.md", f"# Sweep {root.name}\n\n{verdict}\n\n{table_markdown(rows, winner)}")
    plots.pareto(rows, winner, root / "pareto.png")
