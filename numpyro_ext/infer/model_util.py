"""Model plumbing in NumPyro: a model to a flat unconstrained log density, with the prior/likelihood split.

Written once for the NumPyro-side algorithms (:class:`numpyro_ext.infer.DRHMC`,
:class:`numpyro_ext.infer.AIS`, ...); the torch twin is :mod:`pyro_ext.infer.model_util`.
:class:`KernelModel` is the MCMC kernels' view of what they sample (a model, a Target or a potential), and
:class:`WarmupKernel` their common NumPyro shell.

A model's latent sites, mapped to the unconstrained space by NumPyro's biject-to transforms and
raveled into one vector ``x`` ``(d,)`` (sites in sorted order), have the log density::

    log p(x, y) = log p(x) + log L(x),      log p(x) = sum_latent log p(z | parents) + log |J|,

where ``log p(x)`` (the *prior*, Jacobians of the transforms included) comes from the model with
its observed sites hidden, and ``log L(x)`` (the *likelihood*: observed sites and
``numpyro.factor``) is the rest.  AIS anneals along ``log p(x) + beta log L(x)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel

from adapters.configs import check_initial_values, check_kernel_functions, check_model_or_potential
from adapters.mi import check_joint_sites
from adapters.validation import check_numeric, check_site_distribution
from numpyro_ext.infer.hmc_util import (
    KernelTransition,
    check_inverse_mass_matrix,
    is_batched_key,
    mean_accept_prob,
    nuts_warmup_adapter,
    warmup_or_sample,
)

__all__ = [
    "FlatModel",
    "JointModel",
    "KernelModel",
    "WarmupKernel",
    "check_continuous_latents",
    "check_latent_samples",
    "discrete_latent_sites",
    "flat_model",
    "joint_model",
    "trace_model",
    "validate_model",
]

Array = jax.Array


def trace_model(model: Callable, model_args: tuple, model_kwargs: dict, init_strategy: Callable | None = None):
    """The trace of one run of ``model`` seeded with 0, its latent values from ``init_strategy`` when given."""
    from numpyro import handlers

    seeded = handlers.seed(model, 0)
    if init_strategy is not None:
        seeded = handlers.substitute(seeded, substitute_fn=init_strategy)
    return handlers.trace(seeded).get_trace(*model_args, **model_kwargs)


def discrete_latent_sites(trace: Mapping[str, dict]) -> list[str]:
    """Names of the unobserved sample sites of ``trace`` whose support is discrete, in trace order."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
    ]


def check_continuous_latents(trace: Mapping[str, dict], algorithm: str) -> None:
    """Raise a ``ValueError`` naming the discrete latent sites of ``trace`` (gradient-based
    ``algorithm`` s such as HMC and AIS need every latent site continuous)."""
    discrete = discrete_latent_sites(trace)
    if discrete:
        raise ValueError(
            f"model: {algorithm} needs continuous latent sites, but {discrete} are discrete; "
            "marginalise them out (e.g. with logsumexp over their values) or observe them"
        )


class FlatModel(NamedTuple):
    """A model as functions of its flat unconstrained latent vector ``x`` ``(d,)``.

    ``latent`` (sorted) and ``observed`` site names; ``unravel(x) -> {site: unconstrained}``;
    ``log_joint``, ``log_prior`` (observed sites hidden; Jacobians included) and
    ``log_likelihood = log_joint - log_prior``, each ``x -> scalar``; ``sample_prior(rng_key) -> x``
    (a prior draw, unconstrained); ``constrain(x) -> {site: value}`` (deterministic sites
    included) and ``unconstrain({latent site: constrained value}) -> x``.
    """

    latent: list[str]
    observed: list[str]
    unravel: Callable[[Array], dict]
    log_joint: Callable[[Array], Array]
    log_prior: Callable[[Array], Array]
    log_likelihood: Callable[[Array], Array]
    sample_prior: Callable[[Array], Array]
    constrain: Callable[[Array], dict]
    unconstrain: Callable[[Mapping[str, Any]], Array]


def flat_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str) -> FlatModel:
    """:class:`FlatModel` of ``model`` at these arguments, after checking that its latent sites
    are continuous (:func:`check_continuous_latents`) and that it has at least one (errors name ``algorithm``)."""
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    trace = trace_model(model, model_args, model_kwargs)
    sample_sites = {name: site for name, site in trace.items() if site["type"] == "sample"}
    latent = sorted(name for name, site in sample_sites.items() if not site["is_observed"])
    observed = [name for name, site in sample_sites.items() if site["is_observed"]]
    check_continuous_latents({name: sample_sites[name] for name in latent}, algorithm)
    if not latent:
        raise ValueError(f"model: {algorithm} needs at least one latent sample site, the model has none")
    prototype = unconstrain_fn(model, model_args, model_kwargs, {k: trace[k]["value"] for k in latent})
    _, unravel = ravel_pytree(prototype)
    # The prior: the model with its observed sites (and factors) hidden, so its potential is
    # -sum log p(latent | parents) minus the Jacobians of the unconstraining transforms.
    prior_model = handlers.block(model, hide=observed)

    def log_joint(x):
        return -potential_energy(model, model_args, model_kwargs, unravel(x))

    def log_prior(x):
        return -potential_energy(prior_model, model_args, model_kwargs, unravel(x))

    def log_likelihood(x):
        return log_joint(x) - log_prior(x)

    def unconstrain(values):
        return ravel_pytree(unconstrain_fn(model, model_args, model_kwargs, values))[0]

    def sample_prior(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        return unconstrain({k: tr[k]["value"] for k in latent})

    def constrain(x):
        return constrain_fn(model, model_args, model_kwargs, unravel(x), return_deterministic=True)

    return FlatModel(
        latent, observed, unravel, log_joint, log_prior, log_likelihood, sample_prior, constrain, unconstrain
    )


def check_latent_samples(samples: Any, latent: list[str], name: str = "posterior_samples") -> dict[str, Array]:
    """``samples`` as a dict of arrays of the ``latent`` sites; the error names what is missing."""
    if not isinstance(samples, Mapping):
        raise ValueError(f"{name} must be a dict of constrained latent sites {latent}, got {type(samples).__name__}")
    missing = [k for k in latent if k not in samples]
    if missing:
        raise ValueError(f"{name} is missing the latent sites {missing} (expected {latent})")
    return {k: jnp.asarray(samples[k]) for k in latent}


# ---------------------------------------------------------------------------------------
# Validation at the door (once, on concrete arguments, outside jit)
# ---------------------------------------------------------------------------------------
def _check_site(name: str, site: dict, algorithm: str) -> None:
    """NumPyro's ``Distribution.validate_args`` on one sample site, through the backend-free
    :func:`adapters.validation.check_site_distribution` (the Pyro twin's words)."""
    from numpyro.distributions import constraints
    from numpyro.distributions.util import lazy_property

    check_site_distribution(
        algorithm,
        name,
        site["fn"],
        site["value"],
        site["is_observed"],
        holds=lambda constraint, x: np.asarray(constraint(x)),
        is_dependent=constraints.is_dependent,
        derived_type=lazy_property,
    )


def validate_model(model: Callable, model_args: tuple, model_kwargs: dict, algorithm: str) -> dict:
    """Run ``model`` once (seed 0) and check every sample site's distribution parameters against their
    constraints, and every observed value against its support; return the trace.

    NumPyro's ``MCMC`` refuses such a model at initialisation (``validate_args``: "Normal distribution
    got invalid scale parameter"); an algorithm that evaluates the density inside ``jit``, where
    validation is skipped, sees NaN or ``-inf`` instead and runs on.  Call this on concrete
    arguments before jitting; the checks are the same as :func:`pyro_ext.infer.model_util.validate_model`'s.
    """
    import numpyro

    with numpyro.validation_enabled(False):  # our own checks, so both backends word the error alike
        trace = trace_model(model, model_args, model_kwargs)
    for name, site in trace.items():
        if site["type"] == "sample":
            _check_site(name, site, algorithm)
    return trace


# ---------------------------------------------------------------------------------------
# A joint p(z) p(x | z) as the three functions of the MI bounds
# ---------------------------------------------------------------------------------------
class JointModel(NamedTuple):
    """A model's joint ``p(z) p(x | z)`` as functions of one flat sample, for :mod:`numpyro_ext.infer.ais_mi`.

    ``z`` ``(dz,)`` is the ``latent`` sites' values in the unconstrained space (sites in the
    given order, each raveled; ``I(x; z)`` does not change under a bijection of ``z``), ``x``
    ``(dx,)`` the ``observed`` sites' values raveled.  ``sample_joint(rng_key, n) -> (x (n, dx),
    z (n, dz))``; ``log_prior(z)`` is ``sum_latent log p(z_s | parents)`` plus the transforms'
    log-Jacobians; ``log_likelihood(x, z) = sum_observed log p(x_s | parents)``.
    """

    latent: list[str]
    observed: list[str]
    sample_joint: Callable[[Array, int], tuple[Array, Array]]
    log_prior: Callable[[Array], Array]
    log_likelihood: Callable[[Array, Array], Array]


def joint_model(
    model: Callable,
    latent: Any,
    observed: Any,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    algorithm: str = "the MI bound",
) -> JointModel:
    """:class:`JointModel` of ``model`` run with ``model_args``/``model_kwargs`` (the observed sites
    left without data, so the model samples them), after :func:`validate_model`.

    The latent sites must not depend on the observed ones (``p(z)`` is annealed from, so it must be
    normalised on its own): checked by evaluating ``log_prior`` next to two different ``x``.
    """
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    model_args = tuple(model_args)
    trace = validate_model(model, model_args, model_kwargs, algorithm)
    sites = {name: site["is_observed"] for name, site in trace.items() if site["type"] == "sample"}
    latent, observed = check_joint_sites(sites, latent, observed, algorithm)
    check_continuous_latents({name: trace[name] for name in latent}, algorithm)
    transforms = {name: biject_to(trace[name]["fn"].support) for name in latent}
    shapes = {name: jnp.shape(trace[name]["value"]) for name in latent + observed}
    free_shapes = {name: transforms[name].inverse_shape(shapes[name]) for name in latent}
    z_sizes = [int(np.prod(free_shapes[name])) for name in latent]
    x_sizes = [int(np.prod(shapes[name])) for name in observed]

    def flat(tr):
        z = jnp.concatenate([jnp.ravel(transforms[n].inv(tr[n]["value"])) for n in latent])
        x = jnp.concatenate([jnp.ravel(tr[n]["value"]).astype(z.dtype) for n in observed])
        return x, z

    def sample_joint(rng_key, n):
        def one(key):
            return flat(handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs))

        return jax.vmap(one)(jax.random.split(rng_key, n))

    def split(v, names, sizes, shape_of):
        parts = jnp.split(v, np.cumsum(sizes)[:-1])
        return {n: p.reshape(shape_of[n]) for n, p in zip(names, parts, strict=True)}

    def parts(x, z):
        free = split(z, latent, z_sizes, free_shapes)
        values = {n: transforms[n](u) for n, u in free.items()}
        data = split(x, observed, x_sizes, shapes)
        tr = handlers.trace(handlers.condition(model, {**values, **data})).get_trace(*model_args, **model_kwargs)

        def total(names):
            terms = []
            for n in names:
                log_p = jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"]))
                terms.append(log_p if tr[n].get("scale") is None else tr[n]["scale"] * log_p)
            return sum(terms)

        log_jacobian = sum(jnp.sum(transforms[n].log_abs_det_jacobian(free[n], values[n])) for n in latent)
        return total(latent) + log_jacobian, total(observed)

    x_ref, z_ref = flat(trace)

    def log_prior(z):
        return parts(x_ref.astype(z.dtype), z)[0]

    def log_likelihood(x, z):
        return parts(x, z)[1]

    @jax.jit  # the prior next to another x (shifted by one); one compiled check, not eager op-by-op dispatch
    def prior_next_to(x, z):
        return log_prior(z), parts(x.astype(z.dtype) + 1.0, z)[0]

    if not np.allclose(*(np.asarray(v) for v in prior_next_to(x_ref, z_ref)), equal_nan=True):
        raise ValueError(
            f"model: the latent sites {latent} depend on the observed sites {observed}; {algorithm} anneals from "
            "p(z), so the latent sites must come first and not depend on x"
        )
    return JointModel(latent, observed, sample_joint, log_prior, log_likelihood)


# ---------------------------------------------------------------------------------------
# What an MCMC kernel samples: a model, a Target or a potential, as a flat potential
# ---------------------------------------------------------------------------------------
class KernelModel:
    """The density an MCMC kernel samples, as a potential energy of one flat unconstrained vector ``x`` ``(d,)``.

    Shared by the NumPyro kernels (:class:`numpyro_ext.infer.DRHMC`, :class:`numpyro_ext.infer.drghmc.DRGHMC`),
    which take ``model=None, potential_fn=None`` like NumPyro's ``HMC``:

    * a NumPyro model: NumPyro's ``initialize_model`` (potential energy of the unconstrained sites,
      initial values from ``init_strategy``, ``postprocess_fn`` back to the constrained sites), after
      :func:`check_continuous_latents`;
    * an :class:`adapters.Target` of NumPyro: its model, run natively with the Target's bound arguments
      (``MCMC.run(rng_key)`` then takes none);
    * a Target of another backend: ``-Target.as_jax()`` on ``R^d``, initial positions from
      ``Target.initial_position`` and draws constrained with ``Target.constrain`` (a host callback);
    * ``potential_fn``: a potential of the unconstrained sites (any pytree), with ``init_params`` from
      ``MCMC.run``.

    ``algorithm`` names the kernel in error messages.  :meth:`prepare` (in the kernel's ``init``) fixes the
    layout: ``unravel`` maps a flat ``x`` back to the sites' pytree.
    """

    def __init__(self, algorithm: str, model: Any, potential_fn: Callable | None, init_strategy: Callable):
        from adapters.target import Target

        self.algorithm = algorithm
        self.target = self.target_args = None
        if isinstance(model, Target):
            if model.backend == "numpyro":
                self.target_args = (model.model_args, model.model_kwargs)
                model = model.model
            else:
                self.target, model = model, None
        self.model = model
        self.potential_fn_input = potential_fn
        self.init_strategy = init_strategy
        self.potential_fn_gen = None
        self.postprocess_fn_gen = None
        self.unravel = None

    def bound_args(self, model_args: tuple, model_kwargs: dict) -> tuple[tuple, dict]:
        """The model's arguments: a NumPyro Target's own, else those ``MCMC.run`` passed."""
        if self.target_args is not None:
            if model_args or model_kwargs:
                raise ValueError(
                    f"{self.algorithm}: the Target binds the model's arguments; call MCMC.run(rng_key) without them"
                )
            return self.target_args
        return model_args, model_kwargs

    def potential_fn(self, model_args: tuple, model_kwargs: dict) -> Callable[[Array], Array]:
        """The potential energy (negative log density) of a flat ``x`` ``(d,)``, at these (bound) arguments."""
        if self.target is not None:
            logdensity = self.target.as_jax()
            return lambda x: -logdensity(x)
        unravel = self.unravel
        if self.potential_fn_gen is not None:
            potential = self.potential_fn_gen(*model_args, **model_kwargs)
            return lambda x: potential(unravel(x))
        return lambda x: self.potential_fn_input(unravel(x))

    def postprocess_fn(self, model_args: tuple, model_kwargs: dict) -> Callable:
        """The map from the unconstrained sites to the constrained ones (``MCMCKernel.postprocess_fn``)."""
        if self.target is not None:
            return self.target_postprocess
        if self.postprocess_fn_gen is None:
            return lambda z: z
        model_args, model_kwargs = self.bound_args(model_args, model_kwargs)
        return self.postprocess_fn_gen(*model_args, **model_kwargs)

    def init_params(self, key: Array, init_params: Any, model_args: tuple, model_kwargs: dict, batched: bool) -> Any:
        """The chains' unconstrained starts: ``init_params`` when given (checked), else drawn from ``key``
        (a batch of keys when ``batched``: one start each)."""
        from numpyro.infer.util import initialize_model

        if init_params is not None:
            check_initial_values("init_params", init_params)
        if self.target is not None:
            if init_params is not None:
                return init_params
            draw_seed = lambda k: jax.random.randint(k, (), 0, 2**31 - 1)  # noqa: E731
            seeds = jax.vmap(draw_seed)(key) if batched else draw_seed(key)
            dtype = jnp.result_type(float)
            if batched:
                return jnp.stack([jnp.asarray(self.target.initial_position(int(s)), dtype) for s in seeds])
            return jnp.asarray(self.target.initial_position(int(seeds)), dtype)
        if self.model is None:
            if init_params is None:
                raise ValueError(
                    f"{self.algorithm}: with `potential_fn`, pass `init_params` to MCMC.run (one value per chain)"
                )
            return init_params
        model_args, model_kwargs = self.bound_args(model_args, model_kwargs)
        check_continuous_latents(trace_model(self.model, model_args, model_kwargs, self.init_strategy), self.algorithm)
        info = initialize_model(
            key,
            self.model,
            init_strategy=self.init_strategy,
            dynamic_args=True,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        self.potential_fn_gen = info.potential_fn
        self.postprocess_fn_gen = info.postprocess_fn
        return info.param_info.z if init_params is None else init_params

    def prepare(
        self, key: Array, init_params: Any, model_args: tuple, model_kwargs: dict, batched: bool
    ) -> tuple[Any, Callable[[Array], Array], int]:
        """``(init_params, potential_fn, d)`` for a kernel's ``init``: the starts (:meth:`init_params`), the
        flat potential at the bound arguments and the unconstrained dimension; sets :attr:`unravel`."""
        init_params = self.init_params(key, init_params, model_args, model_kwargs, batched)
        model_args, model_kwargs = self.bound_args(model_args, model_kwargs)
        prototype = jax.tree.map(lambda a: a[0], init_params) if batched else init_params
        flat, self.unravel = ravel_pytree(prototype)
        return init_params, self.potential_fn(model_args, model_kwargs), flat.shape[0]

    def target_postprocess(self, x: Array) -> dict[str, Array]:
        """A non-NumPyro Target's draws ``(..., d)`` constrained by ``Target.constrain`` (a host callback)."""
        target = self.target
        example = target.constrain(np.zeros(target.dim))
        shapes = {k: jax.ShapeDtypeStruct(x.shape[:-1] + np.shape(v), x.dtype) for k, v in example.items()}

        def constrain(x):
            return {k: np.asarray(v, dtype=x.dtype) for k, v in target.constrain(np.asarray(x)).items()}

        return jax.pure_callback(constrain, shapes, x, vmap_method="expand_dims")


class WarmupKernel(MCMCKernel):
    """Base of the NumPyro MCMC kernels on a flat potential with NumPyro's warmup (DR-HMC, DR-G-HMC).

    It holds what such a kernel shares with its twins: the model plumbing (:class:`KernelModel`, built
    from ``model`` or ``potential_fn`` after the constructor checks), NumPyro's ``HMCState`` field names
    for ``MCMC`` and ArviZ, and the ``init``/``sample`` skeleton: ``init`` prepares the potential and
    the warmup adapter (:func:`nuts_warmup_adapter` with :meth:`adaptation_settings`) and maps
    ``init_one(z, rng_key, potential_fn, adapter_init)`` over the chains; ``sample`` runs
    ``_sample_one(state, model_args, model_kwargs, nuts_warmup)`` through :func:`warmup_or_sample`
    (NUTS transitions during warmup when :attr:`nuts_warmup`).  A subclass's state has NumPyro's
    ``HMCState`` names plus ``i``, ``mean_accept_prob``, ``num_grad_evals``, ``stage``.
    """

    sample_field = "z"
    nuts_warmup = True

    def __init__(self, algorithm: str, model, potential_fn, init_strategy, inverse_mass_matrix):
        check_model_or_potential(algorithm, model, potential_fn)
        check_kernel_functions(algorithm, model, potential_fn, init_strategy)
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (d,) or (d, d)")
        self.algorithm = algorithm
        self.source = KernelModel(algorithm, model, potential_fn, init_strategy)
        self._inverse_mass_matrix = inverse_mass_matrix

    @abstractmethod
    def adaptation_settings(self) -> tuple[bool, bool, bool, float]:
        """``(adapt_step_size, adapt_mass_matrix, dense_mass, target_accept_prob)`` of the warmup."""

    @property
    def model(self):
        return self.source.model

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

    def get_diagnostics_str(self, state) -> str:
        return f"{int(state.num_grad_evals)} grads/it, acc. prob={float(state.mean_accept_prob):.2f}"

    def postprocess_fn(self, model_args, model_kwargs):
        return self.source.postprocess_fn(model_args, model_kwargs)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._num_warmup = int(num_warmup)
        batched = self._vectorized = is_batched_key(rng_key)
        rng_key, init_key = jax.vmap(jax.random.split, out_axes=1)(rng_key) if batched else jax.random.split(rng_key)
        init_params, potential_fn, self._dim = self.source.prepare(
            init_key, init_params, model_args, model_kwargs, batched
        )
        check_inverse_mass_matrix(self.algorithm, self._inverse_mass_matrix, self._dim)
        adapter_init, self._wa_update = nuts_warmup_adapter(potential_fn, self._num_warmup, *self.adaptation_settings())

        def init_one(z, key):
            return self._init_one(z, key, potential_fn, adapter_init)

        return jax.vmap(init_one)(init_params, rng_key) if batched else init_one(init_params, rng_key)

    @abstractmethod
    def _init_one(self, z, rng_key, potential_fn, adapter_init):
        """One chain's first state at ``z`` (the subclass's state type)."""

    def sample(self, state, model_args, model_kwargs):
        return warmup_or_sample(
            self._sample_one, state, model_args, model_kwargs, self._vectorized, self._num_warmup, self.nuts_warmup
        )

    @abstractmethod
    def _sample_one(self, state, model_args, model_kwargs, nuts_warmup: bool):
        """One chain's transition: NUTS during warmup (``nuts_warmup``), the subclass's kernel after."""

    def initial_fields(self, z, potential_energy: Array, potential_grad: Array, adapt_state, rng_key: Array) -> dict:
        """The fields every subclass's state starts with at ``z`` (no transition yet: stage -1, zero counts)."""
        zero, zero_int = jnp.zeros((), potential_energy.dtype), jnp.zeros((), jnp.int32)
        return dict(
            i=zero_int,
            z=z,
            z_grad=self.source.unravel(potential_grad),
            potential_energy=potential_energy,
            energy=potential_energy,
            num_steps=zero_int,
            accept_prob=zero,
            mean_accept_prob=zero,
            diverging=jnp.array(False),
            stage=jnp.array(-1, jnp.int32),
            num_grad_evals=zero_int,
            adapt_state=adapt_state,
            rng_key=rng_key,
        )

    def next_fields(self, state, new: KernelTransition, adapt_state, rng_key: Array) -> dict:
        """The fields every subclass's state has after transition ``new`` from ``state``."""
        unravel = self.source.unravel
        return dict(
            i=state.i + 1,
            z=unravel(new.position),
            z_grad=unravel(new.potential_grad),
            potential_energy=new.potential_energy,
            energy=new.energy,
            num_steps=new.num_steps,
            accept_prob=new.accept_prob,
            mean_accept_prob=mean_accept_prob(state.i, self._num_warmup, state.mean_accept_prob, new.accept_prob),
            diverging=new.diverging,
            stage=new.stage,
            num_grad_evals=new.num_grad_evals,
            adapt_state=adapt_state,
            rng_key=rng_key,
        )

    def transition_inputs(self, state, model_args, model_kwargs) -> tuple[Callable, Array, tuple]:
        """``(potential_fn, next rng_key, (key, position, potential energy, its gradient, step size,
        inverse mass matrix))`` of one chain's ``state``: what :func:`nuts_transition` and a kernel's
        own transition start from."""
        potential_fn = self.source.potential_fn(*self.source.bound_args(model_args, model_kwargs))
        rng_key, transition_key = jax.random.split(state.rng_key)
        position = ravel_pytree(state.z)[0]
        potential_grad = ravel_pytree(state.z_grad)[0]
        adapt_state = state.adapt_state
        args = (
            transition_key,
            position,
            state.potential_energy,
            potential_grad,
            adapt_state.step_size,
            adapt_state.inverse_mass_matrix,
        )
        return potential_fn, rng_key, args
