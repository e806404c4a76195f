"""Simultaneous-perturbation (SPSA) gradients of a log likelihood under common random numbers (torch).

The torch twin of :mod:`numpyro_ext.infer.abc.spsa` (same names, argument order and result; a
``torch.Generator``, ``perturbation_generator``, takes the place of JAX's ``perturbation_key``, and
``log_sl`` is batched over points, see below).  Spall, "Multivariate stochastic
approximation using a simultaneous perturbation gradient approximation" (IEEE TAC 37(3), 1992), as
used by Hamiltonian ABC (Meeds, Leenders & Welling, UAI 2015, arXiv:1503.01916): with ``R``
Rademacher directions ``Delta_r`` ``(D,)`` (entries ``+-1``, so ``1 / Delta_ri = Delta_ri``) and a
scale ``c > 0``,

    g_hat = (1/R) sum_r [f(theta + c Delta_r) - f(theta - c Delta_r)] / (2c) * Delta_r.

Both evaluations of a pair get the *same* simulation seeds (common random numbers), so the
difference measures the change of ``f`` with ``theta`` and not the simulations' noise.  At fixed
seeds, for ``f`` smooth, ``E[g_hat] = grad f + O(c^2)`` and, because ``E[Delta_ri Delta_rj] = 0``
for ``i != j`` and ``Delta_ri^2 = 1``, component ``i`` of the estimate is
``g_i + (1/R) sum_r sum_{j != i} g_j Delta_rj Delta_ri + O(c^2)``: its variance is
``sum_{j != i} g_j^2 / R`` (zero in one dimension, where SPSA is the central difference).

Batching (torch's convention, a leading dimension where NumPyro's twin vmaps): the ``2R`` perturbed
points go to ONE call ``log_sl(points (2R, D), keys) -> (2R,)``, the ``+`` sides first; a synthetic
likelihood runs its ``S`` simulations at each point in batched simulator calls and evaluates the
``2R`` likelihoods together (:meth:`pyro_ext.infer.abc.habc.HABC.log_synthetic_likelihood`).  The
directions are one ``torch.randint`` of shape ``(R, D)`` from ``perturbation_generator`` (``None``:
torch's global generator, seeded by ``pyro.set_rng_seed``).

A pair whose difference is not finite (too few finite simulations on one side, a log likelihood
of ``-inf``) is left out of the average; with no finite pair the gradient is zero and
``num_finite_pairs`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

__all__ = ["SPSAEstimate", "rademacher", "spsa_grad"]

Tensor = torch.Tensor


class SPSAEstimate(NamedTuple):
    """The outcome of :func:`spsa_grad`.

    ``value``: ``f(theta)`` estimated by the mean of the ``2 R'`` perturbed evaluations of the
    ``R'`` finite pairs (exact to ``O(c^2)``, at no extra cost; ``-inf`` with no finite pair);
    ``grad`` ``(D,)``; ``num_finite_pairs``: ``R'``; ``aux``: the sum over all ``2R`` evaluations of
    ``f``'s auxiliary output (e.g. non-finite simulation counts), ``0`` without one.
    """

    value: Tensor
    grad: Tensor
    num_finite_pairs: Tensor
    aux: Any


def rademacher(generator: torch.Generator | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``+-1`` entries with probability 1/2 each, ``like``'s dtype and device: one ``torch.randint``."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _tree_sum(aux: Any) -> Any:
    """Each leaf of ``aux`` (tensors with a leading ``(2R,)`` in nested tuples, lists, dicts) summed over it."""
    if isinstance(aux, Mapping):
        return {k: _tree_sum(v) for k, v in aux.items()}
    if isinstance(aux, tuple | list):
        return type(aux)(_tree_sum(v) for v in aux)
    return torch.as_tensor(aux).sum(0)


def spsa_grad(
    log_sl: Callable[[Tensor, Any], Any],
    theta: Tensor,
    keys: Any,
    perturbation_generator: torch.Generator | None,
    num_repeats: int,
    scale: float | Tensor,
    has_aux: bool = False,
) -> SPSAEstimate:
    """SPSA estimate of ``grad_theta log_sl(theta, keys)`` with ``keys`` held fixed (common random numbers).

    Args:
        log_sl: ``log_sl(points (n, D), keys) -> (n,)`` (or ``((n,), aux)`` with ``has_aux``, each leaf of
            ``aux`` with a leading ``(n,)``), batched over points, e.g. the synthetic log likelihood of
            ``S`` simulations at each point drawn with the seeds ``keys``; called once with ``n = 2R``.
        theta: the point ``(D,)``.
        keys: the simulations' seeds (anything ``log_sl`` takes), passed unchanged (the same for every point).
        perturbation_generator: ``torch.Generator`` of the ``R`` Rademacher directions ``(R, D)``
            (``None``: torch's global generator).
        num_repeats: ``R``, the directions averaged (``2R`` points, one call of ``log_sl``).
        scale: ``c``, the perturbation size in the units of ``theta``.
        has_aux: whether ``log_sl`` returns ``(values, aux)``; the ``aux`` are summed over the ``2R`` points.

    Returns:
        :class:`SPSAEstimate` ``(value, grad (D,), num_finite_pairs, aux)`` (no autograd graph).
    """
    with torch.no_grad():
        theta = theta.detach()
        deltas = rademacher(perturbation_generator, (num_repeats,) + tuple(theta.shape), theta)
        points = torch.cat([theta + scale * deltas, theta - scale * deltas])  # (2R, D): the pairs' two sides
        out = log_sl(points, keys)
        values, aux = out if has_aux else (out, torch.zeros(2 * num_repeats, dtype=torch.long))
        values = torch.as_tensor(values, dtype=theta.dtype, device=theta.device)
        plus, minus = values[:num_repeats], values[num_repeats:]  # (R,), (R,)
        slope = (plus - minus) / (2.0 * scale)
        finite = torch.isfinite(slope)
        count = finite.sum()
        denominator = count.clamp(min=1).to(theta.dtype)
        zero = torch.zeros((), dtype=theta.dtype, device=theta.device)
        grad = torch.where(finite[:, None], slope[:, None] * deltas, zero).sum(0) / denominator
        centre = torch.where(finite, 0.5 * (plus + minus), zero).sum() / denominator
        value = torch.where(count > 0, centre, torch.full_like(centre, -math.inf))
    return SPSAEstimate(value, grad, count, _tree_sum(aux))
