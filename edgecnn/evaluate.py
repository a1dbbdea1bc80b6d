"""Re-score a run's model on a data source."""

from __future__ import annotations

from edgecnn import runs
from edgecnn.errors import EdgeCNNError


def load_run_data(run_dir, data: str | None = None):
    """The data a run was trained on (or ``data``), at the run's image size and channels."""
    from edgecnn import data as data_mod

    cfg = runs.config(run_dir)
    lab = runs.labels(run_dir)
    src = data or cfg.get("data")
    if not src:
        raise EdgeCNNError(f"run {run_dir} does not record its data source; pass --data")
    h, w, c = lab["input_shape"]
    try:
        ds = data_mod.load(src, image_size=h, channels=c, val_split=cfg.get("val_split", 0.1),
                           test_split=cfg.get("test_split", 0.1), seed=cfg.get("seed", 0),
                           skip_bad_images=cfg.get("skip_bad_images", False))
    except EdgeCNNError as exc:
        if data:
            raise
        raise EdgeCNNError(f"{exc}; it is the data {run_dir} was trained on: pass --data to use a copy of it") from None
    if ds.class_names != lab["class_names"]:
        if len(ds.class_names) != len(lab["class_names"]):
            raise EdgeCNNError(f"--data {src} has {len(ds.class_names)} classes, the model {len(lab['class_names'])}")
    return ds


def evaluate_run(run: str | None, runs_dir: str, data: str | None = None, tta: bool = False) -> dict:
    """Score the run's model on the test split. ``tta``: average with the horizontally flipped
    images (test-time augmentation; exported models do not include it)."""
    from edgecnn import metrics, model

    run_dir = runs.resolve(run, runs_dir)
    core = model.load_keras(run_dir / runs.MODEL_FILE)
    ds = load_run_data(run_dir, data)
    x = ds.x_test.astype("float32")
    probs = core.predict(x, batch_size=256, verbose=0)
    if tta:
        probs = (probs + core.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2
    out = metrics.evaluate(probs, ds.y_test, ds.class_names)
    out["report"] = metrics.classification_report(ds.y_test, probs.argmax(1), ds.class_names)
    out["data"] = ds.source
    out["run"] = str(run_dir)
    out["tta"] = tta
    return out
