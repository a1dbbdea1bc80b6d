"""Verification of an export against Keras: top-1 agreement and max |probability difference|."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Thresholds:
    """Minimum agreement per variant (on confident images) and the float32 probability tolerance."""

    float32_max_diff: float = 1e-4
    float32_agreement: float = 1.0
    reduced_agreement: float = 0.99  # float16 and dynamic-range
    int8_agreement: float = 0.95
    min_margin: float = 0.05  # images whose Keras top-1 leads the runner-up by less are near-ties
    min_confident: int = 32  # fewer confident images than this: judge on mean |dp| instead
    max_mean_diff: float = 0.05

    def agreement_for(self, variant: str) -> float:
        return {"float32": self.float32_agreement, "int8": self.int8_agreement}.get(variant, self.reduced_agreement)


def top1_margin(probs: np.ndarray) -> np.ndarray:
    part = np.sort(probs, axis=1)
    return part[:, -1] - part[:, -2] if probs.shape[1] > 1 else np.ones(len(probs))


def compare(ref: np.ndarray, got: np.ndarray, variant: str, thresholds: Thresholds) -> dict:
    """Agreement on confident images (margin >= min_margin), overall agreement, max |dp|, verdict."""
    if ref.shape != got.shape:
        return {"passed": False, "reason": f"output shape {got.shape} differs from Keras {ref.shape}"}
    same = ref.argmax(1) == got.argmax(1)
    confident = top1_margin(ref) >= thresholds.min_margin
    agreement = float(same[confident].mean()) if confident.any() else float(same.mean())
    max_diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    mean_diff = float(np.abs(ref - got).mean()) if ref.size else 0.0
    need = thresholds.agreement_for(variant)
    reasons = []
    if confident.sum() >= thresholds.min_confident:
        judged_on = "agreement"
        passed = agreement >= need
        if not passed:
            reasons.append(f"agreement {agreement:.4f} < {need}")
    else:
        # A weak model has few confident images; agreement on a handful says nothing. Broken
        # exports (wrong scaling, layout, quantization) move probabilities far, which this catches.
        judged_on = "mean_abs_diff"
        passed = mean_diff <= thresholds.max_mean_diff
        if not passed:
            reasons.append(f"only {int(confident.sum())} confident images and mean |dp| {mean_diff:.3f} > "
                           f"{thresholds.max_mean_diff}")
    if variant == "float32" and max_diff > thresholds.float32_max_diff:
        passed = False
        reasons.append(f"max |dp| {max_diff:.2e} > {thresholds.float32_max_diff:g}")
    return {
        "passed": passed,
        "images": int(len(ref)),
        "confident_images": int(confident.sum()),
        "agreement": round(agreement, 6),
        "agreement_all": round(float(same.mean()), 6),
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "judged_on": judged_on,
        "required_agreement": need,
        "reason": "; ".join(reasons) or None,
    }
