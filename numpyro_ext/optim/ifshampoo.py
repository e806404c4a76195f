"""Inverse-free Shampoo (IF-Shampoo) as an optax ``GradientTransformation`` (usable in NumPyro's ``SVI``).

Lin, Dangel, Eschenhagen, Bae, Turner & Makhzani, "Can We Remove the Square-Root in Adaptive
Gradient Methods? A Second-Order Perspective", ICML 2024 (arXiv:2402.03496), with the
conventions of the authors' ``sirfshampoo`` package.  The same update, arguments and defaults as
:class:`pyro_ext.optim.IFShampooOptimizer` (see its module for the equations); this module is
pure JAX, ``jit``-able, and works on any pytree of parameters.

Every leaf of shape with non-unit sizes ``(d_1, ..., d_N)`` gets one factor per axis: dense
``d_n x d_n`` (``d_n <= max_dense_dim``) or diagonal.  For each leaf, with
``g = grad / loss_scale`` reshaped to ``(d_1, ..., d_N)``, every ``T`` steps::

    Ĝ   = sqrt(B) g ×_1 K_1^T ... ×_N K_N^T,      c_j = tr(K_j^T K_j) / d_j,
    M_n ← α2 M_n + (1 − α2) ½ [λ ∏_{j≠n} c_j K_n^T K_n + Ĝ_(n) Ĝ_(n)^T / ∏_{j≠n} d_j − I],
    K_n ← K_n − β2 / max(1, ||M_n||_F) K_n M_n,

then ``m ← α1 m + g ×_1 K_1 K_1^T ... ×_N K_N K_N^T + κ μ`` and ``μ ← μ − lr m``.
For NumPyro's summed ELBO on ``N`` data points use ``loss_scale=N`` and ``batch_size`` = the
data points per step.  In :func:`ifshampoo` a non-finite update raises ``FloatingPointError`` through a
host callback with the torch optimizer's message (:func:`adapters.validation.per_datum_loss_message`);
``scale_by_ifshampoo`` propagates it (``optax.apply_if_finite`` skips such steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adapters.configs import kronecker_shape
from adapters.validation import check_non_negative, check_positive, check_positive_int, check_unit_interval
from numpyro_ext.optim.common import check_learning_rate, compute_dtype, stop_if_not_finite

__all__ = ["IFShampooState", "ifshampoo", "kronecker_shape", "precondition", "scale_by_ifshampoo", "update_factors"]


def _mode_product(x: jax.Array, factor: jax.Array, axis: int, transpose: bool = False) -> jax.Array:
    """``x ×_axis A`` with ``A = factor`` (or its transpose); a 1-D ``factor`` is a diagonal matrix."""
    if factor.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * factor.reshape(shape)
    a = factor.T if transpose else factor
    return jnp.moveaxis(jnp.tensordot(a, jnp.moveaxis(x, axis, 0), axes=1), 0, axis)


def update_factors(
    grad: jax.Array,
    factors: Sequence[jax.Array],
    momenta: Sequence[jax.Array],
    *,
    beta2: float,
    alpha2: float,
    lam: float,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """One inverse-free update of the factors of one leaf; ``grad`` (Kronecker shape) carries ``sqrt(B)/loss_scale``."""
    dims = grad.shape
    whitened = grad
    for n, k in enumerate(factors):
        whitened = _mode_product(whitened, k, n, transpose=True)
    traces = [jnp.sum(k * k) / d for k, d in zip(factors, dims, strict=True)]
    new_factors, new_momenta = [], []
    for n, (k, m) in enumerate(zip(factors, momenta, strict=True)):
        others = [j for j in range(len(dims)) if j != n]
        other_trace = math.prod((traces[j] for j in others), start=jnp.ones((), k.dtype))
        other_dims = math.prod(dims[j] for j in others)
        unfolded = jnp.moveaxis(whitened, n, 0).reshape(dims[n], -1)
        if k.ndim == 2:
            h = (lam * other_trace) * (k.T @ k) + (unfolded @ unfolded.T) / other_dims - jnp.eye(dims[n], dtype=k.dtype)
        else:
            h = (lam * other_trace) * k * k + jnp.sum(unfolded * unfolded, axis=1) / other_dims - 1.0
        m = alpha2 * m + (0.5 * (1.0 - alpha2)) * h
        rate = beta2 / jnp.maximum(jnp.sqrt(jnp.sum(m * m)), 1.0)
        k = k - rate * (k @ m if k.ndim == 2 else k * m)
        new_factors.append(k)
        new_momenta.append(m)
    return tuple(new_factors), tuple(new_momenta)


def precondition(grad: jax.Array, factors: Sequence[jax.Array]) -> jax.Array:
    """``grad ×_1 K_1 K_1^T ... ×_N K_N K_N^T`` for a gradient of the Kronecker shape."""
    out = grad
    for n, k in enumerate(factors):
        out = _mode_product(out, k @ k.T if k.ndim == 2 else k * k, n)
    return out


class IFShampooState(NamedTuple):
    """``count``: steps taken; ``factors`` / ``factor_momenta``: per leaf (in ``jax.tree.leaves`` order) a
    tuple with one ``K_n`` / ``M_n`` per axis (2-D dense, 1-D diagonal); ``momentum``: ``m``, like the params."""

    count: jax.Array
    factors: tuple[tuple[jax.Array, ...], ...]
    factor_momenta: tuple[tuple[jax.Array, ...], ...]
    momentum: optax.Updates


def scale_by_ifshampoo(
    beta2: float = 0.01,
    alpha1: float = 0.9,
    alpha2: float = 0.5,
    lam: float = 1e-3,
    kappa: float = 0.0,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
    T: int = 1,
    max_dense_dim: int | None = 2048,
    preconditioner_dtype: Any = None,
) -> optax.GradientTransformation:
    """IF-Shampoo's direction ``m`` (times ``-learning_rate`` is the step); ``params`` are needed if ``kappa > 0``."""
    beta2 = check_unit_interval("beta2", beta2, include_one=True, include_zero=False)
    alpha1 = check_unit_interval("alpha1", alpha1)
    alpha2 = check_unit_interval("alpha2", alpha2)
    lam = check_non_negative("lam", lam)
    kappa = check_non_negative("kappa", kappa)
    root_batch = math.sqrt(check_positive("batch_size", batch_size))
    scale = check_positive("loss_scale", loss_scale)
    T = check_positive_int("T", T)
    if max_dense_dim is not None:
        max_dense_dim = check_positive_int("max_dense_dim", max_dense_dim)
    if preconditioner_dtype is not None:
        try:
            ok = jnp.issubdtype(jnp.dtype(preconditioner_dtype), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"preconditioner_dtype must be None or a floating dtype, got {preconditioner_dtype!r}")
        preconditioner_dtype = jnp.dtype(preconditioner_dtype)

    def factor_dtype(leaf):
        return compute_dtype(jnp.result_type(leaf)) if preconditioner_dtype is None else preconditioner_dtype

    def init_fn(params: optax.Params) -> IFShampooState:
        factors, momenta = [], []
        for leaf in jax.tree.leaves(params):
            dt = factor_dtype(leaf)
            fs, ms = [], []
            for d in kronecker_shape(jnp.shape(leaf)):
                dense = max_dense_dim is None or d <= max_dense_dim
                fs.append(jnp.eye(d, dtype=dt) if dense else jnp.ones(d, dt))
                ms.append(jnp.zeros((d, d) if dense else (d,), dt))
            factors.append(tuple(fs))
            momenta.append(tuple(ms))
        momentum = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), compute_dtype(jnp.result_type(p))), params)
        return IFShampooState(jnp.zeros((), jnp.int32), tuple(factors), tuple(momenta), momentum)

    def update_fn(updates, state, params=None):
        if kappa and params is None:
            raise ValueError("scale_by_ifshampoo with kappa > 0 needs params in update(updates, state, params)")
        grads, treedef = jax.tree.flatten(updates)
        bufs = treedef.flatten_up_to(state.momentum)
        ps = treedef.flatten_up_to(params) if kappa else [None] * len(grads)
        refresh = state.count % T == 0
        new_updates, factors, momenta, new_bufs = [], [], [], []
        for g, fs, ms, buf, p in zip(grads, state.factors, state.factor_momenta, bufs, ps, strict=True):
            gk = (g.astype(fs[0].dtype) / scale).reshape(kronecker_shape(g.shape))

            def refreshed(fm, gk=gk):
                return update_factors(gk * root_batch, fm[0], fm[1], beta2=beta2, alpha2=alpha2, lam=lam)

            if T == 1:
                fs, ms = refreshed((fs, ms))
            else:
                fs, ms = jax.lax.cond(refresh, refreshed, lambda fm: fm, (tuple(fs), tuple(ms)))
            direction = precondition(gk, fs).reshape(g.shape).astype(buf.dtype)
            if kappa:
                direction = direction + kappa * p.astype(buf.dtype)
            buf = alpha1 * buf + direction
            new_updates.append(buf.astype(g.dtype))
            factors.append(tuple(fs))
            momenta.append(tuple(ms))
            new_bufs.append(buf)
        state = IFShampooState(
            optax.safe_increment(state.count), tuple(factors), tuple(momenta), jax.tree.unflatten(treedef, new_bufs)
        )
        return jax.tree.unflatten(treedef, new_updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def ifshampoo(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    alpha2: float = 0.5,
    lam: float = 1e-3,
    kappa: float = 0.0,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
    T: int = 1,
    max_dense_dim: int | None = 2048,
    preconditioner_dtype: Any = None,
) -> optax.GradientTransformation:
    """Inverse-free Shampoo (Lin et al., ICML 2024; ``sirfshampoo``'s conventions).

    Args:
        learning_rate: step size :math:`\\beta_1` (> 0) or an optax schedule.
        beta2: step size of the factor update, in (0, 1].
        alpha1: momentum of the parameter step, in [0, 1).
        alpha2: Riemannian momentum of the factor update, in [0, 1).
        lam: damping :math:`\\lambda \\ge 0`.
        kappa: weight decay :math:`\\kappa \\ge 0`, added to the preconditioned gradient.
        batch_size: :math:`B` (> 0); the gradient outer product is scaled by it.
        loss_scale: gradients are divided by it first (> 0); ``N`` for NumPyro's summed ELBO.
        T: factors are updated at steps ``0, T, 2T, ...``.
        max_dense_dim: axes longer than this get diagonal factors (``None``: all dense).
        preconditioner_dtype: dtype of the factors (``None``: float32 for float16/bfloat16
            leaves, the leaf's dtype otherwise).
    """
    return optax.chain(
        scale_by_ifshampoo(
            beta2, alpha1, alpha2, lam, kappa, batch_size, loss_scale, T, max_dense_dim, preconditioner_dtype
        ),
        optax.scale_by_learning_rate(check_learning_rate(learning_rate)),
        stop_if_not_finite("IFShampoo"),
    )
