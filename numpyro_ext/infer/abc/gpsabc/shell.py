"""The GPS-ABC object: runs the chain of :func:`~numpyro_ext.infer.abc.gpsabc.core.gpsabc_step` on the host.

See :mod:`numpyro_ext.infer.abc.gpsabc` for the algorithm.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.abc import ABCResult, check_gpsabc_settings, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive_int
from numpyro_ext.infer.abc.gpsabc import core
from numpyro_ext.infer.abc.gpsabc.core import (
    GPParams,
    GPSABCState,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    capacity_for,
    default_params,
    empty_data,
    fit_standardizer,
    grow,
)
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem
from numpyro_ext.infer.abc.rejection import check_problem, check_rng_key, mad_scale, prior_predictive, scaled_distances

__all__ = ["GPSABC"]

Array = jax.Array

_jit_step = jax.jit(core.gpsabc_step, static_argnames=("config",))
_jit_condition = jax.jit(core.condition_surrogate)


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
class GPSABC:
    """GPS-ABC (Meeds & Welling 2014): Metropolis-Hastings on a GP surrogate of the statistics,
    simulating only where the surrogate is too unsure of the accept/reject decision.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
        xi: ``xi`` in ``(0, 0.5)``, the largest tolerated decision error ``E(u_mh)`` of a step.
        num_surrogate_draws: ``M``, joint surrogate draws at ``(u, u')`` per evaluation of the error.
        proposal_scale: sd of the Gaussian random walk on the unconstrained ``u`` (a number or ``(D,)``).
        num_initial_simulations: the initial design's locations: the start ``u0`` and
            ``u0 + proposal_scale * z``, ``z ~ N(0, I)``.
        num_initial_repeats: simulations at each location of the initial design (fresh keys): with 2
            or more the design holds ``num_initial_simulations * (num_initial_repeats - 1)`` degrees of
            freedom of within-location scatter, which pin each statistic's noise ``sigma_j^2``.
        noise: ``"fit"``: ``sigma_j^2`` fitted with the other hyperparameters by the marginal likelihood
            of every simulation (its within-location term is the likelihood of the repeats);
            ``"repeats"``: ``sigma_j^2`` fixed at each fit to the pooled within-location variance
            ``sum_i SS_ij / sum_i (n_i - 1)`` (:func:`~numpyro_ext.infer.abc.gpsabc.core.pooled_noise_variance`,
            needs ``num_initial_repeats >= 2``).  Without repeats the fitted noise can collapse: on
            sbibm's gaussian_linear (10 statistics, 20-35 locations, none repeated) it fell to 0.001
            (standardised) on 8 statistics, the surrogate's likelihood became a spike and the chain
            froze (C2ST 1.00); with 2 repeats per design location both choices recover the simulator's
            sd (0.29-0.36 against 0.316) and the chain moves (acceptance 0.62-0.67).  ``"fit"`` is the
            default: ``"repeats"`` scored no better C2ST (gaussian_linear .993 against .995, slcp .999
            against .999, observation 1 at 1e3 simulations; docs/abc.rst has the benchmark).
        epsilon: ``epsilon >= 0``, added as ``epsilon^2`` to every statistic's noise variance.
        delta_s: ``Delta S``, simulations per acquisition round (all at the chosen point, fresh keys).
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
            (``> 1``) since the last fit; between fits every acquisition re-conditions the GPs.
        num_fit_steps: Adam steps of a hyperparameter fit (the first from a default start, later
            ones warm-started).
        fit_learning_rate: Adam's step size for the fits (standardised log-hyperparameters).
        progress_bar: show a tqdm progress bar over the MH steps.

    :meth:`run` returns an :class:`~adapters.abc.ABCResult` of the chain's post-warmup constrained
    draws (equal weights); ``num_simulations`` counts the pilot, the initial design and every
    acquisition.  ``info``: ``num_simulations_trace`` (cumulative simulations after each iteration,
    warmup included), ``decision_error``, ``acceptance_probability`` (``tau``), ``accepted``,
    ``num_rounds``, ``capped`` and ``failed`` per iteration, ``log_u`` and ``proposals`` (unconstrained) per
    iteration, ``chain`` (the unconstrained position before each iteration and after the last,
    ``(n + 1, D)``), ``acquisitions`` (rounds in all), ``num_capped``, ``refits`` (a list of
    ``{iteration, num_training, log_marginal_likelihood}``), the final ``gp_params`` and
    ``standardizer``, the training set by location (``training_u``, ``training_mean``, ``training_n``),
    ``acceptance_rate`` (post-warmup), ``compilations`` (capacities the step was compiled for),
    ``noise`` and ``noise_variance`` (each statistic's ``sigma_j^2`` in use at the end, own scale),
    ``pooled_noise_variance`` and ``pooled_noise_dof`` (the repeats' estimate and its degrees of freedom),
    ``max_simulations``, ``out_of_budget`` per iteration, ``num_out_of_budget`` and
    ``budget_exhausted_at`` (the first iteration that the budget stopped from acquiring, or ``None``).
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

    def _start(self, rng_key: Array, init_params: Any) -> tuple[Array, int, int]:
        """The chain's start ``u0`` and the simulations (all, non-finite) spent finding it."""
        if init_params is not None:
            u0 = jnp.asarray(self.problem.unconstrain(init_params), dtype=jnp.result_type(float))
            if u0.shape != (self.problem.dim,) or not bool(jnp.all(jnp.isfinite(u0))):
                raise ValueError(
                    f"init_params: expected a value of the prior's support, of {self.problem.dim} number(s) in all, "
                    f"got {init_params!r}"
                )
            return u0, 0, 0
        n = self.num_pilot_draws
        u, _, stats = prior_predictive(rng_key, self.problem, n, n)
        stats = np.asarray(stats, dtype=np.float64)
        distances = scaled_distances(stats, self.problem.observed, mad_scale(stats))
        num_nan = int(np.sum(~np.all(np.isfinite(stats), axis=-1)))
        if not np.isfinite(distances).any():
            raise ValueError(
                f"{self.algorithm}: all {n} pilot simulations at prior draws gave non-finite statistics; "
                "check the simulator or pass init_params"
            )
        return u[int(np.argmin(distances))], n, num_nan

    def _initial_design(self, rng_key: Array, u0: Array) -> SurrogateData:
        n, r = self.num_initial_simulations, self.num_initial_repeats
        key_u, key_sim = jax.random.split(rng_key)
        z = jax.random.normal(key_u, (n, self.problem.dim), u0.dtype).at[0].set(0.0)
        u = u0 + jnp.asarray(self.proposal_scale, u0.dtype) * z
        stats = self.problem.simulate_many(jnp.repeat(u, r, axis=0), jax.random.split(key_sim, n * r))
        data = empty_data(capacity_for(2 * n), self.problem.dim, self.problem.stat_dim, u0.dtype)
        return add_design(data, u, stats, r)

    def _fit(self, params: GPParams | None, data: SurrogateData) -> tuple[Surrogate, float]:
        num_finite = int(jnp.sum(data.mask))
        if num_finite < 2:
            raise ValueError(
                f"{self.algorithm}: only {num_finite} of {int(data.count)} simulations have finite statistics, too few "
                "to fit the Gaussian-process surrogate; check the simulator's NaN/inf outputs near the start"
            )
        standardizer = fit_standardizer(data)
        if params is None:
            params = default_params(self.problem.dim, self.problem.stat_dim, data.u.dtype)
        fix_noise = self.noise == "repeats"
        if fix_noise and int(core.pooled_noise_variance(data)[1]) < 1:
            raise ValueError(
                f"{self.algorithm}: noise='repeats' needs repeated simulations at a location, and no location of the "
                "training set holds two finite ones; raise num_initial_repeats or use noise='fit'"
            )
        params, lml = core.fit_hyperparameters(
            params, data, standardizer, self.num_fit_steps, self.fit_learning_rate, fix_noise
        )
        lml = float(lml)
        if not (math.isfinite(lml) and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in params)):
            raise ValueError(
                f"{self.algorithm}: the Gaussian-process surrogate failed to fit: its log marginal likelihood is {lml} "
                f"on {num_finite} simulations; the statistics may be constant, too large, or not smooth in theta"
            )
        return _jit_condition(params, standardizer, data), lml

    # ---- the chain ---------------------------------------------------------------------------
    def run(self, rng_key: Array, num_samples: int = 1000, num_warmup: int = 200, init_params: Any = None) -> ABCResult:
        """Start (``init_params``, constrained, or the best pilot draw), simulate the initial design,
        fit the surrogate and run ``num_warmup + num_samples`` MH steps; returns the post-warmup draws."""
        rng_key = check_rng_key(rng_key)
        num_samples = check_positive_int("num_samples", num_samples)
        num_warmup = check_positive_int("num_warmup", num_warmup, allow_zero=True)
        key_start, key_design, key_chain = jax.random.split(rng_key, 3)
        u0, num_sim, num_nan = self._start(key_start, init_params)
        data = self._initial_design(key_design, u0)
        design = self.num_initial_simulations * self.num_initial_repeats
        num_nan += design - int(jnp.sum(data.n[: self.num_initial_simulations]))
        num_sim += design
        return self._chain(key_chain, u0, data, num_sim, num_nan, num_samples, num_warmup, {})

    def _chain(
        self,
        rng_key: Array,
        u0: Array,
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
        refits = [{"iteration": 0, "num_training": int(data.count), "log_marginal_likelihood": lml}]
        count_at_fit = int(data.count)
        log_prior0 = self.problem.log_prior(u0)
        if not bool(jnp.isfinite(log_prior0)):
            raise ValueError(f"{self.algorithm}: the start has zero prior density (log prior {float(log_prior0)})")
        dtype = u0.dtype
        # the start's slot in the training set, if it has simulations there (GPSABC.run: the design's first)
        count = int(data.count)
        same = np.flatnonzero(
            np.all(np.asarray(data.u[:count]) == np.asarray(u0), axis=1) & np.asarray(data.mask[:count])
        )
        row0 = jnp.int32(int(same[0]) if same.size else -1)
        state = GPSABCState(
            u0, log_prior0, row0, data, surrogate, jnp.asarray(num_sim, jnp.int32), jnp.asarray(num_nan, jnp.int32)
        )
        scale = jnp.asarray(self.proposal_scale, dtype)
        room = 2  # a step opens at most a slot for u and one for u'
        total = num_warmup + num_samples
        infos, positions, sim_trace, compilations = [], [u0], [], [int(data.u.shape[0])]
        keys = jax.random.split(rng_key, total)
        for i in tqdm(range(total), disable=not self.progress_bar, desc=self.algorithm):
            count = int(state.data.count)
            capacity = int(state.data.u.shape[0])
            if count + room > capacity:
                capacity = capacity_for(count + room)
                data = grow(state.data, capacity)
                surrogate = _jit_condition(state.surrogate.params, state.surrogate.standardizer, data)
                state = state._replace(data=data, surrogate=surrogate)
                compilations.append(capacity)
            state, info = _jit_step(keys[i], state, scale, config)
            infos.append(info)
            positions.append(state.position)
            sim_trace.append(state.num_simulations)
            count = int(state.data.count)
            if count >= self.refit_growth * count_at_fit:
                surrogate, lml = self._fit(state.surrogate.params, state.data)
                state = state._replace(surrogate=surrogate)
                refits.append({"iteration": i + 1, "num_training": count, "log_marginal_likelihood": lml})
                count_at_fit = count
        info = jax.tree_util.tree_map(lambda *x: np.stack([np.asarray(v) for v in x]), *infos)
        chain = np.stack([np.asarray(p) for p in positions])
        theta = np.asarray(jax.vmap(self.problem.flat_theta)(jnp.asarray(chain[num_warmup + 1 :])))
        count = int(state.data.count)
        num_sim, num_nan = int(state.num_simulations), int(state.num_nan)
        num_capped = int(np.sum(info.capped))
        out_of_budget = np.asarray(info.out_of_budget)
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
            "num_simulations_trace": np.asarray([int(s) for s in sim_trace]),
            "decision_error": np.asarray(info.decision_error),
            "acceptance_probability": np.asarray(info.acceptance_probability),
            "accepted": np.asarray(info.accepted),
            "num_rounds": np.asarray(info.num_rounds),
            "capped": np.asarray(info.capped),
            "failed": np.asarray(info.failed),
            "log_u": np.asarray(info.log_u),
            "proposals": np.asarray(info.proposal),
            "chain": chain,
            "acquisitions": int(np.sum(info.num_rounds)),
            "num_capped": num_capped,
            "refits": refits,
            "gp_params": jax.tree_util.tree_map(np.asarray, state.surrogate.params),
            "standardizer": jax.tree_util.tree_map(np.asarray, state.surrogate.standardizer),
            "training_u": np.asarray(state.data.u[:count]),
            "training_mean": np.asarray(state.data.mean[:count]),
            "training_n": np.asarray(state.data.n[:count]),
            "acceptance_rate": float(np.mean(info.accepted[num_warmup:])),
            "num_warmup": num_warmup,
            "xi": self.xi,
            "compilations": compilations,
            "noise": self.noise,
            "noise_variance": np.asarray(
                (state.surrogate.standardizer.stat_scale * jnp.exp(state.surrogate.params.log_noise)) ** 2
            ),
            "pooled_noise_variance": np.asarray(pooled),
            "pooled_noise_dof": int(dof),
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
