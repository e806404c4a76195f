"""DR-HMC's Pyro kernel: a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` around :mod:`pyro_ext.infer.drhmc.core`.

Built from Pyro's public pieces only: :func:`pyro.infer.mcmc.util.initialize_model` (potential
energy, transforms, initial parameters), :class:`pyro.infer.mcmc.adaptation.WarmupAdapter`
(dual averaging of the step size, Stan's windowed mass-matrix adaptation), the velocity-Verlet
integrator and ``potential_grad`` of :mod:`pyro.ops.integrator`, and, when warmup chooses the
trajectory length, an internal :class:`pyro.infer.NUTS` driven through its public methods
(:mod:`.warmup`).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

from adapters.configs import (
    DRHMCConfig,
    check_flag,
    check_initial_values,
    check_kernel_functions,
    check_model_or_potential,
)
from pyro_ext.infer.drhmc.core import DRHMCState, build_kernel
from pyro_ext.infer.drhmc.warmup import NUTSWarmup, find_reasonable_step_size, is_numerical_failure
from pyro_ext.infer.hmc_util import fixed_length_steps
from pyro_ext.infer.model_util import check_continuous_latents

__all__ = ["DRHMC", "check_continuous", "target_model"]


class _FlatReal(pyro.distributions.ImproperUniform):
    """The flat density on ``R^d`` of a Target's site ``"x"``; ``sample`` is ``U(-2, 2)^d``, only for
    Pyro's initialisation strategies (which draw a value to learn the shape), never a posterior draw."""

    def sample(self, sample_shape=()):
        return torch.rand(torch.Size(sample_shape) + self.batch_shape + self.event_shape) * 4.0 - 2.0


def target_model(target) -> Callable[[], None]:
    """A Pyro model of a Target of another backend: one unconstrained site ``"x"`` of length ``dim``."""
    logdensity = target.as_torch()

    def model() -> None:
        x = pyro.sample("x", _FlatReal(pyro.distributions.constraints.real_vector, (), (target.dim,)))
        pyro.factor("log_density", logdensity(x))

    model.__name__ = target.name
    return model


def check_continuous(algorithm: str, model: Callable, init_strategy: Callable, args: tuple, kwargs: dict) -> None:
    """Raise a ``ValueError`` naming ``model``'s discrete latent sites, if any
    (:func:`pyro_ext.infer.model_util.check_continuous_latents`).

    The trace is initialised like Pyro's HMC does (``init_strategy``, discrete sites drawn), so
    improper sites, which cannot be sampled, work; torch's random-number state is restored, so
    the check leaves the chain's draws alone.
    """
    from pyro.infer.autoguide.initialization import InitMessenger

    def init_fn(site):  # discrete sites get a draw, so they reach the trace and the message
        if site["fn"].support.is_discrete:
            return site["fn"].sample()
        return init_strategy(site)

    rng_state = pyro.util.get_rng_state()
    try:
        with pyro.poutine.block():
            trace = pyro.poutine.trace(InitMessenger(init_fn)(model)).get_trace(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng_state)
    check_continuous_latents(trace, algorithm)


class DRHMC(MCMCKernel):
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
    ):
        from adapters.target import Target

        check_model_or_potential("DRHMC", model, potential_fn)
        check_kernel_functions("DRHMC", model, potential_fn, init_strategy)
        check_flag("jit_compile", jit_compile)
        self.config = cfg = DRHMCConfig(
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
                self._target, model = model, target_model(model)
        self.model = model
        self.potential_fn = potential_fn
        self.transforms = None
        self._init_strategy = init_strategy
        self._jit_compile = jit_compile
        self._warmup_adapter = WarmupAdapter(
            cfg.step_size,
            adapt_step_size=cfg.adapt_step_size,
            target_accept_prob=cfg.target_accept_prob,
            adapt_mass_matrix=cfg.adapt_mass_matrix,
            dense_mass=cfg.dense_mass,
        )
        self.trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        self.sample_stats: list[dict[str, Any]] = []
        self._initial_params = None
        self._reset()

    def _reset(self) -> None:
        """Per-chain state, cleared by ``cleanup`` (as Pyro's ``HMC``); statistics and tuning stay."""
        self._iteration = 0
        self._warmup_steps = None
        self._num_accepted = 0
        self._running_accept_prob = 0.0
        self._divergent_draws: list[int] = []
        self._initial_params = None
        self._state = None  # (z, potential energy, potential gradient) of the current draw
        self._nuts = None  # the NUTS warmup while it runs
        self._dr_step = None  # built in setup, so an un-set-up kernel pickles (spawned chains)

    # ---- Pyro MCMCKernel interface -----------------------------------------------------
    @property
    def initial_params(self) -> dict[str, torch.Tensor] | None:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, torch.Tensor] | None) -> None:
        if params is not None:  # MCMC(..., initial_params=...) sets it: a string or an int tensor is named here
            check_initial_values("initial_params", params)
        self._initial_params = params

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
        self._warmup_steps = warmup_steps
        self._iteration, self._num_accepted, self._running_accept_prob, self._divergent_draws = 0, 0, 0.0, []
        self.sample_stats = []
        if self.model is not None:
            check_continuous("DRHMC", self.model, self._init_strategy, args, kwargs)
            params, self.potential_fn, self.transforms, _ = initialize_model(
                self.model,
                args,
                kwargs,
                transforms=self.transforms,
                jit_compile=self._jit_compile,
                init_strategy=self._init_strategy,
                initial_params=self._initial_params,
            )
            self._initial_params = params
        elif self._initial_params is None:
            raise ValueError("DRHMC: with `potential_fn`, pass `initial_params` to MCMC (one value per chain)")
        cfg = self.config
        self._dr_step = build_kernel(cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy)
        self.trajectory_length = cfg.trajectory_length if cfg.trajectory_length is not None else 2 * math.pi
        z = {k: v.detach() for k, v in self._initial_params.items()}
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
        if self._state is not None and len(self._state[0]) == 0:  # no latent sites: nothing to move (as Pyro's HMC)
            self._iteration += 1
            self._running_accept_prob = 1.0
            if self._iteration > self._warmup_steps:
                self._num_accepted += 1
            return params
        if self._nuts is not None:
            return self._nuts_sample(params)
        if self._state is None:
            z = {k: v.detach() for k, v in params.items()}
            z_grads, potential_energy = potential_grad(self.potential_fn, z)
        else:
            z, potential_energy, z_grads = self._state
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
                if is_numerical_failure(e):
                    return x.new_tensor(math.nan)
                raise

        position = torch.cat([z[name].detach().reshape(-1) for name in sites])
        grad = -torch.cat([z_grads[name].detach().reshape(-1) for name in sites])
        logdensity_start = -float(potential_energy)
        state = DRHMCState(position, logdensity_start if math.isfinite(logdensity_start) else -math.inf, grad)
        step_size = float(self.step_size)  # the adapted eps, recorded; the integrator's may be smaller
        integrator_step_size, num_steps = self._iteration_steps()
        with pyro.validation_enabled(False):  # NaN and out-of-support values are expected on diverging trajectories
            new, info = self._dr_step(state, logdensity, integrator_step_size, inverse_mass_matrix, num_steps)
        z_new = unflatten(new.position)
        z_grads_new = unflatten(-new.logdensity_grad)
        potential_new = torch.as_tensor(-new.logdensity, dtype=position.dtype, device=position.device)
        self._state = (z_new, potential_new, z_grads_new)

        warmup = self._iteration < self._warmup_steps
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
        self._iteration += 1
        if warmup:
            n = self._iteration
            accept = torch.as_tensor(info.first_acceptance_rate, dtype=position.dtype)
            # t counts from 0, as the adapter documents and NumPyro's warmup_adapter runs (Pyro's HMC passes
            # t + 1): every window then ends on the same iteration as NumPyro's, the last included
            self._warmup_adapter.step(self._iteration - 1, z_new, accept, z_grads_new)
        else:
            n = self._iteration - self._warmup_steps
            self._num_accepted += int(info.is_accepted)
            if info.is_divergent:
                self._divergent_draws.append(self._iteration - 1 - self._warmup_steps)
        self._running_accept_prob += (info.acceptance_rate - self._running_accept_prob) / n
        return dict(z_new)

    def cleanup(self) -> None:
        if self._nuts is not None:
            self._nuts.cleanup()
        self._reset()

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

    def logging(self) -> dict[str, str]:
        if self._nuts is not None:
            out = self._nuts.logging()
        else:
            accept = f"{self._running_accept_prob:.3f}"
            out = OrderedDict([("step size", f"{self.step_size:.2e}"), ("acc. prob", accept)])
        if self.sample_stats:
            out["grads/it"] = str(self.sample_stats[-1]["num_grad_evals"])
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Pyro's ``divergences`` and ``acceptance rate``, plus ``sample_stats`` (see the class docstring)."""
        return {
            "divergences": self._divergent_draws,
            "acceptance rate": self._num_accepted / (self._iteration - self._warmup_steps),
            "sample_stats": self.get_sample_stats(),
        }

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
        self._record(
            accept_prob=math.nan,
            diverging=False,
            stage=-1,
            num_steps=step.num_steps,
            num_grad_evals=step.num_steps,
            energy=math.nan,
            potential_energy=step.potential_energy,
            step_size=step.step_size,
            warmup=True,
        )
        return step.z

    def _find_reasonable_step_size(self, z: dict[str, torch.Tensor]) -> float:
        """The adapter's step-size search at a window's end: Pyro's HMC heuristic (see :mod:`.warmup`)."""
        return find_reasonable_step_size(
            self.potential_fn, self._warmup_adapter.mass_matrix_adapter, z, self.step_size, self._initial_params
        )

    def _record(self, **row: Any) -> None:
        types = dict(diverging=bool, stage=int, num_steps=int, num_grad_evals=int, warmup=bool)
        self.sample_stats.append({key: types.get(key, float)(value) for key, value in row.items()})

    def _flat_layout(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Site order of the flat vector and its inverse mass matrix, ``(d,)`` or ``(d, d)``."""
        ((sites, inverse_mass_matrix),) = self.inverse_mass_matrix.items()
        return sites, inverse_mass_matrix
