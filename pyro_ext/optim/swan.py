"""SWAN: SGD with gradient normalisation and whitening, a stateless optimizer, in torch.

Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless
LLM Training", ICML 2025 (arXiv:2412.13148).

For a matrix parameter ``W`` whose gradient ``G`` is viewed as ``m x n`` with ``m <= n``
(a ``(d0, *rest)`` tensor is flattened to ``d0 x prod(rest)`` and transposed when
``d0 > prod(rest)``), one SWAN step is the paper's Algorithm 1::

    GradNorm (Algorithm 3):      G~ = (G - g_bar 1_n^T) / (s 1_n^T),
                                 g_bar_i = mean_j G_ij,  s_i = sqrt(mean_j (G_ij - g_bar_i)^2),
    GradWhitening (Algorithm 2): U = (G~ G~^T)^{-1/2} G~,
    update:                      W <- W - lr * scale * U,

so every row of ``G~`` has zero mean and unit variance, and ``U`` (the orthogonal polar
factor of ``G~``) has orthonormal rows, ``U U^T = I_m``.  ``scale`` defaults to ``sqrt(n)``,
which gives the update the Frobenius norm of ``G~`` (``sqrt(m n)``: unit root-mean-square
entries, like Adam's first steps), so learning rates tuned for Adam are a good start.

The inverse square root is computed by ``ns_steps`` coupled Newton-Schulz iterations
(matrix multiplications only; Higham, *Functions of Matrices*, SIAM 2008, Ch. 6)::

    A = G~ G~^T,  c = ||A||_F,  Y_0 = A / c,  Z_0 = I,
    Y_{k+1} = Y_k (3I - Z_k Y_k) / 2,   Z_{k+1} = (3I - Z_k Y_k) Z_k / 2,
    U ~= Z_K G~ / sqrt(c),

``Y_k -> (A/c)^{1/2}`` and ``Z_k -> (A/c)^{-1/2}``.  The iteration converges when
``||I - A/c||_2 < 1``; dividing by ``c = ||A||_F >= lambda_max(A)`` puts every nonzero
eigenvalue of ``A / c`` in ``(0, 1]``, so it holds whenever ``G~`` has full row rank.  On
each eigenvalue ``x`` of ``A / c`` the iteration acts as the scalar map
``w -> w (3 - w)^2 / 4`` on ``w = x z^2`` (``w_0 = x``), and ``U U^T`` has eigenvalues
``w_K(x)``: a direction with ``x << 1`` gains a factor 9/4 in ``w`` per step until it is near
1, after which convergence is quadratic.  So ``ns_steps`` of about
``log(c / lambda_min) / log(9/4) + 3`` whiten fully; fewer leave the smallest singular
directions partly whitened (a smaller step along them), never unstable.  Directions in the
null space of ``G~`` (every square gradient has one: GradNorm's rows are orthogonal to
``1_n``) contribute nothing to ``U`` (their round-off grows by 3/2 per iteration, about 60x
at the default 10).  Half-precision gradients (bfloat16, float16) are
normalised and whitened in float32 and the update is cast back to the parameter's dtype.

State: none for matrix parameters (``state_dict()["state"]`` has no entry for them); 1-D and
scalar parameters take the documented Adam(W) fallback
(:func:`pyro_ext.optim.common.adam_fallback_`, two moment buffers of the parameter's size).
Non-finite gradients raise ``FloatingPointError`` naming the parameter, before any parameter
of the step is changed.

Which parameters: SWAN's centring removes each row's mean (each column's, for a tall matrix), so a
SWAN step never moves a parameter's row (column) sums: right for a network's weights, wrong for a
guide's locations and scales. By default (``matrix_params=None``) the method takes every matrix but
a guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/swan.rst).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from adapters.validation import check_positive, check_positive_int
from pyro_ext.optim.common import StatelessMatrixOptimizer, as_matrix, compute_dtype, norm_floor, pyro_optim

__all__ = ["SWAN", "SWANOptimizer", "grad_norm", "grad_whitening", "swan_direction"]


def grad_norm(grad: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """GradNorm (the paper's Algorithm 3): standardise each row of an ``(m, n)`` matrix.

    Subtracts the row mean and divides by the row standard deviation (population, ``1/n``);
    the standard deviation is floored at ``eps``.
    """
    centred = grad - grad.mean(dim=-1, keepdim=True)
    std = centred.square().mean(dim=-1, keepdim=True).sqrt()
    return centred / std.clamp_min(norm_floor(eps, grad.dtype))


def grad_whitening(grad: torch.Tensor, ns_steps: int = 10) -> torch.Tensor:
    """GradWhitening (the paper's Algorithm 2): ``(G G^T)^{-1/2} G`` for an ``(m, n)`` matrix, ``m <= n``.

    ``ns_steps`` coupled Newton-Schulz iterations on ``G G^T / ||G G^T||_F`` (see the module
    docstring for the convergence condition).  An all-zero ``G`` gives zeros.
    """
    m = grad.shape[-2]
    gram = grad @ grad.mT
    c = torch.linalg.matrix_norm(gram).clamp_min(torch.finfo(grad.dtype).tiny)
    y = gram / c
    eye = torch.eye(m, dtype=grad.dtype, device=grad.device)
    z = eye
    for _ in range(ns_steps):
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return (z @ grad) / c.sqrt()


def swan_direction(
    grad: torch.Tensor, ns_steps: int = 10, eps: float = 1e-8, scale: float | None = None
) -> torch.Tensor:
    """``scale * GradWhitening(GradNorm(G))`` for a gradient of any shape ``(d0, *rest)``, same shape back.

    The gradient is viewed as ``d0 x prod(rest)`` and transposed if needed so that ``m <= n``;
    ``scale=None`` means ``sqrt(n)`` (``n`` the longer side).  Half precision is computed in float32.
    """
    work_dtype = compute_dtype(grad.dtype)
    g = as_matrix(grad).to(work_dtype)
    transposed = g.shape[0] > g.shape[1]
    if transposed:
        g = g.mT
    n = g.shape[1]
    u = grad_whitening(grad_norm(g, eps), ns_steps)
    u = u * (math.sqrt(n) if scale is None else scale)
    if transposed:
        u = u.mT
    return u.reshape(grad.shape).to(grad.dtype)


class SWANOptimizer(StatelessMatrixOptimizer):
    """SWAN (Ma et al. 2025, Algorithm 1) as a ``torch.optim.Optimizer``; Adam(W) for 1-D and scalar parameters.

    :param params: parameters or parameter groups (``named_parameters()`` works too; names then
        appear in error messages).
    :param lr: learning rate ``eta`` (> 0).
    :param ns_steps: Newton-Schulz iterations of GradWhitening (Algorithm 2), an integer >= 1.
    :param scale: factor on the whitened update; ``None`` (default) is ``sqrt(n)``, ``n`` the
        longer side of the matrix view, which gives unit root-mean-square update entries.
    :param betas: the Adam fallback's moment decay rates, each in ``[0, 1)``.
    :param eps: Adam's epsilon for the fallback, and the floor of GradNorm's row standard
        deviation (>= 0).
    :param weight_decay: decoupled weight decay (``W <- W - lr * weight_decay * W``) on every
        parameter (>= 0).
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
        ns_steps: int = 10,
        scale: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        matrix_params: Any = None,
    ) -> None:
        defaults = dict(lr=lr, ns_steps=ns_steps, scale=scale, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults.update(matrix_params=matrix_params)
        super().__init__(params, defaults)

    def direction(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return swan_direction(grad, group["ns_steps"], group["eps"], group["scale"])

    def validate_method(self, group: dict[str, Any]) -> None:
        check_positive_int("ns_steps", group["ns_steps"])
        if group["scale"] is not None:
            check_positive("scale", group["scale"])


SWAN = pyro_optim(SWANOptimizer)
