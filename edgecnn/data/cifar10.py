"""``cifar10``: the Keras download (cached once) or a local ``cifar-10-python.tar.gz`` / folder.

The python release is pickled; it is read with a restricted unpickler that admits
only numpy arrays, lists, dicts, bytes, str and numbers, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError

ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
BATCH_DIR = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
        d = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except FileNotFoundError:
        raise EdgeCNNError(f"CIFAR-10 batch missing: {path}") from None
    except Exception as exc:  # pickle raises many types on garbage input
        raise EdgeCNNError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict):
        raise EdgeCNNError(f"{path}: not a CIFAR-10 python batch (no dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or not isinstance(labels, list):
        raise EdgeCNNError(f"{path}: not a CIFAR-10 python batch (no data/labels)")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise EdgeCNNError(f"{path}: CIFAR-10 batch has shape {data.shape}, expected (N, 3072) uint8 with N labels")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise EdgeCNNError(f"{path}: CIFAR-10 labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def load_batches(folder: Path):
    """Read ``data_batch_1..5`` and ``test_batch`` from an extracted ``cifar-10-batches-py``."""
    folder = Path(folder)
    if (folder / BATCH_DIR).is_dir():
        folder = folder / BATCH_DIR
    xs, ys = zip(*(_load_batch(folder / f"data_batch_{i}") for i in range(1, 6)))
    x_test, y_test = _load_batch(folder / "test_batch")
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def keras_cache_dir() -> Path:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "datasets"


def download(origin: str = ORIGIN, file_hash: str | None = SHA256, cache_dir: Path | None = None) -> Path:
    """Download (once) and extract the python release; return the batch folder.

    Uses ``keras.utils.get_file`` with Keras' own cache, so an existing
    ``keras.datasets.cifar10`` download is reused and nothing is fetched twice.
    """
    from edgecnn.data import archive

    cache_dir = Path(cache_dir) if cache_dir else keras_cache_dir()
    for known in (cache_dir / "cifar-10-batches-py-target" / BATCH_DIR, cache_dir / BATCH_DIR,
                  cache_dir / "cifar-10-batches-py-edgecnn" / BATCH_DIR):
        if (known / "test_batch").is_file():
            return known
    tarball = cache_dir / "cifar-10-python.tar.gz"
    if not tarball.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)  # else Keras falls back to /tmp/.keras
        try:
            from edgecnn._tf import keras

            got = keras.utils.get_file(
                fname="cifar-10-python.tar.gz", origin=origin, file_hash=file_hash, cache_dir=str(cache_dir.parent),
                cache_subdir=cache_dir.name,
            )
        except Exception as exc:  # urllib, SSL and hash errors all mean the same to the user
            raise EdgeCNNError(
                f"cannot download CIFAR-10 from {origin} ({type(exc).__name__}: {exc}); offline? pass a local copy "
                "with --data path/to/cifar-10-python.tar.gz (or an extracted cifar-10-batches-py folder)"
            ) from None
        tarball = Path(got)
    out = archive.extract(tarball, cache_dir / "cifar-10-batches-py-edgecnn")
    return out / BATCH_DIR if (out / BATCH_DIR).is_dir() else out


def is_cifar_source(path: Path) -> bool:
    if path.is_dir():
        return (path / "test_batch").is_file() or (path / BATCH_DIR / "test_batch").is_file()
    return path.is_file() and path.name.startswith("cifar-10-python") and path.name.endswith((".tar.gz", ".tgz"))


def load(source: str | Path | None = None):
    """Return (x_train, y_train, x_test, y_test, classes) from the download or a local copy."""
    from edgecnn.data import archive

    if source is None:
        folder = download()
    else:
        path = Path(source)
        folder = archive.extract(path) if path.is_file() else path
    x_train, y_train, x_test, y_test = load_batches(folder)
    return x_train, y_train, x_test, y_test, list(CLASSES)
