"""RACS -- row and column scaled SGD as optax transforms (usable directly in NumPyro's ``SVI``).

Gong, Scetbon, Ma & Meeds, "Towards Efficient Optimizer Design for LLM via Structured Fisher
Approximation with a Low-Rank Extension", 2025 (arXiv:2502.07752), Sec. 4 and Algorithm 1.
The same update as :class:`pyro_ext.optim.RACSOptimizer` (see there, or ``docs/optim/racs.rst``):
for an ``m × n`` gradient ``G`` the Fisher is approximated by ``Diag(s) ⊗ Diag(q)``, the fixed point
(Eq. 16) ``s = (G∘G)^T q / ||q||^2``, ``q = (G∘G) s / ||s||^2`` is followed by ``num_iterations``
warm-started sweeps per step, ``q`` and ``s`` are EMAs with rate ``β``, and the step is
``-lr α η_t Ĝ_t`` with ``Ĝ = Diag(q)^{-1/2} G Diag(s)^{-1/2}`` and the norm-growth limiter
``η_t = γ / max(||Ĝ_t|| / φ_{t-1}, γ)``.

* :func:`scale_by_racs` -- the matrix transform (every leaf must be a matrix: ``(m, *rest)`` with
  ``m > 1`` and ``prod(rest) > 1``, treated as ``m × prod(rest)``); it returns ``α η_t Ĝ_t``.
* :func:`racs` -- the optimizer on any pytree: matrix leaves get RACS with decoupled weight decay
  and ``learning_rate`` (a number or an optax schedule), the other leaves AdamW with the same
  learning rate, ``fallback_betas``, ``eps`` and ``weight_decay``.

State per matrix leaf: ``q`` (``m``), ``s`` (``n``), ``phi`` (scalar), plus one shared step count.
float16/bfloat16 leaves are updated in float32 with float32 state.  Everything is jit-able;
non-finite gradients propagate into the parameters (as for ``optax.adam``): wrap the optimizer in
``optax.apply_if_finite`` to skip such steps.

Which parameters: RACS's ``alpha``-scaled, normalised step is tuned for a network's weights, not for
a guide's locations and scales. By default (``matrix_params=None``) the method takes every matrix
but a guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get
the AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/racs.rst).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adapters.configs import check_gamma
from adapters.validation import (
    check_beta_pair,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_unit_interval,
)
from numpyro_ext.optim.common import (
    as_matrix,
    check_learning_rate,
    compute_dtype,
    limit_norm,
    matrix_method,
    require_matrices,
)

__all__ = ["ScaleByRACSState", "limit_norm", "racs", "racs_fixed_point", "scale_by_racs"]


class ScaleByRACSState(NamedTuple):
    """``count``: steps done; ``q``, ``s``, ``phi``: pytrees like the parameters (one vector/scalar per matrix)."""

    count: jax.Array
    q: Any
    s: Any
    phi: Any


def racs_fixed_point(sq_grad: jax.Array, q: jax.Array, num_iterations: int) -> tuple[jax.Array, jax.Array]:
    """``num_iterations`` sweeps of Eq. 16 on ``A = sq_grad`` (``m × n``) from the row factor ``q``: ``(q, s)``."""
    tiny = jnp.finfo(sq_grad.dtype).tiny
    s = jnp.zeros(sq_grad.shape[1], sq_grad.dtype)
    for _ in range(num_iterations):
        s = sq_grad.T @ q / jnp.maximum(q @ q, tiny)
        q = sq_grad @ s / jnp.maximum(s @ s, tiny)
    return q, s


def racs_leaf(
    grad: jax.Array,
    q: jax.Array,
    s: jax.Array,
    phi: jax.Array,
    step: jax.Array,
    *,
    beta: float,
    alpha: float,
    gamma: float | None,
    eps: float,
    num_iterations: int,
    bias_correction: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One RACS step on an ``m × n`` gradient: ``(α η_t Ĝ_t, q, s, phi)`` (``step`` counts from 1)."""
    dtype = grad.dtype
    if bias_correction:
        previous = jnp.where(step > 1, 1.0 - beta ** (step - 1).astype(dtype), 1.0)
        current = 1.0 - beta ** step.astype(dtype)
    else:
        previous = current = 1.0
    q_prev = q / previous
    # the running row factor warm-starts the power iteration; a zero one stays zero, so start from ones
    start = jnp.where(q_prev @ q_prev > 0, q_prev, jnp.ones_like(q_prev))
    q_new, s_new = racs_fixed_point(grad * grad, start, num_iterations)
    q = beta * q + (1.0 - beta) * q_new
    s = beta * s + (1.0 - beta) * s_new
    scaled = grad / (jnp.outer(jnp.sqrt(q / current), jnp.sqrt(s / current)) + eps)
    scaled, phi = limit_norm(scaled, phi, gamma)
    return alpha * scaled, q, s, phi


def scale_by_racs(
    beta: float = 0.9,
    alpha: float = 0.05,
    gamma: float | None = 1.01,
    eps: float = 1e-8,
    num_iterations: int = 1,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """RACS's direction ``α η_t Ĝ_t`` (Algorithm 1) for a pytree whose leaves are all matrices."""
    beta = check_unit_interval("beta", beta)
    alpha = check_positive("alpha", alpha)
    gamma = check_gamma(gamma)
    eps = check_non_negative("eps", eps)
    num_iterations = check_positive_int("num_iterations", num_iterations)
    bias_correction = bool(bias_correction)

    def init_fn(params: Any) -> ScaleByRACSState:
        require_matrices(params, "scale_by_racs")

        def zeros(leaf: jax.Array, axis: int) -> jax.Array:
            return jnp.zeros(as_matrix(leaf).shape[axis], compute_dtype(leaf.dtype))

        return ScaleByRACSState(
            count=jnp.zeros((), jnp.int32),
            q=jax.tree_util.tree_map(lambda leaf: zeros(leaf, 0), params),
            s=jax.tree_util.tree_map(lambda leaf: zeros(leaf, 1), params),
            phi=jax.tree_util.tree_map(lambda leaf: jnp.zeros((), compute_dtype(leaf.dtype)), params),
        )

    def update_fn(updates: Any, state: ScaleByRACSState, params: Any = None) -> tuple[Any, ScaleByRACSState]:
        del params
        step = state.count + 1
        treedef = jax.tree_util.tree_structure(updates)
        leaves = treedef.flatten_up_to(updates)
        outs = []
        for grad, q, s, phi in zip(
            leaves,
            treedef.flatten_up_to(state.q),
            treedef.flatten_up_to(state.s),
            treedef.flatten_up_to(state.phi),
            strict=True,
        ):
            g = as_matrix(grad).astype(q.dtype)
            direction, q, s, phi = racs_leaf(
                g,
                q,
                s,
                phi,
                step,
                beta=beta,
                alpha=alpha,
                gamma=gamma,
                eps=eps,
                num_iterations=num_iterations,
                bias_correction=bias_correction,
            )
            outs.append((direction.reshape(grad.shape).astype(grad.dtype), q, s, phi))
        new = [treedef.unflatten([out[j] for out in outs]) for j in range(4)]
        return new[0], ScaleByRACSState(count=step, q=new[1], s=new[2], phi=new[3])

    return optax.GradientTransformation(init_fn, update_fn)


def racs(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    alpha: float = 0.05,
    gamma: float | None = 1.01,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    num_iterations: int = 1,
    bias_correction: bool = True,
    fallback_betas: tuple[float, float] = (0.9, 0.999),
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """RACS on matrix leaves, AdamW on the others (same learning rate); arguments as in ``RACSOptimizer``.

    ``learning_rate`` is ``λ`` (a number or an optax schedule).  Defaults follow the paper's LLaMA runs.
    ``matrix_params`` picks the matrix leaves RACS takes (default: all but a guide's locations and scales,
    which get AdamW; ``"all"``; or a callable on the leaf's path name), as in :func:`numpyro_ext.optim.swan`.
    """
    learning_rate = check_learning_rate(learning_rate)
    weight_decay = check_non_negative("weight_decay", weight_decay)
    b1, b2 = check_beta_pair("fallback_betas", fallback_betas)
    direction = scale_by_racs(beta, alpha, gamma, eps, num_iterations, bias_correction)
    return matrix_method(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        decay_slot=True,
        matrix_params=matrix_params,
    )
