"""Delayed-rejection Hamiltonian Monte Carlo (DR-HMC) in JAX: the pure math core.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610).

The pure math core, apart from the NumPyro kernel (:mod:`numpyro_ext.infer.drhmc.kernel`):

* :func:`delayed_rejection` - the meta-algorithm (Tierney & Mira 1999; Green & Mira 2001)
  for any sequence of deterministic, volume-preserving involutions on an extended state;
  HMC (leapfrog + momentum flip) is one such family, a random walk ``(x, v) -> (x + s v, -v)``
  is another.
* :func:`init` / :func:`build_kernel` - DR-HMC's BlackJAX-style transition on a flat position
  vector, built from the leapfrog of :mod:`numpyro_ext.infer.hmc_util`.

The acceptance probability of stage ``k`` from ``x`` with proposal ``y_k = F_k(x)`` is the
paper's eq. (9)/(12), written recursively for any number of stages and with the
probabilistic-retry factor of Section 3.2::

    alpha_k(x) = min(1, pi(y_k) prod_{j<k} [1 - alpha_j(y_k)]^w
                      / (pi(x)   prod_{j<k} [1 - alpha_j(x)]^w))

where ``alpha_j(y_k)`` are the "ghost" acceptance probabilities of the earlier stages started
from ``y_k`` (computed by the same recursion), ``w = 1`` for plain delayed rejection and
``w = 2`` for probabilistic delayed rejection, whose chance of trying stage ``j + 1`` after
stage ``j`` is rejected is ``1 - alpha_j`` (so the reverse/forward ratio of try
probabilities is one more factor of the same product).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adapters.configs import (  # ATLAS's constants, shared with the Pyro twin
    LOCAL_STEP_CAP,
    LOCAL_STEP_FLOOR,
    LOCAL_STEP_FRACTION,
    LOCAL_STEP_LOG_SD,
    check_flag,
)
from adapters.validation import check_greater, check_positive, check_positive_int
from numpyro_ext.infer.hmc_util import (
    IntegratorState,
    finite_or_neg_inf,
    is_divergent,
    kinetic_energy,
    leapfrog_curvature_involution,
    leapfrog_involution,
    sample_momentum,
)

__all__ = [
    "DRHMCInfo",
    "DRHMCState",
    "DelayedRejectionInfo",
    "StageAuxiliary",
    "build_kernel",
    "delayed_rejection",
    "init",
    "local_step_size_law",
    "local_step_stages",
    "stage_schedule",
]

Array = jax.Array


# ---------------------------------------------------------------------------------------
# The delayed-rejection meta-algorithm
# ---------------------------------------------------------------------------------------
class DelayedRejectionInfo(NamedTuple):
    """What one delayed-rejection transition did (all scalars).

    * ``acceptance_rate``: acceptance probability of the last stage tried.
    * ``first_acceptance_rate``: acceptance probability of stage 0 (what step-size adaptation targets).
    * ``is_accepted``: whether some stage was accepted.
    * ``stage``: 0-based index of the accepted stage, -1 when every tried stage was rejected.
    * ``num_proposals``: stages tried on the chain (not counting ghosts).
    * ``is_divergent``: nothing was accepted and the last stage tried diverged (non-finite or
      energy error above ``max_delta_energy``).
    * ``num_evals``: cost units (gradient evaluations for HMC) of all proposals tried, ghosts included.
    * ``chain_evals``: the part of ``num_evals`` spent on the chain's own proposals.
    * ``log_joint``: log density of the extended state the chain moved to.
    """

    acceptance_rate: Array
    first_acceptance_rate: Array
    is_accepted: Array
    stage: Array
    num_proposals: Array
    is_divergent: Array
    num_evals: Array
    chain_evals: Array
    log_joint: Array


def _log1m_exp(log_p: Array) -> Array:
    """log(1 - p) for log p <= 0, accurate near both ends (Maechler 2012)."""
    return jnp.where(log_p > -math.log(2.0), jnp.log(-jnp.expm1(log_p)), jnp.log1p(-jnp.exp(log_p)))


def _log_accept(
    log_joint_from, log_joint_to, log_rejects_from, log_rejects_to, weight, log_aux_from=0.0, log_aux_to=0.0
):
    """Log of eq. (12): min(0, log-numerator - log-denominator), with every 0/0 a rejection.

    ``log_aux_from``/``log_aux_to``: ``log q(a | .)`` of a :class:`StageAuxiliary` value ``a`` at the
    two ends (0 for stage 0, which draws none).  A zero denominator (some earlier stage at the
    start is accepted surely) is only reached inside a ghost ladder whose product already carries
    that zero, so its value is moot; it is set to 1 there, which keeps the arithmetic finite.
    """
    numerator = log_joint_to + log_aux_to + weight * sum(log_rejects_to, jnp.zeros_like(log_joint_to))
    denominator = log_joint_from + log_aux_from + weight * sum(log_rejects_from, jnp.zeros_like(log_joint_from))
    log_ratio = jnp.where(denominator == -jnp.inf, 0.0, numerator - denominator)
    log_ratio = jnp.where(jnp.isnan(log_ratio) | (numerator == -jnp.inf), -jnp.inf, log_ratio)
    return jnp.minimum(log_ratio, 0.0)


class StageAuxiliary(NamedTuple):
    """A value ``a`` that the stages after the first share, drawn once per transition from a law that
    depends on the start through its first-stage trajectory (ATLAS's local step size: Modi 2024).

    ``sample(key, summary) -> a`` and ``log_density(a, summary) -> log q(a | start)``, ``summary``
    being the third output of stage 0's proposal from that start.  The stages ``k >= 1`` are then
    involutions ``F_{k,a}`` for every fixed ``a``, and the ghost paths reuse the chain's ``a``.
    """

    sample: Callable[[Array, Any], Any]
    log_density: Callable[[Any, Any], Array]


def _propose(proposals, auxiliary, k, point, aux):
    """Stage ``k``'s ``(proposal, cost, summary)``; ``summary`` is stage 0's, with an auxiliary law."""
    if auxiliary is None:
        return (*proposals[k](point), None)
    if k == 0:
        return proposals[0](point)
    return (*proposals[k](point, aux), None)


def _ghost_ladder(proposals, log_joint_fn, weight, start, log_joint_start, depth, auxiliary=None, aux=None):
    """``log(1 - alpha_j(start))`` for ``j < depth`` (the ghost stages from ``start``), their cost, and
    the summary of stage 0 from ``start`` (what the auxiliary law's density at ``start`` reads)."""
    log_rejects, cost, start_summary = [], jnp.zeros((), jnp.int32), None
    for j in range(depth):
        proposal, proposal_cost, summary = _propose(proposals, auxiliary, j, start, aux)
        if j == 0:
            start_summary = summary
        log_joint_proposal = finite_or_neg_inf(log_joint_fn(proposal))
        ghost_rejects, ghost_cost, proposal_summary = _ghost_ladder(
            proposals, log_joint_fn, weight, proposal, log_joint_proposal, j, auxiliary, aux
        )
        log_aux = (0.0, 0.0)
        if auxiliary is not None and j > 0:
            log_aux = (auxiliary.log_density(aux, start_summary), auxiliary.log_density(aux, proposal_summary))
        log_alpha = _log_accept(log_joint_start, log_joint_proposal, log_rejects, ghost_rejects, weight, *log_aux)
        log_rejects.append(_log1m_exp(log_alpha))
        cost = cost + proposal_cost + ghost_cost
    return log_rejects, cost, start_summary


class _Carry(NamedTuple):
    """The chain's side of :func:`delayed_rejection` between stages."""

    point: Any
    active: Array  # try the next stage
    log_rejects: Array  # (num_stages,): log(1 - alpha_j(start)) of the stages tried
    info: DelayedRejectionInfo
    summary: Any  # stage 0's summary of the start (an auxiliary law reads it), else None
    aux: Any  # the auxiliary value the stages k >= 1 share, else None


def _start_info(log_joint_start: Array) -> DelayedRejectionInfo:
    """The info of a transition that has tried no stage yet."""
    zero_int = jnp.zeros((), jnp.int32)
    return DelayedRejectionInfo(
        acceptance_rate=jnp.zeros_like(log_joint_start),
        first_acceptance_rate=jnp.zeros_like(log_joint_start),
        is_accepted=jnp.array(False),
        stage=jnp.array(-1, jnp.int32),
        num_proposals=zero_int,
        is_divergent=jnp.array(False),
        num_evals=zero_int,
        chain_evals=zero_int,
        log_joint=log_joint_start,
    )


def delayed_rejection(
    rng_key: Array,
    point: Any,
    log_joint_fn: Callable[[Any], Array],
    proposals: Sequence[Callable[..., tuple]],
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
    auxiliary: StageAuxiliary | None = None,
) -> tuple[Any, DelayedRejectionInfo]:
    """One delayed-rejection transition from ``point`` (Modi et al. 2023, eqs. 9-12).

    Args:
        rng_key: a JAX PRNG key.
        point: the current extended state, any pytree (HMC: position, momentum and cached
            log density/gradient). Randomness such as a momentum refresh happens before.
        log_joint_fn: log density of an extended state (read from the cache where possible).
        proposals: stage ``k``'s proposal ``F_k(point) -> (new_point, cost)``; each ``F_k``
            must be a deterministic, volume-preserving involution (``F_k(F_k(z)) = z``) so
            that no Jacobian enters the ratio. ``cost`` counts its work (e.g. gradient
            evaluations) for the ``num_evals`` diagnostic.  With ``auxiliary``, stage 0 returns
            ``(new_point, cost, summary)`` and the later stages are ``F_k(point, a) -> (new_point, cost)``.
        probabilistic: try stage ``k + 1`` after stage ``k`` is rejected only with
            probability ``1 - alpha_k`` (probabilistic delayed rejection, Section 3.2).
        max_delta_energy: a proposal whose log joint is this much below the start's (or
            non-finite) counts as divergent.
        auxiliary: a :class:`StageAuxiliary` law: the later stages share one value ``a`` drawn from
            ``q(a | start)``.  Each acceptance of a stage ``k >= 1`` (chain and ghosts alike) then
            carries ``q(a | y_k) / q(a | start)``, the reverse path drawing the same ``a``
            (Green & Mira 2001's delayed rejection with auxiliary variables): the kernel stays
            reversible for every ``a``, hence after integrating it out.

    Returns:
        ``(new_point, info)``; ``new_point`` is the accepted proposal or ``point``.

    Computing stage ``k``'s ghosts runs the full ladder of stages ``0..k-1`` from its
    proposal, recursively, so trying all ``K`` stages costs
    ``sum_k 2^(K-1-k) * cost_k`` proposals; ``K <= 4`` is practical.
    """
    num_stages = len(proposals)
    if num_stages < 1:
        raise ValueError(f"delayed_rejection: `proposals` must hold at least one proposal, got {num_stages}")
    weight = 2.0 if probabilistic else 1.0

    log_joint_start = finite_or_neg_inf(log_joint_fn(point))
    if auxiliary is None:
        accept_keys, retry_keys = jax.random.split(rng_key)
    else:
        accept_keys, retry_keys, aux_key = jax.random.split(rng_key, 3)
    log_u_accept = jnp.log(jax.random.uniform(accept_keys, (num_stages,)))
    log_u_retry = jnp.log(jax.random.uniform(retry_keys, (num_stages,)))

    def try_stage(carry: _Carry, k: int) -> _Carry:
        proposal, proposal_cost, summary = _propose(proposals, auxiliary, k, point, carry.aux)
        log_joint_proposal = finite_or_neg_inf(log_joint_fn(proposal))
        ghost_rejects, ghost_cost, proposal_summary = _ghost_ladder(
            proposals, log_joint_fn, weight, proposal, log_joint_proposal, k, auxiliary, carry.aux
        )
        aux, start_summary = carry.aux, carry.summary
        if auxiliary is not None and k == 0:
            # drawn now whether or not a later stage is tried: the law reads stage 0's trajectory
            start_summary, aux = summary, auxiliary.sample(aux_key, summary)
        log_aux = (0.0, 0.0)
        if auxiliary is not None and k > 0:
            log_aux = (auxiliary.log_density(aux, start_summary), auxiliary.log_density(aux, proposal_summary))
        chain_rejects = [carry.log_rejects[j] for j in range(k)]
        log_alpha = _log_accept(log_joint_start, log_joint_proposal, chain_rejects, ghost_rejects, weight, *log_aux)
        accepted = log_u_accept[k] < log_alpha
        log_reject = _log1m_exp(log_alpha)
        retry = ~accepted & (log_u_retry[k] < (log_reject if probabilistic else 0.0))
        divergent = is_divergent(log_joint_start, log_joint_proposal, max_delta_energy)
        info = carry.info
        alpha = jnp.exp(log_alpha)
        info = DelayedRejectionInfo(
            acceptance_rate=alpha,
            first_acceptance_rate=alpha if k == 0 else info.first_acceptance_rate,
            is_accepted=accepted,
            stage=jnp.where(accepted, k, -1).astype(jnp.int32),
            num_proposals=info.num_proposals + 1,
            is_divergent=~accepted & divergent,
            num_evals=info.num_evals + proposal_cost + ghost_cost,
            chain_evals=info.chain_evals + proposal_cost,
            log_joint=jnp.where(accepted, log_joint_proposal, info.log_joint),
        )
        new_point = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), proposal, carry.point)
        return _Carry(new_point, retry, carry.log_rejects.at[k].set(log_reject), info, start_summary, aux)

    # stage 0 is always tried; running it outside a cond gives the carry its summary and value
    start = _Carry(
        point,
        jnp.array(True),
        jnp.zeros((num_stages,), log_joint_start.dtype),
        _start_info(log_joint_start),
        None,
        None,
    )
    carry = try_stage(start, 0)
    for k in range(1, num_stages):
        carry = jax.lax.cond(carry.active, functools.partial(try_stage, k=k), lambda carry: carry, carry)
    return carry.point, carry.info


# ---------------------------------------------------------------------------------------
# DR-HMC math core
# ---------------------------------------------------------------------------------------
class DRHMCState(NamedTuple):
    """The chain's state: position ``(d,)``, its log density and gradient ``(d,)``."""

    position: Array
    logdensity: Array
    logdensity_grad: Array


class DRHMCInfo(NamedTuple):
    """Per-transition diagnostics of :func:`build_kernel`'s step (scalars)."""

    acceptance_rate: Array
    first_acceptance_rate: Array
    is_accepted: Array
    stage: Array  # the accepted stage, -1 when none
    num_proposals: Array
    is_divergent: Array
    energy: Array
    num_grad_evals: Array
    num_integration_steps: Array


def init(position: Array, logdensity_fn: Callable[[Array], Array]) -> DRHMCState:
    """Initial state at ``position`` of shape ``(d,)``."""
    logdensity, logdensity_grad = jax.value_and_grad(logdensity_fn)(position)
    return DRHMCState(position, logdensity, logdensity_grad)


def stage_schedule(step_size: Array, num_steps: Array, stage: int, reduction_factor: float) -> tuple[Array, Array]:
    """Stage ``stage``'s (step size, number of steps): ``L c^k`` steps of ``eps L / (L c^k)``.

    The trajectory length ``eps * L`` is the same for every stage (Modi et al. 2023, Sec. 3.1);
    for a non-integer ``c`` the step count is rounded up and the step size shrunk to match.
    """
    num_steps_k = jnp.ceil(num_steps * reduction_factor**stage - 1e-6).astype(jnp.int32)
    return step_size * num_steps / num_steps_k, num_steps_k


def local_step_size_law(step_size: Array | float, reduction_factor: float) -> StageAuxiliary:
    """ATLAS's law of the delayed stages' step size given the first stage's trajectory (Modi 2024).

    ``summary`` is the largest secant curvature ``lambda`` met by stage 0's trajectory
    (:func:`~numpyro_ext.infer.hmc_util.leapfrog_curvature_involution`).  The step is log-normal with
    mean ``clip(0.5 / sqrt(lambda), 2e-3 eps, eps / 2)`` and log-sd ``log 1.2``; where the trajectory
    measured no curvature (``lambda`` zero or NaN) the mean is DR-HMC's ``eps / c``.  ATLAS estimates
    ``lambda`` as the top eigenvalue (power iteration) of a BFGS Hessian built from the same
    trajectory's gradients; the secant maximum needs no ``d x d`` matrix and, on a quadratic, is a
    lower bound on the same eigenvalue (so the step errs large, and the later stages shrink it).
    """

    def mean_step(curvature: Array) -> Array:
        measured = (curvature > 0) & ~jnp.isnan(curvature)
        local = jnp.clip(
            LOCAL_STEP_FRACTION / jnp.sqrt(curvature), LOCAL_STEP_FLOOR * step_size, LOCAL_STEP_CAP * step_size
        )
        return jnp.where(measured, local, step_size / reduction_factor)

    def log_location(curvature: Array) -> Array:
        return jnp.log(mean_step(curvature)) - 0.5 * LOCAL_STEP_LOG_SD**2  # E[step] = mean_step

    def sample(key: Array, curvature: Array) -> Array:
        noise = jax.random.normal(key, jnp.shape(curvature), jnp.result_type(curvature))
        return jnp.exp(log_location(curvature) + LOCAL_STEP_LOG_SD * noise)

    def log_density(step: Array, curvature: Array) -> Array:
        z = (jnp.log(step) - log_location(curvature)) / LOCAL_STEP_LOG_SD
        return -0.5 * z**2 - jnp.log(step * LOCAL_STEP_LOG_SD) - 0.5 * math.log(2 * math.pi)

    return StageAuxiliary(sample, log_density)


def local_step_stages(
    logdensity_fn: Callable[[Array], Array],
    inverse_mass_matrix: Array,
    step_size: Array | float,
    num_steps: Array | int,
    max_proposals: int,
    reduction_factor: float,
    constant_trajectory: bool = True,
) -> tuple[list[Callable[..., tuple]], StageAuxiliary]:
    """The stages and auxiliary law of delayed rejection with ATLAS's local step size.

    Stage 0 is ``num_steps`` leapfrog steps of ``step_size`` (measuring the curvature on the way);
    stage ``k >= 1`` steps ``a / c^(k-1)``, ``a`` drawn once from :func:`local_step_size_law`, so the
    fixed ladder of DR-HMC is the fallback when the local step fails.  ``constant_trajectory``: stage
    ``k`` integrates stage 0's time ``T = num_steps * step_size`` in ``ceil(T / step)`` steps (DR-HMC);
    otherwise it takes ``num_steps`` steps (DR-G-HMC's default).
    """
    first = leapfrog_curvature_involution(logdensity_fn, inverse_mass_matrix, step_size, num_steps)

    def stage(k: int) -> Callable[..., tuple]:
        def propose(point: IntegratorState, local_step: Array) -> tuple[IntegratorState, Array]:
            step_k = local_step / reduction_factor ** (k - 1)
            if constant_trajectory:
                length = step_size * num_steps
                num_steps_k = jnp.ceil(length / step_k - 1e-6).astype(jnp.int32)
                step_k, steps = length / num_steps_k, num_steps_k
            else:
                steps = num_steps
            return leapfrog_involution(logdensity_fn, inverse_mass_matrix, step_k, steps)(point)

        return propose

    return [first, *(stage(k) for k in range(1, max_proposals))], local_step_size_law(step_size, reduction_factor)


def build_kernel(
    max_proposals: int = 3,
    reduction_factor: float = 4.0,
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
    local_step_size: bool = False,
) -> Callable[..., tuple[DRHMCState, DRHMCInfo]]:
    """DR-HMC's transition, BlackJAX style.

    Returns ``step(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix, num_steps)``:
    draw a momentum, then try up to ``max_proposals`` leapfrog trajectories from the same
    start, stage ``k`` with ``num_steps * c^k`` steps of ``step_size / c^k``
    (``c = reduction_factor``), accepted by :func:`delayed_rejection`. ``inverse_mass_matrix``
    is ``(d,)`` (diagonal) or ``(d, d)`` (dense). With ``max_proposals = 1`` this is plain HMC.

    ``local_step_size``: the stages after the first step by ATLAS's local rule instead (Modi 2024;
    :func:`local_step_stages`): a step drawn from the curvature stage 0's trajectory met, then
    ``c`` times smaller per further stage, each integrating the same time ``eps * L``.
    """
    check_positive_int("max_proposals", max_proposals)
    check_greater("reduction_factor", reduction_factor, 1, "the step-size ratio between stages")
    check_flag("probabilistic", probabilistic)
    check_positive("max_delta_energy", max_delta_energy)
    check_flag("local_step_size", local_step_size)

    def step(rng_key, state: DRHMCState, logdensity_fn, step_size, inverse_mass_matrix, num_steps):
        momentum_key, accept_key = jax.random.split(rng_key)
        momentum = sample_momentum(momentum_key, inverse_mass_matrix, state.position)
        point = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
        auxiliary = None
        if local_step_size:
            proposals, auxiliary = local_step_stages(
                logdensity_fn, inverse_mass_matrix, step_size, num_steps, max_proposals, reduction_factor
            )
        else:
            proposals = [
                leapfrog_involution(
                    logdensity_fn, inverse_mass_matrix, *stage_schedule(step_size, num_steps, k, reduction_factor)
                )
                for k in range(max_proposals)
            ]

        def log_joint(point: IntegratorState) -> Array:
            return point.logdensity - kinetic_energy(inverse_mass_matrix, point.momentum)

        new_point, dr_info = delayed_rejection(
            accept_key, point, log_joint, proposals, probabilistic, max_delta_energy, auxiliary
        )
        new_state = DRHMCState(new_point.position, new_point.logdensity, new_point.logdensity_grad)
        # the first six fields (acceptance_rate ... is_divergent) are DelayedRejectionInfo's, in its order
        extra = dict(
            energy=-dr_info.log_joint, num_grad_evals=dr_info.num_evals, num_integration_steps=dr_info.chain_evals
        )
        return new_state, DRHMCInfo(*dr_info[:6], **extra)

    return step
