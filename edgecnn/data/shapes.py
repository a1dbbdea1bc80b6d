"""``shapes``: a built-in, offline, deterministic synthetic dataset of drawn shapes.

Ten classes of shapes with random colour, size, position, rotation, background and
noise. Outlines versus filled shapes and similar silhouettes (circle/ring, square/frame,
star/cross) need real spatial features: an MLP does clearly worse than a small CNN.
"""

from __future__ import annotations

import math

import numpy as np

CLASSES = ["circle", "ring", "square", "frame", "triangle", "star", "cross", "bar", "crescent", "dots"]
DEFAULT_TRAIN = 10000


def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        a = rot + 2 * math.pi * i / steps
        rr = (inner if i % 2 else r) if inner else r
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated_rect(cx, cy, w, h, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]


def _draw(draw, label: int, cx, cy, r, rot, fg, bg, line):
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=line)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rot), fill=fg)
    elif name == "frame":
        draw.polygon(_polygon(cx, cy, r, 4, rot), outline=fg, width=line)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fg)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.42), fill=fg)
    elif name == "cross":
        draw.polygon(_rotated_rect(cx, cy, r, r * 0.22, rot), fill=fg)
        draw.polygon(_rotated_rect(cx, cy, r, r * 0.22, rot + math.pi / 2), fill=fg)
    elif name == "bar":
        draw.polygon(_rotated_rect(cx, cy, r, r * 0.28, rot), fill=fg)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        ox, oy = cx + 0.55 * r * math.cos(rot), cy + 0.55 * r * math.sin(rot)
        draw.ellipse([ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85], fill=bg)
    elif name == "dots":
        d = r * 0.55
        for sign in (-1, 1):
            x, y = cx + sign * d * math.cos(rot), cy + sign * d * math.sin(rot)
            rr = r * 0.38
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fg)


def _colour_pair(rng: np.random.Generator):
    while True:
        fg = rng.integers(0, 256, 3)
        bg = rng.integers(0, 256, 3)
        if np.abs(fg.astype(int) - bg.astype(int)).sum() > 240:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def generate(n: int, image_size: int | tuple[int, int] = 32, channels: int = 3,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` images (uint8, N x H x W x channels; ``image_size``: a side or (height, width)) and labels,
    balanced over the classes. A shape's size follows the shorter side, so shapes keep their proportions in a
    non-square image."""
    from PIL import Image, ImageDraw

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng(seed)
    scale = 2  # draw at twice the size, then downsample for anti-aliased edges
    sh, sw = h * scale, w * scale
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    x = np.empty((n, h, w, channels), dtype=np.uint8)
    for i, label in enumerate(labels):
        fg, bg = _colour_pair(rng)
        img = Image.new("RGB", (sw, sh), bg)
        draw = ImageDraw.Draw(img)
        r = min(sh, sw) * rng.uniform(0.24, 0.42)
        cx = rng.uniform(r * 0.8, sw - r * 0.8)
        cy = rng.uniform(r * 0.8, sh - r * 0.8)
        rot = rng.uniform(0, 2 * math.pi)
        line = max(2, int(r * rng.uniform(0.18, 0.3)))
        _draw(draw, int(label), cx, cy, r, rot, fg, bg, line)
        img = img.resize((w, h), Image.BOX)
        if channels == 1:
            img = img.convert("L")
        arr = np.asarray(img, dtype=np.float32).reshape(h, w, channels)
        arr = arr + rng.normal(0.0, rng.uniform(0, 10), arr.shape)
        x[i] = np.clip(arr, 0, 255).astype(np.uint8)
    return x, labels.astype(np.int64)


def load(n_train: int = DEFAULT_TRAIN, image_size: int | tuple[int, int] = 32, channels: int = 3, seed: int = 0):
    """Train/val/test splits with disjoint seeds; val and test each have n_train/6 images (min 100)."""
    n_eval = max(100, n_train // 6)
    splits = {}
    for offset, (name, n) in enumerate((("train", n_train), ("val", n_eval), ("test", n_eval))):
        splits[name] = generate(n, image_size, channels, seed=seed * 1000 + 17 + offset)
    return splits, list(CLASSES)
