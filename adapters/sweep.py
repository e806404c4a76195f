"""Sweeps: posteriors x algorithms x seeds, on Dask or serially, into one resumable SQLite store.

A *run* is a pure function of its key ``(posterior, algorithm, config, seed)``: it builds
the posterior's :class:`~adapters.target.Target` (the algorithm's backend port when there
is one, else the Stan route), calls the algorithm's registered ``run`` function and scores
the draws against the posterior's reference draws (:func:`adapters.metrics.reference_score`).

* **Algorithms** are Python entry points of the group ``ppl_ext.sweep_algorithms``
  (:mod:`adapters.sweep_registry`): this library declares its own in ``pyproject.toml``
  (``numpyro_ext.infer.sweep_runs``, ``pyro_ext.infer.sweep_runs``), and a user's package
  adds one the same way.  A run imports only its own algorithm's module, and an entry point
  that fails to load is an error that names it.
* **Engines** share every code path: :class:`SerialExecutor` runs the tasks in this process,
  :class:`DaskExecutor` on a ``dask.distributed`` cluster (a ``LocalCluster`` of one-thread
  process workers by default, or an existing scheduler's address, e.g. from dask-jobqueue).
* **Store**: :class:`SweepStore` (:mod:`adapters.sweep_store`), one SQLite row per
  finished run, written in its own transaction by the driver, so a sweep killed at any
  point loses no finished row and a rerun of the same command skips the finished keys.

A run that raises, returns non-finite draws, or outlives ``timeout`` seconds is stored with
``status = "failed"`` and its error text; it never stops the sweep.  With a timeout, each
run executes in a child process (``python -m adapters.sweep``) that is killed when the time
is up, which costs the child's imports (a few seconds) per run.

**Compilation cache.** JAX compiles a model's sampler anew in every process, and for a short
run compiling costs as much as sampling.  A task's ``compilation_cache`` folder turns on
JAX's persistent compilation cache in the process that runs it, so the seeds of a
posterior, Dask's workers and the timeout's child processes compile each program once
(the ``sweep`` command's default: :func:`default_compilation_cache`).  It changes no number,
only wall time; the grid runs seed by seed so that later seeds find their programs compiled.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from adapters.sweep_registry import (
    COMMON_DEFAULTS,
    ENTRY_POINT_GROUP,
    Algorithm,
    AlgorithmLoadError,
    RunOutput,
    algorithm_names,
    algorithms,
    define_algorithm,
    get_algorithm,
    register_algorithm,
)
from adapters.sweep_store import StoreError, SweepStore
from adapters.validation import check_choice, check_positive, check_positive_int

__all__ = [
    "COMMON_DEFAULTS",
    "ENTRY_POINT_GROUP",
    "ROUTES",
    "SINGLE_THREAD_ENV",
    "Algorithm",
    "AlgorithmLoadError",
    "DaskExecutor",
    "Executor",
    "RunOutput",
    "SerialExecutor",
    "StoreError",
    "SweepStore",
    "Task",
    "algorithm_names",
    "algorithms",
    "build_tasks",
    "default_compilation_cache",
    "define_algorithm",
    "execute",
    "get_algorithm",
    "parse_seeds",
    "register_algorithm",
    "resolve_target",
    "run_output",
    "run_sweep",
    "run_task",
    "select_posteriors",
]

ROUTES = ("auto", "port", "stan")
_PACKAGES = ("numpy", "jax", "numpyro", "torch", "pyro-ppl", "arviz", "dask", "pystan")

# Environment of worker processes: one thread each, so n workers use n cores and a run's
# numbers do not depend on how many runs share the machine.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "PPL_EXT_TORCH_THREADS": "1",
}


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
    """One run's key and where to find its posterior."""

    posterior: str
    algorithm: str
    config: Mapping[str, Any]
    seed: int
    path: str | None = None
    route: str = "auto"
    timeout: float | None = None
    compilation_cache: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], path: str | None = None) -> Task:
        """The task of a stored row (:meth:`SweepStore.rows`), on the route the run took; ``path``: its posteriordb."""
        return cls(row["posterior"], row["algorithm"], dict(row["config"]), int(row["seed"]), path, row["route"])

    @property
    def key(self) -> str:
        """A hash of ``(posterior, algorithm, config, seed, route)``: the store's primary key."""
        identity = {
            "posterior": self.posterior,
            "algorithm": self.algorithm,
            "config": dict(self.config),
            "seed": self.seed,
            "route": self.route,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def resolve_target(posterior: str, backend: str, route: str = "auto", path: str | None = None):
    """``(target, route)``: the posterior's port in ``backend`` or, for ``route="stan"`` or a
    posterior without such a port under ``"auto"``, its Stan program (:meth:`Target.from_posteriordb`)."""
    from adapters import posteriordb
    from adapters.target import Target

    check_choice("route", route, ROUTES)
    if route == "auto":
        model_name = posteriordb.load(posterior, path).model_name
        route = "port" if model_name in posteriordb.ported_models(backend) else "stan"
    target = Target.from_posteriordb(posterior, backend if route == "port" else "stan", path)
    return target, route


def _pin_threads() -> None:
    threads = os.environ.get("PPL_EXT_TORCH_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def default_compilation_cache() -> str:
    """``$XDG_CACHE_HOME/ppl-ext/jax`` (``~/.cache/ppl-ext/jax``): the sweeps' JAX compilation cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ppl-ext", "jax")


def use_compilation_cache(directory: str | None) -> None:
    """JAX's persistent compilation cache in ``directory`` for this process (``None``: leave it as it is)."""
    if directory is None:
        return
    import jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # every program: a sampler is many small jitted pieces, none of them slow alone
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_output(task: Task) -> RunOutput:
    """Run ``task`` in this process and return the algorithm's :class:`RunOutput`: the draws themselves.

    The store keeps a run's scores, not its draws; a run is a pure function of its key, so
    ``run_output(Task.from_row(row, path)).to_arviz()`` gives a stored run's draws again as
    ArviZ ``InferenceData`` (same numbers on the same machine and versions).
    """
    return _run(task)[0]


def _run(task: Task) -> tuple[RunOutput, str]:
    use_compilation_cache(task.compilation_cache)
    algorithm = get_algorithm(task.algorithm)
    if algorithm.setup is not None:
        algorithm.setup()
    target, route = resolve_target(task.posterior, algorithm.backend, task.route, task.path)
    _pin_threads()
    return algorithm.run(target, dict(task.config), task.seed), route


def run_task(task: Task) -> dict[str, Any]:
    """Execute one run in this process and return its store row (never raises)."""
    row = _key_row(task)
    start = time.perf_counter()
    try:
        from adapters import metrics, posteriordb

        output, row["route"] = _run(task)
        row["wall_s"] = time.perf_counter() - start
        draws = metrics.flatten_draws(output.draws)
        bad = sorted(k for k, v in draws.items() if not np.all(np.isfinite(v)))
        if bad:
            raise FloatingPointError(f"non-finite draws of {bad[:5]}{' ...' if len(bad) > 5 else ''}")
        grads = int(output.grad_evals)
        score = metrics.reference_score(draws, posteriordb.load(task.posterior, task.path))
        summary = score.summary()
        row.update(
            status="ok",
            grad_evals=grads,
            divergences=int(output.divergences),
            min_ess_bulk=float(summary["min_ess"]),
            ess_per_grad=float(summary["min_ess"]) / max(grads, 1),
            max_z_mean=float(summary["max_z_mean"]),
            max_log_sd=float(summary["max_log_sd"]),
            max_quantile=float(summary["max_quantile"]),
            worst=str(summary["worst"]),
            passed=bool(summary["passed"]),
        )
    except Exception as err:  # recorded, never fatal to the sweep
        row.update(status="failed", error=_error_text(err), wall_s=time.perf_counter() - start)
    return row


def _error_text(err: BaseException) -> str:
    lines = traceback.format_exception_only(type(err), err)
    return "".join(lines).strip()[-2000:]


def execute(task: Task) -> dict[str, Any]:
    """:func:`run_task`, in a child process killed after ``task.timeout`` seconds if one is set."""
    row = run_task(task) if task.timeout is None else _run_in_child(task)
    row.update(finished=_dt.datetime.now().isoformat(timespec="seconds"), machine=machine(), versions=versions())
    return row


def _run_in_child(task: Task) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "adapters.sweep"],
            input=json.dumps(dataclasses.asdict(task)),
            capture_output=True,
            text=True,
            timeout=task.timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        failed = f"timed out after {task.timeout:g} s (the run's child process was killed)"
        return _failed_row(task, failed, time.perf_counter() - start)
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.returncode != 0 or not last:
        tail = done.stderr.strip()[-1500:]
        return _failed_row(task, f"child process exited with {done.returncode}: {tail}", time.perf_counter() - start)
    return json.loads(last[0])


def _key_row(task: Task) -> dict[str, Any]:
    """The columns of a row that identify its run."""
    fields = ("posterior", "algorithm", "seed", "route")
    return {"key": task.key, "config": dict(task.config), **{f: getattr(task, f) for f in fields}}


def _failed_row(task: Task, error: str, wall: float) -> dict[str, Any]:
    return {**_key_row(task), "status": "failed", "error": error, "wall_s": wall}


def machine() -> dict[str, Any]:
    """Platform, Python version and CPU count of this machine."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


def versions(packages: Sequence[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` for a missing one)."""
    import importlib.metadata

    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------
class Executor(Protocol):
    """Runs tasks and yields their rows in completion order."""

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Every task in this process, one after the other (for debugging and for tests)."""

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[dict[str, Any]]:
        for task in tasks:
            yield execute(task)

    def map_function(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(i, function(items[i]))`` for each item, here and in order (:meth:`DaskExecutor.map_function`)."""
        for index, item in enumerate(items):
            yield index, function(item)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a ``dask.distributed`` cluster.

    With ``scheduler=None`` a ``LocalCluster`` of ``n_workers`` one-thread process workers
    (default: one per core) is started with :data:`SINGLE_THREAD_ENV`; otherwise the client
    connects to the scheduler at that address (workers of such a cluster should set the
    same environment).  ``retries`` re-submits a task whose worker died.
    """

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None, retries: int = 1):
        if n_workers is not None:
            check_positive_int("n_workers", n_workers)
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            needs = "the dask engine needs the 'distributed' extra: pip install 'ppl-ext[distributed]'"
            raise ImportError(needs) from err
        self.retries = check_positive_int("retries", retries, allow_zero=True)
        self._cluster = None
        if scheduler is None:
            self._cluster = LocalCluster(
                n_workers=n_workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                env=dict(SINGLE_THREAD_ENV),
                dashboard_address=":0",  # a free port: no clash with a running dashboard
            )
            self.client = Client(self._cluster)
        else:
            self.client = Client(scheduler)

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[dict[str, Any]]:
        from distributed import as_completed

        futures = {
            self.client.submit(execute, task, key=f"run-{task.key}", pure=False, retries=self.retries): task
            for task in tasks
        }
        for future in as_completed(futures):
            task = futures[future]
            try:
                yield future.result()
            except Exception as err:  # KilledWorker and the like: the run is failed, the sweep goes on
                row = _failed_row(task, f"worker failure: {_error_text(err)}", math.nan)
                row.update(finished=_dt.datetime.now().isoformat(timespec="seconds"))
                yield row

    def map_function(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(i, function(items[i]))`` in completion order, each call one task on the cluster.

        The engine's hook for a library's own embarrassingly parallel work that is not a sweep
        run (e.g. OMC's chunks of seeds): ``function`` and the items must pickle (cloudpickle),
        and a task's exception is raised here, after its ``retries``.
        """
        from distributed import as_completed

        futures = {
            self.client.submit(function, item, pure=False, retries=self.retries): index
            for index, item in enumerate(items)
        }
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,3,7"`` -> ``[0, 3, 7]``; mixtures too."""
    if not isinstance(text, str):
        raise TypeError(f"--seeds: expected text like '0-4' or '0,3,7', got {text!r} (build_tasks takes a list)")
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(s) for s in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds: expected non-negative integers like '0-4' or '0,3,7', got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: expected non-negative integers, got {text!r}")
    return sorted(set(seeds))


def select_posteriors(spec: str, path: str | None = None) -> list[str]:
    """``"all"``, a keyword (every posterior whose name contains it) or comma-separated names."""
    from adapters import posteriordb

    if not isinstance(spec, str):
        expected = "'all', a keyword or comma-separated names"
        raise TypeError(f"--posteriors: expected text, {expected}, got {spec!r} (build_tasks takes a list)")
    available = posteriordb.list_posteriors(path)
    if spec == "all":
        return available
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part in available:
            names.append(part)
            continue
        matches = [n for n in available if part in n]
        if not matches:
            raise ValueError(f"--posteriors: {part!r} matches no posterior of the database; posteriors: {available}")
        names.extend(matches)
    return list(dict.fromkeys(names))


def build_tasks(
    posteriors: Iterable[str],
    algorithm_configs: Mapping[str, Mapping[str, Any]],
    seeds: Iterable[int],
    path: str | None = None,
    route: str = "auto",
    timeout: float | None = None,
    compilation_cache: str | None = None,
) -> list[Task]:
    """The grid ``posteriors x algorithms x seeds``, each algorithm's config resolved.

    ``posteriors``: names of the database at ``path`` (:func:`select_posteriors` expands a
    keyword); ``algorithm_configs``: ``{algorithm name: {option: value}}`` (``{}`` for the
    defaults, :meth:`Algorithm.resolve`); ``seeds``: non-negative integers (:func:`parse_seeds`
    reads ``"0-4"``).  Each is checked here, with an error that names it.

    Seed-major: every posterior and algorithm at the first seed, then at the next, so that
    with a ``compilation_cache`` the later seeds (on any worker) reuse the first's programs.
    """
    from adapters import posteriordb

    check_choice("route", route, ROUTES)
    posteriors = _names("posteriors", posteriors, "select_posteriors('keyword')")
    available = set(posteriordb.list_posteriors(path))
    missing = [p for p in posteriors if p not in available]
    if missing:
        where = path or os.environ.get("POSTERIOR_DB_PATH") or "the embedded database"
        raise ValueError(f"posteriors: {missing} not in the posteriordb at {where}; see select_posteriors")
    if not isinstance(algorithm_configs, Mapping):
        expected = "a dict {algorithm name: {option: value}}"
        raise TypeError(f"algorithm_configs must be {expected}, got {algorithm_configs!r}")
    seeds = _names("seeds", seeds, "parse_seeds('0-4')", kind=None)
    for seed in seeds:
        check_positive_int("seeds: each seed", seed, allow_zero=True)
    if timeout is not None:
        check_positive("timeout", timeout)
    path, compilation_cache = (None if d is None else os.fspath(d) for d in (path, compilation_cache))
    configs = {name: get_algorithm(name).resolve(overrides) for name, overrides in algorithm_configs.items()}
    return [
        Task(p, a, configs[a], int(s), path, route, timeout, compilation_cache)
        for s in seeds
        for p in posteriors
        for a in algorithm_configs
    ]


def _names(name: str, values: Any, hint: str, kind: type | None = str) -> list[Any]:
    """``values`` as a list; a lone string (which would iterate over its characters) is refused."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list, got {values!r} (to read one from text: {hint})")
    values = list(values)
    wrong = [v for v in values if kind is not None and not isinstance(v, kind)]
    if wrong:
        raise TypeError(f"{name} must be a list of {kind.__name__}, got {wrong[:3]}")
    return values


def run_sweep(
    tasks: Sequence[Task],
    store: SweepStore,
    executor: Executor,
    retry_failed: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> dict[str, int]:
    """Run the tasks whose keys the store lacks; write each finished row at once.

    Returns counts: ``{"total", "skipped", "ok", "failed"}``.
    """
    from tqdm.auto import tqdm

    done = store.finished(include_failed=not retry_failed)
    todo = [t for t in tasks if t.key not in done]
    counts = {"total": len(tasks), "skipped": len(tasks) - len(todo), "ok": 0, "failed": 0}
    bar = tqdm(total=len(tasks), initial=counts["skipped"], desc="sweep", unit="run", disable=not progress)
    try:
        for row in executor.map_unordered(todo):
            store.add(row)
            counts[row["status"]] += 1
            bar.update(1)
            if verbose:
                bar.write(summary_line(row))
    finally:
        bar.close()
    return counts


def summary_line(row: Mapping[str, Any]) -> str:
    """One line per finished run (``-v``)."""
    head = f"{row['posterior']} {row['algorithm']} seed={row['seed']}"
    if row["status"] != "ok":
        return f"{head}: FAILED ({str(row.get('error', '')).splitlines()[-1][:160]})"
    verdict = "pass" if row["passed"] else "FAIL"
    return (
        f"{head}: {row['wall_s']:.1f} s, {row['grad_evals']} grads, ESS/grad {row['ess_per_grad']:.3g}, "
        f"max z {row['max_z_mean']:.2f}, {row['divergences']} div, score {verdict} [{row['route']}]"
    )


def _child_main() -> None:
    task = Task(**json.loads(sys.stdin.read()))
    row = run_task(dataclasses.replace(task, timeout=None))
    print(json.dumps(row, default=float))


if __name__ == "__main__":
    # run as ``python -m adapters.sweep``: use the imported module, not this ``__main__`` copy of it
    import adapters.sweep

    adapters.sweep._child_main()
