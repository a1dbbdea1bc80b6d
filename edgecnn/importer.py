"""Import a Keras model trained elsewhere as a run, so export, benchmark, evaluate and predict work on it.

The run's ``model.keras`` is the imported model made deployable the way edgecnn's own are: augmentation
layers (identity at inference, but traced as random ops that TFLite cannot convert) become Identity,
mixed-precision layers are rebuilt in float32 with their weights, a Rescaling in front takes raw 0..255
pixels to the range the model was trained on (found by scoring the data's training images under each
common range), logits get a Softmax and a binary classifier's one output unit becomes two classes. Class
names come from the data (or ``class_names``).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn import keras2, runs
from edgecnn.data import image_hw, parse_image_size, size_text
from edgecnn.errors import EdgeCNNError, first_line, short_list
from edgecnn.fsutil import sha256

# Input ranges a model may have been trained on: name -> (scale, offset) applied to 0..255 pixels.
RANGES = {"0..255": (1.0, 0.0), "0..1": (1.0 / 255.0, 0.0), "-1..1": (1.0 / 127.5, -1.0)}
# keras.applications' preprocess_input modes done outside the model (RGB only): "torch" is ImageNet's mean and
# standard deviation on 0..1, "caffe" is BGR minus ImageNet's mean on 0..255 ("tf" is -1..1).
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
CONVENTIONS = (*RANGES, "torch", "caffe")
RANGE_IMAGES = 1000  # training images scored under each range
RANGE_MARGIN = 0.05  # the best range must beat the runner-up by this much accuracy, else it is ambiguous
# Keras layers that are the identity at inference (RandomCrop is not: it centre-crops).
NOISE_LAYERS = {"AugMix", "CutMix", "MixUp", "RandAugment", "GaussianNoise", "GaussianDropout", "AlphaDropout"}


@dataclass
class ImportConfig:
    model: str
    data: str
    input_range: str = "auto"  # auto, 0..255, 0..1 or -1..1
    class_names: str | None = None  # comma list, in the model's output order (default: the data's, sorted)
    image_size: int | tuple[int, int] | None = None  # only for models whose input size is not fixed: side or (h, w)
    val_split: float = 0.1
    test_split: float = 0.1
    seed: int = 0
    skip_bad_images: bool = False
    resize: str = "squash"  # how the data's images fit the model: squash, crop the centre first, or pad
    name: str | None = None
    runs_dir: str = "runs"


def parse_range(text: str) -> str:
    """``auto`` or a CONVENTIONS key; ``0-255``, ``0,1``, ``-1:1``, ``-1 to 1`` and ``tf`` (-1..1) too."""
    t = text.strip().lower()
    if t == "auto":
        return t
    m = re.fullmatch(r"(-?\d+)\s*(?:\.\.|,|:|-|to)\s*(-?\d+)", t)
    key = f"{m.group(1)}..{m.group(2)}" if m else {"tf": "-1..1"}.get(t, t)
    if key not in CONVENTIONS:
        raise EdgeCNNError(f"--input-range must be auto, {', '.join(CONVENTIONS)}, got {text!r}")
    return key


def transform(key: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, bias) taking a pixel's 0..255 channel values ``x`` to ``x @ matrix + bias`` under ``key``."""
    if key in RANGES:
        scale, offset = RANGES[key]
        return np.eye(channels) * scale, np.full(channels, offset)
    if channels != 3:
        raise EdgeCNNError(f"--input-range {key}: ImageNet preprocessing needs RGB (3-channel) input")
    if key == "torch":
        return np.diag(1.0 / (255.0 * IMAGENET_STD)), -IMAGENET_MEAN / IMAGENET_STD
    return np.eye(3)[::-1].copy(), -CAFFE_MEAN_BGR  # caffe: channels reversed to BGR, then the mean subtracted


def is_augmentation(layer) -> bool:
    """True for Keras layers that only act in training (random augmentation, noise)."""
    name = type(layer).__name__
    module = type(layer).__module__
    if not module.startswith("keras."):
        return False
    return (name.startswith("Random") and name != "RandomCrop") or name in NOISE_LAYERS


def _float32_config(obj):
    """(config with every mixed-precision dtype policy and float16 tensor dtype made float32, how many
    layer policies changed)."""
    if isinstance(obj, list):
        parts = [_float32_config(o) for o in obj]
        return [p for p, _ in parts], sum(n for _, n in parts)
    if not isinstance(obj, dict):
        return obj, 0
    if obj.get("class_name") == "DTypePolicy" and str(obj.get("config", {}).get("name", "")).startswith("mixed_"):
        return {**obj, "config": {**obj["config"], "name": "float32"}}, 1
    out, changed = {}, 0
    for k, v in obj.items():
        if k == "dtype" and v in ("float16", "bfloat16"):
            out[k] = "float32"
        else:
            out[k], n = _float32_config(v)
            changed += n
    return out, changed


def to_float32(model):
    """(``model`` rebuilt with float32 layers and its weights, how many layers were mixed precision)."""
    from edgecnn._tf import keras

    config, changed = _float32_config(keras.saving.serialize_keras_object(model))
    if not changed:
        return model, 0
    rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
    rebuilt.set_weights(model.get_weights())
    return rebuilt, changed


def strip(model):
    """(copy of ``model`` for inference, the augmentation layers it had, now Identity).

    Layers are shared with ``model`` (same weights); nested models are walked."""
    from edgecnn._tf import keras

    removed: list[str] = []

    def clone(layer):
        if type(layer).__name__ == "RandomCrop":
            raise EdgeCNNError(f"layer {layer.name!r} (RandomCrop) crops and resizes at inference too, so it cannot "
                               "simply be removed: save the model without it")
        if is_augmentation(layer):
            removed.append(f"{layer.name} ({type(layer).__name__})")
            return keras.layers.Identity(name=layer.name)
        return layer

    try:
        stripped = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except EdgeCNNError:
        raise
    except Exception as exc:  # subclassed models, graphs Keras cannot clone
        raise EdgeCNNError(f"cannot rebuild the model for inference ({first_line(exc, 200)}); edgecnn imports "
                           "Sequential and functional Keras models") from None
    return stripped, removed


def check_io(model, image_size: int | tuple[int, int] | None, path) -> tuple[int, int, int]:
    """(height, width, channels) of the model's one image input; its one output must be (batch, classes)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgeCNNError(f"{path}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                           "edgecnn imports image classifiers with one input and one output")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise EdgeCNNError(f"{path}: input shape {shape}; expected (batch, height, width, 1 or 3) channels-last")
    out = tuple(model.outputs[0].shape)
    if len(out) != 2 or not out[1]:
        raise EdgeCNNError(f"{path}: output shape {out}; expected (batch, classes)")
    h, w = shape[1], shape[2]
    given = image_hw(image_size)
    if given is not None and any(side not in (None, want) for side, want in zip((h, w), given)):
        raise EdgeCNNError(f"--image-size {size_text(image_size)}: the model takes {h or 'any'}x{w or 'any'} "
                           "(height x width) images")
    if h is None or w is None:
        if given is None:
            raise EdgeCNNError(f"{path}: the model takes any image size; pass --image-size")
        h, w = given
    if model.inputs[0].dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise EdgeCNNError(f"{path}: input dtype {model.inputs[0].dtype}; edgecnn feeds float pixels")
    return int(h), int(w), int(shape[3])


def apply(key: str, images: np.ndarray) -> np.ndarray:
    """``images`` (uint8, NHWC) as a model trained under ``key`` takes them."""
    matrix, bias = transform(key, images.shape[-1])
    return (images.astype(np.float32) @ matrix.astype(np.float32) + bias.astype(np.float32)).astype(np.float32)


def score_ranges(model, images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Accuracy and predictions of ``model`` on ``images`` (uint8) under each input convention."""
    out = {}
    for key in CONVENTIONS if images.shape[-1] == 3 else RANGES:
        pred = model.predict(apply(key, images), batch_size=256, verbose=0).argmax(-1)
        out[key] = (float((pred == labels).mean()), pred)
    return out


def choose_range(scores: dict, labels: np.ndarray, path, data: str) -> str:
    """The range whose accuracy is clearly the best; one error line when none is, or all look like chance."""
    ranked = sorted(scores, key=lambda k: -scores[k][0])
    best, second = ranked[0], ranked[1]
    listing = ", ".join(f"{k}: {v[0] * 100:.1f}%" for k, v in scores.items())
    majority = np.bincount(labels).max() / len(labels)
    if scores[best][0] <= majority + 0.05:
        raise EdgeCNNError(f"{path} scores no better than guessing on the training images of {data} under every input "
                           f"range ({listing}): is it the model for this data, with its classes in this order "
                           "(--class-names)? --input-range imports it anyway")
    if scores[best][0] - scores[second][0] < RANGE_MARGIN and (scores[best][1] != scores[second][1]).mean() > 0.01:
        raise EdgeCNNError(f"{path}: input ranges {best} and {second} score alike on the training images of {data} "
                           f"({listing}); pass --input-range")
    return best


def is_probability(outputs: np.ndarray) -> bool:
    return bool((outputs >= -1e-6).all() and (outputs <= 1 + 1e-6).all()
                and np.abs(outputs.sum(-1) - 1).max() < 1e-3)


def final_activation(model) -> str | None:
    """The name of the activation of the layer that makes ``model``'s output (nested models followed)."""
    from edgecnn._tf import keras

    layer = model.layers[-1] if model.layers else None
    while isinstance(layer, keras.Model) and layer.layers:
        layer = layer.layers[-1]
    act = layer.get_config().get("activation") if layer is not None else None
    return act if isinstance(act, str) else None


def two_classes(model, sigmoid: bool):
    """A binary classifier's one output unit as two classes: [1 - p, p] for a sigmoid, logits [0, z] otherwise
    (their softmax is [1 - sigmoid(z), sigmoid(z)]), as Keras' binary label mode numbers the classes."""
    from edgecnn._tf import keras

    L = keras.layers
    inputs = keras.Input(model.inputs[0].shape[1:], dtype="float32")
    z = model(inputs)
    other = L.Rescaling(-1.0, 1.0, name="other_class")(z) if sigmoid else L.Rescaling(0.0, name="other_class")(z)
    return keras.Model(inputs, L.Concatenate(name="two_classes")([other, z]))


def deployable(model, input_shape, key: str, softmax: bool):
    """image (0..255 float32) -> [input transform] -> model -> [Softmax] -> probabilities, as edgecnn's own
    cores. The transform is a Rescaling for a range, a fixed 1x1 convolution for ImageNet's per-channel ones."""
    from edgecnn._tf import keras
    from edgecnn.model import INPUT_NAME, OUTPUT_NAME

    inputs = keras.Input(input_shape, name=INPUT_NAME, dtype="float32")
    x = inputs
    conv = None
    if key in RANGES and key != "0..255":
        x = keras.layers.Rescaling(*RANGES[key], name="input_range")(x)
    elif key not in RANGES:
        conv = keras.layers.Conv2D(input_shape[-1], 1, trainable=False, name="input_range")
        x = conv(x)
    # training=False is recorded in the graph: a model that Keras 3 read from a Keras 2 file keeps training=True on
    # its augmentation layers' calls, which, with no training value from outside (an export's trace), would turn
    # every later BatchNorm to training mode: batch statistics and moving-average updates in the exported file.
    x = model(x, training=False)
    x = keras.layers.Activation("softmax" if softmax else "linear", name=OUTPUT_NAME, dtype="float32")(x)
    core = keras.Model(inputs, x, name="core")
    if conv is not None:
        matrix, bias = transform(key, input_shape[-1])
        conv.set_weights([matrix.reshape(1, 1, *matrix.shape).astype(np.float32), bias.astype(np.float32)])
    return core


def import_model(cfg: ImportConfig, log=print) -> Path:
    """Make a run directory of ``cfg.model`` scored on ``cfg.data``; return its path."""
    rng_key = parse_range(cfg.input_range)
    path = Path(cfg.model)
    if path.is_dir() and (path / runs.MODEL_FILE).is_file():
        raise EdgeCNNError(f"{path} is already a run directory")
    if not path.is_file() and not keras2.is_saved_model(path):
        raise EdgeCNNError(f"model file not found: {path}")
    if path.suffix.lower() != ".keras" and not keras2.is_h5(path) and not keras2.is_saved_model(path):
        raise EdgeCNNError(f"{path}: expected a Keras model: a .keras file, or a Keras 2 .h5 file or SavedModel folder")
    run_dir = runs.allocate(cfg.runs_dir, cfg.name)  # checks --name first; removed again if the import fails
    try:
        return _import_into(run_dir, path, rng_key, cfg, log)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _import_into(run_dir: Path, path: Path, rng_key: str, cfg: ImportConfig, log) -> Path:
    from edgecnn import data as data_mod
    from edgecnn import metrics, plots
    from edgecnn import model as model_mod
    from edgecnn.evaluate import match_classes
    from edgecnn.fsutil import atomic_path, write_json, write_text
    from edgecnn.train import labels_info, versions

    repaired = None  # Keras 2 settings that Keras 3 lacks, removed from a Keras 2 file's config
    if keras2.is_saved_model(path):
        original, repaired = keras2.load_saved_model(path)
    elif keras2.is_h5(path):
        original, repaired = keras2.load(path)
    else:
        original = model_mod.load_keras(path)
    h, w, c = check_io(original, cfg.image_size, path)
    n_out = int(original.outputs[0].shape[1])
    try:
        model, rebuilt = to_float32(original)
    except Exception as exc:  # a config Keras cannot rebuild
        raise EdgeCNNError(f"{path}: cannot rebuild its mixed-precision layers in float32 "
                           f"({first_line(exc, 200)})") from None
    model, removed = strip(model)
    binary = None
    if n_out > 1 and final_activation(model) == "sigmoid":
        raise EdgeCNNError(f"{path}: {n_out} sigmoid outputs, a multi-label model; edgecnn imports single-label "
                           "classifiers (softmax or logits, or one sigmoid unit)")
    if n_out == 1:  # Dense(1, sigmoid) or one logit: Keras' binary label mode
        binary = "sigmoid" if final_activation(model) == "sigmoid" else "logit"
        model, n_out = two_classes(model, binary == "sigmoid"), 2

    ds = data_mod.load(cfg.data, image_size=(h, w), channels=c, val_split=cfg.val_split, test_split=cfg.test_split,
                       seed=cfg.seed, skip_bad_images=cfg.skip_bad_images, resize=cfg.resize)
    if cfg.class_names:
        names = [n.strip() for n in cfg.class_names.split(",")]
        if len(names) != n_out or not all(names) or len(set(names)) != len(names):
            raise EdgeCNNError(f"--class-names: {len(names)} names (unique, non-empty) for a model with "
                               f"{n_out} classes")
        ds = match_classes(ds, names, cfg.data)
    elif ds.num_classes != n_out:
        outputs = "1 output (a binary classifier: two classes)" if binary else f"{n_out} outputs"
        raise EdgeCNNError(f"{path} has {outputs} but {cfg.data} has {ds.num_classes} classes "
                           f"({short_list(ds.class_names)}); pass --class-names in the model's output order")
    if not len(ds.x_test):
        raise EdgeCNNError(f"--data {cfg.data}: no test images to score the model on")

    pick = np.random.default_rng(cfg.seed).permutation(len(ds.x_train))[:RANGE_IMAGES]
    x_pick, y_pick = ds.x_train[pick], ds.y_train[pick]
    scores = None
    if rng_key == "auto":
        scores = score_ranges(model, x_pick, y_pick)
        rng_key = choose_range(scores, y_pick, path, cfg.data)
    raw = model.predict(apply(rng_key, x_pick[:64]), verbose=0)
    softmax = not is_probability(raw)
    core = deployable(model, (h, w, c), rng_key, softmax)

    probs = core.predict(ds.x_test.astype(np.float32), batch_size=256, verbose=0)
    m = metrics.evaluate(probs, ds.y_test, ds.class_names)
    imported = {
        "from": str(path.resolve()),
        "sha256": sha256(path),
        "input_range": rng_key,
        "input_range_accuracy": {k: round(v[0], 4) for k, v in scores.items()} if scores else None,
        "keras2_settings_removed": repaired,  # a Keras 2 file's: inference ignores them, Keras 3 lacks them
        "augmentation_removed": removed,
        "mixed_precision_layers": rebuilt,
        "softmax_added": softmax,
        "binary_output": binary,  # one output unit made two classes: sigmoid or logit
    }
    m.update({"parameters": int(core.count_params()), "macs": model_mod.count_macs(core), "data": ds.source,
              "skipped_images": ds.info.get("skipped_images", 0), "imported": imported,
              "test_split_made": bool(ds.info.get("test_split_made"))})
    labels = labels_info(ds, c, cfg.resize)
    labels["input"]["scaling"] = (f"edgecnn maps 0..255 pixels to the imported model's input ({rng_key}) in front "
                                  "of it" if rng_key != "0..255" else "the imported model takes 0..255 pixels")
    config = {"data": cfg.data, "arch": None, "seed": cfg.seed, "image_size": parse_image_size((h, w)),
              "channels": c,
              "val_split": cfg.val_split, "test_split": cfg.test_split, "skip_bad_images": cfg.skip_bad_images,
              "resize": cfg.resize,
              "name": cfg.name, "runs_dir": cfg.runs_dir, "imported": imported, "versions": versions(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    write_json(run_dir / "config.json", config)
    write_json(run_dir / "labels.json", labels)
    write_json(run_dir / "metrics.json", m)
    write_text(run_dir / "classification_report.txt",
               metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names))
    plots.confusion_matrix(m["confusion_matrix"], ds.class_names, run_dir / "confusion_matrix.png")
    write_text(run_dir / "summary.txt", model_mod.summary_text(core) + "\n")
    with atomic_path(run_dir / runs.MODEL_FILE) as tmp:
        core.save(tmp)

    log(f"data: {ds.summary()}")
    log(f"model: {path}: input {h}x{w}x{c} (height, width, channels), {n_out} classes, {m['parameters']:,} "
        f"parameters, {m['macs']:,} MACs")
    if scores:
        log(f"input range: {rng_key} (accuracy on {len(y_pick)} training images: "
            + ", ".join(f"{k} {v[0] * 100:.1f}%" for k, v in scores.items()) + ")")
    else:
        log(f"input range: {rng_key} (--input-range)")
    if repaired:
        log("Keras 2 model: removed settings that Keras 3 lacks and inference ignores: "
            + "; ".join(f"{name} {', '.join(keys)}" for name, keys in repaired.items()))
    if removed:
        log(f"removed {len(removed)} augmentation layer{'s' if len(removed) > 1 else ''} (identity at inference): "
            + short_list(removed, 5))
    if rebuilt:
        log(f"rebuilt in float32: {rebuilt} layer{'s' if rebuilt > 1 else ''} had a mixed-precision policy")
    if binary:
        log(f"one output unit ({binary}) made two classes, {ds.class_names[0]} and {ds.class_names[1]} "
            f"({'1 - p, p' if binary == 'sigmoid' else 'softmax of 0 and the logit'})")
    if softmax:
        log("the model outputs logits: a Softmax was added, so every export gives probabilities")
    log(f"test accuracy {m['test_accuracy']:.4f}  loss {m['test_loss']:.4f}  on {m['test_images']} images of "
        f"{ds.source}" + (f" ({ds.info['classes_matched']})" if ds.info.get("classes_matched") else ""))
    if ds.info.get("test_split_made"):
        log(f"note: {cfg.data} has no test/ folder, so its test split was drawn here (--test-split, --seed); the model "
            "may have been trained on those images, which makes its accuracy look better than it is")
    log(f"run directory: {run_dir}  (next: edgecnn export {run_dir} --format all)")
    return run_dir
