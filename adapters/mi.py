"""Backend-free pieces of AIS and the mutual-information bounds (Brekelmans et al., ICLR 2022).

* :class:`BoundEstimate` — what every estimator returns in both backends: the estimate, its
  Monte Carlo standard error, and whether it is a lower bound, an upper bound or a plain estimate;
* annealing schedules (:func:`linear_schedule`, :func:`sigmoid_schedule`) and
  :func:`check_schedule`, one validation for a user-given array;
* exact answers used by the tests and the ``mi-bounds`` benchmark:
  :func:`linear_gaussian_log_marginal`, :func:`linear_gaussian_mi`, :func:`correlated_gaussian_mi`;
* what both AIS shells share: :class:`AISConfig` (validated hyperparameters),
  :func:`log_mean_exp_bound` (``log Z`` bounds from AIS log weights, delta-method standard error),
  :func:`effective_sample_size` and :class:`AISResultBase` (the numpy half of ``AISResult``: bounds,
  ESS, diagnostics, the importance-resampling rule, the summary and ArviZ conversion).

Everything here is NumPy; the backends turn schedules into their own arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from adapters.diagnostics import divergence_warning, warn_unreliable, weight_degeneracy_warning
from adapters.validation import check_choice, check_numeric, check_positive, check_positive_int, check_probability

BoundKind = Literal["lower", "upper", "estimate"]


@dataclass(frozen=True)
class BoundEstimate:
    """An estimate with its Monte Carlo standard error and the direction it is a bound in.

    ``value`` is the sample mean of per-sample estimates (nats), ``stderr`` their standard
    deviation over ``sqrt(num_samples)``.  ``kind`` is ``"lower"`` or ``"upper"`` when the
    *expectation* of the estimator is a bound on the true value (a stochastic bound: a single
    estimate may cross the truth by a few ``stderr``), ``"estimate"`` otherwise.

    ``samples`` ``(num_samples,)`` holds the per-sample terms whose mean is ``value`` when the
    estimator has them (:meth:`from_samples`; ``None`` for a ``log Z`` from AIS weights, whose
    result object keeps the weights), and ``warnings`` the :mod:`adapters.diagnostics` messages
    the run warned with (divergences, degenerate weights).  Neither takes part in ``==``.
    """

    value: float
    stderr: float
    kind: BoundKind
    estimator: str
    num_samples: int
    samples: np.ndarray | None = field(default=None, compare=False, repr=False)
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("lower", "upper", "estimate"))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @classmethod
    def from_samples(
        cls, samples: Any, kind: BoundKind, estimator: str, warnings: tuple[str, ...] | list[str] = ()
    ) -> BoundEstimate:
        """Mean and standard error of per-sample estimates (any array-like, flattened; kept as ``samples``)."""
        values = np.asarray(samples, dtype=np.float64).reshape(-1)
        n = values.size
        stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls(float(values.mean()), stderr, kind, estimator, n, values, tuple(warnings))

    def to_arviz(self):
        """``arviz.InferenceData`` of the estimate: the per-sample terms (when known) as one chain of
        ``sample_stats`` variable ``terms`` ``(1, num_samples)``, and ``value``, ``stderr``, ``kind``,
        ``estimator``, ``num_samples`` and ``warnings`` in ``attrs``.

        An estimate is not a posterior, so there is no ``posterior`` group; the terms are what
        ArviZ can summarise (``az.summary(idata, group="sample_stats")``, ``az.plot_dist``).
        """
        import arviz as az

        stats = {} if self.samples is None else {"terms": np.asarray(self.samples)[None]}
        idata = az.from_dict(sample_stats=stats) if stats else az.InferenceData()
        idata.attrs.update(
            value=self.value,
            stderr=self.stderr,
            kind=self.kind,
            estimator=self.estimator,
            num_samples=self.num_samples,
            warnings=list(self.warnings),
        )
        return idata

    def interval(self, z: float = 2.0) -> tuple[float, float]:
        """``value ± z * stderr``."""
        return self.value - z * self.stderr, self.value + z * self.stderr

    def __str__(self) -> str:
        return f"{self.estimator}: {self.value:.4f} ± {self.stderr:.4f} ({self.kind} bound, n={self.num_samples})"


def linear_schedule(num_steps: int) -> np.ndarray:
    """``beta_t = t / T`` for ``t = 0..T``; shape ``(num_steps + 1,)``."""
    num_steps = check_positive_int("num_steps", num_steps)
    return np.linspace(0.0, 1.0, num_steps + 1)


def sigmoid_schedule(num_steps: int, delta: float = 4.0) -> np.ndarray:
    """Sigmoid schedule of Grosse, Ghahramani & Adams (2015, BDMC), shape ``(num_steps + 1,)``.

    ``beta_t = (s(delta (2t/T - 1)) - s(-delta)) / (s(delta) - s(-delta))`` with the logistic
    ``s``: denser near both ends, where the geometric path changes fastest.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    delta = check_positive("delta", delta)
    s = 1.0 / (1.0 + np.exp(-delta * np.linspace(-1.0, 1.0, num_steps + 1)))
    return (s - s[0]) / (s[-1] - s[0])


def check_schedule(schedule: Any, num_steps: int | None = None, name: str = "schedule") -> np.ndarray:
    """A schedule name (``"linear"``, ``"sigmoid"``, needs ``num_steps``) or array, as float64 betas.

    An array must be 1-D with at least two entries, start at exactly 0, end at exactly 1 and
    increase strictly; the error says which of these fails and names the argument ``name``.
    """
    if isinstance(schedule, str):
        check_choice(name, schedule, ("linear", "sigmoid"))
        if num_steps is None:
            raise ValueError(f"{name}={schedule!r} needs num_steps")
        return linear_schedule(num_steps) if schedule == "linear" else sigmoid_schedule(num_steps)
    check_numeric(name, schedule, "'linear', 'sigmoid' or an array of inverse temperatures")
    betas = np.asarray(schedule, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 inverse temperatures, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)):
        raise ValueError(f"{name} must contain only finite values")
    if betas[0] != 0.0 or betas[-1] != 1.0:
        raise ValueError(f"{name} must start at 0 and end at 1, got {float(betas[0])!r} ... {float(betas[-1])!r}")
    if not np.all(np.diff(betas) > 0):
        first = int(np.argmax(np.diff(betas) <= 0))
        raise ValueError(
            f"{name} must increase strictly, but {name}[{first + 1}] = {float(betas[first + 1])!r} <= "
            f"{name}[{first}] = {float(betas[first])!r}"
        )
    if num_steps is not None and betas.size != num_steps + 1:
        raise ValueError(f"{name} has {betas.size} entries, expected num_steps + 1 = {num_steps + 1}")
    return betas


def linear_gaussian_log_marginal(x: Any, weight: Any, noise_scale: float) -> np.ndarray:
    """``log p(x)`` of ``z ~ N(0, I_dz)``, ``x = W z + eps``, ``eps ~ N(0, noise_scale^2 I_dx)``.

    ``x``: ``(..., dx)``; ``weight``: ``(dx, dz)``.  ``p(x) = N(0, W W^T + noise_scale^2 I)``.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    noise_scale = check_positive("noise_scale", noise_scale)
    dx = weight.shape[0]
    cov = weight @ weight.T + noise_scale**2 * np.eye(dx)
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, x[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diag(chol)))
    return -0.5 * (np.sum(white**2, axis=-1) + log_det + dx * math.log(2.0 * math.pi))


def linear_gaussian_mi(weight: Any, noise_scale: float) -> float:
    """``I(x; z) = 0.5 log det(I_dz + W^T W / noise_scale^2)`` for the linear-Gaussian model above (nats)."""
    weight = np.asarray(weight, dtype=np.float64)
    noise_scale = check_positive("noise_scale", noise_scale)
    gram = np.eye(weight.shape[1]) + weight.T @ weight / noise_scale**2
    return 0.5 * float(np.linalg.slogdet(gram)[1])


def correlated_gaussian_mi(rho: float, dim: int) -> float:
    """``I(x; z) = -dim/2 log(1 - rho^2)`` for ``dim`` independent pairs of unit Gaussians with correlation ``rho``."""
    dim = check_positive_int("dim", dim)
    if not (isinstance(rho, int | float) and -1.0 < rho < 1.0):
        raise ValueError(f"rho must be a number in (-1, 1), got {rho!r}")
    return -0.5 * dim * math.log1p(-(rho**2))


def log_mean_exp_bound(log_weights: Any, kind: BoundKind, estimator: str) -> BoundEstimate:
    """``log Z`` from ``K`` AIS log weights ``log w_k`` (shape ``(K,)``), with its standard error.

    ``kind="lower"`` (forward chains, ``E[w] = Z``): ``log((1/K) sum_k w_k)``, a stochastic lower
    bound by Jensen's inequality.  ``kind="upper"`` (reverse chains started from exact posterior
    samples, ``E[1/w] = 1/Z``): ``-log((1/K) sum_k 1/w_k)``, a stochastic upper bound (Grosse,
    Ghahramani & Adams 2015).

    The standard error is the delta method's: with ``v_k = w_k`` (lower) or ``1/w_k`` (upper)
    and ``v_bar`` their mean, ``se(log v_bar) ~ sd(v) / (sqrt(K) v_bar)``, computed in log space.
    It is NaN for ``K = 1``, and ``value`` is ``-inf`` (lower) / ``+inf`` (upper) when every
    weight is zero.  Non-finite log weights count as zero weights (``-inf``).
    """
    check_choice("kind", kind, ("lower", "upper"))
    values = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("log_weights: need at least one chain, got an empty array")
    sign = 1.0 if kind == "lower" else -1.0
    logs = np.where(np.isfinite(values), sign * values, -np.inf)
    count = logs.size
    if not np.any(np.isfinite(logs)):
        return BoundEstimate(-sign * math.inf, math.nan, kind, estimator, count)
    top = float(np.max(logs))
    scaled = np.exp(logs - top)
    mean = float(scaled.mean())
    value = top + math.log(mean)
    stderr = float(scaled.std(ddof=1) / (math.sqrt(count) * mean)) if count > 1 else math.nan
    return BoundEstimate(sign * value, stderr, kind, estimator, count)


def check_group_size(name: str, batch_size: int, num_samples: int | None) -> int:
    """The group size ``K`` of a critic bound (``num_samples``, or the whole batch when ``None``);
    the batch of ``batch_size`` joint samples must split into groups of ``K``."""
    k = batch_size if num_samples is None else num_samples
    if batch_size % k:
        raise ValueError(f"the batch of {batch_size} joint samples must split into groups of {name} = {k}")
    return k


# ---------------------------------------------------------------------------------------
# A model as a joint p(z) p(x | z): which sites are z and which are x (both backends' joint_model)
# ---------------------------------------------------------------------------------------
def check_site_names(name: str, value: Any) -> list[str]:
    """``value`` (a site name or a list of them) as a non-empty list of names; the error names ``name``."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{name} must be a site name or a list of site names, got {value!r}")
    return list(names)


def check_joint_sites(trace_sites: dict, latent: Any, observed: Any, algorithm: str) -> tuple[list[str], list[str]]:
    """Check ``latent`` and ``observed`` against ``trace_sites`` ``{name: is_observed}`` (the model run
    without data): each names sample sites the model draws, the two do not overlap, and together they
    cover every sample site (``p(x | z)`` must be the product of the observed sites' densities)."""
    latent, observed = check_site_names("latent", latent), check_site_names("observed", observed)
    overlap = sorted(set(latent) & set(observed))
    if overlap:
        raise ValueError(f"latent and observed share the sites {overlap}; each site is one or the other")
    for name, names in (("latent", latent), ("observed", observed)):
        missing = [n for n in names if n not in trace_sites]
        if missing:
            raise ValueError(f"{name}: the model has no sample sites {missing}; its sites are {sorted(trace_sites)}")
    fixed = [n for n in latent + observed if trace_sites[n]]
    if fixed:
        raise ValueError(
            f"model: the sites {fixed} are observed (obs=...) when the model runs with model_args/model_kwargs; "
            f"{algorithm} samples the joint, so leave their data out (obs=None)"
        )
    others = sorted(set(trace_sites) - set(latent) - set(observed))
    if others:
        raise ValueError(
            f"model: the sample sites {others} are neither latent nor observed; {algorithm} needs p(x | z) in closed "
            "form, so name every sample site in latent or observed (marginalise the others out of the model)"
        )
    return latent, observed


MODEL_HINT = (
    "; to bound the MI of a model, pass the model in place of the three functions, with latent= and observed= "
    "site names"
)


def check_joint_functions(functions: tuple, site_args: tuple, sample_joint_params: tuple[str, ...]) -> bool:
    """Which joint the MI bounds got: ``True`` for a model (``functions[0]``, with ``site_args =
    (latent, observed, model_args, model_kwargs)``), ``False`` for the three functions
    ``(sample_joint, log_prior, log_likelihood)``, each of which must take its arguments
    (``sample_joint_params``: ``("rng_key", "n")`` in JAX, ``("n",)`` in torch; ``(z)``; ``(x, z)``).
    A ``TypeError`` says which argument is wrong and how to pass a model instead.
    """
    import inspect

    sample_joint, log_prior, log_likelihood = functions
    latent, observed, model_args, model_kwargs = site_args
    if latent is not None or observed is not None:
        if log_prior is not None or log_likelihood is not None:
            raise TypeError(
                "give either a model with latent= and observed= site names, or the three functions sample_joint, "
                "log_prior and log_likelihood, not both"
            )
        if latent is None or observed is None:
            raise TypeError("a model needs both latent= and observed= site names (z and x of I(x; z))")
        if not callable(sample_joint):
            raise TypeError(f"model must be a model (a callable), got {sample_joint!r}")
        if not isinstance(model_args, tuple | list):
            raise TypeError(f"model_args must be a tuple of the model's positional arguments, got {model_args!r}")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a dict of the model's keyword arguments, got {model_kwargs!r}")
        return True
    if model_args or model_kwargs:
        raise TypeError("model_args and model_kwargs are for a model given with latent= and observed= site names")
    names = ("sample_joint", "log_prior", "log_likelihood")
    missing = [name for name, fn in zip(names, functions, strict=True) if fn is None]
    if missing:
        raise TypeError(f"{', '.join(missing)} missing: give sample_joint, log_prior and log_likelihood{MODEL_HINT}")
    expected = dict(zip(names, (sample_joint_params, ("z",), ("x", "z")), strict=True))
    for name, fn in zip(names, functions, strict=True):
        call = f"{name}({', '.join(expected[name])})"
        if not callable(fn):
            raise TypeError(f"{name} must be a function {call}, got {fn!r}{MODEL_HINT}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin or C function without a signature: trust it
            continue
        try:
            signature.bind(*expected[name])
        except TypeError as err:
            raise TypeError(
                f"{name} must be a function {call}, but it cannot be called so ({err}){MODEL_HINT}"
            ) from None
    return False


def check_joint_draws(draws: Any, call: str) -> tuple[Any, Any]:
    """``(x, z)`` from ``sample_joint``'s return value ``draws``; a ``TypeError`` (with how to pass a
    model instead) when it is not a pair, as when a model is passed as ``sample_joint``."""
    if not (isinstance(draws, tuple | list) and len(draws) == 2):
        raise TypeError(f"{call} must return a pair (x, z) of arrays (n, dx) and (n, dz), got {draws!r}{MODEL_HINT}")
    return draws[0], draws[1]


def mean_row_ess(log_weights: Any) -> float:
    """The mean over rows of :func:`effective_sample_size` of each row of ``log_weights`` ``(N, K)``
    (the ``K`` chains of each outer sample of the MI bounds)."""
    rows = np.asarray(log_weights, dtype=np.float64).reshape(-1, np.shape(log_weights)[-1])
    return float(np.mean([effective_sample_size(row) for row in rows]))


def check_posterior_samples(samples: Any) -> None:
    """AIS's reverse-run start: a dict of numeric arrays (one per latent site) or one numeric array;
    a ``TypeError`` naming the entry otherwise (before any backend converts it)."""
    if isinstance(samples, Mapping):
        for key, value in samples.items():
            check_numeric(f"posterior_samples[{key!r}]", value, "an array of draws (num_chains, ...)")
    else:
        check_numeric("posterior_samples", samples, "an array of shape (num_chains, d) or a dict of latent sites")


def effective_sample_size(log_weights: Any) -> float:
    """Kish's ``(sum w)^2 / sum w^2`` of the weights ``exp(log_weights)`` (0 when all are zero)."""
    values = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    values = np.where(np.isfinite(values), values, -np.inf)
    if not np.any(np.isfinite(values)):
        return 0.0
    scaled = np.exp(values - np.max(values))
    return float(scaled.sum() ** 2 / np.sum(scaled**2))


@dataclass(frozen=True)
class AISConfig:
    """AIS hyperparameters shared by the NumPyro and Pyro shells (``numpyro_ext.infer.AIS``).

    ``schedule`` is ``"linear"``, ``"sigmoid"`` or an array of inverse temperatures
    ``0 = beta_0 < ... < beta_T = 1``; an array sets ``num_steps = len(schedule) - 1``.
    ``transition`` is ``"hmc"`` or a user kernel (a callable, checked by the backend).
    ``step_size`` is the HMC step size (the start of the pilot's adaptation when
    ``adapt_step_size``), ``adaptation_rate`` the gain ``kappa`` of the pilot's multiplicative
    update ``log eps <- log eps + kappa (a - target_accept_prob)``.
    """

    num_steps: int = 100
    num_chains: int = 16
    schedule: Any = "sigmoid"
    transition: Any = "hmc"
    step_size: float = 0.1
    num_leapfrog: int = 10
    adapt_step_size: bool = True
    target_accept_prob: float = 0.65
    adaptation_rate: float = 1.0
    max_delta_energy: float = 1000.0

    def __post_init__(self) -> None:
        def set_(name, value):
            object.__setattr__(self, name, value)

        num_steps = check_positive_int("num_steps", self.num_steps)
        if isinstance(self.schedule, str):
            betas = check_schedule(self.schedule, num_steps)
        else:
            betas = check_schedule(self.schedule)
            num_steps = betas.size - 1
        set_("num_steps", num_steps)
        set_("schedule", self.schedule if isinstance(self.schedule, str) else tuple(float(b) for b in betas))
        set_("num_chains", check_positive_int("num_chains", self.num_chains))
        if not (self.transition == "hmc" or callable(self.transition)):
            raise ValueError(
                "transition must be 'hmc' or a kernel function "
                f"transition(rng_key, position, logdensity_fn, step_size) -> (position, acceptance_rate), "
                f"got {self.transition!r}"
            )
        set_("step_size", check_positive("step_size", self.step_size))
        set_("num_leapfrog", check_positive_int("num_leapfrog", self.num_leapfrog))
        if not isinstance(self.adapt_step_size, bool):
            raise ValueError(f"adapt_step_size must be True or False, got {self.adapt_step_size!r}")
        set_("target_accept_prob", check_probability("target_accept_prob", self.target_accept_prob))
        set_("adaptation_rate", check_positive("adaptation_rate", self.adaptation_rate))
        set_("max_delta_energy", check_positive("max_delta_energy", self.max_delta_energy))

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> AISConfig:
        """The config of the entries of ``arguments`` named like its fields (others keep their defaults).

        For a function whose parameters carry the fields' names: ``AISConfig.from_arguments(locals())``
        as its first statement passes them on without listing each one again.
        """
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})

    @property
    def betas(self) -> np.ndarray:
        """The inverse temperatures, float64, shape ``(num_steps + 1,)``."""
        if isinstance(self.schedule, str):
            return check_schedule(self.schedule, self.num_steps)
        return np.asarray(self.schedule, dtype=np.float64)


#: AIS and the MI bounds flag weights whose Kish ESS is below this fraction of the chains: a
#: tenth is "far below" (the estimate then follows one or two chains) yet leaves healthy runs
#: of a few dozen chains, whose ESS is typically a third or more of them, unflagged.
AIS_MIN_ESS_FRACTION = 0.1


def ais_reliability(
    algorithm: str,
    num_divergent: int,
    num_transitions: int,
    ess: float,
    num_chains: int,
    *,
    what: str = "importance weights",
    stacklevel: int = 4,
) -> list[str]:
    """Warn, in AIS's and the MI bounds' words, when ``num_divergent`` of ``num_transitions``
    transitions diverged (more than :data:`adapters.diagnostics.DEFAULT_MAX_DIVERGENCE_RATE`) or the
    Kish ESS of ``num_chains`` weights is below :data:`AIS_MIN_ESS_FRACTION` of them; the messages.

    Divergent transitions leave chains where they were, so AIS's weights no longer come from
    ``pi_t``-invariant moves along the whole path; degenerate weights mean the estimate (and its
    standard error) rest on one or two chains, so it is far below ``log Z`` in expectation.
    """
    return warn_unreliable(
        divergence_warning(algorithm, num_divergent, num_transitions),
        weight_degeneracy_warning(algorithm, ess, num_chains, min_fraction=AIS_MIN_ESS_FRACTION, what=what),
        stacklevel=stacklevel,
    )


def multi_sample_reliability(
    algorithm: str, log_weights: np.ndarray, num_divergent: int, num_steps: int, *, stacklevel: int
) -> list[str]:
    """:func:`ais_reliability` for the ``N x K`` chains (``log_weights`` ``(N, K)``, numpy) of the
    multi-sample bounds, ``num_steps`` transitions each: the ESS is the mean over the ``N`` outer
    samples of their ``K`` weights' ESS.  ``stacklevel`` points the warning at the user's call."""
    num_samples, num_chains = np.shape(log_weights)
    return ais_reliability(
        algorithm,
        num_divergent,
        num_samples * num_chains * num_steps,
        mean_row_ess(log_weights),
        num_chains,
        what="importance weights of each outer sample (mean ESS over the samples)",
        stacklevel=stacklevel + 1,
    )


class AISResultBase:
    """The backend-free half of ``AISResult`` (both backends): everything computed from numpy arrays.

    A backend's ``AISResult`` subclasses it, keeps its own arrays (final positions, the run's
    output) and implements ``get_samples`` by drawing ``num`` indices from the categorical
    distribution with logits :meth:`resampling` returns, with its own random numbers.

    Args:
        log_weights: ``(K,)`` forward-form AIS log weights ``log w_k`` (a reverse run's too).
        kind: ``"lower"`` for a forward run (``log Z = log mean w``), ``"upper"`` for a reverse
            (BDMC) run (``log Z = -log mean 1/w``); see :func:`log_mean_exp_bound`.
        step_sizes: ``(T,)`` the per-temperature step sizes used.
        acceptance_rate: ``(S, K)`` per transition and chain.
        is_divergent: ``(S, K)`` booleans; their count is ``num_divergent``.

    Attributes: ``direction`` (``"forward"``/``"reverse"``), ``log_weights`` (float64),
    ``log_Z`` and ``mean_log_weight`` (:class:`BoundEstimate`; the latter the single-chain bound
    ``mean_k log w_k``), ``ess`` (Kish's, of ``w`` forward and ``1/w`` reverse), ``step_sizes``,
    ``acceptance_rate``, ``num_divergent``, ``num_transitions`` and ``warnings`` (the messages of
    :meth:`check_reliability`, empty until a shell calls it).
    """

    def __init__(self, log_weights: Any, kind: BoundKind, step_sizes: Any, acceptance_rate: Any, is_divergent: Any):
        self.direction = "forward" if kind == "lower" else "reverse"
        self.log_weights = np.asarray(log_weights, dtype=np.float64)
        estimator = "ais" if kind == "lower" else "bdmc-reverse-ais"
        self.log_Z = log_mean_exp_bound(self.log_weights, kind, estimator)
        with np.errstate(invalid="ignore"):  # a zero weight makes the mean -inf and its stderr NaN
            self.mean_log_weight = BoundEstimate.from_samples(self.log_weights, kind, f"{estimator}-mean-log-weight")
        self.step_sizes = np.asarray(step_sizes)
        self.acceptance_rate = np.asarray(acceptance_rate)
        divergent = np.asarray(is_divergent)
        self.num_divergent = int(np.sum(divergent))
        self.num_transitions = int(divergent.size)
        self.ess = effective_sample_size(self.log_weights if kind == "lower" else -self.log_weights)
        self.warnings: list[str] = []

    def check_reliability(self, stacklevel: int = 4) -> list[str]:
        """Warn (:class:`adapters.diagnostics.ReliabilityWarning`) when the divergence rate or the
        weights' ESS says the estimate cannot be trusted (:func:`ais_reliability`); the messages
        are kept in ``warnings`` and returned.  The shells call it once a run has finished."""
        self.warnings = ais_reliability(
            "AIS" if self.direction == "forward" else "reverse AIS (BDMC)",
            self.num_divergent,
            self.num_transitions,
            self.ess,
            self.log_weights.size,
            stacklevel=stacklevel + 1,
        )
        return self.warnings

    def resampling(self, num_samples: int | None = None) -> tuple[np.ndarray, int]:
        """``(logits (K,), num)``: multinomial importance resampling draws ``num`` chain indices
        (``num_samples``, default ``K``) with probabilities ``softmax(logits)``.

        The logits are ``log w`` (forward run) or ``-log w`` (reverse run), non-finite ones ``-inf``
        (zero weight).  Raises ``ValueError`` when every weight is zero: then no chain carries any
        of the target's mass (``log Z`` is estimated as ``-inf``) and resampling has nothing to pick.
        """
        num = check_positive_int("num_samples", num_samples) if num_samples is not None else self.log_weights.size
        logits = self.log_weights if self.direction == "forward" else -self.log_weights
        logits = np.where(np.isfinite(logits), logits, -np.inf)
        if not np.any(np.isfinite(logits)):
            raise ValueError(
                f"get_samples: every chain has zero weight (all {logits.size} importance log weights are -inf or "
                "non-finite), so there is nothing to resample: no chain reached the target's support and log Z is "
                "estimated as -inf; check the likelihood, or anneal from a proposal that covers the posterior"
            )
        return logits, num

    def inference_data(self, samples: dict[str, Any]):
        """``arviz.InferenceData`` of resampled draws ``{site: (num, ...)}`` (numpy) as one chain
        (``posterior``), the chains' ``log_weight`` (``sample_stats``) and ``log_Z``,
        ``log_Z_stderr``, ``log_Z_kind``, ``ess``, ``num_divergent`` and ``warnings`` in ``attrs``."""
        import arviz as az

        posterior = {k: np.asarray(v)[None] for k, v in samples.items()}
        idata = az.from_dict(posterior=posterior, sample_stats={"log_weight": self.log_weights[None]})
        idata.attrs.update(log_Z=self.log_Z.value, log_Z_stderr=self.log_Z.stderr, log_Z_kind=self.log_Z.kind)
        idata.attrs.update(ess=self.ess, num_divergent=self.num_divergent, warnings=list(self.warnings))
        return idata

    def summary(self) -> str:
        """``log Z`` with its standard error, ESS, mean acceptance and divergences (two lines)."""
        mean_accept = float(np.mean(self.acceptance_rate)) if self.acceptance_rate.size else math.nan
        return (
            f"{self.log_Z}\n"
            f"ESS {self.ess:.1f} of {self.log_weights.size} chains, mean acceptance {mean_accept:.3f}, "
            f"{self.num_divergent} divergent transitions, {self.step_sizes.shape[0]} temperatures"
        )

    def print_summary(self) -> None:
        """Print :meth:`summary`."""
        print(self.summary())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.direction}, {self.log_Z})"
