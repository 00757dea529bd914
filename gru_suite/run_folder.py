"""Keeping what an earlier run left in the folder a new run writes into."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import suppress
from itertools import count
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def checkpoint_folder(cfg: DictConfig) -> Path:
    """Where the run's checkpoints go: `callbacks.model_checkpoint.dirpath` (by default the run folder's
    `checkpoints/`), or the run folder's `checkpoints/` where no callback of the suite's says."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<stem>.N<suffix>` (N = 1, 2, ...) beside it; returns the new path."""
    kept = next(new for n in count(1) if not (new := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists())
    path.rename(kept)
    return kept


class KeepEarlierConfig(Callback):
    """Hydra callback: a run into a folder that already holds a `.hydra/` (eval or predict into a training run's
    folder, a resumed run) first moves it to `.hydra.N/`, as `metrics.csv` moves to `metrics.N.csv`, so the
    earlier run's composed config is not written over. Where every process of a multi-process run starts the
    command (torchrun, SLURM), the first process alone does it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra's run_job does next: run.dir may read ${hydra:...}
        run_dir = Path(config.hydra.run.dir)
        if blocking := next((p for p in (run_dir, *run_dir.parents) if p.is_file()), None):
            print(f"error: hydra.run.dir={run_dir}: {blocking} is a file, not a folder", file=sys.stderr)
            raise SystemExit(2)  # before Hydra creates the folder, which would fail in a traceback
        if launch_rank() != 0:
            return
        subdir = config.hydra.output_subdir
        if not subdir or not (folder := Path(config.hydra.run.dir) / subdir).is_dir():
            return
        with suppress(FileNotFoundError):  # another process of the run moved it first
            log.info("kept the earlier %s as %s", folder, set_aside(folder).name)


def launch_rank() -> int:
    """This process's global rank as torchrun (`RANK`) or SLURM (`SLURM_PROCID`) started it; 0 for one process."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
