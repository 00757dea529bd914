"""The forecasting DataModule: one CSV, split in time, scaled on train, windowed lazily."""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from gru_suite.timeseries import Series, StandardScaler, WindowDataset, batch_loader, window_origins


@dataclass
class WindowSpec:
    lookback: int
    horizon: int
    target_columns: list[int]


class ForecastingData(pl.LightningDataModule):
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
        super().__init__()
        self.series = series
        self.scaler = scaler
        self.spec = spec
        self.batch_size = batch_size
        self.num_workers = num_workers
        values = torch.from_numpy(scaler.transform(series.values))
        self.sets = {
            stage: WindowDataset(values, spec.lookback, spec.horizon, spec.target_columns,
                                 window_origins(start, stop, spec.lookback, spec.horizon))
            for stage, (start, stop) in zip(("train", "val", "test"), bounds)
        }
        end = len(values)
        first = max(bounds[-1][0], spec.lookback)
        count = (end - first) // predict_stride
        self.sets["predict"] = WindowDataset(
            values, spec.lookback, spec.horizon, spec.target_columns,
            range(end - count * predict_stride, end + 1, predict_stride),
        )

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader:
        return batch_loader(self.sets[stage], self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
