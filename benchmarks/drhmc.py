"""Study ``drhmc``: DR-HMC against NUTS and tuned static HMC, side by side in one process.

Targets: Neal's funnel (d = 10, 50, 100), a 2-D Gaussian with correlation 0.95, ``sv-100`` (the centered
stochastic-volatility model on 100 simulated returns, its reference a long NUTS run of the
non-centered form: :func:`numpyro_ext.models.test_problems.stochastic_volatility`) and the
ported posteriordb posteriors.  Algorithms (all NumPyro, 4 vectorized chains):

* ``nuts``   NumPyro NUTS (the peer);
* ``hmc``    NumPyro static HMC, tuned: ``L = round(T / eps)`` leapfrog steps with ``T`` the
  mean NUTS integration time (``n_leapfrog * step_size``) and ``eps`` the step size of the
  ``nuts`` run on the same target; step size (from ``eps``) and diagonal mass matrix
  adapted by its own warmup;
* ``drhmc-k2``, ``drhmc-k3``          DR-HMC with 2 / 3 stages, probabilistic delayed rejection;
* ``drhmc-k2-det``, ``drhmc-k3-det``  the same with every later stage always tried;
* ``drhmc-k2-half``, ``drhmc-k3-half`` probabilistic, half the NUTS-derived trajectory length
  (``trajectory_scale=0.5``); ``drhmc-k3-jitter`` the full length times ``u ~ U(0, 1]`` per
  iteration (``jitter_trajectory=True``); the other DR-HMC rows use the full length, unjittered;
* ``drghmc``                          DR-G-HMC (:class:`numpyro_ext.infer.DRGHMC`) with the sweep's
  settings (:data:`numpyro_ext.infer.sweep_runs.DRGHMC_SWEEP`: the reference recipe, NUTS warmup,
  with the defaults the ``drhmc-funnel`` study chose), ``thinning`` (10) one-step iterations per
  kept draw; gradients and divergences of every iteration counted; ``drghmc-unit`` the same with a
  unit metric (the funnel's winner);
* ``backend-timing``                  seconds per gradient of the NumPyro and the Pyro DR-HMC
  kernel with identical fixed settings (on ``funnel-10`` and ``gaussian-2`` only).

Per run: gradient evaluations of the sampling phase (DR-HMC: ghost trajectories
included), min bulk ESS over parameters and ESS per gradient (funnel: also for ``v``
alone), divergences, wall time, and the reference score against exact draws (funnel,
Gaussian) or posteriordb's reference draws.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

from tqdm import tqdm

from benchmarks._harness import ResultFile, table

ALGORITHMS = (
    "nuts",
    "hmc",
    "drhmc-k2",
    "drhmc-k3",
    "drhmc-k2-det",
    "drhmc-k3-det",
    "drhmc-k2-half",
    "drhmc-k3-half",
    "drhmc-k3-jitter",
    "drghmc",
    "drghmc-unit",
)
TIMING = "backend-timing"
SYNTHETIC = ("funnel-10", "funnel-50", "funnel-100", "gaussian-2", "sv-100")


def _target(name: str, path: str | None):
    """(model, model kwargs, reference) of a synthetic target (exact draws) or a posteriordb posterior (the
    ``Posterior``: its reference draws and its positive parameters, which get log-scale rows)."""
    import functools

    from adapters import posteriordb
    from numpyro_ext.models import test_problems

    if name in SYNTHETIC:
        problem, dim = name.rsplit("-", 1)
        dim = int(dim)
        if problem == "sv":
            return _stochastic_volatility(dim)
        if problem == "funnel":
            return functools.partial(test_problems.funnel, dim), {}, test_problems.exact_draws("funnel", dim)
        return (
            functools.partial(test_problems.correlated_gaussian, dim),
            {},
            test_problems.exact_draws("correlated_gaussian", dim),
        )
    port = posteriordb.numpyro_model(name, path)
    return port.model, port.data, posteriordb.load(name, path)


@functools.lru_cache
def _stochastic_volatility(num_steps: int):
    """The centered stochastic-volatility model on ``num_steps`` simulated returns (the hard geometry: the
    log volatilities' scale follows ``sigma``), and its reference: NUTS on the non-centered form (same
    posterior), 4 chains x 20000 draws thinned by 5 after 2000 warmup iterations, seed 2026 (computed
    once per process, about 3-5 min)."""
    import jax
    from numpyro.infer import MCMC, NUTS

    from adapters import metrics
    from numpyro_ext.models import test_problems

    y = test_problems.stochastic_volatility_data(num_steps)
    noncentered = functools.partial(test_problems.stochastic_volatility, y, centered=False)
    mcmc = MCMC(
        NUTS(noncentered, target_accept_prob=0.95),
        num_warmup=2000,
        num_samples=20000,
        thinning=5,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(2026))
    samples = mcmc.get_samples(group_by_chain=True)
    reference = metrics.flatten_draws({k: samples[k] for k in ("mu", "phi", "sigma", "h")})
    return functools.partial(test_problems.stochastic_volatility, y), {}, reference


def _kernel(algorithm: str, model, nuts_length: tuple[float, float] | None):
    from numpyro.infer import HMC, NUTS

    from numpyro_ext.infer import DRHMC

    if algorithm == "nuts":
        return NUTS(model)
    if algorithm.startswith("drghmc"):
        from numpyro_ext.infer.sweep_runs import DRGHMC_SWEEP, make_drghmc

        unit = {"adapt_mass_matrix": False} if algorithm == "drghmc-unit" else {}
        return make_drghmc({**DRGHMC_SWEEP.defaults, **unit})(model=model)
    if algorithm == "hmc":
        if nuts_length is None:
            raise SystemExit("--algorithms: 'hmc' takes its trajectory length from the 'nuts' run; list 'nuts' first")
        length, step_size = nuts_length
        # a fixed step count: NumPyro's HMC with a fixed trajectory length takes length / step_size
        # steps, which is unbounded while early warmup shrinks the step size (hours on kidscore)
        return HMC(model, step_size=step_size, num_steps=max(1, round(length / step_size)), trajectory_length=None)
    stages, *options = algorithm.removeprefix("drhmc-k").split("-")
    return DRHMC(
        model,
        max_proposals=int(stages),
        probabilistic="det" not in options,
        trajectory_scale=0.5 if "half" in options else 1.0,
        jitter_trajectory="jitter" in options,
    )


def _thinning(algorithm: str) -> int:
    """Iterations per kept draw: DR-G-HMC's sweep ``thinning``, 1 for the others."""
    if not algorithm.startswith("drghmc"):
        return 1
    from numpyro_ext.infer.sweep_runs import DRGHMC_SWEEP

    return int(DRGHMC_SWEEP.defaults["thinning"])


PYRO_TARGETS = ("funnel-10", "gaussian-2")


def backend_timing(target: str, num_iterations: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Seconds per gradient of the NumPyro and the Pyro DR-HMC kernel, one chain, same settings.

    Fixed step size 0.2, trajectory length 2, unit mass, no warmup, K = 3: the two kernels run
    the same transition, so their gradient counts agree in distribution and the time per
    gradient compares the backends' overheads.  NumPyro is timed on a second, compiled run
    (its per-run set-up, about a second, is included).
    """
    import functools

    import jax
    import numpy as np
    import pyro
    import torch
    from numpyro.infer import MCMC as NumPyroMCMC

    from numpyro_ext.infer import DRHMC as NumPyroDRHMC
    from numpyro_ext.models import test_problems as numpyro_problems
    from pyro_ext.infer import DRHMC as PyroDRHMC
    from pyro_ext.models import test_problems as pyro_problems

    problem, dim = target.rsplit("-", 1)
    settings = dict(step_size=0.2, trajectory_length=2.0, adapt_step_size=False, adapt_mass_matrix=False)
    model = functools.partial(
        getattr(numpyro_problems, "funnel" if problem == "funnel" else "correlated_gaussian"), int(dim)
    )
    timings = {}
    mcmc = NumPyroMCMC(NumPyroDRHMC(model, **settings), num_warmup=0, num_samples=num_iterations, progress_bar=False)
    for attempt in range(2):  # the first run compiles; the second reuses the compiled chain
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed + attempt))
        jax.block_until_ready(mcmc.get_samples())
        wall = time.perf_counter() - start
        grads = int(np.sum(mcmc.get_extra_fields()["num_grad_evals"]))
    timings["numpyro_s_per_grad"] = wall / grads

    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(seed)
    pyro_model = pyro_problems.funnel if problem == "funnel" else pyro_problems.correlated_gaussian
    kernel = PyroDRHMC(pyro_model, **settings)
    # Pyro's time per gradient is steady after a few iterations: a quarter of the run is enough
    mcmc = pyro.infer.MCMC(kernel, warmup_steps=0, num_samples=num_iterations // 4, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(int(dim))
    wall = time.perf_counter() - start
    timings["pyro_s_per_grad"] = wall / int(np.sum(kernel.get_sample_stats()["num_grad_evals"]))
    timings["pyro_vs_numpyro_time_per_grad"] = timings["pyro_s_per_grad"] / timings["numpyro_s_per_grad"]
    return {"target": target, "algorithm": "backend-timing", **timings}


def run_one(
    target: str,
    algorithm: str,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    seed: int,
    nuts_length: tuple[float, float] | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """One (target, algorithm, seed) run: a pure function of its arguments."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC

    from adapters import metrics

    model, data, reference = _target(target, path)
    thinning = _thinning(algorithm)
    mcmc = MCMC(
        _kernel(algorithm, model, nuts_length),
        num_warmup=num_warmup,
        num_samples=num_samples * thinning,
        thinning=thinning,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    fields = ("num_steps", "diverging", "adapt_state.step_size")
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=fields, **data)
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    wall = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    extra_row = {}
    if algorithm.startswith("drghmc"):  # running sums per chain (sweep_runs.counting_drghmc): the last values count all
        grads = int(np.sum(extra["num_grad_evals"][:, -1]))
        divergences = int(np.sum(extra["diverging"][:, -1]))
        extra_row["stage_share"] = [float(np.mean(np.asarray(extra["stage"]) == k)) for k in range(-1, 3)]
        extra_row["thinning"] = thinning
        extra_row["grads_per_iteration"] = grads / (num_chains * num_samples * thinning)
    else:
        grads = int(np.sum(extra["num_grad_evals" if algorithm.startswith("drhmc") else "num_steps"]))
        divergences = int(np.sum(extra["diverging"]))
    if algorithm == "nuts":
        extra_row["nuts_length"] = float(np.mean(extra["num_steps"] * extra["adapt_state.step_size"]))
        extra_row["nuts_step_size"] = float(np.mean(extra["adapt_state.step_size"]))
    if algorithm.startswith("drhmc"):
        stage = np.asarray(extra["stage"]).ravel()
        extra_row["stage_share"] = [float(np.mean(stage == k)) for k in range(-1, 3)]
        extra_row["trajectory_length"] = float(np.mean(mcmc.last_state.trajectory_length))
    draws = metrics.flatten_draws(samples)
    score = metrics.reference_score(draws, reference)
    summary = score.summary()
    row = {
        "target": target,
        "algorithm": algorithm,
        "seed": seed,
        "wall_s": wall,
        "grad_evals": grads,
        "divergences": divergences,
        "min_ess_bulk": summary["min_ess"],
        "ess_per_grad": summary["min_ess"] / grads,
        "max_z_mean": summary["max_z_mean"],
        "max_log_sd": summary["max_log_sd"],
        "max_quantile": summary["max_quantile"],
        "worst": summary["worst"],
        "passed": summary["passed"],
        **extra_row,
    }
    if "v" in draws and target.startswith("funnel"):
        row["ess_v_per_grad"] = metrics.ess({"v": draws["v"]})["v"] / grads
    return row


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    from adapters import posteriordb

    parser = argparse.ArgumentParser(prog="python -m benchmarks drhmc", description=__doc__)
    parser.add_argument("--targets", default="all", help="comma-separated; 'all' = synthetic + ported posteriordb")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS + (TIMING,)))
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    parser.add_argument("--tag", default=None, help="result file drhmc-<tag>-<date>.json (default drhmc-<date>.json)")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)  # scores against references run in float64

    ported = posteriordb.ported_posteriors("numpyro", args.path)
    known = list(SYNTHETIC) + list(ported)
    targets = known if args.targets == "all" else args.targets.split(",")
    for t in targets:
        if t not in known:
            raise SystemExit(f"--targets: unknown {t!r}; known: {known}")
    algorithms = args.algorithms.split(",")
    for a in algorithms:
        if a not in ALGORITHMS + (TIMING,):
            raise SystemExit(f"--algorithms: unknown {a!r}; known: {list(ALGORITHMS + (TIMING,))}")
    config = {k: v for k, v in vars(args).items() if k != "path"}
    config["database"] = str(posteriordb.find_database(args.path))
    out = ResultFile("drhmc", config, out_dir, tag=args.tag)
    nuts_length: dict[str, tuple[float, float]] = {}
    try:
        for target, algorithm in tqdm([(t, a) for t in targets for a in algorithms], desc="drhmc", unit="run"):
            if algorithm == TIMING:
                if target in PYRO_TARGETS:
                    out.add(backend_timing(target, seed=args.seed))
                continue
            row = run_one(
                target,
                algorithm,
                args.num_warmup,
                args.num_samples,
                args.num_chains,
                args.seed,
                nuts_length.get(target),
                args.path,
            )
            if algorithm == "nuts":
                nuts_length[target] = (row["nuts_length"], row["nuts_step_size"])
            out.add(row)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished runs kept in {out.path}")
        raise
    rows = [r for r in out.data["runs"] if r["algorithm"] != TIMING]
    timing = [r for r in out.data["runs"] if r["algorithm"] == TIMING]
    _add_ratios(rows)
    out.finish({"runs": len(rows), "passed": sum(r["passed"] for r in rows)})
    columns = ["target", "algorithm", "grad_evals", "ess_per_grad", "vs_nuts", "vs_hmc", "ess_v_per_grad"]
    columns += ["v_vs_nuts", "divergences", "max_z_mean", "passed", "wall_s"]
    print(table(rows, columns))
    if timing:
        print()
        print(table(timing, ["target", "numpyro_s_per_grad", "pyro_s_per_grad", "pyro_vs_numpyro_time_per_grad"]))
    print(f"\nwritten: {out.path}")
    return out.data


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """ESS/grad of every run as a ratio to NUTS and to tuned HMC on the same target."""
    by = {(r["target"], r["algorithm"]): r for r in rows}
    for r in rows:
        for peer, key in (("nuts", "vs_nuts"), ("hmc", "vs_hmc")):
            other = by.get((r["target"], peer))
            if other is not None and other["ess_per_grad"] > 0:
                r[key] = r["ess_per_grad"] / other["ess_per_grad"]
        nuts = by.get((r["target"], "nuts"))
        if nuts is not None and r.get("ess_v_per_grad") and nuts.get("ess_v_per_grad"):
            r["v_vs_nuts"] = r["ess_v_per_grad"] / nuts["ess_v_per_grad"]
