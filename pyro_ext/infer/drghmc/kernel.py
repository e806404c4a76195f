"""DR-G-HMC's Pyro kernel: a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` around :mod:`pyro_ext.infer.drghmc.core`.

The twin of :class:`numpyro_ext.infer.drghmc.DRGHMC` (same arguments, defaults, statistics and error
messages).  Warmup follows the reference code's tuning recipe (Turok, Modi & Carpenter 2025): Pyro's
own NUTS warmup (:class:`pyro_ext.infer.drhmc.warmup.NUTSWarmup`: dual averaging of the step size,
Stan's windowed mass-matrix adaptation), after which the first-stage step size is
``step_size_factor`` times the adapted NUTS step size and the metric is NUTS's.  Model plumbing is
Pyro's public ``initialize_model``, as :class:`pyro_ext.infer.DRHMC` uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.ops.integrator import potential_grad

from adapters.configs import ConfigAttributes, DRGHMCConfig
from adapters.validation import check_inverse_mass_matrix, check_numeric
from pyro_ext.infer.drghmc.core import DRGHMCState, build_kernel
from pyro_ext.infer.drhmc.warmup import NUTSWarmup, is_numerical_failure
from pyro_ext.infer.hmc_util import RecordingKernel

__all__ = ["DRGHMC"]


class DRGHMC(ConfigAttributes, RecordingKernel):
    """Delayed-rejection generalized HMC (Turok, Modi & Carpenter 2025) for :class:`pyro.infer.MCMC`.

    Each iteration partially refreshes a persistent momentum, takes ``num_steps`` (default one)
    leapfrog steps and, when that proposal is rejected, retries from the same point with step sizes
    ``eps / reduction_factor**k`` (delayed rejection with ghost proposals), then negates the
    momentum (so an accepted move keeps its direction and a fully rejected one turns back).

    Args:
        model: a Pyro model or an :class:`adapters.Target`.  A Pyro Target runs natively (its bound
            arguments included; call ``MCMC.run()`` without arguments); a Target of another backend is
            sampled through ``Target.as_torch()`` as one unconstrained site ``"x"`` of length
            ``target.dim`` (:meth:`constrain_samples` maps its draws with ``target.constrain``).
        potential_fn: instead of ``model``, a potential energy (negative log density) of a dict of
            unconstrained tensors; ``MCMC(..., initial_params=...)`` is then needed.
        step_size: the start of the NUTS warmup's step-size adaptation.  After warmup the first-stage
            step size is ``step_size_factor`` times the step size warmup ends with; with
            ``warmup_steps=0`` it is ``step_size`` itself.
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
        adapt_step_size, target_accept_prob, adapt_mass_matrix, dense_mass: the NUTS warmup's
            adaptation (Pyro's: dual averaging of the step size to the target, Stan's windows for the
            inverse mass matrix).
        inverse_mass_matrix: an initial inverse mass matrix, ``(d,)`` or ``(d, d)`` over the sites in
            sorted order (the warmup's step-size search at set-up still uses Pyro's identity).
        init_strategy: Pyro initialisation strategy for ``model``.
        max_delta_energy: an energy error above this (or a non-finite density) marks a divergence of a
            DR-G-HMC transition (the NUTS warmup keeps Pyro's own threshold, 1000).
        max_tree_depth: tree-depth limit of the NUTS warmup.
        jit_compile: Pyro's ``jit_compile`` of the potential energy.
        local_step_size: ATLAS's local step size for the stages after the first (as
            :class:`~pyro_ext.infer.DRHMC`'s; the curvature is measured on the first stage's steps).

    The first sampling iteration refreshes the momentum fully (``N(0, M)`` of the adapted metric).
    The checked hyperparameters are ``kernel.config`` (:class:`adapters.configs.DRGHMCConfig`, shared by
    both backends); each also reads as an attribute (``kernel.damping``).

    Per-iteration statistics, warmup included, are kept as :class:`pyro_ext.infer.DRHMC` keeps them:
    :meth:`get_sample_stats` returns numpy arrays ``(warmup_steps + num_samples,)`` of ``accept_prob``
    (NaN on NUTS iterations), ``diverging``, ``stage`` (-1 on NUTS iterations and full rejections),
    ``num_steps``, ``num_grad_evals`` (ghosts included), ``energy`` (NaN on NUTS iterations),
    ``potential_energy``, ``step_size`` (the first-stage step size while sampling) and ``warmup``;
    ``diagnostics()`` adds Pyro's ``"divergences"`` and ``"acceptance rate"``, and
    ``adapters.inference_data.from_mcmc`` puts the sampling-phase statistics into ArviZ's
    ``sample_stats`` under the NumPyro kernel's names.
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
        jit_compile: bool = False,
        local_step_size: bool = False,
    ):
        self.set_model("DRGHMC", model, potential_fn, init_strategy, jit_compile)
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (d,) or (d, d)")
        self.config = DRGHMCConfig.from_arguments(locals())  # checked, one message for both backends
        self._inverse_mass_matrix_input = inverse_mass_matrix
        self.reset_statistics()
        self._reset()

    is_failure = staticmethod(is_numerical_failure)

    def _reset(self) -> None:
        """Per-chain state, cleared by ``cleanup`` (as Pyro's ``HMC``); the statistics stay."""
        self._iteration = 0
        self._initial_params = None
        self._state = None  # (z, potential energy, potential gradient) of the current draw
        self._momentum = None  # the kept momentum, flat (d,)
        self._nuts = None  # the NUTS warmup while it runs
        self._step = None  # built in setup, so an un-set-up kernel pickles (spawned chains)
        self._step_size = self.config.step_size
        self._layout = None  # (site names in flat order, inverse mass matrix (d,) or (d, d))

    # ---- Pyro MCMCKernel interface -----------------------------------------------------
    @property
    def initial_step_size(self) -> float:
        """The ``step_size`` given: the start of the warmup's adaptation (``config.step_size``)."""
        return self.config.step_size

    @property
    def step_size(self) -> float:
        """The current step size: the NUTS warmup's while it runs, then the first stage's."""
        return self._nuts.step_size if self._nuts is not None else self._step_size

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        z = self.start_chain(warmup_steps, args, kwargs)
        cfg = self.config
        self._step = build_kernel(
            cfg.max_proposals,
            cfg.reduction_factor,
            cfg.damping,
            cfg.probabilistic,
            cfg.constant_trajectory,
            cfg.max_delta_energy,
            cfg.local_step_size,
        )
        self._step_size = cfg.step_size
        if not z:  # no latent sites: nothing to adapt or move
            self._state, self._layout = (z, self.potential_fn(z), {}), ((), None)
            return
        z_grads, potential_energy = potential_grad(self.potential_fn, z)
        self._state = (z, potential_energy, z_grads)
        sites = tuple(sorted(z))
        dim = sum(z[name].numel() for name in sites)
        options = {"dtype": potential_energy.dtype, "device": potential_energy.device}
        imm = self._inverse_mass_matrix_input
        imm = None if imm is None else torch.as_tensor(imm, **options)
        check_inverse_mass_matrix("DRGHMC", imm, dim)
        if imm is None:
            imm = torch.eye(dim, **options) if cfg.dense_mass else torch.ones(dim, **options)
        # the first sampling iteration refreshes fully, so the kept momentum starts at zero
        self._momentum = torch.zeros(dim, **options)
        self._layout = (sites, imm)
        if warmup_steps > 0:  # the config names NUTSWarmup's settings (step_size: the adaptation's start)
            self._nuts = NUTSWarmup(self.potential_fn, self._initial_params, warmup_steps, cfg)
            if self._inverse_mass_matrix_input is not None:
                self._nuts.nuts.mass_matrix_adapter.inverse_mass_matrix = {sites: imm}

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self._layout[0]:  # no latent sites: nothing to move
            return self.no_latent_sample(params)
        if self._nuts is not None:
            return self._nuts_sample(params)
        sites, inverse_mass_matrix = self._layout
        point = self.flat_point(params, sites)
        state = DRGHMCState(point.position, self._momentum, point.logdensity, point.grad)
        # the first sampling iteration refreshes fully: the kept momentum was not drawn for this metric
        damping = 1.0 if self._iteration == self._warmup_steps else self.config.damping
        num_steps = self.config.num_steps
        with pyro.validation_enabled(False):  # NaN and out-of-support values are expected on diverging trajectories
            new, info = self._step(state, point.logdensity_fn, self._step_size, inverse_mass_matrix, num_steps, damping)
        z_new = self.move_to(new, point)
        self._momentum = new.momentum
        self._iteration += 1
        self.record_transition(new, info, self._step_size, False)
        return dict(z_new)

    # ---- helpers --------------------------------------------------------------------------
    def _nuts_sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One of Pyro's NUTS transitions (warmup); when warmup ends, take its tuning over (the recipe)."""
        step = self._nuts.sample(params)
        self._iteration += 1
        if self._iteration == self._warmup_steps:
            self._step_size = self.config.step_size_factor * self._nuts.step_size
            ((sites, inverse_mass_matrix),) = self._nuts.inverse_mass_matrix.items()
            self._layout = (tuple(sites), inverse_mass_matrix.detach())
            self._nuts.cleanup()
            self._nuts, self._state = None, None
        self.record_nuts(step)
        return step.z
