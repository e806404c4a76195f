"""SINGD's math core (Fig. 4) and the layer statistics it needs.

Factor state (:class:`SINGDFactors`), the factor update, the structured natural gradient, and a layer's
inputs ``a`` and output gradients ``g`` as matrices with one row per term (``nn.Linear``, ``nn.Conv2d``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_ext.optim.singd.structures import Factor, Structure, combine


# ---------------------------------------------------------------------------------------
# Math core (Fig. 4): factor state, factor update, natural gradient
# ---------------------------------------------------------------------------------------
class SINGDFactors(NamedTuple):
    """Per-layer state: factors ``K`` (input side), ``C`` (output side) and their momenta
    ``m_K``, ``m_C`` (``None`` when ``alpha1 = 0``)."""

    K: Factor
    C: Factor
    m_K: Factor | None
    m_C: Factor | None


def init_factors(
    structures: tuple[Structure, Structure],
    dims: tuple[int, int],
    dtypes: tuple[torch.dtype, torch.dtype],
    device: torch.device,
    with_momentum: bool,
) -> SINGDFactors:
    """``K = I``, ``C = I``, ``m_K = m_C = 0`` (as in the paper)."""
    (sK, sC), (dK, dC), (tK, tC) = structures, dims, dtypes
    K, C = sK.eye(dK, tK, device), sC.eye(dC, tC, device)
    if not with_momentum:
        return SINGDFactors(K, C, None, None)
    return SINGDFactors(K, C, sK.zeros(dK, tK, device), sC.zeros(dC, tC, device))


def update_factors(
    structures: tuple[Structure, Structure],
    factors: SINGDFactors,
    H_K: Factor,
    H_C: Factor,
    *,
    lr_cov: float,
    alpha1: float,
    damping: float,
    kfac_like: bool = False,
    normalize_lr_cov: bool = False,
) -> SINGDFactors:
    """One preconditioner update of Fig. 4 (right) from ``H_K = Π̂(Kᵀ U K)``, ``H_C = Π̂(Cᵀ G C)``.

    With ``tr`` the average trace (``Tr / d``, which absorbs the paper's ``1/d_o``, ``1/d_K``):
    ``m_K ← α₁ m_K + ½(tr(H_C) H_K + λ tr(CᵀC) Π̂(KᵀK) − I)``, the same with ``K ↔ C`` for
    ``m_C``, then ``K ← K − β₁ K m_K`` and ``C ← C − β₁ C m_C``.  ``kfac_like`` (IKFAC)
    replaces both traces by 1.  ``normalize_lr_cov`` (the ``singd`` package's normalised
    gradient descent on the factors) multiplies the new term by ``1 − α₁``, so the momentum
    stays bounded, and divides ``β₁`` by ``max(1, max|m|)`` per factor.
    """
    sK, sC = structures
    K, C, m_K, m_C = factors
    KtK, CtC = sK.project_self_gram(K), sC.project_self_gram(C)
    if kfac_like:
        wK, wC, dK, dC = 1.0, 1.0, damping, damping
    else:
        wK, wC = sC.avg_trace(H_C), sK.avg_trace(H_K)
        dK, dC = damping * sC.avg_trace(CtC), damping * sK.avg_trace(KtK)
    scale = 0.5 * ((1.0 - alpha1) if normalize_lr_cov else 1.0)
    new_mK = tuple(scale * t for t in sK.add_to_diag(combine(wK, H_K, dK, KtK), -1.0))
    new_mC = tuple(scale * t for t in sC.add_to_diag(combine(wC, H_C, dC, CtC), -1.0))
    if m_K is not None and alpha1 != 0.0:
        new_mK = combine(1.0, new_mK, alpha1, m_K)
        new_mC = combine(1.0, new_mC, alpha1, m_C)
    beta_K = beta_C = lr_cov
    if normalize_lr_cov:
        beta_K = lr_cov / max(1.0, float(sK.inf_norm(new_mK)))
        beta_C = lr_cov / max(1.0, float(sC.inf_norm(new_mC)))
    K = combine(1.0, K, -beta_K, sK.compose(K, new_mK))
    C = combine(1.0, C, -beta_C, sC.compose(C, new_mC))
    keep = m_K is not None
    return SINGDFactors(K, C, new_mK if keep else None, new_mC if keep else None)


def natural_gradient(structures: tuple[Structure, Structure], factors: SINGDFactors, grad: Tensor) -> Tensor:
    """``C Cᵀ ∇ K Kᵀ`` for the ``(d_o, d_K)`` gradient matrix ``∇`` (weight columns, then bias)."""
    sK, sC = structures
    K, C = factors.K, factors.C
    right = sK.matmul(K, sK.rmatmul(K, grad.mT.to(K[0].dtype))).mT  # ∇ K Kᵀ = (K Kᵀ ∇ᵀ)ᵀ
    return sC.matmul(C, sC.rmatmul(C, right.to(C[0].dtype))).to(grad.dtype)


# ---------------------------------------------------------------------------------------
# Layer statistics: inputs a and output gradients g as matrices with one row per term
# ---------------------------------------------------------------------------------------
def _conv_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """Integer padding of ``layer`` (``None`` where ``"same"`` pads unequally)."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return None
        return (total[0] // 2, total[1] // 2)
    return tuple(layer.padding)


def supports(module: nn.Module) -> bool:
    """Layers SINGD preconditions: ``nn.Linear`` and ``nn.Conv2d`` (zero padding, integer
    or equal ``"same"`` padding) whose weight and bias are plain parameters; anything else
    (a ``PyroModule`` layer with ``PyroSample``/``PyroParam`` weights included) goes to the fallback."""
    pyro_attrs = set(getattr(module, "_pyro_samples", ())) | set(getattr(module, "_pyro_params", ()))
    if pyro_attrs & {"weight", "bias"}:
        return False
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and _conv_padding(module) is not None
    return False


def layer_dims(module: nn.Module) -> tuple[int, int]:
    """``(d_K, d_C)``: flattened input size (+1 for a bias) and the number of outputs."""
    w = module.weight
    return w[0].numel() + (module.bias is not None), w.shape[0]


def layer_inputs(module: nn.Module, x: Tensor, kfac_approx: str) -> Tensor:
    """Input rows ``a / √n`` (``n`` rows) with a column of ones for the bias, shape ``(n, d_K)``."""
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        b, cin = x.shape[:2]
        # grouped convolutions share one K over the groups: average the group's channels
        x = x.reshape(b, module.groups, cin // module.groups, *x.shape[2:]).mean(1)
        patches = F.unfold(x, module.kernel_size, module.dilation, _conv_padding(module), module.stride)
        a = patches.mean(-1) if kfac_approx == "reduce" else patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        d = x.shape[-1]
        if kfac_approx == "reduce" and x.dim() > 2:
            a = x.reshape(x.shape[0], -1, d).mean(1)
        else:
            a = x.reshape(-1, d)
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
    return a / math.sqrt(a.shape[0])


def layer_output_grads(
    module: nn.Module, g: Tensor, kfac_approx: str, loss_average: str | None, loss_scale: float
) -> Tensor:
    """Output-gradient rows ``g / √s`` (``s`` the loss scale per term, see the module docstring)."""
    if isinstance(module, nn.Conv2d):
        if g.dim() == 3:
            g = g.unsqueeze(0)
        shared = g.shape[2:].numel()
        rows = g.sum((2, 3)) if kfac_approx == "reduce" else g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
    else:
        if g.dim() == 1:
            g = g.unsqueeze(0)
        shared = g.shape[1:-1].numel()
        if kfac_approx == "reduce" and g.dim() > 2:
            rows = g.reshape(g.shape[0], -1, g.shape[-1]).sum(1)
        else:
            rows = g.reshape(-1, g.shape[-1])
    s = loss_scale
    if loss_average is not None:
        s = s / (g.shape[0] * (shared if loss_average == "batch+sequence" else 1))
    return rows / math.sqrt(s)
