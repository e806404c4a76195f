"""POPE in JAX: post-optimisation posterior evaluation of a simulator against an "at least as good as" target.

Meeds, Chiang, Lee, Cinquin, Lowengrub & Welling, "POPE: post optimization posterior evaluation
of likelihood free models", BMC Bioinformatics 16:264 (2015).  The "observation" is a target ``y``
that a good simulation should reach or beat in every statistic (``direction="below"``: at most
``y_j``, e.g. an error; ``"above"``: at least ``y_j``, e.g. a fitness), and the posterior is the
prior times the probability of doing so,

    pi(theta | y) ∝ p(theta) prod_j Phi(+-(y_j - f_j(theta)) / sqrt(sigma_j^2 + epsilon^2)),

the one-sided kernel of :func:`numpyro_ext.infer.abc.one_sided_log_likelihood` with the Gaussian-
process surrogate's mean ``f_j`` and noise ``sigma_j^2`` of each statistic.  Two phases:

1. **Bayesian optimisation** toward the target: ``num_initial_simulations`` prior draws, then
   ``num_bo_iterations`` rounds that fit the surrogate (the GPS-ABC surrogate of
   :mod:`numpyro_ext.infer.abc.gpsabc`) and simulate once at the candidate maximising the
   optimistic one-sided log posterior

       a(u) = log p(u) + sum_j log Phi(+-(y_j - f_j^opt(u)) / sqrt(sigma_j^2 + epsilon^2)),
       f_j^opt = mean_j(u) -+ kappa sd_j(u)   (the confidence bound on the target's side),

   an upper confidence bound (GP-UCB style) of the log posterior: it exploits where the surrogate
   already predicts the target is met and explores where it is unsure.  Candidates:
   ``num_candidates`` points, half prior draws and half Gaussian steps (``proposal_scale``) around
   the incumbent (the training location with the largest ``log p(u)`` plus the surrogate's mean
   one-sided log likelihood).  The acquisition is this module's choice, stated as such: only the
   paper's abstract could be read while it was written.
2. **GPS-ABC** (:class:`~numpyro_ext.infer.abc.gpsabc.GPSABC`, with the one-sided likelihood)
   started at the incumbent, its surrogate built on every simulation of phase 1.

:class:`POPE` returns an :class:`adapters.abc.ABCResult` like GPS-ABC's, with the optimisation's
record in ``info`` (``bo_u``, ``bo_acquisition``, ``bo_incumbent_u``, ``bo_incumbent_theta``,
``bo_incumbent_stats``, ``num_bo_simulations``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.abc import ABCResult
from adapters.validation import check_choice, check_non_negative, check_positive_int
from numpyro_ext.infer.abc.gpsabc import (
    GPSABC,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    add_simulations,
    capacity_for,
    empty_data,
    grow,
    predict,
    surrogate_log_likelihood,
)
from numpyro_ext.infer.abc.likelihoods import DIRECTIONS
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem
from numpyro_ext.infer.abc.rejection import check_rng_key

__all__ = ["POPE", "optimistic_log_posterior"]

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("config", "kappa"))
def optimistic_log_posterior(
    surrogate: Surrogate, data: SurrogateData, u: Array, config: StepConfig, kappa: float
) -> Array:
    """``a(u)`` at ``k`` points ``u`` ``(k, D)``: ``log p(u)`` plus the one-sided log likelihood of
    the surrogate's mean moved ``kappa`` posterior sds toward the target (``kappa = 0``: the mean)."""
    observed = jnp.asarray(config.problem.observed, data.mean.dtype)
    sign = -1.0 if config.likelihood == "below" else 1.0

    def one(point: Array) -> Array:
        loc, cov, noise = predict(surrogate, data, point[None])
        f = loc[:, 0] + sign * kappa * jnp.sqrt(jnp.maximum(cov[:, 0, 0], 0.0))
        value = config.problem.log_prior(point) + surrogate_log_likelihood(
            f, noise, observed, config.epsilon, config.likelihood
        )
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    return jax.vmap(one)(u)


@functools.partial(jax.jit, static_argnames=("problem",))
def _simulate_at(problem: LikelihoodFreeProblem, data: SurrogateData, u: Array, key: Array) -> SurrogateData:
    return add_simulations(data, data.count, u, problem.simulate(u, key)[None])


class POPE(GPSABC):
    """POPE (Meeds et al. 2015): Bayesian optimisation toward a one-sided target, then GPS-ABC
    with the one-sided likelihood.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem` whose ``observed`` is the target ``y``.
        direction: ``"below"`` (a good simulation has every statistic at most ``y_j``) or ``"above"``.
        num_bo_iterations: simulations of the optimisation phase after its initial design (one each).
        num_candidates: candidates scored per optimisation round.
        kappa: ``kappa >= 0``, the confidence bound's width in the acquisition.
        num_initial_simulations: prior draws simulated before the optimisation (``num_initial_repeats``
            simulations each, a GPS-ABC setting).
        **kwargs: the settings of the GPS-ABC phase (:class:`~numpyro_ext.infer.abc.gpsabc.GPSABC`:
            ``xi``, ``num_surrogate_draws``, ``proposal_scale``, ``epsilon``, ``delta_s``,
            ``max_acquisitions``, ``acquisition``, ``refit_growth``, ``num_fit_steps``,
            ``fit_learning_rate``, ``progress_bar``); ``proposal_scale`` also sets the local
            candidates' spread.
    """

    algorithm = "POPE"

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        direction: str = "below",
        num_bo_iterations: int = 30,
        num_candidates: int = 1000,
        kappa: float = 2.0,
        num_initial_simulations: int = 20,
        **kwargs: Any,
    ):
        super().__init__(problem, num_initial_simulations=num_initial_simulations, **kwargs)
        self.direction = check_choice("direction", direction, DIRECTIONS)
        self._likelihood = self.direction
        self.num_bo_iterations = check_positive_int("num_bo_iterations", num_bo_iterations, allow_zero=True)
        self.num_candidates = check_positive_int("num_candidates", num_candidates)
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be at least 2 (global and local), got {num_candidates}")
        self.kappa = check_non_negative("kappa", kappa)

    def _incumbent(self, surrogate: Surrogate, data: SurrogateData, config: StepConfig) -> int:
        count = int(data.count)
        scores = np.asarray(optimistic_log_posterior(surrogate, data, data.u, config, 0.0))[:count]
        scores = np.where(np.asarray(data.mask[:count]), scores, -np.inf)
        return int(np.argmax(scores))

    def run(self, rng_key: Array, num_samples: int = 1000, num_warmup: int = 200) -> ABCResult:
        """The optimisation phase, then ``num_warmup + num_samples`` GPS-ABC steps from its incumbent."""
        rng_key = check_rng_key(rng_key)
        num_samples = check_positive_int("num_samples", num_samples)
        num_warmup = check_positive_int("num_warmup", num_warmup, allow_zero=True)
        problem, config = self.problem, self._config()
        key_design, key_bo, key_chain = jax.random.split(rng_key, 3)
        n0, repeats = self.num_initial_simulations, self.num_initial_repeats
        key_u, key_sim = jax.random.split(key_design)
        u = problem.sample_prior(key_u, n0)
        stats = problem.simulate_many(jnp.repeat(u, repeats, axis=0), jax.random.split(key_sim, n0 * repeats))
        capacity = capacity_for(n0 + self.num_bo_iterations + 2)
        data = add_design(empty_data(capacity, problem.dim, problem.stat_dim, u.dtype), u, stats, repeats)
        num_nan = n0 * repeats - int(jnp.sum(data.n[:n0]))
        surrogate, _ = self._fit(None, data)
        scale = jnp.asarray(self.proposal_scale, u.dtype)
        bo_u, bo_acquisition = [], []
        for i in range(self.num_bo_iterations):
            k_prior, k_local, k_sim = jax.random.split(jax.random.fold_in(key_bo, i), 3)
            best = data.u[self._incumbent(surrogate, data, config)]
            n_prior = self.num_candidates // 2
            local = best + scale * jax.random.normal(k_local, (self.num_candidates - n_prior, problem.dim), u.dtype)
            candidates = jnp.concatenate([problem.sample_prior(k_prior, n_prior), local])
            scores = optimistic_log_posterior(surrogate, data, candidates, config, self.kappa)
            j = int(jnp.argmax(scores))
            data = _simulate_at(problem, data, candidates[j], k_sim)
            num_nan += int(~data.mask[int(data.count) - 1])
            bo_u.append(np.asarray(candidates[j]))
            bo_acquisition.append(float(scores[j]))
            surrogate, _ = self._fit(surrogate.params, data)
        num_bo = n0 * repeats + self.num_bo_iterations
        best = self._incumbent(surrogate, data, config)
        u0 = data.u[best]
        extra = {
            "bo_u": np.asarray(bo_u).reshape(-1, problem.dim),
            "bo_acquisition": np.asarray(bo_acquisition),
            "bo_incumbent_u": np.asarray(u0),
            "bo_incumbent_theta": np.asarray(problem.flat_theta(u0)),
            "bo_incumbent_stats": np.asarray(data.mean[best]),
            "num_bo_simulations": num_bo,
            "direction": self.direction,
        }
        data = grow(data, capacity_for(int(data.count) + 2 * n0))
        return self._chain(key_chain, u0, data, num_bo, num_nan, num_samples, num_warmup, extra)
