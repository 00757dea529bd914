"""Config helpers: resolvers, `instantiate` with real error causes, override merging."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gru_suite.errors import UserError, user_error_in

CONF_DIR = Path(__file__).parent / "conf"
MODEL_CONFIG_KEYS = ("task", "backbone", "optimizer", "scheduler")
"""The config a checkpoint stores and rebuilds its model from."""


def default_data_dir() -> str:
    """`$GRU_SUITE_DATA_DIR`, else the bundled data folder (`bundled_data_dir`)."""
    return os.environ.get("GRU_SUITE_DATA_DIR") or str(bundled_data_dir())


def bundled_data_dir() -> Path:
    """The project's bundled `data/`, else `./data` (where `scripts/make_data.py` writes it)."""
    bundled = Path(__file__).resolve().parent.parent / "data"
    return bundled if bundled.is_dir() else Path.cwd() / "data"


def check_own_splits(data: DictConfig, instead: Mapping[str, str]) -> None:
    """Training on data of one's own (`data.train` given) while other splits (the keys of `instead`) are left at
    their defaults, files of the bundled demo data, would validate or test on data never given: a UserError naming
    those splits and, for each, what to give instead."""
    root = bundled_data_dir().resolve()

    def left_at_demo(split: str) -> bool:  # an explicit path is the user's choice, even to a bundled file
        return (OmegaConf.is_interpolation(data, split) and data.get(split) not in (None, "")
                and Path(data[split]).resolve().is_relative_to(root))

    demo = [split for split in instead if left_at_demo(split)]
    if data.get("train") not in (None, "") and not left_at_demo("train") and demo:
        keys = ", ".join(f"task.data.{split}" for split in demo)
        raise UserError(f"task.data.train is data of your own ({data.train}), but {keys} "
                        f"{'is' if len(demo) == 1 else 'are'} left at the bundled demo data in {root}: give "
                        + "; ".join(instead[split] for split in demo))


def register_resolvers() -> None:
    """Register the resolvers the configs use: `${gru_suite.data_dir:}`, `${gru_suite.required:...}`,
    `${gru_suite.rank_suffix:}`, `${gru_suite.console_level:}`, and for `--help` `${gru_suite.task_groups:command}`
    and `${gru_suite.core_groups:command}` (the config groups that command accepts)."""
    from gru_suite.registry import format_core_config_groups, format_task_config_groups

    if not OmegaConf.has_resolver("gru_suite.data_dir"):
        OmegaConf.register_new_resolver("gru_suite.data_dir", default_data_dir)
    if not OmegaConf.has_resolver("gru_suite.task_groups"):
        OmegaConf.register_new_resolver("gru_suite.task_groups", format_task_config_groups)
    if not OmegaConf.has_resolver("gru_suite.core_groups"):
        OmegaConf.register_new_resolver("gru_suite.core_groups", format_core_config_groups)
    if not OmegaConf.has_resolver("gru_suite.required"):
        OmegaConf.register_new_resolver("gru_suite.required", required)
    if not OmegaConf.has_resolver("gru_suite.rank_suffix"):
        OmegaConf.register_new_resolver("gru_suite.rank_suffix", rank_suffix)
    if not OmegaConf.has_resolver("gru_suite.console_level"):
        OmegaConf.register_new_resolver("gru_suite.console_level", console_level)


def rank_suffix() -> str:
    """`${gru_suite.rank_suffix:}`: "" in the first (or only) process, `_rank<N>` in the others, so that each writes a
    log of its own: N is the rank torchrun or SLURM gave it, or the local rank of a process Lightning started
    (`_node<M>_rank<N>`, `_node<M>` on the M-th node of a multi-node run that Lightning launches itself)."""
    from gru_suite.run_folder import launch_rank

    if rank := launch_rank():
        return f"_rank{rank}"
    node, local = int(os.environ.get("NODE_RANK") or 0), int(os.environ.get("LOCAL_RANK") or 0)
    return (f"_node{node}" if node else "") + (f"_rank{local}" if local else "")


def console_level() -> str:
    """`${gru_suite.console_level:}`: the console's logging level, all messages in the first (or only) process of a
    run and errors alone in the others, whose warnings repeat the first's (each process's log file has them all)."""
    from gru_suite.run_folder import first_process

    return "NOTSET" if first_process() else "ERROR"


def required(what: str) -> Any:
    """`${gru_suite.required:"task.data.path (the ETTh1 CSV)"}`: a value the user must set.

    Unlike `???`, it also overrides a value the task's own config holds, so an
    experiment preset can demand its data set instead of falling back to the bundled data.
    A command that only prints its config resolved (`--cfg job --resolve`) shows it as `???`.
    """
    if "--resolve" in sys.argv and any(arg.startswith(("--cfg", "-c")) for arg in sys.argv):  # --cfg=job, -cjob
        return "???"
    raise UserError(f"{what} is required: set it on the command line")


def unset_required(cfg: DictConfig) -> list[str]:
    """The message of every value of `cfg` a preset requires (`${gru_suite.required:...}`) that nobody set, in the
    config's order, so that they are named at once rather than one per try."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str) and "${gru_suite.required:" in value:
                paths.append((*path, key))
            walk(value, (*path, key))

    walk(OmegaConf.to_container(cfg, resolve=False), ())
    messages = []
    for path in paths:  # key by key, not as a dotted name: a key may hold a dot
        node = cfg
        try:
            for key in path:
                node = node[key]
        except OmegaConfBaseException as err:  # it wraps the resolver's UserError
            if (unset := user_error_in(err)) is not None:
                messages.append(str(unset))
    return messages


def config_number(value: Any, field: str, kind: type[int] | type[float] = float) -> Any:
    """`value` as `kind` (int or float, finite; an int must be whole); a one-line error naming `field`
    when it is not one."""
    try:
        whole_text = isinstance(value, str) and value.strip().lstrip("+-").isdigit()  # e.g. from ${oc.env:SEED}
        if isinstance(value, bool) or (isinstance(value, str) and kind is int and not whole_text):
            raise ValueError
        number = float(value)
        if not math.isfinite(number) or (kind is int and not number.is_integer()):
            raise ValueError
        return kind(number)
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a finite number"
        raise UserError(f"{field} must be {expected}, got {value!r}") from None


NumberField = (tuple[str, "type[int] | type[float]", float] | tuple[str, "type[int] | type[float]", float, float]
               | tuple[str, "type[int] | type[float]", float, float, bool])
"""(dotted key, int or float, smallest value allowed[, largest value[, whether the largest is excluded]])."""

RUN_NUMBERS: tuple[NumberField, ...] = (
    ("backbone.hidden_size", int, 1),
    ("backbone.num_layers", int, 1),
    ("backbone.dropout", float, 0, 1, True),  # 1 would zero every layer's output
    ("backbone.weight_dropout", float, 0, 1, True),
    ("optimizer.lr", float, 0),
    ("optimizer.weight_decay", float, 0),
    ("trainer.max_epochs", int, -1),
    ("trainer.max_steps", int, -1),
    ("trainer.gradient_clip_val", float, 0),
    ("trainer.accumulate_grad_batches", int, 1),
    ("trainer.log_every_n_steps", int, 0),
    ("trainer.num_nodes", int, 1),
    ("trainer.num_sanity_val_steps", int, -1),
    ("trainer.check_val_every_n_epoch", int, 1),
    ("threads", int, 0),
    ("seed", int, 0, 2**32 - 1),
    ("callbacks.progress_bar.refresh_rate", int, 0),
    ("callbacks.early_stopping.patience", int, 0),
    ("scheduler.patience", int, 0),  # scheduler=plateau's: a negative one cut the rate at every validation
    ("scheduler.factor", float, 0, 1, True),
)
"""Numbers of the core's config groups that `check_run_settings` checks before a run."""


def wrong_numbers(cfg: DictConfig, fields: tuple[NumberField, ...], prefix: str = "") -> list[str]:
    """One message naming `prefix` + the field for each of `fields` set in `cfg` (not null) that is not a number
    of its kind within its bounds; the right ones are stored as that number (a quoted '0.5' becomes 0.5)."""
    wrong = []
    for field, kind, minimum, *bound in fields:
        value = OmegaConf.select(cfg, field, default=None)
        if value is None:
            continue
        try:
            number = config_number(value, prefix + field, kind)
        except UserError as err:
            wrong.append(str(err))
            continue
        if len(bound) == 2 and bound[1] and not minimum <= number < bound[0]:
            wrong.append(f"{prefix}{field} must be in [{minimum}, {bound[0]}), got {value!r}")
        elif bound and not minimum <= number <= bound[0]:
            wrong.append(f"{prefix}{field} must be between {minimum} and {bound[0]}, got {value!r}")
        elif number < minimum:
            wrong.append(f"{prefix}{field} must be at least {minimum}, got {value!r}")
        else:
            OmegaConf.update(cfg, field, number, merge=False)
    return wrong


RangeField = tuple[str, "type[int] | type[float]", float, bool]
"""(dotted key of a `[low, high]` setting, the kind of both bounds, the least low bound, whether null is allowed)."""


ChoiceField = tuple[str, Sequence[Any]]
"""(dotted key of a setting, the values it may take)."""


def literal(node: Any) -> Any:
    """A plain config container (dicts, lists, scalars) with `${` escaped in its strings, so that `OmegaConf.create`
    keeps them as they are: a resolved config holds no interpolations, only values such as a folder named `d${H}`."""
    if isinstance(node, dict):
        return {key: literal(value) for key, value in node.items()}
    if isinstance(node, list):
        return [literal(item) for item in node]
    return node.replace("${", "\\${") if isinstance(node, str) else node


def wrong_paths(cfg: DictConfig, fields: Sequence[str], prefix: str = "") -> list[str]:
    """One message per field of `fields` (a path setting: a path, a list of them, or null) that `cfg` sets to a
    number or a boolean: Hydra reads an unquoted `2024` or `1e3` as one."""
    wrong = []
    for field in fields:
        value = OmegaConf.select(cfg, field, default=None, throw_on_resolution_failure=False)
        items = list(value) if isinstance(value, ListConfig) else [value]
        for scalar in [item for item in items if isinstance(item, (bool, int, float))][:1]:  # 0 and false too
            example = f'{prefix}{field}="{scalar}"' if type(scalar) is int else f'{prefix}{field}="..."'
            wrong.append(f"{prefix}{field} must be a path, got the {type(scalar).__name__} {scalar!r}: quote a name "
                         f"that reads as a number on the command line, '{example}'")
    return wrong


def wrong_choices(cfg: DictConfig, fields: tuple[ChoiceField, ...], prefix: str = "") -> list[str]:
    """One message per field of `fields` set in `cfg` to none of its values (a field `cfg` lacks is not checked)."""
    wrong = []
    for field, values in fields:
        value = OmegaConf.select(cfg, field, default=_ABSENT)
        if value is not _ABSENT and value not in values:
            wrong.append(_not_a_choice(prefix + field, values, value))
    return wrong


def _real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _entry(value: Any, size: range) -> bool:
    """`value` is a sequence of `size` items whose first is a key."""
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) in size
            and isinstance(value[0], str))


def _number_field(entry: Any) -> bool:
    if not _entry(entry, range(3, 6)):
        return False
    kind, least, *bound = entry[1:]
    if kind not in (int, float) or not _real(least) or len(bound) == 2 and not isinstance(bound[1], bool):
        return False
    excluded = len(bound) == 2 and bound[1]
    return not bound or _real(bound[0]) and (bound[0] > least if excluded else bound[0] >= least)


def _choice_field(entry: Any) -> bool:
    values = entry[1] if _entry(entry, range(2, 3)) else None
    return isinstance(values, Collection) and not isinstance(values, str) and len(values) > 0


def _range_field(entry: Any) -> bool:
    return _entry(entry, range(4, 5)) and entry[1] in (int, float) and _real(entry[2]) and isinstance(entry[3], bool)


DECLARATION_SHAPES = (
    ("numbers", _number_field, "(key, int or float, least[, most[, whether most is excluded]]), least <= most"),
    ("choices", _choice_field, "(key, the values it may take)"),
    ("ranges", _range_field, "(key, int or float, least low bound, whether null is allowed)"),
    ("required", lambda entry: isinstance(entry, str), "a key"),
    ("trained_settings", lambda entry: isinstance(entry, str), "a key or a block (data.vocab, tokenizer)"),
    ("path_settings", lambda entry: isinstance(entry, str), "a key"),
)
"""Each declaration of a task class, the test of one entry, and the shape the test wants."""


def wrong_declarations(task_cls: type) -> list[str]:
    """One message per malformed entry of a task class's `numbers`, `choices`, `ranges`, `required`,
    `trained_settings` and `path_settings` (a plugin author's mistake, which would otherwise be a traceback, or a
    check that never fails)."""
    wrong = []
    for name, fits, expected in DECLARATION_SHAPES:
        declared = getattr(task_cls, name)
        if not isinstance(declared, Sequence) or isinstance(declared, str):
            wrong.append(f"{name} must be a tuple of entries, each {expected}; got {declared!r}")
        elif name in ("numbers", "choices", "ranges") and declared and isinstance(declared[0], str):
            wrong.append(f"{name} is one entry, not a tuple of them: write ({tuple(declared)!r},) (the trailing comma)")
        else:
            wrong += [f"{name} entry {entry!r}: expected {expected}" for entry in declared if not fits(entry)]
    return wrong


def as_list(value: Any) -> list[Any]:
    """A setting that takes one value or a list of them, as a list: None, or an empty `key=` from the command line,
    is an empty one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    listed = isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))
    return list(value) if listed else [value]


def name_list(value: Any, field: str) -> list[str]:
    """A setting of one name (a column, a file) or a list of them (`as_list`), as a list of names each given once.
    Anything else is a `UserError` naming `field`."""
    names = as_list(value)
    if not all(isinstance(name, (str, int)) and not isinstance(name, bool) and str(name) for name in names):
        raise UserError(f"{field}: expected a name or a list of names, got {value!r}")
    names = [str(name) for name in names]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"{field} names {repeated} more than once")
    return names


def check_choice(value: Any, values: Sequence[Any], field: str) -> Any:
    """`value`, if it is one of `values`; else a UserError naming `field` (as a user writes it, `task.model.head`)
    and the values, worded as `wrong_choices` words it."""
    if value not in values:
        raise UserError(_not_a_choice(field, values, value))
    return value


def _not_a_choice(field: str, values: Sequence[Any], value: Any) -> str:
    return f"{field} must be one of {list(values)}, got {value!r}"


def wrong_ranges(cfg: DictConfig, fields: tuple[RangeField, ...], prefix: str = "") -> list[str]:
    """One message per field of `fields` that is not `[low, high]` of its kind with least <= low <= high (or null,
    where allowed); the right bounds are stored as that kind."""
    wrong = []
    for field, kind, least, optional in fields:
        value = OmegaConf.select(cfg, field, default=None)
        if value is None and optional:
            continue
        expected = f"{prefix}{field} must be [low, high], {kind.__name__}s with {least} <= low <= high"
        if not OmegaConf.is_list(value) or len(value) != 2:
            got = "null" if value is None else repr(value)
            wrong.append(f"{expected}{' (or null)' if optional else ''}, got {got}")
            continue
        try:
            low, high = (config_number(bound, prefix + field, kind) for bound in value)
        except UserError:
            low, high = math.nan, math.nan
        if not least <= low <= high:
            wrong.append(f"{expected}, got {list(value)}")
        else:
            OmegaConf.update(cfg, field, [low, high], merge=False)
    return wrong


def raise_all(wrong: Sequence[str]) -> None:
    """One UserError for the `wrong` settings' messages: the message itself for one, a line each for more."""
    if wrong:
        raise UserError(wrong[0] if len(wrong) == 1 else f"{len(wrong)} settings are wrong:\n  " + "\n  ".join(wrong))


RUN_SWITCHES = ("backbone.bidirectional", "test_after_training", "predict_after_training")
"""True/false settings of the core's config that `check_run_settings` checks before a run."""


def wrong_switches(cfg: DictConfig, fields: Sequence[str], prefix: str = "") -> list[str]:
    """One message naming `prefix` + the field for each of `fields` in `cfg` that is not true or false; the right
    ones are stored as the bool (a quoted 'true' becomes True, null False: off)."""
    wrong = []
    for field in fields:
        value = OmegaConf.select(cfg, field, default=_ABSENT)
        if value is _ABSENT or isinstance(value, bool):
            continue
        if value is None:  # nn.GRU(bidirectional=None) is a TypeError deep in the first batch
            OmegaConf.update(cfg, field, False, merge=False)
            continue
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            OmegaConf.update(cfg, field, value.strip().lower() == "true", merge=False)
            continue
        wrong.append(f"{prefix}{field} must be true or false, got {value!r}")
    return wrong


def wrong_determinism(cfg: DictConfig) -> list[str]:
    """`trainer.deterministic` as Lightning reads it: true, false, null or "warn" (stored as the bool or "warn"); any
    other word would count as true for cuDNN yet leave PyTorch's deterministic algorithms off."""
    value = OmegaConf.select(cfg, "trainer.deterministic", default=None)
    if value is None or isinstance(value, bool):
        return []
    word = value.strip().lower() if isinstance(value, str) else None
    if word not in ("true", "false", "warn"):
        return [f"trainer.deterministic must be true, false or warn, got {value!r}"]
    OmegaConf.update(cfg, "trainer.deterministic", word if word == "warn" else word == "true", merge=False)
    return []


RUN_REQUIRED = ("backbone.hidden_size", "backbone.num_layers", "backbone.dropout", "backbone.weight_dropout",
                "optimizer.lr", "optimizer.weight_decay",
                "trainer.max_steps", "trainer.accumulate_grad_batches", "trainer.num_nodes",
                "callbacks.progress_bar.refresh_rate", "callbacks.early_stopping.patience", "scheduler.patience",
                "scheduler.factor")
"""Numbers of `RUN_NUMBERS` without an "off": null is named (where the config has the key) rather than reaching
torch or Lightning as None."""


def check_run_settings(cfg: DictConfig, numbers: tuple[NumberField, ...] = (), task: Sequence[str] = ()) -> None:
    """The core's numbers (`RUN_NUMBERS`, and `numbers` of the command), required values (`RUN_REQUIRED`),
    switches (`RUN_SWITCHES`, `trainer.deterministic`) and batch limits (`BATCH_LIMITS`), every wrong one named at
    once with the task's own wrong settings, `task` (`TaskPlugin.wrong_settings`)."""
    required = tuple(field for field in RUN_REQUIRED if not lacks(cfg, field))
    raise_all(wrong_unset(cfg, required) + wrong_numbers(cfg, RUN_NUMBERS + numbers) + wrong_switches(cfg, RUN_SWITCHES)
              + wrong_batch_limits(cfg) + wrong_determinism(cfg) + settings_without_a_class(cfg) + list(task))


def settings_without_a_class(cfg: DictConfig) -> list[str]:
    """One message per group (`optimizer`, `scheduler`) given settings but no class: `+scheduler.T_max=5` with
    `scheduler=none`, where the option that takes them was not chosen."""
    return [f"{group} settings ({', '.join(map(str, block))}) but no {group} chosen: choose one ({group}="
            f"{' or '.join(sorted(p.stem for p in (CONF_DIR / group).glob('*.yaml') if p.stem != 'none'))}) or name "
            f"its class ({group}._target_)"
            for group in ("optimizer", "scheduler") if (block := cfg.get(group)) and "_target_" not in block]


def leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) of the leaves of a plain config container (a dict of dicts), keys under `prefix`."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [leaf for name, child in node.items() for leaf in leaves(child, f"{prefix}.{name}" if prefix else str(name))]


def switches_of(defaults: Any) -> list[str]:
    """The dotted keys of `defaults` (a config's plain dict) whose value is true or false."""
    return [key for key, value in leaves(defaults or {}, "") if isinstance(value, bool)]


BATCH_LIMITS = ("trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
                "trainer.limit_predict_batches", "trainer.val_check_interval")
"""Trainer settings that take a fraction of the batches (a float in [0, 1]) or a number of them (an int)."""


def wrong_batch_limits(cfg: DictConfig) -> list[str]:
    """One message per setting of `BATCH_LIMITS` in `cfg` that is neither a fraction in [0, 1] nor a whole number
    of batches; the right ones are stored as the float or the int Lightning reads them as. `val_check_interval`
    may also be a duration (`DD:HH:MM:SS`, or a block such as `{minutes: 1}`), which Lightning checks."""
    wrong = []
    for field in BATCH_LIMITS:
        value = OmegaConf.select(cfg, field, default=None)
        duration = isinstance(value, DictConfig) or (isinstance(value, str) and ":" in value)
        if value is None or (duration and field.endswith("val_check_interval")):
            continue
        whole = isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        try:
            number = config_number(value, field, int if whole else float)
        except UserError:
            number = -1
        if isinstance(number, float) and number > 1 and number.is_integer():  # 2.0 or 1e3 batches, as Lightning reads
            number, whole = int(number), True
        validation = field.endswith("val_check_interval")  # Lightning divides by it: 0 is wrong too
        if isinstance(value, bool) or number < 0 or (not whole and number > 1) or (validation and number == 0):
            wrong.append(f"{field} must be a fraction of the batches in (0, 1], a whole number of batches of at least "
                         f"1 or a duration, got {value!r}" if validation else f"{field} must be a fraction of the "
                         f"batches in [0, 1] or a whole number of batches, got {value!r}")
        else:
            OmegaConf.update(cfg, field, number, merge=False)
    return wrong


_ABSENT = object()


def lacks(cfg: DictConfig, field: str) -> bool:
    """Whether `cfg` has no key `field` (dotted); a key set to null is there."""
    return OmegaConf.select(cfg, field, default=_ABSENT) is _ABSENT


def wrong_unset(cfg: DictConfig, fields: tuple[str, ...], prefix: str = "") -> list[str]:
    """One message per field of `fields` (dotted keys) that `cfg` leaves null or empty, or lacks."""
    wrong = []
    for field in fields:
        value = OmegaConf.select(cfg, field, default=_ABSENT)
        if value is _ABSENT:
            wrong.append(f"{prefix}{field} must be set, but the config has no such key (a checkpoint saved before "
                         "the setting existed has none)")
        elif value is None or value == "":
            wrong.append(f"{prefix}{field} must be set, got {'null' if value is None else repr(value)}")
    return wrong


def _root_cause(err: BaseException) -> BaseException:
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def instantiate(cfg: Any, what: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but a failure names the config field and its real cause (a `UserError` the class
    raises names its own setting, and is raised as it is)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        target = cfg.get("_target_", "?") if isinstance(cfg, DictConfig) else "?"
        cause = _root_cause(err)
        if isinstance(cause, UserError):  # the class's own check, naming its setting
            raise cause.with_traceback(cause.__traceback__) from None
        detail = f"{type(cause).__name__}: {cause}" if cause is not err else str(err).splitlines()[0]
        raise UserError(f"cannot build {what} (_target_={target}): {detail}") from err


def unused_backbone_settings(cfg: DictConfig, model: Any, given: Sequence[str] = ()) -> list[str]:
    """Warnings for backbone settings that will not act: `dropout` with one layer (it drops between stacked
    layers), and each `given` key whose value a backbone of the task's built `model` does not have (a task may
    set, say, `bidirectional` from its own config, or build a one-way decoder beside a two-way encoder)."""
    from gru_suite.backbone import GRUBackbone

    settings, messages = cfg.backbone, []
    if settings.get("dropout") and settings.get("num_layers") == 1:
        messages.append(f"backbone.dropout={settings.dropout} has no effect with backbone.num_layers=1: it drops "
                        "between stacked layers (the task's own dropout settings act on its inputs and outputs)")
    backbones = [(name, module) for name, module in model.named_modules() if isinstance(module, GRUBackbone)]
    for key in given:
        for name, backbone in backbones:
            if not hasattr(backbone, key) or getattr(backbone, key) == settings.get(key):
                continue
            shown = [str(v).lower() if isinstance(v, bool) else v for v in (settings.get(key), getattr(backbone, key))]
            messages.append(f"backbone.{key}={shown[0]} is not what task {cfg.task.name!r} builds: its model's "
                            f"{name} has {key}={shown[1]}, which the task sets")
    return messages
