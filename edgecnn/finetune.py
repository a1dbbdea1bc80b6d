"""``edgecnn finetune``: quantization-aware training or pruning of a run, into a new run directory.

The tfmot work happens in ``edgecnn.tfmot_worker`` (a child process with legacy Keras);
this side stays Keras 3: it hands over the weights, takes back the fine-tuned float weights,
and writes a complete run directory that export and benchmark accept like any other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgecnn import balance, runs
from edgecnn.data.images import resize_mode
from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import atomic_path, write_json, write_text

SCHEDULES = ("constant", "polynomial")


def finetune(run: str | None, mode: str, runs_dir: str = "runs", epochs: int = 3, lr: float | None = None,
             sparsity: float = 0.5, schedule: str = "constant", calib_samples: int = 500, io_dtype: str = "uint8",
             opset: int = 17, name: str | None = None, verify_samples: int = 512, min_agreement_int8: float = 0.95,
             log=print) -> Path:
    if mode not in ("qat", "prune"):
        raise EdgeCNNError("choose --qat or --prune SPARSITY")
    if epochs < 1:
        raise EdgeCNNError(f"--epochs must be at least 1, got {epochs}")
    if mode == "prune" and not 0.0 < sparsity < 1.0:
        raise EdgeCNNError(f"--prune takes a sparsity in (0, 1), e.g. 0.5, got {sparsity}")
    if schedule not in SCHEDULES:
        raise EdgeCNNError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if lr is not None and not 0 < lr < 1:
        raise EdgeCNNError(f"--lr must be in (0, 1), got {lr}")
    src = runs.resolve(run, runs_dir)
    cfg = runs.config(src)
    if cfg.get("imported"):
        raise EdgeCNNError(f"{src} was imported (edgecnn import), not built from an edgecnn architecture, so finetune "
                           "cannot rebuild it for TensorFlow Model Optimization; export and benchmark work on it")
    arch = runs.architecture(cfg)
    if not arch:
        raise EdgeCNNError(f"{src} has no config.json with its architecture; finetune needs a run made by edgecnn")
    if mode == "qat":
        from edgecnn.spec import parse

        if any(layer.pool for layer in parse(arch).conv):
            raise EdgeCNNError(f"--qat: {src}'s architecture has pool-first blocks (e.g. '32np'), whose BatchNorm "
                               "follows a max-pool and has no tfmot quantization; use '32n p' there, or --prune")
    labels = runs.labels(src)
    from edgecnn import metrics as metrics_mod
    from edgecnn import model as model_mod
    from edgecnn.evaluate import load_run_data
    from edgecnn.train import write_history

    core = model_mod.load_keras(src / runs.MODEL_FILE)
    frozen = [layer.name for layer in core.layers if layer.weights and not layer.trainable]  # --whiten's conv
    ds = load_run_data(src)
    suffix = "qat" if mode == "qat" else f"pruned{round(sparsity * 100)}"
    dst = runs.allocate(Path(src).parent, name or f"{src.name}-{suffix}")
    log(f"{mode}: {src} -> {dst}")
    lr = lr if lr is not None else (1e-4 if mode == "qat" else 5e-4)
    with tempfile.TemporaryDirectory(prefix="edgecnn-tfmot-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "weights_in.npz", **{f"{layer.name}/{i}": w for layer in core.layers
                                             for i, w in enumerate(layer.get_weights())})
        x_ref = ds.x_test[:64]
        np.save(tmp / "ref_images.npy", x_ref)
        np.save(tmp / "ref_probs.npy", core.predict(x_ref.astype(np.float32), verbose=0))
        (dst / "exports").mkdir(exist_ok=True)
        shutil.copyfile(src / "labels.json", dst / "labels.json")
        job = {
            "mode": mode, "arch": arch, "input_shape": labels["input_shape"], "num_classes": ds.num_classes,
            "data": runs.data_source(cfg),  # as load_run_data found it (a relative --data, from elsewhere)
            "val_split": cfg.get("val_split", 0.1), "test_split": cfg.get("test_split", 0.1),
            "seed": cfg.get("seed", 0), "skip_bad_images": cfg.get("skip_bad_images", False),
            "resize": resize_mode(labels.get("input", {}).get("resize")),  # as load_run_data reads it
            "augment": cfg.get("augment", "none"), "translate": cfg.get("translate", model_mod.TRANSLATE),
            "translate_fill": cfg.get("translate_fill", model_mod.TRANSLATE_FILL),
            "batch_size": cfg.get("batch_size", 64), "epochs": epochs,
            "class_balance": cfg.get("class_balance", "none"),
            "lr": lr, "sparsity": sparsity, "schedule": schedule, "calib_samples": calib_samples,
            "io_dtype": io_dtype, "opset": opset, "verify_samples": verify_samples,
            "min_agreement_int8": min_agreement_int8, "weights_in": str(tmp / "weights_in.npz"),
            "weights_out": str(tmp / "weights_out.npz"), "reference_images": str(tmp / "ref_images.npy"),
            "reference_probs": str(tmp / "ref_probs.npy"), "exports_dir": str(dst / "exports"),
            "labels": str(dst / "labels.json"), "result_out": str(tmp / "result.json"),
            "frozen": frozen,
        }
        (tmp / "job.json").write_text(json.dumps(job))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-m", "edgecnn.tfmot_worker", str(tmp / "job.json")], env=env,
                              stderr=subprocess.PIPE,
                              text=True)
        if not (tmp / "result.json").is_file():
            raise EdgeCNNError(f"{mode} worker crashed (exit code {proc.returncode}): "
                               f"{(proc.stderr.strip().splitlines() or [''])[-1][:300]}")
        result = json.loads((tmp / "result.json").read_text())
        if result["status"] != "ok":
            raise EdgeCNNError(f"{mode} failed: {result['error']}")
        tuned = model_mod.build_core(arch, tuple(labels["input_shape"]), ds.num_classes)
        with np.load(tmp / "weights_out.npz") as z:
            for layer in tuned.layers:
                n = len(layer.get_weights())
                if n:
                    layer.set_weights([z[f"{layer.name}/{i}"] for i in range(n)])
                layer.trainable = layer.name not in frozen
    recalibrated = 0
    if mode == "prune":  # zeroed weights change what each BatchNorm sees; fine-tuning barely moves its averages
        images = balance.training_images(ds.x_train, ds.y_train, cfg.get("class_balance", "none"), cfg.get("seed", 0),
                                         model_mod.RECALIBRATION_IMAGES)
        recalibrated = model_mod.recalibrate_batchnorm(tuned, images, cfg.get("batch_size", 64), cfg.get("seed", 0))
        if recalibrated:
            log(f"BatchNorm statistics recomputed over {recalibrated} training images for the pruned weights")

    probs = tuned.predict(ds.x_test.astype(np.float32), batch_size=256, verbose=0)
    m = metrics_mod.evaluate(probs, ds.y_test, ds.class_names)
    m.update({"parameters": int(tuned.count_params()), "macs": model_mod.count_macs(tuned),
              "train_seconds": round(result["train_seconds"], 2), "epochs_run": epochs, "finetune": mode,
              "source_run": str(src), "transfer_max_abs_diff": result["transfer_max_abs_diff"],
              "data": ds.source, "device": "CPU (tfmot worker)", "class_balance": cfg.get("class_balance", "none"),
              "tuned_model_accuracy": result.get("tuned_model_accuracy")})
    if mode == "prune":
        m["batchnorm_recalibration_images"] = recalibrated
        m["sparsity_target"] = sparsity
        m["sparsity_per_layer"] = result["sparsity"]
    if mode == "qat":
        m["batchnorm_recalibration_images"] = result["batchnorm_recalibration_images"]
        m["tuned_model_accuracy_finetuned_batchnorm"] = result["tuned_model_accuracy_finetuned_batchnorm"]
        m["qat_exports"] = result["exports"]
        m["qat_activation_ranges_set"] = result["activation_ranges_set"]
    write_json(dst / "metrics.json", m)
    write_json(dst / "config.json", cfg | {"finetune": {"mode": mode, "epochs": epochs, "lr": lr,
                                                        "sparsity": sparsity if mode == "prune" else None,
                                                        "schedule": schedule, "source_run": str(src)}})
    write_history(dst / "history.csv", result["history"])
    write_text(dst / "classification_report.txt",
               metrics_mod.classification_report(ds.y_test, probs.argmax(1), ds.class_names))
    with atomic_path(dst / runs.MODEL_FILE) as tmp_model:
        tuned.save(tmp_model)
    source_accuracy = json.loads((src / "metrics.json").read_text()).get("test_accuracy", float("nan"))
    if mode == "prune" and recalibrated:
        log(f"pruned model accuracy {result.get('tuned_model_accuracy', float('nan')):.4f} with the fine-tuned "
            f"BatchNorm averages, {m['test_accuracy']:.4f} with them recomputed (source run: {source_accuracy:.4f})")
    elif mode == "qat" and result["batchnorm_recalibration_images"]:
        log(f"qat model accuracy {result['tuned_model_accuracy_finetuned_batchnorm']:.4f} with the fine-tuned "
            f"BatchNorm averages, {result['tuned_model_accuracy']:.4f} with them recomputed over "
            f"{result['batchnorm_recalibration_images']} unaugmented training images; float accuracy after qat: "
            f"{m['test_accuracy']:.4f} (source run: {source_accuracy:.4f})")
    else:
        log(f"{mode} model accuracy {result.get('tuned_model_accuracy', float('nan')):.4f}; "
            f"float accuracy after {mode}: {m['test_accuracy']:.4f} (source run: {source_accuracy:.4f})")
    if mode == "prune":
        log("sparsity per layer: " + ", ".join(f"{k} {v:.3f}" for k, v in result["sparsity"].items()))
    for e in result.get("exports", []):
        v = e.get("verify") or {}
        log(f"  {e['status']} {e['file']} (QAT) " + (f"agreement {v.get('agreement', 0):.4f}" if v else
                                                   e.get("error", "")))
    failed = [e for e in result.get("exports", []) if e["status"] != "ok"]
    if failed:
        raise EdgeCNNError("QAT export failed: " + "; ".join(f"{e['file']}: {e['error']}" for e in failed),
                           exit_code=1)
    return dst

