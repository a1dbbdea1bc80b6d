"""Per-layer error of full-integer int8 quantization: which layers lose precision, and whether from rounding or
from values beyond the range calibration chose.

The model is quantized as ``edgecnn export`` quantizes it (the same deployable graph, calibration images and
converter, so the same scales as ``model_int8.tflite``), in TensorFlow's debug mode: after every quantized op
the model also runs that op in float32 on the same (dequantized) int8 inputs. Each row therefore measures one
layer's own error (its int8 weights and its int8 output), not the error piled up by the layers before it; that
one, the drift, compares the int8 path's tensor with the Keras model's layer output on the same image.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import numpy as np

from edgecnn import runs
from edgecnn.errors import EdgeCNNError

ROUNDING = 1 / math.sqrt(12)  # rmse/scale of rounding alone: the least any 8-bit tensor has
QMIN, QMAX = -128, 127  # the debug model's int8 activations
RESULT_FILE = "quant_debug.json"


def layer_names(model) -> list[str]:
    """The name of every layer that is not a model, nested models' layers included, in model order."""
    out = []
    for layer in model.layers:
        out += layer_names(layer) if hasattr(layer, "layers") else [layer.name]
    return out


def label(tensor_name: str, known: list[str], op: str = "") -> str:
    """The Keras layers a converted tensor comes from, in model order ('conv1+bn2+relu3' for a fused
    Conv-BN-ReLU), from names like 'core_1/relu3_1/Relu;core_1/bn2_1/batchnorm/add_1;...'; the op's name where
    none is named (a Dense layer's softmax).

    Each ';' part is a scope path ending in a TensorFlow op name (dropped: 'add_1' there is an op, not the layer
    'add_1'); tracing gave each layer's scope a '_N' suffix, so 'conv2d_1_2' is the layer 'conv2d_1' and
    'conv2d_1' the layer 'conv2d' when both exist. tfmot's wrappers prefix 'quant_' ('core/quant_conv1/...' in a
    QAT ONNX file)."""
    order = {name: i for i, name in enumerate(known)}
    found = set()
    for part in tensor_name.split(";"):
        for scope in part.split("/")[:-1]:
            bare = scope.removeprefix("quant_")
            for name in (re.sub(r"_\d+$", "", scope), scope, re.sub(r"_\d+$", "", bare), bare):
                if name in order:
                    found.add(name)
                    break
    return "+".join(sorted(found, key=order.get)) or op.lower() or tensor_name.split(";")[0][:60]


def layer_errors(blob: bytes, images: np.ndarray, known: list[str] = (), reference=None) -> list[dict]:
    """Run ``blob`` (the debug model of export.tflite.quantize_calibrated) on ``images`` (uint8, N x H x W x C);
    one row per quantized op, in model order: its int8 output against its float op's, over every image and
    element; with the float32 Keras model ``reference``, also its drift: against the output of the last Keras
    layer the row is named after (the int8 path of the debug model is the deployed file's, op for op)."""
    from edgecnn.runners.tflite import interpreter

    # No XNNPACK: a delegate fuses ops and leaves their intermediate tensors unwritten.
    it = interpreter(content=blob, delegate=False, preserve_all_tensors=True)
    ops = it._get_ops_details()  # private, and the only op listing LiteRT offers
    defining = {int(t): o for o in ops for t in o["outputs"]}
    rows = []
    for op in ops:
        if op["op_name"] != "NumericVerify":
            continue
        q, f = (int(i) for i in op["inputs"])
        detail = it._get_tensor_details(q, 0)
        scales, zps = detail["quantization_parameters"]["scales"], detail["quantization_parameters"]["zero_points"]
        if len(scales) != 1:  # activations are quantized per tensor; anything else is not a layer output
            continue
        rows.append({"q": q, "f": f, "name": detail["name"], "float_name": it._get_tensor_details(f, 0)["name"],
                     "op": defining[q]["op_name"] if q in defining else "?",
                     "shape": [int(v) for v in detail["shape"][1:]], "scale": float(scales[0]),
                     "zero_point": int(zps[0]), "n": 0, "f2": 0.0, "e": 0.0, "e2": 0.0, "max": 0.0, "clipped": 0})
    if not rows:
        raise EdgeCNNError("the debug model holds no quantized layer to compare")
    inp = it.get_input_details()[0]
    floats = _float_outputs(reference, rows, known) if reference is not None else None
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        outs = floats(chunk) if floats else {}
        for j, image in enumerate(chunk):
            it.set_tensor(inp["index"], image[None].astype(np.float32))
            it.invoke()
            for r in rows:
                ref = it.get_tensor(r["f"]).astype(np.float64).ravel()
                got = (it.get_tensor(r["q"]).astype(np.float64).ravel() - r["zero_point"]) * r["scale"]
                drift = outs[r["drift"]][j].astype(np.float64).ravel() if r.get("drift") else None
                accumulate(r, got, ref, r["scale"], r["zero_point"], QMIN, QMAX, drift)
    return [summarize(r, known) for r in rows]


def _float_outputs(reference, rows: list[dict], known):
    """A function of a batch of images giving, by layer name, the outputs of ``reference``'s layers that rows are
    named after (each row's last such layer of its shape: 'relu3' of conv1+bn2+relu3), its ``drift``."""
    from edgecnn._tf import keras

    layers = {layer.name: layer for layer in reference.layers}
    for r in rows:
        names = label(r["name"], list(known), r["op"]).split("+")
        r["drift"] = next((n for n in reversed(names) if n in layers and hasattr(layers[n], "output")
                           and list(layers[n].output.shape[1:]) == r["shape"]), None)
    last = reference.layers[-1]
    if rows and not rows[-1]["drift"] and list(last.output.shape[1:]) == rows[-1]["shape"]:
        rows[-1]["drift"] = last.name  # the model's output ('probabilities'), named after no layer in the file
    wanted = sorted({r["drift"] for r in rows if r["drift"]})
    if not wanted:
        return None
    probe = keras.Model(reference.inputs, [layers[n].output for n in wanted])

    def run(x):
        out = probe([x.astype(np.float32)], training=False)  # a list, as the functional model's inputs are
        return dict(zip(wanted, (np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out]))))

    return run


def accumulate(sums: dict, got: np.ndarray, ref: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int,
               drift: np.ndarray | None = None):
    """Add one batch of a layer's dequantized output ``got`` and float reference ``ref`` (float64, flat) to its
    error sums (n, f2, e, e2, max, clipped: what summarize reads); clipped: reference values beyond the int8
    range [qmin, qmax] on that scale and zero point. ``drift``: the float32 model's tensor there (g2, d2)."""
    if drift is not None:
        sums["g2"] = sums.get("g2", 0.0) + float(drift @ drift)
        sums["d2"] = sums.get("d2", 0.0) + float((got - drift) @ (got - drift))
    err = got - ref
    lo, hi = (qmin - zero_point - 0.5) * scale, (qmax - zero_point + 0.5) * scale
    sums["n"] += ref.size
    sums["f2"] += float(ref @ ref)
    sums["e"] += float(err.sum())
    sums["e2"] += float(err @ err)
    sums["max"] = max(sums["max"], float(np.abs(err).max()))
    sums["clipped"] += int(((ref < lo) | (ref > hi)).sum())


def summarize(r: dict, known) -> dict:
    """One table row from a layer's error sums over every image and element (``r``: n, f2, e, e2, max, clipped,
    with its tensor's name, op, shape, scale and zero point; drift, g2 and d2 where the float32 model's tensor is
    known); also used for ONNX files (quant_debug_onnx)."""
    s = r["scale"]
    drift = r.get("drift")
    return {
        "layer": label(r["name"], list(known), r["op"]),
        "op": r["op"],
        "output_shape": r["shape"],
        "scale": s,
        "zero_point": r["zero_point"],
        "rmse_over_scale": math.sqrt(r["e2"] / r["n"]) / s,
        "max_error_over_scale": r["max"] / s,
        "bias_over_scale": r["e"] / r["n"] / s,
        "clipped_fraction": r["clipped"] / r["n"],
        "sqnr_db": 10 * math.log10(r["f2"] / r["e2"]) if r["e2"] > 0 and r["f2"] > 0 else None,
        "tensor": r["name"],
        "float_tensor": r["float_name"],  # what --float-trials keeps in float
        "drift_tensor": drift,  # the float32 model's tensor this one is compared with for drift
        "drift_sqnr_db": 10 * math.log10(r["g2"] / r["d2"]) if drift and r.get("d2", 0) > 0 and r["g2"] > 0
        else None,
    }


def float_trials(calibrated: bytes, layers: list[dict], core, images: np.ndarray, labels: np.ndarray) -> dict:
    """Test accuracy on ``images`` of Keras, of the int8 model, and of the int8 model with each of ``layers`` alone
    left in float32: whether keeping that layer in float would win the accuracy back."""
    from edgecnn.export import tflite as tfl
    from edgecnn.runners.tflite import interpreter

    def accuracy(blob: bytes) -> float:
        it = interpreter(content=blob)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        right = 0
        for image, label in zip(images, labels):
            it.set_tensor(inp["index"], image[None].astype(np.float32))
            it.invoke()
            right += int(it.get_tensor(out["index"])[0].argmax() == label)
        return right / len(images)

    keras_acc = float((core.predict(images.astype(np.float32), batch_size=256, verbose=0).argmax(1) == labels).mean())
    return {"images": int(len(images)), "keras_accuracy": keras_acc,
            "int8_accuracy": accuracy(tfl.quantize_calibrated(calibrated)),
            "layers": [{"layer": r["layer"], "accuracy": accuracy(tfl.quantize_calibrated(
                calibrated, keep_float=(r["float_tensor"],)))} for r in layers]}


def quant_debug(run: str | None, runs_dir: str = runs.DEFAULT_RUNS_DIR, data: str | None = None,
                calib_samples: int = 500, samples: int = 256, trials: int = 0, log=print) -> dict:
    """Per-layer int8 error of a run's model (or a .keras file beside its labels.json); writes
    ``RUN/quant_debug.json`` and returns it. ``trials``: also score the int8 model with each of the ``trials``
    lowest-SQNR layers left in float32 (float_trials)."""
    from edgecnn import model as model_mod
    from edgecnn.export import load_data, source
    from edgecnn.export import tflite as tfl
    from edgecnn.fsutil import sha256, write_json

    if calib_samples < 1:
        raise EdgeCNNError(f"--calib-samples must be at least 1, got {calib_samples}")
    if samples < 1:
        raise EdgeCNNError(f"--samples must be at least 1, got {samples}")
    if trials < 0:
        raise EdgeCNNError(f"--float-trials must be 0 or more, got {trials}")
    base, model_path, _ = source(run, runs_dir)
    core = model_mod.load_keras(model_path)
    ds = load_data(base, data, labelled=trials > 0)  # trials score accuracy: classes matched to the model's
    if tuple(ds.input_shape) != tuple(core.input_shape[1:]):
        raise EdgeCNNError(f"data images are {ds.input_shape} but the model takes {tuple(core.input_shape[1:])}")
    run_cfg = runs.config(base) if (base / "config.json").is_file() else {}
    if (run_cfg.get("finetune") or {}).get("mode") == "qat":
        log(f"note: {base.name}'s int8 files come from quantization-aware training; this measures post-training "
            f"quantization of its model.keras")
    calib = tfl.calibration_images(ds.x_train, calib_samples, run_cfg.get("seed", 0))  # as edgecnn export picks them
    images = ds.x_test[:samples]  # never empty: every data source refuses an empty test split
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-debug-") as tmp:
        deploy = model_mod.fold_pooled_batchnorm(core)  # the graph edgecnn export quantizes
        saved = tfl.export_saved_model(deploy, Path(tmp) / "saved_model", batch=1)
        calibrated = tfl.calibrated_model(saved, calib)
    layers = layer_errors(tfl.quantize_calibrated(calibrated, numeric_verify=True), images, layer_names(core),
                          reference=deploy)
    exported = base / "exports" / "model_int8.tflite"
    result = {
        "model": str(model_path),
        "model_sha256": sha256(model_path),  # the report leaves out a table of a model since replaced
        "calibration": {"split": "train", "samples": int(len(calib)), "seed": run_cfg.get("seed", 0)},
        "images": {"split": "test", "count": int(len(images))},
        "rounding_rmse_over_scale": ROUNDING,
        "layers": layers,
        "lowest_sqnr": [r["layer"] for r in lowest(layers)],
        # whether the run's int8 file was quantized the same way (it was not if made by QAT or other calibration)
        "export_int8": {"file": str(exported), "same_scales": same_scales(layers, exported)}
        if exported.is_file() else None,
    }
    if trials:
        log(f"scoring the int8 model with each of {len(lowest(layers, trials))} layers left in float32")
        result["float_trials"] = float_trials(calibrated, lowest(layers, trials), core, images,
                                              ds.y_test[:samples])
    result["path"] = str(write_json(base / RESULT_FILE, result))
    return result


def lowest(layers: list[dict], n: int = 3) -> list[dict]:
    """The ``n`` rows of lowest SQNR (rows without error have none)."""
    return sorted((r for r in layers if r["sqnr_db"] is not None), key=lambda r: r["sqnr_db"])[:n]


def same_scales(layers: list[dict], path: Path) -> bool:
    """Whether the TFLite file at ``path`` holds every row's output scale and zero point."""
    from edgecnn.runners.tflite import interpreter

    have = set()
    for d in interpreter(path, delegate=False).get_tensor_details():
        q = d["quantization_parameters"]
        if len(q["scales"]) == 1:
            have.add((float(np.float32(q["scales"][0])), int(q["zero_points"][0])))
    return all((float(np.float32(r["scale"])), r["zero_point"]) in have for r in layers)


def table(result: dict) -> list[list[str]]:
    """The per-layer table: a header row, then one row per quantized op (and a drift column where the rows
    measured it)."""
    drift = any("drift_tensor" in r for r in result["layers"])  # not in tables written before it was measured
    head = ["#", "layer", "op", "output", "scale", "rmse/scale", "max/scale", "bias/scale", "clipped %", "SQNR dB"]

    def db(v):
        return "inf" if v is None else f"{v:.1f}"

    return [head + ["drift dB"] * drift] + [
        [str(i), r["layer"], r["op"], "x".join(map(str, r["output_shape"])), f"{r['scale']:.4g}",
         f"{r['rmse_over_scale']:.3f}", f"{r['max_error_over_scale']:.2f}", f"{r['bias_over_scale']:+.3f}",
         f"{100 * r['clipped_fraction']:.2g}", db(r["sqnr_db"])]
        + ([db(r["drift_sqnr_db"]) if r.get("drift_tensor") else "-"] if drift else [])
        for i, r in enumerate(result["layers"], 1)]


def notes(result: dict) -> list[str]:
    """The lowest-SQNR layers, how to read the columns, and whether the run's int8 file has these scales."""
    if result.get("format") == "onnx":
        from edgecnn import quant_debug_onnx

        return quant_debug_onnx.notes(result)
    lines = ["lowest SQNR: " + (", ".join(f"{r['layer']} {r['sqnr_db']:.1f} dB" for r in lowest(result["layers"]))
                                or "-"),
             f"{result['images']['count']} test images, {result['calibration']['samples']} calibration images (as "
             f"edgecnn export --calib-samples {result['calibration']['samples']}); each row is one layer on the same "
             f"int8 inputs. rmse/scale {ROUNDING:.3f} is an output's rounding alone (ReLU's zeros lower it, int8 "
             f"weights raise it); clipped: float values beyond the int8 range calibration chose (a softmax output "
             f"of 1.0 is one: int8 stops at 255/256)"
             + ("; drift: SQNR of the int8 model's tensor against the Keras model's there, the error piled up to "
                "that layer." if any(r.get("drift_tensor") for r in result["layers"]) else ".")]
    ft = result.get("float_trials")
    if ft:
        lines.append(trials_note(ft, "Keras", ft["keras_accuracy"]))
    ex = result.get("export_int8")
    if ex:
        lines.append(f"{ex['file']}: " + ("the same scales, so this is its quantization" if ex["same_scales"] else
                                          "other scales (quantization-aware training, or other calibration): "
                                          "this is a fresh post-training quantization"))
    return lines


def trials_note(ft: dict, float_name: str, float_accuracy: float) -> str:
    """The float-trials line: the float model's accuracy, the int8 model's, and each trial's."""
    return (f"accuracy on {ft['images']} test images: {float_name} {100 * float_accuracy:.2f}%, int8 "
            f"{100 * ft['int8_accuracy']:.2f}%; int8 with one layer left in float32: "
            + ", ".join(f"{t['layer']} " + ("(no float32 weights)" if t["accuracy"] is None else
                                              f"{100 * t['accuracy']:.2f}%") for t in ft["layers"]))


def format_text(result: dict) -> str:
    """The per-layer table, aligned, and its notes."""
    rows = table(result)
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join(["  ".join(c.ljust(w) if k in (1, 2, 3) else c.rjust(w)
                                for k, (c, w) in enumerate(zip(row, widths))) for row in rows] + notes(result))
