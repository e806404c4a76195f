"""SMC and importance-sampling building blocks in torch: weights, ESS, resampling, log-mean-exp.

Shared by every Pyro algorithm that weights particles (twisted SMC, AIS, the MI bounds);
the JAX twin is :mod:`numpyro_ext.infer.smc_util` (same names and semantics).  Particles lie
on the LAST dimension; leading dimensions are independent batches (e.g. independent runs).

With ``N`` log weights ``log w_i``: the self-normalised weights are
``W_i = w_i / sum_j w_j``, the effective sample size (Kong 1992) is
``ESS = (sum_i w_i)^2 / sum_i w_i^2 = 1 / sum_i W_i^2``, and the importance-sampling
estimate of a normaliser is ``log Z_hat = log (1/N) sum_i w_i`` (:func:`log_mean_exp`).
Resampling schemes: Douc, Capp\u00e9 & Moulines, "Comparison of resampling schemes for particle
filtering", ISPA 2005.  Randomness: torch's global generator unless a ``generator`` is given.
"""

from __future__ import annotations

import math

import torch

from adapters.validation import check_choice

__all__ = [
    "RESAMPLING",
    "effective_sample_size",
    "log_mean_exp",
    "normalized_weights",
    "resample",
    "safe_logsumexp",
]

RESAMPLING = ("multinomial", "systematic", "stratified")


def log_mean_exp(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``log (1/n) sum exp(x)`` over ``dim`` (every element when ``None``); ``n`` the number of terms."""
    if dim is None:
        return torch.logsumexp(x.reshape(-1), dim=0) - math.log(x.numel())
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def safe_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis that is ``-inf`` (not NaN) when every entry is ``-inf`` or NaN."""
    finite = torch.isfinite(x)
    value = torch.logsumexp(torch.where(finite, x, torch.full_like(x, -math.inf)), dim=-1)
    return torch.where(finite.any(-1), value, torch.full_like(value, -math.inf))


def normalized_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights ``W`` (``(..., N)``, over the last axis); uniform where every weight is zero."""
    finite = torch.isfinite(log_weights).any(-1, keepdim=True)
    return torch.softmax(torch.where(finite, log_weights, torch.zeros_like(log_weights)), dim=-1)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_i W_i^2`` in log space over the last axis (0 when every weight is zero)."""
    ess = torch.exp(2 * safe_logsumexp(log_weights) - safe_logsumexp(2 * log_weights))
    return torch.where(torch.isfinite(log_weights).any(-1), ess, torch.zeros_like(ess))


def resample(
    log_weights: torch.Tensor, method: str = "systematic", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ancestor indices (``long``, the shape of ``log_weights`` ``(..., N)``) drawn from the normalised weights.

    ``multinomial``: i.i.d. categorical draws; ``systematic``: one uniform ``u``, points
    ``(u + i) / N``; ``stratified``: one uniform per stratum ``(u_i + i) / N``.  All three
    are unbiased (each index's expected count is ``N W_i``); the last two have lower variance.
    Leading dimensions are independent batches (e.g. independent runs).  ``generator``:
    a ``torch.Generator`` (default: torch's global one).
    """
    check_choice("resampling", method, RESAMPLING)
    num = log_weights.shape[-1]
    batch = log_weights.shape[:-1]
    weights = normalized_weights(log_weights).reshape(-1, num)
    if method == "multinomial":
        index = torch.multinomial(weights, num, replacement=True, generator=generator)
        return index.reshape(log_weights.shape)
    shape = (weights.shape[0], 1) if method == "systematic" else (weights.shape[0], num)
    offsets = torch.rand(shape, dtype=weights.dtype, device=weights.device, generator=generator)
    points = (torch.arange(num, dtype=weights.dtype, device=weights.device) + offsets) / num
    cumulative = torch.cumsum(weights, dim=-1)
    cumulative = cumulative / cumulative[:, -1:]  # the last point is exactly 1: no draw past it
    index = torch.searchsorted(cumulative, points, right=True).clamp_(max=num - 1)
    return index.reshape(batch + (num,))
