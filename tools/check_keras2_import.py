"""Import a model that Keras 2 (tf_keras) trained, from its .h5 file and its SavedModel, and export it to int8.

    python tools/check_keras2_import.py --data DATA [--epochs 3] [--images 0]

Trains MLPerf Tiny's ResNet-8 built with the Keras 2 layers of its reference (Conv2D with L2, BatchNormalization,
Activation, Add, AveragePooling2D, Flatten, Dense softmax) in tf_keras, in a child process (tf_keras is Keras 2,
which edgecnn's process must not load), on DATA's training images scaled to 0..1 with a RandomFlip in front, and
saves it as an .h5 file and as a SavedModel. Then each is imported (`edgecnn import`, --input-range auto),
exported to int8 TFLite and scored: prints a markdown table of tf_keras's own test accuracy, the imported run's,
the int8 TFLite file's, and the input range import chose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TRAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tf_keras as K
    from edgecnn import data

    src, out, epochs, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    K.utils.set_random_seed(0)
    ds = data.load(src, image_size=32)
    pick = np.random.default_rng(0).permutation(len(ds.y_train))[:images or None]  # a folder's are class by class
    x, y = ds.x_train[pick] / 255.0, ds.y_train[pick]
    L, l2 = K.layers, K.regularizers.l2(1e-4)

    def conv(x, filters, stride=1):
        return L.Conv2D(filters, 3, strides=stride, padding="same", kernel_initializer="he_normal",
                        kernel_regularizer=l2)(x)

    def stack(x, filters, stride):
        y = L.Activation("relu")(L.BatchNormalization()(conv(x, filters, stride)))
        y = L.BatchNormalization()(conv(y, filters))
        if stride > 1:
            x = L.Conv2D(filters, 1, strides=stride, padding="same", kernel_initializer="he_normal",
                         kernel_regularizer=l2)(x)
        return L.Activation("relu")(L.Add()([x, y]))

    inputs = K.Input((32, 32, 3))
    x_ = L.RandomFlip("horizontal")(inputs)
    x_ = L.Activation("relu")(L.BatchNormalization()(conv(x_, 16)))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        x_ = stack(x_, filters, stride)
    x_ = L.Flatten()(L.AveragePooling2D(pool_size=x_.shape[1])(x_))
    model = K.Model(inputs, L.Dense(ds.num_classes, activation="softmax", kernel_initializer="he_normal")(x_))
    model.compile(K.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=2)
    _, accuracy = model.evaluate(ds.x_test / 255.0, ds.y_test, verbose=0)
    model.save(out + "/resnet8.h5")
    model.save(out + "/resnet8_savedmodel", save_format="tf")
    print("RESULT", json.dumps({"accuracy": accuracy, "train_images": len(x), "test_images": len(ds.y_test)}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an edgecnn data source (CIFAR-10: 32x32 RGB)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=0, help="training images (0: all)")
    ap.add_argument("--input-range", default="auto", help="passed to edgecnn import (default: auto)")
    args = ap.parse_args()

    from edgecnn.errors import EdgeCNNError
    from edgecnn.evaluate import evaluate_file
    from edgecnn.export import ExportConfig, export
    from edgecnn.importer import ImportConfig, import_model

    with tempfile.TemporaryDirectory(prefix="edgecnn-keras2-") as tmp:
        done = subprocess.run([sys.executable, "-c", TRAIN, args.data, tmp, str(args.epochs), str(args.images)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"tf_keras training failed: {done.stderr[-2000:]}")
        trained = json.loads(done.stdout.split("RESULT", 1)[1])
        print(f"tf_keras ResNet-8, {args.epochs} epochs on {trained['train_images']:,} images of {args.data}: "
              f"{trained['accuracy'] * 100:.2f}% on {trained['test_images']:,} test images\n")
        print("| file | input range chosen | Keras 2 (tf_keras) | imported (Keras 3) | int8 TFLite |")
        print("|---|---|---:|---:|---:|")
        for name in ("resnet8.h5", "resnet8_savedmodel"):
            try:
                run = import_model(ImportConfig(model=str(Path(tmp) / name), data=args.data,
                                                input_range=args.input_range, runs_dir=str(Path(tmp) / "runs")),
                                   log=lambda m: None)
                export(ExportConfig(run=str(run), formats="tflite", quantize="int8"), log=lambda m: None)
            except EdgeCNNError as exc:
                print(f"| {name} | error: {exc} | {trained['accuracy'] * 100:.2f}% | - | - |")
                continue
            imported = json.loads((run / "metrics.json").read_text())
            int8 = evaluate_file(run / "exports" / "model_int8.tflite")
            print(f"| {name} | {imported['imported']['input_range']} | {trained['accuracy'] * 100:.2f}% "
                  f"| {imported['test_accuracy'] * 100:.2f}% | {int8['test_accuracy'] * 100:.2f}% |")


if __name__ == "__main__":
    main()
