"""The three commands end to end, through real subprocesses."""

import csv
import errno
import importlib.util
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import (REPO, TINY, resumed_and_uninterrupted, resumed_part_way_and_uninterrupted, run_cli,
                      run_forked)

from gru_suite import artifacts, cli, module, registry, resume, run
from gru_suite.atomic import atomic_path, unfinished_writes, write_text
from gru_suite.callbacks import AtomicCheckpointIO
from gru_suite.checkpoint import check_same_model, load_checkpoint, read_checkpoint, settings_apart
from gru_suite.config import CONF_DIR, default_data_dir, register_resolvers
from gru_suite import run_folder
from gru_suite.run_folder import KeepEarlierConfig
from gru_suite.errors import UserError, filesystem_error_in
from gru_suite.testing import compose_train_config
from gru_suite.task import SequenceView

QUIET = [*TINY, "threads=1", "test_after_training=false", "predict_after_training=false"]
"""A tiny training run that neither tests nor predicts after training."""


@pytest.mark.parametrize("args", [[], ["task=null"], ["trainer.max_epochs=1"], ["-m", "trainer.max_epochs=1,2"]])
def test_a_command_without_a_task_lists_tasks_and_fails_leaving_no_folder(args, tmp_path):
    result = run_cli("gru-suite", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "no task selected" in result.stderr
    assert "forecasting" in result.stderr and "Forecast numeric time series" in result.stderr
    assert not list(tmp_path.iterdir())  # no outputs/None/<time>/ nor a sweep folder


def test_a_sweep_over_tasks_is_not_refused_as_selecting_none(tmp_path):
    from gru_suite.run_folder import RequireTask

    config = hydra_run_config(str(tmp_path))
    with open_dict(config):
        config.task = None  # as Hydra hands a sweep's config to the callback: without its swept options
        config.hydra.overrides.task = ["task=forecasting,running_mean", "trainer.max_epochs=1"]
    RequireTask().on_multirun_start(config)  # goes on
    with open_dict(config):
        config.hydra.overrides.task = ["trainer.max_epochs=1,2"]
    with pytest.raises(SystemExit):
        RequireTask().on_multirun_start(config)


def test_python_dash_m_gru_suite_is_the_training_command(tmp_path):
    bare = subprocess.run([sys.executable, "-m", "gru_suite"], capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode == 2 and "no task selected" in bare.stderr and "forecasting" in bare.stderr
    helped = subprocess.run([sys.executable, "-m", "gru_suite", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "GRU Suite (train)" in helped.stdout


def test_help_is_fast_and_imports_no_torch():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_cli("gru-suite", "--help")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0
    assert "Configuration groups" in result.stdout
    # CPU seconds, what the command costs (about 1 s), whatever else a busy machine runs beside it
    assert (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) < 3.0
    task_line = next(line for line in result.stdout.splitlines() if line.startswith("task: "))
    assert {"forecasting", "anomaly", "music", "running_mean"} <= set(task_line[6:].split(", "))
    assert "seed_keras_example" in next(line for line in result.stdout.splitlines() if line.startswith("experiment: "))
    assert "task_trainer" not in result.stdout  # pulled in by a task's own config, not chosen by users


@pytest.mark.parametrize("command, groups", [
    ("gru-suite", {"experiment", "task", "backbone", "callbacks", "debug", "hparams_search", "logger", "optimizer",
                   "paths", "scheduler", "trainer"}),
    ("gru-suite-eval", {"task", "logger", "paths", "trainer"}),
    ("gru-suite-predict", {"task", "paths", "trainer"}),
    ("gru-suite-gates", {"task", "paths"}),
])
def test_help_lists_the_config_groups_its_command_accepts(command, groups):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {line.partition(":")[0] for line in result.stdout.split("== Config ==")[0].splitlines()
              if re.fullmatch(r"\w+: [\w/, ]+", line)}
    assert listed == groups


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gru_suite.cli, gru_suite.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_writes_a_complete_run_folder(trained_run):
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert "💡" not in (trained_run / "train.log").read_text()  # no advertisements in the run's log
    assert list((trained_run / "checkpoints").glob("best-*.ckpt"))
    metrics = pd.read_csv(trained_run / "metrics.csv")
    for column in ["train/loss", "val/loss", "val/naive_mse", "val/seasonal_naive_mae_original",
                   "train/epoch_time_s", "train/samples_per_s", "test/mse_original"]:
        assert column in metrics.columns, column
    per_epoch = metrics.dropna(subset=["train/loss"])
    assert len(per_epoch) == 2 and (per_epoch["train/samples_per_s"] > 0).all()
    assert per_epoch["train/loss"].iloc[-1] < per_epoch["train/loss"].iloc[0]
    summary = json.loads((trained_run / "metrics.json").read_text())
    assert 0 < summary["test/mse"] < summary["test/naive_mse"]  # the GRU learnt more than the last value
    assert "train/loss_step" in metrics.columns and "train/loss_step" not in summary  # one step's loss is no result
    forecast = pd.read_csv(trained_run / "predictions" / "forecast.csv")
    assert list(forecast.columns) == ["origin", "timestamp", "step", "target", "actual", "forecast"]
    assert (trained_run / "predictions" / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_reports_test_metrics(trained_run, tmp_path):
    (best,) = (trained_run / "checkpoints").glob("best-*.ckpt")  # the checkpoint training tested
    (tmp_path / "test_metrics.json").write_text('{"test/mse": 1.0}\n')  # an earlier eval's, set aside
    result = run_cli("gru-suite-eval", "task=forecasting", f"ckpt_path={best}",
                     "+task.data.lookbak=4", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "💡" not in output and "deprecated" not in output  # no advertisements, no library deprecation notes
    assert ("+task.data.lookbak: not in the config of task 'forecasting' (did you mean task.data.lookback? "
            "a setting the task does not read is ignored)") in output
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert (tmp_path / "test_metrics.1.json").read_text() == '{"test/mse": 1.0}\n'
    assert {"test/mse", "test/mae", "test/naive_mse", "test/seasonal_naive_mse"} <= set(metrics)
    trained = json.loads((trained_run / "metrics.json").read_text())
    for name in ("test/mse", "test/mae", "test/naive_mse"):  # the model's figures too, not only the baselines'
        assert metrics[name] == pytest.approx(trained[name], rel=1e-5), name


def test_eval_with_settings_of_another_model_is_one_clear_error(trained_run, tmp_path):
    result = run_forked("gru-suite-eval", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                        "task.data.horizon=3", f"hydra.run.dir={tmp_path}")  # trained with horizon 6
    assert result.returncode == 2
    assert (f"error: {trained_run}/checkpoints/last.ckpt holds another model than this config builds (model.head."
            in result.stderr)
    assert "use the settings it was trained with (set otherwise here: task.data.horizon=3 (trained with 6))" \
        in result.stderr  # the cause, not only the tensor it shaped
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "test_metrics.json").exists()


def test_a_checkpoint_of_a_task_no_installed_package_provides_says_so(trained_run, tmp_path):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint[module.CHECKPOINT_KEY]["config"]["task"]["name"] = "freq_trend"  # a plugin since uninstalled
    torch.save(checkpoint, tmp_path / "plugin.ckpt")
    result = run_forked("gru-suite-eval", f"ckpt_path={tmp_path / 'plugin.ckpt'}",
                        f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 2
    assert (f"error: {tmp_path / 'plugin.ckpt'} holds a model of task 'freq_trend', which no installed package "
            "provides (installed tasks: anomaly, ") in result.stderr
    assert "install the plugin it was trained with" in result.stderr


@pytest.mark.parametrize("command,extra", [("gru-suite-eval", []), ("gru-suite-predict", []),
                                           ("gru-suite-gates", ["sample=-1"])])
def test_restoring_commands_name_the_cores_and_the_tasks_wrong_settings_together(trained_run, tmp_path, command,
                                                                               extra):
    result = run_forked(command, "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt", "threads=x",
                        "task.data.batch_size=2.5", *extra, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    wrong = ["threads must be an integer, got 'x'", *(["sample must be at least 0, got -1"] if extra else []),
             "task.data.batch_size must be an integer, got 2.5"]
    assert result.stderr.splitlines()[-len(wrong) - 1:] == [f"error: {len(wrong)} settings are wrong:",
                                                           *(f"  {line}" for line in wrong)]


def test_predict_on_new_data_from_checkpoint_alone(trained_run, tmp_path):
    data = pd.read_csv(f"{default_data_dir()}/forecasting/demo_load.csv")
    new = tmp_path / "new.csv"
    data.iloc[:600].to_csv(new, index=False)
    out = tmp_path / "pred"
    result = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                        f"task.data.path={new}", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "forecast.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    future = [r for r in rows if r["actual"] == ""]
    assert len(future) == 6  # one forecast of horizon 6 past the end of the data
    assert future[0]["timestamp"] == "2024-01-26 00:00:00"  # 600 hourly rows from 2024-01-01
    assert all(r["forecast"] for r in rows)
    first = (out / "forecast.csv").read_text()
    data.iloc[:500].to_csv(new, index=False)
    again = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                       f"task.data.path={new}", f"hydra.run.dir={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "forecast.1.csv").read_text() == first != (out / "forecast.csv").read_text()  # set aside, not lost
    assert sorted(path.name for path in out.iterdir() if path.suffix != ".log") == [
        ".hydra", ".hydra.1", "forecast.1.csv", "forecast.1.png", "forecast.csv", "forecast.png"]


def test_a_restoring_command_names_a_setting_whose_interpolation_cannot_be_resolved(trained_run, tmp_path):
    result = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                        "task.data.path=${oc.env:GRU_SUITE_UNSET}/x.csv", f"hydra.run.dir={tmp_path}")
    assert (result.returncode, result.stderr.splitlines()[-1]) == (2, "error: task.data.path: \"Environment variable "
                                                                      "'GRU_SUITE_UNSET' not found\" (a literal '${' "
                                                                      "in a value is written '\\${')")


def test_a_restored_forecaster_refuses_other_targets(trained_run, tmp_path):
    # trained to forecast load from [load, temperature]: temperature would be scored against load's forecasts
    result = run_forked("gru-suite-eval", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                        "task.data.targets=[temperature]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the model was trained to forecast ['load'], not ['temperature'] (task.data.targets)" in result.stderr


def test_eval_and_predict_keep_the_settings_training_fixed(trained_run, tmp_path, monkeypatch, caplog):
    from hydra.core.hydra_config import HydraConfig

    from gru_suite_plugins.forecasting.task import ForecastingTask

    monkeypatch.setattr(ForecastingTask, "trained_settings", ("model.head_dropout",))  # as a plugin may declare one
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # unset again after the test
    config = hydra_run_config(str(tmp_path))
    with open_dict(config):
        config.ckpt_path = str(trained_run / "checkpoints" / "last.ckpt")
        config.hydra.overrides.task = ["task.model.head_dropout=0.3"]
        config.task.model.head_dropout = 0.3
    HydraConfig.instance().set_config(config)
    restored = cli._restore(config)
    assert restored.task.cfg.model.head_dropout == 0.0  # the checkpoint's, as the warning says
    assert "task.model.head_dropout fixed by training: the checkpoint's settings are used" in caplog.text


def test_load_checkpoint_keeps_the_settings_training_fixed_too(trained_run, monkeypatch, caplog):
    from gru_suite_plugins.forecasting.task import ForecastingTask

    monkeypatch.setattr(ForecastingTask, "trained_settings", ("model.head_dropout",))
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    task_cfg = OmegaConf.create(torch.load(ckpt, weights_only=False)["gru_suite"]["config"]["task"])
    task_cfg.model.head_dropout = 0.3
    restored = load_checkpoint(ckpt, task_cfg)
    assert restored.task.cfg.model.head_dropout == 0.0 and task_cfg.model.head_dropout == 0.3  # the caller's stays
    assert f"{ckpt}: task.model.head_dropout fixed by training: the checkpoint's settings are used" in caplog.text


def test_a_forecaster_restored_keeps_how_it_was_trained_to_read_a_window(trained_run, caplog):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    task_cfg = OmegaConf.create(torch.load(ckpt, weights_only=False)["gru_suite"]["config"]["task"])
    trained = (task_cfg.data.lookback, task_cfg.model.normalize)
    task_cfg.data.lookback, task_cfg.model.normalize = task_cfg.data.lookback + 6, "none"  # no weights tell them
    restored = load_checkpoint(ckpt, task_cfg).task.cfg
    assert (restored.data.lookback, restored.model.normalize) == trained
    assert "task.data.lookback, task.model.normalize fixed by training" in caplog.text
    assert (f"(task.data.lookback: {trained[0]} used, {trained[0] + 6} given; task.model.normalize: "
            f"{trained[1]!r} used, 'none' given)") in caplog.text


def test_a_list_setting_fixed_by_training_is_named_with_both_values(tmp_path):
    from gru_suite.checkpoint import keep_trained_settings

    given = compose_train_config("music", ["task.data.pitch_range=[40,80]"], tmp_path).task
    trained = compose_train_config("music", ["task.data.pitch_range=[36,84]"], tmp_path).task
    stored = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
    said: list[str] = []
    keep_trained_settings(given, stored, "x.ckpt", "the override(s)", said.append)
    assert said == ["x.ckpt: task.data.pitch_range fixed by training: the checkpoint's settings are used, not the "
                    "override(s) (task.data.pitch_range: [36, 84] used, [40, 80] given)"]
    assert list(given.data.pitch_range) == [36, 84]


def test_a_trained_path_given_relative_is_the_same_setting_as_the_stored_absolute_one(trained_run, monkeypatch,
                                                                                       caplog):
    from gru_suite_plugins.forecasting.task import ForecastingTask

    monkeypatch.setattr(ForecastingTask, "trained_settings", ("data.path",))
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    task_cfg = OmegaConf.create(torch.load(ckpt, weights_only=False)["gru_suite"]["config"]["task"])
    monkeypatch.chdir(Path(task_cfg.data.path).parent)
    task_cfg.data.path = Path(task_cfg.data.path).name  # the same file, named from its folder
    load_checkpoint(ckpt, task_cfg)
    assert "fixed by training" not in caplog.text


def test_a_model_trained_on_a_folder_whose_name_holds_an_interpolation_is_restored_with_it(tmp_path):
    (data := tmp_path / "d${H}").mkdir()
    shutil.copy(REPO / "data" / "forecasting" / "demo_load.csv", data / "x.csv")
    trained = run_forked("gru-suite", "task=forecasting", *TINY, "trainer.max_epochs=1", "predict_after_training=false",
                         f'task.data.path="{tmp_path}/d\\${{H}}/x.csv"', f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluated = run_forked("gru-suite-eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")  # its path
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (json.loads((tmp_path / "eval" / "test_metrics.json").read_text())["test/mse"]
            == json.loads((tmp_path / "run" / "metrics.json").read_text())["test/mse"])
    predicted = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={ckpt}",
                           f'task.data.path="{tmp_path}/d\\${{H}}/x.csv"', f"hydra.run.dir={tmp_path / 'predict'}")
    assert predicted.returncode == 0, predicted.stderr[-2000:]  # the folder given again, as training was given it
    assert (tmp_path / "predict" / "forecast.csv").is_file()


def test_a_relative_data_path_is_made_absolute_as_the_task_is_built(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data" / "forecasting" / "demo_load.csv", tmp_path / "data" / "mine.csv")
    monkeypatch.chdir(tmp_path)
    cfg = compose_train_config("forecasting", ["task.data.path=data/mine.csv"], tmp_path / "run")
    assert run.build_task(cfg.task).cfg.data.path == str(tmp_path / "data" / "mine.csv")  # in the config stored
    missing = compose_train_config("forecasting", ["task.data.path=data/other.csv"], tmp_path / "run")
    assert run.build_task(missing.task).cfg.data.path == "data/other.csv"  # named as given when it is not found
    (tmp_path / "d${H}").mkdir()  # a folder whose name holds what would be an interpolation
    shutil.copy(tmp_path / "data" / "mine.csv", tmp_path / "d${H}" / "x.csv")
    cfg = compose_train_config("forecasting", ['task.data.path="d\\${H}/x.csv"'], tmp_path / "run")
    assert run.build_task(cfg.task).cfg.data.path == str(tmp_path / "d${H}" / "x.csv")  # still the folder's name
    (tmp_path / "-").touch(), (tmp_path / "auto").mkdir()  # a file named like stdin, a folder named like a keyword
    for task, settings in (("speech", ["task.data.val=''", "task.predict.input=-"]),
                           ("anomaly", ["task.data.windows_path=auto", f"task.data.path={'x' * 300}"])):
        cfg = compose_train_config(task, settings, tmp_path / "run")
        given = [setting.split("=", 1)[1].strip("'") for setting in settings]
        built = run.build_task(cfg.task).cfg  # '' unset, - stdin, auto found by the task, a name too long to look up
        assert [OmegaConf.select(built, setting.split("=")[0].removeprefix("task.")) for setting in settings] == given


def test_load_checkpoint_reads_a_dict_as_the_task_block_and_names_anything_else(trained_run):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=False)["gru_suite"]["config"]
    assert load_checkpoint(ckpt, stored["task"]).task.cfg.name == "forecasting"  # a plain dict of the task block
    whole = r"; got a config with keys .*\btask\b.* \(this is a run's whole config: pass its `task`\)$"
    with pytest.raises(UserError, match=r"last\.ckpt must be a task's config block with its `name`, as a run's "
                                        r"cfg\.task" + whole):
        load_checkpoint(ckpt, OmegaConf.create(stored))
    with pytest.raises(UserError, match=r"as a run's cfg\.task; got a str$"):
        load_checkpoint(ckpt, "forecasting")


def test_a_setting_newer_than_the_checkpoint_counts_as_its_shipped_default_unless_that_is_an_interpolation():
    from omegaconf import OmegaConf

    from gru_suite.checkpoint import fixed_by_training

    stored = OmegaConf.create({"name": "forecasting", "data": {}, "model": {}})  # saved before both settings existed
    given = OmegaConf.create({"data": {"path": "mine.csv"}, "model": {"head_dropout": 0.3}})
    assert fixed_by_training(["data.path", "model.head_dropout"], given, stored) == ["model.head_dropout"]


def test_a_block_whose_only_difference_is_a_setting_newer_than_the_checkpoint_left_at_its_default_is_as_trained(
        tmp_path):
    from gru_suite.checkpoint import fixed_by_training, use_trained_settings

    given = compose_train_config("speech", [], tmp_path).task
    stored = OmegaConf.create(OmegaConf.to_container(given, resolve=True))
    del stored.features.cepstra  # a checkpoint saved before task.features.cepstra existed
    assert fixed_by_training(["features", "text"], given, stored) == []  # nothing to say: nothing given otherwise
    given.features.cepstra = 13
    assert fixed_by_training(["features", "text"], given, stored) == ["features"]
    given.features.cepstra, given.features.n_mels = None, 80
    assert fixed_by_training(["features", "text"], given, stored) == ["features"]
    given.features.cepstra = 13
    assert use_trained_settings(["features", "text"], given, stored) == ["features"]
    assert (given.features.cepstra, given.features.n_mels) == (None, 40)  # the newer setting at its shipped default
    assert OmegaConf.to_container(given.features) == OmegaConf.to_container(compose_train_config(
        "speech", [], tmp_path).task.features)


def test_predict_refuses_more_than_one_process(trained_run, tmp_path):
    # Each process would predict its share of the input and write it over the other's files.
    out = tmp_path / "pred"
    result = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                        "trainer=ddp_sim", f"hydra.run.dir={out}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "prediction runs in one process, not 2: trainer=cpu" in result.stderr
    assert not (out / "forecast.csv").exists()


def test_artifacts_appear_only_once_the_task_has_written_them_all(tmp_path):
    def write(predictions, datamodule, out_dir):
        (out_dir / "plots").mkdir()
        (out_dir / "plots" / "a.png").write_text("new")
        (out_dir / "report.csv").write_text("new")
        if predictions == ["fails"]:
            raise UserError("the second report cannot be written")
        (out_dir / "latest.csv").symlink_to("report.csv")  # a link between artifacts, named as itself
        return [out_dir / "report.csv", out_dir / "plots" / "a.png", out_dir / "latest.csv"]

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_text("earlier")
    module = SimpleNamespace(task=SimpleNamespace(write_predictions=write, cfg={"name": "fake"}))
    with pytest.raises(UserError, match="the second report"):
        artifacts.write_artifacts(None, module, None, tmp_path, ["fails"])
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["a.png", "plots"]  # nothing of the failed run's
    paths = artifacts.write_artifacts(None, module, None, tmp_path, ["works"])
    assert paths == [tmp_path / "report.csv", tmp_path / "plots" / "a.png", tmp_path / "latest.csv"]
    assert (tmp_path / "plots" / "a.png").read_text() == "new" and (tmp_path / "plots.1" / "a.png").read_text() == \
        "earlier"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest.csv", "plots", "plots.1", "report.csv"]
    assert (tmp_path / "latest.csv").read_text() == "new"


def test_many_artifacts_of_a_kind_are_logged_as_one_line():
    out = Path("out")
    paths = [out / "transcripts.jsonl", *(out / f"a{i}.srt" for i in range(5)), out / "b.txt", out / "c.txt"]
    assert artifacts.artifact_lines(paths) == [f"{out / 'transcripts.jsonl'}",
                                               f"5 .srt files in {out}/ (a0.srt ... a4.srt)",
                                               f"{out / 'b.txt'}", f"{out / 'c.txt'}"]
    three, four = ([out / f"a{i}.srt" for i in range(n)] for n in (3, 4))
    assert artifacts.artifact_lines(three) == [str(path) for path in three]  # up to three: each named
    assert artifacts.artifact_lines(four) == [f"4 .srt files in {out}/ (a0.srt ... a3.srt)"]


def test_forecast_plot_names_both_kinds_of_forecast_and_writes_dates_that_fit(trained_run):
    from matplotlib.dates import ConciseDateFormatter

    from gru_suite.checkpoint import load_checkpoint
    from gru_suite_plugins.forecasting.writer import forecast_frame, plot_forecasts

    module = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    data = module.task.datamodule()
    data.setup("predict")
    with torch.no_grad():
        predictions = [module.task.predict_step(module.model, batch) for batch in data.predict_dataloader()]
    targets = module.task.state["targets"]
    frame = forecast_frame(predictions, data, targets)
    figure = plot_forecasts(frame, data, targets)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "history / truth", "forecasts over the test period", "forecast beyond the data"]
    past = frame[(frame["target"] == targets[0]) & (frame["origin"] != frame["origin"].iloc[-1])]
    drawn = np.asarray(ax.get_lines()[1].get_ydata(), dtype=float)  # every past origin's forecast: one line, broken
    assert len(ax.get_lines()) == 3 and np.isnan(drawn).sum() == past["origin"].nunique() > 1
    np.testing.assert_allclose(drawn[~np.isnan(drawn)], past["forecast"])
    assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter)


def test_predicted_actual_values_and_original_unit_metrics_are_in_the_files_units(trained_run):
    from gru_suite.checkpoint import load_checkpoint

    module = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert not any(part.training for part in module.modules())  # restored for inference: no dropout
    task, data = module.task, module.task.datamodule()
    data.setup("predict")
    data.setup("test")
    targets = task.state["targets"]
    columns = [data.series.columns.index(target) for target in targets]
    assert len(columns) == 1  # one target: its errors in the file's units are the scaled ones times its variance
    batch = next(iter(data.predict_dataloader()))
    with torch.no_grad():
        actual = task.predict_step(module.model, batch)["actual"]
        metrics = task.step(module.model, next(iter(data.test_dataloader())), "test").metrics
    rows = batch.origins[:, None] + torch.arange(actual.shape[1])
    known = rows < len(data.series.values)  # windows reaching past the file's end have no actual values there
    torch.testing.assert_close(actual[known], torch.as_tensor(data.series.values[rows[known]][:, columns]))
    variance = float(task.scaler.std[columns[0]]) ** 2
    assert variance > 2  # scaled and original units tell apart
    for name in ("mse", "naive_mse"):
        assert float(metrics[f"{name}_original"]) == pytest.approx(float(metrics[name]) * variance, rel=1e-4)
    assert float(metrics["mae_original"]) == pytest.approx(float(metrics["mae"]) * variance ** 0.5, rel=1e-4)


def test_a_forecast_holds_the_windows_predicted_when_prediction_stops_early(trained_run):
    """`trainer.limit_predict_batches` leaves later windows unpredicted: the frame holds the predicted ones, and the
    plot draws none of them as the forecast beyond the data. Batches of (inputs, targets) alone, a plugin's own
    data, are the windows in order from the first."""
    from gru_suite.checkpoint import load_checkpoint
    from gru_suite.timeseries import WindowBatch
    from gru_suite_plugins.forecasting.writer import forecast_frame, future_timestamps, plot_forecasts

    module = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    data = module.task.datamodule()
    data.setup("predict")
    first = WindowBatch(*(part[:3] for part in next(iter(data.predict_dataloader()))))
    targets = module.task.state["targets"]
    with torch.no_grad():
        frame = forecast_frame([module.task.predict_step(module.model, first)], data, targets)
        alone = forecast_frame([module.task.predict_step(module.model, first[:2])], data, targets)
    origins = data.sets["predict"].origins
    assert len(origins) > 3 and list(frame["origin"].unique()) == list(future_timestamps(data.series,
                                                                                         np.asarray(origins[:3]) - 1))
    pd.testing.assert_frame_equal(alone, frame)
    figure = plot_forecasts(frame, data, targets)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == [
        "history / truth", "forecasts over the test period"]
    assert "stopped before the forecast beyond the data" in figure.get_suptitle()
    drawn = np.asarray(figure.axes[0].get_lines()[1].get_ydata(), dtype=float)  # one line, broken after each origin
    assert np.isnan(drawn).sum() == 3


def test_gates_command_plots_trained_model(trained_run, tmp_path):
    (tmp_path / "gates_layer0.png").write_bytes(b"an earlier run's")
    result = run_forked("gru-suite-gates", f"ckpt_path={trained_run}/checkpoints/last.ckpt", "threads=1",
                        f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "gates_layer0.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "gates_layer0.1.png").read_bytes() == b"an earlier run's"  # set aside, not written over
    assert f"wrote {tmp_path / 'gates_layer0.png'}" in (tmp_path / "gates.log").read_text()


@pytest.mark.parametrize("view, message", [
    ("window 3", "task 'forecasting': describe_sequence() returned a str, not a gru_suite.task.SequenceView (or None)"),
    (SequenceView("window 3", ["a", "b"]), "task 'forecasting': describe_sequence() gave 2 time-step labels for a "
                                           "sequence of 24 steps (as the backbone reads it)"),
])
def test_a_plugins_view_of_a_sequence_that_does_not_fit_it_is_one_line(view, message, trained_run, tmp_path,
                                                                       monkeypatch):
    from gru_suite import gates
    from gru_suite.checkpoint import load_checkpoint

    module = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    monkeypatch.setattr(module.task, "describe_sequence", lambda datamodule, batch, sample: view)
    with pytest.raises(UserError, match=re.escape(message)):
        gates.plot_model_gates(module, tmp_path, sample=0)


def test_gates_plot_the_sample_asked_for(trained_run, tmp_path, monkeypatch):
    from gru_suite import gates
    from gru_suite.checkpoint import load_checkpoint

    module, drawn = load_checkpoint(trained_run / "checkpoints" / "last.ckpt"), []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    view, _ = gates.plot_model_gates(module, tmp_path, sample=3)
    data = module.task.datamodule()
    data.setup("predict")
    origin, lookback = data.sets["predict"].origins[3], data.spec.lookback
    window = data.series.timestamps[origin - lookback : origin]
    assert view.title == f"{data.series.path}: the {lookback} rows up to {window[-1]}"
    assert drawn[0].get_suptitle().startswith("GRU gates: layer 0, ") and list(view.steps) == list(map(str, window))
    batch = next(iter(data.predict_dataloader()))
    inputs, lengths, _ = gates.capture_backbone_input(module.model,
                                                      lambda: module.task.predict_step(module.model, batch))
    assert lengths is None  # forecasting windows are not padded
    expected = gates.trace_gates(module.model.backbone, inputs[3:4])[0].update[0].numpy().T  # sequence 3 alone
    np.testing.assert_allclose(drawn[0].axes[0].images[0].get_array(), expected, atol=1e-6)


def test_gates_of_a_channel_independent_segmented_forecaster_name_the_column_and_segment_times(tmp_path):
    from functools import partial
    from types import SimpleNamespace

    from gru_suite import gates
    from gru_suite.backbone import GRUBackbone

    cfg = compose_train_config("forecasting", ["task.model.channel_independent=true", "task.model.segment_length=4",
                                               "task.data.features=[load,temperature]"], tmp_path)
    fitted = run.build_task(cfg.task)
    data = fitted.datamodule()
    task = run.build_task(cfg.task, fitted.state_dict())
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=4)).eval())
    view, _ = gates.plot_model_gates(module, tmp_path, sample=2)  # window 1's first column
    origin, lookback = data.sets["predict"].origins[1], cfg.task.data.lookback
    window = data.series.timestamps[origin - lookback : origin]
    assert view.title == f"{data.series.path}: the {lookback} rows up to {window[-1]}, column 'load'"
    assert list(view.steps) == list(map(str, window[3::4]))  # each segment of 4 rows at its last row


def test_gates_name_a_window_past_the_first_prediction_batch(tmp_path, monkeypatch):
    from functools import partial
    from types import SimpleNamespace

    from gru_suite import gates
    from gru_suite.backbone import GRUBackbone

    cfg = compose_train_config("forecasting", ["task.data.batch_size=4"], tmp_path)
    fitted = run.build_task(cfg.task)
    data = fitted.datamodule()
    task = run.build_task(cfg.task, fitted.state_dict())
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=4)).eval())
    view, _ = gates.plot_model_gates(module, tmp_path, sample=6)  # the second batch's third window
    origin = data.sets["predict"].origins[6]
    assert view.title.endswith(f"rows up to {data.series.timestamps[origin - 1]}")
    first = next(iter(data.predict_dataloader()))  # (x, y) alone, a plugin's own data: the first batch's windows
    assert task.describe_sequence(data, first[:2], 2) == task.describe_sequence(data, first, 2)
    drawn = []
    monkeypatch.setattr(task, "describe_sequence", lambda datamodule, batch, sample: None)
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    gates.plot_model_gates(module, tmp_path, sample=6)
    assert "sample 6" in drawn[0].get_suptitle()  # counted across the batches, as asked for


def test_a_trained_model_forecasts_a_short_new_series_and_a_too_short_one_is_named(trained_run, tmp_path):
    demo = pd.read_csv(Path(default_data_dir()) / "forecasting" / "demo_load.csv")
    demo.iloc[:40].to_csv(tmp_path / "short.csv", index=False)  # too short to train on (lookback 24), not to use
    demo.iloc[:20].to_csv(tmp_path / "shorter.csv", index=False)  # shorter than the lookback
    demo.iloc[:28].to_csv(tmp_path / "short_test.csv", index=False)  # a test split of 4 rows, under the horizon
    ckpt = f"ckpt_path={trained_run}/checkpoints/last.ckpt"
    for command, out in (("gru-suite-predict", "p"), ("gru-suite-eval", "e")):
        result = run_forked(command, "task=forecasting", ckpt, f"task.data.path={tmp_path / 'short.csv'}",
                            f"hydra.run.dir={tmp_path / out}")
        assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p" / "forecast.csv")) > 0
    counts = run_forked("gru-suite-predict", "task=forecasting", ckpt, f"task.data.path={tmp_path / 'short.csv'}",
                        "task.data.split=[300,100,100]", f"hydra.run.dir={tmp_path / 'c'}")
    assert counts.returncode == 2 and "task.data.split=[0.0,0.0,1.0] makes the whole series" in counts.stderr
    assert json.loads((tmp_path / "e" / "test_metrics.json").read_text())["test/mse"] > 0
    predicted, evaluated = (run_forked(command, "task=forecasting", ckpt, f"task.data.path={tmp_path / name}",
                                       f"hydra.run.dir={tmp_path / out}") for command, name, out in
                            (("gru-suite-predict", "shorter.csv", "q"), ("gru-suite-eval", "short_test.csv", "f")))
    assert predicted.returncode == 2 and evaluated.returncode == 2
    shown = predicted.stdout + predicted.stderr + evaluated.stdout + evaluated.stderr
    assert "GPU available" not in shown  # the input's errors come before the trainer's lines
    assert "shorter.csv: 20 rows, fewer than the lookback of 24 rows a forecast starts from" in predicted.stderr
    assert ("short_test.csv: the test split (rows 25-28 of 28) is too short: it needs at least 6 rows (horizon 6; "
            "its lookback reaches into the rows before it)") in evaluated.stderr


def test_artifacts_an_earlier_run_left_beside_this_runs_are_named(tmp_path):
    for name in ("a.txt", "b.txt", "old.txt", "predict.log", "plots/a.png", "plots/old.png", ".hydra/config.yaml",
                 "metrics.csv", "a.1.txt", "plots/a.12.png", "old.1.txt", "a.x.txt"):  # a.1.txt: a.txt set aside
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("earlier run")
    earlier = artifacts.files_near(tmp_path)
    written = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "plots" / "a.png", tmp_path / "c.csv"]  # and a .csv
    stale = artifacts.stale_artifacts(earlier, written)
    assert [path.relative_to(tmp_path.resolve()).as_posix() for path in stale] == ["a.x.txt", "old.1.txt", "old.txt",
                                                                                  "plots/old.png"]


def test_resume_continues_from_checkpoint(trained_run, tmp_path):
    result = run_cli("gru-suite", "task=forecasting", *TINY, "trainer.max_epochs=3", "test_after_training=false",
                     "predict_after_training=false", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = pd.read_csv(tmp_path / "metrics.csv")["epoch"].dropna().unique()
    assert list(epochs) == [2]  # only the third epoch ran


def test_a_relative_checkpoint_path_into_the_runs_folder_is_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_train_config("forecasting", ["ckpt_path=run/checkpoints/last.ckpt"], tmp_path / "run")
    assert resume.resumes_in_own_folder(cfg)  # its checkpoints are not moved aside before Lightning reads one


def test_checkpoints_kept_outside_the_run_folder_are_resumed_by_the_suite(tmp_path):
    elsewhere = tmp_path / "volume" / "ckpts"
    elsewhere.mkdir(parents=True)
    (elsewhere / "last.ckpt").write_bytes(b"a checkpoint")
    cfg = compose_train_config("forecasting", ["ckpt_path=last", f"callbacks.model_checkpoint.dirpath={elsewhere}"],
                               tmp_path / "run")
    assert resume.resume_path(cfg) == str(elsewhere / "last.ckpt")  # read, checked and restored as any other
    assert resume.resumes_in_own_folder(cfg)  # so its folder's checkpoints are not moved aside
    default = compose_train_config("forecasting", ["ckpt_path=last"], tmp_path / "run")
    assert resume.checkpoint_folder(default) == tmp_path / "run" / "checkpoints" and resume.resume_path(default) is None


def test_a_run_resumed_from_its_folder_into_checkpoints_kept_elsewhere_moves_nothing_it_reads(tmp_path):
    quiet = [*TINY, "test_after_training=false", "predict_after_training=false"]
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=1"], tmp_path / "run"))
    last, volume = tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "volume"
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=2", f"ckpt_path={last}",
                                                   f"callbacks.model_checkpoint.dirpath={volume}"], tmp_path / "run"))
    assert last.is_file() and torch.load(volume / "last.ckpt", weights_only=False)["epoch"] == 1


def test_a_finished_run_resumed_from_an_older_checkpoint_of_its_folder_keeps_its_last_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"the latest epoch")
    (tmp_path / "checkpoints" / "best-000.ckpt").write_bytes(b"an older epoch")
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(save_last=True, dirpath=str(last.parent)))
    resume.keep_resumed_as_last(trainer, str(tmp_path / "checkpoints" / "best-000.ckpt"))
    assert last.read_bytes() == b"the latest epoch"
    last.unlink()
    resume.keep_resumed_as_last(trainer, str(tmp_path / "checkpoints" / "best-000.ckpt"))
    assert last.read_bytes() == b"an older epoch"  # none there: the resumed checkpoint becomes the folder's last


def test_a_resumed_cosine_schedule_follows_the_new_epoch_count(tmp_path):
    quiet = [*QUIET, "scheduler=cosine"]
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=2"], tmp_path / "a"))
    again = [*quiet, "trainer.max_epochs=4", f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"]
    resumed = compose_train_config("forecasting", again, tmp_path / "a")  # on in the same folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train(resumed)
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # its own checkpoints are expected
    elsewhere = compose_train_config("forecasting", again, tmp_path / "b")
    assert resume.resumes_in_own_folder(resumed) and not resume.resumes_in_own_folder(elsewhere)
    saved = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    schedule, lr = saved["lr_schedulers"][0], saved["optimizer_states"][0]["param_groups"][0]["lr"]
    assert schedule["T_max"] == 4 and schedule["last_epoch"] == 4
    assert lr == pytest.approx(0.0, abs=1e-12)  # the end of a 4-epoch cosine (the 2-epoch one would be back at 1e-3)


def test_a_plateau_schedule_resumed_in_the_other_mode_forgets_its_best():
    def plateau(mode: str, patience: int) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, patience=patience)

    trained = plateau("min", 2)
    for loss in (0.5, 0.4, 0.45):
        trained.step(loss)
    state, optimizer_state = trained.state_dict(), trained.optimizer.state_dict()
    changed = module.follow_configured_schedule(state, optimizer_state, plateau("max", 2))
    assert changed == ["mode 'min' -> 'max'"]
    assert state["best"] == -math.inf and state["num_bad_epochs"] == 0  # not 0.4, a loss, as the best accuracy
    same_mode = trained.state_dict()
    module.follow_configured_schedule(same_mode, optimizer_state, plateau("min", 5))
    assert same_mode["best"] == 0.4 and same_mode["num_bad_epochs"] == 1 and same_mode["patience"] == 5


def test_a_schedule_saved_by_another_torch_release_keeps_its_progress():
    def cosine(t_max: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)

    trained = cosine(4)
    for _ in range(2):
        trained.optimizer.step()
        trained.step()
    older = {k: v for k, v in trained.state_dict().items() if k != "_is_initial"} | {"verbose": False}
    optimizer_state = trained.optimizer.state_dict()
    assert module.follow_configured_schedule(older, optimizer_state, cosine(4), same_kind=True) == []
    assert older["last_epoch"] == 2 and optimizer_state["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert module.follow_configured_schedule(older, optimizer_state, cosine(8), same_kind=True) == ["T_max 4 -> 8"]
    assert older["last_epoch"] == 2 and optimizer_state["param_groups"][0]["lr"] == pytest.approx(8.5355e-4, rel=1e-4)
    module.follow_configured_schedule(older, optimizer_state, cosine(8), same_kind=False)  # another kind: afresh
    assert older["last_epoch"] == 0 and optimizer_state["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_resume_in_a_copied_run_folder_keeps_tracking_its_checkpoints(tmp_path):
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=1"], tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=3", f"ckpt_path={last}"],
                                   tmp_path / "b"))
    files = sorted(path.name for path in last.parent.iterdir())
    assert files[-1] == "last.ckpt" and len(files) == 2 and files[0].startswith("best-"), files  # no last-v1.ckpt
    state = next(value for key, value in torch.load(last, weights_only=False)["callbacks"].items()
                 if key.startswith("ModelCheckpoint{"))  # the key Lightning's own class reads
    assert state["dirpath"] == str(last.parent) and state["best_model_path"] == str(last.parent / files[0])


@pytest.mark.parametrize(("sent", "code", "why", "elsewhere"), [(signal.SIGTERM, 143, "stopped by SIGTERM", False),
                                                               (signal.SIGINT, 130, "interrupted", False),
                                                               (signal.SIGTERM, 143, "stopped by SIGTERM", True)])
def test_a_signal_stops_training_with_its_exit_code_and_names_the_checkpoint_to_resume_from(sent, code, why, elsewhere,
                                                                                            tmp_path):
    folder = tmp_path / "volume" if elsewhere else tmp_path / "checkpoints"  # the checkpoint callback's own folder
    command = [str(Path(sys.executable).parent / "gru-suite"), "task=forecasting", *TINY, "threads=1",
               "trainer.max_epochs=100000", f"hydra.run.dir={tmp_path}", f"callbacks.model_checkpoint.dirpath={folder}"]
    # A job started in the background (`pytest &`, a CI runner's shell) inherits SIGINT ignored, as POSIX
    # shells start background jobs, and so would the run: it starts with Ctrl-C's default, as from a terminal.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TQDM_DISABLE": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = folder / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]  # not 0 (SIGTERM) or 1 (Ctrl-C, Lightning's): 128 + signal
    assert f"error: {why}; resume: the same command with ckpt_path=last hydra.run.dir={tmp_path}" in stderr
    assert torch.load(last, weights_only=False)["epoch"] >= 0  # the checkpoint it names is whole


SIGNALLED_CLI = """
import os, signal, sys
from gru_suite import cli
calls, patched = [], getattr(cli, os.environ["SIGNAL_IN"])
def signalled(*args, **kwargs):  # e.g. a job starting: the sweep's second, or the run's only one
    calls.append(1)
    if len(calls) == int(os.environ["SIGNAL_AT_JOB"]):
        os.kill(os.getpid(), signal.SIGTERM)
    return patched(*args, **kwargs)
setattr(cli, os.environ["SIGNAL_IN"], signalled)
sys.argv = ["gru-suite", *sys.argv[1:]]
getattr(cli, os.environ["COMMAND"])()
"""


@pytest.mark.parametrize("sweep", [False, True])
def test_sigterm_outside_lightnings_loops_stops_with_one_line_and_its_exit_code(sweep, tmp_path):
    folder = f"hydra.sweep.dir={tmp_path}" if sweep else f"hydra.run.dir={tmp_path}"
    overrides = ["-m", "backbone.hidden_size=8,16"] if sweep else []
    result = subprocess.run([sys.executable, "-c", SIGNALLED_CLI, *overrides, "task=forecasting", *TINY[1:],
                             "threads=1", "trainer.max_epochs=1", folder], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1", "SIGNAL_AT_JOB": "2" if sweep else "1",
                                 "SIGNAL_IN": "_warn_undeclared_settings", "COMMAND": "train"})
    assert result.returncode == 143, result.stderr[-2000:]  # not killed without a word (-15)
    said = "error: stopped by SIGTERM" + (f"; resume: the same command with ckpt_path=last {folder}" if sweep else "")
    assert result.stderr.rstrip().endswith(said) and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["evaluate", "predict", "gates"])
def test_a_command_other_than_training_stopped_in_a_training_folder_names_nothing_to_resume(command, trained_run,
                                                                                             tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")  # its checkpoints/last.ckpt is training's, not theirs to resume
    result = subprocess.run([sys.executable, "-c", SIGNALLED_CLI, f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt",
                             "threads=1", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TQDM_DISABLE": "1", "SIGNAL_AT_JOB": "1",
                                              "SIGNAL_IN": "_restore", "COMMAND": command})
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("error: stopped by SIGTERM")  # no "resume: ... ckpt_path=last"


def test_a_checkpoint_is_written_beside_its_name_and_a_failed_save_leaves_the_previous_whole(tmp_path,
                                                                                             monkeypatch):
    trainer = run.build_trainer(compose_train_config("forecasting", ["trainer.accelerator=cpu"], tmp_path))
    writer = trainer.strategy.checkpoint_io
    assert isinstance(writer, AtomicCheckpointIO)  # every run's checkpoints go through it
    path = tmp_path / "checkpoints" / "last.ckpt"
    renames, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: renames.append((Path(source), Path(target)))
                        or replace(source, target))
    writer.save_checkpoint({"epoch": 3}, path)
    assert [(source.parent, target) for source, target in renames] == [(path.parent, path)]  # one rename, same folder
    with pytest.raises(Exception):  # torch.save fails after writing part of the file
        writer.save_checkpoint({"epoch": 4, "weights": torch.zeros(1000), "unpicklable": lambda: None}, path)
    assert torch.load(path)["epoch"] == 3 and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_an_atomic_write_is_on_disk_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    done = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: done.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda source, target: done.append(("replace", str(source))) or
                        replace(source, target))
    path = write_text(tmp_path / "report.csv", "a,b\n")
    assert path.read_text() == "a,b\n"
    assert [step for step, _ in done] == ["fsync", "replace"] and done[0][1] == done[1][1]  # the new file's data


def test_an_atomic_write_gets_the_permissions_a_plain_open_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_text(tmp_path / "metrics.csv", "a\n")  # mkstemp's own 0o600 would hide it from a group
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unfinished_writes_are_only_the_temporary_files_of_atomic_writes(tmp_path):
    for name in (".last.ckpt.abc_1234.ckpt", ".notes.txt.20240101", ".last.ckpt.abcdefgh.tmp", "best.ckpt"):
        (tmp_path / name).write_text("x")
    assert unfinished_writes(tmp_path) == [tmp_path / ".last.ckpt.abc_1234.ckpt"]  # a user's hidden files stay


@pytest.mark.parametrize("name", ["s" * 251 + ".csv", "音" * 83 + ".csv", "n" * 245 + "音.csv",
                                  "x" * 100 + "." + "y" * 130, "a." + "b" * 126, "音" + "." + "b" * 121],
                         ids=["ascii", "cjk", "cut-inside-a-letter", "long-suffix", "all-suffix", "no-letter-fits"])
def test_a_file_whose_name_is_near_the_longest_a_name_may_be_is_written_through_a_shorter_temporary_one(tmp_path,
                                                                                                     name):
    target = tmp_path / name  # 255 bytes at most, as a file name may have
    with atomic_path(target) as temporary:
        assert len(temporary.name.encode()) <= 255 and temporary.name.endswith(".csv" if name.endswith(".csv") else "")
        assert unfinished_writes(tmp_path) == [temporary]  # still found, were the write killed now
        temporary.write_text("a,b\n")
    assert target.read_text() == "a,b\n" and [path.name for path in tmp_path.iterdir()] == [target.name]


def test_files_a_library_saves_are_each_on_disk_before_they_are_moved_into_place(tmp_path, monkeypatch):
    from gru_suite.atomic import write_files

    def save(folder):  # as save_pretrained: the paths it wrote (a folder among them is not moved)
        (folder / "sub").mkdir()
        for name in ("a.json", "b.txt"):
            (folder / name).write_text(name)
        return [str(folder / "a.json"), folder / "b.txt", folder / "a.json", folder / "sub"]  # a name twice

    done = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: done.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
                        or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda source, target: done.append(("replace", Path(source).name)) or
                        replace(source, target))
    write_text(tmp_path / "tok" / "a.json", "old")
    done.clear()
    assert write_files(tmp_path / "tok", save) == [tmp_path / "tok" / "a.json", tmp_path / "tok" / "b.txt"]
    assert (tmp_path / "tok" / "a.json").read_text() == "a.json" and sorted(os.listdir(tmp_path)) == ["tok"]
    assert done == [("fsync", "a.json"), ("replace", "a.json"), ("fsync", "b.txt"), ("replace", "b.txt")]

    def failing(folder):
        (folder / "a.json").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_files(tmp_path / "new" / "tok", failing)
    assert sorted(os.listdir(tmp_path)) == ["new", "tok"] and os.listdir(tmp_path / "new") == []  # no tok/, no temp
    (tmp_path / "file").write_text("")
    blocked = f"{tmp_path / 'file'} is a file: cannot write {tmp_path / 'file' / 'a.json'}"
    with pytest.raises(UserError, match=blocked):
        write_files(tmp_path / "file", save)


def test_characters_a_figures_font_lacks_are_named_in_one_warning_and_other_warnings_pass(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from gru_suite.atomic import save_figure

    draw = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda *args, **kwargs: draw(*args, **kwargs) or warnings.warn("other"))
    fig = Figure()
    fig.subplots().set_title("温度 温 \N{THERMOMETER}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert save_figure(fig, tmp_path / "plot.png") == tmp_path / "plot.png"
    assert [str(warning.message) for warning in caught] == [
        "other", f"{tmp_path / 'plot.png'}: font(s) DejaVu Sans have no glyph for '度温\N{THERMOMETER}', drawn as "
        "empty boxes (set matplotlib's font.family, e.g. in a matplotlibrc file, to a font that has them)"]
    assert caught[1].filename == __file__  # the caller's line


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = write_text(tmp_path / "report.csv", "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("half a new re")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_a_preset_of_another_task_is_refused_not_merged_into_the_chosen_one():
    result = run_cli("gru-suite", "task=sentiment", "experiment=seed_keras_example")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: experiment=seed_keras_example is a preset of task forecasting, not of "
                                     "task=sentiment: drop task=sentiment (the preset selects its task), or choose a "
                                     "preset of task sentiment")


def test_a_folder_or_file_in_the_way_of_an_output_is_one_line(tmp_path):
    (tmp_path / "report.csv").mkdir()
    with pytest.raises(UserError, match=r"report\.csv is a folder: cannot write the file of that name$"):
        write_text(tmp_path / "report.csv", "a,b\n")
    (tmp_path / "plots").write_text("")
    with pytest.raises(UserError, match=r"plots is a file: cannot write .*plots/a/report\.csv inside it$"):
        write_text(tmp_path / "plots" / "a" / "report.csv", "a,b\n")
    result = run_cli("gru-suite", "task=forecasting", f"hydra.run.dir={tmp_path / 'plots' / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: hydra.run.dir={tmp_path / 'plots' / 'run'}: {tmp_path / 'plots'} is a " \
                                    "file, not a folder"


def test_resuming_from_last_checks_the_run_folders_checkpoint_as_any_other(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"PK\x03\x04 cut short")  # a checkpoint an earlier crash truncated
    with pytest.raises(UserError, match=f"{re.escape(str(last))} is not a checkpoint, or is truncated"):
        run.train(compose_train_config("forecasting", [*TINY, "ckpt_path=last"], tmp_path))


def test_resuming_from_last_before_any_checkpoint_says_it_starts_afresh_in_its_own_words(tmp_path, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train(compose_train_config("forecasting", [*TINY, "trainer.max_epochs=1", "ckpt_path=last"], tmp_path))
    assert f"ckpt_path=last: no last.ckpt in {tmp_path / 'checkpoints'} yet, so training starts afresh" in caplog.text
    assert not [w for w in caught if "no last checkpoint" in str(w.message)]  # Lightning's, whose hint misleads here
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    for keeps_no_last in ("callbacks=none", "callbacks.model_checkpoint.save_last=false"):
        caplog.clear()
        with pytest.warns(UserWarning, match="no last checkpoint available.*save_last=True"):  # and here it is right
            run.train(compose_train_config("forecasting", [*TINY, "trainer.max_epochs=1", "ckpt_path=last",
                                                           keeps_no_last], tmp_path / keeps_no_last))
        assert "ckpt_path=last" not in caplog.text  # no last.ckpt is to come


def test_a_checkpoint_with_damaged_pickled_data_is_one_line(tmp_path):
    import zipfile

    whole = tmp_path / "whole.ckpt"
    torch.save({"a": 1}, whole)
    damaged = tmp_path / "damaged.ckpt"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():  # data.pkl now names a class that does not exist
            data = b"\x80\x02cgru_suite.checkpoint\nNoSuchClass\nq\x00." if item.filename.endswith("data.pkl") else None
            target.writestr(item, data if data is not None else source.read(item))
    with pytest.raises(UserError, match=rf"^cannot read checkpoint {re.escape(str(damaged))} \(damaged\?\): "
                                        "AttributeError: .*NoSuchClass"):
        read_checkpoint(damaged)
    checkpoint = torch.load(whole, weights_only=False) | {module.CHECKPOINT_KEY: {}}
    torch.save(checkpoint, damaged)
    with pytest.raises(UserError, match=rf"^{re.escape(str(damaged))} holds no model weights \(no 'state_dict'"):
        read_checkpoint(damaged)


def test_a_checkpoint_whose_weights_were_damaged_is_refused(trained_run, tmp_path):
    last = trained_run / "checkpoints" / "last.ckpt"
    weight = torch.load(last, weights_only=False)["state_dict"]["model.head.1.weight"]
    data = bytearray(last.read_bytes())
    at = data.find(weight.numpy().tobytes())  # the stored values, which torch.load would return flipped
    data[at] ^= 0x40
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^{re.escape(str(damaged))} is damaged: its entry data/\d+ does not "
                                        "match its checksum$"):  # not the folder torch.save names after the file
        read_checkpoint(damaged)
    result = run_forked("gru-suite-eval", "task=forecasting", f"ckpt_path={damaged}",
                        f"hydra.run.dir={tmp_path / 'ev'}")
    assert result.returncode != 0 and "is damaged: its entry" in result.stderr and "Traceback" not in result.stderr


def test_a_fresh_run_into_a_folder_with_checkpoints_moves_them_aside(trained_run, tmp_path):
    shutil.copytree(trained_run / "checkpoints", tmp_path / "checkpoints")  # an earlier (interrupted) run's
    shutil.copy(trained_run / "metrics.json", tmp_path / "metrics.json")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "forecast.csv").write_text("its artifacts\n")
    earlier = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    quiet = [*QUIET, "trainer.max_epochs=1"]
    run.train(compose_train_config("forecasting", quiet, tmp_path))
    assert sorted(path.name for path in (tmp_path / "checkpoints.1").iterdir()) == earlier
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["best-000.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0  # this run's
    assert (tmp_path / "metrics.1.json").read_text() == (trained_run / "metrics.json").read_text()
    assert (tmp_path / "predictions.1" / "forecast.csv").read_text() == "its artifacts\n"  # not taken for this run's
    assert not (tmp_path / "predictions").exists()


def test_a_restart_with_ckpt_path_last_that_finds_no_last_checkpoint_moves_earlier_ones_aside(trained_run, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "best-007.ckpt")  # killed early
    quiet = [*QUIET, "trainer.max_epochs=1"]
    run.train(compose_train_config("forecasting", [*quiet, "ckpt_path=last"], tmp_path))
    assert [path.name for path in (tmp_path / "checkpoints.1").iterdir()] == ["best-007.ckpt"]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["best-000.ckpt", "last.ckpt"]


def test_a_run_that_early_stopping_ended_trains_no_further_when_resumed(tmp_path):
    stopping = ["callbacks=early_stopping", "callbacks.early_stopping.patience=1", "optimizer.lr=0", "threads=1",
                "test_after_training=false", "predict_after_training=false"]  # no change: stops after 2 epochs
    lightnings = "callbacks.early_stopping._target_=pytorch_lightning.callbacks.EarlyStopping"  # checkpoints before
    run.train(compose_train_config("forecasting", [*TINY, *stopping, lightnings, "trainer.max_epochs=6"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    stopped, metrics = torch.load(last, weights_only=False), json.loads((tmp_path / "metrics.json").read_text())
    assert stopped["epoch"] == 1
    run.train(compose_train_config("forecasting", [*TINY, *stopping, "trainer.max_epochs=6", "ckpt_path=last"],
                                   tmp_path))
    assert torch.load(last, weights_only=False)["global_step"] == stopped["global_step"]  # not one batch more
    kept = json.loads((tmp_path / "metrics.json").read_text())  # the last epoch's train/val, though none was logged
    assert [kept[key] for key in ("train/loss", "val/loss")] == [metrics[key] for key in ("train/loss", "val/loss")]


def test_a_resumed_run_takes_this_runs_early_stopping_patience(tmp_path):
    stopping = ["callbacks=early_stopping", "optimizer.lr=0", "threads=1", "test_after_training=false",
                "predict_after_training=false", "trainer.max_epochs=6"]  # no change: one epoch more each time
    run.train(compose_train_config("forecasting", [*TINY, *stopping, "callbacks.early_stopping.patience=1"], tmp_path))
    run.train(compose_train_config("forecasting", [*TINY, *stopping, "callbacks.early_stopping.patience=3",
                                                   "ckpt_path=last"], tmp_path))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(value for key, value in checkpoint["callbacks"].items() if key.startswith("EarlyStopping{"))
    assert checkpoint["epoch"] == 3 and state["patience"] == 3 and state["wait_count"] == 3  # stopped at 3, not 1


def test_a_checkpoint_saved_at_a_validation_within_its_last_epoch_counts_that_epoch(tmp_path, caplog):
    within = [*QUIET, "trainer.val_check_interval=0.5", "++trainer.limit_train_batches=4"]  # validating at 2 and 4
    run.train(compose_train_config("forecasting", [*within, "trainer.max_epochs=2"], tmp_path))
    run.train(compose_train_config("forecasting", [*within, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path))
    assert "has trained 2 epoch(s)" in caplog.text
    with pytest.raises(UserError, match=r"has trained 2 epochs: trainer.max_epochs=1 is below that"):
        run.train(compose_train_config("forecasting", [*within, "trainer.max_epochs=1", "ckpt_path=last"], tmp_path))


def test_a_monitor_resumed_in_the_other_mode_is_another_monitor(caplog):
    stored = OmegaConf.create({"monitor": "val/loss", "monitor_mode": "min"})
    same, other = ({"task": {"monitor": "val/loss", "monitor_mode": mode}} for mode in ("min", "max"))
    assert not resume.warn_of_another_monitor(stored, OmegaConf.create(same), "a.ckpt")
    assert resume.warn_of_another_monitor(stored, OmegaConf.create(other), "a.ckpt")
    assert "chose its best checkpoint by val/loss (min), this run by val/loss (max)" in caplog.text


def test_a_run_resumed_with_another_monitor_says_so_and_keeps_one_last_checkpoint(tmp_path, caplog):
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=1"], tmp_path))
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=2", "task.monitor=val/mae",
                                                   "ckpt_path=last"], tmp_path))
    assert "chose its best checkpoint by val/loss (min), this run by val/mae (min)" in caplog.text
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["best-000.ckpt", "best-001.ckpt", "last.ckpt"]  # not last-v1.ckpt beside the first run's
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_resuming_with_fewer_epochs_than_the_checkpoint_trained_is_one_clear_error(trained_run, tmp_path):
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    before = sorted(path.name for path in copy.iterdir())
    with pytest.raises(UserError, match=r"has trained 2 epochs: trainer.max_epochs=1 is below that; give at least 2"):
        run.train(compose_train_config("forecasting", [*TINY, "trainer.max_epochs=1", "ckpt_path=last"], copy))
    assert sorted(path.name for path in copy.iterdir()) == before  # nothing moved aside (metrics.csv stays)
    checkpoint = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint["epoch"] = 2  # as a third epoch's
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] = 3
    torch.save(checkpoint, copy / "checkpoints" / "last.ckpt")
    before = sorted(path.name for path in copy.iterdir())
    with pytest.raises(UserError, match=r"has trained 3 epochs: debug=fdr \(trainer.fast_dev_run\) runs as one "
                                        r"epoch, which cannot resume it"):  # Lightning's traceback, after the moves
        run.train(compose_train_config("forecasting", [*TINY, "debug=fdr", "ckpt_path=last"], copy))
    assert sorted(path.name for path in copy.iterdir()) == before


@pytest.mark.parametrize("reached", ["epochs", "steps", "epochs under fast_dev_run"])
def test_resuming_a_checkpoint_with_no_training_left_says_so(trained_run, tmp_path, caplog, reached):
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    steps = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    named = f"trainer.max_steps={steps}" if reached == "steps" else "trainer.max_epochs=2"  # just reached
    limits = {"epochs": [named], "steps": ["trainer.max_epochs=3", named],
              "epochs under fast_dev_run": [named, "debug=fdr"]}
    run.train(compose_train_config("forecasting", [*QUIET, *limits[reached], "ckpt_path=last"], copy))
    said = re.search(rf"has trained 2 epoch\(s\) \(\d+ steps\), all that {re.escape(named)} allows: this run trains "
                     "no further", caplog.text)
    assert bool(said) == (reached != "epochs under fast_dev_run")  # which runs its one step whatever the limits
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1  # still the second


def test_a_resumed_run_moves_the_artifacts_it_replaces_aside_as_it_starts(trained_run, tmp_path, monkeypatch):
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    run.train(compose_train_config("forecasting", [*TINY, "threads=1", "trainer.max_epochs=3", "ckpt_path=last"], copy))
    earlier, now = copy / "predictions.1" / "forecast.csv", copy / "predictions" / "forecast.csv"
    assert earlier.read_text() == (trained_run / "predictions" / "forecast.csv").read_text() != now.read_text()
    now_text = now.read_text()
    assert (copy / "metrics.1.json").read_text() == (trained_run / "metrics.json").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pl.Trainer, "fit", killed)
    with pytest.raises(KeyboardInterrupt):  # a resume killed as it trains: no results that are not its own
        run.train(compose_train_config("forecasting", [*TINY, "trainer.max_epochs=5", "ckpt_path=last"], copy))
    assert not (copy / "metrics.json").exists() and not (copy / "predictions").exists()
    assert (copy / "metrics.2.json").is_file() and (copy / "predictions.2" / "forecast.csv").read_text() == now_text


def test_a_fresh_run_moves_an_earlier_runs_files_aside_before_it_trains_whatever_numbers_are_taken(tmp_path):
    for name in ("checkpoints/last.ckpt", "predictions/forecast.csv", "predictions.1/forecast.csv", "metrics.json",
                 "tensorboard/events.out.tfevents.1"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    run.keep_earlier_checkpoints(compose_train_config("forecasting", [], tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints.1", "metrics.1.json", "predictions.1",
                                                                 "predictions.2", "tensorboard.1"]
    assert (tmp_path / "predictions.2" / "forecast.csv").read_text() == "predictions/forecast.csv"


def test_a_finished_run_resumed_into_a_new_folder_can_be_resumed_there_again(trained_run, tmp_path):
    source = trained_run / "checkpoints" / "last.ckpt"
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=2", f"ckpt_path={source}"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == torch.load(source, weights_only=False)["global_step"]
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path))
    assert torch.load(last, weights_only=False)["epoch"] == 2 and not (tmp_path / "checkpoints.1").exists()


def test_a_resumed_run_trains_on_as_if_it_had_never_stopped(tmp_path):
    dropout = ["backbone.num_layers=2", "backbone.dropout=0.5"]  # masks drawn from the generator the batches use
    resumed, uninterrupted = resumed_and_uninterrupted("forecasting", [*TINY, *dropout], tmp_path)
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


def test_a_run_resumed_part_way_through_an_epoch_trains_its_other_batches_as_if_never_stopped(tmp_path, caplog):
    dropout = ["backbone.num_layers=2", "backbone.dropout=0.5", "task.data.batch_size=16"]
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="pytorch_lightning"), \
            warnings.catch_warnings(record=True) as warned:  # Lightning's logger may be quietened by another test
        warnings.simplefilter("always")
        resumed, uninterrupted = resumed_part_way_and_uninterrupted("forecasting", [*TINY, *dropout], tmp_path)
    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    weights = uninterrupted["state_dict"]
    assert all(torch.equal(resumed["state_dict"][name], weights[name]) for name in weights)
    assert "resuming part-way through epoch 0: its first 2 batches were trained" in caplog.text
    assert not [w for w in warned if "dataloader is not resumable" in str(w.message)]  # Lightning's: it is, here
    losses = [[row["train/loss"] for row in csv.DictReader((tmp_path / folder / name).open()) if row["train/loss"]]
              for folder, name in (("parts", "metrics.csv"), ("whole", "metrics.csv"))]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # epoch 0's mean over all four batches, then epoch 1's


class StopsAsMaxTimeDoes(pl.Callback):
    """Stops training after the third batch of epoch 1, as `trainer.max_time` does when the time is up."""

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, index: int) -> None:
        if trainer.current_epoch == 1 and index == 2:
            trainer.should_stop = True


def test_a_run_resumed_after_max_time_cut_an_epoch_short_trains_the_next_epoch_whole(tmp_path, monkeypatch, caplog):
    quiet = [*QUIET, "task.data.batch_size=16", "trainer.limit_train_batches=6", "trainer.max_epochs=3"]
    configured = run.configured_callbacks
    monkeypatch.setattr(run, "configured_callbacks", lambda cfg: [*configured(cfg), StopsAsMaxTimeDoes()])
    run.train(compose_train_config("forecasting", quiet, tmp_path))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6 + 3
    monkeypatch.setattr(run, "configured_callbacks", configured)
    with caplog.at_level(logging.INFO):
        run.train(compose_train_config("forecasting", [*quiet, "ckpt_path=last"], tmp_path))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6 + 3 + 6
    assert "resuming part-way" not in caplog.text  # the cut epoch ended where it stopped
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(row["epoch"], row["step"]) for row in rows if row["val/loss"]] == [("2", "14")]  # validated, whole
    assert [(row["epoch"], row["step"]) for row in rows if row["train/loss"]] == [("2", "14")]


def test_resuming_a_weight_averaged_run_without_its_average_is_a_warning(tmp_path, caplog):
    ema = "callbacks.ema={_target_: gru_suite.callbacks.EMAWeights, decay: 0.9}"
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=1", ema], tmp_path / "ema"))
    last = tmp_path / "ema" / "checkpoints" / "last.ckpt"
    for name, extra in (("with", [ema]), ("without", [])):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=2", f"ckpt_path={last}",
                                                           *extra], tmp_path / name))
        warning = f"ckpt_path {last} was trained with a weight average (callbacks.ema) that this run lacks"
        assert (warning in caplog.text) == (name == "without")


def test_a_checkpoint_a_killed_run_did_not_finish_writing_is_removed_by_the_next_run(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    with pytest.raises(KeyboardInterrupt), atomic_path(checkpoints / "best-000.ckpt") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert not list(checkpoints.iterdir())  # an exception removes it; a kill cannot, so leave one as a kill would
    (checkpoints / ".best-000.ckpt.1sftr_fu.ckpt").write_bytes(b"half")
    (checkpoints / ".notes.txt").write_text("a user's")
    assert unfinished_writes(checkpoints) == [checkpoints / ".best-000.ckpt.1sftr_fu.ckpt"]
    quiet = [*QUIET, "trainer.max_epochs=1"]
    run.train(compose_train_config("forecasting", quiet, tmp_path))
    assert not (checkpoints / ".best-000.ckpt.1sftr_fu.ckpt").exists() and (checkpoints / ".notes.txt").exists()


def test_a_resumed_run_that_trains_on_reports_only_its_own_metrics(tmp_path):
    quiet = [*TINY, "threads=1", "predict_after_training=false"]
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=1"], tmp_path))
    assert "test/loss" in json.loads((tmp_path / "metrics.json").read_text())
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=2", "ckpt_path=last",
                                                   "test_after_training=false"], tmp_path))
    assert "test/loss" not in json.loads((tmp_path / "metrics.json").read_text())  # the first model's score


@pytest.mark.parametrize("value, error", [
    ("''", "ckpt_path is empty: give a checkpoint file, ckpt_path=last, or leave it out to start afresh"),
    ("best", "ckpt_path=best: training resumes from a checkpoint file; ckpt_path=last is "),
    ("registry", "ckpt_path=registry (Lightning's model registry, online) is not supported"),
    ("hpc", "ckpt_path=hpc: no hpc_ckpt_<n>.ckpt in "),
])
def test_a_ckpt_path_that_names_no_checkpoint_to_resume_is_one_line(value, error, tmp_path):
    with pytest.raises(UserError, match=re.escape(error)):
        resume.resume_path(compose_train_config("forecasting", [f"ckpt_path={value}"], tmp_path))


@pytest.mark.parametrize("entry, said", [("a broken link", "a broken link"), ("a pipe", "not a regular file"),
                                         ("a folder", "a folder")])
def test_ckpt_path_last_naming_no_checkpoint_file_is_one_line_before_any_work(entry, said, tmp_path):
    cfg = compose_train_config("forecasting", ["ckpt_path=last"], tmp_path)
    last = resume.checkpoint_folder(cfg) / "last.ckpt"
    last.parent.mkdir(parents=True)
    {"a broken link": lambda: last.symlink_to(tmp_path / "gone.ckpt"), "a pipe": lambda: os.mkfifo(last),
     "a folder": last.mkdir}[entry]()
    (last.parent / "best-000.ckpt").write_bytes(b"an earlier run's")  # which starting afresh here would write over
    assert not resume.resumes_in_own_folder(cfg)
    with pytest.raises(UserError, match=re.escape(f"{last}: {said}") + r".*not a checkpoint file \(remove it"):
        resume.resume_path(cfg)


def test_an_error_closes_the_progress_bars_it_interrupted_so_its_line_stays_the_last(capsys):
    from tqdm import tqdm

    bar = tqdm(total=3, desc="Epoch 0", file=sys.stderr)
    bar.update(1)
    cli._end_progress_line()
    assert bar not in getattr(tqdm, "_instances", ()) and capsys.readouterr().err.endswith("\n")  # none redraws


def test_file_system_failures_are_one_line_naming_the_file(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:
        raise RuntimeError("Lightning's wrapper") from full
    except RuntimeError as err:
        assert str(filesystem_error_in(err, tmp_path)) == f"writing in {tmp_path}: No space left on device"
    assert filesystem_error_in(ValueError("a bug"), tmp_path) is None
    with pytest.raises(OSError) as raised, atomic_path(tmp_path / "report.csv"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write() names no file
    assert raised.value.filename == str(tmp_path / "report.csv") and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", lambda *args: (_ for _ in ()).throw(RuntimeError("basic_ios::clear")))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))  # noqa: SLF001
    with pytest.raises(OSError, match=r"No space left on device: '.*last.ckpt'"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_ckpt_path_hpc_resumes_from_lightnings_latest_requeue_checkpoint(tmp_path):
    for number in (2, 10):
        (tmp_path / f"hpc_ckpt_{number}.ckpt").write_bytes(b"")
    cfg = compose_train_config("forecasting", ["ckpt_path=hpc"], tmp_path)
    assert resume.resume_path(cfg) == str(tmp_path / "hpc_ckpt_10.ckpt")  # read and checked as any other


def test_resuming_into_a_new_folder_carries_the_best_checkpoint_there(tmp_path):
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=2"], tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    key = next(key for key in checkpoint["callbacks"] if key.startswith("ModelCheckpoint{"))
    state = checkpoint["callbacks"][key]
    best = state["best_model_path"]
    state["best_model_score"] = state["best_k_models"][best] = torch.tensor(1e-9)  # an epoch no later one beats
    torch.save(checkpoint, last)
    metrics = run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=3",
                                                             f"ckpt_path={last}"], tmp_path / "b"))
    carried = tmp_path / "b" / "checkpoints" / Path(best).name
    assert sorted(path.name for path in carried.parent.iterdir()) == [carried.name, "last.ckpt"]
    assert metrics["val/loss_best"] == pytest.approx(1e-9)  # the earlier best still stands, and is tested
    assert torch.equal(torch.load(carried, weights_only=False)["state_dict"]["model.backbone.rnn.weight_hh_l0"],
                       torch.load(best, weights_only=False)["state_dict"]["model.backbone.rnn.weight_hh_l0"])


def test_a_copied_run_folder_without_its_best_checkpoint_resumes_into_its_own_last_checkpoint(trained_run, tmp_path):
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    for best in (copy / "checkpoints").glob("best-*.ckpt"):
        best.unlink()  # the copied last.ckpt names the original folder's best, which is carried over
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=3", "ckpt_path=last"], copy))
    names = sorted(path.name for path in (copy / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and all(name.startswith("best-") for name in names[:-1])  # no last-v1.ckpt
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("scheduler", ["none", "cosine"])
def test_resuming_with_another_learning_rate_uses_it(scheduler, tmp_path):
    quiet = [*QUIET, f"scheduler={scheduler}"]
    run.train(compose_train_config("forecasting", [*quiet, "optimizer.lr=0.01", "trainer.max_epochs=1"],
                                   tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    run.train(compose_train_config("forecasting", [*quiet, "optimizer.lr=0.001", "trainer.max_epochs=2",
                                                   f"ckpt_path={last}"], tmp_path))
    checkpoint = torch.load(last, weights_only=False)
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    if scheduler == "none":
        assert group["lr"] == pytest.approx(0.001)
    else:  # the cosine schedule over two epochs from the new base rate, its progress kept
        assert checkpoint["lr_schedulers"][0]["base_lrs"] == pytest.approx([0.001])
        assert group["lr"] == pytest.approx(0.0) and group["initial_lr"] == pytest.approx(0.001)


def test_a_run_resumed_without_its_schedule_trains_at_optimizer_lr(tmp_path):
    run.train(compose_train_config("forecasting", [*QUIET, "scheduler=cosine", "optimizer.lr=0.01",
                                                   "trainer.max_epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"][0]["lr"] < 0.005  # annealed
    run.train(compose_train_config("forecasting", [*QUIET, "scheduler=none", "optimizer.lr=0.01",
                                                   "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path))
    (group,) = torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert group["lr"] == pytest.approx(0.01)  # not the schedule's last rate


def test_a_resumed_plateau_schedule_sees_the_checkpoints_epoch(tmp_path):
    quiet = [*QUIET, "scheduler=plateau"]
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=2"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["lr_schedulers"][0]["last_epoch"] == 1  # saved before Lightning steps it with epoch 1's value
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=3", f"ckpt_path={last}"],
                                   tmp_path))
    schedule = torch.load(last, weights_only=False)["lr_schedulers"][0]
    assert schedule["last_epoch"] == 2  # epochs 0 and 1, as an uninterrupted run's at this point
    assert schedule["best"] <= first["gru_suite"]["monitored"]


@pytest.mark.parametrize("every", [1, 2])
def test_a_plateau_schedule_resumed_steps_as_often_as_an_uninterrupted_one(every, tmp_path):
    quiet = ["test_after_training=false", "predict_after_training=false", "threads=1", "scheduler=plateau",
             f"trainer.check_val_every_n_epoch={every}"]
    run.train(compose_train_config("forecasting", [*TINY, *quiet, "trainer.max_epochs=6"], tmp_path / "whole"))
    run.train(compose_train_config("forecasting", [*TINY, *quiet, "trainer.max_epochs=4"], tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    run.train(compose_train_config("forecasting", [*TINY, *quiet, "trainer.max_epochs=6", f"ckpt_path={last}"],
                                   tmp_path / "cut"))
    steps = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]["last_epoch"]
             for folder in (tmp_path / "whole", tmp_path / "cut")]
    assert steps == [6 // every - 1] * 2  # saved after the last validation, before the schedule's step after it


def test_a_stopped_command_names_the_checkpoint_to_resume_from_if_there_is_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.stopped("interrupted", tmp_path / "checkpoints", 130)
    assert exit_info.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):
        cli.stopped("interrupted", tmp_path / "checkpoints", 130)
    assert capsys.readouterr().err == f"error: interrupted; resume with ckpt_path={tmp_path}/checkpoints/last.ckpt\n"


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_a_stopped_command_says_which_command_resumes_it(mode, tmp_path, capsys, run_start):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    (tmp_path / "job" / "checkpoints").mkdir(parents=True)
    (tmp_path / "job" / "checkpoints" / "last.ckpt").write_bytes(b"")
    config = hydra_run_config(str(tmp_path / "job"))
    with open_dict(config):
        config.hydra.mode = RunMode.MULTIRUN if mode == "sweep" else RunMode.RUN
        config.hydra.runtime.output_dir, config.hydra.sweep.dir = str(tmp_path / "job"), str(tmp_path)
    HydraConfig.instance().set_config(config)
    with pytest.raises(SystemExit):
        cli.stopped("stopped by SIGTERM", tmp_path / "job" / "checkpoints", 143,
                    str(tmp_path) if mode == "sweep" else None)  # the sweep's folder, for a training sweep
    folder = f"hydra.sweep.dir={tmp_path}" if mode == "sweep" else f"hydra.run.dir={tmp_path / 'job'}"
    said = capsys.readouterr().err
    assert said == f"error: stopped by SIGTERM; resume: the same command with ckpt_path=last {folder}\n"


def test_a_sweep_stopped_where_no_job_kept_a_checkpoint_names_none_to_resume(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.stopped("stopped by SIGTERM", tmp_path / "1" / "checkpoints", 143, str(tmp_path))
    assert exit_info.value.code == 143 and capsys.readouterr().err == "error: stopped by SIGTERM\n"
    (tmp_path / "0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "0" / "checkpoints" / "last.ckpt").write_bytes(b"")  # an earlier job's: the rerun resumes it
    with pytest.raises(SystemExit):
        cli.stopped("stopped by SIGTERM", tmp_path / "1" / "checkpoints", 143, str(tmp_path))
    assert capsys.readouterr().err == ("error: stopped by SIGTERM; resume: the same command with ckpt_path=last "
                                       f"hydra.sweep.dir={tmp_path}\n")


def test_resuming_from_a_moved_aside_checkpoint_tracks_its_best_checkpoint(tmp_path):
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=2"], tmp_path))
    run.train(compose_train_config("forecasting", [*QUIET, "trainer.max_epochs=1"], tmp_path))  # afresh
    last = tmp_path / "checkpoints.1" / "last.ckpt"  # the first run's, moved aside
    checkpoint = torch.load(last, weights_only=False)
    state = next(value for key, value in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint{"))
    best = Path(state["best_model_path"])
    assert best.parent == tmp_path / "checkpoints"  # as it was saved
    state["best_model_score"] = state["best_k_models"][str(best)] = torch.tensor(1e-9)
    torch.save(checkpoint, last)
    metrics = run.train(compose_train_config("forecasting", [*TINY, "threads=1", "trainer.max_epochs=3",
                                                             "predict_after_training=false", f"ckpt_path={last}"],
                                             tmp_path))  # tests the best checkpoint, which lies in checkpoints.1
    assert metrics["val/loss_best"] == pytest.approx(1e-9) and "test/mse" in metrics


def test_a_schedule_of_another_kind_starts_afresh_on_resume(tmp_path):
    run.train(compose_train_config("forecasting", [*QUIET, "scheduler=plateau", "trainer.max_epochs=1"],
                                   tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    cut = torch.load(last, weights_only=False)
    cut["optimizer_states"][0]["param_groups"][0]["lr"] = 1.25e-4  # as the plateau would after cuts
    torch.save(cut, last)
    run.train(compose_train_config("forecasting", [*QUIET, "scheduler=cosine", "trainer.max_epochs=3",
                                                   f"ckpt_path={last}"], tmp_path))
    schedule = torch.load(last, weights_only=False)["lr_schedulers"][0]
    assert schedule["T_max"] == 3 and "patience" not in schedule  # a cosine state, not a hybrid with the plateau's
    assert schedule["base_lrs"] == pytest.approx([1e-3])  # optimizer.lr, not the plateau's last rate
    assert schedule["last_epoch"] == 2  # started with the resumed run's two epochs
    run.train(compose_train_config("forecasting", [*QUIET, "scheduler=none", "trainer.max_epochs=4",
                                                   f"ckpt_path={last}"], tmp_path))
    (group,) = torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert group["lr"] == pytest.approx(1e-3)  # no schedule: the base rate, not the cosine's last (0 at its end)


def test_a_resumed_run_takes_this_runs_optimizer_settings(tmp_path):
    quiet = [*QUIET, "scheduler=none"]
    run.train(compose_train_config("forecasting", [*quiet, "trainer.max_epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    steps = torch.load(last, weights_only=False)["global_step"]
    run.train(compose_train_config("forecasting", [*quiet, "optimizer.weight_decay=0.1", "optimizer.lr=2e-3",
                                                   "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path))
    optimizer = torch.load(last, weights_only=False)["optimizer_states"][0]
    assert optimizer["param_groups"][0]["weight_decay"] == 0.1 and optimizer["param_groups"][0]["lr"] == 2e-3
    assert {float(state["step"]) for state in optimizer["state"].values()} == {2 * steps}  # Adam's moments kept
    run.train(compose_train_config("forecasting", [*quiet, "optimizer=adamw", "optimizer.lr=2e-3",
                                                   "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path))
    optimizer = torch.load(last, weights_only=False)["optimizer_states"][0]
    assert optimizer["param_groups"][0]["weight_decay"] == 1e-2  # adamw's, not the checkpoint's 0.1
    assert {float(state["step"]) for state in optimizer["state"].values()} == {steps}  # AdamW's own, from its start


def test_a_resumed_optimizer_keeps_what_a_schedule_keeps_in_its_groups():
    cycled = {"params": [0], "lr": 4e-3, "initial_lr": 1e-3, "max_lr": 1e-2, "betas": (0.85, 0.999), "eps": 1e-8,
              "weight_decay": 0.0}  # OneCycleLR's keys and its cycled momentum
    configured = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 4e-3}], weight_decay=0.1)
    changed = module.follow_configured_optimizer([cycled], configured, {"weight_decay"})
    assert changed[0] == "weight_decay 0.0 -> 0.1" and cycled["weight_decay"] == 0.1  # the setting this run changes
    assert cycled["max_lr"] == 1e-2 and cycled["betas"] == (0.85, 0.999) and cycled["initial_lr"] == 1e-3
    assert cycled["lr"] == 4e-3 and "amsgrad" in cycled  # a key the checkpoint's groups lack is added


def test_a_run_into_a_folder_with_metrics_keeps_them(tmp_path):
    cfg = compose_train_config("forecasting", [*TINY, "trainer.max_epochs=1", "test_after_training=false",
                                               "predict_after_training=false"], tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,train/loss\n0,1.5\n")  # an earlier run's history
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train(cfg)
    assert not [w for w in caught if "Experiment logs directory" in str(w.message)]  # "will be deleted": not so
    assert (tmp_path / "metrics.1.csv").read_text() == "epoch,train/loss\n0,1.5\n"
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].dropna().unique().tolist() == [0]  # this run's


def test_eval_into_a_training_folder_keeps_the_training_config(trained_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    trained = (folder / ".hydra" / "config.yaml").read_text()
    refused = run_forked("gru-suite-eval", f"ckpt_path={folder}/checkpoints/last.ckpt", f"hydra.run.dir={folder}",
                         "task=forecasting", "task.data.batch_size=0")
    assert refused.returncode == 2 and "task.data.batch_size must be" in refused.stderr, refused.stderr[-2000:]
    assert (folder / ".hydra" / "config.yaml").read_text() == trained and not (folder / ".hydra.1").exists()
    result = run_forked("gru-suite-eval", f"ckpt_path={folder}/checkpoints/last.ckpt", f"hydra.run.dir={folder}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / ".hydra.1" / "config.yaml").read_text() == trained  # set aside, as metrics.csv is
    assert (folder / ".hydra" / "config.yaml").read_text() != trained and (folder / "metrics.1.csv").is_file()


def hydra_run_config(run_dir: str, *overrides: str) -> DictConfig:
    """The train config with its `hydra` node, as a command's Hydra callbacks get it, running into `run_dir`."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("train", overrides=["task=forecasting", *overrides,
                                             registry.searchpath_override(registry.config_search_path())],
                         return_hydra_config=True)
    with open_dict(config):
        config.hydra.run.dir = run_dir
    return config


@pytest.fixture
def run_start(monkeypatch):
    """A command's state when Hydra's run-start hooks run: one process, no Hydra config set (unset again after the
    test, as is what `KeepEarlierConfig` set aside)."""
    from hydra.core.hydra_config import HydraConfig

    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    monkeypatch.setattr(run_folder, "_run_start", None)
    monkeypatch.setattr(run_folder, "_moved_aside", [])


@pytest.mark.parametrize(("environment", "moved"), [
    ({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"SLURM_PROCID": "2"}, False),
    ({"NODE_RANK": "1"}, False), ({"LOCAL_RANK": "1"}, False),  # a later node's process, a worker Lightning started
])
def test_only_the_first_process_keeps_the_earlier_config(environment, moved, tmp_path, monkeypatch, run_start):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / ".hydra").mkdir()
    config = hydra_run_config(str(tmp_path))
    KeepEarlierConfig().on_run_start(config)
    assert (tmp_path / ".hydra.1").is_dir() == moved and (tmp_path / ".hydra").is_dir() != moved
    assert (config.hydra.output_subdir is None) != moved  # the others write no .hydra/ over the earlier run's


def test_a_run_folder_that_cannot_be_written_stops_the_run_before_hydra_writes_its_config(tmp_path, monkeypatch,
                                                                                          capsys, run_start):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("the earlier run's\n")

    def read_only(run_dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(run_dir / ".gru-suite.lock"))

    monkeypatch.setattr(run_folder, "hold_run_folder", read_only)
    with pytest.raises(SystemExit) as stop:  # Hydra only warns of a callback's exception, then writes .hydra/
        KeepEarlierConfig().on_run_start(hydra_run_config(str(tmp_path)))
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"error: hydra.run.dir={tmp_path}: {tmp_path / '.gru-suite.lock'}: "
                                       "Read-only file system\n")


def test_a_forked_command_that_hangs_is_killed_and_one_that_dies_returns_its_signal(monkeypatch):
    monkeypatch.setattr(cli, "train", lambda: time.sleep(60))
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_forked("gru-suite", timeout=1)
    assert time.monotonic() - started < 30
    monkeypatch.setattr(cli, "train", lambda: os.kill(os.getpid(), signal.SIGKILL))
    died = run_forked("gru-suite")
    assert (died.returncode, died.stdout, died.stderr) == (-9, "", "")


def test_a_folder_where_the_run_writes_its_log_is_one_line_before_anything_is_written(tmp_path):
    (tmp_path / "train.log").mkdir()
    result = run_forked("gru-suite", "task=forecasting", f"hydra.run.dir={tmp_path}")
    assert (result.returncode, result.stderr) == (2, f"error: hydra.run.dir={tmp_path}: {tmp_path / 'train.log'} is a "
                                                     "folder, where this run writes its log; move it or run in another "
                                                     "folder\n")
    assert [path.name for path in tmp_path.iterdir()] == ["train.log"]
    (tmp_path / "predict.log").mkdir()
    logged = run_forked("gru-suite-predict", "task=forecasting", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path}",
                        "hydra/job_logging=stdout")  # Hydra's own logging, to the console only: no log file
    assert logged.stderr == "error: checkpoint not found: x.ckpt\n"


@pytest.mark.parametrize("work", ["none", "an empty folder", "a new file", "a file replaced", "a file rewritten",
                                  "the run ended"])
def test_a_refused_run_gives_the_earlier_config_back_unless_it_did_some_work(work, tmp_path, run_start):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("earlier")
    (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    (tmp_path / "data.csv").symlink_to(tmp_path / "gone.csv")  # a link to nothing (its own times count)
    config = hydra_run_config(str(tmp_path))
    keeper = KeepEarlierConfig()
    keeper.on_run_start(config)
    (tmp_path / ".hydra").mkdir()  # as Hydra writes the run's own, then its log
    (tmp_path / ".hydra" / "config.yaml").write_text("refused")
    (tmp_path / "train.log").write_text("error: ...")
    if work == "an empty folder":  # made by a logger or checkpoint callback, never filled
        (tmp_path / "checkpoints").mkdir()
    elif work == "a new file":
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "last.ckpt").write_text("")
    elif work in ("a file replaced", "a file rewritten"):  # at the same modification time (a coarse clock's tick)
        written = (tmp_path / "metrics.csv").stat().st_mtime_ns
        if work == "a file replaced":  # another file under the name: another inode
            (tmp_path / "metrics.new").write_text("epoch\n0\n")
            (tmp_path / "metrics.new").replace(tmp_path / "metrics.csv")
        else:  # another size
            (tmp_path / "metrics.csv").write_text("epoch\n0\n1\n")
        os.utime(tmp_path / "metrics.csv", ns=(written, written))
    elif work == "the run ended":
        keeper.on_run_end(config)
    run_folder.restore_earlier_work()
    keeper.on_run_end(config)
    given_back = work in ("none", "an empty folder")
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == ("earlier" if given_back else "refused")
    assert (tmp_path / ".hydra.1").is_dir() != given_back


def test_a_refused_runs_folder_gone_is_left_as_it_is_and_a_config_in_a_subfolder_comes_back(tmp_path, run_start):
    (tmp_path / "gone" / ".hydra").mkdir(parents=True)
    KeepEarlierConfig().on_run_start(hydra_run_config(str(tmp_path / "gone")))
    shutil.rmtree(tmp_path / "gone")
    run_folder.restore_earlier_work()  # nothing to give back, and no error
    (tmp_path / "run" / "meta" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / "meta" / ".hydra" / "config.yaml").write_text("earlier")
    config = hydra_run_config(str(tmp_path / "run"))
    with open_dict(config):
        config.hydra.output_subdir = "meta/.hydra"
    KeepEarlierConfig().on_run_start(config)
    (tmp_path / "run" / "meta" / ".hydra").mkdir()
    run_folder.restore_earlier_work()
    assert (tmp_path / "run" / "meta" / ".hydra" / "config.yaml").read_text() == "earlier"
    assert not (tmp_path / "run" / "meta" / ".hydra.1").exists()


@pytest.mark.parametrize(("refused_after", "named", "checkpoints"), [
    ("nothing", "plainly", "checkpoints"), ("nothing", "through ..", "checkpoints"),  # Hydra's output_dir has no ..
    ("nothing", "plainly", "ck/main"),  # a checkpoint folder deeper in: moving it changes its parent's time
    ("its own metrics", "plainly", "checkpoints"),
])
def test_a_refused_run_gives_back_every_earlier_file_it_moved_aside_unless_it_wrote_its_own(
        refused_after, named, checkpoints, tmp_path, run_start):
    for name in (".hydra/config.yaml", f"{checkpoints}/last.ckpt", "predictions/forecast.csv", "metrics.json",
                 "metrics.csv", f"{run_folder.STAGING}/forecast.csv"):  # and a killed run's unfinished artifacts
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"earlier {name}")
    run_dir = tmp_path / ".." / tmp_path.name if named == "through .." else tmp_path
    config, keeper = hydra_run_config(str(run_dir)), KeepEarlierConfig()
    keeper.on_run_start(config)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("refused")
    shutil.rmtree(tmp_path / run_folder.STAGING)  # as writing artifacts starts
    run.keep_earlier_checkpoints(compose_train_config(
        "forecasting", [f"callbacks.model_checkpoint.dirpath={tmp_path / checkpoints}"], tmp_path))
    run_folder.set_aside(tmp_path / "metrics.csv")  # as the CSV logger's start does
    (tmp_path / checkpoints).mkdir()  # made, never filled
    if refused_after == "its own metrics":
        (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    run_folder.restore_earlier_work()
    keeper.on_run_end(config)
    names = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")
                   if path.is_file() and path.parent != tmp_path)
    if refused_after == "nothing":
        assert names == [".hydra/config.yaml", f"{checkpoints}/last.ckpt", "predictions/forecast.csv"]
        assert all((tmp_path / name).read_text() == f"earlier {name}" for name in (
            ".hydra/config.yaml", f"{checkpoints}/last.ckpt", "predictions/forecast.csv", "metrics.json",
            "metrics.csv"))
    else:
        assert names == [".hydra.1/config.yaml", ".hydra/config.yaml", "checkpoints.1/last.ckpt",
                         "predictions.1/forecast.csv"]
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == "refused"
        assert (tmp_path / "metrics.1.json").is_file() and (tmp_path / "metrics.1.csv").is_file()


def test_a_run_refused_for_its_data_leaves_the_earlier_run_resumable(trained_run, tmp_path):
    folder = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("*.log"))
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    refused = run_forked("gru-suite", "task=forecasting", *QUIET, f"hydra.run.dir={folder}",
                         f"task.data.path={tmp_path / 'missing.csv'}")
    assert refused.returncode == 2 and "data file not found" in refused.stderr, refused.stderr[-2000:]
    assert "put back the earlier run's checkpoints, metrics.json, predictions" in refused.stdout + refused.stderr
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file() and path.suffix != ".log"}
    assert after == before
    resumed = run_forked("gru-suite", "task=forecasting", *QUIET, "trainer.max_epochs=3", "ckpt_path=last",
                         f"hydra.run.dir={folder}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2  # on from epoch 1's
    assert not (folder / "checkpoints.1").exists()


HOLD = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()} {sys.argv[2]}\\n".encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_run_folder_held_by_a_live_run_is_refused_and_is_free_once_it_ends(tmp_path, capsys):
    lock, host = tmp_path / run_folder.LOCK_NAME, socket.gethostname()
    holder = [sys.executable, "-c", HOLD, str(lock), "other-job"]
    with subprocess.Popen(holder, stdout=subprocess.PIPE, text=True) as live:
        assert live.stdout.readline() == "held\n"
        with pytest.raises(SystemExit, match="2"):
            run_folder.hold_run_folder(tmp_path)
        assert f"hydra.run.dir={tmp_path} is in use by process {live.pid} on {host}" in capsys.readouterr().err
        with pytest.raises(SystemExit, match="2"):  # another launch's process other than its first
            run_folder.check_run_folder_job(tmp_path)
        result = run_cli("gru-suite", "task=forecasting", *TINY, f"hydra.run.dir={tmp_path}")
        assert result.returncode == 2 and f"is in use by process {live.pid}" in result.stderr, result.stderr[-2000:]
        live.kill()
    run_folder.hold_run_folder(tmp_path)  # the holder is gone (its file stays: the lock died with it)
    try:
        assert lock.read_text() == f"{os.getpid()} {host} {run_folder.job_identity()}\n"
        run_folder.hold_run_folder(tmp_path)  # held already: a second Hydra run in this process
        run_folder.check_run_folder_job(tmp_path)  # the same launch
    finally:
        run_folder.release_run_folder(tmp_path)
    assert not lock.exists()


def test_a_run_folder_named_by_the_time_that_another_run_holds_gives_way_to_the_next_free_name(tmp_path,
                                                                                              monkeypatch):
    held = tmp_path / time.strftime("%Y")  # a run started in the same second (the same year, here)
    held.mkdir()
    (tmp_path / f"{held.name}_2").mkdir()  # an earlier run's, free: used
    holder = [sys.executable, "-c", HOLD, str(held / run_folder.LOCK_NAME), "other-job"]
    run = ["gru-suite", "task=forecasting", *TINY, "trainer.max_epochs=1", "test_after_training=false",
           "predict_after_training=false", f"hydra.run.dir={tmp_path}/${{now:%Y}}"]
    with subprocess.Popen(holder, stdout=subprocess.PIPE, text=True) as live:
        assert live.stdout.readline() == "held\n"
        result = run_forked(*run)
        monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's first process: its others would not follow it to _3
        torchrun = run_forked(*run)
        live.kill()
    assert torchrun.returncode == 2 and f"hydra.run.dir={held} is in use by process {live.pid}" in torchrun.stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / f"{held.name}_2" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(path.name for path in held.iterdir()) == [run_folder.LOCK_NAME]  # the live run's, untouched


def test_a_sweep_holds_its_folder_and_one_named_by_the_launch_time_gives_way_to_the_next_free_name(tmp_path,
                                                                                                     monkeypatch):
    monkeypatch.setenv("GRU_SUITE_LAUNCH_TIME", "2030-01-01_00-00-00")  # the cli's, launched in that second
    held = tmp_path / "2030-01-01_00-00-00"
    held.mkdir()
    sweep = ["-m", "task=forecasting", *TINY, "trainer.max_epochs=1", "test_after_training=false",
             "predict_after_training=false", "seed=1,2"]
    holder = [sys.executable, "-c", HOLD, str(held / run_folder.LOCK_NAME), "other-job"]
    with subprocess.Popen(holder, stdout=subprocess.PIPE, text=True) as live:
        assert live.stdout.readline() == "held\n"
        moved = run_forked("gru-suite", *sweep, f"hydra.sweep.dir={tmp_path}/${{oc.env:GRU_SUITE_LAUNCH_TIME}}")
        refused = run_forked("gru-suite", *sweep, f"hydra.sweep.dir={held}")  # a folder chosen by name
        live.kill()
    assert moved.returncode == 0, moved.stderr[-2000:]
    summary = list(csv.DictReader((tmp_path / f"{held.name}_2" / "summary.csv").open()))
    assert sorted(row["seed"] for row in summary) == ["1", "2"]  # both jobs, in the sweep's own folder
    assert sorted(path.name for path in held.iterdir()) == [run_folder.LOCK_NAME]
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"hydra.sweep.dir={held} is in use by process {live.pid}" in refused.stderr


@pytest.mark.parametrize(("environment", "command", "job", "log"), [
    ({}, "train", "train", "train.log"), ({"RANK": "0"}, "train", "train", "train.log"),
    ({"RANK": "3"}, "train", "train", "train_rank3.log"), ({"SLURM_PROCID": "1"}, "train", "train", "train_rank1.log"),
    ({"LOCAL_RANK": "0"}, "eval", "eval", "eval.log"),
    ({"LOCAL_RANK": "1"}, "eval", "train_ddp_process_1", "eval_rank1.log"),  # as Lightning names its own processes
    ({"NODE_RANK": "1"}, "train", "train", "train_node1.log"),  # Lightning's multi-node launch, the second node
    ({"NODE_RANK": "1", "LOCAL_RANK": "2"}, "train", "train_ddp_process_2", "train_node1_rank2.log")])
def test_each_process_of_a_multi_process_launch_logs_to_a_file_of_its_own(environment, command, job, log, monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    hydra = OmegaConf.to_container(hydra_run_config("out").hydra, resolve=False)
    filename = hydra["job_logging"]["handlers"]["file"]["filename"]
    outside_a_run = {"hydra": {"runtime": {"output_dir": "out"}, "job": {"name": job, "config_name": command}},
                     "filename": filename}
    assert OmegaConf.create(outside_a_run).filename == f"out/{log}"


def test_with_job_chdir_paths_are_read_from_the_folder_the_command_started_in(trained_run, tmp_path, monkeypatch,
                                                                               run_start):
    from hydra.core.hydra_config import HydraConfig

    from gru_suite.files import launch_path
    from gru_suite.resume import resume_path, resumes_in_own_folder

    shutil.copy(REPO / "data" / "forecasting" / "demo_load.csv", tmp_path / "mine.csv")
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", tmp_path / "trained.ckpt")
    cfg = compose_train_config("forecasting", ["task.data.path=mine.csv", "ckpt_path=trained.ckpt"], tmp_path / "run")
    config = hydra_run_config(str(tmp_path / "run"), "hydra.job.chdir=true")
    with open_dict(config):
        config.hydra.runtime.cwd = str(tmp_path)  # where the command started; the job runs in its run folder
    HydraConfig.instance().set_config(config)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert launch_path("mine.csv") == tmp_path / "mine.csv" and launch_path("/abs.csv") == Path("/abs.csv")
    assert run.build_task(cfg.task).cfg.data.path == str(tmp_path / "mine.csv")  # not looked up in the run folder
    assert resume_path(cfg) == str(tmp_path / "trained.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir()
    cfg.ckpt_path = "run/checkpoints/last.ckpt"  # its own folder's, named from where the command started
    assert resumes_in_own_folder(cfg)  # so its checkpoints are not moved aside before it is read


@pytest.mark.parametrize("choice", ["stdout", "disabled", "none"])
def test_hydras_own_logging_choices_are_taken_whole(choice):
    hydra = OmegaConf.to_container(hydra_run_config("out", f"hydra/job_logging={choice}").hydra, resolve=False)
    handlers = hydra["job_logging"].get("handlers", {})  # not the suite's file and console settings merged in
    assert all("class" in handler for handler in handlers.values()) and "file" not in handlers


def test_the_earlier_config_is_kept_in_the_default_run_folder(tmp_path, monkeypatch, run_start):
    """The default `hydra.run.dir` reads `${hydra:runtime.choices.task}`, which resolves only once Hydra's config
    is set: after the callback's hook, in Hydra's own order."""
    config = hydra_run_config("outputs/${hydra:runtime.choices.task}/the-time")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "forecasting" / "the-time"
    (folder / ".hydra").mkdir(parents=True)
    KeepEarlierConfig().on_run_start(config)
    assert (folder / ".hydra.1").is_dir() and not (folder / ".hydra").exists()


def test_a_checkpoint_of_another_task_is_named_with_its_task(trained_run, tmp_path):
    sentiment = compose_train_config("sentiment", [], tmp_path).task
    with pytest.raises(UserError, match=r"last\.ckpt holds a model of task 'forecasting', not 'sentiment'$"):
        load_checkpoint(trained_run / "checkpoints" / "last.ckpt", sentiment)


def test_a_checkpoint_with_a_layer_more_than_the_config_builds_is_named_by_that_layer():
    built = torch.nn.GRU(2, 3, num_layers=1)
    stored = torch.nn.GRU(2, 3, num_layers=2).state_dict()  # resumed with backbone.num_layers=1, say
    with pytest.raises(UserError, match=r"another model than this config builds \(weight_ih_l1: shape \(9, 3\) in the "
                                        r"checkpoint, nothing here\)"):
        check_same_model(stored, built, "ckpt_path x.ckpt")


def test_the_settings_given_otherwise_than_in_training_are_listed_as_overrides():
    stored = OmegaConf.create({"description": "costs ${HOME}", "data": {"horizon": 6, "features": ["a", "b"]},
                               "model": {}, "old": 1})  # as saved: resolved, so "${HOME}" was a literal
    given = OmegaConf.create({"description": "costs \\${HOME}", "data": {"horizon": 3, "features": ["a"]},
                              "model": {"head_dropout": 0.0, "flags": {"on": True, "size": None}}, "extra": {}})
    assert settings_apart(stored, given, "task") == [
        "task.data.horizon=3 (trained with 6)", "task.data.features=[a] (trained with [a,b])",
        "task.model.head_dropout=0.0 (not in the checkpoint)", "task.model.flags.on=true (not in the checkpoint)",
        "task.model.flags.size=null (not in the checkpoint)", "task.old (1 in training; no such setting now)"]
    assert settings_apart(None, OmegaConf.create({"x": "${nowhere}"}), "backbone") == []  # a hint only


def test_resume_with_another_model_is_one_clear_error(trained_run, tmp_path):
    resume = compose_train_config("forecasting", [*TINY, "backbone.hidden_size=9",
                                                  f"ckpt_path={trained_run}/checkpoints/last.ckpt"], tmp_path / "t")
    first = r"\(model\.backbone\.rnn\.weight_ih_l0: "  # the model's first parameter that differs, not bias_hh_l0
    with pytest.raises(UserError, match=r"holds another model than this config builds " + first) as raised:
        run.train(resume)
    assert str(raised.value).endswith("(set otherwise here: backbone.hidden_size=9 (trained with 16))")
    assert not (tmp_path / "t" / "checkpoints").exists()
    other_task = compose_train_config("anomaly", [f"ckpt_path={trained_run}/checkpoints/last.ckpt"], tmp_path / "a")
    with pytest.raises(UserError, match=r"last.ckpt holds a model of task 'forecasting', not task=anomaly$"):
        run.train(other_task)


def test_multirun_sweeps(tmp_path):
    result = run_forked("gru-suite", "-m", "task=forecasting", "debug=fdr", *TINY[1:], "backbone.hidden_size=8,12",
                        cwd=tmp_path)  # the default sweep folder: multirun/<time>/<job>_<task>
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_forecasting", "1_forecasting"]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))  # one per job, ranked by task.monitor
    assert sorted(row["backbone.hidden_size"] for row in rows) == ["12", "8"]
    assert sorted(row["job"] for row in rows) == ["0_forecasting", "1_forecasting"]  # in the relative sweep folder
    assert float(rows[0]["val/loss"]) <= float(rows[1]["val/loss"]) and "test/mse" in rows[0]
    best = f"best: {rows[0]['job']} (backbone.hidden_size={rows[0]['backbone.hidden_size']}) val/loss="
    assert best in result.stdout + result.stderr


def test_a_sweep_summarises_its_jobs_in_folders_of_any_layout(tmp_path):
    result = run_forked("gru-suite", "-m", "task=forecasting", "debug=fdr", *TINY[1:], "backbone.hidden_size=8,12",
                        "hydra.sweep.subdir=hs${backbone.hidden_size}/${hydra.job.num}", "hydra.output_subdir=cfg",
                        f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "hs8" / "0" / "cfg" / "overrides.yaml").is_file() and not list(tmp_path.glob("*/.hydra"))
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert sorted((row["job"], row["backbone.hidden_size"]) for row in rows) == [("hs12/1", "12"), ("hs8/0", "8")]
    assert all(float(row["val/loss"]) > 0 for row in rows) and f"best: {rows[0]['job']} (" in result.stdout


def test_a_failed_sweep_job_is_listed_and_the_others_run(tmp_path):
    (tmp_path / "1_forecasting").mkdir()  # a rerun into an earlier sweep's folder, where job 1 had failed
    (tmp_path / "1_forecasting" / "error.txt").write_text("an earlier failure\n")
    (tmp_path / "1_forecasting" / ".hydra").mkdir()
    (tmp_path / "1_forecasting" / ".hydra" / "overrides.yaml").write_text("- task.data.lookback=6\n")
    (tmp_path / "summary.csv").write_text("job,error\n1_forecasting,an earlier failure\n")
    result = run_forked("gru-suite", "-m", "task=forecasting", "debug=fdr", *TINY[:1], *TINY[2:],
                        "task.data.lookback=5000,24", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: 1 job(s) of the sweep failed: [0]" in result.stderr
    rows = {row["job"]: row for row in csv.DictReader((tmp_path / "summary.csv").open())}
    assert "is too short" in rows["0_forecasting"]["error"] and rows["0_forecasting"]["val/loss"] == ""
    assert rows["1_forecasting"]["error"] == "" and float(rows["1_forecasting"]["val/loss"]) > 0
    assert not (tmp_path / "1_forecasting" / "error.txt").exists()  # set aside: no stale error beside a result
    assert (tmp_path / "1_forecasting" / "error.1.txt").read_text() == "an earlier failure\n"
    assert (tmp_path / "1_forecasting" / ".hydra.1" / "overrides.yaml").read_text() == "- task.data.lookback=6\n"
    assert "task.data.lookback=24" in (tmp_path / "1_forecasting" / ".hydra" / "overrides.yaml").read_text()
    assert (tmp_path / "summary.1.csv").read_text() == "job,error\n1_forecasting,an earlier failure\n"


def test_a_sweep_job_that_diverges_is_ranked_last_not_failed(tmp_path):
    result = run_forked("gru-suite", "-m", "task=forecasting", *TINY, "trainer.max_epochs=1", "threads=1",
                        "predict_after_training=false", "optimizer.lr=1e38,1e-3", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]  # a diverged learning rate is a result, the worst one
    assert ("error: train/loss is nan in epoch 0: training diverged, and the weights to test (best-000.ckpt's) are "
            "not finite") in result.stderr
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [row["job"] for row in rows] == ["1_forecasting", "0_forecasting"] and "error" not in rows[0]
    assert rows[1]["val/loss_best"] == "nan" and rows[1]["test/mse"] == "" and float(rows[0]["test/mse"]) > 0


def test_a_crashed_sweep_job_is_listed_with_its_traceback_logged_and_the_others_run(tmp_path):
    (tmp_path / "crash_callback.py").write_text(
        "import pytorch_lightning as pl\n\n"
        "class Crash(pl.Callback):\n"
        "    def __init__(self, crash: bool) -> None:\n"
        "        self.crash = crash\n\n"
        "    def on_train_start(self, trainer, pl_module) -> None:\n"
        "        if self.crash:\n"
        "            raise RuntimeError('a bug in a callback')\n")
    result = run_cli("gru-suite", "-m", "task=forecasting", "debug=fdr", *TINY[1:],
                     "+callbacks.crash._target_=crash_callback.Crash", "+callbacks.crash.crash=true,false",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: 1 job(s) of the sweep crashed: [0] (each one's error.txt and log)" in result.stderr
    rows = {row["job"]: row for row in csv.DictReader((tmp_path / "sweep" / "summary.csv").open())}
    assert rows["0_forecasting"]["error"] == ("crashed: RuntimeError: a bug in a callback (the traceback is in this "
                                              "job's log)")
    assert rows["1_forecasting"]["error"] == "" and float(rows["1_forecasting"]["val/loss"]) > 0
    assert "Traceback" in (tmp_path / "sweep" / "0_forecasting" / "train.log").read_text()


def test_a_run_killed_while_testing_keeps_its_training_figures_when_resumed(tmp_path):
    (tmp_path / "kill_callback.py").write_text(
        "import os, signal\nimport pytorch_lightning as pl\n\n"
        "class Kill(pl.Callback):\n"
        "    def on_test_start(self, trainer, pl_module) -> None:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n")
    run_dir = tmp_path / "run"
    killed = run_cli("gru-suite", "task=forecasting", "trainer.max_epochs=1", *TINY, f"hydra.run.dir={run_dir}",
                     "+callbacks.kill._target_=kill_callback.Kill", env={"PYTHONPATH": str(tmp_path)})
    assert killed.returncode == -9, killed.stderr[-2000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "val/loss"} <= set(trained) and not any(k.startswith("test/") for k in trained)
    resumed = run_cli("gru-suite", "task=forecasting", "trainer.max_epochs=1", *TINY, f"hydra.run.dir={run_dir}",
                      "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["train/loss"] == trained["train/loss"] and final["val/loss"] == trained["val/loss"]
    assert "test/loss" in final


def test_an_optuna_search_minimises_the_monitored_metric_and_ranks_its_trials(tmp_path):
    result = run_forked("gru-suite", "task=forecasting", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                        "debug=fdr", *TINY[1:], "test_after_training=false", "predict_after_training=false",
                        f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert len(rows) == 3 and len({row["optimizer.lr"] for row in rows}) == 3  # three sampled trials
    assert all(1e-4 <= float(row["optimizer.lr"]) <= 1e-2 for row in rows)
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(float(row["val/loss"]) for row in rows))  # task.monitor_mode: min
    assert best.best_params["optimizer.lr"] == pytest.approx(float(rows[0]["optimizer.lr"]))


def test_an_optuna_search_whose_trials_all_fail_ends_in_one_line_and_a_summary(tmp_path):
    result = run_forked("gru-suite", "task=forecasting", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                        "task.data.lookback=100000", f"hydra.sweep.dir={tmp_path}",
                        "hydra.sweep.subdir=trial/${hydra.job.num}", "hydra.output_subdir=meta")  # no <sweep>/*/.hydra
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().endswith("error: all 2 trials of the sweep failed (each one's error.txt)")
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [row["job"] for row in rows] == ["trial/0", "trial/1"]
    assert all("lookback 100000" in row["error"] for row in rows)


def _no_hydra_plugins(name: str) -> NoReturn:
    raise ModuleNotFoundError("No module named 'hydra_plugins'")  # what find_spec raises without the namespace


@pytest.mark.parametrize("find_spec", [lambda name: None, _no_hydra_plugins],
                         ids=["other-hydra-plugins-only", "no-hydra-plugins"])
def test_an_optuna_search_without_the_sweeper_installed_is_one_line(monkeypatch, capsys, find_spec):
    monkeypatch.setattr(sys, "argv", ["gru-suite", "task=forecasting", "hparams_search=optuna"])
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SystemExit) as exit_info:
        cli._require_sweeper_plugin()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: hparams_search=optuna needs Hydra's Optuna sweeper: pip install "
                                       "\"gru-suite[optuna]\" (or hydra-optuna-sweeper)\n")


@pytest.mark.parametrize(
    "args,message",
    [
        (["task=nope"], "error: unknown task 'nope'; installed tasks: anomaly, forecasting"),
        (["task=forecasting", "task.data.path=/no/such.csv"], "data file not found: /no/such.csv"),
        (["task=forecasting", "task.data.features=[load,price]"], "no column 'price'"),
        (["task=forecasting", "task.data.lookback=5000"], "the train split (rows 1-"),
        (["task=forecasting", "task.name=anomaly"], "conf/task/forecasting.yaml of task 'forecasting' sets name: "
                                                     "'anomaly'; it must be 'forecasting'"),
        (["task=forecasting", "backbone._target_=gru_suite.nope.Backbone"], "cannot build backbone"),
        (["task=forecasting", "trainer.precision=banana"], "cannot build trainer"),
        (["task=forecasting", "callbacks.ema={_target_: gru_suite.callbacks.EMAWeights, decay: bogus}"],
         ("cannot build callbacks.ema (_target_=gru_suite.callbacks.EMAWeights): ValueError: decay must be a number "
          "in [0, 1), got 'bogus'")),
        (["task=forecasting", "task.data.split=[0.9,0.9,0.1]"], "sum to 1.9, more than 1"),
        (["task=forecasting", "+callbacks.timer=1"],
         "error: callbacks.timer must be a block with a _target_ class, got 1"),
        (["task=forecasting", "experiment=etth1"], "task.data.path (ETTh1.csv) is required"),
        (["experiment=sst2"], ("2 settings are wrong:\n  task.data.train (SST-2's stsa.binary.train) is required: set "
                               "it on the command line\n  task.data.test (SST-2's stsa.binary.dev) is required")),
        (["experiment=etth1", "task.data.path=/no/such.csv"], "data file not found: /no/such.csv"),  # preset's task
        (["task=forecasting", "~task.data.lookback"],  # as a plugin whose code reads a key its config lacks
         "error: task.data.lookback: the code reads this setting, but the config has none"),
        (["task=forecasting", "task.data.path=${oc.env:GRU_SUITE_UNSET}/x.csv"],
         "error: task.data.path: \"Environment variable 'GRU_SUITE_UNSET' not found\" (a literal '${' in a value is "
         "written '\\${')"),
        (["task=forecasting", "task.data.path=/data/${nope}.csv"], "error: task.data.path: Interpolation key 'nope' "
                                                                   "not found"),
        (["task=forecasting", "task.data.path=0"], "task.data.path must be a path, got the int 0: quote a name that "
                                                    "reads as a number on the command line, 'task.data.path=\"0\"'"),
        (["task=anomaly", "task.data.path=2024", "task.data.windows_path=1e3"],  # names that read as numbers
         "2 settings are wrong:\n  task.data.path must be a path, got the int 2024: quote a name that reads as a "
         "number on the command line, 'task.data.path=\"2024\"'\n  task.data.windows_path must be a path, got the "
         "float 1000.0: quote a name that reads as a number on the command line, 'task.data.windows_path=\"...\"'"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    result = run_forked("gru-suite", *args, "debug=fdr", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["backbone=gruu"], "backbone=gruu: no such option; the backbone options are gru, lstm"),
    (["-m", "trainer=cpu,gpuu"], "trainer=gpuu: no such option; the trainer options are cpu, ddp, ddp_sim, default, "),
    (["+debug=fdrr"], "debug=fdrr: no such option; the debug options are fdr, overfit, profiler"),
    (["experiment=nosuch"], "experiment=nosuch: no such option; the experiment options are etth1, fsdd, "),
    (["logger=null"], "logger=null: no such option; the logger options are csv, many, none, tensorboard"),
])
def test_an_unknown_option_of_a_config_group_is_one_line_listing_the_options(tmp_path, args, message):
    result = run_cli("gru-suite", "task=forecasting", *args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / ".hydra").exists()


@pytest.mark.parametrize("override, where", [("task.data.path=/data/café.csv", "at 'é'"),
                                             ("ckpt_path=/runs/(a).ckpt", "(mismatched input '(' expecting <EOF>)")])
def test_an_override_hydra_cannot_read_is_one_line_saying_how_to_quote(tmp_path, override, where):
    result = run_forked("gru-suite-predict", "task=forecasting", override, f"hydra.run.dir={tmp_path}")
    assert (result.returncode, result.stderr) == (2, f"error: cannot read the override {override!r} {where}: quote a "
                                                     "value holding spaces, quotes, brackets, '#' or letters outside "
                                                     "ASCII, as in 'task.data.path=\"/my data/café.csv\"' (the "
                                                     "shell's quotes around Hydra's)\n")
    quoted = run_forked("gru-suite-predict", "task=forecasting", 'task.data.path="/data/café.csv"', "ckpt_path=x.ckpt",
                        f"hydra.run.dir={tmp_path}")
    assert quoted.returncode == 2 and "checkpoint not found: x.ckpt" in quoted.stderr  # read, and on to the next


def test_a_users_own_config_folder_may_add_options_so_hydra_answers_for_them(tmp_path):
    (tmp_path / "backbone").mkdir()
    (tmp_path / "backbone" / "mine.yaml").write_text("defaults:\n  - gru\nhidden_size: 9\n")
    result = run_cli("gru-suite", "task=forecasting", "backbone=mine", f"hydra.searchpath=[file://{tmp_path}]",
                     "--cfg", "job", "-p", "backbone.hidden_size")
    assert result.returncode == 0 and result.stdout.strip() == "9", result.stderr[-2000:]


@pytest.mark.parametrize("command, arg", [("gru-suite-predict", "backbone.hidden_size=7"),
                                          ("gru-suite-eval", "+optimizer.lr=0.1")])
def test_eval_and_predict_refuse_settings_the_checkpoint_fixes(tmp_path, command, arg):
    result = run_cli(command, "task=forecasting", "ckpt_path=x.ckpt", arg, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {arg}: the backbone, optimizer and scheduler are the checkpoint's; "
                                     "only task.* and run settings (trainer, threads, paths, ...) can be changed here")
    shown = run_cli(command, "task=forecasting", "--cfg", "job", "-p", "backbone")  # a flag's value is no override
    assert shown.returncode != 2 and "error: backbone" not in shown.stderr


def test_task_overrides_without_a_task_say_how_to_name_it(trained_run):
    result = run_forked("gru-suite-predict", "ckpt_path=x.ckpt", "task.data.path=y.csv")
    assert result.returncode == 2
    assert result.stderr.startswith("error: task.* overrides need the task named too: task=NAME (the checkpoint's "
                                    "task, for eval, predict and gates), e.g. task=forecasting")
    named = run_forked("gru-suite-predict", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
                       "task.data.path=y")
    assert named.returncode == 2 and named.stderr.strip().endswith("gates), this checkpoint's: task=forecasting")


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    result = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={bad}",
                        f"hydra.run.dir={tmp_path / 'o'}")
    assert result.returncode == 2
    assert f"{bad} is not a checkpoint, or is truncated" in result.stderr
    assert not (tmp_path / "o" / "forecast.csv").exists()
    assert f"error: {bad} is not a checkpoint" in (tmp_path / "o" / "predict.log").read_text()  # the run's log too
    resume = compose_train_config("forecasting", [f"ckpt_path={bad}"], tmp_path / "t")
    with pytest.raises(UserError, match=f"{re.escape(str(bad))} is not a checkpoint"):
        run.train(resume)  # resuming from it fails before training
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_predict_refuses_an_ensemble_the_task_cannot_combine(trained_run, tmp_path):
    ckpt = f"{trained_run}/checkpoints/last.ckpt"
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(Path(ckpt).read_bytes())
    result = run_forked("gru-suite-predict", "task=forecasting", f"ckpt_path={ckpt}", f"ensemble=[{copy}]",
                        f"hydra.run.dir={tmp_path / 'two'}")
    assert result.returncode == 2
    assert f"error: ensemble: {copy}: task 'forecasting' does not combine the predictions of several models" in \
        result.stderr  # the refusal names the member


def test_ensemble_paths_are_checked_before_any_model_loads(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from gru_suite.cli import _ensemble_paths

    monkeypatch.chdir(tmp_path)
    assert _ensemble_paths(OmegaConf.create({"ckpt_path": "a.ckpt", "ensemble": ""})) == []
    assert _ensemble_paths(OmegaConf.create({"ckpt_path": "a.ckpt", "ensemble": "b.ckpt"})) == ["b.ckpt"]
    with pytest.raises(UserError, match=r"ensemble: \['./a.ckpt'\] given more than once"):
        _ensemble_paths(OmegaConf.create({"ckpt_path": "a.ckpt", "ensemble": ["b.ckpt", "./a.ckpt"]}))
    with pytest.raises(UserError, match=r"ensemble: \['b.ckpt'\] given more than once"):
        _ensemble_paths(OmegaConf.create({"ckpt_path": "a.ckpt", "ensemble": ["b.ckpt", "b.ckpt"]}))
    with pytest.raises(UserError, match=r"ensemble: expected a checkpoint path or a list of them, .* got \[3\]"):
        _ensemble_paths(OmegaConf.create({"ckpt_path": "a.ckpt", "ensemble": [3]}))


def test_a_users_own_config_folder_adds_to_the_installed_tasks(tmp_path):
    (folder := tmp_path / "my conf, v2 é").mkdir()  # a name Hydra reads quoted only
    (folder / "experiment").mkdir()
    (folder / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: forecasting\nbackbone:\n  hidden_size: 12\n")
    result = run_forked("gru-suite", "experiment=mine", f'hydra.searchpath=["file://{folder}"]', "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hidden_size: 12" in result.stdout and "name: forecasting" in result.stdout  # the task's own config too
    (plain := tmp_path / "conf").mkdir()
    (plain / "experiment").mkdir()
    shutil.copy(folder / "experiment" / "mine.yaml", plain / "experiment" / "mine.yaml")
    unbracketed = f"hydra.searchpath=file://{plain},file:///nowhere"
    result = run_forked("gru-suite", "experiment=mine", unbracketed, "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]  # folders split by commas, without brackets
    assert "hidden_size: 12" in result.stdout and "name: forecasting" in result.stdout


def test_the_installed_tasks_config_folders_may_be_named_with_any_letters():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folders = ["file:///home/josé/venv/conf", 'file:///opt/a "b", c/conf']  # a project installed there
    override = OverridesParser.create().parse_override(registry.searchpath_override(folders))
    assert (override.key_or_group, override.value()) == ("hydra.searchpath", folders)


def test_a_sweep_folder_is_named_by_the_launch_time_its_processes_share(tmp_path):
    env_run = subprocess.run(
        [str(Path(sys.executable).parent / "gru-suite"), "-m", "task=forecasting", "debug=fdr", *TINY[1:],
         "backbone.hidden_size=8", "test_after_training=false", "predict_after_training=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "TQDM_DISABLE": "1", "GRU_SUITE_LAUNCH_TIME": "2026-01-02_03-04-05"})  # as DDP ranks get it
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == ["2026-01-02_03-04-05"]


def test_jsonl_is_written_a_record_at_a_time_and_never_half(tmp_path):
    from gru_suite.atomic import write_jsonl

    path = write_jsonl(tmp_path / "out.jsonl", ({"text": word} for word in ("één", "twee")))
    assert path.read_text(encoding="utf-8") == '{"text": "één"}\n{"text": "twee"}\n'

    def broken():
        yield {"text": "one"}
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "half.jsonl", broken())
    assert not (tmp_path / "half.jsonl").exists() and not unfinished_writes(tmp_path)
