"""Pieces every optax transform of ``numpyro_ext.optim`` shares.

* :func:`is_matrix` / :func:`matrix_labels` — which leaves of a parameter pytree the matrix
  methods act on (≥2-D with two non-trivial axes; a ``(m, *rest)`` leaf is treated as an
  ``m × prod(rest)`` matrix);
* :func:`with_adam_fallback` — ``optax.multi_transform`` that sends matrix leaves to the
  method and every other leaf (biases, scales, scalars) to Adam(W) with the same
  learning rate, the documented fallback that mirrors the torch optimizers.
Hyperparameter checks live in :mod:`adapters.validation` (``check_positive``, ``check_betas``,
``check_non_negative``), so both backends reject bad input with the same message.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapters.validation import check_positive


def is_matrix(leaf: Any) -> bool:
    shape = jnp.shape(leaf)
    return len(shape) >= 2 and shape[0] > 1 and math.prod(shape[1:]) > 1


def matrix_labels(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda leaf: "matrix" if is_matrix(leaf) else "fallback", params)


def as_matrix(leaf: jax.Array) -> jax.Array:
    return jnp.reshape(leaf, (leaf.shape[0], -1))


def with_adam_fallback(
    matrix_transform: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """``matrix_transform`` on matrix leaves, AdamW(learning_rate, b1, b2, eps, weight_decay) on the rest."""
    fallback = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.multi_transform({"matrix": matrix_transform, "fallback": fallback}, matrix_labels)


def compute_dtype(dtype: Any) -> Any:
    """float32 for float16/bfloat16 leaves (their moments, factors and work), the leaf's own dtype otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)) else dtype


def check_learning_rate(learning_rate: Any) -> optax.ScalarOrSchedule:
    """A schedule (a callable of the step count) as is; a number must be finite and > 0."""
    if callable(learning_rate):
        return learning_rate
    return check_positive("learning_rate", learning_rate)
