"""Random bytes and mutated valid files into every loader: a correct load or the project's own error."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_image
from edgecnn.errors import EdgeCNNError

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)


def _mutate(blob: bytes, edits) -> bytes:
    b = bytearray(blob)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


def _accepts_or_refuses(fn):
    try:
        fn()
    except EdgeCNNError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


EDITS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(d / "d.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    return {"png": write_image(d / "a.png", size=(24, 16)).read_bytes(),
            "jpg": write_image(d / "a.jpg", size=(24, 16)).read_bytes(),
            "npz": (d / "d.npz").read_bytes(),
            "json": json.dumps({"class_names": ["a", "b"], "input_shape": [8, 8, 3]}).encode()}


@FUZZ
@given(data=st.binary(max_size=2048), kind=st.sampled_from(["png", "jpg", "npz", "json"]), edits=EDITS,
       mutate=st.booleans())
def test_file_loaders(tmp_path_factory, valid_files, data, kind, edits, mutate):
    from edgecnn.data import npz
    from edgecnn.data.images import load_image
    from edgecnn.fsutil import read_json

    blob = _mutate(valid_files[kind], edits) if mutate else data
    path = tmp_path_factory.mktemp("f") / f"x.{kind}"
    path.write_bytes(blob)
    loader = {"png": lambda: load_image(path, 16), "jpg": lambda: load_image(path, 16),
              "npz": lambda: npz.load(path), "json": lambda: read_json(path)}[kind]
    _accepts_or_refuses(loader)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_cifar_batch_loader(tmp_path_factory, data):
    from edgecnn.data.cifar10 import _load_batch

    path = tmp_path_factory.mktemp("c") / "data_batch_1"
    path.write_bytes(data)
    _accepts_or_refuses(lambda: _load_batch(path))


@FUZZ
@given(text=st.text(max_size=60))
def test_spec_parser(text):
    from edgecnn.spec import parse

    _accepts_or_refuses(lambda: parse(text))


@settings(max_examples=15, deadline=20000, suppress_health_check=list(HealthCheck), derandomize=True)
@given(edits=EDITS, truncate=st.integers(10, 100))
def test_keras_loader(tmp_path_factory, tiny_run, edits, truncate):
    from edgecnn.model import load_keras

    blob = (tiny_run / "model.keras").read_bytes()
    d = tmp_path_factory.mktemp("k")
    (d / "m.keras").write_bytes(_mutate(blob, edits))
    (d / "t.keras").write_bytes(blob[: len(blob) * truncate // 101])
    _accepts_or_refuses(lambda: load_keras(d / "m.keras"))
    _accepts_or_refuses(lambda: load_keras(d / "t.keras"))


# The start of a child's fuzz script: mutants(blob, n) yields (i, bytes) cut (every fifth) or with 1-6 bytes
# changed; attempt(load) counts a load that works or is the project's one-line error; anything else fails the child.
CHILD_FUZZ = """
import json, random
from pathlib import Path
from edgecnn.errors import EdgeCNNError
rnd = random.Random(0)
counts = {"ok": 0, "refused": 0}

def mutants(blob, n):
    for i in range(n):
        b = bytearray(blob)
        if i % 5 == 0:
            b = b[: rnd.randrange(len(b))]
        else:
            for _ in range(rnd.randint(1, 6)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        yield i, bytes(b)

def attempt(load):
    try:
        load()
        counts["ok"] += 1
    except EdgeCNNError as exc:
        assert str(exc) and "\\n" not in str(exc).strip(), str(exc)
        counts["refused"] += 1
"""


def fuzz_in_child(script: str) -> dict:
    """Run CHILD_FUZZ + ``script`` in a child, so that a native crash fails the test instead of the test run;
    return its counts."""
    out = subprocess.run([sys.executable, "-c", CHILD_FUZZ + textwrap.dedent(script)
                          + "\nprint('COUNTS', json.dumps(counts))\n"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-3000:]}"
    return json.loads(out.stdout.split("COUNTS", 1)[1])


def test_native_model_loaders_in_a_child(tiny_exports, tmp_path):
    """Mutated .tflite and .onnx files through inspect and predict: each loads or is a one-line error."""
    counts = fuzz_in_child(f"""
        import numpy as np
        from edgecnn.inspect import inspect
        from edgecnn.runners import open_runner
        for src in ("model_int8.tflite", "model_float32.tflite", "model_float32.onnx", "model_int8.onnx"):
            for i, blob in mutants(Path({str(tiny_exports)!r}, src).read_bytes(), 25):
                p = Path({str(tmp_path)!r}, f"m{{i}}{{Path(src).suffix}}")
                p.write_bytes(blob)
                attempt(lambda: (inspect(p), open_runner(p).predict(np.zeros((2, 16, 16, 3), np.uint8))))
    """)
    assert counts["ok"] + counts["refused"] == 100, counts


def test_h5_model_loader_in_a_child(tiny_run, tmp_path):
    """Mutated and cut Keras HDF5 model files through import's reader (HDF5's C library underneath): each loads or
    is a one-line error."""
    counts = fuzz_in_child(f"""
        from edgecnn import keras2
        from edgecnn.model import load_keras
        out = Path({str(tmp_path)!r})
        load_keras(Path({str(tiny_run)!r}, "model.keras")).save(out / "valid.h5")
        for i, blob in mutants((out / "valid.h5").read_bytes(), 40):
            (out / f"m{{i}}.h5").write_bytes(blob)
            attempt(lambda: keras2.load(out / f"m{{i}}.h5"))
    """)
    assert counts["refused"] > 0 and counts["ok"] + counts["refused"] == 40, counts
