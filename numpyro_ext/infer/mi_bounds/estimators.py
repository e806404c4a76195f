"""The MI estimators as objects: ``loss(params, rng_key, x, z)`` for training, ``estimate`` for evaluation.

:class:`InfoNCE`, :class:`NWJ`, :class:`MINEDV` (critics on score matrices), :class:`BarberAgakov`,
:class:`GIWAE`, :class:`MINEAIS`, and :func:`fit_critic`, which trains any of them (or several side
by side) with optax in one compiled ``lax.scan``.  Equations: :mod:`numpyro_ext.infer.mi_bounds`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapters.mi import BoundEstimate, check_group_size
from adapters.validation import check_choice, check_positive, check_positive_int
from numpyro_ext.infer.mi_bounds.annealed import hmc_chain, mine_ais
from numpyro_ext.infer.mi_bounds.critics import Critic, score_matrix
from numpyro_ext.infer.mi_bounds.terms import (
    barber_agakov,
    barber_agakov_terms,
    check_dims,
    check_joint,
    check_prior,
    giwae,
    giwae_terms,
    infonce,
    infonce_terms,
    mine_dv,
    mine_dv_value,
    nwj,
    nwj_terms,
)

__all__ = ["GIWAE", "MINEAIS", "MINEDV", "NWJ", "BarberAgakov", "CriticFit", "InfoNCE", "fit_critic"]

Array = jax.Array


# ---------------------------------------------------------------------------------------
# Estimators: loss for training, estimate for evaluation
# ---------------------------------------------------------------------------------------
class _Estimator:
    """Shared shape checks; subclasses define ``loss(params, rng_key, x, z) -> (loss, bound)``."""

    name = ""
    x_dim: int | None = None
    z_dim: int | None = None

    def _dims_from(self, *modules: Any) -> None:
        for module in modules:
            self.x_dim = getattr(module, "x_dim", self.x_dim)
            self.z_dim = getattr(module, "z_dim", self.z_dim)

    def _inputs(self, x: Any, z: Any) -> tuple[Array, Array]:
        x, z = check_joint(x, z)
        check_dims(x, z, self.x_dim, self.z_dim)
        return x, z


def _groups(name: str, x: Array, z: Array, num_samples: int | None) -> tuple[Array, Array]:
    """``(N, d)`` -> ``(N // K, K, d)``; ``N`` must be a multiple of ``K``."""
    n = x.shape[0]
    k = check_group_size(name, n, num_samples)
    return x.reshape(n // k, k, x.shape[-1]), z.reshape(n // k, k, z.shape[-1])


@functools.partial(jax.jit, static_argnums=0)
def _group_scores(critic: Critic, params: Any, x: Array, z: Array) -> Array:
    return jax.vmap(lambda xg, zg: score_matrix(critic, params, xg, zg))(x, z)


class _ScoreMatrixEstimator(_Estimator):
    """A critic bound on the score matrices of groups of ``num_samples = K`` joint pairs (``None``:
    the whole batch), whose off-diagonal pairs are the negatives.  Subclasses set ``name``,
    ``min_group`` and the per-row ``terms`` and the ``bound`` on score matrices (:mod:`.terms`)."""

    min_group = 1
    terms: Callable[[Array], Array]
    bound: Callable[[Any], BoundEstimate]

    def __init__(self, critic: Critic, num_samples: int | None = None):
        self.critic = critic
        self.num_samples = None if num_samples is None else check_positive_int("num_samples", num_samples)
        if self.num_samples is not None and self.num_samples < self.min_group:
            raise ValueError(
                f"num_samples must be >= {self.min_group} for {self.name} (the off-diagonal pairs are the "
                f"negatives), got {self.num_samples}"
            )
        self._dims_from(critic)

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def _scores(self, params: Any, x: Array, z: Array) -> Array:
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        return _group_scores(self.critic, params, xg, zg)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        bound = jnp.mean(self.terms(self._scores(params, x, z)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return self.bound(self._scores(params, x, z))


class InfoNCE(_ScoreMatrixEstimator):
    """InfoNCE with critic ``critic``, groups of ``num_samples = K`` joint pairs (``None``: the whole batch).

    ``loss`` is minus the in-batch bound; ``estimate`` splits fresh samples into groups of ``K``
    (the bound depends on ``K``: evaluate with the ``K`` you trained with).
    """

    name = "InfoNCE"
    terms = staticmethod(infonce_terms)
    bound = staticmethod(infonce)


class NWJ(_ScoreMatrixEstimator):
    """NWJ / MINE-F with critic ``critic``; negatives are the off-diagonal pairs of groups of ``num_samples``."""

    name = "NWJ"
    min_group = 2
    terms = staticmethod(nwj_terms)
    bound = staticmethod(nwj)


class MINEDV(_ScoreMatrixEstimator):
    """MINE with the Donsker-Varadhan bound; trained on the plug-in in-batch value (biased gradient).

    Belghazi et al. correct the gradient's bias with a moving average of the denominator; here the
    batch is the whole denominator, so use large batches (the bias is O(1/N^2) pairs).
    """

    name = "MINE-DV"
    min_group = 2
    terms = staticmethod(mine_dv_value)
    bound = staticmethod(mine_dv)


class BarberAgakov(_Estimator):
    """Barber-Agakov with a normalised ``proposal`` ``q(z|x)`` (e.g. :class:`GaussianProposal`) and known ``prior``."""

    name = "BA"

    def __init__(self, proposal: Any, prior: Any):
        self.proposal = proposal
        self._dims_from(proposal)
        self.prior = check_prior(prior, self.z_dim)
        self._terms = jax.jit(lambda params, x, z: (self.proposal.log_prob(params, x, z), self.prior.log_prob(z)))

    def init(self, rng_key: Array) -> Any:
        return self.proposal.init(rng_key)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        bound = jnp.mean(barber_agakov_terms(self.proposal.log_prob(params, x, z), self.prior.log_prob(z)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return barber_agakov(*self._terms(params, x, z))


class GIWAE(_Estimator):
    """Generalised IWAE (Brekelmans et al., 2022): proposal ``q(z|x)``, critic ``T``, ``num_samples = K``.

    ``params = {"proposal": ..., "critic": ...}``.  The ``K - 1`` proposal draws are
    reparameterised, so ``loss`` trains ``q`` and ``T`` jointly.  With the same ``q`` family, GIWAE's
    optimum is ``>= `` BA's (take ``T = 0``); with ``q = p(z)`` in the family it is ``>=`` InfoNCE's
    with the same critic family and ``K``.
    """

    name = "GIWAE"

    def __init__(self, proposal: Any, critic: Critic, prior: Any, num_samples: int):
        self.proposal = proposal
        self.critic = critic
        self.num_samples = check_positive_int("num_samples", num_samples)
        self._dims_from(proposal, critic)
        self.prior = check_prior(prior, self.z_dim)
        self._parts_jit = jax.jit(self.parts)

    def init(self, rng_key: Array) -> dict[str, Any]:
        kq, kt = jax.random.split(rng_key)
        return {"proposal": self.proposal.init(kq), "critic": self.critic.init(kt)}

    def parts(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array, Array]:
        """``(log q(z_i|x_i), log p(z_i), scores (K, N))`` for :func:`giwae_terms`, with fresh proposal draws."""
        draws = self.proposal.sample(params["proposal"], rng_key, x, self.num_samples - 1)
        zs = jnp.concatenate([z[None], draws], axis=0)  # (K, N, dz), row 0 the joint sample
        scores = self.critic(params["critic"], x[None], zs)
        return self.proposal.log_prob(params["proposal"], x, z), self.prior.log_prob(z), scores

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        bound = jnp.mean(giwae_terms(*self.parts(params, rng_key, x, z)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return giwae(*self._parts_jit(params, rng_key, x, z))


class MINEAIS(_Estimator):
    """MINE-AIS (Brekelmans et al., 2022): an energy-based posterior ``pi_T(z|x) ∝ p(z) e^{T(x,z)}``.

    Training (``loss``) follows the gradient of ``I_EB(T) = E_p T - E_{p(x)} log Z_T(x)``,
    ``E_p[grad T] - E_{p(x) pi_T}[grad T]``, with negatives from ``num_mcmc_steps`` HMC moves
    (``step_size``, ``num_leapfrog``) on ``z`` targeting ``pi_T(.|x_i)``, started at the joint
    sample ``z_i`` (``mcmc_init="data"``, contrastive divergence; exact at the optimum, where
    ``pi_T = p(z|x)``) or at prior draws (``"prior"``).  The loss's *value* is minus the in-batch
    InfoNCE value of the current critic (a cheap lower bound that, like ``I_EB``, ignores terms
    ``c(x)`` of the critic; MINE-DV does not); its gradient is the energy-based one.
    ``estimate`` evaluates the bound with Multi-Sample AIS (:func:`mine_ais`).
    """

    name = "MINE-AIS"

    def __init__(
        self,
        critic: Critic,
        prior: Any,
        num_mcmc_steps: int = 10,
        step_size: float = 0.1,
        num_leapfrog: int = 5,
        mcmc_init: str = "data",
    ):
        self.critic = critic
        self._dims_from(critic)
        self.prior = check_prior(prior, self.z_dim)
        self.num_mcmc_steps = check_positive_int("num_mcmc_steps", num_mcmc_steps)
        self.step_size = check_positive("step_size", step_size)
        self.num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)
        self.mcmc_init = check_choice("mcmc_init", mcmc_init, ("data", "prior"))

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def negatives(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        """Approximate draws ``(N, dz)`` from ``pi_T(z|x_i)`` and the HMC acceptance rate."""
        key_init, key_mcmc = jax.random.split(rng_key)
        start = z if self.mcmc_init == "data" else self.prior.sample(key_init, (x.shape[0],))

        def log_density(zz):
            return self.prior.log_prob(zz) + self.critic(params, x, zz)

        draws, accept = hmc_chain(key_mcmc, start, log_density, self.num_mcmc_steps, self.step_size, self.num_leapfrog)
        return jax.lax.stop_gradient(draws), accept

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        negatives, _ = self.negatives(jax.lax.stop_gradient(params), rng_key, x, z)
        surrogate = -(jnp.mean(self.critic(params, x, z)) - jnp.mean(self.critic(params, x, negatives)))
        nce = jax.lax.stop_gradient(jnp.mean(infonce_terms(score_matrix(self.critic, params, x, z))))
        return jax.lax.stop_gradient(-nce - surrogate) + surrogate, nce

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any, **ais_kwargs: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return mine_ais(rng_key, self.critic, params, x, z, self.prior, **ais_kwargs)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
class CriticFit(NamedTuple):
    """``params`` after training, ``losses`` ``(num_steps,)`` (the minimised loss) and ``bounds``
    ``(num_steps,)`` (the in-batch bound value of each step; for MINE-AIS the in-batch InfoNCE value).

    For a dict of estimators each field is a dict with the same keys.  No ``to_arviz()``: this is
    an optimisation trace, not draws or an estimate; the estimate comes from the estimator's
    ``estimate``, an :class:`adapters.mi.BoundEstimate`, whose ``to_arviz()`` holds its terms."""

    params: Any
    losses: Any
    bounds: Any


class _Together:
    """Several estimators trained side by side on the same batches: the sum of their losses.

    Their parameters are disjoint, so each one's gradient is its own loss's gradient, and an
    element-wise optimizer (Adam, SGD, ...) updates each exactly as a separate run on the same
    batches would; one compiled program instead of one per estimator.
    """

    def __init__(self, estimators: dict[str, Any]):
        self.estimators = estimators

    def loss(self, params, rng_key, x, z):
        keys = dict(zip(self.estimators, jax.random.split(rng_key, len(self.estimators)), strict=True))
        parts = {name: est.loss(params[name], keys[name], x, z) for name, est in self.estimators.items()}
        total = sum(loss for loss, _ in parts.values())
        return total, {name: (loss, bound) for name, (loss, bound) in parts.items()}


def fit_critic(
    rng_key: Array,
    estimator: Any,
    init_params: Any,
    sample_joint: Callable[[Array, int], tuple[Array, Array]],
    num_steps: int,
    batch_size: int,
    optimizer: Any = None,
) -> CriticFit:
    """Train ``estimator``'s networks on fresh joint batches; one compiled ``lax.scan`` over steps.

    ``sample_joint(rng_key, batch_size) -> (x, z)`` draws ``(batch_size, dx)``, ``(batch_size, dz)``
    joint samples (a jit-able JAX function); ``optimizer`` is an ``optax.GradientTransformation``
    (default ``optax.adam(1e-3)``).  ``estimator`` is any of :class:`InfoNCE`, :class:`NWJ`,
    :class:`MINEDV`, :class:`BarberAgakov`, :class:`GIWAE`, :class:`MINEAIS` (or an object with
    ``loss(params, rng_key, x, z) -> (loss, bound)``), or a dict of them with ``init_params`` a
    dict with the same keys: they are then trained side by side on the same batches (with an
    element-wise optimizer exactly as separate runs would be), which is what a comparison of
    bounds wants and compiles once.
    """
    import optax

    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    named = isinstance(estimator, dict)
    if named:
        if not isinstance(init_params, dict) or set(init_params) != set(estimator):
            raise ValueError(
                f"init_params must be a dict with the estimators' keys {sorted(estimator)} when estimator is a dict, "
                f"got {sorted(init_params) if isinstance(init_params, dict) else type(init_params).__name__}"
            )
        members = list(estimator.values())
    else:
        members = [estimator]
    for member in members:
        if not callable(getattr(member, "loss", None)):
            raise ValueError(f"estimator must have a loss(params, rng_key, x, z) method, got {member!r}")
    if not callable(sample_joint):
        raise ValueError(f"sample_joint must be a function (rng_key, batch_size) -> (x, z), got {sample_joint!r}")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    key_check, rng_key = jax.random.split(rng_key)
    x0, z0 = jax.eval_shape(lambda k: sample_joint(k, batch_size), key_check)
    if len(x0.shape) != 2 or len(z0.shape) != 2 or x0.shape[0] != batch_size or z0.shape[0] != batch_size:
        raise ValueError(
            f"sample_joint must return x (batch_size, dx) and z (batch_size, dz) with batch_size = {batch_size}, "
            f"got shapes {x0.shape} and {z0.shape}"
        )
    for member in members:
        check_dims(x0, z0, getattr(member, "x_dim", None), getattr(member, "z_dim", None))
    objective = _Together(estimator) if named else estimator

    def step(carry, key):
        params, opt_state = carry
        key_data, key_loss = jax.random.split(key)
        x, z = sample_joint(key_data, batch_size)
        (loss, aux), grads = jax.value_and_grad(objective.loss, has_aux=True)(params, key_loss, x, z)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), aux if named else (loss, aux)

    @jax.jit
    def run(params, key):
        (params, _), trace = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, num_steps))
        return params, trace

    params, trace = run(init_params, rng_key)
    if named:
        losses = {name: np.asarray(trace[name][0]) for name in estimator}
        bounds = {name: np.asarray(trace[name][1]) for name in estimator}
        return CriticFit(params, losses, bounds)
    return CriticFit(params, np.asarray(trace[0]), np.asarray(trace[1]))
