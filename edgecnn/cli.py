"""The ``edgecnn`` command line: a thin layer that parses options and calls the library.

Nothing here imports TensorFlow at module level, so ``edgecnn --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.errors import EdgeCNNError

app = typer.Typer(
    name="edgecnn",
    help="Train, export (TFLite, ONNX) and benchmark image-classification CNNs for edge devices.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

RUNS_DIR_OPT = typer.Option("runs", "--runs-dir", help="Folder holding run directories.")
RUN_ARG = typer.Argument(None, help="Run name or folder (default: the latest run).", show_default=False)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- train


@app.command()
def train(
    ctx: typer.Context,
    data: str = typer.Option("shapes", "--data", "-d", help="shapes[:N], cifar10, an image folder, .tar.gz/.zip, "
                             "cifar-10-python.tar.gz or .npz."),
    arch: str = typer.Option("regularized", "--arch", "-a", help="Preset (mlp, basic, regularized, resnet8, "
                             "cifar10) or spec like 'C: 32n 32n d0.2 64n gap | D: 64 | L2: 1e-4'."),
    epochs: int = typer.Option(10, help="Training epochs."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Batch size per replica."),
    optimizer: str = typer.Option("adamw", help="adam, adamw or sgd."),
    lr: float = typer.Option(5e-3, help="Peak learning rate."),
    schedule: str = typer.Option("cosine", help="constant, cosine (with warm-up) or onecycle."),
    warmup_epochs: float = typer.Option(1.0, help="Linear warm-up for the cosine schedule (at most 10% of steps)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing factor."),
    weight_decay: float = typer.Option(1e-4, help="Decoupled weight decay."),
    class_balance: str = typer.Option("none", help="For classes of very different sizes: oversample (every "
                                      "class drawn equally often) or weight (the loss weighs each class by its "
                                      "inverse frequency); none."),
    augment: str = typer.Option("light", help="none, light (flip+translate), standard, full, or a comma list of "
                                "flip,altflip,translate,rotate,zoom,contrast,cutout (altflip: each image "
                                "mirrored in every other epoch)."),
    translate: float = typer.Option(0.1, help="Largest shift of the translate augmentation, a fraction of the "
                                    "image side (0.1: up to 3 px on 32x32)."),
    translate_fill: str = typer.Option("nearest", help="What fills the edge a translation uncovers: nearest (the "
                                       "edge pixels repeated), reflect (the image mirrored, edge pixels "
                                       "repeated), mirror (mirrored about the edge pixels, as PyTorch's reflect "
                                       "pad) or constant (black, as a zero-padded crop)."),
    whiten: bool = typer.Option(False, "--whiten", help="Initialise the first convolution with the training "
                                "images' whitened patch PCA and freeze it."),
    ema: float = typer.Option(0.0, "--ema", help="Keep an exponential moving average of the weights with this "
                              "momentum (e.g. 0.999) and save it, BatchNorm statistics recomputed; 0: off."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Distil from this trained run (name or "
                                          "folder) or .keras model: the loss mixes the labels with its soft "
                                          "predictions on the same augmented images. Only the student is saved.",
                                          show_default=False),
    distill_weight: float = typer.Option(0.9, help="With --teacher: the soft (teacher) term's share of the loss."),
    distill_temperature: float = typer.Option(4.0, help="With --teacher: the softmax temperature of both models' "
                                              "predictions in the soft term."),
    early_stopping: int = typer.Option(0, help="Stop after N epochs without val-accuracy gain (0: off)."),
    keep: str = typer.Option("best", help="Which epoch's weights to save: best (highest val accuracy) or last "
                             "(for schedules that anneal to the end; a small val split picks by noise)."),
    time_budget: float = typer.Option(0.0, "--time-budget", help="Minutes of training (model.fit) at most; the "
                                      "learning-rate schedule follows the clock, so a run cut short still ends "
                                      "annealed. --epochs is then the most it may run. 0: off."),
    seed: int = typer.Option(0, help="Random seed (data split, init, shuffling)."),
    image_size: Optional[str] = typer.Option(None, help="Resize images to SIDE x SIDE (32) or HEIGHTxWIDTH (96x128) "
                                             "(default: the data's own size, or 32)."),
    resize: str = typer.Option("squash", help="Images of another shape: squash (the whole image, stretched), "
                               "crop (the centre, cut to the input's aspect ratio, then resized) or pad (the whole "
                               "image scaled to fit, centred on black: letterbox). predict, the standalone "
                               "scripts and every other command follow the run."),
    channels: int = typer.Option(3, help="3 (RGB) or 1 (grayscale)."),
    val_split: float = typer.Option(0.1, help="Validation fraction when the data has no val split."),
    test_split: float = typer.Option(0.1, help="Test fraction when an image folder has no split."),
    skip_bad_images: bool = typer.Option(False, help="Skip unreadable images (counted) instead of failing."),
    device: str = typer.Option("auto", help="auto, cpu or gpu."),
    precision: str = typer.Option("auto", help="auto (mixed_float16 on tensor-core GPUs, mixed_bfloat16 on CPUs "
                                  "with native bfloat16 (AVX512-BF16 or AMX: see edgecnn doctor), else float32), "
                                  "float32, mixed_float16, mixed_bfloat16."),
    cpu_replicas: int = typer.Option(1, help="Mirror over N logical CPU devices (tests the multi-GPU path)."),
    jit_compile: bool = typer.Option(False, "--xla/--no-xla", help="Compile the training step with XLA."),
    deterministic: bool = typer.Option(False, help="Deterministic TensorFlow ops, and Keras's own BatchNorm ops "
                                       "instead of the fused kernel (slower)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: run1, run2, ...)."),
    runs_dir: str = RUNS_DIR_OPT,
    preset: Optional[str] = typer.Option(None, "--preset", help="Training recipe: cifar10 (19.5 min time budget) "
                                         "or resnet8 (MLPerf Tiny, 29 min time budget); sets the architecture, epochs, "
                                         "batch, schedule and regularization. Options you give override it.",
                                    show_default=False),
    summary: bool = typer.Option(False, "--summary", help="Print the layer table and MACs, then exit."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run (its own options) "
                                         "from its last epoch checkpoint."),
):
    """Train a CNN and write a run directory (model.keras, labels, metrics, plots).

    Example: edgecnn train --data shapes --epochs 3
    """
    if resume:
        from edgecnn.train import resume as resume_run

        _log(f"run directory: {resume_run(resume, runs_dir, log=_log)}")
        return
    cfg = _train_config(ctx, dict(
        data=data, arch=arch, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, schedule=schedule,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, weight_decay=weight_decay,
        class_balance=class_balance, augment=augment, translate=translate, translate_fill=translate_fill,
        whiten=whiten, ema=ema, teacher=teacher, distill_weight=distill_weight,
        distill_temperature=distill_temperature, early_stopping=early_stopping, keep=keep, time_budget=time_budget,
        seed=seed,
        image_size=image_size, resize=resize, channels=channels, val_split=val_split, test_split=test_split,
        skip_bad_images=skip_bad_images, device=device, precision=precision,
        cpu_replicas=cpu_replicas, jit_compile=jit_compile, deterministic=deterministic, name=name,
        runs_dir=runs_dir, preset=preset,
    ))
    if summary:
        _print_summary(cfg.arch, cfg.image_size or 32, channels, 10)
        return
    from edgecnn.train import train as run_train

    run_dir = run_train(cfg, log=_log)
    _log(f"run directory: {run_dir}")


def _train_config(ctx: typer.Context, options: dict):
    """TrainConfig from the train/run options; ``--preset`` fills the options not typed by the user."""
    from edgecnn.train import TrainConfig, apply_preset

    preset = options.pop("preset", None)
    given = {k for k in options if (src := ctx.get_parameter_source(k)) is not None
             and src.name not in ("DEFAULT", "DEFAULT_MAP")}
    for option in ("distill_weight", "distill_temperature"):
        if option in given and not options.get("teacher"):
            raise EdgeCNNError(f"--{option.replace('_', '-')} needs --teacher (the run to distil from)")
    from edgecnn.data import parse_image_size

    options["image_size"] = parse_image_size(options.get("image_size"))
    return apply_preset(TrainConfig(**options), preset, given)


def _print_summary(arch: str, image_size, channels: int, num_classes: int) -> None:
    from edgecnn import model
    from edgecnn.data import image_hw, parse_image_size

    core = model.build_core(arch, (*image_hw(parse_image_size(image_size)), channels), num_classes)
    _log(model.summary_text(core))


@app.command("import")
def import_cmd(
    model: str = typer.Argument(..., help="A Keras model trained elsewhere: a Keras 3 .keras file, or a Keras 2 "
                               ".h5 file or SavedModel folder (model.save in tf.keras or tf_keras).",
                               show_default=False),
    data: str = typer.Option(..., "--data", "-d", help="The data it was trained for (any --data source): class "
                             "names, the test split it is scored on, int8 calibration images."),
    input_range: str = typer.Option("auto", help="The input the model was trained on: 0..255, 0..1, -1..1 (tf), "
                                    "torch or caffe (keras.applications preprocess_input modes); auto scores the "
                                    "training images under each."),
    class_names: Optional[str] = typer.Option(None, help="Comma list in the model's output order (default: the "
                                              "data's classes, sorted, as Keras' image_dataset_from_directory)."),
    image_size: Optional[str] = typer.Option(None, help="Input size, SIDE or HEIGHTxWIDTH, for models that take "
                                             "any size."),
    resize: str = typer.Option("squash", help="How the data's images fit the model: squash, crop or pad (as "
                               "for train; say how the model was trained)."),
    val_split: float = typer.Option(0.1, help="Validation fraction when the data has no val split."),
    test_split: float = typer.Option(0.1, help="Test fraction when an image folder has no split."),
    seed: int = typer.Option(0, help="Seed of the data split."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images",
                                         help="Skip unreadable images (counted) instead of failing."),
    name: Optional[str] = typer.Option(None, help="Run name (default: run1, run2, ...)."),
    runs_dir: str = RUNS_DIR_OPT,
):
    """Make a run of a Keras model trained elsewhere, for export, benchmark, evaluate and predict.

    Augmentation layers are removed, mixed precision becomes float32, Keras 2 settings Keras 3 lacks are dropped
    where inference ignores them, a layer in front takes 0..255 pixels to
    the model's input, logits get a Softmax and one binary output unit two classes.
    Example: edgecnn import model.keras --data path/to/images
    """
    from edgecnn.data import parse_image_size
    from edgecnn.importer import ImportConfig, import_model

    import_model(ImportConfig(model=model, data=data, input_range=input_range, class_names=class_names,
                              image_size=parse_image_size(image_size), resize=resize, val_split=val_split,
                              test_split=test_split,
                              seed=seed, skip_bad_images=skip_bad_images, name=name, runs_dir=runs_dir), log=_log)


@app.command()
def summary(
    arch: str = typer.Argument("regularized", help="Preset name or architecture spec."),
    image_size: str = typer.Option("32", help="Input size: SIDE or HEIGHTxWIDTH."),
    channels: int = typer.Option(3, help="Input channels."),
    num_classes: int = typer.Option(10, help="Number of classes."),
):
    """Print the layer table, parameter count and MACs per image of an architecture.

    Example: edgecnn summary "C: 16n 16n d0.25 32n 32n d0.25 | D: 8 L2"
    """
    from edgecnn.spec import parse

    parse(arch)  # fail fast (and without TensorFlow) on a bad spec
    _print_summary(arch, image_size, channels, num_classes)


@app.command()
def evaluate(
    run: Optional[str] = typer.Argument(None, help="Run name or folder, or a model file (.tflite, .onnx, .keras: "
                                        "scored in its own runtime) (default: the latest run).",
                                        show_default=False, metavar="run|model"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data source (default: the run's own; for a "
                                       "model file, that of the run it was exported from)."),
    tta: bool = typer.Option(False, "--tta", help="Average with horizontally flipped images (test-time "
                             "augmentation; exports include it only when made with edgecnn export --tta)."),
    min_accuracy: Optional[float] = typer.Option(None, help="Gate: exit 1 if test accuracy is below this "
                                                 "fraction (e.g. 0.87)."),
    runs_dir: str = RUNS_DIR_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
):
    """Re-score a run's model, or a model file, on a data source and print the report.

    Exit codes: 0 scored (and met --min-accuracy), 1 below --min-accuracy, 2 bad input. Example: edgecnn evaluate
    runs/run3/exports/model_int8.tflite --data path/to/images --min-accuracy 0.87
    """
    from edgecnn import evaluate as ev

    if min_accuracy is not None and not 0.0 <= min_accuracy <= 1.0:
        raise EdgeCNNError(f"--min-accuracy is a fraction in [0, 1], got {min_accuracy}")
    result = ev.evaluate_run(run, runs_dir, data, tta=tta)
    result["min_accuracy"] = min_accuracy
    result["passed"] = min_accuracy is None or result["test_accuracy"] >= min_accuracy
    if json_out:
        print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=2))
    else:
        _log(result["report"])
        _log(f"accuracy {result['test_accuracy']:.4f}  loss {result['test_loss']:.4f}  on {result['test_images']} "
             f"images of {result['data']}"
             + (f" ({result['classes_matched']})" if result.get("classes_matched") else "")
             + ("  (with flip test-time augmentation)" if tta else "")
             + (f"  [{result['model']}, {result['runtime']}]" if result.get("model") else ""))
    if not result["passed"]:
        _err(f"gate: accuracy {result['test_accuracy']:.4f} is below --min-accuracy {min_accuracy}")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- export


@app.command("export")
def export_cmd(
    run: Optional[str] = typer.Argument(None, help="Run name/folder or a .keras file (default: the latest run).",
                                        show_default=False),
    format: str = typer.Option("tflite", "--format", "-f", help="tflite, onnx or all."),
    quantize: Optional[str] = typer.Option(None, help="none, float16, dynamic, int8 or all (default: float32 + "
                                           "int8; with --format all: every variant)."),
    calib_samples: int = typer.Option(500, help="Training images used to calibrate int8."),
    io_dtype: str = typer.Option("uint8", help="int8 TFLite input/output type: uint8, int8 or float32."),
    opset: int = typer.Option(17, help="ONNX opset."),
    onnx_target: str = typer.Option("cpu", help="Who runs model_int8.onnx: cpu (ONNX Runtime's integer kernels, "
                                    "uint8 activations; on x86 without VNNI its sessions need the session option "
                                    "session.x64quantprecision=1), cpu-no-vnni (the same with 7-bit weights, exact "
                                    "with ONNX Runtime's default options everywhere) or tensorrt (int8 activations "
                                    "and weights with zero point 0, what TensorRT builds as int8)."),
    onnx_input: str = typer.Option("float32", help="What the ONNX files take: float32 (pixels 0..255 as floats) or "
                                   "uint8 (raw pixels; model_int8.onnx then starts at its first DequantizeLinear)."),
    onnx_layout: str = typer.Option("nhwc", help="The ONNX files' input layout: nhwc (TensorFlow's) or nchw "
                                    "(channels first, as PyTorch-made pipelines and many NPU toolchains expect)."),
    export_batch: str = typer.Option("auto", help="Batch dimension of the files: auto (TFLite 1, as mobile delegates, "
                                     "the Edge TPU compiler and NPU toolchains want; ONNX dynamic), 1 or dynamic."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check each file against Keras."),
    verify_samples: int = typer.Option(512, help="Held-out (test) images used for verification."),
    min_agreement_int8: float = typer.Option(0.95, help="Required top-1 agreement for int8."),
    min_agreement_reduced: float = typer.Option(0.99, help="Required agreement for float16 and dynamic."),
    max_diff_float32: float = typer.Option(1e-4, help="Max |probability difference| for float32."),
    micro: bool = typer.Option(False, "--micro", help="Check the int8 TFLite file with TFLite Micro: ops, smallest "
                               "tensor arena, flash, accuracy vs LiteRT."),
    micro_samples: int = typer.Option(1000, help="Test images for the TFLite Micro accuracy check."),
    c_array: bool = typer.Option(False, "--c-array", help="Write model_data.h/.cc for TFLite Micro projects."),
    gzip: bool = typer.Option(False, "--gzip", help="Also write FILE.gz next to each export: the smallest standard "
                              "gzip stream (zlib picks Huffman-only for sparse int8 weights); any gunzip reads it."),
    metadata: bool = typer.Option(True, "--metadata/--no-metadata", help="Write TFLite metadata into each .tflite "
                                  "(input normalization, labels.txt zipped on; under 1 KB with 10 classes): what "
                                  "MediaPipe Tasks needs to classify with the file alone."),
    tta: bool = typer.Option(False, "--tta", help="Put flip test-time augmentation inside every file: each image is "
                             "classified as it is and mirrored, the outputs averaged (edgecnn evaluate --tta); twice "
                             "the latency and activation memory, the same weights."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data source (default: the run's own)."),
    runs_dir: str = RUNS_DIR_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
):
    """Export the model to TFLite / ONNX (float32, float16, dynamic-range, int8), verified against Keras.

    Example: edgecnn export --format tflite
    """
    from edgecnn.export import ExportConfig, export
    from edgecnn.export.verify import Thresholds

    for opt, v in (("--min-agreement-int8", min_agreement_int8), ("--min-agreement-reduced", min_agreement_reduced)):
        if not 0.0 <= v <= 1.0:
            raise EdgeCNNError(f"{opt} must be in [0, 1], got {v}")
    cfg = ExportConfig(run=run, formats=format, quantize=quantize, calib_samples=calib_samples, io_dtype=io_dtype,
                       opset=opset, onnx_target=onnx_target, onnx_input=onnx_input, onnx_layout=onnx_layout,
                       batch=export_batch, verify=verify, verify_samples=verify_samples, data=data, runs_dir=runs_dir,
                       micro=micro, micro_samples=micro_samples, c_array=c_array, gzip=gzip,
                       metadata=metadata, tta=tta, thresholds=Thresholds(float32_max_diff=max_diff_float32,
                                             reduced_agreement=min_agreement_reduced,
                                             int8_agreement=min_agreement_int8))
    report = export(cfg, log=(lambda m: None) if json_out else _log)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        _log(f"report: {Path(report['exports'][0].get('path', '.')).parent / 'export_report.json'}")


@app.command("inspect")
def inspect_cmd(
    model: Path = typer.Argument(..., help="A .keras, .tflite or .onnx file."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
):
    """Show inputs/outputs (dtypes, quantization), op histogram, parameters and size of a model file.

    Example: edgecnn inspect runs/run1/exports/model_int8.tflite
    """
    from edgecnn.inspect import format_text, inspect

    info = inspect(model)
    print(json.dumps(info, indent=2) if json_out else format_text(info))


@app.command("quant-debug")
def quant_debug_cmd(
    run: Optional[str] = typer.Argument(None, help="Run name/folder or a .keras file beside its labels.json "
                                        "(default: the latest run).", show_default=False),
    calib_samples: int = typer.Option(500, help="Training images used to calibrate int8 (as edgecnn export "
                                      "--calib-samples: the same number gives the same scales); --format tflite."),
    samples: int = typer.Option(256, help="Test images the layers are compared on."),
    float_trials: int = typer.Option(0, "--float-trials", help="Also score the int8 model on those images with "
                                     "each of the N lowest-SQNR layers alone left in float32: whether that layer "
                                     "costs the accuracy (a diagnostic; such a file is not full-integer)."),
    fmt: str = typer.Option("tflite", "--format", "-f", help="tflite: a post-training int8 quantization of the "
                            "run's model, as edgecnn export makes model_int8.tflite; onnx: the run's "
                            "exports/model_int8.onnx itself (also a QAT or --onnx-target file)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data source (default: the run's own)."),
    runs_dir: str = RUNS_DIR_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Per-layer int8 quantization error: each layer's own error (rmse over scale, share of values clipped,
    SQNR) and its drift from the float32 model, to find the layers an int8 accuracy drop comes from. Writes
    RUN/quant_debug.json (RUN/quant_debug_onnx.json with --format onnx).

    Example: edgecnn quant-debug run3 --format onnx
    """
    from edgecnn.quant_debug import format_text, quant_debug

    log = _err if json_out else _log
    if fmt == "onnx":
        if calib_samples != 500:
            raise EdgeCNNError("--calib-samples works with --format tflite only (an ONNX file keeps its own scales)")
        from edgecnn.quant_debug_onnx import quant_debug_onnx

        result = quant_debug_onnx(run, runs_dir, data, samples=samples, trials=float_trials)
    elif fmt == "tflite":
        result = quant_debug(run, runs_dir, data, calib_samples=calib_samples, samples=samples, trials=float_trials,
                             log=log)
    else:
        raise EdgeCNNError(f"--format must be tflite or onnx, got {fmt!r}")
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        _log(format_text(result))
        _log(f"written: {result['path']}")


# --------------------------------------------------------------------------- benchmark


def _int_list(text: str, opt: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise EdgeCNNError(f"{opt} expects comma-separated integers, got {text!r}") from None


@app.command("benchmark")
def benchmark_cmd(
    run: Optional[str] = RUN_ARG,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Data source (default: the run's own test split)."),
    formats: str = typer.Option("all", help="all, keras, tflite, onnx or names like tflite-int8,onnx-float32."),
    device: str = typer.Option("cpu", help="cpu, cuda (CUDA and TensorRT rows), all, or auto (cuda when present)."),
    threads: int = typer.Option(1, help="Threads per runtime (1 is what a small device has)."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes: 1 for latency, the others for throughput."),
    warmup: str = typer.Option("10", help="Warm-up runs before timing (and at least 1 s); 'N' or 'Ns' for seconds."),
    runs_: int = typer.Option(100, "--runs", help="Timed batch-1 runs (and at least 1 s)."),
    max_drop: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if an export loses more accuracy "
                                             "than this many percentage points."),
    min_agreement: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if an export agrees with Keras "
                                                  "on fewer than this fraction of images."),
    max_size: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if an export file is larger than this "
                                             "many KB (flash budget)."),
    max_latency: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if an export's batch-1 median "
                                                "latency exceeds this many ms."),
    max_arena: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if the int8 TFLite file needs a "
                                              "larger TFLite Micro tensor arena than this many KB (RAM budget)."),
    baseline: Optional[str] = typer.Option(None, help="An earlier benchmark.json (e.g. the released model's): "
                                           "each row is compared with its namesake there."),
    max_regression: Optional[float] = typer.Option(None, help="Gate: fail (exit 1) if a row (Keras included) lost "
                                                   "more than this many percentage points of accuracy against "
                                                   "--baseline."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N test images."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results JSON here."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the results CSV here."),
    runs_dir: str = RUNS_DIR_OPT,
):
    """Benchmark every export against Keras: accuracy, agreement, McNemar, latency, memory.

    Exit codes: 0 all rows ran or were honestly skipped, 1 the gate failed, 2 a row failed.
    Example: edgecnn benchmark --max-drop 1.0 --min-agreement 0.98 --max-size 400
    """
    from edgecnn.benchmark import BenchmarkConfig, benchmark, table_markdown

    w = warmup.strip().lower()
    try:
        warm_runs, warm_s = (10, float(w[:-1])) if w.endswith("s") else (int(w), 1.0)
    except ValueError:
        raise EdgeCNNError(f"--warmup expects N (runs) or Ns (seconds), got {warmup!r}") from None
    cfg = BenchmarkConfig(run=run, data=data, formats=formats, device=device, threads=threads,
                          batch_sizes=_int_list(batch_sizes, "--batch-sizes"), warmup_runs=warm_runs,
                          warmup_seconds=warm_s, runs=runs_, max_drop=max_drop, min_agreement=min_agreement,
                          max_size_kb=max_size, max_latency_ms=max_latency, max_arena_kb=max_arena,
                          baseline=baseline, max_regression=max_regression, limit=limit, runs_dir=runs_dir,
                          json_path=json_path, csv_path=csv_path)
    rows, code = benchmark(cfg, log=_log)
    _log("")
    _log(table_markdown(rows))
    raise typer.Exit(code)


# --------------------------------------------------------------------------- finetune


@app.command("finetune")
def finetune_cmd(
    run: Optional[str] = RUN_ARG,
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware training (writes int8 TFLite + QDQ ONNX)."),
    prune: Optional[float] = typer.Option(None, "--prune", help="Prune Conv2D/Dense kernels to this sparsity."),
    epochs: int = typer.Option(3, help="Fine-tuning epochs."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default 1e-4 for QAT, 5e-4 for pruning)."),
    schedule: str = typer.Option("constant", help="Pruning schedule: constant or polynomial."),
    calib_samples: int = typer.Option(500, help="Training images for the int8 input/output ranges."),
    io_dtype: str = typer.Option("uint8", help="int8 TFLite input/output type."),
    name: Optional[str] = typer.Option(None, help="New run name (default <run>-qat / <run>-pruned50)."),
    runs_dir: str = RUNS_DIR_OPT,
):
    """Fine-tune a run with QAT or pruning (TensorFlow Model Optimization) into a new run directory.

    Example: edgecnn finetune --qat --epochs 3
    """
    from edgecnn.finetune import finetune

    if qat == (prune is not None):
        raise EdgeCNNError("choose exactly one of --qat or --prune SPARSITY")
    dst = finetune(run, "qat" if qat else "prune", runs_dir, epochs=epochs, lr=lr,
                   sparsity=prune if prune is not None else 0.5, schedule=schedule, calib_samples=calib_samples,
                   io_dtype=io_dtype, name=name, log=_log)
    _log(f"run directory: {dst}")


# --------------------------------------------------------------------------- sweep


@app.command("sweep")
def sweep_cmd(
    data: str = typer.Option("shapes", "--data", "-d", help="Data source (as for train)."),
    arch: List[str] = typer.Option([], "--arch", "-a", help="A candidate spec (repeat for more)."),
    preset: List[str] = typer.Option([], "--preset", help="A preset as candidate (repeat for more)."),
    grid: Optional[str] = typer.Option(None, help="Candidates 'C: w w dP 2w 2w dP | D: dense' from e.g. "
                                       "'widths=16,32;dense=0,16;dropout=0,0.25;bn=on,off'."),
    epochs: int = typer.Option(5, help="Epochs per candidate (the same for all)."),
    target: Optional[float] = typer.Option(None, help="int8 test accuracy to meet, e.g. 0.8."),
    name: str = typer.Option("sweep", help="Sweep name: sweeps/<name>/ (run again to resume)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Batch size."),
    lr: float = typer.Option(5e-3, help="Peak learning rate."),
    augment: str = typer.Option("light", help="Augmentation (as for train)."),
    image_size: Optional[str] = typer.Option(None, help="Resize images: SIDE or HEIGHTxWIDTH (as for train)."),
    resize: str = typer.Option("squash", help="squash, crop or pad (as for train)."),
    seed: int = typer.Option(0, help="Seed (the same for every candidate)."),
    sweeps_dir: str = typer.Option("sweeps", help="Folder holding sweeps."),
):
    """Train candidate architectures; rank them by int8 accuracy, size and latency; name the smallest
    one that meets --target.

    Example: edgecnn sweep --data shapes --preset basic --arch "C: 8n 16n gap" --epochs 3 --target 0.9
    """
    from edgecnn.data import parse_image_size
    from edgecnn.sweep import sweep, table_markdown
    from edgecnn.train import TrainConfig

    cfg = TrainConfig(data=data, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment,
                      image_size=parse_image_size(image_size),
                      resize=resize, seed=seed)
    rows, winner = sweep(name, list(arch), list(preset), grid, target, cfg, sweeps_dir, log=_log)
    _log("")
    _log(table_markdown(rows, winner))
    _log(f"winner: {winner['candidate']} {winner['arch']}" if winner else "winner: none met the target")
    _log(f"results: {Path(sweeps_dir) / name / 'sweep.md'}")


# --------------------------------------------------------------------------- run, predict, doctor

_RUN_EXTRA = {
    "formats": typer.Option("all", "--formats", help="Exports to write: tflite, onnx or all."),
    "calib_samples": typer.Option(500, help="Training images used to calibrate int8."),
    "io_dtype": typer.Option("uint8", help="int8 TFLite input/output type: uint8, int8 or float32."),
    "opset": typer.Option(17, help="ONNX opset."),
    "onnx_target": typer.Option("cpu", help="model_int8.onnx for cpu (ONNX Runtime), cpu-no-vnni (7-bit weights) "
                                  "or tensorrt (symmetric int8)."),
    "onnx_input": typer.Option("float32", help="What the ONNX files take: float32 or uint8 (raw pixels)."),
    "onnx_layout": typer.Option("nhwc", help="The ONNX files' input layout: nhwc or nchw (channels first)."),
    "export_batch": typer.Option("auto", help="Batch dimension of the exports: auto (TFLite 1, ONNX dynamic), 1 or "
                                 "dynamic."),
    "tta": typer.Option(False, "--tta", help="Flip test-time augmentation inside every export (twice the latency)."),
    "bench_device": typer.Option("cpu", help="Benchmark device: cpu, cuda, all or auto."),
    "threads": typer.Option(1, help="Benchmark threads per runtime."),
    "max_drop": typer.Option(None, help="Gate: max accuracy drop of an export, percentage points."),
    "min_agreement": typer.Option(None, help="Gate: min top-1 agreement of an export with Keras."),
    "max_size": typer.Option(None, help="Gate: max file size of an export, KB."),
    "max_latency": typer.Option(None, help="Gate: max batch-1 median latency of an export, ms."),
    "baseline": typer.Option(None, help="An earlier benchmark.json to compare every row with."),
    "max_regression": typer.Option(None, help="Gate: max accuracy a row may lose against --baseline, "
                                   "percentage points."),
}


def run(**kw):
    """Train, export every variant, benchmark them and write RUN/report.md (+ .html).

    Example: edgecnn run --data shapes --epochs 5
    """
    from edgecnn.benchmark import BenchmarkConfig
    from edgecnn.export import ExportConfig
    from edgecnn.pipeline import run_pipeline

    extra = {k: kw.pop(k) for k in list(_RUN_EXTRA)}
    train_cfg = _train_config(kw.pop("ctx"), kw)
    export_cfg = ExportConfig(formats=extra["formats"], calib_samples=extra["calib_samples"],
                              io_dtype=extra["io_dtype"], opset=extra["opset"], onnx_target=extra["onnx_target"],
                              onnx_input=extra["onnx_input"], onnx_layout=extra["onnx_layout"],
                              batch=extra["export_batch"], tta=extra["tta"],
                              runs_dir=kw["runs_dir"])
    bench_cfg = BenchmarkConfig(device=extra["bench_device"], threads=extra["threads"], max_drop=extra["max_drop"],
                                min_agreement=extra["min_agreement"], max_size_kb=extra["max_size"],
                                max_latency_ms=extra["max_latency"], baseline=extra["baseline"],
                                max_regression=extra["max_regression"], runs_dir=kw["runs_dir"])
    export_cfg.check()  # bad export options stop here, not after training
    bench_cfg.check()
    _, code = run_pipeline(train_cfg, export_cfg, bench_cfg, log=_log)
    raise typer.Exit(code)


def _run_signature():
    """``run`` takes every ``train`` option (epochs default 5) plus the export/benchmark ones."""
    import inspect

    params = [p for p in inspect.signature(train, eval_str=True).parameters.values()
              if p.name not in ("summary", "resume")]
    params = [p.replace(default=typer.Option(5, help="Training epochs.")) if p.name == "epochs" else p
              for p in params]
    hints = {"formats": str, "calib_samples": int, "io_dtype": str, "opset": int, "onnx_target": str,
             "onnx_input": str, "onnx_layout": str, "export_batch": str, "tta": bool, "bench_device": str,
             "threads": int, "max_drop": Optional[float], "min_agreement": Optional[float],
             "max_size": Optional[float], "max_latency": Optional[float], "baseline": Optional[str],
             "max_regression": Optional[float]}
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation=hints[k])
               for k, v in _RUN_EXTRA.items()]
    return inspect.Signature(params)


run.__signature__ = _run_signature()
app.command("run")(run)


@app.command("predict")
def predict_cmd(
    model: Path = typer.Argument(..., help="A .keras, .tflite or .onnx model, or a run (its model.keras): "
                                 "a run directory or a run name under --runs-dir."),
    images: List[str] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="Classes to show per image."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda (ONNX Runtime CUDA, or TensorFlow's GPU for "
                               ".keras) or tensorrt (ONNX Runtime TensorRT); stops with the reason where it cannot "
                               "run there."),
    runs_dir: str = RUNS_DIR_OPT,
):
    """Classify images with any exported model (labels from labels.json or the model's metadata).

    Example: edgecnn predict runs/run1/exports/model_int8.tflite photo.jpg
    """
    from edgecnn.predict import predict

    results, failed = [], 0
    for path, top, error in predict(model, images, top_k, runs_dir, device):
        if error:
            failed += 1
            _err(f"error: {error}")
            results.append({"image": str(path), "error": error})
            continue
        results.append({"image": str(path), "top": [{"class": c, "probability": p} for c, p in top]})
        if not json_out:
            _log(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    if json_out:
        print(json.dumps({"model": str(model), "device": device, "results": results}, indent=2))
    raise typer.Exit(1 if failed else 0)


@app.command("doctor")
def doctor_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Versions, CPU, GPUs, ONNX Runtime providers that really work, CUDA libraries found.

    Example: edgecnn doctor
    """
    from edgecnn.doctor import collect, format_text

    info = collect()
    print(json.dumps(info, indent=2) if json_out else format_text(info))


@app.command("report")
def report_cmd(run: Optional[str] = RUN_ARG, runs_dir: str = RUNS_DIR_OPT):
    """(Re)write RUN/report.md and report.html from what the run holds.

    Example: edgecnn report run3
    """
    from edgecnn import report, runs

    md, html = report.write(runs.resolve(run, runs_dir))
    _log(f"report: {md} and {html}")


def cli_reference(width: int = 100) -> str:
    """Markdown of every command's --help (the README's CLI reference; a test keeps them in sync)."""
    import typer.main

    group = typer.main.get_command(app)
    parts = []
    for name in group.list_commands(None):
        cmd = group.get_command(None, name)
        ctx = group.context_class(cmd, info_name=f"edgecnn {name}", terminal_width=width, max_content_width=width)
        parts.append(f"### `edgecnn {name}`\n\n```text\n{cmd.get_help(ctx).rstrip()}\n```\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry point


# Modules edgecnn imports on demand -> what to install (a deployment box may hold ONNX Runtime alone: predict and
# inspect of ONNX files, and the ONNX benchmark rows, need no TensorFlow).
PIP_NAMES = {"tensorflow": "tensorflow", "keras": "tensorflow", "tf_keras": "tf-keras",
             "tensorflow_model_optimization": "tensorflow-model-optimization", "tf2onnx": "tf2onnx",
             "onnx": "onnx", "ai_edge_litert": "ai-edge-litert",
             "onnxruntime": "onnxruntime-gpu" if sys.platform == "linux" and os.uname().machine == "x86_64"
             else "onnxruntime",
             "tflite_micro": "edgecnn[micro]", "pillow_heif": "edgecnn[heic]", "matplotlib": "matplotlib"}


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: one line on stderr and a non-zero exit for every user error."""
    debug = bool(os.environ.get("EDGECNN_DEBUG"))
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="edgecnn")
    except EdgeCNNError as exc:
        if debug:
            raise
        _err(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _err(f"error: {exc.format_message()} (see edgecnn --help)")
            sys.exit(exc.exit_code or 2)
        if type(exc).__name__ == "Abort":
            _err("aborted")
            sys.exit(1)
        if debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in PIP_NAMES:
            pkg = PIP_NAMES[exc.name.split(".")[0]]
            _err(f"error: this needs {pkg}, which does not import here ({exc}): pip install '{pkg}'")
            sys.exit(1)
        _err(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
             "(set EDGECNN_DEBUG=1 for a traceback)")
        sys.exit(3)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
