"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) in JAX, and a NumPyro shell.

Neal, "Annealed importance sampling", Statistics and Computing 11, 2001;
Grosse, Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543, 2015.

Geometric path from a normalised initial density ``pi_0`` (the prior, or a proposal) to the
unnormalised target ``pi_0(x) L(x)`` with normaliser ``Z = E_{pi_0}[L]``::

    log pi_beta(x) = log pi_0(x) + beta log L(x),        0 = beta_0 < beta_1 < ... < beta_T = 1.

``log_prior_fn`` is ``log pi_0`` and ``log_likelihood_fn`` is ``log L`` (for a proposal ``q``
instead of the prior, ``log L = log p(x, z) - log q(z)``).  A forward chain draws
``x_0 ~ pi_0`` and, for ``t = 1..T``, adds the weight increment and then moves with a kernel
``K_t`` that leaves ``pi_{beta_t}`` invariant (HMC here)::

    log w += (beta_t - beta_{t-1}) log L(x_{t-1}),       x_t ~ K_t(. | x_{t-1}).

``E[w] = Z`` (Neal 2001), so ``log((1/K) sum_k w_k)`` over ``K`` independent chains is
a stochastic lower bound on ``log Z``.  A reverse chain starts from an exact sample
``x_{T-1} ~ pi_1`` (the posterior) and runs the kernels backwards, ``x_{t-1} ~ K_t(. | x_t)``
for ``t = T-1..1``; its weight, the same product along its path, has ``E[1/w] = 1/Z``
(every ``K_t`` is reversible, so it is its own reversal), so ``-log((1/K) sum_k 1/w_k)`` is a
stochastic upper bound (BDMC, Grosse et al. 2015).  Standard errors come from the
delta method on the mean weight (:func:`adapters.mi.log_mean_exp_bound`).

**Step sizes.**  Both identities need each ``K_t`` to be fixed before the chain reaches
temperature ``t``, or at least chosen independently of the chain's own path.  Adapting a
chain's step size from its own past acceptances does not satisfy this: the step size is then
correlated with the current state, the kernel mixture is no longer ``pi_t``-invariant and the
weights are biased (an exact enumeration on two states with a Metropolis kernel whose
proposal rate follows the previous move gives ``E[w] = 5.11`` for ``Z = 5``).  So
:func:`ais` with ``adapt_step_size=True`` (multiplicative adaptation of each chain's step size
toward ``target_accept_prob`` at each temperature) is a *pilot*: :func:`tune_step_sizes` runs
it on independent chains and returns one step size per temperature (the geometric mean over
the pilot chains), and the estimate comes from a second run with that fixed schedule, for
which every transition is exactly ``pi_t``-invariant and both bounds hold.  The reverse chains
use the same schedule, so they run the exact reversal of the forward kernels, as the
multi-sample AIS bounds of :mod:`numpyro_ext.infer.ais_mi` require.

Three layers, one module each:

* :func:`ais_init` / :func:`ais_step` — one chain, BlackJAX style, pure and ``jit``/``vmap``-able
  (:mod:`numpyro_ext.infer.ais.core`);
* :func:`ais`, :func:`ais_reverse`, :func:`tune_step_sizes` — ``K`` chains vmapped over a
  ``lax.scan`` through the schedule (:mod:`numpyro_ext.infer.ais.anneal`);
* :class:`AIS` — a shell built from a NumPyro model (prior of the latent sites to the posterior
  given the observed sites), an :class:`adapters.Target` with a proposal, or plain functions,
  with :meth:`AIS.run` and :meth:`AIS.run_reverse` returning an :class:`AISResult`
  (:mod:`numpyro_ext.infer.ais.shell`).

Shapes: ``K`` chains, ``d`` unconstrained dimensions, ``T`` annealing steps.
"""

from numpyro_ext.infer.ais.anneal import AISOutput, ais, ais_reverse, pilot_step_sizes, tune_step_sizes
from numpyro_ext.infer.ais.core import AISInfo, AISState, ais_init, ais_step
from numpyro_ext.infer.ais.shell import AIS, AISResult

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
    "pilot_step_sizes",
    "tune_step_sizes",
]
