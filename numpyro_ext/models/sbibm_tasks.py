"""sbibm's benchmark tasks in JAX: priors (NumPyro distributions) and simulators ``simulator(theta, key)``.

Written from the task definitions of sbibm (``sbibm/tasks/<task>/task.py``) and its paper, Lueckmann,
Boelts, Greenberg, Goncalves & Macke, "Benchmarking Simulation-Based Inference" (AISTATS 2021,
arXiv:2101.04653, App. T).  Each simulator is a pure function of one parameter vector ``theta`` ``(D,)``
and a PRNG key (the same key gives the same simulation: common random numbers), returns the flat data
``(d,)``, is batched with ``jax.vmap`` and differentiable in ``theta`` for a fixed key.

* ``two_moons`` (D = 2, d = 2): ``theta ~ U(-1, 1)^2``; ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
  ``x = (r cos a + 0.25 - |theta_1 + theta_2| / sqrt 2,  r sin a + (theta_2 - theta_1) / sqrt 2)``.
* ``gaussian_linear`` (D = d = 10): ``theta ~ N(0, 0.1 I)``, ``x ~ N(theta, 0.1 I)``.
* ``gaussian_mixture`` (D = d = 2): ``theta ~ U(-10, 10)^2``,
  ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``.
* ``slcp`` (D = 5, d = 8): ``theta ~ U(-3, 3)^5``; four independent draws
  ``x_j ~ N(m, S)``, ``m = (theta_1, theta_2)``, ``s_1 = theta_3^2``, ``s_2 = theta_4^2``,
  ``rho = tanh(theta_5)``, ``S = [[s_1^2, rho s_1 s_2], [rho s_1 s_2, s_2^2]] + 1e-6 I``;
  ``x = (x_1, ..., x_4)`` flattened draw by draw.

Observations and reference posterior samples come from sbibm's files via :mod:`adapters.sbibm`;
:func:`sbibm_problem` joins them into a :class:`numpyro_ext.infer.abc.LikelihoodFreeProblem`.  The
torch twins are :mod:`pyro_ext.models.sbibm_tasks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from adapters import sbibm as sbibm_files

if TYPE_CHECKING:
    from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem

# two_moons (sbibm's simulator_params)
_MOON_ANGLE_HALF_RANGE = math.pi / 2
_MOON_OFFSET = 0.25
_MOON_RADIUS_LOC = 0.1
_MOON_RADIUS_SCALE = 0.01
# gaussian_linear: sbibm's "prior_scale" and "simulator_scale" (0.1) are variances (it inverts 0.1 I
# into the precision matrix), so the standard deviations are sqrt(0.1)
_LINEAR_VARIANCE = 0.1
_LINEAR_DIM = 10
# gaussian_mixture: equal weights, standard deviations 1 and 0.1, both centred on theta
_MIXTURE_SCALES = (1.0, 0.1)
_MIXTURE_BOUND = 10.0
# slcp: the bound of the uniform prior, the draws per simulation, the diagonal jitter sbibm adds to S
_SLCP_BOUND = 3.0
_SLCP_DRAWS = 4
_SLCP_JITTER = 1e-6


def _parameters(theta: Any, task: str) -> jax.Array:
    """``theta`` as a float array of the task's parameter shape ``(D,)`` (a clear error otherwise)."""
    dim = sbibm_files.TASKS[task].dim_parameters
    theta = jnp.asarray(theta)
    if theta.shape != (dim,):
        raise ValueError(
            f"theta: the {task} simulator takes one parameter vector of shape ({dim},), got shape {theta.shape}; "
            "batch it with jax.vmap"
        )
    return theta.astype(jnp.result_type(theta, float))


# ---------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------
def two_moons_prior() -> dist.Distribution:
    """``U(-1, 1)^2`` (event shape ``(2,)``)."""
    return dist.Uniform(-jnp.ones(2), jnp.ones(2)).to_event(1)


def gaussian_linear_prior() -> dist.Distribution:
    """``N(0, 0.1 I)`` in 10 dimensions (event shape ``(10,)``)."""
    return dist.Normal(jnp.zeros(_LINEAR_DIM), math.sqrt(_LINEAR_VARIANCE)).to_event(1)


def gaussian_mixture_prior() -> dist.Distribution:
    """``U(-10, 10)^2`` (event shape ``(2,)``)."""
    return dist.Uniform(-_MIXTURE_BOUND * jnp.ones(2), _MIXTURE_BOUND * jnp.ones(2)).to_event(1)


def slcp_prior() -> dist.Distribution:
    """``U(-3, 3)^5`` (event shape ``(5,)``)."""
    return dist.Uniform(-_SLCP_BOUND * jnp.ones(5), _SLCP_BOUND * jnp.ones(5)).to_event(1)


# ---------------------------------------------------------------------------------------
# Simulators: theta (D,), key -> x (d,)
# ---------------------------------------------------------------------------------------
def two_moons_simulator(theta: Any, key: jax.Array) -> jax.Array:
    """Two moons: a noisy half circle (radius ``~0.1``) shifted by ``theta`` rotated by -pi/4, its first
    coordinate folded (``-|.|``), so that every ``x`` has two mirror-image posterior modes.  ``(2,) -> (2,)``."""
    theta = _parameters(theta, "two_moons")
    key_angle, key_radius = jax.random.split(key)
    a = jax.random.uniform(key_angle, (), theta.dtype, minval=-_MOON_ANGLE_HALF_RANGE, maxval=_MOON_ANGLE_HALF_RANGE)
    r = _MOON_RADIUS_LOC + _MOON_RADIUS_SCALE * jax.random.normal(key_radius, (), theta.dtype)
    # theta rotated by -pi/4: z = ((theta_1 + theta_2) / sqrt 2, (theta_2 - theta_1) / sqrt 2)
    z0 = (theta[0] + theta[1]) / math.sqrt(2.0)
    z1 = (theta[1] - theta[0]) / math.sqrt(2.0)
    return jnp.stack([r * jnp.cos(a) + _MOON_OFFSET - jnp.abs(z0), r * jnp.sin(a) + z1])


def gaussian_linear_simulator(theta: Any, key: jax.Array) -> jax.Array:
    """``x ~ N(theta, 0.1 I)``, ``(10,) -> (10,)``."""
    theta = _parameters(theta, "gaussian_linear")
    return theta + math.sqrt(_LINEAR_VARIANCE) * jax.random.normal(key, theta.shape, theta.dtype)


def gaussian_mixture_simulator(theta: Any, key: jax.Array) -> jax.Array:
    """``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``: one component for both coordinates, ``(2,) -> (2,)``."""
    theta = _parameters(theta, "gaussian_mixture")
    key_component, key_noise = jax.random.split(key)
    narrow = jax.random.bernoulli(key_component, 0.5)
    scale = jnp.where(narrow, _MIXTURE_SCALES[1], _MIXTURE_SCALES[0]).astype(theta.dtype)
    return theta + scale * jax.random.normal(key_noise, theta.shape, theta.dtype)


def slcp_simulator(theta: Any, key: jax.Array) -> jax.Array:
    """SLCP: four draws from a 2-d Gaussian whose mean, scales and correlation are nonlinear in ``theta``,
    flattened draw by draw, ``(5,) -> (8,)``.  The 2x2 Cholesky factor of ``S`` is written out, so the
    simulation stays differentiable in ``theta`` (``S`` is positive definite thanks to the 1e-6 jitter)."""
    theta = _parameters(theta, "slcp")
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, jnp.tanh(theta[4])
    l00 = jnp.sqrt(s1**2 + _SLCP_JITTER)
    l10 = rho * s1 * s2 / l00
    l11 = jnp.sqrt(s2**2 + _SLCP_JITTER - l10**2)
    noise = jax.random.normal(key, (_SLCP_DRAWS, 2), theta.dtype)
    first = theta[0] + l00 * noise[:, 0]
    second = theta[1] + l10 * noise[:, 0] + l11 * noise[:, 1]
    return jnp.stack([first, second], axis=-1).reshape(2 * _SLCP_DRAWS)


# ---------------------------------------------------------------------------------------
# Tasks and problems
# ---------------------------------------------------------------------------------------
class SbibmTask(NamedTuple):
    """One sbibm task in JAX: ``prior`` (event shape ``(D,)``) and ``simulator(theta (D,), key) -> (d,)``."""

    name: str
    prior: dist.Distribution
    simulator: Callable[[Any, jax.Array], jax.Array]
    dim_parameters: int
    dim_data: int


_DEFINITIONS: dict[str, tuple[Callable[[], dist.Distribution], Callable[[Any, jax.Array], jax.Array]]] = {
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
    """``task``'s :class:`~numpyro_ext.infer.abc.LikelihoodFreeProblem` for sbibm's observation
    ``num_observation`` (1-10): its prior, its simulator, the observed data as statistics (``d`` of them).

    Needs sbibm installed (``pip install --no-deps sbibm==1.1.0``) for the observation; the reference
    posterior samples to score against are :func:`reference_samples`.
    """
    from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem

    definition = sbibm_task(task)
    observed = sbibm_files.observation(task, num_observation)
    return LikelihoodFreeProblem(definition.prior, definition.simulator, jnp.asarray(observed))


def reference_samples(task: str, num_observation: int = 1) -> np.ndarray:
    """sbibm's 10,000 reference posterior samples ``(10000, D)`` (NumPy, :func:`adapters.sbibm.reference_samples`)."""
    return sbibm_files.reference_samples(task, num_observation)


__all__ = [
    "TASKS",
    "SbibmTask",
    "gaussian_linear_prior",
    "gaussian_linear_simulator",
    "gaussian_mixture_prior",
    "gaussian_mixture_simulator",
    "reference_samples",
    "sbibm_problem",
    "sbibm_task",
    "slcp_prior",
    "slcp_simulator",
    "two_moons_prior",
    "two_moons_simulator",
]
