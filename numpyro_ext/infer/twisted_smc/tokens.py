"""Autoregressive token models (the language-model case) and their twisted SMC in JAX (the paper's Alg. 1).

Equations: :mod:`numpyro_ext.infer.twisted_smc`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from adapters.smc import per_particle_shape_error
from adapters.validation import check_positive_int
from numpyro_ext.infer.smc_util import effective_sample_size
from numpyro_ext.infer.twisted_smc.core import FilterState, SMCOutput, StepSettings, resample_step, update_log_Z

__all__ = ["TokenModel", "run_token_filter", "token_step"]


class TokenModel:
    """An autoregressive model over token sequences ``x_{1:T}`` in ``{0..V-1}`` and a potential.

    ``next_token_log_probs(tokens, position) -> (V,)``: ``log p0(x_{position+1} = v | prefix)``
    where the prefix is ``tokens[:position]`` of the fixed-length buffer ``tokens`` (shape
    ``(T,)``, int; entries from ``position`` on are padding and must be ignored);
    ``log_potential(tokens) -> ()``: ``log phi(x_{1:T})`` of a full sequence (``-inf`` allowed).
    The target is ``sigma(x) ∝ p0(x) phi(x)`` and ``Z = E_{p0}[phi]``.

    Twists for token models are ``twist(tokens, position) -> (V,)`` (or, learnable,
    ``twist(params, tokens, position)``): ``log psi_{position+1}`` of the prefix extended by
    each candidate next token.  ``psi_T = phi`` is used at the last position.
    """

    def __init__(self, next_token_log_probs: Callable, log_potential: Callable, vocab_size: int, length: int):
        if not callable(next_token_log_probs) or not callable(log_potential):
            raise TypeError("TokenModel: next_token_log_probs and log_potential must be callables")
        self.next_token_log_probs = next_token_log_probs
        self.log_potential = log_potential
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)


def _log_psi_next(model: TokenModel, twist: Callable | None, twist_params: Any, tokens: jax.Array, position):
    """``(N, V)``: ``log psi_{position+1}`` of every particle's prefix extended by each token (NaN -> ``-inf``);
    ``psi_T = phi`` at the last position, ``psi = 1`` without a twist."""
    V = model.vocab_size

    def log_twist_next(tokens, position):
        if twist is None:
            return jnp.zeros(V)
        value = twist(tokens, position) if twist_params is None else twist(twist_params, tokens, position)
        if jnp.shape(value) != (V,):
            raise per_particle_shape_error("twist", (V,), jnp.shape(value))
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    def log_phi_next(tokens, position):
        candidates = jax.vmap(lambda v: tokens.at[position].set(v))(jnp.arange(V, dtype=tokens.dtype))
        value = jax.vmap(model.log_potential)(candidates)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    return jax.lax.cond(
        position == model.length - 1,
        lambda tk: jax.vmap(log_phi_next, in_axes=(0, None))(tk, position),
        lambda tk: jax.vmap(log_twist_next, in_axes=(0, None))(tk, position),
        tokens,
    )


def token_step(
    model: TokenModel,
    proposal: str | None,
    twist: Callable | None,
    twist_params: Any,
    settings: StepSettings,
    carry: FilterState,
    inputs: tuple,
) -> tuple[FilterState, tuple]:
    """Position ``t`` of the token filter (with the leading arguments bound, the ``jax.lax.scan`` body of
    :func:`run_token_filter`).

    ``inputs = (position, clamp_token)``: resample, extend every prefix by a token from ``q``
    (particle 0 by ``clamp_token`` when clamped), reweight.  Returns the new carry and the
    record ``(tokens drawn, buffers, log_weights, log_twists, ancestors, ess, resampled,
    prefixes, pair log weights under pi_{t+1}, under p0)``.
    """
    resampling, ess_threshold, clamped = settings
    V = model.vocab_size
    position, clamp_token = inputs
    key, resample_key, move_key = jax.random.split(carry.rng_key, 3)
    index, log_w, do_resample = resample_step(resample_key, carry.log_weights, ess_threshold, resampling, clamped)
    tokens, log_psi = carry.particles[index], carry.log_twists[index]
    log_p0 = jax.vmap(model.next_token_log_probs, in_axes=(0, None))(tokens, position)
    if log_p0.shape != (tokens.shape[0], V):
        raise per_particle_shape_error("next_token_log_probs", (V,), log_p0.shape[1:])
    log_p0 = jnp.where(jnp.isnan(log_p0), -jnp.inf, log_p0)
    log_psi_next = _log_psi_next(model, twist, twist_params, tokens, position)
    log_target = log_p0 + log_psi_next  # (N, V): pi_{t+1}(s, v) / pi-normaliser, up to psi_t(s)
    if proposal is None:
        total = logsumexp(log_target, axis=1)
        log_q = jnp.where(jnp.isfinite(total)[:, None], log_target - total[:, None], -math.log(V))
    else:
        log_q = log_p0
    choice = jax.random.categorical(move_key, log_q, axis=1).astype(tokens.dtype)
    if clamped:
        choice = choice.at[0].set(clamp_token)
    chosen_psi = jnp.take_along_axis(log_psi_next, choice[:, None], axis=1)[:, 0]
    if proposal is None:
        increment = logsumexp(log_target, axis=1) - log_psi
    else:
        increment = chosen_psi - log_psi
    increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
    pair_log_w = log_w[:, None] + log_target - log_psi[:, None]
    pair_log_w_base = log_w[:, None] - log_psi[:, None] + log_p0
    new_tokens = tokens.at[:, position].set(choice)
    new_log_w = log_w + increment
    log_Z = update_log_Z(carry.log_Z, log_w, new_log_w)
    out = (
        choice,
        new_tokens,
        new_log_w,
        chosen_psi,
        index,
        effective_sample_size(new_log_w),
        do_resample,
        tokens,
        pair_log_w,
        pair_log_w_base,
    )
    return FilterState(new_tokens, new_log_w, chosen_psi, log_Z, key), out


def run_token_filter(
    rng_key: jax.Array,
    model: TokenModel,
    num_particles: int,
    *,
    proposal: str | None = None,
    twist: Callable | None = None,
    twist_params: Any = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
) -> SMCOutput:
    """(Twisted, conditional) SMC over the tokens of a :class:`TokenModel` (the paper's Alg. 1).

    At position ``t`` each particle's prefix ``s`` is extended by ``v`` from the
    twist-induced proposal ``q(v | s) ∝ p0(v | s) psi_{t+1}(s, v)`` (``proposal=None``; its
    incremental weight ``sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)`` does not depend on
    ``v``) or from ``p0`` (``proposal="prior"``, weight ``psi_{t+1}(s, v) / psi_t(s)``).
    ``extras`` holds, per position, the prefixes the moves started from (``(T, N, T)``) and
    the log weights of every (prefix, next token) pair under ``pi_{t+1}`` and under the
    untwisted ``p0`` (``(T, N, V)``), which twist learning uses to average over ``v`` exactly.
    """
    T = model.length
    settings = StepSettings(resampling, ess_threshold, clamp is not None)
    body = functools.partial(token_step, model, proposal, twist, twist_params, settings)
    tokens = jnp.zeros((num_particles, T), dtype=jnp.int32)
    zeros = jnp.zeros(num_particles)
    clamp_tokens = jnp.zeros(T, dtype=jnp.int32) if clamp is None else jnp.asarray(clamp[1][0], dtype=jnp.int32)
    carry = FilterState(tokens, zeros, zeros, jnp.zeros(()), rng_key)
    final, outs = jax.lax.scan(body, carry, (jnp.arange(T), clamp_tokens))
    log_Z, log_w = final.log_Z, final.log_weights
    choice, states, step_log_w, step_psi, ancestors, ess, resampled, prefixes, pair_w, pair_w_base = outs
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=(),
        step_latents=(choice,),
        states={"tokens": jnp.concatenate([tokens[None], states])},
        step_log_weights=jnp.concatenate([zeros[None], step_log_w]),
        log_twists=jnp.concatenate([zeros[None], step_psi]),
        ancestors=ancestors,
        ess=jnp.concatenate([jnp.full((1,), float(num_particles)), ess]),
        resampled=resampled,
        extras={"prefixes": prefixes, "pair_log_weights": pair_w, "pair_log_weights_untwisted": pair_w_base},
    )
