"""The pure pieces of GPS-ABC (JAX): the training set, the per-statistic GPs, the decision error and one MH step.

See :mod:`numpyro_ext.infer.abc.gpsabc` for the algorithm.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import tinygp
from jax.scipy.special import log_ndtr

from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows

__all__ = [
    "GPParams",
    "GPSABCInfo",
    "GPSABCState",
    "StepConfig",
    "Standardizer",
    "Surrogate",
    "SurrogateData",
    "add_design",
    "add_simulations",
    "capacity_for",
    "condition_surrogate",
    "decision_error",
    "default_params",
    "empty_data",
    "fit_hyperparameters",
    "fit_standardizer",
    "gpsabc_step",
    "grow",
    "log_likelihood_draws",
    "log_marginal_likelihood",
    "pooled_noise_variance",
    "predict",
    "repeats_log_noise",
    "surrogate_log_likelihood",
]

Array = jax.Array
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


def add_design(data: SurrogateData, u: Array, stats: Array, repeats: int = 1) -> SurrogateData:
    """One new slot per location of the initial design: ``u`` ``(k, D)``, ``stats`` ``(k * repeats, d)``,
    the ``repeats`` simulations of location ``i`` in rows ``i * repeats ... (i + 1) * repeats - 1``."""
    for i in range(u.shape[0]):
        data = add_simulations(data, data.count, u[i], stats[i * repeats : (i + 1) * repeats])
    return data


def pooled_noise_variance(data: SurrogateData) -> tuple[Array, Array]:
    """Each statistic's simulator variance from repeated simulations: the pooled within-location
    variance ``sum_i SS_i / sum_i (n_i - 1)`` ``(d,)`` (unbiased for a homoscedastic simulator; ``SS_i``
    the sum of squared deviations of location ``i``'s ``n_i`` finite simulations) and its degrees of
    freedom ``sum_i (n_i - 1)`` (0: no location holds two simulations, the variance is then 0)."""
    dof = jnp.sum(jnp.where(data.mask, data.n - 1, 0))
    sumsq = jnp.sum(jnp.where(data.mask[:, None], data.sumsq, 0.0), 0)
    return sumsq / jnp.maximum(dof, 1), dof


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


def repeats_log_noise(data: SurrogateData, standardizer: Standardizer) -> Array:
    """``log sigma_j`` ``(d,)`` on the standardised scale from :func:`pooled_noise_variance` (``noise="repeats"``)."""
    variance, _ = pooled_noise_variance(data)
    return 0.5 * jnp.log(variance / standardizer.stat_scale**2)


@functools.partial(jax.jit, static_argnames=("num_steps", "fix_noise"))
def fit_hyperparameters(
    params: GPParams,
    data: SurrogateData,
    standardizer: Standardizer,
    num_steps: int,
    learning_rate: float,
    fix_noise: bool = False,
) -> tuple[GPParams, Array]:
    """Maximise :func:`log_marginal_likelihood` by ``num_steps`` Adam steps from ``params``;
    returns the bounded parameters and their log marginal likelihood (non-finite steps are skipped).
    ``fix_noise``: the noise is not fitted but held at the pooled within-location variance of
    :func:`repeats_log_noise` (the caller checks that there are repeats); the other hyperparameters
    are fitted given it."""
    optimizer = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=num_steps)
    if fix_noise:
        log_noise = repeats_log_noise(data, standardizer)
        params = params._replace(log_noise=log_noise)
        # the noise's gradient is 0, so Adam leaves it where it is
        loss = lambda p: -log_marginal_likelihood(p._replace(log_noise=log_noise), data, standardizer)  # noqa: E731
    else:
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
    (still above ``xi`` after ``max_acquisitions`` rounds), ``failed`` (a simulation at ``u'``
    was not finite: ``u'`` is rejected) and ``out_of_budget`` (still above ``xi`` when another
    round would have passed ``max_simulations``: decided by the surrogate alone)."""

    proposal: Array
    log_u: Array
    accepted: Array
    acceptance_probability: Array
    decision_error: Array
    num_rounds: Array
    capped: Array
    failed: Array
    out_of_budget: Array


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
    max_simulations: int | None = None

    def budget_allows(self, num_simulations: Any) -> Any:
        """Whether one more round of ``delta_s`` simulations stays within ``max_simulations``."""
        if self.max_simulations is None:
            return num_simulations == num_simulations  # always (an array, like the other branch)
        return num_simulations <= self.max_simulations - self.delta_s


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
    rounds, and only while the simulations so far plus ``delta_s`` stay within ``max_simulations``)
    runs ``delta_s`` simulations at ``u`` or ``u'`` and re-conditions the GPs; a non-finite
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
        rounds, num_sim, error, failed = carry[3], carry[4], carry[9], carry[11]
        budget = config.budget_allows(num_sim)
        return (error > config.xi) & (rounds < config.max_acquisitions) & ~failed & budget

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
    undecided = (error > config.xi) & ~failed
    out_of_budget = undecided & (rounds < config.max_acquisitions) & ~config.budget_allows(num_sim)
    info = GPSABCInfo(proposal, log_u, accept, tau, error, rounds, undecided & ~out_of_budget, failed, out_of_budget)
    return new_state, info


def capacity_for(rows: int) -> int:
    """The buffer size for ``rows`` slots: a power of 2, at least 64 (few sizes, few compilations)."""
    return max(64, 1 << math.ceil(math.log2(max(rows, 1))))
