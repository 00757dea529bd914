"""Rebuild a task and its trained model from a checkpoint alone."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gru_suite.errors import UserError, first_named
from gru_suite.module import CHECKPOINT_KEY, TaskModule


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a GRU Suite checkpoint onto the CPU, or raise a UserError saying why not. Its entries' checksums are
    verified (one pass over the file), and its tensors are memory-mapped."""
    ckpt_path = Path(path)
    if ckpt_path.is_dir():
        raise UserError(f"{ckpt_path} is a folder: give the checkpoint file in it (for instance checkpoints/last.ckpt)")
    if not ckpt_path.is_file():
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
    return None if entry is None else f"its entry {entry} does not match its checksum"


def stored_config(checkpoint: dict[str, Any]) -> DictConfig:
    """The model-defining config (task, backbone, optimizer, scheduler) of a read checkpoint."""
    return OmegaConf.create(checkpoint[CHECKPOINT_KEY]["config"])


def fixed_by_training(trained_settings: Sequence[str], task_cfg: DictConfig, stored_task: DictConfig) -> list[str]:
    """The keys of `trained_settings` (a task's `TaskPlugin.trained_settings`, e.g. its tokenizer's) whose value in
    `task_cfg` differs from the checkpoint's `stored_task`: the checkpoint's state holds what training made of them."""
    return [key for key in trained_settings
            if OmegaConf.select(task_cfg, key, default=None) != OmegaConf.select(stored_task, key, default=None)]


def check_same_model(state: dict[str, Any], module: TaskModule, source: str, changed: Sequence[str] = ()) -> None:
    """`state` (a checkpoint's state dict, from `source`) must hold the model `module` is: the same parameter
    and buffer names and shapes; else a UserError naming the first that differs, in the model's order, and the
    `changed` settings (`settings_apart`), among which is the cause."""
    own = module.state_dict()
    for name in [*own, *(name for name in state if name not in own)]:
        stored, built = state.get(name), own.get(name)
        if stored is None or built is None or stored.shape != built.shape:
            differing = f" (set otherwise here: {first_named(list(changed), '; ')})" if changed else ""
            raise UserError(f"{source} holds another model than this config builds ({name}: {_shape(stored)} in the "
                            f"checkpoint, {_shape(built)} here); use the settings it was trained with{differing}")


def settings_apart(stored: DictConfig, given: DictConfig, prefix: str) -> list[str]:
    """The settings under `prefix` (a config block, e.g. "task") whose values differ between a checkpoint's
    `stored` block and the `given` one, each as 'task.data.horizon=3 (trained with 6)', in the given block's order."""
    before = _leaves(OmegaConf.to_container(stored, resolve=True))
    now = _leaves(OmegaConf.to_container(given, resolve=True))
    return [f"{prefix}.{key}={_shown(now.get(key))} (trained with {_shown(before.get(key))})"
            for key in [*now, *(key for key in before if key not in now)] if now.get(key) != before.get(key)]


def _leaves(block: Any, key: str = "") -> dict[str, Any]:
    """A nested config container's values by dotted key (a list or an empty block is one value)."""
    if not isinstance(block, dict) or not block:
        return {key: block}
    leaves: dict[str, Any] = {}
    for name, child in block.items():
        leaves.update(_leaves(child, f"{key}.{name}" if key else str(name)))
    return leaves


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def _shape(tensor: torch.Tensor | None) -> str:
    return "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"


def restore(
    checkpoint: dict[str, Any], task_cfg: DictConfig | None = None, source: str = "the checkpoint"
) -> TaskModule:
    """The trained `TaskModule` in a read checkpoint, in eval mode; errors name it as `source`.

    `task_cfg`, if given, replaces the stored task config (for instance to point
    the task at new data); it must name the same task.
    """
    from gru_suite.run import build_module, build_task

    cfg = stored_config(checkpoint)
    changed: list[str] = []
    if task_cfg is not None:
        if task_cfg.name != cfg.task.name:
            raise UserError(f"{source} holds a model of task {cfg.task.name!r}, not {task_cfg.name!r}")
        changed = settings_apart(cfg.task, task_cfg, "task")
        cfg.task = task_cfg
    task = build_task(cfg.task, state=checkpoint[CHECKPOINT_KEY]["task_state"])
    module = build_module(cfg, task)
    check_same_model(checkpoint["state_dict"], module, source, changed)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def load_checkpoint(path: str | Path, task_cfg: DictConfig | None = None) -> TaskModule:
    """Read and restore the checkpoint at `path` (see `restore`)."""
    return restore(read_checkpoint(path), task_cfg, str(path))
