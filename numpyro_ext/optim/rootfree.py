"""Square-root-free RMSProp and Adam(W) as optax ``GradientTransformation``\\ s (usable in NumPyro's ``SVI``).

Lin, Dangel, Eschenhagen, Bae, Turner & Makhzani, "Can We Remove the Square-Root in Adaptive
Gradient Methods? A Second-Order Perspective", ICML 2024 (arXiv:2402.03496), Fig. 4 and Fig. 7.
The same methods, arguments and defaults as :mod:`pyro_ext.optim.rootfree` (optax spelling:
``learning_rate``, ``b1``/``b2``), and the same updates to floating-point rounding.

The second moment ``s`` of the gradient is used **without** the square root: a damped diagonal
natural-gradient / Newton-like step, which is *not* invariant to the scale of the loss.  The
gradient is first divided by ``loss_scale`` and the outer product multiplied by ``batch_size``
(the paper's ``B``).  NumPyro's ELBO is a sum over the ``N`` data points (subsampled plates are
rescaled to ``N``), so for SVI set ``loss_scale=N`` and ``batch_size`` = the number of data
points per step (``N`` full batch, ``subsample_size`` with subsampling).

Elementwise methods: every leaf gets the same update (no 1-D fallback).  Leaves in float16 or
bfloat16 keep their moments in float32.  In the full optimizers (``rootfree_rmsprop``,
``rootfree_adam(w)``) a non-finite update (the step blew up, as on a summed loss without
``loss_scale``, or a non-finite gradient) raises ``FloatingPointError`` through a host callback,
with the torch optimizers' message (:func:`adapters.validation.per_datum_loss_message`): under
``jit`` it reaches the caller as JAX's runtime error carrying that message
(:func:`numpyro_ext.optim.common.stop_if_not_finite`).  The ``scale_by_*`` transforms propagate
non-finite values as optax does; wrap them in ``optax.apply_if_finite`` to skip such steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adapters.validation import check_betas, check_non_negative, check_positive, check_unit_interval
from numpyro_ext.optim.common import check_learning_rate, compute_dtype, stop_if_not_finite

__all__ = [
    "ScaleByRootFreeAdamState",
    "ScaleByRootFreeRMSPropState",
    "rootfree_adam",
    "rootfree_adamw",
    "rootfree_rmsprop",
    "scale_by_rootfree_adam",
    "scale_by_rootfree_rmsprop",
]


def _zeros(leaf: jax.Array, fill: float = 0.0) -> jax.Array:
    return jnp.full(jnp.shape(leaf), fill, dtype=compute_dtype(jnp.result_type(leaf)))


def unzip_tree(like: Any, tree_of_tuples: Any, n: int) -> tuple[Any, ...]:
    """Split a tree (structured like ``like``) whose leaves are ``n``-tuples into ``n`` trees."""
    treedef = jax.tree.structure(like)
    columns = list(zip(*treedef.flatten_up_to(tree_of_tuples), strict=True)) or [()] * n
    return tuple(jax.tree.unflatten(treedef, list(col)) for col in columns)


class ScaleByRootFreeRMSPropState(NamedTuple):
    """``square_avg``: ``s`` (starts at 1, Fig. 4); ``momentum``: the heavy-ball buffer ``m``."""

    square_avg: optax.Updates
    momentum: optax.Updates


def scale_by_rootfree_rmsprop(
    beta2: float = 0.01,
    alpha1: float = 0.9,
    lam: float = 1e-3,
    kappa: float = 0.0,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
) -> optax.GradientTransformation:
    r"""Root-free RMSProp's direction ``m`` (Fig. 7); multiply by ``-learning_rate`` for the step.

    .. math::

        \hat g = g / \text{loss\_scale},\quad s \leftarrow (1-\beta_2) s + \beta_2 B \hat g^2,\quad
        m \leftarrow \alpha_1 m + \hat g / (s + \lambda) + \kappa\,\mu .

    ``params`` must be passed to ``update`` when ``kappa > 0``.
    """
    beta2 = check_unit_interval("beta2", beta2, include_one=True, include_zero=False)
    alpha1 = check_unit_interval("alpha1", alpha1)
    lam = check_non_negative("lam", lam)
    kappa = check_non_negative("kappa", kappa)
    batch = check_positive("batch_size", batch_size)
    scale = check_positive("loss_scale", loss_scale)

    def init_fn(params: optax.Params) -> ScaleByRootFreeRMSPropState:
        return ScaleByRootFreeRMSPropState(
            square_avg=jax.tree.map(lambda p: _zeros(p, 1.0), params), momentum=jax.tree.map(_zeros, params)
        )

    def update_fn(updates, state, params=None):
        if kappa and params is None:
            raise ValueError("scale_by_rootfree_rmsprop with kappa > 0 needs params in update(updates, state, params)")

        def leaf(g, s, m, p):
            gh = g.astype(s.dtype) / scale
            s = (1.0 - beta2) * s + (beta2 * batch) * gh * gh
            direction = gh / (s + lam)
            if kappa:
                direction = direction + kappa * p.astype(s.dtype)
            m = alpha1 * m + direction
            return m.astype(g.dtype), s, m

        ps = params if params is not None else jax.tree.map(lambda _: None, updates)
        out = jax.tree.map(leaf, updates, state.square_avg, state.momentum, ps, is_leaf=lambda x: x is None)
        new_updates, s_new, m_new = unzip_tree(updates, out, 3)
        return new_updates, ScaleByRootFreeRMSPropState(square_avg=s_new, momentum=m_new)

    return optax.GradientTransformation(init_fn, update_fn)


def rootfree_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    lam: float = 1e-3,
    kappa: float = 0.0,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
) -> optax.GradientTransformation:
    r"""Square-root-free RMSProp (Lin et al., ICML 2024, Fig. 4 right, Fig. 7): :math:`\mu \leftarrow \mu - \beta_1 m`.

    Args:
        learning_rate: step size :math:`\beta_1` (> 0) or an optax schedule.
        beta2: weight of the new outer product in the average of ``s``, in (0, 1].
        alpha1: momentum in [0, 1).
        lam: damping :math:`\lambda \ge 0`.
        kappa: weight decay :math:`\kappa \ge 0` (added before the momentum, Fig. 7).
        batch_size: :math:`B` (> 0).
        loss_scale: gradients are divided by it first (> 0); ``N`` for NumPyro's summed ELBO.
    """
    return optax.chain(
        scale_by_rootfree_rmsprop(beta2, alpha1, lam, kappa, batch_size, loss_scale),
        optax.scale_by_learning_rate(check_learning_rate(learning_rate)),
        stop_if_not_finite("RootFreeRMSProp"),
    )


class ScaleByRootFreeAdamState(NamedTuple):
    """``count``: steps taken; ``mu``: first moment (starts at 0); ``nu``: second moment (starts at 1)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_rootfree_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    damping: float = 1e-3,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
    r"""Root-free Adam's direction :math:`(m / c_t) / (v + \lambda)`, ``v`` updated with :math:`B \hat g^2`."""
    b1, b2 = check_betas("b1", (b1,))[0], check_betas("b2", (b2,))[0]
    damping = check_non_negative("damping", damping)
    batch = check_positive("batch_size", batch_size)
    scale = check_positive("loss_scale", loss_scale)
    if not isinstance(bias_correction, bool):
        raise ValueError(f"bias_correction must be True or False, got {bias_correction!r}")

    def init_fn(params: optax.Params) -> ScaleByRootFreeAdamState:
        return ScaleByRootFreeAdamState(
            count=jnp.zeros((), jnp.int32),
            mu=jax.tree.map(_zeros, params),
            nu=jax.tree.map(lambda p: _zeros(p, 1.0), params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)

        def leaf(g, m, v):
            gh = g.astype(m.dtype) / scale
            m = b1 * m + (1.0 - b1) * gh
            v = b2 * v + ((1.0 - b2) * batch) * gh * gh
            mhat = m / (1.0 - b1 ** count.astype(m.dtype)) if bias_correction else m
            return (mhat / (v + damping)).astype(g.dtype), m, v

        new_updates, mu, nu = unzip_tree(updates, jax.tree.map(leaf, updates, state.mu, state.nu), 3)
        return new_updates, ScaleByRootFreeAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def rootfree_adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    damping: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
    r"""Square-root-free AdamW: :math:`\mu \leftarrow (1-\text{lr}\,w)\mu - \text{lr}\,(m/c_t)/(v+\lambda)`.

    ``m`` and ``v`` are Adam's moving averages with decays ``b1``, ``b2`` (``v`` of :math:`B\hat g^2`,
    starting at 1, never bias-corrected); see :class:`pyro_ext.optim.RootFreeAdamWOptimizer`.

    Args:
        learning_rate: step size (> 0) or an optax schedule.
        b1, b2: decay rates in [0, 1).
        damping: :math:`\lambda \ge 0` added to ``v``.
        weight_decay: decoupled weight decay :math:`w \ge 0`.
        batch_size: :math:`B` (> 0).
        loss_scale: gradients are divided by it first (> 0); ``N`` for NumPyro's summed ELBO.
        bias_correction: divide ``m`` by :math:`1 - b_1^t`.
    """
    parts = [scale_by_rootfree_adam(b1, b2, damping, batch_size, loss_scale, bias_correction)]
    if check_non_negative("weight_decay", weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(check_learning_rate(learning_rate)))
    parts.append(stop_if_not_finite("RootFreeAdamW"))
    return optax.chain(*parts)


def rootfree_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    damping: float = 1e-3,
    batch_size: float = 1.0,
    loss_scale: float = 1.0,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
    """Square-root-free Adam: :func:`rootfree_adamw` without weight decay."""
    return rootfree_adamw(learning_rate, b1, b2, damping, 0.0, batch_size, loss_scale, bias_correction)
