"""Hamiltonian ABC (HABC) as a :class:`numpyro.infer.mcmc.MCMCKernel`: SGHMC on the synthetic likelihood.

Meeds, Leenders & Welling, "Hamiltonian ABC" (UAI 2015, arXiv:1503.01916).  The target is
``p(theta) p_SL(y | theta, omega)``, Wood's synthetic likelihood of ``S`` simulations drawn with the
seeds ``omega`` (:func:`numpyro_ext.infer.abc.synthetic_log_likelihood`), on the prior's unconstrained
flat vector ``u`` ``(D,)`` (the prior's density there includes its Jacobian).  Its gradient is

* ``gradient="spsa"``: Spall's simultaneous perturbation with ``R`` Rademacher directions and scale
  ``c`` (:func:`numpyro_ext.infer.abc.spsa.spsa_grad`), ``2 R S`` simulations, the same seeds on both
  sides of every difference (common random numbers);
* ``gradient="autodiff"``: reverse-mode through a simulator that is differentiable in ``theta``
  with its key fixed, ``S`` simulations;

plus the prior's gradient by autodiff.  The chain moves by stochastic-gradient HMC with friction
(Chen, Fox & Guestrin, ICML 2014, Eq. 9; HABC's thermostat variant is not built here),

    du = M^-1 r dt,    dr = grad log pi(u) dt - C r dt + N(0, 2 C M dt),

which leaves ``pi(u) N(r; 0, M)`` invariant for any noise-free gradient; the friction ``C > 0``
(a rate, per unit of integration time, in the metric of ``M``: Chen et al.'s friction matrix is
``C M``) damps the extra heat a noisy gradient brings.  It is integrated by splitting: one
leapfrog step of ``step_size`` (:func:`numpyro_ext.infer.hmc_util.leapfrog_involution`, its final
flip undone) and then the friction and noise solved exactly, ``r <- a r + sqrt(1 - a^2) M^{1/2} xi``
with ``a = exp(-C step_size)`` (an Ornstein-Uhlenbeck step, so momenta stay ``N(0, M)`` without the
``1 - C step_size > 0`` limit of Euler's friction).  There is no Metropolis test (HABC's
stochastic-gradient samplers have none): the invariant distribution is ``pi``'s up to
``O(step_size^2)`` discretisation error plus a heating of about ``step_size V / (2 C)`` in whitened
units from a gradient noise of variance ``V``; Chen et al.'s noise estimate ``B_hat`` is taken as zero.

Persistent seeds (the paper's pseudo-marginal idea): the ``S`` simulation keys are part of the
chain's state.  Every iteration replaces ``round(seed_refresh * S)`` of them (at least one when
``seed_refresh > 0``), chosen at random, and then runs ``num_steps`` SGHMC steps with the seeds
fixed, so the gradients along a trajectory all see the same smooth ``log p_SL(y | ., omega)``.
``seed_refresh = 1`` redraws them all (the chain then feels the average gradient
``E_omega grad log p_SL``: for Gaussian statistics with ``epsilon = 0`` this is the posterior whose
likelihood precision is inflated by ``(S - 1) / (S - d - 2)``, see :mod:`numpyro_ext.infer.abc.avabc`);
``seed_refresh = 0`` keeps them (the chain samples the posterior of those ``S`` seeds).  Either
tends to the synthetic-likelihood posterior as ``S`` grows.

Costs (per chain, counted in the state's ``num_simulations``): a gradient is ``2 R S`` (SPSA) or
``S`` (autodiff) simulations; an iteration is ``num_steps`` gradients plus one after the seeds'
refresh (none when ``seed_refresh = 0``); initialisation adds one gradient and, without
``init_params``, ``num_pilot_draws * S`` simulations scoring prior draws for a start
(:func:`numpyro_ext.infer.abc.avabc.pilot_values`).  Non-finite simulations are left out of the
synthetic likelihood and counted (``num_nonfinite``); a gradient with no finite estimate falls back
to the prior's gradient (counted in ``num_failed_gradients``: a chain started where every
simulation fails drifts out by the prior); a step that leaves the finite reals, or goes from a
finite log density to none, is undone and its momentum redrawn (``diverging``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.hmc_util import IntegratorState as NumPyroIntegratorState
from numpyro.infer.mcmc import MCMCKernel

from adapters.abc import HABC_GRADIENTS, check_habc_settings, check_sghmc_inverse_mass_matrix, nan_simulation_message
from adapters.diagnostics import warn_unreliable
from numpyro_ext.infer.abc.avabc import check_differentiable_simulator, check_simulation_settings, pilot_values
from numpyro_ext.infer.abc.likelihoods import synthetic_log_likelihood
from numpyro_ext.infer.abc.problem import PRIOR_SITE, LikelihoodFreeProblem, finite_rows
from numpyro_ext.infer.abc.spsa import spsa_grad
from numpyro_ext.infer.hmc_util import (
    IntegratorState,
    KernelTransition,
    adapt_in_warmup,
    leapfrog_involution,
    momentum_from_noise,
    nuts_warmup_adapter,
    sample_momentum,
)

__all__ = ["HABC", "HABCState", "SGHMCInfo", "SGHMCState", "metric_factor", "sghmc_step", "sghmc_warmup_adapter"]

Array = jax.Array
GRADIENTS = HABC_GRADIENTS

#: ``grad_fn(position, key) -> (log density, its gradient (D,), non-finite simulations, failed)``
GradientFn = Callable[[Array, Array], tuple[Array, Array, Array, Array]]


# ---------------------------------------------------------------------------------------
# Math core: one SGHMC step
# ---------------------------------------------------------------------------------------
class SGHMCState(NamedTuple):
    """A point of SGHMC: ``position`` and ``momentum`` ``(D,)``, the log density estimate and its
    gradient ``(D,)`` at the position (from the last gradient evaluation)."""

    position: Array
    momentum: Array
    logdensity: Array
    logdensity_grad: Array


class SGHMCInfo(NamedTuple):
    """What one :func:`sghmc_step` spent and met: ``num_nonfinite`` simulations of its gradient
    evaluation that were not finite, ``failed`` whether that gradient had no finite estimate,
    ``diverging`` whether the step left the finite reals (and was undone)."""

    num_nonfinite: Array
    failed: Array
    diverging: Array


def sghmc_step(
    rng_key: Array,
    state: SGHMCState,
    grad_fn: GradientFn,
    inverse_mass_matrix: Array,
    step_size: float | Array,
    friction: float | Array,
) -> tuple[SGHMCState, SGHMCInfo]:
    """One step of SGHMC with friction (Chen et al. 2014, Eq. 9), split as leapfrog then exact friction.

    The leapfrog step (half kick with the stored gradient, drift, half kick with a new gradient
    ``grad_fn(position, key)``) is :func:`~numpyro_ext.infer.hmc_util.leapfrog_involution` with one
    step; the friction and its noise are the exact Ornstein-Uhlenbeck solution over ``step_size``,
    ``r <- a r + sqrt(1 - a^2) M^{1/2} xi``, ``a = exp(-friction * step_size)``.  A step whose position
    or momentum is not finite, or whose log density is not finite where the start's was, is undone:
    the state keeps its position and gets a fresh ``N(0, M)`` momentum (``diverging``).

    Args:
        rng_key: PRNG key of the gradient's randomness and of the friction noise.
        state: the :class:`SGHMCState` (``(D,)`` position and momentum).
        grad_fn: ``grad_fn(position, key) -> (logdensity, grad (D,), num_nonfinite, failed)``.
        inverse_mass_matrix: ``M^-1``, ``(D,)`` diagonal or ``(D, D)`` dense.
        step_size: the integration step.
        friction: ``C > 0``, the momentum's damping rate.

    Returns:
        The new :class:`SGHMCState` and :class:`SGHMCInfo`.
    """
    grad_key, noise_key = jax.random.split(rng_key)

    # The leapfrog only carries the log density slot from one gradient evaluation to the next, so
    # it also carries that evaluation's counts, as one array: (log density, non-finite simulations, failed).
    dtype = state.position.dtype

    def value_and_grad(position: Array) -> tuple[Array, Array]:
        value, grad, num_nonfinite, failed = grad_fn(position, grad_key)
        counts = [jnp.asarray(value, dtype), jnp.asarray(num_nonfinite, dtype), jnp.asarray(failed, dtype)]
        return jnp.stack(counts), grad

    start = IntegratorState(
        state.position,
        state.momentum,
        jnp.stack([jnp.asarray(state.logdensity, dtype), jnp.zeros((), dtype), jnp.zeros((), dtype)]),
        state.logdensity_grad,
    )
    end, _ = leapfrog_involution(None, inverse_mass_matrix, step_size, 1, value_and_grad)(start)
    logdensity = end.logdensity[0]
    num_nonfinite, failed = end.logdensity[1].astype(jnp.int32), end.logdensity[2] > 0
    noise = momentum_from_noise(
        jax.random.normal(noise_key, state.momentum.shape, state.momentum.dtype), inverse_mass_matrix
    )
    decay = jnp.exp(-friction * step_size)
    # -end.momentum: leapfrog_involution flips the momentum for a Metropolis test; SGHMC keeps going
    momentum = decay * -end.momentum + jnp.sqrt(1.0 - decay**2) * noise
    # a step into zero density (from a point that had some) is undone like one that leaves the reals: without
    # a Metropolis test nothing else would keep the chain out of a region where every simulation fails
    enters_zero = jnp.isfinite(state.logdensity) & ~jnp.isfinite(logdensity)
    ok = jnp.all(jnp.isfinite(end.position)) & jnp.all(jnp.isfinite(momentum)) & ~enters_zero
    new = SGHMCState(
        jnp.where(ok, end.position, state.position),
        jnp.where(ok, momentum, noise),
        jnp.where(ok, logdensity, state.logdensity),
        jnp.where(ok, end.logdensity_grad, state.logdensity_grad),
    )
    return new, SGHMCInfo(num_nonfinite, failed, ~ok)


def metric_factor(inverse_mass_matrix: Array) -> Array:
    """``L`` with ``L L^T = M^-1``: ``sqrt(M^-1)`` ``(D,)`` for a diagonal, the Cholesky factor ``(D, D)`` for a
    dense one.  ``u = u0 + L w`` whitens the metric: SGHMC with ``M^-1`` is SGHMC with the identity on ``w``."""
    if jnp.ndim(inverse_mass_matrix) == 1:
        return jnp.sqrt(inverse_mass_matrix)
    return jnp.linalg.cholesky(inverse_mass_matrix)


def sghmc_warmup_adapter(num_warmup: int, adapt_mass_matrix: bool, dense_mass: bool) -> tuple[Callable, Callable]:
    """NumPyro's warmup adapter (:func:`~numpyro_ext.infer.hmc_util.nuts_warmup_adapter`) with the step size fixed:
    ``(init, update)``; ``update(t, accept_prob, z_info, state)`` feeds warmup draw ``t`` (from 0) to Welford's
    (co)variance in Stan's windows and sets ``state.inverse_mass_matrix`` to the window's regularised estimate
    ``n / (n + 5) Var + 1e-3 * 5 / (n + 5)`` at each window's end (none with fewer than 20 warmup draws: Stan's
    schedule is then one fast window).  ``accept_prob`` is not used (SGHMC has no accept step, hence no dual
    averaging of the step size)."""
    # the potential is only read by the step-size search, which adapt_step_size=False never runs
    return nuts_warmup_adapter(_no_potential, num_warmup, False, adapt_mass_matrix, dense_mass, 0.8)


def _no_potential(position: Array) -> Array:
    raise RuntimeError("HABC's warmup adapter does not search a step size")


# ---------------------------------------------------------------------------------------
# NumPyro shell
# ---------------------------------------------------------------------------------------
class HABCState(NamedTuple):
    """State of :class:`HABC` for ``numpyro.infer.MCMC`` (one chain; a leading chain axis when vectorized).

    ``z``: the unconstrained position ``u`` ``(D,)``; ``momentum`` ``(D,)``; ``potential_energy``:
    ``-(log p(u) + log p_SL)`` as last estimated (SPSA: from the perturbed evaluations, exact to
    ``O(c^2)``); ``logdensity_grad`` ``(D,)``; ``seeds``: the ``S`` persistent simulation keys
    ``(S, 2)``; ``num_simulations``, ``num_nonfinite``, ``num_failed_gradients``: totals since
    initialisation; ``diverging``: whether a step of this iteration was undone; ``adapt_state``: NumPyro's
    ``HMCAdaptState`` (its ``inverse_mass_matrix`` is the metric in use, adapted during warmup); ``rng_key``.
    """

    i: Array
    z: Array
    momentum: Array
    potential_energy: Array
    logdensity_grad: Array
    seeds: Array
    num_simulations: Array
    num_nonfinite: Array
    num_failed_gradients: Array
    diverging: Array
    adapt_state: Any
    rng_key: Array


def _raw_key(key: Array) -> Array:
    """A raw ``uint32`` key (array) from a raw or typed PRNG key."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


class HABC(MCMCKernel):
    """Hamiltonian ABC (Meeds, Leenders & Welling 2015) for :class:`numpyro.infer.MCMC`.

    ``MCMC(HABC(problem, ...), num_warmup=..., num_samples=...).run(rng_key)``; ``get_samples()``
    returns the prior's constrained sites, ``az.from_numpyro`` reads the chain (``lp`` is minus the
    state's ``potential_energy``).  Warmup iterations are run and discarded; with ``adapt_mass_matrix``
    they also adapt the metric: NumPyro's Welford (co)variance of the warmup draws in Stan's windows
    (:func:`sghmc_warmup_adapter`; a 15% start buffer, doubling middle windows, a 10% end buffer, so at
    least 20 warmup iterations; the momentum is redrawn from ``N(0, M)`` when ``M`` changes).  The step
    size is not adapted: SGHMC has no accept step to steer dual averaging by.  It and the SPSA
    perturbation are measured in the metric instead: the velocity ``M^-1 r`` is ``N(0, M^-1)`` and SPSA
    perturbs ``u`` along ``L Delta`` (``L L^T = M^-1``, :func:`metric_factor`) and maps the slope back by
    ``L^-T``, so with ``M^-1`` about the posterior covariance ``step_size`` and ``spsa_scale`` are
    fractions of the posterior sd on every coordinate, and SPSA's noise in whitened units is
    ``sum_{j != i} (L^T g)_j^2 / R`` (about ``D / R`` near the mode) whatever the coordinates' scales.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
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
        num_pilot_draws: prior draws scored to start each chain when ``MCMC.run`` gets no ``init_params``.
        adapt_mass_matrix: whether warmup adapts ``M^-1`` to the warmup draws' (co)variance (dense when
            ``inverse_mass_matrix`` is dense, diagonal otherwise).  Off by default: on the sbibm tasks
            at 10^4 simulations, with the step size then a fraction of a posterior sd, the chains moved
            slower (C2ST worse on three of four tasks; docs/abc.rst).
    """

    sample_field = "z"

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
            raise TypeError(f"problem: expected a numpyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
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
        per_gradient = 2 * self.num_spsa_repeats if self.gradient == "spsa" else 1
        #: simulations of one gradient evaluation and of one MCMC iteration
        self.simulations_per_gradient = per_gradient * self.num_simulations
        self.simulations_per_iteration = self.simulations_per_gradient * (
            self.num_steps + (1 if self.num_refreshed else 0)
        )
        self._observed = jnp.asarray(problem.observed, dtype=jnp.result_type(float))
        self._vectorized = False
        self._num_warmup = 0
        self._adapter_update: Callable | None = None

    def _check_inverse_mass_matrix(self, value: Any) -> Array:
        array = check_sghmc_inverse_mass_matrix(value, self.problem.dim)
        if array is None:
            return jnp.ones(self.problem.dim, dtype=jnp.result_type(float))
        return jnp.asarray(array, dtype=jnp.result_type(float))

    # ---- the target -------------------------------------------------------------------
    def log_synthetic_likelihood(self, u: Array, seeds: Array) -> tuple[Array, Array]:
        """``(log p_SL(y | theta(u), seeds), non-finite simulations)`` of the ``S`` simulations with ``seeds``."""
        stats = jax.vmap(self.problem.simulate, in_axes=(None, 0))(u, seeds)
        num_nonfinite = (self.num_simulations - jnp.sum(finite_rows(stats))).astype(jnp.int32)
        return synthetic_log_likelihood(stats, self._observed, self.epsilon), num_nonfinite

    def evaluate(
        self, u: Array, seeds: Array, rng_key: Array, metric: Array | None = None
    ) -> tuple[Array, Array, Array, Array]:
        """``(log p(u) + log p_SL, its gradient (D,), non-finite simulations, failed)`` at ``u`` with ``seeds``.

        The synthetic likelihood's gradient is SPSA's (perturbations from ``rng_key``, along ``metric @ Delta``
        when ``metric`` is the factor ``L`` of :func:`metric_factor`, ``(D,)`` or ``(D, D)``) or autodiff's;
        where it has no finite estimate only the prior's gradient is used (``failed``)."""
        if self.gradient == "spsa":
            if metric is None:
                to_u, grad_from_w = (lambda w: w), (lambda g: g)
            elif jnp.ndim(metric) == 1:
                to_u, grad_from_w = (lambda w: u + metric * (w - u)), (lambda g: g / metric)
            else:
                to_u = lambda w: u + metric @ (w - u)  # noqa: E731
                grad_from_w = lambda g: jax.scipy.linalg.solve_triangular(metric, g, lower=True, trans="T")  # noqa: E731
            # SPSA on w -> log p_SL(u + L (w - u)) at w = u: its slope is L^T grad, mapped back by L^-T
            estimate = spsa_grad(
                lambda w, s: self.log_synthetic_likelihood(to_u(w), s),
                u,
                seeds,
                rng_key,
                self.num_spsa_repeats,
                self.spsa_scale,
                has_aux=True,
            )
            log_sl, sl_grad, num_nonfinite = estimate.value, grad_from_w(estimate.grad), estimate.aux
            ok = estimate.num_finite_pairs > 0
        else:
            (log_sl, num_nonfinite), sl_grad = jax.value_and_grad(self.log_synthetic_likelihood, has_aux=True)(u, seeds)
            ok = jnp.isfinite(log_sl) & jnp.all(jnp.isfinite(sl_grad))
        log_prior, prior_grad = jax.value_and_grad(self.problem.log_prior)(u)
        grad = prior_grad + jnp.where(ok, sl_grad, 0.0)
        return log_prior + log_sl, grad, num_nonfinite, ~ok

    # ---- MCMCKernel interface ---------------------------------------------------------
    @property
    def model(self):
        # the prior model: ArviZ's from_numpyro traces it for the sites' structure (it has no observed site)
        return self.problem.prior_model

    @property
    def default_fields(self) -> tuple[str, ...]:
        return ("z", "potential_energy", "diverging")

    def get_diagnostics_str(self, state: HABCState) -> str:
        return f"{int(state.num_simulations)} simulations, {int(state.num_nonfinite)} non-finite"

    def postprocess_fn(self, model_args, model_kwargs):
        problem = self.problem

        def constrain(u: Array) -> dict[str, Array]:
            flat = problem.flat_theta(u)
            return {site: flat[a:b].reshape(shape) for site, (shape, a, b) in problem.sites.items()}

        return constrain

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs) -> HABCState:
        rng_key = _raw_key(rng_key)
        batched = rng_key.ndim > 1
        self._vectorized = batched
        self._num_warmup = int(num_warmup)
        dense = self.inverse_mass_matrix.ndim == 2
        self._adapter_init, self._adapter_update = sghmc_warmup_adapter(self._num_warmup, self.adapt_mass_matrix, dense)
        keys = rng_key if batched else rng_key[None]
        starts = self._check_init_params(init_params, keys.shape[0], batched)
        # all chains in one compiled call (the pilot's scoring included)
        if starts is None:
            states = jax.jit(jax.vmap(lambda key: self._init_one(key, None)))(keys)
        else:
            states = jax.jit(jax.vmap(self._init_one))(keys, starts)
        return states if batched else jax.tree_util.tree_map(lambda leaf: leaf[0], states)

    def _check_init_params(self, init_params: Any, num_chains: int, batched: bool) -> Array | None:
        if init_params is None:
            return None
        dim = self.problem.dim
        expected = (num_chains, dim) if batched else (dim,)
        try:
            array = jnp.asarray(init_params, dtype=jnp.result_type(float))
        except (TypeError, ValueError):
            raise TypeError(
                f"init_params: expected the unconstrained flat vector u of shape {expected} "
                f"(LikelihoodFreeProblem.unconstrain), got {type(init_params).__name__}"
            ) from None
        if array.shape != expected:
            raise ValueError(
                f"init_params: expected the unconstrained flat vector u of shape {expected} "
                f"(LikelihoodFreeProblem.unconstrain), got shape {array.shape}"
            )
        if not bool(jnp.all(jnp.isfinite(array))):
            raise ValueError(f"init_params: every entry must be finite, got {np.asarray(array)}")
        return array if batched else array[None]

    def _init_one(self, rng_key: Array, u: Array | None) -> HABCState:
        key, pilot_key, seed_key, grad_key, momentum_key = jax.random.split(rng_key, 5)
        num_simulations = self.simulations_per_gradient
        if u is None:
            values = pilot_values(self.problem, pilot_key, self.num_simulations, self.epsilon, self.num_pilot_draws)
            theta = values[PRIOR_SITE] if _is_distribution(self) else values
            u = self.problem.unconstrain(theta)
            num_simulations += self.num_pilot_draws * self.num_simulations
        seeds = jax.random.split(seed_key, self.num_simulations)
        logdensity, grad, num_nonfinite, failed = self.evaluate(
            u, seeds, grad_key, metric_factor(self.inverse_mass_matrix)
        )
        adapt_state = self._adapter_init(
            NumPyroIntegratorState(u, None, -logdensity, -grad),
            key,
            self.step_size,
            inverse_mass_matrix=self.inverse_mass_matrix,
            mass_matrix_size=self.problem.dim,
        )
        integer = jnp.asarray(0).dtype
        return HABCState(
            i=jnp.zeros((), jnp.int32),
            z=u,
            momentum=sample_momentum(momentum_key, self.inverse_mass_matrix, u),
            potential_energy=-logdensity,
            logdensity_grad=grad,
            seeds=seeds,
            num_simulations=jnp.asarray(num_simulations, integer),
            num_nonfinite=num_nonfinite.astype(integer),
            num_failed_gradients=failed.astype(integer),
            diverging=jnp.zeros((), bool),
            adapt_state=adapt_state,
            rng_key=key,
        )

    def sample(self, state: HABCState, model_args, model_kwargs) -> HABCState:
        if self._vectorized:  # chain_method="vectorized": init got a batch of keys
            return jax.vmap(self._sample_one)(state)
        return self._sample_one(state)

    def _refresh_seeds(self, rng_key: Array, seeds: Array) -> Array:
        """Replace ``num_refreshed`` of the ``S`` seeds, chosen at random, by fresh keys."""
        choice_key, new_key = jax.random.split(rng_key)
        rank = jax.random.permutation(choice_key, self.num_simulations)
        replace = rank < self.num_refreshed
        return jnp.where(replace[:, None], jax.random.split(new_key, self.num_simulations), seeds)

    def _sample_one(self, state: HABCState) -> HABCState:
        key, refresh_key, grad_key, steps_key, momentum_key = jax.random.split(state.rng_key, 5)
        integer = state.num_nonfinite.dtype
        inverse_mass_matrix = state.adapt_state.inverse_mass_matrix
        metric = metric_factor(inverse_mass_matrix)
        point = SGHMCState(state.z, state.momentum, -state.potential_energy, state.logdensity_grad)
        seeds, num_nonfinite, num_failed = state.seeds, jnp.zeros((), integer), jnp.zeros((), integer)
        if self.num_refreshed:
            # new seeds make a new target: its gradient at the current position starts the trajectory
            seeds = self._refresh_seeds(refresh_key, seeds)
            logdensity, grad, nonfinite, failed = self.evaluate(state.z, seeds, grad_key, metric)
            point = point._replace(logdensity=logdensity, logdensity_grad=grad)
            num_nonfinite, num_failed = nonfinite.astype(integer), failed.astype(integer)
        step = functools.partial(
            sghmc_step,
            grad_fn=lambda u, k: self.evaluate(u, seeds, k, metric),
            inverse_mass_matrix=inverse_mass_matrix,
            step_size=self.step_size,
            friction=self.friction,
        )
        point, info = jax.lax.scan(lambda p, k: step(k, p), point, jax.random.split(steps_key, self.num_steps))
        adapt_state, momentum = state.adapt_state, point.momentum
        if self.adapt_mass_matrix and self._num_warmup > 0:
            # the warmup draw feeds the Welford window (SGHMC has no acceptance probability: 1 is passed, unread)
            one, zero = jnp.ones((), point.logdensity.dtype), jnp.zeros((), jnp.int32)
            draw = KernelTransition(
                position=point.position,
                potential_energy=-point.logdensity,
                potential_grad=-point.logdensity_grad,
                energy=-point.logdensity,
                adapt_accept_prob=one,
                accept_prob=one,
                diverging=jnp.any(info.diverging),
                num_steps=zero,
                num_grad_evals=zero,
                stage=zero,
            )
            adapt_state = adapt_in_warmup(self._adapter_update, state.i, self._num_warmup, draw, adapt_state)
            # a new metric: momenta N(0, M_old) would carry the old scale into the new one for ~1 / (C step) steps
            changed = jnp.any(adapt_state.inverse_mass_matrix != inverse_mass_matrix)
            fresh = sample_momentum(momentum_key, adapt_state.inverse_mass_matrix, point.momentum)
            momentum = jnp.where(changed, fresh, momentum)
        return HABCState(
            i=state.i + 1,
            z=point.position,
            momentum=momentum,
            potential_energy=-point.logdensity,
            logdensity_grad=point.logdensity_grad,
            seeds=seeds,
            num_simulations=state.num_simulations + self.simulations_per_iteration,
            num_nonfinite=state.num_nonfinite + num_nonfinite + jnp.sum(info.num_nonfinite).astype(integer),
            num_failed_gradients=state.num_failed_gradients + num_failed + jnp.sum(info.failed).astype(integer),
            diverging=jnp.any(info.diverging),
            adapt_state=adapt_state,
            rng_key=key,
        )

    # ---- after the run ----------------------------------------------------------------
    def check_counts(self, state: HABCState) -> dict[str, int]:
        """Totals over the chains of a final state (``mcmc.last_state``): ``num_simulations``,
        ``num_nonfinite`` and ``num_failed_gradients``; warns (:mod:`adapters.diagnostics`) when
        simulations were non-finite or gradients failed."""
        counts = {
            name: int(np.sum(np.asarray(getattr(state, name))))
            for name in ("num_simulations", "num_nonfinite", "num_failed_gradients")
        }
        messages = [nan_simulation_message("HABC", counts["num_nonfinite"], counts["num_simulations"])]
        if counts["num_failed_gradients"]:
            messages.append(
                f"HABC: {counts['num_failed_gradients']} gradient evaluations had no finite synthetic-likelihood "
                "gradient (too few finite simulations) and moved by the prior's gradient alone; check the "
                "simulator's NaN/inf outputs, raise num_simulations or set epsilon > 0"
            )
        warn_unreliable(*messages)
        return counts


def _is_distribution(kernel: HABC) -> bool:
    import numpyro.distributions as dist

    return isinstance(kernel.problem.prior, dist.Distribution)
