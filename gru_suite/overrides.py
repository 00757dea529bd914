"""Command-line overrides: the keys they name, copying them onto a checkpoint's config, and warnings for options
and `+key`s that name nothing."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from gru_suite.config import CONF_DIR, leaves, literal


def command_line_overrides(hydra: DictConfig) -> list[str]:
    """The running app's command-line overrides (`hydra.overrides.task`) as given: an interpolation in a value
    (`${oc.env:DATA}`) is left as written, not resolved (which fails where it cannot be, as a value read would)."""
    return list(OmegaConf.to_container(hydra.overrides.task, resolve=False))


def override_key(override: str) -> str:
    """The dotted key a command-line override names (`++backbone.dropout=0.3` -> `backbone.dropout`,
    `~task.x` -> `task.x`)."""
    return override.partition("=")[0].lstrip("+~")


def apply_overrides(base: DictConfig, composed: DictConfig, overrides: list[str], prefix: str) -> DictConfig:
    """Copy onto `base` the keys under `prefix.` that the user set on the command line.

    `composed` is the Hydra-composed config holding the typed override values;
    `base` is usually the config stored in a checkpoint.
    """
    merged = base.copy()
    OmegaConf.set_struct(merged, False)
    for override in overrides:
        key = override_key(override)
        if key.startswith(prefix + "."):
            value = OmegaConf.select(composed, key)  # resolved: a `\${` given is a plain `${` here, escaped again
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(merged, key[len(prefix) + 1 :], literal(value), merge=False)
    return merged


def undeclared_settings(overrides: list[str], cfg: DictConfig, prefix: str = "task") -> list[str]:
    """A warning for each `+prefix.key=value` override: with a single `+`, Hydra only lets a key that the
    config does not hold be added, so `key` is no setting of the task, and a misspelt one would be ignored."""
    added = [override_key(o) for o in overrides if o.startswith(f"+{prefix}.")]
    if not added:
        return []
    declared = [key for key, _ in leaves(OmegaConf.to_container(cfg[prefix]), prefix) if key not in added]
    messages = []
    for key in added:
        block, _, name = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in declared if k.rpartition(".")[0] == block}
        close = difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.75)
        hint = f"did you mean {siblings[close[0]]}? " if close else ""
        messages.append(f"+{key}: not in the config of task {cfg[prefix].get('name')!r} ({hint}a setting the task "
                        "does not read is ignored)")
    return messages


def undeclared_run_settings(overrides: list[str], declared: Sequence[str], command: str) -> list[str]:
    """A warning for each `+key=value` override of a top-level `key` that is not among the command's settings and
    config groups (`declared`), so the command does not read it (`+ensemble=[...]` to gru-suite-eval)."""
    added = [override_key(o) for o in overrides if o.startswith("+") and not o.startswith("++")]
    added = [key for key in added if "." not in key and key not in declared]
    messages = []
    for key in added:
        close = difflib.get_close_matches(key, declared, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}? " if close else ""
        messages.append(f"+{key}: not a setting of {command} ({hint}a setting the command does not read is ignored)")
    return messages


def given_keys(overrides: Sequence[str], group: str) -> list[str]:
    """The keys of `group` that command-line `overrides` set (`backbone.dropout=0.3` -> `dropout`)."""
    keys = [override_key(o) for o in overrides if not o.startswith("~")]  # a deleted key is not set
    return [key.partition(".")[2] for key in keys if key.startswith(f"{group}.")]


def unknown_group_option(args: Sequence[str]) -> str | None:
    """What is wrong with the first `group=NAME` of command-line `args` (also `+group=NAME`, or a sweep's `group=a,b`)
    that names no config of that group, with the group's options; None where all are known. `task=` is checked
    apart; where the user's own config folders (`hydra.searchpath`, `--config-dir`) may add options, Hydra answers."""
    from gru_suite.registry import group_options, task_config_dirs

    # not a setting (group.key=...), Hydra's own groups (hydra/launcher=...), a sweep function (range(...)), a
    # merged block (backbone={hidden_size: 9}), a list of options or a quoted value: Hydra's to read
    choices = [(group, value) for group, is_choice, value in (arg.removeprefix("+").partition("=") for arg in args)
               if is_choice and group not in ("task", "hydra") and group.isidentifier()
               and not any(mark in value for mark in "()[]{}'\"")]
    own_folders = ("hydra.searchpath=", "--config-dir", "-cd", "--config-path", "-cp")
    if not choices or any(arg.startswith(own_folders) for arg in args):
        return None
    folders = [CONF_DIR, *task_config_dirs()]
    for group, value in choices:
        if not (options := group_options(group, folders)):
            continue  # not a config group
        if unknown := [option.strip() for option in value.split(",") if option.strip() not in (*options, "")]:
            return f"{group}={unknown[0]}: no such option; the {group} options are {', '.join(options)}"
    return None
