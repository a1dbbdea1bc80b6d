"""The training input pipeline: in-memory arrays to batches of float images and one-hot labels.

Built with the TensorFlow module the caller passes, so the CLI's Keras 3 process and the tf_keras
worker (QAT, pruning) feed their models the same way. This module imports no TensorFlow itself.
"""

from __future__ import annotations

import numpy as np

from edgecnn import balance


def batches(tf, x: np.ndarray, y: np.ndarray, num_classes: int, batch: int, shuffle: bool, seed: int,
            repeat: bool = False, class_balance: str = "none", augment=None):
    """Shuffled (each pass anew), batched, prefetched (images as float32, labels one-hot).

    ``repeat``: endless; fit it with ``steps_per_epoch = ceil(len(x) / batch)``. ``class_balance``:
    ``oversample`` draws every class equally often (balance.oversampled; always endless);
    ``weight`` adds each label's class weight as the sample weight (balance.class_weights).
    ``augment``: a layer applied to each batch in the pipeline (the worker's; training puts it in the model).
    """
    if class_balance == "oversample":
        ds = balance.oversampled(tf, x, y, seed).batch(batch)
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch, drop_remainder=False)
        if repeat:
            ds = ds.repeat()
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), tf.one_hot(b, num_classes), b),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        ds = ds.map(lambda a, b, c: (augment(a, training=True), b, c))
    if class_balance == "weight":
        w = tf.constant(balance.class_weights(y, num_classes), tf.float32)
        ds = ds.map(lambda a, b, c: (a, b, tf.gather(w, c)))
    else:
        ds = ds.map(lambda a, b, c: (a, b))
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts).prefetch(tf.data.AUTOTUNE)
