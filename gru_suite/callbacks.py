"""Callbacks (and the checkpoint writer) the suite adds to Lightning's own."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from gru_suite.atomic import atomic_path
from gru_suite.errors import UserError

log = logging.getLogger(__name__)
TRACKED_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


class EpochThroughput(pl.Callback):
    """Log each epoch's training wall time and samples per second.

    `train/epoch_time_s` counts the training batches only (the clock stops while
    validation runs, at the epoch's end or within it); `train/samples_per_s` is
    summed over DDP processes. An epoch that trains no batch (one stopped as it starts: a diverged run's) logs
    neither.
    """

    def __init__(self) -> None:
        self._started: float | None = None  # when the current stretch of training batches began
        self._elapsed = 0.0
        self._samples = 0
        self._batches = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._elapsed, self._batches = time.perf_counter(), 0.0, 0
        self._samples = getattr(pl_module, "samples_seen", 0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batches += 1
        if self._started is None:  # training again after a validation pass within the epoch
            self._started = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._batches:  # the same on every DDP process: each trains as many batches
            return
        elapsed = self._elapsed + (time.perf_counter() - self._started if self._started is not None else 0.0)
        samples = getattr(pl_module, "samples_seen", 0) - self._samples
        pl_module.log("train/epoch_time_s", elapsed, sync_dist=True)
        pl_module.log("train/samples_per_s", samples / max(elapsed, 1e-9), reduce_fx="sum", sync_dist=True)


class PatientEarlyStopping(EarlyStopping):
    """Lightning's `EarlyStopping` that keeps this run's `patience` when resuming (Lightning takes the checkpoint's,
    silently), as the suite keeps a run's optimizer and schedule settings: a run that early stopping ended, resumed
    with a patience above its count of epochs without improvement, trains on. Its state is saved under
    `EarlyStopping`'s key, so either class resumes the other's checkpoints."""

    @property
    def state_key(self) -> str:
        return EarlyStopping.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        if patience == self.patience:
            return
        log.info("early stopping: patience %d (the checkpoint's was %d), %d epoch(s) without improvement so far",
                 patience, self.patience, self.wait_count)
        self.patience = patience
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED and self.wait_count < patience:
            self.stopping_reason, self.stopping_reason_message = EarlyStoppingReason.NOT_STOPPED, None
            self.stopped_epoch = 0


class EMAWeights(EMAWeightAveraging):
    """An exponential moving average of the weights (Lightning's `EMAWeightAveraging`, parameters only) that
    validation, checkpoints, testing and prediction use, kept in the model until validation has ended, so
    what a task fits at the end of the validation pass (a calibration temperature, say) is fitted to the
    averaged weights and saved with them. Lightning's callback swaps the raw weights back before the
    model's `on_validation_epoch_end`, and its `use_buffers` would average such a buffer with stale values.
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        super().__init__(decay=decay, use_buffers=False, **kwargs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the averaged weights in the model until `on_validation_end`."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the raw weights back; Lightning runs checkpoint callbacks after this one, so they save the
        averaged weights with what the validation pass fitted to them."""
        if self._average_model is not None:
            self._swap_models(pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with a local checkpoint written to a temporary file beside it and renamed onto
    it. Lightning's own goes through the system's temporary folder, and when that is another filesystem (a tmpfs
    `/tmp`) its final move is a copy that a kill can leave half-written over the previous checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as err:  # torch's writer: "iostream error", "unexpected pos": the bytes were refused
                if shutil.disk_usage(tmp.parent).free < 1 << 20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
                why = f"torch.save could not write it ({str(err).splitlines()[0]})"
                raise OSError(errno.EIO, why, str(path)) from err


class RunFolderCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` that follows its run folder when the folder is moved or copied, and carries
    the best checkpoints into a new folder.

    `last.ckpt` holds the latest weights saved at an epoch's end: Lightning 2.6 rewrites it only when it saves a
    best checkpoint, so that after an epoch that is not the best it held an earlier epoch, and resuming from it ran
    epochs again; here it is written at every point where Lightning could save (each validation or training epoch's
    end; not when training stops, where it could mark an unfinished epoch done, or hold weights averaged for use,
    `callbacks.ema`, as those to train on). Resuming from a moved folder's own checkpoint, Lightning forgets the best
    and last checkpoints it finds there (their recorded paths name the old place): it then writes `last-v1.ckpt`
    beside `last.ckpt` and never removes the old best. When every checkpoint the state names is in this callback's
    folder, the state is read as if it had been saved there. Resuming into another folder, Lightning forgets the
    best score, so the new run's first epoch became its best whatever the earlier ones scored: the best checkpoints,
    where they still exist, are copied into the new folder and tracked there. Its state is saved under
    `ModelCheckpoint`'s key, so either class resumes the other's checkpoints.
    """

    @property
    def state_key(self) -> str:
        return ModelCheckpoint.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last == "link":
            raise UserError("callbacks.model_checkpoint.save_last=link would make last.ckpt a link to the best "
                            "checkpoint, not the latest epoch that resuming goes on from: use true (or false)")
        self._trainer: pl.Trainer | None = None
        self._replaced: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer  # its ckpt_path is set by the time `load_state_dict` runs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)
        self._remove_replaced(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_unless_saved(trainer)
        self._remove_replaced(trainer)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Held until `last.ckpt` names what replaced it (`_remove_replaced`): Lightning removed the previous best
        before writing `last.ckpt`, so a kill in between left a `last.ckpt` whose best was gone."""
        self._replaced.append(filepath)

    def _remove_replaced(self, trainer: pl.Trainer) -> None:
        while self._replaced:
            super()._remove_checkpoint(trainer, self._replaced.pop(0))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Every process saves here at the same point, so the module may gather every process's generator states
        into the checkpoint (`TaskModule.gather_rng`); a save by one process alone (a signal handler's, say) must
        not wait for the others."""
        module = trainer.lightning_module
        module.gather_rng = True
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            module.gather_rng = False

    def _save_last_unless_saved(self, trainer: pl.Trainer) -> None:
        """Write `last.ckpt` unless a checkpoint was saved at this step already (or saving is off now)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        resumed_from = self._trainer.ckpt_path if self._trainer is not None else None
        if state_dict.get("dirpath") and resumed_from:  # the files beside the checkpoint resumed from
            state_dict = moved_checkpoint_state(state_dict, state_dict["dirpath"],
                                                os.path.dirname(os.path.abspath(resumed_from)))
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.abspath(old) != os.path.abspath(self.dirpath):
            state_dict = moved_checkpoint_state(state_dict, old, self.dirpath)
            if state_dict.get("dirpath") == old:
                state_dict = carried_best_state(state_dict, self.dirpath)
                if resumed_from and os.path.basename(resumed_from).startswith("last") and \
                        os.path.dirname(os.path.abspath(resumed_from)) == os.path.abspath(self.dirpath):
                    # this folder's own last checkpoint (a copied run folder's): replaced, not left beside a new one
                    state_dict["last_model_path"] = os.path.abspath(resumed_from)
        super().load_state_dict(state_dict)
        self._forget_missing_best()

    def _forget_missing_best(self) -> None:
        """Resuming, the best checkpoints the state names that no longer exist (removed by a run killed before it
        wrote `last.ckpt`) are forgotten with a warning, so that testing does not fail on them at the end. The
        first process decides for all (`file_exists`), so that every process keeps the same state."""
        trainer = self._trainer
        if trainer is None or not self.best_model_path or self.file_exists(self.best_model_path, trainer):
            return
        if trainer.is_global_zero:
            log.warning("the best checkpoint this run recorded, %s, is gone (an earlier run was stopped while "
                        "replacing it): its score is forgotten, and the next validation saves a new best",
                        self.best_model_path)
        self.best_k_models = {path: score for path, score in self.best_k_models.items()
                              if self.file_exists(path, trainer)}
        self.best_model_path, self.best_model_score = "", None
        self.kth_best_model_path, self.kth_value = "", torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        if self.best_k_models:
            self.best_model_path = (min if self.mode == "min" else max)(self.best_k_models, key=self.best_k_models.get)
            self.best_model_score = self.best_k_models[self.best_model_path]


def carried_best_state(state: dict[str, Any], new: str) -> dict[str, Any]:
    """`state` of a `ModelCheckpoint` with its best checkpoints copied into `new` (by the first process) and
    tracked there, and no last checkpoint (the new run writes its own); `state` unchanged if any is gone."""
    best = list(state.get("best_k_models", {}))
    if not best or not all(os.path.isfile(path) for path in best):
        return state
    carried = partial(_in_folder, new)
    if rank_zero_only.rank == 0:
        os.makedirs(new, exist_ok=True)
        for path in best:
            with atomic_path(carried(path)) as tmp:
                shutil.copyfile(path, tmp)
    state = {**state, **{key: carried(state.get(key) or "") for key in TRACKED_PATHS}, "dirpath": new}
    state["last_model_path"] = ""
    state["best_k_models"] = {carried(path): score for path, score in state["best_k_models"].items()}
    return state


def moved_checkpoint_state(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`state` of a `ModelCheckpoint` with its paths under `old` moved under `new`, when all of them exist
    there; else `state` unchanged."""
    paths = [state.get(key) or "" for key in TRACKED_PATHS] + list(state.get("best_k_models", {}))
    paths = [path for path in paths if path]
    if not paths or any(os.path.dirname(path) != old for path in paths):
        return state
    moved = partial(_in_folder, new)
    if not all(os.path.isfile(moved(path)) for path in paths):
        return state
    state = {**state, **{key: moved(state.get(key) or "") for key in TRACKED_PATHS}, "dirpath": new}
    state["best_k_models"] = {moved(path): score for path, score in state.get("best_k_models", {}).items()}
    return state


def _in_folder(folder: str, path: str) -> str:
    """The file of `path`'s name in `folder`; an empty path stays empty (none tracked)."""
    return os.path.join(folder, os.path.basename(path)) if path else path
