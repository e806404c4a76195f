"""Backend-free halves of deterministic variational inference (DVI) for Bayesian MLPs.

Wu, Nowozin, Meeds, Turner, Hernandez-Lobato & Gaunt, "Deterministic Variational Inference for
Robust Bayesian Neural Networks", ICLR 2019 (arXiv:1810.03958).  Both backends build a
:class:`DVIConfig` from their arguments and check the data with :func:`check_dvi_data`, so a bad
argument gives the same message in NumPyro and in Pyro.

Network layout (``sizes = (d_0, d_1, ..., d_L)``): ``L`` linear layers, ReLU between them, no
activation after the last.  What the last layer outputs depends on the likelihood:

* ``"homoscedastic"``: ``D = d_L`` regression means; the noise variance is one learnt number per
  output (a point estimate, not part of q).
* ``"heteroscedastic"``: ``d_L = 2 D``; columns ``[:D]`` are the means and ``[D:]`` the log noise
  variances of ``D`` regression targets.
* ``"categorical"``: ``d_L = K`` logits of ``K`` classes.
"""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.validation import (
    check_choice,
    check_finite_array,
    check_non_negative,
    check_numeric,
    check_positive,
    check_positive_int,
)

COVARIANCES = ("full", "diag")
LIKELIHOODS = ("heteroscedastic", "homoscedastic", "categorical")
PRIORS = ("empirical_bayes", "gaussian")

#: The inverse-gamma shape of the empirical-Bayes hyperprior used by the paper's published code.
DEFAULT_EB_ALPHA = 4.4798


@dataclass(frozen=True)
class DVIConfig:
    """A DVI network: layer sizes, covariance tracking, likelihood and prior.

    ``sizes``: ``(d_0, ..., d_L)``, at least two positive integers.
    ``covariance``: ``"full"`` (DVI: activation covariances ``(d, d)`` per datum) or ``"diag"`` (dDVI:
    variances only).
    ``likelihood``: ``"heteroscedastic"``, ``"homoscedastic"`` or ``"categorical"`` (module docstring).
    ``prior``: ``"gaussian"`` (every weight and bias ``~ N(0, prior_variance)``) or ``"empirical_bayes"``
    (per weight tensor ``w_i ~ N(0, s)``, ``s ~ InvGamma(eb_alpha, beta)`` with ``beta = (eb_alpha + 1)
    prior_variance``, so that the hyperprior's mode ``beta / (alpha + 1)`` is ``prior_variance``; ``s`` is
    set to its closed-form optimum given q, see ``numpyro_ext.infer.dvi.priors``).
    ``prior_variance``: a number > 0, or one per layer (``L`` numbers), used for weights and biases.
    ``eb_alpha``: the hyperprior's shape, > 0.
    """

    sizes: tuple[int, ...]
    covariance: str = "full"
    likelihood: str = "heteroscedastic"
    prior: str = "empirical_bayes"
    prior_variance: float | tuple[float, ...] = 1.0
    eb_alpha: float = DEFAULT_EB_ALPHA

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sizes", check_sizes("sizes", self.sizes))
        check_choice("covariance", self.covariance, COVARIANCES)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("prior", self.prior, PRIORS)
        if self.likelihood == "heteroscedastic" and self.sizes[-1] % 2:
            raise ValueError(
                "sizes: a heteroscedastic network outputs a mean and a log variance per target, so its last "
                f"size must be even (2 x the number of targets), got sizes={self.sizes!r}"
            )
        if self.likelihood == "categorical" and self.sizes[-1] < 2:
            raise ValueError(f"sizes: a categorical network needs at least 2 outputs (classes), got {self.sizes!r}")
        set_(self, "prior_variance", self._layer_variances(self.prior_variance))
        set_(self, "eb_alpha", check_positive("eb_alpha", self.eb_alpha))

    def _layer_variances(self, value: Any) -> tuple[float, ...]:
        num_layers = len(self.sizes) - 1
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return (check_positive("prior_variance", value),) * num_layers
        if isinstance(value, str) or not hasattr(value, "__len__"):
            raise TypeError(f"prior_variance must be a number > 0 or one per layer, got {value!r}")
        if len(value) != num_layers:
            raise ValueError(
                f"prior_variance must be a number > 0 or one per layer ({num_layers} layers), got {len(value)}"
                f" values: {tuple(value)!r}"
            )
        return tuple(check_positive(f"prior_variance[{i}]", v) for i, v in enumerate(value))

    @property
    def num_layers(self) -> int:
        """``L``, the number of linear layers."""
        return len(self.sizes) - 1

    @property
    def num_targets(self) -> int:
        """``D``: regression targets per datum (``d_L`` or ``d_L / 2``), or ``K`` classes."""
        return self.sizes[-1] // 2 if self.likelihood == "heteroscedastic" else self.sizes[-1]

    def eb_beta(self, layer: int) -> float:
        """The inverse-gamma scale ``beta = (alpha + 1) prior_variance[layer]`` (hyperprior mode at
        ``prior_variance[layer]``)."""
        return (self.eb_alpha + 1.0) * self.prior_variance[layer]


def check_sizes(name: str, value: Any) -> tuple[int, ...]:
    """``value`` as a tuple of at least two positive integers (an MLP's layer widths)."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of positive integers (input, hidden..., output), got {value!r}")
    sizes = tuple(value)
    ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not ok or len(sizes) < 2:
        raise ValueError(
            f"{name} must hold at least two positive integers (input, hidden..., output), got {tuple(value)!r}"
        )
    return tuple(int(s) for s in sizes)


def check_dvi_data(config: DVIConfig, x: Any, y: Any = None) -> None:
    """Check inputs ``x`` ``(n, d_0)`` and, when given, targets ``y`` against ``config``.

    Regression targets are ``(n,)`` (one target) or ``(n, D)``, finite; categorical targets are integer
    labels ``(n,)`` in ``[0, K)``.  Only shapes are checked for arrays that are not concrete (inside
    ``jit``); values (NaN, labels out of range) are checked on concrete arrays.  Errors name ``x`` or ``y``.
    """
    check_numeric("x", x)
    shape = tuple(np.shape(x))
    if len(shape) != 2 or shape[1] != config.sizes[0]:
        raise ValueError(
            f"x must have shape (n, {config.sizes[0]}) for sizes={config.sizes!r} (input width {config.sizes[0]}), "
            f"got shape {shape}"
        )
    if is_concrete(x):
        check_finite_array("x", np.asarray(x))
    if y is None:
        return
    check_numeric("y", y)
    y_shape = tuple(np.shape(y))
    if config.likelihood == "categorical":
        if y_shape != (shape[0],):
            raise ValueError(f"y must be integer class labels of shape ({shape[0]},) (one per row of x), got {y_shape}")
        if not np.issubdtype(np.asarray(y).dtype if is_concrete(y) else y.dtype, np.integer):
            raise TypeError(f"y must be integer class labels for likelihood='categorical', got dtype {y.dtype}")
        if is_concrete(y):
            labels = np.asarray(y)
            bad = (labels < 0) | (labels >= config.num_targets)
            if bad.any():
                raise ValueError(
                    f"y must hold class labels in [0, {config.num_targets}) for sizes={config.sizes!r}, got "
                    f"{labels[bad][0]} at index {int(np.argmax(bad))}"
                )
        return
    d = config.num_targets
    if y_shape not in ((shape[0], d),) + (((shape[0],),) if d == 1 else ()):
        want = f"({shape[0]},) or ({shape[0]}, 1)" if d == 1 else f"({shape[0]}, {d})"
        raise ValueError(
            f"y must have shape {want}: one row per row of x and {d} target(s) for sizes={config.sizes!r} and "
            f"likelihood={config.likelihood!r}, got shape {y_shape}"
        )
    if is_concrete(y):
        check_finite_array("y", np.asarray(y))


def is_concrete(value: Any) -> bool:
    """Whether ``value`` holds numbers now (not a JAX tracer inside ``jit``/``grad``), so its values can be
    checked on the host.  Backend-free: a tracer is recognised by JAX's own class only if JAX is loaded."""
    # a tracer exists only once JAX is imported: never import it here (the Pyro backend calls this too)
    if "jax" not in sys.modules:
        return True
    from jax.core import Tracer

    return not isinstance(value, Tracer)


def check_positive_values(name: str, value: Any) -> None:
    """Raise a ``ValueError`` naming ``name`` when a concrete array holds an entry that is not > 0 (or NaN)."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    bad = ~(arr > 0)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be > 0 everywhere (variances), got {int(bad.sum())} entries that are not (first at index "
            f"{first}, value {float(arr[first])!r})"
        )


def minibatch_scale(batch_size: int, num_data: int | None, kl_weight: Any = 1.0) -> float:
    """``N / n``, the factor of a minibatch's log-likelihood sum in the ELBO (1 for the whole data set), after
    checking ``num_data`` (an integer ``N >= n``, or None) and a concrete number ``kl_weight`` (>= 0); a
    ``kl_weight`` array (traced or a tensor) is not checked."""
    if num_data is not None and (isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < batch_size):
        raise ValueError(
            f"num_data must be an integer >= the batch size {batch_size} (the data set's size), got {num_data!r}"
        )
    if isinstance(kl_weight, int | float):
        check_non_negative("kl_weight", kl_weight)
    return 1.0 if num_data is None else num_data / batch_size


#: The fields of one layer's variational parameters, in both backends' ``LayerParams`` order.
LAYER_FIELDS = ("weight_mean", "weight_log_std", "bias_mean", "bias_log_std")


def check_param_shapes(layers: Any, log_noise_variance: Any, config: DVIConfig) -> None:
    """Raise a ``ValueError`` naming ``params`` when the layers' shapes (arrays or tensors, fields
    :data:`LAYER_FIELDS`) or the homoscedastic log noise variance do not fit ``config``."""
    if len(layers) != config.num_layers:
        raise ValueError(f"params has {len(layers)} layers but sizes={config.sizes!r} has {config.num_layers}")
    for i, (layer, d_in, d_out) in enumerate(zip(layers, config.sizes[:-1], config.sizes[1:], strict=True)):
        expected = ((d_in, d_out), (d_in, d_out), (d_out,), (d_out,))
        for field, shape, value in zip(LAYER_FIELDS, expected, layer, strict=True):
            if tuple(np.shape(value)) != shape:
                raise ValueError(
                    f"params.layers[{i}].{field} must have shape {shape} for sizes={config.sizes!r}, "
                    f"got {tuple(np.shape(value))}"
                )
    if config.likelihood == "homoscedastic":
        got = None if log_noise_variance is None else tuple(np.shape(log_noise_variance))
        if got != (config.num_targets,):
            raise ValueError(
                f"params.log_noise_variance must have shape ({config.num_targets},) for "
                f"likelihood='homoscedastic', got {got}"
            )


def elbo_data(loss_name: str, args: tuple, kwargs: dict, how: str) -> tuple[Any, Any]:
    """``x`` and ``y`` from a DVI model/guide's arguments ``(x, y, num_data=None)``, positional or by keyword;
    ``how`` names the backend's SVI calls in the error when they are missing."""
    values = dict(zip(("x", "y"), args, strict=False))
    values.update({k: v for k, v in kwargs.items() if k in ("x", "y")})
    if "x" not in values or values.get("y") is None:
        raise ValueError(
            f"{loss_name} needs the data: call {how} with (x, y) (and num_data= for a minibatch), "
            f"got arguments {tuple(type(a).__name__ for a in args)} and keywords {sorted(kwargs)}"
        )
    return values["x"], values["y"]


__all__ = [
    "LAYER_FIELDS",
    "check_param_shapes",
    "elbo_data",
    "COVARIANCES",
    "DEFAULT_EB_ALPHA",
    "DVIConfig",
    "LIKELIHOODS",
    "PRIORS",
    "check_dvi_data",
    "check_positive_values",
    "check_sizes",
    "is_concrete",
    "minibatch_scale",
]


def dvi_inference_data(
    weights: dict[str, Any],
    predictive: Any,
    log_likelihood: Any,
    y: Any,
    observed_name: str,
    num_chains: int = 4,
):
    """ArviZ ``InferenceData`` of a Bayesian MLP's weight draws and posterior predictive (both backends).

    ``weights``: name -> ``(S, ...)`` draws from q; ``predictive``: ``(S, n[, D])`` draws of ``y``;
    ``log_likelihood``: ``(S, n)`` ``log p(y_i | x_i, w_s)``; ``y``: the observed ``(n[, D])``.  The ``S``
    independent draws are split into ``num_chains`` chains (``S`` must be a multiple), so that ``az.loo`` and
    ``az.plot_ppc`` apply.
    """
    from adapters.inference_data import as_numpy, from_samples

    num_chains = check_positive_int("num_chains", num_chains)
    num_samples = as_numpy(log_likelihood).shape[0]
    if num_samples % num_chains:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains})")

    def chains(value: Any) -> np.ndarray:
        value = as_numpy(value)
        return value.reshape(num_chains, num_samples // num_chains, *value.shape[1:])

    observed = as_numpy(y)
    predictive = as_numpy(predictive)
    if predictive.ndim == observed.ndim + 2:  # (S, n, 1) draws of a 1-D target
        predictive = predictive[..., 0]
    return from_samples(
        {name: chains(value) for name, value in weights.items()},
        # float64: ArviZ's Pareto smoothing of float32 log-likelihoods can return NaN
        log_likelihood={observed_name: chains(log_likelihood).astype(np.float64)},
        observed_data={observed_name: observed},
        posterior_predictive={observed_name: chains(predictive)},
    )
