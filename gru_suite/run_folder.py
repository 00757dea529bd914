"""Keeping what an earlier run left in the folder a new run writes into."""

from __future__ import annotations

import atexit
import logging
import os
import socket
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


LOCK_NAME = ".gru-suite.lock"
"""The file in a run folder naming the process that runs there (`pid host`), while it runs."""


def hold_run_folder(run_dir: Path) -> None:
    """Mark `run_dir` as this process's until it exits (`LOCK_NAME`), or exit 2 with one line if a live process of
    this host holds it: a second run there would move the first one's checkpoints, metrics and config aside while
    it writes them. A holder that has died (killed) is taken over; a process started by the holder (a multi-process
    run's) shares it."""
    lock = run_dir / LOCK_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    mine = run_dir / f"{LOCK_NAME}.{os.getpid()}"
    mine.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    try:
        while True:
            try:
                os.link(mine, lock)  # whole or absent: no other process reads it half written
            except FileExistsError:
                pass
            except OSError as err:  # a file system without hard links: the run goes on unguarded
                log.warning("cannot mark %s as in use (%s): nothing stops a second run there", run_dir, err)
                return
            else:
                atexit.register(_release, lock, os.getpid())
                return
            if (holder := _holder(lock)) is not None:
                break
            with suppress(FileNotFoundError):  # gone meanwhile, or a dead run's: take it
                lock.unlink()
    finally:
        mine.unlink()
    if holder not in (os.getpid(), os.getppid()):
        print(f"error: hydra.run.dir={run_dir} is in use by process {holder}, a run still writing there: wait for it "
              f"to end or choose another folder (if process {holder} is no gru-suite run, delete {lock})",
              file=sys.stderr)
        raise SystemExit(2)


def _holder(lock: Path) -> int | None:
    """The live process of this host that `lock` names; None where the lock is gone, unreadable, another host's
    (which cannot be checked from here: taken over) or names a process that has ended."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split()
        if host != socket.gethostname():
            return None
        os.kill(int(pid), 0)
    except PermissionError:  # alive, another user's
        return int(pid)
    except (OSError, ValueError):
        return None
    return int(pid)


def _release(lock: Path, pid: int) -> None:
    with suppress(OSError, ValueError):
        if int(lock.read_text(encoding="utf-8").split()[0]) == pid:
            lock.unlink()


class KeepEarlierConfig(Callback):
    """Hydra callback: a run into a folder that already holds a `.hydra/` (eval or predict into a training run's
    folder, a resumed run) first moves it to `.hydra.N/`, as `metrics.csv` moves to `metrics.N.csv`, so the
    earlier run's composed config is not written over. Where every process of a multi-process run starts the
    command (torchrun, SLURM), the first process alone does it. First, the folder is held (`hold_run_folder`): a
    run still writing there refuses a second one."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra's run_job does next: run.dir may read ${hydra:...}
        run_dir = Path(config.hydra.run.dir)
        if blocking := next((p for p in (run_dir, *run_dir.parents) if p.is_file()), None):
            print(f"error: hydra.run.dir={run_dir}: {blocking} is a file, not a folder", file=sys.stderr)
            raise SystemExit(2)  # before Hydra creates the folder, which would fail in a traceback
        if launch_rank() != 0:
            return
        hold_run_folder(run_dir)
        subdir = config.hydra.output_subdir
        if not subdir or not (folder := Path(config.hydra.run.dir) / subdir).is_dir():
            return
        with suppress(FileNotFoundError):  # another process of the run moved it first
            log.info("kept the earlier %s as %s", folder, set_aside(folder).name)


def launch_rank() -> int:
    """This process's global rank as torchrun (`RANK`) or SLURM (`SLURM_PROCID`) started it; 0 for one process."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
