"""Multi-sample AIS and IWAE bounds on mutual information, for a joint with a known likelihood, in JAX.

Brekelmans, Huang, Ghassemi, Ver Steeg, Grosse & Makhzani, "Improving Mutual Information
Estimation with Annealed and Energy-Based Bounds", ICLR 2022 (arXiv:2303.06992).

For a joint ``p(z) p(x | z)`` that can be sampled and whose prior and likelihood densities are
known, ``I(x; z) = E_{p(x,z)}[log p(x | z)] - E_{p(x)}[log p(x)]``: the first term is a plain
Monte Carlo average, so every bound on ``log p(x)`` gives the opposite bound on ``I``.  The
paper's importance-sampling view (its Eq. 2): with a proposal ``q_PROP`` and a target
``p_TGT`` on an extended space whose normalisers are 1 and ``p(x)``, the log importance weight
bounds ``log p(x)`` from below in expectation under ``q_PROP`` and from above under ``p_TGT``.
The four estimators here are that view with ``K`` samples (the paper's Multi-Sample AIS bounds; the
``T = 1`` case is the IWAE pair of bounds):

* :func:`ais_mi_upper` — ``K`` forward AIS chains from ``pi_0`` (the prior, or a proposal
  ``q(z | x)``) to ``p(z | x)``, each with weight ``w_k``; ``E log((1/K) sum_k w_k) <= log p(x)``
  so, per outer sample ``(x_i, z_i) ~ p(x, z)``::

      I_upper = mean_i [ log p(x_i | z_i) - log((1/K) sum_{k=1}^K w_k(x_i)) ]  >=  I(x; z).

* :func:`ais_mi_lower` — ``K - 1`` forward chains and ONE reverse chain started from the true
  ``z_i`` (an exact posterior sample for ``x_i``), which runs the same kernels backwards and
  has the same weight function ``w_1``; the multi-sample upper bound on ``log p(x)`` then gives::

      I_lower = mean_i [ log p(x_i | z_i) - log((1/K) (w_1(x_i; z_i) + sum_{k=2}^K w_k(x_i))) ]  <=  I(x; z).

* :func:`iwae_mi_upper` / :func:`iwae_mi_lower` — ``T = 1``: ``w(z) = p(x, z) / q(z | x)``
  (``= p(x | z)`` with the prior), ``z^{1:K} ~ q`` for the upper bound and
  ``z^1 = z_i``, ``z^{2:K} ~ q`` for the lower bound.

Both directions tighten as ``K`` or ``T`` grows and meet at ``I`` when the chains are exact.

**Saturation** (provable, per sample, for the IWAE lower bound): since the sum contains the
true sample's weight ``w(z_i) = p(x_i, z_i) / q(z_i | x_i)``,
``l_i <= log K + log q(z_i | x_i) - log p(z_i)``; with the prior as proposal ``l_i <= log K``
exactly, so ``I_lower <= log K`` however large ``I`` is (the InfoNCE-type ceiling).  For AIS,
``l_i <= log K + log p(x_i | z_i) - log w_1``, and the reverse chain's ``log w_1`` approaches
``log p(x_i)`` as ``T`` grows, which lifts the ceiling to ``log K`` plus the pointwise MI.

**Validity needs fixed kernels.**  The lower bound needs the reverse chain to be the exact
reversal of the forward ones, so every chain uses the same fixed per-temperature step-size
schedule; with ``adapt_step_size`` it comes from an adaptive pilot on independent joint
draws (see :mod:`numpyro_ext.infer.ais`).

Inputs are JAX functions of ONE sample: ``sample_joint(rng_key, n) -> (x (n, dx), z (n, dz))``,
``log_prior(z (dz,))``, ``log_likelihood(x (dx,), z (dz,))``, and optionally
``proposal(x) -> distribution`` with ``sample(rng_key, (K,)) -> (K, dz)`` and ``log_prob(z)``
(e.g. a NumPyro distribution with event shape ``(dz,)``).  Or a NumPyro model in place of the
three functions, with ``latent=`` and ``observed=`` site names (and ``model_args``,
``model_kwargs``): :func:`numpyro_ext.infer.model_util.joint_model` makes the three functions
(``z`` the latent sites unconstrained, ``x`` the observed sites, both raveled), after checking
the model's distributions as NUTS does.  Every estimate is a :class:`adapters.mi.BoundEstimate`
whose standard error is over the ``N`` outer samples; a run whose transitions diverge (more than
1%) or whose importance weights are degenerate (mean Kish ESS per outer sample below a tenth of
``K``) warns with :class:`adapters.diagnostics.ReliabilityWarning`, and the messages are kept in
the estimate's ``warnings``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.mi import (
    AISConfig,
    BoundEstimate,
    check_joint_draws,
    check_joint_functions,
    check_site_names,
    multi_sample_reliability,
)
from adapters.validation import check_numeric, check_positive_int
from numpyro_ext.infer.ais.anneal import Adaptation, anneal, check_rng_key, pilot_step_sizes
from numpyro_ext.infer.ais.core import KernelSettings
from numpyro_ext.infer.model_util import joint_model
from numpyro_ext.infer.smc_util import log_mean_exp

__all__ = ["ais_mi_lower", "ais_mi_upper", "iwae_mi_lower", "iwae_mi_upper"]

Array = jax.Array


@functools.lru_cache(maxsize=16)
def _cached_joint_model(model: Callable, latent: tuple, observed: tuple, args: tuple, kwargs: tuple, algorithm: str):
    return joint_model(model, list(latent), list(observed), args, dict(kwargs), algorithm)


def _joint(rng_key: Any, functions: tuple, site_args: tuple, algorithm: str) -> tuple[Array, Callable, ...]:
    """``(rng_key, sample_joint, log_prior, log_likelihood)``: the three functions as given, or a model's
    (``functions[0]`` with ``site_args = (latent, observed, model_args, model_kwargs)``), after the checks
    of :func:`adapters.mi.check_joint_functions`.  A model's functions are cached on the model and
    hashable arguments, so the lower and the upper bound of one model share a compiled program."""
    rng_key = check_rng_key(rng_key)
    if not check_joint_functions(functions, site_args, ("rng_key", "n")):
        return (rng_key, *functions)
    model, (latent, observed, model_args, model_kwargs) = functions[0], site_args
    try:
        key = (model, *(tuple(check_site_names(n, v)) for n, v in (("latent", latent), ("observed", observed))))
        key += (tuple(model_args), tuple(sorted((model_kwargs or {}).items())), algorithm)
        joint = _cached_joint_model(*key)
    except TypeError as err:  # unhashable arguments (arrays): build afresh; a wrong site name type raises anew
        if "unhashable" not in str(err):
            raise
        joint = joint_model(model, latent, observed, model_args, model_kwargs, algorithm)
    return rng_key, joint.sample_joint, joint.log_prior, joint.log_likelihood


def _reliability(algorithm: str, log_weights: Any, num_divergent: int, num_steps: int) -> list[str]:
    """:func:`adapters.mi.multi_sample_reliability`, warning at the user's call
    (user -> public bound -> body -> here)."""
    return multi_sample_reliability(algorithm, np.asarray(log_weights), num_divergent, num_steps, stacklevel=6)


def _joint_draws(sample_joint: Callable, rng_key: Array, num: int) -> tuple[Array, Array]:
    x, z = check_joint_draws(sample_joint(rng_key, num), "sample_joint(rng_key, n)")
    x, z = jnp.asarray(x), jnp.asarray(z)
    if x.ndim != 2 or z.ndim != 2 or x.shape[0] != num or z.shape[0] != num:
        raise ValueError(
            f"sample_joint(rng_key, n) must return (x, z) of shapes (n, dx) and (n, dz); for n={num} it returned "
            f"shapes {x.shape} and {z.shape}"
        )
    return x, z


def _densities(log_prior: Callable, log_likelihood: Callable, proposal: Callable | None, x: Array):
    """``(log pi_0, log L)`` for one ``x``: the prior and the likelihood, or ``q(. | x)`` and
    ``log p(z) + log p(x | z) - log q(z | x)``."""
    if proposal is None:
        return log_prior, lambda z: log_likelihood(x, z)
    q = proposal(x)
    return q.log_prob, lambda z: log_prior(z) + log_likelihood(x, z) - q.log_prob(z)


def _proposal_draws(proposal: Callable, rng_key: Array, x: Array, num: int) -> Array:
    """``(N, K, dz)`` draws of ``q(. | x_i)`` for each ``x_i``."""

    def draw(key, x_i):
        draws = jnp.asarray(proposal(x_i).sample(key, (num,)))
        if draws.ndim != 2:
            raise ValueError(f"proposal(x).sample(key, (K,)) must return shape (K, dz), got {draws.shape}")
        return draws

    return jax.vmap(draw)(jax.random.split(rng_key, x.shape[0]), x)


def _split_key(rng_key: Array) -> tuple[Array, Array, Array, Array]:
    """Keys for the outer joint draws, the initial draws, the chains and the pilot: the same in
    the AIS and IWAE estimators, so ``num_steps=1`` AIS sees the IWAE estimator's samples."""
    joint_key, proposal_key, chain_key, pilot_key = jax.random.split(rng_key, 4)
    return joint_key, proposal_key, chain_key, pilot_key


def _finish(
    per_sample: Array, kind: str, estimator: str, details: dict, return_details: bool, warnings: list[str]
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    estimate = BoundEstimate.from_samples(np.asarray(per_sample), kind, estimator, warnings)
    if not return_details:
        return estimate
    return estimate, {k: np.asarray(v) for k, v in details.items()} | {"per_sample": np.asarray(per_sample)}


# ---------------------------------------------------------------------------------------
# IWAE (T = 1)
# ---------------------------------------------------------------------------------------
def _cached(builder: Callable, *args: Any) -> Callable:
    """``builder(*args)``, cached on its (hashable) arguments; built afresh for unhashable ones."""
    try:
        return builder(*args)
    except TypeError:  # an unhashable function or proposal
        return builder.__wrapped__(*args)


@functools.lru_cache(maxsize=32)
def _draws_fn(sample_joint, log_likelihood, proposal, num_samples: int, num_inner: int) -> Callable:
    """A jitted ``(joint_key, proposal_key) -> (x, z, draws (N, K, dz), log p(x_i | z_i) (N,))``."""

    @jax.jit
    def draws(joint_key, proposal_key):
        if proposal is None:
            # the outer draws and the prior draws come from one call (the z of N + N K joint draws)
            x, z = _joint_draws(sample_joint, joint_key, num_samples * (1 + num_inner))
            inner = z[num_samples:].reshape(num_samples, num_inner, z.shape[-1])
            x, z = x[:num_samples], z[:num_samples]
        else:
            x, z = _joint_draws(sample_joint, joint_key, num_samples)
            inner = _proposal_draws(proposal, proposal_key, x, num_inner)
        return x, z, inner, jax.vmap(log_likelihood)(x, z)

    return draws


@functools.lru_cache(maxsize=32)
def _iwae_fn(sample_joint, log_prior, log_likelihood, proposal, num_samples, num_importance) -> Callable:
    """A jitted ``(joint_key, proposal_key, lower) -> (x, z, per-sample bound, log p(x|z), log p(x) bound,
    log weights (N, K))``;
    ``lower`` is traced, so both bounds share one compiled program."""
    draws_fn = _cached(_draws_fn, sample_joint, log_likelihood, proposal, num_samples, num_importance)

    @jax.jit
    def run(joint_key, proposal_key, lower):
        x, z, draws, log_px_z = draws_fn(joint_key, proposal_key)

        def one(x_i, z_i, draws_i):
            _, log_weight = _densities(log_prior, log_likelihood, proposal, x_i)
            with_true = jnp.concatenate([z_i[None].astype(draws_i.dtype), draws_i[: num_importance - 1]])
            return jax.vmap(log_weight)(jnp.where(lower, with_true, draws_i))

        log_w = jax.vmap(one)(x, z, draws)
        log_px = log_mean_exp(log_w, axis=-1)
        return x, z, log_px_z - log_px, log_px_z, log_px, log_w

    return run


def _bound_pair(body: Callable, name: str) -> tuple[Callable, Callable]:
    """``{name}_lower`` and ``{name}_upper``: ``body(*args, lower=True/False, **kwargs)`` with the
    signature of ``body`` less its keyword-only ``lower``, so both bounds share one signature and body."""
    signature = inspect.signature(body)
    public = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "lower"])

    def make(lower: bool) -> Callable:
        def bound(*args: Any, **kwargs: Any) -> Any:
            return body(*args, lower=lower, **kwargs)

        bound.__name__ = bound.__qualname__ = f"{name}_{'lower' if lower else 'upper'}"
        bound.__signature__ = public  # type: ignore[attr-defined]
        return bound

    return make(True), make(False)


def _iwae(
    rng_key: Array,
    sample_joint: Callable | None = None,
    log_prior: Callable | None = None,
    log_likelihood: Callable | None = None,
    num_samples: int = 256,
    num_importance: int = 16,
    proposal: Callable | None = None,
    return_details: bool = False,
    *,
    latent: str | list[str] | None = None,
    observed: str | list[str] | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    lower: bool,
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    """:func:`iwae_mi_lower` (``lower``) and :func:`iwae_mi_upper`."""
    kind = "lower" if lower else "upper"
    num_samples = check_positive_int("num_samples", num_samples)
    num_importance = check_positive_int("num_importance", num_importance)
    rng_key, sample_joint, log_prior, log_likelihood = _joint(
        rng_key,
        (sample_joint, log_prior, log_likelihood),
        (latent, observed, model_args, model_kwargs),
        "iwae_mi_lower/iwae_mi_upper",
    )
    joint_key, proposal_key, _, _ = _split_key(rng_key)
    run = _cached(_iwae_fn, sample_joint, log_prior, log_likelihood, proposal, num_samples, num_importance)
    x, z, values, log_px_z, log_px, log_w = run(joint_key, proposal_key, lower)
    warned = _reliability(f"iwae_mi_{kind}", log_w, 0, 1)
    details = {"x": x, "z": z, "log_px_given_z": log_px_z, "log_px_bound": log_px, "log_weights": log_w}
    return _finish(values, kind, f"iwae-mi-{kind}", details, return_details, warned)


iwae_mi_lower, iwae_mi_upper = _bound_pair(_iwae, "iwae_mi")
iwae_mi_lower.__doc__ = """IWAE lower bound on ``I(x; z)``: ``mean_i [log p(x_i|z_i) - log((1/K) sum_k w(z^k))]``,
    ``z^1 = z_i`` (exact posterior sample), ``z^{2:K} ~ q(. | x_i)`` (the prior by default),
    ``w = p(x, z) / q(z | x)`` (module docstring; the ``T = 1`` multi-sample AIS lower bound).

    ``K = num_importance``, ``N = num_samples`` outer draws.  Saturates: every per-sample term
    is ``<= log K + log q(z_i|x_i) - log p(z_i)`` (``<= log K`` with the prior).  With
    ``return_details`` also returns a dict with ``x``, ``z``, ``per_sample`` ``(N,)``,
    ``log_px_given_z``, ``log_px_bound`` (the upper bound on ``log p(x_i)``) and ``log_weights``
    ``(N, K)``; a model in place of the three functions and the warnings as in :func:`ais_mi_lower`.
    """

iwae_mi_upper.__doc__ = """IWAE upper bound on ``I(x; z)``: ``mean_i [log p(x_i|z_i) - log((1/K) sum_k w(z^k))]``
    with ``z^{1:K} ~ q(. | x_i)`` (the prior by default), ``w = p(x, z) / q(z | x)``; the IWAE
    lower bound on ``log p(x_i)`` makes it an upper bound on ``I`` (module docstring).
    ``return_details`` as in :func:`iwae_mi_lower` (``log_px_bound`` is then a lower bound).
    """


# ---------------------------------------------------------------------------------------
# Multi-sample AIS
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _ais_program(
    sample_joint,
    log_prior,
    log_likelihood,
    proposal,
    num_samples,
    num_chains,
    num_leapfrog,
    transition,
    max_delta_energy,
    target,
    rate,
):
    """One jitted pass ``(keys, betas, steps, adapt, lower, inverse_mass_matrix) -> dict``: the outer
    and initial draws, ``N x K`` chains (for the lower bound chain 0 of each ``x_i`` runs in
    reverse from ``z_i``) and the per-sample bounds.  ``adapt`` and ``lower`` are traced, so
    the pilot, the lower and the upper bound share one compiled program (cached on the
    functions and sizes)."""
    draws_fn = _cached(_draws_fn, sample_joint, log_likelihood, proposal, num_samples, num_chains)

    @jax.jit
    def program(keys, betas, steps, adapt, lower, inverse_mass_matrix):
        joint_key, proposal_key, chain_key = keys[0], keys[1], keys[2]
        x, z, draws, log_px_z = draws_fn(joint_key, proposal_key)
        with_true = jnp.concatenate([z[:, None, :].astype(draws.dtype), draws[:, : num_chains - 1]], axis=1)
        init = jnp.where(lower, with_true, draws).reshape(num_samples * num_chains, -1)
        # all N x K chains on one axis, chain k of x_i at i * K + k; chain 0 of each x_i reverse for the lower bound
        reverse = jnp.tile(lower & (jnp.arange(num_chains) == 0), num_samples)
        data = jnp.repeat(x, num_chains, axis=0)
        steps_tc = jnp.broadcast_to(steps.astype(draws.dtype)[:, None], (steps.shape[0], init.shape[0]))

        def log_base(z, x_i):
            return _densities(log_prior, log_likelihood, proposal, x_i)[0](z)

        def log_increment(z, x_i):
            return _densities(log_prior, log_likelihood, proposal, x_i)[1](z)

        adaptation = Adaptation(adapt, target, rate)
        kernel = KernelSettings(num_leapfrog, inverse_mass_matrix, transition, max_delta_energy)
        betas = betas.astype(draws.dtype)
        out = anneal(chain_key, init, log_base, log_increment, betas, steps_tc, reverse, adaptation, kernel, data)
        log_w = out.log_weights.reshape(num_samples, num_chains)
        log_px = log_mean_exp(log_w, axis=-1)
        return {
            "x": x,
            "z": z,
            "per_sample": log_px_z - log_px,
            "log_px_given_z": log_px_z,
            "log_px_bound": log_px,
            "log_weights": log_w,
            "step_sizes": steps,
            "pilot_step_sizes": pilot_step_sizes(out.adapted_step_size, log_w),
            "acceptance_rate": jnp.mean(out.acceptance_rate, axis=1),
            "num_divergent": jnp.sum(out.is_divergent),
        }

    return program


def _ais_mi_bound(
    rng_key: Array,
    sample_joint: Callable | None = None,
    log_prior: Callable | None = None,
    log_likelihood: Callable | None = None,
    num_samples: int = 128,
    num_chains: int = 16,
    num_steps: int = 100,
    schedule: Any = "sigmoid",
    proposal: Callable | None = None,
    step_size: float = 0.1,
    num_leapfrog: int = 10,
    adapt_step_size: bool = True,
    target_accept_prob: float = 0.65,
    inverse_mass_matrix: Any = None,
    transition: str | Callable = "hmc",
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
    return_details: bool = False,
    *,
    latent: str | list[str] | None = None,
    observed: str | list[str] | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    lower: bool,
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    """:func:`ais_mi_lower` (``lower``) and :func:`ais_mi_upper`."""
    cfg = AISConfig.from_arguments(locals())
    kind = "lower" if lower else "upper"
    num_samples = check_positive_int("num_samples", num_samples)
    if inverse_mass_matrix is not None:
        check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (dz,) or (dz, dz)")
    rng_key, sample_joint, log_prior, log_likelihood = _joint(
        rng_key,
        (sample_joint, log_prior, log_likelihood),
        (latent, observed, model_args, model_kwargs),
        "ais_mi_lower/ais_mi_upper",
    )
    out = _ais_mi(
        rng_key, sample_joint, log_prior, log_likelihood, num_samples, proposal, inverse_mass_matrix, cfg, lower
    )
    warned = _reliability(f"ais_mi_{kind}", out["log_weights"], int(out["num_divergent"]), cfg.num_steps)
    details = {k: v for k, v in out.items() if k not in ("per_sample", "pilot_step_sizes")}
    return _finish(out["per_sample"], kind, f"ais-mi-{kind}", details, return_details, warned)


def _ais_mi(rng_key, sample_joint, log_prior, log_likelihood, num_samples, proposal, inverse_mass_matrix, cfg, lower):
    """The pilot (when ``cfg.adapt_step_size``) and the estimating pass of :func:`_ais_program`: its output dict."""
    program = _cached(
        _ais_program,
        sample_joint,
        log_prior,
        log_likelihood,
        proposal,
        num_samples,
        cfg.num_chains,
        cfg.num_leapfrog,
        cfg.transition,
        cfg.max_delta_energy,
        cfg.target_accept_prob,
        cfg.adaptation_rate,
    )
    keys = jnp.stack(_split_key(rng_key))  # joint, proposal, chain, pilot
    z_shape = jax.eval_shape(lambda key: sample_joint(key, 1)[1], keys[0])
    dtype, dim = z_shape.dtype, z_shape.shape[-1]
    imm = jnp.ones(dim, dtype) if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix, dtype)
    if imm.shape not in ((dim,), (dim, dim)):
        raise ValueError(f"inverse_mass_matrix must have shape ({dim},) or ({dim}, {dim}), got {imm.shape}")
    betas = jnp.asarray(cfg.betas, dtype)
    steps = jnp.full(cfg.num_steps, cfg.step_size, dtype)
    if cfg.adapt_step_size:
        # the pilot: its own joint draws and chains, so the schedule is independent of the estimate's
        pilot_keys = jnp.stack(_split_key(keys[3]))
        steps = program(pilot_keys, betas, steps, True, False, imm)["pilot_step_sizes"]
    return program(keys, betas, steps, False, lower, imm)


ais_mi_lower, ais_mi_upper = _bound_pair(_ais_mi_bound, "ais_mi")
ais_mi_lower.__doc__ = """Multi-sample AIS lower bound on ``I(x; z)`` (Brekelmans et al. 2022, Multi-Sample AIS).

    For each of ``N = num_samples`` draws ``(x_i, z_i) ~ p(x, z)``: ``K - 1`` forward AIS chains
    (``K = num_chains``) from ``pi_0`` (prior, or ``proposal(x_i)``) to ``p(z | x_i)`` and one
    reverse chain from ``z_i``; ``l_i = log p(x_i|z_i) - log((1/K) sum_k w_k)`` (module
    docstring).  ``E l_i <= I`` for every ``T`` and ``K``; ``num_steps=1`` is
    :func:`iwae_mi_lower` on the same samples.  The HMC arguments are those of
    :class:`numpyro_ext.infer.AIS`; the step-size pilot (when ``adapt_step_size``) runs on
    ``N`` fresh joint draws.  Instead of the three functions, a NumPyro model with ``latent=``
    and ``observed=`` site names (and ``model_args``, ``model_kwargs``; module docstring).  The
    estimate keeps its per-sample terms (``to_arviz()``) and the messages of any
    :class:`adapters.diagnostics.ReliabilityWarning` (``warnings``: more than 1% divergent
    transitions, or a mean ESS per outer draw below ``K / 10``).  ``return_details`` adds a
    dict: ``x``, ``z``, ``per_sample`` ``(N,)``, ``log_px_given_z``, ``log_px_bound`` (upper bounds on ``log p(x_i)``),
    ``log_weights`` ``(N, K)`` (column 0 the reverse chain), ``step_sizes`` ``(T,)``,
    ``acceptance_rate`` ``(T,)``, ``num_divergent``.
    """

ais_mi_upper.__doc__ = """Multi-sample AIS upper bound on ``I(x; z)`` (Brekelmans et al. 2022, Multi-Sample AIS).

    ``K`` forward chains per outer draw ``(x_i, z_i)``;
    ``u_i = log p(x_i|z_i) - log((1/K) sum_k w_k)`` with ``E u_i >= I``.  Arguments and
    ``return_details`` as in :func:`ais_mi_lower` (``log_px_bound`` is then a lower bound on
    ``log p(x_i)``); ``num_steps=1`` is :func:`iwae_mi_upper` on the same samples.
    """
