"""Study ``abc``: likelihood-free methods on four sbibm tasks, scored by C2ST against sbibm's reference posteriors.

Tasks (:mod:`numpyro_ext.models.sbibm_tasks`; observations and 10,000 reference posterior samples per
observation from sbibm's files, :mod:`adapters.sbibm`; needs ``pip install --no-deps sbibm==1.1.0``):
``two_moons``, ``gaussian_linear``, ``gaussian_mixture``, ``slcp``.  The statistics are the raw data
(d = 2, 10, 2, 8), as in sbibm.  Methods (NumPyro, each imported from its own module of
:mod:`numpyro_ext.infer.abc`; one that does not import is reported and skipped), each given a simulation
budget ``B``:

* ``rejection``  ``RejectionABC``: the 100 closest of ``B`` prior simulations (sbibm's REJ-ABC default),
  MAD-scaled Euclidean distance;
* ``smc-abc``    ``SMCABC`` with sbibm's SMC-ABC settings where ours has them: population 100, or 1000
  when ``B > 10^4``; ``5 N`` initial prior simulations (at most ``B / 2``); unscaled Euclidean distance;
  kernel covariance 2 x the weighted particle covariance (Beaumont et al. 2009; sbibm's 0.5 x made the
  importance weights degenerate here, gaussian_linear at 10^4: ESS 2.9 of 100 and C2ST 0.98 -- sbibm's
  KDE ignores the weights, which hides that); each tolerance the ``alpha``-quantile of the
  last population's distances with ``alpha = 0.2^(d/(d+1))`` (0.34 for d = 2, 0.23 for d = 10): sbibm
  takes the distance where the cumulative sum of the sorted distances reaches 0.2 of their total, which
  is that quantile when the accepted statistics fill the ``d``-ball of radius epsilon evenly;
* ``omc``        ``OMC``: a pilot of 64 seeds measures the simulations one seed costs, then as many seeds
  as the rest of the budget pays for (the pilot's simulations are counted, its draws are not used);
* ``av-abc``     ``AVABC``: a full-rank Gaussian guide started at the best of ``min(100, B / 4S)`` prior
  draws (``S`` simulations each), ``S = 2 d + 10`` simulations per step, one ``theta`` draw per step, as
  many steps as the rest of the budget pays for;
* ``habc``       ``HABC`` (Meeds, Leenders & Welling 2015), one chain through ``numpyro.infer.MCMC``:
  synthetic likelihood of ``S = max(20, 2 d + 10)`` simulations (with S = 7 = d + 5 and step 0.05
  two_moons' chain sat away from the posterior: C2ST 1.0 at 10^4), SPSA gradients with ``R = 1``
  direction and ``c = 0.01`` (``2 R S`` simulations each), one SGHMC step of ``0.1`` per iteration
  (identity mass matrix on the unconstrained scale), friction ``C = 5``, a tenth of the seeds redrawn per
  iteration (one more gradient), a start from the best of at most 20 (and at most ``B / 10S``) prior
  draws; as many iterations as the budget pays for, the first fifth discarded (:func:`run_habc`,
  :data:`HABC_DEFAULTS`).  Tried on observation 1 at 10^4 (C2ST on 1000 samples): step 0.02, ``C = 1``:
  two_moons 0.753, gaussian_linear 0.996, gaussian_mixture 0.963; step 0.05, ``C = 1``: gaussian_linear's
  chain overheated (sd x 7: SPSA's noise); step 0.1, ``C = 5``: 0.756, 0.935, 0.777, slcp 1.0;
* ``habc-ad``    the same with ``gradient="autodiff"`` (reverse mode through the JAX simulator at fixed
  seeds, ``S`` simulations per gradient, not the paper's SPSA): step 0.1, ``C = 5`` gave two_moons 0.834,
  gaussian_linear 0.829, gaussian_mixture 0.794 in the same trial;
* ``gps-abc``    ``GPSABC`` (Meeds & Welling 2014): a rejection pilot of ``B / 10`` prior simulations
  (its closest tenth gives the start and the random walk's scale, 0.15 x their sd per unconstrained
  coordinate; 0.3 and 0.5 mixed worse on two_moons: acceptance 0.18 and 0.08), ``xi = 0.2``, ``M = 50``,
  an initial design of 20 locations with 2 simulations each, ``delta_s = 1``, at most 2 acquisition
  rounds per step; the chain is as long as the budget pays for when every step spends both rounds
  (``(B - B/10 - 40) / 2`` steps, at most 3000), the first fifth discarded, and ``max_simulations =
  B - B/10`` holds it to the budget (:func:`run_gpsabc`, :data:`GPSABC_DEFAULTS`).  Before the design
  repeated its simulations (one per location), the fitted GP noise of most of gaussian_linear's
  statistics collapsed to about 0.001 on the standardised scale, the surrogate likelihood became a
  spike and the chains of gaussian_linear and slcp stayed at their starts (acceptance 0 to 0.01, C2ST
  1.00).  With the repeats they move (acceptance 0.45-0.75) and acquire at nearly every step (400-500
  acquisitions in 430 steps at 10^3, 2-14 minutes a run); each acquisition re-conditions every GP on the
  whole buffer and each refit runs 300 Adam steps on it, both cubic in its size, so their 10^4 runs
  (1,500-2,500 locations) were not run.  two_moons and gaussian_mixture used 206-315 simulations at
  10^3 and 1,337-1,410 at 10^4.

``pope`` is not run: POPE (:mod:`numpyro_ext.infer.abc.pope`) scores a simulation by the probability that
*every* statistic is at most (``direction="below"``) or at least (``"above"``) a target, a one-sided
"at least as good as" observation; an sbibm observation is two-sided (the data should be *near* ``y``), and
the module takes one direction for all statistics, so it cannot express "below ``y`` and above ``y``" per
statistic.  Rewriting the statistics as ``(x - y, y - x)`` with target 0 would give the kernel
``Phi(-f / s) Phi(f / s)``, a stand-in for GPS-ABC's Gaussian one, not POPE's question.

``--set method:name=value`` overrides one setting (e.g. ``--set smc-abc:kernel_scale=2.0``).

Per (task, observation, method, ``B``): the C2ST (:func:`adapters.c2st.c2st`, sbibm's definition) of
``--c2st-samples`` posterior draws against as many of sbibm's reference samples (sbibm itself uses 10,000
against 10,000, the default here; fewer samples make the classifier weaker, so scores sit closer to 0.5:
say so when comparing), the simulations the method actually made, its wall time (JIT compilation
included: one run per configuration) and the C2ST's own time.  Weighted draws become equally weighted
ones by a Gaussian KDE on the weighted draws (``--posterior kde``: shrunk towards the weighted mean so
that it keeps the draws' covariance, bandwidth by leave-one-out likelihood, draws outside the prior's
support redrawn; sbibm also smooths SMC-ABC's last population by a KDE, unweighted, with a
cross-validated isotropic bandwidth) or by multinomial resampling (``--posterior resample``); equally
weighted draws, at least as many as needed, are used as they are.

Rows are written as they finish (``benchmarks/results/abc-<date>.json``); a rerun on the same day keeps
every row of that file: finished rows of the current code (:func:`code_version`) are kept and their
configurations skipped, failed rows are kept until their configuration runs again (the new row replaces
them), and rows of another code version, the file's earlier ``stale_runs`` included, are kept under
``stale_runs`` (their configurations run again).  So the grid can be run in pieces and an interrupted run
loses nothing.  The table's ``sbibm_smcabc`` column is the published C2ST of sbibm's
SMC-ABC at the same budget (:data:`adapters.sbibm.SBIBM_SMCABC_C2ST`, a mean over observations 1-10,
10,000 samples); its ``sl_ceiling`` column the C2ST of synthetic-likelihood MCMC with more than 10^8
simulations (:data:`adapters.sbibm.SL_CEILING_C2ST`), where HABC and GPS-ABC, which sample a
synthetic-likelihood posterior, would end up with unlimited simulations.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters import sbibm as sbibm_files
from benchmarks._harness import (
    ResultFile,
    function_sources,
    previous_rows,
    result_path,
    sort_previous,
    source_version,
    table,
)

TASKS = tuple(sbibm_files.TASKS)
#: method -> (module of numpyro_ext.infer.abc, class)
METHODS = {
    "rejection": ("rejection", "RejectionABC"),
    "smc-abc": ("smc_abc", "SMCABC"),
    "omc": ("omc", "OMC"),
    "av-abc": ("avabc", "AVABC"),
    "habc": ("habc", "HABC"),
    "habc-ad": ("habc", "HABC"),
    "gps-abc": ("gpsabc", "GPSABC"),
}
BUDGETS = (1_000, 10_000)
LARGE_BUDGET = 100_000
OMC_PILOT_SEEDS = 64
#: HABC (:func:`run_habc`): ``num_simulations`` ``S`` (``None``: ``max(20, 2 d + 10)``), SPSA repeats ``R``,
#: SGHMC steps per iteration ``num_steps``, ``step_size``, ``friction``, ``spsa_scale``, the seeds'
#: ``seed_refresh``, the pilot's prior draws (at most a tenth of the budget), the warmup's share, ``gradient``
HABC_DEFAULTS: dict[str, Any] = {
    "num_simulations": None,
    "num_spsa_repeats": 1,
    "num_steps": 1,
    "step_size": 0.1,
    "friction": 5.0,
    "spsa_scale": 0.01,
    "seed_refresh": 0.1,
    "num_pilot_draws": 20,
    "warmup_fraction": 0.2,
    "gradient": "spsa",
    "adapt_mass_matrix": True,  # the 2026-12-08 columns; the kernel's default is off (those columns are worse)
}
#: GPS-ABC (:func:`run_gpsabc`): a rejection pilot of ``pilot_fraction`` of the budget (its closest
#: ``pilot_keep`` give the start and the proposal's scale, ``proposal_factor`` x their sd on ``u``), ``xi``,
#: ``M`` surrogate draws, the initial design, ``delta_s`` and ``max_acquisitions`` (the chain is as long
#: as the budget pays for in the worst case, at most ``max_steps``), the warmup's share
GPSABC_DEFAULTS: dict[str, Any] = {
    "pilot_fraction": 0.1,
    "pilot_keep": 0.1,
    "proposal_factor": 0.15,
    "xi": 0.2,
    "num_surrogate_draws": 50,
    "num_initial_simulations": 20,
    "num_initial_repeats": 2,
    "noise": "fit",
    "delta_s": 1,
    "max_acquisitions": 2,
    "max_steps": 3000,
    "warmup_fraction": 0.2,
}
#: each method's settings (``--set method:name=value`` overrides one)
DEFAULTS: dict[str, dict[str, Any]] = {
    "rejection": {"num_samples": 100},
    "smc-abc": {"alpha": "sbibm", "kernel_scale": 2.0, "scale": None},
    "omc": {"num_steps": 50},
    "av-abc": {"num_particles": 1, "num_pilot_draws": 100},
    "habc": HABC_DEFAULTS,
    "habc-ad": {**HABC_DEFAULTS, "gradient": "autodiff"},
    "gps-abc": GPSABC_DEFAULTS,
}


def available_methods(methods: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``({method: class}, {method: why it did not import})``, each class from its own module."""
    found, missing = {}, {}
    for name in methods:
        module, cls = METHODS[name]
        try:
            found[name] = getattr(importlib.import_module(f"numpyro_ext.infer.abc.{module}"), cls)
        except Exception as error:  # noqa: BLE001 -- a method that does not import is reported, the rest run
            missing[name] = f"{type(error).__name__}: {error}"
    return found, missing


def build_method(name: str, cls: Any, problem: Any, budget: int, settings: dict[str, Any]) -> tuple[Any, dict]:
    """The method object for ``budget`` simulations and the extra arguments of its ``run`` (not OMC's)."""
    if name == "rejection":
        return cls(problem, num_simulations=budget, num_samples=min(settings["num_samples"], budget)), {}
    if name == "smc-abc":
        particles = min(settings.get("num_particles") or (1000 if budget > 10_000 else 100), budget)
        options = {k: v for k, v in settings.items() if k != "num_particles"}
        if options["alpha"] == "sbibm":  # sbibm's cumulative-distance rule at 0.2, as a quantile of the count
            options["alpha"] = 0.2 ** (problem.stat_dim / (problem.stat_dim + 1))
        return cls(problem, num_particles=particles, num_simulations=budget, **options), {}
    if name == "av-abc":
        per_theta = settings.get("num_simulations") or 2 * problem.stat_dim + 10
        particles = settings["num_particles"]
        # the start (best of the pilot's prior draws, S simulations each) takes at most a quarter of the budget
        pilot = max(1, min(settings["num_pilot_draws"], budget // (4 * per_theta)))
        steps = max(1, (budget - pilot * per_theta - 4) // (per_theta * particles))  # 4: the gradient check
        options = {
            k: v for k, v in settings.items() if k not in ("num_simulations", "num_particles", "num_pilot_draws")
        }
        method = cls(
            problem,
            num_simulations=per_theta,
            num_steps=steps,
            num_particles=particles,
            num_pilot_draws=pilot,
            **options,
        )
        return method, {"num_samples": 1000}
    raise ValueError(f"method must be one of {list(METHODS)}, got {name!r}")


def run_omc(cls: Any, problem: Any, budget: int, settings: dict[str, Any], key: Any) -> Any:
    """OMC for ``budget`` simulations: a pilot of 64 seeds measures the simulations per seed, then as many
    seeds as the rest pays for; the result counts the pilot's simulations too."""
    import jax

    key_pilot, key_run = jax.random.split(key)
    pilot_seeds = min(OMC_PILOT_SEEDS, max(1, budget // (settings["num_steps"] + 1)))
    pilot = cls(problem, num_seeds=pilot_seeds, **settings).run(key_pilot)
    per_seed = pilot.num_simulations / pilot_seeds
    num_seeds = max(2, int((budget - pilot.num_simulations) / per_seed))
    result = cls(problem, num_seeds=num_seeds, **settings).run(key_run)
    result.num_simulations += pilot.num_simulations
    result.info["pilot"] = {"num_seeds": pilot_seeds, "simulations_per_seed": per_seed}
    return result


def run_habc(cls: Any, problem: Any, budget: int, settings: dict[str, Any], key: Any) -> Any:
    """HABC for ``budget`` simulations as an ``ABCResult`` of one chain's post-warmup iterations.

    Costs (:class:`~numpyro_ext.infer.abc.habc.HABC`): a gradient ``G = 2 R S`` simulations (SPSA) or ``S``
    (autodiff); the start ``P S + G`` (``P`` pilot prior draws, at most ``B / (10 S)``); an iteration
    ``G (L + 1)`` (``L`` SGHMC steps plus the gradient after the seeds' refresh; ``G L`` without refresh).
    The chain runs as many iterations as the rest of the budget pays for, the first ``warmup_fraction``
    discarded; the simulations are counted from the chain's final state."""
    from numpyro.infer import MCMC

    from adapters.abc import ABCResult

    s = settings["num_simulations"] or max(20, 2 * problem.stat_dim + 10)
    pilot = max(1, min(settings["num_pilot_draws"], budget // (10 * s)))
    names = ("adapt_mass_matrix", "num_spsa_repeats", "num_steps", "step_size", "friction", "spsa_scale")
    options = {k: settings[k] for k in (*names, "seed_refresh", "gradient")}
    kernel = cls(problem, num_simulations=s, num_pilot_draws=pilot, **options)
    start = pilot * s + kernel.simulations_per_gradient
    iterations = (budget - start) // kernel.simulations_per_iteration
    if iterations < 2:
        raise ValueError(
            f"HABC: a budget of {budget} pays for {iterations} iterations of {kernel.simulations_per_iteration}"
        )
    warmup = int(settings["warmup_fraction"] * iterations)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=iterations - warmup, progress_bar=False)
    mcmc.run(key)
    samples = mcmc.get_samples()
    n = iterations - warmup
    theta = np.zeros((n, problem.dim))
    for site, (_, a, b) in problem.sites.items():
        theta[:, a:b] = np.asarray(samples[site]).reshape(n, -1)
    counts = kernel.check_counts(mcmc.last_state)
    diverging = np.asarray(mcmc.get_extra_fields()["diverging"])
    info = {"pilot": {"num_draws": pilot, "simulations": pilot * s}, "num_iterations": iterations,
            "num_warmup": warmup, "num_simulations_per_theta": s,
            "num_failed_gradients": counts["num_failed_gradients"], "num_diverging": int(diverging.sum())}  # fmt: skip
    return ABCResult(
        algorithm="HABC",
        theta=theta,
        names=list(problem.names),
        sites=dict(problem.sites),
        log_weights=np.zeros(n),
        num_simulations=counts["num_simulations"],
        num_nan_simulations=counts["num_nonfinite"],
        info=info,
    )


def run_gpsabc(cls: Any, problem: Any, budget: int, settings: dict[str, Any], key: Any) -> Any:
    """GPS-ABC for ``budget`` simulations: a rejection pilot, then a chain short enough to stay in the budget.

    The pilot simulates ``pilot_fraction x B`` prior draws; its closest ``pilot_keep`` share (MAD-scaled
    distance, at least ``D + 1`` draws) gives the start (the closest) and the random walk's scale per
    unconstrained coordinate (``proposal_factor`` x their sd).  The chain is as long as the rest of the
    budget pays for when every step uses all of its ``max_acquisitions`` rounds of ``delta_s`` simulations
    (at most ``max_steps``), after the initial design (``num_initial_simulations x num_initial_repeats``),
    and ``max_simulations = B - pilot`` holds the run to the budget in any case; the simulations actually
    used (pilot included) are counted from the result."""
    import jax
    import jax.numpy as jnp

    from numpyro_ext.infer.abc.rejection import mad_scale, prior_predictive, scaled_distances

    key_pilot, key_run = jax.random.split(key)
    n_pilot = max(problem.dim + 1, int(settings["pilot_fraction"] * budget))
    u, _, stats = prior_predictive(key_pilot, problem, n_pilot, n_pilot)
    stats = np.asarray(stats, dtype=np.float64)
    distances = scaled_distances(stats, np.asarray(problem.observed), mad_scale(stats))
    keep = np.argsort(distances)[: max(problem.dim + 1, int(settings["pilot_keep"] * n_pilot))]
    u_keep = np.asarray(u)[keep]
    scale = settings["proposal_factor"] * np.std(u_keep, axis=0)
    init = problem.theta(jnp.asarray(u_keep[0]))
    per_step = settings["max_acquisitions"] * settings["delta_s"]
    design = settings["num_initial_simulations"] * settings["num_initial_repeats"]
    steps = min(settings["max_steps"], (budget - n_pilot - design) // max(per_step, 1))
    if steps < 2:
        raise ValueError(f"GPS-ABC: a budget of {budget} pays for {steps} steps of at most {per_step} simulations")
    warmup = int(settings["warmup_fraction"] * steps)
    options = {k: settings[k] for k in ("xi", "num_surrogate_draws", "num_initial_simulations", "num_initial_repeats",
                                        "noise", "delta_s", "max_acquisitions")}  # fmt: skip
    method = cls(problem, proposal_scale=np.maximum(scale, 1e-6), max_simulations=budget - n_pilot, **options)
    result = method.run(key_run, num_samples=steps - warmup, num_warmup=warmup, init_params=init)
    result.num_simulations += n_pilot
    result.num_nan_simulations += int(np.sum(~np.all(np.isfinite(stats), axis=-1)))
    result.info = {
        "pilot": {"num_simulations": n_pilot, "proposal_scale": scale.tolist()},
        "num_steps": steps,
        "num_warmup": warmup,
        **{k: result.info[k] for k in ("acceptance_rate", "acquisitions", "num_capped")},
    }
    return result


#: bandwidths ``h`` (in units of the weighted covariance's square root) that the KDE chooses from
BANDWIDTHS = np.geomspace(0.02, 0.95, 24)
CV_POINTS = 2000  # the leave-one-out bandwidth choice uses at most this many draws (O(n^2) memory)


def kde_bandwidth(theta: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> float:
    """The bandwidth ``h`` of the shrunk KDE (:func:`posterior_draws`) that maximises the weighted
    leave-one-out log likelihood of the draws, from :data:`BANDWIDTHS`: a cross-validated bandwidth as
    sbibm's KDE takes one (20-fold CV over isotropic bandwidths), because rules of thumb (Scott's)
    smooth thin or multimodal posteriors (two_moons' crescents) away.  With more than :data:`CV_POINTS`
    draws a weighted subsample chooses ``h``, scaled by Scott's rate ``(m / n)^(1/(D+4))``."""
    n, dim = theta.shape
    if n > CV_POINTS:
        index = rng.choice(n, size=CV_POINTS, replace=False, p=weights)
        h = kde_bandwidth(theta[index], np.full(CV_POINTS, 1.0 / CV_POINTS), rng)
        return float(h * (CV_POINTS / n) ** (1.0 / (dim + 4)))
    mean = weights @ theta
    covariance = np.atleast_2d(((theta - mean) * weights[:, None]).T @ (theta - mean))
    covariance += 1e-12 * np.trace(covariance) / dim * np.eye(dim)  # a collapsed population keeps a factor
    z = np.linalg.solve(np.linalg.cholesky(covariance), (theta - mean).T).T  # whitened draws
    norms, inner = np.sum(z**2, 1), z @ z.T
    log_w = np.log(np.maximum(weights, 1e-300))
    scores = []
    for h in BANDWIDTHS:
        a = math.sqrt(1.0 - h**2)  # the shrunk centres a z_j keep the covariance (posterior_draws)
        squared = norms[:, None] + a**2 * norms[None, :] - 2.0 * a * inner
        np.fill_diagonal(squared, np.inf)  # leave one out
        terms = log_w[None, :] - 0.5 * squared / h**2 - dim * math.log(h)
        top = terms.max(axis=1, keepdims=True)
        loo = top[:, 0] + np.log(np.sum(np.exp(terms - top), axis=1)) - np.log1p(-np.minimum(weights, 1 - 1e-12))
        scores.append(np.sum(weights * loo))
    return float(BANDWIDTHS[int(np.nanargmax(scores))])


def posterior_draws(result: Any, num: int, how: str, in_support: Any, seed: int) -> tuple[np.ndarray, float | None]:
    """``num`` equally weighted draws ``(num, D)`` of an ``ABCResult`` and the KDE bandwidth used (``None``
    for none): the draws themselves when they are equally weighted and at least ``num``; else multinomial
    resampling by the weights (``how="resample"``, repeated draws) or a weighted Gaussian KDE with
    shrinkage (West 1993): ``a theta_j + (1 - a) mean + h Sigma^(1/2) z``, ``a = sqrt(1 - h^2)``, ``Sigma``
    the weighted covariance, which keeps the draws' mean and covariance (a plain KDE inflates the
    covariance by ``1 + h^2``, a lot in 10 dimensions), ``h`` by leave-one-out likelihood
    (:func:`kde_bandwidth`, ``how="kde"``), its draws outside the prior's support
    (``in_support(theta) -> bool (n,)``) redrawn."""
    rng = np.random.default_rng(seed)
    theta, weights = np.asarray(result.theta, dtype=np.float64), np.asarray(result.weights)
    finite = np.isfinite(result.log_weights)
    if np.all(finite) and np.ptp(result.log_weights) == 0 and len(theta) >= num:
        return theta[rng.choice(len(theta), size=num, replace=False)], None
    if how == "resample" or np.count_nonzero(weights) < 2:
        return theta[rng.choice(len(theta), size=num, p=weights)], None
    keep = weights > 0
    theta, weights = theta[keep], weights[keep] / weights[keep].sum()
    h = kde_bandwidth(theta, weights, rng)
    a = math.sqrt(1.0 - h**2)
    mean = weights @ theta
    covariance = np.atleast_2d(((theta - mean) * weights[:, None]).T @ (theta - mean))
    eigenvalues, vectors = np.linalg.eigh(covariance)
    root = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # covariance = root root^T, PSD-safe
    kept: list[np.ndarray] = []
    total, tries = 0, 0
    while total < num and tries < 100:
        tries += 1
        centres = a * theta[rng.choice(len(theta), size=2 * num, p=weights)] + (1.0 - a) * mean
        draws = centres + h * rng.standard_normal(centres.shape) @ root.T
        draws = draws[np.asarray(in_support(draws), dtype=bool)]
        kept.append(draws)
        total += len(draws)
    if total < num:  # the kernel mass sits outside the support: fall back to the weighted draws themselves
        return theta[rng.choice(len(theta), size=num, p=weights)], None
    return np.concatenate(kept)[:num], h


RUNNERS = {"omc": run_omc, "habc": run_habc, "habc-ad": run_habc, "gps-abc": run_gpsabc}
#: the ``info`` entries a row keeps
INFO_KEYS = ("epsilon", "num_populations", "num_discarded", "pilot", "num_iterations", "num_steps", "num_warmup",
             "num_simulations_per_theta", "num_failed_gradients", "num_diverging", "acceptance_rate", "acquisitions",
             "num_capped")  # fmt: skip


#: the modules every row depends on besides its method's: the tasks (priors, simulators, observations),
#: sbibm's files (observations, reference posteriors) and the C2ST
EVALUATION_MODULES = ("numpyro_ext.models.sbibm_tasks", "adapters.sbibm", "adapters.c2st")
#: this study's functions that make every row, besides the method's runner (their text in this file is hashed)
ROW_FUNCTIONS = ("run_method", "posterior_draws", "kde_bandwidth", "score")


@functools.cache  # one version per process: the modules are imported once, rows and resuming agree
def code_version(method: str) -> str:
    """The version of the code a ``method``'s row comes from (12 hex digits): a hash of the method's module
    (a package: its ``__init__`` and what that imports), of :data:`EVALUATION_MODULES`, of every project
    module these import, transitively (:func:`benchmarks._harness.module_closure`: e.g. ``problem.py``,
    ``likelihoods.py``, ``spsa.py``, ``hmc_util.py``, ``adapters/abc.py``, ``adapters/validation.py``), and
    of the text in this file of the functions that make the row (the method's runner and
    :data:`ROW_FUNCTIONS`).  Rows of another version are not mixed with the current ones (``stale_runs``).
    Conservative: an edit to any of these files or functions, relevant to the method or not, makes its
    rows stale (kept, and rerun)."""
    runner = RUNNERS[method].__name__ if method in RUNNERS else build_method.__name__
    modules = [f"numpyro_ext.infer.abc.{METHODS[method][0]}", *EVALUATION_MODULES]
    return source_version(modules, function_sources(Path(__file__), (runner, *ROW_FUNCTIONS)))


def row_key(row: dict[str, Any]) -> tuple:
    """What identifies a configuration: a rerun skips a finished row with the same key (``None`` for a field
    that a row of an older format lacks)."""
    fields = ("task", "observation", "method", "budget", "c2st_samples", "posterior", "seed")
    return (*(row.get(k) for k in fields), json.dumps(row.get("settings"), sort_keys=True, default=str))


def run_method(task: str, observation: int, method: str, cls: Any, budget: int, args: argparse.Namespace) -> tuple:
    """One (task, observation, method, budget) run: ``(row, reference draws, posterior draws)``, the draws
    ``None`` when the run failed (the row then says why)."""
    import jax

    from numpyro_ext.models import sbibm_tasks

    row: dict[str, Any] = {"task": task, "observation": observation, "method": method, "budget": budget}
    row["sbibm_smcabc"] = sbibm_files.SBIBM_SMCABC_C2ST[task].get(budget, math.nan)
    row["sl_ceiling"] = sbibm_files.SL_CEILING_C2ST[task]
    row.update(settings=args.settings[method], c2st_samples=args.c2st_samples, posterior=args.posterior, seed=args.seed)
    row["code"] = code_version(method)
    problem = sbibm_tasks.sbibm_problem(task, observation)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(args.seed), observation), budget)
    try:
        start = time.perf_counter()
        if method in RUNNERS:
            result = RUNNERS[method](cls, problem, budget, args.settings[method], key)
        else:
            algorithm, run_kwargs = build_method(method, cls, problem, budget, args.settings[method])
            result = algorithm.run(key, **run_kwargs)
        row["wall_s"] = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 -- a failed configuration is a result row, the study goes on
        row.update(status="error", error=f"{type(error).__name__}: {error}")
        return row, None, None
    if not np.any(np.asarray(result.weights) > 0):  # nothing to score: every draw discarded or none made
        row.update(status="error", error=f"no draws with positive weight ({len(result.theta)} draws)")
        return row, None, None
    reference = sbibm_files.reference_samples(task, observation)
    num = min(args.c2st_samples, len(reference))
    support = problem.prior.support
    draws, bandwidth = posterior_draws(result, num, args.posterior, lambda t: np.asarray(support(t)), observation)
    chosen = np.random.default_rng(observation).choice(len(reference), size=num, replace=False)
    row.update(
        num_simulations=int(result.num_simulations),
        num_nan_simulations=int(result.num_nan_simulations),
        num_draws=len(result.theta),
        ess=float(result.ess),
        kde_bandwidth=bandwidth,
        info={k: v for k, v in result.info.items() if k in INFO_KEYS},
        warnings=[str(w) for w in result.warnings],
    )
    return row, reference[chosen], draws


def score(row: dict[str, Any], reference: np.ndarray, draws: np.ndarray) -> dict[str, Any]:
    """``row`` with the C2ST of ``draws`` against ``reference`` and its time (runs in a worker process)."""
    from adapters.c2st import c2st

    start = time.perf_counter()
    value = c2st(reference, draws, seed=1)
    return {**row, "c2st": value, "c2st_s": time.perf_counter() - start, "status": "ok"}


def summarise(rows: list[dict[str, Any]], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean C2ST, simulations and wall time over observations per (task, method, budget, C2ST samples,
    posterior), with sbibm's published SMC-ABC C2ST beside it; only rows of the current ``settings``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        same = json.dumps(r.get("settings"), sort_keys=True) == json.dumps(settings.get(r["method"]), sort_keys=True)
        if r.get("status") == "ok" and same:
            groups.setdefault((r["task"], r["budget"], r["method"], r["c2st_samples"], r["posterior"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    keys = sorted(groups, key=lambda k: (TASKS.index(k[0]), k[1], order[k[2]], k[3]))
    return [
        {
            "task": task,
            "budget": budget,
            "method": method,
            "c2st_samples": samples,
            "posterior": posterior,
            "observations": len(groups[key]),
            "mean_c2st": float(np.mean([r["c2st"] for r in groups[key]])),
            "sbibm_smcabc": sbibm_files.SBIBM_SMCABC_C2ST[task].get(budget, math.nan),
            "sl_ceiling": sbibm_files.SL_CEILING_C2ST[task],
            "mean_simulations": float(np.mean([r["num_simulations"] for r in groups[key]])),
            "mean_wall_s": float(np.mean([r["wall_s"] for r in groups[key]])),
        }
        for key in keys
        for task, budget, method, samples, posterior in [key]
    ]


def _parse_list(text: str, known: Any, flag: str) -> list[str]:
    items = [t for t in text.split(",") if t]
    for item in items:
        if item not in known:
            raise SystemExit(f"{flag}: unknown {item!r}; known: {list(known)}")
    return items


def _parse_settings(overrides: list[str]) -> dict[str, dict[str, Any]]:
    settings = {method: dict(values) for method, values in DEFAULTS.items()}
    for text in overrides:
        try:
            method, assignment = text.split(":", 1)
            name, value = assignment.split("=", 1)
            settings[method][name] = ast.literal_eval(value)
        except (KeyError, ValueError, SyntaxError):
            raise SystemExit(
                f"--set: expected method:name=value with a method of {list(METHODS)}, got {text!r}"
            ) from None
    return settings


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks abc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--observations", default="1,2,3", help="sbibm observation numbers, 1-10")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS), help="simulation budgets")
    parser.add_argument("--large", action="store_true", help=f"add the budget {LARGE_BUDGET}")
    parser.add_argument("--c2st-samples", type=int, default=10_000, help="posterior and reference draws per C2ST")
    parser.add_argument("--posterior", choices=("kde", "resample"), default="kde")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:NAME=VALUE", help="override a setting")
    parser.add_argument("--c2st-workers", type=int, default=1, help="processes scoring C2STs (0: in this one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="write abc-<tag>-<date>.json (parallel pieces of a grid)")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="FILE",
        help="add the rows of another result file",
    )
    args = parser.parse_args(argv)
    tasks = _parse_list(args.tasks, TASKS, "--tasks")
    methods = _parse_list(args.methods, METHODS, "--methods")
    args.settings = _parse_settings(args.set)
    try:
        observations = [sbibm_files.check_observation(int(o)) for o in args.observations.split(",")]
        budgets = [int(float(b)) for b in args.budgets.split(",")] + ([LARGE_BUDGET] if args.large else [])
    except ValueError as error:
        raise SystemExit(f"--observations/--budgets: {error}") from None
    if any(b < 1 for b in budgets) or args.c2st_samples < 10:
        raise SystemExit(f"--budgets must be positive and --c2st-samples >= 10, got {budgets}, {args.c2st_samples}")
    sbibm_files.package_dir()  # an ImportError naming the install line before any work
    import jax

    jax.config.update("jax_enable_x64", True)
    found, missing = available_methods(methods)
    for method, why in missing.items():
        print(f"{method}: does not import, skipped ({why})")
    methods = [m for m in methods if m in found]
    config = {k: v for k, v in vars(args).items() if k not in ("set", "imports")}
    config.update(budgets=budgets, methods_run=methods)
    # an earlier run of today (and --import's files): every row of it is kept; finished rows of the current
    # code are not redone, failed ones are redone (and replaced), rows of other code versions go to stale_runs
    previous = previous_rows(result_path("abc", out_dir, args.tag))  # read before ResultFile rewrites the file
    for path in args.imports:
        previous += previous_rows(Path(path))
    out = ResultFile("abc", config, out_dir, tag=args.tag)
    versions = _code_versions()
    resumed = sort_previous(previous, row_key, lambda r: r.get("code") == versions.get(r.get("method")))
    out.extend(resumed.finished + resumed.failed)
    out.keep_stale(resumed.stale)
    if resumed.stale:
        print(f"{len(resumed.stale)} earlier rows ran another version of their code: kept under stale_runs")
    if resumed.failed:
        print(f"{len(resumed.failed)} earlier failed rows kept until their configuration is run again")
    done = {row_key(r) for r in resumed.finished}
    from tqdm.auto import tqdm

    # observation outermost: a run cut short still covers every task and method for the first observations
    grid = [(t, o, m, b) for o in observations for t in tasks for b in budgets for m in methods]
    template = {"c2st_samples": args.c2st_samples, "posterior": args.posterior, "seed": args.seed}
    todo = []
    for task, observation, method, budget in grid:
        key = {"task": task, "observation": observation, "method": method, "budget": budget, **template}
        if row_key({**key, "settings": args.settings[method]}) not in done:
            todo.append((task, observation, method, budget))
    print(f"{len(grid) - len(todo)} of {len(grid)} configurations already in {out.path}")
    # the C2STs (scikit-learn, CPU-bound) run in worker processes while the next method runs here; spawned,
    # not forked (a fork of a process running JAX's threads can hang)
    pool = multiprocessing.get_context("spawn").Pool(args.c2st_workers) if args.c2st_workers > 0 else None
    pending: list[Any] = []

    def collect(block: bool) -> None:
        for result in [r for r in pending if block or r.ready()]:
            out.add(result.get(), key=row_key)
            pending.remove(result)

    try:
        for task, observation, method, budget in tqdm(todo, desc="abc", unit="run"):
            row, reference, draws = run_method(task, observation, method, found[method], budget, args)
            if draws is None:
                out.add(row, key=row_key)
            elif pool is None:
                out.add(score(row, reference, draws), key=row_key)
            else:
                pending.append(pool.apply_async(score, (row, reference, draws)))
                while len(pending) > args.c2st_workers:  # a bounded queue: the method waits for a free worker
                    time.sleep(0.5)
                    collect(block=False)
        collect(block=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished rows kept in {out.path}")
        raise
    finally:
        if pool is not None:
            pool.terminate()  # an interrupted study does not wait for the C2STs in flight
    summary = summarise(out.data["runs"], args.settings)
    out.finish({"mean_c2st": summary})
    columns = ["task", "budget", "method", "c2st_samples", "posterior", "observations", "mean_c2st", "sbibm_smcabc",
               "sl_ceiling", "mean_simulations", "mean_wall_s"]  # fmt: skip
    print(
        "\nmean C2ST over observations (sbibm_smcabc: sbibm's published SMC-ABC, observations 1-10; "
        "sl_ceiling: SL-MCMC, > 1e8 simulations)"
    )
    print(table(summary, columns))
    failed = [r for r in out.data["runs"] if r.get("status") != "ok"]
    if failed:
        print("\nfailed runs:")
        print(table(failed, ["task", "observation", "method", "budget", "error"]))
    print(f"\nwritten: {out.path}")
    return out.data


def _code_versions() -> dict[str, str]:
    """:func:`code_version` of every method whose module is there."""
    versions = {}
    for method in METHODS:
        try:
            versions[method] = code_version(method)
        except ValueError:  # no source file: its rows are stale
            pass
    return versions
