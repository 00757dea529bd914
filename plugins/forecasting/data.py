"""The forecasting DataModule: one CSV, split in time, scaled on train, windowed lazily."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gru_suite.data import SplitDataModule
from gru_suite.timeseries import Series, StandardScaler, WindowDataset, window_origins


@dataclass
class WindowSpec:
    lookback: int
    horizon: int
    target_columns: list[int]


class ForecastingData(SplitDataModule):
    """Train/val/test windows whose targets fall in each split; predict tiles the test
    split with forecasts `predict_stride` apart, ending with one from the last row into the future."""

    def __init__(
        self,
        series: Series,
        scaler: StandardScaler,
        bounds: list[tuple[int, int]],
        spec: WindowSpec,
        batch_size: int,
        predict_stride: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.series = series
        self.scaler = scaler
        self.spec = spec
        values = torch.from_numpy(scaler.transform(series.values))
        self.sets.update({
            stage: WindowDataset(values, spec.lookback, spec.horizon, spec.target_columns,
                                 window_origins(start, stop, spec.lookback, spec.horizon))
            for stage, (start, stop) in zip(("train", "val", "test"), bounds)
        })
        end = len(values)
        first = max(bounds[-1][0], spec.lookback)
        count = (end - first) // predict_stride
        self.sets["predict"] = WindowDataset(
            values, spec.lookback, spec.horizon, spec.target_columns,
            range(end - count * predict_stride, end + 1, predict_stride),
        )
