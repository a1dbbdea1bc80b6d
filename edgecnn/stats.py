"""Statistics for comparing an export with the Keras reference on the same images (numpy only)."""

from __future__ import annotations

from math import comb

import numpy as np


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p=0.5)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def flips(y_true: np.ndarray, ref_pred: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(correct -> wrong, wrong -> correct) counts going from the reference to this row."""
    ref_ok = ref_pred == y_true
    ok = pred == y_true
    return int(np.sum(ref_ok & ~ok)), int(np.sum(~ref_ok & ok))


def per_class_delta(y_true, ref_pred, pred, num_classes: int) -> np.ndarray:
    """Per-class accuracy of this row minus the reference's, in percentage points (nan: no images)."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        m = y_true == c
        if m.any():
            out[c] = 100.0 * (np.mean(pred[m] == c) - np.mean(ref_pred[m] == c))
    return out


def mean_kl(ref_probs: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean KL(reference || row) over images, in nats."""
    p = np.clip(ref_probs.astype(np.float64), eps, 1.0)
    q = np.clip(probs.astype(np.float64), eps, 1.0)
    p /= p.sum(1, keepdims=True)
    q /= q.sum(1, keepdims=True)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def latency_summary(seconds: list[float] | np.ndarray) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "latency_ms_min": float(ms.min()),
        "latency_runs": int(len(ms)),
    }


def score(y_true, probs) -> dict:
    """The accuracy columns of a benchmark row that need no reference: top-1 and top-5 against the labels."""
    from edgecnn.metrics import topk_accuracy

    return {"accuracy": float(np.mean(probs.argmax(1) == y_true)), "top5": topk_accuracy(probs, y_true, 5)}


def compare_to_reference(y_true, ref_probs, probs, class_names: list[str]) -> dict:
    """Every accuracy column of a benchmark row, against the Keras reference."""
    ref_pred, pred = ref_probs.argmax(1), probs.argmax(1)
    acc, ref_acc = float(np.mean(pred == y_true)), float(np.mean(ref_pred == y_true))
    bad, good = flips(y_true, ref_pred, pred)
    delta = per_class_delta(y_true, ref_pred, pred, len(class_names))
    worst = int(np.nanargmin(delta)) if np.isfinite(delta).any() else None
    if worst is not None and delta[worst] >= 0:
        worst = None  # no class got worse
    return score(y_true, probs) | {
        "drop_pp": 100.0 * (ref_acc - acc),
        "agreement": float(np.mean(pred == ref_pred)),
        "flips_bad": bad,
        "flips_good": good,
        "mcnemar_p": mcnemar_exact(bad, good),
        "kl": mean_kl(ref_probs, probs),
        "worst_class": class_names[worst] if worst is not None else None,
        "worst_class_delta_pp": float(delta[worst]) if worst is not None else None,
        "per_class_delta_pp": {n: (None if np.isnan(d) else float(d)) for n, d in zip(class_names, delta)},
    }
