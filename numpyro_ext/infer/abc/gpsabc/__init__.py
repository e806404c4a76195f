"""GPS-ABC in JAX: Metropolis-Hastings on a Gaussian-process surrogate of the simulator's statistics.

Meeds & Welling, "GPS-ABC: Gaussian Process Surrogate Approximate Bayesian Computation" (UAI 2014,
arXiv:1401.2838).  Every simulation ``(u_n, s_n)`` ever run is kept, and each summary statistic
``j`` gets its own Gaussian process over the prior's unconstrained parameters ``u`` (tinygp: a
constant mean, an ARD squared-exponential kernel and a homoscedastic noise ``sigma_j^2``, the
simulator's own scatter).  The likelihood of ``theta`` is the synthetic likelihood built from the
surrogate, with the GP's latent function ``f_j(u)`` as the mean of statistic ``j`` and its noise
``sigma_j^2`` (plus ``epsilon^2``) as its variance::

    log p(y | u, f) = sum_j log N(y_j; f_j(u), sigma_j^2 + epsilon^2)            ("gaussian")
    log p(y | u, f) = sum_j log Phi(+-(y_j - f_j(u)) / sqrt(sigma_j^2 + epsilon^2))  (one-sided, POPE)

The chain is a random-walk Metropolis-Hastings on ``u`` (the prior's density there includes the
Jacobian of the map).  At each step the surrogate's uncertainty makes the acceptance probability
``alpha = min(1, p(u') p(y | u', f) / (p(u) p(y | u, f)))`` a random variable: ``M`` joint draws of
``(f(u), f(u'))`` from the GP posterior (every statistic, the 2 x 2 covariance of the two points
included) give ``M`` draws ``alpha^(m)``.  With ``u_mh ~ U(0, 1)`` drawn once per step and ``tau``
the median of the ``alpha^(m)``, the step accepts when ``u_mh <= tau``, and the probability that
this decision is wrong is estimated as the decision error

    E(u_mh) = (1/M) #{m: alpha^(m) <  u_mh}   if u_mh <= tau   (we accept; wrong if alpha < u_mh)
    E(u_mh) = (1/M) #{m: alpha^(m) >= u_mh}   if u_mh >  tau   (we reject; wrong if alpha >= u_mh)

While ``E(u_mh) > xi`` the step runs ``delta_s`` new simulations, adds them to the training set,
re-conditions the GPs and draws ``M`` new ``alpha^(m)`` (at most ``max_acquisitions`` rounds per
step; a step still above ``xi`` then decides by the median and is counted as ``capped``).  Where:
at ``u`` or ``u'``, whichever has the larger variance of its ``M`` surrogate log likelihoods
(``acquisition="variance"``: the point whose uncertainty spreads ``alpha`` most), or one of the two
at random (``acquisition="random"``, the choice of the authors' adaptive-MH code).  The paper's
sections and equation numbers are not cited here: only its abstract and the authors' code
(tedmeeds/abcpy) could be read while this was written.

Hyperparameters (per statistic: constant mean, amplitude, noise, one lengthscale per dimension)
are fitted by maximising tinygp's log marginal likelihood with Adam (optax) on standardised inputs
and outputs, at the start and whenever the training set has grown by the factor ``refit_growth``
since the last fit (warm-started); every acquisition re-conditions the GPs at the current
hyperparameters.  A fit whose log marginal likelihood is not finite raises an error.

The noise ``sigma_j^2``: the initial design simulates ``num_initial_repeats`` times (default 2) at
each of its locations.  ``noise="fit"`` (default) fits ``sigma_j^2`` with the other hyperparameters,
the repeats' within-location scatter entering the marginal likelihood exactly; ``noise="repeats"``
holds it at each fit to the pooled within-location variance ``sum_i SS_ij / sum_i (n_i - 1)``
(:func:`~.core.pooled_noise_variance`).  With one simulation per location the fitted noise can
collapse to its lower bound (sbibm's gaussian_linear: 8 of 10 statistics at 0.001, standardised,
the chain frozen); :class:`GPSABC`'s docstring gives the measurements.  ``max_simulations`` stops
the acquisitions once the next round would pass it; the chain then goes on with the surrogate
alone (``info["out_of_budget"]`` per step).

Training set: a fixed-capacity buffer with a mask (``SurrogateData``), doubled on the host when an
MH step could overflow it, so the jitted step compiles once per capacity (``log2`` times in a
run).  Masked rows (unused slots and non-finite simulations, which are counted and never used)
sit at distinct inputs far from every datum, where the squared-exponential kernel is exactly 0:
they are independent of the data and their constant contribution to the marginal likelihood is
removed exactly.

The package: :mod:`.core`, the pure pieces (:class:`SurrogateData`, :func:`empty_data`,
:func:`add_simulations`, :func:`grow`, :class:`GPParams`, :class:`Standardizer`,
:func:`fit_standardizer`, :func:`log_marginal_likelihood`, :func:`fit_hyperparameters`,
:class:`Surrogate`, :func:`condition_surrogate`, :func:`predict`, :func:`decision_error`,
:func:`gpsabc_step`); :mod:`.shell`, the object :class:`GPSABC` that runs the chain on the host
and returns an :class:`adapters.abc.ABCResult`.
"""

from numpyro_ext.infer.abc.gpsabc import core
from numpyro_ext.infer.abc.gpsabc.core import (
    GPParams,
    GPSABCInfo,
    GPSABCState,
    Standardizer,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    add_simulations,
    capacity_for,
    condition_surrogate,
    decision_error,
    default_params,
    empty_data,
    fit_hyperparameters,
    fit_standardizer,
    gpsabc_step,
    grow,
    log_likelihood_draws,
    log_marginal_likelihood,
    pooled_noise_variance,
    predict,
    repeats_log_noise,
    surrogate_log_likelihood,
)
from numpyro_ext.infer.abc.gpsabc.shell import GPSABC

__all__ = [
    "GPParams",
    "GPSABC",
    "GPSABCInfo",
    "GPSABCState",
    "Standardizer",
    "StepConfig",
    "Surrogate",
    "SurrogateData",
    "add_design",
    "add_simulations",
    "capacity_for",
    "condition_surrogate",
    "core",
    "decision_error",
    "default_params",
    "empty_data",
    "fit_hyperparameters",
    "fit_standardizer",
    "gpsabc_step",
    "grow",
    "log_likelihood_draws",
    "log_marginal_likelihood",
    "pooled_noise_variance",
    "predict",
    "repeats_log_noise",
    "surrogate_log_likelihood",
]
