"""sbibm's benchmark tasks, offline and backend-free: observations, reference posterior samples, true parameters.

sbibm (Lueckmann, Boelts, Greenberg, Goncalves & Macke, "Benchmarking Simulation-Based Inference",
AISTATS 2021, arXiv:2101.04653) ships, for each task and each of its 10 observations, the observed
data, the parameters that generated them and 10,000 reference posterior samples, as CSV files inside
its wheel.  This module reads those files with NumPy straight from the installed package's folder
(found with :func:`importlib.util.find_spec`, which does not import sbibm: its ``__init__`` imports
torch and pyro, and its declared dependencies are old and heavy).  Install it without them::

    pip install --no-deps sbibm==1.1.0

Tasks (parameters ``D``, data ``d``; priors and simulators: :mod:`numpyro_ext.models.sbibm_tasks`,
:mod:`pyro_ext.models.sbibm_tasks`):

* ``two_moons``         D = 2,  d = 2
* ``gaussian_linear``   D = 10, d = 10
* ``gaussian_mixture``  D = 2,  d = 2
* ``slcp``              D = 5,  d = 8 (four 2-d draws, flattened draw by draw)

:data:`SBIBM_SMCABC_C2ST` holds the published C2ST of sbibm's SMC-ABC and :data:`SL_CEILING_C2ST` the
C2ST of synthetic-likelihood MCMC with more than 10^8 simulations, the reference columns of the ``abc``
benchmark.
"""

from __future__ import annotations

import bz2
import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

INSTALL_HINT = "pip install --no-deps sbibm==1.1.0"


class TaskInfo(NamedTuple):
    """Dimensions of an sbibm task: parameters ``dim_parameters`` (``D``) and data ``dim_data`` (``d``)."""

    name: str
    dim_parameters: int
    dim_data: int


TASKS: dict[str, TaskInfo] = {
    "two_moons": TaskInfo("two_moons", 2, 2),
    "gaussian_linear": TaskInfo("gaussian_linear", 10, 10),
    "gaussian_mixture": TaskInfo("gaussian_mixture", 2, 2),
    "slcp": TaskInfo("slcp", 5, 8),
}
NUM_OBSERVATIONS = 10
NUM_REFERENCE_SAMPLES = 10_000

# C2ST (accuracy; 0.5 = indistinguishable from the reference posterior, 1.0 = disjoint) of sbibm's
# SMC-ABC (pyabc's population Monte Carlo ABC) at 1e3, 1e4 and 1e5 simulations, mean over observations
# 1-10, from Lueckmann et al. (2021), Fig. 2 (the numbers of https://github.com/sbi-benchmark/results),
# as quoted in this project's issue 21.
SBIBM_SMCABC_C2ST: dict[str, dict[int, float]] = {
    "two_moons": {1_000: 0.92, 10_000: 0.71, 100_000: 0.66},
    "gaussian_linear": {1_000: 0.92, 10_000: 0.83, 100_000: 0.73},
    "gaussian_mixture": {1_000: 0.80, 10_000: 0.75, 100_000: 0.66},
    "slcp": {1_000: 0.98, 10_000: 0.97, 100_000: 0.96},
}

# C2ST of synthetic-likelihood MCMC (SL-MCMC) with more than 10^8 simulations, as quoted in this project's
# issue 24: about where a method that samples the synthetic-likelihood posterior (HABC, GPS-ABC, AV-ABC)
# ends up however many simulations it gets, since that posterior is not the true one (one number per task,
# no budget).  A C2ST on fewer than sbibm's 10,000 samples per side reads lower (a weaker classifier).
SL_CEILING_C2ST: dict[str, float] = {
    "two_moons": 0.81,
    "gaussian_linear": 0.61,
    "gaussian_mixture": 0.77,
    "slcp": 0.81,
}


def check_task(task: str) -> TaskInfo:
    """The :class:`TaskInfo` of ``task``; a ``ValueError`` naming the argument and the choices otherwise."""
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return TASKS[task]


def check_observation(num_observation: int) -> int:
    """``num_observation`` as an int in 1..10; a ``ValueError`` naming the argument and the choices otherwise."""
    valid = isinstance(num_observation, int | np.integer) and not isinstance(num_observation, bool)
    if not valid or not 1 <= int(num_observation) <= NUM_OBSERVATIONS:
        raise ValueError(
            f"num_observation must be one of {list(range(1, NUM_OBSERVATIONS + 1))} "
            f"(sbibm's observations), got {num_observation!r}"
        )
    return int(num_observation)


def package_dir() -> Path:
    """The installed sbibm package folder (sbibm is located, not imported)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"sbibm is not installed: the sbibm tasks read its observation and reference files; install it with "
            f"`{INSTALL_HINT}` (without its dependencies, which this project does not need)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def observation_dir(task: str, num_observation: int) -> Path:
    """``sbibm/tasks/<task>/files/num_observation_<n>``: the folder of one observation's files."""
    check_task(task)
    n = check_observation(num_observation)
    folder = package_dir() / "tasks" / task / "files" / f"num_observation_{n}"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing: the sbibm installation is incomplete; reinstall: `{INSTALL_HINT}`"
        )
    return folder


@functools.lru_cache(maxsize=64)
def _read_csv(path: Path) -> np.ndarray:
    # sbibm writes one header line of column labels, then rows of floats (bz2-compressed for the samples)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as handle:
        values = np.loadtxt(handle, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    values.setflags(write=False)  # cached: callers get copies
    return values


def observation(task: str, num_observation: int = 1) -> np.ndarray:
    """The observed data ``(d,)`` of ``task``'s observation ``num_observation`` (1-10), float64."""
    info = check_task(task)
    values = _read_csv(observation_dir(task, num_observation) / "observation.csv")
    return _checked(values, (1, info.dim_data), "observation.csv")[0].copy()


def true_parameters(task: str, num_observation: int = 1) -> np.ndarray:
    """The parameters ``(D,)`` that generated observation ``num_observation``, float64."""
    info = check_task(task)
    values = _read_csv(observation_dir(task, num_observation) / "true_parameters.csv")
    return _checked(values, (1, info.dim_parameters), "true_parameters.csv")[0].copy()


def reference_samples(task: str, num_observation: int = 1) -> np.ndarray:
    """sbibm's 10,000 reference posterior samples ``(10000, D)`` for observation ``num_observation``, float64."""
    info = check_task(task)
    values = _read_csv(observation_dir(task, num_observation) / "reference_posterior_samples.csv.bz2")
    return _checked(values, (NUM_REFERENCE_SAMPLES, info.dim_parameters), "reference_posterior_samples").copy()


def parameter_names(task: str) -> list[str]:
    """``["theta[0]", ...]``: the column names of a flat ``theta`` (those of a ``LikelihoodFreeProblem``)."""
    return [f"theta[{i}]" for i in range(check_task(task).dim_parameters)]


def _checked(values: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    if values.shape != shape:
        raise ValueError(f"sbibm's {what}: expected shape {shape}, read {values.shape}; reinstall: `{INSTALL_HINT}`")
    return values


__all__ = [
    "INSTALL_HINT",
    "NUM_OBSERVATIONS",
    "NUM_REFERENCE_SAMPLES",
    "SBIBM_SMCABC_C2ST",
    "SL_CEILING_C2ST",
    "TASKS",
    "TaskInfo",
    "check_observation",
    "check_task",
    "observation",
    "observation_dir",
    "package_dir",
    "parameter_names",
    "reference_samples",
    "true_parameters",
]
