import numpy as np
import pytest

from edgecnn.errors import EdgeCNNError
from edgecnn.runners import RunnerUnavailable, open_runner
from edgecnn.runners.base import dequantize, quantize


@pytest.fixture(scope="module")
def images(tiny_run):
    from edgecnn.data import load

    return load("shapes:2000", image_size=16).x_test[:64]


@pytest.fixture(scope="module")
def keras_probs(tiny_run, images):
    return open_runner(tiny_run / "model.keras").predict(images)


@pytest.mark.parametrize("name, tol, min_agree", [
    ("model_float32.tflite", 1e-5, 1.0), ("model_float16.tflite", 1e-2, 0.95),
    ("model_dynamic.tflite", 0.1, 0.9), ("model_int8.tflite", 0.3, 0.9),
    ("model_float32.onnx", 1e-5, 1.0), ("model_int8.onnx", 0.3, 0.9),
])
def test_runner_probabilities_match_keras(tiny_exports, images, keras_probs, name, tol, min_agree):
    runner = open_runner(tiny_exports / name, "cpu", threads=1)
    probs = runner.predict(images, batch_size=16)  # batch resizing and I/O quantization inside
    assert probs.shape == keras_probs.shape and probs.dtype == np.float32
    assert np.abs(probs - keras_probs).max() < tol
    assert np.mean(probs.argmax(1) == keras_probs.argmax(1)) >= min_agree
    odd = runner.predict(images[:7], batch_size=7)
    assert np.allclose(odd, probs[:7], atol=1e-6)


def test_cuda_request_without_cuda_is_unavailable_with_a_reason(tiny_exports, tiny_run):
    with pytest.raises(RunnerUnavailable) as exc:
        open_runner(tiny_exports / "model_float32.onnx", "cuda")
    assert "CUDAExecutionProvider" in str(exc.value)
    if "missing" in str(exc.value):  # a CUDA library this onnxruntime-gpu loads, and which CUDA it is built for
        from onnxruntime.capi.build_and_package_info import cuda_version

        assert f"needs CUDA {cuda_version.split('.')[0]} and cuDNN 9)" in str(exc.value)
    with pytest.raises(RunnerUnavailable, match="GPU"):
        open_runner(tiny_run / "model.keras", "cuda")
    with pytest.raises(RunnerUnavailable):
        open_runner(tiny_exports / "model_int8.tflite", "cuda")


def test_wrong_image_shape_is_one_line(tiny_exports):
    runner = open_runner(tiny_exports / "model_int8.tflite")
    with pytest.raises(EdgeCNNError, match=r"expects images of shape \(16, 16, 3\)"):
        runner.predict(np.zeros((2, 32, 32, 3), np.uint8))


def test_corrupt_and_unsupported_model_files(tmp_path):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgeCNNError, match="m.tflite"):
        open_runner(bad)
    bad_onnx = tmp_path / "m.onnx"
    bad_onnx.write_bytes(b"garbage\x00\x01")
    with pytest.raises(EdgeCNNError, match="m.onnx"):
        open_runner(bad_onnx)
    with pytest.raises(EdgeCNNError, match="unsupported model file"):
        open_runner(tmp_path / "m.pt")


def test_quantize_round_trip():
    x = np.array([0, 1, 127, 128, 255], np.uint8)
    q = quantize(x, np.int8, 1.0, -128)
    assert q.tolist() == [-128, -127, -1, 0, 127]
    assert dequantize(q, 1.0, -128).tolist() == [0, 1, 127, 128, 255]
    assert quantize(np.array([300.0]), np.uint8, 1.0, 0).tolist() == [255]  # saturates


def test_tensorrt_gets_its_int8_mode_for_qdq_files_only(tiny_exports):
    """TensorRT refuses to build a Q/DQ model with its int8 mode off ("int8 is not configured in the builder",
    onnxruntime#13381): the int8 ONNX file asks for it, the float file and the other devices do not. (The
    TensorRT row itself never ran here: no GPU.)"""
    from edgecnn.runners.onnx import providers_for

    int8, f32 = tiny_exports / "model_int8.onnx", tiny_exports / "model_float32.onnx"
    assert providers_for("tensorrt", int8)[0] == ("TensorrtExecutionProvider", {"trt_int8_enable": True})
    assert providers_for("tensorrt", f32)[0] == "TensorrtExecutionProvider"
    assert providers_for("cuda", int8) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", int8) == ["CPUExecutionProvider"]


def test_node_placement_is_what_onnx_runtime_ran(tiny_exports):
    """The profiler's view of one run: on the CPU the int8 file runs integer kernels, the float file none, and
    every node is on the one provider (no note)."""
    from edgecnn.runners.onnx import has_qdq, placement, placement_note

    for name, integer in (("model_int8.onnx", True), ("model_float32.onnx", False)):
        path = tiny_exports / name
        runner = open_runner(path, "cpu", threads=1)
        nodes = placement(path, ["CPUExecutionProvider"], runner.inp, 1)
        assert list(nodes) == ["CPUExecutionProvider"]
        ops = nodes["CPUExecutionProvider"]
        assert (ops["QLinearConv"] > 0) is integer and (ops["Conv"] > 0) is not integer, ops
        assert placement_note(nodes, "CPUExecutionProvider", has_qdq(path)) is None


def test_placement_note_of_the_int8_file_on_cuda():
    """What an H100 profiled for the cifar10 net's int8 file on CUDAExecutionProvider (onnxruntime-gpu 1.31):
    float Conv between Q/DQ nodes, the per-channel weight DequantizeLinear nodes on the CPU, copied each run."""
    from collections import Counter

    from edgecnn.runners.onnx import placement_note

    cuda = Counter({"MemcpyFromHost": 9, "QuantizeLinear": 20, "DequantizeLinear": 32, "Mul": 1, "Transpose": 1,
                    "Conv": 8, "MaxPool": 3, "Add": 2, "GlobalAveragePool": 1, "Squeeze": 1, "Gemm": 1, "Softmax": 1})
    nodes = {"CPUExecutionProvider": Counter({"DequantizeLinear": 9}), "CUDAExecutionProvider": cuda}
    assert placement_note(nodes, "CUDAExecutionProvider", True) == (
        "no integer kernels on CUDAExecutionProvider: 9 Conv/Gemm ran in float between 52 Q/DQ nodes; "
        "9 of 89 nodes on CPUExecutionProvider (9 DequantizeLinear), 9 copies to CUDAExecutionProvider each run")
    float_file = {"CUDAExecutionProvider": Counter({"Conv": 8, "Relu": 8, "Gemm": 1})}
    assert placement_note(float_file, "CUDAExecutionProvider", False) is None
    engine = {"TensorrtExecutionProvider": Counter({"TRTKernel_graph_main_0": 1})}  # no ops to see inside it
    assert placement_note(engine, "TensorrtExecutionProvider", True) is None


def test_a_missing_tensorrt_library_is_not_blamed_on_cuda():
    """ONNX Runtime's log line when TensorRT is absent (as on the H100 machine, which had CUDA 13 but no
    TensorRT): the reason names TensorRT's library, not the CUDA version."""
    from edgecnn.runners.onnx import _reason

    line = ("[E:onnxruntime:Default, provider_bridge_ort.cc:2251 TryGetProviderInfo_TensorRT] Failed to load library "
            "libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object file: "
            "No such file or directory")
    assert _reason([line], "TensorrtExecutionProvider") == (
        "TensorrtExecutionProvider unavailable: libnvinfer.so.10 missing (a TensorRT library)")


def test_int8_onnx_sums_exactly_where_the_cpu_has_no_vnni(tmp_path):
    """A 1x1 QDQ convolution, 8 channels of pixels 255 by weights 127: exactly 259,080. ONNX Runtime's default
    uint8 x int8 kernel on an x86 CPU without VNNI sums pairs of products in int16 (64,770 saturates at 32,767)
    and gave 131,064 on the AMD EPYC here; the runner's session asks for the exact kernels (VNNI CPUs and ARM
    sum exactly either way). The tiny model's int8 file agreed with Keras on 87.7% of images without them."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, exact = 8, 8 * 255 * 127
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp_u8"),
             numpy_helper.from_array(np.array(0, np.int8), "zp_s8"),
             numpy_helper.from_array(np.full((1, c, 1, 1), 127, np.int8), "w_q"),
             numpy_helper.from_array(np.array(exact / 255, np.float32), "s_out")]  # the sum is uint8 255
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zp_u8"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zp_u8"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "one", "zp_s8"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["conv"]),
             helper.make_node("QuantizeLinear", ["conv", "s_out", "zp_u8"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "zp_u8"], ["y"])]
    graph = helper.make_graph(nodes, "saturation",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"input": json.dumps({"layout": "NCHW"})})
    onnx.save(model, str(tmp_path / "saturation.onnx"))
    runner = open_runner(tmp_path / "saturation.onnx", "cpu", threads=1)
    assert runner.predict_batch(np.full((1, 1, 1, c), 255.0, np.float32)).ravel().tolist() == [exact]


def test_exact_int8_kernels_are_asked_for_only_where_the_default_ones_saturate():
    """The session option costs speed where the default kernels are exact (2.1x for the resnet8 int8 file on
    the Intel Xeon with VNNI of 2026-12-06): edgecnn's sessions and the standalone infer_onnx.py set it on x86
    CPUs without VNNI only, and agree about this CPU."""
    import importlib.util
    from pathlib import Path

    import edgecnn
    from edgecnn.device import cpu_info
    from edgecnn.runners.onnx import PRECISE_INT8, int8_saturates, session_options

    def has_option(opts) -> bool:
        try:
            return opts.get_session_config_entry(PRECISE_INT8[0]) == PRECISE_INT8[1]
        except RuntimeError:  # not set
            return False

    assert int8_saturates() == (cpu_info()["int8_saturates"] is not False)
    assert has_option(session_options()) == int8_saturates()
    assert not has_option(session_options(precise_int8=False)) and has_option(session_options(precise_int8=True))
    script = Path(edgecnn.__file__).parent / "standalone" / "infer_onnx.py"
    spec = importlib.util.spec_from_file_location("standalone_infer_onnx", script)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    assert standalone.int8_saturates() == int8_saturates()


def test_seven_bit_int8_onnx_sums_exactly_in_the_default_kernels(tmp_path):
    """``quantize_int8(bits=7)`` (``--onnx-target cpu-no-vnni``): the weights stay in -64..64, so pixels 255
    by a weight 64 twice make 32,640, under int16's 32,767, and ONNX Runtime's default kernels sum exactly
    on every CPU. A 1x1 convolution of 8 channels of pixels 255 by weights 1.0 gives 2,040 that way; the
    8-bit file (weights 127) gives it with the default kernels only where the CPU does not saturate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.device import cpu_info
    from edgecnn.export import onnx as onx
    from edgecnn.runners.onnx import OnnxRunner

    c = 8
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["probabilities"])], "sum",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, c, 1, 1])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [numpy_helper.from_array(np.ones((1, c, 1, 1), np.float32), "w")])
    float_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    float_proto.ir_version = 8
    calib = np.stack([np.zeros((1, 1, c)), np.full((1, 1, c), 255.0)]).astype(np.float32)  # NHWC
    x = np.full((1, 1, 1, c), 255.0, np.float32)
    sums = {}
    for bits in (7, 8):
        proto = onx.quantize_int8(float_proto, calib, bits=bits)
        kernel = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.INT8
                  and len(t.dims) == 4]
        assert len(kernel) == 1 and kernel[0].max() == {7: 64, 8: 127}[bits]
        assert onx.weight_bits(proto) == bits
        helper.set_model_props(proto, {"input": '{"layout": "NCHW"}'})
        onnx.save(proto, str(tmp_path / f"sum{bits}.onnx"))
        sums[bits] = [OnnxRunner(tmp_path / f"sum{bits}.onnx", "cpu", threads=1, precise_int8=precise)
                      .predict_batch(x).item() for precise in (True, False)]  # exact kernels, ONNX Runtime's default
    assert sums[7] == [2040.0, 2040.0], sums
    assert sums[8][0] == 2040.0 and (sums[8][1] != 2040.0) == cpu_info()["int8_saturates"], sums
    assert onx.weight_bits(float_proto) is None
