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
    total = 0
    with tarfile.open(archive, "r:*") as tf:
        for count, member in enumerate(tf, 1):
            if count > MAX_MEMBERS:
                raise EdgeCNNError(f"{archive}: more than {MAX_MEMBERS} members; refused")
            name = _check_name(archive, member.name)
            if member.issym() or member.islnk():
                raise EdgeCNNError(f"{archive}: refused link member {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise EdgeCNNError(f"{archive}: refused special member {member.name!r}")
            if not name:
                continue
            target = out / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            total += member.size
            if total > MAX_TOTAL_BYTES:
                raise EdgeCNNError(f"{archive}: unpacks to more than {MAX_TOTAL_BYTES} bytes; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _extract_zip(archive: Path, out: Path) -> None:
    total = 0
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise EdgeCNNError(f"{archive}: more than {MAX_MEMBERS} members; refused")
        for info in infos:
            name = _check_name(archive, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise EdgeCNNError(f"{archive}: refused link member {info.filename!r}")
            if not name:
                continue
            target = out / name
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise EdgeCNNError(f"{archive}: unpacks to more than {MAX_TOTAL_BYTES} bytes; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def single_root(folder: Path) -> Path:
    """Descend through a lone top-level folder (``archive/cifar10/train`` -> ``archive/cifar10``)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    while len(entries) == 1 and entries[0].is_dir():
        folder = entries[0]
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return folder
