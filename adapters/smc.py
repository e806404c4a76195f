"""Backend-free pieces of twisted SMC shared by ``numpyro_ext`` and ``pyro_ext``: the bounds on ``log Z``.

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
from typing import Any, NamedTuple

import numpy as np


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
