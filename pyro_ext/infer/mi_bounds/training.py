"""Training the Pyro MI estimators: :func:`fit_critic` (one optimiser, fresh joint batches)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from adapters.validation import check_positive_int
from pyro_ext.infer.mi_bounds.checks import check_dims

__all__ = ["CriticFit", "fit_critic"]

Tensor = torch.Tensor


class CriticFit(NamedTuple):
    """``params`` (a copy of the trained ``state_dict``), ``losses`` ``(num_steps,)`` (the minimised
    loss) and ``bounds`` ``(num_steps,)`` (the in-batch bound value of each step; for MINE-AIS the
    in-batch InfoNCE value).  The estimator's modules are trained in place.

    For a dict of estimators each field is a dict with the same keys.  No ``to_arviz()``: this is
    an optimisation trace, not draws or an estimate; the estimate comes from the estimator's
    ``estimate``, an :class:`adapters.mi.BoundEstimate`, whose ``to_arviz()`` holds its terms."""

    params: Any
    losses: Any
    bounds: Any


def _make_optimizer(optimizer: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(params, lr=1e-3)
    if isinstance(optimizer, torch.optim.Optimizer):
        covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in params if id(p) not in covered]
        if missing:
            raise ValueError(
                f"optimizer must cover every parameter of the estimator, but {len(missing)} of {len(params)} "
                "parameter tensors are missing; build it on estimator.parameters() or pass a factory "
                "params -> Optimizer (e.g. functools.partial(torch.optim.Adam, lr=3e-3))"
            )
        return optimizer
    if callable(optimizer):
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}")
        return built
    raise TypeError(
        "optimizer must be None (Adam, lr=1e-3), a torch.optim.Optimizer or a factory params -> Optimizer, "
        f"got {optimizer!r}"
    )


def _check_disjoint(estimators: Mapping[str, nn.Module]) -> None:
    owner: dict[int, str] = {}
    for name, est in estimators.items():
        for param in est.parameters():
            if id(param) in owner and owner[id(param)] != name:
                raise ValueError(
                    f"estimators {owner[id(param)]!r} and {name!r} share parameters (the same critic or proposal "
                    "module): trained side by side their gradients would add up; give each its own module "
                    "(e.g. copy.deepcopy(critic))"
                )
            owner[id(param)] = name


def fit_critic(
    estimator: Any,
    sample_joint: Callable[[int], tuple[Tensor, Tensor]],
    num_steps: int,
    batch_size: int,
    optimizer: Any = None,
    generator: torch.Generator | None = None,
) -> CriticFit:
    """Train ``estimator``'s networks in place on ``num_steps`` fresh joint batches.

    ``sample_joint(batch_size) -> (x, z)`` draws ``(batch_size, dx)``, ``(batch_size, dz)`` joint
    samples (with torch's global generator: seed with ``pyro.set_rng_seed``).  ``optimizer`` is
    ``None`` (``torch.optim.Adam``, ``lr=1e-3``), a factory ``params -> torch.optim.Optimizer``
    (``functools.partial(torch.optim.Adam, lr=3e-3)``) or an optimizer already built on the
    estimator's parameters.  ``generator`` feeds the estimators' own draws (proposal noise, HMC).
    ``estimator`` is any of :class:`InfoNCE`, :class:`NWJ`, :class:`MINEDV`, :class:`BarberAgakov`,
    :class:`GIWAE`, :class:`MINEAIS` (or a module with ``loss(x, z, generator) -> (loss, bound)``),
    or a dict of them: they are then trained side by side on the same batches with one optimizer
    over all their (disjoint) parameters -- for an element-wise optimizer such as Adam exactly as
    separate runs on the same batches would be -- which is what a comparison of bounds wants.
    A non-finite loss stops training with a RuntimeError naming the step and the estimator.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    named = isinstance(estimator, Mapping)
    members = dict(estimator) if named else {"estimator": estimator}
    for member in members.values():
        if not callable(getattr(member, "loss", None)) or not isinstance(member, nn.Module):
            raise ValueError(f"estimator must be a torch.nn.Module with a loss(x, z, generator) method, got {member!r}")
    if not callable(sample_joint):
        raise ValueError(f"sample_joint must be a function batch_size -> (x, z), got {sample_joint!r}")
    _check_disjoint(members)
    seen: set[int] = set()
    params = []
    for member in members.values():
        for param in member.parameters():
            if id(param) not in seen and param.requires_grad:
                seen.add(id(param))
                params.append(param)
    opt = _make_optimizer(optimizer, params)
    losses = {name: np.empty(num_steps) for name in members}
    bounds = {name: np.empty(num_steps) for name in members}
    for module in members.values():
        module.train()
    for step in range(num_steps):
        x, z = sample_joint(batch_size)
        if not (isinstance(x, Tensor) and isinstance(z, Tensor)) or x.dim() != 2 or z.dim() != 2:
            raise ValueError(
                "sample_joint must return tensors x (batch_size, dx) and z (batch_size, dz), got "
                f"{getattr(x, 'shape', type(x).__name__)} and {getattr(z, 'shape', type(z).__name__)}"
            )
        if x.shape[0] != batch_size or z.shape[0] != batch_size:
            raise ValueError(
                f"sample_joint must return x (batch_size, dx) and z (batch_size, dz) with batch_size = {batch_size}, "
                f"got shapes {tuple(x.shape)} and {tuple(z.shape)}"
            )
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for name, member in members.items():
            if step == 0:
                check_dims(x.shape, z.shape, getattr(member, "x_dim", None), getattr(member, "z_dim", None))
            loss, bound = member.loss(x, z, generator)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(
                    f"the loss of {name!r} is {value} at step {step}: the critic overflowed; lower the learning "
                    "rate or use a bound with bounded terms (InfoNCE, GIWAE)"
                )
            losses[name][step], bounds[name][step] = value, float(bound)
            total = total + loss
        total.backward()
        opt.step()
    states = {name: {k: v.detach().clone() for k, v in member.state_dict().items()} for name, member in members.items()}
    if named:
        return CriticFit(states, losses, bounds)
    return CriticFit(states["estimator"], losses["estimator"], bounds["estimator"])
