"""Keeping what an earlier run left in the folder a new run writes into."""

from __future__ import annotations

import logging
from itertools import count
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<stem>.N<suffix>` (N = 1, 2, ...) beside it; returns the new path."""
    kept = next(new for n in count(1) if not (new := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists())
    path.rename(kept)
    return kept


class KeepEarlierConfig(Callback):
    """Hydra callback: a run into a folder that already holds a `.hydra/` (eval or predict into a training run's
    folder, a resumed run) first moves it to `.hydra.N/`, as `metrics.csv` moves to `metrics.N.csv`, so the
    earlier run's composed config is not written over."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir and (folder := Path(config.hydra.run.dir) / subdir).is_dir():
            log.info("kept the earlier %s as %s", folder, set_aside(folder).name)
