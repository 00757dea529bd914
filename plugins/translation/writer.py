"""Translation artifacts: the aligned output text, attention weights as JSON lines, alignment pictures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gru_suite.atomic import save_figure, write_text
from gru_suite.text import readable_pieces


def write_lines(lines: Sequence[str], path: Path) -> Path:
    """One output line per input line (line breaks inside a translation become spaces)."""
    return write_text(path, "".join(" ".join(line.splitlines()) + "\n" for line in lines))


MAX_INCHES = 40.0
"""The longest side of an alignment picture (4,000 pixels at 100 dpi): a longer sentence's pieces are drawn smaller."""
LABELLED_PIECES = 150
"""Pieces along an axis up to which each is labelled; past that, the axis counts positions."""


def plot_alignment(source: Sequence[str], target: Sequence[str], weights: np.ndarray, title: str) -> Figure:
    """The attention matrix: source pieces across, output pieces down, darker = more weight, with a colour
    scale; pieces are drawn readable (`readable_pieces`: "##" marks a piece that continues a word), up to
    `LABELLED_PIECES` along an axis, and the picture is at most `MAX_INCHES` a side."""
    size = (min(3 + 0.35 * len(source), MAX_INCHES), min(1.5 + 0.35 * len(target), MAX_INCHES))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if len(source) <= LABELLED_PIECES:
        ax.set_xticks(range(len(source)), readable_pieces(source), rotation=90)
    if len(target) <= LABELLED_PIECES:
        ax.set_yticks(range(len(target)), readable_pieces(target))
    ax.set_xlabel(f"source ({len(source)} pieces)" if len(source) > LABELLED_PIECES else "source")
    ax.set_ylabel(f"output ({len(target)} pieces)" if len(target) > LABELLED_PIECES else "output")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention weight", shrink=0.8)
    return fig


def save_alignment(source: Sequence[str], target: Sequence[str], weights: np.ndarray, line: int, path: Path) -> Path:
    """The alignment picture of input line `line` as `path` (PNG)."""
    return save_figure(plot_alignment(source, target, weights, f"input line {line}"), path, dpi=100)
