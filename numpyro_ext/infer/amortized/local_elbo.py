"""Per-datum ELBO terms of a plate, and the importance-weighted (Rényi) bound computed per datum.

A model with global latents ``beta`` and local latents ``z_i`` inside plate ``plate``, and a guide
``q(beta) prod_i q(z_i)`` (F-VI's ``AutoNormal``, A-VI's ``AutoAmortizedNormal``), has the ELBO

    ELBO = E_q(beta)[ log p(beta) - log q(beta) + sum_i E_q(z_i)[ l_i(beta, z_i) ] ],
    l_i(beta, z_i) = log p(x_i, z_i | beta) - log q(z_i)                                        (1)

(every site inside the plate contributes to its datum's ``l_i``).  :func:`per_datum_log_weights` draws one
``beta`` and ``K`` local draws per datum given it and returns the global term and ``l_i`` as a ``(K, m)``
array for the ``m`` data of the plate's (sub)sample.

:class:`LocalRenyiELBO` trains with the per-datum Rényi bound (Li & Turner, NeurIPS 2016, Eq. 5), given
``beta``:

    L_alpha = E_q(beta)[ log p(beta) - log q(beta) + (n / m) sum_{i in I} 1 / (1 - alpha)
              log (1 / K) sum_k exp((1 - alpha) l_i(beta, z_ik)) ],                                   (2)

``alpha = 0`` is the importance-weighted bound (IWAE, Burda, Grosse & Salakhutdinov, ICLR 2016, Eq. 8) of
each datum's ``log p(x_i | beta)``, the objective VI-HDS trains with (Roeder et al., ICML 2019, Sec. 3.3);
``alpha = 1`` is (1) with ``K`` local draws.  For ``0 <= alpha <= 1`` it is a lower bound of ``log p(x)`` that
tightens as ``K`` grows.  NumPyro's own ``RenyiELBO`` weighs whole joint draws, so with global latents its
weights are products over all data and degenerate (and it refuses a subsampled plate); (2) weighs each
datum's local draws given one global draw, so it works with subsampling and improves on the ELBO per datum.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro import handlers
from numpyro.infer.elbo import ELBO

from adapters.validation import check_positive_int


class PerDatumTerms(NamedTuple):
    """One global draw's terms of (1).

    ``global_term``: ``()``, ``log p - log q`` of every site outside the plate (each site's scale applied).
    ``local``: ``(K, m)``, ``l_i`` of (1) for ``K`` local draws of each of the ``m`` data, unscaled.
    ``scale``: ``()``, the scale of the plate's sites (``n / m`` for a subsampled plate), applied to ``sum_i``.
    ``indices``: ``(m,)``, the data the plate visited.
    """

    global_term: jax.Array
    local: jax.Array
    scale: jax.Array
    indices: jax.Array


def _log_prob(site: dict) -> jax.Array:
    fn, value = site["fn"], site["value"]
    return fn.log_prob(value, site["intermediates"]) if site["intermediates"] else fn.log_prob(value)


def _per_datum(log_prob: jax.Array, dim: int, size: int) -> jax.Array:
    """A site's log-density summed over everything but the plate's dim ``dim``: ``(size,)``."""
    if log_prob.ndim < -dim:  # not batched over the plate: the same value for every datum
        log_prob = jnp.reshape(log_prob, (1,) * (-dim - log_prob.ndim) + log_prob.shape)
    per = jnp.moveaxis(log_prob, log_prob.ndim + dim, 0)
    return jnp.broadcast_to(jnp.sum(jnp.reshape(per, (per.shape[0], -1)), axis=1), (size,))


def run_guide_and_model(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, Any],
    args: tuple,
    kwargs: dict,
    rng_key: jax.Array,
    fixed: dict[str, Any],
) -> tuple[dict, dict]:
    """``(model trace, guide trace)``: the guide run with ``params`` and the sites in ``fixed`` set (latent values,
    or a plate's indices), the model replayed against it."""
    guide_key, model_key = jax.random.split(rng_key)
    seeded_guide = handlers.substitute(handlers.seed(guide, guide_key), data={**params, **fixed})
    with warnings.catch_warnings():
        # fixed indices need not have the plate's subsample_size (a chunk, an evaluation set): NumPyro warns, harmlessly
        warnings.filterwarnings("ignore", message="subsample_size does not match")
        guide_trace = handlers.trace(seeded_guide).get_trace(*args, **kwargs)
        seeded_model = handlers.substitute(handlers.replay(handlers.seed(model, model_key), guide_trace), data=params)
        return handlers.trace(seeded_model).get_trace(*args, **kwargs), guide_trace


def _check_traces(model_trace: dict, guide_trace: dict, plate: str) -> None:
    if plate not in guide_trace or guide_trace[plate]["type"] != "plate":
        plates = sorted(k for k, s in model_trace.items() if s["type"] == "plate")
        raise ValueError(f"plate: the guide has no plate named {plate!r} (the model's plates: {plates})")
    for name, site in guide_trace.items():
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                f"guide: site {name!r} has no reparameterised sampler; the per-datum bounds differentiate "
                "through the guide's draws"
            )


def _terms(model_trace: dict, guide_trace: dict, plate: str) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    frame_size = int(guide_trace[plate]["value"].shape[0])
    global_term = jnp.zeros(())
    local = jnp.zeros((frame_size,))
    scale = None
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.values():
            if site["type"] != "sample" or (trace is guide_trace and site["is_observed"]):
                continue
            log_prob = _log_prob(site)
            site_scale = 1.0 if site["scale"] is None else site["scale"]
            frames = [f for f in site["cond_indep_stack"] if f.name == plate]
            if not frames:
                global_term = global_term + sign * jnp.sum(site_scale * log_prob)
                continue
            # one scale for the plate: the sites in it share their plates' subsample scale
            scale = site_scale if scale is None else scale
            local = local + sign * _per_datum(log_prob, frames[0].dim, frame_size)
    return global_term, local, jnp.asarray(1.0 if scale is None else scale), guide_trace[plate]["value"]


def global_values(guide_trace: dict, plate: str) -> dict[str, jax.Array]:
    """The guide's draws of every latent outside ``plate``: what the local draws of (1) are conditioned on."""
    return {
        name: site["value"]
        for name, site in guide_trace.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not any(f.name == plate for f in site["cond_indep_stack"])
    }


def per_datum_log_weights(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, Any],
    args: tuple,
    kwargs: dict,
    rng_key: jax.Array,
    plate: str,
    num_local_particles: int = 1,
    *,
    indices: jax.Array | None = None,
    fixed_globals: dict[str, jax.Array] | None = None,
) -> PerDatumTerms:
    """One global draw and ``num_local_particles`` local draws per datum: the terms of (1).

    :param params: the guide's (and model's) parameters, e.g. ``svi.get_params(state)``.
    :param args, kwargs: the model's and guide's arguments.
    :param indices: the data to visit, ``(m,)``: the plate's subsample is set to them (a subsampled plate; the
        model must index its data by the plate's indices).  ``None``: the plate draws its own subsample.  Pass
        them sorted: NumPyro takes an index set as long as the plate for the whole plate in its natural order
        (``AutoNormal`` then pairs its parameters with the wrong data).
    :param fixed_globals: the global latents' values (:func:`global_values`); ``None``: drawn from the guide.
    :returns: :class:`PerDatumTerms`; ``local`` is ``(num_local_particles, m)``.
    """
    fixed: dict[str, Any] = {} if indices is None else {plate: jnp.asarray(indices)}
    first_key, local_key = jax.random.split(rng_key)
    if fixed_globals is None:
        model_trace, guide_trace = run_guide_and_model(model, guide, params, args, kwargs, first_key, fixed)
        _check_traces(model_trace, guide_trace, plate)
        fixed_globals = global_values(guide_trace, plate)
        fixed = {**fixed, plate: guide_trace[plate]["value"]}
    fixed = {**fixed, **fixed_globals}

    def one_local_draw(key: jax.Array) -> tuple[jax.Array, ...]:
        model_trace, guide_trace = run_guide_and_model(model, guide, params, args, kwargs, key, fixed)
        _check_traces(model_trace, guide_trace, plate)
        return _terms(model_trace, guide_trace, plate)

    keys = jax.random.split(local_key, num_local_particles)
    global_term, local, scale, visited = jax.vmap(one_local_draw)(keys)
    # the globals are the same in every local draw, so are the global term, the scale and the indices
    return PerDatumTerms(global_term[0], local, scale[0], visited[0])


def renyi_average(local: jax.Array, alpha: float) -> jax.Array:
    """Per datum, ``1 / (1 - alpha) log mean_k exp((1 - alpha) l_ik)`` of (2) over axis 0 (``alpha = 1``: the
    mean): ``(K, m) -> (m,)``."""
    if alpha == 1:
        return jnp.mean(local, axis=0)
    order = 1.0 - alpha
    return (logsumexp(order * local, axis=0) - math.log(local.shape[0])) / order


class LocalRenyiELBO(ELBO):
    """The per-datum Rényi / importance-weighted bound (2) as a NumPyro ELBO (``SVI(model, guide, optim,
    LocalRenyiELBO(...))``).

    :param plate: the plate of the local latents (the one an ``AutoAmortizedNormal`` amortizes).
    :param alpha: the Rényi order; ``0`` (default) is IWAE, ``1`` the ELBO with ``K`` local draws.  ``0 <= alpha
        <= 1`` keeps (2) a lower bound of ``log p(x)``.
    :param num_local_particles: ``K``, local draws per datum for each global draw.
    :param num_particles: global draws, averaged (each with its own ``K`` local draws per datum).

    The guide must be reparameterised (every latent site ``has_rsample``).  Sites inside the plate must share
    one scale (the plate's subsample scale), which multiplies the sum over data outside the log-mean-exp.
    """

    def __init__(
        self,
        plate: str = "data",
        alpha: float = 0.0,
        num_local_particles: int = 8,
        num_particles: int = 1,
        vectorize_particles: bool = True,
    ) -> None:
        if not isinstance(plate, str) or not plate:
            raise TypeError(f"plate must be the name (a non-empty str) of the local latents' plate, got {plate!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite real number (the Rényi order), got {alpha!r}")
        self.plate = plate
        self.alpha = float(alpha)
        self.num_local_particles = check_positive_int("num_local_particles", num_local_particles)
        super().__init__(
            num_particles=check_positive_int("num_particles", num_particles), vectorize_particles=vectorize_particles
        )

    def loss_with_mutable_state(
        self,
        rng_key: jax.Array,
        param_map: dict[str, Any],
        model: Callable[..., Any],
        guide: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        def one_global_draw(key: jax.Array) -> jax.Array:
            terms = per_datum_log_weights(
                model, guide, param_map, args, kwargs, key, self.plate, self.num_local_particles
            )
            return terms.global_term + terms.scale * jnp.sum(renyi_average(terms.local, self.alpha))

        bounds = self.vectorize_particles_fn(one_global_draw, jax.random.split(rng_key, self.num_particles))
        return {"loss": -jnp.mean(bounds), "mutable_state": None}
