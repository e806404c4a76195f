"""GPS-ABC's training set in torch: every simulation so far, grouped by location (the twin of the
training-set part of :mod:`numpyro_ext.infer.abc.gpsabc.core`).  Used by :mod:`.core` and :mod:`.shell`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyro_ext.infer.abc.problem import finite_rows

__all__ = ["SurrogateData", "add_design", "add_simulations", "empty_data", "pooled_noise_variance"]

Tensor = torch.Tensor


class SurrogateData(NamedTuple):
    """Every simulation so far, grouped by location: ``u`` ``(count, D)`` unconstrained parameters; per
    location the ``mean`` ``(count, d)`` of its finite simulations, their sum of squared deviations
    ``sumsq`` ``(count, d)`` and their number ``n`` ``(count,)`` (0: only non-finite simulations there,
    a location the GP never sees).  Torch needs no fixed-capacity buffer (nothing is compiled for a
    shape), so the tensors hold the used locations only.

    Acquisitions repeat simulations at the chain's points, so the GP sees each location once with
    noise ``sigma^2 / n`` (the mean of ``n`` simulations is sufficient for the latent value there); the
    scatter within locations enters the marginal likelihood exactly (:func:`log_marginal_likelihood`)."""

    u: Tensor
    mean: Tensor
    sumsq: Tensor
    n: Tensor

    @property
    def count(self) -> int:
        return int(self.u.shape[0])

    @property
    def mask(self) -> Tensor:
        return self.n > 0


def empty_data(dim: int, stat_dim: int, dtype: torch.dtype | None = None) -> SurrogateData:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    zeros = torch.zeros(0, stat_dim, dtype=dtype)
    return SurrogateData(torch.zeros(0, dim, dtype=dtype), zeros, zeros.clone(), torch.zeros(0, dtype=torch.long))


def add_simulations(data: SurrogateData, row: int, u: Tensor, stats: Tensor) -> SurrogateData:
    """Merge the simulations ``stats`` ``(k, d)`` at the location ``u`` ``(D,)`` into slot ``row``
    (``row == count`` opens a new slot).  Non-finite simulations are left out (the caller counts
    them).  Chan et al.'s pairwise update of mean and sum of squares."""
    dtype = data.mean.dtype
    keep = finite_rows(stats)
    nb = int(keep.sum())
    x = torch.where(keep[:, None], stats.to(dtype), torch.zeros((), dtype=dtype))
    mb = x.sum(0) / max(nb, 1)
    ssb = torch.where(keep[:, None], (x - mb) ** 2, torch.zeros((), dtype=dtype)).sum(0)
    if row == data.count:
        zero = torch.zeros(1, data.mean.shape[1], dtype=dtype)
        data = SurrogateData(
            torch.cat([data.u, u.to(data.u.dtype).reshape(1, -1)]),
            torch.cat([data.mean, zero]),
            torch.cat([data.sumsq, zero]),
            torch.cat([data.n, torch.zeros(1, dtype=torch.long)]),
        )
    na, ma, ssa = int(data.n[row]), data.mean[row], data.sumsq[row]
    n = na + nb
    w = nb / max(n, 1)
    mean, sumsq, counts = data.mean.clone(), data.sumsq.clone(), data.n.clone()
    mean[row] = ma + w * (mb - ma)
    sumsq[row] = ssa + ssb + na * w * (mb - ma) ** 2
    counts[row] = n
    return SurrogateData(data.u, mean, sumsq, counts)


def add_design(data: SurrogateData, u: Tensor, stats: Tensor, repeats: int = 1) -> SurrogateData:
    """One new slot per location of the initial design: ``u`` ``(k, D)``, ``stats`` ``(k * repeats, d)``,
    the ``repeats`` simulations of location ``i`` in rows ``i * repeats ... (i + 1) * repeats - 1``."""
    for i in range(u.shape[0]):
        data = add_simulations(data, data.count, u[i], stats[i * repeats : (i + 1) * repeats])
    return data


def pooled_noise_variance(data: SurrogateData) -> tuple[Tensor, int]:
    """Each statistic's simulator variance from repeated simulations: the pooled within-location
    variance ``sum_i SS_i / sum_i (n_i - 1)`` ``(d,)`` (unbiased for a homoscedastic simulator; ``SS_i``
    the sum of squared deviations of location ``i``'s ``n_i`` finite simulations) and its degrees of
    freedom ``sum_i (n_i - 1)`` (0: no location holds two simulations, the variance is then 0)."""
    mask = data.mask
    dof = int((data.n[mask] - 1).sum())
    return data.sumsq[mask].sum(0) / max(dof, 1), dof
