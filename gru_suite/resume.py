"""Resuming training from a checkpoint: which file, whether it is the run folder's own, and the checks and
housekeeping around it (epochs left, settings training fixed, another monitor, the folder's last checkpoint)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from gru_suite.atomic import atomic_path
from gru_suite.distributed import warn_on_rank_zero
from gru_suite.errors import UserError, not_a_file
from gru_suite.files import launch_path
from gru_suite.metrics_file import read_metrics
from gru_suite.run_folder import checkpoint_folder

log = logging.getLogger(__name__)

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
"""`ckpt_path` values that Lightning reads as names, not paths."""


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint file training resumes from, if any: `ckpt_path`, with `last` read as the run's `last.ckpt`
    (`checkpoint_folder`) when it is there (else None: Lightning starts afresh) and `hpc` as Lightning's latest SLURM
    requeue checkpoint; a UserError for an empty value and for the names that hold nothing to resume from here."""
    path = cfg.get("ckpt_path")
    last = checkpoint_folder(cfg) / "last.ckpt"
    if path == "best":  # Lightning's name for the best checkpoint of the fit that has just ended, not for a resume
        raise UserError(f"ckpt_path=best: training resumes from a checkpoint file; ckpt_path=last is {last}, or give "
                        "the path of a best-*.ckpt (epoch-*.ckpt with callbacks=last_epoch)")
    if path == "":  # an unset shell variable, say: Lightning's traceback otherwise
        raise UserError("ckpt_path is empty: give a checkpoint file, ckpt_path=last, or leave it out to start afresh")
    if path == "registry":
        raise UserError("ckpt_path=registry (Lightning's model registry, online) is not supported: give a checkpoint "
                        "file or ckpt_path=last")
    if path == "hpc":  # Lightning's SLURM requeue checkpoint, read with this run's checks like any other
        folder = Path(cfg.trainer.get("default_root_dir") or cfg.paths.output_dir)
        saved = [(int(number), file) for file in folder.glob("hpc_ckpt_*.ckpt")
                 if (number := file.stem.removeprefix("hpc_ckpt_")).isdigit()]
        if not saved:
            raise UserError(f"ckpt_path=hpc: no hpc_ckpt_<n>.ckpt in {folder} (Lightning writes one there when SLURM "
                            "signals a requeue)")
        return str(max(saved)[1])
    if path == "last" and last.is_file():
        return str(last)
    if path == "last" and os.path.lexists(last):  # Lightning would read it, or start afresh over the run's files
        raise not_a_file(last, "checkpoint file (remove it to start afresh, or give ckpt_path=<a checkpoint>)")
    return None if not path or path == "last" else str(launch_path(str(path)))


def resumes_in_own_folder(cfg: DictConfig) -> bool:
    """Whether the run resumes from a checkpoint of its own folder (`ckpt_path=last`, or a path into
    `<output_dir>/checkpoints`)."""
    path = cfg.get("ckpt_path")
    if not path:
        return False
    own = checkpoint_folder(cfg).resolve()
    if path == "last":  # without a last checkpoint there, Lightning starts afresh
        return any(not file.name.startswith(".") and file.is_file() for file in own.glob("last*.ckpt"))
    return path in LIGHTNING_CKPT_NAMES or launch_path(str(path)).resolve().parent == own


def check_epochs_left(checkpoint: dict[str, Any], cfg: DictConfig, ckpt_path: str) -> None:
    """`trainer.max_epochs` must not be below the epochs the checkpoint has trained (Lightning checks a looser
    bound, later, with a traceback, after the run folder has been tidied for the run); a warning where the trainer's
    limits leave nothing to train."""
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
    trained = epochs_trained(checkpoint)
    if max_epochs not in (None, -1) and trained > max_epochs:
        raise UserError(f"ckpt_path {ckpt_path} has trained {trained} epochs: trainer.max_epochs={max_epochs} is below "
                        f"that; give at least {trained} (exactly {trained} trains no further; gru-suite-eval and "
                        "gru-suite-predict use a checkpoint without training)")
    if cfg.trainer.get("fast_dev_run"):  # its own one step, whatever the checkpoint holds, but Lightning runs it as
        if checkpoint.get("epoch", 0) > 1:  # max_epochs=1, below a checkpoint past its second epoch (a traceback)
            raise UserError(f"ckpt_path {ckpt_path} has trained {trained} epochs: debug=fdr (trainer.fast_dev_run) "
                            "runs as one epoch, which cannot resume it; for a quick look at resuming it, give "
                            f"trainer.max_epochs={trained + 1} trainer.limit_train_batches=1 "
                            "trainer.limit_val_batches=1 instead")
        return
    steps = checkpoint.get("global_step", 0)
    if trained == max_epochs or (max_steps not in (None, -1) and steps >= max_steps):
        limit = f"trainer.max_epochs={max_epochs}" if trained == max_epochs else f"trainer.max_steps={max_steps}"
        warn_on_rank_zero(f"ckpt_path {ckpt_path} has trained {trained} epoch(s) ({steps} steps), all that {limit} "
                          "allows: this run trains no further; raise the limit to train on")


def epochs_trained(checkpoint: dict[str, Any]) -> int:
    """The epochs a checkpoint has trained: Lightning's count of processed epochs, and the last one too where the
    checkpoint was saved after its last batch but before Lightning counted it (at a validation within the epoch,
    `trainer.val_check_interval` < 1), which Lightning then does not train again."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = fit_loop.get("epoch_progress", {}).get("current", {})
    processed = progress.get("processed", checkpoint.get("epoch", 0))
    last_batch_done = fit_loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    return processed + 1 if last_batch_done and progress.get("started", 0) > processed else processed


def warn_of_another_monitor(stored_task: DictConfig, cfg: DictConfig, ckpt_path: str) -> bool:
    """Whether `task.monitor` (or its mode) differs from the one that chose the checkpoint's best, said in a warning:
    Lightning then forgets the best checkpoint (its state is kept by monitor), so the best is chosen afresh among
    this run's epochs."""
    before = (stored_task.get("monitor"), stored_task.get("monitor_mode"))
    now = (cfg.task.get("monitor"), cfg.task.get("monitor_mode"))
    if before != now and None not in before:
        warn_on_rank_zero(f"ckpt_path {ckpt_path} chose its best checkpoint by {before[0]} ({before[1]}), this run by "
                          f"{now[0]} ({now[1]}): the best is chosen afresh among this run's epochs, and the earlier "
                          "best-*.ckpt stays where it is, untracked")
        return True
    return False


def warn_of_a_dropped_weight_average(checkpoint: dict[str, Any], cfg: DictConfig, ckpt_path: str) -> None:
    """A warning where the checkpoint was trained with a weight average (`callbacks.ema`: its weights are the
    averaged ones, the raw ones saved beside them) and this run configures none: training would go on from the
    averaged weights, and the raw ones be dropped."""
    if "current_model_state" not in checkpoint:
        return
    targets = [c.get("_target_") for c in (cfg.get("callbacks") or {}).values() if isinstance(c, DictConfig)]
    if not any(_averages_weights(target) for target in targets):
        warn_on_rank_zero(f"ckpt_path {ckpt_path} was trained with a weight average (callbacks.ema) that this run "
                          "lacks: training goes on from the averaged weights and drops the raw ones; give the "
                          "callbacks.ema it was trained with to go on from both")


def _averages_weights(target: Any) -> bool:
    """Whether the callback class `target` names is a weight average (a wrong name: no; building it says so)."""
    from hydra.utils import get_class
    from pytorch_lightning.callbacks import WeightAveraging

    try:
        return issubclass(get_class(str(target)), WeightAveraging)
    except Exception:  # noqa: BLE001 - any import failure: not one, and the trainer's build names it
        return False


def keep_resumed_as_last(trainer: pl.Trainer, ckpt_path: str) -> None:
    """A resumed run that trained nothing (its epochs were done) into a folder without a `last.ckpt` gets a copy of
    the checkpoint it resumed from there (its checkpoint callback's folder), so that a later `ckpt_path=last` in that
    folder resumes it too."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.save_last or not callback.dirpath:
        return
    last = Path(callback.dirpath) / "last.ckpt"
    if last.exists() or Path(ckpt_path).resolve() == last.resolve():
        return
    last.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(last) as tmp:
        shutil.copyfile(ckpt_path, tmp)
    log.info("%s: the checkpoint this run resumed from, which it trained no further", last)


def resumed_run_metrics(out_dir: Path) -> dict[str, float]:
    """The `metrics.json` in `out_dir` of the run that a run resumed there and did not train further (ended by its
    epochs or early stopping): it logs no train/val values, and keeps the last epoch's this way."""
    path = out_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return read_metrics(path)
    except (ValueError, TypeError, AttributeError):
        return {}
