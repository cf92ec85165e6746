"""Offline figures of a run: ROC curves and training curves as PNG (matplotlib, no web assets)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from pipeline.evaluation.evaluate import read_roc  # noqa: E402
from pipeline.files import written_atomically  # noqa: E402


def plot_roc_curves(curves: dict[str, Path], out_path: str | Path, title: str) -> Path:
    """One ROC per model (log-scale FAR), from the CSVs `facekd evaluate` writes."""
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, path in curves.items():
        fpr, tpr = read_roc(path)
        keep = fpr > 0
        axes.plot(fpr[keep], tpr[keep], label=name)
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, out_path)


def plot_training_curves(logs: dict[str, Path], out_path: str | Path) -> Path:
    """Total training loss per epoch of each model, from the train_log.csv files."""
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, path in logs.items():
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
        axes.plot([int(r["epoch"]) for r in rows], [float(r["loss"]) for r in rows], marker="o", label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss (margin + weighted KD terms)")
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, out_path)


def plot_accuracy_latency(points: dict[str, tuple[float, float]], out_path: str | Path, title: str) -> Path:
    """Verification accuracy against batch-1, one-thread latency, one labelled point per model."""
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, (milliseconds, accuracy) in points.items():
        axes.scatter(milliseconds, accuracy, marker="s" if name.endswith(".int8") else "o")
        axes.annotate(name, (milliseconds, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("latency, batch 1, 1 thread (ms, median; ONNX Runtime CPU)")
    axes.set_ylabel("verification accuracy")
    axes.set_title(title)
    axes.margins(0.15)  # room for the labels of the outermost points
    axes.grid(True, alpha=0.3)
    return _save(figure, out_path)


def _save(figure: plt.Figure, out_path: str | Path) -> Path:
    """Write the figure as PNG under a temporary name and publish it complete (as every output)."""
    out_path = Path(out_path)
    figure.tight_layout()
    try:
        with written_atomically(out_path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)
    return out_path
