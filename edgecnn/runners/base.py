"""The runner interface and the integer I/O (de)quantization every integer model needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError


class RunnerUnavailable(EdgeCNNError):
    """The runtime or device cannot run here; the benchmark reports the row as skipped with this reason."""


def quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """float (uint8-range pixels) -> integer tensor, with rounding and saturation."""
    info = np.iinfo(dtype)
    if scale == 1.0 and zero_point == 0 and x.dtype == dtype:
        return x
    q = np.round(x.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


class Runner:
    """Load once, then ``predict(images)`` -> probabilities (N, classes) float32.

    ``images`` are uint8 NHWC arrays, the same raw pixels every format takes.
    """

    format = ""
    runtime = ""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.device = device
        self.threads = threads
        if device not in self.devices:
            raise RunnerUnavailable(f"{self.runtime} does not run on {device}")

    devices: tuple[str, ...] = ("cpu",)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(H, W, C) the model expects."""
        raise NotImplementedError

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        images = self.check_input(images)
        out = [self.predict_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_input(self, images: np.ndarray) -> np.ndarray:
        if images.ndim == 3:
            images = images[None]
        if tuple(images.shape[1:]) != tuple(self.input_shape):
            raise EdgeCNNError(
                f"{self.path}: model expects images of shape {tuple(self.input_shape)}, got {tuple(images.shape[1:])}"
            )
        return images

    def info(self) -> dict:
        """What actually ran: runtime, device, providers/delegates, threads."""
        return {"runtime": self.runtime, "device": self.device, "threads": self.threads}

    def close(self) -> None:
        pass
