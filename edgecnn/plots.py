"""PNG plots, written atomically with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

from edgecnn.fsutil import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def curves(history: dict[str, list[float]], path: Path) -> Path:
    """Accuracy and loss, train vs validation, per epoch."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    for ax, key, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "loss")):
        if history.get(key):
            ax.plot(epochs, history[key], "o-", label="train", ms=3)
        if history.get(f"val_{key}"):
            ax.plot(epochs, history[f"val_{key}"], "o-", label="validation", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion_matrix(cm, class_names: list[str], path: Path) -> Path:
    import numpy as np

    plt = _plt()
    cm = np.asarray(cm)
    n = len(class_names)
    size = min(12, max(4, 0.55 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test split)")
    return _save(fig, path)


def accuracy_vs_latency(rows: list[dict], path: Path) -> Path:
    """Benchmark: accuracy against batch-1 latency (log scale), one point per row, named in the legend.

    Rows scored on a subset of the test split (TFLite Micro) are left out: their accuracy is not
    comparable with the others'.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    full = max((r.get("images") or 0 for r in rows), default=0)
    markers = {"tensorflow": "s", "litert": "o", "onnxruntime": "^"}
    for i, row in enumerate(rows):
        if row.get("status") != "ok" or row.get("latency_ms_p50") is None or row.get("accuracy") is None:
            continue
        if (row.get("images") or full) < full:
            continue
        ax.scatter(row["latency_ms_p50"], 100 * row["accuracy"], s=45, color=f"C{i % 10}",
                   marker=markers.get(row["runtime"], "D"), label=f"{row['name']} ({row['runtime']}, {row['device']})")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("accuracy vs latency")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path)


def pareto(rows: list[dict], winner: dict | None, path: Path) -> Path:
    """Sweep: int8 accuracy against int8 file size, the Pareto front joined, the winner ringed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ok = [r for r in rows if r["status"] == "ok"]
    ax.scatter([r["int8_kb"] for r in ok], [100 * r["int8_acc"] for r in ok], s=30, color="#999", label="candidate")
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["int8_kb"])
    ax.plot([r["int8_kb"] for r in front], [100 * r["int8_acc"] for r in front], "o-", color="C0", label="Pareto front")
    for r in ok:
        ax.annotate(r["candidate"], (r["int8_kb"], 100 * r["int8_acc"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if winner:
        ax.scatter([winner["int8_kb"]], [100 * winner["int8_acc"]], s=160, facecolors="none", edgecolors="C3",
                   linewidths=2, label="winner")
    ax.set_xscale("log")
    ax.set_xlabel("int8 TFLite size (KB, log scale)")
    ax.set_ylabel("int8 test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
