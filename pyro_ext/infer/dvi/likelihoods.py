"""Expected log-likelihoods of a Gaussian network output, in closed form, in torch (Wu et al. 2019, arXiv:1810.03958).

The torch twin of :mod:`numpyro_ext.infer.dvi.likelihoods` (same names and equations).  The network output ``f``
of one datum is Gaussian with the moments :mod:`pyro_ext.infer.dvi.moments` propagates, and ``E_q[log p(y | f)]``
is computed without sampling.

Regression (paper Sec. 3): ``log N(y; m, e^l) = -(log(2 pi) + l + (y - m)^2 e^-l) / 2`` with mean ``m`` and log
noise variance ``l``, jointly Gaussian with means ``(mu_m, mu_l)`` and covariance entries ``S_mm, S_ml, S_ll``;
tilting by ``e^-l`` moves ``m``'s mean by ``-S_ml``, so

    (G1)  E[log N(y; m, e^l)] = -1/2 [log(2 pi) + mu_l + exp(-mu_l + S_ll / 2) (S_mm + (y - mu_m + S_ml)^2)],

exact given Gaussian ``(m, l)``.  Homoscedastic: ``l = s`` fixed (``S_ll = S_ml = 0``); dDVI takes ``S_ml = 0``.

Classification: a second-order expansion of ``lse(f) = log sum_i exp(f_i)`` at ``mu`` (``p = softmax(mu)``):

    (C1)  E[log softmax(f)_k] ~= mu_k - lse(mu) - 1/2 (sum_i p_i S_ii - p^T S p),

exact for ``S = c 1 1^T`` (a common shift of all logits), error ``O(||S||^2)`` (below 0.0015 nats for 4 logits
whose variances average 0.1, measured in ``tests/numpyro_ext/test_dvi_core.py``).
"""

from __future__ import annotations

import math

import torch

from pyro_ext.infer.dvi.moments import GaussianMoments

__all__ = [
    "categorical_expected_log_likelihood",
    "categorical_predictive_probabilities",
    "expected_log_softmax",
    "gaussian_expected_log_likelihood",
    "heteroscedastic_expected_log_likelihood",
    "homoscedastic_expected_log_likelihood",
    "regression_predictive",
]

Tensor = torch.Tensor

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_expected_log_likelihood(y, mean_m, var_m, mean_l, var_l, cov_ml) -> Tensor:
    """(G1): ``E[log N(y; m, exp(l))]`` for jointly Gaussian ``(m, l)``, elementwise (broadcasts).

    ``mean_m``, ``var_m``: the mean's mean and variance; ``mean_l``, ``var_l``: the log noise variance's mean
    and variance; ``cov_ml``: their covariance.
    """
    scale = torch.exp(-mean_l + 0.5 * var_l)
    return -0.5 * (LOG_2PI + mean_l + scale * (var_m + (y - mean_m + cov_ml) ** 2))


def _regression_targets(outputs: GaussianMoments, y, num_targets: int) -> Tensor:
    y = torch.as_tensor(y, dtype=outputs.mean.dtype, device=outputs.mean.device)
    n = outputs.mean.shape[0]
    if tuple(y.shape) == (n,) and num_targets == 1:
        y = y[:, None]
    if tuple(y.shape) != (n, num_targets):
        raise ValueError(f"y must have shape ({n}, {num_targets}) (one row per datum and target), got {tuple(y.shape)}")
    return y


def heteroscedastic_expected_log_likelihood(outputs: GaussianMoments, y: Tensor) -> Tensor:
    """(G1) for a network whose ``2 D`` outputs are ``D`` means then ``D`` log noise variances.

    ``outputs``: moments with mean ``(n, 2 D)``; ``y``: ``(n, D)`` (or ``(n,)`` for ``D = 1``).
    Returns ``(n,)``: the expected log-likelihood of each datum, summed over its ``D`` targets.
    """
    width = outputs.mean.shape[-1]
    if width % 2:
        raise ValueError(f"outputs must have an even width (D means, then D log variances), got {width}")
    d = width // 2
    y = _regression_targets(outputs, y, d)
    var = outputs.variance
    cov_ml = torch.diagonal(outputs.cov[:, :d, d:], dim1=-2, dim2=-1) if outputs.is_full else 0.0
    terms = gaussian_expected_log_likelihood(
        y, outputs.mean[:, :d], var[:, :d], outputs.mean[:, d:], var[:, d:], cov_ml
    )
    return terms.sum(-1)


def homoscedastic_expected_log_likelihood(outputs: GaussianMoments, y: Tensor, log_noise_variance: Tensor) -> Tensor:
    """(G1) with a fixed log noise variance ``s`` (scalar or ``(D,)``): ``-(log 2 pi + s + e^-s (S_mm + (y -
    mu_m)^2)) / 2``.  ``outputs``: mean ``(n, D)``; ``y``: ``(n, D)`` or ``(n,)``.  Returns ``(n,)``, summed
    over targets."""
    d = outputs.mean.shape[-1]
    y = _regression_targets(outputs, y, d)
    s = torch.as_tensor(log_noise_variance, dtype=outputs.mean.dtype, device=outputs.mean.device)
    if tuple(s.shape) not in ((), (d,)):
        raise ValueError(f"log_noise_variance must be a scalar or have shape ({d},), got {tuple(s.shape)}")
    return gaussian_expected_log_likelihood(y, outputs.mean, outputs.variance, s, 0.0, 0.0).sum(-1)


def expected_log_softmax(outputs: GaussianMoments) -> Tensor:
    """(C1): ``E[log softmax(f)]`` ``(n, K)`` for Gaussian logits ``f`` with moments ``outputs``."""
    mean = outputs.mean
    lse = torch.logsumexp(mean, dim=-1, keepdim=True)
    p = torch.exp(mean - lse)
    if outputs.is_full:
        quad = torch.einsum("ni,nij,nj->n", p, outputs.cov, p)
    else:
        quad = torch.sum(p * p * outputs.cov, dim=-1)
    correction = 0.5 * (torch.sum(p * outputs.variance, dim=-1) - quad)
    return mean - lse - correction[:, None]


def categorical_expected_log_likelihood(outputs: GaussianMoments, labels: Tensor) -> Tensor:
    """(C1) at the observed classes: ``E[log softmax(f)_{y_i}]`` ``(n,)`` for integer ``labels`` ``(n,)``."""
    labels = torch.as_tensor(labels, device=outputs.mean.device)
    if tuple(labels.shape) != tuple(outputs.mean.shape[:1]):
        raise ValueError(
            f"labels must have shape ({outputs.mean.shape[0]},) (one per datum), got {tuple(labels.shape)}"
        )
    log_probs = expected_log_softmax(outputs)
    return torch.gather(log_probs, -1, labels[:, None].long())[:, 0]


def regression_predictive(
    outputs: GaussianMoments, likelihood: str, log_noise_variance: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Predictive mean and variance ``(n, D)`` of ``y`` (law of total variance, closed form).

    ``E[y] = mu_m``; ``Var(y) = S_mm + E[noise variance]`` with ``E[e^l] = exp(mu_l + S_ll / 2)``
    (heteroscedastic, the log-normal mean) or ``exp(s)`` (homoscedastic, ``log_noise_variance = s``).
    """
    var = outputs.variance
    if likelihood == "heteroscedastic":
        d = outputs.mean.shape[-1] // 2
        return outputs.mean[:, :d], var[:, :d] + torch.exp(outputs.mean[:, d:] + 0.5 * var[:, d:])
    if likelihood == "homoscedastic":
        if log_noise_variance is None:
            raise ValueError("log_noise_variance is required for likelihood='homoscedastic'")
        s = torch.as_tensor(log_noise_variance, dtype=var.dtype, device=var.device)
        return outputs.mean, var + torch.exp(s)
    raise ValueError(f"likelihood must be 'heteroscedastic' or 'homoscedastic' for a regression, got {likelihood!r}")


def categorical_predictive_probabilities(outputs: GaussianMoments) -> Tensor:
    """Second-order approximation of ``E[softmax(f)]`` ``(n, K)`` for Gaussian logits.

    With ``p = softmax(mu)`` and ``c = sum_i p_i S_ii - p^T S p``, ``E[p_k(f)] ~= p_k + p_k ((e_k - p)^T S
    (e_k - p) - c) / 2``; clipped at 0 and renormalised (matters only for logit variances of order 1 and above).
    """
    mean = outputs.mean
    p = torch.softmax(mean, dim=-1)
    var = outputs.variance
    sp = torch.einsum("nij,nj->ni", outputs.cov, p) if outputs.is_full else outputs.cov * p
    psp = torch.sum(p * sp, dim=-1, keepdim=True)
    c = torch.sum(p * var, dim=-1, keepdim=True) - psp
    probs = torch.clamp(p + 0.5 * p * (var - 2.0 * sp + psp - c), min=0.0)
    return probs / probs.sum(-1, keepdim=True)
