"""``edgecnn doctor``: what is installed and which accelerators really work here."""

from __future__ import annotations

import ctypes
import os
import platform
from importlib import metadata

from edgecnn.device import auto_precision, bfloat16_pays, cpu_info, native_bfloat16, nvidia_gpus, onednn_warning
from edgecnn.errors import first_line

PACKAGES = ["tensorflow", "keras", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx",
            "onnxruntime-gpu", "onnxruntime", "ai-edge-litert", "tflite-micro", "numpy", "typer"]
CUDA_LIBS = ["libcuda.so.1", "libcudart.so.13", "libcublasLt.so.13", "libcudnn.so.9", "libcudart.so.12",
             "libcudnn.so.8", "libnvinfer.so.10"]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _lib_found(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def _probe_onnx_providers() -> dict[str, str]:
    """Create a one-node session per provider; report which ones really run."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgecnn._stderr import capture_fd2
    from edgecnn.runners.onnx import _reason, session_options

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = model.SerializeToString()
    onnx.checker.check_model(model)
    out = {}
    for prov in ort.get_available_providers():
        opts = session_options()
        try:
            with capture_fd2() as log:
                s = ort.InferenceSession(blob, sess_options=opts,  # the CPU provider listed once, or ORT warns
                                         providers=list(dict.fromkeys([prov, "CPUExecutionProvider"])))
            if s.get_providers()[0] == prov:
                out[prov] = "works"
            else:
                out[prov] = _reason(log.lines(), prov)
        except Exception as exc:
            out[prov] = f"fails: {first_line(exc, 120)}"
    return out


def collect() -> dict:
    cpu = cpu_info()
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu["name"],
                  "cpu_bfloat16": cpu["bfloat16"], "cpu_bfloat16_off": cpu["bfloat16_off"],
                  "cpu_int8_dot": cpu["int8_dot"], "cpu_vendor": cpu["vendor"],
                  "cores": os.cpu_count(), "packages": {p: _version(p) for p in PACKAGES}}
    warnings = [w for w in (onednn_warning(),) if w]
    if cpu["int8_saturates"]:
        warnings.append("this x86 CPU has no VNNI: ONNX Runtime's default int8 kernels saturate here and int8 ONNX "
                        "models lose accuracy; run them with session option session.x64quantprecision=1, as "
                        "edgecnn and its infer_onnx.py do, or export them with --onnx-target cpu-no-vnni (README, "
                        "\"int8 ONNX on x86 CPUs without VNNI\")")
    if info["packages"]["onnxruntime"] and info["packages"]["onnxruntime-gpu"]:
        warnings.append("both onnxruntime and onnxruntime-gpu are installed: uninstall one (they share files)")
    for p in ("tensorflow", "onnx", "ai-edge-litert", "tf2onnx"):
        if not info["packages"][p]:
            warnings.append(f"{p} is not installed")
    try:
        from edgecnn._tf import tf

        gpus = tf.config.list_physical_devices("GPU")
        info["tensorflow_gpus"] = [g.name for g in gpus]
        info["tensorflow_cuda_build"] = tf.test.is_built_with_cuda()
        info["precision_auto"] = auto_precision(gpus, cpu)
        # native bfloat16 that auto turns down on a CPU where it trained slower than float32
        info["bfloat16_slower"] = not gpus and native_bfloat16(cpu) and not bfloat16_pays(cpu)
    except Exception as exc:
        info["tensorflow_gpus"] = []
        warnings.append(f"TensorFlow does not import: {exc}")
    try:
        info["onnxruntime_providers"] = _probe_onnx_providers()
    except Exception as exc:
        info["onnxruntime_providers"] = {}
        warnings.append(f"ONNX Runtime does not import: {exc}")
    info["cuda_libraries"] = {lib: _lib_found(lib) for lib in CUDA_LIBS}
    info["nvidia_gpus"] = nvidia_gpus()
    if not info["tensorflow_gpus"] and info["nvidia_gpus"]:
        warnings.append(f"the NVIDIA driver lists {len(info['nvidia_gpus'])} GPU(s) but TensorFlow sees none (a "
                        "TensorFlow without CUDA, or its CUDA 12 libraries missing: pip install 'edgecnn[gpu]'): "
                        "training runs on the CPU")
    elif not info["tensorflow_gpus"]:
        warnings.append("no GPU visible to TensorFlow: training runs on the CPU")
    info["warnings"] = warnings
    return info


def format_text(info: dict) -> str:
    lines = [f"{'python':<31}{info['python']} on {info['platform']}",
             f"{'cpu':<31}{info['cpu']} ({info['cores']} cores; native bfloat16: "
             f"{', '.join(info['cpu_bfloat16']) or 'none'}"
             f"{', unused: ' + info['cpu_bfloat16_off'] if info['cpu_bfloat16'] and info['cpu_bfloat16_off'] else ''}"
             f"; int8 VNNI: {', '.join(info['cpu_int8_dot']) or 'none'})"]
    for p, v in info["packages"].items():
        lines.append(f"{p:<31}{v or 'not installed'}")
    gpus = [f"{g['name']} (driver {g['driver']})" for g in info["nvidia_gpus"]]
    lines.append(f"NVIDIA GPUs                    {', '.join(gpus) or 'none'}")
    lines.append(f"TensorFlow GPUs                {', '.join(info['tensorflow_gpus']) or 'none'}")
    if info.get("precision_auto"):
        lines.append(f"{'train --precision auto':<31}{info['precision_auto']}" +
                     (" (AVX512-BF16 without AMX: on an Intel Xeon so, bfloat16 trained slower than float32)"
                      if info.get("bfloat16_slower") else ""))
    for prov, status in info["onnxruntime_providers"].items():
        lines.append(f"onnxruntime {prov:<28} {status}")
    found = [lib for lib, ok in info["cuda_libraries"].items() if ok]
    lines.append(f"CUDA libraries found           {', '.join(found) or 'none'}")
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
