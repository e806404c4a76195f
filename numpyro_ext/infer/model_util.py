"""Model plumbing in NumPyro: a model to a flat unconstrained log density, with the prior/likelihood split.

Written once for the NumPyro-side algorithms (:class:`numpyro_ext.infer.DRHMC`,
:class:`numpyro_ext.infer.AIS`); the torch twin is :mod:`pyro_ext.infer.model_util`.

A model's latent sites, mapped to the unconstrained space by NumPyro's biject-to transforms and
raveled into one vector ``x`` ``(d,)`` (sites in sorted order), have the log density::

    log p(x, y) = log p(x) + log L(x),      log p(x) = sum_latent log p(z | parents) + log |J|,

where ``log p(x)`` (the *prior*, Jacobians of the transforms included) comes from the model with
its observed sites hidden, and ``log L(x)`` (the *likelihood*: observed sites and
``numpyro.factor``) is the rest.  AIS anneals along ``log p(x) + beta log L(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = [
    "FlatModel",
    "check_continuous_latents",
    "check_latent_samples",
    "discrete_latent_sites",
    "flat_model",
    "trace_model",
]

Array = jax.Array


def trace_model(model: Callable, model_args: tuple, model_kwargs: dict, init_strategy: Callable | None = None):
    """The trace of one run of ``model`` seeded with 0, its latent values from ``init_strategy`` when given."""
    from numpyro import handlers

    seeded = handlers.seed(model, 0)
    if init_strategy is not None:
        seeded = handlers.substitute(seeded, substitute_fn=init_strategy)
    return handlers.trace(seeded).get_trace(*model_args, **model_kwargs)


def discrete_latent_sites(trace: Mapping[str, dict]) -> list[str]:
    """Names of the unobserved sample sites of ``trace`` whose support is discrete, in trace order."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
    ]


def check_continuous_latents(trace: Mapping[str, dict], algorithm: str) -> None:
    """Raise a ``ValueError`` naming the discrete latent sites of ``trace`` (gradient-based
    ``algorithm`` s such as HMC and AIS need every latent site continuous)."""
    discrete = discrete_latent_sites(trace)
    if discrete:
        raise ValueError(
            f"model: {algorithm} needs continuous latent sites, but {discrete} are discrete; "
            "marginalise them out (e.g. with logsumexp over their values) or observe them"
        )


class FlatModel(NamedTuple):
    """A model as functions of its flat unconstrained latent vector ``x`` ``(d,)``.

    ``latent`` (sorted) and ``observed`` site names; ``unravel(x) -> {site: unconstrained}``;
    ``log_joint``, ``log_prior`` (observed sites hidden; Jacobians included) and
    ``log_likelihood = log_joint - log_prior``, each ``x -> scalar``; ``sample_prior(rng_key) -> x``
    (a prior draw, unconstrained); ``constrain(x) -> {site: value}`` (deterministic sites
    included) and ``unconstrain({latent site: constrained value}) -> x``.
    """

    latent: list[str]
    observed: list[str]
    unravel: Callable[[Array], dict]
    log_joint: Callable[[Array], Array]
    log_prior: Callable[[Array], Array]
    log_likelihood: Callable[[Array], Array]
    sample_prior: Callable[[Array], Array]
    constrain: Callable[[Array], dict]
    unconstrain: Callable[[Mapping[str, Any]], Array]


def flat_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str) -> FlatModel:
    """:class:`FlatModel` of ``model`` at these arguments, after checking that its latent sites
    are continuous (:func:`check_continuous_latents`) and that it has at least one (errors name ``algorithm``)."""
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    trace = trace_model(model, model_args, model_kwargs)
    sample_sites = {name: site for name, site in trace.items() if site["type"] == "sample"}
    latent = sorted(name for name, site in sample_sites.items() if not site["is_observed"])
    observed = [name for name, site in sample_sites.items() if site["is_observed"]]
    check_continuous_latents({name: sample_sites[name] for name in latent}, algorithm)
    if not latent:
        raise ValueError(f"model: {algorithm} needs at least one latent sample site, the model has none")
    prototype = unconstrain_fn(model, model_args, model_kwargs, {k: trace[k]["value"] for k in latent})
    _, unravel = ravel_pytree(prototype)
    # The prior: the model with its observed sites (and factors) hidden, so its potential is
    # -sum log p(latent | parents) minus the Jacobians of the unconstraining transforms.
    prior_model = handlers.block(model, hide=observed)

    def log_joint(x):
        return -potential_energy(model, model_args, model_kwargs, unravel(x))

    def log_prior(x):
        return -potential_energy(prior_model, model_args, model_kwargs, unravel(x))

    def log_likelihood(x):
        return log_joint(x) - log_prior(x)

    def unconstrain(values):
        return ravel_pytree(unconstrain_fn(model, model_args, model_kwargs, values))[0]

    def sample_prior(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        return unconstrain({k: tr[k]["value"] for k in latent})

    def constrain(x):
        return constrain_fn(model, model_args, model_kwargs, unravel(x), return_deterministic=True)

    return FlatModel(
        latent, observed, unravel, log_joint, log_prior, log_likelihood, sample_prior, constrain, unconstrain
    )


def check_latent_samples(samples: Any, latent: list[str], name: str = "posterior_samples") -> dict[str, Array]:
    """``samples`` as a dict of arrays of the ``latent`` sites; the error names what is missing."""
    if not isinstance(samples, Mapping):
        raise ValueError(f"{name} must be a dict of constrained latent sites {latent}, got {type(samples).__name__}")
    missing = [k for k in latent if k not in samples]
    if missing:
        raise ValueError(f"{name} is missing the latent sites {missing} (expected {latent})")
    return {k: jnp.asarray(samples[k]) for k in latent}
