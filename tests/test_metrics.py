import numpy as np

from edgecnn import metrics


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    y = np.array([0, 0, 0, 0, 1, 1])  # no class 2 in this test set
    pred = np.array([0, 0, 0, 0, 0, 1])
    m = metrics.evaluate(np.eye(3)[pred], y, ["a", "b", "c"])
    assert m["test_accuracy"] == 5 / 6
    assert m["test_balanced_accuracy"] == (1.0 + 0.5) / 2
    assert m["per_class_accuracy"]["c"] is None


def test_report_leaves_out_classes_neither_present_nor_predicted():
    y = np.array([0, 0, 1, 1])
    report = metrics.classification_report(y, np.array([0, 1, 1, 1]), ["a", "b", "c"])
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.strip()}
    assert "c" not in rows
    f1_a, f1_b = 2 * 1 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert float(rows["macro"][-2]) == round((f1_a + f1_b) / 2, 4)
