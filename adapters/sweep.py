"""Sweeps: posteriors x algorithms x seeds, on Dask or serially, into one resumable SQLite store.

A *run* is a pure function of its key ``(posterior, algorithm, config, seed)``: it builds
the posterior's :class:`~adapters.target.Target` (the algorithm's backend port when there
is one, else the Stan route), calls the algorithm's registered ``run`` function and scores
the draws against the posterior's reference draws (:func:`adapters.metrics.reference_score`).

* **Algorithms** register themselves with :func:`register_algorithm` when their backend
  package is imported (``numpyro_ext.infer``, ``pyro_ext.infer``); :func:`algorithms`
  imports those packages lazily, skipping a backend that is not installed.
* **Engines** share every code path: :class:`SerialExecutor` runs the tasks in this process,
  :class:`DaskExecutor` on a ``dask.distributed`` cluster (a ``LocalCluster`` of one-thread
  process workers by default, or an existing scheduler's address, e.g. from dask-jobqueue).
* **Store**: :class:`SweepStore`, one SQLite row per finished run, written in its own
  transaction by the driver, so a sweep killed at any point loses no finished row and a
  rerun of the same command skips the finished keys.

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
import importlib
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from adapters.validation import check_choice

BACKEND_PACKAGES = {"numpyro": "numpyro_ext.infer", "pyro": "pyro_ext.infer"}
COMMON_DEFAULTS = {"num_warmup": 1000, "num_samples": 1000, "num_chains": 4}
ROUTES = ("auto", "port", "stan")
_PACKAGES = ("numpy", "jax", "numpyro", "torch", "pyro-ppl", "arviz", "dask", "pystan")

# Environment of worker processes: one thread each, so n workers use n cores and a run's
# numbers do not depend on how many runs share the machine.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "PPL_EXT_TORCH_THREADS": "1",
}


# ---------------------------------------------------------------------------------------
# Algorithm registry
# ---------------------------------------------------------------------------------------
class RunOutput(NamedTuple):
    """What an algorithm's run returns.

    * ``draws``: constrained draws ``{site: array (chains, draws, *shape)}`` (as
      ``MCMC.get_samples(group_by_chain=True)``), scored against the reference draws;
    * ``grad_evals``: gradient evaluations of the sampling phase (warmup excluded);
    * ``divergences``: divergent transitions of the sampling phase.
    """

    draws: Mapping[str, Any]
    grad_evals: int
    divergences: int


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A sweepable algorithm: ``run(target, config, seed) -> RunOutput``.

    ``defaults`` lists the config keys every run's config holds (the common ``num_warmup``,
    ``num_samples``, ``num_chains`` included) with their default values; ``optional`` the
    keys a run's config holds only when they are set (with the value the run function uses
    otherwise), so that an option added later leaves the stored runs' keys as they were;
    ``setup`` runs in the worker before the posterior's target is built (e.g. to switch JAX
    to float64).
    """

    name: str
    backend: str
    run: Callable[[Any, Mapping[str, Any], int], RunOutput]
    defaults: Mapping[str, Any]
    description: str = ""
    setup: Callable[[], None] | None = None
    optional: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full config: ``defaults`` updated by ``overrides`` (unknown keys are refused)."""
        overrides = dict(overrides or {})
        known = {*self.defaults, *self.optional}
        unknown = sorted(set(overrides) - known)
        if unknown:
            known_text = f"known keys: {sorted(known)}"
            raise ValueError(f"config of algorithm {self.name!r}: unknown key(s) {unknown}; {known_text}")
        return {**self.defaults, **overrides}


_REGISTRY: dict[str, Algorithm] = {}


def register_algorithm(
    name: str,
    backend: str,
    run: Callable[[Any, Mapping[str, Any], int], RunOutput],
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    setup: Callable[[], None] | None = None,
    optional: Mapping[str, Any] | None = None,
) -> Algorithm:
    """Make ``run`` sweepable under ``name`` (called by each algorithm's module at import).

    ``run(target, config, seed)`` gets an :class:`~adapters.target.Target` of the posterior
    (native to ``backend`` when the posterior has a port there), the resolved config and
    the seed, and returns a :class:`RunOutput`.  Registering a name twice replaces it.
    """
    check_choice("backend", backend, tuple(BACKEND_PACKAGES))
    defaults = {**COMMON_DEFAULTS, **(defaults or {})}
    algorithm = Algorithm(name, backend, run, defaults, description, setup, dict(optional or {}))
    _REGISTRY[name] = algorithm
    return algorithm


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm, importing the installed backends' packages first."""
    for package in BACKEND_PACKAGES.values():
        try:
            importlib.import_module(package)
        except ImportError:  # that backend's extra is not installed: its algorithms are absent
            pass
    return dict(sorted(_REGISTRY.items()))


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; a ``ValueError`` listing the valid names otherwise."""
    registry = algorithms()
    if name not in registry:
        raise ValueError(f"unknown algorithm {name!r}; registered algorithms: {sorted(registry)}")
    return registry[name]


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


def run_task(task: Task) -> dict[str, Any]:
    """Execute one run in this process and return its store row (never raises)."""
    row = _key_row(task)
    start = time.perf_counter()
    try:
        use_compilation_cache(task.compilation_cache)
        from adapters import metrics, posteriordb

        algorithm = get_algorithm(task.algorithm)
        if algorithm.setup is not None:
            algorithm.setup()
        target, row["route"] = resolve_target(task.posterior, algorithm.backend, task.route, task.path)
        _pin_threads()
        output = algorithm.run(target, dict(task.config), task.seed)
        row["wall_s"] = time.perf_counter() - start
        draws = metrics.flatten_draws(output.draws)
        bad = sorted(k for k, v in draws.items() if not np.all(np.isfinite(v)))
        if bad:
            raise FloatingPointError(f"non-finite draws of {bad[:5]}{' ...' if len(bad) > 5 else ''}")
        grads = int(output.grad_evals)
        score = metrics.reference_score(draws, posteriordb.load(task.posterior, task.path).reference_draws)
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
# Store
# ---------------------------------------------------------------------------------------
_COLUMNS = {
    "key": "TEXT PRIMARY KEY",
    "posterior": "TEXT NOT NULL",
    "algorithm": "TEXT NOT NULL",
    "config": "TEXT NOT NULL",
    "seed": "INTEGER NOT NULL",
    "route": "TEXT",
    "status": "TEXT NOT NULL",
    "error": "TEXT",
    "wall_s": "REAL",
    "grad_evals": "INTEGER",
    "divergences": "INTEGER",
    "min_ess_bulk": "REAL",
    "ess_per_grad": "REAL",
    "max_z_mean": "REAL",
    "max_log_sd": "REAL",
    "max_quantile": "REAL",
    "worst": "TEXT",
    "passed": "INTEGER",
    "finished": "TEXT",
    "machine": "TEXT",
    "versions": "TEXT",
}
_JSON_COLUMNS = ("config", "machine", "versions")


class StoreError(RuntimeError):
    """The sweep store cannot be used (corrupt, locked, or not a sweep store)."""


class SweepStore:
    """One SQLite file of finished runs, table ``runs`` (one row per key)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            columns = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
            found = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err
        missing = sorted(set(_COLUMNS) - found)
        if missing:
            raise StoreError(f"--store {self.path}: table 'runs' is not a sweep table (missing columns {missing})")

    def _explain(self, err: sqlite3.DatabaseError) -> str:
        text = str(err)
        if "locked" in text:
            return f"--store {self.path}: the SQLite file is locked by another process (another sweep?): {text}"
        return f"--store {self.path}: not a usable SQLite sweep store (corrupt or another kind of file): {text}"

    def finished(self, include_failed: bool = True) -> set[str]:
        """Keys of the stored runs (only the successful ones with ``include_failed=False``)."""
        query = "SELECT key FROM runs" + ("" if include_failed else " WHERE status = 'ok'")
        try:
            return {r[0] for r in self._db.execute(query)}
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err

    def add(self, row: Mapping[str, Any]) -> None:
        """Insert (or replace) one run's row, in its own transaction."""
        values = {k: row.get(k) for k in _COLUMNS}
        for k in _JSON_COLUMNS:
            values[k] = json.dumps(values[k], sort_keys=True, default=str)
        if values["passed"] is not None:
            values["passed"] = int(values["passed"])
        for k in ("wall_s", "min_ess_bulk", "ess_per_grad", "max_z_mean", "max_log_sd", "max_quantile"):
            if isinstance(values[k], float) and not math.isfinite(values[k]):
                values[k] = None if math.isnan(values[k]) else values[k]
        placeholders = ", ".join("?" for _ in values)
        try:
            with self._db:  # BEGIN ... COMMIT
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({placeholders})", list(values.values())
                )
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row, JSON columns decoded, ``passed`` as a bool."""
        try:
            cursor = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs ORDER BY posterior, algorithm, seed")
            out = [dict(zip(_COLUMNS, r, strict=True)) for r in cursor]
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err
        for row in out:
            for k in _JSON_COLUMNS:
                row[k] = json.loads(row[k]) if row[k] else None
            row["passed"] = None if row["passed"] is None else bool(row["passed"])
        return out

    def close(self) -> None:
        self._db.close()


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
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            needs = "the dask engine needs the 'distributed' extra: pip install 'ppl-ext[distributed]'"
            raise ImportError(needs) from err
        self.retries = int(retries)
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

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,3,7"`` -> ``[0, 3, 7]``; mixtures too."""
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

    Seed-major: every posterior and algorithm at the first seed, then at the next, so that
    with a ``compilation_cache`` the later seeds (on any worker) reuse the first's programs.
    """
    check_choice("route", route, ROUTES)
    configs = {name: get_algorithm(name).resolve(overrides) for name, overrides in algorithm_configs.items()}
    return [
        Task(p, a, configs[a], s, path, route, timeout, compilation_cache)
        for s in seeds
        for p in posteriors
        for a in algorithm_configs
    ]


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
    # run as ``python -m adapters.sweep``: use the imported module, whose registry the
    # backends fill, not this ``__main__`` copy of it
    import adapters.sweep

    adapters.sweep._child_main()
