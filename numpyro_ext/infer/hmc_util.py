"""HMC building blocks in JAX: momentum, kinetic energy, the leapfrog involution, the Metropolis test.

Written once and used by every NumPyro-side algorithm that moves with Hamiltonian dynamics
(:mod:`numpyro_ext.infer.drhmc`, :mod:`numpyro_ext.infer.ais`, the MINE-AIS negatives of
:mod:`numpyro_ext.infer.mi_bounds`); NumPyro's own :mod:`numpyro.infer.hmc_util` is the model.
The torch twin is :mod:`pyro_ext.infer.hmc_util`.

Notation (Neal 2011, "MCMC using Hamiltonian dynamics"): position ``x``, momentum ``r ~ N(0, M)``,
``inverse_mass_matrix = M^{-1}`` either ``(d,)`` (diagonal) or ``(d, d)`` (dense), velocity
``M^{-1} r``, kinetic energy ``K(r) = r^T M^{-1} r / 2`` and the log joint density of the
extended state ``log pi(x) - K(r)``.  The leapfrog (velocity Verlet) map followed by a momentum
flip is a volume-preserving involution, so a Metropolis test on the log joint alone makes it
``pi``-invariant.  Momenta and positions are ``(d,)``, or ``(..., d)`` for independent chains
side by side (``kinetic_energy`` then returns ``(...)``).  All functions are pure and
``jit``/``vmap``-able.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "IntegratorState",
    "MetropolisInfo",
    "finite_or_neg_inf",
    "fixed_length_steps",
    "hmc_proposal",
    "is_divergent",
    "kinetic_energy",
    "leapfrog_involution",
    "metropolis_test",
    "momentum_from_noise",
    "sample_momentum",
    "velocity",
]

Array = jax.Array


class IntegratorState(NamedTuple):
    """A point of HMC's extended space: ``position`` and ``momentum`` ``(..., d)``, the log density
    ``logdensity`` ``(...)`` at the position and its gradient ``logdensity_grad`` ``(..., d)``."""

    position: Array
    momentum: Array
    logdensity: Array
    logdensity_grad: Array


def finite_or_neg_inf(value: Array) -> Array:
    """``value`` where finite, ``-inf`` elsewhere (a NaN or ``+inf`` log density is a zero density)."""
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)


def velocity(inverse_mass_matrix: Array, momentum: Array) -> Array:
    """``M^{-1} r`` for a momentum ``(d,)`` or ``(..., d)``."""
    if inverse_mass_matrix.ndim == 1:
        return inverse_mass_matrix * momentum
    if momentum.ndim == 1:
        return inverse_mass_matrix @ momentum
    return jnp.einsum("ij,...j->...i", inverse_mass_matrix, momentum)


def kinetic_energy(inverse_mass_matrix: Array, momentum: Array) -> Array:
    """``K(r) = r^T M^{-1} r / 2``: a scalar for ``(d,)``, ``(...)`` for ``(..., d)``."""
    if momentum.ndim == 1:
        return 0.5 * jnp.dot(momentum, velocity(inverse_mass_matrix, momentum))
    return 0.5 * jnp.sum(momentum * velocity(inverse_mass_matrix, momentum), axis=-1)


def momentum_from_noise(noise: Array, inverse_mass_matrix: Array) -> Array:
    """Momentum ``r ~ N(0, M)`` from standard-normal ``noise`` ``(d,)`` or ``(..., d)``.

    Diagonal: ``r = noise / sqrt(M^{-1})``.  Dense: with ``M^{-1} = C C^T`` (Cholesky),
    ``r = C^{-T} noise`` has covariance ``(C C^T)^{-1} = M``.  Taking the noise instead of a key
    lets a caller draw all of a step's randomness in one call (AIS does: every threefry call
    site costs seconds of XLA compilation on CPU).
    """
    if inverse_mass_matrix.ndim == 1:
        return noise / jnp.sqrt(inverse_mass_matrix)
    if noise.ndim > 1:
        return jnp.vectorize(lambda n: momentum_from_noise(n, inverse_mass_matrix), signature="(d)->(d)")(noise)
    cholesky = jnp.linalg.cholesky(inverse_mass_matrix)
    return jax.scipy.linalg.solve_triangular(cholesky.T, noise, lower=False)


def sample_momentum(rng_key: Array, inverse_mass_matrix: Array, like: Array) -> Array:
    """Momentum ``~ N(0, M)`` with the shape and dtype of ``like`` (one ``jax.random.normal`` call)."""
    noise = jax.random.normal(rng_key, like.shape, like.dtype)
    return momentum_from_noise(noise, inverse_mass_matrix)


def leapfrog_involution(
    logdensity_fn: Callable[[Array], Array] | None,
    inverse_mass_matrix: Array,
    step_size: Array | float,
    num_steps: Array | int,
    value_and_grad: Callable[[Array], tuple[Array, Array]] | None = None,
) -> Callable[[IntegratorState], tuple[IntegratorState, Array]]:
    """``num_steps`` velocity-Verlet steps of ``step_size`` followed by a momentum flip: an involution.

    Returns ``involution(point) -> (end, num_steps)`` (``num_steps`` is the gradient evaluations
    spent).  Each step is ``r += eps/2 grad; x += eps M^{-1} r; r += eps/2 grad(x)``, with the
    gradient of ``logdensity_fn`` (``jax.value_and_grad``), or of ``value_and_grad(x) ->
    (logdensity, grad)`` when given (e.g. one vector-Jacobian product for independent chains
    ``(..., d)`` side by side; ``logdensity_fn`` may then be ``None``).
    """
    if value_and_grad is None:
        value_and_grad = jax.value_and_grad(logdensity_fn)

    def one_step(_, point: IntegratorState) -> IntegratorState:
        momentum = point.momentum + 0.5 * step_size * point.logdensity_grad
        position = point.position + step_size * velocity(inverse_mass_matrix, momentum)
        logdensity, logdensity_grad = value_and_grad(position)
        momentum = momentum + 0.5 * step_size * logdensity_grad
        return IntegratorState(position, momentum, logdensity, logdensity_grad)

    def involution(point: IntegratorState) -> tuple[IntegratorState, Array]:
        end = jax.lax.fori_loop(0, num_steps, one_step, point)
        return end._replace(momentum=-end.momentum), num_steps

    return involution


def fixed_length_steps(
    step_size: Array | float, trajectory_length: Array | float, max_num_steps: int
) -> tuple[Array, Array]:
    """``(step size, number of steps)`` of a leapfrog trajectory of length ``T`` (NumPyro's ``HMC`` rule).

    ``L = ceil(T / eps)`` steps of ``T / L <= eps``, so every trajectory integrates exactly ``T``
    whatever ``eps`` adaptation tries; ``L`` is capped at ``max_num_steps``, and a capped trajectory
    keeps ``eps`` (and is shorter than ``T``) rather than take steps larger than ``eps``.

    Running ``L`` steps of ``eps`` instead integrates anywhere in ``[T, T + eps)``: for a Gaussian
    target with a well adapted metric, ``eps ~ 1.4`` and ``T = 2`` then give two steps that turn the
    state by about half a period, ``x -> -x``, so ``x^2`` barely moves between draws and the windowed
    variance estimate of warmup (Welford) carries almost no information; the adapted inverse mass
    matrix came out 30-50% off while the draws had the right variance.
    """
    ratio = trajectory_length / step_size
    num_steps = jnp.ceil(ratio - 1e-6)  # the 1e-6 keeps T / eps = 2 + rounding error at 2 steps
    capped = num_steps > max_num_steps
    num_steps = jnp.clip(num_steps, 1, max_num_steps)
    step_size = jnp.where(capped, step_size, trajectory_length / num_steps)
    return step_size, num_steps.astype(jnp.int32)


def is_divergent(log_joint_start: Array, log_joint_end: Array, max_delta_energy: float | Array) -> Array:
    """A divergent proposal: zero density (``log_joint_end = -inf``) or an energy error
    ``H(end) - H(start) = log_joint_start - log_joint_end`` above ``max_delta_energy``."""
    return (log_joint_end == -jnp.inf) | (log_joint_start - log_joint_end > max_delta_energy)


class MetropolisInfo(NamedTuple):
    """The outcome of :func:`metropolis_test` (shapes of the log joints).

    ``log_accept_prob`` ``min(0, log_joint_end - log_joint_start)``, ``-inf`` for a proposal with
    zero density or an undefined ratio; ``is_accepted``; ``is_divergent`` (rejected and
    :func:`is_divergent`); ``energy_error`` ``log_joint_start - log_joint_end``.
    """

    log_accept_prob: Array
    is_accepted: Array
    is_divergent: Array
    energy_error: Array


def metropolis_test(
    log_uniform: Array,
    log_joint_start: Array,
    log_joint_end: Array,
    max_delta_energy: float | Array = jnp.inf,
) -> MetropolisInfo:
    """Metropolis test of a deterministic involutive proposal: accept when ``log u < log alpha``.

    ``alpha = min(1, pi(end) / pi(start))`` on the extended space (Metropolis et al. 1953; for
    HMC the log joints are ``log pi(x) - K(r)``).  A non-finite ``log_joint_end`` counts as zero
    density: never accepted, and divergent.  From a start with zero density any finite proposal
    is accepted (it cannot carry weight, and it keeps the chain from sticking).
    ``log_uniform = log u``, ``u ~ U(0, 1)``; every argument broadcasts.
    """
    log_joint_end = finite_or_neg_inf(log_joint_end)
    delta = log_joint_end - log_joint_start
    log_accept = jnp.where(jnp.isnan(delta) | (log_joint_end == -jnp.inf), -jnp.inf, jnp.minimum(delta, 0.0))
    accepted = log_uniform < log_accept
    divergent = ~accepted & is_divergent(log_joint_start, log_joint_end, max_delta_energy)
    return MetropolisInfo(log_accept, accepted, divergent, log_joint_start - log_joint_end)


def hmc_proposal(
    start: IntegratorState,
    log_uniform: Array,
    logdensity_fn: Callable[[Array], Array] | None,
    inverse_mass_matrix: Array,
    step_size: Array | float,
    num_steps: Array | int,
    max_delta_energy: float | Array = jnp.inf,
    value_and_grad: Callable[[Array], tuple[Array, Array]] | None = None,
) -> tuple[IntegratorState, MetropolisInfo]:
    """One HMC proposal from ``start`` (momentum already drawn) and its Metropolis test.

    Runs :func:`leapfrog_involution` and tests the log joints ``log pi - K`` with
    :func:`metropolis_test`; a proposal whose position is not finite counts as zero density.
    Returns the proposal (the caller keeps ``start`` where ``info.is_accepted`` is false) and the
    :class:`MetropolisInfo`.  ``value_and_grad`` as in :func:`leapfrog_involution`.
    """
    involution = leapfrog_involution(logdensity_fn, inverse_mass_matrix, step_size, num_steps, value_and_grad)
    end, _ = involution(start)
    log_joint_start = start.logdensity - kinetic_energy(inverse_mass_matrix, start.momentum)
    log_joint_end = end.logdensity - kinetic_energy(inverse_mass_matrix, end.momentum)
    log_joint_end = jnp.where(jnp.all(jnp.isfinite(end.position), axis=-1), log_joint_end, -jnp.inf)
    return end, metropolis_test(log_uniform, log_joint_start, log_joint_end, max_delta_energy)
