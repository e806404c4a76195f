"""Delayed-rejection generalized HMC (DR-G-HMC) in torch: the pure math core.

Turok, Modi & Carpenter, "Sampling From Multiscale Densities With Delayed Rejection Generalized
Hamiltonian Monte Carlo", AISTATS 2025 (arXiv:2406.02741).  The torch twin of
:mod:`numpyro_ext.infer.drghmc.core`, with the same names; its docstring records what the reference
code (bayes-kit ``DrGhmcDiag``, gil2rok/drghmc) does and why the transition is exact.  One
transition: (1) partially refresh the kept momentum (:func:`pyro_ext.infer.hmc_util.partial_refresh`);
(2) try up to ``max_proposals`` short leapfrog trajectories from the same point, stage ``k`` with
step size ``eps / c**k``, accepted by :func:`pyro_ext.infer.drhmc.delayed_rejection` (ghost
proposals, probabilistic retry); (3) negate the momentum (GHMC's flip: an accepted move keeps its
direction, a full rejection turns back).

Built from :mod:`pyro_ext.infer.drhmc.core` (``delayed_rejection``, ``leapfrog_involution``,
``stage_schedule``, ``init`` for the log density and gradient) and :mod:`pyro_ext.infer.hmc_util`.
As in the DR-HMC torch core, control flow is plain Python: only tried stages are computed, a ghost
ladder stops once a ghost is surely accepted, a trajectory stops at its first non-finite log density,
and ``num_grad_evals`` counts the gradients actually computed (the JAX core, traced once, computes
every ghost ladder in full, so its count can be higher on the same transition; the moves agree).

Random numbers come from a ``torch.Generator`` when one is passed, else from torch's global
generator (``pyro.set_rng_seed``), in this order: one ``torch.randn(d)`` of the position's dtype (the
refresh's noise), then :func:`pyro_ext.infer.drhmc.delayed_rejection`'s float64 uniforms: for each
tried stage ``k`` one ``u_k`` (accept iff ``log u_k < log alpha_k``) and, if stage ``k`` is rejected,
``probabilistic`` is on and a later stage exists, one ``v_k`` (retry iff ``log v_k < log(1 - alpha_k)``);
with ``local_step_size``, when stage 1 is tried, the local step's float64 ``torch.randn(())`` before its ``u_1``.
The JAX core draws the same numbers as the normal ``(d,)`` and two arrays of ``max_proposals``
uniforms; fed the same numbers, both make the same moves (``tests/test_parity_drghmc.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from adapters.configs import check_flag
from adapters.validation import check_greater, check_positive, check_positive_int, check_unit_interval
from pyro_ext.infer.drhmc.core import delayed_rejection, leapfrog_involution, local_step_stages, stage_schedule
from pyro_ext.infer.drhmc.core import init as drhmc_init
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy, partial_refresh, sample_momentum

__all__ = ["DRGHMCInfo", "DRGHMCState", "build_kernel", "init", "stage_step"]

_NEG_INF = -math.inf


class DRGHMCState(NamedTuple):
    """The chain's state: ``position`` ``(d,)``, the kept ``momentum`` ``(d,)``, the ``logdensity`` (a float,
    ``-inf`` where not finite) and its gradient ``(d,)``."""

    position: torch.Tensor
    momentum: torch.Tensor
    logdensity: float
    logdensity_grad: torch.Tensor


class DRGHMCInfo(NamedTuple):
    """Per-transition diagnostics of :func:`build_kernel`'s step (Python scalars), named as the JAX twin's.

    The first six are :class:`pyro_ext.infer.drhmc.DelayedRejectionInfo`'s; ``energy`` is
    ``H = -log joint`` of the point moved to, ``num_grad_evals`` every gradient computed (ghosts
    included), ``num_integration_steps`` the chain's own leapfrog steps.
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


def init(
    position: torch.Tensor,
    logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator | None = None,
    inverse_mass_matrix: torch.Tensor | None = None,
) -> DRGHMCState:
    """Initial state at ``position`` ``(d,)`` with a momentum ``~ N(0, M)`` (one ``randn(d)`` from
    ``generator``; unit mass when ``inverse_mass_matrix`` is ``None``)."""
    start = drhmc_init(position, logdensity_fn)
    momentum = sample_momentum(generator, inverse_mass_matrix, start.position)
    return DRGHMCState(start.position, momentum, start.logdensity, start.logdensity_grad)


def stage_step(
    step_size: float, num_steps: int, stage: int, reduction_factor: float, constant_trajectory: bool
) -> tuple[float, int]:
    """Stage ``stage``'s (step size, number of leapfrog steps), as the JAX twin's.

    The step size is ``step_size / reduction_factor**stage``; every stage takes ``num_steps`` steps
    (``constant_trajectory=False``, the reference's ``const_step_count``), or integrates the first
    stage's time ``step_size * num_steps`` (``True``: :func:`pyro_ext.infer.drhmc.stage_schedule`).
    """
    if constant_trajectory:
        return stage_schedule(step_size, num_steps, stage, reduction_factor)
    return step_size / reduction_factor**stage, num_steps


def build_kernel(
    max_proposals: int = 3,
    reduction_factor: float = 4.0,
    damping: float = 0.08,
    probabilistic: bool = True,
    constant_trajectory: bool = False,
    max_delta_energy: float = 1000.0,
    local_step_size: bool = False,
) -> Callable[..., tuple[DRGHMCState, DRGHMCInfo]]:
    """DR-G-HMC's transition on a flat position vector (the module docstring has the steps).

    Returns ``step(state, logdensity_fn, step_size, inverse_mass_matrix, num_steps=1, damping=None,
    generator=None) -> (state, info)``; ``damping`` overrides the kernel's for this call (``1.0``: a
    full refresh).  ``logdensity_fn`` maps a ``(d,)`` tensor to a scalar tensor; ``inverse_mass_matrix``
    is ``(d,)`` or ``(d, d)``.  ``max_proposals=1`` is Horowitz's generalized HMC.
    ``local_step_size``: the stages after the first step by ATLAS's local rule
    (:func:`pyro_ext.infer.drhmc.core.local_step_stages`; with one leapfrog step the curvature is
    that of the single step's secant).
    """
    check_positive_int("max_proposals", max_proposals)
    check_greater("reduction_factor", reduction_factor, 1, "the step-size ratio between stages")
    check_unit_interval("damping", damping, include_zero=False, include_one=True)
    check_flag("probabilistic", probabilistic)
    check_flag("constant_trajectory", constant_trajectory)
    check_positive("max_delta_energy", max_delta_energy)
    check_flag("local_step_size", local_step_size)
    default_damping = damping

    def step(
        state: DRGHMCState,
        logdensity_fn: Callable[[torch.Tensor], torch.Tensor],
        step_size: float,
        inverse_mass_matrix: torch.Tensor,
        num_steps: int = 1,
        damping: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[DRGHMCState, DRGHMCInfo]:
        position = state.position
        noise = torch.randn(position.shape, generator=generator, dtype=position.dtype, device=position.device)
        rate = default_damping if damping is None else float(damping)
        momentum = partial_refresh(noise, state.momentum, inverse_mass_matrix, rate)
        point = IntegratorState(position, momentum, state.logdensity, state.logdensity_grad)
        auxiliary = None
        if local_step_size:
            proposals, auxiliary = local_step_stages(
                logdensity_fn,
                inverse_mass_matrix,
                step_size,
                num_steps,
                max_proposals,
                reduction_factor,
                constant_trajectory,
            )
        else:
            proposals = [
                leapfrog_involution(
                    logdensity_fn,
                    inverse_mass_matrix,
                    *stage_step(step_size, num_steps, k, reduction_factor, constant_trajectory),
                )
                for k in range(max_proposals)
            ]

        def log_joint(point: IntegratorState) -> float:
            # a non-finite momentum (a NaN gradient) makes the kinetic energy NaN: a zero-density point
            if point.logdensity == _NEG_INF:
                return _NEG_INF
            return point.logdensity - float(kinetic_energy(inverse_mass_matrix, point.momentum))

        new, info = delayed_rejection(
            generator, point, log_joint, proposals, probabilistic, max_delta_energy, auxiliary
        )
        # the GHMC flip: undoes the accepted stage's flip (keep going), reverses a rejected start
        new_state = DRGHMCState(new.position, -new.momentum, new.logdensity, new.logdensity_grad)
        # the first six fields (acceptance_rate ... is_divergent) are DelayedRejectionInfo's, in its order
        extra = dict(energy=-info.log_joint, num_grad_evals=info.num_evals, num_integration_steps=info.chain_evals)
        return new_state, DRGHMCInfo(*info[:6], **extra)

    return step
