"""Read a Keras 2 model (an HDF5 file, or a SavedModel folder that tf.keras wrote) into Keras 3.

Keras 3 reads these files itself, but refuses most of them, Teachable Machine's ``keras_model.h5`` among them:
settings Keras 2 wrote that Keras 3 no longer has (``DepthwiseConv2D(groups=1)``, the ``rng_type`` of
augmentation layers...), and, inside a nested Sequential, BatchNormalization's axis as a list, a model named by
tf_keras's module path and a first layer's batch_input_shape; references to a model called inside another count
from Keras 2's extra node. ``load`` removes those settings where they do nothing at inference (each named in
``DROPPABLE`` with the values that may go: any other value stays, so Keras 3 refuses it and the caller says
which), rewrites the rest into Keras 3's form and renumbers the references, then loads the file with Keras 3's
own loader in safe mode (no Lambda code).

A SavedModel folder (``model.save("folder")``, tf.keras's default format before Keras 3) is read by tf_keras in a
child process (tf_keras is Keras 2, which this process must not load) and written to an HDF5 file, then read so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from edgecnn.errors import EdgeCNNError, first_line, lambda_refused

_ANY = object()
_DEPTHWISE_SEPARABLE_TRANSPOSED = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                                   "SeparableConvolution1D", "SeparableConvolution2D", "Conv1DTranspose",
                                   "Conv2DTranspose", "Conv3DTranspose", "Convolution1DTranspose",
                                   "Convolution2DTranspose", "Convolution3DTranspose")
_SEPARABLE = tuple(c for c in _DEPTHWISE_SEPARABLE_TRANSPOSED if "Separable" in c)
_SPATIAL_DROPOUT = ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
_RANDOM = ("RandomBrightness", "RandomContrast", "RandomCrop", "RandomFlip", "RandomHeight", "RandomRotation",
           "RandomTranslation", "RandomWidth", "RandomZoom")

FUNCTIONAL = ("Functional", "Model")  # the class names of a Keras 2 functional model's config

# (layer classes, setting) -> the values Keras 3 may drop: Keras 2 wrote them, Keras 3 has no such argument,
# and with these values they change nothing at inference.
DROPPABLE = {
    # Keras 2's Conv base class wrote groups=1 for every convolution; Keras 3 has groups for Conv only.
    (_DEPTHWISE_SEPARABLE_TRANSPOSED, "groups"): (1,),
    # Separable convolutions have depthwise_* and pointwise_* weights; Keras 2 also wrote its unused kernel_*.
    (_SEPARABLE, "kernel_initializer"): _ANY,
    (_SEPARABLE, "kernel_regularizer"): _ANY,
    (_SEPARABLE, "kernel_constraint"): _ANY,
    # Which random generator augmentation used in training: augmentation is the identity at inference.
    (_RANDOM, "rng_type"): _ANY,
    # Spatial dropout is the identity at inference and has no weights.
    (_SPATIAL_DROPOUT, "trainable"): _ANY,
    (_SPATIAL_DROPOUT, "noise_shape"): (None,),
}


def _one_axis(value):
    """Keras 2's BatchNormalization wrote its axis as a list once built; Keras 3 takes one int."""
    return value[0] if isinstance(value, list) and len(value) == 1 and isinstance(value[0], int) else value


# (layer classes, setting) -> how Keras 3 takes the value Keras 2 wrote (the same value where it cannot).
REWRITES = {
    (("BatchNormalization",), "axis"): _one_axis,
}


def is_saved_model(path: Path) -> bool:
    """Whether ``path`` is a SavedModel folder."""
    return (path / "saved_model.pb").is_file()


# Run by tf_keras in a child: the SavedModel's Keras model, written as an HDF5 file (exit 3: no Keras model in it).
_SAVED_MODEL_TO_H5 = """
import sys
import tf_keras
model = tf_keras.models.load_model(sys.argv[1], compile=False)
if not isinstance(model, tf_keras.Model):
    sys.exit(3)
model.save(sys.argv[2])
"""


def load_saved_model(folder: Path) -> tuple[object, dict[str, list[str]]]:
    """Load a SavedModel folder that tf.keras (Keras 2) wrote into Keras 3, as ``load`` does an HDF5 file."""
    meta = folder / "keras_metadata.pb"
    if not meta.is_file():
        raise EdgeCNNError(f"{folder}: a SavedModel without Keras layers (no keras_metadata.pb: tf.saved_model.save "
                           "wrote it, not Keras 2's model.save); edgecnn imports Keras models")
    if b'"class_name": "Lambda"' in meta.read_bytes():
        raise lambda_refused(folder)
    with tempfile.TemporaryDirectory(prefix="edgecnn-savedmodel-") as tmp:
        h5 = Path(tmp) / "model.h5"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        env.pop("TF_USE_LEGACY_KERAS", None)
        try:
            done = subprocess.run([sys.executable, "-c", _SAVED_MODEL_TO_H5, str(folder), str(h5)],
                                  capture_output=True, text=True, env=env, timeout=900)
        except subprocess.TimeoutExpired:
            raise EdgeCNNError(f"{folder}: tf_keras took over 15 minutes to read the SavedModel") from None
        if done.returncode == 3:
            raise EdgeCNNError(f"{folder}: tf_keras finds no Keras model in this SavedModel")
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith((" ", "Traceback"))]
            raise EdgeCNNError(f"{folder}: tf_keras cannot read this SavedModel as a Keras model "
                               f"({(lines[-1] if lines else f'exit {done.returncode}')[:240]})")
        return load(h5, name=folder)


def is_h5(path: Path) -> bool:
    """Whether ``path`` names an HDF5 file by its suffix."""
    return path.suffix.lower() in (".h5", ".hdf5")


def _droppable(class_name: str, key: str, value) -> bool:
    for (classes, setting), values in DROPPABLE.items():
        if setting == key and class_name in classes:
            return values is _ANY or any(value == v and type(value) is type(v) for v in values)
    return False


def clean_config(config, dropped: Counter):
    """``config`` (a model config as JSON data) without the droppable Keras 2 settings, counted in ``dropped``,
    and with the rewritable ones in Keras 3's form."""
    if isinstance(config, list):
        return [clean_config(c, dropped) for c in config]
    if not isinstance(config, dict):
        return config
    out = {k: clean_config(v, dropped) for k, v in config.items()}
    name, layer = out.get("class_name"), out.get("config")
    if isinstance(out.get("module"), str) and out["module"].startswith("tf_keras"):
        # A model inside a Sequential, named by tf_keras's module path, which Keras 3 cannot import: without it,
        # Keras 3 reads the entry as it reads Keras 2 configs (by class name).
        out.pop("module")
        out.pop("registered_name", None)
    if name in FUNCTIONAL and isinstance(layer, dict) and isinstance(layer.get("layers"), list):
        _renumber_model_calls(layer)
    if isinstance(name, str) and isinstance(layer, dict):
        for key in [k for k, v in layer.items() if _droppable(name, k, v)]:
            layer.pop(key)
            dropped[name, key] += 1
        for (classes, key), rewrite in REWRITES.items():
            if name in classes and key in layer:
                layer[key] = rewrite(layer[key])
        shape = layer.get("batch_input_shape")
        if name != "InputLayer" and isinstance(shape, list) and shape and shape[0] is None:
            # Keras 2's first layer of a Sequential kept its batch_input_shape; Keras 3 layers take input_shape.
            layer["input_shape"] = shape[1:]
            del layer["batch_input_shape"]
    return out


def _renumber_model_calls(graph: dict) -> None:
    """Make a Keras 2 functional graph's references to the models inside it count calls as Keras 3 does.

    Keras 2 gave every model a node of its own before its first call, so a nested model's first call is its node 1
    (``[["backbone", 1, 0, {}]]``); Keras 3 numbers calls from 0, and subtracts the 1 itself only where a
    functional model's output is the graph's output. A layer referred to at an index beyond its calls is such a
    model: its references move down by one.
    """
    layers = [layer for layer in graph["layers"] if isinstance(layer, dict) and "name" in layer]
    calls = {layer["name"]: layer.get("inbound_nodes") for layer in layers}
    refs = [ref for nodes in calls.values() if isinstance(nodes, list) for node in nodes if isinstance(node, list)
            for ref in node if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[1], int)]
    outputs = [ref for ref in graph.get("output_layers") or [] if isinstance(ref, list) and len(ref) >= 3
               and isinstance(ref[1], int)]
    counted = {name: len(nodes) for name, nodes in calls.items() if isinstance(nodes, list)}
    shifted = {ref[0] for ref in refs + outputs if ref[0] in counted and ref[1] >= counted[ref[0]] > 0}
    keras3_shifts = {layer["name"] for layer in layers if layer.get("class_name") in FUNCTIONAL}
    for ref in refs:
        if ref[0] in shifted:
            ref[1] -= 1
    for ref in outputs:
        if ref[0] in shifted and ref[0] not in keras3_shifts:
            ref[1] -= 1


def load(path: Path, name: Path | None = None) -> tuple[object, dict[str, list[str]]]:
    """Load the Keras 2 HDF5 model file ``path`` into Keras 3 (safe mode, not compiled); errors name ``name``
    (default: ``path``).

    Returns the model and the Keras 2 settings removed, by layer class: ``{"DepthwiseConv2D": ["groups"]}``.
    """
    shown = path if name is None else name
    import h5py

    from edgecnn._tf import keras

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            weights = "model_weights" in f or "layer_names" in f.attrs
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... on what is not a sound HDF5 file
        raise EdgeCNNError(f"{shown}: not a readable HDF5 file ({first_line(exc)})") from None
    if raw is None:
        what = "a weights-only file (model.save_weights)" if weights else "no Keras model in it"
        raise EdgeCNNError(f"{shown}: {what}; edgecnn imports a whole model: model.save('model.h5') or "
                           "model.save('model.keras')")
    try:
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgeCNNError(f"{shown}: unreadable model config ({first_line(exc)})") from None
    if "Lambda" in _class_names(config):
        raise lambda_refused(shown)
    dropped: Counter = Counter()
    cleaned = clean_config(config, dropped)
    with tempfile.TemporaryDirectory(prefix="edgecnn-h5-") as tmp:
        try:
            source = path
            if cleaned != config:  # a repaired copy; the file itself is never written
                source = Path(tmp) / "model.h5"
                shutil.copyfile(path, source)
                with h5py.File(source, "r+") as f:
                    f.attrs["model_config"] = json.dumps(cleaned)
            model = keras.saving.load_model(source, compile=False, safe_mode=True)
        except Exception as exc:  # keras raises ValueError, TypeError, KeyError... on what it cannot read
            raise EdgeCNNError(f"{shown}: Keras 3 cannot load this Keras 2 model ({first_line(exc, 240)})") from None
    removed: dict[str, list[str]] = {}
    for name, key in sorted(dropped):
        removed.setdefault(name, []).append(key)
    return model, removed


def _class_names(config):
    """Every ``class_name`` in a config, nested ones too."""
    if isinstance(config, list):
        for c in config:
            yield from _class_names(c)
    elif isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config["class_name"]
        for v in config.values():
            yield from _class_names(v)
