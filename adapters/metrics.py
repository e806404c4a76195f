"""Metrics: ESS, ESS per gradient evaluation, and the score against posteriordb reference draws.

Draws are ``{Stan name: array (chains, draws)}`` (see :func:`flatten_draws` to get them from
a NumPyro/Pyro ``get_samples(group_by_chain=True)`` dict).

The reference score compares draws with reference draws parameter by parameter, in units of
the reference standard deviation, so one rule fits every posterior:

* ``z_mean``    = ``|mean - ref_mean| / ref_sd``
* ``z_m2``      = ``|mean(x^2) - ref_mean(x^2)| / ref_sd(x^2)``   (second moment)
* ``log_sd``    = ``|log(sd / ref_sd)|``
* ``q05``, ``q95`` = ``|q_p - ref_q_p| / ref_sd``, the 5% and 95% quantiles,

each on the raw scale and, for a parameter constrained positive (``positive=``, or the
:attr:`~adapters.posteriordb.Posterior.positive` of a posterior passed as ``reference``:
Stan's ``<lower=0>``, a port's positive support), also on the log scale (rows named
``log(tau)``): a check of raw means alone misses the centred eight-schools bias in ``tau``,
which shows clearly on ``log(tau)``.  A coefficient that happens to be positive in every
draw gets no log row.

The pass rule (:data:`DEFAULT_RULE`) holds at bulk ESS >= 400: max ``z_mean`` < 0.15, max
``log_sd`` < 0.2, max quantile error < 0.4, the maxima taken over all parameters and both
scales; the score names each criterion with its value and threshold, the failed ones
first (:attr:`ReferenceScore.criteria`, :meth:`ReferenceScore.verdict`).
Calibration (``python -m benchmarks score-calibration``): an exact sampler (random
subsets of 400 of the near-independent reference draws, scored against the other 9 600, 20
subsets on each of the 27 posteriors of the shared subset; 2026-12-07) gives max ``z_mean``
0.076 median / 0.130 at the 95th percentile, max ``log_sd`` 0.061 / 0.131, and max quantile
error 0.214 / 0.343; 93% of the subsets pass.  The quantile threshold of 0.2 first
suggested would fail an exact sampler more often than not at ESS 400, hence 0.4.  The
errors shrink like 1/sqrt(ESS), so the fixed thresholds get more lenient, relative to Monte
Carlo error, as ESS grows; the centred eight-schools bias (z_mean 0.33 and quantile error
1.06 on ``log(tau)`` with NumPyro's NUTS) fails at any ESS.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from adapters.target import stan_names
from adapters.validation import check_choice, check_positive


def _check_draws(name: str, draws: Any) -> dict[str, np.ndarray]:
    """``draws`` as ``{parameter: float array (chains, draws)}``; bad input names ``name``."""
    if not isinstance(draws, Mapping):
        raise TypeError(
            f"{name} must be a mapping {{parameter name: array (chains, draws)}}, got {type(draws).__name__}"
        )
    out = {}
    for key, value in draws.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}[{key!r}] must be an array of numbers, got {type(value).__name__}: {err}") from None
        if arr.ndim != 2:
            raise ValueError(f"{name}[{key!r}] must have shape (chains, draws), got {arr.shape}")
        out[key] = arr
    return out


def flatten_draws(samples: Mapping[str, Any], group_by_chain: bool = True) -> dict[str, np.ndarray]:
    """``{site: array (chains, draws, *shape)}`` -> ``{Stan name: array (chains, draws)}``.

    With ``group_by_chain=False`` the input is ``(draws, *shape)`` and one chain is assumed.
    """
    if not isinstance(samples, Mapping):
        raise TypeError(f"samples must be a mapping {{site name: array}}, got {type(samples).__name__}")
    out: dict[str, np.ndarray] = {}
    for site, value in samples.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"samples[{site!r}] must be an array of numbers, got {type(value).__name__}: {err}"
            ) from None
        if not group_by_chain:
            arr = arr[None]
        if arr.ndim < 2:
            raise ValueError(f"samples[{site!r}] must have shape (chains, draws, ...), got {arr.shape}")
        shape = arr.shape[2:]
        flat = arr.reshape(arr.shape[:2] + (-1,))
        for i, name in enumerate(stan_names(site, shape)):
            out[name] = flat[..., i]
    return out


def ess(draws: Mapping[str, np.ndarray], method: str = "bulk") -> dict[str, float]:
    """ArviZ's rank-normalised ESS (``method="bulk"`` or ``"tail"``) of each entry ``{name: (chains, draws)}``."""
    import arviz as az

    check_choice("method", method, ("bulk", "tail"))
    return {k: float(az.ess(v, method=method)) for k, v in _check_draws("draws", draws).items()}


def ess_per_grad(draws: Mapping[str, np.ndarray], num_grad_evals: int, method: str = "bulk") -> float:
    """The smallest ESS over parameters divided by the gradient evaluations that produced the draws."""
    num_grad_evals = check_positive("num_grad_evals", num_grad_evals)
    return min(ess(draws, method).values()) / num_grad_evals


@dataclass(frozen=True)
class ScoreRule:
    """Pass thresholds of :func:`reference_score` (all in reference-sd units, except ``min_ess``)."""

    max_z_mean: float = 0.15
    max_log_sd: float = 0.2
    max_quantile: float = 0.4
    min_ess: float = 400.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
                raise ValueError(f"ScoreRule.{name} must be a number >= 0, got {value!r}")


DEFAULT_RULE = ScoreRule()
_METRICS = ("z_mean", "z_m2", "log_sd", "q05", "q95")


@dataclass(frozen=True)
class ParameterScore:
    name: str
    z_mean: float
    z_m2: float
    log_sd: float
    q05: float
    q95: float


class Criterion(NamedTuple):
    """One criterion of the pass rule, as measured: its value, its threshold and the verdict.

    ``name`` is the :class:`ScoreRule` field (``max_z_mean``, ``max_log_sd``,
    ``max_quantile``, ``min_ess``); ``worst`` is the row (or parameter) that sets ``value``.
    """

    name: str
    value: float
    threshold: float
    passed: bool
    worst: str

    def __str__(self) -> str:
        label, fmt = _CRITERIA[self.name]
        at = f" (worst {self.worst})" if self.worst else ""
        if self.name == "min_ess":
            if self.passed:
                return f"{label} {self.value:{fmt}} >= {self.threshold:g}{at}"
            return f"{label} {self.value:{fmt}}{at}, needs >= {self.threshold:g}"
        if self.passed:
            return f"{label} {self.value:{fmt}} < {self.threshold:g}{at}"
        return f"{label} {self.value:{fmt}}{at}, needs < {self.threshold:g}"


# rule field -> (printed label, value format), in the order the verdict lists them
_CRITERIA = {
    "max_z_mean": ("max z_mean", ".3f"),
    "max_log_sd": ("max |log sd ratio|", ".3f"),
    "max_quantile": ("max quantile error", ".3f"),
    "min_ess": ("min bulk ESS", ".0f"),
}


@dataclass(frozen=True)
class ReferenceScore:
    """Per-parameter scores, their maxima, the worst parameter and the verdict of a rule.

    ``min_ess_parameter`` is the reference parameter with the smallest bulk ESS.
    """

    parameters: list[ParameterScore]
    min_ess: float
    rule: ScoreRule = field(default=DEFAULT_RULE)
    min_ess_parameter: str = ""

    def max(self, metric: str) -> float:
        return max(getattr(p, metric) for p in self.parameters)

    @property
    def max_quantile(self) -> float:
        return max(self.max("q05"), self.max("q95"))

    def worst(self, metric: str = "z_mean") -> ParameterScore:
        """The row with the largest ``metric`` (``"quantile"``: the larger of ``q05`` and ``q95``)."""
        if metric == "quantile":
            return max(self.parameters, key=lambda p: max(p.q05, p.q95))
        return max(self.parameters, key=lambda p: getattr(p, metric))

    @property
    def criteria(self) -> list[Criterion]:
        """Each criterion of the rule with its value, threshold and verdict (order of the printed verdict)."""
        criteria = []
        for name, metric in (("max_z_mean", "z_mean"), ("max_log_sd", "log_sd"), ("max_quantile", "quantile")):
            worst = self.worst(metric)
            value = max(worst.q05, worst.q95) if metric == "quantile" else getattr(worst, metric)
            threshold = getattr(self.rule, name)
            criteria.append(Criterion(name, value, threshold, value < threshold, worst.name))
        ess_ok = self.min_ess >= self.rule.min_ess
        return [*criteria, Criterion("min_ess", self.min_ess, self.rule.min_ess, ess_ok, self.min_ess_parameter)]

    @property
    def failed(self) -> list[Criterion]:
        """The criteria that fail (empty when the score passes)."""
        return [c for c in self.criteria if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def verdict(self) -> str:
        """One line: ``PASS``/``FAIL``, the failed criteria with their thresholds, then the passed ones."""
        failed = [str(c) for c in self.criteria if not c.passed]
        passed = [str(c) for c in self.criteria if c.passed]
        if not failed:
            return "PASS: " + ", ".join(passed)
        return "FAIL: " + "; ".join(failed) + ("; passed: " + ", ".join(passed) if passed else "")

    def summary(self) -> dict[str, Any]:
        """The maxima, the worst parameter by ``z_mean``, the verdict and the names of the failed criteria."""
        return {
            "max_z_mean": self.max("z_mean"),
            "max_z_m2": self.max("z_m2"),
            "max_log_sd": self.max("log_sd"),
            "max_quantile": self.max_quantile,
            "worst": self.worst().name,
            "min_ess": self.min_ess,
            "passed": self.passed,
            "failed": [c.name for c in self.failed],
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [asdict(p) for p in self.parameters]
        criteria = [c._asdict() for c in self.criteria]
        return {"summary": self.summary(), "rule": asdict(self.rule), "criteria": criteria, "parameters": rows}

    def __str__(self) -> str:
        head = f"{'parameter':<16}" + "".join(f"{m:>9}" for m in _METRICS)
        rows = [f"{p.name:<16}" + "".join(f"{getattr(p, m):9.3f}" for m in _METRICS) for p in self.parameters]
        return "\n".join([head, *rows, self.verdict()])


def _score_one(name: str, x: np.ndarray, ref: np.ndarray) -> ParameterScore:
    ref_sd = ref.std()
    ref_m2_sd = (ref**2).std()
    sd = x.std()
    with np.errstate(divide="ignore", invalid="ignore"):
        qs = np.quantile(x, [0.05, 0.95])
        ref_qs = np.quantile(ref, [0.05, 0.95])
        return ParameterScore(
            name=name,
            z_mean=float(abs(x.mean() - ref.mean()) / ref_sd),
            z_m2=float(abs((x**2).mean() - (ref**2).mean()) / ref_m2_sd),
            log_sd=float(abs(np.log(sd / ref_sd))),
            q05=float(abs(qs[0] - ref_qs[0]) / ref_sd),
            q95=float(abs(qs[1] - ref_qs[1]) / ref_sd),
        )


def reference_score(
    draws: Mapping[str, np.ndarray],
    reference: Any,
    rule: ScoreRule = DEFAULT_RULE,
    positive: Iterable[str] | None = None,
) -> ReferenceScore:
    """Score ``draws`` against ``reference`` on every reference parameter.

    Args:
        draws: ``{Stan name: array (chains, draws)}``; every reference name must be in it
            (extra draws, e.g. a non-centred model's auxiliary variables, are ignored).
        reference: reference draws ``{Stan name: array (chains, draws)}``, or a
            :class:`~adapters.posteriordb.Posterior`, whose reference draws are used and whose
            :attr:`~adapters.posteriordb.Posterior.positive` parameters get log rows.
        rule: the pass thresholds.
        positive: parameters constrained positive, by base name (``"sigma"`` covers
            ``sigma[1]``, ``sigma[2]``, ...) or full name; each is also scored on the log
            scale.  ``None``: the posterior's own when ``reference`` is a posterior, else none.

    ``min_ess`` of the result is the smallest bulk ESS of ``draws`` over the reference names.
    """
    from adapters.posteriordb import Posterior

    if not isinstance(rule, ScoreRule):
        raise TypeError(f"rule must be a metrics.ScoreRule, got {type(rule).__name__}")
    if isinstance(reference, Posterior):
        if reference.reference_draws is None:
            raise ValueError(f"reference: posterior {reference.name!r} has no reference draws in its database")
        positive = reference.positive if positive is None else positive
        reference = reference.reference_draws
    reference = _check_draws("reference", reference)
    positive = _check_positive_names(positive, reference)
    if not isinstance(draws, Mapping):
        raise TypeError(
            f"draws must be a mapping {{parameter name: array (chains, draws)}}, got {type(draws).__name__}"
        )
    missing = [k for k in reference if k not in draws]
    if missing:
        raise KeyError(
            f"draws lack reference parameters {missing}; draws have {sorted(draws)}. "
            "Report transformed parameters under the reference names (Stan style, 1-based)."
        )
    draws = _check_draws("draws", {k: draws[k] for k in reference})  # extra entries are not read
    rows = []
    for name, ref in reference.items():
        x, ref = draws[name].ravel(), ref.ravel()
        rows.append(_score_one(name, x, ref))
        if name in positive:
            # a draw <= 0 of a positive parameter breaks its constraint: its log is NaN or
            # -inf, and the row scores infinite, a failure
            with np.errstate(divide="ignore", invalid="ignore"):
                rows.append(_score_one(f"log({name})", np.log(x), np.log(ref)))
    rows = [_nan_to_inf(r) for r in rows]
    ess_bulk = ess({k: draws[k] for k in reference})
    worst_ess = min(ess_bulk, key=ess_bulk.get)
    return ReferenceScore(parameters=rows, min_ess=ess_bulk[worst_ess], rule=rule, min_ess_parameter=worst_ess)


def _check_positive_names(positive: Any, reference: Mapping[str, np.ndarray]) -> set[str]:
    """The reference names that ``positive`` covers (by full or base name); unknown names are an error."""
    if positive is None:
        return set()
    if isinstance(positive, str) or not isinstance(positive, Iterable):
        raise TypeError(f"positive must be a collection of parameter names such as ('tau',), got {positive!r}")
    names = list(positive)
    bases = {re.sub(r"\[.*\]$", "", k): k for k in reference}
    unknown = [n for n in names if n not in reference and n not in bases]
    if unknown:
        raise ValueError(f"positive names {unknown} that are not reference parameters {sorted(bases)}")
    return {k for k in reference if k in names or re.sub(r"\[.*\]$", "", k) in names}


def _nan_to_inf(score: ParameterScore) -> ParameterScore:
    # a NaN score (e.g. log of a non-positive draw) must fail the rule, never pass a comparison
    values = {m: (np.inf if np.isnan(getattr(score, m)) else getattr(score, m)) for m in _METRICS}
    return ParameterScore(name=score.name, **values)
