"""Shared fixtures: one tiny trained run (16x16 shapes, a few filters) and its exports, built once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_ARCH = "C: 8n 16n 32n gap"
TINY_DATA = "shapes:2000"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep extraction and folder caches out of the user's home."""
    os.environ["EDGECNN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["KERAS_HOME"] = str(tmp_path_factory.mktemp("keras_home"))
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny run: 16x16 shapes, 8 epochs, a few thousand parameters."""
    from edgecnn.train import TrainConfig, train

    runs_dir = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(data=TINY_DATA, image_size=16, arch=TINY_ARCH, epochs=8, batch_size=32, lr=1e-2,
                      augment="none", runs_dir=str(runs_dir), name="tiny")
    return train(cfg, log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_exports(tiny_run) -> Path:
    """All six exports of the tiny run, verified."""
    from edgecnn.export import ExportConfig, export

    export(ExportConfig(run=str(tiny_run), formats="all", calib_samples=100, verify_samples=100),
           log=lambda m: None)
    return tiny_run / "exports"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (tests that write into a run)."""
    dst = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("exports"))
    return dst


def write_image(path: Path, size=(20, 12), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    # Seeded from the path's last two parts: str hashes change per process (PYTHONHASHSEED), and a test whose
    # pixels changed from run to run failed once in CI (a pruned model scored 11/12 on a test it passes).
    rng = np.random.default_rng(zlib.crc32("/".join(Path(path).parts[-2:]).encode()))
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] = color
    img = Image.fromarray(arr).convert(mode)
    img.save(path, format=fmt)
    return path


def make_folder(root: Path, classes=("cat", "dog"), per_class=6, size=(20, 12), ext=".png") -> Path:
    for i, c in enumerate(classes):
        for j in range(per_class):
            write_image(root / c / f"{j:03d}{ext}", size=size, color=(40 * i, 200 - 40 * i, 90))
    return root


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (fast); return (exit code, stdout, stderr)."""
    from edgecnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err



def quant_debug_trials(capsys, run, *options: str, samples: int = 80) -> tuple[dict, dict]:
    """``edgecnn quant-debug RUN OPTIONS --float-trials 2 --json`` on ``samples`` test images: (its result, its
    float_trials), checked to be the two lowest-SQNR layers' trials on that many images."""
    import json

    code, out, err = run_main(capsys, "quant-debug", str(run), *options, "--samples", str(samples),
                              "--float-trials", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    trials = result["float_trials"]
    assert [t["layer"] for t in trials["layers"]] == result["lowest_sqnr"][:2] and trials["images"] == samples
    return result, trials

# Runs a script (argv[1:]) with TensorFlow, Keras and edgecnn made unimportable: the standalone scripts' test.
NO_TF_BLOCK = ("import runpy, sys\n"
               "for name in ('tensorflow', 'keras', 'tf_keras', 'edgecnn'):\n"
               "    sys.modules[name] = None  # importing any of them now fails\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
