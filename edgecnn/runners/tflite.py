"""TFLite runner through LiteRT (``ai_edge_litert``), XNNPACK on the CPU."""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runners.base import Runner, dequantize, quantize


def interpreter(path=None, content: bytes | None = None, threads: int | None = None, delegate: bool = True,
                preserve_all_tensors: bool = False):
    """A LiteRT interpreter, with its default XNNPACK delegate unless ``delegate`` is False
    (inspection wants the model's own ops, not DELEGATE nodes); one clear line on a bad file.
    ``preserve_all_tensors``: every intermediate tensor stays readable after invoke (debugging)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgecnn._stderr import capture_fd2

    try:
        with capture_fd2() as log:
            it = Interpreter(model_path=None if content else str(path), model_content=content, num_threads=threads,
                             experimental_op_resolver_type=OpResolverType.AUTO if delegate
                             else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                             experimental_preserve_all_tensors=preserve_all_tensors)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        detail = (log.lines() or [str(exc)])[-1].strip()
        raise EdgeCNNError(f"{path or 'model'}: not a loadable TFLite model ({detail[:200]})") from None
    return it


class TFLiteRunner(Runner):
    format = "tflite"
    runtime = "litert"
    devices = ("cpu",)

    def __init__(self, path, device="cpu", threads=None):
        super().__init__(path, device, threads)
        self.it = interpreter(self.path, threads=threads)
        inputs, outputs = self.it.get_input_details(), self.it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EdgeCNNError(f"{self.path}: expected one input and one output, found {len(inputs)} and "
                               f"{len(outputs)}")
        self.inp, self.out = inputs[0], outputs[0]
        if len(self.inp["shape"]) != 4:
            raise EdgeCNNError(f"{self.path}: input is not an NHWC image tensor (shape {list(self.inp['shape'])})")
        self._batch = int(self.inp["shape"][0])

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.inp["shape"][1:])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.it.resize_tensor_input(self.inp["index"], [n, *self.input_shape])
            self.it.allocate_tensors()
            self.inp = self.it.get_input_details()[0]
            self.out = self.it.get_output_details()[0]
            self._batch = n

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        self._resize(len(images))
        dtype = self.inp["dtype"]
        if dtype in (np.uint8, np.int8):
            scale, zp = self.inp["quantization"]
            x = quantize(images, dtype, scale, zp)
        else:
            x = images.astype(dtype)
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] in (np.uint8, np.int8):
            scale, zp = self.out["quantization"]
            return dequantize(y, scale, zp)
        return y.astype(np.float32)

    def info(self):
        from importlib import metadata

        return super().info() | {"delegate": "XNNPACK (default)", "version": metadata.version("ai-edge-litert"),
                                 "input_dtype": np.dtype(self.inp["dtype"]).name}
