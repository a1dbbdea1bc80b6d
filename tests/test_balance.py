"""--class-balance: oversampled streams, class weights, and what a run records."""

import json
from collections import Counter

import numpy as np
import pytest

from conftest import make_folder
from edgecnn import balance
from edgecnn.errors import EdgeCNNError
from edgecnn.train import TrainConfig, make_dataset, train

Y = np.array([0] * 90 + [1] * 10 + [2] * 30)  # 9:1:3


def test_class_weights_equalize_the_classes_and_average_one():
    w = balance.class_weights(Y, 4)  # class 3 has no images
    assert w[3] == 0
    per_class_total = [w[c] * np.sum(Y == c) for c in range(3)]
    assert np.allclose(per_class_total, per_class_total[0])
    assert np.isclose(w[Y].mean(), 1.0), "the mean weight over the training images is 1"


def test_imbalance_names_the_largest_and_smallest_class():
    assert balance.imbalance(Y, ["a", "b", "c", "d"]) == (9.0, "a (90)", "b (10)")


def test_oversampled_stream_draws_classes_equally_and_cycles_each_class():
    x = np.arange(len(Y), dtype=np.uint8).reshape(-1, 1, 1, 1)
    ds = make_dataset(x, Y, 3, batch=30, shuffle=True, seed=0, repeat=True, class_balance="oversample")
    images, labels = [], []
    for a, b in ds.take(40):  # 1,200 draws
        images += a.numpy().ravel().astype(int).tolist()
        labels += b.numpy().argmax(1).tolist()
    assert all(Y[i] == c for i, c in zip(images, labels)), "each image keeps its own label"
    freq = Counter(labels)
    assert all(abs(freq[c] / 1200 - 1 / 3) < 0.05 for c in range(3)), freq
    rare = [i for i in images if Y[i] == 1]
    assert all(sorted(rare[k:k + 10]) == list(range(90, 100)) for k in range(0, len(rare) - 9, 10)), \
        "the rare class's 10 images come once each per cycle"
    assert len({tuple(rare[k:k + 10]) for k in range(0, 40, 10)}) > 1, "each cycle reshuffled"


def test_weighted_stream_carries_each_label_s_class_weight():
    x = np.zeros((len(Y), 1, 1, 1), np.uint8)
    ds = make_dataset(x, Y, 3, batch=len(Y), shuffle=True, seed=0, repeat=True, class_balance="weight")
    _, onehot, w = next(iter(ds))
    assert np.allclose(w.numpy(), balance.class_weights(Y, 3)[onehot.numpy().argmax(1)])


def test_oversampled_indices_follow_the_stream_s_rule():
    idx = balance.oversampled_indices(Y, 3000, seed=0)
    freq = np.bincount(Y[idx], minlength=3) / 3000
    assert np.all(np.abs(freq - 1 / 3) < 0.03), freq
    rare = idx[Y[idx] == 1]
    assert sorted(rare[:10]) == list(range(90, 100))


def test_unknown_class_balance_is_refused():
    with pytest.raises(EdgeCNNError, match="--class-balance must be one of none, oversample, weight, got 'smote'"):
        TrainConfig(class_balance="smote").check()


@pytest.mark.parametrize("mode", ["none", "oversample"])
def test_run_records_the_class_balance_and_says_what_it_did(tmp_path, mode):
    folder = make_folder(tmp_path / "colours", classes=("red", "green", "blue"), per_class=30, size=(16, 16))
    for p in sorted((folder / "blue").iterdir())[5:]:  # 30:30:5
        p.unlink()
    lines = []
    run = train(TrainConfig(data=str(folder), image_size=16, arch="C: 4n gap", epochs=1, batch_size=16,
                            augment="none", class_balance=mode, val_split=0.0, test_split=0.2,
                            runs_dir=str(tmp_path / "runs")), log=lines.append)
    m = json.loads((run / "metrics.json").read_text())
    assert m["class_balance"] == mode
    assert m["train_class_counts"] == {"blue": 4, "green": 24, "red": 24}
    said = "\n".join(lines)
    if mode == "none":
        assert "classes imbalanced: green (24) to blue (4) training images (--class-balance oversample" in said
    else:
        assert "--class-balance oversample: green (24) to blue (4) training images, every class drawn equally" in said
    assert json.loads((run / "config.json").read_text())["class_balance"] == mode
    if mode == "oversample":  # pruning fine-tunes as the run trained
        from edgecnn.finetune import finetune

        dst = finetune(str(run), "prune", str(tmp_path / "runs"), epochs=1, sparsity=0.5, log=lambda m: None)
        assert json.loads((dst / "metrics.json").read_text())["class_balance"] == "oversample"
