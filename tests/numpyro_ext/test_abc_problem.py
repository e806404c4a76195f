"""The likelihood-free problem and the likelihoods from simulations (NumPyro) against exact answers.

For a Gaussian simulator ``x ~ N(mu, Sigma)`` every likelihood has a closed form: the synthetic
likelihood tends to ``N(y; mu, Sigma + eps^2 I)``, the Gaussian eps-kernel's expectation is exactly
that density, and the one-sided kernel tends to ``sum_j log Phi((y_j - mu_j) / sqrt(Sigma_jj + eps^2))``.
"""

import math

import numpy as np
import pytest
from scipy import stats

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

from adapters.abc import ABCResult, site_layout  # noqa: E402
from numpyro_ext.infer.abc import (  # noqa: E402
    LikelihoodFreeProblem,
    gaussian_kernel_log_likelihood,
    one_sided_log_likelihood,
    synthetic_log_likelihood,
)

MU = np.array([1.0, -2.0])
CHOL = np.array([[1.0, 0.0], [0.5, 0.7]])
SIGMA = CHOL @ CHOL.T
Y = np.array([0.3, -1.0])


def gaussian_draws(num, seed=0):
    return np.random.default_rng(seed).normal(size=(num, 2)) @ CHOL.T + MU


def exponential_mean(rate, key):
    return jnp.mean(jax.random.exponential(key, (500,)) / rate)


# ---- likelihoods -------------------------------------------------------------------------
def test_synthetic_likelihood_is_the_gaussian_fit_of_the_simulations():
    draws = gaussian_draws(50)
    for eps in (0.0, 0.3):
        cov = np.cov(draws.T) + eps**2 * np.eye(2)
        expected = stats.multivariate_normal(draws.mean(0), cov).logpdf(Y)
        assert float(synthetic_log_likelihood(jnp.asarray(draws), jnp.asarray(Y), eps)) == pytest.approx(
            expected, 1e-10
        )


def test_synthetic_likelihood_of_a_gaussian_simulator_is_the_exact_density():
    # S = 1e5: the estimate's error is O(1/sqrt(S)) times the Mahalanobis distance (~1.5 here): sd ~ 0.006
    value = float(synthetic_log_likelihood(jnp.asarray(gaussian_draws(100_000)), jnp.asarray(Y)))
    assert value == pytest.approx(stats.multivariate_normal(MU, SIGMA).logpdf(Y), abs=0.03)


def test_gaussian_kernel_is_unbiased_for_the_smoothed_density():
    # E_x N(y; x, eps^2 I) = N(y; mu, Sigma + eps^2 I) exactly; 4 standard errors of the kernel mean
    eps, draws = 0.5, gaussian_draws(100_000, seed=1)
    kernel = stats.multivariate_normal(np.zeros(2), eps**2 * np.eye(2)).pdf(draws - Y)
    exact = stats.multivariate_normal(MU, SIGMA + eps**2 * np.eye(2)).pdf(Y)
    value = math.exp(float(gaussian_kernel_log_likelihood(jnp.asarray(draws), jnp.asarray(Y), eps)))
    assert value == pytest.approx(kernel.mean(), rel=1e-9)
    assert abs(value - exact) < 4 * kernel.std() / math.sqrt(len(draws))


def test_one_sided_kernel_of_a_gaussian_simulator():
    draws, eps = gaussian_draws(100_000, seed=2), 0.2
    scale = np.sqrt(np.diag(SIGMA) + eps**2)
    for direction, sign in (("below", 1.0), ("above", -1.0)):
        exact = stats.norm.logcdf(sign * (Y - MU) / scale).sum()
        value = float(one_sided_log_likelihood(jnp.asarray(draws), jnp.asarray(Y), eps, direction))
        assert value == pytest.approx(exact, abs=0.02)
    with pytest.raises(ValueError, match="direction"):
        one_sided_log_likelihood(jnp.asarray(draws), jnp.asarray(Y), direction="up")


def test_non_finite_simulations_are_left_out():
    draws = gaussian_draws(40)
    bad = np.concatenate([draws, [[np.nan, 0.0], [np.inf, 1.0]]])
    d, b, y = jnp.asarray(draws), jnp.asarray(bad), jnp.asarray(Y)
    assert float(synthetic_log_likelihood(b, y)) == pytest.approx(float(synthetic_log_likelihood(d, y)), 1e-12)
    # the kernel counts a failed simulation as a zero: the mean over 42 is 40/42 of the mean over 40
    shift = math.log(40 / 42)
    assert float(gaussian_kernel_log_likelihood(b, y, 0.5)) == pytest.approx(
        float(gaussian_kernel_log_likelihood(d, y, 0.5)) + shift, 1e-12
    )
    assert float(synthetic_log_likelihood(jnp.full((5, 2), jnp.nan), y)) == -np.inf
    assert float(synthetic_log_likelihood(d[:2], y)) == -np.inf  # 2 draws: no covariance in d = 2


# ---- the problem ---------------------------------------------------------------------------
def test_distribution_prior_lives_on_the_unconstrained_line():
    problem = LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), exponential_mean, 10.086749290513298)
    assert (problem.dim, problem.stat_dim, problem.names) == (1, 1, ["theta"])
    u = problem.sample_prior(jax.random.PRNGKey(0), 5)
    rate = np.exp(np.asarray(u[:, 0]))
    np.testing.assert_allclose(np.asarray(jax.vmap(problem.flat_theta)(u))[:, 0], rate, rtol=1e-12)
    # log p_u(u) = log p(lambda) + log |d lambda / d u| = log Gamma(lambda) + u
    expected = stats.gamma(0.1, scale=10.0).logpdf(rate) + np.asarray(u[:, 0])
    np.testing.assert_allclose(np.asarray(jax.vmap(problem.log_prior)(u)), expected, rtol=1e-9)
    # common random numbers: the same key gives the same simulation, and it is mean(xi) / lambda
    key = jax.random.PRNGKey(3)
    xi = float(jnp.mean(jax.random.exponential(key, (500,))))
    assert float(problem.simulate(u[0], key)[0]) == pytest.approx(xi / rate[0], rel=1e-12)
    np.testing.assert_allclose(problem.unconstrain(jnp.asarray(rate[0])), u[0], rtol=1e-12)


def test_model_prior_with_several_sites():
    def prior():
        numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("b", dist.HalfNormal(1.0).expand([2]).to_event(1))

    def simulator(theta, key):
        return jnp.concatenate([theta["a"][None], theta["b"]]) + jax.random.normal(key, (3,))

    problem = LikelihoodFreeProblem(prior, simulator, np.zeros(3))
    assert problem.names == ["a", "b[0]", "b[1]"] and problem.sites == {"a": ((), 0, 1), "b": ((2,), 1, 3)}
    u = jnp.array([0.5, 0.0, jnp.log(2.0)])
    np.testing.assert_allclose(problem.flat_theta(u), [0.5, 1.0, 2.0], rtol=1e-12)


def test_bad_problems_are_refused_with_the_argument_named():
    gamma = dist.Gamma(0.1, 0.1)
    with pytest.raises(ValueError, match="observed: expected 1 summary statistic"):
        LikelihoodFreeProblem(gamma, exponential_mean, np.zeros(2))
    with pytest.raises(ValueError, match=r"simulator: failed on a prior draw theta of shape \(2,\)"):
        LikelihoodFreeProblem(dist.Normal(jnp.zeros(2), 1.0).to_event(1), lambda t, k: t @ jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="prior: expected a distribution with batch shape"):
        LikelihoodFreeProblem(dist.Normal(jnp.zeros(2), 1.0), lambda t, k: t, np.zeros(2))
    with pytest.raises(TypeError, match="prior: expected"):
        LikelihoodFreeProblem(3.0, exponential_mean, 1.0)
    with pytest.raises(TypeError, match="simulator: expected a function"):
        LikelihoodFreeProblem(gamma, None, 1.0)
    with pytest.raises(ValueError, match="observed: every statistic must be finite"):
        LikelihoodFreeProblem(gamma, exponential_mean, np.nan)


# ---- the result ----------------------------------------------------------------------------
def test_result_weights_samples_and_arviz():
    names, sites = site_layout({"a": (), "b": (2,)})
    theta = np.arange(12.0).reshape(4, 3)
    log_w = np.array([0.0, 0.0, np.log(2.0), -np.inf])
    result = ABCResult("test", theta, names, sites, log_w, num_simulations=10)
    np.testing.assert_allclose(result.weights, [0.25, 0.25, 0.5, 0.0])
    assert result.ess == pytest.approx(1.0 / (0.25**2 * 2 + 0.5**2))
    np.testing.assert_allclose(result.mean(), [0.25, 0.25, 0.5, 0.0] @ theta)
    samples = result.get_samples()
    assert samples["a"].shape == (4,) and samples["b"].shape == (4, 2)
    drawn = result.resample(2000, seed=1)
    assert not np.any(np.all(drawn == theta[3], axis=1))  # a zero weight is never drawn
    idata = result.to_arviz()
    assert idata.posterior["b"].shape == (1, 4, 2)
