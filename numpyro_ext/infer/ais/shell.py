"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) in JAX, and a NumPyro shell.

Neal, "Annealed importance sampling", Statistics and Computing 11, 2001;
Grosse, Ghahramani & Adams, "Sandwiching the marginal likelihood using bidirectional Monte
Carlo", arXiv:1511.02543, 2015.

Geometric path from a normalised initial density ``pi_0`` (the prior, or a proposal) to the
unnormalised target ``pi_0(x) L(x)`` with normaliser ``Z = E_{pi_0}[L]``::

    log pi_beta(x) = log pi_0(x) + beta log L(x),        0 = beta_0 < beta_1 < ... < beta_T = 1.

``log_prior_fn`` is ``log pi_0`` and ``log_likelihood_fn`` is ``log L`` (for a proposal ``q``
instead of the prior, ``log L = log p(x, z) - log q(z)``).  A forward chain draws
``x_0 ~ pi_0`` and, for ``t = 1..T``, adds the weight increment and then moves with a kernel
``K_t`` that leaves ``pi_{beta_t}`` invariant (HMC here)::

    log w += (beta_t - beta_{t-1}) log L(x_{t-1}),       x_t ~ K_t(. | x_{t-1}).

``E[w] = Z`` (Neal 2001), so ``log((1/K) sum_k w_k)`` over ``K`` independent chains is
a stochastic lower bound on ``log Z``.  A reverse chain starts from an exact sample
``x_{T-1} ~ pi_1`` (the posterior) and runs the kernels backwards, ``x_{t-1} ~ K_t(. | x_t)``
for ``t = T-1..1``; its weight, the same product along its path, has ``E[1/w] = 1/Z``
(every ``K_t`` is reversible, so it is its own reversal), so ``-log((1/K) sum_k 1/w_k)`` is a
stochastic upper bound (BDMC, Grosse et al. 2015).  Standard errors come from the
delta method on the mean weight (:func:`adapters.mi.log_mean_exp_bound`).

**Step sizes.**  Both identities need each ``K_t`` to be fixed before the chain reaches
temperature ``t``, or at least chosen independently of the chain's own path.  Adapting a
chain's step size from its own past acceptances does not satisfy this: the step size is then
correlated with the current state, the kernel mixture is no longer ``pi_t``-invariant and the
weights are biased (an exact enumeration on two states with a Metropolis kernel whose
proposal rate follows the previous move gives ``E[w] = 5.11`` for ``Z = 5``).  So
:func:`ais` with ``adapt_step_size=True`` (multiplicative adaptation of each chain's step size
toward ``target_accept_prob`` at each temperature) is a *pilot*: :func:`tune_step_sizes` runs
it on independent chains and returns one step size per temperature (the geometric mean over
the pilot chains), and the estimate comes from a second run with that fixed schedule, for
which every transition is exactly ``pi_t``-invariant and both bounds hold.  The reverse chains
use the same schedule, so they run the exact reversal of the forward kernels, as the
multi-sample AIS bounds of :mod:`numpyro_ext.infer.ais_mi` require.

Three layers:

* :func:`ais_init` / :func:`ais_step` — one chain, BlackJAX style, pure and ``jit``/``vmap``-able;
* :func:`ais`, :func:`ais_reverse`, :func:`tune_step_sizes` — ``K`` chains vmapped over a
  ``lax.scan`` through the schedule;
* :class:`AIS` — a shell built from a NumPyro model (prior of the latent sites to the posterior
  given the observed sites), an :class:`adapters.Target` with a proposal, or plain functions,
  with :meth:`AIS.run` and :meth:`AIS.run_reverse` returning an :class:`AISResult`.

Shapes: ``K`` chains, ``d`` unconstrained dimensions, ``T`` annealing steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import ndtri

from adapters.mi import AISConfig, AISResultBase, check_schedule
from adapters.validation import check_positive_int, check_probability
from numpyro_ext.infer.drhmc import IntegratorState, _kinetic_energy, _leapfrog_involution

__all__ = [
    "AIS",
    "AISInfo",
    "AISOutput",
    "AISResult",
    "AISState",
    "ais",
    "ais_init",
    "ais_reverse",
    "ais_step",
    "pilot_step_sizes",
    "tune_step_sizes",
]

Array = jax.Array
LogDensityFn = Callable[[Array], Array]
# the pilot's step sizes stay within exp(+-18) ~ [1.5e-8, 6.6e7], so a flat or broken
# density cannot drive them to 0 or inf
_LOG_STEP_BOUND = 18.0


# ---------------------------------------------------------------------------------------
# One chain
# ---------------------------------------------------------------------------------------
class AISState(NamedTuple):
    """One AIS chain.

    ``position`` ``(d,)``; ``log_prior`` (``log pi_0``) and ``log_likelihood`` (``log L``) at it,
    scalars, ``-inf`` where the function is not finite; their gradients ``(d,)``;
    ``log_weight`` the running log weight; ``step_size`` the chain's current HMC step size.
    """

    position: Array
    log_prior: Array
    log_likelihood: Array
    log_prior_grad: Array
    log_likelihood_grad: Array
    log_weight: Array
    step_size: Array


class AISInfo(NamedTuple):
    """What one transition did (scalars): the Metropolis acceptance probability, whether the
    proposal was accepted, whether it diverged (non-finite or an energy error above
    ``max_delta_energy``; always rejected), and the step size used."""

    acceptance_rate: Array
    is_accepted: Array
    is_divergent: Array
    step_size: Array


class AISOutput(NamedTuple):
    """``K`` chains through a schedule (:func:`ais`, :func:`ais_reverse`).

    ``log_weights`` ``(K,)`` in the forward form ``sum_t (beta_t - beta_{t-1}) log L(x_{t-1})``
    along each chain's path (for a reverse run too); ``positions`` ``(K, d)`` the final
    states; ``state`` the final :class:`AISState` (batched); ``acceptance_rate``,
    ``is_divergent``, ``step_size`` ``(S, K)`` per transition (``S = T`` forward, ``T - 1``
    reverse); ``adapted_step_size`` ``(S, K)`` each chain's step size after its update at that
    transition (equal to ``step_size`` without adaptation).
    """

    log_weights: Array
    positions: Array
    state: AISState
    acceptance_rate: Array
    is_divergent: Array
    step_size: Array
    adapted_step_size: Array


def _finite_or_neg_inf(value: Array) -> Array:
    return jnp.where(jnp.isfinite(value), value, -jnp.inf)


def _components(position: Array, log_prior_fn: LogDensityFn, log_likelihood_fn: LogDensityFn):
    """``log pi_0``, ``log L`` and their gradients at ``position``: one forward pass, two backward."""

    def both(x):
        return jnp.stack([jnp.asarray(log_prior_fn(x)), jnp.asarray(log_likelihood_fn(x))]).astype(x.dtype)

    values, vjp = jax.vjp(both, position)
    (grads,) = jax.vmap(vjp)(jnp.eye(2, dtype=values.dtype))
    return _finite_or_neg_inf(values[0]), _finite_or_neg_inf(values[1]), grads[0], grads[1]


def ais_init(
    position: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    step_size: float | Array = 0.1,
) -> AISState:
    """A chain at ``position`` ``(d,)`` with log weight 0 (draw ``position`` from ``pi_0``)."""
    position = jnp.asarray(position)
    if not jnp.issubdtype(position.dtype, jnp.floating):
        position = position.astype(jnp.result_type(float))
    log_prior, log_likelihood, prior_grad, likelihood_grad = _components(position, log_prior_fn, log_likelihood_fn)
    return AISState(
        position,
        log_prior,
        log_likelihood,
        prior_grad,
        likelihood_grad,
        jnp.zeros((), position.dtype),
        jnp.asarray(step_size, position.dtype),
    )


def _check_transition(transition: Any) -> None:
    if not (isinstance(transition, str) and transition == "hmc") and not callable(transition):
        raise ValueError(
            "transition must be 'hmc' or a kernel function "
            "transition(rng_key, position, logdensity_fn, step_size) -> (position, acceptance_rate), "
            f"got {transition!r}"
        )


def _uniforms(rng_key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Uniforms on ``(0, 1)`` (never 0, so their normal quantiles and logs are finite)."""
    return jax.random.uniform(rng_key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


def _momentum(noise: Array, inverse_mass_matrix: Array) -> Array:
    """Momentum ``~ N(0, M)``, ``M = inverse_mass_matrix^-1``, from standard-normal ``noise``.

    The transform of drhmc's ``_sample_momentum``, taking the noise instead of a key: a run
    draws all of a step's randomness in one call, because every threefry call site costs
    seconds of XLA compilation on CPU.
    """
    if inverse_mass_matrix.ndim == 1:
        return noise / jnp.sqrt(inverse_mass_matrix)
    cholesky = jnp.linalg.cholesky(inverse_mass_matrix)
    return jax.scipy.linalg.solve_triangular(cholesky.T, noise, lower=False)


def _hmc_move(
    uniforms, position, logdensity, logdensity_grad, logdensity_fn, step_size, num_leapfrog, inverse_mass_matrix
):
    """One HMC transition (momentum refresh, leapfrog, flip, Metropolis) with drhmc's leapfrog pieces.

    ``uniforms`` ``(d + 1,)`` on ``(0, 1)``: the first ``d`` give the momentum through the
    normal quantile function, the last one the Metropolis test.  Returns the proposal, the log
    acceptance probability (``-inf`` for a non-finite proposal), whether it was accepted and
    the energy error.  From a start with zero density any finite proposal is accepted (it
    cannot carry weight, and it keeps the chain from sticking).
    """
    momentum = _momentum(ndtri(uniforms[:-1]), inverse_mass_matrix)
    start = IntegratorState(position, momentum, logdensity, logdensity_grad)
    end, _ = _leapfrog_involution(logdensity_fn, inverse_mass_matrix, step_size, num_leapfrog)(start)
    log_joint_start = logdensity - _kinetic_energy(inverse_mass_matrix, momentum)
    log_joint_end = _finite_or_neg_inf(end.logdensity - _kinetic_energy(inverse_mass_matrix, end.momentum))
    log_joint_end = jnp.where(jnp.all(jnp.isfinite(end.position)), log_joint_end, -jnp.inf)
    delta = log_joint_end - log_joint_start
    log_accept = jnp.where(jnp.isnan(delta) | (log_joint_end == -jnp.inf), -jnp.inf, jnp.minimum(delta, 0.0))
    accepted = jnp.log(uniforms[-1]) < log_accept
    return end.position, log_accept, accepted, log_joint_start - log_joint_end


def ais_step(
    rng_key: Array,
    state: AISState,
    beta_prev: float | Array,
    beta: float | Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    step_size: float | Array | None = None,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
) -> tuple[AISState, AISInfo]:
    """One AIS step: ``log w += (beta - beta_prev) log L(x)``, then a ``pi_beta``-invariant move.

    ``pi_beta ∝ pi_0 L^beta`` (geometric path).  The move is HMC (``transition="hmc"``): a
    momentum ``~ N(0, M)``, ``num_leapfrog`` leapfrog steps of ``step_size`` (``state.step_size``
    when ``None``), a momentum flip and a Metropolis correction, built from the leapfrog of
    :mod:`numpyro_ext.infer.drhmc`; ``inverse_mass_matrix`` is ``(d,)`` or ``(d, d)`` (identity
    when ``None``).  A proposal with a non-finite log density, energy or position is rejected
    and flagged divergent, as is one whose energy error exceeds ``max_delta_energy``.

    ``transition`` may instead be a kernel ``transition(rng_key, position, logdensity_fn,
    step_size) -> (new_position, acceptance_rate)`` that leaves ``exp(logdensity_fn)``
    invariant for every ``logdensity_fn`` (reversible, for the BDMC and multi-sample bounds);
    a returned position with a non-finite tempered log density is rejected and counted.

    With ``beta < beta_prev`` this is a step of a reverse chain (its log weight then
    accumulates ``-log w``; :func:`ais_reverse` negates it).
    """
    _check_transition(transition)
    if isinstance(transition, str):
        randomness = _uniforms(rng_key, (state.position.shape[0] + 1,), state.position.dtype)
    else:
        randomness = rng_key
    return _step(
        randomness,
        state,
        beta_prev,
        beta,
        log_prior_fn,
        log_likelihood_fn,
        step_size,
        num_leapfrog,
        inverse_mass_matrix,
        transition,
        max_delta_energy,
    )


def _step(
    randomness,
    state,
    beta_prev,
    beta,
    log_prior_fn,
    log_likelihood_fn,
    step_size,
    num_leapfrog,
    inverse_mass_matrix,
    transition,
    max_delta_energy,
):
    """:func:`ais_step` given its randomness: ``(d + 1,)`` uniforms for HMC, a key for a user kernel."""
    dtype = state.position.dtype
    beta_prev = jnp.asarray(beta_prev, dtype)
    beta = jnp.asarray(beta, dtype)
    step_size = state.step_size if step_size is None else jnp.asarray(step_size, dtype)
    log_weight = state.log_weight + (beta - beta_prev) * state.log_likelihood

    def logdensity_fn(x):
        return jnp.asarray(log_prior_fn(x) + beta * log_likelihood_fn(x)).astype(dtype)

    if isinstance(transition, str):
        if inverse_mass_matrix is None:
            inverse_mass_matrix = jnp.ones_like(state.position)
        inverse_mass_matrix = jnp.asarray(inverse_mass_matrix, dtype)
        # at beta = 0 a zero likelihood must not turn the prior's density into NaN
        tempered_likelihood = jnp.where(beta == 0, 0.0, beta * state.log_likelihood)
        proposal, log_accept, accepted, energy_error = _hmc_move(
            randomness,
            state.position,
            state.log_prior + tempered_likelihood,
            state.log_prior_grad + beta * state.log_likelihood_grad,
            logdensity_fn,
            step_size,
            num_leapfrog,
            inverse_mass_matrix,
        )
        acceptance_rate = jnp.exp(log_accept)
        divergent = ~accepted & ((log_accept == -jnp.inf) | (energy_error > max_delta_energy))
    else:
        proposal, acceptance_rate = transition(randomness, state.position, logdensity_fn, step_size)
        proposal = jnp.asarray(proposal, dtype)
        accepted = jnp.any(proposal != state.position)
    log_prior, log_likelihood, prior_grad, likelihood_grad = _components(proposal, log_prior_fn, log_likelihood_fn)
    valid = jnp.isfinite(log_prior + jnp.where(beta == 0, 0.0, beta * log_likelihood))
    valid = valid & jnp.all(jnp.isfinite(proposal))
    if not isinstance(transition, str):
        divergent = ~valid
        acceptance_rate = jnp.where(valid & jnp.isfinite(acceptance_rate), acceptance_rate, 0.0)
    moved = accepted & valid

    def keep(new, old):
        return jnp.where(moved, new, old)

    new_state = AISState(
        keep(proposal, state.position),
        keep(log_prior, state.log_prior),
        keep(log_likelihood, state.log_likelihood),
        keep(prior_grad, state.log_prior_grad),
        keep(likelihood_grad, state.log_likelihood_grad),
        log_weight,
        step_size,
    )
    return new_state, AISInfo(jnp.asarray(acceptance_rate, dtype), moved, divergent, step_size)


# ---------------------------------------------------------------------------------------
# K chains through the schedule
# ---------------------------------------------------------------------------------------
def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _betas(betas: Any, dtype) -> tuple[Array, int]:
    if _is_concrete(betas):
        betas = check_schedule(np.asarray(betas), name="betas")
    betas = jnp.asarray(betas, dtype)
    return betas, int(betas.shape[0]) - 1


def _positions(init_positions: Any, name: str = "init_positions") -> Array:
    positions = jnp.asarray(init_positions)
    if positions.ndim != 2 or positions.shape[0] < 1:
        raise ValueError(
            f"{name} must be an array of shape (num_chains, d) with num_chains >= 1, got {positions.shape}"
        )
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    return positions


def _step_sizes(step_size: Any, num_steps: int, num_chains: int, dtype) -> Array:
    """``step_size`` (scalar, ``(T,)`` per temperature or ``(T, K)``) as ``(T, K)``."""
    if _is_concrete(step_size):
        values = np.asarray(step_size, dtype=np.float64)
        if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    steps = jnp.asarray(step_size, dtype)
    if steps.ndim == 1:
        steps = steps[:, None]
    try:
        return jnp.broadcast_to(steps, (num_steps, num_chains))
    except ValueError:
        raise ValueError(
            f"step_size must be a scalar or have shape ({num_steps},) or ({num_steps}, {num_chains}), "
            f"got shape {jnp.shape(step_size)}"
        ) from None


def _directions(betas: Array, steps: Array, reverse: Array) -> tuple[Array, Array, Array]:
    """Per-chain ``(beta_from, beta_to, step_size)``, each ``(T, K)``, for forward or reverse chains.

    ``steps`` ``(T, K)`` holds the step size of forward transition ``t`` (at ``beta_t``).  A
    reverse chain (``reverse[k]``) visits ``beta_T -> beta_{T-1} -> ... -> beta_0``, moving at
    ``beta_{T-1}, ..., beta_1`` with the forward step sizes there; its last move, at
    ``beta_0`` after the last increment, changes no weight (it reuses the step size of ``beta_1``).
    """
    num_steps = betas.shape[0] - 1
    ones = jnp.ones((num_steps, reverse.shape[0]), betas.dtype)
    forward_from, forward_to = betas[:-1, None] * ones, betas[1:, None] * ones
    backward_from, backward_to = betas[1:][::-1, None] * ones, betas[:-1][::-1, None] * ones
    backward_steps = jnp.concatenate([steps[:-1][::-1], steps[:1]], axis=0)
    return (
        jnp.where(reverse, backward_from, forward_from),
        jnp.where(reverse, backward_to, forward_to),
        jnp.where(reverse, backward_steps, steps),
    )


def _anneal(
    rng_key: Array,
    positions: Array,
    log_prior_fn: Callable,
    log_likelihood_fn: Callable,
    betas_from: Array,
    betas_to: Array,
    steps: Array,
    adapt: bool | Array,
    target_accept_prob: float | Array,
    adaptation_rate: float | Array,
    num_leapfrog: int,
    inverse_mass_matrix: Array | None,
    transition: str | Callable,
    max_delta_energy: float,
    chain_data: Any = None,
) -> tuple[AISState, AISInfo, Array]:
    """``K`` chains ``(K, d)`` through per-chain temperatures ``(T, K)``, in one ``lax.scan``.

    ``adapt`` may be traced, so a pilot and an estimating run share one compiled program.
    With ``chain_data`` (a pytree with leading axis ``K``) the densities are
    ``log_prior_fn(x, data_k)`` and ``log_likelihood_fn(x, data_k)`` per chain, so chains
    for many data sets share one flat chain axis (vmapping over data sets instead doubles XLA's
    compile time).  Returns the final states, the per-transition infos ``(T, K)`` and the
    adapted step sizes.
    """
    num_steps, num_chains = steps.shape
    if chain_data is None:
        chain_data = jnp.zeros(num_chains)

        def densities(data):
            return log_prior_fn, log_likelihood_fn

    else:

        def densities(data):
            return (lambda x: log_prior_fn(x, data)), (lambda x: log_likelihood_fn(x, data))

    def init(position, step_size, data):
        return ais_init(position, *densities(data), step_size)

    states = jax.vmap(init)(positions, steps[0], chain_data)

    def step(randomness, state, beta_prev, beta, eps, data):
        return _step(
            randomness,
            state,
            beta_prev,
            beta,
            *densities(data),
            eps,
            num_leapfrog,
            inverse_mass_matrix,
            transition,
            max_delta_energy,
        )

    _check_transition(transition)
    # one key per temperature, and one random call per step for all chains (see _momentum)
    keys = jax.random.split(rng_key, num_steps)
    dim, dtype = positions.shape[1], positions.dtype

    def body(states, inputs):
        key_t, beta_prev, beta, steps_t = inputs
        if isinstance(transition, str):
            randomness = _uniforms(key_t, (num_chains, dim + 1), dtype)
        else:
            randomness = jax.random.split(key_t, num_chains)
        eps = jnp.where(adapt, states.step_size, steps_t)
        new, info = jax.vmap(step)(randomness, states, beta_prev, beta, eps, chain_data)
        log_eps = jnp.log(eps) + adaptation_rate * (info.acceptance_rate - target_accept_prob)
        adapted = jnp.where(adapt, jnp.exp(jnp.clip(log_eps, -_LOG_STEP_BOUND, _LOG_STEP_BOUND)), eps)
        new = new._replace(step_size=adapted.astype(eps.dtype))
        return new, (info, new.step_size)

    final, (info, adapted) = jax.lax.scan(body, states, (keys, betas_from, betas_to, steps))
    return final, info, adapted


def _output(final: AISState, info: AISInfo, adapted: Array, reverse: Array) -> AISOutput:
    log_weights = jnp.where(reverse, -final.log_weight, final.log_weight)
    return AISOutput(
        log_weights, final.position, final, info.acceptance_rate, info.is_divergent, info.step_size, adapted
    )


def _check_kernel_args(transition, num_leapfrog, target_accept_prob=None):
    _check_transition(transition)
    if target_accept_prob is not None and _is_concrete(target_accept_prob):
        check_probability("target_accept_prob", float(target_accept_prob))
    return check_positive_int("num_leapfrog", num_leapfrog)


def ais(
    rng_key: Array,
    init_positions: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,
    step_size: float | Array = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    adapt_step_size: bool = False,
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
) -> AISOutput:
    """Forward AIS (Neal 2001) for ``K`` chains started at ``init_positions`` ``(K, d)`` ``~ pi_0``.

    ``betas`` ``(T + 1,)`` from 0 to 1, strictly increasing.  Transition ``t = 1..T`` runs at
    ``beta_t`` with ``step_size`` (a scalar, ``(T,)`` per temperature or ``(T, K)``).  Returns
    an :class:`AISOutput`; ``log_mean_exp(log_weights)`` estimates ``log Z`` from below
    (:func:`adapters.mi.log_mean_exp_bound`).

    ``adapt_step_size=True`` adapts each chain's step size at every temperature,
    ``log eps <- log eps + adaptation_rate * (a_t - target_accept_prob)`` with ``a_t`` the
    transition's acceptance probability, starting from ``step_size`` (its first row).  The step
    size then depends on the chain's own path, which biases the weights (see the module
    docstring): use it as a pilot, through :func:`tune_step_sizes`, and estimate with a fixed
    schedule.  Pure and ``jit``-able (``betas`` is validated when it is concrete).
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog, target_accept_prob if adapt_step_size else None)
    positions = _positions(init_positions)
    betas, num_steps = _betas(betas, positions.dtype)
    steps = _step_sizes(step_size, num_steps, positions.shape[0], positions.dtype)
    reverse = jnp.zeros(positions.shape[0], bool)
    betas_from, betas_to, steps = _directions(betas, steps, reverse)
    final, info, adapted = _anneal(
        rng_key,
        positions,
        log_prior_fn,
        log_likelihood_fn,
        betas_from,
        betas_to,
        steps,
        adapt_step_size,
        target_accept_prob,
        adaptation_rate,
        num_leapfrog,
        inverse_mass_matrix,
        transition,
        max_delta_energy,
    )
    return _output(final, info, adapted, reverse)


def ais_reverse(
    rng_key: Array,
    init_positions: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,
    step_size: float | Array = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    max_delta_energy: float = 1000.0,
) -> AISOutput:
    """Reverse AIS (the BDMC backward pass) from exact posterior samples ``init_positions`` ``(K, d)``.

    ``betas`` and ``step_size`` are given as for the forward run (increasing; ``(T,)`` or
    ``(T, K)`` indexed by forward transition): each chain adds
    ``(beta_{t-1} - beta_t) log L(x)`` and then runs the forward kernel of ``beta_{t-1}``
    (with the step size the forward run uses there), for ``t = T..1``, so it is the exact
    reversal of a forward chain (the last move, at ``beta_0``, changes no weight).
    ``log_weights`` ``(K,)`` are in the forward form ``log w`` along the reverse path, with
    ``E[1/w] = 1/Z`` when the start is exact, so ``-log_mean_exp(-log_weights)`` is a
    stochastic upper bound on ``log Z`` (Grosse et al. 2015).  For ``T = 1``, ``log w = log L(x)``.
    """
    num_leapfrog = _check_kernel_args(transition, num_leapfrog)
    positions = _positions(init_positions)
    betas, num_steps = _betas(betas, positions.dtype)
    steps = _step_sizes(step_size, num_steps, positions.shape[0], positions.dtype)
    reverse = jnp.ones(positions.shape[0], bool)
    betas_from, betas_to, steps = _directions(betas, steps, reverse)
    final, info, adapted = _anneal(
        rng_key,
        positions,
        log_prior_fn,
        log_likelihood_fn,
        betas_from,
        betas_to,
        steps,
        False,
        0.65,
        1.0,
        num_leapfrog,
        inverse_mass_matrix,
        transition,
        max_delta_energy,
    )
    return _output(final, info, adapted, reverse)


def pilot_step_sizes(adapted_step_size: Array, log_weights: Array) -> Array:
    """One step size per temperature from an adaptive run's ``adapted_step_size`` ``(..., T, K)``.

    The geometric mean, over the chains (and any leading axes) whose weight is not zero, of each
    chain's step size after its update at that temperature (a chain stuck outside the support
    only ever shrinks its step size).  ``log_weights`` is ``(..., K)``; returns ``(T,)``.
    """
    adapted = jnp.moveaxis(adapted_step_size, -2, 0).reshape(adapted_step_size.shape[-2], -1)
    finite = jnp.isfinite(log_weights).reshape(-1)
    mask = jnp.where(jnp.any(finite), finite, jnp.ones_like(finite)).astype(adapted.dtype)
    return jnp.exp(jnp.sum(jnp.log(adapted) * mask, axis=-1) / jnp.sum(mask))


def tune_step_sizes(
    rng_key: Array,
    init_positions: Array,
    log_prior_fn: LogDensityFn,
    log_likelihood_fn: LogDensityFn,
    betas: Any,
    step_size: float = 0.1,
    num_leapfrog: int = 10,
    inverse_mass_matrix: Array | None = None,
    transition: str | Callable = "hmc",
    target_accept_prob: float = 0.65,
    adaptation_rate: float = 1.0,
    max_delta_energy: float = 1000.0,
) -> Array:
    """A step-size schedule ``(T,)`` from an adaptive pilot run of :func:`ais` (see the module docstring).

    Give the pilot its own ``rng_key`` and ``init_positions`` (independent of the estimating
    run's), so the schedule is independent of the chains that use it and AIS stays unbiased.
    """
    output = ais(
        rng_key,
        init_positions,
        log_prior_fn,
        log_likelihood_fn,
        betas,
        step_size=step_size,
        num_leapfrog=num_leapfrog,
        inverse_mass_matrix=inverse_mass_matrix,
        transition=transition,
        adapt_step_size=True,
        target_accept_prob=target_accept_prob,
        adaptation_rate=adaptation_rate,
        max_delta_energy=max_delta_energy,
    )
    return pilot_step_sizes(output.adapted_step_size, output.log_weights)


# ---------------------------------------------------------------------------------------
# Densities from a model, a Target or functions
# ---------------------------------------------------------------------------------------
class _Runner(NamedTuple):
    """The jitted pieces of an :class:`AIS` run for one set of model arguments."""

    sample_init: Callable
    anneal: Callable
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
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*model_args, **model_kwargs)
    sample_sites = {name: site for name, site in trace.items() if site["type"] == "sample"}
    latent = sorted(name for name, site in sample_sites.items() if not site["is_observed"])
    observed = [name for name, site in sample_sites.items() if site["is_observed"]]
    discrete = [name for name in latent if sample_sites[name]["fn"].support.is_discrete]
    if discrete:
        raise ValueError(f"model: AIS needs continuous latent sites, but {discrete} are discrete; marginalise them out")
    if not latent:
        raise ValueError("model: AIS needs at least one latent sample site, the model has none")
    if not observed and proposal is None:
        raise ValueError(
            "model: the model has no observed sites, so prior and posterior coincide; observe data (obs=...) "
            "or give a proposal to anneal from"
        )
    prototype = unconstrain_fn(model, model_args, model_kwargs, {k: trace[k]["value"] for k in latent})
    _, unravel = ravel_pytree(prototype)
    # The prior: the model with its observed sites (and factors) hidden, so its potential is
    # -sum log p(latent | parents) minus the Jacobians of the unconstraining transforms.
    prior_model = handlers.block(model, hide=observed)

    def log_joint(x):
        return -potential_energy(model, model_args, model_kwargs, unravel(x))

    def log_prior(x):
        return -potential_energy(prior_model, model_args, model_kwargs, unravel(x))

    def log_likelihood(x):
        return log_joint(x) - log_prior(x)

    def sample_one(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*model_args, **model_kwargs)
        values = unconstrain_fn(model, model_args, model_kwargs, {k: tr[k]["value"] for k in latent})
        return ravel_pytree(values)[0]

    def constrain(positions):
        one = lambda x: constrain_fn(model, model_args, model_kwargs, unravel(x), return_deterministic=True)  # noqa: E731
        return jax.vmap(one)(positions)

    def unconstrain(samples):
        if not isinstance(samples, Mapping):
            raise ValueError(
                f"posterior_samples must be a dict of constrained latent sites {latent}, got {type(samples).__name__}"
            )
        missing = [k for k in latent if k not in samples]
        if missing:
            raise ValueError(f"posterior_samples is missing the latent sites {missing} (expected {latent})")
        values = {k: jnp.asarray(samples[k]) for k in latent}
        one = lambda v: ravel_pytree(unconstrain_fn(model, model_args, model_kwargs, v))[0]  # noqa: E731
        return jax.vmap(one)(values)

    def sample_prior(key, num):
        return jax.vmap(sample_one)(jax.random.split(key, num))

    if proposal is None:
        return _Problem(log_prior, log_likelihood, sample_prior, constrain, unconstrain)
    return _proposal_problem(log_joint, proposal, constrain, unconstrain)


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
    return _positions(samples, "posterior_samples")


# ---------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------
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

    The numpy half (bounds, ESS, resampling rule, summary) is :class:`adapters.mi.AISResultBase`.
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
    :meth:`run_reverse`; any fixed schedule keeps both bounds valid).
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

        self.config = AISConfig(
            num_steps=num_steps,
            num_chains=num_chains,
            schedule=schedule,
            transition=transition,
            step_size=step_size,
            num_leapfrog=num_leapfrog,
            adapt_step_size=adapt_step_size,
            target_accept_prob=target_accept_prob,
            adaptation_rate=adaptation_rate,
            max_delta_energy=max_delta_energy,
        )
        if (model is None) == (log_likelihood_fn is None):
            raise ValueError(
                "AIS: give exactly one of `model` (a NumPyro model or adapters.Target) and `log_likelihood_fn`"
            )
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
            raise ValueError(f"model must be a NumPyro model (a callable) or an adapters.Target, got {model!r}")
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

    def _runner(self, model_args: tuple, model_kwargs: dict):
        """Jitted ``(sample_init, anneal)`` for these arguments, and their array leaves.

        Array leaves of the model arguments are traced (so a second run on same-shaped data,
        or the reverse run after a forward one, reuses the compiled program); other leaves are
        part of the cache key.  ``anneal(dynamic, key, positions, reverse, steps, adapt)`` runs
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

        @functools.partial(jax.jit, static_argnums=2)
        def sample_init(dynamic, key, num):
            return problem_of(dynamic).sample_init(key, num)

        @jax.jit
        def anneal(dynamic, key, positions, reverse, steps, adapt):
            problem = problem_of(dynamic)
            betas = jnp.asarray(cfg.betas, positions.dtype)
            steps = jnp.broadcast_to(steps.astype(positions.dtype)[:, None], (cfg.num_steps, positions.shape[0]))
            betas_from, betas_to, steps = _directions(betas, steps, reverse)
            final, info, adapted = _anneal(
                key,
                positions,
                problem.log_prior_fn,
                problem.log_likelihood_fn,
                betas_from,
                betas_to,
                steps,
                adapt,
                cfg.target_accept_prob,
                cfg.adaptation_rate,
                cfg.num_leapfrog,
                inverse_mass_matrix,
                cfg.transition,
                cfg.max_delta_energy,
            )
            return _output(final, info, adapted, reverse)

        @jax.jit
        def constrain(dynamic, positions):
            return problem_of(dynamic).constrain(positions)

        @jax.jit
        def unconstrain(dynamic, samples):
            return problem_of(dynamic).unconstrain(samples)

        runner = _Runner(sample_init, anneal, constrain, unconstrain)
        if cache_key is not None:
            self._runners[cache_key] = runner
        return runner, dynamic

    def _tune(self, rng_key: Array, runner: _Runner, dynamic: list) -> Array:
        """The pilot: adaptive forward chains from fresh draws of ``pi_0``, one step size per temperature."""
        sample_init, anneal = runner.sample_init, runner.anneal
        cfg = self.config
        init_key, run_key = jax.random.split(rng_key)
        init = sample_init(dynamic, init_key, cfg.num_chains)
        forward = jnp.zeros(cfg.num_chains, bool)
        steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = anneal(dynamic, run_key, init, forward, steps, True)
        return pilot_step_sizes(output.adapted_step_size, output.log_weights)

    # ---- running ---------------------------------------------------------------------
    def run(self, rng_key: Array, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Forward AIS: ``K`` chains from ``pi_0``; ``result.log_Z`` is a stochastic lower bound."""
        cfg = self.config
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        runner, dynamic = self._runner(model_args, model_kwargs)
        pilot_key, init_key, run_key = jax.random.split(rng_key, 3)
        init = runner.sample_init(dynamic, init_key, cfg.num_chains)
        if cfg.adapt_step_size:
            steps = self._tune(pilot_key, runner, dynamic)
        else:
            steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = runner.anneal(dynamic, run_key, init, jnp.zeros(cfg.num_chains, bool), steps, False)
        self.step_sizes = np.asarray(steps)
        return AISResult(output, "lower", functools.partial(runner.constrain, dynamic), steps)

    def run_reverse(self, rng_key: Array, posterior_samples: Any, *model_args: Any, **model_kwargs: Any) -> AISResult:
        """Reverse AIS (BDMC) from exact posterior samples; ``result.log_Z`` is a stochastic upper bound.

        ``posterior_samples``: for a model, a dict of constrained latent sites with a leading
        axis of ``K'`` draws (e.g. the latents that simulated the data); otherwise an array
        ``(K', d)``.  One reverse chain per draw.  The step sizes are :attr:`step_sizes` from
        the last :meth:`run` (any fixed schedule keeps the bound valid), else, when adapting,
        those of a fresh pilot forward run, else the fixed ``step_size``.
        """
        cfg = self.config
        model_args, model_kwargs = self._bind(model_args, model_kwargs)
        runner, dynamic = self._runner(model_args, model_kwargs)
        if isinstance(posterior_samples, Mapping):
            posterior_samples = {k: jnp.asarray(v) for k, v in posterior_samples.items()}
        init = runner.unconstrain(dynamic, posterior_samples)
        pilot_key, run_key = jax.random.split(rng_key)
        if self.step_sizes is not None and self.step_sizes.shape == (cfg.num_steps,):
            steps = jnp.asarray(self.step_sizes, init.dtype)
        elif cfg.adapt_step_size:
            steps = self._tune(pilot_key, runner, dynamic)
            self.step_sizes = np.asarray(steps)
        else:
            steps = jnp.full(cfg.num_steps, cfg.step_size, init.dtype)
        output = runner.anneal(dynamic, run_key, init, jnp.ones(init.shape[0], bool), steps, False)
        return AISResult(output, "upper", functools.partial(runner.constrain, dynamic), steps)
