"""Run directories: ``runs/<name>/`` is the hand-off between commands."""

from __future__ import annotations

import re
from pathlib import Path

from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import ensure_dir, read_json

DEFAULT_RUNS_DIR = Path("runs")
MODEL_FILE = "model.keras"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def allocate(runs_dir: str | Path = DEFAULT_RUNS_DIR, name: str | None = None, exist_ok: bool = False) -> Path:
    """Create and return a fresh run folder. ``os.mkdir`` makes the choice atomic across processes."""
    root = ensure_dir(runs_dir)
    if name is not None:
        if not _NAME.match(name):
            raise EdgeCNNError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            if not exist_ok:
                raise EdgeCNNError(f"run {path} already exists; choose another --name") from None
        return path
    existing = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"run(\d+)", p.name))]
    n = max(existing, default=0) + 1
    while True:
        path = root / f"run{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def latest(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run whose model.keras was written last."""
    root = Path(runs_dir)
    candidates = [p for p in root.glob(f"*/{MODEL_FILE}")] if root.is_dir() else []
    if not candidates:
        raise EdgeCNNError(f"no trained run in {root}/; train one first with `edgecnn train` (or pass RUN)")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns).parent


def resolve(run: str | None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """A run folder from an argument: None (latest), a folder path, or a run name under runs_dir."""
    if run is None:
        return latest(runs_dir)
    p = Path(run)
    for candidate in (p, Path(runs_dir) / run):
        if candidate.is_dir():
            if not (candidate / MODEL_FILE).is_file():
                raise EdgeCNNError(f"run {candidate} has no {MODEL_FILE} (training did not finish?)")
            return candidate
    raise EdgeCNNError(f"run {run!r} not found (looked for {p} and {Path(runs_dir) / run})")


def labels(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "labels.json", "labels file")


def config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    return read_json(path, "run config") if path.is_file() else {}


def data_source(saved: dict) -> str | None:
    """The data a run's config.json ``saved`` names: ``data`` as typed, or its absolute ``data_path`` where
    the typed path was relative to another directory than this one."""
    src = saved.get("data")
    if src and saved.get("data_path"):
        from edgecnn.data import local_path

        typed = local_path(src)
        if typed is not None and not typed.exists() and Path(saved["data_path"]).exists():
            return saved["data_path"]
    return src


def architecture(cfg: dict) -> str | None:
    """The network a run trained, from its config.json ``cfg``: the spec it recorded (``arch_spec``; a preset of the
    name in ``arch`` may stand for another network since), else ``arch`` (runs from before arch_spec)."""
    return cfg.get("arch_spec") or cfg.get("arch")

