"""Time-series plumbing shared by tasks: CSV reading, chronological splits, scaling, lazy windows."""

from __future__ import annotations

import logging
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from itertools import islice
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gru_suite.data import batch_loader  # noqa: F401  (moved to gru_suite.data; kept for plugins importing it here)
from gru_suite.errors import UserError, excerpt, not_a_file
from gru_suite.text import read_lines

log = logging.getLogger(__name__)

MissingPolicy = Literal["error", "interpolate", "skip"]
MISSING_POLICIES: tuple[str, ...] = get_args(MissingPolicy)
TIME_UNITS = ("s", "ms", "us", "ns")
"""Units of a time column of numbers (Unix time: since 1970-01-01 UTC), as `task.data.time_unit`."""


@dataclass
class Series:
    """A table read from CSV: timestamps (or row numbers) and float32 values (T, F).

    `clock` holds each row's local wall-clock time (where daily and weekly cycles are): the timestamps
    themselves, but for a file whose UTC offset changes (daylight saving), whose `timestamps` are in UTC.
    `skipped`: the rows `missing="skip"` left out (their values NaN where missing); `rows`: where each row stands
    among the file's data rows (from 0), for a series with rows left out (None: every row, in file order)."""

    path: Path
    timestamps: pd.Index
    columns: list[str]
    values: np.ndarray
    clock: pd.Index | None = None
    skipped: Series | None = None
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.timestamps

    def column_indices(self, names: Sequence[str]) -> list[int]:
        return [self.columns.index(name) for name in names]

    def row_names(self, rows: Iterable[int]) -> list[str]:
        """How plots name rows: by their timestamps, or in a series without them as "row N", N the number its rows
        have in the CSV artifacts (forecast.csv, an anomaly report), counted from 0."""
        if not isinstance(self.timestamps, pd.DatetimeIndex):  # row numbers (from 0), some left out with `skipped`
            return [f"row {self.timestamps[row]}" for row in rows]
        return [str(self.timestamps[row]) for row in rows]


def read_series_csv(
    path: str | Path,
    columns: Sequence[str] | None = None,
    time_column: str | None = None,
    missing: MissingPolicy = "error",
    time_unit: str | None = None,
    named_by: Mapping[str, str] | None = None,
    time_format: str | None = None,
) -> Series:
    """Read numeric `columns` (default: every column but the time column) from a CSV; `named_by` maps a column to
    the setting that asked for it, which the error of a missing one names.

    Every problem is a `UserError` naming the file, the column and the line:
    a missing file or column, a non-numeric value, an unparseable timestamp, and
    (with `missing="error"`) an empty cell; `missing="interpolate"` fills gaps
    linearly in time order instead, `missing="skip"` leaves their rows out (into `Series.skipped`). Timestamps
    that do not increase are a warning naming the first such line; rows keep their order in the file. A time
    column of numbers is Unix time in `time_unit` (one of `TIME_UNITS`), and refused without one. Dates are read
    in `time_format` (strftime codes, `%d/%m/%Y`), else in the format pandas infers from the first (a warning
    where every date could be read day-first as well as month-first).
    """
    csv_path = Path(path)
    if csv_path.is_dir():
        raise UserError(f"{csv_path} is a folder: expected a CSV file")
    if not csv_path.is_file():
        if os.path.lexists(csv_path):  # a broken link, a pipe
            raise not_a_file(csv_path, "CSV file")
        raise UserError(f"data file not found: {csv_path}")
    frame = read_csv_frame(csv_path, dates_as_text(time_column, time_format))
    return series_from_frame(frame, csv_path, columns, time_column, missing, time_unit, named_by, time_format)


def series_from_frame(
    frame: pd.DataFrame,
    csv_path: Path,
    columns: Sequence[str] | None = None,
    time_column: str | None = None,
    missing: MissingPolicy = "error",
    time_unit: str | None = None,
    named_by: Mapping[str, str] | None = None,
    time_format: str | None = None,
) -> Series:
    """`read_series_csv` of a CSV already read into `frame` (from `csv_path`, which the errors name)."""
    available = list(frame.columns)
    wanted = list(columns) if columns else [c for c in available if c != time_column]
    for name in [*wanted, *([time_column] if time_column is not None else [])]:
        if name not in available:
            timed = name == time_column and name not in wanted
            setting = "task.data.time_column" if timed else (named_by or {}).get(name)
            other = next((d for d in (";", "\t", "|") if len(available) == 1 and d in str(available[0])), None)
            hint = f" (its fields look separated by {other!r}: the suite reads comma-separated files)" if other else ""
            raise UserError(f"{csv_path}: no {'time column' if timed else 'column'} {name!r}"
                            f"{f' ({setting})' if setting else ''}; columns are {available}{hint}")
    if frame.empty:
        raise UserError(f"{csv_path}: no data rows")
    values = np.stack([_numeric_column(frame[name], csv_path) for name in wanted], axis=1)
    stamps, clock = _timestamps(frame, time_column, csv_path, time_unit, time_format)  # its errors before warnings
    values, left_out = _handle_missing(values, wanted, csv_path, missing)
    _warn_of_unordered(stamps, csv_path, time_column)
    if left_out is None:
        return Series(csv_path, stamps, wanted, values.astype(np.float32), clock)
    clock, kept = stamps if clock is None else clock, ~left_out
    skipped = Series(csv_path, stamps[left_out], wanted, values[left_out].astype(np.float32), clock[left_out],
                     rows=np.flatnonzero(left_out))
    return Series(csv_path, stamps[kept], wanted, values[kept].astype(np.float32), clock[kept], skipped,
                  np.flatnonzero(kept))


ARCHIVE_SUFFIXES = (".bz2", ".xz", ".zip", ".zst", ".tar")  # pandas unpacks these; read_lines cannot


def data_line(path: Path, row: int) -> int:
    """The line of the CSV `path` that holds data row `row` (from 0) as pandas reads it: blank lines are skipped,
    so after one it is not `row + 2`. Archives other than .gz are taken to have none."""
    if Path(path).suffix in ARCHIVE_SUFFIXES or not Path(path).is_file():
        return row + 2
    filled = (number for number, line in enumerate(read_lines(path), start=1) if line.strip())
    next(filled, None)  # the header
    return next(islice(filled, row, None), row + 2)


def dates_as_text(time_column: str | None, time_format: str | None) -> list[str]:
    """The columns `read_csv_frame` reads as text for `series_from_frame`: the time column, where `time_format` reads
    it (pandas would read 01022020 as a number and drop its zero)."""
    return [time_column] if time_column is not None and time_format is not None else []


def read_csv_frame(path: Path, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """`pd.read_csv(path)`, `text_columns` read as text (dates written as digits keep their leading zeros), or a
    UserError naming the file (and the line of bytes that are not UTF-8, or the column its header names twice)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # index_col=False: rows that end in a delimiter the header lacks are read without it (else pandas makes
            # their first field the index, every column shifted by one); a real field more is a ParserWarning
            frame = pd.read_csv(path, dtype=dict.fromkeys(text_columns, "string") or None, index_col=False)
        if any(issubclass(warning.category, pd.errors.ParserWarning) for warning in caught):
            raise UserError(f"{path}: its rows have a field more than its header names ({', '.join(map(str, frame))})"
                            ": name every column in the header")
    except UnicodeDecodeError as err:
        if path.suffix not in ARCHIVE_SUFFIXES:
            read_lines(path)  # names the first line that is not UTF-8
        raise UserError(f"{path}: not UTF-8 ({err})") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from err
    except (OSError, EOFError, zlib.error) as err:  # e.g. a damaged .csv.gz
        raise UserError(f"{path}: cannot read ({err})") from err
    header: list[str] = []
    if len(frame.columns):  # the names as written: pandas renames a repeated one `load.1`
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
        header = [name.strip() for name in first if name.strip()]  # blank names are unnamed columns
    if repeated := sorted({name for name in header if header.count(name) > 1}):
        raise UserError(f"{path}: the header names column(s) {repeated} more than once")
    return frame


FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude a value may have: values are held as 32-bit floats, where a larger one is infinite."""


def _numeric_column(column: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.infer_dtype(column, skipna=True) == "boolean":  # true/false cells, read as bools: cast to 1/0
        row = int(np.argmax(column.notna().to_numpy()))
        raise UserError(f"{path}, line {data_line(path, row)}, column {column.name!r}: expected numbers, got "
                        "true/false values (from this line on)")
    numbers = pd.to_numeric(column, errors="coerce")
    bad = (numbers.isna() & column.notna()) | (numbers.abs() > FLOAT32_MAX)  # infinite ones too
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        huge = bool(np.isfinite(numbers.iloc[row]))  # a number, but past what a 32-bit float holds
        expected = f"a number of at most {FLOAT32_MAX:.3g} in size (values are held as 32-bit floats)" if huge \
            else "a finite number"
        raise UserError(f"{path}, line {data_line(path, row)}, column {column.name!r}: expected {expected}, "
                        f"got {excerpt(str(column.iloc[row]))}")
    return numbers.to_numpy(dtype=np.float64)


def _handle_missing(
    values: np.ndarray, names: list[str], path: Path, policy: MissingPolicy
) -> tuple[np.ndarray, np.ndarray | None]:
    """`values` with their gaps filled (`interpolate`), and with `skip` the mask of rows to leave out (else None)."""
    if policy not in MISSING_POLICIES:
        raise UserError(f"task.data.missing must be one of {list(MISSING_POLICIES)}, got {policy!r}")
    gaps = np.isnan(values)
    if not gaps.any():
        return values, None
    row, col = map(int, np.argwhere(gaps)[0])
    if policy == "error":
        raise UserError(
            f"{path}, line {data_line(path, row)}, column {names[col]!r}: missing value ({int(gaps.sum())} in all); "
            "set task.data.missing=interpolate to fill gaps (or skip, where the task allows it)"
        )
    if policy == "skip":
        left_out = gaps.any(axis=1)
        if left_out.all():
            raise UserError(f"{path}: every row misses a value (task.data.missing=skip leaves none)")
        log.warning("%s: %d row(s) with a missing value skipped, the first on line %d, column %r", path,
                    int(left_out.sum()), data_line(path, row), names[col])
        return values, left_out
    filled = pd.DataFrame(values).interpolate(limit_direction="both").to_numpy()
    if np.isnan(filled).any():
        empty = names[int(np.argwhere(np.isnan(filled))[0][1])]
        raise UserError(f"{path}, column {empty!r}: no values at all, nothing to interpolate from")
    log.warning("%s: %d missing value(s) interpolated, the first on line %d, column %r", path, int(gaps.sum()),
                data_line(path, row), names[col])
    return filled, None


def _timestamps(frame: pd.DataFrame, time_column: str | None, path: Path, unit: str | None,
                form: str | None = None) -> tuple[pd.Index, pd.Index | None]:
    """The rows' timestamps (row numbers without `time_column`) and, where they differ, their wall clock."""
    if time_column is None:
        return pd.RangeIndex(len(frame)), None
    if unit is not None and form is not None:
        raise UserError("task.data.time_unit (Unix time) and task.data.time_format (dates) are both set: set the one "
                        "that describes the time column")
    if form is not None:
        stamps, clock = _formatted_timestamps(frame[time_column], path, form)
    elif unit is None:
        stamps, clock = _parse_timestamps(frame, time_column, path)
    else:
        stamps, clock = _unix_times(frame[time_column], path, unit), None
    if stamps.isna().any():
        row = int(np.argmax(stamps.isna()))
        raise UserError(f"{path}, line {data_line(path, row)}, column {time_column!r}: empty timestamp")
    return stamps, clock


def _warn_of_unordered(stamps: pd.Index, path: Path, time_column: str | None) -> None:
    """A warning naming the first timestamp not after the one before it: real logs repeat an hour at a clock
    change, and the file's order is kept."""
    later = stamps[1:] > stamps[:-1]
    if not later.all():
        row = int(np.argmin(later)) + 1
        log.warning("%s, column %r: %d timestamps are not after the one before them (first: line %d, %s after %s); "
                    "rows are used in file order", path, time_column, int((~later).sum()), data_line(path, row),
                    stamps[row], stamps[row - 1])


def _parse_timestamps(frame: pd.DataFrame, time_column: str, path: Path) -> tuple[pd.DatetimeIndex, pd.Index | None]:
    column = frame[time_column]
    if pd.api.types.is_numeric_dtype(column) and column.notna().any():  # pandas reads 1700000000 as 1.7 s after 1970
        row = int(np.argmax(column.notna().to_numpy()))
        raise UserError(f"{path}, column {time_column!r}: numbers ({column.iloc[row]} on line {data_line(path, row)}), "
                        "not dates; for Unix time set task.data.time_unit (s, ms, us or ns), or write dates "
                        "(2024-01-01 00:00:00), or set task.data.time_column=null to number the rows instead")
    # utc: UTC offsets that change (daylight saving) or stamps with and without one, on one UTC time line;
    # formats: the one pandas infers from the first stamp, else ISO 8601 forms mixed (midnight as a bare date,
    # seconds with and without fractions); not each stamp its own ("mixed"), which reads 13/02 day-first dates
    # month-first wherever it can
    for utc in (False, True):
        for form in (None, "ISO8601"):
            try:
                with warnings.catch_warnings():  # each date read on its own (01/02/20): said below where it matters
                    warnings.filterwarnings("ignore", message="Could not infer format")
                    stamps = pd.DatetimeIndex(pd.to_datetime(column, utc=utc, format=form))
            except (ValueError, TypeError):
                continue
            if form is None:
                _warn_if_day_first_too(column, stamps, path)
            # with UTC, also each stamp's own local time, as a stream reads them one at a time (`Calendar.row`)
            return stamps, pd.DatetimeIndex([wall_clock(parse_timestamp(text)) for text in column]) if utc else None
    parsed = pd.to_datetime(column, errors="coerce", utc=True)
    row = int(np.argmax(parsed.isna().to_numpy() & column.notna().to_numpy()))  # not an empty cell
    first = _first_text(column)
    month_first, day_first = _guessed_formats(first)
    hint = (f" (dates such as {excerpt(first)} were read month-first, {month_first!r}; if they are day-first, set "
            f"task.data.time_format='{day_first}')") if _reads(column.iloc[row], day_first, month_first) else ""
    raise UserError(f"{path}, line {data_line(path, row)}, column {time_column!r}: unparseable timestamp "
                    f"{excerpt(column.iloc[row])}{hint}")


def _reads(text: Any, form: str | None, other: str | None) -> bool:
    """Whether the date format `form`, another than `other`, reads `text`."""
    if form is None or form == other:
        return False
    try:
        pd.to_datetime(str(text), format=form)
    except ValueError:
        return False
    return True


def _formatted_timestamps(column: pd.Series, path: Path, form: str) -> tuple[pd.DatetimeIndex, pd.Index | None]:
    """`column` read in the strftime format `form` (`task.data.time_format`); UTC where the offsets differ."""
    if not isinstance(form, str) or "%" not in form:
        raise UserError(f"task.data.time_format must be a date format in strftime codes, such as '%d/%m/%Y %H:%M', "
                        f"not {form!r}")
    text = column.astype("string")  # a frame read without the column as text: its cells as pandas wrote them
    for utc in (False, True):
        try:
            stamps = pd.DatetimeIndex(pd.to_datetime(text, format=form, utc=utc))
        except (ValueError, TypeError):
            continue
        return stamps, pd.DatetimeIndex([wall_clock(parse_timestamp(t, form=form)) for t in text]) if utc else None
    try:
        parsed = pd.to_datetime(text, format=form, errors="coerce", utc=True)
    except ValueError as err:  # a code strftime does not know
        raise UserError(f"task.data.time_format {form!r}: {err}") from None
    row = int(np.argmax(parsed.isna().to_numpy() & text.notna().to_numpy()))
    raise UserError(f"{path}, line {data_line(path, row)}, column {column.name!r}: {excerpt(column.iloc[row])} does "
                    f"not match task.data.time_format {form!r}")


def _first_text(column: pd.Series) -> str:
    """The first cell of `column` that is not empty, as text ("" if none)."""
    return str(column.dropna().iloc[0]) if column.notna().any() else ""


def _guessed_formats(text: str) -> tuple[str | None, str | None]:
    """The formats pandas guesses for the date `text` read month-first and read day-first (equal: not ambiguous;
    a date that starts with its year, 2020-01-02, is year-month-day; None: no format pandas can name)."""
    from pandas.tseries.api import guess_datetime_format

    with warnings.catch_warnings():  # pandas' own "Parsing dates in %m/%d/%Y format when dayfirst=True"
        warnings.simplefilter("ignore")
        month_first = guess_datetime_format(text)
        if month_first is not None and month_first.startswith("%Y"):
            return month_first, month_first
        return month_first, guess_datetime_format(text, dayfirst=True)


def _warn_if_day_first_too(column: pd.Series, stamps: pd.DatetimeIndex, path: Path) -> None:
    """Warn where pandas read the dates of `column` month-first and every one of them reads day-first as well."""
    first = _first_text(column)
    month_first, day_first = _guessed_formats(first)
    if month_first == day_first and month_first is not None:
        return
    if month_first is None:  # pandas read each date on its own (01/02/20): read them day-first too, and compare
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = pd.DatetimeIndex(pd.to_datetime(column, dayfirst=True, errors="coerce", utc=stamps.tz is not None))
        if other.isna().any() or other.equals(stamps):
            return
        advice = "set task.data.time_format (strftime codes, such as '%d/%m/%y') to say which"
    elif day_first is None or not (stamps.day <= 12).all():
        return
    else:
        advice = f"set task.data.time_format='{day_first}' if they are day-first ('{month_first}' if month-first)"
    log.warning("%s, column %r: dates such as %r read month-first (%s) and would read day-first as well: %s", path,
                column.name, first, f"{stamps[0]:%Y-%m-%d}", advice)


def _unix_times(column: pd.Series, path: Path, unit: str) -> pd.DatetimeIndex:
    """`column` of numbers as Unix time in `unit` (UTC); a cell that is no number is named by its line."""
    if unit not in TIME_UNITS:
        raise UserError(f"task.data.time_unit must be one of {list(TIME_UNITS)} (or null for dates), not {unit!r}")
    numbers = pd.to_numeric(column, errors="coerce")
    if (bad := numbers.isna() & column.notna()).any():
        row = int(np.argmax(bad.to_numpy()))
        raise UserError(f"{path}, line {data_line(path, row)}, column {column.name!r}: {excerpt(column.iloc[row])} is "
                        f"not a number (Unix time in {unit}: task.data.time_unit={unit})")
    try:
        return pd.DatetimeIndex(pd.to_datetime(numbers, unit=unit, utc=True))
    except (ValueError, OverflowError) as err:  # out of pandas' range (years 1677-2262)
        raise UserError(f"{path}, column {column.name!r}: Unix times in {unit} out of range ({err})") from err


def parse_timestamp(value: Any, unit: str | None = None, form: str | None = None) -> pd.Timestamp:
    """One timestamp as `read_series_csv` reads a time column: a date (in the strftime format `form`, if given), or
    with `unit` a number of Unix time (UTC); NaT for anything else (an empty or unparseable value)."""
    try:
        if form is not None:
            return pd.to_datetime(str(value), format=form)
        if unit is None:
            return pd.Timestamp(value)
        return pd.to_datetime(pd.to_numeric(value), unit=unit, utc=True)
    except (TypeError, ValueError, OverflowError):
        return pd.NaT


def wall_clock(stamp: pd.Timestamp) -> pd.Timestamp:
    """`stamp`'s local time without its UTC offset (the time on the wall clock where it was taken)."""
    return stamp.tz_localize(None) if stamp.tz is not None else stamp


def plotted_times(stamps: pd.Index | pd.Series) -> tuple[pd.Index | pd.Series, tzinfo | None]:
    """`stamps` for matplotlib, and the time zone to label them in: stamps with a zone as UTC without one (where
    matplotlib puts them, after converting zoned stamps one at a time: seconds for 100,000) and their zone (give it
    to the axis, `Axis.axis_date`, or its locator and formatter); other values as they are, and None."""
    if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
        return stamps, None
    utc = pd.DatetimeIndex(stamps).tz_convert("UTC").tz_localize(None)
    values = utc if isinstance(stamps, pd.Index) else pd.Series(utc, index=stamps.index, name=stamps.name)
    return values, stamps.dtype.tz


def wrong_split(split: Any, parts: int = 3, field: str = "task.data.split") -> str | None:
    """Why `split` is not `parts` fractions summing to at most 1 or `parts` whole row counts (a message naming
    `field`), or None: what `chronological_split` checks before it knows the series' length."""
    numbers = isinstance(split, Sequence) and not isinstance(split, str) and all(
        isinstance(part, int | float) and not isinstance(part, bool) and part >= 0 for part in split)
    if not numbers or len(split) != parts:
        shown = list(split) if isinstance(split, Sequence) and not isinstance(split, str) else repr(split)
        return f"{field} must be {parts} non-negative fractions or row counts, got {shown}"
    if _fractions(split):
        return f"{field}: fractions {list(split)} sum to {sum(split):g}, more than 1" if sum(split) > 1 + 1e-9 else None
    if not all(float(p).is_integer() for p in split):
        return f"{field}: must be all fractions (<= 1) or all whole row counts, got {list(split)}"
    return None


def _fractions(split: Sequence[float | int]) -> bool:
    """Whether `split` is fractions: numbers <= 1 with a decimal point, where a 0 may lack one ([0.9, 0.1, 0])."""
    return any(isinstance(p, float) for p in split) and all(
        (isinstance(p, float) and p <= 1.0) or p == 0 for p in split)


def chronological_split(
    n: int, split: Sequence[float | int], parts: int = 3, field: str = "task.data.split"
) -> list[tuple[int, int]]:
    """Row ranges [start, stop) for `parts` consecutive parts of `n` rows (train, val, test by default).

    `split` holds fractions summing to at most 1 (e.g. [0.7, 0.1, 0.2]) or row
    counts (e.g. [8640, 2880, 2880]); the parts follow each other in time. Errors name `field`.
    """
    if (wrong := wrong_split(split, parts, field)) is not None:
        raise UserError(wrong)
    if _fractions(split):
        ends = [min(n, round(sum(split[: i + 1]) * n)) for i in range(len(split))]  # rounded once, never past n
        sizes = [end - start for start, end in zip([0, *ends], ends)]
    else:
        sizes = [int(p) for p in split]
    if sum(sizes) > n:
        raise UserError(f"{field}: {list(split)} asks for {sum(sizes)} rows but the series has {n}")
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


CALENDAR_PERIODS = {"time_of_day": 86_400.0, "day_of_week": 7 * 86_400.0}
"""Calendar cycles that `Calendar` encodes, with their periods in seconds."""
CALENDAR_EPOCH = pd.Timestamp("1970-01-05")
"""Where every cycle's phase is 0: midnight starting a Monday."""


@dataclass(frozen=True)
class Calendar:
    """Calendar covariates: each cycle of `kinds` (keys of `CALENDAR_PERIODS`) as (sin, cos) of the
    timestamps' phase in it, and of `harmonics` - 1 multiples of that phase, all sines first.

    Known ahead for every row, these let a model tell 3 a.m. from 3 p.m. (and Sunday from
    Monday) without learning the cycle from its own inputs. One harmonic changes smoothly over a
    day; a few more let a model place an event that starts at the same minute every day
    (a Fourier series of the daily profile, as Prophet models seasonality).
    """

    kinds: tuple[str, ...] = ()
    harmonics: int = 1

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in CALENDAR_PERIODS]
        if unknown:
            raise UserError(f"task.data.calendar: unknown feature(s) {unknown}; choose from {list(CALENDAR_PERIODS)}")

    @property
    def width(self) -> int:
        """Columns per row: a sine and a cosine per cycle and harmonic."""
        return 2 * len(self.kinds) * self.harmonics

    def features(self, stamps: pd.Index, path: Path | str = "") -> np.ndarray:
        """float32 (T, `width`) for the timestamps `stamps` of the file `path` (named in errors)."""
        if not self.kinds:
            return np.zeros((len(stamps), 0), dtype=np.float32)
        if not isinstance(stamps, pd.DatetimeIndex):
            raise UserError(f"{path}: calendar features need a time column of timestamps (task.data.time_column)")
        if stamps.hasnans:
            raise UserError(f"{path}, line {int(np.argmax(stamps.isna())) + 2}: no timestamp, which calendar "
                            "features need")
        local = stamps.tz_localize(None) if stamps.tz is not None else stamps  # the wall clock, where the cycles are
        return _cycle_pairs((local - CALENDAR_EPOCH).total_seconds().to_numpy(), self.kinds, self.harmonics)

    def row(self, stamp: pd.Timestamp) -> np.ndarray:
        """`features` of one valid timestamp, as a 1-D float32 array.

        For streams: about a tenth of the cost of a one-row index through `features`.
        """
        seconds = (wall_clock(stamp) - CALENDAR_EPOCH).total_seconds()
        return _cycle_pairs(np.array([seconds]), self.kinds, self.harmonics)[0]


def _cycle_pairs(seconds: np.ndarray, kinds: Sequence[str], harmonics: int) -> np.ndarray:
    """(sin, cos) of 1 to `harmonics` times the phase of `seconds` (since `CALENDAR_EPOCH`) in each cycle of `kinds`."""
    phases = np.stack([2 * np.pi * h * (seconds % CALENDAR_PERIODS[k]) / CALENDAR_PERIODS[k]
                       for k in kinds for h in range(1, harmonics + 1)], axis=1)
    return np.concatenate([np.sin(phases), np.cos(phases)], axis=1).astype(np.float32)


@dataclass
class StandardScaler:
    """Per-column z-scoring with statistics from the training part only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, where: str | None = None, columns: Sequence[str] = ()) -> StandardScaler:
        """Statistics of `values` (rows, columns). A column holding one value only is centred, not scaled (its
        std is 1), with a warning naming `where` (if given) and the column (`columns`, else its number): its
        float32 std need not be 0 (8.3985 repeated gives ~1e-6), and scaling by that would blow the next values
        up a millionfold. Statistics whose float32 squares overflow (values past ~1.8e19) are taken in float64."""
        with np.errstate(over="ignore", invalid="ignore"):
            std = values.std(axis=0)
        if not np.isfinite(std).all() and np.isfinite(values).all():
            values = values.astype(np.float64)
            std = values.std(axis=0)
        constant = np.ptp(values, axis=0) == 0
        if where is not None and constant.any():
            names = list(columns) or [str(i) for i in range(values.shape[1])]
            flat = [name for name, is_constant in zip(names, constant) if is_constant]
            log.warning("%s: column(s) %s constant; centred, not scaled", where, flat)
        mean = np.where(constant, values[0], values.mean(axis=0))  # the float32 mean of a constant is rounded
        return cls(mean, np.where(constant | ~(std > 1e-12), 1.0, std))  # ~(>): also a NaN std

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: Tensor, columns: Sequence[int]) -> Tensor:
        """Undo the scaling of `values` whose last dimension holds `columns`."""
        mean = torch.as_tensor(self.mean[list(columns)], dtype=values.dtype, device=values.device)
        std = torch.as_tensor(self.std[list(columns)], dtype=values.dtype, device=values.device)
        return values * std + mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StandardScaler:
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]))


class WindowBatch(NamedTuple):
    """A batch of windows: inputs `x` (B, lookback, F), targets `y` (B, horizon, targets), and each window's origin
    (B,), the row of its first target, which names the window (a gate plot's title, say)."""

    x: Tensor
    y: Tensor
    origins: Tensor


class WindowDataset(Dataset):
    """Sliding windows over one series, sliced lazily (memory grows with the series, not the windows).

    Window `i` takes inputs `values[o - lookback : o]` and targets
    `values[o : o + horizon, target_columns]` (NaN for rows past the series' end) with origin
    `o = first_origin + i * stride`.
    Fetching a list of indices (`__getitems__`) gathers the whole batch in one
    indexing op, so loaders need no per-item collation.
    """

    def __init__(
        self,
        values: Tensor,
        lookback: int,
        horizon: int,
        target_columns: Sequence[int],
        origins: range,
    ) -> None:
        self.values = values
        self.lookback = lookback
        self.horizon = horizon
        self.target_columns = list(target_columns)
        self.origins = origins
        self._inputs = values.unfold(0, lookback, 1)  # view: (T - lookback + 1, F, lookback)
        targets = values[:, self.target_columns]  # a copy, padded with the unknown rows past the end (NaN)
        padded = torch.cat([targets, targets.new_full((horizon, len(self.target_columns)), float("nan"))])
        self._targets = padded.unfold(0, horizon, 1)  # view: (T + 1, targets, horizon)

    def __len__(self) -> int:
        return len(self.origins)

    def origin_tensor(self, indices: Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.origins.start + idx * self.origins.step

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        origins = self.origin_tensor(indices)
        x = self._inputs[origins - self.lookback].transpose(1, 2)
        return WindowBatch(x, self._targets[origins].transpose(1, 2), origins)  # y: NaN past the series' end

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y, _ = self.__getitems__([index])
        return x[0], y[0]


def window_origins(start: int, stop: int, lookback: int, horizon: int, stride: int = 1) -> range:
    """Origins whose targets fall in rows [start, stop); inputs may reach back before `start`."""
    return range(max(start, lookback), stop - horizon + 1, stride)
