"""Study ``abc-scaling``: OMC's wall time in-process and on a local Dask cluster of 1 and 2 worker processes.

``python -m benchmarks abc-scaling --task slcp --num-seeds 65536 --chunk-size 4096``

One sbibm task (:func:`numpyro_ext.models.sbibm_tasks.sbibm_problem`), one OMC configuration and one key
on three engines: in this process (``executor=None``) and :class:`adapters.sweep.DaskExecutor` with
``n_workers`` 1 and 2 (one thread each, :data:`adapters.sweep.SINGLE_THREAD_ENV`).  Each engine runs the
same OMC object ``1 + repeats`` times: ``cold`` (every process traces and compiles the chunk program
once), then ``warm`` (the programs cached in the processes: compute and scheduling only; their median).
Reported per engine: wall seconds, cluster start-up, and Dask's overhead per task, ``(workers x warm
wall - chunks x in-process seconds per chunk) / chunks``; the speed-up 1 -> 2 workers (warm and cold);
and whether every run's numbers (draws, log weights, residuals, counts) are bit-identical to the
in-process cold run's.

Run it with ``OMP_NUM_THREADS=1 XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` so that the in-process
baseline has one core, as each worker does.  The machine's load average is recorded before and after:
on a machine shared with other work, the speed-up is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

import numpy as np

from adapters.validation import check_positive_int

ENGINES = ("in-process", "dask-1", "dask-2")
_COMPARED = ("theta", "log_weights", "distances")
_COMPARED_INFO = ("u", "residuals", "half_log_det", "log_prior", "num_iterations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks abc-scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default="slcp", help="an sbibm task: two_moons, gaussian_linear, gaussian_mixture, slcp"
    )
    parser.add_argument("--observation", type=int, default=1, help="sbibm observation 1-10")
    parser.add_argument("--num-seeds", type=int, default=65536)
    parser.add_argument("--chunk-size", type=int, default=4096, help="seeds per chunk = per Dask task")
    parser.add_argument("--num-steps", type=int, default=100, help="OMC's num_steps")
    parser.add_argument("--seed", type=int, default=0, help="the run's PRNGKey")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per engine (their median is reported)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. the machine's sharing)")
    return parser


def _same_bits(a: Any, b: Any) -> bool:
    same = all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True) for k in _COMPARED)
    same &= all(np.array_equal(a.info[k], b.info[k], equal_nan=True) for k in _COMPARED_INFO)
    return bool(same and a.num_simulations == b.num_simulations and a.num_nan_simulations == b.num_nan_simulations)


def _timed_run(omc: Any, key: Any, executor: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the result's reliability is not this study's subject
        result = omc.run(key, executor=executor)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    import jax

    from adapters.sweep import SINGLE_THREAD_ENV, DaskExecutor
    from benchmarks._harness import ResultFile, table
    from numpyro_ext.infer.abc.omc import OMC
    from numpyro_ext.models.sbibm_tasks import sbibm_problem

    args = build_parser().parse_args(argv)
    for name in ("num_seeds", "chunk_size", "num_steps", "observation", "repeats"):
        check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    problem = sbibm_problem(args.task, args.observation)
    omc = OMC(problem, num_seeds=args.num_seeds, chunk_size=args.chunk_size, num_steps=args.num_steps)
    key = jax.random.PRNGKey(args.seed)
    num_chunks = -(-args.num_seeds // args.chunk_size)
    config = {
        **vars(args),
        "num_chunks": num_chunks,
        "dim": problem.dim,
        "stat_dim": problem.stat_dim,
        "x64": bool(jax.config.jax_enable_x64),
        "driver_env": {k: os.environ.get(k) for k in SINGLE_THREAD_ENV},
        "worker_env": dict(SINGLE_THREAD_ENV),
        "load_average_before": list(os.getloadavg()),
    }
    out = ResultFile("abc-scaling", config, out_dir)
    rows: list[dict[str, Any]] = []
    reference = None
    for engine in ENGINES:
        start = time.perf_counter()
        executor = None if engine == "in-process" else DaskExecutor(n_workers=int(engine.split("-")[1]))
        startup = time.perf_counter() - start
        try:
            cold, cold_s = _timed_run(omc, key, executor)
            warm_runs = [_timed_run(omc, key, executor) for _ in range(args.repeats)]
        finally:
            if executor is not None:
                executor.close()
        if reference is None:
            reference = cold
        workers = 1 if executor is None else int(engine.split("-")[1])
        warm_times = [seconds for _, seconds in warm_runs]
        warm_s = float(np.median(warm_times))
        rows.append(
            {
                "engine": engine,
                "workers": workers,
                "chunks": num_chunks,
                "startup_s": startup,
                "cold_s": cold_s,
                "warm_s": warm_s,
                "warm_s_all": warm_times,
                "warm_s_per_chunk": warm_s / num_chunks,
                "bit_identical": all(_same_bits(result, reference) for result in [cold] + [r for r, _ in warm_runs]),
                "kept": len(cold.theta),
                "num_simulations": cold.num_simulations,
                "load_average": list(os.getloadavg()),
            }
        )
        out.add(rows[-1])
    per_chunk = rows[0]["warm_s_per_chunk"]  # the in-process compute of one chunk
    for row in rows[1:]:
        row["overhead_per_task_s"] = (row["workers"] * row["warm_s"] - num_chunks * per_chunk) / num_chunks
    by_engine = {r["engine"]: r for r in rows}
    summary = {
        "speedup_1_to_2_warm": by_engine["dask-1"]["warm_s"] / by_engine["dask-2"]["warm_s"],
        "speedup_1_to_2_cold": by_engine["dask-1"]["cold_s"] / by_engine["dask-2"]["cold_s"],
        "speedup_in_process_to_2_warm": by_engine["in-process"]["warm_s"] / by_engine["dask-2"]["warm_s"],
        "all_bit_identical": all(r["bit_identical"] for r in rows),
        "overhead_per_task_s": {r["engine"]: r["overhead_per_task_s"] for r in rows[1:]},
        "load_average_after": list(os.getloadavg()),
    }
    out.data["runs"] = rows  # with the overheads filled in
    out.finish(summary)
    columns = ["engine", "workers", "chunks", "startup_s", "cold_s", "warm_s", "overhead_per_task_s", "bit_identical"]
    print(table(rows, columns))
    print(
        f"\n{args.task}, {args.num_seeds} seeds in {num_chunks} chunks: speed-up 1 -> 2 workers "
        f"{summary['speedup_1_to_2_warm']:.2f}x warm, {summary['speedup_1_to_2_cold']:.2f}x cold; "
        f"bit-identical across engines: {summary['all_bit_identical']} -> {out.path}"
    )
    return out.data
