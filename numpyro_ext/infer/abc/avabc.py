"""Automatic variational ABC (AV-ABC) in NumPyro: the synthetic-likelihood ELBO, trained by NumPyro's ``SVI``.

Moreno, Adel, Meeds, Rue & Welling, "Automatic Variational ABC" (2016, arXiv:1606.08549).  Two
reparameterisations make the ELBO of a simulator model differentiable:

* ``q(theta)`` is reparameterised, ``theta = g(phi, nu)``, ``nu ~ p(nu)`` (every NumPyro autoguide);
* the simulator is reparameterised, ``x = f(theta, omega)``: its random numbers ``omega`` (here the
  PRNG keys of ``simulator(theta, key)``) are inputs, held fixed while the gradient is taken.

The likelihood is Wood's synthetic likelihood of ``S`` simulations at each ``theta`` draw,
``p_SL(y | theta) = N(y; mu_hat(theta, omega), Sigma_hat(theta, omega) + epsilon^2 I)``
(:func:`numpyro_ext.infer.abc.synthetic_log_likelihood`), and the objective is

    L(phi) = E_nu E_omega [ log p(theta) + log p_SL(y | theta) - log q(theta | phi) ],   theta = g(phi, nu),

estimated with ``num_particles`` draws of ``nu`` and one draw of the ``S`` keys ``omega`` per step
and maximised by stochastic gradients.  :func:`synthetic_likelihood_model` writes this as a NumPyro
model (the prior's sites plus a ``numpyro.factor``), so ``SVI(model, guide, optimizer, Trace_ELBO())``
*is* AV-ABC with any guide and any optax optimizer (``numpyro_ext.optim.swan``, ``optax.adam``, ...);
:class:`AVABC` is the shell that runs it and returns an :class:`adapters.abc.ABCResult`.

What the optimum is: the expectation over ``omega`` is outside the logarithm, so ``q`` fits
``p(theta) exp(E_omega log p_SL(y | theta))``, not the synthetic-likelihood posterior at ``S = inf``.
For Gaussian simulations with ``epsilon = 0`` this is again Gaussian in the data: ``E[Sigma_hat^-1] =
Sigma^-1 (S - 1) / (S - d - 2)`` (inverse Wishart), so the fitted posterior is the one whose likelihood
precision is inflated by ``(S - 1) / (S - d - 2)``; the bias vanishes as ``S`` grows.

Where the guide starts matters: far from the synthetic likelihood's mode the ELBO's gradient is
orders of magnitude larger than near it (on the toy of the tests, a rate 10 times too large gives a
loss of 3e4 against 1 at the mode), and Adam's second-moment average (memory ``1 / (1 - b2)`` =
1000 steps) keeps the steps small long after the gradients have shrunk, so an autoguide started
from NumPyro's default (uniform in ``(-2, 2)`` on the unconstrained scale) creeps towards the mode
and stops far from it when the step size decays.  :func:`pilot_values` starts it instead at the best
of a few prior draws by ``log p(theta) + log p_SL(y | theta)`` (the same ``S`` keys at every draw).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapters.abc import ABCResult
from adapters.diagnostics import warn_unreliable
from adapters.validation import check_non_negative, check_positive_int
from numpyro_ext.infer.abc.likelihoods import synthetic_log_likelihood
from numpyro_ext.infer.abc.problem import PRIOR_SITE, LikelihoodFreeProblem

__all__ = ["AVABC", "check_differentiable_simulator", "pilot_values", "synthetic_likelihood_model"]

FACTOR_SITE = "synthetic_log_likelihood"  # the numpyro.factor site of the model
NUM_GRADIENT_CHECKS = 4  # prior draws at which the simulator's derivative is checked
NUM_PILOT_DRAWS = 100  # prior draws scored to start an autoguide (pilot_values)


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


def check_differentiable_simulator(problem: LikelihoodFreeProblem, rng_key: jax.Array | None = None) -> None:
    """Raise a ``ValueError`` unless the problem's statistics are differentiable in ``theta``.

    AV-ABC differentiates ``s(f(theta, omega))`` with ``omega`` fixed.  At ``NUM_GRADIENT_CHECKS``
    prior draws (one key each) the Jacobian ``d s / d u`` is computed with forward-mode autodiff:
    differentiation must not fail, and at some draw with finite statistics it must be finite and
    not identically zero (a simulator that rounds, draws integers, or calls non-JAX code gives zero
    or no derivatives).
    """
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    u = problem.sample_prior(key, NUM_GRADIENT_CHECKS)
    keys = jax.random.split(jax.random.fold_in(key, 1), NUM_GRADIENT_CHECKS)
    try:
        # one forward-mode pass per draw gives the statistics and their Jacobian (D, d) together
        jac, stats = jax.vmap(lambda u_i, k: jax.jacfwd(lambda v: (problem.simulate(v, k),) * 2, has_aux=True)(u_i))(
            u, keys
        )
    except Exception as error:  # noqa: BLE001 -- any failure here is the simulator's, named below
        raise ValueError(
            "simulator: AV-ABC differentiates the simulated statistics with respect to theta (the random numbers held "
            f"fixed), but differentiating the simulator failed ({type(error).__name__}: {error}); write it with "
            "reparameterised JAX operations (e.g. loc + scale * jax.random.normal(key))"
        ) from error
    finite = np.all(np.isfinite(np.asarray(stats)), axis=-1)
    if not finite.any():
        return  # nothing to judge: non-finite simulations are the likelihood's business
    jac = np.asarray(jac)[finite]
    usable = np.all(np.isfinite(jac), axis=(-2, -1)) & np.any(jac != 0.0, axis=(-2, -1))
    if not usable.any():
        raise ValueError(
            "simulator: AV-ABC needs statistics that are differentiable in theta (the random numbers held fixed), but "
            f"their derivative is zero or not finite at {int(finite.sum())} prior draws; a simulator that rounds, "
            "draws integers (e.g. jax.random.poisson) or thresholds gives no gradient: use OMC with finite "
            "differences, rejection ABC or SMC-ABC instead"
        )


def _as_key(seed: Any) -> jax.Array:
    """A PRNG key from an int seed or a key (raw ``(2,)`` uint32 or typed)."""
    if jnp.ndim(seed) == 0 and jnp.issubdtype(jnp.asarray(seed).dtype, jnp.integer):
        return jax.random.PRNGKey(seed)
    return seed


def pilot_values(
    problem: LikelihoodFreeProblem,
    rng_key: jax.Array,
    num_simulations: int = 50,
    epsilon: float = 0.0,
    num_draws: int = NUM_PILOT_DRAWS,
) -> dict[str, jax.Array]:
    """A start for a guide: the best of ``num_draws`` prior draws by ``log p(u) + log p_SL(y | u)``.

    Every draw is scored with the same ``S = num_simulations`` keys (common random numbers, so the
    ranking is not decided by which draw got lucky simulations), ``num_draws x S`` simulations in all.
    Draws whose score is not finite (NaN/inf simulations, a singular covariance) rank last.  Returns
    the constrained ``{site: value}`` of the best draw, the format of ``numpyro.infer.init_to_value``:
    ``AutoNormal(model, init_loc_fn=init_to_value(values=pilot_values(problem, key)))`` starts plain
    ``SVI`` where :class:`AVABC` starts it.

    Args:
        problem: the :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`.
        rng_key: PRNG key of the prior draws and the simulations.
        num_simulations: ``S`` simulations per draw.
        epsilon: the ridge of the synthetic likelihood.
        num_draws: prior draws to score.
    """
    num_simulations, epsilon = check_simulation_settings(problem, num_simulations, epsilon)
    num_draws = check_positive_int("num_draws", num_draws)
    prior_key, simulation_key = jax.random.split(_as_key(rng_key))
    u = problem.sample_prior(prior_key, num_draws)  # (num_draws, D)
    keys = jax.random.split(simulation_key, num_simulations)
    observed = jnp.asarray(problem.observed, dtype=jnp.result_type(float))

    def score(u_i: jax.Array) -> jax.Array:
        stats = jax.vmap(problem.simulate, in_axes=(None, 0))(u_i, keys)  # (S, d)
        return problem.log_prior(u_i) + synthetic_log_likelihood(stats, observed, epsilon)

    scores = jax.jit(jax.vmap(score))(u)
    best = u[jnp.argmax(jnp.where(jnp.isfinite(scores), scores, -jnp.inf))]
    theta = problem.theta(best)
    return {PRIOR_SITE: theta} if isinstance(problem.prior, _distribution_type()) else dict(theta)


def _distribution_type() -> type:
    import numpyro.distributions as dist

    return dist.Distribution


def synthetic_likelihood_model(
    problem: LikelihoodFreeProblem,
    num_simulations: int = 50,
    epsilon: float = 0.0,
    check_gradient: bool = True,
) -> Callable[..., None]:
    """The AV-ABC target as a NumPyro model: ``SVI(model, guide, optimizer, Trace_ELBO())`` is AV-ABC.

    The model samples the prior's sites (``theta`` for a Distribution prior, the prior model's sites
    otherwise), runs ``S = num_simulations`` simulations at that ``theta`` and adds
    ``numpyro.factor("synthetic_log_likelihood", log p_SL(y | theta))`` (ridge ``epsilon^2 I``).

    Random numbers: ``model(simulation_seed=None)``.  With no seed, the ``S`` keys are split from
    ``numpyro.prng_key()``: fresh at every model run, so every ELBO particle of every step sees
    new simulations, fixed while that step's gradient is taken (the reparameterised simulator).
    With ``simulation_seed`` (an int or a PRNG key) the ``S`` keys come from it: :class:`AVABC` passes
    one per step, so the particles of a step share their ``S`` random streams (common random numbers
    across the ``theta`` draws of a step, as in Moreno et al.'s algorithm), and a fixed seed turns the
    objective into a deterministic function of the guide's parameters.

    Args:
        problem: the :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem`; its simulator must be
            differentiable in ``theta`` with the key fixed.
        num_simulations: ``S`` simulations per ``theta`` draw (``S > d`` when ``epsilon = 0``).
        epsilon: the ridge ``epsilon >= 0`` added as ``epsilon^2 I`` to the simulations' covariance.
        check_gradient: check at a few prior draws that the simulator gives finite, nonzero
            derivatives (:func:`check_differentiable_simulator`).
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers

    if not isinstance(problem, LikelihoodFreeProblem):
        raise TypeError(f"problem: expected a numpyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
    num_simulations, epsilon = check_simulation_settings(problem, num_simulations, epsilon)
    if check_gradient:
        check_differentiable_simulator(problem)
    observed = jnp.asarray(problem.observed, dtype=jnp.result_type(float))
    distribution_prior = isinstance(problem.prior, dist.Distribution)

    # One jitted function from the prior's values to log p_SL: the model also runs eagerly (an
    # autoguide's set-up traces it op by op), where one compilation replaces one per primitive.
    @jax.jit
    def log_likelihood(values: dict, key: jax.Array) -> jax.Array:
        # The problem's maps run the prior model internally: hide those runs from SVI's handlers.
        with handlers.block():
            u = problem.unconstrain(values[PRIOR_SITE] if distribution_prior else values)
            stats = jax.vmap(problem.simulate, in_axes=(None, 0))(u, jax.random.split(key, num_simulations))
        return synthetic_log_likelihood(stats, observed, epsilon)

    def model(simulation_seed: Any = None) -> None:
        with handlers.trace() as prior_trace:
            problem.prior_model()
        values = {
            name: site["value"]
            for name, site in prior_trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        key = numpyro.prng_key() if simulation_seed is None else _as_key(simulation_seed)
        if key is None:  # traced without a seed handler (e.g. to read the model's structure)
            key = jax.random.PRNGKey(0)
        numpyro.factor(FACTOR_SITE, log_likelihood(values, key))

    return model


def _default_optimizer(num_steps: int) -> optax.GradientTransformation:
    """Adam with its step decaying from 0.05 to 0.001 over the run (large steps while the scale of
    ``q`` shrinks towards the posterior's, then small ones that average the simulations' noise
    away), skipping a step whose gradient is not finite."""
    return optax.apply_if_finite(optax.adam(optax.exponential_decay(0.05, num_steps, 0.02)), max_consecutive_errors=50)


def _takes_init_loc_fn(guide: Any) -> bool:
    """Whether an autoguide class (or a partial of one that leaves it unset) takes ``init_loc_fn``."""
    if isinstance(guide, functools.partial):
        return "init_loc_fn" not in guide.keywords and _takes_init_loc_fn(guide.func)
    return "init_loc_fn" in inspect.signature(guide).parameters


class AVABC:
    """Automatic variational ABC (Moreno et al. 2016): fit ``q(theta)`` by SVI on the synthetic-likelihood ELBO.

    Args:
        problem: a :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem` whose simulator is
            differentiable in ``theta`` with its key fixed.
        guide: ``None`` (``AutoMultivariateNormal``: a full-rank Gaussian on the unconstrained
            ``theta``), an autoguide class or ``functools.partial`` of one (called with the model,
            e.g. ``AutoNormal``), or a guide function taking the model's argument ``simulation_seed``.
            An autoguide is built anew by every ``run``, started at :func:`pilot_values` (unless the
            partial sets its own ``init_loc_fn``); a guide function starts where it says.
        num_simulations: ``S`` simulations at each ``theta`` draw (``S > d`` when ``epsilon = 0``).
        epsilon: ridge ``epsilon >= 0`` of the synthetic likelihood's covariance.
        optimizer: an optax ``GradientTransformation`` (``numpyro_ext.optim.swan(1e-2)``,
            ``optax.adam(1e-2)``, ...) or a ``numpyro.optim`` optimizer; ``None``: Adam with a step
            decaying from 0.05 to 0.001, non-finite steps skipped.
        num_steps: SVI steps.
        num_particles: ``theta`` draws per step (vectorised), sharing the step's ``S`` random streams.
        num_pilot_draws: prior draws scored by :func:`pilot_values` to start an autoguide.

    ``run(rng_key, num_samples)`` returns an :class:`~adapters.abc.ABCResult` of ``num_samples``
    equally weighted constrained draws of the fitted guide; ``num_simulations`` counts the
    simulations of training, ``num_steps x num_particles x S``, of the pilot,
    ``num_pilot_draws x S``, and the gradient check's draws (the few model runs SVI makes to set an
    autoguide up, ``S`` simulations each and no step, are not counted).  ``info`` holds ``loss``
    (the trace, ``(num_steps,)``), ``params`` (the guide's fitted parameters), ``init_values`` (the
    pilot's start, or ``None``) and ``num_nonfinite_losses``.  Simulations that return NaN/inf are
    left out of each synthetic likelihood; SVI reports only the loss, so they are not counted one by
    one: a step where too few were finite has a non-finite loss, counted in
    ``info["num_nonfinite_losses"]`` and warned about (the default optimizer skips that step).
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
        from numpyro.infer.autoguide import AutoGuide, AutoMultivariateNormal

        if not isinstance(problem, LikelihoodFreeProblem):
            raise TypeError(f"problem: expected a numpyro_ext LikelihoodFreeProblem, got {type(problem).__name__}")
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
        self.optimizer = _default_optimizer(self.num_steps) if optimizer is None else optimizer
        if not callable(getattr(self.optimizer, "init", None)) and not hasattr(self.optimizer, "eval_and_update"):
            raise TypeError(
                "optimizer: expected an optax GradientTransformation or a numpyro.optim optimizer, "
                f"got {type(self.optimizer).__name__}"
            )
        self.problem = problem
        self.model = synthetic_likelihood_model(problem, self.num_simulations, self.epsilon)
        self._make_guide = guide if (is_class or is_partial) else None
        self.guide = guide(self.model) if self._make_guide is not None else guide

    def run(self, rng_key: jax.Array, num_samples: int = 1000) -> ABCResult:
        """Start the guide (:func:`pilot_values`), fit it by ``num_steps`` SVI steps and return
        ``num_samples`` of its draws."""
        from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_value

        num_samples = check_positive_int("num_samples", num_samples)
        pilot_key, init_key, step_key, sample_key = jax.random.split(_as_key(rng_key), 4)
        init_values, num_pilot = None, 0
        if self._make_guide is not None:
            if _takes_init_loc_fn(self._make_guide):
                init_values = pilot_values(
                    self.problem, pilot_key, self.num_simulations, self.epsilon, self.num_pilot_draws
                )
                num_pilot = self.num_pilot_draws * self.num_simulations
                self.guide = self._make_guide(self.model, init_loc_fn=init_to_value(values=init_values))
            else:
                self.guide = self._make_guide(self.model)
        elbo = Trace_ELBO(num_particles=self.num_particles, vectorize_particles=True)
        svi = SVI(self.model, self.guide, self.optimizer, elbo)
        state = svi.init(init_key, jax.random.fold_in(init_key, 1))

        @jax.jit
        def train(state, keys):
            # one per-step key for the S simulations, shared by the step's particles
            return jax.lax.scan(lambda s, k: svi.update(s, k), state, keys)

        state, losses = train(state, jax.random.split(step_key, self.num_steps))
        params = svi.get_params(state)
        draws = Predictive(self.guide, params=params, num_samples=num_samples)(sample_key, None)
        theta = np.concatenate(
            [np.asarray(draws[site]).reshape(num_samples, -1) for site in self._site_names()], axis=1
        )
        losses = np.asarray(losses)
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
                "params": jax.tree_util.tree_map(np.asarray, params),
                "init_values": None if init_values is None else jax.tree_util.tree_map(np.asarray, init_values),
                "num_nonfinite_losses": num_nonfinite,
                "num_simulations_per_theta": self.num_simulations,
                "epsilon": self.epsilon,
            },
            warnings=issued,
        )

    def _site_names(self) -> list[str]:
        """The prior's sites in the column order of ``problem.names``."""
        return sorted(self.problem.sites, key=lambda site: self.problem.sites[site][1])
