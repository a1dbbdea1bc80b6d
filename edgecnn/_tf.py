"""Quiet, lazy TensorFlow/Keras import. Import from here, never at module top level elsewhere."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
warnings.filterwarnings("ignore", module="keras")
warnings.filterwarnings("ignore", module="tensorflow")

import contextlib  # noqa: E402
import sys  # noqa: E402


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ start-up chatter (oneDNN, CUDA stubs) that TF prints to fd 2 on import."""
    if os.environ.get("EDGECNN_TF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_stderr():
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402

    tf.config.list_physical_devices("GPU")  # triggers (and silences) the CUDA probe once

tf.get_logger().setLevel("ERROR")

try:  # absl prints "All log messages before absl::InitializeLog()" otherwise
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
except ImportError:  # pragma: no cover
    pass

__all__ = ["tf", "keras"]
