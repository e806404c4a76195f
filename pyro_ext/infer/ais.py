"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) in torch, and a Pyro shell.

Neal, "Annealed importance sampling", Statistics and Computing 11, 2001;
Grosse, Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543, 2015.

The torch twin of :mod:`numpyro_ext.infer.ais`, with the same names and semantics.  Geometric
path from a normalised initial density ``pi_0`` (the prior, or a proposal) to the unnormalised
target ``pi_0(x) L(x)`` with normaliser ``Z = E_{pi_0}[L]``::

    log pi_beta(x) = log pi_0(x) + beta log L(x),        0 = beta_0 < beta_1 < ... < beta_T = 1.

A forward chain draws ``x_0 ~ pi_0`` and, for ``t = 1..T``, adds the weight increment and then
moves with an HMC kernel ``K_t`` that leaves ``pi_{beta_t}`` invariant::

    log w += (beta_t - beta_{t-1}) log L(x_{t-1}),       x_t ~ K_t(. | x_{t-1}).

``E[w] = Z`` (Neal 2001), so ``log((1/K) sum_k w_k)`` over ``K`` independent chains is a
stochastic lower bound on ``log Z``.  A reverse chain starts from an exact sample of ``pi_1``
(the posterior) and runs the kernels backwards; its weight, the same product along its path,
has ``E[1/w] = 1/Z`` (every ``K_t`` is reversible), so ``-log((1/K) sum_k 1/w_k)`` is a
stochastic upper bound (BDMC, Grosse et al. 2015).  Standard errors are the delta method's on
the mean weight (:func:`adapters.mi.log_mean_exp_bound`).

**Step sizes.**  Both identities need each ``K_t`` fixed before the chain reaches temperature
``t`` (or chosen independently of the chain's own path): a step size adapted from the chain's
own acceptances is correlated with its state, the kernel mixture is no longer
``pi_t``-invariant and the weights are biased.  So :func:`ais` with ``adapt_step_size=True``
(each chain's step size multiplied by ``exp(kappa (a_t - target_accept_prob))`` after every
transition) is a *pilot*: :func:`tune_step_sizes` runs it on independent chains and returns one
step size per temperature (the geometric mean over the pilot's chains,
:func:`pilot_step_sizes`), and the estimate comes from a second run with that fixed schedule.
The reverse chains use the same schedule, so they are exact reversals of the forward chains.

**Batching.**  The core runs ``K`` chains as tensors ``(K, d)``; every density it calls is
*batched*, ``(K, d) -> (K,)``, and is called once per leapfrog step for all chains (a Python
loop runs over the temperatures and leapfrog steps only).  Gradients come from one backward
pass of the summed densities (the chains do not interact, so row ``k`` of the gradient is
chain ``k``'s).  The :class:`AIS` shell turns one-sample functions and Pyro models into batched
ones with ``torch.func.vmap``.  :mod:`pyro_ext.infer.drhmc`'s leapfrog pieces work on one chain
with Python-float log densities (and stop a trajectory at its first non-finite point), so the
batched leapfrog, kinetic energy and momentum draw live here; the arithmetic is the same.

**Non-finite densities.**  A chain whose trajectory reaches a non-finite position or tempered
log density is frozen at its start for the rest of the trajectory (so no density is ever
evaluated at a non-finite point) and its proposal is rejected and counted as divergent, as is
one whose energy error exceeds ``max_delta_energy``.  A chain whose start has zero density
accepts any finite proposal (it carries no weight; moving keeps it from sticking).

**Randomness.**  The core draws from ``generator`` (a ``torch.Generator``) or, when it is
``None``, from torch's global generator (``pyro.set_rng_seed``); per HMC transition, in this
order: the momentum noise ``randn(K, d)``, then the Metropolis uniforms ``rand(K)``, both of
the positions' dtype.  The shell uses the global generator.

Shapes: ``K`` chains, ``d`` unconstrained dimensions, ``T`` annealing steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch

from adapters.mi import AISConfig, BoundEstimate, check_schedule, effective_sample_size, log_mean_exp_bound
from adapters.validation import check_positive_int, check_probability
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy, leapfrog, metropolis_test, sample_momentum

__all__ = [
    "AIS",
    "AISInfo",
    "AISOutput",
    "AISResult",
    "AISState",
    "ais",
    "ais_init",
    "ais_reverse",
    "ais_step",
    "pilot_step_sizes",
    "tune_step_sizes",
]

Tensor = torch.Tensor
BatchedLogDensity = Callable[[Tensor], Tensor]
# the pilot's step sizes stay within exp(+-18) ~ [1.5e-8, 6.6e7] (as in the NumPyro module)
_LOG_STEP_BOUND = 18.0


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
def _finite_or_neg_inf(value: Tensor) -> Tensor:
    return torch.where(torch.isfinite(value), value, torch.full_like(value, -math.inf))


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
    log_prior = _finite_or_neg_inf(log_prior.detach().to(position.dtype))
    log_likelihood = _finite_or_neg_inf(log_likelihood.detach().to(position.dtype))
    finite_prior = torch.isfinite(log_prior)[:, None]
    finite_both = finite_prior & torch.isfinite(log_likelihood)[:, None]
    if beta is None:
        prior_grad = torch.where(finite_prior, grads[0], torch.zeros_like(x)).detach()
        likelihood_grad = torch.where(finite_both, grads[1], torch.zeros_like(x)).detach()
        return log_prior, log_likelihood, prior_grad, likelihood_grad
    finite = torch.isfinite(_tempered(log_prior, log_likelihood, beta))[:, None]
    return log_prior, log_likelihood, torch.where(finite, grads[0], torch.zeros_like(x)).detach(), None


def _as_inverse_mass_matrix(inverse_mass_matrix: Any, like: Tensor) -> Tensor:
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
    gradient evaluations) and the :class:`~pyro_ext.infer.hmc_util.MetropolisInfo`.
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
    log_joint_end = torch.where(alive, _finite_or_neg_inf(log_joint_end), torch.full_like(log_joint_end, -math.inf))
    delta = log_joint_end - log_joint_start
    valid = ~(torch.isnan(delta) | (log_joint_end == -math.inf))
    test = metropolis_test(generator, delta, start, valid, max_delta_energy)
    proposal = (end.position, last["log_prior"], last["log_likelihood"], last["prior_grad"], last["likelihood_grad"])
    return proposal, test


def _check_transition(transition: Any) -> None:
    if not (isinstance(transition, str) and transition == "hmc") and not callable(transition):
        raise ValueError(
            "transition must be 'hmc' or a kernel function "
            "transition(generator, position, logdensity_fn, step_size) -> (position, acceptance_rate), "
            f"got {transition!r}"
        )


def _positions(init_positions: Any, name: str = "init_positions") -> Tensor:
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
    position = _positions(position, "position")
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
    _check_transition(transition)
    num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)
    position = state.position
    num_chains = position.shape[0]
    beta_prev = _as_chain_vector(beta_prev, num_chains, position, "beta_prev")
    beta = _as_chain_vector(beta, num_chains, position, "beta")
    step = state.step_size if step_size is None else _as_chain_vector(step_size, num_chains, position, "step_size")
    log_weight = state.log_weight + (beta - beta_prev) * state.log_likelihood
    imm = _as_inverse_mass_matrix(inverse_mass_matrix, position)
    if isinstance(transition, str):
        proposal, test = _hmc_move(
            generator, state, beta, log_prior_fn, log_likelihood_fn, step, num_leapfrog, imm, max_delta_energy
        )
        new_position, log_prior, log_likelihood, prior_grad, likelihood_grad = proposal
        acceptance_rate, accepted, divergent = torch.exp(test.log_accept_prob), test.is_accepted, test.is_divergent
        valid = torch.isfinite(_tempered(log_prior, log_likelihood, beta)) & torch.isfinite(new_position).all(-1)
    else:

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
        divergent = ~valid
        acceptance_rate = torch.as_tensor(acceptance_rate, dtype=position.dtype, device=position.device).detach()
        acceptance_rate = torch.broadcast_to(acceptance_rate, (num_chains,))
        acceptance_rate = torch.where(
            valid & torch.isfinite(acceptance_rate), acceptance_rate, torch.zeros_like(acceptance_rate)
        )
    moved = accepted & valid

    def keep(new, old):
        mask = moved if new.dim() == 1 else moved[:, None]
        return torch.where(mask, new, old)

    new_state = AISState(
        keep(new_position, position),
        keep(log_prior, state.log_prior),
        keep(log_likelihood, state.log_likelihood),
        keep(prior_grad, state.log_prior_grad),
        keep(likelihood_grad, state.log_likelihood_grad),
        log_weight,
        step,
    )
    return new_state, AISInfo(acceptance_rate, moved, divergent, step)


# ---------------------------------------------------------------------------------------
# K chains through the schedule
# ---------------------------------------------------------------------------------------
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


def _anneal(
    generator: torch.Generator | None,
    positions: Tensor,
    log_prior_fn: BatchedLogDensity,
    log_likelihood_fn: BatchedLogDensity,
    betas_from: Tensor,
    betas_to: Tensor,
    steps: Tensor,
    adapt: bool,
    target_accept_prob: float,
    adaptation_rate: float,
    num_leapfrog: int,
    inverse_mass_matrix: Any,
    transition: str | Callable,
    max_delta_energy: float,
) -> tuple[AISState, AISInfo, Tensor]:
    """``K`` chains ``(K, d)`` through per-chain temperatures ``(T, K)``; returns the final
    states, the per-transition infos stacked to ``(T, K)`` and the adapted step sizes ``(T, K)``."""
    state = ais_init(positions, log_prior_fn, log_likelihood_fn, steps[0])
    imm = _as_inverse_mass_matrix(inverse_mass_matrix, positions)
    infos, adapted = [], []
    for t in range(steps.shape[0]):
        eps = state.step_size if adapt else steps[t]
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
        if adapt:
            log_eps = torch.log(eps) + adaptation_rate * (info.acceptance_rate - target_accept_prob)
            state = state._replace(step_size=torch.exp(torch.clamp(log_eps, -_LOG_STEP_BOUND, _LOG_STEP_BOUND)))
        infos.append(info)
        adapted.append(state.step_size)
    stacked = AISInfo(*(torch.stack(field) for field in zip(*infos, strict=True)))
    return state, stacked, torch.stack(adapted)


def _output(final: AISState, info: AISInfo, adapted: Tensor, reverse: Tensor) -> AISOutput:
    log_weights = torch.where(reverse, -final.log_weight, final.log_weight)
    return AISOutput(
        log_weights, final.position, final, info.acceptance_rate, info.is_divergent, info.step_size, adapted
    )


def _check_kernel_args(transition, num_leapfrog, target_accept_prob=None) -> int:
    _check_transition(transition)
    if target_accept_prob is not None:
        check_probability("target_accept_prob", float(target_accept_prob))
    return check_positive_int("num_leapfrog", num_leapfrog)


def _run(
    generator, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, backwards: bool, adapt: bool,
    target_accept_prob: float, adaptation_rate: float, num_leapfrog: int, inverse_mass_matrix, transition,
    max_delta_energy: float,
) -> AISOutput:  # fmt: skip
    """Every chain through the schedule, forwards (:func:`ais`) or backwards (:func:`ais_reverse`)."""
    positions = _positions(init_positions)
    betas, num_steps = _betas(betas, positions)
    steps = _step_sizes(step_size, num_steps, positions.shape[0], positions)
    reverse = torch.full((positions.shape[0],), backwards, dtype=torch.bool, device=positions.device)
    betas_from, betas_to, steps = _directions(betas, steps, reverse)
    final, info, adapted = _anneal(
        generator, positions, log_prior_fn, log_likelihood_fn, betas_from, betas_to, steps, adapt, target_accept_prob,
        adaptation_rate, num_leapfrog, inverse_mass_matrix, transition, max_delta_energy,
    )  # fmt: skip
    return _output(final, info, adapted, reverse)


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
        generator, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, False, bool(adapt_step_size),
        float(target_accept_prob), float(adaptation_rate), num_leapfrog, inverse_mass_matrix, transition,
        max_delta_energy,
    )  # fmt: skip


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
        generator, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, True, False, 0.65, 1.0,
        num_leapfrog, inverse_mass_matrix, transition, max_delta_energy,
    )  # fmt: skip


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
    num_leapfrog: int = 10,
    inverse_mass_matrix: Tensor | None = None,
    transition: str | Callable = "hmc",
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A step-size schedule ``(T,)`` from an adaptive pilot run of :func:`ais` (module docstring).

    Give the pilot its own ``init_positions`` and random numbers (independent of the estimating
    run's), so the schedule is independent of the chains that use it and AIS stays unbiased.
    """
    output = ais(
        init_positions,
        log_prior_fn,
        log_likelihood_fn,
        betas,
        step_size=step_size,
        num_leapfrog=num_leapfrog,
        inverse_mass_matrix=inverse_mass_matrix,
        transition=transition,
        adapt_step_size=True,
        target_accept_prob=target_accept_prob,
        adaptation_rate=adaptation_rate,
        max_delta_energy=max_delta_energy,
        generator=generator,
    )
    return pilot_step_sizes(output.adapted_step_size, output.log_weights)


# ---------------------------------------------------------------------------------------
# Batched densities from one-sample functions, Pyro models, Targets and proposals
# ---------------------------------------------------------------------------------------
def _vmap_log_density(fn: Callable, name: str = "log_likelihood_fn") -> Callable:
    """A one-sample log density ``fn(x (d,)) -> ()`` (more arguments allowed) as a batched one
    ``(K, d) -> (K,)``, through ``torch.func.vmap``.

    Runs under ``pyro.validation_enabled(False)``: the argument and support checks of torch
    distributions are data-dependent control flow, which ``vmap`` cannot batch (and a point
    outside the support must give ``-inf``/NaN, rejected by AIS, not an exception).
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


def _unvalidated(fn: Callable) -> Callable:
    def call(*xs: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            return fn(*xs)

    return call


class _Problem(NamedTuple):
    """What a run needs: batched ``log pi_0`` and ``log L``, a sampler of ``pi_0`` ``K -> (K, d)``,
    ``constrain`` ``(K, d) -> {site: (K, ...)}`` and ``unconstrain`` of draws ``-> (K, d)``."""

    log_prior_fn: BatchedLogDensity
    log_likelihood_fn: BatchedLogDensity
    sample_init: Callable[[int], Tensor]
    constrain: Callable[[Tensor], dict]
    unconstrain: Callable[[Any], Tensor]


def _check_proposal(proposal: Any) -> None:
    if not (callable(getattr(proposal, "sample", None)) and callable(getattr(proposal, "log_prob", None))):
        raise ValueError(
            "proposal must have sample(sample_shape) and log_prob(x) on the unconstrained R^d "
            f"(e.g. a torch/Pyro distribution with event shape (d,)), got {type(proposal).__name__}"
        )


def _proposal_problem(log_target: BatchedLogDensity, proposal: Any, constrain, unconstrain) -> _Problem:
    """Anneal from ``proposal`` (normalised, samplable, batched ``log_prob``) to the unnormalised ``log_target``."""
    _check_proposal(proposal)
    log_base = _unvalidated(proposal.log_prob)

    def log_increment(x):
        return log_target(x) - log_base(x)

    def sample_init(num):
        draws = torch.as_tensor(proposal.sample((num,))).detach()
        if draws.dim() != 2:
            raise ValueError(f"proposal.sample((K,)) must return shape (K, d), got {tuple(draws.shape)}")
        return draws

    return _Problem(log_base, log_increment, sample_init, constrain, unconstrain)


def _array_constrain(names: list[str] | None):
    def constrain(positions):
        if names is None:
            return {"x": positions}
        return {name: positions[:, i] for i, name in enumerate(names)}

    return constrain


def _array_unconstrain(samples):
    if isinstance(samples, Mapping):
        raise ValueError("posterior_samples must be an array of shape (num_chains, d) for a function target")
    return _positions(samples, "posterior_samples")


def _target_log_density(target: Any) -> BatchedLogDensity:
    """A non-Pyro :class:`adapters.Target`'s torch view, batched: ``vmap`` of a one-sample torch
    function, or the view itself where it takes a batch (the NumPy/JAX bridge of ``as_torch``)."""
    fn = target.as_torch()
    vmapped = torch.func.vmap(fn)
    probe = torch.zeros((2, target.dim), dtype=torch.float64)
    try:
        with pyro.validation_enabled(False):
            vmapped(probe)
    except Exception:  # an autograd.Function bridge (no vmap rule); it accepts (batch, dim) itself
        return _unvalidated(fn)
    return _unvalidated(vmapped)


def _pyro_problem(model: Callable, model_args: tuple, model_kwargs: dict, proposal: Any) -> _Problem:
    """Prior of the latent sites -> posterior given the observed sites, in the unconstrained space.

    One prototype trace finds the sites; each latent site ``s`` is unconstrained by
    ``biject_to(support)`` (as :func:`pyro.infer.mcmc.util.initialize_model` does), whose log
    Jacobian belongs to the prior.  ``log pi_0 = sum_latent log p(s | parents) + log|J|`` and
    ``log L = sum_observed log p`` (``pyro.factor`` included) come from one conditioned trace of
    the model per chain, batched by ``torch.func.vmap`` (so the model is written for one draw,
    as for NUTS).  Prior draws run the model once per chain (Pyro's own sampling).
    """
    from pyro import poutine
    from pyro.distributions.util import scale_and_mask
    from pyro.poutine.util import site_is_subsample
    from torch.distributions import biject_to

    trace = poutine.trace(model).get_trace(*model_args, **model_kwargs)
    sample_sites = {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    }
    latent = sorted(name for name, site in sample_sites.items() if not site["is_observed"])
    observed = [name for name, site in sample_sites.items() if site["is_observed"]]
    discrete = [name for name in latent if sample_sites[name]["fn"].support.is_discrete]
    if discrete:
        raise ValueError(f"model: AIS needs continuous latent sites, but {discrete} are discrete; marginalise them out")
    if not latent:
        raise ValueError("model: AIS needs at least one latent sample site, the model has none")
    if not observed and proposal is None:
        raise ValueError(
            "model: the model has no observed sites, so prior and posterior coincide; observe data (obs=...) "
            "or give a proposal to anneal from"
        )
    transforms = {name: biject_to(sample_sites[name]["fn"].support) for name in latent}
    prototype = {name: transforms[name].inv(sample_sites[name]["value"].detach()) for name in latent}
    shapes = {name: tuple(prototype[name].shape) for name in latent}
    sizes = [math.prod(shapes[name]) for name in latent]
    dtype = prototype[latent[0]].dtype
    deterministic = [
        name for name, site in trace.nodes.items() if site["type"] == "sample" and site["infer"].get("_deterministic")
    ]

    def unravel(x):
        parts = torch.split(x, sizes, dim=-1)
        return {name: part.reshape(shapes[name]) for name, part in zip(latent, parts, strict=True)}

    def conditioned(x):
        unconstrained = unravel(x)
        values = {name: transforms[name](u) for name, u in unconstrained.items()}
        log_jacobian = sum(
            (transforms[name].log_abs_det_jacobian(unconstrained[name], values[name]).sum() for name in latent),
            torch.zeros((), dtype=x.dtype),
        )
        tr = poutine.trace(poutine.condition(model, values)).get_trace(*model_args, **model_kwargs)
        return tr, log_jacobian

    def site_log_prob(site):
        log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        return scale_and_mask(log_p, site["scale"], site["mask"]).sum()

    def components_one(x):
        tr, log_jacobian = conditioned(x)
        log_prior = log_jacobian + sum(site_log_prob(tr.nodes[name]) for name in latent)
        log_likelihood = sum((site_log_prob(tr.nodes[name]) for name in observed), torch.zeros((), dtype=x.dtype))
        return torch.stack([log_prior.to(x.dtype), log_likelihood.to(x.dtype)])

    components = _vmap_log_density(components_one, "model")
    cache: dict[str, Any] = {}

    def both(x):
        # the prior and the likelihood of one position come from one batched trace
        if cache.get("x") is not x:
            cache["x"], cache["value"] = x, components(x)
        return cache["value"]

    def log_prior(x):
        return both(x)[:, 0]

    def log_likelihood(x):
        return both(x)[:, 1]

    def constrain_one(x):
        tr, _ = conditioned(x)
        return {name: tr.nodes[name]["value"] for name in latent + deterministic}

    def constrain(positions):
        with torch.no_grad(), pyro.validation_enabled(False):
            return torch.func.vmap(constrain_one)(positions.to(dtype))

    def unconstrain(samples):
        if not isinstance(samples, Mapping):
            raise ValueError(
                f"posterior_samples must be a dict of constrained latent sites {latent}, got {type(samples).__name__}"
            )
        missing = [k for k in latent if k not in samples]
        if missing:
            raise ValueError(f"posterior_samples is missing the latent sites {missing} (expected {latent})")
        parts = []
        for name in latent:
            value = torch.as_tensor(samples[name], dtype=dtype)
            num = value.shape[0] if value.dim() > 0 else 0
            site_shape = tuple(sample_sites[name]["value"].shape)
            if value.dim() == 0 or tuple(value.shape[1:]) != site_shape:
                raise ValueError(
                    f"posterior_samples[{name!r}] must have shape (num_chains, *{site_shape}), got {tuple(value.shape)}"
                )
            parts.append(transforms[name].inv(value).reshape(num, -1))
        return _positions(torch.cat(parts, dim=-1), "posterior_samples")

    def sample_prior(num):
        draws = []
        for _ in range(num):  # Pyro's own sampling, one model run per chain (once per run)
            tr = poutine.trace(model).get_trace(*model_args, **model_kwargs)
            draws.append(torch.cat([transforms[k].inv(tr.nodes[k]["value"].detach()).reshape(-1) for k in latent]))
        return torch.stack(draws).to(dtype)

    if proposal is None:
        return _Problem(log_prior, log_likelihood, sample_prior, constrain, unconstrain)

    def log_joint(x):
        values = both(x)
        return values[:, 0] + values[:, 1]

    return _proposal_problem(log_joint, proposal, constrain, unconstrain)


# ---------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------
def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_positive_int("seed", seed, allow_zero=True))


class AISResult:
    """What :meth:`AIS.run` (forward) and :meth:`AIS.run_reverse` (BDMC) return.

    * ``log_Z`` — a :class:`~adapters.mi.BoundEstimate`: ``kind="lower"`` (forward,
      ``log mean w``) or ``"upper"`` (reverse, ``-log mean 1/w``), delta-method standard error;
    * ``mean_log_weight`` — the single-chain bound ``mean_k log w_k`` (forward:
      ``E log w <= log Z``; reverse: ``E log w >= log Z``), looser but with a small standard
      error; the gap between the directions estimates the symmetrised KL divergence between the
      forward and reverse path distributions (Grosse et al. 2015);
    * ``log_weights`` ``(K,)`` — forward-form ``log w`` of each chain (numpy float64);
    * ``positions`` ``(K, d)`` — final unconstrained states (a tensor);
    * ``step_sizes`` ``(T,)`` — the fixed per-temperature step sizes used, ``acceptance_rate``
      ``(T, K)``, ``num_divergent`` (rejected non-finite or diverging proposals, all chains),
      ``ess`` (Kish's, of the weights), ``direction``.
    """

    def __init__(self, output: AISOutput, kind: str, constrain: Callable, step_sizes: Tensor):
        self.output = output
        self.direction = "forward" if kind == "lower" else "reverse"
        self.log_weights = output.log_weights.detach().cpu().numpy().astype(np.float64)
        estimator = "ais" if kind == "lower" else "bdmc-reverse-ais"
        self.log_Z = log_mean_exp_bound(self.log_weights, kind, estimator)
        with np.errstate(invalid="ignore"):  # a zero weight makes the mean -inf and its stderr NaN
            self.mean_log_weight = BoundEstimate.from_samples(self.log_weights, kind, f"{estimator}-mean-log-weight")
        self.positions = output.positions
        self.step_sizes = torch.as_tensor(step_sizes).detach().cpu().numpy()
        self.acceptance_rate = output.acceptance_rate.detach().cpu().numpy()
        self.num_divergent = int(output.is_divergent.sum())
        self.ess = effective_sample_size(self.log_weights if kind == "lower" else -self.log_weights)
        self._constrain = constrain

    def get_samples(self, seed: int | torch.Generator | None = None, num_samples: int | None = None) -> dict:
        """Constrained final states ``{site: (K, ...)}`` (deterministic sites included).

        Without ``seed``: the ``K`` chains' states, to be weighted by ``exp(log_weights)``.  With
        it (an int or a ``torch.Generator``): ``num_samples`` (default ``K``) states resampled
        multinomially by weight, i.e. equally weighted approximate posterior draws (forward run).
        """
        samples = self._constrain(self.positions)
        if seed is None:
            return samples
        num = check_positive_int("num_samples", num_samples) if num_samples is not None else self.log_weights.size
        logits = self.log_weights if self.direction == "forward" else -self.log_weights
        logits = np.where(np.isfinite(logits), logits, -np.inf)
        if not np.any(np.isfinite(logits)):
            raise ValueError("get_samples: every chain has zero weight, nothing to resample")
        weights = torch.as_tensor(np.exp(logits - np.max(logits)))
        index = torch.multinomial(weights, num, replacement=True, generator=_generator(seed))
        return {k: v[index] for k, v in samples.items()}

    def to_arviz(self, seed: int | torch.Generator = 0):
        """``arviz.InferenceData``: resampled states as one chain (``posterior``), the chains'
        ``log_weight`` (``sample_stats``) and ``log_Z``/``log_Z_stderr`` in ``attrs``."""
        import arviz as az

        posterior = {k: v.detach().cpu().numpy()[None] for k, v in self.get_samples(seed).items()}
        idata = az.from_dict(posterior=posterior, sample_stats={"log_weight": self.log_weights[None]})
        idata.attrs.update(log_Z=self.log_Z.value, log_Z_stderr=self.log_Z.stderr, log_Z_kind=self.log_Z.kind)
        return idata

    def print_summary(self) -> None:
        """``log Z`` with its standard error, ESS, mean acceptance and divergences."""
        mean_accept = float(np.mean(self.acceptance_rate)) if self.acceptance_rate.size else math.nan
        print(
            f"{self.log_Z}\n"
            f"ESS {self.ess:.1f} of {self.log_weights.size} chains, mean acceptance {mean_accept:.3f}, "
            f"{self.num_divergent} divergent transitions, {self.step_sizes.shape[0]} temperatures"
        )

    def __repr__(self) -> str:
        return f"AISResult({self.direction}, {self.log_Z})"


# ---------------------------------------------------------------------------------------
# The user-facing object
# ---------------------------------------------------------------------------------------
class AIS:
    """Annealed importance sampling of ``log Z`` with a BDMC upper bound, for Pyro models.

    The twin of :class:`numpyro_ext.infer.AIS`; randomness from torch's global generator
    (``pyro.set_rng_seed``).

    Args:
        model: a Pyro model whose observed sites (``obs=...``, and ``pyro.factor``) form the
            likelihood: AIS anneals from the prior of the latent sites to the posterior, in the
            unconstrained space (the Jacobians of the transforms belong to the prior), and ``Z``
            is the evidence ``p(observations)``.  The model is written for one draw and batched
            over chains by ``torch.func.vmap`` (no Python control flow on latent values).  Or
            an :class:`adapters.Target`: a Pyro one runs through its model and bound arguments;
            any other needs ``proposal`` and ``Z`` is the normaliser of ``exp(target.log_density)``.
        log_likelihood_fn: instead of ``model``, ``log L(x)`` of one unconstrained ``x`` ``(d,)``
            (a torch function, or a Target), with ``proposal`` the prior: ``Z = E_prior[L]``.
        proposal: the initial distribution ``pi_0`` on the unconstrained ``R^d``, an object with
            ``sample((K,)) -> (K, d)`` and a batched ``log_prob(x (K, d)) -> (K,)`` (e.g. a
            torch or Pyro distribution with event shape ``(d,)``); with a model, AIS then
            anneals from it instead of the prior.
        vectorized: ``log_likelihood_fn`` is already batched, ``(K, d) -> (K,)`` (no ``vmap``).

    The other arguments (``num_steps``, ``num_chains``, ``schedule``, ``transition``,
    ``step_size``, ``num_leapfrog``, ``adapt_step_size``, ``target_accept_prob``,
    ``inverse_mass_matrix``, ``adaptation_rate``, ``max_delta_energy``) are those of
    :class:`numpyro_ext.infer.AIS`; a user ``transition`` is batched,
    ``transition(generator, position (K, d), logdensity_fn, step_size (K,)) -> (position,
    acceptance_rate (K,))`` (see :func:`ais_step`).

    ``run(*model_args, **model_kwargs)`` gives the forward estimate (``log_Z`` a lower bound),
    ``run_reverse(posterior_samples, *model_args, **model_kwargs)`` the BDMC upper bound.
    :attr:`step_sizes` holds the schedule tuned by the last :meth:`run` (used by
    :meth:`run_reverse`; any fixed schedule keeps both bounds valid).
    """

    def __init__(
        self,
        model: Any = None,
        *,
        log_likelihood_fn: Callable | Any = None,
        proposal: Any = None,
        vectorized: bool = False,
        num_steps: int = 100,
        num_chains: int = 16,
        schedule: Any = "sigmoid",
        transition: str | Callable = "hmc",
        step_size: float = 0.1,
        num_leapfrog: int = 10,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.65,
        inverse_mass_matrix: Any = None,
        adaptation_rate: float = 1.0,
        max_delta_energy: float = 1000.0,
    ):
        from adapters.target import Target

        self.config = AISConfig(
            num_steps=num_steps,
            num_chains=num_chains,
            schedule=schedule,
            transition=transition,
            step_size=step_size,
            num_leapfrog=num_leapfrog,
            adapt_step_size=adapt_step_size,
            target_accept_prob=target_accept_prob,
            adaptation_rate=adaptation_rate,
            max_delta_energy=max_delta_energy,
        )
        if (model is None) == (log_likelihood_fn is None):
            raise ValueError(
                "AIS: give exactly one of `model` (a Pyro model or adapters.Target) and `log_likelihood_fn`"
            )
        if not isinstance(vectorized, bool):
            raise ValueError(f"vectorized must be True or False, got {vectorized!r}")
        self._bound_args = None
        self._target = None
        if isinstance(model, Target):
            if model.backend == "pyro":
                self._bound_args = (model.model_args, model.model_kwargs)
                model = model.model
            else:
                if proposal is None:
                    raise ValueError(
                        f"proposal: a {model.backend} Target gives only an unnormalised density, so AIS needs a "
                        "proposal (initial distribution on R^d) to anneal from"
                    )
                self._target, model = model, None
        elif model is not None and not callable(model):
            raise ValueError(f"model must be a Pyro model (a callable) or an adapters.Target, got {model!r}")
        if log_likelihood_fn is not None:
            if proposal is None:
                raise ValueError("proposal: with log_likelihood_fn, give the prior as `proposal` (sample and log_prob)")
            if isinstance(log_likelihood_fn, Target):
                log_likelihood_fn = _target_log_density(log_likelihood_fn)
            elif not callable(log_likelihood_fn):
                raise ValueError(
                    f"log_likelihood_fn must be a function of x (d,) or a Target, got {log_likelihood_fn!r}"
                )
            elif vectorized:
                log_likelihood_fn = _unvalidated(log_likelihood_fn)
            else:
                log_likelihood_fn = _vmap_log_density(log_likelihood_fn)
        self.model = model
        self.log_likelihood_fn = log_likelihood_fn
        self.proposal = proposal
        self.inverse_mass_matrix = inverse_mass_matrix
        self.step_sizes: np.ndarray | None = None

    # ---- set-up ----------------------------------------------------------------------
    def _problem(self, model_args: tuple, model_kwargs: dict) -> _Problem:
        if self.model is not None:
            return _pyro_problem(self.model, tuple(model_args), dict(model_kwargs), self.proposal)
        if self._target is not None:
            target = self._target
            return _proposal_problem(
                _target_log_density(target), self.proposal, _array_constrain(target.names), _array_unconstrain
            )
        # plain functions: the proposal is the prior and log_likelihood_fn the whole increment
        problem = _proposal_problem(self.log_likelihood_fn, self.proposal, _array_constrain(None), _array_unconstrain)
        return problem._replace(log_likelihood_fn=self.log_likelihood_fn)

    def _bind(self, model_args: tuple, model_kwargs: dict) -> tuple[tuple, dict]:
        if self._bound_args is not None:
            if model_args or model_kwargs:
                raise ValueError("AIS: the Target binds the model's arguments; call run() without them")
            return self._bound_args
        if self.model is None and (model_args or model_kwargs):
            raise ValueError("AIS: model arguments are only for a Pyro model; this AIS was built from functions")
        return tuple(model_args), dict(model_kwargs)

    def _anneal(self, problem: _Problem, init: Tensor, reverse: bool, steps: Tensor, adapt: bool) -> AISOutput:
        cfg = self.config
        betas = torch.as_tensor(cfg.betas, dtype=init.dtype)
        steps_tk = torch.broadcast_to(steps.to(init.dtype)[:, None], (cfg.num_steps, init.shape[0]))
        flags = torch.full((init.shape[0],), reverse, dtype=torch.bool)
        betas_from, betas_to, steps_tk = _directions(betas, steps_tk, flags)
        final, info, adapted = _anneal(
            None,
            init,
            problem.log_prior_fn,
            problem.log_likelihood_fn,
            betas_from,
            betas_to,
            steps_tk,
            adapt,
            cfg.target_accept_prob,
            cfg.adaptation_rate,
            cfg.num_leapfrog,
            self.inverse_mass_matrix,
            cfg.transition,
            cfg.max_delta_energy,
        )
        return _output(final, info, adapted, flags)

    def _tune(self, problem: _Problem, dtype: torch.dtype) -> Tensor:
        """The pilot: adaptive forward chains from fresh draws of ``pi_0``, one step size per temperature."""
        cfg = self.config
        init = _positions(problem.sample_init(cfg.num_chains)).to(dtype)
        steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=dtype)
        output = self._anneal(problem, init, False, steps, True)
        return pilot_step_sizes(output.adapted_step_size, output.log_weights)

    # ---- running ---------------------------------------------------------------------
    def run(self, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Forward AIS: ``K`` chains from ``pi_0``; ``result.log_Z`` is a stochastic lower bound.

        Random numbers, from torch's global generator, in this order: the chains' draws of
        ``pi_0``, the pilot (its own draws of ``pi_0`` and transitions), the estimating run.
        """
        cfg = self.config
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        problem = self._problem(model_args, model_kwargs)
        init = _positions(problem.sample_init(cfg.num_chains))
        if cfg.adapt_step_size:
            steps = self._tune(problem, init.dtype)
        else:
            steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=init.dtype)
        output = self._anneal(problem, init, False, steps, False)
        self.step_sizes = steps.detach().cpu().numpy()
        return AISResult(output, "lower", problem.constrain, steps)

    def run_reverse(self, posterior_samples: Any, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Reverse AIS (BDMC) from exact posterior samples; ``result.log_Z`` is a stochastic upper bound.

        ``posterior_samples``: for a model, a dict of constrained latent sites with a leading
        axis of ``K'`` draws (e.g. the latents that simulated the data); otherwise an array
        ``(K', d)``.  One reverse chain per draw.  The step sizes are :attr:`step_sizes` from the
        last :meth:`run` (any fixed schedule keeps the bound valid), else, when adapting, those
        of a fresh pilot forward run, else the fixed ``step_size``.
        """
        cfg = self.config
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        problem = self._problem(model_args, model_kwargs)
        init = problem.unconstrain(posterior_samples)
        if self.step_sizes is not None and self.step_sizes.shape == (cfg.num_steps,):
            steps = torch.as_tensor(self.step_sizes, dtype=init.dtype)
        elif cfg.adapt_step_size:
            steps = self._tune(problem, init.dtype)
            self.step_sizes = steps.detach().cpu().numpy()
        else:
            steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=init.dtype)
        output = self._anneal(problem, init, True, steps, False)
        return AISResult(output, "upper", problem.constrain, steps)
