"""HMC building blocks in JAX: momentum, kinetic energy, the leapfrog involution, the Metropolis test.

Written once and used by every NumPyro-side algorithm that moves with Hamiltonian dynamics
(:mod:`numpyro_ext.infer.drhmc`, :mod:`numpyro_ext.infer.drghmc`, :mod:`numpyro_ext.infer.ais`, the
MINE-AIS negatives of :mod:`numpyro_ext.infer.mi_bounds`); NumPyro's own :mod:`numpyro.infer.hmc_util`
is the model.  The torch twin is :mod:`pyro_ext.infer.hmc_util`.  The last section holds what the
MCMC kernels share around their cores: NumPyro's warmup adaptation, a NUTS transition (the warmup
of the DR kernels) and the switch between warmup and sampling transitions; these import NumPyro
when called.  The kernels' common shell is :class:`numpyro_ext.infer.model_util.WarmupKernel`.

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

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapters.configs import CURVATURE_MAX_ENERGY_ERROR
from adapters.validation import check_inverse_mass_matrix  # re-exported: the kernels' shell checks at init

__all__ = [
    "IntegratorState",
    "KernelTransition",
    "MetropolisInfo",
    "adapt_in_warmup",
    "check_inverse_mass_matrix",
    "core_transition",
    "finite_or_neg_inf",
    "fixed_length_steps",
    "hmc_proposal",
    "is_batched_key",
    "is_divergent",
    "kinetic_energy",
    "leapfrog_curvature_involution",
    "leapfrog_involution",
    "mean_accept_prob",
    "metropolis_test",
    "momentum_from_noise",
    "nuts_transition",
    "nuts_warmup_adapter",
    "partial_refresh",
    "sample_momentum",
    "start_adaptation",
    "velocity",
    "warmup_or_sample",
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


def partial_refresh(noise: Array, momentum: Array, inverse_mass_matrix: Array, damping: Array | float) -> Array:
    """Generalized HMC's partial momentum refresh ``sqrt(1 - damping) r + sqrt(damping) xi``, ``xi ~ N(0, M)``
    (Horowitz 1991).

    ``xi`` is made from standard-normal ``noise`` (the shape of ``momentum``, ``(d,)`` or ``(..., d)``) by
    :func:`momentum_from_noise`.  ``damping = 1`` is HMC's full refresh; ``N(0, M)`` is invariant for every
    ``damping`` in ``[0, 1]`` (the covariance stays ``(1 - damping) M + damping M``).
    """
    fresh = momentum_from_noise(noise, inverse_mass_matrix)
    return jnp.sqrt(1.0 - damping) * momentum + jnp.sqrt(damping) * fresh


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
    with_curvature = leapfrog_curvature_involution(
        logdensity_fn, inverse_mass_matrix, step_size, num_steps, value_and_grad, max_energy_error=None
    )

    def involution(point: IntegratorState) -> tuple[IntegratorState, Array]:
        end, cost, _ = with_curvature(point)
        return end, cost

    return involution


def leapfrog_curvature_involution(
    logdensity_fn: Callable[[Array], Array] | None,
    inverse_mass_matrix: Array,
    step_size: Array | float,
    num_steps: Array | int,
    value_and_grad: Callable[[Array], tuple[Array, Array]] | None = None,
    max_energy_error: float | None = CURVATURE_MAX_ENERGY_ERROR,
) -> Callable[[IntegratorState], tuple[IntegratorState, Array, Array]]:
    """:func:`leapfrog_involution` that also returns the largest secant curvature met on the way.

    Returns ``involution(point) -> (end, num_steps, curvature)`` with ``curvature`` the maximum over
    the steps of ``sqrt(dg^T M^{-1} dg / dx^T M dx)``, ``dx`` a step's move and ``dg`` its change of
    gradient.  On a quadratic ``-log pi`` with Hessian ``H`` each ratio is ``|A u| / |u|`` for the
    preconditioned Hessian ``A = L^T H L`` (``M^{-1} = L L^T``) and some ``u``, so the maximum is a
    lower estimate of ``A``'s largest eigenvalue, the curvature that bounds the stable step size
    (``eps < 2 / sqrt(lambda_max)``) along this trajectory.  It needs no extra gradient and no
    factorisation: ``dx = eps M^{-1} r_half`` gives ``dx^T M dx = eps^2 r_half^T M^{-1} r_half``.

    Only the steps before the energy error ``|H - H_start|`` first exceeds ``max_energy_error`` count
    (ATLAS's reference code stops its trajectory there, ``|dH| > 10``): past it the trajectory has left
    the region it measures, and on the funnel a diverged tail's ratios are orders of magnitude off
    (measured: with them the local step missed the neck, v's 5% quantile -2.7 against -4.9).  Steps
    with a non-finite ratio are skipped; 0 when no step counts.  ``max_energy_error=None`` measures
    nothing (the curvature is 0): plain :func:`leapfrog_involution`, with no extra work per step.
    """
    if value_and_grad is None:
        value_and_grad = jax.value_and_grad(logdensity_fn)

    def one_step(_, carry):
        point, curvature, energy_start, measuring = carry
        momentum = point.momentum + 0.5 * step_size * point.logdensity_grad
        move = velocity(inverse_mass_matrix, momentum)
        position = point.position + step_size * move
        logdensity, logdensity_grad = value_and_grad(position)
        half_momentum, momentum = momentum, momentum + 0.5 * step_size * logdensity_grad
        new_point = IntegratorState(position, momentum, logdensity, logdensity_grad)
        if max_energy_error is None:
            return new_point, curvature, energy_start, measuring
        grad_change = logdensity_grad - point.logdensity_grad
        squared = jnp.sum(grad_change * velocity(inverse_mass_matrix, grad_change), axis=-1) / (
            step_size**2 * jnp.sum(half_momentum * move, axis=-1)
        )
        energy_error = kinetic_energy(inverse_mass_matrix, momentum) - logdensity - energy_start
        measuring = measuring & (jnp.abs(energy_error) <= max_energy_error)  # a NaN error stops it too
        curvature = jnp.where(measuring, jnp.fmax(curvature, jnp.sqrt(squared)), curvature)  # fmax skips NaN
        return new_point, curvature, energy_start, measuring

    def involution(point: IntegratorState) -> tuple[IntegratorState, Array, Array]:
        energy_start = jnp.zeros_like(point.logdensity)
        if max_energy_error is not None:
            energy_start = kinetic_energy(inverse_mass_matrix, point.momentum) - point.logdensity
        start = (point, jnp.zeros_like(point.logdensity), energy_start, jnp.ones_like(point.logdensity, bool))
        end, curvature, _, _ = jax.lax.fori_loop(0, num_steps, one_step, start)
        return end._replace(momentum=-end.momentum), num_steps, curvature

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


# ---------------------------------------------------------------------------------------
# The MCMC kernels' warmup: NumPyro's adaptation, NUTS transitions, the warmup/sampling switch
# ---------------------------------------------------------------------------------------
def is_batched_key(rng_key: Array) -> bool:
    """Whether ``rng_key`` is a batch of keys (``MCMC(..., chain_method="vectorized")`` passes one per chain)."""
    return jnp.ndim(rng_key) > (0 if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else 1)


def nuts_warmup_adapter(
    potential_fn: Callable[[Array], Array],
    num_warmup: int,
    adapt_step_size: bool,
    adapt_mass_matrix: bool,
    dense_mass: bool,
    target_accept_prob: float,
) -> tuple[Callable, Callable]:
    """NumPyro's ``warmup_adapter`` (dual averaging of the step size, Welford windows of the inverse
    mass matrix, Stan's schedule) for a flat ``potential_fn``: ``(init, update)``.

    Its step-size search (Hoffman & Gelman 2014, Algorithm 4) draws momenta with :func:`sample_momentum`.
    """
    from numpyro.infer.hmc_util import euclidean_kinetic_energy, find_reasonable_step_size, warmup_adapter

    def momentum_generator(position, inverse_mass_matrix, key):
        return sample_momentum(key, inverse_mass_matrix, position)

    def reasonable_step_size(step_size, inverse_mass_matrix, z_info, key):
        return find_reasonable_step_size(
            potential_fn, euclidean_kinetic_energy, momentum_generator, step_size, inverse_mass_matrix, z_info, key
        )

    return warmup_adapter(
        num_warmup,
        find_reasonable_step_size=reasonable_step_size,
        adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
    )


def start_adaptation(
    adapter_init: Callable,
    potential_fn: Callable[[Array], Array],
    position: Array,
    rng_key: Array,
    step_size: float,
    inverse_mass_matrix: Array | None,
    dim: int,
) -> tuple[Array, Array, object]:
    """``(potential energy, its gradient, adaptation state)`` at a chain's start ``position`` ``(d,)``,
    with :func:`nuts_warmup_adapter`'s ``init`` (the step-size search runs from ``rng_key``)."""
    from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState

    potential_energy, potential_grad = jax.value_and_grad(potential_fn)(position)
    adapt_state = adapter_init(
        NumPyroIntegratorState(position, None, potential_energy, potential_grad),
        rng_key,
        step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        mass_matrix_size=dim,
    )
    return potential_energy, potential_grad, adapt_state


class KernelTransition(NamedTuple):
    """One transition of an MCMC kernel, in the potential's terms (scalars; positions ``(d,)``).

    ``adapt_accept_prob`` is what step-size adaptation is fed (a DR kernel's first stage),
    ``accept_prob`` what is reported; ``num_steps`` the chain's own leapfrog steps, ``num_grad_evals``
    every gradient; ``stage`` the accepted stage (-1 if none, or a NUTS transition); ``momentum`` the
    kept momentum of a kernel that keeps one (``None`` otherwise).
    """

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
    momentum: Array | None = None


def core_transition(new_state: NamedTuple, info: NamedTuple, momentum: Array | None = None) -> KernelTransition:
    """A delayed-rejection core's ``(state, info)`` (:func:`numpyro_ext.infer.drhmc.build_kernel`'s and
    :func:`numpyro_ext.infer.drghmc.build_kernel`'s: log density and gradient, acceptance, stage, counts)
    in the potential's terms; step-size adaptation is fed the first stage's acceptance probability."""
    return KernelTransition(
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
        momentum=momentum,
    )


def nuts_transition(
    potential_fn: Callable[[Array], Array],
    rng_key: Array,
    position: Array,
    potential_energy: Array,
    potential_grad: Array,
    step_size: Array,
    inverse_mass_matrix: Array,
    max_delta_energy: float,
    max_tree_depth: int,
    momentum: Array | None = None,
) -> KernelTransition:
    """One NUTS transition (NumPyro's ``build_tree``, multinomial, Hoffman & Gelman 2014 / Betancourt 2017)
    from ``position`` with a fresh momentum, as a :class:`KernelTransition` (``momentum`` passed through).

    ``accept_prob`` is the tree's mean acceptance probability, which warmup adapts to; every leapfrog
    step is one gradient.
    """
    from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState
    from numpyro.infer.hmc_util import build_tree, euclidean_kinetic_energy, velocity_verlet

    momentum_key, tree_key = jax.random.split(rng_key)
    fresh = sample_momentum(momentum_key, inverse_mass_matrix, position)
    _, vv_update = velocity_verlet(potential_fn, euclidean_kinetic_energy)
    start = NumPyroIntegratorState(position, fresh, potential_energy, potential_grad)
    tree = build_tree(
        vv_update,
        euclidean_kinetic_energy,
        start,
        inverse_mass_matrix,
        step_size,
        tree_key,
        max_delta_energy=max_delta_energy,
        max_tree_depth=max_tree_depth,
    )
    accept_prob = tree.sum_accept_probs / tree.num_proposals
    num_steps = jnp.asarray(tree.num_proposals, jnp.int32)
    return KernelTransition(
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
        momentum=momentum,
    )


def adapt_in_warmup(
    adapter_update: Callable, iteration: Array, num_warmup: int, new: KernelTransition, adapt_state: object
) -> object:
    """:func:`nuts_warmup_adapter`'s ``update`` after transition ``iteration`` (from 0) while it is a warmup
    one, fed ``new.adapt_accept_prob`` and the new point; the adaptation state unchanged afterwards."""
    from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState

    z_info = NumPyroIntegratorState(new.position, None, new.potential_energy, new.potential_grad)
    return jax.lax.cond(
        iteration < num_warmup,
        lambda s: adapter_update(iteration, new.adapt_accept_prob, z_info, s),
        lambda s: s,
        adapt_state,
    )


def mean_accept_prob(iteration: Array, num_warmup: int, mean: Array, accept_prob: Array) -> Array:
    """The running mean of ``accept_prob`` after transition ``iteration``, restarted when sampling starts
    (as NumPyro's HMC reports it)."""
    n = jnp.where(iteration < num_warmup, iteration, iteration - num_warmup) + 1
    return mean + (accept_prob - mean) / n


def warmup_or_sample(
    sample_one: Callable,
    state: NamedTuple,
    model_args: tuple,
    model_kwargs: dict,
    vectorized: bool,
    num_warmup: int,
    nuts_warmup: bool = True,
) -> NamedTuple:
    """A kernel's ``sample``: ``sample_one(state, model_args, model_kwargs, nuts_warmup=...)`` on one chain's
    state (``vmap``-ed over a vectorized batch), with ``nuts_warmup=True`` for the first ``num_warmup``
    iterations (``state.i`` counts them) when ``nuts_warmup``, ``False`` otherwise.

    The NUTS-or-kernel choice is made on the unbatched iteration counter (all chains share it): a
    predicate batched by ``vmap`` would turn the ``cond`` into a select that runs both branches
    (a NUTS tree at every sampling iteration).
    """

    def transition(state, nuts_warmup):
        one = functools.partial(sample_one, nuts_warmup=nuts_warmup)
        if vectorized:  # chain_method="vectorized": init got a batch of keys
            return jax.vmap(one, in_axes=(0, None, None))(state, model_args, model_kwargs)
        return one(state, model_args, model_kwargs)

    if not (nuts_warmup and num_warmup > 0):
        return transition(state, nuts_warmup=False)
    iteration = state.i[0] if vectorized else state.i
    return jax.lax.cond(
        iteration < num_warmup,
        lambda s: transition(s, nuts_warmup=True),
        lambda s: transition(s, nuts_warmup=False),
        state,
    )
