"""A likelihood-free problem in JAX: prior, simulator, summary statistics, observation.

The simulator is a deterministic function of the parameters and its random numbers,
``simulator(theta, key) -> x``: the same key gives the same simulation (common random numbers),
and it is batched with ``jax.vmap``.  ``theta`` is what the prior samples: the array of a
``numpyro.distributions.Distribution`` prior, or the dict ``{site: value}`` of the latent sites
of a NumPyro model prior (a function of no arguments).

Every method works on the *unconstrained* flat vector ``u`` ``(D,)`` of the prior (NumPyro's
``biject_to`` of each site's support): optimisers and Gaussian proposals move freely there, and
the prior's density there includes the Jacobian of the map (``log_prior``).  ``theta(u)`` is the
constrained value the simulator sees, ``flat_theta(u)`` the same flattened to ``(D,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.abc import check_statistic, simulator_failure_message, site_layout
from numpyro_ext.infer.model_util import flat_model

PRIOR_SITE = "theta"  # the site name of a Distribution prior


class LikelihoodFreeProblem:
    """``prior``, ``simulator(theta, key)``, ``summary(x) -> (d,)`` and the ``observed`` data.

    Args:
        prior: a ``numpyro.distributions.Distribution`` (``theta`` is one of its samples; its batch
            shape must be ``()``, use ``.to_event()``) or a NumPyro model taking no arguments
            (``theta`` is the dict of its latent sites).
        simulator: ``simulator(theta, key) -> x``, a pure JAX function; the same key must give the
            same ``x`` (common random numbers).  It may return NaN/inf for some ``theta``: such
            simulations are counted and rejected by every method.
        observed: the observed data, in the simulator's output format (``summary`` is applied to it).
        summary: ``summary(x) -> (d,)`` statistics; default: ``x`` flattened.

    The constructor runs one simulation at a prior draw (key 0) to check that the simulator accepts
    the prior's ``theta`` and that its summary has the observation's shape.
    """

    def __init__(
        self,
        prior: Any,
        simulator: Callable[[Any, jax.Array], Any],
        observed: Any,
        summary: Callable[[Any], Any] | None = None,
    ):
        import numpyro
        import numpyro.distributions as dist

        if not callable(simulator):
            raise TypeError(f"simulator: expected a function simulator(theta, key), got {type(simulator).__name__}")
        if summary is not None and not callable(summary):
            raise TypeError(f"summary: expected a function summary(x) -> (d,) or None, got {type(summary).__name__}")
        if isinstance(prior, dist.Distribution):
            if prior.batch_shape != ():
                raise ValueError(
                    f"prior: expected a distribution with batch shape (), got {prior.batch_shape}; "
                    "use prior.to_event() to make its batch dimensions event dimensions"
                )
            distribution = prior

            def prior_model():
                numpyro.sample(PRIOR_SITE, distribution)

            self._unpack = lambda values: values[PRIOR_SITE]
            self.prior_model = prior_model
        elif callable(prior):
            self._unpack = lambda values: values
            self.prior_model = prior
        else:
            raise TypeError(
                f"prior: expected a numpyro.distributions.Distribution or a NumPyro model, got {type(prior).__name__}"
            )
        self.prior = prior
        self.simulator = simulator
        self._summary = summary
        self._flat = flat_model(self.prior_model, (), {}, "LikelihoodFreeProblem")
        if self._flat.observed:
            raise ValueError(
                f"prior: a prior model has no observed sites, got {self._flat.observed}; the data go to the simulator"
            )
        u0 = self._flat.sample_prior(jax.random.PRNGKey(0))
        self.dim = int(u0.shape[0])
        values = self._constrained_latents(u0)
        self.names, self.sites = site_layout({k: tuple(np.shape(values[k])) for k in self._flat.latent})
        try:
            stats = jax.eval_shape(lambda u, key: self._stats(simulator(self.theta(u), key)), u0, jax.random.PRNGKey(0))
        except Exception as error:  # noqa: BLE001 -- any failure here is the user's simulator/prior mismatch
            shapes = jax.tree_util.tree_map(jnp.shape, self.theta(u0))
            raise ValueError(simulator_failure_message(error, shapes)) from error
        if len(stats.shape) != 1:
            raise ValueError(f"summary: expected statistics of shape (d,), got shape {stats.shape}")
        self.stat_dim = int(stats.shape[0])
        self.observed = check_statistic("observed", np.asarray(self._stats(jnp.asarray(observed))), self.stat_dim)

    # ---- the prior ----------------------------------------------------------------------
    def _constrained_latents(self, u: jax.Array) -> dict:
        values = self._flat.constrain(u)
        return {k: values[k] for k in self._flat.latent}

    def theta(self, u: jax.Array) -> Any:
        """The constrained ``theta`` the simulator takes, from the unconstrained ``u`` ``(D,)``."""
        return self._unpack(self._constrained_latents(u))

    def flat_theta(self, u: jax.Array) -> jax.Array:
        """Constrained ``theta`` flattened ``(D,)``, in the column order of :attr:`names`."""
        values = self._constrained_latents(u)
        return jnp.concatenate([jnp.ravel(values[k]) for k in self._flat.latent])

    def unconstrain(self, theta: Any) -> jax.Array:
        """The unconstrained ``u`` ``(D,)`` of a constrained ``theta`` (the prior's structure)."""
        values = {PRIOR_SITE: theta} if isinstance(self.prior, _distribution_type()) else theta
        return self._flat.unconstrain(values)

    def sample_prior(self, rng_key: jax.Array, num_samples: int) -> jax.Array:
        """``(num_samples, D)`` unconstrained prior draws."""
        return jax.vmap(self._flat.sample_prior)(jax.random.split(rng_key, num_samples))

    def log_prior(self, u: jax.Array) -> jax.Array:
        """Prior log density of the unconstrained ``u`` ``(D,)``, the map's log-Jacobian included."""
        return self._flat.log_prior(u)

    # ---- simulations --------------------------------------------------------------------
    def _stats(self, x: Any) -> jax.Array:
        stats = jnp.ravel(jnp.asarray(x)) if self._summary is None else jnp.asarray(self._summary(x))
        return jnp.atleast_1d(stats)

    def simulate(self, u: jax.Array, rng_key: jax.Array) -> jax.Array:
        """Summary statistics ``(d,)`` of one simulation at the unconstrained ``u`` ``(D,)`` with
        ``rng_key`` (pure: differentiable in ``u`` when the simulator is; vmap it to batch)."""
        return self._stats(self.simulator(self.theta(u), rng_key)).astype(jnp.result_type(float))

    def simulate_many(self, u: jax.Array, rng_keys: jax.Array) -> jax.Array:
        """``(n, d)`` statistics of ``(n, D)`` parameters, one key each."""
        return jax.vmap(self.simulate)(u, rng_keys)


def _distribution_type():
    import numpyro.distributions as dist

    return dist.Distribution


def finite_rows(stats: jax.Array) -> jax.Array:
    """``(n,)`` mask of the simulations whose statistics ``(n, d)`` are all finite."""
    return jnp.all(jnp.isfinite(stats), axis=-1)


__all__ = ["LikelihoodFreeProblem", "finite_rows"]
