"""KL terms of DVI's ELBO for a mean-field Gaussian q, in torch (Wu et al. 2019, arXiv:1810.03958, Sec. 4).

The torch twin of :mod:`numpyro_ext.infer.dvi.priors`.  One weight tensor (or bias vector) has ``m`` entries
``w_i ~ q = N(mu_i, v_i)``, independent.  Fixed Gaussian prior ``w_i ~ N(0, s)``:

    (K1)  KL(q || N(0, s)) = 1/2 sum_i [(v_i + mu_i^2) / s - 1 - log(v_i / s)].

Empirical Bayes: ``w_i ~ N(0, s)`` per tensor, ``s ~ InvGamma(alpha, beta)``; ``s`` is set to the minimiser of
``KL(q || N(0, s)) - log p(s)``,

    (K2)  s* = (sum_i (v_i + mu_i^2) + 2 beta) / (m + 2 alpha + 2),

and the KL term is (K1) at ``s = s*`` (gradients flow through ``s*``).
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_ext.infer.dvi.moments import check_positive_tensor, float_tensors

__all__ = ["empirical_bayes_kl", "empirical_bayes_prior_variance", "gaussian_kl"]

Tensor = torch.Tensor


def _check_pair(mean, var) -> tuple[Tensor, Tensor]:
    if tuple(np.shape(mean)) != tuple(np.shape(var)):
        raise ValueError(f"var must have mean's shape {tuple(np.shape(mean))}, got {tuple(np.shape(var))}")
    check_positive_tensor("var", var)
    mean, var = float_tensors(mean, var)
    return mean, var


def gaussian_kl(mean: Tensor, var: Tensor, prior_var: Tensor | float) -> Tensor:
    """(K1): ``KL(prod_i N(mean_i, var_i) || prod_i N(0, prior_var))``, a scalar summed over all entries.

    ``mean``, ``var``: any shape, the same; ``prior_var`` > 0, scalar or broadcastable to ``mean``.
    """
    mean, var = _check_pair(mean, var)
    check_positive_tensor("prior_var", prior_var)
    ratio = var / prior_var
    return 0.5 * torch.sum(ratio + mean * mean / prior_var - 1.0 - torch.log(ratio))


def empirical_bayes_prior_variance(mean: Tensor, var: Tensor, alpha: float, beta: float) -> Tensor:
    """(K2): ``s* = (sum_i (var_i + mean_i^2) + 2 beta) / (m + 2 alpha + 2)``, a scalar (``m = mean.numel()``)."""
    mean, var = _check_pair(mean, var)
    return (torch.sum(var + mean * mean) + 2.0 * beta) / (mean.numel() + 2.0 * alpha + 2.0)


def empirical_bayes_kl(mean: Tensor, var: Tensor, alpha: float, beta: float) -> Tensor:
    """``KL(q || N(0, s*))`` with ``s*`` of (K2) for this tensor's hyperprior ``InvGamma(alpha, beta)``."""
    return gaussian_kl(mean, var, empirical_bayes_prior_variance(mean, var, alpha, beta))
