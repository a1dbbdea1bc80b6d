"""Knowledge distillation: a small network trained on a bigger trained one's soft predictions (Hinton et al.).

``edgecnn train --teacher RUN``: the teacher (any run's ``model.keras``, frozen, in inference mode) sees
each training batch after augmentation, exactly as the student does. The training model outputs the
student's and the teacher's probabilities side by side; the loss is

    (1 - w) * crossentropy(labels, student) + w * T^2 * KL(teacher_T || student_T)

where ``p_T = softmax(log p / T)`` (the softmax of the logits divided by T) and ``T^2`` keeps the
soft term's gradients on the scale of the hard one's. Only the student is saved: exports never see
the teacher.
"""

from __future__ import annotations

import functools
from pathlib import Path

from edgecnn.errors import EdgeCNNError, short_list

EPS = 1e-7  # probabilities are clipped here before their log (softmax outputs in float32)


@functools.cache
def classes(keras):
    """(Teacher layer, Distillation loss, student_accuracy metric function), registered for checkpoints."""
    ops = keras.ops

    @keras.saving.register_keras_serializable("edgecnn")
    class Teacher(keras.layers.Layer):
        """A trained model that only predicts: frozen, in inference mode (BatchNorm's moving statistics, no
        dropout) whatever the training flag, and no gradient flows through it."""

        def __init__(self, model, **kwargs):
            super().__init__(**kwargs)
            if isinstance(model, dict):
                model = keras.saving.deserialize_keras_object(model)
            self.model = model
            self.model.trainable = False
            self.trainable = False

        def call(self, images):
            return ops.stop_gradient(self.model(images, training=False))

        def compute_output_shape(self, input_shape):
            return self.model.compute_output_shape(input_shape)

        def get_config(self):
            return super().get_config() | {"model": keras.saving.serialize_keras_object(self.model)}

    @keras.saving.register_keras_serializable("edgecnn")
    class Distillation(keras.losses.Loss):
        """``y_pred`` = student and teacher probabilities, concatenated; ``y_true`` = one-hot labels."""

        def __init__(self, weight=0.9, temperature=4.0, label_smoothing=0.0, name="distillation", **kwargs):
            super().__init__(name=name, **kwargs)
            self.weight, self.temperature, self.label_smoothing = float(weight), float(temperature), label_smoothing

        def call(self, y_true, y_pred):
            k = ops.shape(y_true)[-1]
            student, teacher = y_pred[:, :k], y_pred[:, k:]
            hard = keras.losses.categorical_crossentropy(y_true, student, label_smoothing=self.label_smoothing)
            t = self.temperature
            log_teacher = ops.log_softmax(ops.log(ops.clip(teacher, EPS, 1.0)) / t)
            log_student = ops.log_softmax(ops.log(ops.clip(student, EPS, 1.0)) / t)
            soft = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
            return (1.0 - self.weight) * hard + self.weight * t * t * soft

        def get_config(self):
            return super().get_config() | {"weight": self.weight, "temperature": self.temperature,
                                           "label_smoothing": self.label_smoothing}

    @keras.saving.register_keras_serializable("edgecnn")
    def student_accuracy(y_true, y_pred):
        """Categorical accuracy of the student's half of ``y_pred``."""
        return keras.metrics.categorical_accuracy(y_true, y_pred[:, : ops.shape(y_true)[-1]])

    return Teacher, Distillation, student_accuracy


def load_teacher(source: str, runs_dir: str | Path, class_names: list[str], input_shape: tuple[int, int, int]):
    """The teacher model and the path of its file: ``source`` is a run (name or folder) or a ``.keras``
    file. It must take the student's images and, where its run says so, name the same classes in the
    same order; anything else is one clear error."""
    from edgecnn import runs
    from edgecnn.fsutil import read_json
    from edgecnn.model import load_keras

    path = Path(source)
    if path.suffix == ".keras" or path.is_file():
        labels_file = path.parent / "labels.json"
    else:
        try:
            run = runs.resolve(source, runs_dir)
        except EdgeCNNError as exc:
            raise EdgeCNNError(f"--teacher: {exc}") from None
        path, labels_file = run / runs.MODEL_FILE, run / "labels.json"
    model = load_keras(path)
    shape = tuple(model.input_shape[1:])
    if shape != tuple(input_shape):
        raise EdgeCNNError(f"--teacher {path}: takes {'x'.join(map(str, shape))} images, the data gives "
                           f"{'x'.join(map(str, input_shape))} (train it on the same --image-size and --channels)")
    outputs = model.output_shape[-1]
    if outputs != len(class_names):
        raise EdgeCNNError(f"--teacher {path}: predicts {outputs} classes, the data has {len(class_names)}")
    if labels_file.is_file():
        names = read_json(labels_file, "labels file").get("class_names")
        if names is not None and list(names) != list(class_names):
            raise EdgeCNNError(f"--teacher {path}: its classes ({short_list(list(names))}) are not the data's "
                               f"({short_list(list(class_names))}), in the same order")
    return model, path


def compile_args(keras, weight: float, temperature: float, label_smoothing: float) -> dict:
    """``loss`` and ``metrics`` for ``Model.compile`` of a training model built with a teacher."""
    _, distillation, student_accuracy = classes(keras)
    return dict(loss=distillation(weight, temperature, label_smoothing),
                metrics=[keras.metrics.MeanMetricWrapper(student_accuracy, name="accuracy")])


def agreement(a, b) -> float:
    """Fraction of rows whose argmax agree."""
    return float((a.argmax(-1) == b.argmax(-1)).mean())
