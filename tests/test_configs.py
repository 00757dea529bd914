"""Every config group option composes and instantiates; presets hold what they promise."""

import logging
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError
from pytorch_lightning.profilers import SimpleProfiler
from torch import nn

from gru_suite import registry, run
from gru_suite.callbacks import EMAWeights
from gru_suite.config import (
    check_choice,
    CONF_DIR,
    RUN_NUMBERS,
    RUN_REQUIRED,
    bundled_data_dir,
    check_run_settings,
    instantiate,
    lacks,
    raise_all,
    register_resolvers,
    unset_required,
    unused_backbone_settings,
    wrong_determinism,
    wrong_numbers,
    wrong_ranges,
    wrong_switches,
    wrong_unset,
)
from gru_suite.errors import UserError, first_named
from gru_suite.overrides import given_keys, undeclared_run_settings, undeclared_settings, unknown_group_option
from gru_suite.profilers import QuietProfiler
from gru_suite.registry import task_switches
from gru_suite.task import TaskPlugin
from gru_suite.testing import compose_train_config

GROUPS = ["backbone", "trainer", "logger", "callbacks", "optimizer", "scheduler", "debug", "hparams_search"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
PRESETS = sorted((Path(__file__).parents[1] / "plugins").glob("*/conf/experiment/*.yaml"))
TASK_OF = {path.stem: path.parents[2].name for path in PRESETS}  # plugins/<task>/conf/experiment/<name>.yaml
EXPERIMENTS = sorted(TASK_OF)
STAND_IN_DATA = {  # bundled data in place of the benchmark data sets the presets point at
    "etth1": ["task.data.path=${paths.data_dir}/forecasting/demo_load.csv", "task.data.time_column=timestamp",
              "task.data.targets=[load,temperature]", "task.data.split=[0.7,0.15,0.15]"],
    "nab": ["task.data.path=${paths.data_dir}/anomaly",
            "task.data.windows_path=${paths.data_dir}/anomaly/windows.json"],
    "jsb_chorales": ["task.data.path=${paths.data_dir}/music"],
    "jsb_chorales_independent": ["task.data.path=${paths.data_dir}/music"],
    "multi30k": ["task.data.path=${paths.data_dir}/translation", "task.data.source=en", "task.data.target=toy"],
    "fsdd": ["task.data.fsdd=null", "task.data.connected.train=20"],  # bundled manifests; fewer strings to build
    "sst2": ["task.data.train=${paths.data_dir}/sentiment/train.csv",
             "task.data.test=${paths.data_dir}/sentiment/test.csv"],
}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_train_config("forecasting", [f"{group}={option}", "trainer.accelerator=cpu"], tmp_path)
    run.build_trainer(cfg)
    if group in ("backbone", "optimizer", "scheduler"):
        task = run.build_task(cfg.task)
        task.datamodule()
        run.build_module(cfg, task).configure_optimizers()


@pytest.mark.parametrize("option", ["default", "early_stopping", "last_epoch", "none"])
def test_every_callbacks_option_takes_a_weight_average_without_a_plus(option, tmp_path):
    cfg = compose_train_config("forecasting", [f"callbacks={option}", "trainer.accelerator=cpu",
                                               "callbacks.ema={_target_: gru_suite.callbacks.EMAWeights, decay: 0.99}"],
                               tmp_path)
    assert [type(c) for c in run.build_trainer(cfg).callbacks].count(EMAWeights) == 1


def test_every_required_value_is_named_wherever_it_sits():
    register_resolvers()
    required = "${gru_suite.required:%s}"
    cfg = OmegaConf.create({"task": {"data": {"train": required % "a", "files.dev": required % "b", 2: required % "c"},
                                     "texts": ["x", required % "d"], "ok": 3, "copy": "${task.data.train}"}})
    assert unset_required(cfg) == [f"{what} is required: set it on the command line" for what in "abcd"]
    assert unset_required(OmegaConf.create({"task": {"copy": "${task.ok}", "ok": required % "e"}})) == [
        "e is required: set it on the command line"]  # once, where it is required, not where it is read


def test_a_required_value_prints_as_unset_in_a_resolved_config_and_fails_a_run(monkeypatch):
    register_resolvers()
    cfg = OmegaConf.create({"path": "${gru_suite.required:the path}"})
    monkeypatch.setattr(sys, "argv", ["gru-suite", "experiment=etth1", "--cfg", "job", "--resolve"])
    assert OmegaConf.to_yaml(cfg, resolve=True) == "path: ???\n"  # not a traceback: Hydra prints it outside a run
    for printing in (["--cfg=job", "--resolve"], ["-cjob", "--resolve"]):
        monkeypatch.setattr(sys, "argv", ["gru-suite", "experiment=etth1", *printing])
        assert OmegaConf.to_yaml(cfg, resolve=True) == "path: ???\n"
    monkeypatch.setattr(sys, "argv", ["gru-suite", "experiment=etth1", "--cfg", "job"])
    with pytest.raises(InterpolationResolutionError, match="the path is required: set it on the command line"):
        OmegaConf.to_yaml(cfg, resolve=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    extra = STAND_IN_DATA.get(experiment, [])
    cfg = compose_train_config(TASK_OF[experiment], [f"experiment={experiment}", *extra], tmp_path)
    task = run.build_task(cfg.task)
    next(iter(task.datamodule().train_dataloader()))
    run.build_module(cfg, task)
    run.build_trainer(cfg)


def test_seed_keras_example_is_the_explainers_model(tmp_path):
    cfg = compose_train_config("forecasting", ["experiment=seed_keras_example"], tmp_path)
    task = run.build_task(cfg.task)
    x, y, _ = next(iter(task.datamodule().train_dataloader()))
    module = run.build_module(cfg, task)
    assert x.shape == (32, 10, 1) and y.shape == (32, 1, 1)
    gru = module.model.backbone.rnn
    assert isinstance(gru, nn.GRU) and (gru.input_size, gru.hidden_size, gru.num_layers) == (1, 50, 1)
    assert not gru.bidirectional
    linears = [m for m in module.model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(50, 1)]
    assert isinstance(module.model.adapter, nn.Identity) and module.model.normalize == "none"
    optimizer = module.configure_optimizers()
    assert type(optimizer).__name__ == "Adam" and optimizer.defaults["lr"] == 1e-3
    assert module.task.step(module.model, (x, y), "train").loss.item() > 0


def test_experiments_hold_only_differences():
    for path in (Path(__file__).parents[1] / "plugins").glob("*/conf/experiment/*.yaml"):
        text = path.read_text()
        assert "# @package _global_" in text and "override /task" in text, path


def test_threads_sets_torch_cpu_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run.build_trainer(compose_train_config("forecasting", ["threads=1", "trainer.accelerator=cpu"], tmp_path))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_common_trainer_switches_need_no_plus(tmp_path):
    cfg = compose_train_config("forecasting", ["trainer.accumulate_grad_batches=4", "trainer.limit_train_batches=0.25",
                                               "trainer.val_check_interval=0.5", "trainer.accelerator=cpu"], tmp_path)
    trainer = run.build_trainer(cfg)
    assert trainer.accumulate_grad_batches == 4 and trainer.limit_train_batches == 0.25
    assert trainer.val_check_interval == 0.5 and trainer.num_sanity_val_steps == 2


def test_the_default_profiler_costs_nothing_and_a_chosen_one_is_kept(tmp_path):
    quiet = run.build_trainer(compose_train_config("forecasting", ["trainer.accelerator=cpu"], tmp_path)).profiler
    assert isinstance(quiet, QuietProfiler)
    with quiet.profile("run_training_batch"), quiet.profile("[LightningModule]TaskModule.training_step"):
        pass  # nested, as Lightning's loops use it
    assert quiet.summary() == ""
    off = compose_train_config("forecasting", ["+trainer.profiler=false", "trainer.accelerator=cpu"], tmp_path / "off")
    assert isinstance(run.build_trainer(off).profiler, QuietProfiler)
    cfg = compose_train_config("forecasting", ["debug=profiler", "trainer.accelerator=cpu"], tmp_path / "simple")
    assert isinstance(run.build_trainer(cfg).profiler, SimpleProfiler)


def test_mixed_precision_trains_with_clipping_and_a_fused_optimizer(tmp_path):
    cfg = compose_train_config("forecasting", ["trainer.precision=bf16-mixed", "trainer.max_steps=3", "threads=1",
                                               "backbone.hidden_size=8", "logger=none", "callbacks=none"], tmp_path)
    assert cfg.optimizer.fused and cfg.trainer.gradient_clip_val > 0
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    module = run.build_module(cfg, task)
    trainer = run.build_trainer(cfg, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 3
    assert trainer.optimizers[0].defaults["fused"] is False  # Lightning cannot clip before a fused step


@pytest.mark.parametrize("override", ["trainer.limit_train_batches=abc", "trainer.limit_val_batches=1.5",
                                      "trainer.limit_test_batches=-2", "trainer.limit_predict_batches=true"])
def test_a_wrong_batch_limit_is_named_before_the_trainer_is_built(override, tmp_path):
    cfg = compose_train_config("forecasting", [override, "trainer.accelerator=cpu"], tmp_path)
    field = override.split("=")[0]
    with pytest.raises(UserError, match=re.escape(f"{field} must be a fraction of the batches in [0, 1] or a whole")):
        run.build_trainer(cfg)


@pytest.mark.parametrize("value", ["0", "0.0", "true", "-0.5", "1.5"])
def test_validation_every_zero_batches_or_epochs_is_named_before_the_trainer_is_built(value, tmp_path):
    cfg = compose_train_config("forecasting", [f"trainer.val_check_interval={value}", "trainer.accelerator=cpu"],
                               tmp_path)
    with pytest.raises(UserError, match=re.escape("trainer.val_check_interval must be a fraction of the batches in "
                                                  "(0, 1], a whole number of batches of at least 1 or a duration, "
                                                  "got ")):
        run.build_trainer(cfg)  # Lightning's modulo by zero after the first batch (0.0: validation every batch)
    cfg = compose_train_config("forecasting", ["trainer.check_val_every_n_epoch=0"], tmp_path)
    with pytest.raises(UserError, match=re.escape("trainer.check_val_every_n_epoch must be at least 1, got 0")):
        check_run_settings(cfg)


def test_wrong_batch_limits_are_named_with_the_other_wrong_settings(tmp_path):
    cfg = compose_train_config("forecasting", ["backbone.hidden_size=0", "trainer.limit_train_batches=2.5",
                                               "trainer.val_check_interval=0"], tmp_path)
    with pytest.raises(UserError, match=r"^3 settings are wrong:\n  backbone\.hidden_size must be at least 1, got 0\n"
                                        r"  trainer\.limit_train_batches must be .*got 2\.5\n"
                                        r"  trainer\.val_check_interval must be .*got 0$"):
        check_run_settings(cfg)


def test_scheduler_settings_without_a_scheduler_are_named(tmp_path):
    cfg = compose_train_config("forecasting", ["+scheduler.T_max=5", "+scheduler.eta_min=0"], tmp_path)
    with pytest.raises(UserError, match=r"^scheduler settings \(T_max, eta_min\) but no scheduler chosen: choose one "
                                        r"\(scheduler=cosine or plateau\) or name its class \(scheduler\._target_\)$"):
        check_run_settings(cfg)  # not "'DictConfig' object is not callable" as the model is built
    check_run_settings(compose_train_config("forecasting", ["scheduler=cosine", "scheduler.T_max=5"], tmp_path))


def test_batch_limits_keep_their_kind(tmp_path):
    cfg = compose_train_config("forecasting", ["trainer.limit_train_batches='3'", "trainer.limit_val_batches=1.0",
                                               "trainer.val_check_interval=00:00:01:00", "trainer.accelerator=cpu",
                                               "trainer.limit_test_batches=1e3"], tmp_path)
    trainer = run.build_trainer(cfg)
    assert trainer.limit_train_batches == 3 and isinstance(trainer.limit_train_batches, int)
    assert trainer.limit_test_batches == 1000 and isinstance(trainer.limit_test_batches, int)
    block = compose_train_config("forecasting", ["trainer.val_check_interval={minutes:1}", "trainer.accelerator=cpu"],
                                 tmp_path / "block")
    run.build_trainer(block)  # a duration block reaches Lightning as the dict it reads
    assert trainer.limit_val_batches == 1.0 and isinstance(trainer.limit_val_batches, float)  # all of them


@pytest.mark.parametrize("overrides,epochs", [([], 100), (["trainer=ddp_sim"], 100), (["trainer.max_epochs=3"], 3),
                                              (["experiment=fsdd", "task.data.fsdd=null"], 50)])
def test_a_task_trainer_entry_sets_the_tasks_trainer_defaults(overrides, epochs, tmp_path):
    assert compose_train_config("speech", overrides, tmp_path).trainer.max_epochs == epochs
    assert compose_train_config("forecasting", [], tmp_path).trainer.max_epochs == 10  # ships none


@pytest.mark.parametrize("task,override,message", [
    ("forecasting", "backbone.hidden_size=abc", "backbone.hidden_size must be an integer, got 'abc'"),
    ("forecasting", "optimizer.lr=fast", "optimizer.lr must be a finite number, got 'fast'"),
    ("forecasting", "trainer.max_epochs=abc", "trainer.max_epochs must be an integer, got 'abc'"),
    ("forecasting", "task.data.batch_size=0", "task.data.batch_size must be at least 1, got 0"),
    ("forecasting", "task.data.lookback=-5", "task.data.lookback must be at least 1, got -5"),
    ("forecasting", "task.data.horizon=0", "task.data.horizon must be at least 1, got 0"),
    ("anomaly", "task.data.probation=abc", "task.data.probation must be a finite number, got 'abc'"),
    ("anomaly", "task.data.crop_length=0", "task.data.crop_length must be at least 2, got 0"),
    ("anomaly", "task.scoring.threshold=quantile task.scoring.quantile=2",
     "task.scoring.quantile must be between 0 and 1, got 2"),
    ("translation", "task.decode.beam_size=abc", "task.decode.beam_size must be an integer, got 'abc'"),
    ("music", "task.generate.top_k=abc", "task.generate.top_k must be an integer, got 'abc'"),
    ("music", "task.generate.pieces=0", "task.generate.pieces must be at least 1, got 0"),
    ("music", "task.model.representation=events task.model.dropout=1", "task.model.dropout must be in [0, 1), got 1"),
    ("music", "task.generate.top_p=1.5", "task.generate.top_p must be in (0, 1] (or null), got 1.5"),
    ("anomaly", "task.scoring.cooldown=2.5", "task.scoring.cooldown must be an integer, got 2.5"),
    ("forecasting", "task.data.lookback=inf", "task.data.lookback must be an integer, got inf"),
    ("forecasting", "optimizer.lr=nan", "optimizer.lr must be a finite number, got nan"),
    ("forecasting", "backbone.dropout=2", "backbone.dropout must be in [0, 1), got 2"),
    ("forecasting", "task.model.head_dropout=-1", "task.model.head_dropout must be in [0, 1), got -1"),
    ("forecasting", "task.data.season=0", "task.data.season must be at least 1, got 0"),
    ("forecasting", "task.data.split=[0.5,0.5]",
     "split must be 3 non-negative fractions or row counts, got [0.5, 0.5]"),
    ("forecasting", "task.data.targets=[]", "task.data.targets must name at least one column"),
    ("forecasting", "seed=xyz", "seed must be an integer, got 'xyz'"),
    ("forecasting", "trainer.num_sanity_val_steps=a", "trainer.num_sanity_val_steps must be an integer, got 'a'"),
    ("forecasting", "backbone.bidirectional=maybe", "backbone.bidirectional must be true or false, got 'maybe'"),
    ("forecasting", "predict_after_training=1", "predict_after_training must be true or false, got 1"),
    ("forecasting", "trainer.deterministic=ture", "trainer.deterministic must be true, false or warn, got 'ture'"),
    ("translation", "task.predict.attention=nope", "task.predict.attention must be true or false, got 'nope'"),
    ("speech", "task.predict.streaming=maybe", "task.predict.streaming must be true or false, got 'maybe'"),
    ("speech", "task.predict.chunk_ms=-5", "task.predict.chunk_ms must be at least 1, got -5"),
    ("speech", "task.data.connected.train=-1", "task.data.connected.train must be at least 0, got -1"),
    ("music", "task.data.drums=nope", "task.data.drums must be true or false, got 'nope'"),
    ("music", "task.generate.seed=1.7", "task.generate.seed must be an integer, got 1.7"),
    ("music", "task.generate.temperature=hot", "task.generate.temperature must be a finite number, got 'hot'"),
    ("music", "task.generate.temperature=-1", "task.generate.temperature must be positive, got -1"),
    ("translation", "task.model.label_smoothing=1.5", "task.model.label_smoothing must be in [0, 1), got 1.5"),
    ("translation", "task.model.dropout=1", "task.model.dropout must be in [0, 1), got 1"),  # trained nothing
    ("sentiment", "task.model.word_dropout=1", "task.model.word_dropout must be in [0, 1), got 1"),
    ("translation", "task.model.dropout=-0.1", "task.model.dropout must be in [0, 1), got -0.1"),
    ("translation", "task.tokenizer.vocab_size=-5", "task.tokenizer.vocab_size must be at least 1, got -5"),
    ("sentiment", "task.model.dropout=2", "task.model.dropout must be in [0, 1), got 2"),
    ("translation", "task.predict.plots=-1", "task.predict.plots must be at least 0, got -1"),
])
def test_a_wrong_number_is_named_before_any_work(task, override, message, tmp_path):
    cfg = compose_train_config(task, override.split(), tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        check_run_settings(cfg)
        run.build_task(cfg.task).datamodule()


def test_a_preset_setting_for_a_removed_callback_is_skipped_with_a_warning(tmp_path, caplog):
    cfg = compose_train_config("sentiment", ["experiment=sst2", *STAND_IN_DATA["sst2"], "callbacks=none"], tmp_path)
    trainer = run.build_trainer(cfg)  # sst2 sets callbacks.early_stopping.patience; callbacks=none removed the rest
    assert not any(type(c).__name__ == "EarlyStopping" for c in trainer.callbacks)
    assert "callbacks.early_stopping sets ['patience'] but names no class (_target_): skipped" in caplog.text


def test_the_fsdd_preset_keeps_the_last_epoch(tmp_path):
    cfg = compose_train_config("speech", ["experiment=fsdd", *STAND_IN_DATA["fsdd"]], tmp_path)
    assert cfg.callbacks.model_checkpoint.monitor is None and cfg.callbacks.model_checkpoint.save_last


def test_a_checkpoint_no_metric_chose_is_named_after_its_epoch_not_best(tmp_path, caplog):
    cfg = compose_train_config("forecasting", ["callbacks=last_epoch", "backbone.hidden_size=8", "trainer.max_epochs=2",
                                               "logger=none", "++trainer.limit_train_batches=2",
                                               "predict_after_training=false"], tmp_path)
    caplog.set_level(logging.INFO, logger="gru_suite.run")
    run.train(cfg)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["epoch-001.ckpt", "last.ckpt"]
    assert f"last epoch's checkpoint: {tmp_path / 'checkpoints' / 'epoch-001.ckpt'}" in caplog.text


def test_a_run_limited_to_no_training_says_its_figures_are_the_untrained_models(tmp_path, caplog):
    cfg = compose_train_config("forecasting", ["trainer.max_epochs=0", "backbone.hidden_size=8", "logger=none",
                                               "predict_after_training=false"], tmp_path)
    caplog.set_level(logging.WARNING, logger="gru_suite")
    metrics = run.train(cfg)
    assert "trainer.max_epochs=0: nothing is trained; the test metrics and artifacts are those of the " in caplog.text
    assert "test/mse" in metrics


@pytest.mark.parametrize("overrides, message", [
    (["task.monitor=val/accuracy"], "task.monitor names 'val/accuracy', a metric that was never logged; logged: ["),
    (["callbacks.model_checkpoint.monitor=val/x"], "a callback's monitor names 'val/x', a metric that was never"),
    (["task.monitor=val/acc", "callbacks=none", "scheduler=plateau"], "task.monitor names 'val/acc', a metric"),
    (["task.monitor=val/los"], "task.monitor names 'val/los', a metric that was never logged; did you mean 'val/loss'? "
                               "logged: ["),
    (["task.monitor=loss"], "task.monitor names 'loss', a metric that was never logged; did you mean 'val/loss'? "),
    (["task.monitor=test/mae"], ("task.monitor names 'test/mae', a metric that was never logged; did you mean "
                                 "'val/mae'? ")),
])
def test_a_monitor_never_logged_is_named_with_the_metrics_that_were(overrides, message, tmp_path):
    cfg = compose_train_config("forecasting", ["backbone.hidden_size=8", "trainer.max_epochs=1", "logger=csv",
                                               "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2",
                                               *overrides], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        run.train(cfg)
    assert "'val/loss'" in str(raised.value)
    assert not (tmp_path / "metrics.csv").exists()  # the sanity check validated every batch: no epoch trained


@pytest.mark.parametrize("name, meant", [("val/acc", "val/accuracy"), ("train/acc", "train/accuracy"),
                                         ("val/los", "val/loss"), ("loss", "val/loss"),
                                         ("test/accuracy", "val/accuracy"), ("accuracy", "val/accuracy"),
                                         ("val/recall", None)])
def test_a_monitors_likely_meaning_keeps_its_own_stage(name, meant):
    logged = ["train/accuracy", "train/loss", "val/accuracy", "val/loss"]
    assert run._metric_meant(name, logged) == meant


@pytest.mark.parametrize("monitor, named_early", [("val/los", True), ("val/accuracy", False)])
def test_a_monitor_missing_from_a_partial_sanity_check_is_named_early_only_if_it_looks_like_a_slip(
        monitor, named_early, tmp_path):
    cfg = compose_train_config("forecasting", ["backbone.hidden_size=8", "trainer.max_epochs=1", "logger=csv",
                                               "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=4",
                                               "++trainer.num_sanity_val_steps=1", f"task.monitor={monitor}"], tmp_path)
    with pytest.raises(UserError, match=re.escape(f"task.monitor names '{monitor}', a metric that was never logged")):
        run.train(cfg)  # a metric that some batches log may come later: Lightning's own check names it after the epoch
    assert (tmp_path / "metrics.csv").exists() is not named_early


def test_monitors_lightning_does_not_require_are_not_refused_after_the_sanity_check(tmp_path):
    cfg = compose_train_config("forecasting", [
        "backbone.hidden_size=8", "trainer.max_epochs=1", "logger=none", "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=2", "callbacks=early_stopping", "+callbacks.early_stopping.strict=false",
        "callbacks.early_stopping.monitor=val/nope", "callbacks.model_checkpoint.monitor=step",  # Lightning's own
        "+callbacks.on_exception._target_=pytorch_lightning.callbacks.OnExceptionCheckpoint",  # no monitor at all
        f"+callbacks.on_exception.dirpath={tmp_path}"], tmp_path)
    assert "test/mse" in run.train(cfg)


def test_a_training_metric_as_monitor_is_named_after_the_first_epoch_if_never_logged(tmp_path):
    cfg = compose_train_config("forecasting", ["backbone.hidden_size=8", "trainer.max_epochs=1", "logger=none",
                                               "++trainer.limit_train_batches=2", "task.monitor=train/los"], tmp_path)
    with pytest.raises(UserError, match=re.escape("task.monitor names 'train/los', a metric that was never logged; "
                                                  "did you mean 'train/loss'? ")):
        run.train(cfg)


def test_a_required_setting_that_is_null_or_absent_is_named():
    cfg = OmegaConf.create({"data": {"window": None, "lookback": 3}})
    assert wrong_unset(cfg, ("data.window", "data.stride", "data.lookback"), prefix="task.") == [
        "task.data.window must be set, got null",
        "task.data.stride must be set, but the config has no such key (a checkpoint saved before the setting "
        "existed has none)"]
    assert wrong_unset(OmegaConf.create({"data": {"path": ""}}), ("data.path",)) == ["data.path must be set, got ''"]


@pytest.mark.parametrize("task, data", [("anomaly", "path"), ("forecasting", "path"), ("music", "path"),
                                        ("sentiment", "train"), ("translation", "path")])
def test_a_null_data_path_is_named_not_a_traceback(task, data, tmp_path):
    cfg = compose_train_config(task, [f"task.data.{data}=null"], tmp_path)
    with pytest.raises(UserError, match=rf"^task\.data\.{data} must be set, got null$"):
        run.train(cfg)


def test_an_added_task_key_is_flagged_with_a_sibling_it_may_mean(tmp_path):
    overrides = ["+task.data.lookbak=4", "+task.data.foo=1", "+task.model.lookback=2", "++task.data.bar=1"]
    cfg = compose_train_config("forecasting", overrides, tmp_path)
    messages = undeclared_settings(overrides, cfg)
    assert messages[0].startswith("+task.data.lookbak: not in the config of task 'forecasting' (did you mean "
                                  "task.data.lookback? ")
    assert "did you mean" not in messages[1] and "did you mean" not in messages[2]  # other blocks are not searched
    assert len(messages) == 3


def test_an_added_top_level_key_is_flagged_unless_it_is_a_config_group(tmp_path):
    overrides = ["+ensemble=[a.ckpt]", "+thread=2", "+experiment=etth1", "++extra=1", "+task.data.foo=1",
                 "+ckpt_path=a.ckpt"]  # Hydra lets + set a null key
    messages = undeclared_run_settings(overrides, ["threads", "ckpt_path", "experiment", "task"], "gru-suite-eval")
    assert messages == ["+ensemble: not a setting of gru-suite-eval (a setting the command does not read is ignored)",
                        "+thread: not a setting of gru-suite-eval (did you mean threads? a setting the command does "
                        "not read is ignored)"]


def test_backbone_settings_that_would_not_act_are_named(tmp_path):
    assert given_keys(["task=sentiment", "backbone.bidirectional=false", "++backbone.dropout=0.2", "backbone=lstm"],
                      "backbone") == ["bidirectional", "dropout"]
    assert given_keys(["~backbone.dropout", "backbone.hidden_size=8"], "backbone") == ["hidden_size"]  # deleted: unset
    cfg = compose_train_config("sentiment", ["backbone.bidirectional=false", "backbone.dropout=0.2"], tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()  # fits the tokenizer the model's size needs
    assert unused_backbone_settings(cfg, run.build_module(cfg, task).model, ["bidirectional", "dropout"]) == [
        "backbone.dropout=0.2 has no effect with backbone.num_layers=1: it drops between stacked layers (the task's "
        "own dropout settings act on its inputs and outputs)",
        "backbone.bidirectional=false is not what task 'sentiment' builds: its model's backbone has "
        "bidirectional=true, which the task sets",
    ]
    two = compose_train_config("sentiment", ["backbone.num_layers=2", "backbone.dropout=0.2"], tmp_path / "two")
    assert unused_backbone_settings(two, run.build_module(two, task).model, ["num_layers", "dropout"]) == []
    translation = compose_train_config("translation", ["backbone.bidirectional=true"], tmp_path / "translation")
    task = run.build_task(translation.task)
    task.datamodule()
    assert unused_backbone_settings(translation, run.build_module(translation, task).model, ["bidirectional"]) == [
        "backbone.bidirectional=true is not what task 'translation' builds: its model's decoder has "
        "bidirectional=false, which the task sets"]  # the encoder runs both ways


def test_every_wrong_number_is_named_at_once(tmp_path):
    cfg = compose_train_config("forecasting", ["optimizer.lr=fast", "trainer.max_epochs=-5", "seed=x",
                                               "backbone.weight_dropout=1", "backbone.dropout=-1"], tmp_path)
    with pytest.raises(UserError) as caught:
        raise_all(wrong_numbers(cfg, RUN_NUMBERS))
    assert str(caught.value).splitlines() == [
        "5 settings are wrong:", "  backbone.dropout must be in [0, 1), got -1",
        "  backbone.weight_dropout must be in [0, 1), got 1",  # the backbone refuses 1: every recurrent weight gone
        "  optimizer.lr must be a finite number, got 'fast'", "  trainer.max_epochs must be at least -1, got -5",
        "  seed must be an integer, got 'x'"]
    too_large = compose_train_config("forecasting", ["seed=4294967296"], tmp_path)  # numpy's seeds: 32 bits
    assert wrong_numbers(too_large, RUN_NUMBERS) == ["seed must be between 0 and 4294967295, got 4294967296"]


def test_a_plateau_schedule_and_early_stopping_refuse_what_would_act_at_every_validation(tmp_path):
    cfg = compose_train_config("forecasting", ["scheduler=plateau", "scheduler.patience=-1", "scheduler.factor=1",
                                               "callbacks=early_stopping", "callbacks.early_stopping.patience=-1"],
                               tmp_path)
    assert wrong_numbers(cfg, RUN_NUMBERS) == [
        "callbacks.early_stopping.patience must be at least 0, got -1", "scheduler.patience must be at least 0, got -1",
        "scheduler.factor must be in [0, 1), got 1"]


def test_training_names_the_cores_and_the_tasks_wrong_settings_together(tmp_path):
    cfg = compose_train_config("forecasting", ["optimizer.lr=fast", "task.data.lookback=-5",
                                               "task.data.batch_size=2.5"], tmp_path)
    with pytest.raises(UserError) as caught:
        run.train(cfg)
    assert str(caught.value).splitlines() == [
        "3 settings are wrong:", "  optimizer.lr must be a finite number, got 'fast'",
        "  task.data.batch_size must be an integer, got 2.5", "  task.data.lookback must be at least 1, got -5"]
    assert not (tmp_path / "checkpoints").exists()


def test_a_choice_checked_where_it_is_used_is_worded_as_the_config_check_words_it():
    assert check_choice("luong", ("luong", "bahdanau"), "task.model.attention") == "luong"
    with pytest.raises(UserError, match=r"^task\.model\.attention must be one of \['luong', 'bahdanau'\], got 'dot'$"):
        check_choice("dot", ("luong", "bahdanau"), "task.model.attention")


SETTINGS_WITH_CHOICES = {
    "anomaly": {"detector.kind", "detector.error", "scoring.score", "scoring.threshold", "data.missing"},
    "forecasting": {"model.normalize", "data.missing"},
    "music": {"generate.unit", "model.head", "data.pitch_range", "model.representation"},
    "sentiment": {"model.pooling", "predict.importance", "model.class_weights", "tokenizer.kind", "data.format",
                  "predict.format", "data.encoding_errors"},
    "speech": {"features.normalize", "text.tokens", "model.frontend"},
    "translation": {"data.too_long", "model.attention", "tokenizer.kind", "data.encoding_errors"},
}
"""Each built-in task's settings that take one of a few values (in its shipped yaml)."""


@pytest.mark.parametrize("task", sorted(SETTINGS_WITH_CHOICES))
def test_every_settings_choice_is_named_with_the_other_wrong_settings(task, tmp_path):
    choices = registry.get_task(task).load().choices
    assert {field for field, _ in choices} == SETTINGS_WITH_CHOICES[task]  # none left to a check of its own
    cfg = compose_train_config(task, ["optimizer.lr=fast", *(f"task.{field}=bogus" for field, _ in choices)], tmp_path)
    with pytest.raises(UserError) as caught:
        run.train(cfg)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{len(choices) + 1} settings are wrong:"
    assert sorted(lines[1:]) == sorted(["  optimizer.lr must be a finite number, got 'fast'",
                                        *(f"  task.{field} must be one of {list(values)}, got 'bogus'"
                                          for field, values in choices)])


def test_a_wrong_monitor_mode_is_named_before_training(tmp_path):
    cfg = compose_train_config("forecasting", ["task.monitor_mode=maximum"], tmp_path)
    with pytest.raises(UserError, match=r"^task\.monitor_mode must be min or max, got 'maximum'$"):
        run.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_a_tasks_ranges_are_named_with_its_numbers_and_stored_as_numbers():
    class Ranged(TaskPlugin):
        ranges = (("data.words", int, 1, False), ("data.pause_s", float, 0, True), ("data.takes", int, 0, True))
        required = ("data.size",)

    cfg = OmegaConf.create({"name": "forecasting", "data": {"batch_size": 0, "words": [3, 2], "pause_s": ["0.1", 1],
                                                            "takes": 4, "size": None}})
    assert Ranged.wrong_settings(cfg) == [  # every kind named at once
        "task.data.size must be set, got null",
        "task.data.batch_size must be at least 1, got 0",
        "task.data.words must be [low, high], ints with 1 <= low <= high, got [3, 2]",
        "task.data.takes must be [low, high], ints with 0 <= low <= high (or null), got 4",
        "task.monitor_mode must be min or max, got None",
        "task.monitor is missing: the task's config must name the metric that picks the best checkpoint (e.g. "
        "val/loss), or null for the last epoch's"]
    assert cfg.data.pause_s == [0.1, 1.0] and isinstance(cfg.data.pause_s[1], float)
    cfg.data.words, cfg.data.takes, cfg.data.size, cfg.monitor_mode, cfg.monitor = ["x", 2], None, 1, "min", None
    assert Ranged.wrong_settings(cfg)[1:] == [
        "task.data.words must be [low, high], ints with 1 <= low <= high, got ['x', 2]"]


def test_a_quoted_true_or_false_is_a_switch():
    cfg = OmegaConf.create({"task": {"name": "sentiment", "model": {"bidirectional": "False", "tied": " True "}}})
    assert wrong_switches(cfg, ["task.model.bidirectional", "task.model.tied"]) == []
    assert cfg.task.model.bidirectional is False and cfg.task.model.tied is True
    cfg.task.model.bidirectional = None  # null is off: nn.GRU(bidirectional=None) was a TypeError at the first batch
    assert wrong_switches(cfg, ["task.model.bidirectional", "task.model.absent"]) == []
    assert cfg.task.model.bidirectional is False and "absent" not in cfg.task.model
    assert "model.bidirectional" in task_switches("sentiment") and "data.batch_size" not in task_switches("sentiment")


def test_a_whole_number_in_text_is_a_number_other_text_is_not():
    cfg = OmegaConf.create({"seed": "7", "threads": "1.5", "epochs": "-1", "steps": " +3"})
    assert wrong_numbers(cfg, (("seed", int, 0), ("epochs", int, -1), ("steps", int, 0))) == []
    assert (cfg.seed, cfg.epochs, cfg.steps) == (7, -1, 3)
    assert wrong_numbers(cfg, (("threads", int, 0),)) == ["threads must be an integer, got '1.5'"]


def test_true_or_false_is_not_a_number():
    cfg = OmegaConf.create({"lr": True, "layers": False})
    assert wrong_numbers(cfg, (("lr", float, 0), ("layers", int, 0))) == [
        "lr must be a finite number, got True", "layers must be an integer, got False"]


def test_a_number_at_its_largest_allowed_value_is_taken_one_above_it_is_named():
    fields = (("seed", int, 0, 2**32 - 1), ("quantile", float, 0, 1))
    cfg = OmegaConf.create({"seed": 2**32 - 1, "quantile": 1})
    assert wrong_numbers(cfg, fields) == [] and (cfg.seed, cfg.quantile) == (2**32 - 1, 1.0)
    cfg = OmegaConf.create({"seed": 2**32, "quantile": 1.5})
    assert wrong_numbers(cfg, fields) == ["seed must be between 0 and 4294967295, got 4294967296",
                                          "quantile must be between 0 and 1, got 1.5"]


def test_a_null_range_is_named_unless_null_is_allowed():
    fields = (("data.words", int, 1, False), ("data.pause_s", float, 0, True))
    cfg = OmegaConf.create({"data": {"words": None, "pause_s": None}})
    assert wrong_ranges(cfg, fields, "task.") == [
        "task.data.words must be [low, high], ints with 1 <= low <= high, got null"]


@pytest.mark.parametrize(("value", "stored"), [("warn", "warn"), (" WARN", "warn"), ("True", True), ("false", False)])
def test_determinism_in_any_case_is_stored_as_lightning_reads_it(value, stored):
    cfg = OmegaConf.create({"trainer": {"deterministic": value}})
    assert wrong_determinism(cfg) == [] and cfg.trainer.deterministic == stored


def test_the_data_folder_is_gru_suite_data_dir_when_set(tmp_path, monkeypatch):
    monkeypatch.delenv("GRU_SUITE_DATA_DIR", raising=False)
    assert compose_train_config("forecasting", [], tmp_path).paths.data_dir == str(bundled_data_dir())
    monkeypatch.setenv("GRU_SUITE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert compose_train_config("forecasting", [], tmp_path).paths.data_dir == str(tmp_path / "elsewhere")


def test_every_config_folder_ships_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    repo = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: repo / folder for name, folder in setuptools["package-dir"].items()}
    folders = {p.parent for p in [*repo.glob("gru_suite/conf/**/*.yaml"), *repo.glob("plugins/*/conf/**/*.yaml")]}
    shipped = set()
    for package in setuptools["packages"]:
        top, *rest = package.split(".")
        shipped.add(roots[top].joinpath(*rest))
    assert folders <= shipped, sorted(str(f.relative_to(repo)) for f in folders - shipped)
    assert setuptools["package-data"]["*"] == ["*.yaml"]


def test_a_debug_preset_wins_over_an_experiments_trainer_settings(tmp_path):
    cfg = compose_train_config("sentiment", ["experiment=sst2", *STAND_IN_DATA["sst2"], "debug=overfit"], tmp_path)
    assert cfg.trainer.overfit_batches == 2 and cfg.trainer.max_epochs == cfg.trainer.check_val_every_n_epoch == 60


@pytest.mark.parametrize("overrides,message", [
    (["scheduler=plateau", "scheduler.factor=2"], r"scheduler settings \(mode='min', factor=2, patience=2\): Factor "
                                                  "should be < 1.0"),
    (["+optimizer.bogus=1"], r"optimizer settings \(lr=.*, bogus=1\): .*unexpected keyword argument 'bogus'"),
    (["+backbone.hiden_size=8"], r"backbone settings: got an unexpected keyword argument 'hiden_size' \(the keys of "
                                 r"GRUBackbone: hidden_size, num_layers, "),
    (["scheduler=cosine", "trainer.max_epochs=-1", "trainer.max_steps=12"],
     r"scheduler settings \(T_max=-1, eta_min=0.0\): T_max=-1: a cosine"),
])
def test_bad_optimizer_and_scheduler_settings_are_named_before_training(tmp_path, overrides, message):
    cfg = compose_train_config("forecasting", overrides, tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()
    with pytest.raises(UserError, match=message):
        run.build_module(cfg, task)


def test_an_override_hydra_cannot_apply_is_one_line_when_composing(tmp_path):
    """Benchmarks and plugin authors compose through `compose_train_config`: a typo is a `UserError`, as on the CLI."""
    with pytest.raises(UserError, match=r"^Could not override 'task\.bogus'\. To append to your config use \+task"):
        compose_train_config("forecasting", ["task.bogus=1"], tmp_path)
    with pytest.raises(UserError, match=r"^backbone=gruu: no such option; the backbone options are gru, lstm$"):
        compose_train_config("forecasting", ["backbone=gruu"], tmp_path)
    with pytest.raises(UserError, match=r"^scheduler=null: no such option; the scheduler options are "):
        compose_train_config("forecasting", ["scheduler=null"], tmp_path)  # was Hydra's ValueError traceback


def test_a_task_config_without_a_monitor_is_named_before_the_callbacks_read_it(tmp_path):
    cfg = compose_train_config("forecasting", [], tmp_path)
    with open_dict(cfg):
        del cfg.task["monitor"]
    with pytest.raises(UserError, match=r"^task\.monitor is missing: the task's config must name the metric"):
        run.train(cfg)


def test_a_malformed_split_is_named_before_an_earlier_run_in_the_folder_is_set_aside(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    cfg = compose_train_config("forecasting", ["task.data.split=[0.5,0.5]"], tmp_path)
    with pytest.raises(UserError, match=r"^task\.data\.split must be 3 non-negative fractions or row counts, got "
                                        r"\[0\.5, 0\.5\]$"):
        run.train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # not moved to checkpoints.1/


def test_a_value_a_preset_requires_is_named_before_an_earlier_run_in_the_folder_is_set_aside(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    cfg = compose_train_config("speech", ["experiment=fsdd", "task.data.fsdd=null"], tmp_path)
    cfg.task.data.fsdd = '${gru_suite.required:"task.data.fsdd (the FSDD recordings folder)"}'  # as the preset has it
    with pytest.raises(UserError, match=r"^task\.data\.fsdd \(the FSDD recordings folder\) is required"):
        run.train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # not moved to checkpoints.1/


def test_a_wrong_trainer_setting_leaves_an_earlier_runs_metrics_where_they_are(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train/loss\n0,1.5\n")
    cfg = compose_train_config("forecasting", ["trainer.devices=abc", "logger=csv"], tmp_path)
    with pytest.raises(UserError):
        run.build_trainer(cfg)
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "metrics.1.csv").exists()


NULL_IS_OFF = {  # a number set to null means "off" or "the default" here, or the task's own check names it
    "forecasting": {"data.predict_stride", "data.season"},
    "anomaly": {"data.calendar_harmonics", "detector.retrain.every", "scoring.cooldown", "scoring.fixed",
                "scoring.quantile", "scoring.range_tolerance", "scoring.spot_level", "scoring.spot_q"},
    "music": {"data.crop_steps", "data.transpose", "generate.max_events", "generate.top_k"},
    "speech": {*(f"augment.{key}" for key in ("colour_db", "colour_points", "freq_masks", "freq_width", "gain_db",
                                             "leading_silence_fraction", "leading_silence_s", "tilt_db",
                                             "time_masks", "time_width", "warp")),
               "data.connected.gain_db", "data.connected.test", "data.connected.train", "data.connected.val",
               "model.speaker_adversary", "model.spectral.channels", "model.spectral.kernel", "model.spectral.pool",
               "predict.cue_min_s"},
    "translation": {"decode.max_length"},
    "sentiment": {"data.val_fraction", "distill.copies", "distill.ngram", "distill.weight", "distill.word_drop",
                  "model.adversarial_eps", "model.lm_weight", "model.virtual_adversarial_eps", "pretrain.epochs",
                  "predict.batch_size"},
}


@pytest.mark.parametrize("task", sorted(NULL_IS_OFF))
def test_every_number_is_required_unless_null_is_off(task, tmp_path):
    """A number whose null has no meaning was a TypeError deep in the task (e.g. task.data.lookback=null): each is in
    `required`, named in one line; a new number must be put there or, where null means off, here."""
    cls = registry.get_task(task).load()
    numbers = {field for field, *_ in (*cls.numbers, *TaskPlugin.numbers)}
    assert numbers - set(cls.required) - {"data.batch_size", "data.num_workers"} == NULL_IS_OFF[task]
    cfg = compose_train_config(task, [], tmp_path).task
    assert [field for field in ("data.batch_size", "data.num_workers") if lacks(cfg, field)] == []  # the core's
    nulled = sorted(numbers - NULL_IS_OFF[task] - {field for field in numbers if lacks(cfg, field)})
    for field in nulled:
        OmegaConf.update(cfg, field, None, merge=False)
    assert {f"task.{field} must be set, got null" for field in nulled} <= set(cls.wrong_settings(cfg))


def test_a_null_core_number_without_an_off_is_named(tmp_path):
    groups = ["scheduler=plateau", "callbacks=early_stopping"]  # the groups whose options hold the last three
    cfg = compose_train_config("forecasting", [*groups, *(f"{field}=null" for field in RUN_REQUIRED)], tmp_path)
    with pytest.raises(UserError) as caught:
        check_run_settings(cfg)
    assert {f"  {field} must be set, got null" for field in RUN_REQUIRED} <= set(str(caught.value).splitlines())


def test_group_options_hydra_reads_itself_are_left_to_it():
    assert unknown_group_option(["backbone=lstm", "-m", "trainer=cpu, default", "experiment=nab", "seed=1"]) is None
    for args in (["hydra/launcher=basic"], ["backbone={hidden_size: 9}"], ["callbacks=[default,none]"],
                 ["+backbone=\"gruu\""], ["backbone=gruu", "-cp", "/mine"], ["backbone=gruu", "--config-dir=/mine"],
                 ["backbone=gruu", "hydra.searchpath=[file:///mine]"], ["backbone.hidden_size=9", "task.x=gruu"]):
        assert unknown_group_option(args) is None, args
    assert unknown_group_option(["++backbone=gruu"]) is None  # "+backbone" is no identifier: Hydra's to name
    assert unknown_group_option(["-m", "backbone=gru,gruu"]).startswith("backbone=gruu: no such option")


def test_every_core_number_is_required_unless_null_is_off():
    null_is_off = {"trainer.max_epochs", "trainer.gradient_clip_val", "trainer.log_every_n_steps",
                   "trainer.num_sanity_val_steps", "trainer.check_val_every_n_epoch", "threads", "seed"}
    assert {field for field, *_ in RUN_NUMBERS} - set(RUN_REQUIRED) == null_is_off


def test_a_list_in_a_message_names_five_then_counts_the_rest():
    assert first_named(list(range(1, 9))) == "1, 2, 3, 4, 5 and 3 more"
    assert first_named(["a.csv", "b.csv"]) == "a.csv, b.csv"


def test_lightnings_own_switches_turn_off_the_progress_bar_and_the_checkpoints(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

    kinds = {"+trainer.enable_progress_bar=false": ProgressBar, "+trainer.enable_checkpointing=false": ModelCheckpoint}
    for switch, kind in kinds.items():  # not refused for the suite's own progress bar or checkpoints beside them
        trainer = run.build_trainer(compose_train_config("forecasting", [switch], tmp_path))
        assert not any(isinstance(callback, kind) for callback in trainer.callbacks)
        assert any(isinstance(callback, ({*kinds.values()} - {kind}).pop()) for callback in trainer.callbacks)
    unbuilt = ["+trainer.enable_checkpointing=false", "callbacks.model_checkpoint.save_last=link"]
    run.build_trainer(compose_train_config("forecasting", unbuilt, tmp_path))  # left out before it could refuse


def test_a_last_checkpoint_that_would_link_to_the_best_is_refused(tmp_path):
    cfg = compose_train_config("forecasting", ["callbacks.model_checkpoint.save_last=link"], tmp_path)
    with pytest.raises(UserError, match=r"^callbacks.model_checkpoint.save_last=link would make last.ckpt a link to "
                                        r"the best checkpoint, not the latest epoch that resuming goes on from: use "
                                        r"true \(or false\)$"):
        run.build_trainer(cfg)


class Refusing:
    def __init__(self) -> None:
        raise UserError("refusing.setting must be 1")


class Nesting:
    def __init__(self) -> None:
        instantiate(OmegaConf.create({"_target_": f"{__name__}.Refusing"}), "inner")


def test_a_classes_own_user_error_surfaces_from_instantiate_as_it_is_however_deep():
    for target in ("Refusing", "Nesting"):  # nested: no loop in the chain of causes to follow forever
        with pytest.raises(UserError, match=r"^refusing.setting must be 1$"):
            instantiate(OmegaConf.create({"_target_": f"{__name__}.{target}"}), "outer")
