"""Training throughput (images/s at batch 128) per architecture: with/without XLA, augmentation, bfloat16.

    python tools/bench_train_speed.py --data ../shared/data/cifar10-jpg.tar.gz [--images 5000] [--rounds 2]
        [--archs basic,regularized,resnet8]
        [--variants default,xla,noaug,noaug-xla,bf16,bf16-emulated,onednn-off,keras-bn]  (or fp16)

Every measurement runs in its own process (one model per process: several models in one process
disturbed each other's timings by up to 2x, depending on their order) that trains, as `edgecnn train`
does, on one endless tf.data iterator: one warm-up epoch (tracing, XLA compilation), then ``--epochs``
timed epochs of ``--images`` images. The variants of one architecture run alternately, round after
round, in a rotating order, so machine drift and position hit them alike; the median over all timed
epochs is reported with the ratio to the default. Each worker reports whether Keras really compiled
its step with XLA and whether oneDNN ran, and a variant that did not get what it asked for stops the
run. Prints the markdown of docs/train_speed.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# key: (name, where the augmentation (flip + translate) runs, XLA asked for, precision). Keras compiles no
# XLA step with RandomTranslation in the model: it silently trains without XLA (`edgecnn train --xla` says
# so), so XLA with augmentation runs the augmentation in the tf.data pipeline, outside the compiled step.
# mixed_bfloat16 (`--precision mixed_bfloat16`) computes in bfloat16 with float32 weights (mixed_float16:
# float16, with loss scaling, what `auto` picks on tensor-core GPUs); CPUs with
# native bfloat16 (AVX512-BF16, AMX) run its convolutions faster, others emulate it. The last item is the
# worker's extra environment: ONEDNN_MAX_CPU_ISA=AVX512_CORE keeps oneDNN (TensorFlow's CPU kernels) to
# AVX-512 without its bfloat16 instructions, as on an AVX-512 CPU that lacks them (Skylake, Cascade Lake);
# TF_ENABLE_ONEDNN_OPTS=0 (named in TensorFlow's start-up message) swaps oneDNN for Eigen's kernels.
# Every variant but keras-bn trains its BatchNorm layers with TensorFlow's fused kernel, as `edgecnn train`
# does (model.fused_batchnorm_class); keras-bn keeps Keras 3's own BatchNormalization ops.
VARIANTS = {"default": ("augment, no XLA, float32", "model", False, "float32", {}),
            "xla": ("augment in tf.data, XLA", "data", True, "float32", {}),
            "noaug": ("no augment, no XLA", "none", False, "float32", {}),
            "noaug-xla": ("no augment, XLA", "none", True, "float32", {}),
            "bf16": ("augment, no XLA, mixed_bfloat16", "model", False, "mixed_bfloat16", {}),
            "fp16": ("augment, no XLA, mixed_float16", "model", False, "mixed_float16", {}),
            "bf16-emulated": ("augment, no XLA, mixed_bfloat16 emulated", "model", False,
                              "mixed_bfloat16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
            "onednn-off": ("augment, no XLA, oneDNN off", "model", False, "float32",
                           {"TF_ENABLE_ONEDNN_OPTS": "0"}),
            "keras-bn": ("augment, no XLA, Keras's BatchNorm ops", "model", False, "float32", {})}
UNFUSED = {"keras-bn"}
# Not in the default list: on a CPU float16 trained at a hundredth of float32's speed (docs/train_speed.md).
DEFAULT_VARIANTS = ",".join(k for k in VARIANTS if k != "fp16")
SIZES = ("images", "epochs", "rounds", "batch_size")  # options the reproduce line repeats where not default


def worker(npz: str, arch: str, augment: str, xla: bool, batch: int, epochs: int, precision: str,
           fused: bool) -> None:
    """Train ``arch`` on the arrays in ``npz`` for 1 + ``epochs`` epochs; print the timed epochs' seconds,
    whether the step really was XLA-compiled and how many BatchNorm layers trained with the fused kernel."""
    import numpy as np

    from bench_epoch_start import compiled, timer
    from edgecnn import model as model_mod
    from edgecnn._tf import tf
    from edgecnn.train import make_dataset

    arrays = np.load(npz)
    x, y, n_classes = arrays["x"], arrays["y"], int(arrays["num_classes"])
    steps = math.ceil(len(x) / batch)
    core = model_mod.build_core(arch, x.shape[1:], n_classes, dtype_policy=precision, fused_batchnorm=fused)
    names = model_mod.parse_augment("none" if augment == "none" else "light")
    data = make_dataset(x, y, n_classes, batch, True, 0, repeat=True)
    if augment == "data":
        aug = model_mod.build_augment(names, x.shape[1:])
        data = data.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    model = compiled(core, names if augment == "model" else (), 1 + epochs, steps, xla=xla, precision=precision)
    clock = timer()
    model.fit(data, epochs=1 + epochs, steps_per_epoch=steps, verbose=0, callbacks=[clock])
    try:  # whether oneDNN runs (TF_ENABLE_ONEDNN_OPTS); TensorFlow says so only through a private module
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    fused_layers = model_mod.fused_batchnorms(core)
    print(json.dumps({"epochs": clock.epochs[1:], "xla": bool(model.jit_compile), "onednn": onednn,
                      "fused_batchnorm": fused_layers}))


def measure(npz: Path, arch: str, augment: str, xla: bool, batch: int, epochs: int, precision: str,
            env: dict[str, str], fused: bool = True) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--worker", str(npz), arch, augment, str(int(xla)),
                          str(batch), str(epochs), precision, str(int(fused))], capture_output=True, text=True,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"error: {arch} (augment {augment}, {'XLA' if xla else 'no XLA'}) failed: "
                         f"{out.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["xla"] != xla:
        raise SystemExit(f"error: {arch} (augment {augment}): XLA asked {xla}, Keras compiled {result['xla']}")
    if not fused and result["fused_batchnorm"]:
        raise SystemExit(f"error: {arch}: Keras's BatchNorm asked, {result['fused_batchnorm']} fused layers trained")
    from edgecnn.device import onednn_off

    if (setting := onednn_off(env)) and result["onednn"]:
        raise SystemExit(f"error: {arch}: {setting} asked, TensorFlow still ran oneDNN")
    return result["epochs"]


def main() -> int:
    if len(sys.argv) == 10 and sys.argv[1] == "--worker":
        npz, arch, aug, xla, batch, epochs, precision, fused = sys.argv[2:]
        worker(npz, arch, aug, xla == "1", int(batch), int(epochs), precision, fused == "1")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--images", type=int, default=5000, help="training images per timed epoch")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per process, after one warm-up epoch")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--archs", default="basic,regularized,resnet8")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="which of " + ", ".join(VARIANTS) +
                    " (the first is the one the others are compared with)")
    a = ap.parse_args()
    if min(a.images, a.epochs, a.rounds, a.batch_size) < 1:
        ap.error("--images, --epochs, --rounds and --batch-size must be at least 1")
    keys = a.variants.split(",")
    if not keys or any(k not in VARIANTS for k in keys) or len(set(keys)) != len(keys):
        ap.error(f"--variants takes a comma list of {', '.join(VARIANTS)}, each once; got {a.variants!r}")
    variants = [(*VARIANTS[k], k not in UNFUSED) for k in keys]
    import numpy as np

    from edgecnn import data as data_mod
    from edgecnn.device import cpu_info

    started = time.time()
    ds = data_mod.load(a.data, val_split=0.02)
    full = len(ds.x_train)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "train.npz"
        np.savez(npz, x=ds.x_train[: a.images], y=ds.y_train[: a.images], num_classes=ds.num_classes)
        n = min(a.images, full)
        for arch in a.archs.split(","):
            times: dict[str, list[float]] = {v[0]: [] for v in variants}
            for r in range(a.rounds):
                rotated = variants[r % len(variants):] + variants[: r % len(variants)]
                for name, aug, xla, precision, env, fused in rotated:
                    times[name] += measure(npz, arch, aug, xla, a.batch_size, a.epochs, precision, env, fused)
            base = statistics.median(times[variants[0][0]])
            for name, *_ in variants:
                med = statistics.median(times[name])
                rows.append(f"| {arch} | {name} | {n / med:.0f} | {full * med / n:.0f} | {base / med:.2f}x |")
    minutes = (time.time() - started) / 60
    cpu = cpu_info()
    sizes = "".join(f" --{k.replace('_', '-')} {getattr(a, k)}" for k in SIZES if getattr(a, k) != ap.get_default(k))
    print("# Training throughput on CIFAR-10 (JPEG)\n")
    print(f"Batch {a.batch_size}, {n:,} training images per timed epoch on one endless tf.data iterator (as "
          f"`edgecnn train`); each measurement in its own process: a warm-up epoch, then {a.epochs} timed "
          f"epoch{'s' * (a.epochs > 1)}; {a.rounds} process{'es' * (a.rounds > 1)} per variant, run alternately "
          f"in a rotating order; the median timed epoch is "
          f"reported. {cpu['name']}, {os.cpu_count()} cores (native bfloat16: {', '.join(cpu['bfloat16']) or 'none'}), "
          f"no GPU. Reproduce with "
          f"`python tools/bench_train_speed.py --data ../shared/data/cifar10-jpg.tar.gz"
          f"{'' if a.variants == DEFAULT_VARIANTS else ' --variants ' + a.variants}"
          f"{'' if a.archs == ap.get_default('archs') else ' --archs ' + shlex.quote(a.archs)}"
          f"{sizes}` "
          f"({minutes:.0f} minutes here).\n")
    print("Augmentation is flip + translation (`--augment light`). Keras compiles no XLA step with its "
          "RandomTranslation layer in the model and trains without XLA instead (`edgecnn train --xla` says so), "
          "so the XLA variant with augmentation runs it in the tf.data pipeline, outside the compiled step; "
          "each measurement checks that Keras compiled its step as asked. mixed_bfloat16 (`--precision "
          "mixed_bfloat16`) computes in bfloat16 with float32 weights (mixed_float16 in float16, with loss scaling); \"emulated\" runs it with "
          "`ONEDNN_MAX_CPU_ISA=AVX512_CORE`, which keeps oneDNN (TensorFlow's CPU kernels) to AVX-512 without its "
          "bfloat16 instructions, as on an AVX-512 CPU that lacks them (an AVX2-only CPU takes other kernels, not "
          "measured here). \"oneDNN off\" sets `TF_ENABLE_ONEDNN_OPTS=0`, the setting TensorFlow's start-up "
          "message names for turning its oneDNN operations off (to get other rounding): it then trains with its "
          "Eigen kernels. BatchNorm layers train with TensorFlow's fused kernel (FusedBatchNormV3), as `edgecnn "
          "train` does; \"Keras's BatchNorm ops\" keeps Keras 3's own layer, which computes the batch moments and "
          "the normalization as separate ops.\n")
    print(f"| architecture | variant | images/s | s per {full:,}-image epoch | "
          f"vs {'float32' if keys[0] == 'default' else variants[0][0]} |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
