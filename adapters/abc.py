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

from adapters.diagnostics import warn_unreliable, weight_degeneracy_warning


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


#: OMC warns when more than this fraction of its seeds is discarded.
OMC_MAX_DISCARDED_FRACTION = 0.1

#: The per-seed arrays both backends' OMC chunks hold, each with the seed as its leading axis.
OMC_FIELDS = ("u", "theta", "residual", "log_prior", "half_log_det", "num_iterations", "num_evaluations", "num_nan")


def omc_result(
    values: Mapping[str, np.ndarray],
    *,
    simulations_per_evaluation: int,
    residual_threshold: float,
    names: list[str],
    sites: Mapping[str, Any],
    num_chunks_computed: int,
    num_chunks_loaded: int,
) -> ABCResult:
    """The :class:`ABCResult` of OMC (Meeds & Welling 2015) from its per-seed arrays (NumPy, either backend).

    ``values`` maps each of :data:`OMC_FIELDS` to an array over the ``n`` seeds: the optimum ``u``
    ``(n, D)`` and its constrained ``theta`` ``(n, D)``, the ``residual`` ``(n, d)`` of the simulated
    statistics there, ``log_prior`` ``(n,)`` and ``half_log_det`` ``(n,)`` (``0.5 log det J^T J``),
    and the counts ``num_iterations``, ``num_evaluations`` and ``num_nan``.  A seed is kept when all
    of these are finite, ``J`` is not singular and ``|residual| <= residual_threshold``; its log
    weight is ``log_prior - half_log_det`` (the paper's Eq. 6).
    """
    v = values
    n = len(v["log_prior"])
    num_simulations = int(v["num_evaluations"].sum()) * simulations_per_evaluation
    num_nan = int(v["num_nan"].sum())
    # in float64: a far-off float32 residual (|r| > 1e19) would overflow when squared
    residual_norm = np.linalg.norm(np.asarray(v["residual"], dtype=np.float64), axis=1)
    half_log_det = v["half_log_det"]
    finite = (
        np.all(np.isfinite(v["residual"]), axis=1)
        & np.all(np.isfinite(v["theta"]), axis=1)
        & np.all(np.isfinite(v["u"]), axis=1)
        & np.isfinite(v["log_prior"])
        & ~np.isnan(half_log_det)
        & (half_log_det < np.inf)
    )
    singular = finite & (half_log_det == -np.inf)
    above = finite & ~singular & (residual_norm > residual_threshold)
    kept = finite & ~singular & ~above
    log_weights = v["log_prior"][kept] - half_log_det[kept]
    counts = {
        "num_nonfinite": int((~finite).sum()),
        "num_singular": int(singular.sum()),
        "num_above_threshold": int(above.sum()),
    }
    num_discarded = n - int(kept.sum())
    info = {
        "seed_index": np.flatnonzero(kept),
        "kept": kept,
        "u": v["u"],
        "residuals": v["residual"],
        "residual_norm": residual_norm,
        "half_log_det": half_log_det,
        "log_prior": v["log_prior"],
        "num_iterations": v["num_iterations"],
        "num_discarded": num_discarded,
        **counts,
        "residual_threshold": residual_threshold,
        "simulations_per_evaluation": simulations_per_evaluation,
        "num_chunks_computed": num_chunks_computed,
        "num_chunks_loaded": num_chunks_loaded,
    }
    messages = [nan_simulation_message("OMC", num_nan, num_simulations)]
    if num_discarded > OMC_MAX_DISCARDED_FRACTION * n:
        messages.append(
            f"OMC: {num_discarded} of {n} seeds ({num_discarded / n:.1%}) were discarded "
            f"({counts['num_nonfinite']} non-finite, {counts['num_singular']} with a singular Jacobian, "
            f"{counts['num_above_threshold']} with a residual norm above residual_threshold={residual_threshold:.3g}): "
            "their optimisations did not reach the observation. Raise num_steps, check the threshold, and "
            "check that the simulator can produce the observation"
        )
    if kept.any():
        messages.append(degeneracy_warning("OMC", log_weights))
    return ABCResult(
        algorithm="OMC",
        theta=v["theta"][kept],
        names=list(names),
        sites=dict(sites),
        log_weights=log_weights,
        num_simulations=num_simulations,
        num_nan_simulations=num_nan,
        distances=residual_norm[kept],
        info=info,
        warnings=warn_unreliable(*messages),
    )


def nearest_draws(
    distances: np.ndarray, *, keep: int | None, epsilon: float | None
) -> tuple[np.ndarray, float, list[str]]:
    """Rejection ABC's selection (host side, either backend): the indices of the ``keep`` smallest
    ``distances`` ``(n,)``, or of every distance ``<= epsilon`` when ``keep`` is ``None``; the
    tolerance they imply (the largest kept distance, or ``epsilon``); and the messages for an empty
    or short selection.  Non-finite distances are never kept.  The sort is stable: ties keep
    simulation order, so a seed always gives the same draws."""
    finite = np.isfinite(distances)
    order = np.argsort(distances, kind="stable")
    messages: list[str] = []
    if keep is None:
        index = order[distances[order] <= epsilon]
        if index.size == 0:
            smallest = f"{distances[order[0]]:.4g}" if finite.any() else "none was finite"
            messages.append(
                f"RejectionABC: no simulation within epsilon = {epsilon:g} (smallest distance {smallest}); "
                "the result is empty: raise epsilon or num_simulations, or keep num_samples draws instead"
            )
        return index, float(epsilon), messages
    index = order[:keep]
    if int(finite.sum()) < keep:
        messages.append(
            f"RejectionABC: only {int(finite.sum())} of the {keep} draws to keep had finite statistics; "
            "the result holds those only"
        )
        index = index[finite[index]]
    return index, (float(distances[index[-1]]) if index.size else math.inf), messages


def check_xi(xi: Any) -> float:
    """``xi`` in ``(0, 0.5)``: a decision error of 0.5 is a coin flip, 0 would need an exact surrogate."""
    ok = isinstance(xi, numbers.Real) and not isinstance(xi, bool) and math.isfinite(xi) and 0.0 < xi < 0.5
    if not ok:
        raise ValueError(
            f"xi must be a number in (0, 0.5), the largest accepted probability of a wrong MH decision, got {xi!r}"
        )
    return float(xi)


def check_proposal_scale(value: Any, dim: int) -> np.ndarray:
    """A positive scale, or ``(D,)`` positive scales, of the Gaussian random walk on ``u``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"proposal_scale: expected a number > 0 or {dim} numbers > 0, got {value!r}") from None
    if isinstance(value, bool) or array.shape not in ((), (dim,)):
        raise ValueError(f"proposal_scale: expected a number > 0 or an array of shape ({dim},), got {value!r}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"proposal_scale: every entry must be a finite number > 0, got {value!r}")
    return np.broadcast_to(array, (dim,)).copy()


#: where GPS-ABC runs new simulations when a decision is too uncertain (both backends)
GPSABC_ACQUISITIONS = ("variance", "random")
#: how GPS-ABC sets each statistic's GP noise (both backends): ``"fit"`` by the marginal likelihood of
#: every simulation (repeats included), ``"repeats"`` fixed at the pooled within-location variance
GPSABC_NOISE = ("fit", "repeats")


def check_gpsabc_settings(
    dim: int,
    xi: Any,
    num_surrogate_draws: Any,
    proposal_scale: Any,
    num_initial_simulations: Any,
    epsilon: Any,
    delta_s: Any,
    max_acquisitions: Any,
    acquisition: Any,
    num_pilot_draws: Any,
    refit_growth: Any,
    num_fit_steps: Any,
    fit_learning_rate: Any,
    progress_bar: Any,
    num_initial_repeats: Any = 1,
    noise: Any = "fit",
    max_simulations: Any = None,
) -> dict[str, Any]:
    """GPS-ABC's constructor settings checked, by name (both backends' ``GPSABC``, one set of messages)."""
    from adapters.validation import check_choice, check_greater, check_non_negative, check_positive_int

    num_surrogate_draws = check_positive_int("num_surrogate_draws", num_surrogate_draws)
    if num_surrogate_draws < 2:
        raise ValueError(f"num_surrogate_draws must be at least 2 (a median and an error), got {num_surrogate_draws}")
    num_initial_simulations = check_positive_int("num_initial_simulations", num_initial_simulations)
    if num_initial_simulations < 2:
        raise ValueError(f"num_initial_simulations must be at least 2 (a spread to fit), got {num_initial_simulations}")
    num_initial_repeats = check_positive_int("num_initial_repeats", num_initial_repeats)
    noise = check_choice("noise", noise, GPSABC_NOISE)
    if noise == "repeats" and num_initial_repeats < 2:
        raise ValueError(
            f"noise='repeats' estimates the noise from repeated simulations: num_initial_repeats must be at least 2, "
            f"got {num_initial_repeats}"
        )
    design = num_initial_simulations * num_initial_repeats
    if max_simulations is not None:
        max_simulations = check_positive_int("max_simulations", max_simulations)
        if max_simulations < design:
            raise ValueError(
                f"max_simulations must be None (no stop) or at least the initial design's "
                f"num_initial_simulations * num_initial_repeats = {design} simulations, got {max_simulations}"
            )
    return {
        "num_initial_repeats": num_initial_repeats,
        "noise": noise,
        "max_simulations": max_simulations,
        "xi": check_xi(xi),
        "num_surrogate_draws": num_surrogate_draws,
        "proposal_scale": check_proposal_scale(proposal_scale, dim),
        "num_initial_simulations": num_initial_simulations,
        "epsilon": check_non_negative("epsilon", epsilon),
        "delta_s": check_positive_int("delta_s", delta_s),
        "max_acquisitions": check_positive_int("max_acquisitions", max_acquisitions, allow_zero=True),
        "acquisition": check_choice("acquisition", acquisition, GPSABC_ACQUISITIONS),
        "num_pilot_draws": check_positive_int("num_pilot_draws", num_pilot_draws),
        "refit_growth": check_greater("refit_growth", refit_growth, 1.0, "the growth of the training set"),
        "num_fit_steps": check_positive_int("num_fit_steps", num_fit_steps),
        "fit_learning_rate": check_greater("fit_learning_rate", fit_learning_rate, 0.0),
        "progress_bar": bool(progress_bar),
    }


HABC_GRADIENTS = ("spsa", "autodiff")


def check_habc_settings(
    step_size: Any,
    num_steps: Any,
    friction: Any,
    num_spsa_repeats: Any,
    spsa_scale: Any,
    seed_refresh: Any,
    gradient: Any,
    num_pilot_draws: Any,
    adapt_mass_matrix: Any,
) -> dict[str, Any]:
    """HABC's scalar settings, checked with one message for both backends: ``{name: checked value}``."""
    from adapters.validation import check_choice, check_positive, check_positive_int, check_unit_interval

    return {
        "step_size": check_positive("step_size", step_size),
        "num_steps": check_positive_int("num_steps", num_steps),
        "friction": check_positive("friction", friction),
        "num_spsa_repeats": check_positive_int("num_spsa_repeats", num_spsa_repeats),
        "spsa_scale": check_positive("spsa_scale", spsa_scale),
        "seed_refresh": check_unit_interval("seed_refresh", seed_refresh, include_one=True),
        "gradient": check_choice("gradient", gradient, HABC_GRADIENTS),
        "num_pilot_draws": check_positive_int("num_pilot_draws", num_pilot_draws),
        "adapt_mass_matrix": check_sghmc_adaptation(adapt_mass_matrix),
    }


def check_sghmc_inverse_mass_matrix(value: Any, dim: int) -> np.ndarray | None:
    """HABC's ``inverse_mass_matrix``: ``None`` (identity), or a float64 copy of a ``(D,)`` positive
    diagonal or a ``(D, D)`` symmetric positive definite matrix (numpy, JAX or torch input)."""
    if value is None:
        return None
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"inverse_mass_matrix: expected None or an array of numbers, got {type(value).__name__}"
        ) from None
    if array.shape == (dim,):
        ok = bool(np.all(np.isfinite(array)) and np.all(array > 0))
    elif array.shape == (dim, dim):
        ok = bool(np.all(np.isfinite(array)) and np.allclose(array, array.T))
        ok = ok and bool(np.all(np.linalg.eigvalsh(array) > 0))
    else:
        raise ValueError(
            f"inverse_mass_matrix: expected shape ({dim},) or ({dim}, {dim}) for the problem's D = {dim} "
            f"unconstrained parameters, got shape {array.shape}"
        )
    if not ok:
        raise ValueError(
            "inverse_mass_matrix: expected positive finite entries (diagonal) or a symmetric positive "
            f"definite matrix (dense), got {value!r}"
        )
    return array


def check_sghmc_adaptation(value: Any) -> bool:
    """HABC's ``adapt_mass_matrix``: a bool (numpy's included)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"adapt_mass_matrix: expected True or False, got {value!r}")
    return bool(value)
