"""BatchNorm statistics of augmented training: a run's model as saved vs recomputed on unaugmented images.

    python tools/bench_bn_recompute.py RUN [RUN ...] [--data SOURCE] [--seeds 0,1,2] [--images 10000]

For runs trained before `edgecnn train` began recomputing the statistics after augmented training (their
`metrics.json` has `batchnorm_recalibration_images` 0): their BatchNorm layers hold the moving averages
gathered on translated images. Each seed recomputes them as `edgecnn train` now does (precise BN over
up to IMAGES unaugmented training images in the run's batch size, shuffled with the seed) and scores the test and
validation splits the run was trained with; "lost/gained" counts the test images whose prediction
turned wrong/right; "seconds" is one recomputation's time. Prints a markdown table. Runs trained by the current code already hold recomputed
statistics (the column "recomputed before" counts their images): for them it shows the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--data", default=None, help="the runs' data source, where it has moved")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=10_000)
    args = ap.parse_args()

    from edgecnn import balance, model as model_mod
    from edgecnn.evaluate import load_run_data

    for run in map(Path, args.runs):
        if not (run / "model.keras").is_file() or not (run / "metrics.json").is_file():
            raise SystemExit(f"error: {run}: not a finished run directory (no model.keras or metrics.json)")
    print("| run | epochs | recomputed before | test, as saved | test, recomputed (seed: lost/gained) "
          "| validation, as saved -> recomputed | seconds |")
    print("|---|---:|---:|---:|---|---|---:|")
    for run in map(Path, args.runs):
        cfg = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        ds = load_run_data(run, args.data)
        images = balance.training_images(ds.x_train, ds.y_train, cfg.get("class_balance", "none"),
                                         cfg.get("seed", 0), args.images)
        core = model_mod.load_keras(run / "model.keras")
        saved = core.get_weights()
        test0, val0 = predict(core, ds.x_test) == ds.y_test, predict(core, ds.x_val) == ds.y_val
        cells, vals, seconds = [], [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            core.set_weights(saved)
            start = time.perf_counter()
            model_mod.recalibrate_batchnorm(core, images, cfg["batch_size"], seed, args.images)
            seconds.append(time.perf_counter() - start)
            test1, val1 = predict(core, ds.x_test) == ds.y_test, predict(core, ds.x_val) == ds.y_val
            cells.append(f"{test1.mean():.2%} ({seed}: {int((test0 & ~test1).sum())}/{int((~test0 & test1).sum())})")
            vals.append(share(val1))
        print(f"| {run.name} | {metrics.get('epochs_run', '?')} | {metrics.get('batchnorm_recalibration_images', 0)} "
              f"| {test0.mean():.2%} | {', '.join(cells)} | {share(val0)} -> {', '.join(vals)} "
              f"| {min(seconds):.1f} |", flush=True)


def predict(core, x: np.ndarray) -> np.ndarray:
    return core.predict(x.astype("float32"), batch_size=256, verbose=0).argmax(1)


def share(right: np.ndarray) -> str:
    return f"{right.mean():.1%}" if len(right) else "-"  # no validation split: -


if __name__ == "__main__":
    main()
