"""Export a run's deployable model to TFLite and ONNX variants, each verified against Keras.

Files go to ``RUN/exports/``: ``model_<variant>.tflite`` / ``model_<variant>.onnx``, a copy of
``labels.json`` and ``export_report.json``. Each file is written under a temp name, loaded
in its own runtime and compared with Keras, and renamed only when it passes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecnn import runs
from edgecnn.errors import EdgeCNNError
from edgecnn.export import compress
from edgecnn.export.verify import Thresholds, compare
from edgecnn.fsutil import atomic_path, ensure_dir, write_bytes, write_json

FORMATS = ("tflite", "onnx", "all")
QUANTIZE = ("none", "float16", "dynamic", "int8", "all")
TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
ONNX_VARIANTS = ("float32", "int8")


@dataclass
class ExportConfig:
    run: str | None = None
    formats: str = "tflite"
    quantize: str | None = None  # None: the format's default set
    calib_samples: int = 500
    io_dtype: str = "uint8"
    opset: int = 17
    onnx_target: str = "cpu"  # model_int8.onnx for ONNX Runtime's CPU kernels (uint8) or TensorRT (symmetric int8)
    onnx_input: str = "float32"  # the ONNX files' input: float32 pixels 0..255, or uint8 pixels as they are
    onnx_layout: str = "nhwc"  # the ONNX files' input layout: nhwc (TensorFlow's) or nchw (channels first)
    batch: str = "auto"  # batch dimension: auto (TFLite 1, ONNX dynamic), 1 (every file) or dynamic (every file)
    verify: bool = True
    verify_samples: int = 512
    data: str | None = None
    runs_dir: str = "runs"
    thresholds: Thresholds = field(default_factory=Thresholds)
    micro: bool = False  # TFLite Micro check of the int8 file: ops, arena, flash, accuracy
    micro_samples: int = 1000
    c_array: bool = False  # model_data.h / model_data.cc for TFLite Micro projects
    gzip: bool = False  # also write <file>.gz (the smallest standard gzip stream) next to each export
    metadata: bool = True  # TFLite metadata (input normalization, labels.txt) in each .tflite, as MediaPipe reads it
    tta: bool = False  # flip test-time augmentation inside each file (model.with_flip_tta): 2x latency, same weights

    def check(self) -> list[tuple[str, str]]:
        """Refuse bad options before anything is loaded (``run`` calls it before training); return the plan."""
        pairs = plan(self.formats, self.quantize)
        if any(v == "int8" for _, v in pairs) and self.calib_samples < 1:
            raise EdgeCNNError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        if self.verify_samples < 1:
            raise EdgeCNNError(f"--verify-samples must be at least 1, got {self.verify_samples}")
        from edgecnn.export.onnx import INPUTS, LAYOUTS, TARGETS
        from edgecnn.export.tflite import IO_DTYPES

        if self.io_dtype not in IO_DTYPES:
            raise EdgeCNNError(f"--io-dtype must be one of {', '.join(IO_DTYPES)}, got {self.io_dtype!r}")
        if any(f == "onnx" for f, _ in pairs) and not 9 <= self.opset <= 21:
            raise EdgeCNNError(f"--opset must be 9..21, got {self.opset}")
        if self.onnx_target not in TARGETS:
            raise EdgeCNNError(f"--onnx-target must be one of {', '.join(TARGETS)}, got {self.onnx_target!r}")
        if self.onnx_input not in INPUTS:
            raise EdgeCNNError(f"--onnx-input must be one of {', '.join(INPUTS)}, got {self.onnx_input!r}")
        if self.batch not in BATCHES:
            raise EdgeCNNError(f"--export-batch must be one of {', '.join(BATCHES)}, got {self.batch!r} "
                               "(a fixed batch above 1 is not offered)")
        if self.onnx_layout not in LAYOUTS:
            raise EdgeCNNError(f"--onnx-layout must be one of {', '.join(LAYOUTS)}, got {self.onnx_layout!r}")
        return pairs


BATCHES = ("auto", "1", "dynamic")


def batch_of(batch: str, fmt: str) -> int | None:
    """The fixed batch size of ``fmt``'s files (None: dynamic). auto: TFLite files take batch 1, as the
    Android GPU and NNAPI delegates, the Edge TPU compiler and NPU toolchains want (LiteRT on a host still
    resizes them); ONNX files keep a dynamic batch, which ONNX Runtime serves at any size."""
    if batch == "dynamic" or (batch == "auto" and fmt == "onnx"):
        return None
    return 1


def plan(formats: str, quantize: str | None) -> list[tuple[str, str]]:
    """(format, variant) pairs to write. Defaults: tflite float32+int8, onnx float32+int8, all: everything."""
    if formats not in FORMATS:
        raise EdgeCNNError(f"--format must be one of {', '.join(FORMATS)}, got {formats!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise EdgeCNNError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    fmts = ("tflite", "onnx") if formats == "all" else (formats,)
    out = []
    for fmt in fmts:
        available = TFLITE_VARIANTS if fmt == "tflite" else ONNX_VARIANTS
        if quantize is None:
            wanted = available if formats == "all" else ("float32", "int8")
        elif quantize == "all":
            wanted = available
        elif quantize == "none":
            wanted = ("float32",)
        else:
            wanted = (quantize,)
            if quantize not in available:
                if formats != "all":
                    raise EdgeCNNError(f"--quantize {quantize} is not available for {fmt} "
                                       f"(use {', '.join(available)})")
                continue
        out += [(fmt, v) for v in wanted]
    return out


def filename(fmt: str, variant: str) -> str:
    return f"model_{variant}.{fmt}"


def source(run: str | None, runs_dir: str) -> tuple[Path, Path, dict]:
    """(run_dir or model folder, model.keras path, labels) of a run name/folder or a .keras file."""
    from edgecnn.fsutil import read_json

    if run and run.endswith(".keras"):
        model_path = Path(run)
        if not model_path.is_file():
            raise EdgeCNNError(f"model file not found: {model_path}")
        base = model_path.parent
    else:
        base = runs.resolve(run, runs_dir)
        model_path = base / runs.MODEL_FILE
    labels_path = base / "labels.json"
    if not labels_path.is_file():
        hint = (f"; for a model trained elsewhere, `edgecnn import {model_path} --data DATA` makes a run of it"
                if model_path.name != runs.MODEL_FILE or not (base / "config.json").is_file() else "")
        raise EdgeCNNError(f"{labels_path} is missing (needed for class names and input size){hint}")
    return base, model_path, read_json(labels_path, "labels file")


def load_data(base: Path, data: str | None, labelled: bool = False):
    """The data of the run in ``base`` (or ``data``); ``labelled``: matched to the model's classes, for scoring."""
    from edgecnn.evaluate import load_run_data

    if not data and not (base / "config.json").is_file():
        raise EdgeCNNError(f"{base} has no config.json recording the training data; pass --data")
    return load_run_data(base, data, labelled=labelled)


def export(cfg: ExportConfig, log=print) -> dict:
    """Run the export plan; return the report. Raises EdgeCNNError if any export failed."""
    pairs = cfg.check()
    base, model_path, labels = source(cfg.run, cfg.runs_dir)
    out_dir = ensure_dir(base / "exports")
    from edgecnn import model as model_mod

    core = model_mod.load_keras(model_path)
    ds = load_data(base, cfg.data, labelled=cfg.micro)  # only --micro scores accuracy
    if tuple(ds.input_shape) != tuple(core.input_shape[1:]):
        raise EdgeCNNError(f"data images are {ds.input_shape} but the model takes {tuple(core.input_shape[1:])}")
    run_cfg = runs.config(base)
    seed = run_cfg.get("seed", 0)
    from edgecnn.export import tflite as tfl
    from edgecnn.export import tflite_metadata

    calib = tfl.calibration_images(ds.x_train, cfg.calib_samples, seed) if cfg.calib_samples > 0 else None
    n_verify = min(cfg.verify_samples, len(ds.x_test))
    x_verify = ds.x_test[:n_verify]
    if cfg.tta:
        _warn_unflipped(run_cfg, log)
    ref = None  # what each file must answer: the Keras model's outputs (averaged with the mirror image's, --tta)
    if cfg.verify:
        ref = (model_mod.flip_tta_predict(core, x_verify) if cfg.tta
               else core.predict(x_verify.astype(np.float32), batch_size=256, verbose=0))
    deploy = model_mod.fold_pooled_batchnorm(core)  # verified against ``core``, as every conversion is
    if cfg.tta:
        deploy = model_mod.with_flip_tta(deploy)

    entries = []
    qat_entries = {}
    if (run_cfg.get("finetune") or {}).get("mode") == "qat":
        # int8 files of a QAT run come from its fake-quant graph (edgecnn finetune --qat), not from PTQ.
        metrics = json.loads((base / "metrics.json").read_text()) if (base / "metrics.json").is_file() else {}
        qat_entries = {e["file"]: e for e in metrics.get("qat_exports", []) if e.get("status") == "ok"
                       and (out_dir / e["file"]).is_file()}

        def qat_batch(fmt):  # the kept file's batch dimension, as inspected when it was written
            dim = ((qat_entries.get(filename(fmt, "int8")) or {}).get("inputs") or [{"shape": [None]}])[0]["shape"][0]
            return dim if isinstance(dim, int) and dim > 0 else None

        kept = [  # options the kept QAT files do not follow: (format, option, value given, differs, why)
            ("onnx", "--onnx-target", cfg.onnx_target, cfg.onnx_target != "cpu",
             "tf2onnx writes uint8 activations with zero points, 8-bit weights"),
            ("onnx", "--onnx-input", cfg.onnx_input, cfg.onnx_input != "float32", "kept as written, float32 input"),
            ("onnx", "--onnx-layout", cfg.onnx_layout, cfg.onnx_layout != "nhwc", "kept as written, NHWC input"),
            ("tflite", "--no-metadata", "", not cfg.metadata, "kept as written, with its TFLite metadata"),
            *((fmt, "--tta", "", cfg.tta, "kept as written, without flip averaging") for fmt in ("tflite", "onnx"))]
        if cfg.batch != "auto":  # auto takes the QAT files as they are (older ones have a dynamic batch)
            for fmt in ("tflite", "onnx"):
                dim = qat_batch(fmt)
                kept.append((fmt, "--export-batch", cfg.batch, batch_of(cfg.batch, fmt) != dim,
                             f"kept as written, {'batch 1' if dim else 'dynamic batch'}"))
        for fmt, option, given, differs, why in kept:
            if differs and filename(fmt, "int8") in qat_entries and (fmt, "int8") in pairs:
                said = f"{option} {given}".strip()
                raise EdgeCNNError(f"{said}: this run's model_int8.{fmt} comes from quantization-aware training "
                                   f"({why}); export the run it was fine-tuned from, or leave out {option}")
    with tempfile.TemporaryDirectory(prefix="edgecnn-export-") as tmp:
        saved = None
        float_onnx = None
        for fmt, variant in pairs:
            if filename(fmt, variant) in qat_entries:
                entry = qat_entries[filename(fmt, variant)]
                entry.update(compress.sizes((out_dir / entry["file"]).read_bytes()))
                entries.append(entry)
                log(f"  kept {entry['file']} from quantization-aware training")
                continue
            entry = {"file": filename(fmt, variant), "format": fmt, "variant": variant, "status": "ok",
                     "calib_samples": int(len(calib)) if variant == "int8" else 0, "tta": cfg.tta}
            if (fmt, variant) == ("onnx", "int8"):
                entry["onnx_target"] = cfg.onnx_target
            if fmt == "onnx":
                entry["onnx_input"], entry["onnx_layout"] = cfg.onnx_input, cfg.onnx_layout

            def make_blob(fmt=fmt, variant=variant):
                nonlocal saved, float_onnx
                described = variant + (" with flip TTA inside" if cfg.tta else "")  # in the file's metadata
                if fmt == "tflite":
                    if saved is None:
                        saved = tfl.export_saved_model(deploy, Path(tmp) / "saved_model", batch_of(cfg.batch, fmt))
                    blob = tfl.convert(saved, variant, calib if variant == "int8" else None, cfg.io_dtype)
                    return tflite_metadata.populate(blob, labels, described) if cfg.metadata else blob
                from edgecnn.export import onnx as onx

                if float_onnx is None:
                    float_onnx = onx.convert_float(deploy, cfg.opset, cfg.onnx_layout, batch_of(cfg.batch, fmt))
                if variant == "float32":
                    proto = type(float_onnx)()
                    proto.CopyFrom(float_onnx)  # the int8 file is quantized from the float32-input original
                else:
                    proto = onx.quantize_int8(float_onnx, calib, activations=onx.ACTIVATIONS[cfg.onnx_target],
                                              bits=onx.WEIGHT_BITS.get(cfg.onnx_target, 8))
                if cfg.onnx_input == "uint8":
                    onx.take_uint8_input(proto)
                return onx.finalize(proto, labels, described)

            export_one(entry, out_dir, make_blob, x_verify, ref, cfg)
            entries.append(entry)
            _log_entry(entry, log)
    for entry in entries:  # a .gz beside a rewritten file would be stale: rewrite it or remove it
        gz = out_dir / (entry["file"] + ".gz")
        if cfg.gzip and entry["status"] == "ok":
            compress.write_gz(out_dir / entry["file"], entry["gz_strategy"])  # the strategy sizes() chose
            entry["gz_file"] = gz.name
            log(f"  {gz.name}: {entry['gz_bytes'] / 1024:.0f} KB (zlib {entry['gz_strategy']} strategy; gzip -9 "
                f"gives {entry['gzip_bytes'] / 1024:.0f} KB)")
        else:
            gz.unlink(missing_ok=True)
            entry.pop("gz_file", None)
    shutil.copyfile(base / "labels.json", out_dir / ".labels.json.tmp")
    os.replace(out_dir / ".labels.json.tmp", out_dir / "labels.json")
    write_standalone_scripts(out_dir)
    micro_info = _micro(cfg, out_dir, ds, labels, log) if (cfg.micro or cfg.c_array) else None
    # The report describes the folder: entries of earlier exports that were not redone stay.
    old = out_dir / "export_report.json"
    if old.is_file():
        try:
            redone = {e["file"] for e in entries}
            entries = [e for e in json.loads(old.read_text()).get("exports", [])
                       if e.get("file") not in redone and e.get("status") == "ok" and (out_dir / e["file"]).is_file()
                       ] + entries
            entries.sort(key=lambda e: [filename(f, v) for f, v in plan("all", None)].index(e["file"])
                         if e["file"] in [filename(f, v) for f, v in plan("all", None)] else 99)
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass  # an unreadable old report is replaced
    report = {
        "model": str(model_path),
        "exports": entries,
        "io_dtype": cfg.io_dtype,
        "onnx_input": cfg.onnx_input,
        "onnx_layout": cfg.onnx_layout,
        "batch": cfg.batch,
        "tflite_metadata": cfg.metadata,
        "tta": cfg.tta,
        "calibration": {"split": "train", "samples": int(len(calib)) if calib is not None else 0, "seed": seed},
        "verification": {"split": "test", "images": n_verify, "enabled": cfg.verify,
                         "thresholds": asdict(cfg.thresholds)},
    }
    if micro_info:
        report["micro"] = micro_info
    write_json(out_dir / "export_report.json", report)
    failed = [e for e in entries if e["status"] != "ok" and e["file"] in {filename(f, v) for f, v in pairs}]
    if failed:
        raise EdgeCNNError("export failed for " + ", ".join(f"{e['file']} ({e.get('error')})" for e in failed),
                           exit_code=1)
    return report


def export_one(entry: dict, out_dir: Path, make_blob, x_verify, ref, cfg: ExportConfig) -> dict:
    """Convert (``make_blob()``), write, verify; a failure becomes the entry's status and error."""
    t0 = time.perf_counter()
    try:
        blob = make_blob()
        entry["convert_seconds"] = round(time.perf_counter() - t0, 3)
        _write_verified(out_dir / entry["file"], blob, entry, x_verify, ref, cfg)
    except Exception as exc:  # converters raise many types; each becomes one line in the report
        entry["status"] = "failed"
        text = str(exc)
        if isinstance(exc, EdgeCNNError):
            entry["error"] = text
        elif "No space left" in text or "File too large" in text:  # TensorFlow's own file errors
            why = "no space left on device" if "No space left" in text else "file too large (disk quota or limit)"
            entry["error"] = f"cannot write temporary files in {tempfile.gettempdir()}: {why}"
        else:
            entry["error"] = f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:300]}"
    return entry


def _write_verified(final: Path, blob: bytes, entry: dict, x_verify, ref, cfg: ExportConfig) -> None:
    """Write ``blob`` to a temp name, describe and verify it, then rename onto ``final``."""
    from edgecnn.inspect import inspect
    from edgecnn.runners import open_runner

    with atomic_path(final) as tmp:
        write_bytes(tmp, blob)
        info = inspect(tmp)
        entry.update({"size_bytes": len(blob), "sha256": info["sha256"], **compress.sizes(blob),
                      "inputs": info["inputs"], "outputs": info["outputs"], "ops": info["ops"]})
        if "tflite_metadata" in info:  # what MediaPipe Tasks needs to classify with the file alone
            entry["tflite_metadata"] = info["tflite_metadata"] is not None
        if "all_builtin" in info:
            entry["all_builtin"] = info["all_builtin"]
            if not info["all_builtin"]:
                raise EdgeCNNError(f"{final.name}: non-builtin ops {', '.join(info['non_builtin_ops'])}")
        if cfg.verify:
            runner = open_runner(tmp, "cpu")
            probs = runner.predict(x_verify, batch_size=64)
            entry["verify"] = compare(ref, probs, entry["variant"], cfg.thresholds)
            if not entry["verify"]["passed"]:
                raise EdgeCNNError(f"{final.name} failed verification: {entry['verify']['reason']}")
    entry["path"] = str(final)


def write_standalone_scripts(out_dir: Path) -> None:
    """infer_tflite.py / infer_onnx.py: minimal inference with only numpy, Pillow and the runtime."""
    src = Path(__file__).resolve().parents[1] / "standalone"
    for name in ("infer_tflite.py", "infer_onnx.py"):
        write_bytes(out_dir / name, (src / name).read_bytes())


def _micro(cfg: ExportConfig, out_dir: Path, ds, labels: dict, log) -> dict | None:
    from edgecnn import micro

    int8 = out_dir / "model_int8.tflite"
    if not int8.is_file():
        raise EdgeCNNError("--micro and --c-array need the full-integer int8 TFLite export (model_int8.tflite): "
                           "add --quantize int8 or --quantize all")
    if cfg.micro_samples < 1:
        raise EdgeCNNError(f"--micro-samples must be at least 1, got {cfg.micro_samples}")
    info = None
    if cfg.micro:
        from edgecnn.runners import open_runner

        x, y = ds.x_test[:cfg.micro_samples], ds.y_test[:cfg.micro_samples]
        info = micro.check(int8, x, y, open_runner(int8).predict(x))
        log(f"  TFLite Micro: every op supported, tensor arena {info['arena_kb']} KB, flash {info['flash_kb']} KB, "
            f"accuracy {info['accuracy']:.4f} vs LiteRT {info['litert_accuracy']:.4f} on {info['samples']} images "
            f"(agreement {info['agreement_with_litert']:.4f}), {info['host_ms_per_image']:.1f} ms/image on the host")
        if info["agreement_with_litert"] < 0.995:
            log("  note: TFLite Micro and LiteRT round differently (reference vs optimized kernels); agreement below "
                "99.5% means near-tie images flip, check the accuracy difference before deploying")
    if cfg.c_array:
        arena = info["arena_kb"] if info else None
        if arena is None:
            try:
                arena = micro.smallest_arena(int8.read_bytes()) // 1024
            except EdgeCNNError:
                arena = None
        h, cc = micro.write_c_array(int8, out_dir, labels, arena)
        log(f"  C source: {h.name}, {cc.name}")
    return info


def _warn_unflipped(run_cfg: dict, log) -> None:
    """--tta on a run that never saw mirrored images: the mirrored half of each answer is a guess."""
    from edgecnn.model import parse_augment

    if "augment" not in run_cfg:  # a model trained elsewhere (edgecnn import): its augmentation is unknown
        return
    try:
        names = parse_augment(run_cfg["augment"])
    except EdgeCNNError:
        return
    if not {"flip", "altflip"} & set(names):
        log(f"  note: --tta averages over left-right mirrored images, but this run trained without flips (--augment "
            f"{run_cfg['augment']}); compare `edgecnn evaluate --tta` with `edgecnn evaluate` first")


def _log_entry(e: dict, log) -> None:
    if e["status"] != "ok":
        log(f"  FAILED {e['file']}: {e.get('error')}")
        return
    v = e.get("verify")
    q = e["inputs"][0].get("quantization")
    qs = f" in {e['inputs'][0]['dtype']} (scale {q['scale']:.4g}, zp {q['zero_point']})" if q else \
        f" in {e['inputs'][0]['dtype']}"
    vs = f"  agreement {v['agreement']:.4f} (all {v['agreement_all']:.4f}), max|dp| {v['max_abs_diff']:.2e}" if v else \
        "  (not verified)"
    if e.get("onnx_layout") == "nchw":
        qs += " NCHW"
    target = {"tensorrt": "  (for TensorRT: symmetric int8)",
              "cpu-no-vnni": "  (7-bit weights: exact in ONNX Runtime's default kernels without VNNI)"
              }.get(e.get("onnx_target"), "")
    tta = "  (flip TTA inside)" if e.get("tta") else ""
    log(f"  ok {e['file']:<22} {e['size_bytes']:>10,} B{qs}{vs}{target}{tta}")
