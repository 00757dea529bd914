"""The artifacts of a run: its task writes them, and the run checks and names what it wrote (and what an earlier
run left beside them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from gru_suite.errors import UserError
from gru_suite.module import TaskModule

log = logging.getLogger(__name__)


def write_artifacts(
    trainer: pl.Trainer, module: TaskModule, datamodule: pl.LightningDataModule, out_dir: Path,
    predictions: list[Any] | None = None, ckpt_path: str | None = None,
) -> list[Path]:
    """Let the task write its artifacts into `out_dir`: of `predictions`, else of running prediction now (with the
    weights of `ckpt_path`, when given)."""
    if predictions is None:
        predictions = trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path) or []
    earlier = files_near(out_dir)
    paths = module.task.write_predictions(predictions, datamodule, out_dir)
    if not isinstance(paths, (list, tuple)):
        raise UserError(f"task {module.task.cfg.get('name')!r}: write_predictions returned a {type(paths).__name__}; "
                        "it must return the list of paths it wrote")
    if missing := [str(path) for path in paths if not Path(path).is_file()]:
        raise UserError(f"task {module.task.cfg.get('name')!r}: write_predictions returned {len(missing)} path(s) it "
                        f"did not write: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    for line in artifact_lines(paths):
        log.info("wrote %s", line)
    if stale := stale_artifacts(earlier, paths):
        log.warning("%s also holds %d file(s) of the kinds this run wrote that it did not write, left by an earlier "
                    "run: %s (delete them, or choose another hydra.run.dir)", out_dir, len(stale),
                    "; ".join(artifact_lines(stale)))
    return paths


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
    the run's records (`RUN_RECORDS`)."""
    written_now = {Path(path).resolve() for path in written}
    kinds = {(path.parent, path.suffix) for path in written_now}
    return sorted(path for path in earlier - written_now if (path.parent, path.suffix) in kinds
                  and not any(path.match(pattern) for pattern in RUN_RECORDS))


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
