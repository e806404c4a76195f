"""Pieces every torch optimizer of ``pyro_ext.optim`` shares.

* hyperparameter checks that name the argument (through :mod:`adapters.validation`);
* :func:`as_matrix` — the 2-D view that matrix methods act on (a ≥2-D tensor of shape
  ``(m, *rest)`` is treated as an ``m × prod(rest)`` matrix, like Muon and SWAN do);
* :func:`adam_fallback_` — the documented update for 1-D and scalar parameters: Adam(W)
  with the optimizer's own ``lr``, ``betas``, ``eps`` and ``weight_decay``.  Pyro's
  ``PyroOptim`` builds one optimizer per parameter, so every optimizer meets biases and
  scales and must do something sensible with them;
* :func:`pyro_optim` — wraps a ``torch.optim.Optimizer`` class into a ``PyroOptim``
  factory in Pyro's own style (``pyro_ext.optim.SWAN({"lr": 1e-3})``, like
  ``pyro.optim.ClippedAdam``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from adapters.validation import check_betas, check_non_negative, check_positive

__all__ = [
    "adam_fallback_",
    "as_matrix",
    "check_betas",
    "check_finite_grad",
    "check_lr",
    "check_non_negative",
    "is_matrix",
    "pyro_optim",
]


def check_lr(lr: Any) -> float:
    return check_positive("lr", lr)


def check_finite_grad(name: str, grad: torch.Tensor) -> None:
    """Non-finite gradients are an error naming the parameter (documented in each optimizer)."""
    if not bool(torch.isfinite(grad).all()):
        raise FloatingPointError(f"non-finite gradient for parameter {name}; lower the learning rate or check the loss")


def is_matrix(param: torch.Tensor) -> bool:
    """Matrix methods act on parameters with at least two non-trivial axes."""
    return param.dim() >= 2 and param.shape[0] > 1 and param[0].numel() > 1


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``(m, *rest) -> (m, prod(rest))`` view (a copy only if ``tensor`` is not contiguous)."""
    return tensor.reshape(tensor.shape[0], -1)


def adam_fallback_(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """One AdamW step on ``param`` in place; moments live in ``state`` (``exp_avg``, ``exp_avg_sq``, ``step``)."""
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    beta1, beta2 = betas
    state["step"] += 1
    step = float(state["step"])
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    state["exp_avg"].lerp_(grad, 1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias1 = 1.0 - beta1**step
    bias2 = 1.0 - beta2**step
    denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
    param.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def pyro_optim(optimizer_class: type[torch.optim.Optimizer]) -> Callable[..., Any]:
    """A ``PyroOptim`` factory for ``optimizer_class``, named and documented after it."""
    from pyro.optim import PyroOptim

    def factory(optim_args: dict[str, Any] | Callable[..., dict[str, Any]], clip_args: dict | None = None):
        return PyroOptim(optimizer_class, optim_args, clip_args)

    factory.__name__ = factory.__qualname__ = optimizer_class.__name__
    factory.__doc__ = (
        f"``pyro.optim.PyroOptim`` wrapper of :class:`{optimizer_class.__module__}.{optimizer_class.__name__}` "
        "(``optim_args`` is a dict of its keyword arguments, or a callable ``(param_name, param) -> dict``)."
    )
    return factory
