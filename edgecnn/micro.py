"""Microcontroller target: TFLite Micro op check, smallest tensor arena, flash size, C source.

Uses the ``tflite-micro`` package, whose Python interpreter runs the TFLite Micro reference
kernels on the host: the same op resolver and arena planner as on the device.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import write_text

ARENA_STEP = 1024
ARENA_MAX = 16 * 1024 * 1024


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise EdgeCNNError("TFLite Micro checks need the tflite-micro package: pip install tflite-micro") from None
    return runtime


def check_integer(blob: bytes, path) -> None:
    from edgecnn.inspect import inspect_tflite

    info = inspect_tflite(Path(path), content=blob)
    if info["inputs"][0]["dtype"] not in ("uint8", "int8"):
        raise EdgeCNNError(f"{path}: TFLite Micro needs the full-integer int8 export (model_int8.tflite); this model "
                           f"takes {info['inputs'][0]['dtype']}")


def interpreter(blob: bytes, arena: int):
    """A TFLM interpreter with ``arena`` bytes; EdgeCNNError naming unsupported ops."""
    from edgecnn._stderr import capture_fd2

    runtime = _runtime()
    try:
        with capture_fd2(stdout_fd=True) as log:
            return runtime.Interpreter.from_bytes(blob, arena_size=arena)
    except RuntimeError as exc:
        missing = sorted(set(re.findall(r"(?:Didn't find op for builtin opcode|unsupported op)\s*'?([A-Z0-9_]+)",
                                        log.text)))
        if missing:
            raise EdgeCNNError("ops missing from TFLite Micro: " + ", ".join(missing)) from None
        if "allocate" in str(exc).lower() or "resize buffer" in log.text:
            raise ArenaTooSmall(arena) from None
        raise EdgeCNNError(f"TFLite Micro cannot load the model: {(log.lines() or [str(exc)])[-1][:200]}") from None


class ArenaTooSmall(EdgeCNNError):
    def __init__(self, arena: int):
        super().__init__(f"tensor arena of {arena} bytes is too small")
        self.arena = arena


def smallest_arena(blob: bytes) -> int:
    """Binary search (1 KB steps) for the smallest arena that allocates and runs."""
    x = None

    def fits(n: int) -> bool:
        nonlocal x
        try:
            it = interpreter(blob, n)
            d = it.get_input_details(0)
            x = np.zeros(d["shape"], d["dtype"]) if x is None else x
            it.set_input(x, 0)
            it.invoke()
            return True
        except ArenaTooSmall:
            return False

    hi = max(64 * 1024, 2 * len(blob))
    while not fits(hi):
        if hi >= ARENA_MAX:
            raise EdgeCNNError(f"model does not fit a {ARENA_MAX // 1024} KB tensor arena")
        hi *= 2
    lo = 0  # known too small (in steps)
    lo_s, hi_s = lo, math.ceil(hi / ARENA_STEP)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if fits(mid * ARENA_STEP):
            hi_s = mid
        else:
            lo_s = mid
    return hi_s * ARENA_STEP


class MicroRunner:
    """Batch-1 TFLM inference with integer I/O handled like the LiteRT runner."""

    def __init__(self, blob: bytes, arena: int | None = None):
        self.arena = arena or smallest_arena(blob)
        self.it = interpreter(blob, self.arena)
        self.inp = self.it.get_input_details(0)
        self.out = self.it.get_output_details(0)

    def check_input(self, images: np.ndarray) -> np.ndarray:
        return images

    def info(self) -> dict:
        return {"runtime": "tflite-micro", "note": "host timing of the reference kernels",
                "arena_bytes": self.arena}

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        from edgecnn.runners.base import dequantize, quantize

        qi, qo = self.inp["quantization_parameters"], self.out["quantization_parameters"]
        out = []
        for img in images:
            x = quantize(img[None], self.inp["dtype"], float(qi["scales"][0]), int(qi["zero_points"][0]))
            self.it.set_input(x, 0)
            self.it.invoke()
            y = self.it.get_output(0)
            out.append(dequantize(y, float(qo["scales"][0]), int(qo["zero_points"][0]))[0])
        return np.asarray(out, np.float32)


def check(path: Path, x: np.ndarray, y: np.ndarray, litert_probs: np.ndarray | None = None) -> dict:
    """Arena, flash, op support, accuracy and agreement with LiteRT int8 on ``x``."""
    blob = Path(path).read_bytes()
    check_integer(blob, path)
    arena = smallest_arena(blob)
    runner = MicroRunner(blob, arena)
    t0 = time.perf_counter()
    probs = runner.predict(x)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(x))
    out = {"arena_kb": arena // 1024, "flash_kb": math.ceil(len(blob) / 1024), "ops_supported": True,
           "samples": int(len(x)), "accuracy": float(np.mean(probs.argmax(1) == y)),
           "host_ms_per_image": ms}
    if litert_probs is not None:
        out["agreement_with_litert"] = float(np.mean(probs.argmax(1) == litert_probs.argmax(1)))
        out["litert_accuracy"] = float(np.mean(litert_probs.argmax(1) == y))
    return out


def write_c_array(tflite: Path, out_dir: Path, labels: dict, arena_kb: int | None) -> tuple[Path, Path]:
    """``model_data.h`` / ``model_data.cc``: the usual TFLite Micro project layout."""
    from edgecnn.inspect import inspect_tflite

    blob = Path(tflite).read_bytes()
    info = inspect_tflite(Path(tflite), content=blob)
    qi = info["inputs"][0].get("quantization", {"scale": 1.0, "zero_point": 0})
    qo = info["outputs"][0].get("quantization", {"scale": 1.0, "zero_point": 0})
    names = labels["class_names"]
    h, w, c = labels["input_shape"]
    header = f"""// Generated by edgecnn from {Path(tflite).name}. Do not edit.
#ifndef EDGECNN_MODEL_DATA_H_
#define EDGECNN_MODEL_DATA_H_

#define EDGECNN_INPUT_HEIGHT {h}
#define EDGECNN_INPUT_WIDTH {w}
#define EDGECNN_INPUT_CHANNELS {c}
#define EDGECNN_NUM_CLASSES {len(names)}
#define EDGECNN_INPUT_SCALE {qi['scale']!r}f
#define EDGECNN_INPUT_ZERO_POINT {qi['zero_point']}
#define EDGECNN_OUTPUT_SCALE {qo['scale']!r}f
#define EDGECNN_OUTPUT_ZERO_POINT {qo['zero_point']}
"""
    if arena_kb:
        header += "// Smallest tensor arena found with the TFLite Micro reference kernels on the host.\n"
        header += f"#define EDGECNN_TENSOR_ARENA_SIZE ({arena_kb} * 1024)\n"
    header += """
extern const unsigned char g_model_data[];
extern const unsigned int g_model_data_len;
extern const char* const g_class_names[EDGECNN_NUM_CLASSES];

#endif  // EDGECNN_MODEL_DATA_H_
"""
    rows = [", ".join(f"0x{b:02x}" for b in blob[i:i + 12]) for i in range(0, len(blob), 12)]
    escaped = [n.replace("\\", "\\\\").replace('"', '\\"') for n in names]
    source = (f'// Generated by edgecnn from {Path(tflite).name}. Do not edit.\n#include "model_data.h"\n\n'
              "alignas(16) const unsigned char g_model_data[] = {\n    " + ",\n    ".join(rows) + "\n};\n"
              f"const unsigned int g_model_data_len = {len(blob)};\n\n"
              "const char* const g_class_names[EDGECNN_NUM_CLASSES] = {" +
              ", ".join(f'"{n}"' for n in escaped) + "};\n")
    h_path, cc_path = out_dir / "model_data.h", out_dir / "model_data.cc"
    write_text(h_path, header)
    write_text(cc_path, source)
    return h_path, cc_path
