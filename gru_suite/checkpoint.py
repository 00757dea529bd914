"""Rebuild a task and its trained model from a checkpoint alone."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gru_suite import registry
from gru_suite.config import leaves
from gru_suite.errors import UserError, first_named, not_a_file
from gru_suite.module import CHECKPOINT_KEY, TaskModule

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a GRU Suite checkpoint onto the CPU, or raise a UserError saying why not. Its entries' checksums are
    verified (one pass over the file), and its tensors are memory-mapped."""
    ckpt_path = Path(path)
    if ckpt_path.is_dir():
        raise UserError(f"{ckpt_path} is a folder: give the checkpoint file in it (for instance checkpoints/last.ckpt)")
    if not ckpt_path.is_file():
        if os.path.lexists(ckpt_path):  # a broken link, a pipe (which reading would wait on)
            raise not_a_file(ckpt_path, "checkpoint file")
        raise UserError(f"checkpoint not found: {ckpt_path}")
    if not zipfile.is_zipfile(ckpt_path):  # what torch.save writes; a truncated one has lost its end
        raise UserError(f"{ckpt_path} is not a checkpoint, or is truncated (torch.save writes a zip archive)")
    if (damaged := _damaged_entry(ckpt_path)) is not None:  # torch.load would read damaged weights as they are
        raise UserError(f"{ckpt_path} is damaged: {damaged}")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a damaged pickle raises almost any type (UnicodeDecodeError, AttributeError, ...)
        raise UserError(f"cannot read checkpoint {ckpt_path} (damaged?): {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{ckpt_path} is not a GRU Suite checkpoint (no '{CHECKPOINT_KEY}' entry)")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{ckpt_path} holds no model weights (no 'state_dict' entry)")
    return checkpoint


def _damaged_entry(path: Path) -> str | None:
    """What is wrong with the zip archive at `path`: the first entry whose data fails its checksum, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"{type(err).__name__}: {err}"
    # torch.save names the archive's top folder after the file as it was written (a temporary name): left out
    return None if entry is None else f"its entry {entry.split('/', 1)[-1]} does not match its checksum"


def stored_config(checkpoint: dict[str, Any]) -> DictConfig:
    """The model-defining config (task, backbone, optimizer, scheduler) of a read checkpoint."""
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY]["config"])


_ABSENT = object()


def fixed_by_training(trained_settings: Sequence[str], task_cfg: DictConfig, stored_task: DictConfig) -> list[str]:
    """The keys of `trained_settings` (a task's `TaskPlugin.trained_settings`, e.g. its tokenizer's) whose value in
    `task_cfg` differs from the one training used (`trained_value`): the checkpoint's state holds what training made
    of them."""
    return [key for key in trained_settings
            if (given := OmegaConf.select(task_cfg, key, default=_ABSENT)) is not _ABSENT  # absent: nothing given
            and _given_otherwise(given, stored_task, key)]


def _given_otherwise(given: Any, stored_task: DictConfig, key: str) -> bool:
    """Whether `given`, the value of `key`, differs from the one training used (`trained_value`; unknown: no); a block
    leaf by leaf, so that a setting newer than the checkpoint, left at its shipped default, is no difference."""
    value = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else given
    for leaf_key, leaf in leaves(value, key):
        trained = trained_value(stored_task, leaf_key)
        if trained is not _ABSENT and leaf != trained:
            return True
    return False


def use_trained_settings(trained_settings: Sequence[str], task_cfg: DictConfig, stored_task: DictConfig) -> list[str]:
    """Set each of `trained_settings` that `task_cfg` gives otherwise (`fixed_by_training`) back to the value training
    used (`trained_value`), in place, a block leaf by leaf (a setting newer than the checkpoint to its shipped
    default); the keys reset."""
    fixed = fixed_by_training(trained_settings, task_cfg, stored_task)
    for key in fixed:
        given = OmegaConf.select(task_cfg, key)
        value = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else given
        for leaf_key, leaf in leaves(value, key):
            if (trained := trained_value(stored_task, leaf_key)) is not _ABSENT and leaf != trained:
                OmegaConf.update(task_cfg, leaf_key, trained, merge=False)
    return fixed


def keep_trained_settings(task_cfg: DictConfig, stored_task: DictConfig, source: str, given: str,
                          warn: Callable[[str], Any]) -> None:
    """Set the settings training fixed (`TaskPlugin.trained_settings`: a tokenizer's, a grid's) that `task_cfg` gives
    otherwise back to the checkpoint's values, in place (`use_trained_settings`): its state holds what training made
    of them. `warn` names them, as `source`'s settings used rather than `given`."""
    trained = registry.get_task(task_cfg.name).load().trained_settings
    values_given = {key: OmegaConf.select(task_cfg, key) for key in trained}
    if ignored := use_trained_settings(trained, task_cfg, stored_task):
        values = [f"task.{key}: {_shown(trained_value(stored_task, key))} used, {_shown(values_given[key])} given"
                  for key in ignored if not isinstance(values_given[key], DictConfig)]  # a block's: many
        warn(f"{source}: {', '.join(f'task.{key}' for key in ignored)} fixed by training: the checkpoint's settings "
             f"are used, not {given}" + (f" ({'; '.join(values)})" if values else ""))


def _shown(value: Any) -> str:
    """A setting's value as a warning shows it (a list as a plain one)."""
    return repr(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)


def trained_value(stored_task: DictConfig, key: str) -> Any:
    """The value of `key` (relative to `task.`) training used: the checkpoint's config's, or for a setting newer than
    the checkpoint (its config lacks it) the task's shipped default as written, which is what its code did before the
    setting existed; `_ABSENT` where that is not known (the shipped config lacks it too, or its default is an
    interpolation)."""
    value = OmegaConf.select(stored_task, key, default=_ABSENT)
    if value is not _ABSENT:
        return value
    value = registry.shipped_task_config(str(stored_task.get("name")))
    for part in key.split("."):
        value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
    return _ABSENT if value is _ABSENT or "${" in str(value) else value


def check_same_model(state: dict[str, Any], module: TaskModule, source: str,
                     changed: Callable[[], list[str]] = list) -> None:
    """`state` (a checkpoint's state dict, from `source`) must hold the model `module` is: the same parameter
    and buffer names and shapes; else a UserError naming the first that differs, in the model's order, and as a
    hint the settings `changed()` lists (`settings_apart`: those given otherwise than in training)."""
    own = module.state_dict()
    for name in [*own, *(name for name in state if name not in own)]:
        stored, built = state.get(name), own.get(name)
        if stored is None or built is None or stored.shape != built.shape:
            raise UserError(f"{source} holds another model than this config builds ({name}: {_shape(stored)} in the "
                            f"checkpoint, {_shape(built)} here); use the settings it was trained with"
                            f"{_changed_hint(changed(), name)}")


def _changed_hint(changed: list[str], tensor: str) -> str:
    if ".backbone." in f".{tensor}":  # the backbone's settings first
        changed = sorted(changed, key=lambda setting: not setting.startswith("backbone."))
    return f" (set otherwise here: {first_named(changed, '; ')})" if changed else ""


def settings_apart(stored: DictConfig | None, given: DictConfig, prefix: str) -> list[str]:
    """The settings under `prefix` (a config block, e.g. "task") given otherwise than in a checkpoint's `stored`
    block (resolved when it was saved), in the given block's order, as overrides: 'task.data.horizon=3 (trained
    with 6)'; those the checkpoint lacks (settings newer than it), 'task.data.x=1 (not in the checkpoint)'; last, those
    only the checkpoint has (settings of an earlier version), 'task.model.y (true in training; no such setting now)'.
    A hint only: a config that cannot be resolved gives none."""
    try:
        before = dict(leaves(OmegaConf.to_container(stored, resolve=False), "")) if stored is not None else {}
        now = dict(leaves(OmegaConf.to_container(given, resolve=True), ""))
    except OmegaConfBaseException:
        return []
    differing = [f"{prefix}.{key}={_as_override(now[key])} (trained with {_as_override(before[key])})"
                 for key in now if key in before and now[key] != before[key]]
    newer = [f"{prefix}.{key}={_as_override(now[key])} (not in the checkpoint)" for key in now if key not in before]
    gone = [f"{prefix}.{key} ({_as_override(before[key])} in training; no such setting now)" for key in before
            if key not in now]
    return differing + newer + gone


def _as_override(value: Any) -> str:
    """`value` as a command-line override writes it: null, true, [a,b], {k:v}."""
    if isinstance(value, list):
        return f"[{','.join(map(_as_override, value))}]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_as_override(item)}" for key, item in value.items()) + "}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _shape(tensor: torch.Tensor | None) -> str:
    return "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"


def restore(
    checkpoint: dict[str, Any], task_cfg: DictConfig | dict | None = None, source: str = "the checkpoint"
) -> TaskModule:
    """The trained `TaskModule` in a read checkpoint, in eval mode; errors name it as `source`.

    `task_cfg` (a task's config block, or a dict of one), if given, replaces the stored task config (for instance
    to point the task at new data); it must name the same task, and the settings training fixed
    (`TaskPlugin.trained_settings`) keep the checkpoint's values, with a warning naming those it gives otherwise.
    """
    from gru_suite.run import absolute_task_paths, build_module, build_task

    cfg = stored_config(checkpoint)
    stored_task = cfg.task
    if task_cfg is not None:
        task_cfg = _task_block(task_cfg, source)
        if task_cfg.name != cfg.task.name:
            raise UserError(f"{source} holds a model of task {cfg.task.name!r}, not {task_cfg.name!r}")
        cfg.task = task_cfg  # a copy: the caller's config stays as given
        absolute_task_paths(cfg.task)  # as the checkpoint stores them, for the comparison below
        keep_trained_settings(cfg.task, stored_task, source, "the override(s)", log.warning)
    task = build_task(cfg.task, state=checkpoint[CHECKPOINT_KEY]["task_state"])
    module = build_module(cfg, task)
    check_same_model(checkpoint["state_dict"], module, source, lambda: settings_apart(stored_task, cfg.task, "task"))
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def _task_block(task_cfg: Any, source: str) -> DictConfig:
    """`task_cfg` as a task's config block (a dict is read as one); else an error saying what is expected."""
    if isinstance(task_cfg, dict):
        task_cfg = OmegaConf.create(task_cfg)
    if isinstance(task_cfg, DictConfig) and "name" in task_cfg:
        return task_cfg
    given = f"a config with keys {', '.join(map(str, task_cfg))}" if isinstance(task_cfg, DictConfig) else \
        f"a {type(task_cfg).__name__}"
    hint = " (this is a run's whole config: pass its `task`)" if isinstance(task_cfg, DictConfig) and \
        "task" in task_cfg else ""
    raise UserError(f"the task config for {source} must be a task's config block with its `name`, as a run's "
                    f"cfg.task; got {given}{hint}")


def load_checkpoint(path: str | Path, task_cfg: DictConfig | dict | None = None) -> TaskModule:
    """Read and restore the checkpoint at `path` (see `restore`)."""
    return restore(read_checkpoint(path), task_cfg, str(path))
