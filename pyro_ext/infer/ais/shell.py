"""The Pyro shell of AIS: :class:`AIS` (models, Targets, functions) and :class:`AISResult`.

See :mod:`pyro_ext.infer.ais` for the method.  Randomness: torch's global generator
(``pyro.set_rng_seed``).  Shapes: ``K`` chains, ``d`` unconstrained dimensions, ``T`` annealing
steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch

from adapters.configs import check_model_or_potential
from adapters.mi import AISConfig, AISResultBase, check_posterior_samples
from adapters.validation import check_numeric, check_positive_int
from pyro_ext.infer.ais.anneal import anneal, kernel_options, pilot_step_sizes
from pyro_ext.infer.ais.core import AISOutput, BatchedLogDensity, as_positions
from pyro_ext.infer.model_util import flat_model, unvalidated, validate_model, vmap_log_density

__all__ = ["AIS", "AISResult"]

Tensor = torch.Tensor


class _Problem(NamedTuple):
    """What a run needs: batched ``log pi_0`` and ``log L``, a sampler of ``pi_0`` ``K -> (K, d)``,
    ``constrain`` ``(K, d) -> {site: (K, ...)}`` and ``unconstrain`` of draws ``-> (K, d)``."""

    log_prior_fn: BatchedLogDensity
    log_likelihood_fn: BatchedLogDensity
    sample_init: Callable[[int], Tensor]
    constrain: Callable[[Tensor], dict]
    unconstrain: Callable[[Any], Tensor]


def _check_proposal(proposal: Any) -> None:
    if not (callable(getattr(proposal, "sample", None)) and callable(getattr(proposal, "log_prob", None))):
        raise ValueError(
            "proposal must have sample(sample_shape) and log_prob(x) on the unconstrained R^d "
            f"(e.g. a torch/Pyro distribution with event shape (d,)), got {type(proposal).__name__}"
        )


def _proposal_problem(log_target: BatchedLogDensity, proposal: Any, constrain, unconstrain) -> _Problem:
    """Anneal from ``proposal`` (normalised, samplable, batched ``log_prob``) to the unnormalised ``log_target``."""
    _check_proposal(proposal)
    log_base = unvalidated(proposal.log_prob)

    def log_increment(x):
        return log_target(x) - log_base(x)

    def sample_init(num):
        draws = torch.as_tensor(proposal.sample((num,))).detach()
        if draws.dim() != 2:
            raise ValueError(f"proposal.sample((K,)) must return shape (K, d), got {tuple(draws.shape)}")
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
    return as_positions(samples, "posterior_samples")


def _target_log_density(target: Any) -> BatchedLogDensity:
    """A non-Pyro :class:`adapters.Target`'s torch view, batched: ``vmap`` of a one-sample torch
    function, or the view itself where it takes a batch (the NumPy/JAX bridge of ``as_torch``)."""
    fn = target.as_torch()
    vmapped = torch.func.vmap(fn)
    probe = torch.zeros((2, target.dim), dtype=torch.float64)
    try:
        with pyro.validation_enabled(False):
            vmapped(probe)
    except Exception:  # an autograd.Function bridge (no vmap rule); it accepts (batch, dim) itself
        return unvalidated(fn)
    return unvalidated(vmapped)


def _pyro_problem(model: Callable, model_args: tuple, model_kwargs: dict, proposal: Any) -> _Problem:
    """Prior of the latent sites -> posterior given the observed sites, in the unconstrained space.

    :func:`pyro_ext.infer.model_util.flat_model` gives ``log pi_0 = sum_latent log p(s | parents)
    + log|J|`` (the Jacobians of the transforms belong to the prior) and ``log L = sum_observed
    log p`` (``pyro.factor`` included) from one conditioned trace per chain, batched by
    ``torch.func.vmap`` (so the model is written for one draw, as for NUTS).  Prior draws run
    the model once per chain (Pyro's own sampling).  The model's distributions are checked first
    (:func:`~pyro_ext.infer.model_util.validate_model`: an invalid parameter or observed value is a
    ``ValueError`` naming the site, as NUTS refuses such a model).
    """
    validate_model(model, model_args, model_kwargs, "AIS")
    flat = flat_model(model, model_args, model_kwargs, "AIS")
    if not flat.observed and proposal is None:
        raise ValueError(
            "model: the model has no observed sites, so prior and posterior coincide; observe data (obs=...) "
            "or give a proposal to anneal from"
        )

    def unconstrain(samples):
        return as_positions(flat.unconstrain(samples), "posterior_samples")

    if proposal is None:
        return _Problem(flat.log_prior, flat.log_likelihood, flat.sample_prior, flat.constrain, unconstrain)

    def log_joint(x):
        return flat.log_prior(x) + flat.log_likelihood(x)

    return _proposal_problem(log_joint, proposal, flat.constrain, unconstrain)


# ---------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------
def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_positive_int("seed", seed, allow_zero=True))


class AISResult(AISResultBase):
    """What :meth:`AIS.run` (forward) and :meth:`AIS.run_reverse` (BDMC) return.

    * ``log_Z`` — a :class:`~adapters.mi.BoundEstimate`: ``kind="lower"`` (forward,
      ``log mean w``) or ``"upper"`` (reverse, ``-log mean 1/w``), delta-method standard error;
    * ``mean_log_weight`` — the single-chain bound ``mean_k log w_k`` (forward:
      ``E log w <= log Z``; reverse: ``E log w >= log Z``), looser but with a small standard
      error; the gap between the directions estimates the symmetrised KL divergence between the
      forward and reverse path distributions (Grosse et al. 2015);
    * ``log_weights`` ``(K,)`` — forward-form ``log w`` of each chain (numpy float64);
    * ``positions`` ``(K, d)`` — final unconstrained states (a tensor);
    * ``step_sizes`` ``(T,)`` — the fixed per-temperature step sizes used, ``acceptance_rate``
      ``(T, K)``, ``num_divergent`` (rejected non-finite or diverging proposals, all chains),
      ``ess`` (Kish's, of the weights), ``direction``.

    * ``warnings`` — the messages of the :class:`adapters.diagnostics.ReliabilityWarning` s the run
      issued (more than 1% divergent transitions; a Kish ESS below a tenth of the chains), also in
      ``to_arviz().attrs``; empty for a healthy run.

    The numpy half (bounds, ESS, resampling rule, diagnostics, summary) is :class:`adapters.mi.AISResultBase`.
    """

    def __init__(self, output: AISOutput, kind: str, constrain: Callable, step_sizes: Tensor):
        super().__init__(
            output.log_weights.detach().cpu().numpy().astype(np.float64),
            kind,
            torch.as_tensor(step_sizes).detach().cpu().numpy(),
            output.acceptance_rate.detach().cpu().numpy(),
            output.is_divergent.detach().cpu().numpy(),
        )
        self.output = output
        self.positions = output.positions
        self._constrain = constrain

    def get_samples(self, seed: int | torch.Generator | None = None, num_samples: int | None = None) -> dict:
        """Constrained final states ``{site: (K, ...)}`` (deterministic sites included).

        Without ``seed``: the ``K`` chains' states, to be weighted by ``exp(log_weights)``.  With
        it (an int or a ``torch.Generator``): ``num_samples`` (default ``K``) states resampled
        multinomially by weight, i.e. equally weighted approximate posterior draws (forward run).
        """
        samples = self._constrain(self.positions)
        if seed is None:
            return samples
        logits, num = self.resampling(num_samples)
        weights = torch.as_tensor(np.exp(logits - np.max(logits)))
        index = torch.multinomial(weights, num, replacement=True, generator=_generator(seed))
        return {k: v[index] for k, v in samples.items()}

    def to_arviz(self, seed: int | torch.Generator = 0):
        """``arviz.InferenceData``: resampled states as one chain (``posterior``), the chains'
        ``log_weight`` (``sample_stats``) and ``log_Z``/``log_Z_stderr`` in ``attrs``."""
        return self.inference_data({k: v.detach().cpu().numpy() for k, v in self.get_samples(seed).items()})


# ---------------------------------------------------------------------------------------
# The user-facing object
# ---------------------------------------------------------------------------------------
class AIS:
    """Annealed importance sampling of ``log Z`` with a BDMC upper bound, for Pyro models.

    The twin of :class:`numpyro_ext.infer.AIS`; randomness from torch's global generator
    (``pyro.set_rng_seed``).

    Args:
        model: a Pyro model whose observed sites (``obs=...``, and ``pyro.factor``) form the
            likelihood: AIS anneals from the prior of the latent sites to the posterior, in the
            unconstrained space (the Jacobians of the transforms belong to the prior), and ``Z``
            is the evidence ``p(observations)``.  The model is written for one draw and batched
            over chains by ``torch.func.vmap`` (no Python control flow on latent values).  Or
            an :class:`adapters.Target`: a Pyro one runs through its model and bound arguments;
            any other needs ``proposal`` and ``Z`` is the normaliser of ``exp(target.log_density)``.
        log_likelihood_fn: instead of ``model``, ``log L(x)`` of one unconstrained ``x`` ``(d,)``
            (a torch function, or a Target), with ``proposal`` the prior: ``Z = E_prior[L]``.
        proposal: the initial distribution ``pi_0`` on the unconstrained ``R^d``, an object with
            ``sample((K,)) -> (K, d)`` and a batched ``log_prob(x (K, d)) -> (K,)`` (e.g. a
            torch or Pyro distribution with event shape ``(d,)``); with a model, AIS then
            anneals from it instead of the prior.
        vectorized: ``log_likelihood_fn`` is already batched, ``(K, d) -> (K,)`` (no ``vmap``).

    The other arguments (``num_steps``, ``num_chains``, ``schedule``, ``transition``,
    ``step_size``, ``num_leapfrog``, ``adapt_step_size``, ``target_accept_prob``,
    ``inverse_mass_matrix``, ``adaptation_rate``, ``max_delta_energy``) are those of
    :class:`numpyro_ext.infer.AIS`; a user ``transition`` is batched,
    ``transition(generator, position (K, d), logdensity_fn, step_size (K,)) -> (position,
    acceptance_rate (K,))`` (see :func:`ais_step`).

    ``run(*model_args, **model_kwargs)`` gives the forward estimate (``log_Z`` a lower bound),
    ``run_reverse(posterior_samples, *model_args, **model_kwargs)`` the BDMC upper bound.
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
        vectorized: bool = False,
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
        if not isinstance(vectorized, bool):
            raise ValueError(f"vectorized must be True or False, got {vectorized!r}")
        self._bound_args = None
        self._target = None
        if isinstance(model, Target):
            if model.backend == "pyro":
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
                log_likelihood_fn = _target_log_density(log_likelihood_fn)
            elif not callable(log_likelihood_fn):
                raise ValueError(
                    f"log_likelihood_fn must be a function of x (d,) or a Target, got {log_likelihood_fn!r}"
                )
            elif vectorized:
                log_likelihood_fn = unvalidated(log_likelihood_fn)
            else:
                log_likelihood_fn = vmap_log_density(log_likelihood_fn)
        self.model = model
        self.log_likelihood_fn = log_likelihood_fn
        self.proposal = proposal
        self.inverse_mass_matrix = inverse_mass_matrix
        self.step_sizes: np.ndarray | None = None

    # ---- set-up ----------------------------------------------------------------------
    def _problem(self, model_args: tuple, model_kwargs: dict) -> _Problem:
        if self.model is not None:
            return _pyro_problem(self.model, tuple(model_args), dict(model_kwargs), self.proposal)
        if self._target is not None:
            target = self._target
            return _proposal_problem(
                _target_log_density(target), self.proposal, _array_constrain(target.names), _array_unconstrain
            )
        # plain functions: the proposal is the prior and log_likelihood_fn the whole increment
        problem = _proposal_problem(self.log_likelihood_fn, self.proposal, _array_constrain(None), _array_unconstrain)
        return problem._replace(log_likelihood_fn=self.log_likelihood_fn)

    def _bind(self, model_args: tuple, model_kwargs: dict) -> tuple[tuple, dict]:
        if self._bound_args is not None:
            if model_args or model_kwargs:
                raise ValueError("AIS: the Target binds the model's arguments; call run() without them")
            return self._bound_args
        if self.model is None and (model_args or model_kwargs):
            raise ValueError("AIS: model arguments are only for a Pyro model; this AIS was built from functions")
        return tuple(model_args), dict(model_kwargs)

    def _anneal(self, problem: _Problem, init: Tensor, reverse: bool, steps: Tensor, adapt: bool) -> AISOutput:
        betas = torch.as_tensor(self.config.betas, dtype=init.dtype)
        flags = torch.full((init.shape[0],), reverse, dtype=torch.bool)
        kernel = kernel_options(self.config, self.inverse_mass_matrix)
        return anneal(
            init, problem.log_prior_fn, problem.log_likelihood_fn, betas, steps, flags, adapt_step_size=adapt, **kernel
        )

    def _tune(self, problem: _Problem, dtype: torch.dtype) -> Tensor:
        """The pilot: adaptive forward chains from fresh draws of ``pi_0``, one step size per temperature."""
        cfg = self.config
        init = as_positions(problem.sample_init(cfg.num_chains)).to(dtype)
        steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=dtype)
        output = self._anneal(problem, init, False, steps, True)
        return pilot_step_sizes(output.adapted_step_size, output.log_weights)

    # ---- running ---------------------------------------------------------------------
    def run(self, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Forward AIS: ``K`` chains from ``pi_0``; ``result.log_Z`` is a stochastic lower bound.

        Random numbers, from torch's global generator, in this order: the chains' draws of
        ``pi_0``, the pilot (its own draws of ``pi_0`` and transitions), the estimating run.
        """
        cfg = self.config
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        problem = self._problem(model_args, model_kwargs)
        init = as_positions(problem.sample_init(cfg.num_chains))
        if cfg.adapt_step_size:
            steps = self._tune(problem, init.dtype)
        else:
            steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=init.dtype)
        output = self._anneal(problem, init, False, steps, False)
        self.step_sizes = steps.detach().cpu().numpy()
        result = AISResult(output, "lower", problem.constrain, steps)
        result.check_reliability()
        return result

    def run_reverse(self, posterior_samples: Any, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Reverse AIS (BDMC) from exact posterior samples; ``result.log_Z`` is a stochastic upper bound.

        ``posterior_samples``: for a model, a dict of constrained latent sites with a leading
        axis of ``K'`` draws (e.g. the latents that simulated the data); otherwise an array
        ``(K', d)``.  One reverse chain per draw.  The step sizes are :attr:`step_sizes` from the
        last :meth:`run` (any fixed schedule keeps the bound valid), else, when adapting, those
        of a fresh pilot forward run, else the fixed ``step_size``.
        """
        cfg = self.config
        check_posterior_samples(posterior_samples)
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        problem = self._problem(model_args, model_kwargs)
        init = problem.unconstrain(posterior_samples)
        if self.step_sizes is not None and self.step_sizes.shape == (cfg.num_steps,):
            steps = torch.as_tensor(self.step_sizes, dtype=init.dtype)
        elif cfg.adapt_step_size:
            steps = self._tune(problem, init.dtype)
            self.step_sizes = steps.detach().cpu().numpy()
        else:
            steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=init.dtype)
        output = self._anneal(problem, init, True, steps, False)
        result = AISResult(output, "upper", problem.constrain, steps)
        result.check_reliability()
        return result
