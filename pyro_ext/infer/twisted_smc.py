"""Twisted sequential Monte Carlo with learned twists and bidirectional log-Z bounds, in torch/Pyro.

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546); SIXO: Lawson, Ravent\u00f3s,
Warrington & Linderman, NeurIPS 2022.  The torch twin of :mod:`numpyro_ext.infer.twisted_smc`
(same names, arguments and semantics; particles are a leading batch dimension instead of vmap).

Target and intermediate targets (the paper's eqs. 1-3).  A state-space model written in
Pyro's :class:`pyro.infer.SMCFilter` convention -- an object with ``init(state, *init_args)``
and ``step(state, *step_args)`` whose ``pyro.sample`` statements are vectorised over the
particles by a ``pyro.plate("particles", N, dim=-1 - max_plate_nesting)`` that the filter
opens, keeping the particles' state in the dict ``state`` (tensors with a leading particle
dimension ``N``) -- defines the unnormalised path density
``p(x_{0:T}, y_{1:T}) = p(x_0) prod_t p(x_t | x_{t-1}) p(y_t | x_t)`` (every sample site,
observed ones included).  With twists ``psi_t`` (``psi_T = 1``) SMC targets

    pi_t(x_{0:t}) ∝ p(x_{0:t}, y_{1:t}) psi_t(x_{0:t}),      pi_T = sigma = p(x_{0:T} | y_{1:T}),

and ``Z = p(y_{1:T})``.  Particles are extended by a proposal ``q``: the model's own
transition by default (the bootstrap filter), or a guide object with the same ``init``/``step``
convention, traced first and replayed into the model exactly as ``SMCFilter`` does (model
latent sites that the guide does not sample are drawn from the model and cancel).  They are
weighted by the incremental weight (eq. 4)

    w_t = p(x_t, y_t | x_{t-1}) psi_t(x_{0:t}) / (q(x_t | x_{0:t-1}) psi_{t-1}(x_{0:t-1})),

where each site's log density is summed over every dimension but the particle one, and
resampled (multinomial, systematic or stratified) when the effective sample size falls under
``ess_threshold * N``.  ``Z_hat = prod_t sum_i W_{t-1}^i w_t^i`` is unbiased for any twist,
so ``E log Z_hat <= log Z`` (SMC lower bound); its variance vanishes for the optimal twists
``psi_t* = p(y_{t+1:T} | x_t)``.  Twists are Markov: ``log psi_t`` is a function of the time
index and the particles' ``state`` dict, batched over particles (``(N,)`` out).

Twist learning (Sec. 4): contrastive twist learning (CTL, eq. 15) follows

    grad L(theta) = sum_{t<T} E_sigma[grad log psi_t] - E_{pi_t}[grad log psi_t],

with ``sigma`` from exact samples when given (else the final weighted SMC paths) and
``pi_t`` from the SMC particles at step ``t`` (self-normalised weights, no gradient through
them); SIXO (the comparison) fits ``log psi_t`` as the logit of a classifier of ``sigma``'s
states (positive) against the untwisted intermediate target's (negative).

Bounds (Sec. 5): SIS/IWAE and SMC lower bounds ``E log Z_hat``; given exact target samples,
the IWAE upper bound (one of the ``K`` importance samples replaced by an exact sample, no
resampling) and the conditional-SMC upper bound (one particle clamped to the exact path),
both ``>= log Z`` in expectation, so the user gets a sandwich on ``log Z`` and intervals on
``KL(q || sigma)`` and ``KL(sigma || q)`` (:mod:`adapters.smc`).

Autoregressive token models (the language-model case, :class:`TokenModel`).  A prior
``p0(x_{1:T}) = prod_t p0(x_t | x_{1:t-1})`` over tokens in ``{0..V-1}`` and a potential
``phi(x_{1:T}) >= 0`` define ``sigma(x) ∝ p0(x) phi(x)`` and ``Z = E_{p0}[phi]``; the twists
``psi_t(x_{1:t})`` (``psi_0 = 1``, ``psi_T = phi``) are given for all ``V`` continuations of
a prefix at once.  A prefix ``s = x_{1:t}`` is extended by ``v`` from the twist-induced
proposal (the default) or from ``p0`` (``proposal="prior"``),

    q(v | s) = p0(v | s) psi_{t+1}(s, v) / sum_v' p0(v' | s) psi_{t+1}(s, v'),
    w_{t+1} = sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)     (twist-induced: no dependence on v),
    w_{t+1} = psi_{t+1}(s, v) / psi_t(s)                      (prior),

and twist learning averages over the ``V`` continuations exactly (Rao-Blackwellised): the
negative term of CTL weighs each (particle, next token) pair by its weight under
``pi_{t+1}``, SIXO's by its weight under the untwisted ``p0``.

Shapes: ``N`` particles, ``T`` steps.  Step arguments carry a leading time axis ``T``.
Several independent runs (:meth:`TwistedSMC.log_Z_samples`) are batched as ``R`` groups of
``N`` particles inside one particle plate of size ``R N``; resampling stays within a group.

Randomness comes from torch's global generator (``pyro.set_rng_seed``).  The filter traces
the model and the proposal with Pyro's validation off (as NumPyro has it), so an
out-of-support value or a NaN log density gives a particle zero weight (``-inf``) instead of
raising; when every particle of a run has zero weight its ``log Z_hat`` is ``-inf``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from adapters.smc import LogZBounds, combine_bounds
from adapters.validation import check_choice, check_positive_int

__all__ = [
    "LogZBounds",
    "QuadraticTwist",
    "SMCOutput",
    "SMCResult",
    "TabularTwist",
    "TokenModel",
    "TwistedSMC",
    "effective_sample_size",
    "genealogy",
    "normalized_weights",
    "paths",
    "resample",
    "run_filter",
    "run_token_filter",
]

RESAMPLING = ("multinomial", "systematic", "stratified")
TWIST_METHODS = ("ctl", "sixo")
_MAX_BATCH = 1 << 16  # particles per plate when runs are batched
_MAX_TOKEN_PAIRS = 1 << 20  # (particle, next token) pairs per batch of token-model runs


# ---------------------------------------------------------------------------------------
# Resampling and weights (batched over leading dimensions; particles on the last one)
# ---------------------------------------------------------------------------------------
def normalized_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights ``W`` (``(..., N)``, over the last axis); uniform where every weight is zero."""
    finite = torch.isfinite(log_weights).any(-1, keepdim=True)
    return torch.softmax(torch.where(finite, log_weights, torch.zeros_like(log_weights)), dim=-1)


def _safe_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis that is ``-inf`` (not NaN) when every entry is ``-inf``."""
    finite = torch.isfinite(x)
    value = torch.logsumexp(torch.where(finite, x, torch.full_like(x, -math.inf)), dim=-1)
    return torch.where(finite.any(-1), value, torch.full_like(value, -math.inf))


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_i W_i^2`` in log space over the last axis (0 when every weight is zero)."""
    ess = torch.exp(2 * _safe_logsumexp(log_weights) - _safe_logsumexp(2 * log_weights))
    return torch.where(torch.isfinite(log_weights).any(-1), ess, torch.zeros_like(ess))


def resample(log_weights: torch.Tensor, method: str = "systematic") -> torch.Tensor:
    """Ancestor indices (``long``, the shape of ``log_weights`` ``(..., N)``) drawn from the normalised weights.

    ``multinomial``: i.i.d. categorical draws; ``systematic``: one uniform ``u``, points
    ``(u + i) / N``; ``stratified``: one uniform per stratum ``(u_i + i) / N``.  All three
    are unbiased (each index's expected count is ``N W_i``); the last two have lower variance.
    Leading dimensions are independent batches (e.g. independent runs).
    """
    check_choice("resampling", method, RESAMPLING)
    num = log_weights.shape[-1]
    batch = log_weights.shape[:-1]
    weights = normalized_weights(log_weights).reshape(-1, num)
    if method == "multinomial":
        index = torch.multinomial(weights, num, replacement=True)
        return index.reshape(log_weights.shape)
    shape = (weights.shape[0], 1) if method == "systematic" else (weights.shape[0], num)
    offsets = torch.rand(shape, dtype=weights.dtype, device=weights.device)
    points = (torch.arange(num, dtype=weights.dtype, device=weights.device) + offsets) / num
    cumulative = torch.cumsum(weights, dim=-1)
    cumulative = cumulative / cumulative[:, -1:]  # the last point is exactly 1: no draw past it
    index = torch.searchsorted(cumulative, points, right=True).clamp_(max=num - 1)
    return index.reshape(batch + (num,))


# ---------------------------------------------------------------------------------------
# Twists
# ---------------------------------------------------------------------------------------
class QuadraticTwist(torch.nn.Module):
    """Learnable Gaussian twist ``log psi_t(x) = -0.5 x^T L_t L_t^T x + h_t^T x + c_t`` on ``state[site]``.

    Parameters: ``L`` ``(T, d, d)`` (its lower triangle is used), ``h`` ``(T, d)``, ``c``
    ``(T,)`` for ``t = 0..T-1`` (``psi_T = 1`` is fixed by the filter; the constants ``c_t``
    do not change SMC, but a classifier's logit, SIXO's, needs them), initialised to
    ``L_t = init_scale * I``, ``h_t = 0``, ``c_t = 0`` (``L = 0`` would be a saddle of every
    loss, since ``J = L L^T`` has zero gradient there).  The optimal twist of a
    linear-Gaussian state-space model, ``log p(y_{t+1:T} | x_t)``, is of this form;
    :meth:`from_information` sets it from the backward information filter's ``J_t``, ``h_t``,
    ``c_t``.  Called as ``twist(t, state) -> (N,)`` with ``state[site]`` of shape ``(N, d)``
    (or ``(N,)`` when ``d = 1``).
    """

    def __init__(self, site: str, dim: int, num_steps: int, init_scale: float = 0.1):
        super().__init__()
        self.site = site
        self.dim = check_positive_int("dim", dim)
        self.num_steps = check_positive_int("num_steps", num_steps)
        eye = torch.eye(self.dim)
        self.L = torch.nn.Parameter(float(init_scale) * eye.expand(self.num_steps, self.dim, self.dim).clone())
        self.h = torch.nn.Parameter(torch.zeros(self.num_steps, self.dim))
        self.c = torch.nn.Parameter(torch.zeros(self.num_steps))

    @torch.no_grad()
    def from_information(self, J: Any, h: Any, c: Any = None, jitter: float = 1e-10) -> QuadraticTwist:
        """Set ``L_t L_t^T = J_t``, ``h_t``, ``c_t`` (``J`` ``(T, d, d)`` PSD, ``h`` ``(T, d)``, ``c`` ``(T,)``
        or ``None`` for 0; a tiny ``jitter`` for singular ``J``); returns ``self``."""
        J = torch.as_tensor(np.asarray(J) if not isinstance(J, torch.Tensor) else J).to(self.L)
        h = torch.as_tensor(np.asarray(h) if not isinstance(h, torch.Tensor) else h).to(self.h)
        expected = (self.num_steps, self.dim, self.dim)
        if tuple(J.shape) != expected or tuple(h.shape) != expected[:2]:
            raise ValueError(
                f"J, h: expected shapes {expected} and {expected[:2]}, got {tuple(J.shape)}, {tuple(h.shape)}"
            )
        eye = torch.eye(self.dim, dtype=J.dtype, device=J.device)
        self.L.copy_(torch.linalg.cholesky(J + jitter * eye))
        self.h.copy_(h)
        self.c.copy_(torch.zeros_like(self.c) if c is None else torch.as_tensor(np.asarray(c)).to(self.c))
        return self

    def forward(self, t: int, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = state[self.site]
        x = x.reshape(x.shape[0], self.dim).to(self.L.dtype)
        index = min(max(int(t), 0), self.num_steps - 1)
        L = torch.tril(self.L[index])
        return -0.5 * (x @ L).square().sum(-1) + x @ self.h[index] + self.c[index]


# ---------------------------------------------------------------------------------------
# One move of all particles: proposal, model, and their log densities
# ---------------------------------------------------------------------------------------
class _ReadOnlyState(dict):
    """The particles' state as the proposal sees it: SMCFilter's guides may only read it."""

    def __setitem__(self, key, value):
        raise RuntimeError(f"proposal: a guide may only read `state` (as in SMCFilter), it wrote state[{key!r}]")


def _particle_axis(shape: torch.Size, event_dim: int, max_plate_nesting: int, name: str) -> int:
    axis = len(shape) - event_dim - 1 - max_plate_nesting
    if axis < 0:
        raise ValueError(
            f"model: site {name!r} has shape {tuple(shape)} with event_dim {event_dim}; inside the particle plate "
            f"(dim {-1 - max_plate_nesting}) it needs at least {1 + max_plate_nesting} batch dimensions "
            "(is max_plate_nesting right?)"
        )
    return axis


class _Clamp(Messenger):
    """Sets particle 0 of every group to given values, for the latent sample sites in the order they occur.

    ``values[k]``: ``(G, *site_shape)`` for the ``k``-th latent site (``site_shape``: the
    value's shape without the particle axis).  Placed outside the particle plate, so the
    sites' distributions are already broadcast over the particles.
    """

    def __init__(self, values: Sequence[torch.Tensor], num_groups: int, num_particles: int, max_plate_nesting: int):
        super().__init__()
        self.values = list(values)
        self.groups, self.num, self.nesting = num_groups, num_particles, max_plate_nesting
        self.position = 0

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg) or self.position >= len(self.values):
            return
        fixed = self.values[self.position]
        self.position += 1
        value = msg["value"] if msg["value"] is not None else msg["fn"](*msg["args"], **msg["kwargs"])
        axis = _particle_axis(value.shape, msg["fn"].event_dim, self.nesting, msg["name"])
        moved = value.movedim(axis, 0)
        grouped = moved.reshape((self.groups, self.num) + moved.shape[1:]).clone()
        if tuple(fixed.shape) != (self.groups,) + tuple(moved.shape[1:]):
            raise ValueError(
                f"exact_samples: site {msg['name']!r} (latent site {self.position - 1} in order) has values of shape "
                f"{tuple(fixed.shape[1:])} per path, the model's are {tuple(moved.shape[1:])}"
            )
        grouped[:, 0] = fixed.to(grouped)
        msg["value"] = grouped.reshape(moved.shape).movedim(0, axis)


def _per_particle(log_prob: Any, total: int, max_plate_nesting: int) -> torch.Tensor:
    """A site's log density summed over every dimension but the particle one -> ``(total,)``."""
    log_prob = torch.as_tensor(log_prob)
    if log_prob.dim() < 1 + max_plate_nesting:
        log_prob = log_prob.reshape((1,) * (1 + max_plate_nesting - log_prob.dim()) + tuple(log_prob.shape))
    lp = log_prob.movedim(log_prob.dim() - 1 - max_plate_nesting, 0)
    return lp.expand((total,) + tuple(lp.shape[1:])).reshape(total, -1).sum(-1)


class _Move(NamedTuple):
    state: dict
    names: list
    latents: list  # per latent site, (total, ...) with the particle axis first
    log_weight: torch.Tensor  # (total,): log p(x_t, y_t | .) - log q(x_t | .)


def _move(model_fn, proposal_fn, state, args, clamp, num_groups, num_particles, max_plate_nesting) -> _Move:
    """Propose every particle's new sites, run the model on them (replayed), and weight them."""
    total = num_groups * num_particles
    plate = pyro.plate("particles", total, dim=-1 - max_plate_nesting)

    def clamped():
        if clamp is None:
            return contextlib.nullcontext()
        return _Clamp(clamp, num_groups, num_particles, max_plate_nesting)

    guide_trace = None
    new_state = dict(state)
    with pyro.validation_enabled(False), poutine.block():
        if proposal_fn is None:
            with clamped(), plate:
                model_trace = poutine.trace(model_fn).get_trace(new_state, *args)
        else:
            with clamped(), plate:
                guide_trace = poutine.trace(proposal_fn).get_trace(_ReadOnlyState(state), *args)
            with plate:
                model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(new_state, *args)
        model_trace = prune_subsample_sites(model_trace)
        nodes = model_trace.nodes
        latents = [(k, s) for k, s in nodes.items() if s["type"] == "sample" and not s["is_observed"]]
        if not latents:
            raise ValueError("model: its init/step samples no latent site (every sample statement is observed)")
        log_weight = None
        guided: list = []
        if guide_trace is not None:
            guide_trace = prune_subsample_sites(guide_trace)
            guided = [k for k, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
            for name in guided:
                if name not in nodes or nodes[name]["type"] != "sample" or nodes[name]["is_observed"]:
                    raise ValueError(
                        f"proposal: it samples site {name!r}, which is not a latent sample site of the model"
                    )
            guide_trace.compute_log_prob(lambda name, site: name in guided)
            if clamp is not None and guided != [k for k, _ in latents]:
                raise ValueError(
                    f"proposal: with exact_samples (conditional SMC, upper bounds) its latent sites {guided} must be "
                    f"the model's {[k for k, _ in latents]}, one to one and in the same order"
                )
        # SMCFilter's weight: log p - log q at the proposed sites, plus log p at the observed ones
        model_trace.compute_log_prob(lambda name, site: site["is_observed"] or name in guided)
        for name in guided:
            term = _per_particle(nodes[name]["log_prob"], total, max_plate_nesting)
            term = term - _per_particle(guide_trace.nodes[name]["log_prob"], total, max_plate_nesting)
            log_weight = term if log_weight is None else log_weight + term
        for site in nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                term = _per_particle(site["log_prob"], total, max_plate_nesting)
                log_weight = term if log_weight is None else log_weight + term
    if log_weight is None:
        dtype = latents[0][1]["value"].dtype
        log_weight = torch.zeros(total, dtype=dtype if dtype.is_floating_point else torch.get_default_dtype())
    log_weight = torch.where(torch.isnan(log_weight), torch.full_like(log_weight, -math.inf), log_weight)
    values = []
    for name, site in latents:
        value = site["value"]
        values.append(value.movedim(_particle_axis(value.shape, site["fn"].event_dim, max_plate_nesting, name), 0))
    return _Move(new_state, [k for k, _ in latents], values, log_weight)


# ---------------------------------------------------------------------------------------
# The filter
# ---------------------------------------------------------------------------------------
class SMCOutput(NamedTuple):
    """Everything one filter run returns (tensors; ``T`` steps after the init, ``N`` particles).

    * ``log_Z``: ``log Z_hat`` (``-inf`` if every particle became impossible), shape ``()``;
    * ``log_weights``: ``(N,)`` final log weights (unnormalised, since the last resampling);
    * ``init_latents``: tuple of ``(N, ...)`` latent values of the init, per site in order;
    * ``step_latents``: tuple of ``(T, N, ...)`` latent values of each step, per site;
    * ``states``: dict of ``(T + 1, N, ...)`` particle states after the init and each step;
    * ``step_log_weights``: ``(T + 1, N)`` log weights after each move (target ``pi_t``);
    * ``log_twists``: ``(T + 1, N)`` ``log psi_t`` of each particle after each move (0 at ``T``);
    * ``ancestors``: ``(T, N)`` index, in the particles of step ``t - 1``, of each particle's parent;
    * ``ess``: ``(T + 1,)`` effective sample size after each move; ``resampled``: ``(T,)`` flags;
    * ``extras``: ``None``, or for a :class:`TokenModel` (see :func:`run_token_filter`) the
      prefixes ``(T, N, T)`` each move started from and the log weights ``(T, N, V)`` of every
      (prefix, next token) pair under ``pi_{t+1}`` and under the untwisted ``p0``.

    Batched runs (the internal filter) put a run axis ``R`` before the particle axis
    (``log_Z`` ``(R,)``, ``log_weights`` ``(R, N)``, ``states`` ``(T + 1, R, N, ...)``, ...).
    """

    log_Z: torch.Tensor
    log_weights: torch.Tensor
    init_latents: tuple
    step_latents: tuple
    states: dict
    step_log_weights: torch.Tensor
    log_twists: torch.Tensor
    ancestors: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    extras: dict | None = None


def _as_tensor(value: Any) -> Any:
    return torch.as_tensor(value) if isinstance(value, np.ndarray) else value


def _time_length(step_args: Sequence[Any], num_steps: int | None) -> int:
    lengths = {len(a) for a in step_args if a is not None}
    if not lengths:
        if num_steps is None:
            raise ValueError("num_steps: needed when there are no step arguments to take the time axis from")
        return check_positive_int("num_steps", num_steps)
    if len(lengths) != 1:
        raise ValueError(f"step_args: every step argument needs the same leading (time) length, got {sorted(lengths)}")
    return lengths.pop()


def _twist_values(twist, t: int, state: dict, total: int) -> torch.Tensor:
    value = torch.as_tensor(twist(t, state))
    if value.numel() != total:
        raise ValueError(f"twist: expected log psi_t of shape ({total},) (one per particle), got {tuple(value.shape)}")
    value = value.reshape(total)
    return torch.where(torch.isnan(value), torch.full_like(value, -math.inf), value)


@torch.no_grad()
def _filter(
    model: Any,
    step_args: Sequence[Any],
    num_groups: int,
    num_particles: int,
    *,
    init_args: Sequence[Any] = (),
    proposal: Any = None,
    twist: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
    num_steps: int | None = None,
    max_plate_nesting: int = 0,
    record: bool = True,
    names: dict | None = None,
) -> SMCOutput:
    """``num_groups`` independent runs of ``num_particles`` particles each, in one particle plate.

    ``clamp``: ``(init values (G, ...), step values (G, T, ...))`` per latent site in order:
    particle 0 of group ``g`` follows path ``g`` and is its own ancestor.  Returns an
    :class:`SMCOutput` with a run axis (see there); with ``record=False`` only ``log_Z``,
    ``log_weights`` and ``ess``/``resampled`` are filled.
    """
    step_args = tuple(_as_tensor(a) for a in step_args)
    T = _time_length(step_args, num_steps)
    G, N = num_groups, num_particles
    total = G * N
    names = {} if names is None else names
    init_fn = model.init
    step_fn = model.step
    proposal_init = None if proposal is None else proposal.init
    proposal_step = None if proposal is None else proposal.step
    clamp_init, clamp_steps = (None, None) if clamp is None else clamp

    first = _move(init_fn, proposal_init, {}, tuple(init_args), clamp_init, G, N, max_plate_nesting)
    state = first.state
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != total:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"model: state[{key!r}] must be a tensor with a leading particle dimension of size {total}, got {shape}"
            )
    init_names = first.names
    log_psi = (
        torch.zeros(total, dtype=first.log_weight.dtype)
        if twist is None
        else _twist_values(twist, 0, state, total).to(first.log_weight.dtype)
    )
    log_w = (first.log_weight + log_psi).reshape(G, N)
    log_psi = log_psi.reshape(G, N)
    log_Z = _safe_logsumexp(log_w) - math.log(N)
    offsets = (torch.arange(G) * N)[:, None]
    arange = torch.arange(N).expand(G, N)

    rec_states = [dict(state)] if record else []
    rec_log_w, rec_psi = [log_w], [log_psi]
    rec_latents: list = []
    rec_ancestors, rec_ess, rec_resampled = [], [effective_sample_size(log_w)], []
    step_names: list | None = None
    for t in range(1, T + 1):
        ess = effective_sample_size(log_w)
        do_resample = ess < ess_threshold * N
        if bool(do_resample.any()):
            index = torch.where(do_resample[:, None], resample(log_w, resampling), arange)
            log_w = torch.where(do_resample[:, None], torch.zeros_like(log_w), log_w)
        else:
            index = arange.clone()
        if clamp is not None:
            index[:, 0] = 0
        if bool(do_resample.any()) or clamp is not None:
            flat = (index + offsets).reshape(-1)
            state = {k: v[flat] for k, v in state.items()}
            log_psi = torch.gather(log_psi, 1, index)
        args_t = tuple(None if a is None else a[t - 1] for a in step_args)
        clamp_t = None if clamp is None else [v[:, t - 1] for v in clamp_steps]
        moved = _move(step_fn, proposal_step, state, args_t, clamp_t, G, N, max_plate_nesting)
        if set(moved.state) != set(state):
            raise ValueError(
                f"model: step changed the keys of `state` from {sorted(state)} to {sorted(moved.state)}; "
                "init must set every key that step uses"
            )
        if step_names is None:
            step_names = moved.names
        elif len(moved.names) != len(step_names):
            raise ValueError(
                f"model: step {t} samples {len(moved.names)} latent site(s) {moved.names}, step 1 sampled "
                f"{len(step_names)} {step_names}; every step needs the same latent sites"
            )
        state = moved.state
        if twist is None or t == T:
            new_psi = torch.zeros_like(log_w)
        else:
            new_psi = _twist_values(twist, t, state, total).to(log_w.dtype).reshape(G, N)
        increment = moved.log_weight.reshape(G, N) + new_psi - log_psi
        increment = torch.where(torch.isnan(increment), torch.full_like(increment, -math.inf), increment)
        new_log_w = log_w + increment
        before = _safe_logsumexp(log_w)
        after = _safe_logsumexp(new_log_w)
        log_Z = torch.where(torch.isfinite(before), log_Z + after - before, torch.full_like(log_Z, -math.inf))
        log_w, log_psi = new_log_w, new_psi
        rec_ess.append(effective_sample_size(log_w))
        rec_resampled.append(do_resample)
        if record:
            rec_states.append(dict(state))
            rec_latents.append(moved.latents)
            rec_log_w.append(log_w)
            rec_psi.append(log_psi)
            rec_ancestors.append(index)
    names["init"], names["step"] = list(init_names), list(step_names or [])

    def grouped(v):
        return v.reshape((G, N) + tuple(v.shape[1:]))

    empty = torch.zeros((0, G, N), dtype=log_w.dtype)
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=tuple(grouped(v) for v in first.latents) if record else (),
        step_latents=(
            tuple(torch.stack([grouped(step[k]) for step in rec_latents]) for k in range(len(step_names or [])))
            if record
            else ()
        ),
        states={k: torch.stack([grouped(s[k]) for s in rec_states]) for k in state} if record else {},
        step_log_weights=torch.stack(rec_log_w) if record else empty,
        log_twists=torch.stack(rec_psi) if record else empty,
        ancestors=torch.stack(rec_ancestors) if record and T else torch.zeros((0, G, N), dtype=torch.long),
        ess=torch.stack(rec_ess),
        resampled=torch.stack(rec_resampled) if T else torch.zeros((0, G), dtype=torch.bool),
    )


def _select(output: SMCOutput, group: int) -> SMCOutput:
    """One run of a batched :class:`SMCOutput` (drops the run axis)."""
    return SMCOutput(
        log_Z=output.log_Z[group],
        log_weights=output.log_weights[group],
        init_latents=tuple(v[group] for v in output.init_latents),
        step_latents=tuple(v[:, group] for v in output.step_latents),
        states={k: v[:, group] for k, v in output.states.items()},
        step_log_weights=output.step_log_weights[:, group],
        log_twists=output.log_twists[:, group],
        ancestors=output.ancestors[:, group],
        ess=output.ess[:, group],
        resampled=output.resampled[:, group],
        extras=None if output.extras is None else {k: v[:, group] for k, v in output.extras.items()},
    )


def run_filter(
    model: Any,
    step_args: Sequence[Any],
    num_particles: int,
    *,
    init_args: Sequence[Any] = (),
    proposal: Any = None,
    twist: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
    num_steps: int | None = None,
    max_plate_nesting: int = 0,
    names: dict | None = None,
) -> SMCOutput:
    """One run of (twisted, conditional) SMC, the particles a leading batch dimension.

    Args:
        model: object with ``init(state, *init_args)`` and ``step(state, *args_t)`` (SMCFilter's convention).
        step_args: tensors (or arrays) with a leading time axis ``T`` (``None`` entries pass ``None``).
        proposal: ``None`` (bootstrap) or a guide object with the model's ``init``/``step``
            convention, replayed into the model by site name (as ``SMCFilter`` does).
        twist: ``None`` or ``twist(t, state) -> (N,)`` giving every particle's ``log psi_t``
            (``t = 0..T-1``; ``psi_T = 1``); a ``torch.nn.Module`` such as :class:`QuadraticTwist`.
        ess_threshold: resample before a move when ``ESS < ess_threshold * N`` (``0``: never,
            i.e. sequential importance sampling; ``1``: whenever the weights are not uniform).
        clamp: ``(init_latents, step_latents)`` of one path (per latent site, in order; steps
            with a leading ``T`` axis): particle 0 follows it and is never resampled away
            (conditional SMC).  With a proposal its latent sites must be the model's, in order.
        max_plate_nesting: the model's plate nesting; the particle plate is at ``dim = -1 - max_plate_nesting``.
        names: if given, filled with the latent site names ``{"init": [...], "step": [...]}``
            (those of the first traced init and step).
    """
    check_positive_int("num_particles", num_particles)
    if clamp is not None:
        init_values, step_values = clamp
        clamp = (
            tuple(torch.as_tensor(v)[None] for v in init_values),
            tuple(torch.as_tensor(v)[None] for v in step_values),
        )
    output = _filter(
        model,
        step_args,
        1,
        num_particles,
        init_args=init_args,
        proposal=proposal,
        twist=twist,
        resampling=resampling,
        ess_threshold=ess_threshold,
        clamp=clamp,
        num_steps=num_steps,
        max_plate_nesting=max_plate_nesting,
        names=names,
    )
    return _select(output, 0)


# ---------------------------------------------------------------------------------------
# Autoregressive token models (the language-model case)
# ---------------------------------------------------------------------------------------
class TokenModel:
    """An autoregressive model over token sequences ``x_{1:T}`` in ``{0..V-1}`` and a potential.

    ``next_token_log_probs(tokens, position) -> (N, V)``: row ``i`` is
    ``log p0(x_{position+1} = v | prefix_i)``, the prefix being ``tokens[i, :position]`` of the
    fixed-length buffer ``tokens`` (``(N, T)``, ``torch.long``, batched over particles;
    entries from ``position`` on are padding and must be ignored; ``position`` a Python
    ``int``).  ``log_potential(tokens) -> (N,)``: ``log phi(x_{1:T})`` of full sequences
    ``(N, T)`` (``-inf`` allowed).  The target is ``sigma(x) ∝ p0(x) phi(x)``, ``Z = E_{p0}[phi]``.

    Twists for token models are ``twist(tokens, position) -> (N, V)``: ``log psi_{position+1}``
    of each prefix extended by each candidate next token (a ``torch.nn.Module`` such as
    :class:`TabularTwist` is learnable).  ``psi_T = phi`` is used at the last position.
    """

    def __init__(self, next_token_log_probs: Callable, log_potential: Callable, vocab_size: int, length: int):
        if not callable(next_token_log_probs) or not callable(log_potential):
            raise TypeError("TokenModel: next_token_log_probs and log_potential must be callables")
        self.next_token_log_probs = next_token_log_probs
        self.log_potential = log_potential
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)


class TabularTwist(torch.nn.Module):
    """Learnable token twist ``log psi_{t+1}(x_{1:t}, v) = sum_{s<t} u[s, x_{s+1}] + u[t, v] + w[t, v]``.

    Parameters ``u``, ``w``: ``(T, V)``, initialised to zero (``psi = 1``); rows are 0-based
    positions (row ``t`` belongs to the token at ``position = t``).  Exact for a Markov ``p0``
    with an additive log-potential ``sum_t g[t, x_t]``: ``u = g`` and
    ``w[t, v] = log E_{p0}[exp(sum_{s>t} g[s, x_s]) | x_t = v]``, so tests can check learned
    twists against the optimal ones.  Called as ``twist(tokens (N, T), position) -> (N, V)``.
    """

    def __init__(self, vocab_size: int, length: int):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)
        self.u = torch.nn.Parameter(torch.zeros(self.length, self.vocab_size))
        self.w = torch.nn.Parameter(torch.zeros(self.length, self.vocab_size))

    def forward(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        position = int(position)
        if not 0 <= position < self.length:
            raise ValueError(f"position: expected an int in 0..{self.length - 1}, got {position}")
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens: expected shape (N, {self.length}), got {tuple(tokens.shape)}")
        history = self.u[torch.arange(position), tokens[:, :position].long()].sum(-1)  # (N,)
        return history[:, None] + (self.u[position] + self.w[position])[None, :]


def _token_values(value: Any, shape: tuple[int, ...], role: str, dtype: torch.dtype) -> torch.Tensor:
    """A user callable's output checked for ``shape``, in ``dtype``, NaN -> ``-inf``."""
    value = torch.as_tensor(value)
    if tuple(value.shape) != shape:
        raise ValueError(f"{role}: expected a tensor of shape {shape}, got {tuple(value.shape)}")
    value = value.to(dtype)
    return torch.where(torch.isnan(value), torch.full_like(value, -math.inf), value)


def _log_phi_candidates(model: TokenModel, tokens: torch.Tensor, position: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, V)``: ``log phi`` of every particle's sequence with ``tokens[:, position]`` set to each ``v``."""
    total, V = tokens.shape[0], model.vocab_size
    candidates = tokens.repeat_interleave(V, dim=0)  # row i V + v: particle i with token v
    candidates[:, position] = torch.arange(V, device=tokens.device).repeat(total)
    value = _token_values(model.log_potential(candidates), (total * V,), "log_potential", dtype)
    return value.reshape(total, V)


def _check_token_proposal(proposal: Any) -> None:
    if not (proposal is None or (isinstance(proposal, str) and proposal == "prior")):
        raise ValueError(f"proposal: for a TokenModel expected None (twist-induced) or 'prior', got {proposal!r}")


@torch.no_grad()
def _token_filter(
    model: TokenModel,
    num_groups: int,
    num_particles: int,
    *,
    proposal: str | None = None,
    twist: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: torch.Tensor | None = None,
    record: bool = True,
) -> SMCOutput:
    """``num_groups`` independent token-model runs of ``num_particles`` particles, batched.

    ``clamp``: ``(G, T)`` token paths; particle 0 of group ``g`` follows path ``g``.  Returns
    an :class:`SMCOutput` with a run axis; with ``record=False`` only ``log_Z``,
    ``log_weights`` and ``ess``/``resampled`` are filled.
    """
    T, V = model.length, model.vocab_size
    G, N = num_groups, num_particles
    total = G * N
    dtype = torch.get_default_dtype()
    tokens = torch.zeros((total, T), dtype=torch.long)
    log_w = torch.zeros((G, N), dtype=dtype)
    log_psi = torch.zeros((G, N), dtype=dtype)
    log_Z = torch.zeros(G, dtype=dtype)
    offsets = (torch.arange(G) * N)[:, None]
    arange = torch.arange(N).expand(G, N)
    rec: dict[str, list] = {k: [] for k in ("choice", "tokens", "log_w", "psi", "index", "prefix", "pair", "base")}
    rec["tokens"].append(tokens.reshape(G, N, T))
    rec["log_w"].append(log_w)
    rec["psi"].append(log_psi)
    rec_ess, rec_resampled = [torch.full((G,), float(N), dtype=dtype)], []
    for position in range(T):
        ess = effective_sample_size(log_w)
        do_resample = ess < ess_threshold * N
        if bool(do_resample.any()):
            index = torch.where(do_resample[:, None], resample(log_w, resampling), arange)
            log_w = torch.where(do_resample[:, None], torch.zeros_like(log_w), log_w)
        else:
            index = arange.clone()
        if clamp is not None:
            index[:, 0] = 0
        if bool(do_resample.any()) or clamp is not None:
            tokens = tokens[(index + offsets).reshape(-1)]
            log_psi = torch.gather(log_psi, 1, index)
        log_p0 = _token_values(model.next_token_log_probs(tokens, position), (total, V), "next_token_log_probs", dtype)
        if position == T - 1:  # psi_T = phi
            log_next = _log_phi_candidates(model, tokens, position, dtype)
        elif twist is None:
            log_next = torch.zeros((total, V), dtype=dtype)
        else:
            log_next = _token_values(twist(tokens, position), (total, V), "twist", dtype)
        log_target = log_p0 + log_next  # (N, V): pi_{t+1}(s, v) up to pi_t's normaliser and psi_t(s)
        log_norm = torch.logsumexp(log_target, dim=-1)  # -inf where every continuation is impossible
        # q: the twist-induced proposal (uniform where it is undefined) or p0
        probs = normalized_weights(log_target if proposal is None else log_p0)
        choice = torch.multinomial(probs, 1).squeeze(-1)
        if clamp is not None:
            choice = choice.reshape(G, N)
            choice[:, 0] = clamp[:, position]
            choice = choice.reshape(total)
        chosen_psi = torch.gather(log_next, 1, choice[:, None]).reshape(G, N)
        increment = (log_norm.reshape(G, N) if proposal is None else chosen_psi) - log_psi
        increment = torch.where(torch.isnan(increment), torch.full_like(increment, -math.inf), increment)
        if record:
            prefix_log_w = (log_w - log_psi)[..., None]
            pair = prefix_log_w + log_target.reshape(G, N, V)
            base = prefix_log_w + log_p0.reshape(G, N, V)
            rec["pair"].append(torch.where(torch.isnan(pair), torch.full_like(pair, -math.inf), pair))
            rec["base"].append(torch.where(torch.isnan(base), torch.full_like(base, -math.inf), base))
            rec["prefix"].append(tokens.reshape(G, N, T))
        tokens = tokens.clone()
        tokens[:, position] = choice
        new_log_w = log_w + increment
        before = _safe_logsumexp(log_w)
        after = _safe_logsumexp(new_log_w)
        log_Z = torch.where(torch.isfinite(before), log_Z + after - before, torch.full_like(log_Z, -math.inf))
        log_w, log_psi = new_log_w, chosen_psi
        rec_ess.append(effective_sample_size(log_w))
        rec_resampled.append(do_resample)
        if record:
            rec["choice"].append(choice.reshape(G, N))
            rec["tokens"].append(tokens.reshape(G, N, T))
            rec["log_w"].append(log_w)
            rec["psi"].append(log_psi)
            rec["index"].append(index)
    empty = torch.zeros((0, G, N), dtype=dtype)
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=(),
        step_latents=(torch.stack(rec["choice"]),) if record else (),
        states={"tokens": torch.stack(rec["tokens"])} if record else {},
        step_log_weights=torch.stack(rec["log_w"]) if record else empty,
        log_twists=torch.stack(rec["psi"]) if record else empty,
        ancestors=torch.stack(rec["index"]) if record else torch.zeros((0, G, N), dtype=torch.long),
        ess=torch.stack(rec_ess),
        resampled=torch.stack(rec_resampled),
        extras=(
            {
                "prefixes": torch.stack(rec["prefix"]),
                "pair_log_weights": torch.stack(rec["pair"]),
                "pair_log_weights_untwisted": torch.stack(rec["base"]),
            }
            if record
            else None
        ),
    )


def _token_paths(clamp: tuple[tuple, tuple], model: TokenModel) -> torch.Tensor:
    """``(M, T)`` token paths (``long``) from ``_clamp_paths``' ``(init, steps)``, checked against the model."""
    init, steps = clamp
    if init or len(steps) != 1:
        raise ValueError(
            "exact_samples: a TokenModel's paths are {'init': {}, 'step': {'token': (M, T)}}, got "
            f"{len(init)} init and {len(steps)} step site(s)"
        )
    tokens = torch.as_tensor(steps[0])
    T, V = model.length, model.vocab_size
    if tokens.dim() != 2 or tokens.shape[1] != T:
        raise ValueError(f"exact_samples: token paths must have shape (M, {T}), got {tuple(tokens.shape)}")
    if tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"exact_samples: token paths must be integers, got {tokens.dtype}")
    tokens = tokens.long()
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
        raise ValueError(f"exact_samples: tokens must lie in 0..{V - 1}")
    return tokens


def run_token_filter(
    model: TokenModel,
    num_particles: int,
    *,
    proposal: str | None = None,
    twist: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    clamp: tuple[tuple, tuple] | None = None,
) -> SMCOutput:
    """(Twisted, conditional) SMC over the tokens of a :class:`TokenModel` (the paper's Alg. 1).

    At position ``t`` each particle's prefix ``s`` is extended by ``v`` from the
    twist-induced proposal ``q(v | s) ∝ p0(v | s) psi_{t+1}(s, v)`` (``proposal=None``; its
    incremental weight ``sum_v p0(v | s) psi_{t+1}(s, v) / psi_t(s)`` does not depend on
    ``v``) or from ``p0`` (``proposal="prior"``, weight ``psi_{t+1}(s, v) / psi_t(s)``), with
    ``psi_0 = 1`` and ``psi_T = phi`` (evaluated for the last token's ``V`` candidates).
    ``twist``: ``None`` or ``twist(tokens (N, T), position) -> (N, V)``.  ``clamp``:
    ``((), (tokens (T,),))``: particle 0 follows that path (conditional SMC).  ``extras``
    holds, per position, the prefixes the moves started from (``(T, N, T)``) and the log
    weights of every (prefix, next token) pair under ``pi_{t+1}`` and under the untwisted
    ``p0`` (``(T, N, V)``), which twist learning uses to average over ``v`` exactly.
    Randomness: torch's global generator.
    """
    if not isinstance(model, TokenModel):
        raise TypeError(f"model: expected a TokenModel, got {type(model).__name__}")
    _check_token_proposal(proposal)
    check_positive_int("num_particles", num_particles)
    check_choice("resampling", resampling, RESAMPLING)
    path = None
    if clamp is not None:
        path = _token_paths((tuple(clamp[0]), tuple(torch.as_tensor(v)[None] for v in clamp[1])), model)
    output = _token_filter(
        model,
        1,
        num_particles,
        proposal=proposal,
        twist=twist,
        resampling=resampling,
        ess_threshold=ess_threshold,
        clamp=path,
    )
    return _select(output, 0)


def genealogy(output: SMCOutput) -> torch.Tensor:
    """``(T + 1, N)`` index of each final particle's ancestor at every step (the last row is ``arange(N)``)."""
    index = torch.arange(output.log_weights.shape[-1])
    rows = [index]
    for ancestors_t in reversed(list(output.ancestors)):
        index = ancestors_t[index]
        rows.append(index)
    return torch.stack(rows[::-1])


def paths(output: SMCOutput) -> tuple[tuple, tuple, dict]:
    """The final particles' full paths.

    Returns init latents ``(N, ...)``, step latents ``(N, T, ...)`` and states ``(N, T + 1, ...)``.
    """
    lineage = genealogy(output)  # (T + 1, N)
    T = lineage.shape[0] - 1
    init = tuple(v[lineage[0]] for v in output.init_latents)
    steps = tuple(torch.stack([v[t][lineage[t + 1]] for t in range(T)], dim=1) for v in output.step_latents)
    states = {k: torch.stack([v[t][lineage[t]] for t in range(T + 1)], dim=1) for k, v in output.states.items()}
    return init, steps, states


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_positive_int("seed", seed, allow_zero=True))


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

    def get_samples(
        self, seed: int | torch.Generator | None = None, num_samples: int | None = None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The final particles' paths, ``{"init": {site: (N, ...)}, "step": {site: (N, T, ...)}}``.

        Without ``seed`` these are the ``N`` weighted paths (pair them with
        :attr:`log_weights`); with it (an int or a ``torch.Generator``), ``num_samples``
        (default ``N``) paths resampled multinomially by weight, so they are equally weighted
        draws from the target.  Site names are those of the model's first traced init/step.
        """
        init, steps, _ = paths(self.output)
        samples = {
            "init": dict(zip(self.names["init"], init, strict=True)),
            "step": dict(zip(self.names["step"], steps, strict=True)),
        }
        if seed is None:
            return samples
        num = check_positive_int("num_samples", num_samples or self.log_weights.shape[0])
        weights = normalized_weights(self.log_weights)
        index = torch.multinomial(weights, num, replacement=True, generator=_generator(seed))
        return {group: {k: v[index] for k, v in values.items()} for group, values in samples.items()}

    def to_arviz(self, seed: int | torch.Generator = 0):
        """``arviz.InferenceData``: resampled paths as one chain (``posterior``) and the filter's
        final ``log_weight`` (``sample_stats``); ``attrs["log_Z"]``."""
        import arviz as az

        samples = self.get_samples(seed)
        posterior = {k: v.detach().cpu().numpy()[None] for group in samples.values() for k, v in group.items()}
        stats = {"log_weight": self.log_weights.detach().cpu().numpy()[None]}
        idata = az.from_dict(posterior=posterior, sample_stats=stats)
        idata.attrs["log_Z"] = self.log_Z
        return idata


def _clamp_paths(
    samples: Mapping[str, Mapping[str, Any]], count: int | None
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``get_samples``-layout paths -> ``(init values (M, ...), step values (M, T, ...))`` per site in order."""
    try:
        init, steps = samples["init"], samples["step"]
        init = tuple(torch.as_tensor(v) for v in init.values())
        steps = tuple(torch.as_tensor(v) for v in steps.values())
    except (KeyError, TypeError, AttributeError):
        raise ValueError(
            "exact_samples: expected {'init': {site: (M, ...)}, 'step': {site: (M, T, ...)}} as get_samples() returns"
        ) from None
    sizes = {int(v.shape[0]) for v in init + steps if v.dim() > 0}
    if len(sizes) != 1 or any(v.dim() == 0 for v in init + steps):
        raise ValueError(f"exact_samples: every site needs the same leading (path) axis, got sizes {sorted(sizes)}")
    available = sizes.pop()
    if count is not None:
        if available < count:
            raise ValueError(f"exact_samples: {available} paths given, {count} needed (one per run)")
        init = tuple(v[:count] for v in init)
        steps = tuple(v[:count] for v in steps)
    return init, steps


# ---------------------------------------------------------------------------------------
# The user-facing object
# ---------------------------------------------------------------------------------------
class TwistedSMC:
    """Twisted SMC for a Pyro state-space model in :class:`pyro.infer.SMCFilter`'s convention.

    ``smc = TwistedSMC(model, num_particles=256, twist=None, proposal=None,
    resampling="systematic", ess_threshold=0.5, max_plate_nesting=0)``;
    ``result = smc.run(ys)`` with ``model.step(state, y_t)`` called for each ``y_t`` of ``ys``
    (leading time axis; ``init_args=`` go to ``init``), after ``pyro.set_rng_seed(...)``.
    ``proposal`` is ``None`` (bootstrap) or an SMCFilter guide.  ``twist`` is ``None`` (plain
    SMC), ``twist(t, state) -> log psi_t`` of shape ``(N,)``, or a learnable
    ``torch.nn.Module`` twist (e.g. :class:`QuadraticTwist`) that :meth:`fit_twists` trains;
    ``twist_params`` (``{name: tensor}``) loads its parameters.  See the module docstring for
    the equations.

    For a :class:`TokenModel` (the language-model case) ``run()`` etc. take no step or init
    arguments, ``proposal`` is ``None`` (twist-induced) or ``"prior"``, twists are
    ``twist(tokens (N, T), position) -> (N, V)`` (e.g. :class:`TabularTwist`), exact samples
    are ``{"init": {}, "step": {"token": (M, T)}}``, and :meth:`fit_twists` uses the
    Rao-Blackwellised CTL/SIXO losses over every (particle, next token) pair.
    """

    def __init__(
        self,
        model: Any,
        num_particles: int = 256,
        twist: Any = None,
        proposal: Any = None,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        twist_params: Mapping[str, Any] | None = None,
        max_plate_nesting: int = 0,
    ):
        self.tokens = isinstance(model, TokenModel)
        if self.tokens:
            _check_token_proposal(proposal)
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
        self.resampling = check_choice("resampling", resampling, RESAMPLING)
        if isinstance(ess_threshold, bool) or not (
            isinstance(ess_threshold, numbers.Real) and 0.0 < float(ess_threshold) <= 1.0
        ):
            raise ValueError(f"ess_threshold: expected a number in (0, 1], got {ess_threshold!r}")
        self.ess_threshold = float(ess_threshold)
        self.max_plate_nesting = check_positive_int("max_plate_nesting", max_plate_nesting, allow_zero=True)
        if twist is not None and not callable(twist):
            raise TypeError(f"twist: expected None, a callable or a torch.nn.Module twist, got {type(twist).__name__}")
        self.twist = twist
        self.learnable = isinstance(twist, torch.nn.Module) and any(True for _ in twist.parameters())
        if twist_params is not None:
            self.twist_params = twist_params

    @property
    def twist_params(self) -> dict[str, torch.Tensor] | None:
        """The learnable twist's parameters ``{name: tensor}`` (detached copies); ``None`` without one."""
        if not self.learnable:
            return None
        return {k: v.detach().clone() for k, v in self.twist.named_parameters()}

    @twist_params.setter
    def twist_params(self, params: Mapping[str, Any]) -> None:
        if not self.learnable:
            raise ValueError("twist_params: given, but the twist is not a learnable torch.nn.Module with parameters")
        own = dict(self.twist.named_parameters())
        if not isinstance(params, Mapping):
            raise TypeError(f"twist_params: expected a mapping {{name: tensor}}, got {type(params).__name__}")
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise ValueError(f"twist_params: {unknown} are not parameters of the twist (it has {sorted(own)})")
        with torch.no_grad():
            for name, value in params.items():
                value = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
                if value.shape != own[name].shape:
                    raise ValueError(
                        f"twist_params: {name!r} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)

    # ---- running ----------------------------------------------------------------------
    def _run(self, step_args, init_args, num_groups, num_particles, ess_threshold, clamp, record, names=None):
        if self.tokens:
            if tuple(step_args) or tuple(init_args):
                raise ValueError(
                    "step_args: a TokenModel takes no step or init arguments (its length is TokenModel.length), got "
                    f"{len(tuple(step_args))} step and {len(tuple(init_args))} init argument(s)"
                )
            if names is not None:
                names.update(init=[], step=["token"])
            return _token_filter(
                self.model,
                num_groups,
                num_particles,
                proposal=self.proposal,
                twist=self.twist,
                resampling=self.resampling,
                ess_threshold=ess_threshold,
                clamp=None if clamp is None else _token_paths(clamp, self.model),
                record=record,
            )
        return _filter(
            self.model,
            tuple(step_args),
            num_groups,
            num_particles,
            init_args=tuple(init_args),
            proposal=self.proposal,
            twist=self.twist,
            resampling=self.resampling,
            ess_threshold=ess_threshold,
            clamp=clamp,
            max_plate_nesting=self.max_plate_nesting,
            record=record,
            names=names,
        )

    def run(self, *step_args: Any, init_args: Sequence[Any] = ()) -> SMCResult:
        """Run the filter over the steps of ``step_args`` (each with a leading time axis)."""
        names: dict = {}
        output = _select(
            self._run(step_args, init_args, 1, self.num_particles, self.ess_threshold, None, True, names), 0
        )
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
        *step_args: Any,
        num_runs: int = 16,
        num_particles: int | None = None,
        ess_threshold: float | None = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        init_args: Sequence[Any] = (),
    ) -> torch.Tensor:
        """``log Z_hat`` ``(num_runs,)`` of independent runs (batched in the particle plate); with
        ``exact_samples`` (``get_samples`` layout, leading axis >= ``num_runs``) run ``r``
        clamps particle 0 to path ``r`` (conditional SMC)."""
        num_runs = check_positive_int("num_runs", num_runs)
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        threshold = self.ess_threshold if ess_threshold is None else float(ess_threshold)
        clamp = None if exact_samples is None else _clamp_paths(exact_samples, num_runs)
        if self.tokens:
            per_batch = max(1, _MAX_TOKEN_PAIRS // (num_particles * self.model.vocab_size))
        else:
            per_batch = max(1, _MAX_BATCH // num_particles)
        out = []
        for start in range(0, num_runs, per_batch):
            stop = min(start + per_batch, num_runs)
            part = None if clamp is None else tuple(tuple(v[start:stop] for v in vs) for vs in clamp)
            out.append(self._run(step_args, init_args, stop - start, num_particles, threshold, part, False).log_Z)
        return torch.cat(out)

    def log_Z_bounds(
        self,
        *step_args: Any,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        num_runs: int = 16,
        init_args: Sequence[Any] = (),
    ) -> LogZBounds:
        """The sandwich on ``log Z`` (see :class:`adapters.smc.LogZBounds`), each bound a mean over ``num_runs``.

        The upper bounds and the KL intervals need ``exact_samples`` from the target
        (``get_samples`` layout, leading axis ``>= num_runs``); without them they are NaN.
        """
        common = dict(num_runs=num_runs, num_particles=num_particles, init_args=init_args)
        never = 0.0  # SIS/IWAE: no resampling
        sis = self.log_Z_samples(*step_args, ess_threshold=never, **common)
        smc = self.log_Z_samples(*step_args, **common)
        if exact_samples is None:
            return combine_bounds(sis.numpy(), smc.numpy())
        iwae = self.log_Z_samples(*step_args, ess_threshold=never, exact_samples=exact_samples, **common)
        csmc = self.log_Z_samples(*step_args, exact_samples=exact_samples, **common)
        one = dict(num_runs=num_runs, num_particles=1, init_args=init_args, ess_threshold=never)
        elbo = self.log_Z_samples(*step_args, **one)
        eubo = self.log_Z_samples(*step_args, exact_samples=exact_samples, **one)
        return combine_bounds(*(v.numpy() for v in (sis, smc, iwae, csmc, elbo, eubo)))

    # ---- twist learning ---------------------------------------------------------------
    def fit_twists(
        self,
        *step_args: Any,
        method: str = "ctl",
        num_steps: int = 500,
        optimizer: Any = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        init_args: Sequence[Any] = (),
        progress_bar: bool = False,
    ) -> tuple[torch.nn.Module, np.ndarray]:
        """Train the learnable twist by CTL (``method="ctl"``) or SIXO (``"sixo"``), in place.

        Each step runs the filter with the current twists (no gradient through it, weights
        detached), then takes one ``optimizer`` step on the CTL / SIXO loss.  ``optimizer``:
        ``None`` (``torch.optim.Adam(lr=1e-2)``), a ``torch.optim.Optimizer`` over the twist's
        parameters, a ``pyro.optim.PyroOptim`` (e.g. ``pyro.optim.Adam({"lr": 1e-2})``), or a
        callable ``params -> torch.optim.Optimizer`` (e.g. ``torch.optim.SGD`` with a default
        ``lr``, or a ``functools.partial``).  Positive (target) samples are ``exact_samples``
        when given (the ``get_samples`` layout, any number of paths), else the filter's final
        weighted paths.  Returns ``(twist module, losses (num_steps,))``.

        For a :class:`TokenModel` the losses are Rao-Blackwellised over the next token: at each
        position ``t < T - 1`` the negative term averages ``log psi_{t+1}(s, v)`` over every
        (particle prefix ``s``, token ``v``) pair, weighted under ``pi_{t+1}`` (CTL) or under the
        untwisted ``p0`` (SIXO); positives are ``exact_samples["step"]["token"]`` ``(M, T)``
        (uniform weights) or the final particles' sequences with their weights.
        """
        from tqdm.auto import trange

        check_choice("method", method, TWIST_METHODS)
        if not self.learnable:
            raise TypeError("twist: fit_twists needs a learnable twist (a torch.nn.Module with parameters)")
        num_steps = check_positive_int("num_steps", num_steps)
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        if self.tokens and self.model.length < 2:
            raise ValueError("length: fit_twists needs a TokenModel of length >= 2 (psi_T = phi is not learned)")
        params = [p for p in self.twist.parameters() if p.requires_grad]
        step = _optimizer_step(optimizer, params)
        positives = None
        if exact_samples is not None and self.tokens:
            positives = _token_paths(_clamp_paths(exact_samples, None), self.model)
            count = positives.shape[0]
            positive_weights = torch.full((count,), 1.0 / count, dtype=torch.get_default_dtype())
        elif exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args)
            count = next(iter(positives.values())).shape[0]
            positive_weights = torch.full((count,), 1.0 / count, dtype=torch.get_default_dtype())
        losses = np.empty(num_steps)
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            output = _select(self._run(step_args, init_args, 1, num_particles, self.ess_threshold, None, True), 0)
            if positives is not None:
                states, weights = positives, positive_weights
            elif self.tokens:
                states, weights = output.states["tokens"][-1], normalized_weights(output.log_weights)
            else:
                _, _, states = paths(output)
                weights = normalized_weights(output.log_weights)
            if self.tokens:
                loss = self._token_twist_loss(method, output, states, weights)
            else:
                loss = self._twist_loss(method, output, states, weights)
            for p in params:
                p.grad = None
            loss.backward()
            step()
            losses[i] = float(loss.detach())
        return self.twist, losses

    def _twist_loss(self, method: str, output: SMCOutput, positive_states: dict, positive_weights: torch.Tensor):
        """The CTL or SIXO loss (sum over ``t < T``); positives ``(M, T + 1, ...)`` with weights ``(M,)``."""
        T = output.step_log_weights.shape[0] - 1  # psi_T = 1 is not learned
        loss = torch.zeros(())
        for t in range(T):
            negatives = {k: v[t] for k, v in output.states.items()}
            log_psi_neg = self.twist(t, negatives).reshape(-1)
            log_psi_pos = self.twist(t, {k: v[:, t] for k, v in positive_states.items()}).reshape(-1)
            w_pos = positive_weights.to(log_psi_pos)
            if method == "ctl":
                w_neg = normalized_weights(output.step_log_weights[t]).to(log_psi_neg)
                loss = loss - _weighted_sum(w_pos, log_psi_pos) + _weighted_sum(w_neg, log_psi_neg)
            else:
                untwisted = output.step_log_weights[t] - output.log_twists[t]
                w_base = normalized_weights(untwisted).to(log_psi_neg)
                loss = (
                    loss
                    - _weighted_sum(w_pos, torch.nn.functional.logsigmoid(log_psi_pos))
                    - _weighted_sum(w_base, torch.nn.functional.logsigmoid(-log_psi_neg))
                )
        return loss

    def _token_twist_loss(
        self, method: str, output: SMCOutput, positive_tokens: torch.Tensor, positive_weights: torch.Tensor
    ) -> torch.Tensor:
        """Rao-Blackwellised CTL / SIXO loss of a token model, summed over positions ``t < T - 1``.

        ``positive_tokens`` ``(M, T)`` with weights ``(M,)``; negatives: every (prefix, next
        token) pair of ``output.extras`` (``(N, V)`` per position), the pair weights normalised
        over all ``N V`` pairs (no gradient through them)::

            CTL:  - sum_m w_m log psi(x^m_{1:t+1}) + sum_{i,v} W_{iv} log psi(s_i, v),   W under pi_{t+1}
            SIXO: - sum_m w_m log sig(log psi(x^m_{1:t+1})) - sum_{i,v} B_{iv} log sig(-log psi(s_i, v)),
                  B under the untwisted p0.
        """
        key = "pair_log_weights" if method == "ctl" else "pair_log_weights_untwisted"
        loss = torch.zeros(())
        for position in range(self.model.length - 1):  # psi_T = phi is not learned
            chosen = positive_tokens[:, position]
            log_psi_pos = torch.gather(self.twist(positive_tokens, position), 1, chosen[:, None])[:, 0]
            log_psi_pairs = self.twist(output.extras["prefixes"][position], position)  # (N, V)
            pairs = output.extras[key][position]
            w_pairs = normalized_weights(pairs.reshape(-1)).reshape(pairs.shape).to(log_psi_pairs)
            w_pos = positive_weights.to(log_psi_pos)
            if method == "ctl":
                loss = loss - _weighted_sum(w_pos, log_psi_pos) + _weighted_sum(w_pairs, log_psi_pairs)
            else:
                loss = (
                    loss
                    - _weighted_sum(w_pos, torch.nn.functional.logsigmoid(log_psi_pos))
                    - _weighted_sum(w_pairs, torch.nn.functional.logsigmoid(-log_psi_pairs))
                )
        return loss

    def _replay_states(self, samples, step_args, init_args) -> dict[str, torch.Tensor]:
        """States ``(M, T + 1, ...)`` along given paths: the model run on the paths' latent values."""
        clamp = _clamp_paths(samples, None)
        count = clamp[0][0].shape[0] if clamp[0] else clamp[1][0].shape[0]
        output = _filter(
            self.model,
            tuple(step_args),
            count,
            1,
            init_args=tuple(init_args),
            ess_threshold=0.0,
            clamp=clamp,
            max_plate_nesting=self.max_plate_nesting,
        )
        return {k: v[:, :, 0].movedim(0, 1) for k, v in output.states.items()}


def _weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i v_i`` with zero-weight terms dropped (so a ``-inf``/NaN value at ``w = 0`` adds nothing)."""
    keep = weights > 0
    return torch.sum(torch.where(keep, weights * values, torch.zeros_like(values)))


def _optimizer_step(optimizer: Any, params: list[torch.Tensor]) -> Callable[[], None]:
    """One update of ``params`` from their ``.grad``: a torch optimizer, a PyroOptim, or a factory."""
    from pyro.optim import PyroOptim

    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=1e-2)
    if isinstance(optimizer, PyroOptim):
        return lambda: optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise TypeError(
                "optimizer: expected None, a torch.optim.Optimizer, a pyro.optim.PyroOptim or a callable "
                f"params -> Optimizer, got {type(optimizer).__name__}"
            )
        optimizer = optimizer(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: the factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in params if id(p) not in held]
    if missing:
        raise ValueError(f"optimizer: it does not hold {len(missing)} of the twist's {len(params)} parameter tensors")
    return optimizer.step
