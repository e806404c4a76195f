"""The Pyro shell of DVI: a Bayesian MLP as a ``PyroModule``, and the DVI and MCVI losses for Pyro's ``SVI``.

Wu et al. 2019 (arXiv:1810.03958); the twin of :mod:`numpyro_ext.infer.dvi.network` (same names).
:class:`DVIMLP` holds the variational parameters as ``PyroParam`` s (Pyro parameter names
``"<name>.layers.<i>.<field>"`` and ``"<name>.log_noise_variance"``, the NumPyro twin's site names), its
:meth:`DVIMLP.model` is the Bayesian network (prior over the weights, likelihood over ``y``) and its
:meth:`DVIMLP.guide` is q (mean-field normal weights).  :class:`DVI_ELBO` is a ``pyro.infer.ELBO`` whose loss is
the negative deterministic ELBO, so any Pyro optimizer trains the network with Pyro's own ``SVI``::

    pyro.clear_param_store()
    net = DVIMLP((1, 50, 2), likelihood="heteroscedastic")
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 1e-2}), DVI_ELBO(kl_warmup_steps=1000))
    for _ in range(5000):
        svi.step(x, y)
    mean, var = net.predict(x_test)

KL warm-up: ``loss_and_grads`` (what ``SVI.step`` calls) weighs the KL by ``lambda_t = min(1, t / kl_warmup_steps)``
at its ``t``-th call (0 at the first, the ELBO once ``t >= kl_warmup_steps``); the count is the loss object's
:attr:`DVI_ELBO.num_steps`.  ``loss`` (``SVI.evaluate_loss``) is the full negative ELBO.  Like every
``PyroModule``, two networks of the same ``name`` share Pyro's global parameter store: give them different names
or call ``pyro.clear_param_store()`` between them.

Weights move between backends with :meth:`DVIMLP.load_params` (a NumPyro ``DVIParams``, NumPyro's
``svi.get_params(state)`` dictionary, or a torch :class:`~pyro_ext.infer.dvi.core.DVIParams`) and
:meth:`DVIMLP.param_dict` (numpy arrays by site name, for NumPyro's ``DVIMLP.params_from``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn

from adapters.dvi import DEFAULT_EB_ALPHA, DVIConfig, check_dvi_data, dvi_inference_data, elbo_data
from adapters.validation import check_choice, check_positive_int
from pyro_ext.infer.dvi.core import (
    DVIParams,
    LayerParams,
    as_data,
    convert_params,
    dvi_elbo,
    dvi_predict,
    init_params,
    mlp_moments,
    params_as_dict,
)
from pyro_ext.infer.dvi.mcvi import log_predictive_density, mcvi_elbo, output_log_likelihood
from pyro_ext.infer.dvi.moments import GaussianMoments, host_values
from pyro_ext.infer.dvi.priors import empirical_bayes_prior_variance

__all__ = ["DVIMLP", "DVI_ELBO", "MCVI_ELBO"]

Tensor = torch.Tensor

ACTIVATIONS = ("relu",)


class _Layer(PyroModule):
    """q of one linear layer: the four :class:`~pyro_ext.infer.dvi.core.LayerParams` fields as ``PyroParam`` s."""

    def __init__(self, layer: LayerParams) -> None:
        super().__init__()
        for field, value in zip(LayerParams._fields, layer, strict=True):
            setattr(self, field, PyroParam(value))


class DVIMLP(PyroModule):
    """A Bayesian MLP trained by deterministic variational inference (a ``PyroModule``).

    Arguments are those of :class:`adapters.dvi.DVIConfig` (``sizes``, ``covariance``, ``likelihood``, ``prior``,
    ``prior_variance``, ``eb_alpha``), plus ``activation`` (only ``"relu"``: the closed-form moments are ReLU's),
    ``name`` (the prefix of the Pyro parameter and sample site names), and the initialisation of
    :func:`~pyro_ext.infer.dvi.core.init_params` (``init_std_ratio``, ``dtype``; weight means from torch's global
    generator, seeded by ``pyro.set_rng_seed``).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        covariance: str = "full",
        likelihood: str = "heteroscedastic",
        prior: str = "empirical_bayes",
        prior_variance: float | Sequence[float] = 1.0,
        eb_alpha: float = DEFAULT_EB_ALPHA,
        *,
        name: str = "dvi",
        init_std_ratio: float = 0.1,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the prefix of the Pyro site names), got {name!r}")
        super().__init__(name)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.config = DVIConfig(tuple(sizes), covariance, likelihood, prior, prior_variance, eb_alpha)
        self.name = name
        params = init_params(self.config, init_std_ratio=init_std_ratio, dtype=dtype)
        self.layers = PyroModule[nn.ModuleList]([_Layer(layer) for layer in params.layers])
        if params.log_noise_variance is not None:
            self.log_noise_variance = PyroParam(params.log_noise_variance)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"DVIMLP(sizes={c.sizes}, covariance={c.covariance!r}, likelihood={c.likelihood!r}, prior={c.prior!r}, "
            f"name={self.name!r})"
        )

    # -- parameters -------------------------------------------------------------------------------------------------

    @pyro_method
    def get_params(self) -> DVIParams:
        """The current variational parameters (the Pyro parameter store's values; differentiable)."""
        layers = tuple(LayerParams(*(getattr(layer, f) for f in LayerParams._fields)) for layer in self.layers)
        noise = self.log_noise_variance if self.config.likelihood == "homoscedastic" else None
        return DVIParams(layers, noise)

    @pyro_method
    def load_params(self, value: Any) -> DVIMLP:
        """Set the variational parameters from ``value`` (any form
        :func:`~pyro_ext.infer.dvi.core.convert_params` reads: NumPyro's or torch's ``DVIParams``, or a dictionary
        keyed by this network's site names, e.g. NumPyro's ``svi.get_params(state)`` or :meth:`param_dict`).
        Values are copied in place (kept in this network's dtype and device), so an optimizer's references stay
        valid.  Returns the network."""
        current = self.get_params()
        ref = current.layers[0].weight_mean
        new = convert_params(value, self.config, name=self.name, dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            for module, layer in zip(self.layers, new.layers, strict=True):
                for field, array in zip(LayerParams._fields, layer, strict=True):
                    getattr(module, f"{field}_unconstrained").copy_(array)
            if new.log_noise_variance is not None:
                self.log_noise_variance_unconstrained.copy_(new.log_noise_variance)
        return self

    def param_dict(self) -> dict[str, np.ndarray]:
        """The variational parameters as numpy arrays keyed by site name (``"<name>.layers.<i>.<field>"``,
        ``"<name>.log_noise_variance"``): NumPyro's ``DVIMLP.params_from`` reads it (after ``jnp.asarray``)."""
        return params_as_dict(self.get_params(), name=self.name)

    # -- closed forms -----------------------------------------------------------------------------------------------

    @pyro_method
    def apply(self, x: Tensor) -> GaussianMoments:
        """Output moments at inputs ``x`` ``(n, d_0)``: mean ``(n, d_L)``, covariance ``(n, d_L, d_L)`` (full) or
        variances ``(n, d_L)`` (diag)."""
        return mlp_moments(self.get_params(), x, self.config)

    def forward(self, x: Tensor) -> GaussianMoments:
        """:meth:`apply`."""
        return self.apply(x)

    @pyro_method
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form predictive mean and variance (:func:`~pyro_ext.infer.dvi.core.dvi_predict`)."""
        return dvi_predict(self.get_params(), x, self.config)

    @pyro_method
    def elbo(self, x: Tensor, y: Tensor, *, num_data: int | None = None, kl_weight: float | Tensor = 1.0) -> Tensor:
        """The deterministic ELBO (:func:`~pyro_ext.infer.dvi.core.dvi_elbo`), differentiable."""
        return dvi_elbo(self.get_params(), x, y, self.config, num_data=num_data, kl_weight=kl_weight)

    @pyro_method
    def sample_weights(self, num_samples: int, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Joint draws of every weight tensor from q, named as the model's sample sites:
        ``"<name>.layers.<i>.weight"`` ``(num_samples, d_in, d_out)`` and ``"<name>.layers.<i>.bias"``
        ``(num_samples, d_out)`` (no gradient; torch's global generator unless ``generator`` is given)."""
        num_samples = check_positive_int("num_samples", num_samples)
        draws = {}
        with torch.no_grad():
            for i, layer in enumerate(self.get_params().layers):
                for part, mean, log_std in (
                    ("weight", layer.weight_mean, layer.weight_log_std),
                    ("bias", layer.bias_mean, layer.bias_log_std),
                ):
                    noise = torch.randn(
                        (num_samples, *mean.shape), dtype=mean.dtype, device=mean.device, generator=generator
                    )
                    draws[self._site(i, part)] = mean + torch.exp(log_std) * noise
        return draws

    def outputs_at(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network's outputs ``(S, n, d_L)`` at inputs ``x`` ``(n, d_0)`` for ``S`` weight draws
        (:meth:`sample_weights`)."""
        h = as_data(x, weights[self._site(0, "weight")])
        for i in range(self.config.num_layers):
            h = h @ weights[self._site(i, "weight")] + weights[self._site(i, "bias")][:, None, :]
            if i < self.config.num_layers - 1:
                h = torch.relu(h)
        return h

    @pyro_method
    def sample_predictive(self, x: Tensor, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Monte Carlo draws of ``y`` at ``x`` ``(n, d_0)``: whole weight matrices from q (shared by all data of a
        draw, :meth:`sample_weights`), then the likelihood's noise.  Returns ``(num_samples, n, D)`` (regression)
        or integer labels ``(num_samples, n)`` (categorical): a check of :meth:`predict`'s closed forms."""
        check_dvi_data(self.config, host_values(x))
        outputs = self.outputs_at(self.sample_weights(num_samples, generator=generator), x)
        with torch.no_grad():
            return self._sample_likelihood(outputs, self.get_params().log_noise_variance, generator)

    def _sample_likelihood(
        self, outputs: Tensor, log_noise_variance: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """Draws of ``y`` given network outputs ``(S, n, d_L)``, from ``generator`` (torch distributions' own
        ``sample`` takes none)."""
        likelihood = self._likelihood(outputs, log_noise_variance)
        if self.config.likelihood == "categorical":
            probs = likelihood.probs.reshape(-1, outputs.shape[-1])
            return torch.multinomial(probs, 1, generator=generator).reshape(outputs.shape[:-1])
        noise = torch.randn(likelihood.loc.shape, dtype=outputs.dtype, device=outputs.device, generator=generator)
        return likelihood.loc + likelihood.scale * noise

    @pyro_method
    def log_predictive_density(
        self, x: Tensor, y: Tensor, num_samples: int = 1000, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Each point's log predictive density ``(n,)``, the UCI protocol's test log-likelihood (Monte Carlo,
        :func:`~pyro_ext.infer.dvi.mcvi.log_predictive_density`; its mean is the per-point score)."""
        return log_predictive_density(self.get_params(), x, y, self.config, num_samples, generator=generator)

    @pyro_method
    def to_arviz(
        self,
        x: Tensor,
        y: Tensor,
        num_samples: int = 1000,
        num_chains: int = 4,
        *,
        generator: torch.Generator | None = None,
    ):
        """An ``arviz.InferenceData`` of q's weights and the posterior predictive at ``(x, y)``.

        Groups: ``posterior`` (the weight draws of :meth:`sample_weights`), ``posterior_predictive`` and
        ``log_likelihood`` (``log p(y_i | x_i, w_s)`` per weight draw and datum, summed over targets) under the
        model's observed site ``"<name>.y"``, and ``observed_data``; ``num_samples`` draws split into
        ``num_chains`` chains of independent draws (``adapters.dvi.dvi_inference_data``, shared with NumPyro).
        ``az.plot_ppc``, ``az.loo`` and ``az.compare`` apply.
        """
        check_dvi_data(self.config, host_values(x), host_values(y))
        weights = self.sample_weights(num_samples, generator=generator)
        with torch.no_grad():
            params = self.get_params()
            outputs = self.outputs_at(weights, x)
            predictive = self._sample_likelihood(outputs, params.log_noise_variance, generator)
            log_likelihood = output_log_likelihood(outputs, params, y, self.config)
        return dvi_inference_data(
            {k: host_values(v) for k, v in weights.items()},
            host_values(predictive),
            host_values(log_likelihood),
            host_values(y),
            f"{self.name}.y",
            num_chains,
        )

    def _likelihood(self, outputs: Tensor, log_noise_variance: Tensor | None) -> dist.Distribution:
        """p(y | network outputs): independent normals over the ``D`` targets, or a categorical over classes."""
        likelihood = self.config.likelihood
        if likelihood == "categorical":
            return dist.Categorical(logits=outputs)
        if likelihood == "heteroscedastic":
            d = self.config.num_targets
            return dist.Normal(outputs[..., :d], torch.exp(0.5 * outputs[..., d:]))
        return dist.Normal(outputs, torch.exp(0.5 * log_noise_variance).expand(outputs.shape))

    # -- Pyro model and guide ---------------------------------------------------------------------------------------

    def _site(self, i: int, part: str) -> str:
        return f"{self.name}.layers.{i}.{part}"

    @pyro_method
    def model(self, x: Tensor, y: Tensor | None = None, num_data: int | None = None) -> Tensor:
        """The Bayesian MLP: weights from the prior (``N(0, prior_variance)``, or per tensor ``N(0, s)`` with
        ``s ~ InvGamma(eb_alpha, beta)`` for ``prior="empirical_bayes"``), ``y`` from the likelihood (scaled to
        ``num_data`` points for a minibatch).  Sites ``"<name>.layers.<i>.weight"``/``bias`` (and
        ``..._prior_variance``), ``"<name>.y"``.  Returns the network outputs ``(n, d_L)``."""
        config = self.config
        check_dvi_data(config, host_values(x), host_values(y))
        ref = self.layers[0].weight_mean
        h = as_data(x, ref)
        for i, (d_in, d_out) in enumerate(zip(config.sizes[:-1], config.sizes[1:], strict=True)):
            tensors = []
            for part, shape in (("weight", (d_in, d_out)), ("bias", (d_out,))):
                site = self._site(i, part)
                if config.prior == "gaussian":
                    variance = torch.as_tensor(config.prior_variance[i], dtype=ref.dtype, device=ref.device)
                else:
                    hyper = dist.InverseGamma(
                        torch.as_tensor(config.eb_alpha, dtype=ref.dtype, device=ref.device),
                        torch.as_tensor(config.eb_beta(i), dtype=ref.dtype, device=ref.device),
                    )
                    variance = pyro.sample(f"{site}_prior_variance", hyper)
                prior = dist.Normal(torch.zeros((), dtype=ref.dtype, device=ref.device), variance.sqrt())
                tensors.append(pyro.sample(site, prior.expand(shape).to_event(len(shape))))
            h = h @ tensors[0] + tensors[1]
            if i < config.num_layers - 1:
                h = torch.relu(h)
        noise = self.log_noise_variance if config.likelihood == "homoscedastic" else None
        likelihood = self._likelihood(h, noise)
        targets = as_data(y, ref)
        if targets is not None and config.likelihood != "categorical" and targets.dim() == 1:
            targets = targets[:, None]
        n = h.shape[0]
        event = 0 if config.likelihood == "categorical" else 1
        # x, y are the minibatch already: scale its log-likelihood to num_data points (no subsample indices)
        scale = 1.0 if num_data is None else num_data / n
        with pyro.plate(f"{self.name}.data", n), poutine.scale(scale=scale):
            pyro.sample(f"{self.name}.y", likelihood.to_event(event), obs=targets)
        return h

    @pyro_method
    def guide(self, x: Tensor, y: Tensor | None = None, num_data: int | None = None) -> None:
        """q: every weight tensor and bias vector ``~ N(mean, exp(log_std)^2)`` (the ``PyroParam`` s), and for
        ``prior="empirical_bayes"`` each tensor's prior variance at its empirical-Bayes optimum (K2) (a point mass).
        :class:`DVI_ELBO` never draws from it; ``Predictive(net.model, guide=net.guide, ...)`` does."""
        del y, num_data
        check_dvi_data(self.config, host_values(x))
        params = self.get_params()
        for i, layer in enumerate(params.layers):
            for part, mean, log_std in (
                ("weight", layer.weight_mean, layer.weight_log_std),
                ("bias", layer.bias_mean, layer.bias_log_std),
            ):
                site = self._site(i, part)
                if self.config.prior == "empirical_bayes":
                    s_star = empirical_bayes_prior_variance(
                        mean, torch.exp(2.0 * log_std), self.config.eb_alpha, self.config.eb_beta(i)
                    )
                    pyro.sample(f"{site}_prior_variance", dist.Delta(s_star))
                pyro.sample(site, dist.Normal(mean, torch.exp(log_std)).to_event(mean.dim()))


class DVI_ELBO(ELBO):
    """The negative deterministic ELBO of a :class:`DVIMLP` as a Pyro ELBO, for ``SVI(net.model, net.guide,
    optimizer, DVI_ELBO(...))``.

    ``kl_warmup_steps``: at the ``t``-th call of :meth:`loss_and_grads` (``t`` from 0, counted in
    :attr:`num_steps`) the KL term is weighted by ``min(1, t / kl_warmup_steps)`` (the paper's linear KL warm-up);
    0 (default) uses the ELBO from the start.  Deterministic: nothing is sampled.  The model and guide take
    ``(x, y, num_data=None)``; ``num_data`` is the data set's size when ``x, y`` are a minibatch.
    """

    def __init__(self, kl_warmup_steps: int = 0) -> None:
        super().__init__(num_particles=1)
        self.kl_warmup_steps = check_positive_int("kl_warmup_steps", kl_warmup_steps, allow_zero=True)
        self.num_steps = 0

    def _network(self, guide: Any) -> DVIMLP:
        network = getattr(guide, "__self__", None)
        if not isinstance(network, DVIMLP):
            raise TypeError(
                f"guide must be a DVIMLP's guide method (net.guide) for {type(self).__name__}, got {guide!r}: the "
                "loss is computed from the network's own variational parameters, not from draws of an arbitrary guide"
            )
        return network

    def _get_trace(self, model: Any, guide: Any, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """A model trace replayed against a guide trace (one draw of the weights from q), as Pyro's ELBOs give:
        the losses here do not use it, but ``ELBO``'s tracing helpers (``_get_traces``) do."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def kl_weight(self, step: int) -> float:
        """``lambda_t = min(1, t / kl_warmup_steps)`` (1 when ``kl_warmup_steps == 0``)."""
        if self.kl_warmup_steps == 0:
            return 1.0
        return min(1.0, step / self.kl_warmup_steps)

    def objective(self, network: DVIMLP, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor:
        """The objective this loss negates: :meth:`DVIMLP.elbo` (deterministic)."""
        return network.elbo(x, y, **kwargs)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        """The negative ELBO at the current step's KL weight, as a tensor to differentiate (does not advance the
        warm-up: for a hand-written torch training loop, add 1 to :attr:`num_steps` per step)."""
        network = self._network(guide)
        x, y = elbo_data(type(self).__name__, args, kwargs, "SVI.step/evaluate_loss")
        weight = self.kl_weight(self.num_steps)
        return -self.objective(network, x, y, num_data=kwargs.get("num_data"), kl_weight=weight)

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The full negative ELBO (KL weight 1), a float (what ``SVI.evaluate_loss`` reports)."""
        network = self._network(guide)
        x, y = elbo_data(type(self).__name__, args, kwargs, "SVI.step/evaluate_loss")
        with torch.no_grad():
            return -float(self.objective(network, x, y, num_data=kwargs.get("num_data"), kl_weight=1.0))

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO at the current step's KL weight, back-propagated into the network's parameters, and
        the warm-up clock advanced (what ``SVI.step`` calls)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        self.num_steps += 1
        return float(loss.detach())


class MCVI_ELBO(DVI_ELBO):
    """The Monte Carlo baseline of :class:`DVI_ELBO` for the same :class:`DVIMLP`: the expected log-likelihood is
    estimated with the local reparameterisation trick (:func:`~pyro_ext.infer.dvi.mcvi.mcvi_elbo`, torch's global
    generator), the KL is the same closed form.  ``num_particles``: draws per datum and step; ``kl_warmup_steps``
    as in :class:`DVI_ELBO`.  Used exactly like it: ``SVI(net.model, net.guide, optimizer, MCVI_ELBO())``; its
    ``loss`` is an unbiased estimate of the negative ELBO."""

    def __init__(self, num_particles: int = 1, kl_warmup_steps: int = 0) -> None:
        super().__init__(kl_warmup_steps)
        self.num_particles = check_positive_int("num_particles", num_particles)

    def objective(self, network: DVIMLP, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor:
        """An unbiased estimate of :meth:`DVIMLP.elbo` from ``num_particles`` local-reparameterisation draws."""
        return mcvi_elbo(network.get_params(), x, y, network.config, num_samples=self.num_particles, **kwargs)
