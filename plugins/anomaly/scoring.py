"""Anomaly-detection evaluation: point, event and point-adjusted P/R/F1, and the NAB score.

The NAB rules follow the Numenta Anomaly Benchmark source (github.com/numenta/NAB):
``nab/sweeper.py`` (``scaledSigmoid``, ``Sweeper._getProbationaryLength``,
``Sweeper.calcSweepScore``, ``Sweeper.calcScoreByThreshold``), ``nab/scorer.py``
(``scoreCorpus`` totals), ``nab/runner.py`` (``Runner.normalize``), ``nab/labeler.py``
(``CorpusLabel.getWindows``), ``nab/detectors/null/null_detector.py``, ``nab/optimizer.py``
and ``config/profiles.json``. Each rule below names the function it follows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

IndexWindow = tuple[int, int]


class PRF(NamedTuple):
    """Precision, recall and F1; a ratio with a zero denominator counts as 0."""

    precision: float
    recall: float
    f1: float


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _prf(precision: float, recall: float) -> PRF:
    return PRF(precision, recall, _ratio(2 * precision * recall, precision + recall))


def _as_bool(values: Any, name: str) -> np.ndarray:
    """A 1-D boolean copy of `values` (booleans or 0/1 integers)."""
    array = np.asarray(values)
    integral = np.issubdtype(array.dtype, np.integer) and np.isin(array, (0, 1)).all()
    if array.ndim != 1 or not (array.size == 0 or array.dtype == bool or integral):
        raise ValueError(f"{name} must be a 1-D boolean (or 0/1) array, got dtype {array.dtype}, shape {array.shape}")
    return array.astype(bool)


def _same_length(flags: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    flags, labels = _as_bool(flags, "flags"), _as_bool(labels, "labels")
    if len(flags) != len(labels):
        raise ValueError(f"flags and labels differ in length: {len(flags)} vs {len(labels)}")
    return flags, labels


def _index_windows(windows: Sequence[Sequence[int]], length: int) -> list[IndexWindow]:
    """Check inclusive (start, end) integer windows against a series of `length` points."""
    checked = []
    for window in windows:
        if len(window) != 2 or not all(isinstance(b, (int, np.integer)) for b in window):
            raise ValueError(f"window {window!r} is not an inclusive (start, end) pair of integer indices")
        start, end = int(window[0]), int(window[1])
        if not 0 <= start <= end < length:
            raise ValueError(f"window ({start}, {end}) must satisfy 0 <= start <= end < {length}")
        checked.append((start, end))
    return checked


def windows_from_labels(labels: Any) -> list[IndexWindow]:
    """Maximal runs of True in `labels`, as inclusive (start, end) index windows."""
    mask = _as_bool(labels, "labels").astype(np.int8)
    edges = np.diff(np.concatenate(([0], mask, [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e) - 1) for s, e in zip(starts, stops)]


def labels_from_windows(windows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Boolean mask of `length` points, True inside the inclusive index windows."""
    labels = np.zeros(length, dtype=bool)
    for start, end in _index_windows(windows, length):
        labels[start : end + 1] = True
    return labels


def point_prf(flags: Any, labels: Any) -> PRF:
    """Point-wise precision/recall/F1 of boolean flags against boolean labels."""
    flags, labels = _same_length(flags, labels)
    hits = np.count_nonzero(flags & labels)
    return _prf(_ratio(hits, np.count_nonzero(flags)), _ratio(hits, np.count_nonzero(labels)))


def event_prf(flags: Any, windows: Sequence[Sequence[int]]) -> PRF:
    """Event-wise P/R/F1. Recall: share of windows holding at least one flag. Precision: share
    of flagged events (maximal runs of consecutive flags) that overlap at least one window."""
    flags = _as_bool(flags, "flags")
    windows = _index_windows(windows, len(flags))
    covered = labels_from_windows(windows, len(flags))
    events = windows_from_labels(flags)
    # Prefix sums: a run [s, e] holds a True of `mask` iff cum[e + 1] > cum[s].
    flag_cum = np.concatenate(([0], np.cumsum(flags)))
    cover_cum = np.concatenate(([0], np.cumsum(covered)))
    detected = sum(flag_cum[e + 1] > flag_cum[s] for s, e in windows)
    true_events = sum(cover_cum[e + 1] > cover_cum[s] for s, e in events)
    return _prf(_ratio(true_events, len(events)), _ratio(detected, len(windows)))


def point_adjust(flags: Any, labels: Any) -> np.ndarray:
    """Flags after point adjustment (Xu et al. 2018, OmniAnomaly): a labelled segment with
    any flag in it is flagged whole."""
    flags, labels = _same_length(flags, labels)
    adjusted = flags.copy()
    for start, end in windows_from_labels(labels):
        if flags[start : end + 1].any():
            adjusted[start : end + 1] = True
    return adjusted


def point_adjusted_prf(flags: Any, labels: Any) -> PRF:
    """Point-wise P/R/F1 of the point-adjusted flags."""
    return point_prf(point_adjust(flags, labels), labels)


def evaluate_flags(flags: Any, labels_or_windows: Any) -> dict[str, float]:
    """Point, event and point-adjusted P/R/F1 of one series, keyed for logging.

    `labels_or_windows` is a boolean/0-1 label array as long as `flags`, or a list of inclusive
    (start, end) index windows; labels are turned into windows by `windows_from_labels`."""
    flags = _as_bool(flags, "flags")
    candidate = np.asarray(labels_or_windows)
    if candidate.ndim == 1 and candidate.size:
        flags, labels = _same_length(flags, candidate)
        windows = windows_from_labels(labels)
    else:
        windows = _index_windows(labels_or_windows, len(flags))
        labels = labels_from_windows(windows, len(flags))
    metrics = {
        "point": point_prf(flags, labels),
        "event": event_prf(flags, windows),
        "pa": point_adjusted_prf(flags, labels),
    }
    return {f"{kind}_{field}": value for kind, prf in metrics.items() for field, value in prf._asdict().items()}


# ---------------------------------------------------------------------------- NAB


@dataclass(frozen=True)
class NabProfile:
    """A NAB cost matrix (config/profiles.json "CostMatrix") less its tn weight, which NAB's scorer never uses."""

    tp: float
    fp: float
    fn: float


# config/profiles.json
NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": NabProfile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": NabProfile(tp=1.0, fp=0.11, fn=2.0),
}
# nab/runner.py Runner.__init__: self.probationaryPercent = 0.15
NAB_PROBATION_PERCENT = 0.15


@dataclass(frozen=True)
class NabFileScore:
    """One file's raw NAB score and its point counts over the scored (post-probation) rows."""

    raw: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class NabResult:
    """Corpus NAB score: raw total, null and perfect baselines, normalised score, per file."""

    raw: float
    null: float
    perfect: float
    normalized: float
    per_file: dict[str, NabFileScore]


def nab_probationary_length(length: int) -> int:
    """Index of the first scored row: rows i < min(floor(0.15 * n), 0.15 * 5000) are ignored
    (nab/util.py getProbationPeriod, nab/sweeper.py Sweeper._getProbationaryLength)."""
    return math.ceil(min(math.floor(NAB_PROBATION_PERCENT * length), NAB_PROBATION_PERCENT * 5000))


def nab_scaled_sigmoid(position: Any) -> Any:
    """NAB's S(x) = 2 / (1 + exp(5x)) - 1, and -1 for x > 3 (nab/sweeper.py scaledSigmoid)."""
    x = np.asarray(position, dtype=float)
    with np.errstate(over="ignore"):
        return np.where(x > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0)[()]


def _nab_profile(profile: str) -> NabProfile:
    if profile not in NAB_PROFILES:
        raise ValueError(f"unknown NAB profile {profile!r}; expected one of {sorted(NAB_PROFILES)}")
    return NAB_PROFILES[profile]


def _nab_windows(name: str, windows: Sequence[Sequence[Any]], timestamps: Any, length: int) -> np.ndarray:
    """File `name`'s windows as a (k, 2) array of inclusive row indices, sorted and disjoint.

    With timestamps, each bound must occur exactly once among them (nab/labeler.py
    CorpusLabel.getWindows); rows are then handled by position, as nab/sweeper.py does, so
    repeated or unordered timestamps elsewhere (present in NAB's own files) are fine.
    Without timestamps, bounds are row indices."""
    if timestamps is None:
        pairs = _index_windows(windows, length)
    else:
        index = pd.Index(timestamps)
        if len(index) != length:
            raise ValueError(f"{name}: {len(index)} timestamps for {length} flags")
        if any(len(window) != 2 for window in windows):
            raise ValueError(f"{name}: every window must be a (start, end) pair")
        convert = pd.Timestamp if isinstance(index, pd.DatetimeIndex) else (lambda bound: bound)
        positions = []
        for bound in (convert(bound) for window in windows for bound in window):
            matches = np.flatnonzero(index == bound)
            if matches.size != 1:
                raise ValueError(f"{name}: window bound {bound} occurs {matches.size} times in the timestamps, "
                                 "not once")
            positions.append(int(matches[0]))
        pairs = list(zip(positions[::2], positions[1::2]))
        if any(start > end for start, end in pairs):
            raise ValueError(f"{name}: a window ends before it starts")
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if (array[1:, 0] <= array[:-1, 1]).any():
        raise ValueError(f"{name}: windows must be sorted and must not overlap or share a row")
    return array


def nab_row_scores(length: int, windows: np.ndarray, cost: NabProfile) -> np.ndarray:
    """Per row of a file of `length` rows with index `windows` (K, 2), the score a detection there earns
    (nab/sweeper.py Sweeper.calcSweepScore): in a window, tp * S(-(right - i + 1) / width) / S(-1); outside,
    fp * S((i - prevRight) / (prevWidth - 1)) after a window and fp * -1 before the first."""
    rows = np.arange(length)
    scores = np.empty(length)
    in_window = labels_from_windows(windows.tolist(), length)
    max_tp = nab_scaled_sigmoid(-1.0)
    for start, end in windows:
        inside = rows[start : end + 1]
        scores[inside] = cost.tp * nab_scaled_sigmoid(-(end - inside + 1) / (end - start + 1)) / max_tp
    outside = np.flatnonzero(~in_window)
    ends, widths = windows[:, 1], windows[:, 1] - windows[:, 0] + 1
    previous = np.searchsorted(ends, outside) - 1
    position = np.full(outside.size, np.inf)
    after = previous >= 0
    distance, prev_width = outside[after] - ends[previous[after]], widths[previous[after]]
    # A one-row window would divide by zero in NAB; its limit (an infinite position) is S = -1.
    position[after] = np.divide(distance, prev_width - 1, out=np.full(distance.shape, np.inf), where=prev_width > 1)
    scores[outside] = cost.fp * nab_scaled_sigmoid(position)
    return scores


def _nab_file(flags: np.ndarray, windows: np.ndarray, cost: NabProfile) -> NabFileScore:
    """One file's NAB score for detections `flags` (nab/sweeper.py Sweeper.calcSweepScore and
    Sweeper.calcScoreByThreshold at the threshold whose detections are `flags`)."""
    length = len(flags)
    scored = np.arange(length) >= nab_probationary_length(length)  # 'probationary' rows are dropped
    in_window = labels_from_windows(windows.tolist(), length)
    detections = flags & scored
    row_scores = nab_row_scores(length, windows, cost)

    raw = 0.0
    for start, end in windows:
        if not scored[end]:
            continue  # no scored row carries this window's name, so it gets no score part at all
        # _prepareScoreByThresholdParts: each window starts at -fnWeight; calcScoreByThreshold
        # keeps the max sweep score of its detections, which is the earliest one (S decreases).
        hits = row_scores[start : end + 1][detections[start : end + 1]]
        raw += max(-cost.fn, float(hits.max())) if hits.size else -cost.fn

    # Outside windows every detection adds its score.
    false = np.flatnonzero(detections & ~in_window)
    raw += float(np.sum(row_scores[false]))

    return NabFileScore(
        raw=raw,
        tp=int(np.count_nonzero(detections & in_window)),
        fp=int(false.size),
        fn=int(np.count_nonzero(scored & in_window & ~flags)),
        tn=int(np.count_nonzero(scored & ~in_window & ~flags)),
    )


def nab_score(
    flags_per_file: Mapping[str, Any],
    timestamps_per_file: Mapping[str, Any] | None,
    windows_per_file: Mapping[str, Sequence[Sequence[Any]]],
    profile: str = "standard",
) -> NabResult:
    """NAB score of boolean detections over a corpus of files.

    Windows are (start, end) pairs of timestamps, each occurring exactly once in the file's
    timestamps, or inclusive row indices when `timestamps_per_file` is None. Files are those of
    `flags_per_file`. NAB's runner flags with the one threshold per detector and profile that
    maximises the labelled corpus score (nab/optimizer.py optimizeThreshold); here the flags are
    given as they are, so no label-tuned threshold is implied.

    raw: sum of file scores (nab/scorer.py scoreCorpus "Totals"). null: the null detector, a
    constant anomaly score (nab/detectors/null) at its best threshold, i.e. the better of
    flagging nothing and flagging everything. perfect: number of windows * tpWeight.
    normalized: 100 * (raw - null) / (perfect - null) (nab/runner.py Runner.normalize), NaN when
    perfect == null.
    """
    cost = _nab_profile(profile)
    per_file: dict[str, NabFileScore] = {}
    null_none = null_all = 0.0
    n_windows = 0
    for name, file_flags in flags_per_file.items():
        if name not in windows_per_file:
            raise ValueError(f"no windows for file {name!r} (use [] for a file without anomalies)")
        if timestamps_per_file is not None and name not in timestamps_per_file:
            raise ValueError(f"no timestamps for file {name!r}")
        flags = _as_bool(file_flags, f"flags of {name!r}")
        timestamps = None if timestamps_per_file is None else timestamps_per_file[name]
        windows = _nab_windows(name, windows_per_file[name], timestamps, len(flags))
        per_file[name] = _nab_file(flags, windows, cost)
        null_none += _nab_file(np.zeros_like(flags), windows, cost).raw
        null_all += _nab_file(np.ones_like(flags), windows, cost).raw
        n_windows += len(windows)
    raw = sum(score.raw for score in per_file.values())
    null = max(null_none, null_all)
    perfect = n_windows * cost.tp
    normalized = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
    return NabResult(raw=raw, null=null, perfect=perfect, normalized=normalized, per_file=per_file)


def load_nab_windows(path: str | Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """Read NAB's labels/combined_windows.json: data file -> list of (start, end) timestamps."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark too, as CSVs may have
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected an object mapping data files to lists of windows")
    windows: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for key, value in content.items():
        pairs = value if isinstance(value, list) else [None]
        if not all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(b, str) for b in pair)
                   for pair in pairs):
            raise ValueError(f"{path}: key {key!r}: expected a list of [start, end] timestamp strings, got {value!r}")
        try:
            parsed = [(pd.Timestamp(start), pd.Timestamp(end)) for start, end in pairs]
        except ValueError as error:
            raise ValueError(f"{path}: key {key!r}: unreadable timestamp ({error})") from error
        if any((start.tz is None) != (end.tz is None) for start, end in parsed if not (pd.isna(start) or pd.isna(end))):
            raise ValueError(f"{path}: key {key!r}: a window's start and end must both have a UTC offset or both have "
                             f"none, got {value!r}")
        if any(pd.isna(start) or pd.isna(end) or start > end for start, end in parsed):
            raise ValueError(f"{path}: key {key!r}: every window needs start <= end, got {value!r}")
        windows[key] = parsed
    return windows
