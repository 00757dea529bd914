"""The multirun summary: jobs read from their folders, ranked by the monitored metric, written as CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from gru_suite.cli import sweep_value
from gru_suite.metrics_file import read_metrics, write_metrics
from gru_suite.sweep import LAUNCH_FORMAT, SweepSummary, ranked, summary_csv, sweep_jobs


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict[str, float] | None,
         mode: str | None = "max", task: str = "sentiment") -> None:
    folder = sweep / name / ".hydra"
    folder.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / "overrides.yaml")
    monitoring = {"monitor": "val/f1"} if mode is None else {"monitor": "val/f1", "monitor_mode": mode}
    OmegaConf.save(OmegaConf.create({"task": {"name": task, **monitoring}}), folder / "config.yaml")
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    else:  # a failed job: gru_suite.cli writes its error
        (sweep / name / "error.txt").write_text("task.data.path: no such file\n")


def test_jobs_are_ranked_by_their_best_monitored_value_and_a_failed_job_comes_last(tmp_path):
    _job(tmp_path, "0_sentiment", ["task=sentiment", "optimizer.lr=0.01", "seed=1"],
         {"val/f1": 0.9, "val/f1_best": 0.7})
    _job(tmp_path, "1_sentiment", ["task=sentiment", "optimizer.lr=0.001", "seed=1"], None)  # failed: no metrics
    _job(tmp_path, "2_sentiment", ["task=sentiment", "optimizer.lr=0.0001", "seed=1"], {"val/f1": 0.8})
    jobs = ranked(sweep_jobs(tmp_path))
    assert [job.folder.name for job in jobs] == ["2_sentiment", "0_sentiment", "1_sentiment"]  # 0.8 > 0.7 (best)
    rows = list(csv.reader(io.StringIO(summary_csv(jobs))))
    assert rows[0] == ["job", "optimizer.lr", "error", "val/f1_best", "val/f1"]  # only the setting that varies
    assert rows[1:] == [["2_sentiment", "0.0001", "", "", "0.8"], ["0_sentiment", "0.01", "", "0.7", "0.9"],
                        ["1_sentiment", "0.001", "task.data.path: no such file", "", ""]]


def test_jobs_are_read_in_job_number_order_and_equal_scores_keep_it(tmp_path):
    for number in range(12):
        _job(tmp_path, f"{number}_sentiment", ["task=sentiment", f"seed={number}"], {"val/f1": 0.5})
    expected = [f"{number}_sentiment" for number in range(12)]  # 10 and 11 after 9, not after 1
    assert [job.folder.name for job in sweep_jobs(tmp_path)] == expected
    assert [job.folder.name for job in ranked(sweep_jobs(tmp_path))] == expected


def test_the_summary_is_written_into_the_sweep_folder_and_names_the_best_job(tmp_path, caplog):
    caplog.set_level("INFO")
    _job(tmp_path, "0_forecasting", ["backbone.hidden_size=8"], {"val/f1": 0.5}, mode="min")
    _job(tmp_path, "1_forecasting", ["backbone.hidden_size=16"], {"val/f1": 0.25}, mode="min")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert (tmp_path / "summary.csv").read_text().splitlines()[1] == "1_forecasting,16,0.25"
    assert "best: 1_forecasting (backbone.hidden_size=16) val/f1=0.25" in caplog.text


def test_jobs_of_different_tasks_are_not_ranked_even_by_a_metric_of_one_name(tmp_path, caplog):
    caplog.set_level("INFO")
    _job(tmp_path, "0_a", ["task=a"], {"val/f1": 0.5}, task="a")
    _job(tmp_path, "1_b", ["task=b"], {"val/f1": 0.9}, task="b")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert [line.split(",")[0] for line in (tmp_path / "summary.csv").read_text().splitlines()[1:]] == ["0_a", "1_b"]
    assert "(not ranked: the jobs are of different tasks)" in caplog.text and "best:" not in caplog.text


def test_jobs_of_one_task_that_monitor_different_metrics_are_not_ranked_and_say_why(tmp_path, caplog):
    caplog.set_level("INFO")
    _job(tmp_path, "0_t", ["task.monitor_mode=max"], {"val/f1": 0.5})
    _job(tmp_path, "1_t", ["task.monitor_mode=min"], {"val/f1": 0.9}, mode="min")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "(not ranked: the jobs monitor different metrics (task.monitor, task.monitor_mode))" in caplog.text
    assert "best:" not in caplog.text


def test_a_sweep_without_a_finite_score_names_no_best_job(tmp_path, caplog):
    caplog.set_level("INFO")
    _job(tmp_path, "0_t", ["optimizer.lr=10"], None)  # failed
    _job(tmp_path, "1_t", ["optimizer.lr=1"], {"val/f1": float("nan")})  # diverged
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "(not ranked: no job recorded a finite value of its monitored metric)" in caplog.text
    assert "best:" not in caplog.text and "Logging error" not in caplog.text


def test_a_job_config_without_a_monitor_mode_is_ranked_lowest_first(tmp_path):
    _job(tmp_path, "0_sentiment", ["seed=1"], {"val/f1": 0.5}, mode=None)
    _job(tmp_path, "1_sentiment", ["seed=2"], {"val/f1": 0.25}, mode=None)
    assert [job.folder.name for job in ranked(sweep_jobs(tmp_path))] == ["1_sentiment", "0_sentiment"]


def test_a_metrics_file_written_in_its_jobs_first_clock_tick_is_the_jobs(tmp_path):
    _job(tmp_path, "0_sentiment", ["seed=1"], {"val/f1": 0.5})
    started = (tmp_path / "0_sentiment" / ".hydra" / "overrides.yaml").stat().st_mtime_ns
    os.utime(tmp_path / "0_sentiment" / "metrics.json", ns=(started, started))
    assert sweep_jobs(tmp_path, 0)[0].metrics == {"val/f1": 0.5}
    os.utime(tmp_path / "0_sentiment" / "metrics.json", ns=(started - 1, started - 1))  # an earlier run's
    assert sweep_jobs(tmp_path, 0)[0].metrics == {}


def test_a_rerun_into_a_sweep_folder_reads_only_what_this_sweep_wrote(tmp_path):
    old = 1_000_000_000  # an earlier sweep's files, from long ago
    _job(tmp_path, "0_sentiment", ["task=sentiment", "optimizer.lr=0.01"], None)  # failed then
    _job(tmp_path, "1_sentiment", ["task=sentiment", "optimizer.lr=0.001"], {"val/f1": 0.9})
    _job(tmp_path, "2_sentiment", ["task=sentiment", "optimizer.lr=0.0001"], {"val/f1": 0.5})  # not rerun
    for path in tmp_path.rglob("*"):
        os.utime(path, (old, old))
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # this sweep starts
    for name, metrics in (("0_sentiment", {"val/f1": 0.7}), ("1_sentiment", None)):  # now 0 runs, 1 fails
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text((tmp_path / name / ".hydra" /
                                                                     "overrides.yaml").read_text())
        if metrics:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        else:
            (tmp_path / name / "error.txt").write_text("task.data.path: no such file\n")
    jobs = {job.folder.name: job for job in sweep_jobs(tmp_path)}
    assert sorted(jobs) == ["0_sentiment", "1_sentiment"]  # job 2 is the earlier sweep's
    assert jobs["0_sentiment"].error == "" and jobs["0_sentiment"].metrics == {"val/f1": 0.7}
    assert jobs["1_sentiment"].error and jobs["1_sentiment"].metrics == {}  # not the earlier run's 0.9


def test_a_diverged_run_returns_the_worst_value_to_a_search():
    assert sweep_value({"val/loss": 0.5, "val/loss_best": 0.25}, "val/loss", "min") == 0.25  # the tested one's
    assert sweep_value({"val/loss": float("nan")}, "val/loss", "min") == float("inf")  # Optuna refuses NaN
    assert sweep_value({"val/f1": float("nan")}, "val/f1", "max") == -float("inf")
    assert sweep_value({}, "val/loss", "min") is None


def test_a_sweep_without_a_manifest_counts_the_jobs_started_since_its_launch(tmp_path, monkeypatch):
    _job(tmp_path, "0_sentiment", ["task=sentiment", "optimizer.lr=0.01"], {"val/f1": 0.9})
    _job(tmp_path, "1_sentiment", ["task=sentiment", "optimizer.lr=0.001"], {"val/f1": 0.5})
    for path in (tmp_path / "1_sentiment").rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))  # an earlier sweep's job
    monkeypatch.setenv("GRU_SUITE_LAUNCH_TIME", "2020-01-01_00-00-00")  # Optuna's sweeper writes no multirun.yaml
    assert [job.folder.name for job in sweep_jobs(tmp_path)] == ["0_sentiment"]
    launched = time.mktime(time.strptime("2030-01-01_00-00-00", LAUNCH_FORMAT))
    monkeypatch.setenv("GRU_SUITE_LAUNCH_TIME", "2030-01-01_00-00-00")
    for before, listed in ((0.5, ["0_sentiment"]), (1.5, [])):  # a second's slack: file times kept to the second
        for path in (tmp_path / "0_sentiment").rglob("*"):
            os.utime(path, (launched - before, launched - before))
        assert [job.folder.name for job in sweep_jobs(tmp_path)] == listed
    monkeypatch.setenv("GRU_SUITE_LAUNCH_TIME", "2030-01-01_00-00-00_2")  # another sweep launched in that second
    assert [job.folder.name for job in sweep_jobs(tmp_path)] == []
    for path in (tmp_path / "0_sentiment").rglob("*"):
        os.utime(path, (time.time() - 10, time.time() - 10))
    summary = SweepSummary()
    summary.on_multirun_start(OmegaConf.create({}))
    assert sweep_jobs(tmp_path, summary._started_ns) == []  # both older than the sweep the callback saw start
    started = summary._started_ns + 10**9  # when the callback saw it start (it keeps a second's slack)
    whole_second = started // 10**9 * 10**9  # a job written in the sweep's first second, on a file system that keeps
    for path in (tmp_path / "0_sentiment").rglob("*"):  # times to the second
        os.utime(path, ns=(whole_second, whole_second))
    assert [job.folder.name for job in sweep_jobs(tmp_path, summary._started_ns)] == ["0_sentiment"]


def test_a_metric_written_as_null_reads_back_as_nan(tmp_path):
    path = write_metrics({"val/loss": float("nan"), "val/f1": 0.5, "test/x": float("inf")}, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == {"test/x": None, "val/f1": 0.5, "val/loss": None}  # strict JSON
    assert list(json.loads(path.read_text())) == ["test/x", "val/f1", "val/loss"]  # by name: runs diff line by line
    read = read_metrics(path)
    assert read["val/f1"] == 0.5 and math.isnan(read["val/loss"]) and math.isnan(read["test/x"])
