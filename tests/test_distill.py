"""Knowledge distillation (``edgecnn train --teacher``)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_ARCH, TINY_DATA
from edgecnn.errors import EdgeCNNError
from edgecnn.train import TrainConfig, train

STUDENT = dict(data=TINY_DATA, image_size=16, arch=TINY_ARCH, epochs=8, batch_size=32, lr=1e-2, augment="flip",
               keep="last")


def _rolled_teacher(tiny_run, folder):
    """A copy of the tiny run whose classifier names class i+1 wherever it said class i: as sure, always wrong."""
    from edgecnn.model import load_keras

    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns("exports"))
    model = load_keras(folder / "model.keras")
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    model.save(folder / "model.keras")
    return folder


@pytest.mark.slow
def test_the_student_learns_what_the_teacher_says(tiny_run, tmp_path):
    """Taught only by a teacher that is always wrong the same way (weight 1: no labels), the student
    agrees with it and scores near 0; taught by the real one, it scores about as the teacher. The last
    epoch is kept: ``best`` would keep the epoch that agrees most with the labels."""
    wrong = _rolled_teacher(tiny_run, tmp_path / "wrong")
    scores = {}
    for name, teacher in (("labels", None), ("wrong", str(wrong)), ("right", str(tiny_run))):
        run = train(TrainConfig(**STUDENT, teacher=teacher, distill_weight=1.0, name=name,
                                runs_dir=str(tmp_path / "runs")), log=lambda m: None)
        scores[name] = json.loads((run / "metrics.json").read_text())
    assert scores["labels"]["teacher"] is None and scores["labels"]["test_accuracy"] > 0.45  # 0.58 here
    wrong_m, right_m = scores["wrong"], scores["right"]
    assert wrong_m["teacher"]["test_accuracy"] < 0.1 and wrong_m["teacher"]["agreement"] > 0.5  # 0.06, 0.61
    assert wrong_m["test_accuracy"] < 0.15  # 0.08
    assert right_m["teacher"]["agreement"] > 0.5 and right_m["test_accuracy"] > 0.4  # 0.72, 0.49 (teacher 0.52)
    assert right_m["teacher"]["file"] == str(tiny_run / "model.keras")
    cfg = json.loads((tmp_path / "runs" / "right" / "config.json").read_text())
    assert cfg["teacher"] == str(tiny_run) and cfg["distill_weight"] == 1.0 and cfg["distill_temperature"] == 4.0
    from edgecnn import report

    page = report.write(tmp_path / "runs" / "right")[0].read_text()
    assert (f"| distilled from | {tiny_run / 'model.keras'} (test accuracy "
            f"{right_m['teacher']['test_accuracy'] * 100:.2f}%; weight 1, temperature 4;") in page
    # only the student is saved: the deployable model has no teacher inside
    import zipfile

    with zipfile.ZipFile(tmp_path / "runs" / "right" / "model.keras") as z:
        assert "Teacher" not in z.read("config.json").decode()


def test_distillation_loss_is_hintons():
    """(1 - w) x crossentropy + w x T^2 x KL(teacher_T || student_T), p_T = softmax(log p / T)."""
    from edgecnn import distill
    from edgecnn._tf import keras

    rng = np.random.default_rng(0)
    student, teacher = (np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in rng.normal(size=(2, 5, 4)))
    labels = np.eye(4)[rng.integers(0, 4, 5)]
    w, t = 0.7, 3.0
    loss = distill.compile_args(keras, w, t, 0.0)["loss"]
    got = float(loss(labels, np.concatenate([student, teacher], 1).astype("float32")))

    def tempered(p):
        q = np.exp(np.log(p) / t)
        return q / q.sum(1, keepdims=True)

    ce = -(labels * np.log(student)).sum(1)
    kl = (tempered(teacher) * (np.log(tempered(teacher)) - np.log(tempered(student)))).sum(1)
    np.testing.assert_allclose(got, ((1 - w) * ce + w * t * t * kl).mean(), rtol=1e-5)
    # a student that predicts as the teacher does pays only the hard term
    same = float(loss(labels, np.concatenate([teacher, teacher], 1).astype("float32")))
    np.testing.assert_allclose(same, ((1 - w) * -(labels * np.log(teacher)).sum(1)).mean(), rtol=1e-5)


def test_a_teacher_that_does_not_fit_the_data_is_refused(tiny_run, tmp_path):
    from edgecnn.distill import load_teacher

    names = json.loads((tiny_run / "labels.json").read_text())["class_names"]
    model, path = load_teacher(str(tiny_run), tmp_path, names, (16, 16, 3))
    assert path == tiny_run / "model.keras" and model.output_shape == (None, len(names))
    assert load_teacher(str(path), tmp_path, names, (16, 16, 3))[1] == path  # the .keras file itself
    with pytest.raises(EdgeCNNError, match=r"takes 16x16x3 images, the data gives 32x32x3"):
        load_teacher(str(tiny_run), tmp_path, names, (32, 32, 3))
    with pytest.raises(EdgeCNNError, match=r"predicts 10 classes, the data has 3"):
        load_teacher(str(tiny_run), tmp_path, names[:3], (16, 16, 3))
    with pytest.raises(EdgeCNNError, match=r"are not the data's .* in the same order"):
        load_teacher(str(tiny_run), tmp_path, names[::-1], (16, 16, 3))
    with pytest.raises(EdgeCNNError, match=r"^--teacher: run 'nope' not found"):
        load_teacher("nope", tmp_path, names, (16, 16, 3))
    with pytest.raises(EdgeCNNError, match="--distill-weight"):
        TrainConfig(teacher="x", distill_weight=0.0).check()
    with pytest.raises(EdgeCNNError, match="--distill-temperature"):
        TrainConfig(teacher="x", distill_temperature=-1).check()


def test_cli_refuses_distillation_options_without_a_teacher_and_a_missing_teacher(tmp_path):
    base = [sys.executable, "-m", "edgecnn", "train", "--data", "shapes:60", "--image-size", "16", "--epochs", "1",
            "--runs-dir", str(tmp_path)]
    out = subprocess.run([*base, "--distill-weight", "0.5"], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip() == "error: --distill-weight needs --teacher (the run to " \
        "distil from)"
    out = subprocess.run([*base, "--teacher", str(tmp_path / "missing")], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().startswith("error: --teacher: run ")
    assert "Traceback" not in out.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "no run folder is left for a refused teacher"
