"""Backend-free halves of likelihood-free inference (ABC) shared by ``numpyro_ext`` and ``pyro_ext``.

A likelihood-free problem is a prior over ``theta``, a simulator ``x = f(theta, randomness)``, a
summary ``s(x)`` of dimension ``d`` and the observed summary ``y``.  The backends turn the prior
into a flat vector of dimension ``D`` and hand their results over here as NumPy arrays:
:class:`ABCResult` holds the (weighted) posterior draws, the simulation count and the rejected
non-finite simulations, and converts to a dict of sites or to ArviZ.

Argument checks (same messages in both backends) are here too: :func:`check_statistic`,
:func:`check_epsilon`, :func:`nan_simulation_message`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters.diagnostics import weight_degeneracy_warning


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def check_epsilon(name: str, value: Any) -> float:
    """``value`` as a float > 0 (a tolerance or kernel width): a real number, not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value) > 0.0):
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def check_statistic(name: str, value: Any, expected_dim: int | None = None) -> np.ndarray:
    """``value`` as a finite float vector ``(d,)`` (a scalar becomes ``(1,)``); with ``expected_dim``
    its length must match.  The error names ``name`` and the shape found."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an array of numbers, got {type(value).__name__}") from None
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1:
        raise ValueError(
            f"{name}: expected a vector of summary statistics (d,), got shape {array.shape}; "
            "flatten it in the summary function"
        )
    if expected_dim is not None and array.shape[0] != expected_dim:
        raise ValueError(
            f"{name}: expected {expected_dim} summary statistic(s), the shape the simulator's summary has, "
            f"got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: every statistic must be finite, got {array}")
    return array


def simulator_failure_message(error: BaseException, theta_shape: Any) -> str:
    """Why a test simulation at a prior draw failed: usually the prior and the simulator disagree."""
    return (
        f"simulator: failed on a prior draw theta of shape {theta_shape} ({type(error).__name__}: {error}); "
        "check that the simulator takes theta as the prior samples it (its dimension and structure) and a key/generator"
    )


def nan_simulation_message(algorithm: str, num_nan: int, num_total: int) -> str | None:
    """The warning for non-finite simulations (rejected and counted, never used), or None when there were none."""
    if num_nan == 0:
        return None
    return (
        f"{algorithm}: {num_nan} of {num_total} simulations ({100.0 * num_nan / max(num_total, 1):.1f}%) gave "
        "non-finite summary statistics; they were rejected (counted in result.num_nan_simulations)"
    )


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
def effective_sample_size(log_weights: np.ndarray) -> float:
    """Kish's ESS ``(sum w)^2 / sum w^2`` of unnormalised log weights (``-inf`` weights count as 0)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(log_weights)
    if not finite.any():
        return 0.0
    w = np.exp(log_weights[finite] - log_weights[finite].max())
    return float(w.sum() ** 2 / np.sum(w**2))


@dataclass
class ABCResult:
    """Posterior draws of a likelihood-free method, backend-free (NumPy).

    ``theta``: ``(n, D)`` constrained draws, flattened in the order of ``names`` (``names[i]`` is
    the label of column ``i``, e.g. ``theta[0]``); ``sites``: ``{site: (shape, start, stop)}`` to
    cut ``theta`` back into the prior's sites; ``log_weights``: ``(n,)`` unnormalised (zeros for
    equally weighted draws); ``num_simulations``: simulator calls actually made;
    ``num_nan_simulations``: those whose statistics were not finite (rejected);
    ``distances``: ``(n,)`` distance of each draw's simulation to the observation, when the method
    has one; ``info``: method-specific values (epsilon schedule, residuals, ...);
    ``warnings``: reliability messages (:mod:`adapters.diagnostics`).
    """

    algorithm: str
    theta: np.ndarray
    names: list[str]
    sites: dict[str, tuple[tuple[int, ...], int, int]]
    log_weights: np.ndarray
    num_simulations: int
    num_nan_simulations: int = 0
    distances: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.theta = np.asarray(self.theta, dtype=np.float64)
        self.log_weights = np.asarray(self.log_weights, dtype=np.float64)
        if self.theta.ndim != 2 or self.log_weights.shape != self.theta.shape[:1]:
            shapes = f"{self.theta.shape}, {self.log_weights.shape}"
            raise ValueError(f"theta (n, D) and log_weights (n,) disagree: {shapes}")

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights ``(n,)``."""
        finite = np.isfinite(self.log_weights)
        w = np.zeros_like(self.log_weights)
        if finite.any():
            w[finite] = np.exp(self.log_weights[finite] - self.log_weights[finite].max())
            w /= w.sum()
        return w

    @property
    def ess(self) -> float:
        """Kish's effective sample size of the weights."""
        return effective_sample_size(self.log_weights)

    def resample(self, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
        """Equally weighted draws ``(num_samples, D)``: multinomial resampling by the weights
        (the draws themselves when they are already equally weighted and no size is asked)."""
        equal = np.all(self.log_weights == self.log_weights[0])
        if equal and num_samples is None:
            return self.theta
        n = len(self.theta) if num_samples is None else int(num_samples)
        index = np.random.default_rng(seed).choice(len(self.theta), size=n, p=self.weights)
        return self.theta[index]

    def get_samples(self, resample: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
        """``{site: (n, *shape)}`` as the prior names its sites (weighted draws unless ``resample``)."""
        theta = self.resample(seed=seed) if resample else self.theta
        return {name: theta[:, a:b].reshape((len(theta),) + shape) for name, (shape, a, b) in self.sites.items()}

    def mean(self) -> np.ndarray:
        """Weighted posterior mean ``(D,)``."""
        return self.weights @ self.theta

    def std(self) -> np.ndarray:
        """Weighted posterior standard deviation ``(D,)``."""
        return np.sqrt(self.weights @ (self.theta - self.mean()) ** 2)

    def to_arviz(self, seed: int = 0):
        """ArviZ ``InferenceData``: one chain of equally weighted draws (resampled by the weights when
        they are not equal), with the draws' ``log_weight`` and ``distance`` in ``sample_stats`` when
        no resampling was needed."""
        from adapters.inference_data import from_samples

        equal = bool(np.all(self.log_weights == self.log_weights[0]))
        samples = {k: v[None] for k, v in self.get_samples(resample=not equal, seed=seed).items()}
        stats = None
        if equal and self.distances is not None:
            stats = {"distance": np.asarray(self.distances)[None]}
        return from_samples(samples, sample_stats=stats, attrs={"inference_library": f"ppl-ext {self.algorithm}"})

    def summary(self) -> str:
        lines = [
            f"{self.algorithm}: {len(self.theta)} draws, ESS {self.ess:.1f}, {self.num_simulations} simulations"
            + (f" ({self.num_nan_simulations} non-finite, rejected)" if self.num_nan_simulations else "")
        ]
        mean, sd = self.mean(), self.std()
        width = max(len(n) for n in self.names)
        lines.append(f"{'':{width}}  {'mean':>10}  {'sd':>10}")
        lines += [f"{n:{width}}  {m:10.4g}  {s:10.4g}" for n, m, s in zip(self.names, mean, sd, strict=True)]
        return "\n".join(lines)

    def print_summary(self) -> None:
        print(self.summary())


def site_layout(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], dict[str, tuple[tuple[int, ...], int, int]]]:
    """Column names and ``{site: (shape, start, stop)}`` of a flat vector holding ``shapes`` in order."""
    names, sites, start = [], {}, 0
    for site, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        size = int(np.prod(shape, dtype=int))
        sites[site] = (shape, start, start + size)
        names += [site] if shape == () else [f"{site}[{i}]" for i in range(size)]
        start += size
    return names, sites


def degeneracy_warning(algorithm: str, log_weights: np.ndarray) -> str | None:
    """The shared weight-degeneracy message (:func:`adapters.diagnostics.weight_degeneracy_warning`)."""
    return weight_degeneracy_warning(algorithm, effective_sample_size(log_weights), len(log_weights))
