"""Twisted sequential Monte Carlo with learned twists and bidirectional log-Z bounds, in JAX/NumPyro.

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546); SIXO: Lawson, Ravent\u00f3s,
Warrington & Linderman, NeurIPS 2022.

Target and intermediate targets (the paper's eqs. 1-3).  A state-space model written in
Pyro's ``SMCFilter`` convention -- an object with ``init(state, *init_args)`` and
``step(state, *step_args)`` that call ``numpyro.sample`` and keep the particle's state in
the dict ``state`` -- defines the unnormalised path density
``p(x_{0:T}, y_{1:T}) = p(x_0) prod_t p(x_t | x_{t-1}) p(y_t | x_t)`` (every sample site,
observed ones included).  With twists ``psi_t`` (``psi_T = 1``) SMC targets

    pi_t(x_{0:t}) ∝ p(x_{0:t}, y_{1:t}) psi_t(x_{0:t}),      pi_T = sigma = p(x_{0:T} | y_{1:T}),

and ``Z = p(y_{1:T})``.  Particles are extended by a proposal ``q`` (the model's own
transition by default, i.e. the bootstrap filter; or a guide object with the same
``init``/``step`` convention, replayed into the model BY NAME as in Pyro's ``SMCFilter``:
each proposal site carries the name of the model latent site it proposes) and weighted by the incremental weight (eq. 4)

    w_t = p(x_t, y_t | x_{t-1}) psi_t(x_{0:t}) / (q(x_t | x_{0:t-1}) psi_{t-1}(x_{0:t-1})),

resampled (multinomial, systematic or stratified) when the effective sample size falls
under ``ess_threshold * N``.  ``Z_hat = prod_t sum_i W_{t-1}^i w_t^i`` is unbiased for any
twist, so ``E log Z_hat <= log Z`` (SMC lower bound); its variance vanishes for the optimal
twists ``psi_t* = p(y_{t+1:T} | x_t)``.  Twists here are Markov: ``log psi_t`` is a function
of the time index and the particle's ``state`` dict.

Twist learning (Sec. 4): contrastive twist learning (CTL, eq. 15) follows

    grad L(theta) = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t],

with ``sigma`` from exact samples when given (else the final weighted SMC paths) and
``pi_t`` from the SMC particles at step ``t`` (self-normalised weights); SIXO (the
comparison) fits ``log psi_t`` as the logit of a classifier of ``sigma``'s states (positive)
against the untwisted intermediate target's (negative).

Bounds (Sec. 5): SIS/IWAE and SMC lower bounds ``E log Z_hat``; given exact target samples,
the IWAE upper bound (one of the ``K`` importance samples replaced by an exact sample, no
resampling) and the conditional-SMC upper bound (one particle clamped to the exact path),
both ``>= log Z`` in expectation, so the user gets a sandwich on ``log Z`` and intervals on
``KL(q || sigma)`` and ``KL(sigma || q)`` of the (twisted) proposal's path distribution.

Package layout: ``core`` (the pure filter: :func:`run_filter`, :class:`SMCOutput`, the
particle move), ``tokens`` (:class:`TokenModel`, :func:`run_token_filter`), ``twists``
(:class:`QuadraticTwist`, :class:`TabularTwist`), ``learning`` (the CTL/SIXO losses as pure
functions), ``shell`` (:class:`TwistedSMC`, :class:`SMCResult`); weights, ESS and resampling
from :mod:`numpyro_ext.infer.smc_util`; argument checks and result helpers from :mod:`adapters.smc`.

Shapes: ``N`` particles, ``T`` steps.  Step arguments carry a leading time axis ``T``; the
state is a dict of per-particle arrays (leading axis ``N`` inside the filter).
"""

from adapters.smc import RESAMPLING, TWIST_METHODS, LogZBounds, TwistedSMCConfig, combine_bounds
from numpyro_ext.infer.smc_util import effective_sample_size, normalized_weights, resample
from numpyro_ext.infer.twisted_smc.core import SMCOutput, genealogy, paths, run_filter
from numpyro_ext.infer.twisted_smc.learning import state_space_twist_loss, token_twist_loss, twist_loss
from numpyro_ext.infer.twisted_smc.shell import SMCResult, TwistedSMC
from numpyro_ext.infer.twisted_smc.tokens import TokenModel, run_token_filter
from numpyro_ext.infer.twisted_smc.twists import QuadraticTwist, TabularTwist

__all__ = [
    "RESAMPLING",
    "TWIST_METHODS",
    "LogZBounds",
    "QuadraticTwist",
    "SMCOutput",
    "SMCResult",
    "TabularTwist",
    "TokenModel",
    "TwistedSMC",
    "TwistedSMCConfig",
    "combine_bounds",
    "effective_sample_size",
    "genealogy",
    "normalized_weights",
    "paths",
    "resample",
    "run_filter",
    "run_token_filter",
    "state_space_twist_loss",
    "token_twist_loss",
    "twist_loss",
]
