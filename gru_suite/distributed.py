"""Helpers for multi-process (DDP) runs: task state that must see every process's share of the data, messages said
once per run, a SIGTERM that stops every process, and the sweeps such runs cannot join."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import pytorch_lightning as pl
import pytorch_lightning.strategies.launchers.subprocess_script as lightning_launcher
import torch.distributed as dist
from lightning_fabric.plugins.environments import LightningEnvironment
from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.rank_zero import rank_prefixed_message

from gru_suite.config import rank_suffix
from gru_suite.errors import UserError

Key = TypeVar("Key")
FIRST_PROCESS_VARIABLE = "GRU_SUITE_FIRST_PROCESS"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends
PEER_LEFT = ("Connection closed by peer", "Connection reset by peer")
"""How gloo reports, in a plain RuntimeError naming its own source (`gloo/transport`), that the process at the other
end of a collective has gone."""
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


def starts_its_own_processes(trainer: pl.Trainer) -> bool:
    """Whether this process starts the run's other processes itself (`trainer=ddp_sim`, `trainer=ddp` on several
    devices of one machine), by running the command line again; not under torchrun or SLURM, nor in the others."""
    launcher = trainer.strategy.launcher
    return isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1 and \
        not launcher.cluster_environment.creates_processes_externally


def tie_started_processes_to_the_first(trainer: pl.Trainer) -> None:
    """Processes that Lightning starts by running the command again end with the first: on Linux each gets SIGTERM
    when the first ends, however it ends (a signal before training starts, SIGKILL, a crash), where it would wait
    for it until killed. The first names itself in the environment they inherit, and says which of them ended with
    an error before Lightning's watch over them kills it (`SayingObserver`)."""
    if starts_its_own_processes(trainer):
        os.environ[FIRST_PROCESS_VARIABLE] = str(os.getpid())
        lightning_launcher._launch_process_observer = _observe_started_processes  # what launch() starts, by name
        return
    first = os.environ.get(FIRST_PROCESS_VARIABLE)
    launcher = trainer.strategy.launcher
    if first is None or sys.platform != "linux" or not isinstance(launcher, _SubprocessScriptLauncher) or \
            type(launcher.cluster_environment) is not LightningEnvironment or \
            not launcher.cluster_environment.creates_processes_externally:  # the first, or under torchrun or SLURM
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(first):  # it ended before this process asked
        os.kill(os.getpid(), signal.SIGTERM)


class SayingObserver(_ChildProcessObserver):
    """Lightning's watch over the processes it started (every 5 s), which kills them all, the first too, with SIGKILL
    once one has ended with an error: first one line on stderr naming that process, where the first would otherwise
    vanish without a word (before it met the closed connection and said so itself: `lost_peer`)."""

    def _terminate_all(self) -> None:
        ended = next(((rank, process.returncode) for rank, process in enumerate(self._child_processes, start=1)
                      if process.returncode), None)
        if ended is not None:
            rank, code = ended
            print(f"error: the run's process of local rank {rank} ended with exit code {code} (its own error is above "
                  f"and in its log, *_rank{rank}.log), so every process of the run stops", file=sys.stderr, flush=True)
        super()._terminate_all()


def _observe_started_processes(child_processes: list[Any]) -> None:
    SayingObserver(main_pid=os.getpid(), child_processes=child_processes).start()


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
    if starts_its_own_processes(trainer):
        raise UserError(f"a sweep (-m, or an hparams_search) cannot run a trainer that starts its "
                        f"{launcher.num_processes} processes itself (trainer.strategy={type(trainer.strategy).__name__}"
                        f", trainer.devices={launcher.num_processes}): Lightning starts them by running the command "
                        "again, sweep included. Sweep with one process per job (e.g. trainer=cpu or trainer=gpu), or "
                        "run each multi-process job on a command line of its own")


def lost_peer(err: BaseException, run_dir: Path, command: str) -> str | None:
    """The one line for `err` where it is this process's side of another process's failure (a collective whose
    peer has gone: gloo's closed connection), naming the run's other logs in `run_dir` (`<command>.log`,
    `<command>_rank<N>.log`, not this process's own), which hold that process's own error; None for any other error
    (a torch.distributed error of this process's own, an address in use, keeps its traceback)."""
    if not ("gloo" in str(err) and any(text in str(err) for text in PEER_LEFT)):
        return None
    own = f"{command}{rank_suffix()}.log"
    others = sorted(path.name for path in Path(run_dir).glob(f"{command}*.log") if path.name != own)
    logs = ", ".join(others) or f"the logs in {run_dir}"
    first = next(iter(str(err).strip().splitlines()), "")
    return (f"another process of this run failed, so this one stopped ({type(err).__name__}: {first}); that "
            f"process's own error is above and in {logs}")
