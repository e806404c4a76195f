"""Twisted sequential Monte Carlo with learned twists and bidirectional log-Z bounds, in JAX/NumPyro.

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546); SIXO: Lawson, Ravent\u00f3s,
Warrington & Linderman, NeurIPS 2022.

Target and intermediate targets (the paper's eqs. 1-3).  A state-space model written in
Pyro's ``SMCFilter`` convention -- an object with ``init(state, *init_args)`` and
``step(state, *step_args)`` that call ``numpyro.sample`` and keep the particle's state in
the dict ``state`` -- defines the unnormalised path density
``p(x_{0:T}, y_{1:T}) = p(x_0) prod_t p(x_t | x_{t-1}) p(y_t | x_t)`` (every sample site,
observed ones included).  With twists ``psi_t`` (``psi_T = 1``) SMC targets

    pi_t(x_{0:t}) ∝ p(x_{0:t}, y_{1:t}) psi_t(x_{0:t}),      pi_T = sigma = p(x_{0:T} | y_{1:T}),

and ``Z = p(y_{1:T})``.  Particles are extended by a proposal ``q`` (the model's own
transition by default, i.e. the bootstrap filter; or a guide object with the same
``init``/``step`` convention) and weighted by the incremental weight (eq. 4)

    w_t = p(x_t, y_t | x_{t-1}) psi_t(x_{0:t}) / (q(x_t | x_{0:t-1}) psi_{t-1}(x_{0:t-1})),

resampled (multinomial, systematic or stratified) when the effective sample size falls
under ``ess_threshold * N``.  ``Z_hat = prod_t sum_i W_{t-1}^i w_t^i`` is unbiased for any
twist, so ``E log Z_hat <= log Z`` (SMC lower bound); its variance vanishes for the optimal
twists ``psi_t* = p(y_{t+1:T} | x_t)``.  Twists here are Markov: ``log psi_t`` is a function
of the time index and the particle's ``state`` dict.

Twist learning (Sec. 4): contrastive twist learning (CTL, eq. 15) follows

    grad L(theta) = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t],

with ``sigma`` from exact samples when given (else the final weighted SMC paths) and
``pi_t`` from the SMC particles at step ``t`` (self-normalised weights); SIXO (the
comparison) fits ``log psi_t`` as the logit of a classifier of ``sigma``'s states (positive)
against the untwisted intermediate target's (negative).

Bounds (Sec. 5): SIS/IWAE and SMC lower bounds ``E log Z_hat``; given exact target samples,
the IWAE upper bound (one of the ``K`` importance samples replaced by an exact sample, no
resampling) and the conditional-SMC upper bound (one particle clamped to the exact path),
both ``>= log Z`` in expectation, so the user gets a sandwich on ``log Z`` and intervals on
``KL(q || sigma)`` and ``KL(sigma || q)`` of the (twisted) proposal's path distribution.

Shapes: ``N`` particles, ``T`` steps.  Step arguments carry a leading time axis ``T``; the
state is a dict of per-particle arrays (leading axis ``N`` inside the filter).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from numpyro import handlers

from adapters.smc import LogZBounds, combine_bounds
from adapters.validation import check_choice, check_positive_int

RESAMPLING = ("multinomial", "systematic", "stratified")
TWIST_METHODS = ("ctl", "sixo")


# ---------------------------------------------------------------------------------------
# Resampling and weights
# ---------------------------------------------------------------------------------------
def normalized_weights(log_weights: jax.Array) -> jax.Array:
    """Self-normalised weights ``W`` (shape ``(N,)``); uniform when every weight is zero."""
    finite = jnp.any(jnp.isfinite(log_weights))
    safe = jnp.where(finite, log_weights, 0.0)
    return jax.nn.softmax(safe)


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    """``1 / sum_i W_i^2`` in log space (0 when every weight is zero)."""
    ess = jnp.exp(2 * logsumexp(log_weights) - logsumexp(2 * log_weights))
    return jnp.where(jnp.any(jnp.isfinite(log_weights)), ess, 0.0)


def resample(rng_key: jax.Array, log_weights: jax.Array, method: str = "systematic") -> jax.Array:
    """Ancestor indices ``(N,)`` drawn from the normalised weights.

    ``multinomial``: i.i.d. categorical draws; ``systematic``: one uniform ``u``, points
    ``(u + i) / N``; ``stratified``: one uniform per stratum ``(u_i + i) / N``.  All three
    are unbiased (each index's expected count is ``N W_i``); the last two have lower variance.
    """
    check_choice("resampling", method, RESAMPLING)
    num = log_weights.shape[0]
    weights = normalized_weights(log_weights)
    if method == "multinomial":
        return jax.random.categorical(rng_key, jnp.log(weights), shape=(num,))
    offsets = jax.random.uniform(rng_key, () if method == "systematic" else (num,))
    points = (jnp.arange(num) + offsets) / num
    cumulative = jnp.cumsum(weights)
    return jnp.minimum(jnp.searchsorted(cumulative, points, side="right"), num - 1)


def _log_mean_exp(x: jax.Array, axis: int | None = None) -> jax.Array:
    n = x.shape[axis] if axis is not None else x.size
    return logsumexp(x, axis=axis) - math.log(n)


# ---------------------------------------------------------------------------------------
# Twists
# ---------------------------------------------------------------------------------------
class QuadraticTwist:
    """Learnable Gaussian twist ``log psi_t(x) = -0.5 x^T L_t L_t^T x + h_t^T x + c_t`` on ``state[site]``.

    Params: ``{"L": (T, d, d) lower-triangular, "h": (T, d), "c": (T,)}`` for ``t = 0..T-1``
    (``psi_T = 1`` is fixed by the filter; the constants ``c_t`` do not change SMC, but a
    classifier's logit, SIXO's, needs them).  The optimal twist of a linear-Gaussian state-space model,
    ``log p(y_{t+1:T} | x_t)``, is of this form up to a constant; :meth:`from_information`
    builds it from the backward information filter's ``J_t``, ``h_t``.
    """

    def __init__(self, site: str, dim: int, num_steps: int, init_scale: float = 0.1):
        self.site = site
        self.dim = check_positive_int("dim", dim)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.init_scale = float(init_scale)

    def init(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        """A nearly flat twist: ``L_t = init_scale * I``, ``h_t = 0``.

        ``L = 0`` would be a saddle of every loss (``J = L L^T`` has zero gradient there).
        """
        del rng_key  # deterministic start
        eye = jnp.eye(self.dim)
        return {
            "L": jnp.broadcast_to(self.init_scale * eye, (self.num_steps, self.dim, self.dim)),
            "h": jnp.zeros((self.num_steps, self.dim)),
            "c": jnp.zeros((self.num_steps,)),
        }

    @staticmethod
    def from_information(J: Any, h: Any, c: Any = None, jitter: float = 1e-10) -> dict[str, jax.Array]:
        """Params with ``L_t L_t^T = J_t`` (``J`` of shape ``(T, d, d)`` PSD; a tiny ``jitter`` for singular ones)."""
        J = jnp.asarray(J)
        eye = jnp.eye(J.shape[-1], dtype=J.dtype)
        c = jnp.zeros(J.shape[0], dtype=J.dtype) if c is None else jnp.asarray(c)
        return {"L": jnp.linalg.cholesky(J + jitter * eye), "h": jnp.asarray(h), "c": c}

    def __call__(self, params: Mapping[str, jax.Array], t: jax.Array, state: Mapping[str, jax.Array]) -> jax.Array:
        x = jnp.reshape(state[self.site], (self.dim,))
        index = jnp.clip(t, 0, self.num_steps - 1)
        L = jnp.tril(params["L"][index])
        return -0.5 * jnp.sum(jnp.square(L.T @ x)) + params["h"][index] @ x + params["c"][index]


# ---------------------------------------------------------------------------------------
# One particle's move: proposal, model, and their log densities
# ---------------------------------------------------------------------------------------
def _in_order(values: Sequence[Any] | None) -> Callable[[dict], Any]:
    """A ``substitute_fn`` that hands the latent sample sites ``values`` in the order they occur."""
    queue = list(values or [])

    def substitute_fn(msg):
        if msg["type"] == "sample" and not msg["is_observed"] and queue:
            return queue.pop(0)
        return None

    return substitute_fn


def _site_log_prob(site: dict) -> jax.Array:
    value = jnp.sum(site["fn"].log_prob(site["value"]))
    return value if site.get("scale") is None else site["scale"] * value


def _latent_sites(trace: Mapping[str, dict]) -> list[tuple[str, dict]]:
    return [(k, s) for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]


class _Move(NamedTuple):
    state: dict
    latents: tuple
    log_weight: jax.Array  # log p(x_t, y_t | .) - log q(x_t | .)


def _move(model_fn, proposal_fn, state, rng_key, args, clamp, names: list):
    """Propose one particle's new sites, run the model on them, and weight them (one particle)."""
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
        proposal_trace = handlers.trace(fn).get_trace(proposal_state, *args)
        latents = _latent_sites(proposal_trace)
        log_q = sum((_site_log_prob(s) for _, s in latents), jnp.zeros(()))
        new_state = dict(state)
        values = [s["value"] for _, s in latents]
        fn = handlers.substitute(handlers.seed(model_fn, model_key), substitute_fn=_in_order(values))
        trace = handlers.trace(fn).get_trace(new_state, *args)
        model_latents = _latent_sites(trace)
        if len(model_latents) != len(latents):
            raise ValueError(
                f"proposal: it samples {len(latents)} latent site(s) {[k for k, _ in latents]} but the model "
                f"{len(model_latents)} {[k for k, _ in model_latents]}; they must match one to one, in order"
            )
        log_p = sum((_site_log_prob(s) for s in trace.values() if s["type"] == "sample"), jnp.zeros(()))
        log_weight = log_p - log_q
    if not latents:
        raise ValueError("model: its init/step samples no latent site (every sample statement is observed)")
    names[:] = [k for k, _ in latents]
    log_weight = jnp.where(jnp.isnan(log_weight), -jnp.inf, log_weight)
    return _Move(new_state, tuple(s["value"] for _, s in latents), log_weight)


# ---------------------------------------------------------------------------------------
# The filter
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
    * ``ess``: ``(T + 1,)`` effective sample size after each move; ``resampled``: ``(T,)`` flags.
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
        proposal: ``None`` (bootstrap) or an object with the model's ``init``/``step`` convention
            whose latent sample sites correspond one to one, in order, to the model's.
        twist: ``None``, ``twist(t, state)`` or, with ``twist_params``, ``twist(params, t, state)``
            giving one particle's ``log psi_t`` (``t = 0..T-1``; ``psi_T = 1``).
        ess_threshold: resample before a move when ``ESS < ess_threshold * N`` (``0``: never,
            i.e. sequential importance sampling; ``1``: whenever the weights are not uniform).
        clamp: ``(init_latents, step_latents)`` of one path (per site, in order; steps with a
            leading ``T`` axis): particle 0 follows it and is never resampled away
            (conditional SMC).
        names: if given, filled with the latent site names ``{"init": [...], "step": [...]}``.
    """
    step_args, T = _stack_args(step_args, num_steps)
    names = {} if names is None else names

    def log_twist(t, state):
        if twist is None:
            return jnp.zeros(())
        value = twist(t, state) if twist_params is None else twist(twist_params, t, state)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    init_names: list = []
    step_names: list = []
    keys = jax.random.split(rng_key, num_particles + 1)
    rng_key, init_keys = keys[0], keys[1:]
    proposal_init = None if proposal is None else proposal.init
    proposal_step = None if proposal is None else proposal.step

    def init_one(key, clamp_values):
        move = _move(model.init, proposal_init, {}, key, tuple(init_args), clamp_values, init_names)
        return move._replace(log_weight=move.log_weight + log_twist(jnp.array(0), move.state))

    if clamp is None:
        first = jax.vmap(lambda k: init_one(k, None))(init_keys)
    else:
        clamp_init, clamp_steps = clamp
        is_clamped = jnp.arange(num_particles) == 0
        free = jax.vmap(lambda k: init_one(k, None))(init_keys)
        fixed = init_one(init_keys[0], clamp_init)
        first = jax.tree.map(lambda a, b: jnp.where(_expand(is_clamped, a), b[None], a), free, fixed)
    first_twist = jax.vmap(lambda s: log_twist(jnp.array(0), s))(first.state)
    log_w = first.log_weight
    log_Z = _log_mean_exp(log_w)

    def body(carry, inputs):
        state, log_w, log_psi, log_Z, key = carry
        t, args_t, clamp_t = inputs
        key, resample_key, move_key = jax.random.split(key, 3)
        ess = effective_sample_size(log_w)
        do_resample = ess < ess_threshold * num_particles
        index = jnp.where(do_resample, resample(resample_key, log_w, resampling), jnp.arange(num_particles))
        if clamp is not None:
            index = index.at[0].set(0)
        log_w = jnp.where(do_resample, jnp.zeros_like(log_w), log_w)
        state = jax.tree.map(lambda x: x[index], state)
        log_psi = log_psi[index]
        move_keys = jax.random.split(move_key, num_particles)

        def move_one(s, k, clamp_values):
            return _move(model.step, proposal_step, s, k, tuple(args_t), clamp_values, step_names)

        moved = jax.vmap(lambda s, k: move_one(s, k, None))(state, move_keys)
        if clamp is not None:
            fixed = move_one(jax.tree.map(lambda x: x[0], state), move_keys[0], clamp_t)
            moved = jax.tree.map(lambda a, b: jnp.where(_expand(is_clamped, a), b[None], a), moved, fixed)
        if set(moved.state) != set(state):
            raise ValueError(
                f"model: step changed the keys of `state` from {sorted(state)} to {sorted(moved.state)}; "
                "init must set every key that step uses"
            )
        new_psi = jax.vmap(lambda s: log_twist(t, s))(moved.state)
        new_psi = jnp.where(t == T, 0.0, new_psi)
        increment = moved.log_weight + new_psi - log_psi
        increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
        new_log_w = log_w + increment
        before = _safe_logsumexp(log_w)
        log_Z = jnp.where(jnp.isfinite(before), log_Z + _safe_logsumexp(new_log_w) - before, -jnp.inf)
        out = (moved.latents, moved.state, new_log_w, new_psi, index, effective_sample_size(new_log_w), do_resample)
        return (moved.state, new_log_w, new_psi, log_Z, key), out

    clamp_steps = None if clamp is None else clamp_steps
    xs = (jnp.arange(1, T + 1), step_args, clamp_steps)
    carry = (first.state, log_w, first_twist, log_Z, rng_key)
    (state, log_w, _, log_Z, _), outs = jax.lax.scan(body, carry, xs, length=T)
    latents, states, step_log_w, step_psi, ancestors, ess, resampled = outs
    names["init"], names["step"] = list(init_names), list(step_names)
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=first.latents,
        step_latents=latents,
        states=jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first.state, states),
        step_log_weights=jnp.concatenate([first.log_weight[None], step_log_w]),
        log_twists=jnp.concatenate([first_twist[None], step_psi]),
        ancestors=ancestors,
        ess=jnp.concatenate([effective_sample_size(first.log_weight)[None], ess]),
        resampled=resampled,
    )


# ---------------------------------------------------------------------------------------
# Autoregressive token models (the language-model case)
# ---------------------------------------------------------------------------------------
class TokenModel:
    """An autoregressive model over token sequences ``x_{1:T}`` in ``{0..V-1}`` and a potential.

    ``next_token_log_probs(tokens, position) -> (V,)``: ``log p0(x_{position+1} = v | prefix)``
    where the prefix is ``tokens[:position]`` of the fixed-length buffer ``tokens`` (shape
    ``(T,)``, int; entries from ``position`` on are padding and must be ignored);
    ``log_potential(tokens) -> ()``: ``log phi(x_{1:T})`` of a full sequence (``-inf`` allowed).
    The target is ``sigma(x) ∝ p0(x) phi(x)`` and ``Z = E_{p0}[phi]``.

    Twists for token models are ``twist(tokens, position) -> (V,)`` (or, learnable,
    ``twist(params, tokens, position)``): ``log psi_{position+1}`` of the prefix extended by
    each candidate next token.  ``psi_T = phi`` is used at the last position.
    """

    def __init__(self, next_token_log_probs: Callable, log_potential: Callable, vocab_size: int, length: int):
        if not callable(next_token_log_probs) or not callable(log_potential):
            raise TypeError("TokenModel: next_token_log_probs and log_potential must be callables")
        self.next_token_log_probs = next_token_log_probs
        self.log_potential = log_potential
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)


class TabularTwist:
    """Learnable token twist ``log psi_t(x_{1:t}) = sum_{s<=t} u[s, x_s] + w[t, x_t]`` (params ``(T, V)`` each).

    Exact for Markov ``p0`` with an additive log-potential ``sum_t g[t, x_t]`` (``u = g``,
    ``w = log E[exp(sum_{s>t} g[s, x_s]) | x_t]``), so tests can check learned twists
    against the optimal ones.
    """

    def __init__(self, vocab_size: int, length: int):
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)

    def init(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        del rng_key
        shape = (self.length, self.vocab_size)
        return {"u": jnp.zeros(shape), "w": jnp.zeros(shape)}

    def __call__(self, params: Mapping[str, jax.Array], tokens: jax.Array, position: jax.Array) -> jax.Array:
        past = jnp.arange(self.length) < position
        history = jnp.sum(jnp.where(past, params["u"][jnp.arange(self.length), tokens], 0.0))
        return history + params["u"][position] + params["w"][position]


def run_token_filter(
    rng_key: jax.Array,
    model: TokenModel,
    num_particles: int,
    *,
    proposal: str | None = None,
    twist: Callable | None = None,
    twist_params: Any = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
) -> SMCOutput:
    """(Twisted, conditional) SMC over the tokens of a :class:`TokenModel` (the paper's Alg. 1).

    At position ``t`` each particle's prefix ``s`` is extended by ``v`` from the
    twist-induced proposal ``q(v | s) ∝ p0(v | s) psi_{t+1}(s, v)`` (``proposal=None``; its
    incremental weight ``sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)`` does not depend on
    ``v``) or from ``p0`` (``proposal="prior"``, weight ``psi_{t+1}(s, v) / psi_t(s)``).
    ``extras`` holds, per position, the prefixes the moves started from (``(T, N, T)``) and
    the log weights of every (prefix, next token) pair under ``pi_{t+1}`` and under the
    untwisted ``p0`` (``(T, N, V)``), which twist learning uses to average over ``v`` exactly.
    """
    T, V = model.length, model.vocab_size

    def log_twist_next(tokens, position):
        if twist is None:
            return jnp.zeros(V)
        value = twist(tokens, position) if twist_params is None else twist(twist_params, tokens, position)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    def log_phi_next(tokens, position):
        candidates = jax.vmap(lambda v: tokens.at[position].set(v))(jnp.arange(V, dtype=tokens.dtype))
        value = jax.vmap(model.log_potential)(candidates)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    def body(carry, inputs):
        tokens, log_w, log_psi, log_Z, key = carry
        position, clamp_token = inputs
        key, resample_key, move_key = jax.random.split(key, 3)
        ess = effective_sample_size(log_w)
        do_resample = ess < ess_threshold * num_particles
        index = jnp.where(do_resample, resample(resample_key, log_w, resampling), jnp.arange(num_particles))
        if clamp is not None:
            index = index.at[0].set(0)
        log_w = jnp.where(do_resample, jnp.zeros_like(log_w), log_w)
        tokens, log_psi = tokens[index], log_psi[index]
        log_p0 = jax.vmap(model.next_token_log_probs, in_axes=(0, None))(tokens, position)
        log_p0 = jnp.where(jnp.isnan(log_p0), -jnp.inf, log_p0)
        log_psi_next = jax.lax.cond(
            position == T - 1,
            lambda tk: jax.vmap(log_phi_next, in_axes=(0, None))(tk, position),
            lambda tk: jax.vmap(log_twist_next, in_axes=(0, None))(tk, position),
            tokens,
        )
        log_target = log_p0 + log_psi_next  # (N, V): pi_{t+1}(s, v) / pi-normaliser, up to psi_t(s)
        if proposal is None:
            total = logsumexp(log_target, axis=1)
            log_q = jnp.where(jnp.isfinite(total)[:, None], log_target - total[:, None], -math.log(V))
        else:
            log_q = log_p0
        choice = jax.random.categorical(move_key, log_q, axis=1).astype(tokens.dtype)
        if clamp is not None:
            choice = choice.at[0].set(clamp_token)
        chosen_psi = jnp.take_along_axis(log_psi_next, choice[:, None], axis=1)[:, 0]
        if proposal is None:
            increment = logsumexp(log_target, axis=1) - log_psi
        else:
            increment = chosen_psi - log_psi
        increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
        pair_log_w = log_w[:, None] + log_target - log_psi[:, None]
        pair_log_w_base = log_w[:, None] - log_psi[:, None] + log_p0
        new_tokens = tokens.at[:, position].set(choice)
        new_log_w = log_w + increment
        before = _safe_logsumexp(log_w)
        log_Z = jnp.where(jnp.isfinite(before), log_Z + _safe_logsumexp(new_log_w) - before, -jnp.inf)
        out = (
            choice,
            new_tokens,
            new_log_w,
            chosen_psi,
            index,
            effective_sample_size(new_log_w),
            do_resample,
            tokens,
            pair_log_w,
            pair_log_w_base,
        )
        return (new_tokens, new_log_w, chosen_psi, log_Z, key), out

    tokens = jnp.zeros((num_particles, T), dtype=jnp.int32)
    zeros = jnp.zeros(num_particles)
    clamp_tokens = jnp.zeros(T, dtype=jnp.int32) if clamp is None else jnp.asarray(clamp[1][0], dtype=jnp.int32)
    carry = (tokens, zeros, zeros, jnp.zeros(()), rng_key)
    (_, log_w, _, log_Z, _), outs = jax.lax.scan(body, carry, (jnp.arange(T), clamp_tokens))
    choice, states, step_log_w, step_psi, ancestors, ess, resampled, prefixes, pair_w, pair_w_base = outs
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=(),
        step_latents=(choice,),
        states={"tokens": jnp.concatenate([tokens[None], states])},
        step_log_weights=jnp.concatenate([zeros[None], step_log_w]),
        log_twists=jnp.concatenate([zeros[None], step_psi]),
        ancestors=ancestors,
        ess=jnp.concatenate([jnp.full((1,), float(num_particles)), ess]),
        resampled=resampled,
        extras={"prefixes": prefixes, "pair_log_weights": pair_w, "pair_log_weights_untwisted": pair_w_base},
    )


def _expand(flags: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.reshape(flags, flags.shape + (1,) * (jnp.ndim(like) - 1))


def _safe_logsumexp(x: jax.Array) -> jax.Array:
    """``logsumexp`` that is ``-inf`` (not NaN) when every entry is ``-inf``."""
    return jnp.where(jnp.any(jnp.isfinite(x)), logsumexp(jnp.where(jnp.isfinite(x), x, -jnp.inf)), -jnp.inf)


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


# ---------------------------------------------------------------------------------------
# Results and bounds
# ---------------------------------------------------------------------------------------
class SMCResult:
    """The result of :meth:`TwistedSMC.run`.

    ``log_Z``: ``log Z_hat`` (a float); ``log_weights``: final ``(N,)``; ``ess``: ``(T + 1,)``
    after the init and every step; ``output``: the raw :class:`SMCOutput`.
    """

    def __init__(self, output: SMCOutput, names: Mapping[str, list]):
        self.output = output
        self.names = {k: list(v) for k, v in names.items()}
        self.log_Z = float(output.log_Z)
        self.log_weights = output.log_weights
        self.ess = output.ess
        self.resampled = output.resampled

    def get_samples(self, rng_key: jax.Array | None = None, num_samples: int | None = None) -> dict[str, Any]:
        """The final particles' paths, ``{"init": {site: (N, ...)}, "step": {site: (N, T, ...)}}``.

        Without ``rng_key`` these are the ``N`` weighted paths (pair them with
        :attr:`log_weights`); with it, ``num_samples`` (default ``N``) paths resampled
        multinomially by weight, so they are equally weighted draws from the target.
        Site names are those of the model's first traced init/step.
        """
        init, steps, _ = paths(self.output)
        samples = {
            "init": dict(zip(self.names["init"], init, strict=True)),
            "step": dict(zip(self.names["step"], steps, strict=True)),
        }
        if rng_key is None:
            return samples
        num = num_samples or self.log_weights.shape[0]
        index = jax.random.categorical(rng_key, jnp.log(normalized_weights(self.log_weights)), shape=(num,))
        return jax.tree.map(lambda v: v[index], samples)

    def to_arviz(self, rng_key: jax.Array | None = None):
        """``arviz.InferenceData``: resampled paths as one chain (``posterior``) and the filter's
        ``log_weight``/``ess`` (``sample_stats``, ``log_likelihood``-free)."""
        import arviz as az

        key = jax.random.PRNGKey(0) if rng_key is None else rng_key
        samples = self.get_samples(key)
        posterior = {f"{k}": np.asarray(v)[None] for group in samples.values() for k, v in group.items()}
        stats = {"log_weight": np.asarray(self.log_weights)[None]}
        idata = az.from_dict(posterior=posterior, sample_stats=stats)
        idata.attrs["log_Z"] = self.log_Z
        return idata


# ---------------------------------------------------------------------------------------
# The user-facing object
# ---------------------------------------------------------------------------------------
class TwistedSMC:
    """Twisted SMC for a NumPyro state-space model in Pyro's ``SMCFilter`` convention.

    ``smc = TwistedSMC(model, num_particles=256, twist=None, proposal=None,
    resampling="systematic", ess_threshold=0.5)``; ``result = smc.run(rng_key, ys)`` with
    ``model.step(state, y_t)`` called for each ``y_t`` of ``ys`` (leading time axis).
    ``twist`` is ``None`` (plain SMC), ``twist(t, state) -> log psi_t`` for one particle, or
    a learnable twist (an object with ``init(rng_key) -> params`` and
    ``__call__(params, t, state)``, e.g. :class:`QuadraticTwist`) whose parameters
    :meth:`fit_twists` trains (or set :attr:`twist_params`).  See the module docstring for
    the equations.
    """

    def __init__(
        self,
        model: Any,
        num_particles: int = 256,
        twist: Any = None,
        proposal: Any = None,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        twist_params: Any = None,
    ):
        self.tokens = isinstance(model, TokenModel)
        if self.tokens and proposal not in (None, "prior"):
            raise ValueError(f"proposal: for a TokenModel expected None (twist-induced) or 'prior', got {proposal!r}")
        for obj, role in ((model, "model"), (proposal, "proposal")):
            if (obj is None and role == "proposal") or self.tokens:
                continue
            if not (callable(getattr(obj, "init", None)) and callable(getattr(obj, "step", None))):
                raise TypeError(
                    f"{role}: expected an object with init(state, *args) and step(state, *args) methods "
                    f"(Pyro's SMCFilter convention), got {type(obj).__name__}"
                )
        self.model = model
        self.proposal = proposal
        self.num_particles = check_positive_int("num_particles", num_particles)
        check_choice("resampling", resampling, RESAMPLING)
        self.resampling = resampling
        if not (0.0 < float(ess_threshold) <= 1.0):
            raise ValueError(f"ess_threshold: expected a number in (0, 1], got {ess_threshold!r}")
        self.ess_threshold = float(ess_threshold)
        if twist is not None and not callable(twist):
            raise TypeError(f"twist: expected None, a callable or a learnable twist, got {type(twist).__name__}")
        self.twist = twist
        self.learnable = twist is not None and callable(getattr(twist, "init", None))
        self.twist_params = twist_params
        self._compiled: dict = {}

    # ---- running ----------------------------------------------------------------------
    def _filter(self, num_particles: int, ess_threshold: float, clamped: bool):
        """A jitted ``(key, step_args, init_args, params, clamp) -> SMCOutput`` (cached per shape)."""
        cache_key = (num_particles, ess_threshold, clamped)
        if cache_key not in self._compiled:
            names: dict = {}

            def fn(key, step_args, init_args, params, clamp):
                if self.tokens:
                    names.update(init=[], step=["token"])
                    return run_token_filter(
                        key,
                        self.model,
                        num_particles,
                        proposal=self.proposal,
                        twist=self.twist,
                        twist_params=params if self.learnable else None,
                        resampling=self.resampling,
                        ess_threshold=ess_threshold,
                        clamp=clamp,
                    )
                return run_filter(
                    key,
                    self.model,
                    step_args,
                    num_particles,
                    init_args=init_args,
                    proposal=self.proposal,
                    twist=self.twist,
                    twist_params=params if self.learnable else None,
                    resampling=self.resampling,
                    ess_threshold=ess_threshold,
                    clamp=clamp,
                    names=names,
                )

            self._compiled[cache_key] = (jax.jit(fn), jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, 0))), names)
        return self._compiled[cache_key]

    def _params(self):
        if self.learnable and self.twist_params is None:
            raise ValueError("twist: a learnable twist needs parameters: call fit_twists() or set twist_params")
        return self.twist_params if self.learnable else None

    def run(self, rng_key: jax.Array, *step_args: Any, init_args: Sequence[Any] = ()) -> SMCResult:
        """Run the filter over the steps of ``step_args`` (each with a leading time axis)."""
        single, _, names = self._filter(self.num_particles, self.ess_threshold, False)
        output = single(rng_key, tuple(step_args), tuple(init_args), self._params(), None)
        result = SMCResult(output, names)
        if not math.isfinite(result.log_Z):
            warnings.warn(
                "TwistedSMC: every particle has zero weight (log Z_hat = -inf); the model's log densities are "
                "-inf or NaN for all proposals at some step",
                RuntimeWarning,
                stacklevel=2,
            )
        return result

    def log_Z_samples(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        num_runs: int = 16,
        num_particles: int | None = None,
        ess_threshold: float | None = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        init_args: Sequence[Any] = (),
    ) -> jax.Array:
        """``log Z_hat`` of ``num_runs`` independent runs (vectorised); with ``exact_samples``
        (``get_samples`` layout, leading axis >= ``num_runs``) run ``r`` clamps particle 0 to sample ``r``."""
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        threshold = self.ess_threshold if ess_threshold is None else float(ess_threshold)
        clamp = None if exact_samples is None else _clamp_paths(exact_samples, num_runs)
        _, batched, _ = self._filter(num_particles, threshold, clamp is not None)
        keys = jax.random.split(rng_key, check_positive_int("num_runs", num_runs))
        return batched(keys, tuple(step_args), tuple(init_args), self._params(), clamp).log_Z

    def log_Z_bounds(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        num_runs: int = 16,
        init_args: Sequence[Any] = (),
    ) -> LogZBounds:
        """The sandwich on ``log Z`` (see :class:`LogZBounds`), each bound a mean over ``num_runs``.

        The upper bounds and the KL intervals need ``exact_samples`` from the target
        (``get_samples`` layout, leading axis ``>= num_runs``); without them they are NaN.
        """
        keys = jax.random.split(rng_key, 6)
        common = dict(num_runs=num_runs, num_particles=num_particles, init_args=init_args)
        never = 0.0  # SIS/IWAE: no resampling
        sis = self.log_Z_samples(keys[0], *step_args, ess_threshold=never, **common)
        smc = self.log_Z_samples(keys[1], *step_args, **common)
        if exact_samples is None:
            return combine_bounds(sis, smc)
        iwae = self.log_Z_samples(keys[2], *step_args, ess_threshold=never, exact_samples=exact_samples, **common)
        csmc = self.log_Z_samples(keys[3], *step_args, exact_samples=exact_samples, **common)
        one = dict(num_runs=num_runs, num_particles=1, init_args=init_args, ess_threshold=never)
        elbo = self.log_Z_samples(keys[4], *step_args, **one)
        eubo = self.log_Z_samples(keys[5], *step_args, exact_samples=exact_samples, **one)
        return combine_bounds(sis, smc, iwae, csmc, elbo, eubo)

    # ---- twist learning ---------------------------------------------------------------
    def fit_twists(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        method: str = "ctl",
        num_steps: int = 500,
        optimizer: Any = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        init_args: Sequence[Any] = (),
        progress_bar: bool = False,
    ) -> tuple[Any, np.ndarray]:
        """Train the learnable twist by CTL (``method="ctl"``) or SIXO (``"sixo"``).

        Each step runs the filter with the current twists (no gradient through it), then
        takes one ``optimizer`` step (an ``optax.GradientTransformation``; default
        ``optax.adam(1e-2)``) on the CTL / SIXO loss.  Positive (target) samples are
        ``exact_samples`` when given (the ``get_samples`` layout, any number of paths),
        else the filter's final weighted paths.  Returns ``(params, losses)`` and sets
        :attr:`twist_params`.
        """
        import optax
        from tqdm.auto import trange

        check_choice("method", method, TWIST_METHODS)
        if not self.learnable:
            raise TypeError("twist: fit_twists needs a learnable twist (an object with init(rng_key) and __call__)")
        optimizer = optax.adam(1e-2) if optimizer is None else optimizer
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        init_key, rng_key = jax.random.split(rng_key)
        params = self.twist.init(init_key) if self.twist_params is None else self.twist_params
        opt_state = optimizer.init(params)
        step_args, init_args = tuple(step_args), tuple(init_args)
        single, _, names = self._filter(num_particles, self.ess_threshold, False)
        positives = None
        if exact_samples is not None and self.tokens:
            positives = jnp.asarray(_clamp_paths(exact_samples, None)[1][0], dtype=jnp.int32)
        elif exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args)

        def token_loss_fn(params, output, positive_tokens, positive_weights):
            positions = jnp.arange(self.model.length - 1)  # psi_T = phi is not learned
            twist = jax.vmap(self.twist, in_axes=(None, 0, None))  # over sequences

            def positive(position):
                chosen = positive_tokens[:, position]
                return jnp.take_along_axis(twist(params, positive_tokens, position), chosen[:, None], 1)[:, 0]

            log_psi_pos = jax.vmap(positive)(positions)  # (T - 1, M)
            log_psi_pairs = jax.vmap(lambda p: twist(params, output.extras["prefixes"][p], p))(positions)  # (T-1, N, V)
            key = "pair_log_weights" if method == "ctl" else "pair_log_weights_untwisted"
            pairs = jax.lax.stop_gradient(output.extras[key][:-1])
            w_pairs = jax.vmap(lambda w: normalized_weights(w.ravel()).reshape(w.shape))(pairs)
            if method == "ctl":
                return -jnp.sum(positive_weights * log_psi_pos) + jnp.sum(w_pairs * log_psi_pairs)
            return -jnp.sum(positive_weights * jax.nn.log_sigmoid(log_psi_pos)) - jnp.sum(
                w_pairs * jax.nn.log_sigmoid(-log_psi_pairs)
            )

        def loss_fn(params, output, positive_states, positive_weights):
            if self.tokens:
                return token_loss_fn(params, output, positive_states, positive_weights)
            T1 = output.step_log_weights.shape[0]
            ts = jnp.arange(T1 - 1)  # psi_T = 1 is not learned
            twist = jax.vmap(jax.vmap(self.twist, in_axes=(None, None, 0)), in_axes=(None, 0, 0))
            drop_last = jax.tree.map(lambda v: v[:-1], output.states)
            log_psi_neg = twist(params, ts, drop_last)  # (T, N)
            pos_states = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1)[:-1], positive_states)
            log_psi_pos = twist(params, ts, pos_states)  # (T, M)
            w_neg = jax.vmap(normalized_weights)(jax.lax.stop_gradient(output.step_log_weights[:-1]))
            if method == "ctl":
                return -jnp.sum(positive_weights * log_psi_pos) + jnp.sum(w_neg * log_psi_neg)
            untwisted = jax.lax.stop_gradient(output.step_log_weights[:-1] - output.log_twists[:-1])
            w_base = jax.vmap(normalized_weights)(untwisted)
            return -jnp.sum(positive_weights * jax.nn.log_sigmoid(log_psi_pos)) - jnp.sum(
                w_base * jax.nn.log_sigmoid(-log_psi_neg)
            )

        @jax.jit
        def update(params, opt_state, key):
            output = jax.lax.stop_gradient(single(key, step_args, init_args, params, None))
            if positives is None and self.tokens:
                states = output.states["tokens"][-1]
                weights = normalized_weights(output.log_weights)[None, :]
            elif positives is None:
                _, _, states = paths(output)
                weights = normalized_weights(output.log_weights)[None, :]
            else:
                states = positives
                count = jax.tree.leaves(positives)[0].shape[0]
                weights = jnp.full((1, count), 1.0 / count)
            loss, grads = jax.value_and_grad(loss_fn)(params, output, states, weights)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        losses = np.empty(check_positive_int("num_steps", num_steps))
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            rng_key, key = jax.random.split(rng_key)
            params, opt_state, loss = update(params, opt_state, key)
            losses[i] = float(loss)
        self.twist_params = params
        return params, losses

    def _replay_states(self, samples, step_args, init_args):
        """States ``(M, T + 1, ...)`` along given paths: the model run on the paths' latent values."""
        init_latents, step_latents = _clamp_paths(samples, None)

        def one(init_values, step_values, key):
            keys = jax.random.split(key, 2)
            first = _move(self.model.init, None, {}, keys[0], init_args, init_values, [])

            def body(state, inputs):
                args_t, values, k = inputs
                moved = _move(self.model.step, None, state, k, tuple(args_t), values, [])
                return moved.state, moved.state

            T = jax.tree.leaves(step_values)[0].shape[0]
            _, states = jax.lax.scan(body, first.state, (step_args, step_values, jax.random.split(keys[1], T)))
            return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first.state, states)

        count = jax.tree.leaves(init_latents)[0].shape[0]
        return jax.vmap(one)(init_latents, step_latents, jax.random.split(jax.random.PRNGKey(0), count))


def _clamp_paths(samples: Mapping[str, Mapping[str, Any]], count: int | None) -> tuple[tuple, tuple]:
    """``get_samples``-layout paths -> ``(init values, step values)`` per site in order (first ``count`` paths)."""
    try:
        init, steps = samples["init"], samples["step"]
    except (KeyError, TypeError):
        raise ValueError(
            "exact_samples: expected {'init': {site: (M, ...)}, 'step': {site: (M, T, ...)}} as get_samples() returns"
        ) from None
    init = tuple(jnp.asarray(v) for v in init.values())
    steps = tuple(jnp.asarray(v) for v in steps.values())
    available = jax.tree.leaves((init, steps))[0].shape[0]
    if count is not None:
        if available < count:
            raise ValueError(f"exact_samples: {available} paths given, {count} needed (one per run)")
        init = tuple(v[:count] for v in init)
        steps = tuple(v[:count] for v in steps)
    # the filter scans over time: steps as (M, T, ...) -> each path's (T, ...) is sliced by vmap
    return init, steps
