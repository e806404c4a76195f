"""Monte Carlo checks of MCMC draws against exact answers, with tolerances from MC error.

Every check takes draws shaped ``(chains, draws)``, measures the effective sample size
with ArviZ and allows ``z_max`` Monte Carlo standard errors, so a correct sampler passes
with probability ~1 - 6e-5 per check and a biased one fails once its bias exceeds a few
standard errors.
"""

from __future__ import annotations

import arviz as az
import numpy as np
from scipy import stats

Z_MAX = 4.0


def _chains(draws) -> np.ndarray:
    draws = np.asarray(draws, dtype=float)
    return draws[None] if draws.ndim == 1 else draws


def assert_mean(draws, mean: float, sd: float, label: str, z_max: float = Z_MAX) -> None:
    """|sample mean - mean| < z_max * sd / sqrt(ESS)."""
    draws = _chains(draws)
    ess = float(az.ess(draws))
    z = (draws.mean() - mean) / (sd / np.sqrt(ess))
    assert abs(z) < z_max, f"{label}: mean {draws.mean():.4f} vs exact {mean:.4f} (z = {z:.2f}, ESS {ess:.0f})"


def assert_variance(draws, mean: float, variance: float, kurtosis_excess: float, label: str, z_max: float = Z_MAX):
    """Second central moment vs exact, with the MC error of (x - mean)^2 from its own ESS.

    ``kurtosis_excess`` is the exact excess kurtosis (0 for a Gaussian); the standard
    deviation of ``(x - mean)^2`` is ``variance * sqrt(2 + kurtosis_excess)``.
    """
    squares = (_chains(draws) - mean) ** 2
    ess = float(az.ess(squares))
    sd_squares = variance * np.sqrt(2.0 + kurtosis_excess)
    z = (squares.mean() - variance) / (sd_squares / np.sqrt(ess))
    message = f"{label}: variance {squares.mean():.4f} vs exact {variance:.4f} (z = {z:.2f}, ESS {ess:.0f})"
    assert abs(z) < z_max, message


def assert_ks(draws, cdf, label: str, alpha: float = 1e-3) -> None:
    """Kolmogorov-Smirnov test of draws thinned to about one draw per effective sample."""
    draws = _chains(draws)
    ess = float(az.ess(draws))
    thin = max(1, int(np.ceil(draws.size / ess)))
    thinned = draws[:, ::thin].ravel()
    p_value = stats.kstest(thinned, cdf).pvalue
    assert p_value > alpha, f"{label}: KS p-value {p_value:.2e} on {thinned.size} thinned draws (ESS {ess:.0f})"


def fraction_moved(draws) -> float:
    """Share of transitions that changed the state, pooled over chains."""
    draws = _chains(draws)
    return float(np.mean(draws[:, 1:] != draws[:, :-1]))
