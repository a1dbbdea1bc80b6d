"""edgecnn quant-debug: each layer's own int8 error, measured on the quantization edgecnn export writes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from conftest import quant_debug_trials, run_main


def test_quant_debug_measures_the_layers_of_the_exported_int8_file(run_copy, capsys):
    from edgecnn.export import ExportConfig, export
    from edgecnn.model import load_keras
    from edgecnn.runners.tflite import interpreter
    from edgecnn.evaluate import load_run_data
    from edgecnn._tf import keras
    from edgecnn.quant_debug import format_text

    export(ExportConfig(run=str(run_copy), formats="tflite", quantize="int8", calib_samples=100,
                        verify_samples=64), log=lambda m: None)
    code, out, err = run_main(capsys, "quant-debug", str(run_copy), "--calib-samples", "100", "--samples", "40",
                              "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result == json.loads((run_copy / "quant_debug.json").read_text()) | {"path": result["path"]}
    layers = result["layers"]
    # One row per quantized op, in model order, named by the Keras layers fused into it.
    core = load_keras(run_copy / "model.keras")
    convs = [layer.name for layer in core.layers if layer.__class__.__name__ == "Conv2D"]
    pools = [r for r in layers if r["op"] == "MAX_POOL_2D"]
    layers = [r for r in layers if r["op"] != "MAX_POOL_2D"]
    assert [r["op"] for r in layers] == ["CONV_2D"] * len(convs) + ["MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    assert [r["layer"].split("+")[0] for r in layers[:len(convs)]] == convs
    assert pools and all(r["rmse_over_scale"] < 1e-3 for r in pools)  # max-pooling int8 values loses nothing
    assert result["images"]["count"] == 40 and result["calibration"]["samples"] == 100
    # The same scales as the int8 file edgecnn export wrote with the same calibration.
    assert result["export_int8"]["same_scales"] is True
    for r in layers:
        assert 0 <= r["clipped_fraction"] < 0.5 and 0 < r["rmse_over_scale"] < 3
        assert r["sqnr_db"] is None or r["sqnr_db"] > 10
    assert set(result["lowest_sqnr"]) <= {r["layer"] for r in layers} and len(result["lowest_sqnr"]) == 3
    assert "pool" not in " ".join(result["lowest_sqnr"])

    # The first row, recomputed by hand from the exported file itself and Keras: the first layer's int8 output
    # tensor in model_int8.tflite (uint8 input of scale 1: the pixels exactly) against the Keras layer's output.
    first = layers[0]
    x = load_run_data(run_copy, labelled=False).x_test[:40]
    sub = keras.Model(core.inputs, core.get_layer(first["layer"].split("+")[-1]).output)
    ref = sub.predict(x.astype(np.float32), verbose=0)
    it = interpreter(run_copy / "exports" / "model_int8.tflite", delegate=False, preserve_all_tensors=True)
    tensor = next(d for d in it.get_tensor_details()
                  if d["name"].split(";")[0] == first["tensor"].split(";")[0] and d["dtype"] == np.int8
                  and len(d["quantization_parameters"]["scales"]) == 1)  # not the per-channel weights
    scale, zp = tensor["quantization"]
    assert np.float32(scale) == np.float32(first["scale"])
    got = []
    for image in x:
        it.set_tensor(it.get_input_details()[0]["index"], image[None])
        it.invoke()
        got.append((it.get_tensor(tensor["index"]).astype(np.float64) - zp) * scale)
    rmse = float(np.sqrt(np.mean((np.concatenate(got) - ref) ** 2))) / scale
    assert abs(rmse - first["rmse_over_scale"]) < 0.02 + 0.05 * rmse, (rmse, first["rmse_over_scale"])

    # Drift: each tensor of the int8 path against the Keras model's, every row matched (the softmax by the
    # model's output). The pixels reach the first convolution exactly, so its own error is all its drift; the
    # last convolution's drift, recomputed from model_int8.tflite itself, holds the layers before it too.
    assert all(r["drift_tensor"] for r in result["layers"]) and "drift dB" in format_text(result)
    assert abs(first["drift_sqnr_db"] - first["sqnr_db"]) < 0.05, first
    last = layers[len(convs) - 1]
    assert last["drift_sqnr_db"] < last["sqnr_db"] - 1, last
    tensor = next(d for d in it.get_tensor_details()
                  if d["name"].split(";")[0] == last["tensor"].split(";")[0] and d["dtype"] == np.int8
                  and len(d["quantization_parameters"]["scales"]) == 1)
    scale, zp = tensor["quantization"]
    got = []
    for image in x:
        it.set_tensor(it.get_input_details()[0]["index"], image[None])
        it.invoke()
        got.append((it.get_tensor(tensor["index"]).astype(np.float64) - zp) * scale)
    ref = keras.Model(core.inputs, core.get_layer(last["drift_tensor"]).output).predict(x.astype(np.float32),
                                                                                       verbose=0)
    err = np.concatenate(got) - ref
    by_hand = 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / float(np.sum(err ** 2)))
    assert abs(by_hand - last["drift_sqnr_db"]) < 0.1, (by_hand, last["drift_sqnr_db"])

    # Other calibration gives other scales, and the result says it no longer describes the file.
    code, out, _ = run_main(capsys, "quant-debug", str(run_copy), "--calib-samples", "3", "--samples", "8")
    assert code == 0
    assert "other scales" in out and "lowest SQNR:" in out and "written:" in out
    assert json.loads((run_copy / "quant_debug.json").read_text())["export_int8"]["same_scales"] is False

    # The run's report shows the table, and leaves out one made of another model.
    assert run_main(capsys, "report", str(run_copy))[0] == 0
    page = (run_copy / "report.md").read_text()
    assert "## Per-layer int8 error" in page and f"| 1 | {layers[0]['layer']} | CONV_2D |" in page
    saved = json.loads((run_copy / "quant_debug.json").read_text())
    (run_copy / "quant_debug.json").write_text(json.dumps(saved | {"model_sha256": "0" * 64}))
    assert run_main(capsys, "report", str(run_copy))[0] == 0
    assert "Per-layer int8 error" not in (run_copy / "report.md").read_text()


def test_quant_debug_bad_input_is_one_line(run_copy, capsys, tmp_path):
    for args, needle in [(("--samples", "0"), "--samples"), (("--calib-samples", "0"), "--calib-samples"),
                         (("--data", str(tmp_path / "nowhere")), "nowhere")]:
        code, out, err = run_main(capsys, "quant-debug", str(run_copy), *args)
        assert code == 2 and err.startswith("error:") and needle in err and len(err.splitlines()) == 1, err
    code, _, err = run_main(capsys, "quant-debug", "nosuchrun", "--runs-dir", str(tmp_path))
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (run_copy / "quant_debug.json").exists()


def test_layer_labels_follow_keras_names_through_tracing_suffixes_and_nested_models():
    from edgecnn.quant_debug import label

    known = ["conv2d", "batch_normalization", "activation", "conv2d_1", "batch_normalization_1", "activation_1",
             "add", "add_1", "dense"]  # a Keras 2 ResNet inside the imported run's model (layer_names skips models)
    first = ("core_1/model_1/activation_1/Relu;core_1/model_1/batch_normalization_1/batchnorm/add_1;"
             "core_1/model_1/conv2d_1/convolution;core_1/model_1/batch_normalization_1/batchnorm/sub21")
    second = ("core_1/model_1/activation_1_2/Relu;core_1/model_1/batch_normalization_1_2/batchnorm/add_1;"
              "core_1/model_1/conv2d_1_2/convolution;core_1/model_1/batch_normalization_1_2/batchnorm/sub11")
    assert label(first, known) == "conv2d+batch_normalization+activation"  # not the op 'add_1', not the model
    assert label(second, known) == "conv2d_1+batch_normalization_1+activation_1"
    assert label("core_1/model_1/add_1_2/Add1", known) == "add_1"
    assert label("core_1/relu3_1/Relu;core_1/conv1_1/convolution", ["conv1", "relu3"]) == "conv1+relu3"
    assert label("StatefulPartitionedCall_1:02", known, "SOFTMAX") == "softmax"


def test_float_trials_score_the_int8_file_and_keep_just_that_layer_in_float(run_copy, capsys):
    from edgecnn.evaluate import load_run_data
    from edgecnn.export import ExportConfig, export
    from edgecnn.export import tflite as tfl
    from edgecnn.model import fold_pooled_batchnorm, load_keras
    from edgecnn.runners.tflite import interpreter

    export(ExportConfig(run=str(run_copy), formats="tflite", quantize="int8", calib_samples=30, verify_samples=64),
           log=lambda m: None)
    result, trials = quant_debug_trials(capsys, run_copy, "--calib-samples", "30")
    # The int8 accuracy is the exported file's (the same scales), scored here through its uint8 input.
    ds = load_run_data(run_copy)
    it = interpreter(run_copy / "exports" / "model_int8.tflite")
    right = 0
    for image, label in zip(ds.x_test[:80], ds.y_test[:80]):
        it.set_tensor(it.get_input_details()[0]["index"], image[None])
        it.invoke()
        right += int(it.get_tensor(it.get_output_details()[0]["index"])[0].argmax() == label)
    assert abs(right / 80 - trials["int8_accuracy"]) <= 1 / 80  # a tie among uint8 outputs may differ
    assert abs(trials["keras_accuracy"] - trials["int8_accuracy"]) < 0.2

    # keep_float leaves that one layer's weights in float32 and every other layer in int8.
    core = load_keras(run_copy / "model.keras")
    with tempfile.TemporaryDirectory() as tmp:
        saved = tfl.export_saved_model(fold_pooled_batchnorm(core), Path(tmp) / "sm", batch=1)
        calibrated = tfl.calibrated_model(saved, tfl.calibration_images(ds.x_train, 30))
    second_conv = [r for r in result["layers"] if r["op"] == "CONV_2D"][1]

    def weight_dtypes(blob):
        it = interpreter(content=blob, delegate=False)
        return [it._get_tensor_details(op["inputs"][1], 0)["dtype"].__name__ for op in it._get_ops_details()
                if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]

    full = weight_dtypes(tfl.quantize_calibrated(calibrated))
    kept = weight_dtypes(tfl.quantize_calibrated(calibrated, keep_float=(second_conv["float_tensor"],)))
    assert set(full) == {"int8"} and kept[1] == "float32" and kept[:1] + kept[2:] == full[:1] + full[2:]
