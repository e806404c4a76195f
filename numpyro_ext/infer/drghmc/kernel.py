"""DR-G-HMC as a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC``.

The shell around the pure core :mod:`numpyro_ext.infer.drghmc.core`.  Warmup follows the reference
code's tuning recipe (Turok, Modi & Carpenter 2025; see the core's docstring): NUTS transitions with
NumPyro's step-size and mass-matrix adaptation, after which the first-stage step size is
``step_size_factor`` times the adapted NUTS step size and the metric is NUTS's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState
from numpyro.infer.hmc_util import (
    build_tree,
    euclidean_kinetic_energy,
    find_reasonable_step_size,
    velocity_verlet,
    warmup_adapter,
)
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model

from adapters.configs import check_flag, check_initial_values, check_kernel_functions, check_model_or_potential
from adapters.validation import (
    check_greater,
    check_numeric,
    check_positive,
    check_positive_int,
    check_probability,
    check_unit_interval,
)
from numpyro_ext.infer.drghmc.core import DRGHMCState, build_kernel
from numpyro_ext.infer.hmc_util import sample_momentum
from numpyro_ext.infer.model_util import check_continuous_latents, trace_model

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


class _Transition(NamedTuple):
    position: Array
    momentum: Array
    potential_energy: Array
    potential_grad: Array
    energy: Array
    adapt_accept_prob: Array
    accept_prob: Array
    diverging: Array
    num_steps: Array
    num_grad_evals: Array
    stage: Array


class DRGHMC(MCMCKernel):
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

    The first sampling iteration refreshes the momentum fully (``N(0, M)`` of the adapted metric).

    Sample statistics (``MCMC.get_extra_fields()`` and ArviZ ``sample_stats``): ``accept_prob``
    (ArviZ ``acceptance_rate``), ``diverging``, ``stage``, ``num_steps`` (``n_steps``; ArviZ adds
    ``tree_depth`` from it), ``num_grad_evals``, ``energy``, ``potential_energy`` (``lp``, negated)
    and ``adapt_state.step_size`` (``step_size``, the first-stage step size while sampling).
    """

    sample_field = "z"

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
    ):
        from adapters.target import Target

        check_model_or_potential("DRGHMC", model, potential_fn)
        check_kernel_functions("DRGHMC", model, potential_fn, init_strategy)
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (d,) or (d, d)")
        self.step_size = check_positive("step_size", step_size)
        self.step_size_factor = check_positive("step_size_factor", step_size_factor)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.max_proposals = check_positive_int("max_proposals", max_proposals)
        self.reduction_factor = check_greater(
            "reduction_factor", reduction_factor, 1, "the step-size ratio between stages"
        )
        self.damping = check_unit_interval("damping", damping, include_zero=False, include_one=True)
        self.target_accept_prob = check_probability("target_accept_prob", target_accept_prob)
        for name, flag in [
            ("probabilistic", probabilistic),
            ("constant_trajectory", constant_trajectory),
            ("adapt_step_size", adapt_step_size),
            ("adapt_mass_matrix", adapt_mass_matrix),
            ("dense_mass", dense_mass),
        ]:
            setattr(self, name, check_flag(name, flag))
        self.max_delta_energy = check_positive("max_delta_energy", max_delta_energy)
        self.max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)

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
        self._step = build_kernel(
            self.max_proposals,
            self.reduction_factor,
            self.damping,
            self.probabilistic,
            self.constant_trajectory,
            self.max_delta_energy,
        )
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

    def get_diagnostics_str(self, state: DRGHMCKernelState) -> str:
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
        wa_init, self._wa_update = self._warmup_adapter(potential_fn)

        def init_one(z, key):
            key, wa_key, momentum_key = jax.random.split(key, 3)
            position = ravel_pytree(z)[0]
            potential_energy, potential_grad = jax.value_and_grad(potential_fn)(position)
            adapt_state = wa_init(
                NumPyroIntegratorState(position, None, potential_energy, potential_grad),
                wa_key,
                self.step_size,
                inverse_mass_matrix=self._inverse_mass_matrix,
                mass_matrix_size=self._dim,
            )
            zero, zero_int = jnp.zeros((), position.dtype), jnp.zeros((), jnp.int32)
            return DRGHMCKernelState(
                i=zero_int,
                z=z,
                z_grad=self._unravel(potential_grad),
                r=sample_momentum(momentum_key, adapt_state.inverse_mass_matrix, position),
                potential_energy=potential_energy,
                energy=potential_energy,
                num_steps=zero_int,
                accept_prob=zero,
                mean_accept_prob=zero,
                diverging=jnp.array(False),
                stage=jnp.array(-1, jnp.int32),
                num_grad_evals=zero_int,
                adapt_state=adapt_state,
                rng_key=key,
            )

        return jax.vmap(init_one)(init_params, rng_key) if batched else init_one(init_params, rng_key)

    def sample(self, state: DRGHMCKernelState, model_args, model_kwargs) -> DRGHMCKernelState:
        def transition(state, nuts_warmup):
            sample_one = functools.partial(self._sample_one, nuts_warmup=nuts_warmup)
            if self._vectorized:  # chain_method="vectorized": init got a batch of keys
                return jax.vmap(sample_one, in_axes=(0, None, None))(state, model_args, model_kwargs)
            return sample_one(state, model_args, model_kwargs)

        if self._num_warmup == 0:
            return transition(state, nuts_warmup=False)
        # NUTS or DR-G-HMC, chosen on the unbatched iteration counter (all chains share it): a
        # predicate batched by vmap would turn the cond into a select that runs both every time
        iteration = state.i[0] if self._vectorized else state.i
        return jax.lax.cond(
            iteration < self._num_warmup,
            lambda s: transition(s, nuts_warmup=True),
            lambda s: transition(s, nuts_warmup=False),
            state,
        )

    def _sample_one(self, state: DRGHMCKernelState, model_args, model_kwargs, nuts_warmup: bool):
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        potential_fn = self._make_potential_fn(model_args, model_kwargs)
        rng_key, transition_key = jax.random.split(state.rng_key)
        step_size = state.adapt_state.step_size
        inverse_mass_matrix = state.adapt_state.inverse_mass_matrix
        position = ravel_pytree(state.z)[0]
        potential_grad = ravel_pytree(state.z_grad)[0]
        args = (transition_key, position, state.potential_energy, potential_grad, step_size, inverse_mass_matrix)
        if nuts_warmup:
            new = self._nuts_transition(potential_fn, *args, state.r)
        else:
            # the first sampling iteration refreshes fully: the kept momentum was drawn for warmup's metric
            damping = jnp.where(state.i == self._num_warmup, 1.0, self.damping).astype(position.dtype)
            new = self._drghmc_transition(potential_fn, *args, state.r, damping)

        adapt_state = state.adapt_state
        if self._num_warmup > 0:
            in_warmup = state.i < self._num_warmup
            z_info = NumPyroIntegratorState(new.position, None, new.potential_energy, new.potential_grad)
            adapt_state = jax.lax.cond(
                in_warmup,
                lambda s: self._wa_update(state.i, new.adapt_accept_prob, z_info, s),
                lambda s: s,
                adapt_state,
            )
            # the recipe: the first stage steps step_size_factor x the step size NUTS adapted
            last = state.i == self._num_warmup - 1
            scale = jnp.where(last, self.step_size_factor, 1.0).astype(adapt_state.step_size.dtype)
            adapt_state = adapt_state._replace(step_size=adapt_state.step_size * scale)
        # the running mean restarts when sampling starts, as in NumPyro's HMC
        n = jnp.where(state.i < self._num_warmup, state.i, state.i - self._num_warmup) + 1
        mean_accept_prob = state.mean_accept_prob + (new.accept_prob - state.mean_accept_prob) / n
        return DRGHMCKernelState(
            i=state.i + 1,
            z=self._unravel(new.position),
            z_grad=self._unravel(new.potential_grad),
            r=new.momentum,
            potential_energy=new.potential_energy,
            energy=new.energy,
            num_steps=new.num_steps,
            accept_prob=new.accept_prob,
            mean_accept_prob=mean_accept_prob,
            diverging=new.diverging,
            stage=new.stage,
            num_grad_evals=new.num_grad_evals,
            adapt_state=adapt_state,
            rng_key=rng_key,
        )

    # ---- transitions ----------------------------------------------------------------
    def _drghmc_transition(
        self, potential_fn, key, position, potential_energy, potential_grad, step_size, inverse_mass_matrix, r, damping
    ):
        state = DRGHMCState(position, r, -potential_energy, -potential_grad)
        new_state, info = self._step(
            key, state, lambda x: -potential_fn(x), step_size, inverse_mass_matrix, self.num_steps, damping
        )
        return _Transition(
            position=new_state.position,
            momentum=new_state.momentum,
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
        self, potential_fn, key, position, potential_energy, potential_grad, step_size, inverse_mass_matrix, r
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
            max_delta_energy=self.max_delta_energy,
            max_tree_depth=self.max_tree_depth,
        )
        accept_prob = tree.sum_accept_probs / tree.num_proposals
        num_steps = jnp.asarray(tree.num_proposals, jnp.int32)
        return _Transition(
            position=tree.z_proposal,
            momentum=r,  # NUTS draws its own; the persistent one is refreshed fully after warmup
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

    # ---- set-up helpers (the same plumbing as DRHMC's, which keeps it private) ---------
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
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            dense_mass=self.dense_mass,
            target_accept_prob=self.target_accept_prob,
        )

    def _check_inverse_mass_matrix(self) -> None:
        if self._inverse_mass_matrix is None:
            return
        shape, d = jnp.shape(self._inverse_mass_matrix), self._dim
        if shape not in ((d,), (d, d)):
            raise ValueError(
                f"DRGHMC: inverse_mass_matrix must have shape ({d},) or ({d}, {d}) (the model's {d} unconstrained "
                f"dimensions), got shape {shape}"
            )

    def _bound_args(self, model_args, model_kwargs):
        if self._target_args is not None:
            if model_args or model_kwargs:
                raise ValueError("DRGHMC: the Target binds the model's arguments; call MCMC.run(rng_key) without them")
            return self._target_args
        return model_args, model_kwargs

    def _make_potential_fn(self, model_args, model_kwargs):
        if self._target is not None:
            logdensity = self._target.as_jax()
            return lambda x: -logdensity(x)
        unravel = self._unravel
        if self._potential_fn_gen is not None:
            potential = self._potential_fn_gen(*model_args, **model_kwargs)
            return lambda x: potential(unravel(x))
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
                raise ValueError("DRGHMC: with `potential_fn`, pass `init_params` to MCMC.run (one value per chain)")
            return init_params
        model_args, model_kwargs = self._bound_args(model_args, model_kwargs)
        check_continuous_latents(trace_model(self._model, model_args, model_kwargs, self._init_strategy), "DRGHMC")
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
