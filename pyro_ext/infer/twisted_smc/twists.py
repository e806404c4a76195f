"""Learnable twists in torch: Gaussian (state-space models) and tabular (token models).

A learnable twist is a ``torch.nn.Module`` with parameters; :meth:`TwistedSMC.fit_twists`
trains them in place.  Both are batched over particles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from adapters.smc import check_twist_state
from adapters.validation import check_positive_int

__all__ = ["QuadraticTwist", "TabularTwist"]


class QuadraticTwist(torch.nn.Module):
    """Learnable Gaussian twist ``log psi_t(x) = -0.5 x^T L_t L_t^T x + h_t^T x + c_t`` on ``state[site]``.

    Parameters: ``L`` ``(T, d, d)`` (its lower triangle is used), ``h`` ``(T, d)``, ``c``
    ``(T,)`` for ``t = 0..T-1`` (``psi_T = 1`` is fixed by the filter; the constants ``c_t``
    do not change SMC, but a classifier's logit, SIXO's, needs them), initialised to
    ``L_t = init_scale * I``, ``h_t = 0``, ``c_t = 0`` (``L = 0`` would be a saddle of every
    loss, since ``J = L L^T`` has zero gradient there).  The optimal twist of a
    linear-Gaussian state-space model, ``log p(y_{t+1:T} | x_t)``, is of this form;
    :meth:`from_information` sets it from the backward information filter's ``J_t``, ``h_t``,
    ``c_t``.  Called as ``twist(t, state) -> (N,)`` with ``state[site]`` of shape ``(N, d)``
    (or ``(N,)`` when ``d = 1``).
    """

    def __init__(self, site: str, dim: int, num_steps: int, init_scale: float = 0.1):
        super().__init__()
        self.site = site
        self.dim = check_positive_int("dim", dim)
        self.num_steps = check_positive_int("num_steps", num_steps)
        eye = torch.eye(self.dim)
        self.L = torch.nn.Parameter(float(init_scale) * eye.expand(self.num_steps, self.dim, self.dim).clone())
        self.h = torch.nn.Parameter(torch.zeros(self.num_steps, self.dim))
        self.c = torch.nn.Parameter(torch.zeros(self.num_steps))

    @torch.no_grad()
    def from_information(self, J: Any, h: Any, c: Any = None, jitter: float = 1e-10) -> QuadraticTwist:
        """Set ``L_t L_t^T = J_t``, ``h_t``, ``c_t`` (``J`` ``(T, d, d)`` PSD, ``h`` ``(T, d)``, ``c`` ``(T,)``
        or ``None`` for 0; a tiny ``jitter`` for singular ``J``); returns ``self``."""
        J = torch.as_tensor(np.asarray(J) if not isinstance(J, torch.Tensor) else J).to(self.L)
        h = torch.as_tensor(np.asarray(h) if not isinstance(h, torch.Tensor) else h).to(self.h)
        expected = (self.num_steps, self.dim, self.dim)
        if tuple(J.shape) != expected or tuple(h.shape) != expected[:2]:
            raise ValueError(
                f"J, h: expected shapes {expected} and {expected[:2]}, got {tuple(J.shape)}, {tuple(h.shape)}"
            )
        eye = torch.eye(self.dim, dtype=J.dtype, device=J.device)
        self.L.copy_(torch.linalg.cholesky(J + jitter * eye))
        self.h.copy_(h)
        self.c.copy_(torch.zeros_like(self.c) if c is None else torch.as_tensor(np.asarray(c)).to(self.c))
        return self

    def forward(self, t: int, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = state.get(self.site)
        check_twist_state(self.site, self.dim, state.keys(), None if x is None else tuple(x.shape[1:]))
        x = x.reshape(x.shape[0], self.dim).to(self.L.dtype)
        index = min(max(int(t), 0), self.num_steps - 1)
        L = torch.tril(self.L[index])
        return -0.5 * (x @ L).square().sum(-1) + x @ self.h[index] + self.c[index]


class TabularTwist(torch.nn.Module):
    """Learnable token twist ``log psi_{t+1}(x_{1:t}, v) = sum_{s<t} u[s, x_{s+1}] + u[t, v] + w[t, v]``.

    Parameters ``u``, ``w``: ``(T, V)``, initialised to zero (``psi = 1``); rows are 0-based
    positions (row ``t`` belongs to the token at ``position = t``).  Exact for a Markov ``p0``
    with an additive log-potential ``sum_t g[t, x_t]``: ``u = g`` and
    ``w[t, v] = log E_{p0}[exp(sum_{s>t} g[s, x_s]) | x_t = v]``, so tests can check learned
    twists against the optimal ones.  Called as ``twist(tokens (N, T), position) -> (N, V)``.
    """

    def __init__(self, vocab_size: int, length: int):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)
        self.u = torch.nn.Parameter(torch.zeros(self.length, self.vocab_size))
        self.w = torch.nn.Parameter(torch.zeros(self.length, self.vocab_size))

    def forward(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        position = int(position)
        if not 0 <= position < self.length:
            raise ValueError(f"position: expected an int in 0..{self.length - 1}, got {position}")
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens: expected shape (N, {self.length}), got {tuple(tokens.shape)}")
        history = self.u[torch.arange(position), tokens[:, :position].long()].sum(-1)  # (N,)
        return history[:, None] + (self.u[position] + self.w[position])[None, :]
