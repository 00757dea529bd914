"""From raw detector scores to anomaly scores and flags, without labels.

The online protocol follows NAB: the first `probation` observations of a series
are learned from (scaler, threshold calibration) and never flagged; every later
observation is scored and flagged as it arrives. `Flagger.run` (a whole series)
and `AnomalyStream.update` (one observation at a time) give the same results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gru_suite.config import check_choice
from gru_suite.errors import UserError
from gru_suite.timeseries import Calendar, StandardScaler, parse_timestamp
from gru_suite_plugins.anomaly.data import detector_inputs
from gru_suite_plugins.anomaly.detectors import StreamingScorer
from gru_suite_plugins.anomaly.retraining import OnlineScorer, Retraining
from gru_suite_plugins.anomaly.thresholds import AnomalyLikelihood, RangeCheck, Spot, quantile_threshold

THRESHOLDS = ("fixed", "quantile", "spot")
SCORES = ("likelihood", "raw")


@dataclass
class ScoredSeries:
    raw: np.ndarray
    score: np.ndarray
    flags: np.ndarray
    threshold: float
    beyond_range: np.ndarray | None = None
    """The rows where the range check fired (None without `range_tolerance`)."""
    over_threshold: np.ndarray | None = None
    """The rows whose score crossed the threshold (before the cooldown)."""
    thresholds: np.ndarray | None = None
    """Each row's threshold where it moves as the series is scored (SPOT); None where it is `threshold` throughout."""


@dataclass
class Flagger:
    """Normalises raw scores (`score: likelihood | raw`) and flags them by a label-free threshold.

    `threshold`: `fixed` (the value `fixed`), `quantile` (the `quantile` of the probationary
    scores) or `spot` (peaks-over-threshold at risk `spot_q`, calibrated on the probationary
    scores and updated as the stream goes on). With `range_tolerance`, a value that leaves the
    range seen so far by more than that share of it is flagged too (`RangeCheck`). With `cooldown`,
    a flag mutes the flags of the next `cooldown` observations (one alert per event, not one per row).
    """

    score: str = "likelihood"
    threshold: str = "fixed"
    fixed: float = 0.99999
    quantile: float = 0.99
    spot_q: float = 1e-3
    spot_level: float = 0.95
    likelihood: Mapping[str, Any] = field(default_factory=dict)
    skip: int = 0
    """Probationary scores left out of calibration (the detector's burn-in)."""
    range_tolerance: float | None = None
    cooldown: int = 0

    def __post_init__(self) -> None:
        check_choice(self.score, SCORES, "task.scoring.score")
        check_choice(self.threshold, THRESHOLDS, "task.scoring.threshold")
        for name in {"quantile": ("quantile",), "spot": ("spot_q", "spot_level")}.get(self.threshold, ()):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise UserError(f"task.scoring.{name} must be between 0 and 1, got {value}")
        if self.threshold == "spot" and self.score != "raw":
            raise UserError("task.scoring.threshold=spot models the tail of raw scores: set task.scoring.score=raw")
        likelihood = self.score == "likelihood"  # a fixed threshold at 1 or above could flag none of its scores
        if self.threshold == "fixed" and not (isinstance(self.fixed, (int, float))
                                              and (self.fixed < 1 or not likelihood)):
            bound = " below 1 for likelihood scores (which lie between 0 and 1)" if likelihood else ""
            raise UserError(f"task.scoring.fixed must be a number{bound}, got {self.fixed}")
        try:
            self._likelihood = AnomalyLikelihood(**self.likelihood) if self.score == "likelihood" else None
        except TypeError as err:  # a key it does not take
            raise UserError(f"task.scoring.likelihood: {err}") from err
        except ValueError as err:  # the message starts with the setting's name
            raise UserError(f"task.scoring.likelihood.{err}") from err
        if self.threshold == "spot":
            try:
                Spot(q=self.spot_q, level=self.spot_level)
            except ValueError as err:  # "q must be in (0, 0.05), ...": spot_q must be below 1 - spot_level
                raise UserError(f"task.scoring.spot_{err}") from err
        self._spot: Spot | None = None
        self.value = self.fixed
        if self.range_tolerance is not None and self.range_tolerance < 0:
            raise UserError(f"task.scoring.range_tolerance must be at least 0 or null, got {self.range_tolerance}")
        self._range = RangeCheck(self.range_tolerance) if self.range_tolerance is not None else None
        if isinstance(self.cooldown, bool) or not isinstance(self.cooldown, int) or self.cooldown < 0:
            raise UserError(f"task.scoring.cooldown must be a whole number of observations >= 0, got {self.cooldown}")
        self._quiet = 0  # observations still muted by the last flag

    def normalise(self, raw: float) -> float:
        return self._likelihood.update(raw) if self._likelihood else raw

    @property
    def calibration_start(self) -> int:
        """The first probationary score calibration uses: after the detector's burn-in and the likelihood's
        placeholders (its first scores are 0.5 whatever the error, and would pull a quantile down to 0.5)."""
        return max(self.skip, self._likelihood.placeholders if self._likelihood else 0)

    def calibrate(self, probationary_scores: np.ndarray) -> None:
        """Fit the `quantile` or `spot` threshold to a series' probationary scores (from `calibration_start`); a
        UserError where too few are left to fit it."""
        calibration = probationary_scores[self.calibration_start :]
        if self.threshold == "quantile":
            if not len(calibration):
                raise UserError(f"task.scoring.threshold=quantile: the probationary period's "
                                f"{len(probationary_scores)} scores are all within the first {self.calibration_start} "
                                "(burn-in and the likelihood's placeholders); give a longer probationary period")
            self.value = quantile_threshold(calibration, self.quantile)
        elif self.threshold == "spot":
            try:
                self._spot = Spot(q=self.spot_q, level=self.spot_level).fit(calibration)
            except ValueError as err:  # too few probationary scores above the level
                raise UserError(f"task.scoring.threshold=spot: {err} (a longer probationary period)") from err
            self.value = self._spot.threshold

    def fit_range(self, probationary_values: np.ndarray) -> None:
        if self._range is not None:
            self._range.fit(probationary_values)

    def beyond_range(self, values: np.ndarray) -> bool:
        """Whether this observation leaves the range seen so far (False without `range_tolerance`)."""
        return self._range.step(values) if self._range is not None else False

    def flag(self, score: float) -> bool:
        if self._spot is not None:
            flagged = self._spot.step(score)
            self.value = self._spot.threshold
            return flagged
        return score > self.value

    def settle(self, flagged: bool) -> bool:
        """The flag of one scored observation after the cooldown: False while the last flag's mutes last."""
        if self._quiet > 0:
            self._quiet -= 1
            return False
        if flagged:
            self._quiet = self.cooldown
        return flagged

    def run(self, raw: np.ndarray, probation: int, values: np.ndarray | None = None) -> ScoredSeries:
        """Scores and flags for a whole series (equal to streaming it); `values` (T, F), the series
        itself, are needed with `range_tolerance`."""
        score = self._likelihood.transform(raw) if self._likelihood else raw.copy()
        self.calibrate(score[:probation])
        flags = np.zeros(len(raw), dtype=bool)
        thresholds = None
        if self._spot is not None:
            thresholds = np.full(len(raw), self._spot.threshold)
            flags[probation:], thresholds[probation:] = self._spot.run_with_thresholds(score[probation:])
            self.value = self._spot.threshold
        else:
            flags[probation:] = score[probation:] > self.value
        over = flags.copy()
        beyond = None
        if self._range is not None:
            if values is None:
                raise ValueError("Flagger.run needs the series values when range_tolerance is set")
            beyond = self._range.run(values, probation)
            flags |= beyond
        if self.cooldown:
            self._quiet = 0  # a new series starts unmuted
            flags[probation:] = [self.settle(flag) for flag in flags[probation:]]
        return ScoredSeries(raw, score, flags, float(self.value), beyond, over, thresholds)


class AnomalyStream:
    """Score a live stream one observation at a time, with constant memory and time per point
    once the probationary period is over (during it, its observations are kept to fit the
    scaler and calibrate the threshold). A detector trained with `calendar` features needs
    each observation's timestamp (a number: Unix time in `time_unit`, as `task.data.time_unit` reads them; a date
    in `time_format`, as `task.data.time_format`, if given)."""

    def __init__(
        self,
        model: nn.Module,
        flagger: Flagger,
        probation: int,
        retraining: Retraining | None = None,
        calendar: Calendar = Calendar(),
        time_unit: str | None = None,
        skip_missing: bool = False,
        time_format: str | None = None,
    ) -> None:
        self.skip_missing = skip_missing
        self.observations = 0  # taken so far, skipped ones not counted
        self.scorer = OnlineScorer(model, retraining, probation) if retraining else StreamingScorer(model)
        self.width: int = model.n_features  # values per observation
        self.flagger = flagger
        self.probation = probation
        self.calendar = calendar
        self.time_unit, self.time_format = time_unit, time_format
        self._warmup: list[tuple[np.ndarray, np.ndarray]] | None = []
        self.scaler: StandardScaler | None = None

    def update(self, values: np.ndarray | list[float], timestamp: Any = None) -> tuple[float, bool]:
        """Add one observation (one value per column, and its timestamp when the detector reads
        calendar features); returns (score, flag). With `skip_missing`, an observation with a NaN value is
        skipped: (NaN, False), and the stream goes on as if it had not come."""
        x = np.asarray(values, dtype=np.float32).reshape(-1)
        if self.skip_missing and len(x) == self.width and np.isnan(x).any():
            return math.nan, False
        if not np.isfinite(x).all() or len(x) != self.width:
            raise UserError(f"expected {self.width} finite value(s) per observation, got {list(values)}")
        covariates = self._covariates(timestamp)
        self.observations += 1
        if self._warmup is not None:
            self._warmup.append((x, covariates))
            if len(self._warmup) < self.probation:
                return 0.5 if self.flagger.score == "likelihood" else 0.0, False
            return self._end_probation()
        return self._score(x, covariates)

    def _covariates(self, timestamp: Any) -> np.ndarray:
        if not self.calendar.kinds:
            return np.zeros(0, dtype=np.float32)
        if timestamp is None:
            raise UserError(f"this detector reads calendar features {list(self.calendar.kinds)}: "
                            "give each observation's timestamp")
        stamp = parse_timestamp(timestamp, self.time_unit, self.time_format)
        if stamp is pd.NaT:  # unparseable, or empty ("", "NaT")
            expected = (f" (a number: Unix time in {self.time_unit})" if self.time_unit
                        else f" (a date written {self.time_format!r})" if self.time_format else "")
            raise UserError(f"not a timestamp{expected}: {timestamp!r}")
        return self.calendar.row(stamp)

    def _inputs(self, x: np.ndarray, covariates: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(detector_inputs(self.scaler, x[None], covariates[None])[0])

    def _score(self, x: np.ndarray, covariates: np.ndarray) -> tuple[float, bool]:
        score = self.flagger.normalise(self.scorer.update(self._inputs(x, covariates)))
        flagged = self.flagger.flag(score)
        return score, self.flagger.settle(self.flagger.beyond_range(x) or flagged)

    def _end_probation(self) -> tuple[float, bool]:
        history, self._warmup = self._warmup, None
        values = np.stack([x for x, _ in history])
        self.scaler = StandardScaler.fit(values, "the stream's probationary period")
        self.flagger.fit_range(values)
        scores = [self.flagger.normalise(self.scorer.update(self._inputs(x, c))) for x, c in history]
        self.flagger.calibrate(np.asarray(scores))
        return scores[-1], False
