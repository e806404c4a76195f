"""KL terms of DVI's ELBO for a mean-field Gaussian q (Wu et al. 2019, arXiv:1810.03958, Sec. 4).

One weight tensor (or bias vector) has ``m`` entries ``w_i ~ q = N(mu_i, v_i)``, independent.

Fixed Gaussian prior ``w_i ~ N(0, s)``:

    (K1)  KL(q || N(0, s)) = 1/2 sum_i [(v_i + mu_i^2) / s - 1 - log(v_i / s)]
                           = 1/2 [S / s - m + m log s - sum_i log v_i],     S = sum_i (v_i + mu_i^2).

Empirical Bayes (paper Sec. 4): a hierarchical prior ``w_i ~ N(0, s)`` per tensor with an inverse-gamma
hyperprior ``s ~ InvGamma(alpha, beta)``, ``log p(s) = alpha log beta - log Gamma(alpha) - (alpha + 1) log s
- beta / s``.  The prior variance is set to its optimum given q, the minimiser of
``F(s) = KL(q || N(0, s)) - log p(s) = (S / s + m log s) / 2 + (alpha + 1) log s + beta / s + const``:

    (K2)  F'(s) = 0  <=>  s* = (S + 2 beta) / (m + 2 alpha + 2),

unique, and a minimum (``F -> +inf`` at ``0`` and ``inf``).  The KL term of the ELBO is then (K1) at
``s = s*``, a function of q alone (gradients flow through ``s*``).  With ``beta = (alpha + 1) s0`` the
hyperprior's mode ``beta / (alpha + 1)`` is ``s0`` (:class:`adapters.dvi.DVIConfig`'s ``prior_variance``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adapters.dvi import check_positive_values

__all__ = ["empirical_bayes_kl", "empirical_bayes_prior_variance", "gaussian_kl"]

Array = jax.Array


def _check_pair(mean, var) -> None:
    if jnp.shape(mean) != jnp.shape(var):
        raise ValueError(f"var must have mean's shape {jnp.shape(mean)}, got {jnp.shape(var)}")
    check_positive_values("var", var)


def gaussian_kl(mean: Array, var: Array, prior_var: Array | float) -> Array:
    """(K1): ``KL(prod_i N(mean_i, var_i) || prod_i N(0, prior_var))``, a scalar summed over all entries.

    ``mean``, ``var``: any shape, the same; ``prior_var`` > 0, scalar or broadcastable to ``mean``.
    """
    _check_pair(mean, var)
    check_positive_values("prior_var", prior_var)
    ratio = var / prior_var
    return 0.5 * jnp.sum(ratio + mean * mean / prior_var - 1.0 - jnp.log(ratio))


def empirical_bayes_prior_variance(mean: Array, var: Array, alpha: float, beta: float) -> Array:
    """(K2): ``s* = (sum_i (var_i + mean_i^2) + 2 beta) / (m + 2 alpha + 2)``, a scalar (``m = mean.size``)."""
    _check_pair(mean, var)
    second_moment = jnp.sum(var + mean * mean)
    return (second_moment + 2.0 * beta) / (jnp.size(mean) + 2.0 * alpha + 2.0)


def empirical_bayes_kl(mean: Array, var: Array, alpha: float, beta: float) -> Array:
    """``KL(q || N(0, s*))`` with ``s*`` of (K2) for this tensor's hyperprior ``InvGamma(alpha, beta)``."""
    return gaussian_kl(mean, var, empirical_bayes_prior_variance(mean, var, alpha, beta))
