"""One AIS chain, BlackJAX style: :func:`ais_init` and :func:`ais_step` (pure, ``jit``/``vmap``-able).

The geometric path ``log pi_beta(x) = log pi_0(x) + beta log L(x)`` of :mod:`numpyro_ext.infer.ais`;
a step adds the weight increment ``(beta - beta_prev) log L(x)`` (Neal 2001) and then moves with a
``pi_beta``-invariant kernel: HMC from :mod:`numpyro_ext.infer.hmc_util`, or a user kernel.
Shapes: ``d`` unconstrained dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from numpyro_ext.infer.hmc_util import IntegratorState, finite_or_neg_inf, hmc_proposal, momentum_from_noise

__all__ = [
    "AISInfo",
    "AISState",
    "KernelSettings",
    "LogDensityFn",
    "ais_init",
    "ais_step",
    "ais_transition",
    "check_transition",
    "hmc_uniforms",
]

Array = jax.Array
LogDensityFn = Callable[[Array], Array]


class AISState(NamedTuple):
    """One AIS chain.

    ``position`` ``(d,)``; ``log_prior`` (``log pi_0``) and ``log_likelihood`` (``log L``) at it,
    scalars, ``-inf`` where the function is not finite; their gradients ``(d,)``;
    ``log_weight`` the running log weight; ``step_size`` the chain's current HMC step size.
    """

    position: Array
    log_prior: Array
    log_likelihood: Array
    log_prior_grad: Array
    log_likelihood_grad: Array
    log_weight: Array
    step_size: Array


class KernelSettings(NamedTuple):
    """How a chain moves at every temperature (fixed for a run; :func:`ais_step` documents each):
    ``num_leapfrog`` HMC leapfrog steps, ``inverse_mass_matrix`` ``(d,)``, ``(d, d)`` or ``None``
    (identity), ``transition`` ``"hmc"`` or a user kernel, ``max_delta_energy``."""

    num_leapfrog: int = 10
    inverse_mass_matrix: Array | None = None
    transition: str | Callable = "hmc"
    max_delta_energy: float = 1000.0


class AISInfo(NamedTuple):
    """What one transition did (scalars): the Metropolis acceptance probability, whether the
    proposal was accepted, whether it diverged (non-finite or an energy error above
    ``max_delta_energy``; always rejected), and the step size used."""

    acceptance_rate: Array
    is_accepted: Array
    is_divergent: Array
    step_size: Array


def _densities_and_grads(position: Array, log_prior_fn: LogDensityFn, log_likelihood_fn: LogDensityFn):
    """``log pi_0``, ``log L`` and their gradients at ``position``: one forward pass, two backward."""

    def both(x):
        return jnp.stack([jnp.asarray(log_prior_fn(x)), jnp.asarray(log_likelihood_fn(x))]).astype(x.dtype)

    values, vjp = jax.vjp(both, position)
    (grads,) = jax.vmap(vjp)(jnp.eye(2, dtype=values.dtype))
    return finite_or_neg_inf(values[0]), finite_or_neg_inf(values[1]), grads[0], grads[1]


def ais_init(
    position: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    step_size: float | Array = 0.1,
) -> AISState:
    """A chain at ``position`` ``(d,)`` with log weight 0 (draw ``position`` from ``pi_0``)."""
    position = jnp.asarray(position)
    if not jnp.issubdtype(position.dtype, jnp.floating):
        position = position.astype(jnp.result_type(float))
    log_prior, log_likelihood, prior_grad, likelihood_grad = _densities_and_grads(
        position, log_prior_fn, log_likelihood_fn
    )
    return AISState(
        position,
        log_prior,
        log_likelihood,
        prior_grad,
        likelihood_grad,
        jnp.zeros((), position.dtype),
        jnp.asarray(step_size, position.dtype),
    )


def check_transition(transition: Any) -> None:
    if not (isinstance(transition, str) and transition == "hmc") and not callable(transition):
        raise ValueError(
            "transition must be 'hmc' or a kernel function "
            "transition(rng_key, position, logdensity_fn, step_size) -> (position, acceptance_rate), "
            f"got {transition!r}"
        )


def hmc_uniforms(rng_key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Uniforms on ``(0, 1)`` (never 0, so their normal quantiles and logs are finite)."""
    return jax.random.uniform(rng_key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


def ais_step(
    rng_key: Array,
    state: AISState,
    beta_prev: float | Array,
    beta: float | Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    step_size: float | Array | None = None,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
) -> tuple[AISState, AISInfo]:
    """One AIS step: ``log w += (beta - beta_prev) log L(x)``, then a ``pi_beta``-invariant move.

    ``pi_beta ∝ pi_0 L^beta`` (geometric path).  The move is HMC (``transition="hmc"``): a
    momentum ``~ N(0, M)``, ``num_leapfrog`` leapfrog steps of ``step_size`` (``state.step_size``
    when ``None``), a momentum flip and a Metropolis correction (:mod:`numpyro_ext.infer.hmc_util`);
    ``inverse_mass_matrix`` is ``(d,)`` or ``(d, d)`` (identity
    when ``None``).  A proposal with a non-finite log density, energy or position is rejected
    and flagged divergent, as is one whose energy error exceeds ``max_delta_energy``.

    ``transition`` may instead be a kernel ``transition(rng_key, position, logdensity_fn,
    step_size) -> (new_position, acceptance_rate)`` that leaves ``exp(logdensity_fn)``
    invariant for every ``logdensity_fn`` (reversible, for the BDMC and multi-sample bounds);
    a returned position with a non-finite tempered log density is rejected and counted.

    With ``beta < beta_prev`` this is a step of a reverse chain (its log weight then
    accumulates ``-log w``; :func:`ais_reverse` negates it).
    """
    check_transition(transition)
    if isinstance(transition, str):
        randomness = hmc_uniforms(rng_key, (state.position.shape[0] + 1,), state.position.dtype)
    else:
        randomness = rng_key
    kernel = KernelSettings(num_leapfrog, inverse_mass_matrix, transition, max_delta_energy)
    return ais_transition(randomness, state, beta_prev, beta, log_prior_fn, log_likelihood_fn, step_size, kernel)


def _hmc_move(uniforms, state, beta, logdensity_fn, step_size, kernel):
    """HMC from ``state`` on ``logdensity_fn = log pi_0 + beta log L`` (:mod:`numpyro_ext.infer.hmc_util`).

    ``uniforms`` ``(d + 1,)`` on ``(0, 1)``: the momentum through the normal quantile function,
    then the Metropolis test.  Returns the proposal, whether it was accepted, whether it diverged
    and its acceptance probability.
    """
    num_leapfrog, inverse_mass_matrix, _, max_delta_energy = kernel
    dtype = state.position.dtype
    if inverse_mass_matrix is None:
        inverse_mass_matrix = jnp.ones_like(state.position)
    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix, dtype)
    # at beta = 0 a zero likelihood must not turn the prior's density into NaN
    logdensity = state.log_prior + jnp.where(beta == 0, 0.0, beta * state.log_likelihood)
    momentum = momentum_from_noise(ndtri(uniforms[:-1]), inverse_mass_matrix)
    start = IntegratorState(
        state.position, momentum, logdensity, state.log_prior_grad + beta * state.log_likelihood_grad
    )
    log_u = jnp.log(uniforms[-1])
    end, test = hmc_proposal(
        start, log_u, logdensity_fn, inverse_mass_matrix, step_size, num_leapfrog, max_delta_energy
    )
    return end.position, test.is_accepted, test.is_divergent, jnp.exp(test.log_accept_prob)


def ais_transition(
    randomness: Array,
    state: AISState,
    beta_prev: float | Array,
    beta: float | Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    step_size: float | Array | None,
    kernel: KernelSettings,
) -> tuple[AISState, AISInfo]:
    """:func:`ais_step` given its randomness: ``(d + 1,)`` uniforms for HMC, a key for a user kernel."""
    dtype = state.position.dtype
    beta_prev = jnp.asarray(beta_prev, dtype)
    beta = jnp.asarray(beta, dtype)
    step_size = state.step_size if step_size is None else jnp.asarray(step_size, dtype)
    transition = kernel.transition
    log_weight = state.log_weight + (beta - beta_prev) * state.log_likelihood

    def logdensity_fn(x):
        return jnp.asarray(log_prior_fn(x) + beta * log_likelihood_fn(x)).astype(dtype)

    if isinstance(transition, str):
        proposal, accepted, divergent, acceptance_rate = _hmc_move(
            randomness, state, beta, logdensity_fn, step_size, kernel
        )
    else:
        proposal, acceptance_rate = transition(randomness, state.position, logdensity_fn, step_size)
        proposal = jnp.asarray(proposal, dtype)
        accepted = jnp.any(proposal != state.position)
    log_prior, log_likelihood, prior_grad, likelihood_grad = _densities_and_grads(
        proposal, log_prior_fn, log_likelihood_fn
    )
    valid = jnp.isfinite(log_prior + jnp.where(beta == 0, 0.0, beta * log_likelihood))
    valid = valid & jnp.all(jnp.isfinite(proposal))
    if not isinstance(transition, str):
        divergent = ~valid
        acceptance_rate = jnp.where(valid & jnp.isfinite(acceptance_rate), acceptance_rate, 0.0)
    moved = accepted & valid

    def keep(new, old):
        return jnp.where(moved, new, old)

    new_state = AISState(
        keep(proposal, state.position),
        keep(log_prior, state.log_prior),
        keep(log_likelihood, state.log_likelihood),
        keep(prior_grad, state.log_prior_grad),
        keep(likelihood_grad, state.log_likelihood_grad),
        log_weight,
        step_size,
    )
    return new_state, AISInfo(jnp.asarray(acceptance_rate, dtype), moved, divergent, step_size)
