"""The hierarchical ODE example (VI-HDS style) in NumPyro: a diffrax solve, the model, conditional encoder inputs,
and predictions for new individuals and for an unseen group.

The model, its constants and the data generator are backend-free: :mod:`adapters.hierarchical_ode` (negative
autoregulation ``dm/dt = alpha / (1 + (p/K)^2) - gamma_m m``, ``dp/dt = m - gamma_p p``; population -> groups ->
individuals, log-normal observations).  Amortized inference follows Roeder et al. (VI-HDS, ICML 2019,
arXiv:1905.12090), Sec. 3: the individuals' log-parameters are the *local* latents, predicted by one encoder
that reads each individual's whole observed series and, conditionally, its group (one-hot, their Sec. 3.1
"conditional encoder"), while the population- and group-level latents keep free Normals.  With
:class:`~numpyro_ext.infer.amortized.AutoAmortizedNormal`::

    guide = AutoAmortizedNormal(hierarchical_ode_model, plate="data", inputs=encoder_inputs,
                                init_loc_fn=init_to_median)
    svi = SVI(hierarchical_ode_model, guide, optax.adam(1e-2), Trace_ELBO())
    result = svi.run(rng_key, 3000, times, group, num_groups, obs=obs)

The ODE is solved with diffrax's adaptive Dormand-Prince 5(4) (as torchdiffeq's ``dopri5`` in the Pyro port), one
solve per individual (``vmap``), gradients by backpropagation through the solver's steps.
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import Predictive

from adapters.hierarchical_ode import (
    ATOL,
    FLOAT32_TOL,
    MAX_STEPS,
    NUM_PARAMS,
    NUM_SPECIES,
    POSITIVE_FLOOR,
    PRIOR_LOC,
    PRIOR_SCALE,
    RTOL,
    SIGMA_PRIOR_SCALE,
    TAU_PRIOR_SCALE,
    check_model_args,
    check_num_groups,
)
from adapters.validation import check_positive_int

#: The global (population- and group-level) latent sites, in model order.
GLOBAL_SITES = ("log_theta_pop", "tau_group", "tau_ind", "sigma", "log_theta_group")


def rhs(t: jax.Array, y: jax.Array, theta: jax.Array) -> jax.Array:
    """``(dm/dt, dp/dt)`` at state ``y = (m, p)`` (2,) for positive parameters ``theta = (alpha, K, gamma_m,
    gamma_p)`` (4,): transcription repressed by the protein (Hill coefficient 2), translation at rate 1."""
    alpha, K, gamma_m, gamma_p = theta[0], theta[1], theta[2], theta[3]
    m, p = y[0], y[1]
    return jnp.stack([alpha / (1.0 + (p / K) ** 2) - gamma_m * m, m - gamma_p * p])


@functools.partial(jax.jit, static_argnames=("rtol", "atol"))
def solve(
    times: jax.Array, log_theta: jax.Array, *, rtol: float | None = None, atol: float | None = None
) -> tuple[jax.Array, jax.Array]:
    """The ODE's solution from ``x(0) = 0`` at ``times`` (T,) for log-parameters ``log_theta`` (..., 4).

    Returns ``(x, ok)``: ``x`` of shape (..., T, 2), NaN where a solve failed (more than ``MAX_STEPS`` steps or
    non-finite values), and ``ok`` (...,).  Tolerances default to ``RTOL``/``ATOL`` (1e-5, 1e-6) in float64 and
    1e-5 in float32 (a few float32 ulps coarser than the rounding error).
    """
    log_theta = jnp.asarray(log_theta)
    dtype = jnp.result_type(log_theta, jnp.asarray(times), float)
    times = jnp.asarray(times, dtype)
    log_theta = log_theta.astype(dtype)
    if rtol is None:
        rtol = RTOL if dtype == jnp.float64 else FLOAT32_TOL
    if atol is None:
        atol = ATOL if dtype == jnp.float64 else FLOAT32_TOL

    def one(row: jax.Array) -> tuple[jax.Array, jax.Array]:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            diffrax.Dopri5(),
            t0=jnp.zeros((), dtype),
            t1=times[-1],
            dt0=None,
            y0=jnp.zeros(NUM_SPECIES, dtype),
            args=jnp.exp(row),
            saveat=diffrax.SaveAt(ts=times),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=MAX_STEPS,
            throw=False,
        )
        ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(sol.ys))
        return jnp.where(ok, sol.ys, jnp.nan), ok

    batch = log_theta.shape[:-1]
    xs, ok = jax.vmap(one)(jnp.reshape(log_theta, (-1, NUM_PARAMS)))
    return jnp.reshape(xs, (*batch, times.shape[0], NUM_SPECIES)), jnp.reshape(ok, batch)


def _check_args(times: Any, group: Any, num_groups: Any, obs: Any) -> int:
    """The shared checks (:func:`adapters.hierarchical_ode.check_model_args`): values only when concrete."""
    concrete = not any(isinstance(v, jax.core.Tracer) for v in (times, group, obs))
    return check_model_args(
        jnp.shape(times),
        jnp.shape(group),
        num_groups,
        None if obs is None else jnp.shape(obs),
        times=np.asarray(times) if concrete else None,
        group=np.asarray(group) if concrete else None,
        obs=np.asarray(obs) if concrete and obs is not None else None,
    )


def hierarchical_ode_model(
    times: Any, group: Any, num_groups: int, obs: Any = None, subsample_size: int | None = None
) -> None:
    """Population -> groups -> individuals, each individual's series from the ODE (module docstring of
    :mod:`adapters.hierarchical_ode` for the equations and priors).

    :param times: observation times (T,), > 0 and increasing.
    :param group: each individual's group index (N,), integers in ``[0, num_groups)``.
    :param num_groups: ``G``, a Python int (it sizes the plate "groups").
    :param obs: the observations (N, T, 2) (mRNA, protein), > 0; ``None`` draws them.
    :param subsample_size: ``None`` (every individual each call) or ``b``: the plate ``"data"`` visits ``b`` random
        individuals, scaled by ``N / b`` (minibatch SVI; an amortized guide keeps memory independent of ``N``).

    Sites: ``log_theta_pop`` (4,), ``tau_group``, ``tau_ind``, ``sigma`` (scalars); plate ``"groups"``:
    ``log_theta_group`` (G, 4); plate ``"data"`` (individuals): ``log_theta`` (N, 4), the deterministic
    ``trajectory`` (N, T, 2) (noise-free solution, NaN where the solve failed) and the observed ``obs``.  A
    failed solve makes the log density ``-inf`` (factor ``ode_failed``); solutions are floored at
    ``POSITIVE_FLOOR`` before their log is taken, so a parameter value whose solution rounds to zero gets a
    finite, very low likelihood instead of NaN.
    """
    num_groups = _check_args(times, group, num_groups, obs)
    dtype = jnp.result_type(float)
    times = jnp.asarray(times, dtype)
    group = jnp.asarray(group)
    log_theta_pop = numpyro.sample("log_theta_pop", dist.Normal(jnp.asarray(PRIOR_LOC, dtype), PRIOR_SCALE).to_event(1))
    tau_group = numpyro.sample("tau_group", dist.HalfNormal(TAU_PRIOR_SCALE))
    tau_ind = numpyro.sample("tau_ind", dist.HalfNormal(TAU_PRIOR_SCALE))
    sigma = numpyro.sample("sigma", dist.HalfNormal(SIGMA_PRIOR_SCALE))
    # values conditioned on may be Python floats: the scales broadcast against (groups|data, ..., 4) below
    tau_group, tau_ind, sigma = jnp.asarray(tau_group), jnp.asarray(tau_ind), jnp.asarray(sigma)
    with numpyro.plate("groups", num_groups):
        log_theta_group = numpyro.sample(
            "log_theta_group", dist.Normal(log_theta_pop[..., None, :], tau_group[..., None, None]).to_event(1)
        )
    with numpyro.plate("data", group.shape[0], subsample_size=subsample_size) as idx:
        log_theta = numpyro.sample(
            "log_theta", dist.Normal(log_theta_group[..., group[idx], :], tau_ind[..., None, None]).to_event(1)
        )
        x, ok = solve(times, log_theta)
        numpyro.deterministic("trajectory", x)
        numpyro.factor("ode_failed", jnp.where(ok, 0.0, -jnp.inf))
        x = jnp.where(ok[..., None, None], jnp.maximum(x, POSITIVE_FLOOR), 1.0)
        obs = None if obs is None else jnp.asarray(obs)[idx]
        numpyro.sample("obs", dist.LogNormal(jnp.log(x), sigma[..., None, None, None]).to_event(2), obs=obs)


def encoder_inputs(
    times: Any, group: Any, num_groups: int, obs: Any = None, subsample_size: int | None = None
) -> jax.Array:
    """The conditional encoder's inputs (N, T * 2 + G): each individual's log observations, flattened, then its
    group as a one-hot vector (VI-HDS Sec. 3.1).  Pass as ``AutoAmortizedNormal(..., inputs=encoder_inputs)``;
    it takes the model's arguments.  ``obs`` is required: the encoder reads the data.  ``subsample_size`` is
    the model's argument, unused here: the guide indexes the full array with the plate's subsample."""
    if obs is None:
        raise ValueError("obs: the encoder reads each individual's observed series, so obs (N, T, 2) must be given")
    num_groups = check_num_groups(num_groups)
    obs = jnp.asarray(obs)
    log_obs = jnp.reshape(jnp.log(obs), (obs.shape[0], -1))
    return jnp.concatenate([log_obs, jax.nn.one_hot(jnp.asarray(group), num_groups, dtype=log_obs.dtype)], axis=1)


def _global_draws(rng_key: jax.Array, guide: Any, params: dict, num_samples: int) -> dict[str, jax.Array]:
    """``num_samples`` draws of the global latents from the fitted guide (any autoguide)."""
    draws = guide.sample_posterior(rng_key, params, sample_shape=(num_samples,))
    return {k: draws[k] for k in GLOBAL_SITES}


def predict_individuals(
    rng_key: jax.Array,
    guide: Any,
    params: dict,
    times: Any,
    group: Any,
    num_groups: int,
    obs: Any,
    *,
    num_samples: int = 200,
) -> dict[str, jax.Array]:
    """Posterior predictions for individuals with data ``obs`` (N, T, 2) in known groups ``group`` (N,): the
    training individuals or new ones, whose posterior the fitted encoder gives without refitting (amortization).

    Global draws come from the fitted ``guide`` (an :class:`~numpyro_ext.infer.amortized.AutoAmortizedNormal`
    with ``inputs=encoder_inputs``), each individual's ``log_theta`` from the encoder's Normal for its data
    (mean-field: independent of the global draw).  Returns ``{"log_theta": (S, N, 4), "trajectory": (S, N, T,
    2), "obs": (S, N, T, 2)}``: ``S = num_samples`` draws of the parameters, noise-free trajectories and
    replicated observations.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    num_groups = _check_args(times, group, num_groups, obs)
    key_global, key_local, key_pred = jax.random.split(rng_key, 3)
    samples = _global_draws(key_global, guide, params, num_samples)
    loc, scale = guide.encode(params, encoder_inputs(times, group, num_groups, obs))["log_theta"]
    eps = jax.random.normal(key_local, (num_samples, *loc.shape), loc.dtype)
    samples["log_theta"] = loc + scale * eps
    predictive = Predictive(
        hierarchical_ode_model, posterior_samples=samples, return_sites=["log_theta", "trajectory", "obs"]
    )
    return predictive(key_pred, times, group, num_groups)


def predict_unseen_group(
    rng_key: jax.Array, guide: Any, params: dict, times: Any, num_individuals: int, *, num_samples: int = 200
) -> dict[str, jax.Array]:
    """Predictions for ``num_individuals`` individuals of a group the fit never saw, from no data of theirs.

    Per draw: population-level latents (``log_theta_pop``, ``tau_group``, ``tau_ind``, ``sigma``) from the
    fitted ``guide`` (any autoguide of :func:`hierarchical_ode_model`), a new group ``log_theta_group ~
    N(log_theta_pop, tau_group^2 I)``, its individuals ``log_theta ~ N(log_theta_group, tau_ind^2 I)``, their
    trajectories and observations.  Returns ``{"log_theta_group": (S, 1, 4), "log_theta": (S, M, 4),
    "trajectory": (S, M, T, 2), "obs": (S, M, T, 2)}``, ``S = num_samples``, ``M = num_individuals``.
    """
    num_individuals = check_positive_int("num_individuals", num_individuals)
    num_samples = check_positive_int("num_samples", num_samples)
    key_global, key_pred = jax.random.split(rng_key)
    samples = _global_draws(key_global, guide, params, num_samples)
    samples.pop("log_theta_group")  # the new group is drawn from the population, not from a fitted group
    group = jnp.zeros(num_individuals, dtype=jnp.int32)
    predictive = Predictive(
        hierarchical_ode_model,
        posterior_samples=samples,
        return_sites=["log_theta_group", "log_theta", "trajectory", "obs"],
    )
    return predictive(key_pred, times, group, 1)
