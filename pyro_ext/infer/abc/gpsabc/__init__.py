"""GPS-ABC in torch: Metropolis-Hastings on a Gaussian-process surrogate of the simulator's statistics.

The torch twin of :mod:`numpyro_ext.infer.abc.gpsabc` (same class, arguments, defaults, ``info``
keys and messages; torch's global generator and one simulation ``torch.Generator`` take the place
of JAX's keys).  Meeds & Welling, "GPS-ABC: Gaussian Process Surrogate Approximate Bayesian
Computation" (UAI 2014, arXiv:1401.2838).  Every simulation ``(u_n, s_n)`` ever run is kept, and
each summary statistic ``j`` gets its own Gaussian process over the prior's unconstrained
parameters ``u`` (GPyTorch: one exact GP batched over the ``d`` statistics, ``batch_shape = (d,)``,
a constant mean, ``ScaleKernel(RBFKernel(ard_num_dims=D))`` and a homoscedastic noise
``sigma_j^2``, the simulator's own scatter).  The likelihood of ``theta`` is the synthetic
likelihood built from the surrogate, with the GP's latent function ``f_j(u)`` as the mean of
statistic ``j`` and its noise ``sigma_j^2`` (plus ``epsilon^2``) as its variance::

    log p(y | u, f) = sum_j log N(y_j; f_j(u), sigma_j^2 + epsilon^2)            ("gaussian")
    log p(y | u, f) = sum_j log Phi(+-(y_j - f_j(u)) / sqrt(sigma_j^2 + epsilon^2))  (one-sided, POPE)

The chain is a random-walk Metropolis-Hastings on ``u`` (the prior's density there includes the
Jacobian of the map).  At each step the surrogate's uncertainty makes the acceptance probability
``alpha = min(1, p(u') p(y | u', f) / (p(u) p(y | u, f)))`` a random variable: ``M`` joint draws of
``(f(u), f(u'))`` from the GP posterior (every statistic, the 2 x 2 covariance of the two points
included, all in one batch) give ``M`` draws ``alpha^(m)``.  With ``u_mh ~ U(0, 1)`` drawn once per
step and ``tau`` the median of the ``alpha^(m)``, the step accepts when ``u_mh <= tau``, and the
probability that this decision is wrong is estimated as the decision error

    E(u_mh) = (1/M) #{m: alpha^(m) <  u_mh}   if u_mh <= tau   (we accept; wrong if alpha < u_mh)
    E(u_mh) = (1/M) #{m: alpha^(m) >= u_mh}   if u_mh >  tau   (we reject; wrong if alpha >= u_mh)

While ``E(u_mh) > xi`` the step runs ``delta_s`` new simulations, adds them to the training set,
re-conditions the GP and draws ``M`` new ``alpha^(m)`` (at most ``max_acquisitions`` rounds per
step; a step still above ``xi`` then decides by the median and is counted as ``capped``).  Where:
at ``u`` or ``u'``, whichever has the larger variance of its ``M`` surrogate log likelihoods
(``acquisition="variance"``), or one of the two at random (``acquisition="random"``, the choice of
the authors' adaptive-MH code).  The paper's sections and equation numbers are not cited here:
only its abstract and the authors' code (tedmeeds/abcpy) could be read while this was written.

Hyperparameters (per statistic: constant mean, amplitude, noise, one lengthscale per dimension)
are fitted by maximising the exact log marginal likelihood with ``torch.optim.Adam`` on
standardised inputs and outputs, at the start and whenever the training set has grown by the
factor ``refit_growth`` since the last fit (warm-started); every acquisition re-conditions the GP
at the current hyperparameters.  A fit whose log marginal likelihood is not finite raises an error.

The noise ``sigma_j^2``: the initial design simulates ``num_initial_repeats`` times (default 2) at
each of its locations, and ``noise="fit"`` (default) fits ``sigma_j^2`` with the rest, the repeats'
within-location scatter in the marginal likelihood; ``noise="repeats"`` holds it at each fit to the
pooled within-location variance (:func:`~.core.pooled_noise_variance`).  Without repeats a fitted noise
can collapse to its lower bound (the surrogate then claims near-certainty; the NumPyro twin's
docstring gives the sbibm measurements).  ``max_simulations`` stops the acquisitions once the next
round would pass it; the chain then goes on with the surrogate alone (``info["out_of_budget"]``).

Training set (:class:`SurrogateData`): simulations grouped by location; the GP sees each
location's mean with noise ``sigma^2 / n`` (:class:`~.core.GroupedNoise`, the noise model of a
GPyTorch Gaussian likelihood) and the scatter within locations enters the marginal likelihood
exactly, so the fit is that of a plain GP on every simulation.  Non-finite simulations are counted
and never used.  Torch compiles nothing, so the set grows freely (no fixed-capacity buffer as in
the NumPyro twin; ``info["compilations"]`` is empty).

The package: :mod:`.core`, the pure pieces (:class:`SurrogateData`, :func:`empty_data`,
:func:`add_simulations`, :class:`GPParams`, :class:`Standardizer`, :func:`fit_standardizer`,
:class:`StatisticsGP`, :func:`log_marginal_likelihood`, :func:`fit_hyperparameters`,
:class:`Surrogate`, :func:`condition_surrogate`, :func:`predict`, :func:`decision_error`,
:func:`gpsabc_step`); :mod:`.shell`, the object :class:`GPSABC` that runs the chain and returns an
:class:`adapters.abc.ABCResult`.
"""

from pyro_ext.infer.abc.gpsabc import core
from pyro_ext.infer.abc.gpsabc.core import (
    GPParams,
    GPSABCInfo,
    GPSABCState,
    GroupedNoise,
    Standardizer,
    StatisticsGP,
    StepConfig,
    Surrogate,
    SurrogateData,
    add_design,
    add_simulations,
    condition_surrogate,
    decision_error,
    default_params,
    empty_data,
    fit_hyperparameters,
    fit_standardizer,
    gpsabc_step,
    log_likelihood_draws,
    log_marginal_likelihood,
    pooled_noise_variance,
    predict,
    predict_marginal,
    repeats_log_noise,
    surrogate_log_likelihood,
)
from pyro_ext.infer.abc.gpsabc.shell import GPSABC

__all__ = [
    "GPParams",
    "GPSABC",
    "GPSABCInfo",
    "GPSABCState",
    "GroupedNoise",
    "Standardizer",
    "StatisticsGP",
    "StepConfig",
    "Surrogate",
    "SurrogateData",
    "add_design",
    "add_simulations",
    "condition_surrogate",
    "core",
    "decision_error",
    "default_params",
    "empty_data",
    "fit_hyperparameters",
    "fit_standardizer",
    "gpsabc_step",
    "log_likelihood_draws",
    "log_marginal_likelihood",
    "pooled_noise_variance",
    "repeats_log_noise",
    "predict",
    "predict_marginal",
    "surrogate_log_likelihood",
]
