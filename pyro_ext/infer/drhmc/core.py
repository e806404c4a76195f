"""Delayed-rejection Hamiltonian Monte Carlo (DR-HMC) in torch, and its Pyro kernel.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610).

The torch twin of :mod:`numpyro_ext.infer.drhmc`, with the same layers and names:

* :func:`delayed_rejection` - the meta-algorithm (Tierney & Mira 1999; Green & Mira 2001)
  for any sequence of deterministic, volume-preserving involutions on an extended state;
* :func:`init` / :func:`build_kernel` - DR-HMC's math core on a flat position vector;
* :class:`DRHMC` - a kernel for :class:`pyro.infer.MCMC` (a subclass of Pyro's ``NUTS``,
  itself an ``HMC``): Pyro's model initialisation, transforms and warmup adapter, Pyro's
  NUTS transitions during warmup when the trajectory length is to be chosen, DR-HMC
  transitions otherwise.

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
generator (seeded by ``pyro.set_rng_seed``), in this order (the kernel class's
``jitter_trajectory`` draws one float64 ``torch.rand(())`` before each step):

1. :func:`build_kernel`'s step: the momentum, one ``torch.randn(d)`` of the position's dtype;
2. :func:`delayed_rejection`, for each tried stage ``k`` in turn: one float64
   ``torch.rand(())`` ``u`` (stage ``k`` accepted iff ``log u < log alpha_k``); if stage
   ``k`` is rejected, ``probabilistic`` is on and a later stage exists, one more float64
   ``torch.rand(())`` ``v`` (stage ``k + 1`` tried iff ``log v < log(1 - alpha_k)``).

With ``max_proposals=1`` a step therefore draws ``randn(d)`` then one ``rand(())``: textbook
HMC with that random-number consumption gives the same chain.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc import NUTS
from pyro.ops.integrator import _EXCEPTION_HANDLERS, potential_grad

from adapters.configs import DRHMCConfig, check_model_or_potential
from adapters.validation import check_greater, check_positive_int

__all__ = [
    "DRHMC",
    "DRHMCInfo",
    "DRHMCState",
    "DelayedRejectionInfo",
    "IntegratorState",
    "build_kernel",
    "delayed_rejection",
    "init",
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
) -> float:
    """Log of eq. (12): ``min(0, log-numerator - log-denominator)``, every 0/0 a rejection.

    A numerator of ``-inf`` rejects. A denominator of ``-inf`` (with a finite numerator) is
    only met at a start whose own log density is ``-inf`` (the chain escapes such a start
    with the first finite proposal, as in the JAX core) or inside a ghost ladder whose
    product already carries that zero, where the value is moot; it counts as ratio 1.
    """
    numerator = log_joint_to + weight * math.fsum(log_rejects_to)
    denominator = log_joint_from + weight * math.fsum(log_rejects_from)
    if numerator == _NEG_INF or math.isnan(numerator):
        return _NEG_INF
    if denominator == _NEG_INF:
        return 0.0
    return min(numerator - denominator, 0.0)


def _log_uniform(generator: torch.Generator | None) -> float:
    """``log u`` for one float64 ``u ~ U[0, 1)`` from ``generator`` (torch's global one if ``None``)."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return math.log(u) if u > 0.0 else _NEG_INF


def delayed_rejection(
    generator: torch.Generator | None,
    point: Any,
    log_joint_fn: Callable[[Any], float],
    proposals: Sequence[Callable[[Any], tuple[Any, int]]],
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
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
        probabilistic: try stage ``k + 1`` after stage ``k`` is rejected only with
            probability ``1 - alpha_k`` (probabilistic delayed rejection, Sec. 3.2, ``w = 2``);
            otherwise always (``w = 1``).
        max_delta_energy: a proposal whose log joint is this much below the start's (or
            non-finite) counts as divergent.

    Returns:
        ``(new_point, info)``; ``new_point`` is the accepted proposal or ``point`` itself.

    Stage ``k``'s ghosts run the ladder of stages ``0..k-1`` from its proposal, recursively,
    so trying all ``K`` stages costs up to ``sum_k 2^(K-1-k) * cost_k``; ``K <= 4`` is practical.
    """
    num_stages = len(proposals)
    if num_stages < 1:
        raise ValueError(f"delayed_rejection: `proposals` must hold at least one proposal, got {num_stages}")
    weight = 2.0 if probabilistic else 1.0

    def ghost_ladder(start, log_joint_start: float, depth: int) -> tuple[list[float], int]:
        """``log(1 - alpha_j(start))`` for ``j < depth`` (shorter once one is ``-inf``) and its cost."""
        log_rejects: list[float] = []
        cost = 0
        for j in range(depth):
            proposal, proposal_cost = proposals[j](start)
            cost += proposal_cost
            log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
            if log_joint_proposal == _NEG_INF:  # alpha_j(start) = 0 whatever its ghosts say
                log_rejects.append(0.0)
                continue
            ghost_rejects, ghost_cost = ghost_ladder(proposal, log_joint_proposal, j)
            cost += ghost_cost
            log_alpha = _log_accept(log_joint_start, log_joint_proposal, log_rejects, ghost_rejects, weight)
            log_rejects.append(_log1m_exp(log_alpha))
            if log_rejects[-1] == _NEG_INF:  # the product is zero: later ghosts cannot matter
                break
        return log_rejects, cost

    log_joint_start = _finite_or_neg_inf(log_joint_fn(point))
    chain_rejects: list[float] = []
    num_evals = chain_evals = 0
    first_alpha = 0.0
    for k in range(num_stages):
        proposal, proposal_cost = proposals[k](point)
        num_evals += proposal_cost
        chain_evals += proposal_cost
        log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
        if log_joint_proposal == _NEG_INF:
            log_alpha = _NEG_INF
        else:
            ghost_rejects, ghost_cost = ghost_ladder(proposal, log_joint_proposal, k)
            num_evals += ghost_cost
            log_alpha = _log_accept(log_joint_start, log_joint_proposal, chain_rejects, ghost_rejects, weight)
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
class IntegratorState(NamedTuple):
    """A point of HMC's extended space: ``position``, ``momentum``, ``logdensity_grad`` of shape
    ``(d,)`` and the float ``logdensity`` (``-inf`` where the density is not finite)."""

    position: torch.Tensor
    momentum: torch.Tensor
    logdensity: float
    logdensity_grad: torch.Tensor


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


def _velocity(inverse_mass_matrix: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    return inverse_mass_matrix * momentum if inverse_mass_matrix.dim() == 1 else inverse_mass_matrix @ momentum


def _kinetic_energy(inverse_mass_matrix: torch.Tensor, momentum: torch.Tensor) -> float:
    return 0.5 * float(momentum @ _velocity(inverse_mass_matrix, momentum))


def _sample_momentum(
    generator: torch.Generator | None, inverse_mass_matrix: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """Momentum ``~ N(0, M)``, ``M`` the inverse of ``inverse_mass_matrix``, from one ``randn(d)``."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    if inverse_mass_matrix.dim() == 1:
        return noise / inverse_mass_matrix.sqrt()
    # with inverse_mass_matrix = C C^T, r = C^{-T} noise has covariance (C C^T)^{-1} = M
    cholesky = torch.linalg.cholesky(inverse_mass_matrix)
    return torch.linalg.solve_triangular(cholesky.T, noise[:, None], upper=True)[:, 0]


def _leapfrog_involution(logdensity_fn, inverse_mass_matrix, step_size: float, num_steps: int):
    """``num_steps`` velocity-Verlet steps then a momentum flip (an involution); cost = gradients computed.

    The trajectory stops at its first non-finite log density: the proposal is then rejected
    whatever the remaining steps would do.
    """

    def involution(point: IntegratorState) -> tuple[IntegratorState, int]:
        position, momentum, logdensity, grad = point
        evals = 0
        for _ in range(num_steps):
            momentum = momentum + 0.5 * step_size * grad
            position = position + step_size * _velocity(inverse_mass_matrix, momentum)
            logdensity, grad = _value_and_grad(logdensity_fn, position)
            evals += 1
            if logdensity == _NEG_INF:
                break
            momentum = momentum + 0.5 * step_size * grad
        return IntegratorState(position, -momentum, logdensity, grad), evals

    return involution


def build_kernel(
    max_proposals: int = 3,
    reduction_factor: float = 4.0,
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
) -> Callable[..., tuple[DRHMCState, DRHMCInfo]]:
    """DR-HMC's transition on a flat position vector.

    Returns ``step(state, logdensity_fn, step_size, inverse_mass_matrix, num_steps, generator=None)``:
    draw a momentum ``r ~ N(0, M)``, then try up to ``max_proposals`` leapfrog trajectories
    of the same length ``step_size * num_steps`` from ``(x, r)``, stage ``k`` with
    ``ceil(num_steps * c^k)`` steps (``c = reduction_factor``, :func:`stage_schedule`),
    accepted by :func:`delayed_rejection` on the log joint ``log pi(x) - r^T M^{-1} r / 2``.
    ``logdensity_fn`` maps a ``(d,)`` tensor to a scalar tensor; ``inverse_mass_matrix`` is
    ``(d,)`` (diagonal) or ``(d, d)`` (dense). ``max_proposals=1`` is plain HMC.
    """
    check_positive_int("max_proposals", max_proposals)
    check_greater("reduction_factor", reduction_factor, 1, "the step-size ratio between stages")

    def step(
        state: DRHMCState,
        logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
        step_size: float,
        inverse_mass_matrix: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None = None,
    ) -> tuple[DRHMCState, DRHMCInfo]:
        momentum = _sample_momentum(generator, inverse_mass_matrix, state.position)
        point = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
        proposals = [
            _leapfrog_involution(
                logdensity_fn, inverse_mass_matrix, *stage_schedule(step_size, num_steps, k, reduction_factor)
            )
            for k in range(max_proposals)
        ]

        def log_joint(point: IntegratorState) -> float:
            if point.logdensity == _NEG_INF:
                return _NEG_INF
            return point.logdensity - _kinetic_energy(inverse_mass_matrix, point.momentum)

        new, info = delayed_rejection(generator, point, log_joint, proposals, probabilistic, max_delta_energy)
        new_state = DRHMCState(new.position, new.logdensity, new.logdensity_grad)
        return new_state, DRHMCInfo(
            acceptance_rate=info.acceptance_rate,
            first_acceptance_rate=info.first_acceptance_rate,
            is_accepted=info.is_accepted,
            stage=info.stage,
            num_proposals=info.num_proposals,
            is_divergent=info.is_divergent,
            energy=-info.log_joint,
            num_grad_evals=info.num_evals,
            num_integration_steps=info.chain_evals,
        )

    return step


# ---------------------------------------------------------------------------------------
# Pyro kernel
# ---------------------------------------------------------------------------------------
def _target_model(target) -> Callable[[], None]:
    """A Pyro model of a Target of another backend: one unconstrained site ``"x"`` of length ``dim``."""
    import pyro.distributions as dist

    from pyro_ext.models.posteriordb._util import Flat

    logdensity = target.as_torch()

    def model() -> None:
        x = pyro.sample("x", Flat(dist.constraints.real_vector, (), (target.dim,)))
        pyro.factor("log_density", logdensity(x))

    model.__name__ = target.name
    return model


class _CountingPotential:
    """A potential function that counts its calls (one per leapfrog step in Pyro's integrator)."""

    def __init__(self, potential_fn: Callable):
        self.potential_fn = potential_fn
        self.calls = 0

    def __call__(self, params):
        self.calls += 1
        return self.potential_fn(params)


def _handled(exception: Exception) -> bool:
    """Whether Pyro's HMC treats ``exception`` from a potential as a numerical failure (NaN)."""
    return any(handler(exception) for handler in _EXCEPTION_HANDLERS.values())


class DRHMC(NUTS):
    r"""Delayed-rejection HMC (Modi, Barnett & Carpenter 2023) for :class:`pyro.infer.MCMC`.

    Each iteration draws one momentum and tries up to ``max_proposals`` leapfrog
    trajectories of the same length from the same start: stage ``k`` uses step size
    ``step_size * L / L_k`` and ``L_k = ceil(L * reduction_factor**k)`` steps, accepted with
    the delayed-rejection probability of the module docstring. Later stages only run where
    the first one fails, i.e. in regions of high curvature, so a step size tuned for the
    bulk keeps working in a funnel's neck.

    A subclass of Pyro's :class:`~pyro.infer.mcmc.NUTS` (an :class:`~pyro.infer.mcmc.HMC`):
    Pyro's ``setup`` (``initialize_model``, transforms, initial parameters), its warmup
    adapter (dual averaging of the step size, windowed mass-matrix adaptation) and
    ``logging``/``diagnostics`` are used unchanged; only ``sample`` is replaced, and its
    warmup iterations are Pyro's own NUTS transitions when the trajectory length is to be
    chosen.

    Args:
        model: a Pyro model or an :class:`adapters.Target`. A Pyro Target is run natively
            (its bound arguments included; call ``MCMC.run()`` without arguments). A Target
            of another backend is sampled through ``Target.as_torch()`` as one unconstrained
            site ``"x"`` of length ``target.dim``; :meth:`constrain_samples` maps its draws
            to the model's named, constrained parameters with ``target.constrain``.
        potential_fn: instead of ``model``, a potential energy (negative log density) of a
            dict of unconstrained tensors; ``MCMC(..., initial_params=...)`` is then needed.
        step_size: first-stage step size ``eps`` (the start of adaptation when adapting).
        trajectory_length: ``eps * L`` of every stage. With neither this nor ``num_steps``
            given (and ``warmup_steps > 0``), warmup runs Pyro's NUTS with the same adapter
            and sets the trajectory length to ``trajectory_scale`` times the mean NUTS
            integration time ``eps * n_leapfrog`` over the warmup iterations from the start of
            the last slow adaptation window on (Pyro's schedule); DR-HMC transitions start
            after warmup.
        num_steps: first-stage number of leapfrog steps ``L`` (fixed; overrides
            ``trajectory_length``). Otherwise ``L = clip(ceil(trajectory_length / eps), 1,
            2**max_tree_depth)``.
        max_proposals: number of stages ``K`` (1 is plain HMC; the cost grows like ``2^K``).
        reduction_factor: ``c > 1``, the step-size ratio between consecutive stages.
        probabilistic: probabilistic delayed rejection (Sec. 3.2): after stage ``k`` is
            rejected with acceptance probability ``alpha_k``, try the next stage only with
            probability ``1 - alpha_k``.
        adapt_step_size: dual averaging of the first-stage step size during warmup, fed the
            first stage's acceptance probability.
        target_accept_prob: target of that adaptation.
        adapt_mass_matrix: windowed adaptation of the inverse mass matrix (Pyro's windows).
        dense_mass: dense instead of diagonal mass matrix.
        init_strategy: Pyro initialisation strategy for ``model``.
        max_delta_energy: an energy error above this (or a non-finite one) marks a divergence.
        max_tree_depth: tree-depth limit of the NUTS warmup; also caps ``L`` at ``2**max_tree_depth``.
        trajectory_scale: factor on the trajectory length warmup chooses (default 0.5: NUTS's
            mean integration time overshoots a static trajectory's need).
        jitter_trajectory: each iteration, scale every stage's length by one
            ``u ~ Uniform(0, 1]`` drawn independently of the state (Pyro's RNG).
        jit_compile: Pyro's ``jit_compile`` of the potential energy.

    Per-iteration statistics, warmup included, are kept on the kernel in
    ``kernel.sample_stats`` (a list of dicts, one per iteration of the chain run last in this
    process); :meth:`get_sample_stats` returns them as numpy arrays of shape
    ``(warmup_steps + num_samples,)``:

    * ``accept_prob``: acceptance probability of the last stage tried (NUTS warmup: the tree's mean);
    * ``diverging``: no stage accepted and the last one tried diverged (not tracked, ``False``,
      on NUTS warmup iterations);
    * ``stage``: accepted stage, -1 if none (always -1 on NUTS warmup iterations);
    * ``num_steps``: the chain's own leapfrog steps; ``num_grad_evals``: every gradient,
      ghost trajectories included (compare samplers by it);
    * ``energy``: Hamiltonian of the state moved to (NaN on NUTS warmup iterations, which
      Pyro does not report); ``potential_energy``; ``step_size``: the first-stage step size
      used; ``warmup``: whether the iteration was a warmup iteration.

    ``kernel.diagnostics()`` (so ``mcmc.diagnostics()``) has Pyro's ``"divergences"`` and
    ``"acceptance rate"`` plus ``"sample_stats"``: the same arrays, which reach
    ``mcmc.diagnostics()["sample_stats"]["chain i"]`` for every chain, also when
    ``num_chains > 1`` runs chains in worker processes. ``adapters.inference_data.from_mcmc``
    adds the sampling-phase statistics to ArviZ's ``sample_stats`` (one chain).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        step_size: float = 1.0,
        trajectory_length: float | None = None,
        num_steps: int | None = None,
        max_proposals: int = 3,
        reduction_factor: float = 4,
        probabilistic: bool = True,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.8,
        adapt_mass_matrix: bool = True,
        dense_mass: bool = False,
        init_strategy: Callable = init_to_uniform,
        max_delta_energy: float = 1000.0,
        max_tree_depth: int = 10,
        jit_compile: bool = False,
        trajectory_scale: float | None = None,
        jitter_trajectory: bool = False,
    ):
        from adapters.target import Target

        check_model_or_potential("DRHMC", model, potential_fn)
        self.config = DRHMCConfig(
            step_size=step_size,
            trajectory_length=trajectory_length,
            num_steps=num_steps,
            max_proposals=max_proposals,
            reduction_factor=reduction_factor,
            probabilistic=probabilistic,
            adapt_step_size=adapt_step_size,
            target_accept_prob=target_accept_prob,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            max_delta_energy=max_delta_energy,
            max_tree_depth=max_tree_depth,
            trajectory_scale=trajectory_scale,
            jitter_trajectory=jitter_trajectory,
        )
        self._target = None
        if isinstance(model, Target):
            if model.backend == "pyro":
                model = functools.partial(model.model, *model.model_args, **model.model_kwargs)
            else:
                self._target, model = model, _target_model(model)
        super().__init__(
            model,
            potential_fn,
            step_size=self.config.step_size,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            full_mass=dense_mass,
            jit_compile=jit_compile,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            init_strategy=init_strategy,
        )
        self._max_sliced_energy = self.config.max_delta_energy  # NUTS's divergence threshold
        self.trajectory_length = self.config.trajectory_length if self.config.trajectory_length else 2 * math.pi
        self.sample_stats: list[dict[str, Any]] = []
        self._dr_step = None  # built in setup, so an un-set-up kernel pickles (spawned chains)

    # ---- Pyro MCMCKernel interface -----------------------------------------------------
    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        if isinstance(self.potential_fn, _CountingPotential):  # a kernel set up before (next chain)
            self.potential_fn = self.potential_fn.potential_fn
        if self.model is not None:
            self._check_continuous(args, kwargs)
        super().setup(warmup_steps, *args, **kwargs)
        cfg = self.config
        self._dr_step = build_kernel(cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy)
        self.potential_fn = _CountingPotential(self.potential_fn)
        self.trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        self._choose_length = cfg.choose_length and warmup_steps > 0
        schedule = list(self._adapter.adaptation_schedule)
        self._length_window_start = schedule[-2].start if len(schedule) >= 2 else 0
        self._length_sum = 0.0
        self._length_count = 0
        self.sample_stats = []

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._t < self._warmup_steps and self._choose_length:
            return self._nuts_sample(params)
        z, potential_energy, z_grads = self._fetch_from_cache()
        if z is None:
            z = params
            z_grads, potential_energy = potential_grad(self.potential_fn, z)
            z = {k: v.detach() for k, v in z.items()}
        if len(z) == 0:  # no latent sites: nothing to move (as Pyro's HMC)
            self._t += 1
            self._mean_accept_prob = 1.0
            if self._t > self._warmup_steps:
                self._accept_cnt += 1
            return params
        sites, inverse_mass_matrix = self._flat_layout()
        shapes = {name: z[name].shape for name in sites}
        sizes = [math.prod(shapes[name]) for name in sites]

        def unflatten(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {name: part.reshape(shapes[name]) for name, part in zip(sites, torch.split(x, sizes), strict=True)}

        potential_fn = self.potential_fn

        def logdensity(x: torch.Tensor) -> torch.Tensor:
            try:
                return -potential_fn(unflatten(x))
            except Exception as e:  # Pyro's numerical-failure exceptions count as NaN, as in its HMC
                if _handled(e):
                    return x.new_tensor(math.nan)
                raise

        position = torch.cat([z[name].detach().reshape(-1) for name in sites])
        grad = -torch.cat([z_grads[name].detach().reshape(-1) for name in sites])
        state = DRHMCState(position, _finite_or_neg_inf(-float(potential_energy)), grad)
        step_size = float(self.step_size)
        with pyro.validation_enabled(False):  # NaN and out-of-support values are expected on diverging trajectories
            new, info = self._dr_step(state, logdensity, step_size, inverse_mass_matrix, self._iteration_num_steps())
        z_new = unflatten(new.position)
        z_grads_new = unflatten(-new.logdensity_grad)
        potential_new = torch.as_tensor(-new.logdensity, dtype=position.dtype, device=position.device)
        self._cache(z_new, potential_new, z_grads_new)

        warmup = self._t < self._warmup_steps
        self._record(
            accept_prob=info.acceptance_rate,
            diverging=info.is_divergent,
            stage=info.stage,
            num_steps=info.num_integration_steps,
            num_grad_evals=info.num_grad_evals,
            energy=info.energy,
            potential_energy=-new.logdensity,
            step_size=step_size,
            warmup=warmup,
        )
        self._t += 1
        if warmup:
            n = self._t
            accept = torch.as_tensor(info.first_acceptance_rate, dtype=position.dtype)
            self._adapter.step(self._t, z_new, accept, z_grads_new)
        else:
            n = self._t - self._warmup_steps
            self._accept_cnt += int(info.is_accepted)
            if info.is_divergent:
                self._divergences.append(self._t - 1 - self._warmup_steps)
        self._mean_accept_prob += (info.acceptance_rate - self._mean_accept_prob) / n
        return dict(z_new)

    @property
    def num_steps(self) -> int:
        """First-stage number of leapfrog steps ``L`` at the current step size."""
        return self._num_steps_of(1.0)

    def _num_steps_of(self, fraction: float) -> int:
        """``L`` of a ``fraction`` of the trajectory: ``ceil(fraction * num_steps)`` or
        ``clip(ceil(fraction * T / eps), 1, 2**max_tree_depth)``."""
        if self.config.num_steps is not None:
            return max(1, math.ceil(self.config.num_steps * fraction - 1e-6))
        num_steps = math.ceil(fraction * self.trajectory_length / float(self.step_size) - 1e-6)
        return int(min(max(num_steps, 1), 2**self._max_tree_depth))

    def _iteration_num_steps(self) -> int:
        """This iteration's ``L``: of a ``u ~ Uniform(0, 1]`` fraction of the length when jittering."""
        if not self.config.jitter_trajectory:
            return self.num_steps
        return self._num_steps_of(1.0 - torch.rand((), dtype=torch.float64).item())

    def logging(self) -> dict[str, str]:
        out = super().logging()
        if self.sample_stats:
            out["grads/it"] = str(self.sample_stats[-1]["num_grad_evals"])
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Pyro's ``divergences`` and ``acceptance rate``, plus ``sample_stats`` (see the class docstring)."""
        out = super().diagnostics()
        out["sample_stats"] = self.get_sample_stats()
        return out

    def get_sample_stats(self) -> dict[str, Any]:
        """Per-iteration statistics of the chain run last, as numpy arrays ``(num_iterations,)``, warmup included.

        Keys: ``accept_prob``, ``diverging``, ``stage``, ``num_steps``, ``num_grad_evals``,
        ``energy``, ``potential_energy``, ``step_size``, ``warmup`` (see the class docstring).
        """
        import numpy as np

        if not self.sample_stats:
            return {}
        return {key: np.asarray([row[key] for row in self.sample_stats]) for key in self.sample_stats[0]}

    def constrain_samples(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        """Draws of ``mcmc.get_samples()`` as the model's constrained parameters.

        For a Pyro model (Pyro's ``MCMC`` already constrained them) and a ``potential_fn``
        this returns ``samples`` unchanged; for a Target of another backend it maps the
        unconstrained site ``"x"`` of shape ``(..., dim)`` with ``target.constrain`` to a
        dict of numpy arrays of shape ``(..., *site_shape)``.
        """
        if self._target is None:
            return dict(samples)
        x = samples["x"]
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return self._target.constrain(x)

    # ---- helpers --------------------------------------------------------------------------
    def _nuts_sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One of Pyro's NUTS transitions (warmup), recording its integration time."""
        t, accept_before = self._t, self._mean_accept_prob
        step_size = float(self.step_size)  # read before the adapter moves it
        calls = self.potential_fn.calls
        z = super().sample(params)
        num_steps = self.potential_fn.calls - calls  # one potential call per leapfrog step
        # NUTS updates a running mean (over the t + 1 warmup iterations so far); recover this one's
        accept_prob = accept_before + (self._mean_accept_prob - accept_before) * (t + 1)
        if t >= self._length_window_start:
            self._length_sum += num_steps * step_size
            self._length_count += 1
        if self._t == self._warmup_steps and self._length_count > 0:
            self.trajectory_length = self.config.length_scale * self._length_sum / self._length_count
        _, potential_energy, _ = self._fetch_from_cache()
        self._record(
            accept_prob=accept_prob,
            diverging=False,
            stage=-1,
            num_steps=num_steps,
            num_grad_evals=num_steps,
            energy=math.nan,
            potential_energy=float(potential_energy),
            step_size=step_size,
            warmup=True,
        )
        return z

    def _find_reasonable_step_size(self, z):
        # the adapter calls this at window ends, inside a NUTS transition: its potential
        # evaluations are not leapfrog steps of that transition
        calls = getattr(self.potential_fn, "calls", None)
        step_size = super()._find_reasonable_step_size(z)
        if calls is not None:
            self.potential_fn.calls = calls
        return step_size

    def _record(self, **row: Any) -> None:
        types = dict(diverging=bool, stage=int, num_steps=int, num_grad_evals=int, warmup=bool)
        self.sample_stats.append({key: types.get(key, float)(value) for key, value in row.items()})

    def _flat_layout(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Site order of the flat vector and its inverse mass matrix, ``(d,)`` or ``(d, d)``."""
        blocks = self.inverse_mass_matrix
        if len(blocks) != 1:
            raise ValueError(f"dense_mass: DRHMC takes True or False (one mass-matrix block), got {len(blocks)} blocks")
        ((sites, inverse_mass_matrix),) = blocks.items()
        return sites, inverse_mass_matrix

    def _check_continuous(self, args: tuple, kwargs: dict) -> None:
        from pyro.infer.autoguide.initialization import InitMessenger
        from pyro.poutine.util import site_is_subsample

        def init_fn(site):  # discrete sites get a draw, so they reach the trace and the message below
            if site["fn"].support.is_discrete:
                return site["fn"].sample()
            return self._init_strategy(site)

        # a trace initialised like Pyro's HMC does, so improper sites (which cannot be sampled)
        # work; the random-number state is restored, so the check leaves the chain's draws alone
        rng_state = pyro.util.get_rng_state()
        try:
            with pyro.poutine.block():
                trace = pyro.poutine.trace(InitMessenger(init_fn)(self.model)).get_trace(*args, **kwargs)
        finally:
            pyro.util.set_rng_state(rng_state)
        discrete = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and not site_is_subsample(site)  # a plate's index site, not a latent
            and site["fn"].support.is_discrete
        ]
        if discrete:
            raise ValueError(
                f"model: DRHMC needs continuous latent sites, but {discrete} are discrete; "
                "marginalise them out (e.g. with logsumexp over their values) or observe them"
            )
