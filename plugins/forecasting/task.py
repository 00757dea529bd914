"""Time-series forecasting: a GRU reads a lookback window and predicts the next `horizon` steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from gru_suite.config import name_list
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory, SequenceView, Stage, StepOutput, TaskPlugin
from gru_suite.timeseries import (
    MISSING_POLICIES,
    StandardScaler,
    WindowBatch,
    chronological_split,
    read_series_csv,
    wrong_split,
)
from gru_suite_plugins.forecasting.data import SPLITS, ForecastingData, WindowSpec, check_split_windows
from gru_suite_plugins.forecasting.model import NORMALIZE, Forecaster
from gru_suite_plugins.forecasting.writer import write_forecasts

log = logging.getLogger(__name__)


class ForecastingTask(TaskPlugin):
    """Forecast one or more columns of a CSV from a window of past values.

    Logs MSE/MAE on scaled values and in original units, beside a naive (last
    value) and a seasonal-naive baseline computed on the same windows.
    """

    # no `skip`: a forecast's windows would join the rows either side of a gap as if they were consecutive
    choices = (("model.normalize", NORMALIZE), ("data.missing", tuple(p for p in MISSING_POLICIES if p != "skip")))
    path_settings = ("data.path",)
    # how the model reads a window: none has weights of its own, so an override would silently change its outputs
    trained_settings = ("data.lookback", "model.segment_length", "model.channel_independent", "model.normalize")
    required = ("data.path", "data.lookback", "data.horizon", "model.segment_length", "model.head_dropout")

    @classmethod
    def wrong_settings(cls, cfg: DictConfig) -> list[str]:
        """The declared settings, and `data.split`'s shape (checked again against the series' length when read)."""
        return super().wrong_settings(cfg) + [wrong for wrong in [wrong_split(cfg.data.get("split"))] if wrong]
    numbers = (*TaskPlugin.numbers, ("data.lookback", int, 1), ("data.horizon", int, 1),
               ("data.predict_stride", int, 1), ("data.season", int, 1), ("model.segment_length", int, 1),
               ("model.head_dropout", float, 0, 1, True))

    def datamodule(self) -> ForecastingData:
        data = self.cfg.data
        targets = name_list(data.targets, "task.data.targets")
        if not targets:
            raise UserError("task.data.targets must name at least one column, e.g. task.data.targets=[load]")
        features = name_list(data.features, "task.data.features") if data.get("features") else targets
        asked = {"task.data.targets": targets, "task.data.features": features if data.get("features") else []}
        columns = list(dict.fromkeys([*features, *targets]))
        named_by = {name: " and ".join(key for key, names in asked.items() if name in names) for name in columns}
        series = read_series_csv(data.path, columns, data.get("time_column"), data.get("missing", "error"),
                                 data.get("time_unit"), named_by, data.get("time_format"))
        missing_targets = [t for t in targets if t not in features]
        if missing_targets:
            raise UserError(f"task.data.targets {missing_targets} must also be in task.data.features {features}")
        try:
            bounds = chronological_split(len(series.values), data.split)
        except UserError as err:
            if "scaler" not in self.state:
                raise
            raise UserError(f"{series.path}: {err}; a trained model needs no training rows: "
                            "task.data.split=[0.0,0.0,1.0] makes the whole series its test split") from err
        self.target_columns = series.column_indices(targets)
        if (season := data.get("season")) and season > data.lookback:
            log.warning("task.data.season=%d is longer than the lookback of %d rows a forecast sees: no seasonal-naive "
                        "baseline (raise task.data.lookback, or set task.data.season=null)", season, data.lookback)
        spec = WindowSpec(data.lookback, data.horizon, self.target_columns)
        if "scaler" not in self.state:  # training: every split, before any work (a restored model: those it reads)
            check_split_windows(series, bounds, spec, SPLITS)
            train_start, train_stop = bounds[0]
            where = f"{series.path}: the training split (rows {train_start + 1}-{train_stop})"
            self.state.update(
                scaler=StandardScaler.fit(series.values[train_start:train_stop], where, series.columns).state_dict(),
                features=features,
                targets=targets,
            )
        elif self.state["features"] != features:
            raise UserError(f"the model was trained on columns {self.state['features']}, not {features} "
                            "(task.data.features)")
        elif self.state["targets"] != targets:
            raise UserError(f"the model was trained to forecast {self.state['targets']}, not {targets} "
                            "(task.data.targets)")
        self.scaler = StandardScaler.from_state(self.state["scaler"])
        return ForecastingData(
            series, self.scaler, bounds, spec, data.batch_size,
            data.get("predict_stride") or data.horizon, data.get("num_workers", 0),
        )

    def build_model(self, backbone: BackboneFactory) -> Forecaster:
        features, targets = self.state["features"], self.state["targets"]
        model_cfg = self.cfg.model
        return Forecaster(
            backbone,
            n_features=len(features),
            target_columns=[features.index(t) for t in targets],
            lookback=self.cfg.data.lookback,
            horizon=self.cfg.data.horizon,
            segment_length=model_cfg.segment_length,
            embed_size=model_cfg.get("embed_size"),
            channel_independent=model_cfg.channel_independent,
            normalize=model_cfg.normalize,
            head_dropout=model_cfg.head_dropout,
        )

    def step(self, model: Forecaster, batch: WindowBatch, stage: Stage) -> StepOutput:
        x, y = batch[:2]  # a WindowBatch, or (inputs, targets) alone
        forecast = model(x)
        loss = F.mse_loss(forecast, y)
        if stage == "train":
            return StepOutput(loss, len(x))
        metrics: dict[str, Tensor] = {}
        y_original = self.scaler.inverse(y, self.target_columns)
        for name, pred in (("", forecast), ("naive_", self._naive(x)), ("seasonal_naive_", self._seasonal_naive(x))):
            if pred is None:
                continue
            metrics |= _errors(pred, y, name)
            metrics |= _errors(self.scaler.inverse(pred, self.target_columns), y_original, name, "_original")
        return StepOutput(loss, len(x), metrics)

    def _naive(self, x: Tensor) -> Tensor:
        return x[:, -1:, self.target_columns].expand(-1, self.cfg.data.horizon, -1)

    def _seasonal_naive(self, x: Tensor) -> Tensor | None:
        season, lookback = self.cfg.data.get("season"), self.cfg.data.lookback
        if not season or season > lookback:
            return None
        steps = torch.arange(self.cfg.data.horizon, device=x.device)
        index = lookback - season + steps % season
        return x[:, index][:, :, self.target_columns]

    def predict_step(self, model: Forecaster, batch: WindowBatch) -> dict[str, Tensor]:
        x, y = batch[:2]  # a WindowBatch, or (inputs, targets) alone: the windows in order from the first
        origins = getattr(batch, "origins", None)
        return {
            **({"origin": origins.cpu()} if origins is not None else {}),
            "forecast": self.scaler.inverse(model(x), self.target_columns).float().cpu(),
            "actual": self.scaler.inverse(y, self.target_columns).float().cpu(),
        }

    def describe_sequence(self, datamodule: ForecastingData, batch: WindowBatch, sample: int) -> SequenceView:
        """The file, the window's rows (and its column, for a channel-independent model, whose GRU reads each
        column of a window as a sequence of its own), and each GRU step's time: its segment's last row's."""
        series, lookback = datamodule.series, datamodule.spec.lookback
        model = self.cfg.model
        channels = len(series.columns) if model.channel_independent else 1
        window, channel = divmod(sample, channels)
        origins = getattr(batch, "origins", None)  # a WindowBatch's; (x, y) alone: the first batch's windows
        origin = int(origins[window]) if origins is not None else datamodule.sets["predict"].origins[window]
        segment = int(model.segment_length)
        column = f", column {series.columns[channel]!r}" if model.channel_independent else ""
        last = series.row_names([origin - 1])[0]
        return SequenceView(f"{series.path}: the {lookback} rows up to {last}{column}",
                            series.row_names(range(origin - lookback + segment - 1, origin, segment)))

    def write_predictions(self, predictions: list[Any], datamodule: ForecastingData, out_dir: Path) -> list[Path]:
        return write_forecasts(predictions, datamodule, self.state["targets"], out_dir)


def _errors(pred: Tensor, target: Tensor, prefix: str, suffix: str = "") -> dict[str, Tensor]:
    return {
        f"{prefix}mse{suffix}": F.mse_loss(pred, target),
        f"{prefix}mae{suffix}": F.l1_loss(pred, target),
    }
