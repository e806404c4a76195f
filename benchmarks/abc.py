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
  many steps as the rest of the budget pays for.

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
the finished rows of that file and skips their configurations, so the grid can be run in pieces and an
interrupted run loses nothing.  The table's ``sbibm_smcabc`` column is the published C2ST of sbibm's
SMC-ABC at the same budget (:data:`adapters.sbibm.SBIBM_SMCABC_C2ST`, a mean over observations 1-10,
10,000 samples).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.util
import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters import sbibm as sbibm_files
from benchmarks._harness import RESULTS_DIR, ResultFile, table

TASKS = tuple(sbibm_files.TASKS)
#: method -> (module of numpyro_ext.infer.abc, class)
METHODS = {
    "rejection": ("rejection", "RejectionABC"),
    "smc-abc": ("smc_abc", "SMCABC"),
    "omc": ("omc", "OMC"),
    "av-abc": ("avabc", "AVABC"),
}
BUDGETS = (1_000, 10_000)
LARGE_BUDGET = 100_000
OMC_PILOT_SEEDS = 64
#: each method's settings (``--set method:name=value`` overrides one)
DEFAULTS: dict[str, dict[str, Any]] = {
    "rejection": {"num_samples": 100},
    "smc-abc": {"alpha": "sbibm", "kernel_scale": 2.0, "scale": None},
    "omc": {"num_steps": 50},
    "av-abc": {"num_particles": 1, "num_pilot_draws": 100},
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


def code_version(method: str) -> str:
    """The first 12 hex digits of the SHA-256 of the method's module file: rows of an earlier version of the
    code are not mixed with the rows of the current one."""
    spec = importlib.util.find_spec(f"numpyro_ext.infer.abc.{METHODS[method][0]}")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:12]


def row_key(row: dict[str, Any]) -> tuple:
    """What identifies a configuration: a rerun skips a finished row with the same key."""
    return (row["task"], row["observation"], row["method"], row["budget"], row["c2st_samples"], row["posterior"],
            row["seed"], json.dumps(row["settings"], sort_keys=True, default=str))  # fmt: skip


def run_method(task: str, observation: int, method: str, cls: Any, budget: int, args: argparse.Namespace) -> tuple:
    """One (task, observation, method, budget) run: ``(row, reference draws, posterior draws)``, the draws
    ``None`` when the run failed (the row then says why)."""
    import jax

    from numpyro_ext.models import sbibm_tasks

    row: dict[str, Any] = {"task": task, "observation": observation, "method": method, "budget": budget}
    row["sbibm_smcabc"] = sbibm_files.SBIBM_SMCABC_C2ST[task].get(budget, math.nan)
    row.update(settings=args.settings[method], c2st_samples=args.c2st_samples, posterior=args.posterior, seed=args.seed)
    row["code"] = code_version(method)
    problem = sbibm_tasks.sbibm_problem(task, observation)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(args.seed), observation), budget)
    try:
        start = time.perf_counter()
        if method == "omc":
            result = run_omc(cls, problem, budget, args.settings[method], key)
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
        info={k: result.info[k] for k in ("epsilon", "num_populations", "num_discarded", "pilot") if k in result.info},
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


def _previous_rows(path: Any) -> list[dict[str, Any]]:
    """The finished rows of an earlier run's result file of the same name (none when there is none)."""
    try:
        return [r for r in json.loads(path.read_text())["runs"] if r.get("status") == "ok"]
    except (OSError, ValueError, KeyError):
        return []


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
    previous = _previous_rows(_result_path(out_dir, args.tag))  # read before ResultFile rewrites the file
    for path in args.imports:
        previous += [r for r in _previous_rows(Path(path)) if row_key(r) not in {row_key(p) for p in previous}]
    out = ResultFile("abc", config, out_dir, tag=args.tag)
    # an earlier run of today: keep its rows and skip their configurations, unless the method's code changed
    versions = {
        m: code_version(m) for m in METHODS if importlib.util.find_spec(f"numpyro_ext.infer.abc.{METHODS[m][0]}")
    }
    current = [r for r in previous if r.get("code") == versions.get(r["method"])]
    stale = [r for r in previous if r.get("code") != versions.get(r["method"])]
    out.extend(current)
    if stale:
        out.data["stale_runs"] = stale
        print(f"{len(stale)} earlier rows ran an older version of their method's code: kept under stale_runs, rerun")
    done = {row_key(r) for r in current}
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
            out.add(result.get())
            pending.remove(result)

    try:
        for task, observation, method, budget in tqdm(todo, desc="abc", unit="run"):
            row, reference, draws = run_method(task, observation, method, found[method], budget, args)
            if draws is None:
                out.add(row)
            elif pool is None:
                out.add(score(row, reference, draws))
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
               "mean_simulations", "mean_wall_s"]  # fmt: skip
    print("\nmean C2ST over observations (sbibm_smcabc: sbibm's published SMC-ABC, observations 1-10)")
    print(table(summary, columns))
    failed = [r for r in out.data["runs"] if r.get("status") != "ok"]
    if failed:
        print("\nfailed runs:")
        print(table(failed, ["task", "observation", "method", "budget", "error"]))
    print(f"\nwritten: {out.path}")
    return out.data


def _result_path(out_dir: Any, tag: str | None) -> Path:
    """Where :class:`ResultFile` writes today's ``abc`` file (read before it is rewritten)."""
    import datetime as _dt

    stem = "abc" if not tag else f"abc-{tag}"
    return (Path(out_dir) if out_dir is not None else RESULTS_DIR) / f"{stem}-{_dt.date.today().isoformat()}.json"
