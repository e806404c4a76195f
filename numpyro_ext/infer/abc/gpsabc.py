"""GPS-ABC in JAX: Metropolis-Hastings on a Gaussian-process surrogate of the simulator's statistics.

Meeds & Welling, "GPS-ABC: Gaussian Process Surrogate Approximate Bayesian Computation" (UAI 2014,
arXiv:1401.2838).  Every simulation ``(u_n, s_n)`` ever run is kept, and each summary statistic
``j`` gets its own Gaussian process over the prior's unconstrained parameters ``u`` (tinygp: a
constant mean, an ARD squared-exponential kernel and a homoscedastic noise ``sigma_j^2``, the
simulator's own scatter).  The likelihood of ``theta`` is the synthetic likelihood built from the
surrogate, with the GP's latent function ``f_j(u)`` as the mean of statistic ``j`` and its noise
``sigma_j^2`` (plus ``epsilon^2``) as its variance::

    log p(y | u, f) = sum_j log N(y_j; f_j(u), sigma_j^2 + epsilon^2)            ("gaussian")
    log p(y | u, f) = sum_j log Phi(+-(y_j - f_j(u)) / sqrt(sigma_j^2 + epsilon^2))  (one-sided, POPE)

The chain is a random-walk Metropolis-Hastings on ``u`` (the prior's density there includes the
Jacobian of the map).  At each step the surrogate's uncertainty makes the acceptance probability
``alpha = min(1, p(u') p(y | u', f) / (p(u) p(y | u, f)))`` a random variable: ``M`` joint draws of
``(f(u), f(u'))`` from the GP posterior (every statistic, the 2 x 2 covariance of the two points
included) give ``M`` draws ``alpha^(m)``.  With ``u_mh ~ U(0, 1)`` drawn once per step and ``tau``
the median of the ``alpha^(m)``, the step accepts when ``u_mh <= tau``, and the probability that
this decision is wrong is estimated as the decision error

    E(u_mh) = (1/M) #{m: alpha^(m) <  u_mh}   if u_mh <= tau   (we accept; wrong if alpha < u_mh)
    E(u_mh) = (1/M) #{m: alpha^(m) >= u_mh}   if u_mh >  tau   (we reject; wrong if alpha >= u_mh)

While ``E(u_mh) > xi`` the step runs ``delta_s`` new simulations, adds them to the training set,
re-conditions the GPs and draws ``M`` new ``alpha^(m)`` (at most ``max_acquisitions`` rounds per
step; a step still above ``xi`` then decides by the median and is counted as ``capped``).  Where:
at ``u`` or ``u'``, whichever has the larger variance of its ``M`` surrogate log likelihoods
(``acquisition="variance"``: the point whose uncertainty spreads ``alpha`` most), or one of the two
at random (``acquisition="random"``, the choice of the authors' adaptive-MH code).  The paper's
sections and equation numbers are not cited here: only its abstract and the authors' code
(tedmeeds/abcpy) could be read while this was written.

Hyperparameters (per statistic: constant mean, amplitude, noise, one lengthscale per dimension)
are fitted by maximising tinygp's log marginal likelihood with Adam (optax) on standardised inputs
and outputs, at the start and whenever the training set has grown by the factor ``refit_growth``
since the last fit (warm-started); every acquisition re-conditions the GPs at the current
hyperparameters.  A fit whose log marginal likelihood is not finite raises an error.

Training set: a fixed-capacity buffer with a mask (``SurrogateData``), doubled on the host when an
MH step could overflow it, so the jitted step compiles once per capacity (``log2`` times in a
run).  Masked rows (unused slots and non-finite simulations, which are counted and never used)
sit at distinct inputs far from every datum, where the squared-exponential kernel is exactly 0:
they are independent of the data and their constant contribution to the marginal likelihood is
removed exactly.

Pieces: :class:`SurrogateData`, :func:`empty_data`, :func:`add_simulations`, :func:`grow`,
:class:`GPParams`, :class:`Standardizer`, :func:`fit_standardizer`, :func:`log_marginal_likelihood`,
:func:`fit_hyperparameters`, :func:`predict`, :func:`decision_error`, :func:`gpsabc_step`; the
shell :class:`GPSABC` returns an :class:`adapters.abc.ABCResult`.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tinygp
from jax.scipy.special import log_ndtr

from adapters.abc import ABCResult, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_choice, check_greater, check_non_negative, check_positive_int
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows
from numpyro_ext.infer.abc.rejection import check_problem, check_rng_key, mad_scale, prior_predictive, scaled_distances

__all__ = [
    "GPParams",
    "GPSABC",
    "GPSABCInfo",
    "GPSABCState",
    "Standardizer",
    "SurrogateData",
    "add_simulations",
    "decision_error",
    "empty_data",
    "fit_hyperparameters",
    "fit_standardizer",
    "gpsabc_step",
    "grow",
    "log_marginal_likelihood",
    "predict",
    "surrogate_log_likelihood",
]

Array = jax.Array
ACQUISITIONS = ("variance", "random")
LIKELIHOODS = ("gaussian", "below", "above")
# Bounds of the standardised hyperparameters (inputs and outputs divided by their spread): they keep
# the kernel matrix well conditioned and the "far" inputs of masked rows far.
LOG_LENGTHSCALE_BOUNDS = (-4.0, 4.0)
LOG_AMPLITUDE_BOUNDS = (-5.0, 5.0)
LOG_NOISE_BOUNDS = (math.log(1e-3), math.log(10.0))
FAR = 1e6  # masked row i sits at FAR * (i + 1) on the first standardised axis
JITTER = 1e-8


# ---------------------------------------------------------------------------------------
# The training set
# ---------------------------------------------------------------------------------------
class SurrogateData(NamedTuple):
    """Every simulation so far, grouped by location, in a fixed-capacity buffer: ``u`` ``(capacity, D)``
    unconstrained parameters; per location the ``mean`` ``(capacity, d)`` of its finite simulations,
    their sum of squared deviations ``sumsq`` ``(capacity, d)`` and their number ``n`` ``(capacity,)``
    (0: an unused slot, or only non-finite simulations there); ``count``: slots used.

    Acquisitions repeat simulations at the chain's points, so the GP sees each location once with
    noise ``sigma^2 / n`` (the mean of ``n`` simulations is sufficient for the latent value there); the
    scatter within locations enters the marginal likelihood exactly (:func:`log_marginal_likelihood`)."""

    u: Array
    mean: Array
    sumsq: Array
    n: Array
    count: Array

    @property
    def mask(self) -> Array:
        return self.n > 0


def empty_data(capacity: int, dim: int, stat_dim: int, dtype: Any = None) -> SurrogateData:
    dtype = jnp.result_type(float) if dtype is None else dtype
    zeros = jnp.zeros((capacity, stat_dim), dtype)
    return SurrogateData(
        jnp.zeros((capacity, dim), dtype), zeros, zeros, jnp.zeros((capacity,), jnp.int32), jnp.zeros((), jnp.int32)
    )


def add_simulations(data: SurrogateData, row: Array, u: Array, stats: Array) -> SurrogateData:
    """Merge the simulations ``stats`` ``(k, d)`` at the location ``u`` ``(D,)`` into slot ``row``
    (``row == count`` opens a new slot; the caller keeps it ``< capacity``).  Non-finite simulations
    are left out (the caller counts them).  Chan et al.'s pairwise update of mean and sum of squares."""
    keep = finite_rows(stats)
    nb = jnp.sum(keep, dtype=jnp.int32)
    x = jnp.where(keep[:, None], stats, 0.0).astype(data.mean.dtype)
    mb = jnp.sum(x, 0) / jnp.maximum(nb, 1)
    ssb = jnp.sum(jnp.where(keep[:, None], (x - mb) ** 2, 0.0), 0)
    na, ma, ssa = data.n[row], data.mean[row], data.sumsq[row]
    n = na + nb
    w = nb / jnp.maximum(n, 1)
    mean = ma + w * (mb - ma)
    sumsq = ssa + ssb + na * w * (mb - ma) ** 2
    return SurrogateData(
        data.u.at[row].set(u.astype(data.u.dtype)),
        data.mean.at[row].set(mean),
        data.sumsq.at[row].set(sumsq),
        data.n.at[row].set(n),
        jnp.maximum(data.count, row + 1).astype(jnp.int32),
    )


def add_design(data: SurrogateData, u: Array, stats: Array) -> SurrogateData:
    """One new slot per simulation (``u`` ``(k, D)``, ``stats`` ``(k, d)``): the initial design."""
    for i in range(u.shape[0]):
        data = add_simulations(data, data.count, u[i], stats[i : i + 1])
    return data


def grow(data: SurrogateData, capacity: int) -> SurrogateData:
    """The same data in a buffer of ``capacity`` slots (host side, between jitted steps)."""
    pad = capacity - data.u.shape[0]
    rows = ((0, pad), (0, 0))
    return SurrogateData(
        jnp.pad(data.u, rows),
        jnp.pad(data.mean, rows),
        jnp.pad(data.sumsq, rows),
        jnp.pad(data.n, (0, pad)),
        data.count,
    )


# ---------------------------------------------------------------------------------------
# One GP per statistic
# ---------------------------------------------------------------------------------------
class Standardizer(NamedTuple):
    """Affine maps fixed at each hyperparameter fit: ``(u - u_loc) / u_scale`` ``(D,)`` and
    ``(s - stat_loc) / stat_scale`` ``(d,)``, the mean and sd of the finite training rows."""

    u_loc: Array
    u_scale: Array
    stat_loc: Array
    stat_scale: Array


class GPParams(NamedTuple):
    """Per-statistic hyperparameters on the standardised scale: ``mean`` ``(d,)``,
    ``log_amplitude`` ``(d,)``, ``log_noise`` ``(d,)`` and ``log_lengthscale`` ``(d, D)`` (ARD)."""

    mean: Array
    log_amplitude: Array
    log_noise: Array
    log_lengthscale: Array


def default_params(dim: int, stat_dim: int, dtype: Any = None) -> GPParams:
    """Start of the first fit: zero mean, unit amplitude and lengthscales, noise 0.1 (standardised)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return GPParams(
        jnp.zeros(stat_dim, dtype),
        jnp.zeros(stat_dim, dtype),
        jnp.full(stat_dim, math.log(0.1), dtype),
        jnp.zeros((stat_dim, dim), dtype),
    )


def fit_standardizer(data: SurrogateData) -> Standardizer:
    """Mean and sd over the used locations of ``u`` and of the statistics' means (an sd of 0, e.g. one
    location, becomes 1)."""
    n = jnp.maximum(jnp.sum(data.mask), 1)
    w = data.mask[:, None]

    def moments(x):
        loc = jnp.sum(jnp.where(w, x, 0.0), 0) / n
        sd = jnp.sqrt(jnp.sum(jnp.where(w, (x - loc) ** 2, 0.0), 0) / n)
        return loc, jnp.where(sd > 0, sd, 1.0)

    u_loc, u_scale = moments(data.u)
    s_loc, s_scale = moments(data.mean)
    return Standardizer(u_loc, u_scale, s_loc, s_scale)


def _bounded(params: GPParams) -> GPParams:
    return GPParams(
        params.mean,
        jnp.clip(params.log_amplitude, *LOG_AMPLITUDE_BOUNDS),
        jnp.clip(params.log_noise, *LOG_NOISE_BOUNDS),
        jnp.clip(params.log_lengthscale, *LOG_LENGTHSCALE_BOUNDS),
    )


def _inputs(data: SurrogateData, standardizer: Standardizer) -> Array:
    """Standardised inputs ``(capacity, D)``; masked slots at distinct far points (kernel exactly 0)."""
    x = (data.u - standardizer.u_loc) / standardizer.u_scale
    far = jnp.zeros_like(x).at[:, 0].set(FAR * (1.0 + jnp.arange(x.shape[0], dtype=x.dtype)))
    return jnp.where(data.mask[:, None], x, far)


def _gp(params: GPParams, x: Array, n: Array) -> tinygp.GaussianProcess:
    """The GP of one statistic's location means (``params`` of that statistic, ``x`` ``(cap, D)``
    standardised, ``n`` ``(cap,)`` simulations per location: noise ``sigma^2 / n``)."""
    p = _bounded(params)
    # ARD: the inputs divided by one lengthscale per dimension, then a unit squared exponential
    ard = tinygp.transforms.Linear(jnp.exp(-p.log_lengthscale), tinygp.kernels.ExpSquared())
    kernel = jnp.exp(2.0 * p.log_amplitude) * ard
    diag = jnp.exp(2.0 * p.log_noise) / jnp.maximum(n, 1) + JITTER
    return tinygp.GaussianProcess(kernel, x, diag=diag, mean=p.mean)


def _targets(data: SurrogateData, standardizer: Standardizer, params: GPParams) -> Array:
    """Standardised location means ``(capacity, d)``; masked slots at the GP's mean (zero residual)."""
    y = (data.mean - standardizer.stat_loc) / standardizer.stat_scale
    return jnp.where(data.mask[:, None], y, params.mean)


def log_marginal_likelihood(params: GPParams, data: SurrogateData, standardizer: Standardizer) -> Array:
    """``sum_j log p(s_j | U, params_j)`` of every finite simulation (standardised scale).

    The GP sees each location's mean ``m_i`` of ``n_i`` simulations with noise ``sigma^2 / n_i``;
    the rest of their density is ``N(s_i1..s_in; f, sigma^2) = N(m_i; f, sigma^2 / n_i)
    (2 pi sigma^2)^(-(n_i - 1)/2) n_i^(-1/2) exp(-SS_i / (2 sigma^2))``, added here.  Masked slots are
    independent of the rest with zero residual: each adds exactly ``-0.5 log(2 pi (a^2 + sigma^2 +
    jitter))``, which is removed.
    """
    x = _inputs(data, standardizer)
    y = _targets(data, standardizer, params)
    mask = data.mask
    n = data.n.astype(x.dtype)
    num_masked = mask.shape[0] - jnp.sum(mask)
    sumsq = data.sumsq / standardizer.stat_scale**2

    def one(p: GPParams, y_j: Array, ss_j: Array) -> Array:
        b = _bounded(p)
        noise = jnp.exp(2.0 * b.log_noise)
        masked_var = jnp.exp(2.0 * b.log_amplitude) + noise + JITTER
        within = jnp.where(
            mask, -0.5 * (n - 1.0) * jnp.log(2.0 * jnp.pi * noise) - 0.5 * jnp.log(jnp.maximum(n, 1.0)), 0.0
        )
        within = jnp.sum(within) - 0.5 * jnp.sum(jnp.where(mask, ss_j, 0.0)) / noise
        return _gp(p, x, data.n).log_probability(y_j) + 0.5 * num_masked * jnp.log(2.0 * jnp.pi * masked_var) + within

    return jnp.sum(jax.vmap(one)(params, y.T, sumsq.T))


@functools.partial(jax.jit, static_argnames=("num_steps",))
def fit_hyperparameters(
    params: GPParams, data: SurrogateData, standardizer: Standardizer, num_steps: int, learning_rate: float
) -> tuple[GPParams, Array]:
    """Maximise :func:`log_marginal_likelihood` by ``num_steps`` Adam steps from ``params``;
    returns the bounded parameters and their log marginal likelihood (non-finite steps are skipped)."""
    optimizer = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=num_steps)
    loss = lambda p: -log_marginal_likelihood(p, data, standardizer)  # noqa: E731

    def step(carry, _):
        p, state = carry
        value, grad = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=num_steps)
    params = _bounded(params)
    return params, log_marginal_likelihood(params, data, standardizer)


class Surrogate(NamedTuple):
    """The fitted surrogate: hyperparameters, standardisation, and the GPs of every statistic
    (tinygp ``GaussianProcess`` objects batched over the ``d`` statistics) with their Cholesky
    factors of the current training set, so that a prediction costs ``O(n^2)``, not ``O(n^3)``."""

    params: GPParams
    standardizer: Standardizer
    gps: Any


def condition_surrogate(params: GPParams, standardizer: Standardizer, data: SurrogateData) -> Surrogate:
    """Factor the kernel matrices of the training set (``O(n^3)``, once per acquisition or fit)."""
    x = _inputs(data, standardizer)
    return Surrogate(params, standardizer, jax.vmap(lambda p: _gp(p, x, data.n))(params))


def predict(surrogate: Surrogate, data: SurrogateData, u: Array) -> tuple[Array, Array, Array]:
    """The surrogate at ``k`` points ``u`` ``(k, D)``: the latent mean ``(d, k)`` and covariance
    ``(d, k, k)`` of every statistic's ``f_j`` and its noise variance ``sigma_j^2`` ``(d,)``, on the
    statistics' own scale (``data`` must be the set ``surrogate`` was conditioned on)."""
    params, standardizer = surrogate.params, surrogate.standardizer
    y = _targets(data, standardizer, params)
    x_test = (u - standardizer.u_loc) / standardizer.u_scale

    def one(gp: tinygp.GaussianProcess, y_j: Array) -> tuple[Array, Array]:
        conditioned = gp.condition(y_j, x_test).gp
        return conditioned.loc, conditioned.covariance

    loc, cov = jax.vmap(one)(surrogate.gps, y.T)
    scale = standardizer.stat_scale
    noise = (scale * jnp.exp(_bounded(params).log_noise)) ** 2
    return standardizer.stat_loc[:, None] + scale[:, None] * loc, scale[:, None, None] ** 2 * cov, noise


def surrogate_log_likelihood(f: Array, noise: Array, observed: Array, epsilon: float, likelihood: str) -> Array:
    """``log p(y | f)`` for statistic means ``f`` ``(..., d)`` and variances ``noise + epsilon^2``
    ``(d,)``: Gaussian (the synthetic likelihood of the surrogate) or one-sided ("below": the
    probability that a simulation is at most ``y`` in every statistic, "above": at least; the
    formula of :func:`numpyro_ext.infer.abc.one_sided_log_likelihood` with the surrogate's moments)."""
    var = noise + epsilon**2
    if likelihood == "gaussian":
        return jnp.sum(-0.5 * ((observed - f) ** 2 / var + jnp.log(2.0 * jnp.pi * var)), axis=-1)
    z = (observed - f) / jnp.sqrt(var)
    return jnp.sum(log_ndtr(z if likelihood == "below" else -z), axis=-1)


def decision_error(log_alpha: Array, log_u: Array) -> tuple[Array, Array, Array]:
    """The MH decision from ``M`` draws of ``log alpha`` ``(M,)`` and ``log u_mh``: ``(accept, tau,
    error)`` with ``tau`` the median of ``alpha`` (of ``log alpha``, exponentiated: for an even ``M``
    the geometric mean of the middle two), ``accept = u_mh <= tau`` and the error the
    fraction of draws on the other side of ``u_mh`` (the conditional decision error ``E(u_mh)``)."""
    log_tau = jnp.median(log_alpha)
    accept = log_u <= log_tau
    error = jnp.where(accept, jnp.mean(log_alpha < log_u), jnp.mean(log_alpha >= log_u))
    return accept, jnp.exp(log_tau), error


# ---------------------------------------------------------------------------------------
# One MH step
# ---------------------------------------------------------------------------------------
class GPSABCState(NamedTuple):
    """The chain: ``position`` ``u`` ``(D,)``, its ``log_prior`` and its ``row`` in the training set
    (``-1`` if it has no simulations); the training set ``data`` and the ``surrogate`` conditioned on
    it; running totals ``num_simulations`` and ``num_nan`` (non-finite simulations)."""

    position: Array
    log_prior: Array
    row: Array
    data: SurrogateData
    surrogate: Surrogate
    num_simulations: Array
    num_nan: Array


class GPSABCInfo(NamedTuple):
    """One step: ``proposal`` ``(D,)``, ``log_u`` (the uniform of the MH test), ``accepted``,
    ``acceptance_probability`` (``tau``, the median of the ``alpha`` draws), ``decision_error``
    (``E(u_mh)`` when the step decided), ``num_rounds`` (acquisition rounds run), ``capped``
    (still above ``xi`` after ``max_acquisitions`` rounds) and ``failed`` (a simulation at ``u'``
    was not finite: ``u'`` is rejected)."""

    proposal: Array
    log_u: Array
    accepted: Array
    acceptance_probability: Array
    decision_error: Array
    num_rounds: Array
    capped: Array
    failed: Array


class StepConfig(NamedTuple):
    """The static settings of :func:`gpsabc_step` (hashable: it is a ``jit`` static argument)."""

    problem: LikelihoodFreeProblem
    likelihood: str
    epsilon: float
    xi: float
    num_surrogate_draws: int
    delta_s: int
    max_acquisitions: int
    acquisition: str


def log_likelihood_draws(
    key: Array, surrogate: Surrogate, data: SurrogateData, points: Array, config: StepConfig
) -> Array:
    """``(M, k)`` surrogate log likelihoods at ``k`` points from ``M`` joint draws of the GPs."""
    loc, cov, noise = predict(surrogate, data, points)  # (d, k), (d, k, k), (d,)
    k = points.shape[0]
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
    chol = jnp.linalg.cholesky(cov + 1e-10 * jnp.mean(diag, -1)[:, None, None] * jnp.eye(k, dtype=cov.dtype))
    z = jax.random.normal(key, (config.num_surrogate_draws,) + loc.shape, loc.dtype)  # (M, d, k)
    f = loc + jnp.einsum("dkl,mdl->mdk", chol, z)
    observed = jnp.asarray(config.problem.observed, loc.dtype)
    return surrogate_log_likelihood(jnp.swapaxes(f, 1, 2), noise, observed, config.epsilon, config.likelihood)


def gpsabc_step(
    rng_key: Array, state: GPSABCState, proposal_scale: Array, config: StepConfig
) -> tuple[GPSABCState, GPSABCInfo]:
    """One GPS-ABC Metropolis-Hastings step with acquisitions (pure; ``jit`` with ``config`` static).

    Proposes ``u' = u + proposal_scale * z``, draws ``u_mh``, and while the decision error of
    :func:`decision_error` on ``M`` surrogate draws exceeds ``xi`` (at most ``max_acquisitions``
    rounds) runs ``delta_s`` simulations at ``u`` or ``u'`` and re-conditions the GPs; a non-finite
    simulation at ``u'`` ends the step with ``u'`` rejected (non-finite ones are counted, never used
    by the surrogate).  The buffer
    must have 2 free slots (the step opens at most one for ``u`` and one for ``u'``).
    """
    problem = config.problem
    key_proposal, key_u, key_loop = jax.random.split(rng_key, 3)
    position = state.position
    proposal = position + proposal_scale * jax.random.normal(key_proposal, position.shape, position.dtype)
    proposal_log_prior = problem.log_prior(proposal)
    log_u = jnp.log(jax.random.uniform(key_u, (), position.dtype))
    points = jnp.stack([position, proposal])
    offset = proposal_log_prior - state.log_prior  # the random walk is symmetric

    def evaluate(data: SurrogateData, surrogate: Surrogate, key: Array):
        draws = log_likelihood_draws(key, surrogate, data, points, config)  # (M, 2)
        log_alpha = jnp.minimum(0.0, offset + draws[:, 1] - draws[:, 0])
        log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
        accept, tau, error = decision_error(log_alpha, log_u)
        spread = jnp.var(jnp.where(jnp.isfinite(draws), draws, 0.0), axis=0)
        return accept, tau, error, jnp.argmax(spread).astype(jnp.int32)

    def cond(carry):
        rounds, error, failed = carry[3], carry[9], carry[11]
        return (error > config.xi) & (rounds < config.max_acquisitions) & ~failed

    def body(carry):
        data, surrogate, rows, rounds, num_sim, num_nan, key, _, _, _, where, failed = carry
        key, key_choice, key_sim, key_eval = jax.random.split(key, 4)
        if config.acquisition == "random":
            where = jax.random.bernoulli(key_choice).astype(jnp.int32)
        where_sim = where
        at = points[where]
        stats = jax.vmap(problem.simulate, in_axes=(None, 0))(at, jax.random.split(key_sim, config.delta_s))
        row = jnp.where(rows[where] >= 0, rows[where], data.count).astype(jnp.int32)
        data = add_simulations(data, row, at, stats)
        rows = rows.at[where].set(row)
        surrogate = condition_surrogate(surrogate.params, surrogate.standardizer, data)
        accept, tau, error, where = evaluate(data, surrogate, key_eval)
        nonfinite = jnp.sum(~finite_rows(stats), dtype=jnp.int32)
        # a non-finite simulation at u' rejects it, as rejection ABC and SMC-ABC reject such a draw
        failed = failed | ((where_sim == 1) & (nonfinite > 0))
        num_sim = num_sim + jnp.int32(config.delta_s)
        return data, surrogate, rows, rounds + 1, num_sim, num_nan + nonfinite, key, accept, tau, error, where, failed

    key_loop, key_eval = jax.random.split(key_loop)
    accept, tau, error, where = evaluate(state.data, state.surrogate, key_eval)
    rows = jnp.stack([state.row, jnp.int32(-1)]).astype(jnp.int32)
    carry = (state.data, state.surrogate, rows, jnp.int32(0), state.num_simulations, state.num_nan, key_loop)
    carry = jax.lax.while_loop(cond, body, carry + (accept, tau, error, where, jnp.zeros((), bool)))
    data, surrogate, rows, rounds, num_sim, num_nan, _, accept, tau, error, _, failed = carry
    accept = accept & ~failed
    new_state = GPSABCState(
        jnp.where(accept, proposal, position),
        jnp.where(accept, proposal_log_prior, state.log_prior),
        jnp.where(accept, rows[1], rows[0]),
        data,
        surrogate,
        num_sim,
        num_nan,
    )
    info = GPSABCInfo(proposal, log_u, accept, tau, error, rounds, (error > config.xi) & ~failed, failed)
    return new_state, info


_jit_step = jax.jit(gpsabc_step, static_argnames=("config",))
_jit_condition = jax.jit(condition_surrogate)


# ---------------------------------------------------------------------------------------
# Shell
# ---------------------------------------------------------------------------------------
def check_xi(xi: Any) -> float:
    """``xi`` in ``(0, 0.5)``: a decision error of 0.5 is a coin flip, 0 would need an exact surrogate."""
    ok = isinstance(xi, numbers.Real) and not isinstance(xi, bool) and math.isfinite(xi) and 0.0 < xi < 0.5
    if not ok:
        raise ValueError(
            f"xi must be a number in (0, 0.5), the largest accepted probability of a wrong MH decision, got {xi!r}"
        )
    return float(xi)


def check_proposal_scale(value: Any, dim: int) -> np.ndarray:
    """A positive scale, or ``(D,)`` positive scales, of the Gaussian random walk on ``u``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"proposal_scale: expected a number > 0 or {dim} numbers > 0, got {value!r}") from None
    if isinstance(value, bool) or array.shape not in ((), (dim,)):
        raise ValueError(f"proposal_scale: expected a number > 0 or an array of shape ({dim},), got {value!r}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"proposal_scale: every entry must be a finite number > 0, got {value!r}")
    return np.broadcast_to(array, (dim,)).copy()


def _capacity_for(rows: int) -> int:
    return max(64, 1 << math.ceil(math.log2(max(rows, 1))))


class GPSABC:
    """GPS-ABC (Meeds & Welling 2014): Metropolis-Hastings on a GP surrogate of the statistics,
    simulating only where the surrogate is too unsure of the accept/reject decision.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
        xi: ``xi`` in ``(0, 0.5)``, the largest tolerated decision error ``E(u_mh)`` of a step.
        num_surrogate_draws: ``M``, joint surrogate draws at ``(u, u')`` per evaluation of the error.
        proposal_scale: sd of the Gaussian random walk on the unconstrained ``u`` (a number or ``(D,)``).
        num_initial_simulations: the initial design: simulations at the start ``u0`` and at
            ``u0 + proposal_scale * z``, ``z ~ N(0, I)`` (one at ``u0`` itself).
        epsilon: ``epsilon >= 0``, added as ``epsilon^2`` to every statistic's noise variance.
        delta_s: ``Delta S``, simulations per acquisition round (all at the chosen point, fresh keys).
        max_acquisitions: acquisition rounds at most per MH step.
        acquisition: ``"variance"`` (at ``u`` or ``u'``, the one whose surrogate log likelihood
            varies more over the ``M`` draws) or ``"random"`` (either with probability 1/2).
        num_pilot_draws: without ``init_params``, the chain starts at the closest (MAD-scaled
            distance) of this many prior-predictive simulations (counted, not used by the surrogate).
        refit_growth: refit the hyperparameters when the training set has grown by this factor
            (``> 1``) since the last fit; between fits every acquisition re-conditions the GPs.
        num_fit_steps: Adam steps of a hyperparameter fit (the first from a default start, later
            ones warm-started).
        fit_learning_rate: Adam's step size for the fits (standardised log-hyperparameters).
        progress_bar: show a tqdm progress bar over the MH steps.

    :meth:`run` returns an :class:`~adapters.abc.ABCResult` of the chain's post-warmup constrained
    draws (equal weights); ``num_simulations`` counts the pilot, the initial design and every
    acquisition.  ``info``: ``num_simulations_trace`` (cumulative simulations after each iteration,
    warmup included), ``decision_error``, ``acceptance_probability`` (``tau``), ``accepted``,
    ``num_rounds``, ``capped`` and ``failed`` per iteration, ``log_u`` and ``proposals`` (unconstrained) per
    iteration, ``chain`` (the unconstrained position before each iteration and after the last,
    ``(n + 1, D)``), ``acquisitions`` (rounds in all), ``num_capped``, ``refits`` (a list of
    ``{iteration, num_training, log_marginal_likelihood}``), the final ``gp_params`` and
    ``standardizer``, the training set (``training_u``, ``training_stats``, ``training_mask``),
    ``acceptance_rate`` (post-warmup) and ``compilations`` (capacities the step was compiled for).
    """

    algorithm = "GPSABC"
    _likelihood = "gaussian"

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        xi: float = 0.1,
        num_surrogate_draws: int = 50,
        proposal_scale: Any = 0.1,
        num_initial_simulations: int = 20,
        epsilon: float = 0.0,
        delta_s: int = 1,
        max_acquisitions: int = 10,
        acquisition: str = "variance",
        num_pilot_draws: int = 200,
        refit_growth: float = 1.5,
        num_fit_steps: int = 300,
        fit_learning_rate: float = 0.05,
        progress_bar: bool = False,
    ):
        self.problem = check_problem(problem, self.algorithm)
        self.xi = check_xi(xi)
        self.num_surrogate_draws = check_positive_int("num_surrogate_draws", num_surrogate_draws)
        if self.num_surrogate_draws < 2:
            raise ValueError(
                f"num_surrogate_draws must be at least 2 (a median and an error), got {num_surrogate_draws}"
            )
        self.proposal_scale = check_proposal_scale(proposal_scale, problem.dim)
        self.num_initial_simulations = check_positive_int("num_initial_simulations", num_initial_simulations)
        if self.num_initial_simulations < 2:
            raise ValueError(
                f"num_initial_simulations must be at least 2 (a spread to fit), got {num_initial_simulations}"
            )
        self.epsilon = check_non_negative("epsilon", epsilon)
        self.delta_s = check_positive_int("delta_s", delta_s)
        self.max_acquisitions = check_positive_int("max_acquisitions", max_acquisitions, allow_zero=True)
        self.acquisition = check_choice("acquisition", acquisition, ACQUISITIONS)
        self.num_pilot_draws = check_positive_int("num_pilot_draws", num_pilot_draws)
        self.refit_growth = check_greater("refit_growth", refit_growth, 1.0, "the growth of the training set")
        self.num_fit_steps = check_positive_int("num_fit_steps", num_fit_steps)
        self.fit_learning_rate = check_greater("fit_learning_rate", fit_learning_rate, 0.0)
        self.progress_bar = bool(progress_bar)

    # ---- set-up ---------------------------------------------------------------------------
    def _config(self) -> StepConfig:
        return StepConfig(
            self.problem,
            self._likelihood,
            self.epsilon,
            self.xi,
            self.num_surrogate_draws,
            self.delta_s,
            self.max_acquisitions,
            self.acquisition,
        )

    def _start(self, rng_key: Array, init_params: Any) -> tuple[Array, int, int]:
        """The chain's start ``u0`` and the simulations (all, non-finite) spent finding it."""
        if init_params is not None:
            u0 = jnp.asarray(self.problem.unconstrain(init_params), dtype=jnp.result_type(float))
            if u0.shape != (self.problem.dim,) or not bool(jnp.all(jnp.isfinite(u0))):
                raise ValueError(
                    f"init_params: expected a value of the prior's support, of {self.problem.dim} number(s) in all, "
                    f"got {init_params!r}"
                )
            return u0, 0, 0
        n = self.num_pilot_draws
        u, _, stats = prior_predictive(rng_key, self.problem, n, n)
        stats = np.asarray(stats, dtype=np.float64)
        distances = scaled_distances(stats, self.problem.observed, mad_scale(stats))
        num_nan = int(np.sum(~np.all(np.isfinite(stats), axis=-1)))
        if not np.isfinite(distances).any():
            raise ValueError(
                f"{self.algorithm}: all {n} pilot simulations at prior draws gave non-finite statistics; "
                "check the simulator or pass init_params"
            )
        return u[int(np.argmin(distances))], n, num_nan

    def _initial_design(self, rng_key: Array, u0: Array) -> SurrogateData:
        n = self.num_initial_simulations
        key_u, key_sim = jax.random.split(rng_key)
        z = jax.random.normal(key_u, (n, self.problem.dim), u0.dtype).at[0].set(0.0)
        u = u0 + jnp.asarray(self.proposal_scale, u0.dtype) * z
        stats = self.problem.simulate_many(u, jax.random.split(key_sim, n))
        data = empty_data(_capacity_for(2 * n), self.problem.dim, self.problem.stat_dim, u0.dtype)
        return add_design(data, u, stats)

    def _fit(self, params: GPParams | None, data: SurrogateData) -> tuple[Surrogate, float]:
        num_finite = int(jnp.sum(data.mask))
        if num_finite < 2:
            raise ValueError(
                f"{self.algorithm}: only {num_finite} of {int(data.count)} simulations have finite statistics, too few "
                "to fit the Gaussian-process surrogate; check the simulator's NaN/inf outputs near the start"
            )
        standardizer = fit_standardizer(data)
        if params is None:
            params = default_params(self.problem.dim, self.problem.stat_dim, data.u.dtype)
        params, lml = fit_hyperparameters(params, data, standardizer, self.num_fit_steps, self.fit_learning_rate)
        lml = float(lml)
        if not (math.isfinite(lml) and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in params)):
            raise ValueError(
                f"{self.algorithm}: the Gaussian-process surrogate failed to fit: its log marginal likelihood is {lml} "
                f"on {num_finite} simulations; the statistics may be constant, too large, or not smooth in theta"
            )
        return _jit_condition(params, standardizer, data), lml

    # ---- the chain ---------------------------------------------------------------------------
    def run(self, rng_key: Array, num_samples: int = 1000, num_warmup: int = 200, init_params: Any = None) -> ABCResult:
        """Start (``init_params``, constrained, or the best pilot draw), simulate the initial design,
        fit the surrogate and run ``num_warmup + num_samples`` MH steps; returns the post-warmup draws."""
        rng_key = check_rng_key(rng_key)
        num_samples = check_positive_int("num_samples", num_samples)
        num_warmup = check_positive_int("num_warmup", num_warmup, allow_zero=True)
        key_start, key_design, key_chain = jax.random.split(rng_key, 3)
        u0, num_sim, num_nan = self._start(key_start, init_params)
        data = self._initial_design(key_design, u0)
        num_nan += int(jnp.sum(~data.mask[: self.num_initial_simulations]))
        num_sim += self.num_initial_simulations
        return self._chain(key_chain, u0, data, num_sim, num_nan, num_samples, num_warmup, {})

    def _chain(
        self,
        rng_key: Array,
        u0: Array,
        data: SurrogateData,
        num_sim: int,
        num_nan: int,
        num_samples: int,
        num_warmup: int,
        extra_info: dict,
    ) -> ABCResult:
        from tqdm.auto import tqdm

        config = self._config()
        surrogate, lml = self._fit(None, data)
        refits = [{"iteration": 0, "num_training": int(data.count), "log_marginal_likelihood": lml}]
        count_at_fit = int(data.count)
        log_prior0 = self.problem.log_prior(u0)
        if not bool(jnp.isfinite(log_prior0)):
            raise ValueError(f"{self.algorithm}: the start has zero prior density (log prior {float(log_prior0)})")
        dtype = u0.dtype
        # the start's slot in the training set, if it has simulations there (GPSABC.run: the design's first)
        count = int(data.count)
        same = np.flatnonzero(
            np.all(np.asarray(data.u[:count]) == np.asarray(u0), axis=1) & np.asarray(data.mask[:count])
        )
        row0 = jnp.int32(int(same[0]) if same.size else -1)
        state = GPSABCState(
            u0, log_prior0, row0, data, surrogate, jnp.asarray(num_sim, jnp.int32), jnp.asarray(num_nan, jnp.int32)
        )
        scale = jnp.asarray(self.proposal_scale, dtype)
        room = 2  # a step opens at most a slot for u and one for u'
        total = num_warmup + num_samples
        infos, positions, sim_trace, compilations = [], [u0], [], [int(data.u.shape[0])]
        keys = jax.random.split(rng_key, total)
        for i in tqdm(range(total), disable=not self.progress_bar, desc=self.algorithm):
            count = int(state.data.count)
            capacity = int(state.data.u.shape[0])
            if count + room > capacity:
                capacity = _capacity_for(count + room)
                data = grow(state.data, capacity)
                surrogate = _jit_condition(state.surrogate.params, state.surrogate.standardizer, data)
                state = state._replace(data=data, surrogate=surrogate)
                compilations.append(capacity)
            state, info = _jit_step(keys[i], state, scale, config)
            infos.append(info)
            positions.append(state.position)
            sim_trace.append(state.num_simulations)
            count = int(state.data.count)
            if count >= self.refit_growth * count_at_fit:
                surrogate, lml = self._fit(state.surrogate.params, state.data)
                state = state._replace(surrogate=surrogate)
                refits.append({"iteration": i + 1, "num_training": count, "log_marginal_likelihood": lml})
                count_at_fit = count
        info = jax.tree_util.tree_map(lambda *x: np.stack([np.asarray(v) for v in x]), *infos)
        chain = np.stack([np.asarray(p) for p in positions])
        theta = np.asarray(jax.vmap(self.problem.flat_theta)(jnp.asarray(chain[num_warmup + 1 :])))
        count = int(state.data.count)
        num_sim, num_nan = int(state.num_simulations), int(state.num_nan)
        num_capped = int(np.sum(info.capped))
        messages = [nan_simulation_message(self.algorithm, num_nan, num_sim)]
        if num_capped > self.xi * total:
            messages.append(
                f"{self.algorithm}: {num_capped} of {total} steps still had a decision error above xi = {self.xi:g} "
                f"after max_acquisitions = {self.max_acquisitions} rounds and decided by the surrogate's median; "
                "raise max_acquisitions or delta_s, or check for non-finite simulations near the chain"
            )
        result_info = {
            "num_simulations_trace": np.asarray([int(s) for s in sim_trace]),
            "decision_error": np.asarray(info.decision_error),
            "acceptance_probability": np.asarray(info.acceptance_probability),
            "accepted": np.asarray(info.accepted),
            "num_rounds": np.asarray(info.num_rounds),
            "capped": np.asarray(info.capped),
            "failed": np.asarray(info.failed),
            "log_u": np.asarray(info.log_u),
            "proposals": np.asarray(info.proposal),
            "chain": chain,
            "acquisitions": int(np.sum(info.num_rounds)),
            "num_capped": num_capped,
            "refits": refits,
            "gp_params": jax.tree_util.tree_map(np.asarray, state.surrogate.params),
            "standardizer": jax.tree_util.tree_map(np.asarray, state.surrogate.standardizer),
            "training_u": np.asarray(state.data.u[:count]),
            "training_mean": np.asarray(state.data.mean[:count]),
            "training_n": np.asarray(state.data.n[:count]),
            "acceptance_rate": float(np.mean(info.accepted[num_warmup:])),
            "num_warmup": num_warmup,
            "xi": self.xi,
            "compilations": compilations,
            **extra_info,
        }
        return ABCResult(
            algorithm=self.algorithm,
            theta=theta,
            names=list(self.problem.names),
            sites=dict(self.problem.sites),
            log_weights=np.zeros(len(theta)),
            num_simulations=num_sim,
            num_nan_simulations=num_nan,
            info=result_info,
            warnings=warn_unreliable(*messages),
        )
