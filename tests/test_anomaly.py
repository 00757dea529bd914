"""The anomaly task: detectors, streaming == batch, flags on injected anomalies, CLI, bad input."""

import copy
import csv
import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from omegaconf import OmegaConf, open_dict

from conftest import run_cli, run_forked
from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError
from gru_suite import run, timeseries
from gru_suite.checkpoint import load_checkpoint
from gru_suite.module import CHECKPOINT_KEY
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite.timeseries import Calendar
from gru_suite_plugins.anomaly.data import csv_files, load_streams
from gru_suite_plugins.anomaly.detectors import NextStepForecaster, StreamingScorer, WindowAutoencoder, unscored_rows
from gru_suite_plugins.anomaly.flagging import AnomalyStream, Flagger
from gru_suite_plugins.anomaly.stream import FLOAT32_MAX, is_header, main as stream_main, parse_line
from gru_suite_plugins.anomaly.scoring import nab_score
from gru_suite_plugins.anomaly.writer import flag_reasons, plot_report, report_frame, value_columns, write_series_report

TINY = ["backbone.hidden_size=16", "task.data.crop_length=32", "task.data.batch_size=64"]
SPIKES = (500, 700, 900)


@pytest.fixture
def spiky_csv(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(1100)
    values = np.sin(2 * np.pi * t / 20) + rng.normal(0, 0.05, len(t))
    for at in SPIKES:
        values[at] += 4
    path = tmp_path / "spiky.csv"
    pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=len(t), freq="min"), "value": values,
                  "label": np.isin(t, SPIKES).astype(int)}).to_csv(path, index=False)
    return path


def detectors():
    factory = partial(GRUBackbone, hidden_size=8, num_layers=2)
    torch.manual_seed(0)
    return [NextStepForecaster(factory, 2).eval(), WindowAutoencoder(factory, 2, window=5).eval()]


@pytest.mark.parametrize("model", detectors(), ids=["forecaster", "autoencoder"])
def test_streaming_raw_scores_equal_batch(model):
    x = torch.randn(1, 40, 2)
    with torch.no_grad():
        batch = model.raw_scores(x)[0]
    scorer = StreamingScorer(model)
    stream = torch.tensor([scorer.update(x[0, t]) for t in range(40)])
    torch.testing.assert_close(stream, batch, atol=1e-5, rtol=1e-4)


def test_autoencoder_scores_a_long_series_a_part_of_its_windows_at_a_time(monkeypatch):
    """All of a long series' windows at once held hundreds of times the series (4 GB at 100k rows)."""
    from gru_suite_plugins.anomaly import detectors as module

    _, autoencoder = detectors()
    x = torch.randn(2, 40, 2)
    with torch.no_grad():
        whole = autoencoder.raw_scores(x)
        calls = []
        monkeypatch.setattr(module, "WINDOWS_PER_PASS", 14)  # 7 window ends of each of the 2 series per pass
        monkeypatch.setattr(autoencoder, "window_errors", lambda windows: calls.append(len(windows)) or
                            WindowAutoencoder.window_errors(autoencoder, windows))
        parts = autoencoder.raw_scores(x)
    assert calls == [14] * 5 + [2 * 1]  # 36 window ends
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=1e-5)


def test_raw_scores_are_root_mean_square_errors():
    forecaster, autoencoder = detectors()
    x = torch.randn(1, 12, 2)
    with torch.no_grad():
        predicted = forecaster(x[:, :-1])
        rebuilt = autoencoder(x[:, -5:])
        scores = forecaster.raw_scores(x)[0], autoencoder.raw_scores(x)[0]
    expected = ((x[0, 1:] - predicted[0]) ** 2).mean(-1).sqrt()
    torch.testing.assert_close(scores[0], torch.cat([torch.zeros(1), expected]))
    torch.testing.assert_close(scores[1][-1], ((x[0, -5:] - rebuilt[0]) ** 2).mean().sqrt())
    assert (scores[1][:4] == 0).all()
    assert unscored_rows("forecaster", 5) == 1 and unscored_rows("autoencoder", 5) == 4  # the rows scored 0


def test_squared_scores_are_the_squares_of_root_mean_square_ones_in_batch_and_streaming():
    x = torch.randn(1, 12, 2)
    for rms in detectors():
        squared = copy.deepcopy(rms)
        squared.error = "squared"
        with torch.no_grad():
            expected = rms.raw_scores(x)[0].square()
            torch.testing.assert_close(squared.raw_scores(x)[0], expected)
        scorer = StreamingScorer(squared)
        torch.testing.assert_close(torch.tensor([scorer.update(x[0, t]) for t in range(12)]), expected)


def test_a_checkpoint_trained_before_the_error_setting_scores_the_errors_it_was_trained_with(tmp_path):
    cfg = compose_train_config("anomaly", TINY, tmp_path)
    factory = partial(GRUBackbone, hidden_size=8)
    state = {"n_features": 1, "calendar": [], "calendar_harmonics": 1}  # as stored since 2026-12-01
    assert run.build_task(cfg.task, state).build_model(factory).error == "rms"
    with open_dict(cfg):
        del cfg.task.detector.error  # as stored by a checkpoint trained before the setting existed (2026-12-07)...
    assert run.build_task(cfg.task, state).build_model(factory).error == "rms"  # ... that scored rms
    del state["calendar_harmonics"]  # ... or trained before root-mean-square scores (2026-12-01)
    assert run.build_task(cfg.task, state).build_model(factory).error == "squared"
    with open_dict(cfg):
        cfg.task.detector.error = "mse"
    with pytest.raises(UserError, match=r"task.detector.error must be one of \['rms', 'squared'\], got 'mse'"):
        run.build_task(cfg.task)


def test_the_forecasters_loss_is_its_mean_squared_score_after_the_burn_in():
    forecaster = detectors()[0]
    crops = torch.randn(3, 12, 2)
    with torch.no_grad():
        scores = torch.stack([forecaster.raw_scores(crop.unsqueeze(0))[0] for crop in crops])  # row t + 1's error
        torch.testing.assert_close(forecaster.loss(crops, burn_in=4), scores[:, 5:].pow(2).mean())


@pytest.mark.parametrize("settings", [dict(score="likelihood", threshold="fixed", fixed=0.99),
                                      dict(score="raw", threshold="spot", spot_q=1e-2, spot_level=0.9),
                                      dict(score="raw", threshold="quantile", quantile=0.95),
                                      dict(score="likelihood", threshold="fixed", range_tolerance=0.05),
                                      dict(score="raw", threshold="quantile", quantile=0.95, cooldown=4)])
def test_anomaly_stream_equals_batch_flagging(settings):
    model = detectors()[0]
    rng = np.random.default_rng(1)
    values = np.stack([np.sin(np.arange(400) / 5), rng.normal(0, 0.1, 400)], 1).astype(np.float32)
    values[300] += 5
    probation = 150
    likelihood = dict(learning_period=20, estimation_samples=20, historic_window=200)
    stream = AnomalyStream(model, Flagger(**settings, likelihood=likelihood), probation)
    online = [stream.update(row) for row in values]
    from gru_suite.timeseries import StandardScaler
    scaler = StandardScaler.fit(values[:probation])
    with torch.no_grad():
        raw = model.raw_scores(torch.from_numpy(scaler.transform(values))[None])[0].numpy()
    batch = Flagger(**settings, likelihood=likelihood).run(raw, probation, values)
    np.testing.assert_allclose([s for s, _ in online][probation - 1:], batch.score[probation - 1:],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal([f for _, f in online], batch.flags)
    assert not batch.flags[:probation].any() and batch.flags[300]


def test_a_row_flagged_by_its_score_still_widens_the_streams_range_as_in_batch():
    model = detectors()[0]
    values = np.stack([np.sin(np.arange(400) / 5), np.zeros(400)], 1).astype(np.float32)
    values[300, 0] += 8  # far out: flagged by its score, and it widens the range seen so far
    values[350, 0] += 4  # out of the probationary range, inside the widened one
    from gru_suite.timeseries import StandardScaler
    with torch.no_grad():
        raw = model.raw_scores(torch.from_numpy(StandardScaler.fit(values[:150]).transform(values))[None])[0].numpy()
    settings = dict(score="raw", threshold="fixed", fixed=float(raw[301:].max() + raw[300]) / 2, range_tolerance=0.05)
    batch = Flagger(**settings).run(raw, 150, values)
    assert raw[300] > settings["fixed"] and batch.flags[300] and not batch.beyond_range[350] and not batch.flags[350]
    stream = AnomalyStream(model, Flagger(**settings), 150)
    np.testing.assert_array_equal([stream.update(row)[1] for row in values], batch.flags)


def test_a_quantile_of_likelihoods_leaves_out_the_placeholders():
    # The likelihood's first learning_period + estimation_samples scores are 0.5 whatever the error: a quantile
    # over them was 0.5, which about half of all later scores exceed.
    raw = np.abs(np.random.default_rng(0).normal(size=3000))
    likelihood = dict(learning_period=100, estimation_samples=100, historic_window=500)
    scored = Flagger(score="likelihood", threshold="quantile", quantile=0.99, likelihood=likelihood).run(raw, 600)
    assert scored.threshold > 0.9
    assert scored.flags[600:].mean() < 0.05
    with pytest.raises(UserError, match="the probationary period's 150 scores are all within the first 200"):
        Flagger(score="likelihood", threshold="quantile", likelihood=likelihood).run(raw, 150)


def test_a_quantile_without_enough_probationary_scores_is_refused_before_training(tmp_path):
    cfg = compose_train_config("anomaly", ["task.scoring.threshold=quantile", "task.scoring.quantile=0.9999"], tmp_path)
    with pytest.raises(UserError, match=r"threshold=quantile at quantile=0.9999 needs probationary periods of >= "
                                        r"10200 rows; too short: .*lower task.scoring.quantile"):
        run.build_task(cfg.task).datamodule()


def test_spot_reports_the_threshold_each_row_was_compared_with():
    raw = np.abs(np.random.default_rng(3).standard_t(3, size=3000))
    scored = Flagger(score="raw", threshold="spot", spot_q=1e-3, spot_level=0.9).run(raw, 1000)
    compared = scored.score[1000:] > scored.thresholds[1000:]
    np.testing.assert_array_equal(compared, scored.flags[1000:])  # the threshold moves as SPOT refits
    assert len(np.unique(scored.thresholds)) > 10 and scored.flags[1000:].any()
    frame = report_frame(SimpleNamespace(series=SimpleNamespace(timestamps=pd.RangeIndex(3000), columns=["v"],
                                                                values=raw[:, None]), labels=lambda: None), scored)
    np.testing.assert_array_equal(frame["threshold"], scored.thresholds)


def test_spot_without_enough_probationary_peaks_is_one_clear_error():
    with pytest.raises(UserError, match=r"task.scoring.threshold=spot: calibration gives \d+ values above"):
        Flagger(score="raw", threshold="spot", spot_level=0.95).calibrate(np.arange(40.0))


def test_a_series_all_probation_is_plotted():
    raw = np.random.default_rng(0).normal(size=50)
    scored = Flagger(score="raw", threshold="fixed", fixed=3.0).run(raw, 50)
    stream = SimpleNamespace(series=SimpleNamespace(timestamps=pd.RangeIndex(50), columns=["v"], values=raw[:, None]),
                             labels=lambda: None, probation=50, windows=None, name="short")
    fig = plot_report(stream, report_frame(stream, scored), scored.threshold)
    top, bottom = fig.axes
    np.testing.assert_allclose(top.lines[0].get_ydata(), raw)  # the series, and no end-of-probation line after it
    assert len(top.lines) == 1 and bottom.lines[1].get_label() == "threshold"


def test_the_rows_a_detector_cannot_score_yet_have_no_score_line():
    raw = np.r_[np.zeros(4), np.random.default_rng(0).normal(size=46)]  # an autoencoder of window 5: 4 rows unscored
    scored = Flagger(score="raw", threshold="fixed", fixed=3.0).run(raw, 10)
    stream = SimpleNamespace(series=SimpleNamespace(timestamps=pd.RangeIndex(50), columns=["v"], values=raw[:, None]),
                             labels=lambda: None, probation=10, windows=None, name="warm-up")
    frame = report_frame(stream, scored, unscored_rows=4)
    drawn = plot_report(stream, frame, scored.threshold).axes[1].lines[0].get_ydata()
    assert np.isnan(drawn[:4]).all() and frame.loc[:3, ["raw_score", "score"]].isna().all(axis=None)
    assert frame.loc[4:, ["raw_score", "score"]].notna().all(axis=None)  # the first scored row keeps its score
    np.testing.assert_allclose(drawn[4:], scored.score[4:])


def test_flagged_runs_are_shaded_from_first_to_last_row_in_one_artist():
    flags = np.zeros(3000, dtype=int)
    runs = [(5, 9), (100, 100), (200, 260)] + [(1000 + 4 * i, 1001 + 4 * i) for i in range(400)]
    for start, end in runs:
        flags[start:end + 1] = 1
    frame = pd.DataFrame({"timestamp": pd.RangeIndex(3000) * 10, "v": 0.0, "score": 0.5, "threshold": 1.0,
                          "flag": flags, "reason": np.where(flags, "score", "")})
    stream = SimpleNamespace(series=SimpleNamespace(columns=["v"]), probation=0, windows=None, name="s")
    top = plot_report(stream, frame, 1.0).axes[0]
    shaded = [c for c in top.collections if isinstance(c, PolyCollection)]
    assert len(shaded) == 1 and not top.patches and np.allclose(shaded[0].get_facecolor()[0][:3], to_rgb("tab:red"))
    extents = sorted((path.vertices[:, 0].min(), path.vertices[:, 0].max()) for path in shaded[0].get_paths())
    assert extents == [(10 * start, 10 * end) for start, end in runs]  # a lone row's has no width (its dot shows it)


def test_a_zoned_series_is_plotted_at_its_own_times_of_day():
    stamps = pd.date_range("2024-03-30", periods=3000, freq="min", tz="America/New_York")
    frame = pd.DataFrame({"timestamp": stamps, "v": 0.0, "score": 0.5, "threshold": 1.0, "flag": 0, "reason": ""})
    stream = SimpleNamespace(series=SimpleNamespace(columns=["v"]), probation=0, windows=None, name="s")
    top, bottom = plot_report(stream, frame, 1.0).axes
    assert top.get_lines()[0].get_xdata()[0] == np.datetime64("2024-03-30T04:00")  # UTC, as matplotlib places it
    assert str(bottom.xaxis.get_major_locator().tz) == "America/New_York" == str(top.xaxis.get_units())
    assert bottom.get_xlabel() == "time (America/New_York)"


def test_the_score_panel_shows_the_threshold_and_saturated_likelihoods():
    score = np.r_[np.linspace(0.2, 0.8, 98), 0.999991, 1.0]  # a likelihood of exactly 1 on its logit axis
    frame = pd.DataFrame({"timestamp": pd.RangeIndex(100), "v": score, "score": score, "threshold": 0.99999,
                          "flag": (score > 0.99999).astype(int), "reason": np.where(score > 0.99999, "score", "")})
    stream = SimpleNamespace(series=SimpleNamespace(columns=["v"]), probation=10, windows=None, name="s")
    bottom = plot_report(stream, frame, 0.99999).axes[1]
    low, high = bottom.get_ylim()
    assert bottom.get_yscale() == "logit" and low < 0.2 and high > 1 - 1e-9
    assert bottom.lines[0].get_ydata().max() == 1 - 1e-9  # drawn at the edge, not lost at infinity


def test_reports_keep_dotted_series_names_apart_and_a_value_named_score_beside_the_score(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for version, level in (("v1", 1.0), ("v2", 100.0)):
        pd.DataFrame({"timestamp": pd.date_range("2024", periods=200, freq="h"),
                      "score": level + np.sin(np.arange(200))}).to_csv(data / f"sensor.{version}.csv", index=False)
    for stream in load(data):
        raw = np.abs(np.random.default_rng(0).normal(size=200))
        write_series_report(stream, Flagger(score="raw", threshold="fixed", fixed=3.0).run(raw, 30), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sensor.v1.csv", "sensor.v1.png", "sensor.v2.csv",
                                                                    "sensor.v2.png"]
    report = pd.read_csv(tmp_path / "out" / "sensor.v2.csv")
    assert list(report.columns[:3]) == ["timestamp", "value_score", "raw_score"] and report["value_score"][0] == 100.0
    assert value_columns(["score", "value_score", "flag"]) == ["value_value_score", "value_score", "value_flag"]


def test_the_stream_api_refuses_a_missing_value_or_a_wrong_width():
    model = NextStepForecaster(partial(GRUBackbone, hidden_size=4, num_layers=1), 2).eval()
    stream = AnomalyStream(model, Flagger(score="raw", threshold="quantile", quantile=0.9), 20)
    with pytest.raises(UserError, match=r"expected 2 finite value\(s\) per observation, got \[1.0\]"):
        stream.update([1.0])  # the first observation already: the model reads two columns
    for i in range(25):
        stream.update([np.sin(i), np.cos(i)])
    for bad in ([float("nan"), 1.0], [1.0]):  # a NaN would poison the GRU state and every later score
        with pytest.raises(UserError, match=r"expected 2 finite value\(s\) per observation, got \["):
            stream.update(bad)
    assert np.isfinite(stream.update([0.0, 1.0])[0])


def test_a_stream_that_skips_missing_values_goes_on_as_if_they_had_not_come():
    model = NextStepForecaster(partial(GRUBackbone, hidden_size=4, num_layers=1), 2).eval()
    flagger = partial(Flagger, score="raw", threshold="quantile", quantile=0.9)
    skipping, plain = AnomalyStream(model, flagger(), 20, skip_missing=True), AnomalyStream(model, flagger(), 20)
    for i in range(40):
        if i in (5, 30):  # one in the probationary period, one after it
            assert np.isnan(skipping.update([float("nan"), 1.0])[0])
        assert skipping.update([np.sin(i), np.cos(i)]) == plain.update([np.sin(i), np.cos(i)])
    with pytest.raises(UserError, match="finite value"):
        skipping.update([float("inf"), 1.0])  # only a missing value is skipped
    with pytest.raises(UserError, match=r"expected 2 finite value\(s\) per observation"):
        skipping.update([float("nan"), 1.0, 2.0])  # a row of the wrong width, not a missing value
    assert skipping.observations == plain.observations == 40  # what the stream CLI's end-of-probation check counts
    assert is_header("value", False, 1) and is_header("time,a,b", True, 2) and is_header("a,b", False, 2)
    assert is_header('"timestamp","cpu (%)"', True, 1) and is_header("_load", False, 1)
    assert not any(is_header(line, stamped, width) for line, stamped, width in (  # nor a malformed line of values
        ("2024-01-01,", True, 1), (",", False, 2), ("a,nan", False, 2), ("level,1e3", False, 2),
        ("2024-01-01", True, 1), ("1;2", False, 2), ("a,b", False, 1), ("21.5 22.0", False, 2),
        ("10 C", False, 1), ("21.5°C", False, 1), ("12a", False, 1), ("$3.50", False, 1), ("0x1F", False, 1),
        ("1.2.3", False, 1)))  # values written wrong: an error on line 1, not a header skipped
    assert parse_line('"2024-01-01 00:00","1.5"', 2, True, 1) == ("2024-01-01 00:00", [1.5])  # a quoted CSV's line
    stamp, values = parse_line("2024-01-01, ,NaN", 3, True, 2, skip_missing=True)
    assert stamp == "2024-01-01" and np.isnan(values).all() and np.isnan(parse_line(",n/a", 3, False, 2, True)[1]).all()
    with pytest.raises(UserError, match="stdin, line 3: expected 2 comma-separated finite"):
        parse_line(",1", 3, False, 2)


def test_skipped_rows_are_left_out_of_the_scores_and_marked_in_the_report(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    frame = pd.read_csv(write_series(data / "s.csv", label=1))
    frame["label"] = [1 if 99 <= row <= 101 else 0 for row in range(200)]
    frame.loc[[10, 100, 150], "value"] = np.nan  # one in probation, one inside the labelled window
    frame.loc[150, "label"] = np.nan  # a skipped row's label is not read
    frame.to_csv(data / "s.csv", index=False)
    task = anomaly_task(tmp_path, data, "task.data.missing=skip", "task.data.label_column=label")
    task.datamodule()
    assert "wholly in rows skipped" not in caplog.text
    frame.loc[[180], "label"] = 1  # a window of one row, skipped
    frame.loc[[180], "value"] = np.nan
    frame.to_csv(data / "s.csv", index=False)
    anomaly_task(tmp_path, data, "task.data.missing=skip", "task.data.label_column=label").datamodule()
    assert "s.csv: 1 labelled window(s) lie wholly in rows skipped for a missing value" in caplog.text
    (stream,) = task.streams
    assert len(stream.series.values) == 197 and list(stream.series.skipped.rows) == [10, 100, 150]
    assert stream.windows == [(98, 99)] and stream.probation == 98  # rows 99 and 101 of the file
    raw = np.abs(np.random.default_rng(0).normal(size=197))
    write_series_report(stream, Flagger(score="raw", threshold="fixed", fixed=0.1).run(raw, 98), tmp_path / "out")
    report = pd.read_csv(tmp_path / "out" / "s.csv", keep_default_na=False)
    assert len(report) == 200 and list(report["timestamp"]) == list(frame["timestamp"])
    marked = report.loc[[10, 100, 150]]
    assert list(marked["reason"]) == ["missing"] * 3 and list(marked["flag"]) == [0] * 3
    assert list(marked["score"]) == list(marked["value"]) == list(marked["label"]) == [""] * 3
    assert (report.drop([10, 100, 150])["reason"] != "missing").all()
    assert list(report.loc[[99, 101], "label"]) == ["1", "1"]


def test_calibration_leaves_out_the_rows_a_detector_cannot_score(tmp_path):
    settings = ["task.scoring.score=raw", "task.scoring.threshold=quantile", "task.detector.burn_in=8"]
    for kind, window, start in (("autoencoder", 32, 31), ("forecaster", 32, 8)):  # the autoencoder's first 31 are 0
        cfg = compose_train_config("anomaly", [*settings, f"task.detector.kind={kind}",
                                               f"task.detector.window={window}"], tmp_path / kind)
        assert run.build_task(cfg.task).flagger().calibration_start == start


def test_cooldown_keeps_the_first_flag_of_each_burst():
    raw = np.array([9, 9, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1], dtype=float)
    flags = Flagger(score="raw", threshold="fixed", fixed=0.5, cooldown=3).run(raw, probation=2).flags
    assert np.flatnonzero(flags).tolist() == [2, 6, 12]  # 3-5 and 8 fall within 3 rows of a kept flag
    flagger = Flagger(score="raw", threshold="fixed", fixed=0.5, cooldown=20)
    assert [np.flatnonzero(flagger.run(raw, 2).flags).tolist() for _ in range(2)] == [[2], [2]]  # each series anew
    assert np.flatnonzero(Flagger(score="raw", threshold="fixed", fixed=0.5).run(raw, 2).flags).tolist() == [
        2, 3, 4, 5, 6, 8, 12]


def test_flagger_rejects_bad_settings():
    with pytest.raises(ValueError, match="set task.scoring.score=raw"):
        Flagger(score="likelihood", threshold="spot")
    with pytest.raises(ValueError, match="task.scoring.range_tolerance must be at least 0"):
        Flagger(range_tolerance=-0.1)
    for cooldown in (-1, 2.5):
        with pytest.raises(ValueError, match="task.scoring.cooldown must be a whole number of observations >= 0"):
            Flagger(cooldown=cooldown)
    with pytest.raises(ValueError, match="task.scoring.quantile must be between 0 and 1, got None"):
        Flagger(threshold="quantile", quantile=None)
    with pytest.raises(ValueError, match="needs the series values"):
        Flagger(range_tolerance=0.05).run(np.zeros(20), 10)


@pytest.mark.parametrize(("setting", "message"), [
    ("task.scoring.likelihood.historic_window=50",
     "task.scoring.likelihood.historic_window (50) must be >= estimation_samples (100)"),
    ("+task.scoring.likelihood.window=5", "task.scoring.likelihood: AnomalyLikelihood.__init__() got an unexpected"),
    ("task.scoring.spot_q=0.2", "task.scoring.spot_q must be in (0, 0.05), got 0.2"),  # below 1 - spot_level
    ("task.scoring.fixed=2", "task.scoring.fixed must be a number below 1 for likelihood scores"),  # none flagged
    ("task.scoring.fixed=null", "task.scoring.fixed must be a number below 1 for likelihood scores (which lie "
                                "between 0 and 1), got None"),
])
def test_likelihood_and_spot_settings_are_one_line_before_training(setting, message, tmp_path):
    spot = ["task.scoring.score=raw", "task.scoring.threshold=spot"] if "spot" in setting else []
    cfg = compose_train_config("anomaly", [*spot, setting], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        run.build_task(cfg.task).datamodule()  # before any training


def test_a_streamed_line_comes_as_soon_as_its_end_does_whatever_ends_it():
    from gru_suite_plugins.anomaly.stream import lines_as_they_come

    chunks = [b"1.0\r", b"\n2.0\r", b"3.0\n4", b".0\r\n\xff5\n", b"6.0"]  # "\r\n" split between two reads, too
    read: list[bytes] = []
    device = SimpleNamespace(read1=lambda size: (read.append(chunks[len(read)]) or read[-1]) if len(read) < len(chunks)
                             else b"")
    lines = lines_as_they_come(device)
    assert next(lines) == "1.0" and len(read) == 1  # at once: not held until the next byte shows no "\n" follows
    assert [next(lines), next(lines)] == ["2.0", "3.0"] and len(read) == 3
    assert list(lines) == ["4.0", "\udcff5", "6.0"]  # bytes that are not UTF-8 come as surrogates, for parse_line


def test_each_flag_names_its_reason():
    values = np.concatenate([np.sin(np.arange(60) / 3), [0.1, 9.0, 0.2, 0.3]])[:, None]
    raw = np.concatenate([np.full(60, 0.1), [5.0, 0.1, 5.0, 0.1]])
    scored = Flagger(score="raw", threshold="fixed", fixed=1.0, range_tolerance=0.05).run(raw, 60, values)
    assert flag_reasons(scored).tolist()[60:] == ["score", "range", "score", ""]
    assert flag_reasons(scored).tolist()[:60] == [""] * 60


def test_a_non_numeric_range_tolerance_names_the_field(tmp_path):
    cfg = compose_train_config("anomaly", ["task.scoring.range_tolerance=abc"], tmp_path)
    with pytest.raises(UserError, match="task.scoring.range_tolerance must be a finite number, got 'abc'"):
        run.build_task(cfg.task).datamodule()  # before any training


def test_detector_flags_injected_spikes_and_predict_writes_reports(spiky_csv, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    result = run_forked("gru-suite", "task=anomaly", f"task.data.path={spiky_csv}", "task.data.windows_path=null",
                        "task.data.label_column=label", "task.data.probation=0.4", "trainer.max_epochs=12", *TINY,
                        f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = pd.read_csv(run / "predictions" / "spiky.csv")
    assert list(report.columns) == ["timestamp", "value", "raw_score", "score", "threshold", "flag", "reason",
                                    "label"]
    over = report["score"] > report["threshold"]  # a score flag is a score over the threshold
    assert (~report["reason"].fillna("").str.startswith("score") | over).all()
    assert report["raw_score"].isna().tolist()[:3] == [True, False, False]  # nothing predicts the first row
    flagged = set(np.flatnonzero(report["flag"].to_numpy()))
    assert set(np.flatnonzero(report["reason"].notna().to_numpy())) == flagged  # every flag says why, only flags
    assert set(report["reason"].dropna()) <= {"score", "range", "score+range"}
    assert all(any(abs(f - s) <= 1 for f in flagged) for s in SPIKES), sorted(flagged)
    assert len(flagged) <= 12  # few false alarms on 660 scored points
    assert (run / "predictions" / "spiky.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/event_f1"] > 0.5 and metrics["test/nab_standard"] > 50

    ckpt = run / "checkpoints" / "last.ckpt"
    lines = "\n".join(str(v) for v in report["value"]) + "\n"
    exe = f"{sys.prefix}/bin/gru-suite-anomaly-stream"
    out = subprocess.run([exe, str(ckpt), "--probation", "440"], input=lines, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    streamed = np.array([int(line.split(",")[1]) for line in out.stdout.splitlines()])
    assert set(np.flatnonzero(streamed)) == flagged
    binary = subprocess.run([exe, str(ckpt)], input=b"1.0\n\xff2\n", capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})  # stdin that refuses bad bytes
    assert binary.returncode == 2 and binary.stderr.decode().strip() == "error: stdin, line 2: not UTF-8"
    serial = subprocess.run([exe, str(ckpt), "--probation", "2"], input=b"1.0\r2.0\r3.0\r" + b"1" * 200_000 + b"\r",
                            capture_output=True, timeout=120)  # lines ended by \r alone, as a serial device's
    assert len(serial.stdout.splitlines()) == 3 and serial.returncode == 2
    assert serial.stderr.decode().strip() == ("error: stdin, line 4: not a line of comma-separated values (field "
                                              "larger than field limit (131072))")
    for bad in ("1.5,2.5", "nan"):  # one value per line is expected, and finite
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"1.0\n{bad}\n"))
        assert stream_main([str(ckpt)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: stdin, line 2: expected 1 comma-separated finite number(s), got {bad!r}")
    monkeypatch.setattr(sys, "stdin", io.StringIO("1.0\n2.0\n"))
    assert stream_main([str(ckpt)]) == 0  # two observations, both within the probationary period
    assert "the stream ended after 2 observation(s), within the probationary period of 300" in capsys.readouterr().err
    for lines, warned in (("1.0\n2.0\n", True), ("1.0\n2.0\n3.0\n", False)):  # the third is the first flaggable
        monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
        assert stream_main([str(ckpt), "--probation", "2"]) == 0
        assert ("within the probationary period of 2" in capsys.readouterr().err) == warned
    short = tmp_path / "short.csv"  # 150 rows: a 60-row probation, under the 64 that training would need
    pd.read_csv(spiky_csv).head(150).to_csv(short, index=False)
    scored = run_forked("gru-suite-predict", "task=anomaly", f"ckpt_path={ckpt}", f"task.data.path={short}",
                        f"hydra.run.dir={tmp_path / 'short'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "short" / "short.csv")) == 150


def test_the_test_loss_is_the_squared_error_over_every_scored_row_of_every_series(tmp_path):
    """test/loss is the detector's training loss (squared error) over the rows each test series is scored on after
    its probationary period, pooled over the series: a long series weighs more than a short one."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, rows in (("short", 300), ("long", 900)):
        t = np.arange(rows)
        pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=rows, freq="min"),
                      "value": np.sin(2 * np.pi * t / (20 if name == "short" else 7)) + rng.normal(0, 0.3, rows)},
                     ).to_csv(folder / f"{name}.csv", index=False)
    run = tmp_path / "run"
    result = run_forked("gru-suite", "task=anomaly", f"task.data.path={folder}", "task.data.windows_path=null",
                        "task.detector.kind=autoencoder", "task.detector.window=16", "task.data.probation=0.3",
                        "trainer.max_epochs=1", *TINY, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    squared = []
    for name, rows in (("short", 300), ("long", 900)):
        raw = pd.read_csv(run / "predictions" / f"{name}.csv")["raw_score"].to_numpy()
        assert np.isnan(raw[:15]).all() and not np.isnan(raw[15:]).any()  # the first full window ends at row 15
        squared.append(raw[int(0.3 * rows):] ** 2)
    test_loss = json.loads((run / "metrics.json").read_text())["test/loss"]
    assert test_loss == pytest.approx(np.concatenate(squared).mean(), rel=1e-4)
    assert test_loss != pytest.approx(np.mean([s.mean() for s in squared]), rel=1e-3)  # not a mean of the series'
    (folder / "short.csv").write_text("".join((folder / "short.csv").read_text().splitlines(True)[:16]))  # 15 rows
    result = run_forked("gru-suite-eval", "task=anomaly", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                        f"task.data.path={folder}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]  # a series with no row scored adds nothing
    assert json.loads((tmp_path / "eval" / "test_metrics.json").read_text())["test/loss"] == pytest.approx(
        squared[1].mean(), rel=1e-4)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    del checkpoint[CHECKPOINT_KEY]["config"]["task"]["detector"]["error"]  # trained before the setting existed
    del checkpoint[CHECKPOINT_KEY]["task_state"]["calendar_harmonics"]  # and before the detectors scored rms
    torch.save(checkpoint, tmp_path / "older.ckpt")
    for command in ("gru-suite-predict", "gru-suite-eval"):
        result = run_forked(command, "task=anomaly", f"ckpt_path={tmp_path / 'older.ckpt'}",
                            f"task.data.path={folder}", f"hydra.run.dir={tmp_path / 'older'}")
        assert result.returncode == 0, result.stderr[-3000:]
    older = pd.read_csv(tmp_path / "older" / "long.csv")["raw_score"].to_numpy()
    np.testing.assert_allclose(older[270:], squared[1], rtol=1e-4)  # squared errors, as that code scored them
    assert json.loads((tmp_path / "older" / "test_metrics.json").read_text())["test/loss"] == pytest.approx(
        squared[1].mean(), rel=1e-4)  # the same training loss


@pytest.mark.parametrize("line, message", [
    ("not-a-time,1.0", "stdin, line 7: not a timestamp: 'not-a-time'"),
    ("2024-01-01 00:05,\udcff1", "stdin, line 7: not UTF-8"),
    ("2024-01-01 00:05,1,2", "stdin, line 7: expected a timestamp and 1 comma-separated finite number(s), got"),
    ("2024-01-01 00:05,-1e39", "stdin, line 7: expected numbers of at most 3.4e+38 in size (values are held as "
                               "32-bit floats), got '2024-01-01 00:05,-1e39'"),
])
def test_a_streamed_line_is_checked_before_it_is_scored(line, message):
    assert FLOAT32_MAX == timeseries.FLOAT32_MAX  # the stream's limit is the files' one
    assert parse_line("2024-01-01 00:05, 1.5", 7, True, 1) == ("2024-01-01 00:05", [1.5])
    assert parse_line("1704067200,1.5", 7, True, 1) == ("1704067200", [1.5])  # epoch seconds
    with pytest.raises(UserError, match=re.escape(message)):
        parse_line(line, 7, True, 1)


def test_anomaly_honours_the_plugin_contract(tmp_path):
    check_task_plugin("anomaly", overrides=TINY, tmp_path=tmp_path)


def test_autoencoder_with_retraining_and_calendar_honours_the_contract_and_streams(tmp_path, monkeypatch, capsys):
    check_task_plugin("anomaly", overrides=[*TINY, "task.detector.kind=autoencoder", "task.detector.window=16",
                                            "task.detector.retrain.every=400", "task.detector.retrain.steps=2",
                                            "task.data.calendar=[time_of_day]", "task.data.calendar_harmonics=2"],
                      tmp_path=tmp_path)
    ckpt = str(next((tmp_path / "short_run").rglob("last.ckpt")))
    without = compose_train_config("anomaly", [*TINY, "task.detector.kind=autoencoder", "task.detector.window=16"],
                                   tmp_path / "cfg")  # as when predicting new data, calendar unset
    OmegaConf.resolve(without)
    trained = load_checkpoint(ckpt, without.task).task
    assert trained.calendar == Calendar(("time_of_day",), 2)  # the checkpoint keeps its own
    no_clock = run_cli("gru-suite-predict", "task=anomaly", f"ckpt_path={ckpt}", "task.data.calendar=[]",
                       "task.data.time_column=null", f"hydra.run.dir={tmp_path / 'no_clock'}")
    assert no_clock.returncode == 2 and "task.data.calendar fixed by training" in no_clock.stdout + no_clock.stderr
    assert ("calendar features ['time_of_day'] need a time column of timestamps: set task.data.time_column (the "
            "detector was trained with them)") in no_clock.stderr  # not a hint to drop them, which it cannot
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("2024-01-01 00:00,1.0\n"))
    assert stream_main([ckpt]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {ckpt}: its detector reads calendar features ['time_of_day']; "
                                               "start each line with its timestamp and pass --timestamp")
    lines = "".join(f"2024-01-01 {h:02d}:00,{np.sin(h / 4):.3f}\n" for h in range(24))
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ntimestamp,value\n" + lines + "yesterday,1.0\n"))  # a header
    assert stream_main([ckpt, "--timestamp", "--probation", "20"]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 24 and out.startswith("2024-01-01 00:00,")
    assert err.strip().splitlines() == ["stdin, line 2: read as the column names 'timestamp,value', not an observation",
                                        "error: stdin, line 27: not a timestamp: 'yesterday'"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ufefftimestamp,value\n" + lines))  # a byte-order mark first
    assert stream_main([ckpt, "--timestamp", "--probation", "20"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 24 and "line 1: read as the column names 'timestamp,value'" in err
    quoted = "".join(f'"Jan 01, 2024 {h:02d}:00",{np.sin(h / 4):.3f}\n' for h in range(24))  # a comma in the date
    monkeypatch.setattr(sys, "stdin", io.StringIO(quoted))
    assert stream_main([ckpt, "--timestamp", "--probation", "20"]) == 0
    records = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(records) == 24 and {len(record) for record in records} == {3}
    assert records[0][0] == "Jan 01, 2024 00:00" and [record[1:] for record in records] == [
        line.split(",")[1:] for line in out.splitlines()]  # as scored with the dates written otherwise
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines + "timestamp,value\n"))  # column names after the first line
    assert stream_main([ckpt, "--timestamp", "--probation", "20"]) == 2
    assert capsys.readouterr().err.strip() == "error: stdin, line 25: not a timestamp: 'timestamp'"


def load(path, **kwargs):
    args = dict(time_column="timestamp", value_columns=None, label_column=None, windows_path=None,
                probation=0.15, probation_max=750, missing="error", min_probation=10)
    return load_streams(path, **{**args, **kwargs})


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01 00:00,1\n2024-01-01 01:00,oops\n")
    with pytest.raises(UserError, match=r"bad.csv, line 3, column 'value': expected a finite number, got 'oops'"):
        load(bad)
    bad.write_text("timestamp,value\nyesterday,1\n")
    with pytest.raises(UserError, match="unparseable timestamp 'yesterday'"):
        load(bad)
    short = tmp_path / "short.csv"
    pd.DataFrame({"timestamp": pd.date_range("2024", periods=30, freq="h"), "value": range(30)}).to_csv(short)
    with pytest.raises(UserError, match="probationary period of 4 rows"):
        load(short, value_columns=["value"])
    with pytest.raises(UserError, match="data path not found"):
        load(tmp_path / "missing")


def test_labels_file_naming_no_series_fails_and_unknown_ones_are_ignored(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    stamps = pd.date_range("2024-01-01", periods=200, freq="h")
    pd.DataFrame({"timestamp": stamps, "value": np.sin(np.arange(200))}).to_csv(data / "a.csv", index=False)
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({"other.csv": [[str(stamps[100]), str(stamps[110])]]}))
    with pytest.raises(UserError, match="names none of the 1 series"):
        load(data, windows_path=windows)
    windows.write_text(json.dumps({"a.csv": [[str(stamps[100]), str(stamps[110])]], "b.csv": []}))
    (stream,) = load(data, windows_path=windows)
    assert stream.windows == [(100, 110)]
    assert f"1 labelled series are not in the input ({data}) and are ignored: b.csv" in caplog.text
    (data / "b.csv").write_text((data / "a.csv").read_text())
    caplog.clear()
    load(data / "a.csv", windows_path=windows)  # one file of the folder: b.csv is there, but not read
    assert f"1 labelled series are not in the input ({data / 'a.csv'}) and are ignored: b.csv" in caplog.text


def test_auto_windows_are_the_data_folders_own(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    stamps = pd.date_range("2024-01-01", periods=200, freq="h")
    pd.DataFrame({"timestamp": stamps, "value": np.sin(np.arange(200))}).to_csv(data / "a.csv", index=False)
    (stream,) = load(data / "a.csv", windows_path="auto")  # no windows file there: unlabelled
    assert stream.windows is None
    (data / "windows.json").write_text(json.dumps({"a.csv": [[str(stamps[100]), str(stamps[110])]]}))
    for path in (data, data / "a.csv"):
        (stream,) = load(path, windows_path="auto")
        assert stream.windows == [(100, 110)]
    (data / "windows.json").write_text(json.dumps({"other.csv": []}))  # a folder's file of other series: a warning
    (stream,) = load(data, windows_path="auto")
    assert stream.windows is None and "names none of the 1 series" in caplog.text
    nab = tmp_path / "NAB"  # NAB's own layout: data/<group>/<series>.csv, labels/combined_windows.json
    (nab / "data" / "group").mkdir(parents=True)
    (nab / "labels").mkdir()
    (data / "a.csv").rename(nab / "data" / "group" / "a.csv")
    (nab / "labels" / "combined_windows.json").write_text(json.dumps({"group/a.csv": [[str(stamps[5]),
                                                                                      str(stamps[9])]]}))
    for path in (nab / "data", nab / "data" / "group", nab / "data" / "group" / "a.csv"):
        (stream,) = load(path, windows_path="auto")
        assert stream.windows == [(5, 9)]


def test_windows_and_series_with_and_without_utc_offsets_meet_on_one_clock(tmp_path):
    stamps = pd.date_range("2024-01-01", periods=200, freq="h")
    aware = tmp_path / "aware.csv"
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": np.sin(np.arange(200))}).to_csv(
        aware, index=False)
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({"aware.csv": [[str(stamps[100]), str(stamps[110])]]}))  # NAB's: no offset
    assert load(aware, windows_path=windows)[0].windows == [(100, 110)]
    naive = tmp_path / "naive.csv"
    pd.DataFrame({"timestamp": stamps, "value": np.sin(np.arange(200))}).to_csv(naive, index=False)
    windows.write_text(json.dumps({"naive.csv": [["2024-01-05T05:00:00+01:00", "2024-01-05T15:00:00+01:00"]]}))
    assert load(naive, windows_path=windows)[0].windows == [(100, 110)]  # 04:00-14:00 UTC: rows 100-110


def test_windows_out_of_order_or_overlapping_are_ordered_and_merged(tmp_path, caplog):
    stamps = pd.date_range("2024-01-01", periods=400, freq="h")
    path = tmp_path / "s.csv"
    pd.DataFrame({"timestamp": stamps, "value": np.sin(np.arange(400))}).to_csv(path, index=False)
    windows = tmp_path / "windows.json"
    # out of order, overlapping, sharing row 270, the last nested in an earlier one
    spans = [(300, 310), (250, 260), (255, 270), (270, 280), (302, 305)]
    windows.write_text(json.dumps({"s.csv": [[str(stamps[a]), str(stamps[b])] for a, b in spans]}))
    (stream,) = load(path, windows_path=windows)
    assert stream.windows == [(250, 280), (300, 310)]
    assert f"{path}: 5 labelled windows overlap or share a row: scored as 2" in caplog.text
    nab_score({"s": np.zeros(400, dtype=bool)}, None, {"s": stream.windows})  # the scorer takes them


def test_windows_that_hold_none_of_the_series_rows_are_named(tmp_path, caplog):
    stamps = pd.date_range("2024-01-01", periods=100, freq="h")
    path = tmp_path / "s.csv"
    pd.DataFrame({"timestamp": stamps, "value": np.sin(np.arange(100))}).to_csv(path, index=False)
    windows = tmp_path / "windows.json"
    windows.write_text(json.dumps({"s.csv": [["2023-01-01", "2023-01-02"], [str(stamps[10]), str(stamps[20])]]}))
    (stream,) = load(path, windows_path=windows)
    assert stream.windows == [(10, 20)]
    assert f"{path}: 1 of its 2 labelled windows hold none of its rows (2024-01-01 00:00:00" in caplog.text


def test_constant_series_scores_without_error(tmp_path):
    flat = tmp_path / "flat.csv"
    pd.DataFrame({"timestamp": pd.date_range("2024", periods=300, freq="h"), "value": 5.0}).to_csv(flat, index=False)
    (stream,) = load(flat)
    assert torch.isfinite(stream.inputs).all() and float(stream.inputs.abs().max()) == 0.0


def test_a_flat_probationary_period_is_centred_not_blown_up(tmp_path, caplog):
    step = tmp_path / "step.csv"  # 8.3985 has no exact float32 value: its float32 std over the period is ~1e-6
    pd.DataFrame({"timestamp": pd.date_range("2024", periods=300, freq="h"),
                  "value": [8.3985] * 200 + [9.3985] * 100}).to_csv(step, index=False)
    (stream,) = load(step)
    assert float(stream.inputs.abs().max()) == pytest.approx(1.0, abs=1e-3)
    assert f"{step}: the probationary period (45 rows): column(s) ['value'] constant; centred" in caplog.text


def test_calendar_features_of_a_file_whose_utc_offset_changes_are_those_a_stream_computes(tmp_path):
    local = pd.date_range("2024-11-02", periods=300, freq="h", tz="America/New_York")  # daylight saving ends
    texts = [stamp.isoformat() for stamp in local]  # -04:00, then -05:00
    path = tmp_path / "dst.csv"
    path.write_text("timestamp,value\n" + "".join(f"{text},{i % 24}\n" for i, text in enumerate(texts)))
    calendar = Calendar(("time_of_day",))
    (data,) = load(path, calendar=calendar)
    streamed = np.stack([calendar.row(pd.Timestamp(text)) for text in texts])  # as AnomalyStream.update reads them
    np.testing.assert_allclose(data.inputs[:, 1:].numpy(), streamed, atol=1e-6)
    np.testing.assert_allclose(streamed, calendar.features(local.tz_localize(None)), atol=1e-6)  # the local hour


@pytest.mark.parametrize("setting, refused", [
    ("time_unit=s", r"not a timestamp \(a number: Unix time in s\): '2023-11-15'"),
    ("time_format=%d/%m/%Y %H:%M:%S", r"not a timestamp \(a date written '%d/%m/%Y %H:%M:%S'\): '2023-11-15'"),
], ids=["unix-time", "day-first-dates"])
def test_a_time_column_read_as_set_feeds_the_calendar_in_batch_and_in_a_stream_alike(tmp_path, setting, refused):
    seconds = 1_700_000_000 + 3600 * np.arange(300)
    values = np.sin(np.arange(300) * 2 * np.pi / 24).astype(np.float32)[:, None]
    written = seconds if "unit" in setting else pd.to_datetime(seconds, unit="s").strftime("%d/%m/%Y %H:%M:%S")
    path = tmp_path / "stamped.csv"
    pd.DataFrame({"timestamp": written, "value": values[:, 0]}).to_csv(path, index=False)
    overrides = [f"task.data.path={path}", f"task.data.{setting}", "task.data.calendar=[time_of_day]",
                 "task.data.probation=0.5", "task.data.crop_length=16"]
    task = run.build_task(compose_train_config("anomaly", overrides, tmp_path / "cfg").task)
    task.datamodule()
    (data,) = task.streams
    hours = pd.to_datetime(seconds, unit="s")
    np.testing.assert_allclose(data.inputs[:, 1:].numpy(), Calendar(("time_of_day",)).features(hours), atol=1e-6)
    torch.manual_seed(0)
    model = NextStepForecaster(partial(GRUBackbone, hidden_size=8, num_layers=1), 1, n_covariates=2).eval()
    stream = task.stream(model, data.probation)
    online = [stream.update(v, str(t)) for v, t in zip(values, written)]
    with torch.no_grad():
        raw = task.raw_scores(model, 0, data.inputs[None]).numpy()
    batch = task.flagger().run(raw, data.probation, values)
    start = data.probation - 1
    np.testing.assert_allclose([s for s, _ in online][start:], batch.score[start:], rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match=refused):
        stream.update(values[0], "2023-11-15")


def test_calendar_features_reach_the_detector_and_stream_like_batch(tmp_path):
    stamps = pd.date_range("2024-01-01", periods=300, freq="h")
    values = (np.sin(np.arange(300) * 2 * np.pi / 24) + (stamps.dayofweek >= 5)).astype(np.float32)[:, None]
    path = tmp_path / "hourly.csv"
    pd.DataFrame({"timestamp": stamps, "value": values[:, 0]}).to_csv(path, index=False)
    one = run.build_task(compose_train_config("anomaly", ["task.data.calendar=time_of_day"], tmp_path / "cfg").task)
    assert one.calendar == Calendar(("time_of_day",))  # one name without brackets
    none = run.build_task(compose_train_config("anomaly", ["task.data.calendar="], tmp_path / "cfg").task)
    assert none.calendar == Calendar(())  # `key=`: none
    with pytest.raises(UserError, match=r"task.data.calendar: unknown feature\(s\) \['5'\]"):
        _ = run.build_task(compose_train_config("anomaly", ["task.data.calendar=5"], tmp_path / "cfg").task).calendar
    with pytest.raises(UserError, match="needs backbone.bidirectional=false"):
        NextStepForecaster(partial(GRUBackbone, hidden_size=4, bidirectional=True), 1)
    calendar = Calendar(("time_of_day", "day_of_week"), 2)
    (data,) = load(path, calendar=calendar)
    assert data.inputs.shape == (300, 9)
    np.testing.assert_allclose(data.inputs[:, 1:].numpy(), calendar.features(stamps))
    torch.manual_seed(0)
    model = NextStepForecaster(partial(GRUBackbone, hidden_size=8, num_layers=1), 1, n_covariates=8).eval()
    settings = dict(score="raw", threshold="quantile", quantile=0.9)
    stream = AnomalyStream(model, Flagger(**settings), data.probation, calendar=calendar)
    online = [stream.update(v, t) for v, t in zip(values, stamps.astype(str))]
    with torch.no_grad():
        raw = model.raw_scores(data.inputs[None])[0].numpy()
    batch = Flagger(**settings).run(raw, data.probation, values)
    start = data.probation - 1  # the stream scores nothing before its probationary period ends
    np.testing.assert_allclose([s for s, _ in online][start:], batch.score[start:], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal([f for _, f in online], batch.flags)
    with pytest.raises(UserError, match=r"reads calendar features \['time_of_day', 'day_of_week'\]: give each"):
        stream.update(values[0])
    for bad in ("soon", "NaT", ""):
        with pytest.raises(UserError, match=f"not a timestamp: '{bad}'"):
            stream.update(values[0], bad)


def test_periodic_retraining_streams_like_batch_and_leaves_the_model_alone():
    from gru_suite.timeseries import StandardScaler
    from gru_suite_plugins.anomaly.retraining import OnlineScorer, Retraining

    model = detectors()[0]
    before = [p.detach().clone() for p in model.parameters()]
    values = np.stack([np.sin(np.arange(300) / 4), np.cos(np.arange(300) / 7)], 1).astype(np.float32)
    retraining = Retraining(every=50, window=100, steps=3, crop_length=32, batch_size=4)
    settings = dict(score="raw", threshold="quantile", quantile=0.9)
    stream = AnomalyStream(model, Flagger(**settings), 100, retraining)
    online = np.array([stream.update(row)[0] for row in values])
    scaled = torch.from_numpy(StandardScaler.fit(values[:100]).transform(values))
    batch = OnlineScorer(model, retraining, 100).run(scaled)
    np.testing.assert_allclose(online[99:], batch[99:], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        plain = model.raw_scores(scaled[None])[0].numpy()
    np.testing.assert_allclose(batch[:151], plain[:151], rtol=1e-4, atol=1e-6)  # first fine-tune after row 149
    assert not np.allclose(batch[151:], plain[151:], rtol=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_each_fine_tune_trains_on_the_windows_last_rows(monkeypatch):
    from gru_suite_plugins.anomaly import retraining as retraining_module

    tuned = []
    monkeypatch.setattr(retraining_module, "fine_tune", lambda model, recent, settings: tuned.append(recent.clone()))
    scaled = torch.randn(300, 2)
    settings = retraining_module.Retraining(every=50, window=100, steps=3, crop_length=32, batch_size=4)
    retraining_module.OnlineScorer(detectors()[0], settings, 100).run(scaled)
    assert len(tuned) == 4  # after 50, 100, 150 and 200 scored rows
    for recent, seen in zip(tuned, (150, 200, 250, 300)):
        torch.testing.assert_close(recent, scaled[seen - 100 : seen])


def test_detector_inputs_are_the_scaled_values_clipped_both_ways_then_the_covariates():
    from gru_suite.timeseries import StandardScaler
    from gru_suite_plugins.anomaly.data import INPUT_LIMIT, detector_inputs

    scaler = StandardScaler.fit(np.array([[1.0], [3.0]]))  # mean 2, standard deviation 1
    inputs = detector_inputs(scaler, np.array([[0.0], [2.5], [1e20], [-1e20]]), np.array([[5.0], [6], [7], [8]]))
    assert inputs.tolist() == [[-2.0, 5.0], [0.5, 6.0], [INPUT_LIMIT, 7.0], [-INPUT_LIMIT, 8.0]]


def test_a_spike_of_any_size_gets_a_finite_score_and_a_flag_in_a_stream_that_retrains():
    from gru_suite_plugins.anomaly.retraining import Retraining

    values = np.stack([np.sin(np.arange(300) / 4), np.cos(np.arange(300) / 7)], 1).astype(np.float32)
    values[200, 0] = 1e20  # its square overflows 32-bit floats; the fine-tune after row 249 trains on it
    retraining = Retraining(every=50, window=100, steps=3, crop_length=32, batch_size=4)
    stream = AnomalyStream(detectors()[0], Flagger(score="raw", threshold="quantile", quantile=0.99), 100, retraining)
    scored = [stream.update(row) for row in values]
    assert all(np.isfinite(score) for score, _ in scored) and scored[200][1]


def test_retraining_with_dropout_streams_like_batch_whatever_the_global_seed():
    from gru_suite.timeseries import StandardScaler
    from gru_suite_plugins.anomaly.retraining import OnlineScorer, Retraining

    torch.manual_seed(0)
    model = NextStepForecaster(partial(GRUBackbone, hidden_size=8, num_layers=2, dropout=0.5), 1).eval()
    values = np.sin(np.arange(300) / 4)[:, None].astype(np.float32)
    retraining = Retraining(every=50, window=100, steps=3, crop_length=32, batch_size=4)
    torch.manual_seed(1)
    scaled = torch.from_numpy(StandardScaler.fit(values[:100]).transform(values))
    batch = OnlineScorer(model, retraining, 100).run(scaled)
    stream = AnomalyStream(model, Flagger(score="raw", threshold="fixed", fixed=9.0), 100, retraining)
    torch.manual_seed(2)  # another draw of dropout masks, were they taken from the global generator
    online = np.array([stream.update(v)[0] for v in values])
    np.testing.assert_allclose(online[151:], batch[151:], rtol=1e-4, atol=1e-6)


def write_series(path, columns=("value",), rows=200, label=None):
    """A tiny hourly CSV with the given value columns (and a `label` column holding `label` at row 100)."""
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=rows, freq="h")})
    for column in columns:
        frame[column] = np.sin(np.arange(rows) / 5)
    if label is not None:
        frame["label"] = [label if row == 100 else 0 for row in range(rows)]
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case, expected", [
    ("empty", r"empty.csv: not a readable CSV \(No columns to parse from file\)"),
    ("no_values", (r"no_values.csv: no value columns besides the time and label columns; its columns are "
                   r"\['timestamp'\]")),
    ("label_2", r"label_2.csv, line 102, column 'label': expected a label of 0 or 1, got '2'"),
    ("label_yes", r"label_yes.csv, line 102, column 'label': expected a label of 0 or 1, got 'yes'"),
    ("label_missing", r"label_missing.csv, line 102, column 'label': expected a label of 0 or 1, got a missing value"),
    ("renamed", r"b.csv: value columns \['foo'\] differ from \['value'\] of .*a.csv"),
    ("label_absent", r"label_absent.csv: no label column 'label' \(task.data.label_column\); its columns are "
                     r"\['timestamp', 'value'\]"),
])
def test_bad_files_are_named(tmp_path, case, expected):
    path = tmp_path / f"{case}.csv"
    if case == "empty":
        path.write_text("")
    elif case == "no_values":
        write_series(path, columns=())
    elif case == "label_absent":
        write_series(path)
    elif case.startswith("label_"):
        write_series(path, label={"label_2": 2, "label_yes": "yes", "label_missing": ""}[case])
    else:
        path.mkdir()
        write_series(path / "a.csv")
        write_series(path / "b.csv", columns=("foo",))
    with pytest.raises(UserError, match=expected):
        load(path, label_column="label" if case.startswith("label_") else None)


def test_a_label_column_the_file_lacks_is_named_before_its_other_columns_are_read_as_values(tmp_path):
    path = write_series(tmp_path / "s.csv", label="yes")  # its own label column holds words: no value column
    with pytest.raises(UserError, match=r"s\.csv: no label column 'flag' \(task\.data\.label_column\); its columns "
                                        r"are \['timestamp', 'value', 'label'\]$"):
        load(path, label_column="flag")


def test_a_trained_detector_scores_files_without_its_label_column_by_the_windows_file_or_unlabelled(tmp_path,
                                                                                                     caplog):
    write_series(tmp_path / "labelled.csv", label=1)
    write_series(tmp_path / "new.csv")  # new data to score: no label column
    streams = load(tmp_path, label_column="label", labels_optional=True)
    assert [(s.name, s.windows) for s in streams] == [("labelled.csv", [(100, 100)]), ("new.csv", None)]
    assert ("no label column 'label' (task.data.label_column) in 1 file(s) and no windows file naming them, scored "
            "without labels: new.csv") in caplog.text
    with pytest.raises(UserError, match=r"new\.csv: no label column 'label'"):
        load(tmp_path, label_column="label")  # training: the column named is the data's, or a typo
    (tmp_path / "windows.json").write_text(json.dumps({"new.csv": [["2024-01-02 00:00", "2024-01-02 02:00"]]}))
    streams = load(tmp_path, label_column="label", labels_optional=True, windows_path="auto")
    assert [s.windows for s in streams] == [[(100, 100)], [(24, 26)]]  # the label column, else the windows beside


def test_a_resumed_training_run_still_refuses_a_label_column_its_files_lack(tmp_path):
    write_series(tmp_path / "a.csv", rows=600, label=1)
    quiet = [*TINY, f"task.data.path={tmp_path / 'a.csv'}", "task.data.label_column=label", "threads=1",
             "test_after_training=false", "predict_after_training=false", "trainer.max_epochs=1"]
    run.train(compose_train_config("anomaly", quiet, tmp_path / "run"))
    resumed = [*quiet, "task.data.label_column=lable", "trainer.max_epochs=2", "ckpt_path=last"]
    with pytest.raises(UserError, match=r"a\.csv: no label column 'lable'"):
        run.train(compose_train_config("anomaly", resumed, tmp_path / "run"))


@pytest.mark.parametrize("override, expected", [
    ("task.data.validation=1.5", "task.data.validation must be between 0 and 1, got 1.5"),
    ("task.data.probation=2", "task.data.probation must be between 0 and 1, got 2"),
    ("task.detector.retrain.every=0", "task.detector.retrain.every must be at least 1, got 0"),
])
def test_out_of_range_settings_are_named(tmp_path, override, expected):
    with pytest.raises(UserError, match=expected):
        run.build_task(compose_train_config("anomaly", [override], tmp_path).task)


def test_a_retraining_window_no_longer_than_a_crop_is_named_with_the_crop_setting():
    from gru_suite_plugins.anomaly.retraining import Retraining

    with pytest.raises(UserError, match=r"^task.detector.retrain.window must be above task.data.crop_length \(16\), "
                                        r"got 5$"):
        Retraining(every=10, window=5, crop_length=16)


def test_a_folders_csv_files_are_found_below_it_whatever_the_case_of_their_suffix(tmp_path):
    (tmp_path / "group" / "more.csv").mkdir(parents=True)  # a folder of that name is not a file
    for name in ("a.csv", "group/B.CSV", "notes.txt", "c.csv.gz", "group/D.CSV.GZ", "e.gz", ".csv", "f.csv.bak"):
        (tmp_path / name).write_text("timestamp,value\n")
    assert csv_files(tmp_path) == (tmp_path, [tmp_path / "a.csv", tmp_path / "c.csv.gz", tmp_path / "group" / "B.CSV",
                                              tmp_path / "group" / "D.CSV.GZ"])

    (tmp_path / "group" / "b.csv.gz").write_text("timestamp,value\n")  # its reports: group/b.csv and .png
    assert csv_files(tmp_path)[1][2] == tmp_path / "group" / "B.CSV"
    (tmp_path / "group" / "B.csv.gz").write_text("timestamp,value\n")  # group/B.csv and .png, as B.CSV's
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}/group/B.CSV and {tmp_path}/group/B.csv.gz would write "
                                                  "the same reports, group/B.csv and .png: rename or move one")):
        csv_files(tmp_path)


def test_a_folder_of_compressed_csv_files_is_read(tmp_path):
    rows = "".join(f"2024-01-01 {hour:02d}:00,{hour % 5}\n" for hour in range(24))
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(f"timestamp,value\n{rows}".encode()))
    (tmp_path / "b.csv").write_text(f"timestamp,value\n{rows}")
    streams = load(tmp_path, probation=0.5)
    assert [(stream.name, len(stream.series.timestamps)) for stream in streams] == [("a.csv.gz", 24), ("b.csv", 24)]


def test_training_loaders_take_the_configured_worker_processes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_series(data / "s.csv")
    loader = anomaly_task(tmp_path, data, "task.data.num_workers=2").datamodule().train_dataloader()
    assert loader.num_workers == 2


def test_training_crops_end_where_the_validation_rows_begin(tmp_path):
    datamodule = anomaly_task(tmp_path, write_series(tmp_path / "s.csv"), "task.data.validation=0.25",
                              "task.data.crop_length=32").datamodule()
    train, val = datamodule.train_dataloader().dataset, datamodule.val_dataloader().dataset
    assert datamodule.streams[0].probation == 100  # 75 training rows, then 25 validation rows
    assert [start for _, start in train.index] == list(range(75 - 32 + 1)) and train.length == 32
    assert val.index == [(0, 75)] and val.length == 25


def anomaly_task(tmp_path, data, *overrides, state=None):
    cfg = compose_train_config("anomaly", [*TINY, f"task.data.path={data}", "task.data.windows_path=null",
                                           "task.data.probation=0.5", *overrides], tmp_path / "cfg")
    return run.build_task(cfg.task, state)


@pytest.mark.parametrize("overrides, expected", [
    (["task.data.validation=0.9"], (r"s.csv: task.data.validation=0.9 splits its 100-row probationary period into "
                                    r"9 training and 91 validation rows; needed: at least 32 \(task.data.crop_length\) "
                                    r"and 10")),
    (["task.data.validation=0"], "into 100 training and 0 validation rows"),
    (["task.data.crop_length=5"], "task.data.crop_length=5 is shorter than the 10 rows the detector's loss needs"),
    (["task.detector.kind=autoencoder", "task.detector.window=40"], "crop_length=32 is shorter than the 40 rows"),
])
def test_crops_too_short_for_the_loss_are_named(tmp_path, overrides, expected):
    datamodule = anomaly_task(tmp_path, write_series(tmp_path / "s.csv"), *overrides).datamodule()
    with pytest.raises(UserError, match=expected):
        datamodule.train_dataloader()


def test_a_repeated_timestamp_is_one_warning_with_a_label_column(tmp_path, caplog):
    path = write_series(tmp_path / "dst.csv", label=1)
    frame = pd.read_csv(path)
    frame.loc[150, "timestamp"] = frame.loc[149, "timestamp"]  # a clock change repeats an hour
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        streams = anomaly_task(tmp_path, path, "task.data.label_column=label").datamodule().streams
    assert caplog.text.count("timestamps are not after the one before them") == 1
    assert streams[0].windows == [(100, 100)]


def test_a_checkpoint_reads_its_value_columns_by_name(tmp_path, caplog):
    trained = anomaly_task(tmp_path, write_series(tmp_path / "ab.csv", columns=("a", "b")))
    trained.datamodule()
    frame = pd.read_csv(tmp_path / "ab.csv")
    frame["b"] = frame["a"] * 10  # the two columns tell apart
    frame[["timestamp", "b", "a"]].to_csv(swapped := tmp_path / "ba.csv", index=False)
    restored = anomaly_task(tmp_path, swapped, state=trained.state_dict())
    restored.datamodule()
    series = restored.streams[0].series
    assert series.columns == ["a", "b"] and np.allclose(series.values[:, 1], 10 * series.values[:, 0])
    wider = write_series(tmp_path / "abc.csv", columns=("a", "b", "c"))
    renamed = write_series(tmp_path / "xy.csv", columns=("x", "y"))
    with caplog.at_level(logging.WARNING):
        assert anomaly_task(tmp_path, wider, state=trained.state_dict()).datamodule().streams
        anomaly_task(tmp_path, renamed, state=trained.state_dict()).datamodule()
        anomaly_task(tmp_path, swapped, "task.data.value_columns=[b,a]", state=trained.state_dict()).datamodule()
    assert "abc.csv: reading the detector's value columns ['a', 'b']; ignoring ['c']" in caplog.text
    assert ("xy.csv: scoring value column(s) ['x', 'y'] with a detector trained on ['a', 'b'], in this order"
            in caplog.text)
    assert "ba.csv: scoring value column(s) ['b', 'a'] with a detector trained on ['a', 'b']" in caplog.text


def test_a_checkpoint_names_the_value_columns_it_reads(tmp_path):
    trained = anomaly_task(tmp_path, write_series(tmp_path / "one.csv"))
    trained.datamodule()
    assert trained.state["value_columns"] == ["value"]
    two = write_series(tmp_path / "two.csv", columns=("a", "b"))
    with pytest.raises(UserError, match=r"two.csv: has 2 value column\(s\) \['a', 'b'\], but the checkpoint's "
                                        r"detector reads 1 \['value'\] \(choose them with task.data.value_columns\)"):
        anomaly_task(tmp_path, two, state=trained.state_dict()).datamodule()
    named = write_series(tmp_path / "named.csv", columns=("cpu", "memory"))
    one = anomaly_task(tmp_path, named, "task.data.value_columns=memory").datamodule()  # one name, no brackets
    assert one.streams[0].series.columns == ["memory"]


@pytest.mark.parametrize("overrides, sample, rows", [
    ([], 0, range(199)),  # the whole series but its last row, which nothing is predicted from
    # the probation's 100 rows and 20 more, up to a fine-tune
    (["task.detector.retrain.every=20", "task.detector.retrain.steps=2"], 0, range(120)),
    (["task.detector.kind=autoencoder", "task.detector.window=8"], 3, range(3, 11)),  # the window at sample 3
    (["task.detector.kind=autoencoder", "task.detector.window=8", "task.detector.retrain.every=20",
      "task.detector.retrain.steps=2"], 3, range(3, 11)),
])
def test_gate_plots_name_the_file_and_label_each_row_the_backbone_read(tmp_path, monkeypatch, overrides, sample, rows):
    from gru_suite import gates

    data = write_series(tmp_path / "s.csv")
    state = anomaly_task(tmp_path, data, *overrides)
    state.datamodule()
    task = anomaly_task(tmp_path, data, *overrides, state=state.state_dict())
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=4)).eval())
    traced, trace = [], gates.trace_gates
    monkeypatch.setattr(gates, "trace_gates", lambda backbone, x, h0: traced.append(x) or trace(backbone, x, h0))
    view, _ = gates.plot_model_gates(module, tmp_path / "gates", sample=sample)  # as many labels as steps, or raises
    stamps = [str(stamp) for stamp in pd.date_range("2024-01-01", periods=200, freq="h")]
    assert view.title == f"{data}: the {len(rows)} rows from {stamps[rows[0]]} to {stamps[rows[-1]]}"
    assert list(view.steps) == stamps[rows[0] : rows[-1] + 1]
    torch.testing.assert_close(traced[0][0, :, :1], task.streams[0].inputs[rows[0] : rows[-1] + 1, :1])


def test_gate_plots_reach_a_sequence_past_the_first_prediction_batch(tmp_path):
    from gru_suite import gates

    folder = tmp_path / "data"
    folder.mkdir()
    write_series(folder / "a.csv")
    second = write_series(folder / "b.csv")
    state = anomaly_task(tmp_path, folder)
    state.datamodule()
    task = anomaly_task(tmp_path, folder, state=state.state_dict())
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=4)).eval())
    view, _ = gates.plot_model_gates(module, tmp_path / "gates", sample=1)  # each series a batch of its own
    assert view.title.startswith(f"{second}: the 199 rows from ")
    with pytest.raises(UserError, match=r"sample=2 is out of range: the prediction data holds 2 sequence\(s\) as"):
        gates.plot_model_gates(module, tmp_path / "gates", sample=2)


def test_gate_plots_of_a_series_without_timestamps_number_its_rows_as_its_report_does(tmp_path):
    from gru_suite import gates

    data = tmp_path / "s.csv"
    pd.DataFrame({"value": np.sin(np.arange(200) / 5)}).to_csv(data, index=False)
    overrides = ["task.data.time_column=null", "task.detector.kind=autoencoder", "task.detector.window=8"]
    state = anomaly_task(tmp_path, data, *overrides)
    state.datamodule()
    task = anomaly_task(tmp_path, data, *overrides, state=state.state_dict())
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=4)).eval())
    view, _ = gates.plot_model_gates(module, tmp_path / "gates")
    assert view.title == f"{data}: the 8 rows from row 0 to row 7" and view.steps[-1] == "row 7"


def test_labelled_windows_cover_the_rows_of_their_bounds_and_a_repeated_clock_hours_first():
    """A window's first row is its start's, its last row its end's; a bound on a clock hour the file repeats (NAB files
    written in local time, at the change back from daylight saving) is its first occurrence."""
    from pathlib import Path

    from gru_suite.timeseries import Series
    from gru_suite_plugins.anomaly.data import _rows_of_windows

    stamps = pd.DatetimeIndex(["2014-11-02 00:00", "2014-11-02 01:00", "2014-11-02 02:00", "2014-11-02 01:00",
                               "2014-11-02 02:00", "2014-11-02 03:00", "2014-11-02 04:00", "2014-11-02 05:00"])
    series = Series(Path("local.csv"), stamps, ["value"], np.zeros((len(stamps), 1), np.float32))
    at = pd.Timestamp
    assert _rows_of_windows(series, [(at("2014-11-02 01:00"), at("2014-11-02 02:00")),
                                     (at("2014-11-02 03:00"), at("2014-11-02 03:00")),
                                     (at("2014-11-02 04:30"), at("2014-11-02 06:00"))]) == [(1, 2), (5, 5), (7, 7)]
    assert _rows_of_windows(series, [(at("0001-01-01"), at("2014-11-02 00:00")),  # bounds past what nanoseconds hold
                                     (at("2014-11-02 05:00"), at("9999-12-31"))]) == [(0, 0), (7, 7)]
