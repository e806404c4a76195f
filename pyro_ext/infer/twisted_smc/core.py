"""The core of twisted SMC in torch: all particles' move, the filter's shared steps, ``run_filter``.

Equations and conventions: :mod:`pyro_ext.infer.twisted_smc`.  Particles are a leading batch
dimension (a ``pyro.plate`` the filter opens); several independent runs are ``G`` groups of
``N`` particles in one plate of size ``G N``.  Weights, ESS and resampling come from
:mod:`pyro_ext.infer.smc_util`.  Randomness: torch's global generator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from adapters.smc import check_observed_shape, twist_shape_error
from adapters.validation import check_positive_int
from pyro_ext.infer.smc_util import effective_sample_size, resample, safe_logsumexp

__all__ = [
    "FilterOptions",
    "Move",
    "SMCOutput",
    "check_data",
    "filter_runs",
    "genealogy",
    "move_particles",
    "paths",
    "resample_groups",
    "run_filter",
    "select_run",
    "record_step",
    "update_log_Z",
    "weight_step",
]


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


class Move(NamedTuple):
    """All particles' move: the new ``state``, the model's latent site names and values, the weights."""

    state: dict
    names: list
    latents: list  # per latent site, (total, ...) with the particle axis first
    log_weight: torch.Tensor  # (total,): log p(x_t, y_t | .) - log q(x_t | .)


def move_particles(model_fn, proposal_fn, state, args, clamp, num_groups, num_particles, max_plate_nesting) -> Move:
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
    return Move(new_state, [k for k, _ in latents], values, log_weight)


def _check_observed(trace, args: Sequence[Any], full: Sequence[Any], role: str, max_plate_nesting: int) -> None:
    """Each observed site whose value IS one of ``args`` (the data as passed, one step of it) has
    the shape of the site for one particle (:func:`adapters.smc.check_observed_shape`)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        for i, arg in enumerate(args):
            if arg is not None and site["value"] is arg:
                batch = tuple(site["fn"].batch_shape)
                axis = len(batch) - 1 - max_plate_nesting  # the particle plate's dim, dropped
                per_particle = (batch[:axis] + batch[axis + 1 :] if axis >= 0 else batch) + tuple(
                    site["fn"].event_shape
                )
                check_observed_shape(f"{role}[{i}]", tuple(full[i].shape), name, tuple(arg.shape), per_particle)


def check_data(model: Any, step_args: Sequence[Any], init_args: Sequence[Any], max_plate_nesting: int) -> dict:
    """Trace ``model.init`` and the model's first step, in a particle plate of one, on the data.

    Every observed site fed directly by an argument must have the argument's shape (one
    step's slice for ``step_args``): data that would silently broadcast (``ys`` of shape
    ``(T, 3)`` for a scalar observation) are refused with the argument's name.  Returns the
    latent site names ``{"init": [...], "step": [...]}``.  Torch's global generator is left as it was.
    """
    plate = pyro.plate("particles", 1, dim=-1 - max_plate_nesting)
    state: dict = {}
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False), poutine.block(), torch.no_grad():
        with plate:
            trace = poutine.trace(model.init).get_trace(state, *init_args)
        _check_observed(trace, init_args, init_args, "init_args", max_plate_nesting)
        trace = prune_subsample_sites(trace)
        names = {"init": [k for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]}
        first = tuple(None if a is None else a[0] for a in step_args)
        with plate:
            trace = poutine.trace(model.step).get_trace(state, *first)
        _check_observed(trace, first, step_args, "step_args", max_plate_nesting)
        trace = prune_subsample_sites(trace)
        names["step"] = [k for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    return names


# ---------------------------------------------------------------------------------------
# The filter: the resampling and normaliser updates every filter shares, the runs, run_filter
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


class FilterOptions(NamedTuple):
    """How a filter run moves, weights and resamples: everything but the model, the data and clamped paths.

    ``proposal``: ``None`` (bootstrap) or an ``SMCFilter`` guide, replayed into the model by
    site name; ``twist``: ``None`` or ``twist(t, state) -> (N,)``; ``max_plate_nesting``: the
    particle plate sits at ``dim = -1 - max_plate_nesting``.
    """

    init_args: tuple = ()
    proposal: Any = None
    twist: Callable | None = None
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    max_plate_nesting: int = 0


def resample_groups(
    log_weights: torch.Tensor, ess_threshold: float, method: str, clamped: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Resample each group ``(G, N)`` whose ``ESS < ess_threshold * N``.

    Returns the ancestors ``(G, N)`` (within each group), the log weights after them (0 where
    resampled), the flags ``(G,)`` and the flat ancestor indices ``(G N,)`` into the particle
    plate (``None`` when no particle moved).  A clamped particle 0 is its own ancestor.
    """
    G, N = log_weights.shape
    arange = torch.arange(N).expand(G, N)
    do_resample = effective_sample_size(log_weights) < ess_threshold * N
    if bool(do_resample.any()):
        index = torch.where(do_resample[:, None], resample(log_weights, method), arange)
        log_weights = torch.where(do_resample[:, None], torch.zeros_like(log_weights), log_weights)
    else:
        index = arange.clone()
    if clamped:
        index[:, 0] = 0
    flat = (index + (torch.arange(G) * N)[:, None]).reshape(-1) if bool(do_resample.any()) or clamped else None
    return index, log_weights, do_resample, flat


def update_log_Z(log_Z: torch.Tensor, log_weights: torch.Tensor, new_log_weights: torch.Tensor) -> torch.Tensor:
    """``log Z_hat`` ``(G,)`` times each group's ``sum_i W_{t-1}^i w_t^i`` (``-inf`` once every weight is zero)."""
    before = safe_logsumexp(log_weights)
    after = safe_logsumexp(new_log_weights)
    return torch.where(torch.isfinite(before), log_Z + after - before, torch.full_like(log_Z, -math.inf))


def weight_step(rec: dict, log_Z, log_weights, increment, do_resample) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log Z_hat, log weights)`` after a move's log-weight ``increment`` ``(G, N)`` (NaN -> ``-inf``);
    appends the new ESS and the resampling flags to ``rec["ess"]``, ``rec["resampled"]``."""
    increment = torch.where(torch.isnan(increment), torch.full_like(increment, -math.inf), increment)
    new_log_weights = log_weights + increment
    log_Z = update_log_Z(log_Z, log_weights, new_log_weights)
    rec["ess"].append(effective_sample_size(new_log_weights))
    rec["resampled"].append(do_resample)
    return log_Z, new_log_weights


def record_step(rec: dict, **values: Any) -> None:
    """Append each of ``values`` to the list ``rec[name]``."""
    for name, value in values.items():
        rec[name].append(value)


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
    if value.dim() >= 1 and value.shape[0] == total and value.numel() != total:
        raise twist_shape_error(tuple(value.shape[1:]))
    if value.numel() != total:
        raise ValueError(f"twist: expected log psi_t of shape ({total},) (one per particle), got {tuple(value.shape)}")
    value = value.reshape(total)
    return torch.where(torch.isnan(value), torch.full_like(value, -math.inf), value)


def _check_state(state: dict, total: int) -> None:
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != total:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"model: state[{key!r}] must be a tensor with a leading particle dimension of size {total}, got {shape}"
            )


def _check_step(moved: Move, state: dict, step_names: list | None, t: int) -> list:
    """The step's latent site names, checked against step 1's; ``state`` keys unchanged."""
    if set(moved.state) != set(state):
        raise ValueError(
            f"model: step changed the keys of `state` from {sorted(state)} to {sorted(moved.state)}; "
            "init must set every key that step uses"
        )
    if step_names is not None and len(moved.names) != len(step_names):
        raise ValueError(
            f"model: step {t} samples {len(moved.names)} latent site(s) {moved.names}, step 1 sampled "
            f"{len(step_names)} {step_names}; every step needs the same latent sites"
        )
    return moved.names if step_names is None else step_names


def _runs_output(rec: dict, first: Move, log_Z, log_w, G: int, N: int, T: int, record: bool, num_sites: int):
    """The recorded steps of :func:`filter_runs` stacked into an :class:`SMCOutput` with a run axis."""

    def grouped(v):
        return v.reshape((G, N) + tuple(v.shape[1:]))

    empty = torch.zeros((0, G, N), dtype=log_w.dtype)
    return SMCOutput(
        log_Z=log_Z,
        log_weights=log_w,
        init_latents=tuple(grouped(v) for v in first.latents) if record else (),
        step_latents=(
            tuple(torch.stack([grouped(step[k]) for step in rec["latents"]]) for k in range(num_sites))
            if record
            else ()
        ),
        states={k: torch.stack([grouped(s[k]) for s in rec["states"]]) for k in rec["states"][-1]} if record else {},
        step_log_weights=torch.stack(rec["log_w"]) if record else empty,
        log_twists=torch.stack(rec["psi"]) if record else empty,
        ancestors=torch.stack(rec["index"]) if record and T else torch.zeros((0, G, N), dtype=torch.long),
        ess=torch.stack(rec["ess"]),
        resampled=torch.stack(rec["resampled"]) if T else torch.zeros((0, G), dtype=torch.bool),
    )


@torch.no_grad()
def filter_runs(
    model: Any,
    step_args: Sequence[Any],
    num_groups: int,
    num_particles: int,
    options: FilterOptions | None = None,
    *,
    clamp: tuple[tuple, tuple] | None = None,
    num_steps: int | None = None,
    record: bool = True,
    names: dict | None = None,
) -> SMCOutput:
    """``num_groups`` independent runs of ``num_particles`` particles each, in one particle plate.

    ``clamp``: ``(init values (G, ...), step values (G, T, ...))`` per latent site in order:
    particle 0 of group ``g`` follows path ``g`` and is its own ancestor.  Returns an
    :class:`SMCOutput` with a run axis (see there); with ``record=False`` only ``log_Z``,
    ``log_weights`` and ``ess``/``resampled`` are filled.
    """
    options = FilterOptions() if options is None else options
    step_args = tuple(_as_tensor(a) for a in step_args)
    T = _time_length(step_args, num_steps)
    G, N = num_groups, num_particles
    total, nesting, twist = G * N, options.max_plate_nesting, options.twist
    names = {} if names is None else names
    proposal = options.proposal
    clamp_init, clamp_steps = (None, None) if clamp is None else clamp
    init = None if proposal is None else proposal.init
    first = move_particles(model.init, init, {}, tuple(options.init_args), clamp_init, G, N, nesting)
    state = first.state
    _check_state(state, total)
    dtype = first.log_weight.dtype
    log_psi = torch.zeros(total, dtype=dtype) if twist is None else _twist_values(twist, 0, state, total).to(dtype)
    log_w = (first.log_weight + log_psi).reshape(G, N)
    log_psi = log_psi.reshape(G, N)
    log_Z = safe_logsumexp(log_w) - math.log(N)
    rec: dict[str, list] = {"states": [dict(state)] if record else [], "log_w": [log_w], "psi": [log_psi]}
    rec.update(latents=[], index=[], ess=[effective_sample_size(log_w)], resampled=[])
    step_names: list | None = None
    for t in range(1, T + 1):
        index, log_w, do_resample, flat = resample_groups(
            log_w, options.ess_threshold, options.resampling, clamp is not None
        )
        if flat is not None:
            state = {k: v[flat] for k, v in state.items()}
            log_psi = torch.gather(log_psi, 1, index)
        args_t = tuple(None if a is None else a[t - 1] for a in step_args)
        clamp_t = None if clamp is None else [v[:, t - 1] for v in clamp_steps]
        step = None if proposal is None else proposal.step
        moved = move_particles(model.step, step, state, args_t, clamp_t, G, N, nesting)
        step_names = _check_step(moved, state, step_names, t)
        state = moved.state
        if twist is None or t == T:
            new_psi = torch.zeros_like(log_w)
        else:
            new_psi = _twist_values(twist, t, state, total).to(log_w.dtype).reshape(G, N)
        log_Z, log_w = weight_step(rec, log_Z, log_w, moved.log_weight.reshape(G, N) + new_psi - log_psi, do_resample)
        log_psi = new_psi
        if record:
            record_step(rec, states=dict(state), latents=moved.latents, log_w=log_w, psi=log_psi, index=index)
    names["init"], names["step"] = list(first.names), list(step_names or [])
    return _runs_output(rec, first, log_Z, log_w, G, N, T, record, len(step_names or []))


def select_run(output: SMCOutput, group: int) -> SMCOutput:
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
    options = FilterOptions(tuple(init_args), proposal, twist, resampling, ess_threshold, max_plate_nesting)
    output = filter_runs(model, step_args, 1, num_particles, options, clamp=clamp, num_steps=num_steps, names=names)
    return select_run(output, 0)


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
