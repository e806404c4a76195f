"""Pieces every optax transform of ``numpyro_ext.optim`` shares.

* :func:`is_matrix` / :func:`matrix_labels` — which leaves of a parameter pytree the matrix
  methods act on: ≥2-D with two non-trivial axes (a ``(m, *rest)`` leaf is treated as an
  ``m × prod(rest)`` matrix) and taken by ``matrix_params``
  (:func:`adapters.validation.takes_matrix_method`, on the leaf's path name such as
  ``"W_auto_loc"`` or ``"net$params/Dense_0/kernel"``): by default a guide's locations and
  scales are not taken, since a matrix method's direction cannot reach their optimum (SWAN's
  row centring leaves every row sum where it started);
* :func:`with_adam_fallback` — ``optax.multi_transform`` that sends the taken leaves to the
  method and every other leaf (biases, guide parameters, scalars) to Adam(W) with the same
  learning rate, the documented fallback that mirrors the torch optimizers;
  :func:`matrix_method` — a method's direction, decoupled weight decay and the learning
  rate, chained, with that fallback: the full optimizer of every matrix method;
* :func:`stateless_matrix_transform` — the optax transform of a stateless direction
  (SWAN, SinkGD); :func:`require_matrices` — the check of a stateful one (RACS, Alice);
* :func:`limit_norm` — the norm-growth limiter RACS and Alice share; :func:`norm_floor` —
  the floor of a normalising denominator.
Hyperparameter checks live in :mod:`adapters.validation` (``check_positive``, ``check_betas``,
``check_non_negative``), so both backends reject bad input with the same message.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapters.validation import check_matrix_params, check_positive, per_datum_loss_message, takes_matrix_method


def is_matrix(leaf: Any) -> bool:
    shape = jnp.shape(leaf)
    return len(shape) >= 2 and shape[0] > 1 and math.prod(shape[1:]) > 1


def path_name(path: tuple[Any, ...]) -> str:
    """A pytree path as ``"site/key/..."``: NumPyro's SVI keys its params by site name, modules nest below."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def matrix_labels(params: Any, matrix_params: Any = None) -> Any:
    """``"matrix"`` for the leaves a matrix method takes (matrices ``matrix_params`` selects), else ``"fallback"``."""

    def label(path: tuple[Any, ...], leaf: Any) -> str:
        taken = is_matrix(leaf) and takes_matrix_method(path_name(path), matrix_params)
        return "matrix" if taken else "fallback"

    return jax.tree_util.tree_map_with_path(label, params)


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
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """``matrix_transform`` on the leaves :func:`matrix_labels` marks, AdamW(learning_rate, b1, b2, eps, weight_decay)
    on the rest."""
    matrix_params = check_matrix_params(matrix_params)
    fallback = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.multi_transform(
        {"matrix": matrix_transform, "fallback": fallback}, lambda params: matrix_labels(params, matrix_params)
    )


def stop_if_not_finite(method: str) -> optax.GradientTransformation:
    """The last link of a root-free optimizer: a non-finite update raises ``FloatingPointError``, saying why.

    Inside ``jit`` a host callback raises with the torch optimizers' message
    (:func:`adapters.validation.per_datum_loss_message`: pass ``loss_scale`` and ``batch_size`` when the loss
    is a sum); the error reaches the caller as JAX's runtime error carrying that message, and the step's
    new state is never returned.  The ``scale_by_*`` transforms have no such link, so
    ``optax.apply_if_finite`` can skip non-finite steps of those.
    """

    def check(ok: Any) -> None:
        if not bool(ok):
            raise FloatingPointError(per_datum_loss_message(method, "the update"))

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        leaves = jax.tree_util.tree_leaves(updates)
        if leaves:
            jax.debug.callback(check, jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])))
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def compute_dtype(dtype: Any) -> Any:
    """float32 for float16/bfloat16 leaves (their moments, factors and work), the leaf's own dtype otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)) else dtype


def check_learning_rate(learning_rate: Any) -> optax.ScalarOrSchedule:
    """A schedule (a callable of the step count) as is; a number must be finite and > 0."""
    if callable(learning_rate):
        return learning_rate
    return check_positive("learning_rate", learning_rate)


def check_learning_rate_if_number(learning_rate: Any) -> None:
    """Anything but a schedule or an array (a traced hyperparameter, e.g. under ``optax.inject_hyperparams``) must be a
    finite number > 0: a string or ``None`` is a ``ValueError`` naming ``learning_rate``."""
    traced = hasattr(learning_rate, "shape") and not isinstance(learning_rate, numbers.Number)
    if not callable(learning_rate) and not traced:
        check_positive("learning_rate", learning_rate)


def norm_floor(eps: float, dtype: Any) -> float:
    """``max(eps, tiny)``: a denominator never falls below the smallest normal number, so an all-zero row gives 0."""
    return max(eps, float(jnp.finfo(dtype).tiny))


def require_matrices(params: Any, name: str) -> None:
    """A ``ValueError`` naming the transform ``name`` if a leaf of ``params`` is not a matrix (:func:`is_matrix`)."""
    for leaf in jax.tree_util.tree_leaves(params):
        if not is_matrix(leaf):
            raise ValueError(
                f"{name} acts on matrix leaves only (shape (m, *rest) with m > 1 and prod(rest) > 1), got a leaf of "
                f"shape {jnp.shape(leaf)}; use the full optimizer, which sends other leaves to AdamW"
            )


def limit_norm(update: jax.Array, phi: jax.Array, gamma: float | None) -> tuple[jax.Array, jax.Array]:
    """Norm-growth limiter: scale ``update`` to norm at most ``gamma * phi`` (no limit while ``phi = 0``)."""
    norm = jnp.linalg.norm(update)
    if gamma is None:
        return update, norm
    tiny = jnp.finfo(norm.dtype).tiny
    eta = jnp.where(phi > 0, jnp.minimum(gamma * phi / jnp.maximum(norm, tiny), 1.0), 1.0)
    return update * eta, eta * norm


def stateless_matrix_transform(name: str, direction: Callable[[jax.Array], jax.Array]) -> optax.GradientTransformation:
    """``direction`` on every leaf (all must be matrices), no state: ``scale_by_<name>``.

    A leaf that is not a matrix raises a ``ValueError`` that points to ``<name>(...)``, the
    full optimizer that sends such leaves to Adam.
    """

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params

        def leaf(g: jax.Array) -> jax.Array:
            if not is_matrix(g):
                raise ValueError(
                    f"scale_by_{name} acts on matrices (>= 2 axes, two of length > 1), got a leaf of shape "
                    f"{jnp.shape(g)}; use {name}(...), which sends other leaves to Adam, or optax.partition"
                )
            return direction(g)

        return jax.tree_util.tree_map(leaf, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def matrix_method(
    direction: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    decay_slot: bool = False,
    matrix_params: Any = None,
) -> optax.GradientTransformation:
    """The full optimizer of a matrix method: ``direction``, decoupled weight decay, ``-learning_rate``.

    Matrix leaves get ``chain(direction, add_decayed_weights(weight_decay), scale_by_learning_rate)``
    (the decay left out when ``weight_decay`` is 0, or an ``optax.identity()`` in its place with
    ``decay_slot=True``, which keeps the state's layout the same for every ``weight_decay``);
    the other leaves (and the matrices ``matrix_params`` leaves out) AdamW with the same
    ``learning_rate`` (:func:`with_adam_fallback`).  Arguments are validated by the caller.
    """
    parts = [direction]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    elif decay_slot:
        parts.append(optax.identity())
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return with_adam_fallback(
        optax.chain(*parts),
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        matrix_params=matrix_params,
    )
