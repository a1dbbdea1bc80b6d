"""A ``.npz`` with ``x_train, y_train, x_test, y_test`` (and optional ``class_names``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise EdgeCNNError(f"{path}: npz lacks {', '.join(missing)} (needs x_train, y_train, x_test, y_test)")
            arrays = {k: z[k] for k in REQUIRED}
            names = [str(s) for s in z["class_names"].tolist()] if "class_names" in z.files else None
    except EdgeCNNError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgeCNNError(f"{path}: not a readable npz ({exc})") from None
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise EdgeCNNError(f"{path}: x_{split} has shape {x.shape}, expected (N, H, W, 1 or 3)")
        y = y.reshape(-1)
        if len(y) != len(x):
            raise EdgeCNNError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise EdgeCNNError(f"{path}: y_{split} must hold integer class indices, not {y.dtype}")
        if x.dtype != np.uint8:
            if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
                x = x * 255.0
            x = np.clip(np.nan_to_num(x), 0, 255).astype(np.uint8)
        out += [x, y.astype(np.int64)]
    x_train, y_train, x_test, y_test = out
    if x_train.shape[1:] != x_test.shape[1:]:
        raise EdgeCNNError(f"{path}: x_train images are {x_train.shape[1:]} but x_test images are {x_test.shape[1:]}")
    n_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    if min(y_train.min(initial=0), y_test.min(initial=0)) < 0:
        raise EdgeCNNError(f"{path}: negative class index in y_train/y_test")
    if names is None:
        names = [str(i) for i in range(n_classes)]
    elif len(names) < n_classes:
        raise EdgeCNNError(f"{path}: class_names has {len(names)} names but labels go up to {n_classes - 1}")
    return x_train, y_train, x_test, y_test, names
