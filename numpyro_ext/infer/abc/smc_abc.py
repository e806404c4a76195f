"""SMC-ABC in JAX: population Monte Carlo ABC with an adaptive tolerance.

Beaumont, Cornuet, Marin & Robert, "Adaptive approximate Bayesian computation", Biometrika 96,
2009 (PMC-ABC, their Algorithm 2); the tolerance schedule of Del Moral, Doucet & Jasra, "An
adaptive sequential Monte Carlo method for approximate Bayesian computation", Statistics and
Computing 22, 2012 (each tolerance from the previous population's distances), in the
quantile form of Drovandi & Pettitt, Biometrics 67, 2011 (as sbibm's SMC-ABC baseline).

Everything lives on the unconstrained vector ``u`` ``(D,)`` of the problem, where a Gaussian
kernel moves freely and ``pi(u)`` includes the Jacobian.  Population ``t = 0`` is rejection
ABC: ``num_initial`` prior simulations, the ``N`` closest kept with equal weights.  Population
``t >= 1`` with particles ``u_j``, normalised weights ``W_j`` and distances ``rho_j``::

    eps_t   = alpha-quantile of {rho_j}                                 (adaptive tolerance)
    Sigma_t = kernel_scale * sum_j W_j (u_j - mean)(u_j - mean)^T       (Beaumont et al.: 2 x cov)
    repeat until N accepted:  j ~ W,  u* ~ N(u_j, Sigma_t),  s ~ f(. | u*),  accept if rho(s, y) <= eps_t
    log w_i = log pi(u_i) - log sum_j W_j N(u_i; u_j, Sigma_t)          (Beaumont et al. 2009, Alg. 2)

so each population is an importance sample of ``pi_eps_t(u) ∝ pi(u) P(rho <= eps_t | u)`` from
the mixture proposal restricted to the acceptance region (the acceptance probability cancels in
the self-normalised weights).  The run stops when ``num_simulations`` (every simulation,
rejected and non-finite ones included) is spent; the result is the last *complete* population
with its weights (a population cut short by the budget is reported in ``info`` and not used: its
tolerance is smaller but it holds fewer than ``N`` particles).

Layers: :class:`SMCABCState` / :class:`SMCABCInfo` and :func:`smc_abc_init` /
:func:`smc_abc_step` are pure and ``jit``-able, one population per step (a ``lax.while_loop`` over
batches of ``batch_size`` proposals); :class:`SMCABC` is the shell.  Simulations in a batch are
used in order, as a sequential sampler would: rows after the population filled, or past the
budget, are discarded unseen and not counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from adapters.abc import ABCResult, degeneracy_warning, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive, check_positive_int, check_probability
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows
from numpyro_ext.infer.abc.rejection import (
    check_problem,
    check_rng_key,
    check_scale,
    prior_predictive,
    resolve_scale,
    scaled_distances,
)
from numpyro_ext.infer.smc_util import effective_sample_size, normalized_weights

__all__ = ["SMCABC", "SMCABCInfo", "SMCABCState", "smc_abc_init", "smc_abc_step"]

Array = jax.Array


class SMCABCState(NamedTuple):
    """One population: ``particles`` ``(N, D)`` (unconstrained), ``log_weights`` ``(N,)``
    (unnormalised; ``-inf`` for an empty slot), ``distances`` ``(N,)`` and the ``epsilon`` ``()``
    it was accepted at."""

    particles: Array
    log_weights: Array
    distances: Array
    epsilon: Array


class SMCABCInfo(NamedTuple):
    """One population step: ``epsilon`` (its tolerance), ``num_simulations`` used (rejected and
    non-finite included), ``num_nan`` (non-finite among them), ``num_accepted`` (``N`` unless the
    budget ran out), ``acceptance_rate``, ``ess`` (Kish, of the new weights) and ``complete``."""

    epsilon: Array
    num_simulations: Array
    num_nan: Array
    num_accepted: Array
    acceptance_rate: Array
    ess: Array
    complete: Array


class _Fill(NamedTuple):
    key: Array
    particles: Array
    distances: Array
    num_accepted: Array
    num_used: Array
    num_nan: Array


def smc_abc_init(particles: Array, distances: Array, log_weights: Array | None = None) -> SMCABCState:
    """The first population from ``particles`` ``(N, D)`` and their ``distances`` ``(N,)`` (the ``N``
    closest prior simulations): equal weights (``-inf`` where the distance is not finite), ``epsilon``
    the largest finite distance."""
    particles = jnp.asarray(particles)
    distances = jnp.asarray(distances, dtype=particles.dtype)
    finite = jnp.isfinite(distances)
    if log_weights is None:
        log_weights = jnp.where(finite, 0.0, -jnp.inf).astype(particles.dtype)
    epsilon = jnp.max(jnp.where(finite, distances, -jnp.inf))
    return SMCABCState(particles, jnp.asarray(log_weights, particles.dtype), distances, epsilon)


def kernel_covariance(particles: Array, log_weights: Array, kernel_scale: float) -> Array:
    """``kernel_scale`` times the weighted covariance ``(D, D)`` of ``particles`` ``(N, D)``, with a
    relative jitter of ``sqrt(machine eps)`` so that a collapsed population still has a Cholesky factor."""
    weights = normalized_weights(log_weights)
    mean = weights @ particles
    centred = particles - mean
    cov = kernel_scale * (centred * weights[:, None]).T @ centred
    dim = particles.shape[-1]
    tiny = jnp.finfo(particles.dtype).eps
    jitter = jnp.sqrt(tiny) * jnp.trace(cov) / dim + tiny
    return cov + jitter * jnp.eye(dim, dtype=particles.dtype)


def mixture_log_density(points: Array, centres: Array, log_weights: Array, chol: Array) -> Array:
    """``log sum_j W_j N(points_i; centres_j, L L^T)`` ``(M,)`` for ``points`` ``(M, D)``, ``centres``
    ``(N, D)``, unnormalised ``log_weights`` ``(N,)`` and the Cholesky factor ``chol`` ``(D, D)``."""
    dim = centres.shape[-1]
    weights = normalized_weights(log_weights)
    shift = weights @ centres  # centring keeps |a|^2 + |b|^2 - 2 a.b accurate
    a = jax.scipy.linalg.solve_triangular(chol, (points - shift).T, lower=True).T
    b = jax.scipy.linalg.solve_triangular(chol, (centres - shift).T, lower=True).T
    sq = jnp.maximum(jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T, 0.0)
    log_norm = jnp.sum(jnp.log(jnp.diagonal(chol))) + 0.5 * dim * jnp.log(2.0 * jnp.pi)
    log_w = jnp.log(weights)
    return logsumexp(log_w[None, :] - 0.5 * sq, axis=-1) - log_norm


def smc_abc_step(
    rng_key: Array,
    state: SMCABCState,
    simulate_fn: Callable[[Array, Array], Array],
    distance_fn: Callable[[Array], Array],
    log_prior_fn: Callable[[Array], Array],
    max_simulations: Array | int,
    *,
    alpha: float = 0.5,
    kernel_scale: float = 2.0,
    batch_size: int = 1000,
) -> tuple[SMCABCState, SMCABCInfo]:
    """One PMC-ABC population (Beaumont et al. 2009, Alg. 2) at ``eps = alpha``-quantile of ``state.distances``.

    ``simulate_fn(u (B, D), keys (B,)) -> stats (B, d)``; ``distance_fn(stats) -> (B,)`` (``inf`` for a
    non-finite row); ``log_prior_fn(u (D,)) -> ()`` on the unconstrained space; ``max_simulations``: the
    budget left (a traced integer: one compilation serves every population).  Proposals come in
    batches of ``batch_size`` until ``N`` are accepted or the budget is spent; an incomplete
    population has ``-inf`` weights in its empty slots and ``info.complete`` false.
    """
    particles = state.particles
    num, dim = particles.shape
    dtype = particles.dtype
    valid = jnp.isfinite(state.log_weights)
    epsilon = jnp.nanquantile(jnp.where(valid, state.distances, jnp.nan), alpha).astype(dtype)
    log_w = jnp.where(valid, state.log_weights, -jnp.inf)
    chol = jnp.linalg.cholesky(kernel_covariance(particles, log_w, kernel_scale))
    positions = jnp.arange(batch_size, dtype=jnp.int32)

    def not_done(fill: _Fill) -> Array:
        return (fill.num_accepted < num) & (fill.num_used < max_simulations)

    def propose(fill: _Fill) -> _Fill:
        key, key_parent, key_move, key_sim = jax.random.split(fill.key, 4)
        # PMC draws each proposal's parent independently from the weights (Beaumont et al. 2009)
        parents = jax.random.categorical(key_parent, log_w, shape=(batch_size,))
        noise = jax.random.normal(key_move, (batch_size, dim), dtype)
        u = particles[parents] + noise @ chol.T
        stats = simulate_fn(u, jax.random.split(key_sim, batch_size))
        distances = distance_fn(stats).astype(dtype)
        finite = finite_rows(stats)
        in_budget = fill.num_used + positions < max_simulations
        hit = finite & (distances <= epsilon) & in_budget
        count = fill.num_accepted + jnp.cumsum(hit)
        # a sequential sampler stops at the N-th acceptance: later rows are never used
        used = in_budget & (count - hit < num)
        slot = jnp.where(hit & (count <= num), count - 1, num)
        return _Fill(
            key,
            fill.particles.at[slot].set(u, mode="drop"),
            fill.distances.at[slot].set(distances, mode="drop"),
            jnp.minimum(count[-1], num).astype(jnp.int32),
            fill.num_used + jnp.sum(used).astype(jnp.int32),
            fill.num_nan + jnp.sum(used & ~finite).astype(jnp.int32),
        )

    zero = jnp.zeros((), jnp.int32)
    start = _Fill(rng_key, jnp.zeros_like(particles), jnp.full((num,), jnp.inf, dtype), zero, zero, zero)
    fill = jax.lax.while_loop(not_done, propose, start)
    filled = jnp.arange(num) < fill.num_accepted
    log_prior = jax.vmap(log_prior_fn)(fill.particles)
    log_proposal = mixture_log_density(fill.particles, particles, log_w, chol)
    new_log_w = jnp.where(filled, log_prior - log_proposal, -jnp.inf)
    new_state = SMCABCState(fill.particles, new_log_w, fill.distances, epsilon)
    info = SMCABCInfo(
        epsilon=epsilon,
        num_simulations=fill.num_used,
        num_nan=fill.num_nan,
        num_accepted=fill.num_accepted,
        acceptance_rate=fill.num_accepted / jnp.maximum(fill.num_used, 1),
        ess=effective_sample_size(new_log_w),
        complete=fill.num_accepted == num,
    )
    return new_state, info


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
class SMCABC:
    """SMC-ABC (population Monte Carlo ABC, adaptive tolerance) on a likelihood-free problem.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
        num_particles: population size ``N`` (at least 2: the kernel needs a covariance).
        num_simulations: the whole simulation budget, every simulation counted (>= ``num_particles``).
        alpha: each tolerance is the ``alpha``-quantile of the previous population's distances,
            ``0 < alpha < 1`` (smaller: faster shrinking, lower acceptance).
        kernel_scale: the Gaussian kernel's covariance is ``kernel_scale`` times the weighted
            particle covariance (2 in Beaumont et al. 2009, Sec. 3).
        num_initial: prior simulations of population 0, of which the ``N`` closest are kept.
            Default ``5 N``, at most half the budget (and at least ``N``).
        scale: ``"mad"`` (each statistic divided by its median absolute deviation over the
            ``num_initial`` prior simulations), ``None`` (unscaled) or an array ``(d,)``.
        batch_size: proposals simulated per ``vmap``-ed batch (default ``N``).

    :meth:`run` returns an :class:`~adapters.abc.ABCResult` of the last complete population with
    its ``log_weights`` and ``distances``; ``info`` holds ``epsilon`` (its tolerance), ``scale``,
    per population ``epsilon_schedule``, ``ess``, ``acceptance_rate`` and ``num_simulations``
    (population 0 first), and ``incomplete`` (the tolerance and acceptances of a population the
    budget cut short, or ``None``).
    """

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        num_particles: int = 1000,
        num_simulations: int = 10_000,
        alpha: float = 0.5,
        kernel_scale: float = 2.0,
        num_initial: int | None = None,
        scale: str | Any | None = "mad",
        batch_size: int | None = None,
    ):
        self.problem = check_problem(problem, "SMCABC")
        self.num_particles = check_positive_int("num_particles", num_particles)
        if self.num_particles < 2:
            raise ValueError(f"num_particles: expected at least 2 (the kernel needs a covariance), got {num_particles}")
        self.num_simulations = check_positive_int("num_simulations", num_simulations)
        if self.num_simulations < self.num_particles:
            raise ValueError(
                f"num_simulations: the budget must cover at least one population of num_particles = "
                f"{self.num_particles} simulations, got {self.num_simulations}"
            )
        self.alpha = check_probability("alpha", alpha)
        self.kernel_scale = check_positive("kernel_scale", kernel_scale)
        if num_initial is None:
            num_initial = int(
                np.clip(5 * self.num_particles, self.num_particles, max(self.num_particles, num_simulations // 2))
            )
        self.num_initial = check_positive_int("num_initial", num_initial)
        if not self.num_particles <= self.num_initial <= self.num_simulations:
            raise ValueError(
                f"num_initial: expected between num_particles = {self.num_particles} and num_simulations = "
                f"{self.num_simulations} prior simulations, got {self.num_initial}"
            )
        self.scale = check_scale(scale, problem.stat_dim)
        self.batch_size = check_positive_int("batch_size", self.num_particles if batch_size is None else batch_size)

    def run(self, rng_key: Array) -> ABCResult:
        """Population 0 by rejection, then PMC-ABC populations until the budget is spent."""
        rng_key = check_rng_key(rng_key)
        key_initial, key = jax.random.split(rng_key)
        u_all, _, stats = prior_predictive(key_initial, self.problem, self.num_initial, self.batch_size)
        stats = np.asarray(stats, dtype=np.float64)
        scale = resolve_scale(self.scale, stats)
        distances = scaled_distances(stats, self.problem.observed, scale)
        order = np.argsort(distances, kind="stable")[: self.num_particles]
        state = smc_abc_init(u_all[order], jnp.asarray(distances[order], u_all.dtype))
        used = self.num_initial
        num_nan = int(np.sum(~np.all(np.isfinite(stats), axis=-1)))
        accepted = int(np.isfinite(distances[order]).sum())
        schedule, ess = [float(state.epsilon)], [float(effective_sample_size(state.log_weights))]
        rates, sims = [accepted / self.num_initial], [self.num_initial]
        incomplete = None
        # with no finite simulation in population 0 there is nothing to move: stop, and say so
        while accepted > 0 and used < self.num_simulations:
            key, key_step = jax.random.split(key)
            budget = jnp.asarray(self.num_simulations - used, jnp.int32)
            new_state, info = self._step(key_step, state, jnp.asarray(scale, u_all.dtype), budget)
            used += int(info.num_simulations)
            num_nan += int(info.num_nan)
            if not bool(info.complete):
                incomplete = {
                    "epsilon": float(info.epsilon),
                    "num_accepted": int(info.num_accepted),
                    "num_simulations": int(info.num_simulations),
                }
                break
            state = new_state
            schedule.append(float(info.epsilon))
            ess.append(float(info.ess))
            rates.append(float(info.acceptance_rate))
            sims.append(int(info.num_simulations))
        log_weights = np.asarray(state.log_weights, dtype=np.float64)
        info = {
            "epsilon": schedule[-1],
            "scale": np.asarray(scale),
            "epsilon_schedule": schedule,
            "ess": ess,
            "acceptance_rate": rates,
            "num_simulations": sims,
            "num_populations": len(schedule),
            "incomplete": incomplete,
        }
        messages = [
            nan_simulation_message("SMCABC", num_nan, used),
            degeneracy_warning("SMCABC", log_weights),
        ]
        if accepted == 0:
            messages.append(
                f"SMCABC: none of the {self.num_initial} prior simulations of population 0 had finite statistics; "
                "the run stopped there (check where the simulator returns NaN/inf)"
            )
        return ABCResult(
            algorithm="SMCABC",
            theta=np.asarray(jax.vmap(self.problem.flat_theta)(state.particles), dtype=np.float64),
            names=list(self.problem.names),
            sites=dict(self.problem.sites),
            log_weights=log_weights,
            num_simulations=used,
            num_nan_simulations=num_nan,
            distances=np.asarray(state.distances, dtype=np.float64),
            info=info,
            warnings=warn_unreliable(*messages),
        )

    @functools.partial(jax.jit, static_argnums=0)
    def _step(self, rng_key: Array, state: SMCABCState, scale: Array, budget: Array) -> tuple[SMCABCState, SMCABCInfo]:
        # one compilation per instance: the budget left and the scale are traced
        problem = self.problem
        observed = jnp.asarray(problem.observed, state.particles.dtype)
        return smc_abc_step(
            rng_key,
            state,
            problem.simulate_many,
            lambda stats: scaled_distances(stats, observed, scale),
            problem.log_prior,
            budget,
            alpha=self.alpha,
            kernel_scale=self.kernel_scale,
            batch_size=self.batch_size,
        )
