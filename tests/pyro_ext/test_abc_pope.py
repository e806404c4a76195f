"""POPE (Pyro, GPyTorch surrogate) against exact answers, the twin of tests/numpyro_ext/test_abc_pope.py.

* The surrogate's one-sided likelihood (:func:`pyro_ext.infer.abc.gpsabc.surrogate_log_likelihood`)
  is the formula of :func:`pyro_ext.infer.abc.one_sided_log_likelihood`: on simulations whose
  mean and variance are ``f`` and ``sigma^2`` the two agree to rounding.
* A toy with a known feasible region: prior N(0, 1), statistic ``theta + 0.1 z``, target "at most
  -1.5" (prior mass of the feasible region ``theta <= -1.5``: 6.7%).  The optimisation must find
  the region (its incumbent and most of its simulations inside), and the chain must sample
  ``p(theta) Phi((-1.5 - theta) / 0.1)``, whose mean, sd and feasible mass are computed here by
  quadrature on a grid.  Tolerances: ``4 sd / sqrt(ESS)`` for the mean, ``4 / sqrt(2 ESS)`` for the
  relative error of the sd, ``4 sqrt(p (1 - p) / ESS)`` for the feasible mass.  The default run is
  shorter than the NumPyro twin's (10 optimisation rounds, 1500 draws; each round refits the GP).
* Slow: a 2-D "at least" target (statistics ``(theta_1 + theta_2, theta_1 - theta_2) + 0.1 z``,
  target ``>= (1, 0)``) against 2-D quadrature.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.ops.stats import effective_sample_size
from scipy.stats import norm

from pyro_ext.infer.abc import POPE, LikelihoodFreeProblem, one_sided_log_likelihood
from pyro_ext.infer.abc.gpsabc import surrogate_log_likelihood

F64 = torch.float64
NOISE = 0.1
TARGET = -1.5


def toy_problem() -> LikelihoodFreeProblem:
    def simulator(theta, generator):
        return theta + NOISE * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    prior = pdist.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    return LikelihoodFreeProblem(prior, simulator, observed=TARGET)


def toy_posterior() -> tuple[float, float, float]:
    """Mean, sd and feasible mass of p(theta) Phi((y - theta) / noise), by quadrature."""
    grid = np.linspace(-8.0, 4.0, 120_001)
    w = norm.pdf(grid) * norm.cdf((TARGET - grid) / NOISE)
    w /= w.sum()
    mean = float(w @ grid)
    return mean, float(np.sqrt(w @ (grid - mean) ** 2)), float(w[grid <= TARGET].sum())


def ess(x: np.ndarray) -> float:
    return float(effective_sample_size(torch.as_tensor(np.asarray(x, dtype=np.float64))[None]))


@pytest.mark.parametrize("direction", ["below", "above"])
def test_the_surrogate_one_sided_likelihood_is_the_library_formula(direction):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    z = (z - z.mean(0)) / z.std(0, ddof=1)  # exactly mean 0 and unbiased variance 1
    f, sigma = np.array([0.3, -1.0, 2.0]), np.array([0.5, 1.5, 0.2])
    stats = f + sigma * z
    observed, epsilon = np.array([0.1, -0.4, 2.5]), 0.3
    expected = one_sided_log_likelihood(torch.tensor(stats), torch.tensor(observed), epsilon, direction)
    value = surrogate_log_likelihood(
        torch.tensor(f), torch.tensor(sigma**2), torch.tensor(observed), epsilon, direction
    )
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-10)


def test_pope_finds_the_feasible_region_and_samples_the_one_sided_posterior():
    pyro.set_rng_seed(0)
    result = POPE(toy_problem(), direction="below", num_bo_iterations=10, proposal_scale=0.8).run(
        num_samples=1500, num_warmup=200
    )
    # the optimisation: the incumbent is feasible, and so are most of the points it chose
    assert result.info["bo_incumbent_theta"][0] <= TARGET
    assert np.mean(result.info["bo_u"][:, 0] <= TARGET) >= 0.5
    assert result.info["num_bo_simulations"] == 20 * 2 + 10
    # the chain: the one-sided posterior
    draws = result.theta[:, 0]
    mean, sd, feasible = toy_posterior()
    n = ess(draws)
    assert n > 150
    assert abs(np.mean(draws) - mean) < 4 * sd / np.sqrt(n), (np.mean(draws), mean, n)
    assert abs(np.std(draws) / sd - 1) < 4 / np.sqrt(2 * n), (np.std(draws), sd, n)
    assert abs(np.mean(draws <= TARGET) - feasible) < 4 * np.sqrt(feasible * (1 - feasible) / n)
    assert result.algorithm == "POPE" and result.num_nan_simulations == 0
    assert result.num_simulations == result.info["num_simulations_trace"][-1]


@pytest.mark.slow
def test_pope_finds_the_feasible_region_long():
    mean, sd, feasible = toy_posterior()
    for seed in range(2):
        pyro.set_rng_seed(seed)
        result = POPE(toy_problem(), direction="below", num_bo_iterations=15, proposal_scale=0.8).run(
            num_samples=3000, num_warmup=300
        )
        draws = result.theta[:, 0]
        n = ess(draws)
        print(
            f"seed {seed}: mean {np.mean(draws):.4f} (exact {mean:.4f}), sd {np.std(draws):.4f} (exact {sd:.4f}), "
            f"feasible {np.mean(draws <= TARGET):.4f} (exact {feasible:.4f}), ESS {n:.0f}, "
            f"{result.num_simulations} simulations, incumbent {result.info['bo_incumbent_theta']}"
        )
        assert result.info["bo_incumbent_theta"][0] <= TARGET
        assert abs(np.mean(draws) - mean) < 4 * sd / np.sqrt(n)
        assert abs(np.std(draws) / sd - 1) < 4 / np.sqrt(2 * n)


@pytest.mark.slow
def test_pope_two_dimensional_at_least_target():
    target = np.array([1.0, 0.0])

    def simulator(theta, generator):
        noise = NOISE * torch.randn(theta.shape[0], 2, generator=generator, dtype=theta.dtype)
        return torch.stack([theta[:, 0] + theta[:, 1], theta[:, 0] - theta[:, 1]], dim=-1) + noise

    prior = pdist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1)
    problem = LikelihoodFreeProblem(prior, simulator, observed=target)
    g = np.linspace(-5, 5, 801)
    t1, t2 = np.meshgrid(g, g, indexing="ij")
    w = norm.pdf(t1) * norm.pdf(t2) * norm.cdf((t1 + t2 - target[0]) / NOISE) * norm.cdf((t1 - t2 - target[1]) / NOISE)
    w /= w.sum()
    exact_mean = np.array([(w * t1).sum(), (w * t2).sum()])
    exact_sd = np.sqrt(np.array([(w * (t1 - exact_mean[0]) ** 2).sum(), (w * (t2 - exact_mean[1]) ** 2).sum()]))
    for seed in range(2):
        pyro.set_rng_seed(seed)
        result = POPE(problem, direction="above", num_bo_iterations=30, proposal_scale=0.4).run(
            num_samples=6000, num_warmup=500
        )
        n = np.array([ess(result.theta[:, i]) for i in range(2)])
        print(
            f"seed {seed}: mean {result.mean()} (exact {exact_mean}), sd {result.std()} (exact {exact_sd}), "
            f"ESS {n}, {result.num_simulations} simulations, incumbent {result.info['bo_incumbent_theta']}"
        )
        stats = result.info["bo_incumbent_theta"] @ np.array([[1.0, 1.0], [1.0, -1.0]])
        assert np.all(stats >= target - 2 * NOISE)
        assert np.all(np.abs(result.mean() - exact_mean) < 4 * exact_sd / np.sqrt(n))
        assert np.all(np.abs(result.std() / exact_sd - 1) < 4 / np.sqrt(2 * n))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"direction": "sideways"}, "direction"),
        ({"num_candidates": 1}, "num_candidates"),
        ({"kappa": -1.0}, "kappa"),
        ({"num_bo_iterations": -1}, "num_bo_iterations"),
        ({"xi": 0.5}, "xi"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        POPE(toy_problem(), **kwargs)
