"""Quantization-aware training and pruning with TensorFlow Model Optimization, in its own process.

tfmot works only on tf_keras (Keras 2) models and importing it switches the whole process to
legacy Keras, so this module runs as ``python -m edgecnn.tfmot_worker JOB.json`` with
``TF_USE_LEGACY_KERAS=1`` and never inside the CLI's process. It rebuilds the run's
architecture in tf_keras, copies the Keras 3 weights (checking the predictions match),
fine-tunes, and writes float weights back (plus, for QAT, the int8 TFLite and QDQ ONNX files).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TRANSFER_TOLERANCE = 1e-4
PRUNABLE = ("Conv2D", "Dense")
NOT_QUANTIZABLE = ("InputLayer",)
OUTPUT_ONLY = ("Multiply",)  # not in tfmot's registry: fake-quantize its output, as TFLite's int8 MUL has one
PIXELS = ("Rescaling",)  # the model's own 0..255 scaling: its output on the pixels' exact 8-bit grid


def _libs():
    from edgecnn._stderr import capture_fd2

    with capture_fd2():
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras

    tf.get_logger().setLevel("ERROR")
    return tf, tf_keras, tfmot


def rebuild(job: dict, tf_keras):
    """The run's architecture in tf_keras with the Keras 3 weights copied by layer name."""
    from edgecnn.model import build_core

    model = build_core(job["arch"], tuple(job["input_shape"]), job["num_classes"], keras_module=tf_keras)
    with np.load(job["weights_in"]) as z:
        for layer in model.layers:
            n = sum(1 for k in z.files if k.rsplit("/", 1)[0] == layer.name)
            if n:
                layer.set_weights([z[f"{layer.name}/{i}"] for i in range(n)])
    return model


def float_weights(model, tuned) -> dict[str, np.ndarray]:
    """Plain float weights by original layer name, taken from tfmot's wrappers.

    A QuantizeWrapper owns its layer's kernel (``conv1/kernel``) beside its own quantizer
    variables (``quant_conv1/kernel_min``), so variables are matched by owner and name; a
    missing one is an error, never a silent fall-back to the weights before fine-tuning.
    """
    found: dict[tuple[str, str], np.ndarray] = {}
    for layer in tuned.layers:
        inner = getattr(layer, "layer", layer)
        for w in layer.weights:
            if _owner(w) == inner.name:
                found[(inner.name, w.name.split(":")[0].rpartition("/")[2])] = w.numpy()
    out = {}
    for layer in model.layers:
        for i, w in enumerate(layer.weights):
            short = w.name.split(":")[0].rpartition("/")[2]
            if (layer.name, short) not in found:
                raise RuntimeError(f"fine-tuned model has no weight {layer.name}/{short}")
            out[f"{layer.name}/{i}"] = found[(layer.name, short)]
    return out


def _owner(variable) -> str:
    """The layer a variable belongs to: ``conv1`` for ``quant_conv1/conv1/kernel:0`` and ``conv1/kernel:0``."""
    return variable.name.split(":")[0].rpartition("/")[0].split("/")[-1]


def pixel_quantize_config(tfmot):
    """tfmot's QuantizeConfig for the Rescaling in front of the first convolution (tfmot has none).

    Its output is a pixel scaled, 256 values on an 8-bit grid, so a fake-quant whose range holds exactly
    those values loses nothing, and gives the first convolution a quantized input: without one, tf2onnx
    left that convolution float in the QAT ONNX file (ONNX Runtime ran it as a float Conv). tfmot's own
    output-only config, with a range that covers every value seen (AllValuesQuantizer, which only
    widens), started at the layer's exact image of 0..255 by `init_activation_ranges`.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs)

    quantizers = tfmot.quantization.keras.quantizers

    class PixelQuantizeConfig(configs.Default8BitOutputQuantizeConfig):
        def get_output_quantizers(self, layer):
            return [quantizers.AllValuesQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    return PixelQuantizeConfig


def pixel_range(layer) -> tuple[float, float]:
    """Where a Rescaling layer maps 0..255 (0 included, as a fake-quant range must hold it)."""
    offset = np.asarray(layer.offset, np.float32)
    ends = np.concatenate([(np.float32(255.0) * np.asarray(layer.scale, np.float32) + offset).ravel(), offset.ravel()])
    return min(float(ends.min()), 0.0), max(float(ends.max()), 0.0)


def _freeze_quantized(wrapper) -> None:
    """Stop QAT training a frozen layer's weights (--whiten's convolution).

    tfmot's QuantizeWrapper lists the weights it quantizes (the kernel) among its own trainable
    weights whatever the wrapped layer's ``trainable`` says (tensorflow/model-optimization#881,
    #1067), and ``quantize_apply`` copies weights by position, which a frozen layer reorders: so
    freeze after ``quantize_apply``, moving those weights to the non-trainable ones.
    """
    name = wrapper.layer.name
    wrapper.layer.trainable = False
    wrapper._non_trainable_weights.extend(v for v in wrapper._trainable_weights if _owner(v) == name)
    wrapper._trainable_weights = [v for v in wrapper._trainable_weights if _owner(v) != name]


RANGE_IMAGES = 1024  # training images whose activations start the QAT ranges


def init_activation_ranges(tf_keras, model, qat, images, seed: int) -> int:
    """Start each activation quantizer's range where the float model's activations lie.

    tfmot starts every range at -6..6 and moves it by a moving average (decay 0.999) of the batch
    minimum and maximum, so a fine-tune of a few hundred steps still ended with ranges from about -2
    on ReLU outputs (zero points 48-67 of 255 in the exported files): a fifth to a quarter of the
    8-bit range unused, and ONNX Runtime, which folds a ReLU into an integer convolution only when
    its range starts at 0, ran those convolutions in float. The average over batches of each layer's
    minimum and maximum (0 included) is what that moving average converges to. Returns how many
    quantizers were set. The input's range is 0..255 and a Rescaling's the exact image of that
    (`pixel_range`): set, not measured, so every pixel value lies on the 8-bit grid.
    """
    pairs = []  # (min variable, max variable, float layer)
    for wrapper in qat.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None:
            continue
        own = {v.name.rsplit("/", 1)[-1].split(":")[0]: v for v in wrapper.weights}  # quant_relu3/output_min:0
        for prefix in ("output", "post_activation"):
            if f"{prefix}_min" in own and f"{prefix}_max" in own:
                pairs.append((own[f"{prefix}_min"], own[f"{prefix}_max"], model.get_layer(inner.name)))
    exact = [(layer.quantizer_vars["min_var"], layer.quantizer_vars["max_var"], (0.0, 255.0))
             for layer in qat.layers  # tfmot's quantizer of the model's input, in front of the Rescaling
             if type(layer).__name__ == "QuantizeLayer" and getattr(layer, "quantizer_vars", None)]
    exact += [(vmin, vmax, pixel_range(layer)) for vmin, vmax, layer in pairs if type(layer).__name__ in PIXELS]
    for vmin, vmax, (low, high) in exact:
        vmin.assign(low)
        vmax.assign(high)
    pairs = [(vmin, vmax, layer) for vmin, vmax, layer in pairs if type(layer).__name__ not in PIXELS]
    if not pairs:
        return len(exact)
    probe = tf_keras.Model(model.inputs, [layer.output for _, _, layer in pairs])
    order = np.random.default_rng(seed).permutation(len(images))[:RANGE_IMAGES]
    lows, highs = [], []
    for start in range(0, len(order), 128):
        outs = probe(images[order[start:start + 128]].astype(np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        lows.append([min(float(np.min(o)), 0.0) for o in outs])
        highs.append([max(float(np.max(o)), 0.0) for o in outs])
    for (vmin, vmax, _), low, high in zip(pairs, np.mean(lows, axis=0), np.mean(highs, axis=0)):
        vmin.assign(low)
        vmax.assign(high if high > low else low + 1e-3)
    return len(pairs) + len(exact)


def accuracy(model, ds) -> float:
    probs = model.predict(ds.x_test.astype(np.float32), batch_size=256, verbose=0)
    return float(np.mean(probs.argmax(1) == ds.y_test))


def recalibrate_qat_batchnorm(qat, ds, job: dict) -> int:
    """Recompute the QAT model's BatchNorm statistics over unaugmented training images, as `edgecnn train`
    does after augmented training: the fine-tune's moving averages were gathered by changing weights on
    augmented images. The fake-quant ranges stay as trained. Returns the number of images used."""
    from edgecnn import balance
    from edgecnn.model import RECALIBRATION_IMAGES, recalibrate_batchnorm

    bns = [inner for inner in (getattr(layer, "layer", layer) for layer in qat.layers)
           if type(inner).__name__ == "BatchNormalization"]
    images = balance.training_images(ds.x_train, ds.y_train, job.get("class_balance", "none"), job["seed"],
                                     RECALIBRATION_IMAGES)
    return recalibrate_batchnorm(qat, images, job["batch_size"], job["seed"], batchnorms=bns)


def run(job: dict) -> dict:
    tf, tf_keras, tfmot = _libs()
    from edgecnn import data as data_mod
    from edgecnn.model import build_augment, parse_augment
    from edgecnn.tfdata import batches

    tf_keras.utils.set_random_seed(job["seed"])
    model = rebuild(job, tf_keras)
    x_ref = np.load(job["reference_images"])
    ref = np.load(job["reference_probs"])
    got = model.predict(x_ref.astype(np.float32), verbose=0)
    transfer_diff = float(np.abs(got - ref).max())
    if transfer_diff > TRANSFER_TOLERANCE:
        raise RuntimeError(f"tf_keras rebuild does not match the Keras 3 model (max |dp| {transfer_diff:.2e})")

    ds = data_mod.load(job["data"], image_size=tuple(job["input_shape"][:2]), channels=job["input_shape"][2],
                       val_split=job["val_split"], test_split=job["test_split"], seed=job["seed"],
                       skip_bad_images=job["skip_bad_images"], resize=job.get("resize", "squash"))
    names = parse_augment(job["augment"])
    augment = (build_augment(names, tuple(job["input_shape"]), job["seed"], keras_module=tf_keras,
                             translate=job["translate"], translate_fill=job["translate_fill"])
               if names else None)
    train_ds = batches(tf, ds.x_train, ds.y_train, ds.num_classes, job["batch_size"], True, job["seed"],
                       repeat=True, class_balance=job.get("class_balance", "none"), augment=augment)
    val_ds = (batches(tf, ds.x_val, ds.y_val, ds.num_classes, job["batch_size"], False, job["seed"])
              if len(ds.x_val) else None)  # a run trained with --val-split 0 has none
    steps_per_epoch = int(np.ceil(len(ds.x_train) / job["batch_size"]))

    result: dict = {"transfer_max_abs_diff": transfer_diff}
    frozen = set(job.get("frozen", ()))
    callbacks = []
    if job["mode"] == "qat":
        q = tfmot.quantization.keras

        # tfmot's own output-only config (default 8-bit scheme); quantize_scope already knows it.
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_configs as configs)

        pixels = pixel_quantize_config(tfmot)

        def annotate(layer):
            if type(layer).__name__ in NOT_QUANTIZABLE:
                return layer
            if type(layer).__name__ in OUTPUT_ONLY:
                return q.quantize_annotate_layer(layer, quantize_config=configs.Default8BitOutputQuantizeConfig())
            if type(layer).__name__ in PIXELS:
                return q.quantize_annotate_layer(layer, quantize_config=pixels())
            return q.quantize_annotate_layer(layer)

        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        with q.quantize_scope({"PixelQuantizeConfig": pixels}):
            tuned = q.quantize_apply(annotated)
        for wrapper in tuned.layers:
            if getattr(wrapper, "layer", None) is not None and wrapper.layer.name in frozen:
                _freeze_quantized(wrapper)
        result["activation_ranges_set"] = init_activation_ranges(tf_keras, model, tuned, ds.x_train, job["seed"])
    else:
        sp = tfmot.sparsity.keras
        steps = steps_per_epoch * job["epochs"]
        if job["schedule"] == "polynomial":
            schedule = sp.PolynomialDecay(0.0, job["sparsity"], begin_step=0, end_step=max(1, int(steps * 0.7)),
                                          frequency=max(1, steps // 20))
        else:
            schedule = sp.ConstantSparsity(job["sparsity"], begin_step=0, frequency=max(1, steps // 20))

        def prune(layer):  # a frozen layer (--whiten's convolution) keeps its weights
            if type(layer).__name__ in PRUNABLE and layer.name not in frozen:
                return sp.prune_low_magnitude(layer, pruning_schedule=schedule)
            return layer

        tuned = tf_keras.models.clone_model(model, clone_function=prune)
        for layer in tuned.layers:  # clone_model gives unwrapped layers fresh weights: copy them by name
            inner = getattr(layer, "layer", layer)
            if inner.weights:
                inner.set_weights(model.get_layer(inner.name).get_weights())
            if inner.name in frozen:
                inner.trainable = False
        callbacks.append(sp.UpdatePruningStep())

    tuned.compile(optimizer=tf_keras.optimizers.Adam(job["lr"]),
                  loss=tf_keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    t0 = time.perf_counter()
    hist = tuned.fit(train_ds, validation_data=val_ds, epochs=job["epochs"], callbacks=callbacks,
                     steps_per_epoch=steps_per_epoch, verbose=2)
    result["train_seconds"] = time.perf_counter() - t0
    result["history"] = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}}
                         for i in range(len(hist.history["loss"]))]

    if job["mode"] == "qat":  # the fine-tune's BatchNorm averages: changing weights, augmented images
        result["tuned_model_accuracy_finetuned_batchnorm"] = accuracy(tuned, ds)
        result["batchnorm_recalibration_images"] = recalibrate_qat_batchnorm(tuned, ds, job)
    if job["mode"] == "prune":
        tuned = tfmot.sparsity.keras.strip_pruning(tuned)
        result["sparsity"] = {}
        for layer in tuned.layers:
            if type(layer).__name__ in PRUNABLE and layer.name not in frozen:
                k = layer.kernel.numpy()
                result["sparsity"][layer.name] = float(np.mean(k == 0))
    weights = float_weights(model, tuned)
    np.savez(job["weights_out"], **weights)
    result["tuned_model_accuracy"] = accuracy(tuned, ds)
    for layer in model.layers:  # the float architecture with the fine-tuned weights, as the parent will see it
        n = len(layer.get_weights())
        if n:
            layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(n)])
    result["float_weights_accuracy"] = accuracy(model, ds)
    if job["mode"] == "qat":
        result["exports"] = export_qat(tf, tuned, ds, job)
    return result


def export_qat(tf, qat, ds, job) -> list[dict]:
    """int8 TFLite and QDQ ONNX from the fake-quant graph, each verified against the QAT model."""
    from edgecnn.export import ExportConfig, export_one, filename
    from edgecnn.export import onnx as onx
    from edgecnn.export.tflite import calibration_images, run_converter
    from edgecnn.export.tflite_metadata import populate
    from edgecnn.export.verify import Thresholds

    calib = calibration_images(ds.x_train, job["calib_samples"], job["seed"])
    x_verify = ds.x_test[: job["verify_samples"]]
    ref = qat.predict(x_verify.astype(np.float32), verbose=0)
    out_dir = Path(job["exports_dir"])
    labels = json.loads(Path(job["labels"]).read_text())
    entries = []

    cfg = ExportConfig(thresholds=Thresholds(int8_agreement=job["min_agreement_int8"]))

    for fmt in ("tflite", "onnx"):
        entry = {"file": filename(fmt, "int8"), "format": fmt, "variant": "int8", "status": "ok", "source": "qat",
                 "calib_samples": int(len(calib))}

        def make_blob(fmt=fmt):
            if fmt == "tflite":  # batch 1, as `edgecnn export` writes TFLite files (--export-batch auto)
                fn = tf.function(lambda x: qat(x, training=False))
                spec = tf.TensorSpec([1, *qat.input_shape[1:]], tf.float32, name="image")
                conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(spec)], qat)
                return populate(run_converter(conv, "int8", calib, job["io_dtype"]), labels, "int8-qat")
            # tf2onnx turns the activations' fake-quant ops into QuantizeLinear/DequantizeLinear pairs and
            # folds the weights' into float constants on the int8 grid: stored as int8 again here.
            proto = onx.convert_float(qat, job["opset"])
            entry["int8_weights"] = onx.store_int8_weights(proto)
            return onx.finalize(proto, labels, "int8-qat")

        entries.append(export_one(entry, out_dir, make_blob, x_verify, ref, cfg))
    return entries


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = {"status": "ok", **run(job)}
    except Exception as exc:
        result = {"status": "failed", "error": str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__,
                  "traceback": traceback.format_exc()[-3000:]}
    Path(job["result_out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
