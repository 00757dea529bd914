"""Sentiment artifacts: the predictions CSV, the explanations page and the confusion-matrix PNG."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gru_suite.atomic import atomic_path, save_figure


def write_predictions_csv(
    path: Path, rows: Iterable[dict[str, object]], labels: Sequence[str]
) -> Path:
    """Columns `line, text, label, prob_<label>... , top_words` (words separated by spaces, heaviest first)."""
    fields = ["line", "text", "label", *(f"prob_{label}" for label in labels), "top_words"]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")  # as the other tasks' CSVs
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    """Counts per (true, predicted) label, annotated, as a PNG (a figure of its own: matplotlib's backend and pyplot's
    figures are left as they are)."""
    from matplotlib.figure import Figure

    size = 1.6 + 0.7 * len(labels)
    fig = Figure(figsize=(size + 1, size), layout="tight")  # laid out as it is saved
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return save_figure(fig, path, dpi=100)
