"""SMC and importance-sampling building blocks in JAX: weights, ESS, resampling, log-mean-exp.

Shared by every NumPyro algorithm that weights particles (twisted SMC, AIS, the MI bounds);
the torch twin is :mod:`pyro_ext.infer.smc_util` (same names and semantics).  All functions
are pure and jit/vmap-able.

With ``N`` log weights ``log w_i``: the self-normalised weights are
``W_i = w_i / sum_j w_j``, the effective sample size (Kong 1992) is
``ESS = (sum_i w_i)^2 / sum_i w_i^2 = 1 / sum_i W_i^2``, and the importance-sampling
estimate of a normaliser is ``log Z_hat = log (1/N) sum_i w_i`` (:func:`log_mean_exp`).
Resampling schemes: Douc, Capp\u00e9 & Moulines, "Comparison of resampling schemes for particle
filtering", ISPA 2005.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

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


def log_mean_exp(x: jax.Array, axis: int | None = None) -> jax.Array:
    """``log (1/n) sum exp(x)`` over ``axis`` (every element when ``None``); ``n`` the number of terms."""
    n = x.shape[axis] if axis is not None else x.size
    return logsumexp(x, axis=axis) - math.log(n)


def safe_logsumexp(x: jax.Array) -> jax.Array:
    """``logsumexp`` over every element that is ``-inf`` (not NaN) when every entry is ``-inf`` or NaN."""
    return jnp.where(jnp.any(jnp.isfinite(x)), logsumexp(jnp.where(jnp.isfinite(x), x, -jnp.inf)), -jnp.inf)


def normalized_weights(log_weights: jax.Array) -> jax.Array:
    """Self-normalised weights ``W`` (shape ``(N,)``); uniform when every weight is zero."""
    finite = jnp.any(jnp.isfinite(log_weights))
    safe = jnp.where(finite, log_weights, 0.0)
    return jax.nn.softmax(safe)


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    """``1 / sum_i W_i^2`` in log space (0 when every weight is zero)."""
    ess = jnp.exp(2 * logsumexp(log_weights) - logsumexp(2 * log_weights))
    return jnp.where(jnp.any(jnp.isfinite(log_weights)), ess, 0.0)


def resample(rng_key: jax.Array, log_weights: jax.Array, method: str = "systematic") -> jax.Array:
    """Ancestor indices ``(N,)`` drawn from the normalised weights of ``log_weights`` ``(N,)``.

    ``multinomial``: i.i.d. categorical draws; ``systematic``: one uniform ``u``, points
    ``(u + i) / N``; ``stratified``: one uniform per stratum ``(u_i + i) / N``.  All three
    are unbiased (each index's expected count is ``N W_i``); the last two have lower variance.
    """
    check_choice("resampling", method, RESAMPLING)
    num = log_weights.shape[0]
    weights = normalized_weights(log_weights)
    if method == "multinomial":
        return jax.random.categorical(rng_key, jnp.log(weights), shape=(num,))
    offsets = jax.random.uniform(rng_key, () if method == "systematic" else (num,))
    points = (jnp.arange(num) + offsets) / num
    cumulative = jnp.cumsum(weights)
    return jnp.minimum(jnp.searchsorted(cumulative, points, side="right"), num - 1)
