"""SinkGD: stateless gradient descent with square-root Sinkhorn multi-normalisation, as optax transforms.

Scetbon, Ma, Gong & Meeds, "Gradient Multi-Normalization for Stateless and Scalable LLM
Training" (arXiv:2502.06742).

For a matrix leaf whose gradient ``G`` is viewed as ``m x n`` (a ``(d0, *rest)`` leaf as
``d0 x prod(rest)``), SR-Sinkhorn (the paper's Algorithm 3) runs ``L = sinkhorn_steps``
rounds of::

    X <- sqrt(n) Q(X)^{-1} X,      X <- sqrt(m) X R(X)^{-1},

from ``X_0 = G`` (``Q``, ``R``: diagonal matrices of the row and column l2 norms), and
SinkGD (Algorithm 4) updates ``W <- W - learning_rate * X_L``.  The fixed point has row
norms ``sqrt(n)`` and column norms ``sqrt(m)`` (so ``||X||_F = sqrt(m n)``, unit RMS entries);
see :mod:`pyro_ext.optim.sinkgd` (the torch twin, same update) for the fixed point and the
convergence.

* :func:`scale_by_sinkgd` — the matrix-only transform (the direction ``X_L``), stateless.
* :func:`sinkgd` — ``scale_by_sinkgd`` (+ decoupled weight decay) and ``-learning_rate`` on
  matrix leaves, Adam(W) on the others; usable directly in ``numpyro.infer.SVI``.

Half-precision leaves are normalised in float32 and cast back.  Non-finite gradients give
non-finite updates (wrap with ``optax.apply_if_finite`` to skip such steps).

Which parameters: SinkGD's fixed-norm direction is tuned for a network's weights, not for a guide's
locations and scales. By default (``matrix_params=None``) the method takes every matrix but a
guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/sinkgd.rst).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapters.validation import check_betas, check_non_negative, check_positive_int
from numpyro_ext.optim.common import (
    as_matrix,
    check_learning_rate_if_number,
    compute_dtype,
    matrix_method,
    norm_floor,
    stateless_matrix_transform,
)

__all__ = ["scale_by_sinkgd", "sinkgd", "sinkgd_direction", "sr_sinkhorn"]


def sr_sinkhorn(grad: jax.Array, sinkhorn_steps: int = 5, eps: float = 1e-8) -> jax.Array:
    """SR-Sinkhorn (the paper's Algorithm 3) on an ``(m, n)`` matrix: ``sinkhorn_steps`` row-then-column rounds.

    Row and column norms are floored at ``eps`` (an all-zero row or column stays zero).
    """
    m, n = grad.shape[-2], grad.shape[-1]
    floor = norm_floor(eps, grad.dtype)

    def body(_, x):
        x = x * (math.sqrt(n) / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), floor))
        return x * (math.sqrt(m) / jnp.maximum(jnp.linalg.norm(x, axis=-2, keepdims=True), floor))

    return jax.lax.fori_loop(0, sinkhorn_steps, body, grad)


def sinkgd_direction(grad: jax.Array, sinkhorn_steps: int = 5, eps: float = 1e-8) -> jax.Array:
    """SR-Sinkhorn of a leaf of any shape ``(d0, *rest)`` viewed as ``d0 x prod(rest)``; same shape back."""
    x = sr_sinkhorn(as_matrix(grad).astype(compute_dtype(grad.dtype)), sinkhorn_steps, eps)
    return jnp.reshape(x, grad.shape).astype(grad.dtype)


def scale_by_sinkgd(sinkhorn_steps: int = 5, eps: float = 1e-8) -> optax.GradientTransformation:
    """The SR-Sinkhorn direction on every leaf (all must be matrices); stateless.

    :param sinkhorn_steps: SR-Sinkhorn rounds ``L``, an integer >= 1 (the paper uses 5).
    :param eps: floor of the row and column norms (>= 0).
    """
    sinkhorn_steps = check_positive_int("sinkhorn_steps", sinkhorn_steps)
    eps = check_non_negative("eps", eps)

    return stateless_matrix_transform("sinkgd", lambda g: sinkgd_direction(g, sinkhorn_steps, eps))


def sinkgd(
    learning_rate: optax.ScalarOrSchedule,
    sinkhorn_steps: int = 5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """SinkGD (Scetbon et al. 2025, Algorithm 4) on matrix leaves, Adam(W) on the others.

    :param learning_rate: a number > 0 or an optax schedule, shared by both parts.
    :param sinkhorn_steps: SR-Sinkhorn rounds ``L``, an integer >= 1.
    :param b1: the Adam fallback's first-moment decay, in ``[0, 1)``.
    :param b2: the Adam fallback's second-moment decay, in ``[0, 1)``.
    :param eps: Adam's epsilon, and the floor of the row and column norms (>= 0).
    :param weight_decay: decoupled weight decay on every leaf (>= 0).
    :param matrix_params: which matrix leaves the method takes (the rest get AdamW): ``None`` (default)
        every matrix leaf but a guide's locations and scales (names as ``W_auto_loc``, ``auto_scale``,
        ``W_loc``: :func:`adapters.validation.is_guide_param_name`), ``"all"`` every matrix leaf, or a
        callable ``name -> bool`` on the leaf's path name (``"W"``, ``"net$params/Dense_0/kernel"``).
    """
    check_learning_rate_if_number(learning_rate)
    check_betas("(b1, b2)", (b1, b2))
    weight_decay = check_non_negative("weight_decay", weight_decay)
    direction = scale_by_sinkgd(sinkhorn_steps, eps)
    return matrix_method(
        direction, learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, matrix_params=matrix_params
    )
