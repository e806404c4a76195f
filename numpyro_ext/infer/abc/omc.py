"""Optimization Monte Carlo (OMC) in JAX, seeds in vmapped chunks, in-process or on the sweep's Dask engine.

Meeds & Welling, "Optimization Monte Carlo: Efficient and Embarrassingly Parallel Likelihood-Free
Inference", NeurIPS 2015 (arXiv:1506.03693).  A simulation is a deterministic function of the
parameters and its random numbers, ``x = f(theta, omega)``.  For each seed ``i`` OMC fixes
``omega_i`` (here the JAX key of seed ``i``: common random numbers), solves ``f(theta, omega_i) = y``
by optimisation from a prior draw (their Eq. 3), and weights the solution ``theta_i*`` by the prior
over the volume that the map ``theta -> f(theta, omega_i)`` gives around it (their Eq. 5)::

    w_i  ∝  pi(theta_i*) / sqrt(det J_i^T J_i),      J_i = d f(theta, omega_i) / d theta at theta_i*  (d, D)

With ``d = D`` this is the change of variables from ``omega`` to ``theta`` (exact as the tolerance goes
to 0); with ``d > D``, ``theta_i*`` is the least-squares solution (exact for a linear simulator with
isotropic Gaussian noise).  ``d < D`` is refused: ``J^T J`` is then singular.

**Unconstrained space.**  The optimiser works on the problem's unconstrained ``u`` (``theta = T(u)``);
``J_u = J_theta T'(u)`` and ``pi_u(u) = pi_theta(T(u)) |det T'(u)|`` (``log_prior(u)`` includes it), so
``pi_u(u*) / sqrt(det J_u^T J_u) = pi_theta(theta*) / sqrt(det J_theta^T J_theta)``: the paper's weights.

**Optimiser** (a pure function of one seed, vmapped over a chunk): Levenberg-Marquardt
(Marquardt 1963) on ``r(u) = s(f(T(u), omega_i)) - y``: the step
``delta = -(J^T J + lambda diag(J^T J))^{-1} J^T r``, shortened to the trust radius ``Delta``, is taken
when it lowers ``|r|^2`` (``lambda /= 10``; ``Delta`` doubles when it had shortened the step), refused
otherwise (``lambda *= 10``, ``Delta = |delta| / 2``); ``Delta`` starts at ``max(1, |u_0|)``.  The radius
keeps the optimiser where the linearisation means something: Marquardt's scaling makes the damped
step scale-free, so where ``J`` is nearly flat (a saturating statistic, or ``x = m e^{-u}`` far below
the observation) the step is ``~ |r| / |J|`` however large ``lambda`` grows, and lands where ``T(u)``
under- or overflows (a non-finite simulation) or the statistic is flat to rounding (a reachable seed
stalls and is discarded).  ``"gauss_newton"`` takes every finite undamped, unbounded step.  A seed
stops when the step is below ``eps^(3/4)`` relative to ``|u|``, ``lambda`` exceeds 1e10, the step's
predicted and actual changes of ``|r|^2`` are both below ``16 eps |r|^2`` (the step is then taken: a
least-squares minimum to rounding), or after ``num_steps`` evaluations beyond the first.  ``J`` comes
from forward-mode autodiff (one simulation carrying ``D`` tangents) or central finite differences
(``1 + 2D`` simulations per evaluation); the weight uses the ``J`` of the same source at ``u*``.

**Discarded seeds** get weight zero and are counted in ``result.info``: a non-finite residual,
Jacobian or prior at the end (``num_nonfinite``), a singular ``J`` (``num_singular``) or a residual
norm above ``residual_threshold`` (``num_above_threshold``; an observation that seed cannot reach).

**Counting.**  ``num_simulations``: ``1`` (autodiff) or ``1 + 2D`` (finite differences) per evaluation
of a seed; ``num_nan_simulations`` those with non-finite statistics.  (A finished seed's lane idles
under ``vmap`` until its chunk finishes; those masked evaluations are not counted.)

**Parallel.**  Seed ``i``'s key is ``fold_in(rng_key, i)`` and chunks hold consecutive seeds (the last
one padded, so one program serves every chunk): a chunk is a pure function of ``(rng_key, start)``.
With ``executor=`` (:class:`adapters.sweep.DaskExecutor`) each chunk is a task and the numbers are
bit-identical to the in-process run with the same ``chunk_size``; with ``store=`` (a folder) each
finished chunk is written at once (atomically) and a rerun of the same configuration loads it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapters.abc import OMC_FIELDS as _FIELDS
from adapters.abc import ABCResult, check_epsilon, omc_result
from adapters.validation import check_choice, check_positive_int
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem

__all__ = [
    "GRADIENTS",
    "OMC",
    "OPTIMIZERS",
    "OMCState",
    "autodiff_evaluate",
    "finite_difference_evaluate",
    "omc_init",
    "omc_log_weight",
    "omc_optimize",
    "omc_start",
    "omc_step",
]

OPTIMIZERS = ("lm", "gauss_newton")
GRADIENTS = ("autodiff", "finite_differences")
DEFAULT_CHUNK_SIZE = 256
INITIAL_DAMPING = 1e-3
MIN_DAMPING = 1e-12
MAX_DAMPING = 1e10

Array = jax.Array
#: ``evaluate(u) -> (r (d,), J (d, D), number of non-finite simulations)``
Evaluate = Callable[[Array], tuple[Array, Array, Array]]


# ---------------------------------------------------------------------------------------
# Math core: one seed's optimisation (pure, jit/vmap-able)
# ---------------------------------------------------------------------------------------
class OMCState(NamedTuple):
    """One seed's optimisation: ``u`` ``(D,)`` the current point, ``residual`` ``(d,)`` and ``jacobian``
    ``(d, D)`` there, Levenberg-Marquardt's ``damping`` and trust ``radius`` (in ``u``), the evaluations
    after the first (``num_iterations``), all evaluations (``num_evaluations``), non-finite simulations
    (``num_nan``), and ``done``."""

    u: Array
    residual: Array
    jacobian: Array
    damping: Array
    radius: Array
    num_iterations: Array
    num_evaluations: Array
    num_nan: Array
    done: Array


def _all_finite(x: Array) -> Array:
    return jnp.all(jnp.isfinite(x))


def autodiff_evaluate(residual_fn: Callable[[Array], Array]) -> Evaluate:
    """``(r, J, num_nan)`` with ``J`` by forward mode: one simulation carrying the ``D`` basis tangents."""

    def evaluate(u):
        basis = jnp.eye(u.shape[0], dtype=u.dtype)
        r, columns = jax.vmap(lambda v: jax.jvp(residual_fn, (u,), (v,)), out_axes=(None, 0))(basis)
        return r, columns.T, (~_all_finite(r)).astype(jnp.int32)

    return evaluate


def finite_difference_evaluate(residual_fn: Callable[[Array], Array], fd_step: float) -> Evaluate:
    """``(r, J, num_nan)`` with ``J`` by central differences: ``1 + 2D`` simulations, the step of
    coordinate ``j`` is ``fd_step * max(1, |u_j|)``."""

    def evaluate(u):
        dim = u.shape[0]
        steps = jnp.diag(fd_step * jnp.maximum(1.0, jnp.abs(u)))
        points = jnp.concatenate([u[None], u + steps, u - steps])
        values = jax.vmap(residual_fn)(points)  # (1 + 2D, d)
        span = jnp.diagonal(points[1 : dim + 1] - points[dim + 1 :])  # the steps as represented: (D,)
        jacobian = ((values[1 : dim + 1] - values[dim + 1 :]) / span[:, None]).T
        num_nan = jnp.sum(~jnp.all(jnp.isfinite(values), axis=-1)).astype(jnp.int32)
        return values[0], jacobian, num_nan

    return evaluate


def omc_start(u0: Array, evaluate: Evaluate) -> OMCState:
    """The state at ``u0`` ``(D,)`` before its first evaluation (``num_evaluations == 0``; the residual and
    Jacobian are zero placeholders, shaped by tracing ``evaluate`` without running it): :func:`omc_step`
    evaluates it first.  :func:`omc_optimize` starts here, so its program holds one copy of the simulator."""
    r_shape, jacobian_shape, _ = jax.eval_shape(evaluate, u0)
    zero = jnp.zeros((), jnp.int32)
    r, jacobian = jnp.zeros(r_shape.shape, r_shape.dtype), jnp.zeros(jacobian_shape.shape, jacobian_shape.dtype)
    damping, radius = jnp.asarray(INITIAL_DAMPING, u0.dtype), jnp.maximum(1.0, jnp.linalg.norm(u0)).astype(u0.dtype)
    return OMCState(u0, r, jacobian, damping, radius, zero, zero, zero, jnp.asarray(False))


def omc_init(u0: Array, evaluate: Evaluate) -> OMCState:
    """The state at the starting point ``u0`` ``(D,)`` (one evaluation; done at once when it is not finite)."""
    return omc_step(omc_start(u0, evaluate), evaluate, num_steps=1)


def omc_step(state: OMCState, evaluate: Evaluate, num_steps: int, optimizer: str = "lm") -> OMCState:
    """One Levenberg-Marquardt (``"lm"``) or Gauss-Newton (``"gauss_newton"``) step; see the module docstring.

    A state not yet evaluated (:func:`omc_start`) is evaluated at its ``u`` instead, and is done when
    its values there are not finite."""
    u, r, jacobian = state.u, state.residual, state.jacobian
    fresh = state.num_evaluations == 0
    eps = jnp.finfo(u.dtype).eps
    gram = jacobian.T @ jacobian
    gradient = jacobian.T @ r
    if optimizer == "lm":
        # Marquardt's scaling by diag(J^T J) makes the damping unit-free; the floor keeps a zero column solvable
        scale = jnp.maximum(jnp.diagonal(gram), eps * jnp.max(jnp.diagonal(gram)) + jnp.finfo(u.dtype).tiny)
        gram = gram + state.damping * jnp.diag(scale)
    # J^T J (+ the damping) is symmetric positive definite where the step exists: Cholesky, whose
    # NaNs for a singular Gauss-Newton matrix stop the seed like a failed solve
    delta = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(gram, lower=True), gradient)
    radius = state.radius
    clipped = jnp.asarray(False)
    if optimizer == "lm":
        # the trust region: a step longer than the radius is shortened to it (module docstring)
        length = jnp.linalg.norm(delta)
        clipped = length > radius
        delta = jnp.where(clipped, delta * (radius / jnp.where(clipped, length, 1.0)), delta)
    xtol = eps**0.75
    step_length = jnp.linalg.norm(delta)
    stop = ~fresh & (~_all_finite(delta) | (step_length <= xtol * (jnp.linalg.norm(u) + xtol)))
    trial = u + jnp.where(stop | fresh, 0.0, delta)
    r_new, jacobian_new, nan_new = evaluate(trial)
    finite = _all_finite(r_new) & _all_finite(jacobian_new)
    # near a least-squares minimum (d > D) the change of |r|^2 is below its rounding: when both the
    # linear model's predicted and the actual change are (MINPACK's ftol test), the step is taken and
    # the seed is done, rather than refused until the radius collapses a sqrt(eps) short of the minimum
    change = (r_new - r) @ (r_new + r)  # |r_new|^2 - |r|^2 without the cancellation of the two sums
    tol = 16 * eps * (r @ r)
    jd = jacobian @ delta
    level = ~fresh & ~stop & finite & (jnp.abs(2 * r @ jd + jd @ jd) <= tol) & (jnp.abs(change) <= tol)
    better = change < 0 if optimizer == "lm" else jnp.asarray(True)
    accept = fresh | (~stop & finite & (better | level))
    moved = ~stop & ~fresh
    if optimizer == "lm":
        damping = jnp.where(accept, jnp.maximum(state.damping * 0.1, MIN_DAMPING), state.damping * 10.0)
        damping = jnp.where(moved, damping, state.damping)
        radius = jnp.where(accept, jnp.where(clipped, 2.0 * radius, radius), 0.5 * step_length)
        radius = jnp.where(moved, radius, state.radius)
        stalled = damping > MAX_DAMPING
    else:
        damping = state.damping
        stalled = moved & ~finite  # undamped: nowhere to go after a non-finite simulation
    num_iterations = state.num_iterations + moved.astype(jnp.int32)
    evaluated = (moved | fresh).astype(jnp.int32)
    done = jnp.where(fresh, ~finite, stop | stalled | level | (num_iterations >= num_steps))
    return OMCState(
        u=jnp.where(accept, trial, u),
        residual=jnp.where(accept, r_new, r),
        jacobian=jnp.where(accept, jacobian_new, jacobian),
        damping=damping,
        radius=radius,
        num_iterations=num_iterations,
        num_evaluations=state.num_evaluations + evaluated,
        num_nan=state.num_nan + evaluated * nan_new,
        done=done,
    )


def omc_optimize(u0: Array, evaluate: Evaluate, num_steps: int, optimizer: str = "lm") -> OMCState:
    """Optimise one seed from ``u0`` until it stops (``lax.while_loop``; vmap it over seeds)."""
    state = omc_start(u0, evaluate)  # evaluated by the loop's first step: one copy of the simulator
    return jax.lax.while_loop(lambda s: ~s.done, lambda s: omc_step(s, evaluate, num_steps, optimizer), state)


def omc_log_weight(log_prior: Array, jacobian: Array) -> tuple[Array, Array]:
    """``(log w, log|det J^T J| / 2)`` of a solution: ``log w = log_prior - log|det J^T J| / 2``.

    The half log-determinant is the sum of the log singular values of ``J`` ``(d, D)``, which never
    squares its condition number; ``-inf`` for a singular ``J``.
    """
    half_log_det = jnp.sum(jnp.log(jnp.linalg.svd(jacobian, compute_uv=False)))
    return log_prior - half_log_det, half_log_det


# ---------------------------------------------------------------------------------------
# Chunks of seeds: one jitted program per configuration and process
# ---------------------------------------------------------------------------------------


class _Config(NamedTuple):
    optimizer: str
    num_steps: int
    gradients: str
    fd_step: float | None
    chunk_size: int


class _ChunkRunner:
    """``(key_data, start) -> {field: (chunk_size, ...) numpy}`` for seeds ``start, ..., start + chunk_size - 1``."""

    def __init__(self, problem: LikelihoodFreeProblem, config: _Config):
        dtype = jnp.result_type(float)
        fd_step = config.fd_step if config.fd_step is not None else float(jnp.finfo(dtype).eps) ** (1.0 / 3.0)
        observed = jnp.asarray(problem.observed, dtype=dtype)

        def solve_seed(rng_key, index):
            init_key, sim_key = jax.random.split(jax.random.fold_in(rng_key, index))
            u0 = problem.sample_prior(init_key, 1)[0].astype(dtype)

            def residual_fn(u):
                return problem.simulate(u, sim_key) - observed

            if config.gradients == "autodiff":
                evaluate = autodiff_evaluate(residual_fn)
            else:
                evaluate = finite_difference_evaluate(residual_fn, fd_step)
            state = omc_optimize(u0, evaluate, config.num_steps, config.optimizer)
            log_prior = problem.log_prior(state.u)
            _, half_log_det = omc_log_weight(log_prior, state.jacobian)
            theta = problem.flat_theta(state.u)
            counts = (state.num_iterations, state.num_evaluations, state.num_nan)
            return dict(zip(_FIELDS, (state.u, theta, state.residual, log_prior, half_log_det, *counts), strict=True))

        def run_chunk(key_data, start):
            indices = start + jnp.arange(config.chunk_size, dtype=jnp.int32)
            return jax.vmap(solve_seed, in_axes=(None, 0))(key_data, indices)

        self._run = jax.jit(run_chunk)

    def __call__(self, key_data: np.ndarray, start: int) -> dict[str, np.ndarray]:
        out = self._run(jnp.asarray(key_data), np.int32(start))
        return {k: np.asarray(out[k]) for k in _FIELDS}


#: the compiled chunk programs of this process, the most recently used last: by (pid, the problem object's
#: id, configuration, x64) for the driver's own problem -- an entry's program holds the problem, so the id
#: stays its own -- and by (the driver's OMC token, x64) on a worker, where each task unpickles a new object
_RUNNERS: dict[tuple[Any, ...], _ChunkRunner] = {}
_MAX_RUNNERS = 4


def _cached_runner(key: tuple[Any, ...], load: Callable[[], tuple[LikelihoodFreeProblem, _Config]]) -> _ChunkRunner:
    runner = _RUNNERS.pop(key, None)
    if runner is None:
        runner = _ChunkRunner(*load())
        while len(_RUNNERS) >= _MAX_RUNNERS:
            _RUNNERS.pop(next(iter(_RUNNERS)))
    _RUNNERS[key] = runner
    return runner


def _remote_chunk(payload: tuple[str, tuple[Any, ...], bool, bytes, np.ndarray], start: int) -> dict[str, np.ndarray]:
    """One chunk in any process: the problem is unpickled (and the program traced) under the driver's
    float precision, so a worker computes the same numbers as the driver.  In the driver's own process
    (an in-process engine) the driver's compiled program serves it."""
    import cloudpickle

    token, local_key, x64, blob, key_data = payload
    with jax.enable_x64(x64):
        key = local_key if local_key[0] == os.getpid() and local_key in _RUNNERS else (token, x64)
        return _cached_runner(key, lambda: cloudpickle.loads(blob))(key_data, start)


class _ChunkStore:
    """A folder of finished chunks, one ``.npz`` per chunk, in a subfolder named by the configuration's hash."""

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any]):
        root = Path(path)
        text = json.dumps(identity, sort_keys=True)
        self.folder = root / f"omc-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "identity.json").write_text(text)

    def _path(self, start: int) -> Path:
        return self.folder / f"seeds-{start:010d}.npz"

    def load(self, start: int) -> dict[str, np.ndarray] | None:
        path = self._path(start)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return {k: data[k] for k in _FIELDS}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None  # unreadable: computed again

    def save(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.folder / f".tmp-{start:010d}-{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._path(start))  # atomic: a reader sees a whole chunk or none


def _key_data(rng_key: Any) -> np.ndarray:
    try:
        key = jnp.asarray(rng_key)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
    except TypeError:
        key = None
    if key is None or key.shape != (2,) or key.dtype != jnp.uint32:
        found = f"shape {key.shape}, dtype {key.dtype}" if key is not None else type(rng_key).__name__
        raise TypeError(f"rng_key: expected one key, jax.random.PRNGKey(seed), got {found}")
    return np.asarray(key)


def _name(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__name__)}"


# ---------------------------------------------------------------------------------------
# The NumPyro shell
# ---------------------------------------------------------------------------------------
class OMC:
    """Optimization Monte Carlo (Meeds & Welling 2015) on a :class:`LikelihoodFreeProblem`.

    Args:
        problem: the likelihood-free problem, with at least as many statistics ``d`` as parameters ``D``.
        num_seeds: the number of seeds ``N`` (one optimisation and one weighted draw each).
        optimizer: ``"lm"`` (Levenberg-Marquardt) or ``"gauss_newton"`` (undamped).
        num_steps: the most evaluations of a seed's optimisation after the first.
        residual_threshold: the largest accepted ``|r(u*)|_2``; seeds above it are discarded.  ``None``:
            ``1e-3 sqrt(d) max(1, max|y|)`` when ``d = D`` (an exact match exists and the optimiser
            reaches it to rounding), no threshold when ``d > D`` (no exact match; set one to drop outliers).
        gradients: ``"autodiff"`` (forward mode, the simulator must be differentiable) or
            ``"finite_differences"`` (central, ``1 + 2D`` simulations per evaluation).
        fd_step: relative finite-difference step; ``None``: ``eps^(1/3)`` of the float type.
        chunk_size: seeds per vmapped chunk (one task on an executor); ``None``: ``min(256, N)``.
            The numbers depend on it only through rounding; the same ``chunk_size`` gives the same bits
            in-process and on any executor.
    """

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        num_seeds: int = 1000,
        optimizer: str = "lm",
        num_steps: int = 100,
        residual_threshold: float | None = None,
        gradients: str = "autodiff",
        fd_step: float | None = None,
        chunk_size: int | None = None,
    ):
        if not isinstance(problem, LikelihoodFreeProblem):
            raise TypeError(f"problem: expected a LikelihoodFreeProblem, got {type(problem).__name__}")
        if problem.stat_dim < problem.dim:
            raise ValueError(
                f"problem: OMC needs at least as many summary statistics as parameters (d >= D), got "
                f"d = {problem.stat_dim} statistics for D = {problem.dim} parameters; J^T J would be singular"
            )
        self.problem = problem
        self.num_seeds = check_positive_int("num_seeds", num_seeds)
        self.optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.residual_threshold = None
        if residual_threshold is not None:
            self.residual_threshold = check_epsilon("residual_threshold", residual_threshold)
        self.gradients = check_choice("gradients", gradients, GRADIENTS)
        self.fd_step = None if fd_step is None else check_epsilon("fd_step", fd_step)
        if chunk_size is None:
            chunk_size = min(DEFAULT_CHUNK_SIZE, self.num_seeds)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self._config = _Config(self.optimizer, self.num_steps, self.gradients, self.fd_step, self.chunk_size)
        self._token = uuid.uuid4().hex
        self._fingerprints: dict[bool, list[float]] = {}

    @property
    def threshold(self) -> float:
        """The residual threshold in use (see ``residual_threshold``)."""
        if self.residual_threshold is not None:
            return self.residual_threshold
        if self.problem.stat_dim > self.problem.dim:
            return math.inf
        scale = max(1.0, float(np.max(np.abs(self.problem.observed))))
        return 1e-3 * math.sqrt(self.problem.stat_dim) * scale

    def run(self, rng_key: Any, executor: Any = None, store: str | os.PathLike | None = None) -> ABCResult:
        """Optimise and weight ``num_seeds`` seeds.

        Args:
            rng_key: ``jax.random.PRNGKey``; seed ``i`` uses ``fold_in(rng_key, i)`` (its prior draw and
                its simulations), whatever the chunking and the executor.
            executor: ``None`` (chunks in this process) or an engine of :mod:`adapters.sweep`
                (``DaskExecutor(n_workers=...)`` or ``DaskExecutor(scheduler=address)``, ``SerialExecutor()``):
                each chunk is a task; the problem must pickle (cloudpickle) and, on a remote cluster, the
                workers must import this library and the simulator's module.
            store: a folder: each finished chunk is saved there at once and a rerun of the same
                configuration (problem, key, optimiser settings, ``chunk_size``, precision) loads it
                instead of computing it.  ``residual_threshold`` is applied afterwards, so changing it
                reuses the stored chunks.  A changed simulator under the same name and prior needs a new folder.

        Returns:
            :class:`adapters.abc.ABCResult`: the kept seeds' constrained draws and log weights,
            ``distances`` their residual norms, ``info`` the per-seed values of all ``N`` seeds.
        """
        key_data = _key_data(rng_key)
        if executor is not None and not callable(getattr(executor, "map_function", None)):
            raise TypeError(
                "executor: expected None or an engine of adapters.sweep (DaskExecutor, SerialExecutor) with "
                f"map_function(function, items), got {type(executor).__name__}"
            )
        if store is not None:
            if not isinstance(store, (str, os.PathLike)):
                raise TypeError(f"store: expected None or a folder (str or os.PathLike), got {type(store).__name__}")
            if Path(store).exists() and not Path(store).is_dir():
                raise ValueError(f"store: expected a folder for OMC's finished chunks, got the file {store}")
        x64 = jnp.dtype(jnp.result_type(float)) == jnp.float64  # the precision the workers must use
        starts = list(range(0, self.num_seeds, self.chunk_size))
        chunk_store = None if store is None else _ChunkStore(store, self._identity(key_data, x64))
        chunks: dict[int, dict[str, np.ndarray]] = {}
        if chunk_store is not None:
            for start in starts:
                stored = chunk_store.load(start)
                if stored is not None:
                    chunks[start] = stored
        todo = [s for s in starts if s not in chunks]
        for start, arrays in self._compute(todo, key_data, x64, executor):
            chunks[start] = arrays
            if chunk_store is not None:
                chunk_store.save(start, arrays)
        return self._assemble(chunks, starts, computed=len(todo))

    # ---- computing ----------------------------------------------------------------------
    def _compute(
        self, todo: list[int], key_data: np.ndarray, x64: bool, executor: Any
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if not todo:
            return
        if executor is None:
            runner = _cached_runner(self._local_key(x64), lambda: (self.problem, self._config))
            for start in todo:
                yield start, runner(key_data, start)
            return
        import cloudpickle

        blob = cloudpickle.dumps((self.problem, self._config))
        function = functools.partial(_remote_chunk, (self._token, self._local_key(x64), x64, blob, key_data))
        for index, arrays in executor.map_function(function, todo):
            yield todo[index], arrays

    def _local_key(self, x64: bool) -> tuple[Any, ...]:
        return (os.getpid(), id(self.problem), self._config, x64)

    def _identity(self, key_data: np.ndarray, x64: bool) -> dict[str, Any]:
        """What a stored chunk depends on: the problem (names, observation, the simulator's name, a
        fingerprint of the prior), the key, the optimiser settings and the precision."""
        problem = self.problem
        fingerprint = self._fingerprints.get(x64)
        if fingerprint is None:  # once per precision: eager JAX calls are slow to dispatch
            u = problem.sample_prior(jax.random.PRNGKey(0), 2)
            fingerprint = [float(v) for v in np.ravel(u)] + [float(v) for v in jax.vmap(problem.log_prior)(u)]
            self._fingerprints[x64] = fingerprint
        return {
            "format": 1,
            "names": list(problem.names),
            "observed": [float(v) for v in problem.observed],
            "simulator": _name(problem.simulator),
            "stat_dim": problem.stat_dim,
            "prior": fingerprint,
            "key": [int(v) for v in key_data],
            "config": self._config._asdict(),
            "x64": x64,
        }

    # ---- the result ---------------------------------------------------------------------
    def _assemble(self, chunks: dict[int, dict[str, np.ndarray]], starts: list[int], computed: int) -> ABCResult:
        values = {k: np.concatenate([chunks[s][k] for s in starts])[: self.num_seeds] for k in _FIELDS}
        return omc_result(
            values,
            simulations_per_evaluation=1 if self.gradients == "autodiff" else 1 + 2 * self.problem.dim,
            residual_threshold=self.threshold,
            names=self.problem.names,
            sites=self.problem.sites,
            num_chunks_computed=computed,
            num_chunks_loaded=len(starts) - computed,
        )
