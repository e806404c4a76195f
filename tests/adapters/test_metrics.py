"""Metrics: ESS against theory, the reference score against known shifts, and its calibration."""

import numpy as np
import pytest

from adapters import metrics, posteriordb
from adapters.posteriordb import EMBEDDED_PATH


def test_flatten_draws_uses_stan_names():
    samples = {"theta": np.zeros((2, 5, 3)), "L": np.zeros((2, 5, 2, 2)), "mu": np.arange(10.0).reshape(2, 5)}
    flat = metrics.flatten_draws(samples)
    assert list(flat) == ["theta[1]", "theta[2]", "theta[3]", "L[1,1]", "L[1,2]", "L[2,1]", "L[2,2]", "mu"]
    assert flat["mu"].shape == (2, 5)
    one_chain = metrics.flatten_draws({"mu": np.arange(5.0)}, group_by_chain=False)
    assert one_chain["mu"].shape == (1, 5)
    with pytest.raises(ValueError, match=r"samples\['mu'\] must have shape \(chains, draws, ...\)"):
        metrics.flatten_draws({"mu": np.arange(5.0)})


def test_ess_of_independent_and_ar1_draws():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 2500))
    # an AR(1) chain with coefficient rho has ESS = n (1 - rho) / (1 + rho)
    rho, ar = 0.8, np.zeros((4, 2500))
    for t in range(1, 2500):
        ar[:, t] = rho * ar[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=4)
    e = metrics.ess({"iid": iid, "ar": ar})
    assert abs(e["iid"] / 10000 - 1) < 0.1
    assert abs(e["ar"] / (10000 * (1 - rho) / (1 + rho)) - 1) < 0.25
    assert metrics.ess_per_grad({"iid": iid}, num_grad_evals=20000) == pytest.approx(e["iid"] / 20000)
    with pytest.raises(ValueError, match="num_grad_evals must be > 0"):
        metrics.ess_per_grad({"iid": iid}, 0)


@pytest.fixture(scope="module")
def eight_schools():
    return posteriordb.load("eight_schools-eight_schools_noncentered", EMBEDDED_PATH).reference_draws


def test_reference_against_itself_scores_zero(eight_schools):
    score = metrics.reference_score(eight_schools, eight_schools)
    assert score.passed
    assert score.max("z_mean") == 0 and score.max("log_sd") == 0 and score.max_quantile == 0
    names = [p.name for p in score.parameters]
    assert "log(tau)" in names and "log(mu)" not in names  # log scale only for positive parameters


def test_known_shift_and_scale_are_measured(eight_schools):
    ref = eight_schools
    sd = ref["mu"].std()
    shifted = dict(ref, mu=ref["mu"] + 0.3 * sd)
    score = metrics.reference_score(shifted, ref)
    mu = next(p for p in score.parameters if p.name == "mu")
    assert mu.z_mean == pytest.approx(0.3, rel=1e-9)
    assert mu.q05 == pytest.approx(0.3, rel=1e-9) and mu.log_sd == pytest.approx(0.0, abs=1e-12)
    assert not score.passed and score.worst().name == "mu"
    wide = dict(ref, mu=ref["mu"].mean() + 1.5 * (ref["mu"] - ref["mu"].mean()))
    mu = next(p for p in metrics.reference_score(wide, ref).parameters if p.name == "mu")
    assert mu.log_sd == pytest.approx(np.log(1.5), rel=1e-9) and mu.z_mean == pytest.approx(0, abs=1e-9)


def test_log_scale_catches_a_bias_in_small_tau(eight_schools):
    """Drop the draws with tau below its 10% quantile: a 'sticky' sampler's bias near tau = 0."""
    ref = eight_schools
    keep = ref["tau"] > np.quantile(ref["tau"], 0.10)
    biased = {k: v[keep][None] for k, v in ref.items()}
    score = metrics.reference_score(biased, ref)
    raw = next(p for p in score.parameters if p.name == "tau")
    log = next(p for p in score.parameters if p.name == "log(tau)")
    assert log.z_mean > 1.5 * raw.z_mean and not score.passed


def test_nan_draws_fail(eight_schools):
    ref = eight_schools
    bad = dict(ref, tau=np.where(np.arange(ref["tau"].size).reshape(ref["tau"].shape) == 0, np.nan, ref["tau"]))
    score = metrics.reference_score(bad, ref)
    assert next(p for p in score.parameters if p.name == "tau").z_mean == np.inf
    assert not score.passed


def test_missing_reference_parameter_is_an_error(eight_schools):
    draws = {k: v for k, v in eight_schools.items() if k != "tau"}
    with pytest.raises(KeyError, match=r"draws lack reference parameters \['tau'\]"):
        metrics.reference_score(draws, eight_schools)


def test_too_few_effective_draws_fail_the_rule(eight_schools):
    few = {k: v[:1, :200] for k, v in eight_schools.items()}
    score = metrics.reference_score(few, eight_schools)
    assert score.min_ess < 400 and not score.passed


@pytest.mark.parametrize("name", posteriordb.list_posteriors(EMBEDDED_PATH))
def test_rule_passes_exact_draws_at_ess_400(name):
    """Calibration: 400 independent reference draws pass the rule against the remaining draws.

    The reference draws are thinned to near independence (posteriordb's ESS ~ 10 000 for
    10 000 draws), so 4 chains x 100 draws is an exact sampler at ESS ~ 400.
    """
    ref = posteriordb.load(name, EMBEDDED_PATH).reference_draws
    rng = np.random.default_rng(2024)
    order = rng.permutation(10000)
    subset = {k: v.ravel()[order[:400]].reshape(4, 100) for k, v in ref.items()}
    rest = {k: v.ravel()[order[400:]].reshape(1, -1) for k, v in ref.items()}
    # min_ess=0: the ESS estimate of 400 independent draws itself scatters (290-400)
    score = metrics.reference_score(subset, rest, rule=metrics.ScoreRule(min_ess=0))
    assert score.passed, str(score)
