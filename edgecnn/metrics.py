"""Classification metrics on predicted probabilities (numpy only)."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    acc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = y_true == c
        if mask.any():
            acc[c] = float(np.mean(y_pred[mask] == c))
    return acc


def cross_entropy(probs: np.ndarray, y_true: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(y_true)), y_true].astype(np.float64), 1e-12, 1.0)
    return float(-np.mean(np.log(p)))


def topk_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def classification_report(y_true, y_pred, class_names: list[str]) -> str:
    """Per-class precision, recall, F1 and support, like scikit-learn's report: a class neither in ``y_true``
    nor predicted (a test set holding some of the classes) has no row and no part in the macro average."""
    n = len(class_names)
    cm = confusion(y_true, y_pred, n)
    width = max(12, max(len(c) for c in class_names) + 2)
    lines = [f"{'':{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    f1s, supports = [], []
    for c, name in enumerate(class_names):
        if not cm[c].sum() and not cm[:, c].sum():
            continue
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c].sum() if cm[c].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        supports.append(int(cm[c].sum()))
        lines.append(f"{name:>{width}}{prec:10.4f}{rec:10.4f}{f1:10.4f}{cm[c].sum():10d}")
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else 0.0
    lines += ["", f"{'accuracy':>{width}}{'':20}{acc:10.4f}{total:10d}",
              f"{'macro avg f1':>{width}}{'':20}{np.mean(f1s):10.4f}{total:10d}"]
    return "\n".join(lines) + "\n"


def evaluate(probs: np.ndarray, y_true: np.ndarray, class_names: list[str]) -> dict:
    """Everything metrics.json and the reports need."""
    y_pred = probs.argmax(axis=1)
    n = len(class_names)
    pca = per_class_accuracy(y_true, y_pred, n)
    return {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        # mean recall over the classes in the test set: what accuracy would be with every class equally large
        "test_balanced_accuracy": float(np.nanmean(pca)),
        "test_top5_accuracy": topk_accuracy(probs, y_true, 5),
        "test_loss": cross_entropy(probs, y_true),
        "test_images": int(len(y_true)),
        "per_class_accuracy": {name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, pca)},
        "confusion_matrix": confusion(y_true, y_pred, n).tolist(),
    }
