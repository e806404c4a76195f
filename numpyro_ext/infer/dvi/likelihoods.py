"""Expected log-likelihoods of a Gaussian network output, in closed form (Wu et al. 2019, arXiv:1810.03958).

The network output ``f`` of one datum is taken to be Gaussian with the moments that
:mod:`numpyro_ext.infer.dvi.moments` propagates (:class:`GaussianMoments`, full or diagonal), and
``E_q[log p(y | f)]`` is computed without sampling.

Regression (paper Sec. 3, "Gaussian likelihood"): ``log N(y; m, e^l) = -(log(2 pi) + l + (y - m)^2 e^-l) / 2``
with mean ``m`` and log noise variance ``l``.  For jointly Gaussian ``(m, l)`` with means ``(mu_m, mu_l)`` and
covariance entries ``S_mm, S_ml, S_ll``, tilting by ``e^-l`` keeps ``(m, l)`` Gaussian with ``m``'s mean
moved by ``-S_ml``, so ``E[g(m) e^-l] = E[e^-l] E_tilted[g(m)]`` with ``E[e^-l] = exp(-mu_l + S_ll / 2)``, and

    (G1)  E[log N(y; m, e^l)] = -1/2 [log(2 pi) + mu_l + exp(-mu_l + S_ll / 2) (S_mm + (y - mu_m + S_ml)^2)],

exact given Gaussian ``(m, l)``.  Homoscedastic: ``l`` is a fixed number ``s`` (``S_ll = S_ml = 0``).
dDVI has no ``S_ml`` (taken as 0).

Classification: ``E[log softmax(f)_k] = mu_k - E[lse(f)]`` with ``lse(f) = log sum_i exp(f_i)``, which has no
closed form for Gaussian ``f``.  A second-order (delta-method) expansion of ``lse`` at ``mu`` (gradient
``p = softmax(mu)``, Hessian ``diag(p) - p p^T``) gives

    (C1)  E[log softmax(f)_k] ~= mu_k - lse(mu) - 1/2 (sum_i p_i S_ii - p^T S p),

exact when ``S`` is constant (``c 1 1^T``: a common shift of all logits), with error ``O(||S||^2)``:
``tests/numpyro_ext/test_dvi_core.py`` measures it (below 0.0015 nats for 4 logits whose variances average 0.1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from numpyro_ext.infer.dvi.moments import GaussianMoments

__all__ = [
    "categorical_expected_log_likelihood",
    "categorical_predictive_probabilities",
    "expected_log_softmax",
    "gaussian_expected_log_likelihood",
    "heteroscedastic_expected_log_likelihood",
    "homoscedastic_expected_log_likelihood",
    "regression_predictive",
]

Array = jax.Array

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_expected_log_likelihood(y, mean_m, var_m, mean_l, var_l, cov_ml) -> Array:
    """(G1): ``E[log N(y; m, exp(l))]`` for jointly Gaussian ``(m, l)``, elementwise (broadcasts).

    ``mean_m``, ``var_m``: the mean's mean and variance; ``mean_l``, ``var_l``: the log noise variance's mean
    and variance; ``cov_ml``: their covariance.
    """
    scale = jnp.exp(-mean_l + 0.5 * var_l)
    return -0.5 * (LOG_2PI + mean_l + scale * (var_m + (y - mean_m + cov_ml) ** 2))


def _regression_targets(outputs: GaussianMoments, y: Array, num_targets: int) -> Array:
    y = jnp.asarray(y)
    n = outputs.mean.shape[0]
    if y.shape == (n,) and num_targets == 1:
        y = y[:, None]
    if y.shape != (n, num_targets):
        raise ValueError(f"y must have shape ({n}, {num_targets}) (one row per datum and target), got {y.shape}")
    return y


def heteroscedastic_expected_log_likelihood(outputs: GaussianMoments, y: Array) -> Array:
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
    cov_ml = jnp.diagonal(outputs.cov[:, :d, d:], axis1=-2, axis2=-1) if outputs.is_full else 0.0
    terms = gaussian_expected_log_likelihood(
        y, outputs.mean[:, :d], var[:, :d], outputs.mean[:, d:], var[:, d:], cov_ml
    )
    return terms.sum(-1)


def homoscedastic_expected_log_likelihood(outputs: GaussianMoments, y: Array, log_noise_variance: Array) -> Array:
    """(G1) with a fixed log noise variance ``s`` (scalar or ``(D,)``): ``-(log 2 pi + s + e^-s (S_mm + (y -
    mu_m)^2)) / 2``.  ``outputs``: mean ``(n, D)``; ``y``: ``(n, D)`` or ``(n,)``.  Returns ``(n,)``, summed
    over targets."""
    d = outputs.mean.shape[-1]
    y = _regression_targets(outputs, y, d)
    s = jnp.asarray(log_noise_variance)
    if s.shape not in ((), (d,)):
        raise ValueError(f"log_noise_variance must be a scalar or have shape ({d},), got {s.shape}")
    return gaussian_expected_log_likelihood(y, outputs.mean, outputs.variance, s, 0.0, 0.0).sum(-1)


def expected_log_softmax(outputs: GaussianMoments) -> Array:
    """(C1): ``E[log softmax(f)]`` ``(n, K)`` for Gaussian logits ``f`` with moments ``outputs``."""
    mean = outputs.mean
    lse = logsumexp(mean, axis=-1, keepdims=True)
    p = jnp.exp(mean - lse)
    if outputs.is_full:
        quad = jnp.einsum("ni,nij,nj->n", p, outputs.cov, p)
    else:
        quad = jnp.sum(p * p * outputs.cov, axis=-1)
    correction = 0.5 * (jnp.sum(p * outputs.variance, axis=-1) - quad)
    return mean - lse - correction[:, None]


def categorical_expected_log_likelihood(outputs: GaussianMoments, labels: Array) -> Array:
    """(C1) at the observed classes: ``E[log softmax(f)_{y_i}]`` ``(n,)`` for integer ``labels`` ``(n,)``."""
    labels = jnp.asarray(labels)
    if labels.shape != outputs.mean.shape[:1]:
        raise ValueError(f"labels must have shape ({outputs.mean.shape[0]},) (one per datum), got {labels.shape}")
    log_probs = expected_log_softmax(outputs)
    return jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def regression_predictive(
    outputs: GaussianMoments, likelihood: str, log_noise_variance: Array | None = None
) -> tuple[Array, Array]:
    """Predictive mean and variance ``(n, D)`` of ``y`` (law of total variance, closed form).

    ``E[y] = mu_m``; ``Var(y) = S_mm + E[noise variance]`` with ``E[e^l] = exp(mu_l + S_ll / 2)``
    (heteroscedastic, the log-normal mean) or ``exp(s)`` (homoscedastic, ``log_noise_variance = s``).
    """
    var = outputs.variance
    if likelihood == "heteroscedastic":
        d = outputs.mean.shape[-1] // 2
        return outputs.mean[:, :d], var[:, :d] + jnp.exp(outputs.mean[:, d:] + 0.5 * var[:, d:])
    if likelihood == "homoscedastic":
        if log_noise_variance is None:
            raise ValueError("log_noise_variance is required for likelihood='homoscedastic'")
        return outputs.mean, var + jnp.exp(jnp.asarray(log_noise_variance))
    raise ValueError(f"likelihood must be 'heteroscedastic' or 'homoscedastic' for a regression, got {likelihood!r}")


def categorical_predictive_probabilities(outputs: GaussianMoments) -> Array:
    """Second-order approximation of ``E[softmax(f)]`` ``(n, K)`` for Gaussian logits.

    With ``p = softmax(mu)`` and ``c = sum_i p_i S_ii - p^T S p``, the Hessian of ``p_k`` gives
    ``E[p_k(f)] ~= p_k + p_k ((e_k - p)^T S (e_k - p) - c) / 2``; the corrections sum to 0 over ``k``.  The
    result is clipped at 0 and renormalised (matters only for logit variances of order 1 and above).
    """
    mean = outputs.mean
    p = jax.nn.softmax(mean, axis=-1)
    var = outputs.variance
    if outputs.is_full:
        sp = jnp.einsum("nij,nj->ni", outputs.cov, p)
    else:
        sp = outputs.cov * p
    psp = jnp.sum(p * sp, axis=-1, keepdims=True)
    c = jnp.sum(p * var, axis=-1, keepdims=True) - psp
    probs = p + 0.5 * p * (var - 2.0 * sp + psp - c)
    probs = jnp.maximum(probs, 0.0)
    return probs / probs.sum(-1, keepdims=True)
