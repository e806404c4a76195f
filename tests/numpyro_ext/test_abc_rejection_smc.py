"""Rejection ABC and SMC-ABC (NumPyro) against exact answers.

References:

* Exponential-gamma toy (issue 21): prior Gamma(0.1, 0.1) on the rate ``lambda``, statistic the
  mean ``s`` of 500 Exponential(lambda) draws, so ``s | lambda ~ Gamma(500, rate 500 lambda)``;
  observed 10.086749290513298; exact posterior Gamma(500.1, 5043.47).  The ABC posterior at
  half-width ``h`` (accept ``|s - y| <= h``) is ``pi(lambda) P(|s - y| <= h | lambda)``, computed
  here by quadrature (:func:`toy_abc_moments`): every run is compared with the ABC posterior at
  the tolerance it reached (Monte Carlo error only), and with the exact posterior allowing
  that tolerance's known bias.
* Gaussian mean in D = 3: prior N(0, 4 I), statistic the mean of ``n`` draws N(theta, Sigma), so
  ``s ~ N(theta, Sigma / n)`` and ``E[theta | s] = C s`` is linear.  The ABC posterior given the
  ellipsoid ``||(s - y) / m|| <= eps`` has mean ``C E[s | ellipsoid]`` and covariance
  ``P^-1 + C Cov(s | ellipsoid) C^T``, with ``s`` under its marginal N(0, 4 I + Sigma / n):
  :func:`gaussian_abc_moments` integrates that by (seeded, 4e5-draw) Monte Carlo over the ellipsoid.

Tolerances: ``Z_MAX`` delta-method standard errors of the (self-normalised) weighted moments.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import special, stats

from adapters.diagnostics import ReliabilityWarning
from numpyro_ext.infer.abc import SMCABC, LikelihoodFreeProblem, RejectionABC
from numpyro_ext.infer.abc.rejection import mad_scale, scaled_distances

Z_MAX = 4.0

# ---- exponential-gamma toy -----------------------------------------------------------
TOY_OBSERVED = 10.086749290513298
TOY_N = 500
EXACT_SHAPE, EXACT_RATE = 500.1, 0.1 + TOY_N * TOY_OBSERVED
EXACT_MEAN = EXACT_SHAPE / EXACT_RATE  # 0.099158
EXACT_SD = math.sqrt(EXACT_SHAPE) / EXACT_RATE  # 0.004434


def toy_simulator(lam, key):
    return jnp.mean(jax.random.exponential(key, (TOY_N,))) / lam


def toy_problem() -> LikelihoodFreeProblem:
    return LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), toy_simulator, TOY_OBSERVED)


def toy_abc_moments(h: float) -> tuple[float, float, float]:
    """Mean, variance and fourth central moment of ``lambda`` under the toy's ABC posterior at
    half-width ``h`` (``h = 0``: the exact posterior), by quadrature over ``log lambda``."""
    u = np.linspace(-12.0, 8.0, 400_001)
    lam = np.exp(u)
    log_prior = 0.1 * u - 0.1 * lam  # Gamma(0.1, 0.1) in log lambda, up to a constant
    if h == 0:
        log_accept = stats.gamma.logpdf(TOY_OBSERVED, TOY_N, scale=1.0 / (TOY_N * lam))
    else:
        upper = special.gammainc(TOY_N, TOY_N * lam * (TOY_OBSERVED + h))
        lower = special.gammainc(TOY_N, TOY_N * lam * max(TOY_OBSERVED - h, 0.0))
        log_accept = np.log(np.maximum(upper - lower, 1e-300))
    log_p = log_prior + log_accept
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    mean = p @ lam
    return float(mean), float(p @ (lam - mean) ** 2), float(p @ (lam - mean) ** 4)


def test_toy_quadrature_is_the_exact_posterior_at_zero_width():
    mean, var, _ = toy_abc_moments(0.0)
    assert mean == pytest.approx(EXACT_MEAN, rel=1e-6) and math.sqrt(var) == pytest.approx(EXACT_SD, rel=1e-4)
    mean_small, _, _ = toy_abc_moments(1e-3)
    assert mean_small == pytest.approx(EXACT_MEAN, rel=1e-5)


# ---- D = 3 Gaussian mean ------------------------------------------------------------
GAUSS_N = 4
GAUSS_SIGMA = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 0.5]])
GAUSS_CHOL = np.linalg.cholesky(GAUSS_SIGMA)
GAUSS_OBSERVED = np.array([1.2, -0.7, 0.4])
GAUSS_PRIOR_VAR = 4.0
_precision = np.eye(3) / GAUSS_PRIOR_VAR + GAUSS_N * np.linalg.inv(GAUSS_SIGMA)
GAUSS_POST_COV = np.linalg.inv(_precision)
GAUSS_GAIN = GAUSS_POST_COV @ (GAUSS_N * np.linalg.inv(GAUSS_SIGMA))  # E[theta | s] = GAIN s
GAUSS_MARGINAL_COV = GAUSS_PRIOR_VAR * np.eye(3) + GAUSS_SIGMA / GAUSS_N


def gaussian_simulator(theta, key):
    noise = jax.random.normal(key, (GAUSS_N, 3)) @ jnp.asarray(GAUSS_CHOL).T
    return jnp.mean(theta + noise, axis=0)


def gaussian_problem(simulator=gaussian_simulator) -> LikelihoodFreeProblem:
    prior = dist.Normal(0.0, math.sqrt(GAUSS_PRIOR_VAR)).expand([3]).to_event(1)
    return LikelihoodFreeProblem(prior, simulator, GAUSS_OBSERVED)


def gaussian_abc_moments(epsilon: float, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ABC posterior mean ``(3,)`` and covariance ``(3, 3)`` for ``||(s - y) / scale|| <= epsilon``."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400_000, 3))
    z *= (rng.uniform(size=(len(z), 1)) ** (1 / 3)) / np.linalg.norm(z, axis=1, keepdims=True)
    s = GAUSS_OBSERVED + epsilon * scale * z  # uniform in the ellipsoid
    log_w = stats.multivariate_normal(np.zeros(3), GAUSS_MARGINAL_COV).logpdf(s)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    s_mean = w @ s
    s_cov = (s - s_mean).T @ ((s - s_mean) * w[:, None])
    return GAUSS_GAIN @ s_mean, GAUSS_POST_COV + GAUSS_GAIN @ s_cov @ GAUSS_GAIN.T


def test_gaussian_reference_tends_to_the_exact_posterior():
    mean, cov = gaussian_abc_moments(1e-3, np.ones(3))
    np.testing.assert_allclose(mean, GAUSS_GAIN @ GAUSS_OBSERVED, atol=1e-6)
    np.testing.assert_allclose(cov, GAUSS_POST_COV, atol=1e-6)


# ---- checks --------------------------------------------------------------------------
def weighted_mean_error(x: np.ndarray, weights: np.ndarray, mean: float, var: float, label: str) -> float:
    """Assert the weighted mean of ``x`` is within ``Z_MAX`` delta-method SEs of ``mean``; return the SE."""
    se = math.sqrt(float(np.sum(weights**2 * (x - mean) ** 2)))
    se = max(se, math.sqrt(var * np.sum(weights**2)))  # never below the i.i.d. value
    z = (weights @ x - mean) / se
    assert abs(z) < Z_MAX, f"{label}: mean {weights @ x:.6g} vs {mean:.6g} (z = {z:.2f}, SE {se:.3g})"
    return se


def weighted_variance_check(x: np.ndarray, weights: np.ndarray, mean: float, var: float, m4: float, label: str):
    squares = (x - mean) ** 2
    se = math.sqrt(max(float(np.sum(weights**2 * (squares - var) ** 2)), (m4 - var**2) * float(np.sum(weights**2))))
    z = (weights @ squares - var) / se
    assert abs(z) < Z_MAX, f"{label}: variance {weights @ squares:.4g} vs {var:.4g} (z = {z:.2f})"


def check_toy(result, label: str) -> tuple[float, float]:
    """``result`` against the toy's ABC posterior at its tolerance; returns (|error vs exact|, ABC bias)."""
    h = result.info["epsilon"] * float(result.info["scale"][0])
    mean, var, m4 = toy_abc_moments(h)
    lam, weights = result.theta[:, 0], result.weights
    se = weighted_mean_error(lam, weights, mean, var, f"{label} (h = {h:.3g})")
    weighted_variance_check(lam, weights, mean, var, m4, f"{label} (h = {h:.3g})")
    error, bias = abs(weights @ lam - EXACT_MEAN), abs(mean - EXACT_MEAN)
    # against the exact posterior: Monte Carlo error plus the ABC bias of the tolerance reached
    assert error < Z_MAX * se + bias, f"{label}: error {error:.3g} vs exact, SE {se:.3g}, ABC bias {bias:.3g}"
    return error, bias


def check_gaussian(result, label: str) -> None:
    mean, cov = gaussian_abc_moments(result.info["epsilon"], np.asarray(result.info["scale"]))
    weights = result.weights
    for j in range(3):
        weighted_mean_error(result.theta[:, j], weights, mean[j], cov[j, j], f"{label} theta[{j}]")


# ---- rejection ABC -------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    return toy_problem()


def test_rejection_toy_approaches_exact_posterior_as_budget_grows(toy):
    small = RejectionABC(toy, num_simulations=1_000, num_samples=100).run(jax.random.PRNGKey(0))
    large = RejectionABC(toy, num_simulations=50_000, num_samples=100).run(jax.random.PRNGKey(1))
    assert small.num_simulations == 1_000 and large.num_simulations == 50_000
    assert len(small.theta) == len(large.theta) == 100 and np.all(large.log_weights == 0)
    assert np.all(np.diff(large.distances) >= 0) and large.distances[-1] == large.info["epsilon"]
    error_small, bias_small = check_toy(small, "rejection, 1e3 simulations")
    error_large, bias_large = check_toy(large, "rejection, 5e4 simulations")
    assert large.info["epsilon"] < small.info["epsilon"] / 10
    assert bias_large < bias_small / 10
    assert error_large < error_small / 3, (error_small, error_large)


def test_rejection_gaussian_mean_d3_and_selection_modes():
    problem = gaussian_problem()
    result = RejectionABC(problem, num_simulations=20_000, num_samples=200).run(jax.random.PRNGKey(2))
    check_gaussian(result, "rejection D=3")
    assert result.names == ["theta[0]", "theta[1]", "theta[2]"]
    assert result.get_samples()["theta"].shape == (200, 3)
    # the same 20 000 simulations (same key) through the three selection rules
    by_quantile = RejectionABC(problem, num_simulations=20_000, quantile=0.01).run(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(by_quantile.theta, result.theta)
    by_epsilon = RejectionABC(problem, num_simulations=20_000, epsilon=result.info["epsilon"]).run(
        jax.random.PRNGKey(2)
    )
    np.testing.assert_array_equal(by_epsilon.theta, result.theta)
    assert by_epsilon.info["epsilon"] == result.info["epsilon"]
    # scale=None is the plain Euclidean distance; an explicit scale array is used as given
    unscaled = RejectionABC(problem, num_simulations=20_000, num_samples=200, scale=None).run(jax.random.PRNGKey(2))
    ones = RejectionABC(problem, num_simulations=20_000, num_samples=200, scale=np.ones(3)).run(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(unscaled.theta, ones.theta)
    np.testing.assert_array_equal(unscaled.info["scale"], np.ones(3))
    check_gaussian(unscaled, "rejection D=3 unscaled")


def test_mad_scale_and_distances():
    x = jnp.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [jnp.nan, 0.0]])
    # column 0: MAD of 1..4 is 1; column 1: MAD 0 and sd 0 over the finite rows -> 1
    np.testing.assert_allclose(mad_scale(x), [1.0, 1.0])
    d = scaled_distances(x, jnp.array([1.0, 1.0]), jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(d[:4], np.sqrt(np.arange(4.0) ** 2 + 4.0))
    assert d[4] == np.inf


# ---- SMC-ABC -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_smc(toy):
    return SMCABC(toy, num_particles=500, num_simulations=10_000)


def test_smc_abc_toy_against_abc_and_exact_posterior(toy_smc):
    result = toy_smc.run(jax.random.PRNGKey(3))
    info = result.info
    assert (
        result.num_simulations
        == 10_000
        == sum(info["num_simulations"]) + (info["incomplete"] or {}).get("num_simulations", 0)
    )
    schedule = np.asarray(info["epsilon_schedule"])
    assert info["num_populations"] >= 4 and np.all(np.diff(schedule) < 0)
    assert np.all(result.distances <= info["epsilon"]) and np.isclose(schedule[-1], info["epsilon"])
    assert len(info["ess"]) == len(info["acceptance_rate"]) == len(schedule)
    assert result.ess == pytest.approx(info["ess"][-1], rel=1e-6) and result.ess > 0.3 * 500
    check_toy(result, "SMC-ABC 1e4 simulations")
    # it reaches a far smaller tolerance than rejection ABC keeping as many draws from the same budget
    rejection = RejectionABC(toy_smc.problem, num_simulations=10_000, num_samples=500).run(jax.random.PRNGKey(3))
    assert info["epsilon"] < rejection.info["epsilon"] / 5
    # same seed, same result; another seed, another
    again = toy_smc.run(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(again.theta, result.theta)
    np.testing.assert_array_equal(again.log_weights, result.log_weights)
    assert not np.array_equal(toy_smc.run(jax.random.PRNGKey(4)).theta, result.theta)


@pytest.mark.slow  # D > 1 for SMC-ABC by default: the Pyro twin's test and OMC's D=3 test
def test_smc_abc_gaussian_mean_d3():
    result = SMCABC(gaussian_problem(), num_particles=500, num_simulations=10_000).run(jax.random.PRNGKey(5))
    check_gaussian(result, "SMC-ABC D=3")
    assert result.theta.shape == (500, 3) and np.all(np.isfinite(result.log_weights))


# ---- non-finite simulations -----------------------------------------------------------
def nan_simulator(theta, key):
    """NaN statistics on the part ``theta[0] > 1`` of the prior (probability 1 - Phi(1/2))."""
    x = gaussian_simulator(theta, key)
    return jnp.where(theta[0] > 1.0, jnp.nan, x)


@pytest.mark.slow  # by default: test_every_simulation_nan_gives_an_empty_warned_result and the Pyro twin
def test_nan_simulations_are_counted_and_rejected():
    problem = gaussian_problem(nan_simulator)
    n = 5_000
    with pytest.warns(ReliabilityWarning, match="non-finite"):
        result = RejectionABC(problem, num_simulations=n, num_samples=100).run(jax.random.PRNGKey(6))
    p = 1.0 - stats.norm.cdf(0.5)
    assert abs(result.num_nan_simulations - n * p) < Z_MAX * math.sqrt(n * p * (1 - p))
    assert np.all(result.theta[:, 0] <= 1.0) and np.all(np.isfinite(result.distances))
    assert any("non-finite" in w for w in result.warnings)

    with pytest.warns(ReliabilityWarning, match="non-finite"):
        smc = SMCABC(problem, num_particles=200, num_simulations=3_000).run(jax.random.PRNGKey(6))
    assert smc.num_simulations == 3_000 and smc.num_nan_simulations > 0.05 * 3_000
    assert np.all(smc.theta[:, 0] <= 1.0) and np.all(np.isfinite(smc.log_weights))
    assert np.all(np.isfinite(smc.distances))


def test_every_simulation_nan_gives_an_empty_warned_result():
    problem = gaussian_problem(lambda theta, key: jnp.full(3, jnp.nan) + theta)
    with pytest.warns(ReliabilityWarning):
        result = RejectionABC(problem, num_simulations=500, num_samples=10).run(jax.random.PRNGKey(0))
    assert result.num_nan_simulations == 500 and result.theta.shape == (0, 3)
    with pytest.warns(ReliabilityWarning):
        smc = SMCABC(problem, num_particles=50, num_simulations=500).run(jax.random.PRNGKey(0))
    assert smc.num_nan_simulations == smc.num_simulations and smc.ess == 0.0


# ---- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"num_samples": 10, "quantile": 0.1}, "exactly one of num_samples, quantile and epsilon"),
        ({"quantile": 0.1, "epsilon": 1.0}, "quantile and epsilon"),
        ({"quantile": 1.5}, "quantile"),
        ({"num_samples": 20_000}, "num_samples"),
        ({"num_simulations": 0}, "num_simulations"),
        ({"scale": np.ones(2)}, "scale"),
        ({"scale": np.array([1.0, 0.0, 1.0])}, "scale"),
        ({"scale": "std"}, "scale"),
    ],
)
def test_rejection_bad_input(kwargs, match):
    problem = gaussian_problem()
    with pytest.raises(ValueError, match=match):
        RejectionABC(problem, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"num_particles": 1000, "num_simulations": 500}, "num_simulations"),
        ({"num_particles": 1}, "num_particles"),
        ({"kernel_scale": 0.0}, "kernel_scale"),
        ({"num_particles": 100, "num_simulations": 1000, "num_initial": 50}, "num_initial"),
    ],
)
def test_smc_abc_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SMCABC(gaussian_problem(), **kwargs)


def test_bad_problem_and_key():
    with pytest.raises(TypeError, match="problem"):
        RejectionABC(dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="problem"):
        SMCABC("problem")
    with pytest.raises(TypeError, match="rng_key"):
        RejectionABC(gaussian_problem(), num_simulations=100, num_samples=10).run(0)


# ---- slow: convergence with the budget ------------------------------------------------
@pytest.mark.slow
def test_smc_abc_toy_error_falls_with_budget(toy):
    errors, biases, epsilons = [], [], []
    for budget in (5_000, 20_000, 100_000):
        result = SMCABC(toy, num_particles=1000, num_simulations=budget).run(jax.random.PRNGKey(budget))
        error, bias = check_toy(result, f"SMC-ABC {budget} simulations")
        errors.append(error)
        biases.append(bias)
        epsilons.append(result.info["epsilon"] * float(result.info["scale"][0]))
    assert epsilons[0] > epsilons[1] > epsilons[2] and biases[0] > biases[2]
    assert errors[2] < errors[0], errors


@pytest.mark.slow
def test_rejection_toy_large_budget_close_to_exact(toy):
    result = RejectionABC(toy, num_simulations=1_000_000, num_samples=1_000).run(jax.random.PRNGKey(11))
    error, bias = check_toy(result, "rejection 1e6 simulations")
    assert bias < 0.1 * EXACT_SD and error < 0.5 * EXACT_SD


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_smc_abc_gaussian_mean_d3_seeds(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = SMCABC(gaussian_problem(), num_particles=1000, num_simulations=30_000).run(jax.random.PRNGKey(seed))
    check_gaussian(result, f"SMC-ABC D=3 seed {seed}")
