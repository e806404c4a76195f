"""DR-G-HMC as a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC``.

The shell around the pure core :mod:`numpyro_ext.infer.drghmc.core`.  Warmup follows the reference
code's tuning recipe (Turok, Modi & Carpenter 2025; see the core's docstring): NUTS transitions with
NumPyro's step-size and mass-matrix adaptation, after which the first-stage step size is
``step_size_factor`` times the adapted NUTS step size and the metric is NUTS's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform

from adapters.configs import ConfigAttributes, DRGHMCConfig
from numpyro_ext.infer.drghmc.core import DRGHMCState, build_kernel
from numpyro_ext.infer.hmc_util import (
    adapt_in_warmup,
    core_transition,
    nuts_transition,
    sample_momentum,
    start_adaptation,
)
from numpyro_ext.infer.model_util import WarmupKernel

__all__ = ["DRGHMC", "DRGHMCKernelState"]

Array = jax.Array


class DRGHMCKernelState(NamedTuple):
    """State of :class:`DRGHMC`, named like NumPyro's ``HMCState`` so ``MCMC`` and ArviZ read it.

    ``z`` the unconstrained sites (a dict for a model, a flat vector for a potential), ``r`` the
    persistent momentum (flat ``(d,)``), ``num_steps`` the chain's own leapfrog steps in this
    transition, ``num_grad_evals`` all gradient evaluations (ghosts included), ``stage`` the
    accepted stage (-1 if none), ``accept_prob`` the last tried stage's acceptance probability.
    During warmup (NUTS) ``stage`` is -1 and the step counts are NUTS's.
    """

    i: Array
    z: Any
    z_grad: Any
    r: Array
    potential_energy: Array
    energy: Array
    num_steps: Array
    accept_prob: Array
    mean_accept_prob: Array
    diverging: Array
    stage: Array
    num_grad_evals: Array
    adapt_state: Any
    rng_key: Array


class DRGHMC(ConfigAttributes, WarmupKernel):
    """Delayed-rejection generalized HMC (Turok, Modi & Carpenter 2025) for :class:`numpyro.infer.MCMC`.

    Each iteration partially refreshes a persistent momentum, takes ``num_steps`` (default one)
    leapfrog steps and, when that proposal is rejected, retries from the same point with step sizes
    ``eps / reduction_factor**k`` (delayed rejection with ghost proposals), then negates the
    momentum (so an accepted move keeps its direction and a fully rejected one turns back).

    Args:
        model: a NumPyro model, or an :class:`adapters.Target` (any backend).
        potential_fn: instead of ``model``, a potential energy (negative log density) of the
            unconstrained parameters; ``MCMC.run(..., init_params=...)`` is then needed.
        step_size: the start of NUTS warmup's step-size adaptation.  After warmup the first-stage
            step size is ``step_size_factor`` times the step size warmup ends with; with
            ``num_warmup=0`` it is ``step_size`` itself.
        step_size_factor: the factor on NUTS's step size (2 in the reference code's recipe).
        num_steps: leapfrog steps of the first stage (1 in the reference recipe).
        max_proposals: number of stages ``K`` (1 is plain generalized HMC).
        reduction_factor: ``c > 1``, the step-size ratio between stages.
        damping: the partial refresh ``r <- sqrt(1 - damping) r + sqrt(damping) xi`` (in ``(0, 1]``;
            1 is a full refresh; 0.08 in the reference recipe).
        probabilistic: probabilistic delayed rejection: after stage ``k`` is rejected with
            acceptance probability ``alpha_k``, try the next only with probability ``1 - alpha_k``.
        constant_trajectory: later stages take ``num_steps * c**k`` steps (the first stage's
            integration time) instead of ``num_steps`` steps.
        adapt_step_size, target_accept_prob, adapt_mass_matrix, dense_mass: NumPyro's warmup
            adaptation of the NUTS warmup (dual averaging of the step size to the target, Welford
            windows for the inverse mass matrix).
        inverse_mass_matrix: an initial inverse mass matrix, ``(d,)`` or ``(d, d)``.
        init_strategy: NumPyro initialisation strategy for ``model``.
        max_delta_energy: an energy error above this (or a non-finite density) marks a divergence.
        max_tree_depth: tree-depth limit of the NUTS warmup.
        local_step_size: ATLAS's local step size for the stages after the first (as
            :class:`~numpyro_ext.infer.DRHMC`'s; the curvature is measured on the first stage's steps).

    The first sampling iteration refreshes the momentum fully (``N(0, M)`` of the adapted metric).
    The checked hyperparameters are ``kernel.config`` (:class:`adapters.configs.DRGHMCConfig`, shared by
    both backends); each also reads as an attribute (``kernel.damping``).

    Sample statistics (``MCMC.get_extra_fields()`` and ArviZ ``sample_stats``): ``accept_prob``
    (ArviZ ``acceptance_rate``), ``diverging``, ``stage``, ``num_steps`` (``n_steps``; ArviZ adds
    ``tree_depth`` from it), ``num_grad_evals``, ``energy``, ``potential_energy`` (``lp``, negated)
    and ``adapt_state.step_size`` (``step_size``, the first-stage step size while sampling).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        step_size: float = 1.0,
        step_size_factor: float = 2.0,
        num_steps: int = 1,
        max_proposals: int = 3,
        reduction_factor: float = 4.0,
        damping: float = 0.08,
        probabilistic: bool = True,
        constant_trajectory: bool = False,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.8,
        adapt_mass_matrix: bool = True,
        dense_mass: bool = False,
        inverse_mass_matrix: Any = None,
        init_strategy: Callable = init_to_uniform,
        max_delta_energy: float = 1000.0,
        max_tree_depth: int = 10,
        local_step_size: bool = False,
    ):
        super().__init__("DRGHMC", model, potential_fn, init_strategy, inverse_mass_matrix)
        self.config = cfg = DRGHMCConfig.from_arguments(locals())  # checked, one message for both backends
        self._step = build_kernel(
            cfg.max_proposals,
            cfg.reduction_factor,
            cfg.damping,
            cfg.probabilistic,
            cfg.constant_trajectory,
            cfg.max_delta_energy,
            cfg.local_step_size,
        )

    # ---- WarmupKernel hooks ----------------------------------------------------------
    def adaptation_settings(self) -> tuple[bool, bool, bool, float]:
        cfg = self.config
        return cfg.adapt_step_size, cfg.adapt_mass_matrix, cfg.dense_mass, cfg.target_accept_prob

    def _init_one(self, z, key, potential_fn, wa_init):
        key, wa_key, momentum_key = jax.random.split(key, 3)
        position = ravel_pytree(z)[0]
        potential_energy, potential_grad, adapt_state = start_adaptation(
            wa_init, potential_fn, position, wa_key, self.config.step_size, self._inverse_mass_matrix, self._dim
        )
        momentum = sample_momentum(momentum_key, adapt_state.inverse_mass_matrix, position)
        return DRGHMCKernelState(
            r=momentum, **self.initial_fields(z, potential_energy, potential_grad, adapt_state, key)
        )

    def _sample_one(self, state: DRGHMCKernelState, model_args, model_kwargs, nuts_warmup: bool):
        potential_fn, rng_key, args = self.transition_inputs(state, model_args, model_kwargs)
        if nuts_warmup:
            # NUTS draws its own momentum; the persistent one is refreshed fully after warmup
            new = nuts_transition(
                potential_fn, *args, self.config.max_delta_energy, self.config.max_tree_depth, momentum=state.r
            )
        else:
            # the first sampling iteration refreshes fully: the kept momentum was drawn for warmup's metric
            damping = jnp.where(state.i == self._num_warmup, 1.0, self.config.damping).astype(args[1].dtype)
            new = self._drghmc_transition(potential_fn, *args, state.r, damping)

        adapt_state = state.adapt_state
        if self._num_warmup > 0:
            adapt_state = adapt_in_warmup(self._wa_update, state.i, self._num_warmup, new, adapt_state)
            # the recipe: the first stage steps step_size_factor x the step size NUTS adapted
            last = state.i == self._num_warmup - 1
            scale = jnp.where(last, self.config.step_size_factor, 1.0).astype(adapt_state.step_size.dtype)
            adapt_state = adapt_state._replace(step_size=adapt_state.step_size * scale)
        return DRGHMCKernelState(r=new.momentum, **self.next_fields(state, new, adapt_state, rng_key))

    # ---- transitions ----------------------------------------------------------------
    def _drghmc_transition(
        self, potential_fn, key, position, potential_energy, potential_grad, step_size, inverse_mass_matrix, r, damping
    ):
        state = DRGHMCState(position, r, -potential_energy, -potential_grad)
        new_state, info = self._step(
            key, state, lambda x: -potential_fn(x), step_size, inverse_mass_matrix, self.config.num_steps, damping
        )
        return core_transition(new_state, info, momentum=new_state.momentum)
