"""edgecnn: train, export and benchmark image-classification CNNs for edge devices.

The package imports no TensorFlow at import time; heavy modules load lazily.
"""

__version__ = "0.1.0"

from edgecnn.errors import EdgeCNNError  # noqa: E402

__all__ = ["EdgeCNNError", "__version__"]
