"""``edgecnn run``: train, export every variant, benchmark, and write the report."""

from __future__ import annotations

from pathlib import Path

from edgecnn.errors import EdgeCNNError


def run_pipeline(train_cfg, export_cfg, bench_cfg, log=print) -> tuple[Path, int]:
    """Returns (run directory, exit code of the benchmark gate: 0, 1 or 2)."""
    from edgecnn import report
    from edgecnn.benchmark import benchmark, table_markdown
    from edgecnn.export import export
    from edgecnn.train import train

    log("== train")
    run_dir = train(train_cfg, log=log)
    export_cfg.run = bench_cfg.run = str(run_dir)
    log("== export")
    code = 0
    try:
        export(export_cfg, log=log)
    except EdgeCNNError as exc:  # a failed export is a row in the report, not the end of the pipeline
        log(f"export: {exc}")
        code = 2
    log("== benchmark")
    rows, bench_code = benchmark(bench_cfg, log=log)
    md, html = report.write(run_dir)
    log("")
    log(table_markdown(rows))
    log(f"report: {md} ({html.name} has the images embedded)")
    return run_dir, max(code, bench_code) if bench_code != 1 else 1
