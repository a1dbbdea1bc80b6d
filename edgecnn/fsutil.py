"""Atomic file writing: every artifact goes to a temp name and is renamed when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgecnn.errors import EdgeCNNError


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: no space left on device"
    if exc.errno == errno.EFBIG:
        return f"cannot write {path}: file too large (disk quota or file-size limit)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied"
    return f"cannot write {path}: {exc.strerror or exc}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents); raise EdgeCNNError if it cannot be created."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeCNNError(_describe_os_error(p, exc)) from None
    if not os.access(p, os.W_OK):
        raise EdgeCNNError(f"cannot write {p}: permission denied")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` keeps the extension for writers that look at it (Keras, matplotlib).
    """
    final = Path(path)
    ensure_dir(final.parent)
    suffix = final.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as exc:
        raise EdgeCNNError(_describe_os_error(final, exc)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists() or tmp_path.stat().st_size == 0:
            raise EdgeCNNError(f"writing {final} produced no data")
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts get normal permissions
        os.replace(tmp_path, final)
    except OSError as exc:
        raise EdgeCNNError(_describe_os_error(final, exc)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise EdgeCNNError(_describe_os_error(Path(path), exc)) from None
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks; of a folder (a SavedModel), of each file's path
    relative to it and bytes, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EdgeCNNError(f"{what} not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCNNError(f"{what} {p} is not valid JSON: {exc}") from None
    if not isinstance(data, (dict, list)):
        raise EdgeCNNError(f"{what} {p} is not a JSON object")
    return data
