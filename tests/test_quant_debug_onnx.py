"""edgecnn quant-debug --format onnx: each layer's own error and drift, measured on model_int8.onnx itself."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np

from conftest import quant_debug_trials, run_main


def _export(run, **options):
    from edgecnn.export import ExportConfig, export

    export(ExportConfig(run=str(run), formats="onnx", quantize="int8", calib_samples=100, verify_samples=64,
                        **options), log=lambda m: None)


def test_onnx_quant_debug_measures_the_exported_file(run_copy, capsys):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from edgecnn._tf import keras
    from edgecnn.evaluate import load_run_data
    from edgecnn.model import load_keras

    _export(run_copy)
    code, out, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx", "--samples", "40", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result == json.loads((run_copy / "quant_debug_onnx.json").read_text()) | {"path": result["path"]}
    assert not (run_copy / "quant_debug.json").exists()  # the TFLite table is left alone
    core = load_keras(run_copy / "model.keras")
    convs = [layer.name for layer in core.layers if layer.__class__.__name__ == "Conv2D"]
    rows = [r for r in result["layers"] if r["op"] == "Conv"]
    # One row per convolution, named by the Keras layers folded into it, weighed against its float32 weights,
    # and against the float32 model's tensor of the same name.
    assert [r["layer"].split("+")[0] for r in rows] == convs
    assert all(r["float_weights"] and r["drift_tensor"] for r in result["layers"])
    assert [r["op"] for r in result["layers"]][-3:] == ["GlobalAveragePool", "Gemm", "Softmax"]
    for r in rows:
        assert 0.05 < r["rmse_over_scale"] < 1 and r["clipped_fraction"] < 0.01 and r["sqnr_db"] > 20
        assert r["drift_sqnr_db"] < r["sqnr_db"] + 0.5  # errors pile up: the drift is no smaller than its own
    # The pixels reach the first convolution exactly (uint8 input, then x/255 on a 1/255 grid), so its own error
    # is all the drift there is; later convolutions add to what came before.
    first = rows[0]
    assert abs(first["drift_sqnr_db"] - first["sqnr_db"]) < 0.05, first
    assert rows[-1]["drift_sqnr_db"] < rows[-1]["sqnr_db"] - 1
    check = result["runtime_check"]
    assert check["images"] == 40 and check["top1_agreement"] >= 0.95 and check["max_abs_dp"] < 0.05

    # The first row recomputed by hand: the first convolution's uint8 output tensor in model_int8.onnx, as ONNX
    # Runtime's integer kernels write it, against the Keras layer's output.
    proto = onnx.load(str(run_copy / "exports" / "model_int8.onnx"))
    tensor = first["tensor"].split(";")[0]
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    proto.graph.output.append(helper.make_tensor_value_info(q.output[0], onnx.TensorProto.UINT8, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = load_run_data(run_copy, labelled=False).x_test[:40]
    got = (session.run([q.output[0]], {"image": x.astype(np.float32)})[0].astype(np.float64)
           - first["zero_point"]) * first["scale"]
    ref = keras.Model(core.inputs, core.get_layer(first["layer"].split("+")[-1]).output).predict(
        x.astype(np.float32), verbose=0).transpose(0, 3, 1, 2)  # ONNX holds it channels first
    rmse = float(np.sqrt(np.mean((got - ref) ** 2))) / first["scale"]
    assert abs(rmse - first["rmse_over_scale"]) < 0.02 + 0.05 * rmse, (rmse, first["rmse_over_scale"])

    # TensorFlow's own debugger on the TFLite file, calibrated on the same images, finds the first convolution's
    # output on the same scale, and the same error: two independent measurements of one layer.
    from edgecnn.export import ExportConfig, export
    from edgecnn.quant_debug import quant_debug

    export(ExportConfig(run=str(run_copy), formats="tflite", quantize="int8", calib_samples=100, verify_samples=64),
           log=lambda m: None)
    tfl = next(r for r in quant_debug(str(run_copy), samples=40, calib_samples=100)["layers"] if r["op"] == "CONV_2D")
    assert tfl["layer"] == first["layer"] and abs(tfl["scale"] / first["scale"] - 1) < 1e-4, (tfl, first)
    assert abs(tfl["rmse_over_scale"] - first["rmse_over_scale"]) < 0.02, (tfl, first)

    # The run's report shows the table, and leaves it out once the file is replaced.
    assert run_main(capsys, "report", str(run_copy))[0] == 0
    page = (run_copy / "report.md").read_text()
    assert "## Per-layer int8 error of model_int8.onnx" in page and f"| {rows[0]['layer']} | Conv |" in page
    _export(run_copy, onnx_target="cpu-no-vnni")
    assert run_main(capsys, "report", str(run_copy))[0] == 0
    assert "of model_int8.onnx" not in (run_copy / "report.md").read_text()


def test_onnx_quant_debug_reads_tensorrt_files_with_their_relu_nodes(run_copy, capsys):
    """--onnx-target tensorrt keeps each ReLU as its own quantized node, and each consumer its own Q/DQ pair:
    a convolution row, then a ReLU row that adds nothing (it clips on the same grid)."""
    _export(run_copy, onnx_target="tensorrt")
    code, out, err = run_main(capsys, "quant-debug", str(run_copy), "-f", "onnx", "--samples", "16")
    assert code == 0, err
    result = json.loads((run_copy / "quant_debug_onnx.json").read_text())
    ops = [r["op"] for r in result["layers"]]
    assert ops.count("Conv") == ops.count("Relu") == 3 and len({r["tensor"] for r in result["layers"]}) == len(ops)
    for r in result["layers"]:
        assert r["zero_point"] == 0 and r["float_weights"] and r["drift_tensor"]  # symmetric int8, all matched
        if r["op"] == "Relu":
            assert r["rmse_over_scale"] < 1e-3
    assert "drift dB" in out and "lowest SQNR:" in out and "top-1 agreement" in out


def test_onnx_quant_debug_bad_input_is_one_line(run_copy, capsys, tmp_path):
    code, _, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx")
    assert code == 2 and "model_int8.onnx does not exist" in err and "edgecnn export" in err
    _export(run_copy)
    for args, needle in [(("--format", "onnx", "--float-trials", "-1"), "--float-trials"),
                         (("--format", "onnx", "--calib-samples", "100"), "--calib-samples"),
                         (("--format", "pb"), "--format"), (("--format", "onnx", "--samples", "0"), "--samples")]:
        code, _, err = run_main(capsys, "quant-debug", str(run_copy), *args)
        assert code == 2 and err.startswith("error:") and needle in err and len(err.splitlines()) == 1, err
    (run_copy / "exports" / "model_int8.onnx").write_bytes(b"not onnx")
    code, _, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx")
    assert code == 2 and err.startswith("error:") and "model_int8.onnx" in err and len(err.splitlines()) == 1, err
    assert not (run_copy / "quant_debug_onnx.json").exists()


def test_a_float_file_has_no_quantized_activation_to_compare(run_copy, capsys):
    from edgecnn.export import ExportConfig, export

    export(ExportConfig(run=str(run_copy), formats="onnx", quantize="none", verify_samples=32), log=lambda m: None)
    exports = run_copy / "exports"
    shutil.copyfile(exports / "model_float32.onnx", exports / "model_int8.onnx")
    code, _, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx")
    assert code == 2 and "no quantized activation" in err and len(err.splitlines()) == 1, err


def test_a_residual_add_is_its_own_row_with_the_relu_the_quantizer_folded_into_it(run_copy, capsys):
    """The Add of a residual block (``r16``: conv, conv, add, ReLU) is quantized with its ReLU folded into its
    range; its row carries both names, has no weights to miss, and its drift is matched through the ReLU."""
    from edgecnn import model

    n = len(json.loads((run_copy / "labels.json").read_text())["class_names"])
    model.build_core("C: 8n 16n p r16 gap", (16, 16, 3), n).save(run_copy / "model.keras")
    _export(run_copy)
    code, out, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx", "--samples", "16")
    assert code == 0, err
    result = json.loads((run_copy / "quant_debug_onnx.json").read_text())
    adds = [r for r in result["layers"] if r["op"] == "Add"]
    assert len(adds) == 1 and adds[0]["layer"].startswith("add") and "+relu" in adds[0]["layer"], adds
    assert all(r["float_weights"] and r["drift_tensor"] for r in result["layers"]), result["layers"]
    assert adds[0]["sqnr_db"] > 20 and adds[0]["drift_sqnr_db"] > 15, adds
    assert "no float32 weights" not in out


def test_onnx_float_trials_score_the_file_and_leave_just_that_layer_in_float(run_copy, capsys, tmp_path):
    import onnx
    import onnxruntime as ort

    from edgecnn.evaluate import load_run_data
    from edgecnn.model import load_keras
    from edgecnn.quant_debug import format_text
    from edgecnn.quant_debug_onnx import KEEP_FLOAT_WEIGHTS, debug_model, float_reference, trial_model

    _export(run_copy)
    result, trials = quant_debug_trials(capsys, run_copy, "-f", "onnx")
    # The int8 accuracy is the exported file's, run by ONNX Runtime as deployed; the float one is Keras's.
    ds = load_run_data(run_copy)
    x, y = ds.x_test[:80], ds.y_test[:80]
    path = run_copy / "exports" / "model_int8.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert trials["int8_accuracy"] == float((session.run(None, {"image": x.astype(np.float32)})[0].argmax(1)
                                             == y).mean())
    core = load_keras(run_copy / "model.keras")
    keras_acc = float((core.predict(x.astype(np.float32), verbose=0).argmax(1) == y).mean())
    assert abs(trials["float_accuracy"] - keras_acc) <= 1 / 80  # a tie may break either way
    assert all(0 <= t["accuracy"] <= 1 for t in trials["layers"]) and "left in float32" in format_text(result)

    # The trial file of the second convolution: that Conv reads float32 weights and runs in float; the other
    # convolutions stay int8 and run in ONNX Runtime's integer kernels.
    proto = onnx.load(str(path))
    conv = [r for r in result["layers"] if r["op"] == "Conv"][1]
    debug, _ = debug_model(proto, float_reference(core, proto, (16, 16, 3)), [layer.name for layer in core.layers])
    trial = trial_model(debug, proto, conv)
    onnx.checker.check_model(trial)  # pruned of the debug copies, in topological order
    inits = {t.name: t.data_type for t in trial.graph.initializer}
    kernels = [n.input[1] for n in trial.graph.node if n.op_type == "Conv"]
    assert sum(inits.get(k) == onnx.TensorProto.FLOAT for k in kernels) == 1 and len(kernels) == 3, kernels
    # As float_trials runs it: ONNX Runtime's optimizer would quantize those float32 weights itself.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "trial_optimized.onnx")
    ort.InferenceSession(trial.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=KEEP_FLOAT_WEIGHTS)
    ran = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ran["QLinearConv"] == 2 and ran["Conv"] == 1, ran


def test_a_flip_tta_file_is_measured_against_a_flip_tta_float_model(run_copy, capsys):
    """``export --tta`` puts the mirror image in the batch (ReverseSequence, Concat): those move values on the
    pixels' grid and get no row; every layer after them is matched to the float model with the same flip."""
    _export(run_copy, tta=True)
    code, out, err = run_main(capsys, "quant-debug", str(run_copy), "--format", "onnx", "--samples", "16")
    assert code == 0, err
    result = json.loads((run_copy / "quant_debug_onnx.json").read_text())
    ops = [r["op"] for r in result["layers"]]
    assert ops[:2] == ["input", "Mul"] and ops.count("Conv") == 3, ops
    assert not any(op in ("Concat", "ReverseSequence") or "Transpose" in op for op in ops), ops
    assert all(r["drift_tensor"] and r["float_weights"] for r in result["layers"])
    conv = next(r for r in result["layers"] if r["op"] == "Conv")
    assert abs(conv["drift_sqnr_db"] - conv["sqnr_db"]) < 0.05, conv  # the flipped pixels are exact too
    assert result["runtime_check"]["top1_agreement"] >= 0.9
