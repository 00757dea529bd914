"""Build a task, its model and a Lightning Trainer from a composed config, and run them."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, WeightAveraging
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from gru_suite import registry
from gru_suite.artifacts import write_artifacts
from gru_suite.atomic import unfinished_writes
from gru_suite.backbone import GRUBackbone
from gru_suite.callbacks import AtomicCheckpointIO
from gru_suite.checkpoint import (
    check_same_model,
    keep_trained_settings,
    read_checkpoint,
    settings_apart,
    stored_config,
)
from gru_suite.config import (
    MODEL_CONFIG_KEYS,
    check_run_settings,
    instantiate,
    literal,
    raise_all,
    wrong_batch_limits,
    unset_required,
    unused_backbone_settings,
)
from gru_suite.distributed import (
    SignalConnectorWithoutBroadcast,
    refuse_launching_in_a_sweep,
    tie_started_processes_to_the_first,
    warn_on_rank_zero,
)
from gru_suite.errors import DivergedRun, UserError, user_error_in
from gru_suite.metrics_file import write_metrics
from gru_suite.module import CHECKPOINT_KEY, STEP_LOSS, TaskModule, divergence_advice
from gru_suite.overrides import command_line_overrides, given_keys
from gru_suite.profilers import QuietProfiler
from gru_suite.resume import (
    check_epochs_left,
    keep_resumed_as_last,
    resume_path,
    resumed_run_metrics,
    resumes_in_own_folder,
    warn_of_a_dropped_weight_average,
    warn_of_another_monitor,
)
from gru_suite.run_folder import checkpoint_folder, first_process, keep_earlier_file, move_aside, set_aside
from gru_suite.task import (
    EnsembleMember,
    Pretraining,
    TaskPlugin,
    absolute_paths,
    checkpointable_state,
    task_datamodule,
    wrong_task_settings,
)

log = logging.getLogger(__name__)


class _NoCloudTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud logger and model registry, logged by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoCloudTips())
LIGHTNING_NOISE = (
    # Lightning 2.6 tests `isinstance(spec, LeafSpec)`, which newer torch deprecates (a warning per test or predict run)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the module logs each epoch's mean training loss itself, so an epoch shorter than the interval loses no log
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


def ignore_lightning_noise() -> None:
    """Hide Lightning's warnings that do not apply to the suite's runs (`LIGHTNING_NOISE`)."""
    for message in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=message)


ignore_lightning_noise()


def build_task(task_cfg: DictConfig, state: dict[str, Any] | None = None) -> TaskPlugin:
    """Import only the selected task and construct it, its path settings made absolute first
    (`absolute_task_paths`)."""
    task_cls = absolute_task_paths(task_cfg)
    task = task_cls(task_cfg, state)
    if not (hasattr(task, "cfg") and hasattr(task, "state")):
        raise UserError(f"task {task_cfg.name!r}: {task_cls.__name__}.__init__ must call super().__init__(cfg, state), "
                        "which checks the settings and sets self.cfg and self.state")
    return task


def absolute_task_paths(task_cfg: DictConfig) -> type[TaskPlugin]:
    """The task class of `task_cfg`, whose `path_settings` in `task_cfg` that name existing files or folders by
    relative paths are made absolute in place (`gru_suite.task.absolute_paths`): before a checkpoint's stored
    config is compared with it, and before the task reads them."""
    task_cls = registry.get_task(task_cfg.name).load()
    absolute_paths(task_cfg, task_cls.path_settings)
    return task_cls


def _found_backbone(model: Any, found: Any, factory: Any) -> str:
    """What a model holds instead of its backbone, said for `build_module`'s error."""
    if not hasattr(model, "backbone"):
        return f"its {type(model).__name__} has no `backbone` attribute"
    if found is factory:
        return "its `backbone` is the factory itself: call it, backbone(input_size=F), and keep what it returns"
    if isinstance(found, GRUBackbone):
        return ("its `backbone` is a GRUBackbone the factory did not build, which the backbone.* settings do not "
                "reach: build it with backbone(input_size=F)")
    return f"its `backbone` is a {type(found).__name__}"


def _recording(factory: functools.partial) -> tuple[Callable[..., GRUBackbone], list[GRUBackbone]]:
    """`factory` as the task is given it, and the backbones it has built through it."""
    built: list[GRUBackbone] = []

    def backbone(*args: Any, **kwargs: Any) -> GRUBackbone:
        built.append(made := factory(*args, **kwargs))
        return made

    return backbone, built


def build_module(cfg: DictConfig, task: TaskPlugin) -> TaskModule:
    """The task's model around the configured backbone, with its optimiser settings."""
    factory = instantiate(cfg.backbone, "backbone", _partial_=True)
    check_backbone(factory)
    backbone, built = _recording(factory)
    model = task.build_model(backbone)
    found = getattr(model, "backbone", None)
    if not any(found is made for made in built):  # backbone.* settings would do nothing
        raise UserError(f"task {task.cfg.get('name')!r}: build_model() must return a module whose `backbone` "
                        "attribute is the backbone built by the factory it is given (the backbone settings, the gate "
                        f"plots and checkpoints rely on it); {_found_backbone(model, found, backbone)}")
    optimizer = instantiate(cfg.optimizer, "optimizer", _partial_=True)
    scheduler = instantiate(cfg.scheduler, "scheduler", _partial_=True) if cfg.get("scheduler") else None
    check_optimization(optimizer, scheduler)
    model_cfg = OmegaConf.create(literal({k: OmegaConf.to_container(cfg[k], resolve=True)
                                          for k in MODEL_CONFIG_KEYS if k in cfg}))  # stored escaped, read back as is
    return TaskModule(task, model, model_cfg, optimizer, scheduler)


def check_backbone(factory: functools.partial) -> None:
    """The backbone's settings against its class's signature, so that an unknown key (`+backbone.hiden_size`) is one
    line naming it now, not a TypeError when the task builds its model."""
    signature = inspect.signature(factory.func)
    try:
        signature.bind_partial(*factory.args, **factory.keywords)
    except TypeError as err:
        known = ", ".join(name for name in signature.parameters if name != "input_size")
        raise UserError(f"backbone settings: {err} (the keys of {factory.func.__name__}: {known})") from err


def check_optimization(optimizer: Any, scheduler: Any | None) -> None:
    """Build the optimizer and scheduler once on a probe parameter, so that a bad setting (an unknown key, a plateau
    `factor` of 2, a cosine `T_max` below 1) is one line naming its group now, not a traceback after the trainer
    has started."""
    group, factory = "optimizer", optimizer
    try:
        built = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
        group, factory = "scheduler", scheduler
        if scheduler is not None and getattr(schedule := scheduler(optimizer=built), "T_max", 1) < 1:
            raise ValueError(f"T_max={schedule.T_max}: a cosine schedule needs a length of at least one epoch "
                             "(scheduler.T_max follows trainer.max_epochs: give that, or set scheduler.T_max where "
                             "training is limited by trainer.max_steps)")
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{key}={value!r}" for key, value in getattr(factory, "keywords", {}).items())
        raise UserError(f"{group} settings ({given}): {err}") from err


def command_line_keys(group: str) -> list[str]:
    """The keys of config `group` set on the command line of the running Hydra app (none outside one)."""
    from hydra.core.hydra_config import HydraConfig

    return given_keys(command_line_overrides(HydraConfig.get()), group) if HydraConfig.initialized() else []


def apply_threads(cfg: DictConfig) -> None:
    """`cfg.threads` (when set and not 0) becomes torch's intra-op CPU thread count."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The configured Trainer with its callbacks and loggers; `cfg.threads` sets torch's CPU threads."""
    apply_threads(cfg)
    raise_all(wrong_batch_limits(cfg))  # named with the other settings before; here for a trainer built alone
    callbacks = configured_callbacks(cfg)
    loggers = [instantiate(c, f"logger.{name}") for name, c in _configured(cfg, "logger")]
    # "partial": a block such as a val_check_interval duration reaches Lightning as the dict it reads
    kwargs: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False, "_convert_": "partial"}
    if cfg.trainer.get("plugins") is None:  # a checkpoint is whole or absent, also from a tmpfs /tmp
        kwargs["plugins"] = [AtomicCheckpointIO()]
    if not cfg.trainer.get("profiler"):  # unset, null or false: no profiling, at no cost per hook
        kwargs["profiler"] = QuietProfiler()
    kwargs.update(overrides)
    trainer = instantiate(cfg.trainer, "trainer", **kwargs)
    trainer._signal_connector = SignalConnectorWithoutBroadcast(trainer)  # SIGTERM under DDP: Lightning's would hang
    refuse_launching_in_a_sweep(trainer)
    tie_started_processes_to_the_first(trainer)
    keep_earlier_metrics(loggers)  # once the trainer's settings are known good: a wrong one moves nothing
    if isinstance(trainer.accelerator, CPUAccelerator):
        # Lightning sets this at import; with it, torch re-probes NVML for CUDA on every
        # optimizer step (~0.1 ms each), which a CPU run never needs.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    return trainer


def configured_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks of `cfg.callbacks`, built; without the progress bar or the checkpoints where the trainer's own
    switch (`enable_progress_bar`, `enable_checkpointing`) turns them off, which Lightning refuses beside them."""
    switched_off = tuple(kind for kind, switch in ((ProgressBar, "enable_progress_bar"),
                                                   (ModelCheckpoint, "enable_checkpointing"))
                         if cfg.trainer.get(switch, True) is False)
    return [instantiate(c, f"callbacks.{name}") for name, c in _configured(cfg, "callbacks")
            if not _of_kind(c, switched_off)]


def _of_kind(entry: DictConfig, kinds: tuple[type, ...]) -> bool:
    """Whether the class `entry` names (`_target_`) is one of `kinds`, without building it (a wrong name: no)."""
    from hydra.utils import get_class

    try:
        return bool(kinds) and issubclass(get_class(entry._target_), kinds)
    except Exception:  # noqa: BLE001 - building it names the wrong class
        return False


def _configured(cfg: DictConfig, group: str) -> list[tuple[str, DictConfig]]:
    """The entries of `group` (callbacks or logger) that name a class; one that does not is the leftover setting of
    a preset whose entry another choice (e.g. `callbacks=none`) removed: a warning, and skipped."""
    entries = []
    for name, entry in (cfg.get(group) or {}).items():
        if entry is not None and not isinstance(entry, DictConfig):
            raise UserError(f"{group}.{name} must be a block with a _target_ class, got {entry!r}")
        if entry is not None and "_target_" not in entry:
            log.warning("%s.%s sets %s but names no class (_target_): skipped", group, name, sorted(entry))
        elif entry is not None:
            entries.append((name, entry))
    return entries


@rank_zero_only
def keep_earlier_metrics(loggers: list[Any]) -> None:
    """A CSV logger deletes the `metrics.csv` in its folder when it starts (a resumed run's, or the training
    history when eval writes into the training run's folder): move one that is there to `metrics.N.csv`, then
    start the logger without its warning that earlier logs in the (run's, never empty) folder will be deleted."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        keep_earlier_file(Path(logger.log_dir) / "metrics.csv")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            _ = logger.experiment


@rank_zero_only
def keep_earlier_artifacts(folder: Path) -> None:
    """Artifacts an earlier run left in `folder` (the run resumed here, or stopped while writing them) move to
    `<folder>.N/`, so that the folder never mixes two models' files."""
    if folder.is_dir() and any(folder.iterdir()):
        log.info("kept the earlier run's %s as %s", folder, set_aside(folder).name)


def ensemble_predictions(
    trainer: pl.Trainer, module: TaskModule, datamodule: pl.LightningDataModule, source: str,
    others: Sequence[tuple[str, TaskModule]],
) -> list[Any]:
    """What the task makes of its models' predictions together (`TaskPlugin.ensemble`): `module`'s (read
    from `source`) over `datamodule`, then each other (checkpoint path, module)'s over the same input."""
    datamodule.setup("predict")  # the input's own errors come before any member is asked to join
    inputs = [(path, other, _member_input(path, other, module, datamodule)) for path, other in others]
    members = [EnsembleMember(source, module.task, trainer.predict(module, datamodule=datamodule) or [])]
    members += [EnsembleMember(path, other.task, trainer.predict(other, datamodule=data) or [])
                for path, other, data in inputs]
    log.info("ensemble of %d models: %s", len(members), ", ".join(m.source for m in members))
    return module.task.ensemble(members)


def _member_input(path: str, member: TaskModule, first: TaskModule, datamodule: pl.LightningDataModule) -> Any:
    """`member`'s data over `first`'s input (`TaskPlugin.ensemble_input`); its refusal names `path`."""
    try:
        return member.task.ensemble_input(first.task, datamodule)
    except UserError as err:
        raise UserError(f"ensemble: {path}: {err}") from err


def last_checkpoint_to_come(trainer: pl.Trainer) -> Path | None:
    """The folder where the trainer's checkpoint callback will write a `last.ckpt` and has none yet (so `ckpt_path=last`
    starts afresh), else None: one is there, or none will be (Lightning's own callback, `callbacks=none`, keeps no
    last checkpoint unless told to, as Lightning's warning then says)."""
    callback = trainer.checkpoint_callback
    if not getattr(callback, "save_last", False) or not getattr(callback, "dirpath", None):
        return None
    folder = Path(callback.dirpath)
    return None if any(folder.glob("last*.ckpt")) else folder


def check_train_settings(cfg: DictConfig) -> None:
    """Every wrong setting of a `train` config, the core's and its task's, named at once in one `UserError`; the right
    numbers and switches are stored as such. A value a preset requires (`${gru_suite.required:...}`) and nobody
    set is named first, before any work."""
    unset: list[str] = []
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # it wraps what a resolver raises; other holes are the checks' below to name
        if (error := user_error_in(err)) is not None:
            unset = unset_required(cfg) or [str(error)]
    raise_all(unset)
    check_run_settings(cfg, task=wrong_task_settings(registry.get_task(cfg.task.name).load(), cfg.task))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint and write artifacts; return the final metrics."""
    check_train_settings(cfg)
    for limit in ("max_epochs", "max_steps"):
        if cfg.trainer.get(limit) == 0:
            warn_on_rank_zero(f"trainer.{limit}=0: nothing is trained; the test metrics and artifacts are those of the "
                              "untrained (or resumed) model")
    resumed, task_state, resumed_step, monitor_changed = None, None, None, False
    absolute_task_paths(cfg.task)  # as the checkpoint resumed stores them
    if (ckpt_path := resume_path(cfg)) is not None:
        # one that cannot be read fails before any work; mapped, so only its shapes are read here, and Lightning
        # reads it
        checkpoint = read_checkpoint(ckpt_path)
        stored_cfg = stored_config(checkpoint)
        if (stored := stored_cfg.task).name != cfg.task.name:
            raise UserError(f"ckpt_path {ckpt_path} holds a model of task {stored.name!r}, not task={cfg.task.name}")
        check_epochs_left(checkpoint, cfg, ckpt_path)
        keep_trained_settings(cfg.task, stored, f"ckpt_path {ckpt_path}", "this run's", warn_on_rank_zero)
        monitor_changed = warn_of_another_monitor(stored, cfg, ckpt_path)
        warn_of_a_dropped_weight_average(checkpoint, cfg, ckpt_path)
        resumed, task_state = checkpoint["state_dict"], checkpoint[CHECKPOINT_KEY]["task_state"]
        resumed_step = checkpoint.get("global_step")
        del checkpoint
    out_dir = Path(cfg.paths.output_dir)
    earlier_metrics = resumed_run_metrics(out_dir) if resumes_in_own_folder(cfg) else {}  # before it is set aside
    keep_earlier_checkpoints(cfg)  # first: a stop during the work below must not name an earlier run's checkpoint
    remove_unfinished_checkpoints(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    task = build_task(cfg.task, task_state)  # resuming: the checkpoint's vocabulary and scalers, not refitted
    datamodule = task_datamodule(task)
    datamodule.setup("fit")  # the input's own errors before the model's and the trainer's work
    checkpointable_state(task)  # a state training cannot save, named before any work
    module = build_module(cfg, task)
    for message in unused_backbone_settings(cfg, module.model, command_line_keys("backbone")):
        warn_on_rank_zero(message)
    if resumed is not None:
        def changed() -> list[str]:  # the model-shaping settings given otherwise than in the checkpoint
            return [*settings_apart(stored, cfg.task, "task"),
                    *settings_apart(stored_cfg.get("backbone"), cfg.backbone, "backbone")]

        check_same_model(resumed, module, f"ckpt_path {ckpt_path}", changed)
        del resumed
    if ckpt_path is None and (phase := task.pretraining()) is not None:
        pretrain(cfg, module, phase)
    trainer = build_trainer(cfg)
    fit(cfg, trainer, module, datamodule, ckpt_path, monitor_changed)
    trained_none = resumed_step is not None and trainer.global_step == resumed_step
    if trained_none and trainer.is_global_zero:
        keep_resumed_as_last(trainer, ckpt_path)
    metrics = {**(earlier_metrics if trained_none else {}),
               **{k: float(v) for k, v in trainer.callback_metrics.items()}}
    metrics.pop(STEP_LOSS, None)  # one step's loss (also in an earlier metrics.json read back), not a result
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # a damaged one is one line here, not Lightning's traceback when testing
    best_checkpoint = read_checkpoint(best) if best and "://" not in best else None
    if best and (score := trainer.checkpoint_callback.best_model_score) is not None:
        metrics[f"{trainer.checkpoint_callback.monitor}_best"] = float(score)  # the tested checkpoint's
    diverged = diverged_model(trainer, module, best, best_checkpoint)
    del best_checkpoint  # mapped: its weights are read again where testing loads them
    if trainer.is_global_zero and (cfg.get("test_after_training") or diverged):  # a kill while testing keeps
        write_metrics(metrics, out_dir / "metrics.json")  # training's figures, which a resumed run reads back
    if diverged:
        raise diverged
    evaluate_and_write(cfg, trainer, module, datamodule, best, metrics)
    return metrics


def fit(
    cfg: DictConfig, trainer: pl.Trainer, module: TaskModule, datamodule: pl.LightningDataModule,
    ckpt_path: str | None, monitor_changed: bool,
) -> None:
    """`trainer.fit`, from `ckpt_path` (a resumed run's) or the config's `ckpt_path`, without Lightning's warnings
    that this run has already put in its own words or that do not apply to it."""
    with monitored_metric_named(trainer, cfg.task.monitor), val_check_interval_named(), warnings.catch_warnings():
        if resumes_in_own_folder(cfg):  # it finds its checkpoints there, as it should
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if monitor_changed:  # said when the checkpoint was read, in this run's words
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
        if cfg.get("ckpt_path") == "last" and (folder := last_checkpoint_to_come(trainer)) is not None:
            warn_on_rank_zero(f"ckpt_path=last: no last.ckpt in {folder} yet, so training starts afresh")
            warnings.filterwarnings("ignore", message=r".*there is no last checkpoint available")  # its hint misleads
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path or cfg.get("ckpt_path"))


def evaluate_and_write(
    cfg: DictConfig, trainer: pl.Trainer, module: TaskModule, datamodule: pl.LightningDataModule, best: str,
    metrics: dict[str, float],
) -> None:
    """After fitting: test the `best` checkpoint (else the last weights) into `metrics`, write them to the run's
    `metrics.json`, and the artifacts into its `predictions/`, as the config asks."""
    out_dir = Path(cfg.paths.output_dir)
    with weight_averaging_ended(trainer):  # testing and prediction read the best checkpoint's (averaged) weights
        if cfg.get("test_after_training"):
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            metrics.update(results[0] if results else {})
        if trainer.is_global_zero:
            write_metrics(metrics, out_dir / "metrics.json")
            if best:
                chosen = "best" if trainer.checkpoint_callback.monitor else "last epoch's"
                log.info("%s checkpoint: %s", chosen, best)
        if cfg.get("predict_after_training") and trainer.world_size == 1 and not trainer.fast_dev_run:
            keep_earlier_artifacts(out_dir / "predictions")
            if not write_artifacts(trainer, module, datamodule, out_dir / "predictions", ckpt_path=best or None):
                log.warning("task %r wrote no artifacts: write_predictions returned no paths", cfg.task.name)
        elif cfg.get("predict_after_training") and trainer.world_size > 1 and trainer.is_global_zero:
            log.info("multi-process run: write artifacts with gru-suite-predict ckpt_path=%s", best or "<ckpt>")


@rank_zero_only
def keep_earlier_checkpoints(cfg: DictConfig) -> None:
    """A run that does not resume from its own folder's checkpoints (`checkpoint_folder`), into one that holds an
    earlier run's (an interrupted run started afresh, a sweep rerun), moves them to `checkpoints.N/` (and its run
    folder's `metrics.json` to `metrics.N.json`, its `predictions/` to `predictions.N/`, its `tensorboard/` to
    `tensorboard.N/`): Lightning would write
    `last-v1.ckpt` beside the earlier `last.ckpt`, which later commands would then read, and keep the earlier best.
    A run that resumes there moves only `metrics.json` and `predictions/` aside (to the next free N): they describe
    checkpoints it goes on to replace, and a resume killed before it writes its own would leave them as its results."""
    folder, out_dir = checkpoint_folder(cfg), Path(cfg.paths.output_dir)
    if resumes_in_own_folder(cfg):
        for earlier in (out_dir / "metrics.json", out_dir / "predictions"):
            if earlier.exists():
                log.info("kept the earlier run's %s as %s", earlier, set_aside(earlier).name)
        return
    if not any(not path.name.startswith(".") for path in folder.glob("*.ckpt")):
        return
    kept = set_aside(folder)
    log.warning("%s held an earlier run's checkpoints: moved to %s", folder, kept)
    # its figures, artifacts and curves (`logger=tensorboard`'s folder: TensorBoard would draw both runs as one)
    for earlier in (out_dir / "metrics.json", out_dir / "predictions", out_dir / "tensorboard"):
        beside = earlier.with_name(f"{earlier.stem}{kept.suffix}{earlier.suffix}")  # checkpoints.N/: metrics.N.json
        if earlier.exists():  # as checkpoints.N/, unless that name is taken (predictions.N/ of a resumed run)
            kept_as = set_aside(earlier) if beside.exists() else move_aside(earlier, beside)
            log.info("kept the earlier run's %s as %s", earlier, kept_as.name)


def remove_unfinished_checkpoints(cfg: DictConfig) -> None:
    """Remove the partial checkpoints a killed run left in the checkpoint folder (`unfinished_writes`, as large as a
    whole checkpoint), where that folder is in the run folder, which no other live run writes in (`hold_run_folder`);
    by the launching process only."""
    folder, out_dir = checkpoint_folder(cfg), Path(cfg.paths.output_dir)
    if not first_process() or not folder.resolve().is_relative_to(out_dir.resolve()):
        return
    for path in unfinished_writes(folder):
        path.unlink(missing_ok=True)
        log.info("removed %s: a checkpoint a killed run did not finish writing", path)


@contextmanager
def monitored_metric_named(trainer: pl.Trainer, monitor: str) -> Iterator[None]:
    """Lightning's error when a checkpoint, early-stopping or scheduler monitor was never logged becomes one line
    naming the metric, where it is set, and the metrics that were logged; one Lightning would stop at is named
    right after the validation it runs before training (its sanity check) where that can tell (`MonitorsLogged`),
    not after the first epoch."""
    trainer.callbacks.append(MonitorsLogged(monitor))
    try:
        yield
    except (MisconfigurationException, RuntimeError) as err:
        missing = re.search(r"monitor='([^']*)'\)`? could not find|conditioned on metric `?([^`\s]*)`? which", str(err))
        if missing is None:
            raise
        raise never_logged(trainer, missing.group(1) or missing.group(2), monitor) from err


class MonitorsLogged(pl.Callback):
    """After Lightning's sanity check, a monitor that Lightning requires (a checkpoint's that keeps its best, a strict
    early stopping's or plateau schedule's; not `epoch` or `step`, which Lightning adds itself, nor a training metric)
    and that validation did not log is named (`never_logged`), if the check validated every batch or the name looks
    like a slip for one that was logged: a metric logged by some batches only may yet come in the first epoch."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor  # task.monitor

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        whole = trainer.num_sanity_val_batches == trainer.num_val_batches
        logged = sorted(trainer.callback_metrics)
        for name in required_monitors(trainer):
            if name not in logged and not name.startswith("train/") and (whole or _metric_meant(name, logged)):
                raise never_logged(trainer, name, self.monitor)


def diverged_model(trainer: pl.Trainer, module: TaskModule, best: str,
                   best_checkpoint: dict[str, Any] | None) -> DivergedRun | None:
    """The DivergedRun to end the run with (after writing training's metrics) where an epoch's mean training loss was
    NaN and the model to test diverged too: the weights of the best checkpoint (`best`, read as `best_checkpoint`),
    or the module's where there is none, are not all finite; a remote `best`, not read here, counts as diverged where
    its monitored score is not finite. Testing and prediction would report NaN metrics and write empty artifacts with
    exit code 0; a NaN mean over weights that stayed finite (a mixed-precision step the gradient scaler skipped) is
    tested as before."""
    last_loss = trainer.callback_metrics.get("train/loss")  # the last epoch's, which no next epoch checked
    diverged_in = trainer.current_epoch - 1 if last_loss is not None and bool(torch.isnan(last_loss)) else None
    diverged_in = module.diverged_in if module.diverged_in is not None else diverged_in
    if diverged_in is None:
        return None
    callback = trainer.checkpoint_callback
    if best and best_checkpoint is None:
        score = callback.best_model_score  # Lightning keeps a NaN as inf
        finite = score is not None and bool(torch.isfinite(score))
    else:
        weights = best_checkpoint["state_dict"] if best_checkpoint is not None else module.state_dict()
        finite = all(bool(torch.isfinite(w).all()) for w in weights.values()
                     if isinstance(w, torch.Tensor) and w.is_floating_point())
    if finite:
        return None
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    kept = f"; its checkpoints stay in {folder}" if folder is not None and any(folder.glob("*.ckpt")) else ""
    tested = f"{Path(best).name}'s" if best else "the last epoch's"
    return DivergedRun(f"train/loss is nan in epoch {diverged_in}: training diverged, and the weights to test "
                       f"({tested}) are not finite, so nothing is tested or predicted{kept}; "
                       f"{divergence_advice(trainer)}")


def required_monitors(trainer: pl.Trainer) -> set[str]:
    """The metrics that Lightning stops a run for at a validation's end if they were not logged."""
    checkpoints = [c.monitor for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_top_k]
    stoppers = [c.monitor for c in trainer.early_stopping_callbacks if c.strict]
    plateaus = [s.monitor for s in trainer.lr_scheduler_configs if s.reduce_on_plateau and s.strict]
    return {name for name in (*checkpoints, *stoppers, *plateaus) if name and name not in ("epoch", "step")}


def never_logged(trainer: pl.Trainer, name: str, monitor: str) -> UserError:
    """The error for a monitor `name` that `trainer` never logged, saying where it is set (`monitor`: task.monitor's)
    and what was logged."""
    where = "task.monitor" if name == monitor else "a callback's monitor"
    logged = sorted(k for k in trainer.callback_metrics if k.startswith(("val/", "train/")))
    hint = f"did you mean {meant!r}? " if (meant := _metric_meant(name, logged)) else ""
    return UserError(f"{where} names {name!r}, a metric that was never logged; {hint}logged: {logged}")


def _metric_meant(name: str, logged: list[str]) -> str | None:
    """The logged metric a monitor's `name` most likely meant: a close spelling of one, else the same metric (a close
    spelling, or one it begins: `acc` for `accuracy`) under `name`'s own stage prefix, then validation's, then
    training's (`loss` or `test/loss` for `val/loss`, `val/acc` for `val/accuracy`, not `train/accuracy`)."""
    if close := difflib.get_close_matches(name, logged, n=1, cutoff=0.75):
        return close[0]
    stage, _, metric = name.rpartition("/")
    for prefix in dict.fromkeys([f"{stage}/"] * bool(stage) + ["val/", "train/"]):
        metrics = [key.removeprefix(prefix) for key in logged if key.startswith(prefix)]
        if close := difflib.get_close_matches(metric, metrics, n=1, cutoff=0.75) or \
                [known for known in metrics if known.startswith(metric)][:1]:
            return prefix + close[0]
    return None


@contextmanager
def val_check_interval_named() -> Iterator[None]:
    """Lightning's error for a `val_check_interval` of more batches than a training epoch has, as one line."""
    try:
        yield
    except ValueError as err:
        if "`val_check_interval` (" not in str(err):
            raise
        raise UserError(f"trainer.val_check_interval: {' '.join(str(err).split())}") from err


@contextmanager
def weight_averaging_ended(trainer: pl.Trainer) -> Iterator[None]:
    """Drop `trainer`'s weight-averaging callbacks (`callbacks.ema`) for good once fitting is over. Their
    checkpoints hold the averaged weights, which testing and prediction must read, but while fitting's callback
    is attached, loading a checkpoint puts the raw weights back (`WeightAveraging.on_load_checkpoint`). Inside
    the block Lightning's warning that callbacks of the checkpoint are missing is silenced (the dropped ones are
    the only ones; a `ddp_spawn` strategy's test processes would not inherit the filter)."""
    dropped = [callback for callback in trainer.callbacks if isinstance(callback, WeightAveraging)]
    trainer.callbacks = [callback for callback in trainer.callbacks if callback not in dropped]
    with warnings.catch_warnings():
        if dropped:
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
        yield


def pretrain(cfg: DictConfig, module: TaskModule, phase: Pretraining, **overrides: Any) -> float:
    """Run the task's pre-training phase with the run's trainer settings (plus Trainer `overrides`);
    return its last epoch's mean loss.

    No loggers, checkpoints or validation; training then starts with a fresh optimizer (and
    scheduler). A resumed run (`ckpt_path`) skips this: its weights come from the checkpoint.
    """
    log.info("pre-training: %d epoch(s) over %d batches", phase.epochs, len(phase.loader))
    module.pretraining = phase
    try:
        settings: dict[str, Any] = {
            "logger": False, "enable_checkpointing": False, "enable_model_summary": False, "max_epochs": phase.epochs,
            "min_epochs": phase.epochs, "max_steps": -1, "limit_val_batches": 0, "num_sanity_val_steps": 0,
            **overrides,
        }
        if "callbacks" not in settings:  # the configured progress bar, as training shows it, where one is shown
            shown = settings.get("enable_progress_bar", True)
            settings["callbacks"] = [c for c in configured_callbacks(cfg) if shown and isinstance(c, ProgressBar)]
        trainer = build_trainer(cfg, **settings)
        if isinstance(trainer.strategy, ParallelStrategy):  # its loader is not sharded; unused heads break DDP
            raise UserError("pre-training runs in a single process: use trainer=cpu or trainer=gpu with it")
        with warnings.catch_warnings():  # the phase has no validation, by design
            warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
            trainer.fit(module, train_dataloaders=phase.loader)
    finally:
        module.pretraining = None
    loss = float(trainer.callback_metrics.get("pretrain/loss", float("nan")))
    log.info("pre-training done: loss %.4f", loss)
    return loss


def evaluate(cfg: DictConfig, task: TaskPlugin, module: TaskModule) -> dict[str, float]:
    """Test a restored model on its task's test split."""
    check_run_settings(cfg)
    datamodule = task_datamodule(task)
    datamodule.setup("test")  # the input's own errors before the trainer's lines
    trainer = build_trainer(cfg)
    results = trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:  # the metrics every process holds, written once, beside an earlier eval's
        keep_earlier_file(path := Path(cfg.paths.output_dir) / "test_metrics.json")
        write_metrics(metrics, path)
    return metrics


def predict(
    cfg: DictConfig, task: TaskPlugin, module: TaskModule, ensemble: Sequence[tuple[str, TaskModule]] = ()
) -> list[Path]:
    """Write a restored model's artifacts into the run folder; with `ensemble`, (checkpoint path, module)
    pairs of the same task, those of all the models together (`TaskPlugin.ensemble`)."""
    check_run_settings(cfg)
    datamodule = task_datamodule(task)
    datamodule.setup("predict")  # the input's own errors before the trainer's lines and any model's work
    trainer = build_trainer(cfg)
    if trainer.world_size > 1:  # each process would predict its share of the input and write it over the others'
        raise UserError(f"prediction runs in one process, not {trainer.world_size}: trainer=cpu, or trainer=gpu "
                        "with trainer.devices=1")
    predictions = ensemble_predictions(trainer, module, datamodule, str(cfg.ckpt_path), ensemble) if ensemble else None
    paths = write_artifacts(trainer, module, datamodule, Path(cfg.paths.output_dir), predictions)
    if not paths:
        raise UserError(f"prediction wrote no artifacts: task {task.cfg.get('name')!r} returned no paths from "
                        "write_predictions (an empty prediction input, or a writer that wrote nothing or did not "
                        "return the paths it wrote)")
    return paths
