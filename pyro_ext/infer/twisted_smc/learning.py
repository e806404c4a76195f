"""Twist learning in torch: the contrastive (CTL) and SIXO losses as standalone functions, and the optimizer step.

Zhao et al. 2024, Sec. 4 (CTL, eq. 15): ``grad L = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t]``,
the gradient of

    L_CTL(theta) = - sum_t sum_m w_m log psi_t(x^m) + sum_t sum_i W_t^i log psi_t(x_t^i)

with positives ``x^m`` from ``sigma`` (weights ``w_m``) and negatives the SMC particles of
step ``t`` under ``pi_t`` (self-normalised weights ``W_t``, detached).  SIXO (Lawson et al.
2022) fits ``log psi_t`` as the logit of a classifier of positives against the untwisted
intermediate target's particles (weights ``B_t``)::

    L_SIXO(theta) = - sum_t sum_m w_m log sig(log psi_t(x^m)) - sum_t sum_i B_t^i log sig(-log psi_t(x_t^i)).

Token models average the negative term over every (particle prefix, next token) pair
exactly (Rao-Blackwellised), weighted under ``pi_{t+1}`` (CTL) or the untwisted ``p0`` (SIXO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_ext.infer.smc_util import normalized_weights
from pyro_ext.infer.twisted_smc.core import SMCOutput

__all__ = ["add_twist_loss", "optimizer_step", "state_space_twist_loss", "token_twist_loss", "weighted_sum"]


def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i v_i`` with zero-weight terms dropped (so a ``-inf``/NaN value at ``w = 0`` adds nothing)."""
    keep = weights > 0
    return torch.sum(torch.where(keep, weights * values, torch.zeros_like(values)))


def add_twist_loss(
    loss: torch.Tensor,
    method: str,
    log_psi_pos: torch.Tensor,
    positive_weights: torch.Tensor,
    log_psi_neg: torch.Tensor,
    negative_weights: torch.Tensor,
) -> torch.Tensor:
    """``loss`` plus one step's ``L_CTL`` (``method="ctl"``) or ``L_SIXO`` term (``"sixo"``).

    ``negative_weights``: ``W`` under ``pi_t`` (CTL) or ``B`` under the untwisted target (SIXO).
    """
    if method == "ctl":
        return loss - weighted_sum(positive_weights, log_psi_pos) + weighted_sum(negative_weights, log_psi_neg)
    logsigmoid = torch.nn.functional.logsigmoid
    return (
        loss
        - weighted_sum(positive_weights, logsigmoid(log_psi_pos))
        - weighted_sum(negative_weights, logsigmoid(-log_psi_neg))
    )


def state_space_twist_loss(
    twist: Callable, method: str, output: SMCOutput, positive_states: dict, positive_weights: torch.Tensor
) -> torch.Tensor:
    """The CTL or SIXO loss of ``twist(t, state) -> (N,)`` (sum over ``t < T``); positives ``(M, T + 1, ...)``
    with weights ``(M,)``, negatives ``output``'s particles per step."""
    T = output.step_log_weights.shape[0] - 1  # psi_T = 1 is not learned
    loss = torch.zeros(())
    for t in range(T):
        negatives = {k: v[t] for k, v in output.states.items()}
        log_psi_neg = twist(t, negatives).reshape(-1)
        log_psi_pos = twist(t, {k: v[:, t] for k, v in positive_states.items()}).reshape(-1)
        w_pos = positive_weights.to(log_psi_pos)
        if method == "ctl":
            w_neg = normalized_weights(output.step_log_weights[t]).to(log_psi_neg)
        else:
            untwisted = output.step_log_weights[t] - output.log_twists[t]
            w_neg = normalized_weights(untwisted).to(log_psi_neg)
        loss = add_twist_loss(loss, method, log_psi_pos, w_pos, log_psi_neg, w_neg)
    return loss


def token_twist_loss(
    twist: Callable,
    method: str,
    output: SMCOutput,
    positive_tokens: torch.Tensor,
    positive_weights: torch.Tensor,
    length: int,
) -> torch.Tensor:
    """Rao-Blackwellised CTL / SIXO loss of a token twist ``twist(tokens, position) -> (N, V)``, summed over
    positions ``t < T - 1``.

    ``positive_tokens`` ``(M, T)`` with weights ``(M,)``; negatives: every (prefix, next
    token) pair of ``output.extras`` (``(N, V)`` per position), the pair weights normalised
    over all ``N V`` pairs (no gradient through them)::

        CTL:  - sum_m w_m log psi(x^m_{1:t+1}) + sum_{i,v} W_{iv} log psi(s_i, v),   W under pi_{t+1}
        SIXO: - sum_m w_m log sig(log psi(x^m_{1:t+1})) - sum_{i,v} B_{iv} log sig(-log psi(s_i, v)),
              B under the untwisted p0.
    """
    key = "pair_log_weights" if method == "ctl" else "pair_log_weights_untwisted"
    loss = torch.zeros(())
    for position in range(length - 1):  # psi_T = phi is not learned
        chosen = positive_tokens[:, position]
        log_psi_pos = torch.gather(twist(positive_tokens, position), 1, chosen[:, None])[:, 0]
        log_psi_pairs = twist(output.extras["prefixes"][position], position)  # (N, V)
        pairs = output.extras[key][position]
        w_pairs = normalized_weights(pairs.reshape(-1)).reshape(pairs.shape).to(log_psi_pairs)
        w_pos = positive_weights.to(log_psi_pos)
        loss = add_twist_loss(loss, method, log_psi_pos, w_pos, log_psi_pairs, w_pairs)
    return loss


def optimizer_step(optimizer: Any, params: list[torch.Tensor]) -> Callable[[], None]:
    """One update of ``params`` from their ``.grad``: a torch optimizer, a PyroOptim, or a factory."""
    from pyro.optim import PyroOptim

    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=1e-2)
    if isinstance(optimizer, PyroOptim):
        return lambda: optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise TypeError(
                "optimizer: expected None, a torch.optim.Optimizer, a pyro.optim.PyroOptim or a callable "
                f"params -> Optimizer, got {type(optimizer).__name__}"
            )
        optimizer = optimizer(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: the factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in params if id(p) not in held]
    if missing:
        raise ValueError(f"optimizer: it does not hold {len(missing)} of the twist's {len(params)} parameter tensors")
    return optimizer.step
