"""adapters.c2st: sbibm's classifier two-sample test (z-scored, 5-fold, scikit-learn MLP).

Tolerances are binomial: with ``n`` pooled rows, each classified once on a held-out fold, the
accuracy of a classifier with true accuracy ``p`` has standard deviation ``sqrt(p (1 - p) / n)``.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("sklearn", reason="c2st needs scikit-learn (pip install 'scikit-learn>=1.3')")

from adapters import sbibm  # noqa: E402
from adapters.c2st import c2st  # noqa: E402

N = 1000  # samples per set: 2000 pooled rows, binomial sd <= 0.0112


@pytest.fixture(scope="module")
def halves():
    """Two disjoint halves (N rows each) of sbibm's two-moons reference set, and their C2ST."""
    if importlib.util.find_spec("sbibm") is None:
        pytest.skip(f"sbibm is not installed ({sbibm.INSTALL_HINT})")
    samples = sbibm.reference_samples("two_moons", 1)
    samples = samples[np.random.default_rng(0).choice(len(samples), 2 * N, replace=False)]
    return samples[:N], samples[N:], c2st(samples[:N], samples[N:])


def test_two_halves_of_one_reference_set_score_one_half(halves):
    score = halves[2]
    assert abs(score - 0.5) < 4 * np.sqrt(0.25 / (2 * N)), score


def test_disjoint_sets_score_one(halves):
    X, Y, _ = halves
    shifted = Y[:300] + np.array([3.0, 0.0])  # the moons span about 1.6 in the first coordinate
    assert c2st(X[:300], shifted) > 0.99


def test_z_scoring_uses_the_reference_mean_and_sd(halves):
    X, Y, score = halves
    # both sets standardised by X's mean and sd (ddof=1, as torch.std), then classified as they are
    mean, sd = X.mean(axis=0), X.std(axis=0, ddof=1)
    assert c2st((X - mean) / sd, (Y - mean) / sd, z_score=False) == score


def test_equals_sbibm_c2st_on_the_same_data(halves):
    import torch

    X, Y, score = halves
    theirs = float(_sbibm_c2st()(torch.as_tensor(X), torch.as_tensor(Y), seed=1)[0])
    assert score == pytest.approx(theirs, abs=1e-6)


@pytest.mark.slow
def test_accuracy_matches_the_bayes_classifier_of_two_gaussians():
    # N(0, 1) against N(1, 1), equal sizes: the best classifier thresholds at 1/2, accuracy Phi(1/2)
    rng = np.random.default_rng(1)
    n = 2000
    X, Y = rng.normal(0.0, 1.0, (n, 1)), rng.normal(1.0, 1.0, (n, 1))
    bayes = stats.norm.cdf(0.5)
    sd = np.sqrt(bayes * (1 - bayes) / (2 * n))
    score = c2st(X, Y)
    # a fitted classifier cannot beat the Bayes rule beyond MC error; an MLP comes within 0.02 of it
    assert bayes - 0.02 - 4 * sd < score < bayes + 4 * sd, (score, bayes)


def _sbibm_c2st():
    spec = importlib.util.find_spec("sbibm")
    pytest.importorskip("torch", reason="sbibm's own c2st takes torch tensors")
    # sbibm.metrics' __init__ imports metrics that need sbibm's heavy dependencies: load c2st.py alone
    path = Path(next(iter(spec.submodule_search_locations))) / "metrics" / "c2st.py"
    module_spec = importlib.util.spec_from_file_location("sbibm_metrics_c2st", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.c2st


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"X": np.zeros((10, 2, 2))}, ValueError, r"X: expected samples of shape \(n, dim\)"),
        ({"Y": np.ones((10, 3))}, ValueError, r"X and Y must have the same dimension"),
        ({"Y": np.full((10, 2), np.nan)}, ValueError, r"Y: every sample must be finite, got 10 row"),
        ({"X": "abc"}, TypeError, r"X: expected an array of numbers"),
        ({"n_folds": 1}, ValueError, r"n_folds must be an integer >= 2"),
        ({"n_folds": 2.5}, ValueError, r"n_folds must be a positive integer"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative integer"),
        ({"z_score": "yes"}, TypeError, r"z_score must be True or False"),
        ({"X": np.ones((10, 2))}, ValueError, r"X: z-scoring divides by X's standard deviation, which is 0"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    rng = np.random.default_rng(0)
    args = {"X": rng.normal(size=(10, 2)), "Y": rng.normal(size=(10, 2))} | kwargs
    with pytest.raises(error, match=match):
        c2st(**args)
