"""Predict classes of image files with any model format (.keras, .tflite, .onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecnn import runs
from edgecnn.data.images import FORMATS, ImageError, is_image_file, load_image, resize_mode
from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import read_json


DEVICES = ("cpu", "cuda", "tensorrt")


def labels_for(model_path: Path) -> dict:
    """``labels.json`` beside the model (or one folder up), else the ONNX metadata or the TFLite metadata's
    labels.txt."""
    for candidate in (model_path.parent / "labels.json", model_path.parent.parent / "labels.json"):
        if candidate.is_file():
            return read_json(candidate, "labels file")
    if model_path.suffix == ".onnx":
        import onnx

        try:
            meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
            if "class_names" in meta:
                return {"class_names": json.loads(meta["class_names"]),
                        "input_shape": json.loads(meta.get("input_shape", "null")),
                        "input": json.loads(meta.get("input", "{}"))}
        except Exception:
            pass
    if model_path.suffix == ".tflite":
        from edgecnn.export.tflite_metadata import read

        try:
            meta = read(model_path.read_bytes())
        except Exception:
            meta = None
        if meta and meta.get("labels"):
            return {"class_names": meta["labels"], "input_shape": None, "input": {}}
    raise EdgeCNNError(f"no labels.json beside {model_path} (and no class names in the model)")


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders expand to every image file inside them (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if is_image_file(f))
            if not found:
                raise EdgeCNNError(f"{p}: folder has no images ({FORMATS})")
            out += found
        else:
            out.append(p)
    return out


def predict(model_path: str | Path, images: list[str], top_k: int = 3,
            runs_dir: str | Path = runs.DEFAULT_RUNS_DIR, device: str = "cpu"):
    """Yield (path, [(class, probability), ...] or None, error or None) per image.

    ``model_path``: a model file, or a run (a folder, or a run name under ``runs_dir``) for its model.keras.
    ``device``: cpu, cuda or tensorrt; one the model's runtime cannot use here stops with the reason (ONNX
    Runtime's quiet fallback to the CPU included).
    """
    from edgecnn.runners import MODEL_SUFFIXES, format_of, open_runner

    model_path = Path(model_path)
    if model_path.is_dir() or (not model_path.exists() and model_path.suffix.lower() not in MODEL_SUFFIXES):
        model_path = runs.resolve(str(model_path), runs_dir) / runs.MODEL_FILE
    format_of(model_path)
    if top_k < 1:
        raise EdgeCNNError(f"--top-k must be at least 1, got {top_k}")
    if device not in DEVICES:
        raise EdgeCNNError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not model_path.is_file():
        raise EdgeCNNError(f"model file not found: {model_path}")
    labels = labels_for(model_path)
    runner = open_runner(model_path, device)
    h, w, c = runner.input_shape
    names = labels["class_names"]
    resize = resize_mode((labels.get("input") or {}).get("resize"))  # as the run was trained
    for path in expand(images):
        try:
            x = load_image(path, (h, w), c, resize)
        except ImageError as exc:
            yield path, None, str(exc)
            continue
        probs = runner.predict(x[None])[0]
        order = np.argsort(-probs)[:top_k]
        yield path, [(names[i] if i < len(names) else str(i), float(probs[i])) for i in order], None
