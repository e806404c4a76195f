"""Simultaneous-perturbation (SPSA) gradients of a log likelihood under common random numbers (pure JAX).

Spall, "Multivariate stochastic approximation using a simultaneous perturbation gradient
approximation" (IEEE TAC 37(3), 1992), as used by Hamiltonian ABC (Meeds, Leenders & Welling, UAI
2015, arXiv:1503.01916): with ``R`` Rademacher directions ``Delta_r`` ``(D,)`` (entries
``+-1``, so ``1 / Delta_ri = Delta_ri``) and a scale ``c > 0``,

    g_hat = (1/R) sum_r [f(theta + c Delta_r) - f(theta - c Delta_r)] / (2c) * Delta_r.

Both evaluations of a pair use the *same* simulation keys (common random numbers), so the
difference measures the change of ``f`` with ``theta`` and not the simulations' noise.  At fixed
keys, for ``f`` smooth, ``E[g_hat] = grad f + O(c^2)`` and, because ``E[Delta_ri Delta_rj] = 0``
for ``i != j`` and ``Delta_ri^2 = 1``, the estimator of component ``i`` is
``g_i + (1/R) sum_r sum_{j != i} g_j Delta_rj Delta_ri + O(c^2)``: its variance is
``sum_{j != i} g_j^2 / R`` (zero in one dimension, where SPSA is the central difference).

A pair whose difference is not finite (too few finite simulations on one side, a log likelihood
of ``-inf``) is left out of the average; with no finite pair the gradient is zero and
``num_finite_pairs`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["SPSAEstimate", "spsa_grad"]

Array = jax.Array


class SPSAEstimate(NamedTuple):
    """The outcome of :func:`spsa_grad`.

    ``value``: ``f(theta)`` estimated by the mean of the ``2 R'`` perturbed evaluations of the
    ``R'`` finite pairs (exact to ``O(c^2)``, at no extra cost; ``-inf`` with no finite pair);
    ``grad`` ``(D,)``; ``num_finite_pairs``: ``R'``; ``aux``: the sum over all ``2R`` evaluations of
    ``f``'s auxiliary output (e.g. non-finite simulation counts), ``0`` without one.
    """

    value: Array
    grad: Array
    num_finite_pairs: Array
    aux: Any


def spsa_grad(
    log_sl: Callable[[Array, Any], Any],
    theta: Array,
    keys: Any,
    perturbation_key: Array,
    num_repeats: int,
    scale: float | Array,
    has_aux: bool = False,
) -> SPSAEstimate:
    """SPSA estimate of ``grad_theta log_sl(theta, keys)`` with ``keys`` held fixed (common random numbers).

    Args:
        log_sl: ``log_sl(theta, keys) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``), e.g. the
            synthetic log likelihood of ``S`` simulations drawn with ``keys``.
        theta: the point ``(D,)``.
        keys: the simulation keys, passed unchanged to every evaluation.
        perturbation_key: PRNG key of the ``R`` Rademacher directions ``(R, D)``.
        num_repeats: ``R``, the directions averaged (``2R`` evaluations of ``log_sl``).
        scale: ``c``, the perturbation size in the units of ``theta``.
        has_aux: whether ``log_sl`` returns ``(value, aux)``; the ``aux`` are summed over evaluations.

    Returns:
        :class:`SPSAEstimate` ``(value, grad (D,), num_finite_pairs, aux)``.
    """
    deltas = jax.random.rademacher(perturbation_key, (num_repeats,) + theta.shape, dtype=theta.dtype)
    evaluate = log_sl if has_aux else (lambda t, k: (log_sl(t, k), jnp.zeros((), jnp.int32)))

    def pair(delta: Array) -> tuple[Array, Array, Any]:
        plus, aux_plus = evaluate(theta + scale * delta, keys)
        minus, aux_minus = evaluate(theta - scale * delta, keys)
        return plus, minus, jax.tree_util.tree_map(jnp.add, aux_plus, aux_minus)

    plus, minus, aux = jax.vmap(pair)(deltas)  # (R,), (R,), aux with a leading (R,)
    slope = (plus - minus) / (2.0 * scale)
    finite = jnp.isfinite(slope)
    count = jnp.sum(finite)
    denominator = jnp.maximum(count, 1).astype(theta.dtype)
    grad = jnp.sum(jnp.where(finite[:, None], slope[:, None] * deltas, 0.0), axis=0) / denominator
    centre = jnp.sum(jnp.where(finite, 0.5 * (plus + minus), 0.0)) / denominator
    value = jnp.where(count > 0, centre, -jnp.inf)
    return SPSAEstimate(value, grad, count, jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), aux))
