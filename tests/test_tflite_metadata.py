import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_TF_BLOCK, run_main
from edgecnn.errors import EdgeCNNError
from edgecnn.export import ExportConfig, export
from edgecnn.export import tflite_metadata as tm
from edgecnn.inspect import format_text, inspect
from edgecnn.runners import open_runner

ROOT = Path(__file__).resolve().parents[1]
TFLITE = ["model_float32.tflite", "model_float16.tflite", "model_dynamic.tflite", "model_int8.tflite"]
MEDIAPIPE = "mediapipe==1.2.3"  # its own venv: MediaPipe pins absl-py~=2.3, tfmot (edgecnn's) absl-py~=1.2


@pytest.fixture(scope="module")
def bare(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's float32 and int8 TFLite files exported with --no-metadata."""
    dst = tmp_path_factory.mktemp("bare") / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("exports"))
    report = export(ExportConfig(run=str(dst), formats="tflite", metadata=False, calib_samples=100,
                                 verify_samples=100), log=lambda m: None)
    assert report["tflite_metadata"] is False and not any(e["tflite_metadata"] for e in report["exports"])
    from edgecnn import report as run_report

    md = run_report.write(dst)[0].read_text()
    assert "## Exports" in md and "carry TFLite metadata" not in md
    return dst / "exports"


def test_every_tflite_export_carries_labels_and_normalization(tiny_exports):
    names = json.loads((tiny_exports / "labels.json").read_text())["class_names"]
    report = json.loads((tiny_exports / "export_report.json").read_text())
    assert report["tflite_metadata"] is True
    assert {e["file"]: e.get("tflite_metadata") for e in report["exports"]} == \
        {**dict.fromkeys(TFLITE, True), "model_float32.onnx": None, "model_int8.onnx": None}
    for name in TFLITE:
        info = inspect(tiny_exports / name)
        md = info["tflite_metadata"]
        assert md["labels"] == names and md["label_files"] == ["labels.txt"], name
        assert md["normalization"] == {"mean": [0.0], "std": [1.0]} and md["color_space"] == "RGB"
        assert md["min_parser_version"] == "1.0.0" and md["author"] == "edgecnn"
        assert f"{len(names)}-class" in md["description"] and name.split("_")[1].split(".")[0] in md["description"]
        with zipfile.ZipFile(tiny_exports / name) as z:  # the file doubles as a zip holding labels.txt
            assert z.read("labels.txt").decode().splitlines() == names
        assert f"TFLite metadata: RGB image, mean [0.0] std [1.0], {len(names)} labels in labels.txt" \
            in format_text(info)


def test_metadata_changes_no_output_and_adds_under_a_kilobyte(tiny_exports, bare):
    x = np.random.default_rng(5).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    for name in ("model_float32.tflite", "model_int8.tflite"):
        plain = (bare / name).read_bytes()
        assert tm.read(plain) is None and "TFLite metadata: none" in format_text(inspect(bare / name))
        with_md = tm.populate(plain, json.loads((bare / "labels.json").read_text()), "test")
        assert 0 < len(with_md) - len(plain) < 1024
        path = bare.parent / f"md_{name}"
        path.write_bytes(with_md)
        assert np.array_equal(open_runner(bare / name).predict(x), open_runner(path).predict(x))
        with pytest.raises(EdgeCNNError, match="already has TFLITE_METADATA"):
            tm.populate(with_md, {"class_names": ["a"], "input_shape": [16, 16, 3]}, "test")


def test_class_names_in_any_script_and_none_with_a_line_break(bare):
    plain = (bare / "model_int8.tflite").read_bytes()
    names = ["café", "猫", "a b", "x,y", *map(str, range(6))]
    assert tm.read(tm.populate(plain, {"class_names": names, "input_shape": [16, 16, 3]}, "int8"))["labels"] == names
    with pytest.raises(EdgeCNNError, match=r"class name 'a\\nb' has a line break, which labels.txt cannot hold"):
        tm.populate(plain, {"class_names": ["a\nb", *names[1:]], "input_shape": [16, 16, 3]}, "int8")


@pytest.mark.parametrize("dtype, shape, labels, takes, why", [
    ("uint8", [1, 16, 16, 3], ["a", "b"], True, "with the 2 class names"),
    ("float32", [1, 16, 16, 3], None, False, "float input without TFLite metadata"),
    ("uint8", [1, 16, 16, 3], None, True, "without class names"),
    ("int8", [1, 16, 16, 3], ["a", "b"], False, "int8 input (it takes uint8 or float32"),
    ("float32", [1, 16, 16, 1], ["a", "b"], False, "input shape [1, 16, 16, 1] (it takes RGB images"),
])
def test_inspect_says_whether_mediapipe_takes_the_file(dtype, shape, labels, takes, why):
    """The rules measured with MediaPipe 1.2.3 (the grayscale and int8-input refusals by hand, the others in
    test_mediapipe_classifies_every_tflite_export_as_litert_does)."""
    from edgecnn.inspect import mediapipe_verdict

    info = {"inputs": [{"dtype": dtype, "shape": shape}], "tflite_metadata": labels and {"labels": labels}}
    verdict = mediapipe_verdict(info)
    assert verdict["takes"] is takes and why in verdict["why"], verdict


def test_grayscale_models_say_so():
    labels = {"class_names": ["x", "y"], "input_shape": [8, 8, 1]}
    blob = tm.build(labels, "float32", "float32", "0")
    assert blob[4:8] == b"M001"
    from flatbuffers import encode, packer

    root = tm._Table(blob, encode.Get(packer.uoffset, blob, 0))
    image = root.tables(3)[0].tables(2)[0].table(3).table(1)
    assert image.byte(0) == tm.GRAYSCALE


def test_a_lone_tflite_file_predicts_with_its_own_labels(tiny_exports, bare, tmp_path, capsys):
    """Copied away from labels.json, the file still names its classes: predict and infer_tflite.py read the
    labels.txt zipped into it; a file without metadata is one error line."""
    from conftest import write_image

    picture = write_image(tmp_path / "pic.png", size=(16, 16))
    lone = tmp_path / "lone" / "model_int8.tflite"
    lone.parent.mkdir()
    shutil.copyfile(tiny_exports / "model_int8.tflite", lone)
    code, out, err = run_main(capsys, "predict", str(lone), str(picture), "--json")
    names = json.loads((tiny_exports / "labels.json").read_text())["class_names"]
    top = json.loads(out)["results"][0]["top"][0]
    assert code == 0 and top["class"] in names, err
    script = tmp_path / "lone" / "infer_tflite.py"
    shutil.copyfile(tiny_exports / "infer_tflite.py", script)
    run = subprocess.run([sys.executable, "-c", NO_TF_BLOCK, str(script), str(lone), str(picture)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split(": ")[1].split(",")[0] == f"{top['class']} {top['probability']:.3f}"
    shutil.copyfile(bare / "model_int8.tflite", lone)
    code, out, err = run_main(capsys, "predict", str(lone), str(picture))
    assert code == 2 and err.strip().count("\n") == 0 and "no labels.json beside" in err
    run = subprocess.run([sys.executable, "-c", NO_TF_BLOCK, str(script), str(lone), str(picture)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.strip() == f"error: no labels.json beside {lone} and no labels.txt in it"


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory) -> str:
    """A Python with MediaPipe: $EDGECNN_MEDIAPIPE_PYTHON, else a venv made here from the package registry
    (skipped, saying why, where the registry cannot be reached)."""
    given = os.environ.get("EDGECNN_MEDIAPIPE_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("mediapipe") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    (venv / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(venv / "tmp"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", MEDIAPIPE],
                         capture_output=True, text=True, timeout=900, env=env)
    if out.returncode:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        pytest.skip(f"pip install {MEDIAPIPE} failed: {lines[-1] if lines else out.returncode}")
    shutil.rmtree(venv / "tmp")
    return str(venv / "bin" / "python")


@pytest.mark.slow
def test_mediapipe_classifies_every_tflite_export_as_litert_does(tiny_run, tiny_exports, bare, mediapipe_python):
    """MediaPipe Tasks' ImageClassifier (what Android, iOS and web apps load a .tflite classifier with) reads the
    metadata: it takes each export, names the classes and scores exactly as edgecnn's LiteRT runner does
    (tools/compare_mediapipe.py); a float file without metadata it refuses, and the tool exits 1."""
    def compare(run: Path, *extra: str) -> tuple[int, list[dict]]:
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_mediapipe.py"), str(run),
                              "--mediapipe-python", mediapipe_python, "--samples", "40", "--json", *extra],
                             capture_output=True, text=True, timeout=600)
        assert out.stdout.strip(), out.stderr[-2000:]
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["frame"] == (extra[1] if extra else None) and doc["fit"] == ("squash" if extra else None)
        return out.returncode, doc["rows"]

    code, rows = compare(tiny_run)
    rows_ok = rows
    assert code == 0 and [r["file"] for r in rows] == sorted(TFLITE), rows
    for r in rows:
        assert r["status"] == "ok" and r["mediapipe"] == MEDIAPIPE.split("==")[1] and r["images"] == 40, r
        assert r["class_names_match"] and r["max_abs_diff"] < 1e-6 and r["agreement"] == 1.0, r
        assert r["mediapipe_accuracy"] == r["litert_accuracy"] > 0.2, r  # chance: 0.1
    # Frames of another size: MediaPipe fits them itself (it squashes, with its own interpolation), LiteRT gets
    # them as edgecnn trained the run (squash): both classify, with their own scores.
    code, rows = compare(tiny_run, "--frame", "24x20")
    assert code == 0 and all(r["status"] == "ok" and r["class_names_match"] for r in rows), rows
    code, rows = compare(bare.parent)
    float32 = next(r for r in rows if r["file"] == "model_float32.tflite")
    assert code == 1 and float32["status"] == "refused" and "NormalizationOptions" in float32["error"], rows
    int8 = next(r for r in rows if r["file"] == "model_int8.tflite")  # uint8 input: runs, nameless
    assert int8["status"] == "ok" and not int8["class_names_match"], rows
    # inspect's verdict is what MediaPipe did, file by file
    for folder, ran in ((tiny_exports, rows_ok), (bare, rows)):
        for r in ran:
            verdict = inspect(folder / r["file"])["mediapipe_image_classifier"]
            assert verdict["takes"] == (r["status"] == "ok"), (r, verdict)
            assert ("class names of its metadata" in verdict["why"]) == bool(r.get("class_names_match")), (r, verdict)
