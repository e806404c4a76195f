"""GPS-ABC (NumPyro) against exact answers.

* The surrogate's marginal likelihood: grouping repeated simulations by location (the GP sees each
  location's mean with noise ``sigma^2 / n``) plus the within-location term, with masked slots, is
  exactly the log density of a plain tinygp GP on every simulation as its own row.
* The decision error ``E(u)`` on hand-made draws.
* The chain on the exponential-gamma toy of docs/abc.rst (prior Gamma(0.1, 0.1), statistic the mean
  of 500 Exponential(lambda) draws, drawn as one Gamma(500, 500) variate over lambda -- the same
  law; observed 10.0867) against a synthetic-likelihood MCMC reference built here (random-walk MH on
  log lambda with ``S`` fresh simulations per proposal, Wood 2010's estimator), and against the
  exact posterior Gamma(500.1, 5043.47).  GPS-ABC must agree with the reference within Monte Carlo
  error and use far fewer simulations.
* The noise from repeats: the pooled within-location variance of ``core.pooled_noise_variance`` is
  the textbook estimate (checked against NumPy) and lies within its chi-square sampling error of the
  simulator's variance; on a 10-D linear toy shaped like sbibm's gaussian_linear (statistic
  ``theta + 0.316 z``, 20 design locations) the fitted noise stays near the simulator's with two
  repeats per location (it collapsed to the 0.001 bound without them), and ``noise="repeats"``
  holds it at the pooled estimate.
* ``max_simulations``: the run spends exactly the budget, then steps decide without acquiring.
* The decision-error bound: on a Gaussian-location problem (statistic ``theta + 0.5 z``), for a
  sample of steps the exact MH decision is recomputed with the step's own ``u_mh`` and the
  synthetic likelihood of 4000 fresh simulations at ``theta`` and ``theta'``; the rate of
  disagreement with the chain's decisions must be below ``xi`` within two binomial standard errors.

Tolerances of the chains: ``4 sd / sqrt(ESS)`` for a mean and ``4 / sqrt(2 ESS)`` for the relative
error of an sd (ESS by NumPyro's estimator), combined in quadrature for two chains, plus a bias
allowance stated in the test (the surrogate's homoscedastic noise against the statistic's
``1/lambda``-proportional scatter, and the pseudo-marginal reference's ``S``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import tinygp
from numpyro.diagnostics import effective_sample_size

from adapters.diagnostics import ReliabilityWarning
from numpyro_ext.infer.abc import GPSABC, LikelihoodFreeProblem, synthetic_log_likelihood
from numpyro_ext.infer.abc.gpsabc import core

Y_OBS = 10.086749290513298
EXACT_MEAN, EXACT_SD = 500.1 / 5043.47, np.sqrt(500.1) / 5043.47


def exponential_simulator(lam, key):
    """The mean of 500 Exponential(lam) draws, as Gamma(500, 1) / (500 lam)."""
    return jax.random.gamma(key, 500.0) / 500.0 / lam


def exponential_problem(simulator=exponential_simulator) -> LikelihoodFreeProblem:
    return LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), simulator, observed=Y_OBS)


GAUSS_NOISE = 0.5
Y_GAUSS = 0.7


def gaussian_problem() -> LikelihoodFreeProblem:
    def simulator(theta, key):
        return theta + GAUSS_NOISE * jax.random.normal(key)

    return LikelihoodFreeProblem(dist.Normal(0.0, 2.0), simulator, observed=Y_GAUSS)


def ess(x: np.ndarray) -> float:
    return float(effective_sample_size(np.asarray(x)[None]))


def sl_mcmc(problem, key, num_steps: int, num_simulations: int, scale: float, u0: float):
    """Random-walk MH on the unconstrained u with a fresh synthetic likelihood (S simulations) per
    proposal (the current point keeps its estimate: a pseudo-marginal chain)."""
    observed = jnp.asarray(problem.observed)

    def log_target(u, k):
        stats = jax.vmap(problem.simulate, in_axes=(None, 0))(u, jax.random.split(k, num_simulations))
        return problem.log_prior(u) + synthetic_log_likelihood(stats, observed)

    def step(carry, k):
        u, lp = carry
        k1, k2, k3 = jax.random.split(k, 3)
        v = u + scale * jax.random.normal(k1, u.shape)
        lv = log_target(v, k2)
        accept = jnp.log(jax.random.uniform(k3)) < lv - lp
        u, lp = jnp.where(accept, v, u), jnp.where(accept, lv, lp)
        return (u, lp), u

    u0 = jnp.array([u0])
    keys = jax.random.split(key, num_steps + 1)
    _, chain = jax.jit(lambda ks: jax.lax.scan(step, (u0, log_target(u0, keys[0])), ks))(keys[1:])
    return np.exp(np.asarray(chain)[:, 0]), (num_steps + 1) * num_simulations


# ---- pieces ------------------------------------------------------------------------------
def test_grouped_masked_marginal_likelihood_is_the_plain_gp_on_every_simulation():
    rng = np.random.default_rng(0)
    locations = rng.normal(size=(5, 2))
    repeats = np.array([1, 3, 1, 4, 2])
    u = np.repeat(locations, repeats, axis=0)
    stats = np.stack([np.sin(u[:, 0]) + u[:, 1], u[:, 0] * u[:, 1]], axis=1) + 0.3 * rng.normal(size=(len(u), 2))
    data = core.empty_data(16, 2, 2, jnp.float64)
    for i in range(len(repeats)):
        rows = slice(int(repeats[:i].sum()), int(repeats[: i + 1].sum()))
        data = core.add_simulations(data, jnp.int32(i), jnp.asarray(locations[i]), jnp.asarray(stats[rows]))
    # a location with only a non-finite simulation takes a slot and stays masked
    data = core.add_simulations(data, data.count, jnp.ones(2), jnp.full((1, 2), jnp.nan))
    assert int(data.count) == 6 and int(jnp.sum(data.mask)) == 5
    standardizer = core.fit_standardizer(data)
    params = core.GPParams(
        jnp.array([0.1, -0.2]),
        jnp.array([0.3, -0.1]),
        jnp.log(jnp.array([0.4, 0.7])),
        jnp.array([[0.2, -0.3], [0.5, 0.1]]),
    )
    value = core.log_marginal_likelihood(params, data, standardizer)
    x = (u - np.asarray(standardizer.u_loc)) / np.asarray(standardizer.u_scale)
    y = (stats - np.asarray(standardizer.stat_loc)) / np.asarray(standardizer.stat_scale)
    expected = 0.0
    for j in range(2):
        kernel = jnp.exp(2 * params.log_amplitude[j]) * tinygp.transforms.Linear(
            jnp.exp(-params.log_lengthscale[j]), tinygp.kernels.ExpSquared()
        )
        gp = tinygp.GaussianProcess(kernel, x, diag=jnp.exp(2 * params.log_noise[j]) + core.JITTER, mean=params.mean[j])
        expected += float(gp.log_probability(y[:, j]))
    # equal up to the 1e-8 jitter, which the grouped GP adds once per location, the plain one per simulation
    np.testing.assert_allclose(float(value), expected, rtol=1e-7)


def test_decision_error_counts_the_draws_on_the_other_side():
    alpha = jnp.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.0])
    accept, tau, error = core.decision_error(jnp.log(alpha), jnp.log(0.65))
    # the median of log alpha: for an even M, the geometric mean of the middle two
    assert bool(accept) and float(tau) == pytest.approx(np.sqrt(0.7 * 0.8)) and float(error) == pytest.approx(0.4)
    accept, _, error = core.decision_error(jnp.log(alpha), jnp.log(0.92))
    assert not bool(accept) and float(error) == pytest.approx(0.3)  # 0.95, 1, 1 would accept


# ---- the chain ---------------------------------------------------------------------------
def _compare(gps_draws, ref_draws, bias_mean, bias_sd_rel):
    n_gps, n_ref = ess(gps_draws), ess(ref_draws)
    sd = np.std(ref_draws)
    mean_tol = 4 * sd * np.sqrt(1 / n_gps + 1 / n_ref) + bias_mean
    sd_tol = 4 * np.sqrt(1 / (2 * n_gps) + 1 / (2 * n_ref)) + bias_sd_rel
    assert abs(np.mean(gps_draws) - np.mean(ref_draws)) < mean_tol, (np.mean(gps_draws), np.mean(ref_draws), mean_tol)
    assert abs(np.std(gps_draws) / sd - 1) < sd_tol, (np.std(gps_draws), sd, sd_tol)
    return n_gps, n_ref


def _toy_run(num_samples: int, seed: int, num_ref: int):
    problem = exponential_problem()
    result = GPSABC(problem, xi=0.1, proposal_scale=0.08).run(
        jax.random.PRNGKey(seed), num_samples=num_samples, num_warmup=200
    )
    ref, ref_sims = sl_mcmc(problem, jax.random.PRNGKey(100 + seed), num_ref, 50, 0.08, np.log(EXACT_MEAN))
    return result, ref[500:], ref_sims


@pytest.mark.slow  # 15-35 s; by default the Pyro twin's same test runs, and the parity tests tie the pieces
def test_gpsabc_matches_sl_mcmc_on_the_exponential_toy_with_fewer_simulations():
    result, ref, ref_sims = _toy_run(1500, 0, 8000)
    draws = result.theta[:, 0]
    # bias allowance: 0.1 sd for the mean, 10% for the sd (homoscedastic surrogate noise; S = 50)
    _compare(draws, ref, 0.1 * EXACT_SD, 0.1)
    _compare(draws, np.asarray(dist.Gamma(500.1, 5043.47).sample(jax.random.PRNGKey(9), (4000,))), 0.1 * EXACT_SD, 0.1)
    assert result.num_simulations < ref_sims / 20
    trace = result.info["num_simulations_trace"]
    assert trace.shape == (1700,) and np.all(np.diff(trace) >= 0) and trace[-1] == result.num_simulations
    # the simulations per step fall as the surrogate learns: the second half of the chain costs less
    assert trace[-1] - trace[850] < trace[850] - trace[0]
    # pilot (200 prior draws) + initial design (20 locations x 2) + one simulation per acquisition round (delta_s = 1)
    assert trace[-1] == 200 + 20 * 2 + result.info["acquisitions"]
    assert result.info["decision_error"].shape == (1700,)
    assert len(result.info["refits"]) >= 2 and result.num_nan_simulations == 0


@pytest.mark.slow
def test_gpsabc_matches_sl_mcmc_on_the_exponential_toy_long():
    for seed in range(3):
        result, ref, ref_sims = _toy_run(10_000, seed, 40_000)
        n_gps, n_ref = _compare(result.theta[:, 0], ref, 0.1 * EXACT_SD, 0.1)
        print(
            f"seed {seed}: GPS-ABC mean {result.mean()[0]:.5f} sd {result.std()[0]:.5f} ESS {n_gps:.0f} "
            f"{result.num_simulations} simulations; SL-MCMC mean {np.mean(ref):.5f} sd {np.std(ref):.5f} "
            f"ESS {n_ref:.0f} {ref_sims} simulations; exact {EXACT_MEAN:.5f} {EXACT_SD:.5f}"
        )
        assert result.num_simulations < ref_sims / 100


def _disagreement_rate(result, problem, num_checked: int, seed: int):
    chain, proposals = result.info["chain"], result.info["proposals"]
    log_u, accepted = result.info["log_u"], result.info["accepted"]
    index = np.random.default_rng(seed).choice(len(proposals), num_checked, replace=False)
    observed = jnp.asarray(problem.observed)

    @jax.jit
    def exact_log_alpha(u, v, key):
        k1, k2 = jax.random.split(key)
        sims = lambda w, k: jax.vmap(problem.simulate, in_axes=(None, 0))(w, jax.random.split(k, 4000))  # noqa: E731
        lu = problem.log_prior(u) + synthetic_log_likelihood(sims(u, k1), observed)
        lv = problem.log_prior(v) + synthetic_log_likelihood(sims(v, k2), observed)
        return jnp.minimum(0.0, lv - lu)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_checked)
    wrong = 0
    for key, i in zip(keys, index, strict=True):
        exact = bool(log_u[i] <= exact_log_alpha(jnp.asarray(chain[i]), jnp.asarray(proposals[i]), key))
        wrong += exact != bool(accepted[i])
    return wrong / num_checked


# "random" is slow here; the Pyro twin runs both rules by default
@pytest.mark.parametrize("acquisition", ["variance", pytest.param("random", marks=pytest.mark.slow)])
def test_decision_error_bound_is_honoured(acquisition):
    xi = 0.1
    problem = gaussian_problem()
    result = GPSABC(problem, xi=xi, proposal_scale=1.0, num_initial_simulations=10, acquisition=acquisition).run(
        jax.random.PRNGKey(3), num_samples=300, num_warmup=0
    )
    n = 150
    rate = _disagreement_rate(result, problem, n, 0)
    assert rate < xi + 2 * np.sqrt(xi * (1 - xi) / n), rate
    assert np.mean(result.info["decision_error"][~result.info["capped"]] <= xi) == 1.0


@pytest.mark.slow
def test_decision_error_bound_is_honoured_long():
    problem = gaussian_problem()
    for xi in (0.05, 0.2):
        result = GPSABC(problem, xi=xi, proposal_scale=1.0, num_initial_simulations=10).run(
            jax.random.PRNGKey(4), num_samples=2000, num_warmup=0
        )
        n = 1000
        rate = _disagreement_rate(result, problem, n, 1)
        print(f"xi {xi}: disagreement {rate:.4f} over {n} steps, {result.num_simulations} simulations")
        assert rate < xi + 2 * np.sqrt(xi * (1 - xi) / n)


# ---- the noise from repeated simulations and the simulation budget -------------------------
def _repeated_data(rng, num_locations, repeats, sd, dim=2):
    """A training set of ``repeats`` simulations ``f(u) + sd * z`` at each of ``num_locations``
    locations (statistics ``(u_0 + u_1, sin u_0)``), and the simulations themselves."""
    u = rng.normal(size=(num_locations, dim))
    mean = np.stack([u[:, 0] + u[:, 1], np.sin(u[:, 0])], axis=1)
    stats = np.repeat(mean, repeats, axis=0) + sd * rng.normal(size=(num_locations * repeats, 2))
    data = core.empty_data(core.capacity_for(num_locations + 1), dim, 2, jnp.float64)
    return core.add_design(data, jnp.asarray(u), jnp.asarray(stats), repeats), stats


def test_pooled_noise_variance_is_the_within_location_variance():
    rng = np.random.default_rng(0)
    sd = np.array([0.5, 2.0])
    data, stats = _repeated_data(rng, 50, 5, sd)
    # a location whose only simulation is non-finite adds nothing
    data = core.add_simulations(data, data.count, jnp.ones(2), jnp.full((1, 2), jnp.nan))
    variance, dof = core.pooled_noise_variance(data)
    groups = stats.reshape(50, 5, 2)
    expected = np.sum((groups - groups.mean(1, keepdims=True)) ** 2, axis=(0, 1)) / (50 * 4)
    assert int(dof) == 200
    np.testing.assert_allclose(np.asarray(variance), expected, rtol=1e-10)
    # dof * estimate / sigma^2 ~ chi2(200): relative sd sqrt(2 / 200) = 0.1, 4 sd allowed
    np.testing.assert_allclose(np.asarray(variance), sd**2, rtol=0.4)


def test_fitted_noise_does_not_collapse_with_repeats():
    # gaussian_linear's shape: 10 parameters, statistic theta + 0.316 z, 20 design locations
    rng = np.random.default_rng(1)
    dim, sd, n = 10, np.sqrt(0.1), 20
    u = 0.3 * rng.normal(size=(n, dim))
    stats = np.repeat(u, 2, axis=0) + sd * rng.normal(size=(2 * n, dim))
    data = core.add_design(core.empty_data(64, dim, dim, jnp.float64), jnp.asarray(u), jnp.asarray(stats), 2)
    standardizer = core.fit_standardizer(data)
    start = core.default_params(dim, dim, jnp.float64)
    fitted, _ = core.fit_hyperparameters(start, data, standardizer, 300, 0.05)
    noise_sd = np.asarray(standardizer.stat_scale * jnp.exp(fitted.log_noise))
    # 20 degrees of freedom per statistic: the estimate's sd is about 0.16 sd; 0.6-1.6 leaves room for the GP
    # term's pull (without repeats 8 of 10 statistics went to the 0.001 bound, about 0.0003 here)
    assert np.all((noise_sd > 0.6 * sd) & (noise_sd < 1.6 * sd)), noise_sd


def test_max_simulations_is_spent_exactly_then_the_chain_goes_on_without_acquiring():
    budget = 55  # 20 of the initial design (10 locations x 2), then 35 acquisitions
    gps = GPSABC(gaussian_problem(), xi=0.05, proposal_scale=1.5, num_initial_simulations=10, max_simulations=budget)
    with pytest.warns(ReliabilityWarning, match="because max_simulations = 55 was spent"):
        result = gps.run(jax.random.PRNGKey(5), num_samples=80, num_warmup=0, init_params=0.5)
    info = result.info
    trace = info["num_simulations_trace"]
    assert result.num_simulations == budget == trace[-1] == info["max_simulations"]
    assert np.all(trace <= budget) and np.all(np.diff(trace) >= 0)
    first = info["budget_exhausted_at"]
    assert first is not None and info["num_out_of_budget"] == int(np.sum(info["out_of_budget"])) > 0
    assert trace[first] == budget and not info["out_of_budget"][:first].any()
    assert np.all(info["num_rounds"][first + 1 :] == 0)  # no acquisition once the budget is spent
    assert not (info["capped"] & info["out_of_budget"]).any()
    assert len(result.theta) == 80 and np.all(np.isfinite(result.theta))


# ---- bad input and non-finite simulations ------------------------------------------------
@pytest.mark.parametrize("xi", [0.0, 0.5, -0.1, 0.7, float("nan"), True, "0.1"])
def test_xi_outside_the_open_interval_is_an_error(xi):
    with pytest.raises(ValueError, match=r"xi must be a number in \(0, 0.5\)"):
        GPSABC(gaussian_problem(), xi=xi)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_surrogate_draws": 1}, "num_surrogate_draws"),
        ({"proposal_scale": -1.0}, "proposal_scale"),
        ({"proposal_scale": [0.1, 0.2]}, "proposal_scale"),
        ({"num_initial_simulations": 1}, "num_initial_simulations"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"delta_s": 0}, "delta_s"),
        ({"acquisition": "greedy"}, "acquisition"),
        ({"refit_growth": 1.0}, "refit_growth"),
        ({"num_initial_repeats": 0}, "num_initial_repeats"),
        ({"noise": "guess"}, "noise"),
        ({"noise": "repeats", "num_initial_repeats": 1}, "num_initial_repeats must be at least 2"),
        ({"max_simulations": 0}, "max_simulations"),
        ({"max_simulations": 2.5}, "max_simulations"),
        ({"max_simulations": 39}, r"max_simulations must be None \(no stop\) or at least .* = 40"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPSABC(gaussian_problem(), **kwargs)


def test_not_a_problem_is_a_type_error():
    with pytest.raises(TypeError, match="problem"):
        GPSABC(object())


def test_a_surrogate_that_fails_to_fit_is_a_clear_error(monkeypatch):
    def broken_fit(params, data, standardizer, num_steps, learning_rate, fix_noise=False):
        return params, jnp.asarray(jnp.nan)

    monkeypatch.setattr(core, "fit_hyperparameters", broken_fit)
    with pytest.raises(ValueError, match="surrogate failed to fit: its log marginal likelihood is nan"):
        GPSABC(gaussian_problem()).run(jax.random.PRNGKey(0), num_samples=2, num_warmup=0, init_params=0.5)


def test_init_params_outside_the_support_is_an_error():
    with pytest.raises(ValueError, match="init_params"):
        GPSABC(exponential_problem()).run(jax.random.PRNGKey(0), num_samples=2, init_params=-1.0)


def test_a_budget_below_the_pilot_and_design_is_an_error():
    with pytest.raises(ValueError, match="max_simulations = 100 is less than the 240 simulations spent before"):
        GPSABC(gaussian_problem(), max_simulations=100).run(jax.random.PRNGKey(0), num_samples=2)


def test_non_finite_simulations_are_counted_and_rejected():
    def simulator(theta, key):
        x = theta + GAUSS_NOISE * jax.random.normal(key)
        return jnp.where(theta > 1.0, jnp.nan, x)

    problem = LikelihoodFreeProblem(dist.Normal(0.0, 2.0), simulator, observed=Y_GAUSS)
    with pytest.warns(ReliabilityWarning, match="non-finite"):
        result = GPSABC(problem, xi=0.1, proposal_scale=1.0, num_initial_simulations=10).run(
            jax.random.PRNGKey(1), num_samples=200, num_warmup=0, init_params=0.0
        )
    assert result.num_nan_simulations > 0
    assert np.all(np.isfinite(result.theta))
    failed = result.info["failed"]
    assert failed.any() and not result.info["accepted"][failed].any()
    assert np.all(result.info["proposals"][failed, 0] > 1.0)
    training = result.info["training_u"][result.info["training_n"] > 0, 0]
    assert np.all(training <= 1.0)  # no non-finite simulation reached the surrogate
