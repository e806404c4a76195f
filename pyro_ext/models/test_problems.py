"""Test problems with exact answers, as Pyro models (twins of :mod:`numpyro_ext.models.test_problems`).

* :func:`funnel` - Neal's funnel: ``v ~ N(0, 3)``, ``x_i | v ~ N(0, e^{v/2})``, ``i = 1..dim-1``.
* :func:`correlated_gaussian` - ``x ~ N(0, (1 - rho) I + rho 11^T)``.

Exact draws of both are :func:`numpyro_ext.models.test_problems.exact_draws`'s (numpy only).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


def funnel(dim: int = 10) -> None:
    """Neal's funnel in ``dim`` dimensions (sites ``v`` and ``x`` of length ``dim - 1``)."""
    v = pyro.sample("v", dist.Normal(torch.tensor(0.0), 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(dim - 1), torch.exp(v / 2)).to_event(1))


def correlated_gaussian(dim: int = 2, rho: float = 0.95) -> None:
    """``x ~ N(0, (1 - rho) I + rho 11^T)`` in ``dim`` dimensions (site ``x``)."""
    covariance = (1 - rho) * torch.eye(dim) + rho * torch.ones(dim, dim)
    pyro.sample("x", dist.MultivariateNormal(torch.zeros(dim), covariance_matrix=covariance))
