"""Delayed-rejection Hamiltonian Monte Carlo (DR-HMC) in torch, and its Pyro kernel.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610).

The torch twin of :mod:`numpyro_ext.infer.drhmc`, with the same layers and names:

* :func:`delayed_rejection` - the meta-algorithm for any sequence of deterministic,
  volume-preserving involutions on an extended state (eqs. 9-12, any number of stages,
  probabilistic retries of Sec. 3.2);
* :func:`init` / :func:`build_kernel` - DR-HMC's math core on a flat position vector;
* :class:`DRHMC` - a :class:`pyro.infer.mcmc.NUTS` subclass for ``pyro.infer.MCMC``: Pyro's
  own model initialisation, transforms and warmup adapter, NUTS transitions during warmup
  when the trajectory length is to be chosen, DR-HMC transitions after.

Stage ``k`` from ``x`` with proposal ``y_k = F_k(x)`` is accepted with::

    alpha_k(x) = min(1, pi(y_k) prod_{j<k} [1 - alpha_j(y_k)]^w
                      / (pi(x)   prod_{j<k} [1 - alpha_j(x)]^w))

(``alpha_j(y_k)``: the ghost stages from ``y_k``; ``w = 2`` with probabilistic retries of
probability ``1 - alpha_k``, ``w = 1`` without). Random numbers come from torch's global
generator (``pyro.set_rng_seed``) in this order: the momentum, then per tried stage its
acceptance uniform and, when it is rejected and a later stage exists, its retry uniform.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc import NUTS
from pyro.ops.integrator import potential_grad

from adapters.configs import DRHMCConfig, check_model_or_potential
from adapters.validation import check_greater, check_positive_int

__all__ = [
    "DRHMC",
    "DRHMCInfo",
    "DRHMCState",
    "DelayedRejectionInfo",
    "IntegratorState",
    "build_kernel",
    "delayed_rejection",
    "init",
    "stage_schedule",
]

_NEG_INF = -math.inf


# ---------------------------------------------------------------------------------------
# The delayed-rejection meta-algorithm
# ---------------------------------------------------------------------------------------
class DelayedRejectionInfo(NamedTuple):
    """What one delayed-rejection transition did; fields as in the JAX module (Python scalars)."""

    acceptance_rate: float
    first_acceptance_rate: float
    is_accepted: bool
    stage: int
    num_proposals: int
    is_divergent: bool
    num_evals: int
    chain_evals: int
    log_joint: float


def _finite_or_neg_inf(value: float) -> float:
    return value if math.isfinite(value) else _NEG_INF


def _log1m_exp(log_p: float) -> float:
    """log(1 - p) for log p <= 0."""
    if log_p == _NEG_INF:
        return 0.0
    if log_p >= 0.0:
        return _NEG_INF
    return math.log(-math.expm1(log_p)) if log_p > -math.log(2.0) else math.log1p(-math.exp(log_p))


def _log_accept(log_joint_from, log_joint_to, log_rejects_from, log_rejects_to, weight) -> float:
    """Log of eq. (12), every 0/0 a rejection (see the JAX module's ``_log_accept``)."""
    numerator = log_joint_to + weight * sum(log_rejects_to)
    denominator = log_joint_from + weight * sum(log_rejects_from)
    if numerator == _NEG_INF or math.isnan(numerator):
        return _NEG_INF
    if denominator == _NEG_INF:
        return 0.0
    return min(numerator - denominator, 0.0)


def delayed_rejection(
    point: Any,
    log_joint_fn: Callable[[Any], float],
    proposals: Sequence[Callable[[Any], tuple[Any, int]]],
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
) -> tuple[Any, DelayedRejectionInfo]:
    """One delayed-rejection transition from ``point`` (Modi et al. 2023, eqs. 9-12).

    Args:
        point: the current extended state (any object ``proposals`` understand).
        log_joint_fn: its log density (a float; non-finite values reject).
        proposals: stage ``k``'s deterministic, volume-preserving involution
            ``F_k(point) -> (new_point, cost)``.
        probabilistic: try stage ``k + 1`` only with probability ``1 - alpha_k``.
        max_delta_energy: a proposal this much below the start's log joint is divergent.

    Returns:
        ``(new_point, info)``. Later stages are only computed when they are tried.
    """
    num_stages = len(proposals)
    if num_stages < 1:
        raise ValueError(f"delayed_rejection: `proposals` must hold at least one proposal, got {num_stages}")
    weight = 2.0 if probabilistic else 1.0

    def ghost_ladder(start, log_joint_start, depth):
        log_rejects, cost = [], 0
        for j in range(depth):
            proposal, proposal_cost = proposals[j](start)
            log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
            ghost_rejects, ghost_cost = ghost_ladder(proposal, log_joint_proposal, j)
            log_alpha = _log_accept(log_joint_start, log_joint_proposal, log_rejects, ghost_rejects, weight)
            log_rejects.append(_log1m_exp(log_alpha))
            cost += proposal_cost + ghost_cost
        return log_rejects, cost

    log_joint_start = _finite_or_neg_inf(log_joint_fn(point))
    chain_rejects: list[float] = []
    num_evals = chain_evals = 0
    first_alpha = alpha = 0.0
    for k in range(num_stages):
        proposal, proposal_cost = proposals[k](point)
        log_joint_proposal = _finite_or_neg_inf(log_joint_fn(proposal))
        ghost_rejects, ghost_cost = ghost_ladder(proposal, log_joint_proposal, k)
        num_evals += proposal_cost + ghost_cost
        chain_evals += proposal_cost
        log_alpha = _log_accept(log_joint_start, log_joint_proposal, chain_rejects, ghost_rejects, weight)
        alpha = math.exp(log_alpha)
        first_alpha = alpha if k == 0 else first_alpha
        divergent = log_joint_proposal == _NEG_INF or log_joint_start - log_joint_proposal > max_delta_energy
        info = dict(
            acceptance_rate=alpha,
            first_acceptance_rate=first_alpha,
            num_proposals=k + 1,
            num_evals=num_evals,
            chain_evals=chain_evals,
        )
        if math.log(torch.rand(()).item()) < log_alpha:
            return proposal, DelayedRejectionInfo(
                **info, is_accepted=True, stage=k, is_divergent=False, log_joint=log_joint_proposal
            )
        log_reject = _log1m_exp(log_alpha)
        chain_rejects.append(log_reject)
        last = k == num_stages - 1
        if last or (probabilistic and not math.log(torch.rand(()).item()) < log_reject):
            return point, DelayedRejectionInfo(
                **info, is_accepted=False, stage=-1, is_divergent=divergent, log_joint=log_joint_start
            )
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------
# DR-HMC math core
# ---------------------------------------------------------------------------------------
class IntegratorState(NamedTuple):
    """A point of HMC's extended space: tensors ``(d,)`` and the float ``logdensity``."""

    position: torch.Tensor
    momentum: torch.Tensor
    logdensity: float
    logdensity_grad: torch.Tensor


class DRHMCState(NamedTuple):
    """The chain's state: position ``(d,)``, its log density and gradient ``(d,)``."""

    position: torch.Tensor
    logdensity: float
    logdensity_grad: torch.Tensor


class DRHMCInfo(NamedTuple):
    """Per-transition diagnostics of :func:`build_kernel`'s step (Python scalars)."""

    acceptance_rate: float
    first_acceptance_rate: float
    is_accepted: bool
    stage: int
    num_proposals: int
    is_divergent: bool
    energy: float
    num_grad_evals: int
    num_integration_steps: int


def _value_and_grad(logdensity_fn: Callable, position: torch.Tensor) -> tuple[float, torch.Tensor]:
    position = position.detach().requires_grad_(True)
    value = logdensity_fn(position)
    if not torch.isfinite(value):
        return _NEG_INF, torch.zeros_like(position)
    (grad,) = torch.autograd.grad(value, position)
    return float(value.detach()), grad.detach()


def init(position: torch.Tensor, logdensity_fn: Callable[[torch.Tensor], torch.Tensor]) -> DRHMCState:
    """Initial state at ``position`` of shape ``(d,)``."""
    logdensity, grad = _value_and_grad(logdensity_fn, position)
    return DRHMCState(position.detach(), logdensity, grad)


def stage_schedule(step_size: float, num_steps: int, stage: int, reduction_factor: float) -> tuple[float, int]:
    """Stage ``stage``'s (step size, number of steps): ``L c^k`` steps of ``eps L / (L c^k)``."""
    num_steps_k = math.ceil(num_steps * reduction_factor**stage - 1e-6)
    return step_size * num_steps / num_steps_k, num_steps_k


def _velocity(inverse_mass_matrix: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    return inverse_mass_matrix * momentum if inverse_mass_matrix.dim() == 1 else inverse_mass_matrix @ momentum


def _kinetic_energy(inverse_mass_matrix: torch.Tensor, momentum: torch.Tensor) -> float:
    return 0.5 * float(momentum @ _velocity(inverse_mass_matrix, momentum))


def _sample_momentum(inverse_mass_matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Momentum ~ N(0, M), ``M`` the inverse of ``inverse_mass_matrix``."""
    noise = torch.randn(like.shape, dtype=like.dtype, device=like.device)
    if inverse_mass_matrix.dim() == 1:
        return noise / inverse_mass_matrix.sqrt()
    cholesky = torch.linalg.cholesky(inverse_mass_matrix)  # r = C^{-T} noise has covariance M
    return torch.linalg.solve_triangular(cholesky.T, noise[:, None], upper=True)[:, 0]


def _leapfrog_involution(logdensity_fn, inverse_mass_matrix, step_size, num_steps):
    """``num_steps`` velocity-Verlet steps, then a momentum flip; stops early once non-finite."""

    def involution(point: IntegratorState) -> tuple[IntegratorState, int]:
        position, momentum, logdensity, grad = point
        for _ in range(num_steps):
            momentum = momentum + 0.5 * step_size * grad
            position = position + step_size * _velocity(inverse_mass_matrix, momentum)
            logdensity, grad = _value_and_grad(logdensity_fn, position)
            if logdensity == _NEG_INF:  # a diverged trajectory is rejected whatever comes next
                break
            momentum = momentum + 0.5 * step_size * grad
        return IntegratorState(position, -momentum, logdensity, grad), num_steps

    return involution


def build_kernel(
    max_proposals: int = 3,
    reduction_factor: float = 4.0,
    probabilistic: bool = True,
    max_delta_energy: float = 1000.0,
) -> Callable[..., tuple[DRHMCState, DRHMCInfo]]:
    """DR-HMC's transition: ``step(state, logdensity_fn, step_size, inverse_mass_matrix, num_steps)``.

    Stage ``k`` integrates ``num_steps * c^k`` steps of ``step_size / c^k``
    (``c = reduction_factor``) from the same start and momentum; ``inverse_mass_matrix`` is
    ``(d,)`` or ``(d, d)``. ``max_proposals = 1`` is plain HMC.
    """
    check_positive_int("max_proposals", max_proposals)
    check_greater("reduction_factor", reduction_factor, 1, "the step-size ratio between stages")

    def step(state: DRHMCState, logdensity_fn, step_size, inverse_mass_matrix, num_steps):
        momentum = _sample_momentum(inverse_mass_matrix, state.position)
        point = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
        proposals = [
            _leapfrog_involution(
                logdensity_fn, inverse_mass_matrix, *stage_schedule(step_size, num_steps, k, reduction_factor)
            )
            for k in range(max_proposals)
        ]

        def log_joint(point: IntegratorState) -> float:
            if point.logdensity == _NEG_INF:
                return _NEG_INF
            return point.logdensity - _kinetic_energy(inverse_mass_matrix, point.momentum)

        new, info = delayed_rejection(point, log_joint, proposals, probabilistic, max_delta_energy)
        return DRHMCState(new.position, new.logdensity, new.logdensity_grad), DRHMCInfo(
            acceptance_rate=info.acceptance_rate,
            first_acceptance_rate=info.first_acceptance_rate,
            is_accepted=info.is_accepted,
            stage=info.stage,
            num_proposals=info.num_proposals,
            is_divergent=info.is_divergent,
            energy=-info.log_joint,
            num_grad_evals=info.num_evals,
            num_integration_steps=info.chain_evals,
        )

    return step


# ---------------------------------------------------------------------------------------
# Pyro kernel
# ---------------------------------------------------------------------------------------
def _target_model(target) -> Callable[[], None]:
    """A Pyro model of a Target of another backend: one unconstrained site ``"x"`` of length ``dim``."""
    import pyro.distributions as dist

    from pyro_ext.models.posteriordb._util import Flat

    logdensity = target.as_torch()

    def model() -> None:
        x = pyro.sample("x", Flat(dist.constraints.real_vector, (), (target.dim,)))
        pyro.factor("log_density", logdensity(x))

    model.__name__ = target.name
    return model


class _CountingPotential:
    """A potential function that counts its calls (one per leapfrog step in Pyro)."""

    def __init__(self, potential_fn):
        self.potential_fn = potential_fn
        self.calls = 0

    def __call__(self, params):
        self.calls += 1
        return self.potential_fn(params)


class DRHMC(NUTS):
    """Delayed-rejection HMC (Modi, Barnett & Carpenter 2023) for :class:`pyro.infer.MCMC`.

    Same arguments and meaning as :class:`numpyro_ext.infer.DRHMC`; see its docstring and
    the DR-HMC guide. Subclassing Pyro's ``NUTS`` (an ``HMC``) reuses Pyro's model
    initialisation, transforms, step-size/mass-matrix warmup adapter and, when neither
    ``trajectory_length`` nor ``num_steps`` is given, its NUTS transitions during warmup,
    whose mean integration time over the last slow and the terminal adaptation windows
    becomes the trajectory length.

    Args:
        model: a Pyro model or an :class:`adapters.Target`. A Target of another backend is
            sampled through ``Target.as_torch()`` as one unconstrained site ``"x"`` of
            length ``target.dim`` (map draws to named parameters with ``target.constrain``).
        potential_fn: instead of ``model``, a potential energy of a dict of unconstrained
            tensors (``MCMC(..., initial_params=...)`` is then needed).

    Per-iteration statistics (warmup included) are kept on the kernel:
    :meth:`get_sample_stats` returns ``accept_prob``, ``diverging``, ``stage``,
    ``num_steps``, ``num_grad_evals``, ``energy``, ``step_size`` and ``warmup`` as arrays
    of length ``warmup_steps + num_samples`` (one chain per kernel; Pyro runs several
    chains in separate processes).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        step_size: float = 1.0,
        trajectory_length: float | None = None,
        num_steps: int | None = None,
        max_proposals: int = 3,
        reduction_factor: float = 4,
        probabilistic: bool = True,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.8,
        adapt_mass_matrix: bool = True,
        dense_mass: bool = False,
        init_strategy: Callable = init_to_uniform,
        max_delta_energy: float = 1000.0,
        max_tree_depth: int = 10,
        jit_compile: bool = False,
    ):
        from adapters.target import Target

        check_model_or_potential("DRHMC", model, potential_fn)
        self.config = DRHMCConfig(
            step_size=step_size,
            trajectory_length=trajectory_length,
            num_steps=num_steps,
            max_proposals=max_proposals,
            reduction_factor=reduction_factor,
            probabilistic=probabilistic,
            adapt_step_size=adapt_step_size,
            target_accept_prob=target_accept_prob,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            max_delta_energy=max_delta_energy,
            max_tree_depth=max_tree_depth,
        )
        if isinstance(model, Target):
            if model.backend == "pyro":
                model = functools.partial(model.model, *model.model_args, **model.model_kwargs)
            else:
                model = _target_model(model)
        super().__init__(
            model,
            potential_fn,
            step_size=step_size,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            full_mass=dense_mass,
            jit_compile=jit_compile,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            init_strategy=init_strategy,
        )
        self._stats: list[dict[str, Any]] = []
        cfg = self.config
        self._dr_step = build_kernel(cfg.max_proposals, cfg.reduction_factor, cfg.probabilistic, cfg.max_delta_energy)

    # ---- Pyro MCMCKernel interface -----------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        if self.model is not None:
            self._check_continuous(args, kwargs)
        super().setup(warmup_steps, *args, **kwargs)
        self.trajectory_length = (
            self.config.trajectory_length if self.config.trajectory_length is not None else 2 * math.pi
        )
        self._choose_length = (
            self.config.trajectory_length is None and self.config.num_steps is None and warmup_steps > 0
        )
        self._length_sum = self._length_count = 0.0
        schedule = list(self._adapter.adaptation_schedule)
        self._length_window_start = schedule[-2].start if len(schedule) >= 2 else 0
        self._window_ends = {w.end for w in schedule}
        self._stats: list[dict[str, Any]] = []
        if self._choose_length:
            self.potential_fn = _CountingPotential(self.potential_fn)

    def sample(self, params):
        in_warmup = self._t < self._warmup_steps
        if in_warmup and self._choose_length:
            return self._nuts_sample(params)
        z, potential_energy, z_grads = self._fetch_from_cache()
        if z is None:
            z = params
            z_grads, potential_energy = potential_grad(self.potential_fn, z)
        sites, inverse_mass_matrix = self._flat_layout()
        shapes = {name: z[name].shape for name in sites}

        def unflatten(x):
            out, offset = {}, 0
            for name in sites:
                size = math.prod(shapes[name])
                out[name] = x[offset : offset + size].reshape(shapes[name])
                offset += size
            return out

        def logdensity(x):
            return -self.potential_fn(unflatten(x))

        position = torch.cat([z[name].detach().reshape(-1) for name in sites])
        grad = -torch.cat([z_grads[name].reshape(-1) for name in sites])
        state = DRHMCState(position, -float(potential_energy), grad)
        step_size = self.step_size
        with pyro.validation_enabled(False):  # NaN parameters are expected on diverging trajectories
            new, info = self._dr_step(state, logdensity, step_size, inverse_mass_matrix, self._first_stage_num_steps())
        z_new = unflatten(new.position)
        z_grads_new = {k: -v for k, v in unflatten(new.logdensity_grad).items()}
        potential_new = torch.as_tensor(-new.logdensity, dtype=position.dtype)
        self._cache(z_new, potential_new, z_grads_new)
        self._record(
            info.acceptance_rate,
            info.is_divergent,
            info.stage,
            info.num_integration_steps,
            info.num_grad_evals,
            info.energy,
            step_size,
        )
        self._t += 1
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            self._accept_cnt += int(info.is_accepted)
            if info.is_divergent:
                self._divergences.append(self._t - 1 - self._warmup_steps)
        else:
            n = self._t
            self._adapter.step(self._t, z_new, torch.tensor(info.first_acceptance_rate), z_grads_new)
        self._mean_accept_prob += (info.acceptance_rate - self._mean_accept_prob) / n
        return dict(z_new)

    def logging(self):
        out = super().logging()
        if self._stats:
            out["grads/it"] = str(self._stats[-1]["num_grad_evals"])
        return out

    def get_sample_stats(self) -> dict[str, Any]:
        """Per-iteration statistics of this kernel's chain as numpy arrays (warmup included)."""
        import numpy as np

        if not self._stats:
            return {}
        return {key: np.asarray([row[key] for row in self._stats]) for key in self._stats[0]}

    # ---- helpers --------------------------------------------------------------------------
    def _nuts_sample(self, params):
        calls = self.potential_fn.calls
        t, accept_before = self._t, self._mean_accept_prob
        z = super().sample(params)
        num_steps = self.potential_fn.calls - calls
        # the mean is NUTS's running mean; recover this iteration's acceptance probability
        accept_prob = accept_before + (self._mean_accept_prob - accept_before) * (t + 1)
        step_size = self._adapter.step_size
        if t >= self._length_window_start and t not in self._window_ends:
            self._length_sum += num_steps * step_size
            self._length_count += 1
        if self._t == self._warmup_steps and self._length_count > 0:
            self.trajectory_length = self._length_sum / self._length_count
        _, potential_energy, _ = self._fetch_from_cache()
        self._record(accept_prob, False, -1, num_steps, num_steps, float(potential_energy), step_size)
        return z

    def _record(self, accept_prob, diverging, stage, num_steps, num_grad_evals, energy, step_size):
        self._stats.append(
            dict(
                accept_prob=float(accept_prob),
                diverging=bool(diverging),
                stage=int(stage),
                num_steps=int(num_steps),
                num_grad_evals=int(num_grad_evals),
                energy=float(energy),
                step_size=float(step_size),
                warmup=self._t < self._warmup_steps,
            )
        )

    def _first_stage_num_steps(self) -> int:
        if self.config.num_steps is not None:
            return self.config.num_steps
        return int(min(max(math.ceil(self.trajectory_length / self.step_size - 1e-6), 1), 2**self._max_tree_depth))

    def _flat_layout(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """Site order of the flat vector and the (single-block) inverse mass matrix."""
        blocks = self.inverse_mass_matrix
        if len(blocks) != 1:
            raise NotImplementedError("DRHMC supports one mass-matrix block (dense_mass=True or False)")
        ((sites, inverse_mass_matrix),) = blocks.items()
        return sites, inverse_mass_matrix

    def _check_continuous(self, args, kwargs):
        from pyro.infer.autoguide.initialization import InitMessenger

        # initialise like Pyro's HMC, so improper sites (which cannot be sampled) are fine
        trace = pyro.poutine.trace(InitMessenger(self._init_strategy)(self.model)).get_trace(*args, **kwargs)
        discrete = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
        ]
        if discrete:
            raise ValueError(
                f"model: DRHMC needs continuous latent sites, but {discrete} are discrete; "
                "marginalise them out (e.g. with logsumexp over their values) or observe them"
            )
