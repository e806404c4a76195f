"""The NumPyro shell of DVI: DVIMLP's init/apply pair and sites, DVI_ELBO with NumPyro's SVI and optax.

Exact answers: the SVI loss is the negative core ELBO at the KL warm-up's weight; for one hidden layer the
closed-form predictive mean and variance are exact, checked against ``sample_predictive`` draws (2e5, fixed
seed, ``Z_MAX`` Monte Carlo standard errors).  The slow test fits the paper's heteroscedastic toy.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

from numpyro_ext.infer.dvi.network import DVI_ELBO, DVIMLP  # noqa: E402

Z_MAX = 4.5


def toy_data(seed, num):
    """The paper's heteroscedastic toy: x ~ U(-0.5, 0.5), y = -(x + 0.5) sin(3 pi x) + 0.45 (x + 0.5)^2 eps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, size=(num, 1))
    y = -(x + 0.5) * np.sin(3 * np.pi * x) + 0.45 * (x + 0.5) ** 2 * rng.standard_normal((num, 1))
    return jnp.asarray(x), jnp.asarray(y[:, 0])


def test_svi_loss_is_the_negative_elbo_with_the_kl_warmup_weight():
    net = DVIMLP((1, 3, 2), covariance="diag", prior="gaussian")
    x, y = toy_data(0, 20)
    svi = SVI(net.model, net.guide, optax.adam(1e-2), DVI_ELBO(kl_warmup_steps=4))
    state = svi.init(jax.random.PRNGKey(0), x, y, num_data=40)
    params = net.params_from(svi.get_params(state))
    # init(): He-scaled weight means, standard deviations a tenth of that scale, zero bias means
    for layer, d_in in zip(params.layers, (1, 3), strict=True):
        np.testing.assert_allclose(layer.weight_log_std, math.log(0.1 * math.sqrt(2.0 / d_in)), rtol=1e-12)
        assert np.all(layer.bias_mean == 0.0) and np.all(layer.weight_mean != 0.0)
    assert params.layers[1].bias_log_std.shape == (2,)

    step = jax.jit(lambda state: svi.update(state, x, y, num_data=40))
    first, loss0 = step(state)
    second, loss1 = step(first)
    assert int(second.mutable_state[net.step_name]) == 2
    elbo = jax.jit(lambda p, w: net.elbo(p, x, y, num_data=40, kl_weight=w))
    assert float(loss0) == pytest.approx(-float(elbo(params, 0.0)), rel=1e-12)  # step 0: KL weight 0
    after_one = net.params_from(svi.get_params(first))
    assert float(loss1) == pytest.approx(-float(elbo(after_one, 0.25)), rel=1e-12)  # step 1: weight 1 / 4
    assert not np.allclose(after_one.layers[0].weight_mean, params.layers[0].weight_mean)
    assert float(DVI_ELBO(kl_warmup_steps=4).kl_weight(jnp.asarray(9))) == 1.0
    # without a step count (an evaluation), the loss is the full negative ELBO
    param_map = {k: v for k, v in svi.get_params(state).items() if k != net.step_name}
    full = jax.jit(lambda pm: DVI_ELBO(kl_warmup_steps=4).loss(None, pm, net.model, net.guide, x, y, num_data=40))
    assert float(full(param_map)) == pytest.approx(-float(elbo(params, 1.0)), rel=1e-12)


@pytest.mark.slow
def test_closed_form_predictive_matches_sample_predictive():
    """One hidden layer, homoscedastic: E[y] and Var[y] of predict() are exact."""
    net = DVIMLP((2, 5, 1), likelihood="homoscedastic", prior="gaussian")
    params = net.init(jax.random.PRNGKey(1), init_std_ratio=1.0)
    params = params._replace(log_noise_variance=jnp.array([-1.0]))
    x = jnp.array([[0.3, -0.8], [1.0, 0.5]])
    num = 200_000
    draws = np.asarray(jax.jit(net.sample_predictive, static_argnums=3)(jax.random.PRNGKey(2), params, x, num))
    mean, var = net.predict(params, x)
    assert draws.shape == (num, 2, 1)
    z_mean = np.abs(draws.mean(0) - mean) / (draws.std(0) / math.sqrt(num))
    squares = (draws - draws.mean(0)) ** 2
    z_var = np.abs(squares.mean(0) - var) / (squares.std(0) / math.sqrt(num))
    assert z_mean.max() < Z_MAX and z_var.max() < Z_MAX, (z_mean, z_var)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation must be one of"):
        DVIMLP((1, 4, 2), activation="tanh")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DVIMLP((1, 4, 2), likelihood="laplace")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        DVIMLP((1, 4, 2), name="")
    with pytest.raises(ValueError, match="kl_warmup_steps must be a non-negative integer"):
        DVI_ELBO(kl_warmup_steps=-5)
    net = DVIMLP((1, 4, 2))
    x, y = toy_data(1, 5)
    with pytest.raises(TypeError, match=r"guide must be a DVIMLP's guide method \(net.guide\)"):
        DVI_ELBO().loss(None, {}, net.model, lambda x, y: None, x, y)
    with pytest.raises(KeyError, match="param_map lacks the sites"):
        net.params_from({})
    with pytest.raises(ValueError, match="DVI_ELBO needs the data"):
        DVI_ELBO().loss(None, {}, net.model, net.guide, x)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1\)"):
        SVI(net.model, net.guide, optax.adam(1e-2), DVI_ELBO()).init(jax.random.PRNGKey(0), jnp.ones((5, 3)), y)


@pytest.mark.slow
def test_heteroscedastic_dvi_beats_homoscedastic_on_the_papers_toy():
    """Test log-likelihood (Gaussian predictive of predict()) on 1000 fresh points, after 2000 Adam steps each."""
    x, y = toy_data(2, 500)
    x_test, y_test = toy_data(3, 1000)
    scores = {}
    for likelihood, width in (("heteroscedastic", 2), ("homoscedastic", 1)):
        net = DVIMLP((1, 50, width), likelihood=likelihood)
        svi = SVI(net.model, net.guide, optax.adam(1e-2), DVI_ELBO(kl_warmup_steps=500))
        result = svi.run(jax.random.PRNGKey(4), 2000, x, y, progress_bar=False)
        mean, var = net.predict(net.params_from(result.params), x_test)
        scores[likelihood] = float(jax.scipy.stats.norm.logpdf(y_test, mean[:, 0], jnp.sqrt(var[:, 0])).mean())
    assert scores["heteroscedastic"] > scores["homoscedastic"] + 0.5, scores
    assert scores["heteroscedastic"] > 1.0, scores


@pytest.mark.slow
def test_model_log_density_is_the_bayesian_mlp():
    """net.model's log joint at fixed weights: Gaussian prior plus heteroscedastic likelihood, by hand (scipy);
    minibatch scaling by num_data / n.  The model is what an MCVI baseline samples against."""
    from numpyro.infer.util import log_density
    from scipy import stats

    net = DVIMLP((1, 3, 2), prior="gaussian", prior_variance=(2.0, 0.5))
    x, y = toy_data(5, 6)
    rng = np.random.default_rng(6)
    values = {}
    for i, (d_in, d_out) in enumerate(((1, 3), (3, 2))):
        values[f"dvi.layers.{i}.weight"] = rng.normal(size=(d_in, d_out))
        values[f"dvi.layers.{i}.bias"] = rng.normal(size=d_out)
    h = np.maximum(np.asarray(x) @ values["dvi.layers.0.weight"] + values["dvi.layers.0.bias"], 0.0)
    out = h @ values["dvi.layers.1.weight"] + values["dvi.layers.1.bias"]
    prior = sum(
        stats.norm.logpdf(values[f"dvi.layers.{i}.{part}"], 0.0, math.sqrt(v)).sum()
        for i, v in enumerate((2.0, 0.5))
        for part in ("weight", "bias")
    )
    likelihood = stats.norm.logpdf(np.asarray(y), out[:, 0], np.exp(0.5 * out[:, 1])).sum()
    got, _ = log_density(net.model, (x, y), {}, {k: jnp.asarray(v) for k, v in values.items()})
    assert float(got) == pytest.approx(prior + likelihood, rel=1e-12)
    scaled, _ = log_density(net.model, (x, y), {"num_data": 60}, {k: jnp.asarray(v) for k, v in values.items()})
    assert float(scaled) == pytest.approx(prior + 10 * likelihood, rel=1e-12)


def test_arviz_export_holds_the_weights_and_the_posterior_predictive():
    """to_arviz: one hidden layer, homoscedastic -- the mean of the log-likelihood group over the weight draws is
    DVI's exact expected log-likelihood (to Z_MAX MC errors), and ArviZ's loo and ppc plots take it."""
    az = pytest.importorskip("arviz")
    from numpyro_ext.infer.dvi.core import dvi_elbo_terms

    net = DVIMLP((1, 4, 1), likelihood="homoscedastic", prior="gaussian")
    params = net.init(jax.random.PRNGKey(3), init_std_ratio=1.0)._replace(log_noise_variance=jnp.array([-1.0]))
    x, y = toy_data(4, 12)
    idata = net.to_arviz(jax.random.PRNGKey(5), params, x, y, num_samples=4000, num_chains=4)
    assert idata.posterior["dvi.layers.0.weight"].shape == (4, 1000, 1, 4)
    assert idata.posterior_predictive["dvi.y"].shape == (4, 1000, 12)
    np.testing.assert_array_equal(idata.observed_data["dvi.y"], np.asarray(y))
    log_lik = idata.log_likelihood["dvi.y"].values.reshape(4000, 12)
    exact = np.asarray(jax.jit(lambda p: dvi_elbo_terms(p, x, y, net.config))(params).expected_log_likelihood)
    z = np.abs(log_lik.mean(0) - exact) / (log_lik.std(0) / math.sqrt(4000))
    assert z.max() < Z_MAX, z
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 12
    import matplotlib

    matplotlib.use("Agg")
    az.plot_ppc(idata, num_pp_samples=20)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        net.to_arviz(jax.random.PRNGKey(5), params, x, y, num_samples=10, num_chains=4)


def test_predictive_with_the_guide_draws_the_closed_form_predictive():
    """Predictive(net.model, guide=net.guide): weights from q (EB prior variances at s*), y from the likelihood;
    one hidden layer, homoscedastic, so predict()'s mean and variance are exact (Z_MAX MC errors, 4000 draws)."""
    from numpyro.infer import Predictive

    net = DVIMLP((2, 5, 1), likelihood="homoscedastic")
    x, y = jnp.array([[0.3, -0.8], [1.0, 0.5]]), jnp.zeros(2)
    svi = SVI(net.model, net.guide, optax.adam(1e-2), DVI_ELBO())
    param_map = svi.get_params(svi.init(jax.random.PRNGKey(1), x, y))
    param_map["dvi.log_noise_variance"] = jnp.array([-1.0])
    num = 4000
    predictive = Predictive(net.model, guide=net.guide, params=param_map, num_samples=num, return_sites=["dvi.y"])
    draws = predictive(jax.random.PRNGKey(2), x)
    samples = np.asarray(draws["dvi.y"])[..., 0]
    mean, var = net.predict(net.params_from(param_map), x)
    z_mean = np.abs(samples.mean(0) - mean[:, 0]) / np.sqrt(var[:, 0] / num)
    assert z_mean.max() < Z_MAX, z_mean
    np.testing.assert_allclose(samples.var(0), var[:, 0], rtol=Z_MAX * math.sqrt(2.0 / num))
