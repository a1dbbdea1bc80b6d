"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers, decided after session creation."""

from __future__ import annotations

import functools
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.runners.base import Runner, RunnerUnavailable, quantize

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def check_external_data(path: Path) -> None:
    """Refuse models whose external tensor data points outside the model's folder."""
    import onnx

    def invalid(exc):
        msg = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else ""
        return EdgeCNNError(f"{path}: not a valid ONNX model ({type(exc).__name__} {msg})".rstrip())

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise invalid(exc) from None
    base = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (base / loc).resolve()
            if Path(loc).is_absolute() or base not in target.parents:
                raise EdgeCNNError(f"{path}: refused external data {loc!r} outside the model's folder")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, and odd types on damaged protobufs
        raise invalid(exc) from None


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.t is not None and attr.t.ByteSize():
                yield attr.t
            if attr.g is not None and attr.g.ByteSize():
                yield from _all_tensors(attr.g)


def _reason(log_lines: list[str], provider: str) -> str:
    for line in log_lines:
        m = re.search(r"with error: (lib[\w.+-]+\.so[\w.]*): cannot open", line) or \
            re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open", line)
        if m:
            lib = m.group(1)
            why = " (a TensorRT library)" if lib.startswith(("libnvinfer", "libnvonnxparser")) else _needs()
            return f"{provider} unavailable: {lib} missing{why}"
    for line in log_lines:
        if "rror" in line:
            return f"{provider} unavailable: " + re.sub(r"^.*?\] ", "", line).strip()[:160]
    return f"{provider} unavailable (ONNX Runtime fell back to CPU)"


def _needs() -> str:
    """What this onnxruntime-gpu build loads: " (onnxruntime-gpu 1.31.0 needs CUDA 13 and cuDNN 9)"."""
    try:
        import onnxruntime as ort
        from onnxruntime.capi import build_and_package_info as build

        major = build.cuda_version.split(".")[0]
    except (ImportError, AttributeError):
        return ""
    return f" (onnxruntime-gpu {ort.__version__} needs CUDA {major} and cuDNN 9)" if major else ""


# ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW where the CPU lacks
# VNNI (AVX2, AVX-512 without VNNI: Intel before Cascade Lake, AMD before Zen 4): pairs of products are summed
# into int16 and saturate: the tiny test model's int8 file agreed with Keras on 87.7% of images on such a CPU.
# This option makes ONNX Runtime use its exact uint8 x uint8 kernels instead. It is set only on such CPUs: ONNX
# Runtime also applies it on x86 CPUs with VNNI, where the default kernels are exact, and there it made the
# resnet8 int8 file 2.1x slower (README, "int8 ONNX on x86 CPUs without VNNI"). Weights in -64..64 (``export
# --onnx-target cpu-no-vnni``) need no option, and ONNX Runtime leaves such weights as they are under it.
PRECISE_INT8 = ("session.x64quantprecision", "1")


@functools.cache
def int8_saturates() -> bool:
    """Whether ONNX Runtime's default int8 kernels may saturate on this CPU: an x86 CPU without VNNI, or one
    whose flags cannot be read (read once: every session asks)."""
    from edgecnn.device import cpu_info

    return cpu_info()["int8_saturates"] is not False


def session_options(threads: int | None = None, precise_int8: bool | None = None):
    """ONNX Runtime session options for every session edgecnn opens: errors only, exact int8 kernels where
    the default ones saturate (``PRECISE_INT8`` where ``int8_saturates()``; ``precise_int8`` True asks for
    them on any CPU, False leaves ONNX Runtime's default everywhere, both for comparison), ``threads``
    intra-op threads (one inter-op) when given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if precise_int8 or (precise_int8 is None and int8_saturates()):
        opts.add_session_config_entry(*PRECISE_INT8)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def providers_for(device: str, path: Path) -> list:
    """ONNX Runtime's provider list for ``device``. TensorRT builds a Q/DQ model only with its int8 mode on
    (no calibration table: the scales are in the file); otherwise it fails to build the engine."""
    wanted = list(PROVIDERS[device])
    if device == "tensorrt" and has_qdq(path):
        wanted[0] = (wanted[0], {"trt_int8_enable": True})
    return wanted


def input_layout(session) -> str:
    """"NCHW" or "NHWC": what edgecnn's metadata says, else guessed from the shape (channels first when the
    second dimension holds 1, 3 or 4 and the last does not)."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        layout = json.loads(meta.get("input", "{}")).get("layout")
    except (ValueError, AttributeError):
        layout = None
    if layout in ("NCHW", "NHWC"):
        return layout
    _, first, _, last = session.get_inputs()[0].shape
    return "NCHW" if first in (1, 3, 4) and last not in (1, 3, 4) else "NHWC"


def graph_nodes(path: Path) -> list:
    """The nodes of an ONNX file's main graph ([] when it cannot be read)."""
    import onnx

    try:
        return list(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:
        return []


def has_qdq(path: Path) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph_nodes(path))


class OnnxRunner(Runner):
    format = "onnx"
    runtime = "onnxruntime"
    devices = ("cpu", "cuda", "tensorrt")

    def __init__(self, path, device="cpu", threads=None, precise_int8=None):
        super().__init__(path, device, threads)
        import onnxruntime as ort

        from edgecnn._stderr import capture_fd2

        check_external_data(self.path)
        wanted = PROVIDERS[device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise RunnerUnavailable(f"{wanted[0]} not in this onnxruntime build ({', '.join(available)})")
        opts = session_options(threads, precise_int8)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            with capture_fd2() as log:
                self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                    providers=providers_for(device, self.path))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EdgeCNNError(f"{self.path}: ONNX Runtime cannot load the model ({first_line(exc, 200)})") from None
        self.providers = self.session.get_providers()
        if self.providers[0] != wanted[0]:
            raise RunnerUnavailable(_reason(log.lines(), wanted[0]))
        self.inp = self.session.get_inputs()[0]
        self.out_name = self.session.get_outputs()[0].name
        shape = self.inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise EdgeCNNError(f"{self.path}: input is not an image tensor, NHWC or NCHW (shape {shape})")
        self.layout = input_layout(self.session)
        self._batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None  # a fixed batch size
        self._dtype = np.uint8 if "uint8" in self.inp.type else (np.int8 if "int8" in self.inp.type else np.float32)

    @property
    def input_shape(self):
        """(H, W, C), whatever the file's layout: every runner takes NHWC images."""
        dims = tuple(int(d) for d in self.inp.shape[1:])
        return (dims[1], dims[2], dims[0]) if self.layout == "NCHW" else dims

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        if self._dtype == np.float32:
            x = images.astype(np.float32, copy=False)
        else:  # raw pixels (--onnx-input uint8): rounded and saturated, as TFLite's integer inputs are
            x = quantize(images, self._dtype, 1.0, 0)
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        b = self._batch
        if b is None or len(x) == b:
            return self.session.run([self.out_name], {self.inp.name: x})[0].astype(np.float32)
        out = []  # a file with a fixed batch: fed b images at a time, the last call padded with zeros
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(self.session.run([self.out_name], {self.inp.name: chunk})[0][:len(x) - i])
        return np.concatenate(out).astype(np.float32)

    def info(self):
        import onnxruntime as ort

        out = super().info() | {"providers": self.providers, "version": ort.__version__, "note": None}
        if self.device == "cpu":
            return out
        try:  # where the nodes really ran: a second session, profiled over one run
            nodes = placement(self.path, providers_for(self.device, self.path), self.inp, self.threads)
        except Exception as exc:  # the row's numbers stand without it
            nodes, out["note"] = None, f"node placement not measured ({first_line(exc, 120)})"
        if nodes is not None:
            out["placement"] = {p: dict(ops) for p, ops in nodes.items()}
            out["note"] = placement_note(nodes, self.providers[0], has_qdq(self.path))
        if self.device == "tensorrt":
            out["note"] = "; ".join(n for n in (tensorrt_note(self.path), out["note"]) if n) or None
        return out


INTEGER_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")


def placement(path: Path, providers: list, inp, threads: int | None = None) -> dict[str, Counter]:
    """{provider: Counter(op type)} of the kernels ONNX Runtime ran for one inference of ``path`` (its profiler
    names each node's provider; Memcpy nodes are the copies it inserted between providers)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgecnn-placement-") as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = np.uint8 if "uint8" in inp.type else (np.int8 if "int8" in inp.type else np.float32)
        session.run(None, {inp.name: np.zeros(shape, dtype)})
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and args.get("provider"):
            kernels[ev["name"]] = (args["provider"], args.get("op_name", "?"))
    out: dict[str, Counter] = {}
    for provider, op in kernels.values():
        out.setdefault(provider, Counter())[op] += 1
    return out


def placement_note(nodes: dict[str, Counter], main: str, qdq: bool) -> str | None:
    """One line on what did not run as the row's name suggests: nodes on another provider, and a Q/DQ file
    whose convolutions ran in float (no integer kernels) on ``main``."""
    parts = []
    on_main = nodes.get(main, Counter())
    convs = sum(n for op, n in on_main.items() if op in ("Conv", "Gemm", "MatMul"))  # none inside a TensorRT engine
    if qdq and convs and not any(op.startswith(INTEGER_OPS) for op in on_main):
        parts.append(f"no integer kernels on {main}: {convs} Conv/Gemm ran in float between "
                     f"{on_main['QuantizeLinear'] + on_main['DequantizeLinear']} Q/DQ nodes")
    total = sum(sum(c.values()) for c in nodes.values())
    for provider, ops in nodes.items():
        if provider == main:
            continue
        listed = ", ".join(f"{n} {op}" for op, n in ops.most_common(4))
        copies = sum(n for op, n in on_main.items() if op.startswith("Memcpy"))
        parts.append(f"{sum(ops.values())} of {total} nodes on {provider} ({listed})"
                     + (f", {copies} copies to {main} each run" if copies else ""))
    return "; ".join(parts) or None


def tensorrt_note(path: Path) -> str | None:
    """What the benchmark's TensorRT row of ``path`` should say when TensorRT cannot build its Q/DQ nodes as int8."""
    import onnx

    from edgecnn.export.onnx import tensorrt_int8_problems

    try:
        problems = tensorrt_int8_problems(onnx.load(str(path), load_external_data=False))
    except Exception:
        return None
    if not problems:
        return None
    return ("not a TensorRT int8 file (" + "; ".join(problems) + "): those nodes run outside the TensorRT "
            "engine; export with --onnx-target tensorrt")
