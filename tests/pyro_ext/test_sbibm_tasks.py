"""pyro_ext.models.sbibm_tasks: torch priors and batched simulators against sbibm's own tasks.

Same distribution of simulations at fixed parameters (KS per statistic, means and covariances within
Monte Carlo error, :mod:`tests.sbibm_checks`), the same prior densities, common random numbers through
the generator, and the problem built from sbibm's observation files.
"""

import importlib.util

import numpy as np
import pytest

pytest.importorskip("torch", reason="the pyro extra is not installed")

import torch  # noqa: E402

from adapters import sbibm as sbibm_files  # noqa: E402
from pyro_ext.models import sbibm_tasks  # noqa: E402
from tests.sbibm_checks import assert_same_distribution, sbibm_reference_task  # noqa: E402

NUM_SIMULATIONS = 4000


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_simulator_matches_sbibms_in_distribution(name):
    reference = sbibm_reference_task(name)
    ours = sbibm_tasks.sbibm_task(name)
    for num_observation in (1, 2):
        theta = torch.as_tensor(sbibm_files.true_parameters(name, num_observation)).expand(NUM_SIMULATIONS, -1)
        x = ours.simulator(theta, torch.Generator().manual_seed(num_observation))
        assert x.shape == (NUM_SIMULATIONS, ours.dim_data) and x.dtype == theta.dtype
        torch.manual_seed(100 + num_observation)
        theirs = reference.get_simulator()(theta.clone()).double().numpy()
        assert_same_distribution(x.numpy(), theirs, f"{name} obs {num_observation}")


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_prior_matches_sbibms(name):
    reference = sbibm_reference_task(name)
    prior = sbibm_tasks.sbibm_task(name).prior
    points = torch.as_tensor(sbibm_files.reference_samples(name, 1)[:500])  # inside every prior's support
    theirs = reference.get_prior_dist().log_prob(points).double()
    torch.testing.assert_close(prior.log_prob(points).double(), theirs, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    draws = prior.sample((20_000,)).double().numpy()
    mean = reference.get_prior_dist().mean.double().numpy()
    variance = reference.get_prior_dist().variance.double().numpy()
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4.5 * np.sqrt(variance / len(draws)))
    assert np.all(np.abs(draws.var(axis=0) - variance) < 4.5 * variance * np.sqrt(2 / len(draws)))


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_common_random_numbers_batches_and_single_vectors(name):
    task = sbibm_tasks.sbibm_task(name)
    theta = task.prior.sample((5,))
    first = task.simulator(theta, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(first.numpy(), task.simulator(theta, torch.Generator().manual_seed(3)).numpy())
    assert not torch.equal(first, task.simulator(theta, torch.Generator().manual_seed(4)))
    assert task.simulator(theta[0], torch.Generator().manual_seed(3)).shape == (task.dim_data,)
    assert task.simulator(theta.float(), torch.Generator().manual_seed(3)).dtype == torch.float32


def test_slcp_simulator_is_differentiable():
    theta = torch.tensor([[0.3, -0.2, 1.1, -0.7, 0.4]], dtype=torch.float64, requires_grad=True)

    def simulate(t):
        return sbibm_tasks.slcp_simulator(t, torch.Generator().manual_seed(7))

    assert torch.autograd.gradcheck(simulate, (theta,))


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_problem_holds_the_observation(name):
    if importlib.util.find_spec("sbibm") is None:
        pytest.skip(f"sbibm is not installed ({sbibm_files.INSTALL_HINT})")
    problem = sbibm_tasks.sbibm_problem(name, 3)
    info = sbibm_files.TASKS[name]
    assert (problem.dim, problem.stat_dim) == (info.dim_parameters, info.dim_data)
    np.testing.assert_allclose(problem.observed, sbibm_files.observation(name, 3))
    theta = torch.as_tensor(sbibm_files.true_parameters(name, 3))[None]
    torch.testing.assert_close(problem.flat_theta(problem.unconstrain(theta)), theta)
    assert sbibm_tasks.reference_samples(name, 3).shape == (10_000, info.dim_parameters)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"theta: the two_moons simulator takes parameters of shape \(n, 2\)"):
        sbibm_tasks.two_moons_simulator(torch.zeros(4, 3), None)
    with pytest.raises(ValueError, match=r"task must be one of \['two_moons'"):
        sbibm_tasks.sbibm_task("sir")
