"""edgecnn import: a Keras model trained elsewhere becomes a run that export, benchmark and predict take."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import run_main
from edgecnn.errors import EdgeCNNError

# Three classes told apart by brightness alone, so a hand-set model's answer depends on the input range
# it was made for: it takes 0..1 and picks the nearest of three brightness centres (logits
# 2*c*m - c^2, m the mean pixel). Fed 0..255 it answers "bright" always (1/3 right); fed -1..1, 2/3.
CLASSES = ("bright", "dark", "mid")  # sorted, as Keras' image_dataset_from_directory orders them
CENTRES = (0.85, 0.15, 0.5)


def brightness_folder(root, per_class=12, size=16):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name, c in zip(CLASSES, CENTRES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(c * 255 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


def foreign_model(path, centres=CENTRES, size=16, mixed=False, extra=None):
    """A Keras model as a notebook would save it: augmentation inside, 0..1 input, logits out."""
    import keras

    L = keras.layers
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        inp = keras.Input((size, size, 3))
        x = keras.Sequential([L.RandomFlip("horizontal", name="flip"), L.RandomTranslation(0.1, 0.1, name="shift")],
                             name="augment")(inp)
        x = L.GaussianNoise(0.01, name="noise")(x)
        if extra is not None:
            x = extra(x)
        x = L.GlobalAveragePooling2D()(x)
        x = L.Dense(1, use_bias=False, name="mean")(x)  # mean over channels
        out = L.Dense(len(centres), name="logits", dtype="float32")(x)
        model = keras.Model(inp, out)
    finally:
        keras.config.set_dtype_policy("float32")
    model.get_layer("mean").set_weights([np.full((3, 1), 1 / 3, np.float32)])
    c = np.asarray(centres, np.float32)
    model.get_layer("logits").set_weights([2 * c[None, :], -c ** 2])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return brightness_folder(tmp_path_factory.mktemp("brightness"))


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    from edgecnn.importer import ImportConfig, import_model

    tmp = tmp_path_factory.mktemp("imported")
    path = foreign_model(tmp / "notebook.keras", mixed=True)
    lines = []
    run = import_model(ImportConfig(model=str(path), data=str(folder), runs_dir=str(tmp / "runs"), name="nb"),
                       log=lines.append)
    return run, path, "\n".join(lines)


def test_import_finds_the_input_range_and_makes_the_model_deployable(imported, folder):
    import keras

    from edgecnn.model import load_keras

    run, path, log = imported
    cfg = json.loads((run / "config.json").read_text())["imported"]
    assert cfg["input_range"] == "0..1"
    acc = cfg["input_range_accuracy"]
    assert list(acc) == ["0..255", "0..1", "-1..1", "torch", "caffe"]
    assert (acc["0..255"], acc["0..1"], acc["-1..1"]) == (pytest.approx(1 / 3, abs=1e-4), 1.0,
                                                          pytest.approx(2 / 3, abs=1e-4))
    assert cfg["augmentation_removed"] == ["flip (RandomFlip)", "shift (RandomTranslation)", "noise (GaussianNoise)"]
    assert cfg["mixed_precision_layers"] > 0 and cfg["softmax_added"] is True
    assert "input range: 0..1" in log and "Softmax was added" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == 1.0 and metrics["test_images"] == 18
    assert json.loads((run / "labels.json").read_text())["class_names"] == list(CLASSES)
    # model.keras takes raw 0..255 pixels, runs in float32 and gives the softmax of the original's logits.
    core = load_keras(run / "model.keras")
    assert all(layer.dtype_policy.name == "float32" for layer in core._flatten_layers())
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    original = keras.saving.load_model(path)
    want = keras.ops.softmax(original(x / 255.0, training=False).numpy().astype(np.float32)).numpy()
    np.testing.assert_allclose(core.predict(x, verbose=0), want, atol=2e-3)  # the original computes in float16


def test_an_imported_run_exports_benchmarks_and_predicts(imported, folder, capsys):
    from edgecnn.export import ExportConfig, export
    from edgecnn.inspect import inspect

    run, _, _ = imported
    report = export(ExportConfig(run=str(run), formats="all", quantize="int8", calib_samples=20, verify_samples=18),
                    log=lambda m: None)
    assert [(e["file"], e["status"]) for e in report["exports"]] == [("model_int8.tflite", "ok"),
                                                                      ("model_int8.onnx", "ok")]
    info = inspect(run / "exports" / "model_int8.tflite")
    assert info["all_builtin"] and info["inputs"][0]["dtype"] == "uint8"  # augmentation gone: no Flex ops
    code, out, _ = run_main(capsys, "predict", str(run / "exports" / "model_int8.tflite"),
                            str(folder / "test" / "dark" / "0.png"), "--json")
    assert code == 0 and json.loads(out)["results"][0]["top"][0]["class"] == "dark"
    code, _, _ = run_main(capsys, "benchmark", str(run), "--formats", "keras,tflite-int8,onnx-int8", "--runs", "5",
                          "--warmup", "1", "--json", str(run / "b.json"))
    rows = json.loads((run / "b.json").read_text())["rows"]
    assert code == 0 and [(r["name"], r["status"], r["accuracy"]) for r in rows] == [
        ("keras", "ok", 1.0), ("tflite-int8", "ok", 1.0), ("onnx-int8", "ok", 1.0)]
    code, _, err = run_main(capsys, "finetune", str(run), "--qat")
    assert code == 2 and "was imported" in err


# A Keras 2 model as tf.keras/tf_keras saved it to HDF5 and as a SavedModel (Teachable Machine's keras_model.h5 is
# one): a functional model inside a functional one (transfer learning), a Sequential at its output, augmentation,
# BatchNorm (axis written as a list), a depthwise and a separable convolution (groups=1 written), LeakyReLU's
# Keras 2 alpha, spatial dropout, a residual Add; random weights, so that a misread setting or weight shows in the
# outputs. Made in a child: tf_keras is Keras 2, which this process must not load.
KERAS2_MODEL = textwrap.dedent("""
    import sys, numpy as np, tf_keras as K
    L, out = K.layers, sys.argv[1]
    x = inp = K.Input((16, 16, 3))  # a functional backbone, as keras.applications' models are
    for layer in (L.Rescaling(1 / 127.5, offset=-1), L.RandomFlip("horizontal"),
                  L.Conv2D(8, 3, padding="same", use_bias=False, kernel_regularizer=K.regularizers.l2(1e-4)),
                  L.BatchNormalization(), L.ReLU(6.0), L.DepthwiseConv2D(3, padding="same", use_bias=False),
                  L.BatchNormalization(), L.LeakyReLU(alpha=0.1)):
        x = layer(x)
    backbone = K.Model(inp, x, name="backbone")
    inp = K.Input((16, 16, 3))
    x = backbone(L.RandomContrast(0.2)(inp))  # augmentation in front of BatchNorm, at the top as well
    y = L.SeparableConv2D(8, 3, padding="same", activation="relu")(x)
    x = L.SpatialDropout2D(0.1)(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(L.MaxPooling2D()(x))
    head = K.Sequential([L.Dense(6, activation="relu"), L.Dropout(0.2), L.Dense(3, activation="softmax")])
    model = K.Model(inp, head(x))
    rng = np.random.default_rng(1)
    # Teachable Machine's layout: a Sequential of two Sequentials, the first holding a functional MobileNet, the
    # second starting with a Dense given its input shape.
    x = inp = K.Input((16, 16, 3))
    for layer in (L.Conv2D(8, 3, strides=2, use_bias=False), L.BatchNormalization(), L.ReLU(6.0),
                  L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization(), L.ReLU(6.0),
                  L.GlobalAveragePooling2D()):
        x = layer(x)
    teachable = K.Sequential([
        K.Sequential([K.Model(inp, x, name="mobilenet_like")], name="features"),
        K.Sequential([L.Dense(6, activation="relu", input_shape=(8,)), L.Dense(3, activation="softmax")],
                     name="head")])
    teachable.build((None, 16, 16, 3))
    for w in model.weights + teachable.weights:
        v = rng.normal(0, 0.3, w.shape)
        w.assign(np.abs(v) + 0.5 if "moving_variance" in w.name else v)
    model.save(out + "/keras2.h5")
    model.save(out + "/savedmodel", save_format="tf")  # tf.keras's default format before Keras 3
    teachable.save(out + "/teachable.h5")
    model.save_weights(out + "/weights.h5")
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    np.savez(out + "/io.npz", x=x, y=model.predict(x, verbose=0), teachable=teachable.predict(x, verbose=0))
    lam = K.Model(inp, L.Lambda(lambda t: t * 2)(inp))
    lam.save(out + "/lambda.h5")
    lam.save(out + "/lambda_savedmodel", save_format="tf")
    import tensorflow as tf
    module = tf.Module()
    module.f = tf.function(lambda x: x * 2, input_signature=[tf.TensorSpec([None, 16, 16, 3])])
    tf.saved_model.save(module, out + "/plain_savedmodel")
""")


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras2")
    done = subprocess.run([sys.executable, "-c", KERAS2_MODEL, str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_keras2_h5_file_or_saved_model_imports_with_the_outputs_of_keras2(keras2_files, folder, tmp_path, capsys):
    """Keras 3 alone refuses this file (groups, rng_type, BatchNorm's axis list); import reads it and the run's
    model gives what Keras 2 gave, and exports to int8 TFLite."""
    import keras

    from edgecnn.export import ExportConfig, export
    from edgecnn.inspect import inspect
    from edgecnn.model import load_keras

    with pytest.raises(Exception, match="groups|rng_type|axis|deserializ"):
        keras.saving.load_model(keras2_files / "keras2.h5", compile=False)
    code, out, err = run_main(capsys, "import", str(keras2_files / "keras2.h5"), "--data", str(folder),
                              "--runs-dir", str(tmp_path / "runs"), "--input-range", "0..255", "--name", "k2")
    assert code == 0, err
    run = tmp_path / "runs" / "k2"
    removed = json.loads((run / "config.json").read_text())["imported"]["keras2_settings_removed"]
    assert removed == {"DepthwiseConv2D": ["groups"], "RandomContrast": ["rng_type"], "RandomFlip": ["rng_type"],
                       "SeparableConv2D": ["groups", "kernel_constraint", "kernel_initializer", "kernel_regularizer"],
                       "SpatialDropout2D": ["noise_shape", "trainable"]}
    assert "Keras 2 model: removed settings that Keras 3 lacks and inference ignores: DepthwiseConv2D groups" in out
    io = np.load(keras2_files / "io.npz")
    np.testing.assert_allclose(load_keras(run / "model.keras").predict(io["x"], verbose=0), io["y"], atol=1e-5)
    report = export(ExportConfig(run=str(run), formats="tflite", calib_samples=20, verify_samples=18),
                    log=lambda m: None)  # float32 (checked against Keras to 1e-4) and int8
    assert [(e["file"], e["status"]) for e in report["exports"]] == [("model_float32.tflite", "ok"),
                                                                      ("model_int8.tflite", "ok")]
    info = inspect(run / "exports" / "model_int8.tflite")
    assert info["all_builtin"]  # augmentation gone: no Flex ops
    # BatchNorm in inference mode: the augmentation calls' recorded training=True must not reach it in the trace
    assert not {"VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE", "SQUARED_DIFFERENCE"} & set(info["ops"]), info["ops"]
    code, _, err = run_main(capsys, "import", str(keras2_files / "teachable.h5"), "--data", str(folder),
                            "--runs-dir", str(tmp_path / "runs"), "--input-range", "0..255", "--name", "tm")
    assert code == 0, err
    np.testing.assert_allclose(load_keras(tmp_path / "runs" / "tm" / "model.keras").predict(io["x"], verbose=0),
                               io["teachable"], atol=1e-5)
    code, out, err = run_main(capsys, "import", str(keras2_files / "savedmodel"), "--data", str(folder),
                              "--runs-dir", str(tmp_path / "runs"), "--input-range", "0..255", "--name", "sm")
    assert code == 0, err
    assert "Keras 2 model: removed settings that Keras 3 lacks and inference ignores: DepthwiseConv2D groups" in out
    np.testing.assert_allclose(load_keras(tmp_path / "runs" / "sm" / "model.keras").predict(io["x"], verbose=0),
                               io["y"], atol=1e-5)


def test_keras2_files_that_are_no_model_are_one_line(keras2_files, folder, tmp_path, capsys):
    (tmp_path / "cut.h5").write_bytes((keras2_files / "keras2.h5").read_bytes()[:3000])
    cases = [("weights.h5", "a weights-only file (model.save_weights)"), ("lambda.h5", "contains a Lambda layer"),
             (tmp_path / "cut.h5", "not a readable HDF5 file"), ("lambda_savedmodel", "contains a Lambda layer"),
             ("plain_savedmodel", "a SavedModel without Keras layers (no keras_metadata.pb")]
    for model, message in cases:
        code, _, err = run_main(capsys, "import", str(keras2_files / model), "--data", str(folder), "--runs-dir",
                                str(tmp_path / "runs"), "--input-range", "0..255")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (model, err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_import_names_classes_in_the_models_order(folder, tmp_path):
    from edgecnn.importer import ImportConfig, import_model

    order = ("dark", "mid", "bright")
    path = foreign_model(tmp_path / "m.keras", centres=(0.15, 0.5, 0.85))
    run = import_model(ImportConfig(model=str(path), data=str(folder), class_names=",".join(order),
                                    runs_dir=str(tmp_path / "runs")), log=lambda m: None)
    assert json.loads((run / "labels.json").read_text())["class_names"] == list(order)
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == 1.0


@pytest.mark.parametrize("text, key", [("0..1", "0..1"), ("0-255", "0..255"), ("-1,1", "-1..1"), ("-1-1", "-1..1"),
                                       ("0 to 1", "0..1"), ("auto", "auto")])
def test_input_range_spellings(text, key):
    from edgecnn.importer import parse_range

    assert parse_range(text) == key


def test_bad_imports_are_one_line(folder, tmp_path, capsys):
    import keras

    L = keras.layers
    wrong_order = foreign_model(tmp_path / "wrong.keras", centres=(0.15, 0.5, 0.85))  # outputs not in sorted order
    inp = keras.Input((16, 16, 3))
    two_out = keras.Model(inp, [L.Dense(3)(L.Flatten()(inp)), L.Dense(2)(L.Flatten()(inp))])
    two_out.save(tmp_path / "two.keras")
    binary = keras.Model(inp, L.Dense(1, activation="sigmoid")(L.GlobalAveragePooling2D()(inp)))
    binary.save(tmp_path / "binary.keras")
    keras.Model(inp, L.Dense(3, activation="sigmoid")(L.GlobalAveragePooling2D()(inp))).save(tmp_path / "tags.keras")
    four = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(inp)))
    four.save(tmp_path / "four.keras")
    crop = foreign_model(tmp_path / "crop.keras", extra=L.RandomCrop(12, 12))
    (tmp_path / "old.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "four.onnx").write_bytes(b"onnx")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    cases = [
        (wrong_order, [], "no better than guessing"),
        (tmp_path / "two.keras", [], "1 inputs and 2 outputs"),
        (tmp_path / "binary.keras", [], "has 1 output (a binary classifier: two classes) but"),
        (tmp_path / "four.keras", [], "4 outputs but"),
        (tmp_path / "tags.keras", [], "3 sigmoid outputs, a multi-label model"),
        (crop, [], "RandomCrop"),
        (wrong_order, ["--input-range", "0..2"], "--input-range must be"),
        (wrong_order, ["--class-names", "dark,mid"], "--class-names: 2 names"),
        (wrong_order, ["--class-names", "dark,mid,wolf"], "'bright' is not one of the model's classes"),
        (tmp_path / "none.keras", [], "model file not found"),
        (tmp_path / "old.h5", [], "old.h5: not a readable HDF5 file"),
        (tmp_path / "four.onnx", [], "expected a Keras model: a .keras file, or a Keras 2 .h5 file or SavedModel"),
        (tmp_path / "sm", [], "a SavedModel without Keras layers"),
    ]
    for model, extra, message in cases:
        code, _, err = run_main(capsys, "import", str(model), "--data", str(folder), "--runs-dir",
                                str(tmp_path / "runs"), *extra)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (model, extra, err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing half-written


def test_a_model_with_a_non_square_input_imports_at_its_height_and_width(folder, tmp_path, capsys):
    import keras

    L = keras.layers
    inp = keras.Input((12, 20, 3))
    keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(inp))).save(tmp_path / "wide.keras")
    code, _, err = run_main(capsys, "import", str(tmp_path / "wide.keras"), "--data", str(folder), "--runs-dir",
                            str(tmp_path / "runs"), "--input-range", "0..1", "--image-size", "12x21")
    assert code == 2 and "--image-size 12x21: the model takes 12x20 (height x width) images" in err
    code, _, err = run_main(capsys, "import", str(tmp_path / "wide.keras"), "--data", str(folder), "--runs-dir",
                            str(tmp_path / "runs"), "--input-range", "0..1", "--name", "wide")
    assert code == 0, err
    assert json.loads((tmp_path / "runs" / "wide" / "labels.json").read_text())["input_shape"] == [12, 20, 3]
    inp = keras.Input((None, None, 3))
    keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(inp))).save(tmp_path / "any.keras")
    code, _, err = run_main(capsys, "import", str(tmp_path / "any.keras"), "--data", str(folder), "--runs-dir",
                            str(tmp_path / "runs"), "--input-range", "0..1", "--image-size", "8x14", "--name", "any")
    assert code == 0, err
    assert json.loads((tmp_path / "runs" / "any" / "labels.json").read_text())["input_shape"] == [8, 14, 3]


def test_import_refuses_a_model_that_takes_any_size_without_image_size(folder, tmp_path):
    import keras

    from edgecnn.importer import ImportConfig, import_model

    inp = keras.Input((None, None, 3))
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inp))).save(tmp_path / "any.keras")
    with pytest.raises(EdgeCNNError, match="pass --image-size"):
        import_model(ImportConfig(model=str(tmp_path / "any.keras"), data=str(folder), runs_dir=str(tmp_path)))


def test_import_says_when_the_test_split_was_drawn_from_a_folder_without_one(folder, tmp_path):
    import shutil

    from edgecnn.importer import ImportConfig, import_model

    for name in CLASSES:  # one folder of class folders, no train/test
        shutil.copytree(folder / "train" / name, tmp_path / "flat" / name)
    lines = []
    run = import_model(ImportConfig(model=str(foreign_model(tmp_path / "m.keras")), data=str(tmp_path / "flat"),
                                    runs_dir=str(tmp_path / "runs")), log=lines.append)
    assert json.loads((run / "metrics.json").read_text())["test_split_made"] is True
    assert any(line.startswith("note: ") and "may have been trained on those images" in line for line in lines)


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_a_binary_classifier_with_one_output_unit_becomes_two_classes(folder, tmp_path, activation):
    """Keras' binary label mode: one unit, p = P(second class); a sigmoid or a logit."""
    import shutil

    import keras

    from edgecnn.export import ExportConfig, export
    from edgecnn.importer import ImportConfig, import_model
    from edgecnn.model import load_keras

    for split in ("train", "test"):
        for name in ("bright", "dark"):
            shutil.copytree(folder / split / name, tmp_path / "two" / split / name)
    inp = keras.Input((16, 16, 3))
    m = keras.layers.Dense(1, use_bias=False, name="mean")(keras.layers.GlobalAveragePooling2D()(inp))
    out = keras.layers.Dense(1, activation=activation, name="dark")(m)  # 20 * (0.5 - mean): dark is class 1
    original = keras.Model(inp, out)
    original.get_layer("mean").set_weights([np.full((3, 1), 1 / 3, np.float32)])
    original.get_layer("dark").set_weights([np.full((1, 1), -20.0, np.float32), np.full(1, 10.0, np.float32)])
    original.save(tmp_path / "binary.keras")
    lines = []
    run = import_model(ImportConfig(model=str(tmp_path / "binary.keras"), data=str(tmp_path / "two"),
                                    input_range="0..1", runs_dir=str(tmp_path / "runs")), log=lines.append)
    imported = json.loads((run / "config.json").read_text())["imported"]
    assert imported["binary_output"] == ("sigmoid" if activation else "logit")
    assert imported["softmax_added"] is (activation is None)
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == 1.0
    x = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    z = original.predict(x / 255.0, verbose=0)[:, 0]
    p = z if activation else 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(load_keras(run / "model.keras").predict(x, verbose=0), np.stack([1 - p, p], 1),
                               atol=1e-5)
    report = export(ExportConfig(run=str(run), calib_samples=16, verify_samples=12), log=lambda m: None)
    assert all(e["status"] == "ok" for e in report["exports"])


@pytest.mark.parametrize("mode", ["torch", "caffe", "tf"])
def test_imagenet_conventions_are_keras_applications_preprocess_input(mode):
    """A model fine-tuned from keras.applications with preprocess_input outside it: the deployable core's first
    layer computes exactly that from 0..255 RGB pixels."""
    import keras

    from edgecnn.importer import apply, deployable, parse_range

    key = parse_range(mode)
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    want = keras.applications.imagenet_utils.preprocess_input(x.astype(np.float32), mode=mode)
    np.testing.assert_allclose(apply(key, x), want, atol=1e-4)
    inp = keras.Input((8, 8, 3))
    classifier = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inp)))
    core = deployable(classifier, (8, 8, 3), key, softmax=True)
    probe = keras.Model(core.input, core.get_layer("input_range").output)
    np.testing.assert_allclose(probe.predict(x.astype(np.float32), verbose=0), want, atol=1e-4)


def test_import_finds_imagenet_torch_preprocessing(folder, tmp_path):
    """The brightness model fed ImageNet-normalised input: the channel mean of (x - mean) / std, an affine map
    a * c + d of the brightness c, so its centres move there; auto must find 'torch' among five conventions."""
    from edgecnn.importer import IMAGENET_MEAN, IMAGENET_STD, ImportConfig, import_model

    a, d = np.mean(1 / IMAGENET_STD), -np.mean(IMAGENET_MEAN / IMAGENET_STD)
    path = foreign_model(tmp_path / "torch.keras", centres=tuple(a * c + d for c in CENTRES))
    run = import_model(ImportConfig(model=str(path), data=str(folder), runs_dir=str(tmp_path / "runs")),
                       log=lambda m: None)
    imported = json.loads((run / "config.json").read_text())["imported"]
    assert imported["input_range"] == "torch" and imported["input_range_accuracy"]["torch"] == 1.0
    assert set(imported["input_range_accuracy"]) == {"0..255", "0..1", "-1..1", "torch", "caffe"}
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == 1.0
    from edgecnn.export import ExportConfig, export  # the fixed 1x1 convolution quantizes like any other

    report = export(ExportConfig(run=str(run), calib_samples=20, verify_samples=18), log=lambda m: None)
    assert [e["status"] for e in report["exports"]] == ["ok", "ok"]


def test_the_range_check_tool_saves_models_that_take_each_convention(tiny_run):
    """tools/check_import_ranges.py (the README's table): a model behind the undoing convolution, fed
    ``apply(key, x)``, gives the original model's answer on ``x``."""
    import importlib.util
    from pathlib import Path

    from edgecnn.importer import CONVENTIONS, apply
    from edgecnn.model import load_keras

    spec = importlib.util.spec_from_file_location(
        "check_import_ranges", Path(__file__).parent.parent / "tools" / "check_import_ranges.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    core = load_keras(tiny_run / "model.keras")
    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    want = core.predict(x.astype(np.float32), verbose=0)
    for key in CONVENTIONS:
        np.testing.assert_allclose(tool.behind(core, key).predict(apply(key, x), verbose=0), want, atol=1e-4)


@pytest.mark.slow
def test_the_keras2_import_tool_trains_imports_and_exports_a_tf_keras_resnet8():
    """tools/check_keras2_import.py (the README's table): both files import with Keras 2's own accuracy and export
    to int8; on one epoch of shapes, so only the plumbing, not the accuracy, is the point."""
    from pathlib import Path

    tool = Path(__file__).parent.parent / "tools" / "check_keras2_import.py"
    done = subprocess.run([sys.executable, str(tool), "--data", "shapes:300", "--epochs", "1", "--input-range", "0..1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| resnet8")]
    assert [r[0] for r in rows] == ["| resnet8.h5", "| resnet8_savedmodel"], done.stdout
    for _, chosen, keras2_accuracy, imported, int8 in rows:
        assert chosen == "0..1" and imported == keras2_accuracy and int8.endswith("% |"), done.stdout
