"""DR-HMC as a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC``.

The shell around the pure core :mod:`numpyro_ext.infer.drhmc.core`: NumPyro's step-size and
mass-matrix warmup and, when no trajectory length is given, a NUTS warmup that picks it
(Modi, Barnett & Carpenter 2023, Sec. 4); model plumbing from :mod:`numpyro_ext.infer.model_util`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState
from numpyro.infer.hmc_util import (
    build_adaptation_schedule,
    build_tree,
    euclidean_kinetic_energy,
    find_reasonable_step_size,
    velocity_verlet,
    warmup_adapter,
)
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model

from adapters.configs import DRHMCConfig, check_initial_values, check_kernel_functions, check_model_or_potential
from adapters.validation import check_numeric
from numpyro_ext.infer.drhmc.core import DRHMCState, build_kernel
from numpyro_ext.infer.hmc_util import fixed_length_steps, sample_momentum
from numpyro_ext.infer.model_util import check_continuous_latents, trace_model

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


class _Transition(NamedTuple):
    position: Array
    potential_energy: Array
    potential_grad: Array
    energy: Array
    adapt_accept_prob: Array
    accept_prob: Array
    diverging: Array
    num_steps: Array
    num_grad_evals: Array
    stage: Array


class DRHMC(MCMCKernel):
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

    Sample statistics (``MCMC.get_extra_fields()`` and ArviZ ``sample_stats``, the same names from
    ``az.from_numpyro`` and ``adapters.inference_data.from_mcmc``): ``accept_prob`` (ArviZ
    ``acceptance_rate``), ``diverging``, ``stage``, ``num_steps`` (``n_steps``; ArviZ adds
    ``tree_depth = floor(log2(n_steps)) + 1`` from it), ``num_grad_evals``, ``energy``,
    ``potential_energy`` (``lp``, negated) and ``adapt_state.step_size`` (``step_size``).
    """

    sample_field = "z"

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
    ):
        from adapters.target import Target

        check_model_or_potential("DRHMC", model, potential_fn)
        check_kernel_functions("DRHMC", model, potential_fn, init_strategy)
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (d,) or (d, d)")
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
        self._target = self._target_args = None
        if isinstance(model, Target):
            if model.backend == "numpyro":
                self._target_args = (model.model_args, model.model_kwargs)
                model = model.model
            else:
                self._target, model = model, None
        self._model = model
        self._potential_fn_input = potential_fn
        self._inverse_mass_matrix = inverse_mass_matrix
        self._init_strategy = init_strategy
        cfg = self.config
        self._dr_step = build_kernel(cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy)
        self._potential_fn_gen = None
        self._postprocess_fn = None
        self._unravel = None

    # ---- MCMCKernel interface ---------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def default_fields(self) -> tuple[str, ...]:
        return (
            "z",
            "diverging",
            "accept_prob",
            "stage",
            "num_steps",
            "num_grad_evals",
            "energy",
            "potential_energy",
            "adapt_state.step_size",
        )

    def get_diagnostics_str(self, state: DRHMCKernelState) -> str:
        return f"{int(state.num_grad_evals)} grads/it, acc. prob={float(state.mean_accept_prob):.2f}"

    def postprocess_fn(self, model_args, model_kwargs):
        if self._target is not None:
            return self._target_postprocess
        if self._postprocess_fn is None:
            return lambda z: z
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        return self._postprocess_fn(*model_args, **model_kwargs)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._num_warmup = int(num_warmup)
        batched = jnp.ndim(rng_key) > (0 if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else 1)
        self._vectorized = batched
        rng_key, init_key = jax.vmap(jax.random.split, out_axes=1)(rng_key) if batched else jax.random.split(rng_key)
        init_params = self._init_params(init_key, init_params, model_args, model_kwargs, batched)
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        prototype = jax.tree.map(lambda a: a[0], init_params) if batched else init_params
        flat, self._unravel = ravel_pytree(prototype)
        potential_fn = self._make_potential_fn(model_args, model_kwargs)
        self._dim = flat.shape[0]
        self._check_inverse_mass_matrix()
        self._length_window_start = self._length_window(self._num_warmup)
        wa_init, self._wa_update = self._warmup_adapter(potential_fn)

        def init_one(z, key):
            key, wa_key = jax.random.split(key)
            position = ravel_pytree(z)[0]
            potential_energy, potential_grad = jax.value_and_grad(potential_fn)(position)
            adapt_state = wa_init(
                NumPyroIntegratorState(position, None, potential_energy, potential_grad),
                wa_key,
                self.config.step_size,
                inverse_mass_matrix=self._inverse_mass_matrix,
                mass_matrix_size=self._dim,
            )
            trajectory_length = (
                self.config.trajectory_length if self.config.trajectory_length is not None else 2 * math.pi
            )
            zero = jnp.zeros((), position.dtype)
            zero_int = jnp.zeros((), jnp.int32)
            return DRHMCKernelState(
                i=zero_int,
                z=z,
                z_grad=self._unravel(potential_grad),
                potential_energy=potential_energy,
                energy=potential_energy,
                num_steps=zero_int,
                accept_prob=zero,
                mean_accept_prob=zero,
                diverging=jnp.array(False),
                stage=jnp.array(-1, jnp.int32),
                num_grad_evals=zero_int,
                trajectory_length=jnp.asarray(trajectory_length, position.dtype),
                length_sum=zero,
                length_count=zero,
                adapt_state=adapt_state,
                rng_key=key,
            )

        return jax.vmap(init_one)(init_params, rng_key) if batched else init_one(init_params, rng_key)

    def sample(self, state: DRHMCKernelState, model_args, model_kwargs) -> DRHMCKernelState:
        def transition(state, nuts_warmup):
            sample_one = functools.partial(self._sample_one, nuts_warmup=nuts_warmup)
            if self._vectorized:  # chain_method="vectorized": init got a batch of keys
                return jax.vmap(sample_one, in_axes=(0, None, None))(state, model_args, model_kwargs)
            return sample_one(state, model_args, model_kwargs)

        if not (self.config.choose_length and self._num_warmup > 0):
            return transition(state, nuts_warmup=False)
        # The NUTS-or-DR choice is made on the unbatched iteration counter (all chains share
        # it): a predicate batched by vmap would turn the cond into a select that builds a
        # NUTS tree at every sampling iteration.
        iteration = state.i[0] if self._vectorized else state.i
        return jax.lax.cond(
            iteration < self._num_warmup,
            lambda s: transition(s, nuts_warmup=True),
            lambda s: transition(s, nuts_warmup=False),
            state,
        )

    def _sample_one(self, state: DRHMCKernelState, model_args, model_kwargs, nuts_warmup: bool) -> DRHMCKernelState:
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        potential_fn = self._make_potential_fn(model_args, model_kwargs)
        rng_key, transition_key = jax.random.split(state.rng_key)
        step_size = state.adapt_state.step_size
        inverse_mass_matrix = state.adapt_state.inverse_mass_matrix
        position = ravel_pytree(state.z)[0]
        potential_grad = ravel_pytree(state.z_grad)[0]
        args = (
            transition_key,
            position,
            state.potential_energy,
            potential_grad,
            step_size,
            inverse_mass_matrix,
        )
        if nuts_warmup:
            new = self._nuts_transition(potential_fn, *args)
        else:
            new = self._dr_transition(potential_fn, *args, state.trajectory_length)

        adapt_state, trajectory_length = state.adapt_state, state.trajectory_length
        length_sum, length_count = state.length_sum, state.length_count
        if self._num_warmup > 0:
            in_warmup = state.i < self._num_warmup
            z_info = NumPyroIntegratorState(new.position, None, new.potential_energy, new.potential_grad)
            adapt_state = jax.lax.cond(
                in_warmup,
                lambda s: self._wa_update(state.i, new.adapt_accept_prob, z_info, s),
                lambda s: s,
                adapt_state,
            )
            if self.config.choose_length:
                counted = in_warmup & (state.i >= self._length_window_start)
                length_sum = length_sum + jnp.where(counted, new.num_steps * step_size, 0.0)
                length_count = length_count + counted
                trajectory_length = jnp.where(
                    state.i == self._num_warmup - 1,
                    self.config.length_scale * length_sum / jnp.maximum(length_count, 1.0),
                    trajectory_length,
                )
        # the running mean restarts when sampling starts, as in NumPyro's HMC
        n = jnp.where(state.i < self._num_warmup, state.i, state.i - self._num_warmup) + 1
        mean_accept_prob = state.mean_accept_prob + (new.accept_prob - state.mean_accept_prob) / n
        return DRHMCKernelState(
            i=state.i + 1,
            z=self._unravel(new.position),
            z_grad=self._unravel(new.potential_grad),
            potential_energy=new.potential_energy,
            energy=new.energy,
            num_steps=new.num_steps,
            accept_prob=new.accept_prob,
            mean_accept_prob=mean_accept_prob,
            diverging=new.diverging,
            stage=new.stage,
            num_grad_evals=new.num_grad_evals,
            trajectory_length=trajectory_length,
            length_sum=length_sum,
            length_count=length_count,
            adapt_state=adapt_state,
            rng_key=rng_key,
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
        return _Transition(
            position=new_state.position,
            potential_energy=-new_state.logdensity,
            potential_grad=-new_state.logdensity_grad,
            energy=info.energy,
            adapt_accept_prob=info.first_acceptance_rate,
            accept_prob=info.acceptance_rate,
            diverging=info.is_divergent,
            num_steps=info.num_integration_steps,
            num_grad_evals=info.num_grad_evals,
            stage=info.stage,
        )

    def _nuts_transition(
        self, potential_fn, key, position, potential_energy, potential_grad, step_size, inverse_mass_matrix
    ):
        momentum_key, tree_key = jax.random.split(key)
        momentum = sample_momentum(momentum_key, inverse_mass_matrix, position)
        _, vv_update = velocity_verlet(potential_fn, euclidean_kinetic_energy)
        start = NumPyroIntegratorState(position, momentum, potential_energy, potential_grad)
        tree = build_tree(
            vv_update,
            euclidean_kinetic_energy,
            start,
            inverse_mass_matrix,
            step_size,
            tree_key,
            max_delta_energy=self.config.max_delta_energy,
            max_tree_depth=self.config.max_tree_depth,
        )
        accept_prob = tree.sum_accept_probs / tree.num_proposals
        num_steps = jnp.asarray(tree.num_proposals, jnp.int32)
        return _Transition(
            position=tree.z_proposal,
            potential_energy=tree.z_proposal_pe,
            potential_grad=tree.z_proposal_grad,
            energy=tree.z_proposal_energy,
            adapt_accept_prob=accept_prob,
            accept_prob=accept_prob,
            diverging=tree.diverging,
            num_steps=num_steps,
            num_grad_evals=num_steps,
            stage=jnp.array(-1, jnp.int32),
        )

    # ---- set-up helpers -------------------------------------------------------------
    @staticmethod
    def _length_window(num_warmup: int) -> int:
        """First warmup iteration whose NUTS lengths set the trajectory length."""
        schedule = build_adaptation_schedule(num_warmup)
        return int(schedule[-2][0]) if len(schedule) >= 2 else 0

    def _warmup_adapter(self, potential_fn):
        def momentum_generator(position, inverse_mass_matrix, key):
            return sample_momentum(key, inverse_mass_matrix, position)

        def reasonable_step_size(step_size, inverse_mass_matrix, z_info, key):
            return find_reasonable_step_size(
                potential_fn, euclidean_kinetic_energy, momentum_generator, step_size, inverse_mass_matrix, z_info, key
            )

        return warmup_adapter(
            self._num_warmup,
            find_reasonable_step_size=reasonable_step_size,
            adapt_step_size=self.config.adapt_step_size,
            adapt_mass_matrix=self.config.adapt_mass_matrix,
            dense_mass=self.config.dense_mass,
            target_accept_prob=self.config.target_accept_prob,
        )

    def _check_inverse_mass_matrix(self) -> None:
        """The initial inverse mass matrix fits the unconstrained dimension ``d`` (known at ``init``)."""
        if self._inverse_mass_matrix is None:
            return
        shape, d = jnp.shape(self._inverse_mass_matrix), self._dim
        if shape not in ((d,), (d, d)):
            raise ValueError(
                f"DRHMC: inverse_mass_matrix must have shape ({d},) or ({d}, {d}) (the model's {d} unconstrained "
                f"dimensions), got shape {shape}"
            )

    def _bound_args(self, model_args, model_kwargs):
        if self._target_args is not None:
            if model_args or model_kwargs:
                raise ValueError("DRHMC: the Target binds the model's arguments; call MCMC.run(rng_key) without them")
            return self._target_args
        return model_args, model_kwargs

    def _make_potential_fn(self, model_args, model_kwargs):
        if self._target is not None:
            logdensity = self._target.as_jax()
            return lambda x: -logdensity(x)
        if self._potential_fn_gen is not None:
            unravel = self._unravel
            potential = self._potential_fn_gen(*model_args, **model_kwargs)
            return lambda x: potential(unravel(x))
        unravel = self._unravel
        return lambda x: self._potential_fn_input(unravel(x))

    def _init_params(self, key, init_params, model_args, model_kwargs, batched):
        if init_params is not None:
            check_initial_values("init_params", init_params)
        if self._target is not None:
            if init_params is not None:
                return init_params
            draw_seed = lambda k: jax.random.randint(k, (), 0, 2**31 - 1)  # noqa: E731
            seeds = jax.vmap(draw_seed)(key) if batched else draw_seed(key)
            dtype = jnp.result_type(float)
            if batched:
                return jnp.stack([jnp.asarray(self._target.initial_position(int(s)), dtype) for s in seeds])
            return jnp.asarray(self._target.initial_position(int(seeds)), dtype)
        if self._model is None:
            if init_params is None:
                raise ValueError("DRHMC: with `potential_fn`, pass `init_params` to MCMC.run (one value per chain)")
            return init_params
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        check_continuous_latents(trace_model(self._model, model_args, model_kwargs, self._init_strategy), "DRHMC")
        info = initialize_model(
            key,
            self._model,
            init_strategy=self._init_strategy,
            dynamic_args=True,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        self._potential_fn_gen = info.potential_fn
        self._postprocess_fn = info.postprocess_fn
        return info.param_info.z if init_params is None else init_params

    def _target_postprocess(self, x):
        target = self._target
        example = target.constrain(np.zeros(target.dim))
        shapes = {k: jax.ShapeDtypeStruct(x.shape[:-1] + np.shape(v), x.dtype) for k, v in example.items()}

        def constrain(x):
            return {k: np.asarray(v, dtype=x.dtype) for k, v in target.constrain(np.asarray(x)).items()}

        return jax.pure_callback(constrain, shapes, x, vmap_method="expand_dims")
