"""Decoding a large JPEG for a small model: a full decode vs edgecnn's reduced-scale (draft) decode.

    python tools/bench_decode.py [--width 4032 --height 3024] [--size 32] [--rounds 10]

Writes a synthetic photo-sized JPEG (gradients and noise, quality 90) to a temporary folder and
times, alternately, a full decode + bilinear resize (what edgecnn did before) and
``edgecnn.data.images.load_image`` (JPEG decoded at 1/2-1/8 scale, never below twice the input,
then the same resize). Prints the median milliseconds per image and how far the pixels differ.
With pillow-heif installed (the heic extra) the same photo is also written as a HEIC (quality 90) and
its ``load_image`` timed in the same rounds: HEIC has no reduced-scale decode, so it decodes whole.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgecnn.data.images import heif_available, load_image


def full_decode(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4032)
    ap.add_argument("--height", type=int, default=3024)
    ap.add_argument("--size", type=int, default=32, help="model input side")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:args.height, 0:args.width]
    photo = np.stack([(xx / 16) % 256, (yy / 12) % 256, ((xx + yy) / 20) % 256], -1)
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        Image.fromarray(photo).save(path, quality=90)
        runs = [("full decode", full_decode, path), ("edgecnn (reduced-scale decode)", load_image, path)]
        if heif_available():
            Image.fromarray(photo).save(Path(tmp) / "photo.heic", quality=90)
            runs.append(("HEIC, edgecnn (whole decode)", load_image, Path(tmp) / "photo.heic"))
        times = {name: [] for name, _, _ in runs}
        for _ in range(args.rounds):
            for name, fn, file in runs:
                t = time.perf_counter()
                fn(file, args.size)
                times[name].append((time.perf_counter() - t) * 1000)
        diff = np.abs(full_decode(path, args.size).astype(int) - load_image(path, args.size).astype(int))
    print(f"{args.width}x{args.height} photo to {args.size}x{args.size}, median of {args.rounds}:\n")
    print("| decode | ms per image |\n|---|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} |")
    if not heif_available():
        print("\n(no HEIC row: pillow-heif is not installed)")
    full, fast = (statistics.median(times[name]) for name, _, _ in runs[:2])
    print(f"\n{full / fast:.1f}x faster; pixel difference max {diff.max()}, mean {diff.mean():.3f} (0..255)")


if __name__ == "__main__":
    main()
