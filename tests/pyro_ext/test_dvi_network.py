"""The Pyro shell of DVI: DVIMLP (PyroModule), DVI_ELBO and MCVI_ELBO with Pyro's SVI.

Exact answers: Bayesian linear regression (a network without hidden layers, Gaussian prior, known noise) has the
mean-field optimum ``q_i = N(mu_i, 1 / Lambda_ii)`` (``mu``, ``Lambda``: the exact posterior's mean and
precision), which DVI's ELBO (exact for a linear layer) has as its maximiser: SVI must reach it.  The SVI loss is
the negative core ELBO at the KL warm-up's weight; for one hidden layer the closed-form predictive mean and
variance are exact, checked against ``sample_predictive`` (2e5 draws, ``Z_MAX`` Monte Carlo standard errors).
"""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive

from pyro_ext.infer.dvi import (
    DVI_ELBO,
    DVIMLP,
    MCVI_ELBO,
    dvi_elbo,
    dvi_elbo_terms,
    empirical_bayes_prior_variance,
    log_predictive_density,
    mcvi_elbo,
)

Z_MAX = 4.5


@pytest.fixture(autouse=True)
def _fresh_param_store():
    # PyroModules of the same name share the global parameter store
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def toy_data(seed, num):
    """The paper's heteroscedastic toy: x ~ U(-0.5, 0.5), y = -(x + 0.5) sin(3 pi x) + 0.45 (x + 0.5)^2 eps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, size=(num, 1))
    y = -(x + 0.5) * np.sin(3 * np.pi * x) + 0.45 * (x + 0.5) ** 2 * rng.standard_normal((num, 1))
    return torch.tensor(x), torch.tensor(y[:, 0])


def test_svi_reaches_the_mean_field_optimum_of_bayesian_linear_regression():
    """sizes (2, 1), prior N(0, 2) on weights and bias, known noise variance 0.25 (its learning rate 0): after 300
    Adam steps the means and variances of q are the closed-form mean-field optimum to 1e-5."""
    rng = np.random.default_rng(0)
    n, d, prior_var, noise = 40, 2, 2.0, 0.25
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.0, -0.5]) + 0.3 + 0.5 * rng.normal(size=n)
    design = np.hstack([x, np.ones((n, 1))])
    precision = design.T @ design / noise + np.eye(d + 1) / prior_var
    mean = np.linalg.solve(precision, design.T @ y / noise)
    pyro.set_rng_seed(0)
    net = DVIMLP((d, 1), likelihood="homoscedastic", prior="gaussian", prior_variance=prior_var)
    net.load_params({**net.param_dict(), "dvi.log_noise_variance": np.log([noise])})
    optim = pyro.optim.ClippedAdam(lambda name, _: {"lr": 0.0 if name.endswith("noise_variance") else 0.1, "lrd": 0.99})
    svi = SVI(net.model, net.guide, optim, DVI_ELBO())
    for _ in range(300):
        svi.step(torch.tensor(x), torch.tensor(y))
    q = net.get_params().layers[0]
    got_mean = torch.cat([q.weight_mean[:, 0], q.bias_mean]).detach().numpy()
    got_var = torch.cat([q.weight_var[:, 0], q.bias_var]).detach().numpy()
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(got_var, 1.0 / np.diag(precision), rtol=1e-5)
    assert float(net.get_params().log_noise_variance.detach()[0]) == math.log(noise)


def test_svi_loss_is_the_negative_elbo_with_the_kl_warmup_weight():
    net = DVIMLP((1, 3, 2), covariance="diag", prior="gaussian")
    x, y = toy_data(0, 20)
    loss = DVI_ELBO(kl_warmup_steps=4)
    svi = SVI(net.model, net.guide, pyro.optim.SGD({"lr": 0.0}), loss)  # lr 0: q stays put, the weight moves
    losses = [svi.step(x, y, num_data=40) for _ in range(6)]
    assert loss.num_steps == 6
    params = net.get_params()
    for step, got in enumerate(losses):
        with torch.no_grad():
            expected = -float(dvi_elbo(params, x, y, net.config, num_data=40, kl_weight=min(1.0, step / 4)))
        assert got == pytest.approx(expected, rel=1e-12)
    assert svi.evaluate_loss(x, y, num_data=40) == pytest.approx(losses[-1], rel=1e-12)  # the full ELBO
    assert sorted(pyro.get_param_store()) == sorted(net.param_dict())  # the NumPyro twin's site names
    # init(): He-scaled weight means, standard deviations a tenth of that scale, zero bias means
    for layer, d_in in zip(params.layers, (1, 3), strict=True):
        np.testing.assert_allclose(layer.weight_log_std.detach(), math.log(0.1 * math.sqrt(2.0 / d_in)), rtol=1e-12)
        assert torch.all(layer.bias_mean == 0.0) and torch.all(layer.weight_mean != 0.0)
    # MCVI_ELBO: the same loss with the local reparameterisation estimate, from torch's global generator
    mcvi = MCVI_ELBO(num_particles=3, kl_warmup_steps=2)
    pyro.set_rng_seed(5)
    got = SVI(net.model, net.guide, pyro.optim.SGD({"lr": 0.0}), mcvi).step(x, y)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        expected = -float(mcvi_elbo(params, x, y, net.config, num_samples=3, kl_weight=0.0))
    assert got == pytest.approx(expected, rel=1e-12)


def test_training_moves_q_and_load_params_keeps_the_optimizer_going():
    net = DVIMLP((1, 4, 2))
    x, y = toy_data(1, 30)
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 0.01}), DVI_ELBO(kl_warmup_steps=10))
    start = svi.evaluate_loss(x, y)
    for _ in range(60):
        svi.step(x, y)
    assert svi.evaluate_loss(x, y) < start - 1.0
    saved = net.param_dict()
    net.load_params({k: np.zeros_like(v) for k, v in saved.items()})
    assert float(net.get_params().layers[1].weight_mean.detach().abs().sum()) == 0.0
    net.load_params(saved)  # in place: the optimizer's parameters are the loaded ones
    before = float(net.get_params().layers[0].weight_mean.detach()[0, 0])
    svi.step(x, y)
    after = net.get_params().layers[0].weight_mean.detach()[0, 0]
    assert before == saved["dvi.layers.0.weight_mean"][0, 0] and float(after) != before


def test_closed_form_predictive_matches_sample_predictive():
    """One hidden layer, homoscedastic: E[y] and Var[y] of predict() are exact (2e5 draws of sample_predictive)."""
    pyro.set_rng_seed(1)
    net = DVIMLP((2, 5, 1), likelihood="homoscedastic", prior="gaussian", init_std_ratio=1.0)
    net.load_params({**net.param_dict(), "dvi.log_noise_variance": np.array([-1.0])})
    x = torch.tensor([[0.3, -0.8], [1.0, 0.5]])
    num = 200_000
    draws = net.sample_predictive(x, num, generator=torch.Generator().manual_seed(2)).numpy()
    mean, var = (v.detach().numpy() for v in net.predict(x))
    assert draws.shape == (num, 2, 1)
    z_mean = np.abs(draws.mean(0) - mean) / (draws.std(0) / math.sqrt(num))
    squares = (draws - draws.mean(0)) ** 2
    z_var = np.abs(squares.mean(0) - var) / (squares.std(0) / math.sqrt(num))
    assert z_mean.max() < Z_MAX and z_var.max() < Z_MAX, (z_mean, z_var)
    y = torch.tensor([0.4, -0.2])
    density = net.log_predictive_density(x, y, 500, generator=torch.Generator().manual_seed(3))
    same = log_predictive_density(net.get_params(), x, y, net.config, 500, generator=torch.Generator().manual_seed(3))
    assert density.shape == (2,) and torch.equal(density, same)
    labels = DVIMLP((2, 3), likelihood="categorical", name="classes").sample_predictive(x, 7)
    assert labels.shape == (7, 2) and labels.dtype == torch.int64 and int(labels.max()) < 3


def test_guide_is_q_with_the_empirical_bayes_prior_variance_and_serves_predictive():
    net = DVIMLP((1, 3, 2))
    x, y = toy_data(2, 5)
    trace = pyro.poutine.trace(net.guide).get_trace(x)
    q = net.get_params().layers[1]
    s_star = empirical_bayes_prior_variance(q.weight_mean, q.weight_var, net.config.eb_alpha, net.config.eb_beta(1))
    got = trace.nodes["dvi.layers.1.weight_prior_variance"]["value"]
    assert float(got.detach()) == pytest.approx(float(s_star.detach()), rel=1e-14)
    assert trace.nodes["dvi.layers.1.weight"]["value"].shape == (3, 2)
    samples = Predictive(net.model, guide=net.guide, num_samples=4, return_sites=["dvi.y"])(x)
    assert samples["dvi.y"].shape == (4, 5, 1)


def test_arviz_export_holds_the_weights_and_the_posterior_predictive():
    """to_arviz: one hidden layer, homoscedastic -- the mean of the log-likelihood group over the 4000 weight draws
    is DVI's exact expected log-likelihood (to Z_MAX MC errors), the predictive draws' mean is predict()'s, and
    ArviZ's loo takes it (the NumPyro twin's test also draws az.plot_ppc from the shared converter)."""
    az = pytest.importorskip("arviz")
    pyro.set_rng_seed(3)
    net = DVIMLP((1, 4, 1), likelihood="homoscedastic", prior="gaussian", init_std_ratio=1.0)
    net.load_params({**net.param_dict(), "dvi.log_noise_variance": np.array([-1.0])})
    x, y = toy_data(4, 12)
    idata = net.to_arviz(x, y, num_samples=4000, num_chains=4, generator=torch.Generator().manual_seed(5))
    assert idata.posterior["dvi.layers.0.weight"].shape == (4, 1000, 1, 4)
    assert idata.posterior_predictive["dvi.y"].shape == (4, 1000, 12)
    np.testing.assert_array_equal(idata.observed_data["dvi.y"], y.numpy())
    log_lik = idata.log_likelihood["dvi.y"].values.reshape(4000, 12)
    with torch.no_grad():
        terms = dvi_elbo_terms(net.get_params(), x, y, net.config).expected_log_likelihood.numpy()
        mean = net.predict(x)[0][:, 0].numpy()
    z = np.abs(log_lik.mean(0) - terms) / (log_lik.std(0) / math.sqrt(4000))
    assert z.max() < Z_MAX, z
    draws = idata.posterior_predictive["dvi.y"].values.reshape(4000, 12)
    z = np.abs(draws.mean(0) - mean) / (draws.std(0) / math.sqrt(4000))
    assert z.max() < Z_MAX, z
    with warnings.catch_warnings():
        # an untrained, wide q gives some data Pareto k > 0.7, which ArviZ warns about: the export is what is checked
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 12
    with pytest.raises(ValueError, match="multiple of num_chains"):
        net.to_arviz(x, y, num_samples=10, num_chains=4)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation must be one of"):
        DVIMLP((1, 4, 2), activation="tanh")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DVIMLP((1, 4, 2), likelihood="laplace")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        DVIMLP((1, 4, 2), name="")
    with pytest.raises(ValueError, match="kl_warmup_steps must be a non-negative integer"):
        DVI_ELBO(kl_warmup_steps=-5)
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        MCVI_ELBO(num_particles=0)
    net = DVIMLP((1, 4, 2))
    x, y = toy_data(1, 5)
    with pytest.raises(TypeError, match=r"guide must be a DVIMLP's guide method \(net.guide\) for MCVI_ELBO"):
        MCVI_ELBO().loss(net.model, lambda x, y: None, x, y)
    with pytest.raises(ValueError, match="DVI_ELBO needs the data"):
        DVI_ELBO().loss(net.model, net.guide, x)
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 0.01}), DVI_ELBO())
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1\)"):
        svi.step(torch.ones(5, 3), y)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\) or \(5, 1\)"):
        svi.step(x, torch.ones(4))
    with pytest.raises(ValueError, match="y must be finite"):
        svi.step(x, torch.tensor([0.0, 1.0, math.nan, 0.0, 0.0]))
    with pytest.raises(KeyError, match="value lacks the parameters"):
        net.load_params({})
    with pytest.raises(ValueError, match=r"params.layers\[1\].weight_mean must have shape \(4, 2\)"):
        net.load_params({**net.param_dict(), "dvi.layers.1.weight_mean": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        net.sample_predictive(x, 0)


@pytest.mark.slow
def test_heteroscedastic_dvi_beats_homoscedastic_on_the_papers_toy():
    """Test log-likelihood (Gaussian predictive of predict()) on 1000 fresh points, after 2000 Adam steps each."""
    x, y = toy_data(2, 500)
    x_test, y_test = toy_data(3, 1000)
    scores = {}
    for likelihood, width in (("heteroscedastic", 2), ("homoscedastic", 1)):
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        net = DVIMLP((1, 50, width), likelihood=likelihood)
        svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 1e-2}), DVI_ELBO(kl_warmup_steps=500))
        for _ in range(2000):
            svi.step(x, y)
        mean, var = (v.detach() for v in net.predict(x_test))
        scores[likelihood] = float(torch.distributions.Normal(mean[:, 0], var[:, 0].sqrt()).log_prob(y_test).mean())
    assert scores["heteroscedastic"] > scores["homoscedastic"] + 0.5, scores
    assert scores["heteroscedastic"] > 1.0, scores
