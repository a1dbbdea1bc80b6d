"""Image folders: one sub-folder per class, optionally split into ``train/``, ``val/``, ``test/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.data.images import FORMATS, is_image_file, load_images
from edgecnn.errors import EdgeCNNError, short_list

SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def find_splits(root: Path) -> dict[str, Path]:
    """Split folders present under ``root`` (only when ``train/`` is one of them)."""
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found if "train" in found and len(found) > 1 else {}


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_classes(root: Path) -> list[str]:
    classes = _subfolders(root)
    if not classes:
        raise EdgeCNNError(f"{root}: no class folders (expected one sub-folder of images per class)")
    if len(classes) < 2:
        raise EdgeCNNError(f"{root}: only one class folder ({classes[0]}); classification needs at least two")
    return classes


def list_files(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    extra = sorted(set(_subfolders(root)) - set(classes))
    if extra:  # a test/ or val/ class the training split lacks: its images would go unscored
        raise EdgeCNNError(f"{root / extra[0]}: class folder not in the training split "
                           f"(classes: {short_list(classes)})")
    files, labels = [], []
    for i, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise EdgeCNNError(f"{root}: class folder {name!r} is missing (it exists in the training split)")
        found = sorted(p for p in folder.iterdir() if is_image_file(p))
        if not found:
            raise EdgeCNNError(f"{folder}: class folder has no images ({FORMATS})")
        files += found
        labels += [i] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def unread_entries(root: Path, classes: list[str]) -> list[Path]:
    """What the class folders under ``root`` hold besides the images read: other files and sub-folders."""
    out = []
    for name in classes:
        if (root / name).is_dir():
            out += [p for p in (root / name).iterdir() if not p.name.startswith(".") and not is_image_file(p)]
    return sorted(out)


def read_split(root: Path, classes: list[str], image_size: int | tuple[int, int], channels: int, skip_bad: bool,
               resize: str = "squash"):
    files, labels = list_files(root, classes)
    x, errors, good = load_images(files, image_size, channels, resize=resize)
    if errors:
        if not skip_bad:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise EdgeCNNError(
                f"{len(errors)} unreadable image(s): " + "; ".join(errors[:3]) + more
                + "; pass --skip-bad-images to skip them"
            )
    return x, labels[good], len(errors)
