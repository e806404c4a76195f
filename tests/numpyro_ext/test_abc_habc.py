"""Hamiltonian ABC (NumPyro) against exact answers.

* SPSA under common random numbers (:func:`numpyro_ext.infer.abc.spsa.spsa_grad`): at fixed seeds
  the log synthetic likelihood is a smooth function of ``theta``, so its autodiff gradient ``g`` is
  exact, and for Rademacher directions component ``i`` of the estimate is
  ``g_i + (1/R) sum_r sum_{j != i} g_j Delta_rj Delta_ri + O(c^2)``: mean ``g_i``, variance
  ``sum_{j != i} g_j^2 / R``.  Both are checked over 4000 perturbation draws
  with ``R = 1`` and 1000 with ``R = 4``.
* The SGHMC step (:func:`sghmc_step`) on a standard normal: with exact gradients the position's
  variance is 1 up to the leapfrog's ``O(step_size^2)``; with gradient noise of variance ``V`` it is
  heated to ``1 + step_size V / (2 C)`` (the momentum gains ``step_size^2 V`` a step and the friction
  removes a fraction ``2 C step_size`` of its excess).
* HABC on a Gaussian-mean problem (D = 2, prior N(0, 4 I), statistic the mean of n = 10 draws of
  N(theta, Sigma): the synthetic likelihood is the exact likelihood in law) and on the
  exponential-gamma toy (prior Gamma(0.1, 0.1), mean of 500 exponentials drawn as one
  Gamma(500, 500 rate) variate, the same law; exact posterior Gamma(500.1, 5043.47)).

Tolerances of the chains: ``4 sd / sqrt(ESS)`` for a mean (ESS of the draws, NumPyro's estimator over
the chains) and ``4 / sqrt(2 ESS_2)`` for the relative error of an sd (``ESS_2`` of the squared
deviations; ``Var(s^2) / sigma^4 = 2 / ESS`` for Gaussian draws), plus a bias allowance stated in
each test: the synthetic likelihood's ``S`` (between the ``(S - 1) / (S - d - 2)``-sharpened
posterior of fast seed refreshes and the seed mixture of slow ones) and SGHMC's heating.
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC

from numpyro_ext.infer.abc.habc import HABC, SGHMCState, metric_factor, sghmc_step, sghmc_warmup_adapter
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem
from numpyro_ext.infer.abc.spsa import spsa_grad

# ---- problems ---------------------------------------------------------------------------
SIGMA = np.array([[1.0, 0.5], [0.5, 2.0]])
CHOL = np.linalg.cholesky(SIGMA)
N_MEAN = 10
Y_GAUSS = np.array([0.8, -1.1])
PRIOR_SD = 2.0

Y_OBS = 10.086749290513298
EXACT_MEAN, EXACT_SD = 500.1 / 5043.47, np.sqrt(500.1) / 5043.47


def gaussian_mean_simulator(theta, key):
    """The mean of n = 10 draws of N(theta, Sigma)."""
    return jnp.mean(theta + jax.random.normal(key, (N_MEAN, 2)) @ CHOL.T, axis=0)


def gaussian_problem(simulator=gaussian_mean_simulator) -> LikelihoodFreeProblem:
    return LikelihoodFreeProblem(dist.Normal(jnp.zeros(2), PRIOR_SD).to_event(1), simulator, Y_GAUSS)


def gaussian_posterior() -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean (2,) and covariance (2, 2) of the Gaussian-mean problem."""
    likelihood_precision = N_MEAN * np.linalg.inv(SIGMA)
    cov = np.linalg.inv(np.eye(2) / PRIOR_SD**2 + likelihood_precision)
    return cov @ likelihood_precision @ Y_GAUSS, cov


def gamma_mean_simulator(lam, key):
    """The mean of 500 Exponential(lam) draws, drawn as Gamma(500, 500 lam) (same law)."""
    return jax.random.gamma(key, 500.0) / 500.0 / lam


def curved_simulator(theta, key):
    """A differentiable, non-linear simulator of 3 statistics (log SL is not quadratic in theta)."""
    e = jax.random.normal(key, (4,))
    return jnp.stack(
        [
            theta[0] + 0.3 * theta[1] ** 2 + 0.5 * e[0],
            jnp.exp(0.2 * theta[1]) * (1.0 + 0.3 * e[1]) + 0.2 * theta[2] * e[3],
            jnp.sin(theta[2]) + 0.5 * theta[0] * theta[1] + 0.4 * e[2],
        ]
    )


def check_chain(draws: np.ndarray, mean: np.ndarray, sd: np.ndarray, sd_bias: float) -> dict:
    """``draws`` ``(chains, n, D)`` against the exact ``mean`` and ``sd`` ``(D,)`` (the module's tolerances)."""
    ess = effective_sample_size(draws)
    ess_sq = effective_sample_size((draws - mean) ** 2)
    got_mean, got_sd = draws.reshape(-1, draws.shape[-1]).mean(0), draws.reshape(-1, draws.shape[-1]).std(0)
    mean_error = np.abs(got_mean - mean) / sd  # in posterior sds
    sd_error = np.abs(got_sd / sd - 1.0)
    numbers = {"mean": got_mean, "sd": got_sd, "ess": ess, "ess_sq": ess_sq, "z_mean": mean_error * np.sqrt(ess)}
    assert np.all(mean_error < 4.0 / np.sqrt(ess)), numbers
    assert np.all(sd_error < 4.0 / np.sqrt(2.0 * ess_sq) + sd_bias), numbers
    return numbers


# ---- SPSA under common random numbers -------------------------------------------------
def test_spsa_gradient_matches_autodiff_at_fixed_seeds():
    problem = LikelihoodFreeProblem(dist.Normal(jnp.zeros(3), 1.0).to_event(1), curved_simulator, [0.7, 1.2, 0.1])
    kernel = HABC(problem, num_simulations=20)
    seeds = jax.random.split(jax.random.PRNGKey(3), 20)
    u0 = jnp.array([0.3, -0.5, 0.8])
    log_sl = kernel.log_synthetic_likelihood
    value, exact = jax.jit(jax.value_and_grad(lambda u: log_sl(u, seeds)[0]))(u0)
    exact = np.asarray(exact)
    num_draws = 4000
    keys = jax.random.split(jax.random.PRNGKey(4), num_draws)
    estimate = jax.jit(jax.vmap(lambda k: spsa_grad(log_sl, u0, seeds, k, 1, 1e-4, has_aux=True)))(keys)
    # the log SL from the perturbed evaluations is exact to O(c^2); no simulation was non-finite
    assert np.allclose(np.asarray(estimate.value), float(value), rtol=0, atol=1e-6)
    assert np.all(np.asarray(estimate.num_finite_pairs) == 1) and np.all(np.asarray(estimate.aux) == 0)
    single = np.asarray(estimate.grad)  # (4000, 3) estimates with R = 1
    # R = 4 is the mean of 4 independent R = 1 estimates (one compiled function for both)
    grads_by_repeats = {1: single, 4: single.reshape(-1, 4, 3).mean(1)}
    standard_errors = {}
    for repeats, grads in grads_by_repeats.items():
        n = len(grads)
        mean, var = grads.mean(0), grads.var(0, ddof=1)
        # unbiased: the mean over the draws within 4 standard errors of autodiff
        assert np.all(np.abs(mean - exact) < 4.0 * np.sqrt(var / n)), (repeats, mean, exact)
        # the variance is sum_{j != i} g_j^2 / R (sampling error of a variance: sqrt(2 / n), 4 of them)
        expected = (np.sum(exact**2) - exact**2) / repeats
        assert np.all(np.abs(var / expected - 1.0) < 4.0 * np.sqrt(2.0 / n)), (repeats, var, expected)
        standard_errors[repeats] = np.sqrt(var)
    # standard error ~ 1 / sqrt(R): halved from R = 1 to R = 4 (within the R = 4 variance check's 4 sigma)
    assert np.all(np.abs(standard_errors[1] / standard_errors[4] / 2.0 - 1.0) < 4.0 * np.sqrt(1.0 / 1000))
    # R > 1 inside spsa_grad is that mean: 4 directions from one key, averaged
    four = jax.jit(lambda k: spsa_grad(log_sl, u0, seeds, k, 4, 1e-4, has_aux=True))(keys[0])
    deltas = np.asarray(jax.random.rademacher(keys[0], (4, 3), dtype=u0.dtype))
    at = jax.jit(jax.vmap(lambda u: log_sl(u, seeds)[0]))
    slopes = (np.asarray(at(u0 + 1e-4 * deltas)) - np.asarray(at(u0 - 1e-4 * deltas))) / 2e-4
    assert np.allclose(np.asarray(four.grad), np.mean(slopes[:, None] * deltas, axis=0))
    assert int(four.num_finite_pairs) == 4


@pytest.mark.parametrize("dense", [False, True])
def test_spsa_in_the_metric_perturbs_along_l_delta_and_is_unbiased(dense):
    # with M^-1 = L L^T, SPSA perturbs u along c L Delta and maps the slope back by L^-T: for a fixed key the
    # estimate is L^-T Delta (f(u + c L Delta) - f(u - c L Delta)) / (2c) plus the prior's gradient, and over
    # keys its mean is the autodiff gradient (E[L^-T Delta Delta^T L^T g] = g)
    problem = LikelihoodFreeProblem(dist.Normal(jnp.zeros(3), 1.0).to_event(1), curved_simulator, [0.7, 1.2, 0.1])
    kernel = HABC(problem, num_simulations=20, num_spsa_repeats=1, spsa_scale=1e-3)
    seeds = jax.random.split(jax.random.PRNGKey(3), 20)
    u0 = jnp.array([0.3, -0.5, 0.8])
    scales = jnp.array([0.05, 1.0, 4.0])
    inverse_mass_matrix = jnp.diag(scales**2) + (0.01 if dense else 0.0) * (1.0 - jnp.eye(3))
    metric = metric_factor(inverse_mass_matrix if dense else scales**2)
    factor = np.asarray(metric) if dense else np.diag(np.asarray(metric))
    assert np.allclose(factor @ factor.T, np.asarray(inverse_mass_matrix))
    key = jax.random.PRNGKey(9)
    # one compiled function for everything the test evaluates (eager JAX would compile op by op)
    evaluate = jax.jit(jax.vmap(lambda k: kernel.evaluate(u0, seeds, k, metric)))
    log_sl = jax.jit(jax.vmap(lambda u: kernel.log_synthetic_likelihood(u, seeds)[0]))
    exact_sl, prior_grad = jax.jit(
        lambda u: (jax.grad(lambda v: kernel.log_synthetic_likelihood(v, seeds)[0])(u), jax.grad(problem.log_prior)(u))
    )(u0)
    exact_sl, prior_grad = np.asarray(exact_sl), np.asarray(prior_grad)
    keys = jnp.concatenate([key[None], jax.random.split(jax.random.PRNGKey(4), 1000)])
    _, grads, _, failed = (np.asarray(a) for a in evaluate(keys))
    delta = np.asarray(jax.random.rademacher(key, (1, 3), dtype=u0.dtype))[0]
    ends = np.asarray(log_sl(jnp.asarray(np.stack([u0 + 1e-3 * factor @ delta, u0 - 1e-3 * factor @ delta]))))
    slope = (ends[0] - ends[1]) / 2e-3
    assert not np.any(failed)
    assert np.allclose(grads[0], np.linalg.solve(factor.T, slope * delta) + prior_grad, rtol=1e-6)
    grads = grads[1:]
    # unbiased: within 4 standard errors of autodiff; in whitened units (L^T g) the variance is SPSA's,
    # sum_{j != i} (L^T g_SL)_j^2, whatever the coordinates' scales (sampling error of a variance: sqrt(2 / n))
    assert np.all(np.abs(grads.mean(0) - exact_sl - prior_grad) < 4.0 * grads.std(0, ddof=1) / np.sqrt(len(grads)))
    whitened, exact_whitened = grads @ factor, exact_sl @ factor
    expected = np.sum(exact_whitened**2) - exact_whitened**2
    assert np.all(np.abs(whitened.var(0, ddof=1) / expected - 1.0) < 4.0 * np.sqrt(2.0 / len(grads)))


def test_spsa_in_one_dimension_is_the_central_difference():
    def f(theta, keys):
        return jnp.sum(jnp.sin(3.0 * theta) * keys)

    keys = jnp.array([1.0, 2.0])
    estimate = spsa_grad(f, jnp.array([0.4]), keys, jax.random.PRNGKey(0), 3, 1e-3)
    central = (f(jnp.array([0.401]), keys) - f(jnp.array([0.399]), keys)) / 2e-3
    assert np.allclose(np.asarray(estimate.grad), float(central), rtol=1e-12)
    assert int(estimate.num_finite_pairs) == 3


# ---- the SGHMC step -----------------------------------------------------------------------
def test_sghmc_step_on_a_standard_normal():
    step_size, friction, num_chains, num_steps = 0.1, 0.5, 16, 4000

    def run(key, noise_var):
        def grad_fn(x, k):
            noise = jnp.sqrt(noise_var) * jax.random.normal(k, x.shape)
            return -0.5 * x @ x, -x + noise, jnp.zeros((), jnp.int32), jnp.zeros((), bool)

        x0 = jnp.zeros(2)
        state = SGHMCState(x0, jnp.zeros(2), jnp.zeros(()), -x0)

        def body(state, k):
            state, info = sghmc_step(k, state, grad_fn, jnp.ones(2), step_size, friction)
            return state, (state.position, info.diverging)

        return jax.lax.scan(body, state, jax.random.split(key, num_steps))[1]

    keys = jax.random.split(jax.random.PRNGKey(0), num_chains)
    # one compiled run for both gradient noises (noise variance 0 and 1)
    run_all = jax.jit(jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(None, 0)))
    positions, diverging = run_all(keys, jnp.array([0.0, 1.0]))
    assert not np.any(np.asarray(diverging))
    for index, noise_var in enumerate((0.0, 1.0)):
        draws = np.asarray(positions[index])[:, 500:]  # (chains, draws, 2)
        heated = 1.0 + step_size * noise_var / (2.0 * friction)
        # the mean 0, the sd sqrt(heated); bias allowance: the leapfrog's O(step_size^2) plus the heating
        # formula's own O(step_size^2) (step_size^2 = 0.01 in variance, 0.005 in sd)
        check_chain(draws, np.zeros(2), np.full(2, np.sqrt(heated)), sd_bias=0.01)
        if noise_var:  # the heating is seen: 5% in variance, outside the sampling error
            assert draws.reshape(-1, 2).var(0).mean() > 1.025


def test_sghmc_step_undoes_a_step_that_leaves_the_reals():
    def grad_fn(x, key):
        return jnp.zeros(()), jnp.full_like(x, jnp.inf), jnp.ones((), jnp.int32), jnp.ones((), bool)

    state = SGHMCState(jnp.array([0.5, -1.0]), jnp.array([2.0, 0.0]), jnp.zeros(()), jnp.array([0.1, 0.1]))
    new, info = sghmc_step(jax.random.PRNGKey(0), state, grad_fn, jnp.ones(2), 0.1, 1.0)
    assert bool(info.diverging) and int(info.num_nonfinite) == 1 and bool(info.failed)
    assert np.array_equal(np.asarray(new.position), np.asarray(state.position))
    assert np.all(np.isfinite(np.asarray(new.momentum))) and not np.array_equal(new.momentum, state.momentum)

    # a step from a finite log density to -inf (every simulation failed there) is undone too
    def no_simulation(x, key):
        return -jnp.inf, -x, jnp.full((), 20, jnp.int32), jnp.ones((), bool)

    new, info = sghmc_step(jax.random.PRNGKey(1), state, no_simulation, jnp.ones(2), 0.1, 1.0)
    assert bool(info.diverging) and np.array_equal(np.asarray(new.position), np.asarray(state.position))
    assert float(new.logdensity) == 0.0


# ---- warmup adaptation of the metric ------------------------------------------------------
ADAPT_SD = np.array([0.3, 3.0])  # the statistic's sds: posterior variances 100 times apart


def adaptation_problem() -> LikelihoodFreeProblem:
    """One draw of N(theta, diag(ADAPT_SD^2)) observed, prior N(0, 100^2 I)."""
    scale = jnp.asarray(ADAPT_SD)
    return LikelihoodFreeProblem(
        dist.Normal(jnp.zeros(2), 100.0).to_event(1),
        lambda theta, key: theta + scale * jax.random.normal(key, (2,)),
        [0.1, -0.5],
    )


def test_sghmc_warmup_adaptation_reaches_the_variances_of_a_badly_scaled_gaussian():
    # SGHMC with exact gradients on N(0, diag(0.3^2, 3^2)) from the identity metric, M^-1 fed to each step from
    # sghmc_warmup_adapter (500 warmup draws: Stan's windows 25, 50, 100, then the last 200): M^-1 ends at the
    # variances, 100 times apart, up to the leapfrog's 1 / (1 - step_size^2 / 4) in the adapted metric and
    # Welford's regularisation n / (n + 5) (n = 200).  One compiled loop over 16 chains.
    variances, step_size, friction, num_warmup, num_chains = np.array([0.09, 9.0]), 0.5, 0.25, 500, 16
    init, update = sghmc_warmup_adapter(num_warmup, True, False)

    def grad_fn(x, key):
        return -0.5 * jnp.sum(x**2 / variances), -x / variances, jnp.zeros((), jnp.int32), jnp.zeros((), bool)

    def chain(key):
        from numpyro.infer.hmc_util import IntegratorState as Point

        x = jnp.zeros(2)
        adapt = init(Point(x, None, 0.0, -x), key, step_size, jnp.ones(2), mass_matrix_size=2)
        state = SGHMCState(x, jnp.zeros(2), jnp.zeros(()), -x)

        def body(carry, tk):
            state, adapt = carry
            t, k = tk
            state, _ = sghmc_step(k, state, grad_fn, adapt.inverse_mass_matrix, step_size, friction)
            adapt = update(t, 1.0, Point(state.position, None, -state.logdensity, -state.logdensity_grad), adapt)
            return (state, adapt), None

        steps = (jnp.arange(num_warmup), jax.random.split(key, num_warmup))
        return jax.lax.scan(body, (state, adapt), steps)[0][1].inverse_mass_matrix

    adapted = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(0), num_chains)))
    ratio = adapted / (variances / (1.0 - step_size**2 / 4.0) * 200 / 205)
    # MC error from the chains' spread (each chain adapts on its own draws)
    standard_error = ratio.std(0, ddof=1) / np.sqrt(num_chains)
    assert np.all(np.abs(ratio.mean(0) - 1.0) < 4.0 * standard_error), (ratio, standard_error)
    assert np.all(standard_error < 0.15), standard_error  # sharp enough to see a factor 2 (the identity: 11, 0.11)


@pytest.mark.slow  # test budget: three compiled HABC chains (~25 s here); the adaptation loop above runs by default
def test_warmup_adapts_the_inverse_mass_matrix_to_the_posterior_variances():
    # From the identity, Welford's windows (Stan's schedule, 500 warmup draws, the last window 200 draws) bring
    # M^-1 to the posterior variances although they differ 100 times; without adaptation it stays 1.
    num_chains, num_simulations, step_size, friction = 8, 100, 0.5, 0.25
    problem = adaptation_problem()
    kernel = HABC(
        problem,
        step_size=step_size,
        num_steps=1,
        friction=friction,
        num_simulations=num_simulations,
        seed_refresh=1.0,
        gradient="autodiff",
        adapt_mass_matrix=True,
    )
    mcmc = MCMC(kernel, num_warmup=500, num_samples=1, num_chains=num_chains, chain_method="vectorized",
                progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.PRNGKey(0), init_params=jnp.tile(jnp.asarray(problem.observed), (num_chains, 1)))
    adapted = np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix)  # (chains, 2)
    # what the chain samples: fresh seeds every iteration make the synthetic-likelihood posterior with the
    # likelihood precision sharpened by (S - 1) / (S - d - 2) (numpyro_ext.infer.abc.avabc); the leapfrog's
    # stationary variance on a Gaussian is 1 / (1 - step_size^2 / 4) in whitened units (step_size 0.5 in
    # the adapted metric); Welford's regularisation is n / (n + 5) on the last window's n = 200 draws
    sharpen = (num_simulations - 1) / (num_simulations - 2 - 2)
    target = 1.0 / (1.0 / 100.0**2 + sharpen / ADAPT_SD**2)
    expected = target / (1.0 - step_size**2 / 4.0) * 200 / 205
    ratio = adapted / expected
    # MC error from the chains' spread (each chain adapts on its own draws); the gradient noise of fresh
    # seeds heats by ~ step_size V / (2 C) with V ~ d / S = 0.02 whitened: 2%, within the 4 standard errors
    standard_error = ratio.std(0, ddof=1) / np.sqrt(num_chains)
    assert np.all(np.abs(ratio.mean(0) - 1.0) < 4.0 * standard_error), (ratio, standard_error)
    assert np.all(standard_error < 0.15), standard_error  # the check is sharp enough to see a factor 2
    # the identity it started from is 11 and 0.11 times the posterior variances
    assert np.all(np.abs(np.log(ratio.mean(0))) < 0.5) and np.all(np.abs(np.log(1.0 / expected)) > 2.0)
    fixed = HABC(problem, num_simulations=10, adapt_mass_matrix=False)
    mcmc = MCMC(fixed, num_warmup=40, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), init_params=jnp.asarray(problem.observed))
    assert np.array_equal(np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix), np.ones(2))


# ---- HABC in NumPyro's MCMC -------------------------------------------------------------
def nan_seed_simulator(theta, key):
    """The Gaussian-mean simulator, NaN for about 20% of the keys (whatever theta)."""
    x = gaussian_mean_simulator(theta, key)
    return jnp.where(jax.random.uniform(jax.random.fold_in(key, 7)) < 0.2, jnp.nan, x)


def count_nan_seeds(seeds: np.ndarray) -> np.ndarray:
    """How many of the persistent seeds ``(..., S, 2)`` give NaN simulations (whatever theta)."""
    stats = jax.jit(jax.vmap(lambda k: nan_seed_simulator(jnp.zeros(2), k)))(jnp.asarray(seeds).reshape(-1, 2))
    return np.sum(~np.isfinite(np.asarray(stats[:, 0])).reshape(seeds.shape[:-1]), axis=-1)


@pytest.mark.slow  # test budget: a compiled chain; the SPSA gradient and the SGHMC step are tested by default
def test_habc_spsa_with_nan_simulations_counts_posterior_and_arviz():
    # 20% of the seeds give NaN simulations: they are left out of the synthetic likelihood, counted, and the
    # chain still samples the Gaussian-mean posterior
    mean, cov = gaussian_posterior()
    sd = np.sqrt(np.diag(cov))
    num_sims, repeats, num_steps = 50, 2, 5
    kernel = HABC(
        gaussian_problem(nan_seed_simulator),
        step_size=0.15,
        num_steps=num_steps,
        num_simulations=num_sims,
        num_spsa_repeats=repeats,
        seed_refresh=0.2,
        inverse_mass_matrix=sd**2,
    )
    mcmc = MCMC(kernel, num_warmup=0, num_samples=400, num_chains=2, chain_method="vectorized", progress_bar=False)
    # initialised here, at the posterior mean, to know the initial seeds: MCMC starts from post_warmup_state
    start = kernel.init(jax.random.split(jax.random.PRNGKey(0), 2), 0, np.stack([mean, mean]), (), {})
    mcmc.post_warmup_state = start
    mcmc.run(start.rng_key, extra_fields=("seeds",))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"])[:, 100:]
    # bias allowance 8% of the sd: about 40 finite simulations of d = 2 sharpen by up to sqrt(39 / 36) (4%);
    # SPSA's gradient noise (R = 2) heats by about step_size V / (4 C) = 2% in sd (4% seen at step_size 0.2)
    check_chain(draws, mean, sd, sd_bias=0.08)
    # exact counts: an iteration evaluates (5 + 1) SPSA gradients of 2 R S simulations with its seeds (the
    # collected ones), and every NaN seed is NaN on both sides of every pair; the initial gradient is one more
    state = mcmc.last_state
    per_iteration_nan = count_nan_seeds(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["seeds"]))  # (2, 400)
    initial_nan = count_nan_seeds(np.asarray(start.seeds))  # (2,)
    assert np.array_equal(np.asarray(start.num_nonfinite), initial_nan * 2 * repeats)
    expected = (initial_nan + per_iteration_nan.sum(1) * (num_steps + 1)) * 2 * repeats
    assert np.array_equal(np.asarray(state.num_nonfinite), expected)
    fraction = per_iteration_nan.mean() / num_sims
    assert 0.1 < fraction < 0.3, fraction  # about 20% of the seeds (~150 fresh ones a chain over the run)
    assert np.all(np.asarray(state.num_simulations) == 2 * repeats * num_sims * (1 + 400 * (num_steps + 1)))
    assert kernel.simulations_per_iteration == 2 * repeats * num_sims * (num_steps + 1)
    assert int(np.sum(np.asarray(state.num_failed_gradients))) == 0
    with pytest.warns(Warning, match="non-finite"):
        kernel.check_counts(state)
    idata = az.from_numpyro(mcmc)
    assert idata.posterior["theta"].shape == (2, 400, 2)
    lp = idata.sample_stats["lp"].values
    assert lp.shape == (2, 400) and np.all(np.isfinite(lp))


def test_no_finite_simulations_fall_back_to_the_prior_gradient():
    def simulator(theta, key):  # NaN beyond theta_0 = 2.5: the synthetic likelihood is -inf there
        return jnp.where(theta[0] > 2.5, jnp.nan, gaussian_mean_simulator(theta, key))

    kernel = HABC(gaussian_problem(simulator), num_simulations=20, num_spsa_repeats=3)
    seeds = jax.random.split(jax.random.PRNGKey(0), 20)
    u = jnp.array([6.0, 1.0])
    logdensity, grad, num_nonfinite, failed = jax.jit(kernel.evaluate)(u, seeds, jax.random.PRNGKey(1))
    assert float(logdensity) == -np.inf and bool(failed) and int(num_nonfinite) == 2 * 3 * 20
    assert np.allclose(np.asarray(grad), -np.asarray(u) / PRIOR_SD**2)  # the prior's gradient alone


# ---- bad input --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    return gaussian_problem()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"friction": -1.0}, "friction"),
        ({"num_simulations": 2}, "num_simulations"),
        ({"num_spsa_repeats": 0}, "num_spsa_repeats"),
        ({"spsa_scale": 0.0}, "spsa_scale"),
        ({"seed_refresh": 1.5}, "seed_refresh"),
        ({"gradient": "finite"}, "gradient"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"inverse_mass_matrix": [1.0, 2.0, 3.0]}, "inverse_mass_matrix"),
        ({"inverse_mass_matrix": [1.0, -2.0]}, "inverse_mass_matrix"),
        ({"inverse_mass_matrix": [[1.0, 2.0], [2.0, 1.0]]}, "inverse_mass_matrix"),
        ({"num_pilot_draws": -1}, "num_pilot_draws"),
    ],
)
def test_bad_arguments_name_the_argument(problem, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HABC(problem, **kwargs)


def test_bad_problem_init_params_and_gradient(problem):
    with pytest.raises(TypeError, match="problem"):
        HABC(lambda: None)
    with pytest.raises(TypeError, match="inverse_mass_matrix"):
        HABC(problem, inverse_mass_matrix="identity")
    rounding = LikelihoodFreeProblem(
        dist.Normal(jnp.zeros(2), 1.0).to_event(1), lambda t, k: jnp.round(gaussian_mean_simulator(t, k)), Y_GAUSS
    )
    with pytest.raises(ValueError, match="gradient: 'autodiff'"):
        HABC(rounding, gradient="autodiff")
    kernel = HABC(problem, num_simulations=10)
    for init, error in (([1.0, 2.0, 3.0], ValueError), ([jnp.nan, 0.0], ValueError)):
        with pytest.raises(error, match="init_params"):
            MCMC(kernel, num_warmup=0, num_samples=2, progress_bar=False).run(jax.random.PRNGKey(0), init_params=init)


# ---- slow: the posteriors -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["spsa", "autodiff"])
def test_habc_gaussian_mean_reaches_the_exact_posterior(gradient):
    mean, cov = gaussian_posterior()
    sd = np.sqrt(np.diag(cov))
    kernel = HABC(
        gaussian_problem(),
        step_size=0.1,
        num_steps=10,
        friction=1.0,
        num_simulations=100,
        num_spsa_repeats=4,
        spsa_scale=0.01,
        seed_refresh=0.2,
        gradient=gradient,
        inverse_mass_matrix=sd**2,
    )
    # autodiff runs its chains one after the other (the kernel's unbatched path), SPSA side by side
    chain_method = "sequential" if gradient == "autodiff" else "vectorized"
    mcmc = MCMC(kernel, num_warmup=200, num_samples=2000, num_chains=4, chain_method=chain_method, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"])
    assert draws.shape == (4, 2000, 2)
    # bias allowance 2% of the sd: S = 100, d = 2 sharpens by up to sqrt(99 / 96) (1.5%); SPSA's gradient
    # noise (V ~ 1 / R = 0.25 whitened) heats the variance by ~ step_size V / (2 C) = 1.25% (0.6% in sd).
    # (step_size 0.2 with R = 2 heated the sd by 4%.)
    numbers = check_chain(draws, mean, sd, sd_bias=0.02)
    print("HABC", gradient, "gaussian", numbers, "exact", mean, sd)


@pytest.mark.slow
def test_habc_spsa_exponential_gamma_toy_reaches_the_exact_posterior():
    problem = LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), gamma_mean_simulator, Y_OBS)
    kernel = HABC(
        problem,
        step_size=0.2,
        num_steps=5,
        friction=1.0,
        num_simulations=100,
        num_spsa_repeats=1,  # one dimension: SPSA is the central difference, no gradient noise
        spsa_scale=0.01,
        seed_refresh=0.2,
        inverse_mass_matrix=[0.045**2],  # about the posterior variance of log(rate)
    )
    mcmc = MCMC(kernel, num_warmup=200, num_samples=2000, num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"])[..., None]
    # bias allowance 1.5% of the sd: S = 100, d = 1 sharpens by up to sqrt(99 / 97) (1%); the statistic
    # is Gaussian to 1 / sqrt(500) (the S = inf synthetic-likelihood posterior is the exact one to 0.5%)
    numbers = check_chain(draws, np.array([EXACT_MEAN]), np.array([EXACT_SD]), sd_bias=0.015)
    print("HABC spsa toy", numbers, "exact", EXACT_MEAN, EXACT_SD)
    assert kernel.check_counts(mcmc.last_state)["num_nonfinite"] == 0
