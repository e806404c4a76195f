"""Pyro ABC methods: rejection ABC, SMC-ABC and OMC against exact answers.

Exponential-gamma toy (issue 21): prior Gamma(0.1, 0.1) on the rate lambda, the statistic the mean
of 500 Exponential(lambda) draws, observed 10.086749290513298; exact posterior Gamma(500.1, 5043.47)
(mean 0.099158, sd 0.004434).  The statistic given lambda is Gamma(500, 500 lambda), so the ABC
posterior of a uniform kernel of half-width eps on it, pi(lambda) P(|xbar - y| <= eps | lambda), is
known by quadrature: rejection ABC and SMC-ABC must match it within Monte Carlo error, and it tends
to the exact posterior as eps shrinks.  OMC is exact here: its Jacobian-weighted draws follow the
exact posterior.  Multivariate Gaussian mean (D = 3): closed-form Gaussian posterior; d = 5 > D = 3
linear Gaussian: closed form, and each seed at its least-squares minimum; tanh(theta) + noise: exactly
the unreachable seeds are discarded, the rest match quadrature.  Slow OMC: the toy at 20000 seeds, d > D at 10000.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch

from adapters.diagnostics import ReliabilityWarning
from pyro_ext.infer.abc import LikelihoodFreeProblem
from pyro_ext.infer.abc.omc import OMC, autodiff_evaluate, omc_optimize
from pyro_ext.infer.abc.rejection import RejectionABC, new_generator, simulate_in_batches
from pyro_ext.infer.abc.smc_abc import SMCABC

Y = 10.086749290513298
N_DRAWS = 500
EXACT_SHAPE, EXACT_RATE = 500.1, 0.1 + N_DRAWS * Y  # 5043.47
EXACT_MEAN, EXACT_SD = EXACT_SHAPE / EXACT_RATE, math.sqrt(EXACT_SHAPE) / EXACT_RATE


def exponential_simulator(lam: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean of 500 Exponential(lam) draws per row (reparameterised: differentiable in lam)."""
    e = torch.empty(lam.shape + (N_DRAWS,), dtype=lam.dtype).exponential_(generator=generator)
    return e.mean(-1) / lam


def nan_above_half(lam: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The toy simulator, failing (NaN) for lambda > 0.5."""
    x = exponential_simulator(lam, generator)
    return torch.where(lam > 0.5, torch.full_like(x, math.nan), x)


def toy_problem(simulator=exponential_simulator) -> LikelihoodFreeProblem:
    prior = pdist.Gamma(torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    return LikelihoodFreeProblem(prior, simulator, torch.tensor(Y, dtype=torch.float64))


def abc_posterior_moments(epsilon: float) -> tuple[float, float]:
    """Mean and sd of pi(lambda) P(|xbar - y| <= epsilon | lambda), xbar ~ Gamma(500, 500 lambda), by quadrature."""
    lam = torch.linspace(0.04, 0.18, 40_001, dtype=torch.float64)
    shape = torch.tensor(float(N_DRAWS), dtype=torch.float64)
    inside = torch.special.gammainc(shape, N_DRAWS * lam * (Y + epsilon)) - torch.special.gammainc(
        shape, N_DRAWS * lam * (Y - epsilon)
    )
    prior = pdist.Gamma(torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    w = torch.exp(prior.log_prob(lam)) * inside
    w = w / w.sum()
    mean = float((w * lam).sum())
    return mean, float(torch.sqrt((w * (lam - mean) ** 2).sum()))


def weighted_moments(result) -> tuple[float, float, float]:
    return float(result.mean()[0]), float(result.std()[0]), result.ess


def test_abc_posterior_quadrature_tends_to_the_exact_posterior():
    """The reference the rejection/SMC-ABC tests use: at a small tolerance it is the exact Gamma posterior."""
    mean, sd = abc_posterior_moments(0.02)
    assert abs(mean - EXACT_MEAN) < 1e-3 * EXACT_SD and abs(sd / EXACT_SD - 1) < 1e-3
    assert abc_posterior_moments(0.5)[1] > 1.1 * EXACT_SD  # a wide kernel inflates it


# ---------------------------------------------------------------------------------------
# Rejection ABC
# ---------------------------------------------------------------------------------------
def check_rejection(num_simulations: int, wide: float, narrow: float, seed: int) -> None:
    """One run at the tolerance ``wide``: its draws follow pi_wide (quadrature); the draws within ``narrow``
    (what a run at ``narrow`` keeps from the same simulations) are within Monte Carlo error of the exact
    posterior, and closer to it in sd than the wide ones."""
    pyro.set_rng_seed(seed)
    result = RejectionABC(toy_problem(), num_simulations=num_simulations, epsilon=wide, scale=None).run()
    assert result.num_simulations == num_simulations and result.num_nan_simulations == 0
    assert np.all(result.distances <= wide) and np.all(result.log_weights == 0)
    lam = result.theta[:, 0]
    mean, sd = abc_posterior_moments(wide)
    n = len(lam)
    assert abs(lam.mean() - mean) < 4 * sd / math.sqrt(n)
    assert abs(lam.std() / sd - 1) < 4 / math.sqrt(2 * n)
    close = lam[result.distances <= narrow]
    n_close = len(close)
    mean, sd = abc_posterior_moments(narrow)  # within a few percent of the exact posterior
    assert abs(close.mean() - EXACT_MEAN) < 4 * EXACT_SD / math.sqrt(n_close) + abs(mean - EXACT_MEAN)
    assert abs(close.std() / EXACT_SD - 1) < 4 / math.sqrt(2 * n_close) + abs(sd / EXACT_SD - 1)
    assert abs(close.std() - EXACT_SD) < abs(lam.std() - EXACT_SD)


def test_rejection_approaches_the_posterior_as_epsilon_shrinks():
    check_rejection(100_000, wide=0.5, narrow=0.15, seed=0)


@pytest.mark.slow
def test_rejection_approaches_the_posterior_slow():
    check_rejection(2_000_000, wide=0.5, narrow=0.05, seed=10)


def test_rejection_mad_scale_and_nearest_draws():
    """``scale="mad"`` divides the distance by the prior predictive's MAD: the same accepted set as the
    unscaled run at epsilon * MAD; num_samples keeps the closest ones, in order."""
    problem = toy_problem()
    pyro.set_rng_seed(5)
    nearest = RejectionABC(problem, num_simulations=10_000, num_samples=50).run()
    mad = float(nearest.info["scale"][0])
    pyro.set_rng_seed(5)  # the run's prior draws, then its simulations' generator
    u = problem.sample_prior(10_000)
    stats = simulate_in_batches(problem, u, new_generator(), 10_000)[:, 0].numpy()
    assert mad == pytest.approx(np.median(np.abs(stats - np.median(stats))), rel=1e-12)
    assert len(nearest.theta) == 50 and np.all(np.diff(nearest.distances) >= 0)
    pyro.set_rng_seed(5)
    unscaled = RejectionABC(
        problem, num_simulations=10_000, epsilon=nearest.info["epsilon"] * mad * (1 + 1e-9), scale=None
    ).run()
    np.testing.assert_array_equal(np.sort(unscaled.theta[:, 0]), np.sort(nearest.theta[:, 0]))
    np.testing.assert_allclose(np.sort(unscaled.distances), np.sort(nearest.distances) * mad, rtol=1e-9)


# ---------------------------------------------------------------------------------------
# SMC-ABC
# ---------------------------------------------------------------------------------------
def check_smc_abc(num_simulations: int, max_epsilon: float, seed: int) -> None:
    """The last population is an importance sample of pi_eps at its tolerance eps (scaled by the MAD):
    its weighted moments match the quadrature within Monte Carlo error, and eps shrank below
    ``max_epsilon``, where pi_eps is within a few percent of the exact posterior."""
    pyro.set_rng_seed(seed)
    result = SMCABC(toy_problem(), num_particles=1000, num_simulations=num_simulations).run()
    info = result.info
    epsilon = info["epsilon"] * float(info["scale"][0])
    mean, sd = abc_posterior_moments(epsilon)
    est_mean, est_sd, ess = weighted_moments(result)
    assert info["num_populations"] >= 4 and np.all(np.diff(info["epsilon_schedule"]) < 0)
    assert result.num_simulations <= num_simulations and ess > 300
    assert epsilon < max_epsilon and np.all(result.distances <= info["epsilon"])
    assert abs(est_mean - mean) < 5 * sd / math.sqrt(ess)
    assert abs(est_sd / sd - 1) < 5 / math.sqrt(2 * ess)
    assert abs(est_mean - EXACT_MEAN) < 5 * sd / math.sqrt(ess) + abs(mean - EXACT_MEAN)


def test_smc_abc_matches_the_abc_posterior_at_its_tolerance():
    check_smc_abc(30_000, max_epsilon=0.6, seed=1)


@pytest.mark.slow
def test_smc_abc_matches_the_abc_posterior_slow():
    check_smc_abc(300_000, max_epsilon=0.15, seed=11)


# ---------------------------------------------------------------------------------------
# OMC
# ---------------------------------------------------------------------------------------
def check_omc_toy(num_seeds: int, seed: int, num_steps: int = 100):
    """Each seed solves xbar(lambda) = y exactly (lambda* = Ebar / y); J = d xbar / d log(lambda) = -y there,
    so |det J| = y; the weighted draws follow Gamma(500.1, 5043.47), the prior alone Gamma(499.1, 5043.47).
    No seed is lost: the trust region keeps starts far in the prior's tails (lambda_0 = 75, or 1e-30)
    where exp(u) is representable, so every simulation is finite and every seed reaches y."""
    pyro.set_rng_seed(seed)
    result = OMC(toy_problem(), num_seeds=num_seeds, num_steps=num_steps, chunk_size=min(num_seeds, 1000)).run()
    assert not result.warnings and result.num_nan_simulations == 0 and result.info["num_discarded"] == 0
    assert len(result.theta) == num_seeds and np.max(result.distances) < 1e-9 * Y
    np.testing.assert_allclose(result.info["half_log_det"], math.log(Y), rtol=1e-9)
    mean, sd, ess = weighted_moments(result)
    assert ess > 0.99 * num_seeds  # weights lambda^0.1 e^(-0.1 lambda): nearly equal
    assert abs(mean - EXACT_MEAN) < 4 * EXACT_SD / math.sqrt(ess)
    assert abs(sd / EXACT_SD - 1) < 4 / math.sqrt(2 * ess)
    # without the Jacobian: on the same draws (common random numbers) the means differ by 1 / rate, to
    # the relative error of a variance estimate, whatever each mean's Monte Carlo error
    lam = result.theta[:, 0]
    log_prior = toy_problem().prior.log_prob(torch.as_tensor(lam)).numpy()  # of lambda, not of u = log(lambda)
    w = np.exp(log_prior - log_prior.max())
    mean_no_jacobian = float(w @ lam / w.sum())
    np.testing.assert_allclose(mean - mean_no_jacobian, 1.0 / EXACT_RATE, rtol=4 * math.sqrt(2 / ess))
    # an LM evaluation is one simulation (autodiff)
    assert result.num_simulations == int(result.info["num_iterations"].sum()) + num_seeds
    return result, (mean - EXACT_MEAN) / (EXACT_SD / math.sqrt(ess)), (sd / EXACT_SD - 1) * math.sqrt(2 * ess)


def test_omc_reproduces_the_exact_posterior():
    check_omc_toy(1000, seed=2)


@pytest.mark.slow
def test_omc_reproduces_the_exact_posterior_slow():
    # 1 in ~12000 prior draws is below 1e-40, where log(lambda) climbs by about 1 per step: 200 steps
    check_omc_toy(20_000, seed=12, num_steps=200)


def test_omc_trust_region_from_far_starts():
    """Starts at lambda = 75 (x = 0.13, where LM without a radius overshoots to exp(-756) = 0), 1e-30 and
    1: the radius max(1, |u0|) keeps every simulation finite and each row reaches its solution Ebar / y."""
    u0 = torch.log(torch.tensor([[75.0], [1e-30], [1.0]], dtype=torch.float64))
    observed = torch.tensor([Y], dtype=torch.float64)
    problem = toy_problem()
    state = omc_optimize(
        u0, autodiff_evaluate(lambda u: problem.simulate(u, torch.Generator().manual_seed(3)) - observed), 100
    )
    e_bar = problem.simulate(torch.zeros(3, 1, dtype=torch.float64), torch.Generator().manual_seed(3))  # lambda = 1
    np.testing.assert_allclose(torch.exp(state.u).numpy(), e_bar.numpy() / Y, rtol=1e-12)
    assert torch.all(state.num_nan == 0) and torch.all(state.num_iterations < 100)
    assert torch.all(state.radius > 0) and torch.all(state.done)


def test_omc_finite_differences_match_autodiff():
    """Same seed and chunk, central differences: the same solutions and weights to FD accuracy."""
    pyro.set_rng_seed(2)
    ad = OMC(toy_problem(), num_seeds=128).run()
    pyro.set_rng_seed(2)
    fd = OMC(toy_problem(), num_seeds=128, gradients="finite_differences").run()
    np.testing.assert_allclose(fd.theta, ad.theta, rtol=1e-7)
    np.testing.assert_allclose(fd.log_weights, ad.log_weights, atol=1e-6)
    assert fd.num_simulations == 3 * int(fd.info["num_iterations"].sum() + 128)


def gaussian_posterior(prior_var: float, a: torch.Tensor, noise_cov: torch.Tensor, y: torch.Tensor):
    """Mean and sd of theta ~ N(0, prior_var I), y | theta ~ N(a theta, noise_cov)."""
    precision = torch.eye(a.shape[1], dtype=a.dtype) / prior_var + a.T @ torch.linalg.solve(noise_cov, a)
    cov = torch.linalg.inv(precision)
    return (cov @ a.T @ torch.linalg.solve(noise_cov, y)).numpy(), torch.sqrt(torch.diagonal(cov)).numpy()


def test_omc_gaussian_mean_in_three_dimensions():
    """Prior N(0, 4 I), statistic A theta + the mean of n draws of N(0, S): J = A and the posterior is
    Gaussian with precision I/4 + n A^T S^-1 A."""
    dim, n = 3, 10
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.5, -0.3], [0.2, 0.0, 0.8]], dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.2, 0.3, 0.7]], dtype=torch.float64)
    y = torch.tensor([0.8, -0.4, 1.1], dtype=torch.float64)

    def simulator(theta, generator):
        z = torch.randn(theta.shape[0], n, dim, dtype=theta.dtype, generator=generator)
        return theta @ A.T + (z @ L.T).mean(1)

    prior = pdist.Normal(torch.zeros(dim, dtype=torch.float64), 2.0).to_event(1)
    problem = LikelihoodFreeProblem(prior, simulator, y)
    pyro.set_rng_seed(4)
    result = OMC(problem, num_seeds=2000, chunk_size=500).run()
    mean, sd = gaussian_posterior(4.0, A, L @ L.T / n, y)
    np.testing.assert_allclose(result.info["half_log_det"], math.log(abs(float(torch.linalg.det(A)))), rtol=1e-8)
    ess = result.ess
    assert len(result.theta) == 2000 and ess > 1000
    assert np.all(np.abs(result.mean() - mean) < 4 * sd / math.sqrt(ess))
    assert np.all(np.abs(result.std() / sd - 1) < 4 / math.sqrt(2 * ess))


A_TALL = torch.tensor(
    [[1.0, 0.5, 0.0], [0.0, 1.0, -0.7], [0.3, 0.0, 1.2], [1.0, 1.0, 1.0], [-0.5, 0.8, 0.2]], dtype=torch.float64
)


def linear_tall(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """d = 5 > D = 3: A theta + 0.8 * the mean of 10 standard normals per statistic (isotropic noise)."""
    z = torch.randn(theta.shape[0], 10, 5, dtype=theta.dtype, generator=generator)
    return theta @ A_TALL.T + 0.8 * z.mean(1)


def check_omc_tall(num_seeds: int, seed: int) -> None:
    """d > D: each seed's solution is its least-squares one, J^T r = A^T r = 0 to rounding (the ftol stop
    takes the last step instead of refusing it until the radius collapses sqrt(eps) short); with isotropic
    Gaussian noise the Jacobian weights are exact (closed-form posterior)."""
    y = torch.tensor([1.0, -0.5, 2.0, 1.5, 0.3], dtype=torch.float64)
    problem = LikelihoodFreeProblem(pdist.Normal(torch.zeros(3, dtype=torch.float64), 2.0).to_event(1), linear_tall, y)
    pyro.set_rng_seed(seed)
    result = OMC(problem, num_seeds=num_seeds, chunk_size=min(num_seeds, 1000)).run()
    info = result.info
    assert math.isinf(info["residual_threshold"]) and info["num_discarded"] == 0 and not result.warnings
    # without the ftol stop, 1% of the seeds stop with |A^T r| above 3e-9 (seed 1: 99% quantile 3.7e-9, 2.5e-12
    # with it); a rare seed at |r| << |y| stops at ~1e-9 when rounding of r (at the scale of y) puts the
    # actual change of |r|^2 above 16 eps |r|^2 once, the radius collapses and the next step is level
    gradient = np.abs(info["residuals"] @ A_TALL.numpy()).max(-1)
    assert np.quantile(gradient, 0.99) < 1e-11 and np.max(gradient) < 2e-9
    assert np.all(info["num_iterations"] < 20)  # stopped by the ftol test, not by num_steps
    np.testing.assert_allclose(info["half_log_det"], 0.5 * math.log(float(torch.linalg.det(A_TALL.T @ A_TALL))))
    mean, sd = gaussian_posterior(4.0, A_TALL, 0.8**2 / 10 * torch.eye(5, dtype=torch.float64), y)
    ess = result.ess
    assert ess > 0.99 * num_seeds  # J = A: the weights are the prior's
    assert np.all(np.abs(result.mean() - mean) < 4 * sd / math.sqrt(ess))
    assert np.all(np.abs(result.std() / sd - 1) < 4 / math.sqrt(2 * ess))


def test_omc_least_squares_minimum_when_d_exceeds_D():
    check_omc_tall(1000, seed=1)


@pytest.mark.slow
def test_omc_least_squares_minimum_when_d_exceeds_D_slow():
    check_omc_tall(10_000, seed=11)


def test_omc_jacobian_determinant_in_three_dimensions():
    """s = A (exp(theta) + mean of n N(0, sigma^2 I) draws): J = A diag(exp(theta)) changes with theta, and
    the posterior factorises in A^-1 y: p(theta_k | y) ∝ N(theta_k; 0, 1) N((A^-1 y)_k; exp(theta_k), sigma^2 / n),
    known by quadrature per coordinate."""
    dim, n, sigma = 3, 10, 0.3
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.5, -0.3], [0.2, 0.0, 0.8]], dtype=torch.float64)
    target = torch.tensor([1.2, 0.7, 2.0], dtype=torch.float64)  # A^-1 y

    def simulator(theta, generator):
        z = torch.randn(theta.shape[0], n, dim, dtype=theta.dtype, generator=generator)
        return (torch.exp(theta) + sigma * z.mean(1)) @ A.T

    prior = pdist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)
    problem = LikelihoodFreeProblem(prior, simulator, A @ target)
    pyro.set_rng_seed(8)
    result = OMC(problem, num_seeds=2000, chunk_size=1000).run()
    kept = result.info["kept"]
    expected = math.log(abs(float(torch.linalg.det(A)))) + result.info["u"][kept].sum(-1)
    np.testing.assert_allclose(result.info["half_log_det"][kept], expected, rtol=1e-8)
    grid = torch.linspace(-3.0, 2.0, 20_001, dtype=torch.float64)[:, None]
    log_post = -0.5 * grid**2 - 0.5 * n * (target - torch.exp(grid)) ** 2 / sigma**2
    w = torch.softmax(log_post, dim=0)
    mean = (w * grid).sum(0)
    sd = torch.sqrt((w * (grid - mean) ** 2).sum(0)).numpy()
    ess = result.ess
    # the trust region keeps every seed off the plateau exp(theta_k) -> 0 (without it some overshoot there)
    assert result.info["num_discarded"] == 0 and result.num_nan_simulations == 0 and ess > 1000
    assert np.all(np.abs(result.mean() - mean.numpy()) < 4 * sd / math.sqrt(ess))
    assert np.all(np.abs(result.std() / sd - 1) < 5 / math.sqrt(2 * ess))


def tanh_noisy(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """tanh(theta) + 0.5 e: y = 0.8 is out of reach when 0.8 - 0.5 e is outside (-1, 1)."""
    return torch.tanh(theta) + 0.5 * torch.randn(theta.shape, dtype=theta.dtype, generator=generator)


def test_omc_residual_threshold_discards_unreachable_observations():
    """Exactly the seeds without a solution of tanh(theta) = 0.8 - 0.5 e are discarded (the trust region
    keeps a reachable seed out of tanh's flat tails, where a step of |r| / |J| strands it), and the kept
    ones give the exact posterior N(theta; 0, 1) N(0.8; tanh(theta), 0.25) (quadrature)."""
    y, scale = 0.8, 0.5
    problem = LikelihoodFreeProblem(pdist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0), tanh_noisy, y)
    pyro.set_rng_seed(3)
    with pytest.warns(ReliabilityWarning, match="discarded"):
        result = OMC(problem, num_seeds=2000, residual_threshold=1e-6, chunk_size=1000).run()
    info = result.info
    theta = info["u"][:, 0]
    target = y - (info["residuals"][:, 0] + y - np.tanh(theta))  # 0.8 - 0.5 e, from each seed's end point
    clear = np.abs(np.abs(target) - 1.0) > 1e-4
    unreachable = np.abs(target) >= 1.0
    np.testing.assert_array_equal(~info["kept"][clear], unreachable[clear])
    assert abs(unreachable.mean() - 0.3447) < 4 * math.sqrt(0.3447 * 0.6553 / 2000)
    assert result.num_nan_simulations == 0 and info["num_nonfinite"] == 0
    grid = np.linspace(-12.0, 12.0, 48001)
    log_post = -0.5 * grid**2 - 0.5 * ((y - np.tanh(grid)) / scale) ** 2
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    exact_mean = post @ grid
    exact_sd = math.sqrt(post @ (grid - exact_mean) ** 2)
    mean, sd, ess = weighted_moments(result)
    assert abs(mean - exact_mean) < 4 * exact_sd / math.sqrt(ess)
    assert abs(sd / exact_sd - 1) < 4 / math.sqrt(2 * ess)


class _InOrder:
    """An engine with the executor protocol OMC uses (``adapters.sweep``'s ``map_function``), items in reverse."""

    def map_function(self, function, items):
        for index in reversed(range(len(items))):
            yield index, function(items[index])


def test_omc_executor_and_store(tmp_path):
    """Chunks are pure functions of (run seed, start): an engine that runs them out of order gives the
    in-process numbers; a store keeps finished chunks and a rerun loads them (a new threshold reuses them)."""
    problem = toy_problem()
    pyro.set_rng_seed(9)
    here = OMC(problem, num_seeds=100, chunk_size=32).run()
    pyro.set_rng_seed(9)
    engine = OMC(problem, num_seeds=100, chunk_size=32).run(executor=_InOrder(), store=tmp_path)
    np.testing.assert_array_equal(engine.theta, here.theta)
    np.testing.assert_array_equal(engine.log_weights, here.log_weights)
    assert engine.info["num_chunks_computed"] == 4 and engine.num_simulations == here.num_simulations
    pyro.set_rng_seed(9)
    loaded = OMC(problem, num_seeds=100, chunk_size=32, residual_threshold=1e-9).run(store=tmp_path)
    assert loaded.info["num_chunks_loaded"] == 4 and loaded.info["num_chunks_computed"] == 0
    np.testing.assert_array_equal(loaded.info["u"], here.info["u"])
    assert loaded.info["num_above_threshold"] == int((here.distances > 1e-9).sum())


def test_omc_store_must_be_a_folder(tmp_path):
    omc = OMC(toy_problem(), num_seeds=4)
    with pytest.raises(TypeError, match="store: expected None or a folder"):
        omc.run(store=3)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="store: expected a folder .* got the file"):
        omc.run(store=tmp_path / "a_file")


# ---------------------------------------------------------------------------------------
# Non-finite simulations, bad input, seeds
# ---------------------------------------------------------------------------------------
def test_nan_simulations_are_counted_and_rejected():
    problem = toy_problem(nan_above_half)
    pyro.set_rng_seed(6)
    expected = int((torch.exp(problem.sample_prior(20_000)) > 0.5).sum())
    assert expected > 1000
    pyro.set_rng_seed(6)
    with pytest.warns(ReliabilityWarning, match="RejectionABC: .* simulations .* gave non-finite summary statistics"):
        rejection = RejectionABC(problem, num_simulations=20_000, num_samples=100).run()
    assert rejection.num_nan_simulations == expected and np.all(rejection.theta <= 0.5)
    assert np.all(np.isfinite(rejection.distances))
    pyro.set_rng_seed(6)
    with pytest.warns(ReliabilityWarning, match="SMCABC: .* non-finite"):
        smc = SMCABC(problem, num_particles=200, num_simulations=3000).run()
    assert smc.num_nan_simulations > 0 and np.all(smc.theta <= 0.5) and np.all(np.isfinite(smc.log_weights))
    pyro.set_rng_seed(6)
    with pytest.warns(ReliabilityWarning, match="OMC: .* seeds .* were discarded"):
        omc = OMC(problem, num_seeds=256).run()
    # a seed whose prior draw is above 0.5 fails at its first simulation
    assert omc.info["num_nonfinite"] > 0 and omc.num_nan_simulations >= omc.info["num_nonfinite"]
    assert len(omc.theta) == 256 - omc.info["num_discarded"] and np.all(omc.theta <= 0.5)


def test_bad_input_is_named():
    problem = toy_problem()
    with pytest.raises(ValueError, match="epsilon: expected a number > 0"):
        RejectionABC(problem, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon: expected a number > 0"):
        RejectionABC(problem, epsilon=-1.0)
    with pytest.raises(ValueError, match="give exactly one of num_samples, quantile and epsilon"):
        RejectionABC(problem, num_samples=10, epsilon=1.0)
    with pytest.raises(ValueError, match="quantile: expected a fraction"):
        RejectionABC(problem, quantile=1.5)
    with pytest.raises(ValueError, match="num_samples: expected at most num_simulations"):
        RejectionABC(problem, num_simulations=10, num_samples=11)
    with pytest.raises(ValueError, match="scale: expected shape \\(1,\\)"):
        RejectionABC(problem, scale=[1.0, 2.0])
    with pytest.raises(TypeError, match="problem: RejectionABC expected a LikelihoodFreeProblem"):
        RejectionABC("toy")
    with pytest.raises(ValueError, match="alpha"):
        SMCABC(problem, alpha=1.5)
    with pytest.raises(ValueError, match="num_particles: expected at least 2"):
        SMCABC(problem, num_particles=1)
    with pytest.raises(ValueError, match="num_simulations: the budget must cover"):
        SMCABC(problem, num_particles=100, num_simulations=50)
    with pytest.raises(ValueError, match="residual_threshold: expected a number > 0"):
        OMC(problem, residual_threshold=0.0)
    with pytest.raises(ValueError, match="gradients"):
        OMC(problem, gradients="symbolic")
    with pytest.raises(TypeError, match="executor: expected None or an engine"):
        OMC(problem, num_seeds=4).run(executor=object())
    two = pdist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    one_stat = LikelihoodFreeProblem(two, lambda t, g: t.sum(-1), torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="OMC needs at least as many summary statistics as parameters"):
        OMC(one_stat)


def test_same_seed_same_result():
    problem = toy_problem()
    runs = []
    for seed in (3, 3, 4):
        pyro.set_rng_seed(seed)
        runs.append(
            (
                RejectionABC(problem, num_simulations=2000, num_samples=20).run().theta,
                SMCABC(problem, num_particles=100, num_simulations=1000).run().theta,
                OMC(problem, num_seeds=16).run().theta,
            )
        )
    for a, b, c in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
