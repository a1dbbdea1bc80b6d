"""Does `edgecnn import` find the input convention a model was trained on? Check it on a real model.

    python tools/check_import_ranges.py RUN --data DATA

RUN is an edgecnn run (its model.keras takes 0..255 pixels). For each convention edgecnn knows (0..255,
0..1, -1..1, torch, caffe) the model is saved behind a fixed 1x1 convolution that undoes that convention,
so the saved model takes its input that way, as a model trained elsewhere would; `edgecnn import` (auto)
then has to find it. Prints, per convention, the accuracies auto measured, what it chose (or its error
line) and the test accuracy of the imported run, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgecnn import runs
from edgecnn.errors import EdgeCNNError
from edgecnn.importer import CONVENTIONS, ImportConfig, import_model, transform
from edgecnn.model import load_keras


def behind(core, key: str):
    """``core`` (0..255 input) behind a 1x1 convolution mapping ``key``'s input back to 0..255."""
    from edgecnn._tf import keras

    c = core.input_shape[-1]
    matrix, bias = transform(key, c)
    inverse = np.linalg.inv(matrix)  # x = (y - bias) @ inverse
    inputs = keras.Input(core.input_shape[1:])
    conv = keras.layers.Conv2D(c, 1, name="undo_" + key.replace(".", "_").replace("-", "m"))
    model = keras.Model(inputs, core(conv(inputs)))
    conv.set_weights([inverse.reshape(1, 1, c, c).astype(np.float32), (-bias @ inverse).astype(np.float32)])
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an edgecnn run directory (or name under --runs-dir)")
    ap.add_argument("--data", required=True, help="the data the run was trained on")
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args()

    core = load_keras(runs.resolve(args.run, args.runs_dir) / runs.MODEL_FILE)
    keys = [k for k in CONVENTIONS if core.input_shape[-1] == 3 or k not in ("torch", "caffe")]
    print("| saved to take | " + " | ".join(keys) + " | chosen | test accuracy |")
    print("|---" * (len(keys) + 3) + "|")
    with tempfile.TemporaryDirectory(prefix="edgecnn-ranges-") as tmp:
        for key in keys:
            path = Path(tmp) / f"{key.replace('.', '_')}.keras"
            behind(core, key).save(path)
            lines: list[str] = []
            try:
                run = import_model(ImportConfig(model=str(path), data=args.data, runs_dir=str(Path(tmp) / "runs")),
                                   log=lines.append)
            except EdgeCNNError as exc:
                print(f"| {key} | " + " | ".join("-" for _ in keys) + f" | error: {exc} | - |")
                continue
            imported = json.loads((run / "config.json").read_text())["imported"]
            metrics = json.loads((run / "metrics.json").read_text())
            acc = imported["input_range_accuracy"]
            print(f"| {key} | " + " | ".join(f"{acc[k] * 100:.1f}%" for k in keys)
                  + f" | {imported['input_range']} | {metrics['test_accuracy'] * 100:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
