"""Imbalanced classes (``--class-balance``): oversampling the rare ones, or weighing the loss.

numpy only, except :func:`oversampled`, which takes the TensorFlow module it builds with (the CLI's
Keras 3 process and the tf_keras worker both use it).
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import EdgeCNNError

MODES = ("none", "oversample", "weight")
# Training classes this many times apart in size get a hint about --class-balance.
HINT_RATIO = 5.0


def check(mode: str) -> None:
    if mode not in MODES:
        raise EdgeCNNError(f"--class-balance must be one of {', '.join(MODES)}, got {mode!r}")


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)


def imbalance(y: np.ndarray, class_names: list[str]) -> tuple[float, str, str]:
    """(largest / smallest class count, "largest (count)", "smallest (count)") over the classes present in ``y``."""
    counts = class_counts(y, len(class_names))
    present = np.flatnonzero(counts)
    big, small = present[counts[present].argmax()], present[counts[present].argmin()]
    return (float(counts[big] / counts[small]), f"{class_names[big]} ({counts[big]})",
            f"{class_names[small]} ({counts[small]})")


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (classes * count)`` per class (scikit-learn's "balanced"): every class carries the same total weight
    and the mean weight over the training images is 1. A class with no training images gets 0."""
    counts = class_counts(y, num_classes)
    present = counts > 0
    w = np.zeros(num_classes, dtype=np.float32)
    w[present] = len(y) / (present.sum() * counts[present])
    return w


def oversampled(tf, x: np.ndarray, y: np.ndarray, seed: int):
    """An endless tf.data stream of single (image, label) pairs, each drawn from a class chosen uniformly among
    the classes present; within a class, every image once per pass, reshuffled each pass. Rare images repeat
    more often, common ones less: one pass over ``len(x)`` draws sees every class equally often."""
    classes = np.flatnonzero(class_counts(y, int(y.max()) + 1))
    streams = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        streams.append(tf.data.Dataset.from_tensor_slices((x[idx], y[idx]))
                       .shuffle(len(idx), seed=seed + int(c), reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(streams, weights=[1 / len(classes)] * len(classes), seed=seed)


def oversampled_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` training indices drawn as :func:`oversampled` draws them (class uniform, each class's images in a
    reshuffled cycle): the images whose batch statistics a BatchNorm saw in oversampled training."""
    rng = np.random.default_rng(seed)
    classes = np.flatnonzero(class_counts(y, int(y.max()) + 1))
    picks = rng.choice(len(classes), size=n)
    out = np.empty(n, dtype=np.int64)
    for k, c in enumerate(classes):
        where = np.flatnonzero(picks == k)
        idx = np.flatnonzero(y == c)
        cycles = -(-len(where) // len(idx)) if len(where) else 0
        order = np.concatenate([rng.permutation(idx) for _ in range(cycles)]) if cycles else idx[:0]
        out[where] = order[:len(where)]
    return out


def training_images(x: np.ndarray, y: np.ndarray, mode: str, seed: int, limit: int) -> np.ndarray:
    """Up to ``limit`` images distributed as training drew them, for recomputing BatchNorm statistics: the
    training images themselves, or with ``oversample`` as many drawn as it draws (measured on shapes folders:
    tools/bench_class_balance.py)."""
    if mode != "oversample":
        return x
    return x[oversampled_indices(y, min(len(y), limit), seed)]
