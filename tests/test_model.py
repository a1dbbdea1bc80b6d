import numpy as np
import pytest

from edgecnn import model
from edgecnn.errors import EdgeCNNError


@pytest.mark.parametrize("arch, params, macs", [
    ("mlp", 312_860, 312_700),
    ("basic", 319_178, 8_225_408),
    ("regularized", 289_642, 38_634_752),
    ("resnet8", 78_426, 12_501_632),
    ("cifar10", 335_386, 22_340_704),
])
def test_presets_have_the_published_sizes(arch, params, macs):
    core = model.build_core(arch, (32, 32, 3), 10)
    assert core.count_params() == params and model.count_macs(core) == macs


def test_core_scales_raw_pixels_and_outputs_probabilities():
    core = model.build_core("C: 4n gap", (16, 16, 3), 3)
    assert core.layers[1].name == "rescale"
    x = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype("float32")
    p = core.predict(x, verbose=0)
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_augmentation_stays_out_of_the_core():
    core = model.build_core("C: 4 gap", (16, 16, 3), 3)
    train_model = model.build_train_model(core, model.parse_augment("full"))
    kinds = {type(layer).__name__ for layer in train_model.get_layer("augment").layers}
    assert kinds == {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast"}
    assert not any(type(layer).__name__.startswith("Random") for layer in core.layers)
    x = np.full((2, 16, 16, 3), 100, "float32")
    assert np.allclose(train_model(x, training=False), core(x, training=False))  # identity at inference


def test_translate_shifts_whole_pixels_without_blurring():
    """Every pixel of a translated image is a pixel of the original (a padded crop, not a resample)."""
    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
    y = np.asarray(model.build_augment(("translate",), (16, 16, 3), seed=3)(x, training=True))
    assert not np.array_equal(x, y)  # it moved
    for src, out in zip(x, y):
        assert np.isin(out, src).all()


@pytest.mark.parametrize("fill", ["nearest", "mirror"])  # Keras's RandomTranslation; edgecnn's PaddedCrop
@pytest.mark.parametrize("translate, largest", [(2 / 16, 2), (4 / 16, 4)])
def test_translate_moves_at_most_its_fraction_of_the_side(translate, largest, fill):
    """Pixel values encode their position, so the centre pixel tells each image's shift: every whole-pixel
    shift up to the bound occurs on each axis, none past it."""
    pos = np.arange(16 * 16, dtype="float32").reshape(1, 16, 16, 1)
    x = np.repeat(np.repeat(pos, 400, axis=0), 3, axis=-1)
    y = np.asarray(model.build_augment(("translate",), (16, 16, 3), seed=0, translate=translate,
                                       translate_fill=fill)(x, training=True))
    centre = y[:, 8, 8, 0].astype(int)
    for shift in (8 - centre // 16, 8 - centre % 16):
        assert set(shift) == set(range(-largest, largest + 1))


# numpy's names for what each --translate-fill puts where a shift uncovers the edge
NUMPY_PAD = {"nearest": "edge", "reflect": "symmetric", "mirror": "reflect", "constant": "constant"}


@pytest.mark.parametrize("fill", model.TRANSLATE_FILLS)
def test_translate_fills_the_uncovered_edge_as_its_fill_names(fill):
    """Each translated image is a crop of the original padded the named way (numpy's pad), and of no
    other fill's padding: the edge is the edge pixels repeated, the image mirrored with or about its edge
    pixels, or black."""
    x = np.random.default_rng(1).integers(1, 256, (32, 8, 8, 1)).astype("float32")
    y = np.asarray(model.build_augment(("translate",), (8, 8, 1), seed=2, translate=2 / 8,
                                       translate_fill=fill)(x, training=True))

    def crops(img, mode):
        padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode=mode)
        return [padded[r:r + 8, c:c + 8] for r in range(5) for c in range(5)]

    for name, mode in NUMPY_PAD.items():
        matched = [any(np.array_equal(out, c) for c in crops(src, mode)) for src, out in zip(x, y)]
        if name == fill:
            assert all(matched)
        else:
            assert not all(matched)  # some shifted image tells the fills apart
    assert not np.array_equal(x, y)


def test_cutout_greys_one_square_per_image_and_is_off_at_inference():
    """16x16 images: a 4x4 square (a quarter of the side) centred anywhere, clipped at the borders."""
    x = np.random.default_rng(0).integers(0, 100, (256, 16, 16, 3)).astype("float32")
    aug = model.build_augment(("cutout",), (16, 16, 3), seed=1)
    y = np.asarray(aug(x, training=True))
    grey = (y == model.CUTOUT_FILL).all(-1)
    np.testing.assert_array_equal(y[~grey], x[~grey])  # nothing else changes
    for mask in grey:
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        # one solid rectangle of at most 4x4, at least 2x2 (the centre is always inside the image)
        assert mask.sum() == len(rows) * len(cols) and 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
    centres = np.array([np.argwhere(m).mean(0) for m in grey])
    assert (grey.sum((1, 2)) == 16).mean() > 0.5  # mostly whole squares
    assert abs(np.corrcoef(centres.T)[0, 1]) < 0.3  # rows and columns drawn independently
    assert centres.min() < 3 and centres.max() > 12  # anywhere, edges included
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)


def test_altflip_mirrors_each_image_in_every_other_epoch_from_a_random_start():
    x = np.random.default_rng(0).integers(0, 256, (400, 16, 16, 3)).astype("float32")
    mirrored = x[:, :, ::-1]

    def flipped(aug, epoch):
        aug.get_layer("altflip").epoch.assign(epoch)
        y = np.asarray(aug(x, training=True))
        is_mirror = (y == mirrored).all((1, 2, 3))
        assert (is_mirror | (y == x).all((1, 2, 3))).all()  # each image whole, either way round
        return is_mirror

    aug = model.build_augment(("altflip",), (16, 16, 3), seed=0)
    first = flipped(aug, 0)
    assert 0.4 < first.mean() < 0.6  # a random half in the first epoch
    assert (flipped(aug, 1) == ~first).all() and (flipped(aug, 2) == first).all() and (flipped(aug, 7) == ~first).all()
    other_seed = flipped(model.build_augment(("altflip",), (16, 16, 3), seed=1), 0)
    assert 0.3 < (other_seed != first).mean() < 0.7  # another seed, another half
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)


def test_altflip_epoch_follows_fit():
    from edgecnn._tf import keras

    core = model.build_core("C: 4n gap", (8, 8, 3), 2)
    train_model = model.build_train_model(core, ("altflip",))
    train_model.compile(optimizer="adam", loss="categorical_crossentropy")
    layer = train_model.get_layer("augment").get_layer("altflip")
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(int(layer.epoch.numpy())))
    x, y = np.zeros((8, 8, 8, 3), "float32"), np.eye(2, dtype="float32")[[0, 1] * 4]
    train_model.fit(x, y, epochs=4, initial_epoch=1, verbose=0,
                    callbacks=[model.set_flip_epochs(train_model), record])
    assert seen == [1, 2, 3]
    assert model.set_flip_epochs(model.build_train_model(core, ("flip",))) is None
    assert model.set_flip_epochs(core) is None


def test_whiten_sets_the_first_convolution_to_decorrelated_unit_variance_filters_and_freezes_it():
    from edgecnn._tf import keras

    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, (300, 16, 16, 1))
    x = (0.7 * grey + 0.3 * rng.uniform(0, 255, (300, 16, 16, 3))).astype("uint8")  # colours correlated
    core = model.build_core("C: 8n gap", (16, 16, 3), 3)
    assert model.whiten_first_conv(core, x) == 4
    conv = core.get_layer("conv1")
    assert not conv.trainable and all(w is not conv.kernel for w in core.trainable_weights)
    out = keras.Model(core.input, conv.output).predict(x.astype("float32"), verbose=0)
    inner = out[:, 1:-1, 1:-1].reshape(-1, 8)  # whole 3x3 patches only ("same" padding pads the border)
    cov = np.cov(inner[:, :4].T)
    np.testing.assert_allclose(cov, np.eye(4), atol=0.02)  # whitened: uncorrelated, unit variance
    np.testing.assert_allclose(inner[:, 4:], -inner[:, :4], atol=1e-4)  # and their negatives
    # The components are the largest: any other unit-norm filter has less variance before whitening.
    w = conv.kernel.numpy().reshape(27, 8)[:, :4]
    assert np.all(np.diff(1 / np.linalg.norm(w, axis=0) ** 2) <= 1e-6)  # eigenvalues in decreasing order
    with pytest.raises(EdgeCNNError, match="--whiten"):
        model.whiten_first_conv(model.build_core("D: 8", (16, 16, 3), 3), x)


def _randomize_batchnorm(core, rng, gamma_low=0.0):
    for layer in core.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(gamma_low, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.5, 2.0, v.shape)])


@pytest.mark.parametrize("token, after_add", [("r8", "ReLU"), ("rr8", "GlobalAveragePooling2D")])
def test_residual_forms(token, after_add):
    """``r``: Conv-BN-ReLU-Conv-BN, add, ReLU. ``rr`` (Page): the branch ends in a ReLU, nothing after the add."""
    core = model.build_core(f"C: 8n {token} gap", (16, 16, 3), 4)
    add = next(layer for layer in core.layers if type(layer).__name__ == "Add")
    branch, shortcut = (t._keras_history[0] for t in add.input)
    assert type(branch).__name__ == ("ReLU" if token == "rr8" else "BatchNormalization")
    assert shortcut.name == "relu3"  # identity: the block's input
    assert type(core.layers[core.layers.index(add) + 1]).__name__ == after_add
    assert core.count_params() == model.build_core("C: 8n r8 gap", (16, 16, 3), 4).count_params()


@pytest.mark.parametrize("fused", [True, False])
def test_zero_gamma_residual_block_starts_as_its_shortcut(fused):
    """``r8z``: the branch's last BN starts with gamma 0, so the untrained block passes its input through
    (training and inference), and it has the parameters of ``r8``; the other BNs start at 1."""
    from edgecnn._tf import keras

    core = model.build_core("C: 8n r8z r16z gap", (16, 16, 3), 4, fused_batchnorm=fused)
    adds = [layer for layer in core.layers if type(layer).__name__ == "Add"]
    probe = keras.Model(core.input, [t for add in adds for t in add.input] + [add.output for add in adds])
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("float32")
    for training in (True, False):
        b1, s1, b2, s2, a1, a2 = (np.asarray(t) for t in probe(x, training=training))
        assert not b1.any() and not b2.any() and s1.any() and s2.any()
        np.testing.assert_array_equal(a1, s1)
        np.testing.assert_array_equal(a2, s2)
    gammas = [float(np.asarray(bn.gamma).max()) for bn in model._batchnorms(core)]
    assert gammas == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert core.count_params() == model.build_core("C: 8n r8 r16 gap", (16, 16, 3), 4).count_params()


def test_squeeze_excitation_scales_each_channel_of_the_branch():
    """``r16se``: the branch's BN output times a per-image, per-channel gate in (0, 1), before the add."""
    from edgecnn._tf import keras

    keras.utils.set_random_seed(0)  # initial weights independent of the tests that ran before
    core = model.build_core("C: 8n r16se gap", (16, 16, 3), 4)
    _randomize_batchnorm(core, np.random.default_rng(2))
    squeeze = core.get_layer("gate13").input._keras_history[0]  # conv <- relu <- squeeze conv
    squeeze = squeeze.input._keras_history[0].input._keras_history[0]
    squeeze.bias.assign(np.ones(squeeze.bias.shape, np.float32))  # both bottleneck units alive whatever the init
    add = next(layer for layer in core.layers if type(layer).__name__ == "Add")
    assert type(add.input[0]._keras_history[0]).__name__ == "Multiply"
    bn = [layer for layer in core.layers if type(layer).__name__ == "BatchNormalization"][-1]
    gate, excite = core.get_layer("gate13"), core.get_layer("excite14")
    probe = keras.Model(core.input, [bn.output, gate.output, excite.output])
    x = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3)).astype("float32")
    y, g, out = probe.predict(x, verbose=0)
    assert g.shape == (4, 1, 1, 16) and np.all((g >= 0) & (g <= 1)) and np.ptp(g) > 0  # float32 sigmoid may reach 1
    np.testing.assert_allclose(out, y * g, rtol=1e-5, atol=1e-6)
    # The gate's bottleneck is 16 / 8 = 2 channels: two 1x1 convolutions with biases.
    plain = model.build_core("C: 8n r16 gap", (16, 16, 3), 4).count_params()
    assert core.count_params() - plain == (16 * 2 + 2) + (2 * 16 + 16)


def test_batchnorm_behind_a_max_pool_folds_into_the_convolution():
    rng = np.random.default_rng(0)
    core = model.build_core("C: 8n 8np r8 16np gap", (16, 16, 3), 4)
    _randomize_batchnorm(core, rng)
    folded = model.fold_pooled_batchnorm(core)
    kinds = [type(layer).__name__ for layer in folded.layers]
    # The two pool-first BNs are gone; the plain 8n's and the residual block's three stay.
    assert kinds.count("BatchNormalization") == 3 and kinds.count("MaxPooling2D") == 2
    assert all(kinds[i + 1] == "ReLU" for i, k in enumerate(kinds) if k == "MaxPooling2D")
    x = rng.integers(0, 256, (16, 16, 16, 3)).astype("float32")
    assert np.abs(folded.predict(x, verbose=0) - core.predict(x, verbose=0)).max() < 1e-5
    bns = [layer for layer in core.layers if type(layer).__name__ == "BatchNormalization"]
    # Training keeps the scale of a pool-first BN >= 0, so it always folds.
    assert [layer.gamma.constraint is not None for layer in bns] == [False, True, False, False, True]


@pytest.mark.parametrize("steps, momentum", [(1, 0.0), (2, 0.0), (4, 0.5), (100, 0.98), (200, 0.99), (383, 0.99)])
def test_batchnorm_momentum_spans_at_most_half_an_epoch(steps, momentum):
    assert model.batchnorm_momentum(steps) == pytest.approx(momentum)


def test_recalibrated_batchnorm_holds_the_average_statistics_of_training_batches():
    import keras

    rng = np.random.default_rng(0)
    core = model.build_core("C: 8n 8n gap", (8, 8, 3), 3)
    images = rng.integers(0, 256, (50, 8, 8, 3)).astype("uint8")
    before = core.predict(images.astype("float32"), verbose=0)
    assert model.recalibrate_batchnorm(core, images, batch_size=16, seed=1) == 48  # 3 equal batches
    bn = core.get_layer("bn2")
    assert bn.momentum == 0.99, "the momentum is put back"
    # bn2's input is conv1's output (no BN before it): its batch statistics, averaged over the
    # same three shuffled batches, are what the moving variables now hold.
    conv = keras.Model(core.input, core.get_layer("conv1").output)
    order = np.random.default_rng(1).permutation(50)[:48]
    out = conv.predict(images[order].astype("float32"), verbose=0).reshape(3, -1, 8)
    np.testing.assert_allclose(bn.moving_mean.numpy(), out.mean(1).mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), out.var(1).mean(0), rtol=1e-3, atol=1e-4)
    assert np.abs(core.predict(images.astype("float32"), verbose=0) - before).max() > 1e-3
    assert model.recalibrate_batchnorm(model.build_core("C: 8 gap", (8, 8, 3), 3), images, 16) == 0
    # Given layers (a QAT model's wrapped BatchNorms), only those are set; every other non-trainable
    # variable, which training mode moves (here bn5's averages, in QAT the quantizer ranges), is put back.
    again = model.build_core("C: 8n 8n gap", (8, 8, 3), 3)
    again.set_weights(core.get_weights())
    again.get_layer("bn2").moving_mean.assign(np.zeros(8))
    kept = [v.numpy() for v in again.get_layer("bn5").non_trainable_variables]
    assert model.recalibrate_batchnorm(again, images, 16, 1, batchnorms=[again.get_layer("bn2")]) == 48
    np.testing.assert_allclose(again.get_layer("bn2").moving_mean.numpy(), out.mean(1).mean(0), rtol=1e-4, atol=1e-4)
    for v, value in zip(again.get_layer("bn5").non_trainable_variables, kept):
        np.testing.assert_array_equal(v.numpy(), value)


def test_batchnorm_with_a_negative_scale_is_not_folded():
    rng = np.random.default_rng(1)
    core = model.build_core("C: 8np gap", (16, 16, 3), 4)
    _randomize_batchnorm(core, rng, gamma_low=-1.0)  # set_weights bypasses the constraint
    assert model.fold_pooled_batchnorm(core) is core
    plain = model.build_core("C: 8n p gap", (16, 16, 3), 4)  # BN before the pool: nothing to fold
    assert model.fold_pooled_batchnorm(plain) is plain


def test_parse_augment():
    assert model.parse_augment("none") == ()
    assert model.parse_augment("flip,zoom") == ("flip", "zoom")
    with pytest.raises(EdgeCNNError, match="--augment"):
        model.parse_augment("flip,wobble")
    with pytest.raises(EdgeCNNError, match="--augment 'flip,altflip': flip and altflip"):
        model.parse_augment("flip,altflip")


def test_mixed_precision_core_is_rebuilt_in_float32():
    core = model.build_core("C: 4n 8n gap | D: 8", (16, 16, 3), 3, "mixed_float16")
    assert core.get_layer("conv1").compute_dtype == "float16"
    clean = model.to_deployable(core, "C: 4n 8n gap | D: 8", 3)
    assert all(w.dtype == "float32" for w in clean.weights)
    assert clean.get_layer("conv1").compute_dtype == "float32"
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("float32")
    assert np.abs(clean.predict(x, verbose=0) - core.predict(x, verbose=0)).max() < 1e-2


def test_fused_batchnorm_trains_as_keras_batchnorm_and_is_saved_as_it():
    """The fused kernel's training step equals Keras's own BatchNorm: outputs, gradients, moving statistics
    (Keras's biased variance), a pooled BN's NonNeg constraint; the deployable copy holds stock layers."""
    import keras
    import tensorflow as tf

    arch = "C: 8n 8np r8 gap | D: 8n"  # conv BN, BN behind a pool (gamma >= 0), residual BNs, a Dense BN
    stock = model.build_core(arch, (16, 16, 3), 3)
    fused = model.build_core(arch, (16, 16, 3), 3, fused_batchnorm=True)
    assert model.fused_batchnorms(fused) == 5 and model.fused_batchnorms(stock) == 0  # the Dense BN too
    fused.set_weights(stock.get_weights())
    model.set_batchnorm_momentum(stock, 0.5)
    model.set_batchnorm_momentum(fused, 0.5)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (32, 16, 16, 3)).astype("float32"))
    y = tf.constant(np.eye(3, dtype="float32")[rng.integers(0, 3, 32)])
    grads = {}
    for name, core in (("stock", stock), ("fused", fused)):
        with tf.GradientTape() as tape:
            probs = core(x, training=True)
            loss = keras.losses.categorical_crossentropy(y, probs)
        grads[name] = [g.numpy() for g in tape.gradient(loss, core.trainable_variables)]
        grads[name + " probs"] = probs.numpy()
    assert np.abs(grads["stock probs"] - grads["fused probs"]).max() < 1e-5
    for a, b in zip(grads["stock"], grads["fused"]):
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())
    for a, b in zip(stock.weights, fused.weights):  # moving means and variances after one step
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6), a.path
    fused_constraints = [type(bn.gamma_constraint).__name__ for bn in fused.layers if "Fused" in type(bn).__name__]
    stock_constraints = [type(bn.gamma_constraint).__name__ for bn in stock.layers
                         if isinstance(bn, keras.layers.BatchNormalization)]
    assert fused_constraints == stock_constraints

    deploy = model.to_deployable(fused, arch, 3)
    assert deploy is not fused and model.fused_batchnorms(deploy) == 0
    assert np.abs(deploy.predict(x, verbose=0) - fused.predict(x, verbose=0)).max() < 1e-6
    assert model.to_deployable(stock, arch, 3) is stock, "a stock float32 model is kept as it is"


def test_fused_batchnorm_under_mixed_bfloat16_keeps_float32_statistics():
    """16-bit activations go into the fused kernel as they are: a training step's outputs and moving statistics
    stay within bfloat16 rounding of Keras's layer (which computes in float32), and the statistics stay float32."""
    import tensorflow as tf

    arch = "C: 8n r8 gap"
    stock = model.build_core(arch, (16, 16, 3), 3, "mixed_bfloat16")
    fused = model.build_core(arch, (16, 16, 3), 3, "mixed_bfloat16", fused_batchnorm=True)
    fused.set_weights(stock.get_weights())
    model.set_batchnorm_momentum(stock, 0.5)
    model.set_batchnorm_momentum(fused, 0.5)
    x = tf.constant(np.random.default_rng(1).integers(0, 256, (32, 16, 16, 3)).astype("float32"))
    a, b = stock(x, training=True).numpy(), fused(x, training=True).numpy()
    assert np.abs(a - b).max() < 2e-2
    assert model.fused_batchnorms(fused) == 3
    assert all(layer.moving_variance.dtype == "float32" for layer in fused.layers if hasattr(layer, "moving_variance"))
    for s, f in zip(stock.weights, fused.weights):
        assert np.allclose(s.numpy(), f.numpy(), rtol=2e-2, atol=2e-2), s.path
    assert not np.allclose(fused.get_layer("bn2").moving_mean.numpy(), 0.0), "the step moved the statistics"


def test_macs_count_depthwise_separable_and_nested_layers():
    """Models imported from elsewhere (MobileNet-like) are counted too: 8x8x3 input."""
    import keras

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)  # 8*8 * 3*3*3*2 = 3456
    x = L.SeparableConv2D(4, 3)(x)  # 6*6 * (3*3*6 + 6*4) = 2808
    x = keras.Sequential([L.Conv2D(2, 1)])(x)  # nested: 6*6 * 4*2 = 288
    out = L.Dense(3)(L.GlobalAveragePooling2D()(x))  # 2*3 = 6
    assert model.count_macs(keras.Model(inp, out)) == 3456 + 2808 + 288 + 6


def test_too_many_pools_for_the_image():
    with pytest.raises(EdgeCNNError, match="at most 3"):
        model.build_core("C: 4 8 16 32", (8, 8, 3), 2)


def test_load_keras_refuses_lambda_and_garbage(tmp_path):
    from edgecnn._tf import keras

    inp = keras.Input((4, 4, 1))
    m = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    path = tmp_path / "lambda.keras"
    m.save(path)
    with pytest.raises(EdgeCNNError, match="Lambda"):
        model.load_keras(path)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(EdgeCNNError, match="bad.keras"):
        model.load_keras(bad)
    with pytest.raises(EdgeCNNError, match="not found"):
        model.load_keras(tmp_path / "absent.keras")
