"""Log likelihoods estimated from simulations (pure JAX).

``stats`` are the summary statistics of ``S`` simulations at one ``theta``, shape ``(S, d)``;
``observed`` is ``(d,)``.  Rows with a non-finite statistic are left out (the methods count them);
with too few finite rows the log likelihood is ``-inf``.

* Synthetic likelihood (Wood 2010, Nature 466: 1102-1104; the ``epsilon^2 I`` ridge as in
  Moreno et al. 2016, arXiv:1606.08549, Sec. 3): ``y ~ N(mu_hat, Sigma_hat + epsilon^2 I)`` with
  the sample mean and covariance of the ``S`` simulations.  With common random numbers (the same
  ``S`` keys at every ``theta``) it is a smooth, deterministic function of ``theta``.
* Gaussian epsilon-kernel: ``log (1/S) sum_s N(y; x_s, epsilon^2 I)``, the ABC likelihood of a
  Gaussian kernel of width ``epsilon``, estimated without bias by ``S`` simulations.
* One-sided kernel: ``sum_j log Phi((y_j - mu_j) / s_j)`` ("at most ``y``") or
  ``log Phi((mu_j - y_j) / s_j)`` ("at least ``y``"), ``s_j^2`` the simulations' variance plus
  ``epsilon^2``: the probability that a Gaussian fit of the simulations is on the wanted side of
  ``y`` (used for "at least as good as" targets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, logsumexp

from numpyro_ext.infer.abc.problem import finite_rows

DIRECTIONS = ("below", "above")


def _masked_moments(stats: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean ``(d,)``, unbiased covariance ``(d, d)`` and count of the finite rows of ``stats`` ``(S, d)``."""
    keep = finite_rows(stats)
    count = jnp.sum(keep)
    x = jnp.where(keep[:, None], stats, 0.0)
    mean = jnp.sum(x, axis=0) / jnp.maximum(count, 1)
    centred = jnp.where(keep[:, None], stats - mean, 0.0)
    cov = centred.T @ centred / jnp.maximum(count - 1, 1)
    return mean, cov, count


def synthetic_log_likelihood(stats: jax.Array, observed: jax.Array, epsilon: float = 0.0) -> jax.Array:
    """``log N(observed; mean(stats), cov(stats) + epsilon^2 I)`` (Wood 2010), ``-inf`` with fewer
    than ``d + 1`` finite simulations when ``epsilon = 0`` (fewer than 2 otherwise).

    ``stats``: ``(S, d)``; ``observed``: ``(d,)``; returns a scalar.
    """
    d = stats.shape[-1]
    mean, cov, count = _masked_moments(stats)
    cov = cov + (epsilon**2) * jnp.eye(d, dtype=cov.dtype)
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, observed - mean, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    value = -0.5 * (z @ z + log_det + d * jnp.log(2.0 * jnp.pi))
    enough = count >= jnp.where(epsilon > 0, 2, d + 1)
    return jnp.where(enough & jnp.isfinite(value), value, -jnp.inf)


def gaussian_kernel_log_likelihood(stats: jax.Array, observed: jax.Array, epsilon: float) -> jax.Array:
    """``log (1/S) sum_s N(observed; stats_s, epsilon^2 I)`` over the ``S`` simulations ``(S, d)``
    (non-finite rows count as zero-likelihood simulations, so the estimate stays unbiased)."""
    d = stats.shape[-1]
    keep = finite_rows(stats)
    sq = jnp.sum((jnp.where(keep[:, None], stats, 0.0) - observed) ** 2, axis=-1)
    log_k = -0.5 * sq / epsilon**2 - d * (jnp.log(epsilon) + 0.5 * jnp.log(2.0 * jnp.pi))
    log_k = jnp.where(keep, log_k, -jnp.inf)
    return logsumexp(log_k) - jnp.log(stats.shape[0])


def one_sided_log_likelihood(
    stats: jax.Array, observed: jax.Array, epsilon: float = 0.0, direction: str = "below"
) -> jax.Array:
    """``sum_j log Phi(+-(observed_j - mean_j) / s_j)``, ``s_j^2 = var_j(stats) + epsilon^2``.

    ``direction="below"``: the probability that a simulation is at most ``observed`` in every
    statistic; ``"above"``: at least.  ``stats``: ``(S, d)``; returns a scalar.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    mean, cov, count = _masked_moments(stats)
    scale = jnp.sqrt(jnp.diagonal(cov) + epsilon**2)
    z = (observed - mean) / scale
    value = jnp.sum(log_ndtr(z if direction == "below" else -z))
    return jnp.where((count >= 2) & ~jnp.isnan(value), value, -jnp.inf)
