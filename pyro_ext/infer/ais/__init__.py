"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) in torch, and a Pyro shell.

Neal, "Annealed importance sampling", Statistics and Computing 11, 2001;
Grosse, Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543, 2015.

The torch twin of :mod:`numpyro_ext.infer.ais`, with the same names and semantics.  Geometric
path from a normalised initial density ``pi_0`` (the prior, or a proposal) to the unnormalised
target ``pi_0(x) L(x)`` with normaliser ``Z = E_{pi_0}[L]``::

    log pi_beta(x) = log pi_0(x) + beta log L(x),        0 = beta_0 < beta_1 < ... < beta_T = 1.

A forward chain draws ``x_0 ~ pi_0`` and, for ``t = 1..T``, adds the weight increment and then
moves with an HMC kernel ``K_t`` that leaves ``pi_{beta_t}`` invariant::

    log w += (beta_t - beta_{t-1}) log L(x_{t-1}),       x_t ~ K_t(. | x_{t-1}).

``E[w] = Z`` (Neal 2001), so ``log((1/K) sum_k w_k)`` over ``K`` independent chains is a
stochastic lower bound on ``log Z``.  A reverse chain starts from an exact sample of ``pi_1``
(the posterior) and runs the kernels backwards; its weight, the same product along its path,
has ``E[1/w] = 1/Z`` (every ``K_t`` is reversible), so ``-log((1/K) sum_k 1/w_k)`` is a
stochastic upper bound (BDMC, Grosse et al. 2015).  Standard errors are the delta method's on
the mean weight (:func:`adapters.mi.log_mean_exp_bound`).

**Step sizes.**  Both identities need each ``K_t`` fixed before the chain reaches temperature
``t`` (or chosen independently of the chain's own path): a step size adapted from the chain's
own acceptances is correlated with its state, the kernel mixture is no longer
``pi_t``-invariant and the weights are biased.  So :func:`ais` with ``adapt_step_size=True``
(each chain's step size multiplied by ``exp(kappa (a_t - target_accept_prob))`` after every
transition) is a *pilot*: :func:`tune_step_sizes` runs it on independent chains and returns one
step size per temperature (the geometric mean over the pilot's chains,
:func:`pilot_step_sizes`), and the estimate comes from a second run with that fixed schedule.
The reverse chains use the same schedule, so they are exact reversals of the forward chains.

**Batching.**  The core runs ``K`` chains as tensors ``(K, d)``; every density it calls is
*batched*, ``(K, d) -> (K,)``, and is called once per leapfrog step for all chains (a Python
loop runs over the temperatures and leapfrog steps only).  Gradients come from one backward
pass of the summed densities (the chains do not interact, so row ``k`` of the gradient is
chain ``k``'s).  The :class:`AIS` shell turns one-sample functions and Pyro models into batched
ones with ``torch.func.vmap`` (:mod:`pyro_ext.infer.model_util`).  The momentum draw, kinetic
energy, leapfrog and Metropolis test are :mod:`pyro_ext.infer.hmc_util`'s, batched over chains.

**Non-finite densities.**  A chain whose trajectory reaches a non-finite position or tempered
log density is frozen at its start for the rest of the trajectory (so no density is ever
evaluated at a non-finite point) and its proposal is rejected and counted as divergent, as is
one whose energy error exceeds ``max_delta_energy``.  A chain whose start has zero density
accepts any finite proposal (it carries no weight; moving keeps it from sticking).

**Randomness.**  The core draws from ``generator`` (a ``torch.Generator``) or, when it is
``None``, from torch's global generator (``pyro.set_rng_seed``); per HMC transition, in this
order: the momentum noise ``randn(K, d)``, then the Metropolis uniforms ``rand(K)``, both of
the positions' dtype.  The shell uses the global generator.

Shapes: ``K`` chains, ``d`` unconstrained dimensions, ``T`` annealing steps.

Layout: :mod:`~pyro_ext.infer.ais.core` (states, :func:`ais_init`, :func:`ais_step`),
:mod:`~pyro_ext.infer.ais.anneal` (whole schedules, the pilot) and
:mod:`~pyro_ext.infer.ais.shell` (:class:`AIS`, :class:`AISResult`).
"""

from pyro_ext.infer.ais.anneal import ais, ais_reverse, anneal, pilot_step_sizes, tune_step_sizes
from pyro_ext.infer.ais.core import AISInfo, AISOutput, AISState, ais_init, ais_step
from pyro_ext.infer.ais.shell import AIS, AISResult

__all__ = [
    "AIS",
    "AISInfo",
    "AISOutput",
    "AISResult",
    "AISState",
    "ais",
    "ais_init",
    "ais_reverse",
    "ais_step",
    "anneal",
    "pilot_step_sizes",
    "tune_step_sizes",
]
