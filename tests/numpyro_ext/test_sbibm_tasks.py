"""numpyro_ext.models.sbibm_tasks: JAX priors and simulators against sbibm's own torch tasks.

Same distribution of simulations at fixed parameters (KS per statistic, means and covariances within
Monte Carlo error, :mod:`tests.sbibm_checks`), the same prior densities, and the problem built from
sbibm's observation files.
"""

import importlib.util

import numpy as np
import pytest

pytest.importorskip("jax", reason="the numpyro extra is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from adapters import sbibm as sbibm_files  # noqa: E402
from numpyro_ext.models import sbibm_tasks  # noqa: E402
from tests.sbibm_checks import assert_same_distribution, sbibm_reference_task  # noqa: E402

NUM_SIMULATIONS = 4000


def _sbibm_simulations(task, theta: np.ndarray, seed: int) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    batch = torch.as_tensor(np.tile(theta, (NUM_SIMULATIONS, 1)))
    return task.get_simulator()(batch).double().numpy()


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_simulator_matches_sbibms_in_distribution(name):
    reference = sbibm_reference_task(name)
    ours = sbibm_tasks.sbibm_task(name)
    simulate = jax.jit(jax.vmap(ours.simulator))
    for num_observation in (1, 2):
        theta = sbibm_files.true_parameters(name, num_observation)
        keys = jax.random.split(jax.random.PRNGKey(num_observation), NUM_SIMULATIONS)
        x = np.asarray(simulate(jnp.tile(jnp.asarray(theta), (NUM_SIMULATIONS, 1)), keys))
        assert x.shape == (NUM_SIMULATIONS, ours.dim_data)
        assert_same_distribution(
            x, _sbibm_simulations(reference, theta, num_observation), f"{name} obs {num_observation}"
        )


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_prior_matches_sbibms(name):
    import torch

    reference = sbibm_reference_task(name)
    prior = sbibm_tasks.sbibm_task(name).prior
    points = sbibm_files.reference_samples(name, 1)[:500]  # inside every prior's support

    @jax.jit
    def log_prob_and_draws(points, key):
        return prior.log_prob(points), prior.sample(key, (20_000,))

    log_prob, draws = (np.asarray(v) for v in log_prob_and_draws(jnp.asarray(points), jax.random.PRNGKey(0)))
    theirs = reference.get_prior_dist()
    np.testing.assert_allclose(
        log_prob, theirs.log_prob(torch.as_tensor(points)).double().numpy(), rtol=1e-5, atol=1e-5
    )
    mean, variance = theirs.mean.double().numpy(), theirs.variance.double().numpy()
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4.5 * np.sqrt(variance / len(draws)))
    # the sd of a variance estimate is sqrt((m4 - var^2) / n) <= var sqrt(2 / n) for the uniform and Gaussian priors
    assert np.all(np.abs(draws.var(axis=0) - variance) < 4.5 * variance * np.sqrt(2 / len(draws)))


@pytest.mark.parametrize("name", sbibm_tasks.TASKS)
def test_problem_holds_the_observation_and_round_trips_the_true_parameters(name):
    if importlib.util.find_spec("sbibm") is None:
        pytest.skip(f"sbibm is not installed ({sbibm_files.INSTALL_HINT})")
    problem = sbibm_tasks.sbibm_problem(name, 3)
    info = sbibm_files.TASKS[name]
    assert (problem.dim, problem.stat_dim) == (info.dim_parameters, info.dim_data)
    np.testing.assert_allclose(problem.observed, sbibm_files.observation(name, 3))
    assert problem.names == sbibm_files.parameter_names(name)
    theta = sbibm_files.true_parameters(name, 3)
    np.testing.assert_allclose(
        np.asarray(problem.flat_theta(problem.unconstrain(jnp.asarray(theta)))), theta, atol=1e-10
    )
    assert sbibm_tasks.reference_samples(name, 3).shape == (10_000, info.dim_parameters)


@pytest.mark.parametrize("name", ["two_moons", "slcp"])
def test_simulators_are_differentiable_with_common_random_numbers(name):
    task = sbibm_tasks.sbibm_task(name)
    key = jax.random.PRNGKey(7)
    theta = jnp.asarray([0.3, -0.2, 1.1, -0.7, 0.4][: task.dim_parameters], dtype=jnp.float64)
    h = 1e-6

    @jax.jit
    def check(theta):
        steps = h * jnp.eye(len(theta))
        central = jax.vmap(lambda e: task.simulator(theta + e, key) - task.simulator(theta - e, key))(steps)
        return (
            task.simulator(theta, key),
            task.simulator(theta, key),
            jax.jacfwd(task.simulator)(theta, key),
            central.T / (2 * h),
        )

    first, again, jacobian, finite_differences = check(theta)
    np.testing.assert_array_equal(first, again)  # the same key, the same simulation
    np.testing.assert_allclose(jacobian, finite_differences, rtol=1e-6, atol=1e-7)
    assert jax.eval_shape(task.simulator, theta.astype(jnp.float32), key).dtype == jnp.float32


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"theta: the slcp simulator takes one parameter vector of shape \(5,\)"):
        sbibm_tasks.slcp_simulator(jnp.zeros((3, 5)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"task must be one of \['two_moons'"):
        sbibm_tasks.sbibm_task("lotka_volterra")
    with pytest.raises(ValueError, match=r"num_observation must be one of"):
        sbibm_tasks.sbibm_problem("two_moons", 0)
