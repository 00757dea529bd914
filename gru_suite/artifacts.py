"""The artifacts of a run: its task writes them, and the run checks and names what it wrote (and what an earlier
run left beside them)."""

from __future__ import annotations

import fnmatch
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl

from gru_suite.errors import UserError
from gru_suite.module import TaskModule
from gru_suite.run_folder import STAGING, absolute, keep_earlier_file

log = logging.getLogger(__name__)

Item = TypeVar("Item")
MANY = 20
"""Items a writer goes through with a progress bar (`writing_progress`) from this many on."""


def writing_progress(items: Sequence[Item], what: str) -> Iterator[Item]:
    """`items`, which a task's `write_predictions` writes one by one (a report per series, say), with a progress bar
    on a terminal where there are `MANY` or more."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=f"writing {what}", unit="", leave=False, disable=True if len(items) < MANY else None)


def write_artifacts(
    trainer: pl.Trainer, module: TaskModule, datamodule: pl.LightningDataModule, out_dir: Path,
    predictions: list[Any] | None = None, ckpt_path: str | None = None,
) -> list[Path]:
    """Let the task write its artifacts into `out_dir`: of `predictions`, else of running prediction now (with the
    weights of `ckpt_path`, when given); they move in once all are written, beside an earlier run's
    (`written_in_place`)."""
    if predictions is None:
        predictions = trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path) or []
    earlier = files_near(out_dir)
    paths = written_in_place(Path(out_dir), lambda staging: checked_paths(
        module.task.write_predictions(predictions, datamodule, staging), module.task.cfg.get("name"), staging))
    for line in artifact_lines(paths):
        log.info("wrote %s", line)
    if stale := stale_artifacts(earlier, paths):
        log.warning("%s also holds %d file(s) of the kinds this run wrote that it did not write, left by an earlier "
                    "run: %s (delete them, or choose another hydra.run.dir)", out_dir, len(stale),
                    "; ".join(artifact_lines(stale)))
    return paths


def checked_paths(paths: Any, task: str | None, out_dir: Path) -> list[Path]:
    """What a task's `write_predictions` returned, checked to be a list of the paths of files it wrote in
    `out_dir`, the folder it was given."""
    if not isinstance(paths, (list, tuple)):
        raise UserError(f"task {task!r}: write_predictions returned a {type(paths).__name__}; it must return the "
                        "list of paths it wrote")
    if relative := [str(path) for path in paths if not Path(path).is_absolute()]:
        raise UserError(f"task {task!r}: write_predictions returned relative path(s) {', '.join(relative[:3])}"
                        f"{' ...' if len(relative) > 3 else ''}: return the paths in the folder it is given, "
                        "out_dir / name")
    if outside := [str(path) for path in paths if not linked_as_named(Path(path)).is_relative_to(
            linked_as_named(out_dir))]:
        raise UserError(f"task {task!r}: write_predictions wrote {', '.join(outside[:3])}"
                        f"{' ...' if len(outside) > 3 else ''} outside the folder it is given ({out_dir}): write "
                        "every artifact in it, which then moves into the run folder")
    if missing := [str(path) for path in paths if not Path(path).is_file()]:
        raise UserError(f"task {task!r}: write_predictions returned {len(missing)} path(s) it did not write: "
                        f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return [Path(path) for path in paths]


def linked_as_named(path: Path) -> Path:
    """`path` from the root through the real folders (a run folder under a linked `outputs/` is one place, however
    named), its own name kept: a link is named as itself."""
    return Path(path).parent.resolve() / Path(path).name


def written_in_place(out_dir: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Let `write(folder)` write files into a hidden folder in `out_dir` and return their paths (in it); then move each
    entry it made into `out_dir`, an earlier file or folder of its name set aside (`forecast.csv` to
    `forecast.1.csv`), and return the paths as they are named there. So the files appear together, once all are
    written, and never over an earlier run's."""
    staging = absolute(out_dir) / STAGING  # so the paths written in it are absolute too
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's, never complete
    staging.mkdir(parents=True)
    try:
        placed = [out_dir / linked_as_named(path).relative_to(linked_as_named(staging)) for path in write(staging)]
        for entry in sorted(staging.iterdir()):
            keep_earlier_file(place := out_dir / entry.name)
            entry.rename(place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return placed


def files_near(folder: Path) -> set[Path]:
    """The files in `folder` and in its subfolders, one level down (where tasks write artifacts)."""
    if not folder.is_dir():
        return set()
    files = set()
    for entry in folder.iterdir():
        children = entry.iterdir() if entry.is_dir() else [entry]
        files.update(child.resolve() for child in children if child.is_file())
    return files


RUN_RECORDS = ("metrics*.csv", "metrics.json", "test_metrics.json", "hparams.yaml", "summary.csv", "*.log")
"""Files a run folder holds beside the artifacts (the loggers', Hydra's, the suite's records): never stale."""


def stale_artifacts(earlier: set[Path], written: Sequence[Path]) -> list[Path]:
    """The files of `earlier` that this run did not rewrite, of a kind (folder and suffix) it `written`, but for
    the run's records (`RUN_RECORDS`) and the earlier copies of what it wrote, set aside (`forecast.1.csv`)."""
    written_now = {Path(path).resolve() for path in written}
    kinds = {(path.parent, path.suffix) for path in written_now}
    names = {(path.parent, path.stem, path.suffix) for path in written_now}

    def set_aside_copy(path: Path) -> bool:
        stem, _, number = path.stem.rpartition(".")
        return number.isdigit() and (path.parent, stem, path.suffix) in names

    return sorted(path for path in earlier - written_now if (path.parent, path.suffix) in kinds
                  and not any(path.match(pattern) for pattern in RUN_RECORDS) and not set_aside_copy(path))


def wrong_artifact_name(name: Any, setting: str, taken: Sequence[str] = ()) -> list[str]:
    """A message where `name`, the value of `setting`, is not a file name for an artifact of its own in the run
    folder: a path (`a/b.txt`, `../x`), or the name of a run record (`RUN_RECORDS`, `.hydra`), of the staging
    folder or of another artifact the task writes (`taken`: names or shell patterns)."""
    if not isinstance(name, str) or not name.strip() or name != Path(name).name or name in (".", ".."):
        return [f"{setting} must be a file name, written into the run folder (not a path), got {name!r}"]
    if name.startswith((".hydra", STAGING)) or any(fnmatch.fnmatch(name, pattern)
                                                   for pattern in (*RUN_RECORDS, *taken)):
        return [f"{setting}={name} is the name of another file the run writes ({', '.join((*taken, *RUN_RECORDS))}, "
                ".hydra): choose another"]
    return []


def artifact_lines(paths: Sequence[Path], most: int = 3) -> list[str]:
    """The written paths as log lines, grouped by folder and suffix in the order each group first appears: each
    path, or one line for more than `most` files of a kind in one folder (`15 .srt files in out/ (a.srt ... o.srt)`)."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in map(Path, paths):
        groups.setdefault((path.parent, path.suffix), []).append(path)
    lines = []
    for (folder, suffix), group in groups.items():
        if len(group) > most:
            lines.append(f"{len(group)} {suffix or 'extensionless'} files in {folder}/ "
                         f"({group[0].name} ... {group[-1].name})")
        else:
            lines += [str(path) for path in group]
    return lines
