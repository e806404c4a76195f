"""DR-HMC's Pyro kernel: a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` around :mod:`pyro_ext.infer.drhmc.core`.

Built from Pyro's public pieces only: :func:`pyro.infer.mcmc.util.initialize_model` (potential
energy, transforms, initial parameters), :class:`pyro.infer.mcmc.adaptation.WarmupAdapter`
(dual averaging of the step size, Stan's windowed mass-matrix adaptation), the velocity-Verlet
integrator and ``potential_grad`` of :mod:`pyro.ops.integrator`, and, when warmup chooses the
trajectory length, an internal :class:`pyro.infer.NUTS` driven through its public methods
(:mod:`.warmup`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.ops.integrator import potential_grad

from adapters.configs import DRHMCConfig
from pyro_ext.infer.drhmc.core import DRHMCState, build_kernel
from pyro_ext.infer.drhmc.warmup import NUTSWarmup, find_reasonable_step_size, is_numerical_failure
from pyro_ext.infer.hmc_util import RecordingKernel, fixed_length_steps
from pyro_ext.infer.model_util import check_continuous, target_model  # DR-HMC's public names since it had them

__all__ = ["DRHMC", "check_continuous", "target_model"]


class DRHMC(RecordingKernel):
    r"""Delayed-rejection HMC (Modi, Barnett & Carpenter 2023) for :class:`pyro.infer.MCMC`.

    Each iteration draws one momentum and tries up to ``max_proposals`` leapfrog
    trajectories of the same length from the same start: stage ``k`` uses step size
    ``step_size * L / L_k`` and ``L_k = ceil(L * reduction_factor**k)`` steps, accepted with
    the delayed-rejection probability of :mod:`pyro_ext.infer.drhmc.core`. Later stages only
    run where the first one fails, i.e. in regions of high curvature, so a step size tuned
    for the bulk keeps working in a funnel's neck.

    A direct :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel`: Pyro's ``initialize_model``
    (transforms, initial parameters) and ``WarmupAdapter`` (dual averaging of the step size,
    windowed mass-matrix adaptation, Pyro's schedule and its step-size search at each window's
    end), as Pyro's ``HMC`` uses them. When the trajectory length is to be chosen, the warmup
    iterations are transitions of an internal :class:`pyro.infer.NUTS` (Pyro's own NUTS
    warmup, adapting its own step size and mass matrix), which this kernel takes over when
    warmup ends.

    Args:
        model: a Pyro model or an :class:`adapters.Target`. A Pyro Target is run natively
            (its bound arguments included; call ``MCMC.run()`` without arguments). A Target
            of another backend is sampled through ``Target.as_torch()`` as one unconstrained
            site ``"x"`` of length ``target.dim``; :meth:`constrain_samples` maps its draws
            to the model's named, constrained parameters with ``target.constrain``.
        potential_fn: instead of ``model``, a potential energy (negative log density) of a
            dict of unconstrained tensors; ``MCMC(..., initial_params=...)`` is then needed.
        step_size: first-stage step size ``eps`` (the start of adaptation when adapting).
        trajectory_length: ``T``, the integration time of every stage. With neither this nor ``num_steps``
            given (and ``warmup_steps > 0``), warmup runs Pyro's NUTS and sets the trajectory
            length to ``trajectory_scale`` times the mean NUTS integration time
            ``eps * n_leapfrog`` over the warmup iterations from the start of the last slow
            adaptation window on (Pyro's schedule); DR-HMC transitions start after warmup.
        num_steps: first-stage number of leapfrog steps ``L`` of ``eps`` (fixed; overrides
            ``trajectory_length``). Otherwise NumPyro's ``HMC`` rule: ``L = clip(ceil(T / eps), 1,
            2**max_tree_depth)`` steps of ``T / L <= eps``, so the trajectory is exactly ``T`` long.
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
        max_delta_energy: an energy error above this (or a non-finite one) marks a divergence
            of a DR-HMC transition (the NUTS warmup keeps Pyro's own threshold, 1000).
        max_tree_depth: tree-depth limit of the NUTS warmup; also caps ``L`` at ``2**max_tree_depth``.
        trajectory_scale: factor on the trajectory length warmup chooses (default 0.5: NUTS's
            mean integration time overshoots a static trajectory's need).
        jitter_trajectory: each iteration, scale every stage's length by one
            ``u ~ Uniform(0, 1]`` drawn independently of the state (Pyro's RNG).
        jit_compile: Pyro's ``jit_compile`` of the potential energy.
        local_step_size: ATLAS's local step size (Modi 2024) for the delayed stages: when the first
            trajectory is rejected, the next stage steps a size drawn (log-normal, log-sd ``log 1.2``)
            around ``0.5 / sqrt(lambda)``, ``lambda`` the largest curvature that trajectory met,
            capped at ``eps / 2``; each further stage ``reduction_factor`` times smaller, all
            integrating the first stage's time.  The draw's density enters the Hastings ratio (see
            :func:`pyro_ext.infer.drhmc.core.local_step_stages`); the same transition as the NumPyro
            kernel's given the same random numbers (``tests/test_parity_drhmc_local.py``).

    Per-iteration statistics, warmup included, are kept on the kernel in
    ``kernel.sample_stats`` (a list of dicts, one per iteration of the chain run last in this
    process); :meth:`get_sample_stats` returns them as numpy arrays of shape
    ``(warmup_steps + num_samples,)``:

    * ``accept_prob``: acceptance probability of the last stage tried (NaN on NUTS warmup
      iterations: Pyro's NUTS does not report its tree's);
    * ``diverging``: no stage accepted and the last one tried diverged (not tracked, ``False``,
      on NUTS warmup iterations);
    * ``stage``: accepted stage, -1 if none (always -1 on NUTS warmup iterations);
    * ``num_steps``: the chain's own leapfrog steps; ``num_grad_evals``: every gradient,
      ghost trajectories included (compare samplers by it);
    * ``energy``: Hamiltonian of the state moved to (NaN on NUTS warmup iterations, which
      Pyro does not report); ``potential_energy``; ``step_size``: the adapted first-stage step
      size ``eps`` (the integrator's is ``T / L <= eps``); ``warmup``: whether the iteration was a
      warmup iteration.

    ``kernel.diagnostics()`` (so ``mcmc.diagnostics()``) has Pyro's ``"divergences"`` and
    ``"acceptance rate"`` plus ``"sample_stats"``: the same arrays, which reach
    ``mcmc.diagnostics()["sample_stats"]["chain i"]`` for every chain, also when
    ``num_chains > 1`` runs chains in worker processes. ``adapters.inference_data.from_mcmc``
    adds the sampling-phase statistics to ArviZ's ``sample_stats`` (one chain) under the names
    ``az.from_numpyro`` gives the NumPyro kernel's: ``acceptance_rate``, ``diverging``, ``stage``,
    ``n_steps``, ``tree_depth`` (ArviZ's ``floor(log2(n_steps)) + 1``), ``num_grad_evals``,
    ``energy``, ``lp`` and ``step_size``.
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
        local_step_size: bool = False,
    ):
        self.set_model("DRHMC", model, potential_fn, init_strategy, jit_compile)
        self.config = cfg = DRHMCConfig.from_arguments(locals())  # checked, one message for both backends
        self._warmup_adapter = WarmupAdapter(
            cfg.step_size,
            adapt_step_size=cfg.adapt_step_size,
            target_accept_prob=cfg.target_accept_prob,
            adapt_mass_matrix=cfg.adapt_mass_matrix,
            dense_mass=cfg.dense_mass,
        )
        self.trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        self.reset_statistics()
        self._reset()

    is_failure = staticmethod(is_numerical_failure)

    def _reset(self) -> None:
        """Per-chain state, cleared by ``cleanup`` (as Pyro's ``HMC``); statistics and tuning stay."""
        self._iteration = 0
        self._initial_params = None
        self._state = None  # (z, potential energy, potential gradient) of the current draw
        self._nuts = None  # the NUTS warmup while it runs
        self._dr_step = None  # built in setup, so an un-set-up kernel pickles (spawned chains)

    # ---- Pyro MCMCKernel interface -----------------------------------------------------
    @property
    def step_size(self) -> float:
        """Current first-stage step size (the NUTS warmup's while it runs, else the adapter's)."""
        return self._nuts.step_size if self._nuts is not None else self._warmup_adapter.step_size

    @property
    def inverse_mass_matrix(self) -> dict[tuple[str, ...], torch.Tensor]:
        """Pyro's block inverse mass matrix ``{site names: (d,) or (d, d)}`` (one block; as :attr:`step_size`)."""
        return self.mass_matrix_adapter.inverse_mass_matrix

    @property
    def mass_matrix_adapter(self):
        """Pyro's :class:`~pyro.infer.mcmc.adaptation.BlockMassMatrix` in use (as :attr:`step_size`)."""
        return self._nuts.mass_matrix_adapter if self._nuts is not None else self._warmup_adapter.mass_matrix_adapter

    @property
    def adaptation_schedule(self) -> list:
        """The warmup adapter's windows (``start``, ``end``), Pyro's (Stan's) schedule."""
        return self._warmup_adapter.adaptation_schedule

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        z = self.start_chain(warmup_steps, args, kwargs)
        cfg = self.config
        self._dr_step = build_kernel(
            cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy, cfg.local_step_size
        )
        self.trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        if not z:  # no latent sites: nothing to adapt or move
            self._state = (z, self.potential_fn(z), {})
            return
        z_grads, potential_energy = potential_grad(self.potential_fn, z)
        self._state = (z, potential_energy, z_grads)
        # one block of all sites in sorted order, as Pyro's HMC lays out full_mass=True/False
        size = sum(value.numel() for value in z.values())
        mass_matrix_shape = OrderedDict([(tuple(sorted(z)), (size, size) if cfg.dense_mass else (size,))])
        options = {"dtype": potential_energy.dtype, "device": potential_energy.device}
        if cfg.choose_length and warmup_steps > 0:
            # Pyro's NUTS warms up (its own adapter) and chooses the length; this adapter only
            # lays out the schedule and takes the NUTS's tuning over when warmup ends
            self._warmup_adapter.configure(warmup_steps, mass_matrix_shape=mass_matrix_shape, options=options)
            self._nuts = NUTSWarmup(self.potential_fn, self._initial_params, warmup_steps, cfg)
        else:
            self._warmup_adapter.configure(
                warmup_steps,
                mass_matrix_shape=mass_matrix_shape,
                find_reasonable_step_size_fn=self._find_reasonable_step_size,
                options=options,
            )
            if self._warmup_adapter.adapt_step_size:
                self._warmup_adapter.reset_step_size_adaptation(self._initial_params)
        schedule = list(self._warmup_adapter.adaptation_schedule)
        self._length_window_start = schedule[-2].start if len(schedule) >= 2 else 0
        self._length_sum = 0.0
        self._length_count = 0

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._state is not None and len(self._state[0]) == 0:  # no latent sites: nothing to move
            return self.no_latent_sample(params)
        if self._nuts is not None:
            return self._nuts_sample(params)
        sites, inverse_mass_matrix = self._flat_layout()
        point = self.flat_point(params, sites)
        state = DRHMCState(point.position, point.logdensity, point.grad)
        step_size = float(self.step_size)  # the adapted eps, recorded; the integrator's may be smaller
        integrator_step_size, num_steps = self._iteration_steps()
        with pyro.validation_enabled(False):  # NaN and out-of-support values are expected on diverging trajectories
            new, info = self._dr_step(state, point.logdensity_fn, integrator_step_size, inverse_mass_matrix, num_steps)
        z_new = self.move_to(new, point)
        warmup = self._iteration < self._warmup_steps
        self.record_transition(new, info, step_size, warmup)
        self._iteration += 1
        if warmup:
            accept = torch.as_tensor(info.first_acceptance_rate, dtype=point.position.dtype)
            # t counts from 0, as the adapter documents and NumPyro's warmup_adapter runs (Pyro's HMC passes
            # t + 1): every window then ends on the same iteration as NumPyro's, the last included
            self._warmup_adapter.step(self._iteration - 1, z_new, accept, self._state[2])
        return dict(z_new)

    @property
    def num_steps(self) -> int:
        """First-stage number of leapfrog steps ``L`` at the current step size."""
        return self._first_stage_steps(1.0)[1]

    def _first_stage_steps(self, fraction: float) -> tuple[float, int]:
        """The first stage's ``(step size, L)`` for a ``fraction`` of the trajectory.

        ``num_steps`` given: ``L = ceil(fraction * num_steps)`` steps of ``eps``. Otherwise NumPyro's
        ``HMC`` rule (:func:`~pyro_ext.infer.hmc_util.fixed_length_steps`): ``L = ceil(T' / eps)``
        steps of ``T' / L`` with ``T' = fraction * T``, capped at ``2**max_tree_depth`` steps.
        """
        step_size = float(self.step_size)
        if self.config.num_steps is not None:
            return step_size, max(1, math.ceil(self.config.num_steps * fraction - 1e-6))
        return fixed_length_steps(step_size, fraction * self.trajectory_length, 2**self.config.max_tree_depth)

    def _iteration_steps(self) -> tuple[float, int]:
        """This iteration's ``(step size, L)``: of a ``u ~ Uniform(0, 1]`` fraction of the length when jittering."""
        if not self.config.jitter_trajectory:
            return self._first_stage_steps(1.0)
        return self._first_stage_steps(1.0 - torch.rand((), dtype=torch.float64).item())

    # ---- helpers --------------------------------------------------------------------------
    def _nuts_sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One of Pyro's NUTS transitions (warmup), recording its integration time."""
        t = self._iteration
        step = self._nuts.sample(params)
        if t >= self._length_window_start:
            self._length_sum += step.num_steps * step.step_size
            self._length_count += 1
        self._iteration += 1
        if self._iteration == self._warmup_steps:  # warmup ends: take over the NUTS's tuning and choose the length
            if self._length_count > 0:
                self.trajectory_length = self.config.length_scale * self._length_sum / self._length_count
            self._warmup_adapter.step_size = self._nuts.step_size
            self._warmup_adapter.mass_matrix_adapter.inverse_mass_matrix = dict(self._nuts.inverse_mass_matrix)
            self._nuts.cleanup()
            self._nuts, self._state = None, None
        self.record_nuts(step)
        return step.z

    def _find_reasonable_step_size(self, z: dict[str, torch.Tensor]) -> float:
        """The adapter's step-size search at a window's end: Pyro's HMC heuristic (see :mod:`.warmup`)."""
        return find_reasonable_step_size(
            self.potential_fn, self._warmup_adapter.mass_matrix_adapter, z, self.step_size, self._initial_params
        )

    def _flat_layout(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Site order of the flat vector and its inverse mass matrix, ``(d,)`` or ``(d, d)``."""
        ((sites, inverse_mass_matrix),) = self.inverse_mass_matrix.items()
        return sites, inverse_mass_matrix
