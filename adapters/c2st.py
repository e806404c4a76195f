"""Classifier two-sample test (C2ST) as the sbibm benchmark defines it.

Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests" (ICLR 2017, arXiv:1610.06545); the
variant of Lueckmann et al., "Benchmarking Simulation-Based Inference" (AISTATS 2021, Sec. 2 and
App. M): a classifier is trained to tell samples ``X`` from samples ``Y`` and its held-out accuracy is
the score, 0.5 when the two sets come from one distribution and 1.0 when they do not overlap.  The
definition fixed by sbibm (``sbibm.metrics.c2st``), which this module follows so that scores compare
with sbibm's published numbers:

* both sets are z-scored with the mean and the standard deviation (``ddof=1``) of ``X`` (the
  reference), so one classifier set-up fits every task's scale;
* the classifier is scikit-learn's ``MLPClassifier``: ReLU, two hidden layers of ``10 * dim`` units,
  Adam, ``max_iter=10000``, ``random_state=seed``;
* the score is the mean accuracy over ``n_folds`` folds of a shuffled ``KFold(random_state=seed)`` of
  the pooled ``n_X + n_Y`` rows (labels 0 for ``X``, 1 for ``Y``).

Requires scikit-learn (``pip install scikit-learn``, or the project's ``abc`` extra).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from adapters.validation import check_positive_int


def _samples(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an array of numbers (n, dim), got {type(value).__name__}") from None
    if array.ndim == 1:
        array = array[:, None]  # one-dimensional samples
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected samples of shape (n, dim) with n, dim >= 1, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.all(np.isfinite(array), axis=1)))
        raise ValueError(f"{name}: every sample must be finite, got {bad} row(s) with NaN or inf")
    return array


def c2st(X: Any, Y: Any, seed: int = 1, n_folds: int = 5, z_score: bool = True) -> float:
    """sbibm's C2ST accuracy of samples ``X`` ``(n_X, dim)`` against samples ``Y`` ``(n_Y, dim)``.

    Args:
        X: the reference samples (their mean and standard deviation z-score both sets), ``(n_X, dim)``
            (a vector is read as ``(n_X, 1)``).
        Y: the samples to score, ``(n_Y, dim)``.
        seed: the seed of the classifier's initialisation and of the fold shuffle.
        n_folds: number of cross-validation folds (>= 2; each fold must hold at least one row).
        z_score: z-score both sets by ``X``'s mean and standard deviation first.

    Returns:
        The mean held-out accuracy over the folds: about 0.5 when ``X`` and ``Y`` come from the same
        distribution, up to 1.0 when the classifier separates them.  With ``n = n_X + n_Y`` pooled rows
        and equal distributions, its Monte Carlo standard deviation is about ``sqrt(0.25 / n)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n_folds = check_positive_int("n_folds", n_folds)
    if n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2 (cross-validation folds), got {n_folds!r}")
    if not isinstance(z_score, bool | np.bool_):
        raise TypeError(f"z_score must be True or False, got {z_score!r}")
    X, Y = _samples("X", X), _samples("Y", Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must have the same dimension, got X {X.shape} and Y {Y.shape}")
    if X.shape[0] + Y.shape[0] < n_folds:
        raise ValueError(
            f"n_folds ({n_folds}) must not exceed the number of pooled samples ({X.shape[0] + Y.shape[0]})"
        )
    try:
        from sklearn.model_selection import KFold
        from sklearn.neural_network import MLPClassifier
    except ImportError as error:
        raise ImportError(
            "c2st needs scikit-learn: pip install 'scikit-learn>=1.3' (or the project's extra: pip install "
            "'ppl-ext[abc]')"
        ) from error

    if z_score:
        mean = X.mean(axis=0)
        std = X.std(axis=0, ddof=1) if len(X) > 1 else np.zeros(X.shape[1])  # sbibm's torch.std is ddof=1
        if not np.all(std > 0):
            raise ValueError(
                f"X: z-scoring divides by X's standard deviation, which is 0 in column(s) "
                f"{np.flatnonzero(~(std > 0)).tolist()}; pass z_score=False or more varied reference samples"
            )
        X, Y = (X - mean) / std, (Y - mean) / std

    data = np.concatenate([X, Y])
    labels = np.concatenate([np.zeros(len(X)), np.ones(len(Y))])
    width = 10 * data.shape[1]
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=int(seed))
    accuracies = []
    for train, test in folds.split(data):
        # a fresh classifier per fold, initialised from the same seed (as cross-validation clones it)
        classifier = MLPClassifier(
            hidden_layer_sizes=(width, width),
            activation="relu",
            solver="adam",
            max_iter=10_000,
            random_state=int(seed),
        )
        classifier.fit(data[train], labels[train])
        accuracies.append(np.mean(classifier.predict(data[test]) == labels[test]))
    return float(np.mean(accuracies))


__all__ = ["c2st"]
