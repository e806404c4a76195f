"""DR-HMC as a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC``.

The shell around the pure core :mod:`numpyro_ext.infer.drhmc.core`: NumPyro's step-size and
mass-matrix warmup and, when no trajectory length is given, a NUTS warmup that picks it
(Modi, Barnett & Carpenter 2023, Sec. 4); model plumbing from :mod:`numpyro_ext.infer.model_util`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import build_adaptation_schedule
from numpyro.infer.initialization import init_to_uniform

from adapters.configs import DRHMCConfig
from numpyro_ext.infer.drhmc.core import DRHMCState, build_kernel
from numpyro_ext.infer.hmc_util import (
    adapt_in_warmup,
    core_transition,
    fixed_length_steps,
    nuts_transition,
    start_adaptation,
)
from numpyro_ext.infer.model_util import WarmupKernel

__all__ = ["DRHMC", "DRHMCKernelState"]

Array = jax.Array


class DRHMCKernelState(NamedTuple):
    """State of :class:`DRHMC`, named like NumPyro's ``HMCState`` so ``MCMC`` and ArviZ read it.

    ``z`` holds the unconstrained sites (a dict for a model, a flat vector for a potential),
    ``num_steps`` the leapfrog steps of the chain's own trajectories in this transition,
    ``num_grad_evals`` all gradient evaluations (ghost trajectories included), ``stage`` the
    accepted stage (-1 if none), ``accept_prob`` the last tried stage's acceptance
    probability, ``trajectory_length`` the integration time ``T`` of every stage.
    """

    i: Array
    z: Any
    z_grad: Any
    potential_energy: Array
    energy: Array
    num_steps: Array
    accept_prob: Array
    mean_accept_prob: Array
    diverging: Array
    stage: Array
    num_grad_evals: Array
    trajectory_length: Array
    length_sum: Array
    length_count: Array
    adapt_state: Any
    rng_key: Array


class DRHMC(WarmupKernel):
    """Delayed-rejection HMC (Modi, Barnett & Carpenter 2023) for :class:`numpyro.infer.MCMC`.

    Each iteration draws one momentum and tries up to ``max_proposals`` leapfrog
    trajectories of the same length from the same start: stage ``k`` uses step size
    ``step_size / reduction_factor**k`` and ``num_steps * reduction_factor**k`` steps.
    Later stages are only needed where the first one fails, i.e. in regions of high
    curvature, so a step size tuned for the bulk keeps working in a funnel's neck.

    Args:
        model: a NumPyro model, or an :class:`adapters.Target` (any backend).
        potential_fn: instead of ``model``, a potential energy (negative log density) of
            the unconstrained parameters; ``MCMC.run(..., init_params=...)`` is then needed.
        step_size: first-stage step size ``eps`` (the start of adaptation when adapting).
            With a trajectory length ``T`` the first stage runs NumPyro's ``HMC`` rule,
            ``L = ceil(T / eps)`` steps of ``T / L <= eps``, so it integrates exactly ``T``.
        trajectory_length: ``T``, the integration time of every stage. With neither this nor ``num_steps``
            given, warmup runs NUTS (same adaptation) and sets the trajectory length to the
            mean NUTS integration time ``eps * n_leapfrog`` over the last slow window and the
            terminal window of warmup, times ``trajectory_scale``; the DR-HMC transitions
            start after warmup.
        num_steps: first-stage number of leapfrog steps ``L`` of ``eps`` (fixed, overrides
            ``trajectory_length``).
        max_proposals: number of stages ``K`` (1 is plain HMC; cost grows like ``2^K``).
        reduction_factor: ``c > 1``, the step-size ratio between consecutive stages.
        probabilistic: probabilistic delayed rejection: after stage ``k`` is rejected with
            acceptance probability ``alpha_k``, try the next stage only with probability
            ``1 - alpha_k`` (Modi et al. 2023, Sec. 3.2).
        adapt_step_size: dual-averaging adaptation of the first-stage step size to
            ``target_accept_prob`` during warmup (first-stage acceptance probability).
        target_accept_prob: target of that adaptation.
        adapt_mass_matrix: Welford adaptation of the (inverse) mass matrix, NumPyro's windows.
        dense_mass: dense instead of diagonal mass matrix.
        inverse_mass_matrix: an initial inverse mass matrix, ``(d,)`` or ``(d, d)``.
        init_strategy: NumPyro initialisation strategy for ``model``.
        max_delta_energy: an energy error above this (or non-finite) marks a divergence.
        max_tree_depth: tree-depth limit of the NUTS warmup, also capping ``L`` at
            ``2**max_tree_depth``.
        trajectory_scale: factor on the trajectory length warmup chooses (default 0.5). NUTS
            stops a trajectory only after it doubled past the U-turn, so its mean integration
            time overshoots the length a static trajectory needs (see the docs' "Choosing the
            trajectory length").
        jitter_trajectory: each iteration, scale every stage's trajectory length by one
            ``u ~ Uniform(0, 1]`` drawn independently of the state (randomised lengths as in
            Neal 2011, "MCMC using Hamiltonian dynamics": a mixture of valid kernels), which
            breaks the periodicity of a fixed length.
        local_step_size: ATLAS's local step size (Modi 2024) for the delayed stages: when the first
            trajectory is rejected, the next stage steps a size drawn (log-normal, log-sd ``log 1.2``)
            around ``0.5 / sqrt(lambda)``, ``lambda`` the largest curvature that trajectory met,
            capped at ``eps / 2``; each further stage ``reduction_factor`` times smaller, all
            integrating the first stage's time.  The draw's density enters the Hastings ratio (see
            :func:`numpyro_ext.infer.drhmc.core.local_step_stages`).  Measured on Neal's funnel it is not
            better than the fixed ladder (see the docs' "Local step size"), so it is off by default.

    Sample statistics (``MCMC.get_extra_fields()`` and ArviZ ``sample_stats``, the same names from
    ``az.from_numpyro`` and ``adapters.inference_data.from_mcmc``): ``accept_prob`` (ArviZ
    ``acceptance_rate``), ``diverging``, ``stage``, ``num_steps`` (``n_steps``; ArviZ adds
    ``tree_depth = floor(log2(n_steps)) + 1`` from it), ``num_grad_evals``, ``energy``,
    ``potential_energy`` (``lp``, negated) and ``adapt_state.step_size`` (``step_size``).
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
        inverse_mass_matrix: Any = None,
        init_strategy: Callable = init_to_uniform,
        max_delta_energy: float = 1000.0,
        max_tree_depth: int = 10,
        trajectory_scale: float | None = None,
        jitter_trajectory: bool = False,
        local_step_size: bool = False,
    ):

        super().__init__("DRHMC", model, potential_fn, init_strategy, inverse_mass_matrix)
        self.config = DRHMCConfig.from_arguments(locals())  # checked, one message for both backends
        cfg = self.config
        self._dr_step = build_kernel(
            cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy, cfg.local_step_size
        )

    # ---- WarmupKernel hooks ----------------------------------------------------------
    def adaptation_settings(self) -> tuple[bool, bool, bool, float]:
        cfg = self.config
        return cfg.adapt_step_size, cfg.adapt_mass_matrix, cfg.dense_mass, cfg.target_accept_prob

    @property
    def nuts_warmup(self) -> bool:
        """Whether warmup runs NUTS (to choose the trajectory length)."""
        return self.config.choose_length

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._length_window_start = self._length_window(int(num_warmup))
        return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)

    def _init_one(self, z, key, potential_fn, wa_init):
        cfg = self.config
        key, wa_key = jax.random.split(key)
        position = ravel_pytree(z)[0]
        potential_energy, potential_grad, adapt_state = start_adaptation(
            wa_init, potential_fn, position, wa_key, cfg.step_size, self._inverse_mass_matrix, self._dim
        )
        trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        return DRHMCKernelState(
            trajectory_length=jnp.asarray(trajectory_length, position.dtype),
            length_sum=jnp.zeros((), position.dtype),
            length_count=jnp.zeros((), position.dtype),
            **self.initial_fields(z, potential_energy, potential_grad, adapt_state, key),
        )

    def _sample_one(self, state: DRHMCKernelState, model_args, model_kwargs, nuts_warmup: bool) -> DRHMCKernelState:
        potential_fn, rng_key, args = self.transition_inputs(state, model_args, model_kwargs)
        if nuts_warmup:
            new = nuts_transition(potential_fn, *args, self.config.max_delta_energy, self.config.max_tree_depth)
        else:
            new = self._dr_transition(potential_fn, *args, state.trajectory_length)

        adapt_state, trajectory_length = state.adapt_state, state.trajectory_length
        length_sum, length_count = state.length_sum, state.length_count
        if self._num_warmup > 0:
            in_warmup = state.i < self._num_warmup
            adapt_state = adapt_in_warmup(self._wa_update, state.i, self._num_warmup, new, adapt_state)
            if self.config.choose_length:
                counted = in_warmup & (state.i >= self._length_window_start)
                step_size = args[4]  # the adapted step size the transition integrated with
                length_sum = length_sum + jnp.where(counted, new.num_steps * step_size, 0.0)
                length_count = length_count + counted
                trajectory_length = jnp.where(
                    state.i == self._num_warmup - 1,
                    self.config.length_scale * length_sum / jnp.maximum(length_count, 1.0),
                    trajectory_length,
                )
        return DRHMCKernelState(
            trajectory_length=trajectory_length,
            length_sum=length_sum,
            length_count=length_count,
            **self.next_fields(state, new, adapt_state, rng_key),
        )

    # ---- transitions ----------------------------------------------------------------
    def _first_stage_steps(self, step_size, trajectory_length, fraction=1.0):
        """The first stage's ``(step size, L)``, of a ``fraction`` of the length when jittering.

        ``num_steps`` given: ``L = ceil(fraction * num_steps)`` steps of ``eps``. Otherwise NumPyro's
        ``HMC`` rule (:func:`~numpyro_ext.infer.hmc_util.fixed_length_steps`): ``L = ceil(T' / eps)``
        steps of ``T' / L`` with ``T' = fraction * T``, so the trajectory is exactly ``T'`` long.
        """
        if self.config.num_steps is not None:
            num_steps = jnp.maximum(jnp.ceil(self.config.num_steps * fraction - 1e-6), 1).astype(jnp.int32)
            return step_size, num_steps
        return fixed_length_steps(step_size, fraction * trajectory_length, 2**self.config.max_tree_depth)

    def _dr_transition(
        self,
        potential_fn,
        key,
        position,
        potential_energy,
        potential_grad,
        step_size,
        inverse_mass_matrix,
        trajectory_length,
    ):
        state = DRHMCState(position, -potential_energy, -potential_grad)
        fraction = 1.0
        if self.config.jitter_trajectory:
            key, jitter_key = jax.random.split(key)
            fraction = 1.0 - jax.random.uniform(jitter_key, dtype=position.dtype)  # in (0, 1]
        step_size, num_steps = self._first_stage_steps(step_size, trajectory_length, fraction)
        new_state, info = self._dr_step(
            key, state, lambda x: -potential_fn(x), step_size, inverse_mass_matrix, num_steps
        )
        return core_transition(new_state, info)

    # ---- set-up helpers -------------------------------------------------------------
    @staticmethod
    def _length_window(num_warmup: int) -> int:
        """First warmup iteration whose NUTS lengths set the trajectory length."""
        schedule = build_adaptation_schedule(num_warmup)
        return int(schedule[-2][0]) if len(schedule) >= 2 else 0
