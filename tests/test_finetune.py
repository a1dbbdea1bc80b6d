"""QAT and pruning through tfmot in a child process; the parent stays Keras 3."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgecnn.errors import EdgeCNNError


def test_weight_transfer_keras3_to_tf_keras_is_exact(tiny_run, tmp_path):
    """The worker's rebuild in tf_keras gives the Keras 3 model's predictions."""
    from edgecnn.model import load_keras

    core = load_keras(tiny_run / "model.keras")
    np.savez(tmp_path / "w.npz", **{f"{layer.name}/{i}": w for layer in core.layers
                                    for i, w in enumerate(layer.get_weights())})
    x = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "p.npy", core.predict(x, verbose=0))
    script = (
        "import json, numpy as np, edgecnn.tfmot_worker as w\n"
        "tf, tfk, tfmot = w._libs()\n"
        f"m = w.rebuild({{'arch': {json.dumps(json.loads((tiny_run / 'config.json').read_text())['arch'])}, "
        f"'input_shape': [16, 16, 3], 'num_classes': 10, 'weights_in': {str(tmp_path / 'w.npz')!r}}}, tfk)\n"
        f"d = np.abs(m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)"
        f" - np.load({str(tmp_path / 'p.npy')!r}))\n"
        "print('KERAS', tfk.__version__, 'DIFF', float(d.max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    version, diff = out.stdout.split("KERAS ")[1].split(" DIFF ")
    assert version.startswith("2.") and float(diff) < 1e-5


@pytest.mark.slow
def test_qat_writes_verified_int8_tflite_and_qdq_onnx(tiny_run):
    from edgecnn.finetune import finetune
    from edgecnn.inspect import inspect

    dst = finetune(str(tiny_run), "qat", str(tiny_run.parent), epochs=1, calib_samples=50, verify_samples=100,
                   log=lambda m: None)
    assert dst.name == "tiny-qat"
    m = json.loads((dst / "metrics.json").read_text())
    assert m["transfer_max_abs_diff"] < 1e-4 and m["finetune"] == "qat"
    assert {e["file"]: e["status"] for e in m["qat_exports"]} == {"model_int8.tflite": "ok", "model_int8.onnx": "ok"}
    assert all(e["verify"]["passed"] for e in m["qat_exports"])
    tfl = inspect(dst / "exports" / "model_int8.tflite")
    assert tfl["inputs"][0]["dtype"] == "uint8" and tfl["all_builtin"]
    assert tfl["inputs"][0]["shape"] == [1, 16, 16, 3]  # batch 1, as `edgecnn export` writes TFLite files
    assert tfl["tflite_metadata"]["labels"] == json.loads((dst / "labels.json").read_text())["class_names"]
    assert "int8-qat" in tfl["tflite_metadata"]["description"]
    onx = inspect(dst / "exports" / "model_int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(onx["ops"])
    # tf2onnx folds the weights' fake-quant into float constants: every kernel is stored as int8 again
    kernels = sum(onx["ops"].get(op, 0) for op in ("Conv", "MatMul", "Gemm"))
    assert onx["parameter_dtypes"] == {"int8": onx["parameters"]}
    assert next(e for e in m["qat_exports"] if e["format"] == "onnx")["int8_weights"] == kernels >= 2
    # Activation ranges start from the float model's, so a ReLU's starts at 0 (tfmot's own start, -6,
    # left zero points of 48-67 after a short fine-tune) and ONNX Runtime can fuse it into an integer conv.
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(dst / "exports" / "model_int8.onnx"))
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    relu_zero_points = [int(inits[n.input[2]]) for n in proto.graph.node
                        if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "Relu"]
    assert m["qat_activation_ranges_set"] >= len(relu_zero_points) >= 2 and set(relu_zero_points) == {0}
    # The input (raw pixels) and the Rescaling's output are quantized on the pixels' own grid (scales 1 and
    # 1/255, zero point 0: lossless), so ONNX Runtime runs the first convolution as an integer one too (it
    # ran a float Conv without it), and the TFLite file's uint8 input still takes raw pixels.
    pixel_qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"
                and (n.input[0] == "image" or n.input[0].startswith("core/quant_rescale/"))]
    assert [(made_by.get(n.input[0], "input"), round(float(inits[n.input[1]]) * 255, 6), int(inits[n.input[2]]))
            for n in pixel_qs] == [("input", 255.0, 0), ("Add", 1.0, 0)]
    assert tfl["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}
    from edgecnn.runners import open_runner
    from edgecnn.runners.onnx import placement

    path = dst / "exports" / "model_int8.onnx"
    ran = placement(path, ["CPUExecutionProvider"], open_runner(path, "cpu", threads=1).inp, 1)
    assert ran["CPUExecutionProvider"]["QLinearConv"] == 3 and not ran["CPUExecutionProvider"]["Conv"], ran
    # quant-debug --format onnx reads the QAT file: its layers named through tfmot's 'quant_' scopes, each
    # tensor's drift measured against the run's float model; no float weights for its own error (BatchNorm is
    # folded into the int8 ones), and it says so.
    from edgecnn.model import load_keras
    from edgecnn.quant_debug import notes
    from edgecnn.quant_debug_onnx import quant_debug_onnx

    qd = quant_debug_onnx(str(dst), str(dst.parent), samples=16, trials=1)
    rows = [r for r in qd["layers"] if r["op"].startswith("Conv") or "+Conv" in r["op"]]
    assert [r["layer"].split("+")[0] for r in rows] == [layer.name for layer in load_keras(dst / "model.keras").layers
                                                        if layer.__class__.__name__ == "Conv2D"]
    assert qd["qat"] and not any(r["float_weights"] for r in rows)
    assert all(r["drift_tensor"] and r["drift_sqnr_db"] > 15 for r in rows), rows
    assert qd["runtime_check"]["top1_agreement"] >= 0.9 and any("quantization-aware" in n for n in notes(qd))
    assert qd["float_trials"]["layers"][0]["accuracy"] is None  # no float layer to try
    assert any("(no float32 weights)" in n for n in notes(qd))
    # The parent process is still Keras 3 and the export command accepts the new run like any other.
    import keras

    assert keras.__version__.startswith("3.") and os.environ.get("TF_USE_LEGACY_KERAS") in (None, "", "0")
    from edgecnn.export import ExportConfig, export

    report = export(ExportConfig(run=str(dst), formats="tflite", verify_samples=64, calib_samples=50),
                    log=lambda m: None)
    int8 = next(e for e in report["exports"] if e["variant"] == "int8")
    assert int8["source"] == "qat", "a QAT run keeps its QAT int8 file, not a post-training one"
    # tf2onnx writes the fake-quant graph with uint8 activations: not a file TensorRT builds as int8,
    # and the export says so instead of handing back the QAT file under --onnx-target tensorrt.
    assert onx["tensorrt_int8"], onx["tensorrt_int8"]
    with pytest.raises(EdgeCNNError, match="--onnx-target tensorrt: this run's model_int8.onnx comes from"):
        export(ExportConfig(run=str(dst), formats="onnx", onnx_target="tensorrt", verify_samples=64,
                            calib_samples=50), log=lambda m: None)
    for option, value in (("input", "uint8"), ("layout", "nchw")):  # the QAT file keeps its float32 NHWC input
        with pytest.raises(EdgeCNNError, match=f"--onnx-{option} {value}: this run's model_int8.onnx comes from"):
            export(ExportConfig(run=str(dst), formats="onnx", verify_samples=64, calib_samples=50,
                                **{f"onnx_{option}": value}), log=lambda m: None)
    # its TFLite file has batch 1 and its ONNX file a dynamic batch: an --export-batch that says otherwise stops
    for formats, batch, fmt in (("tflite", "dynamic", "tflite"), ("onnx", "1", "onnx")):
        with pytest.raises(EdgeCNNError, match=f"--export-batch {batch}: this run's model_int8.{fmt} comes from"):
            export(ExportConfig(run=str(dst), formats=formats, batch=batch, verify_samples=64, calib_samples=50),
                   log=lambda m: None)
    with pytest.raises(EdgeCNNError, match=r"--no-metadata: this run's model_int8.tflite comes from .*with its"):
        export(ExportConfig(run=str(dst), formats="tflite", metadata=False, verify_samples=64, calib_samples=50),
               log=lambda m: None)
    with pytest.raises(EdgeCNNError, match=r"--tta: this run's model_int8.onnx comes from .*without flip averaging"):
        export(ExportConfig(run=str(dst), formats="onnx", tta=True, verify_samples=64, calib_samples=50),
               log=lambda m: None)


@pytest.mark.slow
def test_pruning_reaches_its_target_sparsity(tiny_run):
    from edgecnn.finetune import finetune
    from edgecnn.model import load_keras

    dst = finetune(str(tiny_run), "prune", str(tiny_run.parent), epochs=1, sparsity=0.6, log=lambda m: None)
    assert dst.name == "tiny-pruned60"
    m = json.loads((dst / "metrics.json").read_text())
    assert m["sparsity_per_layer"] and all(abs(s - 0.6) <= 0.01 for s in m["sparsity_per_layer"].values())
    core = load_keras(dst / "model.keras")
    kernel = core.get_layer("conv5").get_weights()[0]
    assert abs(np.mean(kernel == 0) - 0.6) <= 0.01, "the saved Keras 3 model carries the zeros"


def test_pruned_weights_get_batchnorm_statistics_of_their_own(tmp_path):
    """Pruning zeroes half the weights under each BatchNorm; three fine-tuning steps per epoch barely move its
    moving averages, so the pruned model scored 83% in inference mode on data the source run scored 100% on."""
    from conftest import make_folder
    from edgecnn.finetune import finetune
    from edgecnn.train import TrainConfig, train

    folder = make_folder(tmp_path / "colours", classes=("red", "green", "blue"), per_class=40, size=(16, 16))
    run = train(TrainConfig(data=str(folder), image_size=16, arch="C: 8n p 16n gap", epochs=15, batch_size=32,
                            augment="none", runs_dir=str(tmp_path / "runs")), log=lambda m: None)
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == 1.0
    dst = finetune(str(run), "prune", str(tmp_path / "runs"), epochs=3, sparsity=0.5, log=lambda m: None)
    m = json.loads((dst / "metrics.json").read_text())
    assert m["batchnorm_recalibration_images"] == 96 and m["test_accuracy"] == 1.0
    # The first BatchNorm's averages are its input's statistics under the pruned convolution.
    import keras

    from edgecnn.data import load
    from edgecnn.model import load_keras

    core = load_keras(dst / "model.keras")
    x = load(str(folder), image_size=16).x_train.astype("float32")
    out = keras.Model(core.input, core.get_layer("conv1").output).predict(x, verbose=0).reshape(-1, 8)
    bn = core.get_layer("bn2")
    np.testing.assert_allclose(bn.moving_mean.numpy(), out.mean(0), atol=0.02 * out.std(0).max())


def test_a_run_without_validation_images_fine_tunes(tmp_path):
    """--val-split 0 (the presets' 1,000 validation images put back into training): the worker's fit got an
    empty validation set and failed with "Expected input data to be non-empty"."""
    from conftest import make_folder
    from edgecnn.data import load
    from edgecnn.finetune import finetune
    from edgecnn.train import TrainConfig, train

    folder = make_folder(tmp_path / "colours", classes=("red", "green"), per_class=20, size=(16, 16))
    src = train(TrainConfig(data=str(folder), image_size=16, arch="C: 4n 8n gap", epochs=1, batch_size=16,
                            val_split=0.0, augment="none", runs_dir=str(tmp_path)), log=lambda m: None)
    assert "0 val" in load(str(folder), image_size=16, val_split=0.0).summary()
    dst = finetune(str(src), "prune", str(tmp_path), epochs=1, sparsity=0.5, log=lambda m: None)
    assert json.loads((dst / "metrics.json").read_text())["sparsity_per_layer"]["conv1"] > 0.45


def test_bad_finetune_options(tiny_run):
    from edgecnn.finetune import finetune

    for kwargs, needle in (({"mode": "prune", "sparsity": 1.5}, "--prune"), ({"mode": "qat", "epochs": 0}, "--epochs"),
                           ({"mode": "prune", "schedule": "cubic"}, "--schedule"), ({"mode": "distill"}, "--qat")):
        with pytest.raises(EdgeCNNError, match=needle):
            finetune(str(tiny_run), runs_dir=str(tiny_run.parent), log=lambda m: None, **kwargs)


@pytest.mark.slow
def test_qat_recomputes_batchnorm_statistics_for_its_fine_tuned_weights(run_copy):
    """After the QAT fine-tune every BatchNorm holds its input's statistics over unaugmented training images,
    as after `edgecnn train`, not the fine-tune's moving averages: one short epoch moves those little from
    the source run's, though a large learning rate moved the weights (the recomputation, redone here in
    Keras 3 on the saved float weights, differs from it only by the QAT model's weight quantization)."""
    from edgecnn import balance
    from edgecnn.evaluate import load_run_data
    from edgecnn.finetune import finetune
    from edgecnn.model import RECALIBRATION_IMAGES, _batchnorms, load_keras, recalibrate_batchnorm

    lines = []
    dst = finetune(str(run_copy), "qat", str(run_copy.parent), epochs=1, lr=1e-2, calib_samples=50,
                   verify_samples=100, log=lines.append)
    m = json.loads((dst / "metrics.json").read_text())
    cfg = json.loads((dst / "config.json").read_text())
    ds = load_run_data(dst)
    images = balance.training_images(ds.x_train, ds.y_train, "none", cfg["seed"], RECALIBRATION_IMAGES)
    assert m["batchnorm_recalibration_images"] == len(images) - len(images) % cfg["batch_size"]
    assert any("with the fine-tuned BatchNorm averages" in ln and "recomputed over" in ln for ln in lines)
    saved, source = load_keras(dst / "model.keras"), load_keras(run_copy / "model.keras")
    fresh = load_keras(dst / "model.keras")
    recalibrate_batchnorm(fresh, images, cfg["batch_size"], cfg["seed"])
    for got, old, want in zip(_batchnorms(saved), _batchnorms(source), _batchnorms(fresh)):
        scale = np.abs(want.moving_mean.numpy()).max()
        off = np.abs(got.moving_mean.numpy() - want.moving_mean.numpy()).max()
        stale = np.abs(old.moving_mean.numpy() - want.moving_mean.numpy()).max()
        assert off < 0.02 * scale and stale > 5 * off, (got.name, off, stale, scale)
        assert np.allclose(got.moving_variance.numpy(), want.moving_variance.numpy(), rtol=0.05), got.name


def test_qat_refuses_pool_first_blocks_by_name(run_copy):
    """tfmot has no quantization for a BatchNorm behind a max-pool: one clear line before any work."""
    from edgecnn.finetune import finetune

    cfg = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(cfg | {"arch": "C: 8n 16np gap", "arch_spec": "C: 8n 16np gap"}))
    with pytest.raises(EdgeCNNError, match="--qat: .*pool-first blocks") as exc:
        finetune(str(run_copy), "qat", runs_dir=str(run_copy.parent), log=lambda m: None)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_a_whiten_cutout_run_fine_tunes_with_its_whitening_frozen(tmp_path):
    """QAT and pruning rebuild the run in tf_keras with its cutout augmentation and mirror-filled translation
    (altflip as a random flip: the worker has no epoch count); --whiten's convolution
    stays exactly as trained (never pruned, never moved by QAT) and stays frozen in the saved model."""
    from edgecnn.finetune import finetune
    from edgecnn.model import load_keras
    from edgecnn.train import TrainConfig, train

    src = train(TrainConfig(data="shapes:300", image_size=16, arch="C: 8n 16n gap", epochs=1, batch_size=32,
                            whiten=True, augment="altflip,translate,cutout", translate_fill="mirror",
                            runs_dir=str(tmp_path), name="w"),
                log=lambda m: None)
    before = load_keras(src / "model.keras").get_layer("conv1").get_weights()
    for mode in ("qat", "prune"):
        dst = finetune(str(src), mode, str(tmp_path), epochs=1, lr=0.05, sparsity=0.5, calib_samples=50,
                       verify_samples=50, log=lambda m: None)
        core = load_keras(dst / "model.keras")
        conv1 = core.get_layer("conv1")
        for w, b in zip(conv1.get_weights(), before):
            np.testing.assert_array_equal(w, b, err_msg=mode)
        assert not conv1.trainable and core.get_layer("conv5").trainable
        assert np.any(core.get_layer("conv5").get_weights()[0] != load_keras(src / "model.keras")
                      .get_layer("conv5").get_weights()[0]), "the other layers were fine-tuned"
        if mode == "prune":
            m = json.loads((dst / "metrics.json").read_text())
            assert "conv1" not in m["sparsity_per_layer"] and m["sparsity_per_layer"]["conv5"] > 0.45


@pytest.mark.slow
def test_qat_quantizes_squeeze_excitation(tmp_path):
    """tfmot has no quantization for Multiply: the worker fake-quantizes its output, and the QAT int8
    files of an ``se`` block convert with builtin ops and verify."""
    from edgecnn.finetune import finetune
    from edgecnn.inspect import inspect
    from edgecnn.train import TrainConfig, train

    src = train(TrainConfig(data="shapes:300", image_size=16, arch="C: 8n r16se gap", epochs=1, batch_size=32,
                            runs_dir=str(tmp_path), name="se"), log=lambda m: None)
    dst = finetune(str(src), "qat", str(tmp_path), epochs=1, calib_samples=50, verify_samples=50,
                   log=lambda m: None)
    m = json.loads((dst / "metrics.json").read_text())
    assert [(e["status"], e["verify"]["passed"]) for e in m["qat_exports"]] == [("ok", True)] * 2
    tfl = inspect(dst / "exports" / "model_int8.tflite")
    assert tfl["all_builtin"] and {"MUL", "LOGISTIC"} <= set(tfl["ops"]), tfl["ops"]


def test_finetune_rebuilds_the_network_the_run_trained_not_what_its_preset_name_means_now(run_copy):
    """A run keeps the network it trained as arch_spec; its arch may be a preset name whose network has changed
    since (the cifar10 preset's head went from gap to gmp): finetune rebuilt the new one and failed to load the
    weights into it."""
    from edgecnn.finetune import finetune
    from edgecnn.model import load_keras

    cfg = json.loads((run_copy / "config.json").read_text())
    assert cfg["arch_spec"] != "C: 16n r16 r32 r64 gap | L2: 0.0001"  # resnet8: another network
    (run_copy / "config.json").write_text(json.dumps(cfg | {"arch": "resnet8"}))
    dst = finetune(str(run_copy), "prune", str(run_copy.parent), epochs=1, sparsity=0.5, log=lambda m: None)
    source, pruned = load_keras(run_copy / "model.keras"), load_keras(dst / "model.keras")
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in source.layers]
    assert pruned.count_params() == source.count_params()
