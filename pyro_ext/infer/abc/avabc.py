"""Automatic variational ABC (AV-ABC) in Pyro: the synthetic-likelihood ELBO, trained by Pyro's ``SVI``.

The torch twin of :mod:`numpyro_ext.infer.abc.avabc` (same names, same arguments, same messages).
Moreno, Adel, Meeds, Rue & Welling, "Automatic Variational ABC" (2016, arXiv:1606.08549): a
reparameterised ``q(theta)`` (``theta = g(phi, nu)``, every Pyro autoguide) and a reparameterised
simulator ``x = f(theta, omega)`` whose random numbers ``omega`` (here the state of the
``torch.Generator`` handed to ``simulator(theta, generator)``) are inputs, held fixed while the
gradient is taken.  The objective is

    L(phi) = E_nu E_omega [ log p(theta) + log p_SL(y | theta) - log q(theta | phi) ],   theta = g(phi, nu),

with Wood's synthetic likelihood ``p_SL(y | theta) = N(y; mu_hat, Sigma_hat + epsilon^2 I)`` of ``S``
simulations at each ``theta`` draw (:func:`pyro_ext.infer.abc.synthetic_log_likelihood`).
:func:`synthetic_likelihood_model` writes it as a Pyro model (the prior's sites plus a
``pyro.factor``), so ``SVI(model, guide, optimizer, Trace_ELBO())`` *is* AV-ABC with any guide and
any ``PyroOptim`` (``pyro_ext.optim.SWAN``, ``pyro.optim.Adam``, ...); :class:`AVABC` runs it.

What the optimum is: the expectation over ``omega`` is outside the logarithm, so ``q`` fits
``p(theta) exp(E_omega log p_SL(y | theta))``.  For Gaussian simulations with ``epsilon = 0`` the
likelihood precision is inflated by ``(S - 1) / (S - d - 2)`` (the mean of an inverse Wishart); the
bias vanishes as ``S`` grows.

Where the guide starts matters: far from the synthetic likelihood's mode the ELBO's gradient is
orders of magnitude larger than near it, and Adam's second-moment average keeps the steps small
long after the gradients have shrunk, so a guide started at an arbitrary point creeps towards the
mode.  :func:`pilot_values` starts an autoguide at the best of a few prior draws by
``log p(theta) + log p_SL(y | theta)`` (the same random streams at every draw).

Dtypes: everything follows the prior's dtype (float32 for a float32 prior, as Pyro's default;
float64 for a float64 prior): the pilot's start, hence an autoguide's parameters, and the
simulations, whose statistics come back in the dtype of the unconstrained ``theta``.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch

from adapters.abc import ABCResult
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_non_negative, check_positive_int
from pyro_ext.infer.abc.likelihoods import synthetic_log_likelihood
from pyro_ext.infer.abc.problem import PRIOR_SITE, LikelihoodFreeProblem

__all__ = ["AVABC", "check_differentiable_simulator", "pilot_values", "synthetic_likelihood_model"]

FACTOR_SITE = "synthetic_log_likelihood"  # the pyro.factor site of the model
NUM_GRADIENT_CHECKS = 4  # prior draws at which the simulator's derivative is checked
NUM_PILOT_DRAWS = 100  # prior draws scored to start an autoguide (pilot_values)
MAX_SEED = 2**62


def check_simulation_settings(problem: LikelihoodFreeProblem, num_simulations: Any, epsilon: Any) -> tuple[int, float]:
    """``(S, epsilon)`` checked: ``epsilon >= 0`` and ``S >= 2``, ``S > d`` when ``epsilon = 0`` (an
    unregularised covariance of ``S`` simulations of ``d`` statistics is singular unless ``S > d``)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise ValueError(
            f"epsilon: expected a number >= 0 (the ridge epsilon^2 I of the synthetic likelihood), got {epsilon!r}"
        )
    epsilon = check_non_negative("epsilon", epsilon)
    num_simulations = check_positive_int("num_simulations", num_simulations)
    if num_simulations < 2:
        raise ValueError(
            f"num_simulations: expected at least 2 simulations per theta (a covariance), got {num_simulations}"
        )
    if epsilon == 0.0 and num_simulations <= problem.stat_dim:
        raise ValueError(
            f"num_simulations: with epsilon = 0 the synthetic likelihood needs more simulations than statistics "
            f"(S > d = {problem.stat_dim}) for a nonsingular covariance, got S = {num_simulations}; "
            "raise num_simulations or set epsilon > 0"
        )
    return num_simulations, epsilon


def check_differentiable_simulator(problem: LikelihoodFreeProblem) -> None:
    """Raise a ``ValueError`` unless the problem's statistics are differentiable in ``theta``.

    At ``NUM_GRADIENT_CHECKS`` prior draws (one batch, a generator seeded 0, torch's global stream
    untouched) the Jacobian ``d s / d u`` is computed by autograd: it must be computable, and at some
    draw with finite statistics finite and not identically zero (a simulator that rounds, draws
    integers (``torch.poisson``), detaches or leaves torch gives zero or no derivatives).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u = problem.sample_prior(NUM_GRADIENT_CHECKS).detach().requires_grad_(True)
    try:
        stats = problem.simulate(u, torch.Generator().manual_seed(0))
        if not stats.requires_grad:
            raise RuntimeError("the statistics do not depend on theta through autograd")
        # rows are independent simulations, so the gradient of a column's sum is that column's rows' gradients
        columns = []
        for j in range(stats.shape[1]):
            (grad,) = torch.autograd.grad(stats[:, j].sum(), u, retain_graph=True, allow_unused=True)
            columns.append(torch.zeros_like(u) if grad is None else grad)
        jac = torch.stack(columns, dim=1)
    except Exception as error:  # noqa: BLE001 -- any failure here is the simulator's, named below
        raise ValueError(
            "simulator: AV-ABC differentiates the simulated statistics with respect to theta (the random numbers held "
            f"fixed), but differentiating the simulator failed ({type(error).__name__}: {error}); write it with "
            "reparameterised torch operations (e.g. loc + scale * torch.randn(..., generator=generator))"
        ) from error
    stats, jac = stats.detach().cpu().numpy(), jac.detach().cpu().numpy()
    finite = np.all(np.isfinite(stats), axis=-1)
    if not finite.any():
        return  # nothing to judge: non-finite simulations are the likelihood's business
    jac = jac[finite]
    usable = np.all(np.isfinite(jac), axis=(-2, -1)) & np.any(jac != 0.0, axis=(-2, -1))
    if not usable.any():
        raise ValueError(
            "simulator: AV-ABC needs statistics that are differentiable in theta (the random numbers held fixed), but "
            f"their derivative is zero or not finite at {int(finite.sum())} prior draws; a simulator that rounds, "
            "draws integers (e.g. torch.poisson) or thresholds gives no gradient: use OMC with finite differences, "
            "rejection ABC or SMC-ABC instead"
        )


def _simulate_batch(problem: LikelihoodFreeProblem, u: torch.Tensor, num_simulations: int, seed: int | None):
    """Statistics ``(n, S, d)`` of ``S`` simulations at each row of ``u`` ``(n, D)``.

    ``seed=None``: one generator (seeded from torch's global stream) for the whole batch, so every
    row gets its own random numbers; an int: every row's ``S`` simulations start from a generator
    seeded with it (the same random streams for every row: common random numbers).
    """
    n = u.shape[0]
    if seed is None:
        generator = torch.Generator(device=u.device).manual_seed(int(torch.randint(0, MAX_SEED, ()).item()))
        stats = problem.simulate(u.repeat_interleave(num_simulations, dim=0), generator)
        return stats.reshape(n, num_simulations, -1)
    rows = [
        problem.simulate(u_i.expand(num_simulations, -1), torch.Generator(device=u.device).manual_seed(int(seed)))
        for u_i in u
    ]
    return torch.stack(rows)


def pilot_values(
    problem: LikelihoodFreeProblem,
    num_simulations: int = 50,
    epsilon: float = 0.0,
    num_draws: int = NUM_PILOT_DRAWS,
) -> dict[str, torch.Tensor]:
    """A start for a guide: the best of ``num_draws`` prior draws by ``log p(u) + log p_SL(y | u)``.

    The draws come from torch's global stream (``pyro.set_rng_seed``); every draw is scored with
    the same ``S = num_simulations`` random streams (a generator seeded alike for each: common
    random numbers, so the ranking is not decided by which draw got lucky simulations),
    ``num_draws x S`` simulations in all.  Draws whose score is not finite (NaN/inf simulations, a
    singular covariance) rank last.  Returns the constrained ``{site: value}`` of the best draw (the
    prior's dtype), the format of ``pyro.infer.autoguide.init_to_value``:
    ``AutoNormal(model, init_loc_fn=init_to_value(values=pilot_values(problem)))`` starts plain
    ``SVI`` where :class:`AVABC` starts it.
    """
    num_simulations, epsilon = check_simulation_settings(problem, num_simulations, epsilon)
    num_draws = check_positive_int("num_draws", num_draws)
    with torch.no_grad():
        u = problem.sample_prior(num_draws)  # (num_draws, D)
        seed = int(torch.randint(0, MAX_SEED, ()).item())
        stats = _simulate_batch(problem, u, num_simulations, seed)  # (num_draws, S, d)
        scores = problem.log_prior(u) + synthetic_log_likelihood(stats, problem.observed, epsilon)
        scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
        theta = problem.theta(u[int(torch.argmax(scores))][None])
    if isinstance(problem.prior, torch.distributions.Distribution):
        return {PRIOR_SITE: theta[0]}
    return {name: value[0] for name, value in theta.items()}


def synthetic_likelihood_model(
    problem: LikelihoodFreeProblem,
    num_simulations: int = 50,
    epsilon: float = 0.0,
    check_gradient: bool = True,
) -> Callable[..., None]:
    """The AV-ABC target as a Pyro model: ``SVI(model, guide, optimizer, Trace_ELBO())`` is AV-ABC.

    The model samples the prior's sites (``theta`` for a Distribution prior, the prior model's sites
    otherwise), runs ``S = num_simulations`` simulations at that ``theta`` and adds
    ``pyro.factor("synthetic_log_likelihood", log p_SL(y | theta))`` (ridge ``epsilon^2 I``).

    Random numbers: ``model(simulation_seed=None)``.  With no seed, the simulations' generator is
    seeded from torch's global stream (``pyro.set_rng_seed``): fresh at every model run, so every
    ELBO particle of every step sees new simulations, fixed while that step's gradient is taken (the
    reparameterised simulator).  With an int ``simulation_seed`` the ``S`` simulations at every
    ``theta`` start from a generator seeded with it: :class:`AVABC` passes one per step, so the
    particles of a step share their ``S`` random streams (common random numbers across the ``theta``
    draws of a step, as in Moreno et al.'s algorithm).  Vectorised particles (a leading batch
    dimension on the sites) are supported.

    Args:
        problem: the :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem`; its simulator must be
            differentiable in ``theta`` with the generator's state fixed.
        num_simulations: ``S`` simulations per ``theta`` draw (``S > d`` when ``epsilon = 0``).
        epsilon: the ridge ``epsilon >= 0`` added as ``epsilon^2 I`` to the simulations' covariance.
        check_gradient: check at a few prior draws that the simulator gives finite, nonzero
            derivatives (:func:`check_differentiable_simulator`).
    """
    if not isinstance(problem, LikelihoodFreeProblem):
        raise TypeError(f"problem: expected a pyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
    num_simulations, epsilon = check_simulation_settings(problem, num_simulations, epsilon)
    if check_gradient:
        check_differentiable_simulator(problem)
    distribution_prior = isinstance(problem.prior, torch.distributions.Distribution)
    sites = dict(problem.sites)
    observed = problem.observed

    def model(simulation_seed: int | None = None) -> None:
        from pyro import poutine

        if distribution_prior:
            values = {PRIOR_SITE: pyro.sample(PRIOR_SITE, problem.prior)}
        else:
            trace = poutine.trace(problem.prior).get_trace()
            values = {name: trace.nodes[name]["value"] for name in sites}
        first = next(iter(sites))
        batch = values[first].shape[: values[first].dim() - len(sites[first][0])]
        n = math.prod(batch)
        flat = {name: values[name].reshape((n,) + sites[name][0]) for name in sites}
        u = problem.unconstrain(flat[PRIOR_SITE] if distribution_prior else flat)
        stats = _simulate_batch(problem, u, num_simulations, simulation_seed)
        log_likelihood = synthetic_log_likelihood(stats, observed, epsilon)
        pyro.factor(FACTOR_SITE, log_likelihood.reshape(batch))

    return model


def _default_optimizer(num_steps: int) -> pyro.optim.PyroOptim:
    """Clipped Adam with its step decaying from 0.05 to 0.001 over the run (large steps while the
    scale of ``q`` shrinks towards the posterior's, then small ones that average the simulations'
    noise away)."""
    return pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1.0 / num_steps), "clip_norm": 100.0})


def _takes_init_loc_fn(guide: Any) -> bool:
    """Whether an autoguide class (or a partial of one that leaves it unset) takes ``init_loc_fn``."""
    if isinstance(guide, functools.partial):
        return "init_loc_fn" not in guide.keywords and _takes_init_loc_fn(guide.func)
    return "init_loc_fn" in inspect.signature(guide).parameters


class AVABC:
    """Automatic variational ABC (Moreno et al. 2016): fit ``q(theta)`` by SVI on the synthetic-likelihood ELBO.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem` whose simulator is
            differentiable in ``theta`` with its generator's state fixed.
        guide: ``None`` (``AutoMultivariateNormal``: a full-rank Gaussian on the unconstrained
            ``theta``), an autoguide class or ``functools.partial`` of one (called with the model,
            e.g. ``AutoNormal``), or a guide function taking the model's argument ``simulation_seed``.
            An autoguide is built anew by every ``run`` (its parameters removed from Pyro's param
            store first), started at :func:`pilot_values` unless the partial sets its own
            ``init_loc_fn``; a guide function's parameters and start are the caller's.
        num_simulations: ``S`` simulations at each ``theta`` draw (``S > d`` when ``epsilon = 0``).
        epsilon: ridge ``epsilon >= 0`` of the synthetic likelihood's covariance.
        optimizer: a ``pyro.optim.PyroOptim`` (``pyro_ext.optim.SWAN({"lr": 1e-2})``,
            ``pyro.optim.Adam({"lr": 1e-2})``, ...), or a learning-rate schedule of one
            (``pyro.optim.ExponentialLR({"optimizer": SWANOptimizer, ...})``: stepped once per SVI
            step); ``None``: clipped Adam with a step decaying from 0.05 to 0.001.
        num_steps: SVI steps.
        num_particles: ``theta`` draws per step, sharing the step's ``S`` random streams.
        num_pilot_draws: prior draws scored by :func:`pilot_values` to start an autoguide.

    ``run(num_samples)`` (after ``pyro.set_rng_seed``) returns an :class:`~adapters.abc.ABCResult` of
    ``num_samples`` equally weighted constrained draws of the fitted guide; ``num_simulations``
    counts the simulations of training, ``num_steps x num_particles x S``, of the pilot,
    ``num_pilot_draws x S``, and the gradient check's draws (the model run Pyro makes to set an
    autoguide up, ``S`` simulations and no step, is not counted).  ``info`` holds ``loss`` (the
    trace, ``(num_steps,)``), ``init_values`` (the pilot's start, or ``None``) and
    ``num_nonfinite_losses``.  Simulations that return NaN/inf are left out of each synthetic
    likelihood; SVI reports only the loss, so they are not counted one by one: a step where too few
    were finite has a non-finite loss, counted in ``info["num_nonfinite_losses"]`` and warned about.
    """

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        guide: Any = None,
        num_simulations: int = 50,
        epsilon: float = 0.0,
        optimizer: Any = None,
        num_steps: int = 2000,
        num_particles: int = 4,
        num_pilot_draws: int = NUM_PILOT_DRAWS,
    ):
        from pyro.infer.autoguide import AutoGuide, AutoMultivariateNormal

        if not isinstance(problem, LikelihoodFreeProblem):
            raise TypeError(f"problem: expected a pyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
        # the cheap checks first: the model's gradient check runs simulations
        self.num_simulations, self.epsilon = check_simulation_settings(problem, num_simulations, epsilon)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.num_pilot_draws = check_positive_int("num_pilot_draws", num_pilot_draws)
        if guide is None:
            guide = AutoMultivariateNormal
        is_class = isinstance(guide, type) and issubclass(guide, AutoGuide)
        is_partial = (
            isinstance(guide, functools.partial) and isinstance(guide.func, type) and issubclass(guide.func, AutoGuide)
        )
        if not (is_class or is_partial or callable(guide)):
            raise TypeError(
                "guide: expected None, an autoguide class (e.g. AutoNormal) or a guide function, "
                f"got {type(guide).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, pyro.optim.PyroOptim):
            raise TypeError(
                "optimizer: expected a pyro.optim.PyroOptim (e.g. pyro.optim.Adam({'lr': 0.01}) or "
                f"pyro_ext.optim.SWAN({{'lr': 0.01}})), got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.problem = problem
        self.model = synthetic_likelihood_model(problem, self.num_simulations, self.epsilon)
        self._make_guide = guide if (is_class or is_partial) else None
        self.guide = guide(self.model) if self._make_guide is not None else guide

    def run(self, num_samples: int = 1000) -> ABCResult:
        """Start the guide (:func:`pilot_values`), fit it by ``num_steps`` SVI steps and return
        ``num_samples`` of its draws."""
        from pyro.infer import SVI, Predictive, Trace_ELBO
        from pyro.infer.autoguide import init_to_value

        num_samples = check_positive_int("num_samples", num_samples)
        init_values, num_pilot = None, 0
        if self._make_guide is not None:
            store = pyro.get_param_store()
            prefix = f"{self.guide._pyro_name}."
            for name in [k for k in store.keys() if k.startswith(prefix)]:
                del store[name]
            if _takes_init_loc_fn(self._make_guide):
                init_values = pilot_values(self.problem, self.num_simulations, self.epsilon, self.num_pilot_draws)
                num_pilot = self.num_pilot_draws * self.num_simulations
                self.guide = self._make_guide(self.model, init_loc_fn=init_to_value(values=init_values))
            else:
                self.guide = self._make_guide(self.model)
        optimizer = _default_optimizer(self.num_steps) if self.optimizer is None else self.optimizer
        # particles vectorised (one model run draws them all); a Distribution prior has no plates
        plates = 0 if isinstance(self.problem.prior, torch.distributions.Distribution) else math.inf  # inf: guessed
        elbo = Trace_ELBO(num_particles=self.num_particles, vectorize_particles=True, max_plate_nesting=plates)
        svi = SVI(self.model, self.guide, optimizer, elbo)
        losses = np.empty(self.num_steps)
        schedule = isinstance(optimizer, pyro.optim.lr_scheduler.PyroLRScheduler)
        for step in range(self.num_steps):
            # one seed per step for the S simulations, shared by the step's particles
            losses[step] = svi.step(int(torch.randint(0, MAX_SEED, ()).item()))
            if schedule:
                optimizer.step()  # a learning-rate schedule moves once per SVI step
        with torch.no_grad():
            draws = Predictive(
                self.guide, num_samples=num_samples, parallel=True, return_sites=list(self.problem.sites)
            )()
        theta = np.concatenate(
            [draws[site].detach().cpu().numpy().reshape(num_samples, -1) for site in self._site_names()], axis=1
        )
        num_nonfinite = int(np.sum(~np.isfinite(losses)))
        message = None
        if num_nonfinite:
            message = (
                f"AVABC: {num_nonfinite} of {self.num_steps} steps had a non-finite loss (too few finite simulations "
                "at some theta draw, or a diverging optimizer); check the simulator's NaN/inf outputs and the step size"
            )
        issued = warn_unreliable(message)
        num_sim = self.num_steps * self.num_particles * self.num_simulations + num_pilot + NUM_GRADIENT_CHECKS
        return ABCResult(
            algorithm="AVABC",
            theta=theta,
            names=list(self.problem.names),
            sites=dict(self.problem.sites),
            log_weights=np.zeros(num_samples),
            num_simulations=num_sim,
            num_nan_simulations=0,
            info={
                "loss": losses,
                "init_values": None
                if init_values is None
                else {k: v.detach().cpu().numpy() for k, v in init_values.items()},
                "num_nonfinite_losses": num_nonfinite,
                "num_simulations_per_theta": self.num_simulations,
                "epsilon": self.epsilon,
            },
            warnings=issued,
        )

    def _site_names(self) -> list[str]:
        """The prior's sites in the column order of ``problem.names``."""
        return sorted(self.problem.sites, key=lambda site: self.problem.sites[site][1])
