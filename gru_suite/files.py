"""Finding a task's input files in a folder."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


def files_below(folder: Path, suffixes: Collection[str]) -> list[Path]:
    """The files anywhere below `folder` whose name ends in one of `suffixes` (lower case, with the dot: `.wav`,
    `.csv.gz`) in any case (`.WAV` too), after a stem, sorted by path."""
    return sorted(p for p in folder.rglob("*") if _ends_in(p.name.lower(), suffixes) and p.is_file())


def _ends_in(name: str, suffixes: Collection[str]) -> bool:
    return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in suffixes)
