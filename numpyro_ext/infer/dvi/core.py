"""DVI for a Bayesian MLP, pure: parameters, moment forward pass, KL, ELBO, predictions.

Wu et al. 2019 (arXiv:1810.03958).  q over the weights is mean-field Gaussian; the ELBO

    ELBO(q) = sum_i E_q[log p(y_i | x_i, w)] - KL(q || p)

is computed without sampling: the network's output moments come from
:mod:`numpyro_ext.infer.dvi.moments` (Sec. 3), the expected log-likelihood from
:mod:`numpyro_ext.infer.dvi.likelihoods`, the KL from :mod:`numpyro_ext.infer.dvi.priors` (Sec. 4).
The network is described by :class:`adapters.dvi.DVIConfig`; its variational parameters are
:class:`DVIParams` (a pytree of arrays, so ``jax.grad`` and optax apply directly).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapters.dvi import DVIConfig, check_dvi_data, check_param_shapes, minibatch_scale
from adapters.validation import check_positive
from numpyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    categorical_predictive_probabilities,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
    regression_predictive,
)
from numpyro_ext.infer.dvi.moments import GaussianMoments, linear_certain_moments, linear_moments, relu_moments
from numpyro_ext.infer.dvi.priors import empirical_bayes_kl, gaussian_kl

__all__ = [
    "DVIParams",
    "ELBOTerms",
    "LayerParams",
    "check_params",
    "dvi_elbo",
    "dvi_elbo_terms",
    "dvi_kl",
    "dvi_predict",
    "init_params",
    "mlp_moments",
]

Array = jax.Array


class LayerParams(NamedTuple):
    """q of one linear layer: ``W ~ N(weight_mean, exp(weight_log_std)^2)`` ``(d_in, d_out)`` and
    ``b ~ N(bias_mean, exp(bias_log_std)^2)`` ``(d_out,)``, entrywise independent."""

    weight_mean: Array
    weight_log_std: Array
    bias_mean: Array
    bias_log_std: Array

    @property
    def weight_var(self) -> Array:
        """``V = exp(2 weight_log_std)``."""
        return jnp.exp(2.0 * self.weight_log_std)

    @property
    def bias_var(self) -> Array:
        """``v = exp(2 bias_log_std)``."""
        return jnp.exp(2.0 * self.bias_log_std)


class DVIParams(NamedTuple):
    """All variational parameters: one :class:`LayerParams` per layer, and for
    ``likelihood="homoscedastic"`` the log noise variance ``(D,)`` (a point estimate; ``None`` otherwise)."""

    layers: tuple[LayerParams, ...]
    log_noise_variance: Array | None = None


class ELBOTerms(NamedTuple):
    """The ELBO's parts: ``expected_log_likelihood`` ``(n,)`` per datum and ``kl`` (scalar)."""

    expected_log_likelihood: Array
    kl: Array


def init_params(rng_key: Array, config: DVIConfig, *, init_std_ratio: float = 0.1, dtype=None) -> DVIParams:
    """Initial q for ``config``: weight means ``~ N(0, 2 / d_in)`` (He), bias means 0, every standard
    deviation ``init_std_ratio * sqrt(2 / d_in)``; homoscedastic log noise variances 0.

    ``dtype``: the parameters' float type (default: JAX's default float, float32 unless x64 is on).
    """
    if not isinstance(config, DVIConfig):
        raise TypeError(f"config must be an adapters.dvi.DVIConfig, got {type(config).__name__}")
    ratio = check_positive("init_std_ratio", init_std_ratio)
    dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
    # One draw for all weight means, sliced per layer: eager JAX compiles a random draw once per shape.
    shapes = list(zip(config.sizes[:-1], config.sizes[1:], strict=True))
    draws = jax.random.normal(rng_key, (sum(d_in * d_out for d_in, d_out in shapes),), dtype)
    layers, start = [], 0
    for d_in, d_out in shapes:
        std = (2.0 / d_in) ** 0.5
        log_std = math.log(ratio * std)
        layers.append(
            LayerParams(
                weight_mean=std * draws[start : start + d_in * d_out].reshape(d_in, d_out),
                weight_log_std=jnp.full((d_in, d_out), log_std, dtype),
                bias_mean=jnp.zeros((d_out,), dtype),
                bias_log_std=jnp.full((d_out,), log_std, dtype),
            )
        )
        start += d_in * d_out
    noise = jnp.zeros((config.num_targets,), dtype) if config.likelihood == "homoscedastic" else None
    return DVIParams(tuple(layers), noise)


def check_params(params: DVIParams, config: DVIConfig) -> None:
    """Raise a ``ValueError`` naming ``params`` when its layers' shapes do not match ``config.sizes``."""
    if not isinstance(params, DVIParams):
        raise TypeError(f"params must be a DVIParams (from init_params), got {type(params).__name__}")
    check_param_shapes(params.layers, params.log_noise_variance, config)


def mlp_moments(params: DVIParams, x: Array, config: DVIConfig) -> GaussianMoments:
    """Output moments of the network at certain inputs ``x`` ``(n, d_0)``: mean ``(n, d_L)`` and covariance
    ``(n, d_L, d_L)`` (``"full"``) or variances ``(n, d_L)`` (``"diag"``).

    First layer (L1)-(L2) with certain inputs, then ReLU (R1)-(R4) and a linear layer, layer by layer.  The first
    layer's units are independent (independent weight columns, certain inputs), so its ReLU moments are the exact
    diagonal ones (R1)-(R2) in either mode and full covariances start at the second linear layer: with one hidden
    layer, DVI and dDVI give the same output means and variances, both exact (DVI adds the output covariances).
    """
    check_params(params, config)
    check_dvi_data(config, x)
    full = config.covariance == "full"
    first = params.layers[0]
    # covariance matrices only for a network without hidden layers (otherwise the next linear layer makes them)
    first_full = full and config.num_layers == 1
    moments = linear_certain_moments(
        x, first.weight_mean, first.weight_var, first.bias_mean, first.bias_var, full=first_full
    )
    for layer in params.layers[1:]:
        moments = linear_moments(
            relu_moments(moments), layer.weight_mean, layer.weight_var, layer.bias_mean, layer.bias_var, full=full
        )
    return moments


def dvi_kl(params: DVIParams, config: DVIConfig) -> Array:
    """``KL(q || p)`` summed over all weight matrices and bias vectors: (K1) with ``config.prior_variance``
    (``prior="gaussian"``) or (K1) at the empirical-Bayes optimum (K2), one ``s*`` per tensor."""
    total = jnp.zeros((), params.layers[0].weight_mean.dtype)
    for i, layer in enumerate(params.layers):
        for mean, var in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var)):
            if config.prior == "gaussian":
                total = total + gaussian_kl(mean, var, config.prior_variance[i])
            else:
                total = total + empirical_bayes_kl(mean, var, config.eb_alpha, config.eb_beta(i))
    return total


def dvi_elbo_terms(params: DVIParams, x: Array, y: Array, config: DVIConfig) -> ELBOTerms:
    """The expected log-likelihood of each datum ``(n,)`` and the KL (scalar), without sampling."""
    check_dvi_data(config, x, y)
    outputs = mlp_moments(params, x, config)
    if config.likelihood == "heteroscedastic":
        ell = heteroscedastic_expected_log_likelihood(outputs, y)
    elif config.likelihood == "homoscedastic":
        ell = homoscedastic_expected_log_likelihood(outputs, y, params.log_noise_variance)
    else:
        ell = categorical_expected_log_likelihood(outputs, y)
    return ELBOTerms(ell, dvi_kl(params, config))


def dvi_elbo(
    params: DVIParams,
    x: Array,
    y: Array,
    config: DVIConfig,
    *,
    num_data: int | None = None,
    kl_weight: float | Array = 1.0,
) -> Array:
    """The deterministic ELBO ``(N / n) sum_i E_q[log p(y_i | x_i, w)] - kl_weight KL(q || p)`` (scalar).

    ``x`` ``(n, d_0)``, ``y`` ``(n,)``/``(n, D)`` (integer labels ``(n,)`` for ``"categorical"``): a
    minibatch of a data set of ``num_data = N`` points (default ``n``: the whole data set).  ``kl_weight``
    (``lambda`` in [0, 1]) is the paper's KL warm-up factor; 1 gives the ELBO.  Maximise it (``-dvi_elbo``
    is the loss).
    """
    scale = minibatch_scale(jnp.shape(x)[0], num_data, kl_weight)
    terms = dvi_elbo_terms(params, x, y, config)
    return scale * terms.expected_log_likelihood.sum() - kl_weight * terms.kl


def dvi_predict(params: DVIParams, x: Array, config: DVIConfig) -> tuple[Array, Array]:
    """Predictive mean and variance of ``y`` at ``x`` ``(n, d_0)``, in closed form.

    Regression: ``(n, D)`` each, ``E[y] = mu_m`` and ``Var(y) = S_mm + E[noise variance]``
    (:func:`~numpyro_ext.infer.dvi.likelihoods.regression_predictive`).  Categorical: the class
    probabilities ``P`` ``(n, K)`` (second-order approximation of ``E[softmax(f)]``) and ``P (1 - P)``, the
    mean and variance of the one-hot label.
    """
    outputs = mlp_moments(params, x, config)
    if config.likelihood == "categorical":
        probs = categorical_predictive_probabilities(outputs)
        return probs, probs * (1.0 - probs)
    return regression_predictive(outputs, config.likelihood, params.log_noise_variance)
