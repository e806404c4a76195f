"""Helpers shared by the NumPyro ports."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def positive_sites(model, **data) -> list[str]:
    """Names of ``model``'s latent sample sites whose support is positive (lower bound >= 0).

    Positive: ``positive``, ``nonnegative``, ``unit_interval``, any interval or
    ``greater_than`` with a constant lower bound >= 0, ``positive_ordered_vector`` and
    ``simplex`` (also under ``independent``).  The model is traced abstractly
    (``jax.eval_shape``), so an ODE port solves nothing; improper sites get
    ``init_to_uniform`` values, as NumPyro's own initialisation gives them.
    """
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_uniform

    found = []

    def trace_supports():
        seeded = handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_uniform)
        trace = handlers.trace(seeded).get_trace(**data)
        found.extend(
            name
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"] and _is_positive(site["fn"].support)
        )
        return jnp.zeros(())

    jax.eval_shape(trace_supports)
    return found


def _is_positive(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.positive_ordered_vector or support is constraints.simplex:
        return True
    lower = getattr(support, "lower_bound", None)
    # a bound that depends on another latent is a tracer here: its sign is not known
    return lower is not None and not isinstance(lower, jax.core.Tracer) and bool(np.all(np.asarray(lower) >= 0))


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
