"""Test problems with exact answers, as NumPyro models.

* :func:`funnel` - Neal's funnel (Neal 2003): ``v ~ N(0, 3)``, ``x_i | v ~ N(0, e^{v/2})``,
  ``i = 1..dim-1``; the scale of ``x`` spans orders of magnitude along ``v``.
* :func:`correlated_gaussian` - ``x ~ N(0, S)`` with unit variances and correlation ``rho``
  between every pair.

:func:`exact_draws` gives independent draws of either, shaped like a posteriordb
reference ``{Stan name: (chains, draws)}``, for :func:`adapters.metrics.reference_score`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from adapters.target import stan_names
from adapters.validation import check_positive_int


def funnel(dim: int = 10) -> None:
    """Neal's funnel in ``dim`` dimensions (sites ``v`` and ``x`` of length ``dim - 1``)."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim - 1]).to_event(1))


def correlated_gaussian(dim: int = 2, rho: float = 0.95) -> None:
    """``x ~ N(0, (1 - rho) I + rho 11^T)`` in ``dim`` dimensions (site ``x``)."""
    covariance = (1 - rho) * jnp.eye(dim) + rho * jnp.ones((dim, dim))
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(dim), covariance_matrix=covariance))


def exact_draws(problem: str, dim: int, num_draws: int = 10_000, seed: int = 0, rho: float = 0.95) -> dict:
    """Independent draws of ``"funnel"`` or ``"correlated_gaussian"`` as ``{name: (1, num_draws)}``."""
    check_positive_int("dim", dim)
    rng = np.random.default_rng(seed)
    if problem == "funnel":
        v = rng.normal(0.0, 3.0, num_draws)
        x = rng.normal(size=(num_draws, dim - 1)) * np.exp(v / 2)[:, None]
        columns = [v] + list(x.T)
        names = ["v"] + stan_names("x", (dim - 1,))
    elif problem == "correlated_gaussian":
        covariance = (1 - rho) * np.eye(dim) + rho * np.ones((dim, dim))
        x = rng.multivariate_normal(np.zeros(dim), covariance, num_draws)
        columns, names = list(x.T), stan_names("x", (dim,))
    else:
        raise ValueError(f"problem must be 'funnel' or 'correlated_gaussian', got {problem!r}")
    return {name: col[None] for name, col in zip(names, columns, strict=True)}
