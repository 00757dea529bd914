"""Keeping what an earlier run left in the folder a new run writes into."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import socket
import sys
from contextlib import suppress
from itertools import count
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from gru_suite.errors import filesystem_error_in
from gru_suite.registry import no_task_message

log = logging.getLogger(__name__)


def checkpoint_folder(cfg: DictConfig) -> Path:
    """Where the run's checkpoints go: `callbacks.model_checkpoint.dirpath` (by default the run folder's
    `checkpoints/`), or the run folder's `checkpoints/` where no callback of the suite's says."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<stem>.N<suffix>` (N = 1, 2, ...) beside it; returns the new path."""
    return move_aside(path, next(new for n in count(1)
                                 if not (new := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists()))


def keep_earlier_file(path: Path) -> None:
    """Set aside an earlier run's `path` (`summary.csv` to `summary.1.csv`; a file, a folder or a link) before this
    run writes its own there."""
    if path.exists() or path.is_symlink():
        log.info("kept the earlier %s as %s", path, set_aside(path).name)


_moved_aside: list[tuple[Path, Path]] = []
"""What this process moved aside (`move_aside`) during its run: (the place, where it went), absolute, in order."""


def move_aside(path: Path, kept: Path) -> Path:
    """Rename an earlier run's `path` to `kept`, remembered so that a refused run gives it back
    (`restore_earlier_work`); returns `kept`."""
    path.rename(kept)
    _moved_aside.append((absolute(path), absolute(kept)))
    return kept


def absolute(path: Path) -> Path:
    """`path` from the root, `..` taken away by name (as Hydra's run folders are), links not followed."""
    return Path(os.path.abspath(path))


STAGING = ".artifacts.partial"
"""The hidden folder in an artifact folder where files are written before they move in
(`gru_suite.artifacts.written_in_place`)."""

LOCK_NAME = ".gru-suite.lock"
"""The file a run folder's first process holds locked (`flock`) while it runs there, naming it: `pid host job`."""

_held: dict[Path, int] = {}  # run folder -> descriptor of the lock file this process holds there


def job_identity() -> str:
    """What the processes of one multi-process launch share (torchrun's run id and rendezvous address, SLURM's job
    and step): the same for every process of a launch, different for two launches at once on one host."""
    parts = [os.environ.get(key, "") for key in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_ADDR",
                                                 "MASTER_PORT")]
    return "/".join(parts) if any(parts) else "-"


def hold_run_folder(run_dir: Path, setting: str = "hydra.run.dir") -> None:
    """Hold `run_dir` for this process until `release_run_folder` (or its exit: the lock dies with it), or exit 2
    with one line naming `setting` if another run holds it: a second run there would move the first one's live
    checkpoints, metrics and config aside. A process the holder started (Lightning's DDP workers) goes on; so does a
    run on a file system without locks, with a warning."""
    if not try_hold_run_folder(run_dir):
        _refuse(run_dir, _holder_of(run_dir), setting)


def hold_free_run_folder(run_dir: Path) -> Path:
    """Hold the first of `run_dir`, `<run_dir>_2`, `<run_dir>_3`, ... that no other run holds (`try_hold_run_folder`)
    and return it: two runs started in the same second, each in a folder named by the time, each get one."""
    folder, n = run_dir, 1
    while not try_hold_run_folder(folder):
        n += 1
        folder = run_dir.with_name(f"{run_dir.name}_{n}")
    return folder


def try_hold_run_folder(run_dir: Path) -> bool:
    """Hold `run_dir` as `hold_run_folder` does and say so; False, holding nothing, where another run holds it."""
    if run_dir in _held:
        return True
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_named(os.read(fd, 200).decode("utf-8", "replace"))
            os.close(fd)
            return holder is not None and holder[0] == os.getppid()
        except OSError as err:
            os.close(fd)
            log.warning("cannot lock %s (%s): nothing stops a second run there", lock, err)
            return True
        with suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # its holder removed it between open and lock: lock the file there now
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()} {job_identity()}\n".encode())
    _held[run_dir] = fd
    atexit.register(release_run_folder, run_dir)
    return True


def check_run_folder_job(run_dir: Path) -> None:
    """For a process of a multi-process launch other than its first: exit 2 with one line where a live process of
    another launch on this host holds `run_dir` (its first process, refused there, cannot stop the others)."""
    holder = _holder_of(run_dir)
    if holder is None or holder[0] == os.getppid() or holder[2] == job_identity() or holder[1] != socket.gethostname():
        return
    try:
        os.kill(holder[0], 0)
    except ProcessLookupError:  # a killed run's
        return
    except PermissionError:  # alive, another user's
        pass
    _refuse(run_dir, holder)


def release_run_folder(run_dir: Path) -> None:
    """Give up `run_dir`, which this process holds (`hold_run_folder`); nothing where it does not."""
    fd = _held.pop(run_dir, None)
    if fd is None:
        return
    with suppress(OSError):
        if os.stat(run_dir / LOCK_NAME).st_ino == os.fstat(fd).st_ino:
            (run_dir / LOCK_NAME).unlink()
    os.close(fd)


def _holder_of(run_dir: Path) -> tuple[int, str, str] | None:
    """(pid, host, job) that `run_dir`'s lock file names; None where it names none or cannot be read."""
    try:
        return _holder_named((run_dir / LOCK_NAME).read_text(encoding="utf-8"))
    except OSError:
        return None


def _holder_named(text: str) -> tuple[int, str, str] | None:
    """(pid, host, job) of a lock file's text; None where it names none."""
    parts = text.split()
    return (int(parts[0]), parts[1], parts[2]) if len(parts) == 3 and parts[0].isdigit() else None


def _refuse(run_dir: Path, holder: tuple[int, str, str] | None, setting: str = "hydra.run.dir") -> NoReturn:
    who = f"process {holder[0]} on {holder[1]}" if holder else "another run"
    print(f"error: {setting}={run_dir} is in use by {who}, a run still writing there: wait for it to end or "
          "choose another folder", file=sys.stderr)
    raise SystemExit(2)


class RequireTask(Callback):
    """Hydra callback of `gru-suite`: a command that selects no task (overrides, but no `task=` or experiment) ends
    with the installed tasks before Hydra makes a run or sweep folder for it (`outputs/None/...`). A sweep's config
    lacks its swept options, so a sweep passes when an override selects a task or an experiment."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") is None:
            _exit_without_task()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        chosen = (o.lstrip("+~").startswith(("task=", "experiment=")) for o in config.hydra.overrides.task)
        if config.get("task") is None and not any(chosen):
            _exit_without_task()


def _exit_without_task() -> NoReturn:
    """The no-task message and exit code 2 (Hydra turns a callback's other exceptions into warnings and goes on)."""
    try:
        print(no_task_message(), file=sys.stderr)
    finally:
        raise SystemExit(2)


Work = dict[str, tuple[int, int, int]]
"""A run folder's entries, each with its inode, size and modification time (`_work_in`)."""

_run_start: tuple[Path, Work, tuple[str, ...], Path | None] | None = None
"""This process's run folder (absolute) with its work when the run started (`KeepEarlierConfig`), the entry there
not counted as work (the one holding the composed config) and the config folder (`.hydra/`)."""


def _work_in(run_dir: Path, *skipped: str) -> Work | None:
    """The entries of `run_dir` but those `skipped` (the composed configs), logs, the lock and a staging folder for
    artifacts (`STAGING`, removed when artifacts are written: a killed run's), each with its inode,
    size and modification time (a link's own): what a run's work adds or changes there (a checkpoint replaced
    changes its folder's time); None where the folder cannot be listed."""
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return None
    work = {}
    for entry in entries:
        if entry.name in (*skipped, LOCK_NAME, STAGING) or entry.suffix == ".log":
            continue
        with suppress(OSError):  # gone since the listing
            stat = entry.lstat()
            work[entry.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return work


def restore_earlier_work() -> None:
    """After this run was refused (a wrong setting, bad input) having written nothing of its own in its folder but
    its log, its config and empty folders: what it moved aside there (`move_aside`: the earlier run's `.hydra/`,
    checkpoints, metrics, artifacts) comes back in their place. A run that wrote anything else keeps its own, the
    record of what it did, and the earlier run's stays aside."""
    moved, start = list(_moved_aside), _run_start
    _moved_aside.clear()
    if start is None or not moved:
        return
    run_dir, work, skipped, config = start
    expected, holding = dict(work), set()  # holding: entries with a moved one deeper inside (ck/ of ck/main)
    for place, kept in moved:
        if place.parent == run_dir and kept.parent == run_dir and place.name in expected:
            expected[kept.name] = expected.pop(place.name)
        elif place.is_relative_to(run_dir) and place.parent != run_dir:
            holding.add(place.relative_to(run_dir).parts[0])
    now = _work_in(run_dir, *skipped, *(kept.name for place, kept in moved if place == config))
    if now is None:
        return
    now = {name: entry for name, entry in now.items() if name in expected or not _empty_folder(run_dir / name)}
    if now.keys() != expected.keys() or any(now[name] != expected[name] if name not in holding else
                                            now[name][0] != expected[name][0] for name in now):
        return
    places = [place for place, _ in moved if place != config]
    if any(place.exists() and not _empty_folder(place) for place in places):  # e.g. a checkpoint folder elsewhere
        return
    with suppress(OSError):  # the folder is gone, or not ours to change: nothing to give back
        for place, kept in reversed(moved):
            if place == config:
                shutil.rmtree(place, ignore_errors=True)
            elif place.is_dir():
                place.rmdir()
            kept.rename(place)
        if places:  # the config's return goes without saying, as its moving did
            log.info("put back the earlier run's %s, which this run had moved aside",
                     ", ".join(p.name for p in places))


def _empty_folder(path: Path) -> bool:
    """Whether `path` is a folder (not a link to one) with nothing in it."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _hold_and_keep_earlier(config: DictConfig, run_dir: Path) -> None:
    """`KeepEarlierConfig.on_run_start`'s work in a run's first process: hold `run_dir`, note what it holds, and move
    an earlier `.hydra/` aside."""
    hold_run_folder(run_dir)
    global _run_start
    run_dir, subdir = absolute(run_dir), config.hydra.output_subdir  # the run may change directory (job.chdir)
    folder = run_dir / subdir if subdir else None
    skipped = (Path(subdir).parts[0],) if subdir and not Path(subdir).is_absolute() else ()
    _moved_aside.clear()
    work = _work_in(run_dir, *skipped)
    _run_start = (run_dir, work, skipped, folder) if work is not None else None
    if folder is None or not folder.is_dir():
        return
    with suppress(FileNotFoundError):  # another process of the run moved it first
        keep_earlier_file(folder)


class KeepEarlierConfig(Callback):
    """Hydra callback: a run into a folder that already holds a `.hydra/` (eval or predict into a training run's
    folder, a resumed run) first moves it to `.hydra.N/`, as `metrics.csv` moves to `metrics.N.csv`, so the
    earlier run's composed config is not written over; a run refused before it wrote anything moves it back
    (`restore_earlier_work`). Where every process of a multi-process run starts the command (torchrun, SLURM),
    the first process alone does it. First, the folder is held (`hold_run_folder`): a run still writing there
    refuses a second one."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra's run_job does next: run.dir may read ${hydra:...}
        run_dir = Path(config.hydra.run.dir)
        if blocking := next((p for p in (run_dir, *run_dir.parents) if p.is_file()), None):
            print(f"error: hydra.run.dir={run_dir}: {blocking} is a file, not a folder", file=sys.stderr)
            raise SystemExit(2)  # before Hydra creates the folder, which would fail in a traceback
        if folder := next((path for path in log_files(config) if path.is_dir()), None):
            print(f"error: hydra.run.dir={run_dir}: {folder} is a folder, where this run writes its log; move it or "
                  "run in another folder", file=sys.stderr)
            raise SystemExit(2)  # before Hydra opens it, which fails in a traceback
        if not first_process():
            check_run_folder_job(run_dir)  # the launch's first process holds the folder
            with read_write(config.hydra), open_dict(config.hydra):  # and writes its .hydra/, after moving the earlier
                config.hydra.output_subdir = None
            return
        try:
            if named_by_time(config.hydra.run) and single_process_launch():  # another run started in that second
                run_dir = hold_free_run_folder(run_dir)  # gets a folder of its own
                with read_write(config.hydra):
                    config.hydra.run.dir = str(run_dir)
            _hold_and_keep_earlier(config, run_dir)
        except OSError as err:  # Hydra would only warn, then write its config over the earlier run's
            print(f"error: hydra.run.dir={run_dir}: {filesystem_error_in(err, run_dir) or err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep holds its folder as a run does (`_hold_sweep_folder`). A sweep into the folder of an earlier one:
        each earlier job's `.hydra/` moves to `.hydra.N/` now, since Hydra writes a job's own before any callback of
        the job runs."""
        if first_process():
            _hold_sweep_folder(config)
        sweep_dir, subdir = Path(config.hydra.sweep.dir), config.hydra.output_subdir
        if not subdir or Path(subdir).is_absolute() or not sweep_dir.is_dir():
            return
        for job in sorted(sweep_dir.iterdir()):
            if (folder := job / subdir).is_dir() and not folder.is_symlink():
                keep_earlier_file(folder)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_run_folder(Path(config.hydra.sweep.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _run_start
        _run_start = None  # the run has ended: what it wrote stays
        _moved_aside.clear()
        release_run_folder(Path(config.hydra.run.dir))


def _hold_sweep_folder(config: DictConfig) -> None:
    """Hold the sweep's folder (`hold_run_folder`): a sweep, or a run, still at work there refuses this one. One
    named by the launch time (`GRU_SUITE_LAUNCH_TIME`, the default `multirun/<date_time>`) gives way to
    `<date_time>_2` (3, ...) instead, another sweep started in the same second's, in a `single_process_launch`: the
    launch time is renamed for the jobs' folders, which each job's config names anew."""
    from gru_suite.sweep import LAUNCH_TIME

    sweep_dir = Path(config.hydra.sweep.dir)
    by_launch_time = f"${{oc.env:{LAUNCH_TIME}" in _dir_as_written(config.hydra.sweep)
    if not by_launch_time or sweep_dir.name != os.environ.get(LAUNCH_TIME) or not single_process_launch():
        hold_run_folder(sweep_dir, "hydra.sweep.dir")
        return
    held = hold_free_run_folder(sweep_dir)
    if held != sweep_dir:
        os.environ[LAUNCH_TIME] = held.name
        with read_write(config.hydra):
            config.hydra.sweep.dir = str(held)


def named_by_time(folder: DictConfig) -> bool:
    """Whether Hydra's `folder` setting (`hydra.run`, `hydra.sweep`) names its `dir` by the time (`${now:...}`), as the
    suite's defaults do."""
    return "${now:" in _dir_as_written(folder)


def _dir_as_written(folder: DictConfig) -> str:
    """The `dir` of Hydra's `folder` setting (`hydra.run`, `hydra.sweep`) as written, its interpolations unresolved."""
    return str(OmegaConf.to_container(folder, resolve=False).get("dir"))


def log_files(config: DictConfig) -> list[Path]:
    """The files the logging Hydra sets up for a run (`hydra.job_logging`) writes to (those it can name now)."""
    probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))  # a copy: the run's config stays as is
    probe.hydra.runtime.output_dir = config.hydra.run.dir  # as Hydra sets it before it sets up logging
    files = []
    for handler in (probe.hydra.job_logging.get("handlers") or {}).values():
        with suppress(OmegaConfBaseException):  # a name Hydra resolves later, from what it sets up itself
            if name := handler.get("filename"):
                files.append(Path(name))
    return files


def single_process_launch() -> bool:
    """Whether this process was started alone, not as one of a multi-process launch (torchrun, SLURM), whose
    processes must agree on one folder (Lightning's own DDP workers, started later, are handed its run's)."""
    return os.environ.get("WORLD_SIZE", "1") == "1" and os.environ.get("SLURM_NTASKS", "1") == "1"


def first_process() -> bool:
    """Whether this is the first process of its launch: rank 0 as torchrun or SLURM started it, and neither a worker
    Lightning started (`LOCAL_RANK`) nor the process of a later node (`NODE_RANK`)."""
    return launch_rank() == 0 and os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def launch_rank() -> int:
    """This process's global rank as torchrun (`RANK`) or SLURM (`SLURM_PROCID`) started it; 0 for one process."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
