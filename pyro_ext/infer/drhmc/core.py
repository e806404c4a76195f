"""DR-HMC's math core in torch: the delayed-rejection meta-algorithm and the HMC transition.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610).

The torch twin of :mod:`numpyro_ext.infer.drhmc`'s core, with the same names; no model, no
Pyro handler, no global state beyond torch's generator:

* :func:`delayed_rejection` - the meta-algorithm (Tierney & Mira 1999; Green & Mira 2001)
  for any sequence of deterministic, volume-preserving involutions on an extended state;
* :func:`init` / :func:`build_kernel` - DR-HMC's transition on a flat position vector
  ``(d,)``; :func:`leapfrog_involution` is its proposal, :func:`stage_schedule` its stages;
* :func:`local_step_stages` / :func:`local_step_size_law` - ATLAS's local step size for the
  stages after the first (Modi 2024; ``build_kernel(local_step_size=True)``): a step drawn from
  a law that reads the curvature the first trajectory met
  (:func:`leapfrog_curvature_involution`), shared as a :class:`StageAuxiliary` value by every
  later stage and ghost, its density entering their Hastings ratios.

Momentum, kinetic energy and velocity come from :mod:`pyro_ext.infer.hmc_util`. The Pyro
kernel built on this core is :class:`pyro_ext.infer.drhmc.kernel.DRHMC`.

Stage ``k`` from ``x`` with proposal ``y_k = F_k(x)`` is accepted with probability
(the paper's eq. (9)/(12), recursive in the number of stages, with the probabilistic
retries of its Sec. 3.2)::

    alpha_k(x) = min(1, pi(y_k) prod_{j<k} [1 - alpha_j(y_k)]^w
                      / (pi(x)   prod_{j<k} [1 - alpha_j(x)]^w))

where ``alpha_j(y_k)`` are the "ghost" acceptance probabilities of the earlier stages run
from ``y_k`` (same recursion), ``w = 1`` for plain delayed rejection and ``w = 2`` for
probabilistic delayed rejection, which tries stage ``j + 1`` after rejecting stage ``j``
only with probability ``1 - alpha_j``. Everything is computed in log space; a non-finite
log density is ``-inf`` (rejected, and counted as a divergence when nothing is accepted).

Unlike the JAX core, which computes every stage of every ghost ladder because it is traced
once, this one is plain Python control flow: a stage is only computed when it is tried, a
ghost ladder is cut short once its product is zero (a ghost accepted surely), a proposal
with a ``-inf`` log density gets no ghost ladder (its ratio is zero whatever the ghosts
say) and a trajectory stops at its first non-finite log density. None of this changes a
single acceptance decision; it only saves gradients, and ``num_evals`` /
``num_grad_evals`` count the gradients actually computed.

Random numbers come from a ``torch.Generator`` when one is passed, else from torch's global
generator (seeded by ``pyro.set_rng_seed``), in this order (the kernel's
``jitter_trajectory`` draws one float64 ``torch.rand(())`` before each step):

1. :func:`build_kernel`'s step: the momentum, one ``torch.randn(d)`` of the position's dtype;
2. :func:`delayed_rejection`, for each tried stage ``k`` in turn: one float64
   ``torch.rand(())`` ``u`` (stage ``k`` accepted iff ``log u < log alpha_k``); if stage
   ``k`` is rejected, ``probabilistic`` is on and a later stage exists, one more float64
   ``torch.rand(())`` ``v`` (stage ``k + 1`` tried iff ``log v < log(1 - alpha_k)``);
   with an ``auxiliary`` law (``local_step_size=True``), when stage 1 is tried, its value
   first: the local step's one float64 ``torch.randn(())`` (:func:`local_step_size_law`).
   The JAX core draws that normal from a key of its own whether or not stage 1 is tried.

With ``max_proposals=1`` a step therefore draws ``randn(d)`` then one ``rand(())``: textbook
HMC with that random-number consumption gives the same chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from adapters.configs import (  # ATLAS's constants, shared with the JAX twin
    CURVATURE_MAX_ENERGY_ERROR,
    LOCAL_STEP_CAP,
    LOCAL_STEP_FLOOR,
    LOCAL_STEP_FRACTION,
    LOCAL_STEP_LOG_SD,
    check_flag,
)
from adapters.validation import check_greater, check_positive, check_positive_int
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy, sample_momentum, velocity

__all__ = [
    "DRHMCInfo",
    "DRHMCState",
    "DelayedRejectionInfo",
    "IntegratorState",
    "StageAuxiliary",
    "build_kernel",
    "delayed_rejection",
    "init",
    "leapfrog_curvature_involution",
    "leapfrog_involution",
    "local_step_size_law",
    "local_step_stages",
    "stage_schedule",
]

_NEG_INF = -math.inf


# ---------------------------------------------------------------------------------------
# The delayed-rejection meta-algorithm
# ---------------------------------------------------------------------------------------
class DelayedRejectionInfo(NamedTuple):
    """What one delayed-rejection transition did (Python scalars; names as in the JAX module).

    * ``acceptance_rate``: acceptance probability of the last stage tried.
    * ``first_acceptance_rate``: acceptance probability of stage 0 (what step-size adaptation targets).
    * ``is_accepted``: whether some stage was accepted.
    * ``stage``: 0-based index of the accepted stage, -1 when every tried stage was rejected.
    * ``num_proposals``: stages tried on the chain (not counting ghosts).
    * ``is_divergent``: nothing was accepted and the last stage tried diverged (non-finite log
      joint, or one more than ``max_delta_energy`` below the start's).
    * ``num_evals``: cost units (gradient evaluations for HMC) actually spent, ghosts included.
    * ``chain_evals``: the part of ``num_evals`` spent on the chain's own proposals.
    * ``log_joint``: log density of the extended state the chain moved to.
    """

    acceptance_rate: float
    first_acceptance_rate: float
    is_accepted: bool
    stage: int
    num_proposals: int
    is_divergent: bool
    num_evals: int
    chain_evals: int
    log_joint: float


def _finite_or_neg_inf(value: float) -> float:
    return value if math.isfinite(value) else _NEG_INF


def _log1m_exp(log_p: float) -> float:
    """log(1 - p) for log p <= 0, accurate near both ends (Maechler 2012)."""
    if log_p >= 0.0:
        return _NEG_INF
    return math.log(-math.expm1(log_p)) if log_p > -math.log(2.0) else math.log1p(-math.exp(log_p))


def _log_accept(
    log_joint_from: float,
    log_joint_to: float,
    log_rejects_from: Sequence[float],
    log_rejects_to: Sequence[float],
    weight: float,
    log_aux_from: float = 0.0,
    log_aux_to: float = 0.0,
) -> float:
    """Log of eq. (12): ``min(0, log-numerator - log-denominator)``, every 0/0 a rejection.

    ``log_aux_from``/``log_aux_to``: ``log q(a | .)`` of a :class:`StageAuxiliary` value ``a`` at
    the two ends (0 for stage 0, which draws none).  A numerator of ``-inf`` rejects. A
    denominator of ``-inf`` (with a finite numerator) is only met at a start whose own log
    density is ``-inf`` (the chain escapes such a start with the first finite proposal, as in
    the JAX core) or inside a ghost ladder whose product already carries that zero, where the
    value is moot; it counts as ratio 1.
    """
    numerator = log_joint_to + log_aux_to + weight * math.fsum(log_rejects_to)
    denominator = log_joint_from + log_aux_from + weight * math.fsum(log_rejects_from)
    if numerator == _NEG_INF or math.isnan(numerator):
        return _NEG_INF
    if denominator == _NEG_INF:
        return 0.0
    return min(numerator - denominator, 0.0)


class StageAuxiliary(NamedTuple):
    """A value ``a`` that the stages after the first share, drawn once per transition from a law that
    depends on the start through its first-stage trajectory (ATLAS's local step size: Modi 2024).

    ``sample(generator, summary) -> a`` and ``log_density(a, summary) -> log q(a | start)`` (a float),
    ``summary`` being the third output of stage 0's proposal from that start.  The stages ``k >= 1``
    are then involutions ``F_{k,a}`` for every fixed ``a``, and the ghost paths reuse the chain's ``a``.
    """

    sample: Callable[[torch.Generator | None, Any], Any]
    log_density: Callable[[Any, Any], float]


def _propose(proposals: Sequence[Callable[..., tuple]], auxiliary: StageAuxiliary | None, k: int, point, aux):
    """Stage ``k``'s ``(proposal, cost, summary)``; ``summary`` is stage 0's, with an auxiliary law."""
    if auxiliary is None:
        return (*proposals[k](point), None)
    if k == 0:
        return proposals[0](point)
    return (*proposals[k](point, aux), None)


def _log_uniform(generator: torch.Generator | None) -> float:
    """``log u`` for one float64 ``u ~ U[0, 1)`` from ``generator`` (torch's global one if ``None``)."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return math.log(u) if u > 0.0 else _NEG_INF


def delayed_rejection(
    generator: torch.Generator | None,
    point: Any,
    log_joint_fn: Callable[[Any], float],
    proposals: Sequence[Callable[..., tuple]],
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
    auxiliary: StageAuxiliary | None = None,
) -> tuple[Any, DelayedRejectionInfo]:
    """One delayed-rejection transition from ``point`` (Modi et al. 2023, eqs. 9-12).

    Args:
        generator: a ``torch.Generator`` for the uniforms, or ``None`` for torch's global
            generator (``pyro.set_rng_seed``); the order of draws is in the module docstring.
        point: the current extended state, any object ``proposals`` understand (HMC: position,
            momentum and cached log density/gradient). Randomness such as a momentum refresh
            happens before.
        log_joint_fn: log density of an extended state, a float (non-finite means ``-inf``).
        proposals: stage ``k``'s proposal ``F_k(point) -> (new_point, cost)``; each ``F_k``
            must be a deterministic, volume-preserving involution (``F_k(F_k(z)) = z``) so no
            Jacobian enters the ratio. ``cost`` counts its work (e.g. gradient evaluations).
            With ``auxiliary``, stage 0 returns ``(new_point, cost, summary)`` and the later stages
            are ``F_k(point, a) -> (new_point, cost)``.
        probabilistic: try stage ``k + 1`` after stage ``k`` is rejected only with
            probability ``1 - alpha_k`` (probabilistic delayed rejection, Sec. 3.2, ``w = 2``);
            otherwise always (``w = 1``).
        max_delta_energy: a proposal whose log joint is this much below the start's (or
            non-finite) counts as divergent.
        auxiliary: a :class:`StageAuxiliary` law: the later stages share one value ``a`` drawn from
            ``q(a | start)`` when stage 1 is tried.  Each acceptance of a stage ``k >= 1`` (chain and
            ghosts alike) then carries ``q(a | y_k) / q(a | start)``, the reverse path drawing the
            same ``a`` (Green & Mira 2001's delayed rejection with auxiliary variables): the kernel
            stays reversible for every ``a``, hence after integrating it out.

    Returns:
        ``(new_point, info)``; ``new_point`` is the accepted proposal or ``point`` itself.

    Stage ``k``'s ghosts run the ladder of stages ``0..k-1`` from its proposal, recursively,
    so trying all ``K`` stages costs up to ``sum_k 2^(K-1-k) * cost_k``; ``K <= 4`` is practical.
    """
    num_stages = len(proposals)
    if num_stages < 1:
        raise ValueError(f"delayed_rejection: `proposals` must hold at least one proposal, got {num_stages}")
    weight = 2.0 if probabilistic else 1.0

    def log_aux(k: int, start_summary: Any, proposal_summary: Any) -> tuple[float, float]:
        """``(log q(a | start), log q(a | y_k))`` for stage ``k`` (zeros for stage 0 or no auxiliary law)."""
        if auxiliary is None or k == 0:
            return 0.0, 0.0
        return auxiliary.log_density(aux, start_summary), auxiliary.log_density(aux, proposal_summary)

    def ghost_ladder(start, log_joint_start: float, depth: int) -> tuple[list[float], int, Any]:
        """``log(1 - alpha_j(start))`` for ``j < depth`` (shorter once one is ``-inf``), its cost, and
        the summary of stage 0 from ``start`` (what the auxiliary law's density at ``start`` reads)."""
        log_rejects: list[float] = []
        cost, start_summary = 0, None
        for j in range(depth):
            proposal, proposal_cost, summary = _propose(proposals, auxiliary, j, start, aux)
            if j == 0:
                start_summary = summary
            cost += proposal_cost
            log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
            if log_joint_proposal == _NEG_INF:  # alpha_j(start) = 0 whatever its ghosts say
                log_rejects.append(0.0)
                continue
            ghost_rejects, ghost_cost, proposal_summary = ghost_ladder(proposal, log_joint_proposal, j)
            cost += ghost_cost
            log_alpha = _log_accept(
                log_joint_start,
                log_joint_proposal,
                log_rejects,
                ghost_rejects,
                weight,
                *log_aux(j, start_summary, proposal_summary),
            )
            log_rejects.append(_log1m_exp(log_alpha))
            if log_rejects[-1] == _NEG_INF:  # the product is zero: later ghosts cannot matter
                break
        return log_rejects, cost, start_summary

    log_joint_start = _finite_or_neg_inf(log_joint_fn(point))
    chain_rejects: list[float] = []
    num_evals = chain_evals = 0
    first_alpha = 0.0
    aux = start_summary = None
    for k in range(num_stages):
        if auxiliary is not None and k == 1:  # drawn only when a later stage is tried: nothing else reads it
            aux = auxiliary.sample(generator, start_summary)
        proposal, proposal_cost, summary = _propose(proposals, auxiliary, k, point, aux)
        if k == 0:
            start_summary = summary
        num_evals += proposal_cost
        chain_evals += proposal_cost
        log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
        if log_joint_proposal == _NEG_INF:
            log_alpha = _NEG_INF
        else:
            ghost_rejects, ghost_cost, proposal_summary = ghost_ladder(proposal, log_joint_proposal, k)
            num_evals += ghost_cost
            log_alpha = _log_accept(
                log_joint_start,
                log_joint_proposal,
                chain_rejects,
                ghost_rejects,
                weight,
                *log_aux(k, start_summary, proposal_summary),
            )
        alpha = math.exp(log_alpha)
        if k == 0:
            first_alpha = alpha
        common = dict(
            acceptance_rate=alpha,
            first_acceptance_rate=first_alpha,
            num_proposals=k + 1,
            num_evals=num_evals,
            chain_evals=chain_evals,
        )
        if _log_uniform(generator) < log_alpha:
            info = DelayedRejectionInfo(
                **common, is_accepted=True, stage=k, is_divergent=False, log_joint=log_joint_proposal
            )
            return proposal, info
        log_reject = _log1m_exp(log_alpha)
        chain_rejects.append(log_reject)
        last = k == num_stages - 1
        if last or (probabilistic and not _log_uniform(generator) < log_reject):
            divergent = log_joint_proposal == _NEG_INF or log_joint_start - log_joint_proposal > max_delta_energy
            info = DelayedRejectionInfo(
                **common, is_accepted=False, stage=-1, is_divergent=divergent, log_joint=log_joint_start
            )
            return point, info
    raise AssertionError("unreachable: the last stage always returns")


# ---------------------------------------------------------------------------------------
# DR-HMC math core
# ---------------------------------------------------------------------------------------
class DRHMCState(NamedTuple):
    """The chain's state: ``position`` ``(d,)``, its ``logdensity`` (float) and gradient ``(d,)``."""

    position: torch.Tensor
    logdensity: float
    logdensity_grad: torch.Tensor


class DRHMCInfo(NamedTuple):
    """Per-transition diagnostics of :func:`build_kernel`'s step (Python scalars).

    As :class:`DelayedRejectionInfo`, with ``energy`` the Hamiltonian ``-log joint`` of the
    extended state the chain moved to, ``num_grad_evals`` every gradient evaluation (ghosts
    included) and ``num_integration_steps`` the leapfrog steps of the chain's own trajectories.
    """

    acceptance_rate: float
    first_acceptance_rate: float
    is_accepted: bool
    stage: int
    num_proposals: int
    is_divergent: bool
    energy: float
    num_grad_evals: int
    num_integration_steps: int


def _value_and_grad(logdensity_fn: Callable[[torch.Tensor], torch.Tensor], position: torch.Tensor):
    """``(float log density, gradient (d,))``; ``(-inf, zeros)`` where the value is not finite."""
    with torch.enable_grad():
        position = position.detach().requires_grad_(True)
        value = logdensity_fn(position)
        if not bool(torch.isfinite(value)):
            return _NEG_INF, torch.zeros_like(position)
        (grad,) = torch.autograd.grad(value, position)
    return float(value.detach()), grad.detach()


def init(position: torch.Tensor, logdensity_fn: Callable[[torch.Tensor], torch.Tensor]) -> DRHMCState:
    """Initial state at ``position`` of shape ``(d,)``; ``logdensity_fn`` maps ``(d,)`` to a scalar tensor."""
    logdensity, grad = _value_and_grad(logdensity_fn, position)
    return DRHMCState(position.detach(), logdensity, grad)


def stage_schedule(step_size: float, num_steps: int, stage: int, reduction_factor: float) -> tuple[float, int]:
    """Stage ``stage``'s (step size, number of steps): ``L_k = ceil(L c^k)`` steps of ``eps L / L_k``.

    The trajectory length ``eps * L`` is the same for every stage (Modi et al. 2023, Sec. 3.1);
    for a non-integer ``c`` the step count is rounded up and the step size shrunk to match.
    """
    num_steps_k = math.ceil(num_steps * reduction_factor**stage - 1e-6)
    return step_size * num_steps / num_steps_k, num_steps_k


def leapfrog_involution(
    logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
    inverse_mass_matrix: torch.Tensor,
    step_size: float,
    num_steps: int,
) -> Callable[[IntegratorState], tuple[IntegratorState, int]]:
    """``num_steps`` velocity-Verlet steps then a momentum flip (an involution); cost = gradients computed.

    The trajectory stops at its first non-finite log density: the proposal is then rejected
    whatever the remaining steps would do. (This early stop of one chain is why it is not
    :func:`pyro_ext.infer.hmc_util.leapfrog`, which runs a batch of chains for every step.)
    ``logdensity_fn`` maps ``(d,)`` to a scalar tensor; positions and momenta are ``(d,)``.
    """
    with_curvature = leapfrog_curvature_involution(
        logdensity_fn, inverse_mass_matrix, step_size, num_steps, max_energy_error=None
    )

    def involution(point: IntegratorState) -> tuple[IntegratorState, int]:
        end, evals, _ = with_curvature(point)
        return end, evals

    return involution


def leapfrog_curvature_involution(
    logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
    inverse_mass_matrix: torch.Tensor,
    step_size: float,
    num_steps: int,
    max_energy_error: float | None = CURVATURE_MAX_ENERGY_ERROR,
) -> Callable[[IntegratorState], tuple[IntegratorState, int, float]]:
    """:func:`leapfrog_involution` that also returns the largest secant curvature met on the way.

    Returns ``involution(point) -> (end, evals, curvature)`` with ``curvature`` (a float) the maximum
    over the steps of ``sqrt(dg^T M^{-1} dg / dx^T M dx)``, ``dx`` a step's move and ``dg`` its change
    of gradient, as the JAX twin's (:func:`numpyro_ext.infer.hmc_util.leapfrog_curvature_involution`,
    whose docstring has why it estimates the curvature that bounds the stable step size); ``dx = eps
    M^{-1} r_half`` gives ``dx^T M dx = eps^2 r_half^T M^{-1} r_half``.

    Only the steps before the energy error ``|H - H_start|`` first exceeds ``max_energy_error`` count
    (ATLAS's divergence, ``adapters.configs.CURVATURE_MAX_ENERGY_ERROR``; a NaN error stops the
    measuring too, and so does the step that reaches a non-finite log density, which also ends the
    trajectory); a NaN ratio is skipped; 0 when no step counts.  ``max_energy_error=None`` measures
    nothing (the curvature is 0): plain :func:`leapfrog_involution`, with no extra work per step.
    """

    def involution(point: IntegratorState) -> tuple[IntegratorState, int, float]:
        position, momentum, logdensity, grad = point
        evals, curvature, measuring = 0, 0.0, max_energy_error is not None
        if measuring:
            energy_start = float(kinetic_energy(inverse_mass_matrix, momentum)) - logdensity
        for _ in range(num_steps):
            half_momentum = momentum + 0.5 * step_size * grad
            move = velocity(inverse_mass_matrix, half_momentum)
            position = position + step_size * move
            logdensity, new_grad = _value_and_grad(logdensity_fn, position)
            evals += 1
            if logdensity == _NEG_INF:  # the proposal is rejected whatever the remaining steps would do
                momentum, grad = half_momentum, new_grad
                break
            momentum = half_momentum + 0.5 * step_size * new_grad
            if measuring:
                energy_error = float(kinetic_energy(inverse_mass_matrix, momentum)) - logdensity - energy_start
                measuring = abs(energy_error) <= max_energy_error  # False for a NaN error too
            if measuring:
                change = new_grad - grad
                squared = (change @ velocity(inverse_mass_matrix, change)) / (step_size**2 * (half_momentum @ move))
                ratio = float(torch.sqrt(squared))
                if not math.isnan(ratio):  # as jnp.fmax: a NaN ratio is skipped
                    curvature = max(curvature, ratio)
            grad = new_grad
        return IntegratorState(position, -momentum, logdensity, grad), evals, curvature

    return involution


# ---------------------------------------------------------------------------------------
# ATLAS's local step size for the stages after the first
# ---------------------------------------------------------------------------------------
def local_step_size_law(step_size: float, reduction_factor: float) -> StageAuxiliary:
    """ATLAS's law of the delayed stages' step size given the first stage's trajectory (Modi 2024).

    The twin of :func:`numpyro_ext.infer.drhmc.core.local_step_size_law` (its docstring compares the
    curvature estimate with ATLAS's).  ``summary`` is the largest secant curvature ``lambda`` met by
    stage 0's trajectory (:func:`leapfrog_curvature_involution`).  The step is log-normal with mean
    ``clip(0.5 / sqrt(lambda), 2e-3 eps, eps / 2)`` and log-sd ``log 1.2`` (the constants
    ``adapters.configs.LOCAL_STEP_*``); where the trajectory measured no curvature (``lambda`` zero or
    NaN) the mean is DR-HMC's ``eps / c``.  ``sample`` draws one float64 ``torch.randn(())``.
    """

    def mean_step(curvature: float) -> float:
        if not curvature > 0:  # zero or NaN: no curvature measured
            return step_size / reduction_factor
        local = LOCAL_STEP_FRACTION / math.sqrt(curvature)
        return min(max(local, LOCAL_STEP_FLOOR * step_size), LOCAL_STEP_CAP * step_size)

    def log_location(curvature: float) -> float:
        return math.log(mean_step(curvature)) - 0.5 * LOCAL_STEP_LOG_SD**2  # E[step] = mean_step

    def sample(generator: torch.Generator | None, curvature: float) -> float:
        noise = torch.randn((), generator=generator, dtype=torch.float64).item()
        return math.exp(log_location(curvature) + LOCAL_STEP_LOG_SD * noise)

    def log_density(step: float, curvature: float) -> float:
        z = (math.log(step) - log_location(curvature)) / LOCAL_STEP_LOG_SD
        return -0.5 * z**2 - math.log(step * LOCAL_STEP_LOG_SD) - 0.5 * math.log(2 * math.pi)

    return StageAuxiliary(sample, log_density)


def local_step_stages(
    logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
    inverse_mass_matrix: torch.Tensor,
    step_size: float,
    num_steps: int,
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
        def propose(point: IntegratorState, local_step: float) -> tuple[IntegratorState, int]:
            step_k = local_step / reduction_factor ** (k - 1)
            if constant_trajectory:
                length = step_size * num_steps
                steps = math.ceil(length / step_k - 1e-6)
                step_k = length / steps
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
    """DR-HMC's transition on a flat position vector.

    Returns ``step(state, logdensity_fn, step_size, inverse_mass_matrix, num_steps, generator=None)``:
    draw a momentum ``r ~ N(0, M)``, then try up to ``max_proposals`` leapfrog trajectories
    of the same length ``step_size * num_steps`` from ``(x, r)``, stage ``k`` with
    ``ceil(num_steps * c^k)`` steps (``c = reduction_factor``, :func:`stage_schedule`),
    accepted by :func:`delayed_rejection` on the log joint ``log pi(x) - r^T M^{-1} r / 2``.
    ``logdensity_fn`` maps a ``(d,)`` tensor to a scalar tensor; ``inverse_mass_matrix`` is
    ``(d,)`` (diagonal) or ``(d, d)`` (dense). ``max_proposals=1`` is plain HMC.

    ``local_step_size``: the stages after the first step by ATLAS's local rule instead (Modi 2024;
    :func:`local_step_stages`): a step drawn from the curvature stage 0's trajectory met, then
    ``c`` times smaller per further stage, each integrating the same time ``eps * L``.
    """
    check_positive_int("max_proposals", max_proposals)
    check_greater("reduction_factor", reduction_factor, 1, "the step-size ratio between stages")
    check_flag("probabilistic", probabilistic)
    check_positive("max_delta_energy", max_delta_energy)
    check_flag("local_step_size", local_step_size)

    def step(
        state: DRHMCState,
        logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
        step_size: float,
        inverse_mass_matrix: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None = None,
    ) -> tuple[DRHMCState, DRHMCInfo]:
        momentum = sample_momentum(generator, inverse_mass_matrix, state.position)
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

        def log_joint(point: IntegratorState) -> float:
            if point.logdensity == _NEG_INF:
                return _NEG_INF
            return point.logdensity - float(kinetic_energy(inverse_mass_matrix, point.momentum))

        new, info = delayed_rejection(
            generator, point, log_joint, proposals, probabilistic, max_delta_energy, auxiliary
        )
        new_state = DRHMCState(new.position, new.logdensity, new.logdensity_grad)
        # the first six fields (acceptance_rate ... is_divergent) are DelayedRejectionInfo's, in its order
        extra = dict(energy=-info.log_joint, num_grad_evals=info.num_evals, num_integration_steps=info.chain_evals)
        return new_state, DRHMCInfo(*info[:6], **extra)

    return step
