"""The core module's and callbacks' bookkeeping: the epoch's training loss, step logging, epoch time,
the last checkpoint."""

from types import SimpleNamespace

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch.utils.data import DataLoader, TensorDataset

from gru_suite import callbacks, run
from gru_suite.callbacks import (
    EMAWeights,
    EpochThroughput,
    PatientEarlyStopping,
    RunFolderCheckpoint,
    carried_best_state,
)
from gru_suite.module import TaskModule
from gru_suite.task import StepOutput, TaskPlugin
from gru_suite.testing import compose_train_config


def logging_module(tmp_path, monkeypatch) -> tuple[TaskPlugin, TaskModule, dict[str, tuple[float, dict]]]:
    """A tiny forecasting task, its module, and what the module logs: name -> (value, keyword arguments)."""
    cfg = compose_train_config("forecasting", TINY, tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()  # the task learns its data's shape
    module = run.build_module(cfg, task)
    logged: dict[str, tuple[float, dict]] = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.update({name: (float(value), kwargs)}))
    return task, module, logged


def test_the_epoch_training_loss_is_logged_with_its_weight(tmp_path, monkeypatch):
    """Under DDP Lightning syncs an epoch value logged with `batch_size` as sum(value x weight) / sum(weight) over
    the processes: logged with the epoch's weight, the training loss is the mean over every process's share."""
    _, module, logged = logging_module(tmp_path, monkeypatch)
    module.on_train_epoch_start()
    module._train_loss_sum += 2.0 * 1000  # a loss of 2.0 over a weight of 1,000 (tokens, say)
    module._train_loss_weight += 1000
    module.samples_seen += 1000
    module.on_train_epoch_end()
    value, kwargs = logged["train/loss"]
    assert value == pytest.approx(2.0)
    assert kwargs["batch_size"] == 1000 and kwargs["sync_dist"]


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_task_metrics_are_means_over_every_process_share(stage, tmp_path, monkeypatch):
    _, module, logged = logging_module(tmp_path, monkeypatch)
    module._log_metrics(StepOutput(torch.tensor(1.0), 4, {"mse": torch.tensor(0.5)}), stage)
    _, kwargs = logged[f"{stage}/mse"]
    assert kwargs["sync_dist"] and not kwargs["on_step"]


@pytest.mark.parametrize(("loss_weight", "weight"), [(torch.tensor(37), 37), (None, 4)])
def test_the_evaluation_loss_is_a_mean_weighted_by_the_step_loss_weight(loss_weight, weight, tmp_path, monkeypatch):
    """A step's `loss_weight` (tokens, say), else its batch size, weighs its loss in the epoch's `val/loss`."""
    task, module, logged = logging_module(tmp_path, monkeypatch)
    monkeypatch.setattr(task, "step", lambda *args: StepOutput(torch.tensor(1.0), 4, loss_weight=loss_weight))
    module.validation_step(None, 1)  # a later batch: the first's contract checks are the plugin kit's tests
    assert int(logged["val/loss"][1]["batch_size"]) == weight


def test_an_interrupted_validation_pass_leaves_its_metric_names_behind(tmp_path, monkeypatch):
    task, module, logged = logging_module(tmp_path, monkeypatch)
    module._log_metrics(StepOutput(torch.tensor(1.0), 4, {"score": torch.tensor(0.5)}), "val")  # then interrupted
    module.on_validation_epoch_start()  # the next pass, whose steps return no `score`
    monkeypatch.setattr(task, "epoch_end", lambda stage: {"score": 0.75})
    module.on_validation_epoch_end()
    assert logged["val/score"][0] == 0.75


@pytest.mark.parametrize("tested", [True, False])
def test_artifacts_after_training_come_from_the_best_checkpoint(tested, tmp_path, monkeypatch):
    weights = []
    predict = pl.Trainer.predict
    monkeypatch.setattr(pl.Trainer, "predict", lambda trainer, *args, **kwargs: weights.append(kwargs.get("ckpt_path"))
                        or predict(trainer, *args, **kwargs))
    cfg = compose_train_config("forecasting", [*TINY, "trainer.max_epochs=2", f"test_after_training={tested}"],
                               tmp_path)
    run.train(cfg)
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    assert weights == [str(best)] and (tmp_path / "predictions" / "forecast.csv").is_file()


def test_training_with_step_logging_off(tmp_path):
    cfg = compose_train_config("forecasting", [*TINY, "trainer.max_epochs=1", "trainer.log_every_n_steps=0",
                                               "test_after_training=false", "predict_after_training=false"], tmp_path)
    assert run.train(cfg)["train/loss"] > 0


def test_the_step_loss_is_logged_on_every_step_the_logger_writes(tmp_path):
    cfg = compose_train_config("forecasting", [*TINY, "trainer.max_epochs=4", "trainer.limit_train_batches=7",
                                               "trainer.log_every_n_steps=5", "task.data.batch_size=32",
                                               "test_after_training=false", "predict_after_training=false"], tmp_path)
    run.train(cfg)
    steps = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["train/loss_step"])["step"].tolist()
    assert steps == [4, 9, 14, 19, 24]  # 28 steps over four epochs of 7 (the count does not restart each epoch)


def test_a_plateau_schedule_steps_on_the_epochs_that_validate(tmp_path):
    cfg = compose_train_config("forecasting", [*TINY, "scheduler=plateau", "trainer.max_epochs=4",
                                               "trainer.check_val_every_n_epoch=2", "test_after_training=false",
                                               "predict_after_training=false"], tmp_path)
    assert run.train(cfg)["val/loss"] > 0  # Lightning refused a plateau step on an epoch without validation
    schedule = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["lr_schedulers"][0]
    assert schedule["last_epoch"] == 1  # stepped after epoch 1's validation; saved before epoch 3's step


class Clocked(pl.LightningModule):
    """Training steps of 20 ms and validation steps of 50 ms on a clock of its own (`now`), which the throughput
    callback reads in the test below: a busy machine does not move the times."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.samples_seen = 0
        self.now = 0.0

    def training_step(self, batch: torch.Tensor, index: int) -> torch.Tensor:
        self.now += 0.02
        self.samples_seen += len(batch)
        return (self.weight - batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, index: int) -> None:
        self.now += 0.05

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_time_leaves_out_validation_within_the_epoch(monkeypatch):
    module = Clocked()
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(perf_counter=lambda: module.now))
    data = torch.utils.data.DataLoader(torch.ones(8, 1), batch_size=1)
    trainer = pl.Trainer(max_epochs=2, val_check_interval=0.25, limit_val_batches=2, num_sanity_val_steps=0,
                         callbacks=[EpochThroughput()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, data, data)  # validation after every 2 training batches: 4 passes of 0.1 s an epoch
    assert float(trainer.callback_metrics["train/epoch_time_s"]) == pytest.approx(8 * 0.02)  # no validation pass
    assert float(trainer.callback_metrics["train/samples_per_s"]) == pytest.approx(8 / (8 * 0.02))  # this epoch's 8


@pytest.mark.parametrize(("patience", "stopped"), [(3, True), (4, False)])
def test_a_resumed_patience_reopens_a_stopped_run_only_above_its_epochs_without_improvement(patience, stopped):
    ended = PatientEarlyStopping(monitor="val/loss", patience=1)
    ended.wait_count, ended.stopped_epoch, ended.stopping_reason = 3, 5, EarlyStoppingReason.PATIENCE_EXHAUSTED
    resumed = PatientEarlyStopping(monitor="val/loss", patience=patience)
    resumed.load_state_dict(ended.state_dict())
    assert resumed.patience == patience and resumed.wait_count == 3
    assert (resumed.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED) == stopped
    assert resumed.stopped_epoch == (5 if stopped else 0)


def test_a_weight_average_that_would_never_move_is_refused():
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\), got 1.0"):
        EMAWeights(decay=1.0)  # the average would stay the untrained weights


class _WorseningModel(pl.LightningModule):
    """Four training steps an epoch; its validation metric is the epoch index, so only the first epoch is best."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/score", float(self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("epochs", "validate_every"), [(3, 1), (4, 2)])
def test_the_last_checkpoint_holds_the_last_step_when_the_best_is_earlier(epochs, validate_every, tmp_path):
    loader = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2)
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="val/score", mode="min",
                                     auto_insert_metric_name=False, save_last=True, save_top_k=1)
    trainer = pl.Trainer(max_epochs=epochs, check_val_every_n_epoch=validate_every, callbacks=[checkpoint],
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_WorseningModel(), loader, loader)
    first_validated, last_validated = validate_every - 1, epochs // validate_every * validate_every
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"best-{first_validated}.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4 * last_validated


class _ImprovingModel(_WorseningModel):
    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/score", -float(self.current_epoch))  # every epoch a new best


class _Killed(Exception):
    pass


def test_a_kill_before_the_last_checkpoint_leaves_the_best_it_names(tmp_path, monkeypatch):
    loader = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2)
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="val/score", mode="min",
                                     auto_insert_metric_name=False, save_last=True, save_top_k=1)
    save_last = RunFolderCheckpoint._save_last_checkpoint

    def killed_in_epoch_2(self, trainer, candidates):
        if trainer.current_epoch == 2:  # after the epoch's new best is saved
            raise _Killed
        save_last(self, trainer, candidates)

    monkeypatch.setattr(RunFolderCheckpoint, "_save_last_checkpoint", killed_in_epoch_2)
    trainer = pl.Trainer(max_epochs=4, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(_Killed):
        trainer.fit(_ImprovingModel(), loader, loader)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    state = next(value for value in last["callbacks"].values() if "best_model_path" in value)
    assert last["epoch"] == 1 and state["best_model_path"] == str(tmp_path / "best-1.ckpt")
    assert (tmp_path / "best-1.ckpt").is_file() and (tmp_path / "best-2.ckpt").is_file()


def test_a_runs_best_checkpoints_are_carried_into_a_new_folder_without_its_last(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    for name in ("best-1.ckpt", "best-2.ckpt", "last.ckpt"):
        (old / name).write_text(name)
    state = {"dirpath": str(old), "best_model_path": str(old / "best-2.ckpt"),
             "kth_best_model_path": str(old / "best-1.ckpt"), "last_model_path": str(old / "last.ckpt"),
             "best_k_models": {str(old / "best-1.ckpt"): 0.5, str(old / "best-2.ckpt"): 0.25}}
    carried = carried_best_state(state, str(new))
    assert sorted(p.name for p in new.iterdir()) == ["best-1.ckpt", "best-2.ckpt"]
    assert (new / "best-2.ckpt").read_text() == "best-2.ckpt" and (old / "best-2.ckpt").is_file()
    assert carried == {"dirpath": str(new), "best_model_path": str(new / "best-2.ckpt"),
                       "kth_best_model_path": str(new / "best-1.ckpt"), "last_model_path": "",
                       "best_k_models": {str(new / "best-1.ckpt"): 0.5, str(new / "best-2.ckpt"): 0.25}}
    (old / "best-1.ckpt").unlink()
    assert carried_best_state(state, str(tmp_path / "elsewhere")) is state  # one is gone: nothing carried
    assert not (tmp_path / "elsewhere").exists()


def test_a_resumed_best_that_is_gone_is_forgotten_with_a_warning(tmp_path, caplog):
    kept, worse, gone = (str(tmp_path / f"best-{epoch}.ckpt") for epoch in (1, 2, 3))
    for name in "best-1.ckpt", "best-2.ckpt":
        (tmp_path / name).write_bytes(b"")
    checkpoint = RunFolderCheckpoint(dirpath=tmp_path, monitor="val/score", mode="min", save_top_k=3)
    state = {"dirpath": str(tmp_path), "best_model_path": gone, "best_model_score": torch.tensor(0.1),
             "best_k_models": {gone: torch.tensor(0.1), worse: torch.tensor(0.5), kept: torch.tensor(0.3)},
             "kth_best_model_path": worse, "kth_value": torch.tensor(0.5), "last_model_path": ""}
    checkpoint._trainer = pl.Trainer(logger=False, enable_progress_bar=False)  # as `setup` sets it: one process
    checkpoint.load_state_dict(state)
    assert f"the best checkpoint this run recorded, {gone}, is gone" in caplog.text  # logged: train.log keeps it
    assert checkpoint.best_model_path == kept and float(checkpoint.best_model_score) == pytest.approx(0.3)
    assert list(checkpoint.best_k_models) == [worse, kept]  # the best of those left, by the monitor's mode


def test_metrics_csv_is_replaced_whole_when_a_column_appears(tmp_path, monkeypatch):
    import csv

    from gru_suite.loggers import AtomicCSVLogger

    logger = AtomicCSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"train/loss": 1.5}, step=0)
    logger.save()
    before = (tmp_path / "metrics.csv").read_text()
    logger.log_metrics({"val/loss": 2.5}, step=1)  # a new column: Lightning's writer empties the file to add it

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert (tmp_path / "metrics.csv").read_text() == before and not list(tmp_path.glob(".metrics*"))
    monkeypatch.undo()
    logger.save()
    import gru_suite.loggers

    monkeypatch.setattr(gru_suite.loggers, "atomic_path", killed)  # the same columns again: appended in place
    logger.log_metrics({"train/loss": 0.5}, step=2)
    logger.save()
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["step"].tolist() == [0, 1, 2] and rows["train/loss"].tolist()[0::2] == [1.5, 0.5]
    assert rows["val/loss"].tolist()[1] == 2.5


def test_perplexity_is_infinite_where_it_overflows_a_float():
    import math

    from gru_suite.perplexity import perplexity

    assert perplexity(2 * math.log(3.0), 2) == pytest.approx(3.0)
    assert perplexity(1e6, 10) == math.inf  # exp(100000): a diverged model's, math.exp's OverflowError before
    assert math.isnan(perplexity(float("nan"), 3))
