"""What is inside a model file: inputs/outputs with dtypes and quantization, op histogram, size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import sha256
from edgecnn.runners import format_of


def tflite_ops(it) -> Counter:
    """Op histogram of a LiteRT interpreter (builtin names; Flex ops keep their 'Flex' prefix)."""
    try:
        details = it._get_ops_details()
    except AttributeError:  # pragma: no cover (very old LiteRT)
        return Counter()
    return Counter(d["op_name"] for d in details)


def _tensor(d) -> dict:
    scale, zp = d.get("quantization", (0.0, 0))
    out = {"name": d["name"], "shape": [int(v) for v in d.get("shape_signature", d["shape"])],
           "dtype": np.dtype(d["dtype"]).name}
    if scale:
        out["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
    return out


def inspect_tflite(path: Path, content: bytes | None = None) -> dict:
    from edgecnn.export.tflite_metadata import read as read_metadata
    from edgecnn.runners.tflite import interpreter

    content = path.read_bytes() if content is None else content  # read once: the interpreter and the metadata
    it = interpreter(path, content=content, delegate=False)
    ops = tflite_ops(it)
    non_builtin = sorted(op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE"))
    out = {
        "format": "tflite",
        "inputs": [_tensor(d) for d in it.get_input_details()],
        "outputs": [_tensor(d) for d in it.get_output_details()],
        "ops": dict(sorted(ops.items())),
        "all_builtin": not non_builtin,
        "non_builtin_ops": non_builtin,
        "tflite_metadata": read_metadata(content),
    }
    out["mediapipe_image_classifier"] = mediapipe_verdict(out)
    return out


def mediapipe_verdict(info: dict) -> dict:
    """Whether MediaPipe Tasks' ImageClassifier (1.2.3, as measured) takes this TFLite file: {"takes": bool,
    "why": str}. It takes uint8 or float32 RGB inputs; a float input needs the metadata's normalization, and
    class names come from the metadata's labels.txt."""
    inp = info["inputs"][0]
    meta = info.get("tflite_metadata")
    if inp["dtype"] not in ("uint8", "float32"):
        return {"takes": False, "why": f"{inp['dtype']} input (it takes uint8 or float32; export with --io-dtype "
                                       "uint8 or float32)"}
    if len(inp["shape"]) != 4 or inp["shape"][-1] not in (3, 4):
        return {"takes": False, "why": f"input shape {inp['shape']} (it takes RGB images, NHWC with 3 channels)"}
    if meta is None and inp["dtype"] == "float32":
        return {"takes": False, "why": "float input without TFLite metadata (it needs the normalization; export "
                                       "without --no-metadata)"}
    if meta is None or not meta.get("labels"):
        return {"takes": True, "why": "without class names (no TFLite metadata labels)"}
    return {"takes": True, "why": f"with the {len(meta['labels'])} class names of its metadata"}


def inspect_onnx(path: Path) -> dict:
    import onnx
    from onnx import helper

    from edgecnn.export.onnx import tensorrt_int8_problems, weight_bits
    from edgecnn.runners.onnx import check_external_data

    check_external_data(path)
    m = onnx.load(str(path))
    ops = Counter(n.op_type for n in m.graph.node)
    init_names = {t.name for t in m.graph.initializer}

    def io(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    by_dtype = Counter()  # kernels (initializers of 2+ dimensions) by stored type: int8 or float in a QDQ file
    for t in m.graph.initializer:
        if len(t.dims) > 1:
            by_dtype[helper.tensor_dtype_to_np_dtype(t.data_type).name] += int(np.prod(t.dims))
    return {
        "format": "onnx",
        "inputs": [io(v) for v in m.graph.input if v.name not in init_names],
        "outputs": [io(v) for v in m.graph.output],
        "ops": dict(sorted(ops.items())),
        "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "parameters": sum(by_dtype.values()),
        "parameter_dtypes": dict(sorted(by_dtype.items())),
        "metadata": {p.key: p.value for p in m.metadata_props},
        "tensorrt_int8": tensorrt_int8_problems(m),  # None: no Q/DQ nodes; []: TensorRT can build it as int8
        "weight_bits": weight_bits(m),  # None: no Q/DQ nodes; 7: exact in ONNX Runtime's kernels without VNNI
    }


def inspect_keras(path: Path) -> dict:
    from edgecnn import model as model_mod

    core = model_mod.load_keras(path)
    ops = Counter(type(layer).__name__ for layer in core.layers)
    return {
        "format": "keras",
        "inputs": [{"name": t.name, "shape": [d if d is not None else -1 for d in t.shape], "dtype": str(t.dtype)}
                   for t in core.inputs],
        "outputs": [{"name": name, "shape": [d if d is not None else -1 for d in t.shape], "dtype": str(t.dtype)}
                    for name, t in zip(getattr(core, "output_names", None) or [t.name for t in core.outputs],
                                       core.outputs)],
        "ops": dict(sorted(ops.items())),
        "parameters": int(core.count_params()),
        "macs": model_mod.count_macs(core),
    }


def inspect(path: str | Path) -> dict:
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise EdgeCNNError(f"{path}: empty file")
    try:
        info = {"tflite": inspect_tflite, "onnx": inspect_onnx, "keras": inspect_keras}[fmt](path)
    except EdgeCNNError:
        raise
    except Exception as exc:  # a damaged file the runtime loaded but could not describe
        raise EdgeCNNError(f"{path}: damaged {fmt} model ({type(exc).__name__}: {str(exc)[:150]})") from None
    info["path"] = str(path)
    info["size_bytes"] = path.stat().st_size
    info["sha256"] = sha256(path)  # which file was checked: compare with the one on the device
    return info


def format_text(info: dict) -> str:
    lines = [f"{info['path']}  ({info['format']}, {info['size_bytes']:,} bytes)", f"  sha256: {info['sha256']}"]
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            q = t.get("quantization")
            qs = f"  scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
            lines.append(f"  {kind[:-1]:<6} {t['name']}: {t['dtype']} {t['shape']}{qs}")
    for key in ("parameters", "macs", "opset", "producer"):
        if info.get(key) is not None:
            v = info[key]
            lines.append(f"  {key}: {v:,}" if isinstance(v, int) else f"  {key}: {v}")
            if key == "parameters" and info.get("parameter_dtypes"):
                lines[-1] += " (" + ", ".join(f"{n:,} {k}" for k, n in info["parameter_dtypes"].items()) + ")"
    if "all_builtin" in info:
        builtin = "yes" if info["all_builtin"] else "NO: " + ", ".join(info["non_builtin_ops"])
        lines.append("  all ops builtin: " + builtin)
    if info.get("tensorrt_int8") is not None:
        problems = info["tensorrt_int8"]
        lines.append("  TensorRT int8: " + ("yes (int8 Q/DQ, zero point 0)" if not problems else
                                             "no: " + "; ".join(problems)))
    if info.get("weight_bits") == 7:
        lines.append("  int8 weights: 7-bit (-64..64), exact in ONNX Runtime's default kernels on x86 without VNNI")
    elif info.get("weight_bits") == 8:
        lines.append("  int8 weights: 8-bit; ONNX Runtime sessions on x86 without VNNI need the session option "
                     "session.x64quantprecision=1 (or export --onnx-target cpu-no-vnni)")
    if "tflite_metadata" in info:
        md = info["tflite_metadata"]
        if md is None:
            lines.append("  TFLite metadata: none")
        else:
            norm, files = md.get("normalization") or {}, ", ".join(md.get("label_files") or []) or "no file"
            lines.append(f"  TFLite metadata: {md.get('color_space')} image, mean {norm.get('mean')} std "
                         f"{norm.get('std')}, {len(md.get('labels') or [])} labels in {files}; {md.get('name')} "
                         f"{md.get('version')}")
    if "mediapipe_image_classifier" in info:
        v = info["mediapipe_image_classifier"]
        lines.append(f"  MediaPipe ImageClassifier: {'takes it' if v['takes'] else 'refuses it'}, {v['why']}")
    lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    for k, v in (info.get("metadata") or {}).items():
        lines.append(f"  metadata {k}: {v[:120]}")
    return "\n".join(lines)
