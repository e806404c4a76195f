"""Pyro ABC groundwork: LikelihoodFreeProblem and the likelihoods from simulations.

Exact references: the Gaussian log density for a Gaussian simulator (synthetic likelihood), the
NumPyro twins on the same numbers in float64 (likelihoods), the closed-form prior on the unconstrained space,
closed-form log-Jacobians and derivatives for the exponential toy.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch

from pyro_ext.infer.abc import (
    LikelihoodFreeProblem,
    gaussian_kernel_log_likelihood,
    one_sided_log_likelihood,
    synthetic_log_likelihood,
)

OBSERVED_MEAN = 10.086749290513298


def exponential_simulator(lam: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean of 500 Exponential(lam) draws per row of ``lam`` ``(n,)``: reparameterised, so differentiable."""
    e = torch.empty(lam.shape + (500,), dtype=lam.dtype).exponential_(generator=generator)
    return e.mean(-1) / lam


def gamma_prior(dtype=torch.float64):
    return pdist.Gamma(torch.tensor(0.1, dtype=dtype), torch.tensor(0.1, dtype=dtype))


def exponential_problem() -> LikelihoodFreeProblem:
    return LikelihoodFreeProblem(gamma_prior(), exponential_simulator, torch.tensor(OBSERVED_MEAN, dtype=torch.float64))


# ---------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------
def test_distribution_prior_layout_log_prior_and_round_trip():
    problem = exponential_problem()
    assert (problem.dim, problem.stat_dim, problem.names) == (1, 1, ["theta"])
    assert problem.sites == {"theta": ((), 0, 1)}
    np.testing.assert_allclose(problem.observed, [OBSERVED_MEAN])
    u = torch.tensor([[-3.0], [-2.3], [0.5]], dtype=torch.float64)
    lam = torch.exp(u[:, 0])
    # Gamma density of exp(u) times the Jacobian e^u of the exp map
    expected = gamma_prior().log_prob(lam) + u[:, 0]
    torch.testing.assert_close(problem.log_prior(u), expected)
    torch.testing.assert_close(problem.theta(u), lam)
    torch.testing.assert_close(problem.flat_theta(u), lam[:, None])
    torch.testing.assert_close(problem.unconstrain(lam), u)


def test_sample_prior_is_seeded_and_follows_the_prior():
    problem = exponential_problem()
    pyro.set_rng_seed(3)
    a = problem.sample_prior(4000)
    pyro.set_rng_seed(3)
    b = problem.sample_prior(4000)
    assert a.shape == (4000, 1) and a.dtype == torch.float64
    torch.testing.assert_close(a, b)
    # Gamma(0.1, 0.1): P(lambda < 1) = regularised lower gamma P(0.1, 0.1)
    p = float(torch.special.gammainc(torch.tensor(0.1), torch.tensor(0.1)))
    frac = float((torch.exp(a) < 1.0).double().mean())
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / 4000)


def test_simulate_common_random_numbers_and_gradient():
    problem = exponential_problem()
    u = torch.tensor([[-2.0], [-2.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    s1 = problem.simulate(u, torch.Generator().manual_seed(7))
    s2 = problem.simulate(u, torch.Generator().manual_seed(7))
    assert s1.shape == (3, 1)
    torch.testing.assert_close(s1, s2)  # same generator state, same simulations
    assert not torch.equal(s1, problem.simulate(u, torch.Generator().manual_seed(8)))
    # s = mean(E) / exp(u): ds/du = -s, row by row
    (grad,) = torch.autograd.grad(s1.sum(), u)
    torch.testing.assert_close(grad, -s1.detach())


def test_model_prior_dict_theta():
    def prior():
        pyro.sample("sigma", pdist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
        pyro.sample("mu", pdist.Normal(torch.zeros(2, dtype=torch.float64), 2.0).to_event(1))

    def simulator(theta, generator):
        noise = torch.randn(theta["mu"].shape, dtype=theta["mu"].dtype, generator=generator)
        return theta["mu"] + theta["sigma"][:, None] * noise

    problem = LikelihoodFreeProblem(prior, simulator, torch.tensor([0.5, -0.5], dtype=torch.float64))
    # sorted sites: mu (2 columns) then sigma
    assert problem.names == ["mu[0]", "mu[1]", "sigma"] and problem.dim == 3 and problem.stat_dim == 2
    u = torch.tensor([[0.1, -0.2, 0.3], [1.0, 2.0, -1.0]], dtype=torch.float64)
    theta = problem.theta(u)
    torch.testing.assert_close(theta["sigma"], torch.exp(u[:, 2]))
    torch.testing.assert_close(problem.flat_theta(u), torch.cat([u[:, :2], torch.exp(u[:, 2:])], -1))
    expected = (
        pdist.Normal(0.0, 2.0).log_prob(u[:, :2]).sum(-1)
        + pdist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)).log_prob(torch.exp(u[:, 2]))
        + u[:, 2]
    )
    torch.testing.assert_close(problem.log_prior(u), expected)
    torch.testing.assert_close(problem.unconstrain(theta), u)
    assert problem.simulate(u, torch.Generator().manual_seed(0)).shape == (2, 2)


def test_problem_construction_errors():
    obs = torch.tensor(OBSERVED_MEAN, dtype=torch.float64)
    with pytest.raises(ValueError, match="observed: expected 1 summary statistic"):
        LikelihoodFreeProblem(gamma_prior(), exponential_simulator, torch.tensor([1.0, 2.0]))
    normal2 = pdist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="simulator: failed on a prior draw theta of shape \\(3, 2\\)"):
        # the simulator reads three parameters, the prior has two
        LikelihoodFreeProblem(normal2, lambda theta, g: theta[:, 2] + torch.randn(3, generator=g), torch.zeros(1))
    with pytest.raises(ValueError, match="prior: expected a distribution with batch shape \\(\\)"):
        LikelihoodFreeProblem(pdist.Normal(torch.zeros(2), 1.0), lambda t, g: t, torch.zeros(2))
    with pytest.raises(TypeError, match="prior: expected a torch.distributions.Distribution or a Pyro model"):
        LikelihoodFreeProblem(3.0, exponential_simulator, obs)
    with pytest.raises(TypeError, match="simulator: expected a function"):
        LikelihoodFreeProblem(gamma_prior(), None, obs)
    with pytest.raises(TypeError, match="summary: expected a function"):
        LikelihoodFreeProblem(gamma_prior(), exponential_simulator, obs, summary=3)
    with pytest.raises(ValueError, match="summary: expected statistics of shape \\(n, d\\)"):
        # an unbatched simulator: one statistic vector for the whole batch
        LikelihoodFreeProblem(normal2, lambda theta, g: theta.sum(0) + 1.0, torch.zeros(2))
    with pytest.raises(ValueError, match="observed: every statistic must be finite"):
        LikelihoodFreeProblem(gamma_prior(), exponential_simulator, torch.tensor(float("nan")))

    def with_data():
        pyro.sample("x", pdist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        pyro.sample("z", pdist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="prior: a prior model has no observed sites"):
        LikelihoodFreeProblem(with_data, lambda t, g: t["z"], torch.zeros(1))
    problem = exponential_problem()
    with pytest.raises(ValueError, match="u: expected unconstrained parameters of shape \\(n, 1\\)"):
        problem.log_prior(torch.zeros(3))


# ---------------------------------------------------------------------------------------
# Likelihoods from simulations
# ---------------------------------------------------------------------------------------
def test_synthetic_likelihood_is_the_gaussian_log_density():
    """A Gaussian simulator x = A theta + L z: the synthetic likelihood at S simulations is the exact
    N(y; A theta, L L^T) log density up to the Monte Carlo error of the fitted mean and covariance."""
    torch.manual_seed(0)
    d, S = 3, 40_000
    A = torch.tensor([[1.0, 0.5], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    thetas = torch.tensor([[0.0, 0.0], [0.5, -0.3], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64)
    z = torch.randn(S, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stats = (thetas @ A.T)[:, None, :] + z @ L.T  # (3, S, d): common random numbers across theta
    value = synthetic_log_likelihood(stats, y)
    exact = torch.distributions.MultivariateNormal(thetas @ A.T, scale_tril=L).log_prob(y)
    # error sd: mean error ~ sqrt(q/S), covariance error ~ sqrt((d/2 + q^2/2)/S), q the Mahalanobis distance^2
    q = torch.linalg.solve_triangular(L, (y - thetas @ A.T)[..., None], upper=False)[..., 0].pow(2).sum(-1)
    tolerance = 5 * torch.sqrt((q + 0.5 * d + 0.5 * q**2) / S)
    assert value.shape == (3,)
    assert torch.all((value - exact).abs() < tolerance), (value, exact, tolerance)
    # batched over theta = one theta at a time; the ridge adds epsilon^2 I to the fitted covariance
    torch.testing.assert_close(value[1], synthetic_log_likelihood(stats[1], y))
    eps = 0.3
    ridge = torch.distributions.MultivariateNormal(
        stats[0].mean(0), covariance_matrix=torch.cov(stats[0].T) + eps**2 * torch.eye(d, dtype=torch.float64)
    ).log_prob(y)
    torch.testing.assert_close(synthetic_log_likelihood(stats[0], y, eps), ridge)


def test_likelihoods_match_numpyro():
    """The three likelihoods on the same numbers as the NumPyro twins (float64), non-finite rows included."""
    import jax
    import jax.numpy as jnp

    from numpyro_ext.infer.abc import likelihoods as jl

    if jnp.zeros(()).dtype != jnp.float64:  # tests/conftest.py turns x64 on
        pytest.skip("float64 agreement needs JAX's x64 mode")
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(4, 12, 3)) * np.array([1.0, 2.0, 0.5])
    stats[0, 3, 1] = np.nan
    stats[2, 5, 0] = np.inf
    stats[3, 4:, :] = np.nan
    stats[3, :2, 2] = np.nan  # rows 2 and 3 left: enough with a ridge (2), too few without (d + 1 = 4)
    observed = np.array([0.2, -0.5, 0.1])
    t, o = torch.from_numpy(stats), torch.from_numpy(observed)
    js, jo = jnp.asarray(stats), jnp.asarray(observed)

    cases = {f"synthetic {eps}": (jl.synthetic_log_likelihood, eps) for eps in (0.0, 0.4)}
    cases |= {f"{d} {eps}": (jl.one_sided_log_likelihood, eps, d) for eps in (0.0, 0.4) for d in ("below", "above")}
    cases["kernel"] = (jl.gaussian_kernel_log_likelihood, 0.7)
    # one compiled program for every case (a compilation per call would cost seconds)
    theirs = jax.jit(lambda x: {k: jax.vmap(lambda s, c=c: c[0](s, jo, *c[1:]))(x) for k, c in cases.items()})(js)
    for eps in (0.0, 0.4):
        ours = synthetic_log_likelihood(t, o, eps).numpy()
        np.testing.assert_allclose(ours, np.asarray(theirs[f"synthetic {eps}"]), rtol=1e-12)
        for direction in ("below", "above"):
            ours = one_sided_log_likelihood(t, o, eps, direction).numpy()
            # log Phi far in the tail: the two libraries' log_ndtr agree to ~1e-11
            np.testing.assert_allclose(ours, np.asarray(theirs[f"{direction} {eps}"]), rtol=1e-10)
    assert synthetic_log_likelihood(t, o)[3] == -math.inf  # too few finite rows without a ridge
    assert np.isfinite(synthetic_log_likelihood(t, o, 0.4)[3])
    ours = gaussian_kernel_log_likelihood(t, o, 0.7).numpy()
    np.testing.assert_allclose(ours, np.asarray(theirs["kernel"]), rtol=1e-12)
    with pytest.raises(ValueError, match="direction: expected one of"):
        one_sided_log_likelihood(t, o, direction="sideways")


def test_likelihoods_are_differentiable():
    """The synthetic likelihood of reparameterised simulations: d/dmu of log N(y; mu + mean(z), cov(z))
    is Sigma_hat^{-1} (y - mu_hat), the fitted Gaussian's score."""
    z = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu = torch.tensor([0.3, -0.1], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.5, 0.2], dtype=torch.float64)
    (grad,) = torch.autograd.grad(synthetic_log_likelihood(mu + z, y), mu)
    expected = torch.linalg.solve(torch.cov(z.T), y - mu.detach() - z.mean(0))
    torch.testing.assert_close(grad, expected)
