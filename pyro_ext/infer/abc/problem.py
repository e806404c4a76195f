"""A likelihood-free problem in torch: prior, simulator, summary statistics, observation.

The torch twin of :mod:`numpyro_ext.infer.abc.problem` (same class, same argument names, same
messages).  The simulator is a deterministic function of the parameters and its random numbers,
batched over a leading dimension::

    simulator(theta, generator) -> x        theta (n, *event) (or {site: (n, *shape)}),  x (n, ...)

drawing every random number from the given ``torch.Generator``: the same generator state gives
the same simulations (common random numbers), e.g. ``torch.Generator().manual_seed(s)``.
``theta`` is what the prior samples, with a leading batch dimension: the tensor of a
``torch.distributions``/Pyro ``Distribution`` prior, or the dict ``{site: value}`` of the latent
sites of a Pyro model prior (a function of no arguments).  ``summary(x) -> (n, d)`` works on the
batch too (default: each simulation flattened); ``observed`` is ONE simulation's output
(``x[0]``'s format), the summary sees it as a batch of one.

Every method works on the *unconstrained* flat vector ``u`` ``(n, D)`` of the prior
(``torch.distributions.biject_to`` of each site's support, sites in sorted order as
:func:`pyro_ext.infer.model_util.flat_model` lays them out): optimisers and Gaussian proposals
move freely there, and the prior's density there includes the log-Jacobian of the map
(``log_prior``).  ``theta(u)`` is the constrained value the simulator sees, ``flat_theta(u)``
the same flattened to ``(n, D)``.  All of them are differentiable in ``u``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from torch.distributions import biject_to

from adapters.abc import check_statistic, simulator_failure_message, site_layout
from pyro_ext.infer.model_util import flat_model

PRIOR_SITE = "theta"  # the site name of a Distribution prior

Tensor = torch.Tensor

__all__ = ["LikelihoodFreeProblem", "finite_rows"]


class LikelihoodFreeProblem:
    """``prior``, ``simulator(theta, generator)``, ``summary(x) -> (n, d)`` and the ``observed`` data.

    Args:
        prior: a ``torch.distributions.Distribution`` (Pyro's included; ``theta`` is a batch of its
            samples; its batch shape must be ``()``, use ``.to_event()``) or a Pyro model taking no
            arguments (``theta`` is the dict of its latent sites, each ``(n, *shape)``).
        simulator: ``simulator(theta, generator) -> x`` batched over the leading dimension ``n`` of
            ``theta``, drawing its randomness from the ``torch.Generator`` only; the same generator
            state must give the same ``x`` (common random numbers).  It may return NaN/inf for some
            ``theta``: such simulations are counted and rejected by every method.
        observed: the observed data, in the format of one simulation ``x[0]`` (``summary`` is
            applied to it as a batch of one).
        summary: ``summary(x (n, ...)) -> (n, d)`` statistics; default: each simulation flattened.

    The constructor runs three simulations at prior draws (on a forked random generator, so the
    caller's stream is untouched) to check that the simulator accepts the prior's ``theta`` and
    that its summary has the observation's shape.

    Attributes:
        dim: ``D``, the length of the flat unconstrained vector ``u``.
        stat_dim: ``d``, the number of summary statistics.
        observed: the observation's statistics ``(d,)`` (NumPy, float64).
        names: the column names of ``flat_theta`` (``site`` or ``site[i]``).
        sites: ``{site: (constrained shape, start, stop)}``, the columns of each site in
            ``flat_theta``; its order is the sites' order in ``u`` too.
        unconstrained_shapes: ``{site: shape}`` of each site's block of ``u`` (an unconstrained
            shape may differ from the constrained one, e.g. a simplex's), in ``u``'s order.
        transforms: ``{site: torch.distributions.Transform}``, each site's map from the
            unconstrained to the constrained space (``biject_to`` of its support); ``.inv`` the
            other way, as Pyro's MCMC kernels hold them.
        dtype: the floating dtype of ``u``.
    """

    def __init__(
        self,
        prior: Any,
        simulator: Callable[[Any, torch.Generator], Any],
        observed: Any,
        summary: Callable[[Any], Any] | None = None,
    ):
        if not callable(simulator):
            raise TypeError(
                f"simulator: expected a function simulator(theta, generator), got {type(simulator).__name__}"
            )
        if summary is not None and not callable(summary):
            raise TypeError(f"summary: expected a function summary(x) -> (n, d) or None, got {type(summary).__name__}")
        if isinstance(prior, torch.distributions.Distribution):
            if prior.batch_shape != ():
                raise ValueError(
                    f"prior: expected a distribution with batch shape (), got {tuple(prior.batch_shape)}; "
                    "use prior.to_event() to make its batch dimensions event dimensions"
                )
            self._flat = None
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(0)
                prototype = {PRIOR_SITE: prior.sample()}
            supports = {PRIOR_SITE: prior.support}
            self._latent = [PRIOR_SITE]
        elif callable(prior):
            from pyro import poutine

            with torch.random.fork_rng(devices=[]), torch.no_grad(), pyro.validation_enabled(False):
                torch.manual_seed(0)
                self._flat = flat_model(prior, (), {}, "LikelihoodFreeProblem")
                trace = poutine.trace(prior).get_trace()
            if self._flat.observed:
                raise ValueError(
                    f"prior: a prior model has no observed sites, got {self._flat.observed}; "
                    "the data go to the simulator"
                )
            self._latent = list(self._flat.latent)
            prototype = {k: trace.nodes[k]["value"] for k in self._latent}
            supports = {k: trace.nodes[k]["fn"].support for k in self._latent}
        else:
            raise TypeError(
                f"prior: expected a torch.distributions.Distribution or a Pyro model, got {type(prior).__name__}"
            )
        self.prior = prior
        self.simulator = simulator
        self._summary = summary
        # The unconstraining map of each site from its support (fixed from one prior trace, as
        # pyro_ext.infer.model_util.flat_model does, so log_prior's Jacobian and theta(u) agree).
        self.transforms = {k: biject_to(supports[k]) for k in self._latent}
        self._shapes = {k: tuple(prototype[k].shape) for k in self._latent}
        self.unconstrained_shapes = {k: tuple(self.transforms[k].inverse_shape(self._shapes[k])) for k in self._latent}
        self._sizes = [math.prod(self.unconstrained_shapes[k]) for k in self._latent]
        self.dim = int(sum(self._sizes))
        first = prototype[self._latent[0]]
        self.dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        self.names, self.sites = site_layout(self._shapes)
        self.stat_dim = self._check_simulator()
        with torch.no_grad():
            try:
                stats = self.summary_statistics(_as_batch_of_one(observed), 1)
            except Exception as error:  # noqa: BLE001 -- the user's summary on the user's data
                raise ValueError(
                    f"observed: expected the data of one simulation x[0] (the summary sees it as a batch of one), "
                    f"the summary failed on it ({type(error).__name__}: {error})"
                ) from error
        self.observed = check_statistic("observed", stats[0].detach().cpu().numpy(), self.stat_dim)

    def _check_simulator(self) -> int:
        """One simulation of three prior draws (generator seeded 0): the simulator takes the prior's
        ``theta`` and its summary is ``(n, d)``; returns ``d``."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            u = self.sample_prior(3)
            theta = self.theta(u)
            try:
                x = self.simulator(theta, torch.Generator().manual_seed(0))
            except Exception as error:  # noqa: BLE001 -- any failure here is the user's simulator/prior mismatch
                shapes = (
                    tuple(theta.shape) if isinstance(theta, Tensor) else {k: tuple(v.shape) for k, v in theta.items()}
                )
                raise ValueError(simulator_failure_message(error, shapes)) from error
            stats = self.summary_statistics(x, 3)
        return int(stats.shape[1])

    # ---- the prior ----------------------------------------------------------------------
    def split(self, u: Tensor) -> dict[str, Tensor]:
        """The unconstrained value of each site ``{site: (..., *unconstrained_shapes[site])}`` of ``u``
        ``(..., D)`` (its columns in the order of :attr:`unconstrained_shapes`; not checked)."""
        parts = torch.split(u, self._sizes, dim=-1)
        shapes = self.unconstrained_shapes
        return {k: p.reshape(u.shape[:-1] + shapes[k]) for k, p in zip(self._latent, parts, strict=True)}

    def _check_u(self, u: Any) -> Tensor:
        u = torch.as_tensor(u)
        if u.dim() != 2 or u.shape[-1] != self.dim:
            raise ValueError(f"u: expected unconstrained parameters of shape (n, {self.dim}), got {tuple(u.shape)}")
        return u

    def _constrained(self, u: Tensor) -> dict[str, Tensor]:
        return {k: self.transforms[k](v) for k, v in self.split(self._check_u(u)).items()}

    def theta(self, u: Tensor) -> Any:
        """The constrained ``theta`` the simulator takes, ``(n, *event)`` (or ``{site: (n, *shape)}``
        for a model prior), from the unconstrained ``u`` ``(n, D)``."""
        values = self._constrained(u)
        return values[PRIOR_SITE] if self._flat is None else values

    def flat_theta(self, u: Tensor) -> Tensor:
        """Constrained ``theta`` flattened ``(n, D)``, in the column order of :attr:`names`."""
        values = self._constrained(u)
        return torch.cat([values[k].reshape(u.shape[0], -1) for k in self._latent], dim=-1)

    def unconstrain(self, theta: Any) -> Tensor:
        """The unconstrained ``u`` ``(n, D)`` of constrained ``theta`` (the prior's structure, batched)."""
        values = {PRIOR_SITE: theta} if self._flat is None else theta
        if not isinstance(values, Mapping):
            raise ValueError(f"theta: expected a dict of the prior's sites {self._latent}, got {type(theta).__name__}")
        missing = [k for k in self._latent if k not in values]
        if missing:
            raise ValueError(f"theta: missing the prior's sites {missing} (expected {self._latent})")
        parts = []
        for k in self._latent:
            value = torch.as_tensor(values[k], dtype=self.dtype)
            if value.dim() == len(self._shapes[k]):
                raise ValueError(
                    f"theta: expected site {k!r} batched as (n, *{self._shapes[k]}), got {tuple(value.shape)}"
                )
            if tuple(value.shape[1:]) != self._shapes[k]:
                raise ValueError(
                    f"theta: expected site {k!r} of shape (n, *{self._shapes[k]}), got {tuple(value.shape)}"
                )
            parts.append(self.transforms[k].inv(value).reshape(value.shape[0], -1))
        return torch.cat(parts, dim=-1)

    def sample_prior(self, num_samples: int) -> Tensor:
        """``(num_samples, D)`` unconstrained prior draws (torch's global generator: seed it with
        ``pyro.set_rng_seed``)."""
        num_samples = int(num_samples)
        with torch.no_grad():
            if self._flat is None:
                return self.unconstrain(self.prior.sample((num_samples,)))
            return self._flat.sample_prior(num_samples).to(self.dtype)

    def log_prior(self, u: Tensor) -> Tensor:
        """Prior log density ``(n,)`` of the unconstrained ``u`` ``(n, D)``, the maps' log-Jacobians included."""
        u = self._check_u(u)
        if self._flat is not None:
            return self._flat.log_prior(u)
        transform = self.transforms[PRIOR_SITE]
        free = self.split(u)[PRIOR_SITE]
        value = transform(free)
        log_jacobian = transform.log_abs_det_jacobian(free, value).reshape(u.shape[0], -1).sum(-1)
        with pyro.validation_enabled(False):
            return self.prior.log_prob(value) + log_jacobian

    # ---- simulations --------------------------------------------------------------------
    def summary_statistics(self, x: Any, num: int) -> Tensor:
        """Summary statistics ``(num, d)`` of a batch of ``num`` simulator outputs ``x`` (the summary
        applied, or each simulation flattened; the shape checked): :meth:`simulate` without the simulator,
        for a caller that runs the simulator itself (e.g. several generators at one ``theta``)."""
        if self._summary is None:
            x = torch.as_tensor(x)
            stats = x.reshape(num, -1) if x.dim() >= 1 and x.shape[0] == num else x
        else:
            stats = torch.as_tensor(self._summary(x))
        if stats.dim() == 1 and num == stats.shape[0]:
            stats = stats[:, None]  # one scalar statistic per simulation
        if stats.dim() != 2 or stats.shape[0] != num:
            raise ValueError(
                f"summary: expected statistics of shape (n, d) for a batch of n = {num} simulations, "
                f"got shape {tuple(stats.shape)}; the simulator must return one simulation per row of theta"
            )
        return stats

    def simulate(self, u: Tensor, generator: torch.Generator) -> Tensor:
        """Summary statistics ``(n, d)`` of the simulations at the unconstrained ``u`` ``(n, D)`` with
        ``generator`` (differentiable in ``u`` when the simulator is), in ``u``'s dtype."""
        u = self._check_u(u)
        stats = self.summary_statistics(self.simulator(self.theta(u), generator), u.shape[0])
        return stats.to(u.dtype if u.is_floating_point() else self.dtype)


def _as_batch_of_one(observed: Any) -> Any:
    """``observed`` (one simulation's output) with a leading batch dimension of one (dicts per key)."""
    if isinstance(observed, Mapping):
        return {k: torch.as_tensor(v)[None] for k, v in observed.items()}
    return torch.as_tensor(observed)[None]


def finite_rows(stats: Tensor) -> Tensor:
    """``(n,)`` mask of the simulations whose statistics ``(n, d)`` are all finite."""
    return torch.isfinite(stats).all(dim=-1)
