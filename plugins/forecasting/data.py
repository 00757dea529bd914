"""The forecasting DataModule: one CSV, split in time, scaled on train, windowed lazily."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gru_suite.data import SplitDataModule
from gru_suite.errors import UserError
from gru_suite.timeseries import Series, StandardScaler, WindowDataset, window_origins


@dataclass
class WindowSpec:
    lookback: int
    horizon: int
    target_columns: list[int]


SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
"""The splits each Lightning stage reads (prediction reads the last rows, whichever split they are in)."""


def check_split_windows(
    series: Series, bounds: list[tuple[int, int]], spec: WindowSpec, splits: tuple[str, ...]
) -> None:
    """Each of `splits` (of `SPLITS`, rows `bounds`) holds at least one window: `horizon` target rows after
    `lookback` input rows, which may reach back into the rows before the split; else a UserError saying how many
    rows it has and needs."""
    for name, (start, stop) in zip(SPLITS, bounds):
        if name in splits and not window_origins(start, stop, spec.lookback, spec.horizon):
            need = spec.horizon + max(0, spec.lookback - start)
            rows = f"rows {start + 1}-{stop} of {len(series.values)}" if stop > start else "no rows"
            if start < spec.lookback:
                before = f" from the series' start, of which {start} come before the split" if start else ""
                reach = f"lookback {spec.lookback} + horizon {spec.horizon}{before}"
            else:
                reach = f"horizon {spec.horizon}; its lookback reaches into the rows before it"
            raise UserError(f"{series.path}: the {name} split ({rows}) is too short: it needs at least {need} rows "
                            f"({reach}); change task.data.split, or give a longer series")


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
        if len(series.values) < spec.lookback:
            raise UserError(f"{series.path}: {len(series.values)} rows, fewer than the lookback of {spec.lookback} "
                            "rows a forecast starts from")
        self.series = series
        self.bounds = bounds
        self.scaler = scaler
        self.spec = spec
        values = torch.from_numpy(scaler.transform(series.values))
        self.sets.update({
            stage: WindowDataset(values, spec.lookback, spec.horizon, spec.target_columns,
                                 window_origins(start, stop, spec.lookback, spec.horizon))
            for stage, (start, stop) in zip(SPLITS, bounds)
        })
        end = len(values)
        first = max(bounds[-1][0], spec.lookback)
        count = (end - first) // predict_stride
        self.sets["predict"] = WindowDataset(
            values, spec.lookback, spec.horizon, spec.target_columns,
            range(end - count * predict_stride, end + 1, predict_stride),
        )

    def setup(self, stage: str) -> None:
        """Lightning's hook: the splits `stage` reads must hold a window (a trained model, evaluated or predicting
        on a new series, needs only its own)."""
        check_split_windows(self.series, self.bounds, self.spec, STAGE_SPLITS.get(stage, SPLITS))
        super().setup(stage)
