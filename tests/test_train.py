import json
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_ARCH, make_folder
from edgecnn.errors import EdgeCNNError
from edgecnn.train import TrainConfig, make_dataset, read_history, train

X86 = platform.machine().lower() in ("x86_64", "amd64")  # where the oneDNN-off warning applies (measured there)

RUN_FILES = {"model.keras", "labels.json", "config.json", "history.csv", "metrics.json", "curves.png",
             "confusion_matrix.png", "classification_report.txt", "summary.txt"}


def test_training_writes_a_complete_run_directory(tiny_run):
    assert RUN_FILES <= {p.name for p in tiny_run.iterdir()}
    assert not list(tiny_run.glob(".*tmp*")), "no temp files left behind"
    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "per_class_accuracy", "parameters", "macs", "train_seconds"):
        assert key in m
    assert m["test_accuracy"] > 0.3, "8 epochs on 10 shape classes learn well above chance (0.1)"
    labels = json.loads((tiny_run / "labels.json").read_text())
    assert labels["input_shape"] == [16, 16, 3] and len(labels["class_names"]) == 10
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["arch"] == TINY_ARCH and cfg["seed"] == 0 and cfg["versions"]["tensorflow"]
    hist = read_history(tiny_run / "history.csv")
    assert [r["epoch"] for r in hist] == list(range(1, 9)) and "val_accuracy" in hist[0]
    seconds = [r["seconds"] for r in hist]
    assert 0 < seconds[0] and seconds == sorted(seconds) and seconds[-1] <= m["train_seconds"]
    assert (tiny_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # trained with TensorFlow's fused BatchNorm kernel, saved with Keras's stock layer (no edgecnn class inside)
    assert m["fused_batchnorm"] is True
    with zipfile.ZipFile(tiny_run / "model.keras") as z:
        saved = z.read("config.json").decode()
    assert '"BatchNormalization"' in saved and "Fused" not in saved and "edgecnn" not in saved


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_saves_a_float32_model(tmp_path, precision):
    from edgecnn.device import cpu_info, precision_warning
    from edgecnn.model import load_keras

    lines = []
    run = train(TrainConfig(data="shapes:60", image_size=16, arch="C: 4n gap", epochs=1, batch_size=16,
                            precision=precision, augment="flip", whiten=True, runs_dir=str(tmp_path)),
                log=lines.append)
    core = load_keras(run / "model.keras")
    assert all(w.dtype == "float32" for w in core.weights)
    assert core.get_layer("conv1").compute_dtype == "float32"
    assert not core.get_layer("conv1").trainable, "--whiten's convolution stays frozen in the float32 rebuild"
    assert json.loads((run / "metrics.json").read_text())["precision"] == precision
    # bfloat16 without the CPU's own instructions is emulated: training says so (here, where it has them or not)
    warned = any(ln.startswith("warning: mixed_bfloat16 ") and "emulates it" in ln for ln in lines)
    cpu = cpu_info()
    assert warned == (precision == "mixed_bfloat16" and not (cpu["bfloat16"] and not cpu["bfloat16_off"]))
    none = {"bfloat16": [], "bfloat16_off": None}
    native = {"bfloat16": ["avx512_bf16"], "bfloat16_off": None, "vendor": "AuthenticAMD"}
    assert "without native bfloat16" in precision_warning("mixed_bfloat16", "cpu", none)
    assert not precision_warning("mixed_bfloat16", "cpu", native)
    assert "0.71-0.99x float32's speed" in precision_warning("mixed_bfloat16", "cpu",
                                                             native | {"vendor": "GenuineIntel"})
    assert "unused (DNNL_MAX_CPU_ISA=avx2)" in precision_warning("mixed_bfloat16", "cpu",
                                                                  native | {"bfloat16_off": "DNNL_MAX_CPU_ISA=avx2"})
    assert "Eigen" in precision_warning("mixed_bfloat16", "cpu", native | {"bfloat16_off": "TF_ENABLE_ONEDNN_OPTS=0"})
    assert not precision_warning("mixed_bfloat16", "gpu", none) and not precision_warning("float32", "cpu", none)
    # float16 on the CPU trains at a hundredth of float32's speed, whatever the CPU: always said
    assert any(ln.startswith("warning: mixed_float16 on the CPU:") for ln in lines) == (precision == "mixed_float16")
    assert "0.01x float32's speed" in precision_warning("mixed_float16", "cpu", native)
    assert not precision_warning("mixed_float16", "gpu", none)


def test_precision_auto_is_bfloat16_on_a_cpu_with_native_bfloat16(tmp_path):
    """--precision auto trains in mixed_bfloat16 where TensorFlow uses the CPU's bfloat16 instructions and
    they trained faster (AMX; AMD's AVX512-BF16), in float32 where it has none, a setting keeps oneDNN from
    them, or they are an Intel CPU's AVX512-BF16 alone (slower there), and what it picked is recorded."""
    from edgecnn.device import auto_precision, cpu_info, native_bfloat16

    none = {"bfloat16": [], "bfloat16_off": None, "vendor": "GenuineIntel"}
    native = {"bfloat16": ["avx512_bf16", "amx_bf16"], "bfloat16_off": None, "vendor": "GenuineIntel"}
    capped = native | {"bfloat16_off": "ONEDNN_MAX_CPU_ISA=AVX512_CORE"}
    intel_avx512 = native | {"bfloat16": ["avx512_bf16"]}
    amd_avx512 = intel_avx512 | {"vendor": "AuthenticAMD"}
    assert auto_precision([], none) == "float32" and auto_precision([], native) == "mixed_bfloat16"
    assert auto_precision([], capped) == "float32"
    assert auto_precision([], intel_avx512) == "float32" and auto_precision([], amd_avx512) == "mixed_bfloat16"
    assert [native_bfloat16(c) for c in (none, native, capped, intel_avx512)] == [False, True, False, True]
    run = train(TrainConfig(data="shapes:60", image_size=16, arch="C: 4n gap", epochs=1, batch_size=16,
                            runs_dir=str(tmp_path)), log=lambda _: None)
    cpu = cpu_info()
    gains = "amx_bf16" in cpu["bfloat16"] or (cpu["bfloat16"] and cpu["vendor"] == "AuthenticAMD")
    expected = "mixed_bfloat16" if gains and not cpu["bfloat16_off"] else "float32"
    assert json.loads((run / "metrics.json").read_text())["precision"] == expected
    saved = json.loads((run / "config.json").read_text())
    assert saved["precision_used"] == expected and saved["device_used"] == f"CPU, {expected}"
    # a resumed run keeps what auto picked when it started (its checkpoint has those layers), wherever it resumes
    from edgecnn.train import config_from_run

    cfg = {k: v for k, v in saved.items() if k not in ("device_used", "precision_used")}
    for used in ("mixed_bfloat16", "mixed_float16", "float32"):
        (run / "config.json").write_text(json.dumps(cfg | {"precision_used": used, "device_used": "CPU, float32"}))
        assert config_from_run(run).precision == used  # the structured key wins over the description
    # runs from before "precision_used": the description ends with it; before "device_used": auto as it was
    for started, resumes in (("CPU, mixed_bfloat16", "mixed_bfloat16"), ("1 GPU, mixed_float16", "mixed_float16"),
                             ("CPU, float32", "float32"), (None, "auto")):
        (run / "config.json").write_text(json.dumps(cfg | ({"device_used": started} if started else {})))
        assert config_from_run(run).precision == resumes
    (run / "config.json").write_text(json.dumps(cfg | {"precision": "float32", "precision_used": "mixed_bfloat16"}))
    assert config_from_run(run).precision == "float32"  # as asked, never overridden


@pytest.mark.parametrize("env, off", [({}, None),
                                      ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "ONEDNN_MAX_CPU_ISA=avx512_core"),
                                      ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, None),
                                      ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, None),
                                      ({"DNNL_MAX_CPU_ISA": " AVX2 "}, "DNNL_MAX_CPU_ISA=AVX2"),
                                      ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "TF_ENABLE_ONEDNN_OPTS=0"),
                                      ({"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "ALL"}, None)])
def test_bfloat16_off_names_the_setting_that_keeps_tensorflow_from_native_bfloat16(env, off):
    from edgecnn.device import bfloat16_off

    assert bfloat16_off(env) == off


@pytest.mark.parametrize("var, value", [("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"), ("TF_ENABLE_ONEDNN_OPTS", "0")])
def test_training_warns_when_onednn_cannot_use_native_bfloat16(tmp_path, monkeypatch, var, value):
    # a real child process whose oneDNN runs without the bfloat16 instructions (as on an AVX-512 CPU that
    # lacks them) or not at all (Eigen's kernels): it trains, emulated, and says so; where the CPU has none
    # anyway, it says that instead. With oneDNN off it also says that float32 training is slower.
    from conftest import cli
    from edgecnn.device import cpu_info

    monkeypatch.setenv(var, value)
    res = cli("train", "--data", "shapes:40", "--image-size", "16", "--arch", "C: 4n gap", "--epochs", "1",
              "--batch-size", "16", "--precision", "mixed_bfloat16", "--runs-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("warning: ")]
    why = f"unused ({var}={value})" if cpu_info()["bfloat16"] else "without native bfloat16"
    assert any(ln.startswith("warning: mixed_bfloat16 ") and why in ln and "emulates it" in ln for ln in warnings)
    onednn = [ln for ln in warnings if "turns TensorFlow's oneDNN kernels off" in ln]
    assert len(onednn) == (var == "TF_ENABLE_ONEDNN_OPTS" and X86), warnings


@pytest.mark.parametrize("value, warned", [("0", True), ("false", True), ("1", False), ("", False)])
def test_onednn_warning_only_when_turned_off(value, warned):
    from edgecnn.device import onednn_warning

    line = onednn_warning({"TF_ENABLE_ONEDNN_OPTS": value})
    assert bool(line) == (warned and X86) and (not line or line.startswith(f"TF_ENABLE_ONEDNN_OPTS={value} turns"))


def test_whiten_stays_frozen_through_training_and_into_the_saved_model(tmp_path):
    from edgecnn.model import load_keras

    run = train(TrainConfig(data="shapes:60", image_size=16, arch="C: 8n gap", epochs=2, batch_size=16, lr=0.05,
                            whiten=True, runs_dir=str(tmp_path)), log=lambda m: None)
    assert json.loads((run / "config.json").read_text())["whiten"] is True
    conv1 = load_keras(run / "model.keras").get_layer("conv1")
    kernel = conv1.get_weights()[0].reshape(27, 8)
    assert not conv1.trainable
    # filters 4-7 are still exactly the negatives of 0-3: no gradient step touched them
    assert abs(kernel[:, 4:] + kernel[:, :4]).max() == 0 and abs(kernel).max() > 0
    with pytest.raises(EdgeCNNError, match="--whiten needs a convolution"):
        train(TrainConfig(data="shapes:60", arch="D: 8", whiten=True, runs_dir=str(tmp_path / "mlp")))
    assert not (tmp_path / "mlp").exists()  # refused before a run directory is made


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    """The multi-GPU code path, on two logical CPU devices (a fresh process: devices split at start-up)."""
    code = (
        "from edgecnn.train import TrainConfig, train; import json;"
        f"r = train(TrainConfig(data='shapes:64', image_size=16, arch='C: 4n gap', epochs=2, batch_size=8,"
        f" augment='altflip,translate', cpu_replicas=2, runs_dir={str(tmp_path)!r}), log=print);"
        "print('DEVICE', json.load(open(r / 'metrics.json'))['device'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DEVICE MirroredStrategy over 2 logical CPU devices" in out.stdout


@pytest.mark.parametrize("augment, recomputed", [("flip", False), ("flip,translate", True), ("none", False)])
def test_batchnorm_statistics_are_recomputed_on_unaugmented_images_after_reshaping_augmentation(
        tmp_path, augment, recomputed):
    """Epochs long enough for Keras's moving averages (200 steps) still gathered them on translated images,
    which the deployed model never sees; mirrored ones have the statistics of the originals."""
    lines = []
    run = train(TrainConfig(data="shapes:250", image_size=16, arch="C: 4n gap", epochs=1, batch_size=1,
                            augment=augment, val_split=0.1, test_split=0.1, runs_dir=str(tmp_path)), log=lines.append)
    m = json.loads((run / "metrics.json").read_text())
    images = sum(m["train_class_counts"].values())
    assert m["batchnorm_momentum"] == 0.99 and images >= 200  # 200 steps per epoch and more: not short epochs
    assert m["batchnorm_recalibration_images"] == (images if recomputed else 0)
    said = [line for line in lines if line.startswith("BatchNorm:")]
    assert said == ([f"BatchNorm: moving averages gathered on augmented images (translate); "
                     f"statistics recomputed over {images} unaugmented training images"] if recomputed else [])


def test_short_epochs_still_give_batchnorm_the_statistics_of_the_data(tmp_path):
    """Three steps per epoch: Keras's 0.99 moving averages would still hold much of their initial 0 and 1,
    and a model that learned the data perfectly scored chance in inference mode (measured: 33%)."""
    folder = make_folder(tmp_path / "colours", classes=("red", "green", "blue"), per_class=40, size=(16, 16))
    run = train(TrainConfig(data=str(folder), image_size=16, arch="C: 8n p 16n gap", epochs=15, batch_size=32,
                            augment="none", runs_dir=str(tmp_path / "runs")), log=lambda m: None)
    m = json.loads((run / "metrics.json").read_text())
    assert m["batchnorm_momentum"] < 0.99 and m["batchnorm_recalibration_images"] == 96
    # 12 test and 12 validation images; runs scored 100% but once 11 of 12 in a full-suite run (TensorFlow's
    # CPU kernels are not bit-reproducible under load), so one image of slack; chance is 33%
    assert m["test_accuracy"] >= 11 / 12, "the classes differ in colour: learned, and kept in inference mode"
    assert read_history(run / "history.csv")[-1]["val_accuracy"] >= 11 / 12


def test_deterministic_training_keeps_keras_batchnorm_and_repeats_itself(tmp_path):
    """--deterministic trains with Keras's own BatchNorm ops (not the fused kernel) and two runs give the same
    model (a fresh process: TensorFlow's op determinism cannot be turned off again)."""
    code = (
        "from edgecnn.train import TrainConfig, train; from edgecnn.model import load_keras; import json;"
        "import numpy as np; k = []\n"
        "for name in ('a', 'b'):\n"
        f"    r = train(TrainConfig(data='shapes:60', image_size=16, arch='C: 4n 8n gap', epochs=2, batch_size=16,"
        f" deterministic=True, runs_dir={str(tmp_path)!r}, name=name), log=print)\n"
        "    print('FUSED', json.load(open(r / 'metrics.json'))['fused_batchnorm'])\n"
        "    k.append(load_keras(r / 'model.keras').get_layer('conv5').get_weights()[0])\n"
        "print('SAME', bool(np.array_equal(*k)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("FUSED False") == 2 and "SAME True" in out.stdout


def test_xla_is_reported_as_it_ran(tmp_path):
    """Keras compiles no XLA step with RandomTranslation in the model and silently trains without it."""
    for augment, expected in (("flip,translate", False), ("flip", True)):
        lines = []
        run = train(TrainConfig(data="shapes:60", image_size=16, arch="C: 4n gap", epochs=1, batch_size=16,
                                augment=augment, jit_compile=True, runs_dir=str(tmp_path)), log=lines.append)
        assert json.loads((run / "metrics.json").read_text())["xla"] is expected
        said = [ln for ln in lines if ln.startswith("--xla:")]
        refusal = "--xla: Keras trains without XLA: RandomTranslation cannot be compiled by it"
        assert said == ([] if expected else [refusal])


def test_bad_training_options():
    for kwargs, needle in (({"epochs": 0}, "--epochs"), ({"optimizer": "rmsprop"}, "--optimizer"),
                           ({"schedule": "step"}, "--schedule"), ({"lr": -1.0}, "--lr"), ({"keep": "first"}, "--keep")):
        with pytest.raises(EdgeCNNError, match=needle):
            TrainConfig(**kwargs).check()


@pytest.mark.parametrize("keep, scores, kept", [
    ("best", [0.6, 0.9, 0.5], 2),
    ("best", [0.6, 0.9, 0.9], 3),  # a tie goes to the later (further annealed) epoch
    ("last", [0.6, 0.9, 0.5], 3),
])
def test_tracker_keeps_the_epoch_asked_for(tmp_path, keep, scores, kept):
    """Epoch n leaves every weight at n; the kept weights, and the file a resume reloads, say which epoch won."""
    import numpy as np

    from edgecnn import model
    from edgecnn.train import KEPT_WEIGHTS, _callbacks

    core = model.build_core("C: 4n gap", (8, 8, 3), 2)
    core.compile(optimizer="adam", loss="categorical_crossentropy")
    rows: list[dict] = []
    tracker = _callbacks(tmp_path, rows, TrainConfig(keep=keep))(core)
    tracker.set_model(core)
    for epoch, score in enumerate(scores):
        core.set_weights([np.full(w.shape, epoch + 1.0, w.dtype) for w in core.get_weights()])
        tracker.on_epoch_end(epoch, {"accuracy": 1.0, "val_accuracy": score})
    assert tracker.kept_epoch == kept and tracker.best_epoch == max(i + 1 for i, s in enumerate(scores)
                                                                    if s == max(scores))
    assert all((w == kept).all() for w in tracker.kept_weights)
    core.load_weights(tmp_path / KEPT_WEIGHTS)
    assert all((w == kept).all() for w in core.get_weights())
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv")] == [1, 2, 3]


def test_schedules_warm_up_and_decay():
    from edgecnn.train import make_schedule

    cos = make_schedule(TrainConfig(lr=0.01, epochs=10, schedule="cosine"), steps_per_epoch=100)
    vals = [float(cos(s)) for s in (0, 100, 500, 999)]
    assert vals[0] < vals[1] and abs(vals[1] - 0.01) < 1e-6 and vals[3] < vals[2] < vals[1]
    one = make_schedule(TrainConfig(lr=0.01, epochs=10, schedule="onecycle"), steps_per_epoch=100)
    vals = [float(one(s)) for s in (0, 300, 999)]
    assert vals[0] == pytest.approx(0.0004, rel=1e-3) and vals[1] == pytest.approx(0.01) and vals[2] < 1e-5
    assert make_schedule(TrainConfig(lr=0.01, schedule="constant"), 10) == 0.01


def test_evaluate_rescores_the_run(tiny_run):
    from edgecnn.evaluate import evaluate_run

    res = evaluate_run(str(tiny_run), str(tiny_run.parent))
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert res["test_accuracy"] == pytest.approx(saved["test_accuracy"], abs=1e-6)
    assert "precision" in res["report"]


def test_evaluate_matches_a_folder_s_classes_to_the_model_s_by_name(tiny_run, tmp_path):
    """A test folder with two of the model's ten classes (one spelt with a capital): its labels are the model's
    indices, so the score is what the model gets on those images; a class the model lacks is one error line."""
    from PIL import Image

    from edgecnn.data import shapes
    from edgecnn.evaluate import evaluate_run
    from edgecnn.model import load_keras

    x, y = shapes.generate(300, 16, 3, seed=9)
    for name, label in (("Ring", 1), ("circle", 0)):
        for split in ("train", "test"):
            (tmp_path / "two" / split / name).mkdir(parents=True)
        for i in np.flatnonzero(y == label):
            Image.fromarray(x[i]).save(tmp_path / "two" / ("test" if i % 2 else "train") / name / f"{i}.png")
    res = evaluate_run(str(tiny_run), str(tiny_run.parent), data=str(tmp_path / "two"))
    test = np.flatnonzero(((y == 0) | (y == 1)) & (np.arange(len(y)) % 2 == 1))
    pred = load_keras(tiny_run / "model.keras").predict(x[test].astype("float32"), verbose=0).argmax(1)
    assert res["test_images"] == len(test)
    assert res["test_accuracy"] == pytest.approx(float(np.mean(pred == y[test])))
    assert res["classes_matched"] == "2 of the model's 10 classes, by name"
    assert res["per_class_accuracy"]["square"] is None
    # labels without names (an .npz without class_names) are the model's class indices
    keep = np.flatnonzero((y == 0) | (y == 1))
    np.savez(tmp_path / "two.npz", x_train=x[keep], y_train=y[keep], x_test=x[test], y_test=y[test])
    res = evaluate_run(str(tiny_run), str(tiny_run.parent), data=str(tmp_path / "two.npz"))
    assert res["test_accuracy"] == pytest.approx(float(np.mean(pred == y[test]))) and res["classes_matched"] is None
    (tmp_path / "two" / "test" / "Ring").rename(tmp_path / "two" / "test" / "donut")
    (tmp_path / "two" / "train" / "Ring").rename(tmp_path / "two" / "train" / "donut")
    with pytest.raises(EdgeCNNError, match=r"class 'donut' is not one of the model's classes \(circle, ring, square"):
        evaluate_run(str(tiny_run), str(tiny_run.parent), data=str(tmp_path / "two"))


def test_evaluate_with_flip_tta_averages_both_views(tiny_run):
    from edgecnn.evaluate import evaluate_run

    plain = evaluate_run(str(tiny_run), str(tiny_run.parent))
    tta = evaluate_run(str(tiny_run), str(tiny_run.parent), tta=True)
    assert tta["tta"] and not plain["tta"] and tta["test_images"] == plain["test_images"]
    assert tta["test_loss"] != plain["test_loss"]  # a different prediction, not the same one relabelled


def test_cifar10_preset_trains_end_to_end_at_test_size(tmp_path, capsys):
    """The cifar10 recipe, shrunk to 1 epoch of 16x16 shapes: options typed on the command line win."""
    from conftest import run_main
    from edgecnn.export import ExportConfig, export
    from edgecnn.spec import PRESETS, describe, parse
    from edgecnn.train import TRAIN_PRESETS

    code, out, err = run_main(capsys, "train", "--preset", "cifar10", "--data", "shapes:300", "--image-size", "16",
                              "--epochs", "1", "--name", "p", "--runs-dir", str(tmp_path))
    assert code == 0, err
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    recipe = TRAIN_PRESETS["cifar10"]
    assert cfg["preset"] == "cifar10" and cfg["epochs"] == 1  # typed: kept
    for key in ("batch_size", "optimizer", "lr", "schedule", "label_smoothing", "augment", "translate_fill",
                "val_split", "keep"):
        assert cfg[key] == recipe[key], key  # not typed: from the recipe
    assert cfg["arch_spec"] == describe(parse(PRESETS["cifar10"]))
    # Its int8 export is what the preset promises: full-integer, verified against Keras.
    report = export(ExportConfig(run=str(tmp_path / "p"), quantize="int8", calib_samples=32, verify_samples=32),
                    log=lambda m: None)
    assert report["exports"][0]["status"] == "ok" and report["exports"][0]["inputs"][0]["dtype"] == "uint8"


def test_presets_fill_only_untyped_options():
    from edgecnn.train import TRAIN_PRESETS, apply_preset

    cfg = apply_preset(TrainConfig(lr=0.5, epochs=2), "ResNet8", given={"lr"})
    assert cfg.preset == "resnet8" and cfg.arch == "resnet8" and cfg.lr == 0.5
    assert cfg.epochs == TRAIN_PRESETS["resnet8"]["epochs"]  # given= names what was typed, not what differs
    # The preset's own translation (2 px), unless --translate is typed, even as the default value.
    assert cfg.translate == TRAIN_PRESETS["resnet8"]["translate"] != TrainConfig().translate
    assert apply_preset(TrainConfig(), "resnet8", given={"translate"}).translate == TrainConfig().translate
    with pytest.raises(EdgeCNNError, match="--preset 'fast': unknown"):
        apply_preset(TrainConfig(), "fast")


def test_cpu_steal_and_processor_are_recorded_with_the_training_time(tiny_run):
    import os

    from edgecnn import device

    before = device.cpu_counters()
    sum(i * i for i in range(300_000))  # burn some CPU so the counters move
    after = device.cpu_counters()
    assert before is not None and after[1] > before[1] and after[0] >= before[0]  # Linux: /proc/stat
    assert 0.0 <= device.steal_percent(before, after) <= 100.0
    assert device.steal_percent(after, before) is None and device.steal_percent(None, after) is None
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert 0.0 <= m["cpu_steal_percent"] <= 100.0
    # The seconds mean little without the machine: the processor (Linux: /proc/cpuinfo's model name) and its cores.
    assert m["cpu"] == device.cpu_info()["name"] and m["cpu"].strip() and m["cpu_cores"] == os.cpu_count()


def test_time_budget_stops_training_with_the_schedule_annealed(tmp_path):
    cfg = TrainConfig(data="shapes:600", image_size=16, arch="C: 4n gap", epochs=1000, batch_size=32, lr=1e-2,
                      schedule="onecycle", augment="none", time_budget=0.05, runs_dir=str(tmp_path), name="tb")
    run = train(cfg, log=lambda m: None, quiet=True)
    m = json.loads((run / "metrics.json").read_text())
    assert m["stopped_by_time_budget"] and m["epochs_run"] < 1000
    rows = read_history(run / "history.csv")
    assert rows[-1]["lr"] <= 1e-2 / 1e3  # the one-cycle end rate, reached by the clock
    assert max(r["lr"] for r in rows) > 1e-2 / 2  # and it went through its peak on the way


def test_budgeted_schedule_follows_time_and_survives_serialization():
    from edgecnn._tf import keras
    from edgecnn.train import Budgeted, OneCycle

    sched = Budgeted(OneCycle(1.0, 100), 100)
    inner = OneCycle(1.0, 100)
    assert float(sched(10)) == float(inner(10))  # time behind the steps: the steps rule
    sched.time_fraction.assign(0.5)
    assert float(sched(10)) == float(inner(50))  # time ahead: the schedule is where the clock says
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert again.total_steps == 100 and float(again(10)) == float(inner(10))


def test_repeated_dataset_reshuffles_every_pass_in_whole_epochs():
    import numpy as np

    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    ds = make_dataset(x, np.arange(10) % 3, 3, batch=4, shuffle=True, seed=0, repeat=True)
    batches = [b[0].numpy().ravel().astype(int).tolist() for b in ds.take(9)]  # 3 passes of ceil(10/4) = 3
    assert [len(b) for b in batches] == [4, 4, 2] * 3, "each pass ends on its own short batch"
    passes = [sum(batches[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(p) == list(range(10)) for p in passes), "every pass sees every image once"
    assert len({tuple(p) for p in passes}) == 3, "and in a new order"


def test_ema_saves_the_moving_average_and_recomputes_batchnorm(tmp_path):
    """A momentum of 0.99999 over 16 steps keeps the average at the first step's weights (Keras starts it
    there): the saved kernel is the initial one, to within that step, while the trained one moved away. In
    float32: under mixed_bfloat16 (what auto picks on CPUs with native bfloat16) the average sat one Adam
    step (0.05) from the initial kernel, not yet explained."""
    from edgecnn._tf import keras
    from edgecnn.model import build_core, load_keras
    from edgecnn.spec import parse

    kernels = {}
    for ema in (0.0, 0.99999):
        run = train(TrainConfig(data="shapes:160", image_size=16, arch="C: 8n gap", epochs=2, batch_size=16, lr=0.05,
                                warmup_epochs=0, schedule="constant", augment="none", ema=ema, name=f"ema{ema}",
                                precision="float32", runs_dir=str(tmp_path)), log=lambda m: None)
        kernels[ema] = load_keras(run / "model.keras").get_layer("conv1").get_weights()[0]
    classes = len(json.loads((run / "labels.json").read_text())["class_names"])
    keras.utils.set_random_seed(0)  # as train() does before building the model
    initial = build_core(parse("C: 8n gap"), (16, 16, 3), classes, None).get_layer("conv1").get_weights()[0]
    moved = np.abs(kernels[0.0] - initial).max()
    assert moved > 0.1
    assert np.abs(kernels[0.99999] - initial).max() < moved / 10
    m = json.loads((run / "metrics.json").read_text())
    assert m["ema"] == 0.99999 and m["batchnorm_recalibration_images"] > 0
    from edgecnn import report

    assert "| weights | moving average (--ema 0.99999)" in report.write(run)[0].read_text()
    with pytest.raises(EdgeCNNError, match="--ema"):
        TrainConfig(ema=1.0).check()


def test_ema_checkpoint_resumes_training_from_the_trained_weights(tmp_path):
    """Between epochs the model holds the averages: a checkpoint saved then, reloaded, must train on from
    the trained weights (kept in the optimizer's average slots), not from the averages."""
    from edgecnn._tf import keras
    from edgecnn.train import _ema_callback

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")

    def compile_(model):
        model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.9), loss="mse")
        return model

    model = compile_(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]))
    saved = {}

    def checkpoint(epoch, logs):  # as the tracker does, after the EMA callback's end-of-epoch swap
        if epoch == 0:
            saved["trained"] = [v.numpy() for v in model.optimizer._model_variables_moving_average]
            saved["averages"] = model.get_weights()
            model.save(tmp_path / "checkpoint.keras")

    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[_ema_callback(resumed=False), keras.callbacks.LambdaCallback(on_epoch_end=checkpoint)])
    assert not np.allclose(saved["trained"][0], saved["averages"][0])

    reloaded = keras.saving.load_model(tmp_path / "checkpoint.keras")
    seen = []
    first_batch = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: seen.append(reloaded.get_weights()) if batch == 0 else None)
    reloaded.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0,
                 callbacks=[_ema_callback(resumed=True), first_batch])
    np.testing.assert_allclose(seen[0][0], saved["trained"][0], rtol=1e-6)  # the trained weights, back in the model


def test_ema_validation_scores_the_averaged_weights_with_their_own_batchnorm_statistics(tmp_path):
    """Keras averages trainable weights only; validated with the trained weights' BatchNorm statistics,
    the averaged model ended at 67% here (measured), against 100% with statistics recomputed for it."""
    folder = make_folder(tmp_path / "colours", classes=("red", "green", "blue"), per_class=40, size=(16, 16))
    run = train(TrainConfig(data=str(folder), image_size=16, arch="C: 8n p 16n gap", epochs=15, batch_size=32,
                            augment="none", ema=0.98, runs_dir=str(tmp_path / "runs")), log=lambda m: None)
    assert read_history(run / "history.csv")[-1]["val_accuracy"] >= 11 / 12  # 12 images; slack as above
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] >= 11 / 12


def test_bench_train_speed_tool_times_each_variant_in_its_own_environment():
    """tools/bench_train_speed.py (docs/train_speed.md) on the built-in shapes: a row per variant with its ratio
    to the first, and the oneDNN-off worker really ran without oneDNN (the tool checks it and stops otherwise)."""
    tool = Path(__file__).parent.parent / "tools" / "bench_train_speed.py"
    out = subprocess.run([sys.executable, str(tool), "--data", "shapes:64", "--images", "64", "--epochs", "1",
                          "--rounds", "1", "--batch-size", "32", "--archs", "C: 4n gap",
                          "--variants", "default,onednn-off,keras-bn"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in out.stdout.splitlines() if ln.startswith("| C: 4n")]
    assert [r[1] for r in rows] == ["augment, no XLA, float32", "augment, no XLA, oneDNN off",
                                    "augment, no XLA, Keras's BatchNorm ops"]
    assert rows[0][4] == "1.00x" and float(rows[1][2]) > 0 and rows[1][4].endswith("x")
    # a command that runs as printed, the sizes given included
    assert "--variants default,onednn-off,keras-bn --archs 'C: 4n gap' --images 64 --epochs 1 --rounds 1 " \
           "--batch-size 32`" in out.stdout
    assert "then 1 timed epoch; 1 process per variant" in out.stdout


def test_a_run_trained_on_a_relative_path_finds_its_data_from_another_directory(tmp_path, monkeypatch, capsys):
    """config.json keeps --data as typed and, for a file or folder, its absolute path (``data_path``): evaluate
    (as export and benchmark, through the same loader) and --resume run from another directory still find the
    images; once the data has moved it says to pass --data."""
    import shutil

    from conftest import run_main

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_folder(work / "colours", classes=("red", "green", "blue"), per_class=20, size=(16, 16))
    monkeypatch.chdir(work)
    train(TrainConfig(data="colours", image_size=16, arch=TINY_ARCH, epochs=1, batch_size=16, augment="none",
                      name="rel", runs_dir="runs"), log=lambda m: None)
    run = work / "runs" / "rel"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == "colours" and cfg["data_path"] == str((work / "colours").resolve())
    monkeypatch.chdir(elsewhere)
    code, out, err = run_main(capsys, "evaluate", str(run))
    assert code == 0, err
    assert "accuracy" in out
    from edgecnn.train import config_from_run

    assert config_from_run(run).data == cfg["data_path"]  # --resume from here too
    shutil.move(work / "colours", tmp_path / "moved")
    code, out, err = run_main(capsys, "evaluate", str(run))
    assert code != 0 and err.strip().splitlines()[-1].startswith("error: --data colours: no such file or folder")
    assert "pass --data" in err


def test_profile_train_step_tool_sums_the_step_s_kernels_by_op_and_by_layer():
    """tools/profile_train_step.py reads TensorFlow's profiler trace: by op, a conv net's step shows its filter
    gradients; by layer, each conv layer of the spec and the augmentation, the kernels' shares adding up."""
    tool = Path(__file__).parent.parent / "tools" / "profile_train_step.py"
    tables = {}
    for by in ("op", "layer"):
        out = subprocess.run([sys.executable, str(tool), "--arch", "C: 4n p 8n gap", "--steps", "2", "--batch-size",
                              "8", "--precision", "float32", "--by", by, "--top", "50"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in out.stdout.splitlines() if ln.startswith("| ")]
        assert rows[0][0] == by and all(float(r[1]) >= 0 for r in rows[1:])
        assert abs(sum(float(r[2].rstrip("%")) for r in rows[1:]) - 100) < 0.5
        by_flag = "" if by == "op" else " --by layer"  # the default is not repeated
        assert f"--precision float32 --batch-size 8 --steps 2{by_flag} --top 50`" in out.stdout
        tables[by] = {r[0] for r in rows[1:]}
    assert {"Conv2DBackpropFilter", "FusedBatchNormGradV3", "Conv2D"} <= tables["op"]
    assert {"conv1", "bn2", "conv5", "random_translation"} <= tables["layer"]
    bad = subprocess.run([sys.executable, str(tool), "--arch", "C: 8x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: bad token '8x'")


def test_a_resumed_run_trains_the_network_it_started_even_if_its_preset_changed(tmp_path):
    """--resume rebuilds the deployable model from the run's config: by its preset name, a run of the cifar10
    preset from before its head went from gap to gmp would have been saved as the new network."""
    from edgecnn.spec import PRESETS, describe, parse
    from edgecnn.train import config_from_run

    old = "C: 16n 32n p r32 64n p 120n p r120 gap | L2: 1e-4"
    assert describe(parse(PRESETS["cifar10"])) != describe(parse(old))
    (tmp_path / "config.json").write_text(json.dumps({"arch": "cifar10", "arch_spec": describe(parse(old)),
                                                      "epochs": 3}))
    assert describe(parse(config_from_run(tmp_path).arch)) == describe(parse(old))
    (tmp_path / "config.json").write_text(json.dumps({"arch": "cifar10", "epochs": 3}))  # from before arch_spec
    assert config_from_run(tmp_path).arch == "cifar10"
