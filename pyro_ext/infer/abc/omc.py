"""Optimization Monte Carlo (OMC) in torch, seeds in batched chunks, in-process or on the sweep's Dask engine.

The twin of :mod:`numpyro_ext.infer.abc.omc` (same class, arguments, messages, result fields).
Meeds & Welling, "Optimization Monte Carlo: Efficient and Embarrassingly Parallel Likelihood-Free
Inference", NeurIPS 2015 (arXiv:1506.03693).  A simulation is a deterministic function of the
parameters and its random numbers, ``x = f(theta, omega)``.  For each seed ``i`` OMC fixes
``omega_i``, solves ``f(theta, omega_i) = y`` by optimisation from a prior draw (their Eq. 3), and
weights the solution ``theta_i*`` by the prior over the volume that the map
``theta -> f(theta, omega_i)`` gives around it (their Eq. 5)::

    w_i  ∝  pi(theta_i*) / sqrt(det J_i^T J_i),      J_i = d f(theta, omega_i) / d theta at theta_i*  (d, D)

With ``d = D`` this is the change of variables from ``omega`` to ``theta`` (exact as the tolerance
goes to 0); with ``d > D``, ``theta_i*`` is the least-squares solution.  ``d < D`` is refused.

**Unconstrained space.**  The optimiser works on the problem's unconstrained ``u``; with
``J_u = J_theta T'(u)`` and ``pi_u(u) = pi_theta(T(u)) |det T'(u)|`` the Jacobian of ``T`` cancels, so
``pi_u(u*) / sqrt(det J_u^T J_u) = pi_theta(theta*) / sqrt(det J_theta^T J_theta)``: the paper's weights.

**Optimiser** (batched over a chunk's rows, each row its own optimisation): Levenberg-Marquardt
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
least-squares minimum to rounding; MINPACK's ftol test), or after ``num_steps`` evaluations beyond the
first.  ``J`` comes from reverse-mode autograd (one simulation and ``d`` backward passes) or central
finite differences (``1 + 2D`` simulations per evaluation); the weight uses the ``J`` of the same
source at ``u*``.

**Discarded seeds** get weight zero and are counted in ``result.info``: a non-finite residual,
Jacobian or prior at the end (``num_nonfinite``), a singular ``J`` (``num_singular``) or a residual
norm above ``residual_threshold`` (``num_above_threshold``).

**Counting.**  ``num_simulations`` counts each evaluation of a seed's optimisation: ``1`` (autodiff)
or ``1 + 2D`` (finite differences) simulations; ``num_nan_simulations`` those with non-finite
statistics.  A finished seed's row is still simulated while its chunk runs (see below); those
evaluations are an artefact of batching and are not counted.

**Chunks and random numbers (torch).**  A torch simulator takes one ``torch.Generator`` for a whole
batch, so the seeds are optimised together in chunks of ``chunk_size`` rows, and every evaluation
simulates the whole chunk from the same generator state: row ``i`` always sees the same random
numbers ``omega_i`` (common random numbers), provided the simulator's draws do not depend on the
values of ``theta`` (true of reparameterised simulators).  Chunk ``c`` (seeds ``start, ...``) draws its
starting points and its generator's seed from ``(run seed, start)`` only (the last chunk padded to
``chunk_size``), so a chunk is a pure function of ``(run seed, start)``: with ``executor=``
(:class:`adapters.sweep.DaskExecutor`) each chunk is a task and the numbers equal the in-process
run's; with ``store=`` (a folder) each finished chunk is written at once (atomically) and a rerun
of the same configuration loads it.  Unlike the NumPyro twin (one key per seed), the draws depend
on ``chunk_size``, which decides which random numbers each seed gets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from adapters.abc import OMC_FIELDS as _FIELDS
from adapters.abc import ABCResult, check_epsilon, omc_result
from adapters.validation import check_choice, check_positive_int
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows

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

Tensor = torch.Tensor
#: ``evaluate(u (n, D)) -> (r (n, d), J (n, d, D), number of non-finite simulations per row (n,))``
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


# ---------------------------------------------------------------------------------------
# Math core: a chunk of seeds, batched over its rows (each row its own optimisation)
# ---------------------------------------------------------------------------------------
class OMCState(NamedTuple):
    """A chunk's optimisations, one row per seed: ``u`` ``(n, D)`` the current points, ``residual``
    ``(n, d)`` and ``jacobian`` ``(n, d, D)`` there, Levenberg-Marquardt's ``damping`` ``(n,)`` and trust
    ``radius`` ``(n,)`` (in ``u``), the evaluations after the first (``num_iterations``), all evaluations
    (``num_evaluations``), non-finite simulations (``num_nan``), and ``done`` ``(n,)``."""

    u: Tensor
    residual: Tensor
    jacobian: Tensor
    damping: Tensor
    radius: Tensor
    num_iterations: Tensor
    num_evaluations: Tensor
    num_nan: Tensor
    done: Tensor


def _rows_finite(x: Tensor) -> Tensor:
    return torch.isfinite(x).flatten(1).all(-1)


def autodiff_evaluate(residual_fn: Callable[[Tensor], Tensor]) -> Evaluate:
    """``(r, J, num_nan)`` with ``J`` by reverse mode: one batched simulation and ``d`` backward passes
    of ``sum_i r_ij`` (rows are independent, so row ``i`` of the gradient is ``d r_ij / d u_i``)."""

    def evaluate(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            point = u.detach().requires_grad_(True)
            r = residual_fn(point)
            rows = []
            for j in range(r.shape[-1]):
                (grad,) = torch.autograd.grad(r[:, j].sum(), point, retain_graph=j + 1 < r.shape[-1], allow_unused=True)
                rows.append(torch.zeros_like(point) if grad is None else grad)
        return r.detach(), torch.stack(rows, dim=1), (~finite_rows(r)).long()

    return evaluate


def finite_difference_evaluate(residual_fn: Callable[[Tensor], Tensor], fd_step: float) -> Evaluate:
    """``(r, J, num_nan)`` with ``J`` by central differences: ``1 + 2D`` batched simulations, the step
    of coordinate ``j`` is ``fd_step * max(1, |u_j|)``."""

    def evaluate(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            r = residual_fn(u)
            num_nan = (~finite_rows(r)).long()
            columns = []
            for k in range(u.shape[-1]):
                step = torch.zeros_like(u)
                step[:, k] = fd_step * u[:, k].abs().clamp(min=1.0)
                up, down = u + step, u - step
                r_up, r_down = residual_fn(up), residual_fn(down)
                num_nan = num_nan + (~finite_rows(r_up)).long() + (~finite_rows(r_down)).long()
                span = (up - down)[:, k]  # the step as represented
                columns.append((r_up - r_down) / span[:, None])
        return r, torch.stack(columns, dim=-1), num_nan

    return evaluate


def omc_start(u0: Tensor, evaluate: Evaluate) -> OMCState:
    """The chunk at ``u0`` ``(n, D)`` before its first evaluation (``num_evaluations == 0``), which
    :func:`omc_step` does; the residual and Jacobian are zero-width placeholders ``(n, 0)``, ``(n, 0, D)``
    (torch cannot shape them without simulating: ``evaluate``, the NumPyro twin's argument, is unused)."""
    n, dim = u0.shape
    u0 = u0.detach()
    zero = torch.zeros(n, dtype=torch.long)
    damping, radius = torch.full((n,), INITIAL_DAMPING, dtype=u0.dtype), u0.norm(dim=-1).clamp(min=1.0)
    return OMCState(u0, u0.new_zeros((n, 0)), u0.new_zeros((n, 0, dim)), damping, radius, zero, zero, zero, zero.bool())


def omc_init(u0: Tensor, evaluate: Evaluate) -> OMCState:
    """The chunk at its starting points ``u0`` ``(n, D)`` (one evaluation; a row whose values are not
    finite there is done at once)."""
    return omc_step(omc_start(u0, evaluate), evaluate, num_steps=1)


def omc_step(state: OMCState, evaluate: Evaluate, num_steps: int, optimizer: str = "lm") -> OMCState:
    """One Levenberg-Marquardt (``"lm"``) or Gauss-Newton (``"gauss_newton"``) step of every row that is
    not done (the whole chunk is evaluated, so each row keeps its random numbers); see the module docstring.

    A chunk not yet evaluated (:func:`omc_start`) is evaluated at its ``u`` instead, and a row is done
    when its values there are not finite."""
    fresh = state.num_evaluations == 0
    if bool(fresh.all()):
        r, jacobian, num_nan = evaluate(state.u)
        done = ~(_rows_finite(r) & _rows_finite(jacobian))
        return state._replace(residual=r, jacobian=jacobian, num_evaluations=fresh.long(), num_nan=num_nan, done=done)
    if bool(fresh.any()):
        raise ValueError("state: expected every row of the chunk evaluated, or none (a state from omc_start)")
    u, r, jacobian = state.u, state.residual, state.jacobian
    eps = torch.finfo(u.dtype).eps
    gram = jacobian.transpose(-1, -2) @ jacobian
    gradient = (jacobian.transpose(-1, -2) @ r[..., None])[..., 0]
    if optimizer == "lm":
        # Marquardt's scaling by diag(J^T J) makes the damping unit-free; the floor keeps a zero column solvable
        diag = torch.diagonal(gram, dim1=-2, dim2=-1)
        floor = eps * diag.amax(-1, keepdim=True) + torch.finfo(u.dtype).tiny
        gram = gram + torch.diag_embed(state.damping[:, None] * torch.maximum(diag, floor))
    # J^T J (+ the damping) is symmetric positive definite where the step exists: Cholesky; a failed
    # factorisation (a singular Gauss-Newton matrix) stops the row like a non-finite step
    cholesky, failed = torch.linalg.cholesky_ex(gram)
    delta = -torch.cholesky_solve(gradient[..., None], cholesky)[..., 0]
    radius = state.radius
    clipped = torch.zeros_like(state.done)
    if optimizer == "lm":
        # the trust region: a step longer than the radius is shortened to it (module docstring)
        length = torch.linalg.vector_norm(delta, dim=-1)
        clipped = length > radius
        delta = torch.where(clipped[:, None], delta * (radius / torch.where(clipped, length, 1.0))[:, None], delta)
    xtol = eps**0.75
    step_length = torch.linalg.vector_norm(delta, dim=-1)
    small = step_length <= xtol * (torch.linalg.vector_norm(u, dim=-1) + xtol)
    stop = (failed != 0) | ~torch.isfinite(delta).all(-1) | small
    move = ~stop & ~state.done
    trial = torch.where(move[:, None], u + delta, u)
    r_new, jacobian_new, nan_new = evaluate(trial)
    finite = _rows_finite(r_new) & _rows_finite(jacobian_new)
    # near a least-squares minimum (d > D) the change of |r|^2 is below its rounding: when both the
    # linear model's predicted and the actual change are (MINPACK's ftol test), the step is taken and
    # the row is done, rather than refused until the radius collapses a sqrt(eps) short of the minimum
    change = ((r_new - r) * (r_new + r)).sum(-1)  # |r_new|^2 - |r|^2 without the cancellation of the two sums
    tol = 16 * eps * (r * r).sum(-1)
    jd = (jacobian @ delta[..., None])[..., 0]
    predicted = 2 * (r * jd).sum(-1) + (jd * jd).sum(-1)
    level = move & finite & (predicted.abs() <= tol) & (change.abs() <= tol)
    better = change < 0 if optimizer == "lm" else torch.ones_like(move)
    accept = move & finite & (better | level)
    if optimizer == "lm":
        damping = torch.where(accept, (state.damping * 0.1).clamp(min=MIN_DAMPING), state.damping * 10.0)
        damping = torch.where(move, damping, state.damping)
        radius = torch.where(accept, torch.where(clipped, 2.0 * radius, radius), 0.5 * step_length)
        radius = torch.where(move, radius, state.radius)
        stalled = damping > MAX_DAMPING
    else:
        damping = state.damping
        stalled = move & ~finite  # undamped: nowhere to go after a non-finite simulation
    evaluated = move.long()
    num_iterations = state.num_iterations + evaluated
    return OMCState(
        u=torch.where(accept[:, None], trial, u),
        residual=torch.where(accept[:, None], r_new, r),
        jacobian=torch.where(accept[:, None, None], jacobian_new, jacobian),
        damping=damping,
        radius=radius,
        num_iterations=num_iterations,
        num_evaluations=state.num_evaluations + evaluated,
        num_nan=state.num_nan + evaluated * nan_new,
        done=state.done | stop | stalled | level | (num_iterations >= num_steps),
    )


def omc_optimize(u0: Tensor, evaluate: Evaluate, num_steps: int, optimizer: str = "lm") -> OMCState:
    """Optimise every row of the chunk from ``u0`` ``(n, D)`` until all are done."""
    state = omc_start(u0, evaluate)  # evaluated by the first step
    while not bool(state.done.all()):
        state = omc_step(state, evaluate, num_steps, optimizer)
    return state


def omc_log_weight(log_prior: Tensor, jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """``(log w, log|det J^T J| / 2)`` ``(n,)`` of the solutions: ``log w = log_prior - log|det J^T J| / 2``.

    The half log-determinant is the sum of the log singular values of ``J`` ``(n, d, D)``, which never
    squares its condition number; ``-inf`` for a singular ``J``, NaN for a non-finite one.
    """
    finite = _rows_finite(jacobian)
    # LAPACK's SVD fails on a non-finite matrix: those rows get zeros, and NaN afterwards
    safe = torch.where(finite[:, None, None], jacobian, torch.zeros((), dtype=jacobian.dtype))
    half_log_det = torch.log(torch.linalg.svdvals(safe)).sum(-1)
    half_log_det = torch.where(finite, half_log_det, torch.full((), math.nan, dtype=half_log_det.dtype))
    return log_prior - half_log_det, half_log_det


# ---------------------------------------------------------------------------------------
# Chunks of seeds: pure functions of (run seed, start)
# ---------------------------------------------------------------------------------------


class _Config(NamedTuple):
    optimizer: str
    num_steps: int
    gradients: str
    fd_step: float | None
    chunk_size: int


def _chunk_seeds(seed: int, start: int) -> tuple[int, int]:
    """The seeds of a chunk's starting points and of its simulations, from the run's seed and the chunk's start."""
    prior_seed, simulation_seed = np.random.SeedSequence([seed, start]).generate_state(2, dtype=np.uint64)
    return int(prior_seed >> np.uint64(1)), int(simulation_seed >> np.uint64(1))


def _solve_chunk(problem: LikelihoodFreeProblem, config: _Config, seed: int, start: int) -> dict[str, np.ndarray]:
    """Seeds ``start, ..., start + chunk_size - 1``: their optimisations and weights, as NumPy arrays."""
    prior_seed, simulation_seed = _chunk_seeds(seed, start)
    with torch.random.fork_rng(devices=[]):  # the caller's stream is left as it was
        torch.manual_seed(prior_seed)
        u0 = problem.sample_prior(config.chunk_size)
    dtype = u0.dtype
    fd_step = config.fd_step if config.fd_step is not None else torch.finfo(dtype).eps ** (1.0 / 3.0)
    observed = torch.as_tensor(problem.observed, dtype=dtype)

    def residual_fn(u: Tensor) -> Tensor:
        # the same generator state at every evaluation: each row keeps its random numbers
        return problem.simulate(u, torch.Generator().manual_seed(simulation_seed)) - observed

    if config.gradients == "autodiff":
        evaluate = autodiff_evaluate(residual_fn)
    else:
        evaluate = finite_difference_evaluate(residual_fn, fd_step)
    state = omc_optimize(u0, evaluate, config.num_steps, config.optimizer)
    with torch.no_grad():
        log_prior = problem.log_prior(state.u)
        _, half_log_det = omc_log_weight(log_prior, state.jacobian)
        theta = problem.flat_theta(state.u)
    out = {
        "u": state.u,
        "theta": theta,
        "residual": state.residual,
        "log_prior": log_prior,
        "half_log_det": half_log_det,
        "num_iterations": state.num_iterations,
        "num_evaluations": state.num_evaluations,
        "num_nan": state.num_nan,
    }
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def _remote_chunk(payload: tuple[bytes, int, torch.dtype], start: int) -> dict[str, np.ndarray]:
    """One chunk in any process, under the driver's default dtype (so a worker computes the driver's numbers)."""
    import cloudpickle

    blob, seed, default_dtype = payload
    problem, config = cloudpickle.loads(blob)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        return _solve_chunk(problem, config, seed, start)
    finally:
        torch.set_default_dtype(previous)


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


def _name(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__name__)}"


# ---------------------------------------------------------------------------------------
# The Pyro shell
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
        gradients: ``"autodiff"`` (reverse mode, the simulator must be differentiable in ``theta``) or
            ``"finite_differences"`` (central, ``1 + 2D`` simulations per evaluation).
        fd_step: relative finite-difference step; ``None``: ``eps^(1/3)`` of the prior's float type.
        chunk_size: seeds per batched chunk (one task on an executor); ``None``: ``min(256, N)``.  It
            decides which random numbers each seed gets (module docstring); the same ``chunk_size``
            gives the same numbers in-process and on any executor.
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

    @property
    def threshold(self) -> float:
        """The residual threshold in use (see ``residual_threshold``)."""
        if self.residual_threshold is not None:
            return self.residual_threshold
        if self.problem.stat_dim > self.problem.dim:
            return math.inf
        scale = max(1.0, float(np.max(np.abs(self.problem.observed))))
        return 1e-3 * math.sqrt(self.problem.stat_dim) * scale

    def run(self, executor: Any = None, store: str | os.PathLike | None = None) -> ABCResult:
        """Optimise and weight ``num_seeds`` seeds (after ``pyro.set_rng_seed``: the run's seed is drawn
        from torch's global generator, and each chunk's numbers from it and the chunk's start).

        Args:
            executor: ``None`` (chunks in this process) or an engine of :mod:`adapters.sweep`
                (``DaskExecutor(n_workers=...)`` or ``DaskExecutor(scheduler=address)``, ``SerialExecutor()``):
                each chunk is a task; the problem must pickle (cloudpickle) and, on a remote cluster, the
                workers must import this library and the simulator's module.
            store: a folder: each finished chunk is saved there at once and a rerun of the same
                configuration (problem, run seed, optimiser settings, ``chunk_size``) loads it instead of
                computing it.  ``residual_threshold`` is applied afterwards, so changing it reuses the
                stored chunks.  A changed simulator under the same name and prior needs a new folder.

        Returns:
            :class:`adapters.abc.ABCResult`: the kept seeds' constrained draws and log weights,
            ``distances`` their residual norms, ``info`` the per-seed values of all ``N`` seeds.
        """
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
        seed = int(torch.randint(0, 2**62, (1,)).item())
        starts = list(range(0, self.num_seeds, self.chunk_size))
        chunk_store = None if store is None else _ChunkStore(store, self._identity(seed))
        chunks: dict[int, dict[str, np.ndarray]] = {}
        if chunk_store is not None:
            for start in starts:
                stored = chunk_store.load(start)
                if stored is not None:
                    chunks[start] = stored
        todo = [s for s in starts if s not in chunks]
        for start, arrays in self._compute(todo, seed, executor):
            chunks[start] = arrays
            if chunk_store is not None:
                chunk_store.save(start, arrays)
        result = self._assemble(chunks, starts, computed=len(todo))
        result.info["seed"] = seed
        return result

    # ---- computing ----------------------------------------------------------------------
    def _compute(self, todo: list[int], seed: int, executor: Any) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if not todo:
            return
        if executor is None:
            for start in todo:
                yield start, _solve_chunk(self.problem, self._config, seed, start)
            return
        import cloudpickle

        blob = cloudpickle.dumps((self.problem, self._config))
        function = functools.partial(_remote_chunk, (blob, seed, torch.get_default_dtype()))
        for index, arrays in executor.map_function(function, todo):
            yield todo[index], arrays

    def _identity(self, seed: int) -> dict[str, Any]:
        """What a stored chunk depends on: the problem (names, observation, the simulator's name, a
        fingerprint of the prior), the run's seed, the optimiser settings and the precision."""
        problem = self.problem
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            u = problem.sample_prior(2)
            fingerprint = [float(v) for v in u.reshape(-1)] + [float(v) for v in problem.log_prior(u)]
        return {
            "format": 2,  # 2: the trust region and the ftol stop (other numbers than format 1's)
            "backend": "pyro",
            "names": list(problem.names),
            "observed": [float(v) for v in problem.observed],
            "simulator": _name(problem.simulator),
            "stat_dim": problem.stat_dim,
            "prior": fingerprint,
            "seed": seed,
            "config": self._config._asdict(),
            "dtype": str(problem.dtype),
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
