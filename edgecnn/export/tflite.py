"""TFLite export: float32, float16, dynamic-range (weights only) and full-integer int8.

Converted from a SavedModel of the deployable core (``training=False``), the route that
works with Keras 3; int8 allows only ``TFLITE_BUILTINS_INT8`` so a Flex op fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError

VARIANTS = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("uint8", "int8", "float32")


def export_saved_model(core, directory: Path, batch: int | None = None) -> Path:
    """Write the inference-only SavedModel (serving signature, training=False); ``batch`` fixes the batch
    dimension of its signature (None: dynamic)."""
    import tensorflow as tf

    from edgecnn._stderr import capture_fd2
    from edgecnn.model import INPUT_NAME

    spec = [tf.TensorSpec([batch, *core.input_shape[1:]], tf.float32, name=INPUT_NAME)]
    with capture_fd2():
        core.export(str(directory), format="tf_saved_model", verbose=False, input_signature=spec)
    return directory


def convert(saved_model_dir: Path, variant: str, calibration: np.ndarray | None = None,
            io_dtype: str = "uint8") -> bytes:
    """Convert a SavedModel to TFLite bytes for ``variant``.

    ``calibration``: uint8 images from the training split (int8 only), fed as the model
    sees them at inference. ``io_dtype``: the int8 model's input and output type.
    """
    import tensorflow as tf

    return run_converter(tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)), variant, calibration,
                         io_dtype)


def run_converter(conv, variant: str, calibration: np.ndarray | None = None, io_dtype: str = "uint8") -> bytes:
    """Configure ``conv`` (any TFLiteConverter, e.g. from a tfmot QAT model) for ``variant`` and run it."""
    return _convert(configure(conv, variant, calibration, io_dtype), variant)


def configure(conv, variant: str, calibration: np.ndarray | None = None, io_dtype: str = "uint8"):
    """Set ``conv``'s options for ``variant``; return it."""
    if variant not in VARIANTS:
        raise EdgeCNNError(f"unknown TFLite variant {variant!r} (use {', '.join(VARIANTS)})")
    import tensorflow as tf

    if variant == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if calibration is None or not len(calibration):
            raise EdgeCNNError("int8 export needs calibration images (--calib-samples must be at least 1)")
        if io_dtype not in IO_DTYPES:
            raise EdgeCNNError(f"--io-dtype must be one of {', '.join(IO_DTYPES)}, got {io_dtype!r}")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.representative_dataset = lambda: ([calibration[i:i + 1].astype(np.float32)]
                                               for i in range(len(calibration)))
        io = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io_dtype]
        conv.inference_input_type = io
        conv.inference_output_type = io
    return conv


def _convert(conv, variant: str) -> bytes:
    from edgecnn._stderr import capture_fd2

    try:
        with capture_fd2() as log:
            return conv.convert()
    except Exception as exc:  # converter raises ConverterError, RuntimeError, ValueError...
        lines = [ln for ln in (str(exc).splitlines() + log.lines()) if "rror" in ln] or [str(exc)]
        raise EdgeCNNError(f"TFLite {variant} conversion failed: {lines[0].strip()[:300]}") from None


def calibrated_model(saved_model_dir: Path, calibration: np.ndarray) -> bytes:
    """The float model with the activation ranges ``calibration`` gives, as the int8 conversion records them
    before quantizing (TensorFlow's QuantizationDebugger takes the same step)."""
    import tensorflow as tf

    conv = configure(tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)), "int8", calibration, "float32")
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True
    return _convert(conv, "int8")


def quantize_calibrated(calibrated: bytes, numeric_verify: bool = False, keep_float: tuple[str, ...] = ()) -> bytes:
    """Quantize ``calibrated_model``'s output to int8 as ``convert`` does (the same scales), with float32 input and
    output. ``numeric_verify``: the debug model, with a NumericVerify op after every quantized op holding that op's
    int8 output and the float op's output on the same dequantized inputs, so each layer's own error can be read
    (TensorFlow's QuantizationDebugger model). ``keep_float``: output tensor names of ops left in float32 (a
    diagnostic: the file is then not full-integer)."""
    import tensorflow as tf

    try:  # private: no public route to these models (TensorFlow's QuantizationDebugger takes the same one)
        from tensorflow.lite.python.convert import mlir_quantize
    except ImportError:
        raise EdgeCNNError(f"TensorFlow {tf.__version__} has no tensorflow.lite.python.convert.mlir_quantize, "
                           "which the int8 debug model needs (TensorFlow 2.21 has it)") from None
    from edgecnn._stderr import capture_fd2

    try:
        with capture_fd2():  # the quantizer prints its settings
            return mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                 enable_numeric_verify=numeric_verify, denylisted_nodes=list(keep_float) or None)
    except Exception as exc:  # noqa: BLE001 - the quantizer raises ConverterError, RuntimeError...
        raise EdgeCNNError(f"TFLite int8 debug quantization failed: {str(exc).strip()[:300]}") from None


def calibration_images(x_train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training images chosen deterministically (never from the test split).

    The first value of the first image is set to 0 and the last of the last image to 255 (in a copy), so
    the int8 input's calibrated range is the whole pixel range whatever the images span: a uint8 input then
    takes raw pixels (scale 1, zero point 0) and no pixel of a deployed image saturates. Calibrated on
    images spanning 60..180, the input had scale 0.71, and a caller feeding raw pixels got wrong answers.
    """
    if n < 1:
        raise EdgeCNNError(f"--calib-samples must be at least 1, got {n}")
    n = min(n, len(x_train))
    idx = np.sort(np.random.default_rng(seed).choice(len(x_train), n, replace=False))
    images = np.array(x_train[idx], dtype=np.uint8)
    images.reshape(-1)[[0, -1]] = 0, 255  # the first and the last value (the last image's)
    return images
