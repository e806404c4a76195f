"""Per-datum ELBO terms of a plate, and the importance-weighted (Rényi) bound computed per datum (Pyro).

The twin of :mod:`numpyro_ext.infer.amortized.local_elbo`.  A model with global latents ``beta`` and local
latents ``z_i`` inside plate ``plate``, and a guide ``q(beta) prod_i q(z_i)`` (F-VI's ``AutoNormal``, A-VI's
``AutoAmortizedNormal``), has the ELBO

    ELBO = E_q(beta)[ log p(beta) - log q(beta) + sum_i E_q(z_i)[ l_i(beta, z_i) ] ],
    l_i(beta, z_i) = log p(x_i, z_i | beta) - log q(z_i)                                        (1)

(every site inside the plate contributes to its datum's ``l_i``).  :func:`per_datum_log_weights` draws one
``beta`` and ``K`` local draws per datum given it and returns the global term and ``l_i`` as a ``(K, m)``
tensor for the ``m`` data of the plate's (sub)sample.

:class:`LocalRenyiELBO` trains with the per-datum Rényi bound (Li & Turner, NeurIPS 2016, Eq. 5), given
``beta``:

    L_alpha = E_q(beta)[ log p(beta) - log q(beta) + (n / m) sum_{i in I} 1 / (1 - alpha)
              log (1 / K) sum_k exp((1 - alpha) l_i(beta, z_ik)) ],                                   (2)

``alpha = 0`` is the importance-weighted bound (IWAE, Burda, Grosse & Salakhutdinov, ICLR 2016, Eq. 8) of
each datum's ``log p(x_i | beta)``, the objective VI-HDS trains with (Roeder et al., ICML 2019, Sec. 3.3);
``alpha = 1`` is (1) with ``K`` local draws.  Pyro's own ``RenyiELBO`` weighs whole joint draws, so with
global latents its weights are products over all data and degenerate; (2) weighs each datum's local draws
given one global draw, so it works with subsampling and improves on the ELBO per datum.

How the ``K`` local draws are made: one plain run of the guide (replayed into the model) draws ``beta`` and
the plate's subsample and gives the global term; then the guide runs once more with ``beta`` and the
subsample replayed, inside an outer ``pyro.plate`` of size ``K`` at dim ``-(max_plate_nesting + 1)``, so the
``K`` local draws are one vectorized run (Pyro's ``vectorize_particles`` device).  The model must then
broadcast its local latents over that extra leading dim (index ``z[..., 1:]``, not ``z[1:]``), as Pyro's
vectorized particles require; ``vectorize=False`` loops over ``K`` plain runs instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from adapters.validation import check_positive_int

Tensor = torch.Tensor

#: The outer plate that vectorizes the ``K`` local draws per datum.
LOCAL_PARTICLES_PLATE = "_local_particles"


class PerDatumTerms(NamedTuple):
    """One global draw's terms of (1).

    ``global_term``: ``()``, ``log p - log q`` of every site outside the plate (each site's scale applied).
    ``local``: ``(K, m)``, ``l_i`` of (1) for ``K`` local draws of each of the ``m`` data, unscaled.
    ``scale``: ``()``, the scale of the plate's sites (``n / m`` for a subsampled plate), applied to ``sum_i``.
    ``indices``: ``(m,)``, the data the plate visited.
    """

    global_term: Tensor
    local: Tensor
    scale: Tensor
    indices: Tensor


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def run_guide_and_model(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    fixed: dict[str, Tensor],
    num_local_particles: int | None = None,
    max_plate_nesting: int = 0,
) -> tuple[Any, Any]:
    """``(model trace, guide trace)``: the guide run with the sites in ``fixed`` replayed (latent values, or a
    plate's indices under the plate's name), the model replayed against it.  ``num_local_particles``: both run
    inside an outer plate of that size at dim ``-(max_plate_nesting + 1)`` (``None``: no outer plate)."""
    fixed_trace = poutine.Trace()
    for name, value in fixed.items():
        fixed_trace.add_node(name, type="sample", is_observed=False, value=value, infer={})
    guide_fn = poutine.replay(guide, trace=fixed_trace) if fixed else guide

    def run() -> tuple[Any, Any]:
        guide_trace = poutine.trace(guide_fn).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    if num_local_particles is None:
        return run()
    with pyro.plate(LOCAL_PARTICLES_PLATE, num_local_particles, dim=-(max_plate_nesting + 1)):
        return run()


def _check_traces(model_trace: Any, guide_trace: Any, plate: str) -> None:
    if plate not in guide_trace.nodes or not site_is_subsample(guide_trace.nodes[plate]):
        plates = sorted(k for k, s in model_trace.nodes.items() if site_is_subsample(s))
        raise ValueError(f"plate: the guide has no plate named {plate!r} (the model's plates: {plates})")
    for name, site in guide_trace.nodes.items():
        if _is_latent(site) and not getattr(site["fn"], "has_rsample", False):
            raise ValueError(
                f"guide: site {name!r} has no reparameterised sampler; the per-datum bounds differentiate "
                "through the guide's draws"
            )


def _plate_nesting(model_trace: Any, guide_trace: Any, max_plate_nesting: int | None) -> int:
    """How many batch dims the plates use (Pyro's ``max_plate_nesting``): the given one, or the traces' own."""
    dims = [
        -f.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized and f.dim is not None
    ]
    found = max(dims, default=0)
    return found if max_plate_nesting is None else max(found, int(max_plate_nesting))


def _log_prob(site: dict) -> Tensor:
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(torch.as_tensor(log_prob), 1.0, site["mask"])


def _per_datum(log_prob: Tensor, dim: int, nesting: int, size: int) -> Tensor:
    """A site's log-density ``(K', m)``: dim 0 the outer particle plate's (``K`` or 1), dim 1 the plate's ``dim``,
    summed over every other dim."""
    width = nesting + 1
    if log_prob.dim() > width:  # dims left of every plate (undeclared batch dims): one datum's own
        log_prob = log_prob.reshape(-1, *log_prob.shape[-width:]).sum(0)
    log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + tuple(log_prob.shape))
    log_prob = log_prob.movedim(width + dim, 1)
    log_prob = log_prob.reshape(log_prob.shape[0], log_prob.shape[1], -1).sum(-1)
    return log_prob.expand(log_prob.shape[0], size)


def _terms(
    model_trace: Any, guide_trace: Any, plate: str, nesting: int, with_global: bool
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """``(global term, local (K', m), scale, indices)`` of one (possibly vectorized) run."""
    indices = guide_trace.nodes[plate]["value"]
    size = int(indices.shape[0])
    global_term, local, scale = None, None, None
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site) or (trace is guide_trace and site["is_observed"]):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name == plate]
            if not frames:
                if with_global:
                    term = sign * site["scale"] * _log_prob(site).sum()
                    global_term = term if global_term is None else global_term + term
                continue
            # one scale for the plate: the sites in it share their plates' subsample scale
            scale = site["scale"] if scale is None else scale
            term = sign * _per_datum(_log_prob(site), frames[0].dim, nesting, size)
            local = term if local is None else local + term
    if local is None:
        raise ValueError(f"plate: plate {plate!r} holds no sample site in the model or the guide")
    if with_global and global_term is None:
        global_term = torch.zeros((), dtype=local.dtype, device=local.device)
    return global_term, local, torch.as_tensor(1.0 if scale is None else scale, dtype=local.dtype), indices


def global_values(guide_trace: Any, plate: str) -> dict[str, Tensor]:
    """The guide's draws of every latent outside ``plate`` (auxiliary sites too, e.g. ``AutoNormal``'s
    ``"<site>_unconstrained"``): what the local draws of (1) are conditioned on."""
    return {
        name: site["value"]
        for name, site in guide_trace.nodes.items()
        if _is_latent(site) and not any(f.name == plate for f in site["cond_indep_stack"])
    }


def _run_checked(model, guide, args, kwargs, fixed, plate, indices_given) -> tuple[Any, Any]:
    try:
        model_trace, guide_trace = run_guide_and_model(model, guide, args, kwargs, fixed)
    except ValueError as err:
        if indices_given and "subsample_size does not match" in str(err):
            raise ValueError(
                f"indices: Pyro takes a given subsample of plate {plate!r} only at the plate's subsample size ({err})"
            ) from err
        raise
    _check_traces(model_trace, guide_trace, plate)
    return model_trace, guide_trace


def per_datum_log_weights(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    plate: str,
    num_local_particles: int = 1,
    *,
    indices: Tensor | None = None,
    fixed_globals: dict[str, Tensor] | None = None,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
) -> PerDatumTerms:
    """One global draw and ``num_local_particles`` local draws per datum: the terms of (1).

    The guide's and model's parameters are Pyro's parameter store's; draws come from torch's generator.

    :param args, kwargs: the model's and guide's arguments.
    :param indices: the data to visit, ``(m,)``: the plate's subsample is set to them (a subsampled plate, the
        model indexing its data by the plate's indices).  Pyro takes them only at the plate's subsample size
        (``m`` = ``subsample_size``; a ``ValueError`` naming ``indices`` otherwise).  ``None``: the plate draws
        its own subsample.
    :param fixed_globals: the global latents' values (:func:`global_values`); ``None``: drawn from the guide.
    :param max_plate_nesting: the plates' batch dims (``None``: read off the traces); the ``K`` local draws
        sit in the dim left of them.
    :param vectorize: ``True``: the ``K`` local draws are one run inside an outer plate (the model must
        broadcast its locals over a leading dim); ``False``: ``K`` plain runs.
    :returns: :class:`PerDatumTerms`; ``local`` is ``(num_local_particles, m)``.
    """
    num_local_particles = check_positive_int("num_local_particles", num_local_particles)
    fixed: dict[str, Tensor] = {}
    if indices is not None:
        fixed[plate] = torch.as_tensor(indices, dtype=torch.long)
        if fixed[plate].dim() != 1:
            raise ValueError(f"indices must be a 1-d sequence of data indices, got shape {tuple(fixed[plate].shape)}")
    fixed.update(fixed_globals or {})
    # the first run draws the globals (unless given) and the subsample; it gives the global term
    model_trace, guide_trace = _run_checked(model, guide, args, kwargs, fixed, plate, indices is not None)
    nesting = _plate_nesting(model_trace, guide_trace, max_plate_nesting)
    global_term, local, scale, visited = _terms(model_trace, guide_trace, plate, nesting, with_global=True)
    if num_local_particles == 1:
        return PerDatumTerms(global_term, local, scale, visited)
    fixed = {**global_values(guide_trace, plate), plate: visited}
    if vectorize:
        traces = run_guide_and_model(model, guide, args, kwargs, fixed, num_local_particles, nesting)
        local = _terms(*traces, plate, nesting, with_global=False)[1]
        local = local.expand(num_local_particles, local.shape[1])
    else:
        draws = [
            _terms(*run_guide_and_model(model, guide, args, kwargs, fixed), plate, nesting, with_global=False)[1]
            for _ in range(num_local_particles)
        ]
        local = torch.cat(draws, dim=0)
    return PerDatumTerms(global_term, local, scale, visited)


def renyi_average(local: Tensor, alpha: float) -> Tensor:
    """Per datum, ``1 / (1 - alpha) log mean_k exp((1 - alpha) l_ik)`` of (2) over dim 0 (``alpha = 1``: the
    mean): ``(K, m) -> (m,)``."""
    if alpha == 1:
        return local.mean(0)
    order = 1.0 - alpha
    return (torch.logsumexp(order * local, dim=0) - math.log(local.shape[0])) / order


class LocalRenyiELBO(ELBO):
    """The per-datum Rényi / importance-weighted bound (2) as a Pyro ELBO (``SVI(model, guide, optim,
    LocalRenyiELBO(...))``).

    :param plate: the plate of the local latents (the one an ``AutoAmortizedNormal`` amortizes).
    :param alpha: the Rényi order; ``0`` (default) is IWAE, ``1`` the ELBO with ``K`` local draws.  ``0 <= alpha
        <= 1`` keeps (2) a lower bound of ``log p(x)``.
    :param num_local_particles: ``K``, local draws per datum for each global draw.
    :param num_particles: global draws, averaged (each with its own ``K`` local draws per datum; a loop).
    :param max_plate_nesting: the model's plate nesting (default: read off each call's traces).
    :param vectorize_local_particles: the ``K`` local draws in one run inside an outer plate at dim
        ``-(max_plate_nesting + 1)`` (default; the model must broadcast its locals over that leading dim, as
        Pyro's ``vectorize_particles`` requires), or ``False``: a loop over ``K`` runs.

    The guide must be reparameterised (every latent site ``has_rsample``; a ``ValueError`` naming ``guide``
    otherwise).  Sites inside the plate must share one scale (the plate's subsample scale), which multiplies
    the sum over data outside the log-mean-exp.
    """

    def __init__(
        self,
        plate: str = "data",
        alpha: float = 0.0,
        num_local_particles: int = 8,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_local_particles: bool = True,
    ) -> None:
        if not isinstance(plate, str) or not plate:
            raise TypeError(f"plate must be the name (a non-empty str) of the local latents' plate, got {plate!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite real number (the Rényi order), got {alpha!r}")
        self.plate = plate
        self.alpha = float(alpha)
        self.num_local_particles = check_positive_int("num_local_particles", num_local_particles)
        self.vectorize_local_particles = bool(vectorize_local_particles)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles), max_plate_nesting=max_plate_nesting
        )

    def _get_trace(self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict):
        """One plain ``(model trace, guide trace)`` pair (the base class's hook; the bound makes its own runs)."""
        return run_guide_and_model(model, guide, args, kwargs, {})

    def _bound(self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict) -> Tensor:
        nesting = None if math.isinf(self.max_plate_nesting) else int(self.max_plate_nesting)
        bounds = []
        for _ in range(self.num_particles):
            terms = per_datum_log_weights(
                model,
                guide,
                args,
                kwargs,
                self.plate,
                self.num_local_particles,
                max_plate_nesting=nesting,
                vectorize=self.vectorize_local_particles,
            )
            bounds.append(terms.global_term + terms.scale * renyi_average(terms.local, self.alpha).sum())
        return torch.stack(bounds).mean()

    def differentiable_loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any):
        """``-L_alpha`` of (2), a differentiable tensor (average over ``num_particles`` global draws)."""
        loss = -self._bound(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
        """``-L_alpha`` of (2) as a float (no gradient)."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
        """``-L_alpha`` of (2) as a float; its gradient accumulated into the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)
