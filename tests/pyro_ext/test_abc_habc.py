"""Hamiltonian ABC (Pyro) against exact answers, the twin of tests/numpyro_ext/test_abc_habc.py.

* SPSA under common random numbers (:func:`pyro_ext.infer.abc.spsa.spsa_grad`): at fixed seeds the
  log synthetic likelihood is a smooth function of ``theta``, so its autograd gradient ``g`` is exact,
  and for Rademacher directions component ``i`` of the estimate is
  ``g_i + (1/R) sum_r sum_{j != i} g_j Delta_rj Delta_ri + O(c^2)``: mean ``g_i``, variance
  ``sum_{j != i} g_j^2 / R``.  Both are checked over 4000 perturbation draws with ``R = 1`` and 1000
  with ``R = 4``.
* The SGHMC step (:func:`sghmc_step`) on a standard normal: with exact gradients the position's
  variance is 1 up to the leapfrog's ``O(step_size^2)``; with gradient noise of variance ``V`` it is
  heated to ``1 + step_size V / (2 C)``.
* HABC in ``pyro.infer.MCMC``: exact simulation and non-finite counts on a simulator that is NaN for
  about 20% of the seeds, ArviZ conversion; slow: the Gaussian-mean problem (D = 2, prior N(0, 4 I),
  statistic the mean of n = 10 draws of N(theta, Sigma): the synthetic likelihood is the exact
  likelihood in law) and the exponential-gamma toy of docs/abc.rst (prior Gamma(0.1, 0.1), mean of
  500 exponentials; exact posterior Gamma(500.1, 5043.47)) reach their exact posteriors.

Tolerances of the chains: ``4 sd / sqrt(ESS)`` for a mean (ESS of the draws, Pyro's estimator over the
chains) and ``4 / sqrt(2 ESS_2)`` for the relative error of an sd (``ESS_2`` of the squared deviations;
``Var(s^2) / sigma^4 = 2 / ESS`` for Gaussian draws), plus a bias allowance stated in each test.
Everything runs in float64 (the priors' dtype).
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.infer import MCMC
from pyro.ops.stats import effective_sample_size

from adapters.inference_data import from_mcmc
from pyro_ext.infer.abc import HABC, spsa_grad
from pyro_ext.infer.abc.habc import SGHMCState, metric_factor, sghmc_step
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem
from pyro_ext.infer.abc.spsa import rademacher

F64 = torch.float64

# ---- problems ---------------------------------------------------------------------------
SIGMA = np.array([[1.0, 0.5], [0.5, 2.0]])
CHOL = torch.tensor(np.linalg.cholesky(SIGMA))
N_MEAN = 10
Y_GAUSS = np.array([0.8, -1.1])
PRIOR_SD = 2.0

Y_OBS = 10.086749290513298
EXACT_MEAN, EXACT_SD = 500.1 / 5043.47, np.sqrt(500.1) / 5043.47


def gaussian_mean_simulator(theta, generator):
    """The mean of n = 10 draws of N(theta, Sigma), theta (n, 2) -> (n, 2)."""
    noise = torch.randn(theta.shape[0], N_MEAN, 2, generator=generator, dtype=theta.dtype)
    return theta + (noise @ CHOL.T.to(theta.dtype)).mean(1)


def gaussian_problem(simulator=gaussian_mean_simulator) -> LikelihoodFreeProblem:
    prior = pdist.Normal(torch.zeros(2, dtype=F64), PRIOR_SD).to_event(1)
    return LikelihoodFreeProblem(prior, simulator, torch.tensor(Y_GAUSS))


def gaussian_posterior() -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean (2,) and covariance (2, 2) of the Gaussian-mean problem."""
    likelihood_precision = N_MEAN * np.linalg.inv(SIGMA)
    cov = np.linalg.inv(np.eye(2) / PRIOR_SD**2 + likelihood_precision)
    return cov @ likelihood_precision @ Y_GAUSS, cov


def gamma_mean_simulator(lam, generator):
    """The mean of 500 Exponential(lam) draws per row (docs/abc.rst): lam-free draws, smooth in lam."""
    e = -torch.log1p(-torch.rand((lam.shape[0], 500), generator=generator, dtype=lam.dtype))
    return e.mean(-1) / lam


def curved_simulator(theta, generator):
    """A differentiable, non-linear simulator of 3 statistics (log SL is not quadratic in theta)."""
    e = torch.randn(theta.shape[0], 4, generator=generator, dtype=theta.dtype)
    t0, t1, t2 = theta.unbind(-1)
    return torch.stack(
        [
            t0 + 0.3 * t1**2 + 0.5 * e[:, 0],
            torch.exp(0.2 * t1) * (1.0 + 0.3 * e[:, 1]) + 0.2 * t2 * e[:, 3],
            torch.sin(t2) + 0.5 * t0 * t1 + 0.4 * e[:, 2],
        ],
        dim=-1,
    )


def check_chain(draws: np.ndarray, mean: np.ndarray, sd: np.ndarray, sd_bias: float) -> dict:
    """``draws`` ``(chains, n, D)`` against the exact ``mean`` and ``sd`` ``(D,)`` (the module's tolerances)."""
    ess = effective_sample_size(torch.as_tensor(draws), chain_dim=0, sample_dim=1).numpy()
    ess_sq = effective_sample_size(torch.as_tensor((draws - mean) ** 2), chain_dim=0, sample_dim=1).numpy()
    flat = draws.reshape(-1, draws.shape[-1])
    got_mean, got_sd = flat.mean(0), flat.std(0)
    mean_error = np.abs(got_mean - mean) / sd  # in posterior sds
    sd_error = np.abs(got_sd / sd - 1.0)
    numbers = {"mean": got_mean, "sd": got_sd, "ess": ess, "ess_sq": ess_sq, "z_mean": mean_error * np.sqrt(ess)}
    assert np.all(mean_error < 4.0 / np.sqrt(ess)), numbers
    assert np.all(sd_error < 4.0 / np.sqrt(2.0 * ess_sq) + sd_bias), numbers
    return numbers


# ---- SPSA under common random numbers -------------------------------------------------
def test_spsa_gradient_matches_autodiff_at_fixed_seeds():
    prior = pdist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    problem = LikelihoodFreeProblem(prior, curved_simulator, torch.tensor([0.7, 1.2, 0.1]))
    kernel = HABC(problem, num_simulations=20)  # seed_refresh 0.1: 10 blocks of 2 seeds
    assert (kernel.num_seed_blocks, kernel.seed_block_size) == (10, 2)
    seeds = kernel.draw_seeds(generator=torch.Generator().manual_seed(3))
    u0 = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    point = u0.clone().requires_grad_(True)
    value, num_nonfinite = kernel.log_synthetic_likelihood(point, seeds)
    (exact,) = torch.autograd.grad(value, point)
    exact, value = exact.numpy(), float(value.detach())
    assert int(num_nonfinite) == 0

    cache: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def log_sl(points, keys):  # the kernel's, memoised: at fixed seeds only 2^3 directions x 2 sides occur
        rows = []
        for p in points:
            key = tuple(p.tolist())
            if key not in cache:
                cache[key] = kernel.log_synthetic_likelihood(p, keys)
            rows.append(cache[key])
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    num_draws = 4000
    generator = torch.Generator().manual_seed(4)
    estimates = [spsa_grad(log_sl, u0, seeds, generator, 1, 1e-4, has_aux=True) for _ in range(num_draws)]
    # the log SL from the perturbed evaluations is exact to O(c^2); no simulation was non-finite
    assert np.allclose([float(e.value) for e in estimates], value, rtol=0, atol=1e-6)
    assert all(int(e.num_finite_pairs) == 1 and int(e.aux) == 0 for e in estimates)
    single = torch.stack([e.grad for e in estimates]).numpy()  # (4000, 3) estimates with R = 1
    # R = 4 is the mean of 4 independent R = 1 estimates
    grads_by_repeats = {1: single, 4: single.reshape(-1, 4, 3).mean(1)}
    standard_errors = {}
    for repeats, grads in grads_by_repeats.items():
        n = len(grads)
        mean, var = grads.mean(0), grads.var(0, ddof=1)
        # unbiased: the mean over the draws within 4 standard errors of autograd
        assert np.all(np.abs(mean - exact) < 4.0 * np.sqrt(var / n)), (repeats, mean, exact)
        # the variance is sum_{j != i} g_j^2 / R (sampling error of a variance: sqrt(2 / n), 4 of them)
        expected = (np.sum(exact**2) - exact**2) / repeats
        assert np.all(np.abs(var / expected - 1.0) < 4.0 * np.sqrt(2.0 / n)), (repeats, var, expected)
        standard_errors[repeats] = np.sqrt(var)
    # standard error ~ 1 / sqrt(R): halved from R = 1 to R = 4 (within the R = 4 variance check's 4 sigma)
    assert np.all(np.abs(standard_errors[1] / standard_errors[4] / 2.0 - 1.0) < 4.0 * np.sqrt(1.0 / 1000))
    # R > 1 inside spsa_grad is that mean: 4 directions from one generator, averaged (uncached evaluations)
    four = spsa_grad(kernel.log_synthetic_likelihood, u0, seeds, torch.Generator().manual_seed(5), 4, 1e-4, True)
    deltas = rademacher(torch.Generator().manual_seed(5), (4, 3), u0)
    at = [
        float(kernel.log_synthetic_likelihood(u, seeds)[0]) for u in torch.cat([u0 + 1e-4 * deltas, u0 - 1e-4 * deltas])
    ]
    slopes = (np.array(at[:4]) - np.array(at[4:])) / 2e-4
    assert np.allclose(four.grad.numpy(), np.mean(slopes[:, None] * deltas.numpy(), axis=0))
    assert int(four.num_finite_pairs) == 4 and int(four.aux) == 0


def test_spsa_in_one_dimension_is_the_central_difference():
    def f(theta, keys):  # batched over points (n, 1) -> (n,)
        return (torch.sin(3.0 * theta) * keys).sum(-1)

    keys = torch.tensor([1.0, 2.0], dtype=F64)
    estimate = spsa_grad(f, torch.tensor([0.4], dtype=F64), keys, torch.Generator().manual_seed(0), 3, 1e-3)
    at = f(torch.tensor([[0.401], [0.399]], dtype=F64), keys)
    central = float(at[0] - at[1]) / 2e-3
    assert np.allclose(estimate.grad.numpy(), central, rtol=1e-12)
    assert int(estimate.num_finite_pairs) == 3 and int(estimate.aux) == 0


@pytest.mark.parametrize("dense", [False, True])
def test_spsa_in_the_metric_perturbs_along_l_delta(dense):
    # with M^-1 = L L^T, SPSA perturbs u along c L Delta and maps the slope back by L^-T: for a fixed generator
    # the estimate is L^-T Delta (f(u + c L Delta) - f(u - c L Delta)) / (2c) plus the prior's gradient
    prior = pdist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    problem = LikelihoodFreeProblem(prior, curved_simulator, torch.tensor([0.7, 1.2, 0.1], dtype=F64))
    kernel = HABC(problem, num_simulations=20, num_spsa_repeats=1, spsa_scale=1e-3)
    seeds = kernel.draw_seeds(generator=torch.Generator().manual_seed(3))
    u0 = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    scales = torch.tensor([0.05, 1.0, 4.0], dtype=F64)
    inverse_mass_matrix = torch.diag(scales**2) + (0.01 if dense else 0.0) * (1.0 - torch.eye(3, dtype=F64))
    metric = metric_factor(inverse_mass_matrix if dense else scales**2)
    factor = metric.numpy() if dense else np.diag(metric.numpy())
    assert np.allclose(factor @ factor.T, inverse_mass_matrix.numpy())
    _, grad, _, failed = kernel.evaluate(u0, seeds, torch.Generator().manual_seed(9), metric)
    delta = rademacher(torch.Generator().manual_seed(9), (1, 3), u0)[0].numpy()
    at = kernel.log_synthetic_likelihood(torch.tensor(u0.numpy() + np.outer([1e-3, -1e-3], factor @ delta)), seeds)[0]
    slope = float(at[0] - at[1]) / 2e-3
    point = u0.clone().requires_grad_(True)
    (prior_grad,) = torch.autograd.grad(problem.log_prior(point[None])[0], point)
    assert not bool(failed)
    assert np.allclose(grad.numpy(), np.linalg.solve(factor.T, slope * delta) + prior_grad.numpy(), rtol=1e-6)


# ---- the SGHMC step -----------------------------------------------------------------------
def test_sghmc_step_on_a_standard_normal():
    step_size, friction, num_chains, num_steps = 0.1, 0.5, 16, 4000
    noise_sd = torch.tensor([0.0, 1.0], dtype=F64)[:, None, None]  # both noise variances in one batch (2, 16, 2)
    generator = torch.Generator().manual_seed(0)

    def grad_fn(x, gen):
        noise = noise_sd * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        zero = torch.zeros(x.shape[:-1], dtype=torch.long)
        return -0.5 * (x * x).sum(-1), -x + noise, zero, zero.bool()

    x0 = torch.zeros(2, num_chains, 2, dtype=F64)
    state = SGHMCState(x0, torch.zeros_like(x0), torch.zeros(2, num_chains, dtype=F64), -x0)
    positions, diverging = [], False
    for _ in range(num_steps):
        state, info = sghmc_step(generator, state, grad_fn, torch.ones(2, dtype=F64), step_size, friction)
        positions.append(state.position)
        diverging = diverging or bool(info.diverging.any())
    assert not diverging
    positions = torch.stack(positions, dim=2).numpy()  # (noise, chains, steps, 2)
    for index, noise_var in enumerate((0.0, 1.0)):
        draws = positions[index][:, 500:]  # (chains, draws, 2)
        heated = 1.0 + step_size * noise_var / (2.0 * friction)
        # the mean 0, the sd sqrt(heated); bias allowance: the leapfrog's O(step_size^2) plus the heating
        # formula's own O(step_size^2) (step_size^2 = 0.01 in variance, 0.005 in sd)
        check_chain(draws, np.zeros(2), np.full(2, np.sqrt(heated)), sd_bias=0.01)
        if noise_var:  # the heating is seen: 5% in variance, outside the sampling error
            assert draws.reshape(-1, 2).var(0).mean() > 1.025


def test_sghmc_step_undoes_a_step_that_leaves_the_reals():
    def grad_fn(x, generator):
        return torch.zeros((), dtype=F64), torch.full_like(x, math.inf), torch.tensor(1), torch.tensor(True)

    state = SGHMCState(
        torch.tensor([0.5, -1.0], dtype=F64),
        torch.tensor([2.0, 0.0], dtype=F64),
        torch.zeros((), dtype=F64),
        torch.tensor([0.1, 0.1], dtype=F64),
    )
    ones = torch.ones(2, dtype=F64)
    new, info = sghmc_step(torch.Generator().manual_seed(0), state, grad_fn, ones, 0.1, 1.0)
    assert bool(info.diverging) and int(info.num_nonfinite) == 1 and bool(info.failed)
    assert torch.equal(new.position, state.position)
    assert bool(torch.isfinite(new.momentum).all()) and not torch.equal(new.momentum, state.momentum)

    # a step from a finite log density to -inf (every simulation failed there) is undone too
    def no_simulation(x, generator):
        return torch.tensor(-math.inf, dtype=F64), -x, torch.tensor(20), torch.tensor(True)

    new, info = sghmc_step(torch.Generator().manual_seed(1), state, no_simulation, ones, 0.1, 1.0)
    assert bool(info.diverging) and torch.equal(new.position, state.position)
    assert float(new.logdensity) == 0.0


# ---- HABC in Pyro's MCMC ----------------------------------------------------------------
def nan_seed_simulator(theta, generator):
    """The Gaussian-mean simulator, NaN for about 20% of the rows (whatever theta): a row's NaN is decided
    by its generator's stream, so by its block seed and its row."""
    x = gaussian_mean_simulator(theta, generator)
    nan = torch.rand(theta.shape[0], generator=generator, dtype=theta.dtype) < 0.2
    return torch.where(nan[:, None], torch.full_like(x, math.nan), x)


class RecordingHABC(HABC):
    """HABC that keeps its state after ``setup`` (the start's seeds) and the seeds of every iteration."""

    def setup(self, warmup_steps, *args, **kwargs):
        super().setup(warmup_steps, *args, **kwargs)
        self.start, self.seeds_by_iteration = self.state, []

    def sample(self, params):
        params = super().sample(params)
        self.seeds_by_iteration.append(self.state.seeds.clone())
        return params


def test_habc_counts_nan_simulations_exactly_and_converts_to_arviz():
    mean, cov = gaussian_posterior()
    sd = np.sqrt(np.diag(cov))
    problem = gaussian_problem(nan_seed_simulator)
    num_sims, repeats, num_steps, warmup, num_samples = 20, 2, 2, 5, 30
    kernel = RecordingHABC(
        problem,
        step_size=0.15,
        num_steps=num_steps,
        num_simulations=num_sims,
        num_spsa_repeats=repeats,
        seed_refresh=0.2,
        inverse_mass_matrix=sd**2,
    )
    assert (kernel.num_seed_blocks, kernel.seed_block_size, kernel.num_refreshed_blocks) == (5, 4, 1)
    pyro.set_rng_seed(0)
    start = {"theta": torch.tensor(mean)}
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, initial_params=start, disable_progbar=True)
    mcmc.run()

    def count_nan(seeds):  # NaN simulations of the block seeds (B,), whatever theta
        theta = torch.zeros(kernel.seed_block_size, 2, dtype=F64)
        rows = [nan_seed_simulator(theta, torch.Generator().manual_seed(s))[:, 0] for s in seeds.tolist()]
        return int(torch.isnan(torch.cat(rows)).sum())

    # exact counts: an iteration refreshes 1 of the 5 blocks, then evaluates (2 + 1) SPSA gradients of 2 R S
    # simulations with its seeds, and every NaN seed is NaN on both sides of every pair
    initial = count_nan(kernel.start.seeds)
    assert kernel.start.num_nonfinite == initial * 2 * repeats
    per_iteration = np.array([count_nan(s) for s in kernel.seeds_by_iteration])  # (35,)
    refreshed = [
        int((a != b).sum())
        for a, b in zip([kernel.start.seeds] + kernel.seeds_by_iteration[:-1], kernel.seeds_by_iteration, strict=True)
    ]
    assert set(refreshed) == {1}  # one block redrawn every iteration
    stats = kernel.get_sample_stats()
    expected = (initial + np.cumsum(per_iteration) * (num_steps + 1)) * 2 * repeats
    assert np.array_equal(stats["num_nonfinite"], expected)
    fraction = per_iteration.mean() / num_sims
    assert 0.1 < fraction < 0.3, fraction  # about 20% of the rows
    iterations = np.arange(1, warmup + num_samples + 1)
    assert np.array_equal(stats["num_simulations"], 2 * repeats * num_sims * (1 + iterations * (num_steps + 1)))
    assert kernel.simulations_per_iteration == 2 * repeats * num_sims * (num_steps + 1)
    assert stats["num_failed_gradients"][-1] == 0 and np.array_equal(stats["warmup"], iterations <= warmup)
    with pytest.warns(Warning, match="non-finite"):
        counts = kernel.check_counts()
    assert counts["num_nonfinite"] == expected[-1]
    with pytest.warns(Warning, match="non-finite"):
        assert kernel.check_counts(mcmc.diagnostics()) == counts  # the same totals from Pyro's diagnostics
    samples = mcmc.get_samples()["theta"]
    assert samples.shape == (num_samples, 2) and bool(torch.isfinite(samples).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = az.from_pyro(mcmc)
        full = from_mcmc(mcmc)
    assert idata.posterior["theta"].shape == (1, num_samples, 2)
    assert idata.sample_stats["diverging"].shape == (1, num_samples)
    lp = full.sample_stats["lp"].values
    assert lp.shape == (1, num_samples) and np.all(np.isfinite(lp))
    assert np.allclose(lp[0], -stats["potential_energy"][warmup:])


def test_no_finite_simulations_fall_back_to_the_prior_gradient():
    def simulator(theta, generator):  # NaN beyond theta_0 = 2.5: the synthetic likelihood is -inf there
        x = gaussian_mean_simulator(theta, generator)
        return torch.where(theta[:, :1] > 2.5, torch.full_like(x, math.nan), x)

    kernel = HABC(gaussian_problem(simulator), num_simulations=20, num_spsa_repeats=3)
    seeds = kernel.draw_seeds(generator=torch.Generator().manual_seed(0))
    u = torch.tensor([6.0, 1.0], dtype=F64)
    logdensity, grad, num_nonfinite, failed = kernel.evaluate(u, seeds, torch.Generator().manual_seed(1))
    assert float(logdensity) == -math.inf and bool(failed) and int(num_nonfinite) == 2 * 3 * 20
    assert np.allclose(grad.numpy(), -u.numpy() / PRIOR_SD**2)  # the prior's gradient alone


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


def test_bad_problem_initial_params_gradient_and_model_arguments(problem):
    with pytest.raises(TypeError, match="problem"):
        HABC(lambda: None)
    with pytest.raises(TypeError, match="inverse_mass_matrix"):
        HABC(problem, inverse_mass_matrix="identity")
    rounding = LikelihoodFreeProblem(
        pdist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1),
        lambda t, g: torch.round(gaussian_mean_simulator(t, g)),
        torch.tensor(Y_GAUSS),
    )
    with pytest.raises(ValueError, match="gradient: 'autodiff'"):
        HABC(rounding, gradient="autodiff")
    kernel = HABC(problem, num_simulations=10)
    for start in (
        {"theta": torch.tensor([1.0, 2.0, 3.0])},
        {"theta": torch.tensor([math.nan, 0.0])},
        {"x": torch.tensor(0.0)},
    ):
        with pytest.raises(ValueError, match="initial_params"):
            MCMC(kernel, num_samples=2, warmup_steps=0, initial_params=start, disable_progbar=True).run()
    with pytest.raises(TypeError, match="model arguments"):
        MCMC(kernel, num_samples=2, warmup_steps=0, disable_progbar=True).run(torch.zeros(3))


# ---- warmup adaptation of the metric ------------------------------------------------------
def test_warmup_adapts_the_metric_to_its_own_warmup_draws():
    # 40 warmup draws: Stan's schedule is a start buffer of int(0.15 * 40) = 6, one window of 30, an end buffer of
    # int(0.1 * 40) = 4: after draw 35 M^-1 is the regularised variance of draws 6..35 (NumPyro's arithmetic, see
    # tests/test_parity_habc.py; the NumPyro twin checks that it reaches the posterior variances), and sampling
    # keeps it
    scale = torch.tensor([0.3, 3.0], dtype=F64)
    prior = pdist.Normal(torch.zeros(2, dtype=F64), 100.0).to_event(1)

    def simulator(theta, generator):
        return theta + scale * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    problem = LikelihoodFreeProblem(prior, simulator, torch.tensor([0.1, -0.5], dtype=F64))
    kernel = HABC(problem, step_size=0.1, num_steps=1, friction=1.0, num_simulations=20, seed_refresh=1.0,
                  gradient="autodiff", adapt_mass_matrix=True)  # fmt: skip
    pyro.set_rng_seed(0)
    kernel.initial_params = {"theta": torch.tensor([0.1, -0.5], dtype=F64)}
    kernel.setup(40)
    draws, metrics = [], []
    for _ in range(45):
        kernel.sample({})
        draws.append(kernel.state.z.numpy().copy())
        metrics.append(kernel.state.inverse_mass_matrix.numpy().copy())
    draws, metrics = np.stack(draws), np.stack(metrics)
    window = draws[6:36]
    expected = 30 / 35 * window.var(0, ddof=1) + 1e-3 * 5 / 35
    assert np.allclose(metrics[:35], 1.0) and np.allclose(metrics[35:], expected, rtol=1e-10)
    assert not np.allclose(expected, 1.0, rtol=0.5)
    fixed = HABC(problem, num_simulations=20, adapt_mass_matrix=False)
    fixed.initial_params = kernel.initial_params
    fixed.setup(40)
    for _ in range(40):
        fixed.sample({})
    assert torch.equal(fixed.state.inverse_mass_matrix, torch.ones(2, dtype=F64))


# ---- slow: the posteriors -----------------------------------------------------------------
def run_chains(kernel: HABC, num_chains: int, warmup: int, num_samples: int, seed: int) -> np.ndarray:
    """``(chains, draws, D)`` constrained draws of ``num_chains`` chains run one after the other."""
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "chains will be drawn sequentially" on a small machine
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, num_chains=num_chains, disable_progbar=True)
        mcmc.run()
    return mcmc, mcmc.get_samples(group_by_chain=True)["theta"].numpy()


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
    mcmc, draws = run_chains(kernel, 2, 200, 2000, 0)
    assert draws.shape == (2, 2000, 2)
    # bias allowance 2% of the sd: S = 100, d = 2 sharpens by up to sqrt(99 / 96) (1.5%); SPSA's gradient
    # noise (V ~ 1 / R = 0.25 whitened) heats the variance by ~ step_size V / (2 C) = 1.25% (0.6% in sd)
    numbers = check_chain(draws, mean, sd, sd_bias=0.02)
    print("HABC", gradient, "gaussian", numbers, "exact", mean, sd)
    assert kernel.check_counts(mcmc.diagnostics())["num_nonfinite"] == 0


@pytest.mark.slow
def test_habc_spsa_exponential_gamma_toy_reaches_the_exact_posterior():
    problem = LikelihoodFreeProblem(
        pdist.Gamma(torch.tensor(0.1, dtype=F64), 0.1), gamma_mean_simulator, torch.tensor(Y_OBS)
    )
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
    mcmc, draws = run_chains(kernel, 4, 200, 2000, 1)
    draws = draws[..., None]
    # bias allowance 1.5% of the sd: S = 100, d = 1 sharpens by up to sqrt(99 / 97) (1%); the statistic
    # is Gaussian to 1 / sqrt(500) (the S = inf synthetic-likelihood posterior is the exact one to 0.5%)
    numbers = check_chain(draws, np.array([EXACT_MEAN]), np.array([EXACT_SD]), sd_bias=0.015)
    print("HABC spsa toy", numbers, "exact", EXACT_MEAN, EXACT_SD)
    assert kernel.check_counts(mcmc.diagnostics())["num_nonfinite"] == 0
