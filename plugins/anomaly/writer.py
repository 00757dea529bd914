"""Per-series anomaly artifacts: a CSV of scores and flags and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gru_suite.atomic import save_figure, write_csv
from gru_suite.timeseries import Series, plotted_times
from gru_suite_plugins.anomaly.data import StreamData, report_stem
from gru_suite_plugins.anomaly.flagging import ScoredSeries

REPORT_COLUMNS = ("timestamp", "raw_score", "score", "threshold", "flag", "reason", "label")


def value_columns(columns: list[str]) -> list[str]:
    """The report's names for the series' value `columns`: their own, or `value_<name>` for one named like a
    report column (a series with a `score` column keeps it beside the anomaly score), prefixed again while another
    column has that name (`score` beside `value_score`: `value_value_score`)."""
    taken = {*REPORT_COLUMNS, *columns}
    names = []
    for name in columns:
        if name in REPORT_COLUMNS:
            while name in taken:
                name = f"value_{name}"
            taken.add(name)
        names.append(name)
    return names


def report_frame(stream: StreamData, scored: ScoredSeries, unscored_rows: int = 0) -> pd.DataFrame:
    """timestamp, one column per value (`value_columns`), raw_score and score (empty for the first `unscored_rows`,
    which the detector cannot score yet), threshold (the series' own, or the row's where it moves: SPOT), flag, reason
    (score, range or both; empty when not flagged), and label when labels are known."""
    series = stream.series
    frame = pd.DataFrame({"timestamp": series.timestamps})
    for i, column in enumerate(value_columns(series.columns)):
        frame[column] = series.values[:, i]
    frame["raw_score"] = scored.raw
    frame["score"] = scored.score
    frame.loc[: unscored_rows - 1, ["raw_score", "score"]] = np.nan
    frame["threshold"] = scored.thresholds if scored.thresholds is not None else scored.threshold
    frame["flag"] = scored.flags.astype(int)
    frame["reason"] = flag_reasons(scored)
    labels = stream.labels()
    if labels is not None:
        frame["label"] = labels.astype(int)
    return frame


def with_skipped_rows(frame: pd.DataFrame, series: Series) -> pd.DataFrame:
    """`report_frame`'s `frame` with the rows `task.data.missing=skip` left out put back in file order, marked
    `reason` "missing": their values as read (empty where missing), no scores, flag 0, no label."""
    skipped = series.skipped
    if skipped is None:
        return frame
    marked = pd.DataFrame({"timestamp": skipped.timestamps})
    for i, column in enumerate(value_columns(series.columns)):
        marked[column] = skipped.values[:, i]
    marked["flag"], marked["reason"] = 0, "missing"
    merged = pd.concat([frame.set_axis(series.rows), marked.set_axis(skipped.rows)]).sort_index()
    if "label" in merged:
        merged["label"] = merged["label"].astype("Int64")  # empty for the marked rows
    return merged.reset_index(drop=True)


def flag_reasons(scored: ScoredSeries) -> np.ndarray:
    """Why each row is flagged: "score" (over the threshold), "range" (beyond the range seen so far), "score+range",
    or "" (not flagged)."""
    n = len(scored.flags)
    over = scored.over_threshold if scored.over_threshold is not None else np.zeros(n, dtype=bool)
    beyond = scored.beyond_range if scored.beyond_range is not None else np.zeros(n, dtype=bool)
    reasons = np.array(["", "score", "range", "score+range"], dtype=object)[over.astype(int) + 2 * beyond.astype(int)]
    return np.where(scored.flags, reasons, "")


LOGIT_EDGE = 1e-9  # likelihoods of exactly 0 or 1 are drawn this close to them


def plot_report(stream: StreamData, frame: pd.DataFrame, threshold: float) -> Figure:
    """The series with labelled windows (green) and flags (red); below, the score (a gap where there is none) and
    threshold."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x, zone = plotted_times(frame["timestamp"])
    shown = value_columns(stream.series.columns)
    for column in shown:
        top.plot(x, frame[column], lw=0.8, label=column)
    for number, (start, end) in enumerate(stream.windows or []):
        top.axvspan(x.iloc[start], x.iloc[end], color="tab:green", alpha=0.2,
                    label=None if number else "labelled window")
    flagged = frame["flag"].to_numpy() == 1
    # each run of flagged rows shaded from its first timestamp to its last, all runs in one artist
    top.fill_between(x, 0, 1, where=flagged, transform=top.get_xaxis_transform(), color="tab:red", alpha=0.35, lw=0)
    by_range = flagged & (frame["reason"] == "range").to_numpy()
    for rows, colour, label in ((flagged & ~by_range, "tab:red", "flagged: score"),
                                (by_range, "tab:orange", "flagged: beyond the range seen")):
        if rows.any():
            top.scatter(x[rows], frame.loc[rows, shown[0]], color=colour, s=12, zorder=3, label=label)
    if stream.probation < len(x):  # a series all probation has nothing scored
        top.axvline(x.iloc[stream.probation], color="0.4", ls="--", lw=1, label="end of probation")
    top.legend(loc="upper left", fontsize=8)
    top.set_ylabel("value")
    labelled = "labelled windows in green, " if stream.windows else ""
    top.set_title(f"{stream.name}: {labelled}flags in red (score) or orange (range)")
    score = frame["score"]
    logit = 0 < threshold < 1 and score.notna().any() and score.dropna().between(0, 1).all()  # 0.99 and 0.99999 apart
    if logit:  # 0 and 1 lie at infinity on a logit axis, and one of them narrows matplotlib's view to the middle
        score = score.clip(LOGIT_EDGE, 1 - LOGIT_EDGE)
    bottom.plot(x, score, color="tab:purple", lw=0.8, label="anomaly score")
    bottom.plot(x, frame["threshold"], color="tab:red", ls=":", lw=1, label="threshold")
    if logit:
        bottom.set_yscale("logit")
        bottom.set_ylim(min(score.min(), threshold) / 2, 1 - (1 - max(score.max(), threshold)) / 2)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.set_ylabel("anomaly score")
    if zone is not None:  # ticks at the series' own times of day
        top.xaxis.axis_date(zone)
        bottom.set_xlabel(f"time ({zone})")
    return fig


def write_series_report(stream: StreamData, scored: ScoredSeries, out_dir: Path, unscored_rows: int = 0) -> list[Path]:
    """Write `<series>.csv` and `<series>.png` (keeping the series' sub-folders) into `out_dir`; `<series>` is the
    file's `report_stem`."""
    name = Path(stream.name)
    frame = report_frame(stream, scored, unscored_rows)
    csv_path = write_csv(out_dir / name.parent / f"{report_stem(name)}.csv", with_skipped_rows(frame, stream.series))
    png_path = save_figure(plot_report(stream, frame, scored.threshold), csv_path.with_suffix(".png"), dpi=100)
    return [csv_path, png_path]
