"""Contract checks for task plugins, in the spirit of scikit-learn's `check_estimator`.

`check_task_plugin("my_task")` walks an installed task through everything the
core asks of it and raises an `AssertionError` at the first broken point:

1. installation: the entry point loads a `TaskPlugin` subclass, and its
   `conf/task/<name>.yaml` declares `name`, `description`, `monitor` and
   `monitor_mode`;
2. composition: the `train` config composes with the task selected and every
   part instantiates (task, data, model with the shared backbone, optimiser,
   callbacks, loggers, trainer);
3. a `fast_dev_run` trains, validates and tests, and logs the task's monitor;
4. the training loss falls well below its start when overfitting one batch;
5. a short real run writes `last.ckpt`, and `load_checkpoint` rebuilds a model
   whose predictions equal the trained one's;
6. predicting from the restored model writes non-empty, parseable artifacts;
7. with a GRU backbone, the gate plots of its first prediction sequence draw (`predict_step` runs the
   backbone, and `describe_sequence` fits the sequence).

Everything runs on the CPU, in one intra-op thread (fastest for the tiny models
a check trains, and immune to oversubscription when test processes run in
parallel), in a temporary folder; `overrides` (Hydra syntax) shrink the model
and data so that a small task is checked in seconds.
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import json
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from gru_suite import registry, run
from gru_suite.backbone import GRUBackbone
from gru_suite.checkpoint import load_checkpoint
from gru_suite.config import CONF_DIR, lacks, register_resolvers
from gru_suite.errors import UserError
from gru_suite.gates import plot_model_gates
from gru_suite.module import TaskModule
from gru_suite.overrides import unknown_group_option
from gru_suite.task import StepOutput, TaskPlugin, checkpointable_state

OVERFIT_STEPS = 200
"""Most optimiser steps spent on the one batch."""
OVERFIT_LR = 1e-2
OVERFIT_RATIO = 0.5
"""The one-batch loss must fall below this fraction of its starting value."""

TASK_CONFIG_KEYS = ("name", "description", "monitor", "monitor_mode")
MAGIC_BYTES = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff",
    ".jpeg": b"\xff\xd8\xff",
    ".pdf": b"%PDF",
    ".mid": b"MThd",
    ".midi": b"MThd",
    ".npy": b"\x93NUMPY",
}

BASE_OVERRIDES = ("trainer.accelerator=cpu", "trainer.devices=1")
FAST_DEV_RUN_OVERRIDES = ("++trainer.fast_dev_run=true",)
SHORT_RUN_OVERRIDES = ("trainer.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2")


def check_task_plugin(task: str, overrides: Sequence[str] = (), tmp_path: Path | None = None) -> None:
    """Check that the installed task `task` honours the task-plugin contract.

    `overrides` are Hydra overrides applied to every run (e.g.
    `backbone.hidden_size=16`); they follow the check's own CPU settings, so
    they may change those too. Runs write into `tmp_path` (kept) or into a
    temporary folder (removed). Raises `AssertionError` naming the task, the
    contract point and what went wrong.
    """
    with _single_thread():
        if tmp_path is not None:
            _check(task, list(overrides), Path(tmp_path))
            return
        with tempfile.TemporaryDirectory(prefix=f"check_{task}_") as tmp:
            _check(task, list(overrides), Path(tmp))


@contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(task: str, overrides: list[str], root: Path) -> None:
    with warnings.catch_warnings():  # a test runner resets warning filters; keep Lightning's noise out of its report
        run.ignore_lightning_noise()
        _check_contract(task, overrides, root)


def _check_contract(task: str, overrides: list[str], root: Path) -> None:
    with _contract(task, "installation"):
        entry = registry.get_task(task)
        task_cls = entry.load()  # a TaskPlugin subclass, or a UserError saying what it is
        if (elsewhere := imported_copy_elsewhere(entry)) is not None:
            warnings.warn(elsewhere, stacklevel=2)
        _check_installed_config(entry)
        _check_task_config_file(task)
    with _contract(task, "config composition"):
        cfg = compose_train_config(task, overrides, root / "instantiate")
        _check_declared_settings(task_cls, cfg.task)
    with _contract(task, "instantiation"):
        module, datamodule = _instantiate(cfg)
    with _contract(task, "fast_dev_run training"):
        _check_fast_dev_run(compose_train_config(task, [*overrides, *FAST_DEV_RUN_OVERRIDES], root / "fast_dev_run"))
    with _contract(task, "overfitting one batch"):
        _check_overfit(module, datamodule, cfg.seed)
    with _contract(task, "checkpoint round trip"):
        short_run = compose_train_config(task, [*overrides, *SHORT_RUN_OVERRIDES], root / "short_run")
        restored = _check_checkpoint_round_trip(short_run)
    with _contract(task, "prediction artifacts"):
        predict_cfg = short_run.copy()
        predict_cfg.paths.output_dir = str(root / "predict")
        _check_artifacts(run.predict(predict_cfg, restored.task, restored), root / "predict")
    if restored.model.backbone.cell == "gru":  # gate traces read a GRU's gates
        with _contract(task, "gate plots"):
            plot_model_gates(restored, root / "gates")


@contextmanager
def _contract(task: str, point: str) -> Iterator[None]:
    """Turn any failure inside into one AssertionError naming the task and contract point."""
    try:
        yield
    except AssertionError as err:
        raise AssertionError(f"task {task!r}, {point}: {err}") from err
    except Exception as err:
        raise AssertionError(f"task {task!r}, {point}: {type(err).__name__}: {err}") from err


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def imported_copy_elsewhere(entry: registry.TaskEntry) -> str | None:
    """A warning when the task's module is imported from another place than its installed distribution (a test
    run beside a plugin's source folder imports the source, so a file left out of the package goes unseen);
    None when it is the installed copy, or the install is editable (it is the source, by design)."""
    installs = _pip_installs(entry)
    module = importlib.import_module(entry.module)
    origin = Path(getattr(module, "__file__", None) or ".").resolve()
    for dist in installs:
        if _editable(dist):
            return None
        if origin.is_relative_to(Path(str(dist.locate_file(""))).resolve()):
            return None
    if not installs:
        return None
    where = Path(str(installs[0].locate_file(""))).resolve()
    return (f"task {entry.name!r}: {entry.module} is imported from {origin}, not from the installed "
            f"{entry.distribution} in {where}: the check sees the source folder, not what users install (run it "
            "from another folder, or use a src/ layout)")


def _pip_installs(entry: registry.TaskEntry) -> list[importlib.metadata.Distribution]:
    """The task's distribution as pip installed it (a source folder's egg-info has no RECORD)."""
    return [dist for dist in importlib.metadata.distributions(name=entry.distribution) if dist.read_text("RECORD")]


def _editable(dist: importlib.metadata.Distribution) -> bool:
    """Whether `dist` is an editable install (`pip install -e`): the source folder itself."""
    return bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))


def _check_installed_config(entry: registry.TaskEntry) -> None:
    """Each installed (not editable) copy of the task's distribution holds its `conf/task/<name>.yaml`: a wheel
    built without its package data passes a check that imports the source folder, and then fails for its users."""
    wanted = f"conf/task/{entry.name}.yaml"
    for dist in (dist for dist in _pip_installs(entry) if not _editable(dist)):
        _require(any(file.as_posix().endswith(wanted) for file in dist.files or ()),
                 f"the installed {entry.distribution} {dist.version} lacks {wanted}: the wheel was built without "
                 "its package data (declare the conf/ files as package data, e.g. [tool.setuptools.package-data])")


def _check_declared_settings(task_cls: type[TaskPlugin], task_cfg: DictConfig) -> None:
    """Every setting the class declares beyond TaskPlugin's own is in its config: the check skips a setting the
    config lacks, so a misspelt key would never be checked."""
    declared = [entry[0] for entry in (*task_cls.numbers, *task_cls.choices, *task_cls.ranges)
                if entry not in TaskPlugin.numbers] + [*task_cls.required, *task_cls.trained_settings,
                                                        *task_cls.path_settings]
    missing = [key for key in declared if lacks(task_cfg, key)]
    _require(not missing, f"{task_cls.__name__} declares settings its config lacks (so they are never checked; "
                          f"misspelt?): {', '.join(f'task.{key}' for key in missing)}")
    blocks = [key for key in task_cls.path_settings
              if isinstance(OmegaConf.select(task_cfg, key, throw_on_resolution_failure=False), DictConfig)]
    _require(not blocks, f"{task_cls.__name__}.path_settings names block(s), not paths, so nothing in them is made "
                         f"absolute: {', '.join(f'task.{key}' for key in blocks)} (name each path key in them)")


def _check_task_config_file(task: str) -> None:
    """`conf/task/<name>.yaml` beside the task's module declares the keys the core reads."""
    conf = registry.get_task(task).config_dir()
    _require(conf is not None, f"no conf/ folder beside the package of {registry.get_task(task).target}")
    path = conf / "task" / f"{task}.yaml"
    _require(path.is_file(), f"no task config {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [key for key in TASK_CONFIG_KEYS if key not in data]
    _require(not missing, f"{path} lacks {missing}")
    _require(data["name"] == task, f"{path}: name is {data['name']!r}, but the entry point is {task!r}")
    _require(bool(str(data["description"]).strip()), f"{path}: description is empty")
    _require(data["monitor_mode"] in ("min", "max"), f"{path}: monitor_mode must be min or max")
    if shadowed := keys_named_like_methods(data):
        warnings.warn(f"{path}: {', '.join(shadowed)} named like DictConfig methods: `cfg.{shadowed[0]}` reads the "
                      f"method, not the setting (rename, or read it as cfg[...])", stacklevel=2)


def keys_named_like_methods(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a config's `data` that DictConfig attributes shadow (`items`, `keys`, `values`, `get`,
    `pop`, ...), in blocks within lists too (`list.0.items`)."""
    if isinstance(data, list):
        return [key for i, item in enumerate(data) for key in keys_named_like_methods(item, f"{prefix}{i}.")]
    if not isinstance(data, dict):
        return []
    methods = {name for name in dir(DictConfig) if not name.startswith("_")}
    found = []
    for name, value in data.items():
        if name in methods:
            found.append(f"{prefix}{name}")
        found += keys_named_like_methods(value, f"{prefix}{name}.")
    return found


def compose_train_config(task: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The `train` config as the CLI composes it, writing into `output_dir`.

    `${hydra:runtime.output_dir}` exists only inside a Hydra run, so
    `paths.output_dir` is set directly; everything else must resolve. An override Hydra cannot apply (an unknown
    key, a bad group option, bad syntax) is a `UserError` of one line, as on the command line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    register_resolvers()
    if message := unknown_group_option(overrides):
        raise UserError(message)
    searchpath = registry.searchpath_override(registry.config_search_path())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose("train", overrides=[f"task={task}", searchpath, *BASE_OVERRIDES, *overrides])
        except HydraException as err:
            raise UserError(" ".join(str(err).split())) from err
    cfg.paths.output_dir = str(output_dir)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # every value must resolve
    return cfg


def _instantiate(cfg: DictConfig) -> tuple[TaskModule, pl.LightningDataModule]:
    """Build every configured part once; return the module and data for the overfitting check."""
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    _require(
        isinstance(datamodule, pl.LightningDataModule),
        f"datamodule() returned {type(datamodule).__name__}, not a LightningDataModule",
    )
    checkpointable_state(task)
    module = run.build_module(cfg, task)
    _require(isinstance(module.model, nn.Module), f"build_model() returned {type(module.model).__name__}")
    module.configure_optimizers()
    run.build_trainer(cfg)
    return module, datamodule


def _check_fast_dev_run(cfg: DictConfig) -> None:
    metrics = run.train(cfg)
    monitor = cfg.task.monitor
    _require(monitor in metrics, f"the monitor {monitor!r} was never logged; logged: {sorted(metrics)}")
    _require(math.isfinite(metrics[monitor]), f"the monitor {monitor!r} is {metrics[monitor]}")


def _step_loss(task: TaskPlugin, model: nn.Module, batch: Any) -> Tensor:
    out = task.step(model, batch, "train")
    _require(isinstance(out, StepOutput), f"step() returned {type(out).__name__}, not a StepOutput")
    _require(
        isinstance(out.loss, Tensor) and out.loss.numel() == 1,
        f"step() loss must be a one-element tensor, got {out.loss!r}",
    )
    _require(bool(torch.isfinite(out.loss)), f"step() loss is {out.loss.item()}")
    return out.loss


def _eval_loss(task: TaskPlugin, model: nn.Module, batch: Any) -> float:
    model.eval()
    with torch.no_grad():
        return _step_loss(task, model, batch).item()


def _check_overfit(module: TaskModule, datamodule: pl.LightningDataModule, seed: int) -> None:
    """Adam on one training batch must cut its loss by (1 - OVERFIT_RATIO) of its size at the start."""
    pl.seed_everything(seed, verbose=False)
    task, model = module.task, module.model
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR)
    first = last = _eval_loss(task, model, batch)
    target = first - (1 - OVERFIT_RATIO) * abs(first)  # a fall by that share of its size (a loss may be negative)
    for step in range(OVERFIT_STEPS):
        model.train()
        optimizer.zero_grad()
        _step_loss(task, model, batch).backward()
        if step == 0:
            _check_gradients(model)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = _eval_loss(task, model, batch)
        if last < target:
            return
    raise AssertionError(
        f"the loss on one batch went from {first:.4g} to {last:.4g} in {OVERFIT_STEPS} Adam steps "
        f"(lr {OVERFIT_LR}); expected below {target:.4g}"
    )


def _check_gradients(model: nn.Module) -> None:
    def flows(params: Iterator[nn.Parameter]) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)

    _require(flows(model.parameters()), "the training loss does not depend on the model's parameters")
    backbones = [m for m in model.modules() if isinstance(m, GRUBackbone)]
    _require(
        any(flows(b.parameters()) for b in backbones),
        "the training loss does not depend on the backbone's parameters",
    )


def _check_checkpoint_round_trip(cfg: DictConfig) -> TaskModule:
    """Train briefly, reload `last.ckpt`, and compare predictions on the first prediction batch, each model's
    built by its own task (so state the checkpoint lost, a scaler refitted differently, shows)."""
    pl.seed_everything(cfg.seed, verbose=False)
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    module = run.build_module(cfg, task)
    trainer = run.build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    callback = trainer.checkpoint_callback
    _require(callback is not None, "the run has no ModelCheckpoint callback (keep callbacks=default)")
    last = Path(callback.last_model_path) if callback.last_model_path else None
    _require(last is not None and last.is_file(), f"training wrote no last.ckpt in {callback.dirpath}")
    _require(bool(callback.best_model_path), f"no best checkpoint: the monitor {callback.monitor!r} was not logged")
    try:
        restored = load_checkpoint(last)
        saved = set(restored.task.state)
        restored_data = restored.task.datamodule()  # rebuilds data-dependent objects (scalers...) as the CLI does
    except Exception as err:
        raise AssertionError(
            f"cannot rebuild the task from {last.name} ({type(err).__name__}: {err}); "
            "state_dict() must hold everything build_model() and the writers need"
        ) from err
    # on the same data a refitted value equals the trained one, so the predictions below cannot show it
    refitted = [key for key in restored.task.state if key not in saved]
    _require(not refitted, f"the task restored from {last.name} fitted state[{', '.join(map(repr, refitted))}] again "
             "on the data it was given: state_dict() leaves it out, so a model restored for new data gets another")
    batches = []
    for data in (datamodule, restored_data):
        data.setup("predict")
        batches.append(next(iter(data.predict_dataloader())))
    module.eval()
    with torch.no_grad():
        expected, got = module.predict_step(batches[0], 0), restored.predict_step(batches[1], 0)
    _require(_same(expected, got), f"predictions of the model reloaded from {last} differ from the trained model's")
    return restored


def _same(a: Any, b: Any) -> bool:
    """Equal nested predictions: tensors and arrays up to float tolerance."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), equal_nan=True)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.allclose(a, b, equal_nan=True))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _check_artifacts(paths: list[Path], out_dir: Path) -> None:
    _require(bool(paths), "write_predictions returned no paths")
    for path in map(Path, paths):
        _require(path.is_file(), f"artifact {path} does not exist")
        _require(path.resolve().is_relative_to(out_dir.resolve()), f"artifact {path} is outside {out_dir}")
        _require(path.stat().st_size > 0, f"artifact {path} is empty")
        try:
            _check_artifact_content(path)
        except AssertionError as err:
            raise AssertionError(f"artifact {path}: {err}") from err
        except (ValueError, csv.Error) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise AssertionError(f"artifact {path} does not parse as {path.suffix}: {err}") from err


def _check_artifact_content(path: Path) -> None:
    """Parse `path` according to its suffix; unknown suffixes only need to be non-empty."""
    suffix = path.suffix.lower()
    if suffix in MAGIC_BYTES:
        magic = MAGIC_BYTES[suffix]
        with path.open("rb") as f:
            _require(f.read(len(magic)) == magic, f"does not start with the {suffix} signature {magic!r}")
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, strict=True))
        _require(len(rows) >= 2, "a CSV artifact needs a header and at least one row")
        widths = {len(row) for row in rows}
        _require(len(widths) == 1, f"rows have different numbers of fields: {sorted(widths)}")
    elif suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".jsonl":
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                json.loads(line)
    elif suffix in (".html", ".htm", ".svg"):
        _require("<" in path.read_text(encoding="utf-8"), "no markup in it")
    elif suffix == ".txt":
        path.read_text(encoding="utf-8")
