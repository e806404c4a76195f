"""Closed forms of the amortized-VI tests, shared by both backends' tests (numpy only).

* Linear normal-normal model (``z_i ~ N(0, 1)``, ``x_i ~ N(THETA + TAU z_i, SIGMA^2)``): a hand-set guide
  ``q_i = N(exact mean + SHIFT, (WIDEN SD)^2)``, its per-datum ELBO terms with the variance of their one-draw
  estimate, and the second moment of its importance weights (the IWAE bias).
* AR(1) hidden Markov model (``z_t = RHO z_{t-1} + N(0, STEP^2)``, ``x_t ~ N(z_t, NOISE^2)``): data, the
  precision matrices, the exact ELBO of any mean-field Gaussian, and the best affine window-``k`` encoder's
  location gap (a weighted least-squares fit of the posterior means).
"""

import math

import numpy as np

TAU, SIGMA, THETA = 1.155, 2.43, 0.7
V = TAU**2 + SIGMA**2
SLOPE, SD = TAU / V, SIGMA / math.sqrt(V)  # the exact posterior: mean SLOPE (x - THETA), scale SD
SHIFT, WIDEN = 0.3, 1.5  # the hand-set guide: q_i = N(exact mean + SHIFT, (WIDEN SD)^2)

RHO, STEP, NOISE = 0.9, 0.5, 1.0
STATIONARY = STEP / math.sqrt(1 - RHO**2)


def linear_terms(x):
    """Per datum: the closed-form ELBO term of the hand-set q_i, the variance of its one-draw estimate, and
    log p(x_i).  With z = m + s eps, l(eps) = a + b eps + c eps^2, so Var = b^2 + 2 c^2."""
    x = np.asarray(x, dtype=np.float64)
    m, s = SLOPE * (x - THETA) + SHIFT, WIDEN * SD
    resid = x - THETA - TAU * m
    elbo = (
        -0.5 * math.log(2 * math.pi * SIGMA**2)
        - (resid**2 + TAU**2 * s**2) / (2 * SIGMA**2)
        - 0.5 * math.log(2 * math.pi)
        - (m**2 + s**2) / 2
        + 0.5 * math.log(2 * math.pi * math.e * s**2)
    )
    b = TAU * s * resid / SIGMA**2 - m * s
    c = -(TAU**2 * s**2) / (2 * SIGMA**2) - s**2 / 2 + 0.5
    log_evidence = -0.5 * np.log(2 * math.pi * V) - (x - THETA) ** 2 / (2 * V)
    return elbo, b**2 + 2 * c**2, log_evidence


def chi2_ratio():
    """E_q[w^2] / E_q[w]^2 = int p(z | x)^2 / q(z) dz for the hand-set q (the same for every datum: p and q
    differ by the same shift and widening), by quadrature on a fine grid."""
    z = np.linspace(-12.0, 12.0, 200_001)
    post = np.exp(-(z**2) / (2 * SD**2)) / math.sqrt(2 * math.pi * SD**2)
    q_scale = WIDEN * SD
    q = np.exp(-((z - SHIFT) ** 2) / (2 * q_scale**2)) / math.sqrt(2 * math.pi * q_scale**2)
    return float(np.sum(post**2 / q) * (z[1] - z[0]))


def hmm_data(seed, n):
    """``n`` observations of the AR(1) chain started in its stationary law."""
    rng = np.random.default_rng(seed)
    z = np.zeros(n)
    z[0] = STATIONARY * rng.standard_normal()
    for t in range(1, n):
        z[t] = RHO * z[t - 1] + STEP * rng.standard_normal()
    return z + NOISE * rng.standard_normal(n)


def hmm_precision(n):
    """The prior precision of ``z`` (tridiagonal) and the posterior precision ``prior + I / NOISE^2``."""
    prior = np.zeros((n, n))
    diag = np.full(n, (1 + RHO**2) / STEP**2)
    diag[0] = diag[-1] = 1 / STEP**2
    prior[np.arange(n), np.arange(n)] = diag
    prior[np.arange(n - 1), np.arange(1, n)] = prior[np.arange(1, n), np.arange(n - 1)] = -RHO / STEP**2
    return prior, prior + np.eye(n) / NOISE**2


def hmm_elbo(x, loc, scale):
    """The exact ELBO of the mean-field Gaussian q_t = N(loc_t, scale_t^2)."""
    n, var = len(x), scale**2
    prior, _ = hmm_precision(n)
    log_det_prior = -2 * math.log(STATIONARY) - 2 * (n - 1) * math.log(STEP)
    expected_prior = -0.5 * (loc @ prior @ loc + np.sum(np.diag(prior) * var)) + 0.5 * log_det_prior
    expected_prior -= 0.5 * n * math.log(2 * math.pi)
    expected_lik = np.sum(-0.5 * ((x - loc) ** 2 + var) / NOISE**2 - 0.5 * math.log(2 * math.pi * NOISE**2))
    return expected_prior + expected_lik + np.sum(0.5 * np.log(2 * math.pi * math.e * var))


def window_features(x, window):
    """``(n, 2 window + 1)``: each datum's edge-padded window of observations."""
    n = len(x)
    return x[np.clip(np.arange(n)[:, None] + np.arange(-window, window + 1)[None], 0, n - 1)]


def best_window_loc_gap(x, window):
    """``(gap, posterior means, mean-field optimal scales)``; ``gap = 0.5 (m - mu)' Lambda (m - mu)`` for the best
    affine ``m = F a`` of window features: the part of the gap no affine window-k encoder can close, whatever its
    scales."""
    n = len(x)
    _, precision = hmm_precision(n)
    mean = np.linalg.solve(precision, x / NOISE**2)
    features = np.concatenate([window_features(x, window), np.ones((n, 1))], axis=1)
    coef = np.linalg.solve(features.T @ precision @ features, features.T @ precision @ mean)
    diff = features @ coef - mean
    return 0.5 * diff @ precision @ diff, mean, 1 / np.sqrt(np.diag(precision))
