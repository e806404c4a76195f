"""Backend-free halves of twisted SMC shared by ``numpyro_ext`` and ``pyro_ext``.

:class:`TwistedSMCConfig` validates every constructor argument once (same messages in both
backends); :func:`check_step_args`, :func:`check_init_args` and :func:`check_observed_shape`
check the data at the door (numeric types, one time axis, the shapes of the observed sites
the backends' ``check_data`` traces); :func:`exact_sample_paths` parses exact target samples;
:func:`run_warnings` and :func:`lost_runs_warning` word the reliability warnings
(:mod:`adapters.diagnostics`); :func:`smc_summary`, :func:`smc_inference_data` and
:func:`format_summary` turn a run's NumPy arrays into the result's summary and ArviZ object;
the rest are the bounds on ``log Z``:

Zhao, Brekelmans, Makhzani & Grosse, "Probabilistic Inference in Language Models via
Twisted Sequential Monte Carlo", ICML 2024 (arXiv:2404.17546), Sec. 5.

From ``R`` independent runs of each estimator of ``log Z`` (arrays of shape ``(R,)``):

* lower bounds ``E log Z_hat <= log Z``: SIS/IWAE (no resampling) and SMC;
* upper bounds ``>= log Z`` given exact target samples: IWAE with one of the ``K`` samples
  exact, and conditional SMC with particle 0 clamped to an exact path;
* the one-particle versions ``ELBO = E_q log w`` and ``EUBO = E_sigma log w`` of the
  (twisted) proposal path distribution ``q``, which give, with ``lower <= log Z <= upper``,

      KL(q || sigma) = log Z - ELBO   in   [lower - ELBO, upper - ELBO],
      KL(sigma || q) = EUBO - log Z   in   [EUBO - upper, EUBO - lower]

  (each end clipped at 0, since a KL divergence is non-negative).

Only NumPy: the backends hand over their run values as arrays.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adapters.diagnostics import DEFAULT_MIN_ESS_FRACTION, weight_degeneracy_warning
from adapters.validation import check_choice, check_positive_int

RESAMPLING = ("multinomial", "systematic", "stratified")
TWIST_METHODS = ("ctl", "sixo")
EXACT_SAMPLES_LAYOUT = "{'init': {site: (M, ...)}, 'step': {site: (M, T, ...)}} as get_samples() returns"


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def check_ess_threshold(value: Any, allow_zero: bool = False) -> float:
    """``value`` as a float in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``: 0 never resamples) -- a real
    number, not a bool; the resampling trigger ``ESS < value * N``."""
    lower_ok = (lambda v: v >= 0.0) if allow_zero else (lambda v: v > 0.0)
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and lower_ok(float(value)) and value <= 1.0):
        raise ValueError(f"ess_threshold: expected a number in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return float(value)


def check_filter_objects(model: Any, proposal: Any) -> None:
    """Refuse a model/proposal without Pyro's ``SMCFilter`` convention (``init`` and ``step`` methods)."""
    for obj, role in ((model, "model"), (proposal, "proposal")):
        if obj is None and role == "proposal":
            continue
        if not (callable(getattr(obj, "init", None)) and callable(getattr(obj, "step", None))):
            raise TypeError(
                f"{role}: expected an object with init(state, *args) and step(state, *args) methods "
                f"(Pyro's SMCFilter convention), got {type(obj).__name__}"
            )


def check_token_proposal(proposal: Any) -> None:
    """A :class:`TokenModel`'s proposal: ``None`` (twist-induced) or ``"prior"``."""
    if not (proposal is None or (isinstance(proposal, str) and proposal == "prior")):
        raise ValueError(f"proposal: for a TokenModel expected None (twist-induced) or 'prior', got {proposal!r}")


@dataclass(frozen=True)
class TwistedSMCConfig:
    """``TwistedSMC``'s validated constructor arguments (both backends build it; see the module docstring there).

    ``num_particles`` ``N >= 1``; ``resampling`` one of :data:`RESAMPLING`; ``ess_threshold``
    in ``(0, 1]`` (resample before a move when ``ESS < ess_threshold * N``);
    ``max_plate_nesting`` ``>= 0`` (Pyro only: the particle plate sits at
    ``dim = -1 - max_plate_nesting``); ``twist`` ``None`` or a callable; ``tokens``: the model
    is a ``TokenModel`` (then ``proposal`` is ``None`` or ``"prior"``), else ``model`` and
    ``proposal`` follow ``SMCFilter``'s ``init``/``step`` convention.
    """

    model: Any
    num_particles: int = 256
    twist: Any = None
    proposal: Any = None
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    max_plate_nesting: int = 0
    tokens: bool = False

    def __post_init__(self) -> None:
        if self.tokens:
            check_token_proposal(self.proposal)
        else:
            check_filter_objects(self.model, self.proposal)
        object.__setattr__(self, "num_particles", check_positive_int("num_particles", self.num_particles))
        object.__setattr__(self, "resampling", check_choice("resampling", self.resampling, RESAMPLING))
        object.__setattr__(self, "ess_threshold", check_ess_threshold(self.ess_threshold))
        nesting = check_positive_int("max_plate_nesting", self.max_plate_nesting, allow_zero=True)
        object.__setattr__(self, "max_plate_nesting", nesting)
        if self.twist is not None and not callable(self.twist):
            raise TypeError(f"twist: expected None, a callable or a learnable twist, got {type(self.twist).__name__}")


# ---------------------------------------------------------------------------------------
# Data: step arguments, init arguments, observed-site shapes
# ---------------------------------------------------------------------------------------
NUMERIC = "a number, a list of numbers, or a NumPy, JAX or torch array"


def numeric_array(name: str, value: Any, as_array: Callable[[Any], Any], native: type | tuple[type, ...]) -> Any:
    """``value`` as the backend's array (``as_array``), or a ``TypeError`` naming ``name``.

    A ``native`` array (``jax.Array``, ``torch.Tensor``) passes unchanged; anything else must
    convert to a numeric NumPy array (bool, int or float: strings, objects and ragged lists are
    refused).  Python numbers and lists go to ``as_array`` as they are, so they get the backend's
    default dtype (float32 in both), as they would in a model; NumPy (and foreign) arrays keep theirs.
    """
    if isinstance(value, native):
        return value
    if isinstance(value, str | bytes):
        raise TypeError(f"{name}: expected {NUMERIC}, got the string {value!r}")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected {NUMERIC}, got a {type(value).__name__} that is not one") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected {NUMERIC}, got a {type(value).__name__} of dtype {array.dtype}")
    return as_array(value if isinstance(value, numbers.Number | list | tuple) else array)


def check_step_args(
    step_args: tuple, as_array: Callable[[Any], Any], native: type | tuple[type, ...]
) -> tuple[tuple, int | None]:
    """Step arguments as backend arrays with one leading time axis ``T`` (``None`` entries pass).

    Returns ``(arrays, T)`` (``T`` is ``None`` when every entry is ``None``).  Each argument is
    named by its position, ``step_args[i]``, in the error.
    """
    arrays = tuple(
        None if a is None else numeric_array(f"step_args[{i}]", a, as_array, native) for i, a in enumerate(step_args)
    )
    shapes = {i: tuple(a.shape) for i, a in enumerate(arrays) if a is not None}
    for i, shape in shapes.items():
        if not shape:
            raise ValueError(
                f"step_args[{i}]: expected an array with a leading time axis (one entry per step), got a scalar"
            )
    if len({shape[0] for shape in shapes.values()}) > 1:
        given = ", ".join(f"step_args[{i}] of shape {shape}" for i, shape in shapes.items())
        raise ValueError(f"step_args: every step argument needs the same leading (time) length, got {given}")
    lengths = {shape[0] for shape in shapes.values()}
    T = lengths.pop() if lengths else None
    if T == 0:
        raise ValueError("step_args: the time axis is empty (0 steps); expected at least one step")
    return arrays, T


def check_init_args(init_args: Any, as_array: Callable[[Any], Any], native: type | tuple[type, ...]) -> tuple:
    """``init_args`` (a tuple or list of the arguments of ``model.init``) as backend arrays (``None`` passes)."""
    if not isinstance(init_args, tuple | list):
        raise TypeError(
            f"init_args: expected a tuple or list of the arguments of model.init, got {type(init_args).__name__}"
        )
    return tuple(
        None if a is None else numeric_array(f"init_args[{i}]", a, as_array, native) for i, a in enumerate(init_args)
    )


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def check_observed_shape(arg: str, arg_shape: tuple, site: str, value_shape: tuple, site_shape: tuple) -> None:
    """Refuse data that would silently broadcast against an observed site.

    ``value_shape``: what the data argument ``arg`` (of shape ``arg_shape``; its first axis is
    time for a step argument) gives the observed site ``site`` at one step; ``site_shape``: the
    site's shape for one particle (batch and event, the particle axis removed).  The data must
    broadcast to the site's shape without adding values (leading size-1 axes are fine).
    """
    value_shape, site_shape = _strip_leading_ones(value_shape), _strip_leading_ones(site_shape)
    try:
        fits = math.prod(np.broadcast_shapes(value_shape, site_shape)) == math.prod(site_shape)
    except ValueError:
        fits = False
    if fits:
        return
    arg_shape = tuple(int(s) for s in arg_shape)
    if arg.startswith("step_args"):
        what = f"a value of shape {value_shape} per step"
        expected = (
            f"shape {(arg_shape[0],) + site_shape} (a leading time axis of {arg_shape[0]} steps, then the site's shape)"
        )
    else:
        what, expected = f"a value of shape {value_shape}", f"a value that broadcasts to {site_shape}"
    raise ValueError(
        f"{arg}: of shape {arg_shape}, it gives the observed site {site!r} {what}, but the site has shape "
        f"{site_shape} per particle; expected {expected}"
    )


def twist_shape_error(shape: tuple) -> ValueError:
    """The error for a twist whose ``log psi_t`` is not one number per particle (``shape``: what one particle got)."""
    return ValueError(f"twist: expected one log psi_t per particle (a number), got shape {tuple(shape)} per particle")


# ---------------------------------------------------------------------------------------
# Exact samples
# ---------------------------------------------------------------------------------------
def exact_sample_paths(
    samples: Mapping[str, Mapping[str, Any]],
    count: int | None,
    as_array: Callable[[Any], Any],
    native: type | tuple[type, ...] = (),
    *,
    num_steps: int | None = None,
    names: Mapping[str, list] | None = None,
) -> tuple[tuple, tuple]:
    """``get_samples``-layout paths -> ``(init values (M, ...), step values (M, T, ...))``, per site in order.

    ``as_array`` converts each value to the backend's array type (``jnp.asarray``,
    ``torch.as_tensor``; ``native`` arrays pass, see :func:`numeric_array`).  Every site needs
    the same leading (path) axis ``M``; with ``count`` the first ``count`` paths are kept
    (``M >= count``, one per run).  With ``num_steps`` every step site's second axis must be
    ``T``; with ``names`` (the model's latent sites ``{"init": [...], "step": [...]}``) the
    sites must be the model's, in order.
    """
    try:
        init, steps = samples["init"], samples["step"]
        init = {k: numeric_array(f"exact_samples['init'][{k!r}]", v, as_array, native) for k, v in init.items()}
        steps = {k: numeric_array(f"exact_samples['step'][{k!r}]", v, as_array, native) for k, v in steps.items()}
    except (KeyError, AttributeError):
        raise ValueError(f"exact_samples: expected {EXACT_SAMPLES_LAYOUT}") from None
    except TypeError as error:
        if str(error).startswith("exact_samples['"):
            raise
        raise ValueError(f"exact_samples: expected {EXACT_SAMPLES_LAYOUT}") from None
    for group, given in (("init", init), ("step", steps)):
        if names is not None and list(given) != list(names[group]):
            raise ValueError(
                f"exact_samples: its {group} sites {list(given)} must be the model's latent {group} sites "
                f"{list(names[group])}, in the same order"
            )
    values = tuple(init.values()) + tuple(steps.values())
    sizes = {int(np.shape(v)[0]) for v in values if np.ndim(v) > 0}
    if len(sizes) != 1 or any(np.ndim(v) == 0 for v in values):
        raise ValueError(f"exact_samples: every site needs the same leading (path) axis, got sizes {sorted(sizes)}")
    if num_steps is not None:
        for k, v in steps.items():
            if np.ndim(v) < 2 or int(np.shape(v)[1]) != num_steps:
                raise ValueError(
                    f"exact_samples['step'][{k!r}]: expected paths of shape (M, {num_steps}, ...) (one value per step, "
                    f"T = {num_steps}), got {tuple(np.shape(v))}"
                )
    available = sizes.pop()
    init, steps = tuple(init.values()), tuple(steps.values())
    if count is not None:
        if available < count:
            raise ValueError(f"exact_samples: {available} paths given, {count} needed (one per run)")
        init = tuple(v[:count] for v in init)
        steps = tuple(v[:count] for v in steps)
    return init, steps


def check_token_paths(tokens: np.ndarray, num_init: int, num_steps: int, length: int, vocab_size: int) -> None:
    """A ``TokenModel``'s exact paths: no init site, one step site ``token`` of integers ``(M, T)`` in ``0..V-1``."""
    if num_init or num_steps != 1:
        raise ValueError(
            "exact_samples: a TokenModel's paths are {'init': {}, 'step': {'token': (M, T)}}, got "
            f"{num_init} init and {num_steps} step site(s)"
        )
    if tokens.ndim != 2 or tokens.shape[1] != length:
        raise ValueError(f"exact_samples: token paths must have shape (M, {length}), got {tuple(tokens.shape)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"exact_samples: token paths must be integers, got {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"exact_samples: tokens must lie in 0..{vocab_size - 1}")


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
def smc_summary(log_Z: float, log_weights: Any, ess: Any, resampled: Any) -> dict[str, float]:
    """A run's summary from NumPy arrays: ``log_Z``, final ``ess`` and its fraction of ``N``, the
    smallest ESS over the steps, and how many steps resampled."""
    log_weights, ess, resampled = (np.asarray(v) for v in (log_weights, ess, resampled))
    num = log_weights.shape[-1]
    final = float(ess[-1]) if ess.size else math.nan
    return {
        "log_Z": float(log_Z),
        "num_particles": float(num),
        "final_ess": final,
        "final_ess_fraction": final / num,
        "min_ess": float(ess.min()) if ess.size else math.nan,
        "num_steps": float(resampled.shape[0]),
        "num_resampled": float(np.sum(resampled)),
    }


def format_summary(summary: Mapping[str, float]) -> str:
    """The text :meth:`SMCResult.print_summary` prints (one ``name  value`` line per entry)."""
    width = max(len(k) for k in summary)
    return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in summary.items())


def smc_inference_data(
    samples: Mapping[str, Mapping[str, Any]], particle: Any, log_weights: Any, summary: Mapping[str, float]
):
    """``arviz.InferenceData`` of a run's resampled paths.

    ``posterior``: the paths ``samples`` (``get_samples`` layout, NumPy values, one chain of
    equally weighted draws; an init site named like a step site is ``<name>_init``);
    ``sample_stats``: ``particle``, the index of the filter's particle each draw copies, and
    ``log_weight``, that particle's final log weight (a diagnostic of the resampling -- the
    draws are already weighted by it); ``attrs``: :func:`smc_summary`'s ``summary``
    (``log_Z``, final and smallest ESS, ...).
    """
    import arviz as az

    particle = np.asarray(particle)
    steps = {k: np.asarray(v)[None] for k, v in samples["step"].items()}
    init = {(f"{k}_init" if k in steps else k): np.asarray(v)[None] for k, v in samples["init"].items()}
    posterior = {**init, **steps}
    stats = {"particle": particle[None], "log_weight": np.asarray(log_weights)[particle][None]}
    idata = az.from_dict(posterior=posterior, sample_stats=stats)
    idata.attrs.update({k: float(v) for k, v in summary.items()})
    return idata


# ---------------------------------------------------------------------------------------
# Reliability: weight degeneracy and lost runs, worded by adapters.diagnostics
# ---------------------------------------------------------------------------------------
def run_warnings(algorithm: str, log_Z: float, ess: Any, num_particles: int) -> list[str]:
    """The reliability messages of one filter run (not yet warned; see :func:`adapters.diagnostics.warn_unreliable`).

    ``log Z_hat = -inf`` (every particle lost) is one message; otherwise the steps whose ESS
    ``(T + 1,)`` fell to about one particle -- below ``max(1%, 1.5 / N)`` of ``N`` -- are
    counted and reported with the smallest ESS: there the particle system, and every later
    path's ancestry, rests on a handful of particles, and ``log Z_hat`` on their luck.
    """
    if not math.isfinite(log_Z):
        return [
            f"{algorithm}: every particle has zero weight (log Z_hat = -inf); the model's log densities are -inf "
            "or NaN for all proposals at some step"
        ]
    ess = np.asarray(ess, dtype=np.float64).reshape(-1)
    fraction = max(DEFAULT_MIN_ESS_FRACTION, 1.5 / num_particles)
    flagged = [
        float(e) for e in ess if weight_degeneracy_warning(algorithm, float(e), num_particles, min_fraction=fraction)
    ]
    if not flagged:
        return []
    what = f"weights at {len(flagged)} of {len(ess)} steps"
    return [weight_degeneracy_warning(algorithm, min(flagged), num_particles, min_fraction=fraction, what=what)]


def lost_runs_warning(algorithm: str, log_Z: Any) -> str | None:
    """The message for independent runs whose ``log Z_hat`` is ``-inf`` (``log_Z``: ``(R,)``), or ``None``."""
    log_Z = np.asarray(log_Z, dtype=np.float64).reshape(-1)
    lost = int(np.sum(~np.isfinite(log_Z)))
    if not lost:
        return None
    return (
        f"{algorithm}: {lost} of {len(log_Z)} runs lost every particle (log Z_hat = -inf), so their mean is -inf; "
        "use more particles, or a twist or proposal that keeps the particles where the target has mass"
    )


class LogZBounds(NamedTuple):
    """Bounds on ``log Z`` (means over repeats, each with its Monte Carlo standard error).

    ``sis_lower``: IWAE/SIS (no resampling); ``smc_lower``: SMC; ``iwae_upper``: SIS with one
    sample exact; ``csmc_upper``: conditional SMC (NaN without exact samples).
    ``kl_q_sigma`` and ``kl_sigma_q``: ``(low, high)`` intervals for ``KL(q || sigma)`` and
    ``KL(sigma || q)`` of the one-particle (twisted) proposal path distribution, from the
    single-sample bounds ``E_q log w`` and ``E_sigma log w`` and the sandwich on ``log Z``.
    """

    sis_lower: float
    sis_lower_se: float
    smc_lower: float
    smc_lower_se: float
    iwae_upper: float
    iwae_upper_se: float
    csmc_upper: float
    csmc_upper_se: float
    kl_q_sigma: tuple[float, float]
    kl_sigma_q: tuple[float, float]


def mean_se(values: Any) -> tuple[float, float]:
    """Mean and standard error ``sd / sqrt(R)`` of ``R`` run values (shape ``(R,)``).

    The standard error is NaN for a single run or when a value is not finite (a ``-inf``
    run makes the mean ``-inf`` and its error undefined).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        raise ValueError("values: need at least one run, got an empty array")
    if not np.all(np.isfinite(values)) or len(values) < 2:
        return float(np.mean(values)), math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def combine_bounds(
    sis: Any,
    smc: Any,
    iwae: Any = None,
    csmc: Any = None,
    elbo: Any = None,
    eubo: Any = None,
) -> LogZBounds:
    """:class:`LogZBounds` from the run values ``(R,)`` of each estimator.

    ``iwae``, ``csmc`` (upper bounds), ``elbo`` and ``eubo`` (one-particle ``log w`` under ``q``
    and under exact samples) come together or not at all; without them the upper bounds
    and the KL intervals are NaN.
    """
    nan2 = (math.nan, math.nan)
    given = [v is not None for v in (iwae, csmc, elbo, eubo)]
    if any(given) and not all(given):
        raise ValueError("iwae, csmc, elbo, eubo: give all four (they need exact samples) or none")
    if not all(given):
        return LogZBounds(*mean_se(sis), *mean_se(smc), *nan2, *nan2, nan2, nan2)
    elbo_mean, eubo_mean = mean_se(elbo)[0], mean_se(eubo)[0]
    lower = max(mean_se(sis)[0], mean_se(smc)[0])
    upper = min(mean_se(iwae)[0], mean_se(csmc)[0])
    return LogZBounds(
        *mean_se(sis),
        *mean_se(smc),
        *mean_se(iwae),
        *mean_se(csmc),
        kl_q_sigma=(max(lower - elbo_mean, 0.0), max(upper - elbo_mean, 0.0)),
        kl_sigma_q=(max(eubo_mean - upper, 0.0), max(eubo_mean - lower, 0.0)),
    )


# ---------------------------------------------------------------------------------------
# Twists: the checks both backends' QuadraticTwist and shells share
# ---------------------------------------------------------------------------------------
def check_twist_steps(twist_steps: int, num_steps: int) -> None:
    """A twist with parameters for ``twist_steps`` steps used on data of ``num_steps`` steps (``t = 0..T-1``)."""
    if twist_steps < num_steps:
        raise ValueError(
            f"twist: it has parameters for num_steps={twist_steps} steps, but the data have T = {num_steps} steps "
            "(it needs one set per step t = 0..T-1)"
        )


def check_twist_state(site: str, dim: int, keys: Any, shape: tuple | None) -> None:
    """``QuadraticTwist(site, dim)``'s input: ``state[site]`` exists (``keys``: the state's keys) and holds
    ``dim`` values per particle (``shape``: one particle's, ``None`` when the site is missing)."""
    if shape is None:
        raise ValueError(f"twist: QuadraticTwist reads state[{site!r}], but the state has keys {sorted(keys)}")
    if math.prod(shape) != dim:
        raise ValueError(
            f"twist: QuadraticTwist(site={site!r}, dim={dim}) got state[{site!r}] of shape {tuple(shape)} per "
            f"particle, expected {dim} value(s)"
        )


def per_particle_shape_error(role: str, expected: tuple, got: tuple) -> ValueError:
    """The error for a user callable (``role``: ``twist``, ``next_token_log_probs``) whose output for one
    particle has shape ``got`` instead of ``expected``."""
    return ValueError(f"{role}: expected shape {tuple(expected)} per particle, got {tuple(got)} per particle")
