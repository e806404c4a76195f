"""Helpers shared by the NumPyro ports."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def as_float(x) -> jax.Array:
    """Data as an array of JAX's default float type (float32, or float64 under x64)."""
    return jnp.asarray(x, dtype=jax.dtypes.canonicalize_dtype(np.float64))


def normal_regression(name: str, x, y, N: int, sigma_prior=None) -> None:
    """Stan's ``y ~ normal(x * beta, sigma)`` over ``N`` data, ``x`` of shape ``(N, k)``.

    Sites ``beta`` (flat on R^k: Stan gives it no prior), ``sigma`` (``sigma_prior``; flat on
    ``(0, inf)`` when ``None``) and the observed ``name``; ``x`` and ``y`` are cast by :func:`as_float`.
    """
    x, y = as_float(x), as_float(y)
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (x.shape[-1],)))
    if sigma_prior is None:
        sigma_prior = dist.ImproperUniform(constraints.positive, (), ())
    sigma = numpyro.sample("sigma", sigma_prior)
    with numpyro.plate("N", N):
        numpyro.sample(name, dist.Normal(x @ beta, sigma), obs=y)
