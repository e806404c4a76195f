"""Optimization Monte Carlo (NumPyro) against exact posteriors.

* exponential-gamma toy (issue 21): ``lambda* = mean(E_i) / y`` per seed; the Jacobian weights give the
  exact Gamma(500.1, 5043.47) posterior, the prior alone gives Gamma(499.1, 5043.47): on the same draws
  (common random numbers) the two means differ by ``1 / rate`` (2000 seeds), and at 20000 seeds (slow)
  the gap is 6 standard errors of each mean against its exact value;
* Gaussian means in D = 3: a linear simulator with d = 5 > D (closed form), and d = D = 3 through a
  nonlinear map (``arcsinh``) where ``det J^T J`` varies with ``theta`` and dropping it is visibly wrong;
* finite differences against autodiff, the residual threshold on unreachable observations, NaN
  simulations, bad input, the store and chunking, and the Dask engine (bit-identical numbers).

Default: the toy at 2000 seeds, the nonlinear D = 3 mean, NaN counting, bad input, the store and an
in-process executor (their compile time is most of their cost: the store test reuses the D = 3 test's
program); the rest is ``slow``.

Tolerances: 4 Monte Carlo standard errors from the weights' ESS (``sd / sqrt(ESS)`` for a mean,
``sd / sqrt(2 ESS)`` for a standard deviation), fixed seeds.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from adapters.diagnostics import ReliabilityWarning
from adapters.sweep import SerialExecutor
from numpyro_ext.infer.abc.omc import OMC
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem

Y_EXP = 10.086749290513298
RATE_EXP = 0.1 + 500 * Y_EXP  # the exact posterior is Gamma(500.1, RATE_EXP) = Gamma(500.1, 5043.47)


def weighted_moments(x: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ x
    sd = np.sqrt(w @ (x - mean) ** 2)
    return mean, sd, float(1.0 / np.sum(w**2))


# ---- problems (module level: the Dask workers import them by name) ----------------------
def exponential_mean(rate, key):
    """The mean of 500 Exponential(rate) draws."""
    return jnp.mean(jax.random.exponential(key, (500,))) / rate


A_TALL = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -0.7], [0.3, 0.0, 1.2], [1.0, 1.0, 1.0], [-0.5, 0.8, 0.2]])
NOISE_TALL = 0.8  # isotropic: x = A theta + NOISE_TALL * mean of 10 standard normals (d = 5)


def linear_tall(theta, key):
    return jnp.asarray(A_TALL) @ theta + NOISE_TALL * jnp.mean(jax.random.normal(key, (10, 5)), axis=0)


A_SQUARE = np.array([[1.0, 0.4, -0.3], [0.2, 0.8, 0.5], [-0.6, 0.1, 1.1]])
L_SQUARE = np.array([[0.5, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.2, 0.1, 0.3]])  # noise covariance L L^T


class _Sinh(Transform):
    """theta = sinh(phi), elementwise: the prior of phi = arcsinh(theta) is Gaussian."""

    domain = constraints.real
    codomain = constraints.real

    def __call__(self, x):
        return jnp.sinh(x)

    def _inverse(self, y):
        return jnp.arcsinh(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return jnp.log(jnp.cosh(x))


def sinh_prior():
    return dist.TransformedDistribution(dist.Normal(0.0, 2.0).expand([3]), _Sinh()).to_event(1)


def arcsinh_linear(theta, key):
    """``A arcsinh(theta) + L z``: linear in phi = arcsinh(theta), nonlinear in theta (J depends on theta)."""
    return jnp.asarray(A_SQUARE) @ jnp.arcsinh(theta) + jnp.asarray(L_SQUARE) @ jax.random.normal(key, (3,))


def tanh_noisy(theta, key):
    """``tanh(theta) + 0.5 e``: y = 0.8 is out of reach when 0.8 - 0.5 e is outside (-1, 1)."""
    return jnp.tanh(theta) + 0.5 * jax.random.normal(key, ())


def nan_for_some_seeds(theta, key):
    """``theta + e``, NaN for every theta when e > 1 (those seeds cannot be simulated at all)."""
    e = jax.random.normal(key, ())
    return jnp.where(e > 1.0, jnp.nan, theta + e)


def gaussian_posterior(prior_var: float, a: np.ndarray, noise_cov: np.ndarray, y: np.ndarray):
    precision = np.eye(a.shape[1]) / prior_var + a.T @ np.linalg.solve(noise_cov, a)
    cov = np.linalg.inv(precision)
    return cov @ a.T @ np.linalg.solve(noise_cov, y), cov


def check_exponential_gamma(num_seeds: int, seed: int) -> None:
    """The toy against Gamma(500.1, 5043.47), with the Jacobian; the prior-only weights against Gamma(499.1, ...)."""
    problem = LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), exponential_mean, Y_EXP)
    result = OMC(problem, num_seeds=num_seeds).run(jax.random.PRNGKey(seed))
    info = result.info
    # no warning at all: every seed's simulations stay finite (the trust region keeps the steps where
    # exp(u) is representable) and a start far in the prior's tail (lambda_0 < 1e-40: log(lambda) climbs
    # by about 1 per step) is rare enough to finish within num_steps
    assert not result.warnings and result.num_nan_simulations == 0
    assert info["num_discarded"] <= 5 * num_seeds / 20000
    lam = result.theta[:, 0]
    # each seed hits the observation, and in u = log(lambda) the Jacobian is d x / d u = -x = -y there
    assert np.max(info["residual_norm"]) < 1e-9 * Y_EXP
    np.testing.assert_allclose(info["half_log_det"], math.log(Y_EXP), rtol=1e-9)
    mean, sd, ess = weighted_moments(lam, result.log_weights)
    assert ess > 0.99 * len(lam)
    exact_mean, exact_sd = 500.1 / RATE_EXP, math.sqrt(500.1) / RATE_EXP
    assert abs(exact_mean - 0.099158) < 1e-6 and abs(exact_sd - 0.004434) < 1e-6
    assert abs(mean - exact_mean) < 4 * exact_sd / math.sqrt(ess)
    assert abs(sd - exact_sd) < 4 * exact_sd / math.sqrt(2 * ess)
    np.testing.assert_allclose(result.mean(), [mean]) and np.testing.assert_allclose(result.std(), [sd])
    # without the Jacobian (the prior of lambda alone) the draws follow Gamma(499.1, rate) instead
    log_prior = np.asarray(dist.Gamma(0.1, 0.1).log_prob(jnp.asarray(lam)))
    mean_no_jac, _, ess_no_jac = weighted_moments(lam, log_prior)
    standard_error = exact_sd / math.sqrt(ess_no_jac)
    assert abs(mean_no_jac - 499.1 / RATE_EXP) < 4 * standard_error
    # common random numbers: the two estimates differ by 1 / rate (the posteriors' gap), to the relative
    # error of a variance estimate, sqrt(2 / ESS), whatever the Monte Carlo error of each mean
    np.testing.assert_allclose(mean - mean_no_jac, 1.0 / RATE_EXP, rtol=4 * math.sqrt(2 / ess))
    assert result.num_simulations == int(np.sum(info["num_iterations"] + 1))
    assert len(lam) == num_seeds - info["num_discarded"]
    return ess, standard_error


def test_exponential_gamma_exact_with_the_jacobian_and_not_without():
    check_exponential_gamma(2000, seed=0)


@pytest.mark.slow
def test_exponential_gamma_exact_with_the_jacobian_and_not_without_slow():
    _, standard_error = check_exponential_gamma(20000, seed=0)
    # at this size each mean alone tells the two posteriors apart
    assert (500.1 - 499.1) / RATE_EXP > 6 * standard_error


@pytest.fixture(scope="module")
def tall():
    y = np.array([1.0, -0.5, 2.0, 1.5, 0.3])
    problem = LikelihoodFreeProblem(dist.Normal(0.0, 2.0).expand([3]).to_event(1), linear_tall, y)
    return problem, y


@pytest.fixture(scope="module")
def square():
    y = np.array([2.0, 1.5, -1.0])
    return LikelihoodFreeProblem(sinh_prior(), arcsinh_linear, y), y


def test_nonlinear_D3_gaussian_mean_needs_the_jacobian(square):
    """d = D = 3 through arcsinh: the posterior of phi = arcsinh(theta) is Gaussian (closed form), and
    det J^T J varies with theta, so the prior alone is visibly wrong."""
    problem, y = square
    result = OMC(problem, num_seeds=2000).run(jax.random.PRNGKey(2))
    info = result.info
    assert info["num_discarded"] == 0 and not result.warnings
    phi = np.arcsinh(result.theta)
    exact_mean, cov = gaussian_posterior(4.0, A_SQUARE, L_SQUARE @ L_SQUARE.T, y)
    exact_sd = np.sqrt(np.diag(cov))
    mean, sd, ess = weighted_moments(phi, result.log_weights)
    assert ess > 250
    np.testing.assert_array_less(np.abs(mean - exact_mean), 4 * exact_sd / math.sqrt(ess))
    np.testing.assert_array_less(np.abs(sd - exact_sd), 4 * exact_sd / math.sqrt(2 * ess))
    # E[theta_j] = sinh(m_j) exp(P_jj / 2) under the Gaussian posterior of phi
    theta_mean, theta_sd, _ = weighted_moments(result.theta, result.log_weights)
    exact_theta = np.sinh(exact_mean) * np.exp(np.diag(cov) / 2)
    np.testing.assert_array_less(np.abs(theta_mean - exact_theta), 4 * theta_sd / math.sqrt(ess))
    # det J^T J varies with theta here: the prior alone weights the draws towards 0
    mean_no_jac, _, ess_no_jac = weighted_moments(phi, info["log_prior"])
    assert np.max(np.abs(mean_no_jac - exact_mean) / (exact_sd / math.sqrt(ess_no_jac))) > 6


@pytest.mark.slow
def test_finite_differences_agree_with_autodiff(square):
    problem, _ = square
    ad = OMC(problem, num_seeds=256).run(jax.random.PRNGKey(2))
    fd = OMC(problem, num_seeds=256, gradients="finite_differences").run(jax.random.PRNGKey(2))
    # the same seeds reach the same solutions, J to O(h^2), 1 + 2D simulations per evaluation
    np.testing.assert_allclose(fd.info["u"], ad.info["u"], atol=1e-8)
    np.testing.assert_allclose(fd.info["half_log_det"], ad.info["half_log_det"], atol=1e-7)
    assert fd.num_simulations == 7 * int(np.sum(fd.info["num_iterations"] + 1))


@pytest.mark.slow
def test_gaussian_mean_d5_D3_closed_form(tall):
    problem, y = tall
    result = OMC(problem, num_seeds=3000).run(jax.random.PRNGKey(1))
    assert math.isinf(result.info["residual_threshold"]) and result.info["num_discarded"] == 0
    exact_mean, cov = gaussian_posterior(4.0, A_TALL, NOISE_TALL**2 / 10 * np.eye(5), y)
    exact_sd = np.sqrt(np.diag(cov))
    mean, sd, ess = weighted_moments(result.theta, result.log_weights)
    assert ess > 1000
    np.testing.assert_array_less(np.abs(mean - exact_mean), 4 * exact_sd / math.sqrt(ess))
    np.testing.assert_array_less(np.abs(sd - exact_sd), 4 * exact_sd / math.sqrt(2 * ess))
    # d > D: the solution is the least-squares one, its residual orthogonal to the columns of A
    np.testing.assert_allclose(result.info["residuals"] @ A_TALL, 0.0, atol=1e-9)


@pytest.mark.slow
def test_residual_threshold_discards_unreachable_observations():
    """``tanh(theta) + 0.5 e = 0.8`` has a solution iff ``|0.8 - 0.5 e| < 1``: exactly the seeds without
    one are discarded (the trust region keeps a reachable seed out of tanh's flat tails, where a
    Gauss-Newton step of ``|r| / |J|`` would strand it), and the kept ones give the exact posterior."""
    y, scale = 0.8, 0.5
    problem = LikelihoodFreeProblem(dist.Normal(0.0, 1.0), tanh_noisy, y)
    with pytest.warns(ReliabilityWarning, match="discarded"):
        result = OMC(problem, num_seeds=2000, residual_threshold=1e-6).run(jax.random.PRNGKey(3))
    info = result.info
    theta = info["u"][:, 0]
    noise = (info["residuals"][:, 0] + y - np.tanh(theta)) / scale  # each seed's e, from its end point
    target = y - scale * noise  # tanh(theta*) must equal this
    clear = np.abs(np.abs(target) - 1.0) > 1e-4
    unreachable = np.abs(target) >= 1.0
    np.testing.assert_array_equal(~info["kept"][clear], unreachable[clear])
    assert info["num_discarded"] == info["num_above_threshold"] + info["num_singular"] + info["num_nonfinite"]
    assert abs(unreachable.mean() - 0.3447) < 4 * math.sqrt(0.3447 * 0.6553 / 2000)
    # the kept seeds give the exact posterior N(theta; 0, 1) N(y; tanh(theta), 0.25) (quadrature)
    grid = np.linspace(-12.0, 12.0, 48001)
    log_post = -0.5 * grid**2 - 0.5 * ((y - np.tanh(grid)) / scale) ** 2
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    exact_mean = post @ grid
    exact_sd = math.sqrt(post @ (grid - exact_mean) ** 2)
    mean, sd, ess = weighted_moments(result.theta[:, 0], result.log_weights)
    assert abs(mean - exact_mean) < 4 * exact_sd / math.sqrt(ess)
    assert abs(sd - exact_sd) < 4 * exact_sd / math.sqrt(2 * ess)


def test_nan_simulations_are_counted_and_discarded():
    problem = LikelihoodFreeProblem(dist.Normal(0.0, 1.0), nan_for_some_seeds, 0.5)
    with pytest.warns(ReliabilityWarning) as record:
        result = OMC(problem, num_seeds=1000).run(jax.random.PRNGKey(4))
    messages = " ".join(str(w.message) for w in record)
    assert "non-finite" in messages and "discarded" in messages
    info = result.info
    # a seed whose simulations are all NaN stops after its first evaluation
    assert result.num_nan_simulations == info["num_nonfinite"] == info["num_discarded"]
    assert np.all(info["num_iterations"][~info["kept"]] == 0)
    p = 1.0 - 0.8413447460685429  # P(e > 1)
    assert abs(info["num_nonfinite"] / 1000 - p) < 4 * math.sqrt(p * (1 - p) / 1000)
    assert result.num_simulations == int(np.sum(info["num_iterations"] + 1))
    assert np.all(np.isfinite(result.theta)) and len(result.theta) == 1000 - info["num_discarded"]
    # x = theta + e is reachable for every other seed: theta* = 0.5 - e
    assert info["num_above_threshold"] == 0 and np.max(result.distances) < 1e-9


def test_bad_input_is_named(square, tmp_path):
    problem, _ = square
    with pytest.raises(TypeError, match="problem"):
        OMC("not a problem")
    for kwargs, name in [
        ({"num_seeds": 0}, "num_seeds"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"gradients": "numeric"}, "gradients"),
        ({"residual_threshold": 0.0}, "residual_threshold"),
        ({"residual_threshold": float("nan")}, "residual_threshold"),
        ({"fd_step": -1e-3}, "fd_step"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_steps": 0}, "num_steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            OMC(problem, **kwargs)
    wide = LikelihoodFreeProblem(dist.Normal(0.0, 1.0).expand([2]).to_event(1), lambda t, k: jnp.sum(t), 1.0)
    with pytest.raises(ValueError, match=r"problem: .*d >= D"):
        OMC(wide)
    omc = OMC(problem, num_seeds=8)
    with pytest.raises(TypeError, match="rng_key"):
        omc.run(0)
    with pytest.raises(TypeError, match="executor"):
        omc.run(jax.random.PRNGKey(0), executor=object())
    with pytest.raises(TypeError, match="store"):
        omc.run(jax.random.PRNGKey(0), store=3)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="store"):
        omc.run(jax.random.PRNGKey(0), store=tmp_path / "a_file")


# ---- parallel runs and the store -------------------------------------------------------
def test_store_skips_finished_chunks_and_the_executor_path_is_bit_identical(square, tmp_path):
    problem, _ = square
    key = jax.random.PRNGKey(5)
    # 3 chunks, the last one padded; chunk_size 256 as in the test above, whose compiled program this reuses
    omc = OMC(problem, num_seeds=600, chunk_size=256)
    first = omc.run(key, store=tmp_path)
    assert (first.info["num_chunks_computed"], first.info["num_chunks_loaded"]) == (3, 0)
    again = omc.run(key, store=tmp_path)
    assert (again.info["num_chunks_computed"], again.info["num_chunks_loaded"]) == (0, 3)
    for name in ("theta", "log_weights", "distances"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.num_simulations == first.num_simulations
    (chunk,) = list(tmp_path.glob("omc-*/seeds-0000000256.npz"))
    chunk.unlink()  # as if the run had been interrupted before this chunk finished
    partial = omc.run(key, store=tmp_path)
    assert (partial.info["num_chunks_computed"], partial.info["num_chunks_loaded"]) == (1, 2)
    np.testing.assert_array_equal(partial.theta, first.theta)
    # the threshold is applied after the optimisation: another threshold reuses the chunks
    threshold = float(np.quantile(first.info["residual_norm"], 0.5))
    with pytest.warns(ReliabilityWarning, match="residual_threshold"):
        strict = OMC(problem, num_seeds=600, chunk_size=256, residual_threshold=threshold).run(key, store=tmp_path)
    assert strict.info["num_chunks_loaded"] == 3
    np.testing.assert_array_equal(strict.info["kept"], first.info["residual_norm"] <= threshold)
    # another key is another run (in another subfolder)
    other_key = omc.run(jax.random.PRNGKey(6), store=tmp_path)
    assert other_key.info["num_chunks_computed"] == 3 and len(list(tmp_path.glob("omc-*"))) == 2
    assert not np.array_equal(other_key.theta, first.theta)
    # the executor path (each chunk a task, the problem pickled with it; this process's compiled program
    # serves it, the slow Dask test runs it in worker processes): the same bits
    serial = omc.run(key, executor=SerialExecutor())
    for name in ("theta", "log_weights"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(first, name))
    np.testing.assert_array_equal(serial.info["half_log_det"], first.info["half_log_det"])


@pytest.mark.slow
def test_a_seeds_numbers_do_not_depend_on_the_chunking(tall):
    problem, _ = tall
    key = jax.random.PRNGKey(5)
    first = OMC(problem, num_seeds=200, chunk_size=64).run(key)
    other = OMC(problem, num_seeds=200, chunk_size=50).run(key)
    np.testing.assert_allclose(other.info["u"], first.info["u"], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_dask_two_workers_bit_identical_and_resumable(tmp_path):
    from adapters.sweep import DaskExecutor

    problem = LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), exponential_mean, Y_EXP)
    omc = OMC(problem, num_seeds=1000, chunk_size=125)  # 8 chunks
    key = jax.random.PRNGKey(7)
    local = omc.run(key, store=tmp_path)
    files = sorted(tmp_path.glob("omc-*/seeds-*.npz"))
    assert len(files) == 8
    for path in files[2:5]:
        path.unlink()
    executor = DaskExecutor(n_workers=2)
    try:
        fresh = omc.run(key, executor=executor)
        resumed = omc.run(key, executor=executor, store=tmp_path)
    finally:
        executor.close()
    for result in (fresh, resumed):
        np.testing.assert_array_equal(result.theta, local.theta)
        np.testing.assert_array_equal(result.log_weights, local.log_weights)
        np.testing.assert_array_equal(result.info["residuals"], local.info["residuals"])
        assert result.num_simulations == local.num_simulations
    assert (fresh.info["num_chunks_computed"], resumed.info["num_chunks_computed"]) == (8, 3)
