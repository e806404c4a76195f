"""Metrics: ESS, ESS per gradient evaluation, and the score against posteriordb reference draws.

Draws are ``{Stan name: array (chains, draws)}`` (see :func:`flatten_draws` to get them from
a NumPyro/Pyro ``get_samples(group_by_chain=True)`` dict).

The reference score compares draws with reference draws parameter by parameter, in units of
the reference standard deviation, so one rule fits every posterior:

* ``z_mean``    = ``|mean - ref_mean| / ref_sd``
* ``z_m2``      = ``|mean(x^2) - ref_mean(x^2)| / ref_sd(x^2)``   (second moment)
* ``log_sd``    = ``|log(sd / ref_sd)|``
* ``q05``, ``q95`` = ``|q_p - ref_q_p| / ref_sd``, the 5% and 95% quantiles,

each on the raw scale and, for a parameter whose reference draws and draws are all
positive, also on the log scale (rows named ``log(tau)``): a check of raw means alone misses the centred
eight-schools bias in ``tau``, which shows clearly on ``log(tau)``.

The pass rule (:data:`DEFAULT_RULE`) holds at bulk ESS >= 400: max ``z_mean`` < 0.15, max
``log_sd`` < 0.2, max quantile error < 0.4, the maxima taken over all parameters and both
scales.  Calibration (``python -m benchmarks score-calibration``): an exact sampler (random
subsets of 400 of the near-independent reference draws, scored against the other 9 600, 20
subsets on each of the 27 posteriors of the shared subset) gives max ``z_mean`` 0.076 median
/ 0.134 at the 95th percentile, max ``log_sd`` 0.063 / 0.142, and max quantile error 0.220 /
0.356.  The quantile threshold of 0.2 first suggested would fail an exact sampler more often
than not at ESS 400, hence 0.4.  The errors shrink like 1/sqrt(ESS), so the fixed
thresholds get more lenient, relative to Monte Carlo error, as ESS grows; the centred
eight-schools bias (z_mean 0.33 and quantile error 1.06 on ``log(tau)`` with NumPyro's NUTS)
fails at any ESS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adapters.target import stan_names


def flatten_draws(samples: Mapping[str, Any], group_by_chain: bool = True) -> dict[str, np.ndarray]:
    """``{site: array (chains, draws, *shape)}`` -> ``{Stan name: array (chains, draws)}``.

    With ``group_by_chain=False`` the input is ``(draws, *shape)`` and one chain is assumed.
    """
    out: dict[str, np.ndarray] = {}
    for site, value in samples.items():
        arr = np.asarray(value, dtype=np.float64)
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
    """ArviZ's rank-normalised ESS (``method="bulk"`` or ``"tail"``) of each parameter."""
    import arviz as az

    return {k: float(az.ess(np.asarray(v, dtype=np.float64), method=method)) for k, v in draws.items()}


def ess_per_grad(draws: Mapping[str, np.ndarray], num_grad_evals: int, method: str = "bulk") -> float:
    """The smallest ESS over parameters divided by the gradient evaluations that produced the draws."""
    if num_grad_evals <= 0:
        raise ValueError(f"num_grad_evals must be > 0, got {num_grad_evals}")
    return min(ess(draws, method).values()) / num_grad_evals


@dataclass(frozen=True)
class ScoreRule:
    """Pass thresholds of :func:`reference_score` (all in reference-sd units, except ``min_ess``)."""

    max_z_mean: float = 0.15
    max_log_sd: float = 0.2
    max_quantile: float = 0.4
    min_ess: float = 400.0


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


@dataclass(frozen=True)
class ReferenceScore:
    """Per-parameter scores, their maxima, the worst parameter and the verdict of a rule."""

    parameters: list[ParameterScore]
    min_ess: float
    rule: ScoreRule = field(default=DEFAULT_RULE)

    def max(self, metric: str) -> float:
        return max(getattr(p, metric) for p in self.parameters)

    @property
    def max_quantile(self) -> float:
        return max(self.max("q05"), self.max("q95"))

    def worst(self, metric: str = "z_mean") -> ParameterScore:
        return max(self.parameters, key=lambda p: getattr(p, metric))

    @property
    def passed(self) -> bool:
        r = self.rule
        return (
            self.min_ess >= r.min_ess
            and self.max("z_mean") < r.max_z_mean
            and self.max("log_sd") < r.max_log_sd
            and self.max_quantile < r.max_quantile
        )

    def summary(self) -> dict[str, Any]:
        """The maxima, the worst parameter by ``z_mean`` and the verdict, as a flat dict."""
        return {
            "max_z_mean": self.max("z_mean"),
            "max_z_m2": self.max("z_m2"),
            "max_log_sd": self.max("log_sd"),
            "max_quantile": self.max_quantile,
            "worst": self.worst().name,
            "min_ess": self.min_ess,
            "passed": self.passed,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [asdict(p) for p in self.parameters]
        return {"summary": self.summary(), "rule": asdict(self.rule), "parameters": rows}

    def __str__(self) -> str:
        head = f"{'parameter':<16}" + "".join(f"{m:>9}" for m in _METRICS)
        rows = [f"{p.name:<16}" + "".join(f"{getattr(p, m):9.3f}" for m in _METRICS) for p in self.parameters]
        s = self.summary()
        verdict = "PASS" if self.passed else "FAIL"
        tail = (
            f"{verdict}: max z_mean {s['max_z_mean']:.3f} (worst {s['worst']}), max |log sd ratio| "
            f"{s['max_log_sd']:.3f}, max quantile error {s['max_quantile']:.3f}, min bulk ESS {s['min_ess']:.0f}"
        )
        return "\n".join([head, *rows, tail])


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
    reference: Mapping[str, np.ndarray],
    rule: ScoreRule = DEFAULT_RULE,
) -> ReferenceScore:
    """Score ``draws`` against ``reference`` on every reference parameter.

    Both are ``{Stan name: array (chains, draws)}``; every reference name must be in
    ``draws`` (extra draws, e.g. a non-centred model's auxiliary variables, are ignored).
    ``min_ess`` of the result is the smallest bulk ESS of ``draws`` over the reference names.
    """
    missing = [k for k in reference if k not in draws]
    if missing:
        raise KeyError(
            f"draws lack reference parameters {missing}; draws have {sorted(draws)}. "
            "Report transformed parameters under the reference names (Stan style, 1-based)."
        )
    rows = []
    for name, ref in reference.items():
        x = np.asarray(draws[name], dtype=np.float64).ravel()
        ref = np.asarray(ref, dtype=np.float64).ravel()
        rows.append(_score_one(name, x, ref))
        # a coefficient that is positive in all 10 000 reference draws may still have a
        # little mass below zero, so the log scale needs every draw positive on both sides
        if np.all(ref > 0) and np.all(x > 0):
            rows.append(_score_one(f"log({name})", np.log(x), np.log(ref)))
    rows = [_nan_to_inf(r) for r in rows]
    min_ess = min(ess({k: draws[k] for k in reference}).values())
    return ReferenceScore(parameters=rows, min_ess=min_ess, rule=rule)


def _nan_to_inf(score: ParameterScore) -> ParameterScore:
    # a NaN score (e.g. log of a non-positive draw) must fail the rule, never pass a comparison
    values = {m: (np.inf if np.isnan(getattr(score, m)) else getattr(score, m)) for m in _METRICS}
    return ParameterScore(name=score.name, **values)
