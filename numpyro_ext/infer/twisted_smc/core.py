"""The pure core of twisted SMC in JAX: one particle's move, the filter's state and step, ``run_filter``.

Equations and conventions: :mod:`numpyro_ext.infer.twisted_smc`.  Everything here is a pure
function of its arguments (jit/vmap-able); the weights, ESS and resampling come from
:mod:`numpyro_ext.infer.smc_util`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers

from adapters.smc import check_observed_shape
from numpyro_ext.infer.smc_util import effective_sample_size, log_mean_exp, resample, safe_logsumexp

__all__ = [
    "FilterState",
    "check_data",
    "Move",
    "SMCOutput",
    "StepSettings",
    "filter_step",
    "genealogy",
    "move_particle",
    "paths",
    "resample_step",
    "run_filter",
    "update_log_Z",
]


# ---------------------------------------------------------------------------------------
# One particle's move: proposal, model, and their log densities
# ---------------------------------------------------------------------------------------
def _in_order(values: Sequence[Any] | None) -> Callable[[dict], Any]:
    """A ``substitute_fn`` that hands the latent sample sites ``values`` in the order they occur (shapes checked)."""
    queue = list(values or [])
    position = [0]

    def substitute_fn(msg):
        if msg["type"] == "sample" and not msg["is_observed"] and queue:
            value = queue.pop(0)
            expected = tuple(msg["fn"].shape(msg["kwargs"].get("sample_shape", ())))
            if tuple(jnp.shape(value)) != expected:
                raise ValueError(
                    f"exact_samples: site {msg['name']!r} (latent site {position[0]} in order) has values of shape "
                    f"{tuple(jnp.shape(value))} per path, the model's are {expected}"
                )
            position[0] += 1
            return value
        return None

    return substitute_fn


def _site_log_prob(site: dict) -> jax.Array:
    value = jnp.sum(site["fn"].log_prob(site["value"]))
    return value if site.get("scale") is None else site["scale"] * value


def _latent_sites(trace: Mapping[str, dict]) -> list[tuple[str, dict]]:
    return [(k, s) for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]


def _check_proposed(proposed: Mapping[str, dict], latents: list[tuple[str, dict]], clamped: bool) -> None:
    """Proposal sites match model latent sites BY NAME (as in Pyro's ``SMCFilter``)."""
    model_names = [k for k, _ in latents]
    for name in proposed:
        if name not in model_names:
            raise ValueError(f"proposal: it samples site {name!r}, which is not a latent sample site of the model")
    if clamped and list(proposed) != model_names:
        raise ValueError(
            f"proposal: with exact_samples (conditional SMC, upper bounds) its latent sites {list(proposed)} must be "
            f"the model's {model_names}, one to one and in the same order"
        )


class Move(NamedTuple):
    """One particle's move: its new ``state``, the model's latent values (in order) and its weight."""

    state: dict
    latents: tuple
    log_weight: jax.Array  # log p(x_t, y_t | .) - log q(x_t | .)


def move_particle(model_fn, proposal_fn, state, rng_key, args, clamp, names: list) -> Move:
    """Propose one particle's new sites, run the model on them, and weight them (one particle).

    The proposal's latent sites are replayed into the model BY NAME; model latent sites the
    proposal does not sample are drawn from the model and cancel.  ``clamp``: latent values
    (in order) that replace the proposal's (or, bootstrap, the model's) draws.  ``names`` is
    filled with the model's latent site names.
    """
    proposal_key, model_key = jax.random.split(rng_key)
    if proposal_fn is None:  # bootstrap: q = the model's transition, the latent terms cancel
        new_state = dict(state)
        fn = handlers.substitute(handlers.seed(model_fn, model_key), substitute_fn=_in_order(clamp))
        trace = handlers.trace(fn).get_trace(new_state, *args)
        latents = _latent_sites(trace)
        log_weight = sum(
            (_site_log_prob(s) for s in trace.values() if s["type"] == "sample" and s["is_observed"]),
            jnp.zeros(()),
        )
    else:
        proposal_state = dict(state)
        fn = handlers.substitute(handlers.seed(proposal_fn, proposal_key), substitute_fn=_in_order(clamp))
        proposed = dict(_latent_sites(handlers.trace(fn).get_trace(proposal_state, *args)))
        log_q = sum((_site_log_prob(s) for s in proposed.values()), jnp.zeros(()))
        new_state = dict(state)
        values = {k: s["value"] for k, s in proposed.items()}
        fn = handlers.substitute(handlers.seed(model_fn, model_key), data=values)
        trace = handlers.trace(fn).get_trace(new_state, *args)
        latents = _latent_sites(trace)
        _check_proposed(proposed, latents, clamp is not None)
        weighted = (s for k, s in trace.items() if s["type"] == "sample" and (s["is_observed"] or k in proposed))
        log_weight = sum((_site_log_prob(s) for s in weighted), jnp.zeros(())) - log_q
    if not latents:
        raise ValueError("model: its init/step samples no latent site (every sample statement is observed)")
    names[:] = [k for k, _ in latents]
    log_weight = jnp.where(jnp.isnan(log_weight), -jnp.inf, log_weight)
    return Move(new_state, tuple(s["value"] for _, s in latents), log_weight)


def _check_observed(trace: Mapping[str, dict], args: Sequence[Any], full: Sequence[Any], role: str) -> None:
    """Each observed site whose value IS one of ``args`` (the data as passed, one step of it)
    has the shape of the site (:func:`adapters.smc.check_observed_shape`)."""
    for name, site in trace.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        for i, arg in enumerate(args):
            if arg is not None and site["value"] is arg:
                shape = tuple(site["fn"].batch_shape) + tuple(site["fn"].event_shape)
                check_observed_shape(f"{role}[{i}]", jnp.shape(full[i]), name, jnp.shape(arg), shape)


def check_data(model: Any, step_args: Sequence[Any], init_args: Sequence[Any]) -> tuple[dict, dict]:
    """Trace ``model.init`` and the model's first step, for one particle, on the data.

    Every observed site fed directly by an argument must have the argument's shape (one
    step's slice for ``step_args``): data that would silently broadcast (``ys`` of shape
    ``(T, 3)`` for a scalar observation) are refused with the argument's name.  Returns the
    latent site names ``{"init": [...], "step": [...]}`` and the particle's state after ``init``.
    """
    state: dict = {}
    trace = handlers.trace(handlers.seed(model.init, rng_seed=0)).get_trace(state, *init_args)
    _check_observed(trace, init_args, init_args, "init_args")
    names = {"init": [k for k, _ in _latent_sites(trace)]}
    init_state = dict(state)
    first = tuple(None if a is None else a[0] for a in step_args)
    trace = handlers.trace(handlers.seed(model.step, rng_seed=1)).get_trace(state, *first)
    _check_observed(trace, first, step_args, "step_args")
    names["step"] = [k for k, _ in _latent_sites(trace)]
    return names, init_state


# ---------------------------------------------------------------------------------------
# The filter: state, the resampling and normaliser updates every step shares, run_filter
# ---------------------------------------------------------------------------------------
class SMCOutput(NamedTuple):
    """Everything one filter run returns (arrays; ``T`` steps after the init, ``N`` particles).

    * ``log_Z``: ``log Z_hat`` (``-inf`` if every particle became impossible);
    * ``log_weights``: ``(N,)`` final log weights (unnormalised, since the last resampling);
    * ``init_latents``: tuple of ``(N, ...)`` latent values of the init, per site in order;
    * ``step_latents``: tuple of ``(T, N, ...)`` latent values of each step, per site;
    * ``states``: dict of ``(T + 1, N, ...)`` particle states after the init and each step;
    * ``step_log_weights``: ``(T + 1, N)`` log weights after each move (target ``pi_t``);
    * ``log_twists``: ``(T + 1, N)`` ``log psi_t`` of each particle after each move (0 at ``T``);
    * ``ancestors``: ``(T, N)`` index, in the particles of step ``t - 1``, of each particle's parent;
    * ``ess``: ``(T + 1,)`` effective sample size after each move; ``resampled``: ``(T,)`` flags;
    * ``extras``: ``None``, or for a token model the pair weights twist learning uses.
    """

    log_Z: jax.Array
    log_weights: jax.Array
    init_latents: tuple
    step_latents: tuple
    states: dict
    step_log_weights: jax.Array
    log_twists: jax.Array
    ancestors: jax.Array
    ess: jax.Array
    resampled: jax.Array
    extras: dict | None = None


class FilterState(NamedTuple):
    """The filter's carry between steps: the ``N`` particles (a dict of ``(N, ...)`` states, or the
    token buffer ``(N, T)``), their log weights ``(N,)`` and ``log psi`` ``(N,)``, ``log Z_hat`` so
    far and the key of the next step."""

    particles: Any
    log_weights: jax.Array
    log_twists: jax.Array
    log_Z: jax.Array
    rng_key: jax.Array


def resample_step(
    rng_key: jax.Array, log_weights: jax.Array, ess_threshold: float, method: str, clamped: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Ancestors ``(N,)``, the log weights after them and the flag: resample when ``ESS < ess_threshold * N``.

    A clamped particle 0 (conditional SMC) is its own ancestor.  Resampled weights restart at 0.
    """
    num_particles = log_weights.shape[0]
    ess = effective_sample_size(log_weights)
    do_resample = ess < ess_threshold * num_particles
    index = jnp.where(do_resample, resample(rng_key, log_weights, method), jnp.arange(num_particles))
    if clamped:
        index = index.at[0].set(0)
    return index, jnp.where(do_resample, jnp.zeros_like(log_weights), log_weights), do_resample


def update_log_Z(log_Z: jax.Array, log_weights: jax.Array, new_log_weights: jax.Array) -> jax.Array:
    """``log Z_hat`` times the step's ``sum_i W_{t-1}^i w_t^i`` (``-inf`` once every weight is zero)."""
    before = safe_logsumexp(log_weights)
    return jnp.where(jnp.isfinite(before), log_Z + safe_logsumexp(new_log_weights) - before, -jnp.inf)


def _stack_args(step_args: Sequence[Any], num_steps: int | None) -> tuple[tuple, int]:
    leaves = [a for a in step_args if a is not None]
    if not leaves:
        if num_steps is None:
            raise ValueError("num_steps: needed when there are no step arguments to take the time axis from")
        return tuple(step_args), int(num_steps)
    lengths = {int(jnp.shape(a)[0]) for a in leaves}
    if len(lengths) != 1:
        raise ValueError(f"step_args: every step argument needs the same leading (time) length, got {sorted(lengths)}")
    return tuple(step_args), lengths.pop()


def _expand(flags: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.reshape(flags, flags.shape + (1,) * (jnp.ndim(like) - 1))


def _with_clamped(free: Move, fixed: Move) -> Move:
    """``free`` (``(N, ...)``) with particle 0 replaced by ``fixed`` (one particle)."""
    is_clamped = jnp.arange(free.log_weight.shape[0]) == 0
    return jax.tree.map(lambda a, b: jnp.where(_expand(is_clamped, a), b[None], a), free, fixed)


def _log_twist_fn(twist: Callable | None, twist_params: Any) -> Callable:
    def log_twist(t, state):
        if twist is None:
            return jnp.zeros(())
        value = twist(t, state) if twist_params is None else twist(twist_params, t, state)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    return log_twist


class StepSettings(NamedTuple):
    """The resampling settings of every filter step: the scheme, the ESS trigger, whether particle 0 is clamped."""

    resampling: str
    ess_threshold: float
    clamped: bool


def filter_step(
    step: Callable,
    proposal_step: Callable | None,
    log_twist: Callable,
    num_steps: int,
    settings: StepSettings,
    names: list,
    carry: FilterState,
    inputs: tuple,
) -> tuple[FilterState, tuple]:
    """Step ``t`` of the state-space filter (with the leading arguments bound, the ``jax.lax.scan`` body
    of :func:`run_filter`).

    ``inputs = (t, args_t, clamp_t)``: resample when ``ESS < ess_threshold * N``, move every
    particle by ``step`` (proposed by ``proposal_step``; particle 0 along ``clamp_t`` when
    clamped), reweight by eq. 4 with ``log_twist(t, state)`` (0 at ``t = num_steps``).  Returns
    the new carry and the step's record ``(latents, states, log_weights, log_twists, ancestors,
    ess, resampled)``.
    """
    resampling, ess_threshold, clamped = settings
    t, args_t, clamp_t = inputs
    key, resample_key, move_key = jax.random.split(carry.rng_key, 3)
    index, log_w, do_resample = resample_step(resample_key, carry.log_weights, ess_threshold, resampling, clamped)
    state = jax.tree.map(lambda x: x[index], carry.particles)
    log_psi = carry.log_twists[index]
    move_keys = jax.random.split(move_key, log_w.shape[0])

    def move_one(s, k, clamp_values):
        return move_particle(step, proposal_step, s, k, tuple(args_t), clamp_values, names)

    moved = jax.vmap(lambda s, k: move_one(s, k, None))(state, move_keys)
    if clamped:
        fixed = move_one(jax.tree.map(lambda x: x[0], state), move_keys[0], clamp_t)
        moved = _with_clamped(moved, fixed)
    if set(moved.state) != set(state):
        raise ValueError(
            f"model: step changed the keys of `state` from {sorted(state)} to {sorted(moved.state)}; "
            "init must set every key that step uses"
        )
    new_psi = jax.vmap(lambda s: log_twist(t, s))(moved.state)
    new_psi = jnp.where(t == num_steps, 0.0, new_psi)
    increment = moved.log_weight + new_psi - log_psi
    increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
    new_log_w = log_w + increment
    log_Z = update_log_Z(carry.log_Z, log_w, new_log_w)
    out = (moved.latents, moved.state, new_log_w, new_psi, index, effective_sample_size(new_log_w), do_resample)
    return FilterState(moved.state, new_log_w, new_psi, log_Z, key), out


def run_filter(
    rng_key: jax.Array,
    model: Any,
    step_args: Sequence[Any],
    num_particles: int,
    *,
    init_args: Sequence[Any] = (),
    proposal: Any = None,
    twist: Callable | None = None,
    twist_params: Any = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
    num_steps: int | None = None,
    names: dict | None = None,
) -> SMCOutput:
    """One run of (twisted, conditional) SMC: a pure function of its arguments, jit/vmap-able.

    Args:
        model: object with ``init(state, *init_args)`` and ``step(state, *args_t)``.
        step_args: arrays with a leading time axis ``T`` (``None`` entries pass ``None``).
        proposal: ``None`` (bootstrap) or an object with the model's ``init``/``step`` convention,
            replayed into the model by site name (as ``SMCFilter`` does): each of its latent
            sample sites must carry the name of the model's latent site it proposes.
        twist: ``None``, ``twist(t, state)`` or, with ``twist_params``, ``twist(params, t, state)``
            giving one particle's ``log psi_t`` (``t = 0..T-1``; ``psi_T = 1``).
        ess_threshold: resample before a move when ``ESS < ess_threshold * N`` (``0``: never,
            i.e. sequential importance sampling; ``1``: whenever the weights are not uniform).
        clamp: ``(init_latents, step_latents)`` of one path (per site, in order; steps with a
            leading ``T`` axis): particle 0 follows it and is never resampled away
            (conditional SMC).  With a proposal its latent sites must be the model's, in order.
        names: if given, filled with the latent site names ``{"init": [...], "step": [...]}``.
    """
    step_args, T = _stack_args(step_args, num_steps)
    names = {} if names is None else names
    log_twist = _log_twist_fn(twist, twist_params)
    init_names: list = []
    step_names: list = []
    keys = jax.random.split(rng_key, num_particles + 1)
    rng_key, init_keys = keys[0], keys[1:]
    proposal_init = None if proposal is None else proposal.init
    proposal_step = None if proposal is None else proposal.step

    def init_one(key, clamp_values):
        move = move_particle(model.init, proposal_init, {}, key, tuple(init_args), clamp_values, init_names)
        return move._replace(log_weight=move.log_weight + log_twist(jnp.array(0), move.state))

    first = jax.vmap(lambda k: init_one(k, None))(init_keys)
    if clamp is not None:
        first = _with_clamped(first, init_one(init_keys[0], clamp[0]))
    first_twist = jax.vmap(lambda s: log_twist(jnp.array(0), s))(first.state)

    settings = StepSettings(resampling, ess_threshold, clamp is not None)
    body = functools.partial(filter_step, model.step, proposal_step, log_twist, T, settings, step_names)
    xs = (jnp.arange(1, T + 1), step_args, None if clamp is None else clamp[1])
    carry = FilterState(first.state, first.log_weight, first_twist, log_mean_exp(first.log_weight), rng_key)
    final, outs = jax.lax.scan(body, carry, xs, length=T)
    latents, states, step_log_w, step_psi, ancestors, ess, resampled = outs
    names["init"], names["step"] = list(init_names), list(step_names)
    return SMCOutput(
        log_Z=final.log_Z,
        log_weights=final.log_weights,
        init_latents=first.latents,
        step_latents=latents,
        states=jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first.state, states),
        step_log_weights=jnp.concatenate([first.log_weight[None], step_log_w]),
        log_twists=jnp.concatenate([first_twist[None], step_psi]),
        ancestors=ancestors,
        ess=jnp.concatenate([effective_sample_size(first.log_weight)[None], ess]),
        resampled=resampled,
    )


def genealogy(output: SMCOutput) -> jax.Array:
    """``(T + 1, N)`` index of each final particle's ancestor at every step (the last row is ``arange(N)``)."""
    num_particles = output.log_weights.shape[0]

    def back(index, ancestors_t):
        parent = ancestors_t[index]
        return parent, parent

    last = jnp.arange(num_particles)
    _, earlier = jax.lax.scan(back, last, output.ancestors, reverse=True)
    return jnp.concatenate([earlier, last[None]])


def paths(output: SMCOutput) -> tuple[tuple, tuple, dict]:
    """The final particles' full paths.

    Returns init latents ``(N, ...)``, step latents ``(N, T, ...)`` and states ``(N, T + 1, ...)``.
    """
    lineage = genealogy(output)  # (T + 1, N)
    init = tuple(v[lineage[0]] for v in output.init_latents)
    steps = tuple(jnp.swapaxes(jax.vmap(lambda v, i: v[i])(v, lineage[1:]), 0, 1) for v in output.step_latents)
    states = jax.tree.map(lambda v: jnp.swapaxes(jax.vmap(lambda x, i: x[i])(v, lineage), 0, 1), output.states)
    return init, steps, states
