"""Anomaly detection: a GRU detector scores streams online; flags come from label-free thresholds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gru_suite.artifacts import writing_progress
from gru_suite.config import name_list
from gru_suite.distributed import gather_dict
from gru_suite.errors import UserError, first_named
from gru_suite.task import BackboneFactory, SequenceView, Stage, StepOutput, TaskPlugin
from gru_suite.timeseries import MISSING_POLICIES, Calendar, Series
from gru_suite_plugins.anomaly.data import AnomalyData, StreamData, load_streams
from gru_suite_plugins.anomaly.detectors import (DETECTORS, ERRORS, build_detector, shortest_crop, squared_errors,
                                                 unscored_rows)
from gru_suite_plugins.anomaly.flagging import SCORES, THRESHOLDS, AnomalyStream, Flagger, ScoredSeries
from gru_suite_plugins.anomaly.retraining import OnlineScorer, Retraining
from gru_suite_plugins.anomaly.scoring import NAB_PROFILES, evaluate_flags, nab_score
from gru_suite_plugins.anomaly.thresholds import MIN_PEAKS
from gru_suite_plugins.anomaly.writer import write_series_report


class AnomalyTask(TaskPlugin):
    """Learn normal behaviour from each series' probationary period, then score the rest.

    Test metrics (when labels are given): point, event and point-adjusted F1 averaged
    over series, and the NAB score of every profile over the whole corpus. The test stage's scored
    series stay in `test_scored` (by series name) until the next test.
    """

    choices = (("detector.kind", DETECTORS), ("detector.error", ERRORS), ("scoring.score", SCORES),
               ("scoring.threshold", THRESHOLDS), ("data.missing", MISSING_POLICIES))
    path_settings = ("data.path", "data.windows_path")
    trained_settings = ("data.calendar", "data.calendar_harmonics")  # the detector's inputs
    required = ("data.path", "data.probation", "data.probation_max", "data.validation", "data.crop_length",
                "detector.window", "detector.burn_in", "detector.retrain.window", "detector.retrain.steps",
                "detector.retrain.lr")
    numbers = (*TaskPlugin.numbers, ("data.probation", float, 0, 1), ("data.probation_max", int, 1),
               ("data.validation", float, 0, 1), ("data.crop_length", int, 2), ("detector.window", int, 1),
               ("detector.burn_in", int, 0), ("detector.retrain.every", int, 1), ("detector.retrain.window", int, 2),
               ("detector.retrain.steps", int, 1), ("detector.retrain.lr", float, 0), ("scoring.fixed", float, 0),
               ("scoring.quantile", float, 0), ("scoring.spot_q", float, 0), ("scoring.spot_level", float, 0),
               ("scoring.range_tolerance", float, 0), ("scoring.cooldown", int, 0), ("data.calendar_harmonics", int, 1))

    def datamodule(self) -> AnomalyData:
        data, detector = self.cfg.data, self.cfg.detector
        trained = "n_features" in self.state  # a restored detector scores: its probation only scales and calibrates
        labels = data.get("label_column")
        labels_optional = trained and labels == self.state.get("label_column", labels)  # the column trained with
        if self.calendar.kinds and not data.get("time_column"):
            raise UserError(f"calendar features {list(self.calendar.kinds)} need a time column of timestamps: set "
                            "task.data.time_column" + (" (the detector was trained with them)" if trained else
                                                       " (or task.data.calendar=[])"))
        self.streams: list[StreamData] = load_streams(
            data.path, data.get("time_column"), name_list(data.get("value_columns"), "task.data.value_columns"),
            labels,
            data.get("windows_path"), data.probation, data.probation_max, data.get("missing", "interpolate"),
            min_probation=2 if trained else 2 * data.crop_length, calendar=self.calendar,
            preferred_columns=self.state.get("value_columns"), time_unit=data.get("time_unit"),
            time_format=data.get("time_format"), labels_optional=labels_optional,
        )
        flagger = self.flagger()  # a bad scoring or retraining config fails now, not after training
        self.retraining()
        self._check_calibration(flagger)
        self._check_value_columns(self.streams[0].series)
        self.state.setdefault("label_column", labels)
        self.state.setdefault("calendar", list(self.calendar.kinds))
        self.state.setdefault("calendar_harmonics", self.calendar.harmonics)
        self.state.setdefault("n_features", len(self.streams[0].series.columns))
        self.state.setdefault("value_columns", list(self.streams[0].series.columns))
        self._raw: dict[int, np.ndarray] = {}
        self.test_scored: dict[str, ScoredSeries] = {}
        return AnomalyData(self.streams, data.crop_length, data.validation, data.batch_size,
                           shortest_crop(detector.kind, detector.window, detector.burn_in), data.get("num_workers", 0))

    def _check_value_columns(self, series: Series) -> None:
        """A trained detector reads as many value columns as it was trained on (all files have the same ones)."""
        trained = self.state.get("n_features")
        if trained is not None and trained != len(series.columns):
            names = f" {self.state['value_columns']}" if "value_columns" in self.state else ""
            raise UserError(f"{series.path}: has {len(series.columns)} value column(s) {series.columns}, but the "
                            f"checkpoint's detector reads {trained}{names} (choose them with task.data.value_columns)")

    def _check_calibration(self, flagger: Flagger) -> None:
        """A label-free threshold needs enough probationary scores past the burn-in and the likelihood's
        placeholders (SPOT: enough above its initial level): fail before training, not after."""
        scoring = self.cfg.scoring
        if scoring.threshold == "spot":
            needed = math.ceil(MIN_PEAKS / (1 - scoring.spot_level)) + flagger.calibration_start
            setting, advice = f"spot_level={scoring.spot_level}", "lower task.scoring.spot_level"
        elif scoring.threshold == "quantile":
            needed = flagger.calibration_start + math.ceil(round(1 / (1 - scoring.quantile), 6))
            setting, advice = f"quantile={scoring.quantile}", "lower task.scoring.quantile"
        else:
            return
        short = [s.name for s in self.streams if s.probation < needed]
        if short:
            raise UserError(
                f"task.scoring.threshold={scoring.threshold} at {setting} needs probationary periods of "
                f">= {needed} rows; too short: {first_named(short)} "
                f"({advice} or use another threshold)"
            )

    def build_model(self, backbone: BackboneFactory) -> nn.Module:
        detector = self.cfg.detector
        return build_detector(detector.kind, backbone, self.state["n_features"], detector.window, self.calendar.width,
                              scored_error(detector, self.state))

    def flagger(self) -> Flagger:
        """A fresh `Flagger` of the `scoring` settings, for one series (it learns the series' scores as it goes)."""
        scoring, detector = self.cfg.scoring, self.cfg.detector  # numbers checked when the task is built (`numbers`)
        return Flagger(
            score=scoring.score, threshold=scoring.threshold, fixed=scoring.fixed, quantile=scoring.quantile,
            spot_q=scoring.spot_q, spot_level=scoring.spot_level, likelihood=dict(scoring.likelihood),
            # calibration leaves out the burn-in and the rows the detector cannot score (0 placeholders)
            skip=max(detector.burn_in, self.unscored_rows()),
            range_tolerance=scoring.get("range_tolerance"),
            cooldown=scoring.get("cooldown") or 0,
        )

    def unscored_rows(self) -> int:
        """The leading rows of each series that the configured detector cannot score (`unscored_rows`)."""
        return unscored_rows(self.cfg.detector.kind, self.cfg.detector.window)

    def retraining(self) -> Retraining | None:
        retrain, detector = self.cfg.detector.get("retrain") or {}, self.cfg.detector
        if not retrain.get("every"):
            return None
        return Retraining(every=retrain.every, window=retrain.window, steps=retrain.steps, lr=retrain.lr,
                          crop_length=self.cfg.data.crop_length, burn_in=detector.burn_in)

    def stream(self, model: nn.Module, probation: int) -> AnomalyStream:
        """A live scorer with this task's flagger, retraining and calendar features."""
        return AnomalyStream(model, self.flagger(), probation, self.retraining(), self.calendar,
                             self.cfg.data.get("time_unit"), skip_missing=self.cfg.data.get("missing") == "skip",
                             time_format=self.cfg.data.get("time_format"))

    @property
    def calendar(self) -> Calendar:
        """The calendar covariates: those a trained detector was trained with, else `task.data.calendar`
        (a list, or one name) with `task.data.calendar_harmonics`."""
        if "n_features" in self.state:  # trained: its inputs are fixed (none before calendar features existed)
            return Calendar(tuple(self.state.get("calendar", [])), int(self.state.get("calendar_harmonics", 1)))
        kinds = name_list(self.cfg.data.get("calendar"), "task.data.calendar")
        return Calendar(tuple(kinds), int(self.cfg.data.get("calendar_harmonics") or 1))

    def raw_scores(self, model: nn.Module, index: int, x: Tensor) -> Tensor:
        """Raw scores of one whole series (1, T, F + C), with periodic retraining when configured."""
        retraining = self.retraining()
        if retraining is None:
            return model.raw_scores(x)[0]
        online = OnlineScorer(model, retraining, self.streams[index].probation)
        return torch.from_numpy(online.run(x[0]))

    def describe_sequence(self, datamodule: AnomalyData, batch: tuple[int, Tensor], sample: int) -> SequenceView:
        """The file and the rows of what its backbone read first, each step's row: an autoencoder's window
        `sample`; a forecaster's series from its start, up to its first fine-tune when it retrains (the stretch
        scored in one pass), else all but the last row (which nothing is predicted from)."""
        stream = self.streams[batch[0]]
        if self.cfg.detector.kind == "autoencoder":
            rows = range(sample, sample + self.cfg.detector.window)
        else:
            retraining, length = self.retraining(), len(stream.series.values)
            first_pass = length - 1 if retraining is None else retraining.next_fine_tune(0, stream.probation)
            rows = range(min(length, first_pass))
        first, last = stream.series.row_names([rows[0], rows[-1]])
        return SequenceView(f"{stream.series.path}: the {len(rows)} rows from {first} to {last}",
                            stream.series.row_names(rows))

    def step(self, model: nn.Module, batch: Any, stage: Stage) -> StepOutput:
        if stage in ("train", "val"):
            return StepOutput(model.loss(batch, self.cfg.detector.burn_in), len(batch))
        index, x = batch
        raw = self.raw_scores(model, index, x)
        self._raw[index] = raw.float().cpu().numpy()
        # the detector's training loss (squared error) over the rows it scores after the probationary period: a mean
        # over all the test series' rows, as the training loss is over its windows
        scored = raw[max(self.streams[index].probation, self.unscored_rows()):]
        loss = squared_errors(scored, model.error).mean() if len(scored) else raw.new_zeros(())
        return StepOutput(loss, 1, loss_weight=len(scored))

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        if stage != "test":
            return {}
        raw_scores = gather_dict(self._raw)  # a NAB score needs every series, not one process's share
        if not raw_scores:
            return {}
        scored = {i: self.flagger().run(raw, self.streams[i].probation, self.streams[i].series.values)
                  for i, raw in sorted(raw_scores.items())}
        self._raw = {}
        self.test_scored = {self.streams[i].name: series for i, series in scored.items()}
        return self._metrics(scored)

    def _metrics(self, scored: dict[int, ScoredSeries]) -> dict[str, float]:
        labelled = [i for i in scored if self.streams[i].windows is not None]
        with_anomalies = [i for i in labelled if self.streams[i].windows]
        metrics: dict[str, float] = {}
        if with_anomalies:  # F1 is undefined on a series without anomalies
            per_series = [evaluate_flags(scored[i].flags, self.streams[i].labels()) for i in with_anomalies]
            metrics = {k: float(np.mean([m[k] for m in per_series])) for k in ("point_f1", "event_f1", "pa_f1")}
        if not labelled:
            return metrics
        flags = {self.streams[i].name: scored[i].flags for i in labelled}
        windows = {self.streams[i].name: self.streams[i].windows for i in labelled}
        for profile in NAB_PROFILES:
            metrics[f"nab_{profile}"] = nab_score(flags, None, windows, profile).normalized
        return metrics

    @torch.no_grad()
    def predict_step(self, model: nn.Module, batch: Any) -> tuple[int, np.ndarray]:
        index, x = batch
        return index, self.raw_scores(model, index, x).float().cpu().numpy()

    def write_predictions(self, predictions: list[Any], datamodule: AnomalyData, out_dir: Path) -> list[Path]:
        paths, unscored = [], self.unscored_rows()
        for index, raw in writing_progress(predictions, "reports"):
            stream = self.streams[index]
            scored = self.flagger().run(raw, stream.probation, stream.series.values)
            paths += write_series_report(stream, scored, Path(out_dir), unscored)
        return paths


def scored_error(detector: Any, state: dict[str, Any]) -> str:
    """The kind of raw score a detector gives (`task.detector.error`, `ERRORS`). A checkpoint trained before that
    setting existed (2026-12-07) does not name it: those trained before e918ecd (2026-12-01) scored squared errors,
    later ones root-mean-square errors, and only the later ones keep `calendar_harmonics` in their state (98e6efe,
    three hours after e918ecd)."""
    if "error" in detector:
        return detector.error
    return "rms" if "calendar_harmonics" in state else "squared"
