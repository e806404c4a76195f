"""POPE in torch: post-optimisation posterior evaluation of a simulator against an "at least as good as" target.

The torch twin of :mod:`numpyro_ext.infer.abc.pope` (same class, arguments, defaults, ``info`` keys
and messages).  Meeds, Chiang, Lee, Cinquin, Lowengrub & Welling, "POPE: post optimization
posterior evaluation of likelihood free models", BMC Bioinformatics 16:264 (2015).  The
"observation" is a target ``y`` that a good simulation should reach or beat in every statistic
(``direction="below"``: at most ``y_j``, e.g. an error; ``"above"``: at least ``y_j``, e.g. a
fitness), and the posterior is the prior times the probability of doing so,

    pi(theta | y) ∝ p(theta) prod_j Phi(+-(y_j - f_j(theta)) / sqrt(sigma_j^2 + epsilon^2)),

the one-sided kernel of :func:`pyro_ext.infer.abc.one_sided_log_likelihood` with the Gaussian-
process surrogate's mean ``f_j`` and noise ``sigma_j^2`` of each statistic.  Two phases:

1. **Bayesian optimisation** toward the target: ``num_initial_simulations`` prior draws, then
   ``num_bo_iterations`` rounds that fit the surrogate (the GPyTorch surrogate of
   :mod:`pyro_ext.infer.abc.gpsabc`) and simulate once at the candidate maximising the
   optimistic one-sided log posterior

       a(u) = log p(u) + sum_j log Phi(+-(y_j - f_j^opt(u)) / sqrt(sigma_j^2 + epsilon^2)),
       f_j^opt = mean_j(u) -+ kappa sd_j(u)   (the confidence bound on the target's side),

   an upper confidence bound (GP-UCB style) of the log posterior: it exploits where the surrogate
   already predicts the target is met and explores where it is unsure.  Candidates:
   ``num_candidates`` points, half prior draws and half Gaussian steps (``proposal_scale``) around
   the incumbent (the training location with the largest ``log p(u)`` plus the surrogate's mean
   one-sided log likelihood), all scored in one batch.  The acquisition is this module's choice,
   stated as such: only the paper's abstract could be read while it was written.
2. **GPS-ABC** (:class:`~pyro_ext.infer.abc.gpsabc.GPSABC`, with the one-sided likelihood)
   started at the incumbent, its surrogate built on every simulation of phase 1.

:class:`POPE` returns an :class:`adapters.abc.ABCResult` like GPS-ABC's, with the optimisation's
record in ``info`` (``bo_u``, ``bo_acquisition``, ``bo_incumbent_u``, ``bo_incumbent_theta``,
``bo_incumbent_stats``, ``num_bo_simulations``).  Randomness: torch's global generator
(``pyro.set_rng_seed``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from adapters.abc import ABCResult
from adapters.validation import check_choice, check_non_negative, check_positive_int
from pyro_ext.infer.abc.gpsabc import (
    GPSABC,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    add_simulations,
    empty_data,
    predict_marginal,
    surrogate_log_likelihood,
)
from pyro_ext.infer.abc.likelihoods import DIRECTIONS
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem
from pyro_ext.infer.abc.rejection import new_generator

__all__ = ["POPE", "optimistic_log_posterior"]

Tensor = torch.Tensor


def optimistic_log_posterior(surrogate: Surrogate, u: Tensor, config: StepConfig, kappa: float) -> Tensor:
    """``a(u)`` at ``k`` points ``u`` ``(k, D)`` (one batch): ``log p(u)`` plus the one-sided log
    likelihood of the surrogate's mean moved ``kappa`` posterior sds toward the target (``kappa = 0``:
    the mean)."""
    observed = torch.as_tensor(config.problem.observed, dtype=u.dtype)
    sign = -1.0 if config.likelihood == "below" else 1.0
    loc, var, noise = predict_marginal(surrogate, u)  # (d, k), (d, k), (d,)
    f = (loc + sign * kappa * torch.sqrt(var.clamp(min=0.0))).T
    with torch.no_grad():
        value = config.problem.log_prior(u) + surrogate_log_likelihood(
            f, noise, observed, config.epsilon, config.likelihood
        )
    return torch.where(torch.isnan(value), -math.inf, value)


class POPE(GPSABC):
    """POPE (Meeds et al. 2015): Bayesian optimisation toward a one-sided target, then GPS-ABC
    with the one-sided likelihood.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem` whose ``observed`` is the target ``y``.
        direction: ``"below"`` (a good simulation has every statistic at most ``y_j``) or ``"above"``.
        num_bo_iterations: simulations of the optimisation phase after its initial design (one each).
        num_candidates: candidates scored per optimisation round.
        kappa: ``kappa >= 0``, the confidence bound's width in the acquisition.
        num_initial_simulations: prior draws simulated before the optimisation (``num_initial_repeats``
            simulations each, a GPS-ABC setting).
        **kwargs: the settings of the GPS-ABC phase (:class:`~pyro_ext.infer.abc.gpsabc.GPSABC`:
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
        scores = optimistic_log_posterior(surrogate, data.u, config, 0.0)
        scores = torch.where(data.mask, scores, -math.inf)
        return int(torch.argmax(scores))

    def run(self, num_samples: int = 1000, num_warmup: int = 200) -> ABCResult:
        """The optimisation phase, then ``num_warmup + num_samples`` GPS-ABC steps from its incumbent.
        Randomness: torch's global generator (``pyro.set_rng_seed``)."""
        num_samples = check_positive_int("num_samples", num_samples)
        num_warmup = check_positive_int("num_warmup", num_warmup, allow_zero=True)
        problem, config = self.problem, self._config()
        generator = new_generator()
        n0, repeats = self.num_initial_simulations, self.num_initial_repeats
        u = problem.sample_prior(n0)
        with torch.no_grad():
            stats = problem.simulate(u.repeat_interleave(repeats, 0), generator)
        data = add_design(empty_data(problem.dim, problem.stat_dim, u.dtype), u, stats, repeats)
        num_nan = n0 * repeats - int(data.n[:n0].sum())
        surrogate, _ = self._fit(None, data)
        scale = torch.as_tensor(self.proposal_scale, dtype=u.dtype)
        bo_u, bo_acquisition = [], []
        for _ in range(self.num_bo_iterations):
            best = data.u[self._incumbent(surrogate, data, config)]
            n_prior = self.num_candidates // 2
            local = best + scale * torch.randn(self.num_candidates - n_prior, problem.dim, dtype=u.dtype)
            candidates = torch.cat([problem.sample_prior(n_prior).to(u.dtype), local])
            scores = optimistic_log_posterior(surrogate, candidates, config, self.kappa)
            j = int(torch.argmax(scores))
            with torch.no_grad():
                new = problem.simulate(candidates[j : j + 1], generator)
            data = add_simulations(data, data.count, candidates[j], new)
            num_nan += int(~data.mask[-1])
            bo_u.append(candidates[j].double().numpy())
            bo_acquisition.append(float(scores[j]))
            surrogate, _ = self._fit(surrogate.params, data)
        num_bo = n0 * repeats + self.num_bo_iterations
        best = self._incumbent(surrogate, data, config)
        u0 = data.u[best]
        with torch.no_grad():
            theta0 = problem.flat_theta(u0[None])[0]
        extra = {
            "bo_u": np.asarray(bo_u).reshape(-1, problem.dim),
            "bo_acquisition": np.asarray(bo_acquisition),
            "bo_incumbent_u": u0.double().numpy(),
            "bo_incumbent_theta": theta0.double().numpy(),
            "bo_incumbent_stats": data.mean[best].double().numpy(),
            "num_bo_simulations": num_bo,
            "direction": self.direction,
        }
        return self._chain(generator, u0, data, num_bo, num_nan, num_samples, num_warmup, extra)
