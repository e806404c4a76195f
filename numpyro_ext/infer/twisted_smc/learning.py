"""Twist learning in JAX: the contrastive (CTL) and SIXO losses as standalone pure functions.

Zhao et al. 2024, Sec. 4 (CTL, eq. 15): ``grad L = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t]``,
the gradient of

    L_CTL(theta) = - sum_t sum_m w_m log psi_t(x^m) + sum_t sum_i W_t^i log psi_t(x_t^i)

with positives ``x^m`` from ``sigma`` (weights ``w_m``) and negatives the SMC particles of
step ``t`` under ``pi_t`` (self-normalised weights ``W_t``, no gradient through them).
SIXO (Lawson et al. 2022) fits ``log psi_t`` as the logit of a classifier of positives
against the untwisted intermediate target's particles (weights ``B_t``)::

    L_SIXO(theta) = - sum_t sum_m w_m log sig(log psi_t(x^m)) - sum_t sum_i B_t^i log sig(-log psi_t(x_t^i)).

Token models average the negative term over every (particle prefix, next token) pair
exactly (Rao-Blackwellised), weighted under ``pi_{t+1}`` (CTL) or the untwisted ``p0`` (SIXO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adapters.smc import TWIST_METHODS
from adapters.validation import check_choice
from numpyro_ext.infer.smc_util import normalized_weights
from numpyro_ext.infer.twisted_smc.core import SMCOutput

__all__ = ["state_space_twist_loss", "token_twist_loss", "twist_loss"]


def twist_loss(
    method: str,
    log_psi_pos: jax.Array,
    positive_weights: jax.Array,
    log_psi_neg: jax.Array,
    negative_weights: jax.Array,
) -> jax.Array:
    """``L_CTL`` (``method="ctl"``) or ``L_SIXO`` (``"sixo"``) from twist values and their weights.

    ``log_psi_pos`` with ``positive_weights`` (broadcastable), ``log_psi_neg`` with
    ``negative_weights`` (``W`` under ``pi_t`` for CTL, ``B`` under the untwisted target for SIXO).
    """
    check_choice("method", method, TWIST_METHODS)
    if method == "ctl":
        return -jnp.sum(positive_weights * log_psi_pos) + jnp.sum(negative_weights * log_psi_neg)
    return -jnp.sum(positive_weights * jax.nn.log_sigmoid(log_psi_pos)) - jnp.sum(
        negative_weights * jax.nn.log_sigmoid(-log_psi_neg)
    )


def state_space_twist_loss(
    twist: Callable, params: Any, method: str, output: SMCOutput, positive_states: Any, positive_weights: jax.Array
) -> jax.Array:
    """The loss of a state-space twist ``twist(params, t, state)``, summed over ``t < T`` (``psi_T = 1``).

    ``positive_states``: dict of ``(M, T + 1, ...)`` states along the positive paths with
    ``positive_weights`` ``(1, M)``; negatives: ``output``'s particles and weights per step.
    """
    T1 = output.step_log_weights.shape[0]
    ts = jnp.arange(T1 - 1)  # psi_T = 1 is not learned
    batched = jax.vmap(jax.vmap(twist, in_axes=(None, None, 0)), in_axes=(None, 0, 0))
    drop_last = jax.tree.map(lambda v: v[:-1], output.states)
    log_psi_neg = batched(params, ts, drop_last)  # (T, N)
    pos_states = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1)[:-1], positive_states)
    log_psi_pos = batched(params, ts, pos_states)  # (T, M)
    if method == "ctl":
        negative_log_weights = output.step_log_weights[:-1]
    else:
        negative_log_weights = output.step_log_weights[:-1] - output.log_twists[:-1]  # the untwisted target
    w_neg = jax.vmap(normalized_weights)(jax.lax.stop_gradient(negative_log_weights))
    return twist_loss(method, log_psi_pos, positive_weights, log_psi_neg, w_neg)


def token_twist_loss(
    twist: Callable,
    params: Any,
    method: str,
    output: SMCOutput,
    positive_tokens: jax.Array,
    positive_weights: jax.Array,
    length: int,
) -> jax.Array:
    """The Rao-Blackwellised loss of a token twist ``twist(params, tokens, position) -> (V,)``.

    Summed over positions ``t < T - 1`` (``psi_T = phi`` is not learned); positives
    ``(M, T)`` with weights ``(1, M)``; negatives every (prefix, next token) pair of
    ``output.extras``, the pair weights normalised over all ``N V`` pairs.
    """
    positions = jnp.arange(length - 1)
    batched = jax.vmap(twist, in_axes=(None, 0, None))  # over sequences

    def positive(position):
        chosen = positive_tokens[:, position]
        return jnp.take_along_axis(batched(params, positive_tokens, position), chosen[:, None], 1)[:, 0]

    log_psi_pos = jax.vmap(positive)(positions)  # (T - 1, M)
    log_psi_pairs = jax.vmap(lambda p: batched(params, output.extras["prefixes"][p], p))(positions)  # (T-1, N, V)
    key = "pair_log_weights" if method == "ctl" else "pair_log_weights_untwisted"
    pairs = jax.lax.stop_gradient(output.extras[key][:-1])
    w_pairs = jax.vmap(lambda w: normalized_weights(w.ravel()).reshape(w.shape))(pairs)
    return twist_loss(method, log_psi_pos, positive_weights, log_psi_pairs, w_pairs)
