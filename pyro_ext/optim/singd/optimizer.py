"""``SINGDOptimizer``: SINGD as a ``torch.optim.Optimizer`` over a model's ``nn.Linear`` and ``nn.Conv2d`` layers.

Forward and backward hooks collect each layer's statistics; :meth:`SINGDOptimizer.step` updates the factors
every ``T`` steps and moves the weights along the structured natural gradient (the package docstring has the
update); other parameters get the fallback (AdamW, SGD or nothing).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from adapters.validation import check_choice, check_positive, check_positive_int
from pyro_ext.optim.common import (
    adam_fallback_,
    check_betas,
    check_finite_grad,
    check_lr,
    check_non_negative,
    closure_loss,
)
from pyro_ext.optim.singd.factors import (
    SINGDFactors,
    init_factors,
    layer_dims,
    layer_inputs,
    layer_output_grads,
    natural_gradient,
    supports,
    update_factors,
)
from pyro_ext.optim.singd.structures import Structure, combine, get_structure

LOSS_AVERAGE = (None, "batch", "batch+sequence")
KFAC_APPROX = ("expand", "reduce")
FALLBACKS = ("adam", "sgd", None)
_FACTOR_KEYS = ("K", "C", "m_K", "m_C")


def _check_unit(name: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_structures(value: Any) -> tuple[str, str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"structures must be a pair of structure names (K, C), got {value!r}")
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"structures must be a pair of structure names (K, C), got {value!r}")
    for name in value:
        get_structure(name)
    return value


def _check_dtypes(value: Any) -> tuple[torch.dtype | None, torch.dtype | None]:
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(t is None or (isinstance(t, torch.dtype) and t.is_floating_point) for t in pair):
        raise ValueError(f"preconditioner_dtype must be a pair of floating dtypes or None, got {value!r}")
    return pair


class _Layer(NamedTuple):
    name: str
    module: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None


class SINGDOptimizer(torch.optim.Optimizer):
    r"""SINGD (Lin et al., ICML 2024, Fig. 4) for the ``nn.Linear`` and ``nn.Conv2d`` layers of a model.

    Args:
        model: an ``nn.Module`` (a ``pyro.nn.PyroModule`` network included) or an iterable of
            modules.  Its trainable parameters are optimised: those of supported layers by
            SINGD, all others (norm layers, embeddings, lone ``nn.Parameter``\ s) by ``fallback``.
        lr: β₂, the parameter learning rate.
        momentum: α₂ ∈ [0, 1), momentum on the preconditioned update.
        damping: λ ≥ 0.
        alpha1: α₁ ∈ [0, 1), Riemannian momentum of ``m_K``, ``m_C`` (0: not stored).
        weight_decay: γ ≥ 0, added to the preconditioned update (coupled, as in the paper).
        T: update the preconditioner every ``T`` steps (statistics are collected only then).
        loss_average: ``None`` (the loss is a sum over terms), ``"batch"`` (a mean over the
            batch) or ``"batch+sequence"`` (a mean over batch and shared axes).
        loss_scale: ``s`` in ``L = s · (sum or mean of per-term losses)``; for Pyro's ELBO use
            ``loss_average=None, loss_scale=N / (B · num_particles)`` (see the module docstring).
        lr_cov: β₁ > 0, or a callable ``step -> β₁``.
        structures: structure names of ``(K, C)``, see :data:`STRUCTURES`.
        kfac_approx: ``"expand"`` or ``"reduce"`` for layers with weight sharing (convolutions,
            inputs with more than two axes); Eschenhagen et al., NeurIPS 2023.
        kfac_like: the IKFAC update (α₁ is then ignored).
        normalize_lr_cov: scale β₁ down by the largest entry of the new momentum.
        preconditioner_dtype: dtypes of ``(K, m_K)`` and ``(C, m_C)``; ``None`` uses the weight's.
        fallback: ``"adam"`` (AdamW through :func:`~pyro_ext.optim.common.adam_fallback_`),
            ``"sgd"`` (the SINGD parameter update with the preconditioner set to the identity)
            or ``None`` (other parameters are left untouched, with a warning).
        fallback_lr: learning rate of the fallback (default ``lr``).
        betas, eps: Adam's moments and denominator offset, for the fallback only.

    The optimizer installs a forward hook on each supported layer; during a forward pass
    with gradients enabled at a step where ``step % T == 0`` it hooks the layer's output to
    accumulate ``H_K``, ``H_C`` during ``backward``; :meth:`step` consumes them.  Call
    :meth:`remove_hooks` to detach it from the model.

    A non-finite gradient raises ``FloatingPointError`` naming the parameter before anything
    is changed, and discards the statistics collected since the last step.  The optimizer
    does not know ``torch.amp.GradScaler``'s scale: use it without gradient scaling.
    """

    def __init__(
        self,
        model: nn.Module | Iterable[nn.Module],
        lr: float = 1e-3,
        momentum: float = 0.9,
        damping: float = 1e-3,
        alpha1: float = 0.5,
        weight_decay: float = 0.0,
        T: int = 10,
        loss_average: str | None = "batch",
        loss_scale: float = 1.0,
        lr_cov: float | Callable[[int], float] = 1e-2,
        structures: tuple[str, str] = ("dense", "dense"),
        kfac_approx: str = "expand",
        kfac_like: bool = False,
        normalize_lr_cov: bool = False,
        preconditioner_dtype: tuple[torch.dtype | None, torch.dtype | None] = (None, None),
        fallback: str | None = "adam",
        fallback_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if not isinstance(model, nn.Module):
            modules = list(model) if isinstance(model, Iterable) else None
            if not modules or not all(isinstance(m, nn.Module) for m in modules):
                raise ValueError(f"model must be an nn.Module or a non-empty iterable of modules, got {model!r}")
            model = nn.ModuleList(modules)
        lr = check_lr(lr)
        momentum = _check_unit("momentum", momentum)
        alpha1 = _check_unit("alpha1", alpha1)
        damping = check_non_negative("damping", damping)
        weight_decay = check_non_negative("weight_decay", weight_decay)
        T = check_positive_int("T", T)
        loss_average = check_choice("loss_average", loss_average, LOSS_AVERAGE)
        loss_scale = check_positive("loss_scale", loss_scale)
        if not callable(lr_cov):
            lr_cov = check_positive("lr_cov", lr_cov)
        structures = _check_structures(structures)
        kfac_approx = check_choice("kfac_approx", kfac_approx, KFAC_APPROX)
        preconditioner_dtype = _check_dtypes(preconditioner_dtype)
        fallback = check_choice("fallback", fallback, FALLBACKS)
        fallback_lr = lr if fallback_lr is None else check_positive("fallback_lr", fallback_lr)
        betas = check_betas("betas", betas)
        eps = check_positive("eps", eps)
        if kfac_like and alpha1 != 0.0:
            warnings.warn(
                "kfac_like=True ignores alpha1 (IKFAC has no Riemannian momentum); using alpha1=0", stacklevel=2
            )
            alpha1 = 0.0

        layers: list[_Layer] = []
        in_layer: set[int] = set()
        for name, module in model.named_modules():
            if supports(module) and module.weight.requires_grad:
                bias = module.bias if module.bias is not None and module.bias.requires_grad else None
                if module.bias is not None and bias is None:
                    warnings.warn(f"layer {name!r}: bias is frozen, SINGD still uses its input column", stacklevel=2)
                layers.append(_Layer(name, module, module.weight, bias))
                in_layer.update(id(p) for p in (module.weight, module.bias) if p is not None)
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in in_layer]
        if others and fallback is None:
            warnings.warn(
                f"{len(others)} parameters outside supported layers are not trained (fallback=None)", stacklevel=2
            )
        hyper = dict(
            lr=lr, momentum=momentum, damping=damping, alpha1=alpha1, weight_decay=weight_decay, T=T,
            loss_average=loss_average, loss_scale=loss_scale, lr_cov=lr_cov, structures=structures,
            kfac_approx=kfac_approx, kfac_like=bool(kfac_like), normalize_lr_cov=bool(normalize_lr_cov),
            preconditioner_dtype=preconditioner_dtype, betas=betas, eps=eps,
        )  # fmt: skip
        layer_params = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
        groups = []
        if layer_params:
            groups.append({"params": layer_params, "kind": "singd"})
        if others and fallback is not None:
            groups.append({"params": others, "kind": fallback, "lr": fallback_lr})
        if not groups:
            raise ValueError(f"model has no trainable parameters for SINGD (fallback={fallback!r}): {model!r}")
        self._fallback = fallback
        self._fallback_lr = fallback_lr
        super().__init__(groups, {**hyper, "kind": "singd"})
        self._layers = {layer.module: layer for layer in layers}
        self._by_weight = {id(layer.weight): layer for layer in layers}
        self._group_cache: tuple[tuple, dict[int, dict[str, Any]]] = ((), {})
        self._pending: dict[nn.Module, dict[str, Any]] = {}
        self._handles = [layer.module.register_forward_hook(self._forward_hook) for layer in layers]

    # -- configuration -------------------------------------------------------------------
    def _group_of(self, p: Tensor) -> dict[str, Any]:
        # param_groups are replaced by load_state_dict and grown by add_param_group
        key = tuple((id(g), len(g["params"])) for g in self.param_groups)
        if key != self._group_cache[0]:
            self._group_cache = (key, {id(q): g for g in self.param_groups for q in g["params"]})
        return self._group_cache[1][id(p)]

    def _layer_config(
        self, layer: _Layer
    ) -> tuple[dict[str, Any], tuple[Structure, Structure], tuple[torch.dtype, torch.dtype]]:
        group = self._group_of(layer.weight)
        structures = (get_structure(group["structures"][0]), get_structure(group["structures"][1]))
        dtypes = tuple(t or layer.weight.dtype for t in group["preconditioner_dtype"])
        return group, structures, dtypes

    def _factors(self, layer: _Layer) -> SINGDFactors:
        state = self.state[layer.weight]
        if "K" not in state:
            group, structures, dtypes = self._layer_config(layer)
            factors = init_factors(
                structures, layer_dims(layer.module), dtypes, layer.weight.device, group["alpha1"] != 0.0
            )
            state.update(step=0, **factors._asdict())
        return SINGDFactors(*(state[k] for k in _FACTOR_KEYS))

    @property
    def layers(self) -> dict[str, nn.Module]:
        """The preconditioned layers by name."""
        return {layer.name: layer.module for layer in self._layers.values()}

    def state_size(self) -> dict[str, int]:
        """Numbers stored per layer (factors, their momenta, the parameter momentum)."""
        sizes = {}
        for layer in self._layers.values():
            group, (sK, sC), _ = self._layer_config(layer)
            dK, dC = layer_dims(layer.module)
            n = (sK.numel(dK) + sC.numel(dC)) * (2 if group["alpha1"] != 0.0 else 1)
            if group["momentum"] != 0.0:
                n += layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
            sizes[layer.name] = n
        return sizes

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def add_fallback_params(self, params: Iterable[Tensor]) -> None:
        """Add parameters outside the model (e.g. a Pyro guide's) to the fallback group."""
        known = {id(p) for group in self.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in known]
        if not new:
            return
        if self._fallback is None:
            raise ValueError("fallback=None: parameters outside the model's supported layers cannot be trained")
        self.add_param_group({"params": new, "kind": self._fallback, "lr": self._fallback_lr})

    # -- hooks ---------------------------------------------------------------------------
    def _forward_hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        layer = self._layers[module]
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        group = self._group_of(layer.weight)
        step = self.state[layer.weight].get("step", 0)
        if step % group["T"] != 0:
            return
        x = inputs[0].detach()
        output.register_hook(functools.partial(self._backward_hook, layer, x))

    def _backward_hook(self, layer: _Layer, x: Tensor, grad_output: Tensor) -> None:
        group, (sK, sC), (tK, tC) = self._layer_config(layer)
        factors = self._factors(layer)
        a = layer_inputs(layer.module, x.to(tK), group["kfac_approx"])
        g = layer_output_grads(
            layer.module, grad_output.detach().to(tC), group["kfac_approx"], group["loss_average"], group["loss_scale"]
        )
        H_K = sK.project_gram(sK.rmatmul(factors.K, a.mT))
        H_C = sC.project_gram(sC.rmatmul(factors.C, g.mT))
        pending = self._pending.get(layer.module)
        if pending is None:
            self._pending[layer.module] = {"H_K": H_K, "H_C": H_C, "passes": 1}
        else:
            pending["H_K"] = combine(1.0, pending["H_K"], 1.0, H_K)
            pending["H_C"] = combine(1.0, pending["H_C"], 1.0, H_C)
            pending["passes"] += 1

    # -- step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, params: Iterable[Tensor] | None = None):
        """One SINGD step (and the fallback's for other parameters).

        ``params`` restricts the step to these parameters (a layer steps when its weight is
        among them); the Pyro wrapper passes the parameters SVI touched.
        """
        loss = closure_loss(closure)
        active = None if params is None else {id(p) for p in params}
        chosen = [
            (group, p)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and (active is None or id(p) in active)
        ]
        # one device sync for all finiteness checks; name the culprit only on failure
        flags = [torch.isfinite(p.grad).all() for _, p in chosen]
        flags += [
            torch.isfinite(t).all() for pending in self._pending.values() for t in pending["H_K"] + pending["H_C"]
        ]
        if flags and not bool(torch.stack(flags).all()):
            self._pending.clear()
            for _, p in chosen:
                check_finite_grad(self._param_label(p), p.grad)
            raise FloatingPointError("non-finite curvature statistics (layer inputs or output gradients)")
        stepped = {id(p) for _, p in chosen}
        for layer in self._layers.values():
            if id(layer.weight) in stepped or (layer.bias is not None and id(layer.bias) in stepped):
                self._step_layer(layer)
        for group, p in chosen:
            if group["kind"] == "adam":
                adam_fallback_(
                    p,
                    p.grad,
                    self.state[p],
                    lr=group["lr"],
                    betas=group["betas"],
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
            elif group["kind"] == "sgd":
                self._apply_update(p, p.grad.clone(), group)
        return loss

    def _param_label(self, p: Tensor) -> str:
        for layer in self._layers.values():
            if p is layer.weight:
                return f"{layer.name}.weight"
            if p is layer.bias:
                return f"{layer.name}.bias"
        return f"of shape {tuple(p.shape)} (fallback)"

    def _apply_update(self, p: Tensor, update: Tensor, group: dict[str, Any]) -> None:
        """``m ← α₂ m + (update + γ p)``, ``p ← p − β₂ m``."""
        if group["weight_decay"] != 0.0:
            update.add_(p, alpha=group["weight_decay"])
        if group["momentum"] != 0.0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            update = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
        p.add_(update, alpha=-group["lr"])

    def _step_layer(self, layer: _Layer) -> None:
        group, structures, _ = self._layer_config(layer)
        factors = self._factors(layer)
        state = self.state[layer.weight]
        pending = self._pending.pop(layer.module, None)
        if state["step"] % group["T"] == 0 and pending is not None:
            lr_cov = group["lr_cov"](state["step"]) if callable(group["lr_cov"]) else group["lr_cov"]
            H_K = tuple(t / pending["passes"] for t in pending["H_K"])  # U is an average over the passes
            hyper = {k: group[k] for k in ("alpha1", "damping", "kfac_like", "normalize_lr_cov")}
            factors = update_factors(structures, factors, H_K, pending["H_C"], lr_cov=lr_cov, **hyper)
            state.update(factors._asdict())
        w, b = layer.weight, layer.bias
        grad_w = w.grad if w.grad is not None else torch.zeros_like(w)
        grad = grad_w.reshape(w.shape[0], -1)
        if layer.module.bias is not None:
            grad_b = (
                b.grad
                if b is not None and b.grad is not None
                else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            )
            grad = torch.cat([grad, grad_b.unsqueeze(1)], dim=1)
        nat = natural_gradient(structures, factors, grad)
        self._apply_update(w, nat[:, : grad_w[0].numel()].reshape_as(w).clone(), group)
        if b is not None:
            self._apply_update(b, nat[:, -1].clone(), group)
        state["step"] += 1

    # -- checkpoints ---------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader (which casts state to each parameter's dtype and device), then the
        factors back to their ``preconditioner_dtype``; statistics of an unfinished step are dropped."""
        super().load_state_dict(state_dict)
        self._pending.clear()
        for layer in self._layers.values():
            self._cast_factors(layer)

    def _cast_factors(self, layer: _Layer) -> None:
        state = self.state.get(layer.weight)
        if not state or "K" not in state:
            return
        _, _, (tK, tC) = self._layer_config(layer)
        for key, dtype in zip(_FACTOR_KEYS, (tK, tC, tK, tC), strict=True):
            if state.get(key) is not None:
                state[key] = tuple(t.to(dtype=dtype, device=layer.weight.device) for t in state[key])

    def _load_param_state(self, p: Tensor, saved: Mapping[str, Any]) -> None:
        """Set one parameter's state (used by the Pyro wrapper's name-keyed checkpoints)."""

        def cast(key: str, value: Any) -> Any:
            if isinstance(value, Tensor):
                dtype = p.dtype if value.is_floating_point() and key != "step" else value.dtype
                return value.to(device=p.device, dtype=dtype, copy=True)  # no aliasing of the caller's dict
            if isinstance(value, tuple | list):
                return type(value)(cast(key, v) for v in value)
            return value

        self.state[p] = {k: cast(k, v) for k, v in saved.items()}
        if id(p) in self._by_weight:
            self._cast_factors(self._by_weight[id(p)])
