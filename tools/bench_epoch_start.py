"""What Keras pays at the start of each epoch: a new iterator per epoch vs one endless iterator.

    python tools/bench_epoch_start.py --data ../shared/data/cifar10-jpg.tar.gz [--arch cifar10] [--rounds 2]

`model.fit` on a finite tf.data dataset opens a new iterator every epoch; on a repeated
dataset with ``steps_per_epoch`` it keeps one. Both are timed on the same model, alternately,
``--epochs`` per fit call; the first epoch of every call opens an iterator in both cases, so
only the later epochs are compared. Prints a markdown table: median seconds of those epochs
and of their first training step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from edgecnn import data as data_mod
from edgecnn import model as model_mod
from edgecnn.train import TrainConfig, make_dataset, make_optimizer, make_schedule


def timer():
    from edgecnn._tf import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.first_steps = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.first_steps.append(time.perf_counter() - self.t0)

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(time.perf_counter() - self.t0)

    return EpochTimer()


def compiled(core, augment: tuple[str, ...], epochs: int, steps: int, label_smoothing=0.0, xla=False,
             precision="float32"):
    """``core`` behind ``augment``, compiled with the training defaults' optimizer and schedule."""
    from edgecnn._tf import keras

    model = model_mod.build_train_model(core, augment)
    cfg = TrainConfig(epochs=epochs)
    model.compile(optimizer=make_optimizer(cfg, make_schedule(cfg, steps), precision),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"], jit_compile=xla)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="cifar10")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fit call (>= 2)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.epochs < 2 or a.rounds < 1:
        ap.error("--epochs must be at least 2 (the first epoch of each call is not compared), --rounds at least 1")
    ds = data_mod.load(a.data, val_split=0.02)
    steps = math.ceil(len(ds.x_train) / a.batch_size)
    core = model_mod.build_core(a.arch, ds.input_shape, ds.num_classes, fused_batchnorm=True)  # as edgecnn train
    model = compiled(core, model_mod.parse_augment("light"), a.epochs * a.rounds * 2, steps, label_smoothing=0.1)
    variants = {
        "new iterator per epoch (finite dataset)": (make_dataset(ds.x_train, ds.y_train, ds.num_classes,
                                                                 a.batch_size, True, 0), None),
        "one iterator (repeated, steps_per_epoch)": (make_dataset(ds.x_train, ds.y_train, ds.num_classes,
                                                                  a.batch_size, True, 0, repeat=True), steps),
    }
    timed = {name: ([], []) for name in variants}
    for _ in range(a.rounds):
        for name, (train, spe) in variants.items():
            t = timer()
            model.fit(train, epochs=a.epochs, steps_per_epoch=spe, callbacks=[t], verbose=0)
            timed[name][0].extend(t.epochs[1:])
            timed[name][1].extend(t.first_steps[1:])
    print(f"{len(ds.x_train)} images, batch {a.batch_size}, `{a.arch}`; epochs 2..{a.epochs} of each of "
          f"{a.rounds} alternating fit calls per variant\n")
    print("| iterator | epochs timed | median s per epoch | median s of the first step | slowest first step |")
    print("|---|---:|---:|---:|---:|")
    for name, (epochs, firsts) in timed.items():
        print(f"| {name} | {len(epochs)} | {statistics.median(epochs):.1f} | {statistics.median(firsts):.2f} "
              f"| {max(firsts):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
