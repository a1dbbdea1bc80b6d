"""Quiet, lazy TensorFlow/Keras import. Import from here, never at module top level elsewhere."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
warnings.filterwarnings("ignore", module="keras")
warnings.filterwarnings("ignore", module="tensorflow")

from edgecnn._stderr import capture_fd2  # noqa: E402

with capture_fd2():
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
