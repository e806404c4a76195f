"""Study ``dvi``: DVI, dDVI and MCVI of the same Bayesian MLP on the paper's heteroscedastic toy and the UCI sets.

Wu et al. 2019 (arXiv:1810.03958), Sec. 6 and Table 2.  Every method trains the same network -- one hidden
layer of 50 ReLU units (100 for protein), the empirical-Bayes prior, inputs and target normalised on the training
split -- with the same optimizer, steps and data, side by side in one process:

* ``dvi``: full-covariance DVI, heteroscedastic likelihood; ``ddvi``: diagonal DVI, heteroscedastic;
* ``mcvi``: the Monte Carlo baseline (local reparameterisation, one draw per datum and step), heteroscedastic;
* ``dvi-homo``: full-covariance DVI with a homoscedastic likelihood (one learnt noise variance).

Reported per data set: test log-likelihood per point and RMSE on the original scale (mean +- s.e. over splits),
with the published MC-dropout log-likelihood as a reference column.  The test log-likelihood is the same Monte
Carlo predictive density for every method, ``log (1/S) sum_s p(y | f_s)`` with ``S`` draws of the output's
marginal (local reparameterisation); RMSE uses the closed-form predictive mean (exact with one hidden layer).

Convergence: every ``--eval-every`` steps the deterministic full-data ELBO (full-covariance DVI's, for the three
heteroscedastic methods: one yardstick) is recorded against the training wall time (evaluation excluded, compile
excluded).  ``steps_to_converge``: the first checkpoint within 1% of the final ELBO.  ``mcvi_over_dvi_seconds``:
the wall time MCVI needs to first reach the worse of the two final ELBOs (less 1%), over DVI's time.

``python -m benchmarks dvi`` runs everything; ``--datasets``/``--splits`` select, and a run of the same day
resumes: its finished rows are kept and skipped (``--import FILE`` adds another file's rows).  A method trains on
all splits of a data set at once (``jax.vmap``; they share their shapes), so the unit of work (and of resuming)
is a data set and a method.  Needs the UCI files (``../shared/uci`` or ``$PPL_EXT_UCI``); the toy needs nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters import uci
from benchmarks._harness import RESULTS_DIR, ResultFile, table

METHODS = {
    "dvi": {"covariance": "full", "likelihood": "heteroscedastic"},
    "ddvi": {"covariance": "diag", "likelihood": "heteroscedastic"},
    "mcvi": {"covariance": "diag", "likelihood": "heteroscedastic"},
    "dvi-homo": {"covariance": "full", "likelihood": "homoscedastic"},
}
DATASETS = ["toy", *uci.DATASETS]
TOY_SEEDS = 5
TOY_TRAIN, TOY_TEST = 500, 2000


def toy_split(seed: int) -> uci.UCISplit:
    """The paper's heteroscedastic toy: ``x ~ U(-0.5, 0.5)``, ``y = -(x + 0.5) sin(3 pi x) + 0.45 (x + 0.5)^2 eps``,
    normalised like a UCI split (``TOY_TRAIN`` training and ``TOY_TEST`` test points, one seed per split)."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.uniform(-0.5, 0.5, size=(TOY_TRAIN + TOY_TEST, 1))
    y = -(x[:, 0] + 0.5) * np.sin(3 * np.pi * x[:, 0]) + 0.45 * (x[:, 0] + 0.5) ** 2 * rng.standard_normal(len(x))
    x_mean, x_std = x[:TOY_TRAIN].mean(0), x[:TOY_TRAIN].std(0)
    y_mean, y_std = float(y[:TOY_TRAIN].mean()), float(y[:TOY_TRAIN].std())
    x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
    return uci.UCISplit(
        "toy", seed, x[:TOY_TRAIN], y[:TOY_TRAIN], x[TOY_TRAIN:], y[TOY_TRAIN:], y_mean, y_std, hidden_units=50
    )


def load(dataset: str, split: int) -> uci.UCISplit:
    return toy_split(split) if dataset == "toy" else uci.load_split(dataset, split)


def splits_of(dataset: str) -> int:
    return TOY_SEEDS if dataset == "toy" else uci.num_splits(dataset)


def num_selected(dataset: str, limit: int | None) -> int:
    """The first ``limit`` splits of ``dataset`` (all when ``limit`` is None)."""
    return min(splits_of(dataset), limit or splits_of(dataset))


@functools.cache
def programs(method: str, sizes: tuple, num_data: int, batch: int, learning_rate: float, eval_every: int, draws: int):
    """The jitted pieces of one method's runs, compiled once and reused by every split of a data set (the data are
    arguments, not constants): ``chunk`` (``eval_every`` Adam steps), ``evaluate`` (the yardstick ELBO) and
    ``test`` (test log-likelihood and RMSE)."""
    import jax
    import jax.numpy as jnp
    import optax

    from adapters.dvi import DVIConfig
    from numpyro_ext.infer.dvi.core import dvi_elbo, dvi_predict
    from numpyro_ext.infer.dvi.mcvi import log_predictive_density, mcvi_elbo

    config = DVIConfig(sizes, prior="empirical_bayes", **METHODS[method])
    yardstick = DVIConfig(sizes, covariance="full", likelihood=METHODS[method]["likelihood"])
    optimizer = optax.adam(learning_rate)

    def loss(params, key, xb, yb):
        if method == "mcvi":
            return -mcvi_elbo(key, params, xb, yb, config, num_data=num_data)
        return -dvi_elbo(params, xb, yb, config, num_data=num_data)

    def chunk(carry, x, y):
        def step(carry, _):
            params, opt_state, key = carry
            key, batch_key, loss_key = jax.random.split(key, 3)
            if batch < num_data:
                index = jax.random.randint(batch_key, (batch,), 0, num_data)
                xb, yb = x[index], y[index]
            else:
                xb, yb = x, y
            grads = jax.grad(loss)(params, loss_key, xb, yb)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, key), None

        return jax.lax.scan(step, carry, None, length=eval_every)[0]

    def test(params, key, x_test, y_test):
        log_density = log_predictive_density(key, params, x_test, y_test, config, draws)
        mean, _ = dvi_predict(params, x_test, config)
        return jnp.mean(log_density), jnp.sqrt(jnp.mean((mean[:, 0] - y_test) ** 2))

    return (
        config,
        optimizer,
        jax.jit(jax.vmap(chunk)),
        jax.jit(jax.vmap(lambda params, x, y: dvi_elbo(params, x, y, yardstick))),
        jax.jit(jax.vmap(test)),
    )


def train(splits: list[uci.UCISplit], method: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one method on every given split of a data set at once (``jax.vmap`` over the splits, which share
    their shapes); one row per split (metrics, trace of the yardstick ELBO).

    Wall times are the vmapped batch's divided by the number of splits: a split's amortised share, measured the
    same way for every method.
    """
    import jax
    import jax.numpy as jnp

    from numpyro_ext.infer.dvi.core import init_params

    def stack(field: str) -> Any:
        return jnp.asarray(np.stack([getattr(split, field) for split in splits]), jnp.float32)

    x, y, x_test, y_test = stack("x_train"), stack("y_train"), stack("x_test"), stack("y_test")
    num_splits, n = x.shape[:2]
    heteroscedastic = METHODS[method]["likelihood"] == "heteroscedastic"
    sizes = (x.shape[2], splits[0].hidden_units, 2 if heteroscedastic else 1)
    batch = min(n, args.batch_size)
    config, optimizer, chunk, evaluate, test = programs(
        method, sizes, n, batch, args.learning_rate, args.eval_every, args.test_samples
    )
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(args.seed * 7919 + s.split), 3) for s in splits])
    params = jax.vmap(lambda key: init_params(key, config))(keys[:, 0])
    carry = (params, jax.vmap(optimizer.init)(params), keys[:, 1])
    jax.block_until_ready(chunk(carry, x, y))  # compiles (once per data set and method) before the clock starts
    elbos, walls, wall = [np.asarray(evaluate(params, x, y))], [0.0], 0.0
    for _ in range(args.eval_every, args.steps + 1, args.eval_every):
        start = time.perf_counter()
        carry = jax.block_until_ready(chunk(carry, x, y))
        wall += (time.perf_counter() - start) / num_splits
        elbos.append(np.asarray(evaluate(carry[0], x, y)))
        walls.append(wall)
    ll, rmse = (np.asarray(v) for v in test(carry[0], keys[:, 2], x_test, y_test))
    steps = list(range(0, args.steps + 1, args.eval_every))
    rows = []
    for k, split in enumerate(splits):
        trace = [(step, w, float(e[k])) for step, w, e in zip(steps, walls, elbos, strict=True)]
        final = trace[-1][2]
        converged = next((st for st, _, e in trace if abs(e - final) <= 0.01 * abs(final)), None)
        rows.append(
            {
                "dataset": split.name,
                "split": split.split,
                "method": method,
                "status": "ok" if math.isfinite(final) and math.isfinite(ll[k]) else "diverged",
                "test_ll": float(ll[k]) + split.log_likelihood_offset,
                "test_rmse": float(rmse[k]) * split.rmse_scale,
                "final_elbo": final,
                "train_wall_s": wall,
                "steps": trace[-1][0],
                "steps_to_converge": converged,
                "seconds_to_converge": next((w for st, w, _ in trace if st == converged), None),
                "trace": trace,
                "batch_size": batch,
                "num_train": n,
                "vmapped_splits": num_splits,
            }
        )
    return rows


def time_to(trace: list, target: float) -> float | None:
    """Training seconds until the yardstick ELBO first reaches ``target`` (None if never)."""
    return next((w for _, w, e in trace if e >= target), None)


def steps_to(trace: list, target: float) -> int | None:
    """Optimizer steps until the yardstick ELBO first reaches ``target`` (None if never)."""
    return next((s for s, _, e in trace if e >= target), None)


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per data set and method: means +- s.e. over splits, and DVI vs MCVI's time to the same ELBO."""
    ok = [r for r in rows if r.get("status") == "ok"]
    by = {(r["dataset"], r["split"], r["method"]): r for r in ok}
    out = []
    for dataset in DATASETS:
        for method in METHODS:
            mine = [r for r in ok if r["dataset"] == dataset and r["method"] == method]
            if not mine:
                continue
            ll, ll_se = mean_se([r["test_ll"] for r in mine])
            rmse, rmse_se = mean_se([r["test_rmse"] for r in mine])
            row = {
                "dataset": dataset,
                "method": method,
                "splits": len(mine),
                "test_ll": ll,
                "test_ll_se": ll_se,
                "test_rmse": rmse,
                "test_rmse_se": rmse_se,
                "train_wall_s": float(np.mean([r["train_wall_s"] for r in mine])),
                "steps_to_converge": float(np.mean([r["steps_to_converge"] or r["steps"] for r in mine])),
                "mc_dropout_ll": uci.MC_DROPOUT_TEST_LL.get(dataset),
            }
            if method == "dvi":
                ratios, step_ratios = [], []
                for r in mine:
                    other = by.get((dataset, r["split"], "mcvi"))
                    if other is None:
                        continue
                    worse = min(r["final_elbo"], other["final_elbo"])
                    target = worse - 0.01 * abs(worse)
                    t_dvi, t_mcvi = time_to(r["trace"], target), time_to(other["trace"], target)
                    if t_dvi and t_mcvi:
                        ratios.append(t_mcvi / t_dvi)
                    s_dvi, s_mcvi = steps_to(r["trace"], target), steps_to(other["trace"], target)
                    if s_dvi and s_mcvi:
                        step_ratios.append(s_mcvi / s_dvi)
                # geometric means over splits; steps do not depend on the machine's load, seconds do
                if ratios:
                    row["mcvi_over_dvi_seconds"] = float(np.exp(np.mean(np.log(ratios))))
                if step_ratios:
                    row["mcvi_over_dvi_steps"] = float(np.exp(np.mean(np.log(step_ratios))))
            out.append(row)
    return out


def goals(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, read off the summary."""
    cell = {(r["dataset"], r["method"]): r for r in summary}
    uci_sets = [d for d in uci.DATASETS if (d, "dvi") in cell and (d, "mcvi") in cell]
    dvi_wins = [d for d in uci_sets if cell[d, "dvi"]["test_ll"] >= cell[d, "mcvi"]["test_ll"]]
    hetero_wins = [
        d for d in DATASETS if (d, "dvi-homo") in cell and cell[d, "dvi"]["test_ll"] > cell[d, "dvi-homo"]["test_ll"]
    ]
    ratios = [cell[d, "dvi"].get("mcvi_over_dvi_seconds") for d in DATASETS if (d, "dvi") in cell]
    ratios = [r for r in ratios if r is not None]
    step_ratios = [cell[d, "dvi"].get("mcvi_over_dvi_steps") for d in DATASETS if (d, "dvi") in cell]
    step_ratios = [r for r in step_ratios if r is not None]
    return {
        "dvi_ll_at_least_mcvi": f"{len(dvi_wins)} of {len(uci_sets)}",
        "dvi_ll_at_least_mcvi_sets": dvi_wins,
        "heteroscedastic_beats_homoscedastic": hetero_wins,
        "median_mcvi_over_dvi_seconds": float(np.median(ratios)) if ratios else None,
        "median_mcvi_over_dvi_steps": float(np.median(step_ratios)) if step_ratios else None,
    }


def write_csv(summary: list[dict[str, Any]], path: Path) -> None:
    """One line per data set: test log-likelihood (mean +- s.e.) of each method, the MC-dropout reference, RMSE of
    DVI and MCVI, and MCVI's wall time to DVI's ELBO over DVI's -- the table of docs/dvi.rst."""
    cell = {(r["dataset"], r["method"]): r for r in summary}

    def ll(dataset: str, method: str) -> str:
        r = cell.get((dataset, method))
        return "" if r is None else f"{r['test_ll']:.2f} ± {r['test_ll_se']:.2f}"

    def rmse(dataset: str, method: str) -> str:
        r = cell.get((dataset, method))
        return "" if r is None else f"{r['test_rmse']:.3g} ± {r['test_rmse_se']:.2g}"

    lines = [
        "data set,splits,DVI,dDVI,MCVI,DVI homoscedastic,MC dropout (published),RMSE DVI,RMSE MCVI,"
        "MCVI / DVI steps to the same ELBO,MCVI / DVI seconds to the same ELBO"
    ]
    for dataset in DATASETS:
        if (dataset, "dvi") not in cell:
            continue
        ratio = cell[dataset, "dvi"].get("mcvi_over_dvi_seconds")
        step_ratio = cell[dataset, "dvi"].get("mcvi_over_dvi_steps")
        dropout = uci.MC_DROPOUT_TEST_LL.get(dataset)
        fields = [
            dataset,
            str(cell[dataset, "dvi"]["splits"]),
            *(f'"{ll(dataset, m)}"' for m in ("dvi", "ddvi", "mcvi", "dvi-homo")),
            "" if dropout is None else f"{dropout:.2f}",
            f'"{rmse(dataset, "dvi")}"',
            f'"{rmse(dataset, "mcvi")}"',
            "" if step_ratio is None else f"{step_ratio:.2f}",
            "" if ratio is None else f"{ratio:.2f}",
        ]
        lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _previous_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            rows += [r for r in json.loads(path.read_text())["runs"] if r.get("status") == "ok"]
        except (OSError, ValueError, KeyError):
            pass
    return rows


def main(argv: list[str] | None = None, out_dir: Any = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dvi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"any of {DATASETS}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"any of {list(METHODS)}")
    parser.add_argument("--splits", type=int, default=None, help="the first K splits of each set (default: all)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per run")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between yardstick ELBO checkpoints")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam's step size (all methods)")
    parser.add_argument("--batch-size", type=int, default=1000, help="minibatch size (sets larger than it)")
    parser.add_argument("--test-samples", type=int, default=200, help="output draws per test predictive density")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE")
    parser.add_argument("--tag", default=None, help="write dvi-<tag>-<date>.json (e.g. other settings)")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the summary table (docs/dvi.rst's)")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [d for d in datasets if d not in DATASETS] + [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--datasets/--methods: unknown {unknown}; datasets {DATASETS}, methods {list(METHODS)}")
    if args.steps < args.eval_every or args.eval_every < 1 or args.test_samples < 1:
        raise SystemExit("--steps must be >= --eval-every >= 1 and --test-samples >= 1")
    names = ("steps", "eval_every", "learning_rate", "batch_size", "test_samples", "seed")
    settings = {k: getattr(args, k) for k in names}
    stem = "dvi" if not args.tag else f"dvi-{args.tag}"
    today = (Path(out_dir) if out_dir is not None else RESULTS_DIR) / f"{stem}-{_dt.date.today().isoformat()}.json"
    previous = [r for r in _previous_rows([today, *map(Path, args.imports)]) if r.get("settings") == settings]
    out = ResultFile("dvi", {"datasets": datasets, "methods": methods, **settings}, out_dir, tag=args.tag)
    done, kept = set(), []
    for row in previous:
        key = (row["dataset"], row["split"], row["method"])
        if key not in done:
            done.add(key)
            kept.append(row)
    out.extend(kept)  # on disk before any new work: an interrupted resume loses nothing
    # one unit of work: a method on all (selected) splits of a data set, vmapped
    grid = [(d, m) for d in datasets for m in methods]
    todo = [(d, m) for d, m in grid if any((d, s, m) not in done for s in range(num_selected(d, args.splits)))]
    print(f"{len(grid) - len(todo)} of {len(grid)} (data set, method) units already in {out.path}")
    from tqdm.auto import tqdm

    try:
        for dataset, method in tqdm(todo, desc="dvi", unit="unit"):
            splits = [
                load(dataset, s) for s in range(num_selected(dataset, args.splits)) if (dataset, s, method) not in done
            ]
            for row in train(splits, method, args):
                out.add({**row, "settings": settings})
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished rows kept in {out.path}")
        raise
    summary = summarise(out.data["runs"])
    out.finish({"by_dataset": summary, "goals": goals(summary)})
    columns = ["dataset", "method", "splits", "test_ll", "test_ll_se", "test_rmse", "test_rmse_se", "mc_dropout_ll",
               "train_wall_s", "steps_to_converge", "mcvi_over_dvi_steps", "mcvi_over_dvi_seconds"]  # fmt: skip
    print(table(summary, columns))
    print(json.dumps(out.data["summary"]["goals"], indent=1))
    if args.csv:
        write_csv(summary, Path(args.csv))
    print(f"\nwritten: {out.path}")
    return out.data
