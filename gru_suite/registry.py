"""Task discovery through the `gru_suite.tasks` entry-point group.

Each entry point names a task class (`package.module:Class`). The task's Hydra
config entries live in a `conf/` folder beside that module and are found without
importing the module, so listing tasks and composing configs stay fast and a
task that fails to import breaks nobody else.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import traceback
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gru_suite.errors import UserError

if TYPE_CHECKING:
    from gru_suite.task import TaskPlugin

ENTRY_POINT_GROUP = "gru_suite.tasks"
CORE_DISTRIBUTION = "gru-suite"
"""The distribution of the core and its built-in tasks, whose task names no other package can take."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEntry:
    """One installed task, known by its entry point; nothing imported yet."""

    name: str
    target: str
    distribution: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def package(self) -> str:
        return self.module.rpartition(".")[0] or self.module

    def config_dir(self) -> Path | None:
        """The task's `conf/` folder (found beside its module), or None."""
        try:
            spec = importlib.util.find_spec(self.package)
        except Exception:  # a broken parent package: reported when the task is loaded
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        conf = Path(next(iter(spec.submodule_search_locations))) / "conf"
        return conf if conf.is_dir() else None

    def config_file(self) -> Path | None:
        """The task's `conf/task/<name>.yaml`, or None where the package ships none."""
        conf = self.config_dir()
        path = conf / "task" / f"{self.name}.yaml" if conf else None
        return path if path is not None and path.is_file() else None

    def require_config_file(self) -> Path:
        """`config_file()`, or a UserError naming the file the package must ship, or naming it (or the task's
        trainer defaults) when it is no YAML (Hydra would fail on it with a traceback)."""
        if (path := self.config_file()) is None:
            try:
                found = importlib.util.find_spec(self.package)
            except Exception:  # a parent package that fails to import, not a missing config: its own error says why
                found = None
            if found is None:  # no such package (a misspelt entry point) or a broken one: loading it says which
                self.load()
            conf = self.config_dir()
            shipped = sorted(config.stem for config in conf.glob("task/*.yaml")) if conf else []
            if shipped:  # the configs are installed: the entry point's name is not theirs
                raise UserError(f"task {self.name!r} from package {self.distribution!r}: its conf/task/ beside "
                                f"{self.module} holds {', '.join(f'{s}.yaml' for s in shipped)}, not {self.name}.yaml: "
                                "an entry point's name is its task config's file name (and the config's `name`): "
                                "rename one, or ship the missing config")
            if (elsewhere := self._config_in_a_parent_package()) is not None:
                raise UserError(f"task {self.name!r} from package {self.distribution!r}: its config is {elsewhere}, "
                                f"but a task's conf/ folder sits beside its entry point's module {self.module}: move "
                                f"its config (and its presets and trainer defaults) into "
                                f"{self.package.replace('.', '/')}/conf/")
            raise UserError(
                f"task {self.name!r} from package {self.distribution!r} ships no conf/task/{self.name}.yaml beside "
                f"{self.module}: a plugin's configs must be installed with it (package data)"
            )
        for config in (path, path.parents[1] / "task_trainer" / path.name):  # what selecting the task reads
            if not config.is_file():
                continue
            try:
                yaml.safe_load(config.read_text(encoding="utf-8"))
            except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
                raise UserError(f"task {self.name!r} from package {self.distribution!r}: its config {config} cannot "
                                f"be read: {' '.join(str(err).split())}") from err
        return path

    def _config_in_a_parent_package(self) -> Path | None:
        """The task's `conf/task/<name>.yaml` found in a package above its module's (where it is not read), or None."""
        parts = self.package.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            try:
                spec = importlib.util.find_spec(".".join(parts[:depth]))
            except Exception:
                return None
            for folder in (spec.submodule_search_locations or []) if spec else []:
                if (path := Path(folder) / "conf" / "task" / f"{self.name}.yaml").is_file():
                    return path
        return None

    def description(self) -> str:
        """The `description` line of the task's config, read without importing it."""
        if (path := self.config_file()) is None:
            return f"(no conf/task/{self.name}.yaml found)"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            return f"(unreadable config {path}: {' '.join(str(err).split())})"
        if not isinstance(config, dict):
            return f"(config {path} is not a mapping of keys)"
        return str(config.get("description") or "").strip() or f"(no description in {path})"

    def load(self) -> type[TaskPlugin]:
        """Import the task class; any failure becomes one line naming task and package."""
        module_name, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as err:  # a broken plugin must not take the others down
            raise UserError(
                f"task {self.name!r} from package {self.distribution!r} failed to load "
                f"({self.target}): {type(err).__name__}: {err}{_raised_at(err, self.module.partition('.')[0])}"
            ) from err
        return self._checked(obj)

    def _checked(self, obj: object) -> type[TaskPlugin]:
        """`obj`, if it is a task class the core can build: a TaskPlugin subclass with every abstract method
        defined and well-formed declarations; else one line naming the task and what is wrong."""
        from gru_suite.config import wrong_declarations
        from gru_suite.task import TaskPlugin

        where = f"task {self.name!r} from package {self.distribution!r} ({self.target})"
        if not (isinstance(obj, type) and issubclass(obj, TaskPlugin)):
            raise UserError(f"{where} names {obj!r}, which is not a subclass of gru_suite.task.TaskPlugin")
        if obj.__abstractmethods__:
            raise UserError(f"{where} does not define {', '.join(sorted(obj.__abstractmethods__))}, which every "
                            "TaskPlugin must")
        if wrong := wrong_declarations(obj):
            raise UserError(f"{where} declares settings it cannot check: {'; '.join(wrong)}")
        return obj


def _raised_at(err: BaseException, package: str) -> str:
    """` (at file:line)` of the innermost frame of the plugin's own `package` that raised `err` (else the
    innermost frame), or "" when it has none (a missing module or attribute is raised by the import machinery,
    and its message says enough)."""
    frames = [frame for frame in traceback.extract_tb(err.__traceback__)
              if "importlib" not in frame.filename and frame.filename != __file__]
    own = [frame for frame in frames if package in Path(frame.filename).parts]
    if not frames:
        return ""
    inner = (own or frames)[-1]
    return f" (at {inner.filename}:{inner.lineno})"


@cache
def installed_tasks() -> dict[str, TaskEntry]:
    """All tasks declared by installed distributions, by name. A name declared twice is the core's built-in if it
    is one, else the first distribution's by name (not the order site-packages happens to list them in)."""
    tasks: dict[str, TaskEntry] = {}
    dist_of = lambda ep: ep.dist.name if ep.dist is not None else "?"  # noqa: E731
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (dist_of(ep) != CORE_DISTRIBUTION,
                                                                             dist_of(ep))):
        dist = dist_of(ep)
        if (first := tasks.get(ep.name)) is not None and first.target != ep.value:
            log.warning("task %r is declared twice: by %s (%s, used) and by %s (%s, ignored); task names must be "
                        "unique", ep.name, first.distribution, first.target, dist, ep.value)
        tasks.setdefault(ep.name, TaskEntry(ep.name, ep.value, dist))
    return dict(sorted(tasks.items()))


@cache
def shipped_task_config(name: str) -> dict:
    """Installed task `name`'s shipped `conf/task/<name>.yaml`, unresolved; empty for a task not installed or shipping
    no config."""
    entry = installed_tasks().get(name)
    path = entry.config_file() if entry is not None else None
    return _read_config(path) if path is not None else {}


@cache
def _read_config(path: Path) -> dict:
    """The YAML file at `path` as a plain dict, read once per process (shipped configs do not change under it;
    callers only read it)."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def task_switches(name: str) -> tuple[str, ...]:
    """The true/false settings of installed task `name` (keys under `task.` whose value in its shipped
    `conf/task/<name>.yaml` is true or false); none for a task not installed or shipping no config."""
    from gru_suite.config import switches_of

    return tuple(switches_of(shipped_task_config(name)))


def get_task(name: str) -> TaskEntry:
    """The entry for `name`, or a UserError listing the installed tasks."""
    tasks = installed_tasks()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; installed tasks: {', '.join(tasks) or 'none'}")
    return tasks[name]


def task_config_dirs() -> list[Path]:
    """The `conf/` folders of the installed tasks that have one, each once: the core's built-in tasks' first, so that
    a file another package also ships under a built-in's name (`conf/task/translation.yaml`) is not the one Hydra
    finds, then the other packages' by package name."""
    entries = sorted(installed_tasks().values(), key=lambda e: (e.distribution != CORE_DISTRIBUTION, e.distribution))
    return list(dict.fromkeys(conf for entry in entries if (conf := entry.config_dir()) is not None))


def config_search_path() -> list[str]:
    """Hydra search-path entries for every installed task's config folder, in `task_config_dirs`' order."""
    return [f"file://{folder}" for folder in task_config_dirs()]


def searchpath_override(folders: list[str]) -> str:
    """The `hydra.searchpath=[...]` override listing `folders` (`config_search_path`'s entries), each quoted: a
    folder's name may hold a space, a comma or a letter outside ASCII (a project installed under /home/josé)."""
    quoted = ('"' + str(folder).replace('"', '\\"') + '"' for folder in folders)
    return f"hydra.searchpath=[{','.join(quoted)}]"


# config groups a task's own config pulls in; nobody selects them on the command line
TASK_INTERNAL_GROUPS = frozenset({"task_trainer"})


def group_options(group: str, folders: list[Path]) -> list[str]:
    """The options of config group `group` in `folders`: its YAML files' paths below the group's folder, without
    the suffix (`experiment=sub/name` for a file in a subfolder), sorted."""
    return sorted({path.relative_to(folder / group).with_suffix("").as_posix()
                   for folder in folders if (folder / group).is_dir() for path in (folder / group).rglob("*.yaml")})


def format_task_config_groups(command: str = "train") -> str:
    """One line per config group that installed tasks add (`task`, `experiment`, ...) and `command` (its config's
    name: train, eval, ...) accepts, with its options."""
    return _format_groups(task_config_dirs(), TASK_INTERNAL_GROUPS | groups_left_out(command))


def format_core_config_groups(command: str = "train") -> str:
    """One line per config group of the core that `command` accepts (`backbone`, `trainer`, ...), with its
    options."""
    from gru_suite.config import CONF_DIR

    return _format_groups([CONF_DIR], {"hydra"} | groups_left_out(command))


def groups_left_out(command: str) -> set[str]:
    """The config groups that training composes and `command` (its config's name) does not, so refuses."""
    return _composed_groups("train") - _composed_groups(command)


def _composed_groups(command: str) -> set[str]:
    from gru_suite.config import CONF_DIR

    defaults = _read_config(CONF_DIR / f"{command}.yaml").get("defaults", [])
    return {next(iter(item)) for item in defaults if isinstance(item, dict)}


def _format_groups(folders: list[Path], left_out: Collection[str]) -> str:
    groups = sorted({path.name for folder in folders for path in folder.iterdir()
                     if path.is_dir() and path.name not in left_out})
    return "\n".join(f"{group}: {', '.join(options)}" for group in groups if (options := group_options(group, folders)))


def no_task_message() -> str:
    """What `gru-suite` without a task says: how to choose one, and the installed tasks."""
    return ("error: no task selected. Choose one with task=NAME, e.g. `gru-suite task=forecasting`.\n"
            f"Installed tasks:\n{format_task_list()}")


def format_task_list() -> str:
    """One line per installed task: name, description, package."""
    tasks = installed_tasks()
    if not tasks:
        return "  (no tasks installed)"
    width = max(map(len, tasks))
    return "\n".join(
        f"  {name:<{width}}  {entry.description()}  [{entry.distribution}]" for name, entry in tasks.items()
    )
