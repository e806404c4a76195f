"""Model plumbing in torch: a Pyro model as a flat unconstrained log density, batched over chains.

Shared by the Pyro algorithms that run on a model's unconstrained space (AIS, DR-HMC, ...);
the JAX twin is :mod:`numpyro_ext.infer.model_util`.

A model with latent sample sites ``s`` (each of constrained value ``v_s``) and observed sites
``o`` is run on a flat unconstrained vector ``x`` ``(d,)``: ``x`` is split into the sites'
unconstrained values ``u_s`` (sorted by site name, each flattened), ``v_s = T_s(u_s)`` with
``T_s = biject_to(support_s)`` (as :func:`pyro.infer.mcmc.util.initialize_model` does), and::

    log pi_0(x) = sum_s [log p(v_s | parents) + log |det J_{T_s}(u_s)|]     (the prior, Jacobians included)
    log L(x)    = sum_o log p(o | parents)                                 (the likelihood, ``pyro.factor`` too)

so ``log pi_0 + log L`` is the unnormalised log posterior on ``R^d``.  The batched functions take
``(K, d)`` and return ``(K,)``; they run one conditioned trace of the model per chain through
``torch.func.vmap``, so the model is written for one draw (as for NUTS: no Python control flow
on latent values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import pyro
import torch

from adapters.mi import check_joint_sites
from adapters.validation import check_site_distribution

__all__ = [
    "FlatModel",
    "JointModel",
    "check_continuous",
    "check_continuous_latents",
    "flat_model",
    "flatten_sites",
    "joint_model",
    "target_model",
    "unvalidated",
    "validate_model",
    "vmap_log_density",
]

Tensor = torch.Tensor


def unvalidated(fn: Callable) -> Callable:
    """``fn`` run under ``pyro.validation_enabled(False)`` (a point outside a support gives ``-inf``/NaN, no error)."""

    def call(*xs: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            return fn(*xs)

    return call


def vmap_log_density(fn: Callable, name: str = "log_likelihood_fn") -> Callable:
    """A one-sample log density ``fn(x (d,)) -> ()`` (more arguments allowed) as a batched one
    ``(K, d) -> (K,)``, through ``torch.func.vmap``.

    Runs under ``pyro.validation_enabled(False)``: the argument and support checks of torch
    distributions are data-dependent control flow, which ``vmap`` cannot batch (and a point
    outside the support must give ``-inf``/NaN, rejected by the sampler, not an exception).
    A function ``vmap`` cannot batch raises a ValueError that names it (``name``).
    """
    batched = torch.func.vmap(fn)

    def log_density(*xs: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            try:
                return batched(*xs)
            except RuntimeError as err:
                if "vmap" not in str(err) and "Batching rule" not in str(err):
                    raise
                raise ValueError(
                    f"{name} must be a torch function of one sample that torch.func.vmap can batch (no Python "
                    f"control flow on tensor values, no .item()); vmap failed with: {err}. Or pass a batched "
                    "function (K, d) -> (K,) with vectorized=True"
                ) from err

    return log_density


def _sample_sites(trace: Any) -> dict[str, dict]:
    from pyro.poutine.util import site_is_subsample

    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)  # a plate's index site is not a latent
    }


def check_continuous_latents(trace: Any, algorithm: str, sites: list[str] | None = None) -> None:
    """Raise a ValueError naming the discrete latent sites of a Pyro ``trace`` (``algorithm`` needs none);
    with ``sites``, only those sites are the latent ones (the others may be discrete).

    The message is the NumPyro twin's (:func:`numpyro_ext.infer.model_util.check_continuous_latents`):
    ``model: <algorithm> needs continuous latent sites, but [...] are discrete; marginalise them
    out (e.g. with logsumexp over their values) or observe them``.
    """
    discrete = [
        name
        for name, site in _sample_sites(trace).items()
        if not site["is_observed"] and site["fn"].support.is_discrete and (sites is None or name in sites)
    ]
    if discrete:
        raise ValueError(
            f"model: {algorithm} needs continuous latent sites, but {discrete} are discrete; "
            "marginalise them out (e.g. with logsumexp over their values) or observe them"
        )


class FlatModel(NamedTuple):
    """A Pyro model on a flat unconstrained ``R^d`` (module docstring), for given model arguments.

    ``latent`` the latent site names in their order in ``x``, ``observed`` the observed ones (with
    the deterministic sites, which Pyro records as observed ``Delta`` sites of log probability 0);
    ``log_prior`` and ``log_likelihood`` batched ``(K, d) -> (K,)`` (one vmapped trace per
    position serves both); ``constrain(x (K, d)) -> {site: (K, ...)}`` (deterministic sites
    included); ``unconstrain({site: (K, ...)}) -> (K, d)`` for constrained latent values;
    ``sample_prior(K) -> (K, d)`` prior draws (Pyro's own sampling, one model run each).
    """

    latent: list[str]
    observed: list[str]
    log_prior: Callable[[Tensor], Tensor]
    log_likelihood: Callable[[Tensor], Tensor]
    constrain: Callable[[Tensor], dict]
    unconstrain: Callable[[Any], Tensor]
    sample_prior: Callable[[int], Tensor]


def _site_log_prob(site: dict) -> Tensor:
    from pyro.distributions.util import scale_and_mask

    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"], site["mask"]).sum()


class _Layout(NamedTuple):
    """Where each latent site lies in the flat ``x``: its transform ``biject_to(support)``, its
    unconstrained shape and size, and its constrained shape; the deterministic sites' names and
    the dtype of the prototype's unconstrained values."""

    latent: list[str]
    observed: list[str]
    deterministic: list[str]
    transforms: dict[str, Any]
    shapes: dict[str, tuple]
    sizes: list[int]
    site_shapes: dict[str, tuple]
    dtype: torch.dtype


def _layout(trace: Any, algorithm: str) -> _Layout:
    from torch.distributions import biject_to

    sample_sites = _sample_sites(trace)
    latent = sorted(name for name, site in sample_sites.items() if not site["is_observed"])
    observed = [name for name, site in sample_sites.items() if site["is_observed"]]
    check_continuous_latents(trace, algorithm)
    if not latent:
        raise ValueError(f"model: {algorithm} needs at least one latent sample site, the model has none")
    transforms = {name: biject_to(sample_sites[name]["fn"].support) for name in latent}
    prototype = {name: transforms[name].inv(sample_sites[name]["value"].detach()) for name in latent}
    shapes = {name: tuple(prototype[name].shape) for name in latent}
    deterministic = [
        name for name, site in trace.nodes.items() if site["type"] == "sample" and site["infer"].get("_deterministic")
    ]
    return _Layout(
        latent,
        observed,
        deterministic,
        transforms,
        shapes,
        [math.prod(shapes[name]) for name in latent],
        {name: tuple(sample_sites[name]["value"].shape) for name in latent},
        prototype[latent[0]].dtype,
    )


def _unconstrain(layout: _Layout, samples: Any) -> Tensor:
    """Constrained latent draws ``{site: (K, ...)}`` as flat unconstrained positions ``(K, d)``."""
    latent = layout.latent
    if not isinstance(samples, Mapping):
        raise ValueError(
            f"posterior_samples must be a dict of constrained latent sites {latent}, got {type(samples).__name__}"
        )
    missing = [k for k in latent if k not in samples]
    if missing:
        raise ValueError(f"posterior_samples is missing the latent sites {missing} (expected {latent})")
    parts = []
    for name in latent:
        value = torch.as_tensor(samples[name], dtype=layout.dtype)
        num = value.shape[0] if value.dim() > 0 else 0
        site_shape = layout.site_shapes[name]
        if value.dim() == 0 or tuple(value.shape[1:]) != site_shape:
            raise ValueError(
                f"posterior_samples[{name!r}] must have shape (num_chains, *{site_shape}), got {tuple(value.shape)}"
            )
        parts.append(layout.transforms[name].inv(value).reshape(num, -1))
    return torch.cat(parts, dim=-1)


def flat_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str = "AIS") -> FlatModel:
    """``model`` (run with ``model_args``, ``model_kwargs``) as a :class:`FlatModel`.

    One prototype trace finds the sites and their shapes; a discrete latent site or a model
    without latent sites is a ValueError (``algorithm`` names the caller in the message).
    """
    from pyro import poutine

    layout = _layout(poutine.trace(model).get_trace(*model_args, **model_kwargs), algorithm)
    latent, transforms = layout.latent, layout.transforms

    def conditioned(x):
        parts = torch.split(x, layout.sizes, dim=-1)
        unconstrained = {name: part.reshape(layout.shapes[name]) for name, part in zip(latent, parts, strict=True)}
        values = {name: transforms[name](u) for name, u in unconstrained.items()}
        log_jacobian = sum(
            (transforms[name].log_abs_det_jacobian(unconstrained[name], values[name]).sum() for name in latent),
            torch.zeros((), dtype=x.dtype),
        )
        tr = poutine.trace(poutine.condition(model, values)).get_trace(*model_args, **model_kwargs)
        return tr, log_jacobian

    def components_one(x):
        tr, log_jacobian = conditioned(x)
        log_prior = log_jacobian + sum(_site_log_prob(tr.nodes[name]) for name in latent)
        log_likelihood = sum(
            (_site_log_prob(tr.nodes[name]) for name in layout.observed), torch.zeros((), dtype=x.dtype)
        )
        return torch.stack([log_prior.to(x.dtype), log_likelihood.to(x.dtype)])

    components = vmap_log_density(components_one, "model")
    cache: dict[str, Any] = {}

    def both(x):
        # the prior and the likelihood of one position come from one batched trace
        if cache.get("x") is not x:
            cache["x"], cache["value"] = x, components(x)
        return cache["value"]

    def constrain_one(x):
        tr, _ = conditioned(x)
        return {name: tr.nodes[name]["value"] for name in latent + layout.deterministic}

    def constrain(positions):
        with torch.no_grad(), pyro.validation_enabled(False):
            return torch.func.vmap(constrain_one)(positions.to(layout.dtype))

    def sample_prior(num):
        draws = []
        for _ in range(num):  # Pyro's own sampling, one model run per chain (once per run)
            tr = poutine.trace(model).get_trace(*model_args, **model_kwargs)
            draws.append(torch.cat([transforms[k].inv(tr.nodes[k]["value"].detach()).reshape(-1) for k in latent]))
        return torch.stack(draws).to(layout.dtype)

    return FlatModel(
        latent,
        layout.observed,
        lambda x: both(x)[:, 0],
        lambda x: both(x)[:, 1],
        constrain,
        lambda samples: _unconstrain(layout, samples),
        sample_prior,
    )


# ---------------------------------------------------------------------------------------
# Validation at the door (once per run, before any batched evaluation)
# ---------------------------------------------------------------------------------------
def _check_site(name: str, site: dict, algorithm: str) -> None:
    """torch's ``Distribution`` argument validation on one sample site, through the backend-free
    :func:`adapters.validation.check_site_distribution` (the NumPyro twin's words)."""
    from torch.distributions import constraints
    from torch.distributions.utils import lazy_property

    def holds(constraint, x):
        return torch.as_tensor(constraint.check(torch.as_tensor(x))).detach().cpu().numpy()

    check_site_distribution(
        algorithm,
        name,
        site["fn"],
        site["value"],
        site["is_observed"],
        holds=holds,
        is_dependent=constraints.is_dependent,
        derived_type=lazy_property,
    )


def validate_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str) -> Any:
    """Run ``model`` once and check every sample site's distribution parameters against their
    constraints and every observed value against its support; return the trace.

    The checks (and the message) are :func:`numpyro_ext.infer.model_util.validate_model`'s, made
    with Pyro's validation off so that torch's own (differently worded) error does not come first,
    and on a forked random generator (the caller's stream is left as it was).
    """
    from pyro import poutine

    # the check draws from the prior: on a forked generator, so a seeded run gives the numbers it gave unchecked
    with pyro.validation_enabled(False), torch.random.fork_rng(devices=[]):
        trace = poutine.trace(model).get_trace(*model_args, **model_kwargs)
    for name, site in _sample_sites(trace).items():
        if not site["infer"].get("_deterministic"):
            _check_site(name, site, algorithm)
    return trace


# ---------------------------------------------------------------------------------------
# A joint p(z) p(x | z) as the three functions of the MI bounds
# ---------------------------------------------------------------------------------------
class JointModel(NamedTuple):
    """A model's joint ``p(z) p(x | z)`` as functions of one flat sample, for :mod:`pyro_ext.infer.ais_mi`.

    The twin of :class:`numpyro_ext.infer.model_util.JointModel`: ``z`` ``(dz,)`` the ``latent``
    sites unconstrained and raveled, ``x`` ``(dx,)`` the ``observed`` sites raveled;
    ``sample_joint(n) -> (x (n, dx), z (n, dz))`` (one model run per draw, torch's global
    generator); ``log_prior(z)`` (log-Jacobians included) and ``log_likelihood(x, z)`` of one
    sample, batched by ``torch.func.vmap``.
    """

    latent: list[str]
    observed: list[str]
    sample_joint: Callable[[int], tuple[Tensor, Tensor]]
    log_prior: Callable[[Tensor], Tensor]
    log_likelihood: Callable[[Tensor, Tensor], Tensor]


def joint_model(
    model: Callable,
    latent: Any,
    observed: Any,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    algorithm: str = "the MI bound",
) -> JointModel:
    """:class:`JointModel` of ``model`` run with ``model_args``/``model_kwargs`` (the observed sites
    left without data), after :func:`validate_model`; the checks and messages of
    :func:`numpyro_ext.infer.model_util.joint_model`."""
    from pyro import poutine
    from torch.distributions import biject_to

    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    model_args = tuple(model_args)
    trace = validate_model(model, model_args, model_kwargs, algorithm)
    sample_sites = {
        name: site for name, site in _sample_sites(trace).items() if not site["infer"].get("_deterministic")
    }
    sites = {name: site["is_observed"] for name, site in sample_sites.items()}
    latent, observed = check_joint_sites(sites, latent, observed, algorithm)
    check_continuous_latents(trace, algorithm, sites=latent)
    transforms = {name: biject_to(sample_sites[name]["fn"].support) for name in latent}
    shapes = {name: tuple(sample_sites[name]["value"].shape) for name in latent + observed}
    free_shapes = {name: tuple(transforms[name].inverse_shape(shapes[name])) for name in latent}
    z_sizes = [math.prod(free_shapes[name]) for name in latent]
    x_sizes = [math.prod(shapes[name]) for name in observed]
    dtype = transforms[latent[0]].inv(sample_sites[latent[0]]["value"]).dtype

    def flat(nodes):
        z = torch.cat([transforms[n].inv(nodes[n]["value"].detach()).reshape(-1) for n in latent])
        x = torch.cat([nodes[n]["value"].detach().reshape(-1).to(z.dtype) for n in observed])
        return x, z

    def sample_joint(num):
        draws = []
        with torch.no_grad():
            for _ in range(num):  # Pyro's own sampling, one model run per draw
                draws.append(flat(poutine.trace(model).get_trace(*model_args, **model_kwargs).nodes))
        if not draws:
            return torch.zeros(0, sum(x_sizes), dtype=dtype), torch.zeros(0, sum(z_sizes), dtype=dtype)
        return torch.stack([x for x, _ in draws]), torch.stack([z for _, z in draws])

    def split(v, names, sizes, shape_of):
        parts = torch.split(v, sizes, dim=-1)
        return {n: p.reshape(shape_of[n]) for n, p in zip(names, parts, strict=True)}

    def parts(x, z):
        free = split(z, latent, z_sizes, free_shapes)
        values = {n: transforms[n](u) for n, u in free.items()}
        data = split(x, observed, x_sizes, shapes)
        tr = poutine.trace(poutine.condition(model, {**values, **data})).get_trace(*model_args, **model_kwargs)
        log_jacobian = sum(
            (transforms[n].log_abs_det_jacobian(free[n], values[n]).sum() for n in latent),
            torch.zeros((), dtype=z.dtype),
        )
        log_prior = sum((_site_log_prob(tr.nodes[n]) for n in latent), torch.zeros((), dtype=z.dtype))
        log_likelihood = sum((_site_log_prob(tr.nodes[n]) for n in observed), torch.zeros((), dtype=z.dtype))
        return (log_prior + log_jacobian).to(z.dtype), log_likelihood.to(z.dtype)

    x_ref, z_ref = flat(trace.nodes)

    def log_prior(z):
        return parts(x_ref.to(z.dtype), z)[0]

    def log_likelihood(x, z):
        return parts(x, z)[1]

    with torch.no_grad(), pyro.validation_enabled(False):  # the prior next to another x (shifted by one)
        same = torch.allclose(log_prior(z_ref), parts(x_ref + 1.0, z_ref)[0], equal_nan=True)
    if not same:
        raise ValueError(
            f"model: the latent sites {latent} depend on the observed sites {observed}; {algorithm} anneals from "
            "p(z), so the latent sites must come first and not depend on x"
        )
    return JointModel(latent, observed, sample_joint, log_prior, log_likelihood)


# ---------------------------------------------------------------------------------------
# The model plumbing of the Pyro MCMC kernels (their shell: pyro_ext.infer.hmc_util.RecordingKernel)
# ---------------------------------------------------------------------------------------
class _FlatReal(pyro.distributions.ImproperUniform):
    """The flat density on ``R^d`` of a Target's site ``"x"``; ``sample`` is ``U(-2, 2)^d``, only for
    Pyro's initialisation strategies (which draw a value to learn the shape), never a posterior draw."""

    def sample(self, sample_shape=()):
        return torch.rand(torch.Size(sample_shape) + self.batch_shape + self.event_shape) * 4.0 - 2.0


def target_model(target: Any) -> Callable[[], None]:
    """A Pyro model of a Target of another backend: one unconstrained site ``"x"`` of length ``dim``."""
    logdensity = target.as_torch()

    def model() -> None:
        x = pyro.sample("x", _FlatReal(pyro.distributions.constraints.real_vector, (), (target.dim,)))
        pyro.factor("log_density", logdensity(x))

    model.__name__ = target.name
    return model


def check_continuous(algorithm: str, model: Callable, init_strategy: Callable, args: tuple, kwargs: dict) -> None:
    """Raise a ``ValueError`` naming ``model``'s discrete latent sites, if any (:func:`check_continuous_latents`).

    The trace is initialised like Pyro's HMC does (``init_strategy``, discrete sites drawn), so
    improper sites, which cannot be sampled, work; torch's random-number state is restored, so
    the check leaves the chain's draws alone.
    """
    from pyro.infer.autoguide.initialization import InitMessenger

    def init_fn(site):  # discrete sites get a draw, so they reach the trace and the message
        if site["fn"].support.is_discrete:
            return site["fn"].sample()
        return init_strategy(site)

    rng_state = pyro.util.get_rng_state()
    try:
        with pyro.poutine.block():
            trace = pyro.poutine.trace(InitMessenger(init_fn)(model)).get_trace(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng_state)
    check_continuous_latents(trace, algorithm)


def flatten_sites(z: dict[str, Tensor], sites: tuple[str, ...]) -> tuple[Tensor, Callable[[Tensor], dict]]:
    """``(x, unflatten)``: the sites' values raveled into one vector ``x`` ``(d,)`` in the order ``sites``
    (Pyro's mass-matrix block order), and the map from such a vector back to ``{site: tensor}``."""
    shapes = {name: z[name].shape for name in sites}
    sizes = [math.prod(shapes[name]) for name in sites]

    def unflatten(x: Tensor) -> dict[str, Tensor]:
        return {name: part.reshape(shapes[name]) for name, part in zip(sites, torch.split(x, sizes), strict=True)}

    return torch.cat([z[name].detach().reshape(-1) for name in sites]), unflatten
