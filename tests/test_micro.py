"""TFLite Micro check, C array export and the standalone inference scripts."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import NO_TF_BLOCK as BLOCK, run_main
from edgecnn.errors import EdgeCNNError

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def micro_run(tiny_exports, tiny_run, tmp_path_factory):
    import shutil

    from edgecnn.export import ExportConfig, export

    run = tmp_path_factory.mktemp("m") / "run"
    shutil.copytree(tiny_run, run)
    report = export(ExportConfig(run=str(run), formats="tflite", quantize="int8", calib_samples=50,
                                 verify_samples=64, micro=True, micro_samples=100, c_array=True), log=lambda m: None)
    return run, report


def test_micro_finds_the_arena_and_matches_litert(micro_run):
    run, report = micro_run
    m = report["micro"]
    assert m["ops_supported"] and 1 <= m["arena_kb"] < 1024
    assert m["flash_kb"] == -(-(run / "exports" / "model_int8.tflite").stat().st_size // 1024)
    assert m["samples"] == 100 and abs(m["accuracy"] - m["litert_accuracy"]) <= 0.03
    assert m["agreement_with_litert"] >= 0.95
    from edgecnn import micro

    blob = (run / "exports" / "model_int8.tflite").read_bytes()
    with pytest.raises(micro.ArenaTooSmall):  # the arena found is the smallest, to 1 KB
        micro.interpreter(blob, (m["arena_kb"] - 1) * 1024).invoke()


def test_c_array_compiles_and_holds_the_model_bytes(micro_run, tmp_path):
    run, report = micro_run
    exports = run / "exports"
    header = (exports / "model_data.h").read_text()
    assert f"#define EDGECNN_TENSOR_ARENA_SIZE ({report['micro']['arena_kb']} * 1024)" in header
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdio>\n#include "model_data.h"\n'
                    'int main(int, char** argv) { FILE* f = std::fopen(argv[1], "wb");\n'
                    '  std::fwrite(g_model_data, 1, g_model_data_len, f); std::fclose(f);\n'
                    '  std::printf("%s %d\\n", g_class_names[0], EDGECNN_NUM_CLASSES); return 0; }\n')
    exe = tmp_path / "dump"
    cc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(exports), str(main),
                         str(exports / "model_data.cc"), "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert cc.returncode == 0, cc.stderr[-2000:]
    out = subprocess.run([str(exe), str(tmp_path / "dumped.tflite")], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["circle", "10"]
    assert (tmp_path / "dumped.tflite").read_bytes() == (exports / "model_int8.tflite").read_bytes()


def test_float_model_is_refused_by_micro(tiny_exports):
    from edgecnn import micro

    with pytest.raises(EdgeCNNError, match="needs the full-integer int8 export"):
        micro.check(tiny_exports / "model_float32.tflite", np.zeros((1, 16, 16, 3), np.uint8), np.zeros(1, int))


def test_micro_without_an_int8_export(run_copy):
    from edgecnn.export import ExportConfig, export

    with pytest.raises(EdgeCNNError, match="need the full-integer int8"):
        export(ExportConfig(run=str(run_copy), quantize="float16", micro=True, verify_samples=32),
               log=lambda m: None)




@pytest.mark.parametrize("script, model", [("infer_tflite.py", "model_int8.tflite"),
                                           ("infer_onnx.py", "model_int8.onnx"),
                                           ("infer_onnx.py", "model_float32.onnx")])
def test_standalone_scripts_need_no_tensorflow_and_agree_with_predict(capsys, tiny_exports, tmp_path, script, model):
    from PIL import Image

    from edgecnn.data import load

    x = load("shapes:2000", image_size=16).x_test[:3]
    images = []
    for i, img in enumerate(x):
        p = tmp_path / f"i{i}.png"
        Image.fromarray(img).resize((40, 30)).save(p)  # a different size: the script must resize like training
        images.append(str(p))
    # A large JPEG stored sideways with an EXIF orientation: decoded reduced and turned upright, like training.
    exif = Image.Exif()
    exif[0x0112] = 6
    big = tmp_path / "photo.jpg"
    Image.fromarray(x[0]).resize((300, 400)).transpose(Image.Transpose.ROTATE_90).save(big, exif=exif, quality=95)
    images.append(str(big))
    gray16 = tmp_path / "gray16.png"  # 16-bit grayscale: scaled to 8 bits, not clipped
    Image.fromarray(x[1].mean(-1).astype(np.uint16) * 257).save(gray16)
    images.append(str(gray16))
    out = subprocess.run([sys.executable, "-c", BLOCK, str(tiny_exports / script), str(tiny_exports / model), *images],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    standalone = [ln.split(": ")[1].split(",")[0].split() for ln in out.stdout.splitlines()]
    code, cli_out, _ = run_main(capsys, "predict", str(tiny_exports / model), *images, "--json")
    assert code == 0
    assert standalone == [[r["top"][0]["class"], f"{r['top'][0]['probability']:.3f}"]
                          for r in json.loads(cli_out)["results"]], "the same class with the same probability"


@pytest.mark.parametrize("script, model", [("infer_tflite.py", "model_int8.tflite"),
                                           ("infer_onnx.py", "model_int8.onnx")])
def test_standalone_scripts_refuse_a_float_tiff_as_predict_does(tiny_exports, tmp_path, script, model):
    from PIL import Image

    tiff = tmp_path / "depth.tif"
    Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), mode="F").save(tiff)
    out = subprocess.run([sys.executable, "-c", BLOCK, str(tiny_exports / script), str(tiny_exports / model),
                          str(tiff)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(f"{tiff}: 32-bit floating-point")


def test_an_op_tflite_micro_lacks_is_listed(tmp_path):
    from edgecnn import micro
    from edgecnn._tf import keras
    from edgecnn.export import tflite as tfl

    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, padding="same")(keras.layers.Rescaling(1 / 255)(inp)))
    x = keras.ops.top_k(x, 8)[0]  # TOPK_V2: a LiteRT builtin with int8 kernels, absent from TFLite Micro
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    calib = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tfl.convert(tfl.export_saved_model(model, tmp_path / "sm"), "int8", calib))
    with pytest.raises(EdgeCNNError, match="ops missing from TFLite Micro: TOPK_V2"):
        micro.check(path, calib[:2], np.zeros(2, int))
