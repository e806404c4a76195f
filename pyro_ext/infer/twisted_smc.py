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
    "TwistedSMC",
    "effective_sample_size",
    "genealogy",
    "normalized_weights",
    "paths",
    "resample",
    "run_filter",
]

RESAMPLING = ("multinomial", "systematic", "stratified")
TWIST_METHODS = ("ctl", "sixo")
_MAX_BATCH = 1 << 16  # particles per plate when runs are batched


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
    * ``ess``: ``(T + 1,)`` effective sample size after each move; ``resampled``: ``(T,)`` flags.

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
        for obj, role in ((model, "model"), (proposal, "proposal")):
            if obj is None and role == "proposal":
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
        """
        from tqdm.auto import trange

        check_choice("method", method, TWIST_METHODS)
        if not self.learnable:
            raise TypeError("twist: fit_twists needs a learnable twist (a torch.nn.Module with parameters)")
        num_steps = check_positive_int("num_steps", num_steps)
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        params = [p for p in self.twist.parameters() if p.requires_grad]
        step = _optimizer_step(optimizer, params)
        positives = None
        if exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args)
            count = next(iter(positives.values())).shape[0]
            positive_weights = torch.full((count,), 1.0 / count, dtype=torch.get_default_dtype())
        losses = np.empty(num_steps)
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            output = _select(self._run(step_args, init_args, 1, num_particles, self.ess_threshold, None, True), 0)
            if positives is None:
                _, _, states = paths(output)
                weights = normalized_weights(output.log_weights)
            else:
                states, weights = positives, positive_weights
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
