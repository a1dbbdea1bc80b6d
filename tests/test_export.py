import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from edgecnn.errors import EdgeCNNError
from edgecnn.export import ExportConfig, export, plan
from edgecnn.inspect import inspect

SIX = ["model_float32.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite",
       "model_float32.onnx", "model_int8.onnx"]


def test_all_writes_six_verified_files(tiny_exports):
    report = json.loads((tiny_exports / "export_report.json").read_text())
    assert [e["file"] for e in report["exports"]] == SIX
    for e in report["exports"]:
        assert e["status"] == "ok" and (tiny_exports / e["file"]).stat().st_size == e["size_bytes"]
        assert e["sha256"] == hashlib.sha256((tiny_exports / e["file"]).read_bytes()).hexdigest()  # the final file
        assert e["verify"]["passed"] and e["verify"]["images"] == 100
    f32 = [e for e in report["exports"] if e["variant"] == "float32"]
    assert all(e["verify"]["agreement"] == 1.0 and e["verify"]["max_abs_diff"] < 1e-4 for e in f32)
    assert report["calibration"] == {"split": "train", "samples": 100, "seed": 0}
    assert (tiny_exports / "labels.json").is_file()
    assert not list(tiny_exports.glob(".*tmp*"))


def test_int8_tflite_is_full_integer_with_uint8_io_and_builtin_ops(tiny_exports):
    f32 = inspect(tiny_exports / "model_float32.tflite")
    i8 = inspect(tiny_exports / "model_int8.tflite")
    assert i8["inputs"][0]["dtype"] == "uint8" and i8["outputs"][0]["dtype"] == "uint8"
    q = i8["inputs"][0]["quantization"]
    assert q["scale"] == pytest.approx(1.0, rel=0.02) and q["zero_point"] == 0  # raw pixels go straight in
    assert f32["all_builtin"] and i8["all_builtin"]
    assert not any(op.startswith("Flex") for op in i8["ops"])
    assert set(i8["ops"]) - set(f32["ops"]) <= {"QUANTIZE", "DEQUANTIZE"}
    assert set(f32["ops"]) <= set(i8["ops"])
    assert f32["inputs"][0]["shape"] == i8["inputs"][0]["shape"] == [1, 16, 16, 3]  # batch 1 (--export-batch auto)


def test_int8_input_takes_raw_pixels_whatever_range_the_calibration_images_span(run_copy, tmp_path):
    """Calibrated on images spanning 60..180 only, the int8 input used to get scale 0.71 (TFLite and the
    ONNX QuantizeLinear alike): raw pixels fed to the TFLite file were misread, and pixels above 180
    saturated in both. Its range is now the whole 0..255."""
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    x = rng.integers(60, 181, (64, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    np.savez(tmp_path / "narrow.npz", x_train=x, y_train=y, x_test=x[:32], y_test=y[:32])
    export(ExportConfig(run=str(run_copy), formats="all", quantize="int8", data=str(tmp_path / "narrow.npz"),
                        calib_samples=64, verify_samples=32), log=lambda m: None)
    assert inspect(run_copy / "exports" / "model_int8.tflite")["inputs"][0]["quantization"] == {
        "scale": 1.0, "zero_point": 0}
    m = onnx.load(str(run_copy / "exports" / "model_int8.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    (q,) = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image"]
    scale, zero = float(init[q.input[1]]), int(init[q.input[2]])
    assert scale * (np.iinfo(init[q.input[2]].dtype).max - zero) >= 255 - 1e-3, "255 does not saturate"
    assert (scale, zero, init[q.input[2]].dtype) == (1.0, 0, np.uint8), "uint8 pixels are the quantized input"
    assert x.min() == 60 and x.max() == 180, "the caller's images are left as they were"


def test_calibration_images_may_come_in_any_class_folders(run_copy, tmp_path):
    """export --data needs images only (calibration, verification): a folder of two unrelated classes serves
    a ten-class model (evaluate and benchmark, which score, match classes by name instead)."""
    from conftest import make_folder

    folder = make_folder(tmp_path / "calib", classes=("day", "night"), per_class=12, size=(16, 16))
    report = export(ExportConfig(run=str(run_copy), formats="tflite", quantize="int8", data=str(folder),
                                 calib_samples=16, verify_samples=4), log=lambda m: None)
    assert [e["status"] for e in report["exports"]] == ["ok"]


def test_onnx_float_takes_any_batch_and_int8_is_qdq(tiny_exports, tiny_run):
    import onnx
    import onnxruntime as ort

    s = ort.InferenceSession(str(tiny_exports / "model_float32.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].name == "image" and s.get_outputs()[0].name == "probabilities"
    x = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3)).astype(np.float32)
    p = s.run(None, {"image": x})[0]
    assert p.shape == (7, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert list(inspect(tiny_exports / "model_float32.onnx")["parameter_dtypes"]) == ["float32"]
    assert list(inspect(tiny_exports / "model_int8.onnx")["parameter_dtypes"]) == ["int8"]  # every kernel
    m = onnx.load(str(tiny_exports / "model_int8.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    onnx.checker.check_model(m)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["class_names"]) == json.loads((tiny_run / "labels.json").read_text())["class_names"]
    # what a deployer's session needs on an x86 CPU without VNNI (tests/test_runners.py, the saturation test)
    assert json.loads(meta["onnxruntime_session_config"]) == {"session.x64quantprecision": "1"}
    float_meta = {p.key for p in onnx.load(str(tiny_exports / "model_float32.onnx")).metadata_props}
    assert "onnxruntime_session_config" not in float_meta


def test_onnx_input_uint8_takes_raw_pixels_with_the_same_outputs(run_copy, tiny_exports, capsys):
    """--onnx-input uint8: the int8 file drops its input QuantizeLinear (scale 1, zero point 0: exact) and the
    float32 file casts; both give bit for bit what the float-input files give, through the runner, predict
    and the standalone script."""
    import onnx
    import onnxruntime as ort

    from edgecnn.runners import open_runner
    from edgecnn.runners.onnx import session_options  # what the runner uses: exact int8 kernels without VNNI

    lines = []
    report = export(ExportConfig(run=str(run_copy), formats="onnx", onnx_input="uint8", calib_samples=100,
                                 verify_samples=100), log=lines.append)  # tiny_exports' calibration
    assert report["onnx_input"] == "uint8" and all(e["onnx_input"] == "uint8" for e in report["exports"])
    assert all(" in uint8 " in ln for ln in lines if ln.startswith("  ok ")), lines
    x = np.random.default_rng(1).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    for name in ("model_int8.onnx", "model_float32.onnx"):
        path = run_copy / "exports" / name
        graph = onnx.load(str(path)).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        first = [n.op_type for n in graph.node if "image" in n.input]
        assert first == (["DequantizeLinear"] if "int8" in name else ["Cast"]), first
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(uint8)"
        original = ort.InferenceSession(str(tiny_exports / name), session_options(), providers=["CPUExecutionProvider"])
        want = original.run(None, {"image": x.astype(np.float32)})[0]
        assert np.array_equal(session.run(None, {"image": x})[0], want), name
        assert np.array_equal(open_runner(path).predict(x), want), name
    # predict and the standalone script (which feeds uint8 to this file) agree on a picture
    from PIL import Image

    picture = run_copy / "picture.png"
    Image.fromarray(x[0]).save(picture)
    out = subprocess.run([sys.executable, str(run_copy / "exports" / "infer_onnx.py"),
                          str(run_copy / "exports" / "model_int8.onnx"), str(picture)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    code, cli_out, _ = run_main(capsys, "predict", str(run_copy / "exports" / "model_int8.onnx"), str(picture),
                                "--json")
    top = json.loads(cli_out)["results"][0]["top"][0]
    assert code == 0 and out.stdout.split(": ")[1].split(",")[0] == f"{top['class']} {top['probability']:.3f}"


def test_onnx_layout_nchw_takes_channels_first_images(run_copy, tiny_exports, capsys):
    """--onnx-layout nchw: both files take (N, C, H, W), say so in their metadata, give what the NHWC files give,
    and every reader (runner, predict, the standalone script, a file stripped of edgecnn's metadata) feeds them
    channels first."""
    import onnx
    import onnxruntime as ort

    from edgecnn.runners import open_runner
    from edgecnn.runners.onnx import session_options

    lines = []
    export(ExportConfig(run=str(run_copy), formats="onnx", onnx_layout="nchw", onnx_input="uint8", calib_samples=100,
                        verify_samples=100), log=lines.append)
    assert all(" in uint8 NCHW " in ln for ln in lines if ln.startswith("  ok ")), lines
    x = np.random.default_rng(2).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    for name in ("model_float32.onnx", "model_int8.onnx"):
        path = run_copy / "exports" / name
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["input"])["layout"] == "NCHW"
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape == ["batch", 3, 16, 16]
        got = session.run(None, {"image": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        reference = ort.InferenceSession(str(tiny_exports / name), session_options(),
                                         providers=["CPUExecutionProvider"])
        want = reference.run(None, {"image": x.astype(np.float32)})[0]
        if name == "model_float32.onnx":
            assert np.abs(got - want).max() < 1e-5
        else:  # the same calibration ranges: the same top-1 on (nearly) every image
            assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95 and np.abs(got - want).mean() < 0.01
        runner = open_runner(path)
        assert runner.input_shape == (16, 16, 3) and np.array_equal(runner.predict(x), got)
        del proto.metadata_props[:]  # a file from elsewhere: the layout read from the shape
        bare = run_copy / f"bare_{name}"
        onnx.save(proto, str(bare))
        assert np.array_equal(open_runner(bare).predict(x), got)
    from PIL import Image

    picture = run_copy / "picture.png"
    Image.fromarray(x[0]).resize((24, 20)).save(picture)
    model = run_copy / "exports" / "model_int8.onnx"
    out = subprocess.run([sys.executable, str(run_copy / "exports" / "infer_onnx.py"), str(model), str(picture)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    code, cli_out, _ = run_main(capsys, "predict", str(model), str(picture), "--json")
    top = json.loads(cli_out)["results"][0]["top"][0]
    assert code == 0 and out.stdout.split(": ")[1].split(",")[0] == f"{top['class']} {top['probability']:.3f}"


@pytest.mark.parametrize("batch, tflite_batch, onnx_batch", [("auto", 1, "batch"), ("1", 1, 1),
                                                             ("dynamic", -1, "batch")])
def test_export_batch_fixes_the_batch_dimension(run_copy, tiny_exports, batch, tflite_batch, onnx_batch):
    """--export-batch: auto gives TFLite files batch 1 (what mobile delegates and the Edge TPU compiler take)
    and ONNX files a dynamic one; 1 and dynamic apply to every file. Every runner still scores any number of
    images (LiteRT resizes, ONNX Runtime is fed one at a time), with what the default files give."""
    from edgecnn.runners import open_runner

    export(ExportConfig(run=str(run_copy), formats="all", quantize="int8", batch=batch, calib_samples=100,
                        verify_samples=100), log=lambda m: None)
    x = np.random.default_rng(3).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    for name, want in (("model_int8.tflite", tflite_batch), ("model_int8.onnx", onnx_batch)):
        info = inspect(run_copy / "exports" / name)
        assert info["inputs"][0]["shape"][0] == want and info["outputs"][0]["shape"][0] == want, (name, info)
        probs = open_runner(run_copy / "exports" / name).predict(x, batch_size=4)
        reference = open_runner(tiny_exports / name).predict(x)
        assert probs.shape == (7, 10) and (probs.argmax(1) == reference.argmax(1)).mean() >= 6 / 7
        assert np.abs(probs - reference).max() < 0.05


def test_uint8_input_of_a_tensorrt_file_is_a_cast_that_keeps_it_symmetric(tiny_run):
    """TensorRT's file quantizes its input to int8 (zero point 0): no exact drop, so a Cast comes first and
    every Quantize/DequantizeLinear stays what TensorRT takes."""
    import onnx
    import onnxruntime as ort

    from edgecnn.export import onnx as onx
    from edgecnn.model import load_keras

    core = load_keras(tiny_run / "model.keras")
    calib = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3)).astype(np.float32)
    proto = onx.quantize_int8(onx.convert_float(core), calib, activations="int8-symmetric")
    before = proto.SerializeToString()
    assert onx.take_uint8_input(proto) == "cast"
    onnx.checker.check_model(proto)
    assert onx.tensorrt_int8_problems(proto) == []
    x = calib[:8].astype(np.uint8)
    want = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"image": x.astype(np.float32)})
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert np.array_equal(got[0], want[0])
    with pytest.raises(EdgeCNNError, match="not float32"):
        onx.take_uint8_input(proto)  # twice: the input is uint8 already


def test_default_tflite_plan_and_bad_choices():
    assert plan("tflite", None) == [("tflite", "float32"), ("tflite", "int8")]
    assert plan("onnx", None) == [("onnx", "float32"), ("onnx", "int8")]
    assert plan("all", "float16") == [("tflite", "float16")]
    with pytest.raises(EdgeCNNError, match="--format"):
        plan("coreml", None)
    with pytest.raises(EdgeCNNError, match="--quantize"):
        plan("tflite", "int4")
    with pytest.raises(EdgeCNNError, match="not available for onnx"):
        plan("onnx", "float16")


def test_a_broken_export_fails_verification_and_leaves_no_file(tiny_run, tmp_path):
    """A model with scrambled weights stands in for a broken converter; verification must catch it."""
    from edgecnn.export import _write_verified
    from edgecnn.export import tflite as tfl
    from edgecnn.export.verify import Thresholds
    from edgecnn.model import load_keras
    from edgecnn.data import load

    core = load_keras(tiny_run / "model.keras")
    ds = load("shapes:2000", image_size=16)
    x = ds.x_test[:100]
    ref = core.predict(x.astype(np.float32), verbose=0)
    rng = np.random.default_rng(1)
    core.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in core.get_weights()])
    blob = tfl.convert(tfl.export_saved_model(core, tmp_path / "sm"), "float32")
    final = tmp_path / "model_float32.tflite"
    entry = {"variant": "float32"}
    with pytest.raises(EdgeCNNError, match="failed verification"):
        _write_verified(final, blob, entry, x, ref, ExportConfig(thresholds=Thresholds()))
    assert not final.exists() and not list(tmp_path.glob(".*tmp*"))
    assert entry["verify"]["passed"] is False and entry["verify"]["max_abs_diff"] > 1e-4


def test_export_of_a_keras_file_path_and_int8_io_dtype(run_copy):
    report = export(ExportConfig(run=str(run_copy / "model.keras"), formats="tflite", quantize="int8",
                                 io_dtype="int8", calib_samples=50, verify_samples=64), log=lambda m: None)
    (entry,) = report["exports"]
    assert entry["inputs"][0]["dtype"] == "int8" and entry["verify"]["passed"]
    assert (run_copy / "exports" / "model_int8.tflite").is_file()


def test_batchnorm_behind_a_pool_is_folded_in_every_export(run_copy):
    """A pool-first block (``16np``) exports as CONV_2D -> MAX_POOL_2D, with no MUL/ADD left for its BN."""
    from edgecnn import model

    n = len(json.loads((run_copy / "labels.json").read_text())["class_names"])
    core = model.build_core("C: 8n 16np gap", (16, 16, 3), n)
    rng = np.random.default_rng(0)
    for layer in core.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.2, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.5, 2.0, v.shape)])
    core.save(run_copy / "model.keras")
    report = export(ExportConfig(run=str(run_copy), formats="all", quantize="all", calib_samples=50,
                                 verify_samples=64), log=lambda m: None)
    assert [e["status"] for e in report["exports"]] == ["ok"] * 6
    for name in ("model_float32.tflite", "model_int8.tflite"):
        ops = inspect(run_copy / "exports" / name)["ops"]
        assert "MUL" not in ops and "ADD" not in ops and "MAX_POOL_2D" in ops, (name, ops)


def test_global_max_pooling_exports_as_builtin_ops(run_copy):
    """``gmp`` (Page's and airbench's head): every export verifies against Keras, int8 stays builtin."""
    from edgecnn import model

    n = len(json.loads((run_copy / "labels.json").read_text())["class_names"])
    core = model.build_core("C: 8n 16n p r16 gmp", (16, 16, 3), n)
    assert type(core.get_layer("gmp15")).__name__ == "GlobalMaxPooling2D"
    core.save(run_copy / "model.keras")
    report = export(ExportConfig(run=str(run_copy), formats="all", quantize="all", calib_samples=50,
                                 verify_samples=64), log=lambda m: None)
    assert [e["status"] for e in report["exports"]] == ["ok"] * 6
    ops = inspect(run_copy / "exports" / "model_int8.tflite")["ops"]
    assert "REDUCE_MAX" in ops and "MEAN" not in ops, ops


@pytest.mark.parametrize("block, int8_ops", [("rr16", {"ADD"}), ("r16se", {"ADD", "MEAN", "LOGISTIC", "MUL"})])
def test_residual_block_forms_export(run_copy, block, int8_ops):
    """``rr`` (no ReLU after the add) and ``se`` (squeeze-and-excitation): every export verifies
    against Keras, int8 stays builtin."""
    from edgecnn import model

    n = len(json.loads((run_copy / "labels.json").read_text())["class_names"])
    model.build_core(f"C: 8n 16n p {block} gap", (16, 16, 3), n).save(run_copy / "model.keras")
    report = export(ExportConfig(run=str(run_copy), formats="all", quantize="all", calib_samples=50,
                                 verify_samples=64), log=lambda m: None)
    assert [e["status"] for e in report["exports"]] == ["ok"] * 6
    ops = inspect(run_copy / "exports" / "model_int8.tflite")["ops"]
    assert int8_ops <= set(ops) and not any(op.startswith("FLEX") or op == "CUSTOM" for op in ops), ops


@pytest.mark.parametrize("mutate, kwargs, needle", [
    (lambda r: None, {"run": "no-such-run"}, "not found"),
    (lambda r: (r / "model.keras").unlink(), {}, "has no model.keras"),
    (lambda r: (r / "model.keras").write_bytes(b"garbage"), {}, "not a Keras model file"),
    (lambda r: None, {"formats": "tensorrt"}, "--format"),
    (lambda r: None, {"quantize": "int3"}, "--quantize"),
    (lambda r: None, {"calib_samples": 0}, "--calib-samples"),
    (lambda r: None, {"io_dtype": "int16"}, "--io-dtype"),
    (lambda r: None, {"formats": "onnx", "opset": 99}, "--opset"),
    (lambda r: None, {"formats": "onnx", "onnx_target": "gpu"}, "--onnx-target"),
    (lambda r: None, {"formats": "onnx", "onnx_input": "int8"}, "--onnx-input"),
    (lambda r: None, {"formats": "onnx", "onnx_layout": "hwc"}, "--onnx-layout"),
    (lambda r: None, {"batch": "8"}, "--export-batch"),
    (lambda r: (r / "labels.json").unlink(), {}, "labels.json is missing"),
])
def test_bad_export_inputs(run_copy, mutate, kwargs, needle):
    mutate(run_copy)
    kwargs.setdefault("run", str(run_copy))
    with pytest.raises(EdgeCNNError) as exc:
        export(ExportConfig(**kwargs), log=lambda m: None)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not list((run_copy / "exports").glob("*.tflite")) if (run_copy / "exports").exists() else True


def test_unwritable_output_folder(run_copy):
    import os

    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    (run_copy / "exports").mkdir()
    (run_copy / "exports").chmod(0o500)
    try:
        with pytest.raises(EdgeCNNError, match="permission denied"):
            export(ExportConfig(run=str(run_copy)), log=lambda m: None)
    finally:
        (run_copy / "exports").chmod(0o700)


def test_output_path_occupied_by_a_file(run_copy):
    (run_copy / "exports").write_text("a file where the exports folder should be")
    with pytest.raises(EdgeCNNError, match="cannot write"):
        export(ExportConfig(run=str(run_copy)), log=lambda m: None)


def test_verification_of_a_weak_model_judges_probabilities_not_near_ties():
    from edgecnn.export.verify import Thresholds, compare

    rng = np.random.default_rng(0)
    flat = np.full((200, 10), 0.1) + rng.normal(0, 0.004, (200, 10))  # a weak model: all near-ties
    jitter = flat + rng.normal(0, 0.004, flat.shape)  # int8 rounding flips many top-1s
    r = compare(flat, jitter, "int8", Thresholds())
    assert r["passed"] and r["judged_on"] == "mean_abs_diff" and r["agreement_all"] < 0.9
    broken = np.eye(10)[rng.integers(0, 10, 200)]  # confident garbage
    r = compare(flat, broken, "int8", Thresholds())
    assert not r["passed"] and "mean |dp|" in r["reason"]
    sharp = np.eye(10)[rng.integers(0, 10, 200)] * 0.9 + 0.01
    r = compare(sharp, sharp[::-1], "int8", Thresholds())
    assert not r["passed"] and r["judged_on"] == "agreement"


def test_report_keeps_earlier_exports_of_the_folder(run_copy):
    export(ExportConfig(run=str(run_copy), quantize="none", verify_samples=32), log=lambda m: None)
    report = export(ExportConfig(run=str(run_copy), quantize="int8", calib_samples=20, verify_samples=32),
                    log=lambda m: None)
    assert [e["file"] for e in report["exports"]] == ["model_float32.tflite", "model_int8.tflite"]
    saved = json.loads((run_copy / "exports" / "export_report.json").read_text())
    assert [e["file"] for e in saved["exports"]] == ["model_float32.tflite", "model_int8.tflite"]


def test_gzip_writes_the_smallest_standard_stream_and_drops_stale_ones(run_copy, capsys):
    code, out, err = run_main(capsys, "export", str(run_copy), "--quantize", "int8", "--calib-samples", "20",
                              "--verify-samples", "32", "--gzip")
    assert code == 0, err
    tfl, gz = run_copy / "exports" / "model_int8.tflite", run_copy / "exports" / "model_int8.tflite.gz"
    # The real gunzip reads it back to the exact bytes.
    assert subprocess.run(["gzip", "-dc", str(gz)], capture_output=True, check=True).stdout == tfl.read_bytes()
    (entry,) = json.loads((run_copy / "exports" / "export_report.json").read_text())["exports"]
    assert entry["gz_file"] == gz.name and entry["gz_bytes"] == gz.stat().st_size
    assert entry["gz_bytes"] <= entry["gzip_bytes"] == len(gzip.compress(tfl.read_bytes(), 9))
    assert "model_int8.tflite.gz" in out
    code, _, err = run_main(capsys, "export", str(run_copy), "--quantize", "int8", "--calib-samples", "20",
                            "--verify-samples", "32")
    assert code == 0, err
    assert not gz.exists(), "a .gz of an earlier export must not outlive the file it compressed"


def test_sparse_int8_weights_compress_better_without_string_matching():
    from edgecnn.export import compress

    rng = np.random.default_rng(0)
    w = np.clip(np.round(rng.laplace(0, 30, 200_000)), -127, 127).astype(np.int8)
    dense = w.tobytes()
    w[np.abs(w) < np.median(np.abs(w))] = 0  # magnitude pruning to ~50%
    sparse = w.tobytes()
    s_dense, s_sparse = compress.sizes(dense), compress.sizes(sparse)
    assert s_sparse["gz_strategy"] != "default" and s_sparse["gz_bytes"] < 0.95 * s_sparse["gzip_bytes"]
    assert s_dense["gz_bytes"] <= s_dense["gzip_bytes"]
    for name in compress.STRATEGIES:
        assert gzip.decompress(compress.gzip_blob(sparse, name)) == sparse


def test_weights_on_an_int8_grid_are_stored_as_int8(tmp_path):
    """What tf2onnx makes of a QAT model: float kernels equal to q * scale (per output channel for a
    convolution, per tensor for a dense layer). They are stored as int8 and dequantize to the same
    floats, a channel that ends short of the grid's end too (a nearly dead channel of a QAT run's 120x120
    kernel, about 1e-29, ended at 111 steps and kept the whole kernel float); a kernel off the grid stays
    float."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgecnn._tf import keras
    from edgecnn.export import onnx as onx

    rng = np.random.default_rng(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="grid_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="float_conv")(x))
    model = keras.Model(inputs, keras.layers.Dense(5, name="grid_dense")(x))
    scales = np.array([0.01, 0.02, 3.3e-31, 0.03], np.float32)
    q = rng.integers(-127, 128, (3, 3, 3, 4))
    q[0, 0, 0] = 127  # the channels reach the grid's end, as a symmetric scale max|w| / 127 makes it ...
    q[..., 2] = np.clip(q[..., 2], -110, 110)
    q[0, 0, 0, 2] = 111  # ... but for one that ends at 111 steps
    model.get_layer("grid_conv").kernel.assign((q * scales).astype(np.float32))
    model.get_layer("grid_dense").kernel.assign((np.r_[[127] * 5, rng.integers(-127, 128, 15)].reshape(4, 5)
                                                 * np.float32(0.004)).astype(np.float32))
    proto = onx.convert_float(model)
    before = proto.SerializeToString()
    assert onx.store_int8_weights(proto) == 2
    onnx.checker.check_model(proto)
    int8 = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    kernels = sorted(a.size for name, a in int8.items() if not name.endswith("_zero_point"))
    assert kernels == [20, 108]  # the dense and the first convolution's kernels
    assert [n.op_type for n in proto.graph.node].count("DequantizeLinear") == 2
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(before).graph.initializer}
    scales_of = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, a in int8.items():
        if name.endswith("_int8"):
            w, scale = floats[name[:-5]], scales_of[name[:-5] + "_scale"]
            back = a * (scale.reshape(-1, *[1] * (a.ndim - 1)) if scale.ndim else scale)
            np.testing.assert_allclose(back, w, rtol=1e-6, atol=0)  # the dead channel's 1e-29 values too
    x = rng.integers(0, 256, (6, 8, 8, 3)).astype(np.float32)
    plain = ort.SessionOptions()  # as written: ORT's optimizer would fuse the dense layer into integer kernels
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [ort.InferenceSession(b, plain, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
           for b in (before, proto.SerializeToString())]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-4)
    old = onx.convert_float(model, opset=12)
    assert onx.store_int8_weights(old) == 0, "per-axis DequantizeLinear needs opset 13"


def test_int8_onnx_runs_a_residual_block_in_integer_kernels(tmp_path):
    """A max-pool feeding both a residual branch and its Add: with int8 activations ONNX Runtime left that
    pool, the branch's first convolution and the Add in float (dequantize, float op, quantize); with uint8
    activations each becomes an integer kernel."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    from edgecnn import model as model_mod
    from edgecnn.export import onnx as onx
    from edgecnn.runners.onnx import session_options

    core = model_mod.build_core("C: 8n p r8 gap", (16, 16, 3), 3)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (64, 16, 16, 3)).astype(np.float32)
    proto = onx.quantize_int8(onx.convert_float(core), calib)
    opts = session_options(threads=1)  # edgecnn's: exact int8 kernels on x86 CPUs without VNNI, fused all the same
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 3 and ops["QLinearAdd"] == 1, dict(ops)
    assert not {"Conv", "Add", "MaxPool", "Relu"} & set(ops), dict(ops)
    x = rng.integers(0, 256, (32, 16, 16, 3)).astype(np.float32)
    p = session.run(None, {"image": x})[0]
    assert np.abs(p - core.predict(x, verbose=0)).mean() < 0.02


def test_tensorrt_target_writes_symmetric_int8_and_inspect_tells_the_files_apart(run_copy, tiny_exports):
    """--onnx-target tensorrt: every Quantize/DequantizeLinear int8 with zero point 0 and weights in -127..127
    (what TensorRT takes), verified against Keras like the CPU file; inspect and the benchmark's TensorRT
    row say the CPU file (uint8 activations with zero points) is not such a file."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from edgecnn.export import onnx as onx
    from edgecnn.inspect import format_text
    from edgecnn.runners.onnx import tensorrt_note

    lines = []
    report = export(ExportConfig(run=str(run_copy), formats="onnx", quantize="int8", onnx_target="tensorrt",
                                 calib_samples=50, verify_samples=64), log=lines.append)
    assert any("model_int8.onnx" in ln and "for TensorRT" in ln for ln in lines), lines
    from edgecnn import report as report_mod

    assert "| model_int8.onnx (for TensorRT) | ok |" in report_mod.write(run_copy)[0].read_text()
    entry = report["exports"][0]
    assert entry["status"] == "ok" and entry["onnx_target"] == "tensorrt", entry
    trt_file = run_copy / "exports" / "model_int8.onnx"
    proto = onnx.load(str(trt_file))
    inits = {t.name: t for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 6
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any(), n.name
    kernels = [numpy_helper.to_array(t) for t in proto.graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert kernels and all(k.min() >= -127 for k in kernels)
    assert onx.tensorrt_int8_problems(proto) == [] and tensorrt_note(trt_file) is None
    cpu_file = tiny_exports / "model_int8.onnx"
    problems = onx.tensorrt_int8_problems(onnx.load(str(cpu_file)))
    assert problems and "not int8" in problems[0] and any("zero point" in p for p in problems), problems
    assert "--onnx-target tensorrt" in tensorrt_note(cpu_file)
    assert onx.tensorrt_int8_problems(onnx.load(str(tiny_exports / "model_float32.onnx"))) is None
    assert "TensorRT int8: yes" in format_text(inspect(trt_file))
    assert "TensorRT int8: no: " in format_text(inspect(cpu_file))
    assert "TensorRT int8" not in format_text(inspect(tiny_exports / "model_float32.onnx"))


def test_tensorrt_problems_of_hand_made_qdq_graphs():
    """A QuantizeLinear without a zero point is uint8 by the ONNX spec; a weight using -128 is outside
    TensorRT's weight range; a zero point computed in the graph cannot be judged."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.export.onnx import tensorrt_int8_problems

    def graph(nodes, inits):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    ok = graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [scale, zp])
    onnx.checker.check_model(ok)
    assert tensorrt_int8_problems(ok) == []
    no_zp = graph([helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
                   helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], [scale])
    assert tensorrt_int8_problems(no_zp) == ["2 of 2 Quantize/DequantizeLinear nodes are not int8"]
    w = numpy_helper.from_array(np.array([[-128, 5], [3, 127]], np.int8), "w")
    wide = graph([helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
                  helper.make_node("MatMul", ["x", "wf"], ["y"])], [scale, zp, w])
    assert tensorrt_int8_problems(wide) == ["1 weight tensors use -128"]
    computed = graph([helper.make_node("Identity", ["z"], ["z2"]),
                      helper.make_node("QuantizeLinear", ["x", "s", "z2"], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [scale, zp])
    assert tensorrt_int8_problems(computed) == ["1 take a zero point computed in the graph"]
    assert tensorrt_int8_problems(graph([helper.make_node("Relu", ["x"], ["y"])], [])) is None


def test_cpu_no_vnni_target_writes_seven_bit_weights_and_says_so(run_copy, tiny_exports, capsys):
    """--onnx-target cpu-no-vnni: model_int8.onnx with uint8 activations and int8 weights in -64..64 (exact in
    ONNX Runtime's default kernels without VNNI: tests/test_runners.py), verified against Keras, without the
    session-option note of the 8-bit file; the log, report and inspect say which file it is."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from edgecnn import report as report_mod
    from edgecnn.inspect import format_text

    code, out, _ = run_main(capsys, "export", str(run_copy), "--format", "onnx", "--quantize", "int8",
                            "--onnx-target", "cpu-no-vnni", "--calib-samples", "50", "--verify-samples", "64")
    assert code == 0 and "7-bit weights" in out, out
    entry = json.loads((run_copy / "exports" / "export_report.json").read_text())["exports"][0]
    assert entry["status"] == "ok" and entry["onnx_target"] == "cpu-no-vnni" and entry["verify"]["passed"], entry
    path = run_copy / "exports" / "model_int8.onnx"
    proto = onnx.load(str(path))
    kernels = [numpy_helper.to_array(t) for t in proto.graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    assert len(kernels) >= 3 and max(int(np.abs(k.astype(int)).max()) for k in kernels) == 64
    inits = {t.name: t for t in proto.graph.initializer}
    quantized = [inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and set(quantized) == {TensorProto.UINT8}  # activations
    assert "onnxruntime_session_config" not in {p.key for p in proto.metadata_props}
    assert "| model_int8.onnx (7-bit weights) | ok |" in report_mod.write(run_copy)[0].read_text()
    assert "int8 weights: 7-bit (-64..64)" in format_text(inspect(path))
    eight = format_text(inspect(tiny_exports / "model_int8.onnx"))
    assert "int8 weights: 8-bit; ONNX Runtime sessions on x86 without VNNI need" in eight
    assert "int8 weights" not in format_text(inspect(tiny_exports / "model_float32.onnx"))


def test_bench_onnx_int8_tool_compares_the_activation_types(tiny_run):
    """tools/bench_onnx_int8.py (the README's table) on a real run: a row per activation type, the int8 and
    uint8 files fused into integer convolutions (this network has no residual block) and scoring the same;
    only the symmetric file is one TensorRT can build as int8. --default-kernels adds each file run with ONNX
    Runtime's default int8 kernels: the same scores, except on an x86 CPU without VNNI (they saturate)."""
    from edgecnn.device import cpu_info

    tool = Path(__file__).parent.parent / "tools" / "bench_onnx_int8.py"
    out = subprocess.run([sys.executable, str(tool), str(tiny_run), "--rounds", "1", "--seconds", "0.2",
                          "--default-kernels"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in out.stdout.splitlines() if ln.startswith("| int8") or ln.startswith("| uint8")}
    default = {a: rows.pop(f"{a}, default kernels") for a in ("int8", "uint8", "int8-symmetric")}
    assert set(rows) == {"int8", "uint8", "int8-symmetric"}
    if not cpu_info()["int8_saturates"]:
        assert all(default[a][5] == rows[a][5] for a in rows), (default, rows)
    assert [rows[a][0] for a in ("int8", "uint8", "int8-symmetric")] == ["no", "no", "yes"]
    for act in ("int8", "uint8"):
        assert rows[act][1] == "3" and rows[act][2] == "0", rows[act]  # QLinearConv, float Conv
    assert rows["uint8"][3] == "none" and rows["int8"][4] == rows["uint8"][4]  # no float op; same accuracy


def test_bench_onnx_int8_tool_compares_layouts_and_input_types(tiny_run):
    """--variants adds the NCHW and uint8-input files and the float32 file: the uint8 input changes no score,
    tf2onnx leaves the NCHW float file without a Transpose, and an unknown variant is one error line."""
    tool = Path(__file__).parent.parent / "tools" / "bench_onnx_int8.py"
    names = ["uint8", "uint8-u8in", "uint8-nchw-u8in", "uint8-7bit", "float32", "float32-nchw"]
    out = subprocess.run([sys.executable, str(tool), str(tiny_run), "--rounds", "1", "--seconds", "0.2",
                          "--variants", ",".join(names)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in out.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")}
    assert list(rows) == names
    assert rows["uint8-u8in"][5] == rows["uint8"][5] and rows["uint8-u8in"][1] == "3"  # accuracy; QLinearConv
    assert rows["uint8-7bit"][1] == "3" and rows["uint8-7bit"][3] == "none"  # 7-bit weights fuse all the same
    assert rows["float32"][0] == "-" and rows["float32"][2] == "3" and rows["float32"][4] == "1"
    assert rows["float32-nchw"][4] == "0"  # no Transpose left in the channels-first float file
    for wrong in ("uint9", "float32-7bit"):  # a float file has no int8 weights to narrow
        bad = subprocess.run([sys.executable, str(tool), str(tiny_run), "--variants", f"uint8,{wrong}"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(f"unknown variant {wrong}")


def test_tta_export_holds_the_flip_average_and_the_benchmark_compares_it_so(run_copy, capsys):
    """``export --tta``: every file answers what ``evaluate --tta`` scores (the image and its mirror image
    averaged), with one copy of the graph's convolutions; the benchmark compares such a file with Keras under
    the same averaging, and marks it."""
    import onnxruntime as ort

    from edgecnn import model
    from edgecnn.benchmark import BenchmarkConfig, benchmark
    from edgecnn.runners import open_runner

    code, out, _ = run_main(capsys, "export", str(run_copy), "--format", "all", "--tta", "--calib-samples", "100",
                            "--verify-samples", "100")
    assert code == 0 and "trained without flips" in out  # the tiny run trained with --augment none
    report = json.loads((run_copy / "exports" / "export_report.json").read_text())
    assert report["tta"] and [e["tta"] for e in report["exports"]] == [True] * 6
    assert all(e["verify"]["passed"] for e in report["exports"]) and "(flip TTA inside)" in out
    core = model.load_keras(run_copy / "model.keras")
    x = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    plain, tta = core.predict(x.astype(np.float32), verbose=0), model.flip_tta_predict(core, x)
    assert np.abs(plain - tta).max() > 1e-2  # the mirror image changes this model's answers
    for name in ("model_float32.tflite", "model_float32.onnx"):
        np.testing.assert_allclose(open_runner(run_copy / "exports" / name).predict(x), tta, atol=1e-4)
    sess = ort.InferenceSession(str(run_copy / "exports" / "model_float32.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"image": x[:5].astype(np.float32)})[0].shape == (5, tta.shape[1])  # any batch
    i8 = inspect(run_copy / "exports" / "model_int8.tflite")
    assert {"REVERSE_V2", "CONCATENATION"} <= set(i8["ops"]) and i8["all_builtin"]
    assert i8["ops"]["CONV_2D"] == 3 and i8["inputs"][0]["shape"] == [1, 16, 16, 3]  # one pass over a batch of 2
    assert "int8 with flip TTA inside" in i8["tflite_metadata"]["description"]  # the file says what it does
    assert sess.get_modelmeta().custom_metadata_map["edgecnn_variant"] == "float32 with flip TTA inside"

    rows, code = benchmark(BenchmarkConfig(run=str(run_copy), formats="tflite-float32,onnx-float32", limit=200,
                                           runs=3, warmup_runs=0, min_seconds=0.0, batch_sizes=(1,)),
                           log=lambda m: None)
    by = {r["name"]: r for r in rows}
    assert code == 0 and not by["keras"]["tta"] and by["tflite-float32"]["tta"] and by["onnx-float32"]["tta"]
    assert by["tflite-float32"]["agreement"] == by["onnx-float32"]["agreement"] == 1.0  # against Keras under TTA
    doc = json.loads((run_copy / "benchmark.json").read_text())
    assert doc["meta"]["keras_tta_accuracy"] == pytest.approx(by["tflite-float32"]["accuracy"])
    md = (run_copy / "benchmark.md").read_text()
    assert "| tflite-float32 (flip TTA) |" in md and "against Keras under the same averaging" in md
