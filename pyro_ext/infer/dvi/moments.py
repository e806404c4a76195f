"""Moment propagation through a Bayesian MLP, in torch (Wu et al. 2019, arXiv:1810.03958, Sec. 3 and Appendix A).

The torch twin of :mod:`numpyro_ext.infer.dvi.moments` (same names, same equations): pure functions on
tensors, differentiable by autograd, float32 or float64 as their inputs.  Activations are summarised per
datum by :class:`GaussianMoments`: ``mean`` ``(n, d)`` and ``cov`` ``(n, d, d)`` (DVI, ``"full"``) or the
variances ``(n, d)`` (dDVI, ``"diag"``).  Weights are mean-field Gaussian: ``W_ij ~ N(M_ij, V_ij)``
``(d_in, d_out)``, bias ``b_j ~ N(m_j, v_j)`` ``(d_out,)``, independent of each other and of the layer input
``h``; a layer computes ``a = h W + b``.

Linear layer (exact for any input distribution with these two moments; paper Sec. 3)::

    (L1)  E[a_j]         = sum_i E[h_i] M_ij + m_j
    (L2)  Cov(a_j, a_l)  = sum_ik M_ij Cov(h_i, h_k) M_kl + delta_jl (sum_i E[h_i^2] V_ij + v_j),

from ``E[W_ij W_kl] = M_ij M_kl + delta_ik delta_jl V_ij``.  Certain inputs ``x`` (the first layer):
``Var(a_j) = sum_i x_i^2 V_ij + v_j`` and no covariance.  dDVI keeps the diagonal of (L2) only.

ReLU of ``a ~ N(mu, Sigma)``, ``sigma_j^2 = Sigma_jj``, ``z_j = mu_j / sigma_j``, ``phi(z) = exp(-z^2 / 2) /
sqrt(2 pi)`` (note ``sqrt(2 pi)``, not the ``sqrt(2) pi`` of some public ports) and ``Phi`` its distribution
function::

    (R1)  E[relu(a_j)]   = mu_j Phi(z_j) + sigma_j phi(z_j)                                    (exact)
    (R2)  Var(relu(a_j)) = sigma^2 (Phi - phi^2) + mu^2 Phi (1 - Phi) + mu sigma phi (1 - 2 Phi)   (exact)
    (R3)  Cov(relu(a_j), relu(a_l))
              = sigma_j sigma_l [rho Phi(z_j) Phi(z_l) + int_0^rho (rho - s) phi_2(z_j, z_l; s) ds]
    (R4)  Cov(relu(a_j), relu(a_l)) ~= Sigma_jl [Phi(z_j) Phi(z_l) + Q(z_j, z_l, rho)],
          Q = A / (2 pi) exp(-r (z_j^2 + z_l^2) / 2 + t z_j z_l),     A = arcsin(rho) - rho / (1 + sqrt(1 - rho^2)),
          r = rho / ((1 + sqrt(1 - rho^2)) A),     t = (arcsin(rho) - rho) / (rho A).

(R3) is exact (Price's theorem, ``rho = Sigma_jl / (sigma_j sigma_l)``, ``phi_2`` the bivariate normal density);
(R4) is the paper's closed-form approximation of it, exact at ``z = 0``, at ``rho = 0`` and as ``|z| -> inf``, with
an error of at most 0.0102 ``sigma_j sigma_l`` over ``z`` in ``[-4, 4]^2``, ``|rho| <= 0.99`` (measured in
``tests/numpyro_ext/test_dvi_moments.py``; ``tests/pyro_ext/test_dvi_moments.py`` checks the torch version against
Monte Carlo within that bound).  The diagonal of the full ReLU covariance is the exact (R2).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from adapters.dvi import check_positive_values

__all__ = [
    "GaussianMoments",
    "linear_certain_moments",
    "linear_moments",
    "relu_correlation_term",
    "relu_mean_var",
    "relu_moments",
    "standard_normal_pdf",
]

Tensor = torch.Tensor

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# |z| beyond which Q of (R4) is below exp(-r z^2 / 2) <= exp(-625) = 0: clipping keeps z^2 finite.
_Z_CLIP = 50.0


def host_values(value: Any) -> Any:
    """A tensor's values as a numpy array (detached, on the CPU) for the shared host-side checks of
    :mod:`adapters.dvi`; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def check_positive_tensor(name: str, value: Any) -> None:
    """``adapters.dvi.check_positive_values`` on a tensor (variances must be > 0, not NaN)."""
    check_positive_values(name, host_values(value))


class GaussianMoments(NamedTuple):
    """Mean ``(n, d)`` and covariance ``(n, d, d)`` ("full") or variances ``(n, d)`` ("diag") of
    activations, one row per datum."""

    mean: Tensor
    cov: Tensor

    @property
    def is_full(self) -> bool:
        """Whether :attr:`cov` holds full covariance matrices (one more axis than :attr:`mean`)."""
        return self.cov.dim() == self.mean.dim() + 1

    @property
    def variance(self) -> Tensor:
        """The variances ``(n, d)``: the diagonal of :attr:`cov` (or :attr:`cov` itself when diagonal)."""
        return torch.diagonal(self.cov, dim1=-2, dim2=-1) if self.is_full else self.cov


def standard_normal_pdf(z: Tensor) -> Tensor:
    """``phi(z) = exp(-z^2 / 2) / sqrt(2 pi)``, elementwise."""
    z = torch.as_tensor(z, dtype=torch.get_default_dtype()) if not isinstance(z, torch.Tensor) else z
    return _INV_SQRT_2PI * torch.exp(-0.5 * z * z)


def _check_weights(weight_mean, weight_var, bias_mean, bias_var, d_in: int | None = None) -> None:
    """Shapes and positivity of one layer's variational moments."""
    m_shape = tuple(np.shape(weight_mean))
    if len(m_shape) != 2:
        raise ValueError(f"weight_mean must be a matrix (d_in, d_out), got shape {m_shape}")
    if tuple(np.shape(weight_var)) != m_shape:
        raise ValueError(f"weight_var must have weight_mean's shape {m_shape}, got {tuple(np.shape(weight_var))}")
    for name, value in (("bias_mean", bias_mean), ("bias_var", bias_var)):
        if tuple(np.shape(value)) != (m_shape[1],):
            raise ValueError(
                f"{name} must have shape ({m_shape[1]},) (d_out of weight_mean), got {tuple(np.shape(value))}"
            )
    check_positive_tensor("weight_var", weight_var)
    check_positive_tensor("bias_var", bias_var)
    if d_in is not None and d_in != m_shape[0]:
        raise ValueError(
            f"weight_mean must have {d_in} rows (the layer input's width), got shape {m_shape}: the sizes of "
            "consecutive layers do not match"
        )


def float_tensors(*values: Any) -> list[Tensor]:
    """Tensors of one floating dtype (the inputs' promoted float type; numpy arrays keep float64)."""
    tensors = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in values]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [t.to(dtype) for t in tensors]


def linear_certain_moments(
    x: Tensor, weight_mean: Tensor, weight_var: Tensor, bias_mean: Tensor, bias_var: Tensor, *, full: bool = True
) -> GaussianMoments:
    """Moments of ``a = x W + b`` for certain inputs ``x`` ``(n, d_in)`` (the first layer; (L1), (L2)).

    ``E[a] = x M + m`` ``(n, d_out)``; ``Var(a) = x^2 V + v``, exact, and the covariance is diagonal:
    returned as ``(n, d_out, d_out)`` matrices with ``full=True``, as variances ``(n, d_out)`` otherwise.
    """
    _check_weights(weight_mean, weight_var, bias_mean, bias_var)
    if len(np.shape(x)) != 2 or np.shape(x)[1] != np.shape(weight_mean)[0]:
        raise ValueError(
            f"x must have shape (n, {np.shape(weight_mean)[0]}) (weight_mean's rows), got {tuple(np.shape(x))}"
        )
    x, weight_mean, weight_var, bias_mean, bias_var = float_tensors(x, weight_mean, weight_var, bias_mean, bias_var)
    mean = x @ weight_mean + bias_mean
    var = (x * x) @ weight_var + bias_var
    return GaussianMoments(mean, torch.diag_embed(var) if full else var)


def linear_moments(
    inputs: GaussianMoments,
    weight_mean: Tensor,
    weight_var: Tensor,
    bias_mean: Tensor,
    bias_var: Tensor,
    *,
    full: bool | None = None,
) -> GaussianMoments:
    """Moments of ``a = h W + b`` for a random input ``h`` with moments ``inputs`` ((L1), (L2); exact).

    ``E[a] = E[h] M + m`` ``(n, d_out)``.  ``Cov(a) = M^T Cov(h) M + diag(E[h^2] V + v)``; a diagonal input
    ``cov`` ``(n, d_in)`` means independent inputs.  ``full``: return covariances ``(n, d_out, d_out)`` (True)
    or only the variances ``Var(h) M^2 + E[h^2] V + v`` ``(n, d_out)`` (False, dDVI); default: as the input.
    """
    mean_h = inputs.mean
    _check_weights(weight_mean, weight_var, bias_mean, bias_var, d_in=mean_h.shape[-1])
    full = inputs.is_full if full is None else bool(full)
    var_h = inputs.variance
    weight_mean, weight_var, bias_mean, bias_var = (
        t.to(mean_h.dtype) for t in float_tensors(weight_mean, weight_var, bias_mean, bias_var)
    )
    mean = mean_h @ weight_mean + bias_mean
    own = (var_h + mean_h * mean_h) @ weight_var + bias_var
    if not full:
        return GaussianMoments(mean, var_h @ (weight_mean * weight_mean) + own)
    if inputs.is_full:
        propagated = torch.einsum("nik,ij,kl->njl", inputs.cov, weight_mean, weight_mean)
    else:
        propagated = torch.einsum("ni,ij,il->njl", var_h, weight_mean, weight_mean)
    return GaussianMoments(mean, propagated + torch.diag_embed(own))


def relu_mean_var(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Exact mean and variance of ``relu(a)`` for ``a ~ N(mean, var)``, elementwise ((R1), (R2)).

    ``var`` must be > 0 (floored at the dtype's smallest normal number, so ``var -> 0`` gives ``relu(mean)``
    and 0).  Returns ``(E[relu(a)], Var(relu(a)))``, each with the broadcast shape.
    """
    check_positive_tensor("var", var)
    mean, var = float_tensors(mean, var)
    sigma = torch.sqrt(torch.clamp(var, min=torch.finfo(var.dtype).tiny))
    z = mean / sigma
    cdf, cdf_neg, pdf = torch.special.ndtr(z), torch.special.ndtr(-z), standard_normal_pdf(z)
    relu_mean = mean * cdf + sigma * pdf
    relu_var = sigma * sigma * (cdf - pdf * pdf) + mean * mean * cdf * cdf_neg + mean * sigma * pdf * (cdf_neg - cdf)
    return relu_mean, torch.clamp(relu_var, min=0.0)


def relu_correlation_term(z1: Tensor, z2: Tensor, rho: Tensor) -> Tensor:
    """``Phi(z1) Phi(z2) + Q(z1, z2, rho)`` of (R4): ``Cov(relu(a_j), relu(a_l)) ~= Sigma_jl`` times this.

    ``z1``, ``z2``: standardised means ``mu / sigma``; ``rho``: the correlation, clipped to
    ``[-1 + 1e-6, 1 - 1e-6]``.  Near ``rho = 0`` (below ``eps^(1/6)``, where ``arcsin(rho) - rho`` cancels)
    ``r`` and ``t`` use their series ``r = 1 + rho^2 / 6``, ``t = rho / 3 + 11 rho^3 / 90``; the closed forms
    are evaluated at a safe ``rho`` there so that gradients stay finite.  Broadcasts its arguments.
    """
    z1, z2, rho = float_tensors(z1, z2, rho)
    rho = torch.clamp(rho, -1.0 + 1e-6, 1.0 - 1e-6)
    small = rho.abs() < torch.finfo(rho.dtype).eps ** (1.0 / 6.0)
    safe_rho = torch.where(small, torch.full_like(rho, 0.5), rho)
    root = torch.sqrt(1.0 - safe_rho * safe_rho)
    arcsin = torch.asin(safe_rho)
    big_a = arcsin - safe_rho / (1.0 + root)
    r = torch.where(small, 1.0 + rho * rho / 6.0, safe_rho / ((1.0 + root) * big_a))
    t = torch.where(small, rho / 3.0 + 11.0 * rho**3 / 90.0, (arcsin - safe_rho) / (safe_rho * big_a))
    # A itself is well conditioned near 0 (A = rho / 2 + rho^3 / 24 + ...): its closed form at the true rho.
    a_true = torch.asin(rho) - rho / (1.0 + torch.sqrt(1.0 - rho * rho))
    u1, u2 = torch.clamp(z1, -_Z_CLIP, _Z_CLIP), torch.clamp(z2, -_Z_CLIP, _Z_CLIP)
    q = a_true / (2.0 * math.pi) * torch.exp(-0.5 * r * (u1 * u1 + u2 * u2) + t * u1 * u2)
    return torch.special.ndtr(z1) * torch.special.ndtr(z2) + q


def relu_moments(pre: GaussianMoments) -> GaussianMoments:
    """Moments of ``relu(a)`` for Gaussian pre-activations ``a`` with moments ``pre``.

    Diagonal ``pre`` (dDVI): the exact means and variances (R1), (R2), ``(n, d)`` each.  Full ``pre``
    ``(n, d, d)``: exact means and diagonal, off-diagonal entries by the paper's approximation (R4).
    """
    var = pre.variance
    relu_mean, relu_var = relu_mean_var(pre.mean, var)
    if not pre.is_full:
        return GaussianMoments(relu_mean, relu_var)
    sigma = torch.sqrt(torch.clamp(var, min=torch.finfo(var.dtype).tiny))
    z = pre.mean / sigma
    rho = pre.cov / (sigma[..., :, None] * sigma[..., None, :])
    off = pre.cov * relu_correlation_term(z[..., :, None], z[..., None, :], rho)
    eye = torch.eye(var.shape[-1], dtype=torch.bool, device=var.device)
    return GaussianMoments(relu_mean, torch.where(eye, torch.diag_embed(relu_var), off))
