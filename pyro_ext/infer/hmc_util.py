"""HMC building blocks in torch: momentum, kinetic energy, velocity Verlet, the Metropolis test.

Shared by every Pyro algorithm that integrates Hamiltonian dynamics (DR-HMC, DR-G-HMC, AIS, the
MI bounds' MINE-AIS negatives); the JAX twin is :mod:`numpyro_ext.infer.hmc_util`.  Neal, "MCMC
using Hamiltonian dynamics", Handbook of MCMC, 2011, Sec. 5.2 and 5.3.

With a position ``x``, a momentum ``r ~ N(0, M)`` and an inverse mass matrix ``M^{-1}`` (a
diagonal ``(d,)`` or a dense ``(d, d)``; ``None`` is the identity), the Hamiltonian is
``H(x, r) = -log pi(x) + K(r)`` with kinetic energy ``K(r) = r^T M^{-1} r / 2`` and velocity
``dx/dt = M^{-1} r``.  A leapfrog (velocity-Verlet) step of size ``eps`` is (Neal eq. 5.18-5.20)::

    r <- r + eps/2 grad log pi(x),    x <- x + eps M^{-1} r,    r <- r + eps/2 grad log pi(x).

Shapes: one chain has ``(d,)`` positions and momenta; a batch of ``K`` independent chains
``(K, d)`` (or any leading axes ``(..., d)``), with per-chain values ``(...)``.  A step size is a
float or a tensor that broadcasts against the momenta (``(K, 1)`` for one per chain).

Randomness: :func:`sample_momentum` draws one ``randn`` of the momenta's shape (:func:`momentum_from_noise`
and :func:`partial_refresh` take the standard-normal noise instead) and
:func:`metropolis_test` one ``rand`` of the per-chain shape, from ``generator`` (a
``torch.Generator``) or, when it is ``None``, from torch's global generator.

The last section is the Pyro MCMC kernels' common shell (:class:`RecordingKernel`, on the model plumbing of
:mod:`pyro_ext.infer.model_util`).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

from adapters.configs import check_flag, check_initial_values, check_kernel_functions, check_model_or_potential
from pyro_ext.infer.model_util import check_continuous, flatten_sites, target_model

__all__ = [
    "FlatPoint",
    "IntegratorState",
    "MetropolisInfo",
    "RecordingKernel",
    "finite_or_neg_inf",
    "fixed_length_steps",
    "kinetic_energy",
    "leapfrog",
    "metropolis_test",
    "momentum_from_noise",
    "partial_refresh",
    "sample_momentum",
    "velocity",
]

Tensor = torch.Tensor


class IntegratorState(NamedTuple):
    """A point of HMC's extended space: ``position`` and ``momentum`` ``(..., d)``, the log density
    ``logdensity`` at the position (a tensor ``(...)``, or a float for one chain; ``-inf`` where not
    finite) and its gradient ``logdensity_grad`` ``(..., d)``."""

    position: Tensor
    momentum: Tensor
    logdensity: Tensor | float
    logdensity_grad: Tensor


class MetropolisInfo(NamedTuple):
    """The Metropolis test of each chain ``(...)``: ``log_accept_prob`` ``min(0, delta)`` (``-inf`` for an
    invalid proposal), ``is_accepted`` and ``is_divergent`` (a rejected proposal that was invalid or
    whose energy error ``-delta`` exceeds ``max_delta_energy``)."""

    log_accept_prob: Tensor
    is_accepted: Tensor
    is_divergent: Tensor


def finite_or_neg_inf(value: Tensor) -> Tensor:
    """``value`` where finite, ``-inf`` elsewhere (a NaN or ``+inf`` log density is a zero density)."""
    return torch.where(torch.isfinite(value), value, torch.full_like(value, -math.inf))


def velocity(inverse_mass_matrix: Tensor | None, momentum: Tensor) -> Tensor:
    """``M^{-1} r`` for a momentum ``(d,)`` or a batch ``(..., d)``.

    ``M^{-1}`` is ``(d,)`` (diagonal), ``(d, d)`` (dense) or ``None`` (the identity).
    """
    if inverse_mass_matrix is None:
        return momentum
    if inverse_mass_matrix.dim() == 1:
        return momentum * inverse_mass_matrix
    if momentum.dim() == 1:
        return inverse_mass_matrix @ momentum
    return momentum @ inverse_mass_matrix.T


def kinetic_energy(inverse_mass_matrix: Tensor | None, momentum: Tensor) -> Tensor:
    """``K(r) = r^T M^{-1} r / 2``: a 0-dim tensor for a momentum ``(d,)``, ``(...)`` for a batch ``(..., d)``."""
    if momentum.dim() == 1:
        return 0.5 * (momentum @ velocity(inverse_mass_matrix, momentum))
    return 0.5 * (momentum * velocity(inverse_mass_matrix, momentum)).sum(-1)


def momentum_from_noise(noise: Tensor, inverse_mass_matrix: Tensor | None) -> Tensor:
    """A momentum ``r ~ N(0, M)`` from standard-normal ``noise`` ``(d,)`` or ``(..., d)``.

    ``M`` is the inverse of ``inverse_mass_matrix``: ``r = noise / sqrt(M^{-1})`` for a diagonal;
    for a dense ``M^{-1} = C C^T`` (Cholesky), ``r = C^{-T} noise``, whose covariance is
    ``(C C^T)^{-1} = M``; ``None`` is the identity (``r = noise``).
    """
    if inverse_mass_matrix is None:
        return noise
    if inverse_mass_matrix.dim() == 1:
        return noise / inverse_mass_matrix.sqrt()
    cholesky = torch.linalg.cholesky(inverse_mass_matrix)
    if noise.dim() == 1:
        return torch.linalg.solve_triangular(cholesky.T, noise[:, None], upper=True)[:, 0]
    flat = noise.reshape(-1, noise.shape[-1])
    return torch.linalg.solve_triangular(cholesky.T, flat.T, upper=True).T.reshape(noise.shape)


def sample_momentum(generator: torch.Generator | None, inverse_mass_matrix: Tensor | None, like: Tensor) -> Tensor:
    """A momentum ``r ~ N(0, M)`` of ``like``'s shape, dtype and device, from one ``randn``
    (:func:`momentum_from_noise`)."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return momentum_from_noise(noise, inverse_mass_matrix)


def partial_refresh(
    noise: Tensor, momentum: Tensor, inverse_mass_matrix: Tensor | None, damping: float | Tensor
) -> Tensor:
    """Generalized HMC's partial momentum refresh ``sqrt(1 - damping) r + sqrt(damping) xi``, ``xi ~ N(0, M)``
    (Horowitz 1991); the twin of :func:`numpyro_ext.infer.hmc_util.partial_refresh`.

    ``xi`` is made from standard-normal ``noise`` (the shape of ``momentum``, ``(d,)`` or ``(..., d)``) by
    :func:`momentum_from_noise`.  ``damping = 1`` is HMC's full refresh; ``N(0, M)`` is invariant for every
    ``damping`` in ``[0, 1]`` (the covariance stays ``(1 - damping) M + damping M``).
    """
    fresh = momentum_from_noise(noise, inverse_mass_matrix)
    return math.sqrt(1.0 - damping) * momentum + math.sqrt(damping) * fresh


def fixed_length_steps(step_size: float, trajectory_length: float, max_num_steps: int) -> tuple[float, int]:
    """``(step size, number of steps)`` of a leapfrog trajectory of length ``T`` (NumPyro's ``HMC`` rule).

    ``L = ceil(T / eps)`` steps of ``T / L <= eps``, so every trajectory integrates exactly ``T``
    whatever ``eps`` adaptation tries; ``L`` is capped at ``max_num_steps``, and a capped trajectory
    keeps ``eps`` (and is shorter than ``T``) rather than take steps larger than ``eps``. The JAX
    twin :func:`numpyro_ext.infer.hmc_util.fixed_length_steps` says why a trajectory of ``L`` steps
    of ``eps`` (anywhere in ``[T, T + eps)``) misleads warmup's mass-matrix estimate.
    """
    num_steps = math.ceil(trajectory_length / step_size - 1e-6)  # T / eps = 2 + rounding error: 2 steps
    if num_steps > max_num_steps:
        return step_size, max_num_steps
    num_steps = max(num_steps, 1)
    return trajectory_length / num_steps, num_steps


def leapfrog(
    state: IntegratorState,
    evaluate: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor | float, Tensor]],
    step_size: float | Tensor,
    inverse_mass_matrix: Tensor | None,
    num_steps: int,
) -> IntegratorState:
    """``num_steps`` velocity-Verlet steps from ``state`` (no momentum flip: the kinetic energy is even).

    Each step: ``r <- r + eps/2 g``; ``x <- x + eps M^{-1} r``;
    ``(x, log pi, g) = evaluate(x, r, i)``; ``r <- r + eps/2 g``.  ``evaluate`` returns the log
    density and gradient at the new position ``x`` (step ``i`` counts from 0); it may also replace
    the position (e.g. freeze a chain that left the support at a safe point, whose gradient it then
    sets to zero).  One call of ``evaluate`` per step: ``num_steps`` gradient evaluations.
    """
    position, momentum, logdensity, grad = state
    for i in range(num_steps):
        momentum = momentum + 0.5 * step_size * grad
        position = position + step_size * velocity(inverse_mass_matrix, momentum)
        position, logdensity, grad = evaluate(position, momentum, i)
        momentum = momentum + 0.5 * step_size * grad
    return IntegratorState(position, momentum, logdensity, grad)


def metropolis_test(
    generator: torch.Generator | None,
    delta: Tensor,
    like: Tensor,
    valid: Tensor | None = None,
    max_delta_energy: float = math.inf,
) -> MetropolisInfo:
    """Accept each chain's proposal with probability ``min(1, exp(delta))``; one ``rand`` of ``delta``'s shape.

    ``delta = log pi(x') - K(r') - (log pi(x) - K(r))`` ``(...)``, the log joint's change (minus
    the energy error).  ``valid`` ``(...)`` marks proposals that may be accepted at all (default:
    ``delta`` finite); an invalid one has acceptance probability 0 and is divergent, as is a
    rejected one with energy error ``-delta > max_delta_energy``.  The uniforms take ``like``'s
    dtype and device.
    """
    if valid is None:
        valid = torch.isfinite(delta)
    log_accept = torch.where(valid, torch.clamp(delta, max=0.0), torch.full_like(delta, -math.inf))
    log_u = torch.log(torch.rand(delta.shape, generator=generator, dtype=like.dtype, device=like.device))
    accepted = log_u < log_accept
    divergent = ~accepted & ((log_accept == -math.inf) | (-delta > max_delta_energy))
    return MetropolisInfo(log_accept, accepted, divergent)


# ---------------------------------------------------------------------------------------
# The Pyro MCMC kernels' common shell (the twin of numpyro_ext.infer.model_util.KernelModel)
# ---------------------------------------------------------------------------------------
class FlatPoint(NamedTuple):
    """The current draw on the flat ``R^d`` of a kernel's sites: ``position`` and ``grad`` ``(d,)`` of the log
    density, ``logdensity`` (a float, ``-inf`` where not finite), ``logdensity_fn(x (d,)) -> ()`` (a
    numerical failure of the potential is NaN) and ``unflatten`` (:func:`flatten_sites`)."""

    position: Tensor
    grad: Tensor
    logdensity: float
    logdensity_fn: Callable[[Tensor], Tensor]
    unflatten: Callable[[Tensor], dict]


class RecordingKernel(MCMCKernel):
    """The shell the library's Pyro MCMC kernels share (:class:`pyro_ext.infer.DRHMC`, :class:`pyro_ext.infer.DRGHMC`).

    * the model: :meth:`set_model` (a Pyro model, a Target, or a ``potential_fn``), :meth:`start_chain`
      in ``setup`` (Pyro's ``initialize_model``, discrete sites refused), :meth:`flat_point` and
      :meth:`move_to` around a flat core's transition;
    * ``initial_params``, checked when ``MCMC(..., initial_params=...)`` sets it;
    * per-iteration statistics: :meth:`record` (through :meth:`record_transition` for a core's
      transition, :meth:`record_nuts` for a NUTS warmup step) appends one row (``sample_stats``) and keeps Pyro's
      counters (accepted draws, divergent draw indices) over the sampling rows and the running
      acceptance probability of the current phase; :meth:`get_sample_stats` returns them as arrays,
      ``diagnostics()`` adds Pyro's ``"divergences"`` and ``"acceptance rate"``;
    * ``logging`` and ``cleanup``, with ``self._nuts`` the warmup's NUTS while it runs (else ``None``);
    * :meth:`constrain_samples` for a Target of another backend (``self._target``, or ``None``).

    A subclass defines ``_reset`` (its per-chain state, ``self._state``: the current ``(z, potential energy,
    potential gradient)`` or ``None``) and ``is_failure(exception)`` (the potential's exceptions that count as
    a NaN density); :meth:`no_latent_sample` is its iteration for a model without latent sites (Pyro's HMC's).
    """

    _target = None
    _initial_params = None
    _nuts = None

    def set_model(
        self, algorithm: str, model: Any, potential_fn: Callable | None, init_strategy: Callable, jit_compile: bool
    ) -> None:
        """Check and keep the model (a Target of Pyro run natively, of another backend by :func:`target_model`)."""
        from adapters.target import Target

        check_model_or_potential(algorithm, model, potential_fn)
        check_kernel_functions(algorithm, model, potential_fn, init_strategy)
        self._jit_compile = check_flag("jit_compile", jit_compile)
        self.algorithm, self._target = algorithm, None
        if isinstance(model, Target):
            if model.backend == "pyro":
                model = functools.partial(model.model, *model.model_args, **model.model_kwargs)
            else:
                self._target, model = model, target_model(model)
        self.model, self.potential_fn, self.transforms, self._init_strategy = model, potential_fn, None, init_strategy

    def reset_statistics(self, warmup_steps: int = 0) -> None:
        """Clear the statistics and counters for a chain of ``warmup_steps`` warmup iterations."""
        self._warmup_steps, self._iteration = warmup_steps, 0
        self._num_draws = self._num_accepted = self._num_averaged = 0
        self._running_accept_prob = 0.0
        self._divergent_draws: list[int] = []
        self.sample_stats: list[dict[str, Any]] = []

    def start_chain(self, warmup_steps: int, args: tuple = (), kwargs: dict | None = None) -> dict[str, Tensor]:
        """Clear the statistics for a chain of ``warmup_steps`` warmup iterations and, when the kernel has a
        model, initialise it as Pyro's HMC does; return the initial unconstrained values (detached)."""
        self.reset_statistics(warmup_steps)
        if self.model is not None:
            check_continuous(self.algorithm, self.model, self._init_strategy, args, kwargs or {})
            self._initial_params, self.potential_fn, self.transforms, _ = initialize_model(
                self.model,
                args,
                kwargs or {},
                transforms=self.transforms,
                jit_compile=self._jit_compile,
                init_strategy=self._init_strategy,
                initial_params=self._initial_params,
            )
        elif self._initial_params is None:
            raise ValueError(
                f"{self.algorithm}: with `potential_fn`, pass `initial_params` to MCMC (one value per chain)"
            )
        return {k: v.detach() for k, v in self._initial_params.items()}

    @property
    def initial_params(self) -> dict[str, Tensor] | None:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, Tensor] | None) -> None:
        if params is not None:  # MCMC(..., initial_params=...) sets it: a string or an int tensor is named here
            check_initial_values("initial_params", params)
        self._initial_params = params

    @staticmethod
    def is_failure(exception: Exception) -> bool:
        """Whether an exception of the potential counts as a NaN density (none, unless a subclass says so)."""
        return False

    def flat_point(self, params: dict[str, Tensor], sites: tuple[str, ...]) -> FlatPoint:
        """The current draw (``self._state``, or ``params`` after warmup's NUTS) flat in the order ``sites``."""
        if self._state is None:
            z = {k: v.detach() for k, v in params.items()}
            z_grads, potential_energy = potential_grad(self.potential_fn, z)
        else:
            z, potential_energy, z_grads = self._state
        position, unflatten = flatten_sites(z, sites)
        potential_fn, is_failure = self.potential_fn, self.is_failure

        def logdensity_fn(x: Tensor) -> Tensor:
            try:
                return -potential_fn(unflatten(x))
            except Exception as e:  # Pyro's numerical-failure exceptions count as NaN, as in its HMC
                if is_failure(e):
                    return x.new_tensor(math.nan)
                raise

        logdensity = -float(potential_energy)
        logdensity = logdensity if math.isfinite(logdensity) else -math.inf
        return FlatPoint(position, -flatten_sites(z_grads, sites)[0], logdensity, logdensity_fn, unflatten)

    def move_to(self, new: Any, point: FlatPoint) -> dict[str, Tensor]:
        """Keep a core's new state (``position``, ``logdensity``, ``logdensity_grad``) as ``self._state``; its sites."""
        z_new, z_grads_new = point.unflatten(new.position), point.unflatten(-new.logdensity_grad)
        like = point.position
        self._state = (z_new, torch.as_tensor(-new.logdensity, dtype=like.dtype, device=like.device), z_grads_new)
        return z_new

    def no_latent_sample(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """An iteration of a model without latent sites: nothing to move; Pyro's HMC counts it accepted."""
        self._iteration += 1
        if self._iteration > self._warmup_steps:
            self._num_draws += 1
            self._num_accepted += 1
            self._running_accept_prob = 1.0
        return params

    def record(self, is_accepted: bool = False, **row: Any) -> None:
        """Append one iteration's statistics; a sampling row (``warmup=False``) also counts in Pyro's diagnostics."""
        kinds = dict(diverging=bool, stage=int, num_steps=int, num_grad_evals=int, warmup=bool)
        self.sample_stats.append({key: kinds.get(key, float)(value) for key, value in row.items()})
        if not row["warmup"]:
            self._num_draws += 1
            self._num_accepted += int(is_accepted)
            if row["diverging"]:
                self._divergent_draws.append(self._num_draws - 1)
            if self._num_draws == 1:  # the running mean restarts with the sampling phase
                self._num_averaged = 0
        if not math.isnan(row["accept_prob"]):  # NUTS warmup rows have none
            self._num_averaged += 1
            self._running_accept_prob += (row["accept_prob"] - self._running_accept_prob) / self._num_averaged

    def record_transition(self, new: Any, info: Any, step_size: float, warmup: bool) -> None:
        """Append the row of one of the kernel's own transitions: a delayed-rejection core's new state and info
        (:func:`pyro_ext.infer.drhmc.core.build_kernel`'s, :func:`pyro_ext.infer.drghmc.core.build_kernel`'s)."""
        self.record(
            is_accepted=info.is_accepted,
            accept_prob=info.acceptance_rate,
            diverging=info.is_divergent,
            stage=info.stage,
            num_steps=info.num_integration_steps,
            num_grad_evals=info.num_grad_evals,
            energy=info.energy,
            potential_energy=-new.logdensity,
            step_size=step_size,
            warmup=warmup,
        )

    def record_nuts(self, step: Any) -> None:
        """Append the row of one of warmup's NUTS transitions (``step``: ``num_steps``, ``step_size``,
        ``potential_energy``); Pyro's NUTS reports no acceptance probability or energy (NaN)."""
        self.record(
            accept_prob=math.nan,
            diverging=False,
            stage=-1,
            num_steps=step.num_steps,
            num_grad_evals=step.num_steps,
            energy=math.nan,
            potential_energy=step.potential_energy,
            step_size=step.step_size,
            warmup=True,
        )

    def logging(self) -> dict[str, str]:
        if self._nuts is not None:
            out = self._nuts.logging()
        else:
            out = OrderedDict(
                [("step size", f"{self.step_size:.2e}"), ("acc. prob", f"{self._running_accept_prob:.3f}")]
            )
        if self.sample_stats:
            out["grads/it"] = str(self.sample_stats[-1]["num_grad_evals"])
        return out

    def cleanup(self) -> None:
        if self._nuts is not None:
            self._nuts.cleanup()
        self._reset()

    def diagnostics(self) -> dict[str, Any]:
        """Pyro's ``divergences`` and ``acceptance rate``, plus ``sample_stats`` (:meth:`get_sample_stats`)."""
        return {
            "divergences": self._divergent_draws,
            "acceptance rate": self._num_accepted / self._num_draws if self._num_draws else math.nan,
            "sample_stats": self.get_sample_stats(),
        }

    def get_sample_stats(self) -> dict[str, Any]:
        """Per-iteration statistics of the chain run last, numpy arrays ``(num_iterations,)``, warmup included."""
        import numpy as np

        if not self.sample_stats:
            return {}
        return {key: np.asarray([row[key] for row in self.sample_stats]) for key in self.sample_stats[0]}

    def constrain_samples(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        """Draws of ``mcmc.get_samples()`` as the model's constrained parameters: unchanged for a Pyro model or
        a potential; for a Target of another backend, the site ``"x"`` ``(..., dim)`` through ``target.constrain``."""
        if self._target is None:
            return dict(samples)
        x = samples["x"]
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return self._target.constrain(x)
