"""Data sources behind ``--data``: one loader returning train / validation / test splits.

Sources: ``shapes`` (built-in, offline; ``shapes:N`` for N training images), ``cifar10``
(Keras download), a ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py`` folder, an image
folder with one sub-folder per class (or a ``.tar.gz``/``.zip`` of one), or a ``.npz``.
Images are uint8 (N, H, W, C); labels int64. This module imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        from edgecnn.data.images import FORMATS

        h, w, c = self.input_shape
        return (
            f"{self.source}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test images, "
            f"{h}x{w}x{c}, {self.num_classes} classes"
            + (f"; classes matched: {self.info['classes_matched']}" if self.info.get("classes_matched") else "")
            + (f"; not read: {self.info['unread']} entries of class folders that are not {FORMATS} "
               f"images (e.g. {self.info['unread_example']})" if self.info.get("unread") else "")
        )


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Deterministically split indices per class; returns one index array per fraction plus the rest."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(frac * len(idx)))
            if frac > 0 and len(idx) >= len(fractions) + 1:
                n = max(1, n)
            parts[k] += idx[start:start + n].tolist()
            start += n
        parts[-1] += idx[start:].tolist()
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


ImageSize = int | tuple[int, int]  # one side (square images), or (height, width)


def image_hw(image_size: ImageSize | None) -> tuple[int, int] | None:
    """``image_size`` as (height, width); None stays None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def size_text(image_size: ImageSize) -> str:
    """``32`` for a square size, ``96x128`` (height x width) otherwise: how --image-size spells it."""
    h, w = image_hw(image_size)
    return str(h) if h == w else f"{h}x{w}"


def parse_image_size(text: str | int | None) -> ImageSize | None:
    """``--image-size``: ``32`` (square) or ``HEIGHTxWIDTH`` (``96x128``), or already a side or (height, width);
    each side 8..512. A square size is one int."""
    if text is None or isinstance(text, (int, np.integer)):
        size = None if text is None else int(text)
    elif isinstance(text, (tuple, list)) and len(text) == 2:
        h, w = (int(v) for v in text)
        size = h if h == w else (h, w)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", str(text).lower())
        if not m:
            raise EdgeCNNError(f"--image-size must be a side (32) or HEIGHTxWIDTH (96x128), got {text!r}")
        h, w = int(m.group(1)), int(m.group(2) or m.group(1))
        size = h if h == w else (h, w)
    if size is not None and not all(8 <= side <= 512 for side in image_hw(size)):
        raise EdgeCNNError(f"--image-size sides must be 8..512, got {size_text(size)}")
    return size


def _convert(x: np.ndarray, image_size: ImageSize | None, channels: int, resize: str = "squash") -> np.ndarray:
    """Resize/convert already-decoded images exactly like files are (Pillow, bilinear, squash/crop/pad)."""
    hw = image_hw(image_size)
    if (hw is None or x.shape[1:3] == hw) and x.shape[-1] == channels:
        return x
    from PIL import Image

    from edgecnn.data.images import fit_image

    h, w = hw or x.shape[1:3]
    out = np.empty((len(x), h, w, channels), dtype=np.uint8)
    for i, img in enumerate(x):
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        im = fit_image(im.convert("L" if channels == 1 else "RGB"), w, h, resize)
        out[i] = np.asarray(im, dtype=np.uint8).reshape(h, w, channels)
    return out


def _check_split_args(val_split: float, test_split: float) -> None:
    for name, v in (("--val-split", val_split), ("--test-split", test_split)):
        if not 0.0 <= v < 1.0:
            raise EdgeCNNError(f"{name} must be in [0, 1), got {v}")
    if val_split + test_split >= 0.9:
        raise EdgeCNNError(f"--val-split + --test-split must leave training data, got {val_split + test_split}")


def local_path(source: str | os.PathLike) -> Path | None:
    """The file or folder a ``--data`` source names; None for the built-in ones (shapes[:N], cifar10)."""
    src = str(source)
    if src in ("shapes", "cifar10") or src.startswith("shapes:"):
        return None
    return Path(src).expanduser()


def load(
    source: str | os.PathLike = "shapes",
    image_size: ImageSize | None = None,
    channels: int = 3,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 0,
    skip_bad_images: bool = False,
    resize: str = "squash",
) -> Dataset:
    """Load ``source`` into a Dataset. Raises EdgeCNNError with one clear line on bad input.

    ``image_size``: one side or (height, width); ``resize``: how images of another shape are made to fit (squash,
    crop the centre first, or pad)."""
    from edgecnn.data.images import check_resize

    _check_split_args(val_split, test_split)
    check_resize(resize)
    if channels not in (1, 3):
        raise EdgeCNNError(f"--channels must be 1 or 3, got {channels}")
    image_size = parse_image_size(image_size)
    src = str(source)
    info: dict = {}

    if src == "shapes" or src.startswith("shapes:"):
        from edgecnn.data import shapes

        n = shapes.DEFAULT_TRAIN
        if ":" in src:
            try:
                n = int(src.split(":", 1)[1])
            except ValueError:
                raise EdgeCNNError(f"--data {src}: expected shapes or shapes:N (N training images)") from None
            if not 20 <= n <= 1_000_000:
                raise EdgeCNNError(f"--data {src}: N must be 20..1000000")
        h, w = image_hw(image_size) or (32, 32)
        splits, classes = shapes.load(n, (h, w), channels, seed=seed)  # drawn at h x w: _convert keeps them
        (xt, yt), (xv, yv), (xs, ys) = ((_convert(x, image_size, channels), y) for x, y in
                                        (splits["train"], splits["val"], splits["test"]))
        return Dataset(xt, yt, xv, yv, xs, ys, classes, src, info)

    if src == "cifar10":
        from edgecnn.data import cifar10

        x_train, y_train, x_test, y_test, classes = cifar10.load(None)
        return _from_arrays(x_train, y_train, x_test, y_test, classes, src, image_size, channels, val_split, seed,
                            resize)

    path = Path(src).expanduser()
    if not path.exists():
        raise EdgeCNNError(
            f"--data {src}: no such file or folder (use shapes, cifar10, an image folder, an archive or a .npz)"
        )
    from edgecnn.data import archive, cifar10

    if cifar10.is_cifar_source(path):
        x_train, y_train, x_test, y_test, classes = cifar10.load(path)
        return _from_arrays(x_train, y_train, x_test, y_test, classes, src, image_size, channels, val_split, seed,
                            resize)
    if path.is_file() and path.suffix.lower() == ".npz":
        from edgecnn.data import npz

        x_train, y_train, x_test, y_test, classes = npz.load(path)
        return _from_arrays(x_train, y_train, x_test, y_test, classes, src, image_size, channels, val_split, seed,
                            resize)
    if archive.is_archive(path):
        path = archive.single_root(archive.extract(path))
        if cifar10.is_cifar_source(path):
            x_train, y_train, x_test, y_test, classes = cifar10.load(path)
            return _from_arrays(x_train, y_train, x_test, y_test, classes, src, image_size, channels, val_split, seed,
                                resize)
    if path.is_dir():
        return _from_folder(path, src, 32 if image_size is None else image_size, channels, val_split, test_split,
                            seed, skip_bad_images,
                            resize)
    raise EdgeCNNError(f"--data {src}: unsupported file type (expected a folder, .tar.gz, .zip or .npz)")


def _from_arrays(x_train, y_train, x_test, y_test, classes, src, image_size, channels, val_split, seed,
                 resize="squash") -> Dataset:
    x_train = _convert(x_train, image_size, channels, resize)
    x_test = _convert(x_test, image_size, channels, resize)
    if len(np.unique(y_train)) < 2:
        raise EdgeCNNError(f"--data {src}: training split has fewer than two classes")
    if len(x_test) == 0:
        raise EdgeCNNError(f"--data {src}: test split is empty")
    val_idx, train_idx = stratified_split(y_train, (val_split,), seed)
    return Dataset(
        x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx], x_test, y_test, classes, src
    )


def _folder_cache_key(root: Path, image_size: ImageSize, channels: int, skip_bad: bool,
                      resize: str = "squash") -> str:
    from edgecnn.data.images import IMAGE_EXTENSIONS, RESIZE_MODES

    size = size_text(image_size)
    h = hashlib.sha256(f"{root.resolve()}|{size}|{channels}|{skip_bad}|{RESIZE_MODES[resize]}|v4".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _from_folder(root, src, image_size, channels, val_split, test_split, seed, skip_bad, resize="squash") -> Dataset:
    raw, classes, skipped, cache = _read_folder_cached(root, image_size, channels, skip_bad, resize)
    if "all" in raw:  # one folder of class folders: split it here
        x, y = raw["all"]
        test_idx, val_idx, train_idx = stratified_split(y, (test_split, val_split), seed)
        x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        x_test, y_test = x[test_idx], y[test_idx]
    else:
        x_train, y_train = raw["train"]
        x_test, y_test = raw["test"]
        if "val" in raw:
            x_val, y_val = raw["val"]
        else:
            val_idx, train_idx = stratified_split(y_train, (val_split,), seed)
            x_val, y_val = x_train[val_idx], y_train[val_idx]
            x_train, y_train = x_train[train_idx], y_train[train_idx]
    if len(x_train) == 0 or len(x_test) == 0:
        raise EdgeCNNError(f"--data {src}: too few images to split into train and test")
    from edgecnn.data import folder

    splits = folder.find_splits(root) or {"all": root}
    unread = [p for path in splits.values() for p in folder.unread_entries(path, classes)]
    info = {"skipped_images": skipped, **({"cache": str(cache)} if cache else {}),
            **({"test_split_made": True} if "all" in raw else {}),  # no test/ folder: split off by --test-split
            **({"unread": len(unread), "unread_example": str(unread[0])} if unread else {})}
    return Dataset(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                   class_names=classes, source=src, info=info)


def _read_folder_cached(root, image_size, channels, skip_bad, resize="squash"):
    """Decoded images per split folder (``train``/``val``/``test``, or ``all``), before any random split.

    The decode is cached under the edgecnn cache keyed on the files' names, sizes and times; the
    split fractions and seed are applied afterwards, so changing them never reuses a stale split.
    Returns (arrays, class names, skipped count, cache path or None).
    """
    from edgecnn.data import folder
    from edgecnn.data.archive import cache_root

    key = _folder_cache_key(root, image_size, channels, skip_bad, resize)
    cache = cache_root() / "folders" / f"{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                names = [str(s) for s in z["class_names"].tolist()]
                raw = {k[2:]: (z[k], z["y_" + k[2:]]) for k in z.files if k.startswith("x_")}
                return raw, names, int(z["skipped"]), cache
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)

    splits = folder.find_splits(root)
    skipped = 0
    raw = {}
    if splits:
        classes = folder.list_classes(splits["train"])
        parts = {"train": splits["train"], "test": splits.get("test", splits.get("val"))}
        if "val" in splits and "test" in splits:
            parts["val"] = splits["val"]
    else:
        classes = folder.list_classes(root)
        parts = {"all": root}
    for part, path in parts.items():
        x, y, s = folder.read_split(path, classes, image_size, channels, skip_bad, resize)
        raw[part] = (x, y)
        skipped += s
    try:
        from edgecnn.fsutil import atomic_path

        with atomic_path(cache, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                arrays = {f"{xy}_{part}": a for part, pair in raw.items() for xy, a in zip("xy", pair)}
                np.savez(f, **arrays, class_names=np.asarray(classes), skipped=np.asarray(skipped))
    except (EdgeCNNError, OSError):
        cache = None  # the cache is an optimisation only
    return raw, classes, skipped, cache
