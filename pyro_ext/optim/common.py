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

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch

from adapters.validation import check_betas, check_non_negative, check_positive

__all__ = [
    "adam_fallback_",
    "as_matrix",
    "check_betas",
    "check_finite_grad",
    "check_lr",
    "compute_dtype",
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 parameters (their moments, factors and work), their own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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


def _param_name(group: dict[str, Any], index: int, group_index: int, param: torch.Tensor) -> str:
    names = group.get("param_names")
    if names is not None:
        return repr(names[index])
    return f"param_groups[{group_index}]['params'][{index}] (shape {tuple(param.shape)})"


def check_finite_grads(optimizer: torch.optim.Optimizer) -> None:
    """Every gradient of ``optimizer`` dense and finite, checked before any parameter changes."""
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise ValueError(f"{type(optimizer).__name__} does not support sparse gradients")
                check_finite_grad(_param_name(group, pi, gi, p), p.grad)


class StatelessMatrixOptimizer(torch.optim.Optimizer, ABC):
    """Base of the zero-state matrix methods (SWAN, SinkGD): ``W <- W - lr * direction(G)``, AdamW elsewhere.

    A subclass gives ``direction(grad, group)`` (the method's update direction for a matrix
    gradient) and ``validate_method(group)`` (its own hyperparameters); ``lr``, ``betas``,
    ``eps`` and ``weight_decay`` are checked here.  Matrix parameters never get an entry in
    ``self.state``, so ``state_dict()`` holds nothing for them.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._validate({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        super().add_param_group(param_group)

    @abstractmethod
    def direction(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The method's update direction for a matrix gradient (same shape and dtype as ``grad``)."""

    def validate_method(self, group: dict[str, Any]) -> None:
        """The subclass's own hyperparameter checks (none by default)."""

    def _validate(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        self.validate_method(group)
        if len(check_betas("betas", group["betas"])) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {group['betas']!r}")
        check_non_negative("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_finite_grads(self)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if is_matrix(p):
                    if wd:
                        p.mul_(1.0 - lr * wd)
                    p.add_(self.direction(p.grad, group), alpha=-lr)
                else:
                    adam_fallback_(
                        p, p.grad, self.state[p], lr=lr, betas=group["betas"], eps=group["eps"], weight_decay=wd
                    )
        return loss
