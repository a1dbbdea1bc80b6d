"""Keras / TensorFlow runner (CPU or GPU)."""

from __future__ import annotations

import numpy as np

from edgecnn.runners.base import Runner, RunnerUnavailable


class KerasRunner(Runner):
    format = "keras"
    runtime = "tensorflow"
    devices = ("cpu", "cuda")

    def __init__(self, path, device="cpu", threads=None):
        super().__init__(path, device, threads)
        from edgecnn._tf import tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass  # already initialised in this process: keep TensorFlow's setting
        gpus = tf.config.list_logical_devices("GPU")
        if device == "cuda" and not gpus:
            raise RunnerUnavailable("TensorFlow sees no GPU (no CUDA device or CUDA libraries)")
        self._tf_device = gpus[0].name if device == "cuda" else "/CPU:0"
        from edgecnn.model import load_keras

        with tf.device(self._tf_device):
            self.model = load_keras(self.path)
        model = self.model

        @tf.function(reduce_retracing=True)
        def fn(x):
            return model(x, training=False)

        self._fn = fn

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.model.input_shape[1:])

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        from edgecnn._tf import tf

        with tf.device(self._tf_device):
            return self._fn(tf.constant(images, dtype=tf.float32)).numpy().astype(np.float32)

    def info(self):
        from edgecnn._tf import tf

        return super().info() | {"tf_device": self._tf_device, "version": tf.__version__}
