import json
import math

import numpy as np
import pytest

from gru_suite_plugins.anomaly.thresholds import (
    RangeCheck,
    AnomalyLikelihood,
    Spot,
    fit_gpd,
    quantile_threshold,
)


def _json_round_trip(state: dict) -> dict:
    return json.loads(json.dumps(state))


def _gpd_sample(rng: np.random.Generator, gamma: float, sigma: float, size: int) -> np.ndarray:
    u = rng.random(size)
    return sigma * np.expm1(-gamma * np.log1p(-u)) / gamma


def _gpd_loglik(y: np.ndarray, gamma: float, sigma: float) -> float:
    z = 1.0 + gamma * y / sigma
    if sigma <= 0 or np.any(z <= 0):
        return -math.inf
    return float(-y.size * math.log(sigma) - (1.0 + 1.0 / gamma) * np.log(z).sum())


# ---------------------------------------------------------------- AnomalyLikelihood


def test_likelihood_constant_then_spike():
    raw = np.full(600, 0.1)
    raw[400] = 1.0
    model = AnomalyLikelihood(learning_period=50, estimation_samples=50)
    out = model.transform(raw)
    assert np.all(out[:100] == 0.5)  # warm-up
    assert np.all(out[100:400] <= 0.5 + 1e-12)  # steady part
    assert out[400] > 0.9999
    assert np.all(out[411:] <= 0.5 + 1e-12)  # steady again once the spike left the average


def test_likelihood_repeats_are_suppressed_unless_disabled():
    raw = np.full(300, 0.1)
    raw[250:253] = 1.0  # three red averages in a row
    suppressed = AnomalyLikelihood(learning_period=50, estimation_samples=50).transform(raw)
    assert suppressed[250] > 1 - 1e-5
    assert np.allclose(suppressed[251:253], 1 - 1e-3)
    plain = AnomalyLikelihood(learning_period=50, estimation_samples=50, suppress_repeats=False)
    plain = plain.transform(raw)
    assert np.all(plain[250:253] > 1 - 1e-5)


def test_likelihood_iid_noise_is_calibrated_and_two_sided_is_symmetric():
    raw = np.random.default_rng(0).normal(1.0, 0.2, 3000)
    one = AnomalyLikelihood().transform(raw)[200:]
    assert 0.4 < one.mean() < 0.6
    assert 0.002 < np.mean(one > 0.99) < 0.03
    two = AnomalyLikelihood(two_sided=True).transform(raw)[200:]
    assert two.min() >= 0.5 and 0.7 < two.mean() < 0.8  # 1 - Q(|z|) is uniform on [0.5, 1]


def test_likelihood_transform_equals_update_and_window_slides():
    raw = np.random.default_rng(1).gamma(2.0, 0.1, 2500)
    raw[[900, 1700, 2300]] += 3.0
    params = dict(learning_period=20, estimation_samples=30, historic_window=300)
    streamed = AnomalyLikelihood(**params)
    expected = np.array([streamed.update(v) for v in raw])
    np.testing.assert_array_equal(AnomalyLikelihood(**params).transform(raw), expected)
    assert np.all(expected[[900, 1700, 2300]] > 0.9999)


def test_likelihood_running_stats_match_the_window():
    raw = np.random.default_rng(2).normal(0.0, 1.0, 1000) * 1e3 + 1e6
    model = AnomalyLikelihood(learning_period=0, estimation_samples=10, historic_window=70)
    model.transform(raw)
    state = model.state_dict()
    window = np.array(state["window"])
    assert window.size == 70
    assert state["mean"] == pytest.approx(window.mean(), rel=1e-12)
    assert state["m2"] == pytest.approx(((window - window.mean()) ** 2).sum(), rel=1e-6)


def test_likelihood_state_round_trip_continues_identically():
    raw = np.random.default_rng(3).exponential(0.2, 1200)
    reference = AnomalyLikelihood(historic_window=500).transform(raw)
    first = AnomalyLikelihood(historic_window=500)
    head = first.transform(raw[:700])
    resumed = AnomalyLikelihood.from_state(_json_round_trip(first.state_dict()))
    np.testing.assert_array_equal(np.concatenate([head, resumed.transform(raw[700:])]), reference)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_period": -1}, "learning_period"),
        ({"estimation_samples": 0}, "estimation_samples"),
        ({"historic_window": 50, "estimation_samples": 100}, "historic_window"),
        ({"averaging_window": 0}, "averaging_window"),
        ({"min_variance": 0.0}, "min_variance"),
        ({"historic_window": 2.5}, "historic_window"),
    ],
)
def test_likelihood_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AnomalyLikelihood(**kwargs)


def test_likelihood_bad_input_changes_nothing():
    model = AnomalyLikelihood()
    with pytest.raises(ValueError, match="raw"):
        model.update(float("nan"))
    with pytest.raises(ValueError, match="raw_scores"):
        model.transform(np.array([0.1, np.inf]))
    with pytest.raises(ValueError, match="raw_scores"):
        model.transform(np.zeros((2, 2)))
    assert model.state_dict() == AnomalyLikelihood().state_dict()


# ---------------------------------------------------------------- quantile threshold


def test_quantile_threshold_flags_one_percent():
    rng = np.random.default_rng(4)
    threshold = quantile_threshold(rng.normal(size=20_000), q=0.99)
    assert threshold == pytest.approx(2.326, abs=0.1)
    assert 0.007 < np.mean(rng.normal(size=20_000) > threshold) < 0.013


@pytest.mark.parametrize(
    "scores, q, name",
    [([1.0, 2.0], 1.0, "q"), ([1.0, 2.0], 0.0, "q"), ([], 0.9, "validation_scores"),
     ([1.0, np.nan], 0.9, "validation_scores")],
)
def test_quantile_threshold_bad_input(scores, q, name):
    with pytest.raises(ValueError, match=name):
        quantile_threshold(scores, q=q)


# ---------------------------------------------------------------- GPD fit and SPOT


@pytest.mark.parametrize("gamma, sigma", [(0.3, 2.0), (-0.2, 1.0), (0.8, 0.5)])
def test_fit_gpd_recovers_parameters_and_maximises_likelihood(gamma, sigma):
    y = _gpd_sample(np.random.default_rng(5), gamma, sigma, 3000)
    g, s = fit_gpd(y)
    assert g == pytest.approx(gamma, abs=0.08)
    assert s == pytest.approx(sigma, rel=0.1)
    best = _gpd_loglik(y, g, s)
    assert best >= _gpd_loglik(y, gamma, sigma)
    for dg, ds in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)]:
        assert best >= _gpd_loglik(y, g + dg, s * (1 + ds))


def test_spot_on_exponential_data_estimates_the_true_quantile():
    spot = Spot(q=1e-3).fit(np.random.default_rng(6).exponential(size=20_000))
    assert spot.initial_threshold == pytest.approx(-math.log(0.02), rel=0.05)
    assert abs(spot.gamma) < 0.1
    assert spot.sigma == pytest.approx(1.0, rel=0.15)
    assert spot.threshold == pytest.approx(-math.log(1e-3), rel=0.15)


def test_spot_flags_spikes_and_few_normal_points():
    rng = np.random.default_rng(7)
    spot = Spot(q=1e-4).fit(rng.normal(size=5000))
    stream = rng.normal(size=5000)
    spikes = rng.choice(5000, size=10, replace=False)
    stream[spikes] += 10.0
    flags = spot.run(stream)
    assert flags[spikes].all()
    normal = np.ones(5000, dtype=bool)
    normal[spikes] = False
    assert flags[normal].mean() < 0.005
    assert spot.threshold > spot.initial_threshold


@pytest.mark.parametrize("refit_every, max_peaks", [(1, 1000), (5, 30)])
def test_spot_run_equals_step_and_state_round_trip(refit_every, max_peaks):
    rng = np.random.default_rng(8)
    calibration, stream = rng.gamma(2.0, 1.0, 2000), rng.gamma(2.0, 1.0, 3000)
    stream[::500] += 15.0
    fitted = Spot(q=1e-3, refit_every=refit_every, max_peaks=max_peaks).fit(calibration).state_dict()
    stepper, runner = Spot.from_state(fitted), Spot.from_state(fitted)
    stepped = np.array([stepper.step(v) for v in stream])
    np.testing.assert_array_equal(runner.run(stream), stepped)
    assert runner.state_dict() == stepper.state_dict()
    assert stepped[::500].all()

    first = Spot.from_state(fitted)
    head = first.run(stream[:1700])
    resumed = Spot.from_state(_json_round_trip(first.state_dict()))
    np.testing.assert_array_equal(np.concatenate([head, resumed.run(stream[1700:])]), stepped)
    assert resumed.state_dict() == stepper.state_dict()
    assert len(resumed.state_dict()["peaks"]) <= max_peaks


@pytest.mark.parametrize(
    "kwargs, name",
    [({"q": 0.0}, "q"), ({"q": 0.05, "level": 0.98}, "q"), ({"level": 1.0}, "level"),
     ({"refit_every": 0}, "refit_every"), ({"max_peaks": 5}, "max_peaks")],
)
def test_spot_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Spot(**kwargs)


def test_spot_bad_input():
    with pytest.raises(ValueError, match="calibration"):
        Spot().fit(np.arange(100.0))  # 2 values above the 0.98 quantile
    with pytest.raises(ValueError, match="calibration"):
        Spot().fit(np.r_[np.arange(1000.0), np.nan])
    with pytest.raises(RuntimeError, match="fit"):
        Spot().threshold
    with pytest.raises(RuntimeError, match="fit"):
        Spot().step(1.0)
    spot = Spot().fit(np.random.default_rng(9).normal(size=1000))
    before = spot.state_dict()
    with pytest.raises(ValueError, match="value"):
        spot.step(float("inf"))
    with pytest.raises(ValueError, match="values"):
        spot.run([0.0, np.nan])
    assert spot.state_dict() == before
    with pytest.raises(ValueError, match="excesses"):
        fit_gpd([1.0, 0.0, 2.0])


def test_range_check_flags_values_beyond_the_range_seen_so_far():
    # probation [0, 10]: range 10, tolerance 0.1 -> flags above 11 or below -1, and the range widens
    values = [0, 10, 5, 10.5, 11.6, 12.0, 13.5, -1.5, 6]  # 11.6 > 10.5 + 0.1 * 10.5
    flags = RangeCheck(0.1).run(values, probation=2)
    assert flags.tolist() == [False, False, False, False, True, False, True, True, False]
    stepped = RangeCheck(0.1).fit(values[:2])
    assert [stepped.step(v) for v in values[2:]] == flags[2:].tolist()


def test_range_check_multivariate_run_equals_step_and_ignores_flat_columns():
    rng = np.random.default_rng(3)
    values = np.stack([rng.normal(size=500).cumsum(), np.ones(500)], 1)
    values[400, 1] = 2.0  # a flat column has no range to leave: never flagged by it
    batch = RangeCheck(0.05).run(values, 100)
    check = RangeCheck(0.05).fit(values[:100])
    assert [check.step(row) for row in values[100:]] == batch[100:].tolist()
    assert not batch[:100].any() and batch.any()
    assert not RangeCheck(0.05).run(np.stack([np.zeros(50), np.ones(50)], 1), 10).any()


def test_range_check_bad_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        RangeCheck(-0.1)


def test_a_score_is_judged_against_the_averages_before_it_not_with_it():
    likelihood = AnomalyLikelihood(learning_period=0, estimation_samples=4, historic_window=4, averaging_window=1,
                                   suppress_repeats=False)
    assert likelihood.transform([1.0, 2.0, 3.0, 4.0]).tolist() == [0.5] * 4  # the estimation samples
    z = (5.0 - 2.5) / math.sqrt(1.25)  # against the mean and variance of 1, 2, 3 and 4
    assert likelihood.update(5.0) == pytest.approx(1 - 0.5 * math.erfc(z / math.sqrt(2)))
