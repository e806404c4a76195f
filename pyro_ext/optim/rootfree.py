"""Square-root-free RMSProp and AdamW as ``torch.optim.Optimizer`` subclasses and ``PyroOptim`` wrappers.

Lin, Dangel, Eschenhagen, Bae, Turner & Makhzani, "Can We Remove the Square-Root in Adaptive
Gradient Methods? A Second-Order Perspective", ICML 2024 (arXiv:2402.03496), Fig. 4 (diagonal
methods for a loss averaged over a mini-batch of ``B`` points) and Fig. 7 (the full root-free
RMSProp with damping, weight decay and momentum).

Both methods keep the diagonal second moment ``s`` of the gradient as a diagonal estimate of
the Fisher / Gauss-Newton matrix of the *per-data-point* loss and divide the gradient by it
**without** the square root, i.e. they take a damped diagonal natural-gradient (Newton-like)
step.  Unlike Adam, the step then scales like ``1 / gradient``, so the method is not invariant
to the scale of the loss: the gradient must be that of a loss averaged over data points,
and ``B`` multiplies the outer product (the paper's "scale-invariant" ``B g ⊙ g``, Fig. 4).
Two arguments set this up:

* ``loss_scale``: the gradient is divided by it first.  Pyro's ELBO is a *sum* over the data
  (subsampled plates are rescaled to the full data set), so for SVI on ``N`` data points set
  ``loss_scale=N``: the optimizer then works on ``-ELBO / N``, the per-datum loss the paper's
  hyperparameters refer to.
* ``batch_size`` (the paper's ``B``): the number of data points that loss averages in one
  step -- ``N`` for a full-batch ELBO, the plate's ``subsample_size`` with subsampling.

Elementwise methods: every parameter (matrices, vectors, scalars) gets the same update, so
there is no 1-D fallback.  State per parameter: ``s`` (and the momentum), one tensor of the
parameter's shape each; float16/bfloat16 parameters keep their state in float32.
A non-finite gradient or step raises ``FloatingPointError`` (before the parameter changes) with the
message of :func:`adapters.validation.per_datum_loss_message`: what to pass (``loss_scale``,
``batch_size``) when the loss is a sum, the usual cause.  The ``PyroOptim`` wrappers also check, after
each step, that every parameter's constrained value is finite and in its support (a summed loss can
push a softplus scale to exactly 0, which would fail inside the model on the next step).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

import torch

from adapters.validation import check_positive, check_unit_interval
from pyro_ext.optim.common import (
    apply_,
    check_betas,
    check_finite_step,
    check_lr,
    check_non_negative,
    closure_loss,
    compute_dtype,
    params_with_grad,
    pyro_optim,
)

__all__ = ["RootFreeAdamW", "RootFreeAdamWOptimizer", "RootFreeRMSProp", "RootFreeRMSPropOptimizer"]


def _param_name(optimizer: torch.optim.Optimizer, group_index: int, index: int) -> str:
    return f"{type(optimizer).__name__} group {group_index} parameter {index}"


class _RootFreeBase(torch.optim.Optimizer, abc.ABC):
    """The step loop and state casting shared by the root-free optimizers: moments stay in ``compute_dtype``.

    ``step`` checks each gradient (finite), divides it by ``loss_scale`` in the compute dtype,
    creates the state on first use (``step`` plus the subclass's :meth:`init_state`), counts
    the step and calls the subclass's :meth:`update`.
    """

    @abc.abstractmethod
    def init_state(self, state: dict[str, Any], p: torch.Tensor, dt: torch.dtype) -> None:
        """Add the method's buffers (of dtype ``dt``, shaped like ``p``) to a new ``state``."""

    @abc.abstractmethod
    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One step on ``p`` from the scaled gradient ``grad`` (compute dtype; may be overwritten)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for gi, pi, group, p in params_with_grad(self):
            check_finite_step(self, f"the gradient of {_param_name(self, gi, pi)}", p.grad)
            dt = compute_dtype(p.dtype)
            grad = p.grad.to(dt) / group["loss_scale"]
            state = self.state[p]
            if not state:
                state["step"] = 0
                self.init_state(state, p, dt)
            state["step"] += 1
            self.update(p, grad, state, group)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts every loaded floating tensor to the parameter's dtype; bfloat16
        # parameters keep their moments in float32, so cast those back.
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                dt = compute_dtype(p.dtype)
                for key, value in state.items():
                    state[key] = _to_dtype(value, dt)


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, list | tuple):
        return type(value)(_to_dtype(v, dtype) for v in value)
    return value


class RootFreeRMSPropOptimizer(_RootFreeBase):
    r"""Square-root-free RMSProp (Lin et al., ICML 2024, Fig. 4 right and Fig. 7).

    With :math:`\hat g = \nabla\ell / \text{loss\_scale}` (shape of the parameter ``mu``), per step

    .. math::

        s &\leftarrow (1-\beta_2)\, s + \beta_2\, B\, \hat g \odot \hat g, \qquad s_0 = 1, \\
        u &= \hat g \oslash (s + \lambda) + \kappa\, \mu, \\
        m &\leftarrow \alpha_1 m + u, \qquad \mu \leftarrow \mu - \text{lr}\; m .

    ``s`` estimates the diagonal of the per-datum Fisher (for a Gaussian likelihood, the
    Hessian), so ``u`` is a damped diagonal Newton / natural-gradient direction.

    Args:
        params: parameters or parameter groups.
        lr: step size :math:`\beta_1` of the paper (> 0).
        beta2: weight of the new outer product in the second-moment average, in (0, 1]
            (``1 - alpha`` of ``torch.optim.RMSprop``).
        alpha1: momentum :math:`\alpha_1` in [0, 1) (heavy ball without dampening).
        lam: damping :math:`\lambda \ge 0` added to ``s``.
        kappa: weight decay :math:`\kappa \ge 0`, added to the preconditioned direction (Fig. 7).
        batch_size: :math:`B`, the number of data points the (scaled) loss averages (> 0).
        loss_scale: the gradient is divided by it before anything else (> 0); ``N`` data
            points for Pyro's summed ELBO.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        beta2: float = 0.01,
        alpha1: float = 0.9,
        lam: float = 1e-3,
        kappa: float = 0.0,
        batch_size: float = 1.0,
        loss_scale: float = 1.0,
    ) -> None:
        defaults = dict(
            lr=lr, beta2=beta2, alpha1=alpha1, lam=lam, kappa=kappa, batch_size=batch_size, loss_scale=loss_scale
        )
        _check_rmsprop_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_rmsprop_group(group)

    def init_state(self, state: dict[str, Any], p: torch.Tensor, dt: torch.dtype) -> None:
        # the paper initialises s at 1 (Fig. 4); RMSProp's 0 would make the first step g / lam
        state["square_avg"] = torch.ones_like(p, dtype=dt, memory_format=torch.preserve_format)
        state["momentum_buffer"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, beta2, alpha1 = group["lr"], group["beta2"], group["alpha1"]
        lam, kappa, batch = group["lam"], group["kappa"], group["batch_size"]
        s = state["square_avg"]
        s.mul_(1.0 - beta2).addcmul_(grad, grad, value=beta2 * batch)
        direction = grad.div_(s + lam)
        if kappa:
            direction.add_(p.to(grad.dtype), alpha=kappa)
        buf = state["momentum_buffer"]
        buf.mul_(alpha1).add_(direction)
        check_finite_step(self, f"the step at iteration {state['step']}", buf)
        apply_(p, buf, -lr)


class RootFreeAdamWOptimizer(_RootFreeBase):
    r"""Square-root-free AdamW: Adam's two moments, the second one used without the square root.

    The diagonal method of Lin et al. (ICML 2024, Fig. 4) with Adam's gradient average in place
    of RMSProp's momentum and AdamW's decoupled weight decay (the authors' ``rfadamw``).  With
    :math:`\hat g = \nabla\ell / \text{loss\_scale}`:

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1)\,\hat g, \qquad m_0 = 0,\\
        v &\leftarrow \beta_2 v + (1-\beta_2)\, B\,\hat g \odot \hat g, \qquad v_0 = 1,\\
        \mu &\leftarrow (1 - \text{lr}\,w)\,\mu - \text{lr}\; \frac{m / c_t}{v + \lambda},

    with :math:`c_t = 1 - \beta_1^t` when ``bias_correction`` is on, else 1.  ``v`` starts at
    the paper's 1, not at 0, so it is never bias-corrected.  ``rootfree_adam`` (optax) is this
    method with ``weight_decay=0``.

    Args:
        params: parameters or parameter groups.
        lr: step size (> 0).
        betas: ``(beta1, beta2)``, each in [0, 1): decay rates of the two moving averages.
        damping: :math:`\lambda \ge 0` added to ``v`` (replaces Adam's ``eps``; no root).
        weight_decay: decoupled weight decay :math:`w \ge 0` (AdamW).
        batch_size: :math:`B` (> 0), see the module docstring.
        loss_scale: the gradient is divided by it first (> 0); ``N`` for Pyro's summed ELBO.
        bias_correction: divide ``m`` by :math:`1-\beta_1^t` (off by default, as in the
            authors' code).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        damping: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: float = 1.0,
        loss_scale: float = 1.0,
        bias_correction: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            damping=damping,
            weight_decay=weight_decay,
            batch_size=batch_size,
            loss_scale=loss_scale,
            bias_correction=bias_correction,
        )
        _check_adamw_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_adamw_group(group)

    def init_state(self, state: dict[str, Any], p: torch.Tensor, dt: torch.dtype) -> None:
        state["exp_avg"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.ones_like(p, dtype=dt, memory_format=torch.preserve_format)

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, (beta1, beta2), damping = group["lr"], group["betas"], group["damping"]
        wd, batch = group["weight_decay"], group["batch_size"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=(1.0 - beta2) * batch)
        step_size = lr / (1.0 - beta1 ** state["step"]) if group["bias_correction"] else lr
        direction = m / (v + damping)
        check_finite_step(self, f"the step at iteration {state['step']}", direction)
        apply_(p, direction, -step_size, decay=1.0 - lr * wd)


def _check_common(group: dict[str, Any]) -> None:
    check_lr(group["lr"])
    check_positive("batch_size", group["batch_size"])
    check_positive("loss_scale", group["loss_scale"])


def _check_rmsprop_group(group: dict[str, Any]) -> None:
    _check_common(group)
    check_unit_interval("beta2", group["beta2"], include_one=True, include_zero=False)
    check_unit_interval("alpha1", group["alpha1"])
    check_non_negative("lam", group["lam"])
    check_non_negative("kappa", group["kappa"])


def _check_adamw_group(group: dict[str, Any]) -> None:
    _check_common(group)
    betas = check_betas("betas", group["betas"])
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {group['betas']!r}")
    check_non_negative("damping", group["damping"])
    check_non_negative("weight_decay", group["weight_decay"])
    if not isinstance(group["bias_correction"], bool):
        raise ValueError(f"bias_correction must be True or False, got {group['bias_correction']!r}")


RootFreeRMSProp = pyro_optim(RootFreeRMSPropOptimizer, check_constrained=True)
RootFreeAdamW = pyro_optim(RootFreeAdamWOptimizer, check_constrained=True)
