"""Alice / Alice-0 as optax transforms (usable directly in NumPyro's ``SVI``).

Gong, Scetbon, Ma & Meeds, "Towards Efficient Optimizer Design for LLM via Structured Fisher
Approximation with a Low-Rank Extension", 2025 (arXiv:2502.07752), Sec. 5: Adam in a rank-``r``
eigen-subspace of the tracked gradient covariance (tracking Eq. 17), refreshed every
``update_interval`` steps by subspace switching (Proposition 4, Algorithm 2), with the optimal
compensation of the residual outside the subspace (Theorem 5.1, Eq. 20).  The same update as
:class:`pyro_ext.optim.AliceOptimizer` (the equations, the state and the rank rules are in its module
docstring and ``docs/optim/alice.rst``); a ``(m, *rest)`` leaf is an ``m × prod(rest)`` matrix, and
one with more rows than columns is handled through its transpose, so the basis lives in
``d = min(m, n)`` dimensions.

* :func:`scale_by_alice` -- the matrix transform (every leaf must be a matrix); it returns
  ``α (U ω + α_c C)``.
* :func:`alice` -- the optimizer on any pytree: matrix leaves get Alice with decoupled weight decay
  and ``learning_rate`` (a number or an optax schedule), the other leaves AdamW with the same
  learning rate, ``fallback_betas``, ``eps`` and ``weight_decay``.

The subspace update runs under ``lax.cond`` on the step count, so the transform is jit-able and
has no Python side effects.  The complement directions are drawn with
``jax.random.fold_in(fold_in(PRNGKey(seed), leaf_index), step)``: deterministic given ``seed``
(and a different stream than the torch optimizer's, so the two backends agree exactly only where
the draw cannot matter: ``leading_basis = rank``, or the full rank).  Non-finite gradients
propagate into the parameters (as for ``optax.adam``); wrap in ``optax.apply_if_finite`` to skip them.

Which parameters: Alice's low-rank subspace is tuned for a network's weights, not for a guide's
locations and scales. By default (``matrix_params=None``) the method takes every matrix but a
guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/alice.rst).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adapters.configs import check_gamma, check_rank
from adapters.validation import (
    check_beta_pair,
    check_betas,
    check_non_negative,
    check_positive,
    check_positive_int,
    resolve_rank,
)
from numpyro_ext.optim.common import (
    as_matrix,
    check_learning_rate,
    compute_dtype,
    limit_norm,
    matrix_method,
    require_matrices,
)

__all__ = [
    "AliceLeafState",
    "ScaleByAliceState",
    "alice",
    "scale_by_alice",
    "switch_basis",
]


class AliceLeafState(NamedTuple):
    """One matrix's state (``d × k`` view, effective rank ``r``); absent parts are empty arrays.

    ``basis`` ``U`` (``d × r``), ``cov`` ``Q`` (``r × r``; empty for Alice-0), ``exp_avg`` ``m`` and
    ``exp_avg_sq`` ``v`` (``r × k``), ``comp`` ``p`` (``k``; empty when ``r = d``), ``phi`` (scalar;
    empty when ``r = d``).
    """

    basis: jax.Array
    cov: jax.Array
    exp_avg: jax.Array
    exp_avg_sq: jax.Array
    comp: jax.Array
    phi: jax.Array


class ScaleByAliceState(NamedTuple):
    """``count``: steps done; ``leaves``: one :class:`AliceLeafState` per matrix leaf, in tree-flatten order."""

    count: jax.Array
    leaves: tuple[AliceLeafState, ...]


def switch_basis(cov: jax.Array, leading_basis: int, complement: jax.Array) -> jax.Array:
    """Algorithm 2: the ``leading_basis`` top eigenvectors of ``cov`` (``d × d``) and the chosen others.

    ``complement`` indexes the remaining ``d - leading_basis`` eigenvectors in descending order of
    eigenvalue.  Returns ``U`` (``d × (leading_basis + len(complement))``) with orthonormal columns.
    """
    _, vectors = jnp.linalg.eigh(cov)
    vectors = vectors[:, ::-1]  # descending eigenvalues
    rest = vectors[:, leading_basis:][:, complement]
    return jnp.concatenate([vectors[:, :leading_basis], rest], axis=1)


def scale_by_alice(
    rank: int | None = None,
    betas: tuple[float, float, float] = (0.9, 0.9, 0.999),
    alpha: float = 0.3,
    alpha_c: float = 0.4,
    update_interval: int = 200,
    leading_basis: int | None = None,
    gamma: float | None = 1.01,
    eps: float = 1e-8,
    tracking: bool = True,
    clip_rank: bool = False,
    bias_correction: bool = True,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Alice's direction ``α (U ω + α_c C)`` for a pytree whose leaves are all matrices.

    ``rank >= min(m, n)`` for a leaf raises ``ValueError`` at ``init`` unless ``clip_rank``; ``rank=None``
    is ``max(1, min(m, n) // 4)`` for each leaf (any shape).
    """
    if rank is not None:
        rank, leading_basis = check_rank(rank, leading_basis)
    elif leading_basis is not None:
        leading_basis = check_positive_int("leading_basis", leading_basis)
    betas = check_betas("betas", betas)
    if len(betas) != 3:
        raise ValueError(f"betas must be a triple (beta1, beta2, beta3) of numbers in [0, 1), got {betas!r}")
    beta1, beta2, beta3 = betas
    alpha = check_positive("alpha", alpha)
    alpha_c = check_non_negative("alpha_c", alpha_c)
    update_interval = check_positive_int("update_interval", update_interval)
    gamma = check_gamma(gamma)
    eps = check_non_negative("eps", eps)
    tracking, clip_rank, bias_correction = bool(tracking), bool(clip_rank), bool(bias_correction)
    seed = check_positive_int("seed", seed, allow_zero=True)

    def leaf_shapes(leaf: jax.Array) -> tuple[int, int, bool, int, int]:
        m, n = as_matrix(leaf).shape
        r, lead = resolve_rank((m, n), rank, leading_basis, clip_rank)
        return min(m, n), max(m, n), m > n, r, lead

    def init_leaf(leaf: jax.Array) -> AliceLeafState:
        d, k, _, r, _ = leaf_shapes(leaf)
        dtype = compute_dtype(leaf.dtype)
        empty = jnp.zeros((0,), dtype)
        return AliceLeafState(
            basis=jnp.zeros((d, r), dtype),
            cov=jnp.zeros((r, r), dtype) if tracking else empty,
            exp_avg=jnp.zeros((r, k), dtype),
            exp_avg_sq=jnp.zeros((r, k), dtype),
            comp=jnp.zeros((k,), dtype) if r < d else empty,
            phi=jnp.zeros((), dtype) if r < d else empty,
        )

    def init_fn(params: Any) -> ScaleByAliceState:
        require_matrices(params, "scale_by_alice")
        leaves = jax.tree_util.tree_leaves(params)
        return ScaleByAliceState(count=jnp.zeros((), jnp.int32), leaves=tuple(init_leaf(leaf) for leaf in leaves))

    def update_leaf(
        grad: jax.Array, state: AliceLeafState, step: jax.Array, index: int
    ) -> tuple[jax.Array, AliceLeafState]:
        d, k, transposed, r, lead = leaf_shapes(grad)
        g = as_matrix(grad).astype(state.basis.dtype)
        if transposed:
            g = g.T
        dtype = g.dtype

        def refresh(operand: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            basis, cov, mu, nu = operand
            target = g @ g.T
            if tracking:
                target = beta3 * (basis @ cov @ basis.T) + (1.0 - beta3) * target
            if r > lead:
                key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), index), step)
                chosen = jnp.sort(jax.random.permutation(key, d - lead)[: r - lead])
            else:
                chosen = jnp.zeros((0,), jnp.int32)
            new_basis = switch_basis(target, lead, chosen)
            rotation = new_basis.T @ basis
            if tracking:
                cov = rotation @ cov @ rotation.T
            return new_basis, cov, rotation @ mu, (rotation * rotation) @ nu

        operand = (state.basis, state.cov, state.exp_avg, state.exp_avg_sq)
        basis, cov, mu, nu = jax.lax.cond((step - 1) % update_interval == 0, refresh, lambda op: op, operand)
        sigma = basis.T @ g
        if tracking:
            cov = beta3 * cov + (1.0 - beta3) * (sigma @ sigma.T)
        mu = beta1 * mu + (1.0 - beta1) * sigma
        nu = beta2 * nu + (1.0 - beta2) * sigma * sigma
        if bias_correction:
            bias1 = 1.0 - beta1 ** step.astype(dtype)
            bias2 = 1.0 - beta2 ** step.astype(dtype)
        else:
            bias1 = bias2 = 1.0
        direction = basis @ ((mu / bias1) / (jnp.sqrt(nu / bias2) + eps))
        comp, phi = state.comp, state.phi
        if r < d:
            residual = g - basis @ sigma
            comp = beta2 * comp + (1.0 - beta2) * jnp.sum(residual * residual, axis=0)
            compensation = math.sqrt(d - r) * residual / (jnp.sqrt(comp / bias2) + eps)
            compensation, phi = limit_norm(compensation, phi, gamma)
            direction = direction + alpha_c * compensation
        direction = alpha * direction
        if transposed:
            direction = direction.T
        new = AliceLeafState(basis=basis, cov=cov, exp_avg=mu, exp_avg_sq=nu, comp=comp, phi=phi)
        return direction.reshape(grad.shape).astype(grad.dtype), new

    def update_fn(updates: Any, state: ScaleByAliceState, params: Any = None) -> tuple[Any, ScaleByAliceState]:
        del params
        step = state.count + 1
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        results = [
            update_leaf(grad, leaf_state, step, i)
            for i, (grad, leaf_state) in enumerate(zip(leaves, state.leaves, strict=True))
        ]
        directions = treedef.unflatten([direction for direction, _ in results])
        return directions, ScaleByAliceState(count=step, leaves=tuple(new for _, new in results))

    return optax.GradientTransformation(init_fn, update_fn)


def alice(
    learning_rate: optax.ScalarOrSchedule,
    rank: int | None = None,
    betas: tuple[float, float, float] = (0.9, 0.9, 0.999),
    alpha: float = 0.3,
    alpha_c: float = 0.4,
    update_interval: int = 200,
    leading_basis: int | None = None,
    gamma: float | None = 1.01,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    tracking: bool = True,
    clip_rank: bool = False,
    bias_correction: bool = True,
    seed: int = 0,
    fallback_betas: tuple[float, float] = (0.9, 0.999),
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """Alice (``tracking=False``: Alice-0) on matrix leaves, AdamW on the others; arguments as in ``AliceOptimizer``.

    ``learning_rate`` is ``λ`` (a number or an optax schedule).  Defaults follow the paper's LLaMA runs.
    ``rank=None`` (default) is ``max(1, min(m, n) // 4)`` per matrix, valid for every shape.
    ``matrix_params`` picks the matrix leaves Alice takes (default: all but a guide's locations and scales,
    which get AdamW; ``"all"``; or a callable on the leaf's path name), as in :func:`numpyro_ext.optim.swan`.
    """
    learning_rate = check_learning_rate(learning_rate)
    weight_decay = check_non_negative("weight_decay", weight_decay)
    b1, b2 = check_beta_pair("fallback_betas", fallback_betas)
    direction = scale_by_alice(
        rank,
        betas,
        alpha,
        alpha_c,
        update_interval,
        leading_basis,
        gamma,
        eps,
        tracking,
        clip_rank,
        bias_correction,
        seed,
    )
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
