"""The NumPyro shell of AIS: :class:`AIS` (from a model, a Target or functions) and :class:`AISResult`.

A NumPyro model anneals from the prior of its latent sites to the posterior given its observed
sites (:mod:`numpyro_ext.infer.model_util` splits its density); :meth:`AIS.run` runs the forward
chains and :meth:`AIS.run_reverse` the BDMC reverse chains of :mod:`numpyro_ext.infer.ais.anneal`,
with the step-size pilot of the module docstring of :mod:`numpyro_ext.infer.ais`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapters.configs import check_model_or_potential
from adapters.mi import AISConfig, AISResultBase, check_posterior_samples
from adapters.validation import check_numeric
from numpyro_ext.infer.ais.anneal import (
    Adaptation,
    AISOutput,
    anneal,
    check_positions,
    check_rng_key,
    pilot_step_sizes,
)
from numpyro_ext.infer.ais.core import KernelSettings, LogDensityFn
from numpyro_ext.infer.model_util import check_latent_samples, flat_model, validate_model

__all__ = ["AIS", "AISResult"]

Array = jax.Array


class _Runner(NamedTuple):
    """The jitted pieces of an :class:`AIS` run for one set of model arguments."""

    sample_init: Callable
    run_chains: Callable
    constrain: Callable
    unconstrain: Callable


class _Problem(NamedTuple):
    """What a run needs: ``log pi_0``, ``log L``, a sampler of ``pi_0`` ``(key, K) -> (K, d)``,
    ``constrain`` ``(K, d) -> {site: (K, ...)}`` and ``unconstrain`` of a dict of draws ``-> (K, d)``."""

    log_prior_fn: LogDensityFn
    log_likelihood_fn: LogDensityFn
    sample_init: Callable[[Array, int], Array]
    constrain: Callable[[Array], dict]
    unconstrain: Callable[[Any], Array]


def _numpyro_problem(model: Callable, model_args: tuple, model_kwargs: dict, proposal: Any) -> _Problem:
    """The prior of the latent sites to the posterior (the split of :func:`~numpyro_ext.infer.model_util.flat_model`),
    or, with a ``proposal``, the proposal to the model's joint density."""
    flat = flat_model(model, model_args, model_kwargs, "AIS")
    if not flat.observed and proposal is None:
        raise ValueError(
            "model: the model has no observed sites, so prior and posterior coincide; observe data (obs=...) "
            "or give a proposal to anneal from"
        )

    def unconstrain(samples):
        return jax.vmap(flat.unconstrain)(check_latent_samples(samples, flat.latent))

    def sample_prior(key, num):
        return jax.vmap(flat.sample_prior)(jax.random.split(key, num))

    constrain = jax.vmap(flat.constrain)
    if proposal is None:
        return _Problem(flat.log_prior, flat.log_likelihood, sample_prior, constrain, unconstrain)
    return _proposal_problem(flat.log_joint, proposal, constrain, unconstrain)


def _proposal_problem(log_target: LogDensityFn, proposal: Any, constrain, unconstrain) -> _Problem:
    """Anneal from ``proposal`` (normalised, samplable) to the unnormalised ``log_target``."""
    if not (callable(getattr(proposal, "sample", None)) and callable(getattr(proposal, "log_prob", None))):
        raise ValueError(
            "proposal must have sample(rng_key, sample_shape) and log_prob(x) on the unconstrained R^d "
            f"(e.g. a NumPyro distribution with event shape (d,)), got {type(proposal).__name__}"
        )

    def log_base(x):
        return proposal.log_prob(x)

    def log_increment(x):
        return log_target(x) - proposal.log_prob(x)

    def sample_init(key, k):
        draws = jnp.asarray(proposal.sample(key, (k,)))
        if draws.ndim != 2:
            raise ValueError(f"proposal.sample(key, (K,)) must return shape (K, d), got {draws.shape}")
        return draws

    return _Problem(log_base, log_increment, sample_init, constrain, unconstrain)


def _array_constrain(names: list[str] | None):
    def constrain(positions):
        if names is None:
            return {"x": positions}
        return {name: positions[:, i] for i, name in enumerate(names)}

    return constrain


def _array_unconstrain(samples):
    if isinstance(samples, Mapping):
        raise ValueError("posterior_samples must be an array of shape (num_chains, d) for a function target")
    return check_positions(samples, "posterior_samples")


class AISResult(AISResultBase):
    """What :meth:`AIS.run` (forward) and :meth:`AIS.run_reverse` (BDMC) return.

    * ``log_Z`` — a :class:`~adapters.mi.BoundEstimate`: ``kind="lower"`` (forward,
      ``log mean w``) or ``"upper"`` (reverse, ``-log mean 1/w``), delta-method standard error;
    * ``mean_log_weight`` — the single-chain bound ``mean_k log w_k`` (forward:
      ``E log w <= log Z``; reverse: ``E log w >= log Z``), looser but with a small standard
      error; the gap between the two directions estimates the symmetrised KL divergence
      between the forward and reverse path distributions (Grosse et al. 2015);
    * ``log_weights`` ``(K,)`` — forward-form ``log w`` of each chain (numpy);
    * ``positions`` ``(K, d)`` — final unconstrained states (forward: approximate posterior
      draws, to be weighted; reverse: draws near ``beta = 0``);
    * ``step_sizes`` ``(T,)`` — the fixed per-temperature HMC step sizes used (from the pilot
      when adapting), ``acceptance_rate`` ``(S, K)``, ``num_divergent`` (rejected non-finite or
      diverging proposals, all chains), ``ess`` (Kish's, of the weights), ``direction``.

    * ``warnings`` — the messages of the :class:`adapters.diagnostics.ReliabilityWarning` s the run
      issued (more than 1% divergent transitions; a Kish ESS below a tenth of the chains), also in
      ``to_arviz().attrs``; empty for a healthy run.

    The numpy half (bounds, ESS, resampling rule, diagnostics, summary) is :class:`adapters.mi.AISResultBase`.
    """

    def __init__(self, output: AISOutput, kind: str, constrain: Callable, step_sizes: Array):
        super().__init__(output.log_weights, kind, step_sizes, output.acceptance_rate, output.is_divergent)
        self.output = output
        self.positions = output.positions
        self._constrain = constrain

    def get_samples(self, rng_key: Array | None = None, num_samples: int | None = None) -> dict[str, Any]:
        """Constrained final states ``{site: (K, ...)}`` (deterministic sites included).

        Without ``rng_key``: the ``K`` chains' states, to be weighted by
        ``exp(log_weights)``.  With it: ``num_samples`` (default ``K``) states resampled
        multinomially by weight, i.e. equally weighted approximate posterior draws (forward run);
        a ``ValueError`` when every weight is zero (:meth:`~adapters.mi.AISResultBase.resampling`).
        """
        samples = self._constrain(self.positions)
        if rng_key is None:
            return samples
        logits, num = self.resampling(num_samples)
        index = jax.random.categorical(rng_key, jnp.asarray(logits), shape=(num,))
        return jax.tree.map(lambda v: v[index], samples)

    def to_arviz(self, rng_key: Array | None = None):
        """``arviz.InferenceData``: resampled states as one chain (``posterior``), the chains'
        ``log_weight`` (``sample_stats``) and ``log_Z``/``log_Z_stderr`` in ``attrs``."""
        key = jax.random.PRNGKey(0) if rng_key is None else rng_key
        return self.inference_data(self.get_samples(key))


# ---------------------------------------------------------------------------------------
# The user-facing object
# ---------------------------------------------------------------------------------------
class AIS:
    """Annealed importance sampling of ``log Z`` with a BDMC upper bound, for NumPyro models.

    Args:
        model: a NumPyro model whose observed sites (``obs=...``, and ``numpyro.factor``) form
            the likelihood: AIS anneals from the prior of the latent sites to the posterior, in
            the unconstrained space (the Jacobians of the transforms belong to the prior), and
            ``Z`` is the evidence ``p(observations)``.  Or an :class:`adapters.Target`: a NumPyro
            one runs through its model and bound arguments; any other needs ``proposal`` and
            ``Z`` is the normaliser of ``exp(target.log_density)``.
        log_likelihood_fn: instead of ``model``, ``log L(x)`` of an unconstrained ``x`` ``(d,)``
            (JAX-traceable, or a Target), with ``proposal`` the prior: ``Z = E_prior[L]``.
        proposal: the initial distribution ``pi_0`` on the unconstrained ``R^d``, an object with
            ``sample(rng_key, (K,)) -> (K, d)`` and ``log_prob(x)`` (e.g. a NumPyro distribution
            with event shape ``(d,)``); with a model, AIS then anneals from it instead of the prior.
        num_steps: ``T``, the number of annealing steps (ignored when ``schedule`` is an array).
        num_chains: ``K``, independent forward chains.
        schedule: ``"sigmoid"`` (Grosse et al. 2015), ``"linear"`` or an array
            ``0 = beta_0 < ... < beta_T = 1``.
        transition: ``"hmc"`` or a kernel ``transition(rng_key, position, logdensity_fn,
            step_size) -> (new_position, acceptance_rate)`` leaving ``exp(logdensity_fn)``
            invariant (reversible, for BDMC).
        step_size: the HMC step size, fixed, or the pilot's starting value.
        num_leapfrog: leapfrog steps per HMC transition.
        adapt_step_size: tune one step size per temperature with an adaptive pilot run on
            independent chains (multiplicative updates toward ``target_accept_prob``), then
            estimate with that fixed schedule (see the module docstring for why not adapt
            inside the estimating run).  Costs one more forward run.
        target_accept_prob: target acceptance probability of the pilot.
        inverse_mass_matrix: HMC inverse mass matrix, ``(d,)`` or ``(d, d)`` (identity by default).
        adaptation_rate: gain of the pilot's update ``log eps += rate * (a - target)``.
        max_delta_energy: energy error above which a proposal counts as divergent.

    ``run(rng_key, *model_args, **model_kwargs)`` gives the forward estimate (``log_Z`` a lower
    bound), ``run_reverse(rng_key, posterior_samples, ...)`` the BDMC upper bound.
    :attr:`step_sizes` holds the schedule tuned by the last :meth:`run` (used by
    :meth:`run_reverse`; any fixed schedule keeps both bounds valid).  A model is validated before
    each run, as NUTS validates it (``validate_model`` of the backend's ``model_util``: an invalid
    distribution parameter or an observed value outside its support is a ``ValueError`` naming
    the site), and a finished run warns (:class:`adapters.diagnostics.ReliabilityWarning`) when
    its divergences or its weights make the estimate unreliable.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        log_likelihood_fn: Callable | Any = None,
        proposal: Any = None,
        num_steps: int = 100,
        num_chains: int = 16,
        schedule: Any = "sigmoid",
        transition: str | Callable = "hmc",
        step_size: float = 0.1,
        num_leapfrog: int = 10,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.65,
        inverse_mass_matrix: Any = None,
        adaptation_rate: float = 1.0,
        max_delta_energy: float = 1000.0,
    ):
        from adapters.target import Target

        self.config = AISConfig.from_arguments(locals())
        check_model_or_potential("AIS", model, log_likelihood_fn, alternative="log_likelihood_fn")
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (d,) or (d, d)")
        self._bound_args = None
        self._target = None
        if isinstance(model, Target):
            if model.backend == "numpyro":
                self._bound_args = (model.model_args, model.model_kwargs)
                model = model.model
            else:
                if proposal is None:
                    raise ValueError(
                        f"proposal: a {model.backend} Target gives only an unnormalised density, so AIS needs a "
                        "proposal (initial distribution on R^d) to anneal from"
                    )
                self._target, model = model, None
        elif model is not None and not callable(model):
            raise ValueError(f"model must be a model (a callable) or an adapters.Target, got {model!r}")
        if log_likelihood_fn is not None:
            if proposal is None:
                raise ValueError("proposal: with log_likelihood_fn, give the prior as `proposal` (sample and log_prob)")
            if isinstance(log_likelihood_fn, Target):
                log_likelihood_fn = log_likelihood_fn.as_jax()
            elif not callable(log_likelihood_fn):
                raise ValueError(
                    f"log_likelihood_fn must be a function of x (d,) or a Target, got {log_likelihood_fn!r}"
                )
        self.model = model
        self.log_likelihood_fn = log_likelihood_fn
        self.proposal = proposal
        self.inverse_mass_matrix = inverse_mass_matrix
        self.step_sizes: np.ndarray | None = None
        self._runners: dict = {}

    # ---- set-up ----------------------------------------------------------------------
    def _problem(self, model_args: tuple, model_kwargs: dict) -> _Problem:
        if self.model is not None:
            return _numpyro_problem(self.model, tuple(model_args), dict(model_kwargs), self.proposal)
        if self._target is not None:
            target = self._target
            return _proposal_problem(target.as_jax(), self.proposal, _array_constrain(target.names), _array_unconstrain)
        # plain functions: the proposal is the prior and log_likelihood_fn the whole increment
        problem = _proposal_problem(self.log_likelihood_fn, self.proposal, _array_constrain(None), _array_unconstrain)
        return problem._replace(log_likelihood_fn=self.log_likelihood_fn)

    def _bind(self, model_args: tuple, model_kwargs: dict) -> tuple[tuple, dict]:
        if self._bound_args is not None:
            if model_args or model_kwargs:
                raise ValueError("AIS: the Target binds the model's arguments; call run(rng_key) without them")
            return self._bound_args
        if self.model is None and (model_args or model_kwargs):
            raise ValueError("AIS: model arguments are only for a NumPyro model; this AIS was built from functions")
        return tuple(model_args), dict(model_kwargs)

    def _validate(self, model_args: tuple, model_kwargs: dict) -> None:
        """A model's distributions checked once on the concrete arguments, outside ``jit`` (where NumPyro
        skips validation): an invalid parameter or observed value is a ``ValueError`` naming the site
        (:func:`~numpyro_ext.infer.model_util.validate_model`), as NUTS raises at initialisation."""
        if self.model is not None:
            validate_model(self.model, model_args, model_kwargs, "AIS")

    def _check_mass(self, dim: int) -> None:
        shape = None if self.inverse_mass_matrix is None else jnp.shape(self.inverse_mass_matrix)
        if shape is not None and shape not in ((dim,), (dim, dim)):
            raise ValueError(f"inverse_mass_matrix must have shape ({dim},) or ({dim}, {dim}), got {shape}")

    def _runner(self, model_args: tuple, model_kwargs: dict):
        """Jitted ``(sample_init, run_chains, constrain, unconstrain)`` for these arguments, and their array leaves.

        Array leaves of the model arguments are traced (so a second run on same-shaped data,
        or the reverse run after a forward one, reuses the compiled program); other leaves are
        part of the cache key.  ``run_chains(dynamic, key, positions, reverse, steps, adapt)`` runs
        forward and reverse chains and the pilot alike.
        """
        leaves, treedef = jax.tree.flatten((model_args, model_kwargs))
        is_array = tuple(isinstance(leaf, jax.Array | np.ndarray | np.generic) for leaf in leaves)
        static = tuple(None if array else leaf for leaf, array in zip(leaves, is_array, strict=True))
        dynamic = [leaf for leaf, array in zip(leaves, is_array, strict=True) if array]
        cache_key: Any = (treedef, is_array, static)
        try:
            hash(cache_key)
        except TypeError:
            cache_key = None
        if cache_key is not None and cache_key in self._runners:
            return self._runners[cache_key], dynamic

        def problem_of(dynamic):
            values = iter(dynamic)
            leaves = [next(values) if array else leaf for leaf, array in zip(static, is_array, strict=True)]
            return self._problem(*jax.tree.unflatten(treedef, leaves))

        cfg = self.config
        inverse_mass_matrix = None if self.inverse_mass_matrix is None else jnp.asarray(self.inverse_mass_matrix)
        kernel = KernelSettings(cfg.num_leapfrog, inverse_mass_matrix, cfg.transition, cfg.max_delta_energy)

        @functools.partial(jax.jit, static_argnums=2)
        def sample_init(dynamic, key, num):
            return problem_of(dynamic).sample_init(key, num)

        @jax.jit
        def run_chains(dynamic, key, positions, reverse, steps, adapt):
            problem = problem_of(dynamic)
            betas = jnp.asarray(cfg.betas, positions.dtype)
            steps = jnp.broadcast_to(steps.astype(positions.dtype)[:, None], (cfg.num_steps, positions.shape[0]))
            adaptation = Adaptation(adapt, cfg.target_accept_prob, cfg.adaptation_rate)
            log_prior_fn, log_likelihood_fn = problem.log_prior_fn, problem.log_likelihood_fn
            return anneal(key, positions, log_prior_fn, log_likelihood_fn, betas, steps, reverse, adaptation, kernel)

        @jax.jit
        def constrain(dynamic, positions):
            return problem_of(dynamic).constrain(positions)

        @jax.jit
        def unconstrain(dynamic, samples):
            return problem_of(dynamic).unconstrain(samples)

        runner = _Runner(sample_init, run_chains, constrain, unconstrain)
        if cache_key is not None:
            self._runners[cache_key] = runner
        return runner, dynamic

    def _tune(self, rng_key: Array, runner: _Runner, dynamic: list) -> Array:
        """The pilot: adaptive forward chains from fresh draws of ``pi_0``, one step size per temperature."""
        cfg = self.config
        init_key, run_key = jax.random.split(rng_key)
        init = runner.sample_init(dynamic, init_key, cfg.num_chains)
        forward = jnp.zeros(cfg.num_chains, bool)
        steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = runner.run_chains(dynamic, run_key, init, forward, steps, True)
        return pilot_step_sizes(output.adapted_step_size, output.log_weights)

    # ---- running ---------------------------------------------------------------------
    def run(self, rng_key: Array, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Forward AIS: ``K`` chains from ``pi_0``; ``result.log_Z`` is a stochastic lower bound."""
        cfg = self.config
        rng_key = check_rng_key(rng_key)
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        self._validate(model_args, model_kwargs)
        runner, dynamic = self._runner(model_args, model_kwargs)
        pilot_key, init_key, run_key = jax.random.split(rng_key, 3)
        init = runner.sample_init(dynamic, init_key, cfg.num_chains)
        self._check_mass(init.shape[-1])
        if cfg.adapt_step_size:
            steps = self._tune(pilot_key, runner, dynamic)
        else:
            steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = runner.run_chains(dynamic, run_key, init, jnp.zeros(cfg.num_chains, bool), steps, False)
        self.step_sizes = np.asarray(steps)
        result = AISResult(output, "lower", functools.partial(runner.constrain, dynamic), steps)
        result.check_reliability()
        return result

    def run_reverse(self, rng_key: Array, posterior_samples: Any, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Reverse AIS (BDMC) from exact posterior samples; ``result.log_Z`` is a stochastic upper bound.

        ``posterior_samples``: for a model, a dict of constrained latent sites with a leading
        axis of ``K'`` draws (e.g. the latents that simulated the data); otherwise an array
        ``(K', d)``.  One reverse chain per draw.  The step sizes are :attr:`step_sizes` from
        the last :meth:`run` (any fixed schedule keeps the bound valid), else, when adapting,
        those of a fresh pilot forward run, else the fixed ``step_size``.
        """
        cfg = self.config
        rng_key = check_rng_key(rng_key)
        check_posterior_samples(posterior_samples)
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        self._validate(model_args, model_kwargs)
        runner, dynamic = self._runner(model_args, model_kwargs)
        if isinstance(posterior_samples, Mapping):
            posterior_samples = {k: jnp.asarray(v) for k, v in posterior_samples.items()}
        init = runner.unconstrain(dynamic, posterior_samples)
        self._check_mass(init.shape[-1])
        pilot_key, run_key = jax.random.split(rng_key)
        if self.step_sizes is not None and self.step_sizes.shape == (cfg.num_steps,):
            steps = jnp.asarray(self.step_sizes, init.dtype)
        elif cfg.adapt_step_size:
            steps = self._tune(pilot_key, runner, dynamic)
            self.step_sizes = np.asarray(steps)
        else:
            steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = runner.run_chains(dynamic, run_key, init, jnp.ones(init.shape[0], bool), steps, False)
        result = AISResult(output, "upper", functools.partial(runner.constrain, dynamic), steps)
        result.check_reliability()
        return result
