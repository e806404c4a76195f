"""Pyro AIS through a whole schedule: forward (:func:`ais`), reverse (:func:`ais_reverse`), mixed (:func:`anneal`).

Also the step-size pilot (:func:`tune_step_sizes`, :func:`pilot_step_sizes`).  See
:mod:`pyro_ext.infer.ais` for the method.  Shapes: ``K`` chains, ``d`` unconstrained
dimensions, ``T`` annealing steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from adapters.mi import AISConfig, check_schedule
from adapters.validation import check_positive_int, check_probability
from pyro_ext.infer.ais.core import (
    AISInfo,
    AISOutput,
    BatchedLogDensity,
    ais_init,
    ais_step,
    as_inverse_mass_matrix,
    as_positions,
    check_transition,
)

__all__ = ["ais", "ais_reverse", "anneal", "kernel_options", "pilot_step_sizes", "tune_step_sizes"]

Tensor = torch.Tensor
# the pilot's step sizes stay within exp(+-18) ~ [1.5e-8, 6.6e7] (as in the NumPyro module)
_LOG_STEP_BOUND = 18.0


def _betas(betas: Any, like: Tensor) -> tuple[Tensor, int]:
    values = check_schedule(np.asarray(torch.as_tensor(betas).detach().cpu(), dtype=np.float64), name="betas")
    return torch.as_tensor(values, dtype=like.dtype, device=like.device), values.size - 1


def _step_sizes(step_size: Any, num_steps: int, num_chains: int, like: Tensor) -> Tensor:
    """``step_size`` (scalar, ``(T,)`` per temperature or ``(T, K)``) as ``(T, K)``."""
    steps = torch.as_tensor(step_size, dtype=like.dtype, device=like.device).detach()
    if steps.numel() == 0 or not bool(torch.all(torch.isfinite(steps) & (steps > 0))):
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    if steps.dim() == 1:
        steps = steps[:, None]
    try:
        return torch.broadcast_to(steps, (num_steps, num_chains)).clone()
    except RuntimeError:
        raise ValueError(
            f"step_size must be a scalar or have shape ({num_steps},) or ({num_steps}, {num_chains}), "
            f"got shape {tuple(torch.as_tensor(step_size).shape)}"
        ) from None


def _directions(betas: Tensor, steps: Tensor, reverse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-chain ``(beta_from, beta_to, step_size)``, each ``(T, K)``, for forward or reverse chains.

    ``steps`` ``(T, K)`` holds the step size of forward transition ``t`` (at ``beta_t``).  A
    reverse chain (``reverse[k]``) visits ``beta_T -> beta_{T-1} -> ... -> beta_0``, moving at
    ``beta_{T-1}, ..., beta_1`` with the forward step sizes there; its last move, at ``beta_0``
    after the last increment, changes no weight (it reuses the step size of ``beta_1``).
    """
    num_steps = betas.shape[0] - 1
    ones = torch.ones((num_steps, reverse.shape[0]), dtype=betas.dtype, device=betas.device)
    forward_from, forward_to = betas[:-1, None] * ones, betas[1:, None] * ones
    backward_from, backward_to = betas[1:].flip(0)[:, None] * ones, betas[:-1].flip(0)[:, None] * ones
    backward_steps = torch.cat([steps[:-1].flip(0), steps[:1]], dim=0)
    return (
        torch.where(reverse, backward_from, forward_from),
        torch.where(reverse, backward_to, forward_to),
        torch.where(reverse, backward_steps, steps),
    )


def anneal(
    init_positions: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    betas: Tensor,
    step_sizes: Tensor,
    reverse: Tensor,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Any = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
    adapt_step_size: bool = False,
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    generator: torch.Generator | None = None,
) -> AISOutput:
    """``K`` chains ``(K, d)`` through the schedule, each forwards or (``reverse[k]``) backwards.

    The unchecked engine of :func:`ais`, :func:`ais_reverse`, :class:`~pyro_ext.infer.ais.AIS`
    and the multi-sample MI bounds (which mix both directions in one batch).  ``betas``
    ``(T + 1,)`` increasing and ``step_sizes`` ``(T,)`` or ``(T, K)`` indexed by forward
    transition, both tensors of the positions' dtype; ``reverse`` ``(K,)`` booleans.  With
    ``adapt_step_size`` each chain's step size starts at its first transition's and is updated
    after every transition, ``log eps <- log eps + adaptation_rate * (a_t - target_accept_prob)``
    (clipped to ``exp(+-18)``).  Returns an :class:`AISOutput` whose ``log_weights`` are in the
    forward form for every chain.
    """
    num_steps, num_chains = betas.shape[0] - 1, init_positions.shape[0]
    steps = step_sizes.to(init_positions.dtype)
    steps = torch.broadcast_to(steps[:, None] if steps.dim() == 1 else steps, (num_steps, num_chains))
    betas_from, betas_to, steps = _directions(betas, steps, reverse)
    state = ais_init(init_positions, log_prior_fn, log_likelihood_fn, steps[0])
    imm = as_inverse_mass_matrix(inverse_mass_matrix, init_positions)
    infos, adapted = [], []
    for t in range(num_steps):
        eps = state.step_size if adapt_step_size else steps[t]
        state, info = ais_step(
            state,
            betas_from[t],
            betas_to[t],
            log_prior_fn,
            log_likelihood_fn,
            eps,
            num_leapfrog,
            imm,
            transition,
            max_delta_energy,
            generator,
        )
        if adapt_step_size:
            log_eps = torch.log(eps) + adaptation_rate * (info.acceptance_rate - target_accept_prob)
            state = state._replace(step_size=torch.exp(torch.clamp(log_eps, -_LOG_STEP_BOUND, _LOG_STEP_BOUND)))
        infos.append(info)
        adapted.append(state.step_size)
    info = AISInfo(*(torch.stack(field) for field in zip(*infos, strict=True)))
    log_weights = torch.where(reverse, -state.log_weight, state.log_weight)
    return AISOutput(
        log_weights,
        state.position,
        state,
        info.acceptance_rate,
        info.is_divergent,
        info.step_size,
        torch.stack(adapted),
    )


def kernel_options(config: AISConfig, inverse_mass_matrix: Any = None) -> dict[str, Any]:
    """:func:`anneal`'s kernel keywords from a validated :class:`adapters.mi.AISConfig` (the shells' settings)."""
    return {
        "num_leapfrog": config.num_leapfrog,
        "inverse_mass_matrix": inverse_mass_matrix,
        "transition": config.transition,
        "max_delta_energy": config.max_delta_energy,
        "target_accept_prob": config.target_accept_prob,
        "adaptation_rate": config.adaptation_rate,
    }


def _check_kernel_args(transition, num_leapfrog, target_accept_prob=None) -> int:
    check_transition(transition)
    if target_accept_prob is not None:
        check_probability("target_accept_prob", float(target_accept_prob))
    return check_positive_int("num_leapfrog", num_leapfrog)


def _run(init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, backwards: bool, **kernel) -> AISOutput:
    """Every chain through the schedule, forwards (:func:`ais`) or backwards (:func:`ais_reverse`)."""
    positions = as_positions(init_positions)
    betas, num_steps = _betas(betas, positions)
    steps = _step_sizes(step_size, num_steps, positions.shape[0], positions)
    reverse = torch.full((positions.shape[0],), backwards, dtype=torch.bool, device=positions.device)
    return anneal(positions, log_prior_fn, log_likelihood_fn, betas, steps, reverse, **kernel)


def ais(
    init_positions: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    betas: Any,
    step_size: float | Tensor = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Tensor | None = None,
    transition: str | Callable = "hmc",
    adapt_step_size: bool = False,
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
    generator: torch.Generator | None = None,
) -> AISOutput:
    """Forward AIS (Neal 2001) for ``K`` chains started at ``init_positions`` ``(K, d)`` ``~ pi_0``.

    ``log_prior_fn`` (``log pi_0``) and ``log_likelihood_fn`` (``log L``) are batched,
    ``(K, d) -> (K,)``.  ``betas`` ``(T + 1,)`` from 0 to 1, strictly increasing.  Transition
    ``t = 1..T`` runs at ``beta_t`` with ``step_size`` (a scalar, ``(T,)`` per temperature or
    ``(T, K)``).  Returns an :class:`AISOutput`; ``log_mean_exp(log_weights)`` estimates
    ``log Z`` from below (:func:`adapters.mi.log_mean_exp_bound`).

    ``adapt_step_size=True`` adapts each chain's step size at every temperature,
    ``log eps <- log eps + adaptation_rate * (a_t - target_accept_prob)``, starting from
    ``step_size`` (its first row).  That biases the weights (module docstring): use it as a
    pilot, through :func:`tune_step_sizes`, and estimate with a fixed schedule.
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog, target_accept_prob if adapt_step_size else None)
    return _run(
        init_positions,
        log_prior_fn,
        log_likelihood_fn,
        betas,
        step_size,
        False,
        num_leapfrog=num_leapfrog,
        inverse_mass_matrix=inverse_mass_matrix,
        transition=transition,
        max_delta_energy=max_delta_energy,
        adapt_step_size=bool(adapt_step_size),
        target_accept_prob=float(target_accept_prob),
        adaptation_rate=float(adaptation_rate),
        generator=generator,
    )


def ais_reverse(
    init_positions: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    betas: Any,
    step_size: float | Tensor = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Tensor | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
    generator: torch.Generator | None = None,
) -> AISOutput:
    """Reverse AIS (the BDMC backward pass) from exact posterior samples ``init_positions`` ``(K, d)``.

    ``betas`` and ``step_size`` are given as for the forward run (increasing; ``(T,)`` or
    ``(T, K)`` indexed by forward transition): each chain adds ``(beta_{t-1} - beta_t) log L(x)``
    and then runs the forward kernel of ``beta_{t-1}`` (with the forward step size there), for
    ``t = T..1``, so it is the exact reversal of a forward chain (the last move, at ``beta_0``,
    changes no weight).  ``log_weights`` ``(K,)`` are in the forward form ``log w`` along the
    reverse path, with ``E[1/w] = 1/Z`` when the start is exact, so
    ``-log_mean_exp(-log_weights)`` is a stochastic upper bound on ``log Z`` (Grosse et al.
    2015).  For ``T = 1``, ``log w = log L(x)``.
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog)
    return _run(
        init_positions,
        log_prior_fn,
        log_likelihood_fn,
        betas,
        step_size,
        True,
        num_leapfrog=num_leapfrog,
        inverse_mass_matrix=inverse_mass_matrix,
        transition=transition,
        max_delta_energy=max_delta_energy,
        generator=generator,
    )


def pilot_step_sizes(adapted_step_size: Tensor, log_weights: Tensor) -> Tensor:
    """One step size per temperature from an adaptive run's ``adapted_step_size`` ``(..., T, K)``.

    The geometric mean, over the chains (and any leading axes) whose weight is not zero, of each
    chain's step size after its update at that temperature (a chain stuck outside the support
    only ever shrinks its step size).  ``log_weights`` is ``(..., K)``; returns ``(T,)``.
    """
    adapted = torch.movedim(adapted_step_size, -2, 0).reshape(adapted_step_size.shape[-2], -1)
    finite = torch.isfinite(log_weights).reshape(-1)
    mask = (finite if bool(finite.any()) else torch.ones_like(finite)).to(adapted.dtype)
    return torch.exp((torch.log(adapted) * mask).sum(-1) / mask.sum())


def tune_step_sizes(
    init_positions: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    betas: Any,
    step_size: float = 0.1,
    **options: Any,
) -> Tensor:
    """A step-size schedule ``(T,)`` from an adaptive pilot run of :func:`ais` (module docstring).

    ``options`` are :func:`ais`'s keywords other than ``adapt_step_size`` (``num_leapfrog``,
    ``inverse_mass_matrix``, ``transition``, ``target_accept_prob``, ``adaptation_rate``,
    ``max_delta_energy``, ``generator``), with its defaults.  Give the pilot its own
    ``init_positions`` and random numbers (independent of the estimating run's), so the schedule
    is independent of the chains that use it and AIS stays unbiased.
    """
    output = ais(
        init_positions, log_prior_fn, log_likelihood_fn, betas, step_size=step_size, adapt_step_size=True, **options
    )
    return pilot_step_sizes(output.adapted_step_size, output.log_weights)
