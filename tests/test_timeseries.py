import gzip
import os
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from gru_suite.backbone import GRUBackbone
from gru_suite.data import batch_loader
from gru_suite.errors import UserError
from gru_suite import run
from gru_suite.testing import compose_train_config
from gru_suite.timeseries import (
    StandardScaler,
    WindowDataset,
    chronological_split,
    parse_timestamp,
    plotted_times,
    read_series_csv,
    window_origins,
)
from gru_suite_plugins.forecasting.model import Forecaster
from gru_suite_plugins.forecasting.writer import forecast_frame, future_timestamps, plot_forecasts


def write(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_series(tmp_path):
    path = write(tmp_path, "t,a,b\n2024-01-01,1,2\n2024-01-02,3,4\n")
    series = read_series_csv(path, ["b", "a"], "t")
    assert series.columns == ["b", "a"]
    np.testing.assert_array_equal(series.values, [[2, 1], [4, 3]])
    assert series.values.dtype == np.float32
    assert str(series.timestamps[1].date()) == "2024-01-02"


@pytest.mark.parametrize(
    "text,columns,message",
    [
        ("t,a\n1,2\n", ["zz"], r"no column 'zz'; columns are \['t', 'a'\]$"),
        ("t;a\n1;2\n", ["a"], r"no column 'a'; columns are \['t;a'\] \(its fields look separated by ';': the suite "
                             r"reads comma-separated files\)$"),
        ("t\ta\n1\t2\n", ["a"], r"columns are \['t\\ta'\] \(its fields look separated by '\\t'"),
        ("t,a\n1,2\n2,x\n", ["a"], r"line 3, column 'a': expected a finite number, got 'x'"),
        ("t,a\n1,2\n2,3\n3,-inf\n", ["a"], r"line 4, column 'a': expected a finite number, got '-inf'"),
        # finite as read, infinite as the 32-bit float it is held as
        ("t,a\n1,2\n2,1e40\n", ["a"],
         r"line 3, column 'a': expected a number of at most 3.4e\+38 in size .*got '1e\+40'"),
        ("t,a\n1,true\n2,false\n", ["a"], r"line 2, column 'a': expected numbers, got true/false values"),
        ("t,a\n1,\n2,true\n3,false\n", ["a"], r"line 3, column 'a': expected numbers, got true/false values"),
        ("t,a\n2024-01-01,2\n2024-01-02,\n", ["a"], r"line 3, column 'a': missing value"),
        ("t,a\n", ["a"], "no data rows"),
        ("t,a,a\n1,2,3\n", ["a"], r"the header names column\(s\) \['a'\] more than once"),
        ("t,a\n2024-01-01,2,\n2024-01-02,3,4\n", ["a"], r"its rows have a field more than its header names \(t, a\)"),
    ],
)
def test_read_series_errors_name_file_line_and_column(tmp_path, text, columns, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as err:
        read_series_csv(path, columns, "t")
    assert str(path) in str(err.value)


def test_blank_header_cells_are_unnamed_columns_not_repeated_names(tmp_path):
    # a spreadsheet's trailing commas
    series = read_series_csv(write(tmp_path, "t,a,,\n2024-01-01,2,,\n2024-01-02,3,,\n"), ["a"], "t")
    assert series.values[:, 0].tolist() == [2.0, 3.0]


def test_a_long_cell_in_an_error_is_cut_short(tmp_path):
    with pytest.raises(UserError) as err:
        read_series_csv(write(tmp_path, "t,a\n2024-01-01,2\n2024-01-02," + "x" * 100_000 + "\n"), ["a"], "t")
    assert str(err.value).endswith(f"line 3, column 'a': expected a finite number, got '{'x' * 79}... (100,000 "
                                   "characters)")
    with pytest.raises(UserError) as err:  # in the time column too
        read_series_csv(write(tmp_path, "t,a\n2024-01-01,2\n" + "y" * 100_000 + ",3\n"), ["a"], "t")
    assert f"line 3, column 't': unparseable timestamp '{'y' * 79}... (100,000 characters)" in str(err.value)
    assert len(str(err.value)) < 1000


def test_rows_that_end_in_a_delimiter_the_header_lacks_are_read_without_it(tmp_path):
    series = read_series_csv(write(tmp_path, "t,a,b\n2024-01-01,2,5,\n2024-01-02,3,6,\n"), ["a", "b"], "t")
    assert series.values.tolist() == [[2.0, 5.0], [3.0, 6.0]]  # not shifted a column: pandas made t the index
    counted = read_series_csv(write(tmp_path, "step,a,b\n0,2,5,\n1,3,6,\n"), ["a", "b"], None)
    assert counted.values.tolist() == [[2.0, 5.0], [3.0, 6.0]]  # a first column 0, 1, ... as well


def test_a_damaged_gzip_csv_is_named(tmp_path):
    data = bytearray(gzip.compress(b"t,a\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(500))))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "s.csv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"s\.csv\.gz: cannot read \("):
        read_series_csv(path, ["a"], "t")


@pytest.mark.parametrize("content,message", [
    ("t,a\n2024-01-01,1\nnot a date,2\n", r"line 3, column 't': unparseable timestamp 'not a date'"),
    # day-first dates: an error, not dates read month-first where they can be
    ("t,a\n01/02/2024,1\n02/02/2024,2\n13/02/2024,3\n", r"line 4, column 't': unparseable timestamp '13/02/2024'"),
    # an empty timestamp first: the unparseable one is named, at its own line
    ("t,a\n2024-01-01,1\n,2\n2024-01-03,3\nyesterday,4\n", r"line 5, column 't': unparseable timestamp 'yesterday'"),
    # pandas would read Unix seconds as nanoseconds after 1970: forecasts dated 1970, calendar features constant
    ("t,a\n1700000000,1\n1700003600,2\n",
     r"column 't': numbers \(1700000000 on line 2\), not dates; for Unix time set task.data.time_unit .*"
     r"time_column=null"),
    ("t,a\n,1\n,2\n", r"line 2, column 't': empty timestamp"),  # a column of empty cells is not one of numbers
    # pandas skips blank (and blank-looking) lines: the third data row is on line 7 of the file
    ("\nt,a\n2024-01-01,1\n\n   \n2024-01-02,2\n2024-01-03,x\n",
     r"line 7, column 'a': expected a finite number, got 'x'"),
], ids=["unparseable", "day-first", "after-an-empty-one", "numbers", "all-empty", "after-blank-lines"])
def test_a_bad_cell_is_named_at_its_line_in_the_file(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        read_series_csv(write(tmp_path, content), ["a"], "t")


@pytest.mark.parametrize("stamps", [
    ["2024-01-01", "2024-01-01 01:00:00"],  # midnight written as a bare date
    ["2024-01-01 00:00:00", "2024-01-01 00:00:00.500"],  # as str(datetime) writes zero and other microseconds
    ["2024-01-01T00:00:00", "2024-01-01 00:00:01"],
    ["2024-01-01 00:00", "2024-01-01 00:01:30"],
])
def test_iso_timestamps_in_mixed_forms_are_read_as_a_stream_reads_them(tmp_path, stamps):
    series = read_series_csv(write(tmp_path, "t,a\n" + "".join(f"{stamp},{i}\n" for i, stamp in enumerate(stamps))),
                             ["a"], "t")
    assert list(series.timestamps) == [parse_timestamp(stamp) for stamp in stamps]


def test_plots_name_rows_by_timestamp_or_by_their_number_in_the_csv_artifacts(tmp_path):
    stamped = read_series_csv(write(tmp_path, "t,a\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n"), ["a"], "t")
    assert stamped.row_names([1]) == ["2024-01-01 01:00:00"]
    assert read_series_csv(write(tmp_path, "a\n1\n2\n"), ["a"]).row_names(range(2)) == ["row 0", "row 1"]


def test_dates_are_read_in_the_time_format_given_and_an_ambiguous_month_first_reading_is_warned_of(tmp_path, caplog):
    monthly = write(tmp_path, "t,a\n01/02/2020,1\n01/03/2020,2\n01/04/2020,3\n")  # day first: 1 Feb, 1 Mar, 1 Apr
    with caplog.at_level("WARNING"):
        guessed = read_series_csv(monthly, ["a"], "t").timestamps
    assert list(guessed) == list(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-04"]))
    assert ("dates such as '01/02/2020' read month-first (2020-01-02) and would read day-first as well: set task.data."
            "time_format='%d/%m/%Y' if they are day-first ('%m/%d/%Y' if month-first)") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        given = read_series_csv(monthly, ["a"], "t", time_format="%d/%m/%Y").timestamps
        read_series_csv(write(tmp_path, "t,a\n2020-01-01,1\n2020-02-01,2\n", "iso.csv"), ["a"], "t")
    assert list(given) == list(pd.to_datetime(["2020-02-01", "2020-03-01", "2020-04-01"])) and not caplog.text
    assert [parse_timestamp(text, form="%d/%m/%Y") for text in ("01/02/2020", "01/04/2020")] == [given[0], given[2]]
    day_first = write(tmp_path, "t,a\n01/02/2020 10:00,1\n13/02/2020 10:00,2\n")
    with pytest.raises(UserError, match=re.escape("line 3, column 't': unparseable timestamp '13/02/2020 10:00' "
                                                  "(dates such as '01/02/2020 10:00' were read month-first, "
                                                  "'%m/%d/%Y %H:%M'; if they are day-first, set "
                                                  "task.data.time_format='%d/%m/%Y %H:%M')")):
        read_series_csv(day_first, ["a"], "t")
    with pytest.raises(UserError, match=re.escape("line 3, column 't': '13/02/2020 10:00' does not match "
                                                  "task.data.time_format '%m/%d/%Y %H:%M'")):
        read_series_csv(day_first, ["a"], "t", time_format="%m/%d/%Y %H:%M")
    compact = read_series_csv(write(tmp_path, "t,a\n01022020,1\n15022020,2\n", "compact.csv"), ["a"], "t",
                              time_format="%d%m%Y")
    assert list(compact.timestamps) == list(pd.to_datetime(["2020-02-01", "2020-02-15"]))  # digits read as text
    with pytest.raises(UserError, match=r"line 3, column 't': empty timestamp"):
        read_series_csv(write(tmp_path, "t,a\n01022020,1\n,2\n", "gap.csv"), ["a"], "t", time_format="%d%m%Y")
    with pytest.raises(UserError, match=r"unparseable timestamp 'xx'$"):  # day-first would not read it either
        read_series_csv(write(tmp_path, "t,a\n01/02/2020,1\nxx,2\n", "xx.csv"), ["a"], "t")
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_series_csv(write(tmp_path, "t,a\n01/02/20,1\n01/03/20,2\n", "yy.csv"), ["a"], "t")  # no format named
    assert "dates such as '01/02/20' read month-first (2020-01-02) and would read day-first as well: set " \
           "task.data.time_format (strftime codes, such as '%d/%m/%y') to say which" in caplog.text
    with pytest.raises(UserError, match=r"task.data.time_format '%Q': 'Q' is a bad directive"):
        read_series_csv(day_first, ["a"], "t", time_format="%Q")
    with pytest.raises(UserError, match=r"time_format must be a date format in strftime codes.*not 'dmy'"):
        read_series_csv(day_first, ["a"], "t", time_format="dmy")
    with pytest.raises(UserError, match=r"task.data.time_unit \(Unix time\) and task.data.time_format \(dates\) are "
                                        r"both set"):
        read_series_csv(day_first, ["a"], "t", time_unit="s", time_format="%d/%m/%Y %H:%M")


def test_a_time_column_of_numbers_is_unix_time_in_the_unit_given(tmp_path):
    path = write(tmp_path, "t,a\n1700000000,1\n\n1700003600.5,2\n")
    stamps = read_series_csv(path, ["a"], "t", time_unit="s").timestamps
    assert list(stamps) == [pd.Timestamp("2023-11-14 22:13:20", tz="UTC"),
                            pd.Timestamp("2023-11-14 23:13:20.5", tz="UTC")]
    streamed = [parse_timestamp(text, "s") for text in ("1700000000", "1700003600.5")]  # as streams read them
    assert streamed == list(stamps)
    milliseconds = read_series_csv(write(tmp_path, "t,a\n1700000000000,1\n"), ["a"], "t", time_unit="ms")
    assert milliseconds.timestamps[0] == stamps[0]
    with pytest.raises(UserError, match=r"line 4, column 't': '2023-11-15' is not a number \(Unix time in s"):
        read_series_csv(write(tmp_path, "t,a\n1700000000,1\n\n2023-11-15,2\n"), ["a"], "t", time_unit="s")
    with pytest.raises(UserError, match=r"time_unit must be one of \['s', 'ms', 'us', 'ns'\] \(or null for dates\), "
                                        r"not 'h'"):
        read_series_csv(path, ["a"], "t", time_unit="h")
    with pytest.raises(UserError, match=r"column 't': Unix times in s out of range"):
        read_series_csv(write(tmp_path, "t,a\n1e30,1\n"), ["a"], "t", time_unit="s")
    assert parse_timestamp("soon", "s") is pd.NaT and parse_timestamp("soon") is pd.NaT


def test_lines_after_blank_ones_are_counted_in_a_gzip_csv_too(tmp_path):
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(gzip.compress(b"t,a\n2024-01-01,1\n\n2024-01-02,\n"))
    with pytest.raises(UserError, match=r"s\.csv\.gz, line 4, column 'a': missing value"):
        read_series_csv(gz, ["a"], "t")


def test_timestamps_whose_utc_offset_changes_are_read_in_utc_and_keep_their_wall_clock(tmp_path):
    path = write(tmp_path, "t,a\n2024-03-31 01:00+01:00,1\n2024-03-31 03:00+02:00,2\n")  # daylight saving starts
    series = read_series_csv(path, ["a"], "t")
    assert list(series.timestamps) == [pd.Timestamp("2024-03-31 00:00", tz="UTC"),
                                       pd.Timestamp("2024-03-31 01:00", tz="UTC")]
    assert list(series.clock) == [pd.Timestamp("2024-03-31 01:00"), pd.Timestamp("2024-03-31 03:00")]
    steady = read_series_csv(write(tmp_path, "t,a\n2024-03-31 01:00+01:00,1\n"), ["a"], "t")
    assert steady.clock is steady.timestamps  # one offset: the timestamps are the wall clock already
    path = write(tmp_path, "t,a\n2024-03-31 01:00+01:00,1\n2024-03-31 03:00+02:00,2\nsoon,3\n")
    with pytest.raises(UserError, match=r"line 4, column 't': unparseable timestamp 'soon'"):
        read_series_csv(path, ["a"], "t")


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"t,a\n2024-01-01,1\n2024-01-02,\xff2\n")
    with pytest.raises(UserError, match=r"s\.csv:3: not UTF-8 \(invalid start byte at byte 11\); save it as UTF-8"):
        read_series_csv(path, ["a"], "t")


def test_an_empty_timestamp_is_named(tmp_path):
    with pytest.raises(UserError, match=r"line 3, column 't': empty timestamp"):
        read_series_csv(write(tmp_path, "t,a\n2024-01-01 00:00,1\n,2\n2024-01-01 02:00,3\n"), ["a"], "t")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_series_csv(tmp_path / "nope.csv")
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))} is a folder: expected a CSV file"):
        read_series_csv(tmp_path)
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would wait for a writer
    with pytest.raises(UserError, match=r"pipe.csv: not a regular file \(a pipe or a device\), not a CSV file"):
        read_series_csv(tmp_path / "pipe.csv")


def test_interpolate_names_a_column_without_values(tmp_path):
    with pytest.raises(UserError, match=r"column 'b': no values at all, nothing to interpolate from"):
        read_series_csv(write(tmp_path, "a,b\n1,\n2,\n"), ["a", "b"], missing="interpolate")


def test_interpolate_fills_gaps_and_says_how_many(tmp_path, caplog):
    path = write(tmp_path, "t,a,b\n1,1,5\n2,,6\n3,3,NaN\n4,NA,8\n")  # pandas reads NaN and NA as missing
    values = read_series_csv(path, ["a", "b"], missing="interpolate").values
    np.testing.assert_allclose(values, [[1, 5], [2, 6], [3, 7], [3, 8]])
    opening_gap = write(tmp_path, "t,a\n1,\n2,2\n3,3\n", name="gap.csv")  # the first row takes the first value
    np.testing.assert_allclose(read_series_csv(opening_gap, ["a"], missing="interpolate").values, [[2], [2], [3]])
    assert f"{path}: 3 missing value(s) interpolated, the first on line 3, column 'a'" in caplog.text


def test_a_bad_timestamp_is_named_before_any_warning_of_the_rows_it_spoils(tmp_path, caplog):
    path = write(tmp_path, "t,a\n2024-01-02,1\n2024-01-01,\n# end of export\n")  # a comment line: no value
    with pytest.raises(UserError, match=r"line 4, column 't': unparseable timestamp '# end of export'"):
        read_series_csv(path, ["a"], "t", missing="interpolate")
    assert caplog.text == ""  # no gap interpolated, no order warned of, for a file that is refused
    path = write(tmp_path, "t,a\n2024-01-02,1\n2024-01-01,\n", name="gap.csv")
    with pytest.raises(UserError, match=r"line 3, column 'a': missing value"):
        read_series_csv(path, ["a"], "t")
    assert caplog.text == ""


def test_chronological_split_fractions_and_counts():
    assert chronological_split(100, [0.7, 0.1, 0.2]) == [(0, 70), (70, 80), (80, 100)]
    for n in (144, 3650):  # each part rounded on its own would ask for one row too many
        parts = chronological_split(n, [0.7, 0.15, 0.15])
        assert parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert chronological_split(144, [0.7, 0.15, 0.15]) == [(0, 101), (101, 122), (122, 144)]  # 100.8 rows: 101
    assert chronological_split(100, [50, 20, 20]) == [(0, 50), (50, 70), (70, 90)]
    assert chronological_split(100, [0.9, 0.1, 0]) == [(0, 90), (90, 100), (100, 100)]  # a 0 among fractions
    with pytest.raises(UserError, match=r"must be all fractions \(<= 1\) or all whole row counts, got \[0.5, 20, 0\]"):
        chronological_split(100, [0.5, 20, 0])
    with pytest.raises(UserError, match="asks for 120 rows"):
        chronological_split(100, [60, 60, 0])


@pytest.mark.parametrize("split", [[0.5, 0.5], [0.5, 0.2, 0.1, 0.1], "abc", ["a", 0.1, 0.1], [True, 0.1, 0.1]])
def test_a_split_is_three_numbers(split):
    with pytest.raises(UserError, match=r"split must be 3 non-negative fractions or row counts, got"):
        chronological_split(100, split)


def test_an_unknown_missing_policy_is_refused_even_without_gaps(tmp_path):
    with pytest.raises(UserError, match=r"missing must be one of \['error', 'interpolate', 'skip'\], got 'foo'"):
        read_series_csv(write(tmp_path, "t,a\n1,1\n2,2\n"), ["a"], missing="foo")


def test_skipping_leaves_rows_with_a_missing_value_out_and_keeps_them_apart(tmp_path, caplog):
    path = write(tmp_path, "t,a,b\n2024-01-01,1,5\n2024-01-02,,6\n2024-01-03,3,7\n2024-01-04,4,NaN\n2024-01-05,5,9\n")
    series = read_series_csv(path, time_column="t", missing="skip")
    np.testing.assert_array_equal(series.values, [[1, 5], [3, 7], [5, 9]])
    assert list(series.timestamps.day) == list(series.clock.day) == [1, 3, 5] and list(series.rows) == [0, 2, 4]
    assert list(series.skipped.timestamps.day) == [2, 4] and list(series.skipped.rows) == [1, 3]
    np.testing.assert_array_equal(series.skipped.values, [[np.nan, 6], [4, np.nan]])
    assert "2 row(s) with a missing value skipped, the first on line 3, column 'a'" in caplog.text
    numbered = read_series_csv(path, ["a"], missing="skip")  # no time column: the rows keep their numbers
    assert list(numbered.timestamps) == [0, 2, 3, 4] and numbered.row_names([1]) == ["row 2"]
    with pytest.raises(UserError, match="every row misses a value"):
        read_series_csv(write(tmp_path, "a\n\n\nNaN\n"), ["a"], missing="skip")
    from gru_suite_plugins.forecasting.task import ForecastingTask

    assert dict(ForecastingTask.choices)["data.missing"] == ("error", "interpolate")  # a window must not span a gap


def test_timestamps_out_of_order_are_a_warning_naming_the_first_line(tmp_path, caplog):
    path = write(tmp_path, "t,a\n2024-01-01 00:00,1\n2024-01-01 02:00,2\n2024-01-01 01:00,3\n2024-01-01 01:00,4\n")
    series = read_series_csv(path, ["a"], "t")
    assert series.values[:, 0].tolist() == [1, 2, 3, 4]  # file order kept
    assert "2 timestamps are not after the one before them (first: line 4, 2024-01-01 01:00:00 after " \
           "2024-01-01 02:00:00)" in caplog.text


def test_scaler_fits_train_only_and_inverts():
    train = np.array([[0.0, 10.0], [2.0, 30.0]])
    scaler = StandardScaler.fit(train)
    z = scaler.transform(np.array([[1.0, 20.0], [4.0, 50.0]]))
    np.testing.assert_allclose(z, [[0, 0], [3, 3]])
    back = scaler.inverse(torch.tensor(z[:, 1:]), [1])
    np.testing.assert_allclose(back.numpy()[:, 0], [20, 50])
    restored = StandardScaler.from_state(scaler.state_dict())
    np.testing.assert_allclose(restored.mean, scaler.mean)


def test_a_constant_column_is_centred_not_blown_up():
    values = np.array([[8.3985, 1.0], [8.3985, 2.0], [8.3985, 3.0]] * 200, dtype=np.float32)
    assert values[:, 0].std() > 1e-12  # float32 rounding: not 0 although every value is the same
    scaler = StandardScaler.fit(values)
    assert scaler.std.tolist() == [1.0, pytest.approx(values[:, 1].std())]
    assert scaler.transform(np.array([[9.3985, 2.0]]))[0, 0] == pytest.approx(1.0, abs=1e-6)  # not 1e6
    assert scaler.transform(values[:1])[0, 0] == 0.0


def test_values_whose_squares_overflow_float32_are_scaled_finitely():
    values = np.array([[1.0], [2e19], [-3.4e38], [3.4e38]], dtype=np.float32)  # all within float32
    scaler = StandardScaler.fit(values)
    z = scaler.transform(values)
    assert np.isfinite(scaler.std).all() and np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 0], (values[:, 0] - values[:, 0].astype(np.float64).mean())
                               / values[:, 0].astype(np.float64).std(), rtol=1e-6)


def test_windows_are_lazy_views_with_correct_content():
    values = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    ds = WindowDataset(values, lookback=4, horizon=3, target_columns=[1], origins=window_origins(0, 20, 4, 3))
    assert len(ds) == 14
    assert ds._inputs.untyped_storage().data_ptr() == values.untyped_storage().data_ptr()
    x, y, origins = ds.__getitems__([0, 13])
    torch.testing.assert_close(x[0], values[0:4])
    torch.testing.assert_close(y[0], values[4:7, 1:])
    torch.testing.assert_close(x[1], values[13:17])
    torch.testing.assert_close(y[1], values[17:20, 1:])
    assert origins.tolist() == [4, 17]  # each window's first target row


def test_future_window_has_unknown_targets():
    values = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    ds = WindowDataset(values, 3, 2, [0], range(8, 11, 2))
    x, y, _ = ds.__getitems__([0, 1])
    torch.testing.assert_close(y[0], values[8:10])
    assert torch.isnan(y[1]).all()
    torch.testing.assert_close(x[1], values[7:10])


def test_val_windows_reach_back_into_train_for_inputs_only():
    origins = window_origins(50, 70, lookback=10, horizon=5)
    assert origins.start == 50 and origins[-1] + 5 == 70


def test_batch_loader_yields_whole_batches():
    values = torch.randn(50, 1)
    ds = WindowDataset(values, 5, 1, [0], window_origins(0, 50, 5, 1))
    batches = list(batch_loader(ds, batch_size=16))
    assert [b[0].shape[0] for b in batches] == [16, 16, 13]
    assert batches[0][0].shape == (16, 5, 1) and batches[0][1].shape == (16, 1, 1)


def test_calendar_features_encode_the_phase_of_each_cycle():
    from gru_suite.timeseries import Calendar

    stamps = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 06:00", "2024-01-04 12:00"])  # Monday, Thursday
    both = Calendar(("time_of_day", "day_of_week"))
    features = both.features(stamps)
    assert features.dtype == np.float32 and features.shape == (3, 4) == (3, both.width)  # sines, then cosines
    np.testing.assert_allclose(features[:, [0, 2]], [[0, 1], [1, 0], [0, -1]], atol=1e-6)  # time of day
    np.testing.assert_allclose(features[:, [1, 3]], [[0, 1], [np.sin(np.pi / 14), np.cos(np.pi / 14)], [0, -1]],
                               atol=1e-6)  # day of week: Thursday noon is half way through the week
    tokyo = Calendar(("time_of_day",)).features(stamps.tz_localize("Asia/Tokyo"))  # the local wall clock counts
    np.testing.assert_allclose(tokyo, features[:, [0, 2]], atol=1e-6)
    for stamp, row in zip(stamps.tz_localize("Asia/Tokyo"), features):  # one stamp at a time, as streams give them
        np.testing.assert_allclose(both.row(stamp), row, atol=1e-6)
    three = Calendar(("time_of_day",), harmonics=3)
    harmonics = three.features(stamps)  # sin(phase), sin(2 phase), ..., then cosines
    assert harmonics.shape == (3, 6) and three.width == 6
    np.testing.assert_allclose(harmonics[1], [1, 0, -1, 0, -1, 0], atol=1e-6)  # 06:00: a quarter of the day
    np.testing.assert_allclose(three.row(stamps[1]), harmonics[1], atol=1e-6)
    assert Calendar().features(stamps).shape == (3, 0) and Calendar().width == 0
    with pytest.raises(UserError, match=r"task.data.calendar: unknown feature\(s\) \['hour'\]"):
        Calendar(("hour",))
    with pytest.raises(UserError, match=r"s.csv, line 3: no timestamp, which calendar features need"):
        Calendar(("time_of_day",)).features(pd.DatetimeIndex(["2024-01-01", None]), "s.csv")
    with pytest.raises(UserError, match=r"s.csv: calendar features need a time column"):
        Calendar(("time_of_day",)).features(pd.RangeIndex(3), "s.csv")


def test_future_timestamps_keep_the_series_step_when_a_row_near_the_end_is_missing():
    hourly = pd.date_range("2024-01-01", periods=60, freq="h")
    gappy = SimpleNamespace(timestamps=hourly.delete(-2))  # 58 hourly steps and one of two hours at the end
    future = future_timestamps(gappy, np.arange(59, 62))
    assert list(future) == list(pd.date_range(hourly[-1] + pd.Timedelta(hours=1), periods=3, freq="h"))
    month_ends = SimpleNamespace(timestamps=pd.date_range("2020-01-31", periods=12, freq="ME"))
    assert future_timestamps(month_ends, np.array([12]))[0] == pd.Timestamp("2021-01-31")
    trading = SimpleNamespace(timestamps=pd.bdate_range("2024-01-01", periods=60).delete(55))  # with a holiday
    assert list(future_timestamps(trading, np.arange(59, 62))) == list(pd.bdate_range("2024-03-25", periods=3))
    two_days = SimpleNamespace(timestamps=pd.DatetimeIndex(["2024-03-21", "2024-03-22"]))  # Thursday, Friday
    assert future_timestamps(two_days, np.array([2]))[0] == pd.Timestamp("2024-03-23")  # too few to call weekdays
    jitter = pd.to_timedelta(np.random.default_rng(0).uniform(-1, 1, size=60), unit="s")  # a clock up to 1 s off
    steps = np.diff(future_timestamps(SimpleNamespace(timestamps=hourly + jitter), np.arange(59, 63)))
    assert (abs(steps - pd.Timedelta(hours=1)) < pd.Timedelta(seconds=0.5)).all()
    kept = np.sort(np.random.default_rng(1).choice(200, 90, replace=False))  # a sensor that lost over half its rows
    lossy = SimpleNamespace(timestamps=pd.date_range("2024-01-01", periods=200, freq="10min")[kept])
    assert (np.diff(future_timestamps(lossy, np.arange(89, 92))) == pd.Timedelta(minutes=10)).all()
    daily = SimpleNamespace(timestamps=pd.date_range("2024-01-01", periods=60, freq="D").delete(55))  # weekends too
    assert list(future_timestamps(daily, np.arange(59, 62))) == list(pd.date_range("2024-03-01", periods=3))
    hours = np.cumsum([0] + [1, 2] * 20)  # steps of one and two hours, as many of each: the shorter
    uneven = SimpleNamespace(timestamps=pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h"))
    assert np.diff(future_timestamps(uneven, np.arange(40, 43))).tolist() == [pd.Timedelta(hours=1)] * 2
    newest_first = SimpleNamespace(timestamps=pd.date_range("2024-01-01", periods=30, freq="D")[::-1])
    assert list(future_timestamps(newest_first, np.arange(29, 32))) == [29, 30, 31]  # no future to name


def test_the_forecasting_task_reads_a_unix_time_column_in_its_time_unit(tmp_path):
    path = write(tmp_path, "timestamp,load\n" + "".join(f"{1_700_000_000 + 3600 * i},{i % 24}\n" for i in range(200)))
    overrides = [f"task.data.path={path}", "task.data.targets=[load]", "task.data.features=null",
                 "task.data.time_unit=s", "task.data.lookback=8", "task.data.horizon=2"]
    task = run.build_task(compose_train_config("forecasting", overrides, tmp_path / "cfg").task)
    assert task.datamodule().series.timestamps[0] == pd.Timestamp("2023-11-14 22:13:20", tz="UTC")


def test_the_forecasting_scaler_is_fitted_on_the_training_rows_only(tmp_path):
    levels = [10.0] * 70 + [1000.0] * 30  # the validation and test rows lie far from the training rows
    path = write(tmp_path, "timestamp,load\n" + "".join(f"{1_700_000_000 + 3600 * i},{v + i % 3}\n"
                                                        for i, v in enumerate(levels)))
    overrides = [f"task.data.path={path}", "task.data.targets=[load]", "task.data.features=null",
                 "task.data.time_unit=s", "task.data.lookback=8", "task.data.horizon=2", "task.data.split=[70,15,15]"]
    task = run.build_task(compose_train_config("forecasting", overrides, tmp_path / "cfg").task)
    task.datamodule()
    train = np.array([v + i % 3 for i, v in enumerate(levels[:70])])
    assert task.scaler.mean.tolist() == pytest.approx([train.mean()])
    assert task.scaler.std.tolist() == pytest.approx([train.std()])


def test_the_baselines_forecast_the_last_value_and_repeat_the_last_season(tmp_path):
    path = write(tmp_path, "timestamp,load\n" + "".join(f"{1_700_000_000 + 3600 * i},{i}\n" for i in range(60)))
    overrides = [f"task.data.path={path}", "task.data.targets=[load]", "task.data.features=null",
                 "task.data.time_unit=s", "task.data.lookback=8", "task.data.horizon=5", "task.data.season=3"]
    task = run.build_task(compose_train_config("forecasting", overrides, tmp_path / "cfg").task)
    task.datamodule()
    x = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    assert task._naive(x).flatten().tolist() == [7, 7, 7, 7, 7]
    assert task._seasonal_naive(x).flatten().tolist() == [5, 6, 7, 5, 6]


def test_a_window_running_past_the_end_keeps_the_targets_that_exist():
    values = torch.arange(60, dtype=torch.float32)[:, None]
    windows = WindowDataset(values, lookback=8, horizon=4, target_columns=[0], origins=range(55, 61))
    _, y, _ = windows.__getitems__([0, 2, 5])
    assert y[:, :, 0].tolist()[0] == [55, 56, 57, 58]
    assert np.array_equal(y[1, :, 0].numpy(), [57, 58, 59, np.nan], equal_nan=True)  # the rows that exist
    assert torch.isnan(y[2]).all()  # from the last row: all future


def test_future_timestamps_step_forward_past_repeated_timestamps():
    from gru_suite.timeseries import Series
    from gru_suite_plugins.forecasting.writer import future_timestamps

    hours = pd.date_range("2024-01-01", periods=30, freq="h")
    twice = Series(Path("x.csv"), pd.DatetimeIndex(np.repeat(hours.values, 2)), ["v"], np.zeros((60, 1), np.float32))
    assert list(future_timestamps(twice, np.arange(59, 62))) == [hours[-1], hours[-1] + pd.Timedelta("1h"),
                                                               hours[-1] + pd.Timedelta("2h")]


def test_a_season_longer_than_the_lookback_is_named(tmp_path, caplog):
    path = write(tmp_path, "timestamp,load\n" + "".join(f"2024-01-01 {i // 4:02d}:{15 * (i % 4):02d},{i}\n"
                                                         for i in range(96)))
    overrides = [f"task.data.path={path}", "task.data.targets=[load]", "task.data.features=null",
                 "task.data.lookback=8", "task.data.horizon=2", "task.data.season=24"]
    run.build_task(compose_train_config("forecasting", overrides, tmp_path / "cfg").task).datamodule()
    assert "task.data.season=24 is longer than the lookback of 8 rows a forecast sees: no seasonal-naive" in caplog.text


def test_a_misspelt_forecasting_target_is_named_as_a_missing_column(tmp_path):
    rows = "".join(f"2024-01-01 {i:02d}:00,{i},{i}\n" for i in range(24))
    path = write(tmp_path, "timestamp,load,temperature\n" + rows)
    overrides = [f"task.data.path={path}", "task.data.targets=[lod]", "task.data.features=[load,temperature]"]
    with pytest.raises(UserError, match=r"no column 'lod' \(task.data.targets\); columns are \['timestamp', 'load', "
                                        r"'temperature'\]"):
        run.build_task(compose_train_config("forecasting", overrides, tmp_path / "cfg").task).datamodule()
    default_features = [f"task.data.path={path}", "task.data.targets=[temp]"]  # features [load, temperature] unchanged
    path.write_text("timestamp,temp\n" + "".join(f"2024-01-01 {i:02d}:00,{i}\n" for i in range(24)))
    with pytest.raises(UserError, match=r"no column 'load' \(task.data.features\); columns are \['timestamp', "
                                        r"'temp'\]"):
        run.build_task(compose_train_config("forecasting", default_features, tmp_path / "cfg").task).datamodule()


@pytest.mark.parametrize("columns, message", [
    (["task.data.features=[load,load]"], r"^task.data.features names \['load'\] more than once$"),
    (["task.data.targets=[load,load]", "task.data.features=null"], r"^task.data.targets names \['load'\] more"),
])
def test_a_forecasting_column_named_twice_is_one_line(tmp_path, columns, message):
    path = write(tmp_path, "timestamp,load\n" + "".join(f"2024-01-01 {i:02d}:00,{i}\n" for i in range(24)))
    with pytest.raises(UserError, match=message):  # was a shape error inside the GRU
        run.build_task(compose_train_config("forecasting", [f"task.data.path={path}", *columns], tmp_path / "cfg")
                       .task).datamodule()


def test_an_empty_time_column_name_is_named_not_a_pandas_key_error(tmp_path):
    with pytest.raises(UserError, match=r"no time column '' \(task.data.time_column\); columns are \['t', 'a'\]"):
        read_series_csv(write(tmp_path, "t,a\n2024-01-01,2\n"), ["a"], "")


def test_zoned_stamps_are_plotted_as_utc_with_their_zone_and_others_as_they_are():
    stamps = pd.Series(pd.date_range("2024-10-27 01:30", periods=4, freq="30min", tz="Europe/Berlin"),
                       index=[5, 6, 7, 8])
    values, zone = plotted_times(stamps)  # across the night the clocks went back: UTC keeps the order
    assert str(zone) == "Europe/Berlin" and list(values.index) == [5, 6, 7, 8]
    assert list(values) == list(pd.date_range("2024-10-26 23:30", periods=4, freq="30min"))
    for plain in (pd.RangeIndex(4), pd.Series(pd.date_range("2024", periods=3))):
        assert plotted_times(plain)[0] is plain and plotted_times(plain)[1] is None


def test_a_zoned_series_forecasts_are_plotted_at_its_own_times_of_day():
    stamps = pd.date_range("2024-03-01", periods=200, freq="h", tz="Asia/Tokyo")
    series = SimpleNamespace(timestamps=stamps, values=np.arange(200.0)[:, None], columns=["y"])
    data = SimpleNamespace(series=series, sets={"predict": SimpleNamespace(origins=np.arange(150, 201))})
    predictions = [{"origin": torch.arange(150, 201), "forecast": torch.ones(51, 3, 1),
                    "actual": torch.zeros(51, 3, 1)}]
    ax = plot_forecasts(forecast_frame(predictions, data, ["y"]), data, ["y"]).axes[0]
    assert ax.get_lines()[0].get_xdata()[0] == np.datetime64("2024-03-06T12:00")  # row 141, 21:00 in Tokyo
    assert str(ax.xaxis.get_major_locator().tz) == "Asia/Tokyo" == str(ax.xaxis.get_major_formatter()._tz)
    assert ax.get_xlabel() == "time (Asia/Tokyo)"


def test_a_channel_independent_forecast_of_a_column_does_not_depend_on_the_others():
    torch.manual_seed(0)
    shape = dict(lookback=12, horizon=4, segment_length=3, embed_size=6, channel_independent=True)
    together = Forecaster(partial(GRUBackbone, hidden_size=8), n_features=3, target_columns=[0, 2], **shape).eval()
    alone = Forecaster(partial(GRUBackbone, hidden_size=8), n_features=1, target_columns=[0], **shape).eval()
    alone.load_state_dict(together.state_dict())  # the same weights serve every column
    x = torch.randn(5, 12, 3)
    with torch.no_grad():
        out = together(x)
        assert out.shape == (5, 4, 2)
        torch.testing.assert_close(out[:, :, 0:1], alone(x[:, :, 0:1]))
        torch.testing.assert_close(out[:, :, 1:2], alone(x[:, :, 2:3]))


def test_a_forecast_relative_to_the_last_value_moves_with_the_window():
    torch.manual_seed(0)
    model = Forecaster(partial(GRUBackbone, hidden_size=4), n_features=3, target_columns=[1], lookback=6, horizon=2,
                       normalize="last").eval()
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x + 5.0), model(x) + 5.0)  # a level shift of the window shifts its forecast
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
        torch.testing.assert_close(model(x), x[:, -1:, [1]].expand(-1, 2, -1))  # no change: the target's last value
