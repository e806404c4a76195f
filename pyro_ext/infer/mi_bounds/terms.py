"""The pure core of the Pyro MI bounds: per-sample terms (differentiable) and estimates from given scores.

Equations and references: :mod:`pyro_ext.infer.mi_bounds`.  ``*_terms`` are plain tensor
functions (what the training losses use); the functions without the suffix validate their
inputs and return an :class:`adapters.mi.BoundEstimate`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adapters.mi import BoundEstimate
from pyro_ext.infer.mi_bounds.checks import as_tensor, check_finite, check_score_matrix, check_square, to_numpy
from pyro_ext.infer.smc_util import log_mean_exp

__all__ = [
    "barber_agakov",
    "barber_agakov_terms",
    "giwae",
    "giwae_terms",
    "infonce",
    "infonce_terms",
    "mine_ais_terms",
    "mine_dv",
    "mine_dv_value",
    "nwj",
    "nwj_terms",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------
# Per-sample terms (differentiable; what the training losses use)
# ---------------------------------------------------------------------------------------
def infonce_terms(scores: Tensor) -> Tensor:
    """Per-row InfoNCE terms ``S_ii - log 1/K sum_j e^{S_ij}`` of ``(..., K, K)`` scores; each ``<= log K``.

    Poole et al. (2019) Sec. 2.3.  The clamp only removes rounding: ``S_ii <= logsumexp_j S_ij``.
    """
    check_square("scores", scores)
    k = scores.shape[-1]
    diag = torch.diagonal(scores, dim1=-2, dim2=-1)
    return torch.clamp(diag - torch.logsumexp(scores, dim=-1), max=0.0) + math.log(k)


def _off_diagonal(scores: Tensor) -> tuple[Tensor, Tensor]:
    k = scores.shape[-1]
    mask = ~torch.eye(k, dtype=torch.bool, device=scores.device)
    return mask, torch.diagonal(scores, dim1=-2, dim2=-1)


def nwj_terms(scores: Tensor) -> Tensor:
    """Per-row NWJ / MINE-F terms ``S_ii - mean_{j != i} e^{S_ij - 1}`` of ``(..., K, K)`` scores, ``K >= 2``.

    Poole et al. (2019) Sec. 2.2 (``I_NWJ = E_p[f] - e^{-1} E_{p(x)p(z)} e^f``); the mean of the
    terms is an unbiased estimate of the bound.
    """
    check_square("scores", scores, min_size=2)
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    # mask before exponentiating: an overflowing diagonal must not turn the gradient into NaN
    marginal = torch.sum(torch.exp((scores - 1.0).masked_fill(~mask, -math.inf)), dim=-1) / (k - 1)
    return diag - marginal


def mine_dv_value(scores: Tensor) -> Tensor:
    """The plug-in DV value ``mean_i S_ii - log mean_{i != j} e^{S_ij}`` per ``(K, K)`` matrix (``(...)``)."""
    check_square("scores", scores, min_size=2)
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    log_marginal = torch.logsumexp(scores.masked_fill(~mask, -math.inf), dim=(-2, -1)) - math.log(k * (k - 1))
    return diag.mean(dim=-1) - log_marginal


def barber_agakov_terms(log_q: Tensor, log_prior: Tensor) -> Tensor:
    """``log q(z_i|x_i) - log p(z_i)`` (Poole et al. Sec. 2.1); their mean estimates ``I_BA`` without bias."""
    return log_q - log_prior


def giwae_terms(log_q: Tensor, log_prior: Tensor, scores: Tensor) -> Tensor:
    """Per-sample GIWAE terms (Brekelmans et al., 2022).

    ``log_q``, ``log_prior``: ``(N,)`` values ``log q(z_i|x_i)``, ``log p(z_i)`` at the joint samples;
    ``scores``: ``(K, N)`` critic values ``T(x_i, z_{k,i})`` with row 0 the joint sample ``z_i`` and
    rows ``1..K-1`` draws from ``q(z|x_i)``.  Term ``i``:
    ``log q/p + min(T_0 - logsumexp_k T_k, 0) + log K`` (the contrastive part is ``<= log K``).
    """
    k = scores.shape[0]
    contrast = torch.clamp(scores[0] - torch.logsumexp(scores, dim=0), max=0.0) + math.log(k)
    return log_q - log_prior + contrast


def mine_ais_terms(positive_scores: Tensor, log_weights: Tensor) -> Tensor:
    """Per-sample MINE-AIS terms ``T(x_i, z_i) - log 1/K sum_k w_{k,i}`` (Brekelmans et al., 2022).

    ``positive_scores``: ``(N,)``; ``log_weights``: ``(K, N)`` Multi-Sample AIS log weights from
    ``p(z)`` to ``p(z) e^{T(x_i, z)}``, one of them (any row) from the reverse chain started at ``z_i``.
    """
    return positive_scores - log_mean_exp(log_weights, dim=0)


# ---------------------------------------------------------------------------------------
# Bounds on given scores -> BoundEstimate
# ---------------------------------------------------------------------------------------
def _matrix_estimate(terms: Tensor, kind: str, name: str) -> BoundEstimate:
    """Mean and stderr of per-row ``terms`` ``(K,)`` or ``(B, K)``: over the ``B`` group means when ``B >= 2``.

    Rows of one score matrix share the same ``z``'s, so the row-wise stderr of a single matrix is
    approximate (it ignores their weak correlation); a batch with ``B >= 2`` gives the honest one.
    """
    groups = terms.reshape(-1, terms.shape[-1])
    if groups.shape[0] >= 2:
        return BoundEstimate.from_samples(to_numpy(groups.mean(-1)), kind, name)
    return BoundEstimate.from_samples(to_numpy(groups[0]), kind, name)


def infonce(scores: Any) -> BoundEstimate:
    """InfoNCE lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``S[i, j] = T(x_i, z_j)``.

    Never exceeds ``log K``: every term is ``<= log K`` exactly, so a tight estimate of a large
    ``I`` needs ``K ~ e^I`` (Poole et al. 2019, Sec. 2.3).
    """
    scores = check_score_matrix("scores", scores)
    return _matrix_estimate(infonce_terms(scores), "lower", "InfoNCE")


def nwj(scores: Any) -> BoundEstimate:
    """NWJ (= MINE-F) lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    Unbiased for the bound; tight at ``T = 1 + log p(x|z)/p(x)``.  Its variance grows like ``e^I``.
    """
    scores = check_score_matrix("scores", scores, min_size=2)
    return _matrix_estimate(nwj_terms(scores), "lower", "NWJ")


def mine_dv(scores: Any) -> BoundEstimate:
    """Donsker-Varadhan (MINE) value from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    ``I_DV(T) <= I`` for every ``T``, but the plug-in estimate takes the log of a sample mean, which
    is biased upwards (Jensen), so it is a lower bound only up to that bias: ``kind="estimate"``.
    With a batch (``B >= 2``) the stderr is over the per-matrix values; for one matrix it is the
    delta-method stderr of ``mean_i S_ii - log mean_i b_i`` with ``b_i`` the row means of
    ``e^{S_ij}``, ``j != i``.
    """
    scores = check_score_matrix("scores", scores, min_size=2)
    if scores.dim() == 3 and scores.shape[0] >= 2:
        return BoundEstimate.from_samples(to_numpy(mine_dv_value(scores)), "estimate", "MINE-DV")
    value, linear = _dv_linearised(scores.reshape(scores.shape[-2:]))
    estimate = BoundEstimate.from_samples(to_numpy(linear), "estimate", "MINE-DV")
    return BoundEstimate(float(value), estimate.stderr, "estimate", "MINE-DV", estimate.num_samples)


def _dv_linearised(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """The DV value of one ``(K, K)`` matrix and its delta-method linearisation per row ``(K,)``."""
    mask, diag = _off_diagonal(matrix)
    k = matrix.shape[-1]
    shift = torch.max(matrix.masked_fill(~mask, -math.inf))
    rows = torch.sum(torch.exp((matrix - shift).masked_fill(~mask, -math.inf)), dim=-1) / (k - 1)
    value = mine_dv_value(matrix)
    # influence of row i on the value: (diag_i - mean diag) - (b_i - mean b) / mean b
    return value, value + (diag - diag.mean()) - (rows - rows.mean()) / rows.mean()


def barber_agakov(log_q: Any, log_prior: Any = None, *, entropy: float | None = None) -> BoundEstimate:
    """Barber-Agakov lower bound ``E_p[log q(z|x)] + H(z)`` from ``log q(z_i|x_i)`` ``(N,)``.

    Give either ``log_prior`` (``log p(z_i)``, ``(N,)``) or the exact entropy ``entropy = H(z)``.
    Unbiased for the bound; tight at ``q = p(z|x)`` (Poole et al. Sec. 2.1).
    """
    log_q = check_finite("log_q", as_tensor("log_q", log_q))
    if log_q.dim() != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {tuple(log_q.shape)}")
    if (log_prior is None) == (entropy is None):
        raise ValueError("barber_agakov needs exactly one of log_prior (log p(z_i), shape (N,)) and entropy (H(z))")
    if entropy is not None:
        if not math.isfinite(float(entropy)):
            raise ValueError(f"entropy must be a finite number (H(z) in nats), got {entropy!r}")
        return BoundEstimate.from_samples(to_numpy(log_q) + float(entropy), "lower", "BA")
    log_prior = check_finite("log_prior", as_tensor("log_prior", log_prior))
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {tuple(log_q.shape)}, got {tuple(log_prior.shape)}")
    return BoundEstimate.from_samples(to_numpy(barber_agakov_terms(log_q, log_prior)), "lower", "BA")


def giwae(log_q: Any, log_prior: Any, scores: Any) -> BoundEstimate:
    """GIWAE lower bound from ``log q(z_i|x_i)``, ``log p(z_i)`` ``(N,)`` and scores ``(K, N)``.

    Row 0 of ``scores`` is ``T(x_i, z_i)`` at the joint sample, rows ``1..K-1`` are ``T(x_i, z_k)``
    at ``z_k ~ q(z|x_i)``.  ``I_GIWAE <= I_BA(q) + log K`` exactly (see :func:`giwae_terms`).
    """
    log_q = check_finite("log_q", as_tensor("log_q", log_q))
    log_prior = check_finite("log_prior", as_tensor("log_prior", log_prior))
    scores = check_finite("scores", as_tensor("scores", scores))
    if log_q.dim() != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {tuple(log_q.shape)}")
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {tuple(log_q.shape)}, got {tuple(log_prior.shape)}")
    if scores.dim() != 2 or scores.shape[1] != log_q.shape[0]:
        raise ValueError(
            f"scores must have shape (K, N) = (K, {log_q.shape[0]}) with row 0 the joint samples, "
            f"got {tuple(scores.shape)}"
        )
    if scores.shape[0] < 1:
        raise ValueError("scores must have K >= 1 rows (the joint sample and K - 1 proposal draws), got K = 0")
    return BoundEstimate.from_samples(to_numpy(giwae_terms(log_q, log_prior, scores)), "lower", "GIWAE")
