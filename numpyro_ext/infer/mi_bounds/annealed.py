"""MINE-AIS (Brekelmans et al. 2022): HMC on ``z`` for the energy-based posterior, and its Multi-Sample AIS bound.

:func:`hmc_chain` draws the negatives of :class:`~numpyro_ext.infer.mi_bounds.MINEAIS`'s training
loss; :func:`mine_ais` evaluates the bound with the AIS chains of :mod:`numpyro_ext.infer.ais`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.mi import AISConfig, BoundEstimate, ais_reliability, mean_row_ess
from adapters.validation import check_positive_int
from numpyro_ext.infer.ais import ais, ais_reverse, tune_step_sizes
from numpyro_ext.infer.hmc_util import IntegratorState, hmc_proposal, sample_momentum
from numpyro_ext.infer.mi_bounds.critics import Critic
from numpyro_ext.infer.mi_bounds.terms import check_dims, check_joint, check_prior, mine_ais_terms

__all__ = ["hmc_chain", "mine_ais"]

Array = jax.Array


# ---------------------------------------------------------------------------------------
# HMC on z for the energy-based posterior p(z) e^{T(x, z)} (independent chains)
# ---------------------------------------------------------------------------------------
def hmc_chain(
    rng_key: Array,
    z: Array,
    log_density_fn: Callable[[Array], Array],
    num_steps: int,
    step_size: float,
    num_leapfrog: int,
) -> tuple[Array, Array]:
    """``num_steps`` Metropolis-adjusted HMC moves of independent chains ``z`` ``(..., dz)``.

    ``log_density_fn(z) -> (...)`` must treat each chain on its own (chain ``i``'s density depends on
    ``z[i]`` only), so the gradient of the sum is each chain's gradient.  Unit mass, fixed
    ``step_size`` and ``num_leapfrog``; the leapfrog and the Metropolis test are those of
    :mod:`numpyro_ext.infer.hmc_util`.  Returns the final states and the mean acceptance rate.
    """

    unit_mass = jnp.ones(z.shape[-1], z.dtype)

    def value_and_grad(position):
        values, vjp = jax.vjp(log_density_fn, position)
        return values, vjp(jnp.ones_like(values))[0]

    def step(carry, key):
        position, logp, grad = carry
        key_p, key_u = jax.random.split(key)
        start = IntegratorState(position, sample_momentum(key_p, unit_mass, position), logp, grad)
        log_u = jnp.log(jax.random.uniform(key_u, logp.shape, position.dtype))
        end, test = hmc_proposal(start, log_u, None, unit_mass, step_size, num_leapfrog, value_and_grad=value_and_grad)
        accept = test.is_accepted
        position = jnp.where(accept[..., None], end.position, position)
        logp = jnp.where(accept, end.logdensity, logp)
        grad = jnp.where(accept[..., None], end.logdensity_grad, grad)
        return (position, logp, grad), jnp.mean(accept.astype(position.dtype))

    logp, grad = value_and_grad(z)
    (z, _, _), accept = jax.lax.scan(step, (z, logp, grad), jax.random.split(rng_key, num_steps))
    return z, jnp.mean(accept)


# ---------------------------------------------------------------------------------------
# MINE-AIS evaluation: Multi-Sample AIS from p(z) to p(z) e^{T(x, z)}
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _mine_ais_runner(critic: Critic, prior: Any, num_leapfrog: int, target_accept_prob: float) -> tuple:
    """Jitted pilot and estimate for one critic and prior (cached, so repeated evaluations share a compile)."""

    def log_prior(zz):
        return prior.log_prob(zz)

    @jax.jit
    def pilot(params, keys, x, init, betas, step_size):
        def one(key, x_i, init_i):
            return tune_step_sizes(
                key,
                init_i,
                log_prior,
                lambda zz: critic(params, x_i, zz),
                betas,
                step_size=step_size,
                num_leapfrog=num_leapfrog,
                target_accept_prob=target_accept_prob,
            )

        steps = jax.vmap(one)(keys, x, init)  # (m, T)
        return jnp.exp(jnp.mean(jnp.log(steps), axis=0))

    @jax.jit
    def estimate(params, forward_keys, reverse_keys, x, z, init, betas, steps):
        def one(key_f, key_r, x_i, z_i, init_i):
            def log_lik(zz):
                return critic(params, x_i, zz)

            rev = ais_reverse(key_r, z_i[None], log_prior, log_lik, betas, step_size=steps, num_leapfrog=num_leapfrog)
            log_w, accept, divergent = rev.log_weights, rev.acceptance_rate, jnp.sum(rev.is_divergent)
            if init_i.shape[0] > 0:
                fwd = ais(key_f, init_i, log_prior, log_lik, betas, step_size=steps, num_leapfrog=num_leapfrog)
                log_w = jnp.concatenate([log_w, fwd.log_weights])
                accept = jnp.concatenate([accept, fwd.acceptance_rate], axis=1)
                divergent = divergent + jnp.sum(fwd.is_divergent)
            return log_w, log_lik(z_i), jnp.mean(accept, axis=1), divergent

        log_w, positive, accept, divergent = jax.vmap(one)(forward_keys, reverse_keys, x, z, init)
        return log_w, positive, jnp.mean(accept, axis=0), jnp.sum(divergent)

    return pilot, estimate


def mine_ais(
    rng_key: Array,
    critic: Critic,
    params: Any,
    x: Any,
    z: Any,
    prior: Any,
    num_chains: int = 16,
    num_steps: int = 100,
    schedule: Any = "sigmoid",
    step_size: float = 0.1,
    num_leapfrog: int = 10,
    adapt_step_size: bool = True,
    target_accept_prob: float = 0.65,
    num_pilot: int = 32,
    return_details: bool = False,
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    """The MINE-AIS lower bound of a critic ``T`` on joint samples ``x`` ``(N, dx)``, ``z`` ``(N, dz)``.

    For each ``x_i``: ``K - 1 = num_chains - 1`` forward AIS chains from ``prior`` ``p(z)`` to
    ``pi_T(z|x_i) ∝ p(z) e^{T(x_i, z)}`` and one reverse chain started at the joint sample
    ``z_i`` (:func:`numpyro_ext.infer.ais.ais` and :func:`~numpyro_ext.infer.ais.ais_reverse`,
    HMC with ``num_leapfrog`` leapfrog steps through ``num_steps`` temperatures of
    ``schedule``), and the term ``T(x_i, z_i) - log 1/K sum_k w_k``.

    Why it is a lower bound for every ``K`` and ``T`` (also when ``pi_T != p(z|x)``): AIS
    followed by picking one chain in proportion to its weight is a sampler of ``z`` given
    ``x`` whose density ``r(z|x)`` satisfies ``log r(z|x) >= log p(z) + T(x, z) - E log 1/K
    sum_k w_k`` (one reverse chain from ``z``, the others forward), and
    ``I >= E_p log r(z|x) / p(z)``.  As AIS becomes exact every weight tends to ``Z_T(x)`` and the
    bound to ``I_EB(T) = E_p T - E log Z_T(x) >= I_DV(T)``.  With ``num_steps=1`` it is GIWAE
    with ``q = p(z)``, every term ``<= log K``.

    Step sizes: with ``adapt_step_size`` an adaptive pilot (:func:`~numpyro_ext.infer.ais.tune_step_sizes`)
    on the first ``num_pilot`` ``x``'s with independent prior draws gives one step size per
    temperature (geometric mean over the pilot's ``x``'s), which every estimating chain then uses
    fixed, so the reverse chain is the exact reversal of the forward ones; else ``step_size``
    throughout.  ``return_details`` adds a dict: ``per_sample`` ``(N,)``, ``log_weights``
    ``(N, K)`` (column 0 the reverse chain), ``step_sizes`` ``(T,)``, ``acceptance_rate`` ``(T,)``.
    Divergences above 1% of the transitions, or a mean Kish ESS per ``x_i`` below a tenth of ``K``,
    warn (:class:`adapters.diagnostics.ReliabilityWarning`); the messages are kept in the
    estimate's ``warnings``.
    """
    cfg = AISConfig.from_arguments(locals())
    num_pilot = check_positive_int("num_pilot", num_pilot)
    x, z = check_joint(x, z)
    check_dims(x, z, getattr(critic, "x_dim", None), getattr(critic, "z_dim", None))
    prior = check_prior(prior, z.shape[-1])
    try:
        pilot, run = _mine_ais_runner(critic, prior, cfg.num_leapfrog, cfg.target_accept_prob)
    except TypeError:  # an unhashable critic or prior
        pilot, run = _mine_ais_runner.__wrapped__(critic, prior, cfg.num_leapfrog, cfg.target_accept_prob)
    n, k = x.shape[0], cfg.num_chains
    dtype = z.dtype
    betas = jnp.asarray(cfg.betas, dtype)
    key_pilot, key_pilot_init, key_init, key_fwd, key_rev = jax.random.split(rng_key, 5)
    if cfg.adapt_step_size:
        m = min(n, num_pilot)
        pilot_init = jnp.asarray(prior.sample(key_pilot_init, (m, k)), dtype)
        steps = pilot(
            params, jax.random.split(key_pilot, m), x[:m], pilot_init, betas, jnp.asarray(cfg.step_size, dtype)
        )
    else:
        steps = jnp.full((cfg.num_steps,), cfg.step_size, dtype)
    init = jnp.asarray(prior.sample(key_init, (n, k - 1)), dtype).reshape(n, k - 1, z.shape[-1])
    log_w, positive, accept, num_divergent = run(
        params, jax.random.split(key_fwd, n), jax.random.split(key_rev, n), x, z, init, betas, steps
    )
    terms = mine_ais_terms(positive, log_w.T)
    warned = ais_reliability(
        "MINE-AIS",
        int(num_divergent),
        n * k * cfg.num_steps,
        mean_row_ess(np.asarray(log_w)),
        k,
        what="importance weights of each outer sample (mean ESS over the samples)",
    )
    estimate = BoundEstimate.from_samples(np.asarray(terms), "lower", "MINE-AIS", warned)
    if not return_details:
        return estimate
    details = {
        "per_sample": np.asarray(terms),
        "log_weights": np.asarray(log_w),
        "step_sizes": np.asarray(steps),
        "acceptance_rate": np.asarray(accept),
    }
    return estimate, details
