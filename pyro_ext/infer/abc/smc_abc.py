"""SMC-ABC in torch: population Monte Carlo ABC with an adaptive tolerance.

The twin of :mod:`numpyro_ext.infer.abc.smc_abc` (same class, arguments, messages).
Beaumont, Cornuet, Marin & Robert, "Adaptive approximate Bayesian computation", Biometrika 96,
2009 (PMC-ABC, their Algorithm 2); the tolerance schedule of Del Moral, Doucet & Jasra,
Statistics and Computing 22, 2012 (each tolerance from the previous population's distances), in
the quantile form of Drovandi & Pettitt, Biometrics 67, 2011 (as sbibm's SMC-ABC baseline).

Everything lives on the unconstrained vector ``u`` ``(D,)`` of the problem, where a Gaussian
kernel moves freely and ``pi(u)`` includes the Jacobian.  Population ``t = 0`` is rejection
ABC: ``num_initial`` prior simulations, the ``N`` closest kept with equal weights.  Population
``t >= 1`` with particles ``u_j``, normalised weights ``W_j`` and distances ``rho_j``::

    eps_t   = alpha-quantile of {rho_j}                                 (adaptive tolerance)
    Sigma_t = kernel_scale * sum_j W_j (u_j - mean)(u_j - mean)^T       (Beaumont et al.: 2 x cov)
    repeat until N accepted:  j ~ W,  u* ~ N(u_j, Sigma_t),  s ~ f(. | u*),  accept if rho(s, y) <= eps_t
    log w_i = log pi(u_i) - log sum_j W_j N(u_i; u_j, Sigma_t)          (Beaumont et al. 2009, Alg. 2)

so each population is an importance sample of ``pi_eps_t(u) ∝ pi(u) P(rho <= eps_t | u)`` from
the mixture proposal restricted to the acceptance region.  The run stops when
``num_simulations`` (every simulation, rejected and non-finite ones included) is spent; the
result is the last *complete* population with its weights (a population cut short by the budget
is reported in ``info`` and not used).

Layers: :class:`SMCABCState` / :class:`SMCABCInfo` and :func:`smc_abc_init` /
:func:`smc_abc_step` are plain torch functions, one population per step (batches of
``batch_size`` proposals); :class:`SMCABC` is the shell.  Simulations in a batch are used in
order, as a sequential sampler would: rows after the population filled are discarded unseen and
not counted; a batch never runs past the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from adapters.abc import ABCResult, degeneracy_warning, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive, check_positive_int, check_probability
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows
from pyro_ext.infer.abc.rejection import (
    check_problem,
    check_scale,
    new_generator,
    resolve_scale,
    scaled_distances,
    simulate_in_batches,
)
from pyro_ext.infer.smc_util import effective_sample_size, normalized_weights

__all__ = [
    "SMCABC",
    "SMCABCInfo",
    "SMCABCState",
    "kernel_covariance",
    "mixture_log_density",
    "smc_abc_init",
    "smc_abc_step",
]

Tensor = torch.Tensor


class SMCABCState(NamedTuple):
    """One population: ``particles`` ``(N, D)`` (unconstrained), ``log_weights`` ``(N,)``
    (unnormalised; ``-inf`` for an empty slot), ``distances`` ``(N,)`` and the ``epsilon`` ``()``
    it was accepted at."""

    particles: Tensor
    log_weights: Tensor
    distances: Tensor
    epsilon: Tensor


class SMCABCInfo(NamedTuple):
    """One population step: ``epsilon`` (its tolerance), ``num_simulations`` used (rejected and
    non-finite included), ``num_nan`` (non-finite among them), ``num_accepted`` (``N`` unless the
    budget ran out), ``acceptance_rate``, ``ess`` (Kish, of the new weights) and ``complete``."""

    epsilon: float
    num_simulations: int
    num_nan: int
    num_accepted: int
    acceptance_rate: float
    ess: float
    complete: bool


def smc_abc_init(particles: Tensor, distances: Tensor, log_weights: Tensor | None = None) -> SMCABCState:
    """The first population from ``particles`` ``(N, D)`` and their ``distances`` ``(N,)`` (the ``N``
    closest prior simulations): equal weights (``-inf`` where the distance is not finite), ``epsilon``
    the largest finite distance."""
    distances = torch.as_tensor(distances, dtype=particles.dtype)
    finite = torch.isfinite(distances)
    if log_weights is None:
        log_weights = torch.where(finite, 0.0, -math.inf).to(particles.dtype)
    epsilon = torch.where(finite, distances, torch.full_like(distances, -math.inf)).max()
    return SMCABCState(particles, torch.as_tensor(log_weights, dtype=particles.dtype), distances, epsilon)


def kernel_covariance(particles: Tensor, log_weights: Tensor, kernel_scale: float) -> Tensor:
    """``kernel_scale`` times the weighted covariance ``(D, D)`` of ``particles`` ``(N, D)``, with a
    relative jitter of ``sqrt(machine eps)`` so that a collapsed population still has a Cholesky factor."""
    weights = normalized_weights(log_weights)
    mean = weights @ particles
    centred = particles - mean
    cov = kernel_scale * (centred * weights[:, None]).T @ centred
    dim = particles.shape[-1]
    tiny = torch.finfo(particles.dtype).eps
    jitter = math.sqrt(tiny) * torch.trace(cov) / dim + tiny
    return cov + jitter * torch.eye(dim, dtype=particles.dtype)


def mixture_log_density(points: Tensor, centres: Tensor, log_weights: Tensor, chol: Tensor) -> Tensor:
    """``log sum_j W_j N(points_i; centres_j, L L^T)`` ``(M,)`` for ``points`` ``(M, D)``, ``centres``
    ``(N, D)``, unnormalised ``log_weights`` ``(N,)`` and the Cholesky factor ``chol`` ``(D, D)``."""
    dim = centres.shape[-1]
    shift = centres.mean(0)  # centring keeps |a|^2 + |b|^2 - 2 a.b accurate
    a = torch.linalg.solve_triangular(chol, (points - shift).T, upper=False).T
    b = torch.linalg.solve_triangular(chol, (centres - shift).T, upper=False).T
    sq = ((a**2).sum(-1)[:, None] + (b**2).sum(-1)[None, :] - 2.0 * a @ b.T).clamp(min=0.0)
    log_norm = torch.log(torch.diagonal(chol)).sum() + 0.5 * dim * math.log(2.0 * math.pi)
    log_w = torch.log(normalized_weights(log_weights))
    return torch.logsumexp(log_w[None, :] - 0.5 * sq, dim=-1) - log_norm


def smc_abc_step(
    state: SMCABCState,
    simulate_fn: Callable[[Tensor], Tensor],
    distance_fn: Callable[[Tensor], Tensor],
    log_prior_fn: Callable[[Tensor], Tensor],
    max_simulations: int,
    *,
    alpha: float = 0.5,
    kernel_scale: float = 2.0,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[SMCABCState, SMCABCInfo]:
    """One PMC-ABC population (Beaumont et al. 2009, Alg. 2) at ``eps = alpha``-quantile of ``state.distances``.

    ``simulate_fn(u (B, D)) -> stats (B, d)`` (its own random stream); ``distance_fn(stats) -> (B,)``
    (``inf`` for a non-finite row); ``log_prior_fn(u (M, D)) -> (M,)`` on the unconstrained space;
    ``max_simulations``: the budget left.  Parents and kernel moves are drawn from ``generator``
    (torch's global one by default).  Proposals come in batches of ``batch_size`` until ``N`` are
    accepted or the budget is spent; an incomplete population has ``-inf`` weights in its empty
    slots and ``info.complete`` false.
    """
    particles = state.particles
    num, dim = particles.shape
    dtype = particles.dtype
    valid = torch.isfinite(state.log_weights)
    epsilon = torch.nanquantile(torch.where(valid, state.distances, math.nan), alpha).to(dtype)
    log_w = torch.where(valid, state.log_weights, -math.inf)
    chol = torch.linalg.cholesky(kernel_covariance(particles, log_w, kernel_scale))
    weights = normalized_weights(log_w)
    new_particles = torch.zeros_like(particles)
    new_distances = torch.full((num,), math.inf, dtype=dtype)
    accepted = used = num_nan = 0
    while accepted < num and used < max_simulations:
        size = min(batch_size, max_simulations - used)  # never past the budget
        # PMC draws each proposal's parent independently from the weights (Beaumont et al. 2009)
        parents = torch.multinomial(weights, size, replacement=True, generator=generator)
        noise = torch.randn(size, dim, dtype=dtype, generator=generator)
        u = particles[parents] + noise @ chol.T
        stats = simulate_fn(u)
        distances = distance_fn(stats).to(dtype)
        finite = finite_rows(stats)
        hit = finite & (distances <= epsilon)
        count = accepted + torch.cumsum(hit.long(), 0)
        # a sequential sampler stops at the N-th acceptance: later rows are never used
        rows_used = (count - hit.long()) < num
        take = hit & (count <= num)
        slots = count[take] - 1
        new_particles[slots] = u[take]
        new_distances[slots] = distances[take]
        accepted = min(int(count[-1]), num)
        used += int(rows_used.sum())
        num_nan += int((rows_used & ~finite).sum())
    filled = torch.arange(num) < accepted
    log_prior = log_prior_fn(new_particles)
    log_proposal = mixture_log_density(new_particles, particles, log_w, chol)
    new_log_w = torch.where(filled, log_prior - log_proposal, -math.inf)
    info = SMCABCInfo(
        epsilon=float(epsilon),
        num_simulations=used,
        num_nan=num_nan,
        num_accepted=accepted,
        acceptance_rate=accepted / max(used, 1),
        ess=float(effective_sample_size(new_log_w)),
        complete=accepted == num,
    )
    return SMCABCState(new_particles, new_log_w, new_distances, epsilon), info


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
class SMCABC:
    """SMC-ABC (population Monte Carlo ABC, adaptive tolerance) on a likelihood-free problem.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem`.
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
        batch_size: proposals simulated per simulator call (default ``N``).

    :meth:`run` (after ``pyro.set_rng_seed``) returns an :class:`~adapters.abc.ABCResult` of the last
    complete population with its ``log_weights`` and ``distances``; ``info`` holds ``epsilon`` (its
    tolerance), ``scale``, per population ``epsilon_schedule``, ``ess``, ``acceptance_rate`` and
    ``num_simulations`` (population 0 first), and ``incomplete`` (the tolerance and acceptances of
    a population the budget cut short, or ``None``).
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

    def run(self) -> ABCResult:
        """Population 0 by rejection, then PMC-ABC populations until the budget is spent.
        Randomness: torch's global generator (``pyro.set_rng_seed``)."""
        problem = self.problem
        u = problem.sample_prior(self.num_initial)
        simulations = new_generator()
        stats = simulate_in_batches(problem, u, simulations, self.batch_size)
        scale = resolve_scale(self.scale, stats)
        observed = torch.as_tensor(problem.observed, dtype=stats.dtype)

        def distance_fn(s: Tensor) -> Tensor:
            return scaled_distances(s, observed, scale)

        def simulate_fn(v: Tensor) -> Tensor:
            return simulate_in_batches(problem, v, simulations, self.batch_size)

        def log_prior_fn(v: Tensor) -> Tensor:
            with torch.no_grad():
                return problem.log_prior(v)

        distances = distance_fn(stats)
        order = torch.from_numpy(np.argsort(distances.double().numpy(), kind="stable")[: self.num_particles])
        state = smc_abc_init(u[order], distances[order])
        used = self.num_initial
        num_nan = int((~finite_rows(stats)).sum())
        accepted = int(torch.isfinite(state.distances).sum())
        schedule, ess = [float(state.epsilon)], [float(effective_sample_size(state.log_weights))]
        rates, sims = [accepted / self.num_initial], [self.num_initial]
        incomplete = None
        while used < self.num_simulations:
            new_state, info = smc_abc_step(
                state,
                simulate_fn,
                distance_fn,
                log_prior_fn,
                self.num_simulations - used,
                alpha=self.alpha,
                kernel_scale=self.kernel_scale,
                batch_size=self.batch_size,
            )
            used += info.num_simulations
            num_nan += info.num_nan
            if not info.complete:
                incomplete = {
                    "epsilon": info.epsilon,
                    "num_accepted": info.num_accepted,
                    "num_simulations": info.num_simulations,
                }
                break
            state = new_state
            schedule.append(info.epsilon)
            ess.append(info.ess)
            rates.append(info.acceptance_rate)
            sims.append(info.num_simulations)
        log_weights = state.log_weights.double().numpy()
        info = {
            "epsilon": schedule[-1],
            "scale": scale.double().numpy(),
            "epsilon_schedule": schedule,
            "ess": ess,
            "acceptance_rate": rates,
            "num_simulations": sims,
            "num_populations": len(schedule),
            "incomplete": incomplete,
        }
        messages = [nan_simulation_message("SMCABC", num_nan, used), degeneracy_warning("SMCABC", log_weights)]
        with torch.no_grad():
            theta = problem.flat_theta(state.particles).double().numpy()
        return ABCResult(
            algorithm="SMCABC",
            theta=theta,
            names=list(problem.names),
            sites=dict(problem.sites),
            log_weights=log_weights,
            num_simulations=used,
            num_nan_simulations=num_nan,
            distances=state.distances.double().numpy(),
            info=info,
            warnings=warn_unreliable(*messages),
        )
