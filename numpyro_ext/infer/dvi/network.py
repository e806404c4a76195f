"""The NumPyro shell of DVI: a Bayesian MLP as an init/apply pair, and the DVI loss for NumPyro's ``SVI``.

Wu et al. 2019 (arXiv:1810.03958).  :class:`DVIMLP` wraps :class:`adapters.dvi.DVIConfig` and the pure core
(:mod:`numpyro_ext.infer.dvi.core`); its :meth:`DVIMLP.guide` declares the variational parameters as NumPyro
``param`` sites and its :meth:`DVIMLP.model` is the Bayesian network itself (prior over the weights,
likelihood over ``y``).  :class:`DVI_ELBO` is a member of NumPyro's ELBO family whose loss is the negative
deterministic ELBO, so that any optax optimizer trains the network with NumPyro's own ``SVI``::

    net = DVIMLP((1, 50, 2), likelihood="heteroscedastic")
    svi = SVI(net.model, net.guide, optax.adam(1e-2), DVI_ELBO(kl_warmup_steps=1000))
    result = svi.run(jax.random.PRNGKey(0), 5000, x, y)
    mean, var = net.predict(net.params_from(result.params), x_test)

KL warm-up: the loss weighs the KL by ``lambda_t = min(1, t / kl_warmup_steps)`` at step ``t`` (0 at the
first step, the plain ELBO once ``t >= kl_warmup_steps``; ``kl_warmup_steps=0`` is the ELBO throughout).  The
step count is a ``numpyro.mutable`` site of the guide, so ``SVI.update`` and ``SVI.run`` advance it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.elbo import ELBO
from numpyro.primitives import mutable

from adapters.dvi import (
    DEFAULT_EB_ALPHA,
    DVIConfig,
    check_dvi_data,
    dvi_inference_data,
    elbo_data,
    minibatch_scale,
)
from adapters.validation import check_choice, check_positive_int
from numpyro_ext.infer.dvi.core import (
    DVIParams,
    LayerParams,
    check_params,
    dvi_elbo,
    dvi_predict,
    init_params,
    mlp_moments,
)
from numpyro_ext.infer.dvi.mcvi import log_predictive_density, mcvi_elbo, output_log_likelihood
from numpyro_ext.infer.dvi.moments import GaussianMoments
from numpyro_ext.infer.dvi.priors import empirical_bayes_prior_variance

__all__ = ["DVIMLP", "DVI_ELBO", "MCVI_ELBO"]

Array = jax.Array

ACTIVATIONS = ("relu",)


class DVIMLP:
    """A Bayesian MLP trained by deterministic variational inference (pure-JAX init/apply pair + NumPyro sites).

    Arguments are those of :class:`adapters.dvi.DVIConfig` (``sizes``, ``covariance``, ``likelihood``,
    ``prior``, ``prior_variance``, ``eb_alpha``), plus ``activation`` (only ``"relu"``: the closed-form
    moments are ReLU's) and ``name``, the prefix of the NumPyro site names (``"<name>.layers.<i>.<field>"``,
    ``"<name>.log_noise_variance"``, ``"<name>.step"``).
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
    ) -> None:
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.config = DVIConfig(tuple(sizes), covariance, likelihood, prior, prior_variance, eb_alpha)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (the prefix of the NumPyro site names), got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        c = self.config
        return f"DVIMLP(sizes={c.sizes}, covariance={c.covariance!r}, likelihood={c.likelihood!r}, prior={c.prior!r})"

    # -- pure functions ---------------------------------------------------------------------------------------------

    def init(self, rng_key: Array, *, init_std_ratio: float = 0.1, dtype: Any = None) -> DVIParams:
        """Initial variational parameters (:func:`~numpyro_ext.infer.dvi.core.init_params`)."""
        return init_params(rng_key, self.config, init_std_ratio=init_std_ratio, dtype=dtype)

    def apply(self, params: DVIParams, x: Array) -> GaussianMoments:
        """Output moments at inputs ``x`` ``(n, d_0)``: mean ``(n, d_L)``, covariance ``(n, d_L, d_L)`` (full) or
        variances ``(n, d_L)`` (diag)."""
        self._check(params, x)
        return _jitted_moments(params, jnp.asarray(x), self.config)

    def predict(self, params: DVIParams, x: Array) -> tuple[Array, Array]:
        """Closed-form predictive mean and variance (:func:`~numpyro_ext.infer.dvi.core.dvi_predict`)."""
        self._check(params, x)
        return _jitted_predict(params, jnp.asarray(x), self.config)

    def _check(self, params: DVIParams, x: Array, y: Array | None = None) -> None:
        # the checks read concrete values (NaN targets, shapes): run them before the compiled function
        check_params(params, self.config)
        check_dvi_data(self.config, x, y)

    def elbo(
        self, params: DVIParams, x: Array, y: Array, *, num_data: int | None = None, kl_weight: float | Array = 1.0
    ) -> Array:
        """The deterministic ELBO (:func:`~numpyro_ext.infer.dvi.core.dvi_elbo`)."""
        self._check(params, x, y)
        minibatch_scale(jnp.shape(x)[0], num_data, kl_weight)
        return _jitted_elbo(params, jnp.asarray(x), jnp.asarray(y), self.config, num_data=num_data, kl_weight=kl_weight)

    def sample_weights(self, rng_key: Array, params: DVIParams, num_samples: int) -> dict[str, Array]:
        """Joint draws of every weight tensor from q, named as the model's sample sites:
        ``"<name>.layers.<i>.weight"`` ``(num_samples, d_in, d_out)`` and ``"<name>.layers.<i>.bias"``
        ``(num_samples, d_out)``."""
        num_samples = check_positive_int("num_samples", num_samples)
        check_params(params, self.config)
        keys = jax.random.split(rng_key, 2 * len(params.layers))
        draws = {}
        for i, layer in enumerate(params.layers):
            for k, (part, mean, log_std) in enumerate(
                (("weight", layer.weight_mean, layer.weight_log_std), ("bias", layer.bias_mean, layer.bias_log_std))
            ):
                noise = jax.random.normal(keys[2 * i + k], (num_samples, *mean.shape), mean.dtype)
                draws[f"{self.name}.layers.{i}.{part}"] = mean + jnp.exp(log_std) * noise
        return draws

    def outputs_at(self, weights: dict[str, Array], x: Array) -> Array:
        """The network's outputs ``(S, n, d_L)`` at inputs ``x`` ``(n, d_0)`` for ``S`` weight draws
        (:meth:`sample_weights`)."""
        h = jnp.asarray(x)
        for i in range(self.config.num_layers):
            h = h @ weights[f"{self.name}.layers.{i}.weight"] + weights[f"{self.name}.layers.{i}.bias"][:, None, :]
            if i < self.config.num_layers - 1:
                h = jax.nn.relu(h)
        return h

    def sample_predictive(self, rng_key: Array, params: DVIParams, x: Array, num_samples: int) -> Array:
        """Monte Carlo draws of ``y`` at ``x`` ``(n, d_0)``: weights from q, then the likelihood's noise.

        Returns ``(num_samples, n, D)`` (regression) or integer labels ``(num_samples, n)`` (categorical): a
        check of :meth:`predict`'s closed forms.
        """
        check_dvi_data(self.config, x)
        weight_key, noise_key = jax.random.split(rng_key)
        outputs = self.outputs_at(self.sample_weights(weight_key, params, num_samples), x)
        return self._likelihood(outputs, params).sample(noise_key)

    def log_predictive_density(
        self, rng_key: Array, params: DVIParams, x: Array, y: Array, num_samples: int = 1000
    ) -> Array:
        """Each point's log predictive density ``(n,)``, the UCI protocol's test log-likelihood (Monte Carlo,
        :func:`~numpyro_ext.infer.dvi.mcvi.log_predictive_density`; its mean is the per-point score)."""
        num_samples = check_positive_int("num_samples", num_samples)
        density = jax.jit(log_predictive_density, static_argnums=(4, 5))
        return density(rng_key, params, jnp.asarray(x), jnp.asarray(y), self.config, num_samples)

    def to_arviz(
        self, rng_key: Array, params: DVIParams, x: Array, y: Array, num_samples: int = 1000, num_chains: int = 4
    ):
        """An ``arviz.InferenceData`` of q's weights and the posterior predictive at ``(x, y)``.

        Groups: ``posterior`` (the weight draws of :meth:`sample_weights`), ``posterior_predictive`` and
        ``log_likelihood`` (``log p(y_i | x_i, w_s)`` per weight draw and datum, summed over targets) under the
        model's observed site ``"<name>.y"``, and ``observed_data``; ``num_samples`` draws split into
        ``num_chains`` chains of independent draws.  ``az.plot_ppc``, ``az.loo`` and ``az.compare`` apply.
        """
        check_dvi_data(self.config, x, y)
        num_samples = check_positive_int("num_samples", num_samples)
        draws = jax.jit(self._predictive_draws, static_argnums=4)(
            rng_key, params, jnp.asarray(x), jnp.asarray(y), num_samples
        )
        return dvi_inference_data(*draws, y, f"{self.name}.y", num_chains)

    def _predictive_draws(self, rng_key, params, x, y, num_samples):
        weight_key, noise_key = jax.random.split(rng_key)
        weights = self.sample_weights(weight_key, params, num_samples)
        outputs = self.outputs_at(weights, x)
        predictive = self._likelihood(outputs, params).sample(noise_key)
        return weights, predictive, jax.vmap(lambda f: output_log_likelihood(f, params, y, self.config))(outputs)

    def _likelihood(self, outputs: Array, params: DVIParams) -> dist.Distribution:
        """p(y | network outputs): independent normals over the ``D`` targets, or a categorical over classes."""
        likelihood = self.config.likelihood
        if likelihood == "categorical":
            return dist.Categorical(logits=outputs)
        if likelihood == "heteroscedastic":
            d = self.config.num_targets
            return dist.Normal(outputs[..., :d], jnp.exp(0.5 * outputs[..., d:]))
        return dist.Normal(outputs, jnp.exp(0.5 * params.log_noise_variance))

    # -- NumPyro sites ----------------------------------------------------------------------------------------------

    @property
    def step_name(self) -> str:
        """The ``numpyro.mutable`` site that counts SVI steps (the KL warm-up's clock)."""
        return f"{self.name}.step"

    def param_names(self) -> list[str]:
        """Names of the guide's ``param`` sites, in :class:`DVIParams` order."""
        names = [
            f"{self.name}.layers.{i}.{field}" for i in range(self.config.num_layers) for field in LayerParams._fields
        ]
        if self.config.likelihood == "homoscedastic":
            names.append(f"{self.name}.log_noise_variance")
        return names

    def params_from(self, param_map: dict[str, Array]) -> DVIParams:
        """:class:`DVIParams` from a NumPyro parameter dictionary (``svi.get_params(state)`` or ``result.params``)."""
        missing = [name for name in self.param_names() if name not in param_map]
        if missing:
            raise KeyError(
                f"param_map lacks the sites {missing[:4]} of {self!r}: pass the parameters of an SVI run whose guide "
                f"is this network's guide (site prefix {self.name!r})"
            )
        fields = LayerParams._fields
        layers = tuple(
            LayerParams(*(param_map[f"{self.name}.layers.{i}.{field}"] for field in fields))
            for i in range(self.config.num_layers)
        )
        noise = param_map.get(f"{self.name}.log_noise_variance") if self.config.likelihood == "homoscedastic" else None
        return DVIParams(layers, noise)

    def guide(self, x: Array, y: Array | None = None, num_data: int | None = None) -> None:
        """q: the variational parameters as ``param`` sites (initialised by :meth:`init` with NumPyro's PRNG key),
        the step counter of the KL warm-up, and the weights drawn from q (for ``prior="empirical_bayes"`` each
        tensor's prior variance as a point mass at its optimum (K2)).  :class:`DVI_ELBO` never draws from it;
        ``Predictive(net.model, guide=net.guide, params=...)`` does."""
        del y, num_data
        check_dvi_data(self.config, x)
        drawn: list[list[Array]] = []

        def initial(index: int):
            # every site's lazy initialiser reads one init() draw, so the layers start as init() makes them
            def value(rng_key: Array) -> Array:
                if not drawn:
                    drawn.append(self._flat(self.init(rng_key, dtype=jnp.result_type(float))))
                return drawn[0][index]

            return value

        values = {name: numpyro.param(name, initial(index)) for index, name in enumerate(self.param_names())}
        mutable(self.step_name, jnp.zeros((), jnp.int32))
        for i, layer in enumerate(self.params_from(values).layers):
            for part, mean, log_std in (
                ("weight", layer.weight_mean, layer.weight_log_std),
                ("bias", layer.bias_mean, layer.bias_log_std),
            ):
                site = f"{self.name}.layers.{i}.{part}"
                if self.config.prior == "empirical_bayes":
                    variance = empirical_bayes_prior_variance(
                        mean, jnp.exp(2.0 * log_std), self.config.eb_alpha, self.config.eb_beta(i)
                    )
                    numpyro.sample(f"{site}_prior_variance", dist.Delta(variance))
                numpyro.sample(site, dist.Normal(mean, jnp.exp(log_std)).to_event(jnp.ndim(mean)))

    def model(self, x: Array, y: Array | None = None, num_data: int | None = None) -> Array:
        """The Bayesian MLP: weights from the prior (``N(0, prior_variance)``, or per tensor ``N(0, s)`` with
        ``s ~ InvGamma(eb_alpha, beta)`` for ``prior="empirical_bayes"``), ``y`` from the likelihood (scaled to
        ``num_data`` points for a minibatch).  Returns the network outputs ``(n, d_L)``."""
        config = self.config
        check_dvi_data(config, x, y)
        h = jnp.asarray(x)
        for i, (d_in, d_out) in enumerate(zip(config.sizes[:-1], config.sizes[1:], strict=True)):
            tensors = []
            for part, shape in (("weight", (d_in, d_out)), ("bias", (d_out,))):
                site = f"{self.name}.layers.{i}.{part}"
                if config.prior == "gaussian":
                    variance = config.prior_variance[i]
                else:
                    variance = numpyro.sample(
                        f"{site}_prior_variance", dist.InverseGamma(config.eb_alpha, config.eb_beta(i))
                    )
                tensors.append(
                    numpyro.sample(site, dist.Normal(0.0, jnp.sqrt(variance)).expand(shape).to_event(len(shape)))
                )
            h = h @ tensors[0] + tensors[1]
            if i < config.num_layers - 1:
                h = jax.nn.relu(h)
        noise = None
        if config.likelihood == "homoscedastic":
            noise = numpyro.param(f"{self.name}.log_noise_variance", jnp.zeros((config.num_targets,)))
        likelihood = self._likelihood(h, DVIParams((), noise))
        targets = y
        if y is not None and config.likelihood != "categorical" and jnp.ndim(y) == 1:
            targets = jnp.asarray(y)[:, None]
        n = jnp.shape(x)[0]
        event = 0 if config.likelihood == "categorical" else 1
        # x, y are the minibatch already: scale its log-likelihood to num_data points (no subsample indices to draw)
        scale = 1.0 if num_data is None else num_data / n
        with numpyro.plate(f"{self.name}.data", n), numpyro.handlers.scale(scale=scale):
            numpyro.sample(f"{self.name}.y", likelihood.to_event(event), obs=targets)
        return h

    @staticmethod
    def _flat(params: DVIParams) -> list[Array]:
        flat = [value for layer in params.layers for value in layer]
        if params.log_noise_variance is not None:
            flat.append(params.log_noise_variance)
        return flat


_jitted_moments = jax.jit(mlp_moments, static_argnums=2)
_jitted_predict = jax.jit(dvi_predict, static_argnums=2)
_jitted_elbo = jax.jit(dvi_elbo, static_argnums=3, static_argnames="num_data")


class DVI_ELBO(ELBO):
    """The negative deterministic ELBO of a :class:`DVIMLP` as a NumPyro ELBO, for ``SVI(net.model, net.guide,
    optimizer, DVI_ELBO(...))``.

    ``kl_warmup_steps``: the KL term is weighted by ``min(1, t / kl_warmup_steps)`` at SVI step ``t`` (a linear KL
    warm-up, as in the paper's training); 0 (default) uses the ELBO from the start.  The loss is deterministic:
    ``rng_key`` is unused.  The model and guide take ``(x, y, num_data=None)``; ``num_data`` is the data set's size
    when ``x, y`` are a minibatch.
    """

    def __init__(self, kl_warmup_steps: int = 0) -> None:
        super().__init__(num_particles=1)
        self.kl_warmup_steps = check_positive_int("kl_warmup_steps", kl_warmup_steps, allow_zero=True)

    def _network(self, guide: Any) -> DVIMLP:
        network = getattr(guide, "__self__", None)
        if not isinstance(network, DVIMLP):
            raise TypeError(
                f"guide must be a DVIMLP's guide method (net.guide) for {type(self).__name__}, got {guide!r}: the "
                "loss is computed from the network's own variational parameters, not from draws of an arbitrary guide"
            )
        return network

    def kl_weight(self, step: Array) -> Array:
        """``lambda_t = min(1, t / kl_warmup_steps)`` (1 when ``kl_warmup_steps == 0``)."""
        if self.kl_warmup_steps == 0:
            return jnp.ones(())
        return jnp.minimum(1.0, jnp.asarray(step) / self.kl_warmup_steps)

    def objective(self, rng_key: Array, network: DVIMLP, params: DVIParams, x: Array, y: Array, **kwargs: Any) -> Array:
        """The objective this loss negates: :meth:`DVIMLP.elbo` (deterministic, ``rng_key`` unused)."""
        del rng_key
        return network.elbo(params, x, y, **kwargs)

    def _loss(self, rng_key, param_map, guide, args, kwargs) -> tuple[Array, DVIMLP]:
        network = self._network(guide)
        x, y = elbo_data(type(self).__name__, args, kwargs, "SVI.init/update/run")
        step = param_map.get(network.step_name)
        weight = self.kl_weight(step) if step is not None else 1.0
        params = network.params_from(param_map)
        return -self.objective(
            rng_key, network, params, x, y, num_data=kwargs.get("num_data"), kl_weight=weight
        ), network

    def loss(self, rng_key: Array, param_map: dict[str, Array], model: Any, guide: Any, *args: Any, **kwargs: Any):
        """The negative ELBO at the current step's KL weight (the full ELBO when no step count is given)."""
        return self._loss(rng_key, param_map, guide, args, kwargs)[0]

    def loss_with_mutable_state(
        self, rng_key: Array, param_map: dict[str, Array], model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """The loss and the advanced step counter (what ``SVI.update`` uses: the guide has a mutable site)."""
        loss, network = self._loss(rng_key, param_map, guide, args, kwargs)
        return {"loss": loss, "mutable_state": {network.step_name: param_map[network.step_name] + 1}}


class MCVI_ELBO(DVI_ELBO):
    """The Monte Carlo baseline of :class:`DVI_ELBO` for the same :class:`DVIMLP`: the expected log-likelihood is
    estimated with the local reparameterisation trick (:func:`~numpyro_ext.infer.dvi.mcvi.mcvi_elbo`), the KL is
    the same closed form.  ``num_particles``: draws per datum and step; ``kl_warmup_steps`` as in
    :class:`DVI_ELBO`.  Used exactly like it: ``SVI(net.model, net.guide, optimizer, MCVI_ELBO())``."""

    def __init__(self, num_particles: int = 1, kl_warmup_steps: int = 0) -> None:
        super().__init__(kl_warmup_steps)
        self.num_particles = check_positive_int("num_particles", num_particles)

    def objective(self, rng_key: Array, network: DVIMLP, params: DVIParams, x: Array, y: Array, **kwargs: Any) -> Array:
        """An unbiased estimate of :meth:`DVIMLP.elbo` from ``num_particles`` local-reparameterisation draws."""
        return mcvi_elbo(rng_key, params, x, y, network.config, num_samples=self.num_particles, **kwargs)
