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

__all__ = ["FlatModel", "check_continuous_latents", "flat_model", "unvalidated", "vmap_log_density"]

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


def check_continuous_latents(trace: Any, algorithm: str) -> None:
    """Raise a ValueError naming the discrete latent sites of a Pyro ``trace`` (``algorithm`` needs none).

    The message is the NumPyro twin's (:func:`numpyro_ext.infer.model_util.check_continuous_latents`):
    ``model: <algorithm> needs continuous latent sites, but [...] are discrete; marginalise them
    out (e.g. with logsumexp over their values) or observe them``.
    """
    discrete = [
        name
        for name, site in _sample_sites(trace).items()
        if not site["is_observed"] and site["fn"].support.is_discrete
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
