"""Alice -- Adam in a tracked low-rank eigen-subspace with switching and compensation, for torch and Pyro.

Gong, Scetbon, Ma & Meeds, "Towards Efficient Optimizer Design for LLM via Structured Fisher
Approximation with a Low-Rank Extension", 2025 (arXiv:2502.07752), Sec. 5 (the low-rank extension
of Eigen-Adam: tracking Eq. 17, switching Proposition 4 / Algorithm 2, compensation Theorem 5.1 /
Eq. 20) and its Alice / Alice-0 algorithm.

Eigen-Adam approximates the Fisher of a ``d × k`` gradient ``G`` by a block diagonal with a shared
eigenbasis ``U`` of ``E[G G^T]`` and Adam's diagonal second moment in the rotated coordinates
``U^T G``.  Alice keeps only ``r`` directions of ``U``.  A matrix with more rows than columns is
handled through its transpose (``d = min(m, n)``, ``k = max(m, n)``), so the basis lives in the
smaller dimension.  One step ``t`` (:func:`alice_direction`):

1. **Subspace update** at ``t = 1, K + 1, 2K + 1, ...`` (``K = update_interval``):

   * tracking (Eq. 17): the EMA of ``G G^T`` is reconstructed from its projection,
     ``Σ̃ = β3 U Q U^T + (1 - β3) G_t G_t^T`` (Alice-0, ``tracking=False``: ``Σ̃ = G_t G_t^T``);
   * switching (Algorithm 2): the ``l`` leading eigenvectors of ``Σ̃`` are kept and the other
     ``r - l`` columns are drawn uniformly without replacement from its remaining ``d - l``
     eigenvectors, so the basis explores directions the tracked statistics cannot rank;
   * the state follows the basis: with ``R = U_new^T U_old``, ``Q ← R Q R^T`` (so ``U Q U^T`` stays
     the projection of the tracked EMA), ``m ← R m`` (exact for a linear statistic) and
     ``v ← (R∘R) v``.  Eigenvectors are defined up to sign and order; carrying the moments over
     keeps a recomputed basis from flipping or scrambling the momentum.

2. ``σ = U^T G`` (``r × k``); ``Q ← β3 Q + (1 - β3) σ σ^T``; Adam moments
   ``m ← β1 m + (1 - β1) σ``, ``v ← β2 v + (1 - β2) σ∘σ`` (divided by ``1 - β^t`` when
   ``bias_correction``); ``ω = m̂ / (sqrt(v̂) + eps)``.

3. **Compensation** (Theorem 5.1, Eq. 20), only when ``r < d``: the optimal Fisher block on the
   orthogonal complement with one shared diagonal across its ``d - r`` directions gives
   ``C = sqrt(d - r) (G - U σ) Diag(p)^{-1/2}`` with ``p ← β2 p + (1 - β2) colsum((G - U σ)∘(G - U σ))``
   (``= colsum(G∘G) - colsum(σ∘σ)``); the norm-growth limiter of RACS bounds ``||C||`` by ``γ``
   times the previous one.

4. ``W ← W - lr · α · (U ω + α_c C)`` (decoupled weight decay ``W ← (1 - lr·λ_wd) W`` first).

With ``rank = d`` (``clip_rank=True``) the basis is the full eigenbasis of the tracked covariance,
tracking is exact (``U Q U^T`` is the EMA of ``G G^T``), there is no complement and the method is
Adam in that rotated basis (Eigen-Adam / one-sided SOAP).

Rank: ``1 <= rank < min(m, n)`` for every matrix parameter; ``rank >= min(m, n)`` raises a
``ValueError`` naming ``rank`` unless ``clip_rank=True``, which uses ``min(rank, min(m, n))`` per
parameter.  ``leading_basis`` (``l``) is clipped the same way.  ``rank=None`` (the default) is
``max(1, min(m, n) // 4)`` for each matrix: below ``min(m, n)`` for every matrix shape, so
``Alice({"lr": 0.02})`` works on any model.

State per matrix (``d × k`` view, effective rank ``r``): ``basis`` ``U`` (``d × r``), ``cov`` ``Q``
(``r × r``, not with ``tracking=False``), ``exp_avg`` ``m`` and ``exp_avg_sq`` ``v`` (``r × k``
each), ``comp`` ``p`` (``k``) and ``phi`` (0-d) when ``r < d``, and ``step``.  1-D and scalar
parameters get AdamW (``lr``, ``fallback_betas``, ``eps``, ``weight_decay``).  float16/bfloat16
parameters are updated with float32 arithmetic, float32 state and float32 eigendecompositions.
The random choice of complement directions is a deterministic function of ``seed``, the
parameter's position in the optimizer and the step, so a run resumed from ``state_dict`` is the
uninterrupted run.  A non-finite gradient raises ``FloatingPointError`` naming the parameter.

Which parameters: Alice's low-rank subspace is tuned for a network's weights, not for a guide's
locations and scales. By default (``matrix_params=None``) the method takes every matrix but a
guide's locations and scales (by name: ``adapters.validation.is_guide_param_name``), which get the
AdamW fallback; ``matrix_params="all"`` takes every matrix, a callable ``name -> bool`` picks by
name (docs/optim/alice.rst).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from adapters.configs import check_gamma, check_rank
from adapters.validation import (
    check_beta_pair,
    check_matrix_params,
    check_positive,
    check_positive_int,
    resolve_rank,
)
from pyro_ext.optim.common import (
    MatrixMethodOptimizer,
    as_matrix,
    check_betas,
    check_lr,
    check_non_negative,
    compute_dtype,
    descend_,
    is_matrix,
    keep_state_dtypes,
    pyro_optim,
)

__all__ = [
    "Alice",
    "AliceOptimizer",
    "alice_direction",
    "complement_indices",
    "switch_basis",
]


def complement_indices(num_candidates: int, count: int, seed: int) -> torch.Tensor:
    """``count`` of ``range(num_candidates)`` drawn uniformly without replacement, sorted (CPU int64)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return torch.randperm(num_candidates, generator=generator)[:count].sort().values


def switch_seed(seed: int, position: int, step: int) -> int:
    return (seed * 1_000_003 + position * 7_919 + step) % (2**63 - 1)


def switch_basis(cov: torch.Tensor, leading_basis: int, complement: torch.Tensor) -> torch.Tensor:
    """Algorithm 2: the ``leading_basis`` top eigenvectors of ``cov`` (``d × d``) and the chosen others.

    ``complement`` indexes the ``d - leading_basis`` remaining eigenvectors in descending order of
    eigenvalue.  Returns ``U`` (``d × (leading_basis + len(complement))``) with orthonormal columns.
    """
    _, vectors = torch.linalg.eigh(cov)
    vectors = vectors.flip(-1)  # descending eigenvalues
    rest = vectors[:, leading_basis:].index_select(1, complement.to(vectors.device))
    return torch.cat([vectors[:, :leading_basis], rest], dim=1)


def limit_norm(update: torch.Tensor, phi: torch.Tensor, gamma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm-growth limiter: scale ``update`` so its norm is at most ``gamma * phi`` (no limit while ``phi = 0``)."""
    norm = torch.linalg.vector_norm(update)
    if gamma is None:
        return update, norm
    tiny = torch.finfo(norm.dtype).tiny
    eta = torch.where(phi > 0, torch.clamp(gamma * phi / norm.clamp_min(tiny), max=1.0), torch.ones_like(norm))
    return update * eta, eta * norm


def alice_direction(
    grad: torch.Tensor,
    state: dict[str, Any],
    *,
    rank: int,
    leading_basis: int,
    update_interval: int,
    betas: tuple[float, float, float],
    alpha: float,
    alpha_c: float,
    gamma: float | None,
    eps: float,
    tracking: bool,
    bias_correction: bool,
    complement: Callable[[int, int], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One Alice step on a ``d × k`` gradient (``d <= k``); returns ``(direction, new_state)``.

    ``state`` holds ``step`` (steps done), ``basis``, ``exp_avg``, ``exp_avg_sq`` and, as configured,
    ``cov``, ``comp``, ``phi``; it is not modified.  ``complement(num_candidates, count)`` returns the
    sorted indices of the non-leading eigenvectors to keep at a subspace update.
    ``direction = α (U ω + α_c C)`` is what ``lr`` multiplies.
    """
    beta1, beta2, beta3 = betas
    d = grad.shape[0]
    step = state["step"] + 1
    basis, mu, nu = state["basis"], state["exp_avg"], state["exp_avg_sq"]
    cov = state.get("cov")
    if (step - 1) % update_interval == 0:
        target = grad @ grad.T
        if tracking:
            target = beta3 * (basis @ cov @ basis.T) + (1.0 - beta3) * target
        new_basis = switch_basis(target, leading_basis, complement(d - leading_basis, rank - leading_basis))
        rotation = new_basis.T @ basis
        mu, nu = rotation @ mu, (rotation * rotation) @ nu
        if tracking:
            cov = rotation @ cov @ rotation.T
        basis = new_basis
    sigma = basis.T @ grad
    new = {"step": step, "basis": basis}
    if tracking:
        new["cov"] = beta3 * cov + (1.0 - beta3) * (sigma @ sigma.T)
    mu = beta1 * mu + (1.0 - beta1) * sigma
    nu = beta2 * nu + (1.0 - beta2) * sigma * sigma
    new["exp_avg"], new["exp_avg_sq"] = mu, nu
    bias1 = 1.0 - beta1**step if bias_correction else 1.0
    bias2 = 1.0 - beta2**step if bias_correction else 1.0
    direction = basis @ ((mu / bias1) / (nu / bias2).sqrt().add_(eps))
    if rank < d:
        residual = grad - basis @ sigma
        comp = beta2 * state["comp"] + (1.0 - beta2) * (residual * residual).sum(0)
        compensation = math.sqrt(d - rank) * residual / (comp / bias2).sqrt().add_(eps)
        compensation, new["phi"] = limit_norm(compensation, state["phi"], gamma)
        new["comp"] = comp
        direction = direction + alpha_c * compensation
    return alpha * direction, new


class AliceOptimizer(MatrixMethodOptimizer):
    """Alice / Alice-0 (Gong et al. 2025, Sec. 5); see the module docstring for the update and state.

    Args:
        params: parameters or parameter groups.
        rank: subspace rank ``r`` (``1 <= r < min(m, n)`` for every matrix, unless ``clip_rank``);
            ``None`` (default) is ``max(1, min(m, n) // 4)`` for each matrix, valid for every shape.
        lr: learning rate ``λ`` (also the AdamW fallback's for 1-D parameters).
        betas: ``(β1, β2, β3)`` -- Adam's first and second moments (``β2`` also for the compensation's
            ``p``) and the tracking EMA of ``G G^T``.
        alpha: scale ``α`` of the whole matrix update.
        alpha_c: compensation strength ``α_c`` (0: no compensation).
        update_interval: ``K``, steps between subspace updates.
        leading_basis: ``l``, eigenvectors kept by switching (default ``round(40 r / 256)``, >= 1).
        gamma: norm-growth limit ``γ >= 1`` of the compensation (``None``: no limiter).
        eps: added to the square roots in the denominators.
        weight_decay: decoupled weight decay.
        tracking: ``False`` is Alice-0 (no ``Q`` state; the subspace comes from the current ``G G^T``).
        clip_rank: use ``min(rank, min(m, n))`` where ``rank >= min(m, n)`` instead of raising.
        bias_correction: divide the EMAs by ``1 - β^t``.
        seed: seed of the complement directions' random choice.
        fallback_betas: AdamW ``(β1, β2)`` for 1-D and scalar parameters.
        matrix_params: which matrix parameters the method takes (the rest get AdamW): ``None`` (default)
            every matrix but a guide's locations and scales (:func:`adapters.validation.is_guide_param_name`
            on the name from ``named_parameters()`` or Pyro's param store), ``"all"``, or a callable
            ``name -> bool``.

    Defaults ``lr = 0.02``, ``betas = (0.9, 0.9, 0.999)``, ``alpha = 0.3``, ``alpha_c = 0.4``,
    ``update_interval = 200``, ``gamma = 1.01`` follow the paper's LLaMA runs.
    """

    method_name = "Alice"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        rank: int | None = None,
        lr: float = 0.02,
        betas: tuple[float, float, float] = (0.9, 0.9, 0.999),
        alpha: float = 0.3,
        alpha_c: float = 0.4,
        update_interval: int = 200,
        leading_basis: int | None = None,
        gamma: float | None = 1.01,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        tracking: bool = True,
        clip_rank: bool = False,
        bias_correction: bool = True,
        seed: int = 0,
        fallback_betas: tuple[float, float] = (0.9, 0.999),
        matrix_params: Any = None,
    ) -> None:
        if rank is not None:
            rank, leading_basis = check_rank(rank, leading_basis)
        elif leading_basis is not None:
            leading_basis = check_positive_int("leading_basis", leading_basis)
        betas = check_betas("betas", betas)
        if len(betas) != 3:
            raise ValueError(f"betas must be a triple (beta1, beta2, beta3) of numbers in [0, 1), got {betas!r}")
        defaults = dict(
            rank=rank,
            lr=check_lr(lr),
            betas=betas,
            alpha=check_positive("alpha", alpha),
            alpha_c=check_non_negative("alpha_c", alpha_c),
            update_interval=check_positive_int("update_interval", update_interval),
            leading_basis=leading_basis,
            gamma=check_gamma(gamma),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            tracking=bool(tracking),
            clip_rank=bool(clip_rank),
            bias_correction=bool(bias_correction),
            seed=check_positive_int("seed", seed, allow_zero=True),
            fallback_betas=check_beta_pair("fallback_betas", fallback_betas),
            matrix_params=check_matrix_params(matrix_params),
        )
        super().__init__(params, defaults)
        keep_state_dtypes(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for param in group["params"]:
            if is_matrix(param):
                resolve_rank(tuple(as_matrix(param).shape), group["rank"], group["leading_basis"], group["clip_rank"])

    def matrix_step(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], position: int
    ) -> None:
        g = as_matrix(grad).to(compute_dtype(param.dtype))
        transposed = g.shape[0] > g.shape[1]
        if transposed:
            g = g.T
        d, k = g.shape
        r, lead = resolve_rank((d, k), group["rank"], group["leading_basis"], group["clip_rank"])
        if not state:
            state["step"] = 0
            state["basis"] = g.new_zeros(d, r)
            if group["tracking"]:
                state["cov"] = g.new_zeros(r, r)
            state["exp_avg"] = g.new_zeros(r, k)
            state["exp_avg_sq"] = g.new_zeros(r, k)
            if r < d:
                state["comp"] = g.new_zeros(k)
                state["phi"] = g.new_zeros(())
        step = state["step"] + 1

        def complement(num_candidates: int, count: int) -> torch.Tensor:
            return complement_indices(num_candidates, count, switch_seed(group["seed"], position, step))

        direction, new = alice_direction(
            g,
            state,
            rank=r,
            leading_basis=lead,
            update_interval=group["update_interval"],
            betas=group["betas"],
            alpha=group["alpha"],
            alpha_c=group["alpha_c"],
            gamma=group["gamma"],
            eps=group["eps"],
            tracking=group["tracking"],
            bias_correction=group["bias_correction"],
            complement=complement,
        )
        state.update(new)
        if transposed:
            direction = direction.T
        descend_(param, direction.reshape(param.shape).to(param.dtype), group["lr"], group["weight_decay"])


Alice = pyro_optim(AliceOptimizer)
