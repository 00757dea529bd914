"""Command-line entry points. Each is a Hydra app; torch loads only once a command runs."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gru_suite.errors import DivergedRun, UserError, filesystem_error_in, user_error_in

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gru_suite.config import NumberField
    from gru_suite.sweep import Job

SEARCHPATH_KEY = "hydra.searchpath="


def _add_task_configs_to_searchpath() -> None:
    """Let Hydra see every installed task's config folder (found via entry points), after the user's own
    `hydra.searchpath=[...]` folders when given; each quoted, as a folder's name may hold a space, a comma or a
    letter outside ASCII (a project installed under /home/josé)."""
    from hydra.core.override_parser.types import ChoiceSweep

    from gru_suite.registry import config_search_path, searchpath_override

    args = sys.argv[1:]
    for i, arg in enumerate(args, 1):
        if arg.startswith(SEARCHPATH_KEY):
            own = _override_parser().parse_override(arg).value()  # read by now (_require_readable_overrides)
            own = own.list if isinstance(own, ChoiceSweep) else own  # folders split by commas, without brackets
            if isinstance(own, (str, list)):  # else as given, for Hydra to name
                sys.argv[i] = searchpath_override([*(own if isinstance(own, list) else [own]), *config_search_path()])
            return
    # beside the other overrides: argparse rejects positionals split by options
    first_override = next((i for i, arg in enumerate(args) if "=" in arg and not arg.startswith("-")), len(args))
    sys.argv.insert(1 + first_override, searchpath_override(config_search_path()))


def _log_to_run_files(message: str) -> None:
    """Write `message` to the run's log files (Hydra's `<command>.log`), not to the console again."""
    record = logging.LogRecord("gru_suite", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _end_progress_line() -> None:
    """Close the progress bars an error interrupted, so that the error starts a line of its own and stays the last
    (a bar left open redraws itself when the process exits)."""
    if (tqdm := sys.modules.get("tqdm")) is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", None) or ()):
            bar.close()


def _require_task_for_task_overrides() -> None:
    """`task.*` overrides need the task's config group selected (`task=NAME`, or an experiment preset's)."""
    args = sys.argv[1:]
    chosen = any(a.startswith(("task=", "experiment=")) for a in args)
    if any(a.lstrip("+~").startswith("task.") for a in args) and not chosen:
        held = _checkpoint_task(_chosen("ckpt_path"))
        example = f"this checkpoint's: task={held}" if held else "e.g. task=forecasting task.data.path=..."
        print("error: task.* overrides need the task named too: task=NAME (the checkpoint's task, for eval, "
              f"predict and gates), {example}", file=sys.stderr)
        sys.exit(2)


def _checkpoint_task(path: str | None) -> str | None:
    """The task of the checkpoint at `path`, for an error's hint; None if there is none to read."""
    if not path or not Path(path).is_file():
        return None
    from gru_suite.checkpoint import read_checkpoint, stored_config

    try:
        return str(stored_config(read_checkpoint(path)).task.name)
    except (UserError, KeyError, AttributeError):
        return None


def _require_known_task() -> None:
    """`task=NAME` names an installed task: one line listing them, not Hydra's search-path dump."""
    from gru_suite.registry import get_task, no_task_message

    args = sys.argv[1:]
    if any(arg.startswith(SEARCHPATH_KEY) for arg in args):  # the user's own config folders may add tasks
        return
    if "task=null" in args:  # no task, not Hydra's "Config group override must be a string" traceback
        print(no_task_message(), file=sys.stderr)
        sys.exit(2)
    if task := _chosen("task"):
        try:
            get_task(task).require_config_file()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


def _chosen(group: str) -> str | None:
    """The option `group=NAME` picks on the command line; None where it picks none, or sweeps several (Hydra's)."""
    values = [arg.partition("=")[2] for arg in sys.argv[1:] if arg.startswith(f"{group}=")]
    return values[-1] if values and values[-1] and not any(c in values[-1] for c in ",()") else None


def _refuse_another_tasks_preset() -> None:
    """`experiment=NAME` with `task=OTHER`: the preset holds its own task's settings, which the other task would not
    read (it trained silently on them); one line naming the preset's task."""
    from gru_suite.registry import installed_tasks

    task, experiment = _chosen("task"), _chosen("experiment")
    if not task or not experiment:
        return
    owners = [name for name, entry in installed_tasks().items()
              if (conf := entry.config_dir()) is not None and (conf / "experiment" / f"{experiment}.yaml").is_file()]
    if owners and task not in owners:
        print(f"error: experiment={experiment} is a preset of task {' and '.join(owners)}, not of task={task}: drop "
              f"task={task} (the preset selects its task), or choose a preset of task {task}", file=sys.stderr)
        sys.exit(2)


@functools.cache
def _override_parser() -> Any:
    """Hydra's override parser, built once per command (it is read by two checks)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _require_readable_overrides() -> None:
    """Each command-line override reads in Hydra's grammar: else one line naming it, where it stops and how to quote
    a value, not Hydra's grammar error (which says neither)."""
    from hydra.errors import OverrideParseException

    overrides = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    if not overrides:  # `--help`: Hydra's parser is not built for nothing
        return
    parser = _override_parser()
    for arg in overrides:
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            first, *rest = str(err).splitlines()
            caret = rest[0].find("^") - first.find(arg) if rest and "^" in rest[0] and arg in first else -1
            where = f"at {arg[caret]!r}" if 0 <= caret < len(arg) else f"({first})"
            print(f"error: cannot read the override {arg!r} {where}: quote a value holding spaces, quotes, brackets, "
                  "'#' or letters outside ASCII, as in 'task.data.path=\"/my data/café.csv\"' (the shell's quotes "
                  "around Hydra's)", file=sys.stderr)
            sys.exit(2)


def _require_known_options() -> None:
    """`group=NAME` names a config of that group: one line listing the group's options (`unknown_group_option`),
    not Hydra's search-path dump (nor, for `group=null`, its ValueError traceback)."""
    from gru_suite.overrides import unknown_group_option

    if message := unknown_group_option(sys.argv[1:]):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _optuna_sweeper_installed() -> bool:
    """Whether hydra-optuna-sweeper is importable (False also where no Hydra plugin at all is installed)."""
    from importlib.util import find_spec

    try:
        return find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:  # no Hydra plugin installed at all: `hydra_plugins` itself is missing
        return False


def _require_sweeper_plugin() -> None:
    """`hparams_search=optuna` (or `hydra/sweeper=optuna`) needs Hydra's Optuna sweeper installed: one line
    naming the extra to install, not Hydra's search-path dump."""
    if {"hparams_search=optuna", "hydra/sweeper=optuna"} & {arg.lstrip("+") for arg in sys.argv[1:]} and \
            not _optuna_sweeper_installed():
        print("error: hparams_search=optuna needs Hydra's Optuna sweeper: pip install \"gru-suite[optuna]\" "
              "(or hydra-optuna-sweeper)", file=sys.stderr)
        sys.exit(2)


def _refuse_model_overrides() -> None:
    """A checkpoint's own backbone, optimizer and scheduler are used: one line rather than Hydra's 'not in
    struct' (or, with `+`, an override silently ignored)."""
    from gru_suite.config import MODEL_CONFIG_KEYS
    from gru_suite.overrides import override_key

    fixed = set(MODEL_CONFIG_KEYS) - {"task"}
    for arg in sys.argv[1:]:
        if ("=" in arg or arg.startswith("~")) and override_key(arg).split(".")[0] in fixed:
            print(f"error: {arg}: the backbone, optimizer and scheduler are the checkpoint's; only task.* and run "
                  "settings (trainer, threads, paths, ...) can be changed here", file=sys.stderr)
            sys.exit(2)


def _warn_undeclared_settings(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    import yaml

    from gru_suite.config import CONF_DIR
    from gru_suite.overrides import command_line_overrides, undeclared_run_settings, undeclared_settings

    hydra_cfg = HydraConfig.get()
    overrides = command_line_overrides(hydra_cfg)
    own = yaml.safe_load((CONF_DIR / f"{hydra_cfg.job.config_name}.yaml").read_text(encoding="utf-8"))
    declared = [*own, *hydra_cfg.runtime.choices, "hydra"]  # the command's own settings, and config groups
    messages = undeclared_run_settings(overrides, declared, Path(sys.argv[0]).name)
    if cfg.get("task") is not None:
        messages += undeclared_settings(overrides, cfg)
    for message in messages:
        logging.getLogger("gru_suite").warning(message)


def _unset_key_read(err: BaseException) -> UserError | None:
    """A setting the code read that the composed config lacks (OmegaConf's "Key 'x' is not in struct"), as one
    line naming it: a plugin whose code reads a key its shipped config does not declare."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(err, (ConfigAttributeError, ConfigKeyError)) or "is not in struct" not in str(err):
        return None
    return UserError(f"{err.full_key}: the code reads this setting, but the config has none (a task's code reads only "
                     "keys its conf/task/<name>.yaml declares; check_task_plugin names the missing ones)")


def _unresolvable_value(err: BaseException) -> UserError | None:
    """A setting whose `${...}` could not be resolved (an unset environment variable, a key that does not exist), as
    one line naming it."""
    from omegaconf.errors import InterpolationResolutionError

    if not isinstance(err, InterpolationResolutionError):
        return None
    reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", str(err).strip().splitlines()[0])
    return UserError(f"{err.full_key}: {reason} (a literal '${{' in a value is written '\\${{')")


def _run_app(config_name: str, body: Callable[[Any], Any]) -> None:
    import hydra

    from gru_suite.config import CONF_DIR, register_resolvers

    register_resolvers()

    failed_jobs: list[str] = []
    crashed_jobs: list[str] = []
    unfinished: list[Job] = []  # the failed and crashed jobs, for the summary of a sweep with no result
    sweep_dir: list[str] = []  # once a sweep's first job starts: where a stop between its jobs resumes

    def resumable_sweep() -> str | None:
        """The folder of the training sweep under way, which a rerun with `ckpt_path=last` resumes; else None."""
        return next(iter(sweep_dir), None) if config_name == "train" else None

    def resumable_run(cfg: Any) -> Path | None:
        """The checkpoint folder of a training run, which a rerun with `ckpt_path=last` resumes; else None (eval,
        predict and gates resume nothing, whatever their folder holds)."""
        from gru_suite.run_folder import checkpoint_folder

        return checkpoint_folder(cfg) if config_name == "train" else None

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def app(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from gru_suite.overrides import command_line_overrides
        from gru_suite.run_folder import keep_earlier_file, restore_earlier_work
        from gru_suite.sweep import ERROR_NAME, file_time_now_ns, sweep_job

        started_ns = file_time_now_ns()
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a sweep rerun into its folder: this job's own error, if any
            sweep_dir[:] = [HydraConfig.get().sweep.dir]
            keep_earlier_file(Path(HydraConfig.get().runtime.output_dir) / ERROR_NAME)
        _warn_undeclared_settings(cfg)
        try:
            return body(cfg)
        except SystemExit as stop:
            _stop_on_signal(stop, resumable_run(cfg), resumable_sweep())
            raise
        except KeyboardInterrupt:  # outside Lightning's loops
            stopped("interrupted", resumable_run(cfg), 130, resumable_sweep())
        except Exception as err:
            user_error = (user_error_in(err) or _unset_key_read(err) or _unresolvable_value(err)
                          or filesystem_error_in(err, HydraConfig.get().runtime.output_dir))  # read-only, full, ...
            sweep = HydraConfig.get().mode == RunMode.MULTIRUN
            if user_error is None and not sweep:
                _stop_for_a_lost_peer(err, Path(HydraConfig.get().runtime.output_dir), config_name)
                raise
            _end_progress_line()
            if user_error is not None:
                if not sweep:  # first: the error is the last line
                    restore_earlier_work()
                print(f"error: {user_error}", file=sys.stderr)
                _log_to_run_files(f"error: {user_error}")
                if not sweep:
                    sys.exit(2)
                if isinstance(user_error, DivergedRun):  # a result for the sweep: the worst, whatever it scored
                    return math.inf if cfg.task.get("monitor_mode", "min") == "min" else -math.inf
            job, folder = HydraConfig.get().job.num, Path(HydraConfig.get().runtime.output_dir)  # a sweep's job
            if user_error is None:  # a crash (a bug, out of memory): the sweep's other jobs still run, summed up
                log.exception("sweep job %s crashed", job)
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
                write_job_error(folder, f"crashed: {type(err).__name__}: {first_line} (the traceback is in this job's "
                                        "log)")
                crashed_jobs.append(job)
            else:
                write_job_error(folder, str(user_error))
                failed_jobs.append(job)  # the sweep goes on; its exit code says so at the end
            unfinished.append(sweep_job(HydraConfig.get(), command_line_overrides(HydraConfig.get()), cfg.get("task"),
                                        started_ns))
            if len(unfinished) == HydraConfig.get().sweeper.get("n_trials"):  # Optuna's last trial
                _end_sweep_without_a_result(Path(HydraConfig.get().sweep.dir), unfinished, 1 if crashed_jobs else 2)
            return None

    _require_readable_overrides()
    _require_task_for_task_overrides()
    _require_known_task()
    _refuse_another_tasks_preset()
    _require_sweeper_plugin()
    if config_name != "train":
        _refuse_model_overrides()
    _require_known_options()
    _add_task_configs_to_searchpath()
    from gru_suite.sweep import LAUNCH_FORMAT, LAUNCH_TIME

    os.environ.setdefault(LAUNCH_TIME, time.strftime(LAUNCH_FORMAT))  # a DDP job's processes: one sweep folder
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        app()
    except Terminated:  # outside a job's run: between a sweep's jobs, or as one starts
        stopped("stopped by SIGTERM", None, 143, resumable_sweep())
    except KeyboardInterrupt:
        stopped("interrupted", None, 130, resumable_sweep())
    finally:
        signal.signal(signal.SIGTERM, previous)  # for a caller in the same process (a test, a script)
    if crashed_jobs:
        print(f"error: {len(crashed_jobs)} job(s) of the sweep crashed: {crashed_jobs} (each one's error.txt and log)"
              + (f"; {len(failed_jobs)} failed on bad input: {failed_jobs}" if failed_jobs else ""), file=sys.stderr)
        sys.exit(1)
    if failed_jobs:
        print(f"error: {len(failed_jobs)} job(s) of the sweep failed: {failed_jobs} (each one's error.txt)",
              file=sys.stderr)
        sys.exit(2)


def _end_sweep_without_a_result(sweep_dir: Path, jobs: list[Job], code: int) -> None:
    """Every trial of an optimizing sweeper (Optuna) failed: it would then fail asking for its best trial, with a
    traceback and no summary. Write the summary of `jobs`, say so in one line, exit with `code` (1 where a trial
    crashed, 2 where all failed on bad input). The sweep's own callback never sees the last trial end."""
    from gru_suite.sweep import write_summary

    write_summary(sweep_dir, jobs)
    print(f"error: all {len(jobs)} trials of the sweep failed (each one's error.txt)", file=sys.stderr)
    sys.exit(code)


def _stop_for_a_lost_peer(err: BaseException, run_dir: Path, command: str) -> None:
    """End with one line and exit code 1 where `err` is this process's side of another DDP process's failure (whose
    own error that process prints): a traceback of a closed connection would hide the cause."""
    from gru_suite.distributed import lost_peer

    if (message := lost_peer(err, run_dir, command)) is not None:
        _end_progress_line()
        print(f"error: {message}", file=sys.stderr)
        _log_to_run_files(f"error: {message}")
        sys.exit(1)


class Terminated(SystemExit):
    """Raised by `_stop_on_sigterm`: the command got SIGTERM outside Lightning's loops (exit code 143, should it
    escape)."""

    def __init__(self) -> None:
        super().__init__(143)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside Lightning's loops (reading the data, between a sweep's jobs) ends the command as one inside
    them does (`_stop_on_signal`), where Python would end it without a word. Inside them Lightning's handler runs
    (and calls this one, which then leaves the stop to it, at the step's end); a process Lightning started ends
    at once, as before, with the first."""
    from gru_suite.distributed import FIRST_PROCESS_VARIABLE

    if signal.getsignal(signal.SIGTERM) is not _stop_on_sigterm:  # Lightning's, which stops the run itself
        return
    if os.environ.get(FIRST_PROCESS_VARIABLE, str(os.getpid())) != str(os.getpid()):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    raise Terminated


def _stop_on_signal(stop: SystemExit, checkpoints: Path | None, sweep_dir: str | None) -> None:
    """Lightning ends a run that got SIGTERM with a SystemExit without a code, which exits 0 (`_stop_on_sigterm`
    with a `Terminated` outside its loops), and one interrupted by Ctrl-C with exit code 1: one line (where to
    resume from, if a checkpoint was saved) and exit code 143 or 130 (128 + the signal), which also ends a sweep."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(stop, SIGTERMException | Terminated):
        stopped("stopped by SIGTERM", checkpoints, 143, sweep_dir)
    if isinstance(stop.__context__, KeyboardInterrupt):
        stopped("interrupted", checkpoints, 130, sweep_dir)


def stopped(why: str, checkpoints: Path | None, code: int, sweep_dir: str | None = None) -> None:
    """End a stopped command with one line, saying how to resume if the run saved a checkpoint (in its folder
    `checkpoints`, or for a training sweep in `sweep_dir`, in any of its jobs'): the same command with
    `ckpt_path=last` in the same run folder (a sweep: the same sweep folder); exit with `code`."""
    from hydra.core.hydra_config import HydraConfig

    _end_progress_line()
    last, message = checkpoints / "last.ckpt" if checkpoints else None, f"error: {why}"
    kept = last is not None and last.is_file()
    if sweep_dir is not None and (kept or any(Path(sweep_dir).glob("**/checkpoints/last.ckpt"))):  # the rerun resumes
        message += f"; resume: the same command with ckpt_path=last hydra.sweep.dir={sweep_dir}"
    elif kept and not HydraConfig.initialized():
        message += f"; resume with ckpt_path={last}"
    elif kept and sweep_dir is None:
        folder = HydraConfig.get().runtime.output_dir
        message += f"; resume: the same command with ckpt_path=last hydra.run.dir={folder}"
    print(message, file=sys.stderr)
    _log_to_run_files(message)
    sys.exit(code)


def write_job_error(folder: Path, message: str) -> None:
    """A failed sweep job's error, as `<job folder>/error.txt` (the sweep summary lists it)."""
    from gru_suite.atomic import write_text
    from gru_suite.sweep import ERROR_NAME

    write_text(folder / ERROR_NAME, message + "\n")


def _restore(cfg: Any, path: str | None = None, task_name: str | None = None,
             numbers: tuple[NumberField, ...] = ()) -> Any:
    """The TaskModule in `path` (default `cfg.ckpt_path`), with the user's `task.*` overrides applied; it must
    hold a model of the `task=` chosen, if any, or of `task_name` (an ensemble's first model's task). For the
    first model, the run's wrong settings (the core's, the command's `numbers` and the task's) are named at once
    before it is built; overrides of settings training fixed (`TaskPlugin.trained_settings`) take the checkpoint's
    values back, with a warning."""
    from hydra.core.hydra_config import HydraConfig

    from gru_suite import registry
    from gru_suite.checkpoint import read_checkpoint, restore, stored_config
    from gru_suite.config import check_run_settings
    from gru_suite.files import launch_path
    from gru_suite.overrides import apply_overrides, command_line_overrides
    from gru_suite.task import wrong_task_settings

    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is required, e.g. ckpt_path=outputs/.../checkpoints/last.ckpt")
    path = str(launch_path(str(cfg.ckpt_path if path is None else path)))
    checkpoint = read_checkpoint(path)
    stored = stored_config(checkpoint)
    if stored.task.name not in (installed := registry.installed_tasks()):
        raise UserError(f"{path} holds a model of task {stored.task.name!r}, which no installed package provides "
                        f"(installed tasks: {', '.join(installed) or 'none'}): install the plugin it was trained with")
    if cfg.get("task") is not None and cfg.task.name != stored.task.name:
        raise UserError(f"{path} holds a model of task {stored.task.name!r}, not task={cfg.task.name}")
    if task_name is not None and task_name != stored.task.name:
        raise UserError(f"ensemble: {path} holds a model of task {stored.task.name!r}, {cfg.ckpt_path} one of "
                        f"task {task_name!r}")
    task_cfg = apply_overrides(stored.task, cfg, command_line_overrides(HydraConfig.get()), "task")
    task_cls = registry.get_task(task_cfg.name).load()
    if task_name is None:
        check_run_settings(cfg, numbers, task=wrong_task_settings(task_cls, task_cfg))
    return restore(checkpoint, task_cfg, str(path))  # the settings training fixed keep its values, with a warning


def _train_body(cfg: Any) -> Any:
    if cfg.get("task") is None:  # RequireTask refuses first; a callback's failure is only Hydra's warning
        from gru_suite.registry import no_task_message

        print(no_task_message(), file=sys.stderr)
        sys.exit(2)
    from hydra.core.hydra_config import HydraConfig

    from gru_suite.run import train as run_train

    chosen, name = HydraConfig.get().runtime.choices.get("task"), cfg.task.get("name")
    if chosen and name != chosen:  # a plugin's config file that names another task (or none)
        raise UserError(f"conf/task/{chosen}.yaml of task {chosen!r} sets name: {name!r}; it must be {chosen!r}, "
                        "the task's entry-point name")
    return sweep_value(run_train(cfg), cfg.get("optimized_metric") or "", cfg.task.get("monitor_mode", "min"))


def sweep_value(metrics: dict[str, float], wanted: str, mode: str) -> float | None:
    """What a run returns to a sweeper: `wanted` at the tested checkpoint (`<wanted>_best`, where it was chosen),
    else its last value; NaN (a diverged run) becomes the worst value for `mode`, which a search can rank."""
    value = metrics.get(f"{wanted}_best", metrics.get(wanted))
    if value is not None and math.isnan(value):
        return math.inf if mode == "min" else -math.inf
    return value


def _eval_body(cfg: Any) -> None:
    from gru_suite.run import evaluate as run_evaluate

    module = _restore(cfg)
    run_evaluate(cfg, module.task, module)


def _predict_body(cfg: Any) -> None:
    from gru_suite.run import predict as run_predict

    paths = _ensemble_paths(cfg)
    module = _restore(cfg)
    ensemble = [(path, _restore(cfg, path, module.task.cfg.name)) for path in paths]
    run_predict(cfg, module.task, module, ensemble)  # logs what it wrote


def _ensemble_paths(cfg: Any) -> list[str]:
    """`ensemble`: one checkpoint path or a list of them, the models predicting beside `ckpt_path` (an empty
    value is none)."""
    from omegaconf import ListConfig

    from gru_suite.files import launch_path

    paths = cfg.get("ensemble")
    if paths is None or paths == "":
        return []
    if not isinstance(paths, (str, ListConfig)) or not all(isinstance(p, str) and p for p in paths):
        raise UserError(f"ensemble: expected a checkpoint path or a list of them, e.g. 'ensemble=[b.ckpt,c.ckpt]', "
                        f"got {paths!r}")
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = [launch_path(p).resolve() for p in [*paths, str(cfg.get("ckpt_path") or "")]]
    if repeated := sorted({p for p, file in zip(paths, files) if files.count(file) > 1}):
        raise UserError(f"ensemble: {repeated} given more than once (ckpt_path is the first model; list each "
                        "model once)")
    return paths


def _gates_body(cfg: Any) -> None:
    from gru_suite.gates import plot_model_gates
    from gru_suite.artifacts import artifact_lines, written_in_place
    from gru_suite.run import apply_threads

    module = _restore(cfg, numbers=(("sample", int, 0),))  # names wrong settings as train, eval and predict do
    apply_threads(cfg)
    log = logging.getLogger("gru_suite.gates")  # as train and predict do, into gates.log too
    view = None

    def plot(folder: Path) -> list[Path]:
        nonlocal view
        view, paths = plot_model_gates(module, folder, sample=cfg.sample)
        return paths

    paths = written_in_place(Path(cfg.paths.output_dir), plot)  # beside an earlier run's, never over them
    log.info("sample %d is %s", cfg.sample, view.title if view is not None else
             f"sequence {cfg.sample} of the prediction data (the task does not describe its sequences)")
    for line in artifact_lines(paths):
        log.info("wrote %s", line)


def train() -> None:
    """`gru-suite`: train a task. Bare, it lists the installed tasks and exits non-zero."""
    if len(sys.argv) == 1:
        from gru_suite.registry import no_task_message

        print(no_task_message(), file=sys.stderr)
        sys.exit(2)
    _run_app("train", _train_body)


def evaluate() -> None:
    """`gru-suite-eval ckpt_path=...`: test metrics of a checkpoint."""
    _run_app("eval", _eval_body)


def predict() -> None:
    """`gru-suite-predict ckpt_path=...`: write a checkpoint's artifacts."""
    _run_app("predict", _predict_body)


def gates() -> None:
    """`gru-suite-gates ckpt_path=...`: heat maps of a trained GRU's gates on one input."""
    _run_app("gates", _gates_body)
