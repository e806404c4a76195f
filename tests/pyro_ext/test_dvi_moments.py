"""DVI moment propagation (Pyro/torch core) against Monte Carlo and quadrature.

Ground truth: Monte Carlo with 2e5 draws (fixed seeds; each check allows ``Z_MAX`` standard errors of the Monte
Carlo estimate, measured from the draws) and, for the ReLU covariance, the exact double integral (R3) of
:mod:`pyro_ext.infer.dvi.moments` by Gauss-Legendre quadrature.  The linear layer and the diagonal ReLU moments
are exact; the off-diagonal ReLU covariance is the paper's approximation (R4), at most ``RELU_COV_BOUND``
``sigma_j sigma_l`` off (0.0101 measured) over ``z`` in ``[-4, 4]^2``, ``|rho| <= 0.99``.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from pyro_ext.infer.dvi.moments import (
    GaussianMoments,
    linear_certain_moments,
    linear_moments,
    relu_correlation_term,
    relu_mean_var,
    relu_moments,
    standard_normal_pdf,
)

Z_MAX = 4.5
NUM_DRAWS = 200_000
# The measured maximum of |(R4) - (R3)| / (sigma_j sigma_l) over the grid of test_relu_covariance_approximation_error
# (0.01012 at z = (-0.8, 0.8), rho = 0.99), rounded up: the documented bound of the paper's approximation.
RELU_COV_BOUND = 0.0102


def t(array):
    return torch.tensor(np.array(array), dtype=torch.float64)


def mc_mean_cov(draws):
    """Sample mean and covariance of ``draws`` (N, d) with the standard error of each entry."""
    n = draws.shape[0]
    mean = draws.mean(0)
    centred = draws - mean
    products = centred[:, :, None] * centred[:, None, :]
    return mean, draws.std(0) / math.sqrt(n), products.mean(0), products.std(0) / math.sqrt(n)


def assert_within_mc(estimate, exact, se, label, slack=0.0):
    z = np.abs(np.asarray(estimate) - np.asarray(exact)) - slack
    worst = float(np.max(z / se))
    assert worst < Z_MAX, f"{label}: {worst:.2f} standard errors off (beyond slack {slack})"


def layer(seed, d_in, d_out):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(d_in, d_out)),
        rng.uniform(0.05, 0.4, size=(d_in, d_out)),
        rng.normal(size=d_out),
        rng.uniform(0.05, 0.4, size=d_out),
    )


def sample_layer(rng, params, num):
    m, v, bm, bv = params
    return m + np.sqrt(v) * rng.standard_normal((num,) + m.shape), bm + np.sqrt(bv) * rng.standard_normal(
        (num, len(bm))
    )


def test_linear_layer_with_certain_inputs_matches_monte_carlo():
    params = layer(0, 3, 4)
    x = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])
    full = linear_certain_moments(t(x), *map(t, params))
    diag = linear_certain_moments(t(x), *map(t, params), full=False)
    w, b = sample_layer(np.random.default_rng(1), params, NUM_DRAWS)
    for i in range(2):
        mean, mean_se, cov, cov_se = mc_mean_cov(np.tensordot(x[i], w, axes=(0, 1)) + b)
        assert_within_mc(full.mean[i], mean, mean_se, "E[a]")
        assert_within_mc(full.cov[i], cov, cov_se, "Cov(a)")
    torch.testing.assert_close(diag.cov, full.variance, rtol=1e-14, atol=0.0)
    assert torch.all(full.cov[:, ~torch.eye(4, dtype=torch.bool)] == 0.0)  # independent weight columns


def test_linear_layer_with_gaussian_inputs_matches_monte_carlo():
    """(L1)-(L2) are exact for any input with these two moments: full, independent inputs, and dDVI's diagonal."""
    params = layer(2, 3, 2)
    rng = np.random.default_rng(3)
    h_mean = np.array([0.4, -0.2, 1.0])
    chol = np.array([[0.6, 0.0, 0.0], [0.3, 0.5, 0.0], [-0.2, 0.4, 0.7]])
    h_cov = chol @ chol.T
    full = linear_moments(GaussianMoments(t(h_mean[None]), t(h_cov[None])), *map(t, params))
    diag_in = GaussianMoments(t(h_mean[None]), t(np.diag(h_cov)[None]))
    w, b = sample_layer(rng, params, NUM_DRAWS)
    h = h_mean + rng.standard_normal((NUM_DRAWS, 3)) @ chol.T
    mean, mean_se, cov, cov_se = mc_mean_cov(np.einsum("nd,ndo->no", h, w) + b)
    assert_within_mc(full.mean[0], mean, mean_se, "E[a]")
    assert_within_mc(full.cov[0], cov, cov_se, "Cov(a)")
    h_ind = h_mean + rng.standard_normal((NUM_DRAWS, 3)) * np.sqrt(np.diag(h_cov))
    mean, mean_se, cov, cov_se = mc_mean_cov(np.einsum("nd,ndo->no", h_ind, w) + b)
    diag = linear_moments(diag_in, *map(t, params))
    assert not diag.is_full
    assert_within_mc(diag.mean[0], mean, mean_se, "dDVI E[a]")
    assert_within_mc(diag.cov[0], np.diag(cov), np.diag(cov_se), "dDVI Var(a)")
    assert_within_mc(linear_moments(diag_in, *map(t, params), full=True).cov[0], cov, cov_se, "Cov(a), independent h")


def test_relu_mean_and_variance_are_exact():
    """(R1)-(R2) against quadrature (to 1e-9) and Monte Carlo (within its error), z = mu / sigma from -2.3 to 1.9."""
    mus, sd = np.array([-3.0, -0.7, 0.0, 0.4, 2.5]), 1.3
    got_mean, got_var = (v.numpy() for v in relu_mean_var(t(mus), torch.full((5,), sd * sd)))
    for i, mu in enumerate(mus):
        density = stats.norm(mu, sd).pdf
        first = integrate.quad(lambda a, pdf=density: a * pdf(a), 0.0, np.inf, epsabs=1e-13)[0]
        second = integrate.quad(lambda a, pdf=density: a * a * pdf(a), 0.0, np.inf, epsabs=1e-13)[0]
        np.testing.assert_allclose([got_mean[i], got_var[i]], [first, second - first**2], rtol=1e-9, atol=1e-12)
    draws = np.maximum(np.random.default_rng(4).normal(mus, sd, (NUM_DRAWS, 5)), 0.0)
    mean, mean_se, cov, cov_se = mc_mean_cov(draws)
    assert_within_mc(got_mean, mean, mean_se, "E[relu]")
    assert_within_mc(got_var, np.diag(cov), np.diag(cov_se), "Var[relu]")


def test_relu_normaliser_is_one_over_sqrt_two_pi_and_a_certain_input_gives_relu():
    """The slip of public ports (sqrt(2) pi for sqrt(2 pi)) would change E[relu(N(0, 1))] = 1 / sqrt(2 pi)."""
    assert float(standard_normal_pdf(torch.zeros(()))) == pytest.approx(1.0 / math.sqrt(2.0 * math.pi), rel=1e-15)
    mean, var = relu_mean_var(torch.zeros(5), torch.ones(5))
    np.testing.assert_allclose(mean, 1.0 / math.sqrt(2.0 * math.pi), rtol=1e-14)
    np.testing.assert_allclose(var, 0.5 - 1.0 / (2.0 * math.pi), rtol=1e-14)
    mean, var = relu_mean_var(t([-2.0, 3.0, 0.5, -1e-3, 7.0]), torch.full((5,), 1e-300))
    np.testing.assert_allclose(mean, [0.0, 3.0, 0.5, 0.0, 7.0], atol=1e-140)
    np.testing.assert_allclose(var, 0.0, atol=1e-140)


def relu_covariance_by_quadrature(z1, z2, rho, num_nodes=200):
    """(R3) / (sigma_1 sigma_2): rho Phi Phi + int_0^rho (rho - s) phi_2(z1, z2; s) ds, vectorised."""
    nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
    s = 0.5 * rho * (nodes[:, None] + 1.0)
    ds = 0.5 * rho * weights[:, None]
    density = np.exp(-0.5 * (z1 * z1 - 2.0 * s * z1 * z2 + z2 * z2) / (1.0 - s * s)) / (2 * np.pi * np.sqrt(1 - s * s))
    return rho * stats.norm.cdf(z1) * stats.norm.cdf(z2) + np.sum(ds * (rho - s) * density, axis=0)


def test_relu_covariance_approximation_error():
    """(R4) vs the exact (R3): exact at z = 0 and as rho -> 0 (series branch below |rho| = eps^(1/6)), at most
    RELU_COV_BOUND sigma_j sigma_l elsewhere, and the bound is tight."""
    grid = np.linspace(-4.0, 4.0, 21)
    rhos = np.concatenate([np.linspace(-0.99, -0.01, 13), np.linspace(0.01, 0.99, 13), [1e-9, 1e-4, 3e-3, -5e-3]])
    z1, z2, rho = (a.ravel() for a in np.meshgrid(grid, grid, rhos, indexing="ij"))
    approx = rho * relu_correlation_term(t(z1), t(z2), t(rho)).numpy()
    error = np.abs(approx - relu_covariance_by_quadrature(z1, z2, rho))
    assert RELU_COV_BOUND > error.max() > 0.5 * RELU_COV_BOUND, error.max()
    assert error[(z1 == 0.0) & (z2 == 0.0)].max() < 1e-13
    small = np.abs(rho) <= 0.01
    assert (error[small] / np.abs(rho[small])).max() < 1e-4


def test_full_relu_moments_match_monte_carlo():
    """Full ReLU moments of a correlated 4-d Gaussian: mean and variances exact (within MC error), covariances
    within RELU_COV_BOUND sigma_j sigma_l of Monte Carlo; the diagonal variant gives the same means and variances."""
    rng = np.random.default_rng(5)
    mean = np.array([0.3, -0.5, 1.2, 0.0])
    chol = np.tril(rng.normal(size=(4, 4)), -1) * 0.8 + np.diag([1.0, 0.7, 1.5, 0.4])
    cov = chol @ chol.T
    got = relu_moments(GaussianMoments(t(mean[None]), t(cov[None])))
    draws = np.maximum(mean + rng.standard_normal((NUM_DRAWS, 4)) @ chol.T, 0.0)
    mc_mean, mean_se, mc_cov, cov_se = mc_mean_cov(draws)
    assert_within_mc(got.mean[0], mc_mean, mean_se, "E[relu]")
    assert_within_mc(np.diag(got.cov[0]), np.diag(mc_cov), np.diag(cov_se), "Var[relu]")
    sigma = np.sqrt(np.diag(cov))
    assert_within_mc(got.cov[0], mc_cov, cov_se, "Cov[relu]", slack=RELU_COV_BOUND * np.outer(sigma, sigma))
    diag = relu_moments(GaussianMoments(t(mean[None]), t(np.diag(cov)[None])))
    torch.testing.assert_close(diag.mean, got.mean, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(diag.cov, got.variance, rtol=1e-14, atol=0.0)


def test_relu_moments_gradients_are_finite_and_match_finite_differences():
    """Through rho = 0 (the series branch) and rho = 0.999; float64 autograd against central differences."""
    base = t([[1.0, 0.0, 0.999], [0.0, 1.0, -0.3], [0.999, -0.3, 1.0]])

    def total(scale):
        out = relu_moments(GaussianMoments(t([[0.2, -0.1, 0.4]]), (base * scale)[None]))
        return out.cov.sum() + out.mean.sum()

    scale = torch.ones((), requires_grad=True)
    (grad,) = torch.autograd.grad(total(scale), scale)
    step = 1e-6
    fd = (float(total(torch.tensor(1.0 + step))) - float(total(torch.tensor(1.0 - step)))) / (2 * step)
    assert math.isfinite(float(grad)) and float(grad) == pytest.approx(fd, rel=1e-6)


def test_relu_moments_in_float32_follow_float64():
    mean, cov = t([[0.3, -0.5]]), t([[[1.0, 0.4], [0.4, 0.5]]])
    out32 = relu_moments(GaussianMoments(mean.float(), cov.float()))
    out64 = relu_moments(GaussianMoments(mean, cov))
    assert out32.cov.dtype == torch.float32
    np.testing.assert_allclose(out32.cov.numpy(), out64.cov.numpy(), rtol=2e-5)


def test_bad_layer_inputs_name_the_argument():
    m, v, bm, bv = map(t, layer(6, 3, 2))
    with pytest.raises(ValueError, match="weight_var must be > 0"):
        linear_certain_moments(torch.ones(1, 3), m, -v, bm, bv)
    with pytest.raises(ValueError, match="bias_var must be > 0"):
        linear_certain_moments(torch.ones(1, 3), m, v, bm, 0.0 * bv)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        linear_certain_moments(torch.ones(1, 4), m, v, bm, bv)
    with pytest.raises(ValueError, match="weight_mean must have 2 rows"):
        linear_moments(GaussianMoments(torch.ones(1, 2), torch.ones(1, 2)), m, v, bm, bv)
    with pytest.raises(ValueError, match="weight_var must have weight_mean's shape"):
        linear_certain_moments(torch.ones(1, 3), m, v[:, :1], bm, bv)
    with pytest.raises(ValueError, match="var must be > 0"):
        relu_mean_var(torch.zeros(2), t([1.0, np.nan]))
    # a variance that requires grad is checked on its detached values
    with pytest.raises(ValueError, match="weight_var must be > 0"):
        linear_certain_moments(torch.ones(1, 3), m, (-v).requires_grad_(), bm, bv)
