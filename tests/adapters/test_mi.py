"""adapters.mi without a backend: schedules, argument checks, bound bookkeeping, exact answers.

The closed forms are checked against scipy (log densities) and against Monte Carlo
(mutual information, with a tolerance of 4 standard errors); the delta-method standard
error of ``log mean w`` against the spread of replicate estimates.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from adapters.diagnostics import ReliabilityWarning
from adapters.mi import (
    AISConfig,
    AISResultBase,
    BoundEstimate,
    ais_reliability,
    check_posterior_samples,
    check_schedule,
    correlated_gaussian_mi,
    effective_sample_size,
    linear_gaussian_log_marginal,
    linear_gaussian_mi,
    linear_schedule,
    log_mean_exp_bound,
    mean_row_ess,
    sigmoid_schedule,
)
from adapters.validation import check_numeric


# ---- schedules -------------------------------------------------------------------------
def test_linear_schedule_is_evenly_spaced_from_0_to_1():
    betas = linear_schedule(4)
    np.testing.assert_array_equal(betas, [0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("num_steps", [1, 2, 7, 100])
def test_sigmoid_schedule_endpoints_monotone_symmetric(num_steps):
    betas = sigmoid_schedule(num_steps)
    assert betas.shape == (num_steps + 1,)
    assert betas[0] == 0.0 and betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    # the logistic is odd around its midpoint, so the schedule is symmetric: beta_t + beta_{T-t} = 1
    np.testing.assert_allclose(betas + betas[::-1], 1.0, atol=1e-15)


def test_sigmoid_schedule_matches_its_formula_and_is_denser_at_the_ends():
    num_steps, delta = 10, 4.0
    betas = sigmoid_schedule(num_steps, delta)
    t = 3
    logistic = lambda u: 1.0 / (1.0 + math.exp(-u))  # noqa: E731
    expected = (logistic(delta * (2 * t / num_steps - 1)) - logistic(-delta)) / (logistic(delta) - logistic(-delta))
    assert betas[t] == pytest.approx(expected, rel=1e-14)
    gaps = np.diff(betas)
    assert gaps[0] < gaps[num_steps // 2] and gaps[-1] < gaps[num_steps // 2]


@pytest.mark.parametrize("fn", [linear_schedule, sigmoid_schedule])
@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_schedules_reject_bad_num_steps(fn, bad):
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        fn(bad)


def test_sigmoid_schedule_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta must be a finite number > 0"):
        sigmoid_schedule(10, delta=0.0)


def test_check_schedule_by_name_and_array():
    np.testing.assert_array_equal(check_schedule("linear", 2), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(check_schedule("sigmoid", 5), sigmoid_schedule(5))
    np.testing.assert_array_equal(check_schedule([0, 0.3, 1]), [0.0, 0.3, 1.0])
    assert check_schedule(np.array([0.0, 1.0]), num_steps=1).dtype == np.float64


@pytest.mark.parametrize(
    ("schedule", "num_steps", "message"),
    [
        ("cosine", 10, r"schedule must be one of \['linear', 'sigmoid'\], got 'cosine'"),
        ("linear", None, r"schedule='linear' needs num_steps"),
        ([[0.0, 1.0]], None, r"schedule must be a 1-D array of at least 2 inverse temperatures, got shape \(1, 2\)"),
        ([0.0], None, r"at least 2 inverse temperatures, got shape \(1,\)"),
        ([0.0, np.nan, 1.0], None, "schedule must contain only finite values"),
        ([0.1, 0.5, 1.0], None, r"schedule must start at 0 and end at 1, got 0.1 \.\.\. 1.0"),
        ([0.0, 0.5, 0.9], None, r"schedule must start at 0 and end at 1, got 0.0 \.\.\. 0.9"),
        (
            [0.0, 0.5, 0.4, 1.0],
            None,
            r"schedule must increase strictly, but schedule\[2\] = 0.4 <= schedule\[1\] = 0.5",
        ),
        ([0.0, 0.5, 0.5, 1.0], None, r"schedule\[2\] = 0.5 <= schedule\[1\] = 0.5"),
        ([0.0, 0.5, 1.0], 3, r"schedule has 3 entries, expected num_steps \+ 1 = 4"),
    ],
)
def test_check_schedule_says_what_is_wrong(schedule, num_steps, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(schedule, num_steps)


def test_check_schedule_names_the_argument_it_is_given():
    with pytest.raises(ValueError, match=r"betas must increase strictly, but betas\[1\]"):
        check_schedule([0.0, 0.0, 1.0], name="betas")


# ---- BoundEstimate -----------------------------------------------------------------------
def test_bound_estimate_from_samples_is_mean_and_standard_error():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    est = BoundEstimate.from_samples(values, "lower", "test")
    assert est.value == pytest.approx(3.5)
    assert est.stderr == pytest.approx(np.std(values, ddof=1) / 2.0)
    assert (est.kind, est.estimator, est.num_samples) == ("lower", "test", 4)
    assert est.interval(2.0) == pytest.approx((3.5 - 2 * est.stderr, 3.5 + 2 * est.stderr))
    assert str(est).startswith("test: 3.5000 ± ") and "lower bound, n=4" in str(est)
    single = BoundEstimate.from_samples([2.0], "estimate", "one")
    assert single.value == 2.0 and math.isnan(single.stderr)


def test_bound_estimate_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"kind must be one of \['lower', 'upper', 'estimate'\], got 'both'"):
        BoundEstimate(0.0, 0.0, "both", "x", 1)


# ---- log Z from AIS weights ----------------------------------------------------------------
def test_log_mean_exp_bound_matches_direct_computation():
    log_w = np.log(np.array([0.5, 1.0, 2.5, 4.0]))
    lower = log_mean_exp_bound(log_w, "lower", "ais")
    assert lower.value == pytest.approx(math.log(2.0), rel=1e-14)
    w = np.exp(log_w)
    assert lower.stderr == pytest.approx(np.std(w, ddof=1) / (2.0 * w.mean()), rel=1e-12)
    upper = log_mean_exp_bound(log_w, "upper", "bdmc")
    inverse = 1.0 / w
    assert upper.value == pytest.approx(-math.log(inverse.mean()), rel=1e-14)
    assert upper.stderr == pytest.approx(np.std(inverse, ddof=1) / (2.0 * inverse.mean()), rel=1e-12)
    assert (lower.kind, upper.kind, upper.num_samples) == ("lower", "upper", 4)


def test_log_mean_exp_bound_is_stable_and_shift_equivariant():
    rng = np.random.default_rng(1)
    log_w = rng.normal(size=50)
    base = log_mean_exp_bound(log_w, "lower", "ais")
    shifted = log_mean_exp_bound(log_w - 1e4, "lower", "ais")  # exp would underflow to 0
    assert shifted.value == pytest.approx(base.value - 1e4, abs=1e-9)
    assert shifted.stderr == pytest.approx(base.stderr, rel=1e-12)


def test_log_mean_exp_bound_zero_weights_and_degenerate_input():
    est = log_mean_exp_bound([0.0, -np.inf, np.nan], "lower", "ais")
    assert est.value == pytest.approx(math.log(1.0 / 3.0))
    assert log_mean_exp_bound([-np.inf, -np.inf], "lower", "ais").value == -math.inf
    assert log_mean_exp_bound([np.inf, np.nan], "upper", "bdmc").value == math.inf  # 1/w = 0 for all
    assert math.isnan(log_mean_exp_bound([1.0], "lower", "ais").stderr)
    with pytest.raises(ValueError, match="log_weights: need at least one chain"):
        log_mean_exp_bound([], "lower", "ais")
    with pytest.raises(ValueError, match="kind must be one of"):
        log_mean_exp_bound([0.0], "estimate", "ais")


def test_delta_method_standard_error_matches_replicate_spread():
    """The spread of log mean w over independent replicates agrees with the predicted stderr (within 10%)."""
    rng = np.random.default_rng(2)
    sigma, num_chains, replicates = 0.8, 400, 2000
    log_w = rng.normal(-0.5 * sigma**2, sigma, size=(replicates, num_chains))  # E w = 1: log Z = 0
    estimates = [log_mean_exp_bound(row, "lower", "ais") for row in log_w]
    values = np.array([e.value for e in estimates])
    predicted = np.mean([e.stderr for e in estimates])
    assert np.std(values, ddof=1) == pytest.approx(predicted, rel=0.1)
    # and the estimator is a lower bound in expectation: E log mean w < log E w = 0
    assert values.mean() < 0.0


def test_effective_sample_size():
    assert effective_sample_size(np.zeros(8)) == pytest.approx(8.0)
    assert effective_sample_size([0.0, -1e3, -1e3]) == pytest.approx(1.0)
    assert effective_sample_size([0.0, np.log(3.0)]) == pytest.approx(16.0 / 10.0)
    assert effective_sample_size([-np.inf, np.nan]) == 0.0


# ---- AISResultBase -----------------------------------------------------------------------
def test_ais_result_base_bounds_ess_and_resampling_rule():
    log_w = np.array([0.0, np.log(3.0), -np.inf, np.nan])
    accept = np.full((5, 4), 0.5)
    divergent = np.zeros((5, 4), bool)
    divergent[2, 1] = True
    forward = AISResultBase(log_w, "lower", np.full(5, 0.1), accept, divergent)
    assert forward.direction == "forward" and forward.num_divergent == 1
    assert forward.log_Z == log_mean_exp_bound(log_w, "lower", "ais")
    assert forward.ess == pytest.approx(effective_sample_size(log_w))
    logits, num = forward.resampling()
    np.testing.assert_array_equal(logits, [0.0, np.log(3.0), -np.inf, -np.inf])
    assert num == 4 and forward.resampling(7)[1] == 7
    # a reverse run resamples by 1 / w
    reverse = AISResultBase(log_w, "upper", np.full(5, 0.1), accept, divergent)
    assert reverse.direction == "reverse" and reverse.log_Z.kind == "upper"
    np.testing.assert_array_equal(reverse.resampling()[0], [0.0, -np.log(3.0), -np.inf, -np.inf])
    assert "ESS 1.6 of 4 chains, mean acceptance 0.500, 1 divergent transitions, 5 temperatures" in forward.summary()
    assert repr(forward).startswith("AISResultBase(forward, ais: ")
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        forward.resampling(0)


def test_ais_result_base_refuses_to_resample_zero_weights():
    """Every weight zero: one rule for both backends, a ValueError that says so (no silent uniform draw)."""
    result = AISResultBase(np.array([-np.inf, np.nan, -np.inf]), "lower", np.ones(2), np.zeros((2, 3)), np.ones((2, 3)))
    assert result.log_Z.value == -math.inf and result.ess == 0.0 and result.num_divergent == 6
    with pytest.raises(ValueError, match=r"every chain has zero weight \(all 3 importance log weights are -inf"):
        result.resampling()


# ---- AISConfig ---------------------------------------------------------------------------
def test_ais_config_defaults_and_array_schedule():
    cfg = AISConfig()
    assert (cfg.num_steps, cfg.num_chains, cfg.schedule) == (100, 16, "sigmoid")
    np.testing.assert_array_equal(cfg.betas, sigmoid_schedule(100))
    custom = AISConfig(schedule=[0.0, 0.2, 1.0])
    assert custom.num_steps == 2
    np.testing.assert_array_equal(custom.betas, [0.0, 0.2, 1.0])


def test_ais_config_from_arguments_takes_the_named_fields():
    def entry_point(rng_key, num_chains=4, schedule="linear", step_size=0.3, other=None):
        return AISConfig.from_arguments(locals())

    cfg = entry_point(0)
    assert cfg == AISConfig(num_chains=4, schedule="linear", step_size=0.3)
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        entry_point(0, num_chains=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
        ({"num_chains": 0}, "num_chains must be a positive integer, got 0"),
        ({"schedule": [0.0, 0.6, 0.3, 1.0]}, r"schedule must increase strictly, but schedule\[2\] = 0.3"),
        ({"schedule": [0.2, 1.0]}, "schedule must start at 0 and end at 1"),
        ({"schedule": "log"}, r"schedule must be one of \['linear', 'sigmoid'\]"),
        ({"step_size": 0.0}, "step_size must be a finite number > 0, got 0.0"),
        ({"step_size": -0.1}, "step_size must be a finite number > 0, got -0.1"),
        ({"num_leapfrog": 0}, "num_leapfrog must be a positive integer"),
        ({"target_accept_prob": 1.2}, r"target_accept_prob must be a number in \(0, 1\)"),
        ({"transition": "nuts"}, "transition must be 'hmc' or a kernel function"),
        ({"adapt_step_size": 1}, "adapt_step_size must be True or False"),
        ({"adaptation_rate": 0}, "adaptation_rate must be a finite number > 0"),
        ({"max_delta_energy": -1.0}, "max_delta_energy must be a finite number > 0"),
    ],
)
def test_ais_config_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AISConfig(**kwargs)


# ---- exact answers -------------------------------------------------------------------------
WEIGHT = np.array([[1.0, 0.5], [-0.3, 2.0], [0.7, 0.1]])  # dx = 3, dz = 2
NOISE = 0.6


def test_linear_gaussian_log_marginal_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5, 3))
    cov = WEIGHT @ WEIGHT.T + NOISE**2 * np.eye(3)
    expected = stats.multivariate_normal(np.zeros(3), cov).logpdf(x)
    got = linear_gaussian_log_marginal(x, WEIGHT, NOISE)
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="noise_scale must be a finite number > 0"):
        linear_gaussian_log_marginal(x, WEIGHT, 0.0)


def _mc_mi(log_px_given_z: np.ndarray, log_px: np.ndarray) -> tuple[float, float]:
    values = log_px_given_z - log_px
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def test_linear_gaussian_mi_matches_monte_carlo_and_entropies():
    rng = np.random.default_rng(4)
    n = 20000
    z = rng.normal(size=(n, 2))
    x = z @ WEIGHT.T + NOISE * rng.normal(size=(n, 3))
    log_px_given_z = stats.norm(z @ WEIGHT.T, NOISE).logpdf(x).sum(axis=-1)
    mean, se = _mc_mi(log_px_given_z, linear_gaussian_log_marginal(x, WEIGHT, NOISE))
    exact = linear_gaussian_mi(WEIGHT, NOISE)
    assert abs(mean - exact) < 4 * se, (mean, se, exact)
    # I = H(x) - H(x | z) = 0.5 log det(W W^T + s^2 I) - 0.5 log det(s^2 I) (Sylvester's identity)
    cov = WEIGHT @ WEIGHT.T + NOISE**2 * np.eye(3)
    assert exact == pytest.approx(0.5 * np.linalg.slogdet(cov)[1] - 3 * math.log(NOISE), rel=1e-12)
    with pytest.raises(ValueError, match="noise_scale must be a finite number > 0"):
        linear_gaussian_mi(WEIGHT, -1.0)


def test_correlated_gaussian_mi_is_the_linear_gaussian_case_and_matches_monte_carlo():
    rho, dim = 0.9, 3
    exact = correlated_gaussian_mi(rho, dim)
    # x = rho z + sqrt(1 - rho^2) eps with z, eps ~ N(0, I): W = rho I, noise sqrt(1 - rho^2)
    assert exact == pytest.approx(linear_gaussian_mi(rho * np.eye(dim), math.sqrt(1 - rho**2)), rel=1e-12)
    rng = np.random.default_rng(5)
    n = 20000
    z = rng.normal(size=(n, dim))
    x = rho * z + math.sqrt(1 - rho**2) * rng.normal(size=(n, dim))
    log_px_given_z = stats.norm(rho * z, math.sqrt(1 - rho**2)).logpdf(x).sum(axis=-1)
    mean, se = _mc_mi(log_px_given_z, stats.norm.logpdf(x).sum(axis=-1))
    assert abs(mean - exact) < 4 * se, (mean, se, exact)


@pytest.mark.parametrize("rho", [1.0, -1.0, 1.5, "0.5", math.nan])
def test_correlated_gaussian_mi_rejects_bad_rho(rho):
    with pytest.raises(ValueError, match=r"rho must be a number in \(-1, 1\)"):
        correlated_gaussian_mi(rho, 2)


def test_correlated_gaussian_mi_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        correlated_gaussian_mi(0.5, 0)


def test_bound_estimate_to_arviz_holds_the_terms_and_the_estimate():
    """The per-sample terms whose mean is the estimate, as one chain of ``sample_stats``; the
    estimate, its standard error and the warnings in ``attrs``; neither field changes equality."""
    terms = np.array([0.3, 0.9, 1.4, 0.2])
    estimate = BoundEstimate.from_samples(terms, "lower", "ais-mi-lower", ["ais_mi_lower: 3 of 90 ..."])
    idata = estimate.to_arviz()
    np.testing.assert_array_equal(idata.sample_stats["terms"].values, terms[None])
    assert float(idata.sample_stats["terms"].mean()) == estimate.value
    assert idata.attrs["stderr"] == estimate.stderr and idata.attrs["kind"] == "lower"
    assert idata.attrs["warnings"] == ["ais_mi_lower: 3 of 90 ..."] and idata.attrs["num_samples"] == 4
    assert estimate == BoundEstimate(estimate.value, estimate.stderr, "lower", "ais-mi-lower", 4)
    # a log Z from AIS weights has no per-sample terms: attrs only
    bound = log_mean_exp_bound(np.log([1.0, 2.0, 3.0]), "lower", "ais")
    assert bound.samples is None and bound.to_arviz().attrs["value"] == bound.value
    assert "sample_stats" not in bound.to_arviz().groups()


def test_ais_reliability_warns_with_the_counts():
    """Divergences above 1% and a Kish ESS below a tenth of the chains each give one message;
    a run inside both thresholds gives none."""

    with pytest.warns(ReliabilityWarning) as record:
        messages = ais_reliability("AIS", 20, 1000, 1.5, 32)
    assert [str(w.message) for w in record] == messages and len(messages) == 2
    assert messages[0].startswith("AIS: 20 of 1000 transitions diverged (2.0%")
    assert "effective sample size 1.5 of 32 (below 10%)" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        assert ais_reliability("AIS", 10, 1000, 3.2, 32) == []
    rows = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, -np.inf, -np.inf, -np.inf]])
    assert mean_row_ess(rows) == pytest.approx(2.5)


def test_check_numeric_and_posterior_samples_name_the_argument():
    check_numeric("x", [[1.0, 2.0]])
    for bad in ("abc", None, ["a", "b"], [[1.0], [1.0, 2.0]]):
        with pytest.raises(TypeError, match="^x must be an array of numbers"):
            check_numeric("x", bad)
    with pytest.raises(TypeError, match=r"posterior_samples\['mu'\] must be an array of draws"):
        check_posterior_samples({"mu": np.array(["1", "2"])})
