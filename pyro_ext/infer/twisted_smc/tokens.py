"""Autoregressive token models (the language-model case) and their twisted SMC in torch (the paper's Alg. 1).

Equations: :mod:`pyro_ext.infer.twisted_smc`.  Particles are batched (``(N, T)`` token
buffers); several runs are ``G`` groups of ``N``.  Randomness: torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from adapters.smc import RESAMPLING, check_token_paths, check_token_proposal, per_particle_shape_error
from adapters.validation import check_choice, check_positive_int
from pyro_ext.infer.smc_util import normalized_weights
from pyro_ext.infer.twisted_smc.core import (
    FilterOptions,
    SMCOutput,
    record_step,
    resample_groups,
    select_run,
    weight_step,
)

__all__ = ["TokenModel", "run_token_filter", "token_paths", "token_runs"]


class TokenModel:
    """An autoregressive model over token sequences ``x_{1:T}`` in ``{0..V-1}`` and a potential.

    ``next_token_log_probs(tokens, position) -> (N, V)``: row ``i`` is
    ``log p0(x_{position+1} = v | prefix_i)``, the prefix being ``tokens[i, :position]`` of the
    fixed-length buffer ``tokens`` (``(N, T)``, ``torch.long``, batched over particles;
    entries from ``position`` on are padding and must be ignored; ``position`` a Python
    ``int``).  ``log_potential(tokens) -> (N,)``: ``log phi(x_{1:T})`` of full sequences
    ``(N, T)`` (``-inf`` allowed).  The target is ``sigma(x) ∝ p0(x) phi(x)``, ``Z = E_{p0}[phi]``.

    Twists for token models are ``twist(tokens, position) -> (N, V)``: ``log psi_{position+1}``
    of each prefix extended by each candidate next token (a ``torch.nn.Module`` such as
    :class:`TabularTwist` is learnable).  ``psi_T = phi`` is used at the last position.
    """

    def __init__(self, next_token_log_probs: Callable, log_potential: Callable, vocab_size: int, length: int):
        if not callable(next_token_log_probs) or not callable(log_potential):
            raise TypeError("TokenModel: next_token_log_probs and log_potential must be callables")
        self.next_token_log_probs = next_token_log_probs
        self.log_potential = log_potential
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)


def _token_values(value: Any, shape: tuple[int, ...], role: str, dtype: torch.dtype) -> torch.Tensor:
    """A user callable's output checked for ``shape``, in ``dtype``, NaN -> ``-inf``."""
    value = torch.as_tensor(value)
    if tuple(value.shape) != shape and value.dim() >= 1 and len(shape) == 2 and value.shape[0] == shape[0]:
        raise per_particle_shape_error(role, shape[1:], tuple(value.shape[1:]))
    if tuple(value.shape) != shape:
        raise ValueError(f"{role}: expected a tensor of shape {shape}, got {tuple(value.shape)}")
    value = value.to(dtype)
    return torch.where(torch.isnan(value), torch.full_like(value, -math.inf), value)


def _log_phi_candidates(model: TokenModel, tokens: torch.Tensor, position: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, V)``: ``log phi`` of every particle's sequence with ``tokens[:, position]`` set to each ``v``."""
    total, V = tokens.shape[0], model.vocab_size
    candidates = tokens.repeat_interleave(V, dim=0)  # row i V + v: particle i with token v
    candidates[:, position] = torch.arange(V, device=tokens.device).repeat(total)
    value = _token_values(model.log_potential(candidates), (total * V,), "log_potential", dtype)
    return value.reshape(total, V)


def _token_move(model, twist, proposal, tokens, position, dtype):
    """Every particle's next-token step: ``log p0`` and ``log psi_{t+1}`` of all ``V`` continuations
    ``(N, V)``, the drawn tokens ``(N,)`` (from ``q``) and ``log_target = log p0 + log psi_{t+1}``."""
    total, T, V = tokens.shape[0], model.length, model.vocab_size
    log_p0 = _token_values(model.next_token_log_probs(tokens, position), (total, V), "next_token_log_probs", dtype)
    if position == T - 1:  # psi_T = phi
        log_next = _log_phi_candidates(model, tokens, position, dtype)
    elif twist is None:
        log_next = torch.zeros((total, V), dtype=dtype)
    else:
        log_next = _token_values(twist(tokens, position), (total, V), "twist", dtype)
    log_target = log_p0 + log_next  # (N, V): pi_{t+1}(s, v) up to pi_t's normaliser and psi_t(s)
    # q: the twist-induced proposal (uniform where it is undefined) or p0
    probs = normalized_weights(log_target if proposal is None else log_p0)
    choice = torch.multinomial(probs, 1).squeeze(-1)
    return log_p0, log_next, log_target, choice


def _pair_log_weights(log_w, log_psi, log_table, G, N, V):
    """Log weights ``(G, N, V)`` of every (prefix, next token) pair, NaN -> ``-inf``."""
    pair = (log_w - log_psi)[..., None] + log_table.reshape(G, N, V)
    return torch.where(torch.isnan(pair), torch.full_like(pair, -math.inf), pair)


def _token_output(rec: dict, log_Z, log_w, G: int, N: int, dtype, record: bool) -> SMCOutput:
    """The recorded positions of :func:`token_runs` stacked into an :class:`SMCOutput` with a run axis."""
    empty = torch.zeros((0, G, N), dtype=dtype)
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=(),
        step_latents=(torch.stack(rec["choice"]),) if record else (),
        states={"tokens": torch.stack(rec["tokens"])} if record else {},
        step_log_weights=torch.stack(rec["log_w"]) if record else empty,
        log_twists=torch.stack(rec["psi"]) if record else empty,
        ancestors=torch.stack(rec["index"]) if record else torch.zeros((0, G, N), dtype=torch.long),
        ess=torch.stack(rec["ess"]),
        resampled=torch.stack(rec["resampled"]),
        extras=(
            {
                "prefixes": torch.stack(rec["prefix"]),
                "pair_log_weights": torch.stack(rec["pair"]),
                "pair_log_weights_untwisted": torch.stack(rec["base"]),
            }
            if record
            else None
        ),
    )


@torch.no_grad()
def token_runs(
    model: TokenModel,
    num_groups: int,
    num_particles: int,
    options: FilterOptions | None = None,
    *,
    clamp: torch.Tensor | None = None,
    record: bool = True,
) -> SMCOutput:
    """``num_groups`` independent token-model runs of ``num_particles`` particles, batched.

    ``clamp``: ``(G, T)`` token paths; particle 0 of group ``g`` follows path ``g``.  Returns
    an :class:`SMCOutput` with a run axis; with ``record=False`` only ``log_Z``,
    ``log_weights`` and ``ess``/``resampled`` are filled.
    """
    options = FilterOptions() if options is None else options
    proposal, twist, resampling, ess_threshold = (
        options.proposal,
        options.twist,
        options.resampling,
        options.ess_threshold,
    )
    T, V = model.length, model.vocab_size
    G, N = num_groups, num_particles
    total = G * N
    dtype = torch.get_default_dtype()
    tokens = torch.zeros((total, T), dtype=torch.long)
    log_w = torch.zeros((G, N), dtype=dtype)
    log_psi = torch.zeros((G, N), dtype=dtype)
    log_Z = torch.zeros(G, dtype=dtype)
    rec: dict[str, list] = {k: [] for k in ("choice", "index", "prefix", "pair", "base", "resampled")}
    rec.update(
        tokens=[tokens.reshape(G, N, T)], log_w=[log_w], psi=[log_psi], ess=[torch.full((G,), float(N), dtype=dtype)]
    )
    for position in range(T):
        index, log_w, do_resample, flat = resample_groups(log_w, ess_threshold, resampling, clamp is not None)
        if flat is not None:
            tokens = tokens[flat]
            log_psi = torch.gather(log_psi, 1, index)
        log_p0, log_next, log_target, choice = _token_move(model, twist, proposal, tokens, position, dtype)
        if clamp is not None:
            choice = choice.reshape(G, N)
            choice[:, 0] = clamp[:, position]
            choice = choice.reshape(total)
        chosen_psi = torch.gather(log_next, 1, choice[:, None]).reshape(G, N)
        log_norm = torch.logsumexp(log_target, dim=-1)  # -inf where every continuation is impossible
        increment = (log_norm.reshape(G, N) if proposal is None else chosen_psi) - log_psi
        if record:
            pair = _pair_log_weights(log_w, log_psi, log_target, G, N, V)
            base = _pair_log_weights(log_w, log_psi, log_p0, G, N, V)
            record_step(rec, pair=pair, base=base, prefix=tokens.reshape(G, N, T))
        tokens = tokens.clone()
        tokens[:, position] = choice
        log_Z, log_w = weight_step(rec, log_Z, log_w, increment, do_resample)
        log_psi = chosen_psi
        if record:
            record_step(
                rec, choice=choice.reshape(G, N), tokens=tokens.reshape(G, N, T), log_w=log_w, psi=log_psi, index=index
            )
    return _token_output(rec, log_Z, log_w, G, N, dtype, record)


def token_paths(clamp: tuple[tuple, tuple], model: TokenModel) -> torch.Tensor:
    """``(M, T)`` token paths (``long``) from exact samples' ``(init, steps)``, checked against the model."""
    init, steps = clamp
    tokens = torch.as_tensor(steps[0]) if len(steps) == 1 else torch.zeros((0, 0), dtype=torch.long)
    check_token_paths(np.asarray(tokens.detach().cpu()), len(init), len(steps), model.length, model.vocab_size)
    return tokens.long()


def run_token_filter(
    model: TokenModel,
    num_particles: int,
    *,
    proposal: str | None = None,
    twist: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
) -> SMCOutput:
    """(Twisted, conditional) SMC over the tokens of a :class:`TokenModel` (the paper's Alg. 1).

    At position ``t`` each particle's prefix ``s`` is extended by ``v`` from the
    twist-induced proposal ``q(v | s) ∝ p0(v | s) psi_{t+1}(s, v)`` (``proposal=None``; its
    incremental weight ``sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)`` does not depend on
    ``v``) or from ``p0`` (``proposal="prior"``, weight ``psi_{t+1}(s, v) / psi_t(s)``), with
    ``psi_0 = 1`` and ``psi_T = phi`` (evaluated for the last token's ``V`` candidates).
    ``twist``: ``None`` or ``twist(tokens (N, T), position) -> (N, V)``.  ``clamp``:
    ``((), (tokens (T,),))``: particle 0 follows that path (conditional SMC).  ``extras``
    holds, per position, the prefixes the moves started from (``(T, N, T)``) and the log
    weights of every (prefix, next token) pair under ``pi_{t+1}`` and under the untwisted
    ``p0`` (``(T, N, V)``), which twist learning uses to average over ``v`` exactly.
    Randomness: torch's global generator.
    """
    if not isinstance(model, TokenModel):
        raise TypeError(f"model: expected a TokenModel, got {type(model).__name__}")
    check_token_proposal(proposal)
    check_positive_int("num_particles", num_particles)
    check_choice("resampling", resampling, RESAMPLING)
    path = None
    if clamp is not None:
        path = token_paths((tuple(clamp[0]), tuple(torch.as_tensor(v)[None] for v in clamp[1])), model)
    options = FilterOptions(proposal=proposal, twist=twist, resampling=resampling, ess_threshold=ess_threshold)
    output = token_runs(model, 1, num_particles, options, clamp=path)
    return select_run(output, 0)
