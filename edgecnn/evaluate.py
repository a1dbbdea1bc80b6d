"""Re-score a run's model on a data source."""

from __future__ import annotations

from edgecnn import runs
from edgecnn.errors import EdgeCNNError, short_list


def load_run_data(run_dir, data: str | None = None, labelled: bool = True):
    """The data a run was trained on (or ``data``), at the run's image size and channels.

    ``labelled``: match ``data``'s classes to the model's (match_classes); export, which needs only images
    (calibration, verification against Keras), passes False and takes any classes."""
    from edgecnn import data as data_mod
    from edgecnn.data.images import resize_mode

    cfg = runs.config(run_dir)
    lab = runs.labels(run_dir)
    src = data or cfg.get("data")
    if not src:
        raise EdgeCNNError(f"run {run_dir} does not record its data source; pass --data")
    h, w, c = lab["input_shape"]
    try:
        ds = data_mod.load(src, image_size=(h, w), channels=c, val_split=cfg.get("val_split", 0.1),
                           test_split=cfg.get("test_split", 0.1), seed=cfg.get("seed", 0),
                           skip_bad_images=cfg.get("skip_bad_images", False),
                           resize=resize_mode(lab.get("input", {}).get("resize")))
    except EdgeCNNError as exc:
        if data:
            raise
        raise EdgeCNNError(f"{exc}; it is the data {run_dir} was trained on: pass --data to use a copy of it") from None
    if labelled and ds.class_names != lab["class_names"]:
        ds = match_classes(ds, lab["class_names"], src)
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
    images (test-time augmentation; exports include it only when made with ``edgecnn export --tta``)."""
    from edgecnn import metrics, model

    run_dir = runs.resolve(run, runs_dir)
    core = model.load_keras(run_dir / runs.MODEL_FILE)
    ds = load_run_data(run_dir, data)
    x = ds.x_test.astype("float32")
    probs = model.flip_tta_predict(core, x) if tta else core.predict(x, batch_size=256, verbose=0)
    out = metrics.evaluate(probs, ds.y_test, ds.class_names)
    out["report"] = metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names)
    out["data"] = ds.source
    out["classes_matched"] = ds.info.get("classes_matched")  # a --data holding some of the model's classes
    out["run"] = str(run_dir)
    out["tta"] = tta
    return out
