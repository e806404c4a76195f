"""What the sbibm task tests of both backends share: sbibm's own torch tasks (or a skip), and a
two-sample check that our simulations and sbibm's have the same distribution."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from adapters.sbibm import INSTALL_HINT

KS_P_MIN = 1e-3  # per statistic, at fixed seeds
Z_MAX = 5.0  # Monte Carlo standard errors allowed for a mean or a covariance entry


def sbibm_reference_task(name: str):
    """sbibm's own task object (torch), or a skip that says how to install sbibm."""
    try:
        from sbibm.tasks import get_task
    except ImportError as error:
        pytest.skip(f"sbibm is not importable ({error}); install it with `{INSTALL_HINT}`")
    return get_task(name)


def summaries(x: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar statistics of simulations ``(n, d)``: each coordinate, their sum and the Euclidean norm
    (the last two see the joint law, e.g. two moons' crescent and the mixture's shared component)."""
    out = {f"x[{i}]": x[:, i] for i in range(x.shape[1])}
    out["sum"] = x.sum(axis=1)
    out["norm"] = np.linalg.norm(x, axis=1)
    return out


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray, label: str) -> dict[str, float]:
    """Simulations ``(n, d)`` of one ``theta`` from two simulators have the same law: a KS test per
    statistic (p > 1e-3), and means and covariances within ``Z_MAX`` Monte Carlo standard errors (the
    standard error of a covariance entry from the variance of the products of centred coordinates).
    Returns the smallest KS p-value."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{label}: shapes {ours.shape} vs {theirs.shape}"
    n = ours.shape[0]
    p_values = {}
    for name, a in summaries(ours).items():
        p_values[name] = stats.ks_2samp(a, summaries(theirs)[name]).pvalue
        assert p_values[name] > KS_P_MIN, f"{label}: KS test of {name} rejects (p = {p_values[name]:.2e})"
    se_mean = np.sqrt((ours.var(axis=0, ddof=1) + theirs.var(axis=0, ddof=1)) / n)
    z_mean = (ours.mean(axis=0) - theirs.mean(axis=0)) / se_mean
    assert np.all(np.abs(z_mean) < Z_MAX), f"{label}: means differ, z = {np.round(z_mean, 2)}"

    def products(x):
        centred = x - x.mean(axis=0)
        return centred[:, :, None] * centred[:, None, :]

    pa, pb = products(ours), products(theirs)
    se_cov = np.sqrt((pa.var(axis=0, ddof=1) + pb.var(axis=0, ddof=1)) / n)
    z_cov = (pa.mean(axis=0) - pb.mean(axis=0)) / np.maximum(se_cov, 1e-300)
    assert np.all(np.abs(z_cov) < Z_MAX), f"{label}: covariances differ, max |z| = {np.abs(z_cov).max():.2f}"
    return {"min_ks_p": min(p_values.values()), "max_z_mean": float(np.abs(z_mean).max())}
