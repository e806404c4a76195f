"""adapters.sbibm: sbibm's observations, true parameters and reference posterior samples, read offline."""

import importlib.util

import numpy as np
import pytest

from adapters import sbibm

needs_sbibm = pytest.mark.skipif(
    importlib.util.find_spec("sbibm") is None, reason=f"sbibm is not installed ({sbibm.INSTALL_HINT})"
)


@needs_sbibm
@pytest.mark.parametrize("task", list(sbibm.TASKS))
@pytest.mark.parametrize("num_observation", [1, 10])
def test_files_load_with_the_task_shapes(task, num_observation):
    info = sbibm.TASKS[task]
    x = sbibm.observation(task, num_observation)
    theta = sbibm.true_parameters(task, num_observation)
    samples = sbibm.reference_samples(task, num_observation)
    assert x.shape == (info.dim_data,) and theta.shape == (info.dim_parameters,)
    assert samples.shape == (10_000, info.dim_parameters) and samples.dtype == np.float64
    assert np.all(np.isfinite(samples)) and len(np.unique(samples, axis=0)) == 10_000
    assert sbibm.parameter_names(task)[-1] == f"theta[{info.dim_parameters - 1}]"


@needs_sbibm
@pytest.mark.parametrize("num_observation", [1, 2])
def test_gaussian_linear_reference_is_the_exact_posterior(num_observation):
    # prior N(0, 0.1 I), x ~ N(theta, 0.1 I): the posterior is N(x / 2, 0.05 I); 10,000 exact draws
    x = sbibm.observation("gaussian_linear", num_observation)
    samples = sbibm.reference_samples("gaussian_linear", num_observation)
    z = (samples.mean(axis=0) - x / 2) / np.sqrt(0.05 / len(samples))
    assert np.all(np.abs(z) < 4.5), z
    variance = samples.var(axis=0, ddof=1)  # chi-square: sd of the variance estimate is 0.05 sqrt(2 / n)
    assert np.all(np.abs(variance - 0.05) < 4.5 * 0.05 * np.sqrt(2 / len(samples))), variance


@needs_sbibm
@pytest.mark.parametrize(("task", "bound"), [("two_moons", 1.0), ("gaussian_mixture", 10.0), ("slcp", 3.0)])
def test_uniform_prior_tasks_reference_samples_lie_in_the_prior_box(task, bound):
    samples = sbibm.reference_samples(task, 3)
    assert np.all(np.abs(samples) <= bound)
    assert np.all(np.abs(sbibm.true_parameters(task, 3)) <= bound)


@needs_sbibm
def test_cached_files_are_returned_as_copies():
    first = sbibm.reference_samples("two_moons", 1)
    first[:] = 0.0
    assert np.any(sbibm.reference_samples("two_moons", 1) != 0.0)


def test_unknown_task_and_observation_name_the_argument_and_the_choices():
    with pytest.raises(
        ValueError, match=r"task must be one of \['two_moons', 'gaussian_linear', .*'slcp'\], got 'sir'"
    ):
        sbibm.observation("sir", 1)
    for bad in (0, 11, "1", True, 1.0):
        with pytest.raises(ValueError, match=r"num_observation must be one of \[1, 2, .*10\]"):
            sbibm.reference_samples("slcp", bad)


def test_missing_sbibm_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sbibm" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps sbibm==1\.1\.0"):
        sbibm.observation("two_moons", 1)


def test_published_smcabc_column_covers_every_task_and_budget():
    assert set(sbibm.SBIBM_SMCABC_C2ST) == set(sbibm.TASKS)
    assert sbibm.SBIBM_SMCABC_C2ST["two_moons"] == {1_000: 0.92, 10_000: 0.71, 100_000: 0.66}
    assert sbibm.SBIBM_SMCABC_C2ST["slcp"][100_000] == 0.96
