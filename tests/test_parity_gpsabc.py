"""The two ``GPSABC``/``POPE`` twins agree on their deterministic pieces, and refuse bad input alike.

Given the same inputs, in float64 (the tests switch JAX's x64 on):

* the training set grouped by location (a location whose only simulation is non-finite included),
  its standardisation, and the surrogate's log marginal likelihood at given hyperparameters
  (NumPyro: tinygp on a masked fixed-capacity buffer; torch: GPyTorch on the used locations);
* a few Adam steps of the hyperparameter fit from the same start (same optimiser, bounds, objective);
* the surrogate's predictive mean ``(d, k)``, covariance ``(d, k, k)`` and noise ``(d,)`` at given points
  (less the ``sqrt(eps)`` jitter tinygp adds to a conditioned covariance's diagonal);
* the decision ``(accept, tau, error)`` from given ``log alpha`` draws (odd and even ``M``, ``-inf``
  draws included) and a given ``log u``;
* the surrogate likelihood, Gaussian and one-sided;
* the pooled within-location noise variance and a fit with the noise held at it;
* the constructors' and ``run``'s errors: same type, same message (``max_simulations`` included).

A case is skipped when a backend is not installed.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
pytest.importorskip("gpytorch", reason="the pyro extra is not installed")
pytest.importorskip("tinygp", reason="the numpyro extra is not installed")

import jax.numpy as jnp  # noqa: E402

from numpyro_ext.infer.abc.gpsabc import core as jcore  # noqa: E402
from pyro_ext.infer.abc.gpsabc import core as tcore  # noqa: E402

F64 = torch.float64
RTOL = 1e-9

_rng = np.random.default_rng(0)
LOCATIONS = _rng.normal(size=(6, 2))
REPEATS = np.array([1, 3, 1, 4, 2, 1])
U = np.repeat(LOCATIONS, REPEATS, axis=0)
STATS = np.stack([np.sin(U[:, 0]) + U[:, 1], U[:, 0] * U[:, 1]], axis=1) + 0.3 * _rng.normal(size=(len(U), 2))
PARAMS = (
    np.array([0.1, -0.2]),
    np.array([0.3, -0.1]),
    np.log(np.array([0.4, 0.7])),
    np.array([[0.2, -0.3], [0.5, 0.1]]),
)
POINTS = np.array([[0.3, -0.2], [1.5, 0.4], [-2.0, 1.0]])


def _rows(i: int) -> slice:
    return slice(int(REPEATS[:i].sum()), int(REPEATS[: i + 1].sum()))


@functools.cache  # built once: eager JAX dispatches each update op by op
def _jax_surrogate():
    data = jcore.empty_data(16, 2, 2, jnp.float64)
    for i in range(len(REPEATS)):
        data = jcore.add_simulations(data, jnp.int32(i), jnp.asarray(LOCATIONS[i]), jnp.asarray(STATS[_rows(i)]))
    data = jcore.add_simulations(data, data.count, jnp.ones(2), jnp.full((1, 2), jnp.nan))
    standardizer = jcore.fit_standardizer(data)
    params = jcore.GPParams(*(jnp.asarray(p) for p in PARAMS))
    return data, standardizer, params


@functools.cache
def _torch_surrogate():
    data = tcore.empty_data(2, 2, F64)
    for i in range(len(REPEATS)):
        data = tcore.add_simulations(data, i, torch.tensor(LOCATIONS[i]), torch.tensor(STATS[_rows(i)]))
    data = tcore.add_simulations(data, data.count, torch.ones(2, dtype=F64), torch.full((1, 2), math.nan, dtype=F64))
    standardizer = tcore.fit_standardizer(data)
    params = tcore.GPParams(*(torch.tensor(p) for p in PARAMS))
    return data, standardizer, params


def _np(x) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def test_training_set_standardisation_and_marginal_likelihood_agree():
    jdata, jstd, jparams = _jax_surrogate()
    tdata, tstd, tparams = _torch_surrogate()
    count = int(jdata.count)
    assert count == tdata.count == 7
    for name in ("u", "mean", "sumsq", "n"):
        np.testing.assert_allclose(_np(getattr(jdata, name))[:count], _np(getattr(tdata, name)), rtol=1e-12)
    for a, b in zip(jstd, tstd, strict=True):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-12)
    jvalue = float(jax.jit(jcore.log_marginal_likelihood)(jparams, jdata, jstd))
    tvalue = float(tcore.log_marginal_likelihood(tparams, tdata, tstd))
    np.testing.assert_allclose(tvalue, jvalue, rtol=RTOL)


def test_a_few_adam_steps_of_the_fit_agree():
    jdata, jstd, jparams = _jax_surrogate()
    tdata, tstd, tparams = _torch_surrogate()
    jfit, jlml = jcore.fit_hyperparameters(jparams, jdata, jstd, 20, 0.05)
    tfit, tlml = tcore.fit_hyperparameters(tparams, tdata, tstd, 20, 0.05)
    for a, b in zip(jfit, tfit, strict=True):
        np.testing.assert_allclose(_np(b), _np(a), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(tlml), float(jlml), rtol=1e-8)


def test_pooled_noise_and_the_fit_with_the_noise_held_agree():
    jdata, jstd, jparams = _jax_surrogate()
    tdata, tstd, tparams = _torch_surrogate()
    jvar, jdof = jcore.pooled_noise_variance(jdata)
    tvar, tdof = tcore.pooled_noise_variance(tdata)
    assert int(jdof) == tdof == int(np.sum(REPEATS - 1))
    np.testing.assert_allclose(_np(tvar), _np(jvar), rtol=1e-12)
    jfit, jlml = jcore.fit_hyperparameters(jparams, jdata, jstd, 20, 0.05, True)
    tfit, tlml = tcore.fit_hyperparameters(tparams, tdata, tstd, 20, 0.05, True)
    for a, b in zip(jfit, tfit, strict=True):
        np.testing.assert_allclose(_np(b), _np(a), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(tlml), float(jlml), rtol=1e-8)
    # the noise is held at the pooled within-location variance (standardised scale)
    np.testing.assert_allclose(np.exp(2 * _np(jfit.log_noise)) * _np(jstd.stat_scale) ** 2, _np(jvar), rtol=1e-10)


def test_predictive_mean_covariance_and_noise_agree():
    jdata, jstd, jparams = _jax_surrogate()
    tdata, tstd, tparams = _torch_surrogate()
    # compiled, as the NumPyro shell runs them (eager tinygp dispatches op by op, slower than compiling)
    jsur = jax.jit(jcore.condition_surrogate)(jparams, jstd, jdata)
    tsur = tcore.condition_surrogate(tparams, tstd, tdata)
    jloc, jcov, jnoise = jax.jit(jcore.predict)(jsur, jdata, jnp.asarray(POINTS))
    tloc, tcov, tnoise = tcore.predict(tsur, torch.tensor(POINTS))
    # tinygp's conditioned GP adds its default jitter sqrt(eps) to the latent covariance's diagonal
    # (standardised scale); the GPyTorch twin adds none: that jitter is taken out before comparing
    jitter = math.sqrt(np.finfo(np.float64).eps) * _np(jstd.stat_scale)[:, None, None] ** 2 * np.eye(len(POINTS))
    np.testing.assert_allclose(_np(tloc), _np(jloc), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(_np(tcov), _np(jcov) - jitter, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(_np(tnoise), _np(jnoise), rtol=RTOL)


@pytest.mark.parametrize("num_draws", [9, 10])
def test_decision_and_tau_agree(num_draws):
    rng = np.random.default_rng(num_draws)
    log_alpha = np.minimum(0.0, rng.normal(-0.7, 0.8, size=num_draws))
    log_alpha[:2] = -np.inf  # proposals with zero surrogate likelihood
    for log_u in np.log([0.05, 0.3, 0.5, 0.8, 0.99]):
        ja, jt, je = jcore.decision_error(jnp.asarray(log_alpha), jnp.asarray(log_u))
        ta, tt, te = tcore.decision_error(torch.tensor(log_alpha), torch.tensor(log_u))
        assert bool(ja) == bool(ta)
        np.testing.assert_allclose(float(tt), float(jt), rtol=1e-12)
        # the error is a count over M (NumPyro's comes back in float32 even under x64): the counts agree
        assert round(float(te) * num_draws) == round(float(je) * num_draws)
        assert float(te) == pytest.approx(float(je), abs=1e-6)


@pytest.mark.parametrize("likelihood", ["gaussian", "below", "above"])
def test_surrogate_likelihood_agrees(likelihood):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, 3))
    noise, observed, epsilon = np.array([0.25, 2.0, 0.04]), np.array([0.1, -0.4, 2.5]), 0.3
    jvalue = jcore.surrogate_log_likelihood(
        jnp.asarray(f), jnp.asarray(noise), jnp.asarray(observed), epsilon, likelihood
    )
    tvalue = tcore.surrogate_log_likelihood(
        torch.tensor(f), torch.tensor(noise), torch.tensor(observed), epsilon, likelihood
    )
    np.testing.assert_allclose(_np(tvalue), _np(jvalue), rtol=1e-12)


# ---- the same errors ---------------------------------------------------------------------
def _problems():
    import numpyro.distributions as dist
    import pyro.distributions as pdist

    from numpyro_ext.infer.abc import LikelihoodFreeProblem as JaxProblem
    from pyro_ext.infer.abc import LikelihoodFreeProblem as TorchProblem

    def jax_simulator(theta, key):
        return theta + 0.5 * jax.random.normal(key)

    def torch_simulator(theta, generator):
        return theta + 0.5 * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    jax_problem = JaxProblem(dist.Gamma(0.1, 0.1), jax_simulator, observed=0.7)
    prior = pdist.Gamma(torch.tensor(0.1, dtype=F64), torch.tensor(0.1, dtype=F64))
    return jax_problem, TorchProblem(prior, torch_simulator, observed=0.7)


def _error(fn):
    try:
        fn()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    return None


BAD = [
    {"xi": 0.5},
    {"xi": True},
    {"num_surrogate_draws": 1},
    {"proposal_scale": -1.0},
    {"proposal_scale": [0.1, 0.2]},
    {"num_initial_simulations": 1},
    {"epsilon": -1.0},
    {"delta_s": 0},
    {"max_acquisitions": -1},
    {"acquisition": "greedy"},
    {"num_pilot_draws": 0},
    {"refit_growth": 1.0},
    {"num_fit_steps": 0},
    {"fit_learning_rate": 0.0},
    {"num_initial_repeats": 0},
    {"noise": "guess"},
    {"noise": "repeats", "num_initial_repeats": 1},
    {"max_simulations": 0},
    {"max_simulations": 2.5},
    {"max_simulations": True},
    {"max_simulations": 39},
]
POPE_BAD = [
    {"direction": "sideways"},
    {"num_candidates": 1},
    {"kappa": -1.0},
    {"num_bo_iterations": -1},
    {"xi": 0.7},
]


def test_bad_arguments_give_the_same_errors():
    from numpyro_ext.infer.abc import GPSABC as JaxGPSABC
    from numpyro_ext.infer.abc import POPE as JaxPOPE
    from pyro_ext.infer.abc import GPSABC as TorchGPSABC
    from pyro_ext.infer.abc import POPE as TorchPOPE

    jax_problem, torch_problem = _problems()
    for cls_jax, cls_torch, cases in ((JaxGPSABC, TorchGPSABC, BAD), (JaxPOPE, TorchPOPE, BAD + POPE_BAD)):
        for kwargs in cases:
            expected = _error(lambda cls=cls_jax, kw=kwargs: cls(jax_problem, **kw))
            assert expected is not None, kwargs
            assert _error(lambda cls=cls_torch, kw=kwargs: cls(torch_problem, **kw)) == expected, kwargs
    # the problem's type, and a start outside the prior's support
    assert _error(lambda: JaxGPSABC(object())) == _error(lambda: TorchGPSABC(object()))
    expected = _error(lambda: JaxGPSABC(jax_problem).run(jax.random.PRNGKey(0), num_samples=2, init_params=-1.0))
    assert expected is not None and "init_params" in expected[1]
    assert _error(lambda: TorchGPSABC(torch_problem).run(num_samples=2, init_params=-1.0)) == expected
    # a budget that the pilot and the initial design already pass
    expected = _error(lambda: JaxGPSABC(jax_problem, max_simulations=100).run(jax.random.PRNGKey(0), num_samples=2))
    assert expected is not None and "max_simulations = 100 is less than the 240" in expected[1]
    assert _error(lambda: TorchGPSABC(torch_problem, max_simulations=100).run(num_samples=2)) == expected
