"""Classify images with MediaPipe Tasks' ImageClassifier, the way an Android, iOS or web app loads a .tflite file.

MediaPipe reads the file's TFLite metadata (input normalization, labels.txt); a float-input file without it is
refused. Run it with a Python that has MediaPipe, in its own venv: MediaPipe (absl-py~=2.3) and tfmot
(absl-py~=1.2), which edgecnn installs, cannot share one:

    python3 -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==1.2.3
    /tmp/mp/bin/python tools/check_mediapipe.py runs/run1/exports/model_int8.tflite images.npy

IMAGES: a .npy of uint8 images (N, H, W, C) or image files. Prints one JSON object: the MediaPipe version and,
for each image, every category (index, name, score) in index order; or {"error": ...} and exit 1 when
MediaPipe refuses the model.

``--api task-library`` runs the TFLite Task Library's ImageClassifier instead (``pip install tflite-support==0.4.4``
in its own venv: protobuf<4; its native module wants libusb-1.0, which the ``libusb-package`` wheel carries if the
system lacks it: put that file on LD_LIBRARY_PATH as libusb-1.0.so.0). Its version is printed under "mediapipe".
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--api", choices=("mediapipe", "task-library"), default="mediapipe")
    args = ap.parse_args(argv)
    import numpy as np

    arrays = np.load(args.images[0]) if len(args.images) == 1 and args.images[0].endswith(".npy") else None
    version, images, create = (task_library if args.api == "task-library" else mediapipe)(args.model, args.images,
                                                                                         arrays)
    try:
        classifier = create()
    except Exception as exc:  # each API raises ValueError/RuntimeError with its own status text
        print(json.dumps({"mediapipe": version, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    out = []
    for image in images:
        cats = classifier.classify(image).classifications[0].categories
        out.append(sorted(({"index": c.index, "name": c.category_name, "score": c.score} for c in cats),
                          key=lambda c: c["index"]))
    print(json.dumps({"mediapipe": version, "results": out}))
    return 0


def mediapipe(model: str, paths: list[str], arrays):
    """(version, images, a function creating the classifier) for MediaPipe Tasks."""
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import image_classifier

    if arrays is not None:
        images = [mp.Image(image_format=mp.ImageFormat.GRAY8 if a.shape[-1] == 1 else mp.ImageFormat.SRGB,
                           data=np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)) for a in arrays]
    else:
        images = [mp.Image.create_from_file(p) for p in paths]
    opts = image_classifier.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=-1)
    return mp.__version__, images, lambda: image_classifier.ImageClassifier.create_from_options(opts)


def task_library(model: str, paths: list[str], arrays):
    """The same for the TFLite Task Library (tflite-support), the API before MediaPipe Tasks."""
    from importlib.metadata import version

    import numpy as np
    from tflite_support.task import core, processor, vision

    images = ([vision.TensorImage.create_from_array(np.ascontiguousarray(a)) for a in arrays] if arrays is not None
              else [vision.TensorImage.create_from_file(p) for p in paths])
    opts = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=model),
                                         classification_options=processor.ClassificationOptions(max_results=-1))
    return ("tflite-support " + version("tflite-support"), images,
            lambda: vision.ImageClassifier.create_from_options(opts))


if __name__ == "__main__":
    sys.exit(main())
