"""SINGD's factor structures: compact storage of a ``d × d`` factor and the few operations SINGD needs.

Dense, diagonal, block-diagonal, hierarchical and triangular-Toeplitz factors (Lin et al., ICML 2024,
Sec. 3 and App. D); each is a matrix group, so ``K (I - β m)`` stays in the structure.  :func:`get_structure`
parses a name of :data:`STRUCTURES`.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod

import torch
from torch import Tensor

Factor = tuple[Tensor, ...]
#: Structure names: fixed ones, plus the patterns ``block{B}diagonal`` and ``hierarchical{K1}_{K2}``.
STRUCTURES = ("dense", "diagonal", "block{B}diagonal", "hierarchical{K1}_{K2}", "triltoeplitz", "triutoeplitz")


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


def combine(a: float | Tensor, X: Factor, b: float | Tensor, Y: Factor) -> Factor:
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
