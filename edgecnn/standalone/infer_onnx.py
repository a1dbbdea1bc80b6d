#!/usr/bin/env python3
"""Classify images with model_float32.onnx or model_int8.onnx using only ONNX Runtime, numpy and Pillow.

    pip install onnxruntime numpy pillow   # and pillow-heif for HEIC photos
    python infer_onnx.py model_int8.onnx photo.jpg [more.jpg ...]

Written by edgecnn beside the exports; needs neither TensorFlow nor edgecnn.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, JpegImagePlugin

try:  # HEIC/HEIF photos, as edgecnn reads them (pip install pillow-heif)
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pass


def preprocess(path, height, width, channels, fit="squash"):
    """Exactly what training did: a large JPEG decoded at a reduced scale (Pillow draft) no smaller than
    twice the input, EXIF orientation applied, 16-bit grayscale scaled to 8 bits, RGB (or L), bilinear
    resize of the whole image (``fit`` "crop": of its centre, cut to the input's aspect ratio; "pad": scaled
    to fit inside, aspect ratio kept, centred on black), uint8 0..255."""
    with Image.open(path) as img:
        if isinstance(img, JpegImagePlugin.JpegImageFile):
            side = 2 * max(height, width)
            img.draft(img.mode, (side, side))
        img.load()
        if img.mode == "F":  # 32-bit float TIFF: no fixed range to map to 0..255
            sys.exit(f"{path}: 32-bit floating-point image; scale it to 0..255 or 0..65535 integers")
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # 16-bit grayscale: 0..65535 to 0..255
            img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        img = img.convert("L" if channels == 1 else "RGB")
        if fit == "crop":  # cut the centre to the input's aspect ratio, in whole pixels
            if img.width * height > img.height * width:
                w = round(img.height * width / height)
                img = img.crop(((img.width - w) // 2, 0, (img.width - w) // 2 + w, img.height))
            else:
                h = round(img.width * height / width)
                img = img.crop((0, (img.height - h) // 2, img.width, (img.height - h) // 2 + h))
        elif fit == "pad":  # scale to fit inside (whole pixels), centre on black
            if img.width * height > img.height * width:
                w, h = width, max(1, round(img.height * width / img.width))
            else:
                w, h = max(1, round(img.width * height / img.height)), height
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            if (w, h) != (width, height):
                canvas = Image.new(img.mode, (width, height))
                canvas.paste(img, ((width - w) // 2, (height - h) // 2))
                img = canvas
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        x = np.asarray(img, dtype=np.uint8)
    return x.reshape(1, height, width, channels)


def fit_mode(recorded):
    """squash, crop or pad from the resize name labels.json (or the ONNX metadata) records."""
    return "crop" if "crop" in recorded else "pad" if "letterbox" in recorded else "squash"


def int8_saturates():
    """An x86 CPU without VNNI (or one whose flags cannot be read): ONNX Runtime's default int8 kernels add
    two uint8 x int8 products in int16 there, which saturates."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return True
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def main(model_path, images, top_k=3):
    opts = ort.SessionOptions()
    if int8_saturates():  # exact int8 kernels instead (on CPUs with VNNI the option only slows them down)
        opts.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels_file = Path(model_path).parent / "labels.json"
    info = json.loads(labels_file.read_text()) if labels_file.is_file() else {}
    labels = json.loads(meta["class_names"]) if "class_names" in meta else info["class_names"]
    fit = fit_mode(json.loads(meta.get("input", "{}")).get("resize", info.get("input", {}).get("resize", "")))
    inp = session.get_inputs()[0]
    nchw = json.loads(meta.get("input", "{}")).get("layout") == "NCHW"  # exported with --onnx-layout nchw
    _, h, w, c = inp.shape if not nchw else [inp.shape[i] for i in (0, 2, 3, 1)]
    for path in images:
        x = preprocess(path, h, w, c, fit)  # uint8 pixels; the model divides by 255 itself
        if nchw:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if inp.type != "tensor(uint8)":  # exported with the default --onnx-input float32
            x = x.astype(np.float32)
        y = session.run(None, {inp.name: x})[0][0]
        best = np.argsort(-y)[:top_k]
        print(f"{path}: " + ", ".join(f"{labels[i]} {y[i]:.3f}" for i in best))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
