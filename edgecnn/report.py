"""``RUN/report.md`` and ``RUN/report.html``: the page a user attaches to a pull request."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from edgecnn.fsutil import sha256, write_text


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


TARGET_LABELS = {"tensorrt": " (for TensorRT)", "cpu-no-vnni": " (7-bit weights)"}  # export --onnx-target


def _export_table(report: dict) -> list[list[str]]:
    rows = [["file", "status", "size KB", "gzip -9 KB", "smallest .gz KB", "input", "quantization (in)", "agreement",
             "max abs dp", "seconds"]]
    for e in report.get("exports", []):
        inp = (e.get("inputs") or [{}])[0]
        q = inp.get("quantization")
        v = e.get("verify") or {}
        rows.append([
            e["file"] + TARGET_LABELS.get(e.get("onnx_target"), ""),
            e["status"] if e["status"] == "ok" else f"failed: {e.get('error', '')}",
            f"{e['size_bytes'] / 1024:.0f}" if e.get("size_bytes") else "-",
            f"{e['gzip_bytes'] / 1024:.0f}" if e.get("gzip_bytes") else "-",
            f"{e['gz_bytes'] / 1024:.0f} ({e['gz_strategy']})" if e.get("gz_bytes") else "-",
            f"{inp.get('dtype', '-')} {inp.get('shape', '')}",
            f"scale {q['scale']:.4g}, zp {q['zero_point']}" if q else "-",
            f"{v['agreement'] * 100:.2f}%" if v.get("agreement") is not None else "-",
            f"{v['max_abs_diff']:.2e}" if v.get("max_abs_diff") is not None else "-",
            f"{e.get('convert_seconds', 0):.1f}",
        ])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(out) + "\n"


def _bench_rows(bench: dict) -> list[list[str]]:
    from edgecnn.benchmark import table_markdown

    lines = table_markdown(bench["rows"]).strip().splitlines()
    table = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return [table[0], *table[2:]]


def write(run_dir: Path) -> tuple[Path, Path]:
    """Gather metrics, plots, export and benchmark tables into report.md and report.html."""
    run_dir = Path(run_dir)
    metrics = _load(run_dir / "metrics.json") or {}
    cfg = _load(run_dir / "config.json") or {}
    exports = _load(run_dir / "exports" / "export_report.json")
    bench = _load(run_dir / "benchmark.json")
    sections: list[tuple[str, str, list | None, str | None]] = []  # (title, text, table, image)

    summary = [["metric", "value"],
               ["data", str(metrics.get("data", cfg.get("data", "-")))],
               ["architecture", str(cfg.get("arch_spec", cfg.get("arch", "-")))],
               ["test accuracy", f"{metrics['test_accuracy'] * 100:.2f}%" if "test_accuracy" in metrics else "-"],
               ["balanced accuracy (mean per-class recall)",
                f"{metrics['test_balanced_accuracy'] * 100:.2f}%" if "test_balanced_accuracy" in metrics else "-"],
               ["test loss", f"{metrics.get('test_loss', float('nan')):.4f}"],
               ["parameters", f"{metrics.get('parameters', 0):,}"],
               ["MACs per image", f"{metrics.get('macs', 0):,}"],
               ["epochs (kept)", f"{metrics.get('epochs_run', '-')} "
                                 f"({metrics.get('kept_epoch', metrics.get('best_epoch', '-'))}"
                                 f"{', last' if metrics.get('kept') == 'last' else ''})"],
               ["class balance", f"{metrics.get('class_balance', 'none')}"],
               ["training time", f"{metrics.get('train_seconds', 0):.1f} s on {metrics.get('device', '-')}"
                                 + (f" ({metrics['cpu']}, {metrics.get('cpu_cores', '?')} cores)"
                                    if metrics.get("cpu") and "GPU" not in metrics.get("device", "") else "")]]
    if metrics.get("ema"):
        summary.append(["weights", f"moving average (--ema {metrics['ema']:g}), BatchNorm statistics recomputed"])
    if teacher := metrics.get("teacher"):
        summary.append(["distilled from", f"{teacher['file']} (test accuracy {teacher['test_accuracy'] * 100:.2f}%; "
                                          f"weight {teacher['weight']:g}, temperature {teacher['temperature']:g}; "
                                          f"the student agrees with it on {teacher['agreement'] * 100:.2f}%)"])
    imported = cfg.get("imported")
    if imported:  # edgecnn import: a model trained elsewhere, no training rows
        summary[2] = ["architecture", f"imported from {imported.get('from', '-')}"]
        summary = summary[:8] + [
            ["input range (0..255 pixels mapped to)", str(imported.get("input_range", "-"))],
            ["augmentation layers removed", ", ".join(imported.get("augmentation_removed") or []) or "none"],
            ["softmax added (the model gave logits)", "yes" if imported.get("softmax_added") else "no"]]
    sections.append(("Imported model" if imported else "Training", "", summary, None))
    if (run_dir / "curves.png").is_file():
        sections.append(("Learning curves", "", None, "curves.png"))
    sections.append(("Confusion matrix (test split)", "", None, "confusion_matrix.png"))
    if exports:
        tfl = [e for e in exports.get("exports", []) if e.get("format") == "tflite" and e.get("status") == "ok"]
        meta = (" The .tflite files carry TFLite metadata (class names, input normalization): MediaPipe Tasks "
                "classifies with each file alone." if tfl and all(e.get("tflite_metadata") for e in tfl) else "")
        ok = [e for e in exports.get("exports", []) if e.get("status") == "ok"]
        tta = [e["file"] for e in ok if e.get("tta")]
        if tta:
            meta += (" " + ("Every file" if len(tta) == len(ok) else ", ".join(tta)) + " averages each image's output "
                     "with its mirror image's (`export --tta`): twice the latency, compared with Keras under the same "
                     "averaging.")
        sections.append(("Exports", "Each file was loaded in its own runtime and compared with Keras on held-out "
                         "images (agreement on images whose top-1 leads by at least 0.05)." + meta,
                         _export_table(exports), None))
    else:
        sections.append(("Exports", "No exports yet: run `edgecnn export --format all`.", None, None))
    quant = _load(run_dir / "quant_debug.json")
    if quant and quant.get("layers") and (run_dir / "model.keras").is_file() \
            and quant.get("model_sha256") == sha256(run_dir / "model.keras"):  # not a table of an earlier model
        from edgecnn import quant_debug

        sections.append(("Per-layer int8 error (edgecnn quant-debug)", " ".join(quant_debug.notes(quant)),
                         quant_debug.table(quant), None))
    quant = _load(run_dir / "quant_debug_onnx.json")
    if quant and quant.get("layers"):
        from edgecnn import quant_debug, quant_debug_onnx

        if quant_debug_onnx.file_matches(quant):  # not a table of an earlier file
            sections.append(("Per-layer int8 error of model_int8.onnx (edgecnn quant-debug --format onnx)",
                             " ".join(quant_debug.notes(quant)), quant_debug.table(quant), None))
    if bench:
        m = bench["meta"]
        text = (f"{m['images']} test images, {m['threads']} thread(s), {m['machine']['cpu']} "
                f"({m['machine']['cores']} cores). Drop and flips are against the Keras row; McNemar's exact p "
                "below 0.05 means the difference is unlikely to be noise.")
        sections.append(("Benchmark", text, _bench_rows(bench), "benchmark.png"))
    else:
        sections.append(("Benchmark", "No benchmark yet: run `edgecnn benchmark`.", None, None))

    title = f"edgecnn report: {run_dir.name}"
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, text, table, image in sections:
        md += [f"## {name}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        if text:
            md += [text, ""]
            body.append(f"<p>{html.escape(text)}</p>")
        if table:
            md.append(_md_table(table))
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                  for r in table[1:]) + "</table>")
        if image and (run_dir / image).is_file():
            md += [f"![{name}]({image})", ""]
            data = base64.b64encode((run_dir / image).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "th{background:#f3f3f3}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    write_text(md_path, "\n".join(md) + "\n")
    write_text(html_path, page)
    return md_path, html_path
