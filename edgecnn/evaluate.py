"""Re-score a run's model, or any exported model file, on a data source."""

from __future__ import annotations

from pathlib import Path

from edgecnn import runs
from edgecnn.errors import EdgeCNNError, short_list


def load_run_data(run_dir, data: str | None = None, labelled: bool = True):
    """The data a run was trained on (or ``data``), at the run's image size and channels.

    ``labelled``: match ``data``'s classes to the model's (match_classes); export, which needs only images
    (calibration, verification against Keras), passes False and takes any classes."""
    cfg = runs.config(run_dir)
    lab = runs.labels(run_dir)
    src = data or runs.data_source(cfg)
    if not src:
        raise EdgeCNNError(f"run {run_dir} does not record its data source; pass --data")
    try:
        return load_for_model(src, lab, lab["input_shape"], labelled, val_split=cfg.get("val_split", 0.1),
                              test_split=cfg.get("test_split", 0.1), seed=cfg.get("seed", 0),
                              skip_bad_images=cfg.get("skip_bad_images", False))
    except EdgeCNNError as exc:
        if data:
            raise
        raise EdgeCNNError(f"{exc}; it is the data {run_dir} was trained on: pass --data to use a copy of it") from None


def load_for_model(src: str, labels: dict, input_shape, labelled: bool = True, **split):
    """``src`` at a model's ``input_shape`` (height, width, channels), resized as its ``labels`` (labels.json)
    say, with its labels renumbered to the model's classes when ``labelled``; ``split``: data.load's split
    options."""
    from edgecnn import data as data_mod
    from edgecnn.data.images import resize_mode

    h, w, c = input_shape
    resize = resize_mode((labels.get("input") or {}).get("resize"))
    ds = data_mod.load(src, image_size=(h, w), channels=c, resize=resize, **split)
    if labelled and ds.class_names != labels["class_names"]:
        ds = match_classes(ds, labels["class_names"], src)
    return ds


def match_classes(ds, model_classes: list[str], src: str):
    """``ds`` with its labels renumbered to the model's classes, matched by name (exactly, else ignoring case
    where that is unambiguous): a folder may hold some of the model's classes, in any order. Labels without
    names (an ``.npz`` without ``class_names``: "0", "1", ...) are taken as the model's class indices."""
    from dataclasses import replace

    import numpy as np

    names = ds.class_names
    if names == [str(i) for i in range(len(names))] and len(names) <= len(model_classes):
        return replace(ds, class_names=list(model_classes))
    exact = {n: i for i, n in enumerate(model_classes)}
    folded: dict[str, list[int]] = {}
    for i, n in enumerate(model_classes):
        folded.setdefault(n.casefold(), []).append(i)

    def lookup(name):
        if name in exact:
            return exact[name]
        hits = folded.get(name.casefold(), [])
        return hits[0] if len(hits) == 1 else None

    mapping = [lookup(n) for n in names]
    unknown = [n for n, m in zip(names, mapping) if m is None]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise EdgeCNNError(f"--data {src}: class {unknown[0]!r}" + more
                           + f" is not one of the model's classes ({short_list(model_classes)})")
    if len(set(mapping)) < len(mapping):
        twice = next(n for n, m in zip(names, mapping) if mapping.count(m) > 1)
        raise EdgeCNNError(f"--data {src}: classes {twice!r} and another name the same model class "
                           f"{model_classes[mapping[names.index(twice)]]!r}")
    m = np.asarray(mapping, dtype=np.int64)
    matched = f"{len(names)} of the model's {len(model_classes)} classes, by name"
    return replace(ds, y_train=m[ds.y_train], y_val=m[ds.y_val], y_test=m[ds.y_test], class_names=list(model_classes),
                   info=ds.info | {"classes_matched": matched})


def evaluate_run(run: str | None, runs_dir: str, data: str | None = None, tta: bool = False) -> dict:
    """Score the run's model on the test split. ``tta``: average with the horizontally flipped
    images (test-time augmentation; exports include it only when made with ``edgecnn export --tta``).

    ``run`` may also be a model file (.tflite, .onnx, .keras): ``evaluate_file`` scores it."""
    from edgecnn import metrics, model
    from edgecnn.runners import MODEL_SUFFIXES

    if run is not None and Path(run).suffix.lower() in MODEL_SUFFIXES and not Path(run).is_dir():
        return evaluate_file(Path(run), data, tta)
    run_dir = runs.resolve(run, runs_dir)
    core = model.load_keras(run_dir / runs.MODEL_FILE)
    ds = load_run_data(run_dir, data)
    x = ds.x_test.astype("float32")
    probs = model.flip_tta_predict(core, x) if tta else core.predict(x, batch_size=256, verbose=0)
    out = metrics.evaluate(probs, ds.y_test, ds.class_names)
    out["report"] = metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names)
    out["data"] = ds.source
    out["class_names"] = ds.class_names
    out["classes_matched"] = ds.info.get("classes_matched")  # a --data holding some of the model's classes
    out["run"] = str(run_dir)
    out["tta"] = tta
    return out


def evaluate_file(path: Path, data: str | None = None, tta: bool = False) -> dict:
    """Score a model file on ``data``'s test split, in the runtime its format runs in (LiteRT, ONNX Runtime,
    Keras), with its own input quantization: what a device would get from that very file.

    Class names and resize mode come from labels.json beside the file (or one folder up: a run's exports), else
    the model's metadata; the image size from the model. ``data`` defaults to the data of the run the file
    belongs to (a run's model.keras, or a file in its exports/)."""
    from edgecnn import metrics
    from edgecnn.predict import labels_for
    from edgecnn.runners import open_runner

    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    labels = labels_for(path)
    runner = open_runner(path)
    run_dir = next((d for d in (path.parent, path.parent.parent) if (d / "config.json").is_file()), None)
    if data is None and run_dir is None:
        raise EdgeCNNError(f"{path}: no run beside it records its data; pass --data")
    # The runner names the file in one line if its run's images are not the shape it takes.
    ds = load_run_data(run_dir, data) if run_dir is not None else load_for_model(data, labels, runner.input_shape)
    probs = runner.predict(ds.x_test)
    if tta:
        probs = (probs + runner.predict(ds.x_test[:, :, ::-1])) / 2
    out = metrics.evaluate(probs, ds.y_test, ds.class_names)
    out["report"] = metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names)
    out["data"] = ds.source
    out["class_names"] = ds.class_names
    out["classes_matched"] = ds.info.get("classes_matched")
    out["model"] = str(path)
    out["runtime"] = runner.runtime
    out["tta"] = tta
    return out
