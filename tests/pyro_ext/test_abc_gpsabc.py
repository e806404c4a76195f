"""GPS-ABC (Pyro, GPyTorch surrogate) against exact answers, the twin of tests/numpyro_ext/test_abc_gpsabc.py.

* The surrogate's marginal likelihood: grouping repeated simulations by location (the GP sees each
  location's mean with noise ``sigma^2 / n``) plus the within-location term, with a location whose
  only simulation is non-finite, is exactly the log density of a plain GPyTorch GP
  (``GaussianLikelihood``, ``ScaleKernel(RBFKernel)``) on every simulation as its own row.
* The cached prediction (:func:`predict`, from the Cholesky factor kept at conditioning) is
  GPyTorch's own posterior ``model(x)`` to rounding.
* The decision error ``E(u)`` on hand-made draws.
* The chain on the exponential-gamma toy of docs/abc.rst (prior Gamma(0.1, 0.1), statistic the mean
  of 500 Exponential(lambda) draws; observed 10.0867) against a synthetic-likelihood MCMC reference
  built here (random-walk MH on log lambda with ``S = 50`` fresh simulations per proposal, Wood
  2010's estimator), and against the exact posterior Gamma(500.1, 5043.47).  GPS-ABC must agree with
  both within Monte Carlo error and use far fewer simulations.
* The decision-error bound: on a Gaussian-location problem (statistic ``theta + 0.5 z``), for a
  sample of steps the exact MH decision is recomputed with the step's own ``u_mh`` and the
  synthetic likelihood of 4000 fresh simulations at ``theta`` and ``theta'``; the rate of
  disagreement with the chain's decisions must be below ``xi`` within two binomial standard errors.

Tolerances of the chains: ``4 sd / sqrt(ESS)`` for a mean and ``4 / sqrt(2 ESS)`` for the relative
error of an sd (ESS by Pyro's estimator), combined in quadrature for two chains, plus a bias
allowance stated in the test (the surrogate's homoscedastic noise against the statistic's
``1/lambda``-proportional scatter, and the pseudo-marginal reference's ``S``).  The default chains
are shorter than the NumPyro twin's (a GPyTorch step costs more Python); the slow tests run the
long ones.  Everything runs in float64 (the priors' dtype).
"""

from __future__ import annotations

import math
import warnings

import gpytorch
import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.ops.stats import effective_sample_size

from adapters.diagnostics import ReliabilityWarning
from pyro_ext.infer.abc import GPSABC, LikelihoodFreeProblem, synthetic_log_likelihood
from pyro_ext.infer.abc.gpsabc import core

F64 = torch.float64
Y_OBS = 10.086749290513298
EXACT_MEAN, EXACT_SD = 500.1 / 5043.47, np.sqrt(500.1) / 5043.47


def exponential_simulator(lam, generator):
    """The mean of 500 Exponential(lam) draws, lam (n,) -> (n,)."""
    draws = torch.empty(lam.shape[0], 500, dtype=lam.dtype).exponential_(generator=generator)
    return draws.mean(1) / lam


def exponential_problem(simulator=exponential_simulator) -> LikelihoodFreeProblem:
    prior = pdist.Gamma(torch.tensor(0.1, dtype=F64), torch.tensor(0.1, dtype=F64))
    return LikelihoodFreeProblem(prior, simulator, observed=Y_OBS)


GAUSS_NOISE = 0.5
Y_GAUSS = 0.7


def gaussian_simulator(theta, generator):
    return theta + GAUSS_NOISE * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)


def gaussian_problem(simulator=gaussian_simulator) -> LikelihoodFreeProblem:
    prior = pdist.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(2.0, dtype=F64))
    return LikelihoodFreeProblem(prior, simulator, observed=Y_GAUSS)


def ess(x: np.ndarray) -> float:
    return float(effective_sample_size(torch.as_tensor(np.asarray(x, dtype=np.float64))[None]))


def sl_mcmc(problem, seed: int, num_steps: int, num_simulations: int, scale: float, u0: float):
    """Random-walk MH on the unconstrained u with a fresh synthetic likelihood (S simulations) per
    proposal (the current point keeps its estimate: a pseudo-marginal chain)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    observed = torch.as_tensor(problem.observed, dtype=F64)

    def log_target(u):
        stats = problem.simulate(u.expand(num_simulations, 1), generator)
        return float(problem.log_prior(u[None])[0] + synthetic_log_likelihood(stats, observed))

    u = torch.tensor([u0], dtype=F64)
    lp = log_target(u)
    steps = torch.randn(num_steps, 1, dtype=F64) * scale
    log_uniforms = torch.log(torch.rand(num_steps, dtype=F64))
    chain = np.empty(num_steps)
    with torch.no_grad():
        for i in range(num_steps):
            v = u + steps[i]
            lv = log_target(v)
            if float(log_uniforms[i]) < lv - lp:
                u, lp = v, lv
            chain[i] = float(u[0])
    return np.exp(chain), (num_steps + 1) * num_simulations


# ---- pieces ------------------------------------------------------------------------------
def _grouped_data():
    rng = np.random.default_rng(0)
    locations = rng.normal(size=(5, 2))
    repeats = np.array([1, 3, 1, 4, 2])
    u = np.repeat(locations, repeats, axis=0)
    stats = np.stack([np.sin(u[:, 0]) + u[:, 1], u[:, 0] * u[:, 1]], axis=1) + 0.3 * rng.normal(size=(len(u), 2))
    data = core.empty_data(2, 2, F64)
    for i in range(len(repeats)):
        rows = slice(int(repeats[:i].sum()), int(repeats[: i + 1].sum()))
        data = core.add_simulations(data, i, torch.tensor(locations[i]), torch.tensor(stats[rows]))
    # a location with only a non-finite simulation takes a slot and stays out of the GP
    data = core.add_simulations(data, data.count, torch.ones(2, dtype=F64), torch.full((1, 2), math.nan, dtype=F64))
    params = core.GPParams(
        torch.tensor([0.1, -0.2], dtype=F64),
        torch.tensor([0.3, -0.1], dtype=F64),
        torch.log(torch.tensor([0.4, 0.7], dtype=F64)),
        torch.tensor([[0.2, -0.3], [0.5, 0.1]], dtype=F64),
    )
    return u, stats, data, params


class _PlainGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=x.shape[-1]))

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def test_grouped_marginal_likelihood_is_the_plain_gpytorch_gp_on_every_simulation():
    u, stats, data, params = _grouped_data()
    assert data.count == 6 and int(data.mask.sum()) == 5
    standardizer = core.fit_standardizer(data)
    value = float(core.log_marginal_likelihood(params, data, standardizer))
    x = (torch.tensor(u) - standardizer.u_loc) / standardizer.u_scale
    y = (torch.tensor(stats) - standardizer.stat_loc) / standardizer.stat_scale
    expected = 0.0
    for j in range(2):
        likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.Positive())
        model = _PlainGP(x, y[:, j], likelihood).double()
        likelihood.noise = torch.exp(2 * params.log_noise[j]) + core.JITTER
        model.mean_module.constant = params.mean[j]
        model.covar_module.outputscale = torch.exp(2 * params.log_amplitude[j])
        model.covar_module.base_kernel.lengthscale = torch.exp(params.log_lengthscale[j])
        model.train()
        with torch.no_grad(), core.exact_settings():
            expected += float(likelihood(model(x)).log_prob(y[:, j]))
    # equal up to the 1e-8 jitter, which the grouped GP adds once per location, the plain one per simulation
    np.testing.assert_allclose(value, expected, rtol=1e-7)


def test_cached_prediction_is_the_gpytorch_posterior():
    _, _, data, params = _grouped_data()
    standardizer = core.fit_standardizer(data)
    surrogate = core.condition_surrogate(params, standardizer, data)
    points = torch.tensor([[0.3, -0.2], [1.5, 0.4], [-2.0, 1.0]], dtype=F64)
    loc, cov, noise = core.predict(surrogate, points)
    with torch.no_grad(), core.exact_settings():
        posterior = surrogate.model((points - standardizer.u_loc) / standardizer.u_scale)
    scale = standardizer.stat_scale
    np.testing.assert_allclose(loc, standardizer.stat_loc[:, None] + scale[:, None] * posterior.mean, rtol=1e-10)
    np.testing.assert_allclose(cov, scale[:, None, None] ** 2 * posterior.covariance_matrix, atol=1e-12)
    np.testing.assert_allclose(noise, (scale * torch.exp(params.log_noise)) ** 2, rtol=1e-12)
    _, var, _ = core.predict_marginal(surrogate, points)
    np.testing.assert_allclose(var, torch.diagonal(cov, dim1=-2, dim2=-1), atol=1e-12)


def test_decision_error_counts_the_draws_on_the_other_side():
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.0], dtype=F64)
    accept, tau, error = core.decision_error(torch.log(alpha), torch.log(torch.tensor(0.65, dtype=F64)))
    # the median of log alpha: for an even M, the geometric mean of the middle two
    assert bool(accept) and float(tau) == pytest.approx(np.sqrt(0.7 * 0.8)) and float(error) == pytest.approx(0.4)
    accept, _, error = core.decision_error(torch.log(alpha), torch.log(torch.tensor(0.92, dtype=F64)))
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
    pyro.set_rng_seed(seed)
    result = GPSABC(problem, xi=0.1, proposal_scale=0.08).run(num_samples=num_samples, num_warmup=200)
    ref, ref_sims = sl_mcmc(problem, 100 + seed, num_ref, 50, 0.08, np.log(EXACT_MEAN))
    return result, ref[500:], ref_sims


def test_gpsabc_matches_sl_mcmc_on_the_exponential_toy_with_fewer_simulations():
    result, ref, ref_sims = _toy_run(1000, 0, 4000)
    draws = result.theta[:, 0]
    # bias allowance: 0.1 sd for the mean, 10% for the sd (homoscedastic surrogate noise; S = 50)
    _compare(draws, ref, 0.1 * EXACT_SD, 0.1)
    exact = torch.distributions.Gamma(torch.tensor(500.1, dtype=F64), torch.tensor(5043.47, dtype=F64))
    torch.manual_seed(9)
    _compare(draws, exact.sample((4000,)).numpy(), 0.1 * EXACT_SD, 0.1)
    assert result.num_simulations < ref_sims / 20
    trace = result.info["num_simulations_trace"]
    assert trace.shape == (1200,) and np.all(np.diff(trace) >= 0) and trace[-1] == result.num_simulations
    # the simulations per step fall as the surrogate learns: the second half of the chain costs less
    assert trace[-1] - trace[600] < trace[600] - trace[0]
    # pilot (200 prior draws) + initial design (20 locations x 2) + one simulation per acquisition round (delta_s = 1)
    assert trace[-1] == 200 + 20 * 2 + result.info["acquisitions"]
    assert result.info["decision_error"].shape == (1200,)
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
    observed = torch.as_tensor(problem.observed, dtype=F64)
    generator = torch.Generator().manual_seed(seed)

    def log_target(w):
        w = torch.as_tensor(w, dtype=F64)[None]
        stats = problem.simulate(w.expand(4000, -1), generator)
        return float(problem.log_prior(w)[0] + synthetic_log_likelihood(stats, observed))

    wrong = 0
    with torch.no_grad():
        for i in index:
            exact = log_u[i] <= min(0.0, log_target(proposals[i]) - log_target(chain[i]))
            wrong += exact != bool(accepted[i])
    return wrong / num_checked


@pytest.mark.parametrize("acquisition", ["variance", "random"])
def test_decision_error_bound_is_honoured(acquisition):
    xi = 0.1
    problem = gaussian_problem()
    pyro.set_rng_seed(3)
    result = GPSABC(problem, xi=xi, proposal_scale=1.0, num_initial_simulations=10, acquisition=acquisition).run(
        num_samples=300, num_warmup=0
    )
    n = 150
    rate = _disagreement_rate(result, problem, n, 0)
    assert rate < xi + 2 * np.sqrt(xi * (1 - xi) / n), rate
    assert np.mean(result.info["decision_error"][~result.info["capped"]] <= xi) == 1.0


@pytest.mark.slow
def test_decision_error_bound_is_honoured_long():
    problem = gaussian_problem()
    for xi in (0.05, 0.2):
        pyro.set_rng_seed(4)
        result = GPSABC(problem, xi=xi, proposal_scale=1.0, num_initial_simulations=10).run(
            num_samples=2000, num_warmup=0
        )
        n = 1000
        rate = _disagreement_rate(result, problem, n, 1)
        print(f"xi {xi}: disagreement {rate:.4f} over {n} steps, {result.num_simulations} simulations")
        assert rate < xi + 2 * np.sqrt(xi * (1 - xi) / n)


# ---- the noise from repeated simulations and the simulation budget -------------------------
def test_pooled_noise_variance_is_the_within_location_variance():
    rng = np.random.default_rng(0)
    sd = np.array([0.5, 2.0])
    u = rng.normal(size=(50, 2))
    mean = np.stack([u[:, 0] + u[:, 1], np.sin(u[:, 0])], axis=1)
    stats = np.repeat(mean, 5, axis=0) + sd * rng.normal(size=(250, 2))
    data = core.add_design(core.empty_data(2, 2, F64), torch.tensor(u), torch.tensor(stats), 5)
    # a location whose only simulation is non-finite adds nothing
    data = core.add_simulations(data, data.count, torch.ones(2, dtype=F64), torch.full((1, 2), math.nan, dtype=F64))
    variance, dof = core.pooled_noise_variance(data)
    groups = stats.reshape(50, 5, 2)
    expected = np.sum((groups - groups.mean(1, keepdims=True)) ** 2, axis=(0, 1)) / (50 * 4)
    assert dof == 200
    np.testing.assert_allclose(variance.numpy(), expected, rtol=1e-10)
    # dof * estimate / sigma^2 ~ chi2(200): relative sd sqrt(2 / 200) = 0.1, 4 sd allowed
    np.testing.assert_allclose(variance.numpy(), sd**2, rtol=0.4)


def test_fitted_noise_does_not_collapse_with_repeats():
    # gaussian_linear's shape: 10 parameters, statistic theta + 0.316 z, 20 design locations, 2 repeats each
    rng = np.random.default_rng(1)
    dim, sd, n = 10, np.sqrt(0.1), 20
    u = 0.3 * rng.normal(size=(n, dim))
    stats = np.repeat(u, 2, axis=0) + sd * rng.normal(size=(2 * n, dim))
    data = core.add_design(core.empty_data(dim, dim, F64), torch.tensor(u), torch.tensor(stats), 2)
    standardizer = core.fit_standardizer(data)
    fitted, _ = core.fit_hyperparameters(core.default_params(dim, dim, F64), data, standardizer, 300, 0.05)
    noise_sd = (standardizer.stat_scale * torch.exp(fitted.log_noise)).numpy()
    # 20 degrees of freedom per statistic: the estimate's sd is about 0.16 sd; 0.6-1.6 leaves room for the
    # GP term's pull (without repeats the noise of most statistics went to the 0.001 bound)
    assert np.all((noise_sd > 0.6 * sd) & (noise_sd < 1.6 * sd)), noise_sd


def test_max_simulations_is_spent_exactly_then_the_chain_goes_on_without_acquiring():
    budget = 45  # 20 of the initial design (10 locations x 2), then 25 acquisitions
    pyro.set_rng_seed(6)
    gps = GPSABC(
        gaussian_problem(), xi=0.05, proposal_scale=1.5, num_initial_simulations=10, max_simulations=budget,
        num_fit_steps=50,
    )  # fmt: skip
    with warnings.catch_warnings():  # too few steps after the budget for the warning (the NumPyro twin checks it)
        warnings.simplefilter("ignore", ReliabilityWarning)
        result = gps.run(num_samples=80, num_warmup=0, init_params=0.5)
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
        return params, torch.tensor(math.nan, dtype=F64)

    monkeypatch.setattr(core, "fit_hyperparameters", broken_fit)
    with pytest.raises(ValueError, match="surrogate failed to fit: its log marginal likelihood is nan"):
        GPSABC(gaussian_problem()).run(num_samples=2, num_warmup=0, init_params=0.5)


def test_init_params_outside_the_support_is_an_error():
    with pytest.raises(ValueError, match="init_params"):
        GPSABC(exponential_problem()).run(num_samples=2, init_params=-1.0)


def test_non_finite_simulations_are_counted_and_rejected():
    def simulator(theta, generator):
        x = gaussian_simulator(theta, generator)
        return torch.where(theta > 1.0, torch.full_like(x, math.nan), x)

    problem = gaussian_problem(simulator)
    pyro.set_rng_seed(1)
    with pytest.warns(ReliabilityWarning, match="non-finite"):
        result = GPSABC(problem, xi=0.1, proposal_scale=1.0, num_initial_simulations=10, num_fit_steps=100).run(
            num_samples=200, num_warmup=0, init_params=0.0
        )
    assert result.num_nan_simulations > 0
    assert np.all(np.isfinite(result.theta))
    failed = result.info["failed"]
    assert failed.any() and not result.info["accepted"][failed].any()
    assert np.all(result.info["proposals"][failed, 0] > 1.0)
    training = result.info["training_u"][result.info["training_n"] > 0, 0]
    assert np.all(training <= 1.0)  # no non-finite simulation reached the surrogate
