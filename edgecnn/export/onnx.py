"""ONNX export: float32 through tf2onnx, int8 as static QDQ (per-channel) with ONNX Runtime."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.model import INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 17


LAYOUTS = ("nhwc", "nchw")  # the ONNX input's layout: TensorFlow's, or the channels-first one PyTorch tools expect


def convert_float(core, opset: int = DEFAULT_OPSET, layout: str = "nhwc", batch: int | None = None):
    """Keras core -> ONNX ModelProto: input ``image`` (N,H,W,C float32 0..255; N,C,H,W with ``layout`` "nchw"),
    output ``probabilities``; N is ``batch``, or the dynamic dimension "batch" when None.

    Works for Keras 3 models and for tf_keras ones (a tfmot QAT model becomes QDQ ONNX). For NCHW tf2onnx
    transposes the input itself, and its optimizer cancels that against the graph's own NHWC->NCHW Transpose.
    """
    if layout not in LAYOUTS:
        raise EdgeCNNError(f"--onnx-layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not 9 <= opset <= 21:
        raise EdgeCNNError(f"--opset must be 9..21, got {opset}")
    import tensorflow as tf
    import tf2onnx

    from edgecnn._stderr import capture_fd2

    spec = [tf.TensorSpec([batch, *core.input_shape[1:]], tf.float32, name=INPUT_NAME)]
    try:
        with capture_fd2():
            proto, _ = tf2onnx.convert.from_keras(core, input_signature=spec, opset=opset,
                                                  inputs_as_nchw=[INPUT_NAME] if layout == "nchw" else None)
    except Exception as exc:
        raise EdgeCNNError(f"ONNX conversion failed: {first_line(exc)}") from None
    _rename_output(proto, OUTPUT_NAME)
    for value in (*proto.graph.input, *proto.graph.output):
        if batch is None:
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.producer_name = "edgecnn (tf2onnx)"
    return proto


def _rename_output(proto, name: str) -> None:
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name


def input_layout(proto, hwc) -> str:
    """"NCHW" when the model's input is (N, C, H, W) for images of shape ``hwc``, else "NHWC"."""
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    h, w, c = hwc
    return "NCHW" if dims == [c, h, w] and dims != [h, w, c] else "NHWC"


def set_metadata(proto, labels: dict, variant: str) -> None:
    """Class names, input scaling and layout, and the variant in ``metadata_props``; for a Q/DQ file with
    8-bit weights also ``onnxruntime_session_config``, the session option its int8 kernels need on x86
    CPUs without VNNI (a note for whoever opens the session: ONNX Runtime does not apply it by itself)."""
    import edgecnn
    from edgecnn.runners.onnx import PRECISE_INT8

    meta = {
        "class_names": json.dumps(labels["class_names"]),
        "input_shape": json.dumps(labels["input_shape"]),
        "input": json.dumps(labels.get("input", {}) | {"layout": input_layout(proto, labels["input_shape"])}),
        "edgecnn_variant": variant,
        "edgecnn_version": edgecnn.__version__,
    }
    if weight_bits(proto) == 8:
        meta["onnxruntime_session_config"] = json.dumps(dict([PRECISE_INT8]))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


# Who runs model_int8.onnx: ONNX Runtime's CPU kernels; the same with 7-bit weights, which sum exactly in
# ONNX Runtime's default kernels on x86 CPUs without VNNI (no session option needed); or TensorRT.
TARGETS = ("cpu", "cpu-no-vnni", "tensorrt")
ACTIVATIONS = {"cpu": "uint8", "cpu-no-vnni": "uint8", "tensorrt": "int8-symmetric"}
WEIGHT_BITS = {"cpu-no-vnni": 7}  # 8 for the others
# Without VNNI ONNX Runtime's x86 kernels multiply uint8 activations by int8 weights with VPMADDUBSW, which
# adds two products in int16 and saturates at 32,767: exact for weights in -64..64 (255 * 64 * 2 = 32,640).
NO_VNNI_EXACT = 64
# For TensorRT: symmetric int8 activations; biases stay float (as NVIDIA's quantization toolkits leave them;
# its Q/DQ types are 8 bits or fewer); a Q/DQ pair of its own for each consumer (ONNX Runtime's quantizer
# notes TensorRT cannot share one).
TENSORRT_OPTIONS = {"ActivationSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}


def quantize_int8(float_proto, calibration: np.ndarray, activations: str = "uint8", bits: int = 8):
    """Static QDQ quantization calibrated on ``calibration`` (NHWC images, transposed here for a channels-first
    input): int8 weights (symmetric, per output channel; ``bits`` 7 keeps them in -64..64, ONNX Runtime's
    ``reduce_range``) and
    ``activations`` (per tensor): uint8 (asymmetric, for ONNX Runtime's CPU kernels), int8-symmetric (zero point
    0, for TensorRT) or int8 (asymmetric: the old file, kept for ``tools/bench_onnx_int8.py``).

    ONNX Runtime's x86 integer kernels take uint8 activations. Given int8 ones, it converts each
    Quantize/DequantizeLinear pair to uint8 when it loads the model, but not a pair whose output feeds two
    nodes, as a max-pool's output feeding both a residual branch and its Add does: that pool, convolution
    and Add then ran in float between Dequantize and QuantizeLinear (README, "Export variants"). uint8
    activations are the same grid (int8 shifted by 128), and every node fuses into an integer kernel.
    TensorRT takes int8 Q/DQ with zero point 0 only (``tensorrt_int8_problems``) and float biases; a ReLU's
    output then uses half the int8 range, and ONNX Runtime's quantizer keeps the ReLU nodes instead of
    folding them into the ranges.
    """
    if activations not in ("uint8", "int8", "int8-symmetric"):
        raise ValueError(f"activations must be uint8, int8 or int8-symmetric, got {activations!r}")
    if bits not in (7, 8):
        raise ValueError(f"bits must be 7 or 8, got {bits!r}")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecnn._stderr import capture_fd2

    if input_layout(float_proto, calibration.shape[1:]) == "NCHW":
        calibration = calibration.transpose(0, 3, 1, 2)  # NHWC images for a channels-first input

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration[i:i + 1].astype(np.float32) for i in range(len(calibration)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x}

    symmetric = activations == "int8-symmetric"
    with tempfile.TemporaryDirectory(prefix="edgecnn-onnx-") as d:
        src, pre, out = Path(d) / "float.onnx", Path(d) / "pre.onnx", Path(d) / "int8.onnx"
        onnx.save(float_proto, str(src))
        try:
            with capture_fd2():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8, reduce_range=bits == 7,
                                extra_options=TENSORRT_OPTIONS if symmetric else None)
        except Exception as exc:
            raise EdgeCNNError(f"ONNX int8 quantization failed: {first_line(exc)}") from None
        proto = onnx.load(str(out))
    proto.producer_name = "edgecnn (onnxruntime.quantization)"
    return proto


def weight_bits(proto) -> int | None:
    """A Q/DQ file's weight range: 7 when its int8 weights all lie in -64..64 (``NO_VNNI_EXACT``), else 8
    (also for weights quantized only when the model loads, as float initializers through QuantizeLinear);
    None for a file without DequantizeLinear nodes."""
    from onnx import TensorProto, numpy_helper

    dequantized = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    if not dequantized:
        return None
    widest = [int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max()) for t in proto.graph.initializer
              if t.name in dequantized and t.data_type == TensorProto.INT8 and len(t.dims) > 1]
    return 7 if widest and max(widest) <= NO_VNNI_EXACT else 8


def tensorrt_int8_problems(proto) -> list[str] | None:
    """Why TensorRT cannot build this QDQ model as int8: [] when it can, None for a model without Q/DQ nodes.

    TensorRT's explicit quantization takes QuantizeLinear/DequantizeLinear in int8 with zero point 0 only
    (symmetric; an int32 bias is not int8 either), and weights in -127..127. A node it cannot take runs
    outside its engine.
    """
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return None
    unsigned = nonzero = unknown = wide = 0
    for n in qdq:
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) > 2 and n.input[2] and zp is None:
            unknown += 1  # a zero point computed in the graph: cannot tell
            continue
        if zp is None or zp.data_type != TensorProto.INT8:  # no zero point: uint8 by the ONNX spec
            unsigned += 1
        if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
            nonzero += 1
        w = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and w.data_type == TensorProto.INT8 and len(w.dims) > 1 \
                and np.any(numpy_helper.to_array(w) == -128):
            wide += 1
    problems = []
    if unsigned:
        problems.append(f"{unsigned} of {len(qdq)} Quantize/DequantizeLinear nodes are not int8")
    if nonzero:
        problems.append(f"{nonzero} have a zero point other than 0")
    if unknown:
        problems.append(f"{unknown} take a zero point computed in the graph")
    if wide:
        problems.append(f"{wide} weight tensors use -128")
    return problems


INPUTS = ("float32", "uint8")  # what the ONNX files take: float32 pixels 0..255, or the raw uint8 pixels


def take_uint8_input(proto) -> str:
    """Make the model take uint8 pixels (0..255) instead of float32; return how: "dropped" or "cast".

    A QDQ file quantizes its float input to uint8 with scale 1 and zero point 0 (the calibration range is
    always 0..255): that QuantizeLinear is dropped and the uint8 input feeds its DequantizeLinear, exactly
    the same values. Any other file (float32, TensorRT's symmetric int8) gets a Cast to float32 first.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inp = graph.input[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise EdgeCNNError(f"the ONNX input {inp.name!r} is not float32")
    inits = {t.name: t for t in graph.initializer}
    users = [n for n in graph.node if inp.name in n.input]
    quant = users[0] if len(users) == 1 and users[0].op_type == "QuantizeLinear" else None

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    if quant is not None and len(quant.input) == 3:
        scale, zp = const(quant.input[1]), const(quant.input[2])
        if scale is not None and zp is not None and zp.dtype == np.uint8 and scale.size == zp.size == 1 \
                and float(scale.reshape(-1)[0]) == 1.0 and int(zp.reshape(-1)[0]) == 0:
            out = quant.output[0]
            graph.node.remove(quant)
            for node in graph.node:
                node.input[:] = [inp.name if i == out else i for i in node.input]
            inp.type.tensor_type.elem_type = TensorProto.UINT8
            return "dropped"
    cast_out = inp.name + "_float32"
    for node in graph.node:
        node.input[:] = [cast_out if i == inp.name else i for i in node.input]
    graph.node.insert(0, helper.make_node("Cast", [inp.name], [cast_out], name=inp.name + "_cast",
                                          to=TensorProto.FLOAT))
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    return "cast"


GRID_TOLERANCE = 1e-3  # |w / scale - round(w / scale)| allowed: float32 round-off of weights already on the grid


def grid_scales(rows: np.ndarray) -> np.ndarray | None:
    """The step of the symmetric int8 grid each row of ``rows`` lies on, or None if a row lies on none.

    A row's largest magnitude is normally the grid's end, 127 steps (tfmot's symmetric ranges). A row can end
    short of it: BatchNorm folded into a nearly dead channel left ``q * scale`` at about 1e-29 ending at 111
    steps in a QAT run (a 120x120x3x3 kernel then stayed float: 518 KB). So each row takes the largest step
    count of 127 or fewer that puts all its values on the grid. An all-zero row gets step 1.
    """
    top = np.abs(rows).max(axis=1)
    scales = np.where(top > 0, 0.0, 1.0).astype(np.float32)
    for steps in range(127, 0, -1):
        todo = scales == 0
        if not todo.any():
            break
        step = (top[todo] / np.float32(steps)).astype(np.float32)
        q = rows[todo] / step[:, None]
        fits = np.abs(q - np.rint(q)).max(axis=1) <= GRID_TOLERANCE
        scales[np.flatnonzero(todo)[fits]] = step[fits]
    return None if (scales == 0).any() else scales


def store_int8_weights(proto) -> int:
    """Store float weights that already lie on a symmetric int8 grid as int8 + DequantizeLinear.

    tf2onnx folds a QAT model's weight fake-quant into float constants: each Conv kernel holds
    ``q * scale`` per output channel, each MatMul/Gemm kernel ``q * scale`` per tensor (tfmot's
    8-bit scheme: symmetric, -127..127; `grid_scales` finds each scale). Written as int8 with their
    scale, the weights take a quarter of the bytes and dequantize to the same floats (to float32
    round-off). A weight not on such a grid is left as it is. Returns how many weights were converted.
    """
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # per-axis DequantizeLinear
        return 0
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    dq_nodes, done = [], set()
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits or name in done or inits[name].data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(inits[name])
        if not w.size or not np.isfinite(w).all():
            continue
        if node.op_type == "Conv" and w.ndim >= 3:  # per output channel
            scale, shape = grid_scales(w.reshape(len(w), -1)), (-1,) + (1,) * (w.ndim - 1)
        elif node.op_type != "Conv" and w.ndim == 2:  # per tensor
            scale, shape = grid_scales(w.reshape(1, -1)), ()
            scale = None if scale is None else scale.reshape(())
        else:
            continue
        if scale is None:
            continue
        q = np.rint(w / scale.reshape(shape))
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.int8), name + "_int8"),
                                  numpy_helper.from_array(scale, name + "_scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), name + "_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero_point"],
                                         [name], name=name + "_dequantize", **({"axis": 0} if scale.ndim else {})))
        done.add(name)
    if dq_nodes:  # first, so the graph stays in topological order
        nodes = dq_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(dq_nodes)


def finalize(proto, labels: dict, variant: str) -> bytes:
    """Metadata in, onnx.checker passed, serialized."""
    set_metadata(proto, labels, variant)
    check(proto)
    return proto.SerializeToString()


def check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise EdgeCNNError(f"exported ONNX model fails onnx.checker: {first_line(exc)}") from None
