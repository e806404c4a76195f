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
    with pytest.raises(ValueError, match="num_grad_evals must be a finite number > 0, got 0"):
        metrics.ess_per_grad({"iid": iid}, 0)


@pytest.fixture(scope="module")
def eight_schools():
    return posteriordb.load("eight_schools-eight_schools_noncentered", EMBEDDED_PATH).reference_draws


def test_reference_against_itself_scores_zero(eight_schools):
    score = metrics.reference_score(eight_schools, eight_schools, positive=("tau",))
    assert score.passed and score.failed == []
    assert score.max("z_mean") == 0 and score.max("log_sd") == 0 and score.max_quantile == 0
    names = [p.name for p in score.parameters]
    assert "log(tau)" in names and "log(mu)" not in names  # log scale only for positive parameters
    assert score.verdict().startswith("PASS: max z_mean 0.000 < 0.15 (worst ")
    assert score.verdict().endswith(f" >= 400 (worst {score.min_ess_parameter})")


def test_verdict_names_the_failed_criteria_and_every_threshold(eight_schools):
    """Only ESS fails: the verdict says so first, with its threshold, then the criteria that hold."""
    # 1 chain x 350 draws of the (near-independent) reference: every error small, bulk ESS < 400
    few = {k: v[:1, :350] for k, v in eight_schools.items()}
    score = metrics.reference_score(few, eight_schools)
    assert [c.name for c in score.failed] == ["min_ess"] and score.summary()["failed"] == ["min_ess"]
    by_name = {c.name: c for c in score.criteria}
    assert [c.threshold for c in score.criteria] == [0.15, 0.2, 0.4, 400.0]
    assert by_name["min_ess"].value == score.min_ess < 400 and not by_name["min_ess"].passed
    ess = metrics.ess({k: few[k] for k in eight_schools})
    assert score.min_ess_parameter == min(ess, key=ess.get)
    z, log_sd, q = (by_name[k] for k in ("max_z_mean", "max_log_sd", "max_quantile"))
    assert z.worst == score.worst("z_mean").name and q.worst == score.worst("quantile").name
    expected = (
        f"FAIL: min bulk ESS {score.min_ess:.0f} (worst {score.min_ess_parameter}), needs >= 400; passed: "
        f"max z_mean {z.value:.3f} < 0.15 (worst {z.worst}), max |log sd ratio| {log_sd.value:.3f} < 0.2 "
        f"(worst {log_sd.worst}), max quantile error {q.value:.3f} < 0.4 (worst {q.worst})"
    )
    assert score.verdict() == expected and str(score).splitlines()[-1] == expected
    assert score.to_dict()["criteria"][3] == {
        "name": "min_ess",
        "value": score.min_ess,
        "threshold": 400.0,
        "passed": False,
        "worst": score.min_ess_parameter,
    }


def test_verdict_lists_each_failed_criterion(eight_schools):
    ref = eight_schools
    sd = ref["mu"].std()
    score = metrics.reference_score(dict(ref, mu=ref["mu"] + 0.5 * sd), ref)  # z_mean and quantiles 0.5
    assert [c.name for c in score.failed] == ["max_z_mean", "max_quantile"]
    assert score.verdict().startswith(
        "FAIL: max z_mean 0.500 (worst mu), needs < 0.15; max quantile error 0.500 (worst mu), needs < 0.4; "
        "passed: max |log sd ratio| 0.000 < 0.2"
    )


def test_log_rows_follow_the_constraints_not_the_signs_of_the_draws():
    """blr's coefficients are positive in every reference draw, but only sigma is declared positive."""
    post = posteriordb.load("sblrc-blr", EMBEDDED_PATH)
    ref = post.reference_draws
    assert all(np.all(ref[f"beta[{i}]"] > 0) for i in range(1, 6))
    assert post.positive == ("sigma",)
    expected = [*(f"beta[{i}]" for i in range(1, 6)), "sigma", "log(sigma)"]
    assert [p.name for p in metrics.reference_score(ref, post).parameters] == expected
    assert [p.name for p in metrics.reference_score(ref, ref, positive=["sigma"]).parameters] == expected
    assert [p.name for p in metrics.reference_score(ref, ref).parameters] == expected[:-1]
    # a base name covers every coordinate; a full name only its own
    rows = metrics.reference_score(ref, ref, positive=["beta"]).parameters
    assert [p.name for p in rows if p.name.startswith("log")] == [f"log(beta[{i}])" for i in range(1, 6)]
    rows = metrics.reference_score(ref, ref, positive=["beta[2]"]).parameters
    assert [p.name for p in rows if p.name.startswith("log")] == ["log(beta[2])"]


def test_a_positive_parameter_with_a_draw_below_zero_fails(eight_schools):
    ref = eight_schools
    bad = dict(ref, tau=np.where(np.arange(ref["tau"].size).reshape(ref["tau"].shape) == 0, -1.0, ref["tau"]))
    score = metrics.reference_score(bad, ref, positive=("tau",))
    log_tau = next(p for p in score.parameters if p.name == "log(tau)")
    assert log_tau.z_mean == np.inf and [c.name for c in score.failed] == ["max_z_mean", "max_log_sd", "max_quantile"]


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
    score = metrics.reference_score(biased, ref, positive=("tau",))
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
    post = posteriordb.load(name, EMBEDDED_PATH)
    ref = post.reference_draws
    rng = np.random.default_rng(2024)
    order = rng.permutation(10000)
    subset = {k: v.ravel()[order[:400]].reshape(4, 100) for k, v in ref.items()}
    rest = {k: v.ravel()[order[400:]].reshape(1, -1) for k, v in ref.items()}
    # min_ess=0: the ESS estimate of 400 independent draws itself scatters (290-400)
    score = metrics.reference_score(subset, rest, rule=metrics.ScoreRule(min_ess=0), positive=post.positive)
    assert score.passed, str(score)


def test_bad_input_names_the_argument(eight_schools):
    ref = eight_schools
    with pytest.raises(TypeError, match="samples must be a mapping"):
        metrics.flatten_draws([np.zeros((2, 5))])
    with pytest.raises(TypeError, match=r"samples\['mu'\] must be an array of numbers"):
        metrics.flatten_draws({"mu": "abc"})
    with pytest.raises(ValueError, match="method must be one of"):
        metrics.ess(ref, method="median")
    with pytest.raises(ValueError, match=r"draws\['mu'\] must have shape \(chains, draws\), got \(5,\)"):
        metrics.ess({"mu": np.zeros(5)})
    with pytest.raises(ValueError, match="num_grad_evals must be a finite number > 0, got '10'"):
        metrics.ess_per_grad(ref, "10")
    with pytest.raises(TypeError, match=r"draws\['tau'\] must be an array of numbers"):
        metrics.reference_score(dict(ref, tau="x"), ref)
    with pytest.raises(TypeError, match="reference must be a mapping"):
        metrics.reference_score(ref, [1.0])
    with pytest.raises(TypeError, match="rule must be a metrics.ScoreRule"):
        metrics.reference_score(ref, ref, rule={"min_ess": 0})
    with pytest.raises(ValueError, match=r"ScoreRule.max_z_mean must be a number >= 0, got -0.1"):
        metrics.ScoreRule(max_z_mean=-0.1)
    with pytest.raises(TypeError, match="positive must be a collection of parameter names"):
        metrics.reference_score(ref, ref, positive="tau")
    with pytest.raises(ValueError, match=r"positive names \['sigma'\] that are not reference parameters"):
        metrics.reference_score(ref, ref, positive=["tau", "sigma"])
