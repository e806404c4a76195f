"""sbibm's benchmark tasks in torch: priors (Pyro distributions) and simulators ``simulator(theta, generator)``.

The twins of :mod:`numpyro_ext.models.sbibm_tasks` (the task definitions are written out there, after
sbibm's ``task.py`` files and Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021,
App. T).  A simulator takes a batch of parameters ``theta`` ``(n, D)`` (or one vector ``(D,)``) and a
``torch.Generator`` (``None``: torch's global generator, seeded by ``pyro.set_rng_seed``) and returns the
flat data ``(n, d)`` (or ``(d,)``): the same generator state gives the same simulations (common random
numbers), and the simulation is differentiable in ``theta``.  It computes in ``theta``'s dtype and device.

Observations and reference posterior samples: :mod:`adapters.sbibm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyro.distributions as dist
import torch

from adapters import sbibm as sbibm_files

if TYPE_CHECKING:
    from pyro_ext.infer.abc.problem import LikelihoodFreeProblem

# the constants of the task definitions (see numpyro_ext.models.sbibm_tasks for their meaning)
_MOON_ANGLE_HALF_RANGE = math.pi / 2
_MOON_OFFSET = 0.25
_MOON_RADIUS_LOC = 0.1
_MOON_RADIUS_SCALE = 0.01
_LINEAR_VARIANCE = 0.1  # sbibm's prior and noise "scales" are variances
_LINEAR_DIM = 10
_MIXTURE_SCALES = (1.0, 0.1)
_MIXTURE_BOUND = 10.0
_SLCP_BOUND = 3.0
_SLCP_DRAWS = 4
_SLCP_JITTER = 1e-6


def _parameters(theta: Any, task: str) -> tuple[torch.Tensor, bool]:
    """``theta`` as a float tensor ``(n, D)`` and whether it came as a single vector ``(D,)``."""
    dim = sbibm_files.TASKS[task].dim_parameters
    theta = torch.as_tensor(theta)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    single = theta.dim() == 1
    batch = theta.unsqueeze(0) if single else theta
    if batch.dim() != 2 or batch.shape[-1] != dim:
        raise ValueError(
            f"theta: the {task} simulator takes parameters of shape (n, {dim}) or ({dim},), got shape "
            f"{tuple(theta.shape)}"
        )
    return batch, single


def _draw(kind: str, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    sample = torch.rand if kind == "uniform" else torch.randn
    return sample(shape, generator=generator, dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------
def two_moons_prior() -> dist.Distribution:
    """``U(-1, 1)^2`` (event shape ``(2,)``)."""
    return dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)


def gaussian_linear_prior() -> dist.Distribution:
    """``N(0, 0.1 I)`` in 10 dimensions (event shape ``(10,)``)."""
    return dist.Normal(torch.zeros(_LINEAR_DIM), math.sqrt(_LINEAR_VARIANCE)).to_event(1)


def gaussian_mixture_prior() -> dist.Distribution:
    """``U(-10, 10)^2`` (event shape ``(2,)``)."""
    return dist.Uniform(-_MIXTURE_BOUND * torch.ones(2), _MIXTURE_BOUND * torch.ones(2)).to_event(1)


def slcp_prior() -> dist.Distribution:
    """``U(-3, 3)^5`` (event shape ``(5,)``)."""
    return dist.Uniform(-_SLCP_BOUND * torch.ones(5), _SLCP_BOUND * torch.ones(5)).to_event(1)


# ---------------------------------------------------------------------------------------
# Simulators: theta (n, D), generator -> x (n, d)
# ---------------------------------------------------------------------------------------
def two_moons_simulator(theta: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two moons, ``(n, 2) -> (n, 2)``: ``r`` around 0.1 at angle ``a`` in (-pi/2, pi/2), shifted by
    ``(0.25 - |theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2)``."""
    theta, single = _parameters(theta, "two_moons")
    n = theta.shape[0]
    a = (2.0 * _draw("uniform", (n,), theta, generator) - 1.0) * _MOON_ANGLE_HALF_RANGE
    r = _MOON_RADIUS_LOC + _MOON_RADIUS_SCALE * _draw("normal", (n,), theta, generator)
    z0 = (theta[:, 0] + theta[:, 1]) / math.sqrt(2.0)
    z1 = (theta[:, 1] - theta[:, 0]) / math.sqrt(2.0)
    x = torch.stack([r * torch.cos(a) + _MOON_OFFSET - torch.abs(z0), r * torch.sin(a) + z1], dim=-1)
    return x[0] if single else x


def gaussian_linear_simulator(theta: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x ~ N(theta, 0.1 I)``, ``(n, 10) -> (n, 10)``."""
    theta, single = _parameters(theta, "gaussian_linear")
    x = theta + math.sqrt(_LINEAR_VARIANCE) * _draw("normal", tuple(theta.shape), theta, generator)
    return x[0] if single else x


def gaussian_mixture_simulator(theta: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)`` (one component per simulation), ``(n, 2) -> (n, 2)``."""
    theta, single = _parameters(theta, "gaussian_mixture")
    narrow = _draw("uniform", (theta.shape[0], 1), theta, generator) < 0.5
    scale = torch.where(narrow, _MIXTURE_SCALES[1], _MIXTURE_SCALES[0]).to(theta.dtype)
    x = theta + scale * _draw("normal", tuple(theta.shape), theta, generator)
    return x[0] if single else x


def slcp_simulator(theta: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """SLCP, ``(n, 5) -> (n, 8)``: four draws of ``N(m, S)`` flattened draw by draw, through the written-out
    2x2 Cholesky factor of ``S`` (differentiable; positive definite thanks to the 1e-6 jitter)."""
    theta, single = _parameters(theta, "slcp")
    s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
    l00 = torch.sqrt(s1**2 + _SLCP_JITTER)
    l10 = rho * s1 * s2 / l00
    l11 = torch.sqrt(s2**2 + _SLCP_JITTER - l10**2)
    noise = _draw("normal", (theta.shape[0], _SLCP_DRAWS, 2), theta, generator)
    first = theta[:, :1] + l00[:, None] * noise[..., 0]
    second = theta[:, 1:2] + l10[:, None] * noise[..., 0] + l11[:, None] * noise[..., 1]
    x = torch.stack([first, second], dim=-1).reshape(theta.shape[0], 2 * _SLCP_DRAWS)
    return x[0] if single else x


# ---------------------------------------------------------------------------------------
# Tasks and problems
# ---------------------------------------------------------------------------------------
class SbibmTask(NamedTuple):
    """One sbibm task in torch: ``prior`` (event ``(D,)``), ``simulator(theta (n, D), generator) -> (n, d)``."""

    name: str
    prior: dist.Distribution
    simulator: Callable[..., torch.Tensor]
    dim_parameters: int
    dim_data: int


_DEFINITIONS: dict[str, tuple[Callable[[], dist.Distribution], Callable[..., torch.Tensor]]] = {
    "two_moons": (two_moons_prior, two_moons_simulator),
    "gaussian_linear": (gaussian_linear_prior, gaussian_linear_simulator),
    "gaussian_mixture": (gaussian_mixture_prior, gaussian_mixture_simulator),
    "slcp": (slcp_prior, slcp_simulator),
}
TASKS = tuple(_DEFINITIONS)


def sbibm_task(task: str) -> SbibmTask:
    """The prior and simulator of ``task`` (one of :data:`TASKS`); needs no sbibm installation."""
    info = sbibm_files.check_task(task)
    prior, simulator = _DEFINITIONS[task]
    return SbibmTask(task, prior(), simulator, info.dim_parameters, info.dim_data)


def sbibm_problem(task: str, num_observation: int = 1) -> LikelihoodFreeProblem:
    """``task``'s :class:`~pyro_ext.infer.abc.LikelihoodFreeProblem` for sbibm's observation
    ``num_observation`` (1-10): its prior, its batched simulator, the observed data as statistics.

    Needs sbibm installed (``pip install --no-deps sbibm==1.1.0``) for the observation; the reference
    posterior samples to score against are :func:`reference_samples`.
    """
    from pyro_ext.infer.abc.problem import LikelihoodFreeProblem

    definition = sbibm_task(task)
    return LikelihoodFreeProblem(definition.prior, definition.simulator, observation(task, num_observation))


def reference_samples(task: str, num_observation: int = 1) -> np.ndarray:
    """sbibm's 10,000 reference posterior samples ``(10000, D)`` (NumPy, :func:`adapters.sbibm.reference_samples`)."""
    return sbibm_files.reference_samples(task, num_observation)


def observation(task: str, num_observation: int = 1) -> torch.Tensor:
    """sbibm's observed data ``(d,)`` of ``task``'s observation ``num_observation``, in torch's default dtype."""
    return torch.as_tensor(sbibm_files.observation(task, num_observation), dtype=torch.get_default_dtype())


__all__ = [
    "TASKS",
    "SbibmTask",
    "gaussian_linear_prior",
    "gaussian_linear_simulator",
    "gaussian_mixture_prior",
    "gaussian_mixture_simulator",
    "observation",
    "reference_samples",
    "sbibm_problem",
    "sbibm_task",
    "slcp_prior",
    "slcp_simulator",
    "two_moons_prior",
    "two_moons_simulator",
]
