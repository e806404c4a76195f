"""DVI for a Bayesian MLP, pure torch: parameters, moment forward pass, KL, ELBO, predictions.

Wu et al. 2019 (arXiv:1810.03958); the torch twin of :mod:`numpyro_ext.infer.dvi.core` (same names).  q over the
weights is mean-field Gaussian; the ELBO

    ELBO(q) = sum_i E_q[log p(y_i | x_i, w)] - KL(q || p)

is computed without sampling: the output moments come from :mod:`pyro_ext.infer.dvi.moments` (Sec. 3), the
expected log-likelihood from :mod:`pyro_ext.infer.dvi.likelihoods`, the KL from :mod:`pyro_ext.infer.dvi.priors`
(Sec. 4).  The network is described by :class:`adapters.dvi.DVIConfig`; its variational parameters are
:class:`DVIParams` (NamedTuples of tensors).

Moving weights between the backends: :func:`convert_params` takes a NumPyro ``DVIParams`` (any object with the
same fields, holding arrays of any kind) or a parameter dictionary keyed by the site names both backends use
(``"<name>.layers.<i>.<field>"``, ``"<name>.log_noise_variance"``) and returns torch :class:`DVIParams`;
:func:`params_as_dict` writes torch parameters as such a dictionary of numpy arrays, which NumPyro's
``DVIMLP.params_from`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from adapters.dvi import DVIConfig, check_dvi_data, check_param_shapes, minibatch_scale
from adapters.validation import check_finite_array, check_positive
from pyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    categorical_predictive_probabilities,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
    regression_predictive,
)
from pyro_ext.infer.dvi.moments import (
    GaussianMoments,
    host_values,
    linear_certain_moments,
    linear_moments,
    relu_moments,
)
from pyro_ext.infer.dvi.priors import empirical_bayes_kl, gaussian_kl

__all__ = [
    "DVIParams",
    "ELBOTerms",
    "LayerParams",
    "check_params",
    "convert_params",
    "dvi_elbo",
    "dvi_elbo_terms",
    "dvi_kl",
    "dvi_predict",
    "expected_log_likelihood",
    "init_params",
    "minibatch_scale",
    "mlp_moments",
    "params_as_dict",
]

Tensor = torch.Tensor


class LayerParams(NamedTuple):
    """q of one linear layer: ``W ~ N(weight_mean, exp(weight_log_std)^2)`` ``(d_in, d_out)`` and
    ``b ~ N(bias_mean, exp(bias_log_std)^2)`` ``(d_out,)``, entrywise independent."""

    weight_mean: Tensor
    weight_log_std: Tensor
    bias_mean: Tensor
    bias_log_std: Tensor

    @property
    def weight_var(self) -> Tensor:
        """``V = exp(2 weight_log_std)``."""
        return torch.exp(2.0 * self.weight_log_std)

    @property
    def bias_var(self) -> Tensor:
        """``v = exp(2 bias_log_std)``."""
        return torch.exp(2.0 * self.bias_log_std)


class DVIParams(NamedTuple):
    """All variational parameters: one :class:`LayerParams` per layer, and for
    ``likelihood="homoscedastic"`` the log noise variance ``(D,)`` (a point estimate; ``None`` otherwise)."""

    layers: tuple[LayerParams, ...]
    log_noise_variance: Tensor | None = None


class ELBOTerms(NamedTuple):
    """The ELBO's parts: ``expected_log_likelihood`` ``(n,)`` per datum and ``kl`` (scalar)."""

    expected_log_likelihood: Tensor
    kl: Tensor


def _check_config(config: Any) -> None:
    if not isinstance(config, DVIConfig):
        raise TypeError(f"config must be an adapters.dvi.DVIConfig, got {type(config).__name__}")


def init_params(
    config: DVIConfig,
    *,
    init_std_ratio: float = 0.1,
    dtype: torch.dtype | None = None,
    device: Any = None,
    generator: torch.Generator | None = None,
) -> DVIParams:
    """Initial q for ``config``: weight means ``~ N(0, 2 / d_in)`` (He), bias means 0, every standard
    deviation ``init_std_ratio * sqrt(2 / d_in)``; homoscedastic log noise variances 0.

    ``dtype``: the parameters' float type (default: torch's default dtype); ``generator``: the torch random
    generator of the weight means (default: the global one, seeded by ``pyro.set_rng_seed``).
    """
    _check_config(config)
    ratio = check_positive("init_std_ratio", init_std_ratio)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    layers = []
    for d_in, d_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        std = math.sqrt(2.0 / d_in)
        log_std = math.log(ratio * std)
        draws = torch.randn((d_in, d_out), dtype=dtype, device=device, generator=generator)
        layers.append(
            LayerParams(
                weight_mean=std * draws,
                weight_log_std=torch.full((d_in, d_out), log_std, dtype=dtype, device=device),
                bias_mean=torch.zeros((d_out,), dtype=dtype, device=device),
                bias_log_std=torch.full((d_out,), log_std, dtype=dtype, device=device),
            )
        )
    noise = None
    if config.likelihood == "homoscedastic":
        noise = torch.zeros((config.num_targets,), dtype=dtype, device=device)
    return DVIParams(tuple(layers), noise)


def check_params(params: DVIParams, config: DVIConfig) -> None:
    """Raise a ``ValueError`` naming ``params`` when its layers' shapes do not match ``config.sizes``."""
    if not isinstance(params, DVIParams):
        raise TypeError(f"params must be a DVIParams (from init_params or convert_params), got {type(params).__name__}")
    check_param_shapes(params.layers, params.log_noise_variance, config)


def convert_params(
    value: Any,
    config: DVIConfig,
    *,
    name: str = "dvi",
    dtype: torch.dtype | None = None,
    device: Any = None,
) -> DVIParams:
    """Torch :class:`DVIParams` from the variational parameters of either backend.

    ``value``: an object with ``layers`` (each with ``weight_mean``, ``weight_log_std``, ``bias_mean``,
    ``bias_log_std``) and ``log_noise_variance``, such as NumPyro's ``DVIParams`` (JAX or numpy arrays) or this
    module's; or a mapping keyed by the site names ``"<name>.layers.<i>.<field>"`` and
    ``"<name>.log_noise_variance"`` (NumPyro's ``svi.get_params(state)``, or :func:`params_as_dict`).
    ``dtype``: default torch's default dtype.  Shapes are checked against ``config``, and every value must be finite.
    """
    _check_config(config)
    dtype = torch.get_default_dtype() if dtype is None else dtype

    def tensor(array: Any) -> Tensor:
        if isinstance(array, torch.Tensor):
            return array.detach().to(dtype=dtype, device=device)
        return torch.as_tensor(np.array(array), dtype=dtype, device=device)  # a copy: JAX's arrays are read-only

    fields = LayerParams._fields
    if isinstance(value, Mapping):
        keys = [f"{name}.layers.{i}.{field}" for i in range(config.num_layers) for field in fields]
        if config.likelihood == "homoscedastic":
            keys.append(f"{name}.log_noise_variance")
        missing = [key for key in keys if key not in value]
        if missing:
            raise KeyError(
                f"value lacks the parameters {missing[:4]} of a network with sizes={config.sizes!r} and site prefix "
                f"{name!r} (keys '<name>.layers.<i>.<field>', '<name>.log_noise_variance')"
            )
        layers = tuple(
            LayerParams(*(tensor(value[f"{name}.layers.{i}.{field}"]) for field in fields))
            for i in range(config.num_layers)
        )
        noise = tensor(value[f"{name}.log_noise_variance"]) if config.likelihood == "homoscedastic" else None
    elif hasattr(value, "layers"):
        layers = tuple(LayerParams(*(tensor(getattr(layer, field)) for field in fields)) for layer in value.layers)
        raw = getattr(value, "log_noise_variance", None)
        noise = None if raw is None or config.likelihood != "homoscedastic" else tensor(raw)
    else:
        raise TypeError(
            "value must be a DVIParams (either backend's) or a mapping of site names to arrays, got "
            f"{type(value).__name__}"
        )
    params = DVIParams(layers, noise)
    check_params(params, config)
    for i, layer in enumerate(params.layers):
        for field, array in zip(fields, layer, strict=True):
            check_finite_array(f"value: layers[{i}].{field}", host_values(array))
    if noise is not None:
        check_finite_array("value: log_noise_variance", host_values(noise))
    return params


def params_as_dict(params: DVIParams, *, name: str = "dvi") -> dict[str, np.ndarray]:
    """``params`` as numpy arrays keyed by the site names of both backends (``"<name>.layers.<i>.<field>"``,
    ``"<name>.log_noise_variance"``): NumPyro's ``DVIMLP.params_from`` reads it (after ``jnp.asarray``)."""
    out = {}
    for i, layer in enumerate(params.layers):
        for field, array in zip(LayerParams._fields, layer, strict=True):
            out[f"{name}.layers.{i}.{field}"] = np.array(host_values(array))  # a copy: .numpy() shares the memory
    if params.log_noise_variance is not None:
        out[f"{name}.log_noise_variance"] = np.array(host_values(params.log_noise_variance))
    return out


def as_data(value: Any, like: Tensor) -> Any:
    """Data as tensors on the parameters' device (regression values in their dtype; labels as they are)."""
    if value is None:
        return None
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if tensor.dtype.is_floating_point:
        tensor = tensor.to(like.dtype)
    return tensor.to(like.device)


def mlp_moments(params: DVIParams, x: Tensor, config: DVIConfig) -> GaussianMoments:
    """Output moments of the network at certain inputs ``x`` ``(n, d_0)``: mean ``(n, d_L)`` and covariance
    ``(n, d_L, d_L)`` (``"full"``) or variances ``(n, d_L)`` (``"diag"``).

    First layer (L1)-(L2) with certain inputs, then ReLU (R1)-(R4) and a linear layer, layer by layer.  The first
    layer's units are independent (independent weight columns, certain inputs), so its ReLU moments are the exact
    diagonal ones in either mode and full covariances start at the second linear layer: with one hidden layer,
    DVI and dDVI give the same output means and variances, both exact.
    """
    check_params(params, config)
    check_dvi_data(config, host_values(x))
    full = config.covariance == "full"
    first = params.layers[0]
    x = as_data(x, first.weight_mean)
    moments = linear_certain_moments(
        x, first.weight_mean, first.weight_var, first.bias_mean, first.bias_var, full=full and config.num_layers == 1
    )
    for layer in params.layers[1:]:
        moments = linear_moments(
            relu_moments(moments), layer.weight_mean, layer.weight_var, layer.bias_mean, layer.bias_var, full=full
        )
    return moments


def dvi_kl(params: DVIParams, config: DVIConfig) -> Tensor:
    """``KL(q || p)`` summed over all weight matrices and bias vectors: (K1) with ``config.prior_variance``
    (``prior="gaussian"``) or (K1) at the empirical-Bayes optimum (K2), one ``s*`` per tensor."""
    total = torch.zeros((), dtype=params.layers[0].weight_mean.dtype, device=params.layers[0].weight_mean.device)
    for i, layer in enumerate(params.layers):
        for mean, var in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var)):
            if config.prior == "gaussian":
                total = total + gaussian_kl(mean, var, config.prior_variance[i])
            else:
                total = total + empirical_bayes_kl(mean, var, config.eb_alpha, config.eb_beta(i))
    return total


def expected_log_likelihood(outputs: GaussianMoments, y: Tensor, params: DVIParams, config: DVIConfig) -> Tensor:
    """``E_q[log p(y_i | f_i)]`` ``(n,)`` for Gaussian outputs with moments ``outputs``, by ``config.likelihood``."""
    y = as_data(y, outputs.mean)
    if config.likelihood == "heteroscedastic":
        return heteroscedastic_expected_log_likelihood(outputs, y)
    if config.likelihood == "homoscedastic":
        return homoscedastic_expected_log_likelihood(outputs, y, params.log_noise_variance)
    return categorical_expected_log_likelihood(outputs, y)


def dvi_elbo_terms(params: DVIParams, x: Tensor, y: Tensor, config: DVIConfig) -> ELBOTerms:
    """The expected log-likelihood of each datum ``(n,)`` and the KL (scalar), without sampling."""
    check_dvi_data(config, host_values(x), host_values(y))
    outputs = mlp_moments(params, x, config)
    return ELBOTerms(expected_log_likelihood(outputs, y, params, config), dvi_kl(params, config))


def dvi_elbo(
    params: DVIParams,
    x: Tensor,
    y: Tensor,
    config: DVIConfig,
    *,
    num_data: int | None = None,
    kl_weight: float | Tensor = 1.0,
) -> Tensor:
    """The deterministic ELBO ``(N / n) sum_i E_q[log p(y_i | x_i, w)] - kl_weight KL(q || p)`` (scalar).

    ``x`` ``(n, d_0)``, ``y`` ``(n,)``/``(n, D)`` (integer labels ``(n,)`` for ``"categorical"``): a minibatch
    of a data set of ``num_data = N`` points (default ``n``).  ``kl_weight`` (``lambda`` in [0, 1]) is the
    paper's KL warm-up factor; 1 gives the ELBO.  Maximise it (``-dvi_elbo`` is the loss).
    """
    scale = minibatch_scale(np.shape(x)[0], num_data, kl_weight)
    terms = dvi_elbo_terms(params, x, y, config)
    return scale * terms.expected_log_likelihood.sum() - kl_weight * terms.kl


def dvi_predict(params: DVIParams, x: Tensor, config: DVIConfig) -> tuple[Tensor, Tensor]:
    """Predictive mean and variance of ``y`` at ``x`` ``(n, d_0)``, in closed form.

    Regression: ``(n, D)`` each, ``E[y] = mu_m`` and ``Var(y) = S_mm + E[noise variance]``.  Categorical: the
    class probabilities ``P`` ``(n, K)`` (second-order approximation of ``E[softmax(f)]``) and ``P (1 - P)``.
    """
    outputs = mlp_moments(params, x, config)
    if config.likelihood == "categorical":
        probs = categorical_predictive_probabilities(outputs)
        return probs, probs * (1.0 - probs)
    return regression_predictive(outputs, config.likelihood, params.log_noise_variance)
