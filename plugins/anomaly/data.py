"""Anomaly data: one CSV or a folder of CSVs, optional labels, per-series probationary scaling."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gru_suite.data import SplitDataModule
from gru_suite.errors import UserError, first_named, not_a_file
from gru_suite.files import files_below
from gru_suite.timeseries import (Calendar, Series, StandardScaler, data_line, dates_as_text, read_csv_frame,
                                  series_from_frame)
from gru_suite_plugins.anomaly.scoring import labels_from_windows, load_nab_windows, windows_from_labels

log = logging.getLogger(__name__)

Window = tuple[int, int]
"""An anomaly window as inclusive row indices."""


@dataclass
class StreamData:
    """One series to score: raw values, its scaler (fitted on its probationary part), labels and
    calendar covariates (T, C) of its timestamps (C may be 0)."""

    name: str
    series: Series
    probation: int
    scaler: StandardScaler
    windows: list[Window] | None
    covariates: np.ndarray

    @property
    def inputs(self) -> Tensor:
        """What the detector reads: the scaled values, then the covariates (T, F + C)."""
        return torch.from_numpy(detector_inputs(self.scaler, self.series.values, self.covariates))

    def labels(self) -> np.ndarray | None:
        """Per-row booleans: inside an anomaly window."""
        return None if self.windows is None else labels_from_windows(self.windows, len(self.series.values))


INPUT_LIMIT = 1e6
"""Scaled values are clipped to this many standard deviations: one further out is an anomaly whatever its size,
and its square would overflow the detector's 32-bit floats (NAB's largest is about 180)."""


def detector_inputs(scaler: StandardScaler, values: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """What a detector reads for rows of raw `values` (T, F): scaled (clipped to +-`INPUT_LIMIT`), then their
    covariates (T, C)."""
    return np.concatenate([np.clip(scaler.transform(values), -INPUT_LIMIT, INPUT_LIMIT), covariates], axis=1)


WINDOW_FILES = ("windows.json", "combined_windows.json")
"""Files of anomaly windows that `windows_path: auto` looks for in the data's folder."""
NAB_WINDOWS = Path("labels", "combined_windows.json")
"""Where NAB's repository keeps the windows of the series under its `data` folder, relative to that folder's parent."""


def windows_beside(root: Path) -> Path | None:
    """The windows file `windows_path: auto` reads for data under `root`: one of `WINDOW_FILES` in it, else, in
    NAB's layout, the `NAB_WINDOWS` beside the `data` folder that holds it; None where there is neither."""
    if found := next((path for name in WINDOW_FILES if (path := root / name).is_file()), None):
        return found
    return next((nab for folder in (root.absolute(), *root.absolute().parents)
                 if folder.name == "data" and (nab := folder.parent / NAB_WINDOWS).is_file()), None)


def csv_files(path: str | Path) -> tuple[Path, list[Path]]:
    """The data root and its CSV files (a single file, or every .csv and .csv.gz below a folder, in any case)."""
    root = Path(path)
    if root.is_file():
        return root.parent, [root]
    if not root.is_dir():
        raise UserError(f"data path not found: {root}")
    files = files_below(root, {".csv", ".csv.gz"})
    if not files:
        raise UserError(f"{root}: no .csv or .csv.gz files found")
    reported: dict[Path, Path] = {}
    for file in files:
        if (first := reported.setdefault(report := file.parent / report_stem(file), file)) != file:
            raise UserError(f"{first} and {file} would write the same reports, {report.relative_to(root)}.csv and "
                            ".png: rename or move one of them")
    return root, files


def report_stem(file: Path) -> str:
    """The name of `file`'s series reports: its own without .csv or .csv.gz (any case), dots before it kept
    (`sensor.v1.csv` -> `sensor.v1`)."""
    stem = file.name
    for suffix in (".gz", ".csv"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    return stem


def read_window_file(path: str | Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """NAB `combined_windows.json`, as a UserError when unreadable."""
    if not os.path.isfile(path):
        raise UserError(f"task.data.windows_path: {not_a_file(path, 'windows JSON file')}")
    try:
        return load_nab_windows(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read anomaly windows: {err}") from err


def _rows_of_windows(series: Series, spans: Sequence[tuple[pd.Timestamp, pd.Timestamp]]) -> list[Window]:
    stamps = series.timestamps
    if not isinstance(stamps, pd.DatetimeIndex):
        raise UserError(f"{series.path}: timestamp windows need a time column (set task.data.time_column)")
    rows, first_rows = [], np.unique(stamps.as_unit("ns").asi8, return_index=True)  # in Timestamp.value's unit
    for start, end in spans:
        start, end = _on_clock(start, stamps), _on_clock(end, stamps)
        a, b = _position(stamps, first_rows, start, "left"), _position(stamps, first_rows, end, "right") - 1
        if a <= b:
            rows.append((a, b))
    if outside := len(spans) - len(rows):  # a window of another series, or of the wrong dates
        log.warning("%s: %d of its %d labelled windows hold none of its rows (%s to %s): left out of the scores",
                    series.path, outside, len(spans), stamps[0], stamps[-1])
    merged: list[Window] = []
    for a, b in sorted(rows):  # NAB's scorer needs ordered windows that share no row
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    if len(merged) < len(rows):
        log.warning("%s: %d labelled windows overlap or share a row: scored as %d", series.path, len(rows), len(merged))
    return merged


def _on_clock(stamp: pd.Timestamp, stamps: pd.DatetimeIndex) -> pd.Timestamp:
    """A window bound on the series' clock: one without a UTC offset is read in the series' time zone (UTC when
    its offsets change), one with an offset against a series without them in UTC."""
    if stamps.tz is not None and stamp.tz is None:
        return stamp.tz_localize(stamps.tz)
    if stamps.tz is None and stamp.tz is not None:
        return stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def _position(stamps: pd.DatetimeIndex, first_rows: tuple[np.ndarray, np.ndarray], stamp: pd.Timestamp,
              side: str) -> int:
    """The row of `stamp` (exact match first: NAB files repeat clock hours at DST changes); `first_rows`: the
    distinct timestamps (nanoseconds, sorted) and the first row of each, found by bisection (not a scan per window)."""
    try:
        value = stamp.as_unit("ns").value
    except (OverflowError, pd.errors.OutOfBoundsDatetime):  # an open end written 9999-12-31, say: before or after all
        return len(stamps) if stamp > pd.Timestamp(0, tz=stamp.tz) else 0
    distinct, first = first_rows
    at = int(np.searchsorted(distinct, value))
    if at < len(distinct) and distinct[at] == value:
        return int(first[at]) + (side == "right")
    return int(stamps.searchsorted(stamp, side))


def _match_windows(
    root: Path, files: list[Path], windows: dict[str, list], source: Path, data_path: Path, required: bool = True
) -> dict[Path, list]:
    """Window lists by file: keys are paths relative to the data root, or to one of its parents. A file of
    windows that names none of the series is an error if `required`, else a warning (the data unlabelled);
    one that names series not read from `data_path` (a file or folder) is a warning."""
    matched: dict[Path, list] = {}
    used: set[str] = set()
    for file in files:
        parts = file.relative_to(root.parent if root.parent != root else root).parts
        for depth in range(len(parts)):
            key = "/".join(parts[depth:])
            if key in windows:
                matched[file] = windows[key]
                used.add(key)
                break
    if not matched and not required:
        log.warning("%s names none of the %d series under %s: they are scored without labels", source, len(files),
                    root)
        return matched
    if not matched:
        raise UserError(f"{source}: names none of the {len(files)} series under {root} "
                        "(unlabelled data: set task.data.windows_path=null, or auto for the data folder's own file)")
    if unknown := sorted(set(windows) - used):
        log.warning("%s: %d labelled series are not in the input (%s) and are ignored: %s", source, len(unknown),
                    data_path, first_named(unknown))
    return matched


def load_streams(
    path: str | Path,
    time_column: str | None,
    value_columns: Sequence[str] | None,
    label_column: str | None,
    windows_path: str | Path | None,
    probation: float,
    probation_max: int,
    missing: str,
    min_probation: int,
    calendar: Calendar = Calendar(),
    preferred_columns: Sequence[str] | None = None,
    time_unit: str | None = None,
    labels_optional: bool = False,
    time_format: str | None = None,
) -> list[StreamData]:
    """Every series under `path`, scaled on its own probationary part, with its labels if any
    and the `calendar` features of its timestamps. `preferred_columns`, a trained detector's, choose
    the value columns of files that hold them all when `value_columns` are not given (`_trained_columns`);
    a time column of numbers is Unix time in `time_unit`, dates are in `time_format` if given. With
    `labels_optional` (a trained detector scoring), a file without `label_column` takes its labels from the windows
    file beside the data, if any, else is scored without labels, with a warning; else it is an error."""
    root, files = csv_files(path)
    beside = windows_path == "auto"
    if beside:
        windows_path = None if label_column and not labels_optional else windows_beside(root)
    windows = read_window_file(windows_path) if windows_path else {}
    matched = (_match_windows(root, files, windows, Path(windows_path), Path(path), required=not beside)
               if windows else {})
    streams: list[StreamData] = []
    unlabelled: list[str] = []
    for file in files:
        frame = read_csv_frame(file, dates_as_text(time_column, time_format))
        labels = label_column if label_column in frame.columns else None
        if label_column and labels is None:  # before its values: which column is which
            if not labels_optional:
                raise UserError(f"{file}: no label column {label_column!r} (task.data.label_column); its columns are "
                                f"{list(frame.columns)}")
            if file not in matched:
                unlabelled.append(file.name)
        columns = list(value_columns) if value_columns else _value_columns(file, frame, time_column, labels)
        if preferred_columns:  # warnings for the first file only: the others must have the same columns
            columns = _trained_columns(file, columns, list(preferred_columns), bool(value_columns), warn=not streams)
        if streams and columns != (first := streams[0].series).columns:
            raise UserError(f"{file}: value columns {columns} differ from {first.columns} of {first.path}; "
                            "all files must have the same ones (or set task.data.value_columns)")
        series = series_from_frame(frame, file, columns, time_column, missing, time_unit,
                                   dict.fromkeys(value_columns or (), "task.data.value_columns"), time_format)
        n_probation = min(int(probation * len(series.values)), probation_max)
        if n_probation < min_probation:
            raise UserError(
                f"{file}: {len(series.values)} rows give a probationary period of {n_probation} rows "
                f"(task.data.probation={probation}); at least {min_probation} are needed (twice "
                "task.data.crop_length to train a detector, 2 to score with a trained one)"
            )
        spans: list[Window] | None = None
        if labels:
            spans = _label_windows(file, frame, labels, series.rows)
        elif file in matched:
            spans = _rows_of_windows(series, matched[file])
        where = f"{file}: the probationary period ({n_probation} rows)"
        scaler = StandardScaler.fit(series.values[:n_probation], where, series.columns)
        covariates = calendar.features(series.clock, file)
        streams.append(StreamData(str(file.relative_to(root)), series, n_probation, scaler, spans, covariates))
    if unlabelled:
        log.warning("%s: no label column %r (task.data.label_column) in %d file(s) and no windows file naming them, "
                    "scored without labels: %s", path, label_column, len(unlabelled), first_named(unlabelled))
    return streams


def _trained_columns(file: Path, columns: list[str], trained: list[str], explicit: bool, warn: bool) -> list[str]:
    """The value columns to read from `file` for a detector trained on `trained`: those names when the file
    holds them all (unless `columns` were chosen `explicit`ly); else `columns`, with a warning (if `warn`) when
    they differ from `trained` (a differing count is the task's error)."""
    if not explicit and set(trained) <= set(columns):
        if warn and (ignored := [c for c in columns if c not in trained]):
            log.warning("%s: reading the detector's value columns %s; ignoring %s", file, trained, ignored)
        return trained
    if warn and columns != trained and len(columns) == len(trained):
        log.warning("%s: scoring value column(s) %s with a detector trained on %s, in this order (choose them "
                    "with task.data.value_columns)", file, columns, trained)
    return columns


def _value_columns(file: Path, frame: pd.DataFrame, time_column: str | None, label_column: str | None) -> list[str]:
    """Every column of `file` (read into `frame`) but its time and label columns; a UserError when it has none."""
    header = list(frame.columns)
    columns = [c for c in header if c not in (time_column, label_column)]
    if not columns:
        raise UserError(f"{file}: no value columns besides the time and label columns; its columns are {header}")
    return columns


def _label_windows(file: Path, frame: pd.DataFrame, label_column: str, rows: np.ndarray | None) -> list[Window]:
    """The anomaly windows of a 0/1 label column of `file` (read into `frame`) over its data `rows` that the series
    holds (None: all, in file order); a UserError naming the line of any value other than 0 or 1 there."""
    rows = np.arange(len(frame)) if rows is None else rows
    every_label = pd.to_numeric(frame[label_column], errors="coerce").to_numpy()  # parsed once, all rows
    labels = every_label[rows]
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        row = int(np.argmax(bad))
        value = frame[label_column].iloc[rows[row]]
        got = "a missing value" if pd.isna(value) else repr(str(value))
        raise UserError(f"{file}, line {data_line(file, int(rows[row]))}, column {label_column!r}: expected a label "
                        f"of 0 or 1, got {got}")
    if len(rows) < len(frame):  # rows left out (task.data.missing=skip): a window may have lost every row
        kept = np.zeros(len(frame), dtype=bool)
        kept[rows] = True
        if lost := sum(not kept[a : b + 1].any() for a, b in windows_from_labels(every_label == 1)):
            log.warning("%s: %d labelled window(s) lie wholly in rows skipped for a missing value: left out of the "
                        "scores", file, lost)
    return windows_from_labels(labels == 1)


def split_probation(streams: list[StreamData], validation: float, crop_length: int, shortest: int) -> list[int]:
    """Where each series' probationary period ends its training rows and starts its validation rows; a
    UserError when a crop, or either part, is shorter than the `shortest` crop the detector's loss needs."""
    if crop_length < shortest:
        raise UserError(f"task.data.crop_length={crop_length} is shorter than the {shortest} rows the detector's "
                        "loss needs (task.detector.burn_in + 2 for a forecaster, task.detector.window otherwise)")
    cuts = [int(s.probation * (1 - validation)) for s in streams]
    for cut, stream in zip(cuts, streams):
        if cut < crop_length or stream.probation - cut < shortest:
            raise UserError(
                f"{stream.series.path}: task.data.validation={validation} splits its {stream.probation}-row "
                f"probationary period into {cut} training and {stream.probation - cut} validation rows; "
                f"needed: at least {crop_length} (task.data.crop_length) and {shortest} (one crop for the loss)"
            )
    return cuts


class CropDataset(Dataset):
    """Fixed-length crops from the training (or validation) rows of every series, batched by `__getitems__`."""

    def __init__(self, sequences: list[Tensor], ranges: list[tuple[int, int]], length: int) -> None:
        self.sequences = sequences
        self.length = length
        self.index = [(s, start) for s, (lo, hi) in enumerate(ranges) for start in range(lo, hi - length + 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: Sequence[int]) -> Tensor:
        picks = [self.index[i] for i in indices]
        return torch.stack([self.sequences[s][start : start + self.length] for s, start in picks])


class SeriesDataset(Dataset):
    """Whole series, one per batch, for scoring."""

    def __init__(self, sequences: list[Tensor]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitems__(self, indices: Sequence[int]) -> tuple[int, Tensor]:
        (i,) = indices
        return i, self.sequences[i].unsqueeze(0)


class AnomalyData(SplitDataModule):
    """Train on crops of each series' early probationary rows, validate on its late ones,
    and score whole series, one per batch, in test and predict."""

    def __init__(self, streams: list[StreamData], crop_length: int, validation: float, batch_size: int,
                 shortest: int, num_workers: int = 0) -> None:
        """`shortest`: the fewest rows a crop needs for the detector's loss (`shortest_crop`)."""
        super().__init__(batch_size, num_workers, batch_sizes={"test": 1, "predict": 1}, build=self._crops)
        self.streams = streams
        self.crop_length, self.validation, self.shortest = crop_length, validation, shortest
        self.sequences = [s.inputs for s in streams]
        whole = SeriesDataset(self.sequences)
        self.sets.update(test=whole, predict=whole)

    def _crops(self, stage: str) -> CropDataset:
        """Training or validation crops, split off when first asked for (testing and prediction need none)."""
        cuts = split_probation(self.streams, self.validation, self.crop_length, self.shortest)
        if stage == "train":
            return CropDataset(self.sequences, [(0, c) for c in cuts], self.crop_length)
        ranges = [(c, s.probation) for c, s in zip(cuts, self.streams)]
        return CropDataset(self.sequences, ranges, min(self.crop_length, *(hi - lo for lo, hi in ranges)))
