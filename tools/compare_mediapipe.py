"""A run's .tflite exports through MediaPipe Tasks' ImageClassifier and through edgecnn's LiteRT runner, on the
run's test split: accuracy of each, the largest score difference, top-1 agreement, and whether MediaPipe named
the classes as labels.json does.

    python3 -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==1.2.3     # its own venv (absl-py clash)
    python tools/compare_mediapipe.py RUN --mediapipe-python /tmp/mp/bin/python [--data SRC] [--samples N]
        [--frame WxH] [--fit squash|crop|pad] [--api mediapipe|task-library]

``--frame WxH`` enlarges each test image (bicubic) to a WxH frame, as a camera would hand one over: MediaPipe
fits it to the model its own way, LiteRT gets it fitted as edgecnn trained the run (``--fit``: the run's
``--resize`` unless given), so the table shows how far the two preprocessings part.

MediaPipe runs in that venv (tools/check_mediapipe.py); this script runs in edgecnn's. Prints a markdown table,
or JSON with --json. A file MediaPipe refuses (a float file exported with --no-metadata) is a row saying why.
Exit 1 if any file was refused or named the classes differently.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CHECK = Path(__file__).resolve().parent / "check_mediapipe.py"


def compare(model: Path, x: np.ndarray, y: np.ndarray, class_names: list[str], mediapipe_python: str,
            images_npy: Path, api: str = "mediapipe") -> dict:
    """One row: ``images_npy`` (what MediaPipe is given) through MediaPipe, ``x`` through LiteRT."""
    from edgecnn.runners import open_runner

    out = subprocess.run([mediapipe_python, str(CHECK), str(model), str(images_npy), "--api", api],
                         capture_output=True, text=True, timeout=3600)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"error: {CHECK.name} printed nothing for {model}: {out.stderr.strip()[-500:]}")
    res = json.loads(lines[-1])
    row = {"file": model.name, "mediapipe": res["mediapipe"]}
    if "error" in res:
        return row | {"status": "refused", "error": res["error"]}
    scores = np.array([[c["score"] for c in r] for r in res["results"]])
    probs = open_runner(model).predict(x, batch_size=256)
    return row | {"status": "ok", "images": len(x),
                  "class_names_match": all([c["name"] for c in r] == class_names for r in res["results"]),
                  "mediapipe_accuracy": float(np.mean(scores.argmax(1) == y)),
                  "litert_accuracy": float(np.mean(probs.argmax(1) == y)),
                  "max_abs_diff": float(np.abs(scores - probs).max()),
                  "agreement": float(np.mean(scores.argmax(1) == probs.argmax(1)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--mediapipe-python", required=True)
    ap.add_argument("--data", help="data source (default: the run's own)")
    ap.add_argument("--samples", type=int, default=0, help="first N test images (default: all)")
    ap.add_argument("--frame", help="WxH: hand both runtimes test images enlarged to this size")
    ap.add_argument("--fit", choices=("squash", "crop", "pad"), help="how LiteRT's input is fitted from a --frame "
                    "(default: as the run was trained)")
    ap.add_argument("--api", choices=("mediapipe", "task-library"), default="mediapipe",
                    help="task-library: the TFLite Task Library (tflite-support) in that Python instead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.frame and not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", args.frame.lower()):
        ap.error(f"--frame must be WIDTHxHEIGHT, like 96x64, got {args.frame!r}")

    from edgecnn import runs
    from edgecnn.data.images import resize_mode
    from edgecnn.evaluate import load_run_data

    run = Path(args.run)
    ds = load_run_data(run, args.data)
    x, y = ds.x_test, ds.y_test
    if args.samples:
        x, y = x[:args.samples], y[:args.samples]
    models = sorted((run / "exports").glob("*.tflite"))
    if not models:
        raise SystemExit(f"error: no .tflite files in {run / 'exports'}")
    given, fit = x, None
    if args.frame:
        from PIL import Image

        from edgecnn.data.images import fit_image

        w, h = (int(v) for v in args.frame.lower().split("x"))
        fit = args.fit or resize_mode((runs.labels(run).get("input") or {}).get("resize"))
        given = np.stack([np.asarray(Image.fromarray(a.squeeze()).resize((w, h), Image.BICUBIC)).reshape(
            h, w, -1) for a in x])
        x = np.stack([np.asarray(fit_image(Image.fromarray(a.squeeze()), x.shape[2], x.shape[1], fit)).reshape(
            x.shape[1:]) for a in given])
    with tempfile.TemporaryDirectory(prefix="edgecnn-mediapipe-") as tmp:
        np.save(Path(tmp) / "x.npy", given)
        rows = [compare(m, x, y, ds.class_names, args.mediapipe_python, Path(tmp) / "x.npy", args.api)
                for m in models]
    if args.json:
        print(json.dumps({"run": str(run), "frame": args.frame, "fit": fit, "rows": rows}))
    else:
        who = "" if args.api == "task-library" else "MediaPipe "
        print(f"{who}{rows[0]['mediapipe']} vs LiteRT on {len(x)} test images of `{run.name}`"
              + (f", enlarged to {args.frame} frames (LiteRT's input fitted by {fit})" if args.frame else "") + "\n")
        api = "Task Library" if args.api == "task-library" else "MediaPipe"
        print(f"| file | {api} accuracy | LiteRT accuracy | max abs score difference | top-1 agreement |")
        print("|---|---|---|---|---|")
        for r in rows:
            if r["status"] != "ok":
                print(f"| {r['file']} | refused: {r['error'][:100]} | | | |")
            else:
                print(f"| {r['file']} | {100 * r['mediapipe_accuracy']:.2f}% | {100 * r['litert_accuracy']:.2f}% | "
                      f"{r['max_abs_diff']:.2g} | {100 * r['agreement']:.2f}% |")
    return 1 if any(r["status"] != "ok" or not r["class_names_match"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
