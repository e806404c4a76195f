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
import numpy as np
from jax.flatten_util import ravel_pytree

from adapters.mi import check_joint_sites
from adapters.validation import check_site_distribution

__all__ = [
    "FlatModel",
    "JointModel",
    "check_continuous_latents",
    "check_latent_samples",
    "discrete_latent_sites",
    "flat_model",
    "joint_model",
    "trace_model",
    "validate_model",
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


# ---------------------------------------------------------------------------------------
# Validation at the door (once, on concrete arguments, outside jit)
# ---------------------------------------------------------------------------------------
def _check_site(name: str, site: dict, algorithm: str) -> None:
    """NumPyro's ``Distribution.validate_args`` on one sample site, through the backend-free
    :func:`adapters.validation.check_site_distribution` (the Pyro twin's words)."""
    from numpyro.distributions import constraints
    from numpyro.distributions.util import lazy_property

    check_site_distribution(
        algorithm,
        name,
        site["fn"],
        site["value"],
        site["is_observed"],
        holds=lambda constraint, x: np.asarray(constraint(x)),
        is_dependent=constraints.is_dependent,
        derived_type=lazy_property,
    )


def validate_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str) -> dict:
    """Run ``model`` once (seed 0) and check every sample site's distribution parameters against their
    constraints, and every observed value against its support; return the trace.

    NumPyro's ``MCMC`` refuses such a model at initialisation (``validate_args``: "Normal distribution
    got invalid scale parameter"); an algorithm that evaluates the density inside ``jit``, where
    validation is skipped, sees NaN or ``-inf`` instead and runs on.  Call this on concrete
    arguments before jitting; the checks are the same as :func:`pyro_ext.infer.model_util.validate_model`'s.
    """
    import numpyro

    with numpyro.validation_enabled(False):  # our own checks, so both backends word the error alike
        trace = trace_model(model, model_args, model_kwargs)
    for name, site in trace.items():
        if site["type"] == "sample":
            _check_site(name, site, algorithm)
    return trace


# ---------------------------------------------------------------------------------------
# A joint p(z) p(x | z) as the three functions of the MI bounds
# ---------------------------------------------------------------------------------------
class JointModel(NamedTuple):
    """A model's joint ``p(z) p(x | z)`` as functions of one flat sample, for :mod:`numpyro_ext.infer.ais_mi`.

    ``z`` ``(dz,)`` is the ``latent`` sites' values in the unconstrained space (sites in the
    given order, each raveled; ``I(x; z)`` does not change under a bijection of ``z``), ``x``
    ``(dx,)`` the ``observed`` sites' values raveled.  ``sample_joint(rng_key, n) -> (x (n, dx),
    z (n, dz))``; ``log_prior(z)`` is ``sum_latent log p(z_s | parents)`` plus the transforms'
    log-Jacobians; ``log_likelihood(x, z) = sum_observed log p(x_s | parents)``.
    """

    latent: list[str]
    observed: list[str]
    sample_joint: Callable[[Array, int], tuple[Array, Array]]
    log_prior: Callable[[Array], Array]
    log_likelihood: Callable[[Array, Array], Array]


def joint_model(
    model: Callable,
    latent: Any,
    observed: Any,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    algorithm: str = "the MI bound",
) -> JointModel:
    """:class:`JointModel` of ``model`` run with ``model_args``/``model_kwargs`` (the observed sites
    left without data, so the model samples them), after :func:`validate_model`.

    The latent sites must not depend on the observed ones (``p(z)`` is annealed from, so it must be
    normalised on its own): checked by evaluating ``log_prior`` next to two different ``x``.
    """
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    model_args = tuple(model_args)
    trace = validate_model(model, model_args, model_kwargs, algorithm)
    sites = {name: site["is_observed"] for name, site in trace.items() if site["type"] == "sample"}
    latent, observed = check_joint_sites(sites, latent, observed, algorithm)
    check_continuous_latents({name: trace[name] for name in latent}, algorithm)
    transforms = {name: biject_to(trace[name]["fn"].support) for name in latent}
    shapes = {name: jnp.shape(trace[name]["value"]) for name in latent + observed}
    free_shapes = {name: transforms[name].inverse_shape(shapes[name]) for name in latent}
    z_sizes = [int(np.prod(free_shapes[name])) for name in latent]
    x_sizes = [int(np.prod(shapes[name])) for name in observed]

    def flat(tr):
        z = jnp.concatenate([jnp.ravel(transforms[n].inv(tr[n]["value"])) for n in latent])
        x = jnp.concatenate([jnp.ravel(tr[n]["value"]).astype(z.dtype) for n in observed])
        return x, z

    def sample_joint(rng_key, n):
        def one(key):
            return flat(handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs))

        return jax.vmap(one)(jax.random.split(rng_key, n))

    def split(v, names, sizes, shape_of):
        parts = jnp.split(v, np.cumsum(sizes)[:-1])
        return {n: p.reshape(shape_of[n]) for n, p in zip(names, parts, strict=True)}

    def parts(x, z):
        free = split(z, latent, z_sizes, free_shapes)
        values = {n: transforms[n](u) for n, u in free.items()}
        data = split(x, observed, x_sizes, shapes)
        tr = handlers.trace(handlers.condition(model, {**values, **data})).get_trace(*model_args, **model_kwargs)

        def total(names):
            terms = []
            for n in names:
                log_p = jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"]))
                terms.append(log_p if tr[n].get("scale") is None else tr[n]["scale"] * log_p)
            return sum(terms)

        log_jacobian = sum(jnp.sum(transforms[n].log_abs_det_jacobian(free[n], values[n])) for n in latent)
        return total(latent) + log_jacobian, total(observed)

    x_ref, z_ref = flat(trace)

    def log_prior(z):
        return parts(x_ref.astype(z.dtype), z)[0]

    def log_likelihood(x, z):
        return parts(x, z)[1]

    @jax.jit  # the prior next to another x (shifted by one); one compiled check, not eager op-by-op dispatch
    def prior_next_to(x, z):
        return log_prior(z), parts(x.astype(z.dtype) + 1.0, z)[0]

    if not np.allclose(*(np.asarray(v) for v in prior_next_to(x_ref, z_ref)), equal_nan=True):
        raise ValueError(
            f"model: the latent sites {latent} depend on the observed sites {observed}; {algorithm} anneals from "
            "p(z), so the latent sites must come first and not depend on x"
        )
    return JointModel(latent, observed, sample_joint, log_prior, log_likelihood)
