#!/usr/bin/env python3
"""Classify images with model_int8.tflite (or any edgecnn .tflite) using only LiteRT, numpy and Pillow.

    pip install ai-edge-litert numpy pillow   # and pillow-heif for HEIC photos
    python infer_tflite.py model_int8.tflite photo.jpg [more.jpg ...]

Written by edgecnn beside the exports; needs neither TensorFlow nor edgecnn. Class names come from
labels.json beside the model, else from the labels.txt edgecnn zips onto the .tflite file (its metadata).
"""

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

try:  # HEIC/HEIF photos, as edgecnn reads them (pip install pillow-heif)
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pass
from ai_edge_litert.interpreter import Interpreter


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


def main(model_path, images, top_k=3):
    beside = Path(model_path).parent / "labels.json"
    if beside.is_file():
        info = json.loads(beside.read_text())
    else:  # labels.txt that edgecnn zips onto the .tflite file (its TFLite metadata)
        try:
            with zipfile.ZipFile(model_path) as z:
                info = {"class_names": z.read("labels.txt").decode().splitlines()}
        except (OSError, KeyError, zipfile.BadZipFile):
            sys.exit(f"error: no labels.json beside {model_path} and no labels.txt in it")
    labels = info["class_names"]
    fit = fit_mode(info.get("input", {}).get("resize", ""))  # how training made images fit
    it = Interpreter(model_path=str(model_path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    _, h, w, c = inp["shape"]
    for path in images:
        x = preprocess(path, h, w, c, fit).astype(np.float32)
        if inp["dtype"] in (np.uint8, np.int8):  # integer input: quantize the raw pixels
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        if out["dtype"] in (np.uint8, np.int8):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        best = np.argsort(-y)[:top_k]
        print(f"{path}: " + ", ".join(f"{labels[i]} {y[i]:.3f}" for i in best))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
