"""Delayed-rejection generalized HMC (DR-G-HMC) in JAX: the pure math core.

Turok, Modi & Carpenter, "Sampling From Multiscale Densities With Delayed Rejection Generalized
Hamiltonian Monte Carlo", AISTATS 2025 (arXiv:2406.02741).  Generalized HMC (Horowitz 1991) keeps
the momentum between iterations and only partially refreshes it; each iteration takes one short
leapfrog trajectory (one step by default), and when it is rejected, retries from the same point
with a smaller step by delayed rejection (Modi, Barnett & Carpenter 2023).  The step size thus
adapts to the local scale step by step, instead of once per long trajectory as in DR-HMC.

What the reference code does (read, not guessed; the paper itself was only reachable through its
abstract, so no equation numbers of it are quoted here)
----------------------------------------------------------------------------------------------
Reference: ``bayes_kit/drghmc.py`` of flatironinstitute/bayes-kit (commit 0772765, class
``DrGhmcDiag``; the same class as ``src/samplers/drghmc.py`` of gil2rok/drghmc, commit 09c0a77),
and the experiment driver ``scripts/run_drghmc.py`` + ``configs/samplers/drghmc.yaml`` of
gil2rok/drghmc (commit 9ec33ac).

* **State**: position ``theta`` and momentum ``rho`` (kept across iterations), plus a cache of the
  log density and its gradient at ``theta`` (``_log_density_gradient_cache``).  The momentum of
  the first iteration is a standard-normal draw (``__init__``).
* **One iteration** (``sample``): (1) partial momentum refresh
  ``rho <- sqrt(1 - damping) rho + sqrt(damping) z``, ``z ~ N(0, I)`` (``damping`` in ``(0, 1]``;
  1 is a full refresh); (2) for ``k = 0 .. max_proposals - 1``: draw ``u``; stop unless
  ``log u < retry_logp`` (see retry below; always true for ``k = 0``); propose
  ``(theta_k, rho_k) = proposal_map(theta, rho, k)`` = ``leapfrog_step_counts[k]`` leapfrog steps
  of ``leapfrog_step_sizes[k]`` followed by a momentum flip (a deterministic involution); accept
  with ``accept()``'s probability; on acceptance the state becomes ``(theta_k, rho_k)`` and the
  loop ends; (3) **unconditionally negate the momentum**, ``rho <- -rho`` ("negate momentum
  unconditionally for generalized HMC").
* **Direction after an acceptance or a rejection**: there is no extra device.  After an accepted
  stage the two flips cancel and the chain keeps moving the same way; after every stage is rejected
  the state is the refreshed start with its momentum negated, i.e. the chain turns back (Horowitz's
  GHMC).  Delayed rejection keeps the direction by making rejections rarer (the paper's abstract:
  it "decreas[es] the number of rejections which otherwise cause inefficient backtracking and
  prevents directed movement").  The gil2rok README lists Neal's non-reversible update of the
  uniform (arXiv:2001.11950) as background reading, but the sampler draws a fresh uniform for every
  accept/reject decision (``np.log(self._rng.uniform()) < accept_logp``), and so does this module.
* **Acceptance** (``accept``): ``log alpha_k = min(0, [logp(y) - logp(x)] + [H(y) - H(x)]
  + [R(y) - R(x)])`` with ``logp`` the joint log density, ``H(z) = sum_{j<k} log(1 - alpha_j(z))``
  the log probability that stages ``0..k-1`` reject from ``z`` (for ``y`` these are the *ghost*
  proposals ``proposal_map(y, j)``, each with its own recursive acceptance), and
  ``R = prob_retry * H`` the log probability of having retried that far.  So the ratio carries the
  rejection products with weight ``w = 2`` under probabilistic retry and ``w = 1`` without, which
  is :func:`numpyro_ext.infer.drhmc.delayed_rejection`'s recursion, used here as is.  A ghost that
  is accepted surely (``alpha_j(y) = 1``) makes ``alpha_k = 0`` (the reference's early return).
* **Probabilistic retry** (``retry_logp``, ``prob_retry=True`` by default in bayes-kit): after
  stage ``k`` is rejected with acceptance probability ``alpha_k``, stage ``k + 1`` is tried with
  probability ``1 - alpha_k``.  (The experiment config ``drghmc.yaml`` runs ``probabilistic: false``.)
* **Step sizes and step counts** (``scripts/run_drghmc.py``, ``configure_sampler``):
  ``eps_k = eps_0 * reduction_factor**-k``; ``step_count_method = "const_step_count"``
  (the ``drghmc.yaml`` default): every stage takes **one** leapfrog step; ``"const_traj_length"``:
  stage ``k`` takes ``int(eps_0 / eps_k)`` steps, i.e. the first stage's length ``eps_0``.
* **Tuning recipe** (same file and ``configs/samplers/drghmc.yaml``): ``eps_0 = step_size_factor x``
  the step size a NUTS run adapted (``get_nuts_step_size``), with ``step_size_factor = 2``; the
  diagonal metric from that NUTS run (``get_nuts_metric``, ``adapt_metric: true``);
  ``max_proposals = 3``, ``reduction_factor = 4``, ``damping = 0.08`` (a fixed constant in the
  config, not derived from the warmup; ``drghmc_refresh.yaml`` sets ``damping = 1.0``).
* **Gradients** are counted by wrapping the model's ``log_density_gradient`` (``grad_counter``),
  so ghost trajectories count.
* **NaN / errors**: the reference (gil2rok ``src/samplers/drghmc.py``) treats an exception while
  evaluating a proposal or ghost as a rejection (``accept_logp = -inf``) and counts it
  (``diagnostics["num_nans"]``); here a non-finite log density, gradient, position or momentum is a
  zero-density point (rejected) and a transition whose last tried stage failed is ``is_divergent``.

This module uses the same conventions as :mod:`numpyro_ext.infer.hmc_util` (momentum
``r ~ N(0, M)``, kinetic energy ``r^T M^{-1} r / 2``, velocity ``M^{-1} r``); the refresh keeps
``N(0, M)`` invariant: ``r <- sqrt(1 - damping) r + sqrt(damping) xi``, ``xi ~ N(0, M)``.  The
reference's diagonal ``metric_diag`` is used differently: its leapfrog scales the *gradient*
(``rho + eps/2 * metric * grad``, ``theta + eps * rho``), its kinetic energy is
``rho^T diag(metric) rho / 2``, and its refresh keeps ``N(0, I)``; these agree only for the unit
metric (the experiment driver ``src/utils/configure_bk_samplers.py`` leaves ``metric_diag``
commented out; ``scripts/run_drghmc.py`` passes NUTS's).  Only the unit-metric behaviour is taken
from it here.

Why it is exact: the refresh is an autoregressive move that leaves ``N(0, M)``, hence the joint
``pi(x) N(r; 0, M)``, invariant; the delayed-rejection step is reversible with respect to the joint
because every stage is a volume-preserving involution; the final flip is an involution that
preserves the joint.  Each piece keeps the joint invariant, so their composition does (it is not
reversible, which is the point of GHMC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapters.configs import check_flag
from adapters.validation import check_greater, check_positive, check_positive_int, check_unit_interval
from numpyro_ext.infer.drhmc.core import delayed_rejection, local_step_stages, stage_schedule
from numpyro_ext.infer.hmc_util import (
    IntegratorState,
    kinetic_energy,
    leapfrog_involution,
    partial_refresh,
    sample_momentum,
)

__all__ = [
    "DRGHMCInfo",
    "DRGHMCState",
    "build_kernel",
    "init",
    "partial_refresh",  # re-exported from numpyro_ext.infer.hmc_util, where it lives
    "stage_step",
]

Array = jax.Array


class DRGHMCState(NamedTuple):
    """The chain's state: position ``(d,)``, momentum ``(d,)`` (persistent), log density and its gradient."""

    position: Array
    momentum: Array
    logdensity: Array
    logdensity_grad: Array


class DRGHMCInfo(NamedTuple):
    """Per-transition diagnostics of :func:`build_kernel`'s step (scalars).

    The first six fields are :class:`numpyro_ext.infer.drhmc.DelayedRejectionInfo`'s: the last tried
    stage's and the first stage's acceptance probability, whether a stage was accepted, which
    (``stage``, -1 when none), how many stages were tried, whether the chain's last try diverged
    (zero density or energy error above ``max_delta_energy``).  ``energy`` is ``H = -log joint``
    of the point moved to; ``num_grad_evals`` counts every gradient, ghosts included;
    ``num_integration_steps`` only the chain's own leapfrog steps.
    """

    acceptance_rate: Array
    first_acceptance_rate: Array
    is_accepted: Array
    stage: Array
    num_proposals: Array
    is_divergent: Array
    energy: Array
    num_grad_evals: Array
    num_integration_steps: Array


def init(
    position: Array,
    logdensity_fn: Callable[[Array], Array],
    rng_key: Array,
    inverse_mass_matrix: Array | None = None,
) -> DRGHMCState:
    """Initial state at ``position`` ``(d,)`` with a momentum ``~ N(0, M)`` drawn from ``rng_key``
    (unit mass when ``inverse_mass_matrix`` is ``None``)."""
    logdensity, logdensity_grad = jax.value_and_grad(logdensity_fn)(position)
    if inverse_mass_matrix is None:
        inverse_mass_matrix = jnp.ones_like(position)
    momentum = sample_momentum(rng_key, jnp.asarray(inverse_mass_matrix, position.dtype), position)
    return DRGHMCState(position, momentum, logdensity, logdensity_grad)


def stage_step(
    step_size: Array | float, num_steps: Array | int, stage: int, reduction_factor: float, constant_trajectory: bool
) -> tuple[Array, Array]:
    """Stage ``stage``'s (step size, number of leapfrog steps).

    The step size is ``step_size / reduction_factor**stage``.  ``constant_trajectory=False`` (the
    reference code's ``const_step_count``, its DR-G-HMC default): every stage takes ``num_steps``
    steps.  ``True`` (``const_traj_length``): every stage integrates the first stage's time
    ``step_size * num_steps``, DR-HMC's :func:`~numpyro_ext.infer.drhmc.stage_schedule`.
    """
    if constant_trajectory:
        return stage_schedule(jnp.asarray(step_size), jnp.asarray(num_steps), stage, reduction_factor)
    return jnp.asarray(step_size) / reduction_factor**stage, jnp.asarray(num_steps, jnp.int32)


def build_kernel(
    max_proposals: int = 3,
    reduction_factor: float = 4.0,
    damping: float = 0.08,
    probabilistic: bool = True,
    constant_trajectory: bool = False,
    max_delta_energy: float = 1000.0,
    local_step_size: bool = False,
) -> Callable[..., tuple[DRGHMCState, DRGHMCInfo]]:
    """DR-G-HMC's transition, BlackJAX style.

    Returns ``step(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix, num_steps=1,
    damping=None) -> (state, info)``: (1) partially refresh the momentum
    (:func:`~numpyro_ext.infer.hmc_util.partial_refresh`; ``damping`` overrides the kernel's for this
    call, e.g. ``1.0`` for a full refresh); (2) try up to ``max_proposals`` stages from the same
    point, stage ``k`` being :func:`stage_step`'s leapfrog trajectory followed by a momentum flip,
    accepted by :func:`numpyro_ext.infer.drhmc.delayed_rejection` (ghost proposals and probabilistic
    retry included); (3) negate the momentum.  ``inverse_mass_matrix`` is ``(d,)`` or ``(d, d)``.

    With ``max_proposals=1`` this is Horowitz's generalized HMC; with ``damping=1`` and
    ``constant_trajectory=True`` it is DR-HMC (the final flip is then immaterial).
    ``local_step_size``: the stages after the first step by ATLAS's local rule
    (:func:`numpyro_ext.infer.drhmc.core.local_step_stages`; with one leapfrog step the curvature is
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
        rng_key: Array,
        state: DRGHMCState,
        logdensity_fn: Callable[[Array], Array],
        step_size: Array | float,
        inverse_mass_matrix: Array,
        num_steps: Array | int = 1,
        damping: Array | float | None = None,
    ) -> tuple[DRGHMCState, DRGHMCInfo]:
        refresh_key, accept_key = jax.random.split(rng_key)
        noise = jax.random.normal(refresh_key, state.position.shape, state.position.dtype)
        rate = default_damping if damping is None else damping
        momentum = partial_refresh(noise, state.momentum, inverse_mass_matrix, rate)
        point = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
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

        def log_joint(point: IntegratorState) -> Array:
            # a non-finite position or momentum (NaN gradient) is a zero-density point: rejected
            value = point.logdensity - kinetic_energy(inverse_mass_matrix, point.momentum)
            finite = jnp.all(jnp.isfinite(point.position)) & jnp.all(jnp.isfinite(point.momentum))
            return jnp.where(finite, value, -jnp.inf)

        new_point, dr_info = delayed_rejection(
            accept_key, point, log_joint, proposals, probabilistic, max_delta_energy, auxiliary
        )
        # the GHMC flip: undoes the accepted stage's flip (keep going), reverses a rejected start
        new_state = DRGHMCState(
            new_point.position, -new_point.momentum, new_point.logdensity, new_point.logdensity_grad
        )
        extra = dict(
            energy=-dr_info.log_joint, num_grad_evals=dr_info.num_evals, num_integration_steps=dr_info.chain_evals
        )
        return new_state, DRGHMCInfo(*dr_info[:6], **extra)

    return step
