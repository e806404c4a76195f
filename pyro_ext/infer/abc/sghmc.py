"""Stochastic-gradient HMC with friction (Chen, Fox & Guestrin 2014) in torch: the math core of
:class:`pyro_ext.infer.abc.HABC` (the twin of the SGHMC part of :mod:`numpyro_ext.infer.abc.habc`).

:func:`sghmc_step` is one step with an exact Ornstein-Uhlenbeck friction half on a noisy gradient;
:func:`metric_factor` the square-root factor of the inverse mass matrix (SPSA perturbs along it);
:func:`sghmc_warmup_adapter` Pyro's warmup adapter with the step size fixed, for the metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter

from pyro_ext.infer.hmc_util import IntegratorState, leapfrog, sample_momentum

__all__ = [
    "GradientFn",
    "METRIC_BLOCK",
    "SGHMCInfo",
    "SGHMCState",
    "metric_factor",
    "sghmc_step",
    "sghmc_warmup_adapter",
]

Tensor = torch.Tensor

#: ``grad_fn(position, generator) -> (log density, its gradient, non-finite simulations, failed)``
GradientFn = Callable[[Tensor, "torch.Generator | None"], tuple[Tensor, Tensor, Tensor, Tensor]]


class SGHMCState(NamedTuple):
    """A point of SGHMC: ``position`` and ``momentum`` ``(..., D)``, the log density estimate ``(...)``
    and its gradient ``(..., D)`` at the position (from the last gradient evaluation)."""

    position: Tensor
    momentum: Tensor
    logdensity: Tensor
    logdensity_grad: Tensor


class SGHMCInfo(NamedTuple):
    """What one :func:`sghmc_step` spent and met, per chain ``(...)``: ``num_nonfinite`` simulations of its
    gradient evaluation that were not finite, ``failed`` whether that gradient had no finite estimate,
    ``diverging`` whether the step left the finite reals (and was undone)."""

    num_nonfinite: Tensor
    failed: Tensor
    diverging: Tensor


def sghmc_step(
    generator: torch.Generator | None,
    state: SGHMCState,
    grad_fn: GradientFn,
    inverse_mass_matrix: Tensor | None,
    step_size: float | Tensor,
    friction: float | Tensor,
) -> tuple[SGHMCState, SGHMCInfo]:
    """One step of SGHMC with friction (Chen et al. 2014, Eq. 9), split as leapfrog then exact friction.

    The velocity-Verlet step (half kick with the stored gradient, drift, half kick with a new gradient
    ``grad_fn(position, generator)``) is :func:`~pyro_ext.infer.hmc_util.leapfrog` with one step; the
    friction and its noise are the exact Ornstein-Uhlenbeck solution over ``step_size``,
    ``r <- a r + sqrt(1 - a^2) M^{1/2} xi``, ``a = exp(-friction * step_size)``, ``M^{1/2} xi`` one
    :func:`~pyro_ext.infer.hmc_util.sample_momentum` drawn after the gradient.  A chain whose position
    or momentum is not finite, or whose log density is not finite where the start's was, is undone:
    it keeps its position and gets that fresh ``N(0, M)`` momentum (``diverging``).

    Args:
        generator: ``torch.Generator`` of the gradient's randomness and of the friction noise
            (``None``: torch's global generator).
        state: the :class:`SGHMCState`, one chain ``(D,)`` or a batch ``(..., D)``.
        grad_fn: ``grad_fn(position, generator) -> (logdensity (...), grad (..., D), num_nonfinite (...),
            failed (...))``.
        inverse_mass_matrix: ``M^-1``, ``(D,)`` diagonal, ``(D, D)`` dense or ``None`` (identity).
        step_size: the integration step.
        friction: ``C > 0``, the momentum's damping rate.

    Returns:
        The new :class:`SGHMCState` and :class:`SGHMCInfo`.
    """
    position, momentum = state.position, state.momentum

    # leapfrog carries the log density slot from one gradient evaluation to the next untouched, so it
    # also carries that evaluation's counts: (log density, non-finite simulations, failed)
    def evaluate(point: Tensor, _momentum: Tensor, _i: int) -> tuple[Tensor, tuple, Tensor]:
        value, grad, num_nonfinite, failed = grad_fn(point, generator)
        value = torch.as_tensor(value, dtype=point.dtype, device=point.device)
        counts = (torch.as_tensor(num_nonfinite, dtype=torch.long), torch.as_tensor(failed, dtype=torch.bool))
        return point, (value,) + counts, grad

    zero_count = torch.zeros(position.shape[:-1], dtype=torch.long, device=position.device)
    logdensity_start = torch.as_tensor(state.logdensity, dtype=position.dtype, device=position.device)
    start = IntegratorState(
        position, momentum, (logdensity_start, zero_count, zero_count.bool()), state.logdensity_grad
    )
    end = leapfrog(start, evaluate, step_size, inverse_mass_matrix, 1)
    logdensity, num_nonfinite, failed = end.logdensity
    noise = sample_momentum(generator, inverse_mass_matrix, momentum)
    decay = torch.exp(-torch.as_tensor(friction * step_size, dtype=position.dtype, device=position.device))
    new_momentum = decay * end.momentum + torch.sqrt(1.0 - decay**2) * noise
    # a step into zero density (from a point that had some) is undone like one that leaves the reals: without
    # a Metropolis test nothing else would keep the chain out of a region where every simulation fails
    enters_zero = torch.isfinite(logdensity_start) & ~torch.isfinite(logdensity)
    ok = torch.isfinite(end.position).all(-1) & torch.isfinite(new_momentum).all(-1) & ~enters_zero
    keep = ok[..., None]
    new = SGHMCState(
        torch.where(keep, end.position, position),
        torch.where(keep, new_momentum, noise),
        torch.where(ok, logdensity, logdensity_start),
        torch.where(keep, end.logdensity_grad, state.logdensity_grad),
    )
    return new, SGHMCInfo(num_nonfinite, failed, ~ok)


def metric_factor(inverse_mass_matrix: Tensor) -> Tensor:
    """``L`` with ``L L^T = M^-1``: ``sqrt(M^-1)`` ``(D,)`` for a diagonal, the Cholesky factor ``(D, D)`` for a
    dense one (the twin of :func:`numpyro_ext.infer.abc.habc.metric_factor`)."""
    if inverse_mass_matrix.dim() == 1:
        return inverse_mass_matrix.sqrt()
    return torch.linalg.cholesky(inverse_mass_matrix)


#: the one block of :func:`sghmc_warmup_adapter`'s mass matrix: the flat unconstrained ``u``
METRIC_BLOCK = ("u",)


def sghmc_warmup_adapter(
    num_warmup: int, step_size: float, inverse_mass_matrix: Tensor, adapt_mass_matrix: bool
) -> WarmupAdapter:
    """Pyro's :class:`~pyro.infer.mcmc.adaptation.WarmupAdapter` with the step size fixed, configured for
    ``num_warmup`` draws of the flat ``u`` (block :data:`METRIC_BLOCK`) and started at ``inverse_mass_matrix``
    (``(D,)``: diagonal adaptation, ``(D, D)``: dense): ``adapter.step(t, {"u": u}, accept_prob)`` feeds warmup
    draw ``t`` (from 0) to Welford's (co)variance in Stan's windows and, at each window's end, sets
    ``adapter.mass_matrix_adapter.inverse_mass_matrix[METRIC_BLOCK]`` to ``n / (n + 5) Var + 1e-3 * 5 / (n + 5)``
    (the twin of :func:`numpyro_ext.infer.abc.habc.sghmc_warmup_adapter`; no adaptation with fewer than 20
    warmup draws).  ``accept_prob`` is not used (no dual averaging: SGHMC has no accept step)."""
    adapter = WarmupAdapter(step_size, adapt_step_size=False, adapt_mass_matrix=adapt_mass_matrix)
    options = {"dtype": inverse_mass_matrix.dtype, "device": inverse_mass_matrix.device}
    adapter.configure(num_warmup, step_size, {METRIC_BLOCK: tuple(inverse_mass_matrix.shape)}, options=options)
    adapter.mass_matrix_adapter.inverse_mass_matrix = {METRIC_BLOCK: inverse_mass_matrix.clone()}
    return adapter
