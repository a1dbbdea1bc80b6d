"""Safe extraction of .tar.gz / .zip data sources (no traversal, no links, bounded size)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from edgecnn.errors import EdgeCNNError

MAX_MEMBERS = 500_000
MAX_TOTAL_BYTES = 8 * 1024**3

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def cache_root() -> Path:
    return Path(os.environ.get("EDGECNN_CACHE", Path.home() / ".cache" / "edgecnn"))


def _check_name(archive: Path, name: str) -> str:
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if norm.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise EdgeCNNError(f"{archive}: refused unsafe member path {name!r} (absolute or outside the archive)")
    return "/".join(parts)


def extract(archive: str | Path, dest: str | Path | None = None) -> Path:
    """Extract ``archive`` into ``dest`` (default: a cache folder keyed by the archive) and return it.

    Refuses absolute paths, ``..``, links and devices, more than MAX_MEMBERS files or
    MAX_TOTAL_BYTES. Extraction happens in a temp folder renamed when complete.
    """
    archive = Path(archive)
    st = archive.stat()
    if dest is None:
        key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        dest = cache_root() / "extracted" / f"{archive.name}-{key}"
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise EdgeCNNError(f"{archive}: cannot extract archive ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_tar(archive: Path, out: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        _write_members(archive, out, (
            (m.name, m.isdir(), m.issym() or m.islnk(), not (m.isfile() or m.isdir()), m.size,
             lambda m=m: tf.extractfile(m)) for m in tf))


def _extract_zip(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        _write_members(archive, out, (
            (i.filename, i.is_dir(), (i.external_attr >> 16) & 0o170000 == 0o120000, False, i.file_size,
             lambda i=i: zf.open(i)) for i in zf.infolist()))


def _write_members(archive: Path, out: Path, members) -> None:
    """Write (name, is_dir, is_link, is_special, size, open) members below ``out``, refusing the unsafe."""
    total = 0
    for count, (raw, is_dir, is_link, special, size, open_member) in enumerate(members, 1):
        if count > MAX_MEMBERS:
            raise EdgeCNNError(f"{archive}: more than {MAX_MEMBERS} members; refused")
        name = _check_name(archive, raw)
        if is_link:
            raise EdgeCNNError(f"{archive}: refused link member {raw!r}")
        if special:
            raise EdgeCNNError(f"{archive}: refused special member {raw!r}")
        if not name:
            continue
        target = out / name
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        total += size
        if total > MAX_TOTAL_BYTES:
            raise EdgeCNNError(f"{archive}: unpacks to more than {MAX_TOTAL_BYTES} bytes; refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)


def single_root(folder: Path) -> Path:
    """Descend through a lone top-level folder (``archive/cifar10/train`` -> ``archive/cifar10``)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    while len(entries) == 1 and entries[0].is_dir():
        folder = entries[0]
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return folder
