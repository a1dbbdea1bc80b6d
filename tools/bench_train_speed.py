"""Training throughput (images/s at batch 128) per architecture, with/without XLA and augmentation.

    python tools/bench_train_speed.py --data ../shared/data/cifar10-jpg.tar.gz [--images 5000] [--rounds 2]

Variants of one architecture are timed alternately, round after round, so machine noise
hits them alike; the median of the rounds is reported with the ratio to the default.
Seconds per epoch are extrapolated to the 45,000-image CIFAR-10 training split.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgecnn import data as data_mod
from edgecnn import model as model_mod
from edgecnn.train import TrainConfig, make_dataset, make_optimizer, make_schedule

VARIANTS = [("augment, no XLA (default)", True, False), ("augment, XLA", True, True),
            ("no augment, no XLA", False, False), ("no augment, XLA", False, True)]


def build(arch, shape, n_classes, augment, xla, steps):
    from edgecnn._tf import keras

    core = model_mod.build_core(arch, shape, n_classes)
    m = model_mod.build_train_model(core, model_mod.parse_augment("light" if augment else "none"))
    cfg = TrainConfig(epochs=1)
    m.compile(optimizer=make_optimizer(cfg, make_schedule(cfg, steps), "float32"),
              loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"], jit_compile=xla)
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--archs", default="basic,regularized,resnet8")
    a = ap.parse_args()
    ds = data_mod.load(a.data)
    x, y = ds.x_train[: a.images], ds.y_train[: a.images]
    train = make_dataset(x, y, ds.num_classes, a.batch_size, True, 0)
    steps = -(-len(x) // a.batch_size)
    print("| architecture | variant | images/s | s per 45k epoch | vs default |")
    print("|---|---|---:|---:|---:|")
    for arch in a.archs.split(","):
        models = {name: build(arch, ds.input_shape, ds.num_classes, aug, xla, steps) for name, aug, xla in VARIANTS}
        for m in models.values():  # compile (every batch shape, for XLA) and warm up outside the timing
            m.fit(train, epochs=1, verbose=0)
        times = {name: [] for name in models}
        for _ in range(a.rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.fit(train, epochs=1, verbose=0)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times[VARIANTS[0][0]])
        for name, _, _ in VARIANTS:
            med = statistics.median(times[name])
            ips = len(x) / med
            print(f"| {arch} | {name} | {ips:.0f} | {45000 / ips:.0f} | {base / med:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
