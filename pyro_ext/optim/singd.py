"""SINGD: structured inverse-free natural gradient descent (a KFAC without inverses), in torch/Pyro.

Lin, Dangel, Eschenhagen, Neklyudov, Kristiadi, Turner & Makhzani, "Structured Inverse-Free
Natural Gradient Descent: Memory-Efficient & Numerically-Stable KFAC", ICML 2024
(arXiv:2312.05705).  The update is the paper's Figure 4 (INGD on the left, SINGD on the
right); the authors' package ``singd`` is the oracle the tests compare against step for step.

For a layer with weight ``W`` of shape ``(d_o, d_i)`` (a bias is appended as the last
column, so the input side has ``d_K = d_i + 1``), KFAC approximates the (empirical) Fisher
by ``U ⊗ G`` with ``U = E[a aᵀ]`` (layer inputs, ``d_K × d_K``) and ``G = Σ g gᵀ`` (output
gradients, ``d_o × d_o``).  SINGD keeps factors ``K`` (``d_K × d_K``) and ``C``
(``d_o × d_o``) with ``K Kᵀ ≈ (U + λ…)⁻¹`` and ``C Cᵀ ≈ (G + λ…)⁻¹`` and never inverts
anything.  Every ``T`` steps (Fig. 4, right), with ``Π̂`` the projection onto the factor's
structure (taking the (block) diagonal, etc.):

    H_K = Π̂(Kᵀ U K),   H_C = Π̂(Cᵀ G C),   c² = λ Tr(Cᵀ C),   κ² = λ Tr(Kᵀ K)
    m_K ← α₁ m_K + 1/(2 d_o) · (Tr(H_C) H_K + c² Π̂(Kᵀ K) − d_o I)
    m_C ← α₁ m_C + 1/(2 d_K) · (Tr(H_K) H_C + κ² Π̂(Cᵀ C) − d_K I)
    K ← K (I − β₁ m_K),   C ← C (I − β₁ m_C)

and every step the weights move along the structured natural gradient

    m_W ← α₂ m_W + C Cᵀ ∇_W K Kᵀ + γ W,    W ← W − β₂ m_W.

Names: ``lr`` = β₂, ``momentum`` = α₂, ``damping`` = λ, ``alpha1`` = α₁, ``lr_cov`` = β₁,
``weight_decay`` = γ, ``T`` = update interval (the ``singd`` package's names).  The
products ``K(I − β₁ m)`` stay in the structure because every structure here is a matrix
group (closed under multiplication); the factors are stored compactly (a diagonal as a
vector, a Toeplitz factor as its first column, ...), so a ``d × d`` factor costs ``d``
numbers for the diagonal and Toeplitz structures.

``kfac_like=True`` is the paper's IKFAC (the INGD update without Riemannian momentum and
adaptive damping, ``m_K ← ½(H_K + λ Π̂(KᵀK) − I)``), which tracks KFAC's ``(U + λI)⁻¹``.

Loss scale (SINGD is not invariant to it).  The hooks see ``g = ∂L/∂(layer output)``.
If the loss is ``L = s · Σ_n ℓ_n`` over the per-example terms the layer sees, the Fisher of
``L`` is ``s Σ_n ĝ_n ĝ_nᵀ = (1/s) Σ_n g_n g_nᵀ``, so ``G`` is built from ``g / √s`` with
``s = loss_scale`` (``loss_average=None``) or ``s = loss_scale / n`` (``loss_average="batch"``,
``n`` the batch size, ``"batch+sequence"``: batch × sequence positions) — ``singd``'s option,
with ``loss_scale=1``.  Pyro's ELBO is a *sum* over data (scaled by ``N / B`` under
subsampling, averaged over ``num_particles = P``), so ``loss_scale`` is the factor in front
of the sum of per-datum log-likelihood terms in the loss: ``N / (B P)`` for the raw ELBO.
Because the factors start at ``K = C = I``, the first steps are SGD steps on whatever
scale the loss has; with the raw (``N``-times larger) ELBO they blow up unless ``lr`` is tiny.
Recommended: scale model and guide by ``1 / N`` (``poutine.scale(model, scale=1/N)``) so
the loss is a per-datum mean and pass ``loss_scale = 1 / (B P)`` with ``loss_average=None``
(for one particle this is ``loss_average="batch"``, the default), plus
``normalize_lr_cov=True`` (the curvature of a likelihood with a learned noise scale
changes by orders of magnitude during training).

Several forward/backward passes before one step (gradient accumulation, non-vectorised
ELBO particles) add their ``G`` terms and *average* their ``U`` terms, so the statistics
equal those of one pass over all the data under the matching ``loss_scale``.  ``singd``
sums both; the two agree whenever one pass is made per step.

Shapes: ``a`` ``(n, d_K)``, ``g`` ``(n, d_o)`` after flattening weight-sharing axes
(``kfac_approx="expand"``; ``"reduce"`` averages inputs and sums output gradients over them).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import pyro
import torch
import torch.nn.functional as F
from pyro.optim import PyroOptim
from torch import Tensor, nn

from adapters.validation import check_choice, check_positive, check_positive_int
from pyro_ext.optim._common import adam_fallback_, check_betas, check_finite_grad, check_lr, check_non_negative

__all__ = [
    "SINGD",
    "SINGDFactors",
    "SINGDOptimizer",
    "STRUCTURES",
    "Structure",
    "get_structure",
    "init_factors",
    "natural_gradient",
    "update_factors",
]

Factor = tuple[Tensor, ...]
LOSS_AVERAGE = (None, "batch", "batch+sequence")
KFAC_APPROX = ("expand", "reduce")
FALLBACKS = ("adam", "sgd", None)
#: Structure names: fixed ones, plus the patterns ``block{B}diagonal`` and ``hierarchical{K1}_{K2}``.
STRUCTURES = ("dense", "diagonal", "block{B}diagonal", "hierarchical{K1}_{K2}", "triltoeplitz", "triutoeplitz")
_FACTOR_KEYS = ("K", "C", "m_K", "m_C")


# ---------------------------------------------------------------------------------------
# Structures: compact storage of a factor and the few operations SINGD needs
# ---------------------------------------------------------------------------------------
class Structure(ABC):
    """A matrix group of ``d × d`` factors stored as a tuple of tensors.

    Every method is pure (returns new tensors).  ``project_gram(S)`` is ``Π̂(S Sᵀ)`` and
    ``project_self_gram(K)`` is ``Π̂(Kᵀ K)``: the projection of a symmetric matrix onto the
    structure's subspace, which for a sparsity pattern ``P`` keeps ``M_ij`` where both
    ``(i, j)`` and ``(j, i)`` are in ``P`` and doubles it where only ``(i, j)`` is.
    """

    name: str

    @abstractmethod
    def eye(self, d: int, dtype: torch.dtype, device: torch.device) -> Factor: ...

    @abstractmethod
    def matmul(self, K: Factor, X: Tensor) -> Tensor:
        """``K @ X`` for a dense ``X`` of shape ``(d, n)``."""
        ...

    @abstractmethod
    def rmatmul(self, K: Factor, X: Tensor) -> Tensor:
        """``Kᵀ @ X``."""
        ...

    @abstractmethod
    def compose(self, K: Factor, M: Factor) -> Factor:
        """``K @ M`` (stays in the structure)."""
        ...

    @abstractmethod
    def project_gram(self, S: Tensor) -> Factor:
        """``Π̂(S Sᵀ)``."""
        ...

    @abstractmethod
    def project_self_gram(self, K: Factor) -> Factor:
        """``Π̂(Kᵀ K)``."""
        ...

    @abstractmethod
    def avg_trace(self, M: Factor) -> Tensor:
        """``Tr(M) / d``."""
        ...

    @abstractmethod
    def add_to_diag(self, M: Factor, value: float) -> Factor: ...

    @abstractmethod
    def to_dense(self, M: Factor) -> Tensor: ...

    @abstractmethod
    def numel(self, d: int) -> int:
        """Numbers stored for one ``d × d`` factor."""
        ...

    def zeros(self, d: int, dtype: torch.dtype, device: torch.device) -> Factor:
        return tuple(torch.zeros_like(t) for t in self.eye(d, dtype, device))

    def inf_norm(self, M: Factor) -> Tensor:
        """Largest absolute entry (for ``normalize_lr_cov``)."""
        return torch.stack([t.abs().max() for t in M if t.numel() > 0]).max()


def _combine(a: float | Tensor, X: Factor, b: float | Tensor, Y: Factor) -> Factor:
    return tuple(a * x + b * y for x, y in zip(X, Y, strict=True))


def _eye(d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.eye(d, dtype=dtype, device=device)


class Dense(Structure):
    name = "dense"

    def eye(self, d, dtype, device):
        return (_eye(d, dtype, device),)

    def matmul(self, K, X):
        return K[0] @ X

    def rmatmul(self, K, X):
        return K[0].mT @ X

    def compose(self, K, M):
        return (K[0] @ M[0],)

    def project_gram(self, S):
        return (S @ S.mT,)

    def project_self_gram(self, K):
        return (K[0].mT @ K[0],)

    def avg_trace(self, M):
        return M[0].diagonal().mean()

    def add_to_diag(self, M, value):
        return (M[0] + value * _eye(M[0].shape[0], M[0].dtype, M[0].device),)

    def to_dense(self, M):
        return M[0]

    def numel(self, d):
        return d * d


class Diagonal(Structure):
    name = "diagonal"

    def eye(self, d, dtype, device):
        return (torch.ones(d, dtype=dtype, device=device),)

    def matmul(self, K, X):
        return K[0].unsqueeze(-1) * X

    rmatmul = matmul

    def compose(self, K, M):
        return (K[0] * M[0],)

    def project_gram(self, S):
        return ((S * S).sum(-1),)

    def project_self_gram(self, K):
        return (K[0] * K[0],)

    def avg_trace(self, M):
        return M[0].mean()

    def add_to_diag(self, M, value):
        return (M[0] + value,)

    def to_dense(self, M):
        return torch.diag(M[0])

    def numel(self, d):
        return d


class BlockDiagonal(Structure):
    """``n = d // B`` dense ``B × B`` blocks and one dense ``r × r`` block, ``r = d mod B``."""

    def __init__(self, block: int):
        self.block = block
        self.name = f"block{block}diagonal"

    def _split(self, X: Tensor) -> tuple[Tensor, Tensor]:
        n = X.shape[0] // self.block
        head, tail = X[: n * self.block], X[n * self.block :]
        return head.reshape(n, self.block, *X.shape[1:]), tail

    @staticmethod
    def _join(blocks: Tensor, last: Tensor) -> Tensor:
        return torch.cat([blocks.reshape(-1, *blocks.shape[2:]), last])

    def eye(self, d, dtype, device):
        n, r = divmod(d, self.block)
        return (_eye(self.block, dtype, device).expand(n, -1, -1).clone(), _eye(r, dtype, device))

    def matmul(self, K, X):
        Xb, Xl = self._split(X)
        return self._join(K[0] @ Xb, K[1] @ Xl)

    def rmatmul(self, K, X):
        Xb, Xl = self._split(X)
        return self._join(K[0].mT @ Xb, K[1].mT @ Xl)

    def compose(self, K, M):
        return (K[0] @ M[0], K[1] @ M[1])

    def project_gram(self, S):
        Sb, Sl = self._split(S)
        return (Sb @ Sb.mT, Sl @ Sl.mT)

    def project_self_gram(self, K):
        return (K[0].mT @ K[0], K[1].mT @ K[1])

    def avg_trace(self, M):
        d = M[0].shape[0] * self.block + M[1].shape[0]
        return (M[0].diagonal(dim1=-2, dim2=-1).sum() + M[1].diagonal().sum()) / d

    def add_to_diag(self, M, value):
        blocks, last = M
        return (
            blocks + value * _eye(self.block, blocks.dtype, blocks.device),
            last + value * _eye(last.shape[0], last.dtype, last.device),
        )

    def to_dense(self, M):
        return torch.block_diag(*M[0].unbind(0), M[1])

    def numel(self, d):
        n, r = divmod(d, self.block)
        return n * self.block**2 + r * r


class Hierarchical(Structure):
    r"""The paper's hierarchical structure (``K₁ = k1``, ``K₂ = k2``):

        [[A, B_c, B_e],
         [0, diag(c), 0],
         [0, D,   E  ]]

    ``A`` (``K₁ × K₁``) and ``E`` (``K₂ × K₂``) dense, ``c`` the diagonal of the middle block,
    ``B = [B_c, B_e]`` (``K₁ × (d − K₁)``) and ``D`` (``K₂ × (d − K₁ − K₂)``) dense.  A
    factor smaller than ``k1 + k2`` fills ``A`` first, then ``E`` (no diagonal part).
    """

    def __init__(self, k1: int, k2: int):
        self.k1, self.k2 = k1, k2
        self.name = f"hierarchical{k1}_{k2}"

    def dims(self, d: int) -> tuple[int, int, int]:
        if d <= self.k1:
            return d, 0, 0
        if d <= self.k1 + self.k2:
            return self.k1, 0, d - self.k1
        return self.k1, d - self.k1 - self.k2, self.k2

    @staticmethod
    def _dims_of(M: Factor) -> tuple[int, int, int]:
        return M[0].shape[0], M[2].shape[0], M[4].shape[0]

    def eye(self, d, dtype, device):
        k1, m, k2 = self.dims(d)
        z = functools.partial(torch.zeros, dtype=dtype, device=device)
        return (
            _eye(k1, dtype, device),
            z(k1, m + k2),
            torch.ones(m, dtype=dtype, device=device),
            z(k2, m),
            _eye(k2, dtype, device),
        )

    def matmul(self, K, X):
        A, B, c, D, E = K
        k1, m, k2 = self._dims_of(K)
        x1, x2, x3 = X.split([k1, m, k2])
        Bc, Be = B.split([m, k2], dim=1)
        return torch.cat([A @ x1 + Bc @ x2 + Be @ x3, c.unsqueeze(-1) * x2, D @ x2 + E @ x3])

    def rmatmul(self, K, X):
        A, B, c, D, E = K
        k1, m, k2 = self._dims_of(K)
        x1, x2, x3 = X.split([k1, m, k2])
        Bc, Be = B.split([m, k2], dim=1)
        return torch.cat([A.mT @ x1, Bc.mT @ x1 + c.unsqueeze(-1) * x2 + D.mT @ x3, Be.mT @ x1 + E.mT @ x3])

    def compose(self, K, M):
        A1, B1, c1, D1, E1 = K
        A2, B2, c2, D2, E2 = M
        _, m, k2 = self._dims_of(K)
        B1c, B1e = B1.split([m, k2], dim=1)
        B2c, B2e = B2.split([m, k2], dim=1)
        B = torch.cat([A1 @ B2c + B1c * c2 + B1e @ D2, A1 @ B2e + B1e @ E2], dim=1)
        return (A1 @ A2, B, c1 * c2, D1 * c2 + E1 @ D2, E1 @ E2)

    def _from_row_blocks(self, S1: Tensor, S2: Tensor, S3: Tensor) -> Factor:
        # Π̂(S Sᵀ) for S stacked as [S1; S2; S3] (rows of the A, diagonal and E blocks)
        B = 2 * torch.cat([S1 @ S2.mT, S1 @ S3.mT], dim=1)
        return (S1 @ S1.mT, B, (S2 * S2).sum(-1), 2 * S3 @ S2.mT, S3 @ S3.mT)

    def project_gram(self, S):
        k1, m, k2 = self.dims(S.shape[0])
        return self._from_row_blocks(*S.split([k1, m, k2]))

    def project_self_gram(self, K):
        # KᵀK's row blocks are Kᵀ's: Π̂(Kᵀ K) = Π̂(S Sᵀ) with S = Kᵀ, written blockwise
        A, B, c, D, E = K
        _, m, k2 = self._dims_of(K)
        Bc, Be = B.split([m, k2], dim=1)
        diag = (Bc * Bc).sum(0) + c * c + (D * D).sum(0)
        return (A.mT @ A, 2 * A.mT @ B, diag, 2 * (Be.mT @ Bc + E.mT @ D), Be.mT @ Be + E.mT @ E)

    def avg_trace(self, M):
        A, _, c, _, E = M
        d = sum(self._dims_of(M))
        return (A.diagonal().sum() + c.sum() + E.diagonal().sum()) / d

    def add_to_diag(self, M, value):
        A, B, c, D, E = M
        return (
            A + value * _eye(A.shape[0], A.dtype, A.device),
            B,
            c + value,
            D,
            E + value * _eye(E.shape[0], E.dtype, E.device),
        )

    def to_dense(self, M):
        A, B, c, D, E = M
        k1, m, k2 = self._dims_of(M)
        out = A.new_zeros(k1 + m + k2, k1 + m + k2)
        out[:k1, :k1], out[:k1, k1:] = A, B
        out[k1 : k1 + m, k1 : k1 + m] = torch.diag(c)
        out[k1 + m :, k1 : k1 + m], out[k1 + m :, k1 + m :] = D, E
        return out

    def numel(self, d):
        k1, m, k2 = self.dims(d)
        return k1 * k1 + k1 * (m + k2) + m + k2 * m + k2 * k2


class TriangularToeplitz(Structure):
    """Lower (``lower=True``) or upper triangular Toeplitz factors, stored as ``d`` numbers.

    ``v[k]`` is the value on the ``k``-th sub- (lower) or super-diagonal (upper).  The
    products run through the dense ``d × d`` matrix (transient memory ``d²``, stored state
    ``d``).  Both kinds are polynomials in the shift matrix, so they commute and
    ``L(v) L(w)`` has first column ``L(v) w``.
    """

    def __init__(self, lower: bool):
        self.lower = lower
        self.name = "triltoeplitz" if lower else "triutoeplitz"

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _offsets(d: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = torch.tril_indices(d, d, device=device)
        return rows, cols, rows - cols

    def _lower_dense(self, v: Tensor) -> Tensor:
        d = v.shape[0]
        rows, cols, off = self._offsets(d, v.device)
        out = v.new_zeros(d, d)
        out[rows, cols] = v[off]
        return out

    def to_dense(self, M):
        L = self._lower_dense(M[0])
        return L if self.lower else L.mT

    def eye(self, d, dtype, device):
        v = torch.zeros(d, dtype=dtype, device=device)
        v[0] = 1.0
        return (v,)

    def matmul(self, K, X):
        return self.to_dense(K) @ X

    def rmatmul(self, K, X):
        return self.to_dense(K).mT @ X

    def compose(self, K, M):
        return (self._lower_dense(K[0]) @ M[0],)

    def _project(self, Msym: Tensor) -> Factor:
        # coefficient k: (sum of the k-th sub- and super-diagonal) / (d - k) = 2 · sub / (d - k)
        d = Msym.shape[0]
        rows, cols, off = self._offsets(d, Msym.device)
        sums = Msym.new_zeros(d).index_add_(0, off, Msym[rows, cols])
        weight = torch.full((d,), 2.0, dtype=Msym.dtype, device=Msym.device)
        weight[0] = 1.0
        return (sums * weight / torch.arange(d, 0, -1, dtype=Msym.dtype, device=Msym.device),)

    def project_gram(self, S):
        return self._project(S @ S.mT)

    def project_self_gram(self, K):
        Kd = self.to_dense(K)
        return self._project(Kd.mT @ Kd)

    def avg_trace(self, M):
        return M[0][0]

    def add_to_diag(self, M, value):
        v = M[0].clone()
        v[0] += value
        return (v,)

    def numel(self, d):
        return d


@functools.cache
def get_structure(name: str) -> Structure:
    """The :class:`Structure` called ``name`` (see :data:`STRUCTURES`); ``ValueError`` otherwise."""
    fixed = {
        "dense": Dense,
        "diagonal": Diagonal,
        "triltoeplitz": lambda: TriangularToeplitz(True),
        "triutoeplitz": lambda: TriangularToeplitz(False),
    }
    if isinstance(name, str):
        if name in fixed:
            return fixed[name]()
        if match := re.fullmatch(r"block(\d+)diagonal", name):
            if int(match[1]) >= 1:
                return BlockDiagonal(int(match[1]))
        if match := re.fullmatch(r"hierarchical(\d+)_(\d+)", name):
            if int(match[1]) >= 1 and int(match[2]) >= 1:
                return Hierarchical(int(match[1]), int(match[2]))
    raise ValueError(f"structures: unknown structure {name!r}; expected one of {list(STRUCTURES)} (B, K1, K2 >= 1)")


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
    new_mK = tuple(scale * t for t in sK.add_to_diag(_combine(wK, H_K, dK, KtK), -1.0))
    new_mC = tuple(scale * t for t in sC.add_to_diag(_combine(wC, H_C, dC, CtC), -1.0))
    if m_K is not None and alpha1 != 0.0:
        new_mK = _combine(1.0, new_mK, alpha1, m_K)
        new_mC = _combine(1.0, new_mC, alpha1, m_C)
    beta_K = beta_C = lr_cov
    if normalize_lr_cov:
        beta_K = lr_cov / max(1.0, float(sK.inf_norm(new_mK)))
        beta_C = lr_cov / max(1.0, float(sC.inf_norm(new_mC)))
    K = _combine(1.0, K, -beta_K, sK.compose(K, new_mK))
    C = _combine(1.0, C, -beta_C, sC.compose(C, new_mC))
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


def _layer_dims(module: nn.Module) -> tuple[int, int]:
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


# ---------------------------------------------------------------------------------------
# torch optimizer
# ---------------------------------------------------------------------------------------
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
        fallback: ``"adam"`` (AdamW through :func:`~pyro_ext.optim._common.adam_fallback_`),
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
                structures, _layer_dims(layer.module), dtypes, layer.weight.device, group["alpha1"] != 0.0
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
            dK, dC = _layer_dims(layer.module)
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
            pending["H_K"] = _combine(1.0, pending["H_K"], 1.0, H_K)
            pending["H_C"] = _combine(1.0, pending["H_C"], 1.0, H_C)
            pending["passes"] += 1

    # -- step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, params: Iterable[Tensor] | None = None):
        """One SINGD step (and the fallback's for other parameters).

        ``params`` restricts the step to these parameters (a layer steps when its weight is
        among them); the Pyro wrapper passes the parameters SVI touched.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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


# ---------------------------------------------------------------------------------------
# Pyro
# ---------------------------------------------------------------------------------------
class SINGD(PyroOptim):
    """``pyro.optim``-compatible SINGD for ``pyro.infer.SVI``: ONE :class:`SINGDOptimizer` over ``module``.

    Pyro's ``PyroOptim`` builds one torch optimizer per parameter, which cannot
    precondition a layer (SINGD needs the whole weight and the layer's inputs and output
    gradients).  This wrapper builds one optimizer over ``module`` at construction (so
    the hooks are in place before SVI's first forward pass); when ``SVI.step`` calls it
    with the parameters of the step, the ones it has not seen (a guide's, ``pyro.param``
    sites) join the fallback group (Adam by default), and it steps those parameters.

    Args:
        module: the network (``PyroModule`` or an ``nn.Module`` registered with
            ``pyro.module``); build the wrapper after loading a saved param store, since
            the optimizer holds the module's parameter objects.
        optim_args: keyword arguments of :class:`SINGDOptimizer` (one dict; per-parameter
            callables make no sense for layer-wise SINGD).  ``loss_scale`` is the factor in
            front of the sum over data of the loss SVI differentiates (module docstring).
        clip_args: ``clip_norm`` / ``clip_value`` applied to each parameter's gradient, as
            in ``PyroOptim`` (the curvature statistics are not clipped).

    Example (per-datum ELBO, one particle, full batch, so ``loss_average="batch"``)::

        net = PyroModule[nn.Sequential](PyroModule[nn.Linear](1, 16), nn.Tanh(), PyroModule[nn.Linear](16, 1))

        def model(x, y=None):
            sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
            with pyro.plate("data", len(x)):
                pyro.sample("y", dist.Normal(net(x).squeeze(-1), sigma), obs=y)

        guide = AutoNormal(poutine.block(model, hide=["y"]))
        optim = SINGD(net, {"lr": 0.05, "lr_cov": 0.1, "T": 5, "normalize_lr_cov": True, "loss_average": "batch"})
        N = len(x)
        svi = SVI(poutine.scale(model, scale=1 / N), poutine.scale(guide, scale=1 / N), optim, Trace_ELBO())

    The guide's parameters are not in ``net``: they join the fallback (AdamW) on SVI's
    first step.

    Checkpoints: :meth:`get_state` keys each parameter's state by the module's parameter
    name (``"module"``) or by its param-store name (``"param_store"``); :meth:`set_state`
    applies it now where the parameter is known and when it first shows up otherwise.
    """

    def __init__(self, module: nn.Module, optim_args: dict[str, Any], clip_args: dict[str, Any] | None = None):
        if not isinstance(optim_args, Mapping):
            raise ValueError(f"optim_args must be a dict of SINGDOptimizer arguments, got {optim_args!r}")
        if clip_args is not None and not isinstance(clip_args, Mapping):
            raise ValueError(f"clip_args must be a dict with clip_norm and/or clip_value, got {clip_args!r}")
        super().__init__(SINGDOptimizer, dict(optim_args), dict(clip_args or {}))
        self.module = module
        self.optimizer = SINGDOptimizer(module, **optim_args)
        self._module_params = dict(module.named_parameters())
        self._module_names = {id(p): name for name, p in self._module_params.items()}
        self._warned_stale = False
        self._waiting: dict[str, dict[str, Any]] = {"module": {}, "param_store": {}}

    def _known(self) -> set[int]:
        return {id(p) for group in self.optimizer.param_groups for p in group["params"]}

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        params = list(params)
        known = self._known()
        new = [p for p in params if id(p) not in known]
        if new:
            self.optimizer.add_fallback_params(new)
            self._consume_waiting(new)
        if self.pt_clip_args:
            for p in params:
                self._clip_grad(p, **self.pt_clip_args)
        self._warn_if_stale({id(p) for p in params})
        self.optimizer.step(params=params)

    def _warn_if_stale(self, active: set[int]) -> None:
        # A module computes with its own parameters but its pyro.param site reports the
        # param store's tensor of that name; when they differ, SVI never passes the former.
        if self._warned_stale:
            return
        stale = [
            n
            for n, p in self._module_params.items()
            if id(p) not in active and p.grad is not None and bool(p.grad.any())
        ]
        if stale:
            warnings.warn(
                f"module parameters {stale} have gradients but SVI did not pass them: the param store holds other "
                "tensors under their names (build SINGD after loading the param store, or clear it)",
                stacklevel=3,
            )
            self._warned_stale = True

    def _name(self, p: Tensor) -> tuple[str, str] | None:
        if id(p) in self._module_names:
            return "module", self._module_names[id(p)]
        name = pyro.get_param_store().param_name(p)
        return None if name is None else ("param_store", name)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"module": {}, "param_store": {}}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                key = self._name(p)
                if key is not None and self.optimizer.state.get(p):
                    state[key[0]][key[1]] = {k: v for k, v in self.optimizer.state[p].items()}
        return state

    def set_state(self, state_dict: dict[str, Any]) -> None:
        for kind in ("module", "param_store"):
            self._waiting[kind].update(state_dict.get(kind, {}))
        self._consume_waiting([p for group in self.optimizer.param_groups for p in group["params"]])

    def _consume_waiting(self, params: Iterable[Tensor]) -> None:
        for p in params:
            key = self._name(p)
            if key is not None and key[1] in self._waiting[key[0]]:
                self.optimizer._load_param_state(p, self._waiting[key[0]].pop(key[1]))
