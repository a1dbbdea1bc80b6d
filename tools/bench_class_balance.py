"""Imbalanced classes: `--class-balance none` vs `oversample` vs `weight`, on shapes folders.

    python tools/bench_class_balance.py [--ratios 20,100] [--seeds 1,2,3] [--epochs 8]

Writes image folders from the built-in offline `shapes` data (no download): three classes, circle and
square with 1,500 training images each and ring, which looks like a circle, with 1,500 / RATIO; the test
split has 150 of each, so its accuracy is also its balanced accuracy. Trains the default network
(`regularized`, batch 64, 8 epochs) once per ratio, mode and seed through the library, as
`edgecnn train --data FOLDER --epochs 8 --class-balance MODE --seed SEED` does, and prints a markdown
table of test accuracy and the rare class's recall (mean over the seeds, each run's in brackets).
About 45 s per run on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MAJORITY = 1500
TEST = 150
CLASSES = {"circle": "circle", "square": "square", "ring": "ring"}  # folder name -> shapes class


def write_folders(root: Path, ratio: int) -> Path:
    from edgecnn.data import shapes

    x, y = shapes.generate(13 * (MAJORITY + TEST), 32, 3, seed=5)  # about 1.3x what each class needs
    counts = {"circle": MAJORITY, "square": MAJORITY, "ring": MAJORITY // ratio}
    out = root / f"ratio{ratio}"
    for name, shape in CLASSES.items():
        idx = np.flatnonzero(y == shapes.CLASSES.index(shape))
        if len(idx) < TEST + counts[name]:
            raise SystemExit(f"not enough {shape} images generated ({len(idx)})")
        for split, chosen in (("test", idx[:TEST]), ("train", idx[TEST:TEST + counts[name]])):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(x[i]).save(folder / f"{i}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="20,100", help="majority / ring training images, comma list")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--modes", default="none,oversample,weight")
    args = ap.parse_args()
    ratios = [int(r) for r in args.ratios.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")

    with tempfile.TemporaryDirectory(prefix="edgecnn-balance-") as tmp:
        tmp = Path(tmp)
        os.environ["EDGECNN_CACHE"] = str(tmp / "cache")
        from edgecnn.train import TrainConfig, train

        rows = []
        t0 = time.perf_counter()
        for ratio in ratios:
            folder = write_folders(tmp, ratio)
            for mode in modes:
                acc, rare = [], []
                for seed in seeds:
                    run = train(TrainConfig(data=str(folder), epochs=args.epochs, class_balance=mode, seed=seed,
                                            runs_dir=str(tmp / "runs")), log=lambda m: None, quiet=True)
                    m = json.loads((run / "metrics.json").read_text())
                    acc.append(m["test_accuracy"] * 100)
                    rare.append(m["per_class_accuracy"]["ring"] * 100)
                    print(f"ratio {ratio} {mode} seed {seed}: {acc[-1]:.1f}% (ring {rare[-1]:.1f}%)", flush=True)
                rows.append((ratio, MAJORITY // ratio, mode, acc, rare))
    print(f"\n{len(rows) * len(seeds)} runs, {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("| circle : square : ring (training images) | --class-balance | test accuracy % | ring recall % |")
    print("|---|---|---:|---:|")
    for ratio, n_rare, mode, acc, rare in rows:
        def cell(v):
            return f"{statistics.mean(v):.1f} ({', '.join(f'{a:.1f}' for a in v)})"
        print(f"| {MAJORITY} : {MAJORITY} : {n_rare} | {mode} | {cell(acc)} | {cell(rare)} |")


if __name__ == "__main__":
    main()
