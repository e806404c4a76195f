"""Automatic variational ABC (Pyro) against exact answers: the twin of tests/numpyro_ext/test_abc_avabc.py.

AV-ABC's optimum averages ``log p_SL`` over the simulations' random numbers; for Gaussian
simulations with ``epsilon = 0`` that is the posterior whose likelihood precision is inflated by
``c_S = (S - 1) / (S - d - 2)`` (the mean of an inverse Wishart), which tends to the exact
posterior as ``S`` grows.  Checked on the exponential-gamma toy (exact posterior Gamma(500.1,
5043.47)) and on a D = 3 Gaussian mean with a full-rank guide (closed form).  The tests run with
torch's default dtype float64 (tests/conftest.py): the toy's prior is float64, the Gaussian mean's
prior float32 (Pyro's usual dtype), so both paths are checked.  Tolerances were measured over seeds
0-4 with the tests' settings; the toy fits are slow, the Gaussian closed form is the default check.
"""

from __future__ import annotations

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value

from pyro_ext.infer.abc.avabc import AVABC, pilot_values, synthetic_likelihood_model
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem
from pyro_ext.optim import SWANOptimizer

Y_OBS = 10.086749290513298
EXACT_MEAN, EXACT_SD = 500.1 / 5043.47, np.sqrt(500.1) / 5043.47
N_DRAWS = 500
STEPS_GAUSSIAN = 500


def gamma_mean_simulator(lam, generator):
    """The mean of 500 Exponential(lam) draws per row of ``lam`` ``(n,)``, drawn as Gamma(500, 500 lam):
    ``torch._standard_gamma`` takes no generator, so the Gamma(500, 1) variate is a sum of 500
    standard exponentials ``-log U``; the same law as the issue's simulator."""
    u = torch.rand((lam.shape[0], N_DRAWS), generator=generator, dtype=lam.dtype)
    return (-torch.log1p(-u)).mean(-1) / lam


def toy_problem(simulator=gamma_mean_simulator) -> LikelihoodFreeProblem:
    return LikelihoodFreeProblem(dist.Gamma(0.1, 0.1), simulator, torch.tensor(Y_OBS))


def toy_target(num_simulations: int) -> tuple[float, float]:
    """Mean and sd of AV-ABC's optimum on the toy: ``lambda^0.1 exp(-0.1 lambda - 250 c_S (y lambda - 1)^2)``."""
    c = (num_simulations - 1) / (num_simulations - 3)
    lam = np.linspace(0.06, 0.14, 20001)
    log_t = 0.1 * np.log(lam) - 0.1 * lam - 0.5 * N_DRAWS * c * (Y_OBS * lam - 1.0) ** 2
    w = np.exp(log_t - log_t.max())
    w /= w.sum()
    mean = float(w @ lam)
    return mean, float(np.sqrt(w @ (lam - mean) ** 2))


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def fit_toy(num_simulations: int, num_steps: int, **kwargs):
    avabc = AVABC(toy_problem(), num_simulations=num_simulations, num_steps=num_steps, **kwargs)
    return avabc.run(num_samples=4000)


@pytest.mark.slow
def test_toy_approaches_exact_posterior():
    result = fit_toy(50, 800, num_particles=2)
    target_mean, target_sd = toy_target(50)
    mean, sd = float(result.mean()[0]), float(result.std()[0])
    assert abs(mean - target_mean) < 0.3 * target_sd, (mean, target_mean)
    assert abs(sd / target_sd - 1.0) < 0.1, (sd, target_sd)
    assert abs(mean - EXACT_MEAN) < 0.3 * EXACT_SD and abs(sd / EXACT_SD - 1.0) < 0.1
    assert result.num_simulations == 800 * 2 * 50 + 100 * 50 + 4  # training, pilot, gradient check
    assert result.info["loss"].shape == (800,) and result.info["num_nonfinite_losses"] == 0
    assert result.names == ["theta"] and result.theta.shape == (4000, 1) and result.warnings == []


@pytest.mark.slow
def test_toy_bias_shrinks_as_s_grows():
    # S = 5: the fit is 0.71 of the exact sd (c_5 = 2), S = 50: 0.98
    errors = {}
    for s in (5, 50):
        pyro.clear_param_store()
        result = fit_toy(s, 2000, num_particles=4)
        target_mean, target_sd = toy_target(s)
        assert abs(float(result.std()[0]) / target_sd - 1.0) < 0.06
        assert abs(float(result.mean()[0]) - target_mean) < 0.2 * target_sd
        errors[s] = abs(float(result.std()[0]) / EXACT_SD - 1.0)
    assert errors[50] < 0.06 < 0.2 < errors[5]


# ---- D = 3 Gaussian mean: the synthetic likelihood is exact in law ----------------------------------
SIGMA = np.array([[1.0, 0.5, 0.2], [0.5, 1.5, -0.3], [0.2, -0.3, 0.8]])
N_OBS = 10
Y_MEAN = np.array([0.5, -1.0, 1.5])
PRIOR_VAR = 4.0


def gaussian_problem(dtype: torch.dtype = torch.float32, model_prior: bool = False) -> LikelihoodFreeProblem:
    """The D = 3 Gaussian mean; ``model_prior``: the prior as a Pyro model (theta is ``{"theta": (n, 3)}``)."""
    chol = torch.as_tensor(np.linalg.cholesky(SIGMA), dtype=dtype)

    def simulator(theta, generator):
        theta = theta["theta"] if model_prior else theta
        z = torch.randn((theta.shape[0], N_OBS, 3), generator=generator, dtype=theta.dtype)
        return theta + (z @ chol.T).mean(-2)

    distribution = dist.Normal(torch.zeros(3, dtype=dtype), float(np.sqrt(PRIOR_VAR))).to_event(1)
    prior = (lambda: pyro.sample("theta", distribution)) if model_prior else distribution
    return LikelihoodFreeProblem(prior, simulator, torch.as_tensor(Y_MEAN, dtype=dtype))


def gaussian_target(num_simulations: int) -> tuple[np.ndarray, np.ndarray]:
    """AV-ABC's optimum: the posterior with likelihood precision ``c_S n Sigma^-1``."""
    c = (num_simulations - 1) / (num_simulations - 3 - 2)
    precision = np.eye(3) / PRIOR_VAR + c * N_OBS * np.linalg.inv(SIGMA)
    cov = np.linalg.inv(precision)
    return cov @ (c * N_OBS * np.linalg.solve(SIGMA, Y_MEAN)), cov


def whitened_error(
    loc: np.ndarray, cov: np.ndarray, mean: np.ndarray, target_cov: np.ndarray
) -> tuple[float, float, float]:
    """Largest |mean error| in target sds, the spectral distance of the whitened covariance from I,
    and the mean log eigenvalue of the whitened covariance (its log-determinant ratio / D)."""
    chol = np.linalg.cholesky(target_cov)
    z = np.linalg.solve(chol, loc - mean)
    eig = np.linalg.eigvalsh(np.linalg.solve(chol, np.linalg.solve(chol, cov).T))
    return float(np.max(np.abs(z))), float(np.max(np.abs(eig - 1.0))), float(np.mean(np.log(eig)))


def test_gaussian_mean_full_rank_guide_with_swan_reaches_closed_form():
    # S = 10: c_S = 9/5, so the S = inf posterior's covariance is 1.8 times the optimum's (mean log
    # eigenvalue of the whitened covariance -0.59); over seeds 0-4 the fit was 0.08-0.20 from the c_S
    # optimum in spectral distance (mean log eigenvalue -0.02..0.06), its mean 0.03-0.14 target sds
    # away.  A float32 prior model: the guide, the simulations and the likelihood stay float32.  SWAN
    # on a schedule (the guide's matrices go to its AdamW part).
    s, steps = 10, STEPS_GAUSSIAN
    optimizer = pyro.optim.ExponentialLR(
        {"optimizer": SWANOptimizer, "optim_args": {"lr": 0.05}, "gamma": 0.02 ** (1 / steps)}
    )
    problem = gaussian_problem(model_prior=True)  # the Distribution prior's path: the toy tests
    avabc = AVABC(problem, num_simulations=s, num_steps=steps, num_particles=4, optimizer=optimizer)
    result = avabc.run(num_samples=100)
    with torch.no_grad():
        posterior = avabc.guide.get_posterior()
        loc, fitted_cov = posterior.loc.numpy(), posterior.covariance_matrix.numpy()
    assert posterior.loc.dtype == torch.float32 and result.info["init_values"]["theta"].dtype == np.float32
    mean, cov = gaussian_target(s)
    mean_err, cov_err, log_det_err = whitened_error(loc, fitted_cov, mean, cov)
    assert mean_err < 0.25 and cov_err < 0.3 and abs(log_det_err) < 0.2, (mean_err, cov_err, log_det_err)
    # the S = inf posterior's covariance is c_S = 1.8 times wider where the likelihood dominates
    exact_mean, exact_cov = gaussian_target(10**9)
    assert whitened_error(loc, fitted_cov, exact_mean, exact_cov)[2] < -0.4
    assert result.theta.shape == (100, 3) and result.names == ["theta[0]", "theta[1]", "theta[2]"]
    assert result.num_simulations == steps * 4 * s + 100 * s + 4 and result.warnings == []


@pytest.mark.slow
def test_plain_svi_with_vectorized_particles():
    # the model in Pyro's own SVI started by pilot_values, particles vectorised (a batch of theta
    # per model run), fresh simulations per run from torch's global stream
    problem = toy_problem()
    model = synthetic_likelihood_model(problem, num_simulations=20)
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=pilot_values(problem, 20)))
    svi = SVI(
        model,
        guide,
        pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / 800)}),
        Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0),
    )
    for _ in range(800):
        svi.step()
    with torch.no_grad():
        draws = torch.stack([guide()["theta"] for _ in range(2000)]).numpy()
    target_mean, target_sd = toy_target(20)
    assert abs(draws.mean() - target_mean) < 0.3 * target_sd
    assert abs(draws.std() / target_sd - 1.0) < 0.1


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [-0.1, float("nan"), "0.1", True, None])
def test_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        AVABC(toy_problem(), epsilon=epsilon)


def test_too_few_simulations_without_ridge():
    with pytest.raises(ValueError, match=r"num_simulations: .*S > d = 3"):
        synthetic_likelihood_model(gaussian_problem(), num_simulations=3)
    synthetic_likelihood_model(gaussian_problem(torch.float64), num_simulations=3, epsilon=0.1)  # the ridge
    with pytest.raises(ValueError, match="num_steps"):
        AVABC(toy_problem(), num_steps=0)
    with pytest.raises(ValueError, match="num_draws"):
        pilot_values(toy_problem(), num_draws=0)


@pytest.mark.parametrize(
    "simulator",
    [
        pytest.param(lambda lam, g: torch.round(gamma_mean_simulator(lam, g) * 10.0) / 10.0, id="rounding"),
        pytest.param(lambda lam, g: torch.poisson((5.0 / lam)[:, None].expand(-1, 20), g).mean(-1), id="poisson"),
        pytest.param(lambda lam, g: torch.as_tensor(1.0 / lam.detach().numpy()), id="numpy"),
    ],
)
def test_non_differentiable_simulator(simulator):
    with pytest.raises(ValueError, match="simulator: AV-ABC .*differentia"):
        AVABC(toy_problem(simulator))


def test_bad_guide_and_optimizer():
    with pytest.raises(TypeError, match="guide"):
        AVABC(toy_problem(), guide=3)
    with pytest.raises(TypeError, match="optimizer"):
        AVABC(toy_problem(), optimizer=torch.optim.Adam)
    with pytest.raises(TypeError, match="problem"):
        synthetic_likelihood_model(object())


def test_guide_class_is_rebuilt_each_run_from_the_pilot():
    # the pilot's start is the best prior draw by log p(theta) + log p_SL: on the toy, within 5
    # posterior sds of the mode (one of 100 Gamma(0.1, 0.1) draws is that close with probability 0.95)
    avabc = AVABC(toy_problem(), guide=AutoMultivariateNormal, num_simulations=10, num_steps=5, num_particles=1)
    first = avabc.run(num_samples=10)
    guide = avabc.guide
    start = float(first.info["init_values"]["theta"])
    assert abs(start - EXACT_MEAN) < 5 * EXACT_SD and first.theta.shape == (10, 1)
    # set up from the AV-ABC model (whose only argument is the step's simulation seed), on the prior's site
    prototype = guide.prototype_trace
    assert list(prototype.stochastic_nodes) == ["theta"] and isinstance(prototype.nodes["_INPUT"]["args"][0], int)
    names = set(pyro.get_param_store().keys())
    second = avabc.run(num_samples=10)
    assert avabc.guide is not guide and float(second.info["init_values"]["theta"]) != start
    assert set(pyro.get_param_store().keys()) == names  # the second guide's, the first run's gone
    assert float(pyro.param("AutoMultivariateNormal.loc")) == pytest.approx(
        np.log(second.info["init_values"]["theta"]), abs=0.3
    )
    own = functools.partial(AutoNormal, init_loc_fn=init_to_value(values={"theta": torch.tensor(0.5)}))
    result = AVABC(toy_problem(), guide=own, num_simulations=10, num_steps=1, num_particles=1).run(num_samples=5)
    assert result.info["init_values"] is None and result.num_simulations == 10 + 4  # no pilot run
