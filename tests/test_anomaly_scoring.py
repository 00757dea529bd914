"""Anomaly scoring: P/R/F1 variants and the NAB score, on hand-worked cases.

NAB facts used below (numenta/NAB nab/sweeper.py): S(x) = 2 / (1 + exp(5x)) - 1 = -tanh(2.5x);
a detection at row i of window [s, e] (width w = e - s + 1) scores tp * S(-(e - i + 1) / w) / S(-1);
a false positive at distance d after a window of width w scores fp * S(d / (w - 1)), and -fp
when no window precedes it or d / (w - 1) > 3. With 100 rows the first scored row is
min(floor(0.15 * 100), 750) = 15.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru_suite_plugins.anomaly.scoring import (
    NAB_PROFILES,
    evaluate_flags,
    event_prf,
    labels_from_windows,
    load_nab_windows,
    nab_probationary_length,
    nab_scaled_sigmoid,
    nab_score,
    point_adjust,
    point_adjusted_prf,
    point_prf,
    windows_from_labels,
)

S_MINUS_1 = math.tanh(2.5)  # S(-1) = 2 / (1 + e^-5) - 1 = 0.98661...

# Tiny example, 12 rows. Labelled segments: (1, 3), (6, 7), (10, 10).
LABELS = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
FLAGS = np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
WINDOWS = [(1, 3), (6, 7), (10, 10)]


def one_file(flags, windows, profile="standard", timestamps=None):
    """NAB score of a single file named 'f'."""
    return nab_score({"f": flags}, None if timestamps is None else {"f": timestamps}, {"f": windows}, profile)


def flags_at(n, *rows):
    flags = np.zeros(n, dtype=bool)
    flags[list(rows)] = True
    return flags


# ------------------------------------------------------------------ P/R/F1


def test_windows_and_labels_round_trip():
    assert windows_from_labels(LABELS) == WINDOWS
    assert windows_from_labels(np.zeros(3, dtype=bool)) == []
    np.testing.assert_array_equal(labels_from_windows(WINDOWS, 12), LABELS)


def test_point_prf():
    # Flags at 2, 5, 6, 8: TP = {2, 6}, FP = {5, 8}, FN = {1, 3, 7, 10}.
    # P = 2/4, R = 2/6, F1 = 2 * (1/2)(1/3) / (5/6) = 0.4.
    assert point_prf(FLAGS, LABELS) == pytest.approx((0.5, 1 / 3, 0.4))


def test_event_prf():
    # Windows hit: (1, 3) by 2 and (6, 7) by 6, (10, 10) missed -> R = 2/3.
    # Flagged events (2, 2), (5, 6), (8, 8): the first two overlap a window -> P = 2/3; F1 = 2/3.
    assert event_prf(FLAGS, WINDOWS) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # Flagged events (0, 0), (5, 5), (8, 8), one in the only window (0, 1): P = 1/3, R = 1, F1 = 1/2.
    assert event_prf(np.array([1, 0, 0, 0, 0, 1, 0, 0, 1, 0], dtype=bool), [(0, 1)]) == pytest.approx((1 / 3, 1, 0.5))


def test_point_adjusted_prf():
    # Segments (1, 3) and (6, 7) hold a flag, so they become fully flagged: flags 1,2,3,5,6,7,8.
    # TP = 5, FP = 2 (5, 8), FN = 1 (10): P = 5/7, R = 5/6, F1 = 2PR / (P + R) = 10/13.
    np.testing.assert_array_equal(np.flatnonzero(point_adjust(FLAGS, LABELS)), [1, 2, 3, 5, 6, 7, 8])
    assert point_adjusted_prf(FLAGS, LABELS) == pytest.approx((5 / 7, 5 / 6, 10 / 13))


def test_zero_denominators_count_as_zero():
    assert point_prf(np.zeros(4, dtype=bool), np.zeros(4, dtype=bool)) == (0.0, 0.0, 0.0)
    assert event_prf(np.zeros(4, dtype=bool), []) == (0.0, 0.0, 0.0)


def test_evaluate_flags_from_labels_or_windows():
    expected = {
        "point_precision": 0.5, "point_recall": 1 / 3, "point_f1": 0.4,
        "event_precision": 2 / 3, "event_recall": 2 / 3, "event_f1": 2 / 3,
        "pa_precision": 5 / 7, "pa_recall": 5 / 6, "pa_f1": 10 / 13,
    }
    assert evaluate_flags(FLAGS, LABELS) == pytest.approx(expected)
    assert evaluate_flags(FLAGS.astype(int), WINDOWS) == pytest.approx(expected)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        point_prf(FLAGS, LABELS[:-1])
    with pytest.raises(ValueError, match="boolean"):
        point_prf(FLAGS * 0.5, LABELS)
    with pytest.raises(ValueError, match="start <= end"):
        event_prf(FLAGS, [(3, 1)])


# ---------------------------------------------------------------------- NAB


def test_profiles_match_nab_config():
    # config/profiles.json
    assert {name: (p.tp, p.fp, p.fn) for name, p in NAB_PROFILES.items()} == {
        "standard": (1.0, 0.11, 1.0),
        "reward_low_FP_rate": (1.0, 0.22, 1.0),
        "reward_low_FN_rate": (1.0, 0.11, 2.0),
    }
    with pytest.raises(ValueError, match="unknown NAB profile"):
        one_file(np.zeros(10, dtype=bool), [], profile="strict")


def test_scaled_sigmoid():
    assert nab_scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab_scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab_scaled_sigmoid(0.0) == 0.0
    assert nab_scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab_scaled_sigmoid(3.5) == -1.0


def test_probationary_length():
    # min(floor(0.15 n), 0.15 * 5000 = 750)
    assert [nab_probationary_length(n) for n in (100, 4999, 5000, 10_000)] == [15, 749, 750, 750]


@pytest.mark.parametrize("profile", sorted(NAB_PROFILES))
def test_perfect_normalises_to_100_and_null_to_0(profile):
    # Window (40, 49). Perfect: one detection at 40 -> exactly tp = 1 per window.
    # Null: flagging nothing (-fn) beats flagging everything (25 rows before the window at -fp
    # each, 50 after it), so null = -fn and perfect = 1.
    fn = NAB_PROFILES[profile].fn
    perfect = one_file(flags_at(100, 40), [(40, 49)], profile)
    null = one_file(np.zeros(100, dtype=bool), [(40, 49)], profile)
    assert (perfect.null, perfect.perfect) == (-fn, 1.0)
    assert perfect.normalized == pytest.approx(100.0)
    assert null.normalized == pytest.approx(0.0)


def test_null_detector_may_flag_everything():
    # 20 rows (first scored row 3), window (3, 18). Flagging everything: window start -> +1, and the
    # one row after it (d = 1, w = 16) -> 0.11 * S(1/15) = -0.11 tanh(1/6); that beats -1 (nothing).
    result = one_file(np.zeros(20, dtype=bool), [(3, 18)])
    assert result.null == pytest.approx(1 - 0.11 * math.tanh(2.5 / 15))


def test_a_window_that_starts_in_the_probationary_period_and_ends_after_it_is_scored():
    # 100 rows: rows 0-14 are probationary. Window (10, 20) ends in scored rows, so it counts; a detection at
    # row 18 sits at position -(20 - 18 + 1) / 11: S = tanh(7.5 / 11), divided by maxTP.
    assert one_file(flags_at(100, 18), [(10, 20)]).raw == pytest.approx(math.tanh(7.5 / 11) / S_MINUS_1)


def test_detection_at_window_start_scores_full_tp():
    # position -(49 - 40 + 1) / 10 = -1: S(-1) = 0.9866, divided by maxTP = S(-1) -> exactly tp.
    result = one_file(flags_at(100, 40), [(40, 49)])
    assert result.raw == 1.0
    assert (result.per_file["f"].tp, result.per_file["f"].fp, result.per_file["f"].fn) == (1, 0, 9)


def test_detection_at_window_end_scores_near_zero():
    # position -1/w: S = tanh(2.5 / w), then / S(-1). w = 10: 0.24491 / 0.98661 = 0.24824.
    assert one_file(flags_at(100, 49), [(40, 49)]).raw == pytest.approx(math.tanh(0.25) / S_MINUS_1)
    # A wide window, w = 500: tanh(0.005) / 0.98661 = 0.00507.
    wide = one_file(flags_at(2000, 1499), [(1000, 1499)]).raw
    assert wide == pytest.approx(0.0050678, abs=1e-6)


def test_only_earliest_detection_in_window_counts():
    # Detection at 42: position -(49 - 42 + 1) / 10 = -0.8 -> tanh(2) / tanh(2.5) = 0.97711.
    both = one_file(flags_at(100, 42, 47), [(40, 49)])
    assert both.raw == pytest.approx(math.tanh(2.0) / S_MINUS_1)
    assert both.raw == one_file(flags_at(100, 42), [(40, 49)]).raw
    assert both.per_file["f"].tp == 2


def test_false_positive_far_from_windows_costs_fp_weight():
    # No window at all: -0.11 exactly.
    assert one_file(flags_at(100, 60), []).raw == pytest.approx(-0.11)
    # Before the first window: -0.11, plus the missed window -1.
    assert one_file(flags_at(100, 20), [(40, 49)]).raw == pytest.approx(-1.11)
    # 28 rows after a window of width 10: 28 / 9 > 3 -> S = -1 -> -0.11, plus the missed window.
    assert one_file(flags_at(100, 77), [(40, 49)]).raw == pytest.approx(-1.11)
    assert one_file(flags_at(100, 60), [], "reward_low_FP_rate").raw == pytest.approx(-0.22)


def test_false_positive_right_after_window_costs_less():
    # Row 50, one after the window: 0.11 * S(1/9) = -0.11 * tanh(2.5/9) = -0.02979; window missed: -1.
    result = one_file(flags_at(100, 50), [(40, 49)])
    fp_part = result.raw + 1.0
    assert fp_part == pytest.approx(-0.11 * math.tanh(2.5 / 9))
    assert -0.11 < fp_part < 0
    assert result.per_file["f"].fp == 1


def test_one_row_window_then_false_positive_costs_full_fp():
    # NAB divides by (width - 1) = 0 here; the limit, S = -1, is used.
    assert one_file(flags_at(100, 40, 41), [(40, 40)]).raw == pytest.approx(1 - 0.11)


def test_missed_window_costs_fn_weight():
    assert one_file(np.zeros(100, dtype=bool), [(40, 49)]).raw == -1.0
    assert one_file(np.zeros(100, dtype=bool), [(40, 49)], "reward_low_FN_rate").raw == -2.0


def test_probationary_period_is_ignored():
    # Rows 0..14 are not scored: a flag at 10 counts neither as FP nor as anything else.
    result = one_file(flags_at(100, 10), [])
    assert result.raw == 0.0
    assert (result.per_file["f"].fp, result.per_file["f"].tn) == (0, 85)
    # A window wholly inside the probation gets no score part (not even -fn).
    assert one_file(flags_at(100, 12), [(5, 12)]).raw == 0.0
    # The cap: 10_000 rows -> first scored row 750.
    assert one_file(flags_at(10_000, 749), []).raw == 0.0
    assert one_file(flags_at(10_000, 750), []).raw == pytest.approx(-0.11)


def test_timestamp_windows_match_index_windows():
    stamps = pd.date_range("2014-04-01", periods=100, freq="5min")
    windows = [(str(stamps[40]), stamps[49])]
    flags = flags_at(100, 42, 50, 70)
    assert one_file(flags, windows, timestamps=stamps) == one_file(flags, [(40, 49)])
    assert one_file(flags, [(40, 49)], timestamps=np.arange(100)) == one_file(flags, [(40, 49)])
    with pytest.raises(ValueError, match="occurs 0 times"):
        one_file(flags, [("2014-04-01 03:21:00", stamps[49])], timestamps=stamps)
    with pytest.raises(ValueError, match="must not overlap"):
        one_file(flags, [(10, 20), (20, 30)])


def test_scores_sum_over_files():
    result = nab_score(
        {"a": flags_at(100, 40), "b": np.zeros(100, dtype=bool)}, None, {"a": [(40, 49)], "b": [(40, 49)]}, "standard"
    )
    # raw 1 - 1 = 0, null -2, perfect 2 -> 100 * 2 / 4 = 50.
    assert (result.raw, result.null, result.perfect, result.normalized) == (0.0, -2.0, 2.0, 50.0)
    with pytest.raises(ValueError, match="no windows for file 'c'"):
        nab_score({"c": np.zeros(10, dtype=bool)}, None, {}, "standard")


# ------------------------------------------------------- NAB windows file


@pytest.mark.parametrize("mark", ["", "\ufeff"])  # as some editors save UTF-8: with a byte-order mark
def test_load_nab_windows(mark, tmp_path):
    path = tmp_path / "combined_windows.json"
    path.write_text(mark + json.dumps({
        "realKnownCause/nyc_taxi.csv": [["2014-11-01 19:00:00.000000", "2014-11-02 20:00:00.000000"]],
        "artificialNoAnomaly/art_flatline.csv": [],
    }), encoding="utf-8")
    assert load_nab_windows(path) == {
        "realKnownCause/nyc_taxi.csv": [(pd.Timestamp("2014-11-01 19:00"), pd.Timestamp("2014-11-02 20:00"))],
        "artificialNoAnomaly/art_flatline.csv": [],
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ({"a.csv": [["2014-11-01 19:00:00"]]}, "key 'a.csv': expected a list of"),
        ({"a.csv": "2014-11-01"}, "key 'a.csv': expected a list of"),
        ({"a.csv": [["not a date", "2014-11-01"]]}, "key 'a.csv': unreadable timestamp"),
        ({"a.csv": [["2014-11-02", "2014-11-01"]]}, "key 'a.csv': every window needs start <= end"),
        ({"a.csv": [["2014-11-01 00:00:00+00:00", "2014-11-02"]]}, "key 'a.csv': a window's start and end must both"),
        ([["2014-11-01", "2014-11-02"]], "expected an object"),
    ],
)
def test_load_nab_windows_rejects_malformed(tmp_path, content, message):
    path = tmp_path / "bad_windows.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        load_nab_windows(path)
    assert "bad_windows.json" in str(error.value)
    path.write_text(json.dumps(content), encoding="utf-16")
    with pytest.raises(ValueError, match=r"bad_windows\.json: not UTF-8 JSON"):
        load_nab_windows(path)


NAB_ROOT = Path("/work/shared/data/anomaly/nab")


@pytest.mark.skipif(not (NAB_ROOT / "labels" / "combined_windows.json").is_file(), reason="NAB data not present")
@pytest.mark.parametrize("profile", sorted(NAB_PROFILES))
def test_real_nab_null_and_perfect(profile):
    windows = load_nab_windows(NAB_ROOT / "labels" / "combined_windows.json")
    files = {name: w for name, w in windows.items() if (NAB_ROOT / "data" / name).is_file()}
    assert files, "no NAB data files next to the labels"
    stamps = {
        name: pd.DatetimeIndex(pd.read_csv(NAB_ROOT / "data" / name, usecols=["timestamp"])["timestamp"])
        for name in files
    }
    none = {name: np.zeros(len(ts), dtype=bool) for name, ts in stamps.items()}
    perfect = {name: ts.isin([start for start, _ in files[name]]) for name, ts in stamps.items()}
    assert nab_score(none, stamps, files, profile).normalized == pytest.approx(0.0, abs=1e-9)
    assert nab_score(perfect, stamps, files, profile).normalized == pytest.approx(100.0)
