"""Test problems with exact answers, as NumPyro models.

* :func:`funnel` - Neal's funnel (Neal 2003): ``v ~ N(0, 3)``, ``x_i | v ~ N(0, e^{v/2})``,
  ``i = 1..dim-1``; the scale of ``x`` spans orders of magnitude along ``v``.
* :func:`correlated_gaussian` - ``x ~ N(0, S)`` with unit variances and correlation ``rho``
  between every pair.
* :func:`stochastic_volatility` - the stochastic-volatility model of the Stan User's Guide
  (Kim, Shephard & Chib 1998), centered or not, on returns simulated by
  :func:`stochastic_volatility_data` (no exact draws: a long NUTS run of the non-centered form is
  the reference).

:func:`exact_draws` gives independent draws of either, shaped like a posteriordb
reference ``{Stan name: (chains, draws)}``, for :func:`adapters.metrics.reference_score`.
"""

from __future__ import annotations

import jax
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


def stochastic_volatility_data(
    num_steps: int = 100, mu: float = -1.0, phi: float = 0.95, sigma: float = 0.25, seed: int = 0
) -> np.ndarray:
    """Returns ``y`` ``(num_steps,)`` simulated from :func:`stochastic_volatility` at ``(mu, phi, sigma)``."""
    check_positive_int("num_steps", num_steps)
    rng = np.random.default_rng(seed)
    h = np.empty(num_steps)
    h[0] = mu + sigma / np.sqrt(1 - phi**2) * rng.normal()
    for t in range(1, num_steps):
        h[t] = mu + phi * (h[t - 1] - mu) + sigma * rng.normal()
    return rng.normal(size=num_steps) * np.exp(h / 2)


def stochastic_volatility(y: np.ndarray | jax.Array, centered: bool = True) -> None:
    """Stochastic volatility (Stan User's Guide, "Stochastic volatility models"; Kim, Shephard & Chib 1998).

    ``mu ~ Cauchy(0, 10)``, ``phi ~ Uniform(-1, 1)``, ``sigma ~ HalfCauchy(5)``,
    ``h_1 ~ N(mu, sigma / sqrt(1 - phi^2))``, ``h_t ~ N(mu + phi (h_{t-1} - mu), sigma)``,
    ``y_t ~ N(0, exp(h_t / 2))``, ``t = 1..T`` with ``T = len(y)``.  ``centered``: the site ``h`` is
    the log volatility itself, whose scale follows ``sigma`` (a funnel between ``sigma`` and ``h``);
    otherwise ``h_std ~ N(0, 1)^T`` and ``h`` is a deterministic site.
    """
    y = jnp.asarray(y)
    num_steps = y.shape[0]
    mu = numpyro.sample("mu", dist.Cauchy(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(5.0))
    stationary_sd = sigma / jnp.sqrt(1 - phi**2)
    if centered:
        h = numpyro.sample("h", dist.ImproperUniform(dist.constraints.real_vector, (), (num_steps,)))
        numpyro.factor("h_first", dist.Normal(mu, stationary_sd).log_prob(h[0]))
        numpyro.factor("h_rest", dist.Normal(mu + phi * (h[:-1] - mu), sigma).log_prob(h[1:]).sum())
    else:
        h_std = numpyro.sample("h_std", dist.Normal(0.0, 1.0).expand([num_steps]).to_event(1))

        def step(previous, noise):
            current = mu + phi * (previous - mu) + sigma * noise
            return current, current

        first = mu + stationary_sd * h_std[0]
        _, rest = jax.lax.scan(step, first, h_std[1:])
        h = numpyro.deterministic("h", jnp.concatenate([first[None], rest]))
    numpyro.sample("y", dist.Normal(0.0, jnp.exp(h / 2)), obs=y)


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
