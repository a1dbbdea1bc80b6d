"""Bounded, per-file image decoding with Pillow: the one place images are read."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif")
FORMATS = "JPEG, PNG, BMP, WebP, GIF, TIFF or HEIC"  # for messages
HEIF_EXTENSIONS = (".heic", ".heif")  # iPhone photos; decoded by pillow-heif (the heic extra) when installed
# Refuse decompression bombs. Other formats decode whole; a JPEG decodes at up to 1/8 scale (below), so a
# 200-megapixel phone photo costs what a 3-megapixel one does.
MAX_PIXELS = 40_000_000
MAX_JPEG_PIXELS = 250_000_000
MAX_HEIF_PIXELS = 64_000_000  # a 48-megapixel iPhone HEIC (8064x6048) decodes whole: no reduced-scale decode
# A JPEG at least this many times the model input on both sides decodes at 1/2, 1/4 or 1/8 scale (DCT
# scaling, Pillow's draft), never below this multiple, as Pillow's own thumbnail() does; the bilinear resize
# to the input follows. Measured on a 4032x3024 photo to 32x32: 4x faster, pixels within 1 of a full decode.
REDUCING_GAP = 2
# How images are made to fit the model (--resize): the whole image squashed to the input's shape, its
# centre cropped to the input's aspect ratio first, or the whole image scaled to fit inside and centred on
# black (letterbox). labels.json records the name on the right; predict, evaluate, export and the standalone
# scripts resize as the run was trained.
RESIZE_MODES = {"squash": "bilinear-squash", "crop": "bilinear-center-crop", "pad": "bilinear-letterbox-black"}
DECODE = ("first frame of animated GIFs and multi-page TIFFs; EXIF orientation applied; 16-bit grayscale scaled "
          f"to 8 bits (/257); a JPEG at least {REDUCING_GAP}x the input decodes at 1/2-1/8 scale "
          f"(Pillow draft) down to no less than {REDUCING_GAP}x the input, then the bilinear resize")


class ImageError(EdgeCNNError):
    """One image file that cannot be read."""


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise EdgeCNNError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def resize_mode(recorded: str | None) -> str:
    """The --resize mode a labels.json ``input.resize`` names (runs made before --resize squashed)."""
    return next((mode for mode, name in RESIZE_MODES.items() if name == recorded), "squash")


def crop_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """The centred box (left, top, right, bottom) of a width x height image with the output's aspect ratio,
    in whole pixels; the image is cut to it, then resized (no pixel outside it blends in)."""
    if width * out_height > height * out_width:  # wider than the output: cut the sides
        w = round(height * out_width / out_height)
        return ((width - w) // 2, 0, (width - w) // 2 + w, height)
    h = round(width * out_height / out_width)
    return (0, (height - h) // 2, width, (height - h) // 2 + h)


def letterbox_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """Where (left, top, right, bottom) a width x height image lands, scaled to fit inside the output with
    its aspect ratio kept, in whole pixels, centred; the rest of the output is black."""
    if width * out_height > height * out_width:  # wider than the output: bands above and below
        h = max(1, round(height * out_width / width))
        return (0, (out_height - h) // 2, out_width, (out_height - h) // 2 + h)
    w = max(1, round(width * out_height / height))
    return ((out_width - w) // 2, 0, (out_width - w) // 2 + w, out_height)


def fit_image(img, width: int, height: int, resize: str = "squash"):
    """A Pillow image resized (bilinear) to width x height as ``resize`` says: squash the whole image, crop
    its centre to the output's aspect ratio first, or pad (letterbox) it on black."""
    from PIL import Image

    if resize == "crop":
        img = img.crop(crop_box(img.width, img.height, width, height))
    elif resize == "pad":
        left, top, right, bottom = letterbox_box(img.width, img.height, width, height)
        if (right - left, bottom - top) != img.size:
            img = img.resize((right - left, bottom - top), Image.BILINEAR)
        if img.size != (width, height):
            canvas = Image.new(img.mode, (width, height))  # zeros: black
            canvas.paste(img, (left, top))
            img = canvas
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return img


@functools.cache
def heif_available() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()  # applies the file's rotation itself and resets EXIF orientation to 1
    return True


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path, image_size: int | tuple[int, int], channels: int = 3,
               resize: str = "squash") -> np.ndarray:
    """Decode ``path`` to a uint8 array (H, W, channels), resized exactly as training does (``resize``:
    squash, crop or pad; see fit_image).

    Raises ImageError naming the file for anything Pillow cannot decode completely
    (missing, truncated, corrupt, not an image, or over MAX_PIXELS).
    """
    from PIL import Image, ImageOps, JpegImagePlugin

    Image.MAX_IMAGE_PIXELS = MAX_JPEG_PIXELS
    path = Path(path)
    if path.suffix.lower() in HEIF_EXTENSIONS and not heif_available():
        raise ImageError(f"{path}: HEIC/HEIF images need pillow-heif: pip install 'edgecnn[heic]'")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)  # MPO (many phone photos) included
                heif = img.format == "HEIF"
                if img.width * img.height > (MAX_JPEG_PIXELS if jpeg else MAX_HEIF_PIXELS if heif else MAX_PIXELS):
                    raise ImageError(f"{path}: image too large ({img.width}x{img.height} pixels)")
                if jpeg:  # the larger side of the input is the one both sides must keep
                    side = REDUCING_GAP * max(size)
                    img.draft(img.mode, (side, side))
                img.load()  # the first frame of an animated GIF or a multi-page TIFF
                if img.mode == "F":  # 32-bit float TIFF: no fixed range to map to 0..255
                    raise ImageError(f"{path}: 32-bit floating-point image; edgecnn reads 8- and 16-bit images "
                                     "(scale it to 0..255 or 0..65535 integers)")
                img = ImageOps.exif_transpose(img)  # as a photo viewer shows it (phones store it sideways)
                if img.mode.startswith("I"):  # 16-bit grayscale PNG: convert() would clip 0..65535 at 255
                    img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257).clip(0, 255)
                                          .astype(np.uint8))
                img = img.convert("L" if channels == 1 else "RGB")
                img = fit_image(img, size[1], size[0], resize)
                arr = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    if channels == 1:
        arr = arr[..., None]
    return arr


def load_images(paths: list[Path], image_size: int | tuple[int, int], channels: int, workers: int = 4,
                resize: str = "squash"):
    """Decode many files in parallel to ``image_size`` (a side, or height and width). Returns (array of good
    images, list of errors, index of good)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        try:
            return load_image(p, image_size, channels, resize), None
        except ImageError as exc:
            return None, str(exc)

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    out = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    errors: list[str] = []
    good: list[int] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (arr, err) in enumerate(pool.map(one, paths, chunksize=64)):
            if err is None:
                out[len(good)] = arr
                good.append(i)
            else:
                errors.append(err)
    return out[: len(good)], errors, good
