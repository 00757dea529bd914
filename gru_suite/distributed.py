"""Helpers for multi-process (DDP) runs: task state that must see every process's share of the data, messages said
once per run, a SIGTERM that stops every process, and the sweeps such runs cannot join."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.rank_zero import rank_prefixed_message

from gru_suite.errors import UserError

Key = TypeVar("Key")
log = logging.getLogger("gru_suite")


@rank_zero_only
def warn_on_rank_zero(message: str) -> None:
    """Log a warning once per run, not once per DDP process."""
    log.warning(message)


def gather_dict(items: dict[Key, Any]) -> dict[Key, Any]:
    """Merge the dict each DDP process built over its share of the data, on every process.

    Keys that several processes hold (a sampler pads shares to equal length by
    repeating items) keep one value. Outside a multi-process run, `items` is returned.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    shares: list[dict[Key, Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, items)
    merged: dict[Key, Any] = {}
    for share in shares:
        merged.update(share or {})
    return merged


def gather_sums(*values: float) -> tuple[float, ...]:
    """Each value summed over every DDP process (the values themselves outside a multi-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    shares: list[tuple[float, ...] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, values)
    return tuple(sum(column) for column in zip(*(share or () for share in shares)))


def gather_objects(item: Any) -> list[Any]:
    """Every DDP process's `item`, in rank order, on every process (`[item]` outside a multi-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [item]
    items: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


class SignalConnectorWithoutBroadcast(_SignalConnector):
    """Lightning's signal handling (2.6) less the broadcast its SIGTERM handler makes. Run from the signal handler, at
    whatever point of its step the process is, that collective meets another one, or none, on the other processes,
    and every process hangs (a SLURM job cancelled mid-step). The flag alone is set here, which Lightning reads at
    the end of each training step and evaluation batch, and broadcasts from the first process at each training
    step's start: every process that got the signal stops there (the first passes it on to the processes Lightning
    started itself; `scancel` signals them all)."""

    def _sigterm_notifier_fn(self, signum: int | signal.Signals, _: FrameType | None) -> None:
        log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", self.trainer.local_rank))
        if not self.received_sigterm and (launcher := self.trainer.strategy.launcher) is not None:
            launcher.kill(signum)
        self.received_sigterm = True


def refuse_launching_in_a_sweep(trainer: pl.Trainer) -> None:
    """A sweep (-m) whose trainer starts its processes itself (`trainer=ddp_sim`, or `trainer=ddp` on several devices of
    one machine) is refused before it starts any: Lightning starts each by running the command line again, sweep
    included, so each process would run the whole sweep on its own (its jobs training on their share of the data
    alone, and writing over the other jobs' folders)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher = trainer.strategy.launcher
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    if isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1 and \
            not launcher.cluster_environment.creates_processes_externally:
        raise UserError(f"a sweep (-m, or an hparams_search) cannot run a trainer that starts its "
                        f"{launcher.num_processes} processes itself (trainer.strategy={type(trainer.strategy).__name__}"
                        f", trainer.devices={launcher.num_processes}): Lightning starts them by running the command "
                        "again, sweep included. Sweep with one process per job (e.g. trainer=cpu or trainer=gpu), or "
                        "run each multi-process job on a command line of its own")
