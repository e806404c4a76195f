"""MCVI: the Monte Carlo baseline of DVI in torch, same network, same q, same prior (Wu et al. 2019, arXiv:1810.03958).

The torch twin of :mod:`numpyro_ext.infer.dvi.mcvi` (same names; randomness from torch's global generator, seeded
by ``pyro.set_rng_seed``, or an explicit ``generator``).  The expected log-likelihood is estimated by sampling with
the local reparameterisation trick (Kingma, Salimans & Welling 2015, arXiv:1506.02557): for a mean-field Gaussian
q and a given input ``h`` ``(d_in,)`` to a linear layer the pre-activations are independent Gaussians

    (LR)  a_j ~ N(sum_i h_i mu_ij + mu_j, sum_i h_i^2 sigma_ij^2 + sigma_j^2),

drawn per datum and per draw; each hidden layer's ReLU is applied to the draw, which is the next layer's (certain)
input, and the last layer's draw ``f`` enters ``log p(y | f)``.  The KL is DVI's closed form
(:func:`~pyro_ext.infer.dvi.core.dvi_kl`), so the MCVI ELBO is an unbiased estimate of the ELBO, equal in
expectation to DVI's wherever DVI's output moments are exact (no hidden layer, or one hidden layer and a
homoscedastic or diagonal likelihood).
"""

from __future__ import annotations

import math

import torch

from adapters.dvi import DVIConfig, check_dvi_data, minibatch_scale
from adapters.validation import check_positive_int
from pyro_ext.infer.dvi.core import DVIParams, as_data, check_params, dvi_kl, expected_log_likelihood
from pyro_ext.infer.dvi.moments import GaussianMoments, host_values

__all__ = [
    "log_predictive_density",
    "mcvi_elbo",
    "mcvi_expected_log_likelihood",
    "output_log_likelihood",
    "sample_outputs",
]

# Draws per chunk of log_predictive_density: at most this many hidden activations (S_chunk x n x width) at once.
_CHUNK_ACTIVATIONS = 2**22

Tensor = torch.Tensor


def sample_outputs(
    params: DVIParams, x: Tensor, config: DVIConfig, num_samples: int = 1, *, generator: torch.Generator | None = None
) -> Tensor:
    """Draws of the network's outputs ``(num_samples, n, d_L)`` at inputs ``x`` ``(n, d_0)``, by (LR) layer by layer.

    Every datum and every draw gets its own noise (q's weights are not shared between data), which is what makes
    the per-datum estimator unbiased for the per-datum expectation.  Differentiable in ``params``.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    first = params.layers[0].weight_mean
    h = as_data(x, first).expand(num_samples, -1, -1)
    for i, layer in enumerate(params.layers):
        mean = h @ layer.weight_mean + layer.bias_mean
        var = (h * h) @ layer.weight_var + layer.bias_var
        noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        h = mean + torch.sqrt(var) * noise
        if i < len(params.layers) - 1:
            h = torch.relu(h)
    return h


def output_log_likelihood(outputs: Tensor, params: DVIParams, y: Tensor, config: DVIConfig) -> Tensor:
    """``log p(y_i | f_i)`` at given network outputs ``f`` ``(n, d_L)`` or ``(S, n, d_L)`` (draws of
    :func:`sample_outputs`, or of whole weight matrices), summed over each datum's targets: ``(n,)`` or ``(S, n)``.

    The closed-form expected log-likelihood of a point mass (zero variance), which (G1) and (C1) give exactly.
    """
    batch = outputs.shape[:-1]
    flat = outputs.reshape(-1, outputs.shape[-1])
    targets = as_data(y, flat)
    if len(batch) == 2:  # the same targets for each of the S draws
        targets = targets.expand(batch[0], *targets.shape).reshape(-1, *targets.shape[1:])
    point = GaussianMoments(flat, torch.zeros_like(flat))
    return expected_log_likelihood(point, targets, params, config).reshape(batch)


def mcvi_expected_log_likelihood(
    params: DVIParams,
    x: Tensor,
    y: Tensor,
    config: DVIConfig,
    num_samples: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte Carlo estimate ``(n,)`` of ``E_q[log p(y_i | x_i, w)]``: the mean of ``log p(y_i | f_i)``
    (:func:`output_log_likelihood`) over ``num_samples`` draws of :func:`sample_outputs`.  Unbiased; its variance
    shrinks as ``1 / num_samples``."""
    check_params(params, config)
    check_dvi_data(config, host_values(x), host_values(y))
    outputs = sample_outputs(params, x, config, num_samples, generator=generator)
    return output_log_likelihood(outputs, params, y, config).mean(0)


def mcvi_elbo(
    params: DVIParams,
    x: Tensor,
    y: Tensor,
    config: DVIConfig,
    *,
    num_samples: int = 1,
    num_data: int | None = None,
    kl_weight: float | Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of the ELBO ``(N / n) sum_i E_q[log p(y_i | x_i, w)] - kl_weight KL(q || p)`` (scalar).

    Arguments as :func:`~pyro_ext.infer.dvi.core.dvi_elbo`, plus ``num_samples`` draws per datum and the torch
    ``generator`` (default: the global one).  Its expectation is DVI's ELBO wherever DVI's output moments are exact.
    """
    scale = minibatch_scale(len(x), num_data, kl_weight)
    ell = mcvi_expected_log_likelihood(params, x, y, config, num_samples, generator=generator)
    return scale * ell.sum() - kl_weight * dvi_kl(params, config)


def log_predictive_density(
    params: DVIParams,
    x: Tensor,
    y: Tensor,
    config: DVIConfig,
    num_samples: int = 1000,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte Carlo estimate ``(n,)`` of each test point's log predictive density ``log E_q[p(y_i | x_i, w)]``:
    ``log (1/S) sum_s p(y_i | f_is)`` with ``S = num_samples`` draws of :func:`sample_outputs` (the output's
    marginal at ``x_i`` is all a per-point density needs).  Consistent as ``S`` grows; its bias,
    ``-Var / (2 S E^2)`` to first order, is what the UCI protocol's "test log-likelihood" accepts too.  The draws
    are made in chunks (at most ~4e6 hidden activations at once), so large test sets fit in memory.  No gradient.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    check_params(params, config)
    check_dvi_data(config, host_values(x), host_values(y))
    chunk = max(1, _CHUNK_ACTIVATIONS // (len(x) * max(config.sizes)))
    pieces = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            outputs = sample_outputs(params, x, config, min(chunk, num_samples - start), generator=generator)
            pieces.append(output_log_likelihood(outputs, params, y, config))
    return torch.logsumexp(torch.cat(pieces), dim=0) - math.log(num_samples)
