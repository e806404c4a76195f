"""MI bounds on given critic scores (Poole et al. 2019; Brekelmans et al. 2022), and the argument checks.

Pure per-sample terms (``*_terms``, ``mine_dv_value``) are jit-able and differentiable; the
functions without the suffix validate their inputs and return a :class:`adapters.mi.BoundEstimate`.
Equations and notation: :mod:`numpyro_ext.infer.mi_bounds`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from adapters.mi import BoundEstimate
from adapters.validation import check_finite_array
from numpyro_ext.infer.smc_util import log_mean_exp

__all__ = [
    "barber_agakov",
    "barber_agakov_terms",
    "check_dims",
    "check_finite",
    "check_joint",
    "check_prior",
    "check_score_matrix",
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

Array = jax.Array
_NON_FINITE_HINT = "; a critic that overflows or a proposal with zero density produces these"


# ---------------------------------------------------------------------------------------
# Argument checks (on concrete arrays; traced values pass through)
# ---------------------------------------------------------------------------------------
def _concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def as_array(name: str, value: Any) -> Array:
    """``value`` as a JAX array; a ``TypeError`` naming ``name`` when it holds no numbers (the
    Pyro twin's message, :func:`pyro_ext.infer.mi_bounds.checks.as_tensor`), not JAX's own."""
    if isinstance(value, jax.Array):
        return value
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}") from err
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}")
    return jnp.asarray(arr)


def check_finite(name: str, value: Any) -> Array:
    """``value`` as a JAX array; when concrete, a ``ValueError`` naming its non-finite entries
    (:func:`adapters.validation.check_finite_array`, the message both backends give)."""
    arr = as_array(name, value)
    if _concrete(arr):
        check_finite_array(name, arr, _NON_FINITE_HINT)
    return arr


def check_score_matrix(name: str, scores: Any, min_size: int = 1) -> Array:
    scores = as_array(name, scores)
    if scores.ndim not in (2, 3) or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(
            f"{name} must be a square score matrix (K, K) with {name}[i, j] = T(x_i, z_j), or a batch (B, K, K) of "
            f"them, got shape {scores.shape}"
        )
    if scores.shape[-1] < min_size:
        raise ValueError(f"{name} must have K >= {min_size} samples per group, got K = {scores.shape[-1]}")
    return check_finite(name, scores)


def check_joint(x: Any, z: Any) -> tuple[Array, Array]:
    x, z = as_array("x", x), as_array("z", z)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (N, dx) of joint samples, got shape {x.shape}")
    if z.ndim != 2:
        raise ValueError(f"z must be a 2-D array (N, dz) of joint samples, got shape {z.shape}")
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"x and z must hold the same number of joint samples, got x: {x.shape} and z: {z.shape}")
    return check_finite("x", x), check_finite("z", z)


def check_dims(x: Array, z: Array, x_dim: int | None, z_dim: int | None) -> None:
    if x_dim is not None and x.shape[-1] != x_dim:
        raise ValueError(f"x must have last axis of length x_dim = {x_dim}, got shape {x.shape}")
    if z_dim is not None and z.shape[-1] != z_dim:
        raise ValueError(f"z must have last axis of length z_dim = {z_dim}, got shape {z.shape}")


def check_prior(prior: Any, z_dim: int | None) -> Any:
    if not (hasattr(prior, "log_prob") and hasattr(prior, "sample")):
        raise ValueError(f"prior must be a numpyro distribution over z (with log_prob and sample), got {prior!r}")
    event = tuple(getattr(prior, "event_shape", ()))
    if z_dim is not None and event != (z_dim,):
        raise ValueError(
            f"prior must have event_shape (z_dim,) = ({z_dim},), got {event}; use .to_event(1) for a factorised prior"
        )
    return prior


# ---------------------------------------------------------------------------------------
# Pure per-sample terms (jit-able, differentiable)
# ---------------------------------------------------------------------------------------
@jax.jit
def infonce_terms(scores: Array) -> Array:
    """Per-row InfoNCE terms ``S_ii - log 1/K sum_j e^{S_ij}`` of ``(..., K, K)`` scores; each ``<= log K``.

    Poole et al. (2019) Sec. 2.3.  The ``minimum`` only removes rounding: ``S_ii <= logsumexp_j S_ij``.
    """
    k = scores.shape[-1]
    diag = jnp.diagonal(scores, axis1=-2, axis2=-1)
    return jnp.minimum(diag - logsumexp(scores, axis=-1), 0.0) + math.log(k)


def _off_diagonal(scores: Array) -> tuple[Array, Array]:
    k = scores.shape[-1]
    mask = ~jnp.eye(k, dtype=bool)
    return mask, jnp.diagonal(scores, axis1=-2, axis2=-1)


@jax.jit
def nwj_terms(scores: Array) -> Array:
    """Per-row NWJ / MINE-F terms ``S_ii - mean_{j != i} e^{S_ij - 1}`` of ``(..., K, K)`` scores, ``K >= 2``.

    Poole et al. (2019) Sec. 2.2 (``I_NWJ = E_p[f] - e^{-1} E_{p(x)p(z)} e^f``); the mean of the
    terms is an unbiased estimate of the bound.
    """
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    # mask before exponentiating: an overflowing diagonal must not turn the gradient into NaN
    marginal = jnp.sum(jnp.exp(jnp.where(mask, scores - 1.0, -jnp.inf)), axis=-1) / (k - 1)
    return diag - marginal


@jax.jit
def mine_dv_value(scores: Array) -> Array:
    """The plug-in DV value ``mean_i S_ii - log mean_{i != j} e^{S_ij}`` per ``(K, K)`` matrix (``(...)``)."""
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    log_marginal = logsumexp(jnp.where(mask, scores, -jnp.inf), axis=(-2, -1)) - math.log(k * (k - 1))
    return jnp.mean(diag, axis=-1) - log_marginal


@jax.jit
def barber_agakov_terms(log_q: Array, log_prior: Array) -> Array:
    """``log q(z_i|x_i) - log p(z_i)`` (Poole et al. Sec. 2.1); their mean estimates ``I_BA`` without bias."""
    return log_q - log_prior


@jax.jit
def giwae_terms(log_q: Array, log_prior: Array, scores: Array) -> Array:
    """Per-sample GIWAE terms (Brekelmans et al., 2022).

    ``log_q``, ``log_prior``: ``(N,)`` values ``log q(z_i|x_i)``, ``log p(z_i)`` at the joint samples;
    ``scores``: ``(K, N)`` critic values ``T(x_i, z_{k,i})`` with row 0 the joint sample ``z_i`` and
    rows ``1..K-1`` draws from ``q(z|x_i)``.  Term ``i``:
    ``log q/p + min(T_0 - logsumexp_k T_k, 0) + log K`` (the contrastive part is ``<= log K``).
    """
    k = scores.shape[0]
    contrast = jnp.minimum(scores[0] - logsumexp(scores, axis=0), 0.0) + math.log(k)
    return log_q - log_prior + contrast


@jax.jit
def mine_ais_terms(positive_scores: Array, log_weights: Array) -> Array:
    """Per-sample MINE-AIS terms ``T(x_i, z_i) - log 1/K sum_k w_{k,i}`` (Brekelmans et al., 2022).

    ``positive_scores``: ``(N,)``; ``log_weights``: ``(K, N)`` Multi-Sample AIS log weights from
    ``p(z)`` to ``p(z) e^{T(x_i, z)}``, one of them (any row) from the reverse chain started at ``z_i``.
    """
    return positive_scores - log_mean_exp(log_weights, axis=0)


# ---------------------------------------------------------------------------------------
# Bounds on given scores -> BoundEstimate
# ---------------------------------------------------------------------------------------
def _matrix_estimate(terms: Array, kind: str, name: str) -> BoundEstimate:
    """Mean and stderr of per-row ``terms`` ``(K,)`` or ``(B, K)``: over the ``B`` group means when ``B >= 2``.

    Rows of one score matrix share the same ``z``'s, so the row-wise stderr of a single matrix is
    approximate (it ignores their weak correlation); a batch with ``B >= 2`` gives the honest one.
    """
    groups = terms.reshape(-1, terms.shape[-1])
    if groups.shape[0] >= 2:
        return BoundEstimate.from_samples(np.asarray(groups.mean(-1)), kind, name)
    return BoundEstimate.from_samples(np.asarray(groups[0]), kind, name)


def infonce(scores: Any) -> BoundEstimate:
    """InfoNCE lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``S[i, j] = T(x_i, z_j)``.

    Never exceeds ``log K``: every term is ``<= log K`` exactly, so a tight estimate of a large
    ``I`` needs ``K ~ e^I`` (Poole et al. 2019, Sec. 2.3).
    """
    scores = check_score_matrix("scores", scores)
    terms = infonce_terms(scores)
    return _matrix_estimate(terms, "lower", "InfoNCE")


def nwj(scores: Any) -> BoundEstimate:
    """NWJ (= MINE-F) lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    Unbiased for the bound; tight at ``T = 1 + log p(x|z)/p(x)``.  Its variance grows like ``e^I``.
    """
    scores = check_score_matrix("scores", scores, min_size=2)
    terms = nwj_terms(scores)
    return _matrix_estimate(terms, "lower", "NWJ")


def mine_dv(scores: Any) -> BoundEstimate:
    """Donsker-Varadhan (MINE) value from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    ``I_DV(T) = E_p T - log E_{p(x)p(z)} e^T <= I`` for every ``T``, but the plug-in estimate takes the
    log of a sample mean, which is biased upwards (Jensen) by about ``Var(e^T) / (2 M E[e^T]^2)`` for
    ``M`` off-diagonal pairs, so it is a lower bound only up to that bias: ``kind="estimate"``.  With a
    batch (``B >= 2``) the stderr is over the per-matrix values; for one matrix it is the delta-method
    stderr of ``mean_i S_ii - log mean_i b_i`` with ``b_i`` the row means of ``e^{S_ij}``, ``j != i``.
    """
    scores = check_score_matrix("scores", scores, min_size=2)
    if scores.ndim == 3 and scores.shape[0] >= 2:
        return BoundEstimate.from_samples(np.asarray(mine_dv_value(scores)), "estimate", "MINE-DV")
    value, linear = _dv_linearised(scores.reshape(scores.shape[-2:]))
    estimate = BoundEstimate.from_samples(np.asarray(linear), "estimate", "MINE-DV")
    return BoundEstimate(float(value), estimate.stderr, "estimate", "MINE-DV", estimate.num_samples)


@jax.jit
def _dv_linearised(matrix: Array) -> tuple[Array, Array]:
    """The DV value of one ``(K, K)`` matrix and its delta-method linearisation per row ``(K,)``."""
    mask, diag = _off_diagonal(matrix)
    k = matrix.shape[-1]
    shift = jnp.max(jnp.where(mask, matrix, -jnp.inf))
    rows = jnp.sum(jnp.exp(jnp.where(mask, matrix - shift, -jnp.inf)), axis=-1) / (k - 1)
    value = mine_dv_value(matrix)
    # influence of row i on the value: (diag_i - mean diag) - (b_i - mean b) / mean b
    return value, value + (diag - diag.mean()) - (rows - rows.mean()) / rows.mean()


def barber_agakov(log_q: Any, log_prior: Any = None, *, entropy: float | None = None) -> BoundEstimate:
    """Barber-Agakov lower bound ``E_p[log q(z|x)] + H(z)`` from ``log q(z_i|x_i)`` ``(N,)``.

    Give either ``log_prior`` (``log p(z_i)``, ``(N,)``; then ``-log p(z_i)`` estimates ``H(z)``
    sample by sample, lowering the variance when ``q`` is close to ``p(z|x)``) or the exact entropy
    ``entropy = H(z)``.  Unbiased for the bound; tight at ``q = p(z|x)`` (Poole et al. Sec. 2.1).
    """
    log_q = check_finite("log_q", log_q)
    if log_q.ndim != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {log_q.shape}")
    if (log_prior is None) == (entropy is None):
        raise ValueError("barber_agakov needs exactly one of log_prior (log p(z_i), shape (N,)) and entropy (H(z))")
    if entropy is not None:
        if not math.isfinite(float(entropy)):
            raise ValueError(f"entropy must be a finite number (H(z) in nats), got {entropy!r}")
        return BoundEstimate.from_samples(np.asarray(log_q) + float(entropy), "lower", "BA")
    log_prior = check_finite("log_prior", log_prior)
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {log_q.shape}, got {log_prior.shape}")
    return BoundEstimate.from_samples(np.asarray(barber_agakov_terms(log_q, log_prior)), "lower", "BA")


def giwae(log_q: Any, log_prior: Any, scores: Any) -> BoundEstimate:
    """GIWAE lower bound from ``log q(z_i|x_i)``, ``log p(z_i)`` ``(N,)`` and scores ``(K, N)``.

    Row 0 of ``scores`` is ``T(x_i, z_i)`` at the joint sample, rows ``1..K-1`` are ``T(x_i, z_k)``
    at ``z_k ~ q(z|x_i)``.  ``I_GIWAE <= I_BA(q) + log K`` exactly (see :func:`giwae_terms`).
    """
    log_q = check_finite("log_q", log_q)
    log_prior = check_finite("log_prior", log_prior)
    scores = check_finite("scores", scores)
    if log_q.ndim != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {log_q.shape}")
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {log_q.shape}, got {log_prior.shape}")
    if scores.ndim != 2 or scores.shape[1] != log_q.shape[0]:
        raise ValueError(
            f"scores must have shape (K, N) = (K, {log_q.shape[0]}) with row 0 the joint samples, got {scores.shape}"
        )
    if scores.shape[0] < 1:
        raise ValueError("scores must have K >= 1 rows (the joint sample and K - 1 proposal draws), got K = 0")
    return BoundEstimate.from_samples(np.asarray(giwae_terms(log_q, log_prior, scores)), "lower", "GIWAE")
