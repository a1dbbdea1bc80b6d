import numpy as np

from edgecnn import metrics


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    y = np.array([0, 0, 0, 0, 1, 1])  # no class 2 in this test set
    pred = np.array([0, 0, 0, 0, 0, 1])
    m = metrics.evaluate(np.eye(3)[pred], y, ["a", "b", "c"])
    assert m["test_accuracy"] == 5 / 6
    assert m["test_balanced_accuracy"] == (1.0 + 0.5) / 2
    assert m["per_class_accuracy"]["c"] is None
