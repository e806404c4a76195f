"""Hamiltonian ABC (HABC) as a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel`: SGHMC on the synthetic likelihood.

The torch twin of :mod:`numpyro_ext.infer.abc.habc` (same class, arguments, defaults and messages;
torch's ``generator`` takes the place of JAX's keys).  Meeds, Leenders & Welling, "Hamiltonian ABC"
(UAI 2015, arXiv:1503.01916).  The target is ``p(theta) p_SL(y | theta, omega)``, Wood's synthetic
likelihood of ``S`` simulations drawn with the seeds ``omega``
(:func:`pyro_ext.infer.abc.synthetic_log_likelihood`), on the prior's unconstrained flat vector
``u`` ``(D,)`` (the prior's density there includes its Jacobian).  Its gradient is

* ``gradient="spsa"``: Spall's simultaneous perturbation with ``R`` Rademacher directions and scale
  ``c`` (:func:`pyro_ext.infer.abc.spsa.spsa_grad`), ``2 R S`` simulations, the same seeds on both
  sides of every difference (common random numbers);
* ``gradient="autodiff"``: torch autograd through a simulator that is differentiable in ``theta``
  with its generator's state fixed, ``S`` simulations;

plus the prior's gradient by autograd.  The chain moves by stochastic-gradient HMC with friction
(Chen, Fox & Guestrin, ICML 2014, Eq. 9; HABC's thermostat variant is not built here),

    du = M^-1 r dt,    dr = grad log pi(u) dt - C r dt + N(0, 2 C M dt),

which leaves ``pi(u) N(r; 0, M)`` invariant for any noise-free gradient; the friction ``C > 0`` (a
rate per unit of integration time, in the metric of ``M``) damps the extra heat a noisy gradient
brings.  It is integrated by splitting: one velocity-Verlet step of ``step_size``
(:func:`pyro_ext.infer.hmc_util.leapfrog`) and then the friction and noise solved exactly,
``r <- a r + sqrt(1 - a^2) M^{1/2} xi`` with ``a = exp(-C step_size)`` (an Ornstein-Uhlenbeck step,
so momenta stay ``N(0, M)``).  There is no Metropolis test: the invariant distribution is ``pi``'s
up to ``O(step_size^2)`` discretisation error plus a heating of about ``step_size V / (2 C)`` in
whitened units from a gradient noise of variance ``V``.

**Persistent seeds in torch.**  A torch simulator takes one ``torch.Generator`` for a whole batch,
and row ``i`` of a batch of ``n`` always gets the same random numbers from the same generator state
(as in :class:`~pyro_ext.infer.abc.OMC`; provided the simulator's draws do not depend on the values
of ``theta``, true of reparameterised simulators).  So the ``S`` simulations are ``B`` blocks of
``g`` rows, each block one batched simulator call from a generator seeded with the block's seed:
the chain's state holds the ``B`` block seeds ``(B,)`` (int64), and simulation ``s`` is row
``s mod g`` of block ``s // g``.  NumPyro's twin replaces ``k = round(seed_refresh * S)`` of its
``S`` keys (at least one when ``seed_refresh > 0``), chosen at random, every iteration; here
``g = gcd(S, k)``, ``B = S / g``, and ``k / g`` blocks chosen at random are redrawn: exactly ``k``
simulations, as there (``g = 1`` is NumPyro's rule simulation by simulation).  ``seed_refresh = 0``
and ``1`` make one block.  A synthetic likelihood costs ``B`` simulator calls: with the default
``S = 50``, ``seed_refresh = 0.1`` that is 10 calls of 5 rows; a ``k`` prime to ``S`` makes ``S``
calls of one row.  After a refresh, ``num_steps`` SGHMC steps run with the seeds fixed, so the
gradients along a trajectory all see the same smooth ``log p_SL(y | ., omega)``; ``seed_refresh = 1``
redraws them all (the chain then feels ``E_omega grad log p_SL``), ``seed_refresh = 0`` keeps them.

Costs (counted in ``num_simulations``): a gradient is ``2 R S`` (SPSA) or ``S`` (autodiff)
simulations; an iteration is ``num_steps`` gradients plus one after the seeds' refresh (none when
``seed_refresh = 0``); the start adds one gradient and, without ``initial_params``,
``num_pilot_draws * S`` simulations scoring prior draws (:func:`pyro_ext.infer.abc.avabc.pilot_values`).
Non-finite simulations are left out of the synthetic likelihood and counted (``num_nonfinite``); a
gradient with no finite estimate falls back to the prior's gradient (``num_failed_gradients``); a
step that leaves the finite reals, or goes from a finite log density to none, is undone and its
momentum redrawn (``diverging``).  Randomness: torch's global generator (``pyro.set_rng_seed``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from adapters.abc import HABC_GRADIENTS, check_habc_settings, check_sghmc_inverse_mass_matrix, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from pyro_ext.infer.abc.avabc import check_differentiable_simulator, check_simulation_settings, pilot_values
from pyro_ext.infer.abc.likelihoods import synthetic_log_likelihood
from pyro_ext.infer.abc.problem import PRIOR_SITE, LikelihoodFreeProblem, finite_rows
from pyro_ext.infer.abc.sghmc import (
    METRIC_BLOCK,
    SGHMCInfo,
    SGHMCState,
    metric_factor,
    sghmc_step,
    sghmc_warmup_adapter,
)
from pyro_ext.infer.abc.spsa import spsa_grad
from pyro_ext.infer.hmc_util import sample_momentum

__all__ = ["HABC", "HABCState", "SGHMCInfo", "SGHMCState", "metric_factor", "sghmc_step", "sghmc_warmup_adapter"]

Tensor = torch.Tensor
GRADIENTS = HABC_GRADIENTS
MAX_SEED = 2**62


# ---------------------------------------------------------------------------------------
# Pyro shell
# ---------------------------------------------------------------------------------------
class HABCState(NamedTuple):
    """State of :class:`HABC`'s chain (the twin of NumPyro's, less the key: torch's global generator).

    ``i``: iterations done; ``z``: the unconstrained position ``u`` ``(D,)``; ``momentum`` ``(D,)``;
    ``potential_energy``: ``-(log p(u) + log p_SL)`` as last estimated (SPSA: from the perturbed
    evaluations, exact to ``O(c^2)``); ``logdensity_grad`` ``(D,)``; ``seeds``: the ``B`` block seeds
    of the ``S`` persistent simulations ``(B,)`` (int64, see the module docstring);
    ``num_simulations``, ``num_nonfinite``, ``num_failed_gradients``: totals since the chain's start;
    ``diverging``: whether a step of this iteration was undone; ``inverse_mass_matrix``: the metric in use
    (adapted during warmup; NumPyro's ``adapt_state.inverse_mass_matrix``).
    """

    i: int
    z: Tensor
    momentum: Tensor
    potential_energy: Tensor
    logdensity_grad: Tensor
    seeds: Tensor
    num_simulations: int
    num_nonfinite: int
    num_failed_gradients: int
    diverging: bool
    inverse_mass_matrix: Tensor


class HABC(MCMCKernel):
    """Hamiltonian ABC (Meeds, Leenders & Welling 2015) for :class:`pyro.infer.MCMC`.

    ``MCMC(HABC(problem, ...), num_samples=..., warmup_steps=...).run()``; ``get_samples()`` returns the
    prior's constrained sites (the kernel's ``transforms``), ``az.from_pyro(mcmc)`` reads the chains and
    ``adapters.inference_data.from_mcmc(mcmc)`` adds the per-draw statistics.  Warmup iterations are
    run and discarded; with ``adapt_mass_matrix`` they also adapt the metric: Pyro's Welford (co)variance
    of the warmup draws in Stan's windows (:func:`sghmc_warmup_adapter`, the same schedule and
    regularisation as NumPyro's; at least 20 warmup iterations; the momentum is redrawn from ``N(0, M)``
    when ``M`` changes).  The step size is not adapted (no accept step to steer dual averaging by); it and
    the SPSA perturbation are measured in the metric: the velocity ``M^-1 r`` is ``N(0, M^-1)`` and SPSA
    perturbs ``u`` along ``L Delta`` (``L L^T = M^-1``, :func:`metric_factor`) and maps the slope back by
    ``L^-T``, so with ``M^-1`` about the posterior covariance ``step_size`` and ``spsa_scale`` are
    fractions of the posterior sd on every coordinate (see :class:`numpyro_ext.infer.abc.habc.HABC`).
    ``MCMC(..., initial_params={site: value})`` starts the
    chains at the given *unconstrained* values of the prior's sites (Pyro's convention); otherwise each
    chain starts at the best of ``num_pilot_draws`` prior draws.

    Args:
        problem: a :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem`.
        step_size: ``epsilon``, the integration step (in the units of ``u`` scaled by ``M^-1``).
        num_steps: ``L``, SGHMC steps per MCMC iteration (the seeds are fixed along them).
        friction: ``C > 0``, the damping rate of the momentum per unit of integration time.
        num_simulations: ``S`` simulations per synthetic likelihood (``S > d`` when ``epsilon = 0``).
        num_spsa_repeats: ``R``, Rademacher directions per SPSA gradient.
        spsa_scale: ``c > 0``, the SPSA perturbation size on the unconstrained scale.
        seed_refresh: fraction in ``[0, 1]`` of the persistent seeds redrawn every iteration.
        gradient: ``"spsa"`` or ``"autodiff"`` (needs a simulator differentiable in ``theta``).
        epsilon: ridge ``epsilon >= 0`` of the synthetic likelihood's covariance.
        inverse_mass_matrix: ``M^-1``, ``None`` (identity), ``(D,)`` diagonal or ``(D, D)`` dense;
            ideally about the posterior's covariance on the unconstrained scale (the start of the
            adaptation when ``adapt_mass_matrix``).
        num_pilot_draws: prior draws scored to start each chain when ``MCMC`` gets no ``initial_params``.
        adapt_mass_matrix: whether warmup adapts ``M^-1`` to the warmup draws' (co)variance (dense when
            ``inverse_mass_matrix`` is dense, diagonal otherwise).  Off by default: on the sbibm tasks
            at 10^4 simulations, with the step size then a fraction of a posterior sd, the chains moved
            slower (C2ST worse on three of four tasks; docs/abc.rst).

    Statistics: :meth:`get_sample_stats` has, per iteration of the chain run last (warmup included),
    ``potential_energy``, ``diverging``, the running totals ``num_simulations``, ``num_nonfinite``,
    ``num_failed_gradients`` (NumPyro's state fields of the same names) and ``warmup``;
    :meth:`diagnostics` (so ``mcmc.diagnostics()``, per chain) has Pyro's ``divergences``, the three
    totals and ``sample_stats``.  :meth:`check_counts` warns about non-finite simulations.
    """

    def __init__(
        self,
        problem: LikelihoodFreeProblem,
        step_size: float = 0.1,
        num_steps: int = 10,
        friction: float = 1.0,
        num_simulations: int = 50,
        num_spsa_repeats: int = 2,
        spsa_scale: float = 0.01,
        seed_refresh: float = 0.1,
        gradient: str = "spsa",
        epsilon: float = 0.0,
        inverse_mass_matrix: Any = None,
        num_pilot_draws: int = 100,
        adapt_mass_matrix: bool = False,
    ):
        if not isinstance(problem, LikelihoodFreeProblem):
            raise TypeError(f"problem: expected a pyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
        self.problem = problem
        self.num_simulations, self.epsilon = check_simulation_settings(problem, num_simulations, epsilon)
        settings = check_habc_settings(
            step_size, num_steps, friction, num_spsa_repeats, spsa_scale, seed_refresh, gradient, num_pilot_draws,
            adapt_mass_matrix,
        )  # fmt: skip
        for name, value in settings.items():  # self.step_size, self.num_steps, ..., self.adapt_mass_matrix
            setattr(self, name, value)
        self.inverse_mass_matrix = self._check_inverse_mass_matrix(inverse_mass_matrix)
        if self.gradient == "autodiff":
            try:
                check_differentiable_simulator(problem)
            except ValueError as error:
                raise ValueError(f"gradient: 'autodiff' cannot be used with this simulator ({error})") from error
        if self.seed_refresh > 0:
            self.num_refreshed = min(self.num_simulations, max(1, round(self.seed_refresh * self.num_simulations)))
        else:
            self.num_refreshed = 0
        #: rows per block of seeds ``g``, blocks ``B`` and blocks redrawn per iteration (module docstring)
        self.seed_block_size = math.gcd(self.num_simulations, self.num_refreshed or self.num_simulations)
        self.num_seed_blocks = self.num_simulations // self.seed_block_size
        self.num_refreshed_blocks = self.num_refreshed // self.seed_block_size
        per_gradient = 2 * self.num_spsa_repeats if self.gradient == "spsa" else 1
        #: simulations of one gradient evaluation and of one MCMC iteration
        self.simulations_per_gradient = per_gradient * self.num_simulations
        self.simulations_per_iteration = self.simulations_per_gradient * (
            self.num_steps + (1 if self.num_refreshed else 0)
        )
        # Pyro's convention: constrained -> unconstrained
        self.transforms = {site: transform.inv for site, transform in problem.transforms.items()}
        self.state: HABCState | None = None
        self.sample_stats: list[dict[str, Any]] = []
        self._reset()

    def _check_inverse_mass_matrix(self, value: Any) -> Tensor:
        array = check_sghmc_inverse_mass_matrix(value, self.problem.dim)
        if array is None:
            return torch.ones(self.problem.dim, dtype=self.problem.dtype)
        return torch.as_tensor(array, dtype=self.problem.dtype)

    # ---- the target -------------------------------------------------------------------
    def draw_seeds(self, num_blocks: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``num_blocks`` (default ``B``) fresh block seeds ``(num_blocks,)`` (int64) from ``generator``."""
        num_blocks = self.num_seed_blocks if num_blocks is None else num_blocks
        return torch.randint(0, MAX_SEED, (num_blocks,), generator=generator, dtype=torch.long)

    def simulate(self, u: Tensor, seeds: Tensor) -> Tensor:
        """Statistics ``(S, d)`` of the ``S`` simulations at the unconstrained ``u`` ``(D,)`` with the block
        ``seeds`` ``(B,)`` (``(n, S, d)`` for points ``(n, D)``): per point and block one batched simulator
        call of ``g`` rows from a generator seeded with the block's seed (differentiable in ``u``)."""
        if u.dim() == 1:
            return self.simulate(u[None], seeds)[0]
        problem, size = self.problem, self.seed_block_size
        seeds = seeds.tolist()
        points = []
        for point in u:
            # theta once per point, for every block (the problem's simulate would redo it per call)
            theta = problem.theta(point[None].expand(size, -1))
            blocks = [
                problem.summary_statistics(
                    problem.simulator(theta, torch.Generator(device=u.device).manual_seed(seed)), size
                )
                for seed in seeds
            ]
            points.append(torch.cat(blocks, dim=0).to(u.dtype))
        return torch.stack(points)

    def log_synthetic_likelihood(self, u: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p_SL(y | theta(u), seeds), non-finite simulations)`` of the ``S`` simulations with ``seeds``
        at ``u`` ``(D,)`` (two scalars) or at each of the points ``(n, D)`` (two ``(n,)``)."""
        stats = self.simulate(u, seeds)
        num_nonfinite = self.num_simulations - finite_rows(stats).sum(-1)
        return synthetic_log_likelihood(stats, self.problem.observed, self.epsilon), num_nonfinite

    def evaluate(
        self, u: Tensor, seeds: Tensor, generator: torch.Generator | None = None, metric: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(log p(u) + log p_SL, its gradient (D,), non-finite simulations, failed)`` at ``u`` with ``seeds``.

        The synthetic likelihood's gradient is SPSA's (directions from ``generator``, along ``metric @ Delta``
        when ``metric`` is the factor ``L`` of :func:`metric_factor`, ``(D,)`` or ``(D, D)``) or autograd's;
        where it has no finite estimate only the prior's gradient is used (``failed``)."""
        u = u.detach()
        if self.gradient == "spsa":
            if metric is None:
                log_sl_fn, grad_from_w = self.log_synthetic_likelihood, (lambda g: g)
            elif metric.dim() == 1:
                log_sl_fn = lambda w, s: self.log_synthetic_likelihood(u + metric * (w - u), s)  # noqa: E731
                grad_from_w = lambda g: g / metric  # noqa: E731
            else:
                log_sl_fn = lambda w, s: self.log_synthetic_likelihood(u + (w - u) @ metric.T, s)  # noqa: E731
                grad_from_w = lambda g: torch.linalg.solve_triangular(metric.T, g[:, None], upper=True)[:, 0]  # noqa: E731
            # SPSA on w -> log p_SL(u + L (w - u)) at w = u: its slope is L^T grad, mapped back by L^-T
            estimate = spsa_grad(
                log_sl_fn,
                u,
                seeds,
                generator,
                self.num_spsa_repeats,
                self.spsa_scale,
                has_aux=True,
            )
            log_sl, sl_grad, num_nonfinite = estimate.value, grad_from_w(estimate.grad), estimate.aux
            ok = estimate.num_finite_pairs > 0
        else:
            with torch.enable_grad():
                point = u.clone().requires_grad_(True)
                log_sl, num_nonfinite = self.log_synthetic_likelihood(point, seeds)
                (sl_grad,) = torch.autograd.grad(log_sl, point, allow_unused=True) if log_sl.requires_grad else (None,)
            sl_grad = torch.zeros_like(u) if sl_grad is None else sl_grad
            log_sl = log_sl.detach()
            ok = torch.isfinite(log_sl) & torch.isfinite(sl_grad).all()
        with torch.enable_grad():
            point = u.clone().requires_grad_(True)
            log_prior = self.problem.log_prior(point[None])[0]
            (prior_grad,) = torch.autograd.grad(log_prior, point)
        grad = prior_grad + torch.where(ok, sl_grad, torch.zeros_like(sl_grad))
        return (log_prior.detach() + log_sl).detach(), grad.detach(), torch.as_tensor(num_nonfinite).long(), ~ok

    # ---- Pyro MCMCKernel interface ----------------------------------------------------
    def _reset(self) -> None:
        """Per-chain bookkeeping, cleared by ``cleanup``; the last chain's ``state`` and statistics stay."""
        self._initial_params = None
        self._warmup_steps = 0
        self._divergent_draws: list[int] = []

    @property
    def model(self) -> Callable[[], None]:
        """The prior as a Pyro model (no observed site): ArviZ's ``from_pyro`` traces it for the sites."""
        prior = self.problem.prior
        if not isinstance(prior, torch.distributions.Distribution):
            return prior

        def prior_model() -> None:
            pyro.sample(PRIOR_SITE, prior)

        return prior_model

    @property
    def initial_params(self) -> dict[str, Tensor] | None:
        """The chain's start: the prior's sites, unconstrained (set by ``MCMC(initial_params=...)``)."""
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Mapping[str, Any] | None) -> None:
        if params is not None:
            self._flat(params)  # checked now: MCMC sets it before the run
        self._initial_params = None if params is None else dict(params)

    def _flat(self, params: Mapping[str, Any]) -> Tensor:
        """The flat unconstrained ``u`` ``(D,)`` of a dict of the sites' unconstrained values (checked)."""
        shapes = dict(self.problem.unconstrained_shapes)
        expected = f"the unconstrained values of the prior's sites {shapes} (LikelihoodFreeProblem.unconstrain)"
        if not isinstance(params, Mapping) or set(params) != set(shapes):
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise ValueError(f"initial_params: expected a dict of {expected}, got {got}")
        parts = []
        for site, shape in shapes.items():
            try:
                value = torch.as_tensor(params[site], dtype=self.problem.dtype)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"initial_params: expected {expected}, got {type(params[site]).__name__} for {site!r}"
                ) from None
            if tuple(value.shape) != shape:
                raise ValueError(f"initial_params: expected {expected}, got shape {tuple(value.shape)} for {site!r}")
            parts.append(value.reshape(-1))
        u = torch.cat(parts)
        if not bool(torch.isfinite(u).all()):
            raise ValueError(f"initial_params: every entry must be finite, got {u.tolist()}")
        return u

    def _params(self, u: Tensor) -> dict[str, Tensor]:
        """The sites' unconstrained values (Pyro's ``params``) of the flat ``u`` ``(D,)``."""
        return {site: value[0].clone() for site, value in self.problem.split(u[None]).items()}

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        if args or kwargs:
            raise TypeError(
                "HABC: MCMC.run() takes no model arguments (the LikelihoodFreeProblem holds the data), "
                f"got {len(args)} positional and {sorted(kwargs)} keyword arguments"
            )
        self._warmup_steps = warmup_steps
        self._divergent_draws = []
        self.sample_stats = []
        num_simulations = self.simulations_per_gradient
        if self._initial_params is not None:
            u = self._flat(self._initial_params)
        else:
            values = pilot_values(self.problem, self.num_simulations, self.epsilon, self.num_pilot_draws)
            theta = values[PRIOR_SITE][None] if self._distribution_prior else {k: v[None] for k, v in values.items()}
            u = self.problem.unconstrain(theta)[0].detach()
            num_simulations += self.num_pilot_draws * self.num_simulations
        seeds = self.draw_seeds()
        logdensity, grad, num_nonfinite, failed = self.evaluate(u, seeds, None, metric_factor(self.inverse_mass_matrix))
        self._adapter = sghmc_warmup_adapter(
            warmup_steps, self.step_size, self.inverse_mass_matrix, self.adapt_mass_matrix
        )
        self.state = HABCState(
            i=0,
            z=u,
            momentum=sample_momentum(None, self.inverse_mass_matrix, u),
            potential_energy=-logdensity,
            logdensity_grad=grad,
            seeds=seeds,
            num_simulations=num_simulations,
            num_nonfinite=int(num_nonfinite),
            num_failed_gradients=int(failed),
            diverging=False,
            inverse_mass_matrix=self.inverse_mass_matrix,
        )
        self._initial_params = self._params(u)

    @property
    def _distribution_prior(self) -> bool:
        return isinstance(self.problem.prior, torch.distributions.Distribution)

    def _refresh_seeds(self, seeds: Tensor) -> Tensor:
        """Redraw ``num_refreshed_blocks`` of the ``B`` block seeds, chosen at random."""
        chosen = torch.randperm(self.num_seed_blocks)[: self.num_refreshed_blocks]
        seeds = seeds.clone()
        seeds[chosen] = self.draw_seeds(self.num_refreshed_blocks)
        return seeds

    def sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        state = self.state
        inverse_mass_matrix = state.inverse_mass_matrix
        metric = metric_factor(inverse_mass_matrix)
        point = SGHMCState(state.z, state.momentum, -state.potential_energy, state.logdensity_grad)
        seeds, num_nonfinite, num_failed, diverging = state.seeds, 0, 0, False
        if self.num_refreshed:
            # new seeds make a new target: its gradient at the current position starts the trajectory
            seeds = self._refresh_seeds(seeds)
            logdensity, grad, nonfinite, failed = self.evaluate(state.z, seeds, None, metric)
            point = point._replace(logdensity=logdensity, logdensity_grad=grad)
            num_nonfinite, num_failed = int(nonfinite), int(failed)

        def grad_fn(u: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            return self.evaluate(u, seeds, generator, metric)

        with pyro.validation_enabled(False):  # out-of-support values are expected on diverging steps
            for _ in range(self.num_steps):
                point, info = sghmc_step(None, point, grad_fn, inverse_mass_matrix, self.step_size, self.friction)
                num_nonfinite += int(info.num_nonfinite)
                num_failed += int(info.failed)
                diverging = diverging or bool(info.diverging)
        momentum = point.momentum
        if self.adapt_mass_matrix and state.i < self._warmup_steps:
            # the warmup draw feeds the Welford window (SGHMC has no acceptance probability: 1 is passed, unread)
            self._adapter.step(state.i, {"u": point.position}, torch.ones(()))
            adapted = self._adapter.mass_matrix_adapter.inverse_mass_matrix[METRIC_BLOCK]
            if not torch.equal(adapted, inverse_mass_matrix):
                # a new metric: momenta N(0, M_old) would carry the old scale into the new one
                inverse_mass_matrix = adapted
                momentum = sample_momentum(None, inverse_mass_matrix, momentum)
        self.state = state = HABCState(
            i=state.i + 1,
            z=point.position,
            momentum=momentum,
            potential_energy=-point.logdensity,
            logdensity_grad=point.logdensity_grad,
            seeds=seeds,
            num_simulations=state.num_simulations + self.simulations_per_iteration,
            num_nonfinite=state.num_nonfinite + num_nonfinite,
            num_failed_gradients=state.num_failed_gradients + num_failed,
            diverging=diverging,
            inverse_mass_matrix=inverse_mass_matrix,
        )
        warmup = state.i <= self._warmup_steps
        if diverging and not warmup:
            self._divergent_draws.append(state.i - 1 - self._warmup_steps)
        self.sample_stats.append(
            {
                "potential_energy": float(state.potential_energy),
                "diverging": diverging,
                "num_simulations": state.num_simulations,
                "num_nonfinite": state.num_nonfinite,
                "num_failed_gradients": state.num_failed_gradients,
                "warmup": warmup,
            }
        )
        return self._params(state.z)

    def cleanup(self) -> None:
        self._reset()

    def logging(self) -> dict[str, str]:
        if self.state is None:
            return OrderedDict()
        return OrderedDict(
            [("simulations", str(self.state.num_simulations)), ("non-finite", str(self.state.num_nonfinite))]
        )

    def diagnostics(self) -> dict[str, Any]:
        """Pyro's ``divergences`` (sampling-phase draw indices), the chain's totals ``num_simulations``,
        ``num_nonfinite``, ``num_failed_gradients`` and ``sample_stats`` (:meth:`get_sample_stats`)."""
        totals = self._totals(self.state) if self.state is not None else {}
        return {"divergences": list(self._divergent_draws), **totals, "sample_stats": self.get_sample_stats()}

    def get_sample_stats(self) -> dict[str, np.ndarray]:
        """Per-iteration statistics of the chain run last, numpy arrays ``(num_iterations,)``, warmup included."""
        if not self.sample_stats:
            return {}
        return {key: np.asarray([row[key] for row in self.sample_stats]) for key in self.sample_stats[0]}

    # ---- after the run ----------------------------------------------------------------
    @staticmethod
    def _totals(state: HABCState) -> dict[str, int]:
        names = ("num_simulations", "num_nonfinite", "num_failed_gradients")
        return {name: int(getattr(state, name)) for name in names}

    def check_counts(self, state: HABCState | Mapping[str, Any] | None = None) -> dict[str, int]:
        """Totals ``num_simulations``, ``num_nonfinite`` and ``num_failed_gradients`` of ``state``: an
        :class:`HABCState`, ``mcmc.diagnostics()`` (summed over its chains) or ``None`` (this kernel's last
        chain, ``kernel.state``); warns (:mod:`adapters.diagnostics`) when simulations were non-finite or
        gradients failed."""
        state = self.state if state is None else state
        if state is None:
            raise ValueError("state: expected an HABCState or mcmc.diagnostics(); this kernel has not run")
        if isinstance(state, HABCState):
            counts = self._totals(state)
        else:
            names = ("num_simulations", "num_nonfinite", "num_failed_gradients")
            counts = {name: int(sum(int(v) for v in dict(state[name]).values())) for name in names}
        messages = [nan_simulation_message("HABC", counts["num_nonfinite"], counts["num_simulations"])]
        if counts["num_failed_gradients"]:
            messages.append(
                f"HABC: {counts['num_failed_gradients']} gradient evaluations had no finite synthetic-likelihood "
                "gradient (too few finite simulations) and moved by the prior's gradient alone; check the "
                "simulator's NaN/inf outputs, raise num_simulations or set epsilon > 0"
            )
        warn_unreliable(*messages)
        return counts
