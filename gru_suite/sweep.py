"""A multirun's summary: one row per job (the settings that vary, then its final metrics), ranked by the monitored
validation metric. Hydra calls `SweepSummary` once the sweep's jobs have run; it imports no torch."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gru_suite.atomic import write_text
from gru_suite.metrics_file import read_metrics
from gru_suite.overrides import override_key
from gru_suite.run_folder import keep_earlier_file

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
ERROR_NAME = "error.txt"  # a failed job's error (gru_suite.cli)
METRICS_FILES = ("metrics.json", "test_metrics.json")  # what gru-suite and gru-suite-eval write


@dataclass
class Job:
    """One job folder of a sweep: its overrides, its final metrics (empty when it wrote none), its error when it
    failed, and what ranks it (its task's `task.monitor`, the best checkpoint's value when recorded)."""

    folder: Path
    overrides: dict[str, str]
    name: str | None = None  # in the summary; None: the folder's name
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    task: str | None = None
    monitor: str | None = None
    mode: str = "min"

    def __post_init__(self) -> None:
        self.name = self.name or self.folder.name

    @property
    def score(self) -> float | None:
        if self.monitor is None:
            return None
        return self.metrics.get(f"{self.monitor}_best", self.metrics.get(self.monitor))


def job_in(folder: Path, overrides: Sequence[Any], task: Any, started_ns: int, name: str | None = None) -> Job:
    """The job run in `folder` with `overrides` (`key=value`) and `task`, its task config (None if unknown), named
    `name` in the summary (default: the folder's name); its metrics and error files count only when written since
    `started_ns`, not left by an earlier run into the folder."""
    job = Job(folder, {override_key(str(item)): str(item).partition("=")[2] for item in overrides}, name=name)
    for file in METRICS_FILES:
        if _written_since(metrics := folder / file, started_ns):
            job.metrics = read_metrics(metrics)
            break
    if _written_since(error := folder / ERROR_NAME, started_ns):
        job.error = error.read_text(encoding="utf-8").strip()
    task = task or {}
    job.task, job.monitor, job.mode = task.get("name"), task.get("monitor"), task.get("monitor_mode") or "min"
    return job


def read_job(folder: Path) -> Job:
    """The job in `folder` (a folder holding `.hydra/overrides.yaml`), started when its `.hydra/` was written."""
    overrides, config = folder / ".hydra" / "overrides.yaml", folder / ".hydra" / "config.yaml"
    task = OmegaConf.load(config).get("task") if config.is_file() else None
    return job_in(folder, OmegaConf.load(overrides), task, overrides.stat().st_mtime_ns)


LAUNCH_TIME = "GRU_SUITE_LAUNCH_TIME"
"""Environment variable with the command's start time (`LAUNCH_FORMAT`; `_2`, `_3`, ... after it where another sweep
started in the same second holds that folder), naming a sweep's folder in every process it starts (`hydra.sweep.dir`)
and bounding which job folders are this sweep's."""
LAUNCH_FORMAT = "%Y-%m-%d_%H-%M-%S"


def sweep_jobs(sweep_dir: Path, started_ns: int | None = None) -> list[Job]:
    """The jobs under `sweep_dir` that this sweep ran, in job order: those started since `started_ns` (else since
    its `multirun.yaml` was written, else since the command's launch time; Optuna's sweeper writes no
    `multirun.yaml`), not an earlier sweep's left in the folder."""
    start = started_ns if started_ns is not None else sweep_start_ns(sweep_dir)
    folders = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml") if _written_since(p, start)]
    return [read_job(folder) for folder in sorted(folders, key=_job_number)]


def sweep_start_ns(sweep_dir: Path) -> int:
    """When the sweep in `sweep_dir` started, as a file time: its `multirun.yaml`'s, else the command's launch time
    (`GRU_SUITE_LAUNCH_TIME`, a second early for file times kept to the second), else 0 (every job counts)."""
    if (manifest := sweep_dir / "multirun.yaml").is_file():
        return manifest.stat().st_mtime_ns
    try:
        launch_time = os.environ.get(LAUNCH_TIME, "")[:len(time.strftime(LAUNCH_FORMAT))]  # without a _2, _3
        launched = time.mktime(time.strptime(launch_time, LAUNCH_FORMAT))
    except ValueError:
        return 0
    return int((launched - 1) * 1e9)


def _written_since(path: Path, time_ns: int) -> bool:
    return path.is_file() and path.stat().st_mtime_ns >= time_ns


def _job_number(folder: Path) -> tuple[int, str]:
    number = folder.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else math.inf, folder.name)  # type: ignore[return-value]


def unranked_because(jobs: list[Job]) -> str | None:
    """Why `jobs` cannot be ranked against each other, or None when they can: one task, one monitored metric."""
    if any(job.monitor is None for job in jobs):
        return "a job records no monitored metric (an eval or predict sweep, or a task without task.monitor)"
    if len({job.task for job in jobs}) > 1:
        return "the jobs are of different tasks"
    if len({(job.monitor, job.mode) for job in jobs}) > 1:
        return "the jobs monitor different metrics (task.monitor, task.monitor_mode)"
    if not any(job.score is not None and math.isfinite(job.score) for job in jobs):
        return "no job recorded a finite value of its monitored metric"
    return None


def ranked(jobs: list[Job]) -> list[Job]:
    """`jobs` best first by their monitored metric when they share one metric and mode; else as given."""
    if unranked_because(jobs):
        return jobs
    scored = [job for job in jobs if job.score is not None and math.isfinite(job.score)]
    scored.sort(key=lambda job: job.score if job.mode == "min" else -job.score)  # type: ignore[operator]
    return scored + [job for job in jobs if job not in scored]


def varying_settings(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between `jobs`, in the order the jobs name them."""
    return [key for key in dict.fromkeys(k for job in jobs for k in job.overrides)
            if len({job.overrides.get(key) for job in jobs}) > 1]


def summary_csv(jobs: list[Job]) -> str:
    """One row per job: its folder, the overrides that differ between jobs, then every metric (the first job's
    monitored one first)."""
    varying = varying_settings(jobs)
    monitored = [name for job in jobs[:1] if job.monitor for name in (f"{job.monitor}_best", job.monitor)]
    others = sorted({name for job in jobs for name in job.metrics} - set(monitored))
    metrics = [name for name in monitored if any(name in job.metrics for job in jobs)] + others
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    errors = ["error"] if any(job.error for job in jobs) else []
    writer.writerow(["job", *varying, *errors, *metrics])
    for job in jobs:
        error = [job.error] if errors else []
        writer.writerow([job.name, *(job.overrides.get(k, "") for k in varying), *error,
                         *(_number(job.metrics.get(m)) for m in metrics)])
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def file_time_now_ns() -> int:
    """Now, a second early, to compare with file times (some file systems keep them to the second)."""
    return time.time_ns() - 1_000_000_000


def sweep_job(hydra: DictConfig, overrides: Sequence[Any], task: Any, started_ns: int) -> Job:
    """The sweep job that `hydra` (its `hydra` config node) describes, named by its folder within the sweep's
    (`hydra.sweep.subdir` may nest it); see `job_in` for the other arguments."""
    folder = Path(hydra.runtime.output_dir)  # absolute; the sweep folder may be given relative
    sweep_dir = Path(hydra.runtime.cwd, hydra.sweep.dir)
    name = str(folder.relative_to(sweep_dir)) if folder.is_relative_to(sweep_dir) else str(folder)
    return job_in(folder, overrides, task, started_ns, name)


def write_summary(sweep_dir: Path, jobs: list[Job]) -> None:
    """Write `<sweep_dir>/summary.csv` ranking `jobs` (nothing when there are none) and log the best one."""
    jobs = ranked(jobs)
    if not jobs:
        return
    keep_earlier_file(sweep_dir / SUMMARY_NAME)  # a sweep rerun into its folder: the earlier ranking stays
    path = write_text(sweep_dir / SUMMARY_NAME, summary_csv(jobs))
    best = jobs[0]
    if why := unranked_because(jobs):
        log.info("sweep of %d jobs: %s (not ranked: %s)", len(jobs), path, why)
        return
    settings = " ".join(f"{k}={best.overrides[k]}" for k in varying_settings(jobs) if k in best.overrides)
    log.info("sweep of %d jobs, ranked by %s (%s): %s; best: %s (%s) %s=%.6g", len(jobs), best.monitor,
             best.mode, path, best.name, settings or "no varying setting", best.monitor, best.score)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write `<sweep dir>/summary.csv` and log the best job. The jobs are those
    it saw end in this process, wherever `hydra.sweep.subdir` put them and whatever `hydra.output_subdir` says;
    those of a launcher that runs them elsewhere are found as `<sweep dir>/*/.hydra/` (`sweep_jobs`)."""

    _started_ns: int | None = None
    _job_started_ns: int = 0

    def __init__(self) -> None:
        self._jobs: list[Job] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started_ns = file_time_now_ns()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started_ns = file_time_now_ns()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        task = (job_return.cfg or {}).get("task")
        self._jobs.append(sweep_job(config.hydra, job_return.overrides or [], task, self._job_started_ns))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        write_summary(sweep_dir, self._jobs or sweep_jobs(sweep_dir, self._started_ns))
