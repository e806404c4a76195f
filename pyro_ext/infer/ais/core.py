"""The math core of Pyro AIS: ``K`` batched chains, one annealing step at a time (torch).

See :mod:`pyro_ext.infer.ais` for the method, the batching and the handling of non-finite
densities.  :func:`ais_init` and :func:`ais_step` are pure functions of an :class:`AISState`;
the HMC pieces come from :mod:`pyro_ext.infer.hmc_util`.  Shapes: ``K`` chains, ``d``
unconstrained dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from adapters.validation import check_positive_int
from pyro_ext.infer.hmc_util import (
    IntegratorState,
    finite_or_neg_inf,
    kinetic_energy,
    leapfrog,
    metropolis_test,
    sample_momentum,
)

__all__ = [
    "AISInfo",
    "AISOutput",
    "AISState",
    "BatchedLogDensity",
    "ais_init",
    "ais_step",
    "as_inverse_mass_matrix",
    "as_positions",
    "check_transition",
]

Tensor = torch.Tensor
BatchedLogDensity = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------
class AISState(NamedTuple):
    """``K`` AIS chains.

    ``position`` ``(K, d)``; ``log_prior`` (``log pi_0``) and ``log_likelihood`` (``log L``) at
    it, ``(K,)``, ``-inf`` where not finite; their gradients ``(K, d)``; ``log_weight`` ``(K,)``
    the running log weights; ``step_size`` ``(K,)`` each chain's current HMC step size.
    """

    position: Tensor
    log_prior: Tensor
    log_likelihood: Tensor
    log_prior_grad: Tensor
    log_likelihood_grad: Tensor
    log_weight: Tensor
    step_size: Tensor


class AISInfo(NamedTuple):
    """What one transition did, per chain ``(K,)``: the Metropolis acceptance probability,
    whether the chain moved, whether the proposal diverged (non-finite, or an energy error above
    ``max_delta_energy``; always rejected), and the step size used."""

    acceptance_rate: Tensor
    is_accepted: Tensor
    is_divergent: Tensor
    step_size: Tensor


class AISOutput(NamedTuple):
    """``K`` chains through a schedule (:func:`ais`, :func:`ais_reverse`).

    ``log_weights`` ``(K,)`` in the forward form ``sum_t (beta_t - beta_{t-1}) log L(x_{t-1})``
    along each chain's path (for a reverse run too); ``positions`` ``(K, d)`` the final states;
    ``state`` the final :class:`AISState`; ``acceptance_rate``, ``is_divergent``, ``step_size``
    ``(S, K)`` per transition (``S = T``); ``adapted_step_size`` ``(S, K)`` each chain's step
    size after its update at that transition (equal to ``step_size`` without adaptation).
    """

    log_weights: Tensor
    positions: Tensor
    state: AISState
    acceptance_rate: Tensor
    is_divergent: Tensor
    step_size: Tensor
    adapted_step_size: Tensor


# ---------------------------------------------------------------------------------------
# Batched densities and HMC pieces
# ---------------------------------------------------------------------------------------
def _check_batched(value: Any, num_chains: int, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (num_chains,):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{name} must map positions of shape (K, d) to a tensor of shape (K,) (K = {num_chains}), got {shape}"
        )
    return value


def _tempered(log_prior: Tensor, log_likelihood: Tensor, beta: Tensor) -> Tensor:
    """``log pi_0 + beta log L``; at ``beta = 0`` exactly ``log pi_0`` (a zero likelihood must not make it NaN)."""
    return torch.where(beta == 0, log_prior, log_prior + beta * log_likelihood)


def _evaluate(
    position: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    beta: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``log pi_0``, ``log L`` ``(K,)`` at ``position`` ``(K, d)`` and gradients ``(K, d)``.

    With ``beta`` ``(K,)``: the third output is the gradient of the tempered density
    ``log pi_0 + beta log L`` (one backward pass) and the fourth is ``None``; without it, the
    two components' gradients (two backward passes).  Non-finite values become ``-inf`` and
    their gradients zero.
    """
    num_chains = position.shape[0]
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        log_prior = _check_batched(log_prior_fn(x), num_chains, "log_prior_fn")
        log_likelihood = _check_batched(log_likelihood_fn(x), num_chains, "log_likelihood_fn")
        outputs = [v for v in (log_prior, log_likelihood) if v.requires_grad]
        if beta is None:
            grads = []
            for value in (log_prior, log_likelihood):
                if value.requires_grad:
                    (g,) = torch.autograd.grad(value.sum(), x, retain_graph=True, allow_unused=True)
                else:
                    g = None
                grads.append(torch.zeros_like(x) if g is None else g)
        else:
            weights = [torch.ones_like(log_prior), beta.to(log_likelihood.dtype)]
            weights = [w for v, w in zip((log_prior, log_likelihood), weights, strict=True) if v.requires_grad]
            if outputs:
                (g,) = torch.autograd.grad(outputs, x, grad_outputs=weights, allow_unused=True)
            else:
                g = None
            grads = [torch.zeros_like(x) if g is None else g, None]
    log_prior = finite_or_neg_inf(log_prior.detach().to(position.dtype))
    log_likelihood = finite_or_neg_inf(log_likelihood.detach().to(position.dtype))
    finite_prior = torch.isfinite(log_prior)[:, None]
    finite_both = finite_prior & torch.isfinite(log_likelihood)[:, None]
    if beta is None:
        prior_grad = torch.where(finite_prior, grads[0], torch.zeros_like(x)).detach()
        likelihood_grad = torch.where(finite_both, grads[1], torch.zeros_like(x)).detach()
        return log_prior, log_likelihood, prior_grad, likelihood_grad
    finite = torch.isfinite(_tempered(log_prior, log_likelihood, beta))[:, None]
    return log_prior, log_likelihood, torch.where(finite, grads[0], torch.zeros_like(x)).detach(), None


def as_inverse_mass_matrix(inverse_mass_matrix: Any, like: Tensor) -> Tensor:
    dim = like.shape[-1]
    if inverse_mass_matrix is None:
        return torch.ones(dim, dtype=like.dtype, device=like.device)
    imm = torch.as_tensor(inverse_mass_matrix, dtype=like.dtype, device=like.device)
    if imm.shape not in ((dim,), (dim, dim)):
        raise ValueError(f"inverse_mass_matrix must have shape ({dim},) or ({dim}, {dim}), got {tuple(imm.shape)}")
    return imm


def _hmc_move(generator, state, beta, log_prior_fn, log_likelihood_fn, step_size, num_leapfrog, imm, max_delta_energy):
    """One batched HMC transition: momentum refresh, ``num_leapfrog`` velocity-Verlet steps,
    momentum flip (implicit: the kinetic energy is even), Metropolis test.

    A chain whose trajectory reaches a non-finite position, momentum or tempered log density is
    frozen at its start (never evaluated at a non-finite point) and its proposal is invalid.
    Returns the proposal's ``(position, log_prior, log_likelihood, prior_grad, likelihood_grad)``
    (component gradients from the last step's evaluation, so a transition costs ``num_leapfrog``
    gradient evaluations), and per chain the acceptance probability, whether the Metropolis test
    accepted, whether the proposal is valid (finite) and whether it diverged.
    """
    start = state.position
    momentum = sample_momentum(generator, imm, start)
    log_target_start = _tempered(state.log_prior, state.log_likelihood, beta)
    log_joint_start = log_target_start - kinetic_energy(imm, momentum)
    grad = state.log_prior_grad + beta[:, None] * state.log_likelihood_grad
    alive = torch.ones_like(beta, dtype=torch.bool)
    last: dict[str, Tensor] = {}

    def evaluate(moved, momentum, i):
        nonlocal alive
        alive = alive & torch.isfinite(moved).all(-1) & torch.isfinite(momentum).all(-1)
        # a dead chain is evaluated at its start from now on, never at a non-finite point
        position = torch.where(alive[:, None], moved, start)
        if i == num_leapfrog - 1:
            log_prior, log_likelihood, prior_grad, likelihood_grad = _evaluate(
                position, log_prior_fn, log_likelihood_fn, None
            )
            grad = prior_grad + beta[:, None] * likelihood_grad
            last.update(prior_grad=prior_grad, likelihood_grad=likelihood_grad)
        else:
            log_prior, log_likelihood, grad, _ = _evaluate(position, log_prior_fn, log_likelihood_fn, beta)
        last.update(log_prior=log_prior, log_likelihood=log_likelihood)
        log_target = _tempered(log_prior, log_likelihood, beta)
        alive = alive & torch.isfinite(log_target)
        return position, log_target, torch.where(alive[:, None], grad, torch.zeros_like(grad))

    start_point = IntegratorState(start, momentum, log_target_start, grad)
    end = leapfrog(start_point, evaluate, step_size[:, None], imm, num_leapfrog)
    log_joint_end = end.logdensity - kinetic_energy(imm, end.momentum)
    log_joint_end = torch.where(alive, finite_or_neg_inf(log_joint_end), torch.full_like(log_joint_end, -math.inf))
    delta = log_joint_end - log_joint_start
    valid = ~(torch.isnan(delta) | (log_joint_end == -math.inf))
    test = metropolis_test(generator, delta, start, valid, max_delta_energy)
    proposal = (end.position, last["log_prior"], last["log_likelihood"], last["prior_grad"], last["likelihood_grad"])
    valid = torch.isfinite(_tempered(last["log_prior"], last["log_likelihood"], beta)) & torch.isfinite(
        end.position
    ).all(-1)
    return proposal, torch.exp(test.log_accept_prob), test.is_accepted, valid, test.is_divergent


def _user_move(transition, generator, position, beta, log_prior_fn, log_likelihood_fn, step):
    """A user kernel's move (see :func:`ais_step`), in :func:`_hmc_move`'s return form."""
    num_chains = position.shape[0]

    def logdensity_fn(x):
        lp = _check_batched(log_prior_fn(x), num_chains, "log_prior_fn")
        ll = _check_batched(log_likelihood_fn(x), num_chains, "log_likelihood_fn")
        return _tempered(lp, ll, beta.to(ll.dtype))

    new_position, acceptance_rate = transition(generator, position, logdensity_fn, step)
    new_position = torch.as_tensor(new_position, dtype=position.dtype, device=position.device).detach()
    if new_position.shape != position.shape:
        raise ValueError(
            f"transition must return positions of shape {tuple(position.shape)}, got {tuple(new_position.shape)}"
        )
    finite_rows = torch.isfinite(new_position).all(-1)
    # rows that left R^d are evaluated at the old position (and rejected below)
    safe = torch.where(finite_rows[:, None], new_position, position)
    log_prior, log_likelihood, prior_grad, likelihood_grad = _evaluate(safe, log_prior_fn, log_likelihood_fn, None)
    valid = finite_rows & torch.isfinite(_tempered(log_prior, log_likelihood, beta))
    accepted = (new_position != position).any(-1)
    acceptance_rate = torch.as_tensor(acceptance_rate, dtype=position.dtype, device=position.device).detach()
    acceptance_rate = torch.broadcast_to(acceptance_rate, (num_chains,))
    acceptance_rate = torch.where(
        valid & torch.isfinite(acceptance_rate), acceptance_rate, torch.zeros_like(acceptance_rate)
    )
    proposal = (new_position, log_prior, log_likelihood, prior_grad, likelihood_grad)
    return proposal, acceptance_rate, accepted, valid, ~valid


def check_transition(transition: Any) -> None:
    if not (isinstance(transition, str) and transition == "hmc") and not callable(transition):
        raise ValueError(
            "transition must be 'hmc' or a kernel function "
            "transition(generator, position, logdensity_fn, step_size) -> (position, acceptance_rate), "
            f"got {transition!r}"
        )


def as_positions(init_positions: Any, name: str = "init_positions") -> Tensor:
    positions = torch.as_tensor(init_positions)
    if positions.dim() != 2 or positions.shape[0] < 1:
        raise ValueError(
            f"{name} must be an array of shape (num_chains, d) with num_chains >= 1, got {tuple(positions.shape)}"
        )
    if not torch.is_floating_point(positions):
        positions = positions.to(torch.get_default_dtype())
    return positions.detach()


def _as_chain_vector(value: Any, num_chains: int, like: Tensor, name: str) -> Tensor:
    out = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(out, (num_chains,)).clone()
    except RuntimeError:
        raise ValueError(f"{name} must be a scalar or have shape ({num_chains},), got {tuple(out.shape)}") from None


# ---------------------------------------------------------------------------------------
# One step for K chains
# ---------------------------------------------------------------------------------------
def ais_init(
    position: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    step_size: float | Tensor = 0.1,
) -> AISState:
    """``K`` chains at ``position`` ``(K, d)`` (draws of ``pi_0``) with log weight 0.

    ``log_prior_fn`` and ``log_likelihood_fn`` are batched, ``(K, d) -> (K,)``; ``step_size``
    a scalar or ``(K,)``.
    """
    position = as_positions(position, "position")
    log_prior, log_likelihood, prior_grad, likelihood_grad = _evaluate(position, log_prior_fn, log_likelihood_fn, None)
    num_chains = position.shape[0]
    return AISState(
        position,
        log_prior,
        log_likelihood,
        prior_grad,
        likelihood_grad,
        torch.zeros(num_chains, dtype=position.dtype, device=position.device),
        _as_chain_vector(step_size, num_chains, position, "step_size"),
    )


def ais_step(
    state: AISState,
    beta_prev: float | Tensor,
    beta: float | Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    step_size: float | Tensor | None = None,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Tensor | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
    generator: torch.Generator | None = None,
) -> tuple[AISState, AISInfo]:
    """One AIS step for ``K`` chains: ``log w += (beta - beta_prev) log L(x)``, then a ``pi_beta``-invariant move.

    ``pi_beta ∝ pi_0 L^beta`` (geometric path).  ``beta_prev``, ``beta`` and ``step_size``
    (``state.step_size`` when ``None``) are scalars or ``(K,)``.  The move is HMC
    (``transition="hmc"``): a momentum ``~ N(0, M)``, ``num_leapfrog`` leapfrog steps, a
    momentum flip and a Metropolis correction; ``inverse_mass_matrix`` is ``(d,)`` or ``(d, d)``
    (identity when ``None``).  A proposal with a non-finite log density or position is rejected
    and flagged divergent, as is one whose energy error exceeds ``max_delta_energy``.

    ``transition`` may instead be a batched kernel ``transition(generator, position (K, d),
    logdensity_fn, step_size (K,)) -> (new_position (K, d), acceptance_rate (K,))`` that leaves
    ``exp(logdensity_fn)`` (batched, ``(K, d) -> (K,)``) invariant row by row (reversible, for
    the BDMC and multi-sample bounds); a returned row with a non-finite tempered log density is
    rejected and counted.  With ``beta < beta_prev`` this is a step of a reverse chain.
    """
    check_transition(transition)
    num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)
    position = state.position
    num_chains = position.shape[0]
    beta_prev = _as_chain_vector(beta_prev, num_chains, position, "beta_prev")
    beta = _as_chain_vector(beta, num_chains, position, "beta")
    step = state.step_size if step_size is None else _as_chain_vector(step_size, num_chains, position, "step_size")
    log_weight = state.log_weight + (beta - beta_prev) * state.log_likelihood
    imm = as_inverse_mass_matrix(inverse_mass_matrix, position)
    if isinstance(transition, str):
        move = _hmc_move(
            generator, state, beta, log_prior_fn, log_likelihood_fn, step, num_leapfrog, imm, max_delta_energy
        )
    else:
        move = _user_move(transition, generator, position, beta, log_prior_fn, log_likelihood_fn, step)
    proposal, acceptance_rate, accepted, valid, divergent = move
    moved = accepted & valid

    def keep(new, old):
        mask = moved if new.dim() == 1 else moved[:, None]
        return torch.where(mask, new, old)

    # position, log_prior, log_likelihood and the two gradients: the proposal's where it moved
    kept = (keep(new, old) for new, old in zip(proposal, state[:5], strict=True))
    new_state = AISState(*kept, log_weight, step)
    return new_state, AISInfo(acceptance_rate, moved, divergent, step)
