"""Validated hyperparameters shared by an algorithm's NumPyro and Pyro shells.

One frozen dataclass per algorithm: both backends build it from their constructor
arguments, so the two read the same values and reject bad input with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from adapters.validation import (
    check_greater,
    check_numeric,
    check_positive,
    check_positive_int,
    check_probability,
    check_unit_interval,
)


def _validate(config: Any, checks: Sequence[tuple[str, Callable[[str, Any], Any]]]) -> None:
    """Run ``checks`` (``(field, check(name, value) -> value)``, in order: the first bad field is the one named)
    on a frozen dataclass, keeping each checked value (``check_positive`` gives a float, ...)."""
    for name, check in checks:
        object.__setattr__(config, name, check(name, getattr(config, name)))


def _optional(*checks: tuple[str, Callable]) -> tuple[tuple[str, Callable], ...]:
    """The same checks for fields that may also be ``None`` (not given)."""
    return tuple((name, lambda n, v, check=check: None if v is None else check(n, v)) for name, check in checks)


def _flags(*names: str) -> tuple[tuple[str, Callable], ...]:
    return tuple((name, check_flag) for name in names)


def _ratio(name: str, value: Any) -> float:
    return check_greater(name, value, 1, "the step-size ratio between stages")


def _damping(name: str, value: Any) -> float:
    return check_unit_interval(name, value, include_zero=False, include_one=True)


# the checks the delayed-rejection samplers share: their stages, and the limits of a transition
_STAGES = (("max_proposals", check_positive_int), ("reduction_factor", _ratio))
_LIMITS = (("max_delta_energy", check_positive), ("max_tree_depth", check_positive_int))


class FromArguments:
    """Mixin for a config dataclass: :meth:`from_arguments` builds it from a constructor's ``locals()``."""

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> Any:
        """The config of the entries of ``arguments`` named like its fields (others keep their defaults), so a
        kernel's constructor passes its arguments on as ``DRHMCConfig.from_arguments(locals())``."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})


class ConfigAttributes:
    """Mixin for a kernel that keeps its hyperparameters in ``self.config`` (a dataclass above): each field
    also reads as an attribute of the kernel (``kernel.damping``), unless the kernel defines that name."""

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")  # absent while unpickling: no field to find yet
        if config is not None and name in getattr(config, "__dataclass_fields__", {}):
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class DRHMCConfig(FromArguments):
    """DR-HMC's hyperparameters (Modi, Barnett & Carpenter 2023); see ``numpyro_ext.infer.DRHMC``.

    ``trajectory_length`` and ``num_steps`` may both be ``None``: warmup then chooses the
    trajectory length (``choose_length``): :attr:`length_scale` times the mean NUTS
    integration time.
    """

    step_size: float = 1.0
    trajectory_length: float | None = None
    num_steps: int | None = None
    max_proposals: int = 3
    reduction_factor: float = 4.0
    probabilistic: bool = True
    adapt_step_size: bool = True
    target_accept_prob: float = 0.8
    adapt_mass_matrix: bool = True
    dense_mass: bool = False
    max_delta_energy: float = 1000.0
    max_tree_depth: int = 10
    trajectory_scale: float | None = None
    jitter_trajectory: bool = False
    local_step_size: bool = False

    def __post_init__(self) -> None:
        optional = (("trajectory_length", check_positive), ("num_steps", check_positive_int))
        _validate(self, (("step_size", check_positive), *_optional(*optional, ("trajectory_scale", check_positive))))
        if self.trajectory_scale is not None and not self.choose_length:
            raise ValueError(
                "trajectory_scale scales the trajectory length warmup chooses; it cannot be combined with "
                f"trajectory_length={self.trajectory_length!r} or num_steps={self.num_steps!r} (scale those instead)"
            )
        flags = _flags(
            "probabilistic",
            "adapt_step_size",
            "adapt_mass_matrix",
            "dense_mass",
            "jitter_trajectory",
            "local_step_size",
        )
        _validate(self, (*_STAGES, ("target_accept_prob", check_probability), *flags, *_LIMITS))

    @property
    def length_scale(self) -> float:
        """Factor on the mean NUTS integration time: ``trajectory_scale``, by default 0.5.

        NUTS doubles a trajectory until it turns back, so its integration time overshoots
        the point a static trajectory moves furthest; on the ``drhmc`` study half of it was
        within 2x of NUTS's ESS per gradient on every posteriordb target where the full
        length fell to 0.14x (``eight_schools_noncentered``).
        """
        return 0.5 if self.trajectory_scale is None else self.trajectory_scale

    @property
    def choose_length(self) -> bool:
        """Whether warmup picks the trajectory length (neither it nor ``num_steps`` given)."""
        return self.trajectory_length is None and self.num_steps is None


@dataclass(frozen=True)
class DRGHMCConfig(FromArguments):
    """DR-G-HMC's hyperparameters (Turok, Modi & Carpenter 2025); see ``numpyro_ext.infer.DRGHMC``.

    The defaults are the reference code's tuning recipe: one leapfrog step of twice NUTS's adapted
    step size (``step_size_factor``), ``damping = 0.08``.
    """

    step_size: float = 1.0
    step_size_factor: float = 2.0
    num_steps: int = 1
    max_proposals: int = 3
    reduction_factor: float = 4.0
    damping: float = 0.08
    probabilistic: bool = True
    constant_trajectory: bool = False
    adapt_step_size: bool = True
    target_accept_prob: float = 0.8
    adapt_mass_matrix: bool = True
    dense_mass: bool = False
    max_delta_energy: float = 1000.0
    max_tree_depth: int = 10
    local_step_size: bool = False

    def __post_init__(self) -> None:
        first = (("step_size", check_positive), ("step_size_factor", check_positive), ("num_steps", check_positive_int))
        damping = ("damping", _damping)
        flags = _flags(
            "probabilistic",
            "constant_trajectory",
            "adapt_step_size",
            "adapt_mass_matrix",
            "dense_mass",
            "local_step_size",
        )
        _validate(self, (*first, *_STAGES, damping, ("target_accept_prob", check_probability), *flags, *_LIMITS))


# ATLAS's local step size for the delayed stages of DR-HMC / DR-G-HMC (``local_step_size=True``; Modi 2024,
# arXiv:2410.21587; constants from its reference code, modichirag/AtlasSampler, experiments/default_args.py
# and stepadapt_samplers.py), read by both backends' ``local_step_size_law``
LOCAL_STEP_FRACTION = 0.5  # mean step 0.5 / sqrt(lambda): a quarter of leapfrog's stability limit 2 / sqrt(lambda)
LOCAL_STEP_CAP = 0.5  # ... and at most half the first stage's step
LOCAL_STEP_FLOOR = 2e-3  # ... and at least 2 eps / 1000
LOCAL_STEP_LOG_SD = math.log(1.2)  # log-normal spread of the drawn step around that mean
# the energy error past which a trajectory's curvature is no longer measured (ATLAS's divergence, |dH| > 10)
CURVATURE_MAX_ENERGY_ERROR = 10.0

# DR-HMC options a sweep may set (``--set drhmc.trajectory_scale=0.5``) that stay out of the
# stored runs' keys unless set: added after the first sweeps (see adapters.sweep.Algorithm).
# Their values when not set are those the stored grid ran with (the full NUTS length, before
# the kernel's default became half of it), so a stored run's key keeps meaning what it ran.
DRHMC_SWEEP_OPTIONS = {"trajectory_scale": 1.0, "jitter_trajectory": False}


def check_model_or_potential(
    algorithm: str, model: object, potential_fn: object, alternative: str = "potential_fn"
) -> None:
    """Exactly one of ``model`` and ``potential_fn`` (named ``alternative``), as NumPyro's and Pyro's HMC require."""
    if (model is None) == (potential_fn is None):
        raise ValueError(f"{algorithm}: give exactly one of `model` (a model or adapters.Target) and `{alternative}`")


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (not 1, "yes" or None, which would be read as a flag silently)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_kernel_functions(algorithm: str, model: object, potential_fn: object, init_strategy: object) -> None:
    """An MCMC kernel's ``model`` (a function or an ``adapters.Target``), ``potential_fn`` and ``init_strategy``.

    Checked when the kernel is built, so that a string or an array passed by mistake is named there
    rather than failing as a call deep inside the first transition.
    """
    from adapters.target import Target

    if model is not None and not (callable(model) or isinstance(model, Target)):
        raise TypeError(f"{algorithm}: model must be a model function or an adapters.Target, got {model!r}")
    if potential_fn is not None and not callable(potential_fn):
        raise TypeError(
            f"{algorithm}: potential_fn must be a function of the unconstrained parameters, got {potential_fn!r}"
        )
    if not callable(init_strategy):
        raise TypeError(
            f"{algorithm}: init_strategy must be an initialisation strategy function (e.g. init_to_median), "
            f"got {init_strategy!r}"
        )


def check_initial_values(name: str, values: Any) -> None:
    """Initial values of a chain: an array or a dict of arrays (numpy, JAX or torch) of floating-point numbers.

    A string, ``None`` or an integer array would otherwise fail inside the gradient computation
    ("grad requires real-valued inputs", "only Tensors of floating point dtype can require gradients").
    """
    items = values.items() if isinstance(values, dict) else [(None, values)]
    for key, value in items:
        label = name if key is None else f"{name}[{key!r}]"
        expected = "a floating-point array (the unconstrained start of each chain)"
        check_numeric(label, value, expected)
        dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
        floating = value.is_floating_point() if hasattr(value, "is_floating_point") else np.dtype(dtype).kind == "f"
        if not floating:
            raise TypeError(f"{label} must be {expected}, got dtype {dtype}")


# Optimizer hyperparameters shared by the torch and optax versions (Gong et al. 2025, RACS and Alice).


def check_gamma(gamma: Any) -> float | None:
    """RACS's norm-growth limiter threshold: ``None`` (no limiter) or a finite number ``>= 1``."""
    if gamma is None:
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (1.0 <= float(gamma) < float("inf")):
        raise ValueError(f"gamma must be None or a finite number >= 1 (the update norm's growth limit), got {gamma!r}")
    return float(gamma)


def default_leading_basis(rank: int) -> int:
    """Alice's leading-basis size: the paper's ratio ``l = 40`` for ``r = 256``, at least 1."""
    return max(1, round(rank * 40 / 256))


def check_rank(rank: Any, leading_basis: Any) -> tuple[int, int]:
    """Alice's ``(rank, leading_basis)`` as ints with ``1 <= leading_basis <= rank``."""
    rank = check_positive_int("rank", rank)
    if leading_basis is None:
        return rank, default_leading_basis(rank)
    leading_basis = check_positive_int("leading_basis", leading_basis)
    if leading_basis > rank:
        raise ValueError(f"leading_basis must be <= rank = {rank}, got {leading_basis!r}")
    return rank, leading_basis


def effective_rank(shape: tuple[int, int], rank: int, leading_basis: int, clip_rank: bool) -> tuple[int, int]:
    """Alice's ``(r, l)`` for an ``m × n`` matrix; ``rank >= min(m, n)`` is an error unless ``clip_rank``."""
    d = min(shape)
    if rank >= d and not clip_rank:
        raise ValueError(
            f"rank must be < min(m, n) = {d} for a {shape[0]} x {shape[1]} weight matrix, got {rank}; lower it, or "
            "pass clip_rank=True to use rank = min(m, n) there (the full eigenbasis: Adam in the rotated basis)"
        )
    r = min(rank, d)
    return r, min(leading_basis, r)


def kronecker_shape(shape: Any) -> tuple[int, ...]:
    """IF-Shampoo's factored axes of a tensor of ``shape``: its non-unit sizes (``(1,)`` for a scalar)."""
    dims = tuple(int(d) for d in shape if d != 1)
    return dims or (1,)
