"""Inverse-free Shampoo (IF-Shampoo) as a ``torch.optim.Optimizer`` subclass and a ``PyroOptim`` wrapper.

Lin, Dangel, Eschenhagen, Bae, Turner & Makhzani, "Can We Remove the Square-Root in Adaptive
Gradient Methods? A Second-Order Perspective", ICML 2024 (arXiv:2402.03496): IF-Shampoo,
the matrix (Kronecker-factored, inverse-free) generalisation of root-free RMSProp.  The conventions (scalings,
order of the updates, hyperparameter names) are those of the authors' package ``sirfshampoo``
(0.0.1, dense structures), which the tests use as an oracle.

A parameter whose shape has the non-unit sizes ``(d_1, ..., d_N)`` (size-1 axes are dropped;
a scalar is a 1-vector) gets one factor ``K_n`` per axis, ``d_n x d_n`` (dense) or a
``d_n``-vector (diagonal, for ``d_n > max_dense_dim``).  The preconditioner is
``P = K_1 K_1^T ⊗ ... ⊗ K_N K_N^T``, an estimate of the inverse of the damped Kronecker-factored
second moment of ``sqrt(B) * grad`` (the per-datum Fisher, as in root-free RMSProp), kept in
factored form so that no matrix inverse, root or decomposition is ever computed.  Writing
``X ×_n A`` for the product of ``A`` with axis ``n`` of ``X``, ``g = grad / loss_scale``
reshaped to ``(d_1, ..., d_N)``, every ``T`` steps::

    Ĝ   = sqrt(B) g ×_1 K_1^T ×_2 ... ×_N K_N^T
    c_j = tr(K_j^T K_j) / d_j
    H_n = ½ [ λ (∏_{j≠n} c_j) K_n^T K_n + Ĝ_(n) Ĝ_(n)^T / ∏_{j≠n} d_j − I ]      (all n from the old K's)
    M_n ← α2 M_n + (1 − α2) H_n                                           (Riemannian momentum)
    K_n ← K_n − β2 / max(1, ||M_n||_F) · K_n M_n      (first-order truncation of K_n expm(−β2 M_n))

Since ``Ĝ_(n) = K_n^T G̃_(n)`` with ``G̃ = sqrt(B) g`` whitened by the *other* factors only,
``H_n = ½ (K_n^T A_n K_n − I)`` with the Kronecker factor
``A_n = λ ∏_{j≠n} c_j I + G̃_(n) G̃_(n)^T / ∏_{j≠n} d_j``: its fixed point ``H_n = 0`` is
``K_n K_n^T = A_n^{-1}``.  Then, every step (with the updated factors)::

    u = g ×_1 K_1 K_1^T ×_2 ... ×_N K_N K_N^T + κ μ,    m ← α1 m + u,    μ ← μ − lr m.

Diagonal factors keep only the diagonals of ``H_n`` and ``M_n`` (singd's diagonal structure).
A 1-D parameter gets a single dense factor: full-matrix root-free preconditioning of the
vector (the natural order-1 case), diagonal if longer than ``max_dense_dim``.

State per parameter: the factors and their momenta (``2 Σ_n d_n^2`` numbers, ``2 Σ_n d_n`` for
diagonal ones) and the momentum ``m`` (the parameter's size).  Factors are float32 for
float16/bfloat16 parameters unless ``preconditioner_dtype`` says otherwise.  Loss scale: as
for root-free RMSProp, the step is not invariant to the scale of the loss; for Pyro's ELBO
(a sum over ``N`` data points) use ``loss_scale=N`` and ``batch_size`` = the number of data
points per step (``N`` full batch, ``subsample_size`` with subsampling).
A non-finite gradient or step raises ``FloatingPointError`` (before the parameter changes) with the
message of :func:`adapters.validation.per_datum_loss_message`: what to pass (``loss_scale``,
``batch_size``) when the loss is a sum, the usual cause.  The ``PyroOptim`` wrappers also check, after
each step, that every parameter's constrained value is finite and in its support (a summed loss can
push a softplus scale to exactly 0, which would fail inside the model on the next step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from adapters.configs import kronecker_shape
from adapters.validation import check_positive, check_positive_int, check_unit_interval
from pyro_ext.optim.common import (
    apply_,
    check_finite_step,
    check_lr,
    check_non_negative,
    closure_loss,
    compute_dtype,
    params_with_grad,
    pyro_optim,
)

__all__ = ["IFShampoo", "IFShampooOptimizer", "kronecker_shape"]


def _mode_product(x: torch.Tensor, factor: torch.Tensor, axis: int, transpose: bool = False) -> torch.Tensor:
    """``x ×_axis A`` with ``A = factor`` (or its transpose); a 1-D ``factor`` is a diagonal matrix."""
    if factor.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * factor.reshape(shape)
    a = factor.T if transpose else factor
    return torch.tensordot(a, x.movedim(axis, 0), dims=1).movedim(0, axis)


def _unfold(x: torch.Tensor, axis: int) -> torch.Tensor:
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def update_factors_(
    grad: torch.Tensor,
    factors: list[torch.Tensor],
    momenta: list[torch.Tensor],
    *,
    beta2: float,
    alpha2: float,
    lam: float,
) -> None:
    """One inverse-free update of every factor of one parameter, in place (module docstring).

    ``grad`` has the Kronecker shape ``(d_1, ..., d_N)`` and already carries ``sqrt(B) / loss_scale``.
    """
    dims = grad.shape
    whitened = grad
    for n, k in enumerate(factors):
        whitened = _mode_product(whitened, k, n, transpose=True)
    traces = [k.square().sum() / d for k, d in zip(factors, dims, strict=True)]
    for n, (k, m) in enumerate(zip(factors, momenta, strict=True)):
        others = [j for j in range(len(dims)) if j != n]
        other_trace = math.prod((traces[j] for j in others), start=torch.ones((), dtype=k.dtype, device=k.device))
        other_dims = math.prod(dims[j] for j in others)
        unfolded = _unfold(whitened, n)
        if k.ndim == 2:
            h = (lam * other_trace) * (k.T @ k) + (unfolded @ unfolded.T) / other_dims
            h.diagonal().sub_(1.0)
        else:
            h = (lam * other_trace) * k.square() + unfolded.square().sum(1) / other_dims - 1.0
        m.mul_(alpha2).add_(h, alpha=0.5 * (1.0 - alpha2))
        rate = beta2 / torch.linalg.vector_norm(m).clamp(min=1.0)
        k.sub_((k @ m if k.ndim == 2 else k * m) * rate)


def precondition(grad: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """``grad ×_1 K_1 K_1^T ... ×_N K_N K_N^T`` for a gradient of the Kronecker shape."""
    out = grad
    for n, k in enumerate(factors):
        out = _mode_product(out, k @ k.T if k.ndim == 2 else k.square(), n)
    return out


class IFShampooOptimizer(torch.optim.Optimizer):
    r"""Inverse-free Shampoo (Lin et al., ICML 2024; the conventions of ``sirfshampoo``).

    See the module docstring for the update.  One Kronecker factor per non-unit axis of every
    parameter (any tensor order), gradient-only, no inverses or roots.

    Args:
        params: parameters or parameter groups.
        lr: step size :math:`\beta_1` (> 0).
        beta2: step size of the factor update (in (0, 1]).
        alpha1: momentum :math:`\alpha_1` of the parameter step, in [0, 1).
        alpha2: Riemannian momentum :math:`\alpha_2` of the factor update, in [0, 1).
        lam: damping :math:`\lambda \ge 0`.
        kappa: weight decay :math:`\kappa \ge 0`, added to the preconditioned gradient.
        batch_size: :math:`B` (> 0): the gradient outer product is scaled by it (the loss is
            taken to average ``B`` data points).
        loss_scale: the gradient is divided by it first (> 0); ``N`` for Pyro's summed ELBO.
        T: the factors are updated at steps ``0, T, 2T, ...`` (positive int).
        max_dense_dim: axes longer than this get a diagonal factor; ``None`` keeps every factor
            dense (``sirfshampoo``'s behaviour).  Default 2048 (a dense factor there costs
            2 x 4 M numbers and ``O(d^3)`` per update).
        preconditioner_dtype: dtype of the factors; ``None`` = float32 for float16/bfloat16
            parameters, the parameter's dtype otherwise.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        beta2: float = 0.01,
        alpha1: float = 0.9,
        alpha2: float = 0.5,
        lam: float = 1e-3,
        kappa: float = 0.0,
        batch_size: float = 1.0,
        loss_scale: float = 1.0,
        T: int = 1,
        max_dense_dim: int | None = 2048,
        preconditioner_dtype: torch.dtype | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta2=beta2,
            alpha1=alpha1,
            alpha2=alpha2,
            lam=lam,
            kappa=kappa,
            batch_size=batch_size,
            loss_scale=loss_scale,
            T=T,
            max_dense_dim=max_dense_dim,
            preconditioner_dtype=preconditioner_dtype,
        )
        _check_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group)

    def _factor_dtype(self, group: dict[str, Any], p: torch.Tensor) -> torch.dtype:
        dt = group["preconditioner_dtype"]
        return compute_dtype(p.dtype) if dt is None else dt

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        dt = self._factor_dtype(group, p)
        dense_max = group["max_dense_dim"]
        factors, momenta = [], []
        for d in kronecker_shape(p.shape):
            if dense_max is None or d <= dense_max:
                factors.append(torch.eye(d, dtype=dt, device=p.device))
                momenta.append(torch.zeros(d, d, dtype=dt, device=p.device))
            else:
                factors.append(torch.ones(d, dtype=dt, device=p.device))
                momenta.append(torch.zeros(d, dtype=dt, device=p.device))
        state["step"] = 0
        state["factors"] = factors
        state["factor_momenta"] = momenta
        state["momentum_buffer"] = torch.zeros_like(
            p, dtype=compute_dtype(p.dtype), memory_format=torch.preserve_format
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for gi, pi, group, p in params_with_grad(self):
            check_finite_step(self, f"the gradient of {type(self).__name__} group {gi} parameter {pi}", p.grad)
            state = self.state[p]
            if not state:
                self._init_state(group, p, state)
            self._step_param(group, p, state)
        return loss

    def _step_param(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        factors, momenta = state["factors"], state["factor_momenta"]
        dt = factors[0].dtype
        grad = (p.grad.to(dt) / group["loss_scale"]).reshape(kronecker_shape(p.shape))
        if state["step"] % group["T"] == 0:
            update_factors_(
                grad * math.sqrt(group["batch_size"]),
                factors,
                momenta,
                beta2=group["beta2"],
                alpha2=group["alpha2"],
                lam=group["lam"],
            )
        state["step"] += 1
        buf = state["momentum_buffer"]
        direction = precondition(grad, factors).reshape(p.shape).to(buf.dtype)
        if group["kappa"]:
            direction.add_(p.to(buf.dtype), alpha=group["kappa"])
        buf.mul_(group["alpha1"]).add_(direction)
        check_finite_step(self, f"the step at iteration {state['step']}", buf)
        apply_(p, buf, -group["lr"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts loaded floating tensors to the parameter's dtype; put factors and
        # momentum back into their own dtypes (float32 for bfloat16 parameters).
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                dt = self._factor_dtype(group, p)
                state["factors"] = [t.to(dt) for t in state["factors"]]
                state["factor_momenta"] = [t.to(dt) for t in state["factor_momenta"]]
                state["momentum_buffer"] = state["momentum_buffer"].to(compute_dtype(p.dtype))


def _check_group(group: dict[str, Any]) -> None:
    check_lr(group["lr"])
    check_unit_interval("beta2", group["beta2"], include_one=True, include_zero=False)
    check_unit_interval("alpha1", group["alpha1"])
    check_unit_interval("alpha2", group["alpha2"])
    check_non_negative("lam", group["lam"])
    check_non_negative("kappa", group["kappa"])
    check_positive("batch_size", group["batch_size"])
    check_positive("loss_scale", group["loss_scale"])
    check_positive_int("T", group["T"])
    if group["max_dense_dim"] is not None:
        check_positive_int("max_dense_dim", group["max_dense_dim"])
    dt = group["preconditioner_dtype"]
    if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise ValueError(f"preconditioner_dtype must be None or a floating torch.dtype, got {dt!r}")


IFShampoo = pyro_optim(IFShampooOptimizer, check_constrained=True)
