"""Finding a task's input files in a folder."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


def files_below(folder: Path, suffixes: Collection[str]) -> list[Path]:
    """The files anywhere below `folder` whose suffix is one of `suffixes` (lower case, with the dot: `.wav`) in
    any case (`.WAV` too), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
