"""The task-plugin contract: what a task provides to the shared core."""

from __future__ import annotations

import io
import logging
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gru_suite.backbone import GRUBackbone
from gru_suite.config import (
    ChoiceField,
    NumberField,
    RangeField,
    lacks,
    literal,
    raise_all,
    wrong_choices,
    wrong_numbers,
    wrong_paths,
    wrong_ranges,
    wrong_switches,
    wrong_unset,
)
from gru_suite.errors import UserError
from gru_suite.files import launch_path
from gru_suite.registry import task_switches

Stage = Literal["train", "val", "test"]
BackboneFactory = Callable[..., GRUBackbone]
"""Builds the configured backbone; the task passes `input_size=`."""

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """What a task returns for one batch: the loss and metrics to log (epoch means, each batch weighed by its
    `batch_size` samples, the loss by `loss_weight` where it is a mean over something else: the target tokens of
    a per-token loss, the time steps of a per-step one, the sum of class weights of a class-weighted one; 0 for a
    batch with nothing to count, whose loss must then be finite)."""

    loss: Tensor
    batch_size: int
    metrics: Mapping[str, Tensor | float] = field(default_factory=dict)
    loss_weight: float | Tensor | None = None


@dataclass
class Pretraining:
    """A self-supervised phase the core runs before training: `epochs` passes over `loader`,
    minimising `loss(model, batch)` (logged as `pretrain/loss`); no validation, no checkpoints."""

    epochs: int
    loader: DataLoader
    loss: Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class SequenceView:
    """How the gate plots show one input sequence: a `title` naming it (a text, a file) and, where its time steps
    are readable, one label per step (`steps`, e.g. its tokens) for the time axis."""

    title: str
    steps: Sequence[str] | None = None


@dataclass
class EnsembleMember:
    """One model of an ensemble: where it came from (a checkpoint path), its task, and its `predict_step`
    outputs over the shared input (the first member's data, or its own `ensemble_input`), in loader order."""

    source: str
    task: TaskPlugin
    predictions: list[Any]


class TaskPlugin(ABC):
    """A task: its data, the model's input adapter and output head, loss, metrics and artifacts.

    A plain object, not a LightningModule: the core's `TaskModule` drives it. The
    lifecycle is `datamodule()` first (which fits data-dependent state such as
    scalers or vocabularies, unless `state` was restored from a checkpoint), then
    `build_model()`, then `step()` per batch. `state_dict()` must hold everything
    that `build_model()` and the writers need, as plain picklable data, so that a
    checkpoint alone rebuilds the task.
    """

    numbers: tuple[NumberField, ...] = (("data.batch_size", int, 1), ("data.num_workers", int, 0))
    """Numeric fields of the task's config (relative to `task.`) checked when the task is built; a
    plugin adds its own as `(*TaskPlugin.numbers, ("data.lookback", int, 1), ...)`."""

    choices: tuple[ChoiceField, ...] = ()
    """Fields of the task's config (relative to `task.`) that take one of a few values, checked when the task is
    built, e.g. `(("model.pooling", ("max", "mean")),)`."""

    ranges: tuple[RangeField, ...] = ()
    """`[low, high]` fields of the task's config (relative to `task.`) checked when the task is built, e.g.
    `(("data.words", int, 1, False),)`: both bounds whole, 1 <= low <= high, null not allowed."""

    trained_settings: tuple[str, ...] = ()
    """Fields of the task's config (relative to `task.`) that training fixes in the model or its state (a
    tokenizer's vocabulary, audio features): a restored model keeps its checkpoint's, and `gru-suite-eval`,
    `-predict` and `-gates` name an override of one in a warning rather than ignore it silently."""

    path_settings: tuple[str, ...] = ()
    """Fields of the task's config (relative to `task.`) that name files or folders to read (or lists of them): one
    given as a relative path that exists where the command runs is made absolute when the suite builds the task
    (`gru_suite.run.build_task`), so that a checkpoint's config finds it from any folder (`-` for stdin, `auto` and
    '' stay as given)."""

    required: tuple[str, ...] = ()
    """Fields of the task's config (relative to `task.`) that must not be null: `numbers` lets null through, as
    "off", so a number without an off is listed here too (a number the config lacks is let through, as `numbers`
    lets it: an older checkpoint's config). The core's `data.batch_size` and `data.num_workers` are required."""

    def __init__(self, cfg: DictConfig, state: Mapping[str, Any] | None = None) -> None:
        raise_all(wrong_task_settings(type(self), cfg))
        self.cfg = cfg
        self.state: dict[str, Any] = dict(state or {})

    def warn_once(self, message: str) -> None:
        """Log `message` as a warning the first time this task gives it (not at every epoch, batch or file)."""
        warned = self.__dict__.setdefault("_warned_messages", set())
        if message not in warned:
            warned.add(message)
            log.warning(message)

    @classmethod
    def wrong_settings(cls, cfg: DictConfig) -> list[str]:
        """One message per wrong setting of the task's config `cfg` among `required`, `numbers`, `choices`, `ranges`,
        `path_settings` and the switches its shipped config sets true or false (the right ones are stored as numbers
        and booleans). A plugin with settings of other kinds extends it: `super().wrong_settings(cfg) + [its own
        messages]`."""
        switches = task_switches(str(cfg.get("name")))
        mode = cfg.get("monitor_mode")
        monitoring = [] if mode in ("min", "max") else [f"task.monitor_mode must be min or max, got {mode!r}"]
        if "monitor" not in cfg:  # the callbacks' ${task.monitor} would fail to resolve, in a traceback
            monitoring.append("task.monitor is missing: the task's config must name the metric that picks the best "
                         "checkpoint (e.g. val/loss), or null for the last epoch's")
        numbers = (*cls.numbers, *(field for field in TaskPlugin.numbers if field not in cls.numbers))  # the core's too
        number_keys = {field for field, *_ in numbers}
        required = dict.fromkeys((*cls.required, *(field for field, *_ in TaskPlugin.numbers)))
        unset = tuple(field for field in required if field not in number_keys or not lacks(cfg, field))
        return (wrong_unset(cfg, unset, "task.") + wrong_numbers(cfg, numbers, "task.")
                + wrong_choices(cfg, cls.choices, "task.") + wrong_ranges(cfg, cls.ranges, "task.")
                + wrong_switches(cfg, switches, "task.") + wrong_paths(cfg, cls.path_settings, "task.") + monitoring)

    @abstractmethod
    def datamodule(self) -> pl.LightningDataModule:
        """Build the data; fit data-dependent state into `self.state` if not restored."""

    @abstractmethod
    def build_model(self, backbone: BackboneFactory) -> nn.Module:
        """Input adapter + `backbone(input_size=...)` + output head, as one module."""

    @abstractmethod
    def step(self, model: nn.Module, batch: Any, stage: Stage) -> StepOutput:
        """Loss and metrics for one batch."""

    @abstractmethod
    def predict_step(self, model: nn.Module, batch: Any) -> Any:
        """Predictions for one batch, in whatever form `write_predictions` takes."""

    @abstractmethod
    def write_predictions(
        self, predictions: list[Any], datamodule: pl.LightningDataModule, out_dir: Path
    ) -> list[Path]:
        """Write the task's artifacts (atomically) into `out_dir`, a fresh folder whose entries then move into
        place, and return their paths."""

    def ensemble_input(self, first: TaskPlugin, datamodule: pl.LightningDataModule) -> pl.LightningDataModule:
        """For an ensemble (`gru-suite-predict ensemble=[...]`): this model's data over the prediction input that
        `datamodule`, the `first` model's, has read, so that every model sees the same items; an error if this
        model cannot join `first`'s. A task that combines models overrides this and `ensemble`; the default
        refuses. Called for every other model before any of them predicts."""
        raise UserError(f"task {self.cfg.get('name')!r} does not combine the predictions of several models: "
                        "give one ckpt_path and no ensemble")

    def ensemble(self, members: Sequence[EnsembleMember]) -> list[Any]:
        """Combine the members' predictions (this task's first) into one list for `write_predictions`."""
        raise NotImplementedError("a task that overrides ensemble_input combines its members in ensemble()")

    def describe_sequence(self, datamodule: pl.LightningDataModule, batch: Any, sample: int) -> SequenceView | None:
        """What sequence `sample` of the prediction `batch` is, for `gru-suite-gates` (its plots' title and time
        axis, its log); None: it is shown as "sample N" over numbered time steps."""
        return None

    def pretraining(self) -> Pretraining | None:
        """The task's pre-training phase, if its config asks for one (called after `build_model`)."""
        return None

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        """Metrics that need a whole pass (e.g. over complete series), logged once per epoch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Data-dependent state saved in checkpoints (scalers, vocabularies)."""
        return dict(self.state)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (no dropout) inside the block, back in the mode it was in after it (a task decoding or
    scoring during training, say)."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def task_datamodule(task: TaskPlugin) -> pl.LightningDataModule:
    """The task's `datamodule()`, which must be a LightningDataModule (a UserError naming the task otherwise)."""
    datamodule = task.datamodule()
    if not isinstance(datamodule, pl.LightningDataModule):
        raise UserError(f"task {task.cfg.get('name')!r}: datamodule() returned a {type(datamodule).__name__}, not a "
                        "LightningDataModule (gru_suite.data.SplitDataModule is one)")
    return datamodule


def checkpointable_state(task: TaskPlugin) -> dict[str, Any]:
    """The task's `state_dict()`, checked to go into a checkpoint and come back as Lightning reads one to test or
    resume (`torch.load(weights_only=True)`): else a UserError naming the entry, before training and at every save
    (a state that a pass's `epoch_end` fills), not a traceback when the checkpoint is read."""
    state = task.state_dict()
    name = task.cfg.get("name")
    if not isinstance(state, dict):  # a restored task would be built with no state and fit its own again
        raise UserError(f"task {name!r}: state_dict() returned a {type(state).__name__}, not a dict of the task's "
                        "data-dependent state (return {} for none)")
    if (why := _not_checkpointable(state)) is None:
        return state
    key = next((f"[{key!r}]" for key, value in state.items() if _not_checkpointable({key: value}) is not None), "")
    raise UserError(f"task {name!r}: state_dict(){key} cannot go into a checkpoint ({why}); store "
                    "plain data: numbers, strings, lists, dicts, tensors (a numpy array's .tolist(), float() of a "
                    "numpy number, OmegaConf.to_container() of a config node)")


def _not_checkpointable(value: Any) -> str | None:
    """Why `value` does not survive `torch.save` and a weights-only `torch.load`, or None."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        return f"a weights-only load refuses its {refused.group(1)}" if refused else "a weights-only load refuses it"
    except (pickle.PicklingError, TypeError, AttributeError) as err:  # what pickling raises for what it cannot
        return f"{type(err).__name__}: {err}"
    return None


def wrong_task_settings(task_cls: type[TaskPlugin], cfg: DictConfig) -> list[str]:
    """`task_cls.wrong_settings(cfg)`, checked to be a list of messages (a UserError naming the task otherwise).
    Where the plugin's own checks raise on a value the core's checks find wrong (a string where a number belongs),
    the core's messages; where the core's find nothing, the exception goes on (the plugin's bug)."""
    try:
        wrong = task_cls.wrong_settings(cfg)
    except Exception:
        if core := TaskPlugin.wrong_settings.__func__(task_cls, cfg):
            return core
        raise
    if not isinstance(wrong, list | tuple) or not all(isinstance(message, str) for message in wrong):
        kind = type(wrong).__name__ if not isinstance(wrong, list | tuple) else \
            f"a {type(wrong).__name__} holding a {next(type(m).__name__ for m in wrong if not isinstance(m, str))}"
        raise UserError(f"task {cfg.get('name')!r}: wrong_settings() returned {kind}, not a list of messages (str)")
    return list(wrong)


def absolute_paths(cfg: DictConfig, fields: Sequence[str]) -> None:
    """Each of `fields` of `cfg` (a path, or a list of them) that names an existing file or folder by a relative
    path, made absolute in place; other values (`NOT_PATHS`, a missing file, named later) stay."""
    for key in fields:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if isinstance(value, str):
            absolute: Any = _absolute(value)
        elif isinstance(value, ListConfig):  # its paths; a null or a nested list among them stays
            absolute = [_absolute(item) if isinstance(item, str) else item for item in value]
        else:
            continue
        if absolute != value:  # a `${` in a folder's name is not an interpolation
            OmegaConf.update(cfg, key, literal(absolute), merge=False)


NOT_PATHS = ("", "-", "auto")
"""Values of a path setting that name no file: unset, stdin, found by the task itself."""


def _absolute(path: str) -> str:
    """`path` made absolute if it is relative and exists where the command started (`launch_path`; `NOT_PATHS`,
    and a name the system refuses, stay)."""
    given = launch_path(path)
    try:
        found = path not in NOT_PATHS and not Path(path).is_absolute() and given.exists()
    except OSError:  # a name too long, say: the task names it when it reads it
        found = False
    return str(given.absolute()) if found else path
