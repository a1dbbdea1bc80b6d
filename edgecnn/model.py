"""Keras models from architecture specs: the deployable ``core`` and the training wrapper.

``core`` maps uint8-range images (float32 0..255) to class probabilities and contains its
own Rescaling, so every export takes raw pixels. Augmentation lives in a separate
pipeline placed in front of ``core`` only in the training model; it never reaches an export.
"""

from __future__ import annotations

import functools
import math

from edgecnn.errors import EdgeCNNError, first_line, lambda_refused
from edgecnn.spec import Spec, parse

AUGMENTATIONS = ("flip", "altflip", "translate", "rotate", "zoom", "contrast", "cutout")
# Augmentations that leave the statistics BatchNorm averages as they were: a set of photos mirrored
# looks like the set. The others (translation's filled edges, cutout's squares...) shift them.
MIRRORS = ("flip", "altflip")
AUGMENT_PRESETS = {
    "none": (),
    "light": ("flip", "translate"),
    "standard": ("flip", "translate", "rotate", "zoom"),
    "full": ("flip", "translate", "rotate", "zoom", "contrast"),
}
# --augment translate's largest shift, a fraction of the image side (0.1: +-3 px on 32x32).
TRANSLATE = 0.1
# How RandomTranslation resamples, recorded in each run's config: runs made before it moved whole
# pixels ("bilinear", absent from their config) trained on blurred images.
TRANSLATE_INTERPOLATION = "nearest"
# What the translate augmentation puts where the image moved away: the edge pixels repeated (nearest), the
# image mirrored with its edge pixels repeated (reflect: numpy's "symmetric"), mirrored about its edge pixels
# (mirror: numpy's and PyTorch's "reflect", as airbench pads), or black (constant, a zero-padded crop).
TRANSLATE_FILLS = ("nearest", "reflect", "mirror", "constant")
TRANSLATE_FILL = "nearest"  # the default, and what every run made before the choice existed used
# Cutout's square side as a fraction of the shorter image side (8 px on CIFAR-10's 32).
CUTOUT_FRACTION = 0.25
CUTOUT_FILL = 127.5
# Keras's BatchNormalization momentum, kept where epochs are long enough (batchnorm_momentum).
BN_MOMENTUM = 0.99
# Training images whose batch statistics recalibrate BatchNorm after a short-epoch run.
RECALIBRATION_IMAGES = 10_000
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def parse_augment(text: str) -> tuple[str, ...]:
    """``light`` / ``none`` / a comma list of AUGMENTATIONS."""
    t = (text or "none").strip().lower()
    if t in AUGMENT_PRESETS:
        return AUGMENT_PRESETS[t]
    names = tuple(s.strip() for s in t.split(",") if s.strip())
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad or not names:
        raise EdgeCNNError(
            f"--augment {text!r}: unknown {', '.join(bad) or 'value'}; use "
            + ", ".join(AUGMENT_PRESETS) + " or a comma list of " + ", ".join(AUGMENTATIONS)
        )
    if "flip" in names and "altflip" in names:
        raise EdgeCNNError(f"--augment {text!r}: flip and altflip are both horizontal flips; choose one")
    return names


def build_augment(names: tuple[str, ...], input_shape, seed: int = 0, keras_module=None,
                  translate: float = TRANSLATE, translate_fill: str = TRANSLATE_FILL):
    """A Sequential of Keras random layers (identity at inference).

    ``keras_module``: tf_keras for the tfmot fine-tuning worker; Keras 3 by default.
    ``translate``: the largest shift, a fraction of the image side; ``translate_fill``: one of TRANSLATE_FILLS.
    """
    keras = keras_module or _keras()

    layers = []
    for name in names:
        if name == "flip" or (name == "altflip" and keras.__name__ != "keras"):
            layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
        elif name == "altflip":  # tf_keras (the fine-tuning worker, no epoch count) takes the random flip above
            layers.append(alternating_flip_class(keras)(seed=seed, name="altflip"))
        elif name == "translate" and translate_fill == "mirror":  # TensorFlow's image transform has no mirror
            pad = math.floor(translate * min(input_shape[0], input_shape[1]) + 1e-6)  # the largest whole shift
            layers.append(padded_crop_class(keras)(pad, seed=seed + 1, name="translate"))
        elif name == "translate":
            # Whole-pixel shifts, as a padded random crop: bilinear resampling of a fractional shift
            # blurs nearly every training image, which no test image is.
            layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode=translate_fill,
                                                         interpolation=TRANSLATE_INTERPOLATION,
                                                         seed=seed + 1))
        elif name == "rotate":
            layers.append(keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 2))
        elif name == "zoom":
            layers.append(keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 3))
        elif name == "contrast":
            layers.append(keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 4))
        elif name == "cutout":
            side = max(1, round(CUTOUT_FRACTION * min(input_shape[0], input_shape[1])))
            layers.append(cutout_class(keras)(side, seed=seed + 5, name="cutout"))
    return keras.Sequential([keras.Input(input_shape), *layers], name="augment")


@functools.cache
def cutout_class(keras):
    """The Cutout layer class for ``keras`` (Keras 3, registered for checkpoints; or tf_keras).

    Cutout (DeVries & Taylor, 2017): each training image gets one ``side`` x ``side`` square, centred
    at a uniformly random pixel and clipped at the borders, set to mid-grey. Identity at inference.
    """
    from edgecnn._tf import tf

    class Cutout(keras.layers.Layer):
        def __init__(self, side, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.side, self.seed = int(side), seed

        def call(self, images, training=None):
            if not training:
                return images
            shape = tf.shape(images)
            n, h, w = shape[0], shape[1], shape[2]
            # Two op seeds: one would put every square on the diagonal.
            cy = tf.random.uniform([n, 1, 1, 1], 0, h, dtype=tf.int32, seed=self.seed)
            cx = tf.random.uniform([n, 1, 1, 1], 0, w, dtype=tf.int32, seed=_second_seed(self.seed))
            y = tf.reshape(tf.range(h), [1, -1, 1, 1])
            x = tf.reshape(tf.range(w), [1, 1, -1, 1])
            lo = self.side // 2
            inside = ((y >= cy - lo) & (y < cy - lo + self.side) & (x >= cx - lo) & (x < cx - lo + self.side))
            return tf.where(inside, tf.cast(CUTOUT_FILL, images.dtype), images)

        def get_config(self):
            return super().get_config() | {"side": self.side, "seed": self.seed}

    return _image_augment_class(keras, Cutout)


def _image_augment_class(keras, cls):
    """``cls``, an augmentation that keeps the image shape, registered for Keras 3 checkpoints (tf_keras, the
    tfmot worker, never saves its augmentation)."""
    cls.compute_output_shape = lambda self, input_shape: input_shape
    return keras.saving.register_keras_serializable("edgecnn")(cls) if keras.__name__ == "keras" else cls


def _second_seed(seed):
    """A second op seed from a layer's ``seed``: ops sharing one would draw the same sequence."""
    return None if seed is None else seed + 1000


@functools.cache
def padded_crop_class(keras):
    """The PaddedCrop layer class for ``keras`` (Keras 3, registered for checkpoints; or tf_keras).

    Each training image is mirrored about its edge pixels by ``pad`` pixels on every side (PyTorch's and
    numpy's "reflect") and cropped back to its size at a uniformly random whole-pixel offset: a shift of
    -pad..pad pixels on each axis. Identity at inference.
    """
    from edgecnn._tf import tf

    class PaddedCrop(keras.layers.Layer):
        def __init__(self, pad, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.pad, self.seed = int(pad), seed

        def call(self, images, training=None):
            if not training or self.pad == 0:
                return images
            p = self.pad
            shape = tf.shape(images)
            n, h, w = shape[0], shape[1], shape[2]
            padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
            dy = tf.random.uniform([n, 1], 0, 2 * p + 1, dtype=tf.int32, seed=self.seed)
            dx = tf.random.uniform([n, 1], 0, 2 * p + 1, dtype=tf.int32, seed=_second_seed(self.seed))
            rows = tf.gather(padded, dy + tf.range(h)[tf.newaxis], axis=1, batch_dims=1)
            return tf.gather(rows, dx + tf.range(w)[tf.newaxis], axis=2, batch_dims=1)

        def get_config(self):
            return super().get_config() | {"pad": self.pad, "seed": self.seed}

    return _image_augment_class(keras, PaddedCrop)


@functools.cache
def alternating_flip_class(keras):
    """The AlternatingFlip layer class for Keras 3 (registered for checkpoints).

    Alternating flip (Jordan, 2024, airbench): each training image is mirrored in every other epoch,
    starting from a random choice, so any two consecutive epochs show it both ways (a random flip
    shows a quarter of the images the same way three epochs running). The per-image choice is a hash
    of the image's pixels and the seed, so it needs no image index; ``epoch`` is set at each
    epoch's start by ``set_flip_epochs``. Identity at inference.
    """
    from edgecnn._tf import tf

    @keras.saving.register_keras_serializable("edgecnn")
    class AlternatingFlip(keras.layers.Layer):
        def __init__(self, seed=0, **kwargs):
            super().__init__(**kwargs)
            self.seed = int(seed or 0)
            self.epoch = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                         name="epoch")

        def call(self, images, training=None):
            if not training:
                return images
            # The pixel sum (exact in float32 up to 2^24 / 255 8-bit values, deterministic beyond) through a
            # multiplicative hash; one of its middle bits is the image's first-epoch choice.
            total = tf.cast(tf.reduce_sum(tf.cast(images, "float32"), axis=[1, 2, 3]), tf.int64)
            mixed = (total * 2654435761 + (self.seed + 1) * 40503) % 4294967296
            first = (mixed // 65536) % 2
            flip = tf.equal((first + tf.cast(self.epoch, tf.int64)) % 2, 1)
            return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return super().get_config() | {"seed": self.seed}

    return AlternatingFlip


@functools.cache
def fused_batchnorm_class(keras):
    """BatchNormalization whose training step is TensorFlow's fused kernel (Keras 3; registered for checkpoints).

    Keras 3 computes a batch's moments and the normalization as separate ops; with the fused kernel
    (FusedBatchNormV3 and its gradient, as tf.keras used) the presets' networks trained 1.4x as fast on
    the CPU (docs/train_speed.md). Same variables, same maths (the moving variance keeps Keras's biased estimate),
    and the stock layer's path at inference. Training only: ``to_deployable`` rebuilds the saved
    model with stock layers, so no file a user gets needs this class.
    """
    from edgecnn._tf import tf

    ops = keras.ops

    @keras.saving.register_keras_serializable("edgecnn")
    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if (not (training and self.trainable) or mask is not None or self.renorm or self.synchronized
                    or len(inputs.shape) != 4 or self.axis not in (-1, 3) or not (self.center and self.scale)):
                return super().call(inputs, training=training, mask=mask)
            # 16-bit inputs go in as they are (as tf.keras's fused path did): the kernel keeps its statistics
            # in float32 itself; two casts fewer per layer and step (docs/train_speed.md, last table).
            x = inputs if inputs.dtype in (tf.float16, tf.bfloat16) else ops.cast(inputs, "float32")
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), epsilon=self.epsilon,
                data_format="NHWC", is_training=True)
            count = ops.cast(ops.size(x) // ops.shape(x)[-1], "float32")
            variance = variance * (count - 1.0) / count  # the kernel returns Bessel's unbiased estimate
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return ops.cast(y, self.compute_dtype)

    return FusedBatchNormalization


def set_flip_epochs(train_model):
    """A callback that tells ``train_model``'s AlternatingFlip layers which epoch starts (None: none)."""
    keras = _keras()
    try:
        flips = [layer for layer in train_model.get_layer("augment").layers if layer.name == "altflip"]
    except ValueError:  # no augmentation
        return None
    if not flips:
        return None
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: [layer.epoch.assign(epoch) for layer in flips])


def _keras():
    from edgecnn._tf import keras

    return keras


def build_core(spec: Spec | str, input_shape, num_classes: int, dtype_policy: str | None = None,
               keras_module=None, fused_batchnorm: bool = False):
    """Build the deployable model. ``dtype_policy`` e.g. ``mixed_float16`` for GPU training.

    ``keras_module``: build the same architecture (same layer names) with tf_keras, for tfmot.
    ``fused_batchnorm``: for training with Keras 3, BatchNorm layers that train with TensorFlow's fused
    kernel (``fused_batchnorm_class``); ``to_deployable`` turns them back into stock layers.
    """
    keras = keras_module or _keras()

    spec = parse(spec) if isinstance(spec, str) else spec
    h, w, c = input_shape
    if 2 ** spec.pools > min(h, w):
        raise EdgeCNNError(
            f"architecture {spec.text!r} halves the image {spec.pools} times; a {h}x{w} input allows at most "
            f"{max(0, min(h, w).bit_length() - 1)}"
        )
    reg = keras.regularizers.L2(spec.l2) if spec.l2 else None
    policy = dtype_policy or "float32"
    L = keras.layers
    if fused_batchnorm and keras_module is None:
        L = _FusedLayers(L, fused_batchnorm_class(keras))
    conv_kw = dict(padding="same", kernel_regularizer=reg, kernel_initializer="he_normal", dtype=policy)

    inputs = keras.Input(input_shape, name=INPUT_NAME, dtype="float32")
    x = L.Rescaling(1.0 / 255.0, name="rescale", dtype=policy)(inputs)
    width = None
    n = 0

    def name(kind):
        nonlocal n
        n += 1
        return f"{kind}{n}"

    for layer in spec.conv:
        if layer.kind == "conv":
            x = L.Conv2D(layer.width, 3, use_bias=not layer.bn, name=name("conv"), **conv_kw)(x)
            if layer.pool:
                x = L.MaxPooling2D(2, name=name("pool"), dtype=policy)(x)
            if layer.bn:
                # Behind a max-pool, gamma >= 0 keeps BN an increasing map per channel, so export can fold
                # it into the convolution (fold_pooled_batchnorm): the pooling commutes with it.
                x = L.BatchNormalization(name=name("bn"), dtype=policy,
                                         gamma_constraint=keras.constraints.NonNeg() if layer.pool else None)(x)
            x = L.ReLU(name=name("relu"), dtype=policy)(x)
            width = layer.width
        elif layer.kind == "res":
            stride = 2 if width is not None and layer.width > width else 1
            shortcut = x
            y = L.Conv2D(layer.width, 3, strides=stride, use_bias=False, name=name("conv"), **conv_kw)(x)
            y = L.BatchNormalization(name=name("bn"), dtype=policy)(y)
            y = L.ReLU(name=name("relu"), dtype=policy)(y)
            y = L.Conv2D(layer.width, 3, use_bias=False, name=name("conv"), **conv_kw)(y)
            # ``z``: gamma 0, so the block starts as its shortcut (Goyal et al., "zero-gamma")
            y = L.BatchNormalization(name=name("bn"), dtype=policy,
                                     gamma_initializer="zeros" if layer.zero_init else "ones")(y)
            if layer.relu_inside:
                y = L.ReLU(name=name("relu"), dtype=policy)(y)
            if layer.se:
                y = _squeeze_excite(L, y, layer.width, name, conv_kw)
            if stride != 1 or width != layer.width:
                shortcut = L.Conv2D(layer.width, 1, strides=stride, name=name("proj"), **conv_kw)(shortcut)
            x = L.Add(name=name("add"), dtype=policy)([y, shortcut])
            if not layer.relu_inside:
                x = L.ReLU(name=name("relu"), dtype=policy)(x)
            width = layer.width
        elif layer.kind == "pool":
            x = L.MaxPooling2D(2, name=name("pool"), dtype=policy)(x)
        elif layer.kind == "drop":
            x = L.Dropout(layer.rate, name=name("drop"), dtype=policy)(x)
        elif layer.kind == "gap":
            x = L.GlobalAveragePooling2D(name=name("gap"), dtype=policy)(x)
        elif layer.kind == "gmp":
            x = L.GlobalMaxPooling2D(name=name("gmp"), dtype=policy)(x)
    if not spec.global_pool:
        x = L.Flatten(name=name("flatten"), dtype=policy)(x)
    for layer in spec.dense:
        if layer.kind == "dense":
            x = L.Dense(layer.width, use_bias=not layer.bn, kernel_regularizer=reg, name=name("dense"),
                        dtype=policy)(x)
            if layer.bn:
                x = L.BatchNormalization(name=name("bn"), dtype=policy)(x)
            x = L.ReLU(name=name("relu"), dtype=policy)(x)
        elif layer.kind == "drop":
            x = L.Dropout(layer.rate, name=name("drop"), dtype=policy)(x)
    # The classifier and softmax stay float32 under mixed precision (numerical stability).
    x = L.Dense(num_classes, kernel_regularizer=reg, name="logits", dtype=policy)(x)
    outputs = L.Activation("softmax", name=OUTPUT_NAME, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="core")


def whiten_first_conv(core, images, eps: float = 5e-4, max_images: int = 2000) -> int:
    """Set the first convolution to the images' patch PCA, whitened, and freeze it (Page; airbench).

    Each of the top principal components ``v`` (eigenvalue ``l``) of the convolution's input patches,
    taken from up to ``max_images`` of ``images`` (uint8 or float, 0-255), gives two filters,
    ``v / sqrt(l + eps)`` and its negative, so the ReLU behind keeps both signs. Filters beyond twice
    the patch size keep their random initialisation (frozen too). Returns the number of components used.
    """
    import numpy as np

    conv = next((layer for layer in core.layers if layer.__class__.__name__ == "Conv2D"), None)
    if conv is None:
        raise EdgeCNNError("--whiten needs a convolution in the architecture")
    kh, kw, c, filters = conv.kernel.shape
    x = np.asarray(images[:max_images], dtype=np.float32) / 255.0
    dims = kh * kw * c
    total, mean, n = np.zeros((dims, dims), np.float64), np.zeros(dims, np.float64), 0
    for chunk in np.array_split(x, max(1, len(x) // 250)):
        # (N, H', W', C, kh, kw) -> (patches, kh*kw*C), in the kernel's (kh, kw, C) order
        p = np.lib.stride_tricks.sliding_window_view(chunk, (kh, kw), axis=(1, 2))
        p = p.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims).astype(np.float64)
        total += p.T @ p
        mean += p.sum(0)
        n += len(p)
    mean /= n
    cov = total / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)  # ascending
    k = min(dims, (filters + 1) // 2)
    values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    w = vectors / np.sqrt(values + eps)
    new = np.concatenate([w, -w], axis=1)[:, :filters].reshape(kh, kw, c, -1)
    kernel = conv.kernel.numpy()
    kernel[..., : new.shape[-1]] = new
    conv.kernel.assign(kernel)
    conv.trainable = False
    return k


def build_train_model(core, augment_names: tuple[str, ...], seed: int = 0, translate: float = TRANSLATE,
                      teacher=None, translate_fill: str = TRANSLATE_FILL):
    """``Sequential([augment, core])``: augmentation runs on the device, inside the graph.

    ``teacher``: a trained model that sees the same augmented batch; the model then outputs the core's
    and the teacher's probabilities side by side (``edgecnn.distill``).
    """
    from edgecnn._tf import keras

    if not augment_names and teacher is None:
        return core
    inputs = keras.Input(core.input_shape[1:], name=INPUT_NAME)
    images = build_augment(augment_names, core.input_shape[1:], seed, translate=translate,
                           translate_fill=translate_fill)(inputs) \
        if augment_names else inputs
    outputs = core(images)
    if teacher is not None:
        from edgecnn.distill import classes

        frozen = classes(keras)[0](teacher, name="teacher", dtype="float32")
        outputs = keras.layers.Concatenate(name="with_teacher", dtype="float32")([outputs, frozen(images)])
    return keras.Model(inputs, outputs, name="train_model")


def _producer(layer):
    """The layer whose output is ``layer``'s only input, or None."""
    inputs = layer.input if len(layer._inbound_nodes) == 1 else None
    history = getattr(inputs, "_keras_history", None)
    return history.operation if history is not None else None


def with_flip_tta(core):
    """``core`` with test-time flip augmentation inside: each image is classified as it is and mirrored
    left-right, and the two softmax outputs are averaged (what ``edgecnn evaluate --tta`` scores).

    The mirrored copy joins the batch (CONCATENATION, REVERSE_V2, then a MEAN over the pair), so the
    weights are stored once: the file barely grows, while latency and activation memory double.
    """
    from edgecnn._tf import keras

    ops = keras.ops
    image = keras.Input(core.input_shape[1:], name=INPUT_NAME)
    probs = core(ops.concatenate([image, ops.flip(image, axis=2)], axis=0))
    mean = ops.mean(ops.reshape(probs, (2, -1, probs.shape[-1])), axis=0)
    return keras.Model(image, mean, name=f"{core.name}_flip_tta")


def flip_tta_predict(core, x, batch_size: int = 256):
    """Softmax outputs of ``core`` averaged over ``x`` and ``x`` mirrored left-right (NHWC images)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    return (core.predict(x, batch_size=batch_size, verbose=0)
            + core.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)) / 2


def fold_pooled_batchnorm(core):
    """Fold each Conv2D -> MaxPooling2D -> BatchNormalization chain into Conv2D -> MaxPooling2D.

    Max-pooling commutes with a per-channel map ``a*x + b`` when ``a >= 0``, so BatchNorm moves into the
    convolution's kernel and bias, where a converter would fold it had the pooling not stood between
    them (TFLite would otherwise keep it as MUL and ADD, quantized per tensor in int8). Returns ``core``
    itself when there is nothing to fold; chains with a negative BN scale are left as they are.
    """
    import numpy as np

    from edgecnn._tf import keras

    L = keras.layers
    chains = {}  # conv name -> (its BN's name, per-channel scale a, shift b)
    for bn in core.layers:
        if not isinstance(bn, L.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        pool = _producer(bn)
        conv = _producer(pool) if isinstance(pool, L.MaxPooling2D) else None
        if not isinstance(conv, L.Conv2D) or conv.activation is not keras.activations.linear:
            continue
        if len(conv._outbound_nodes) != 1 or len(pool._outbound_nodes) != 1:
            continue
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        a = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        if np.any(a < 0):
            continue
        chains[conv.name] = (bn.name, a, beta - bn.moving_mean.numpy() * a)
    if not chains:
        return core
    folded_bn = {name for name, _, _ in chains.values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in chains:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):  # a folded BN passes its input through and leaves the graph
        return args[0] if layer.name in folded_bn else layer(*args, **kwargs)

    folded = keras.models.clone_model(core, clone_function=clone, call_function=call)
    for layer in folded.layers:
        old = core.get_layer(layer.name)
        if layer.name in chains:
            _, a, b = chains[layer.name]
            bias = old.bias.numpy() if old.use_bias else 0.0
            layer.set_weights([old.kernel.numpy() * a, bias * a + b])
        else:
            layer.set_weights(old.get_weights())
    return folded


SE_REDUCTION = 8  # squeeze-and-excitation: channels in its bottleneck = block width / 8


def _squeeze_excite(L, y, width: int, name, conv_kw):
    """Scale ``y``'s channels by sigmoid(Conv1x1(ReLU(Conv1x1(GAP(y))))) (Hu et al.)."""
    policy = conv_kw["dtype"]
    s = L.GlobalAveragePooling2D(keepdims=True, name=name("squeeze"), dtype=policy)(y)
    s = L.Conv2D(max(1, width // SE_REDUCTION), 1, name=name("conv"), **conv_kw)(s)
    s = L.ReLU(name=name("relu"), dtype=policy)(s)
    s = L.Conv2D(width, 1, name=name("conv"), **conv_kw)(s)
    s = L.Activation("sigmoid", name=name("gate"), dtype=policy)(s)
    return L.Multiply(name=name("excite"), dtype=policy)([y, s])


class _FusedLayers:
    """``keras.layers`` with BatchNormalization swapped for ``fused``."""

    def __init__(self, layers, fused):
        self._layers, self.BatchNormalization = layers, fused

    def __getattr__(self, name):
        return getattr(self._layers, name)


def fused_batchnorms(core) -> int:
    """How many of ``core``'s layers are BatchNorms that train with the fused kernel (``fused_batchnorm_class``)."""
    fused = fused_batchnorm_class(_keras())
    return sum(isinstance(layer, fused) for layer in core.layers)


def to_deployable(core, spec: Spec | str, num_classes: int):
    """``core`` as it is saved and exported: float32, stock Keras layers. Rebuilt, weights copied, when it
    trained under mixed precision or with fused BatchNorm (``build_core(fused_batchnorm=True)``)."""
    if not fused_batchnorms(core) and all(layer.compute_dtype == "float32" for layer in core.layers):
        return core
    clean = build_core(spec, tuple(core.input_shape[1:]), num_classes, "float32")
    clean.set_weights([w.astype("float32") for w in core.get_weights()])
    for new, old in zip(clean.layers, core.layers):
        new.trainable = old.trainable  # --whiten's frozen convolution stays frozen
    return clean


def batchnorm_momentum(steps_per_epoch: int) -> float:
    """BatchNorm moving-average momentum for epochs of ``steps_per_epoch`` steps.

    Keras's 0.99 averages over about 100 steps; on a small dataset that is many epochs, so the
    statistics used for validation (and the saved model) still hold much of their initial 0 and 1.
    The momentum is lowered so that the average spans at most half an epoch; 200 steps per epoch
    and more keep 0.99.
    """
    return min(BN_MOMENTUM, max(0.0, 1.0 - 2.0 / max(1, steps_per_epoch)))


def set_batchnorm_momentum(core, momentum: float) -> int:
    """Set every BatchNormalization layer's momentum (before training); returns how many there are."""
    bns = _batchnorms(core)
    for bn in bns:
        bn.momentum = float(momentum)
    return len(bns)


def recalibrate_batchnorm(core, images, batch_size: int, seed: int = 0, limit: int = RECALIBRATION_IMAGES,
                          batchnorms=None) -> int:
    """Set each BatchNorm's moving mean and variance to their averages over batches of training images.

    The batches (``batch_size`` images, shuffled with ``seed``, at most ``limit`` images) run through
    ``core`` in training mode, as in training, so every BatchNorm sees the statistics its input had
    there; the average is what a converged moving average would hold ("precise BN"). For runs whose
    short epochs gave the moving averages few steps, or whose averages were gathered on augmented
    images. ``batchnorms``: the layers to set, where ``core`` is not a Keras 3 model (a tf_keras QAT
    model's wrapped BatchNorms); every other non-trainable variable of ``core`` (a QAT model's
    quantizer ranges, which training mode moves) is restored afterwards. Returns the number of images
    used (0: no BN).
    """
    import numpy as np
    import tensorflow as tf  # already imported, quietly, by whoever built core (edgecnn._tf or the tfmot worker)

    bns = _batchnorms(core) if batchnorms is None else list(batchnorms)
    if not bns or not len(images):
        return 0
    order = np.random.default_rng(seed).permutation(len(images))[:limit]
    batch = max(1, min(batch_size, len(order)))
    full = len(order) - len(order) % batch  # equal batches: a small remainder would give a noisy variance
    moving = {id(v) for bn in bns for v in (bn.moving_mean, bn.moving_variance)}
    others = [(v, v.numpy()) for v in core.non_trainable_variables if id(v) not in moving]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # each step leaves exactly its batch's statistics in the moving variables
    step = tf.function(lambda x: core(x, training=True))
    sums = [[0.0, 0.0] for _ in bns]
    try:
        for start in range(0, full, batch):
            step(tf.constant(images[order[start:start + batch]], tf.float32))
            for total, bn in zip(sums, bns):
                total[0] = total[0] + bn.moving_mean.numpy()
                total[1] = total[1] + bn.moving_variance.numpy()
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for v, value in others:
            v.assign(value)
    batches = full // batch
    for (mean, var), bn in zip(sums, bns):
        bn.moving_mean.assign(mean / batches)
        bn.moving_variance.assign(var / batches)
    return full


def layers_without_xla(model) -> list[str]:
    """Class names of the layers (nested ones included) that Keras will not compile with XLA."""
    def walk(layer):
        yield layer
        for sub in getattr(layer, "layers", []):
            yield from walk(sub)

    return sorted({type(layer).__name__ for layer in walk(model) if not getattr(layer, "supports_jit", True)})


def _batchnorms(core) -> list:
    from edgecnn._tf import keras

    return [layer for layer in core.layers if isinstance(layer, keras.layers.BatchNormalization)]


def count_macs(core) -> int:
    """Multiply-accumulates per image for convolutions and Dense layers (what dominates the cost), nested
    models included."""
    from edgecnn._tf import keras

    L = keras.layers
    total = 0
    for layer in core.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
        elif isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)):
            # Conv2D (kh, kw, cin / groups, cout) and depthwise (kh, kw, cin, multiplier) kernels: one MAC per
            # kernel weight per output position; separable adds its 1x1 pointwise kernel.
            kernels = ([layer.depthwise_kernel, layer.pointwise_kernel] if isinstance(layer, L.SeparableConv2D)
                       else [layer.kernel])
            positions = int(layer.output.shape[1]) * int(layer.output.shape[2])
            total += positions * sum(math.prod(int(d) for d in k.shape) for k in kernels)
        elif isinstance(layer, L.Dense):
            total += math.prod(int(d) for d in layer.kernel.shape)
    return total


def summary_text(core) -> str:
    """The layer table with parameter counts, plus MACs per image."""
    lines: list[str] = []
    core.summary(print_fn=lambda s, **_: lines.append(s), line_length=90)
    lines.append(f" MACs per image: {count_macs(core):,}")
    return "\n".join(lines)


def load_keras(path) -> object:
    """Load a ``.keras`` file with ``safe_mode=True``; one clear line for anything else."""
    import zipfile
    from pathlib import Path

    from edgecnn._tf import keras

    path = Path(path)
    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    if path.suffix != ".keras":
        raise EdgeCNNError(f"{path}: expected a .keras model file")
    if not zipfile.is_zipfile(path):
        raise EdgeCNNError(f"{path}: not a Keras model file (corrupt or not a .keras zip)")
    try:
        with zipfile.ZipFile(path) as zf:
            cfg = zf.read("config.json").decode("utf-8", "replace")
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise EdgeCNNError(f"{path}: not a Keras model file ({exc})") from None
    if '"class_name": "Lambda"' in cfg:
        raise lambda_refused(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, TypeError, OSError... on bad files
        raise EdgeCNNError(f"{path}: cannot load Keras model ({first_line(exc)})") from None
