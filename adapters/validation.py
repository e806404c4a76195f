"""Argument checks shared by both backends.

Every check names the argument, shows the value it got and says what was expected, so
that a user who passes ``num_chains=0`` to any algorithm of the library reads the same
message.  The functions return the (possibly normalised) value so they can be used inline:
``self.num_steps = check_positive_int("num_steps", num_steps)``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """``value`` as an ``int`` that is > 0 (or >= 0 with ``allow_zero``)."""
    lower = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lower:
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` that is > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_greater(name: str, value: Any, lower: float, what: str = "") -> float:
    """``value`` as a finite ``float`` that is > ``lower``; ``what`` says what it means."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= lower:
        meaning = f" ({what})" if what else ""
        raise ValueError(f"{name} must be a finite number > {lower:g}{meaning}, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any, *, open_interval: bool = True) -> float:
    """``value`` as a ``float`` in (0, 1) (or [0, 1] with ``open_interval=False``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` that is >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_betas(name: str, value: Any) -> tuple[float, ...]:
    """``value`` as a tuple of floats, each in [0, 1) (optimizer moment decay rates)."""
    try:
        betas = tuple(float(b) for b in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple of numbers in [0, 1), got {value!r}") from None
    if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{name} must be a tuple of numbers in [0, 1), got {value!r}")
    return betas


def check_unit_interval(name: str, value: Any, *, include_zero: bool = True, include_one: bool = False) -> float:
    """``value`` as a float in [0, 1) (or (0, 1), [0, 1], (0, 1] per the flags): decay rates, momenta."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v >= 0.0 if include_zero else v > 0.0) and (v <= 1.0 if include_one else v < 1.0)
    if not ok:
        interval = ("[" if include_zero else "(") + "0, 1" + ("]" if include_one else ")")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_beta_pair(name: str, value: Any) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: exactly two numbers, each in [0, 1)."""
    betas = check_betas(name, value)
    if len(betas) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) of numbers in [0, 1), got {value!r}")
    return betas


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error that lists them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_name(kind: str, value: str, known: Sequence[str]) -> str:
    """``value`` if it is in ``known``; otherwise a ``KeyError`` listing the closest names.

    Used for names a user types (posterior names, algorithm names), where a typo is the
    usual cause, so the message suggests the near matches and says how to list all of them.
    """
    if value in known:
        return value
    close = difflib.get_close_matches(value, known, n=5, cutoff=0.4)
    # substring matches catch "eight_schools" -> both eight_schools posteriors
    close += [k for k in known if value.lower() in k.lower() and k not in close]
    hint = f" Did you mean one of {close[:8]}?" if close else ""
    raise KeyError(f"unknown {kind} {value!r}.{hint} ({len(known)} known; the full list: {sorted(known)})")


def check_vector(name: str, value: Any, dim: int) -> np.ndarray:
    """``value`` as a float array whose last axis has length ``dim``."""
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.shape[-1] != dim:
        raise ValueError(f"{name} must be an array with last axis of length {dim}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def check_finite_array(name: str, values: Any, hint: str = "") -> None:
    """Raise a ``ValueError`` when the array ``values`` (on the host: numpy, or a backend's array
    converted) holds a non-finite entry, naming how many there are and the first one's index and
    value; ``hint`` (e.g. ``"; a critic that overflows ..."``) ends the message."""
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be finite, got {int(bad.sum())} non-finite entries (first at index {first}, "
            f"value {float(values[first])!r}){hint}"
        )


# Which parameters a matrix optimizer (SWAN, SinkGD, RACS, Alice) takes: both backends name
# parameters by path ("net$params/Dense_0/kernel" in NumPyro, "net.0.weight" in Pyro).  A guide's
# locations and scales are not weights: SWAN's row centring cannot move their row sums at all.
_GUIDE_PARAM_LAST = re.compile(r"(^|_)(loc|locs|scale|scales|scale_tril|cov_factor|cov_diag)$")
_AUTOGUIDE_PREFIX = re.compile(r"(^|_)auto_")
_PYRO_AUTOGUIDE = re.compile(r"^Auto[A-Z]")


def is_guide_param_name(name: str) -> bool:
    """Whether a parameter named ``name`` is a guide's location or scale, by the autoguides' naming rules.

    True where a component of the name (split at ``.``, ``/`` and Pyro's ``$$$``) is a Pyro autoguide
    module (``AutoNormal.locs.W``, ``AutoDiagonalNormal.scale``), carries NumPyro's autoguide prefix
    (``W_auto_loc``, ``auto_scale_tril``), or where the last component is a location or scale
    (``loc``, ``scale``, ``scale_tril``, ``cov_factor``, ``cov_diag``, alone or after ``_``: a
    hand-written guide's ``W_loc``, ``W_scale``).
    """
    parts = [part for part in re.split(r"\$\$\$|[./]", name) if part]
    if not parts:
        return False
    if any(_PYRO_AUTOGUIDE.match(part) or _AUTOGUIDE_PREFIX.search(part) for part in parts):
        return True
    return bool(_GUIDE_PARAM_LAST.search(parts[-1]))


def check_matrix_params(value: Any) -> Any:
    """A matrix optimizer's ``matrix_params``: ``None`` (the default rule), ``"all"`` or a callable ``name -> bool``."""
    if value is None or value == "all" or callable(value):
        return value
    raise ValueError(
        "matrix_params must be None (matrix parameters that are not guide locations or scales), 'all' (every "
        f"matrix parameter) or a callable taking the parameter's name and returning a bool, got {value!r}"
    )


def takes_matrix_method(name: str | None, matrix_params: Any) -> bool:
    """Whether a matrix method takes a matrix parameter named ``name`` (``None``: the name is unknown).

    ``None`` (default): every matrix parameter but a guide's locations and scales
    (:func:`is_guide_param_name`; an unnamed parameter is taken); ``"all"``: every one; a callable:
    ``bool(matrix_params(name))``, which needs the name.
    """
    if matrix_params == "all":
        return True
    if matrix_params is None:
        return name is None or not is_guide_param_name(name)
    if name is None:
        raise ValueError(
            "matrix_params as a callable needs parameter names: pass named_parameters() to the torch optimizer, "
            "or use it through Pyro's param store (pyro_ext.optim wrappers)"
        )
    return bool(matrix_params(name))


def resolve_rank(shape: tuple[int, int], rank: Any, leading_basis: Any, clip_rank: bool) -> tuple[int, int]:
    """Alice's ``(r, l)`` for an ``m x n`` matrix; ``rank=None`` is ``max(1, min(m, n) // 4)``, valid for any shape."""
    from adapters.configs import check_rank, default_leading_basis, effective_rank

    if rank is None:
        r = max(1, min(shape) // 4)
        lead = default_leading_basis(r) if leading_basis is None else check_positive_int("leading_basis", leading_basis)
        return r, min(lead, r)
    return effective_rank(shape, *check_rank(rank, leading_basis), clip_rank)


def check_numeric(name: str, value: Any, expected: str = "an array of numbers") -> None:
    """Raise a ``TypeError`` naming ``name`` when ``value`` is not numeric: ``None``, a string, or an
    array-like whose entries are not numbers (a JAX or torch array is numeric by construction)."""
    if value is None or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if hasattr(value, "dtype") and not isinstance(value, np.ndarray | np.generic):
        return
    try:
        kind = np.asarray(value).dtype.kind
    except (TypeError, ValueError) as err:  # ragged nesting, unconvertible objects
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}: {err}") from None
    if kind not in "biuf":
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} of dtype {np.asarray(value).dtype}")


def check_inverse_mass_matrix(algorithm: str, inverse_mass_matrix: Any, dim: int) -> None:
    """An initial inverse mass matrix (a numpy, JAX or torch array, or ``None``) fits the unconstrained
    dimension ``d = dim`` (known when the kernel first sees the model): shape ``(d,)`` or ``(d, d)``."""
    if inverse_mass_matrix is None:
        return
    shape, d = tuple(np.shape(inverse_mass_matrix)), dim
    if shape not in ((d,), (d, d)):
        raise ValueError(
            f"{algorithm}: inverse_mass_matrix must have shape ({d},) or ({d}, {d}) (the model's {d} unconstrained "
            f"dimensions), got shape {shape}"
        )


def invalid_site_message(algorithm: str, site: str, problem: str, num_bad: int, num_total: int) -> str:
    """The error both backends give for a model whose sample site ``site`` breaks a constraint at its
    first draw: ``problem`` is e.g. ``"Normal distribution got invalid scale parameter"`` (NumPyro's
    ``validate_args`` wording) or ``"observed value is outside the support of its Poisson distribution"``."""
    return (
        f"model: site {site!r}: {problem} ({num_bad} of {num_total} values); {algorithm} validates the model's "
        "distributions before it runs, as NUTS does, because a density that is NaN or -inf on part of the space "
        "makes every estimate from it meaningless"
    )


def check_site_distribution(
    algorithm: str,
    site: str,
    fn: Any,
    value: Any,
    is_observed: bool,
    *,
    holds: Callable[[Any, Any], np.ndarray],
    is_dependent: Callable[[Any], bool],
    derived_type: type,
) -> None:
    """Both backends' argument validation on one sample site (distribution ``fn``, drawn or observed
    ``value``): every parameter against its constraint, and an observed value against the support.

    The backend supplies how a constraint is evaluated (``holds(constraint, x)``: a boolean array),
    its ``constraints.is_dependent`` and its ``lazy_property`` type (``derived_type``: a parameter
    derived from another one, ``probs`` from ``logits``, is checked through that one).  Wrappers
    (``Independent``, ``ExpandedDistribution``, masks) are unwrapped through ``base_dist``; a
    ``Unit`` factor may be -inf by design and is not checked.  Raises ``ValueError`` worded by
    :func:`invalid_site_message`.
    """
    chain = []
    while fn is not None:
        chain.append(fn)
        fn = getattr(fn, "base_dist", None)
    for dist in chain:
        if type(dist).__name__ == "Unit":
            return
        try:
            arg_constraints = dist.arg_constraints
        except NotImplementedError:  # a user distribution that declares none: nothing to check
            arg_constraints = {}
        for param, constraint in arg_constraints.items():
            if is_dependent(constraint):
                continue
            if param not in dist.__dict__ and isinstance(getattr(type(dist), param, None), derived_type):
                continue
            valid = np.asarray(holds(constraint, getattr(dist, param)), dtype=bool)
            if not valid.all():
                problem = f"{type(dist).__name__} distribution got invalid {param} parameter"
                raise ValueError(invalid_site_message(algorithm, site, problem, int((~valid).sum()), valid.size))
    if not is_observed:
        return
    try:
        support = chain[0].support
    except NotImplementedError:  # a user distribution may not declare one
        return
    valid = np.asarray(holds(support, value), dtype=bool)
    if not valid.all():
        problem = f"observed value is outside the support of its {type(chain[-1]).__name__} distribution"
        raise ValueError(invalid_site_message(algorithm, site, problem, int((~valid).sum()), valid.size))


def per_datum_loss_message(method: str, what: str, problem: str = "is not finite") -> str:
    """The message of a root-free optimizer (root-free RMSProp/Adam(W), IF-Shampoo) whose step is not finite.

    These methods divide by a second moment without a square root, so their step scales like the inverse of
    the loss: they expect the gradient of a per-datum loss, where Pyro's and NumPyro's ELBOs are sums.
    """
    return (
        f"{method}: {what} {problem}. {method} divides by the gradient's second moment without a square "
        "root, so it expects the gradient of a per-datum loss, and an ELBO is a sum over the data: pass "
        "loss_scale=N (the number of data points) and batch_size=the data points per step (N for a full batch, "
        "the plate's subsample_size with subsampling), or lower the learning rate"
    )
