"""The plugin kit: `check_task_plugin` passes on real tasks and catches broken ones;
the example third-party plugin trains through the real CLI."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gru_suite import registry, run
from gru_suite.atomic import write_text
from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError
from gru_suite.module import check_step_output
from gru_suite.data import batch_loader, length_bucket_loader
from gru_suite.task import StepOutput, TaskPlugin, wrong_task_settings
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite_plugins.forecasting.task import ForecastingTask

TINY_FORECASTING = [
    "backbone.hidden_size=16",
    "task.data.batch_size=32",
    "task.data.lookback=24",
    "task.data.horizon=6",
    "task.data.season=6",
]
TINY_EXAMPLE = ["backbone.hidden_size=16"]


@pytest.mark.parametrize("cell", ["gru", "lstm"])  # an LSTM backbone has no GRU gates to plot: that step is skipped
def test_forecasting_honours_the_contract(cell: str, tmp_path: Path) -> None:
    check_task_plugin("forecasting", [*TINY_FORECASTING, f"backbone.cell={cell}"], tmp_path)


def test_example_plugin_honours_the_contract(tmp_path: Path) -> None:
    pytest.importorskip("gru_suite_example")
    with warnings.catch_warnings(record=True) as caught:  # as a plugin author's test runner sees them
        warnings.simplefilter("always")
        check_task_plugin("running_mean", TINY_EXAMPLE, tmp_path)
    noise = [str(w.message) for w in caught if "LeafSpec" in str(w.message) or "logging interval" in str(w.message)]
    assert not noise, noise[:2]


def test_the_kit_catches_data_state_a_checkpoint_does_not_carry(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    example = pytest.importorskip("gru_suite_example.task")

    class UnsavedScaleTask(example.RunningMeanTask):
        """Scales its inputs by a factor drawn when its data is built, which its checkpoints do not hold."""

        def datamodule(self) -> Any:
            data = super().datamodule()
            scale = 1 + float(torch.rand(1))
            for dataset in data.sets.values():
                dataset.inputs = dataset.inputs * scale
            return data

    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: UnsavedScaleTask)
    with pytest.raises(AssertionError, match="checkpoint round trip: predictions of the model reloaded from"):
        check_task_plugin("running_mean", TINY_EXAMPLE, tmp_path)


def test_example_plugin_declares_its_numbers(tmp_path: Path) -> None:
    pytest.importorskip("gru_suite_example")
    cfg = compose_train_config("running_mean", ["task.data.length=0"], tmp_path)
    with pytest.raises(UserError, match=r"task.data.length must be at least 1, got 0"):
        run.build_task(cfg.task)


def test_example_plugin_trains_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("gru_suite_example")
    exe = shutil.which("gru-suite", path=str(Path(sys.executable).parent)) or shutil.which("gru-suite")
    assert exe is not None, "the gru-suite console script is not installed"
    result = subprocess.run(
        [exe, "task=running_mean", "trainer.max_epochs=2", "trainer.accelerator=cpu", *TINY_EXAMPLE,
         f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with (tmp_path / "metrics.csv").open(newline="") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val/loss")}
    assert epochs == {"0", "1"}
    assert (tmp_path / "predictions" / "running_mean.csv").is_file()
    gates = subprocess.run([str(Path(exe).with_name("gru-suite-gates")), f"ckpt_path={tmp_path}/checkpoints/last.ckpt",
                            f"hydra.run.dir={tmp_path / 'gates'}"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert gates.returncode == 0, gates.stderr[-3000:]
    assert ("sample 0 is sequence 0 of the prediction data (the task does not describe its sequences)"
            in (tmp_path / "gates" / "gates.log").read_text())  # what the plot shows, also without a description


class ConstantLossTask(ForecastingTask):
    """Its training loss ignores the model's output: nothing can be learnt."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        _, y, _ = batch
        frozen = F.mse_loss(torch.zeros_like(y), y) + 0.0 * sum(p.sum() for p in model.parameters())
        return StepOutput(frozen, out.batch_size, out.metrics)


class NanLossTask(ForecastingTask):
    """A training loss that is NaN (a log of zero, say): nothing trains."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss * float("nan"), out.batch_size, out.metrics) if stage == "train" else out


class NegativeStuckLossTask(ForecastingTask):
    """A loss below zero (as a density's negative log-likelihood may be) that training barely moves."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        stuck = -1.0 + 1e-9 * sum(p.sum() for p in model.parameters())
        return StepOutput(stuck, out.batch_size, out.metrics)


class ForgetfulTask(ForecastingTask):
    """Leaves its scaler and columns out of checkpoints: a checkpoint cannot rebuild it."""

    def state_dict(self) -> dict[str, Any]:
        return {}


class RefittingTask(ForecastingTask):
    """Fits an offset where its state lacks one, but leaves it out of checkpoints: a model restored for new data
    would fit another, which the same data cannot show."""

    def datamodule(self) -> Any:
        data = super().datamodule()
        self.state.setdefault("offset", 0.5)
        return data

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.state.items() if key != "offset"}


class CorruptPlotTask(ForecastingTask):
    """Writes a `.png` that is not a PNG."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        paths = super().write_predictions(predictions, datamodule, out_dir)
        for path in paths:
            if path.suffix == ".png":
                path.write_bytes(b"not a png")
        return paths


class UnnamedBackboneTask(ForecastingTask):
    """Wraps its model, so the backbone is no longer the model's `backbone` attribute."""

    def build_model(self, backbone: Any) -> torch.nn.Module:
        class Wrapper(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x)

        return Wrapper(super().build_model(backbone))


class TitleOnlyViewTask(ForecastingTask):
    """Describes a sequence by its title alone, not by a SequenceView."""

    def describe_sequence(self, datamodule: Any, batch: Any, sample: int) -> Any:
        return f"window {sample}"


BROKEN = {
    "constant-loss": (ConstantLossTask, "overfitting one batch: .*does not depend on the model's parameters"),
    "nan-loss": (NanLossTask, r"fast_dev_run training: DivergedRun: train/loss is nan in epoch 0"),
    "negative-stuck-loss": (NegativeStuckLossTask, r"overfitting one batch: the loss on one batch went from -1 to -1 "
                                                   r".*expected below -1\.5"),
    "forgetful-state": (ForgetfulTask, "checkpoint round trip: cannot rebuild the task from last.ckpt \\(KeyError"),
    "refitting-state": (RefittingTask, r"checkpoint round trip: the task restored from last\.ckpt fitted "
                                       r"state\['offset'\] again on the data it was given: state_dict\(\) leaves "
                                       r"it out"),
    "corrupt-png": (CorruptPlotTask, r"prediction artifacts: .*forecast\.png: does not start with the \.png"),
    "unnamed-backbone": (UnnamedBackboneTask, "instantiation: UserError: task 'forecasting': build_model\\(\\) must "
                                              "return a module whose `backbone` attribute is the backbone"),
    "title-only-view": (TitleOnlyViewTask, r"gate plots: UserError: task 'forecasting': describe_sequence\(\) returned "
                                           r"a str, not a gru_suite\.task\.SequenceView"),
}


@pytest.mark.parametrize(("task_cls", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_plugin_is_caught(
    task_cls: type, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: task_cls)
    with pytest.raises(AssertionError, match=message):
        check_task_plugin("forecasting", TINY_FORECASTING, tmp_path)


def test_an_entry_point_naming_no_task_class_fails_the_installation_check(tmp_path, monkeypatch) -> None:
    installed = registry.installed_tasks()
    wrong = registry.TaskEntry("forecasting", "builtins:object", "gru-suite")
    monkeypatch.setattr(registry, "installed_tasks", lambda: {**installed, "forecasting": wrong})
    with pytest.raises(AssertionError, match=r"^task 'forecasting', installation: UserError: .*names <class 'object'>, "
                                             r"which is not a subclass of gru_suite.task.TaskPlugin"):
        check_task_plugin("forecasting", TINY_FORECASTING, tmp_path)


class DetachedLossTask(ForecastingTask):
    """Returns its loss detached from the graph."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss.detach(), out.batch_size, out.metrics)


class FloatLossTask(ForecastingTask):
    """Returns its loss as a Python number (`.item()`)."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss.item(), out.batch_size, out.metrics)


class PerItemLossTask(ForecastingTask):
    """Returns one loss per window instead of their mean."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss.repeat(3), out.batch_size, out.metrics)


class ShapeAsBatchSizeTask(ForecastingTask):
    """Gives its targets' shape as the batch size."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, batch[1].shape, out.metrics)


class NoSamplesTask(ForecastingTask):
    """Says its batches hold no samples."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, 0, out.metrics)


class NegativeWeightTask(ForecastingTask):
    """Weighs its loss by less than nothing."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, out.batch_size, out.metrics, loss_weight=-1)


class LossMetricTask(ForecastingTask):
    """Reports its loss again as a metric named `loss`."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, out.batch_size, {**out.metrics, "loss": out.loss.detach()})


class VectorMetricTask(ForecastingTask):
    """Reports a metric of one value per window."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, out.batch_size, {**out.metrics, "errors": torch.ones(out.batch_size)})


class EpochLossTask(ForecastingTask):
    """Reports a metric of the whole pass named `loss`."""

    def epoch_end(self, stage: Any) -> dict[str, float]:
        return {"loss": 0.5}


class EpochStepNameTask(ForecastingTask):
    """Reports a metric of the whole pass under the name of one its steps return (forecasting's `mse`)."""

    def epoch_end(self, stage: Any) -> dict[str, float]:
        return {"mse": 0.5}


class EpochNothingTask(ForecastingTask):
    """Returns None from epoch_end instead of an empty dict."""

    def epoch_end(self, stage: Any) -> dict[str, float]:
        return None  # type: ignore[return-value]


class EpochVectorTask(ForecastingTask):
    """Reports a metric of the whole pass as one value per something."""

    def epoch_end(self, stage: Any) -> dict[str, float]:
        return {"errors": torch.ones(3)}  # type: ignore[dict-item]


class LoaderTask(ForecastingTask):
    """Returns a DataLoader where a LightningDataModule belongs."""

    def datamodule(self) -> Any:
        return super().datamodule().train_dataloader()


class FactoryBackboneTask(ForecastingTask):
    """Keeps the backbone factory it is given instead of the backbone it builds."""

    def build_model(self, backbone: Any) -> torch.nn.Module:
        model = torch.nn.Linear(1, 1)
        model.backbone = backbone
        return model


class OwnBackboneTask(ForecastingTask):
    """Builds a GRUBackbone of its own, which the backbone.* settings never reach, and leaves the factory unused."""

    def build_model(self, backbone: Any) -> torch.nn.Module:
        model = torch.nn.Linear(1, 1)
        model.backbone = GRUBackbone(1, 5)
        return model


class SilentWriterTask(ForecastingTask):
    """Writes its artifacts but does not return their paths."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        super().write_predictions(predictions, datamodule, out_dir)
        return None  # type: ignore[return-value]


class ClaimingWriterTask(ForecastingTask):
    """Returns the path of an artifact it never writes."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        return [out_dir / "forecast.csv"]


class RelativePathsWriterTask(ForecastingTask):
    """Writes its artifacts but returns their names alone."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        return [Path(path.name) for path in super().write_predictions(predictions, datamodule, out_dir)]


class OutsideWriterTask(ForecastingTask):
    """Writes one artifact beside the folder it is given, which would never move into the run folder."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        paths = super().write_predictions(predictions, datamodule, out_dir)
        return [*paths, write_text(out_dir.parent / "outside.txt", "lost")]


class UnpicklableStateTask(ForecastingTask):
    """Keeps a function in its state."""

    def datamodule(self) -> Any:
        data = super().datamodule()
        self.state["transform"] = lambda x: x
        return data


class NumpyStateTask(ForecastingTask):
    """Keeps a numpy number in its state, which pickles but which Lightning's weights-only loading refuses."""

    def datamodule(self) -> Any:
        data = super().datamodule()
        self.state["spread"] = np.float64(0.5)
        return data


class ValidatedNumpyStateTask(ForecastingTask):
    """Calibrates a numpy number into its state at the end of each validation pass, after the check before
    training: the first checkpoint saved after it holds what Lightning's weights-only loading refuses."""

    def epoch_end(self, stage: Any) -> dict[str, float]:
        if stage == "val":
            self.state["threshold"] = np.float64(0.5)
        return super().epoch_end(stage)


class NoStateTask(ForecastingTask):
    """Its `state_dict()` forgets its `return`."""

    def state_dict(self) -> Any:
        dict(self.state)


MISTAKES = {
    "detached-loss": (DetachedLossTask, "task 'forecasting': step(..., 'train') returned a loss without a gradient"),
    "float-loss": (FloatLossTask, "task 'forecasting': step(..., 'val') returned a loss of type float, not a "
                                  "tensor: return the loss tensor itself (not .item())"),
    "per-item-loss": (PerItemLossTask, "task 'forecasting': step(..., 'val') returned a loss of shape (3,): "
                                       "expected one number"),
    "shape-batch-size": (ShapeAsBatchSizeTask, "task 'forecasting': step(..., 'val') returned "
                                               "batch_size=torch.Size([32, "),
    "no-samples": (NoSamplesTask, "task 'forecasting': step(..., 'val') returned batch_size=0: expected a whole "
                                  "number of samples, at least 1"),
    "negative-loss-weight": (NegativeWeightTask, "task 'forecasting': step(..., 'val') returned loss_weight=-1: "
                                                 "expected a number, 0 or more"),
    "loss-metric": (LossMetricTask, "task 'forecasting': step(..., 'val') returned a metric named 'loss', which "
                                    "val/loss already is"),
    "vector-metric": (VectorMetricTask, "task 'forecasting': step(..., 'val') returned metric 'errors' as a tensor "
                                        "of shape (32,): expected one number per batch"),
    "epoch-loss": (EpochLossTask, "task 'forecasting': epoch_end('val') returned a metric named 'loss', which "
                                  "val/loss already is (the loss step() returns): rename one of them"),
    "epoch-step-name": (EpochStepNameTask, "task 'forecasting': epoch_end('val') returned a metric named 'mse', "
                                           "which val/mse already is (the epoch mean of a metric step() returns)"),
    "epoch-nothing": (EpochNothingTask, "task 'forecasting': epoch_end('val') returned a NoneType, not a dict of "
                                        "metric names to numbers ({} for none)"),
    "epoch-vector": (EpochVectorTask, "task 'forecasting': epoch_end('val') returned metric 'errors' as a tensor of "
                                      "shape (3,): expected one number, the metric of the whole pass"),
    "loader": (LoaderTask, "task 'forecasting': datamodule() returned a DataLoader, not a LightningDataModule"),
    "silent-writer": (SilentWriterTask, "task 'forecasting': write_predictions returned a NoneType; it must return "
                                        "the list of paths it wrote"),
    "unnamed-backbone": (UnnamedBackboneTask, "task 'forecasting': build_model() must return a module whose "
                                              "`backbone` attribute is the backbone built by the factory it is given "
                                              "(the backbone settings, the gate plots and checkpoints rely on it); its "
                                              "Wrapper has no `backbone` attribute"),
    "factory-backbone": (FactoryBackboneTask, "rely on it); its `backbone` is the factory itself: call it, "
                                              "backbone(input_size=F), and keep what it returns"),
    "own-backbone": (OwnBackboneTask, "rely on it); its `backbone` is a GRUBackbone the factory did not build, which "
                                      "the backbone.* settings do not reach: build it with backbone(input_size=F)"),
    "claiming-writer": (ClaimingWriterTask, "task 'forecasting': write_predictions returned 1 path(s) it did not "
                                            "write: "),
    "relative-paths-writer": (RelativePathsWriterTask, "task 'forecasting': write_predictions returned relative "
                                                       "path(s) forecast.csv, forecast.png: return the paths in the "
                                                       "folder it is given, out_dir / name"),
    "outside-writer": (OutsideWriterTask, "/outside.txt outside the folder it is given ("),
    "unpicklable-state": (UnpicklableStateTask, "task 'forecasting': state_dict()['transform'] cannot go into a "
                                                "checkpoint (AttributeError: Can't pickle local object"),
    "numpy-state": (NumpyStateTask, "task 'forecasting': state_dict()['spread'] cannot go into a checkpoint (a "
                                    "weights-only load refuses its numpy._core.multiarray.scalar)"),
    "numpy-state-after-validation": (ValidatedNumpyStateTask, "task 'forecasting': state_dict()['threshold'] cannot "
                                                              "go into a checkpoint (a weights-only load refuses its "
                                                              "numpy._core.multiarray.scalar)"),
    "no-state": (NoStateTask, "task 'forecasting': state_dict() returned a NoneType, not a dict of the task's "
                              "data-dependent state (return {} for none)"),
}


@pytest.mark.parametrize(("task_cls", "message"), MISTAKES.values(), ids=MISTAKES.keys())
def test_a_plugins_mistake_is_one_line_naming_it_before_or_at_the_first_batch(
    task_cls: type, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: task_cls)
    cfg = compose_train_config("forecasting", [*TINY_FORECASTING, "trainer.max_epochs=1", "threads=1"], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        run.train(cfg)


class ResolvingWriterTask(ForecastingTask):
    """Returns its artifacts' paths through the real folders."""

    def write_predictions(self, predictions: list[Any], datamodule: Any, out_dir: Path) -> list[Path]:
        return [path.resolve() for path in super().write_predictions(predictions, datamodule, out_dir)]


def test_artifacts_named_through_the_real_folder_of_a_linked_run_folder_move_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")  # outputs/ on another volume, say
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: ResolvingWriterTask)
    run.train(compose_train_config("forecasting", [*TINY_FORECASTING, "trainer.max_epochs=1", "threads=1"],
                                   tmp_path / "linked"))
    assert sorted(path.name for path in (tmp_path / "real" / "predictions").iterdir()) == ["forecast.csv",
                                                                                         "forecast.png"]


class DivergingTask(ForecastingTask):
    """Its training loss turns NaN from its third training batch on."""

    batches = 0

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        if stage == "train":
            type(self).batches += 1
            if type(self).batches > 2:
                return StepOutput(out.loss * float("nan"), out.batch_size, out.metrics)
        return out


@pytest.mark.parametrize("overrides, finite_batches, said, epochs", [
    ([], 2, "1: training diverged and stops here (testing and prediction use the best checkpoint so far, if its "
            "weights are finite)", 2),
    (["++trainer.min_epochs=3"], 2, "1: training diverged and stops after trainer.min_epochs=3 (testing", 3),
    (["task.monitor=null"], 2, "1: training diverged and stops here (the last epoch's weights, which testing would "
                               "use, are lost: set task.monitor to keep the best)", 2),
    ([], 0, "0: training diverged and stops here (testing and prediction use the best checkpoint so far, if its "
            "weights are finite)", 1),
])
def test_an_epoch_whose_loss_is_nan_stops_training_and_says_which_weights_are_tested(
        overrides: list[str], finite_batches: int, said: str, epochs: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: DivergingTask)
    DivergingTask.batches = 2 - finite_batches
    cfg = compose_train_config("forecasting", [*TINY_FORECASTING, "trainer.max_epochs=5", "threads=1", "logger=csv",
                                               "++trainer.limit_train_batches=2", *overrides], tmp_path)
    tested = "monitor=null" not in str(overrides) and finite_batches
    with caplog.at_level(logging.WARNING), contextlib.ExitStack() as refusal:
        if not tested:  # the model left is the diverged one: no NaN test metrics, no empty artifacts, exit code 2
            refusal.enter_context(pytest.raises(UserError, match=re.escape(
                f"train/loss is nan in epoch {epochs - 1}: training diverged, and the weights to test "
                f"(best-00{epochs - 1}.ckpt's) are not finite, so nothing is tested or predicted; its checkpoints "
                f"stay in {tmp_path / 'checkpoints'}; lower optimizer.lr, or trainer.gradient_clip_val (now 1.0)")))
        metrics = run.train(cfg)
    assert caplog.text.count("train/loss is nan in epoch " + said) == 1
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [row["epoch"] for row in rows if row["train/loss"]] == [str(e) for e in range(epochs)]  # not the five
    assert all(row["train/epoch_time_s"] for row in rows if row["train/loss"])  # no row of an epoch that never ran
    assert len([row for row in rows if row["train/epoch_time_s"]]) == epochs
    assert (tmp_path / "predictions").exists() == bool(tested)
    if tested:
        assert np.isfinite(metrics["test/mse"])  # epoch 0's weights, the best
    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert written["train/loss"] is None and "test/mse" in written if tested else "test/mse" not in written


class NoGradBackboneTask(ForecastingTask):
    """Runs its backbone under torch.no_grad(): only the head trains."""

    def build_model(self, backbone: Any) -> Any:
        model = super().build_model(backbone)
        forward = model.backbone.forward

        def without_gradient(*args: Any, **kwargs: Any) -> Any:
            with torch.no_grad():
                return forward(*args, **kwargs)

        model.backbone.forward = without_gradient
        return model


@pytest.mark.parametrize("task_cls, warned", [(NoGradBackboneTask, True), (ForecastingTask, False)])
def test_a_backbone_that_gets_no_gradient_is_a_warning(task_cls: type, warned: bool, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: task_cls)
    cfg = compose_train_config("forecasting", [*TINY_FORECASTING, "trainer.max_epochs=1", "threads=1",
                                               "test_after_training=false", "predict_after_training=false"], tmp_path)
    with caplog.at_level(logging.WARNING):
        run.train(cfg)  # the head still trains, so the loss has a gradient: no error
    message = "task 'forecasting': the first batch's loss gave the backbone no gradient, so its weights will not train"
    assert (message in caplog.text) == warned


class FakeInstall:
    """A pip install of a distribution, as `importlib.metadata` sees it."""

    def __init__(self, location: Path, editable: bool, files: list[str] = ()) -> None:
        self.location, self.editable, self.version = location, editable, "1.0"
        self.files = [importlib.metadata.PackagePath(file) for file in files]

    def read_text(self, name: str) -> str | None:
        if name == "direct_url.json":
            return '{"dir_info": {"editable": %s}}' % str(self.editable).lower()
        return "RECORD lines" if name == "RECORD" else None

    def locate_file(self, path: str) -> Path:
        return self.location / path


@pytest.mark.parametrize("editable, warned", [(False, True), (True, False)])
def test_a_check_that_imports_the_source_instead_of_the_install_warns(
    editable: bool, warned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    from gru_suite.testing import imported_copy_elsewhere

    install = FakeInstall(tmp_path / "site-packages", editable)  # the module itself comes from this repository
    entry = registry.get_task("forecasting")  # found before the installs are faked (not from a warm cache)
    monkeypatch.setattr(importlib.metadata, "distributions", lambda name: [install])
    message = imported_copy_elsewhere(entry)
    assert (message is not None) == warned
    if warned:
        assert "is imported from" in message and "not from the installed gru-suite" in message


@pytest.mark.parametrize("editable, files, refused", [
    (False, ["gru_suite_plugins/forecasting/task.py"], True),
    (False, ["gru_suite_plugins/forecasting/task.py", "gru_suite_plugins/forecasting/conf/task/forecasting.yaml"],
     False),
    (True, [], False)])  # an editable install is the source folder, config and all
def test_an_installed_wheel_without_its_task_config_fails_the_check(
    editable: bool, files: list[str], refused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gru_suite.testing import _check_installed_config

    entry = registry.get_task("forecasting")
    monkeypatch.setattr(importlib.metadata, "distributions", lambda name: [FakeInstall(tmp_path, editable, files)])
    if not refused:
        _check_installed_config(entry)
        return
    with pytest.raises(AssertionError, match=re.escape("the installed gru-suite 1.0 lacks conf/task/forecasting.yaml: "
                                                       "the wheel was built without its package data")):
        _check_installed_config(entry)


class Misdeclared(ForecastingTask):
    numbers = (("data.lookback", "int", 1), ("model.head_dropout", float, 1, 0))
    choices = ("model.normalize", ("none", "last"))
    required = "data.path"
    trained_settings = "data.lookback"
    path_settings = ("data.path", 3)


class Abstract(TaskPlugin):
    def datamodule(self) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize(("target", "message"), [
    ("builtins:int", "names <class 'int'>, which is not a subclass of gru_suite.task.TaskPlugin"),
    (f"{__name__}:Abstract", "does not define build_model, predict_step, step, write_predictions, which every "
                             "TaskPlugin must"),
    (f"{__name__}:Misdeclared", "declares settings it cannot check: numbers entry ('data.lookback', 'int', 1): "
                                "expected (key, int or float, least[, most[, whether most is excluded]]), least <= "
                                "most; numbers entry ('model.head_dropout', <class 'float'>, 1, 0): expected"),
    (f"{__name__}:Misdeclared", "; choices is one entry, not a tuple of them: write (('model.normalize', ('none', "
                                "'last')),) (the trailing comma); required must be a tuple of entries, each a key; "
                                "got 'data.path'; trained_settings must be a tuple of entries, each a key or a block "
                                "(data.vocab, tokenizer); got 'data.lookback'; path_settings entry 3: expected a key"),
])
def test_an_entry_point_naming_a_class_the_core_cannot_build_is_one_line(target, message):
    entry = registry.TaskEntry("mine", target, "my-plugin")
    with pytest.raises(UserError, match=f"^task 'mine' from package 'my-plugin' \\({re.escape(target)}\\) .*"
                                        f"{re.escape(message)}"):
        entry.load()



class MisspeltSetting(ForecastingTask):
    numbers = (*ForecastingTask.numbers, ("data.lookbak", int, 1))
    trained_settings = ("data.seasn",)
    path_settings = ("data.pth",)


class BlockPaths(ForecastingTask):
    path_settings = ("data",)  # a block, as trained_settings may name one


def test_a_path_setting_that_names_a_block_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: BlockPaths)
    with pytest.raises(AssertionError, match=r"BlockPaths.path_settings names block\(s\), not paths, so nothing in "
                                             r"them is made absolute: task.data \(name each path key in them\)$"):
        check_task_plugin("forecasting", tmp_path=tmp_path)


class OwnInitTask(ForecastingTask):
    """Sets its config and state itself instead of calling super().__init__."""

    def __init__(self, cfg: Any, state: Any = None) -> None:
        self.cfg, self.state = cfg, dict(state or {})


def test_a_task_that_skips_the_base_init_still_gets_its_paths_made_absolute(tmp_path, monkeypatch):
    shutil.copy(Path(__file__).parent.parent / "data" / "forecasting" / "demo_load.csv", tmp_path / "mine.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: OwnInitTask)
    cfg = compose_train_config("forecasting", ["task.data.path=mine.csv"], tmp_path / "run")
    assert run.build_task(cfg.task).cfg.data.path == str(tmp_path / "mine.csv")


def test_a_declared_setting_the_config_lacks_is_caught_as_never_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: MisspeltSetting)
    with pytest.raises(AssertionError, match=r"config composition: MisspeltSetting declares settings its config lacks "
                                             r"\(so they are never checked; misspelt\?\): task\.data\.lookbak, "
                                             r"task\.data\.seasn, task\.data\.pth$"):
        check_task_plugin("forecasting", tmp_path=tmp_path)


def test_a_task_config_key_that_a_dictconfig_method_shadows_is_a_warning(tmp_path, monkeypatch):
    import yaml

    from gru_suite.testing import _check_task_config_file, keys_named_like_methods

    found = keys_named_like_methods({"data": {"items": 3, "size": 2}, "keys": 1, "model": None, "all": [{"pop": 1}]})
    assert found == ["data.items", "keys", "all.0.pop"]
    shipped = yaml.safe_load((registry.get_task("forecasting").config_dir() / "task" / "forecasting.yaml").read_text())
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "forecasting.yaml").write_text(yaml.safe_dump({**shipped, "data": {**shipped["data"],
                                                                                           "items": 512}}))
    monkeypatch.setattr(registry.TaskEntry, "config_dir", lambda self: tmp_path)
    with pytest.warns(UserWarning, match=r"forecasting.yaml: data.items named like DictConfig methods: "
                                         r"`cfg.data.items` reads the method, not the setting"):
        _check_task_config_file("forecasting")


class ListDeclared(ForecastingTask):
    numbers = [*ForecastingTask.numbers, ("model.head_dropout", float, 0, 1, True)]
    choices = [("model.normalize", frozenset({"none", "last"}))]
    required = ["data.path"]


def test_declarations_in_lists_or_sets_load_as_tuples_do():
    assert registry.TaskEntry("mine", f"{__name__}:ListDeclared", "my-plugin").load() is ListDeclared


class OwnNumbersOnly(TaskPlugin):
    numbers = (("data.lookback", int, 1),)  # without *TaskPlugin.numbers


def test_the_cores_own_task_numbers_are_checked_when_a_plugin_leaves_them_out():
    cfg = OmegaConf.create({"name": "forecasting", "monitor": "val/loss", "monitor_mode": "min",
                            "data": {"lookback": 3, "batch_size": 0}})
    assert OwnNumbersOnly.wrong_settings(cfg) == ["task.data.batch_size must be at least 1, got 0"]


class HeadsAtMostSize(TaskPlugin):
    numbers = (*TaskPlugin.numbers, ("model.heads", int, 1), ("model.size", int, 1))

    @classmethod
    def wrong_settings(cls, cfg):  # the README's example, which compares values before they are checked
        return super().wrong_settings(cfg) + ([] if cfg.model.heads <= cfg.model.size else [
            f"task.model.heads must be at most task.model.size ({cfg.model.size}), got {cfg.model.heads}"])


def test_a_plugins_check_that_trips_over_a_value_the_core_names_gives_the_cores_messages():
    cfg = OmegaConf.create({"name": "forecasting", "monitor": "val/loss", "monitor_mode": "min",
                            "data": {"batch_size": 4, "num_workers": 0}, "model": {"heads": "abc", "size": 8}})
    assert wrong_task_settings(HeadsAtMostSize, cfg) == ["task.model.heads must be an integer, got 'abc'"]
    cfg.model.heads = 9
    assert wrong_task_settings(HeadsAtMostSize, cfg) == ["task.model.heads must be at most task.model.size (8), got 9"]
    cfg.model.size = None  # off for `numbers`, so the core names nothing: the plugin's bug, which goes on
    with pytest.raises(TypeError, match="'<=' not supported"):
        wrong_task_settings(HeadsAtMostSize, cfg)


@pytest.mark.parametrize("returned, kind", [("task.data.x is wrong", "str"), (None, "NoneType"),
                                            (["fine", 3], "a list holding a int")])
def test_wrong_settings_that_are_not_a_list_of_messages_are_named(returned, kind):
    class Sloppy(TaskPlugin):
        @classmethod
        def wrong_settings(cls, cfg):
            return returned

    with pytest.raises(UserError, match=re.escape(f"task 'mine': wrong_settings() returned {kind}, not a list of "
                                                  "messages (str)")):
        wrong_task_settings(Sloppy, OmegaConf.create({"name": "mine"}))


def test_a_dataset_that_cannot_gather_a_batch_is_named_before_a_step_gets_single_items():
    from torch.utils.data import TensorDataset

    for make in (lambda data: batch_loader(data, 2, shuffle=True),
                 lambda data: length_bucket_loader(data, [1, 2], 2, shuffle=False)):
        with pytest.raises(UserError, match=r"^TensorDataset has no __getitems__\(indices\): the suite's loaders hand"):
            make(TensorDataset(torch.zeros(2)))


def test_a_negative_loss_weight_is_refused_as_a_tensor_too():
    out = StepOutput(torch.tensor(1.0), 2, {}, loss_weight=torch.tensor(-1.0))
    with pytest.raises(UserError, match=re.escape("task 'mine': step(..., 'val') returned loss_weight=tensor(-1.): "
                                                  "expected a number, 0 or more")):
        check_step_output(out, "mine", "val")
    assert check_step_output(StepOutput(torch.tensor(1.0), 2, {}, loss_weight=torch.tensor(0.0)), "mine", "val")


class NoSuperInit(ForecastingTask):
    def __init__(self, cfg: Any, state: Any = None) -> None:
        self.lookback = cfg.data.lookback  # and nothing else


def test_a_task_that_skips_the_base_init_is_named(monkeypatch):
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: NoSuperInit)
    cfg = OmegaConf.create({"name": "forecasting", "data": {"lookback": 3}})
    with pytest.raises(UserError, match=re.escape("task 'forecasting': NoSuperInit.__init__ must call "
                                                  "super().__init__(cfg, state), which checks the settings")):
        run.build_task(cfg)


class WeightlessTask(ForecastingTask):
    """Weighs its training loss by nothing: the epoch's mean loss is 0/0, NaN, while the weights stay finite."""

    def step(self, model: Any, batch: Any, stage: Any) -> StepOutput:
        out = super().step(model, batch, stage)
        return StepOutput(out.loss, out.batch_size, out.metrics, loss_weight=0 if stage == "train" else None)


def test_a_nan_epoch_mean_over_finite_weights_is_still_tested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.TaskEntry, "load", lambda self: WeightlessTask)
    cfg = compose_train_config("forecasting", [*TINY_FORECASTING, "trainer.max_epochs=2", "threads=1", "logger=none",
                                               "++trainer.limit_train_batches=2", "predict_after_training=false"],
                               tmp_path)
    assert np.isfinite(run.train(cfg)["test/mse"])


def test_a_diverged_run_whose_best_checkpoint_is_remote_is_judged_by_its_score(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gru_suite.errors import DivergedRun
    from gru_suite.run import diverged_model

    def trainer(score: float) -> Any:
        kept = SimpleNamespace(best_model_score=torch.tensor(score), dirpath="memory://ckpts")
        return SimpleNamespace(callback_metrics={"train/loss": torch.tensor(float("nan"))}, current_epoch=1,
                               checkpoint_callback=kept, is_global_zero=True, gradient_clip_val=1.0)

    module, best = SimpleNamespace(diverged_in=None), "memory://ckpts/best-000.ckpt"  # not read: not on this machine
    error = diverged_model(trainer(float("inf")), module, best, None)  # Lightning's NaN
    assert isinstance(error, DivergedRun) and ("epoch 0: training diverged, and the weights to test (best-000.ckpt's) "
                                               "are not finite, so nothing is tested") in str(error)
    assert diverged_model(trainer(0.5), module, best, None) is None  # an epoch before it kept a model
