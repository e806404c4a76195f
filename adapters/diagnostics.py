"""Run-reliability warnings shared by every sampler and estimator of both backends.

An estimate can be computed without error and still mean nothing: AIS whose transitions
diverge at most temperatures, an SMC run whose weights sit on one particle.  The MCMC
kernels stop such runs at the door (a model that raises on validation); what slips past
is reported here, after the run, with the count and what it means, so the two backends
and all algorithms word it the same way.  The functions return the messages they warned
with (empty when the run looks reliable), so results can keep them.
"""

from __future__ import annotations

import math
import warnings

__all__ = [
    "DEFAULT_MAX_DIVERGENCE_RATE",
    "DEFAULT_MIN_ESS_FRACTION",
    "ReliabilityWarning",
    "divergence_warning",
    "weight_degeneracy_warning",
    "warn_unreliable",
]

#: A run with more divergent transitions than this fraction of all transitions is flagged.
DEFAULT_MAX_DIVERGENCE_RATE = 0.01
#: A weighted sample whose Kish ESS is below this fraction of its size is flagged.
DEFAULT_MIN_ESS_FRACTION = 0.01


class ReliabilityWarning(RuntimeWarning):
    """The run finished, but its diagnostics say the estimate should not be trusted."""


def divergence_warning(
    algorithm: str,
    num_divergent: int,
    num_transitions: int,
    *,
    max_rate: float = DEFAULT_MAX_DIVERGENCE_RATE,
) -> str | None:
    """The message for ``num_divergent`` of ``num_transitions`` divergent transitions, or ``None``.

    Divergences mean the integrator left the typical set (a step size too large for the
    curvature, or a log density that is NaN/-inf on part of the space, as with an invalid
    parameter): the transitions there are rejected, the chains stop moving, and the
    estimate is biased in a way its standard error does not show.
    """
    if num_transitions <= 0 or num_divergent <= max_rate * num_transitions:
        return None
    rate = num_divergent / num_transitions
    return (
        f"{algorithm}: {num_divergent} of {num_transitions} transitions diverged ({rate:.1%}, more than "
        f"{max_rate:.1%}); the estimate is unreliable. Check the model for invalid parameters (NaN or -inf log "
        "densities) and reduce the step size or lengthen the schedule."
    )


def weight_degeneracy_warning(
    algorithm: str,
    ess: float,
    num_samples: int,
    *,
    min_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    what: str = "weights",
) -> str | None:
    """The message for a Kish ESS of ``ess`` out of ``num_samples`` weighted samples, or ``None``.

    When the normalised weights concentrate on a few samples the estimate (and its standard
    error, computed from the same few samples) reflects those samples only; more samples,
    more intermediate distributions or a better proposal are needed.
    """
    if num_samples <= 1 or (math.isfinite(ess) and ess >= max(min_fraction * num_samples, 1.0 + 1e-9)):
        return None
    shown = f"{ess:.1f}" if math.isfinite(ess) else str(ess)
    return (
        f"{algorithm}: the {what} are degenerate: effective sample size {shown} of {num_samples} "
        f"(below {min_fraction:.0%}); the estimate and its standard error rest on a few samples. Use more "
        "samples, more intermediate distributions, or a proposal closer to the target."
    )


def warn_unreliable(*messages: str | None, stacklevel: int = 3) -> list[str]:
    """Warn (``ReliabilityWarning``) with each message that is not ``None``; return them."""
    issued = [m for m in messages if m]
    for message in issued:
        warnings.warn(message, ReliabilityWarning, stacklevel=stacklevel)
    return issued
