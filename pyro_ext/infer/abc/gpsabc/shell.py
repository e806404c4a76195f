"""The GPS-ABC object: runs the chain of :func:`~pyro_ext.infer.abc.gpsabc.core.gpsabc_step`.

See :mod:`pyro_ext.infer.abc.gpsabc` for the algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from adapters.abc import ABCResult, check_gpsabc_settings, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive_int
from pyro_ext.infer.abc.gpsabc import core
from pyro_ext.infer.abc.gpsabc.core import (
    GPParams,
    GPSABCState,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    default_params,
    empty_data,
    fit_standardizer,
)
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows
from pyro_ext.infer.abc.rejection import (
    check_problem,
    mad_scale,
    new_generator,
    scaled_distances,
    simulate_in_batches,
)

__all__ = ["GPSABC"]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
def _batch_of_one(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Mapping):
        return {k: torch.as_tensor(v, dtype=dtype)[None] for k, v in value.items()}
    return torch.as_tensor(value, dtype=dtype)[None]


class GPSABC:
    """GPS-ABC (Meeds & Welling 2014): Metropolis-Hastings on a GP surrogate of the statistics,
    simulating only where the surrogate is too unsure of the accept/reject decision.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem`.
        xi: ``xi`` in ``(0, 0.5)``, the largest tolerated decision error ``E(u_mh)`` of a step.
        num_surrogate_draws: ``M``, joint surrogate draws at ``(u, u')`` per evaluation of the error.
        proposal_scale: sd of the Gaussian random walk on the unconstrained ``u`` (a number or ``(D,)``).
        num_initial_simulations: the initial design's locations: the start ``u0`` and
            ``u0 + proposal_scale * z``, ``z ~ N(0, I)``.
        num_initial_repeats: simulations at each location of the initial design: with 2 or more the
            design holds ``num_initial_simulations * (num_initial_repeats - 1)`` degrees of freedom of
            within-location scatter, which pin each statistic's noise ``sigma_j^2``.
        noise: ``"fit"`` (``sigma_j^2`` fitted by the marginal likelihood of every simulation, the
            repeats' within-location term included) or ``"repeats"`` (fixed at each fit to the pooled
            within-location variance, :func:`~pyro_ext.infer.abc.gpsabc.core.pooled_noise_variance`;
            needs ``num_initial_repeats >= 2``).  The NumPyro twin's docstring gives the measurements.
        epsilon: ``epsilon >= 0``, added as ``epsilon^2`` to every statistic's noise variance.
        delta_s: ``Delta S``, simulations per acquisition round (all at the chosen point, one batch).
        max_acquisitions: acquisition rounds at most per MH step.
        max_simulations: ``None`` (no stop) or the most simulations of the run, the pilot, the
            initial design and the acquisitions together (at least the initial design's).  When another
            round of ``delta_s`` would pass it, the chain goes on with the surrogate as it is, without
            acquiring: every later step decides by the surrogate's median, whatever its decision error
            (counted per step as ``out_of_budget``), so the run ends with at most ``max_simulations``.
        acquisition: ``"variance"`` (at ``u`` or ``u'``, the one whose surrogate log likelihood
            varies more over the ``M`` draws) or ``"random"`` (either with probability 1/2).
        num_pilot_draws: without ``init_params``, the chain starts at the closest (MAD-scaled
            distance) of this many prior-predictive simulations (counted, not used by the surrogate).
        refit_growth: refit the hyperparameters when the training set has grown by this factor
            (``> 1``) since the last fit; between fits every acquisition re-conditions the GP.
        num_fit_steps: Adam steps of a hyperparameter fit (the first from a default start, later
            ones warm-started).
        fit_learning_rate: Adam's step size for the fits (standardised log-hyperparameters).
        progress_bar: show a tqdm progress bar over the MH steps.

    :meth:`run` (after ``pyro.set_rng_seed``: proposals, uniforms and surrogate draws come from
    torch's global generator, the simulations from one ``torch.Generator`` seeded from it) returns an
    :class:`~adapters.abc.ABCResult` of the chain's post-warmup constrained draws (equal weights);
    ``num_simulations`` counts the pilot, the initial design and every acquisition.  ``info``:
    ``num_simulations_trace`` (cumulative simulations after each iteration, warmup included),
    ``decision_error``, ``acceptance_probability`` (``tau``), ``accepted``, ``num_rounds``,
    ``capped`` and ``failed`` per iteration, ``log_u`` and ``proposals`` (unconstrained) per
    iteration, ``chain`` (the unconstrained position before each iteration and after the last,
    ``(n + 1, D)``), ``acquisitions`` (rounds in all), ``num_capped``, ``refits`` (a list of
    ``{iteration, num_training, log_marginal_likelihood}``), the final ``gp_params`` and
    ``standardizer`` (NumPy), the training set by location (``training_u``, ``training_mean``,
    ``training_n``), ``acceptance_rate`` (post-warmup), ``compilations`` (empty: torch compiles
    nothing; the NumPyro twin lists its buffer sizes there), ``noise`` and ``noise_variance`` (each
    statistic's ``sigma_j^2`` in use at the end, own scale), ``pooled_noise_variance`` and
    ``pooled_noise_dof`` (the repeats' estimate and its degrees of freedom), ``max_simulations``,
    ``out_of_budget`` per iteration, ``num_out_of_budget`` and ``budget_exhausted_at`` (the first
    iteration that the budget stopped from acquiring, or ``None``).
    """

    algorithm = "GPSABC"
    _likelihood = "gaussian"

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        xi: float = 0.1,
        num_surrogate_draws: int = 50,
        proposal_scale: Any = 0.1,
        num_initial_simulations: int = 20,
        num_initial_repeats: int = 2,
        noise: str = "fit",
        epsilon: float = 0.0,
        delta_s: int = 1,
        max_acquisitions: int = 10,
        max_simulations: int | None = None,
        acquisition: str = "variance",
        num_pilot_draws: int = 200,
        refit_growth: float = 1.5,
        num_fit_steps: int = 300,
        fit_learning_rate: float = 0.05,
        progress_bar: bool = False,
    ):
        self.problem = check_problem(problem, self.algorithm)
        settings = check_gpsabc_settings(
            problem.dim,
            xi,
            num_surrogate_draws,
            proposal_scale,
            num_initial_simulations,
            epsilon,
            delta_s,
            max_acquisitions,
            acquisition,
            num_pilot_draws,
            refit_growth,
            num_fit_steps,
            fit_learning_rate,
            progress_bar,
            num_initial_repeats,
            noise,
            max_simulations,
        )
        for name, value in settings.items():
            setattr(self, name, value)

    # ---- set-up ---------------------------------------------------------------------------
    def _config(self) -> StepConfig:
        return StepConfig(
            self.problem,
            self._likelihood,
            self.epsilon,
            self.xi,
            self.num_surrogate_draws,
            self.delta_s,
            self.max_acquisitions,
            self.acquisition,
            self.max_simulations,
        )

    def _start(self, generator: torch.Generator, init_params: Any) -> tuple[Tensor, int, int]:
        """The chain's start ``u0`` and the simulations (all, non-finite) spent finding it."""
        problem = self.problem
        if init_params is not None:
            try:
                u0 = problem.unconstrain(_batch_of_one(init_params, problem.dtype))
            except (TypeError, ValueError, RuntimeError):
                u0 = None
            if u0 is None or u0.shape != (1, problem.dim) or not bool(torch.isfinite(u0).all()):
                raise ValueError(
                    f"init_params: expected a value of the prior's support, of {problem.dim} number(s) in all, "
                    f"got {init_params!r}"
                )
            return u0[0], 0, 0
        n = self.num_pilot_draws
        u = problem.sample_prior(n)
        stats = simulate_in_batches(problem, u, generator, n)
        observed = torch.as_tensor(problem.observed, dtype=stats.dtype)
        distances = scaled_distances(stats, observed, mad_scale(stats))
        num_nan = int((~finite_rows(stats)).sum())
        if not bool(torch.isfinite(distances).any()):
            raise ValueError(
                f"{self.algorithm}: all {n} pilot simulations at prior draws gave non-finite statistics; "
                "check the simulator or pass init_params"
            )
        return u[int(torch.argmin(distances))], n, num_nan

    def _initial_design(self, generator: torch.Generator, u0: Tensor) -> SurrogateData:
        n, r = self.num_initial_simulations, self.num_initial_repeats
        z = torch.randn(n, self.problem.dim, dtype=u0.dtype)
        z[0] = 0.0
        u = u0 + torch.as_tensor(self.proposal_scale, dtype=u0.dtype) * z
        with torch.no_grad():
            stats = self.problem.simulate(u.repeat_interleave(r, 0), generator)
        return add_design(empty_data(self.problem.dim, self.problem.stat_dim, u0.dtype), u, stats, r)

    def _fit(self, params: GPParams | None, data: SurrogateData) -> tuple[Surrogate, float]:
        num_finite = int(data.mask.sum())
        if num_finite < 2:
            raise ValueError(
                f"{self.algorithm}: only {num_finite} of {data.count} simulations have finite statistics, too few "
                "to fit the Gaussian-process surrogate; check the simulator's NaN/inf outputs near the start"
            )
        standardizer = fit_standardizer(data)
        if params is None:
            params = default_params(self.problem.dim, self.problem.stat_dim, data.u.dtype)
        fix_noise = self.noise == "repeats"
        if fix_noise and core.pooled_noise_variance(data)[1] < 1:
            raise ValueError(
                f"{self.algorithm}: noise='repeats' needs repeated simulations at a location, and no location of the "
                "training set holds two finite ones; raise num_initial_repeats or use noise='fit'"
            )
        params, lml = core.fit_hyperparameters(
            params, data, standardizer, self.num_fit_steps, self.fit_learning_rate, fix_noise
        )
        lml = float(lml)
        if not (math.isfinite(lml) and all(bool(torch.isfinite(leaf).all()) for leaf in params)):
            raise ValueError(
                f"{self.algorithm}: the Gaussian-process surrogate failed to fit: its log marginal likelihood is {lml} "
                f"on {num_finite} simulations; the statistics may be constant, too large, or not smooth in theta"
            )
        return core.condition_surrogate(params, standardizer, data), lml

    # ---- the chain ---------------------------------------------------------------------------
    def run(self, num_samples: int = 1000, num_warmup: int = 200, init_params: Any = None) -> ABCResult:
        """Start (``init_params``, constrained, or the best pilot draw), simulate the initial design,
        fit the surrogate and run ``num_warmup + num_samples`` MH steps; returns the post-warmup draws.
        Randomness: torch's global generator (``pyro.set_rng_seed``)."""
        num_samples = check_positive_int("num_samples", num_samples)
        num_warmup = check_positive_int("num_warmup", num_warmup, allow_zero=True)
        generator = new_generator()
        u0, num_sim, num_nan = self._start(generator, init_params)
        data = self._initial_design(generator, u0)
        design = self.num_initial_simulations * self.num_initial_repeats
        num_nan += design - int(data.n[: self.num_initial_simulations].sum())
        num_sim += design
        return self._chain(generator, u0, data, num_sim, num_nan, num_samples, num_warmup, {})

    def _chain(
        self,
        generator: torch.Generator,
        u0: Tensor,
        data: SurrogateData,
        num_sim: int,
        num_nan: int,
        num_samples: int,
        num_warmup: int,
        extra_info: dict,
    ) -> ABCResult:
        from tqdm.auto import tqdm

        config = self._config()
        if self.max_simulations is not None and num_sim > self.max_simulations:
            raise ValueError(
                f"{self.algorithm}: max_simulations = {self.max_simulations} is less than the {num_sim} simulations "
                "spent before the chain (pilot or optimisation and initial design); raise it, or pass init_params"
            )
        surrogate, lml = self._fit(None, data)
        refits = [{"iteration": 0, "num_training": data.count, "log_marginal_likelihood": lml}]
        count_at_fit = data.count
        with torch.no_grad():
            log_prior0 = self.problem.log_prior(u0[None])[0]
        if not bool(torch.isfinite(log_prior0)):
            raise ValueError(f"{self.algorithm}: the start has zero prior density (log prior {float(log_prior0)})")
        # the start's slot in the training set, if it has simulations there (GPSABC.run: the design's first)
        same = torch.nonzero((data.u == u0).all(1) & data.mask).flatten()
        row0 = int(same[0]) if same.numel() else -1
        state = GPSABCState(u0, log_prior0, row0, data, surrogate, num_sim, num_nan)
        scale = torch.as_tensor(self.proposal_scale, dtype=u0.dtype)
        total = num_warmup + num_samples
        infos, positions, sim_trace = [], [u0], []
        for i in tqdm(range(total), disable=not self.progress_bar, desc=self.algorithm):
            with torch.no_grad():
                state, info = core.gpsabc_step(state, scale, config, generator)
            infos.append(info)
            positions.append(state.position)
            sim_trace.append(state.num_simulations)
            count = state.data.count
            if count >= self.refit_growth * count_at_fit:
                surrogate, lml = self._fit(state.surrogate.params, state.data)
                state = state._replace(surrogate=surrogate)
                refits.append({"iteration": i + 1, "num_training": count, "log_marginal_likelihood": lml})
                count_at_fit = count
        chain = torch.stack(positions)
        with torch.no_grad():
            theta = self.problem.flat_theta(chain[num_warmup + 1 :]).double().numpy()
        column = {
            name: np.asarray([getattr(x, name) for x in infos]) for name in infos[0]._fields if name != "proposal"
        }
        count = state.data.count
        num_sim, num_nan = state.num_simulations, state.num_nan
        num_capped = int(np.sum(column["capped"]))
        out_of_budget = column["out_of_budget"].astype(bool)
        num_out_of_budget = int(np.sum(out_of_budget))
        budget_exhausted_at = int(np.argmax(out_of_budget)) if num_out_of_budget else None
        pooled, dof = core.pooled_noise_variance(state.data)
        messages = [nan_simulation_message(self.algorithm, num_nan, num_sim)]
        if num_capped > self.xi * total:
            messages.append(
                f"{self.algorithm}: {num_capped} of {total} steps still had a decision error above xi = {self.xi:g} "
                f"after max_acquisitions = {self.max_acquisitions} rounds and decided by the surrogate's median; "
                "raise max_acquisitions or delta_s, or check for non-finite simulations near the chain"
            )
        if num_out_of_budget > self.xi * total:
            messages.append(
                f"{self.algorithm}: {num_out_of_budget} of {total} steps decided with a decision error above xi = "
                f"{self.xi:g} because max_simulations = {self.max_simulations} was spent (from iteration "
                f"{budget_exhausted_at} on); the surrogate decided them alone"
            )
        result_info = {
            "num_simulations_trace": np.asarray(sim_trace),
            "decision_error": column["decision_error"],
            "acceptance_probability": column["acceptance_probability"],
            "accepted": column["accepted"].astype(bool),
            "num_rounds": column["num_rounds"],
            "capped": column["capped"].astype(bool),
            "failed": column["failed"].astype(bool),
            "log_u": column["log_u"],
            "proposals": torch.stack([x.proposal for x in infos]).double().numpy(),
            "chain": chain.double().numpy(),
            "acquisitions": int(np.sum(column["num_rounds"])),
            "num_capped": num_capped,
            "refits": refits,
            "gp_params": GPParams(*(p.double().numpy() for p in state.surrogate.params)),
            "standardizer": type(state.surrogate.standardizer)(
                *(p.double().numpy() for p in state.surrogate.standardizer)
            ),
            "training_u": state.data.u[:count].double().numpy(),
            "training_mean": state.data.mean[:count].double().numpy(),
            "training_n": state.data.n[:count].numpy(),
            "acceptance_rate": float(np.mean(column["accepted"][num_warmup:])),
            "num_warmup": num_warmup,
            "xi": self.xi,
            "compilations": [],
            "noise": self.noise,
            "noise_variance": core._noise(state.surrogate).double().numpy(),
            "pooled_noise_variance": pooled.double().numpy(),
            "pooled_noise_dof": dof,
            "max_simulations": self.max_simulations,
            "out_of_budget": out_of_budget,
            "num_out_of_budget": num_out_of_budget,
            "budget_exhausted_at": budget_exhausted_at,
            **extra_info,
        }
        return ABCResult(
            algorithm=self.algorithm,
            theta=theta,
            names=list(self.problem.names),
            sites=dict(self.problem.sites),
            log_weights=np.zeros(len(theta)),
            num_simulations=num_sim,
            num_nan_simulations=num_nan,
            info=result_info,
            warnings=warn_unreliable(*messages),
        )
