"""MCVI: the Monte Carlo baseline of DVI, same network, same q, same prior (Wu et al. 2019, arXiv:1810.03958).

The paper compares DVI with "MCVI", variational inference whose expected log-likelihood is estimated by sampling
with the local reparameterisation trick (Kingma, Salimans & Welling 2015, arXiv:1506.02557): for a mean-field
Gaussian q and a given input ``h`` ``(d_in,)`` to a linear layer, the pre-activations are independent Gaussians

    (LR)  a_j ~ N(sum_i h_i mu_ij + mu_j, sum_i h_i^2 sigma_ij^2 + sigma_j^2),

so one draw of ``a`` per datum replaces a draw of the whole weight matrix (lower variance, ``O(n d)`` noise
instead of ``O(d_in d_out)`` shared across the batch).  Each hidden layer's ReLU is applied to the draw, which
becomes the next layer's (certain) input; the last layer's draw ``f`` enters ``log p(y | f)``.  The KL is
DVI's own closed form (:func:`~numpyro_ext.infer.dvi.core.dvi_kl`), so the two ELBOs have the same expectation
wherever DVI's moments are exact (no hidden layer, or one hidden layer with the diagonal outputs), and MCVI
differs only by its Monte Carlo noise.

``log p(y | f)`` at a drawn output is the closed-form expected log-likelihood of a point mass
(:class:`~numpyro_ext.infer.dvi.moments.GaussianMoments` with zero variance), which (G1) and (C1) give exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from adapters.dvi import DVIConfig, check_dvi_data, minibatch_scale
from adapters.validation import check_positive_int
from numpyro_ext.infer.dvi.core import DVIParams, check_params, dvi_kl
from numpyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
)
from numpyro_ext.infer.dvi.moments import GaussianMoments

__all__ = [
    "log_predictive_density",
    "mcvi_elbo",
    "mcvi_expected_log_likelihood",
    "output_log_likelihood",
    "sample_outputs",
]

Array = jax.Array


def sample_outputs(rng_key: Array, params: DVIParams, x: Array, config: DVIConfig) -> Array:
    """One draw of the network's outputs ``(n, d_L)`` at inputs ``x`` ``(n, d_0)``, by (LR) layer by layer.

    Each datum gets its own noise: the draws of two data are independent (q's weights are not shared between
    them), which is what makes the per-datum estimator below unbiased for the per-datum expectation.
    """
    h = jnp.asarray(x)
    keys = jax.random.split(rng_key, len(params.layers))
    for i, (key, layer) in enumerate(zip(keys, params.layers, strict=True)):
        mean = h @ layer.weight_mean + layer.bias_mean
        var = (h * h) @ layer.weight_var + layer.bias_var
        h = mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape, mean.dtype)
        if i < len(params.layers) - 1:
            h = jax.nn.relu(h)
    return h


def output_log_likelihood(outputs: Array, params: DVIParams, y: Array, config: DVIConfig) -> Array:
    """``log p(y_i | f_i)`` ``(n,)`` at given network outputs ``f`` ``(n, d_L)`` (e.g. one draw of
    :func:`sample_outputs`), summed over each datum's targets."""
    point = GaussianMoments(outputs, jnp.zeros_like(outputs))
    if config.likelihood == "heteroscedastic":
        return heteroscedastic_expected_log_likelihood(point, y)
    if config.likelihood == "homoscedastic":
        return homoscedastic_expected_log_likelihood(point, y, params.log_noise_variance)
    return categorical_expected_log_likelihood(point, y)


def mcvi_expected_log_likelihood(
    rng_key: Array, params: DVIParams, x: Array, y: Array, config: DVIConfig, num_samples: int = 1
) -> Array:
    """Monte Carlo estimate ``(n,)`` of ``E_q[log p(y_i | x_i, w)]``: the mean of ``log p(y_i | f_i)`` over
    ``num_samples`` draws of :func:`sample_outputs`.  Unbiased; its variance shrinks as ``1 / num_samples``."""
    num_samples = check_positive_int("num_samples", num_samples)
    check_params(params, config)
    check_dvi_data(config, x, y)

    def one(key: Array) -> Array:
        return output_log_likelihood(sample_outputs(key, params, x, config), params, y, config)

    return jnp.mean(jax.vmap(one)(jax.random.split(rng_key, num_samples)), axis=0)


def mcvi_elbo(
    rng_key: Array,
    params: DVIParams,
    x: Array,
    y: Array,
    config: DVIConfig,
    *,
    num_samples: int = 1,
    num_data: int | None = None,
    kl_weight: float | Array = 1.0,
) -> Array:
    """Unbiased estimate of the ELBO ``(N / n) sum_i E_q[log p(y_i | x_i, w)] - kl_weight KL(q || p)`` (scalar).

    Arguments as :func:`~numpyro_ext.infer.dvi.core.dvi_elbo`, plus the PRNG key and ``num_samples`` draws per
    datum.  Its expectation over the key is DVI's ELBO wherever DVI's output moments are exact.
    """
    scale = minibatch_scale(jnp.shape(x)[0], num_data, kl_weight)
    ell = mcvi_expected_log_likelihood(rng_key, params, x, y, config, num_samples)
    return scale * ell.sum() - kl_weight * dvi_kl(params, config)


def log_predictive_density(
    rng_key: Array, params: DVIParams, x: Array, y: Array, config: DVIConfig, num_samples: int = 1000
) -> Array:
    """Monte Carlo estimate ``(n,)`` of each test point's log predictive density ``log E_q[p(y_i | x_i, w)]``:
    ``log (1/S) sum_s p(y_i | f_is)`` with ``S = num_samples`` draws of :func:`sample_outputs` (the output's
    marginal at ``x_i`` is all a per-point density needs).  Consistent as ``S`` grows; its bias,
    ``-Var / (2 S E^2)`` to first order, is what the UCI protocol's "test log-likelihood" accepts too.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    check_params(params, config)
    check_dvi_data(config, x, y)

    def one(key: Array) -> Array:
        return output_log_likelihood(sample_outputs(key, params, x, config), params, y, config)

    draws = jax.lax.map(one, jax.random.split(rng_key, num_samples))
    return logsumexp(draws, axis=0) - math.log(num_samples)
