"""Where a training step's time goes: TensorFlow's profiler over a few steps, summed per op or per layer.

    python tools/profile_train_step.py --arch cifar10 [--data ../shared/data/cifar10-jpg.tar.gz]
        [--precision mixed_bfloat16] [--batch-size 128] [--steps 20] [--by op|layer] [--top 20]

Builds and compiles the network as `edgecnn train` does (fused BatchNorm, flip + translate in the
model, AdamW one-cycle), trains ``--steps`` warm-up steps, times ``--steps`` steps without the profiler,
then profiles ``--steps`` more. Prints the step's wall time and a markdown table of the kernels'
time per step (summed over TensorFlow's compute threads, so it can exceed the wall time on several
cores), largest first, by op type (``Conv2DBackpropFilter``) or by layer (``conv19``, gradients
included). Without ``--data``, random 32x32x3 images in 10 classes (a step's speed does not depend on
what the pixels show). CPU kernels only: a GPU's are not summed. The trace is read through TensorFlow's
bundled XPlane protobuf.
"""

from __future__ import annotations

import argparse
import collections
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def profile(arch: str, x, y, num_classes: int, precision: str, batch: int, steps: int):
    """(seconds per step unprofiled, {kernel event name: seconds per step}) for ``arch`` on ``x, y``."""
    from bench_epoch_start import compiled
    from edgecnn import model as model_mod
    from edgecnn._tf import keras, tf
    from edgecnn.train import make_dataset

    keras.mixed_precision.set_dtype_policy(precision)
    core = model_mod.build_core(arch, x.shape[1:], num_classes, dtype_policy=precision, fused_batchnorm=True)
    model = compiled(core, model_mod.parse_augment("light"), 3, steps, label_smoothing=0.1, precision=precision)
    data = make_dataset(x, y, num_classes, batch, True, 0, repeat=True)
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)  # tracing, oneDNN's first calls
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    wall = (time.perf_counter() - start) / steps
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        finally:
            tf.profiler.experimental.stop()
        traces = sorted(Path(logdir).rglob("*.xplane.pb"))
        if not traces:
            raise SystemExit("error: TensorFlow's profiler wrote no trace (*.xplane.pb)")
        events = kernel_seconds(traces[-1].read_bytes())
    return wall, {name: s / steps for name, s in events.items()}


def kernel_seconds(xspace: bytes) -> dict[str, float]:
    """Seconds per TensorFlow op event on the compute threads of a serialized XSpace (the executor's own
    ``ExecutorState::Process`` spans, which contain the kernels, left out)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace)
    total: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name.replace("::", ""):  # "scope/of/the/op:OpType", not "ExecutorState::Process"
                    total[name] += event.duration_ps / 1e12
    return dict(total)


def group(events: dict[str, float], by: str) -> dict[str, tuple[float, int]]:
    """Sum the events by op type (the oneDNN prefixes _MklNative/_Mkl dropped) or by the layer of the core or
    augmentation model in their scope, forward and gradient; each key gets (seconds per step, distinct ops)."""
    out: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for name, seconds in events.items():
        scope, _, op = name.rpartition(":")
        if by == "op":
            key = re.sub(r"^_Mkl(Native)?", "", op)
        else:  # .../train_model_1/core_1/conv19_1/convolution -> conv19
            parts = scope.split("/")
            at = next((i for i, p in enumerate(parts[:-1]) if re.fullmatch(r"(core|augment)(_\d+)?", p)), None)
            key = "(optimizer, loss, metrics)" if at is None else re.sub(r"_\d+$", "", parts[at + 1])
        out[key][0] += seconds
        out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar10", help="preset name or spec")
    ap.add_argument("--data", help="a data source as `edgecnn train --data` takes (default: random images)")
    ap.add_argument("--precision", default="auto", help="float32, mixed_bfloat16 or auto (as edgecnn train)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="steps warmed up, timed and profiled, each")
    ap.add_argument("--by", choices=("op", "layer"), default="op")
    ap.add_argument("--top", type=int, default=20, help="rows shown (the rest summed in one)")
    a = ap.parse_args()
    if min(a.batch_size, a.steps, a.top) < 1:
        ap.error("--batch-size, --steps and --top must be at least 1")
    import numpy as np

    from edgecnn.device import PRECISIONS, auto_precision
    from edgecnn.errors import EdgeCNNError
    from edgecnn.spec import parse

    if a.precision not in PRECISIONS:
        ap.error(f"--precision: use one of {', '.join(PRECISIONS)}")
    precision = auto_precision([]) if a.precision == "auto" else a.precision  # a CPU's choice
    try:
        parse(a.arch)
        if a.data:
            from edgecnn import data as data_mod

            ds = data_mod.load(a.data, val_split=0.0)
            x, y, classes = ds.x_train, ds.y_train, ds.num_classes
        else:
            rng = np.random.default_rng(0)
            x = rng.integers(0, 256, (a.batch_size * 4, 32, 32, 3), dtype=np.uint8)
            y, classes = rng.integers(0, 10, len(x)), 10
        wall, events = profile(a.arch, x, y, classes, precision, a.batch_size, a.steps)
    except EdgeCNNError as e:
        raise SystemExit(f"error: {e}")
    rows = sorted(group(events, a.by).items(), key=lambda kv: -kv[1][0])
    kernels = sum(events.values())
    command = ["python tools/profile_train_step.py", f"--arch {shlex.quote(a.arch)}"]
    command += [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(a).items()
                if v != ap.get_default(k) and k != "arch"]  # the options given, but for their defaults
    print(f"`{a.arch}`, batch {a.batch_size}, {precision}: {wall * 1000:.1f} ms per step "
          f"({a.batch_size / wall:.0f} images/s) unprofiled; kernels {kernels * 1000:.1f} ms per step over the compute "
          f"threads. Reproduce with `{' '.join(command)}`.\n")
    print(f"| {a.by} | ms per step | share | ops |\n|---|---:|---:|---:|")
    shown, rest = rows[:a.top], rows[a.top:]
    if rest:
        shown.append((f"({len(rest)} more)", (sum(s for _, (s, _) in rest), sum(n for _, (_, n) in rest))))
    for key, (seconds, n) in shown:
        print(f"| {key} | {seconds * 1000:.2f} | {seconds / kernels:.1%} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
