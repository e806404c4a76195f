"""``K`` AIS chains through a schedule: forward (Neal 2001), reverse (BDMC, Grosse et al. 2015) and the pilot.

:func:`ais`, :func:`ais_reverse` and :func:`tune_step_sizes` vmap the one-chain step of
:mod:`numpyro_ext.infer.ais.core` over chains inside one ``lax.scan`` through the temperatures;
:func:`anneal` is the engine they share with :class:`numpyro_ext.infer.AIS` and the multi-sample
bounds of :mod:`numpyro_ext.infer.ais_mi`.  Shapes: ``K`` chains, ``d`` dimensions, ``T`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapters.mi import check_schedule
from adapters.validation import check_numeric, check_positive_int, check_probability
from numpyro_ext.infer.ais.core import (
    AISState,
    KernelSettings,
    LogDensityFn,
    ais_init,
    ais_transition,
    check_transition,
    hmc_uniforms,
)

__all__ = [
    "AISOutput",
    "Adaptation",
    "ais",
    "ais_reverse",
    "anneal",
    "chain_schedules",
    "check_positions",
    "check_rng_key",
    "pilot_step_sizes",
    "tune_step_sizes",
]

Array = jax.Array
# the pilot's step sizes stay within exp(+-18) ~ [1.5e-8, 6.6e7], so a flat or broken
# density cannot drive them to 0 or inf
_LOG_STEP_BOUND = 18.0


class AISOutput(NamedTuple):
    """``K`` chains through a schedule (:func:`ais`, :func:`ais_reverse`).

    ``log_weights`` ``(K,)`` in the forward form ``sum_t (beta_t - beta_{t-1}) log L(x_{t-1})``
    along each chain's path (for a reverse run too); ``positions`` ``(K, d)`` the final
    states; ``state`` the final :class:`AISState` (batched); ``acceptance_rate``,
    ``is_divergent``, ``step_size`` ``(S, K)`` per transition (``S = T`` forward, ``T - 1``
    reverse); ``adapted_step_size`` ``(S, K)`` each chain's step size after its update at that
    transition (equal to ``step_size`` without adaptation).
    """

    log_weights: Array
    positions: Array
    state: AISState
    acceptance_rate: Array
    is_divergent: Array
    step_size: Array
    adapted_step_size: Array


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _betas(betas: Any, dtype) -> tuple[Array, int]:
    if _is_concrete(betas):
        betas = check_schedule(np.asarray(betas), name="betas")
    betas = jnp.asarray(betas, dtype)
    return betas, int(betas.shape[0]) - 1


def check_rng_key(rng_key: Any, name: str = "rng_key") -> Array:
    """``rng_key`` if it is a JAX PRNG key (``jax.random.PRNGKey(0)``: uint32 ``(2,)``, or a typed key), else a
    ``TypeError`` naming ``name`` (a seed or a string would fail deep inside ``jax.random``)."""
    if isinstance(rng_key, jax.core.Tracer):
        return rng_key
    dtype = getattr(rng_key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and jnp.shape(rng_key) == ():
        return rng_key
    if dtype is not None and dtype == np.uint32 and jnp.shape(rng_key) == (2,):
        return jnp.asarray(rng_key)
    raise TypeError(f"{name} must be a JAX PRNG key such as jax.random.PRNGKey(0), got {rng_key!r}")


def check_positions(init_positions: Any, name: str = "init_positions") -> Array:
    check_numeric(name, init_positions, "an array of shape (num_chains, d)")
    positions = jnp.asarray(init_positions)
    if positions.ndim != 2 or positions.shape[0] < 1:
        raise ValueError(
            f"{name} must be an array of shape (num_chains, d) with num_chains >= 1, got {positions.shape}"
        )
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    return positions


def _step_sizes(step_size: Any, num_steps: int, num_chains: int, dtype) -> Array:
    """``step_size`` (scalar, ``(T,)`` per temperature or ``(T, K)``) as ``(T, K)``."""
    if _is_concrete(step_size):
        values = np.asarray(step_size, dtype=np.float64)
        if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    steps = jnp.asarray(step_size, dtype)
    if steps.ndim == 1:
        steps = steps[:, None]
    try:
        return jnp.broadcast_to(steps, (num_steps, num_chains))
    except ValueError:
        raise ValueError(
            f"step_size must be a scalar or have shape ({num_steps},) or ({num_steps}, {num_chains}), "
            f"got shape {jnp.shape(step_size)}"
        ) from None


def chain_schedules(betas: Array, steps: Array, reverse: Array) -> tuple[Array, Array, Array]:
    """Per-chain ``(beta_from, beta_to, step_size)``, each ``(T, K)``, for forward or reverse chains.

    ``steps`` ``(T, K)`` holds the step size of forward transition ``t`` (at ``beta_t``).  A
    reverse chain (``reverse[k]``) visits ``beta_T -> beta_{T-1} -> ... -> beta_0``, moving at
    ``beta_{T-1}, ..., beta_1`` with the forward step sizes there; its last move, at
    ``beta_0`` after the last increment, changes no weight (it reuses the step size of ``beta_1``).
    """
    num_steps = betas.shape[0] - 1
    ones = jnp.ones((num_steps, reverse.shape[0]), betas.dtype)
    forward_from, forward_to = betas[:-1, None] * ones, betas[1:, None] * ones
    backward_from, backward_to = betas[1:][::-1, None] * ones, betas[:-1][::-1, None] * ones
    backward_steps = jnp.concatenate([steps[:-1][::-1], steps[:1]], axis=0)
    return (
        jnp.where(reverse, backward_from, forward_from),
        jnp.where(reverse, backward_to, forward_to),
        jnp.where(reverse, backward_steps, steps),
    )


class Adaptation(NamedTuple):
    """The pilot's step-size adaptation (off by default): when ``adapt`` (may be traced), each chain's
    step size follows ``log eps <- log eps + adaptation_rate * (a_t - target_accept_prob)``."""

    adapt: bool | Array = False
    target_accept_prob: float | Array = 0.65
    adaptation_rate: float | Array = 1.0


def anneal(
    rng_key: Array,
    positions: Array,
    log_prior_fn: Callable,
    log_likelihood_fn: Callable,
    betas: Array,
    steps: Array,
    reverse: Array,
    adaptation: Adaptation | None = None,
    kernel: KernelSettings | None = None,
    chain_data: Any = None,
) -> AISOutput:
    """``K`` chains ``(K, d)`` through the schedule ``betas`` ``(T + 1,)`` in one ``lax.scan``.

    ``steps`` ``(T, K)`` are the forward step sizes and ``reverse`` ``(K,)`` marks the reverse
    chains (:func:`chain_schedules`).  ``adaptation.adapt`` may be traced, so a pilot and an
    estimating run share one compiled program.  With ``chain_data`` (a pytree with leading axis
    ``K``) the densities are ``log_prior_fn(x, data_k)`` and ``log_likelihood_fn(x, data_k)`` per
    chain, so chains for many data sets share one flat chain axis (vmapping over data sets instead
    doubles XLA's compile time).  ``adaptation`` and ``kernel`` default to their classes' defaults.
    No argument checks: :func:`ais` and :func:`ais_reverse` make them.
    """
    adaptation = Adaptation() if adaptation is None else adaptation
    kernel = KernelSettings() if kernel is None else kernel
    betas_from, betas_to, steps = chain_schedules(betas, steps, reverse)
    num_steps, num_chains = steps.shape
    if chain_data is None:
        chain_data = jnp.zeros(num_chains)

        def densities(data):
            return log_prior_fn, log_likelihood_fn

    else:

        def densities(data):
            return (lambda x: log_prior_fn(x, data)), (lambda x: log_likelihood_fn(x, data))

    def init(position, step_size, data):
        return ais_init(position, *densities(data), step_size)

    states = jax.vmap(init)(positions, steps[0], chain_data)

    def step(randomness, state, beta_prev, beta, eps, data):
        return ais_transition(randomness, state, beta_prev, beta, *densities(data), eps, kernel)

    check_transition(kernel.transition)
    # one key per temperature, and one random call per step for all chains (see momentum_from_noise)
    keys = jax.random.split(rng_key, num_steps)
    dim, dtype = positions.shape[1], positions.dtype
    adapt, target_accept_prob, adaptation_rate = adaptation

    def body(states, inputs):
        key_t, beta_prev, beta, steps_t = inputs
        if isinstance(kernel.transition, str):
            randomness = hmc_uniforms(key_t, (num_chains, dim + 1), dtype)
        else:
            randomness = jax.random.split(key_t, num_chains)
        eps = jnp.where(adapt, states.step_size, steps_t)
        new, info = jax.vmap(step)(randomness, states, beta_prev, beta, eps, chain_data)
        log_eps = jnp.log(eps) + adaptation_rate * (info.acceptance_rate - target_accept_prob)
        adapted = jnp.where(adapt, jnp.exp(jnp.clip(log_eps, -_LOG_STEP_BOUND, _LOG_STEP_BOUND)), eps)
        new = new._replace(step_size=adapted.astype(eps.dtype))
        return new, (info, new.step_size)

    final, (info, adapted) = jax.lax.scan(body, states, (keys, betas_from, betas_to, steps))
    log_weights = jnp.where(reverse, -final.log_weight, final.log_weight)
    return AISOutput(
        log_weights, final.position, final, info.acceptance_rate, info.is_divergent, info.step_size, adapted
    )


def _check_kernel_args(transition, num_leapfrog, target_accept_prob=None):
    check_transition(transition)
    if target_accept_prob is not None and _is_concrete(target_accept_prob):
        check_probability("target_accept_prob", float(target_accept_prob))
    return check_positive_int("num_leapfrog", num_leapfrog)


def _run(rng_key, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, reverse, adaptation, kernel):
    """:func:`ais` (``reverse=False``) or :func:`ais_reverse` after their argument checks."""
    positions = check_positions(init_positions)
    betas, num_steps = _betas(betas, positions.dtype)
    steps = _step_sizes(step_size, num_steps, positions.shape[0], positions.dtype)
    reverse = jnp.full(positions.shape[0], reverse, bool)
    return anneal(rng_key, positions, log_prior_fn, log_likelihood_fn, betas, steps, reverse, adaptation, kernel)


def ais(
    rng_key: Array,
    init_positions: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,
    step_size: float | Array = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    adapt_step_size: bool = False,
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
) -> AISOutput:
    """Forward AIS (Neal 2001) for ``K`` chains started at ``init_positions`` ``(K, d)`` ``~ pi_0``.

    ``betas`` ``(T + 1,)`` from 0 to 1, strictly increasing.  Transition ``t = 1..T`` runs at
    ``beta_t`` with ``step_size`` (a scalar, ``(T,)`` per temperature or ``(T, K)``).  Returns
    an :class:`AISOutput`; ``log_mean_exp(log_weights)`` estimates ``log Z`` from below
    (:func:`adapters.mi.log_mean_exp_bound`).

    ``adapt_step_size=True`` adapts each chain's step size at every temperature,
    ``log eps <- log eps + adaptation_rate * (a_t - target_accept_prob)`` with ``a_t`` the
    transition's acceptance probability, starting from ``step_size`` (its first row).  The step
    size then depends on the chain's own path, which biases the weights (see the module
    docstring): use it as a pilot, through :func:`tune_step_sizes`, and estimate with a fixed
    schedule.  Pure and ``jit``-able (``betas`` is validated when it is concrete).
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog, target_accept_prob if adapt_step_size else None)
    kernel = KernelSettings(num_leapfrog, inverse_mass_matrix, transition, max_delta_energy)
    adaptation = Adaptation(adapt_step_size, target_accept_prob, adaptation_rate)
    return _run(rng_key, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, False, adaptation, kernel)


def ais_reverse(
    rng_key: Array,
    init_positions: Array,  # exact posterior draws (K, d)
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,  # increasing, as for the forward run
    step_size: float | Array = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
) -> AISOutput:
    """Reverse AIS (the BDMC backward pass) from exact posterior samples ``init_positions`` ``(K, d)``.

    ``betas`` and ``step_size`` are given as for the forward run (increasing; ``(T,)`` or
    ``(T, K)`` indexed by forward transition): each chain adds
    ``(beta_{t-1} - beta_t) log L(x)`` and then runs the forward kernel of ``beta_{t-1}``
    (with the step size the forward run uses there), for ``t = T..1``, so it is the exact
    reversal of a forward chain (the last move, at ``beta_0``, changes no weight).
    ``log_weights`` ``(K,)`` are in the forward form ``log w`` along the reverse path, with
    ``E[1/w] = 1/Z`` when the start is exact, so ``-log_mean_exp(-log_weights)`` is a
    stochastic upper bound on ``log Z`` (Grosse et al. 2015).  For ``T = 1``, ``log w = log L(x)``.
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog)
    kernel = KernelSettings(num_leapfrog, inverse_mass_matrix, transition, max_delta_energy)
    return _run(rng_key, init_positions, log_prior_fn, log_likelihood_fn, betas, step_size, True, Adaptation(), kernel)


def pilot_step_sizes(adapted_step_size: Array, log_weights: Array) -> Array:
    """One step size per temperature from an adaptive run's ``adapted_step_size`` ``(..., T, K)``.

    The geometric mean, over the chains (and any leading axes) whose weight is not zero, of each
    chain's step size after its update at that temperature (a chain stuck outside the support
    only ever shrinks its step size).  ``log_weights`` is ``(..., K)``; returns ``(T,)``.
    """
    adapted = jnp.moveaxis(adapted_step_size, -2, 0).reshape(adapted_step_size.shape[-2], -1)
    finite = jnp.isfinite(log_weights).reshape(-1)
    mask = jnp.where(jnp.any(finite), finite, jnp.ones_like(finite)).astype(adapted.dtype)
    return jnp.exp(jnp.sum(jnp.log(adapted) * mask, axis=-1) / jnp.sum(mask))


def tune_step_sizes(
    rng_key: Array,
    init_positions: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,
    step_size: float = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
) -> Array:
    """A step-size schedule ``(T,)`` from an adaptive pilot run of :func:`ais` (see the module docstring).

    Give the pilot its own ``rng_key`` and ``init_positions`` (independent of the estimating
    run's), so the schedule is independent of the chains that use it and AIS stays unbiased.
    """
    output = ais(
        rng_key,
        init_positions,
        log_prior_fn,
        log_likelihood_fn,
        betas,
        step_size=step_size,
        num_leapfrog=num_leapfrog,
        inverse_mass_matrix=inverse_mass_matrix,
        transition=transition,
        adapt_step_size=True,
        target_accept_prob=target_accept_prob,
        adaptation_rate=adaptation_rate,
        max_delta_energy=max_delta_energy,
    )
    return pilot_step_sizes(output.adapted_step_size, output.log_weights)
