"""Moment propagation through a Bayesian MLP (Wu et al. 2019, arXiv:1810.03958, Sec. 3 and Appendix A).

Pure JAX functions (``jit``/``vmap``/``grad``-able).  Activations are summarised per datum by their
mean and covariance, :class:`GaussianMoments`: ``mean`` ``(n, d)`` and ``cov`` ``(n, d, d)`` (DVI,
``"full"``) or the variances ``(n, d)`` (dDVI, ``"diag"``).  Weights are mean-field Gaussian:
``W_ij ~ N(M_ij, V_ij)`` ``(d_in, d_out)``, bias ``b_j ~ N(m_j, v_j)`` ``(d_out,)``, independent of each
other and of the layer input ``h``; a layer computes ``a = h W + b``.

Linear layer (exact for any input distribution with these two moments; paper Sec. 3, "linear layers")::

    (L1)  E[a_j]         = sum_i E[h_i] M_ij + m_j
    (L2)  Cov(a_j, a_l)  = sum_ik M_ij Cov(h_i, h_k) M_kl + delta_jl (sum_i E[h_i^2] V_ij + v_j),
          E[h_i^2] = Var(h_i) + E[h_i]^2.

(L2) follows from ``E[W_ij W_kl] = M_ij M_kl + delta_ik delta_jl V_ij``.  With certain inputs ``x``
(the first layer) ``Cov(h) = 0`` and ``Cov(a)`` is diagonal: ``Var(a_j) = sum_i x_i^2 V_ij + v_j``.  dDVI
keeps only the diagonal of (L2): ``Var(a_j) = sum_i Var(h_i) M_ij^2 + sum_i E[h_i^2] V_ij + v_j``.

ReLU of a Gaussian ``a ~ N(mu, Sigma)``, ``sigma_j^2 = Sigma_jj``, ``z_j = mu_j / sigma_j``, ``phi`` and
``Phi`` the standard normal density ``exp(-z^2 / 2) / sqrt(2 pi)`` and distribution function::

    (R1)  E[relu(a_j)]   = mu_j Phi(z_j) + sigma_j phi(z_j)                    (exact)
    (R2)  Var(relu(a_j)) = sigma^2 Phi + mu^2 Phi (1 - Phi) + mu sigma phi (1 - 2 Phi) - sigma^2 phi^2   (exact)

(R2) is ``E[relu(a)^2] - E[relu(a)]^2`` with ``E[relu(a)^2] = (mu^2 + sigma^2) Phi + mu sigma phi``, written
so that no ``z^2`` appears (finite for ``sigma -> 0``).  Off the diagonal (paper Sec. 3 and Appendix A),
with ``rho = Sigma_jl / (sigma_j sigma_l)`` and unit-variance ``u = a / sigma``, Price's theorem gives
``d Cov(relu(u_j), relu(u_l)) / d rho = P(u_j > 0, u_l > 0)`` and ``d P / d rho = phi_2(z_j, z_l; rho)``, the
bivariate normal density at ``(z_j, z_l)``; integrating twice from ``rho = 0`` (where the covariance is 0)::

    (R3)  Cov(relu(a_j), relu(a_l))
              = sigma_j sigma_l [rho Phi(z_j) Phi(z_l) + int_0^rho (rho - s) phi_2(z_j, z_l; s) ds].

The integral has no elementary closed form.  The paper replaces it by ``rho Q``, a Gaussian in ``(z_j, z_l)``
that matches the integral and its second-order Taylor expansion in ``z`` at ``z = 0`` (its value and the
``z^2`` and ``z_j z_l`` coefficients are elementary integrals in ``s``)::

    (R4)  Cov(relu(a_j), relu(a_l)) ~= Sigma_jl [Phi(z_j) Phi(z_l) + Q(z_j, z_l, rho)],
          Q = A / (2 pi) exp(-r (z_j^2 + z_l^2) / 2 + t z_j z_l),
          A = arcsin(rho) - rho / (1 + sqrt(1 - rho^2)),
          r = rho / ((1 + sqrt(1 - rho^2)) A),     t = (arcsin(rho) - rho) / (rho A).

(R4) is exact at ``z = 0`` (any ``rho``), at ``rho = 0`` and in the limits ``|z| -> inf``; elsewhere its
error is small and bounded: ``tests/numpyro_ext/test_dvi_moments.py`` measures it against (R3) by
quadrature.  Note the normaliser ``1 / sqrt(2 pi)`` of ``phi`` (a known slip in public ports writes
``sqrt(2) pi``).  The diagonal of the full ReLU covariance is the exact (R2), not (R4) at ``rho = 1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

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

Array = jax.Array

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# |z| beyond which Q of (R4) is below exp(-r z^2 / 2) <= exp(-625) = 0: clipping keeps z^2 finite.
_Z_CLIP = 50.0


class GaussianMoments(NamedTuple):
    """Mean ``(n, d)`` and covariance ``(n, d, d)`` ("full") or variances ``(n, d)`` ("diag") of
    activations, one row per datum."""

    mean: Array
    cov: Array

    @property
    def is_full(self) -> bool:
        """Whether :attr:`cov` holds full covariance matrices (one more axis than :attr:`mean`)."""
        return self.cov.ndim == self.mean.ndim + 1

    @property
    def variance(self) -> Array:
        """The variances ``(n, d)``: the diagonal of :attr:`cov` (or :attr:`cov` itself when diagonal)."""
        return jnp.diagonal(self.cov, axis1=-2, axis2=-1) if self.is_full else self.cov


def standard_normal_pdf(z: Array) -> Array:
    """``phi(z) = exp(-z^2 / 2) / sqrt(2 pi)``, elementwise."""
    return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _check_weights(weight_mean, weight_var, bias_mean, bias_var, d_in: int | None = None) -> None:
    """Shapes of one layer's variational moments (static, so checked under ``jit`` too)."""
    m_shape = jnp.shape(weight_mean)
    if len(m_shape) != 2:
        raise ValueError(f"weight_mean must be a matrix (d_in, d_out), got shape {m_shape}")
    if jnp.shape(weight_var) != m_shape:
        raise ValueError(f"weight_var must have weight_mean's shape {m_shape}, got {jnp.shape(weight_var)}")
    for name, value in (("bias_mean", bias_mean), ("bias_var", bias_var)):
        if jnp.shape(value) != (m_shape[1],):
            raise ValueError(f"{name} must have shape ({m_shape[1]},) (d_out of weight_mean), got {jnp.shape(value)}")
    check_positive_values("weight_var", weight_var)
    check_positive_values("bias_var", bias_var)
    if d_in is not None and d_in != m_shape[0]:
        raise ValueError(
            f"weight_mean must have {d_in} rows (the layer input's width), got shape {m_shape}: the sizes of "
            "consecutive layers do not match"
        )


def linear_certain_moments(
    x: Array, weight_mean: Array, weight_var: Array, bias_mean: Array, bias_var: Array, *, full: bool = True
) -> GaussianMoments:
    """Moments of ``a = x W + b`` for certain inputs ``x`` ``(n, d_in)`` (the first layer; (L1), (L2)).

    ``E[a] = x M + m`` ``(n, d_out)``; ``Var(a) = x^2 V + v``, exact, and the covariance is diagonal:
    returned as ``(n, d_out, d_out)`` matrices with ``full=True``, as variances ``(n, d_out)`` otherwise.
    """
    _check_weights(weight_mean, weight_var, bias_mean, bias_var)
    if jnp.ndim(x) != 2 or jnp.shape(x)[1] != jnp.shape(weight_mean)[0]:
        raise ValueError(f"x must have shape (n, {jnp.shape(weight_mean)[0]}) (weight_mean's rows), got {jnp.shape(x)}")
    mean = x @ weight_mean + bias_mean
    var = (x * x) @ weight_var + bias_var
    return GaussianMoments(mean, _diag_matrix(var) if full else var)


def linear_moments(
    inputs: GaussianMoments,
    weight_mean: Array,
    weight_var: Array,
    bias_mean: Array,
    bias_var: Array,
    *,
    full: bool | None = None,
) -> GaussianMoments:
    """Moments of ``a = h W + b`` for a random input ``h`` with moments ``inputs`` ((L1), (L2); exact).

    ``E[a] = E[h] M + m`` ``(n, d_out)``.  ``Cov(a) = M^T Cov(h) M + diag(E[h^2] V + v)``, where a diagonal
    input ``cov`` ``(n, d_in)`` means independent inputs (exact after a first layer, whose units are independent;
    dDVI's assumption after that).  ``full``: return the covariances ``(n, d_out, d_out)`` (True) or only the
    variances ``Var(h) M^2 + E[h^2] V + v`` (computed from the input's diagonal, as dDVI does) ``(n, d_out)``
    (False); default: as the input.
    """
    mean_h = inputs.mean
    _check_weights(weight_mean, weight_var, bias_mean, bias_var, d_in=jnp.shape(mean_h)[-1])
    full = inputs.is_full if full is None else bool(full)
    var_h = inputs.variance
    mean = mean_h @ weight_mean + bias_mean
    own = (var_h + mean_h * mean_h) @ weight_var + bias_var
    if not full:
        return GaussianMoments(mean, var_h @ (weight_mean * weight_mean) + own)
    if inputs.is_full:
        propagated = jnp.einsum("nik,ij,kl->njl", inputs.cov, weight_mean, weight_mean)
    else:
        propagated = jnp.einsum("ni,ij,il->njl", var_h, weight_mean, weight_mean)
    return GaussianMoments(mean, propagated + _diag_matrix(own))


def relu_mean_var(mean: Array, var: Array) -> tuple[Array, Array]:
    """Exact mean and variance of ``relu(a)`` for ``a ~ N(mean, var)``, elementwise ((R1), (R2)).

    ``var`` must be > 0 (it is floored at the dtype's smallest normal number so that ``var -> 0``
    gives ``relu(mean)`` and 0).  Returns ``(E[relu(a)], Var(relu(a)))``, each with the broadcast shape.
    """
    check_positive_values("var", var)
    tiny = jnp.finfo(jnp.result_type(mean, var)).tiny
    sigma = jnp.sqrt(jnp.maximum(var, tiny))
    z = mean / sigma
    cdf, cdf_neg, pdf = ndtr(z), ndtr(-z), standard_normal_pdf(z)
    relu_mean = mean * cdf + sigma * pdf
    relu_var = sigma * sigma * (cdf - pdf * pdf) + mean * mean * cdf * cdf_neg + mean * sigma * pdf * (cdf_neg - cdf)
    return relu_mean, jnp.maximum(relu_var, 0.0)


def _small_rho_threshold(dtype) -> float:
    """Below this ``|rho|``, (R4)'s ``r`` and ``t`` come from their Taylor series: ``t``'s numerator
    ``arcsin(rho) - rho`` cancels (relative error ~ eps / rho^2), the series' next terms are ~ rho^4."""
    return float(jnp.finfo(dtype).eps) ** (1.0 / 6.0)


def relu_correlation_term(z1: Array, z2: Array, rho: Array) -> Array:
    """``Phi(z1) Phi(z2) + Q(z1, z2, rho)`` of (R4): ``Cov(relu(a_j), relu(a_l)) ~= Sigma_jl`` times this.

    ``z1``, ``z2``: standardised means ``mu / sigma``; ``rho``: the correlation, clipped to
    ``[-1 + 1e-6, 1 - 1e-6]`` (keeps ``sqrt(1 - rho^2)``'s derivative finite).  Near ``rho = 0`` ``r`` and ``t``
    use their series ``r = 1 + rho^2 / 6``, ``t = rho / 3 + 11 rho^3 / 90`` (the limit ``rho -> 0`` of the closed
    forms), selected with a "double where" so that gradients stay finite.  Broadcasts its arguments.
    """
    dtype = jnp.result_type(z1, z2, rho, jnp.float32)
    rho = jnp.clip(jnp.asarray(rho, dtype), -1.0 + 1e-6, 1.0 - 1e-6)
    small = jnp.abs(rho) < _small_rho_threshold(dtype)
    safe_rho = jnp.where(small, 0.5, rho)
    root = jnp.sqrt(1.0 - safe_rho * safe_rho)
    arcsin = jnp.arcsin(safe_rho)
    big_a = arcsin - safe_rho / (1.0 + root)
    r = jnp.where(small, 1.0 + rho * rho / 6.0, safe_rho / ((1.0 + root) * big_a))
    t = jnp.where(small, rho / 3.0 + 11.0 * rho**3 / 90.0, (arcsin - safe_rho) / (safe_rho * big_a))
    # A itself is well conditioned near 0 (A = rho / 2 + rho^3 / 24 + ...): its closed form at the true rho.
    root_true = jnp.sqrt(1.0 - rho * rho)
    a_true = jnp.arcsin(rho) - rho / (1.0 + root_true)
    u1, u2 = jnp.clip(z1, -_Z_CLIP, _Z_CLIP), jnp.clip(z2, -_Z_CLIP, _Z_CLIP)
    q = a_true / (2.0 * math.pi) * jnp.exp(-0.5 * r * (u1 * u1 + u2 * u2) + t * u1 * u2)
    return ndtr(z1) * ndtr(z2) + q


def relu_moments(pre: GaussianMoments) -> GaussianMoments:
    """Moments of ``relu(a)`` for Gaussian pre-activations ``a`` with moments ``pre``.

    Diagonal ``pre`` (dDVI): the exact means and variances (R1), (R2), ``(n, d)`` each.  Full ``pre``
    ``(n, d, d)``: exact means and diagonal, off-diagonal entries by the paper's approximation (R4).
    """
    var = pre.variance
    relu_mean, relu_var = relu_mean_var(pre.mean, var)
    if not pre.is_full:
        return GaussianMoments(relu_mean, relu_var)
    tiny = jnp.finfo(jnp.result_type(pre.mean, var)).tiny
    sigma = jnp.sqrt(jnp.maximum(var, tiny))
    z = pre.mean / sigma
    rho = pre.cov / (sigma[..., :, None] * sigma[..., None, :])
    off = pre.cov * relu_correlation_term(z[..., :, None], z[..., None, :], rho)
    eye = jnp.eye(var.shape[-1], dtype=bool)
    return GaussianMoments(relu_mean, jnp.where(eye, _diag_matrix(relu_var), off))


def _diag_matrix(var: Array) -> Array:
    """``(..., d)`` -> ``(..., d, d)`` diagonal matrices."""
    return var[..., :, None] * jnp.eye(var.shape[-1], dtype=var.dtype)
