"""Label-free anomaly flags from raw scores (e.g. a GRU's prediction error per step).

Four tools, each usable in batch (numpy arrays) and streaming (one value at a time, O(1)
memory and amortised O(1) time per point) with identical results in both modes:

- `AnomalyLikelihood`: Numenta's anomaly likelihood (nupic `anomaly_likelihood.py`), made
  fully incremental: the Gaussian of short-term averaged scores is re-estimated every step
  from running statistics over a ring buffer instead of every 100 steps from a list.
- `quantile_threshold`: the q-quantile of validation scores.
- `Spot`: Streaming Peaks-Over-Threshold (Siffer et al., KDD 2017) with a Generalised
  Pareto tail fitted by Grimshaw's method (numpy only).
- `RangeCheck`: the spatial anomaly of NAB's Numenta detector: a value beyond the range
  seen so far by more than a share of that range (a flag of its own, from the values).

`AnomalyLikelihood` and `Spot` save their state with `state_dict()` (plain JSON-able data) and resume from it
with `from_state()`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

# Numenta's filter: a tail probability <= RED right after another one <= RED is reported as YELLOW,
# so a sustained anomaly is flagged red once, at its onset (nupic `_filterLikelihoods`).
_RED_TAIL = 1e-5
_YELLOW_TAIL = 1e-3
# Fewest excesses over the initial threshold that SPOT accepts for a GPD fit.
MIN_PEAKS = 10


def _finite_array(name: str, values: ArrayLike, min_size: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return array


def _finite_scalar(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_open_unit(name: str, value: float, upper: float = 1.0) -> None:
    if not 0.0 < value < upper:
        raise ValueError(f"{name} must be in (0, {upper:g}), got {value!r}")


class AnomalyLikelihood:
    """Streaming anomaly likelihood in the spirit of Numenta's `AnomalyLikelihood`.

    Per raw score: average it with the previous `averaging_window - 1` scores, compare the
    average with a Gaussian fitted to the averages of the last `historic_window` steps
    (excluding the current one), and return 1 - tail probability. The first
    `learning_period + estimation_samples` steps return 0.5; averages from the first
    `learning_period` steps never enter the Gaussian (Numenta's `skipRecords`).

    Defaults target series of a few thousand points from an already trained model:
    learning_period=100 (hidden-state burn-in; Numenta's 288 assumes an HTM still learning),
    estimation_samples=100 (Numenta's), historic_window=2000 (Numenta's 8640 is a month at
    5-minute steps, longer than the series, i.e. never slides), averaging_window=10 and
    min_variance=3e-4 (Numenta's; it assumes scores of order 0.01-1, scale it as
    (0.02 * typical score)^2 otherwise). `two_sided=True` is Numenta's symmetric tail
    (scores far *below* the mean also score high); the default one-sided tail suits errors,
    where low is never anomalous, and gives likelihoods below 0.5 for below-average scores.
    `suppress_repeats` is Numenta's red-zone filter (see `_RED_TAIL`). Two of Numenta's rules are not
    taken over: its floor of 0.03 under the fitted mean (HTM scores are fractions of columns; these are
    prediction errors of any scale), and its broad null distribution for a metric whose own values barely
    vary (the likelihood sees scores, not values; the range check and a constant column's scaling cover it).
    """

    def __init__(
        self,
        learning_period: int = 100,
        estimation_samples: int = 100,
        historic_window: int = 2000,
        averaging_window: int = 10,
        min_variance: float = 3e-4,
        two_sided: bool = False,
        suppress_repeats: bool = True,
    ) -> None:
        _check_int("learning_period", learning_period, 0)
        _check_int("estimation_samples", estimation_samples, 1)
        _check_int("historic_window", historic_window, 1)
        if historic_window < estimation_samples:
            raise ValueError(
                f"historic_window ({historic_window}) must be >= estimation_samples ({estimation_samples})"
            )
        _check_int("averaging_window", averaging_window, 1)
        if not (math.isfinite(min_variance) and min_variance > 0):
            raise ValueError(f"min_variance must be finite and > 0, got {min_variance!r}")
        self.learning_period = learning_period
        self.estimation_samples = estimation_samples
        self.historic_window = historic_window
        self.averaging_window = averaging_window
        self.min_variance = float(min_variance)
        self.two_sided = bool(two_sided)
        self.suppress_repeats = bool(suppress_repeats)
        self._iteration = 0
        self._recent: deque[float] = deque(maxlen=averaging_window)
        self._window: list[float] = []  # ring buffer of averaged scores
        self._head = 0  # oldest entry once the window is full
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from _mean
        self._replaced = 0  # replacements since the last exact recomputation
        self._prev_red = False

    @property
    def placeholders(self) -> int:
        """The first steps, whose likelihood is 0.5 whatever the score (nothing is estimated yet)."""
        return self.learning_period + self.estimation_samples

    def update(self, raw: float) -> float:
        """Likelihood in [0, 1] that `raw` is anomalous given the scores seen so far."""
        raw = _finite_scalar("raw", raw)
        self._recent.append(raw)
        average = math.fsum(self._recent) / len(self._recent)
        step = self._iteration
        self._iteration += 1
        if step < self.learning_period:
            return 0.5
        if step < self.learning_period + self.estimation_samples:
            self._push(average)
            return 0.5
        tail = self._tail(average)
        self._push(average)
        red = tail <= _RED_TAIL
        if self.suppress_repeats and red and self._prev_red:
            tail = _YELLOW_TAIL
        self._prev_red = red
        return 1.0 - tail

    def transform(self, raw_scores: ArrayLike) -> np.ndarray:
        """`update` over a 1-D array (validated first, so a bad value changes no state)."""
        scores = _finite_array("raw_scores", raw_scores, min_size=0)
        return np.array([self.update(value) for value in scores], dtype=np.float64)

    def _tail(self, average: float) -> float:
        variance = max(self._m2 / len(self._window), self.min_variance)
        z = (average - self._mean) / math.sqrt(variance)
        if self.two_sided:
            z = abs(z)
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def _push(self, value: float) -> None:
        """Add to the ring buffer, updating mean and M2 in O(1) (exact recompute every window)."""
        window = self._window
        if len(window) < self.historic_window:
            window.append(value)
            delta = value - self._mean
            self._mean += delta / len(window)
            self._m2 += delta * (value - self._mean)
            return
        old = window[self._head]
        window[self._head] = value
        self._head = (self._head + 1) % self.historic_window
        new_mean = self._mean + (value - old) / self.historic_window
        self._m2 = max(0.0, self._m2 + (value - old) * (value - new_mean + old - self._mean))
        self._mean = new_mean
        self._replaced += 1
        if self._replaced == self.historic_window:  # bound rounding drift
            self._replaced = 0
            self._mean = math.fsum(window) / len(window)
            self._m2 = math.fsum((v - self._mean) ** 2 for v in window)

    def state_dict(self) -> dict[str, Any]:
        """Config and running state as plain Python data (JSON-serialisable)."""
        return {
            "config": {
                "learning_period": self.learning_period,
                "estimation_samples": self.estimation_samples,
                "historic_window": self.historic_window,
                "averaging_window": self.averaging_window,
                "min_variance": self.min_variance,
                "two_sided": self.two_sided,
                "suppress_repeats": self.suppress_repeats,
            },
            "iteration": self._iteration,
            "recent": list(self._recent),
            "window": list(self._window),
            "head": self._head,
            "mean": self._mean,
            "m2": self._m2,
            "replaced": self._replaced,
            "prev_red": self._prev_red,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AnomalyLikelihood:
        """Rebuild an instance that continues exactly where `state_dict()` was taken."""
        model = cls(**state["config"])
        model._iteration = int(state["iteration"])
        model._recent.extend(float(v) for v in state["recent"])
        model._window = [float(v) for v in state["window"]]
        model._head = int(state["head"])
        model._mean = float(state["mean"])
        model._m2 = float(state["m2"])
        model._replaced = int(state["replaced"])
        model._prev_red = bool(state["prev_red"])
        return model


def quantile_threshold(validation_scores: ArrayLike, q: float = 0.99) -> float:
    """The q-quantile of scores from normal data; flag `scores > threshold` (~1 - q of them)."""
    _check_open_unit("q", q)
    return float(np.quantile(_finite_array("validation_scores", validation_scores), q))


def _grimshaw_w(x: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Grimshaw's w(x) = u(x) v(x) - 1 for each x, written to avoid cancellation near x = 0."""
    xy = np.multiply.outer(x, peaks)
    u_minus_1 = -np.mean(xy / (1.0 + xy), axis=-1)
    log_mean = np.mean(np.log1p(xy), axis=-1)
    return u_minus_1 + (1.0 + u_minus_1) * log_mean


def _roots(x: np.ndarray, peaks: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Roots of w bracketed by sign changes on the sorted grid `x`, refined by bisection."""
    w = _grimshaw_w(x, peaks)
    change = np.nonzero(np.sign(w[:-1]) * np.sign(w[1:]) < 0)[0]
    lo, hi, w_lo = x[change], x[change + 1], w[change]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        w_mid = _grimshaw_w(mid, peaks)
        same = np.sign(w_mid) == np.sign(w_lo)
        lo, w_lo = np.where(same, mid, lo), np.where(same, w_mid, w_lo)
        hi = np.where(same, hi, mid)
    return 0.5 * (lo + hi)


def fit_gpd(excesses: ArrayLike) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a GPD with location 0, by Grimshaw's method.

    With x = gamma / sigma the likelihood equations reduce to w(x) = 0, x in (-1/max, 0) or
    (0, 2 (mean - min) / min^2]; gamma = mean(log1p(x Y)), sigma = gamma / x. Roots are
    bracketed on log-spaced grids and bisected; the candidate with the largest log-likelihood
    -n (log sigma + 1 + gamma) wins, x = 0 (exponential, sigma = mean) included. Where the
    likelihood has no interior maximum (short bounded tails, whose supremum lies at gamma < -1)
    the exponential fit is kept, which errs towards a higher SPOT threshold. Agrees with
    scipy.stats.genpareto.fit(floc=0) (checked on random samples) wherever it finds gamma > -1.
    """
    peaks = _finite_array("excesses", excesses, min_size=2)
    if np.any(peaks <= 0):
        raise ValueError("excesses must be > 0")
    y_min, y_max, y_mean = float(peaks.min()), float(peaks.max()), float(peaks.mean())
    best = (0.0, y_mean, -(math.log(y_mean) + 1.0))  # (gamma, sigma, log-likelihood / n)
    edge = np.geomspace(1e-10, 0.5, 50)
    negative = -np.concatenate([1.0 - edge, edge[::-1]]) / y_max  # ascending in (-1/max, 0)
    upper = 2.0 * (y_mean - y_min) / y_min**2
    grids = [negative]
    if upper * y_max > 1e-10:
        decades = math.log10(upper * y_max) + 10.0
        grids.append(np.geomspace(1e-10 / y_max, upper, max(20, int(10 * decades))))
    for grid in grids:
        for x in _roots(grid, peaks):
            gamma = float(np.mean(np.log1p(x * peaks)))
            sigma = gamma / float(x)
            if sigma > 0:
                score = -(math.log(sigma) + 1.0 + gamma)
                if score > best[2]:
                    best = (gamma, sigma, score)
    return best[0], best[1]


def _gpd_quantile(t: float, gamma: float, sigma: float, ratio: float) -> float:
    """z with P(X > z) = ratio * P(X > t) under the GPD tail: t + sigma/gamma (ratio^-gamma - 1)."""
    if gamma == 0.0:
        return t - sigma * math.log(ratio)
    return t + sigma * math.expm1(-gamma * math.log(ratio)) / gamma


class Spot:
    """Streaming Peaks-Over-Threshold: flags values above the estimated (1 - q)-quantile z_q.

    `fit` sets the initial threshold t to the `level` quantile of calibration scores and fits a
    GPD to the excesses over t; z_q = t + sigma/gamma ((q n / N_t)^-gamma - 1). Then, per
    value (Siffer et al., Algorithm 1): above z_q it is flagged and otherwise ignored; between
    t and z_q it becomes a peak (N_t and n grow) and every `refit_every`-th new peak refits the
    GPD and z_q; below t only n grows. z_q changes only at refits, as in the paper.
    The fit uses the latest `max_peaks` peaks (N_t still counts all of them) so memory and the
    cost of a refit stay bounded; the default 1000 is far more than a GPD fit needs.
    """

    def __init__(
        self, q: float = 1e-4, level: float = 0.98, refit_every: int = 1, max_peaks: int = 1000
    ) -> None:
        _check_open_unit("level", level)
        _check_open_unit("q", q, upper=1.0 - level)
        _check_int("refit_every", refit_every, 1)
        _check_int("max_peaks", max_peaks, MIN_PEAKS)
        self.q = float(q)
        self.level = float(level)
        self.refit_every = refit_every
        self.max_peaks = max_peaks
        self._peaks: deque[float] = deque(maxlen=max_peaks)
        self._fitted: dict[str, float] | None = None  # t, gamma, sigma, z_q
        self._n = 0
        self._n_peaks = 0
        self._pending = 0  # peaks added since the last refit

    def fit(self, calibration: ArrayLike) -> Spot:
        """Initial threshold, GPD and z_q from scores of (mostly) normal behaviour."""
        values = _finite_array("calibration", calibration, min_size=2)
        t = float(np.quantile(values, self.level))
        excesses = values[values > t] - t
        if excesses.size < MIN_PEAKS:
            raise ValueError(
                f"calibration gives {excesses.size} values above its level={self.level} quantile, "
                f"need >= {MIN_PEAKS}: pass at least {math.ceil(MIN_PEAKS / (1 - self.level))} "
                "distinct values or lower level"
            )
        self._peaks.clear()
        self._peaks.extend(excesses.tolist())
        self._n, self._n_peaks, self._pending = values.size, int(excesses.size), 0
        self._fitted = {"t": t}
        self._refit()
        return self

    def _refit(self) -> None:
        fitted = self._require_fit()
        gamma, sigma = fit_gpd(np.fromiter(self._peaks, dtype=np.float64, count=len(self._peaks)))
        ratio = self.q * self._n / self._n_peaks
        fitted.update(gamma=gamma, sigma=sigma, z_q=_gpd_quantile(fitted["t"], gamma, sigma, ratio))
        self._pending = 0

    def _require_fit(self) -> dict[str, float]:
        if self._fitted is None:
            raise RuntimeError("Spot is not fitted: call fit(calibration) first")
        return self._fitted

    def step(self, value: float) -> bool:
        """Process one value; True if it is flagged as anomalous."""
        fitted = self._require_fit()
        value = _finite_scalar("value", value)
        if value > fitted["z_q"]:
            return True
        self._n += 1
        if value > fitted["t"]:
            self._peaks.append(value - fitted["t"])
            self._n_peaks += 1
            self._pending += 1
            if self._pending >= self.refit_every:
                self._refit()
        return False

    def run(self, values: ArrayLike) -> np.ndarray:
        """`step` over a 1-D array (validated first, so a bad value changes no state)."""
        return self.run_with_thresholds(values)[0]

    def run_with_thresholds(self, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """`run`'s flags, and the threshold each value was compared with (it moves as SPOT refits)."""
        self._require_fit()
        array = _finite_array("values", values, min_size=0)
        thresholds = np.empty(len(array))
        flags = np.empty(len(array), dtype=bool)
        for i, value in enumerate(array):
            thresholds[i] = self.threshold
            flags[i] = self.step(value)
        return flags, thresholds

    @property
    def threshold(self) -> float:
        """Current alarm threshold z_q."""
        return self._require_fit()["z_q"]

    @property
    def initial_threshold(self) -> float:
        """t, the `level` quantile of the calibration scores (fixed after `fit`)."""
        return self._require_fit()["t"]

    @property
    def gamma(self) -> float:
        """GPD shape of the current fit (0: exponential tail, > 0: heavy, < 0: bounded)."""
        return self._require_fit()["gamma"]

    @property
    def sigma(self) -> float:
        """GPD scale of the current fit."""
        return self._require_fit()["sigma"]

    def state_dict(self) -> dict[str, Any]:
        """Config and running state as plain Python data (JSON-serialisable)."""
        return {
            "config": {"q": self.q, "level": self.level, "refit_every": self.refit_every,
                       "max_peaks": self.max_peaks},
            "fitted": None if self._fitted is None else dict(self._fitted),
            "peaks": list(self._peaks),
            "n": self._n,
            "n_peaks": self._n_peaks,
            "pending": self._pending,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Spot:
        """Rebuild an instance that continues exactly where `state_dict()` was taken."""
        spot = cls(**state["config"])
        fitted = state["fitted"]
        spot._fitted = None if fitted is None else {k: float(v) for k, v in fitted.items()}
        spot._peaks.extend(float(v) for v in state["peaks"])
        spot._n = int(state["n"])
        spot._n_peaks = int(state["n_peaks"])
        spot._pending = int(state["pending"])
        return spot


class RangeCheck:
    """Flags an observation that leaves the range of all earlier ones (per column) by more than
    `tolerance` times that range, as NAB's Numenta detector does (`spatialTolerance`, 0.05).

    `fit` takes the probationary rows; `step` checks one row and widens the range; `run` does
    the same for a whole series at once, with equal results.
    """

    def __init__(self, tolerance: float) -> None:
        _finite_scalar("tolerance", tolerance)
        if tolerance < 0:
            raise ValueError(f"tolerance must be at least 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def fit(self, history: ArrayLike) -> RangeCheck:
        rows = _rows(history)
        self.low, self.high = rows.min(0), rows.max(0)
        return self

    def step(self, row: ArrayLike) -> bool:
        if self.low is None or self.high is None:
            raise RuntimeError("RangeCheck.step before fit")
        x = np.asarray(row, dtype=np.float64).reshape(-1)
        flagged = bool(self._beyond(x, self.low, self.high).any())
        self.low, self.high = np.minimum(self.low, x), np.maximum(self.high, x)
        return flagged

    def run(self, values: ArrayLike, probation: int) -> np.ndarray:
        """Flags (T,) for a series whose first `probation` rows fit the range (never flagged)."""
        rows = _rows(values)
        flags = np.zeros(len(rows), dtype=bool)
        if probation < 1 or probation >= len(rows):
            return flags
        low = np.minimum.accumulate(rows, 0)[probation - 1 : -1]  # range of the rows before each one
        high = np.maximum.accumulate(rows, 0)[probation - 1 : -1]
        flags[probation:] = self._beyond(rows[probation:], low, high).any(-1)
        self.low, self.high = np.minimum(low[-1], rows[-1]), np.maximum(high[-1], rows[-1])
        return flags

    def _beyond(self, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        margin = self.tolerance * (high - low)
        return (high > low) & ((x > high + margin) | (x < low - margin))


def _rows(values: ArrayLike) -> np.ndarray:
    rows = np.asarray(values, dtype=np.float64)
    return rows.reshape(len(rows), -1)
