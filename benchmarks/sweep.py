"""Study ``sweep``: posteriors x algorithms x seeds on Dask (or serially) into a resumable SQLite store.

``python -m benchmarks sweep --posteriors all --algorithms nuts,hmc,drhmc --seeds 0-2 --store sweep.sqlite``

Rerunning the same command skips the runs the store already holds; ``python -m benchmarks
report --store sweep.sqlite`` renders the table and figures.  The algorithms are the entry points of the group
``ppl_ext.sweep_algorithms`` (:mod:`adapters.sweep_registry`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from adapters import sweep
from adapters.validation import check_positive, check_positive_int


def _parse_set(items: list[str], algorithm_names: list[str]) -> dict[str, dict[str, Any]]:
    """``["drhmc.max_proposals=2", ...]`` -> ``{"drhmc": {"max_proposals": 2}}`` (values as JSON, else strings)."""
    out: dict[str, dict[str, Any]] = {name: {} for name in algorithm_names}
    for item in items:
        lhs, sep, value = item.partition("=")
        name, dot, key = lhs.rpartition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"--set: expected ALGORITHM.KEY=VALUE, got {item!r}")
        if name not in out:
            raise SystemExit(f"--set {item!r}: algorithm {name!r} is not in --algorithms {algorithm_names}")
        try:
            out[name][key] = json.loads(value)
        except json.JSONDecodeError:
            out[name][key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--posteriors", default="all", help="'all', a keyword, or comma-separated posterior names")
    parser.add_argument("--algorithms", default="nuts,hmc,drhmc", help="comma-separated registered algorithms")
    parser.add_argument("--seeds", default="0", help="e.g. '0-4' or '0,3,7'")
    parser.add_argument("--engine", choices=("dask", "serial"), default="dask")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: LocalCluster)")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    parser.add_argument("--store", required=True, help="SQLite file of finished runs (created if absent)")
    parser.add_argument("--timeout-per-run", type=float, default=None, help="seconds; runs then go to child processes")
    parser.add_argument("--retries", type=int, default=1, help="Dask re-submissions of a run whose worker died")
    parser.add_argument("--retry-failed", action="store_true", help="rerun the runs stored as failed")
    parser.add_argument("--route", choices=sweep.ROUTES, default="auto", help="port, Stan program, or port if any")
    parser.add_argument("--num-warmup", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--num-chains", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="ALG.KEY=VALUE", help="an algorithm's option")
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    parser.add_argument(
        "--jax-cache",
        default=sweep.default_compilation_cache(),
        metavar="DIR|off",
        help="JAX persistent compilation cache shared by the runs (default: %(default)s); 'off' compiles in every run",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per finished run")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    try:
        posteriors = sweep.select_posteriors(args.posteriors, args.path)
        seeds = sweep.parse_seeds(args.seeds)
        names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        registered = sweep.algorithm_names()  # no algorithm is loaded until build_tasks resolves its config
        unknown = [a for a in names if a not in registered]
        if unknown:
            raise ValueError(f"--algorithms: unknown {unknown}; registered algorithms: {registered}")
        overrides = _parse_set(args.set, names)
        common = {"num_warmup": args.num_warmup, "num_samples": args.num_samples, "num_chains": args.num_chains}
        for key, value in common.items():
            if value is not None:
                check_positive_int("--" + key.replace("_", "-"), value, allow_zero=key == "num_warmup")
        if args.timeout_per_run is not None:
            check_positive("--timeout-per-run", args.timeout_per_run)
        if args.workers is not None:
            check_positive_int("--workers", args.workers)
        check_positive_int("--retries", args.retries, allow_zero=True)
        for name in names:
            overrides[name] = {**{k: v for k, v in common.items() if v is not None}, **overrides[name]}
        cache = None if args.jax_cache == "off" else args.jax_cache
        tasks = sweep.build_tasks(posteriors, overrides, seeds, args.path, args.route, args.timeout_per_run, cache)
        store = sweep.SweepStore(args.store)
    except (ValueError, TypeError, sweep.StoreError, sweep.AlgorithmLoadError) as err:
        raise SystemExit(str(err)) from None

    if args.engine == "serial":
        executor: sweep.Executor = sweep.SerialExecutor()
    else:
        executor = sweep.DaskExecutor(args.scheduler, args.workers, args.retries)
    start = time.perf_counter()
    try:
        counts = sweep.run_sweep(
            tasks, store, executor, args.retry_failed, progress=not args.no_progress, verbose=args.verbose
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are in {args.store}; rerun the same command to complete the grid")
        raise
    finally:
        executor.close()
        store.close()
    counts["wall_s"] = time.perf_counter() - start
    print(
        f"sweep: {counts['total']} runs, {counts['skipped']} already in the store, "
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['wall_s']:.1f} s -> {args.store}"
    )
    return counts


def engines_main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    """Study ``sweep-engines``: the same small grid on the serial engine and on a local Dask cluster.

    Each engine runs the ``sweep`` command as a user would, in a fresh process with one
    thread per process (:data:`adapters.sweep.SINGLE_THREAD_ENV`, so serial is not handed a
    second core), into its own store; once with JAX's compilation cache off and once with an
    empty cache folder of its own (``--jax-cache``).  Reports wall times, the Dask speed-up
    at each cache setting and Dask's overhead per run: workers x wall time minus the runs'
    own wall times, divided by the number of runs.
    """
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from benchmarks._harness import ResultFile, table

    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep-engines", description=engines_main.__doc__)
    parser.add_argument("--posteriors", default="arK,eight_schools_noncentered,kidscore_momiq,garch11")
    parser.add_argument("--algorithms", default="hmc,nuts")
    parser.add_argument("--seeds", default="0-1")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--num-warmup", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--path", default=None)
    args = parser.parse_args(argv)
    grid = ["--posteriors", args.posteriors, "--algorithms", args.algorithms, "--seeds", args.seeds]
    grid += ["--num-warmup", str(args.num_warmup), "--num-samples", str(args.num_samples)]
    grid += ["--num-chains", str(args.num_chains), "--no-progress"]
    grid += ["--path", args.path] if args.path else []
    grid += ["--workers", str(args.workers)] if args.workers else []
    env = {**os.environ, **sweep.SINGLE_THREAD_ENV}
    out = ResultFile("sweep-engines", vars(args), out_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cache in ("off", "on"):
            for engine in ("serial", "dask"):
                store = Path(tmp) / f"{engine}-{cache}.sqlite"
                jax_cache = "off" if cache == "off" else str(Path(tmp) / f"jax-{engine}")
                command = [sys.executable, "-m", "benchmarks", "sweep", *grid, "--engine", engine]
                command += ["--store", str(store), "--jax-cache", jax_cache]
                start = time.perf_counter()
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                reader = sweep.SweepStore(store)
                runs = reader.rows()
                reader.close()
                workers = 1 if engine == "serial" else args.workers or os.cpu_count() or 1
                run_seconds = sum(r["wall_s"] for r in runs)
                rows.append(
                    {
                        "engine": engine,
                        "jax_cache": cache,
                        "workers": workers,
                        "runs": len(runs),
                        "failed": sum(r["status"] != "ok" for r in runs),
                        "wall_s": wall,
                        "sum_run_s": run_seconds,
                        "overhead_per_run_s": (workers * wall - run_seconds) / max(len(runs), 1),
                    }
                )
                out.add(rows[-1])
    wall = {(r["engine"], r["jax_cache"]): r["wall_s"] for r in rows}
    summary = {f"speedup_cache_{c}": wall["serial", c] / wall["dask", c] for c in ("off", "on")}
    summary["cache_speedup_dask"] = wall["dask", "off"] / wall["dask", "on"]
    out.finish(summary)
    columns = ["engine", "jax_cache", "workers", "runs", "failed", "wall_s", "sum_run_s", "overhead_per_run_s"]
    print(table(rows, columns))
    print(
        f"\nDask speed-up over serial: {summary['speedup_cache_off']:.2f}x (cache off), "
        f"{summary['speedup_cache_on']:.2f}x (cache on) -> {out.path}"
    )
    return out.data
