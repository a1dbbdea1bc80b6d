"""One runner per runtime: load a model file for a device and thread count, predict probabilities.

Every (format, runtime, device) pair is a row in the benchmark; see ``RUNTIMES``.
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.errors import EdgeCNNError
from edgecnn.runners.base import Runner, RunnerUnavailable

# runtime name -> (model format, devices it can run on)
RUNTIMES = {
    "keras": ("keras", ("cpu", "cuda")),
    "litert": ("tflite", ("cpu",)),
    "onnxruntime": ("onnx", ("cpu", "cuda", "tensorrt")),
}


MODEL_SUFFIXES = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}


def format_of(path: str | Path) -> str:
    fmt = MODEL_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise EdgeCNNError(f"{path}: unsupported model file (expected .keras, .tflite or .onnx)")
    return fmt


def open_runner(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """The runner for ``path``'s format on ``device`` (cpu, cuda, tensorrt)."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    if fmt == "keras":
        from edgecnn.runners.keras import KerasRunner

        return KerasRunner(path, device, threads)
    if fmt == "tflite":
        from edgecnn.runners.tflite import TFLiteRunner

        return TFLiteRunner(path, device, threads)
    from edgecnn.runners.onnx import OnnxRunner

    return OnnxRunner(path, device, threads)


__all__ = ["Runner", "RunnerUnavailable", "RUNTIMES", "open_runner", "format_of"]
