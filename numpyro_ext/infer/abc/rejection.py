"""Rejection ABC in JAX, and the scaled distance it shares with SMC-ABC.

Pritchard, Seielstad, Perez-Lezaun & Feldman, "Population growth of human Y chromosomes: a
study of Y chromosome microsatellites", Mol. Biol. Evol. 16, 1999 (the rejection algorithm);
Beaumont, Zhang & Balding, "Approximate Bayesian computation in population genetics",
Genetics 162, 2002 (keeping a fixed fraction of the closest simulations).

Draw ``theta_i ~ pi`` and ``x_i ~ f(. | theta_i)``, ``i = 1..n``, and keep the draws whose
statistics are close to the observation ``y``::

    rho(s, y) = || (s - y) / m ||_2,      m_j = median_i | s_ij - median_k s_kj |        (MAD)

each statistic divided by its median absolute deviation ``m_j`` over the prior-predictive
simulations, so that statistics of different scales count alike (``scale=None``: ``m = 1``; a
user array ``(d,)``: that ``m``).  The kept draws are exact draws of the ABC posterior
``pi_eps(theta) ∝ pi(theta) P(rho(s, y) <= eps | theta)``: for a fixed ``epsilon`` by
construction, and for the ``k`` nearest draws conditionally on the ``(k + 1)``-th smallest
distance (the ``k`` draws below it are i.i.d. from the prior-predictive restricted to that
ball).  As ``eps -> 0``, ``pi_eps`` tends to the posterior given the statistics.

Pieces: :func:`prior_predictive` (``jit``-ed, ``vmap``-ed batches of prior simulations),
:func:`scaled_distances` (NumPy or JAX), :func:`mad_scale` (host); the shell :class:`RejectionABC`
simulates on the device and scales and selects on the host.
Simulations with a non-finite statistic get distance ``inf``: they are never accepted and are
counted in ``result.num_nan_simulations``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.abc import ABCResult, check_epsilon, nan_simulation_message, nearest_draws
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_positive_int
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem

__all__ = [
    "RejectionABC",
    "check_problem",
    "check_rng_key",
    "mad_scale",
    "prior_predictive",
    "resolve_scale",
    "scaled_distances",
]

SCALES = ("mad",)


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------
def mad_scale(stats: np.ndarray) -> np.ndarray:
    """Per-statistic median absolute deviation ``(d,)`` of the finite rows of ``stats`` ``(n, d)``
    (on the host, NumPy: it is computed once per run, from the prior-predictive simulations).

    A statistic whose MAD is 0 (more than half the simulations share one value, e.g. a count)
    falls back to its standard deviation, and to 1 when that is 0 too (or no row is finite),
    so that the scaled distance stays finite.
    """
    stats = np.asarray(stats, dtype=np.float64)
    x = stats[np.all(np.isfinite(stats), axis=-1)]
    if x.shape[0] == 0:
        return np.ones(stats.shape[-1])
    mad = np.median(np.abs(x - np.median(x, axis=0)), axis=0)
    sd = np.std(x, axis=0)
    good_mad = np.isfinite(mad) & (mad > 0)
    good_sd = np.isfinite(sd) & (sd > 0)
    return np.where(good_mad, mad, np.where(good_sd, sd, 1.0))


def scaled_distances(stats: Any, observed: Any, scale: Any) -> Any:
    """``|| (stats_i - observed) / scale ||_2`` for each row of ``stats`` ``(n, d)``: ``(n,)``,
    ``inf`` for a row with a non-finite statistic (so it is never accepted).

    NumPy in, NumPy out (the host side of a run, no compilation); JAX arrays in (inside ``jit``), JAX out.
    """
    xp = np if isinstance(stats, np.ndarray) else jnp
    keep = xp.all(xp.isfinite(stats), axis=-1)
    z = (xp.where(keep[:, None], stats, 0.0) - observed) / scale
    return xp.where(keep, xp.sqrt(xp.sum(z**2, axis=-1)), xp.inf)


@functools.partial(jax.jit, static_argnames=("problem", "num_simulations", "batch_size"))
def prior_predictive(
    rng_key: jax.Array, problem: LikelihoodFreeProblem, num_simulations: int, batch_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``num_simulations`` prior draws and their simulations: unconstrained ``u`` ``(n, D)``, constrained
    flat ``theta`` ``(n, D)`` and statistics ``(n, d)``, simulated ``batch_size`` at a time (``vmap``
    inside ``lax.map``, so memory holds one batch of simulator intermediates).

    ``jit``-ed once per problem and sizes: every run and every method instance on the same problem
    with the same sizes reuses the compilation.
    """
    key_prior, key_sim = jax.random.split(rng_key)
    u = problem.sample_prior(key_prior, num_simulations)
    keys = jax.random.split(key_sim, num_simulations)
    stats = jax.lax.map(lambda args: problem.simulate(*args), (u, keys), batch_size=min(batch_size, num_simulations))
    return u, jax.vmap(problem.flat_theta)(u), stats


# ---------------------------------------------------------------------------------------
# Argument checks shared with SMC-ABC
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
        array = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"scale: expected 'mad', None or an array of numbers, got {type(scale).__name__}") from None
    array = array.reshape(1) if array.ndim == 0 and stat_dim == 1 else array
    if array.shape != (stat_dim,):
        raise ValueError(f"scale: expected shape ({stat_dim},), one per summary statistic, got shape {array.shape}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"scale: every entry must be a finite number > 0, got {array}")
    return array


def resolve_scale(scale: str | np.ndarray | None, stats: np.ndarray) -> np.ndarray:
    """The per-statistic scale ``(d,)`` for a checked ``scale`` option and the prior-predictive ``stats`` ``(n, d)``."""
    if scale is None:
        return np.ones(np.shape(stats)[-1])
    if isinstance(scale, str):
        return mad_scale(stats)
    return np.asarray(scale, dtype=np.float64)


def check_rng_key(rng_key: Any) -> jax.Array:
    """``rng_key`` if it is one JAX PRNG key (``jax.random.PRNGKey(seed)`` or ``jax.random.key(seed)``)."""
    if isinstance(rng_key, jax.Array | np.ndarray):
        typed = jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
        if (typed and rng_key.shape == ()) or (rng_key.dtype == np.uint32 and rng_key.shape == (2,)):
            return jnp.asarray(rng_key) if isinstance(rng_key, np.ndarray) else rng_key
    raise TypeError(f"rng_key: expected one JAX PRNG key such as jax.random.PRNGKey(0), got {rng_key!r}")


def _check_quantile(value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 1
    if not ok:
        raise ValueError(f"quantile: expected a fraction of the simulations in (0, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
class RejectionABC:
    """Rejection ABC: ``num_simulations`` prior-predictive simulations, the closest ones kept.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
        num_simulations: simulations from the prior (the whole budget).
        num_samples: keep the ``num_samples`` closest simulations.  Default: 100 when neither
            ``quantile`` nor ``epsilon`` is given.
        quantile: keep the closest ``ceil(quantile * num_simulations)`` simulations, ``0 < quantile <= 1``.
        epsilon: keep every simulation with ``rho(s, y) <= epsilon`` (``epsilon > 0``, in scaled units).
            Exactly one of ``num_samples``, ``quantile`` and ``epsilon`` may be given.
        scale: ``"mad"`` (each statistic divided by its median absolute deviation over these
            simulations, as sbibm and pyabc do), ``None`` (plain Euclidean distance) or an array
            ``(d,)`` of positive scales.
        batch_size: simulations per ``vmap``-ed batch (memory: one batch of simulator
            intermediates at a time).

    :meth:`run` returns an :class:`~adapters.abc.ABCResult` with equal weights, the accepted
    draws' ``distances``, ``info["epsilon"]`` (the largest accepted distance, or ``epsilon``),
    ``info["scale"]`` ``(d,)`` and ``info["acceptance_rate"]``.
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

    def run(self, rng_key: jax.Array) -> ABCResult:
        """Simulate, scale, keep the closest; returns an equally weighted :class:`~adapters.abc.ABCResult`."""
        rng_key = check_rng_key(rng_key)
        _, theta, stats = prior_predictive(rng_key, self.problem, self.num_simulations, self.batch_size)
        theta, stats = np.asarray(theta, dtype=np.float64), np.asarray(stats, dtype=np.float64)
        scale = resolve_scale(self.scale, stats)
        distances = scaled_distances(stats, self.problem.observed, scale)
        num_nan = int(np.sum(~np.all(np.isfinite(stats), axis=-1)))
        index, epsilon, selection_messages = nearest_draws(distances, keep=self._num_keep(), epsilon=self.epsilon)
        messages = [nan_simulation_message("RejectionABC", num_nan, self.num_simulations), *selection_messages]
        info = {
            "epsilon": epsilon,
            "scale": scale,
            "acceptance_rate": index.size / self.num_simulations,
            "num_accepted": int(index.size),
        }
        return ABCResult(
            algorithm="RejectionABC",
            theta=theta[index],
            names=list(self.problem.names),
            sites=dict(self.problem.sites),
            log_weights=np.zeros(index.size),
            num_simulations=self.num_simulations,
            num_nan_simulations=num_nan,
            distances=distances[index],
            info=info,
            warnings=warn_unreliable(*messages),
        )
