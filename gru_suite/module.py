"""The one LightningModule that trains every task."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import Metric

from gru_suite.backbone import GRUBackbone
from gru_suite.data import saving_part_way
from gru_suite.distributed import gather_objects, warn_on_rank_zero
from gru_suite.errors import UserError
from gru_suite.rng import rng_states, set_rng_states
from gru_suite.task import Pretraining, Stage, StepOutput, TaskPlugin, checkpointable_state

log = logging.getLogger(__name__)
CHECKPOINT_KEY = "gru_suite"
STEP_LOSS = "train/loss_step"
"""The training loss of single steps, logged as often as the logger writes (metrics.csv), not a final metric."""


class TaskModule(pl.LightningModule):
    """Drives a `TaskPlugin`: steps, logging, optimisation and checkpoint metadata.

    `config` is the run's model-defining config (task, backbone, optimizer,
    scheduler); it is stored in every checkpoint with the task's state, which is
    all `gru_suite.checkpoint.load_checkpoint` needs to rebuild the model.
    """

    def __init__(
        self,
        task: TaskPlugin,
        model: nn.Module,
        config: DictConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.model = model
        self.config = config
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.samples_seen = 0
        self.pretraining: Pretraining | None = None
        """Set by `gru_suite.run.pretrain` while the task's pre-training phase runs."""
        self._train_samples_at_start = 0
        self._resumed_epoch_sums: tuple[float, float, int] | None = None  # from a checkpoint saved mid-epoch
        self._train_loss_sum = torch.zeros(())
        self._train_loss_weight: float | torch.Tensor = 0  # a number unless a task weighs by tensors: no per-step op
        self._task_name = task.cfg.get("name")  # read once: a DictConfig lookup costs microseconds every step
        self._monitor = task.cfg.get("monitor")
        self._backbone_checked = False
        self._step_metric_names: dict[str, set[str]] = {}  # an evaluation's, by stage, until its epoch_end
        self.diverged_in: int | None = None
        """The epoch whose mean training loss was NaN, once training stopped for it."""
        self.gather_rng = False
        """Set by `RunFolderCheckpoint` while every process saves together: checkpoints then hold each process's
        generator states; other saves hold the saving process's alone."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` (a string) around every hook call, about 40 times per
        # training step; nn.Module's checks for parameters and submodules on each cost ~0.2 ms per
        # step, more than a small model's whole forward pass, so that one attribute skips them.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _log_metrics(self, out: StepOutput, stage: Stage) -> None:
        if stage != "train":  # the names an evaluation's epoch_end must not reuse
            self._step_metric_names.setdefault(stage, set()).update(out.metrics)
        for name, value in out.metrics.items():  # epoch means over every DDP process's share
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=out.batch_size, sync_dist=True,
                     prog_bar=f"{stage}/{name}" == self._monitor)

    def _run(self, batch: Any, batch_idx: int, stage: Stage) -> StepOutput:
        out = self.task.step(self.model, batch, stage)
        if batch_idx == 0:  # once a pass: checking a tensor loss weight's sign reads it (a device sync on a GPU)
            check_step_output(out, self._task_name, stage)
        weight = out.batch_size if out.loss_weight is None else out.loss_weight
        self.log(f"{stage}/loss", out.loss, on_epoch=True, prog_bar=True, batch_size=weight, sync_dist=True)
        self._log_metrics(out, stage)
        return out

    def on_train_start(self) -> None:
        """A run resumed from a checkpoint that early stopping ended trains no further (Lightning would go on); one
        resumed part-way through an epoch (where Lightning starts no epoch, `on_train_epoch_start`) goes on with the
        epoch's loss sums so far."""
        self._train_loss_sum = self._train_loss_sum.to(self.device)
        if self._resumed_epoch_sums is not None and self.trainer.world_size == 1:  # one process's sums: not for DDP
            loss_sum, self._train_loss_weight, samples = self._resumed_epoch_sums
            self._train_loss_sum += loss_sum
            self._train_samples_at_start = self.samples_seen - samples
        self._resumed_epoch_sums = None
        for callback in self.trainer.early_stopping_callbacks:
            if callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
                rank_zero_info(f"early stopping ended this run at epoch {callback.stopped_epoch} "
                               f"({callback.stopping_reason_message or callback.stopping_reason.value}): nothing "
                               "left to train")
                self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        if self._trainer is not None:
            self._stop_if_diverged(self._trainer.callback_metrics.get("train/loss"))
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_loss_weight = 0
        self._train_samples_at_start = self.samples_seen

    def _stop_if_diverged(self, last_loss: torch.Tensor | None) -> None:
        """Stop training (once `trainer.min_epochs` allows), with one warning, where the last epoch's mean loss (over
        every process: the synced value, the same on each) is NaN: its weights are lost. (An inf, a mixed-precision
        overflow that the gradient scaler skips, is not.)"""
        if last_loss is None or not bool(torch.isnan(last_loss)) or self._trainer.should_stop:
            return
        min_epochs = self._trainer.fit_loop.min_epochs or 0
        stops = "stops here" if self.current_epoch >= min_epochs else f"stops after trainer.min_epochs={min_epochs}"
        kept = self._trainer.checkpoint_callback
        tested = ("testing and prediction use the best checkpoint so far, if its weights are finite" if
                  getattr(kept, "monitor", None) else "the last epoch's weights, which testing would use, are lost: "
                  "set task.monitor to keep the best")
        warn_on_rank_zero(f"train/loss is nan in epoch {self.current_epoch - 1}: training diverged and {stops} "
                          f"({tested}); {divergence_advice(self._trainer)}")
        self._trainer.should_stop = True
        self.diverged_in = self.current_epoch - 1

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.pretraining is not None:
            loss = self.pretraining.loss(self.model, batch)
            self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
            return loss
        # `self.log` costs far more than a tiny model's step, so the epoch mean is summed here
        # and the step loss is logged only as often as the logger writes.
        out = self.task.step(self.model, batch, "train")
        if batch_idx == 0:  # a plugin's mistake named once, before Lightning's backward meets it
            check_step_output(out, self._task_name, "train")
        weight = out.batch_size if out.loss_weight is None else out.loss_weight
        if isinstance(weight, torch.Tensor):  # summed over the epoch: no graph kept
            weight = weight.detach()
        self._train_loss_sum += out.loss.detach() * weight
        self._train_loss_weight += weight
        self.samples_seen += out.batch_size
        if self.trainer.log_every_n_steps and self.trainer._logger_connector.should_update_logs:  # 0: none
            self.log(STEP_LOSS, out.loss, prog_bar=True)  # on the steps the logger writes (run-wide count)
        self._log_metrics(out, "train")
        return out.loss

    def on_after_backward(self) -> None:
        """After the run's first backward pass, a warning when no backbone got a gradient (its output detached, or
        computed under torch.no_grad()): its weights would not train. Frozen on purpose (requires_grad off): none."""
        if self._backbone_checked:
            return
        self._backbone_checked = True
        trainable = [p for m in self.model.modules() if isinstance(m, GRUBackbone) for p in m.parameters()
                     if p.requires_grad]
        if trainable and all(p.grad is None for p in trainable):
            warn_on_rank_zero(f"task {self._task_name!r}: the first batch's loss gave the backbone no gradient, so "
                               "its weights will not train (is its output detached, or computed under "
                               "torch.no_grad()?)")

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training loss, weighted by what each step weighed (samples, tokens, steps): under DDP
        Lightning sums value x weight and the weights over the processes, so the loss is the whole epoch's mean."""
        if self.samples_seen > self._train_samples_at_start:
            self.log("train/loss", self._train_loss_sum / self._train_loss_weight, prog_bar=True,
                     batch_size=self._train_loss_weight, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._run(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._run(batch, batch_idx, "test")

    def _log_epoch_metrics(self, stage: Stage) -> None:
        metrics = check_epoch_metrics(self.task.epoch_end(stage), self._task_name, stage,
                                      self._step_metric_names.pop(stage, set()))
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, sync_dist=True, prog_bar=f"{stage}/{name}" == self._monitor)

    def on_validation_epoch_start(self) -> None:
        self._step_metric_names.pop("val", None)  # an interrupted pass's names are not this one's

    def on_test_epoch_start(self) -> None:
        self._step_metric_names.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.task.predict_step(self.model, batch)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters(), **self._unfused_if_clipped_amp())
        if self.scheduler_factory is None or self.pretraining is not None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        # a plateau schedule reads the monitored validation metric: stepped only on epochs that validate
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        every = (self._trainer.check_val_every_n_epoch or 1) if plateau and self._trainer is not None else 1
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.task.cfg.monitor, "interval": "epoch",
                             "frequency": every},
        }

    def _unfused_if_clipped_amp(self) -> dict[str, Any]:
        """`fused=False` where Lightning must clip gradients under mixed precision.

        A fused optimizer unscales gradients inside its own step, so Lightning refuses
        to clip them first (`bf16-mixed` or `16-mixed` with `gradient_clip_val`); the
        unfused update is the same arithmetic.
        """
        trainer = self._trainer
        fused = getattr(self.optimizer_factory, "keywords", {}).get("fused", False)
        clips_under_amp = (
            trainer is not None
            and bool(trainer.gradient_clip_val)
            and isinstance(trainer.precision_plugin, MixedPrecision)
        )
        return {"fused": False} if fused and clips_under_amp else {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run continues the checkpoint's random number generators (the batch order and dropout masks
        of a run never stopped) and its progress through the learning-rate schedule, but takes the schedule's
        settings from this run's config (a cosine schedule's `T_max` follows a new `trainer.max_epochs`), and its
        learning rates scaled to this run's `optimizer.lr`."""
        states, optimizers = checkpoint.get("lr_schedulers") or [], checkpoint.get("optimizer_states") or []
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING  # not when testing
        epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
        ended = epochs.get("processed", 0) > epochs.get("completed", 0)  # where a cut epoch ended (earlier versions)
        if fitting and not ended and (sums := checkpoint.get(CHECKPOINT_KEY, {}).get("epoch_sums")):
            self._resumed_epoch_sums = (sums["loss_sum"], sums["loss_weight"], sums["samples"])
        if fitting and (rng := checkpoint.get(CHECKPOINT_KEY, {}).get("rng")):
            set_rng_states(rng[self.global_rank % len(rng)])
            if len(rng) != self.trainer.world_size and self.trainer.is_global_zero:
                log.warning("the checkpoint holds the random generators of %d training process(es) and this run has "
                            "%d: each process goes on from saved ones in turn, so batch order and dropout masks are "
                            "not those of a run never stopped", len(rng), self.trainer.world_size)
        if fitting and (scale := follow_configured_lr(checkpoint, self.config.optimizer.get("lr"))):
            rank_zero_info(f"resuming with this run's optimizer.lr: the checkpoint's learning rates x {scale:g}")
        if fitting and self.scheduler_factory is None and states and (lr := self.config.optimizer.get("lr")):
            for optimizer in optimizers:  # no schedule now: the schedule's last rates give way to optimizer.lr
                for group in optimizer["param_groups"]:
                    group["lr"] = float(lr)
        if fitting and len(optimizers) == 1:
            self._follow_configured_optimizer(optimizers[0], checkpoint)
        if not fitting or self.scheduler_factory is None or len(states) != 1 or len(optimizers) != 1:
            return
        configured_lr = self.config.optimizer.get("lr")  # a plateau schedule keeps no base rates
        base_lrs = states[0].get("base_lrs") or [float(configured_lr) if configured_lr else group["lr"]
                                                 for group in optimizers[0]["param_groups"]]
        probe = self._probe_optimizer(base_lrs)
        trained = trained_config(checkpoint, "scheduler").get("_target_")
        configured = self.config.get("scheduler", {}).get("_target_")
        same_kind = trained == configured if trained and configured else None
        if changed := follow_configured_schedule(states[0], optimizers[0], self.scheduler_factory(optimizer=probe),
                                                 same_kind):
            rank_zero_info(f"resuming with this run's learning-rate schedule: {', '.join(changed)}")
        self._catch_up_plateau(states[0], optimizers[0], checkpoint)

    def _probe_optimizer(self, lrs: list[float]) -> torch.optim.Optimizer:
        """This run's optimizer over one probe parameter per group, at the learning rates `lrs`: its settings, and a
        scheduler's to step on it, without the model's parameters."""
        return self.optimizer_factory(params=[{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs],
                                      **self._unfused_if_clipped_amp())

    def _follow_configured_optimizer(self, optimizer_state: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        """The checkpoint's optimizer takes this run's settings (weight decay, betas, ...) and keeps its learning
        rates; an optimizer of another kind than the checkpoint's starts with fresh per-parameter state."""
        groups = optimizer_state["param_groups"]
        probe = self._probe_optimizer([group["lr"] for group in groups])
        trained_settings = trained_config(checkpoint, "optimizer")
        configured_settings = OmegaConf.to_container(self.config.optimizer)
        trained, configured = trained_settings.get("_target_"), configured_settings.get("_target_")
        if trained and configured and trained != configured:
            optimizer_state["state"] = {}
            rank_zero_info(f"resuming with this run's optimizer {configured} (the checkpoint's {trained}): "
                           "its state starts afresh")
        # the settings this run's config changes, and `fused` (off under mixed precision with clipping); not those
        # a schedule manages in the groups (OneCycleLR's betas and max_lr)
        given = {key for key, value in configured_settings.items() if trained_settings.get(key) != value} | {"fused"}
        if changed := follow_configured_optimizer(groups, probe, given - {"_target_", "lr"}):
            rank_zero_info(f"resuming with this run's optimizer settings: {', '.join(changed)}")

    def _catch_up_plateau(self, state: dict[str, Any], optimizer_state: dict[str, Any],
                          checkpoint: dict[str, Any]) -> None:
        """Step a `ReduceLROnPlateau` state with the monitored value of the checkpoint's epoch: Lightning saves the
        checkpoint at the end of validation and steps the schedule after it, and on resume never does, so the
        schedule would miss that epoch."""
        saved = checkpoint.get(CHECKPOINT_KEY, {})
        monitored = saved.get("monitored")
        if "plateau_step_pending" in saved:
            pending = saved["plateau_step_pending"]
        else:  # a checkpoint from before that key: one step an epoch, none mid-epoch
            epoch_ended = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
            pending = state.get("last_epoch") == checkpoint.get("epoch") and epoch_ended.get("is_last_batch")
        if monitored is None or "num_bad_epochs" not in state or not pending:
            return
        groups = optimizer_state["param_groups"]
        probe = self._probe_optimizer([group["lr"] for group in groups])
        schedule = self.scheduler_factory(optimizer=probe)
        schedule.load_state_dict(state)
        schedule.step(monitored)
        state.update(schedule.state_dict())
        for group, stepped in zip(groups, probe.param_groups):
            group["lr"] = stepped["lr"]

    def _plateau_step_pending(self) -> bool:
        """Whether Lightning steps a plateau schedule after this point: an epoch whose training batches are done but
        which has not ended, on an epoch the schedule steps (`configure_optimizers`' frequency)."""
        trainer = self._trainer
        if trainer is None or not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return False
        epochs, every = trainer.fit_loop.epoch_progress.current, trainer.check_val_every_n_epoch or 1
        return epochs.completed < epochs.started and (trainer.current_epoch + 1) % every == 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        monitored = self._trainer.callback_metrics.get(self._monitor) if self._trainer is not None else None
        checkpoint[CHECKPOINT_KEY] = {
            "plateau_step_pending": self._plateau_step_pending(),
            "config": OmegaConf.to_container(self.config),
            "task_state": checkpointable_state(self.task),
            "monitored": None if monitored is None else float(monitored),  # this epoch's, for a plateau schedule
            # each process's, so that a resumed run draws the dropout masks (and batches) the uninterrupted run would
            "rng": gather_objects(rng_states()) if self.gather_rng else [rng_states()],
            "epoch_sums": self._epoch_sums_so_far(),
        }

    def _epoch_sums_so_far(self) -> dict[str, float] | None:
        """Saved part-way through a training epoch (validation every `trainer.val_check_interval`): the epoch's
        training loss sums and samples so far, which a run resumed there adds to (its `train/loss` is then the whole
        epoch's mean); None at an epoch's end."""
        # under DDP rank 0 saves: the other processes' sums are not in its checkpoint
        if self._trainer is None or self.pretraining is not None or not saving_part_way(self._trainer):
            return None
        return {"loss_sum": float(self._train_loss_sum), "loss_weight": float(self._train_loss_weight),
                "samples": self.samples_seen - self._train_samples_at_start}


def divergence_advice(trainer: pl.Trainer) -> str:
    """What to change after a diverged run: a lower learning rate, and gradient clipping where it is off (else a
    tighter clip)."""
    clip = trainer.gradient_clip_val
    return (f"lower optimizer.lr, or trainer.gradient_clip_val (now {clip})" if clip else
            "lower optimizer.lr, or set trainer.gradient_clip_val")


def check_step_output(out: Any, task: str | None, stage: Stage) -> StepOutput:
    """`out`, a task's `step` output, if it is a `StepOutput` whose loss is one number (with a gradient when
    training); else a UserError naming the task and what is wrong."""
    where = f"task {task!r}: step(..., {stage!r})"
    if not isinstance(out, StepOutput):
        raise UserError(f"{where} returned a {type(out).__name__}, not a StepOutput(loss, batch_size, metrics)")
    if not isinstance(out.loss, torch.Tensor):
        raise UserError(f"{where} returned a loss of type {type(out.loss).__name__}, not a tensor: return the loss "
                        "tensor itself (not .item()), so that it carries its gradient")
    if out.loss.numel() != 1:
        raise UserError(f"{where} returned a loss of shape {tuple(out.loss.shape)}: expected one number (reduce it, "
                        "e.g. .mean())")
    if not isinstance(out.batch_size, numbers.Integral) or isinstance(out.batch_size, bool) or out.batch_size < 1:
        raise UserError(f"{where} returned batch_size={out.batch_size!r}: expected a whole number of samples, at least "
                        "1 (what the batch's metrics weigh in their epoch mean)")
    if stage == "train" and torch.is_grad_enabled() and not out.loss.requires_grad:
        raise UserError(f"{where} returned a loss without a gradient (detached, or computed under torch.no_grad())")
    if "loss" in out.metrics:
        raise UserError(f"{where} returned a metric named 'loss', which {stage}/loss already is (the loss it returns): "
                        "rename the metric")
    for name, value in out.metrics.items():
        if not (_one_number(value) or isinstance(value, Metric)):
            raise UserError(f"{where} returned metric {name!r} as {_described(value)}: expected one number per batch "
                            "(the core logs its epoch mean; a metric of a whole pass goes in epoch_end)")
    weight = out.loss_weight
    if weight is not None and not (isinstance(weight, (int, float)) and weight >= 0 or
                                   isinstance(weight, torch.Tensor) and weight.numel() == 1 and float(weight) >= 0):
        raise UserError(f"{where} returned loss_weight={weight!r}: expected a number, 0 or more (what the epoch's mean "
                        "loss weighs this batch by; 0: nothing), or None")
    return out


def check_epoch_metrics(metrics: Any, task: str | None, stage: Stage, step_names: Collection[str]) -> Mapping:
    """`metrics`, a task's `epoch_end` output, if it maps names other than `loss` and `step_names` (the metrics its
    steps returned, logged as epoch means under the same names) to one number each; else a UserError."""
    where = f"task {task!r}: epoch_end({stage!r})"
    if not isinstance(metrics, Mapping):
        raise UserError(f"{where} returned a {type(metrics).__name__}, not a dict of metric names to numbers "
                        "({} for none)")
    for name, value in metrics.items():
        if name == "loss" or name in step_names:
            what = "the loss step() returns" if name == "loss" else "the epoch mean of a metric step() returns"
            raise UserError(f"{where} returned a metric named {name!r}, which {stage}/{name} already is ({what}): "
                            "rename one of them")
        if not (_one_number(value) or isinstance(value, Metric)):
            raise UserError(f"{where} returned metric {name!r} as {_described(value)}: expected one number, the "
                            "metric of the whole pass")
    return metrics


def _one_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            or isinstance(value, torch.Tensor) and value.numel() == 1)


def _described(value: Any) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)


SCHEDULE_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "base_lrs", "best", "num_bad_epochs",
                               "cooldown_counter", "_is_initial", "_get_lr_called_within_step"})
"""Scheduler state that a run accumulates; the rest of a scheduler's state is its settings."""
DERIVED_SETTINGS = frozenset({"mode_worse"})
"""Scheduler settings that follow from others (ReduceLROnPlateau's `mode`), not worth naming."""


def trained_config(checkpoint: dict[str, Any], group: str) -> dict[str, Any]:
    """The config `group` (optimizer, scheduler) a checkpoint was trained with; empty where it records none."""
    return checkpoint.get(CHECKPOINT_KEY, {}).get("config", {}).get(group) or {}


def follow_configured_lr(checkpoint: dict[str, Any], lr: Any) -> float | None:
    """Scale a checkpoint's learning rates (its optimizers' groups, its schedulers' base and last rates) by `lr`
    over the `optimizer.lr` it was trained with, keeping the schedule's progress; returns the factor, or None
    where `lr` is the same (or either is unknown)."""
    trained = trained_config(checkpoint, "optimizer").get("lr")
    if lr is None or not trained or float(lr) == float(trained):
        return None
    scale = float(lr) / float(trained)
    for optimizer in checkpoint.get("optimizer_states") or []:
        for group in optimizer["param_groups"]:
            group.update({key: group[key] * scale for key in ("lr", "initial_lr") if key in group})
    for state in checkpoint.get("lr_schedulers") or []:
        state.update({key: [rate * scale for rate in state[key]] for key in ("base_lrs", "_last_lr") if key in state})
    return scale


def follow_configured_optimizer(groups: list[dict[str, Any]], configured: torch.optim.Optimizer,
                                given: set[str]) -> list[str]:
    """Give a checkpoint's optimizer parameter `groups` the `given` settings of `configured` (an optimizer with as
    many groups), and those it lacks (another kind of optimizer's); other keys stay (learning rates, what a
    schedule keeps there). Returns the changed settings as `name old -> new`."""
    changed: dict[str, str] = {}
    for group, fresh in zip(groups, configured.param_groups):
        settings = {key: value for key, value in fresh.items()
                    if key != "params" and (key in given or key not in group)}
        changed.update({key: f"{key} {group.get(key)!r} -> {value!r}" for key, value in settings.items()
                        if group.get(key) != value})
        group.update(settings)
    return list(changed.values())


def follow_configured_schedule(state: dict[str, Any], optimizer_state: dict[str, Any], configured: Any,
                               same_kind: bool | None = None) -> list[str]:
    """Give a checkpoint's scheduler `state` the settings of `configured`, a fresh scheduler of the same kind over
    the same base learning rates, keeping the state's progress; the learning rates in `optimizer_state` move onto
    the new schedule at the same epoch (but for `ReduceLROnPlateau`, which follows a metric). Returns the changed
    settings as `name old -> new`. A scheduler of another kind (`same_kind` false; unknown, None: its state holds
    other keys) starts afresh: the checkpoint's state is replaced by `configured`'s and the learning rates go back
    to the base ones. Of the same kind, a key only one side has (another torch release's) is no setting."""
    fresh = configured.state_dict()
    if same_kind is False or (same_kind is None and set(fresh) != set(state)):
        state.clear()
        state.update(fresh)
        for group, lr in zip(optimizer_state["param_groups"], configured.get_last_lr()):
            group["lr"] = lr
        return [f"a {type(configured).__name__} from its first epoch (the checkpoint's schedule is of another kind)"]
    settings = {k: v for k, v in fresh.items() if k not in SCHEDULE_PROGRESS and k in state and state[k] != v}
    changed = [f"{k} {state[k]!r} -> {v!r}" for k, v in settings.items() if k not in DERIVED_SETTINGS]
    if not settings:
        return []
    if state.get("mode") != fresh.get("mode"):  # ReduceLROnPlateau: the best value so far is a worst one now
        state.update(best=fresh["best"], num_bad_epochs=0)
    state.update({k: v for k, v in fresh.items() if k not in SCHEDULE_PROGRESS})
    if not isinstance(configured, torch.optim.lr_scheduler.ReduceLROnPlateau):
        configured.optimizer.step()  # (no gradients: no update) so the scheduler's steps below are in order
        for _ in range(state["last_epoch"]):
            configured.step()
        for group, lr in zip(optimizer_state["param_groups"], configured.get_last_lr()):
            group["lr"] = lr
        state["_last_lr"] = configured.get_last_lr()
    return changed
