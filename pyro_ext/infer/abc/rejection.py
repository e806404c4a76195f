"""Rejection ABC in torch, and the scaled distance it shares with SMC-ABC.

The twin of :mod:`numpyro_ext.infer.abc.rejection` (same class, arguments, messages).
Pritchard, Seielstad, Perez-Lezaun & Feldman, Mol. Biol. Evol. 16, 1999 (the rejection
algorithm); Beaumont, Zhang & Balding, Genetics 162, 2002 (keeping a fixed fraction of the
closest simulations).

Draw ``theta_i ~ pi`` and ``x_i ~ f(. | theta_i)``, ``i = 1..n``, and keep the draws whose
statistics are close to the observation ``y``::

    rho(s, y) = || (s - y) / m ||_2,      m_j = median_i | s_ij - median_k s_kj |        (MAD)

each statistic divided by its median absolute deviation ``m_j`` over the prior-predictive
simulations (``scale=None``: ``m = 1``; a user array ``(d,)``: that ``m``).  The kept draws are
draws of the ABC posterior ``pi_eps(theta) ∝ pi(theta) P(rho(s, y) <= eps | theta)``: for a fixed
``epsilon`` by construction, and for the ``k`` nearest draws conditionally on the ``(k + 1)``-th
smallest distance.  As ``eps -> 0``, ``pi_eps`` tends to the posterior given the statistics.

Pure pieces (batched torch): :func:`mad_scale`, :func:`scaled_distances`; the shell
:class:`RejectionABC` simulates in batches of ``batch_size`` with one ``torch.Generator`` seeded
from torch's global generator (so ``pyro.set_rng_seed`` fixes the run).  Simulations with a
non-finite statistic get distance ``inf``: never accepted, counted in ``result.num_nan_simulations``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from adapters.abc import ABCResult, check_epsilon, nan_simulation_message, nearest_draws
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive_int
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows

__all__ = [
    "RejectionABC",
    "check_problem",
    "mad_scale",
    "new_generator",
    "resolve_scale",
    "scaled_distances",
    "simulate_in_batches",
]

SCALES = ("mad",)

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------
def mad_scale(stats: Tensor) -> Tensor:
    """Per-statistic median absolute deviation ``(d,)`` of the finite rows of ``stats`` ``(n, d)``.

    A statistic whose MAD is 0 (more than half the simulations share one value, e.g. a count)
    falls back to its standard deviation, and to 1 when that is 0 too (or no row is finite),
    so that the scaled distance stays finite.  Medians average the two middle values (NumPy's).
    """
    x = torch.where(finite_rows(stats)[:, None], stats, torch.full((), math.nan, dtype=stats.dtype))
    centre = torch.nanquantile(x, 0.5, dim=0)
    mad = torch.nanquantile((x - centre).abs(), 0.5, dim=0)
    mean = torch.nanmean(x, dim=0)
    sd = torch.sqrt(torch.nanmean((x - mean) ** 2, dim=0))
    good_mad = torch.isfinite(mad) & (mad > 0)
    good_sd = torch.isfinite(sd) & (sd > 0)
    return torch.where(good_mad, mad, torch.where(good_sd, sd, torch.ones_like(sd)))


def scaled_distances(stats: Tensor, observed: Tensor, scale: Tensor) -> Tensor:
    """``|| (stats_i - observed) / scale ||_2`` for each row of ``stats`` ``(n, d)``: ``(n,)``,
    ``inf`` for a row with a non-finite statistic (so it is never accepted)."""
    keep = finite_rows(stats)
    z = (torch.where(keep[:, None], stats, torch.zeros((), dtype=stats.dtype)) - observed) / scale
    return torch.where(keep, torch.sqrt((z**2).sum(-1)), torch.full((), math.inf, dtype=stats.dtype))


# ---------------------------------------------------------------------------------------
# Argument checks and plumbing shared with SMC-ABC and OMC
# ---------------------------------------------------------------------------------------
def check_problem(problem: Any, algorithm: str) -> LikelihoodFreeProblem:
    if not isinstance(problem, LikelihoodFreeProblem):
        raise TypeError(
            f"problem: {algorithm} expected a LikelihoodFreeProblem(prior, simulator, observed, summary), "
            f"got {type(problem).__name__}"
        )
    return problem


def check_scale(scale: Any, stat_dim: int) -> str | np.ndarray | None:
    """``"mad"``, ``None`` or a finite positive array ``(stat_dim,)``; the error names ``scale``."""
    if scale is None or (isinstance(scale, str) and scale in SCALES):
        return scale
    if isinstance(scale, str):
        raise ValueError(f"scale: expected 'mad', None or an array of {stat_dim} positive numbers, got {scale!r}")
    try:
        array = np.asarray(torch.as_tensor(scale).detach().cpu() if isinstance(scale, Tensor) else scale, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"scale: expected 'mad', None or an array of numbers, got {type(scale).__name__}") from None
    array = array.reshape(1) if array.ndim == 0 and stat_dim == 1 else array
    if array.shape != (stat_dim,):
        raise ValueError(f"scale: expected shape ({stat_dim},), one per summary statistic, got shape {array.shape}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"scale: every entry must be a finite number > 0, got {array}")
    return array


def resolve_scale(scale: str | np.ndarray | None, stats: Tensor) -> Tensor:
    """The per-statistic scale ``(d,)`` for a checked ``scale`` option and the prior-predictive ``stats`` ``(n, d)``."""
    if scale is None:
        return torch.ones(stats.shape[-1], dtype=stats.dtype)
    if isinstance(scale, str):
        return mad_scale(stats)
    return torch.as_tensor(scale, dtype=stats.dtype)


def _check_quantile(value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 1
    if not ok:
        raise ValueError(f"quantile: expected a fraction of the simulations in (0, 1], got {value!r}")
    return float(value)


def new_generator() -> torch.Generator:
    """A ``torch.Generator`` seeded from torch's global generator (so ``pyro.set_rng_seed`` fixes it):
    the simulations of a run get their own stream, apart from the prior draws and proposals."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))


def simulate_in_batches(
    problem: LikelihoodFreeProblem, u: Tensor, generator: torch.Generator, batch_size: int
) -> Tensor:
    """``(n, d)`` statistics of the unconstrained ``u`` ``(n, D)``, simulated ``batch_size`` rows at a
    time (memory: one batch of simulator intermediates), without gradients."""
    with torch.no_grad():
        parts = [problem.simulate(u[i : i + batch_size], generator) for i in range(0, u.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, problem.stat_dim, dtype=u.dtype)


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
class RejectionABC:
    """Rejection ABC: ``num_simulations`` prior-predictive simulations, the closest ones kept.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem`.
        num_simulations: simulations from the prior (the whole budget).
        num_samples: keep the ``num_samples`` closest simulations.  Default: 100 when neither
            ``quantile`` nor ``epsilon`` is given.
        quantile: keep the closest ``ceil(quantile * num_simulations)`` simulations, ``0 < quantile <= 1``.
        epsilon: keep every simulation with ``rho(s, y) <= epsilon`` (``epsilon > 0``, in scaled units).
            Exactly one of ``num_samples``, ``quantile`` and ``epsilon`` may be given.
        scale: ``"mad"`` (each statistic divided by its median absolute deviation over these
            simulations, as sbibm and pyabc do), ``None`` (plain Euclidean distance) or an array
            ``(d,)`` of positive scales.
        batch_size: simulations per simulator call (memory: one batch of simulator intermediates).

    :meth:`run` (after ``pyro.set_rng_seed``) returns an :class:`~adapters.abc.ABCResult` with equal
    weights, the accepted draws' ``distances``, ``info["epsilon"]`` (the largest accepted distance,
    or ``epsilon``), ``info["scale"]`` ``(d,)`` and ``info["acceptance_rate"]``.
    """

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        num_simulations: int = 10_000,
        num_samples: int | None = None,
        quantile: float | None = None,
        epsilon: float | None = None,
        scale: str | Any | None = "mad",
        batch_size: int = 10_000,
    ):
        self.problem = check_problem(problem, "RejectionABC")
        self.num_simulations = check_positive_int("num_simulations", num_simulations)
        given = [
            n for n, v in (("num_samples", num_samples), ("quantile", quantile), ("epsilon", epsilon)) if v is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"RejectionABC: give exactly one of num_samples, quantile and epsilon, got {' and '.join(given)}"
            )
        self.num_samples = self.quantile = self.epsilon = None
        if epsilon is not None:
            self.epsilon = check_epsilon("epsilon", epsilon)
        elif quantile is not None:
            self.quantile = _check_quantile(quantile)
        else:
            self.num_samples = check_positive_int("num_samples", 100 if num_samples is None else num_samples)
            if self.num_samples > self.num_simulations:
                raise ValueError(
                    f"num_samples: expected at most num_simulations = {self.num_simulations} draws to keep, "
                    f"got {self.num_samples}"
                )
        self.scale = check_scale(scale, problem.stat_dim)
        self.batch_size = min(check_positive_int("batch_size", batch_size), self.num_simulations)

    def _num_keep(self) -> int | None:
        if self.num_samples is not None:
            return self.num_samples
        if self.quantile is not None:
            return max(1, math.ceil(self.quantile * self.num_simulations))
        return None

    def run(self) -> ABCResult:
        """Simulate, scale, keep the closest; returns an equally weighted :class:`~adapters.abc.ABCResult`.
        Randomness: torch's global generator (``pyro.set_rng_seed``)."""
        problem = self.problem
        u = problem.sample_prior(self.num_simulations)
        stats = simulate_in_batches(problem, u, new_generator(), self.batch_size)
        scale = resolve_scale(self.scale, stats)
        observed = torch.as_tensor(problem.observed, dtype=stats.dtype)
        distances = scaled_distances(stats, observed, scale).double().numpy()
        num_nan = int((~finite_rows(stats)).sum())
        index, epsilon, selection_messages = nearest_draws(distances, keep=self._num_keep(), epsilon=self.epsilon)
        messages = [nan_simulation_message("RejectionABC", num_nan, self.num_simulations), *selection_messages]
        with torch.no_grad():
            kept = u[torch.as_tensor(index, dtype=torch.long)]
            theta = problem.flat_theta(kept).double().numpy() if index.size else np.zeros((0, problem.dim))
        info = {
            "epsilon": epsilon,
            "scale": scale.double().numpy(),
            "acceptance_rate": index.size / self.num_simulations,
            "num_accepted": int(index.size),
        }
        return ABCResult(
            algorithm="RejectionABC",
            theta=theta,
            names=list(problem.names),
            sites=dict(problem.sites),
            log_weights=np.zeros(index.size),
            num_simulations=self.num_simulations,
            num_nan_simulations=num_nan,
            distances=distances[index],
            info=info,
            warnings=warn_unreliable(*messages),
        )
