"""Log likelihoods estimated from simulations (torch), the twins of :mod:`numpyro_ext.infer.abc.likelihoods`.

``stats`` are the summary statistics of ``S`` simulations at one ``theta``, shape ``(..., S, d)``
(leading dimensions: independent ``theta``, e.g. a batch of ``n`` parameters ``(n, S, d)``);
``observed`` is ``(d,)``; each function returns ``(...)``.  Rows with a non-finite statistic are
left out (the methods count them); with too few finite rows the log likelihood is ``-inf``.
Differentiable in ``stats`` (so in ``theta`` through a reparameterised simulator).

* Synthetic likelihood (Wood 2010, Nature 466: 1102-1104; the ``epsilon^2 I`` ridge as in
  Moreno et al. 2016, arXiv:1606.08549, Sec. 3): ``y ~ N(mu_hat, Sigma_hat + epsilon^2 I)`` with
  the sample mean and covariance of the ``S`` simulations.  With common random numbers (the same
  generator state at every ``theta``) it is a smooth, deterministic function of ``theta``.
* Gaussian epsilon-kernel: ``log (1/S) sum_s N(y; x_s, epsilon^2 I)``, the ABC likelihood of a
  Gaussian kernel of width ``epsilon``, estimated without bias by ``S`` simulations.
* One-sided kernel: ``sum_j log Phi((y_j - mu_j) / s_j)`` ("at most ``y``") or
  ``log Phi((mu_j - y_j) / s_j)`` ("at least ``y``"), ``s_j^2`` the simulations' variance plus
  ``epsilon^2``: the probability that a Gaussian fit of the simulations is on the wanted side of
  ``y`` (used for "at least as good as" targets).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyro_ext.infer.abc.problem import finite_rows

DIRECTIONS = ("below", "above")

Tensor = torch.Tensor

__all__ = ["gaussian_kernel_log_likelihood", "one_sided_log_likelihood", "synthetic_log_likelihood"]


def _as_observed(observed: Any, stats: Tensor) -> Tensor:
    return torch.as_tensor(observed, dtype=stats.dtype, device=stats.device)


def _masked_moments(stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean ``(..., d)``, unbiased covariance ``(..., d, d)`` and count ``(...)`` of the finite rows of
    ``stats`` ``(..., S, d)``."""
    keep = finite_rows(stats)[..., None]
    count = keep.sum(dim=(-2, -1))
    x = torch.where(keep, stats, torch.zeros((), dtype=stats.dtype))
    mean = x.sum(dim=-2) / count.clamp(min=1)[..., None]
    centred = torch.where(keep, stats - mean[..., None, :], torch.zeros((), dtype=stats.dtype))
    cov = centred.transpose(-1, -2) @ centred / (count - 1).clamp(min=1)[..., None, None]
    return mean, cov, count


def synthetic_log_likelihood(stats: Tensor, observed: Any, epsilon: float = 0.0) -> Tensor:
    """``log N(observed; mean(stats), cov(stats) + epsilon^2 I)`` (Wood 2010), ``-inf`` with fewer
    than ``d + 1`` finite simulations when ``epsilon = 0`` (fewer than 2 otherwise), or where the
    covariance is singular.

    ``stats``: ``(..., S, d)``; ``observed``: ``(d,)``; returns ``(...)``.
    """
    d = stats.shape[-1]
    observed = _as_observed(observed, stats)
    mean, cov, count = _masked_moments(stats)
    cov = cov + (epsilon**2) * torch.eye(d, dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov)
    # a failed factorisation (singular covariance) leaves garbage in chol: masked to -inf below
    chol = torch.where((info == 0)[..., None, None], chol, torch.eye(d, dtype=cov.dtype, device=cov.device))
    z = torch.linalg.solve_triangular(chol, (observed - mean)[..., None], upper=False)[..., 0]
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    value = -0.5 * ((z * z).sum(-1) + log_det + d * math.log(2.0 * math.pi))
    needed = 2 if float(epsilon) > 0 else d + 1
    ok = (count >= needed) & (info == 0) & torch.isfinite(value)
    return torch.where(ok, value, torch.full_like(value, -math.inf))


def gaussian_kernel_log_likelihood(stats: Tensor, observed: Any, epsilon: float) -> Tensor:
    """``log (1/S) sum_s N(observed; stats_s, epsilon^2 I)`` over the ``S`` simulations ``(..., S, d)``
    (non-finite rows count as zero-likelihood simulations, so the estimate stays unbiased); returns ``(...)``."""
    d = stats.shape[-1]
    observed = _as_observed(observed, stats)
    keep = finite_rows(stats)
    clean = torch.where(keep[..., None], stats, torch.zeros((), dtype=stats.dtype))
    sq = ((clean - observed) ** 2).sum(-1)
    log_epsilon = math.log(epsilon) if not isinstance(epsilon, Tensor) else torch.log(epsilon)
    log_k = -0.5 * sq / epsilon**2 - d * (log_epsilon + 0.5 * math.log(2.0 * math.pi))
    log_k = torch.where(keep, log_k, torch.full_like(log_k, -math.inf))
    return torch.logsumexp(log_k, dim=-1) - math.log(stats.shape[-2])


def one_sided_log_likelihood(stats: Tensor, observed: Any, epsilon: float = 0.0, direction: str = "below") -> Tensor:
    """``sum_j log Phi(+-(observed_j - mean_j) / s_j)``, ``s_j^2 = var_j(stats) + epsilon^2``.

    ``direction="below"``: the probability that a simulation is at most ``observed`` in every
    statistic; ``"above"``: at least.  ``stats``: ``(..., S, d)``; returns ``(...)``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    observed = _as_observed(observed, stats)
    mean, cov, count = _masked_moments(stats)
    scale = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1) + epsilon**2)
    z = (observed - mean) / scale
    value = torch.special.log_ndtr(z if direction == "below" else -z).sum(-1)
    ok = (count >= 2) & ~torch.isnan(value)
    return torch.where(ok, value, torch.full_like(value, -math.inf))
