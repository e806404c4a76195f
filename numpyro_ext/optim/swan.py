"""SWAN: SGD with gradient normalisation and whitening, a stateless optimizer, as optax transforms.

Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless
LLM Training", ICML 2025 (arXiv:2412.13148).

For a matrix leaf whose gradient ``G`` is viewed as ``m x n`` with ``m <= n`` (a
``(d0, *rest)`` leaf is flattened to ``d0 x prod(rest)`` and transposed when
``d0 > prod(rest)``), the update is the paper's Algorithm 1::

    GradNorm (Algorithm 3):      G~ = (G - g_bar 1_n^T) / (s 1_n^T),
                                 g_bar_i = mean_j G_ij,  s_i = sqrt(mean_j (G_ij - g_bar_i)^2),
    GradWhitening (Algorithm 2): U = (G~ G~^T)^{-1/2} G~,
    update:                      W <- W - learning_rate * scale * U,

with ``scale = sqrt(n)`` by default (unit root-mean-square update entries).  The inverse
square root is ``ns_steps`` coupled Newton-Schulz iterations on ``A / ||A||_F``,
``A = G~ G~^T`` (``Y_{k+1} = Y_k (3I - Z_k Y_k) / 2``, ``Z_{k+1} = (3I - Z_k Y_k) Z_k / 2``,
``Y_0 = A / ||A||_F``, ``Z_0 = I``, ``U ~= Z_K G~ / ||A||_F^{1/2}``), which converge because
every nonzero eigenvalue of ``A / ||A||_F`` lies in ``(0, 1]``; the convergence rate, the
null-space behaviour and the choice of ``ns_steps`` are documented in
:mod:`pyro_ext.optim.swan` (the torch twin; both compute the same update).

* :func:`scale_by_swan` — the matrix-only transform (optax naming: the direction ``scale * U``,
  no learning rate), stateless (``optax.EmptyState``).  Every leaf it sees must be a matrix.
* :func:`swan` — the optimizer: ``scale_by_swan`` (+ decoupled weight decay) and
  ``-learning_rate`` on matrix leaves, Adam(W) on every other leaf
  (:func:`numpyro_ext.optim.common.with_adam_fallback`).  Use it directly in
  ``numpyro.infer.SVI(model, guide, swan(1e-3), Trace_ELBO())``.

Half-precision leaves (bfloat16, float16) are normalised and whitened in float32 and cast
back.  Non-finite gradients give non-finite updates, as in optax's own transforms (the
update is jit-compiled, so it cannot raise); wrap with ``optax.apply_if_finite`` to skip
such steps.

Which parameters: SWAN's centring removes each row's mean (each column's, for a tall matrix), so a
SWAN step never moves a parameter's row (column) sums: right for a network's weights, wrong for a
guide's locations and scales. By default (``matrix_params=None``) the method takes every matrix but
a guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/swan.rst).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapters.validation import check_betas, check_non_negative, check_positive, check_positive_int
from numpyro_ext.optim.common import (
    as_matrix,
    check_learning_rate_if_number,
    compute_dtype,
    matrix_method,
    norm_floor,
    stateless_matrix_transform,
)

__all__ = ["grad_norm", "grad_whitening", "scale_by_swan", "swan", "swan_direction"]


def grad_norm(grad: jax.Array, eps: float = 1e-8) -> jax.Array:
    """GradNorm (the paper's Algorithm 3): standardise each row of an ``(m, n)`` matrix.

    Population standard deviation (``1/n``), floored at ``eps``.
    """
    centred = grad - jnp.mean(grad, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True))
    return centred / jnp.maximum(std, norm_floor(eps, grad.dtype))


def grad_whitening(grad: jax.Array, ns_steps: int = 10) -> jax.Array:
    """GradWhitening (the paper's Algorithm 2): ``(G G^T)^{-1/2} G`` for an ``(m, n)`` matrix, ``m <= n``.

    ``ns_steps`` coupled Newton-Schulz iterations; an all-zero ``G`` gives zeros.
    """
    m = grad.shape[-2]
    gram = grad @ grad.T
    c = jnp.maximum(jnp.linalg.norm(gram), jnp.finfo(grad.dtype).tiny)
    eye = jnp.eye(m, dtype=grad.dtype)

    def body(_, yz):
        y, z = yz
        t = 1.5 * eye - 0.5 * (z @ y)
        return y @ t, t @ z

    _, z = jax.lax.fori_loop(0, ns_steps, body, (gram / c, eye))
    return (z @ grad) / jnp.sqrt(c)


def swan_direction(grad: jax.Array, ns_steps: int = 10, eps: float = 1e-8, scale: float | None = None) -> jax.Array:
    """``scale * GradWhitening(GradNorm(G))`` for a leaf of any shape ``(d0, *rest)``, same shape back.

    ``scale=None`` means ``sqrt(n)``, ``n`` the longer side of the matrix view.
    """
    g = as_matrix(grad).astype(compute_dtype(grad.dtype))
    transposed = g.shape[0] > g.shape[1]
    if transposed:
        g = g.T
    u = grad_whitening(grad_norm(g, eps), ns_steps)
    u = u * (math.sqrt(g.shape[1]) if scale is None else scale)
    if transposed:
        u = u.T
    return jnp.reshape(u, grad.shape).astype(grad.dtype)


def scale_by_swan(ns_steps: int = 10, eps: float = 1e-8, scale: float | None = None) -> optax.GradientTransformation:
    """The SWAN direction ``scale * (G~ G~^T)^{-1/2} G~`` on every leaf (all must be matrices); stateless.

    :param ns_steps: Newton-Schulz iterations (Algorithm 2), an integer >= 1.
    :param eps: floor of GradNorm's row standard deviation (>= 0).
    :param scale: factor on the whitened gradient; ``None`` is ``sqrt(n)``.
    """
    ns_steps = check_positive_int("ns_steps", ns_steps)
    eps = check_non_negative("eps", eps)
    if scale is not None:
        scale = check_positive("scale", scale)

    return stateless_matrix_transform("swan", lambda g: swan_direction(g, ns_steps, eps, scale))


def swan(
    learning_rate: optax.ScalarOrSchedule,
    ns_steps: int = 10,
    scale: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """SWAN (Ma et al. 2025, Algorithm 1) on matrix leaves, Adam(W) on the others.

    :param learning_rate: a number > 0 or an optax schedule, shared by both parts.
    :param ns_steps: Newton-Schulz iterations of GradWhitening, an integer >= 1.
    :param scale: factor on the whitened update; ``None`` is ``sqrt(n)`` (unit RMS entries).
    :param b1: the Adam fallback's first-moment decay, in ``[0, 1)``.
    :param b2: the Adam fallback's second-moment decay, in ``[0, 1)``.
    :param eps: Adam's epsilon, and the floor of GradNorm's row standard deviation (>= 0).
    :param weight_decay: decoupled weight decay on every leaf (>= 0).
    :param matrix_params: which matrix leaves the method takes (the rest get AdamW): ``None`` (default)
        every matrix leaf but a guide's locations and scales (names as ``W_auto_loc``, ``auto_scale``,
        ``W_loc``: :func:`adapters.validation.is_guide_param_name`), ``"all"`` every matrix leaf, or a
        callable ``name -> bool`` on the leaf's path name (``"W"``, ``"net$params/Dense_0/kernel"``).
    """
    check_learning_rate_if_number(learning_rate)
    check_betas("(b1, b2)", (b1, b2))
    weight_decay = check_non_negative("weight_decay", weight_decay)
    direction = scale_by_swan(ns_steps, eps, scale)
    return matrix_method(
        direction, learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, matrix_params=matrix_params
    )
