import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_TF_BLOCK, cli, run_main

COMMANDS = ["train", "import", "summary", "evaluate", "export", "inspect", "benchmark", "run", "predict", "doctor",
            "report"]


def test_help_imports_no_tensorflow():
    code = ("import sys; from edgecnn.cli import main\n"
            "for args in (['--help'],) + tuple([c, '--help'] for c in %r):\n"
            "    try: main(args)\n"
            "    except SystemExit as e: assert e.code == 0, (args, e.code)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "print('clean')" % COMMANDS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-1500:]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_and_an_example(capsys, command):
    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0 and "Example: edgecnn " in out


def _one_line_error(code, err):
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["train", "--data", "/no/such/folder"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "many"],
    ["train", "--optimizer", "lion"],
    ["train", "--arch", "C: 32q"],
    ["train", "--augment", "wobble"],
    ["train", "--translate", "1.5"],
    ["train", "--translate-fill", "wrap"],
    ["train", "--device", "tpu"],
    ["train", "--data", "shapes:5"],
    ["summary", "C: | D:"],
    ["evaluate", "nope", "--runs-dir", "/no/runs"],
    ["export", "--runs-dir", "/no/runs"],
    ["export", "missing.keras"],
    ["export", "--format", "coreml", "--runs-dir", "/no/runs"],
    ["benchmark", "--runs-dir", "/no/runs"],
    ["benchmark", "--warmup", "lots", "--runs-dir", "/no/runs"],
    ["benchmark", "--batch-sizes", "1,x"],
    ["inspect", "/no/model.tflite"],
    ["inspect", "model.pt"],
    ["predict", "/no/model.onnx", "x.png"],
    ["report", "--runs-dir", "/no/runs"],
    ["finetune", "--qat", "--runs-dir", "/no/runs"],
    ["finetune", "--qat", "--prune", "0.5", "--runs-dir", "/no/runs"],
    ["finetune", "--runs-dir", "/no/runs"],
    ["sweep", "--grid", "depth=3"],
    ["sweep"],
    ["sweep", "--arch", "C: 8x"],
    ["run", "--epochs", "0"],
    ["run", "--data", "/no/such/data"],
    ["run", "--threads", "0"],
    ["run", "--max-regression", "0.5"],
    ["run", "--baseline", "/no/such/benchmark.json"],
    ["benchmark", "--baseline", "/no/such/benchmark.json", "--runs-dir", "/no/runs"],
    ["predict", "model.h5", "x.png"],
    ["export", "--opset", "99", "--runs-dir", "/no/runs"],
    ["export", "--onnx-target", "gpu", "--runs-dir", "/no/runs"],
    ["frobnicate"],
    ["train", "--no-such-option"],
    ["train", "--image-size", "24x"],
    ["evaluate", "--min-accuracy", "87"],
    ["evaluate", "/no/model_int8.tflite"],
    ["train", "--image-size", "24x1000"],
    ["summary", "basic", "--image-size", "tall"],
    ["sweep", "--image-size", "0"],
])
def test_bad_input_is_one_line_and_non_zero(capsys, args):
    code, _, err = run_main(capsys, *args)
    _one_line_error(code, err)


@pytest.mark.parametrize("option, value", [("--onnx-target", "gpu"), ("--onnx-input", "int8"), ("--io-dtype", "int16"),
                                           ("--onnx-layout", "hwc"), ("--export-batch", "8"), ("--opset", "99")])
def test_run_refuses_a_bad_export_option_before_training(capsys, tmp_path, option, value):
    """A bad export option is one line before any training: no run directory, no minutes lost."""
    code, _, err = run_main(capsys, "run", "--data", "shapes:200", "--image-size", "16", "--epochs", "1",
                            "--runs-dir", str(tmp_path / "runs"), option, value)
    _one_line_error(code, err)
    assert option in err and not (tmp_path / "runs").exists()


def test_a_run_whose_data_has_moved_says_to_pass_data(capsys, run_copy, tmp_path):
    cfg = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(cfg | {"data": str(tmp_path / "gone")}))
    for command in ("export", "benchmark", "evaluate", "quant-debug"):
        code, _, err = run_main(capsys, command, str(run_copy))
        _one_line_error(code, err)
        assert "no such file or folder" in err and f"it is the data {run_copy} was trained on: pass --data" in err


def test_inspect_int8_tflite_shows_uint8_input_with_scale(capsys, tiny_exports):
    code, out, _ = run_main(capsys, "inspect", str(tiny_exports / "model_int8.tflite"))
    assert code == 0 and "uint8" in out and "scale=" in out and "zero_point=" in out
    digest = hashlib.sha256((tiny_exports / "model_int8.tflite").read_bytes()).hexdigest()
    assert out.splitlines()[1] == f"  sha256: {digest}"
    code, out, _ = run_main(capsys, "inspect", str(tiny_exports / "model_int8.onnx"), "--json")
    info = json.loads(out)
    assert info["opset"] == 17 and info["ops"]["QuantizeLinear"] >= 1


def test_inspect_corrupt_and_empty_files(capsys, tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    (tmp_path / "c.tflite").write_bytes(b"\x01" * 100)
    (tmp_path / "c.keras").write_bytes(b"zip? no")
    for name in ("e.onnx", "c.tflite", "c.keras"):
        code, _, err = run_main(capsys, "inspect", str(tmp_path / name))
        _one_line_error(code, err)
        assert name in err


@pytest.fixture(scope="module")
def sample_images(tiny_run, tmp_path_factory):
    from edgecnn.data import load

    ds = load("shapes:2000", image_size=16)
    folder = tmp_path_factory.mktemp("imgs")
    from PIL import Image

    for i in range(4):
        Image.fromarray(ds.x_test[i]).save(folder / f"img{i}.png")
    return folder


def test_predict_same_top_class_across_formats(capsys, tiny_exports, tiny_run, sample_images):
    tops = {}
    for model in (tiny_run / "model.keras", tiny_exports / "model_int8.tflite", tiny_exports / "model_float32.onnx",
                  tiny_exports / "model_int8.onnx"):
        code, out, _ = run_main(capsys, "predict", str(model), str(sample_images), "--json", "-k", "2")
        assert code == 0
        res = json.loads(out)["results"]
        assert len(res) == 4 and len(res[0]["top"]) == 2
        tops[model.name] = [r["top"][0]["class"] for r in res]
    assert len({tuple(v) for v in tops.values()}) == 1, tops


def test_predict_takes_a_run_directory_or_name_as_its_model_keras(capsys, tiny_run, sample_images, tmp_path):
    args = [str(sample_images), "--json"]
    code, out, _ = run_main(capsys, "predict", str(tiny_run / "model.keras"), *args)
    assert code == 0
    code, out_dir, _ = run_main(capsys, "predict", str(tiny_run), *args)
    assert code == 0
    assert json.loads(out_dir)["results"] == json.loads(out)["results"]
    code, out_name, _ = run_main(capsys, "predict", tiny_run.name, *args, "--runs-dir", str(tiny_run.parent))
    assert code == 0 and json.loads(out_name)["results"] == json.loads(out)["results"]
    code, _, err = run_main(capsys, "predict", str(tmp_path), *args)  # a folder that is no finished run
    assert code == 2 and err.count("\n") == 1 and str(tmp_path) in err and "no model.keras" in err
    code, _, err = run_main(capsys, "predict", "no-such-run", *args, "--runs-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "run 'no-such-run' not found" in err


def test_predict_reports_bad_images_and_continues(capsys, tiny_exports, sample_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code, out, err = run_main(capsys, "predict", str(tiny_exports / "model_int8.tflite"),
                              str(sample_images / "img0.png"), str(bad), str(tmp_path / "missing.png"))
    assert code == 1
    assert "img0.png:" in out
    assert "bad.jpg" in err and "missing.png" in err and "Traceback" not in err


def test_predict_on_a_device_runs_there_or_says_why_not(capsys, tiny_exports, tiny_run, sample_images):
    """--device cuda/tensorrt: the file runs on that provider, with the CPU's classes, or the command stops with
    one line naming the provider and why (here: no GPU; ONNX Runtime alone would quietly run on the CPU)."""
    model = str(tiny_exports / "model_float32.onnx")
    code, out, _ = run_main(capsys, "predict", model, str(sample_images), "--json")
    cpu = json.loads(out)
    assert code == 0 and cpu["device"] == "cpu"
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        code, out, err = run_main(capsys, "predict", model, str(sample_images), "--json", "--device", device)
        if code == 0:  # a machine with the GPU and libraries ONNX Runtime needs
            assert [r["top"][0]["class"] for r in json.loads(out)["results"]] == \
                [r["top"][0]["class"] for r in cpu["results"]]
        else:
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and (
                f"{provider} unavailable" in err or f"{provider} not in this onnxruntime build" in err), err
    code, _, err = run_main(capsys, "predict", str(tiny_exports / "model_int8.tflite"), str(sample_images),
                            "--device", "cuda")
    assert code == 2 and err == "error: litert does not run on cuda\n"
    code, _, err = run_main(capsys, "predict", str(tiny_run / "model.keras"), str(sample_images), "--device", "gpu")
    assert code == 2 and "--device must be one of cpu, cuda, tensorrt, got 'gpu'" in err


def test_predict_with_onnx_metadata_only(capsys, tiny_exports, sample_images, tmp_path):
    import shutil

    lone = tmp_path / "lone" / "m.onnx"
    lone.parent.mkdir()
    shutil.copy(tiny_exports / "model_float32.onnx", lone)
    code, out, _ = run_main(capsys, "predict", str(lone), str(sample_images / "img1.png"))
    assert code == 0 and "img1.png:" in out


def test_doctor_reports_versions_and_providers(capsys):
    from edgecnn.device import bfloat16_off

    code, out, _ = run_main(capsys, "doctor", "--json")
    info = json.loads(out)
    assert code == 0 and info["packages"]["tensorflow"]
    assert info["onnxruntime_providers"]["CPUExecutionProvider"] == "works"
    import importlib.util  # the micro extra (TFLite Micro check, --max-arena) is reported when installed

    assert bool(info["packages"]["tflite-micro"]) == (importlib.util.find_spec("tflite_micro") is not None)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert info["cpu_bfloat16"] == [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in cpuinfo]
    assert info["cpu_bfloat16_off"] == bfloat16_off()
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in cpuinfo]
    assert info["cpu_int8_dot"] == vnni  # none on the AMD EPYC of 2026-12-06: its int8 ONNX kernels saturate
    saturates = bool(cpuinfo) and not vnni and platform.machine().lower() in ("x86_64", "amd64")
    assert any("no VNNI" in w and "session.x64quantprecision=1" in w for w in info["warnings"]) == saturates
    native = info["cpu_bfloat16"] and not info["cpu_bfloat16_off"]
    gains = native and ("amx_bf16" in info["cpu_bfloat16"] or info["cpu_vendor"] == "AuthenticAMD")
    if not info["tensorflow_gpus"]:
        assert info["precision_auto"] == ("mixed_bfloat16" if gains else "float32")
    code, out, _ = run_main(capsys, "doctor")
    assert ("bfloat16 trained slower than float32" in out) == bool(native and not gains and not info["tensorflow_gpus"])
    assert info["cpu"] and (not cpuinfo or info["cpu"] in cpuinfo)
    for prov, status in info["onnxruntime_providers"].items():
        if prov != "CPUExecutionProvider" and not info["tensorflow_gpus"]:
            assert status != "works" or prov == "AzureExecutionProvider"
    from edgecnn.device import nvidia_gpus

    assert info["nvidia_gpus"] == nvidia_gpus()  # [] here: no NVIDIA driver
    warned = "NVIDIA driver lists" in " ".join(info["warnings"])
    assert warned == bool(info["nvidia_gpus"] and not info["tensorflow_gpus"])


def test_doctor_says_which_setting_leaves_native_bfloat16_unused(capsys, monkeypatch):
    from edgecnn.device import cpu_info

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    code, out, _ = run_main(capsys, "doctor")
    cpu_line = next(ln for ln in out.splitlines() if ln.startswith("cpu "))
    assert code == 0 and "native bfloat16: " in cpu_line
    assert ("unused: ONEDNN_MAX_CPU_ISA=AVX512_CORE" in cpu_line) == bool(cpu_info()["bfloat16"])
    assert "oneDNN kernels off" not in out
    from edgecnn._tf import tf

    if not tf.config.list_physical_devices("GPU"):  # a GPU would make auto mixed_float16 (tensor cores) or float32
        assert "train --precision auto         float32" in out  # capped below its bfloat16: not worth it
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN off: float32 trains slower too, and doctor says so
    code, out, _ = run_main(capsys, "doctor", "--json")
    info = json.loads(out)
    assert info["cpu_bfloat16_off"] == "TF_ENABLE_ONEDNN_OPTS=0"
    off = "TF_ENABLE_ONEDNN_OPTS=0 turns TensorFlow's oneDNN kernels off"
    warned = any(w.startswith(off) for w in info["warnings"])
    assert warned == (platform.machine().lower() in ("x86_64", "amd64"))


@pytest.mark.slow
def test_run_pipeline_end_to_end(tmp_path):
    """With --tta (plain exports are the other tests'): the files, the benchmark rows and the report say so."""
    out = cli("run", "--data", "shapes:400", "--image-size", "16", "--arch", "C: 8n 16n gap", "--epochs", "2",
              "--calib-samples", "50", "--tta", "--runs-dir", str(tmp_path / "runs"), "--name", "e2e", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "e2e"
    for name in ("model.keras", "report.md", "report.html", "benchmark.json", "benchmark.png",
                 "exports/model_int8.tflite", "exports/model_int8.onnx", "exports/export_report.json"):
        assert (run / name).is_file(), name
    md = (run / "report.md").read_text()
    for section in ("## Training", "## Learning curves", "## Confusion matrix", "## Exports", "## Benchmark"):
        assert section in md
    assert "The .tflite files carry TFLite metadata (class names, input normalization)" in md
    from edgecnn.device import auto_precision, cpu_info  # the training time names the processor it was measured on
    assert f"on CPU, {auto_precision([])} ({cpu_info()['name']}, {os.cpu_count()} cores) |" in md
    assert "data:image/png;base64," in (run / "report.html").read_text()
    assert "report:" in out.stdout and "| tflite-int8 (flip TTA) |" in out.stdout
    assert "Every file averages each image's output with its mirror image's (`export --tta`)" in md


def test_train_on_a_folder_of_large_non_square_jpegs(capsys, tmp_path):
    from conftest import make_folder

    root = make_folder(tmp_path / "photos", classes=("a", "b", "c"), per_class=8, size=(640, 360), ext=".jpg")
    code, out, err = run_main(capsys, "train", "--data", str(root), "--image-size", "24", "--epochs", "2",
                              "--arch", "C: 4n 8n gap", "--runs-dir", str(tmp_path / "runs"), "--name", "photos")
    assert code == 0, err
    labels = json.loads((tmp_path / "runs" / "photos" / "labels.json").read_text())
    assert labels["class_names"] == ["a", "b", "c"] and labels["input_shape"] == [24, 24, 3]
    assert (tmp_path / "runs" / "photos" / "model.keras").is_file()


def test_a_non_square_input_goes_through_train_export_benchmark_evaluate_and_predict(capsys, tmp_path):
    """--image-size HEIGHTxWIDTH: a 12x20 model from wide images, every export taking 12x20 images, a photo of
    another shape fitted to them by predict."""
    from PIL import Image

    from edgecnn.inspect import inspect

    rng = np.random.default_rng(0)
    root = tmp_path / "wide"
    for k, cls in enumerate(("red", "green", "blue")):
        for j in range(24):
            arr = rng.integers(0, 60, (15, 36, 3), dtype=np.uint8)
            arr[:, 12:24] = np.roll((230, 20, 20), k)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / cls / f"{j}.png")
    runs = str(tmp_path / "runs")
    code, out, err = run_main(capsys, "train", "--data", str(root), "--image-size", "12x20", "--epochs", "4",
                              "--arch", "C: 4n p 8n gap", "--batch-size", "16", "--lr", "0.02", "--runs-dir", runs,
                              "--name", "wide")
    assert code == 0, err
    run = tmp_path / "runs" / "wide"
    labels = json.loads((run / "labels.json").read_text())
    assert labels["input_shape"] == [12, 20, 3] and labels["image_size"] == [12, 20]
    assert json.loads((run / "config.json").read_text())["image_size"] == [12, 20]
    assert "12x20x3" in out
    code, _, err = run_main(capsys, "export", str(run), "--format", "all", "--quantize", "int8", "--runs-dir", runs)
    assert code == 0, err
    for name in ("model_int8.tflite", "model_int8.onnx"):
        assert inspect(run / "exports" / name)["inputs"][0]["shape"][1:] == [12, 20, 3], name
    code, _, err = run_main(capsys, "benchmark", str(run), "--formats", "keras,tflite-int8,onnx-int8", "--runs", "3",
                            "--warmup", "1", "--json", str(tmp_path / "b.json"), "--runs-dir", runs)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert code == 0 and [r["status"] for r in rows] == ["ok"] * 3, err
    assert min(r["accuracy"] for r in rows) >= 0.9, rows  # the class colour is the centre third
    accuracy = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    code, out, _ = run_main(capsys, "evaluate", str(run), "--runs-dir", runs)
    assert code == 0 and f"accuracy {accuracy:.4f}" in out
    photo = tmp_path / "photo.png"
    arr = rng.integers(0, 60, (60, 144, 3), dtype=np.uint8)
    arr[:, 48:96] = (20, 20, 230)
    Image.fromarray(arr).save(photo)
    for model in ("model_int8.tflite", "model_int8.onnx"):
        code, out, err = run_main(capsys, "predict", str(run / "exports" / model), str(photo), "--json")
        assert code == 0 and json.loads(out)["results"][0]["top"][0]["class"] == "blue", (model, out, err)
    code, out, _ = run_main(capsys, "summary", "C: 4n p 8n gap", "--image-size", "12x20")
    assert code == 0 and f"MACs per image: {4 * 27 * 240 + 8 * 36 * 60 + 8 * 10:,}" in out  # convs, 10 logits


def test_evaluate_scores_a_model_file_in_its_own_runtime_and_gates_on_min_accuracy(capsys, tiny_run, tiny_exports,
                                                                                  tmp_path):
    """evaluate FILE: an exported file scored by its runtime on its run's data (or --data for a file copied away,
    class names from its metadata); --min-accuracy exits 1 below the bar."""
    import shutil

    from conftest import TINY_DATA

    keras_accuracy = json.loads((tiny_run / "metrics.json").read_text())["test_accuracy"]
    code, out, err = run_main(capsys, "evaluate", str(tiny_exports / "model_float32.tflite"), "--json")
    got = json.loads(out)
    assert code == 0 and got["runtime"] == "litert", err
    assert abs(got["test_accuracy"] - keras_accuracy) <= 1 / got["test_images"]  # float32 TFLite is Keras's model
    code, out, _ = run_main(capsys, "evaluate", str(tiny_run / "model.keras"), "--json")
    own = json.loads(out)
    assert code == 0 and own["test_accuracy"] == keras_accuracy and own["runtime"] == "tensorflow"
    code, out, _ = run_main(capsys, "evaluate", str(tiny_exports / "model_int8.onnx"), "--json")
    in_run = json.loads(out)
    assert code == 0 and in_run["runtime"] == "onnxruntime"
    shutil.copy(tiny_exports / "model_int8.onnx", tmp_path / "shipped.onnx")  # no labels.json, no run around it
    code, _, err = run_main(capsys, "evaluate", str(tmp_path / "shipped.onnx"))
    _one_line_error(code, err)
    assert "no run beside it records its data; pass --data" in err
    code, out, _ = run_main(capsys, "evaluate", str(tmp_path / "shipped.onnx"), "--data", TINY_DATA, "--json")
    copied = json.loads(out)
    assert code == 0 and copied["class_names"] == in_run["class_names"]
    assert copied["test_accuracy"] == in_run["test_accuracy"] and copied["test_images"] == in_run["test_images"]
    accuracy = copied["test_accuracy"]
    code, _, err = run_main(capsys, "evaluate", str(tmp_path / "shipped.onnx"), "--data", TINY_DATA,
                            "--min-accuracy", str(round(accuracy + 0.005, 4)))
    assert code == 1 and f"gate: accuracy {accuracy:.4f} is below --min-accuracy" in err
    code, _, _ = run_main(capsys, "evaluate", str(tmp_path / "shipped.onnx"), "--data", TINY_DATA,
                          "--min-accuracy", str(round(accuracy - 0.005, 4)))
    assert code == 0


def test_error_lines_quote_a_library_error_by_its_first_line():
    from edgecnn.errors import first_line, short_list

    assert first_line(ValueError("bad shape\n  at layer 3\n")) == "bad shape"
    assert first_line(ValueError("x" * 500), 120) == "x" * 120
    assert first_line(KeyError()) == "KeyError" and first_line(RuntimeError("  \n")) == "RuntimeError"
    assert short_list(list("abcdef"), 3) == "a, b, c and 3 more" and short_list(["a"]) == "a"


@pytest.mark.parametrize("mode,recorded", [("crop", "bilinear-center-crop"), ("pad", "bilinear-letterbox-black")])
def test_a_run_trained_with_crop_or_pad_is_fitted_so_by_predict_and_the_standalone_scripts(capsys, tmp_path, mode,
                                                                                          recorded):
    """train --resize crop (pad) records its name in labels.json (and the ONNX metadata); predict and both
    standalone scripts then cut the centre of a wide photo (letterbox it) as training did, so they give the
    Keras model's probabilities on that image, not on the squashed one."""
    from PIL import Image

    from edgecnn.data.images import load_image
    from edgecnn.export import ExportConfig, export
    from edgecnn.model import load_keras
    from edgecnn.train import TrainConfig, train

    rng = np.random.default_rng(0)
    root = tmp_path / "wide"
    for k, cls in enumerate(("red", "green", "blue")):
        for j in range(24):  # the class colour in the centre, noise on the sides
            arr = rng.integers(0, 256, (12, 36, 3), dtype=np.uint8)
            arr[:, 12:24] = np.roll((230, 20, 20), k)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / cls / f"{j}.png")
    run = train(TrainConfig(data=str(root), image_size=12, resize=mode, arch="C: 4n p 8n gap", epochs=2,
                            batch_size=16, augment="none", runs_dir=str(tmp_path / "runs")), log=lambda m: None)
    assert json.loads((run / "labels.json").read_text())["input"]["resize"] == recorded
    export(ExportConfig(run=str(run), formats="all", verify_samples=16, calib_samples=32), log=lambda m: None)
    photo = tmp_path / "photo.png"
    arr = rng.integers(0, 256, (30, 90, 3), dtype=np.uint8)
    arr[:, 30:60] = (20, 20, 230)
    Image.fromarray(arr).save(photo)
    core = load_keras(run / "model.keras")
    fitted, squashed = (core.predict(load_image(photo, 12, 3, m)[None].astype(np.float32), verbose=0)[0]
                         for m in (mode, "squash"))
    assert np.abs(fitted - squashed).max() > 1e-3, "the test image must tell the two apart"
    capsys.readouterr()  # training's epoch lines
    code, out, err = run_main(capsys, "predict", str(run), str(photo), "--json", "--top-k", "3")
    assert code == 0, err
    got = {t["class"]: t["probability"] for t in json.loads(out)["results"][0]["top"]}
    names = json.loads((run / "labels.json").read_text())["class_names"]
    np.testing.assert_allclose([got[n] for n in names], fitted, atol=1e-5)
    for script, model in (("infer_tflite.py", "model_float32.tflite"), ("infer_onnx.py", "model_float32.onnx")):
        res = subprocess.run([sys.executable, "-c", NO_TF_BLOCK, str(run / "exports" / script),
                              str(run / "exports" / model), str(photo)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        first = res.stdout.split(": ")[1].split(",")[0].split()
        best = int(np.argmax(fitted))
        assert first == [names[best], f"{fitted[best]:.3f}"], (script, res.stdout)


def test_onnx_files_need_no_tensorflow_and_a_missing_one_is_one_line(tiny_exports, tiny_run, tmp_path):
    """A deployment box with ONNX Runtime and no TensorFlow (as the H100 machine was): predict and inspect of an
    ONNX file work; a command that needs TensorFlow says so in one line and exits 1, not as an internal error."""
    import os

    from conftest import write_image

    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nfor name in ('tensorflow', 'keras', 'tf_keras'):\n    sys.modules[name] = None\n")
    env = dict(os.environ, PYTHONPATH=str(block))
    img = write_image(tmp_path / "a.png", size=(16, 16))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    pred = run("predict", str(tiny_exports / "model_int8.onnx"), str(img), "--json")
    assert pred.returncode == 0, pred.stderr
    top = json.loads(pred.stdout)["results"][0]["top"][0]
    assert top["class"] in json.loads((tiny_run / "labels.json").read_text())["class_names"] and top["probability"] > 0
    assert run("inspect", str(tiny_exports / "model_float32.onnx")).returncode == 0
    ev = run("evaluate", str(tiny_run))
    lines = ev.stderr.strip().splitlines()
    assert ev.returncode == 1 and len(lines) == 1, ev.stderr
    assert lines[0].startswith("error: this needs tensorflow, which does not import here") and "pip install" in lines[0]
