"""Forecast artifacts: a tidy CSV and a plot of history, truth and forecasts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from matplotlib import dates as mdates
from matplotlib.figure import Figure

from gru_suite.atomic import save_figure, write_csv
from gru_suite.timeseries import Series, plotted_times

if TYPE_CHECKING:
    from gru_suite_plugins.forecasting.data import ForecastingData

log = logging.getLogger(__name__)
MAX_PLOTTED_TARGETS = 4
WEEKDAYS_SEEN = 10
"""Daily rows on this many weekdays and no weekend day (two weeks) make a series of business days."""


def future_timestamps(series: Series, rows: np.ndarray) -> pd.Index:
    """Timestamps for row numbers, extrapolating past the end at the series' own frequency (the one pandas
    infers from the last 50 rows, else the median of their most common step forward, steps within 1% of each
    other counting as one: a missing row does not double it, a repeated timestamp does not make it zero, a clock's
    jitter does not move it; a day on weekdays alone is a business day, so a holiday does not put forecasts on
    weekends). Row numbers where the recent rows never move forward (newest first, say)."""
    stamps, n = series.timestamps, len(series.timestamps)
    if not isinstance(stamps, pd.DatetimeIndex) or n < 2:
        return pd.Index(rows)
    recent = stamps[-min(n, 50):]
    freq = pd.infer_freq(recent) if n >= 3 else None
    steps = pd.Series(recent).diff()
    offset = pd.tseries.frequencies.to_offset(freq) if freq else None
    if (offset is not None and offset.n < 0) or not (steps > pd.Timedelta(0)).any():
        return pd.Index(rows)
    step = offset if offset is not None else _most_common_step(steps[steps > pd.Timedelta(0)])
    if step == pd.Timedelta(days=1) and len(recent) >= WEEKDAYS_SEEN and (recent.dayofweek < 5).all():
        step = pd.offsets.BDay()
    extra = pd.date_range(stamps[-1], periods=max(int(rows.max()) - n + 2, 1), freq=step)[1:]
    return stamps.append(extra)[rows]


def _most_common_step(steps: pd.Series) -> pd.Timedelta:
    """The median of the most common of `steps` (positive), those within 1% of their median's length of each other
    counting as one (the shortest where two are as common)."""
    lengths = (steps / (steps.median() / 100)).round()
    return steps[lengths == lengths.mode().iloc[0]].median()


def forecast_frame(predictions: list[dict], datamodule: ForecastingData, targets: list[str]) -> pd.DataFrame:
    """One row per (forecast origin, step, target) predicted: origin, timestamp, step, target, actual, forecast."""
    forecast = torch.cat([p["forecast"] for p in predictions]).numpy()
    actual = torch.cat([p["actual"] for p in predictions]).numpy()
    if "origin" in predictions[0]:
        origins = torch.cat([p["origin"] for p in predictions]).numpy()
    else:  # batches of (inputs, targets) alone: the windows in order from the first
        origins = np.asarray(datamodule.sets["predict"].origins)[: len(forecast)]
    horizon = forecast.shape[1]
    o, h, t = np.meshgrid(origins, np.arange(horizon), np.arange(len(targets)), indexing="ij")
    rows = (o + h).ravel()
    series = datamodule.series
    return pd.DataFrame({
        "origin": future_timestamps(series, o.ravel() - 1),
        "timestamp": future_timestamps(series, rows),
        "step": h.ravel() + 1,
        "target": np.asarray(targets)[t.ravel()],
        "actual": actual.ravel(),
        "forecast": forecast.ravel(),
    })


def plot_forecasts(frame: pd.DataFrame, datamodule: ForecastingData, targets: list[str]) -> Figure:
    """The first `MAX_PLOTTED_TARGETS` targets, a panel each: the series from three horizons before the first
    forecast on (history, then truth), every forecast over the test period, and the last one, beyond the data
    (where prediction was not stopped before it: `trainer.limit_predict_batches`)."""
    shown = targets[:MAX_PLOTTED_TARGETS]
    if len(targets) > len(shown):
        log.info("forecast.png shows the first %d of the %d targets (forecast.csv holds them all): %s",
                 len(shown), len(targets), ", ".join(shown))
    fig = Figure(figsize=(11, 3.2 * len(shown)), layout="constrained")
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    series = datamodule.series
    first_origin = int(datamodule.sets["predict"].origins[0])
    horizon = int(frame["step"].max())
    history_start = max(0, first_origin - 3 * horizon)
    stamps, zone = plotted_times(future_timestamps(series, np.arange(history_start, len(series.values))))
    frame = frame.assign(timestamp=plotted_times(frame["timestamp"])[0])
    whole = len(frame) == len(datamodule.sets["predict"].origins) * horizon * len(targets)  # the last window too
    beyond = frame["origin"] == frame["origin"].iloc[-1] if whole else np.zeros(len(frame), bool)
    for ax, target in zip(axes, shown):
        column = series.columns.index(target)
        ax.plot(stamps, series.values[history_start:, column], color="0.35", lw=1, label="history / truth")
        own = frame["target"] == target
        if len(past := frame[own & ~beyond]):
            ax.plot(*_one_line_per_origin(past), lw=1, color="C0", label="forecasts over the test period")
        if whole:
            future = frame[own & beyond]
            ax.plot(future["timestamp"], future["forecast"], lw=1.6, color="C3", label="forecast beyond the data")
        if isinstance(stamps, pd.DatetimeIndex):  # dates that fit: '2024-03-31 2024-04-01' ran together
            locator = mdates.AutoDateLocator(tz=zone)  # ticks at the series' own times of day
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))
            ax.set_xlabel("" if zone is None else f"time ({zone})")
        ax.set_title(target)
        ax.set_ylabel(target)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Forecasts over the test period (blue) and beyond the data (red)" if whole else
                 "Forecasts over the test period (prediction stopped before the forecast beyond the data)")
    return fig


def _one_line_per_origin(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and forecasts of `rows` (grouped by origin, in order) as one line broken after each origin's last
    step (a gap, NaN): one artist however many origins (one each took 1.5 ms: minutes for tens of thousands)."""
    ends = np.flatnonzero(rows["origin"].ne(rows["origin"].shift(-1)).to_numpy()) + 1
    stamps = np.insert(rows["timestamp"].to_numpy(), ends, rows["timestamp"].to_numpy()[ends - 1])
    return stamps, np.insert(rows["forecast"].to_numpy(dtype=float), ends, np.nan)


def write_forecasts(
    predictions: list[dict], datamodule: ForecastingData, targets: list[str], out_dir: Path
) -> list[Path]:
    """Write `forecast.csv` and `forecast.png` into `out_dir`."""
    frame = forecast_frame(predictions, datamodule, targets)
    csv_path = write_csv(Path(out_dir) / "forecast.csv", frame)
    png_path = save_figure(plot_forecasts(frame, datamodule, targets), Path(out_dir) / "forecast.png", dpi=110)
    return [csv_path, png_path]
