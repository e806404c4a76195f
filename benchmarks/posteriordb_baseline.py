"""Study ``posteriordb-baseline``: NUTS and HMC on every posteriordb port, NUTS on the Stan route.

Per posterior and algorithm: gradient evaluations of the sampling phase, the smallest bulk
ESS, ESS per gradient, the reference score (max z_mean, max |log sd ratio|, max quantile
error, worst parameter, pass/fail) and wall time.  The peer of every later algorithm is
NUTS: the table reports each algorithm's ESS/grad as a ratio to NUTS on the same posterior.

Algorithms: ``nuts`` and ``hmc`` (NumPyro, on the NumPyro port) and ``stan-nuts`` (NumPyro's
NUTS on the Stan program through :meth:`adapters.Target.from_stan`; needs the ``stan`` extra,
g++, and a database that holds the Stan programs, i.e. a full posteriordb clone).  Runs go
through :mod:`adapters.sweep`, so they are the same runs a sweep makes.
"""

from __future__ import annotations

import argparse
from typing import Any

from adapters import sweep
from benchmarks._harness import ResultFile, table

ALGORITHMS = ("nuts", "hmc", "stan-nuts")
COLUMNS = [
    "posterior",
    "algorithm",
    "grad_evals",
    "min_ess_bulk",
    "ess_per_grad",
    "ess_per_grad_vs_nuts",
    "max_z_mean",
    "max_quantile",
    "worst",
    "passed",
    "wall_s",
]


def _task(posterior: str, algorithm: str, config: dict[str, Any], seed: int, path: str | None, timeout=None):
    if algorithm == "stan-nuts":
        return sweep.Task(posterior, "nuts", config["nuts"], seed, path, route="stan", timeout=timeout)
    return sweep.Task(posterior, algorithm, config[algorithm], seed, path, route="port", timeout=timeout)


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    from adapters import posteriordb

    parser = argparse.ArgumentParser(prog="python -m benchmarks posteriordb-baseline", description=__doc__)
    parser.add_argument("--posteriors", default="all", help="comma-separated names, or 'all' ported posteriors")
    parser.add_argument("--algorithms", default="nuts,hmc", help=f"comma-separated, from {list(ALGORITHMS)}")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("serial", "dask"), default="serial")
    parser.add_argument("--csv", default=None, help="also write the table as CSV (for the docs' csv-table)")
    parser.add_argument("--timeout-per-run", type=float, default=None, help="seconds; runs then go to child processes")
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    parser.add_argument(
        "--store", default=None, help="a sweep store: take finished runs from it (same keys) and add the new ones"
    )
    args = parser.parse_args(argv)

    ported = posteriordb.ported_posteriors("numpyro", args.path)
    names = ported if args.posteriors == "all" else args.posteriors.split(",")
    for n in names:
        if n not in ported:
            raise SystemExit(f"--posteriors: {n!r} has no NumPyro port; ported posteriors: {ported}")
    algorithms = args.algorithms.split(",")
    for a in algorithms:
        if a not in ALGORITHMS:
            raise SystemExit(f"--algorithms: unknown {a!r}; known: {list(ALGORITHMS)}")
    common = {"num_warmup": args.num_warmup, "num_samples": args.num_samples, "num_chains": args.num_chains}
    config = {a: sweep.get_algorithm(a).resolve(common) for a in ("nuts", "hmc")}
    run_config = {k: v for k, v in vars(args).items() if k not in ("path", "engine", "timeout_per_run", "csv")}
    run_config["database"] = str(posteriordb.find_database(args.path))
    out = ResultFile("posteriordb-baseline", run_config, out_dir)
    tasks = {_task(p, a, config, args.seed, args.path).key: (p, a) for p in names for a in algorithms}
    grid = [_task(p, a, config, args.seed, args.path, args.timeout_per_run) for p, a in tasks.values()]
    store = sweep.SweepStore(args.store) if args.store else None
    stored = {r["key"]: r for r in store.rows()} if store else {}
    executor = sweep.SerialExecutor() if args.engine == "serial" else sweep.DaskExecutor()

    def record(row: dict[str, Any]) -> None:
        row = {**row, "algorithm": tasks[row["key"]][1]}
        out.add({k: v for k, v in row.items() if k not in ("key", "machine", "versions")})

    try:
        from tqdm.auto import tqdm

        for task in grid:
            if task.key in stored:
                record(stored[task.key])
        todo = [t for t in grid if t.key not in stored]
        for row in tqdm(executor.map_unordered(todo), total=len(todo), desc="posteriordb-baseline", unit="run"):
            if store is not None:
                store.add(row)
            record(row)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished runs kept in {out.path}")
        raise
    finally:
        executor.close()
        if store is not None:
            store.close()
    order = {key: i for i, key in enumerate((p, a) for p in names for a in algorithms)}
    rows = sorted(out.data["runs"], key=lambda r: order[r["posterior"], r["algorithm"]])
    out.data["runs"] = rows
    nuts = {r["posterior"]: r["ess_per_grad"] for r in rows if r["algorithm"] == "nuts" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["posterior"] in nuts:
            r["ess_per_grad_vs_nuts"] = r["ess_per_grad"] / nuts[r["posterior"]]
    passed = {a: sum(bool(r.get("passed")) for r in rows if r["algorithm"] == a) for a in algorithms}
    out.finish({"passed": passed, "posteriors": len(names), "failed_runs": sum(r["status"] != "ok" for r in rows)})
    print(table(rows, COLUMNS))
    if args.csv:
        _write_csv(rows, args.csv)
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['posterior']} / {r['algorithm']}: {r['error'].splitlines()[-1]}")
    print("\npassed the reference score: " + ", ".join(f"{a} {n}/{len(names)}" for a, n in passed.items()))
    print(f"written: {out.path}")
    return out.data


def _write_csv(rows: list[dict[str, Any]], path: str) -> None:
    import csv

    def fmt(v: Any) -> Any:
        return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else v)

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    fmt(r.get(c))
                    if r["status"] == "ok" or c in ("posterior", "algorithm")
                    else ("failed" if c == "passed" else "")
                    for c in COLUMNS
                ]
            )
