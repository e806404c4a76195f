"""A hierarchical nonlinear dynamical system, backend-free: its constants, a data generator, argument checks, a plot.

The example follows the setting of Roeder, Grant, Phillips, Dalchau & Meeds, "Efficient Amortised Bayesian
Inference for Hierarchical and Nonlinear Dynamical Systems" (VI-HDS, ICML 2019, arXiv:1905.12090), Sec. 2-3:
many individuals (wells of a plate reader there), each with its own observed time series, grouped by a
condition (their "device"), with ODE parameters drawn from group-level distributions that are themselves drawn
from the population.  The ODE here is a small gene circuit with negative autoregulation: a protein that represses
its own transcription (a Hill function with coefficient 2)::

    dm/dt = alpha / (1 + (p / K)^2) - gamma_m m,      m(0) = 0   (mRNA),
    dp/dt = m - gamma_p p,                              p(0) = 0   (protein),

in hours, protein counted in units of the translation rate (so translation has rate 1).  Its four positive
parameters ``theta = (alpha, K, gamma_m, gamma_p)`` are the maximal transcription rate, the repression threshold
and the two decay rates.  mRNA first rises towards ``alpha / gamma_m``, then falls as the protein accumulates
past ``K``: an overshoot that a linear model cannot make.  Both species are observed at ``T`` times ``t > 0``.

The model (both backends; ``g(i)`` is individual ``i``'s group, ``x_i(t)`` the ODE solution at ``theta_i``)::

    log theta_pop        ~ N(PRIOR_LOC, PRIOR_SCALE^2)                  (4,)       population
    tau_group, tau_ind   ~ HalfNormal(TAU_PRIOR_SCALE)                   scalars    spreads of the two levels
    sigma                ~ HalfNormal(SIGMA_PRIOR_SCALE)                 scalar     observation noise (log scale)
    log theta_group[j]   ~ N(log theta_pop, tau_group^2 I)              (G, 4)     plate "groups"
    log theta_i          ~ N(log theta_group[g(i)], tau_ind^2 I)         (N, 4)     plate "data" (local latents)
    y_i(t_k)_s           ~ LogNormal(log x_i(t_k)_s, sigma)             (N, T, 2)  plate "data", observed

``simulate_dataset`` draws data from this model at fixed hyper-parameters (:class:`HierarchicalODEConfig`), and
solves the ODE with scipy's ``solve_ivp``: the reference solution that the backends' solvers (diffrax,
torchdiffeq) are tested against.  This module imports numpy, scipy and (in the plot) matplotlib only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adapters.validation import check_positive, check_positive_int

#: The ODE's parameters, in the order of the last axis of every ``log_theta`` array.
PARAM_NAMES = ("alpha", "K", "gamma_m", "gamma_p")
#: The observed species, in the order of the last axis of ``obs``.
SPECIES = ("mRNA", "protein")
NUM_PARAMS = len(PARAM_NAMES)
NUM_SPECIES = len(SPECIES)

#: Prior of ``log theta_pop``: independent Normals, centred at round values near (not at) the default truth.
PRIOR_LOC = tuple(math.log(v) for v in (8.0, 4.0, 1.0, 0.5))
PRIOR_SCALE = 1.0
#: HalfNormal scales of the priors of ``tau_group``, ``tau_ind`` (log-parameter spreads) and ``sigma``.
TAU_PRIOR_SCALE = 0.5
SIGMA_PRIOR_SCALE = 0.5

#: The backends' solver tolerances (relative, absolute) in float64; float32 solves use ``FLOAT32_TOL`` for both.
RTOL, ATOL = 1e-5, 1e-6
FLOAT32_TOL = 1e-5
#: The most steps an adaptive solve may take before it counts as failed (a default-truth solve takes ~40).
MAX_STEPS = 2048
#: The floor a solution is clipped to before its log is taken (a finite, very low likelihood for nonsense values).
POSITIVE_FLOOR = 1e-10


def rhs(t: float, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The right-hand side ``(dm/dt, dp/dt)`` at state ``y = (m, p)`` for positive parameters ``theta`` (4,)."""
    alpha, K, gamma_m, gamma_p = theta
    m, p = y
    return np.array([alpha / (1.0 + (p / K) ** 2) - gamma_m * m, m - gamma_p * p])


def solve_reference(times: Any, log_theta: Any, *, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """The ODE solution at ``times`` (T,) for each row of ``log_theta`` (N, 4): shape (N, T, 2), from ``x(0) = 0``.

    scipy's ``solve_ivp`` (DOP853) per individual, at tight default tolerances: the reference the backends'
    solvers are tested against.
    """
    from scipy.integrate import solve_ivp

    times = np.asarray(times, dtype=np.float64)
    log_theta = np.atleast_2d(np.asarray(log_theta, dtype=np.float64))
    out = np.empty((log_theta.shape[0], times.shape[0], NUM_SPECIES))
    for i, row in enumerate(np.exp(log_theta)):
        span = (0.0, float(times[-1]))
        sol = solve_ivp(rhs, span, np.zeros(NUM_SPECIES), "DOP853", times, args=(row,), rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_reference: scipy's solve failed for log_theta[{i}] = {row}: {sol.message}")
        out[i] = sol.y.T
    return out


@dataclass(frozen=True)
class HierarchicalODEConfig:
    """The example's data-generating settings (the hyper-parameters are fixed here; the model infers them).

    ``times``: the observation times (hours, > 0, increasing).  ``num_groups`` ``G`` groups of
    ``individuals_per_group`` individuals each (``N = G * individuals_per_group``; individual ``i`` is in group
    ``i // individuals_per_group``).  ``log_theta_pop``: the true population log-parameters (4,), order
    :data:`PARAM_NAMES`.  ``tau_group``, ``tau_ind``: the true spreads of the group and individual
    log-parameters.  ``sigma``: the true observation noise (standard deviation of ``log y``).
    """

    times: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.25, 8.0, 24))
    num_groups: int = 4
    individuals_per_group: int = 8
    log_theta_pop: tuple[float, ...] = tuple(math.log(v) for v in (10.0, 5.0, 1.0, 0.3))
    tau_group: float = 0.3
    tau_ind: float = 0.2
    sigma: float = 0.1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "times", tuple(float(t) for t in check_times(self.times)))
        set_(self, "num_groups", check_positive_int("num_groups", self.num_groups))
        set_(self, "individuals_per_group", check_positive_int("individuals_per_group", self.individuals_per_group))
        pop = np.asarray(self.log_theta_pop, dtype=np.float64)
        if pop.shape != (NUM_PARAMS,) or not np.all(np.isfinite(pop)):
            raise ValueError(
                f"log_theta_pop must be {NUM_PARAMS} finite numbers (log of {', '.join(PARAM_NAMES)}), "
                f"got {self.log_theta_pop!r}"
            )
        set_(self, "log_theta_pop", tuple(float(v) for v in pop))
        for name in ("tau_group", "tau_ind", "sigma"):
            set_(self, name, check_positive(name, getattr(self, name)))

    @property
    def num_individuals(self) -> int:
        """``N``: all individuals of all groups."""
        return self.num_groups * self.individuals_per_group

    @property
    def group(self) -> np.ndarray:
        """Each individual's group index, (N,): ``i // individuals_per_group``."""
        return np.repeat(np.arange(self.num_groups), self.individuals_per_group)


class HierarchicalODEData(NamedTuple):
    """A simulated data set.

    ``times`` (T,); ``obs`` (N, T, 2) the noisy observations; ``group`` (N,) int group indices;
    ``log_theta`` (N, 4) and ``log_theta_group`` (G, 4) the true individual and group log-parameters;
    ``trajectories`` (N, T, 2) the noise-free ODE solutions at the true ``log_theta``.
    """

    times: np.ndarray
    obs: np.ndarray
    group: np.ndarray
    log_theta: np.ndarray
    log_theta_group: np.ndarray
    trajectories: np.ndarray


def simulate_dataset(config: HierarchicalODEConfig | None = None, seed: int = 0) -> HierarchicalODEData:
    """Draw a data set from the model at ``config``'s true hyper-parameters, seeded by ``seed`` (numpy).

    Groups ``log theta_group[j] = log theta_pop + tau_group eps_j``, individuals ``log theta_i =
    log theta_group[g(i)] + tau_ind eps_i``, observations ``y = x exp(sigma eps)`` with ``x`` from
    :func:`solve_reference` (all ``eps`` standard Normal).  Float64 numpy arrays.
    """
    config = HierarchicalODEConfig() if config is None else config
    if not isinstance(config, HierarchicalODEConfig):
        raise TypeError(f"config must be a HierarchicalODEConfig, got {type(config).__name__}")
    rng = np.random.default_rng(check_positive_int("seed", seed, allow_zero=True))
    times = np.asarray(config.times)
    group = config.group
    pop = np.asarray(config.log_theta_pop)
    log_theta_group = pop + config.tau_group * rng.standard_normal((config.num_groups, NUM_PARAMS))
    log_theta = log_theta_group[group] + config.tau_ind * rng.standard_normal((group.shape[0], NUM_PARAMS))
    trajectories = solve_reference(times, log_theta)
    obs = trajectories * np.exp(config.sigma * rng.standard_normal(trajectories.shape))
    return HierarchicalODEData(times, obs, group, log_theta, log_theta_group, trajectories)


# ----------------------------------------------------------------------------------------------- argument checks


def check_times(times: Any) -> np.ndarray:
    """``times`` as a float array (T,), T >= 2, finite, > 0 and strictly increasing; a ``ValueError`` otherwise.

    ``t > 0``: both species start at 0, where a log-normal observation has no density.
    """
    arr = np.asarray(times, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"times must be a 1-d array of at least 2 observation times, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr[0] <= 0 or np.any(np.diff(arr) <= 0):
        raise ValueError(
            f"times must be finite, > 0 (the ODE starts from zero at t = 0) and strictly increasing, got {arr}"
        )
    return arr


def check_num_groups(num_groups: Any) -> int:
    """``num_groups`` as a Python int >= 1 (it sizes the "groups" plate, so it cannot be an array)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer (the number of groups G), got {num_groups!r}")
    return int(num_groups)


def check_model_args(
    times_shape: tuple[int, ...],
    group_shape: tuple[int, ...],
    num_groups: Any,
    obs_shape: tuple[int, ...] | None,
    *,
    times: np.ndarray | None = None,
    group: np.ndarray | None = None,
    obs: np.ndarray | None = None,
) -> int:
    """Check the model's arguments; returns ``num_groups`` as an int.  Shapes are always checked; values only
    where they are given (concrete arrays: not while a backend traces the model).

    ``times`` (T,) positive increasing; ``group`` (N,) integers in ``[0, num_groups)``; ``obs`` ``None`` or
    (N, T, 2) finite and > 0.  Every error is a ``ValueError``/``TypeError`` naming the argument.
    """
    num_groups = check_num_groups(num_groups)
    if len(times_shape) != 1 or times_shape[0] < 2:
        raise ValueError(f"times must be a 1-d array of at least 2 observation times, got shape {tuple(times_shape)}")
    if len(group_shape) != 1 or group_shape[0] < 1:
        raise ValueError(
            f"group must be a 1-d integer array with one group index per individual, got shape {tuple(group_shape)}"
        )
    if times is not None:
        check_times(times)
    if group is not None:
        group = np.asarray(group)
        if group.dtype.kind not in "iu":
            raise TypeError(f"group must hold integer group indices, got dtype {group.dtype}")
        if group.min() < 0 or group.max() >= num_groups:
            raise ValueError(
                f"group must hold indices in [0, num_groups) = [0, {num_groups}), got values from {int(group.min())} "
                f"to {int(group.max())}"
            )
    if obs_shape is not None:
        expected = (group_shape[0], times_shape[0], NUM_SPECIES)
        if tuple(obs_shape) != expected:
            raise ValueError(
                f"obs must have shape (individuals, times, species) = {expected} (from group's and times' lengths "
                f"and the {NUM_SPECIES} species {SPECIES}), got {tuple(obs_shape)}"
            )
    if obs is not None:
        obs = np.asarray(obs)
        if not np.all(np.isfinite(obs)) or np.any(obs <= 0):
            bad = int(np.sum(~np.isfinite(obs) | (obs <= 0)))
            raise ValueError(f"obs must be finite and > 0 (log-normal observations), got {bad} entries that are not")
    return num_groups


# --------------------------------------------------------------------------------------------------------- plot


def plot_trajectories(
    fig_or_axes: Any,
    times: Any,
    observed: Any,
    predicted_draws: Any,
    *,
    level: float = 0.9,
    titles: list[str] | None = None,
    species: tuple[str, ...] = SPECIES,
    log_scale: bool = True,
) -> np.ndarray:
    """Observed points against the predictions' median and central ``level`` band, one panel per individual.

    ``fig_or_axes``: a matplotlib ``Figure`` or ``SubFigure`` (a grid of panels is added to it) or an array of
    ``Axes`` with at least ``M`` entries.  ``times`` (T,); ``observed`` (M, T, S) or ``None`` (predictions only);
    ``predicted_draws`` (D, M, T, S): ``D`` predictive draws per individual.  Each species gets one colour.
    Returns the array of the ``M`` axes used.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    times = np.asarray(times)
    draws = np.asarray(predicted_draws)
    if draws.ndim != 4 or draws.shape[2] != times.shape[0]:
        raise ValueError(
            f"predicted_draws must have shape (draws, individuals, times, species) with {times.shape[0]} times, "
            f"got {draws.shape}"
        )
    num = draws.shape[1]
    if observed is not None and np.shape(observed) != draws.shape[1:]:
        raise ValueError(
            f"observed must have shape {draws.shape[1:]} (individuals, times, species), got {np.shape(observed)}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if hasattr(fig_or_axes, "subplots"):  # a Figure or a SubFigure
        cols = min(num, 4)
        rows = -(-num // cols)
        axes = np.atleast_1d(fig_or_axes.subplots(rows, cols, sharex=True, squeeze=False)).ravel()
        for ax in axes[num:]:
            ax.set_visible(False)
    else:
        axes = np.atleast_1d(np.asarray(fig_or_axes, dtype=object)).ravel()
        if axes.shape[0] < num:
            raise ValueError(f"fig_or_axes holds {axes.shape[0]} axes, fewer than the {num} individuals to plot")
    lo, med, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(num):
        ax = axes[i]
        for s in range(draws.shape[3]):
            color = colors[s % len(colors)]
            label = species[s] if s < len(species) else f"species {s}"
            ax.fill_between(times, lo[i, :, s], hi[i, :, s], color=color, alpha=0.25, linewidth=0)
            ax.plot(times, med[i, :, s], color=color, label=label)
            if observed is not None:
                ax.plot(times, np.asarray(observed)[i, :, s], "o", color=color, markersize=2.5)
        if log_scale:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks crowd a short log axis
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize="small")
    axes[0].legend(fontsize="x-small")
    return axes[:num]
