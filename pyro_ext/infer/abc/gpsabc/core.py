"""The pure pieces of GPS-ABC (torch, GPyTorch): the batched GP over statistics, the decision error and
one MH step (the training set is :mod:`.data`'s, re-exported here).

See :mod:`pyro_ext.infer.abc.gpsabc` for the algorithm.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import gpytorch
import torch
from gpytorch.likelihoods import _GaussianLikelihoodBase  # exported (__all__): the base for a custom noise model
from gpytorch.likelihoods.noise_models import Noise
from linear_operator.operators import DiagLinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky

from pyro_ext.infer.abc.gpsabc.data import (
    SurrogateData,
    add_design,
    add_simulations,
    empty_data,
    pooled_noise_variance,
)
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem, finite_rows

__all__ = [
    "GPParams",
    "GPSABCInfo",
    "GPSABCState",
    "GroupedNoise",
    "StatisticsGP",
    "StepConfig",
    "Standardizer",
    "Surrogate",
    "SurrogateData",
    "add_design",
    "add_simulations",
    "condition_surrogate",
    "decision_error",
    "default_params",
    "empty_data",
    "fit_hyperparameters",
    "fit_standardizer",
    "gpsabc_step",
    "log_likelihood_draws",
    "log_marginal_likelihood",
    "pooled_noise_variance",
    "predict",
    "predict_marginal",
    "repeats_log_noise",
    "surrogate_log_likelihood",
]

Tensor = torch.Tensor
LIKELIHOODS = ("gaussian", "below", "above")
# Bounds of the standardised hyperparameters (those of the NumPyro twin): they keep the kernel
# matrix well conditioned.
LOG_LENGTHSCALE_BOUNDS = (-4.0, 4.0)
LOG_AMPLITUDE_BOUNDS = (-5.0, 5.0)
LOG_NOISE_BOUNDS = (math.log(1e-3), math.log(10.0))
JITTER = 1e-8


# ---------------------------------------------------------------------------------------
# The GP over statistics (GPyTorch, batched over the d statistics)
# ---------------------------------------------------------------------------------------
class Standardizer(NamedTuple):
    """Affine maps fixed at each hyperparameter fit: ``(u - u_loc) / u_scale`` ``(D,)`` and
    ``(s - stat_loc) / stat_scale`` ``(d,)``, the mean and sd of the finite training rows."""

    u_loc: Tensor
    u_scale: Tensor
    stat_loc: Tensor
    stat_scale: Tensor


class GPParams(NamedTuple):
    """Per-statistic hyperparameters on the standardised scale: ``mean`` ``(d,)``,
    ``log_amplitude`` ``(d,)``, ``log_noise`` ``(d,)`` and ``log_lengthscale`` ``(d, D)`` (ARD)."""

    mean: Tensor
    log_amplitude: Tensor
    log_noise: Tensor
    log_lengthscale: Tensor


def default_params(dim: int, stat_dim: int, dtype: torch.dtype | None = None) -> GPParams:
    """Start of the first fit: zero mean, unit amplitude and lengthscales, noise 0.1 (standardised)."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return GPParams(
        torch.zeros(stat_dim, dtype=dtype),
        torch.zeros(stat_dim, dtype=dtype),
        torch.full((stat_dim,), math.log(0.1), dtype=dtype),
        torch.zeros(stat_dim, dim, dtype=dtype),
    )


def fit_standardizer(data: SurrogateData) -> Standardizer:
    """Mean and sd over the used locations of ``u`` and of the statistics' means (an sd of 0, e.g. one
    location, becomes 1)."""

    def moments(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x[data.mask]
        loc = x.mean(0) if x.shape[0] else torch.zeros(x.shape[1], dtype=x.dtype)
        sd = ((x - loc) ** 2).mean(0).sqrt() if x.shape[0] else torch.zeros_like(loc)
        return loc, torch.where(sd > 0, sd, torch.ones_like(sd))

    u_loc, u_scale = moments(data.u)
    s_loc, s_scale = moments(data.mean)
    return Standardizer(u_loc, u_scale, s_loc, s_scale)


def _clamped_exp(raw: Tensor, low: float, high: float, power: float) -> Tensor:
    # the NumPyro twin's bounds: exp of the clipped log (zero gradient outside, as jnp.clip)
    return torch.exp(power * torch.clamp(raw, low, high))


def _inverse(value: Tensor, power: float) -> Tensor:
    return torch.log(value) / power


def _constraint(bounds: tuple[float, float], power: float = 1.0) -> gpytorch.constraints.Positive:
    """``value = exp(power * clip(raw, *bounds))``: the raw parameter is the NumPyro twin's log
    parameter (``log l``; ``log a`` for ``a^2``, ``log sigma`` for ``sigma^2`` with ``power = 2``), so
    that Adam, which is not invariant to a rescaling of its parameters, takes the same steps."""
    return gpytorch.constraints.Positive(
        transform=functools.partial(_clamped_exp, low=bounds[0], high=bounds[1], power=power),
        inv_transform=functools.partial(_inverse, power=power),
    )


class GroupedNoise(Noise):
    """Homoscedastic noise ``sigma_j^2`` per statistic seen through location means: the noise variance of
    location ``i`` is ``sigma_j^2 / n_i + jitter`` (``counts`` ``(n,)``, the simulations there).
    ``noise`` is ``sigma^2`` ``(d, 1)``; its raw parameter is ``log sigma``, bounded."""

    def __init__(self, counts: Tensor, batch_shape: torch.Size):
        super().__init__()
        self.register_parameter("raw_noise", torch.nn.Parameter(torch.zeros(*batch_shape, 1, dtype=counts.dtype)))
        self.register_constraint("raw_noise", _constraint(LOG_NOISE_BOUNDS, 2.0))
        self.register_buffer("counts", counts)

    @property
    def noise(self) -> Tensor:
        return self.raw_noise_constraint.transform(self.raw_noise)

    def forward(self, *params: Any, shape: torch.Size | None = None, **kwargs: Any) -> DiagLinearOperator:
        return DiagLinearOperator(self.noise / self.counts + JITTER)


class StatisticsGP(gpytorch.models.ExactGP):
    """One exact GP per statistic, batched (``batch_shape = (d,)``): constant mean,
    ``ScaleKernel(RBFKernel(ard_num_dims=D))`` (``a_j^2 exp(-|(x - x') / l_j|^2 / 2)``) and the
    :class:`GroupedNoise` likelihood; inputs ``x`` ``(n, D)`` shared, targets ``y`` ``(d, n)``.
    The raw parameters are :class:`GPParams`' fields (``raw_constant`` the mean, ``raw_outputscale``
    ``log a``, ``raw_lengthscale`` ``log l``, ``raw_noise`` ``log sigma``), bounded as there."""

    def __init__(self, x: Tensor, y: Tensor, counts: Tensor):
        batch = torch.Size([y.shape[0]])
        likelihood = _GaussianLikelihoodBase(GroupedNoise(counts.to(x.dtype), batch))
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
        base = gpytorch.kernels.RBFKernel(
            ard_num_dims=x.shape[-1], batch_shape=batch, lengthscale_constraint=_constraint(LOG_LENGTHSCALE_BOUNDS)
        )
        self.covar_module = gpytorch.kernels.ScaleKernel(
            base, batch_shape=batch, outputscale_constraint=_constraint(LOG_AMPLITUDE_BOUNDS, 2.0)
        )
        self.to(x.dtype)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def load(self, params: GPParams) -> StatisticsGP:
        """Set the raw parameters from ``params``."""
        with torch.no_grad():
            self.mean_module.raw_constant.copy_(params.mean)
            self.covar_module.raw_outputscale.copy_(params.log_amplitude)
            self.covar_module.base_kernel.raw_lengthscale.copy_(params.log_lengthscale[:, None, :])
            self.likelihood.noise_covar.raw_noise.copy_(params.log_noise[:, None])
        return self

    def params(self) -> GPParams:
        """The bounded hyperparameters (NumPyro's ``_bounded``: the clipped raw parameters)."""
        with torch.no_grad():
            return GPParams(
                self.mean_module.raw_constant.detach().clone(),
                torch.clamp(self.covar_module.raw_outputscale.detach(), *LOG_AMPLITUDE_BOUNDS),
                torch.clamp(self.likelihood.noise_covar.raw_noise.detach()[:, 0], *LOG_NOISE_BOUNDS),
                torch.clamp(self.covar_module.base_kernel.raw_lengthscale.detach()[:, 0, :], *LOG_LENGTHSCALE_BOUNDS),
            )


@contextlib.contextmanager
def exact_settings() -> Iterator[None]:
    """GPyTorch with Cholesky solves throughout (no CG/Lanczos at any size: the surrogate is exact),
    and no warning when the POPE incumbent is scored at the training inputs."""
    with (
        gpytorch.settings.max_cholesky_size(10**9),
        gpytorch.settings.fast_computations(covar_root_decomposition=False, log_prob=False, solves=False),
        gpytorch.settings.fast_pred_var(False),
        gpytorch.settings.debug(False),
    ):
        yield


def _training(data: SurrogateData, standardizer: Standardizer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised inputs ``(m, D)``, targets ``(d, m)``, counts ``(m,)`` and sums of squares ``(d, m)``
    of the ``m`` locations with finite simulations."""
    mask = data.mask
    x = (data.u[mask] - standardizer.u_loc) / standardizer.u_scale
    y = ((data.mean[mask] - standardizer.stat_loc) / standardizer.stat_scale).T.contiguous()
    sumsq = (data.sumsq[mask] / standardizer.stat_scale**2).T
    return x, y, data.n[mask], sumsq


def _model(params: GPParams, data: SurrogateData, standardizer: Standardizer) -> StatisticsGP:
    x, y, n, _ = _training(data, standardizer)
    return StatisticsGP(x, y, n).load(params)


def _log_marginal(model: StatisticsGP, n: Tensor, sumsq: Tensor) -> Tensor:
    """``sum_j`` of the GP's exact marginal log likelihood of the location means plus the
    within-location term (see :func:`log_marginal_likelihood`).

    The GP term is ``log N(y; m, K + diag(sigma^2 / n + jitter))`` from the model's own modules
    (mean, kernel, noise), with a dense Cholesky factor: the number GPyTorch's
    ``model.likelihood(model(x)).log_prob(y)`` gives (checked in the tests) at a third less cost
    per Adam step, most of it the distribution object's bookkeeping."""
    x, y = model.train_inputs[0], model.train_targets
    noise = model.likelihood.noise_covar.noise  # (d, 1), sigma^2 without jitter
    covariance = model.covar_module(x).to_dense() + model.likelihood.noise_covar().to_dense()
    chol = torch.linalg.cholesky(covariance)
    residual = (y - model.mean_module(x))[..., None]
    z = torch.linalg.solve_triangular(chol, residual, upper=False)[..., 0]
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum()
    gp_term = -0.5 * (z * z).sum() - log_det - 0.5 * y.numel() * math.log(2.0 * math.pi)
    nf = n.to(x.dtype)
    within = (-0.5 * (nf - 1.0) * torch.log(2.0 * math.pi * noise) - 0.5 * torch.log(nf)).sum()
    within = within - 0.5 * (sumsq / noise).sum()
    return gp_term + within


def log_marginal_likelihood(params: GPParams, data: SurrogateData, standardizer: Standardizer) -> Tensor:
    """``sum_j log p(s_j | U, params_j)`` of every finite simulation (standardised scale).

    The GP sees each location's mean ``m_i`` of ``n_i`` simulations with noise ``sigma^2 / n_i``;
    the rest of their density is ``N(s_i1..s_in; f, sigma^2) = N(m_i; f, sigma^2 / n_i)
    (2 pi sigma^2)^(-(n_i - 1)/2) n_i^(-1/2) exp(-SS_i / (2 sigma^2))``, added here.  Locations with
    no finite simulation are not in the GP at all.
    """
    _, _, n, sumsq = _training(data, standardizer)
    model = _model(params, data, standardizer)
    model.train()
    with torch.no_grad(), exact_settings():
        return _log_marginal(model, n, sumsq)


def repeats_log_noise(data: SurrogateData, standardizer: Standardizer) -> Tensor:
    """``log sigma_j`` ``(d,)`` on the standardised scale from :func:`pooled_noise_variance` (``noise="repeats"``)."""
    variance, _ = pooled_noise_variance(data)
    return 0.5 * torch.log(variance / standardizer.stat_scale**2)


def fit_hyperparameters(
    params: GPParams,
    data: SurrogateData,
    standardizer: Standardizer,
    num_steps: int,
    learning_rate: float,
    fix_noise: bool = False,
) -> tuple[GPParams, Tensor]:
    """Maximise :func:`log_marginal_likelihood` by ``num_steps`` Adam steps (``torch.optim.Adam``, the
    settings of optax's ``adam``) on the raw log-hyperparameters from ``params``; returns the bounded
    parameters and their log marginal likelihood.  A step with a non-finite value or gradient is
    skipped (optax's ``apply_if_finite`` in the NumPyro twin).  ``fix_noise``: the noise is not
    fitted but held at the pooled within-location variance of :func:`repeats_log_noise` (the caller
    checks that there are repeats); the other hyperparameters are fitted given it."""
    _, _, n, sumsq = _training(data, standardizer)
    if fix_noise:
        params = params._replace(log_noise=repeats_log_noise(data, standardizer))
    model = _model(params, data, standardizer)
    model.train()
    if fix_noise:  # no gradient: Adam leaves it where it is
        model.likelihood.noise_covar.raw_noise.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    with exact_settings():
        for _ in range(num_steps):
            optimizer.zero_grad()
            try:
                loss = -_log_marginal(model, n, sumsq)
            except (RuntimeError, ValueError):  # a failed factorisation: skip the step
                continue
            if not torch.isfinite(loss):
                continue
            loss.backward()
            if all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()):
                optimizer.step()
        params = model.params()
        with torch.no_grad():
            try:
                lml = _log_marginal(model.load(params), n, sumsq)
            except (RuntimeError, ValueError):
                lml = torch.tensor(math.nan, dtype=data.u.dtype)
    return params, lml.detach()


class Surrogate(NamedTuple):
    """The fitted surrogate: hyperparameters, standardisation, the :class:`StatisticsGP` (eval mode)
    conditioned on the current training set, and the caches of that conditioning: the standardised
    training inputs ``x`` ``(n, D)``, the Cholesky factor ``chol`` ``(d, n, n)`` of the training
    covariance (kernel plus grouped noise) and ``weights = K^-1 (y - m)`` ``(d, n)``, so that a
    prediction costs ``O(n^2)`` and no more Python than two kernel calls (GPyTorch's own prediction
    path, ``model(x)``, gives the same numbers at several times the overhead per call)."""

    params: GPParams
    standardizer: Standardizer
    model: StatisticsGP
    x: Tensor
    chol: Tensor
    weights: Tensor


def condition_surrogate(params: GPParams, standardizer: Standardizer, data: SurrogateData) -> Surrogate:
    """Factor the kernel matrices of the training set (``O(n^3)``, once per acquisition or fit)."""
    model = _model(params, data, standardizer)
    model.eval()
    with torch.no_grad(), exact_settings():
        x, y = model.train_inputs[0], model.train_targets
        covariance = model.covar_module(x).to_dense() + model.likelihood.noise_covar().to_dense()
        # GPyTorch's factorisation (jitter added only if it fails, as its prediction path does)
        chol = psd_safe_cholesky(covariance)
        weights = torch.cholesky_solve((y - model.mean_module(x))[..., None], chol)[..., 0]
    return Surrogate(params, standardizer, model, x, chol, weights)


def _latent(surrogate: Surrogate, u: Tensor, full: bool) -> tuple[Tensor, Tensor]:
    """Standardised latent mean ``(d, k)`` and covariance ``(d, k, k)`` (``full``) or variance ``(d, k)``."""
    standardizer, model = surrogate.standardizer, surrogate.model
    x_test = (u.to(standardizer.u_loc.dtype) - standardizer.u_loc) / standardizer.u_scale
    with torch.no_grad(), exact_settings():
        cross = model.covar_module(x_test, surrogate.x).to_dense()  # (d, k, n)
        loc = model.mean_module(x_test) + (cross @ surrogate.weights[..., None])[..., 0]
        v = torch.linalg.solve_triangular(surrogate.chol, cross.transpose(-1, -2), upper=False)  # (d, n, k)
        if full:
            return loc, model.covar_module(x_test).to_dense() - v.transpose(-1, -2) @ v
        return loc, model.covar_module(x_test, diag=True) - (v * v).sum(-2)


def _noise(surrogate: Surrogate) -> Tensor:
    return (surrogate.standardizer.stat_scale * torch.exp(surrogate.params.log_noise)) ** 2


def predict(surrogate: Surrogate, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The surrogate at ``k`` points ``u`` ``(k, D)``: the latent mean ``(d, k)`` and covariance
    ``(d, k, k)`` of every statistic's ``f_j`` and its noise variance ``sigma_j^2`` ``(d,)``, on the
    statistics' own scale."""
    loc, cov = _latent(surrogate, u, True)
    scale = surrogate.standardizer.stat_scale
    loc = surrogate.standardizer.stat_loc[:, None] + scale[:, None] * loc
    return loc, scale[:, None, None] ** 2 * cov, _noise(surrogate)


def predict_marginal(surrogate: Surrogate, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`predict` without the cross-covariances: mean ``(d, k)``, variance ``(d, k)``, noise ``(d,)``
    (``O(k n^2)`` for many points, e.g. POPE's candidates)."""
    loc, var = _latent(surrogate, u, False)
    scale = surrogate.standardizer.stat_scale
    loc = surrogate.standardizer.stat_loc[:, None] + scale[:, None] * loc
    return loc, scale[:, None] ** 2 * var, _noise(surrogate)


def surrogate_log_likelihood(f: Tensor, noise: Tensor, observed: Tensor, epsilon: float, likelihood: str) -> Tensor:
    """``log p(y | f)`` for statistic means ``f`` ``(..., d)`` and variances ``noise + epsilon^2``
    ``(d,)``: Gaussian (the synthetic likelihood of the surrogate) or one-sided ("below": the
    probability that a simulation is at most ``y`` in every statistic, "above": at least; the
    formula of :func:`pyro_ext.infer.abc.one_sided_log_likelihood` with the surrogate's moments)."""
    var = noise + epsilon**2
    if likelihood == "gaussian":
        return (-0.5 * ((observed - f) ** 2 / var + torch.log(2.0 * math.pi * var))).sum(-1)
    z = (observed - f) / torch.sqrt(var)
    return torch.special.log_ndtr(z if likelihood == "below" else -z).sum(-1)


def decision_error(log_alpha: Tensor, log_u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The MH decision from ``M`` draws of ``log alpha`` ``(M,)`` and ``log u_mh``: ``(accept, tau,
    error)`` with ``tau`` the median of ``alpha`` (of ``log alpha``, exponentiated: for an even ``M``
    the geometric mean of the middle two, as ``jnp.median``; ``torch.median`` would take the lower),
    ``accept = u_mh <= tau`` and the error the fraction of draws on the other side of ``u_mh``."""
    s = torch.sort(log_alpha).values
    m = s.shape[0]
    log_tau = s[m // 2] if m % 2 else 0.5 * (s[m // 2 - 1] + s[m // 2])
    accept = log_u <= log_tau
    below = (log_alpha < log_u).to(log_alpha.dtype).mean()
    error = torch.where(accept, below, 1.0 - below)
    return accept, torch.exp(log_tau), error


# ---------------------------------------------------------------------------------------
# One MH step
# ---------------------------------------------------------------------------------------
class GPSABCState(NamedTuple):
    """The chain: ``position`` ``u`` ``(D,)``, its ``log_prior`` and its ``row`` in the training set
    (``-1`` if it has no simulations); the training set ``data`` and the ``surrogate`` conditioned on
    it; running totals ``num_simulations`` and ``num_nan`` (non-finite simulations)."""

    position: Tensor
    log_prior: Tensor
    row: int
    data: SurrogateData
    surrogate: Surrogate
    num_simulations: int
    num_nan: int


class GPSABCInfo(NamedTuple):
    """One step: ``proposal`` ``(D,)``, ``log_u`` (the uniform of the MH test), ``accepted``,
    ``acceptance_probability`` (``tau``, the median of the ``alpha`` draws), ``decision_error``
    (``E(u_mh)`` when the step decided), ``num_rounds`` (acquisition rounds run), ``capped``
    (still above ``xi`` after ``max_acquisitions`` rounds), ``failed`` (a simulation at ``u'``
    was not finite: ``u'`` is rejected) and ``out_of_budget`` (still above ``xi`` when another
    round would have passed ``max_simulations``: decided by the surrogate alone)."""

    proposal: Tensor
    log_u: float
    accepted: bool
    acceptance_probability: float
    decision_error: float
    num_rounds: int
    capped: bool
    failed: bool
    out_of_budget: bool


class StepConfig(NamedTuple):
    """The settings of :func:`gpsabc_step`."""

    problem: LikelihoodFreeProblem
    likelihood: str
    epsilon: float
    xi: float
    num_surrogate_draws: int
    delta_s: int
    max_acquisitions: int
    acquisition: str
    max_simulations: int | None = None

    def budget_allows(self, num_simulations: int) -> bool:
        """Whether one more round of ``delta_s`` simulations stays within ``max_simulations``."""
        return self.max_simulations is None or num_simulations <= self.max_simulations - self.delta_s


def log_likelihood_draws(surrogate: Surrogate, points: Tensor, config: StepConfig) -> Tensor:
    """``(M, k)`` surrogate log likelihoods at ``k`` points from ``M`` joint draws of the GPs (every
    statistic and point in one batch; normals from torch's global generator)."""
    loc, cov, noise = predict(surrogate, points)  # (d, k), (d, k, k), (d,)
    k = points.shape[0]
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    eye = torch.eye(k, dtype=cov.dtype)
    chol = torch.linalg.cholesky_ex(cov + 1e-10 * diag.mean(-1)[:, None, None] * eye)[0]
    z = torch.randn((config.num_surrogate_draws,) + tuple(loc.shape), dtype=loc.dtype)  # (M, d, k)
    f = loc + torch.einsum("dkl,mdl->mdk", chol, z)
    observed = torch.as_tensor(config.problem.observed, dtype=loc.dtype)
    return surrogate_log_likelihood(f.transpose(1, 2), noise, observed, config.epsilon, config.likelihood)


def gpsabc_step(
    state: GPSABCState, proposal_scale: Tensor, config: StepConfig, generator: torch.Generator
) -> tuple[GPSABCState, GPSABCInfo]:
    """One GPS-ABC Metropolis-Hastings step with acquisitions.

    Proposes ``u' = u + proposal_scale * z``, draws ``u_mh`` (torch's global generator), and while the
    decision error of :func:`decision_error` on ``M`` surrogate draws exceeds ``xi`` (at most
    ``max_acquisitions`` rounds, and only while the simulations so far plus ``delta_s`` stay within
    ``max_simulations``) runs ``delta_s`` simulations (from ``generator``) at ``u`` or ``u'``
    and re-conditions the GP; a non-finite simulation at ``u'`` ends the step with ``u'`` rejected
    (non-finite ones are counted, never used by the surrogate).
    """
    problem = config.problem
    position = state.position
    proposal = position + proposal_scale * torch.randn(position.shape, dtype=position.dtype)
    proposal_log_prior = problem.log_prior(proposal[None])[0]
    log_u = torch.log(torch.rand((), dtype=position.dtype))
    points = torch.stack([position, proposal])
    offset = proposal_log_prior - state.log_prior  # the random walk is symmetric

    def evaluate(surrogate: Surrogate) -> tuple[Tensor, Tensor, Tensor, int]:
        draws = log_likelihood_draws(surrogate, points, config)  # (M, 2)
        log_alpha = torch.clamp(offset + draws[:, 1] - draws[:, 0], max=0.0)
        log_alpha = torch.where(torch.isnan(log_alpha), -math.inf, log_alpha)
        accept, tau, error = decision_error(log_alpha, log_u)
        spread = torch.where(torch.isfinite(draws), draws, torch.zeros((), dtype=draws.dtype)).var(0, unbiased=False)
        return accept, tau, error, int(torch.argmax(spread))

    data, surrogate = state.data, state.surrogate
    rows = [state.row, -1]
    num_sim, num_nan = state.num_simulations, state.num_nan
    accept, tau, error, where = evaluate(surrogate)
    rounds, failed = 0, False
    while (
        float(error) > config.xi and rounds < config.max_acquisitions and not failed and config.budget_allows(num_sim)
    ):
        if config.acquisition == "random":
            where = int(torch.rand(()) < 0.5)
        at = points[where]
        with torch.no_grad():
            stats = problem.simulate(at.expand(config.delta_s, -1), generator)
        row = rows[where] if rows[where] >= 0 else data.count
        data = add_simulations(data, row, at, stats)
        rows[where] = row
        if bool(data.mask[row]):  # the GP sees only locations with a finite simulation
            surrogate = condition_surrogate(surrogate.params, surrogate.standardizer, data)
        nonfinite = int((~finite_rows(stats)).sum())
        # a non-finite simulation at u' rejects it, as rejection ABC and SMC-ABC reject such a draw
        failed = where == 1 and nonfinite > 0
        num_sim += config.delta_s
        num_nan += nonfinite
        rounds += 1
        accept, tau, error, where = evaluate(surrogate)
    accepted = bool(accept) and not failed
    new_state = GPSABCState(
        proposal if accepted else position,
        proposal_log_prior if accepted else state.log_prior,
        rows[1] if accepted else rows[0],
        data,
        surrogate,
        num_sim,
        num_nan,
    )
    undecided = float(error) > config.xi and not failed
    out_of_budget = undecided and rounds < config.max_acquisitions and not config.budget_allows(num_sim)
    info = GPSABCInfo(
        proposal,
        float(log_u),
        accepted,
        float(tau),
        float(error),
        rounds,
        undecided and not out_of_budget,
        failed,
        out_of_budget,
    )
    return new_state, info
