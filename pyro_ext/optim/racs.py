"""RACS -- row and column scaled SGD, as a ``torch.optim.Optimizer`` and a Pyro ``PyroOptim`` wrapper.

Gong, Scetbon, Ma & Meeds, "Towards Efficient Optimizer Design for LLM via Structured Fisher
Approximation with a Low-Rank Extension", 2025 (arXiv:2502.07752), Sec. 4 and Algorithm 1.

For a weight matrix ``W`` of shape ``(m, n)`` with gradient ``G`` the Fisher ``E[vec(G) vec(G)^T]``
is approximated, in Frobenius norm, by ``S ⊗ Q`` with ``S = Diag(s)`` (``n × n``, columns) and
``Q = Diag(q)`` (``m × m``, rows) positive diagonal.  Only the diagonal of the Fisher,
``E[G ∘ G]``, enters, and the optimum is the fixed point of (the paper's Eq. 16)

    s = Diag(E[G^T Q G]) / ||Q||_F^2 = (E[G∘G])^T q / ||q||^2,
    q = Diag(E[G S G^T]) / ||S||_F^2 = (E[G∘G]) s / ||s||^2,

i.e. power iteration on the non-negative matrix ``E[G∘G]``: ``q s^T`` is its best rank-1
approximation (the dominant singular triple; positive by Perron-Frobenius).  The
natural-gradient step with ``(S ⊗ Q)^{-1/2}`` is ``Q^{-1/2} G S^{-1/2}``.

One step ``t`` of :func:`racs_direction` (Algorithm 1):

1. ``num_iterations`` sweeps of Eq. 16 on the current ``A_t = G_t ∘ G_t``, started from the running
   row factor (ones at the first step), give ``(q̃_t, s̃_t)``.  Warm-starting continues the
   power iteration across steps, so under a stationary gradient the state converges to the
   fixed point of Eq. 16 even with one sweep per step;
2. EMAs ``q_t = β q_{t-1} + (1-β) q̃_t``, ``s_t = β s_{t-1} + (1-β) s̃_t`` (zero-initialised;
   divided by ``1 - β^t`` when ``bias_correction``);
3. ``Ĝ_t = Diag(q_t)^{-1/2} G_t Diag(s_t)^{-1/2}``, element-wise ``G_ij / (sqrt(q_i s_j) + eps)``;
4. norm-growth limiter (Chen et al.'s Fira): ``η_t = γ / max(||Ĝ_t||_F / φ_{t-1}, γ)`` (``η_1 = 1``),
   ``φ_t = η_t ||Ĝ_t||_F`` -- the update's norm grows by at most the factor ``γ`` per step;
5. ``W_t = W_{t-1} - lr · α · η_t · Ĝ_t`` (and decoupled weight decay ``W ← (1 - lr·λ_wd) W``).

The direction is invariant to rescaling the gradients, ``G_t → c G_t`` for all ``t`` (with
``eps = 0``): ``s̃`` absorbs ``c^2`` and ``q̃`` is unchanged, so ``Ĝ`` is the same.

State per matrix: ``q`` (``m``), ``s`` (``n``), ``φ`` and the step count -- ``m + n`` numbers plus two
scalars.  A parameter with at least two non-trivial axes ``(m, *rest)`` is treated as an
``m × prod(rest)`` matrix; 1-D and scalar parameters get AdamW with ``lr``, ``fallback_betas``,
``eps`` and ``weight_decay`` (:func:`pyro_ext.optim.common.adam_fallback_`).  float16/bfloat16
parameters are updated with float32 arithmetic and float32 state.  A non-finite gradient raises
``FloatingPointError`` naming the parameter.

Which parameters: RACS's ``alpha``-scaled, normalised step is tuned for a network's weights, not for
a guide's locations and scales. By default (``matrix_params=None``) the method takes every matrix
but a guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get
the AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/racs.rst).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from adapters.configs import check_gamma
from adapters.validation import (
    check_beta_pair,
    check_matrix_params,
    check_positive,
    check_positive_int,
    check_unit_interval,
)
from pyro_ext.optim.common import (
    MatrixMethodOptimizer,
    as_matrix,
    check_lr,
    check_non_negative,
    compute_dtype,
    descend_,
    keep_state_dtypes,
    pyro_optim,
)

__all__ = ["RACS", "RACSOptimizer", "racs_direction", "racs_fixed_point"]


def racs_fixed_point(sq_grad: torch.Tensor, q: torch.Tensor, num_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_iterations`` sweeps of Eq. 16 on ``A = sq_grad`` (``m × n``, non-negative) from the row factor ``q``.

    Each sweep is ``s = A^T q / ||q||^2`` then ``q = A s / ||s||^2``.  Returns ``(q, s)``.
    """
    tiny = torch.finfo(sq_grad.dtype).tiny
    s = sq_grad.new_zeros(sq_grad.shape[1])
    for _ in range(num_iterations):
        s = sq_grad.T @ q / (q @ q).clamp_min(tiny)
        q = sq_grad @ s / (s @ s).clamp_min(tiny)
    return q, s


def racs_direction(
    grad: torch.Tensor,
    q: torch.Tensor,
    s: torch.Tensor,
    phi: torch.Tensor,
    step: int,
    *,
    beta: float,
    alpha: float,
    gamma: float | None,
    eps: float,
    num_iterations: int,
    bias_correction: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One RACS step on an ``m × n`` gradient (Algorithm 1); pure: returns ``(direction, q, s, phi)``.

    ``q`` (``m``), ``s`` (``n``) are the raw (zero-initialised) EMAs after ``step - 1`` steps and ``phi``
    the limited norm of the previous ``Ĝ``; ``direction = α η_t Ĝ_t`` is what ``lr`` multiplies.
    """
    correction = 1.0 - beta ** (step - 1) if bias_correction and step > 1 else 1.0
    q_prev = q / correction
    # the running row factor warm-starts the power iteration; a zero one (first step, or only zero
    # gradients so far) would stay zero, so the iteration starts from ones instead
    start = torch.where((q_prev @ q_prev) > 0, q_prev, torch.ones_like(q_prev))
    q_new, s_new = racs_fixed_point(grad * grad, start, num_iterations)
    q = beta * q + (1.0 - beta) * q_new
    s = beta * s + (1.0 - beta) * s_new
    correction = 1.0 - beta**step if bias_correction else 1.0
    denom = torch.outer((q / correction).sqrt(), (s / correction).sqrt()).add_(eps)
    scaled = grad / denom
    norm = torch.linalg.vector_norm(scaled)
    if gamma is None:
        eta = torch.ones_like(norm)
    else:
        tiny = torch.finfo(norm.dtype).tiny
        limited = torch.clamp(gamma * phi / norm.clamp_min(tiny), max=1.0)
        eta = torch.where(phi > 0, limited, torch.ones_like(norm))
    return scaled * (alpha * eta), q, s, eta * norm


class RACSOptimizer(MatrixMethodOptimizer):
    """Row and column scaled SGD (Gong et al. 2025, Algorithm 1); see the module docstring for the update.

    Args:
        params: parameters or parameter groups.
        lr: learning rate ``λ`` (also the AdamW fallback's for 1-D parameters).
        beta: EMA rate ``β`` of the row/column factors ``q``, ``s``.
        alpha: scale ``α`` of the matrix update.
        gamma: norm-growth limit ``γ >= 1`` (``None``: no limiter).
        eps: added to ``sqrt(q_i s_j)`` in the denominator.
        weight_decay: decoupled weight decay ``λ_wd`` (``W ← (1 - lr λ_wd) W``).
        num_iterations: fixed-point sweeps of Eq. 16 per step (warm-started).
        bias_correction: divide the EMAs by ``1 - β^t``.
        fallback_betas: AdamW ``(β1, β2)`` for 1-D and scalar parameters.
        matrix_params: which matrix parameters the method takes (the rest get AdamW): ``None`` (default)
            every matrix but a guide's locations and scales (:func:`adapters.validation.is_guide_param_name`
            on the name from ``named_parameters()`` or Pyro's param store), ``"all"``, or a callable
            ``name -> bool``.

    State per matrix parameter (``m × n`` view): ``q`` (``m``), ``s`` (``n``), ``phi`` (0-d) and
    ``step`` (int).  Defaults ``lr = 0.02``, ``alpha = 0.05``, ``beta = 0.9``, ``gamma = 1.01``
    follow the paper's LLaMA runs.
    """

    method_name = "RACS"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        beta: float = 0.9,
        alpha: float = 0.05,
        gamma: float | None = 1.01,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        num_iterations: int = 1,
        bias_correction: bool = True,
        fallback_betas: tuple[float, float] = (0.9, 0.999),
        matrix_params: Any = None,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            beta=check_unit_interval("beta", beta),
            alpha=check_positive("alpha", alpha),
            gamma=check_gamma(gamma),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            num_iterations=check_positive_int("num_iterations", num_iterations),
            bias_correction=bool(bias_correction),
            fallback_betas=check_beta_pair("fallback_betas", fallback_betas),
            matrix_params=check_matrix_params(matrix_params),
        )
        super().__init__(params, defaults)
        keep_state_dtypes(self)

    def matrix_step(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], position: int
    ) -> None:
        dtype = compute_dtype(param.dtype)
        g = as_matrix(grad).to(dtype)
        if not state:
            state["step"] = 0
            state["q"] = g.new_zeros(g.shape[0])
            state["s"] = g.new_zeros(g.shape[1])
            state["phi"] = g.new_zeros(())
        state["step"] += 1
        direction, state["q"], state["s"], state["phi"] = racs_direction(
            g,
            state["q"],
            state["s"],
            state["phi"],
            state["step"],
            beta=group["beta"],
            alpha=group["alpha"],
            gamma=group["gamma"],
            eps=group["eps"],
            num_iterations=group["num_iterations"],
            bias_correction=group["bias_correction"],
        )
        descend_(param, direction.reshape(param.shape).to(param.dtype), group["lr"], group["weight_decay"])


RACS = pyro_optim(RACSOptimizer)
