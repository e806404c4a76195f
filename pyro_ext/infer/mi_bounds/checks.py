"""Argument checks of the Pyro MI bounds, with messages that name the argument and its expected shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adapters.validation import check_finite_array, check_positive_int

__all__ = [
    "as_tensor",
    "check_critic",
    "check_dims",
    "check_finite",
    "check_hidden",
    "check_joint",
    "check_prior",
    "check_score_matrix",
    "check_square",
    "to_numpy",
]

Tensor = torch.Tensor
# what non-finite scores or log densities usually mean (the NumPyro twin says the same)
NONFINITE_HINT = "; a critic that overflows or a proposal with zero density produces these"


def as_tensor(name: str, value: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a floating tensor (detached when it is one; ``dtype`` when given)."""
    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}") from err
    if dtype is not None:
        tensor = tensor.to(dtype)
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def check_finite(name: str, tensor: Tensor) -> Tensor:
    """``tensor`` if every entry is finite; else the ValueError of :func:`adapters.validation.check_finite_array`."""
    if not bool(torch.isfinite(tensor).all()):
        check_finite_array(name, tensor.detach().cpu().numpy(), NONFINITE_HINT)
    return tensor


def check_square(name: str, scores: Tensor, min_size: int = 1) -> None:
    if scores.dim() not in (2, 3) or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(
            f"{name} must be a square score matrix (K, K) with {name}[i, j] = T(x_i, z_j), or a batch (B, K, K) of "
            f"them, got shape {tuple(scores.shape)}"
        )
    if scores.shape[-1] < min_size:
        raise ValueError(f"{name} must have K >= {min_size} samples per group, got K = {scores.shape[-1]}")


def check_score_matrix(name: str, scores: Any, min_size: int = 1) -> Tensor:
    scores = as_tensor(name, scores)
    check_square(name, scores, min_size)
    return check_finite(name, scores)


def check_joint(x: Any, z: Any, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    x, z = as_tensor("x", x, dtype), as_tensor("z", z, dtype)
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D array (N, dx) of joint samples, got shape {tuple(x.shape)}")
    if z.dim() != 2:
        raise ValueError(f"z must be a 2-D array (N, dz) of joint samples, got shape {tuple(z.shape)}")
    if x.shape[0] != z.shape[0]:
        raise ValueError(
            f"x and z must hold the same number of joint samples, got x: {tuple(x.shape)} and z: {tuple(z.shape)}"
        )
    return check_finite("x", x), check_finite("z", z)


def check_dims(x_shape: Sequence[int], z_shape: Sequence[int], x_dim: int | None, z_dim: int | None) -> None:
    if x_dim is not None and x_shape[-1] != x_dim:
        raise ValueError(f"x must have last axis of length x_dim = {x_dim}, got shape {tuple(x_shape)}")
    if z_dim is not None and z_shape[-1] != z_dim:
        raise ValueError(f"z must have last axis of length z_dim = {z_dim}, got shape {tuple(z_shape)}")


def check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    return tuple(check_positive_int("hidden", h) for h in hidden)


def check_critic(critic: Any) -> Any:
    if not callable(critic):
        raise TypeError(f"critic must be a callable critic(x, z) -> scores (e.g. a ConcatCritic), got {critic!r}")
    return critic


def check_prior(prior: Any, z_dim: int | None) -> Any:
    if not (hasattr(prior, "log_prob") and hasattr(prior, "sample")):
        raise ValueError(f"prior must be a torch/Pyro distribution over z (with log_prob and sample), got {prior!r}")
    event = tuple(getattr(prior, "event_shape", ()))
    if z_dim is not None and event != (z_dim,):
        raise ValueError(
            f"prior must have event_shape (z_dim,) = ({z_dim},), got {event}; use .to_event(1) for a factorised prior"
        )
    return prior


def to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
