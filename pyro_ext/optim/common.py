"""Pieces every torch optimizer of ``pyro_ext.optim`` shares.

* hyperparameter checks that name the argument (through :mod:`adapters.validation`);
* :func:`as_matrix` — the 2-D view that matrix methods act on (a ≥2-D tensor of shape
  ``(m, *rest)`` is treated as an ``m × prod(rest)`` matrix, like Muon and SWAN do);
* :func:`adam_fallback_` — the documented update for 1-D and scalar parameters, and for the
  matrices ``matrix_params`` leaves out: Adam(W) with the optimizer's own ``lr``, ``betas``,
  ``eps`` and ``weight_decay``.  Pyro's ``PyroOptim`` builds one optimizer per parameter, so
  every optimizer meets biases and guide parameters and must do something sensible with them;
* :func:`takes_matrix` — whether a matrix method takes a parameter: a matrix, and
  ``matrix_params`` (:func:`adapters.validation.takes_matrix_method`) says so for its name
  (from ``named_parameters()`` or Pyro's param store, e.g. ``"AutoNormal.locs.W"``): by
  default a guide's locations and scales are left to AdamW, since a matrix method's
  direction cannot reach their optimum (SWAN's row centring never moves a row sum);
* :func:`pyro_optim` — wraps a ``torch.optim.Optimizer`` class into a ``PyroOptim``
  factory in Pyro's own style (``pyro_ext.optim.SWAN({"lr": 1e-3})``, like
  ``pyro.optim.ClippedAdam``);
* the step plumbing: :func:`closure_loss`, :func:`params_with_grad`, :func:`apply_` and
  :func:`descend_` (the parameter update), :func:`keep_state_dtypes` (``load_state_dict``
  keeps float32 state of low-precision parameters), and two bases:
  :class:`StatelessMatrixOptimizer` (SWAN, SinkGD) and :class:`MatrixMethodOptimizer`
  (RACS, Alice), each AdamW on the non-matrix parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from adapters.validation import (
    check_betas,
    check_matrix_params,
    check_non_negative,
    check_positive,
    per_datum_loss_message,
    takes_matrix_method,
)

__all__ = [
    "MatrixMethodOptimizer",
    "StatelessMatrixOptimizer",
    "adam_fallback_",
    "apply_",
    "as_matrix",
    "check_betas",
    "check_finite_grad",
    "check_finite_grads",
    "check_finite_step",
    "check_lr",
    "check_non_negative",
    "closure_loss",
    "compute_dtype",
    "descend_",
    "is_matrix",
    "keep_state_dtypes",
    "norm_floor",
    "params_with_grad",
    "pyro_optim",
    "takes_matrix",
]


def check_lr(lr: Any) -> float:
    return check_positive("lr", lr)


def check_finite_grad(name: str, grad: torch.Tensor) -> None:
    """Non-finite gradients are an error naming the parameter (documented in each optimizer)."""
    if not bool(torch.isfinite(grad).all()):
        raise FloatingPointError(f"non-finite gradient for parameter {name}; lower the learning rate or check the loss")


def check_finite_step(optimizer: torch.optim.Optimizer, what: str, tensor: torch.Tensor) -> None:
    """A root-free optimizer's check: a non-finite gradient or step raises ``FloatingPointError``, saying why."""
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(per_datum_loss_message(type(optimizer).__name__.removesuffix("Optimizer"), what))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 parameters (their moments, factors and work), their own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def is_matrix(param: torch.Tensor) -> bool:
    """Matrix methods act on parameters with at least two non-trivial axes."""
    return param.dim() >= 2 and param.shape[0] > 1 and param[0].numel() > 1


def param_name(group: dict[str, Any], index: int, param: torch.Tensor) -> str | None:
    """The parameter's name from ``named_parameters()`` (``group["param_names"]``) or Pyro's param store; else None."""
    names = group.get("param_names")
    if names is not None:
        return names[index]
    import pyro

    return pyro.get_param_store().param_name(param)


def takes_matrix(group: dict[str, Any], index: int, param: torch.Tensor) -> bool:
    """Whether the group's matrix method takes ``param``: a matrix that ``group["matrix_params"]`` selects."""
    return is_matrix(param) and takes_matrix_method(param_name(group, index, param), group["matrix_params"])


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


def norm_floor(eps: float, dtype: torch.dtype) -> float:
    """``max(eps, tiny)``: a denominator never falls below the smallest normal number, so an all-zero row gives 0."""
    return max(eps, torch.finfo(dtype).tiny)


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (``None`` without a closure): the first line of every ``step``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(optimizer: torch.optim.Optimizer) -> Iterator[tuple[int, int, dict[str, Any], torch.Tensor]]:
    """``(group_index, index, group, param)`` for every parameter of ``optimizer`` that has a gradient."""
    for group_index, group in enumerate(optimizer.param_groups):
        for index, param in enumerate(group["params"]):
            if param.grad is not None:
                yield group_index, index, group, param


def descend_(param: torch.Tensor, direction: torch.Tensor, lr: float, weight_decay: float) -> None:
    """``param <- (1 - lr * weight_decay) * param - lr * direction`` in place (the decay skipped when 0)."""
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    param.add_(direction, alpha=-lr)


def apply_(param: torch.Tensor, direction: torch.Tensor, alpha: float, decay: float = 1.0) -> None:
    """``param = decay * param + alpha * direction``, the arithmetic in ``direction``'s (compute) dtype
    (one rounding to a bfloat16 parameter per step)."""
    if direction.dtype == param.dtype:
        if decay != 1.0:
            param.mul_(decay)
        param.add_(direction, alpha=alpha)
    else:
        param.copy_(param.to(direction.dtype).mul_(decay).add_(direction, alpha=alpha))


def keep_state_dtypes(optimizer: torch.optim.Optimizer) -> None:
    """Make ``load_state_dict`` keep the saved dtypes of the state (float32 state of bfloat16 parameters).

    ``torch.optim.Optimizer.load_state_dict`` casts floating-point state to each parameter's dtype, which would
    round a low-precision parameter's float32 state; these hooks put the saved tensors back (on the
    parameter's device), so a resumed run is the uninterrupted one for every dtype.
    """
    stash: dict[str, Any] = {}

    def pre_hook(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
        stash["ids"] = [i for group in state_dict["param_groups"] for i in group["params"]]
        stash["state"] = {
            key: {name: value for name, value in entry.items() if torch.is_tensor(value)}
            for key, entry in state_dict["state"].items()
        }

    def post_hook(opt: torch.optim.Optimizer) -> None:
        params = [param for group in opt.param_groups for param in group["params"]]
        for key, param in zip(stash.pop("ids", []), params, strict=False):
            for name, value in stash["state"].get(key, {}).items():
                opt.state[param][name] = value.to(device=param.device)
        stash.clear()

    optimizer.register_load_state_dict_pre_hook(pre_hook)
    optimizer.register_load_state_dict_post_hook(post_hook)


def check_constrained_values(method: str, params: Iterable[torch.Tensor]) -> None:
    """After a root-free step: every parameter's constrained value (Pyro's param store) finite and in its support.

    A summed loss makes these methods jump so far that a finite unconstrained value maps to an invalid
    constrained one (a softplus scale of exactly 0), which would otherwise fail inside the model on the next
    step; this stops at the step that did it, with :func:`adapters.validation.per_datum_loss_message`.
    """
    import pyro

    store = pyro.get_param_store()
    constraints = store.get_state()["constraints"]
    for param in params:
        name = store.param_name(param)
        if name is None:
            continue
        value = store[name]
        if not bool(torch.isfinite(value).all()) or not bool(constraints[name].check(value).all()):
            what = f"after a step, the constrained value of {name!r}"
            raise FloatingPointError(per_datum_loss_message(method, what, "is not finite or outside its support"))


def pyro_optim(optimizer_class: type[torch.optim.Optimizer], check_constrained: bool = False) -> Callable[..., Any]:
    """A ``PyroOptim`` factory for ``optimizer_class``, named and documented after it.

    ``check_constrained`` (the root-free methods): after each step, :func:`check_constrained_values`.
    """
    from pyro.optim import PyroOptim

    method = optimizer_class.__name__.removesuffix("Optimizer")

    class CheckedPyroOptim(PyroOptim):
        def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
            params = list(params)
            super().__call__(params, *args, **kwargs)
            check_constrained_values(method, params)

    def factory(optim_args: dict[str, Any] | Callable[..., dict[str, Any]], clip_args: dict | None = None):
        return (CheckedPyroOptim if check_constrained else PyroOptim)(optimizer_class, optim_args, clip_args)

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
    ``eps``, ``weight_decay`` and ``matrix_params`` are checked here.  Matrix parameters the
    method takes never get an entry in ``self.state``, so ``state_dict()`` holds nothing for them.
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
        check_matrix_params(group["matrix_params"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        check_finite_grads(self)
        for _, index, group, p in params_with_grad(self):
            lr, wd = group["lr"], group["weight_decay"]
            if takes_matrix(group, index, p):
                descend_(p, self.direction(p.grad, group), lr, wd)
            else:
                adam_fallback_(p, p.grad, self.state[p], lr=lr, betas=group["betas"], eps=group["eps"], weight_decay=wd)
        return loss


class MatrixMethodOptimizer(torch.optim.Optimizer, ABC):
    """Base of the stateful matrix methods (RACS, Alice): ``matrix_step`` on matrices, AdamW elsewhere.

    ``step`` visits the parameters in order and checks each gradient (dense, finite: a
    ``ValueError`` / ``FloatingPointError`` naming ``method_name`` or the parameter) just before
    updating it; a parameter the method does not take (not a matrix, or left out by
    ``matrix_params``: :func:`takes_matrix`) gets AdamW with the group's ``lr``,
    ``fallback_betas``, ``eps`` and ``weight_decay``.  A subclass gives ``method_name`` and
    ``matrix_step``, and calls :func:`keep_state_dtypes` after ``super().__init__``.
    """

    method_name: str

    @abstractmethod
    def matrix_step(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], position: int
    ) -> None:
        """Update the matrix ``param`` in place; ``position`` counts every parameter before it (from 0)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        position = -1
        for group_index, group in enumerate(self.param_groups):
            for index, param in enumerate(group["params"]):
                position += 1
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise ValueError(f"{self.method_name} does not support sparse gradients")
                check_finite_grad(f"{group_index}.{index} (shape {tuple(param.shape)})", grad)
                state = self.state[param]
                if not takes_matrix(group, index, param):
                    adam_fallback_(
                        param,
                        grad,
                        state,
                        lr=group["lr"],
                        betas=group["fallback_betas"],
                        eps=group["eps"],
                        weight_decay=group["weight_decay"],
                    )
                    continue
                self.matrix_step(param, grad, state, group, position)
        return loss
