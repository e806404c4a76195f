"""Twisted sequential Monte Carlo with learned twists and bidirectional log-Z bounds, in torch/Pyro.

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546); SIXO: Lawson, Ravent\u00f3s,
Warrington & Linderman, NeurIPS 2022.  The torch twin of :mod:`numpyro_ext.infer.twisted_smc`
(same names, arguments and semantics; particles are a leading batch dimension instead of vmap).

Target and intermediate targets (the paper's eqs. 1-3).  A state-space model written in
Pyro's :class:`pyro.infer.SMCFilter` convention -- an object with ``init(state, *init_args)``
and ``step(state, *step_args)`` whose ``pyro.sample`` statements are vectorised over the
particles by a ``pyro.plate("particles", N, dim=-1 - max_plate_nesting)`` that the filter
opens, keeping the particles' state in the dict ``state`` (tensors with a leading particle
dimension ``N``) -- defines the unnormalised path density
``p(x_{0:T}, y_{1:T}) = p(x_0) prod_t p(x_t | x_{t-1}) p(y_t | x_t)`` (every sample site,
observed ones included).  With twists ``psi_t`` (``psi_T = 1``) SMC targets

    pi_t(x_{0:t}) ∝ p(x_{0:t}, y_{1:t}) psi_t(x_{0:t}),      pi_T = sigma = p(x_{0:T} | y_{1:T}),

and ``Z = p(y_{1:T})``.  Particles are extended by a proposal ``q``: the model's own
transition by default (the bootstrap filter), or a guide object with the same ``init``/``step``
convention, traced first and replayed into the model exactly as ``SMCFilter`` does (model
latent sites that the guide does not sample are drawn from the model and cancel).  They are
weighted by the incremental weight (eq. 4)

    w_t = p(x_t, y_t | x_{t-1}) psi_t(x_{0:t}) / (q(x_t | x_{0:t-1}) psi_{t-1}(x_{0:t-1})),

where each site's log density is summed over every dimension but the particle one, and
resampled (multinomial, systematic or stratified) when the effective sample size falls under
``ess_threshold * N``.  ``Z_hat = prod_t sum_i W_{t-1}^i w_t^i`` is unbiased for any twist,
so ``E log Z_hat <= log Z`` (SMC lower bound); its variance vanishes for the optimal twists
``psi_t* = p(y_{t+1:T} | x_t)``.  Twists are Markov: ``log psi_t`` is a function of the time
index and the particles' ``state`` dict, batched over particles (``(N,)`` out).

Twist learning (Sec. 4): contrastive twist learning (CTL, eq. 15) follows

    grad L(theta) = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t],

with ``sigma`` from exact samples when given (else the final weighted SMC paths) and
``pi_t`` from the SMC particles at step ``t`` (self-normalised weights, no gradient through
them); SIXO (the comparison) fits ``log psi_t`` as the logit of a classifier of ``sigma``'s
states (positive) against the untwisted intermediate target's (negative).

Bounds (Sec. 5): SIS/IWAE and SMC lower bounds ``E log Z_hat``; given exact target samples,
the IWAE upper bound (one of the ``K`` importance samples replaced by an exact sample, no
resampling) and the conditional-SMC upper bound (one particle clamped to the exact path),
both ``>= log Z`` in expectation, so the user gets a sandwich on ``log Z`` and intervals on
``KL(q || sigma)`` and ``KL(sigma || q)`` (:mod:`adapters.smc`).

Autoregressive token models (the language-model case, :class:`TokenModel`).  A prior
``p0(x_{1:T}) = prod_t p0(x_t | x_{1:t-1})`` over tokens in ``{0..V-1}`` and a potential
``phi(x_{1:T}) >= 0`` define ``sigma(x) ∝ p0(x) phi(x)`` and ``Z = E_{p0}[phi]``; the twists
``psi_t(x_{1:t})`` (``psi_0 = 1``, ``psi_T = phi``) are given for all ``V`` continuations of
a prefix at once.  A prefix ``s = x_{1:t}`` is extended by ``v`` from the twist-induced
proposal (the default) or from ``p0`` (``proposal="prior"``),

    q(v | s) = p0(v | s) psi_{t+1}(s, v) / sum_v' p0(v' | s) psi_{t+1}(s, v'),
    w_{t+1} = sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)     (twist-induced: no dependence on v),
    w_{t+1} = psi_{t+1}(s, v) / psi_t(s)                      (prior),

and twist learning averages over the ``V`` continuations exactly (Rao-Blackwellised): the
negative term of CTL weighs each (particle, next token) pair by its weight under
``pi_{t+1}``, SIXO's by its weight under the untwisted ``p0``.

Package layout: ``core`` (the filter: :func:`run_filter`, :class:`SMCOutput`, all particles'
move), ``tokens`` (:class:`TokenModel`, :func:`run_token_filter`), ``twists``
(:class:`QuadraticTwist`, :class:`TabularTwist`), ``learning`` (the CTL/SIXO losses as
functions), ``shell`` (:class:`TwistedSMC`, :class:`SMCResult`); weights, ESS and resampling
from :mod:`pyro_ext.infer.smc_util`; argument checks and result helpers from :mod:`adapters.smc`.

Shapes: ``N`` particles, ``T`` steps.  Step arguments carry a leading time axis ``T``.
Several independent runs (:meth:`TwistedSMC.log_Z_samples`) are batched as ``R`` groups of
``N`` particles inside one particle plate of size ``R N``; resampling stays within a group.

Randomness comes from torch's global generator (``pyro.set_rng_seed``).  The filter traces
the model and the proposal with Pyro's validation off (as NumPyro has it), so an
out-of-support value or a NaN log density gives a particle zero weight (``-inf``) instead of
raising; when every particle of a run has zero weight its ``log Z_hat`` is ``-inf``.
"""

from adapters.smc import RESAMPLING, TWIST_METHODS, LogZBounds, TwistedSMCConfig, combine_bounds
from pyro_ext.infer.smc_util import effective_sample_size, normalized_weights, resample
from pyro_ext.infer.twisted_smc.core import SMCOutput, genealogy, paths, run_filter
from pyro_ext.infer.twisted_smc.learning import state_space_twist_loss, token_twist_loss
from pyro_ext.infer.twisted_smc.shell import SMCResult, TwistedSMC
from pyro_ext.infer.twisted_smc.tokens import TokenModel, run_token_filter
from pyro_ext.infer.twisted_smc.twists import QuadraticTwist, TabularTwist

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
]
