"""The hierarchical ODE example (VI-HDS style) in Pyro: a torchdiffeq solve, the model, conditional encoder inputs,
and predictions for an unseen group.  The same model, site names and functions as
:mod:`numpyro_ext.models.hierarchical_ode`; equations, priors and the data generator in
:mod:`adapters.hierarchical_ode` (Roeder et al., VI-HDS, ICML 2019, arXiv:1905.12090, Sec. 2-3).

The ODE is solved with ``torchdiffeq.odeint``'s adaptive Dormand-Prince 5(4) (``dopri5``, as diffrax's ``Dopri5``
in the NumPyro port), all individuals in one batched state (N, 2): torchdiffeq controls the step size by the
error of the whole batch, so an individual's solution depends on the others' only within the tolerance.
Gradients by backpropagation through the solver's steps.  The model is plain Pyro: any Pyro guide fits it
(``AutoNormal`` for F-VI; an amortized guide with ``inputs=encoder_inputs`` for A-VI).
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torchdiffeq import odeint

from adapters.hierarchical_ode import (
    ATOL,
    FLOAT32_TOL,
    MAX_STEPS,
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


def rhs(t: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``(dm/dt, dp/dt)`` at states ``y`` (..., 2) for positive parameters ``theta`` (..., 4) = ``(alpha, K,
    gamma_m, gamma_p)``: transcription repressed by the protein (Hill coefficient 2), translation at rate 1."""
    alpha, K, gamma_m, gamma_p = theta.unbind(-1)
    m, p = y.unbind(-1)
    return torch.stack([alpha / (1.0 + (p / K) ** 2) - gamma_m * m, m - gamma_p * p], dim=-1)


def solve(
    times: torch.Tensor, log_theta: torch.Tensor, *, rtol: float | None = None, atol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ODE's solution from ``x(0) = 0`` at ``times`` (T,) for log-parameters ``log_theta`` (..., 4).

    Returns ``(x, ok)``: ``x`` of shape (..., T, 2) and ``ok`` (...,).  A failed solve (torchdiffeq gives up:
    more than ``MAX_STEPS`` steps or a step size underflow) or non-finite values make ``x`` NaN and ``ok``
    False for the whole batch (one batched solve).  Tolerances default to ``RTOL``/``ATOL`` (1e-5, 1e-6) in
    float64 and 1e-5 in float32.
    """
    log_theta = torch.as_tensor(log_theta)
    dtype = log_theta.dtype if log_theta.is_floating_point() else torch.get_default_dtype()
    log_theta = log_theta.to(dtype)
    times = torch.as_tensor(times, dtype=dtype, device=log_theta.device)
    if rtol is None:
        rtol = RTOL if dtype == torch.float64 else FLOAT32_TOL
    if atol is None:
        atol = ATOL if dtype == torch.float64 else FLOAT32_TOL
    theta = log_theta.exp()
    t = torch.cat([times.new_zeros(1), times])
    y0 = log_theta.new_zeros((*log_theta.shape[:-1], NUM_SPECIES))
    try:
        options = {"max_num_steps": MAX_STEPS}
        ys = odeint(lambda s, y: rhs(s, y, theta), y0, t, rtol=rtol, atol=atol, method="dopri5", options=options)
        ok = torch.isfinite(ys).all()
    except AssertionError:  # torchdiffeq asserts on too many steps and on a step size underflow
        ys, ok = y0.new_full((t.shape[0], *y0.shape), float("nan")), torch.tensor(False)
    x = ys[1:].movedim(0, -2)  # (T, ..., 2) -> (..., T, 2)
    ok = ok.expand(log_theta.shape[:-1])
    return torch.where(ok[..., None, None], x, torch.full_like(x, float("nan"))), ok


def _check_args(times: Any, group: Any, num_groups: Any, obs: Any) -> int:
    """The shared checks (:func:`adapters.hierarchical_ode.check_model_args`) on shapes and values."""

    def host(v: Any) -> Any:
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v

    return check_model_args(
        tuple(torch.as_tensor(host(times)).shape),
        tuple(torch.as_tensor(host(group)).shape),
        num_groups,
        None if obs is None else tuple(torch.as_tensor(host(obs)).shape),
        times=host(times),
        group=host(group),
        obs=host(obs),
    )


def hierarchical_ode_model(
    times: Any, group: Any, num_groups: int, obs: Any = None, subsample_size: int | None = None
) -> None:
    """Population -> groups -> individuals, each individual's series from the ODE; the Pyro twin of
    :func:`numpyro_ext.models.hierarchical_ode.hierarchical_ode_model` (same arguments, sites and shapes).

    :param times: observation times (T,), > 0 and increasing.
    :param group: each individual's group index (N,), integers in ``[0, num_groups)``.
    :param num_groups: ``G``, a Python int (it sizes the plate "groups").
    :param obs: the observations (N, T, 2) (mRNA, protein), > 0; ``None`` draws them.
    :param subsample_size: ``None`` (every individual each call) or ``b``: the plate ``"data"`` visits ``b`` random
        individuals, scaled by ``N / b`` (minibatch SVI; an amortized guide keeps memory independent of ``N``).

    Sites: ``log_theta_pop`` (4,), ``tau_group``, ``tau_ind``, ``sigma``; plate ``"groups"``:
    ``log_theta_group`` (G, 4); plate ``"data"``: ``log_theta`` (N, 4), deterministic ``trajectory`` (N, T, 2)
    and observed ``obs``.  A failed solve makes the log density ``-inf`` (factor ``ode_failed``); solutions are
    floored at ``POSITIVE_FLOOR`` before their log is taken.
    """
    num_groups = _check_args(times, group, num_groups, obs)
    dtype = torch.get_default_dtype()
    times = torch.as_tensor(times, dtype=dtype)
    group = torch.as_tensor(group, dtype=torch.long)
    prior_loc = torch.tensor(PRIOR_LOC, dtype=dtype)
    log_theta_pop = pyro.sample("log_theta_pop", dist.Normal(prior_loc, PRIOR_SCALE).to_event(1))
    tau_group = pyro.sample("tau_group", dist.HalfNormal(torch.tensor(TAU_PRIOR_SCALE, dtype=dtype)))
    tau_ind = pyro.sample("tau_ind", dist.HalfNormal(torch.tensor(TAU_PRIOR_SCALE, dtype=dtype)))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(SIGMA_PRIOR_SCALE, dtype=dtype)))
    # values conditioned on may be Python floats: the scales broadcast against (groups|data, ..., 4) below
    log_theta_pop = torch.as_tensor(log_theta_pop, dtype=dtype)
    tau_group, tau_ind, sigma = (torch.as_tensor(v, dtype=dtype) for v in (tau_group, tau_ind, sigma))
    with pyro.plate("groups", num_groups, dim=-1):
        log_theta_group = pyro.sample(
            "log_theta_group", dist.Normal(log_theta_pop.unsqueeze(-2), tau_group[..., None, None]).to_event(1)
        )
    with pyro.plate("data", group.shape[0], subsample_size=subsample_size, dim=-1) as idx:
        log_theta = pyro.sample(
            "log_theta", dist.Normal(log_theta_group[..., group[idx], :], tau_ind[..., None, None]).to_event(1)
        )
        x, ok = solve(times, log_theta)
        pyro.deterministic("trajectory", x, event_dim=2)
        pyro.factor("ode_failed", torch.where(ok, 0.0, -torch.inf).to(dtype))
        x = torch.where(ok[..., None, None], x.clamp_min(POSITIVE_FLOOR), torch.ones_like(x))
        obs = None if obs is None else torch.as_tensor(obs, dtype=dtype)[idx]
        pyro.sample("obs", dist.LogNormal(x.log(), sigma[..., None, None, None]).to_event(2), obs=obs)


def encoder_inputs(
    times: Any, group: Any, num_groups: int, obs: Any = None, subsample_size: int | None = None
) -> torch.Tensor:
    """The conditional encoder's inputs (N, T * 2 + G): each individual's log observations, flattened, then its
    group one-hot (VI-HDS Sec. 3.1); it takes the model's arguments, for an amortized guide's ``inputs=``.
    ``subsample_size`` is the model's argument, unused here: the guide indexes the full array with the plate's
    subsample."""
    if obs is None:
        raise ValueError("obs: the encoder reads each individual's observed series, so obs (N, T, 2) must be given")
    num_groups = check_num_groups(num_groups)
    obs = torch.as_tensor(obs, dtype=torch.get_default_dtype())
    log_obs = obs.log().reshape(obs.shape[0], -1)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(group, dtype=torch.long), num_groups).to(log_obs.dtype)
    return torch.cat([log_obs, one_hot], dim=1)


def _global_draws(
    guide: Any, num_samples: int, guide_args: tuple, guide_kwargs: dict | None
) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of the global latents from the fitted guide, stacked: ``{site: (S, *shape)}``."""
    dtype = torch.get_default_dtype()
    with torch.no_grad():
        draws = [guide(*guide_args, **({} if guide_kwargs is None else guide_kwargs)) for _ in range(num_samples)]
        return {k: torch.stack([torch.as_tensor(d[k], dtype=dtype) for d in draws]) for k in GLOBAL_SITES}


def _observe(log_theta: torch.Tensor, times: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trajectories (S, M, T, 2) for ``log_theta`` (S, M, 4) in one solve, and observations around them (the
    model's last lines, batched over draws)."""
    x, ok = solve(times, log_theta)
    loc = torch.where(ok[..., None, None], x.clamp_min(POSITIVE_FLOOR), torch.ones_like(x)).log()
    return x, dist.LogNormal(loc, sigma[:, None, None, None]).sample()


def predict_individuals(
    guide: Any,
    times: Any,
    group: Any,
    num_groups: int,
    obs: Any,
    *,
    num_samples: int = 200,
    guide_args: tuple = (),
    guide_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Posterior predictions for individuals with data ``obs`` (N, T, 2) in known groups ``group`` (N,): the
    training individuals or new ones, whose posterior the fitted encoder gives without refitting.

    ``guide``: a fitted :class:`~pyro_ext.infer.amortized.AutoAmortizedNormal` with ``inputs=encoder_inputs``;
    its global draws come from ``guide(*guide_args, **guide_kwargs)`` (the training data's arguments), each
    individual's ``log_theta`` from the encoder's Normal for its data (mean-field: independent of the global
    draw).  Draws use Pyro's global RNG.  Returns ``{"log_theta": (S, N, 4), "trajectory": (S, N, T, 2), "obs":
    (S, N, T, 2)}``, ``S = num_samples``.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    num_groups = _check_args(times, group, num_groups, obs)
    times = torch.as_tensor(times, dtype=torch.get_default_dtype())
    samples = _global_draws(guide, num_samples, guide_args, guide_kwargs)
    with torch.no_grad():
        loc, scale = guide.encode(encoder_inputs(times, group, num_groups, obs))["log_theta"]
        log_theta = dist.Normal(loc, scale).sample((num_samples,))
        x, y = _observe(log_theta, times, samples["sigma"])
    return {"log_theta": log_theta, "trajectory": x, "obs": y}


def predict_unseen_group(
    guide: Any,
    times: Any,
    num_individuals: int,
    *,
    num_samples: int = 200,
    guide_args: tuple = (),
    guide_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Predictions for ``num_individuals`` individuals of a group the fit never saw, from no data of theirs.

    Per draw: the population-level latents from the fitted ``guide`` (any Pyro guide of
    :func:`hierarchical_ode_model`, called as ``guide(*guide_args, **guide_kwargs)``: an ``AutoNormal`` needs
    no arguments once fitted, an amortized guide the training data's), a new group ``log_theta_group ~
    N(log_theta_pop, tau_group^2 I)``, its individuals ``log_theta ~ N(log_theta_group, tau_ind^2 I)``, their
    trajectories and observations ``obs ~ LogNormal(log trajectory, sigma)``: the model's own lines for one new
    group, batched over the draws so that all ``S * M`` individuals take one solve.  Draws use Pyro's global
    RNG (``pyro.set_rng_seed``).  Returns ``{"log_theta_group": (S, 1, 4), "log_theta": (S, M, 4),
    "trajectory": (S, M, T, 2), "obs": (S, M, T, 2)}``, ``S = num_samples``, ``M = num_individuals``.
    """
    num_individuals = check_positive_int("num_individuals", num_individuals)
    num_samples = check_positive_int("num_samples", num_samples)
    times = torch.as_tensor(times, dtype=torch.get_default_dtype())
    check_model_args(tuple(times.shape), (num_individuals,), 1, None, times=times.numpy())
    samples = _global_draws(guide, num_samples, guide_args, guide_kwargs)
    with torch.no_grad():
        pop, tau_group, tau_ind = samples["log_theta_pop"], samples["tau_group"], samples["tau_ind"]
        log_theta_group = dist.Normal(pop, tau_group[:, None]).sample()[:, None, :]  # (S, 1, 4)
        log_theta = dist.Normal(log_theta_group.expand(-1, num_individuals, -1), tau_ind[:, None, None]).sample()
        x, y = _observe(log_theta, times, samples["sigma"])
    return {"log_theta_group": log_theta_group, "log_theta": log_theta, "trajectory": x, "obs": y}
