"""Training: data -> regularized CNN with augmentation -> a complete run directory."""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecnn import balance, runs, tfdata
from edgecnn.device import PRECISIONS
from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import atomic_path, read_json, write_json, write_text
from edgecnn.model import TRANSLATE, TRANSLATE_FILL, TRANSLATE_FILLS

OPTIMIZERS = ("adam", "adamw", "sgd")
CHECKPOINT = "checkpoint.keras"
CHECKPOINT_STATE = "checkpoint.json"
KEPT_WEIGHTS = "kept.weights.h5"
SCHEDULES = ("constant", "cosine", "onecycle")
KEEP = ("best", "last")

# Training recipes (``edgecnn train --preset NAME``): every TrainConfig field they name is set,
# unless the command line gives that option itself. Measured results: docs/benchmarks.md.
TRAIN_PRESETS: dict[str, dict] = {
    # CIFAR-10 within 20 minutes of training on 2 CPU cores (the clock, not the epoch count, ends it
    # there: 51-58 epochs on an AMX Xeon; up to 60 on faster machines); its int8 TFLite stays under 400 KB.
    # One-cycle anneals to the last step, so the last epoch is kept (1,000 validation images would pick by noise).
    # Translation fills the uncovered edge by mirroring the image (reflect, since 2026-12-07): 87.85%, 87.98%,
    # 87.98%, 88.41%, 87.67% and 87.79% (seeds 0, 1, 0, 2, 3, 4; mean 87.95%) against 87.84%, 87.78% and 87.72% with the
    # edge pixels repeated (README, "Why the cifar10 network"); mirror scored 87.67% (seed 0).
    "cifar10": dict(arch="cifar10", epochs=60, time_budget=19.5, batch_size=128, optimizer="adamw", lr=4e-3,
                    schedule="onecycle", label_smoothing=0.1, weight_decay=1e-4, augment="light",
                    translate_fill="reflect", val_split=0.02, keep="last"),
    # MLPerf Tiny ResNet-8 in 29 minutes of training on 2 CPU cores, 84-97 epochs there (the reference
    # trains 500); at most 100 on faster machines (90 until 2026-12-08, which left 2-3 minutes of the budget
    # unused in bfloat16). Translation by up to 2 px: three 84-epoch seeds averaged 85.08% against 84.82% for
    # three at 3 px (README, "Why the cifar10 network").
    "resnet8": dict(arch="resnet8", epochs=100, time_budget=29.0, batch_size=128, optimizer="adamw", lr=4e-3,
                    schedule="onecycle", label_smoothing=0.1, weight_decay=1e-4, augment="light", translate=0.0625,
                    val_split=0.02, keep="last"),
}


@dataclass
class TrainConfig:
    data: str = "shapes"
    arch: str = "regularized"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 5e-3
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4
    class_balance: str = "none"  # oversample: classes drawn equally often; weight: loss weighs each by n / (k * count)
    augment: str = "light"
    translate: float = TRANSLATE  # the translate augmentation's largest shift, a fraction of the image side
    translate_fill: str = TRANSLATE_FILL  # what fills the edge a shift uncovers: one of TRANSLATE_FILLS
    whiten: bool = False  # first conv = whitened patch PCA of the training images, frozen
    ema: float = 0.0  # momentum of an exponential moving average of the weights (Polyak); 0 = off
    teacher: str | None = None  # a trained run (or .keras file) to distil from (edgecnn.distill)
    distill_weight: float = 0.9  # the soft (teacher) term's share of the loss
    distill_temperature: float = 4.0
    early_stopping: int = 0  # patience in epochs; 0 = off
    keep: str = "best"  # which epoch's weights become model.keras: best by val accuracy, or the last
    time_budget: float = 0.0  # minutes of training (model.fit); 0 = off. --epochs is then an upper bound
    seed: int = 0
    image_size: int | tuple[int, int] | None = None  # one side, or (height, width)
    channels: int = 3
    val_split: float = 0.1
    test_split: float = 0.1
    skip_bad_images: bool = False
    resize: str = "squash"  # images of another shape: squash them whole, crop the centre first, or pad (letterbox)
    device: str = "auto"
    precision: str = "auto"
    cpu_replicas: int = 1
    jit_compile: bool = False
    deterministic: bool = False
    name: str | None = None
    runs_dir: str = "runs"
    preset: str | None = None
    versions: dict = field(default_factory=dict)

    def check(self) -> None:
        def bad(opt, msg):
            raise EdgeCNNError(f"{opt} {msg}")

        if self.epochs < 1:
            bad("--epochs", f"must be at least 1, got {self.epochs}")
        from edgecnn.data.images import check_resize

        check_resize(self.resize)
        if not 1 <= self.batch_size <= 65536:
            bad("--batch-size", f"must be 1..65536, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            bad("--optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            bad("--schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.lr < 10:
            bad("--lr", f"must be in (0, 10), got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            bad("--label-smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.weight_decay < 1:
            bad("--weight-decay", f"must be in [0, 1), got {self.weight_decay}")
        if self.warmup_epochs < 0:
            bad("--warmup-epochs", f"must be >= 0, got {self.warmup_epochs}")
        if not (self.ema == 0 or 0.5 <= self.ema < 1):
            bad("--ema", f"must be 0 (off) or a momentum in [0.5, 1), e.g. 0.999, got {self.ema}")
        if not 0 < self.distill_weight <= 1:
            bad("--distill-weight", f"must be in (0, 1], the teacher's share of the loss, got {self.distill_weight}")
        if not 0 < self.distill_temperature <= 100:
            bad("--distill-temperature", f"must be in (0, 100], e.g. 4, got {self.distill_temperature}")
        if not 0 < self.translate < 1:
            bad("--translate", f"must be in (0, 1), a fraction of the image side, got {self.translate}")
        if self.translate_fill not in TRANSLATE_FILLS:
            bad("--translate-fill", f"must be one of {', '.join(TRANSLATE_FILLS)}, got {self.translate_fill!r}")
        balance.check(self.class_balance)
        if self.keep not in KEEP:
            bad("--keep", f"must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.early_stopping < 0:
            bad("--early-stopping", f"must be >= 0, got {self.early_stopping}")
        if not 0 <= self.time_budget <= 60 * 24 * 30:
            bad("--time-budget", f"must be 0 (off) or a number of minutes, got {self.time_budget}")
        if self.cpu_replicas < 1:
            bad("--cpu-replicas", f"must be >= 1, got {self.cpu_replicas}")


def versions() -> dict:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "edgecnn": __import__("edgecnn").__version__}
    for pkg in ("tensorflow", "keras", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule; with a time budget it follows whichever runs out first, steps or time."""
    schedule = _step_schedule(cfg, steps_per_epoch)
    if cfg.time_budget and not isinstance(schedule, float):
        return Budgeted(schedule, max(1, cfg.epochs * steps_per_epoch))
    return schedule


def _step_schedule(cfg: TrainConfig, steps_per_epoch: int):
    from edgecnn._tf import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    # Warm-up never takes more than a tenth of a short run.
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total // 10)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        if warmup > 0:
            return keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=cfg.lr / 25, decay_steps=total - warmup, warmup_target=cfg.lr,
                warmup_steps=warmup, alpha=1e-3,
            )
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=total, alpha=1e-3)
    return OneCycle(cfg.lr, total)


def _one_cycle_class():
    from edgecnn._tf import keras, tf

    @keras.saving.register_keras_serializable("edgecnn")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        """One-cycle: cosine rise from lr/25 to lr over 30% of the steps, cosine fall to lr/1e4."""

        def __init__(self, max_lr, total_steps, pct_start=0.3):
            self.max_lr, self.total_steps, self.pct_start = float(max_lr), int(total_steps), float(pct_start)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            up = max(1.0, self.pct_start * self.total_steps)
            down = max(1.0, self.total_steps - up)
            lo, hi, end = self.max_lr / 25, self.max_lr, self.max_lr / 1e4
            t_up = tf.minimum(step / up, 1.0)
            t_down = tf.clip_by_value((step - up) / down, 0.0, 1.0)
            rise = lo + (hi - lo) * (1 - tf.cos(math.pi * t_up)) / 2
            fall = end + (hi - end) * (1 + tf.cos(math.pi * t_down)) / 2
            return tf.where(step < up, rise, fall)

        def get_config(self):
            return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start}

    return OneCycle


def OneCycle(max_lr, total_steps):  # noqa: N802 (class factory: keeps keras out of import time)
    return _one_cycle_class()(max_lr, total_steps)


@functools.cache
def _budgeted_class():
    from edgecnn._tf import keras, tf

    @keras.saving.register_keras_serializable("edgecnn")
    class Budgeted(keras.optimizers.schedules.LearningRateSchedule):
        """A step schedule that also advances with elapsed time: it is evaluated at
        max(step, time_fraction * total_steps), where TimeBudget sets ``time_fraction`` before every
        batch. So a run stopped by its time budget still ends with the schedule's final rate."""

        def __init__(self, schedule, total_steps):
            self.schedule = schedule
            self.total_steps = int(total_steps)
            self.time_fraction = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        def __call__(self, step):
            by_time = tf.cast(self.time_fraction, tf.float32) * self.total_steps
            return self.schedule(tf.maximum(tf.cast(step, tf.float32), by_time))

        def get_config(self):
            return {"schedule": keras.saving.serialize_keras_object(self.schedule), "total_steps": self.total_steps}

        @classmethod
        def from_config(cls, config):
            return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["total_steps"])

    return Budgeted


def Budgeted(schedule, total_steps):  # noqa: N802 (class factory, as OneCycle)
    return _budgeted_class()(schedule, total_steps)


def _time_budget_callback(budget_s: float, schedule, seconds_before: float):
    """Keras callback: feeds the elapsed fraction to a Budgeted schedule and stops fit at the budget."""
    from edgecnn._tf import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.started = time.perf_counter() - seconds_before
            self.exhausted = False

        def fraction(self) -> float:
            return min(1.0, (time.perf_counter() - self.started) / budget_s)

        def on_train_batch_begin(self, batch, logs=None):
            if schedule is not None:
                schedule.time_fraction.assign(self.fraction())

        def on_train_batch_end(self, batch, logs=None):
            if self.fraction() >= 1.0:
                self.exhausted = True
                self.model.stop_training = True

    return TimeBudget()


EMA_VAL_BN_IMAGES = 2048  # images recomputing BatchNorm statistics for --ema's averaged weights before validation


def _ema_callback(resumed: bool, recalibrate=None):
    """Keras' SwapEMAWeights: validation and each epoch's kept weights use the moving average.

    Between epochs the model holds the averages (the trained weights sit in the optimizer's average
    slots), so a checkpoint written at an epoch's end has them swapped: ``resumed`` says the model
    was loaded from one, and the first epoch swaps them back before training on. Keras averages the
    trainable weights only, so BatchNorm's moving statistics belong to the trained weights (on CIFAR-10
    the averaged model scored 11-23% on validation in early epochs with them); ``recalibrate()``, called
    once the averages are in, recomputes them before each validation. Training itself uses batch
    statistics, so it is not affected.
    """
    from edgecnn._tf import keras

    class SwapEMA(keras.callbacks.SwapEMAWeights):
        def on_test_begin(self, logs=None):
            swapping = not self._ema_weights_in_model
            super().on_test_begin(logs)
            if swapping and recalibrate is not None:
                recalibrate()

    callback = SwapEMA(swap_on_epoch=True)
    callback._ema_weights_in_model = resumed  # Keras' own flag for "averages are in the model now"
    return callback


def make_optimizer(cfg: TrainConfig, schedule, precision: str):
    from edgecnn._tf import keras

    ema = dict(use_ema=True, ema_momentum=cfg.ema) if cfg.ema else {}
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(schedule, weight_decay=cfg.weight_decay or None, **ema)
    elif cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, **ema)
    else:
        opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None,
                                   **ema)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch: int, shuffle: bool, seed: int,
                 repeat: bool = False, class_balance: str = "none"):
    """tf.data: in-memory arrays, shuffled each epoch, batched, prefetched (tfdata.batches).

    ``repeat``: endless (each pass reshuffled); fit it with ``steps_per_epoch = ceil(len(x) / batch)``.
    Keras opens a new iterator on a finite dataset every epoch; on the 49,000 CIFAR-10 training images
    (2 cores) its first step then took 5 s (median; up to 13 s) instead of 0.07 s
    (docs/epoch_start.md). One endless iterator pays that once.
    """
    from edgecnn._tf import tf

    return tfdata.batches(tf, x, y, num_classes, batch, shuffle, seed, repeat, class_balance)


def _callbacks(run_dir: Path, history_rows: list[dict], cfg: TrainConfig):
    from edgecnn._tf import keras

    class Tracker(keras.callbacks.Callback):
        """Keeps the weights ``cfg.keep`` names, writes history and a checkpoint every epoch.

        ``best``: the epoch with the highest val_accuracy (accuracy without a validation split; a tie
        goes to the later epoch). ``last``: the final epoch, for schedules that anneal to the end,
        where a small validation split would pick an earlier epoch by noise.
        """

        def __init__(self, core, seconds_before: float = 0.0):
            super().__init__()
            self.core = core
            self.started = time.perf_counter() - seconds_before
            self.best, self.best_epoch = -1.0, 0
            for r in history_rows:
                self._note(r["epoch"], _score(r))
            self.kept_epoch = self.best_epoch if cfg.keep == "best" else len(history_rows)
            self.kept_weights = None
            if history_rows and (run_dir / KEPT_WEIGHTS).is_file():
                core.load_weights(run_dir / KEPT_WEIGHTS)
                self.kept_weights = core.get_weights()

        def _note(self, epoch: int, score: float) -> bool:
            if score >= self.best:
                self.best, self.best_epoch = float(score), epoch
                return True
            return False

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1}
            row.update({k: float(v) for k, v in logs.items()})
            lr = self.model.optimizer.learning_rate
            row["lr"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
            row["seconds"] = round(time.perf_counter() - self.started, 2)  # training wall time so far
            history_rows.append(row)
            write_history(run_dir / "history.csv", history_rows)
            if self._note(epoch + 1, _score(row)) or cfg.keep == "last":
                self.kept_epoch = epoch + 1
                self.kept_weights = self.core.get_weights()
                with atomic_path(run_dir / KEPT_WEIGHTS, suffix=".weights.h5") as tmp:
                    self.core.save_weights(tmp)
            # The full training state (optimizer slots, step count = schedule position) for --resume.
            with atomic_path(run_dir / CHECKPOINT) as tmp:
                self.model.save(tmp)
            write_json(run_dir / CHECKPOINT_STATE, {"epoch": epoch + 1, "best": self.best,
                                                    "best_epoch": self.best_epoch,
                                                    "seconds": time.perf_counter() - self.started})

    return Tracker


def _score(row: dict) -> float:
    return float(row.get("val_accuracy", row.get("accuracy", 0.0)))


def write_history(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def labels_info(ds, channels: int, resize: str = "squash") -> dict:
    from edgecnn.data.images import DECODE, RESIZE_MODES

    h, w, c = ds.input_shape
    return {
        "class_names": ds.class_names,
        "input_shape": [h, w, c],
        "image_size": h if h == w else [h, w],
        "channels": c,
        "input": {"dtype": "uint8", "range": [0, 255], "layout": "NHWC", "color": "RGB" if c == 3 else "L",
                  "resize": RESIZE_MODES[resize], "decode": DECODE,
                  "scaling": "the model divides by 255 itself (Rescaling layer)"},
    }


class _SigTerm:
    """Turn SIGTERM into KeyboardInterrupt during training so the best model is still saved.

    The handler raises at once; an exception raised where Python only reports it ("Exception ignored in": a
    finalizer or a weakref callback the signal happened to interrupt) would be lost and training would run
    to its end, so the handler also sets a flag that ``callback()`` turns into KeyboardInterrupt at the end
    of the epoch.
    """

    def __init__(self):
        self.requested = False
        self.old = None

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            pass
        return self

    def _raise(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def callback(self):
        from edgecnn._tf import keras

        sig = self

        class StopOnSignal(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):  # after the tracker's checkpoint of this epoch
                if sig.requested:
                    raise KeyboardInterrupt

        return StopOnSignal()

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def apply_preset(cfg: TrainConfig, preset: str | None, given: set[str] = frozenset()) -> TrainConfig:
    """Set the fields ``preset`` names on ``cfg``, except those in ``given`` (options the user typed)."""
    if not preset:
        return cfg
    key = preset.strip().lower()
    if key not in TRAIN_PRESETS:
        raise EdgeCNNError(f"--preset {preset!r}: unknown; use one of {', '.join(TRAIN_PRESETS)}")
    for name, value in TRAIN_PRESETS[key].items():
        if name not in given:
            setattr(cfg, name, value)
    cfg.preset = key
    return cfg


def config_from_run(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run was started with (for --resume)."""
    from dataclasses import fields

    saved = runs.config(run_dir)
    if not saved:
        raise EdgeCNNError(f"{run_dir} has no config.json; it cannot be resumed")
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in names})
    cfg.arch = runs.architecture(saved)  # the network it started, should its preset name mean another one now
    cfg.data = runs.data_source(saved) or cfg.data  # a relative --data, resumed from another directory
    # --precision auto resumes in the precision it picked at the start (its checkpoint's layers have it), not in
    # what it would pick on this machine now.
    if cfg.precision == "auto" and (used := precision_used(saved)):
        cfg.precision = used
    return cfg


def precision_used(saved: dict) -> str | None:
    """The precision a run trained in, from its config.json ``saved``; None when it does not say. Runs started
    before "precision_used" was written: "device_used" ends with it ("CPU, mixed_bfloat16")."""
    used = saved.get("precision_used") or str(saved.get("device_used", "")).rsplit(", ", 1)[-1]
    return used if used in PRECISIONS and used != "auto" else None


def resume(run: str, runs_dir: str = "runs", log=print) -> Path:
    """Continue an interrupted run from its last per-epoch checkpoint."""
    run_dir = Path(run) if Path(run).is_dir() else Path(runs_dir) / run
    if not run_dir.is_dir():
        raise EdgeCNNError(f"run {run!r} not found (looked for {run} and {Path(runs_dir) / run})")
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / CHECKPOINT_STATE).is_file():
        raise EdgeCNNError(f"{run_dir} has no checkpoint to resume from (it finished, or never completed an epoch)")
    return train(config_from_run(run_dir), log=log, resume_dir=run_dir)


def train(cfg: TrainConfig, log=print, dataset=None, resume_dir: Path | None = None, quiet: bool = False) -> Path:
    """Train per ``cfg``; return the run directory (complete, with model.keras last).

    ``resume_dir``: continue that run from its checkpoint (optimizer state, schedule position
    and history included) instead of starting a new one. ``quiet``: no per-epoch lines.
    """
    cfg.check()
    from edgecnn import data as data_mod
    from edgecnn import device as device_mod
    from edgecnn import distill, metrics, model as model_mod, plots
    from edgecnn.spec import describe, parse

    spec = parse(cfg.arch)
    if cfg.whiten and not any(layer.kind in ("conv", "res") for layer in spec.conv):
        raise EdgeCNNError(f"--whiten needs a convolution in the architecture, {describe(spec)!r} has none")
    augment = model_mod.parse_augment(cfg.augment)
    setup = device_mod.setup(cfg.device, cfg.precision, cfg.cpu_replicas)
    from edgecnn._tf import keras, tf

    ds = dataset or data_mod.load(cfg.data, cfg.image_size, cfg.channels, cfg.val_split, cfg.test_split,
                                  cfg.seed, cfg.skip_bad_images, cfg.resize)
    log(f"data: {ds.summary()}")
    ratio, biggest, smallest = balance.imbalance(ds.y_train, ds.class_names)
    if cfg.class_balance != "none":
        log(f"--class-balance {cfg.class_balance}: {biggest} to {smallest} training images, "
            + ("every class drawn equally often" if cfg.class_balance == "oversample" else
               "the loss weighs each class by images / (classes * its images)"))
    elif ratio >= balance.HINT_RATIO:
        log(f"classes imbalanced: {biggest} to {smallest} training images (--class-balance oversample draws "
            "every class equally often)")
    teacher = teacher_file = None
    if cfg.teacher and resume_dir is None:  # a resumed run's checkpoint holds its teacher
        with setup.strategy.scope():
            teacher, teacher_file = distill.load_teacher(cfg.teacher, cfg.runs_dir, ds.class_names, ds.input_shape)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()

    history_rows: list[dict] = []
    initial_epoch = 0
    seconds_before = 0.0  # training time of the interrupted part of a resumed run
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        state = read_json(run_dir / CHECKPOINT_STATE, "checkpoint state")
        initial_epoch = int(state["epoch"])
        seconds_before = float(state.get("seconds", 0.0))
        if (run_dir / "history.csv").is_file():
            history_rows = [r for r in read_history(run_dir / "history.csv") if r["epoch"] <= initial_epoch]
        log(f"resuming {run_dir} after epoch {initial_epoch} of {cfg.epochs}")
    else:
        run_dir = runs.allocate(cfg.runs_dir, cfg.name)
        cfg.versions = versions()
        cfg_dict = asdict(cfg) | {"arch_spec": describe(spec), "augment_layers": list(augment),
                                  "translate_interpolation": model_mod.TRANSLATE_INTERPOLATION,
                                  "train_iterator": "repeated",  # one endless iterator (older runs: per epoch)
                                  "device_used": setup.description, "precision_used": setup.precision}
        if teacher_file is not None:
            cfg_dict["teacher_file"] = str(teacher_file)
        if (local := data_mod.local_path(cfg.data)) is not None and local.exists():  # found from anywhere later
            cfg_dict["data_path"] = str(local.resolve())
        write_json(run_dir / "config.json", cfg_dict)
        write_json(run_dir / "labels.json", labels_info(ds, cfg.channels, cfg.resize))
    log(f"run: {run_dir}  device: {setup.description}")
    cpu = device_mod.cpu_info()
    for warning in (device_mod.precision_warning(setup.precision, setup.device, cpu),
                    device_mod.onednn_warning() if setup.device == "cpu" else None):
        if warning:
            log(f"warning: {warning}")

    global_batch = cfg.batch_size * setup.replicas
    steps = math.ceil(len(ds.x_train) / global_batch)
    bn_momentum = model_mod.batchnorm_momentum(steps)  # short epochs: a shorter moving average
    # TensorFlow's fused BatchNorm kernel trains 1.4x faster on the CPU; --deterministic keeps Keras's own
    # ops (TensorFlow's determinism work lists the fused kernel's gradient as nondeterministic on GPUs).
    fused_bn = not cfg.deterministic
    with setup.strategy.scope():
        if resume_dir is not None:
            _one_cycle_class()  # register the schedule classes for deserialization
            _budgeted_class()
            model_mod.cutout_class(keras)
            model_mod.padded_crop_class(keras)
            model_mod.alternating_flip_class(keras)
            model_mod.fused_batchnorm_class(keras)
            distill.classes(keras)
            try:
                train_model = keras.saving.load_model(run_dir / CHECKPOINT, safe_mode=True)
            except Exception as exc:
                raise EdgeCNNError(f"{run_dir / CHECKPOINT}: cannot load checkpoint ({str(exc)[:200]})") from None
            core = train_model if train_model.name == "core" else train_model.get_layer("core")
            if cfg.teacher:
                teacher = train_model.get_layer("teacher").model
                teacher_file = runs.config(run_dir).get("teacher_file")
        else:
            core = model_mod.build_core(spec, ds.input_shape, ds.num_classes,
                                        setup.precision if setup.precision != "float32" else None,
                                        fused_batchnorm=fused_bn)
            if cfg.whiten:
                k = model_mod.whiten_first_conv(core, ds.x_train)
                log(f"whiten: first convolution set to {k} whitened principal components (and negatives), frozen")
            if bn_momentum < model_mod.BN_MOMENTUM:
                model_mod.set_batchnorm_momentum(core, bn_momentum)
            train_model = model_mod.build_train_model(core, augment, cfg.seed, cfg.translate, teacher,
                                                        cfg.translate_fill)
            optimizer = make_optimizer(cfg, make_schedule(cfg, steps), setup.precision)
            objective = (distill.compile_args(keras, cfg.distill_weight, cfg.distill_temperature, cfg.label_smoothing)
                         if teacher is not None else
                         dict(loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                              metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")]))
            train_model.compile(optimizer=optimizer, jit_compile=cfg.jit_compile, **objective)
    teacher_probs = None
    if teacher is not None:
        teacher_probs = teacher.predict(ds.x_test.astype("float32"), batch_size=256, verbose=0)
        log(f"teacher: {teacher_file or cfg.teacher}, test accuracy "
            f"{float((teacher_probs.argmax(1) == ds.y_test).mean()):.4f}; loss = {1 - cfg.distill_weight:g} x "
            f"crossentropy + {cfg.distill_weight:g} x T^2 x KL at temperature T = {cfg.distill_temperature:g}")
    xla = bool(getattr(train_model, "jit_compile", False))
    if cfg.jit_compile and not xla:  # Keras compiles without XLA rather than fail; say so
        blockers = model_mod.layers_without_xla(train_model)
        log(f"--xla: Keras trains without XLA: {', '.join(blockers)} cannot be compiled by it" if blockers else
            "--xla: Keras trains without XLA while TensorFlow's deterministic ops are on")
    train_ds = make_dataset(ds.x_train, ds.y_train, ds.num_classes, global_batch, True, cfg.seed, repeat=True,
                            class_balance=cfg.class_balance)
    val_ds = make_dataset(ds.x_val, ds.y_val, ds.num_classes, global_batch, False, cfg.seed) if len(ds.x_val) else None
    tracker = _callbacks(run_dir, history_rows, cfg)(core, seconds_before)
    callbacks = [tracker]
    if cfg.ema:
        calibration = balance.training_images(ds.x_train, ds.y_train, cfg.class_balance, cfg.seed, EMA_VAL_BN_IMAGES)
        callbacks.insert(0, _ema_callback(  # first: the tracker keeps the averaged weights
            resumed=resume_dir is not None,
            recalibrate=lambda: model_mod.recalibrate_batchnorm(core, calibration, cfg.batch_size, cfg.seed,
                                                                EMA_VAL_BN_IMAGES)))
    flip_epochs = model_mod.set_flip_epochs(train_model)
    if flip_epochs is not None:
        callbacks.insert(0, flip_epochs)
    budget = None
    if cfg.time_budget:
        schedule = getattr(train_model.optimizer, "_learning_rate", None)  # Keras 3 keeps the schedule object here
        budget = _time_budget_callback(cfg.time_budget * 60, schedule if hasattr(schedule, "time_fraction") else None,
                                       seconds_before)
        callbacks.append(budget)
    if cfg.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy" if val_ds is not None else "accuracy", patience=cfg.early_stopping))
    interrupted = False
    t0, cpu0 = time.perf_counter(), device_mod.cpu_counters()
    try:
        with _SigTerm() as sigterm:
            callbacks.append(sigterm.callback())
            train_model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=steps,
                            callbacks=callbacks, verbose=0 if quiet else (1 if sys.stdout.isatty() else 2))
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: keeping the {cfg.keep} epoch so far")
    train_seconds = time.perf_counter() - t0 + seconds_before
    steal = device_mod.steal_percent(cpu0, device_mod.cpu_counters())
    if tracker.kept_weights is None:
        raise EdgeCNNError(f"training stopped before the first epoch finished; nothing saved in {run_dir}")
    core.set_weights(tracker.kept_weights)
    deploy = model_mod.to_deployable(core, spec, ds.num_classes)
    recalibrated = 0
    # The BN moving averages were gathered by other weights than these (short epochs, --ema) or on
    # augmented images, whose statistics the deployed model never sees (README, "Small datasets and BatchNorm").
    reshaping = [a for a in augment if a not in model_mod.MIRRORS]
    if bn_momentum < model_mod.BN_MOMENTUM or cfg.ema or reshaping:
        images = balance.training_images(ds.x_train, ds.y_train, cfg.class_balance, cfg.seed,
                                         model_mod.RECALIBRATION_IMAGES)
        recalibrated = model_mod.recalibrate_batchnorm(deploy, images, cfg.batch_size, cfg.seed)
        if cfg.ema:
            why = f"weights averaged (--ema {cfg.ema:g})"
        elif bn_momentum < model_mod.BN_MOMENTUM:
            why = f"{steps} steps per epoch, so moving averages of momentum {bn_momentum:.3f} in training"
        else:
            why = f"moving averages gathered on augmented images ({', '.join(reshaping)})"
        if recalibrated:
            log(f"BatchNorm: {why}; statistics recomputed over {recalibrated} unaugmented training images")

    probs = deploy.predict(ds.x_test.astype("float32"), batch_size=256, verbose=0)
    m = metrics.evaluate(probs, ds.y_test, ds.class_names)
    m.update({
        "parameters": int(deploy.count_params()),
        "macs": model_mod.count_macs(deploy),
        "train_seconds": round(train_seconds, 2),
        "cpu_steal_percent": steal,  # CPU time the hypervisor took during fit (shared machines); None: unknown
        "cpu": cpu["name"],  # the processor the seconds were measured on
        "cpu_cores": os.cpu_count(),
        "stopped_by_time_budget": bool(budget and budget.exhausted),
        "seconds_per_epoch": round(train_seconds / max(1, len(history_rows)), 2),
        "epochs_run": len(history_rows),
        "kept": cfg.keep,
        "kept_epoch": tracker.kept_epoch,
        "best_epoch": tracker.best_epoch,
        "best_val_accuracy": tracker.best,
        "interrupted": interrupted,
        "xla": xla,  # --xla asked for it; Keras turns it off for layers it cannot compile (RandomTranslation)
        "class_balance": cfg.class_balance,
        "train_class_counts": dict(zip(ds.class_names, map(int, balance.class_counts(ds.y_train, ds.num_classes)))),
        "batchnorm_momentum": round(bn_momentum, 4),
        "batchnorm_recalibration_images": recalibrated,
        "ema": cfg.ema,
        "teacher": None if teacher_probs is None else {
            "file": str(teacher_file or cfg.teacher), "weight": cfg.distill_weight,
            "temperature": cfg.distill_temperature,
            "test_accuracy": float((teacher_probs.argmax(1) == ds.y_test).mean()),
            "agreement": distill.agreement(probs, teacher_probs)},  # the student's with the teacher's, test set
        "fused_batchnorm": model_mod.fused_batchnorms(core) > 0,
        "precision": setup.precision,
        "device": setup.description,
        "data": ds.source,
        "skipped_images": ds.info.get("skipped_images", 0),
    })
    write_json(run_dir / "metrics.json", m)
    write_text(run_dir / "classification_report.txt",
               metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names))
    hist = {k: [r.get(k) for r in history_rows] for k in ("accuracy", "loss", "val_accuracy", "val_loss")}
    plots.curves(hist, run_dir / "curves.png")
    plots.confusion_matrix(m["confusion_matrix"], ds.class_names, run_dir / "confusion_matrix.png")
    write_text(run_dir / "summary.txt", model_mod.summary_text(deploy) + "\n")
    with atomic_path(run_dir / runs.MODEL_FILE) as tmp:
        deploy.save(tmp)
    if not interrupted:  # finished: the training state is no longer needed
        for name in (CHECKPOINT, CHECKPOINT_STATE, KEPT_WEIGHTS):
            (run_dir / name).unlink(missing_ok=True)
    balanced = (f"  balanced accuracy {m['test_balanced_accuracy']:.4f}"
                if cfg.class_balance != "none" or balance.imbalance(ds.y_test, ds.class_names)[0] >= 2 else "")
    log(f"test accuracy {m['test_accuracy']:.4f}{balanced}  loss {m['test_loss']:.4f}  "
        f"({m['epochs_run']} epoch{'' if m['epochs_run'] == 1 else 's'}, {train_seconds:.1f} s, "
        f"kept epoch {tracker.kept_epoch}: {cfg.keep}"
        f"{'' if cfg.keep == 'best' else f', best by val {tracker.best_epoch}'})")
    log(f"saved {run_dir / runs.MODEL_FILE}")
    return run_dir
