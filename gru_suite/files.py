"""Finding a task's input files: in a folder, and from the folder the command started in."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


def files_below(folder: Path, suffixes: Collection[str]) -> list[Path]:
    """The files anywhere below `folder` whose name ends in one of `suffixes` (lower case, with the dot: `.wav`,
    `.csv.gz`) in any case (`.WAV` too), after a stem, sorted by path."""
    return sorted(p for p in folder.rglob("*") if _ends_in(p.name.lower(), suffixes) and p.is_file())


def _ends_in(name: str, suffixes: Collection[str]) -> bool:
    return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in suffixes)


def launch_path(path: str | Path) -> Path:
    """`path` as given on the command line: a relative one read from the folder the command started in, which
    Hydra's `hydra.job.chdir=true` leaves for the run folder before the job runs (otherwise `path` as it is)."""
    from hydra.core.hydra_config import HydraConfig

    if Path(path).is_absolute() or not HydraConfig.initialized() or not HydraConfig.get().job.get("chdir"):
        return Path(path)
    return Path(HydraConfig.get().runtime.cwd) / path
