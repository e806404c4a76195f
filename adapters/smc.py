"""Backend-free halves of twisted SMC shared by ``numpyro_ext`` and ``pyro_ext``.

:class:`TwistedSMCConfig` validates every constructor argument once (same messages in both
backends); :func:`exact_sample_paths` parses exact target samples; :func:`smc_summary`,
:func:`smc_inference_data` and :func:`format_summary` turn a run's NumPy arrays into the
result's summary and ArviZ object; the rest are the bounds on ``log Z``:

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546), Sec. 5.

From ``R`` independent runs of each estimator of ``log Z`` (arrays of shape ``(R,)``):

* lower bounds ``E log Z_hat <= log Z``: SIS/IWAE (no resampling) and SMC;
* upper bounds ``>= log Z`` given exact target samples: IWAE with one of the ``K`` samples
  exact, and conditional SMC with particle 0 clamped to an exact path;
* the one-particle versions ``ELBO = E_q log w`` and ``EUBO = E_sigma log w`` of the
  (twisted) proposal path distribution ``q``, which give, with ``lower <= log Z <= upper``,

      KL(q || sigma) = log Z - ELBO   in   [lower - ELBO, upper - ELBO],
      KL(sigma || q) = EUBO - log Z   in   [EUBO - upper, EUBO - lower]

  (each end clipped at 0, since a KL divergence is non-negative).

Only NumPy: the backends hand over their run values as arrays.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adapters.validation import check_choice, check_positive_int

RESAMPLING = ("multinomial", "systematic", "stratified")
TWIST_METHODS = ("ctl", "sixo")
EXACT_SAMPLES_LAYOUT = "{'init': {site: (M, ...)}, 'step': {site: (M, T, ...)}} as get_samples() returns"


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def check_ess_threshold(value: Any) -> float:
    """``value`` as a float in ``(0, 1]`` (a real number, not a bool); the resampling trigger ``ESS < value * N``."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and 0.0 < float(value) <= 1.0):
        raise ValueError(f"ess_threshold: expected a number in (0, 1], got {value!r}")
    return float(value)


def check_filter_objects(model: Any, proposal: Any) -> None:
    """Refuse a model/proposal without Pyro's ``SMCFilter`` convention (``init`` and ``step`` methods)."""
    for obj, role in ((model, "model"), (proposal, "proposal")):
        if obj is None and role == "proposal":
            continue
        if not (callable(getattr(obj, "init", None)) and callable(getattr(obj, "step", None))):
            raise TypeError(
                f"{role}: expected an object with init(state, *args) and step(state, *args) methods "
                f"(Pyro's SMCFilter convention), got {type(obj).__name__}"
            )


def check_token_proposal(proposal: Any) -> None:
    """A :class:`TokenModel`'s proposal: ``None`` (twist-induced) or ``"prior"``."""
    if not (proposal is None or (isinstance(proposal, str) and proposal == "prior")):
        raise ValueError(f"proposal: for a TokenModel expected None (twist-induced) or 'prior', got {proposal!r}")


@dataclass(frozen=True)
class TwistedSMCConfig:
    """``TwistedSMC``'s validated constructor arguments (both backends build it; see the module docstring there).

    ``num_particles`` ``N >= 1``; ``resampling`` one of :data:`RESAMPLING`; ``ess_threshold``
    in ``(0, 1]`` (resample before a move when ``ESS < ess_threshold * N``);
    ``max_plate_nesting`` ``>= 0`` (Pyro only: the particle plate sits at
    ``dim = -1 - max_plate_nesting``); ``twist`` ``None`` or a callable; ``tokens``: the model
    is a ``TokenModel`` (then ``proposal`` is ``None`` or ``"prior"``), else ``model`` and
    ``proposal`` follow ``SMCFilter``'s ``init``/``step`` convention.
    """

    model: Any
    num_particles: int = 256
    twist: Any = None
    proposal: Any = None
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    max_plate_nesting: int = 0
    tokens: bool = False

    def __post_init__(self) -> None:
        if self.tokens:
            check_token_proposal(self.proposal)
        else:
            check_filter_objects(self.model, self.proposal)
        object.__setattr__(self, "num_particles", check_positive_int("num_particles", self.num_particles))
        object.__setattr__(self, "resampling", check_choice("resampling", self.resampling, RESAMPLING))
        object.__setattr__(self, "ess_threshold", check_ess_threshold(self.ess_threshold))
        nesting = check_positive_int("max_plate_nesting", self.max_plate_nesting, allow_zero=True)
        object.__setattr__(self, "max_plate_nesting", nesting)
        if self.twist is not None and not callable(self.twist):
            raise TypeError(f"twist: expected None, a callable or a learnable twist, got {type(self.twist).__name__}")


# ---------------------------------------------------------------------------------------
# Exact samples
# ---------------------------------------------------------------------------------------
def exact_sample_paths(
    samples: Mapping[str, Mapping[str, Any]], count: int | None, as_array: Callable[[Any], Any]
) -> tuple[tuple, tuple]:
    """``get_samples``-layout paths -> ``(init values (M, ...), step values (M, T, ...))``, per site in order.

    ``as_array`` converts each value to the backend's array type (``jnp.asarray``,
    ``torch.as_tensor``).  Every site needs the same leading (path) axis ``M``; with ``count``
    the first ``count`` paths are kept (``M >= count``, one per run).
    """
    try:
        init, steps = samples["init"], samples["step"]
        init = tuple(as_array(v) for v in init.values())
        steps = tuple(as_array(v) for v in steps.values())
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"exact_samples: expected {EXACT_SAMPLES_LAYOUT}") from None
    sizes = {int(np.shape(v)[0]) for v in init + steps if np.ndim(v) > 0}
    if len(sizes) != 1 or any(np.ndim(v) == 0 for v in init + steps):
        raise ValueError(f"exact_samples: every site needs the same leading (path) axis, got sizes {sorted(sizes)}")
    available = sizes.pop()
    if count is not None:
        if available < count:
            raise ValueError(f"exact_samples: {available} paths given, {count} needed (one per run)")
        init = tuple(v[:count] for v in init)
        steps = tuple(v[:count] for v in steps)
    return init, steps


def check_token_paths(tokens: np.ndarray, num_init: int, num_steps: int, length: int, vocab_size: int) -> None:
    """A ``TokenModel``'s exact paths: no init site, one step site ``token`` of integers ``(M, T)`` in ``0..V-1``."""
    if num_init or num_steps != 1:
        raise ValueError(
            "exact_samples: a TokenModel's paths are {'init': {}, 'step': {'token': (M, T)}}, got "
            f"{num_init} init and {num_steps} step site(s)"
        )
    if tokens.ndim != 2 or tokens.shape[1] != length:
        raise ValueError(f"exact_samples: token paths must have shape (M, {length}), got {tuple(tokens.shape)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"exact_samples: token paths must be integers, got {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"exact_samples: tokens must lie in 0..{vocab_size - 1}")


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
def smc_summary(log_Z: float, log_weights: Any, ess: Any, resampled: Any) -> dict[str, float]:
    """A run's summary from NumPy arrays: ``log_Z``, final ``ess`` and its fraction of ``N``, the
    smallest ESS over the steps, and how many steps resampled."""
    log_weights, ess, resampled = (np.asarray(v) for v in (log_weights, ess, resampled))
    num = log_weights.shape[-1]
    final = float(ess[-1]) if ess.size else math.nan
    return {
        "log_Z": float(log_Z),
        "num_particles": float(num),
        "final_ess": final,
        "final_ess_fraction": final / num,
        "min_ess": float(ess.min()) if ess.size else math.nan,
        "num_steps": float(resampled.shape[0]),
        "num_resampled": float(np.sum(resampled)),
    }


def format_summary(summary: Mapping[str, float]) -> str:
    """The text :meth:`SMCResult.print_summary` prints (one ``name  value`` line per entry)."""
    width = max(len(k) for k in summary)
    return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in summary.items())


def smc_inference_data(samples: Mapping[str, Mapping[str, Any]], log_weights: Any, log_Z: float):
    """``arviz.InferenceData`` of resampled paths (one chain, ``posterior``), the final ``log_weight``
    (``sample_stats``) and ``attrs["log_Z"]``; ``samples`` in the ``get_samples`` layout, NumPy values."""
    import arviz as az

    posterior = {k: np.asarray(v)[None] for group in samples.values() for k, v in group.items()}
    stats = {"log_weight": np.asarray(log_weights)[None]}
    idata = az.from_dict(posterior=posterior, sample_stats=stats)
    idata.attrs["log_Z"] = log_Z
    return idata


class LogZBounds(NamedTuple):
    """Bounds on ``log Z`` (means over repeats, each with its Monte Carlo standard error).

    ``sis_lower``: IWAE/SIS (no resampling); ``smc_lower``: SMC; ``iwae_upper``: SIS with one
    sample exact; ``csmc_upper``: conditional SMC (NaN without exact samples).
    ``kl_q_sigma`` and ``kl_sigma_q``: ``(low, high)`` intervals for ``KL(q || sigma)`` and
    ``KL(sigma || q)`` of the one-particle (twisted) proposal path distribution, from the
    single-sample bounds ``E_q log w`` and ``E_sigma log w`` and the sandwich on ``log Z``.
    """

    sis_lower: float
    sis_lower_se: float
    smc_lower: float
    smc_lower_se: float
    iwae_upper: float
    iwae_upper_se: float
    csmc_upper: float
    csmc_upper_se: float
    kl_q_sigma: tuple[float, float]
    kl_sigma_q: tuple[float, float]


def mean_se(values: Any) -> tuple[float, float]:
    """Mean and standard error ``sd / sqrt(R)`` of ``R`` run values (shape ``(R,)``).

    The standard error is NaN for a single run or when a value is not finite (a ``-inf``
    run makes the mean ``-inf`` and its error undefined).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        raise ValueError("values: need at least one run, got an empty array")
    if not np.all(np.isfinite(values)) or len(values) < 2:
        return float(np.mean(values)), math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def combine_bounds(
    sis: Any,
    smc: Any,
    iwae: Any = None,
    csmc: Any = None,
    elbo: Any = None,
    eubo: Any = None,
) -> LogZBounds:
    """:class:`LogZBounds` from the run values ``(R,)`` of each estimator.

    ``iwae``, ``csmc`` (upper bounds), ``elbo`` and ``eubo`` (one-particle ``log w`` under ``q``
    and under exact samples) come together or not at all; without them the upper bounds
    and the KL intervals are NaN.
    """
    nan2 = (math.nan, math.nan)
    given = [v is not None for v in (iwae, csmc, elbo, eubo)]
    if any(given) and not all(given):
        raise ValueError("iwae, csmc, elbo, eubo: give all four (they need exact samples) or none")
    if not all(given):
        return LogZBounds(*mean_se(sis), *mean_se(smc), *nan2, *nan2, nan2, nan2)
    elbo_mean, eubo_mean = mean_se(elbo)[0], mean_se(eubo)[0]
    lower = max(mean_se(sis)[0], mean_se(smc)[0])
    upper = min(mean_se(iwae)[0], mean_se(csmc)[0])
    return LogZBounds(
        *mean_se(sis),
        *mean_se(smc),
        *mean_se(iwae),
        *mean_se(csmc),
        kl_q_sigma=(max(lower - elbo_mean, 0.0), max(upper - elbo_mean, 0.0)),
        kl_sigma_q=(max(eubo_mean - upper, 0.0), max(eubo_mean - lower, 0.0)),
    )
