"""SinkGD: stateless gradient descent with square-root Sinkhorn multi-normalisation, in torch.

Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
Training" (arXiv:2502.06742).

Multi-normalised gradient descent (MNGD, the paper's Algorithm 1) looks for an update that
is normalised with respect to several norms at once, by alternating their normalisations.
SinkGD's two norms are the row-wise and column-wise l2 norms of the ``m x n`` gradient
matrix (a ``(d0, *rest)`` tensor is viewed as ``d0 x prod(rest)``).  With
``Q(X) = diag(||X_{1,:}||, ..., ||X_{m,:}||)`` and ``R(X) = diag(||X_{:,1}||, ..., ||X_{:,n}||)``,
SR-Sinkhorn (Algorithm 3) runs ``L = sinkhorn_steps`` rounds of::

    X <- sqrt(n) Q(X)^{-1} X        (every row to l2 norm sqrt(n)),
    X <- sqrt(m) X R(X)^{-1}        (every column to l2 norm sqrt(m)),

from ``X_0 = G``, and SinkGD (Algorithm 4) steps ``W <- W - lr * X_L``.  It is Sinkhorn's
matrix scaling applied to the squared entries ``X_ij^2`` (target row sums ``n``, column sums
``m``), hence "square-root Sinkhorn": the fixed point ``X* = D_1 G D_2`` (positive diagonal
``D_1, D_2``) has row norms ``sqrt(n)`` and column norms ``sqrt(m)`` at once and exists
whenever the pattern of nonzeros of ``G`` allows (always for a gradient without zero
entries); convergence is linear.  Each round ends on the column step, so after any ``L``
the column norms are exactly ``sqrt(m)`` and the row norms approach ``sqrt(n)``.  Both
constraints give ``||X||_F = sqrt(m n)``: unit root-mean-square entries, so learning rates
tuned for Adam are a good start.  Cost ``O(L m n)``; half-precision gradients (bfloat16,
float16) are normalised in float32 and the update is cast back.

State: none for matrix parameters (``state_dict()["state"]`` has no entry for them); 1-D and
scalar parameters take the documented Adam(W) fallback
(:func:`pyro_ext.optim.common.adam_fallback_`).  Non-finite gradients raise
``FloatingPointError`` naming the parameter, before any parameter of the step is changed.

Which parameters: SinkGD's fixed-norm direction is tuned for a network's weights, not for a guide's
locations and scales. By default (``matrix_params=None``) the method takes every matrix but a
guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/sinkgd.rst).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from adapters.validation import check_positive_int
from pyro_ext.optim.common import StatelessMatrixOptimizer, as_matrix, compute_dtype, norm_floor, pyro_optim

__all__ = ["SinkGD", "SinkGDOptimizer", "sinkgd_direction", "sr_sinkhorn"]


def sr_sinkhorn(grad: torch.Tensor, sinkhorn_steps: int = 5, eps: float = 1e-8) -> torch.Tensor:
    """SR-Sinkhorn (the paper's Algorithm 3) on an ``(m, n)`` matrix: ``sinkhorn_steps`` row-then-column rounds.

    Row and column norms are floored at ``eps`` (an all-zero row or column stays zero).
    """
    m, n = grad.shape[-2], grad.shape[-1]
    floor = norm_floor(eps, grad.dtype)
    x = grad
    for _ in range(sinkhorn_steps):
        x = x * (math.sqrt(n) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(floor))
        x = x * (math.sqrt(m) / torch.linalg.vector_norm(x, dim=-2, keepdim=True).clamp_min(floor))
    return x


def sinkgd_direction(grad: torch.Tensor, sinkhorn_steps: int = 5, eps: float = 1e-8) -> torch.Tensor:
    """SR-Sinkhorn of a gradient of any shape ``(d0, *rest)`` viewed as ``d0 x prod(rest)``; same shape back."""
    work_dtype = compute_dtype(grad.dtype)
    x = sr_sinkhorn(as_matrix(grad).to(work_dtype), sinkhorn_steps, eps)
    return x.reshape(grad.shape).to(grad.dtype)


class SinkGDOptimizer(StatelessMatrixOptimizer):
    """SinkGD (Scetbon et al. 2025, Algorithm 4) as a ``torch.optim.Optimizer``; Adam(W) for 1-D and scalar parameters.

    :param params: parameters or parameter groups (``named_parameters()`` works too; names then
        appear in error messages).
    :param lr: learning rate (> 0).
    :param sinkhorn_steps: SR-Sinkhorn rounds ``L`` (Algorithm 3), an integer >= 1; the paper uses 5.
    :param betas: the Adam fallback's moment decay rates, each in ``[0, 1)``.
    :param eps: Adam's epsilon for the fallback, and the floor of the row and column norms (>= 0).
    :param weight_decay: decoupled weight decay on every parameter (>= 0).
    :param matrix_params: which matrix parameters the method takes (the rest get AdamW): ``None``
        (default) every matrix but a guide's locations and scales (names as ``AutoNormal.locs.W``,
        ``W_loc``: :func:`adapters.validation.is_guide_param_name`; the name comes from
        ``named_parameters()`` or Pyro's param store, and an unnamed parameter is taken), ``"all"``
        every matrix, or a callable ``name -> bool``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        sinkhorn_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        matrix_params: Any = None,
    ) -> None:
        defaults = dict(lr=lr, sinkhorn_steps=sinkhorn_steps, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults.update(matrix_params=matrix_params)
        super().__init__(params, defaults)

    def direction(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return sinkgd_direction(grad, group["sinkhorn_steps"], group["eps"])

    def validate_method(self, group: dict[str, Any]) -> None:
        check_positive_int("sinkhorn_steps", group["sinkhorn_steps"])


SinkGD = pyro_optim(SinkGDOptimizer)
